//! Pacing: a token bucket that spreads a congestion window over a round trip.
//!
//! The bucket refills at `1.25 * cwnd / smoothed_rtt` (RFC 9002 section 7.7 suggests N = 1.25).
//! It holds what that rate sends in [`BURST_INTERVAL`] (2 ms), but at least [`MIN_BURST_PACKETS`]
//! and at most [`MAX_BURST_PACKETS`] full datagrams, as quinn's pacer does. When it runs dry the
//! sender waits until it is full again and then sends a burst, so a driver is woken about once
//! per burst interval rather than once per datagram: at loopback rates a per-datagram timer would
//! need microsecond precision, and real timers round up to milliseconds. Without pacing, a 10 MB
//! window released at once overflows every queue on the path.

use std::time::{Duration, Instant};

/// How long a full bucket lasts at the pacing rate.
pub const BURST_INTERVAL: Duration = Duration::from_millis(2);
/// Smallest bucket, in datagrams.
pub const MIN_BURST_PACKETS: u64 = 10;
/// Largest bucket, in datagrams.
pub const MAX_BURST_PACKETS: u64 = 256;

/// The token bucket.
#[derive(Debug, Clone)]
pub struct Pacer {
    tokens: u64,
    last: Option<Instant>,
}

impl Pacer {
    /// A full bucket for datagrams of `mtu` bytes.
    pub fn new(mtu: u16) -> Self {
        Self {
            tokens: MIN_BURST_PACKETS * u64::from(mtu),
            last: None,
        }
    }

    /// Bytes the bucket holds for this window, RTT and datagram size.
    pub fn capacity(mtu: u16, window: u64, rtt: Duration) -> u64 {
        let mtu = u64::from(mtu);
        let rtt_ns = rtt.as_nanos().max(1);
        let burst = (u128::from(window) * BURST_INTERVAL.as_nanos() / rtt_ns) as u64;
        burst.clamp(MIN_BURST_PACKETS * mtu, MAX_BURST_PACKETS * mtu)
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
        let capacity = Self::capacity(mtu, window, rtt).max(size);
        let rtt_ns = rtt.as_nanos().max(1);
        // Bytes per second at 1.25 x window / rtt, in u128 to avoid overflow.
        let rate = (u128::from(window) * 5 * 1_000_000_000 / (4 * rtt_ns)).max(1);
        match self.last {
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_nanos();
                let add = (elapsed * rate / 1_000_000_000).min(u128::from(u64::MAX)) as u64;
                if add > 0 {
                    self.tokens = self.tokens.saturating_add(add).min(capacity);
                    self.last = Some(now);
                }
            }
            None => {
                self.tokens = self.tokens.min(capacity);
                self.last = Some(now);
            }
        }
        if self.tokens >= size {
            return None;
        }
        // Wait until the bucket is full, then send a burst.
        let need = u128::from(capacity - self.tokens);
        let wait_ns = (need * 1_000_000_000).div_ceil(rate);
        let wait = Duration::from_nanos(wait_ns.min(u128::from(u64::MAX)) as u64);
        Some(self.last.unwrap_or(now) + wait)
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
    fn capacity_follows_window_over_rtt() {
        let ms = Duration::from_millis;
        // 100 kB per 100 ms: 2 ms worth is 2 kB, below the 10-datagram floor.
        assert_eq!(Pacer::capacity(1000, 100_000, ms(100)), 10_000);
        // 10 MB per 10 ms: 2 ms worth is 2 MB, above the 256-datagram ceiling.
        assert_eq!(Pacer::capacity(1000, 10_000_000, ms(10)), 256_000);
        // 5 MB per 100 ms: 100 kB in 2 ms.
        assert_eq!(Pacer::capacity(1000, 5_000_000, ms(100)), 100_000);
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(100);
        let window = 100_000; // 1.25 MB/s at 100 ms; bucket of 10 datagrams.
        let mut p = Pacer::new(1000);
        for _ in 0..10 {
            assert_eq!(p.delay(t0, 1000, 1000, window, rtt), None);
            p.on_sent(1000);
        }
        let wait = p
            .delay(t0, 1000, 1000, window, rtt)
            .expect("bucket is empty");
        // Refilling 10 datagrams at 1.25 MB/s takes 8 ms.
        assert_eq!(wait - t0, Duration::from_millis(8));
        for _ in 0..10 {
            assert_eq!(p.delay(wait, 1000, 1000, window, rtt), None);
            p.on_sent(1000);
        }
        // Over a long run the average rate is the pacing rate.
        let mut now = wait;
        let mut sent = 0u64;
        while now < wait + Duration::from_secs(1) {
            match p.delay(now, 1000, 1000, window, rtt) {
                None => {
                    p.on_sent(1000);
                    sent += 1000;
                }
                Some(t) => now = t,
            }
        }
        assert!((1_240_000..=1_262_000).contains(&sent), "{sent}");
        // Idle for long: never more than the bucket.
        let later = now + Duration::from_secs(10);
        let mut burst = 0;
        while p.delay(later, 1000, 1000, window, rtt).is_none() {
            p.on_sent(1000);
            burst += 1;
        }
        assert_eq!(burst, 10);
    }
}
