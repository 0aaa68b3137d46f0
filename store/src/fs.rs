//! The file system beneath the share root: every call there is relative to a folder descriptor and
//! takes one checked name, never following a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`); see
//! "Never outside the share" in [`crate::checkout`]. The mechanism is this per-component walk (a
//! path is opened one folder at a time, each with `O_NOFOLLOW`), not `openat2`/`RESOLVE_BENEATH`.
//! Also the few whole-file calls checkout needs (`copy_file_range` with its fallback, `fallocate`,
//! `fstatvfs`) and the three that take a whole path from [`CWD`]: opening the share root (the
//! user's choice, links allowed), opening and `renameat2(RENAME_NOREPLACE)`-ing a staged file into
//! the share, `statvfs` of the stage folder. Every call goes through `rustix`'s safe wrappers;
//! errors come back as `io::Error` with the same `raw_os_error()` the C calls give. It is not a
//! path resolver, and it knows nothing of trees or the store.

use crate::{node, Error, Result};
use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

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
