//! `left log`, `left ls` and `left restore`: reading snapshots back. They open the store read-only
//! when a running `left serve` (or another command) holds it.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use clap::Args;
use left::identity::DeviceId;
use left_store::{NodeId, RestoreOptions, Store};
use serde_json::json;

use super::{absolute, fmt, head, open_store_read, Global, Output, EXIT_OK};

/// Arguments of `left log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Show at most N snapshots
    #[arg(short = 'n', long, value_name = "N")]
    limit: Option<usize>,
}

/// Arguments of `left ls`.
#[derive(Debug, Args)]
#[command(
    after_help = "With one argument, it is taken as SNAPSHOT when it looks like one (head, \
head~N, or a hex id prefix of at least 4 characters naming a snapshot), else as a PATH in head."
)]
pub struct LsArgs {
    /// Snapshot: head (default), head~N, a full hex id or a unique prefix of at least 4 characters
    #[arg(value_name = "SNAPSHOT")]
    snapshot: Option<String>,
    /// Folder or file inside the snapshot, relative to the share root (default: the root)
    #[arg(value_name = "PATH")]
    path: Option<PathBuf>,
}

/// Arguments of `left restore`.
#[derive(Debug, Args)]
#[command(
    after_help = "With --from PEER, what the store lacks of the snapshot (or of PATH in \
it) is fetched from PEER first, each object checked against its id; SNAPSHOT may then also be a \
full snapshot id this store never had, or `peer` for the peer's current head. Only the folders \
along PATH and what lies under PATH travel. --from needs the store to itself: stop a running \
`left serve` first."
)]
pub struct RestoreArgs {
    /// Snapshot: head, head~N, a full hex id or a unique prefix of at least 4 characters (with
    /// --from also `peer`: the peer's head)
    #[arg(value_name = "SNAPSHOT")]
    pub(crate) snapshot: String,
    /// Only this folder or file of the snapshot, relative to the share root
    #[arg(value_name = "PATH")]
    pub(crate) path: Option<PathBuf>,
    /// Folder to write into (created if missing; must be empty unless --force)
    #[arg(long, value_name = "DIR")]
    pub(crate) to: PathBuf,
    /// Write into a non-empty folder, replacing what the snapshot holds
    #[arg(long)]
    pub(crate) force: bool,
    /// Fetch what this store lacks from this peer first (HOST:PORT, a host, [IPv6]:PORT)
    #[arg(long, value_name = "PEER")]
    pub(crate) from: Option<String>,
    /// Encrypt packets (on|off); the peer must use the same setting
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = super::args::parse_on_off, action = clap::ArgAction::Set, requires = "from")]
    pub(crate) encryption: bool,
    /// Give up on the peer after this many seconds without progress
    #[arg(long, value_name = "SECS", default_value_t = 60.0, requires = "from")]
    pub(crate) timeout: f64,
}

/// Runs `left log`.
pub(crate) fn log(global: &Global, out: &Output, args: LogArgs) -> anyhow::Result<u8> {
    let (_, store) = open_store_read(global)?;
    let entries = match store.head().context("cannot read the head")? {
        Some(head) => store
            .log(head, args.limit.unwrap_or(usize::MAX))
            .context("cannot read the history")?,
        None => Vec::new(),
    };
    let bounds = store.history_bounds().context("cannot read the history")?;
    out.json(&json!({
        "history_starts": bounds.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
        "snapshots": entries.iter().map(|(id, s)| json!({
            "id": id.to_string(),
            "root": s.root.to_string(),
            "parents": s.parents.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            // A merge snapshot carries no device (all zeros): null here.
            "device": (s.device != [0; 32]).then(|| DeviceId(s.device).to_string()),
            "time_ns": s.time_ns,
            "message": s.message,
            "merge": s.parents.len() > 1,
            "shallow": store.is_shallow(*id).unwrap_or(false),
        })).collect::<Vec<_>>(),
    }))?;
    if entries.is_empty() {
        out.human("no snapshots yet (run `left add`)")?;
    }
    for (id, s) in &entries {
        let who = if s.parents.len() > 1 {
            format!(
                "merge of {}",
                s.parents
                    .iter()
                    .map(|p| p.fmt_short())
                    .collect::<Vec<_>>()
                    .join(" + ")
            )
        } else if s.device == [0; 32] {
            "(no device)".to_owned()
        } else {
            DeviceId(s.device).fmt_short()
        };
        let shallow = if store.is_shallow(*id).unwrap_or(false) {
            " [history only]"
        } else {
            ""
        };
        let message = if s.parents.len() > 1 && s.message == left_store::MERGE_MESSAGE {
            ""
        } else {
            s.message.as_str()
        };
        let line = format!(
            "{} {} {who}{shallow} {message}",
            id.fmt_short(),
            fmt::time(s.time_ns),
        );
        out.data(line.trim_end())?;
        if bounds.contains(id) {
            out.human(format!(
                "(local history starts at {}: older snapshots were never fetched here)",
                id.fmt_short()
            ))?;
        }
    }
    Ok(EXIT_OK)
}

/// Runs `left ls`.
pub(crate) fn ls(global: &Global, out: &Output, args: LsArgs) -> anyhow::Result<u8> {
    let (_, store) = open_store_read(global)?;
    let (snapshot, path) = match (args.snapshot, args.path) {
        (None, _) => (head(&store)?, PathBuf::new()),
        (Some(spec), Some(path)) => (resolve(&store, &spec)?, path),
        (Some(one), None) => match looks_like_spec(&one).then(|| store.resolve(&one)) {
            Some(Ok(id)) => (id, PathBuf::new()),
            _ => (head(&store)?, PathBuf::from(one)),
        },
    };
    let path = snapshot_path(&path);
    let entries = store.ls(snapshot, &path).with_context(|| {
        format!(
            "cannot list /{} in {}",
            path.display(),
            snapshot.fmt_short()
        )
    })?;
    out.json(&json!({
        "snapshot": snapshot.to_string(),
        "path": fmt::json_path(&path),
        "entries": entries.iter().map(|e| json!({
            "name": e.name.to_string_lossy(),
            "kind": match e.kind {
                left_store::EntryKind::File => "file",
                left_store::EntryKind::Dir => "dir",
                left_store::EntryKind::Symlink => "symlink",
            },
            "mode": e.mode,
            "size": e.size,
            "mtime_ns": e.mtime_ns,
            "id": e.id.to_string(),
            "link_target": e.link_target.as_ref().map(|t| t.to_string_lossy()),
        })).collect::<Vec<_>>(),
    }))?;
    for e in &entries {
        let mut line = format!(
            "{} {:>12} {} ",
            fmt::mode(e.kind, e.mode),
            e.size,
            fmt::time(e.mtime_ns)
        )
        .into_bytes();
        line.extend_from_slice(fmt::raw(&e.name));
        if let Some(target) = &e.link_target {
            line.extend_from_slice(b" -> ");
            line.extend_from_slice(fmt::raw(target));
        }
        out.data(line)?;
    }
    Ok(EXIT_OK)
}

/// Runs `left restore`.
pub(crate) fn restore(global: &Global, out: &Output, args: RestoreArgs) -> anyhow::Result<u8> {
    // With --from, `remote::restore_from` runs instead (see `super::run`).
    let (_, store) = open_store_read(global)?;
    let snapshot = resolve(&store, &args.snapshot)?;
    let path = args.path.as_deref().map(snapshot_path);
    restore_into(
        out,
        &store,
        snapshot,
        path.as_deref(),
        &args.to,
        args.force,
        None,
    )
}

/// Restores `snapshot` (or `path` in it) into `to` and prints the result (with what was fetched
/// for it, after `--from`).
pub(crate) fn restore_into(
    out: &Output,
    store: &Store,
    snapshot: NodeId,
    path: Option<&Path>,
    to: &Path,
    force: bool,
    fetched: Option<left::app::restore::Fetched>,
) -> anyhow::Result<u8> {
    let target = absolute(to)?;
    let progress = out.progress();
    let report = store
        .restore(
            snapshot,
            path,
            &target,
            &RestoreOptions { force },
            &progress,
        )
        .with_context(|| {
            format!(
                "cannot restore {} to {}",
                snapshot.fmt_short(),
                target.display()
            )
        })?;
    drop(progress);
    out.json(&json!({
        "snapshot": snapshot.to_string(),
        "path": path.map(fmt::json_path),
        "to": fmt::json_path(&target),
        "files": report.files,
        "dirs": report.dirs,
        "symlinks": report.symlinks,
        "bytes_written": report.bytes_written,
        "fetched": fetched.as_ref().map(|f| json!({
            "peer": f.peer,
            "nodes": f.nodes,
            "chunks": f.chunks,
            "chunk_bytes": f.bytes,
        })),
    }))?;
    out.human(format!(
        "restored {}{} to {}: {} files, {} dirs, {} symlinks, {}{}",
        snapshot.fmt_short(),
        path.map(|p| format!(":/{}", p.display()))
            .unwrap_or_default(),
        target.display(),
        report.files,
        report.dirs,
        report.symlinks,
        fmt::bytes(report.bytes_written),
        fetched
            .map(|f| format!(
                " (fetched {} chunks and {} nodes, {}, from {})",
                f.chunks,
                f.nodes,
                fmt::bytes(f.bytes),
                f.peer
            ))
            .unwrap_or_default()
    ))?;
    Ok(EXIT_OK)
}

fn resolve(store: &Store, spec: &str) -> anyhow::Result<NodeId> {
    store
        .resolve(spec)
        .with_context(|| format!("unknown snapshot {spec:?}"))
}

/// Whether `s` has the syntax of a snapshot spec: head, head~N, or 4 to 64 hex digits.
fn looks_like_spec(s: &str) -> bool {
    s == "head"
        || s.strip_prefix("head~")
            .is_some_and(|n| n.parse::<usize>().is_ok())
        || ((4..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A path inside a snapshot: relative to the share root, without `.` or a leading `/`.
pub(crate) fn snapshot_path(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_syntax() {
        assert!(looks_like_spec("head"));
        assert!(looks_like_spec("head~3"));
        assert!(looks_like_spec("1a2B"));
        assert!(!looks_like_spec("abc"));
        assert!(!looks_like_spec("docs"));
        assert!(!looks_like_spec("head~x"));
    }

    #[test]
    fn snapshot_paths() {
        assert_eq!(snapshot_path(Path::new("/a/./b")), PathBuf::from("a/b"));
        assert_eq!(snapshot_path(Path::new(".")), PathBuf::new());
    }
}

/// For `left status`: the paths checkouts could not write here (they keep their synced version
/// in the store and are tried again at every sync and scan), and the paths the serving
/// process's last scan could not read (a FIFO, a file it may not read: each keeps its previous
/// version). From the serving process's status when one runs, else from the store (which keeps
/// no record of skipped paths: `left add` names them when it meets them).
pub(crate) fn local_problems(
    global: &Global,
    served: Option<&serde_json::Value>,
) -> (Vec<String>, Vec<serde_json::Value>) {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    match served {
        Some(v) => (
            strings(&v["unwritten"]),
            v["skipped"].as_array().cloned().unwrap_or_default(),
        ),
        None => {
            let unwritten = open_store_read(global)
                .ok()
                .and_then(|(_, store)| store.unwritten_paths().ok())
                .unwrap_or_default()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            (unwritten, Vec::new())
        }
    }
}

/// Prints what [`local_problems`] found, one line per path (nothing when there is none).
pub(crate) fn print_local_problems(
    out: &Output,
    unwritten: &[String],
    skipped: &[serde_json::Value],
) -> anyhow::Result<()> {
    if !unwritten.is_empty() {
        out.data(format!(
            "{} path(s) could not be written here (tried again at every sync):",
            unwritten.len()
        ))?;
        for p in unwritten {
            out.data(format!("  {p}"))?;
        }
    }
    if !skipped.is_empty() {
        out.data(format!(
            "{} path(s) could not be read at the last scan (they keep their previous version):",
            skipped.len()
        ))?;
        for s in skipped {
            out.data(format!(
                "  {}: {}",
                s["path"].as_str().unwrap_or("?"),
                s["reason"].as_str().unwrap_or("?")
            ))?;
        }
    }
    Ok(())
}
