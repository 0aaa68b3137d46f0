//! Automatic sync (`left serve --peer ...`): the tokio driver around [`crate::sync::Agent`].
//!
//! The agent decides when to scan and when to exchange with which peers; this loop feeds it
//! (watcher hints, heads that peers announce to our server, an `add` through the control socket,
//! timers) and runs the tasks it hands out (a scan and an exchange may run side by side; the
//! folder lock serialises a scan with an exchange's integration):
//!
//! - **Scan**: `Store::add` on a blocking thread, under the folder lock (the control socket's
//!   `add` takes it too, so two snapshots never race for the head).
//! - **Exchange**: [`crate::session::fetch`] with the chosen peers (our `Have`, or `Update` when our head
//!   changed, goes out on the way, so they hear of it; what they offer that we lack is pulled,
//!   swarm-style from every peer offering the same head), then the ancestry headers of each
//!   fetched head ([`super::history`], so merge bases can be found), then
//!   [`super::integrate`] on a blocking thread (scan, fast-forward or merge, checkout). A
//!   merge base whose tree is missing is pulled ([`crate::session::FetchConfig::want`]) and the
//!   integration retried once; otherwise the agent asks again later.
//!
//! Outgoing connections leave from the serving endpoint, so a peer sees us at our listening
//! address and can reach us there; a peer that reaches us without being configured is learned
//! (added to the agent's peers) the same way. Every device we reach is checked against the peer
//! book right after its handshake.
//!
//! The loop publishes an [`AutoStatus`] for `left status` ([`status`]); `idle` is the agent's
//! (nothing to scan, fetch or check out).
//!
//! What it is not: it decides nothing the agent decides (when to scan, whom to ask, backoff);
//! the history fetch is [`super::history`]'s and the merge [`super::integrate`]'s. It prints
//! nothing: each update, merge, conflict and unreadable path goes to the caller as an
//! [`AutoEvent`], and the caller decides what reaches the log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use left_store::{CheckoutOptions, NoProgress, NodeId, Store};
use tokio::sync::{mpsc, watch};

mod event;
mod holds;
mod status;

use holds::{holds, holds_cached, HoldsCache};

pub use event::{AutoEvent, OnAutoEvent};
use status::{publish, Totals};
pub use status::{AutoPeerStatus, AutoStatus, SkippedStatus, TransferStatus};

use super::history::{fetch_ancestry, fetch_missing};
use super::integrate::{integrate, IntegrateOptions, Integrated};
use crate::identity::DeviceId;
use crate::session::{fetch, Endpoints, FetchConfig, FetchProgress, Target};
use crate::sync::{Agent, AgentConfig, ExchangeOutcome, ScanOutcome, Task};

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct AutoConfig {
    /// The agent's timers.
    pub agent: AgentConfig,
    /// How to fetch (hello, engine limits, timeouts; `announce`/`want` are set per exchange).
    pub fetch: FetchConfig,
    /// This device.
    pub device: [u8; 32],
    /// Checkout settings.
    pub checkout: CheckoutOptions,
}

/// Something the driver is told.
#[derive(Clone, Debug)]
pub enum AutoInput {
    /// The share folder changed (a watcher event).
    LocalChange,
    /// Our head moved outside the driver (an `add` through the control socket).
    HeadChanged,
    /// A peer told our server its head.
    PeerHead {
        /// Where it connected from.
        addr: SocketAddr,
        /// Its device.
        device: [u8; 32],
        /// Its head.
        head: Option<NodeId>,
    },
}

/// A peer as the driver knows it.
#[derive(Clone, Debug)]
struct Peer {
    target: Target,
    configured: bool,
    device: Option<[u8; 32]>,
    head: Option<NodeId>,
    connected: bool,
    last_seen: Option<Instant>,
    last_error: Option<String>,
}

struct Ctx {
    store: Arc<Store>,
    share: PathBuf,
    endpoints: Endpoints,
    cfg: AutoConfig,
    on_event: OnAutoEvent,
    /// Held by every task that scans or moves the head (and by the control socket's `add`).
    folder: Arc<Mutex<()>>,
    status: Arc<Mutex<AutoStatus>>,
    /// Files still being written have waited `max_delay`: scan without the settle wait.
    settle_off: std::sync::atomic::AtomicBool,
}

/// What a task reports back to the loop.
enum Done {
    Scan(Result<ScanOutcome, String>),
    Exchange(Box<ExchangeReport>),
}

/// One peer's part of an exchange: (its index, device, head, error).
type PeerReport = (usize, Option<[u8; 32]>, Option<NodeId>, Option<String>);

#[derive(Default)]
struct ExchangeReport {
    outcome: ExchangeOutcome,
    /// Per peer index: (device, head, error).
    peers: Vec<PeerReport>,
    integrated: Option<Integrated>,
    error: Option<String>,
    payload_bytes: u64,
    chunks: u64,
    chunk_bytes: u64,
    duplicates: u64,
    /// Heads that could not be integrated this time.
    stuck: Vec<NodeId>,
}

/// Runs automatic sync until `shutdown` turns true.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    store: Arc<Store>,
    share: PathBuf,
    endpoints: Endpoints,
    peers: Vec<Target>,
    cfg: AutoConfig,
    mut inputs: mpsc::UnboundedReceiver<AutoInput>,
    status: Arc<Mutex<AutoStatus>>,
    folder: Arc<Mutex<()>>,
    on_event: OnAutoEvent,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut agent = Agent::new(Instant::now(), cfg.agent.clone(), peers.len());
    let mut known: Vec<Peer> = peers
        .into_iter()
        .map(|target| Peer {
            target,
            configured: true,
            device: None,
            head: None,
            connected: false,
            last_seen: None,
            last_error: None,
        })
        .collect();
    let ctx = Arc::new(Ctx {
        store,
        share,
        endpoints,
        cfg,
        on_event,
        folder,
        status,
        settle_off: std::sync::atomic::AtomicBool::new(false),
    });
    let mut scan_task: Option<tokio::task::JoinHandle<Done>> = None;
    let mut xchg_task: Option<tokio::task::JoinHandle<Done>> = None;
    let mut totals = Totals::default();
    let mut last_error: Option<String> = None;
    let mut holds_cache = HoldsCache::default();
    // Heads that could not be integrated (their history or a merge base cannot be had): a peer
    // announcing one again does not start a new exchange at once; the agent's backoff and the
    // periodic exchange retry them.
    let mut stuck: std::collections::HashSet<NodeId> = Default::default();
    // Since when scans keep finding files still being written (see `max_delay`).
    let mut unsettled_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        agent.handle_timeout(now);
        while let Some(t) = agent.poll_task(now) {
            let scan = t == Task::Scan;
            let h = start(&ctx, &known, t, &stuck);
            if scan {
                scan_task = Some(h);
            } else {
                xchg_task = Some(h);
            }
        }
        publish(&ctx, &agent, &known, totals, &last_error, &mut holds_cache);
        if *shutdown.borrow() {
            break;
        }
        // Timers already due that could not start anything wait for a task's end (which wakes
        // the loop): sleeping until a past deadline would spin.
        let deadline = agent
            .next_timer_after(now)
            .unwrap_or(now + Duration::from_secs(3600));
        let mut finished = None;
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            input = inputs.recv() => {
                let Some(first) = input else { break };
                let now = Instant::now();
                // Everything queued is taken in one pass (a burst of watcher hints or
                // announcements costs one status update, not one each).
                let mut batch = vec![first];
                while batch.len() < 4096 {
                    match inputs.try_recv() {
                        Ok(i) => batch.push(i),
                        Err(_) => break,
                    }
                }
                for input in batch {
                match input {
                    AutoInput::LocalChange => agent.local_change(now),
                    AutoInput::HeadChanged => agent.head_changed(now),
                    AutoInput::PeerHead { addr, device, head } => {
                        let i = match find_peer(&known, addr, device) {
                            Some(i) => i,
                            // Learned peers are capped: past that, an unknown device is served
                            // but not talked back to.
                            None if known.len() >= MAX_PEERS => continue,
                            None => {
                                known.push(Peer {
                                    target: Target { label: addr.to_string(), addr },
                                    configured: false,
                                    device: Some(device),
                                    head: None,
                                    connected: true,
                                    last_seen: None,
                                    last_error: None,
                                });
                                agent.add_peer(now)
                            }
                        };
                        let p = &mut known[i];
                        // A known device talking from a new address on the port we know it by
                        // (a laptop on another network: a serving peer connects from its
                        // listening port) is dialled there from now on.
                        if p.device == Some(device)
                            && p.target.addr != addr
                            && p.target.addr.port() == addr.port()
                        {
                            p.target.addr = addr;
                        }
                        p.device = Some(device);
                        p.head = head;
                        p.connected = true;
                        p.last_seen = Some(now);
                        if let Some(h) = head {
                            if !holds_cached(&ctx.store, h, &mut holds_cache) && !stuck.contains(&h) {
                                agent.heard(now, i);
                            }
                        }
                    }
                }
                }
            }
            done = async { scan_task.as_mut().expect("guarded").await }, if scan_task.is_some() => {
                scan_task = None;
                finished = Some((true, done));
            }
            done = async { xchg_task.as_mut().expect("guarded").await }, if xchg_task.is_some() => {
                xchg_task = None;
                finished = Some((false, done));
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                agent.handle_timeout(Instant::now());
            }
        }
        if let Some((was_scan, done)) = finished {
            let now = Instant::now();
            match done {
                Ok(Done::Scan(r)) => match r {
                    Ok(o) => {
                        last_error = None;
                        if o.unsettled {
                            let since = *unsettled_since.get_or_insert(now);
                            // A file rewritten more often than `settle` (a log, a
                            // database) would never be published: after `max_delay` of
                            // that, the next scan takes it as it is.
                            ctx.settle_off.store(
                                now.duration_since(since) >= ctx.cfg.agent.max_delay,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        } else {
                            unsettled_since = None;
                            ctx.settle_off
                                .store(false, std::sync::atomic::Ordering::Relaxed);
                        }
                        agent.scan_done(now, o)
                    }
                    Err(e) => {
                        last_error = Some(e);
                        agent.scan_done(now, ScanOutcome::default());
                    }
                },
                Ok(Done::Exchange(rep)) => {
                    for (i, device, head, error) in &rep.peers {
                        let p = &mut known[*i];
                        if device.is_some() {
                            p.device = *device;
                        }
                        match error {
                            None => {
                                p.head = head.or(p.head);
                                p.connected = true;
                                p.last_seen = Some(now);
                                p.last_error = None;
                            }
                            Some(e) => {
                                p.connected = false;
                                p.last_error = Some(e.clone());
                            }
                        }
                    }
                    totals.payload += rep.payload_bytes;
                    totals.chunks += rep.chunks;
                    totals.chunk_bytes += rep.chunk_bytes;
                    totals.duplicates += rep.duplicates;
                    if let Some(ig) = &rep.integrated {
                        totals.merges += u64::from(ig.merges);
                        totals.conflicts += ig.conflicts.len() as u64;
                        totals.fast_forwards += u64::from(ig.fast_forwards);
                        if ig.kept > 0 || ig.unsettled {
                            // Local changes the checkout kept, or files still being
                            // written: snapshot them later.
                            agent.local_change(now);
                        }
                    }
                    match &rep.error {
                        Some(e) => last_error = Some(e.clone()),
                        None if !rep.outcome.reached.is_empty() => last_error = None,
                        None => {}
                    }
                    stuck.extend(rep.stuck.iter().copied());
                    if rep.outcome.new_head {
                        stuck.clear();
                    }
                    agent.exchange_done(now, &rep.outcome);
                    // A peer that reached us unconfigured and cannot be reached back (a
                    // one-shot `left sync` from a passing port) is left alone until it
                    // talks to us again.
                    for &i in &rep.outcome.failed {
                        if !known[i].configured && agent.failures(i) >= LEARNED_RETRIES {
                            agent.retire(i);
                        }
                    }
                    report_exchange(&ctx, &rep, &known);
                }
                Err(e) => {
                    last_error = Some(format!("a sync task failed: {e}"));
                    // The agent waits for the task it started: end it as failed.
                    if was_scan {
                        agent.scan_done(now, ScanOutcome::default());
                    } else {
                        agent.exchange_done(now, &ExchangeOutcome::default());
                    }
                }
            }
        }
    }
    // An exchange still running is cut short: its network part stops at once (what it fetched
    // is stored; a new exchange fetches only the rest), while the local work it may be doing on
    // a blocking thread (a checkout, which is journaled anyway) runs to its end before the
    // process exits. A scan is waited for.
    if let Some(t) = xchg_task {
        t.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(t) = scan_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
}

/// Failed exchanges in a row after which a learned peer is retired.
const LEARNED_RETRIES: u32 = 3;

/// Most peers known (configured and learned).
const MAX_PEERS: usize = 256;

/// The events of what an exchange brought in (none when it brought nothing).
fn report_exchange(ctx: &Ctx, rep: &ExchangeReport, known: &[Peer]) {
    let Some(ig) = &rep.integrated else { return };
    for h in &ig.held {
        (ctx.on_event)(AutoEvent::Held(h));
    }
    if !ig.moved() {
        return;
    }
    let from: Vec<&str> = rep
        .peers
        .iter()
        .filter(|(_, _, h, e)| e.is_none() && h.is_some() && *h != ig.before)
        .map(|(i, ..)| known[*i].target.label.as_str())
        .collect();
    (ctx.on_event)(AutoEvent::Updated {
        merged: ig.merges > 0,
        from,
        now: ig.after,
        written: ig.files_written,
        removed: ig.files_removed,
        kept: ig.kept,
    });
    for (path, copy) in &ig.conflicts {
        (ctx.on_event)(AutoEvent::Conflict { path, copy });
    }
    for u in &ig.unwritten {
        (ctx.on_event)(AutoEvent::Unwritten(u));
    }
}

/// The peer an announcement came from: by device once known, else by address.
fn find_peer(known: &[Peer], addr: SocketAddr, device: [u8; 32]) -> Option<usize> {
    known
        .iter()
        .position(|p| p.device == Some(device))
        .or_else(|| {
            known
                .iter()
                .position(|p| p.target.addr == addr && p.device.is_none())
        })
}

fn start(
    ctx: &Arc<Ctx>,
    known: &[Peer],
    task: Task,
    stuck: &std::collections::HashSet<NodeId>,
) -> tokio::task::JoinHandle<Done> {
    match task {
        Task::Scan => {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || Done::Scan(scan(&ctx)))
        }
        Task::Exchange { peers, announce } => {
            let ctx = ctx.clone();
            let targets: Vec<(usize, Target)> = peers
                .into_iter()
                .map(|i| (i, known[i].target.clone()))
                .collect();
            tokio::spawn({
                let stuck: Vec<NodeId> = stuck.iter().copied().collect();
                async move { Done::Exchange(Box::new(exchange(ctx, targets, announce, stuck).await)) }
            })
        }
    }
}

/// Snapshots local changes.
fn scan(ctx: &Ctx) -> Result<ScanOutcome, String> {
    let _folder = ctx.folder.lock().unwrap_or_else(|p| p.into_inner());
    let opts = left_store::AddOptions {
        device: ctx.cfg.device,
        message: String::new(),
        settle_ns: settle_ns(ctx),
        ..left_store::AddOptions::default()
    };
    let r = ctx
        .store
        .add(&ctx.share, &[], &opts, &NoProgress)
        .map_err(|e| format!("cannot snapshot {}: {e}", ctx.share.display()))?;
    // Paths a checkout could not write (a read-only folder made writable since, say).
    let before = ctx.store.unwritten_paths().unwrap_or_default();
    if !before.is_empty() {
        match ctx.store.retry_unwritten(&ctx.share, &ctx.cfg.checkout) {
            Ok(Some(c)) => {
                let still: Vec<_> = c.unwritten.iter().map(|u| &u.path).collect();
                for p in before.iter().filter(|p| !still.contains(p)) {
                    (ctx.on_event)(AutoEvent::WrittenNow(p));
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot write what a checkout left: {e}")),
        }
    }
    if r.newly_frozen > left_store::FROZEN_WARN {
        (ctx.on_event)(AutoEvent::NewlyFrozen(r.newly_frozen));
    }
    report_skipped(ctx, &r.skipped);
    let unsettled = !r.unsettled.is_empty()
        || r.skipped
            .iter()
            .any(|s| s.reason.contains("changed while being read"));
    release_memory();
    Ok(ScanOutcome {
        new_head: r.snapshot.is_some(),
        unsettled,
    })
}

/// Publishes the paths a scan could not read in the status and reports those not skipped at the
/// scan before (a file still being written is not one: it is taken once it settles; nor is a
/// path a checkout could not write, which status lists as unwritten).
fn report_skipped(ctx: &Ctx, skipped: &[left_store::Skipped]) {
    let unwritten = ctx.store.unwritten_paths().unwrap_or_default();
    let now: Vec<SkippedStatus> = skipped
        .iter()
        .filter(|s| !s.reason.contains("changed while being read") && !unwritten.contains(&s.path))
        .map(|s| SkippedStatus {
            path: s.path.display().to_string(),
            reason: s.reason.clone(),
        })
        .collect();
    let fresh: Vec<SkippedStatus> = {
        let mut st = ctx.status.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = now
            .iter()
            .filter(|s| !st.skipped.contains(s))
            .cloned()
            .collect();
        st.skipped = now;
        fresh
    };
    for s in &fresh {
        (ctx.on_event)(AutoEvent::Skipped {
            path: &s.path,
            reason: &s.reason,
        });
    }
}

/// The agent's settle time, as `AddOptions::settle_ns` (0 once files have been unsettled for
/// `max_delay`).
fn settle_ns(ctx: &Ctx) -> i64 {
    if ctx.settle_off.load(std::sync::atomic::Ordering::Relaxed) {
        return 0;
    }
    i64::try_from(ctx.cfg.agent.settle.as_nanos()).unwrap_or(i64::MAX)
}

/// Hands the memory of a finished add or checkout back (see `control.rs`).
fn release_memory() {
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

struct Bar {
    status: Arc<Mutex<AutoStatus>>,
}

impl FetchProgress for Bar {
    fn update(&self, discovered: u64, fetched: u64) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.transfer = Some(TransferStatus {
            bytes_discovered: discovered,
            bytes_fetched: fetched,
        });
    }
}

async fn exchange(
    ctx: Arc<Ctx>,
    targets: Vec<(usize, Target)>,
    announce: bool,
    stuck: Vec<NodeId>,
) -> ExchangeReport {
    let mut rep = ExchangeReport::default();
    let mut fcfg = ctx.cfg.fetch.clone();
    fcfg.announce = announce;
    fcfg.want = None;
    // Big new files are written out as they arrive, for the checkout of the integration.
    fcfg.stage = true;
    let list: Vec<Target> = targets.iter().map(|(_, t)| t.clone()).collect();
    if ctx.store.send_only().unwrap_or(false) {
        // Send-only: the peers hear our head; theirs is only looked at (headers), never taken.
        let looked = super::send_only::look(&ctx.endpoints, &ctx.store, &list, &fcfg).await;
        rep.payload_bytes += looked.header_bytes;
        for (k, p) in looked.peers.iter().enumerate() {
            let i = targets[k].0;
            rep.peers.push((
                i,
                p.device,
                p.head,
                p.error.as_ref().map(|e| e.reason.clone()),
            ));
            if p.error.is_none() {
                rep.outcome.reached.push(i);
            } else {
                rep.outcome.failed.push(i);
            }
        }
        return rep;
    }
    let bar = Bar {
        status: ctx.status.clone(),
    };
    let report = fetch(&ctx.endpoints, ctx.store.clone(), &list, &fcfg, &bar).await;
    rep.payload_bytes += report.stats.payload_bytes_received;
    rep.chunks += report.stats.chunks_fetched;
    rep.chunk_bytes += report.stats.chunk_bytes_fetched;
    rep.duplicates += report.stats.duplicates;
    for (k, p) in report.peers.iter().enumerate() {
        let i = targets[k].0;
        rep.peers.push((
            i,
            p.device,
            p.head,
            p.error.as_ref().map(|e| e.reason.clone()),
        ));
        if p.error.is_none() || p.fetched {
            rep.outcome.reached.push(i);
        } else {
            rep.outcome.failed.push(i);
        }
    }
    if let Some(e) = report.local_error {
        rep.error = Some(format!("cannot store what peers sent: {e}"));
        rep.outcome.incomplete = true;
        return rep;
    }
    // Heads to integrate: fetched, and not ours or behind ours.
    let mut heads: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
    for (h, idx) in &report.heads {
        if !holds(&ctx.store, *h) {
            heads.insert(*h, idx.clone());
        }
    }
    // Heads fetched earlier (a `peers/<device>` ref, complete here) but never brought in: a crash
    // between a fetch and its merge, with that peer unreachable since. Brought in now, unless the
    // device is no longer allowed or the head was set aside.
    if let Ok(refs) = ctx.store.refs() {
        for (name, h) in refs {
            let Some(dev) = name
                .strip_prefix("peers/")
                .and_then(|d| d.parse::<DeviceId>().ok())
            else {
                continue;
            };
            if fcfg.allow.as_ref().is_some_and(|a| !(a.0)(&dev.0))
                || heads.contains_key(&h)
                || stuck.contains(&h)
                || holds(&ctx.store, h)
                || !ctx.store.has_nodes(&[h]).map(|v| v[0]).unwrap_or(false)
            {
                continue;
            }
            heads.insert(h, Vec::new());
        }
    }
    if heads.is_empty() {
        return rep;
    }
    // Their ancestry, so merge bases can be found.
    for (h, idx) in &heads {
        let addrs: Vec<SocketAddr> = idx.iter().filter_map(|&k| report.peers[k].addr).collect();
        fetch_ancestry(&ctx.endpoints, &fcfg, &ctx.store, *h, &addrs).await;
    }
    let heads_list: Vec<NodeId> = heads.keys().copied().collect();
    let sources: Vec<Target> = heads
        .values()
        .flatten()
        .filter_map(|&k| {
            report.peers[k].addr.map(|addr| Target {
                label: report.peers[k].label.clone(),
                addr,
            })
        })
        .collect();
    // Integrate; when a merge lacks history headers or a base's tree, fetch them from the peers
    // that offered the heads and try again (twice at most: what they lack, nobody here has).
    let mut total: Option<Integrated> = None;
    let mut last: Result<Integrated, String> = Err(String::new());
    for round in 0..3 {
        last = integrate_blocking(&ctx, heads_list.clone(), report.staged.clone()).await;
        let Ok(ig) = &last else { break };
        match &mut total {
            None => total = Some(ig.clone()),
            Some(t) => t.add_round(ig),
        }
        if (ig.need_trees.is_empty() && ig.need_headers.is_empty()) || round == 2 {
            break;
        }
        let (p, c) = fetch_missing(&ctx.endpoints, &ctx.store, &sources, &fcfg, ig).await;
        rep.payload_bytes += p;
        rep.chunks += c;
    }
    match (last, total) {
        (Ok(_), Some(ig)) => {
            rep.outcome.new_head = ig.moved() || ig.scanned;
            let incomplete = !ig.need_trees.is_empty() || !ig.need_headers.is_empty();
            rep.outcome.incomplete = incomplete || !ig.errors.is_empty();
            for h in &ig.held {
                if let Ok(id) = h.id.parse::<NodeId>() {
                    rep.stuck.push(id);
                }
            }
            if let Some((h, e)) = ig.errors.first() {
                rep.stuck.extend(ig.errors.iter().map(|(h, _)| *h));
                rep.error = Some(format!("cannot bring in {}: {e}", h.fmt_short()));
            }
            if incomplete {
                rep.stuck = heads_list.clone();
                rep.error = Some(if ig.need_headers.is_empty() {
                    format!(
                        "cannot merge with {}: the files of its merge base {} are on no peer reached",
                        short_list(&heads_list),
                        short_list(&ig.need_trees)
                    )
                } else {
                    format!(
                        "cannot merge with {}: {} snapshot header(s) of its history are on no peer reached",
                        short_list(&heads_list),
                        ig.need_headers.len()
                    )
                });
            }
            if ig.moved() {
                if let Some(h) = ig.after {
                    tracing::info!(head = %h.fmt_short(), merges = ig.merges, "integrated");
                }
            }
            rep.integrated = Some(ig);
        }
        (Err(e), t) => {
            // What the rounds before the failure did still counts.
            if let Some(ig) = t {
                rep.outcome.new_head = ig.moved() || ig.scanned;
                rep.integrated = Some(ig);
            }
            rep.stuck = heads_list.clone();
            rep.error = Some(e);
            rep.outcome.incomplete = true;
        }
        (Ok(_), None) => {}
    }
    rep
}

/// Short ids, comma-separated.
fn short_list(ids: &[NodeId]) -> String {
    ids.iter()
        .map(|h| h.fmt_short())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn integrate_blocking(
    ctx: &Arc<Ctx>,
    heads: Vec<NodeId>,
    staged: Option<Arc<left_store::StagedFiles>>,
) -> Result<Integrated, String> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let _folder = ctx.folder.lock().unwrap_or_else(|p| p.into_inner());
        let opts = IntegrateOptions {
            device: ctx.cfg.device,
            message: String::new(),
            checkout: CheckoutOptions {
                staged,
                ..ctx.cfg.checkout.clone()
            },
            settle_ns: settle_ns(&ctx),
            time_ns: None,
            accept: Vec::new(),
        };
        let r = integrate(&ctx.store, &ctx.share, &heads, &opts, &NoProgress)
            .map_err(|e| format!("cannot bring in what peers have: {e}"));
        release_memory();
        r
    })
    .await
    .map_err(|e| format!("the sync task failed: {e}"))?
}
