//! Round-trip time estimation (RFC 9002 section 5).
//!
//! `smoothed_rtt` and `rttvar` are exponentially weighted averages of samples; the ack delay the peer
//! reports is subtracted from a sample when that does not take it below `min_rtt`.

use std::time::Duration;

/// The RTT estimator.
#[derive(Debug, Clone, Copy)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Option<Duration>,
    var: Duration,
    min: Duration,
    initial: Duration,
}

impl RttEstimator {
    /// An estimator that assumes `initial` until the first sample.
    pub fn new(initial: Duration) -> Self {
        Self {
            latest: initial,
            smoothed: None,
            var: initial / 2,
            min: initial,
            initial,
        }
    }

    /// The smoothed RTT (the initial RTT before any sample).
    pub fn get(&self) -> Duration {
        self.smoothed.unwrap_or(self.initial)
    }

    /// The latest sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// The smallest sample seen.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// RTT variation.
    pub fn var(&self) -> Duration {
        self.var
    }

    /// Whether at least one sample was taken.
    pub fn has_sample(&self) -> bool {
        self.smoothed.is_some()
    }

    /// The probe timeout base: `smoothed + max(4 * rttvar, 1 ms)` (without max_ack_delay).
    pub fn pto_base(&self) -> Duration {
        self.get() + (4 * self.var).max(Duration::from_millis(1))
    }

    /// Feeds one sample; `ack_delay` is the peer's reported delay, already capped at max_ack_delay.
    pub fn update(&mut self, ack_delay: Duration, rtt: Duration) {
        self.latest = rtt;
        self.min = if self.smoothed.is_none() {
            rtt
        } else {
            self.min.min(rtt)
        };
        match self.smoothed {
            None => {
                self.smoothed = Some(rtt);
                self.var = rtt / 2;
            }
            Some(smoothed) => {
                let adjusted = if rtt >= self.min + ack_delay {
                    rtt - ack_delay
                } else {
                    rtt
                };
                let sample_var = smoothed.abs_diff(adjusted);
                self.var = (3 * self.var + sample_var) / 4;
                self.smoothed = Some((7 * smoothed + adjusted) / 8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_then_ewma() {
        let ms = Duration::from_millis;
        let mut r = RttEstimator::new(ms(333));
        assert_eq!(r.get(), ms(333));
        r.update(ms(0), ms(100));
        assert_eq!((r.get(), r.var(), r.min()), (ms(100), ms(50), ms(100)));
        // Ack delay is subtracted when the result stays above min_rtt.
        r.update(ms(20), ms(180));
        assert_eq!(r.get(), (ms(700) + ms(160)) / 8);
        assert_eq!(r.var(), (ms(150) + ms(60)) / 4);
        // ...but not when it would go below min_rtt.
        let mut r2 = RttEstimator::new(ms(333));
        r2.update(ms(0), ms(100));
        r2.update(ms(50), ms(120));
        assert_eq!(r2.get(), (ms(700) + ms(120)) / 8);
        assert_eq!(r2.min(), ms(100));
        assert!(r2.pto_base() > r2.get());
    }
}
