//! `verify` and repair: checking every stored object reachable from the refs, and preparing
//! the store so a fetch can bring back what verify found damaged. `gc` is in [`crate::gc`].
//!
//! **verify** walks every snapshot reachable from the refs (through all parents), newest first, and
//! every tree whose files gc has not dropped: each node is re-hashed and decoded, each chunk decoded
//! (bounded) and re-hashed (in parallel), and a folder split over several leaves must list its names
//! in strictly increasing order across them (else its root node is corrupt). A missing or corrupt
//! object is reported once, with up to 10 paths that use it in the newest snapshot that uses it.
//!
//! **repair** ([`Store::repair_plan`], [`Store::apply_repair_plan`]) prepares the store so a
//! fetch can bring back what verify found missing or corrupt: damaged objects are removed and the
//! completeness marks above them cleared, so a pull walks down to them.

use crate::codec;
use crate::db::{cf, Batch};
use crate::node::{Child, DirNode, Node, Target};
use crate::{
    ChunkId, EntryKind, Error, Hash, NodeId, ObjectId, ObjectKind, Problem, ProblemKind, Progress,
    Result, Snapshot, Store, VerifyReport,
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

    fn check_node(&self, id: NodeId) -> std::result::Result<(), ProblemKind> {
        match self.get_node(id) {
            Ok(None) => Err(ProblemKind::Missing),
            Ok(Some(b)) => Node::decode_verified(&id, &b)
                .map(|_| ())
                .map_err(|_| ProblemKind::Corrupt),
            Err(_) => Err(ProblemKind::Corrupt),
        }
    }
}
