//! `left sync PEER...`: pull what peers have, then check it out into the share folder.
//!
//! The work is [`left::app::sync`]'s (finish an interrupted checkout, snapshot local changes,
//! fetch, decide, check out or merge); this file turns the flags into its settings and its report
//! into the summary line, `--json`, the warnings on stderr and the exit code. When both sides
//! changed and the history needed to merge them cannot be fetched, the folder is left untouched,
//! the fetched snapshot stays in the store as the peer's ref, and the exit code is 4.

use std::io::Write;
use std::time::Instant;

use clap::Args;
use left::app::decide::Decision;
use left::app::peer_setup::{add_book_targets, check_timeout, given_peers};
use left::app::sync::{Event, Outcome, Refusal, SyncOptions};
use left::app::LocalError;
use left::identity::DeviceId;
use serde_json::json;

use super::args::parse_on_off;
use super::peer_hints::failure_hint;
use super::progress::FetchBar;
use super::{
    fmt, share_root, CliError, Global, Output, EXIT_DIVERGED, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL,
};

/// Arguments of `left sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Peers to pull from: HOST:PORT, a bare host (port 22001), IPv4 or IPv6 ([::1]:22001, ::1)
    #[arg(value_name = "PEER")]
    peers: Vec<String>,
    /// More peers, comma-separated (as the seed's --ip a,b,c)
    #[arg(long, value_name = "A,B,C", value_delimiter = ',')]
    ip: Vec<String>,
    /// Encrypt packets (on|off, or yes|no); the peers must use the same setting
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    encryption: bool,
    /// fsync every file the checkout writes (the store is durable either way)
    #[arg(long)]
    fsync: bool,
    /// Give up after this many seconds without progress (retrying unreachable peers meanwhile)
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    timeout: f64,
    /// Check out what the deletion guard would hold (a change that deletes or replaces many
    /// files here) without asking
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Runs `left sync`.
pub(crate) fn run(global: &Global, out: &Output, args: SyncArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let mut targets = given_peers(&args.peers, &args.ip)?;
    check_timeout(args.timeout)?;
    // No peer named: the devices of the peer book, at the address each was last seen at.
    if targets.is_empty() {
        let dir = super::store_dir(global)?;
        add_book_targets(&dir, &mut targets)?;
        if targets.is_empty() {
            return Err(CliError::Usage {
                message: "no peer given, and the peer book knows none".into(),
                hint: Some(
                    "name one: `left sync HOST:PORT` (or a host, or --ip A,B); a peer synced with once is remembered (`left peers`)"
                        .into(),
                ),
            }
            .into());
        }
    }

    let (dir, store) = super::open_store_exclusive(global, "sync", "sync")?;
    let share = share_root(&dir, &store)?;
    let progress = out.progress();
    let mut opts = SyncOptions {
        targets,
        encryption: args.encryption,
        fsync: args.fsync,
        timeout: args.timeout,
        yes: args.yes,
    };
    let quiet = out.quiet;
    let mut on_event = |e: Event<'_>| {
        match e {
        Event::Snapshotted {
            newly_frozen,
            skipped,
        } => {
            if !quiet {
                super::add::frozen_warning(newly_frozen);
                for s in skipped {
                    eprintln!(
                        "left: warning: {}: {} (its previous version is kept)",
                        s.path.display(),
                        s.reason
                    );
                }
            }
        }
        Event::HistoryFailed { head, peer, error } => {
            if !quiet {
                eprintln!(
                    "left: cannot fetch the history of {} from {peer}: {error}",
                    head.fmt_short()
                )
            }
        }
        Event::BookWarning(w) => {
            if !quiet {
                eprintln!("left: warning: {w}");
            }
        }
        Event::Diverged { peer } => eprintln!(
            "left: both this share and {peer} changed since they last agreed, and the history needed to merge them is on no peer reached; nothing was checked out"
        ),
        Event::Conflict { path, copy } => {
            if !quiet {
                eprintln!(
                    "left: {path} changed on both sides: both are kept, the other version as {copy}"
                );
            }
        }
    }
    };
    let meters = FetchBar::maker(!out.quiet);
    let mut store = Some(store);
    let outcome = loop {
        let store = match store.take() {
            Some(s) => s,
            None => super::open_store_exclusive(global, "sync", "sync")?.1,
        };
        let outcome = left::app::sync::run(
            &dir,
            store,
            &share,
            &opts,
            &progress,
            &meters,
            &mut on_event,
        )?;
        // Held: a person at a terminal is asked; a script gets exit 5 and `left hold`.
        if let Outcome::Refused(Refusal::Held(h)) = &outcome {
            if !opts.yes && !out.json && !out.quiet && ask(h) {
                opts.yes = true;
                continue;
            }
        }
        break outcome;
    };
    drop(progress);
    let synced = match outcome {
        Outcome::Synced(s) => s,
        Outcome::Refused(Refusal::Held(h)) => {
            out.json(&json!({ "held": *h }))?;
            let _ = writeln!(
                std::io::stderr(),
                "left: {}
hint: nothing was checked out; `left hold accept|reject {}` decides, \
                 `left sync --yes` checks it out",
                super::hold::describe(&h),
                &h.id[..12.min(h.id.len())]
            );
            return Ok(super::EXIT_HELD);
        }
        Outcome::Refused(r) => return Ok(refused(&r, &share)),
    };
    let seconds = started.elapsed().as_secs_f64();
    let decision = &synced.decision;
    let report = &synced.fetch;
    let (checkout, merged, retried) = (&synced.checkout, &synced.merged, &synced.retried);
    let (skipped, unwritten, head, udp) =
        (&synced.skipped, &synced.unwritten, synced.head, synced.udp);
    let diverged = synced.diverged;
    let (fetch_seconds, checkout_seconds) = (synced.fetch_seconds, synced.checkout_seconds);

    // Output.
    let failed = matches!(decision, Decision::Failed);
    let mut stderr = std::io::stderr().lock();
    for p in &report.peers {
        if let Some(e) = &p.error {
            if failed {
                let _ = writeln!(stderr, "left: cannot sync: {}: {e}", p.label);
            } else if !out.quiet {
                let _ = writeln!(stderr, "left: warning: {}: {e}", p.label);
            }
        }
    }
    if failed {
        if let Some(hint) = failure_hint(&report.peers) {
            let _ = writeln!(stderr, "hint: {hint}");
        }
    }
    drop(stderr);
    let st = &report.stats;
    out.json(&json!({
        "head": head.map(|h| h.to_string()),
        "fetched_head": synced.fetched_head().map(|h| h.to_string()),
        "bytes_sent": udp.0,
        "bytes_received": udp.1,
        "payload_bytes_received": st.payload_bytes_received,
        "chunks_fetched": st.chunks_fetched,
        "nodes_fetched": st.nodes_fetched,
        "chunk_bytes_fetched": st.chunk_bytes_fetched,
        "seconds": seconds,
        "fetch_seconds": fetch_seconds,
        "checkout_seconds": checkout_seconds,
        "checked_out": checkout.is_some() || merged.as_ref().is_some_and(|m| m.moved()),
        "diverged": diverged,
        "merged": merged.as_ref().map(|m| json!({
            "merges": m.merges,
            "fast_forwards": m.fast_forwards,
            "conflicts": m.conflicts.iter().map(|(path, copy)| json!({
                "path": path,
                "copy": copy,
            })).collect::<Vec<_>>(),
            "files_written": m.files_written,
            "files_removed": m.files_removed,
            "kept": m.kept,
        })),
        "retried": retried.as_ref().map(|r| json!({
            "files_written": r.files_written,
        })),
        "unwritten": unwritten.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "skipped": skipped.iter().map(|s| json!({
            "path": s.path.display().to_string(),
            "reason": s.reason,
        })).collect::<Vec<_>>(),
        "checkout": checkout.as_ref().map(|c| json!({
            "files_written": c.files_written,
            "files_removed": c.files_removed,
            "dirs_created": c.dirs_created,
            "dirs_removed": c.dirs_removed,
            "symlinks_written": c.symlinks_written,
            "bytes_written": c.bytes_written,
            "bytes_reused": c.bytes_reused,
            "files_staged": c.files_staged,
            "kept": c.kept.len(),
            "unwritten": c.unwritten.iter().map(|u| json!({
                "path": u.path.display().to_string(),
                "reason": u.reason,
            })).collect::<Vec<_>>(),
        })),
        "send_only": matches!(decision, Decision::SendOnly),
        "seen": &synced.seen,
        "peers": report.peers.iter().map(|p| json!({
            "addr": p.addr.map(|a| a.to_string()).unwrap_or_default(),
            "peer": p.label,
            "device": p.device.map(|d| DeviceId(d).to_string()),
            "head": p.head.map(|h| h.to_string()),
            "error": p.error.as_ref().map(|e| &e.reason),
        })).collect::<Vec<_>>(),
    }))?;
    if failed {
        return Ok(EXIT_ERROR);
    }
    let line = match (decision, checkout) {
        (Decision::Checkout(to), Some(c)) => format!(
            "synced {}: fetched {} of new data ({} chunks, {} nodes; {} on the wire) in {seconds:.1} s; wrote {} {} ({}{}), removed {}",
            to.fmt_short(),
            fmt::bytes(st.chunk_bytes_fetched),
            st.chunks_fetched,
            st.nodes_fetched,
            fmt::bytes(udp.1),
            c.files_written,
            if c.files_written == 1 { "file" } else { "files" },
            fmt::bytes(c.bytes_written),
            if c.bytes_reused > 0 {
                format!(", {} of it copied from the old versions", fmt::bytes(c.bytes_reused))
            } else {
                String::new()
            },
            c.files_removed
        ),
        (Decision::Diverged(_), _) if diverged => format!(
            "fetched {} chunks and {} nodes ({}); the share diverged, nothing checked out",
            st.chunks_fetched,
            st.nodes_fetched,
            fmt::bytes(st.payload_bytes_received)
        ),
        (Decision::Diverged(peer), _) => {
            let m = merged.as_ref();
            format!(
                "merged what {peer} has with the changes here: {}; fetched {} of new data in {seconds:.1} s; wrote {} {}, removed {}{}",
                head.map(|h| h.fmt_short()).unwrap_or_default(),
                fmt::bytes(st.chunk_bytes_fetched),
                m.map_or(0, |m| m.files_written),
                if m.map_or(0, |m| m.files_written) == 1 { "file" } else { "files" },
                m.map_or(0, |m| m.files_removed),
                match m.map_or(0, |m| m.conflicts.len()) {
                    0 => String::new(),
                    n => format!("; {n} changed on both sides, both versions kept"),
                }
            )
        }
        (Decision::SendOnly, _) => {
            let ahead = synced.seen.iter().filter(|s| !s.behind).count();
            let lacking = synced.seen.iter().filter(|s| !s.has_ours).count();
            format!(
                "send-only at {}: nothing taken; {} peer(s) have changes this device does not take{}{}",
                head.map(|h| h.fmt_short()).unwrap_or_else(|| "no snapshot".into()),
                ahead,
                if lacking > 0 {
                    format!(", {lacking} lack this device's head (a serving peer pulls it)")
                } else {
                    String::new()
                },
                if ahead > 0 {
                    "; `left override` makes the share match this device"
                } else {
                    ""
                }
            )
        }
        _ => match head {
            Some(h) => format!("up to date at {}", h.fmt_short()),
            None => "up to date: no snapshot on either side".to_string(),
        },
    };
    let line = match retried.as_ref().map(|r| r.files_written) {
        Some(n) if n > 0 => format!(
            "{line}; wrote {n} {} an earlier checkout could not",
            if n == 1 { "path" } else { "paths" }
        ),
        _ => line,
    };
    out.human(line)?;
    if !out.quiet {
        let reports = retried.iter().chain(checkout.iter());
        let mut named = Vec::new();
        for u in reports.flat_map(|c| c.unwritten.iter()) {
            if !named.contains(&&u.path) {
                eprintln!("left: warning: {}: {}", u.path.display(), u.reason);
                named.push(&u.path);
            }
        }
        if let Some(m) = &merged {
            for u in &m.unwritten {
                eprintln!("left: warning: {u}");
            }
        }
        if !unwritten.is_empty() {
            eprintln!(
                "left: warning: {} path(s) could not be written here and keep their synced version in the store; `left sync` tries again (`left status` lists them)",
                unwritten.len()
            );
        }
    }
    Ok(if diverged {
        EXIT_DIVERGED
    } else if !unwritten.is_empty() || !skipped.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

/// Prints a refusal (`left: LINE` and its hint) the way `main` prints errors; returns the exit
/// code.
fn refuse(line: &str, hint: Option<&str>) -> u8 {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "left: {line}");
    if let Some(h) = hint {
        let _ = writeln!(stderr, "hint: {h}");
    }
    EXIT_ERROR
}

/// Prints why the sync stopped before checking anything out; returns the exit code.
fn refused(r: &Refusal, share: &std::path::Path) -> u8 {
    match r {
        Refusal::LocalStore(e) => refuse(&format!("cannot sync: {e}"), Some(local_error_hint(e))),
        Refusal::Held(h) => {
            refuse(&super::hold::describe(h), Some("`left hold` decides"));
            super::EXIT_HELD
        }
        Refusal::NoSpace { to, error, space } => {
            let line = format!(
                "cannot check out {} into {}",
                to.fmt_short(),
                share.display()
            );
            let hint = left::control::store_error_hint(error);
            match space {
                Some(space) => {
                    let text = format!(
                        "the checkout writes {}, {} free on {} (the file system of {})",
                        fmt::bytes(space.needs),
                        fmt::bytes(space.free),
                        space.mount.display(),
                        share.display()
                    );
                    refuse(
                        &format!("{line}: not enough space: {text}"),
                        if space.needs > space.size {
                            Some("the snapshot needs more than this whole file system holds; nothing was changed")
                        } else {
                            hint.as_deref()
                        },
                    )
                }
                None => refuse(&format!("{line}: {error}"), hint.as_deref()),
            }
        }
        Refusal::Corrupt { to, error } => refuse(
            &format!("refusing to check out {}: {error}", to.fmt_short()),
            Some(
                "nothing was checked out; the fetched snapshot (or this store) is damaged: \
                 `left verify` here names what; a peer serving a malformed tree should hear of it",
            ),
        ),
    }
}

/// Asks at a terminal whether to check out what the guard held; false when stdin is not one.
fn ask(h: &left::app::guard::Hold) -> bool {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!(
        "left: {}
check it out anyway? [y/N] ",
        super::hold::describe(h)
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).is_ok() && matches!(line.trim(), "y" | "Y" | "yes")
}

/// What to do about a local store failure during the fetch.
fn local_error_hint(error: &LocalError) -> &'static str {
    if error.disk_full {
        "free some disk space and run `left sync` again: what was fetched is kept and is not fetched again"
    } else {
        "run `left verify` to check the local store; what was fetched so far is kept"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "left",
            "sync",
            "h1",
            "--encryption",
            "off",
            "--ip",
            "10.0.0.1,::1",
            "--timeout",
            "5",
            "h2:7",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Sync(a) => {
                assert!(!a.encryption);
                assert_eq!(a.peers, vec!["h1", "h2:7"]);
                assert_eq!(a.ip, vec!["10.0.0.1", "::1"]);
                assert_eq!(a.timeout, 5.0);
                assert!(!a.fsync);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_store_failures_get_their_own_hint() {
        let full = LocalError {
            message: "disk full while writing /x".into(),
            disk_full: true,
        };
        assert!(local_error_hint(&full).contains("free some disk space"));
        let corrupt = LocalError {
            message: "chunk 1a2b is corrupt".into(),
            disk_full: false,
        };
        assert!(local_error_hint(&corrupt).contains("left verify"));
    }
}
