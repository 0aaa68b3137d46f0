//! The pulling side: connect to every peer, exchange `Have`, run one [`Pull`] per distinct head,
//! retry with backoff while nothing could be fetched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use left_store::{NodeId, Store};
use tokio::sync::mpsc;

use super::stage::Stager;
use super::wire::{FrameReader, FrameWriter, ReadError};
use super::{sanitize, CODE_PROTOCOL_ERROR};
use crate::ecp::{check_hello, DecodeError, ErrorCode, HelloMismatch, Message};
use crate::identity::DeviceId;
use crate::net::driver::{Connection, Endpoint, NetError, CODE_NO_ERROR, CODE_REFUSED};
use crate::rdt::ConnectionError;
use crate::sync::{DropCause, Effect, Output, PeerId, Pull, PullConfig, PullStats};

/// A peer to pull from: how the user named it and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// As given on the command line (for messages).
    pub label: String,
    /// Its resolved address.
    pub addr: SocketAddr,
}

/// The client endpoints: one per address family in use.
#[derive(Clone, Default)]
pub struct Endpoints {
    /// For IPv4 peers.
    pub v4: Option<Endpoint>,
    /// For IPv6 peers.
    pub v6: Option<Endpoint>,
}

impl Endpoints {
    /// The endpoint to reach `addr` with.
    pub fn for_addr(&self, addr: SocketAddr) -> Option<&Endpoint> {
        if addr.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    /// UDP payload bytes `(sent, received)` over every endpoint.
    pub fn udp_bytes(&self) -> (u64, u64) {
        [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .map(|e| e.udp_bytes())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Closes every endpoint (waits for the closes to go out).
    pub async fn close(&self) {
        for e in [&self.v4, &self.v6].into_iter().flatten() {
            e.close().await;
        }
    }
}

/// Settings of [`fetch`].
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Our [`Message::Hello`] (see [`super::hello`]).
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
    /// Write big new files out while they are fetched ([`super::stage`]), for a checkout that
    /// follows ([`FetchReport::staged`]). Off by default: a caller that checks nothing out
    /// would write them for nothing.
    pub stage: bool,
    /// The stager of the fetch in progress (set by [`fetch`] when `stage` is on).
    stager: Option<Arc<Stager>>,
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
    /// Why it failed, one line (`None` when it did not).
    pub error: Option<String>,
    /// What kind of failure `error` is (set with it), so the caller can say what to do about it.
    pub failure: Option<PeerFailure>,
}

/// A peer's failure, by what the user can do about it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerFailure {
    /// It could not be reached or stopped answering (not running, wrong address or port, a
    /// firewall, a stall, a server shutting down).
    Unreachable,
    /// It sent data that failed verification or broke the protocol (a chunk or node that does
    /// not match its id, a malformed frame, `NotFound` for what it offered). Nothing unverified
    /// from it was kept.
    Misbehaved,
    /// It refuses this device, or this side refuses its device (pinned or revoked devices).
    Refused,
    /// Its `--encryption` setting differs from ours.
    Encryption,
    /// It serves another share (another share key).
    OtherShare,
    /// It speaks another protocol or wire version.
    Version,
    /// Anything else (an error it reported, a local problem with its address).
    Other,
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
    pub local_error: Option<String>,
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

/// A failure of one peer; `fatal` ones are not retried (the peer refuses us, or lies).
#[derive(Debug, Clone)]
struct PeerError {
    reason: String,
    fatal: bool,
    kind: PeerFailure,
}

impl PeerError {
    fn retry(kind: PeerFailure, reason: impl Into<String>) -> PeerError {
        PeerError {
            reason: reason.into(),
            fatal: false,
            kind,
        }
    }
    fn fatal(kind: PeerFailure, reason: impl Into<String>) -> PeerError {
        PeerError {
            reason: reason.into(),
            fatal: true,
            kind,
        }
    }
}

/// Why a peer may not answer a handshake at all: the transport cannot tell these apart (a peer
/// holding another share key cannot even decrypt our first packet).
const NO_ANSWER_CAUSES: &str = "not running, unreachable, or holding another share key";

fn net_error(e: &NetError) -> PeerError {
    use PeerFailure as F;
    let (kind, fatal) = match e {
        NetError::ConnectionLost(c) => match c {
            ConnectionError::EncryptionMismatch { .. } => (F::Encryption, true),
            ConnectionError::PeerKeyRefused { .. } | ConnectionError::RefusedByPeer => {
                (F::Refused, true)
            }
            ConnectionError::PeerClosed { code, .. } if *code == CODE_REFUSED => (F::Refused, true),
            ConnectionError::PeerClosed { code, .. } if *code == CODE_PROTOCOL_ERROR => {
                (F::Other, true)
            }
            ConnectionError::ProtocolViolation { .. } => (F::Misbehaved, false),
            ConnectionError::LocallyClosed => (F::Other, false),
            _ => (F::Unreachable, false),
        },
        NetError::Io(_) => (F::Unreachable, false),
        _ => (F::Other, false),
    };
    let reason = match e {
        NetError::ConnectionLost(ConnectionError::HandshakeTimedOut) => {
            format!("no answer ({NO_ANSWER_CAUSES})")
        }
        NetError::ConnectionLost(c) => c.to_string(),
        other => other.to_string(),
    };
    PeerError {
        reason,
        fatal,
        kind,
    }
}

fn read_error(e: &ReadError) -> PeerError {
    match e {
        ReadError::Net(n) => net_error(n),
        ReadError::Decode(DecodeError::UnknownVersion { .. }) => {
            PeerError::fatal(PeerFailure::Version, e.to_string())
        }
        ReadError::Decode(_) | ReadError::Truncated => {
            PeerError::fatal(PeerFailure::Misbehaved, e.to_string())
        }
    }
}

/// The kind of failure an `Error { code }` from the peer reports.
fn error_kind(code: ErrorCode) -> PeerFailure {
    match code {
        ErrorCode::PROTOCOL_VERSION => PeerFailure::Version,
        ErrorCode::SHARE_MISMATCH => PeerFailure::OtherShare,
        ErrorCode::ENCRYPTION_MISMATCH => PeerFailure::Encryption,
        ErrorCode::NOT_ALLOWED => PeerFailure::Refused,
        _ => PeerFailure::Other,
    }
}

/// The kind of failure a mismatch between our `Hello` and the peer's is.
fn hello_kind(e: &HelloMismatch) -> PeerFailure {
    match e {
        HelloMismatch::Protocol { .. } => PeerFailure::Version,
        HelloMismatch::Share { .. } => PeerFailure::OtherShare,
        HelloMismatch::Encryption { .. } => PeerFailure::Encryption,
        HelloMismatch::NotHello(_) => PeerFailure::Misbehaved,
    }
}

/// What a peer said to our `Have`.
enum Answer {
    Same,
    Excess(NodeId),
    Nothing,
}

/// A connected peer whose `Have` was answered.
struct Session {
    conn: Connection,
    reader: FrameReader,
    writer: FrameWriter,
    answer: Answer,
}

/// How to greet a peer: our `Hello`, then `Have` (or `Update` when announcing) with our head.
#[derive(Clone)]
struct Greeting {
    hello: Message,
    local_head: Option<NodeId>,
    /// `Some(parents)`: say `Update` with these parents.
    announce: Option<Vec<NodeId>>,
    allow: Option<DevicePolicy>,
}

impl Greeting {
    fn new(cfg: &FetchConfig, store: &Store) -> Greeting {
        let local_head = store.head().ok().flatten();
        let announce = match (cfg.announce, local_head) {
            (true, Some(h)) => Some(
                store
                    .snapshot(h)
                    .map(|s| {
                        let mut p = s.parents;
                        p.truncate(crate::ecp::MAX_PARENTS);
                        p
                    })
                    .unwrap_or_default(),
            ),
            _ => None,
        };
        Greeting {
            hello: cfg.hello.clone(),
            local_head,
            announce,
            allow: cfg.allow.clone(),
        }
    }
}

async fn open_session(
    endpoint: &Endpoint,
    addr: SocketAddr,
    greeting: &Greeting,
    device: &mut Option<[u8; 32]>,
) -> Result<Session, PeerError> {
    let hello = &greeting.hello;
    let local_head = greeting.local_head;
    let conn = endpoint.connect(addr).await.map_err(|e| net_error(&e))?;
    let key = conn.peer_key();
    *device = Some(key);
    if let Some(allow) = &greeting.allow {
        if !(allow.0)(&key) {
            let reason = format!(
                "device {} is not allowed here (revoked, or not pinned while others are: `left peers`)",
                super::short_device(&key)
            );
            conn.close(CODE_REFUSED, reason.as_bytes());
            return Err(PeerError::fatal(PeerFailure::Refused, reason));
        }
    }
    let mut reader = FrameReader::new(conn.control_stream());
    let mut writer = FrameWriter::new(conn.control_stream());
    let share = match hello {
        Message::Hello { share, .. } => *share,
        _ => return Err(PeerError::fatal(PeerFailure::Other, "bad local hello")),
    };
    writer
        .queue(hello)
        .map_err(|e| PeerError::fatal(PeerFailure::Other, e.to_string()))?;
    let have = match (&greeting.announce, local_head) {
        (Some(parents), Some(head)) => Message::Update {
            share,
            head,
            parents: parents.clone(),
        },
        _ => Message::Have {
            share,
            head: local_head,
        },
    };
    writer
        .queue(&have)
        .map_err(|e| PeerError::fatal(PeerFailure::Other, e.to_string()))?;
    writer.flush().await.map_err(|e| net_error(&e))?;
    let mut greeted = false;
    loop {
        let msg = match reader.next().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(PeerError::retry(
                    PeerFailure::Unreachable,
                    "the peer ended the session",
                ))
            }
            Err(e) => {
                let err = read_error(&e);
                if matches!(e, ReadError::Decode(_)) {
                    let _ = writer
                        .send(&Message::Error {
                            code: ErrorCode::MALFORMED,
                            message: err.reason.clone(),
                        })
                        .await;
                    conn.close(CODE_PROTOCOL_ERROR, err.reason.as_bytes());
                }
                return Err(err);
            }
        };
        match msg {
            Message::Error { code, message } => {
                return Err(PeerError::fatal(
                    error_kind(code),
                    format!(
                        "the peer refused us: {} (code {})",
                        sanitize(&message),
                        code.0
                    ),
                ));
            }
            Message::Hello { .. } if !greeted => {
                if let Err(e) = check_hello(hello, &msg) {
                    let _ = writer.send(&e.to_message()).await;
                    conn.close(CODE_PROTOCOL_ERROR, e.to_string().as_bytes());
                    return Err(PeerError::fatal(hello_kind(&e), e.to_string()));
                }
                greeted = true;
            }
            _ if !greeted => {
                let reason = format!("the peer sent {} before Hello", msg.kind());
                conn.close(CODE_PROTOCOL_ERROR, reason.as_bytes());
                return Err(PeerError::fatal(PeerFailure::Misbehaved, reason));
            }
            Message::Same => {
                return Ok(Session {
                    conn,
                    reader,
                    writer,
                    answer: Answer::Same,
                })
            }
            Message::Excess { head } => {
                return Ok(Session {
                    conn,
                    reader,
                    writer,
                    answer: Answer::Excess(head),
                })
            }
            Message::Have { head, .. } => {
                return Ok(Session {
                    conn,
                    reader,
                    writer,
                    answer: match head {
                        Some(h) if Some(h) != local_head => Answer::Excess(h),
                        Some(_) => Answer::Same,
                        None => Answer::Nothing,
                    },
                })
            }
            Message::Bye => {
                return Err(PeerError::retry(
                    PeerFailure::Unreachable,
                    "the peer ended the session",
                ))
            }
            // Anything else (a repeated Hello, a Working) needs no answer.
            _ => {}
        }
    }
}

/// Says goodbye and closes.
async fn close_session(mut s: Session) {
    let _ = tokio::time::timeout(Duration::from_millis(500), s.writer.send(&Message::Bye)).await;
    s.writer.finish();
    s.conn.close(CODE_NO_ERROR, b"sync done");
}

/// How long, once something was fetched or confirmed, the fetch still waits for peers that have
/// not answered yet (one of them may offer a newer head) before it gives up on them.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Pulls from every target what it has and we lack, into `store`.
///
/// Connects to all targets at once and sends `Hello` and `Have { head: local head }`. A [`Pull`]
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
            report.peers[i].error = Some("no local endpoint for its address family".into());
            report.peers[i].failure = Some(PeerFailure::Other);
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
                        out.error = Some(e.reason);
                        out.failure = Some(e.kind);
                        if e.fatal {
                            settled[i] = true;
                        }
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
                out.failure = None;
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
                add_stats(&mut report.stats, &result.stats);
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
                    report.peers[i].error = Some(err.reason);
                    report.peers[i].failure = Some(err.kind);
                    dropped.push(i);
                    if err.fatal {
                        settled[i] = true;
                    }
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
                    Err(reason) if reason.starts_with("local store") => {
                        report.local_error = Some(reason);
                        break;
                    }
                    Err(reason) => {
                        for &i in &idx {
                            if report.peers[i].error.is_none() {
                                report.peers[i].error = Some(reason.clone());
                                report.peers[i].failure = Some(PeerFailure::Other);
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
            report.peers[i].error = Some(format!(
                "no answer within {:.1} s, while the other peers were done",
                ANSWER_GRACE.as_secs_f64()
            ));
            report.peers[i].failure = Some(PeerFailure::Unreachable);
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
        p.failure = None;
        if let Some(d) = p.device.filter(|_| set_ref) {
            let name = format!("peers/{}", DeviceId(d));
            if let Err(e) = store.set_ref(&name, head) {
                p.error = Some(format!("cannot record the fetched head: {e}"));
                p.failure = Some(PeerFailure::Other);
            }
        }
        if let Some(entry) = report.heads.iter_mut().find(|(h, _)| *h == head) {
            entry.1.push(i);
            entry.1.sort_unstable();
        }
    }
}

fn add_stats(total: &mut PullStats, s: &PullStats) {
    total.requests += s.requests;
    total.nodes_requested += s.nodes_requested;
    total.chunks_requested += s.chunks_requested;
    total.endgame_requests += s.endgame_requests;
    total.nodes_fetched += s.nodes_fetched;
    total.chunks_fetched += s.chunks_fetched;
    total.payload_bytes_received += s.payload_bytes_received;
    total.chunk_bytes_discovered += s.chunk_bytes_discovered;
    total.chunk_bytes_fetched += s.chunk_bytes_fetched;
    total.duplicates += s.duplicates;
    total.peers_dropped += s.peers_dropped;
}

struct PullResult {
    outcome: Result<(), String>,
    stats: PullStats,
    /// When the last node or chunk arrived.
    last_arrival: Option<Instant>,
    /// Peers dropped for saying they lack something beneath the head.
    missing: Vec<usize>,
    peer_errors: Vec<(usize, PeerError)>,
}

enum Event {
    Message(usize, Message),
    /// A chunk, verified by the reader task (off the engine's thread).
    Chunk {
        slot: usize,
        id: left_store::ChunkId,
        bytes: Vec<u8>,
        check: Result<usize, crate::ecp::VerifyError>,
    },
    Failed(usize, PeerError),
}

/// Most messages handled before the engine is polled again.
const EVENT_BATCH: usize = 32;

/// Starts the reader and writer tasks of a peer joining a pull in `slot`.
fn attach(
    slot: usize,
    s: Session,
    tx: &mpsc::Sender<Event>,
    cfg: &FetchConfig,
    tasks: &mut tokio::task::JoinSet<()>,
) -> (mpsc::UnboundedSender<Message>, Connection) {
    let Session {
        conn,
        mut reader,
        mut writer,
        ..
    } = s;
    let txr = tx.clone();
    let max_chunk = cfg.pull.max_chunk_size;
    let stager = cfg.stager.clone();
    tasks.spawn(async move {
        loop {
            let ev = match reader.next().await {
                // Chunks are verified here, in parallel with the engine and the store writes
                // (and their plain bytes staged, see `stage`).
                Ok(Some(Message::Chunk { id, bytes })) => {
                    let check = crate::ecp::verify_chunk_with(&id, &bytes, max_chunk, |plain| {
                        if let Some(s) = &stager {
                            s.chunk_verified(&id, plain);
                        }
                    });
                    Event::Chunk {
                        slot,
                        id,
                        bytes,
                        check,
                    }
                }
                Ok(Some(m)) => Event::Message(slot, m),
                Ok(None) => Event::Failed(
                    slot,
                    PeerError::retry(PeerFailure::Unreachable, "the peer ended the session"),
                ),
                Err(e) => Event::Failed(slot, read_error(&e)),
            };
            let last = matches!(ev, Event::Failed(..));
            if txr.send(ev).await.is_err() || last {
                return;
            }
        }
    });
    let (wtx, mut wrx) = mpsc::unbounded_channel::<Message>();
    let txw = tx.clone();
    tasks.spawn(async move {
        while let Some(m) = wrx.recv().await {
            let mut ok = writer.queue(&m).is_ok();
            while let Ok(m) = wrx.try_recv() {
                ok &= writer.queue(&m).is_ok();
            }
            if let Err(e) = writer.flush().await {
                let _ = txw.send(Event::Failed(slot, net_error(&e))).await;
                return;
            }
            if !ok {
                return;
            }
        }
        writer.finish();
    });
    (wtx, conn)
}

/// Where a pull starts from: the fetch's byte counts so far (for the progress bar) and the time
/// `timeout` counts from.
struct Baseline {
    discovered: u64,
    fetched: u64,
    idle_since: Instant,
}

async fn run_pull(
    store: &Arc<Store>,
    head: NodeId,
    sessions: Vec<(usize, Session)>,
    mut late: mpsc::UnboundedReceiver<(usize, Session)>,
    cfg: &FetchConfig,
    progress: &dyn FetchProgress,
    base: Baseline,
) -> PullResult {
    let (tx, mut rx) = mpsc::channel::<Event>(cfg.queue.max(1));
    let mut writers = Vec::new();
    let mut conns = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, (i, s)) in sessions.into_iter().enumerate() {
        let (w, conn) = attach(slot, s, &tx, cfg, &mut tasks);
        writers.push(Some(w));
        conns.push((i, conn));
    }
    let mut late_open = true;
    let peers: Vec<PeerId> = (0..conns.len() as u64).map(PeerId).collect();
    let mut pull = Pull::new(head, &peers, Instant::now(), cfg.pull.clone());
    let mut peer_errors: Vec<(usize, PeerError)> = Vec::new();
    let mut missing: Vec<usize> = Vec::new();
    let (mut arrivals, mut last_arrival) = (0u64, None);
    // Verified chunks handed out by the engine and not stored yet (see `store_chunks`).
    let mut chunks: Vec<(left_store::ChunkId, Vec<u8>, u32)> = Vec::new();
    let outcome = loop {
        // Drain the engine, applying each effect before it can look at the store again
        // (consecutive chunks are gathered and stored in one write).
        let mut finished = None;
        loop {
            // Chunks handed out are stored in one write before the engine may look at the store
            // again, and before any other effect (a completeness mark) is applied.
            if !pull.has_effects() && !chunks.is_empty() {
                if let Err(err) = store_chunks(store, &mut chunks) {
                    finished = Some(Err(format!("local store: {err}")));
                    break;
                }
            }
            let Some(out) = pull.poll(Instant::now(), &**store) else {
                break;
            };
            match out {
                Output::Effect(Effect::StoreChunk(id, bytes, plain_len)) => {
                    chunks.push((id, bytes, plain_len));
                }
                Output::Send { peer, message } => {
                    if let Some(Some(w)) = writers.get(peer.0 as usize) {
                        let _ = w.send(message);
                    }
                }
                Output::Effect(e) => {
                    // The gathered chunks go first: the effect may mark their files complete.
                    if !matches!(e, Effect::PeerDropped { .. }) && !chunks.is_empty() {
                        if let Err(err) = store_chunks(store, &mut chunks) {
                            finished = Some(Err(format!("local store: {err}")));
                            break;
                        }
                    }
                    match e {
                        Effect::PeerDropped {
                            peer,
                            reason,
                            cause,
                        } => {
                            let slot = peer.0 as usize;
                            let (i, conn) = &conns[slot];
                            // Dropped for lying (bad data, NotFound for what it offered): not
                            // retried. A stall, a Bye (a server shutting down) or an Error may pass.
                            let kind = match cause {
                                DropCause::BadData | DropCause::Missing => PeerFailure::Misbehaved,
                                DropCause::Stalled | DropCause::Ended => PeerFailure::Unreachable,
                                DropCause::PeerError(code) => error_kind(ErrorCode(code)),
                                DropCause::Removed => PeerFailure::Other,
                            };
                            if cause == DropCause::Missing {
                                missing.push(*i);
                            }
                            peer_errors.push((
                                *i,
                                PeerError {
                                    reason: sanitize(&reason),
                                    // Missing is retried once: the server may have collected garbage
                                    // since it offered the head (see `attempt`).
                                    fatal: cause == DropCause::BadData,
                                    kind,
                                },
                            ));
                            conn.close(CODE_PROTOCOL_ERROR, reason.as_bytes());
                            writers[slot] = None;
                        }
                        Effect::Done(_) => finished = Some(Ok(())),
                        Effect::Failed(r) => finished = Some(Err(r)),
                        other => {
                            if let Err(err) = crate::sync::apply_to_store(store, &other) {
                                finished = Some(Err(format!("local store: {err}")));
                                break;
                            }
                            // Before the engine can ask for the node's children.
                            if let (Effect::StoreNode(id, bytes), Some(s)) = (&other, &cfg.stager) {
                                s.node_stored(*id, bytes);
                            }
                        }
                    }
                }
            }
        }
        let st = pull.stats();
        let arrived = st.nodes_fetched + st.chunks_fetched;
        if arrived > arrivals {
            arrivals = arrived;
            last_arrival = Some(Instant::now());
        }
        progress.update(
            base.discovered + st.chunk_bytes_discovered,
            base.fetched + st.chunk_bytes_fetched,
        );
        if let Some(f) = finished {
            break f;
        }
        let deadline = pull.poll_timeout();
        let idle_deadline =
            last_arrival.unwrap_or(base.idle_since).max(base.idle_since) + cfg.timeout;
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = late.recv(), if late_open => {
                match joined {
                    Some((i, s)) => {
                        let slot = conns.len();
                        let (w, conn) = attach(slot, s, &tx, cfg, &mut tasks);
                        writers.push(Some(w));
                        conns.push((i, conn));
                        pull.add_peer(Instant::now(), PeerId(slot as u64));
                    }
                    None => late_open = false,
                }
            }
            ev = rx.recv() => {
                // `tx` is held here, so the channel never ends.
                let Some(ev) = ev else { continue };
                let mut ev = Some(ev);
                let mut n = 0;
                while let Some(e) = ev.take() {
                    handle_event(&mut pull, e, &conns, &mut peer_errors, &mut writers);
                    n += 1;
                    if n >= EVENT_BATCH {
                        break;
                    }
                    ev = rx.try_recv().ok();
                }
            }
            _ = sleep => pull.handle_timeout(Instant::now()),
            _ = tokio::time::sleep_until(idle_deadline.into()) => {
                // Peers that answer but deliver nothing (`Working` forever, say) are not stalls
                // to the engine; `timeout` without an arrival ends the pull all the same.
                let secs = cfg.timeout.as_secs_f64();
                for p in pull.peers().collect::<Vec<_>>() {
                    let slot = p.0 as usize;
                    let owed = crate::sync::owed_note(pull.oldest_owed(p));
                    peer_errors.push((
                        conns[slot].0,
                        PeerError::retry(
                            PeerFailure::Unreachable,
                            format!("stalled: no object arrived from it for {secs:.1} s{owed}"),
                        ),
                    ));
                }
                break Err(format!("no progress for {secs:.1} s"));
            }
        }
    };
    let stats = pull.stats().clone();
    drop(writers);
    tasks.abort_all();
    for (_, conn) in &conns {
        conn.close(CODE_NO_ERROR, b"sync done");
    }
    PullResult {
        outcome,
        stats,
        last_arrival,
        peer_errors,
        missing,
    }
}

/// Stores the gathered chunks in one write and empties the list.
fn store_chunks(
    store: &Store,
    chunks: &mut Vec<(left_store::ChunkId, Vec<u8>, u32)>,
) -> Result<(), left_store::Error> {
    let batch: Vec<(left_store::ChunkId, &[u8], u32)> = chunks
        .iter()
        .map(|(id, bytes, n)| (*id, bytes.as_slice(), *n))
        .collect();
    store.put_chunks_verified(&batch)?;
    chunks.clear();
    Ok(())
}

fn handle_event(
    pull: &mut Pull,
    ev: Event,
    conns: &[(usize, Connection)],
    peer_errors: &mut Vec<(usize, PeerError)>,
    writers: &mut [Option<mpsc::UnboundedSender<Message>>],
) {
    let now = Instant::now();
    match ev {
        Event::Message(slot, m) => pull.handle_message(now, PeerId(slot as u64), m),
        Event::Chunk {
            slot,
            id,
            bytes,
            check,
        } => pull.handle_checked_chunk(now, PeerId(slot as u64), id, bytes, check),
        Event::Failed(slot, err) => {
            if err.fatal {
                // A malformed message: the peer learns why from the close reason.
                conns[slot]
                    .1
                    .close(CODE_PROTOCOL_ERROR, err.reason.as_bytes());
            }
            if pull.peers().any(|p| p.0 as usize == slot) {
                pull.remove_peer(PeerId(slot as u64), &err.reason);
                peer_errors.push((conns[slot].0, err));
            }
            writers[slot] = None;
        }
    }
}

/// Most snapshot headers [`fetch_history`] fetches in one call.
pub const HISTORY_LIMIT: usize = 10_000;

/// Fetches from the peer at `addr` the snapshot headers between `head` (stored here) and the
/// snapshots this store already knows, so ancestry (`Store::is_ancestor`) and `left log` see the
/// chain: a peer that made two snapshots since we last synced is ahead of us, not diverged.
///
/// Only headers travel (about 200 bytes each; their trees are not fetched: they are stored as
/// shallow, as `gc --keep-last` leaves old snapshots). The walk goes newest first, one request
/// per generation of up to [`crate::ecp::MAX_IDS_PER_REQUEST`] unknown parents, and does not go
/// below `floor_ns` (snapshots older than the local head cannot lead to it: a snapshot is never
/// older than its parents) or past `limit` headers. A parent the peer lacks (its own history
/// is shallow) ends that branch. Every header is checked against its id and must be a snapshot;
/// anything else ends the call with the reason. Returns the number of headers stored.
pub async fn fetch_history(
    endpoints: &Endpoints,
    addr: SocketAddr,
    cfg: &FetchConfig,
    store: &Store,
    head: NodeId,
    floor_ns: i64,
    limit: usize,
) -> Result<usize, String> {
    let unknown_parents = |ids: &[NodeId]| -> Result<Vec<NodeId>, String> {
        let mut out = Vec::new();
        for id in ids {
            let snap = store.snapshot(*id).map_err(|e| e.to_string())?;
            if snap.time_ns < floor_ns {
                continue;
            }
            for p in snap.parents {
                if store.get_node(p).map_err(|e| e.to_string())?.is_none() && !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    };
    let mut want = unknown_parents(&[head])?;
    if want.is_empty() {
        return Ok(0);
    }
    let endpoint = endpoints
        .for_addr(addr)
        .ok_or_else(|| format!("no endpoint for {addr}"))?;
    let mut device = None;
    let mut s = tokio::time::timeout(
        cfg.connect_timeout,
        open_session(endpoint, addr, &Greeting::new(cfg, store), &mut device),
    )
    .await
    .map_err(|_| "no answer".to_string())?
    .map_err(|e| e.reason)?;
    let mut stored = 0;
    let stall = cfg.pull.stall_timeout;
    let result = async {
        while !want.is_empty() && stored < limit {
            want.truncate(crate::ecp::MAX_IDS_PER_REQUEST.min(limit - stored));
            let got = request_nodes(&mut s, &want, stall, &mut |id, bytes| {
                if store
                    .put_snapshot_header(id, bytes)
                    .map_err(|e| format!("snapshot {}: {e}", id.fmt_short()))?
                {
                    stored += 1;
                }
                Ok(())
            })
            .await?;
            want = unknown_parents(&got)?;
        }
        Ok::<(), String>(())
    }
    .await;
    close_session(s).await;
    result.map(|()| stored)
}

/// Takes each node a peer sent, already checked against its id (stores it, say); an error ends
/// the request with that reason.
pub type NodeSink<'a> = dyn FnMut(NodeId, &[u8]) -> Result<(), String> + Send + 'a;

/// Asks the peer for the nodes `want` (at most [`crate::ecp::MAX_IDS_PER_REQUEST`]) and hands
/// each one, checked against its id, to `keep`. Returns the ids received; the others the peer
/// does not have. A node not asked for, a node that does not match its id, an `Error`, or
/// `stall` without an answer ends the call with the reason.
async fn request_nodes(
    s: &mut Session,
    want: &[NodeId],
    stall: Duration,
    keep: &mut NodeSink<'_>,
) -> Result<Vec<NodeId>, String> {
    s.writer
        .send(&Message::GetNodes { ids: want.to_vec() })
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut answered = 0;
    while answered < want.len() {
        let msg = tokio::time::timeout(stall, s.reader.next())
            .await
            .map_err(|_| format!("stalled: no answer for {:.1} s", stall.as_secs_f64()))?
            .map_err(|e| read_error(&e).reason)?
            .ok_or_else(|| "the peer ended the session".to_string())?;
        match msg {
            Message::Nodes { nodes } => {
                for (id, bytes) in nodes {
                    if !want.contains(&id) || got.contains(&id) {
                        return Err(format!("the peer sent node {} unasked", id.fmt_short()));
                    }
                    crate::ecp::verify_node(&id, &bytes).map_err(|e| e.to_string())?;
                    keep(id, &bytes)?;
                    got.push(id);
                    answered += 1;
                }
            }
            Message::NotFound { ids } => answered += ids.len(),
            Message::Working { retry_after_ms } => {
                tokio::time::sleep(Duration::from_millis(retry_after_ms.min(5_000).into())).await;
                s.writer
                    .send(&Message::GetNodes { ids: want.to_vec() })
                    .await
                    .map_err(|e| e.to_string())?;
                got.clear();
                answered = 0;
            }
            Message::Error { message, .. } => {
                return Err(format!("the peer refused: {}", sanitize(&message)))
            }
            // Repeated hellos and heads need no answer here.
            _ => {}
        }
    }
    Ok(got)
}

/// One peer's answer to [`NodeSession::open`] failing: what kind of failure, and why (one line).
pub type OpenError = (PeerFailure, String);

/// A session with one peer outside a [`Pull`]: the head it offered in the `Have` exchange, and
/// nodes asked by id (`GetNodes`), each checked against its id before it is handed over. For the
/// few nodes a caller wants one by one (the folders along a path, snapshot headers); a tree is
/// fetched with [`fetch`] and [`FetchConfig::want`].
pub struct NodeSession {
    s: Session,
    head: Option<NodeId>,
    device: Option<[u8; 32]>,
    stall: Duration,
}

impl NodeSession {
    /// Connects to the peer at `addr` (handshake, `Hello`, `Have` with our head), within
    /// `cfg.connect_timeout`.
    pub async fn open(
        endpoints: &Endpoints,
        addr: SocketAddr,
        cfg: &FetchConfig,
        store: &Store,
    ) -> Result<NodeSession, OpenError> {
        let endpoint = endpoints.for_addr(addr).ok_or_else(|| {
            (
                PeerFailure::Other,
                "no local endpoint for its address family".to_string(),
            )
        })?;
        let greeting = Greeting::new(cfg, store);
        let mut device = None;
        let s = tokio::time::timeout(
            cfg.connect_timeout,
            open_session(endpoint, addr, &greeting, &mut device),
        )
        .await
        .map_err(|_| {
            (
                PeerFailure::Unreachable,
                format!(
                    "no answer within {:.1} s ({NO_ANSWER_CAUSES})",
                    cfg.connect_timeout.as_secs_f64()
                ),
            )
        })?
        .map_err(|e| (e.kind, e.reason))?;
        let head = match s.answer {
            Answer::Excess(h) => Some(h),
            Answer::Same => greeting.local_head,
            Answer::Nothing => None,
        };
        Ok(NodeSession {
            s,
            head,
            device,
            stall: cfg.pull.stall_timeout,
        })
    }

    /// The peer's head (`None`: it has no snapshot).
    pub fn head(&self) -> Option<NodeId> {
        self.head
    }

    /// The peer's device key.
    pub fn device(&self) -> Option<[u8; 32]> {
        self.device
    }

    /// Asks for `ids` (in requests of at most [`crate::ecp::MAX_IDS_PER_REQUEST`]) and hands each
    /// node received, verified against its id, to `keep`. Returns the ids received: the others
    /// the peer does not have.
    pub async fn get_nodes(
        &mut self,
        ids: &[NodeId],
        keep: &mut NodeSink<'_>,
    ) -> Result<Vec<NodeId>, String> {
        let mut got = Vec::new();
        for part in ids.chunks(crate::ecp::MAX_IDS_PER_REQUEST) {
            got.extend(request_nodes(&mut self.s, part, self.stall, keep).await?);
        }
        Ok(got)
    }

    /// Says goodbye and closes.
    pub async fn close(self) {
        close_session(self.s).await;
    }
}

/// Asks every target for its head at once (handshake, `Hello`, `Have`), fetching nothing: one
/// outcome per target, in order, with its device and head (ours when it answered `Same`), or the
/// error and its kind. Each is bounded by `cfg.connect_timeout`; once one peer has answered, the
/// others get [`ANSWER_GRACE`] more (as in [`fetch`]). Used to find out whether any peer can be
/// reached before changing anything that only a fetch can make good again.
pub async fn heads(
    endpoints: &Endpoints,
    targets: &[Target],
    cfg: &FetchConfig,
    store: &Store,
) -> Vec<PeerOutcome> {
    type Fut<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = PeerOutcome> + Send + 'a>>;
    let local_head = store.head().ok().flatten();
    let mut futs: Vec<Fut<'_>> = targets
        .iter()
        .map(|t| {
            Box::pin(async move {
                let mut out = PeerOutcome {
                    label: t.label.clone(),
                    addr: Some(t.addr),
                    ..PeerOutcome::default()
                };
                match NodeSession::open(endpoints, t.addr, cfg, store).await {
                    Ok(s) => {
                        out.device = s.device();
                        out.head = s.head();
                        out.same = s.head().is_some() && s.head() == local_head;
                        s.close().await;
                    }
                    Err((kind, reason)) => {
                        out.error = Some(reason);
                        out.failure = Some(kind);
                    }
                }
                out
            }) as Fut<'_>
        })
        .collect();
    let mut done: Vec<Option<PeerOutcome>> = targets.iter().map(|_| None).collect();
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(done.iter_mut()) {
            if o.is_some() {
                continue;
            }
            match std::future::Future::poll(f.as_mut(), cx) {
                std::task::Poll::Ready(v) => {
                    if v.error.is_none() && grace.is_none() {
                        grace = Some(Box::pin(tokio::time::sleep(ANSWER_GRACE)));
                    }
                    *o = Some(v);
                }
                std::task::Poll::Pending => pending = true,
            }
        }
        if !pending {
            return std::task::Poll::Ready(());
        }
        let grace_over = grace
            .as_mut()
            .is_some_and(|g| std::future::Future::poll(g.as_mut(), cx).is_ready());
        if grace_over {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    // Dropping the connects still running gives up on them.
    drop(futs);
    done.into_iter()
        .zip(targets)
        .map(|(o, t)| {
            o.unwrap_or_else(|| PeerOutcome {
                label: t.label.clone(),
                addr: Some(t.addr),
                error: Some(format!(
                    "no answer within {:.1} s, while the other peers were done",
                    ANSWER_GRACE.as_secs_f64()
                )),
                failure: Some(PeerFailure::Unreachable),
                ..PeerOutcome::default()
            })
        })
        .collect()
}
