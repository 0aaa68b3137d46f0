//! NewReno (RFC 9002 section 7.3): slow start, then one datagram per window per round trip; halve on
//! loss, at most once per round trip (the recovery period).

use std::time::Instant;

use super::{initial_window, minimum_window, Controller};
use crate::rdt::rtt::RttEstimator;

/// The NewReno controller.
#[derive(Debug, Clone)]
pub struct NewReno {
    mtu: u64,
    window: u64,
    ssthresh: u64,
    bytes_acked: u64,
    recovery_start: Option<Instant>,
}

impl NewReno {
    /// A controller for datagrams of `mtu` bytes.
    pub fn new(mtu: u16) -> Self {
        Self {
            mtu: u64::from(mtu),
            window: initial_window(mtu),
            ssthresh: u64::MAX,
            bytes_acked: 0,
            recovery_start: None,
        }
    }
}

impl Controller for NewReno {
    fn on_ack(
        &mut self,
        _now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        _: &RttEstimator,
    ) {
        if app_limited || self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
            if self.window >= self.ssthresh {
                self.bytes_acked = self.window - self.ssthresh;
            }
        } else {
            self.bytes_acked += bytes;
            if self.bytes_acked >= self.window {
                self.bytes_acked -= self.window;
                self.window += self.mtu;
            }
        }
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent: bool) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        let min = minimum_window(self.mtu as u16);
        self.window = (self.window / 2).max(min);
        self.ssthresh = self.window;
        self.bytes_acked = 0;
        if is_persistent {
            self.window = min;
        }
    }

    fn on_mtu_update(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu);
        self.window = self.window.max(minimum_window(mtu));
    }

    fn window(&self) -> u64 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slow_start_halving_and_avoidance() {
        let t0 = Instant::now();
        let rtt = RttEstimator::new(Duration::from_millis(100));
        let mut c = NewReno::new(1200);
        assert_eq!(c.window(), 12000);
        c.on_ack(t0, t0, 1200, false, &rtt);
        assert_eq!(c.window(), 13200);
        // App-limited acks do not grow the window.
        c.on_ack(t0, t0, 1200, true, &rtt);
        assert_eq!(c.window(), 13200);
        let t1 = t0 + Duration::from_millis(10);
        c.on_congestion_event(t1, t0, false);
        assert_eq!(c.window(), 6600);
        // A second loss from the same flight is ignored (recovery period).
        c.on_congestion_event(t1 + Duration::from_millis(1), t0, false);
        assert_eq!(c.window(), 6600);
        // Acks of packets sent before recovery started do not grow the window.
        c.on_ack(t1, t0, 1200, false, &rtt);
        assert_eq!(c.window(), 6600);
        // Congestion avoidance: one MTU per window of acked bytes.
        let t2 = t1 + Duration::from_millis(1);
        for _ in 0..5 {
            c.on_ack(t2, t2, 1200, false, &rtt);
        }
        assert_eq!(c.window(), 6600);
        c.on_ack(t2, t2, 1200, false, &rtt);
        assert_eq!(c.window(), 7800);
        c.on_congestion_event(t2 + Duration::from_millis(5), t2, true);
        assert_eq!(c.window(), 2400);
    }
}
