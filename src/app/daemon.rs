//! The daemon (`left serve`): serve this share's store to peers over rdt until stopped, and, when
//! asked, keep the folder in sync automatically ([`super::auto`]).
//!
//! [`run`] binds the rdt endpoint with this device's key and the share key, and serves every peer
//! the peer book allows through [`crate::session::Server`]. Other `left` commands reach it through
//! the control socket ([`crate::control`]); a `gc` made that way runs in `Server::busy_while`, so
//! peers get `Working` and retry instead of asking for objects it is deleting, while an `add`
//! runs beside them (snapshots never change). With automatic sync, the folder watcher
//! ([`crate::watch`]), the heads peers announce to the server and an `add` through the control
//! socket feed the automatic loop. When `shutdown` completes (or a control-socket `Stop` comes):
//! peers get `Bye`, connections close with code 0, the control socket is removed, and [`run`]
//! returns.
//!
//! What it is not: it prints nothing (the listening line, peers coming and going, watcher
//! warnings and the automatic loop's updates, conflicts and warnings go to the caller as
//! [`Event`]s) and handles no signal (the caller's `shutdown` does).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use left_store::{CheckoutOptions, Store};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::auto::{self, AutoConfig, AutoEvent, AutoInput, AutoStatus};
use super::peer_setup::{bind, endpoint_config, runtime, BookPolicy};
use super::{io_error, Context, Error, Result};
use crate::control::{self, StoreHandler};
use crate::ecp::ShareId;
use crate::identity::{self, DeviceId, Identity};
use crate::session::{
    self, DevicePolicy, Endpoints, FetchConfig, PeerPolicy, Server, ServerConfig, ServerEvent,
    Target,
};
use crate::sync::{AgentConfig, PullConfig};

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Encrypt packets.
    pub encryption: bool,
    /// Peers to keep in sync with (resolved).
    pub targets: Vec<Target>,
    /// Sync automatically (also with no target: with the peers that connect to us).
    pub automatic: bool,
    /// The automatic loop's timers.
    pub agent: AgentConfig,
    /// Watch the folder (else changes are found by the periodic rescan only).
    pub watch: bool,
    /// fsync every file a checkout writes.
    pub fsync: bool,
}

/// Something the daemon tells its caller.
#[derive(Debug)]
pub enum Event<'a> {
    /// Listening (once, before serving): the caller prints its line. An error returned for this
    /// event stops the daemon with [`Error::Output`].
    Listening {
        /// The bound address.
        addr: SocketAddr,
        /// This device.
        device: DeviceId,
        /// The share.
        share: ShareId,
    },
    /// A peer connected, was refused or disconnected (heads they announce are not passed on).
    Server(&'a ServerEvent),
    /// The folder cannot be watched (changes are found by the rescan).
    WatchUnavailable(&'a str),
    /// Watching the folder failed (each distinct error once in a row).
    WatchError(&'a str),
    /// What the automatic loop did or could not do.
    Auto(AutoEvent<'a>),
}

/// The caller's event sink.
pub type OnEvent = Arc<dyn Fn(Event<'_>) -> std::io::Result<()> + Send + Sync>;

/// Serves the store at `dir` (opened by the caller, who holds its lock; `share` is its share
/// folder) until `shutdown` completes or a control-socket `Stop` arrives.
pub fn run(
    dir: &Path,
    store: Store,
    share: &Path,
    opts: DaemonOptions,
    on_event: OnEvent,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let dir = dir.to_path_buf();
    let share = share.to_path_buf();
    let store = Arc::new(store);
    let targets = opts.targets.clone();
    let automatic = opts.automatic;
    let agent_cfg = opts.agent.clone();
    let identity = Identity::load(&dir).context("cannot read the device key")?;
    let share_key = identity::load_share_key(&dir).context("cannot read the share key")?;
    let device = identity.device_id();
    let share_id = ShareId::from_key(&share_key);
    let policy = Arc::new(BookPolicy::load(&dir)?);
    // Devices reached at the addresses the user named are never aged out of the book.
    policy.set_named_addrs(targets.iter().map(|t| t.addr).collect());
    let rt = runtime()?;
    rt.block_on(async move {
        // The peer book is applied after each handshake (PeerPolicy), not as the transport's
        // fixed allow-list, so pins and revocations made while serving take effect at once.
        let cfg = endpoint_config(&identity, share_key, None, opts.encryption);
        let endpoint = bind(opts.listen, cfg)?;
        let local = endpoint
            .local_addr()
            .map_err(|e| io_error(format!("cannot listen on {}", opts.listen), e))?;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let hello = session::hello(share_id, device.0, opts.encryption);
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
                let cfg = endpoint_config(&identity, share_key, None, opts.encryption);
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
                    fsync: opts.fsync,
                    ..Default::default()
                },
            };
            if opts.watch {
                let (wtx, mut wrx) = mpsc::unbounded_channel::<()>();
                let (etx, mut erx) = mpsc::unbounded_channel::<String>();
                let mut flag = None;
                match crate::watch::watch(&share, &dir, wtx, etx) {
                    Ok(w) => {
                        flag = Some(w.pending());
                        _watcher = Some(w);
                    }
                    Err(e) => {
                        let _ = on_event(Event::WatchUnavailable(&e.to_string()));
                    }
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
                let on_event = on_event.clone();
                tokio::spawn(async move {
                    let mut last = None;
                    while let Some(e) = erx.recv().await {
                        if last.as_ref() != Some(&e) {
                            let _ = on_event(Event::WatchError(&e));
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
                {
                    let on_event = on_event.clone();
                    // A line the caller cannot print is not worth stopping the loop for.
                    Arc::new(move |e: AutoEvent<'_>| {
                        let _ = on_event(Event::Auto(e));
                    })
                },
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
                    "encryption": opts.encryption,
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
            .with_folder_lock(folder.clone())
            .with_hold({
                let (store, share) = (store.clone(), share.clone());
                let checkout = CheckoutOptions {
                    fsync: opts.fsync,
                    ..Default::default()
                };
                Box::new(move |id: &str, accept: bool| {
                    match super::guard::decide(&store, &share, device.0, id, accept, &checkout) {
                        Ok(d) => control::Response::Decided {
                            head: d.head,
                            files_written: d.files_written,
                            files_removed: d.files_removed,
                        },
                        Err(e) => control::Response::Error {
                            message: e.to_string(),
                            hint: match &e {
                                Error::Usage { hint, .. } | Error::Peers { hint, .. } => {
                                    hint.clone()
                                }
                                _ => None,
                            },
                        },
                    }
                })
            });
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

        // Listening: the caller prints one line, flushed, so scripts can read the port.
        on_event(Event::Listening {
            addr: local,
            device,
            share: share_id,
        })
        .map_err(Error::Output)?;

        // Peers in the log; the heads they announce go to automatic sync.
        let logger = {
            let heard = heard.clone();
            let on_event = on_event.clone();
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
                    let _ = on_event(Event::Server(&e));
                }
            })
        };
        drop(auto_tx);

        // The caller's stop (SIGINT or SIGTERM for `left serve`).
        {
            let tx = stop_tx.clone();
            tokio::spawn(async move {
                shutdown.await;
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
            Ok(Err(e)) => return Err(io_error("control socket failed", e)),
            Err(e) => return Err(Error::Other(format!("control socket task failed: {e}"))),
        }
        Ok(())
    })
}
