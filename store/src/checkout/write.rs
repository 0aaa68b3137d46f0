//! Writing one path a checkout brings in: a folder (created, then filled by the walk), a symlink
//! (made under a temporary name and renamed in), or a file: a temporary file beside the target
//! (`O_EXCL`, preallocated from [`PREALLOCATE_MIN`] on, or a staged file renamed in), filled from
//! the old file's unchanged ranges (`copy_file_range`) and from verified store chunks, given its
//! mode and mtime, and renamed over the target only if the target is still what was checked.
//! Deciding whether to write a path is the walk's job (`apply`).

use crate::db::checkout_step;
use crate::node::{ChunkRef, DirEntry, FileNode, Node, Target};
use crate::scan::Stat;
use crate::{EntryKind, Error, Hash, NodeId, Result, Store};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::unwritten::denied;
use super::{safe_mode, Ctx, CHANGED_LOCALLY, REUSE_MAP_CAP};
use crate::fs::{
    copy_range, cstring, fchmod, fstat, futimens, lstat_at, mkdir_at, open_at, preallocate,
    rename_at, rename_noreplace, symlink_at, unlink_at, utimens_at, CWD,
};
use crate::release::{release, Release, RELEASE_MIN};
use crate::restore;
use crate::scan::tmp_name;
use rustix::fs::{Mode, OFlags};

/// Files at least this big get their blocks allocated (`fallocate`) before they are written: a
/// full disk shows before any work, and the rename over the old file does not have to flush the
/// new one first (ext4 `auto_da_alloc`).
pub const PREALLOCATE_MIN: u64 = 1 << 20;
/// Bytes of a run copied from an old file per `copy_file_range` step (progress is reported
/// between steps).
const COPY_RUN_STEP: u64 = 64 << 20;

/// Moves the staged file at `path` into the folder `dfd` under a new temporary name, if it is a
/// plain file of `want` bytes (`size`, what the stage recorded, must agree): the temporary file,
/// open. `None` (the file is then written the usual way) if anything is off, for example a stage
/// on another file system than the share.
fn adopt_staged(path: &Path, size: u64, want: u64, dfd: BorrowedFd<'_>) -> Option<(CString, File)> {
    if size != want {
        return None;
    }
    let from = CString::new(path.as_os_str().as_bytes()).ok()?;
    let fd = open_at(CWD, &from, OFlags::RDWR | OFlags::NOFOLLOW, Mode::empty()).ok()?;
    let f = File::from(fd);
    let st = fstat(f.as_fd()).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 != want || st.st_nlink != 1 {
        return None;
    }
    loop {
        let name = CString::new(tmp_name()).expect("no NUL");
        match rename_noreplace(&from, dfd, &name) {
            Ok(()) => return Some((name, f)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(_) => return None,
        }
    }
}

/// Creates a new temporary file in `dir` (exclusive, not following links), mode 0600.
fn create_tmp(dir: BorrowedFd<'_>) -> io::Result<(CString, File)> {
    loop {
        let name = CString::new(tmp_name()).expect("no NUL");
        match open_at(
            dir,
            &name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Store {
    /// Writes `y` at `name`, where nothing is (`replaces` is `None`) or where the checked old
    /// version, inode `replaces`, is replaced by a rename (only if that inode is still there, and
    /// for a file, unchanged); `old` is the old file when its bytes may be reused.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put_entry(
        &self,
        cx: &mut Ctx<'_>,
        dir: &OwnedFd,
        rel: &Path,
        name: &CStr,
        y: &DirEntry,
        old: Option<(File, Stat, NodeId)>,
        replaces: Option<u64>,
        depth: usize,
    ) -> Result<()> {
        let dfd = dir.as_fd();
        if denied(rel) {
            return Err(cx.io(rel, io::Error::from_raw_os_error(libc::EACCES)));
        }
        // Whether the path still holds what was checked (nothing, or the old version's inode).
        let unchanged = |cx: &Ctx<'_>| -> Result<bool> {
            let there = lstat_at(dfd, name).map_err(|e| cx.io(rel, e))?;
            Ok(there.map(|t| t.st_ino) == replaces)
        };
        match (&y.kind, &y.target) {
            (EntryKind::Dir, Target::Node(_)) => {
                match mkdir_at(dfd, name) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        cx.keep(rel, CHANGED_LOCALLY);
                        return Ok(());
                    }
                    Err(e) => return Err(cx.io(rel, e)),
                }
                cx.report.dirs_created += 1;
                self.enter_dir(cx, dir, rel, name, None, Some(y), depth)
            }
            (EntryKind::Symlink, Target::Link(t)) => {
                let target = cstring(t)?;
                let tmp = loop {
                    let n = CString::new(tmp_name()).expect("no NUL");
                    match symlink_at(&target, dfd, &n) {
                        Ok(()) => break n,
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                        Err(e) => return Err(cx.io(rel, e)),
                    }
                };
                let r = utimens_at(dfd, &tmp, y.mtime_ns).map_err(|e| cx.io(rel, e));
                let r = r.and_then(|_| unchanged(cx)).and_then(|ok| {
                    if ok {
                        rename_at(dfd, &tmp, name).map_err(|e| cx.io(rel, e))?;
                    }
                    Ok(ok)
                });
                match r {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = unlink_at(dfd, &tmp, false);
                        cx.keep(rel, CHANGED_LOCALLY);
                        return Ok(());
                    }
                    Err(e) => {
                        let _ = unlink_at(dfd, &tmp, false);
                        return Err(e);
                    }
                }
                checkout_step();
                cx.report.symlinks_written += 1;
                Ok(())
            }
            (EntryKind::File, Target::Node(id)) => {
                let Node::File(f) = self.read_node(*id)? else {
                    return Err(Error::corrupt(format!("node {id} is not a file")));
                };
                if f.size != y.size {
                    return Err(Error::corrupt(format!(
                        "file node {id} does not match its folder entry"
                    )));
                }
                let staged = cx
                    .opts
                    .staged
                    .as_ref()
                    .and_then(|s| s.take(*id))
                    .and_then(|(p, size)| adopt_staged(&p, size, f.size, dfd));
                let from_stage = staged.is_some();
                let (tmp_name, tmp) = match staged {
                    Some(t) => t,
                    None => {
                        let (tmp_name, tmp) = create_tmp(dfd).map_err(|e| cx.io(rel, e))?;
                        if f.size >= PREALLOCATE_MIN {
                            if let Err(e) = preallocate(&tmp, f.size) {
                                let _ = unlink_at(dfd, &tmp_name, false);
                                return Err(cx.io(rel, e));
                            }
                        }
                        (tmp_name, tmp)
                    }
                };
                let r = if from_stage {
                    cx.progress.advance(f.size);
                    Ok(0)
                } else {
                    self.write_tmp(
                        cx,
                        rel,
                        &tmp,
                        &f,
                        old.as_ref()
                            .filter(|_| !cx.no_reuse)
                            .map(|(f, st, n)| (f, st, *n)),
                    )
                };
                let r = r.and_then(|reused| {
                    fchmod(tmp.as_fd(), safe_mode(y.mode)).map_err(|e| cx.io(rel, e))?;
                    futimens(tmp.as_fd(), y.mtime_ns).map_err(|e| cx.io(rel, e))?;
                    if cx.opts.fsync {
                        tmp.sync_all().map_err(|e| cx.io(rel, e))?;
                    }
                    // The old file must still be the checked version right before it is replaced.
                    if let Some((of, ost, _)) = &old {
                        let now = fstat(of.as_fd()).map_err(|e| cx.io(rel, e))?;
                        if Stat::of_raw(&now) != *ost {
                            return Ok(None);
                        }
                    }
                    if !unchanged(cx)? {
                        return Ok(None);
                    }
                    rename_at(dfd, &tmp_name, name).map_err(|e| cx.io(rel, e))?;
                    Ok(Some(reused))
                });
                match r {
                    Ok(Some(reused)) => {
                        checkout_step();
                        if let Some((of, ost, _)) = old {
                            if ost.size >= RELEASE_MIN {
                                release(cx.release_tx().as_ref(), Release::Close(of));
                            }
                        }
                        let now = fstat(tmp.as_fd()).map_err(|e| cx.io(rel, e))?;
                        cx.record(rel, Stat::of_raw(&now), *id)?;
                        cx.report.files_written += 1;
                        cx.report.bytes_written += f.size;
                        cx.report.bytes_reused += reused;
                        cx.report.files_staged += u64::from(from_stage);
                        Ok(())
                    }
                    Ok(None) => {
                        let _ = unlink_at(dfd, &tmp_name, false);
                        cx.keep(rel, CHANGED_LOCALLY);
                        Ok(())
                    }
                    Err(e) => {
                        let _ = unlink_at(dfd, &tmp_name, false);
                        Err(e)
                    }
                }
            }
            _ => Err(Error::corrupt(format!(
                "entry {} has a bad target",
                rel.display()
            ))),
        }
    }

    /// Fills the temporary file `tmp` with the bytes of `f`: ranges of unchanged chunks copied from
    /// the old file (when given), the rest from the store, verified. Returns the bytes copied.
    fn write_tmp(
        &self,
        cx: &mut Ctx<'_>,
        rel: &Path,
        tmp: &File,
        f: &FileNode,
        old: Option<(&File, &Stat, NodeId)>,
    ) -> Result<u64> {
        // The old file's chunks (id, offset, length), and chunk id -> first index among them;
        // capped at REUSE_MAP_CAP chunks.
        let mut list: Vec<(Hash, u64, u64)> = Vec::new();
        let mut map: HashMap<Hash, u32> = HashMap::new();
        let mut old_size = 0;
        if let Some((_, ost, oid)) = old {
            old_size = ost.size;
            let Node::File(of) = self.read_node(oid)? else {
                return Err(Error::corrupt(format!("node {oid} is not a file")));
            };
            let mut off = 0u64;
            self.file_chunks(&of.content, &mut |refs| {
                for r in refs {
                    if list.len() >= REUSE_MAP_CAP {
                        break;
                    }
                    map.entry(r.id).or_insert(list.len() as u32);
                    list.push((r.id, off, r.len));
                    off = off.saturating_add(r.len);
                }
                Ok(())
            })?;
        }
        let progress = cx.progress;
        let mut reused = 0u64;
        let mut off = 0u64;
        // The pending run of copies: (next old index, old offset, new offset, length). A run goes
        // on while the old file's next chunk is the new file's next chunk, so repeated chunks
        // (zero runs, duplicated blocks) do not break it.
        let mut run: Option<(usize, u64, u64, u64)> = None;
        let mut window: Vec<(u64, ChunkRef)> = Vec::with_capacity(restore::WINDOW);
        let flush_run =
            |run: &mut Option<(usize, u64, u64, u64)>, reused: &mut u64| -> Result<()> {
                if let Some((_, oi, oo, len)) = run.take() {
                    let (src, _, _) = old.expect("runs only with an old file");
                    let mut done = 0;
                    while done < len {
                        let n = (len - done).min(COPY_RUN_STEP);
                        copy_range(src, tmp, oi + done, oo + done, n).map_err(|e| cx.io(rel, e))?;
                        done += n;
                        progress.advance(n);
                    }
                    *reused += len;
                }
                Ok(())
            };
        // Chunks from the store go in windows: a window is fetched and verified (on the rayon
        // pool) while the previous one, `ready`, is written, so both cores work.
        let write_ready = |ready: &mut Vec<(u64, Vec<u8>)>| -> io::Result<u64> {
            let mut n = 0;
            for (o, p) in ready.drain(..) {
                tmp.write_all_at(&p, o)?;
                n += p.len() as u64;
            }
            Ok(n)
        };
        let flush_window =
            |window: &mut Vec<(u64, ChunkRef)>, ready: &mut Vec<(u64, Vec<u8>)>| -> Result<()> {
                let refs: Vec<ChunkRef> = window.iter().map(|w| w.1).collect();
                let (written, fetched) =
                    rayon::join(|| write_ready(ready), || self.fetch_window(&refs));
                progress.advance(written.map_err(|e| cx.io(rel, e))?);
                for ((o, _), p) in window.iter().zip(fetched) {
                    ready.push((*o, p?));
                }
                window.clear();
                Ok(())
            };
        let mut ready: Vec<(u64, Vec<u8>)> = Vec::with_capacity(restore::WINDOW);
        let usable = |i: usize, r: &ChunkRef| -> bool {
            list.get(i)
                .map(|&(id, o, l)| id == r.id && l == r.len && o.saturating_add(l) <= old_size)
                .unwrap_or(false)
        };
        self.file_chunks(&f.content, &mut |refs| {
            for r in refs {
                // Never past the file's size, whatever its chunk lists claim.
                if off.saturating_add(r.len) > f.size {
                    return Err(Error::corrupt(format!(
                        "{}: its chunks cover more than the file's {} bytes",
                        rel.display(),
                        f.size
                    )));
                }
                match &mut run {
                    Some((next, _, _, len)) if usable(*next, r) => {
                        *next += 1;
                        *len += r.len;
                    }
                    _ => match map
                        .get(&r.id)
                        .map(|&i| i as usize)
                        .filter(|&i| usable(i, r))
                    {
                        Some(i) => {
                            flush_run(&mut run, &mut reused)?;
                            run = Some((i + 1, list[i].1, off, r.len));
                        }
                        None => {
                            flush_run(&mut run, &mut reused)?;
                            window.push((off, *r));
                            if window.len() >= restore::WINDOW {
                                flush_window(&mut window, &mut ready)?;
                            }
                        }
                    },
                }
                off = off
                    .checked_add(r.len)
                    .ok_or_else(|| Error::corrupt("file size overflows"))?;
            }
            Ok(())
        })?;
        flush_run(&mut run, &mut reused)?;
        if !window.is_empty() {
            flush_window(&mut window, &mut ready)?;
        }
        progress.advance(write_ready(&mut ready).map_err(|e| cx.io(rel, e))?);
        if off != f.size {
            return Err(Error::corrupt("file node size does not match its chunks"));
        }
        tmp.set_len(f.size).map_err(|e| cx.io(rel, e))?;
        Ok(reused)
    }
}
