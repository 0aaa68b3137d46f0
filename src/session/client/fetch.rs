//! The fetch of peers' heads ([`fetch`]): its settings ([`FetchConfig`]), its report
//! ([`FetchReport`], one [`PeerOutcome`] per target), and the rounds that connect to every
//! unsettled peer at once, hand each offered head to one pull, give silent peers a grace period,
//! retry with backoff while nothing could be fetched, and record each fetched head as the ref
//! `peers/<device>`.
//!
//! What this module is not: it does not drive the engine message by message (that is
//! [`super::driver`]), nor speak the handshake (that is [`super::connect`]); the history of
//! snapshot headers and the peers' heads alone are [`super::history`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use left_store::{NodeId, Store};
use tokio::sync::mpsc;

use super::connect::{
    close_session, open_session, Answer, Endpoints, Greeting, Session, Target, NO_ANSWER_CAUSES,
};
use super::driver::{run_pull, Baseline, PullResult};
use crate::ecp::Message;
use crate::identity::DeviceId;
use crate::session::stage::Stager;
use crate::session::{Error, LocalError, PeerError, PeerFailure};
use crate::sync::{PullConfig, PullStats};

/// Settings of [`fetch`].
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Our [`Message::Hello`] (see [`crate::session::hello`]).
    pub hello: Message,
    /// Longest wait for one peer's handshake plus `Hello` and `Have` answer.
    pub connect_timeout: Duration,
    /// Give up after this long without progress (no object fetched, no peer answering).
    pub timeout: Duration,
    /// First pause between attempts; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
    /// The engine's limits.
    pub pull: PullConfig,
    /// Decoded messages queued from the peers' readers to the engine (bounds memory).
    pub queue: usize,
    /// Say `Update { head, parents }` instead of `Have { head }`: our head just changed (automatic
    /// sync announces it). The peer answers both the same way.
    pub announce: bool,
    /// Pull this snapshot from every peer that answers, whatever head it offers (a merge base
    /// whose tree we lack). No `peers/<device>` ref is set for it.
    pub want: Option<NodeId>,
    /// Asked of every peer we reach, right after its handshake: whether its device may be
    /// talked to (the peer book). `None`: every device holding the share key.
    pub allow: Option<DevicePolicy>,
    /// Write big new files out while they are fetched ([`crate::session::stage`]), for a checkout that
    /// follows ([`FetchReport::staged`]). Off by default: a caller that checks nothing out
    /// would write them for nothing.
    pub stage: bool,
    /// The stager of the fetch in progress (set by [`fetch`] when `stage` is on).
    pub(super) stager: Option<Arc<Stager>>,
}

/// Whether a device may be talked to; see [`FetchConfig::allow`].
#[derive(Clone)]
pub struct DevicePolicy(pub Arc<DeviceCheck>);

/// The check behind a [`DevicePolicy`]: whether this device (its public key) may be talked to.
pub type DeviceCheck = dyn Fn(&[u8; 32]) -> bool + Send + Sync;

impl std::fmt::Debug for DevicePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevicePolicy")
    }
}

impl FetchConfig {
    /// Defaults around `hello` and the engine settings `pull`.
    pub fn new(hello: Message, pull: PullConfig) -> FetchConfig {
        FetchConfig {
            hello,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            pull,
            queue: 64,
            announce: false,
            want: None,
            allow: None,
            stage: false,
            stager: None,
        }
    }
}

/// What became of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerOutcome {
    /// As given.
    pub label: String,
    /// Its address.
    pub addr: Option<SocketAddr>,
    /// Its device key, once a handshake completed.
    pub device: Option<[u8; 32]>,
    /// The head it offered (`None`: it has none, or we never heard).
    pub head: Option<NodeId>,
    /// It answered `Same`: nothing to fetch from it.
    pub same: bool,
    /// Its head is now complete in our store (ref `peers/<device>` set).
    pub fetched: bool,
    /// Why it failed (`None` when it did not): a one-line reason and its [`PeerFailure`] kind, so
    /// the caller can say what to do about it.
    pub error: Option<PeerError>,
}

/// Progress of a fetch, for a bar.
pub trait FetchProgress: Send + Sync {
    /// Plain chunk bytes found missing so far and fetched so far (both grow).
    fn update(&self, discovered: u64, fetched: u64);
}

impl FetchProgress for () {
    fn update(&self, _discovered: u64, _fetched: u64) {}
}

/// The result of [`fetch`].
#[derive(Clone, Debug, Default)]
pub struct FetchReport {
    /// One per target, in the given order.
    pub peers: Vec<PeerOutcome>,
    /// Heads now complete in the store, each with the indexes of the peers that offered it.
    pub heads: Vec<(NodeId, Vec<usize>)>,
    /// Engine counters summed over every pull.
    pub stats: PullStats,
    /// Attempts made (1 when the first one settled everything).
    pub attempts: u32,
    /// The local store failed (disk full, ...): the fetch stopped at once, whatever the peers.
    pub local_error: Option<LocalError>,
    /// Big new files written out whole while they were fetched (with [`FetchConfig::stage`]):
    /// give them to the checkout ([`left_store::CheckoutOptions::staged`]).
    pub staged: Option<Arc<left_store::StagedFiles>>,
}

impl FetchReport {
    /// Whether nothing could be fetched or confirmed: every peer failed.
    pub fn all_failed(&self) -> bool {
        !self.peers.is_empty() && self.peers.iter().all(|p| p.error.is_some() && !p.fetched)
    }
}

/// How long, once something was fetched or confirmed, the fetch still waits for peers that have
/// not answered yet (one of them may offer a newer head) before it gives up on them.
pub(super) const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Pulls from every target what it has and we lack, into `store`.
///
/// Connects to all targets at once and sends `Hello` and `Have { head: local head }`. A [`crate::sync::Pull`]
/// starts as soon as the first peer offers a head; peers offering the same head later join it, so
/// a dead or slow peer holds nothing up (once something was fetched, peers still silent get
/// one more second, then are reported). Different heads are pulled one after the other. A
/// pull that loses all its peers, or a round in which no peer could be reached, is retried with
/// exponential backoff (`min_backoff` doubling to `max_backoff`) until `timeout` has passed without
/// progress; peers that refuse us (different share or encryption setting, device not allowed) or
/// send bad data are not retried. A peer that says it lacks objects beneath the head it offered
/// is asked once more: offering the same head again, it is given up on (it lies); offering a new
/// one (it collected garbage since), that one is pulled. Once any head is fetched, peers still
/// failing are reported, not retried. Each fetched head is stored as the ref
/// `peers/<device id>` of every peer that offered it.
pub async fn fetch(
    endpoints: &Endpoints,
    store: Arc<Store>,
    targets: &[Target],
    cfg: &FetchConfig,
    progress: &dyn FetchProgress,
) -> FetchReport {
    let mut report = FetchReport {
        peers: targets
            .iter()
            .map(|t| PeerOutcome {
                label: t.label.clone(),
                addr: Some(t.addr),
                ..PeerOutcome::default()
            })
            .collect(),
        ..FetchReport::default()
    };
    let mut peers = PeerRounds {
        settled: vec![false; targets.len()],
        missing_head: vec![None; targets.len()],
        idle_since: Instant::now(),
    };
    let staging;
    let cfg = if cfg.stage {
        let mut c = cfg.clone();
        // Staging is an optimisation: if its folder cannot be made, files are written as before.
        c.stager = Stager::new(store.dir()).ok().map(Arc::new);
        staging = c;
        &staging
    } else {
        cfg
    };
    let mut backoff = cfg.min_backoff;
    loop {
        report.attempts += 1;
        let progressed_at = attempt(
            endpoints,
            &store,
            targets,
            cfg,
            progress,
            &mut report,
            &mut peers,
        )
        .await;
        if let Some(t) = progressed_at {
            // The time of the last arrival, not the end of the attempt: a pull whose peer died
            // spent the stall timeout noticing, and that counts against `timeout` too.
            peers.idle_since = peers.idle_since.max(t);
            backoff = cfg.min_backoff;
        }
        let anything_fetched = !report.heads.is_empty() || report.peers.iter().any(|p| p.same);
        if peers.settled.iter().all(|s| *s) || anything_fetched || report.local_error.is_some() {
            break;
        }
        let spent = peers.idle_since.elapsed();
        if spent >= cfg.timeout {
            break;
        }
        tokio::time::sleep(backoff.min(cfg.timeout - spent)).await;
        backoff = (backoff * 2).min(cfg.max_backoff);
    }
    if let Some(st) = &cfg.stager {
        report.staged = Some(Arc::new(st.finish()));
    }
    report
}

/// What the rounds of a fetch know about each peer, by target index.
struct PeerRounds {
    /// Nothing more to do with it: it served its head, answered `Same`, or failed for good.
    settled: Vec<bool>,
    /// The head it last said it lacks objects of (a `NotFound` beneath it).
    missing_head: Vec<Option<NodeId>>,
    /// When something was last fetched or confirmed (or the fetch began): `timeout` counts from
    /// here, across attempts.
    idle_since: Instant,
}

/// The pull being driven in an attempt: its head, the peers in it, and the channel that hands
/// it late peers.
struct Running {
    head: NodeId,
    idx: Vec<usize>,
    late: mpsc::UnboundedSender<(usize, Session)>,
}

/// One round: connect to every unsettled peer, pull what they offer. Returns when something was
/// last fetched or confirmed, `None` when nothing was.
async fn attempt(
    endpoints: &Endpoints,
    store: &Arc<Store>,
    targets: &[Target],
    cfg: &FetchConfig,
    progress: &dyn FetchProgress,
    report: &mut FetchReport,
    peers: &mut PeerRounds,
) -> Option<Instant> {
    let PeerRounds {
        settled,
        missing_head,
        idle_since,
    } = peers;
    let idle_since = *idle_since;
    let greeting = Greeting::new(cfg, store);
    let local_head = greeting.local_head;
    let mut progressed: Option<Instant> = None;
    let mut connects = tokio::task::JoinSet::new();
    let mut pending: Vec<usize> = Vec::new();
    for i in 0..targets.len() {
        if settled[i] {
            continue;
        }
        let addr = targets[i].addr;
        let Some(ep) = endpoints.for_addr(addr).cloned() else {
            report.peers[i].error = Some(PeerError::fatal(
                PeerFailure::Other,
                "no local endpoint for its address family",
            ));
            settled[i] = true;
            continue;
        };
        let greeting = greeting.clone();
        let limit = cfg.connect_timeout;
        pending.push(i);
        connects.spawn(async move {
            let mut device = None;
            let r = tokio::time::timeout(limit, open_session(&ep, addr, &greeting, &mut device))
                .await
                .unwrap_or_else(|_| {
                    Err(PeerError::retry(
                        PeerFailure::Unreachable,
                        format!(
                            "no answer within {:.1} s ({NO_ANSWER_CAUSES})",
                            limit.as_secs_f64()
                        ),
                    ))
                });
            (i, device, r)
        });
    }
    // Heads offered while another pull runs: pulled next.
    let mut queued: BTreeMap<NodeId, Vec<(usize, Session)>> = BTreeMap::new();
    let mut running: Option<Running> = None;
    let mut pull_fut: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = PullResult> + Send + '_>>,
    > = None;
    let mut settled_at: Option<Instant> = None;
    loop {
        if pull_fut.is_none() {
            if let Some((&head, _)) = queued.iter().next() {
                let sessions = queued.remove(&head).unwrap_or_default();
                let (tx, rx) = mpsc::unbounded_channel();
                let idx = sessions.iter().map(|(i, _)| *i).collect();
                let base = Baseline {
                    discovered: report.stats.chunk_bytes_discovered,
                    fetched: report.stats.chunk_bytes_fetched,
                    idle_since,
                };
                pull_fut = Some(Box::pin(run_pull(
                    store, head, sessions, rx, cfg, progress, base,
                )));
                running = Some(Running {
                    head,
                    idx,
                    late: tx,
                });
            }
        }
        if pull_fut.is_none() && connects.is_empty() {
            break;
        }
        let idle = pull_fut.is_none();
        let grace_over = async {
            match settled_at {
                Some(t) if idle => tokio::time::sleep_until((t + ANSWER_GRACE).into()).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(joined) = connects.join_next(), if !connects.is_empty() => {
                let Ok((i, device, r)) = joined else { continue };
                pending.retain(|&p| p != i);
                let out = &mut report.peers[i];
                if device.is_some() {
                    out.device = device;
                }
                let mut s = match r {
                    Ok(s) => s,
                    Err(e) => {
                        settled[i] |= e.fatal;
                        out.error = Some(e);
                        continue;
                    }
                };
                if let Some(w) = cfg.want {
                    // A given snapshot, whatever the peer's head is.
                    out.head = match s.answer {
                        Answer::Excess(h) => Some(h),
                        Answer::Same => local_head,
                        Answer::Nothing => None,
                    };
                    s.answer = Answer::Excess(w);
                }
                if let Answer::Excess(h) = s.answer {
                    if missing_head[i] == Some(h) {
                        // It said it lacks objects beneath this very head and offers it again:
                        // it lies (a server that collected garbage offers its new head).
                        settled[i] = true;
                        close_session(s).await;
                        continue;
                    }
                }
                out.error = None;
                match s.answer {
                    Answer::Same | Answer::Nothing => {
                        out.same = matches!(s.answer, Answer::Same);
                        out.head = if out.same { local_head } else { None };
                        settled[i] = true;
                        progressed = Some(Instant::now());
                        settled_at.get_or_insert_with(Instant::now);
                        close_session(s).await;
                    }
                    Answer::Excess(h) => {
                        if cfg.want.is_none() {
                            out.head = Some(h);
                        }
                        if let Some(run) = running.as_mut().filter(|r| r.head == h) {
                            run.idx.push(i);
                            let _ = run.late.send((i, s));
                        } else if report.heads.iter().any(|(x, _)| *x == h) {
                            // Already fetched in this round: nothing more to get from it.
                            record_fetched(store, report, settled, h, &[i], cfg.want.is_none());
                            close_session(s).await;
                        } else {
                            queued.entry(h).or_default().push((i, s));
                        }
                    }
                }
            }
            result = async { pull_fut.as_mut().expect("guarded").await }, if pull_fut.is_some() => {
                pull_fut = None;
                let run = running.take().expect("set with the future");
                let mut idx = run.idx;
                idx.sort_unstable();
                let before = report.stats.clone();
                report.stats += &result.stats;
                if report.stats.nodes_fetched > before.nodes_fetched
                    || report.stats.chunks_fetched > before.chunks_fetched
                {
                    progressed = progressed.max(result.last_arrival);
                }
                for &i in &result.missing {
                    missing_head[i] = Some(run.head);
                }
                let mut dropped = Vec::new();
                for (i, err) in result.peer_errors {
                    settled[i] |= err.fatal;
                    report.peers[i].error = Some(err);
                    dropped.push(i);
                }
                match result.outcome {
                    Ok(()) => {
                        progressed = Some(Instant::now());
                        settled_at.get_or_insert_with(Instant::now);
                        let ok: Vec<usize> =
                            idx.iter().copied().filter(|i| !dropped.contains(i)).collect();
                        for &i in &dropped {
                            // It failed during the pull; the others finished it.
                            settled[i] = true;
                        }
                        report.heads.push((run.head, Vec::new()));
                        record_fetched(store, report, settled, run.head, &ok, cfg.want.is_none());
                    }
                    Err(Error::Local(e)) => {
                        report.local_error = Some(e);
                        break;
                    }
                    Err(Error::Peer(e)) => {
                        let e = PeerError { kind: PeerFailure::Other, ..e };
                        for &i in &idx {
                            if report.peers[i].error.is_none() {
                                report.peers[i].error = Some(e.clone());
                            }
                        }
                    }
                }
            }
            _ = grace_over => break,
        }
    }
    // Peers still silent once the others are done: given up on for this round.
    connects.abort_all();
    for i in pending {
        if report.peers[i].error.is_none() {
            report.peers[i].error = Some(PeerError::retry(
                PeerFailure::Unreachable,
                format!(
                    "no answer within {:.1} s, while the other peers were done",
                    ANSWER_GRACE.as_secs_f64()
                ),
            ));
        }
    }
    for (_, sessions) in queued {
        for (_, s) in sessions {
            close_session(s).await;
        }
    }
    progressed
}

/// Marks peers `idx` as having served `head` (now complete here) and records their refs.
fn record_fetched(
    store: &Store,
    report: &mut FetchReport,
    settled: &mut [bool],
    head: NodeId,
    idx: &[usize],
    set_ref: bool,
) {
    for &i in idx {
        settled[i] = true;
        let p = &mut report.peers[i];
        p.fetched = true;
        p.error = None;
        if let Some(d) = p.device.filter(|_| set_ref) {
            let name = format!("peers/{}", DeviceId(d));
            if let Err(e) = store.set_ref(&name, head) {
                p.error = Some(PeerError::retry(
                    PeerFailure::Other,
                    format!("cannot record the fetched head: {e}"),
                ));
            }
        }
        if let Some(entry) = report.heads.iter_mut().find(|(h, _)| *h == head) {
            entry.1.push(i);
            entry.1.sort_unstable();
        }
    }
}
