//! The release thread of a store's checkouts: replaced big files are closed off the checkout's
//! path (in a short-lived grandchild process), so freeing their blocks does not hold up the
//! checkout or the exit of a one-shot command.
//!
//! What this module is not: it decides nothing about which files are released (the checkout hands
//! over the last descriptor of a replaced file of at least [`RELEASE_MIN`] bytes) and keeps no
//! state beyond its bounded queue.
use std::fs::File;
use std::os::fd::AsRawFd;

/// Replaced files at least this big are released on the checkout's release thread
/// ([`Releaser`]); smaller ones are closed in place.
pub(crate) const RELEASE_MIN: u64 = 8 << 20;
/// Messages queued to the release thread at most (bounds the open descriptors it holds).
const RELEASE_QUEUE: usize = 64;

/// Work for the release thread.
pub(crate) enum Release {
    /// The last handle of a replaced file: closing it frees its blocks.
    Close(File),
}

/// The release thread of a store's checkouts. Freeing a replaced big file costs about 0.2 s per
/// GiB on ext4 (its page cache, then its blocks), most of it waiting: the checkout hands the file's
/// last descriptor here and goes on, and this thread hands it on to a grandchild process
/// ([`close_detached`]). Dropping the releaser waits for everything queued
/// ([`Store::wait_released`], the next checkout, or the store's drop).
pub(crate) struct Releaser {
    tx: Option<crossbeam_channel::Sender<Release>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Releaser {
    /// A handle to queue work to this thread.
    pub(crate) fn sender(&self) -> Option<crossbeam_channel::Sender<Release>> {
        self.tx.clone()
    }
    /// A new release thread; `None` if no thread can be started (then work is done in place).
    pub(crate) fn start() -> Option<Releaser> {
        let (tx, rx) = crossbeam_channel::bounded::<Release>(RELEASE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("left-release".into())
            .spawn(move || {
                for r in rx.iter() {
                    match r {
                        Release::Close(f) => close_detached(f),
                    }
                }
            })
            .ok()?;
        Some(Releaser {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

/// Queues `r` to the release thread, or does it here without one.
pub(crate) fn release(tx: Option<&crossbeam_channel::Sender<Release>>, r: Release) {
    let r = match tx {
        Some(t) => match t.send(r) {
            Ok(()) => return,
            Err(crossbeam_channel::SendError(r)) => r,
        },
        None => r,
    };
    match r {
        Release::Close(f) => drop(f),
    }
}

/// Closes the last descriptor of a replaced big file in a short-lived grandchild process, so its
/// blocks and cached pages are freed there: freeing 1 GiB on ext4 takes ~0.15 s of kernel time
/// that would otherwise hold up this thread, and with it the exit of a one-shot command (`left
/// sync`), whose store's drop waits for this thread. The grandchild keeps only that descriptor
/// and the read end of a pipe (everything else it inherited, the store's lock included, is closed
/// at once), waits until this process has closed its own descriptor of the file (the pipe's write
/// end is closed right after it), and exits: its exit is the last close. Where that cannot be
/// done, the file is closed here.
fn close_detached(f: File) {
    let fd = f.as_raw_fd();
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: a valid two-element array for pipe2.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        drop(f);
        return;
    }
    let (rd, wr) = (pipe[0], pipe[1]);
    // SAFETY: between fork and _exit the child and grandchild make only async-signal-safe system
    // calls (fork, close, close_range, read, _exit) on integers and a stack byte; the parent
    // reaps its child at once.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            if libc::fork() == 0 {
                // Keep `fd` and `rd`; close everything else.
                let (lo, hi) = (fd.min(rd), fd.max(rd));
                if lo > 0 {
                    libc::syscall(libc::SYS_close_range, 0u32, (lo - 1) as u32, 0u32);
                }
                if hi - lo > 1 {
                    libc::syscall(
                        libc::SYS_close_range,
                        (lo + 1) as u32,
                        (hi - 1) as u32,
                        0u32,
                    );
                }
                libc::syscall(libc::SYS_close_range, (hi + 1) as u32, u32::MAX, 0u32);
                // EOF once the parent closed the write end (after its copy of `fd`).
                let mut b = 0u8;
                while libc::read(rd, (&mut b as *mut u8).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
            libc::_exit(0);
        }
        libc::close(rd);
        if pid > 0 {
            let mut status = 0;
            while libc::waitpid(pid, &mut status, 0) < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
        }
        drop(f);
        libc::close(wr);
    }
}

impl Drop for Releaser {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
