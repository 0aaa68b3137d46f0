//! Pacing: a token bucket that spreads a congestion window over a round trip.
//!
//! The rate is `1.25 * cwnd / smoothed_rtt` (RFC 9002 section 7.7 suggests N = 1.25) and the bucket
//! holds at most a burst of [`BURST_PACKETS`] full datagrams, so a sender that was idle starts with a
//! short burst and then sends evenly. Without pacing, a 10 MB window released at once overflows every
//! queue on the path.

use std::time::{Duration, Instant};

/// Datagrams the bucket can hold.
pub const BURST_PACKETS: u64 = 10;

/// The token bucket.
#[derive(Debug, Clone)]
pub struct Pacer {
    tokens: u64,
    capacity: u64,
    last: Option<Instant>,
}

impl Pacer {
    /// A full bucket for datagrams of `mtu` bytes.
    pub fn new(mtu: u16) -> Self {
        let capacity = BURST_PACKETS * u64::from(mtu);
        Self {
            tokens: capacity,
            capacity,
            last: None,
        }
    }

    /// Returns `None` if `size` bytes may go now, else the instant at which they may.
    pub fn delay(
        &mut self,
        now: Instant,
        size: u64,
        mtu: u16,
        window: u64,
        rtt: Duration,
    ) -> Option<Instant> {
        self.capacity = (BURST_PACKETS * u64::from(mtu)).max(size);
        let rtt_ns = rtt.as_nanos().max(1) as u64;
        // Bytes per second at 1.25 x window / rtt, computed in u128 to avoid overflow.
        let rate = (u128::from(window) * 5 * 1_000_000_000 / (4 * u128::from(rtt_ns))).max(1);
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_nanos();
            let add = (elapsed * rate / 1_000_000_000) as u64;
            if add > 0 {
                self.tokens = (self.tokens + add).min(self.capacity);
                self.last = Some(now);
            }
        } else {
            self.last = Some(now);
        }
        if self.tokens >= size {
            return None;
        }
        let need = u128::from(size - self.tokens);
        let wait_ns = (need * 1_000_000_000).div_ceil(rate);
        Some(self.last.unwrap_or(now) + Duration::from_nanos(wait_ns.min(u64::MAX as u128) as u64))
    }

    /// Consumes tokens for a sent datagram.
    pub fn on_sent(&mut self, size: u64) {
        self.tokens = self.tokens.saturating_sub(size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(100);
        let window = 100_000; // 1.25 MB/s at 100 ms.
        let mut p = Pacer::new(1000);
        for _ in 0..10 {
            assert_eq!(p.delay(t0, 1000, 1000, window, rtt), None);
            p.on_sent(1000);
        }
        let wait = p
            .delay(t0, 1000, 1000, window, rtt)
            .expect("bucket is empty");
        // 1000 bytes at 1.25 MB/s = 800 us.
        assert_eq!(wait - t0, Duration::from_micros(800));
        assert_eq!(p.delay(wait, 1000, 1000, window, rtt), None);
        // Idle for long: never more than the burst.
        let later = t0 + Duration::from_secs(10);
        p.on_sent(1000);
        let mut sent = 0;
        while p.delay(later, 1000, 1000, window, rtt).is_none() {
            p.on_sent(1000);
            sent += 1;
        }
        assert_eq!(sent, 10);
    }
}
