//! What a [`Pull`] is told and what it tells: its limits and timers ([`PullConfig`]), its counters
//! ([`PullStats`], summed over pulls with `+=`), and the sizes it reports for the memory bound
//! ([`InFlight`], [`MemoryUse`]).
//!
//! What this module is not: the engine itself ([`super::pull`]); it holds plain data only.

use std::time::Duration;

#[cfg(doc)]
use super::Pull;
use crate::ecp::MAX_NODES_PER_REPLY;

/// Limits and timers of a [`Pull`].
#[derive(Clone, Debug)]
pub struct PullConfig {
    /// Most ids queued or in flight at once.
    pub max_outstanding: usize,
    /// Most references the walk tracks at once, never exceeded: one per reference from a node
    /// being walked to a child that is not stored (complete) yet, so it bounds the open nodes
    /// and the waiting ids too (each has a reference, the head aside). The walk classifies
    /// children while fewer than a quarter of this are tracked (new nodes while fewer than an
    /// eighth, so what arrives has room to be walked), then finishes the subtrees it has
    /// (depth-first) instead of opening more; a peer that withholds an object holds the walk
    /// there until the stall timeout drops it. Only while nothing at all is in flight (so no
    /// peer can hold it there) does the walk go on past a quarter, depth-first, a batch at a
    /// time; a tree that needs more than this fails with a clear error.
    pub max_pending_refs: usize,
    /// Most ids in flight at one peer.
    pub max_items_per_peer: usize,
    /// Most bytes (estimated) in flight at one peer; raised to fit at least one chunk.
    pub max_bytes_per_peer: u64,
    /// Most bytes (estimated) in flight over all peers; raised to at least `max_bytes_per_peer`.
    pub max_bytes_in_flight: u64,
    /// Most ids in one `GetNodes`.
    pub max_nodes_per_request: usize,
    /// Most ids in one `GetChunks`.
    pub max_chunks_per_request: usize,
    /// Most bytes (estimated) asked for in one `GetChunks`.
    pub max_request_bytes: u64,
    /// A peer with requests in flight that sends nothing for this long is dropped.
    pub stall_timeout: Duration,
    /// Once nothing new is left to ask for, a request in flight this long is also asked of
    /// another peer (the endgame).
    pub endgame_after: Duration,
    /// Most peers asked for the same id at once (1 turns the endgame off).
    pub endgame_copies: usize,
    /// Largest plain chunk accepted, in bytes (the store's `chunk_max`).
    pub max_chunk_size: usize,
    /// Deepest tree accepted, in nodes from the head.
    pub max_depth: u32,
    /// Decoded nodes kept in memory to avoid re-reading them from the store.
    pub node_cache: usize,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            max_outstanding: 16 * 1024,
            max_pending_refs: 64 * 1024,
            max_items_per_peer: 512,
            max_bytes_per_peer: 16 * 1024 * 1024,
            max_bytes_in_flight: 64 * 1024 * 1024,
            max_nodes_per_request: MAX_NODES_PER_REPLY,
            max_chunks_per_request: 64,
            max_request_bytes: 4 * 1024 * 1024,
            stall_timeout: Duration::from_secs(10),
            endgame_after: Duration::from_millis(500),
            endgame_copies: 2,
            max_chunk_size: 256 * 1024,
            max_depth: 4096,
            node_cache: 256,
        }
    }
}

/// Counters of a pull (for `--json` and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullStats {
    /// Requests sent.
    pub requests: u64,
    /// Node ids asked for (endgame copies included).
    pub nodes_requested: u64,
    /// Chunk ids asked for (endgame copies included).
    pub chunks_requested: u64,
    /// Requests sent in the endgame (copies of requests in flight elsewhere).
    pub endgame_requests: u64,
    /// Nodes verified and handed out for storing.
    pub nodes_fetched: u64,
    /// Chunks verified and handed out for storing.
    pub chunks_fetched: u64,
    /// Node and chunk bytes received in replies (duplicates included).
    pub payload_bytes_received: u64,
    /// Plain bytes of the missing chunks found by the walk so far (as the tree claims them):
    /// with `chunk_bytes_fetched`, what a progress bar shows; it grows while the walk goes on.
    pub chunk_bytes_discovered: u64,
    /// Plain bytes of the chunks fetched and verified.
    pub chunk_bytes_fetched: u64,
    /// Valid replies for objects no longer wanted (endgame losers, late replies).
    pub duplicates: u64,
    /// Peers dropped.
    pub peers_dropped: u64,
}

/// Sums every counter: the totals of a fetch made of several pulls. The destructuring names every
/// field, so a counter added later cannot be forgotten here.
impl std::ops::AddAssign<&PullStats> for PullStats {
    fn add_assign(&mut self, s: &PullStats) {
        let PullStats {
            requests,
            nodes_requested,
            chunks_requested,
            endgame_requests,
            nodes_fetched,
            chunks_fetched,
            payload_bytes_received,
            chunk_bytes_discovered,
            chunk_bytes_fetched,
            duplicates,
            peers_dropped,
        } = s;
        self.requests += requests;
        self.nodes_requested += nodes_requested;
        self.chunks_requested += chunks_requested;
        self.endgame_requests += endgame_requests;
        self.nodes_fetched += nodes_fetched;
        self.chunks_fetched += chunks_fetched;
        self.payload_bytes_received += payload_bytes_received;
        self.chunk_bytes_discovered += chunk_bytes_discovered;
        self.chunk_bytes_fetched += chunk_bytes_fetched;
        self.duplicates += duplicates;
        self.peers_dropped += peers_dropped;
    }
}

/// What is in flight at one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Ids asked and not answered.
    pub items: usize,
    /// Their estimated bytes.
    pub bytes: u64,
}

/// Sizes of the engine's state, to check the memory bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Ids queued or in flight (at most `max_outstanding`).
    pub outstanding: usize,
    /// References from open nodes to children not stored yet (at most `max_pending_refs`).
    pub refs: usize,
    /// Nodes fetched or found whose subtree is not complete yet.
    pub open_nodes: usize,
    /// Nodes whose children are not all classified yet.
    pub walk_stack: usize,
    /// Decoded nodes cached.
    pub cached_nodes: usize,
    /// Entries in the request queues (live or stale).
    pub queued: usize,
}
