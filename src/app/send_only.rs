//! Send-only folders: the device publishes its changes and never takes the peers'. Instead of
//! a fetch it asks each peer for its head ([`look`]: handshake, our `Have` or `Update` so the
//! peer hears of our head, its answer), stores that head's snapshot header and its history
//! (headers only, never a tree or a chunk: shallow, as `gc --keep-last` leaves old snapshots)
//! and keeps it under the ref `seen/<device>`. From those refs `left status` says, per peer,
//! whether it has this device's changes and whether it has changes this device does not take,
//! and [`override_share`] makes the share match this device.
//!
//! What it is not: it merges and checks out nothing (a send-only device's folder and `head`
//! move only by its own scans and by an override); the merge function of the other peers is
//! unchanged, so an override is one more snapshot they fast-forward to.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use left_store::{AddOptions, NodeId, Progress, Snapshot, Store, SEEN_PREFIX};
use serde::Serialize;

use super::history::fetch_headers;
use crate::identity::DeviceId;
use crate::session::{self, Endpoints, FetchConfig, PeerOutcome, Target};

/// A peer's head as a send-only device sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Seen {
    /// The peer's device id.
    pub device: String,
    /// Its head.
    pub head: String,
    /// It has this device's head (ours is its head or an ancestor of it).
    pub has_ours: bool,
    /// Its head is ours or an ancestor of ours: nothing there this device lacks.
    pub behind: bool,
}

/// What [`look`] found out.
#[derive(Debug, Default)]
pub struct Looked {
    /// One per target, in order (the device, its head, or why it failed).
    pub peers: Vec<PeerOutcome>,
    /// Heads whose headers were stored (new here).
    pub new_heads: Vec<NodeId>,
    /// Payload bytes of the headers fetched.
    pub header_bytes: u64,
}

/// Asks every target for its head, fetches the header (and history headers) of each head not
/// stored here, and records it under `seen/<device>`. Never fetches a tree.
pub async fn look(
    eps: &Endpoints,
    store: &Arc<Store>,
    targets: &[Target],
    fcfg: &FetchConfig,
) -> Looked {
    let mut out = Looked {
        peers: session::heads(eps, targets, fcfg, store).await,
        ..Looked::default()
    };
    let ours = store.head().ok().flatten();
    for p in &out.peers {
        let (Some(dev), Some(h), None) = (p.device, p.head, p.error.as_ref()) else {
            continue;
        };
        if Some(h) == ours {
            let _ = record(store, dev, h);
            continue;
        }
        let stored = store.get_node(h).ok().flatten().is_some();
        if !stored {
            let src: Vec<Target> = p
                .addr
                .map(|addr: SocketAddr| Target {
                    label: p.label.clone(),
                    addr,
                })
                .into_iter()
                .collect();
            out.header_bytes += fetch_headers(eps, store, &src, fcfg, h).await;
            if store.get_node(h).ok().flatten().is_none() {
                continue;
            }
            out.new_heads.push(h);
        }
        let _ = record(store, dev, h);
    }
    out
}

/// Records `head` (its header stored here) as what `device` has.
fn record(store: &Store, device: [u8; 32], head: NodeId) -> left_store::Result<()> {
    let dev = DeviceId(device).to_string();
    if store.get_ref(&format!("{SEEN_PREFIX}{dev}"))? != Some(head) {
        store.set_seen_ref(&dev, head)?;
    }
    Ok(())
}

/// Whether a send-only device has nothing more to learn about `head`: its header is stored.
pub fn knows(store: &Store, head: NodeId) -> bool {
    store.get_node(head).ok().flatten().is_some()
}

/// The peers' heads this device has seen (refs `seen/<device>`), each against our head.
pub fn seen(store: &Store) -> left_store::Result<Vec<Seen>> {
    let ours = store.head()?;
    let mut out = Vec::new();
    for (name, h) in store.refs()? {
        let Some(dev) = name.strip_prefix(SEEN_PREFIX) else {
            continue;
        };
        let (has_ours, behind) = match ours {
            None => (true, false),
            Some(o) => (
                o == h || store.is_ancestor(o, h)?,
                o == h || store.is_ancestor(h, o)?,
            ),
        };
        out.push(Seen {
            device: dev.to_owned(),
            head: h.to_string(),
            has_ours,
            behind,
        });
    }
    Ok(out)
}

/// What [`override_share`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overridden {
    /// The new head (the override snapshot), or the head as it was when there was nothing to
    /// override.
    pub head: Option<String>,
    /// The peers' heads it was made on top of (besides ours).
    pub over: Vec<String>,
    /// Whether a snapshot was made (`false`: every seen head was ours or behind it already).
    pub made: bool,
}

/// `left override` on a send-only device: scans the folder, then makes a snapshot whose tree
/// is this device's and whose parents are our head and every seen peer head that is not
/// already behind it (each stored as a header). Every peer whose head is one of those parents
/// (or behind one) fast-forwards to it, so the share comes to match this device; a peer that
/// moved on since merges its later changes on top, by the usual rules. The peers' deletion
/// guard still applies: an override that deletes many files is held there until accepted.
pub fn override_share(
    store: &Store,
    share: &Path,
    device: [u8; 32],
    progress: &dyn Progress,
) -> left_store::Result<Overridden> {
    if !store.send_only()? {
        return Err(left_store::Error::Invalid(
            "override is for a send-only folder (`left folder-type send-only`); on a \
             send-receive folder, the share takes this device's changes by itself"
                .into(),
        ));
    }
    store.add(
        share,
        &[],
        &AddOptions {
            device,
            message: "before override".into(),
            ..AddOptions::default()
        },
        progress,
    )?;
    let Some(ours) = store.head()? else {
        return Err(left_store::Error::NotFound {
            what: "a snapshot of this folder (it is empty and was never added)".into(),
        });
    };
    let mut over: Vec<NodeId> = Vec::new();
    for (name, h) in store.refs()? {
        if !name.starts_with(SEEN_PREFIX) || h == ours || over.contains(&h) {
            continue;
        }
        if store.is_ancestor(h, ours)? {
            continue;
        }
        over.push(h);
    }
    // A seen head behind another seen head adds nothing.
    let all = over.clone();
    over.retain(|h| {
        !all.iter()
            .any(|o| o != h && store.is_ancestor(*h, *o).unwrap_or(false))
    });
    over.sort();
    if over.is_empty() {
        return Ok(Overridden {
            head: Some(ours.to_string()),
            ..Overridden::default()
        });
    }
    let snap = store.snapshot(ours)?;
    let newest = over
        .iter()
        .filter_map(|h| store.snapshot(*h).ok().map(|s| s.time_ns))
        .chain([snap.time_ns])
        .max()
        .unwrap_or(snap.time_ns);
    let mut parents = vec![ours];
    parents.extend(over.iter().copied());
    parents.truncate(crate::ecp::MAX_PARENTS);
    // Never older than a parent (history walks rely on it), even with a clock behind a peer's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let time_ns = now.max(newest.saturating_add(1));
    let id = store.put_snapshot(&Snapshot {
        root: snap.root,
        parents,
        device,
        time_ns,
        message: "override: the share matches this device".into(),
    })?;
    store.set_ref("head", id)?;
    Ok(Overridden {
        head: Some(id.to_string()),
        over: over.iter().map(|h| h.to_string()).collect(),
        made: true,
    })
}
