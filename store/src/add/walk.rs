//! The folder walk of one add: the `ignore` crate's walk with only `.leftignore` filtering, the
//! names left is never to enter (`.left`, `.left-tmp-*`, the store folder), which symlinks
//! `--follow-links` follows ([`Links`]), and the decision per entry: recorded, skipped with a
//! reason (its previous entry carried forward), or left out (deleted meanwhile).
//!
//! It reads metadata only: no file content (`reader`), no store writes.

use super::{one_line, Ent};
use crate::node::{self, Target};
use crate::scan::{Seen, Stat, TMP_PREFIX};
use crate::{AddReport, EntryKind, Error, NodeId, Result, Skipped, Store};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn walk_error_path(e: &ignore::Error) -> Option<PathBuf> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path.clone()),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            walk_error_path(err)
        }
        ignore::Error::Loop { child, .. } => Some(child.clone()),
        _ => None,
    }
}

impl Store {
    /// Scans `rel` (relative to `share`) into `ents`; returns the index of its entry, or `None` if it
    /// does not exist.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scan(
        &self,
        share: &Path,
        store_dir: &Path,
        rel: &Path,
        links: &Links,
        parents: bool,
        unwritten: &[(PathBuf, Seen)],
        ents: &mut Vec<Ent>,
        report: &mut AddReport,
    ) -> Result<Option<usize>> {
        let abs = share.join(rel);
        let meta = match links.metadata(rel, &abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&abs, e)),
        };
        let name = rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let root = push_ent(ents, rel.to_path_buf(), name, &meta, &abs, report)?;
        if ents[root].kind != EntryKind::Dir {
            return Ok(Some(root));
        }
        let mut dirs: HashMap<PathBuf, usize> = HashMap::new();
        dirs.insert(rel.to_path_buf(), root);
        let store_dir = store_dir.to_path_buf();
        // Links that must stay links while the walk follows the others: left out of the walk
        // (so it does not descend into them) and recorded verbatim after it.
        let unfollowed: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let mut wb = ignore::WalkBuilder::new(&abs);
        let policy = links.follow.then(|| (links.clone(), unfollowed.clone()));
        let share_dir = share.to_path_buf();
        wb.standard_filters(false)
            .hidden(false)
            .parents(parents)
            .follow_links(links.follow)
            .add_custom_ignore_filename(".leftignore")
            .filter_entry(move |e| {
                let keep = e.file_name() != ".left"
                    && !e.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes())
                    && e.path() != store_dir;
                if let (true, Some((links, unfollowed))) = (keep && e.path_is_symlink(), &policy) {
                    if let Ok(r) = e.path().strip_prefix(&share_dir) {
                        if e.depth() > 0 && !links.follows(r, e.path()) {
                            unfollowed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(r.to_path_buf());
                            return false;
                        }
                    }
                }
                keep
            });
        for r in wb.build() {
            let de = match r {
                Ok(de) => de,
                Err(e) => {
                    let reason = one_line(&e.to_string());
                    match walk_error_path(&e)
                        .and_then(|p| p.strip_prefix(share).ok().map(Path::to_path_buf))
                    {
                        Some(r) => skip_path(ents, &dirs, r, reason, report),
                        None => report.skipped.push(Skipped {
                            path: PathBuf::new(),
                            reason,
                        }),
                    }
                    continue;
                }
            };
            if de.depth() == 0 {
                continue;
            }
            let Ok(r) = de.path().strip_prefix(share) else {
                continue;
            };
            let r = r.to_path_buf();
            let parent = r.parent().and_then(|p| dirs.get(p).copied());
            let Some(parent) = parent else { continue };
            let meta = match links.metadata(&r, de.path()) {
                Ok(m) => m,
                // Deleted since it was listed: a deletion, not a skip.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    skip_path(ents, &dirs, r, one_line(&e.to_string()), report);
                    continue;
                }
            };
            let name = de.file_name().as_bytes().to_vec();
            let i = push_ent(ents, r.clone(), name, &meta, de.path(), report)?;
            // Skipped entries stay in their folder so the previous version is carried forward.
            ents[parent].children.push(i);
            if ents[i].kind == EntryKind::Dir && !ents[i].skipped {
                dirs.insert(r, i);
            }
        }
        let unfollowed = std::mem::take(&mut *unfollowed.lock().unwrap_or_else(|p| p.into_inner()));
        for r in unfollowed {
            let parent = r.parent().and_then(|p| dirs.get(p).copied());
            let Some(parent) = parent else { continue };
            let abs = share.join(&r);
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    skip_path(ents, &dirs, r, one_line(&e.to_string()), report);
                    continue;
                }
            };
            let name = r
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default();
            let i = push_ent(ents, r, name, &meta, &abs, report)?;
            ents[parent].children.push(i);
        }
        for (p, seen) in unwritten {
            if p.as_os_str().is_empty() || !p.starts_with(rel) {
                continue;
            }
            let m = fs::symlink_metadata(share.join(p)).ok();
            if Seen::of_meta(m.as_ref()) != *seen {
                continue;
            }
            let reason: String =
                "the last checkout could not write it; the synced version is kept".into();
            if p == rel {
                // An `only` path: its previous entry is carried whole.
                ents[root].skipped = true;
                ents[root].children.clear();
                report.skipped.push(Skipped {
                    path: p.clone(),
                    reason,
                });
                continue;
            }
            // Scanned already: marked skipped in its folder (a folder drops what it found).
            let parent = p.parent().and_then(|q| dirs.get(q).copied());
            let name = p.file_name().map(|n| n.as_bytes().to_vec());
            let found = parent.zip(name).and_then(|(parent, name)| {
                ents[parent]
                    .children
                    .iter()
                    .copied()
                    .find(|&c| ents[c].name == name)
            });
            match found {
                Some(c) => {
                    ents[c].skipped = true;
                    ents[c].children.clear();
                    dirs.remove(p);
                    report.skipped.push(Skipped {
                        path: p.clone(),
                        reason,
                    });
                }
                None => skip_path(ents, &dirs, p.clone(), reason, report),
            }
        }
        Ok(Some(root))
    }
}

/// Which symlinks `add --follow-links` follows. Never one whose target leaves the share (or
/// lies in the store), and never one that the head records as a link: a link a peer planted
/// (`photos -> ~/.ssh/id_rsa`) arrives as a link and stays one, so its target is not published.
/// Without `--follow-links`, no link is followed.
#[derive(Clone, Default)]
pub(super) struct Links {
    follow: bool,
    /// The share and the store, canonical.
    share: PathBuf,
    store: PathBuf,
    /// Paths the head's tree holds as symlinks.
    verbatim: Arc<HashSet<PathBuf>>,
}

impl Links {
    pub(super) fn new(
        store: &Store,
        share: &Path,
        store_dir: &Path,
        follow: bool,
        head_root: Option<NodeId>,
    ) -> Result<Links> {
        if !follow {
            return Ok(Links::default());
        }
        let mut verbatim = HashSet::new();
        let mut stack: Vec<(NodeId, PathBuf)> =
            head_root.into_iter().map(|r| (r, PathBuf::new())).collect();
        while let Some((id, rel)) = stack.pop() {
            for e in store.dir_entries(id)? {
                let path = rel.join(std::ffi::OsStr::from_bytes(&e.name));
                match (&e.kind, &e.target) {
                    (EntryKind::Symlink, _) => {
                        verbatim.insert(path);
                    }
                    (EntryKind::Dir, Target::Node(d)) => stack.push((*d, path)),
                    _ => {}
                }
            }
        }
        Ok(Links {
            follow,
            share: share.to_path_buf(),
            store: store_dir.to_path_buf(),
            verbatim: Arc::new(verbatim),
        })
    }

    /// Whether the symlink at `rel` (`abs` on disk) is followed.
    fn follows(&self, rel: &Path, abs: &Path) -> bool {
        if !self.follow || self.verbatim.contains(rel) {
            return false;
        }
        match fs::canonicalize(abs) {
            Ok(t) => t.starts_with(&self.share) && !t.starts_with(&self.store),
            Err(_) => false,
        }
    }

    /// The metadata `add` records for `abs`: the link's own unless it is followed.
    fn metadata(&self, rel: &Path, abs: &Path) -> std::io::Result<fs::Metadata> {
        let m = fs::symlink_metadata(abs)?;
        if m.file_type().is_symlink() && self.follows(rel, abs) {
            return fs::metadata(abs);
        }
        Ok(m)
    }
}

fn push_ent(
    ents: &mut Vec<Ent>,
    rel: PathBuf,
    name: Vec<u8>,
    meta: &fs::Metadata,
    abs: &Path,
    report: &mut AddReport,
) -> Result<usize> {
    let ft = meta.file_type();
    let (kind, link, skipped) = if ft.is_symlink() {
        match fs::read_link(abs) {
            Ok(t) => (
                EntryKind::Symlink,
                Some(t.as_os_str().as_bytes().to_vec()),
                false,
            ),
            Err(e) => {
                report.skipped.push(Skipped {
                    path: rel.clone(),
                    reason: one_line(&e.to_string()),
                });
                (EntryKind::Symlink, None, true)
            }
        }
    } else if ft.is_dir() {
        (EntryKind::Dir, None, false)
    } else if ft.is_file() {
        (EntryKind::File, None, false)
    } else {
        report.skipped.push(Skipped {
            path: rel.clone(),
            reason: "not a regular file, folder or symlink".into(),
        });
        (EntryKind::File, None, true)
    };
    let link_bad = link
        .as_ref()
        .map(|l| l.is_empty() || l.len() > node::MAX_LINK)
        .unwrap_or(false);
    let mut skipped = skipped;
    if link_bad || (!name.is_empty() && node::check_name(&name).is_err()) {
        report.skipped.push(Skipped {
            path: rel.clone(),
            reason: "name or link target cannot be stored".into(),
        });
        skipped = true;
    }
    if !skipped {
        match kind {
            EntryKind::File => report.files += 1,
            EntryKind::Dir => report.dirs += 1,
            EntryKind::Symlink => report.symlinks += 1,
        }
    }
    ents.push(Ent {
        rel,
        name,
        kind,
        stat: Stat::of(meta),
        link,
        node: None,
        children: Vec::new(),
        skipped,
        gone: false,
    });
    Ok(ents.len() - 1)
}

/// Records that `r` (relative to the share) could not be scanned. A folder already scanned (one
/// that could not be listed) is marked skipped, so its previous subtree is kept; another path gets a
/// skipped placeholder in its folder, so its previous entry (if any) is kept.
fn skip_path(
    ents: &mut Vec<Ent>,
    dirs: &HashMap<PathBuf, usize>,
    r: PathBuf,
    reason: String,
    report: &mut AddReport,
) {
    if let Some(&i) = dirs.get(&r) {
        if !ents[i].skipped {
            ents[i].skipped = true;
            ents[i].children.clear();
            report.dirs = report.dirs.saturating_sub(1);
        }
    } else if let (Some(&parent), Some(name)) =
        (r.parent().and_then(|p| dirs.get(p)), r.file_name())
    {
        let name = name.as_bytes().to_vec();
        let known = ents[parent]
            .children
            .iter()
            .any(|&c| ents[c].name == name && ents[c].skipped);
        if !known {
            ents.push(Ent {
                rel: r.clone(),
                name,
                kind: EntryKind::File,
                stat: Stat::default(),
                link: None,
                node: None,
                children: Vec::new(),
                skipped: true,
                gone: false,
            });
            let i = ents.len() - 1;
            ents[parent].children.push(i);
        }
    }
    report.skipped.push(Skipped { path: r, reason });
}
