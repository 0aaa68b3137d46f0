//! What a checkout would take away that this device still has: [`Store::removals`] counts the
//! files of a base tree that a target tree deletes or replaces while ours still holds them as
//! they were in the base (the measure of the deletion guard, see `left::app::guard`), and
//! [`Store::tree_totals`] counts a tree's files and bytes.
//!
//! Both walk folder nodes only (a folder entry carries its file's size) and skip every subtree
//! whose node id is the same on the sides compared, so their cost follows what changed, not the
//! size of the share. What this module is not: it decides nothing (the thresholds are the
//! caller's) and writes nothing.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::node::{DirEntry, Node, Target};
use crate::store::MAX_DEPTH;
use crate::{EntryKind, Error, Hash, NodeId, Result, Store};

/// The files a checkout would delete or replace, measured against a base (see
/// [`Store::removals`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removals {
    /// Files (and links) the target deletes.
    pub deleted_files: u64,
    /// Their bytes, as in the base.
    pub deleted_bytes: u64,
    /// Files (and links) whose content the target replaces.
    pub replaced_files: u64,
    /// The bytes of their old content that the new content no longer holds (chunk by chunk: a
    /// small edit of a big file counts the chunks it changed, a file zeroed counts whole).
    pub replaced_bytes: u64,
    /// Deleted plus replaced files per top-level folder (`""` for files at the root), largest
    /// first, at most [`TOP_FOLDERS`].
    pub top: Vec<(PathBuf, u64)>,
}

impl Removals {
    /// Files deleted or replaced.
    pub fn files(&self) -> u64 {
        self.deleted_files + self.replaced_files
    }

    /// Bytes deleted or replaced.
    pub fn bytes(&self) -> u64 {
        self.deleted_bytes + self.replaced_bytes
    }
}

/// Most top-level folders listed in [`Removals::top`].
pub const TOP_FOLDERS: usize = 5;

/// Most chunks of a new version remembered to compare an old version with (about 10 MB); a
/// bigger file counts its whole old size as replaced.
pub const REPLACED_CHUNKS_CAP: usize = 1 << 18;

/// An entry's identity for the comparison: kind and target (content), not time or mode.
fn same(a: Option<&DirEntry>, b: &DirEntry) -> bool {
    a.is_some_and(|a| a.kind == b.kind && a.target == b.target)
}

fn find<'a>(entries: &'a [DirEntry], name: &[u8]) -> Option<&'a DirEntry> {
    entries
        .binary_search_by(|e| e.name.as_slice().cmp(name))
        .ok()
        .map(|i| &entries[i])
}

fn dir_of(e: Option<&DirEntry>) -> Option<NodeId> {
    match e {
        Some(DirEntry {
            kind: EntryKind::Dir,
            target: Target::Node(id),
            ..
        }) => Some(*id),
        _ => None,
    }
}

impl Store {
    /// The files of snapshot `base` that snapshot `to` deletes or replaces while snapshot `ours`
    /// still has them as `base` had them: what checking out `to` would take away from this
    /// device that it did not change itself. A path changed or deleted in `ours` since `base`
    /// is ours to decide and not counted; files `to` adds are not counted either. Metadata
    /// (mode, time) does not count as a replacement, and a replaced file counts the bytes of its
    /// old chunks that the new version no longer holds. The three trees must be stored.
    pub fn removals(&self, base: NodeId, ours: NodeId, to: NodeId) -> Result<Removals> {
        let root = |s: NodeId| self.snapshot(s).map(|s| s.root);
        let (b, o, t) = (root(base)?, root(ours)?, root(to)?);
        let mut out = Removals::default();
        let mut top: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        self.removals_rec(b, Some(o), Some(t), None, &mut out, &mut top, 0)?;
        let mut top: Vec<(PathBuf, u64)> = top
            .into_iter()
            .map(|(n, c)| (PathBuf::from(OsStr::from_bytes(&n)), c))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_FOLDERS);
        out.top = top;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn removals_rec(
        &self,
        base: NodeId,
        ours: Option<NodeId>,
        to: Option<NodeId>,
        top_name: Option<&[u8]>,
        out: &mut Removals,
        top: &mut BTreeMap<Vec<u8>, u64>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(format!(
                "tree under {base} is deeper than {MAX_DEPTH}"
            )));
        }
        // Gone here (ours to decide), or untouched there: nothing is taken away.
        let Some(ours) = ours else { return Ok(()) };
        if to == Some(base) || to == Some(ours) {
            return Ok(());
        }
        let eb = self.dir_entries(base)?;
        let eo = if ours == base {
            None
        } else {
            Some(self.dir_entries(ours)?)
        };
        let et = match to {
            Some(t) => self.dir_entries(t)?,
            None => Vec::new(),
        };
        for e in &eb {
            let o = match &eo {
                None => Some(e),
                Some(eo) => find(eo, &e.name),
            };
            let t = find(&et, &e.name);
            let key = top_name.unwrap_or(&e.name);
            if let (EntryKind::Dir, Target::Node(id)) = (e.kind, &e.target) {
                self.removals_rec(*id, dir_of(o), dir_of(t), Some(key), out, top, depth + 1)?;
                continue;
            }
            if !same(o, e) || same(t, e) {
                continue;
            }
            match t {
                Some(t) if t.kind == e.kind => {
                    let Some(lost) = self.replaced(e, t)? else {
                        continue;
                    };
                    out.replaced_files += 1;
                    out.replaced_bytes += lost;
                }
                _ => {
                    out.deleted_files += 1;
                    out.deleted_bytes += e.size;
                }
            }
            *top.entry(if top_name.is_some() {
                key.to_vec()
            } else {
                Vec::new()
            })
            .or_default() += 1;
        }
        Ok(())
    }

    /// What replacing entry `old` by `new` (same kind, another target) takes away: `None` when
    /// only the metadata changed, else the bytes of `old`'s chunks that `new` does not hold.
    fn replaced(&self, old: &DirEntry, new: &DirEntry) -> Result<Option<u64>> {
        let (Target::Node(a), Target::Node(b)) = (&old.target, &new.target) else {
            // Links: the target is the content.
            return Ok(Some(old.size));
        };
        let (Node::File(fa), Node::File(fb)) = (self.read_node(*a)?, self.read_node(*b)?) else {
            return Ok(Some(old.size));
        };
        if fa.content == fb.content {
            return Ok(None);
        }
        let mut held: HashSet<Hash> = HashSet::new();
        let mut over = false;
        self.file_chunks(&fb.content, &mut |refs| {
            if held.len() + refs.len() > REPLACED_CHUNKS_CAP {
                over = true;
            } else {
                held.extend(refs.iter().map(|r| r.id));
            }
            Ok(())
        })?;
        if over {
            return Ok(Some(old.size));
        }
        let mut lost = 0u64;
        self.file_chunks(&fa.content, &mut |refs| {
            lost += refs
                .iter()
                .filter(|r| !held.contains(&r.id))
                .map(|r| r.len)
                .sum::<u64>();
            Ok(())
        })?;
        Ok(Some(lost))
    }

    /// The files (and links) of snapshot `snapshot` and their bytes.
    pub fn tree_totals(&self, snapshot: NodeId) -> Result<(u64, u64)> {
        let mut stack = vec![(self.snapshot(snapshot)?.root, 0usize)];
        let (mut files, mut bytes) = (0u64, 0u64);
        while let Some((dir, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(Error::corrupt(format!(
                    "tree under {dir} is deeper than {MAX_DEPTH}"
                )));
            }
            self.walk_dir(dir, &mut |e| {
                match (e.kind, &e.target) {
                    (EntryKind::Dir, Target::Node(id)) => stack.push((*id, depth + 1)),
                    _ => {
                        files += 1;
                        bytes += e.size;
                    }
                }
                Ok(())
            })?;
        }
        Ok((files, bytes))
    }
}
