//! `gc`: dropping what no ref (and no retention rule) keeps, and reporting what keeps the rest.
//! Not here: `verify` and repair (see [`crate::maint`]), moving refs (see [`crate::refs`]).
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
//! Memory: the marks are in-memory sets of ids (about 40 bytes per chunk, i.e. ~1 MiB per 1.6 GiB
//! of unique data).

use crate::db::{cf, Batch, IndexEntry};
use crate::node::Child;
use crate::store::{arrival_key, shallow_key};
use crate::{
    ChunkId, Error, GcOptions, GcReport, GcRoot, Hash, NodeId, Progress, Result, Snapshot, Store,
};
use std::collections::{HashMap, HashSet};

impl Store {
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
