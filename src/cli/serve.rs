//! `left serve`: serve this share's store to peers over rdt until stopped.
//!
//! The process opens the store (taking its lock), binds the rdt endpoint with this device's key and
//! the share key, and serves every peer the peer book allows through [`left::session::Server`].
//! Other `left` commands reach it through the control socket ([`left::control`]); a `gc` made that
//! way runs in [`Server::busy_while`], so peers get `Working` and retry instead of asking for
//! objects it is deleting, while an `add` runs beside them (snapshots never change). It prints one
//! line once listening (`--json`: one `{"event":"listening",...}` object) and logs peers on stderr.
//! SIGINT or SIGTERM stops it cleanly: peers get `Bye`, connections close with code 0, the control
//! socket is removed, and the exit code is 0.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;
use left::control::{self, StoreHandler};
use left::ecp::ShareId;
use left::identity::{self, DeviceId, Identity};
use left::net::driver::Endpoint;
use left::net::udp::SocketConfig;
use left::peers::PeerBook;
use left::rdt::EndpointConfig;
use left::session::auto::{self, AutoConfig, AutoInput, AutoStatus};
use left::session::{
    self, DevicePolicy, Endpoints, FetchConfig, PeerPolicy, Server, ServerConfig, ServerEvent,
    Target,
};
use left::sync::{AgentConfig, PullConfig};
use left_store::{CheckoutOptions, Store};
use serde_json::json;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use super::{share_root, store_dir, Global, Output, EXIT_OK};

/// The default UDP port (the seed's, in its 20000-30000 range).
pub(crate) const DEFAULT_PORT: u16 = 22001;

/// Arguments of `left serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on: IP:PORT, [IPv6]:PORT, an IP alone, or a bare port (an IPv6 address
    /// serves IPv6 only: [::]:22001 does not take IPv4 peers)
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:22001", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Encrypt packets (on|off, or yes|no); peers must use the same setting
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    encryption: bool,
    /// Keep the folder in sync with this peer automatically (HOST:PORT, a host, [IPv6]:PORT);
    /// repeat for more peers. Turns on watching, pushing and merging
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// More peers, comma-separated (as the seed's --ip a,b,c)
    #[arg(long, value_name = "A,B,C", value_delimiter = ',')]
    ip: Vec<String>,
    /// Sync automatically even with no --peer: watch the folder, and pull and merge what peers
    /// that connect to us announce
    #[arg(long)]
    auto: bool,
    /// Seconds a change must be left alone before it is snapshotted and sent (files still being
    /// written wait)
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    settle: f64,
    /// Seconds between full rescans of the folder (they back up the watcher)
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    rescan: f64,
    /// Seconds between head exchanges with every peer (catches peers that were down)
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    interval: f64,
    /// Longest pause, in seconds, between retries of a peer that cannot be reached
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    retry_max: f64,
    /// Do not watch the folder (changes are found by the periodic rescan only)
    #[arg(long)]
    no_watch: bool,
    /// fsync every file a checkout writes (the store is durable either way)
    #[arg(long)]
    fsync: bool,
}

impl ServeArgs {
    /// The peers to keep in sync with, resolved (each once).
    fn targets(&self) -> anyhow::Result<Vec<Target>> {
        super::remote::given_targets(&self.peers, &self.ip)
    }

    fn agent_config(&self) -> anyhow::Result<AgentConfig> {
        let secs = |name: &str, v: f64| -> anyhow::Result<Duration> {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                anyhow::bail!("--{name} must be a positive number of seconds")
            }
        };
        let settle = secs("settle", self.settle)?;
        let retry_max = secs("retry-max", self.retry_max)?;
        Ok(AgentConfig {
            settle,
            max_delay: (settle * 10).max(Duration::from_secs(1)),
            rescan: secs("rescan", self.rescan)?,
            exchange_interval: secs("interval", self.interval)?,
            min_backoff: Duration::from_millis(250).min(retry_max),
            max_backoff: retry_max,
        })
    }
}

/// Parses `on|off|yes|no|true|false`.
pub(crate) fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(format!("expected on or off (or yes/no), not {s:?}")),
    }
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, an IP alone (default port) or a bare port
/// (on 0.0.0.0).
pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(a) = literal_addr(s) {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    Err(format!(
        "{s:?} is not a listen address (use IP:PORT, [IPv6]:PORT, an IP, or a port)"
    ))
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare (optionally bracketed) IP with the default port; `None`
/// for anything else (a host name, a bare port). Shared by `serve --listen` and `sync PEER`.
pub(crate) fn literal_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
}

/// The peer book as a [`PeerPolicy`]: re-read when another process changed it.
pub(crate) struct BookPolicy {
    dir: PathBuf,
    book: Mutex<PeerBook>,
}

impl BookPolicy {
    pub(crate) fn load(dir: &Path) -> anyhow::Result<BookPolicy> {
        let book = PeerBook::load(dir).context("cannot read the peer book")?;
        Ok(BookPolicy {
            dir: dir.to_owned(),
            book: Mutex::new(book),
        })
    }

    pub(crate) fn allowed_peers(&self) -> Option<Vec<[u8; 32]>> {
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allowed_peers()
    }
}

impl PeerPolicy for BookPolicy {
    fn allows(&self, device: &[u8; 32]) -> bool {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        // A book that cannot be re-read keeps its last view (and the error shows elsewhere).
        let _ = book.refresh(&self.dir);
        book.allows(device)
    }

    fn seen(&self, device: &[u8; 32], addr: SocketAddr) {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = book.record_seen(&self.dir, *device, addr) {
            left::log_line!(
                "left: warning: cannot record peer {}: {e}",
                DeviceId(*device)
            );
        }
    }
}

/// The rdt endpoint settings of this store: device key, share key, allow-list, encryption.
pub(crate) fn endpoint_config(
    identity: &Identity,
    share_key: [u8; 32],
    allowed: Option<Vec<[u8; 32]>>,
    encryption: bool,
) -> EndpointConfig {
    let seed = left::net::os_seed();
    let mut cfg = EndpointConfig::with_seed(identity.secret().to_bytes(), share_key, seed);
    cfg.allowed_peers = allowed;
    cfg.transport.encryption = encryption;
    cfg
}

/// Binds an endpoint, with the impairment layer when `LEFT_IMPAIR` asks for it.
pub(crate) fn bind(addr: SocketAddr, cfg: EndpointConfig) -> anyhow::Result<Endpoint> {
    let socket = SocketConfig::from_env().context("bad LEFT_IMPAIR")?;
    Endpoint::bind(addr, &socket, cfg).with_context(|| format!("cannot listen on {addr}"))
}

/// A multi-threaded tokio runtime for one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `left serve`.
pub(crate) fn run(global: &Global, out: &Output, args: ServeArgs) -> anyhow::Result<u8> {
    let targets = args.targets()?;
    let automatic = args.auto || !targets.is_empty();
    let agent_cfg = args.agent_config()?;
    let dir = store_dir(global)?;
    let store = Arc::new(
        Store::open(&dir).with_context(|| format!("cannot open the store at {}", dir.display()))?,
    );
    let share = share_root(&dir, &store)?;
    let identity = Identity::load(&dir).context("cannot read the device key")?;
    let share_key = identity::load_share_key(&dir).context("cannot read the share key")?;
    let device = identity.device_id();
    let share_id = ShareId::from_key(&share_key);
    let policy = Arc::new(BookPolicy::load(&dir)?);
    // Devices reached at the addresses the user named are never aged out of the book.
    (policy.book.lock().unwrap_or_else(|p| p.into_inner()))
        .set_named_addrs(targets.iter().map(|t| t.addr).collect());
    let rt = runtime()?;
    rt.block_on(async move {
        // The peer book is applied after each handshake (PeerPolicy), not as the transport's
        // fixed allow-list, so pins and revocations made while serving take effect at once.
        let cfg = endpoint_config(&identity, share_key, None, args.encryption);
        let endpoint = bind(args.listen, cfg)?;
        let local = endpoint
            .local_addr()
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let hello = session::hello(share_id, device.0, args.encryption);
        let server = Server::new(
            endpoint.clone(),
            store.clone(),
            ServerConfig::new(hello.clone()),
            policy.clone(),
            Some(events_tx),
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);

        // Automatic sync: the agent's driver, fed by the watcher, the server's events and the
        // control socket.
        let auto_status: Arc<Mutex<AutoStatus>> = Arc::new(Mutex::new(AutoStatus::default()));
        let folder = Arc::new(Mutex::new(()));
        let (auto_tx, auto_rx) = mpsc::unbounded_channel::<AutoInput>();
        let mut auto_task = None;
        let mut _watcher = None;
        if automatic {
            // Outgoing connections leave from the serving endpoint (peers see us where we
            // listen); a second endpoint serves the other address family if a peer needs it.
            let mut eps = Endpoints::default();
            let other = if local.is_ipv4() {
                eps.v4 = Some(endpoint.clone());
                targets
                    .iter()
                    .any(|t| t.addr.is_ipv6())
                    .then(|| SocketAddr::from(([0u16; 8], 0)))
            } else {
                eps.v6 = Some(endpoint.clone());
                targets
                    .iter()
                    .any(|t| t.addr.is_ipv4())
                    .then(|| SocketAddr::from(([0, 0, 0, 0], 0)))
            };
            if let Some(a) = other {
                let cfg = endpoint_config(&identity, share_key, None, args.encryption);
                let ep = bind(a, cfg)?;
                if a.is_ipv4() {
                    eps.v4 = Some(ep);
                } else {
                    eps.v6 = Some(ep);
                }
            }
            let mut pull = PullConfig::for_store(&store);
            pull.stall_timeout = Duration::from_secs(5);
            // One attempt per exchange: the agent retries a peer that failed (with its own
            // backoff), so an unreachable peer holds the agent up for one handshake timeout, not
            // for a round of retries. A transfer that stalls midway is dropped by the pull's
            // stall timeout and resumed by the next exchange.
            let mut fetch = FetchConfig::new(hello.clone(), pull);
            fetch.connect_timeout = Duration::from_secs(2);
            fetch.timeout = Duration::from_secs(2);
            fetch.max_backoff = Duration::from_secs(1);
            let allow = policy.clone();
            fetch.allow = Some(DevicePolicy(Arc::new(move |d: &[u8; 32]| allow.allows(d))));
            let cfg = AutoConfig {
                agent: agent_cfg,
                fetch,
                device: device.0,
                checkout: CheckoutOptions {
                    fsync: args.fsync,
                    ..Default::default()
                },
                log: !out.quiet,
            };
            if !args.no_watch {
                let (wtx, mut wrx) = mpsc::unbounded_channel::<()>();
                let (etx, mut erx) = mpsc::unbounded_channel::<String>();
                let mut flag = None;
                match left::watch::watch(&share, &dir, wtx, etx) {
                    Ok(w) => {
                        flag = Some(w.pending());
                        _watcher = Some(w);
                    }
                    Err(e) => eprintln!(
                        "left: warning: {e}; changes are found by the rescan every {} s",
                        args.rescan
                    ),
                }
                let tx = auto_tx.clone();
                tokio::spawn(async move {
                    while wrx.recv().await.is_some() {
                        // Cleared before the hint goes on: an event from now on queues another.
                        if let Some(f) = &flag {
                            f.store(false, std::sync::atomic::Ordering::Release);
                        }
                        if tx.send(AutoInput::LocalChange).is_err() {
                            break;
                        }
                    }
                });
                let quiet = out.quiet;
                tokio::spawn(async move {
                    let mut last = None;
                    while let Some(e) = erx.recv().await {
                        if !quiet && last.as_ref() != Some(&e) {
                            eprintln!("left: warning: watching the folder: {e}");
                        }
                        last = Some(e);
                    }
                });
            }
            auto_task = Some(tokio::spawn(auto::run(
                store.clone(),
                share.clone(),
                eps,
                targets.clone(),
                cfg,
                auto_rx,
                auto_status.clone(),
                folder.clone(),
                stop_rx.clone(),
            )));
        } else {
            drop(auto_rx);
        }

        // Heads peers told us (device -> (address, head)), for status.
        #[allow(clippy::type_complexity)]
        let heard: Arc<
            Mutex<std::collections::BTreeMap<[u8; 32], (SocketAddr, Option<left_store::NodeId>)>>,
        > = Arc::default();

        // The control socket: other commands reach the store through it.
        let status = {
            let server = server.clone();
            let store = store.clone();
            let share_id = share_id.fmt_short();
            let auto_status = auto_status.clone();
            let heard = heard.clone();
            Box::new(move || {
                let sessions: Vec<_> = server
                    .peers()
                    .into_iter()
                    .map(|p| {
                        json!({
                            "device": DeviceId(p.device).to_string(),
                            "addr": p.addr.to_string(),
                            "bytes_sent": p.bytes_sent,
                            "bytes_received": p.bytes_received,
                        })
                    })
                    .collect();
                let head = store.head().ok().flatten().map(|h| h.to_string());
                let mut v = json!({
                    "serving": true,
                    "automatic": automatic,
                    "listen": local.to_string(),
                    "device": device.to_string(),
                    "share": share_id,
                    "encryption": args.encryption,
                    "head": head,
                    "sessions": sessions,
                });
                if automatic {
                    let st = auto_status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    let mut a = serde_json::to_value(&st).unwrap_or_default();
                    if let serde_json::Value::Object(m) = &mut a {
                        // The store's head is the truth; the snapshot of the status may lag.
                        m.insert("head".into(), json!(head));
                    }
                    if let (serde_json::Value::Object(m), serde_json::Value::Object(a)) =
                        (&mut v, a)
                    {
                        for (k, x) in a {
                            m.insert(k, x);
                        }
                    }
                } else {
                    // Serving only: idle, and the peers that talked to us.
                    let heard = heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let conns = server.peers();
                    let peers: Vec<_> = heard
                        .iter()
                        .map(|(d, (addr, h))| {
                            json!({
                                "device": DeviceId(*d).to_string(),
                                "addr": addr.to_string(),
                                "connected": conns.iter().any(|c| c.device == *d),
                                "head": h.map(|h| h.to_string()),
                            })
                        })
                        .collect();
                    if let serde_json::Value::Object(m) = &mut v {
                        m.insert("idle".into(), json!(true));
                        m.insert("peers".into(), json!(peers));
                    }
                }
                v
            })
        };
        let stop = {
            let tx = stop_tx.clone();
            Box::new(move || {
                tx.send_replace(true);
            })
        };
        // A gc deletes objects a pull may be about to ask for: peers get `Working` meanwhile.
        let exclusive: control::Exclusive = {
            let server = server.clone();
            Box::new(move |work: &mut dyn FnMut()| server.busy_while(work))
        };
        let mut handler = StoreHandler::new(store.clone(), share.clone(), device.0, status, stop)
            .with_exclusive(exclusive)
            .with_folder_lock(folder.clone());
        if automatic {
            let tx = auto_tx.clone();
            handler = handler.on_snapshot(Box::new(move || {
                let _ = tx.send(AutoInput::HeadChanged);
            }));
        }
        let handler = Arc::new(handler);
        let control_dir = dir.clone();
        let control_rx = stop_rx.clone();
        let control =
            tokio::spawn(async move { control::serve(&control_dir, handler, control_rx).await });

        // Listening: one line, flushed, so scripts can read the port.
        if out.json {
            out.json(&json!({
                "event": "listening",
                "addr": local.to_string(),
                "device": device.to_string(),
                "share": share_id.fmt_short(),
            }))?;
        } else {
            let mut stdout = std::io::stdout().lock();
            writeln!(
                stdout,
                "serving {} as {} on {}",
                share_id.fmt_short(),
                device,
                local
            )?;
            stdout.flush()?;
        }

        // Peers in the log; the heads they announce go to automatic sync.
        let quiet = out.quiet;
        let logger = {
            let heard = heard.clone();
            let auto_tx = auto_tx.clone();
            tokio::spawn(async move {
                while let Some(e) = events_rx.recv().await {
                    if let ServerEvent::PeerHead {
                        addr, device, head, ..
                    } = &e
                    {
                        heard
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(*device, (*addr, *head));
                        if automatic {
                            let _ = auto_tx.send(AutoInput::PeerHead {
                                addr: *addr,
                                device: *device,
                                head: *head,
                            });
                        }
                        continue;
                    }
                    if !quiet {
                        left::log_line!("{}", describe(&e));
                    }
                }
            })
        };
        drop(auto_tx);

        // Signals.
        {
            let tx = stop_tx.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tx.send_replace(true);
            });
        }

        let serve_rx = stop_rx.clone();
        let mut control = control;
        let control_result = tokio::select! {
            _ = server.run(serve_rx) => None,
            r = &mut control => {
                // The control socket failed: stop serving too, and say why.
                stop_tx.send_replace(true);
                Some(r)
            }
        };
        let control_result = match control_result {
            Some(r) => r,
            None => {
                stop_tx.send_replace(true);
                control.await
            }
        };
        if let Some(t) = auto_task {
            let _ = tokio::time::timeout(Duration::from_secs(6), t).await;
        }
        drop(server);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), logger).await;
        match control_result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(anyhow::Error::from(e).context("control socket failed")),
            Err(e) => anyhow::bail!("control socket task failed: {e}"),
        }
        anyhow::Ok(())
    })?;
    Ok(EXIT_OK)
}

/// One log line for a server event.
fn describe(e: &ServerEvent) -> String {
    match e {
        ServerEvent::Connected { addr, device } => {
            format!("left: peer {} connected from {addr}", DeviceId(*device))
        }
        ServerEvent::Refused {
            addr,
            device,
            reason,
        } => match device {
            Some(d) => format!("left: refused peer {} at {addr}: {reason}", DeviceId(*d)),
            None => format!("left: refused peer at {addr}: {reason}"),
        },
        ServerEvent::PeerHead {
            addr, device, head, ..
        } => format!(
            "left: peer {} at {addr} has {}",
            DeviceId(*device),
            head.map(|h| h.fmt_short())
                .unwrap_or_else(|| "nothing".into())
        ),
        ServerEvent::Disconnected {
            addr,
            device,
            error,
        } => match error {
            None => format!("left: peer {} at {addr} disconnected", DeviceId(*device)),
            Some(r) => format!(
                "left: peer {} at {addr} disconnected: {r}",
                DeviceId(*device)
            ),
        },
    }
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            parse_listen("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::]:22001").unwrap(),
            "[::]:22001".parse().unwrap()
        );
        assert_eq!(
            parse_listen("23000").unwrap(),
            "0.0.0.0:23000".parse().unwrap()
        );
        assert_eq!(parse_listen("::1").unwrap(), "[::1]:22001".parse().unwrap());
        assert_eq!(
            parse_listen("[::1]").unwrap(),
            "[::1]:22001".parse().unwrap()
        );
        assert!(parse_listen("nonsense").is_err());
        assert!(parse_listen("1.2.3.4:99999").is_err());
    }

    #[test]
    fn encryption_takes_a_value() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "left",
            "serve",
            "--encryption",
            "no",
            "--listen",
            "9",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Serve(a) => {
                assert!(!a.encryption);
                assert_eq!(a.listen, "0.0.0.0:9".parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn on_off_accepts_the_seed_words() {
        for (s, v) in [("on", true), ("YES", true), ("off", false), ("no", false)] {
            assert_eq!(parse_on_off(s).unwrap(), v);
        }
        assert!(parse_on_off("maybe").is_err());
    }
}
