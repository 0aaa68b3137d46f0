//! Repair (`left verify --repair`): fetch missing or corrupt objects again from peers, without
//! moving the head or checking anything out.
//!
//! Steps: verify; plan the repair ([`Store::repair_plan`]: which objects to remove, which
//! completeness marks to clear, which snapshots reach the damage); make sure a peer answers
//! before touching the store (so a repair with no reachable peer leaves it exactly as it was);
//! apply the plan; fetch each damaged snapshot again with [`FetchConfig::want`] (a pull asks only
//! for what the store lacks, and every arrival is checked against its id); set the marks again;
//! verify again and report what was repaired and what was not.
//!
//! What it is not: it prints nothing and chooses no exit code ([`Repair`] says what happened);
//! it does not open the store.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use left_store::{
    ChunkId, NodeId, ObjectId, ObjectKind, Problem, Progress, RepairPlan, Store, VerifyReport,
};

use super::peer_setup::{add_book_targets, runtime, Net};
use super::{Context, Error, Meters, Result};
use crate::session::{self, Endpoints, FetchConfig, NodeSession, PeerError, PeerOutcome, Target};
use crate::sync::PullStats;

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct RepairOptions {
    /// Peers named (the peer book's allowed devices are added).
    pub targets: Vec<Target>,
    /// Encrypt packets.
    pub encryption: bool,
    /// Seconds without progress before giving up on the peers.
    pub timeout: f64,
}

/// Why a repair stopped before changing anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unchanged {
    /// The damaged objects hold the bytes their ids name (malformed where they are used): no
    /// peer can send better ones.
    NothingToFetch,
    /// No peer named, and the peer book holds no address of an allowed device.
    NoPeer,
    /// No peer could be reached (their outcomes are in [`Repair::Unchanged::peers`]).
    NoneReached,
}

/// What the fetching part of a repair did.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// Snapshots pulled again.
    pub snapshots: usize,
    /// Snapshot headers fetched again.
    pub headers: usize,
    /// The pulls' counters, summed.
    pub stats: PullStats,
    /// Every peer reached or tried, with the last error it gave (if any).
    pub peers: Vec<PeerOutcome>,
}

/// What a repair did.
#[derive(Debug)]
pub enum Repair {
    /// Verify found nothing to repair.
    Clean(VerifyReport),
    /// The store was left exactly as it was.
    Unchanged {
        /// What verify found.
        before: VerifyReport,
        /// Why nothing was done.
        why: Unchanged,
        /// The peers tried (empty unless [`Unchanged::NoneReached`]).
        peers: Vec<PeerOutcome>,
    },
    /// The plan was applied and the damage fetched again (what is still damaged is in
    /// `after.problems`).
    Done(Box<Repaired>),
}

/// A repair that ran.
#[derive(Debug)]
pub struct Repaired {
    /// What verify found before.
    pub before: VerifyReport,
    /// What verify found after.
    pub after: VerifyReport,
    /// The plan applied.
    pub plan: RepairPlan,
    /// The problems of `before` gone in `after`.
    pub repaired: Vec<Problem>,
    /// Corrupt objects the plan removed.
    pub corrupt_removed: usize,
    /// Peers taken from the peer book.
    pub from_book: usize,
    /// What was fetched.
    pub fetched: Fetched,
}

/// The id of the object a problem names.
pub fn object_id(p: &Problem) -> ObjectId {
    match p.object {
        ObjectKind::Chunk => ObjectId::Chunk(ChunkId(p.id)),
        ObjectKind::Node => ObjectId::Node(NodeId(p.id)),
    }
}

/// Repairs the store at `dir` (opened by the caller, who holds its lock). `progress` makes the
/// progress sink of each verify.
pub fn run(
    dir: &Path,
    store: Store,
    opts: &RepairOptions,
    progress: &dyn Fn() -> Box<dyn Progress>,
    meters: Meters<'_>,
) -> Result<Repair> {
    let store = Arc::new(store);
    let mut targets = opts.targets.clone();
    let before = {
        let p = progress();
        store.verify(&*p).context("cannot verify the store")?
    };
    if before.problems.is_empty() {
        return Ok(Repair::Clean(before));
    }
    let plan = store
        .repair_plan(&before.problems)
        .context("cannot plan the repair")?;
    let from_book = add_book_targets(dir, &mut targets)?;
    let unchanged = |before, why, peers| Ok(Repair::Unchanged { before, why, peers });
    if plan.is_empty() {
        return unchanged(before, Unchanged::NothingToFetch, Vec::new());
    }
    if targets.is_empty() {
        return unchanged(before, Unchanged::NoPeer, Vec::new());
    }
    let net = Net::load(dir, &store, opts.encryption, opts.timeout)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let eps = net.endpoints(&targets)?;
        let r = repair_fetch(&eps, &store, &targets, &net.fcfg, &plan, meters).await;
        eps.close().await;
        r
    });
    drop(rt);
    let fetched = match result? {
        Ok(f) => f,
        // No peer answered: nothing was changed.
        Err(probe) => return unchanged(before, Unchanged::NoneReached, probe),
    };
    let after = {
        let p = progress();
        store
            .verify(&*p)
            .context("cannot verify the store after the repair")?
    };
    let still: HashSet<ObjectId> = after.problems.iter().map(object_id).collect();
    let repaired: Vec<Problem> = before
        .problems
        .iter()
        .filter(|p| !still.contains(&object_id(p)))
        .cloned()
        .collect();
    let corrupt_removed = before
        .problems
        .iter()
        .filter(|p| p.kind == left_store::ProblemKind::Corrupt)
        .filter(|p| plan.remove.contains(&object_id(p)))
        .count();
    Ok(Repair::Done(Box::new(Repaired {
        before,
        after,
        plan,
        repaired,
        corrupt_removed,
        from_book,
        fetched,
    })))
}

/// Asks every target for its head; if none answers, returns their outcomes (`Err`) with the
/// store untouched. Else applies `plan`, fetches what it needs from the peers that answered,
/// and sets the completeness marks again. `Ok(Err(_))`: no peer; `Err(_)`: a local failure.
async fn repair_fetch(
    eps: &Endpoints,
    store: &Arc<Store>,
    targets: &[Target],
    fcfg: &FetchConfig,
    plan: &RepairPlan,
    meters: Meters<'_>,
) -> Result<std::result::Result<Fetched, Vec<PeerOutcome>>> {
    let mut peers = session::heads(eps, targets, fcfg, store).await;
    let live: Vec<Target> = targets
        .iter()
        .zip(&peers)
        .filter(|(_, p)| p.error.is_none())
        .map(|(t, _)| t.clone())
        .collect();
    if live.is_empty() {
        return Ok(Err(peers));
    }
    store
        .apply_repair_plan(plan)
        .context("cannot prepare the store for the repair")?;
    let mut done = Fetched::default();
    let note = |peers: &mut Vec<PeerOutcome>, label: &str, error: PeerError| {
        if let Some(p) = peers.iter_mut().find(|p| p.label == label) {
            p.error = Some(error);
        }
    };
    // Headers of snapshots whose trees were dropped on purpose: those nodes only.
    let mut headers: Vec<NodeId> = plan.headers.clone();
    for t in &live {
        if headers.is_empty() {
            break;
        }
        let mut s = match NodeSession::open(eps, t.addr, fcfg, store).await {
            Ok(s) => s,
            Err(e) => {
                note(&mut peers, &t.label, e);
                continue;
            }
        };
        let got = s
            .get_nodes(&headers, &mut |id, bytes| {
                store.put_node(id, bytes).map(drop).map_err(Into::into)
            })
            .await;
        s.close().await;
        match got {
            Ok(got) => {
                done.headers += got.len();
                headers.retain(|h| !got.contains(h));
            }
            Err(session::Error::Peer(e)) => note(&mut peers, &t.label, e),
            Err(session::Error::Local(e)) => {
                return Err(Error::Other(format!("cannot repair: {e}")));
            }
        }
    }
    // Trees: each damaged snapshot pulled again (only what is missing travels); one whose
    // objects an earlier pull already brought back is complete and skipped.
    for &sid in &plan.snapshots {
        if store
            .mark_complete(sid)
            .context("cannot check a snapshot")?
        {
            continue;
        }
        let mut cfg = fcfg.clone();
        cfg.want = Some(sid);
        let bar = meters();
        let report = session::fetch(eps, store.clone(), &live, &cfg, &*bar).await;
        bar.finish();
        done.stats += &report.stats;
        if let Some(e) = &report.local_error {
            return Err(Error::Other(format!("cannot repair: {e}")));
        }
        if report.heads.iter().any(|(h, _)| *h == sid) {
            done.snapshots += 1;
        }
        for p in &report.peers {
            if let Some(e) = &p.error {
                note(&mut peers, &p.label, e.clone());
            }
        }
    }
    for &sid in &plan.snapshots {
        store
            .mark_complete(sid)
            .context("cannot mark a repaired snapshot complete")?;
    }
    done.peers = peers;
    Ok(Ok(done))
}
