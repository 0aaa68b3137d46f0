//! `left verify --repair` and `left restore --from PEER`: commands that fetch objects from peers
//! outside `left sync`, without moving the head or checking anything out.
//!
//! The work is [`left::app::repair`]'s and [`left::app::restore`]'s; this file turns the flags
//! into their settings and their reports into the problem lines, `--json`, errors with hints and
//! exit codes. Both need the store to themselves: beside a running `left serve` they say so (one
//! line, with what to do), as `left sync` does.

use std::time::Instant;

use left::app::peer_errors;
use left::app::peer_setup::{bad_address, check_timeout, given_targets};
use left::app::repair::{Repair, RepairOptions, Unchanged};
use left::app::restore::{Fetched, RestoreOptions};
use left::app::PeerOutcome;
use left_store::{Progress, VerifyReport};
use serde_json::json;

use super::inspect::RestoreArgs;
use super::maintain::{problem_json, problem_line, VerifyArgs};
use super::peer_hints::{failure_hint, peers_json};
use super::progress::FetchBar;
use super::{fmt, open_store_exclusive, CliError, Global, Output, EXIT_OK};

/// Runs `left verify --repair`.
pub(crate) fn verify_repair(global: &Global, out: &Output, args: VerifyArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    check_timeout(args.timeout)?;
    let targets = given_targets(&args.peers, &args.ip)?;
    let (dir, store) = open_store_exclusive(global, "repair", "verify --repair")?;
    let opts = RepairOptions {
        targets,
        encryption: args.encryption,
        timeout: args.timeout,
    };
    let progress = || Box::new(out.progress()) as Box<dyn Progress>;
    let meters = FetchBar::maker(!out.quiet);
    let r = match left::app::repair::run(&dir, store, &opts, &progress, &meters)? {
        Repair::Clean(before) => {
            out.json(&json!({
                "ok": true,
                "problems_found": 0,
                "repaired": 0,
                "unrepaired": 0,
                "chunks_checked": before.chunks_checked,
                "nodes_checked": before.nodes_checked,
                "bytes_checked": before.bytes_checked,
                "problems": [],
                "repaired_objects": [],
                "peers": [],
            }))?;
            out.human(format!(
                "verify: ok, {} chunks ({}) and {} nodes checked; nothing to repair",
                before.chunks_checked,
                fmt::bytes(before.bytes_checked),
                before.nodes_checked
            ))?;
            return Ok(EXIT_OK);
        }
        Repair::Unchanged { before, why, peers } => {
            // A failure before anything was changed prints the problems, as verify does.
            let found = before.problems.len();
            unchanged(out, &before, &peers)?;
            return Err(match why {
                Unchanged::NothingToFetch => CliError::RepairIncomplete {
                    left: found,
                    found,
                    why: ": the damaged objects hold the bytes their ids name (malformed where they are used), so no peer can send better ones".into(),
                },
                Unchanged::NoPeer => CliError::Usage {
                    message: "cannot repair: no peer to fetch from".into(),
                    hint: Some(format!(
                        "name one: `left verify --repair HOST:PORT` (or --ip A,B); the peer book {} holds no address of an allowed device",
                        dir.join(left::peers::PEERS_FILE).display()
                    )),
                },
                Unchanged::NoneReached => CliError::Peers {
                    message: format!(
                        "cannot repair: no peer could be reached: {}",
                        peer_errors(&peers)
                    ),
                    hint: failure_hint(&peers),
                },
            }
            .into());
        }
        Repair::Done(r) => r,
    };
    let (before, after, fetched) = (&r.before, &r.after, &r.fetched);
    let found = before.problems.len();
    let st = &fetched.stats;
    out.json(&json!({
        "ok": after.problems.is_empty(),
        "problems_found": found,
        "repaired": r.repaired.len(),
        "unrepaired": after.problems.len(),
        "corrupt_removed": r.corrupt_removed,
        "marks_cleared": r.plan.marks_cleared(),
        "snapshots_fetched": fetched.snapshots,
        "headers_fetched": fetched.headers,
        "chunks_fetched": st.chunks_fetched,
        "nodes_fetched": st.nodes_fetched,
        "chunk_bytes_fetched": st.chunk_bytes_fetched,
        "payload_bytes_received": st.payload_bytes_received,
        "peers_from_book": r.from_book,
        "chunks_checked": after.chunks_checked,
        "nodes_checked": after.nodes_checked,
        "bytes_checked": after.bytes_checked,
        "seconds": started.elapsed().as_secs_f64(),
        "repaired_objects": r.repaired.iter().map(problem_json).collect::<Vec<_>>(),
        "problems": after.problems.iter().map(problem_json).collect::<Vec<_>>(),
        "peers": peers_json(&fetched.peers),
    }))?;
    for p in &r.repaired {
        out.human(problem_line("repaired ", p))?;
    }
    for p in &after.problems {
        out.data(problem_line("", p))?;
    }
    if !after.problems.is_empty() {
        let errors = peer_errors(&fetched.peers);
        return Err(CliError::RepairIncomplete {
            left: after.problems.len(),
            found,
            why: if errors.is_empty() {
                String::new()
            } else {
                format!(": {errors}")
            },
        }
        .into());
    }
    out.human(format!(
        "verify --repair: repaired {} problem(s): fetched {} chunks and {} nodes ({}); verify: ok, {} chunks ({}) and {} nodes checked",
        r.repaired.len(),
        st.chunks_fetched,
        st.nodes_fetched,
        fmt::bytes(st.chunk_bytes_fetched),
        after.chunks_checked,
        fmt::bytes(after.bytes_checked),
        after.nodes_checked
    ))?;
    Ok(EXIT_OK)
}

/// What a repair that changed nothing prints: the problems, as verify does.
fn unchanged(out: &Output, before: &VerifyReport, peers: &[PeerOutcome]) -> anyhow::Result<()> {
    let found = before.problems.len();
    out.json(&json!({
        "ok": false,
        "problems_found": found,
        "repaired": 0,
        "unrepaired": found,
        "chunks_checked": before.chunks_checked,
        "nodes_checked": before.nodes_checked,
        "bytes_checked": before.bytes_checked,
        "problems": before.problems.iter().map(problem_json).collect::<Vec<_>>(),
        "repaired_objects": [],
        "peers": peers_json(peers),
    }))?;
    for p in &before.problems {
        out.data(problem_line("", p))?;
    }
    Ok(())
}

/// Runs `left restore SNAPSHOT [PATH] --to DIR --from PEER`.
pub(crate) fn restore_from(global: &Global, out: &Output, args: RestoreArgs) -> anyhow::Result<u8> {
    let peer = args.from.clone().unwrap_or_default();
    check_timeout(args.timeout)?;
    let targets = given_targets(std::slice::from_ref(&peer), &[])?;
    let Some(target) = targets.into_iter().next() else {
        return Err(bad_address(&peer, "empty peer address").into());
    };
    let (dir, store) = open_store_exclusive(global, "fetch from a peer", "restore --from")?;
    let store = std::sync::Arc::new(store);
    let wanted = left::app::restore::wanted(&store, &args.snapshot)?;
    let path = args
        .path
        .as_deref()
        .map(super::inspect::snapshot_path)
        .filter(|p| !p.as_os_str().is_empty());
    let opts = RestoreOptions {
        target,
        encryption: args.encryption,
        timeout: args.timeout,
    };
    let meters = FetchBar::maker(!out.quiet);
    let (snapshot, fetched) =
        left::app::restore::run(&dir, &store, &opts, wanted, path.as_deref(), &meters)?;
    super::inspect::restore_into(
        out,
        &store,
        snapshot,
        path.as_deref(),
        &args.to,
        args.force,
        Some(Fetched { peer, ..fetched }),
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn arguments_parse() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "left",
            "verify",
            "--repair",
            "h1",
            "--ip",
            "a,b",
            "--timeout",
            "3",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Verify(a) => {
                assert!(a.repair);
                assert_eq!(a.peers, vec!["h1"]);
                assert_eq!(a.ip, vec!["a", "b"]);
                assert_eq!(a.timeout, 3.0);
            }
            other => panic!("{other:?}"),
        }
        // Peers make sense only with --repair.
        assert!(crate::cli::Cli::try_parse_from(["left", "verify", "h1"]).is_err());
        assert!(crate::cli::Cli::try_parse_from(["left", "verify", "--timeout", "3"]).is_err());
        assert!(crate::cli::Cli::try_parse_from(["left", "verify"]).is_ok());
        let cli = crate::cli::Cli::try_parse_from([
            "left", "restore", "peer", "docs", "--to", "/tmp/x", "--from", "h:1",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Restore(a) => {
                assert_eq!(a.from.as_deref(), Some("h:1"));
                assert_eq!(a.snapshot, "peer");
            }
            other => panic!("{other:?}"),
        }
        assert!(crate::cli::Cli::try_parse_from([
            "left",
            "restore",
            "head",
            "--to",
            "/tmp/x",
            "--timeout",
            "3"
        ])
        .is_err());
    }
}
