//! The fast-forward decision: given our head and the heads fetched from peers, is there one to
//! check out, are we up to date, or did both sides change? One place for it: one-shot sync
//! ([`decide`]) and the automatic loop ([`holds`]) both ask it.
//!
//! What it is not: it fetches nothing and writes nothing; it reads the store's history only. A
//! merge of diverged heads is [`super::integrate`]'s.

use left_store::{NodeId, Store};

use super::{Context, Result};
use crate::session::FetchReport;

/// What to do with the fetched heads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing fetched (every peer failed).
    Failed,
    /// Nothing to check out: up to date, or the peers are behind us.
    UpToDate,
    /// Check out this head.
    Checkout(NodeId),
    /// Both sides changed; `peer` names one peer whose head diverged.
    Diverged(String),
    /// A send-only device: the peers' heads were looked at (headers), nothing taken.
    SendOnly,
}

/// Whether `head` is `ours` or behind it (nothing to fetch or merge). No head of ours: `false`.
pub fn holds(store: &Store, ours: Option<NodeId>, head: NodeId) -> bool {
    match ours {
        Some(ours) => ours == head || store.is_ancestor(head, ours).unwrap_or(false),
        None => false,
    }
}

/// Chooses what to check out given the fetched heads.
pub fn decide(store: &Store, local: Option<NodeId>, report: &FetchReport) -> Result<Decision> {
    if report.heads.is_empty() {
        if report.peers.iter().any(|p| p.error.is_none()) {
            return Ok(Decision::UpToDate);
        }
        return Ok(Decision::Failed);
    }
    let anc = |a: NodeId, b: NodeId| -> Result<bool> {
        store
            .is_ancestor(a, b)
            .context("cannot compare snapshot histories")
    };
    // The newest fetched head: one every other fetched head is an ancestor of.
    let heads: Vec<NodeId> = report.heads.iter().map(|(h, _)| *h).collect();
    let mut best = None;
    'outer: for &h in &heads {
        for &o in &heads {
            if o != h && !anc(o, h)? {
                continue 'outer;
            }
        }
        best = Some(h);
        break;
    }
    let label_of = |h: NodeId| {
        report
            .heads
            .iter()
            .find(|(x, _)| *x == h)
            .and_then(|(_, idx)| idx.first())
            .map(|&i| report.peers[i].label.clone())
            .unwrap_or_else(|| "a peer".into())
    };
    let Some(best) = best else {
        return Ok(Decision::Diverged(label_of(heads[0])));
    };
    let Some(local) = local else {
        return Ok(Decision::Checkout(best));
    };
    if local == best || anc(best, local)? {
        return Ok(Decision::UpToDate);
    }
    let root_of = |h: NodeId| store.snapshot_root(h).context("cannot read a snapshot");
    let local_root = root_of(local)?;
    if local_root == root_of(best)? {
        return Ok(Decision::UpToDate);
    }
    if anc(local, best)? {
        return Ok(Decision::Checkout(best));
    }
    if store
        .dir_entries(local_root)
        .context("cannot read the local tree")?
        .is_empty()
    {
        return Ok(Decision::Checkout(best));
    }
    // Local snapshots since the last common one that changed nothing in the end (a file added
    // and removed again): our tree is the common ancestor's, so the peer's is simply newer.
    let history = |h: NodeId| store.log(h, 1000).context("cannot read the history");
    let ours: std::collections::HashSet<NodeId> =
        history(local)?.into_iter().map(|(id, _)| id).collect();
    if let Some((_, base)) = history(best)?.into_iter().find(|(id, _)| ours.contains(id)) {
        if base.root == local_root {
            return Ok(Decision::Checkout(best));
        }
    }
    Ok(Decision::Diverged(label_of(best)))
}
