//! Folder types (per device): send-receive, the default; send-only, which publishes and never
//! takes (see [`super::send_only`]); and receive-only, whose local changes
//! are snapshotted into `head` but never announced or served (the store's
//! [`Store::published`] is the ref `share`, the share's version this device last took from its
//! peers), and [`revert`], which brings a receive-only folder back to the share's version.
//!
//! A type changes what a device publishes and checks out, never the merge function: the share's
//! version of a receive-only device moves by the same fast-forward or merge as any device's head
//! (see [`super::integrate`]).

use std::path::Path;

use left_store::{AddOptions, CheckoutOptions, NodeId, Progress, Store, SHARE_REF};
use serde::Serialize;

/// The ref that keeps the local changes a [`revert`] took out of the folder (history, never
/// announced).
pub const REVERTED_REF: &str = "local/reverted";

/// A device's folder type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FolderType {
    /// Publishes its changes and checks out the peers' (the default).
    SendReceive,
    /// Checks out the peers' changes; its own are never published.
    ReceiveOnly,
    /// Publishes its changes; never takes the peers' (it fetches their heads' headers only;
    /// `left override` makes the share match it).
    SendOnly,
}

impl FolderType {
    /// The type of the store's device.
    pub fn of(store: &Store) -> left_store::Result<FolderType> {
        Ok(if store.receive_only()? {
            FolderType::ReceiveOnly
        } else if store.send_only()? {
            FolderType::SendOnly
        } else {
            FolderType::SendReceive
        })
    }

    /// Sets it (a synced write). Receive-only starts with the current head as the share's
    /// version; leaving it publishes `head`, local changes included, at the next announcement.
    /// Send-only keeps `head`; leaving it for send-receive merges what the peers have at the
    /// next exchange.
    pub fn set(self, store: &Store) -> left_store::Result<()> {
        match self {
            FolderType::SendReceive => {
                store.set_receive_only(false)?;
                store.set_send_only(false)
            }
            FolderType::ReceiveOnly => store.set_receive_only(true),
            FolderType::SendOnly => store.set_send_only(true),
        }
    }

    /// Its name as `status` and `--json` show it.
    pub fn name(self) -> &'static str {
        match self {
            FolderType::SendReceive => "send-receive",
            FolderType::ReceiveOnly => "receive-only",
            FolderType::SendOnly => "send-only",
        }
    }
}

/// What [`revert`] did.
#[derive(Clone, Debug, Default)]
pub struct Reverted {
    /// The head now (the share's version).
    pub head: Option<NodeId>,
    /// The local snapshot taken out of the folder (kept under [`REVERTED_REF`]); `None` when
    /// there were no local changes.
    pub local: Option<NodeId>,
    /// Files written by the checkout.
    pub files_written: u64,
    /// Files removed by it.
    pub files_removed: u64,
}

/// Brings a receive-only folder back to the share's version: a scan first (so no edit is
/// lost), then a checkout from the local head to the share's version. The local snapshot stays
/// in history under [`REVERTED_REF`] (`left restore` brings any of it back).
pub fn revert(
    store: &Store,
    share: &Path,
    device: [u8; 32],
    checkout: &CheckoutOptions,
    progress: &dyn Progress,
) -> left_store::Result<Reverted> {
    if !store.receive_only()? {
        return Err(left_store::Error::Invalid(
            "revert is for a receive-only folder (`left folder-type receive-only`); \
             on a send-receive folder, `left restore` brings back a version"
                .into(),
        ));
    }
    store.add(
        share,
        &[],
        &AddOptions {
            device,
            message: "before revert".into(),
            ..AddOptions::default()
        },
        progress,
    )?;
    let head = store.head()?;
    let Some(to) = store.get_ref(SHARE_REF)? else {
        return Err(left_store::Error::NotFound {
            what: "a share's version: this device has not taken anything from its peers \
                   (run `left sync PEER` first)"
                .into(),
        });
    };
    if head == Some(to) {
        return Ok(Reverted {
            head,
            ..Reverted::default()
        });
    }
    if let Some(h) = head {
        store.set_ref(REVERTED_REF, h)?;
    }
    let r = store.checkout(share, head, to, checkout, progress)?;
    Ok(Reverted {
        head: store.head()?,
        local: head,
        files_written: r.files_written,
        files_removed: r.files_removed,
    })
}
