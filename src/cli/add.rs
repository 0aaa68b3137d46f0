//! `left add`: snapshot the share, or some paths inside it, as the new head.
//!
//! Beside a running `left serve` (which holds the store), the snapshot is made by the serving
//! process through its control socket; the paths are checked here first, the reply printed by the
//! same code as a local result.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use left::identity::Identity;
use left_store::{AddOptions, AddReport};
use serde_json::json;

use super::{
    absolute, answer_error, call_served, fmt, open_or_served, share_root, CliError, Global, Opened,
    Output, EXIT_OK, EXIT_PARTIAL,
};
use left::control;

/// Arguments of `left add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Files or folders inside the share to snapshot (default: the whole share); the rest of the
    /// tree is kept as in the previous snapshot
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Store what symlinks point to instead of the links themselves. Only links whose target
    /// stays inside the share are followed; a link that leaves the share, or that the last
    /// snapshot already holds as a link (links synced from peers arrive so), stays a link
    #[arg(long)]
    follow_links: bool,
    /// Read and hash every file, even those the scan cache says are unchanged
    #[arg(long)]
    rehash: bool,
    /// Snapshot message
    #[arg(short, long, value_name = "MSG")]
    message: Option<String>,
}

/// Runs `left add`.
pub(crate) fn run(global: &Global, out: &Output, args: AddArgs) -> anyhow::Result<u8> {
    let (store_dir, store) = match open_or_served(global)? {
        Opened::Local(dir, store) => (dir, store),
        Opened::Served(dir, status) => return run_served(out, args, &dir, &status),
    };
    let share = share_root(&store_dir, &store)?;
    // The store folder may be given through a link; compare canonical forms.
    let only = relative_paths(&share, &store_dir, &args.paths)?;
    let device = Identity::load(&store_dir)
        .context("cannot read the device key")?
        .device_id();
    let opts = AddOptions {
        follow_links: args.follow_links,
        rehash: args.rehash,
        message: args.message.unwrap_or_default(),
        device: device.0,
        settle_ns: 0,
        time_ns: None,
    };
    let progress = out.progress();
    let report = store
        .add(&share, &only, &opts, &progress)
        .with_context(|| format!("cannot snapshot {}", share.display()))?;
    drop(progress);
    finish(out, &report)
}

/// `left add` through the serving process whose status is `status`.
fn run_served(
    out: &Output,
    args: AddArgs,
    store_dir: &Path,
    status: &serde_json::Value,
) -> anyhow::Result<u8> {
    let share = status["share_root"]
        .as_str()
        .map(PathBuf::from)
        .ok_or(CliError::UnexpectedAnswer { request: "Status" })?;
    let share = std::fs::canonicalize(&share)
        .with_context(|| format!("cannot open the share folder {}", share.display()))?;
    let paths = relative_paths(&share, store_dir, &args.paths)?;
    let req = control::Request::Add {
        paths,
        message: args.message.unwrap_or_default(),
        rehash: args.rehash,
        follow_links: args.follow_links,
    };
    match call_served(store_dir, &req)? {
        control::Response::Add(reply) => finish(out, &reply),
        other => Err(answer_error(other, "Add")),
    }
}

/// Prints the report; exit 3 when files were skipped.
fn finish(out: &Output, report: &AddReport) -> anyhow::Result<u8> {
    print(out, report)?;
    Ok(if report.skipped.is_empty() {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    })
}

/// The paths given to `add`, relative to the share root; empty when the whole share is meant.
fn relative_paths(
    share: &Path,
    store_dir: &Path,
    given: &[PathBuf],
) -> anyhow::Result<Vec<PathBuf>> {
    // The store folder may be given through a link; compare canonical forms.
    let store_canon = std::fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.to_owned());
    let mut only = Vec::with_capacity(given.len());
    let mut whole = false;
    for given in given {
        let rel = share_relative(share, &store_canon, given)?;
        if rel.as_os_str().is_empty() {
            // The share root itself: snapshot everything (after checking the other paths).
            whole = true;
        }
        only.push(rel);
    }
    if whole {
        only.clear();
    }
    Ok(only)
}

/// `given` relative to the share root, checked to exist and to lie inside the share and outside the
/// store. Links and `..` in the parent folders are resolved; the last component is not, so
/// `left add link` stores the link itself.
fn share_relative(share: &Path, store: &Path, given: &Path) -> anyhow::Result<PathBuf> {
    let abs = absolute(given)?;
    let missing = || CliError::PathMissing {
        path: given.to_owned(),
    };
    let resolved = match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent).map(|p| p.join(name)),
        _ => std::fs::canonicalize(&abs),
    }
    .map_err(|_| missing())?;
    if std::fs::symlink_metadata(&resolved).is_err() {
        return Err(missing().into());
    }
    if resolved.starts_with(store) {
        return Err(CliError::PathInStore {
            path: given.to_owned(),
        }
        .into());
    }
    match resolved.strip_prefix(share) {
        Ok(rel) => Ok(rel.to_owned()),
        Err(_) => Err(CliError::PathOutsideShare {
            path: given.to_owned(),
            share: share.to_owned(),
        }
        .into()),
    }
}

fn print(out: &Output, r: &AddReport) -> anyhow::Result<()> {
    // Skipped files go to stderr whatever the output mode: they are warnings, and exit code 3 says so.
    if !r.skipped.is_empty() {
        let mut err = std::io::stderr().lock();
        for s in &r.skipped {
            let _ = err.write_all(b"left: skipped ");
            let _ = err.write_all(s.path.as_os_str().as_bytes());
            let _ = writeln!(err, ": {}", s.reason);
        }
    }
    frozen_warning(r.newly_frozen);
    out.json(&json!({
        "frozen": r.frozen,
        "newly_frozen": r.newly_frozen,
        "snapshot": r.snapshot.map(|id| id.to_string()),
        "head": r.head.map(|id| id.to_string()),
        "files": r.files,
        "dirs": r.dirs,
        "symlinks": r.symlinks,
        "bytes_read": r.bytes_read,
        "bytes_new": r.bytes_new,
        "bytes_stored": r.bytes_stored,
        "skipped": r.skipped.iter().map(|s| json!({
            "path": fmt::json_path(&s.path),
            "reason": s.reason,
        })).collect::<Vec<_>>(),
    }))?;
    let what = match (r.snapshot, r.head) {
        (Some(id), _) => format!("snapshot {}", id.fmt_short()),
        (None, Some(head)) => format!("no changes, head stays {}", head.fmt_short()),
        (None, None) => "nothing to snapshot".to_owned(),
    };
    let mut line = format!(
        "{what}: {} files, {} dirs, {} symlinks; read {}, new {}, stored {}",
        r.files,
        r.dirs,
        r.symlinks,
        fmt::bytes(r.bytes_read),
        fmt::bytes(r.bytes_new),
        fmt::bytes(r.bytes_stored)
    );
    if !r.skipped.is_empty() {
        line.push_str(&format!("; {} skipped (listed above)", r.skipped.len()));
    }
    if r.frozen > 0 {
        line.push_str(&format!("; {} frozen (ignored, kept as tracked)", r.frozen));
    }
    out.human(line)?;
    Ok(())
}

/// The warning line for an add that froze more than [`left_store::FROZEN_WARN`] paths at once
/// (a `.leftignore` change, here or from a peer), if it did.
pub(crate) fn frozen_warning_line(newly_frozen: u64) -> Option<String> {
    (newly_frozen > left_store::FROZEN_WARN).then(|| {
        format!(
            "warning: {newly_frozen} tracked paths are now ignored by .leftignore: they are frozen, \
             not deleted (their last version stays in the snapshot, local changes to them are not \
             published); check .leftignore, or `left forget PATH` to drop one on purpose"
        )
    })
}

/// Prints [`frozen_warning_line`] on stderr (whatever the output mode, like skipped files).
pub(crate) fn frozen_warning(newly_frozen: u64) {
    if let Some(l) = frozen_warning_line(newly_frozen) {
        let _ = writeln!(std::io::stderr().lock(), "left: {l}");
    }
}

/// Arguments of `left forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Frozen paths (tracked, now covered by `.leftignore`) to drop from the snapshot
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<PathBuf>,
    /// Snapshot message (default: "forget PATH...")
    #[arg(short, long, value_name = "MSG")]
    message: Option<String>,
}

/// Runs `left forget`: a new snapshot without the given frozen paths (peers delete them; the
/// files here stay on disk; history keeps their old versions). A path that is not in the head,
/// not ignored, or outside the share is a usage error (exit 2).
pub(crate) fn forget(global: &Global, out: &Output, args: ForgetArgs) -> anyhow::Result<u8> {
    let (store_dir, store) = match open_or_served(global)? {
        Opened::Local(dir, store) => (dir, store),
        Opened::Served(..) => {
            return Err(CliError::Served {
                message: "a `left serve` holds the store, and forget does not go through it yet"
                    .into(),
                hint: Some("stop `left serve`, run `left forget` again, then start it".into()),
            }
            .into())
        }
    };
    let share = share_root(&store_dir, &store)?;
    let mut rels = Vec::with_capacity(args.paths.len());
    for given in &args.paths {
        let abs = absolute(given)?;
        // The path may be gone from disk (a frozen file deleted here): resolve its folder only.
        let resolved = match (abs.parent(), abs.file_name()) {
            (Some(parent), Some(name)) => std::fs::canonicalize(parent)
                .map(|p| p.join(name))
                .unwrap_or(abs.clone()),
            _ => abs.clone(),
        };
        let rel = resolved
            .strip_prefix(&share)
            .or_else(|_| abs.strip_prefix(&share))
            .map_err(|_| CliError::Usage {
                message: format!(
                    "{} is outside the share {}",
                    given.display(),
                    share.display()
                ),
                hint: Some("give paths inside the share".into()),
            })?;
        rels.push(rel.to_owned());
    }
    let device = Identity::load(&store_dir)
        .context("cannot read the device key")?
        .device_id();
    let opts = AddOptions {
        message: args.message.unwrap_or_default(),
        device: device.0,
        ..AddOptions::default()
    };
    let sid =
        match store.forget(&share, &rels, &opts) {
            Ok(sid) => sid,
            Err(
                e @ (left_store::Error::Invalid(_)
                | left_store::Error::NotFound { .. }
                | left_store::Error::PathOutsideShare { .. }),
            ) => return Err(CliError::Usage {
                message: format!("cannot forget: {e}"),
                hint: Some(
                    "forget takes paths in the head snapshot that .leftignore covers (frozen); \
                     `left status` counts them"
                        .into(),
                ),
            }
            .into()),
            Err(e) => return Err(anyhow::Error::new(e).context("cannot forget")),
        };
    out.json(&json!({
        "snapshot": sid.to_string(),
        "forgotten": rels.iter().map(|p| fmt::json_path(p)).collect::<Vec<_>>(),
        "frozen": store.frozen_count().unwrap_or(0),
    }))?;
    out.human(format!(
        "snapshot {}: forgot {} path(s); the files on disk stay, history keeps their old versions",
        sid.fmt_short(),
        rels.len()
    ))?;
    Ok(EXIT_OK)
}
