//! A one-shot timer with microsecond resolution for the driver.
//!
//! tokio's timers round up to whole milliseconds. The rdt core asks to be woken for pacing a few
//! hundred microseconds ahead; rounded up to a millisecond, a paced sender whose token bucket holds
//! only a few datagrams loses most of its rate (measured: one flow through a 40 MB/s link got
//! 26 MB/s with tokio timers and 37 MB/s unpaced). On Linux this timer is a `timerfd` registered
//! with tokio's reactor, so a deadline 300 µs away fires about 300 µs later; elsewhere, or if the
//! `timerfd` cannot be created, it falls back to tokio's timer.

use std::io;
use std::time::Instant;

/// The driver's timer: arm it with [`Timer::sleep_until`] (re-arming replaces the deadline).
pub(crate) struct Timer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl Timer {
    /// A disarmed timer. Must be called within a tokio runtime.
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(target_os = "linux")]
            fd: linux::create()
                .map_err(|e| tracing::debug!(error = %e, "timerfd unavailable, using tokio timers"))
                .ok(),
        }
    }

    /// Sleeps until `deadline` (returns at once if it has passed).
    pub(crate) async fn sleep_until(&self, deadline: Instant) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            match linux::sleep_until(fd, deadline).await {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "timerfd failed, using a tokio timer"),
            }
        }
        tokio::time::sleep_until(deadline.into()).await
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use tokio::io::unix::AsyncFd;

    pub(super) fn create() -> io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: timerfd_create has no memory arguments; a non-negative result is a new fd that
        // we own from here on.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, open fd not owned by anything else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an `OwnedFd` stays open and returns the same raw fd for as long as it is owned,
        // which is the lifetime of the `AsyncFd`.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
    }

    pub(super) async fn sleep_until(fd: &AsyncFd<OwnedFd>, deadline: Instant) -> io::Result<()> {
        let now = Instant::now();
        if deadline <= now {
            return Ok(());
        }
        let wait = deadline - now;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the fd is an open timerfd; `spec` is a valid itimerspec and the old value is
        // not requested. Arming (relative time) also resets the expiration count.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reading 8 bytes into a live u64, as timerfd(2) requires.
            let n = unsafe { libc::read(fd.as_raw_fd(), (&mut expirations as *mut u64).cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                // A stale readiness from an earlier arming: wait for this one.
                guard.clear_ready();
                continue;
            }
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fires_near_a_sub_millisecond_deadline_and_rearms() {
        let timer = Timer::new();
        for _ in 0..20 {
            let start = Instant::now();
            timer.sleep_until(start + Duration::from_micros(300)).await;
            assert!(start.elapsed() >= Duration::from_micros(300));
        }
        // Re-arming after a cancelled wait replaces the deadline.
        let start = Instant::now();
        let _ = tokio::time::timeout(
            Duration::from_millis(5),
            timer.sleep_until(start + Duration::from_secs(10)),
        )
        .await;
        let start = Instant::now();
        timer.sleep_until(start + Duration::from_millis(2)).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(2) && took < Duration::from_secs(1),
            "{took:?}"
        );
        // A deadline in the past returns at once.
        timer
            .sleep_until(Instant::now() - Duration::from_millis(1))
            .await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn linux_uses_a_timerfd() {
        // How fine it is shows in the benchmarks; a timing assertion here would be flaky under
        // load, so check only that the fine-grained path is the one in use.
        assert!(Timer::new().fd.is_some(), "timerfd could not be created");
    }
}
