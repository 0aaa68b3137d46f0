//! `left serve`: serve this share's store to peers over rdt until stopped.
//!
//! The work is [`left::app::daemon`]'s (endpoint, server, control socket, automatic sync); this
//! file turns the flags into its settings, prints one line once listening (`--json`: one
//! `{"event":"listening",...}` object), logs peers on stderr, and stops it on SIGINT or SIGTERM:
//! peers get `Bye`, connections close with code 0, the control socket is removed, and the exit
//! code is 0.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use left::app::auto::AutoEvent;
use left::app::daemon::{DaemonOptions, Event};
use left::app::peer_setup::given_targets;
use left::app::{AgentConfig, ServerEvent, Target};
use left::identity::DeviceId;
use left_store::Store;
use serde_json::json;

use super::args::{parse_listen, parse_on_off};
use super::{share_root, store_dir, Global, Output, EXIT_OK};

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
        Ok(given_targets(&self.peers, &self.ip)?)
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

/// Runs `left serve`.
pub(crate) fn run(global: &Global, out: &Output, args: ServeArgs) -> anyhow::Result<u8> {
    let targets = args.targets()?;
    let automatic = args.auto || !targets.is_empty();
    let agent = args.agent_config()?;
    let dir = store_dir(global)?;
    let store =
        Store::open(&dir).with_context(|| format!("cannot open the store at {}", dir.display()))?;
    let share = share_root(&dir, &store)?;
    let opts = DaemonOptions {
        listen: args.listen,
        encryption: args.encryption,
        targets,
        automatic,
        agent,
        watch: !args.no_watch,
        fsync: args.fsync,
    };
    let (json, quiet, rescan) = (out.json, out.quiet, args.rescan);
    let on_event = Arc::new(move |e: Event<'_>| -> std::io::Result<()> {
        match e {
            Event::Listening {
                addr,
                device,
                share,
            } => {
                // One line, flushed, so scripts can read the port.
                let mut stdout = std::io::stdout().lock();
                if json {
                    serde_json::to_writer(
                        &mut stdout,
                        &json!({
                            "event": "listening",
                            "addr": addr.to_string(),
                            "device": device.to_string(),
                            "share": share.fmt_short(),
                        }),
                    )?;
                    stdout.write_all(b"\n")?;
                } else {
                    writeln!(
                        stdout,
                        "serving {} as {} on {}",
                        share.fmt_short(),
                        device,
                        addr
                    )?;
                }
                stdout.flush()
            }
            Event::Server(e) => {
                if !quiet {
                    left::log_line!("{}", describe(e));
                }
                Ok(())
            }
            Event::WatchUnavailable(e) => {
                eprintln!("left: warning: {e}; changes are found by the rescan every {rescan} s");
                Ok(())
            }
            Event::WatchError(e) => {
                if !quiet {
                    eprintln!("left: warning: watching the folder: {e}");
                }
                Ok(())
            }
            Event::Auto(e) => {
                // Updates, merges and conflicts are news (`-q` silences them); the warnings
                // are not.
                let news = matches!(
                    e,
                    AutoEvent::Updated { .. }
                        | AutoEvent::Conflict { .. }
                        | AutoEvent::Unwritten(_)
                );
                if !(news && quiet) {
                    left::log_line!("{}", describe_auto(&e));
                }
                Ok(())
            }
        }
    });
    left::app::daemon::run(&dir, store, &share, opts, on_event, wait_for_signal())?;
    Ok(EXIT_OK)
}

/// One log line for an event of the automatic loop.
fn describe_auto(e: &AutoEvent<'_>) -> String {
    match e {
        AutoEvent::Updated {
            merged,
            from,
            now,
            written,
            removed,
            kept,
        } => {
            let what = if *merged {
                "merged with"
            } else {
                "updated from"
            };
            let kept = if *kept > 0 {
                format!(", {kept} local change(s) kept for the next snapshot")
            } else {
                String::new()
            };
            format!(
                "left: {what} {}: now at {} ({written} file(s) written, {removed} removed{kept})",
                from.join(", "),
                now.map(|h| h.fmt_short()).unwrap_or_default(),
            )
        }
        AutoEvent::Conflict { path, copy } => format!(
            "left: conflict: {path} was changed on two devices; the other version is kept as {copy}"
        ),
        AutoEvent::Unwritten(u) => format!("left: warning: {u}"),
        AutoEvent::Held(h) => format!(
            "left: held snapshot {} from {}: {}; nothing was checked out (`left hold` shows it, \
             `left hold accept|reject {}` decides)",
            &h.id[..12.min(h.id.len())],
            h.device,
            h.why,
            &h.id[..12.min(h.id.len())]
        ),
        AutoEvent::WrittenNow(p) => {
            format!(
                "left: {} is written now (it could not be before)",
                p.display()
            )
        }
        AutoEvent::NewlyFrozen(n) => format!(
            "left: warning: {n} tracked paths are now ignored by .leftignore: frozen, not deleted \
             (check .leftignore, or `left forget PATH` to drop one on purpose)"
        ),
        AutoEvent::Skipped { path, reason } => format!(
            "left: warning: {}: {} (not synced; it keeps its previous version)",
            left::sanitize::field(path),
            left::sanitize::field(reason)
        ),
    }
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
}
