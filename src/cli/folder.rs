//! `left folder-type` (show or set this device's folder type), `left revert` (a receive-only
//! folder back to the share's version) and `left override` (the share made to match a
//! send-only folder).

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
  left folder-type send-only        publish this folder's changes, never take the peers'
  left folder-type send-receive     publish and take again (local changes made meanwhile included)

A receive-only folder keeps its local changes in local history only: peers never see them.
A peer's change to a path changed here keeps both versions (one under a conflict name);
`left revert` brings the folder back to the share's version.

A send-only folder publishes its changes and looks at the peers' heads (snapshot headers
only, never their files); `left status` says which peers have changes not taken here, and
`left override` makes the share match this folder.")]
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

/// `left override` arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  left sync PEER     look at the peers' heads first (send-only takes nothing)
  left override      make the share match this send-only folder

The override is a snapshot of this folder whose parents are this device's head and the
peers' heads it has seen (`left status` lists them): each peer fast-forwards to it, so
what it changed since is undone there (its versions stay in history), unless its deletion
guard holds the change for `left hold`.")]
pub struct OverrideArgs {}

/// Runs `left override`.
pub(crate) fn run_override(
    global: &Global,
    out: &Output,
    _args: OverrideArgs,
) -> anyhow::Result<u8> {
    let (dir, store) = open_store_exclusive(global, "override", "override")?;
    let share = share_root(&dir, &store)?;
    let device = Identity::load(&dir)
        .context("cannot read the device key")?
        .device_id();
    let r = left::app::send_only::override_share(&store, &share, device.0, &left_store::NoProgress)
        .context("cannot override the share")?;
    out.json(&serde_json::to_value(&r).context("cannot encode the report")?)?;
    let head = r
        .head
        .as_deref()
        .map(|h| &h[..12.min(h.len())])
        .unwrap_or("none");
    if r.made {
        out.human(format!(
            "override {head}: on top of {} peer head(s); peers fast-forward to it at their next exchange",
            r.over.len()
        ))?;
    } else {
        out.human(format!(
            "nothing to override: no peer head seen here has changes this device lacks (head {head};              `left sync PEER` looks at the peers' heads)"
        ))?;
    }
    Ok(EXIT_OK)
}

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
    if kind == FolderType::SendOnly {
        out.human("the peers' changes are not taken here (`left override` makes the share match this folder)")?;
    }
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
