//! What automatic sync is doing, as `left status` shows it: [`AutoStatus`] and its parts, and
//! [`publish`], which the loop calls after every step to refresh it from the agent, the peers
//! it knows and its counters.

use std::time::Instant;

use serde::Serialize;

use super::{holds_cached, Ctx, HoldsCache, Peer};
use crate::identity::DeviceId;
use crate::sync::Agent;

/// One peer in [`AutoStatus`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct AutoPeerStatus {
    /// As configured (or the address it reached us from).
    pub peer: String,
    /// Its address.
    pub addr: String,
    /// Its device id, once known.
    pub device: Option<String>,
    /// The last exchange with it succeeded, or it talked to us since.
    pub connected: bool,
    /// Its head as last heard.
    pub head: Option<String>,
    /// Its head is ours.
    pub in_sync: bool,
    /// How far we are behind it: plain chunk bytes still to fetch while a pull runs, 0 when we
    /// hold its head (in sync, or it is behind us), `None` when not known yet.
    pub lag_bytes: Option<u64>,
    /// Seconds since we last heard from it.
    pub last_seen_secs: Option<f64>,
    /// The last failure, one line.
    pub last_error: Option<String>,
    /// Configured with `--peer` (not learned).
    pub configured: bool,
}

/// A pull running now.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TransferStatus {
    /// Plain chunk bytes found missing so far.
    pub bytes_discovered: u64,
    /// Of which fetched.
    pub bytes_fetched: u64,
}

/// What automatic sync is doing, for `left status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AutoStatus {
    /// Nothing to scan, fetch or check out.
    pub idle: bool,
    /// `"scan"`, `"exchange"` or null.
    pub running: Option<String>,
    /// Our head.
    pub head: Option<String>,
    /// The peers.
    pub peers: Vec<AutoPeerStatus>,
    /// The pull running now.
    pub transfer: Option<TransferStatus>,
    /// The last error, one line.
    pub last_error: Option<String>,
    /// Scans run.
    pub scans: u64,
    /// Exchanges run.
    pub exchanges: u64,
    /// Merge snapshots made.
    pub merges: u64,
    /// Conflicts kept as copies so far.
    pub conflicts: u64,
    /// Fast-forwards made.
    pub fast_forwards: u64,
    /// Node and chunk bytes received from peers since the start (ecp payload), for tests and
    /// `status`: a resumed or delta transfer shows here how little it moved.
    pub payload_bytes_fetched: u64,
    /// Chunks received and stored since the start (not counting copies that arrived twice).
    pub chunks_fetched: u64,
    /// Plain bytes of those chunks: what actually had to travel, without the endgame's copies.
    pub chunk_bytes_fetched: u64,
    /// Replies that arrived twice (the endgame asks a slow peer's last chunks elsewhere too).
    pub duplicates: u64,
    /// Paths the last scan could not read (a FIFO, a file it may not read), each keeping its
    /// previous version: listed by `left status`, and logged when first met.
    pub skipped: Vec<SkippedStatus>,
}

/// A path a scan could not read, in [`AutoStatus`].
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SkippedStatus {
    /// Relative to the share root.
    pub path: String,
    /// Why, one line.
    pub reason: String,
}

/// Counters since the start.
#[derive(Default, Clone, Copy)]
pub(super) struct Totals {
    pub(super) merges: u64,
    pub(super) conflicts: u64,
    pub(super) fast_forwards: u64,
    pub(super) payload: u64,
    pub(super) chunks: u64,
    pub(super) chunk_bytes: u64,
    pub(super) duplicates: u64,
}

pub(super) fn publish(
    ctx: &Ctx,
    agent: &Agent,
    known: &[Peer],
    totals: Totals,
    last_error: &Option<String>,
    cache: &mut HoldsCache,
) {
    let head = ctx.store.head().ok().flatten();
    let now = Instant::now();
    let mut st = ctx.status.lock().unwrap_or_else(|p| p.into_inner());
    let (scans, exchanges) = agent.counts();
    st.idle = agent.is_idle();
    st.running = agent.running().map(str::to_string);
    st.head = head.map(|h| h.to_string());
    st.scans = scans;
    st.exchanges = exchanges;
    st.merges = totals.merges;
    st.conflicts = totals.conflicts;
    st.fast_forwards = totals.fast_forwards;
    st.payload_bytes_fetched = totals.payload;
    st.chunks_fetched = totals.chunks;
    st.chunk_bytes_fetched = totals.chunk_bytes;
    st.duplicates = totals.duplicates;
    st.last_error = last_error.clone();
    if st.running.is_none() {
        st.transfer = None;
    }
    // Bytes still to fetch of the pull running now (its peers are the ones we lag behind).
    let pending = st
        .transfer
        .as_ref()
        .map(|t| t.bytes_discovered.saturating_sub(t.bytes_fetched));
    st.peers = known
        .iter()
        .enumerate()
        .filter(|(i, p)| p.configured || !agent.is_retired(*i))
        .map(|(_, p)| {
            let in_sync = p.head.is_some() && p.head == head;
            let behind_us = p
                .head
                .is_some_and(|h| head.is_some() && holds_cached(&ctx.store, h, cache));
            AutoPeerStatus {
                peer: p.target.label.clone(),
                addr: p.target.addr.to_string(),
                device: p.device.map(|d| DeviceId(d).to_string()),
                connected: p.connected,
                head: p.head.map(|h| h.to_string()),
                in_sync,
                lag_bytes: if in_sync || behind_us {
                    Some(0)
                } else {
                    pending
                },
                last_seen_secs: p.last_seen.map(|t| now.duration_since(t).as_secs_f64()),
                last_error: p.last_error.clone(),
                configured: p.configured,
            }
        })
        .collect();
}
