//! The writing pass: walking the changed part of the two trees folder by folder against the disk,
//! checking that each path still holds its `from` version (or already its `to` version) before it
//! is replaced or removed, and keeping it otherwise (see "Local changes are never lost" in the
//! parent module). Writing one new path is `write`'s job; the folder layer is `crate::fs`.

use crate::node::{check_name, DirEntry, FileNode, Node, Target};
use crate::scan::{Seen, Stat, TMP_PREFIX};
use crate::{EntryKind, Error, Hash, NodeId, Result, Store};

use super::plan::{dir_id, node_id};
use super::unwritten::{denied, path_error};
use super::{disk_kind, safe_mode, Ctx, DiskKind, CHANGED_LOCALLY, CHECKOUT_MAX_DEPTH, UNTRACKED};
use crate::fs::{
    cstring, fchmod, fstat, fsync, futimens, list_dir, lstat_at, open_dir_at, open_file_at,
    readlink_at, unlink_at,
};
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

impl Store {
    /// Moves the folder open as `fd` (at `rel`) from folder node `a` to folder node `b` (`None`:
    /// the folder is gone in that tree).
    pub(super) fn apply_dir(
        &self,
        cx: &mut Ctx<'_>,
        fd: &OwnedFd,
        rel: &Path,
        a: Option<NodeId>,
        b: Option<NodeId>,
        depth: usize,
    ) -> Result<()> {
        if depth > CHECKOUT_MAX_DEPTH {
            return Err(Error::Invalid(format!(
                "{}: folders nested deeper than {CHECKOUT_MAX_DEPTH} levels are not checked out",
                rel.display()
            )));
        }
        if cx.recovery {
            for n in list_dir(fd.as_raw_fd()).map_err(|e| cx.io(rel, e))? {
                if n.starts_with(TMP_PREFIX.as_bytes()) {
                    let c = cstring(&n)?;
                    if let Some(st) = lstat_at(fd.as_raw_fd(), &c).map_err(|e| cx.io(rel, e))? {
                        if disk_kind(&st) != DiskKind::Dir {
                            let _ = unlink_at(fd.as_raw_fd(), &c, false);
                        }
                    }
                }
            }
        }
        for (x, y) in self.changed_entries(a, b)? {
            let name = x.as_ref().or(y.as_ref()).expect("one side").name.clone();
            check_name(&name)?;
            let path = rel.join(OsStr::from_bytes(&name));
            if cx.reserved(&path, &name) {
                if y.is_some() {
                    cx.keep(&path, "name is reserved by left; not written");
                }
                continue;
            }
            let c = cstring(&name)?;
            match self.apply_entry(cx, fd, &path, &c, x.as_ref(), y.as_ref(), depth) {
                Ok(()) => cx.clear_unwritten(fd.as_raw_fd(), &c, &path)?,
                Err(e) => match path_error(&e) {
                    Some(why) => cx.fail_path(fd.as_raw_fd(), &c, &path, &why)?,
                    None => return Err(e),
                },
            }
        }
        if cx.opts.fsync {
            fsync(fd.as_raw_fd()).map_err(|e| cx.io(rel, e))?;
        }
        Ok(())
    }

    /// Moves one path from entry `x` (in `from`) to entry `y` (in `to`).
    #[allow(clippy::too_many_arguments)]
    fn apply_entry(
        &self,
        cx: &mut Ctx<'_>,
        dir: &OwnedFd,
        rel: &Path,
        name: &CStr,
        x: Option<&DirEntry>,
        y: Option<&DirEntry>,
        depth: usize,
    ) -> Result<()> {
        let dfd = dir.as_raw_fd();
        let disk = lstat_at(dfd, name).map_err(|e| cx.io(rel, e))?;
        // Still what an earlier checkout could not replace: not a local change (the scan record
        // names the old version); the retry pass at the end brings it to `to`.
        if cx
            .unwritten
            .get(rel)
            .is_some_and(|seen| Seen::of(disk.as_ref()) == *seen)
        {
            return Ok(());
        }
        let Some(st) = disk else {
            // Nothing there: write the new version (an edit beats a local deletion; on resume, the
            // old version may already be gone).
            if x.map(|x| x.kind == EntryKind::File).unwrap_or(false) {
                cx.forget(rel)?;
            }
            if let Some(y) = y {
                self.put_entry(cx, dir, rel, name, y, None, None, depth)?;
            }
            return Ok(());
        };
        let kind = disk_kind(&st);

        // Already at the `to` version (a resumed checkout, or the same bytes put there meanwhile).
        if let Some(y) = y {
            if y.kind != EntryKind::Dir
                && self.at_version(cx, dfd, rel, name, &st, y, cx.recovery)?
            {
                return Ok(());
            }
        }

        // `to` has a folder and the disk has one, but `from` had something else there (a resumed
        // checkout already made it): fill it.
        if let (Some(y), Some(x), DiskKind::Dir) = (y, x, kind) {
            if y.kind == EntryKind::Dir && x.kind != EntryKind::Dir && cx.recovery {
                return self.enter_dir(cx, dir, rel, name, None, Some(y), depth);
            }
        }
        let Some(x) = x else {
            // New in `to`, but something is on disk.
            match (y, kind) {
                (Some(y), DiskKind::Dir) if y.kind == EntryKind::Dir => {
                    self.enter_dir(cx, dir, rel, name, None, Some(y), depth)?;
                }
                // Re-checking after a reboot: that checkout made this file or link (its ctime
                // says so) and a power cut took its bytes.
                (Some(y), DiskKind::File | DiskKind::Symlink)
                    if y.kind != EntryKind::Dir && cx.written_by_settled(&st) =>
                {
                    self.put_entry(cx, dir, rel, name, y, None, Some(st.st_ino), depth)?;
                }
                _ => cx.keep(rel, UNTRACKED),
            }
            return Ok(());
        };

        if x.kind == EntryKind::Dir {
            if kind != DiskKind::Dir {
                let reason = if kind == DiskKind::Symlink {
                    "was a folder, is a symlink on disk; checkout never writes through a symlink"
                } else {
                    CHANGED_LOCALLY
                };
                cx.keep(rel, reason);
                return Ok(());
            }
            match y {
                Some(y) if y.kind == EntryKind::Dir => {
                    self.enter_dir(cx, dir, rel, name, Some(x), Some(y), depth)?;
                }
                _ => {
                    // Removed, or replaced by a file or link: remove what the old tree had first.
                    self.enter_dir(cx, dir, rel, name, Some(x), None, depth)?;
                    match unlink_at(dfd, name, true) {
                        Ok(()) => {
                            cx.report.dirs_removed += 1;
                            if let Some(y) = y {
                                self.put_entry(cx, dir, rel, name, y, None, None, depth)?;
                            }
                        }
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
                            ) =>
                        {
                            cx.keep(rel, "folder holds files the snapshot does not have; kept");
                        }
                        Err(e) => return Err(cx.io(rel, e)),
                    }
                }
            }
            return Ok(());
        }

        // `x` is a file or a link: the disk must hold exactly that version.
        let old_file = match self.at_from_version(cx, dfd, rel, name, &st, x)? {
            None => {
                cx.keep(rel, CHANGED_LOCALLY);
                return Ok(());
            }
            Some(f) => f,
        };
        match y {
            None => {
                if denied(rel) {
                    return Err(cx.io(rel, io::Error::from_raw_os_error(libc::EACCES)));
                }
                unlink_at(dfd, name, false).map_err(|e| cx.io(rel, e))?;
                cx.report.files_removed += 1;
                if x.kind == EntryKind::File {
                    cx.forget(rel)?;
                }
            }
            Some(y) if y.kind == EntryKind::Dir => {
                unlink_at(dfd, name, false).map_err(|e| cx.io(rel, e))?;
                cx.report.files_removed += 1;
                if x.kind == EntryKind::File {
                    cx.forget(rel)?;
                }
                self.put_entry(cx, dir, rel, name, y, None, None, depth)?;
            }
            Some(y) => {
                let old = match (old_file, x.kind) {
                    (Some(f), EntryKind::File) => Some((f, Stat::of_raw(&st), node_id(x)?)),
                    _ => None,
                };
                // Same bytes, new mode or mtime: re-permission in place.
                if let (Some((f, _, xid)), EntryKind::File) = (&old, y.kind) {
                    if self.same_content(*xid, node_id(y)?)? {
                        let yid = node_id(y)?;
                        fchmod(f.as_raw_fd(), safe_mode(y.mode)).map_err(|e| cx.io(rel, e))?;
                        futimens(f.as_raw_fd(), y.mtime_ns).map_err(|e| cx.io(rel, e))?;
                        let now = fstat(f.as_raw_fd()).map_err(|e| cx.io(rel, e))?;
                        cx.record(rel, Stat::of_raw(&now), yid)?;
                        return Ok(());
                    }
                }
                self.put_entry(cx, dir, rel, name, y, old, Some(st.st_ino), depth)?;
            }
        }
        Ok(())
    }

    /// Whether two file nodes have the same bytes.
    fn same_content(&self, a: NodeId, b: NodeId) -> Result<bool> {
        let (Node::File(fa), Node::File(fb)) = (self.read_node(a)?, self.read_node(b)?) else {
            return Err(Error::corrupt("a file entry does not point to a file node"));
        };
        Ok(fa.size == fb.size && fa.content == fb.content)
    }

    /// Whether the disk holds `y` (the `to` version) at this path. For a file: its stat matches
    /// the scan record and the record names `y`'s node; with `rehash`, also when its bytes, mode
    /// and mtime match `y` (then the record is written).
    #[allow(clippy::too_many_arguments)]
    fn at_version(
        &self,
        cx: &mut Ctx<'_>,
        dfd: RawFd,
        rel: &Path,
        name: &CStr,
        st: &libc::stat,
        y: &DirEntry,
        rehash: bool,
    ) -> Result<bool> {
        match (&y.target, disk_kind(st)) {
            (Target::Link(t), DiskKind::Symlink) => Ok(Stat::of_raw(st).mtime_ns == y.mtime_ns
                && readlink_at(dfd, name).map_err(|e| cx.io(rel, e))? == *t),
            (Target::Node(id), DiskKind::File) if y.kind == EntryKind::File => {
                let s = Stat::of_raw(st);
                // After a reboot, a file a settled checkout wrote may have the right stat but
                // not its bytes (preallocated blocks read as zeros): its bytes are checked.
                let trust_stat = !cx.written_by_settled(st);
                if let Some((cs, cn)) = cx.cached(rel)? {
                    if trust_stat && cs == s && cn == *id {
                        return Ok(true);
                    }
                }
                if !rehash
                    || s.size != y.size
                    || s.mode != safe_mode(y.mode)
                    || s.mtime_ns != y.mtime_ns
                {
                    return Ok(false);
                }
                let f = open_file_at(dfd, name).map_err(|e| cx.io(rel, e))?;
                let Node::File(fnode) = self.read_node(*id)? else {
                    return Err(Error::corrupt(format!("node {id} is not a file")));
                };
                if !self.file_matches(&f, &fnode)? {
                    return Ok(false);
                }
                let now = Stat::of_raw(&fstat(f.as_raw_fd()).map_err(|e| cx.io(rel, e))?);
                if now != s {
                    return Ok(false);
                }
                cx.record(rel, now, *id)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether the bytes of `f` hash to the chunks of `node` (recovery only: reads the file).
    pub(super) fn file_matches(&self, f: &File, node: &FileNode) -> Result<bool> {
        let mut off = 0u64;
        let mut ok = true;
        let mut buf = Vec::new();
        self.file_chunks(&node.content, &mut |refs| {
            for r in refs {
                if !ok {
                    return Ok(());
                }
                if r.len > self.cfg.chunk_max as u64 {
                    ok = false;
                    return Ok(());
                }
                buf.resize(r.len as usize, 0);
                if f.read_exact_at(&mut buf, off).is_err() || Hash::of(&buf) != r.id {
                    ok = false;
                }
                off += r.len;
            }
            Ok(())
        })?;
        Ok(ok && off == node.size)
    }

    /// Checks that the disk holds `x` (the `from` version). For a file, returns it opened (and
    /// checked through that descriptor, so what is checked is what is later copied from).
    #[allow(clippy::type_complexity)]
    fn at_from_version(
        &self,
        cx: &mut Ctx<'_>,
        dfd: RawFd,
        rel: &Path,
        name: &CStr,
        st: &libc::stat,
        x: &DirEntry,
    ) -> Result<Option<Option<File>>> {
        let found = self.at_from_version_exact(cx, dfd, rel, name, st, x)?;
        if found.is_some() || cx.settle.is_none() {
            return Ok(found);
        }
        // Re-checking after a reboot: the scan record names the `to` version now, so the old
        // version is recognised by its bytes (a rename the power cut took back), and a file the
        // settled checkout wrote (by its ctime) may be replaced even if its bytes are short.
        if matches!(disk_kind(st), DiskKind::File | DiskKind::Symlink) && cx.written_by_settled(st)
        {
            return Ok(Some(None));
        }
        if let (Target::Node(id), DiskKind::File, EntryKind::File) =
            (&x.target, disk_kind(st), x.kind)
        {
            let Node::File(fnode) = self.read_node(*id)? else {
                return Err(Error::corrupt(format!("node {id} is not a file")));
            };
            if st.st_size as u64 == fnode.size {
                if let Ok(f) = open_file_at(dfd, name) {
                    if self.file_matches(&f, &fnode)? {
                        return Ok(Some(None));
                    }
                }
            }
        }
        Ok(None)
    }

    #[allow(clippy::type_complexity)]
    fn at_from_version_exact(
        &self,
        cx: &mut Ctx<'_>,
        dfd: RawFd,
        rel: &Path,
        name: &CStr,
        st: &libc::stat,
        x: &DirEntry,
    ) -> Result<Option<Option<File>>> {
        match (&x.target, disk_kind(st)) {
            (Target::Link(t), DiskKind::Symlink) => {
                let ok = readlink_at(dfd, name).map_err(|e| cx.io(rel, e))? == *t;
                Ok(ok.then_some(None))
            }
            (Target::Node(id), DiskKind::File) if x.kind == EntryKind::File => {
                let Some((cs, cn, racy)) = cx.cached_racy(rel)? else {
                    return Ok(None);
                };
                if cs != Stat::of_raw(st) || cn != *id {
                    return Ok(None);
                }
                let f = match open_file_at(dfd, name) {
                    Ok(f) => f,
                    Err(_) => return Ok(None),
                };
                let now = fstat(f.as_raw_fd()).map_err(|e| cx.io(rel, e))?;
                if Stat::of_raw(&now) != cs {
                    return Ok(None);
                }
                // A racy record (the file was written within its timestamp tick of the scan's
                // read) may hide a change the stat cannot show: the bytes decide.
                if racy {
                    let Node::File(fnode) = self.read_node(*id)? else {
                        return Err(Error::corrupt(format!("node {id} is not a file")));
                    };
                    if !self.file_matches(&f, &fnode)? {
                        return Ok(None);
                    }
                }
                Ok(Some(Some(f)))
            }
            _ => Ok(None),
        }
    }

    /// Opens the folder `name` (never through a link) and moves it from `x` to `y`, then gives it
    /// `y`'s mode and mtime.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn enter_dir(
        &self,
        cx: &mut Ctx<'_>,
        dir: &OwnedFd,
        rel: &Path,
        name: &CStr,
        x: Option<&DirEntry>,
        y: Option<&DirEntry>,
        depth: usize,
    ) -> Result<()> {
        let sub = match open_dir_at(dir.as_raw_fd(), name) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                cx.keep(
                    rel,
                    "is not a folder on disk (a symlink?); checkout never writes through a symlink",
                );
                return Ok(());
            }
            Err(e) => return Err(cx.io(rel, e)),
        };
        let before = fstat(sub.as_raw_fd()).map_err(|e| cx.io(rel, e))?;
        let (xa, yb) = (
            x.and_then(|x| dir_id(&Some(x.clone()))),
            y.and_then(|y| dir_id(&Some(y.clone()))),
        );
        // Writable while it is changed (as the owner; root needs no bit).
        let orig_mode = before.st_mode & 0o7777;
        if orig_mode & 0o700 != 0o700 {
            fchmod(sub.as_raw_fd(), orig_mode | 0o700).map_err(|e| cx.io(rel, e))?;
        }
        if xa != yb {
            self.apply_dir(cx, &sub, rel, xa, yb, depth + 1)?;
        }
        match y {
            Some(y) => {
                fchmod(sub.as_raw_fd(), safe_mode(y.mode)).map_err(|e| cx.io(rel, e))?;
                futimens(sub.as_raw_fd(), y.mtime_ns).map_err(|e| cx.io(rel, e))?;
            }
            None => {
                if orig_mode & 0o700 != 0o700 {
                    let _ = fchmod(sub.as_raw_fd(), orig_mode);
                }
            }
        }
        Ok(())
    }
}
