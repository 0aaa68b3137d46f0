//! Deterministic three-way merge of snapshots: [`Store::merge_bases`] and [`Store::merge`].
//!
//! When two peers changed the share concurrently each ends up holding both heads and merges them.
//! Every peer must compute the *same* merge snapshot from the same two heads, in either order, so
//! the peers converge instead of answering each other's merges with new merges. So nothing here
//! depends on the clock, on which side is "ours", or on anything but the two heads and the
//! snapshot headers and trees beneath them.
//!
//! # Merge bases
//! The lowest common ancestors of the heads over the snapshot-header DAG (parents), sorted by id.
//! Both heads paint their ancestors (newest first, as git's `paint_down_to_common`); a snapshot
//! painted by both and not below another such one is a candidate, and candidates that are
//! ancestors of other candidates are dropped. Times never decrease from parent to child (`add`
//! makes a child newer than its parent, a merge takes its newest parent's time), so the walk stops
//! as soon as one side has nothing unpainted left above the time level being walked: the work is
//! the history since the merge base, at most [`ANCESTOR_LIMIT`](crate::ANCESTOR_LIMIT) snapshots. Only headers are read,
//! so shallow snapshots are fine. A parent header that is not stored ends its branch and is
//! reported ([`MergeBases::missing`](crate::MergeBases::missing)); [`Store::merge`] then refuses with [`Error::NeedHeaders`]
//! rather than merge against a base that may be wrong.
//!
//! # The merge snapshot
//! `root` = the merged tree, `parents` = both heads sorted by id, `device` = all zeros (a merge has
//! no author of its own), `time_ns` = the greater of the two heads' times (never the clock),
//! `message` = [`MERGE_MESSAGE`]. So `merge(a, b)` and `merge(b, a)` write the same node. Heads
//! with equal trees are merged all the same (the snapshot has that tree): otherwise two heads with
//! equal trees and different ids would stay different forever, or one side's history would be
//! dropped; the caller sees the root did not change and has nothing to check out.
//!
//! # The base tree
//! One merge base: its tree. None (unrelated histories): the empty tree. Several (criss-cross): a
//! virtual base, as git's "recursive" strategy: with the bases sorted by id, the first base's tree
//! is merged with the second's against the (virtual) base of those two, the result with the
//! third's against the base of {first, second} and third, and so on; nested at most
//! [`VIRTUAL_BASE_DEPTH`] levels deep and [`VIRTUAL_MERGES`] tree merges in all, beyond which the
//! first base by id is used. These merges follow the rules below except that a conflicting name
//! is left out of the virtual base (no winner, no copy), so each head's version of it counts as
//! its own change against the base, as git's conflict markers in a virtual base do: had the base
//! taken one version, the head holding that version would look unchanged and the other head's
//! version would silently win. A base (or head) whose tree is not in the store is
//! [`Error::NeedTree`] naming that snapshot: fetch it and retry.
//!
//! # Tree merge
//! Folders are merged entry by entry, matched by name, descending only where the three versions
//! differ (equal subtree ids are taken whole, so the work follows what changed). For a name with
//! base entry B, ours O and theirs T (each an entry or absent; entries compared whole: kind,
//! target, mode, mtime, size):
//!
//! - O == T: take it. O == B: take T (absent = deleted). T == B: take O.
//! - Both folders: merge them recursively (a base that is not a folder counts as empty); the
//!   folder's own mode and mtime are merged as below.
//! - One side deleted, the other changed a folder: merge the folder with the deleted side as an
//!   empty folder, so what the other side left unchanged goes (the deletion wins there) and what
//!   it changed or added stays (edit beats delete); an empty result is dropped.
//! - One side deleted, the other changed a file or symlink: keep the changed one (edit beats
//!   delete).
//! - Both files or symlinks: the *content* (kind + size + chunks, or the link target) is merged
//!   three-way: equal on both sides, or changed on one side only, gives that content, and then
//!   mode and mtime are merged separately, each three-way (a field changed on one side only takes
//!   that side's value; changed on both: the greater mtime, and the mode of the entry with the
//!   greater `(mtime_ns, mode)`). So a `chmod` on one side and an edit on the other both survive.
//! - Content changed differently on both sides (or added on both with different content): a
//!   conflict. The winner keeps the name: the greater `mtime_ns`, then the greater author device,
//!   then the greater target bytes, then the greater kind. The loser is kept beside it as
//!   `stem.sync-conflict-YYYYMMDD-HHMMSS-DEVICE.ext` (Syncthing's pattern, see [`conflict_name`]).
//! - A folder against a file or symlink: the folder keeps the name (its content merged as if the
//!   other side had deleted it, base = B if B is a folder); the file or link is kept under a
//!   conflict name, unless B was a folder and the merged folder came out empty (the folder side
//!   only deleted things): then the file or link simply takes the name.
//!
//! Conflict names taken in the merged folder get `-2`, `-3`, ... before the extension, assigned in
//! name order. A side's *author device* is its head's device; for a merge (zero device) the author
//! of its parent with the greatest `(time_ns, id)`, recursively ([`AUTHOR_DEPTH`] at most); a
//! missing header gives the zero device. Every rule above is symmetric in O and T, so the merged
//! tree does not depend on the argument order.
//!
//! # Writing
//! The new nodes (folders, and file nodes whose mode or mtime were merged) are written children
//! first with their completeness marks (everything beneath them is stored: the rest of the tree is
//! the heads' complete trees), then the snapshot node, unsynced like `put_snapshot`. `head` is not
//! moved: the caller checks the merge out and moves it. The store's operation lock is held for
//! reading throughout, so gc cannot drop what the merge is reading.

use crate::db::{cf, Batch};
use crate::node::{self, build_dir, check_name, Content, DirEntry, DirNode, Node, Target};
use crate::{Conflict, EntryKind, Error, MergeOutcome, MergeSide, NodeId, Result, Snapshot, Store};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

mod bases;
mod keep;
mod naming;

use bases::complete;
pub use naming::{base32_lower, conflict_name, CONFLICT_NAME_MAX};

/// The message of every merge snapshot.
pub const MERGE_MESSAGE: &str = "merge";
/// Deepest nesting of virtual merge bases (criss-cross of criss-crosses); beyond it the first base
/// by id is used.
pub const VIRTUAL_BASE_DEPTH: usize = 8;
/// Most tree merges made to build the virtual base of one merge; beyond it the first remaining
/// base is used.
pub const VIRTUAL_MERGES: usize = 64;
/// Most merge snapshots followed to find a side's author device.
pub const AUTHOR_DEPTH: usize = 64;
/// Deepest folder nesting merged (the depth checkout accepts).
const MERGE_MAX_DEPTH: usize = crate::checkout::CHECKOUT_MAX_DEPTH;

/// Who wrote each side of a tree merge, and whether it is the real merge or a virtual base.
struct Sides {
    dev_o: [u8; 32],
    dev_t: [u8; 32],
    /// The real merge: conflicts keep both versions and are reported. In a virtual base a
    /// conflicting name is left out instead (see the module doc).
    real: bool,
    /// The side whose file keeps the name in a content conflict, whatever the times
    /// ([`Store::merge_preferring`]); `None`: the symmetric rule.
    prefer: Option<MergeSide>,
}

/// A version kept under a conflict name.
struct Loser {
    entry: DirEntry,
    winner: MergeSide,
    winner_dev: [u8; 32],
    loser_dev: [u8; 32],
}

/// What a file or symlink holds, whatever its mode and mtime.
#[derive(PartialEq, Eq)]
enum ContentKey {
    File(u64, Content),
    Link(Vec<u8>),
}

/// State of one merge: the nodes built so far (not yet written) and the conflicts found.
struct Ctx<'a> {
    store: &'a Store,
    pending: HashMap<NodeId, Vec<u8>>,
    empty: Option<NodeId>,
    conflicts: Vec<Conflict>,
    budget: usize,
}

fn dir_id(e: &DirEntry) -> Option<NodeId> {
    match (&e.kind, &e.target) {
        (EntryKind::Dir, Target::Node(id)) => Some(*id),
        _ => None,
    }
}

fn is_dir(e: &DirEntry) -> bool {
    e.kind == EntryKind::Dir
}

fn target_bytes(e: &DirEntry) -> &[u8] {
    match &e.target {
        Target::Node(id) => id.as_bytes(),
        Target::Link(l) => l,
    }
}

/// Three-way merge of one value: equal, or changed on one side only; `None` when both changed it.
fn three<T: PartialEq + Copy>(b: Option<T>, o: T, t: T) -> Option<T> {
    if o == t {
        Some(o)
    } else if b == Some(o) {
        Some(t)
    } else if b == Some(t) {
        Some(o)
    } else {
        None
    }
}

/// Mode and mtime of a merged entry (see the module doc).
fn merge_meta(b: Option<&DirEntry>, o: &DirEntry, t: &DirEntry) -> (u32, i64) {
    let mtime =
        three(b.map(|b| b.mtime_ns), o.mtime_ns, t.mtime_ns).unwrap_or(o.mtime_ns.max(t.mtime_ns));
    let mode = three(b.map(|b| b.mode), o.mode, t.mode).unwrap_or(
        if (o.mtime_ns, o.mode) >= (t.mtime_ns, t.mode) {
            o.mode
        } else {
            t.mode
        },
    );
    (mode, mtime)
}

impl Ctx<'_> {
    fn put(&mut self, id: NodeId, bytes: Vec<u8>) {
        self.pending.entry(id).or_insert(bytes);
    }

    fn read(&self, id: NodeId) -> Result<Node> {
        match self.pending.get(&id) {
            Some(b) => Node::decode(b),
            None => self.store.read_node(id),
        }
    }

    /// The empty folder node (built once).
    fn empty(&mut self) -> Result<NodeId> {
        if let Some(e) = self.empty {
            return Ok(e);
        }
        let pending = &mut self.pending;
        let id = build_dir(Vec::new(), &mut |id, b| {
            pending.entry(id).or_insert(b);
            Ok(())
        })?;
        self.empty = Some(id);
        Ok(id)
    }

    /// Entries of a folder (`None`: empty), built here or stored.
    fn entries(&self, id: Option<NodeId>) -> Result<Vec<DirEntry>> {
        let Some(id) = id else {
            return Ok(Vec::new());
        };
        if !self.pending.contains_key(&id) {
            return self.store.dir_entries(id);
        }
        // A folder built by this merge (from sorted entries by build_dir).
        let mut out = Vec::new();
        let mut stack = vec![(id, 0u32)];
        while let Some((n, depth)) = stack.pop() {
            if depth > node::MAX_LEVEL as u32 {
                return Err(Error::corrupt(format!("folder node {id} is too deep")));
            }
            match self.read(n)? {
                Node::Dir(DirNode::Leaf(e)) => out.extend(e),
                Node::Dir(DirNode::Index { children, .. }) => {
                    stack.extend(children.into_iter().rev().map(|c| (c, depth + 1)))
                }
                _ => return Err(Error::corrupt(format!("node {n} is not a folder"))),
            }
        }
        Ok(out)
    }

    fn content(&self, e: &DirEntry) -> Result<ContentKey> {
        match &e.target {
            Target::Link(l) => Ok(ContentKey::Link(l.clone())),
            Target::Node(id) => match self.read(*id)? {
                Node::File(f) => Ok(ContentKey::File(f.size, f.content)),
                _ => Err(Error::corrupt(format!("node {id} is not a file"))),
            },
        }
    }

    /// `src` (a file or symlink) with the given mode and mtime; a new file node when they differ.
    fn with_meta(&mut self, src: &DirEntry, mode: u32, mtime_ns: i64) -> Result<DirEntry> {
        if src.mode == mode && src.mtime_ns == mtime_ns {
            return Ok(src.clone());
        }
        let target = match &src.target {
            Target::Link(l) => Target::Link(l.clone()),
            Target::Node(id) => {
                let Node::File(mut f) = self.read(*id)? else {
                    return Err(Error::corrupt(format!("node {id} is not a file")));
                };
                f.mode = mode;
                f.mtime_ns = mtime_ns;
                let (nid, bytes) = Node::File(f).encode_with_id()?;
                self.put(nid, bytes);
                Target::Node(nid)
            }
        };
        Ok(DirEntry {
            mode,
            mtime_ns,
            target,
            ..src.clone()
        })
    }

    /// Merges three folders (`None` = empty) and returns the merged folder's id.
    fn merge_dir(
        &mut self,
        b: Option<NodeId>,
        o: Option<NodeId>,
        t: Option<NodeId>,
        sides: &Sides,
        path: &Path,
        depth: usize,
    ) -> Result<NodeId> {
        let empty = self.empty()?;
        let norm = |x: Option<NodeId>| x.filter(|id| *id != empty);
        let (b, o, t) = (norm(b), norm(o), norm(t));
        if o == t {
            return Ok(o.unwrap_or(empty));
        }
        if o == b {
            return Ok(t.unwrap_or(empty));
        }
        if t == b {
            return Ok(o.unwrap_or(empty));
        }
        if depth > MERGE_MAX_DEPTH {
            return Err(Error::Invalid(format!(
                "{}: folders nested deeper than {MERGE_MAX_DEPTH} levels are not merged",
                path.display()
            )));
        }
        let (eb, eo, et) = (self.entries(b)?, self.entries(o)?, self.entries(t)?);
        let (mut ib, mut io, mut it) = (0, 0, 0);
        let mut out: Vec<DirEntry> = Vec::with_capacity(eo.len().max(et.len()));
        let mut losers: Vec<Loser> = Vec::new();
        loop {
            let name = [eb.get(ib), eo.get(io), et.get(it)]
                .into_iter()
                .flatten()
                .map(|e| &e.name)
                .min()
                .cloned();
            let Some(name) = name else { break };
            let (xb, xo, xt) = (
                take(&eb, &mut ib, &name),
                take(&eo, &mut io, &name),
                take(&et, &mut it, &name),
            );
            let child = path.join(OsStr::from_bytes(&name));
            let (keep, loser) = self.merge_entry(xb, xo, xt, sides, &child, depth)?;
            out.extend(keep);
            losers.extend(loser);
        }
        if !losers.is_empty() {
            let mut taken: HashSet<Vec<u8>> = out.iter().map(|e| e.name.clone()).collect();
            for l in losers {
                let mut n = 1;
                let name = loop {
                    let c = conflict_name(&l.entry.name, l.entry.mtime_ns, &l.loser_dev, n);
                    if taken.insert(c.clone()) {
                        break c;
                    }
                    n += 1;
                };
                check_name(&name)?;
                if sides.real {
                    self.conflicts.push(Conflict {
                        path: path.join(OsStr::from_bytes(&l.entry.name)),
                        copy: path.join(OsStr::from_bytes(&name)),
                        winner: l.winner,
                        winner_device: l.winner_dev,
                        loser_device: l.loser_dev,
                    });
                }
                out.push(DirEntry { name, ..l.entry });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let pending = &mut self.pending;
        build_dir(out, &mut |id, bytes| {
            pending.entry(id).or_insert(bytes);
            Ok(())
        })
    }

    /// Merges one name: the entry that keeps it (if any) and a version to keep under a conflict
    /// name (if any).
    fn merge_entry(
        &mut self,
        b: Option<&DirEntry>,
        o: Option<&DirEntry>,
        t: Option<&DirEntry>,
        sides: &Sides,
        path: &Path,
        depth: usize,
    ) -> Result<(Option<DirEntry>, Option<Loser>)> {
        if o == t {
            return Ok((o.cloned(), None));
        }
        if o == b {
            return Ok((t.cloned(), None));
        }
        if t == b {
            return Ok((o.cloned(), None));
        }
        let bdir = b.and_then(dir_id);
        match (o, t) {
            (None, None) => Ok((None, None)), // o == t above
            (Some(x), None) | (None, Some(x)) => {
                // One side deleted the name, the other changed it.
                if !is_dir(x) || bdir.is_none() {
                    return Ok((Some(x.clone()), None)); // edit beats delete
                }
                let (so, st) = if o.is_some() {
                    (dir_id(x), None)
                } else {
                    (None, dir_id(x))
                };
                let id = self.merge_dir(bdir, so, st, sides, path, depth + 1)?;
                if id == self.empty()? {
                    return Ok((None, None));
                }
                Ok((
                    Some(DirEntry {
                        target: Target::Node(id),
                        ..x.clone()
                    }),
                    None,
                ))
            }
            (Some(o), Some(t)) if is_dir(o) && is_dir(t) => {
                let id = self.merge_dir(bdir, dir_id(o), dir_id(t), sides, path, depth + 1)?;
                let (mode, mtime_ns) = merge_meta(b, o, t);
                Ok((
                    Some(DirEntry {
                        name: o.name.clone(),
                        kind: EntryKind::Dir,
                        mode,
                        mtime_ns,
                        size: 0,
                        target: Target::Node(id),
                    }),
                    None,
                ))
            }
            (Some(o), Some(t)) if !is_dir(o) && !is_dir(t) => {
                let (ko, kt) = (self.content(o)?, self.content(t)?);
                let kb = match b {
                    Some(b) if !is_dir(b) => Some(self.content(b)?),
                    _ => None,
                };
                let src = if ko == kt || kb.as_ref() == Some(&kt) {
                    Some(o)
                } else if kb.as_ref() == Some(&ko) {
                    Some(t)
                } else {
                    None
                };
                if let Some(src) = src {
                    let (mode, mtime) = merge_meta(b, o, t);
                    return Ok((Some(self.with_meta(src, mode, mtime)?), None));
                }
                let ord = (o.mtime_ns, sides.dev_o, target_bytes(o), o.kind).cmp(&(
                    t.mtime_ns,
                    sides.dev_t,
                    target_bytes(t),
                    t.kind,
                ));
                debug_assert_ne!(ord, Ordering::Equal, "equal entries are not a conflict");
                if !sides.real {
                    return Ok((None, None));
                }
                let ord = match sides.prefer {
                    Some(MergeSide::Theirs) => Ordering::Less,
                    Some(MergeSide::Ours) => Ordering::Greater,
                    None => ord,
                };
                Ok(if ord == Ordering::Less {
                    (Some(t.clone()), Some(loser(o, MergeSide::Theirs, sides)))
                } else {
                    (Some(o.clone()), Some(loser(t, MergeSide::Ours, sides)))
                })
            }
            (Some(o), Some(t)) => {
                // A folder against a file or symlink: the folder keeps the name.
                let (d, f, d_side) = if is_dir(o) {
                    (o, t, MergeSide::Ours)
                } else {
                    (t, o, MergeSide::Theirs)
                };
                let (so, st) = match d_side {
                    MergeSide::Ours => (dir_id(d), None),
                    MergeSide::Theirs => (None, dir_id(d)),
                };
                let id = self.merge_dir(bdir, so, st, sides, path, depth + 1)?;
                if bdir.is_some() && id == self.empty()? {
                    // The folder side only deleted things under the folder.
                    return Ok((Some(f.clone()), None));
                }
                if !sides.real {
                    return Ok((None, None));
                }
                Ok((
                    Some(DirEntry {
                        target: Target::Node(id),
                        ..d.clone()
                    }),
                    Some(loser(f, d_side, sides)),
                ))
            }
        }
    }
}

/// `v[*i]` if it is named `name` (then `*i` moves past it).
fn take<'a>(v: &'a [DirEntry], i: &mut usize, name: &[u8]) -> Option<&'a DirEntry> {
    let e = v.get(*i).filter(|e| e.name == name)?;
    *i += 1;
    Some(e)
}

fn loser(e: &DirEntry, winner: MergeSide, sides: &Sides) -> Loser {
    let (winner_dev, loser_dev) = match winner {
        MergeSide::Ours => (sides.dev_o, sides.dev_t),
        MergeSide::Theirs => (sides.dev_t, sides.dev_o),
    };
    Loser {
        entry: e.clone(),
        winner,
        winner_dev,
        loser_dev,
    }
}

impl Store {
    /// The root of a snapshot's tree, which must be completely stored (else [`Error::NeedTree`]).
    fn merge_tree_of(&self, snap: NodeId) -> Result<NodeId> {
        let s = self.snapshot(snap)?;
        if self.is_shallow(snap)? || !self.has_nodes(&[s.root])?[0] {
            return Err(Error::NeedTree(snap));
        }
        Ok(s.root)
    }

    /// The base tree for merging two heads whose merge bases are `bases` (sorted): `None` is the
    /// empty tree. See the module doc for the virtual base of several.
    fn virtual_base(
        &self,
        ctx: &mut Ctx<'_>,
        bases: &[NodeId],
        depth: usize,
    ) -> Result<Option<NodeId>> {
        match bases {
            [] => return Ok(None),
            [one] => return self.merge_tree_of(*one).map(Some),
            _ => {}
        }
        if depth >= VIRTUAL_BASE_DEPTH || ctx.budget == 0 {
            return self.merge_tree_of(bases[0]).map(Some);
        }
        let mut acc = self.merge_tree_of(bases[0])?;
        let mut set = vec![bases[0]];
        for &c in &bases[1..] {
            if ctx.budget == 0 {
                break;
            }
            ctx.budget -= 1;
            let sub = self.lca_complete(&set, &[c])?;
            let base = self.virtual_base(ctx, &sub, depth + 1)?;
            let ct = self.merge_tree_of(c)?;
            let sides = Sides {
                dev_o: self.author_of_set(&set)?,
                dev_t: self.author(c)?,
                real: false,
                prefer: None,
            };
            acc = ctx.merge_dir(base, Some(acc), Some(ct), &sides, Path::new(""), 0)?;
            set.push(c);
        }
        Ok(Some(acc))
    }

    /// The snapshots whose trees merging `a` with `b` reads (the merge bases, and for a
    /// criss-cross the bases beneath them that the virtual base uses), as far as the stored
    /// headers tell. Empty when one is an ancestor of the other. For gc.
    pub(crate) fn merge_needs(&self, a: NodeId, b: NodeId) -> Result<HashSet<NodeId>> {
        let mut out = HashSet::new();
        let m = self.lca(&[a], &[b])?;
        if m.bases.contains(&a) || m.bases.contains(&b) {
            return Ok(out);
        }
        let mut budget = VIRTUAL_MERGES;
        self.virtual_needs(&m.bases, 0, &mut budget, &mut out)?;
        Ok(out)
    }

    fn virtual_needs(
        &self,
        bases: &[NodeId],
        depth: usize,
        budget: &mut usize,
        out: &mut HashSet<NodeId>,
    ) -> Result<()> {
        if bases.len() <= 1 || depth >= VIRTUAL_BASE_DEPTH || *budget == 0 {
            out.extend(bases.first());
            return Ok(());
        }
        out.insert(bases[0]);
        let mut set = vec![bases[0]];
        for &c in &bases[1..] {
            if *budget == 0 {
                break;
            }
            *budget -= 1;
            out.insert(c);
            let sub = self.lca(&set, &[c])?;
            self.virtual_needs(&sub.bases, depth + 1, budget, out)?;
            set.push(c);
        }
        Ok(())
    }

    /// Merges snapshot `theirs` into `ours` (see the module doc for the rules): [`MergeOutcome::UpToDate`]
    /// when `theirs` is `ours` or an ancestor of it, [`MergeOutcome::FastForward`] when `ours` is an
    /// ancestor of `theirs`, else writes the merge snapshot (and its new tree nodes) and returns
    /// [`MergeOutcome::Merged`] with the conflicts. Does not move `head`. The merge snapshot is the
    /// same for `merge(a, b)` and `merge(b, a)`, on every store holding the same headers and trees.
    ///
    /// Errors: [`Error::NeedHeaders`] when the history between the heads is not completely stored
    /// (fetch those headers and retry), [`Error::NeedTree`] when the tree of a head or a merge base
    /// is not (fetch it and retry); never a merge against a wrong base.
    pub fn merge(&self, ours: NodeId, theirs: NodeId) -> Result<MergeOutcome> {
        self.merge_with(ours, theirs, None)
    }

    /// [`Store::merge`], except that in a conflict between two files (or links) the `prefer`
    /// side keeps the name and the other goes under the conflict name, whatever their times.
    /// Not symmetric, so never for a snapshot peers merge: a receive-only device's local merge
    /// (the share's version keeps the name, the local edit becomes the conflict copy).
    pub fn merge_preferring(
        &self,
        ours: NodeId,
        theirs: NodeId,
        prefer: MergeSide,
    ) -> Result<MergeOutcome> {
        self.merge_with(ours, theirs, Some(prefer))
    }

    fn merge_with(
        &self,
        ours: NodeId,
        theirs: NodeId,
        prefer: Option<MergeSide>,
    ) -> Result<MergeOutcome> {
        if ours == theirs {
            return Ok(MergeOutcome::UpToDate);
        }
        let _g = self.op.read().expect("op lock");
        let so = self.snapshot(ours)?;
        let st = self.snapshot(theirs)?;
        let m = self.lca(&[ours], &[theirs])?;
        if m.bases.contains(&theirs) {
            return Ok(MergeOutcome::UpToDate);
        }
        if m.bases.contains(&ours) {
            return Ok(MergeOutcome::FastForward(theirs));
        }
        let bases = complete(m)?;
        let ro = self.merge_tree_of(ours)?;
        let rt = self.merge_tree_of(theirs)?;
        self.writable()?;
        let mut ctx = Ctx {
            store: self,
            pending: HashMap::new(),
            empty: None,
            conflicts: Vec::new(),
            budget: VIRTUAL_MERGES,
        };
        let base = self.virtual_base(&mut ctx, &bases, 0)?;
        let sides = Sides {
            dev_o: self.author(ours)?,
            dev_t: self.author(theirs)?,
            real: true,
            prefer,
        };
        let root = ctx.merge_dir(base, Some(ro), Some(rt), &sides, Path::new(""), 0)?;
        let mut parents = vec![ours, theirs];
        parents.sort();
        let snap = Snapshot {
            root,
            parents,
            device: [0; 32],
            time_ns: so.time_ns.max(st.time_ns),
            message: MERGE_MESSAGE.to_string(),
        };
        let snapshot = self.write_merge(&ctx, &snap)?;
        let mut conflicts = ctx.conflicts;
        conflicts.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(MergeOutcome::Merged {
            snapshot,
            conflicts,
        })
    }

    /// Writes the new nodes reachable from `snap.root`, children first, each marked complete, then
    /// the snapshot node (unsynced, as `put_snapshot`).
    fn write_merge(&self, ctx: &Ctx<'_>, snap: &Snapshot) -> Result<NodeId> {
        // Post-order over the nodes this merge built; the others are the heads' complete nodes.
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut stack = vec![(snap.root, false)];
        while let Some((id, expanded)) = stack.pop() {
            let Some(bytes) = ctx.pending.get(&id) else {
                continue;
            };
            if expanded {
                order.push((id, bytes));
                continue;
            }
            if !done.insert(id) {
                continue;
            }
            stack.push((id, true));
            for c in Node::decode(bytes)?.children() {
                if let node::Child::Node(n) = c {
                    if ctx.pending.contains_key(&n) && !done.contains(&n) {
                        stack.push((n, false));
                    }
                }
            }
        }
        let mut b = Batch::default();
        for (id, bytes) in order {
            if self.db.exists(cf::COMPLETE, id.as_bytes())? {
                continue;
            }
            b.put(&self.db, cf::NODES, id.as_bytes(), bytes);
            b.put(&self.db, cf::COMPLETE, id.as_bytes(), b"");
            if b.len() > 20_000 {
                self.db.write(std::mem::take(&mut b).inner, false)?;
            }
        }
        let (sid, bytes) = Node::Snapshot(snap.clone()).encode_with_id()?;
        self.note_arrival(&mut b, sid)?;
        b.put(&self.db, cf::NODES, sid.as_bytes(), &bytes);
        b.put(&self.db, cf::COMPLETE, sid.as_bytes(), b"");
        self.db.write(b.inner, false)?;
        Ok(sid)
    }
}
