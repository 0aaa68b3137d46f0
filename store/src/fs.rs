//! The file system beneath the share root: every call there is relative to a folder descriptor and
//! takes one checked name, never following a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`); see
//! "Never outside the share" in [`crate::checkout`]. The mechanism is the per-component walk (a
//! path is opened one folder at a time, each with `O_NOFOLLOW`); the one call that opens a
//! folder several components down, [`open_dir_beneath`], does it in one `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it (Linux 5.6+) and falls back to
//! that walk where it does not (`ENOSYS`, remembered), with the same answer either way.
//! Also the few whole-file calls checkout needs (`copy_file_range` with its fallback, `fallocate`,
//! `fstatvfs`) and the three that take a whole path from [`CWD`]: opening the share root (the
//! user's choice, links allowed), opening and `renameat2(RENAME_NOREPLACE)`-ing a staged file into
//! the share, `statvfs` of the stage folder. Every call goes through `rustix`'s safe wrappers;
//! errors come back as `io::Error` with the same `raw_os_error()` the C calls give. It is not a
//! path resolver, and it knows nothing of trees or the store.

use crate::{node, Error, Result};
use rustix::fs::{
    AtFlags, FallocateFlags, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps,
};
use rustix::io::Errno;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// What `fstatat`/`fstat` fill (rustix's `struct stat`).
pub(crate) use rustix::fs::Stat as RawStat;
/// The current folder, for the two calls that take a whole path (the share root, a staged file).
pub(crate) use rustix::fs::CWD;

/// Bytes copied per step when `copy_file_range` is unavailable.
const COPY_STEP: usize = 1 << 20;

pub(crate) fn cstring(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| Error::corrupt("entry name contains NUL"))
}

/// `openat` with `O_CLOEXEC` added to `flags`.
pub(crate) fn open_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        mode,
    )?)
}

/// Opens a folder beneath `dir` without following a symlink.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        Mode::empty(),
    )
}

/// Whether `openat2` may be tried: cleared for good by the first `ENOSYS` (an older kernel, or a
/// seccomp filter that refuses it).
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// Opens the folder `names` (each a checked name, none `.` or `..`) beneath `root` without
/// following any symlink on the way or at the end, nor leaving `root`: one `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` where the kernel has it, else
/// one [`open_dir_at`] per component. A symlink anywhere, a component that is not a folder, or
/// a name that is not one plain component (empty, `.`, `..`, a `/` or NUL in it) is an error
/// either way; no names opens `root` again.
pub(crate) fn open_dir_beneath(root: BorrowedFd<'_>, names: &[&[u8]]) -> io::Result<OwnedFd> {
    open_dir_beneath_with(root, names, OPENAT2.load(Ordering::Relaxed))
}

/// [`open_dir_beneath`], trying `openat2` first only when `openat2` is set (the fallback's tests
/// pass false).
fn open_dir_beneath_with(
    root: BorrowedFd<'_>,
    names: &[&[u8]],
    openat2: bool,
) -> io::Result<OwnedFd> {
    if names
        .iter()
        .any(|n| n.is_empty() || *n == b"." || *n == b".." || n.contains(&b'/') || n.contains(&0))
    {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    if names.is_empty() {
        return open_dir_at(root, c".");
    }
    if openat2 {
        let path = names.join(&b'/');
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat2(root, path.as_slice(), flags, Mode::empty(), resolve) {
            Err(Errno::NOSYS) => OPENAT2.store(false, Ordering::Relaxed),
            // `EAGAIN`: a rename raced the lookup (`RESOLVE_BENEATH` refuses to guess); walk.
            Err(Errno::AGAIN) => {}
            r => return Ok(r?),
        }
    }
    let mut dir: Option<OwnedFd> = None;
    for n in names {
        let name = CString::new(*n).expect("checked above: no NUL");
        let at = dir.as_ref().map_or(root, |d| d.as_fd());
        dir = Some(open_dir_at(at, &name)?);
    }
    Ok(dir.expect("names is not empty"))
}

/// Opens a regular file beneath `dir` for reading without following a symlink (and without
/// blocking on a FIFO).
pub(crate) fn open_file_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    let fd = open_at(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)`; `None` when nothing is there (`ENOENT`).
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<RawStat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn fstat(fd: impl AsFd) -> io::Result<RawStat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// The target of the link `name`, at most `MAX_LINK + 1` bytes (a longer one comes back cut, and
/// so never equals a valid target).
pub(crate) fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; node::MAX_LINK + 1];
    let n = rustix::fs::readlinkat_raw(dir, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, folder: bool) -> io::Result<()> {
    let flags = if folder {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    Ok(rustix::fs::unlinkat(dir, name, flags)?)
}

pub(crate) fn rename_at(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    Ok(rustix::fs::renameat(dir, from, dir, to)?)
}

/// Moves the file at the path `from` to `to` in `dir` unless something is there already
/// (`renameat2(RENAME_NOREPLACE)`: `EEXIST`).
pub(crate) fn rename_noreplace(from: &CStr, dir: BorrowedFd<'_>, to: &CStr) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(
        CWD,
        from,
        dir,
        to,
        RenameFlags::NOREPLACE,
    )?)
}

pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?)
}

pub(crate) fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

fn timestamps(mtime_ns: i64) -> Timestamps {
    let ts = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as _,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

/// Sets the mtime (and atime) of the entry `name` itself (a symlink is not followed).
pub(crate) fn utimens_at(dir: BorrowedFd<'_>, name: &CStr, mtime_ns: i64) -> io::Result<()> {
    Ok(rustix::fs::utimensat(
        dir,
        name,
        &timestamps(mtime_ns),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

pub(crate) fn futimens(fd: impl AsFd, mtime_ns: i64) -> io::Result<()> {
    Ok(rustix::fs::futimens(fd, &timestamps(mtime_ns))?)
}

pub(crate) fn fchmod(fd: impl AsFd, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?)
}

pub(crate) fn fsync(fd: impl AsFd) -> io::Result<()> {
    Ok(rustix::fs::fsync(fd)?)
}

/// Names in the folder `dir` (a duplicate descriptor is read from the start; a read error ends the
/// list, as `readdir` does).
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let dup = rustix::io::fcntl_dupfd_cloexec(dir, 0)?;
    let mut d = rustix::fs::Dir::new(dup)?;
    // The duplicate shares the offset with `dir`, which may be mid-way: start over.
    d.rewind();
    let mut out = Vec::new();
    while let Some(Ok(e)) = d.read() {
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

/// Allocates the blocks of a new file before it is written (`fallocate`). A full disk shows now,
/// before any work; and the file then has no delayed allocation left when it is renamed over the
/// old one, so ext4 does not flush it inside the rename (`auto_da_alloc`: 0.3-0.6 s for 1 GiB
/// here). A file system without `fallocate` just skips it.
pub(crate) fn preallocate(f: &File, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(f, FallocateFlags::empty(), 0, len) {
        Ok(()) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) | Err(Errno::INVAL) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Bytes available to us on the file system of the folder `fd` (`fstatvfs`).
pub(crate) fn free_bytes(fd: impl AsFd) -> io::Result<u64> {
    let s = rustix::fs::fstatvfs(fd)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// The same for the path `dir` (`statvfs`, following links: the stage folder is configured).
pub(crate) fn free_bytes_path(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Copies `len` bytes from `src` at `off_in` to `dst` at `off_out` in the kernel
/// (`copy_file_range`), falling back to reads and writes where the file system does not support it.
pub(crate) fn copy_range(
    src: &File,
    dst: &File,
    off_in: u64,
    off_out: u64,
    len: u64,
) -> io::Result<()> {
    let (mut oi, mut oo) = (off_in, off_out);
    let mut left = len;
    while left > 0 {
        let step = left.min(1 << 30) as usize;
        let n = match rustix::fs::copy_file_range(src, Some(&mut oi), dst, Some(&mut oo), step) {
            Ok(n) => n,
            Err(Errno::XDEV) | Err(Errno::INVAL) | Err(Errno::NOSYS) | Err(Errno::OPNOTSUPP) => {
                return copy_slow(src, dst, oi, oo, left);
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
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

pub(crate) fn copy_slow(
    src: &File,
    dst: &File,
    mut oi: u64,
    mut oo: u64,
    mut left: u64,
) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Opens `names` beneath `root` both ways; both must agree. Returns whether it opened and,
    /// when it did, the inode opened.
    fn both(root: &Path, names: &[&[u8]]) -> Option<u64> {
        let r = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let ino = |x: io::Result<OwnedFd>| x.ok().map(|fd| fstat(fd).unwrap().st_ino);
        let fast = ino(open_dir_beneath_with(r.as_fd(), names, true));
        let walk = ino(open_dir_beneath_with(r.as_fd(), names, false));
        assert_eq!(fast, walk, "openat2 and the walk disagree on {names:?}");
        fast
    }

    #[test]
    fn openat2_and_the_per_component_walk_agree_and_never_follow_a_link() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::create_dir_all(t.path().join("outside/c")).unwrap();
        std::fs::write(root.join("a/file"), b"x").unwrap();
        symlink(t.path().join("outside"), root.join("a/out")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        symlink("..", root.join("a/up")).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        use std::os::unix::fs::MetadataExt;

        assert_eq!(
            both(&root, &[b"a", b"b", b"c"]),
            Some(ino(&root.join("a/b/c")))
        );
        assert_eq!(both(&root, &[b"a"]), Some(ino(&root.join("a"))));
        assert_eq!(both(&root, &[]), Some(ino(&root)));
        // A link anywhere on the way, pointing out or in, at the end or in the middle.
        assert_eq!(both(&root, &[b"a", b"out"]), None);
        assert_eq!(both(&root, &[b"a", b"out", b"c"]), None);
        assert_eq!(both(&root, &[b"a", b"rel"]), None);
        assert_eq!(both(&root, &[b"a", b"rel", b"c"]), None);
        assert_eq!(both(&root, &[b"a", b"up", b"a"]), None);
        // Not a folder, or missing.
        assert_eq!(both(&root, &[b"a", b"file"]), None);
        assert_eq!(both(&root, &[b"a", b"nope"]), None);
        // Names that are not one plain component are refused by both, even where they would
        // stay inside.
        for bad in [&b".."[..], b".", b"", b"a/b", b"a\0"] {
            assert_eq!(both(&root, &[b"a", bad]), None, "{bad:?}");
        }
        assert_eq!(both(&root, &[b".."]), None);
    }
}
