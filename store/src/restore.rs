//! `restore`: write a snapshot (or one path of it) into a folder.
//!
//! Exact bytes, permission bits, mtimes (ns), symlinks verbatim, empty folders. Every chunk is
//! decoded (bounded) and its hash checked before its bytes are written; files are written to a
//! temporary file in the same folder and renamed into place, so a corrupt or missing chunk leaves no
//! partial file behind (the restore stops with the error). Chunks of a file are fetched and decoded in
//! parallel windows on the rayon pool and written in order. Folder mtimes are set after their content.
//!
//! Not done here: fsync of every file (a checkout journal comes with sync), copying unchanged regions
//! from an older version, or deleting files in the target that the snapshot does not have.

use crate::codec;
use crate::node::{self, Content, DirEntry, Node, Target};
use crate::{
    ChunkId, EntryKind, Error, NodeId, Progress, RestoreOptions, RestoreReport, Result, Store,
};
use rayon::prelude::*;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Chunks fetched and decoded in parallel at a time (at most 64 x chunk_max bytes in memory).
pub(crate) const WINDOW: usize = 64;

fn set_times(path: &Path, mtime_ns: i64, follow: bool) -> Result<()> {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    let ts = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as _,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    let flags = if follow {
        AtFlags::empty()
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    utimensat(CWD, path, &times, flags).map_err(|e| Error::io(path, e.into()))
}

/// Removes whatever is at `p` (file, link or folder tree) if it is not a folder.
fn clear_non_dir(p: &Path) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(p) {
        if !m.is_dir() {
            fs::remove_file(p).map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(())
}

fn clear_any(p: &Path) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(p) {
        if m.is_dir() {
            fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
        } else {
            fs::remove_file(p).map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(())
}

impl Store {
    /// Reads, decodes (bounded) and verifies the chunks of `win` in parallel on the rayon pool,
    /// checking each one's length against its reference. Results in `win`'s order.
    pub(crate) fn fetch_window(&self, win: &[node::ChunkRef]) -> Vec<Result<Vec<u8>>> {
        let max = self.cfg.chunk_max as usize;
        win.par_iter()
            .map(|r| {
                let id = ChunkId(r.id);
                let enc = self
                    .get_chunk(id)?
                    .ok_or_else(|| Error::not_found(format!("chunk {id} is missing")))?;
                let p = codec::decode_verified(&id, &enc, max)?;
                if p.len() as u64 != r.len {
                    return Err(Error::corrupt(format!("chunk {id} has the wrong length")));
                }
                Ok(p)
            })
            .collect()
    }

    /// Restores `snapshot` (or only `path` inside it) into `target`. A folder's content goes into
    /// `target`; a single file or symlink is written as `target/<name>`. Refuses a non-empty target
    /// unless `opts.force` (which overwrites what the snapshot has and leaves other files alone).
    pub fn restore(
        &self,
        snapshot: NodeId,
        path: Option<&Path>,
        target: &Path,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let root = self.snapshot_root(snapshot)?;
        let entry = match path {
            Some(p) => self.lookup(root, p)?,
            None => None,
        };
        if let Ok(mut rd) = fs::read_dir(target) {
            if rd.next().is_some() && !opts.force {
                return Err(Error::TargetNotEmpty {
                    path: target.to_path_buf(),
                });
            }
        } else if target.exists() && !opts.force {
            return Err(Error::TargetNotEmpty {
                path: target.to_path_buf(),
            });
        }
        if opts.force {
            clear_non_dir(target)?;
        }
        fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
        let mut report = RestoreReport::default();
        progress.start("restore", None);
        let r = match entry {
            None => self
                .restore_dir(root, target, &mut report, progress, 0)
                .map(|_| report.dirs += 1),
            Some(e) => match (&e.kind, &e.target) {
                (EntryKind::Dir, Target::Node(id)) => {
                    let r = self.restore_dir(*id, target, &mut report, progress, 0);
                    r.and_then(|_| {
                        fs::set_permissions(target, fs::Permissions::from_mode(e.mode))
                            .map_err(|x| Error::io(target, x))?;
                        report.dirs += 1;
                        set_times(target, e.mtime_ns, true)
                    })
                }
                _ => self.restore_entry(
                    &e,
                    &target.join(OsStr::from_bytes(&e.name)),
                    &mut report,
                    progress,
                    0,
                ),
            },
        };
        progress.finish();
        r.map(|_| report)
    }

    fn restore_dir(
        &self,
        id: NodeId,
        dir: &Path,
        report: &mut RestoreReport,
        progress: &dyn Progress,
        depth: usize,
    ) -> Result<()> {
        if depth > crate::store::MAX_DEPTH {
            return Err(Error::corrupt("folder tree is too deep"));
        }
        for e in self.dir_entries(id)? {
            let p = dir.join(OsStr::from_bytes(&e.name));
            self.restore_entry(&e, &p, report, progress, depth)?;
        }
        Ok(())
    }

    fn restore_entry(
        &self,
        e: &DirEntry,
        p: &Path,
        report: &mut RestoreReport,
        progress: &dyn Progress,
        depth: usize,
    ) -> Result<()> {
        match (&e.kind, &e.target) {
            (EntryKind::Dir, Target::Node(id)) => {
                clear_non_dir(p)?;
                match fs::create_dir(p) {
                    Ok(()) => {}
                    Err(x) if x.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(x) => return Err(Error::io(p, x)),
                }
                // Writable while filling it.
                fs::set_permissions(p, fs::Permissions::from_mode(0o700))
                    .map_err(|x| Error::io(p, x))?;
                self.restore_dir(*id, p, report, progress, depth + 1)?;
                fs::set_permissions(p, fs::Permissions::from_mode(e.mode))
                    .map_err(|x| Error::io(p, x))?;
                set_times(p, e.mtime_ns, true)?;
                report.dirs += 1;
            }
            (EntryKind::Symlink, Target::Link(t)) => {
                clear_any(p)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(t), p).map_err(|x| Error::io(p, x))?;
                set_times(p, e.mtime_ns, false)?;
                report.symlinks += 1;
            }
            (EntryKind::File, Target::Node(id)) => {
                let Node::File(f) = self.read_node(*id)? else {
                    return Err(Error::corrupt(format!("node {id} is not a file")));
                };
                let dir = p.parent().unwrap_or(Path::new("."));
                let tmp = dir.join(crate::scan::tmp_name());
                let r = self.write_file(&f.content, &tmp, progress).and_then(|n| {
                    if n != f.size {
                        return Err(Error::corrupt(format!(
                            "file node {id} size does not match its chunks"
                        )));
                    }
                    fs::set_permissions(&tmp, fs::Permissions::from_mode(e.mode))
                        .map_err(|x| Error::io(&tmp, x))?;
                    set_times(&tmp, e.mtime_ns, true)?;
                    if fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false) {
                        fs::remove_dir_all(p).map_err(|x| Error::io(p, x))?;
                    }
                    fs::rename(&tmp, p).map_err(|x| Error::io(p, x))?;
                    Ok(n)
                });
                if r.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                report.bytes_written += r?;
                report.files += 1;
            }
            _ => {
                return Err(Error::corrupt(format!(
                    "entry {:?} has a bad target",
                    String::from_utf8_lossy(&e.name)
                )))
            }
        }
        Ok(())
    }

    /// Writes the file's bytes to `tmp`, verifying every chunk before writing it.
    fn write_file(&self, content: &Content, tmp: &Path, progress: &dyn Progress) -> Result<u64> {
        let mut f = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut written = 0u64;
        self.file_chunks(content, &mut |refs| {
            for win in refs.chunks(WINDOW) {
                let plain = self.fetch_window(win);
                for p in plain {
                    let p = p?;
                    f.write_all(&p).map_err(|e| Error::io(tmp, e))?;
                    written += p.len() as u64;
                    progress.advance(p.len() as u64);
                }
            }
            Ok(())
        })?;
        drop(f);
        Ok(written)
    }
}
