//! CUBIC (RFC 9438): after a loss the window follows `W(t) = C (t - K)^3 + W_max`, a cubic that
//! is flat around the window where the last loss happened, with a Reno-friendly floor `W_est`
//! (section 4.3) and fast convergence (section 4.7). Slow start is standard (RFC 9002), with a
//! HyStart-style delay exit (RFC 9406 section 4.2, without conservative slow start): when the
//! smallest RTT of a round exceeds the previous round's by `clamp(rtt / 8, 4 ms, 16 ms)`, queues
//! are building, so slow start ends before it overflows them.

use std::time::{Duration, Instant};

use super::{initial_window, minimum_window, Controller};
use crate::rdt::rtt::RttEstimator;

/// RFC 9438 section 5: C = 0.4.
const C: f64 = 0.4;
/// RFC 9438 section 4.6: beta_cubic = 0.7.
const BETA: f64 = 0.7;

/// The CUBIC controller.
#[derive(Debug, Clone)]
pub struct Cubic {
    mtu: f64,
    window: u64,
    ssthresh: u64,
    /// Window before the last reduction, in bytes.
    w_max: f64,
    /// Time to reach `w_max` again, in seconds.
    k: f64,
    /// Start of the current congestion-avoidance epoch.
    epoch: Option<Instant>,
    /// Reno-friendly window estimate, in bytes.
    w_est: f64,
    recovery_start: Option<Instant>,
    hystart: HyStart,
}

/// Per-round RTT tracking for the slow-start exit.
#[derive(Debug, Clone)]
struct HyStart {
    round_start: Option<Instant>,
    last_min: Option<Duration>,
    cur_min: Option<Duration>,
    samples: u32,
}

/// RFC 9406: RTT samples needed in a round before deciding.
const HYSTART_MIN_SAMPLES: u32 = 8;

impl HyStart {
    /// Feeds an ack during slow start; returns true when slow start should end.
    fn on_ack(&mut self, now: Instant, sent: Instant, rtt: Duration) -> bool {
        if self.round_start.is_none_or(|r| sent > r) {
            // A packet sent after the round began was acknowledged: a new round starts.
            if self.samples >= HYSTART_MIN_SAMPLES {
                self.last_min = self.cur_min;
            }
            self.cur_min = None;
            self.samples = 0;
            self.round_start = Some(now);
        }
        self.cur_min = Some(self.cur_min.map_or(rtt, |m| m.min(rtt)));
        self.samples += 1;
        match (self.last_min, self.cur_min) {
            (Some(last), Some(cur)) if self.samples >= HYSTART_MIN_SAMPLES => {
                let eta = (last / 8).clamp(Duration::from_millis(4), Duration::from_millis(16));
                cur >= last + eta
            }
            _ => false,
        }
    }
}

impl Cubic {
    /// A controller for datagrams of `mtu` bytes.
    pub fn new(mtu: u16) -> Self {
        let window = initial_window(mtu);
        Self {
            mtu: f64::from(mtu),
            window,
            ssthresh: u64::MAX,
            w_max: window as f64,
            k: 0.0,
            epoch: None,
            w_est: window as f64,
            recovery_start: None,
            hystart: HyStart {
                round_start: None,
                last_min: None,
                cur_min: None,
                samples: 0,
            },
        }
    }

    /// `W_cubic(t)` in bytes, `t` in seconds since the epoch.
    fn w_cubic(&self, t: f64) -> f64 {
        C * (t - self.k).powi(3) * self.mtu + self.w_max
    }
}

impl Controller for Cubic {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        if app_limited || self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
            if self.hystart.on_ack(now, sent, rtt.latest()) {
                // Queues are building: leave slow start here, with W_max at this window.
                self.ssthresh = self.window;
                self.w_max = self.window as f64;
            }
            return;
        }
        let cwnd = self.window as f64;
        let epoch = *self.epoch.get_or_insert_with(|| {
            // RFC 9438 section 4.2: K = cbrt((W_max - cwnd) / C), in segments.
            self.k = if self.w_max > cwnd {
                ((self.w_max - cwnd) / self.mtu / C).cbrt()
            } else {
                0.0
            };
            self.w_est = cwnd;
            now
        });
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        let rtt = rtt.get().max(Duration::from_micros(1)).as_secs_f64();
        // Section 4.3: Reno-friendly estimate grows by alpha segments per window acked.
        let alpha = 3.0 * (1.0 - BETA) / (1.0 + BETA);
        self.w_est += alpha * self.mtu * bytes as f64 / cwnd;
        let cubic_now = self.w_cubic(t);
        let new = if cubic_now < self.w_est {
            self.w_est
        } else {
            // Section 4.4: aim for W_cubic(t + RTT), clamped to [cwnd, 1.5 cwnd].
            let target = self.w_cubic(t + rtt).clamp(cwnd, 1.5 * cwnd);
            cwnd + (target - cwnd) * bytes as f64 / cwnd
        };
        if new > cwnd {
            self.window = new as u64;
        }
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent: bool) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        let cwnd = self.window as f64;
        // Section 4.7 fast convergence: release bandwidth when the loss came below the old W_max.
        self.w_max = if cwnd < self.w_max {
            cwnd * (1.0 + BETA) / 2.0
        } else {
            cwnd
        };
        let min = minimum_window(self.mtu as u16);
        self.window = ((cwnd * BETA) as u64).max(min);
        self.ssthresh = self.window;
        self.epoch = None;
        if is_persistent {
            self.window = min;
        }
    }

    fn on_mtu_update(&mut self, mtu: u16) {
        self.mtu = f64::from(mtu);
        self.window = self.window.max(minimum_window(mtu));
    }

    fn window(&self) -> u64 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hystart_exits_slow_start_when_rtt_grows() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rtt = RttEstimator::new(ms(100));
        let mut c = Cubic::new(1000);
        let mut now = t0;
        // Rounds with a steady 20 ms RTT: slow start continues.
        rtt.update(ms(0), ms(20));
        for _ in 0..4 {
            let round = now;
            now += ms(20);
            for _ in 0..10 {
                c.on_ack(now, round + ms(1), 1000, false, &rtt);
            }
        }
        assert_eq!(c.ssthresh, u64::MAX, "still in slow start");
        // The RTT rises by 10 ms (more than 20/8, at least 4 ms): slow start ends.
        rtt.update(ms(0), ms(30));
        let round = now;
        now += ms(30);
        for _ in 0..10 {
            c.on_ack(now, round + ms(1), 1000, false, &rtt);
        }
        assert!(c.ssthresh < u64::MAX, "left slow start");
        // After the exit the window grows by congestion avoidance only (far less than 1 MTU per ack).
        assert!(
            c.window() - c.ssthresh < 100,
            "{} vs {}",
            c.window(),
            c.ssthresh
        );
    }

    #[test]
    fn reduction_and_cubic_growth() {
        let t0 = Instant::now();
        let mut rtt = RttEstimator::new(Duration::from_millis(100));
        rtt.update(Duration::ZERO, Duration::from_millis(100));
        let mut c = Cubic::new(1000);
        assert_eq!(c.window(), 10_000);
        // Slow start to 100 kB.
        for _ in 0..90 {
            c.on_ack(t0, t0, 1000, false, &rtt);
        }
        assert_eq!(c.window(), 100_000);
        let t1 = t0 + Duration::from_millis(1);
        c.on_congestion_event(t1, t0, false);
        assert_eq!(c.window(), 70_000);
        assert_eq!(c.w_max, 100_000.0);
        // K = cbrt(30 segments / 0.4) = cbrt(75) ~ 4.217 s.
        let t2 = t1 + Duration::from_millis(1);
        c.on_ack(t2, t2, 1000, false, &rtt);
        assert!((c.k - 75f64.cbrt()).abs() < 1e-9);
        // Growth is concave: far below W_max the window rises, and it never passes W_max before K.
        let mut now = t2;
        let mut last = c.window();
        for _ in 0..40 {
            now += Duration::from_millis(100);
            for _ in 0..(c.window() / 1000) {
                c.on_ack(now, now, 1000, false, &rtt);
            }
            assert!(c.window() >= last);
            last = c.window();
        }
        // After 4 s (just before K) the window approaches but stays within 2% of W_max.
        assert!(
            c.window() as f64 > 0.95 * 100_000.0 && (c.window() as f64) < 1.02 * 100_000.0,
            "{}",
            c.window()
        );
        // Fast convergence: a loss below W_max lowers W_max further.
        c.w_max = 200_000.0;
        let w = c.window() as f64;
        c.on_congestion_event(
            now + Duration::from_secs(1),
            now + Duration::from_millis(500),
            false,
        );
        assert!((c.w_max - w * 0.85).abs() < 1.0);
    }
}
