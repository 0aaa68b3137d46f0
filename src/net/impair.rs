//! A seeded network impairment model: loss, bursty loss, delay, jitter, reordering, duplication,
//! bit corruption, a bandwidth cap and a tail-drop queue.
//!
//! The kernel on our machines has no `netem`, so end-to-end tests and the transport benchmark emulate
//! a bad path here, between a transport and its UDP socket. This module is pure logic: [`Impairment`]
//! is given `now` and the length of each outgoing datagram and returns a [`Verdict`] (drop it, or
//! deliver it at a given time, possibly corrupted, possibly twice). It owns no socket, no timer and
//! no clock; [`super::udp::ImpairedSocket`] applies the verdicts to a real socket with a delay queue.
//! Every decision comes from a ChaCha RNG seeded from [`ImpairmentConfig::seed`], so a run with the
//! same seed and the same sequence of calls makes the same decisions.
//!
//! Impairment is off unless explicitly enabled: by a test or benchmark that builds an
//! [`ImpairmentConfig`], or by the `LEFT_IMPAIR` environment variable (see
//! [`ImpairmentConfig::from_env`] and [`ImpairmentConfig::parse`] for the syntax), for example
//! `LEFT_IMPAIR="loss=0.01,delay=5ms,seed=7"`.
//!
//! The order of decisions for one datagram is: random loss, then the Gilbert-Elliott burst loss
//! chain, then the bottleneck queue (tail drop when the backlog would exceed `queue_limit_bytes`),
//! then serialisation at `rate_limit_bytes_per_s`, then propagation delay with jitter, then
//! reordering (an extra hold of `reorder_delay`, so later datagrams overtake it), then duplication and
//! corruption.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Name of the environment variable that switches impairment on for the real driver.
pub const IMPAIR_ENV: &str = "LEFT_IMPAIR";

/// Extra hold applied to a reordered datagram when the configuration does not name one.
pub const DEFAULT_REORDER_DELAY: Duration = Duration::from_millis(1);

/// What to do to outgoing datagrams. [`Default`] is a perfect path (no impairment).
#[derive(Debug, Clone, PartialEq)]
pub struct ImpairmentConfig {
    /// Probability in `[0, 1]` that a datagram is lost, independently of every other.
    pub loss: f64,
    /// Bursty loss from a two-state Gilbert-Elliott chain, applied on top of `loss`.
    pub burst_loss: Option<GilbertElliott>,
    /// One-way propagation delay added to every datagram.
    pub delay: Duration,
    /// Each datagram's delay is drawn uniformly from `delay ± jitter` (never below zero), so a
    /// jitter larger than the gap between two datagrams can reorder them.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a datagram is held back an extra `reorder_delay`.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Probability in `[0, 1]` that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability in `[0, 1]` that one random bit of a datagram is flipped.
    pub corrupt: f64,
    /// Bottleneck bandwidth in bytes per second; `None` is unlimited.
    pub rate_limit_bytes_per_s: Option<u64>,
    /// Bottleneck queue size in bytes (tail drop); `None` is unbounded. Only meaningful with a
    /// rate limit, since without one the queue never holds anything.
    pub queue_limit_bytes: Option<u64>,
    /// Seed of the decision RNG.
    pub seed: u64,
}

/// A Gilbert-Elliott two-state loss model: a "good" and a "bad" state, each with its own loss
/// probability, and per-datagram transition probabilities between them.
///
/// With `loss_in_good = 0` and `loss_in_bad = 1` (the Gilbert model) the mean burst length is
/// `1 / p_bad_to_good` datagrams and the stationary loss rate is
/// `p_good_to_bad / (p_good_to_bad + p_bad_to_good)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Per-datagram probability of moving from the good to the bad state.
    pub p_good_to_bad: f64,
    /// Per-datagram probability of moving from the bad to the good state.
    pub p_bad_to_good: f64,
    /// Loss probability while in the good state.
    pub loss_in_good: f64,
    /// Loss probability while in the bad state.
    pub loss_in_bad: f64,
}

impl GilbertElliott {
    /// The long-run fraction of datagrams this chain loses.
    pub fn stationary_loss(&self) -> f64 {
        let total = self.p_good_to_bad + self.p_bad_to_good;
        if total == 0.0 {
            return self.loss_in_good;
        }
        let in_bad = self.p_good_to_bad / total;
        in_bad * self.loss_in_bad + (1.0 - in_bad) * self.loss_in_good
    }
}

impl Default for ImpairmentConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            burst_loss: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: DEFAULT_REORDER_DELAY,
            duplicate: 0.0,
            corrupt: 0.0,
            rate_limit_bytes_per_s: None,
            queue_limit_bytes: None,
            seed: 0,
        }
    }
}

/// A bad `LEFT_IMPAIR` string or an out-of-range configuration value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ImpairmentError {
    /// An item is not `key=value`.
    #[error("impairment item {0:?} is not key=value")]
    NotKeyValue(String),
    /// The key is not one we know.
    #[error("unknown impairment key {0:?}")]
    UnknownKey(String),
    /// The value could not be parsed for its key.
    #[error("bad value {value:?} for impairment key {key}: {reason}")]
    BadValue {
        /// The key whose value is bad.
        key: String,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A probability outside `[0, 1]`.
    #[error("impairment {name} must be a probability in [0, 1], got {value}")]
    NotProbability {
        /// Which field.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A zero rate limit would never deliver anything.
    #[error("impairment rate limit must be positive")]
    ZeroRate,
}

impl ImpairmentConfig {
    /// Whether this configuration changes anything at all; a socket with an inactive
    /// configuration takes the plain fast path.
    pub fn is_active(&self) -> bool {
        self.loss > 0.0
            || self.burst_loss.is_some()
            || !self.delay.is_zero()
            || !self.jitter.is_zero()
            || self.reorder > 0.0
            || self.duplicate > 0.0
            || self.corrupt > 0.0
            || self.rate_limit_bytes_per_s.is_some()
    }

    /// Checks that every probability is in `[0, 1]` and the rate limit is positive.
    pub fn validate(&self) -> Result<(), ImpairmentError> {
        let mut probabilities = vec![
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
        ];
        if let Some(ge) = &self.burst_loss {
            probabilities.extend([
                ("burst p_good_to_bad", ge.p_good_to_bad),
                ("burst p_bad_to_good", ge.p_bad_to_good),
                ("burst loss_in_good", ge.loss_in_good),
                ("burst loss_in_bad", ge.loss_in_bad),
            ]);
        }
        for (name, value) in probabilities {
            // `contains` is false for NaN, so NaN is refused too.
            if !(0.0..=1.0).contains(&value) {
                return Err(ImpairmentError::NotProbability { name, value });
            }
        }
        if self.rate_limit_bytes_per_s == Some(0) {
            return Err(ImpairmentError::ZeroRate);
        }
        Ok(())
    }

    /// The same configuration with another seed; used to give each socket of a test its own
    /// independent decision stream from one configuration.
    pub fn with_seed(&self, seed: u64) -> Self {
        Self {
            seed,
            ..self.clone()
        }
    }

    /// Reads [`IMPAIR_ENV`]: `Ok(None)` when it is unset or empty, an error when it is malformed.
    pub fn from_env() -> Result<Option<Self>, ImpairmentError> {
        match std::env::var(IMPAIR_ENV) {
            Ok(s) if !s.trim().is_empty() => s.parse().map(Some),
            _ => Ok(None),
        }
    }

    /// Parses a comma-separated list of `key=value` items. Unnamed fields keep their defaults.
    ///
    /// | key | value | field |
    /// |---|---|---|
    /// | `loss` | probability, e.g. `0.01` | `loss` |
    /// | `burst` | `P/R[/LOSS_BAD[/LOSS_GOOD]]`, e.g. `0.01/0.3` | `burst_loss` (loss in bad defaults to 1, in good to 0) |
    /// | `delay` | duration, e.g. `5ms`, `200us`, `1s` | `delay` |
    /// | `jitter` | duration | `jitter` |
    /// | `reorder` | probability | `reorder` |
    /// | `reorder_delay` | duration | `reorder_delay` |
    /// | `duplicate` | probability | `duplicate` |
    /// | `corrupt` | probability | `corrupt` |
    /// | `rate` | bytes per second, with an optional `k`/`m`/`g` (decimal) prefix and an optional `bit` suffix: `12500000`, `100mbit`, `1gbit`, `50m` | `rate_limit_bytes_per_s` |
    /// | `queue` | bytes with optional `k`/`m`/`g` (decimal), e.g. `256k` | `queue_limit_bytes` |
    /// | `seed` | unsigned integer | `seed` |
    pub fn parse(s: &str) -> Result<Self, ImpairmentError> {
        let mut config = Self::default();
        for item in s.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ImpairmentError::NotKeyValue(item.to_owned()))?;
            let (key, value) = (key.trim(), value.trim());
            let bad = |reason| ImpairmentError::BadValue {
                key: key.to_owned(),
                value: value.to_owned(),
                reason,
            };
            let prob = || value.parse::<f64>().map_err(|_| bad("not a number"));
            match key {
                "loss" => config.loss = prob()?,
                "reorder" => config.reorder = prob()?,
                "duplicate" => config.duplicate = prob()?,
                "corrupt" => config.corrupt = prob()?,
                "delay" => {
                    config.delay = crate::duration::parse_precise(value)
                        .ok_or_else(|| bad("not a duration like 5ms"))?
                }
                "jitter" => {
                    config.jitter = crate::duration::parse_precise(value)
                        .ok_or_else(|| bad("not a duration like 1ms"))?
                }
                "reorder_delay" => {
                    config.reorder_delay = crate::duration::parse_precise(value)
                        .ok_or_else(|| bad("not a duration like 1ms"))?
                }
                "rate" => {
                    config.rate_limit_bytes_per_s = Some(
                        parse_rate(value)
                            .ok_or_else(|| bad("not a rate like 100mbit or 12500000"))?,
                    )
                }
                "queue" => {
                    config.queue_limit_bytes =
                        Some(parse_size(value).ok_or_else(|| bad("not a size like 256k"))?)
                }
                "seed" => {
                    config.seed = value.parse().map_err(|_| bad("not an unsigned integer"))?
                }
                "burst" => {
                    let parts = value
                        .split('/')
                        .map(|p| p.trim().parse::<f64>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| bad("not numbers separated by /"))?;
                    if !(2..=4).contains(&parts.len()) {
                        return Err(bad("expected P/R[/LOSS_BAD[/LOSS_GOOD]]"));
                    }
                    config.burst_loss = Some(GilbertElliott {
                        p_good_to_bad: parts[0],
                        p_bad_to_good: parts[1],
                        loss_in_bad: parts.get(2).copied().unwrap_or(1.0),
                        loss_in_good: parts.get(3).copied().unwrap_or(0.0),
                    });
                }
                _ => return Err(ImpairmentError::UnknownKey(key.to_owned())),
            }
        }
        config.validate()?;
        Ok(config)
    }
}

impl FromStr for ImpairmentConfig {
    type Err = ImpairmentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ImpairmentConfig {
    /// Formats in the syntax [`ImpairmentConfig::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "loss={}", self.loss)?;
        if let Some(ge) = &self.burst_loss {
            write!(
                f,
                ",burst={}/{}/{}/{}",
                ge.p_good_to_bad, ge.p_bad_to_good, ge.loss_in_bad, ge.loss_in_good
            )?;
        }
        write!(
            f,
            ",delay={}us,jitter={}us",
            self.delay.as_micros(),
            self.jitter.as_micros()
        )?;
        write!(
            f,
            ",reorder={},reorder_delay={}us",
            self.reorder,
            self.reorder_delay.as_micros()
        )?;
        write!(f, ",duplicate={},corrupt={}", self.duplicate, self.corrupt)?;
        if let Some(rate) = self.rate_limit_bytes_per_s {
            write!(f, ",rate={rate}")?;
        }
        if let Some(queue) = self.queue_limit_bytes {
            write!(f, ",queue={queue}")?;
        }
        write!(f, ",seed={}", self.seed)
    }
}

/// The decision for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Do not deliver it.
    Drop(DropReason),
    /// Deliver it (at the given time, possibly altered, possibly twice).
    Deliver(Delivery),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Independent random loss.
    Random,
    /// The Gilbert-Elliott chain lost it.
    Burst,
    /// The bottleneck queue was full (tail drop).
    QueueFull,
}

/// How to deliver one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// When the datagram should reach the wire.
    pub at: Instant,
    /// A bit to flip before sending, if the datagram is corrupted.
    pub corrupt: Option<BitFlip>,
    /// When to send a second copy, if the datagram is duplicated.
    pub duplicate_at: Option<Instant>,
}

/// One flipped bit: `bytes[byte] ^= mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitFlip {
    /// Index of the byte to alter.
    pub byte: usize,
    /// Single-bit mask XORed into it.
    pub mask: u8,
}

impl BitFlip {
    /// Applies the flip to `bytes`; does nothing if `bytes` is too short.
    pub fn apply(&self, bytes: &mut [u8]) {
        if let Some(b) = bytes.get_mut(self.byte) {
            *b ^= self.mask;
        }
    }
}

/// Counters of what an [`Impairment`] decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImpairmentStats {
    /// Datagrams decided on.
    pub datagrams: u64,
    /// Dropped by random loss.
    pub dropped_random: u64,
    /// Dropped by the burst-loss chain.
    pub dropped_burst: u64,
    /// Dropped because the bottleneck queue was full.
    pub dropped_queue: u64,
    /// Held back for reordering.
    pub reordered: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Delivered with a flipped bit.
    pub corrupted: u64,
}

/// The stateful decision maker for one direction of one path.
#[derive(Debug, Clone)]
pub struct Impairment {
    config: ImpairmentConfig,
    rng: ChaCha8Rng,
    /// Gilbert-Elliott state: true while in the bad state.
    in_bad_state: bool,
    /// When the bottleneck link finishes serialising everything accepted so far.
    link_free_at: Option<Instant>,
    stats: ImpairmentStats,
}

impl Impairment {
    /// Builds the decision maker; the configuration must pass [`ImpairmentConfig::validate`].
    pub fn new(config: ImpairmentConfig) -> Result<Self, ImpairmentError> {
        config.validate()?;
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            in_bad_state: false,
            link_free_at: None,
            stats: ImpairmentStats::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ImpairmentConfig {
        &self.config
    }

    /// What has been decided so far.
    pub fn stats(&self) -> ImpairmentStats {
        self.stats
    }

    /// Bytes waiting in the bottleneck queue at `now` (zero without a rate limit).
    pub fn backlog_bytes(&self, now: Instant) -> u64 {
        match (self.config.rate_limit_bytes_per_s, self.link_free_at) {
            (Some(rate), Some(free)) if free > now => {
                let secs = free.duration_since(now).as_secs_f64();
                (secs * rate as f64).ceil() as u64
            }
            _ => 0,
        }
    }

    /// Decides the fate of one datagram of `len` bytes handed to the network at `now`.
    ///
    /// Calls must come with non-decreasing `now`; an earlier `now` is treated as the latest seen.
    pub fn decide(&mut self, now: Instant, len: usize) -> Verdict {
        self.stats.datagrams += 1;
        let config = &self.config;
        if config.loss > 0.0 && self.rng.random_bool(config.loss) {
            self.stats.dropped_random += 1;
            return Verdict::Drop(DropReason::Random);
        }
        if let Some(ge) = config.burst_loss {
            // Advance the chain once per datagram, then lose with the new state's probability.
            let flip = if self.in_bad_state {
                ge.p_bad_to_good
            } else {
                ge.p_good_to_bad
            };
            if self.rng.random_bool(flip) {
                self.in_bad_state = !self.in_bad_state;
            }
            let p = if self.in_bad_state {
                ge.loss_in_bad
            } else {
                ge.loss_in_good
            };
            if p > 0.0 && self.rng.random_bool(p) {
                self.stats.dropped_burst += 1;
                return Verdict::Drop(DropReason::Burst);
            }
        }
        let mut at = now;
        if let Some(rate) = config.rate_limit_bytes_per_s {
            if let Some(limit) = config.queue_limit_bytes {
                if self.backlog_bytes(now) + len as u64 > limit {
                    self.stats.dropped_queue += 1;
                    return Verdict::Drop(DropReason::QueueFull);
                }
            }
            let start = self.link_free_at.map_or(now, |free| free.max(now));
            let serialise = Duration::from_secs_f64(len as f64 / rate as f64);
            at = start + serialise;
            self.link_free_at = Some(at);
        }
        at += propagation_delay(&mut self.rng, config.delay, config.jitter);
        if config.reorder > 0.0 && self.rng.random_bool(config.reorder) {
            self.stats.reordered += 1;
            at += config.reorder_delay;
        }
        let duplicate_at = if config.duplicate > 0.0 && self.rng.random_bool(config.duplicate) {
            self.stats.duplicated += 1;
            Some(at)
        } else {
            None
        };
        let corrupt = if config.corrupt > 0.0 && len > 0 && self.rng.random_bool(config.corrupt) {
            self.stats.corrupted += 1;
            Some(BitFlip {
                byte: self.rng.random_range(0..len),
                mask: 1 << self.rng.random_range(0..8u32),
            })
        } else {
            None
        };
        Verdict::Deliver(Delivery {
            at,
            corrupt,
            duplicate_at,
        })
    }
}

/// Draws a delay uniformly from `delay ± jitter`, never below zero.
fn propagation_delay(rng: &mut ChaCha8Rng, delay: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let jitter_ns = jitter.as_nanos() as i128;
    let offset = rng.random_range(-jitter_ns..=jitter_ns);
    let total = (delay.as_nanos() as i128 + offset).max(0);
    Duration::from_nanos(total as u64)
}

/// Parses `256k`, `4m`, `1g`, `1200` into bytes (decimal prefixes).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        _ => return None,
    };
    let bytes = number * scale;
    (0.0..1e18).contains(&bytes).then_some(bytes as u64)
}

/// Parses a rate: a size per second, or with a `bit` suffix bits per second.
fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let rate = match s.strip_suffix("bit") {
        Some(bits) => parse_size(bits)? / 8,
        None => parse_size(&s)?,
    };
    (rate > 0).then_some(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 200_000;

    fn run(config: ImpairmentConfig, n: usize) -> (Impairment, Vec<Verdict>) {
        run_at(Instant::now(), config, n)
    }

    fn run_at(now: Instant, config: ImpairmentConfig, n: usize) -> (Impairment, Vec<Verdict>) {
        let mut imp = Impairment::new(config).expect("valid config");
        let verdicts = (0..n).map(|_| imp.decide(now, 1200)).collect();
        (imp, verdicts)
    }

    /// Checks a binomial count against its mean with a 5-sigma band.
    fn assert_rate(count: u64, n: usize, p: f64, what: &str) {
        let mean = n as f64 * p;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt().max(1.0);
        assert!(
            (count as f64 - mean).abs() <= 5.0 * sigma,
            "{what}: {count} of {n}, expected {mean:.0} ± {:.0}",
            5.0 * sigma
        );
    }

    #[test]
    fn default_is_inactive_and_delivers_everything_now() {
        let config = ImpairmentConfig {
            seed: 99,
            ..Default::default()
        };
        assert!(!config.is_active());
        let now = Instant::now();
        let mut imp = Impairment::new(config).unwrap();
        for _ in 0..1000 {
            assert_eq!(
                imp.decide(now, 1200),
                Verdict::Deliver(Delivery {
                    at: now,
                    corrupt: None,
                    duplicate_at: None
                })
            );
        }
        assert!(ImpairmentConfig {
            loss: 0.1,
            ..Default::default()
        }
        .is_active());
        assert!(ImpairmentConfig {
            reorder: 0.1,
            ..Default::default()
        }
        .is_active());
    }

    #[test]
    fn random_loss_matches_probability() {
        for (seed, p) in [(1, 0.01), (2, 0.05), (3, 0.3)] {
            let (imp, _) = run(
                ImpairmentConfig {
                    loss: p,
                    seed,
                    ..Default::default()
                },
                N,
            );
            assert_rate(
                imp.stats().dropped_random,
                N,
                p,
                &format!("loss seed {seed}"),
            );
        }
    }

    #[test]
    fn same_seed_same_decisions_other_seed_differs() {
        let config = ImpairmentConfig {
            loss: 0.1,
            corrupt: 0.05,
            duplicate: 0.05,
            seed: 7,
            ..Default::default()
        };
        let now = Instant::now();
        let (_, a) = run_at(now, config.clone(), 5000);
        let (_, b) = run_at(now, config.clone(), 5000);
        let (_, c) = run_at(now, config.with_seed(8), 5000);
        assert!(a == b, "seed 7 decided differently on two runs");
        assert!(a != c, "seeds 7 and 8 decided the same 5000 times");
    }

    #[test]
    fn gilbert_elliott_loss_is_bursty_with_expected_rate_and_burst_length() {
        let ge = GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.25,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        };
        let (imp, verdicts) = run(
            ImpairmentConfig {
                burst_loss: Some(ge),
                seed: 11,
                ..Default::default()
            },
            N,
        );
        let lost = imp.stats().dropped_burst as f64;
        let rate = lost / N as f64;
        let expected = ge.stationary_loss();
        assert!(
            (rate - expected).abs() < expected * 0.15,
            "burst loss rate {rate}, expected {expected}"
        );
        // Mean run length of consecutive losses is 1 / p_bad_to_good = 4.
        let mut runs = Vec::new();
        let mut current = 0;
        for v in &verdicts {
            if matches!(v, Verdict::Drop(DropReason::Burst)) {
                current += 1;
            } else if current > 0 {
                runs.push(current);
                current = 0;
            }
        }
        let mean_run = runs.iter().sum::<usize>() as f64 / runs.len() as f64;
        assert!(
            (mean_run - 4.0).abs() < 0.4,
            "mean burst {mean_run}, expected 4"
        );
        // Independent loss at the same rate would give a mean run of about 1 / (1 - rate).
        assert!(mean_run > 2.0 / (1.0 - rate));
    }

    #[test]
    fn duplicate_and_corrupt_rates_and_bit_flips_are_in_range() {
        let (imp, verdicts) = run(
            ImpairmentConfig {
                duplicate: 0.02,
                corrupt: 0.03,
                seed: 5,
                ..Default::default()
            },
            N,
        );
        assert_rate(imp.stats().duplicated, N, 0.02, "duplicate");
        assert_rate(imp.stats().corrupted, N, 0.03, "corrupt");
        let mut bytes_hit = [0u32; 1200];
        for v in verdicts {
            if let Verdict::Deliver(Delivery {
                corrupt: Some(flip),
                ..
            }) = v
            {
                assert!(flip.byte < 1200);
                assert_eq!(flip.mask.count_ones(), 1);
                bytes_hit[flip.byte] += 1;
            }
        }
        // 6000 flips over 1200 positions: every region of the datagram is hit.
        assert!(bytes_hit.chunks(100).all(|c| c.iter().sum::<u32>() > 0));
        let mut data = vec![0u8; 4];
        BitFlip {
            byte: 2,
            mask: 0x10,
        }
        .apply(&mut data);
        assert_eq!(data, [0, 0, 0x10, 0]);
        BitFlip {
            byte: 9,
            mask: 0x10,
        }
        .apply(&mut data); // out of range: no-op, no panic
    }

    #[test]
    fn delay_jitter_and_reorder_bounds() {
        let config = ImpairmentConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            reorder: 0.1,
            reorder_delay: Duration::from_millis(5),
            seed: 3,
            ..Default::default()
        };
        let mut imp = Impairment::new(config).unwrap();
        let now = Instant::now();
        let (mut min, mut max, mut sum) = (Duration::MAX, Duration::ZERO, Duration::ZERO);
        let mut held = 0;
        for _ in 0..N {
            let Verdict::Deliver(d) = imp.decide(now, 1000) else {
                panic!("nothing should drop")
            };
            let mut delay = d.at - now;
            if delay > Duration::from_millis(12) {
                held += 1;
                delay -= Duration::from_millis(5);
            }
            min = min.min(delay);
            max = max.max(delay);
            sum += delay;
        }
        assert!(
            min >= Duration::from_millis(8) && max <= Duration::from_millis(12),
            "{min:?}..{max:?}"
        );
        let mean = sum / N as u32;
        assert!(
            mean > Duration::from_micros(9950) && mean < Duration::from_micros(10050),
            "mean {mean:?}"
        );
        assert_eq!(held, imp.stats().reordered);
        assert_rate(held, N, 0.1, "reorder");
    }

    #[test]
    fn rate_limit_spaces_departures_and_queue_tail_drops() {
        // 1 MB/s: a 1000-byte datagram takes 1 ms to serialise; the queue holds 10 of them.
        let config = ImpairmentConfig {
            rate_limit_bytes_per_s: Some(1_000_000),
            queue_limit_bytes: Some(10_000),
            seed: 1,
            ..Default::default()
        };
        let mut imp = Impairment::new(config).unwrap();
        let now = Instant::now();
        let mut delivered = Vec::new();
        for _ in 0..50 {
            match imp.decide(now, 1000) {
                Verdict::Deliver(d) => delivered.push(d.at - now),
                Verdict::Drop(reason) => assert_eq!(reason, DropReason::QueueFull),
            }
        }
        // A burst at one instant: exactly the queue's worth gets in, spaced 1 ms apart.
        assert_eq!(delivered.len(), 10);
        for (i, d) in delivered.iter().enumerate() {
            let expected = Duration::from_millis(i as u64 + 1);
            assert!(
                d.abs_diff(expected) < Duration::from_micros(2),
                "{i}: {d:?}"
            );
        }
        assert_eq!(imp.stats().dropped_queue, 40);
        // After the queue drains, sending at the link rate never drops.
        let later = now + Duration::from_millis(20);
        assert_eq!(imp.backlog_bytes(later), 0);
        for i in 0..100 {
            let t = later + Duration::from_millis(i);
            assert!(
                matches!(imp.decide(t, 1000), Verdict::Deliver(_)),
                "paced send {i} dropped"
            );
        }
    }

    #[test]
    fn rate_limit_throughput_converges_to_the_cap() {
        // Offer 2x the link rate for one virtual second; delivered bytes per second equal the cap.
        let rate = 10_000_000u64;
        let config = ImpairmentConfig {
            rate_limit_bytes_per_s: Some(rate),
            queue_limit_bytes: Some(100_000),
            seed: 4,
            ..Default::default()
        };
        let mut imp = Impairment::new(config).unwrap();
        let start = Instant::now();
        let mut delivered = 0u64;
        let mut last = start;
        let step = Duration::from_nanos(1200 * 1_000_000_000 / (2 * rate));
        let mut t = start;
        while t < start + Duration::from_secs(1) {
            if let Verdict::Deliver(d) = imp.decide(t, 1200) {
                delivered += 1200;
                last = last.max(d.at);
            }
            t += step;
        }
        let achieved = delivered as f64 / (last - start).as_secs_f64();
        assert!(
            (achieved / rate as f64 - 1.0).abs() < 0.01,
            "achieved {achieved} B/s vs cap {rate}"
        );
        let dropped = imp.stats().dropped_queue as f64 / imp.stats().datagrams as f64;
        assert!((dropped - 0.5).abs() < 0.02, "tail-drop fraction {dropped}");
    }

    #[test]
    fn parse_round_trips_and_rejects_bad_input() {
        let c: ImpairmentConfig =
            "loss=0.01, delay=5ms,jitter=500us,seed=7,burst=0.01/0.3,rate=100mbit,queue=256k,reorder=0.02,duplicate=0.001,corrupt=0.0001"
                .parse()
                .unwrap();
        assert_eq!(c.loss, 0.01);
        assert_eq!(c.delay, Duration::from_millis(5));
        assert_eq!(c.jitter, Duration::from_micros(500));
        assert_eq!(c.seed, 7);
        assert_eq!(c.rate_limit_bytes_per_s, Some(12_500_000));
        assert_eq!(c.queue_limit_bytes, Some(256_000));
        let ge = c.burst_loss.unwrap();
        assert_eq!(
            (
                ge.p_good_to_bad,
                ge.p_bad_to_good,
                ge.loss_in_bad,
                ge.loss_in_good
            ),
            (0.01, 0.3, 1.0, 0.0)
        );
        assert_eq!(c.to_string().parse::<ImpairmentConfig>().unwrap(), c);
        assert_eq!(
            "".parse::<ImpairmentConfig>().unwrap(),
            ImpairmentConfig::default()
        );

        assert!(matches!(
            "loss".parse::<ImpairmentConfig>(),
            Err(ImpairmentError::NotKeyValue(_))
        ));
        assert!(matches!(
            "lose=0.1".parse::<ImpairmentConfig>(),
            Err(ImpairmentError::UnknownKey(_))
        ));
        assert!(matches!(
            "loss=1.5".parse::<ImpairmentConfig>(),
            Err(ImpairmentError::NotProbability { .. })
        ));
        assert!(matches!(
            "loss=NaN".parse::<ImpairmentConfig>(),
            Err(ImpairmentError::NotProbability { .. })
        ));
        assert!(matches!(
            "delay=5".parse::<ImpairmentConfig>(),
            Err(ImpairmentError::BadValue { .. })
        ));
        assert!(matches!(
            "rate=0".parse::<ImpairmentConfig>(),
            Err(ImpairmentError::BadValue { .. })
        ));
        assert!(matches!(
            "burst=0.1".parse::<ImpairmentConfig>(),
            Err(ImpairmentError::BadValue { .. })
        ));
        assert!(matches!(
            "seed=-1".parse::<ImpairmentConfig>(),
            Err(ImpairmentError::BadValue { .. })
        ));
        let err = "lose=0.1"
            .parse::<ImpairmentConfig>()
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown impairment key \"lose\"");
    }
}
