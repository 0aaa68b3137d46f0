//! The tree of one add: folder nodes built bottom-up from the scanned entries, the splice of
//! `only` paths into the previous head's tree, and the previous tree's entries that skipped paths
//! keep ([`PrevTree`]).
//!
//! It is not the walk that found the entries (`walk`) nor the snapshot and `head` writes
//! (`mod.rs`).

use super::writer::Writer;
use super::Ent;
use crate::node::{build_dir, DirEntry, Target};
use crate::{EntryKind, NodeId, Result, Store};
use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Entries of the previous snapshot's tree, looked up by path, for carrying skipped paths forward.
/// Only paths that were skipped are looked up, so this costs nothing on a normal add; it keeps the
/// node ids of the folders it walked through and the entries of the last folder it read.
pub(super) struct PrevTree {
    root: Option<NodeId>,
    folders: HashMap<PathBuf, Option<NodeId>>,
    last: Option<(PathBuf, Vec<DirEntry>)>,
}

impl PrevTree {
    pub(super) fn new(root: Option<NodeId>) -> PrevTree {
        PrevTree {
            root,
            folders: HashMap::new(),
            last: None,
        }
    }

    /// The previous folder node at `rel` ("" = root), if there was a folder there.
    fn folder(&mut self, store: &Store, rel: &Path) -> Result<Option<NodeId>> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root);
        }
        if let Some(v) = self.folders.get(rel) {
            return Ok(*v);
        }
        let id = match self.entry(store, rel)? {
            Some(DirEntry {
                kind: EntryKind::Dir,
                target: Target::Node(id),
                ..
            }) => Some(id),
            _ => None,
        };
        self.folders.insert(rel.to_path_buf(), id);
        Ok(id)
    }

    /// The previous entry at `rel` (not the root), if any.
    pub(super) fn entry(&mut self, store: &Store, rel: &Path) -> Result<Option<DirEntry>> {
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return Ok(None);
        };
        if self.root.is_none() {
            return Ok(None);
        }
        if self.last.as_ref().map(|(p, _)| p != parent).unwrap_or(true) {
            let entries = match self.folder(store, parent)? {
                Some(id) => store.dir_entries(id)?,
                None => Vec::new(),
            };
            self.last = Some((parent.to_path_buf(), entries));
        }
        let entries = &self.last.as_ref().expect("set above").1;
        Ok(entries
            .binary_search_by(|e| e.name.as_slice().cmp(name.as_bytes()))
            .ok()
            .map(|p| entries[p].clone()))
    }
}

pub(super) fn to_dir_entry(e: &Ent) -> Option<DirEntry> {
    if e.skipped || e.gone {
        return None;
    }
    let target = match e.kind {
        EntryKind::Symlink => Target::Link(e.link.clone()?),
        _ => Target::Node(e.node?),
    };
    let size = match e.kind {
        EntryKind::File => e.stat.size,
        EntryKind::Symlink => e.link.as_ref().map(|l| l.len() as u64).unwrap_or(0),
        EntryKind::Dir => 0,
    };
    Some(DirEntry {
        name: e.name.clone(),
        kind: e.kind,
        mode: e.stat.mode,
        mtime_ns: e.stat.mtime_ns,
        size,
        target,
    })
}

/// Builds folder nodes under `ents[i]` bottom-up (iteratively: deep trees cannot overflow the stack).
/// A skipped child keeps its entry from the previous snapshot (`prev`), if it had one.
pub(super) fn build_subtree(
    w: &mut Writer<'_>,
    ents: &mut [Ent],
    i: usize,
    prev: &mut PrevTree,
) -> Result<()> {
    if ents[i].kind != EntryKind::Dir || ents[i].skipped {
        return Ok(());
    }
    // Post-order over folders.
    let mut order = Vec::new();
    let mut stack = vec![i];
    while let Some(d) = stack.pop() {
        order.push(d);
        for &c in &ents[d].children {
            if ents[c].kind == EntryKind::Dir && !ents[c].skipped {
                stack.push(c);
            }
        }
    }
    for &d in order.iter().rev() {
        let mut entries: Vec<DirEntry> = ents[d]
            .children
            .iter()
            .filter_map(|&c| to_dir_entry(&ents[c]))
            .collect();
        for &c in &ents[d].children {
            if ents[c].skipped {
                entries.extend(prev.entry(w.store, &ents[c].rel)?);
            }
        }
        // Stable: what was scanned comes before a carried entry of the same name and wins.
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        let id = build_dir(entries, &mut |id, b| w.put_node(id, b))?;
        ents[d].node = Some(id);
        if w.batch.bytes > (4 << 20) {
            w.flush()?;
        }
    }
    Ok(())
}

/// Replaces (or removes, when `new` is `None`) the entry at `comps` under folder `dir`; returns the
/// new folder id. Folders along the way that are new get their metadata from disk.
pub(super) fn splice(
    w: &mut Writer<'_>,
    share: &Path,
    dir: Option<NodeId>,
    comps: &[Vec<u8>],
    prefix: PathBuf,
    new: Option<DirEntry>,
) -> Result<NodeId> {
    let mut entries = match dir {
        Some(d) => w.store.dir_entries(d)?,
        None => Vec::new(),
    };
    let name = &comps[0];
    let pos = entries.binary_search_by(|e| e.name.as_slice().cmp(name));
    if comps.len() == 1 {
        match (pos, new) {
            (Ok(p), Some(n)) => entries[p] = n,
            (Err(p), Some(n)) => entries.insert(p, n),
            (Ok(p), None) => {
                entries.remove(p);
            }
            (Err(_), None) => {}
        }
    } else {
        let here = prefix.join(std::ffi::OsStr::from_bytes(name));
        let old = pos.ok().map(|p| entries[p].clone());
        let child_dir = old.as_ref().and_then(|e| match (&e.kind, &e.target) {
            (EntryKind::Dir, Target::Node(id)) => Some(*id),
            _ => None,
        });
        let id = splice(w, share, child_dir, &comps[1..], here.clone(), new)?;
        let (mode, mtime_ns) = match fs::symlink_metadata(share.join(&here)) {
            Ok(m) if m.is_dir() => (
                m.mode() & 0o7777,
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ),
            _ => old
                .as_ref()
                .map(|e| (e.mode, e.mtime_ns))
                .unwrap_or((0o755, 0)),
        };
        let e = DirEntry {
            name: name.clone(),
            kind: EntryKind::Dir,
            mode,
            mtime_ns,
            size: 0,
            target: Target::Node(id),
        };
        match pos {
            Ok(p) => entries[p] = e,
            Err(p) => entries.insert(p, e),
        }
    }
    build_dir(entries, &mut |id, b| w.put_node(id, b))
}
