//! `left folder-type` (show or set this device's folder type) and `left revert` (a
//! receive-only folder back to the share's version).

use anyhow::Context;
use clap::Args;
use left::app::folder::{self, FolderType};
use left::identity::Identity;
use left_store::{CheckoutOptions, SHARE_REF};
use serde_json::json;

use super::{open_store_exclusive, open_store_read, share_root, Global, Output, EXIT_OK};

/// `left folder-type` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  left folder-type                  show this device's folder type
  left folder-type receive-only     take the peers' changes, never publish this folder's
  left folder-type send-receive     publish again (local changes made meanwhile included)

A receive-only folder keeps its local changes in local history only: peers never see them.
A peer's change to a path changed here keeps both versions (one under a conflict name);
`left revert` brings the folder back to the share's version.")]
pub struct FolderTypeArgs {
    /// The new type (without it: show the current one).
    #[arg(value_enum)]
    kind: Option<FolderType>,
}

/// `left revert` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  left revert        undo this receive-only folder's local changes (they stay in history)")]
pub struct RevertArgs {}

/// Runs `left folder-type`.
pub(crate) fn run_type(global: &Global, out: &Output, args: FolderTypeArgs) -> anyhow::Result<u8> {
    let (_, store) = match args.kind {
        None => open_store_read(global)?,
        Some(_) => open_store_exclusive(global, "change the folder type", "folder-type")?,
    };
    if let Some(k) = args.kind {
        k.set(&store).context("cannot set the folder type")?;
    }
    let kind = FolderType::of(&store).context("cannot read the folder type")?;
    let share = store.get_ref(SHARE_REF).context("cannot read the refs")?;
    out.json(&json!({
        "folder_type": kind.name(),
        "published": store.published().context("cannot read the refs")?.map(|h| h.to_string()),
    }))?;
    out.human(format!("folder type: {}", kind.name()))?;
    if kind == FolderType::ReceiveOnly {
        let head = store.head().context("cannot read the head")?;
        out.human(if head == share {
            "no local changes: the folder is the share's version".to_owned()
        } else {
            "local changes are kept here and not published (`left revert` drops them)".to_owned()
        })?;
    }
    Ok(EXIT_OK)
}

/// Runs `left revert`.
pub(crate) fn run_revert(global: &Global, out: &Output, _args: RevertArgs) -> anyhow::Result<u8> {
    let (dir, store) = open_store_exclusive(global, "revert", "revert")?;
    let share = share_root(&dir, &store)?;
    let device = Identity::load(&dir)
        .context("cannot read the device key")?
        .device_id();
    let r = folder::revert(
        &store,
        &share,
        device.0,
        &CheckoutOptions::default(),
        &left_store::NoProgress,
    )
    .context("cannot revert the folder")?;
    out.json(&json!({
        "head": r.head.map(|h| h.to_string()),
        "local": r.local.map(|h| h.to_string()),
        "files_written": r.files_written,
        "files_removed": r.files_removed,
    }))?;
    match r.local {
        None => out.human("nothing to revert: the folder is the share's version")?,
        Some(l) => out.human(format!(
            "reverted to {} ({} file(s) written, {} removed); the local changes stay in history as {}",
            r.head.map(|h| h.fmt_short()).unwrap_or_default(),
            r.files_written,
            r.files_removed,
            l.fmt_short()
        ))?,
    }
    Ok(EXIT_OK)
}
