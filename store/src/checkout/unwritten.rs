//! Paths a checkout could not write (see "Paths that cannot be written" in the parent module):
//! which errors concern one path only, the `meta` records `unwritten/<path>`, and the retry pass
//! that brings such paths to the checkout's `to` version. Also the test hook that makes a path
//! unwritable. It does not decide what `add` does with such a path (`add` reads the records).

use crate::db::cf;
use crate::node::{check_name, Target};
use crate::scan::{Seen, Stat};
use crate::{
    CheckoutOptions, CheckoutReport, EntryKind, Error, Hash, NodeId, Result, Skipped, Store,
};

use std::ffi::{CStr, OsStr};

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::{disk_kind, Ctx, DiskKind, KEPT_MAX};
use crate::fs::{cstring, fstat, futimens, lstat_at, open_dir_beneath, open_file_at, unlink_at};
use crate::NoProgress;
use std::path::{Path, PathBuf};

/// Prefix of the records of paths a checkout could not write, in `meta` (`unwritten/<path>`).
pub(super) const UNWRITTEN_PREFIX: &[u8] = b"unwritten/";

/// An error that concerns one path, which cannot be written here (a read-only folder, a name the
/// file system refuses), not the checkout as a whole: its reason.
pub(super) fn path_error(e: &Error) -> Option<String> {
    match e {
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(
                libc::EACCES
                | libc::EPERM
                | libc::ENAMETOOLONG
                | libc::EROFS
                | libc::EILSEQ
                | libc::ETXTBSY
                | libc::EMLINK,
            ) => Some(one_line(&source.to_string())),
            _ => None,
        },
        // Data of this path that turned out damaged once the walk had begun (a chunk whose bytes
        // do not hash to its id, a node of the wrong kind): the tree was checked before the
        // journal, so this is the store's damage, and it must not stop the other paths (the
        // journal would replay it forever).
        Error::Corrupt { what } => Some(format!("its data is damaged: {}", one_line(what))),
        _ => None,
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Test hook: writing a path for which it returns true fails with `EACCES`, as in a read-only
/// folder (tests run as root, which no permission stops).
pub type DenyHook = fn(&Path) -> bool;
static DENY_HOOK: std::sync::RwLock<Option<DenyHook>> = std::sync::RwLock::new(None);

/// Sets (or clears) the [`DenyHook`].
#[doc(hidden)]
pub fn debug_set_deny_hook(hook: Option<DenyHook>) {
    *DENY_HOOK.write().unwrap_or_else(|e| e.into_inner()) = hook;
}

/// The hook, or `LEFT_FAULT_DENY=NAME` (paths whose last component is NAME), for tests of whole
/// processes.
pub(super) fn denied(rel: &Path) -> bool {
    static ENV: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();
    let env = ENV.get_or_init(|| std::env::var_os("LEFT_FAULT_DENY"));
    if env
        .as_ref()
        .is_some_and(|n| rel.file_name() == Some(n.as_os_str()))
    {
        return true;
    }
    DENY_HOOK
        .read()
        .map(|h| h.is_some_and(|f| f(rel)))
        .unwrap_or(false)
}

impl Store {
    /// The records of paths a checkout could not write: (path, what it saw there).
    pub(crate) fn unwritten(&self) -> Result<Vec<(PathBuf, Seen)>> {
        let mut out = Vec::new();
        for kv in self.db.iter_prefix(cf::META, UNWRITTEN_PREFIX) {
            let (k, v) = kv?;
            let Ok(seen) = postcard::from_bytes::<Seen>(&v) else {
                continue;
            };
            let p = PathBuf::from(OsStr::from_bytes(&k[UNWRITTEN_PREFIX.len()..]));
            out.push((p, seen));
        }
        Ok(out)
    }

    /// Paths the last checkouts could not write and that still wait to be (see
    /// [`CheckoutReport::unwritten`]).
    pub fn unwritten_paths(&self) -> Result<Vec<PathBuf>> {
        Ok(self.unwritten()?.into_iter().map(|(p, _)| p).collect())
    }

    /// Tries again to write the paths earlier checkouts could not (a checkout from the head to
    /// itself, which touches nothing else): for a periodic retry while no new snapshot comes.
    /// `None` when there is nothing to try.
    pub fn retry_unwritten(
        &self,
        share_root: &Path,
        opts: &CheckoutOptions,
    ) -> Result<Option<CheckoutReport>> {
        if self.is_read_only() || self.unwritten()?.is_empty() {
            return Ok(None);
        }
        let Some(head) = self.head()? else {
            return Ok(None);
        };
        self.checkout(share_root, Some(head), head, opts, &NoProgress)
            .map(Some)
    }
}

impl Store {
    /// Tries again the paths earlier checkouts could not write that this one did not visit: each
    /// still showing what that checkout saw is brought to `to`'s version (the old bytes are never
    /// reused: they are not a version the store knows); one showing anything else changed since
    /// (a local change the next add records) and loses its record.
    pub(super) fn retry_unwritten_paths(
        &self,
        cx: &mut Ctx<'_>,
        root: &OwnedFd,
        to: NodeId,
    ) -> Result<()> {
        let mut left: Vec<(PathBuf, Seen)> = cx.unwritten.drain().collect();
        left.sort_by(|a, b| a.0.cmp(&b.0));
        for (rel, seen) in left {
            let key = [UNWRITTEN_PREFIX, rel.as_os_str().as_bytes()].concat();
            // The parent, every component a checked name, opened beneath the root without
            // following a link; gone, not a folder or a link on the way: stale.
            let parent = rel.parent().unwrap_or(Path::new(""));
            let names: Vec<&[u8]> = parent
                .components()
                .map(|c| c.as_os_str().as_bytes())
                .collect();
            let ok = names.iter().all(|n| check_name(n).is_ok());
            let name = rel.file_name().map(|n| n.as_bytes().to_vec());
            let pfd = match (ok, &name) {
                (true, Some(_)) => open_dir_beneath(root.as_fd(), &names).ok(),
                _ => None,
            };
            let (Some(name), Some(pfd)) = (name, pfd) else {
                cx.scan.delete(&self.db, cf::META, &key);
                continue;
            };
            let c = cstring(&name)?;
            let disk = lstat_at(pfd.as_fd(), &c).map_err(|e| cx.io(&rel, e))?;
            if Seen::of(disk.as_ref()) != seen || cx.reserved(&rel, &name) {
                cx.scan.delete(&self.db, cf::META, &key);
                continue;
            }
            let y = self.entry_at(to, &rel)?;
            let depth = rel.components().count();
            let r = match (disk.as_ref().map(disk_kind), y.as_ref()) {
                (None, Some(y)) => self.put_entry(cx, &pfd, &rel, &c, y, None, None, depth),
                (None, None) => Ok(()),
                (Some(DiskKind::File | DiskKind::Symlink), Some(y)) if y.kind != EntryKind::Dir => {
                    let ino = disk.as_ref().map(|d| d.st_ino);
                    // A file is opened so that an edit made while the new one is written is
                    // seen right before the rename (its bytes are not reused).
                    let old = match disk.as_ref().map(disk_kind) {
                        Some(DiskKind::File) => match open_file_at(pfd.as_fd(), &c) {
                            Ok(f) => {
                                let st = fstat(f.as_fd()).map_err(|e| cx.io(&rel, e))?;
                                let id = match &y.target {
                                    Target::Node(n) => *n,
                                    _ => NodeId(Hash([0; 32])),
                                };
                                Some((f, Stat::of_raw(&st), id))
                            }
                            Err(_) => None,
                        },
                        _ => None,
                    };
                    cx.no_reuse = true;
                    let r = self.put_entry(cx, &pfd, &rel, &c, y, old, ino, depth);
                    cx.no_reuse = false;
                    r
                }
                (Some(DiskKind::File | DiskKind::Symlink), None) if denied(&rel) => {
                    Err(cx.io(&rel, io::Error::from_raw_os_error(libc::EACCES)))
                }
                (Some(DiskKind::File | DiskKind::Symlink), None) => {
                    unlink_at(pfd.as_fd(), &c, false).map_err(|e| cx.io(&rel, e))
                }
                (Some(DiskKind::Dir), Some(y)) if y.kind == EntryKind::Dir => {
                    self.enter_dir(cx, &pfd, &rel, &c, None, Some(y), depth)
                }
                // A kind change across a folder: left for a person (the record stays).
                _ => continue,
            };
            match r {
                Ok(()) => {
                    cx.scan.delete(&self.db, cf::META, &key);
                    // Writing in the folder moved its mtime: back to the snapshot's.
                    if !parent.as_os_str().is_empty() {
                        if let Some(pe) = self.entry_at(to, parent)? {
                            if pe.kind == EntryKind::Dir {
                                // Best effort: a folder we may write in but not re-time.
                                let _ = futimens(pfd.as_fd(), pe.mtime_ns);
                            }
                        }
                    }
                }
                Err(e) => match path_error(&e) {
                    Some(why) => cx.fail_path(pfd.as_fd(), &c, &rel, &why)?,
                    None => return Err(e),
                },
            }
        }
        Ok(())
    }
}

impl Ctx<'_> {
    /// `rel` (named `name` in the folder `dfd`) could not be written: recorded (with what is on
    /// disk there now) and reported, and the checkout goes on.
    pub(super) fn fail_path(
        &mut self,
        dfd: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
        why: &str,
    ) -> Result<()> {
        let disk = lstat_at(dfd, name).ok().flatten();
        let seen = Seen::of(disk.as_ref());
        let key = [UNWRITTEN_PREFIX, rel.as_os_str().as_bytes()].concat();
        self.unwritten.remove(rel);
        if disk.as_ref().is_some_and(|d| disk_kind(d) == DiskKind::Dir) {
            // A folder that is there (its mode or mtime could not be set, or it could not be
            // removed): its entries were dealt with one by one and carry their own records; a
            // record here would hide every later edit inside it from `add`.
            self.scan.delete(&self.store.db, cf::META, &key);
        } else {
            let v = postcard::to_stdvec(&seen).map_err(|e| Error::Invalid(e.to_string()))?;
            self.scan.put(&self.store.db, cf::META, &key, &v);
        }
        if self.report.unwritten.len() < KEPT_MAX {
            self.report.unwritten.push(Skipped {
                path: rel.to_path_buf(),
                reason: format!(
                    "cannot be written here ({why}); left as it is, kept at the synced version in \
                     snapshots, and tried again at the next checkout"
                ),
            });
        }
        self.flush_scan(false)
    }

    /// `rel` was dealt with: its record (if any) goes, unless the disk still shows what the
    /// failed checkout saw (then the retry pass deals with it).
    pub(super) fn clear_unwritten(
        &mut self,
        dfd: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
    ) -> Result<()> {
        let Some(seen) = self.unwritten.get(rel).copied() else {
            return Ok(());
        };
        if Seen::of(lstat_at(dfd, name).ok().flatten().as_ref()) == seen {
            return Ok(());
        }
        if self.unwritten.remove(rel).is_some() {
            let key = [UNWRITTEN_PREFIX, rel.as_os_str().as_bytes()].concat();
            self.scan.delete(&self.store.db, cf::META, &key);
            self.flush_scan(false)?;
        }
        Ok(())
    }
}
