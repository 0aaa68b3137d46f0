//! `left hold`: the snapshots the deletion guard holds, the decision on one, its thresholds.

use anyhow::Context;
use clap::{Args, Subcommand};
use left::app::guard::{self, GuardState, Hold};
use left::control;
use left::identity::Identity;
use serde_json::json;

use super::{
    answer_error, call_served, fmt, open_or_served, share_root, store_dir, Global, Opened,
};
use super::{Output, EXIT_OK};

/// `left hold` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  left hold                      list the held snapshots and what each would take away
  left hold accept 3f2a9c        check it out (its deletions and replacements happen here)
  left hold reject 3f2a9c        keep the files: a new snapshot brings them back for every peer
  left hold --max-files 200      hold from 200 deleted or replaced files at most
  left hold --off                check out everything (no guard)")]
pub struct HoldArgs {
    #[command(subcommand)]
    decide: Option<Decision>,
    /// Turn the guard off (every checkout goes through).
    #[arg(long, conflicts_with = "on")]
    off: bool,
    /// Turn the guard back on.
    #[arg(long)]
    on: bool,
    /// Deleted or replaced files that always pass (default 10).
    #[arg(long, value_name = "N")]
    min_files: Option<u64>,
    /// Percent of the files that holds (default 50).
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u64).range(1..=100))]
    files_percent: Option<u64>,
    /// Deleted or replaced files that always hold (default 1000).
    #[arg(long, value_name = "N")]
    max_files: Option<u64>,
    /// Percent of the bytes that holds (default 50).
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u64).range(1..=100))]
    bytes_percent: Option<u64>,
    /// Bytes below which the bytes rule never holds (default 67108864, 64 MiB).
    #[arg(long, value_name = "BYTES")]
    min_bytes: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Decision {
    /// Check the held snapshot out: its deletions and replacements happen in this folder
    Accept {
        /// The held snapshot (a prefix of its id is enough)
        id: String,
    },
    /// Keep the files: a snapshot on top of both heads restores them for every peer
    Reject {
        /// The held snapshot (a prefix of its id is enough)
        id: String,
    },
}

/// Runs `left hold`.
pub(crate) fn run(global: &Global, out: &Output, args: HoldArgs) -> anyhow::Result<u8> {
    let dir = store_dir(global)?;
    let configure = args.off
        || args.on
        || args.min_files.is_some()
        || args.files_percent.is_some()
        || args.max_files.is_some()
        || args.bytes_percent.is_some()
        || args.min_bytes.is_some();
    if configure {
        let mut st = GuardState::load(&dir).context("cannot read the deletion guard")?;
        let c = &mut st.config;
        c.off = if args.on { false } else { args.off || c.off };
        c.min_files = args.min_files.unwrap_or(c.min_files);
        c.files_percent = args.files_percent.unwrap_or(c.files_percent);
        c.max_files = args.max_files.unwrap_or(c.max_files);
        c.bytes_percent = args.bytes_percent.unwrap_or(c.bytes_percent);
        c.min_bytes = args.min_bytes.unwrap_or(c.min_bytes);
        st.save(&dir).context("cannot save the deletion guard")?;
    }
    let (id, accept) = match args.decide {
        None => {
            return list(
                out,
                &GuardState::load(&dir).context("cannot read the deletion guard")?,
            )
        }
        Some(Decision::Accept { id }) => (id, true),
        Some(Decision::Reject { id }) => (id, false),
    };
    let (head, written, removed) = match open_or_served(global)? {
        Opened::Local(dir, store) => {
            let share = share_root(&dir, &store)?;
            let device = Identity::load(&dir)
                .context("cannot read the device key")?
                .device_id();
            let d = guard::decide(&store, &share, device.0, &id, accept, &Default::default())?;
            (d.head, d.files_written, d.files_removed)
        }
        Opened::Served(dir, _) => {
            match call_served(&dir, &control::Request::Hold { id, accept })? {
                control::Response::Decided {
                    head,
                    files_written,
                    files_removed,
                } => (head, files_written, files_removed),
                other => return Err(answer_error(other, "Hold")),
            }
        }
    };
    out.json(&json!({
        "accepted": accept,
        "head": head.map(|h| h.to_string()),
        "files_written": written,
        "files_removed": removed,
    }))?;
    let head = head.map(|h| h.fmt_short()).unwrap_or_default();
    if accept {
        out.human(format!(
            "accepted: now at {head} ({written} file(s) written, {removed} removed)"
        ))?;
    } else {
        out.human(format!(
            "rejected: the files stay; snapshot {head} brings them back for every peer"
        ))?;
    }
    Ok(EXIT_OK)
}

fn list(out: &Output, st: &GuardState) -> anyhow::Result<u8> {
    let c = &st.config;
    out.json(&json!({
        "guard": if c.off { "off" } else { "on" },
        "config": c,
        "confirmed": st.confirmed,
        "since": st.since,
        "held": st.held,
    }))?;
    if c.off {
        out.human("the deletion guard is off (`left hold --on` turns it back on)")?;
    }
    if st.held.is_empty() {
        out.human("nothing is held")?;
    }
    for h in &st.held {
        out.human(describe(h))?;
    }
    if !st.held.is_empty() {
        out.human("decide with `left hold accept ID` (check it out) or `left hold reject ID` (keep the files)")?;
    }
    Ok(EXIT_OK)
}

/// A held snapshot in a few lines.
pub(crate) fn describe(h: &Hold) -> String {
    let top: Vec<String> = h
        .top
        .iter()
        .map(|(p, n)| format!("{} ({n})", if p.is_empty() { "/" } else { p }))
        .collect();
    format!(
        "held {} from {}: deletes {} file(s) ({}), replaces {} ({}); {}\n  most in: {}",
        &h.id[..12.min(h.id.len())],
        h.device,
        h.deleted_files,
        fmt::bytes(h.deleted_bytes),
        h.replaced_files,
        fmt::bytes(h.replaced_bytes),
        h.why,
        top.join(", ")
    )
}
