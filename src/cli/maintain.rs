//! `left verify` and `left gc`: checking and shrinking the store. `left verify --repair` is in
//! [`super::remote`].

use std::os::unix::ffi::OsStrExt;

use anyhow::Context;
use clap::Args;
use left::control;
use left::identity::DeviceId;
use left::peers::PeerBook;
use left_store::{GcOptions, GcReport, GcRoot, ObjectKind, Problem, ProblemKind};
use serde_json::json;

use super::{
    answer_error, call_served, fmt, open_or_served, open_store_read, CliError, Global, Opened,
    Output, EXIT_OK,
};

/// Arguments of `left verify`.
#[derive(Debug, Args)]
#[command(
    after_help = "With --repair, every missing or corrupt object is fetched again from \
the peers: the ones named, plus every address in the peer book (<store>/peers.json) of a device \
still allowed. Each object is checked against its id on arrival; then the store is verified again, \
and the exit code is 1 if anything is still damaged. --repair needs the store to itself: stop a \
running `left serve` first (plain verify works beside it)."
)]
pub struct VerifyArgs {
    /// Fetch every missing or corrupt object again from peers, then verify again
    #[arg(long)]
    pub(crate) repair: bool,
    /// Peers to repair from (HOST:PORT, a host, [IPv6]:PORT), besides those of the peer book
    #[arg(value_name = "PEER", requires = "repair")]
    pub(crate) peers: Vec<String>,
    /// More peers, comma-separated
    #[arg(long, value_name = "A,B,C", value_delimiter = ',', requires = "repair")]
    pub(crate) ip: Vec<String>,
    /// Encrypt packets (on|off); the peers must use the same setting
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = super::args::parse_on_off, action = clap::ArgAction::Set, requires = "repair")]
    pub(crate) encryption: bool,
    /// Give up on the peers after this many seconds without progress
    #[arg(long, value_name = "SECS", default_value_t = 60.0, requires = "repair")]
    pub(crate) timeout: f64,
}

/// Arguments of `left gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep the files of only the last N snapshots of the head's history (the history itself stays)
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Also keep the files of every snapshot at most this much older than the head (e.g. 30d,
    /// 12h, 90m, 2w, 1y); with --keep-last, a snapshot either rule keeps is kept
    #[arg(long, value_name = "DURATION", value_parser = left::duration::parse_retention)]
    keep_within: Option<std::time::Duration>,
}

/// Runs `left verify`: exit 0 when clean, else every problem on stdout and exit 1.
pub(crate) fn verify(global: &Global, out: &Output) -> anyhow::Result<u8> {
    // With --repair, `remote::verify_repair` runs instead (see `super::run`).
    let (_, store) = open_store_read(global)?;
    let progress = out.progress();
    let report = store.verify(&progress).context("cannot verify the store")?;
    drop(progress);
    out.json(&json!({
        "ok": report.problems.is_empty(),
        "chunks_checked": report.chunks_checked,
        "nodes_checked": report.nodes_checked,
        "bytes_checked": report.bytes_checked,
        "problems": report.problems.iter().map(problem_json).collect::<Vec<_>>(),
        "snapshots": report.snapshots,
        "shallow": report.shallow,
        "history_starts": report.history_starts.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
    }))?;
    for p in &report.problems {
        out.data(problem_line("", p))?;
    }
    if !report.problems.is_empty() {
        return Err(CliError::VerifyFailed {
            count: report.problems.len(),
        }
        .into());
    }
    out.human(format!(
        "verify: ok, {} chunks ({}) and {} nodes checked",
        report.chunks_checked,
        fmt::bytes(report.bytes_checked),
        report.nodes_checked
    ))?;
    out.human(history_line(&report))?;
    Ok(EXIT_OK)
}

/// Where local history starts, for `verify`: shallow history is normal on a joiner.
fn history_line(r: &left_store::VerifyReport) -> String {
    let mut line = format!(
        "history: {} snapshot(s) here, {} with their files",
        r.snapshots,
        r.snapshots - r.shallow
    );
    if r.shallow > 0 {
        line.push_str(
            " (the others are headers only; `left restore SNAPSHOT --from PEER` fetches one)",
        );
    }
    if !r.history_starts.is_empty() {
        let ids: Vec<String> = r.history_starts.iter().map(|id| id.fmt_short()).collect();
        line.push_str(&format!(
            "; local history starts at {} (older snapshots were never fetched here)",
            ids.join(", ")
        ));
    }
    line
}

/// "chunk" or "node".
pub(crate) fn object_name(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Chunk => "chunk",
        ObjectKind::Node => "node",
    }
}

/// "missing" or "corrupt".
pub(crate) fn problem_name(k: ProblemKind) -> &'static str {
    match k {
        ProblemKind::Missing => "missing",
        ProblemKind::Corrupt => "corrupt",
    }
}

/// A problem in `--json` output.
pub(crate) fn problem_json(p: &Problem) -> serde_json::Value {
    json!({
        "object": object_name(p.object),
        "id": p.id.to_string(),
        "kind": problem_name(p.kind),
        "paths": p.paths.iter().map(|x| fmt::json_path(x)).collect::<Vec<_>>(),
    })
}

/// A problem as one line: `PREFIXmissing chunk ID, used by: PATH...`.
pub(crate) fn problem_line(prefix: &str, p: &Problem) -> Vec<u8> {
    let mut line = format!(
        "{prefix}{} {} {}",
        problem_name(p.kind),
        object_name(p.object),
        p.id
    )
    .into_bytes();
    if !p.paths.is_empty() {
        line.extend_from_slice(b", used by:");
        for path in &p.paths {
            line.push(b' ');
            line.extend_from_slice(path.as_os_str().as_bytes());
        }
    }
    line
}

/// Runs `left gc`.
/// Beside a running `left serve`, the serving process collects the garbage.
pub(crate) fn gc(global: &Global, out: &Output, args: GcArgs) -> anyhow::Result<u8> {
    if args.keep_last == Some(0) {
        return Err(CliError::Usage {
            message: "gc --keep-last 0 would drop the files of head".into(),
            hint: Some("keep at least the last snapshot: --keep-last 1 or more".into()),
        }
        .into());
    }
    let (dir, report) = match open_or_served(global)? {
        Opened::Local(dir, store) => {
            // A revoked device's last snapshot pins nothing: its ref goes first.
            let dropped = match PeerBook::load(&dir) {
                Ok(book) => left::peers::drop_revoked_refs(&book, &store)
                    .context("cannot drop the refs of revoked devices")?,
                Err(e) => {
                    eprintln!(
                        "left: warning: cannot read the peer book ({e}); refs of revoked devices are kept"
                    );
                    Vec::new()
                }
            };
            let progress = out.progress();
            let mut report = match store.gc_keep_within(
                &GcOptions {
                    keep_last: args.keep_last,
                },
                args.keep_within,
                &progress,
            ) {
                // A retention policy the store refuses (it would drop head's files): exit 2.
                Err(left_store::Error::Invalid(message)) => {
                    return Err(CliError::Usage {
                        message,
                        hint: None,
                    }
                    .into())
                }
                r => r.context("cannot collect garbage")?,
            };
            drop(progress);
            report.dropped_refs = dropped;
            (dir, report)
        }
        Opened::Served(dir, _) => {
            let req = control::Request::Gc {
                keep_last: args.keep_last,
                keep_within_secs: args.keep_within.map(|d| d.as_secs()),
            };
            let report = match call_served(&dir, &req)? {
                control::Response::Gc(reply) => reply,
                other => return Err(answer_error(other, "Gc")),
            };
            (dir, report)
        }
    };
    let book = PeerBook::load(&dir).ok();
    print_gc(out, &report, book.as_ref())?;
    Ok(EXIT_OK)
}

fn print_gc(out: &Output, report: &GcReport, book: Option<&PeerBook>) -> anyhow::Result<()> {
    out.json(&json!({
        "chunks_removed": report.chunks_removed,
        "nodes_removed": report.nodes_removed,
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
        "dropped_refs": report.dropped_refs,
        "kept_by": report.kept_by.iter().map(|k| json!({
            "name": k.name,
            "snapshot": k.snapshot.map(|s| s.to_string()),
            "snapshots": k.snapshots,
            "only_chunks": k.only_chunks,
            "only_bytes": k.only_bytes,
            "device": peer_device(k).map(|d| d.to_string()),
            "in_peer_book": peer_device(k).map(|d| book.is_some_and(|b| b.get(&d.0).is_some())),
        })).collect::<Vec<_>>(),
    }))?;
    out.human(format!(
        "gc: removed {} chunks and {} nodes; store {} -> {}",
        report.chunks_removed,
        report.nodes_removed,
        fmt::bytes(report.bytes_before),
        fmt::bytes(report.bytes_after)
    ))?;
    for name in &report.dropped_refs {
        out.human(format!(
            "dropped {name}: the device is revoked, so its last snapshot keeps nothing alive"
        ))?;
    }
    for k in &report.kept_by {
        out.human(gc_root_line(k, book))?;
    }
    Ok(())
}

/// The device of a `peers/<device>` root.
fn peer_device(k: &GcRoot) -> Option<DeviceId> {
    k.name.strip_prefix("peers/")?.parse().ok()
}

/// "kept alive by peers/abcd1234 (last seen ...): 1 snapshot, 1.2 GiB only it holds; ..."
fn gc_root_line(k: &GcRoot, book: Option<&PeerBook>) -> String {
    let plural = if k.snapshots == 1 { "" } else { "s" };
    let (label, about) = match k.name.as_str() {
        "head" => ("head".to_owned(), String::new()),
        "checkout" => (
            "checkout".to_owned(),
            " (an interrupted checkout: `left checkout` finishes it, `left checkout --abort` drops it)"
                .to_owned(),
        ),
        "retention" => (
            "retention".to_owned(),
            " (--keep-last / --keep-within)".to_owned(),
        ),
        name => match (peer_device(k), name.strip_prefix("peers/")) {
            (Some(d), _) => {
                let short: String = d.to_string().chars().take(8).collect();
                let about = match book.and_then(|b| b.get(&d.0)) {
                    Some(r) if r.last_seen > 0 => {
                        let mut s = format!(
                            " (last seen {}",
                            fmt::time(r.last_seen.saturating_mul(1_000_000_000))
                        );
                        if let Some(a) = r.last_addr {
                            s.push_str(&format!(" from {a}"));
                        }
                        s.push(')');
                        s
                    }
                    Some(_) => " (never seen)".to_owned(),
                    None => " (not in the peer book)".to_owned(),
                };
                (format!("peers/{short}"), about)
            }
            _ => (name.to_owned(), String::new()),
        },
    };
    let mut line = format!(
        "kept alive by {label}{about}: {} snapshot{plural}, {} only it holds",
        k.snapshots,
        fmt::bytes(k.only_bytes)
    );
    if let (Some(d), true) = (peer_device(k), k.only_bytes > 0) {
        if book.and_then(|b| b.get(&d.0)).is_some_and(|r| r.pinned) {
            line.push_str(&format!(
                "; `left peers --unpin {d}`, then `--forget {d}`, drops it"
            ));
        } else {
            line.push_str(&format!("; `left peers --forget {d}` drops it"));
        }
    }
    line
}
