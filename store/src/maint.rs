//! `verify` and `gc`.
//!
//! **verify** walks every snapshot reachable from the refs (through all parents), newest first, and
//! every tree whose files gc has not dropped: each node is re-hashed and decoded, each chunk decoded
//! (bounded) and re-hashed (in parallel), and a folder split over several leaves must list its names
//! in strictly increasing order across them (else its root node is corrupt). A missing or corrupt
//! object is reported once, with up to 10 paths that use it in the newest snapshot that uses it.
//!
//! **gc** marks from the refs: every snapshot node reachable through parents is kept; trees are kept
//! for all of them, or, when a retention rule is given, only for the snapshots a rule keeps (as
//! restic combines its `--keep-*` rules: a snapshot is kept if any rule keeps it):
//! - `keep_last = N`: head's first-parent history back to the Nth snapshot that changed the tree
//!   (a snapshot whose root equals one of its parents' roots does not count, so a flood of
//!   snapshots that change nothing cannot push real history out); `0` is refused;
//! - `keep_within = D` ([`Store::gc_keep_within`]): every snapshot (any branch) that arrived here
//!   within D of head's arrival (as restic, measured from the latest snapshot, not the clock, so a
//!   store left alone for a month does not lose its history on the next gc). Age is the local
//!   arrival time (`meta/arrived/<id>`, recorded when a snapshot node is first stored), never the
//!   time a snapshot declares: a peer's clock (or a merge, which inherits its newest parent's
//!   time) can say anything. A snapshot with no record (older stores; `add` writes none) is given
//!   min(declared time, now) by the first gc that looks, and that is recorded;
//! - always: the tips of all refs, and what merging head with each `peers/*` ref reads: their merge
//!   base(s), and for a criss-cross the bases the virtual base is built from, so the next merge with
//!   that peer finds its base tree here.
//!
//! A policy that would drop head's tree is refused ([`Error::Invalid`]) before anything changes.
//!
//! Dropped trees are recorded (`meta/shallow/<id>`) so verify, ls and restore know those files are
//! gone on purpose. Then it sweeps unmarked chunks and nodes and, when it deleted anything,
//! compacts with forced blob garbage collection, so the space really returns to the disk (with
//! nothing deleted it does not compact, so it never grows a store).
//! gc holds the store's operation lock for writing: no add or put runs meanwhile.
//!
//! **What keeps bytes alive** ([`GcReport::kept_by`]): the *roots* are every ref (`head`, each
//! `peers/<device>`, any other), the trees of a journaled checkout (`checkout`) and the
//! retention rules' trees beyond the refs' own (`retention`; head's own tree counts as head's).
//! Without a rule a ref keeps its snapshot and all its ancestors; with one, its own snapshot
//! and, for a peer's ref, the merge bases with head. Marking gives each node and chunk an
//! owner: the one root that reaches it, or "shared"; owners only move none → one root → shared,
//! so a node is read at most twice (trees kept by several roots are marked first). A chunk
//! owned by one root is what gc would free without that root: the report gives, per root, its
//! snapshots and those chunks with their stored bytes. The store drops no ref itself:
//! [`Store::drop_peer_ref`] is for the caller (`left` drops a device's ref when it is revoked or
//! forgotten, and before each gc those of revoked devices).
//!
//! **repair** ([`Store::repair_plan`], [`Store::apply_repair_plan`]) prepares the store so a
//! fetch can bring back what verify found missing or corrupt: damaged objects are removed and the
//! completeness marks above them cleared, so a pull walks down to them.
//!
//! Memory: the marks are in-memory sets of ids (about 40 bytes per chunk, i.e. ~1 MiB per 1.6 GiB
//! of unique data).

use crate::codec;
use crate::db::{cf, Batch, IndexEntry};
use crate::node::{Child, DirNode, Node, Target};
use crate::store::{arrival_key, shallow_key};
use crate::{
    ChunkId, EntryKind, Error, GcOptions, GcReport, GcRoot, Hash, NodeId, ObjectId, ObjectKind,
    Problem, ProblemKind, Progress, Result, Snapshot, Store, VerifyReport,
};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// How to repair what `verify` found: made by [`Store::repair_plan`], applied by
/// [`Store::apply_repair_plan`], then completed by fetching from a peer that holds the objects.
#[derive(Debug, Clone, Default)]
pub struct RepairPlan {
    /// Snapshots whose trees reach a damaged object, newest first: fetching each again (a pull
    /// of its id, which asks only for what the store lacks) brings the objects back.
    pub snapshots: Vec<NodeId>,
    /// Snapshots whose tree was dropped on purpose (`gc --keep-last`, history fetched without
    /// trees) and whose own node is damaged: only that node is to be fetched again.
    pub headers: Vec<NodeId>,
    /// Missing objects and objects whose stored bytes do not match their id: removed when the
    /// plan is applied, so a fetch stores a verified copy.
    pub remove: Vec<ObjectId>,
    /// Objects reported corrupt whose stored bytes do match their id (malformed where they are
    /// used): a fetch would bring the same bytes. Left alone.
    pub unfixable: Vec<ObjectId>,
    /// Nodes whose completeness marks are cleared (every node above a removed object).
    pub(crate) unmark: Vec<NodeId>,
}

impl RepairPlan {
    /// Completeness marks the plan clears.
    pub fn marks_cleared(&self) -> usize {
        self.unmark.len()
    }

    /// Whether there is something a fetch could fix.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
    }
}

impl Store {
    /// Every snapshot reachable from the refs (through parents), newest first. A parent whose
    /// header is not stored here is left out: history fetched from a peer stops somewhere
    /// (see [`Store::history_bounds`]); a ref whose snapshot is absent or damaged is listed
    /// with `None`.
    pub(crate) fn all_snapshots(&self) -> Result<Vec<(NodeId, Option<Snapshot>)>> {
        Ok(self.walk_snapshots()?.0)
    }

    /// Stored snapshots some of whose parents are not stored here: where local history starts
    /// (a joiner fetched the newest headers only, or the peer it fetched from had no older
    /// ones). Oldest first.
    pub fn history_bounds(&self) -> Result<Vec<NodeId>> {
        Ok(self.walk_snapshots()?.1)
    }

    fn walk_snapshots(&self) -> Result<(Vec<(NodeId, Option<Snapshot>)>, Vec<NodeId>)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut bounds = Vec::new();
        // (id, child that names it as a parent; None for a ref)
        let mut stack: Vec<(NodeId, Option<NodeId>)> =
            self.refs()?.into_iter().map(|(_, id)| (id, None)).collect();
        while let Some((id, child)) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            match self.snapshot(id) {
                Ok(s) => {
                    stack.extend(s.parents.iter().map(|p| (*p, Some(id))));
                    out.push((id, Some(s)));
                }
                Err(Error::NotFound { .. }) if child.is_some() => {
                    let c = child.expect("checked");
                    if !bounds.contains(&c) {
                        bounds.push(c);
                    }
                }
                Err(Error::NotFound { .. }) | Err(Error::Corrupt { .. }) => out.push((id, None)),
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(_, s)| {
            std::cmp::Reverse(s.as_ref().map(|s| s.time_ns).unwrap_or(i64::MIN))
        });
        let time = |id: &NodeId| {
            out.iter()
                .find(|(s, _)| s == id)
                .and_then(|(_, s)| s.as_ref().map(|s| s.time_ns))
                .unwrap_or(i64::MIN)
        };
        bounds.sort_by_key(time);
        Ok((out, bounds))
    }

    /// Re-hashes every chunk and node reachable from refs.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let mut rep = VerifyReport::default();
        let mut problems: HashMap<(bool, Hash), (ProblemKind, Vec<PathBuf>)> = HashMap::new();
        let mut order: Vec<(bool, Hash)> = Vec::new();
        let mut note = |is_chunk: bool, id: Hash, kind: ProblemKind, path: &PathBuf| {
            let e = problems.entry((is_chunk, id)).or_insert_with(|| {
                order.push((is_chunk, id));
                (kind, Vec::new())
            });
            if e.1.len() < 10 && !e.1.contains(path) {
                e.1.push(path.clone());
            }
        };
        let mut seen_nodes: HashSet<NodeId> = HashSet::new();
        let mut seen_chunks: HashSet<ChunkId> = HashSet::new();
        progress.start("verify", None);
        let max = self.cfg.chunk_max as usize;
        let (snaps, bounds) = self.walk_snapshots()?;
        rep.history_starts = bounds;
        for (sid, snap) in snaps {
            let root = PathBuf::new();
            let check = self.check_node(sid);
            rep.nodes_checked += 1;
            seen_nodes.insert(sid);
            if let Err(k) = check {
                note(false, sid.0, k, &root);
                continue;
            }
            let Some(snap) = snap else { continue };
            rep.snapshots += 1;
            if self.is_shallow(sid)? {
                rep.shallow += 1;
                continue;
            }
            // Depth-first walk with paths; `top` marks the root node of a folder (not a lower
            // node of a wide folder's index).
            let mut stack: Vec<(NodeId, PathBuf, bool)> = vec![(snap.root, root, true)];
            while let Some((id, path, top)) = stack.pop() {
                if !seen_nodes.insert(id) {
                    continue;
                }
                rep.nodes_checked += 1;
                let node = match self.get_node(id)? {
                    None => {
                        note(false, id.0, ProblemKind::Missing, &path);
                        continue;
                    }
                    Some(b) => match Node::decode_verified(&id, &b) {
                        Ok(n) => n,
                        Err(_) => {
                            note(false, id.0, ProblemKind::Corrupt, &path);
                            continue;
                        }
                    },
                };
                if top && matches!(node, Node::Dir(DirNode::Index { .. })) {
                    // Each leaf is valid alone; the names must also increase across leaves. A
                    // lower node that fails to load is reported when the walk reaches it.
                    match self.walk_dir(id, &mut |_| Ok(())) {
                        Err(Error::Corrupt { what }) if what.starts_with("folder node") => {
                            note(false, id.0, ProblemKind::Corrupt, &path)
                        }
                        _ => {}
                    }
                }
                match &node {
                    Node::Dir(DirNode::Leaf(entries)) => {
                        for e in entries.iter().rev() {
                            if let Target::Node(c) = e.target {
                                let top = e.kind == EntryKind::Dir;
                                stack.push((c, path.join(OsStr::from_bytes(&e.name)), top));
                            }
                        }
                    }
                    _ => {
                        let mut chunks = Vec::new();
                        for c in node.children().into_iter().rev() {
                            match c {
                                Child::Node(n) => stack.push((n, path.clone(), false)),
                                Child::Chunk(c, len) => {
                                    if seen_chunks.insert(c) {
                                        chunks.push((c, len));
                                    }
                                }
                            }
                        }
                        let results: Vec<(ChunkId, u64, std::result::Result<(), ProblemKind>)> =
                            chunks
                                .par_iter()
                                .map(|&(c, len)| {
                                    let r = match self.get_chunk(c) {
                                        Ok(None) => Err(ProblemKind::Missing),
                                        Ok(Some(enc)) => {
                                            match codec::decode_verified(&c, &enc, max) {
                                                Ok(p) if p.len() as u64 == len => Ok(()),
                                                _ => Err(ProblemKind::Corrupt),
                                            }
                                        }
                                        Err(_) => Err(ProblemKind::Corrupt),
                                    };
                                    (c, len, r)
                                })
                                .collect();
                        for (c, len, r) in results {
                            rep.chunks_checked += 1;
                            match r {
                                Ok(()) => {
                                    rep.bytes_checked += len;
                                    progress.advance(len);
                                }
                                Err(k) => note(true, c.0, k, &path),
                            }
                        }
                    }
                }
            }
        }
        progress.finish();
        rep.problems = order
            .into_iter()
            .map(|(is_chunk, id)| {
                let (kind, paths) = problems.remove(&(is_chunk, id)).expect("noted");
                Problem {
                    object: if is_chunk {
                        ObjectKind::Chunk
                    } else {
                        ObjectKind::Node
                    },
                    id,
                    kind,
                    paths,
                }
            })
            .collect();
        Ok(rep)
    }

    /// Plans the repair of the problems `verify` reported (read only; see [`RepairPlan`]).
    ///
    /// A problem is fixable by fetching when the object is missing, or stored with bytes that do
    /// not match its id (or cannot be read). A "corrupt" object whose stored bytes do match its id
    /// (a folder that lists a name twice across its leaves, a chunk whose length differs from the
    /// one its file records) is what that id names: fetching it again would bring the same bytes,
    /// so it is listed in [`RepairPlan::unfixable`] and left alone.
    ///
    /// Every node above a fixable object, in every snapshot whose tree is kept, loses its
    /// completeness mark when the plan is applied, so a fetch of such a snapshot walks down to the
    /// object instead of skipping the subtree as complete. The walk reads every node of those
    /// trees once (as `verify` does); memory is one entry per node.
    pub fn repair_plan(&self, problems: &[Problem]) -> Result<RepairPlan> {
        let max = self.cfg.chunk_max as usize;
        let mut plan = RepairPlan::default();
        let mut bad_nodes: HashSet<NodeId> = HashSet::new();
        let mut bad_chunks: HashSet<ChunkId> = HashSet::new();
        for p in problems {
            let id = match p.object {
                ObjectKind::Chunk => ObjectId::Chunk(ChunkId(p.id)),
                ObjectKind::Node => ObjectId::Node(NodeId(p.id)),
            };
            let intact = p.kind == ProblemKind::Corrupt
                && match id {
                    ObjectId::Chunk(c) => matches!(
                        self.get_chunk(c),
                        Ok(Some(enc)) if codec::decode_verified(&c, &enc, max).is_ok()
                    ),
                    ObjectId::Node(n) => matches!(
                        self.get_node(n),
                        Ok(Some(b)) if Node::decode_verified(&n, &b).is_ok()
                    ),
                };
            if intact {
                plan.unfixable.push(id);
                continue;
            }
            if plan.remove.contains(&id) {
                continue;
            }
            plan.remove.push(id);
            match id {
                ObjectId::Chunk(c) => bad_chunks.insert(c),
                ObjectId::Node(n) => bad_nodes.insert(n),
            };
        }
        if plan.remove.is_empty() {
            return Ok(plan);
        }
        let mut memo: HashMap<NodeId, bool> = HashMap::new();
        for (sid, _) in self.all_snapshots()? {
            if self.is_shallow(sid)? {
                // Its tree was dropped on purpose: only its header can be damaged.
                if bad_nodes.contains(&sid) {
                    memo.insert(sid, true);
                    plan.headers.push(sid);
                }
                continue;
            }
            if self.reaches_damage(sid, &bad_nodes, &bad_chunks, &mut memo)? {
                plan.snapshots.push(sid);
            }
        }
        plan.unmark = memo
            .into_iter()
            .filter_map(|(id, hit)| hit.then_some(id))
            .collect();
        plan.unmark.sort_unstable();
        Ok(plan)
    }

    /// Whether the tree under `top` holds one of the damaged objects; fills `memo` for every node
    /// it visits (`true`: the node is damaged or has a damaged object beneath it). A node that
    /// cannot be read and is not in the damaged set counts as damaged (clearing a mark too many is
    /// safe; keeping a wrong one is not). Iterative: no recursion depth limit applies.
    fn reaches_damage(
        &self,
        top: NodeId,
        bad_nodes: &HashSet<NodeId>,
        bad_chunks: &HashSet<ChunkId>,
        memo: &mut HashMap<NodeId, bool>,
    ) -> Result<bool> {
        enum Frame {
            Enter(NodeId),
            Exit(NodeId, bool, Vec<NodeId>),
        }
        let mut stack = vec![Frame::Enter(top)];
        while let Some(frame) = stack.pop() {
            match frame {
                Frame::Enter(id) => {
                    if memo.contains_key(&id) {
                        continue;
                    }
                    if bad_nodes.contains(&id) {
                        memo.insert(id, true);
                        continue;
                    }
                    let node = match self.get_node(id)? {
                        Some(b) => match Node::decode_verified(&id, &b) {
                            Ok(n) => n,
                            Err(_) => {
                                memo.insert(id, true);
                                continue;
                            }
                        },
                        None => {
                            memo.insert(id, true);
                            continue;
                        }
                    };
                    let mut chunk_hit = false;
                    let mut kids = Vec::new();
                    for c in node.children() {
                        match c {
                            Child::Chunk(c, _) => chunk_hit |= bad_chunks.contains(&c),
                            Child::Node(n) => kids.push(n),
                        }
                    }
                    // Placeholder until the children are done (a DAG: no node is its own
                    // descendant, so it is never read before being set).
                    memo.insert(id, false);
                    let pending: Vec<NodeId> = kids
                        .iter()
                        .copied()
                        .filter(|k| !memo.contains_key(k))
                        .collect();
                    stack.push(Frame::Exit(id, chunk_hit, kids));
                    stack.extend(pending.into_iter().map(Frame::Enter));
                }
                Frame::Exit(id, chunk_hit, kids) => {
                    let hit =
                        chunk_hit || kids.iter().any(|k| memo.get(k).copied().unwrap_or(true));
                    memo.insert(id, hit);
                }
            }
        }
        Ok(memo.get(&top).copied().unwrap_or(true))
    }

    /// Applies a plan made by [`Store::repair_plan`] on this store just before: removes every
    /// object in [`RepairPlan::remove`] (a chunk with its index entry, a node with its
    /// completeness mark; a missing one may still have an index entry or a mark, which go too),
    /// clears the completeness marks of every node above them, and drops the scan-cache records of
    /// removed file nodes (so `add` reads those files again instead of reusing the node). One
    /// synced write. Afterwards `missing` (and a fetch) of each snapshot in
    /// [`RepairPlan::snapshots`] reaches every removed object; [`Store::mark_complete`] sets the
    /// marks again once the objects are back.
    pub fn apply_repair_plan(&self, plan: &RepairPlan) -> Result<()> {
        self.writable()?;
        let _g = self.op.read().expect("op lock");
        let mut b = Batch::default();
        let mut removed_nodes: HashSet<NodeId> = HashSet::new();
        for id in &plan.remove {
            match id {
                ObjectId::Chunk(c) => {
                    b.delete(&self.db, cf::CHUNKS, c.as_bytes());
                    b.delete(&self.db, cf::CHUNK_INDEX, c.as_bytes());
                }
                ObjectId::Node(n) => {
                    b.delete(&self.db, cf::NODES, n.as_bytes());
                    b.delete(&self.db, cf::COMPLETE, n.as_bytes());
                    removed_nodes.insert(*n);
                }
            }
        }
        for n in &plan.unmark {
            b.delete(&self.db, cf::COMPLETE, n.as_bytes());
        }
        if !removed_nodes.is_empty() {
            for r in self.db.iter(cf::SCAN) {
                let (k, v) = r?;
                if v.len() == 68 {
                    let arr: [u8; 32] = v[36..].try_into().expect("32");
                    if removed_nodes.contains(&NodeId(Hash(arr))) {
                        b.delete(&self.db, cf::SCAN, &k);
                    }
                }
            }
        }
        if !b.is_empty() {
            self.db.write(b.inner, true)?;
        }
        Ok(())
    }

    /// When each snapshot (with a header) arrived here. A snapshot without a record (stored
    /// before arrivals were recorded, or written by `add`) gets min(declared time, now), which is
    /// then recorded (synced), so it never moves again.
    fn arrivals(&self, snaps: &[(NodeId, Option<Snapshot>)]) -> Result<HashMap<NodeId, i64>> {
        let now = crate::store::now_ns();
        let mut out = HashMap::new();
        let mut b = Batch::default();
        for (id, s) in snaps {
            let Some(s) = s else { continue };
            let t = match self.arrival(*id)? {
                Some(t) => t,
                None => {
                    let t = s.time_ns.min(now);
                    b.put(&self.db, cf::META, &arrival_key(*id), &t.to_le_bytes());
                    t
                }
            };
            out.insert(*id, t);
        }
        if !b.is_empty() {
            self.db.write(b.inner, true)?;
        }
        Ok(out)
    }

    fn check_node(&self, id: NodeId) -> std::result::Result<(), ProblemKind> {
        match self.get_node(id) {
            Ok(None) => Err(ProblemKind::Missing),
            Ok(Some(b)) => Node::decode_verified(&id, &b)
                .map(|_| ())
                .map_err(|_| ProblemKind::Corrupt),
            Err(_) => Err(ProblemKind::Corrupt),
        }
    }

    /// Drops unreachable chunks and nodes (and, with `keep_last`, the trees of older snapshots), then
    /// compacts so the store really shrinks on disk.
    pub fn gc(&self, opts: &GcOptions, progress: &dyn Progress) -> Result<GcReport> {
        self.gc_keep_within(opts, None, progress)
    }

    /// [`Store::gc`] with one more retention rule: `keep_within` keeps the trees of every snapshot
    /// at most that much older than head (restic's `--keep-within`). With `keep_last` too, a
    /// snapshot is kept if either rule keeps it; with neither, every tree is kept.
    pub fn gc_keep_within(
        &self,
        opts: &GcOptions,
        keep_within: Option<std::time::Duration>,
        progress: &dyn Progress,
    ) -> Result<GcReport> {
        self.writable()?;
        // A checkout that was cut short keeps both its trees (finishing it reads them; aborting
        // it leaves the folder at a mix of the two): gc still runs, so a full disk that stopped
        // the checkout can be given space back.
        let journaled: Vec<NodeId> = match self.pending_checkout()? {
            Some((from, to)) => from.into_iter().chain([to]).collect(),
            None => Vec::new(),
        };
        let _g = self.op.write().expect("op lock");
        let mut rep = GcReport {
            bytes_before: self.disk_usage()?,
            ..Default::default()
        };
        progress.start("gc", None);
        let mut snaps = self.all_snapshots()?;
        for id in &journaled {
            if !snaps.iter().any(|(s, _)| s == id) {
                snaps.push((*id, self.snapshot(*id).ok()));
            }
        }
        if opts.keep_last == Some(0) {
            return Err(Error::Invalid(
                "gc --keep-last 0 would drop the files of head: keep at least 1".into(),
            ));
        }
        // Which trees to keep, and who keeps each: the roots are every ref (by index in
        // `refs`), then the checkout journal, then the retention rules. The report says per
        // root what it keeps and what only it keeps (what would go without it).
        let refs = self.refs()?;
        let head = self.head()?;
        let checkout_root = refs.len() as u32;
        let retention_root = checkout_root + 1;
        let head_root = refs.iter().position(|(n, _)| n == "head").map(|i| i as u32);
        let mut keepers: HashMap<NodeId, Vec<u32>> = HashMap::new();
        if opts.keep_last.is_none() && keep_within.is_none() {
            // Every tree is kept, each by the refs whose history reaches it.
            let parents: HashMap<NodeId, &[NodeId]> = snaps
                .iter()
                .filter_map(|(id, s)| s.as_ref().map(|s| (*id, s.parents.as_slice())))
                .collect();
            for (i, (_, tip)) in refs.iter().enumerate() {
                let mut seen = HashSet::new();
                let mut stack = vec![*tip];
                while let Some(id) = stack.pop() {
                    if !seen.insert(id) {
                        continue;
                    }
                    claim(&mut keepers, id, i as u32);
                    if let Some(ps) = parents.get(&id) {
                        stack.extend(ps.iter().copied());
                    }
                }
            }
        } else {
            // Head's own tree counts as head's, not the rule's.
            let by_rule = |id: NodeId| match head_root {
                Some(r) if Some(id) == head => r,
                _ => retention_root,
            };
            if let Some(n) = opts.keep_last {
                // Only snapshots that changed the tree count: a flood of snapshots that change
                // nothing (root equal to a parent's) cannot push real history out.
                let mut cur = head;
                let mut k = 0;
                let mut seen = HashSet::new();
                while let (Some(id), true) = (cur, k < n) {
                    if !seen.insert(id) {
                        break;
                    }
                    claim(&mut keepers, id, by_rule(id));
                    let s = self.snapshot(id).ok();
                    let changed = match &s {
                        Some(s) => !s.parents.iter().any(|p| {
                            self.snapshot(*p)
                                .map(|ps| ps.root == s.root)
                                .unwrap_or(false)
                        }),
                        None => true,
                    };
                    if changed {
                        k += 1;
                    }
                    cur = s.and_then(|s| s.parents.first().copied());
                }
            }
            if let Some(d) = keep_within {
                // Ages are measured by when each snapshot arrived here, never by the time it
                // declares (a peer's clock; a merge inherits its newest parent's).
                let arrived = self.arrivals(&snaps)?;
                let newest = arrived.values().copied().max();
                let reference = head.and_then(|h| arrived.get(&h).copied()).or(newest);
                if let Some(reference) = reference {
                    let within = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
                    let floor = reference.saturating_sub(within);
                    for (id, t) in &arrived {
                        if *t >= floor {
                            claim(&mut keepers, *id, by_rule(*id));
                        }
                    }
                }
            }
            for (i, (name, id)) in refs.iter().enumerate() {
                if name != "head" {
                    claim(&mut keepers, *id, i as u32);
                }
                if let (Some(h), true) = (head, name.starts_with("peers/")) {
                    for b in self.merge_needs(h, *id)? {
                        claim(&mut keepers, b, i as u32);
                    }
                }
            }
        }
        if let Some(h) = head {
            if !keepers.contains_key(&h) && !self.is_shallow(h)? {
                return Err(Error::Invalid(
                    "this retention policy would drop the files of head: keep at least the last snapshot"
                        .into(),
                ));
            }
            // Head always keeps its own tree (also when a peer's ref names the same snapshot).
            if let Some(r) = head_root {
                claim(&mut keepers, h, r);
            }
        }
        for id in &journaled {
            claim(&mut keepers, *id, checkout_root);
        }
        // Mark. Each tree node and chunk gets an owner: the one root that reaches it, or
        // SHARED. Owners only move None -> one root -> SHARED, so a node is read at most twice;
        // trees kept by several roots go first, so what they reach is read once.
        let mut headers: HashSet<NodeId> = HashSet::new();
        let mut node_owner: HashMap<NodeId, u32> = HashMap::new();
        let mut chunk_owner: HashMap<ChunkId, u32> = HashMap::new();
        let mut kept_snapshots = vec![0u64; retention_root as usize + 1];
        let mut newly_shallow = Vec::new();
        let mut trees: Vec<(u32, NodeId)> = Vec::new();
        for (sid, snap) in &snaps {
            headers.insert(*sid);
            let Some(snap) = snap else { continue };
            let shallow = self.is_shallow(*sid)?;
            match keepers.get(sid).filter(|_| !shallow) {
                Some(k) => {
                    for r in k {
                        kept_snapshots[*r as usize] += 1;
                    }
                    trees.push((if k.len() == 1 { k[0] } else { SHARED }, snap.root));
                }
                None if !shallow => newly_shallow.push(*sid),
                None => {}
            }
        }
        trees.sort_by_key(|(owner, _)| std::cmp::Reverse(*owner));
        for (owner, root) in trees {
            let mut stack = vec![(root, owner)];
            while let Some((id, x)) = stack.pop() {
                let old = node_owner.get(&id).copied();
                let new = join(old, x);
                if old == Some(new) {
                    continue;
                }
                node_owner.insert(id, new);
                let Ok(node) = self.read_node(id) else {
                    continue;
                };
                for c in node.children() {
                    match c {
                        Child::Node(n) => stack.push((n, new)),
                        Child::Chunk(c, _) => {
                            let o = chunk_owner.get(&c).copied();
                            chunk_owner.insert(c, join(o, new));
                        }
                    }
                }
            }
        }
        let live_node = |id: &NodeId| headers.contains(id) || node_owner.contains_key(id);
        // (chunks, stored bytes) only each root keeps.
        let mut only = vec![(0u64, 0u64); retention_root as usize + 1];
        // Record dropped trees first (synced), then sweep.
        if !newly_shallow.is_empty() {
            let mut b = Batch::default();
            for id in &newly_shallow {
                b.put(&self.db, cf::META, &shallow_key(*id), b"");
            }
            self.db.write(b.inner, true)?;
        }
        let mut b = Batch::default();
        let mut deleted = 0u64;
        for r in self.db.iter(cf::CHUNK_INDEX) {
            let (k, v) = r?;
            let Ok(arr) = <[u8; 32]>::try_from(&*k) else {
                continue;
            };
            let owner = chunk_owner.get(&ChunkId(Hash(arr))).copied();
            if let Some(o) = owner.filter(|o| *o != SHARED) {
                let e = &mut only[o as usize];
                e.0 += 1;
                e.1 += IndexEntry::from_bytes(&v).map_or(0, |ie| u64::from(ie.enc_len));
            }
            if owner.is_none() {
                b.delete(&self.db, cf::CHUNKS, &k);
                b.delete(&self.db, cf::CHUNK_INDEX, &k);
                rep.chunks_removed += 1;
                deleted += 1;
                if b.len() > 20_000 {
                    self.db.write(std::mem::take(&mut b).inner, false)?;
                }
            }
        }
        // Chunks stored without an index entry (a torn write cannot do this, but be thorough).
        for r in self.db.iter(cf::CHUNKS) {
            let (k, _) = r?;
            let Ok(arr) = <[u8; 32]>::try_from(&*k) else {
                continue;
            };
            if !chunk_owner.contains_key(&ChunkId(Hash(arr)))
                && !self.db.exists(cf::CHUNK_INDEX, &k)?
            {
                b.delete(&self.db, cf::CHUNKS, &k);
                deleted += 1;
            }
        }
        for r in self.db.iter(cf::NODES) {
            let (k, _) = r?;
            let Ok(arr) = <[u8; 32]>::try_from(&*k) else {
                continue;
            };
            if !live_node(&NodeId(Hash(arr))) {
                b.delete(&self.db, cf::NODES, &k);
                b.delete(&self.db, cf::COMPLETE, &k);
                rep.nodes_removed += 1;
                deleted += 1;
                if b.len() > 20_000 {
                    self.db.write(std::mem::take(&mut b).inner, false)?;
                }
            }
        }
        for r in self.db.iter(cf::COMPLETE) {
            let (k, _) = r?;
            let Ok(arr) = <[u8; 32]>::try_from(&*k) else {
                continue;
            };
            if !live_node(&NodeId(Hash(arr))) {
                b.delete(&self.db, cf::COMPLETE, &k);
                deleted += 1;
            }
        }
        // Arrival records of snapshots that are gone.
        for r in self.db.iter_prefix(cf::META, b"arrived/") {
            let (k, _) = r?;
            let Ok(arr) = <[u8; 32]>::try_from(&k[b"arrived/".len()..]) else {
                continue;
            };
            if !live_node(&NodeId(Hash(arr))) {
                b.delete(&self.db, cf::META, &k);
            }
        }
        // Scan-cache records whose file node is gone.
        for r in self.db.iter(cf::SCAN) {
            let (k, v) = r?;
            let keep = v.len() == 68 && {
                let arr: [u8; 32] = v[36..].try_into().expect("32");
                live_node(&NodeId(Hash(arr)))
            };
            if !keep {
                b.delete(&self.db, cf::SCAN, &k);
                deleted += 1;
            }
        }
        if !b.is_empty() {
            self.db.write(b.inner, false)?;
        }
        // Compaction rewrites tables and blob files: worth it only when something was deleted (on a
        // store with nothing to drop it would only add files and log lines).
        if deleted > 0 {
            self.db.compact_all()?;
        }
        progress.finish();
        rep.bytes_after = self.disk_usage()?;
        let root = |r: u32, name: &str, snapshot: Option<NodeId>| GcRoot {
            name: name.to_owned(),
            snapshot,
            snapshots: kept_snapshots[r as usize],
            only_chunks: only[r as usize].0,
            only_bytes: only[r as usize].1,
        };
        for (i, (name, id)) in refs.iter().enumerate() {
            rep.kept_by.push(root(i as u32, name, Some(*id)));
        }
        rep.kept_by.sort_by_key(|r| r.name != "head");
        for (r, name) in [(checkout_root, "checkout"), (retention_root, "retention")] {
            if kept_snapshots[r as usize] > 0 {
                rep.kept_by.push(root(r, name, None));
            }
        }
        Ok(rep)
    }
}

/// The owner of a node or chunk reached from the trees of several roots.
const SHARED: u32 = u32::MAX;

/// The owner of something reached again, from root `x`.
fn join(old: Option<u32>, x: u32) -> u32 {
    match old {
        None => x,
        Some(o) if o == x => o,
        Some(_) => SHARED,
    }
}

fn claim(keepers: &mut HashMap<NodeId, Vec<u32>>, id: NodeId, root: u32) {
    let k = keepers.entry(id).or_default();
    if !k.contains(&root) {
        k.push(root);
    }
}
