//! Frozen paths: a path the head tracks that `.leftignore` now covers keeps the head's entry, so
//! an ignore rule never reads as a deletion to peers; [`Store::forget`] drops such paths on
//! purpose, and [`Store::frozen_status`] reports how many there are.
//!
//! It is not the scan's own ignore filtering (`walk`, which leaves ignored paths out).

use super::tree::splice;
use super::writer::Writer;
use super::{normalize, one_line};
use crate::db::{cf, Batch};
use crate::node::{build_dir, DirEntry, Node, Target};
use crate::store::{now_ns, rel_components};
use crate::{
    AddOptions, AddReport, CheckoutOptions, EntryKind, Error, NoProgress, NodeId, Result, Snapshot,
    Store,
};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// More paths than this newly frozen by one add is reported ([`AddReport::newly_frozen`]): a
/// `.leftignore` rule that suddenly covers much of the share (a peer's `*`) is worth a warning.
pub const FROZEN_WARN: u64 = 100;

/// Meta key: how many paths the last add carried forward frozen, and how many of those it froze
/// anew when that number last changed (two u64 LE).
const FROZEN_KEY: &[u8] = b"frozen";

/// The `.leftignore` rules of the share as they are on disk now, for paths that the scan did not
/// see (deleted or ignored). One matcher per folder, read once.
pub(super) struct Ignores {
    share: PathBuf,
    dirs: HashMap<PathBuf, Option<ignore::gitignore::Gitignore>>,
}

impl Ignores {
    pub(super) fn new(share: &Path) -> Ignores {
        Ignores {
            share: share.to_path_buf(),
            dirs: HashMap::new(),
        }
    }

    fn matcher(&mut self, dir: &Path) -> Option<&ignore::gitignore::Gitignore> {
        if !self.dirs.contains_key(dir) {
            let abs = self.share.join(dir);
            let file = abs.join(".leftignore");
            let m = if file.is_file() {
                let mut b = ignore::gitignore::GitignoreBuilder::new(&abs);
                // A bad line is ignored here as the walker ignores it.
                let _ = b.add(&file);
                b.build().ok()
            } else {
                None
            };
            self.dirs.insert(dir.to_path_buf(), m);
        }
        self.dirs.get(dir).and_then(Option::as_ref)
    }

    /// Whether the scan's walker would leave `rel` out: it, or a folder above it, is matched by
    /// the deepest `.leftignore` rule that matches it (from the share root down), as ignored.
    fn ignored(&mut self, rel: &Path, is_dir: bool) -> bool {
        let comps: Vec<_> = rel.components().collect();
        let mut prefix = PathBuf::new();
        for (i, c) in comps.iter().enumerate() {
            prefix.push(c);
            let dir = i + 1 < comps.len() || is_dir;
            // The folders holding `prefix`, deepest first.
            let mut parent = prefix.parent().map(Path::to_path_buf);
            while let Some(d) = parent {
                let abs = self.share.join(&prefix);
                if let Some(m) = self.matcher(&d) {
                    match m.matched(&abs, dir) {
                        ignore::Match::Ignore(_) => return true,
                        ignore::Match::Whitelist(_) => break,
                        ignore::Match::None => {}
                    }
                }
                parent = d.parent().map(Path::to_path_buf);
            }
        }
        false
    }
}

/// Paths (files, links, empty folders) in the subtree of `e`.
fn count_paths(store: &Store, e: &DirEntry) -> Result<u64> {
    let (EntryKind::Dir, Target::Node(id)) = (&e.kind, &e.target) else {
        return Ok(1);
    };
    let mut n = 0u64;
    let mut stack = vec![*id];
    while let Some(d) = stack.pop() {
        let entries = store.dir_entries(d)?;
        if entries.is_empty() {
            n += 1;
        }
        for c in entries {
            match (&c.kind, &c.target) {
                (EntryKind::Dir, Target::Node(id)) => stack.push(*id),
                _ => n += 1,
            }
        }
    }
    Ok(n)
}

/// Frozen paths: an entry of the head's tree (`prev`) that the scan left out because a
/// `.leftignore` rule now covers it is carried forward as it is in the head (which holds the
/// peers' changes merged into it), so ignoring a tracked path never publishes a deletion, and
/// its local edits and deletions are not published either (`Store::forget` drops one on purpose).
/// Walks only the folders whose ids differ between `prev` and `new`. Returns the new folder id
/// (`None`: no folder, as `new`) and adds the frozen paths to `frozen`.
pub(super) fn freeze(
    w: &mut Writer<'_>,
    ig: &mut Ignores,
    prev: NodeId,
    new: Option<NodeId>,
    rel: &Path,
    frozen: &mut u64,
) -> Result<Option<NodeId>> {
    if Some(prev) == new {
        return Ok(new);
    }
    let old = w.store.dir_entries(prev)?;
    let mut out = match new {
        Some(n) => w.store.dir_entries(n)?,
        None => Vec::new(),
    };
    let mut changed = false;
    for p in old {
        let path = rel.join(std::ffi::OsStr::from_bytes(&p.name));
        let is_dir = p.kind == EntryKind::Dir;
        let pdir = match (&p.kind, &p.target) {
            (EntryKind::Dir, Target::Node(id)) => Some(*id),
            _ => None,
        };
        match out.binary_search_by(|e| e.name.as_slice().cmp(&p.name)) {
            Ok(i) => {
                let ndir = match (&out[i].kind, &out[i].target) {
                    (EntryKind::Dir, Target::Node(id)) => Some(*id),
                    _ => None,
                };
                if let (Some(pd), Some(nd)) = (pdir, ndir) {
                    if pd != nd {
                        let id = freeze(w, ig, pd, Some(nd), &path, frozen)?.expect("a folder");
                        if id != nd {
                            out[i].target = Target::Node(id);
                            changed = true;
                        }
                    }
                }
            }
            Err(i) => {
                if ig.ignored(&path, is_dir) {
                    *frozen += count_paths(w.store, &p)?;
                    out.insert(i, p);
                    changed = true;
                } else if let Some(pd) = pdir {
                    // Deleted folder: what was ignored inside it stays.
                    if let Some(id) = freeze(w, ig, pd, None, &path, frozen)? {
                        let mut e = p;
                        e.target = Target::Node(id);
                        out.insert(i, e);
                        changed = true;
                    }
                }
            }
        }
    }
    if !changed {
        return Ok(new);
    }
    Ok(Some(build_dir(out, &mut |id, b| w.put_node(id, b))?))
}

impl Store {
    /// Paths the last `add` carried forward frozen (tracked, now covered by `.leftignore`).
    pub fn frozen_count(&self) -> Result<u64> {
        Ok(self.frozen_status()?.0)
    }

    /// ([`Store::frozen_count`], how many of them the add that last changed that count froze
    /// anew): `left status` warns while the second is over [`FROZEN_WARN`].
    pub fn frozen_status(&self) -> Result<(u64, u64)> {
        let v = self.db.get(cf::META, FROZEN_KEY)?.unwrap_or_default();
        let word = |i: usize| {
            v.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
        };
        Ok((word(0), word(1)))
    }

    pub(super) fn set_frozen(&self, frozen: u64, newly: u64) -> Result<()> {
        let mut v = frozen.to_le_bytes().to_vec();
        v.extend_from_slice(&newly.to_le_bytes());
        let mut b = Batch::default();
        b.put(&self.db, cf::META, FROZEN_KEY, &v);
        self.db.write(b.inner, false)?;
        Ok(())
    }

    /// Drops `paths` (tracked paths now covered by `.leftignore`: frozen) from the head's tree on
    /// purpose: a new snapshot without them, so peers delete them; the files on disk stay. A path
    /// that is not in the head, or not ignored (the next add would record it again), is refused.
    /// Returns the new snapshot.
    pub fn forget(
        &self,
        share_root: &Path,
        paths: &[PathBuf],
        opts: &AddOptions,
    ) -> Result<NodeId> {
        self.writable()?;
        self.resume_checkout(share_root, &CheckoutOptions::default(), &NoProgress)?;
        let _g = self.op.read().expect("op lock");
        let share = fs::canonicalize(share_root).map_err(|e| Error::io(share_root, e))?;
        let head = self
            .head()?
            .ok_or_else(|| Error::not_found("no snapshot yet: nothing to forget"))?;
        if self.is_shallow(head)? {
            return Err(Error::NeedTree(head));
        }
        let head_snap = self.snapshot(head)?;
        let mut ig = Ignores::new(&share);
        let mut report = AddReport::default();
        let mut w = Writer {
            store: self,
            sink: None,
            batch: Batch::default(),
            written: HashSet::new(),
            report: &mut report,
        };
        let mut root = head_snap.root;
        let mut names = Vec::new();
        let mut forgotten = 0u64;
        for p in paths {
            let rel = if p.is_absolute() {
                normalize(p)
                    .strip_prefix(&share)
                    .map(Path::to_path_buf)
                    .map_err(|_| Error::PathOutsideShare { path: p.clone() })?
            } else {
                p.clone()
            };
            let comps =
                rel_components(&rel).map_err(|_| Error::PathOutsideShare { path: p.clone() })?;
            if comps.is_empty() {
                return Err(Error::Invalid(
                    "forget needs a path inside the share, not the share itself".into(),
                ));
            }
            let rel: PathBuf = comps
                .iter()
                .map(|c| std::ffi::OsStr::from_bytes(c))
                .collect();
            let e = self.lookup(root, &rel)?.ok_or_else(|| {
                Error::not_found(format!("{} is not in the snapshot", rel.display()))
            })?;
            if !ig.ignored(&rel, e.kind == EntryKind::Dir) {
                return Err(Error::Invalid(format!(
                    "{} is not ignored, so the next add would record it again: add it to \
                     .leftignore first (or delete it and run add)",
                    rel.display()
                )));
            }
            forgotten += count_paths(self, &e)?;
            root = splice(&mut w, &share, Some(root), &comps, PathBuf::new(), None)?;
            // The next path is looked up in the new tree.
            w.flush()?;
            names.push(rel.display().to_string());
        }
        w.flush()?;
        drop(w);
        let snap = Snapshot {
            root,
            parents: vec![head],
            device: opts.device,
            time_ns: opts
                .time_ns
                .unwrap_or_else(now_ns)
                .max(head_snap.time_ns + 1),
            message: if opts.message.is_empty() {
                one_line(&format!("forget {}", names.join(" ")))
                    .chars()
                    .take(4096)
                    .collect()
            } else {
                opts.message.clone()
            },
        };
        let (sid, bytes) = Node::Snapshot(snap).encode_with_id()?;
        let mut b = Batch::default();
        b.put(&self.db, cf::NODES, sid.as_bytes(), &bytes);
        b.put(&self.db, cf::COMPLETE, sid.as_bytes(), b"");
        self.db.write(b.inner, false)?;
        self.flush_after_add();
        let mut b = Batch::default();
        b.put(&self.db, cf::REFS, b"head", sid.as_bytes());
        self.db.write(b.inner, true)?;
        let (frozen, _) = self.frozen_status()?;
        self.set_frozen(frozen.saturating_sub(forgotten), 0)?;
        Ok(sid)
    }
}
