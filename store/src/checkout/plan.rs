//! The planning pass: before anything is touched, the changed part of the two trees is walked
//! once to add up the bytes to write and free (the free-space check, [`check_space`]) and to
//! check every new file entry against its nodes ([`Store::validate_tree`]); and the pairing of two
//! folders' entries by name that both passes walk. It writes nothing.

use super::CHECKOUT_MAX_DEPTH;
use crate::node::{ChunkRef, Content, DirEntry, Node, Target};
use crate::{EntryKind, Error, NodeId, Result, Store};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes a checkout will write and free, for the free-space check.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// File bytes to write (new and replaced files).
    pub(crate) write: u64,
    /// File bytes of replaced and removed files.
    pub(crate) free: u64,
    /// Largest file replaced (old and new exist together until the rename).
    pub(crate) overlap: u64,
    /// Files to write.
    pub(crate) files: u64,
}

impl Plan {
    /// Bytes that must be free: the net growth, plus one replaced file's overlap, plus a block of
    /// slack per file written.
    pub(crate) fn need(&self) -> u64 {
        self.write
            .saturating_sub(self.free)
            .saturating_add(self.overlap)
            .saturating_add(self.files.saturating_mul(4096))
    }
}

/// What the planning pass found wrong with the target tree (reported after the space check, so
/// a tree both too big and malformed is refused for its size first).
#[derive(Default)]
pub(super) struct TreeCheck {
    pub(super) bad: Option<Error>,
}

/// Refuses a checkout needing more than `avail` bytes.
pub(crate) fn check_space(plan: &Plan, avail: u64, share: &Path) -> Result<()> {
    if plan.need() > avail {
        return Err(Error::DiskFull {
            path: share.to_path_buf(),
        });
    }
    Ok(())
}

/// Pairs the entries of two sorted folders by name.
impl Store {
    /// The entries of folders `a` and `b` (either may be absent) paired by name, only the pairs
    /// that differ: what both checkout passes (plan and write) walk.
    #[allow(clippy::type_complexity)]
    pub(super) fn changed_entries(
        &self,
        a: Option<NodeId>,
        b: Option<NodeId>,
    ) -> Result<Vec<(Option<DirEntry>, Option<DirEntry>)>> {
        let entries = |d: Option<NodeId>| -> Result<Vec<DirEntry>> {
            Ok(d.map(|d| self.dir_entries(d))
                .transpose()?
                .unwrap_or_default())
        };
        let mut out = pairs(entries(a)?, entries(b)?);
        out.retain(|(x, y)| x != y);
        Ok(out)
    }
}

fn pairs(a: Vec<DirEntry>, b: Vec<DirEntry>) -> Vec<(Option<DirEntry>, Option<DirEntry>)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let ord = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.name.cmp(&y.name),
        };
        out.push(match ord {
            std::cmp::Ordering::Less => (a.next(), None),
            std::cmp::Ordering::Greater => (None, b.next()),
            std::cmp::Ordering::Equal => (a.next(), b.next()),
        });
    }
    out
}

pub(super) fn dir_id(e: &Option<DirEntry>) -> Option<NodeId> {
    match e {
        Some(DirEntry {
            kind: EntryKind::Dir,
            target: Target::Node(id),
            ..
        }) => Some(*id),
        _ => None,
    }
}

pub(super) fn node_id(e: &DirEntry) -> Result<NodeId> {
    match e.target {
        Target::Node(id) => Ok(id),
        Target::Link(_) => Err(Error::corrupt("a file or folder entry has a link target")),
    }
}

impl Store {
    /// Adds up what the walk will write and free, and checks every file entry `b` has that `a`
    /// does not (see [`Store::check_file_entry`]; the first problem goes to `check.bad`).
    pub(super) fn plan_dir(
        &self,
        a: Option<NodeId>,
        b: Option<NodeId>,
        plan: &mut Plan,
        depth: usize,
        rel: &Path,
        check: &mut TreeCheck,
    ) -> Result<()> {
        if depth > CHECKOUT_MAX_DEPTH {
            return Err(Error::Invalid(format!(
                "folders nested deeper than {CHECKOUT_MAX_DEPTH} levels are not checked out"
            )));
        }
        for (x, y) in self.changed_entries(a, b)? {
            let name = x.as_ref().or(y.as_ref()).expect("one side").name.clone();
            let path = rel.join(OsStr::from_bytes(&name));
            if let Some(y) = y.as_ref().filter(|y| y.kind == EntryKind::File) {
                if check.bad.is_none() {
                    if let Err(e) = self.check_file_entry(y, &path) {
                        match e {
                            Error::Corrupt { .. } => check.bad = Some(e),
                            e => return Err(e),
                        }
                    }
                }
            }
            let old_file = x
                .as_ref()
                .filter(|x| x.kind == EntryKind::File)
                .map(|x| x.size);
            if let Some(y) = y.as_ref().filter(|y| y.kind == EntryKind::File) {
                plan.write = plan.write.saturating_add(y.size);
                plan.files += 1;
                if let Some(o) = old_file {
                    plan.overlap = plan.overlap.max(o.min(y.size));
                }
            }
            if let Some(o) = old_file {
                plan.free = plan.free.saturating_add(o);
            }
            let (da, db) = (dir_id(&x), dir_id(&y));
            if (da.is_some() || db.is_some()) && da != db {
                self.plan_dir(da, db, plan, depth + 1, &path, check)?;
            }
        }
        Ok(())
    }

    /// Checks that the snapshot `to`'s tree is well formed where it differs from snapshot
    /// `base` (the local head; `None`: the whole tree): every folder entry points at a folder
    /// node, every file entry at a file node of the entry's size whose chunk lists have the
    /// levels and lengths their parents claim, adding up to that size, with chunks of 1 to
    /// `chunk_max` bytes. A fetched head is checked so before it is recorded; checkout checks
    /// the same before its journal is written. A problem is [`Error::Corrupt`] naming the path.
    /// The work is the changed part of the tree (each distinct chunk-list node once per file).
    pub fn validate_tree(&self, to: NodeId, base: Option<NodeId>) -> Result<()> {
        let to_root = self.snapshot_root(to)?;
        let base_root = match base {
            Some(b) => match self.snapshot_root(b) {
                Ok(r) => Some(r),
                Err(Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let mut check = TreeCheck::default();
        self.plan_dir(
            base_root,
            Some(to_root),
            &mut Plan::default(),
            0,
            Path::new(""),
            &mut check,
        )?;
        match check.bad {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Checks one file entry against its nodes (see [`Store::validate_tree`]).
    fn check_file_entry(&self, e: &DirEntry, path: &Path) -> Result<()> {
        let bad = |why: String| Error::corrupt(format!("{}: {why}", path.display()));
        let id = node_id(e)?;
        let Node::File(f) = self.read_node(id)? else {
            return Err(bad(format!(
                "the file entry points at node {} that is not a file",
                id.fmt_short()
            )));
        };
        if f.size != e.size {
            return Err(bad(format!(
                "the folder entry says {} bytes, its file node {}",
                e.size, f.size
            )));
        }
        let max = u64::from(self.cfg.chunk_max);
        let chunk_ok = |r: &ChunkRef| r.len >= 1 && r.len <= max;
        let covered = match &f.content {
            Content::Inline(refs) => {
                if let Some(r) = refs.iter().find(|r| !chunk_ok(r)) {
                    return Err(bad(format!("a chunk of {} bytes (most: {max})", r.len)));
                }
                refs.iter()
                    .try_fold(0u64, |a, r| a.checked_add(r.len))
                    .ok_or_else(|| bad("its chunk lengths overflow".into()))?
            }
            Content::Tree(root) => {
                let mut memo = HashMap::new();
                self.check_chunk_list(*root, None, &mut memo, max)
                    .map_err(|e| match e {
                        Error::Corrupt { what } => bad(what),
                        e => e,
                    })?
            }
        };
        if covered != f.size {
            return Err(bad(format!(
                "the file claims {} bytes but its chunk lists cover {covered}",
                f.size
            )));
        }
        Ok(())
    }

    /// The bytes the chunk-list node `id` covers, checked: its level is `level` (when given),
    /// every child is one level lower and covers exactly what its entry says, every chunk is 1
    /// to `max` bytes. `memo` holds the nodes already checked (a crafted tree may name one node
    /// many times: each is read once).
    fn check_chunk_list(
        &self,
        id: NodeId,
        level: Option<u8>,
        memo: &mut HashMap<NodeId, (u8, u64)>,
        max: u64,
    ) -> Result<u64> {
        if let Some(&(l, sum)) = memo.get(&id) {
            if level.is_some_and(|want| want != l) {
                return Err(Error::corrupt(format!(
                    "chunk list {} is at level {l}, its parent expects {}",
                    id.fmt_short(),
                    level.unwrap_or(0)
                )));
            }
            return Ok(sum);
        }
        let Node::ChunkList(c) = self.read_node(id)? else {
            return Err(Error::corrupt(format!(
                "node {} is not a chunk list",
                id.fmt_short()
            )));
        };
        if let Some(want) = level.filter(|&w| w != c.level) {
            return Err(Error::corrupt(format!(
                "chunk list {} is at level {}, its parent expects {want}",
                id.fmt_short(),
                c.level
            )));
        }
        let mut sum = 0u64;
        for e in &c.entries {
            if c.level == 0 {
                if e.len == 0 || e.len > max {
                    return Err(Error::corrupt(format!(
                        "a chunk of {} bytes (most: {max})",
                        e.len
                    )));
                }
            } else {
                let below = self.check_chunk_list(NodeId(e.id), Some(c.level - 1), memo, max)?;
                if below != e.len {
                    return Err(Error::corrupt(format!(
                        "a chunk list entry says {} bytes, the list below it covers {below}",
                        e.len
                    )));
                }
            }
            sum = sum
                .checked_add(e.len)
                .ok_or_else(|| Error::corrupt("chunk lengths overflow"))?;
        }
        memo.insert(id, (c.level, sum));
        Ok(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Target;
    use crate::{EntryKind, Hash, NodeId};

    #[test]
    fn free_space_check() {
        let share = Path::new("/share");
        let fresh = Plan {
            write: 1 << 30,
            free: 0,
            overlap: 0,
            files: 1,
        };
        assert_eq!(fresh.need(), (1 << 30) + 4096);
        assert!(check_space(&fresh, 1 << 30, share).is_err());
        assert!(check_space(&fresh, (1 << 30) + 4096, share).is_ok());
        // Replacing a 1 GiB file by another: both exist until the rename.
        let replace = Plan {
            write: 1 << 30,
            free: 1 << 30,
            overlap: 1 << 30,
            files: 1,
        };
        assert!(check_space(&replace, 1 << 29, share).is_err());
        assert!(check_space(&replace, (1 << 30) + 8192, share).is_ok());
        // Shrinking needs only the overlap; a claimed petabyte never fits.
        let huge = Plan {
            write: 1 << 50,
            free: 0,
            overlap: 0,
            files: 1,
        };
        match check_space(&huge, 100 << 30, share) {
            Err(Error::DiskFull { path }) => assert_eq!(path, share),
            r => panic!("{r:?}"),
        }
        let overflow = Plan {
            write: u64::MAX,
            free: 0,
            overlap: u64::MAX,
            files: u64::MAX,
        };
        assert!(check_space(&overflow, u64::MAX - 1, share).is_err());
    }

    #[test]
    fn pairs_by_name() {
        let e = |n: &str| DirEntry {
            name: n.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 0,
            size: 0,
            target: Target::Node(NodeId(Hash::of(n.as_bytes()))),
        };
        let p = pairs(vec![e("a"), e("c"), e("d")], vec![e("b"), e("c"), e("e")]);
        let names: Vec<(Option<&str>, Option<&str>)> = p
            .iter()
            .map(|(x, y)| {
                (
                    x.as_ref().map(|x| std::str::from_utf8(&x.name).unwrap()),
                    y.as_ref().map(|y| std::str::from_utf8(&y.name).unwrap()),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                (Some("a"), None),
                (None, Some("b")),
                (Some("c"), Some("c")),
                (Some("d"), None),
                (None, Some("e"))
            ]
        );
    }
}
