//! The file system beneath the share root: every call is relative to a folder descriptor and takes
//! one checked name, never following a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`); see "Never
//! outside the share" in [`crate::checkout`]. Also the few whole-file calls checkout needs
//! (`copy_file_range` with its fallback, `fallocate`, `fstatvfs`). It knows nothing of trees or
//! the store.

use crate::{node, Error, Result};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

/// Bytes copied per step when `copy_file_range` is unavailable.
const COPY_STEP: usize = 1 << 20;

pub(crate) fn cstring(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| Error::corrupt("entry name contains NUL"))
}

pub(crate) fn last_err() -> io::Error {
    io::Error::last_os_error()
}

pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r)
    }
}

pub(crate) fn open_at(
    dir: RawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
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
pub(crate) fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// Opens a regular file beneath `dir` for reading without following a symlink (and without
/// blocking on a FIFO).
pub(crate) fn open_file_at(dir: RawFd, name: &CStr) -> io::Result<File> {
    let fd = open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    )?;
    Ok(File::from(fd))
}

pub(crate) fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<Option<libc::stat>> {
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

pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

pub(crate) fn readlink_at(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
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

pub(crate) fn unlink_at(dir: RawFd, name: &CStr, folder: bool) -> io::Result<()> {
    let flags = if folder { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid descriptor and C string.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(|_| ())
}

pub(crate) fn rename_at(dir: RawFd, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: valid descriptor and C strings.
    cvt(unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) }).map(|_| ())
}

pub(crate) fn mkdir_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    cvt(unsafe { libc::mkdirat(dir, name.as_ptr(), 0o700) }).map(|_| ())
}

pub(crate) fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings and descriptor.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(|_| ())
}

pub(crate) fn timespecs(mtime_ns: i64) -> [libc::timespec; 2] {
    let ts = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as _,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    [ts, ts]
}

/// Sets the mtime (and atime) of the entry `name` itself (a symlink is not followed).
pub(crate) fn utimens_at(dir: RawFd, name: &CStr, mtime_ns: i64) -> io::Result<()> {
    let t = timespecs(mtime_ns);
    // SAFETY: valid descriptor, C string and two-element array.
    cvt(unsafe { libc::utimensat(dir, name.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(|_| ())
}

pub(crate) fn futimens(fd: RawFd, mtime_ns: i64) -> io::Result<()> {
    let t = timespecs(mtime_ns);
    // SAFETY: valid descriptor and two-element array.
    cvt(unsafe { libc::futimens(fd, t.as_ptr()) }).map(|_| ())
}

pub(crate) fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(|_| ())
}

pub(crate) fn fsync(fd: RawFd) -> io::Result<()> {
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::fsync(fd) }).map(|_| ())
}

/// Names in the folder `dir` (a duplicate descriptor is read).
pub(crate) fn list_dir(dir: RawFd) -> io::Result<Vec<Vec<u8>>> {
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
pub(crate) fn preallocate(f: &File, len: u64) -> io::Result<()> {
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

pub(crate) fn free_bytes(fd: RawFd) -> io::Result<u64> {
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    cvt(unsafe { libc::fstatvfs(fd, &mut s) })?;
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
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
