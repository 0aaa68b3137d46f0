//! `checkout`: move the share folder from one snapshot to another, touching only what differs.
//!
//! ## What it does
//!
//! The two trees (`from`, the snapshot the folder holds now, or none; `to`) are walked together,
//! folder by folder, pairing entries by name. Equal entries (same kind, metadata and node id) are
//! skipped without descending, so the work is proportional to the change, and memory to the tree
//! depth times the folder width. For each path that differs:
//!
//! - a **file** is written to a temporary file beside it (`.left-tmp-<random>`, created with
//!   `O_EXCL`; from 1 MiB on its blocks are allocated first, see [`PREALLOCATE_MIN`]), gets its
//!   mode and mtime, and is renamed over the target. When the old file is
//!   provably the version `from` recorded (next point), the byte ranges whose chunks did not change
//!   are copied from it with `copy_file_range` (runs of consecutive chunks in one call; the
//!   chunk-id → old-offset map is capped at [`REUSE_MAP_CAP`] chunks, beyond which chunks come from
//!   the store); every other chunk is read from the store and hash-verified before its bytes are
//!   written, in windows: one window is fetched and verified on the rayon pool while the previous
//!   one is written. A file whose bytes did not change (only mode or mtime) is re-permissioned in
//!   place. A replaced big file is released on a release thread, which hands its last
//!   descriptor to a short-lived grandchild process whose exit frees it: freeing 1 GiB on ext4
//!   takes ~0.2 s, mostly waiting, and neither the checkout nor the exit of a one-shot command
//!   waits for it ([`Store::wait_released`] waits for the hand-over only).
//! - a **symlink** is created verbatim (never followed) under a temporary name and renamed in.
//! - a **folder** is created, filled, then given its mode and mtime (after its content).
//! - a **removed** path is deleted: files and links unlinked; folders lose only what the old tree
//!   had, and a folder that still holds other files stays (listed in `kept`).
//! - a file, link or folder replacing another kind is handled by removing the old one first.
//!
//! ## Local changes are never lost
//!
//! Before a path is replaced or removed, what is on disk must still be the `from` version: for a
//! file, its stat (size, mtime, ctime, inode, mode) equals the scan-cache record for that path and
//! that record's file node is `from`'s node, and when the record is racy (the file was written
//! within its timestamp tick of the scan's read, so a later write may not show in the stat) its
//! bytes hash to that node too; for a link, the same target; for a folder, a real folder. Otherwise the path is left alone and listed in [`CheckoutReport::kept`]. A path `from`
//! does not have but the disk does (untracked) is kept too; an untracked folder is merged into.
//! The old file is checked again just before the rename (a change meanwhile keeps it as well).
//! A path `from` had but the disk no longer has is simply written (an edit beats a deletion).
//!
//! ## Paths that cannot be written
//!
//! An error that concerns one path (`EACCES`, `EPERM`, `EROFS`, `ENAMETOOLONG`, `EILSEQ`,
//! `ETXTBSY`, `EMLINK`: a read-only folder, a name the file system refuses) leaves that path as it
//! is and the checkout goes on: it is listed in [`CheckoutReport::unwritten`] and recorded in
//! `meta` as `unwritten/<path>` with what was on disk there (`Seen`). While the disk still shows
//! exactly that, `add` keeps the head's entry for the path (the version this checkout meant to
//! write), so the old bytes never go out as a change; each later checkout tries the path again
//! (from the store, never reusing the old bytes) and drops the record once written, or once the
//! disk shows something else (a person changed it: an ordinary local change). Other errors (a
//! full disk, an I/O error) still stop the checkout, which the journal finishes later.
//!
//! ## Never outside the share
//!
//! Every operation is relative to a folder descriptor opened from the share root one component at
//! a time with `O_NOFOLLOW | O_DIRECTORY` (`openat`, `mkdirat`, `renameat`, `unlinkat`,
//! `symlinkat`, `fstatat`/`utimensat` with `AT_SYMLINK_NOFOLLOW`), and every name is one checked
//! component (no `/`, `.`, `..`, NUL, empty). No path is ever resolved through a symlink, so a
//! symlink on disk where the tree has a folder (put there by anyone) fails that path with a clear
//! reason in `kept` and nothing is written through it. Names reserved by left (`.left`,
//! `.left-tmp-*`, the store folder) are never written.
//!
//! ## Durability and crashes
//!
//! Before the folder is touched, a journal record `{from, to}` is written to the store's `meta`
//! column family in a synced batch. Scan-cache records of written files go to the store as the
//! checkout proceeds (unsynced WAL: a killed process loses none of them); at the end one synced
//! batch moves `head` to `to` and deletes the journal (that sync also makes every earlier record
//! durable). With [`CheckoutOptions::fsync`] each file is fsynced before its rename and each touched
//! folder after its content. [`Store::resume_checkout`] re-runs a journaled checkout: a path
//! already at its `to` version (its stat matches the record a finished write left, or, in this
//! recovery case only, its content hashes to the `to` file node) is skipped, and temporary files a
//! crash left in the folders it visits are removed. Another checkout is refused while one is
//! journaled (unless it is the same one, which then resumes).
//!
//! Without fsync, a checkout that *finished* may still have its files only in the page cache for
//! up to ~35 s (the kernel's writeback delay). Its final batch therefore also records a *settle*
//! record `{from, to, start, end, boot id}` (dropped after [`SETTLE_WINDOW_NS`]). When
//! `resume_checkout` (or the next `checkout`) runs in a later boot, the paths those checkouts
//! changed are checked again: a path at its `to` version is fine (for a file those checkouts
//! wrote, judged by its bytes, not its stat: preallocated blocks keep the size); a file or link whose ctime lies
//! within one of those checkouts' runs (written by it, its bytes lost) or whose bytes are still
//! the `from` version (a rename the power cut took back) is written again; anything else changed
//! after the checkout and is kept. Limit: a path created and removed again by two checkouts within
//! the window is not re-checked.
//!
//! ## Limits
//!
//! Folders nested deeper than [`CHECKOUT_MAX_DEPTH`] are refused before anything is written (one
//! open descriptor and a few stack frames per level). A setuid or setgid bit in a tree is not
//! applied (a peer cannot plant a setuid file); such a file then differs from its snapshot by mode.
//!
//! Before writing, the bytes to write are compared with the free space of the share's file system
//! (`statvfs`): not enough is [`Error::DiskFull`] with nothing touched.

use crate::db::{cf, checkout_step, Batch};
use crate::node::{check_name, ChunkRef, Content, DirEntry, FileNode, Node, Target};
use crate::release::{release, Release, Releaser, RELEASE_MIN};
pub use crate::scan::TMP_PREFIX;
use crate::scan::{Seen, Stat};
use crate::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Most chunks of an old file indexed for reuse (~60 bytes each); a bigger file's later chunks
/// come from the store.
pub const REUSE_MAP_CAP: usize = 1 << 18;
/// Key of the checkout journal in the `meta` column family.
const JOURNAL_KEY: &[u8] = b"checkout";
/// Scan-cache updates written per batch.
const SCAN_BATCH: usize = 512;
/// Deepest folder nesting a checkout writes (one open folder descriptor and a few stack frames
/// per level: a crafted deeper tree is refused rather than exhausting either).
pub const CHECKOUT_MAX_DEPTH: usize = 256;
/// Most paths listed in `kept` (one more entry says how many were left out).
const KEPT_MAX: usize = 10_000;
/// Files at least this big get their blocks allocated (`fallocate`) before they are written: a
/// full disk shows before any work, and the rename over the old file does not have to flush the
/// new one first (ext4 `auto_da_alloc`).
pub const PREALLOCATE_MIN: u64 = 1 << 20;
/// Bytes copied per step when `copy_file_range` is unavailable.
const COPY_STEP: usize = 1 << 20;
/// Bytes of a run copied from an old file per `copy_file_range` step (progress is reported
/// between steps).
const COPY_RUN_STEP: u64 = 64 << 20;
/// Moves the staged file at `path` into the folder `dfd` under a new temporary name, if it is a
/// plain file of `want` bytes (`size`, what the stage recorded, must agree): the temporary file,
/// open. `None` (the file is then written the usual way) if anything is off, for example a stage
/// on another file system than the share.
fn adopt_staged(path: &Path, size: u64, want: u64, dfd: RawFd) -> Option<(CString, File)> {
    if size != want {
        return None;
    }
    let from = CString::new(path.as_os_str().as_bytes()).ok()?;
    let fd = open_at(libc::AT_FDCWD, &from, libc::O_RDWR | libc::O_NOFOLLOW, 0).ok()?;
    let f = File::from(fd);
    let st = fstat(f.as_raw_fd()).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 != want || st.st_nlink != 1 {
        return None;
    }
    loop {
        let name = CString::new(tmp_name()).expect("no NUL");
        // SAFETY: both names are NUL-terminated and live across the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                dfd,
                name.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Some((name, f));
        }
        if last_err().raw_os_error() != Some(libc::EEXIST) {
            return None;
        }
    }
}

/// Prefix of the records of paths a checkout could not write, in `meta` (`unwritten/<path>`).
const UNWRITTEN_PREFIX: &[u8] = b"unwritten/";

/// An error that concerns one path, which cannot be written here (a read-only folder, a name the
/// file system refuses), not the checkout as a whole: its reason.
fn path_error(e: &Error) -> Option<String> {
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
fn denied(rel: &Path) -> bool {
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

/// A unique hidden temporary name: `.left-tmp-<16 hex>`.
pub(crate) fn tmp_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut seed = Vec::with_capacity(32);
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    seed.extend_from_slice(&crate::store::now_ns().to_le_bytes());
    let h = Hash::of(&seed);
    format!("{TMP_PREFIX}{}", &h.to_string()[..16])
}

/// Prefix of the settle records in `meta` (`checkout-settle/<end ns, big-endian><to>`).
const SETTLE_PREFIX: &[u8] = b"checkout-settle/";
/// How long after a checkout its files may still be only in the page cache: the kernel writes
/// dirty data back once it is 30 s old (`vm.dirty_expire_centisecs`), every 5 s; four times that
/// for margin.
pub const SETTLE_WINDOW_NS: i64 = 120 * 1_000_000_000;
/// Most settle records kept (the oldest go first).
const SETTLE_MAX: usize = 64;

/// A finished checkout whose files were not fsynced: after a reboot (a different boot id), its
/// paths are checked again, since a power cut may have lost what only the page cache held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Settle {
    from: Option<NodeId>,
    to: NodeId,
    /// When the checkout started and ended (its own files have ctimes in between).
    start_ns: i64,
    end_ns: i64,
    boot: String,
}

/// How a walk runs.
#[derive(Debug, Clone)]
enum Mode {
    /// A new checkout.
    Normal,
    /// Finishing a journaled checkout after a crash.
    Resume,
    /// Re-checking finished checkouts after a reboot: their runs (start, end) and the keys of
    /// their settle records.
    Settle {
        windows: Vec<(i64, i64)>,
        keys: Vec<Vec<u8>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    from: Option<NodeId>,
    to: NodeId,
}

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
struct TreeCheck {
    bad: Option<Error>,
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

// ------------------------------------------------------------------ system calls

fn cstring(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| Error::corrupt("entry name contains NUL"))
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r)
    }
}

fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: valid descriptor and C string; the returned descriptor is owned by the OwnedFd.
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a folder beneath `dir` without following a symlink.
fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// Opens a regular file beneath `dir` for reading without following a symlink (and without
/// blocking on a FIFO).
fn open_file_at(dir: RawFd, name: &CStr) -> io::Result<File> {
    let fd = open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    )?;
    Ok(File::from(fd))
}

fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<Option<libc::stat>> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and out-pointer.
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        let e = last_err();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(st))
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn readlink_at(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; node::MAX_LINK + 1];
    // SAFETY: valid descriptor, C string and buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dir,
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(last_err());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn unlink_at(dir: RawFd, name: &CStr, folder: bool) -> io::Result<()> {
    let flags = if folder { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid descriptor and C string.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(|_| ())
}

fn rename_at(dir: RawFd, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: valid descriptor and C strings.
    cvt(unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) }).map(|_| ())
}

fn mkdir_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    cvt(unsafe { libc::mkdirat(dir, name.as_ptr(), 0o700) }).map(|_| ())
}

fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings and descriptor.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(|_| ())
}

fn timespecs(mtime_ns: i64) -> [libc::timespec; 2] {
    let ts = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as _,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    [ts, ts]
}

/// Sets the mtime (and atime) of the entry `name` itself (a symlink is not followed).
fn utimens_at(dir: RawFd, name: &CStr, mtime_ns: i64) -> io::Result<()> {
    let t = timespecs(mtime_ns);
    // SAFETY: valid descriptor, C string and two-element array.
    cvt(unsafe { libc::utimensat(dir, name.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(|_| ())
}

fn futimens(fd: RawFd, mtime_ns: i64) -> io::Result<()> {
    let t = timespecs(mtime_ns);
    // SAFETY: valid descriptor and two-element array.
    cvt(unsafe { libc::futimens(fd, t.as_ptr()) }).map(|_| ())
}

fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(|_| ())
}

fn fsync(fd: RawFd) -> io::Result<()> {
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::fsync(fd) }).map(|_| ())
}

/// Creates a new temporary file in `dir` (exclusive, not following links), mode 0600.
fn create_tmp(dir: RawFd) -> io::Result<(CString, File)> {
    loop {
        let name = CString::new(tmp_name()).expect("no NUL");
        match open_at(
            dir,
            &name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        ) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Names in the folder `dir` (a duplicate descriptor is read).
fn list_dir(dir: RawFd) -> io::Result<Vec<Vec<u8>>> {
    // SAFETY: dup of a valid descriptor; fdopendir takes ownership of the duplicate.
    let dup = cvt(unsafe { libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is a valid folder descriptor owned by nobody else.
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        let e = last_err();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // SAFETY: `d` is a valid DIR stream (the same stream may start mid-way: rewind it).
    unsafe { libc::rewinddir(d) };
    let mut out = Vec::new();
    loop {
        // SAFETY: `d` is valid; readdir returns null at the end.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: d_name is a NUL-terminated array inside the entry.
        let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            out.push(name.to_vec());
        }
    }
    // SAFETY: `d` is valid and closed once.
    unsafe { libc::closedir(d) };
    Ok(out)
}

/// Allocates the blocks of a new file before it is written (`fallocate`). A full disk shows now,
/// before any work; and the file then has no delayed allocation left when it is renamed over the
/// old one, so ext4 does not flush it inside the rename (`auto_da_alloc`: 0.3-0.6 s for 1 GiB
/// here). A file system without `fallocate` just skips it.
fn preallocate(f: &File, len: u64) -> io::Result<()> {
    // SAFETY: valid descriptor.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r != 0 {
        let e = last_err();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(()),
            _ => Err(e),
        };
    }
    Ok(())
}

fn free_bytes(fd: RawFd) -> io::Result<u64> {
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    cvt(unsafe { libc::fstatvfs(fd, &mut s) })?;
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// Copies `len` bytes from `src` at `off_in` to `dst` at `off_out` in the kernel
/// (`copy_file_range`), falling back to reads and writes where the file system does not support it.
fn copy_range(src: &File, dst: &File, off_in: u64, off_out: u64, len: u64) -> io::Result<()> {
    let (mut oi, mut oo) = (off_in as libc::loff_t, off_out as libc::loff_t);
    let mut left = len;
    while left > 0 {
        let step = left.min(1 << 30) as usize;
        // SAFETY: valid descriptors and offset pointers.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut oi, dst.as_raw_fd(), &mut oo, step, 0)
        };
        if n < 0 {
            let e = last_err();
            match e.raw_os_error() {
                Some(libc::EXDEV)
                | Some(libc::EINVAL)
                | Some(libc::ENOSYS)
                | Some(libc::EOPNOTSUPP) => {
                    return copy_slow(src, dst, oi as u64, oo as u64, left);
                }
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the old file is shorter than recorded",
            ));
        }
        left -= n as u64;
    }
    Ok(())
}

fn copy_slow(src: &File, dst: &File, mut oi: u64, mut oo: u64, mut left: u64) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_STEP.min(left as usize)];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], oi)?;
        dst.write_all_at(&buf[..n], oo)?;
        oi += n as u64;
        oo += n as u64;
        left -= n as u64;
    }
    Ok(())
}

/// Adds the counts and kept paths of `r` to `into`.
fn absorb(into: &mut CheckoutReport, r: CheckoutReport) {
    into.files_written += r.files_written;
    into.files_removed += r.files_removed;
    into.dirs_created += r.dirs_created;
    into.dirs_removed += r.dirs_removed;
    into.symlinks_written += r.symlinks_written;
    into.bytes_written += r.bytes_written;
    into.bytes_reused += r.bytes_reused;
    into.kept.extend(r.kept);
}

// ------------------------------------------------------------------ the walk

/// What is at a path on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskKind {
    File,
    Dir,
    Symlink,
    Other,
}

fn disk_kind(st: &libc::stat) -> DiskKind {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => DiskKind::File,
        libc::S_IFDIR => DiskKind::Dir,
        libc::S_IFLNK => DiskKind::Symlink,
        _ => DiskKind::Other,
    }
}

/// Pairs the entries of two sorted folders by name.
impl Store {
    /// The entries of folders `a` and `b` (either may be absent) paired by name, only the pairs
    /// that differ: what both checkout passes (plan and write) walk.
    #[allow(clippy::type_complexity)]
    fn changed_entries(
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

fn dir_id(e: &Option<DirEntry>) -> Option<NodeId> {
    match e {
        Some(DirEntry {
            kind: EntryKind::Dir,
            target: Target::Node(id),
            ..
        }) => Some(*id),
        _ => None,
    }
}

fn node_id(e: &DirEntry) -> Result<NodeId> {
    match e.target {
        Target::Node(id) => Ok(id),
        Target::Link(_) => Err(Error::corrupt("a file or folder entry has a link target")),
    }
}

/// Mode bits checkout gives a file or folder: setuid and setgid are never set from a tree.
fn safe_mode(mode: u32) -> u32 {
    mode & 0o1777
}

const CHANGED_LOCALLY: &str = "changed locally since the last scan";
const UNTRACKED: &str =
    "exists on disk but not in the previous snapshot (untracked); not overwritten";

/// State of one checkout run.
struct Ctx<'a> {
    store: &'a Store,
    share: PathBuf,
    opts: &'a CheckoutOptions,
    progress: &'a dyn Progress,
    /// Resuming after a crash: paths may already be at their `to` version, temp files may be left.
    recovery: bool,
    /// Re-checking finished checkouts after a reboot: when each ran.
    settle: Option<Vec<(i64, i64)>>,
    /// The store folder, relative to the share, when it lies inside it.
    store_rel: Option<PathBuf>,
    report: CheckoutReport,
    kept_more: u64,
    scan: Batch,
    /// The store's release thread, once a big file was replaced (`Some(None)`: none could start).
    release: Option<Option<crossbeam_channel::Sender<Release>>>,
    /// Records of paths earlier checkouts could not write, not visited yet by this one.
    unwritten: HashMap<PathBuf, Seen>,
    /// Retrying such a path: the old file is checked before the rename but its bytes are never
    /// reused (they are not a version the store knows).
    no_reuse: bool,
}

impl Ctx<'_> {
    /// The release thread's queue, started on first use; `None` if no thread can start.
    fn release_tx(&mut self) -> Option<crossbeam_channel::Sender<Release>> {
        if self.release.is_none() {
            let mut g = self
                .store
                .releaser
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if g.is_none() {
                *g = Releaser::start();
            }
            self.release = Some(g.as_ref().and_then(|r| r.sender()));
        }
        self.release.clone().flatten()
    }

    fn keep(&mut self, path: &Path, reason: &str) {
        if self.report.kept.len() < KEPT_MAX {
            self.report.kept.push(Skipped {
                path: path.to_path_buf(),
                reason: reason.to_string(),
            });
        } else {
            self.kept_more += 1;
        }
    }

    fn io(&self, rel: &Path, e: io::Error) -> Error {
        Error::io(self.share.join(rel), e)
    }

    /// `rel` (named `name` in the folder `dfd`) could not be written: recorded (with what is on
    /// disk there now) and reported, and the checkout goes on.
    fn fail_path(&mut self, dfd: RawFd, name: &CStr, rel: &Path, why: &str) -> Result<()> {
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
    fn clear_unwritten(&mut self, dfd: RawFd, name: &CStr, rel: &Path) -> Result<()> {
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

    fn record(&mut self, rel: &Path, st: Stat, node: NodeId) -> Result<()> {
        self.scan.put(
            &self.store.db,
            cf::SCAN,
            rel.as_os_str().as_bytes(),
            &st.cache_bytes(node),
        );
        self.flush_scan(false)
    }

    fn forget(&mut self, rel: &Path) -> Result<()> {
        self.scan
            .delete(&self.store.db, cf::SCAN, rel.as_os_str().as_bytes());
        self.flush_scan(false)
    }

    fn flush_scan(&mut self, all: bool) -> Result<()> {
        if (all && !self.scan.is_empty()) || self.scan.len() >= SCAN_BATCH {
            let b = std::mem::take(&mut self.scan);
            self.store.db.write(b.inner, false)?;
        }
        Ok(())
    }

    /// The scan-cache record of `rel`, and whether it is racy.
    fn cached_racy(&self, rel: &Path) -> Result<Option<(Stat, NodeId, bool)>> {
        Ok(self
            .store
            .db
            .get(cf::SCAN, rel.as_os_str().as_bytes())?
            .and_then(|v| Stat::from_cache_racy(&v)))
    }

    /// The scan-cache record of `rel`.
    fn cached(&self, rel: &Path) -> Result<Option<(Stat, NodeId)>> {
        Ok(self.cached_racy(rel)?.map(|(st, node, _)| (st, node)))
    }

    /// Re-checking after a reboot: whether the settled checkout wrote this inode last (its ctime
    /// lies within that checkout's run).
    fn written_by_settled(&self, st: &libc::stat) -> bool {
        let c = Stat::of_raw(st).ctime_ns;
        self.settle
            .as_ref()
            .map(|w| w.iter().any(|&(start, end)| c >= start && c <= end))
            .unwrap_or(false)
    }

    /// Whether `rel` is left's own (never written by a checkout).
    fn reserved(&self, rel: &Path, name: &[u8]) -> bool {
        name == b".left"
            || name.starts_with(TMP_PREFIX.as_bytes())
            || self.store_rel.as_deref() == Some(rel)
    }
}

impl Store {
    /// Waits until the files earlier checkouts replaced are released: checkout hands a replaced
    /// big file to a release thread (freeing 1 GiB on ext4 takes ~0.2 s, mostly waiting) and
    /// returns without waiting for it. The next checkout and the store's drop wait as well; call
    /// this to have their space back now.
    pub fn wait_released(&self) {
        let r = self
            .releaser
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(r);
    }

    /// Moves the share folder from snapshot `from` (`None`: nothing checked out yet) to snapshot
    /// `to`, touching only paths that differ between the two trees, then sets head = `to` (synced).
    /// `to` must be complete in the store. See the module documentation for what is written, what
    /// is kept, and what a crash leaves. A checkout cut short (an error or a crash) stays journaled:
    /// [`Store::resume_checkout`] finishes it, and another checkout is refused until then.
    pub fn checkout(
        &self,
        share_root: &Path,
        from: Option<NodeId>,
        to: NodeId,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<CheckoutReport> {
        self.writable()?;
        let settled = self.settle_after_reboot(share_root, opts, progress)?;
        let mode = match self.pending_checkout()? {
            None => Mode::Normal,
            Some(p) if p == (from, to) => Mode::Resume,
            Some((pf, pt)) => {
                return Err(Error::Invalid(format!(
                    "a checkout from {} to {} was cut short; finish it first (resume)",
                    pf.map(|f| f.fmt_short())
                        .unwrap_or_else(|| "nothing".into()),
                    pt.fmt_short()
                )))
            }
        };
        let mut r = self.run_checkout(share_root, from, to, opts, progress, mode)?;
        if let Some(s) = settled {
            absorb(&mut r, s);
        }
        Ok(r)
    }

    /// The checkout a crash (or an error) cut short, if any: (from, to).
    pub fn pending_checkout(&self) -> Result<Option<(Option<NodeId>, NodeId)>> {
        match self.db.get(cf::META, JOURNAL_KEY)? {
            None => Ok(None),
            Some(b) => {
                let j: Journal = postcard::from_bytes(&b).map_err(|e| {
                    Error::corrupt(format!("checkout journal does not decode: {e}"))
                })?;
                Ok(Some((j.from, j.to)))
            }
        }
    }

    /// Finishes a checkout a crash cut short (a no-op returning `None` when there is none): paths
    /// already at their `to` version are skipped (rehashing those whose stat does not say so),
    /// temporary files the crash left are removed, the rest is done as the checkout would have.
    ///
    /// First, after a reboot, it re-checks the checkouts that finished without fsync shortly
    /// before it (settle records, see the module documentation): a path such a checkout wrote
    /// that a power cut took back to its old bytes, or left short, is written again; a path
    /// changed after that checkout is left alone. Call it when a process that owns the store
    /// starts (`checkout` does this part too).
    pub fn resume_checkout(
        &self,
        share_root: &Path,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<Option<CheckoutReport>> {
        if self.is_read_only() {
            return Ok(None);
        }
        let mut out = self.settle_after_reboot(share_root, opts, progress)?;
        if let Some((from, to)) = self.pending_checkout()? {
            let r = self.run_checkout(share_root, from, to, opts, progress, Mode::Resume)?;
            match &mut out {
                None => out = Some(r),
                Some(o) => absorb(o, r),
            }
        }
        Ok(out)
    }

    /// This boot's id (`/proc/sys/kernel/random/boot_id`; empty where there is none).
    fn boot_id(&self) -> String {
        if let Some(b) = self.boot_override.lock().expect("boot lock").clone() {
            return b;
        }
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// Test hook: pretend the machine booted again (checkout records and compares this id).
    #[doc(hidden)]
    pub fn debug_set_boot_id(&self, id: Option<&str>) {
        *self.boot_override.lock().expect("boot lock") = id.map(str::to_string);
    }

    /// Test hook: moves the end time of the newest settle record to `end_ns` (as if that
    /// checkout had ended then).
    #[doc(hidden)]
    pub fn debug_set_settle_end(&self, end_ns: i64) -> Result<()> {
        let mut b = Batch::default();
        if let Some((k, mut s)) = self.settle_records()?.pop() {
            s.end_ns = end_ns;
            let v = postcard::to_stdvec(&s).map_err(|e| Error::Invalid(e.to_string()))?;
            b.put(&self.db, cf::META, &k, &v);
        }
        self.db.write(b.inner, true)
    }

    /// Settle records, oldest first.
    fn settle_records(&self) -> Result<Vec<(Vec<u8>, Settle)>> {
        let mut out = Vec::new();
        for r in self.db.iter_prefix(cf::META, SETTLE_PREFIX) {
            let (k, v) = r?;
            let s: Settle = postcard::from_bytes(&v).map_err(|e| {
                Error::corrupt(format!("checkout settle record does not decode: {e}"))
            })?;
            out.push((k.to_vec(), s));
        }
        Ok(out)
    }

    /// Re-checks the finished, unsynced checkouts of an earlier boot, in one walk from the first
    /// one's `from` to the last one's `to`; drops the records of this boot that are older than
    /// [`SETTLE_WINDOW_NS`].
    fn settle_after_reboot(
        &self,
        share_root: &Path,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<Option<CheckoutReport>> {
        let boot = self.boot_id();
        let now = crate::store::now_ns();
        let mut b = Batch::default();
        let mut earlier = Vec::new();
        for (key, s) in self.settle_records()? {
            if s.boot != boot {
                earlier.push((key, s));
            } else if s.end_ns < now - SETTLE_WINDOW_NS {
                b.delete(&self.db, cf::META, &key);
            }
        }
        if !b.is_empty() {
            self.db.write(b.inner, false)?;
        }
        let (Some(first), Some(last)) = (earlier.first(), earlier.last()) else {
            return Ok(None);
        };
        let (from, to) = (first.1.from, last.1.to);
        let mode = Mode::Settle {
            windows: earlier
                .iter()
                .map(|(_, s)| (s.start_ns, s.end_ns))
                .collect(),
            keys: earlier.iter().map(|(k, _)| k.clone()).collect(),
        };
        match self.run_checkout(share_root, from, to, opts, progress, mode) {
            Ok(r) => Ok(Some(r)),
            // Their trees are gone (gc): nothing left to compare with.
            Err(Error::NotFound { .. }) => {
                let mut b = Batch::default();
                for (k, _) in &earlier {
                    b.delete(&self.db, cf::META, k);
                }
                self.db.write(b.inner, true)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn run_checkout(
        &self,
        share_root: &Path,
        from: Option<NodeId>,
        to: NodeId,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
        mode: Mode,
    ) -> Result<CheckoutReport> {
        let _g = self.op.read().expect("op lock");
        let start_ns = crate::store::now_ns();
        if !self.has_nodes(&[to])?[0] {
            return Err(Error::not_found(format!(
                "snapshot {} is not completely stored",
                to.fmt_short()
            )));
        }
        let to_root = self.snapshot_root(to)?;
        let from_root = from.map(|f| self.snapshot_root(f)).transpose()?;
        let root_c = cstring(share_root.as_os_str().as_bytes())?;
        // The share root itself is the user's choice (it may be reached through a link); nothing
        // beneath it is.
        let root = open_at(
            libc::AT_FDCWD,
            &root_c,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| Error::io(share_root, e))?;
        let share = std::fs::canonicalize(share_root).map_err(|e| Error::io(share_root, e))?;
        let store_rel = std::fs::canonicalize(&self.dir)
            .ok()
            .and_then(|d| d.strip_prefix(&share).ok().map(Path::to_path_buf))
            .filter(|r| !r.as_os_str().is_empty());

        // Files earlier checkouts replaced are freed first (their space counts as free).
        self.wait_released();
        // Plan: bytes to write against the free space, before anything is touched.
        let mut plan = Plan::default();
        let mut check = TreeCheck::default();
        match self.plan_dir(
            from_root,
            Some(to_root),
            &mut plan,
            0,
            Path::new(""),
            &mut check,
        ) {
            Ok(()) => {}
            // A folder that does not decode as one, or names an entry twice.
            Err(e @ Error::Corrupt { .. }) => {
                check.bad.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
        let avail = free_bytes(root.as_raw_fd()).map_err(|e| Error::io(share_root, e))?;
        // (Finishing or re-checking: most of the plan is usually done already, and refusing would
        // leave the folder half-way; a real shortage still fails each write with DiskFull.)
        if matches!(mode, Mode::Normal) {
            // Staged files are on disk already: renaming them in takes no space (when they are
            // on the share's file system; otherwise they are written as usual).
            if let Some(st) = &opts.staged {
                let root_dev = fstat(root.as_raw_fd()).map(|s| s.st_dev).ok();
                if st.dev().is_some() && st.dev() == root_dev {
                    plan.write = plan.write.saturating_sub(st.bytes());
                }
            }
            check_space(&plan, avail, share_root)?;
        }
        // A malformed tree (a file entry on a folder node, chunk lists whose lengths do not add
        // up to the file's size) is refused before the journal is written: nothing is touched,
        // and nothing is left to replay.
        if let Some(bad) = check.bad.take() {
            match &mode {
                Mode::Normal => return Err(bad),
                // A journal an older version wrote for such a tree could never finish: it is
                // dropped (as `abort_checkout` does) and said so, so the store is not stuck.
                Mode::Resume => {
                    self.abort_checkout()?;
                    let mut report = CheckoutReport::default();
                    report.kept.push(Skipped {
                        path: PathBuf::new(),
                        reason: format!(
                            "the interrupted checkout to {} was dropped, its tree is malformed \
                             ({bad}); the folder keeps what it has and the next add records it",
                            to.fmt_short()
                        ),
                    });
                    return Ok(report);
                }
                // Re-checking finished checkouts: each path goes on its own (damage is per path).
                Mode::Settle { .. } => {}
            }
        }

        if matches!(mode, Mode::Normal) {
            let j = postcard::to_stdvec(&Journal { from, to })
                .map_err(|e| Error::Invalid(format!("checkout journal: {e}")))?;
            let mut b = Batch::default();
            b.put(&self.db, cf::META, JOURNAL_KEY, &j);
            self.db.write(b.inner, true)?;
        }

        let mut cx = Ctx {
            store: self,
            share: share_root.to_path_buf(),
            opts,
            progress,
            recovery: !matches!(mode, Mode::Normal),
            settle: match &mode {
                Mode::Settle { windows, .. } => Some(windows.clone()),
                _ => None,
            },
            store_rel,
            report: CheckoutReport::default(),
            kept_more: 0,
            scan: Batch::default(),
            release: None,
            unwritten: self.unwritten()?.into_iter().collect(),
            no_reuse: false,
        };
        progress.start("checkout", Some(plan.write));
        let r = self.apply_dir(&mut cx, &root, Path::new(""), from_root, Some(to_root), 0);
        let r = r.and_then(|()| match mode {
            Mode::Settle { .. } => Ok(()),
            _ => self.retry_unwritten_paths(&mut cx, &root, to),
        });
        progress.finish();
        // Scan records of what was written stay true whatever happened after.
        cx.flush_scan(true)?;
        r?;
        if opts.fsync {
            fsync(root.as_raw_fd()).map_err(|e| Error::io(share_root, e))?;
        }
        let mut b = Batch::default();
        match &mode {
            Mode::Settle { keys, .. } => {
                for k in keys {
                    b.delete(&self.db, cf::META, k);
                }
            }
            _ => {
                b.put(&self.db, cf::REFS, b"head", to.as_bytes());
                b.delete(&self.db, cf::META, JOURNAL_KEY);
            }
        }
        if !opts.fsync {
            self.add_settle(&mut b, from, to, start_ns)?;
        }
        self.db.write(b.inner, true)?;
        let mut report = cx.report;
        if cx.kept_more > 0 {
            report.kept.push(Skipped {
                path: PathBuf::new(),
                reason: format!("and {} more paths kept", cx.kept_more),
            });
        }
        Ok(report)
    }

    /// Tries again the paths earlier checkouts could not write that this one did not visit: each
    /// still showing what that checkout saw is brought to `to`'s version (the old bytes are never
    /// reused: they are not a version the store knows); one showing anything else changed since
    /// (a local change the next add records) and loses its record.
    fn retry_unwritten_paths(&self, cx: &mut Ctx<'_>, root: &OwnedFd, to: NodeId) -> Result<()> {
        let mut left: Vec<(PathBuf, Seen)> = cx.unwritten.drain().collect();
        left.sort_by(|a, b| a.0.cmp(&b.0));
        for (rel, seen) in left {
            let key = [UNWRITTEN_PREFIX, rel.as_os_str().as_bytes()].concat();
            // The parent, one checked component at a time; gone or not a folder: stale.
            let mut dir: Option<OwnedFd> = None;
            let mut ok = true;
            let parent = rel.parent().unwrap_or(Path::new(""));
            for c in parent.components() {
                let n = c.as_os_str().as_bytes();
                if check_name(n).is_err() {
                    ok = false;
                    break;
                }
                let at = dir.as_ref().map_or(root.as_raw_fd(), |d| d.as_raw_fd());
                match open_dir_at(at, &cstring(n)?) {
                    Ok(d) => dir = Some(d),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            let name = rel.file_name().map(|n| n.as_bytes().to_vec());
            let (Some(name), true) = (name, ok) else {
                cx.scan.delete(&self.db, cf::META, &key);
                continue;
            };
            let c = cstring(&name)?;
            let pfd = match dir {
                Some(d) => d,
                None => root.try_clone().map_err(|e| Error::io(&cx.share, e))?,
            };
            let disk = lstat_at(pfd.as_raw_fd(), &c).map_err(|e| cx.io(&rel, e))?;
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
                        Some(DiskKind::File) => match open_file_at(pfd.as_raw_fd(), &c) {
                            Ok(f) => {
                                let st = fstat(f.as_raw_fd()).map_err(|e| cx.io(&rel, e))?;
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
                    unlink_at(pfd.as_raw_fd(), &c, false).map_err(|e| cx.io(&rel, e))
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
                                let _ = futimens(pfd.as_raw_fd(), pe.mtime_ns);
                            }
                        }
                    }
                }
                Err(e) => match path_error(&e) {
                    Some(why) => cx.fail_path(pfd.as_raw_fd(), &c, &rel, &why)?,
                    None => return Err(e),
                },
            }
        }
        Ok(())
    }

    /// Puts the settle record of a checkout that just finished without fsync into `b`, and drops
    /// this boot's records past the window (and the oldest beyond [`SETTLE_MAX`]).
    fn add_settle(
        &self,
        b: &mut Batch,
        from: Option<NodeId>,
        to: NodeId,
        start_ns: i64,
    ) -> Result<()> {
        let boot = self.boot_id();
        let end_ns = crate::store::now_ns();
        let old = self.settle_records()?;
        let live: Vec<&Vec<u8>> = old
            .iter()
            .filter(|(k, s)| {
                let stale = s.boot == boot && s.end_ns < end_ns - SETTLE_WINDOW_NS;
                if stale {
                    b.delete(&self.db, cf::META, k);
                }
                !stale
            })
            .map(|(k, _)| k)
            .collect();
        for k in live
            .iter()
            .take((live.len() + 1).saturating_sub(SETTLE_MAX))
        {
            b.delete(&self.db, cf::META, k);
        }
        let mut key = SETTLE_PREFIX.to_vec();
        key.extend_from_slice(&end_ns.to_be_bytes());
        key.extend_from_slice(to.as_bytes());
        let s = Settle {
            from,
            to,
            start_ns,
            end_ns,
            boot,
        };
        let v =
            postcard::to_stdvec(&s).map_err(|e| Error::Invalid(format!("settle record: {e}")))?;
        b.put(&self.db, cf::META, &key, &v);
        Ok(())
    }

    /// Adds up what the walk will write and free, and checks every file entry `b` has that `a`
    /// does not (see [`Store::check_file_entry`]; the first problem goes to `check.bad`).
    fn plan_dir(
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

    /// Drops a checkout that was cut short (a crash, an error, or a tree that cannot be checked
    /// out), without touching the folder: it keeps what it has (some paths at the new version,
    /// the others at the old one, temporary files `add` never reads), `head` stays at the
    /// checkout's `from`, and the next `add` records what is on disk (so no byte there is lost;
    /// the scan records of the paths already written name their new versions). Returns the
    /// dropped checkout, `None` when there was none.
    pub fn abort_checkout(&self) -> Result<Option<(Option<NodeId>, NodeId)>> {
        self.writable()?;
        let Some(p) = self.pending_checkout()? else {
            return Ok(None);
        };
        let mut b = Batch::default();
        b.delete(&self.db, cf::META, JOURNAL_KEY);
        self.db.write(b.inner, true)?;
        Ok(Some(p))
    }

    /// Test hook: writes a checkout journal `{from, to}` as a checkout does before it touches
    /// the folder (to stand for a store an older version left journaled).
    #[doc(hidden)]
    pub fn debug_write_journal(&self, from: Option<NodeId>, to: NodeId) -> Result<()> {
        let j = postcard::to_stdvec(&Journal { from, to })
            .map_err(|e| Error::Invalid(format!("checkout journal: {e}")))?;
        let mut b = Batch::default();
        b.put(&self.db, cf::META, JOURNAL_KEY, &j);
        self.db.write(b.inner, true)
    }

    /// Moves the folder open as `fd` (at `rel`) from folder node `a` to folder node `b` (`None`:
    /// the folder is gone in that tree).
    fn apply_dir(
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
    fn file_matches(&self, f: &File, node: &FileNode) -> Result<bool> {
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
    fn enter_dir(
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

    /// Writes `y` at `name`, where nothing is (`replaces` is `None`) or where the checked old
    /// version, inode `replaces`, is replaced by a rename (only if that inode is still there, and
    /// for a file, unchanged); `old` is the old file when its bytes may be reused.
    #[allow(clippy::too_many_arguments)]
    fn put_entry(
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
        let dfd = dir.as_raw_fd();
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
                    fchmod(tmp.as_raw_fd(), safe_mode(y.mode)).map_err(|e| cx.io(rel, e))?;
                    futimens(tmp.as_raw_fd(), y.mtime_ns).map_err(|e| cx.io(rel, e))?;
                    if cx.opts.fsync {
                        tmp.sync_all().map_err(|e| cx.io(rel, e))?;
                    }
                    // The old file must still be the checked version right before it is replaced.
                    if let Some((of, ost, _)) = &old {
                        let now = fstat(of.as_raw_fd()).map_err(|e| cx.io(rel, e))?;
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
                        let now = fstat(tmp.as_raw_fd()).map_err(|e| cx.io(rel, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn tmp_names_are_hidden_and_unique() {
        let a = tmp_name();
        let b = tmp_name();
        assert!(a.starts_with(TMP_PREFIX) && a.len() == TMP_PREFIX.len() + 16);
        assert_ne!(a, b);
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
