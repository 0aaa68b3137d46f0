//! [`Agent`]: the sans-IO scheduler of automatic sync (`left serve --peer ...`).
//!
//! The agent decides *when* to do the three kinds of work that keep a share folder in step with
//! its peers; the driver does the work and reports back:
//!
//! - [`Task::Scan`]: snapshot local changes (`Store::add`). Asked for after a watcher hint has
//!   been quiet for `settle` (each hint pushes the scan back, but never more than `max_delay`
//!   past the first one, so a folder that never stops changing is still scanned), when a scan
//!   reported files still being written (they are scanned again after `settle`), every `rescan`
//!   (the watcher is only a hint: a missed event costs at most one rescan period), and at start.
//! - [`Task::Exchange`]: exchange heads with some peers (`Have`, or `Update` when ours changed
//!   since they last heard it), pull whatever head they have that we lack, then integrate it
//!   (scan first, then fast-forward or merge, then check out). Asked for at start, when a peer
//!   tells us of a head we do not hold, when our head changed (a scan or an integration made a new
//!   one: every peer is told), every `exchange_interval` (the periodic `Have` that catches peers
//!   that started late, came back, or missed an update), and after a failure, per peer with
//!   exponential backoff (`min_backoff` doubling to `max_backoff`; a peer that talks to us is
//!   retried at once).
//!
//! At most one scan and one exchange run at a time, and a scan may run while an exchange is
//! fetching (a long transfer does not hold local changes back); the driver serialises the parts
//! that touch the folder (a scan, an exchange's integration) with a lock, so a scan never races a
//! checkout and the head moves in one place. Scans come first: an exchange is not started while
//! a scan is due or running, since announcing a head that is already stale would cost every peer
//! a round trip.
//!
//! The agent holds no store and reads no clock: `now` comes with every call, timers come out of
//! [`Agent::poll_timeout`], tasks out of [`Agent::poll_task`]. So the simulation tests drive many
//! agents through a virtual network deterministically, and the tokio driver
//! (`crate::session::auto`) is a thin loop around it. What "a head we do not hold" means is the
//! driver's question to the store (the head is neither ours nor one of our ancestors); the agent
//! only hears about the peers worth talking to.
//!
//! Peers are numbered by the driver (`0..n`), in the order given, plus any added later with
//! [`Agent::add_peer`] (a peer that reached us without being configured).

use std::time::{Duration, Instant};

/// Timers of an [`Agent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Quiet time after the last local change before it is scanned; also how long a file must
    /// have been left alone before it is published (a file written less than this ago is taken
    /// as still being written and scanned again later).
    pub settle: Duration,
    /// Longest a scan is put off by a folder that keeps changing.
    pub max_delay: Duration,
    /// Full rescan period (backs the watcher up).
    pub rescan: Duration,
    /// Period of the `Have` exchange with every peer.
    pub exchange_interval: Duration,
    /// First pause before retrying a peer that could not be reached.
    pub min_backoff: Duration,
    /// Longest pause between retries of one peer.
    pub max_backoff: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            settle: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            rescan: Duration::from_secs(60),
            exchange_interval: Duration::from_secs(30),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Work for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// Snapshot local changes; report with [`Agent::scan_done`].
    Scan,
    /// Exchange heads with these peers, pull what they have that we lack, and integrate it;
    /// report with [`Agent::exchange_done`].
    Exchange {
        /// The peers, by index.
        peers: Vec<usize>,
        /// Our head changed since at least one of them heard it: say `Update`, not `Have`.
        announce: bool,
    },
}

/// What a scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// It made a new snapshot (the head moved).
    pub new_head: bool,
    /// Some files were still being written (or changed while read) and kept their previous
    /// version: scan again after `settle`.
    pub unsettled: bool,
}

/// What an exchange did, as the driver saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExchangeOutcome {
    /// Peers that answered (their head is known now, and they heard ours).
    pub reached: Vec<usize>,
    /// Peers that could not be reached or failed; retried with backoff.
    pub failed: Vec<usize>,
    /// Integrating what was fetched moved our head (a fast-forward or a merge): every peer
    /// must hear of it.
    pub new_head: bool,
    /// Something fetched could not be integrated yet (a merge base's tree or history missing,
    /// a checkout that kept local changes): exchange again soon.
    pub incomplete: bool,
}

#[derive(Clone, Debug)]
struct PeerState {
    /// An exchange with it is wanted.
    want: bool,
    /// It has not heard our current head from us.
    announce: bool,
    /// Not before this (backoff after failures).
    not_before: Option<Instant>,
    backoff: Duration,
    /// Consecutive failures.
    failures: u32,
    /// Not talked to until it talks to us again ([`Agent::retire`]).
    retired: bool,
}

impl PeerState {
    fn new(min_backoff: Duration) -> PeerState {
        PeerState {
            want: true,
            announce: true,
            not_before: None,
            backoff: min_backoff,
            failures: 0,
            retired: false,
        }
    }

    fn ready(&self, now: Instant) -> bool {
        !self.retired && self.want && self.not_before.is_none_or(|t| t <= now)
    }
}

/// The scheduler. See the module documentation.
#[derive(Clone, Debug)]
pub struct Agent {
    cfg: AgentConfig,
    peers: Vec<PeerState>,
    scan_running: bool,
    exchange_running: bool,
    /// When the next scan is due (`None`: none pending).
    scan_due: Option<Instant>,
    /// When the first hint of the pending scan came (for `max_delay`).
    first_hint: Option<Instant>,
    next_rescan: Instant,
    next_exchange: Instant,
    scans: u64,
    exchanges: u64,
}

impl Agent {
    /// An agent for `peers` configured peers, starting at `now` with a scan and an exchange with
    /// every peer.
    pub fn new(now: Instant, cfg: AgentConfig, peers: usize) -> Agent {
        let p = PeerState::new(cfg.min_backoff);
        Agent {
            peers: vec![p; peers],
            scan_running: false,
            exchange_running: false,
            scan_due: Some(now),
            first_hint: Some(now),
            next_rescan: now + cfg.rescan,
            next_exchange: now + cfg.exchange_interval,
            scans: 0,
            exchanges: 0,
            cfg,
        }
    }

    /// The timers.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// Adds a peer (one that reached us without being configured); returns its index. It is
    /// exchanged with like the others.
    pub fn add_peer(&mut self, _now: Instant) -> usize {
        self.peers.push(PeerState::new(self.cfg.min_backoff));
        self.peers.len() - 1
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Something in the share folder changed (a watcher hint): scan once it has been quiet for
    /// `settle`, or `max_delay` after the first hint at the latest.
    pub fn local_change(&mut self, now: Instant) {
        let first = *self.first_hint.get_or_insert(now);
        let due = (now + self.cfg.settle).min(first + self.cfg.max_delay);
        self.scan_due = Some(match self.scan_due {
            // An earlier due time (the start, a rescan) stands.
            Some(d) if d <= now => d,
            _ => due,
        });
    }

    /// Our head moved outside the agent's tasks (an `add` through the control socket): tell
    /// every peer.
    pub fn head_changed(&mut self, _now: Instant) {
        for p in &mut self.peers {
            p.want = !p.retired;
            p.announce = true;
        }
    }

    /// Peer `peer` told us of a head we do not hold (or just connected to us): exchange with it
    /// soon. A peer that talks to us is up, so its backoff is forgotten (and a retired peer is
    /// back).
    pub fn heard(&mut self, _now: Instant, peer: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.want = true;
            p.retired = false;
            p.not_before = None;
            p.backoff = self.cfg.min_backoff;
        }
    }

    /// Stops talking to `peer` until it talks to us again ([`Agent::heard`]): for a peer that
    /// reached us from an address nobody listens on (a one-shot `left sync`).
    pub fn retire(&mut self, peer: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.retired = true;
            p.want = false;
        }
    }

    /// Whether `peer` is retired.
    pub fn is_retired(&self, peer: usize) -> bool {
        self.peers.get(peer).is_some_and(|p| p.retired)
    }

    /// The next task that is due and may start now (a scan unless one runs; an exchange unless
    /// one runs or a scan is due or running). Call after every input and timeout, until it
    /// returns `None`.
    pub fn poll_task(&mut self, now: Instant) -> Option<Task> {
        let scan_now = self.scan_due.is_some_and(|d| d <= now);
        if scan_now && !self.scan_running {
            self.scan_due = None;
            self.first_hint = None;
            self.scan_running = true;
            self.scans += 1;
            return Some(Task::Scan);
        }
        if self.exchange_running || self.scan_running || scan_now {
            return None;
        }
        let peers: Vec<usize> = (0..self.peers.len())
            .filter(|&i| self.peers[i].ready(now))
            .collect();
        if peers.is_empty() {
            return None;
        }
        let announce = peers.iter().any(|&i| self.peers[i].announce);
        for &i in &peers {
            self.peers[i].want = false;
        }
        self.exchange_running = true;
        self.exchanges += 1;
        Some(Task::Exchange { peers, announce })
    }

    /// The scan asked for finished (successfully or not: a failed scan is retried by the next
    /// rescan or hint).
    pub fn scan_done(&mut self, now: Instant, outcome: ScanOutcome) {
        debug_assert!(self.scan_running);
        self.scan_running = false;
        if outcome.new_head {
            self.head_changed(now);
        }
        if outcome.unsettled {
            let due = now + self.cfg.settle;
            self.scan_due = Some(self.scan_due.map_or(due, |d| d.min(due)));
        }
    }

    /// The exchange asked for finished.
    pub fn exchange_done(&mut self, now: Instant, outcome: &ExchangeOutcome) {
        debug_assert!(self.exchange_running);
        self.exchange_running = false;
        for &i in &outcome.reached {
            if let Some(p) = self.peers.get_mut(i) {
                p.announce = false;
                p.failures = 0;
                p.not_before = None;
                // An exchange that could not finish its work keeps growing the wait, so a
                // lasting problem (a merge base nobody has) is retried ever less often.
                if !outcome.incomplete {
                    p.backoff = self.cfg.min_backoff;
                }
            }
        }
        for &i in &outcome.failed {
            if let Some(p) = self.peers.get_mut(i) {
                p.want = !p.retired;
                p.failures = p.failures.saturating_add(1);
                p.not_before = Some(now + p.backoff);
                p.backoff = (p.backoff * 2).min(self.cfg.max_backoff);
            }
        }
        if outcome.new_head {
            self.head_changed(now);
        }
        if outcome.incomplete {
            for &i in &outcome.reached {
                if let Some(p) = self.peers.get_mut(i) {
                    p.want = true;
                    p.not_before = Some(now + p.backoff);
                    p.backoff = (p.backoff * 2).min(self.cfg.max_backoff);
                }
            }
        }
    }

    /// Call when the time from [`Agent::poll_timeout`] has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_rescan {
            if self.scan_due.is_none() {
                self.scan_due = Some(now);
            }
            self.next_rescan = now + self.cfg.rescan;
        }
        if now >= self.next_exchange {
            for p in &mut self.peers {
                p.want = !p.retired;
            }
            self.next_exchange = now + self.cfg.exchange_interval;
        }
    }

    /// When [`Agent::handle_timeout`] (then [`Agent::poll_task`]) should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_rescan.min(self.next_exchange);
        if let Some(d) = self.scan_due {
            t = t.min(d);
        }
        for p in &self.peers {
            if p.want {
                if let Some(nb) = p.not_before {
                    t = t.min(nb);
                }
            }
        }
        Some(t)
    }

    /// The earliest timer strictly after `now` (a driver waiting while tasks run: timers already
    /// due are acted on when a task ends, so sleeping until them would spin).
    pub fn next_timer_after(&self, now: Instant) -> Option<Instant> {
        let mut all = vec![self.next_rescan, self.next_exchange];
        all.extend(self.scan_due);
        all.extend(
            self.peers
                .iter()
                .filter(|p| p.want)
                .filter_map(|p| p.not_before),
        );
        all.into_iter().filter(|t| *t > now).min()
    }

    /// Nothing to scan, fetch or check out now: no task runs, no scan is pending, and no peer
    /// that answers is waiting for an exchange (a peer that is down and retried with backoff
    /// does not count: waiting for it is idle).
    pub fn is_idle(&self) -> bool {
        !self.scan_running
            && !self.exchange_running
            && self.scan_due.is_none()
            && self.peers.iter().all(|p| !p.want || p.failures > 0)
    }

    /// What runs now: `"scan"`, `"exchange"`, `"scan, exchange"`, or `None`.
    pub fn running(&self) -> Option<&'static str> {
        match (self.scan_running, self.exchange_running) {
            (false, false) => None,
            (true, false) => Some("scan"),
            (false, true) => Some("exchange"),
            (true, true) => Some("scan, exchange"),
        }
    }

    /// Whether a scan runs.
    pub fn scan_running(&self) -> bool {
        self.scan_running
    }

    /// Whether an exchange runs.
    pub fn exchange_running(&self) -> bool {
        self.exchange_running
    }

    /// Consecutive failed exchanges with a peer.
    pub fn failures(&self, peer: usize) -> u32 {
        self.peers.get(peer).map_or(0, |p| p.failures)
    }

    /// Scans and exchanges started so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.scans, self.exchanges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AgentConfig {
        AgentConfig {
            settle: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            rescan: Duration::from_secs(60),
            exchange_interval: Duration::from_secs(30),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn starts_with_a_scan_then_an_exchange_with_everyone() {
        let t0 = Instant::now();
        let mut a = Agent::new(t0, cfg(), 2);
        assert!(!a.is_idle());
        assert_eq!(a.poll_task(t0), Some(Task::Scan));
        assert_eq!(
            a.poll_task(t0),
            None,
            "no exchange while the first scan runs"
        );
        a.scan_done(t0, ScanOutcome::default());
        assert_eq!(
            a.poll_task(t0),
            Some(Task::Exchange {
                peers: vec![0, 1],
                announce: true
            })
        );
        a.exchange_done(
            t0,
            &ExchangeOutcome {
                reached: vec![0, 1],
                ..Default::default()
            },
        );
        assert_eq!(a.poll_task(t0), None);
        assert!(a.is_idle());
    }

    fn started(t0: Instant, peers: usize) -> Agent {
        let mut a = Agent::new(t0, cfg(), peers);
        assert_eq!(a.poll_task(t0), Some(Task::Scan));
        a.scan_done(t0, ScanOutcome::default());
        assert!(matches!(a.poll_task(t0), Some(Task::Exchange { .. })));
        a.exchange_done(
            t0,
            &ExchangeOutcome {
                reached: (0..peers).collect(),
                ..Default::default()
            },
        );
        a
    }

    #[test]
    fn hints_are_debounced_but_not_forever() {
        let t0 = Instant::now();
        let mut a = started(t0, 1);
        a.local_change(ms(t0, 0));
        assert!(!a.is_idle());
        assert_eq!(a.poll_timeout(), Some(ms(t0, 100)));
        // A hint every 50 ms keeps pushing the scan back...
        for k in 1..=30 {
            let now = ms(t0, 50 * k);
            if let Some(Task::Scan) = a.poll_task(now) {
                // ...until max_delay after the first one.
                assert_eq!(now, ms(t0, 1000));
                a.scan_done(now, ScanOutcome::default());
                return;
            }
            a.local_change(now);
        }
        panic!("the scan never ran");
    }

    #[test]
    fn a_new_head_is_announced_to_every_peer() {
        let t0 = Instant::now();
        let mut a = started(t0, 3);
        a.local_change(t0);
        assert_eq!(a.poll_task(ms(t0, 100)), Some(Task::Scan));
        a.scan_done(
            ms(t0, 110),
            ScanOutcome {
                new_head: true,
                unsettled: false,
            },
        );
        assert_eq!(
            a.poll_task(ms(t0, 110)),
            Some(Task::Exchange {
                peers: vec![0, 1, 2],
                announce: true
            })
        );
    }

    #[test]
    fn unsettled_files_are_scanned_again() {
        let t0 = Instant::now();
        let mut a = started(t0, 1);
        a.local_change(t0);
        assert_eq!(a.poll_task(ms(t0, 100)), Some(Task::Scan));
        a.scan_done(
            ms(t0, 120),
            ScanOutcome {
                new_head: false,
                unsettled: true,
            },
        );
        assert!(!a.is_idle());
        assert_eq!(a.poll_task(ms(t0, 200)), None);
        assert_eq!(a.poll_task(ms(t0, 220)), Some(Task::Scan));
    }

    #[test]
    fn failed_peers_back_off_and_do_not_block_idleness() {
        let t0 = Instant::now();
        let mut a = started(t0, 2);
        a.head_changed(t0);
        let Some(Task::Exchange { peers, .. }) = a.poll_task(t0) else {
            panic!("expected an exchange")
        };
        assert_eq!(peers, vec![0, 1]);
        a.exchange_done(
            t0,
            &ExchangeOutcome {
                reached: vec![0],
                failed: vec![1],
                ..Default::default()
            },
        );
        assert!(a.is_idle(), "waiting for a dead peer is idle");
        let mut tries = vec![];
        let mut now = t0;
        for _ in 0..6 {
            now = a.poll_timeout().unwrap();
            a.handle_timeout(now);
            match a.poll_task(now) {
                Some(Task::Exchange { peers, announce }) => {
                    assert_eq!(peers, vec![1]);
                    assert!(announce, "peer 1 never heard our head");
                    tries.push(now - t0);
                    a.exchange_done(
                        now,
                        &ExchangeOutcome {
                            failed: vec![1],
                            ..Default::default()
                        },
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        let ms_: Vec<u128> = tries.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms_, vec![50, 150, 350, 750, 1150, 1550], "doubling to max");
        // It talks to us: retried at once, backoff forgotten.
        a.heard(now, 1);
        assert_eq!(
            a.poll_task(now),
            Some(Task::Exchange {
                peers: vec![1],
                announce: true
            })
        );
    }

    #[test]
    fn periodic_exchange_and_rescan() {
        let t0 = Instant::now();
        let mut a = started(t0, 2);
        assert!(a.is_idle());
        let t = a.poll_timeout().unwrap();
        assert_eq!(t, t0 + Duration::from_secs(30));
        a.handle_timeout(t);
        assert_eq!(
            a.poll_task(t),
            Some(Task::Exchange {
                peers: vec![0, 1],
                announce: false
            })
        );
        a.exchange_done(
            t,
            &ExchangeOutcome {
                reached: vec![0, 1],
                ..Default::default()
            },
        );
        let t2 = a.poll_timeout().unwrap();
        assert_eq!(t2, t0 + Duration::from_secs(60));
        a.handle_timeout(t2);
        assert_eq!(a.poll_task(t2), Some(Task::Scan));
    }

    #[test]
    fn a_heard_head_gets_an_exchange_with_that_peer_only() {
        let t0 = Instant::now();
        let mut a = started(t0, 3);
        a.heard(t0, 2);
        assert_eq!(
            a.poll_task(t0),
            Some(Task::Exchange {
                peers: vec![2],
                announce: false
            })
        );
        // While it runs, a hint is scanned (after settling) but another exchange waits.
        a.local_change(t0);
        a.heard(t0, 0);
        assert_eq!(a.poll_task(ms(t0, 50)), None, "the hint is settling");
        assert_eq!(
            a.poll_task(ms(t0, 100)),
            Some(Task::Scan),
            "a scan during an exchange"
        );
        assert_eq!(a.running(), Some("scan, exchange"));
        a.scan_done(ms(t0, 150), ScanOutcome::default());
        assert_eq!(a.poll_task(ms(t0, 200)), None, "one exchange at a time");
        a.local_change(ms(t0, 100));
        a.exchange_done(
            ms(t0, 200),
            &ExchangeOutcome {
                reached: vec![2],
                new_head: true,
                ..Default::default()
            },
        );
        assert_eq!(a.poll_task(ms(t0, 200)), Some(Task::Scan));
        a.scan_done(ms(t0, 210), ScanOutcome::default());
        // The new head goes to everyone (peer 2 included: the head came after its Have).
        assert_eq!(
            a.poll_task(ms(t0, 210)),
            Some(Task::Exchange {
                peers: vec![0, 1, 2],
                announce: true
            })
        );
    }

    #[test]
    fn a_retired_peer_is_left_alone_until_it_talks_again() {
        let t0 = Instant::now();
        let mut a = started(t0, 2);
        a.retire(1);
        a.head_changed(t0);
        assert_eq!(
            a.poll_task(t0),
            Some(Task::Exchange {
                peers: vec![0],
                announce: true
            })
        );
        a.exchange_done(
            t0,
            &ExchangeOutcome {
                reached: vec![0],
                ..Default::default()
            },
        );
        let t = a.poll_timeout().unwrap();
        a.handle_timeout(t);
        assert_eq!(
            a.poll_task(t),
            Some(Task::Exchange {
                peers: vec![0],
                announce: false
            })
        );
        assert!(a.is_retired(1));
        a.exchange_done(
            t,
            &ExchangeOutcome {
                reached: vec![0],
                ..Default::default()
            },
        );
        assert!(a.is_idle());
        a.heard(t, 1);
        assert!(!a.is_retired(1));
        assert_eq!(
            a.poll_task(t),
            Some(Task::Exchange {
                peers: vec![1],
                announce: true
            })
        );
    }

    #[test]
    fn an_incomplete_exchange_is_retried_ever_less_often() {
        let t0 = Instant::now();
        let mut a = started(t0, 1);
        a.heard(t0, 0);
        let mut now = t0;
        let mut waits = vec![];
        for _ in 0..5 {
            assert!(matches!(a.poll_task(now), Some(Task::Exchange { .. })));
            a.exchange_done(
                now,
                &ExchangeOutcome {
                    reached: vec![0],
                    incomplete: true,
                    ..Default::default()
                },
            );
            let next = a.poll_timeout().unwrap();
            waits.push((next - now).as_millis());
            now = next;
            a.handle_timeout(now);
        }
        assert_eq!(waits, vec![50, 100, 200, 400, 400]);
        // A complete exchange resets it.
        assert!(matches!(a.poll_task(now), Some(Task::Exchange { .. })));
        a.exchange_done(
            now,
            &ExchangeOutcome {
                reached: vec![0],
                ..Default::default()
            },
        );
        a.heard(now, 0);
        assert!(matches!(a.poll_task(now), Some(Task::Exchange { .. })));
        a.exchange_done(
            now,
            &ExchangeOutcome {
                reached: vec![0],
                incomplete: true,
                ..Default::default()
            },
        );
        assert_eq!((a.poll_timeout().unwrap() - now).as_millis(), 50);
    }

    #[test]
    fn learned_peers_are_exchanged_with() {
        let t0 = Instant::now();
        let mut a = started(t0, 1);
        let i = a.add_peer(t0);
        assert_eq!(i, 1);
        assert_eq!(
            a.poll_task(t0),
            Some(Task::Exchange {
                peers: vec![1],
                announce: true
            })
        );
    }
}
