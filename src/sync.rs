//! The sync engine: sans-IO decisions about what to fetch from which peer, and how to answer.
//!
//! [`Pull`] fetches one remote head (a snapshot id) into the local store. It walks the remote
//! Merkle tree top-down, asking only for nodes the local store lacks and skipping every subtree the
//! store reports complete; it queues the missing chunks it finds, keeps a bounded window of
//! requests in flight spread over every peer that has the head, re-asks a slow peer's last
//! requests elsewhere once nothing new is left to ask for (the endgame), and drops a peer that
//! stalls, answers `NotFound` for something it advertised, or sends bytes that do not match their
//! id, re-queueing what it owed. Every arrival is verified against its id before it is handed out
//! as an [`Effect`]; completeness marks are handed out bottom-up, a node only after everything
//! beneath it, which is exactly the store's meaning of "present". Resume is free: the store is the
//! progress record, so a new `Pull` for the same head fetches only what is still missing.
//!
//! [`Answer`] is the other side: it turns one `GetNodes` or `GetChunks` into replies, one message
//! at a time, reading objects through [`ObjectSource`] in their stored form, so a server holds
//! at most one reply per request in memory.
//!
//! What this module is not: it performs no IO, reads no clock, spawns nothing and is not `async`.
//! It does not speak the handshake (`Hello`, `Have`, `Excess`: the driver does, and creates a
//! `Pull` once a peer answers `Excess`), does not write files (checkout is separate), and does not
//! move refs: after [`Effect::Done`] the driver stores the fetched head as that peer's ref.
//!
//! Driving a pull: create it with the head and the peers that have it, then loop. Feed each
//! incoming reply to [`Pull::handle_message`], call [`Pull::handle_timeout`] when the time from
//! [`Pull::poll_timeout`] has come, and after every input drain [`Pull::poll`] until it returns
//! `None`, sending each [`Output::Send`] to its peer and applying each [`Output::Effect`] to the
//! store *before* calling `poll` again (the engine asks the store about what it just handed out).
//! `session::apply_to_store` applies an effect to the store (the engine's traits are
//! implemented for the store in `session`, so this module never touches it). A driver may gather
//! consecutive [`Effect::StoreChunk`]s and store them in one write (`Store::put_chunks_verified`), as long
//! as it does so before applying any other effect and before polling while
//! [`Pull::has_effects`] is false (queued effects come out without a store lookup). The pull ends with exactly one
//! [`Effect::Done`] or [`Effect::Failed`]. It fails as soon as no peer is left; a driver that
//! wants to retry with backoff (a restarted server, a flaky link) makes a new `Pull` later, which
//! costs nothing but a local walk because everything that arrived is already stored. Requests
//! are batched: a busy peer gets a new `GetChunks` only once a quarter of a full request fits in
//! its window, so a pull costs about one request per 16 chunks, not one per chunk.
//!
//! The serving side needs less: [`ServeSession`] runs one peer's session (hello check, `Have` to
//! `Same`/`Excess` via [`answer_have`], `GetNodes`/`GetChunks` to replies via [`Answer`], `Working`
//! while busy) with a bounded queue of pending requests.
//!
//! Memory is bounded by [`PullConfig`], not by the tree: at most `max_outstanding` ids are queued
//! or in flight; the nodes being walked are kept as ids with a cursor (the decoded form is re-read
//! from the store, with a small cache of `node_cache` nodes); every open node and waiting id is
//! held by a reference from its parent, and the walk never tracks more than `max_pending_refs`
//! references (65 536 by default, about 150 bytes each at worst: ~10 MiB). Past a quarter of that
//! it opens nothing new and finishes the subtrees it has, depth-first, so a peer that answers
//! every node request but withholds a chunk every leaf shares holds the walk at the bound until
//! the stall timeout drops it (the reason names the chunk), while an honest tree far larger than
//! the bound is walked within it. A 100 GiB tree (1.6 million chunks) is walked in that space.
#![warn(missing_docs)]

pub mod agent;
mod answer;
mod config;
mod pull;
mod serve;

pub use agent::{Agent, AgentConfig, ExchangeOutcome, ScanOutcome, Task};
pub use answer::{Answer, ObjectSource};
pub use pull::{
    owed_note, DropCause, Effect, Failure, InFlight, LocalError, MemoryUse, Output, PeerId, Pull,
    PullConfig, PullStats,
};
pub use serve::{ServeSession, SessionError};

use left_store::node::Node;
use left_store::{NodeId, ObjectId};

/// What the pull asks the local store. Implemented for the store in `session`; tests use an
/// in-memory set.
pub trait LocalObjects {
    /// For each id: for a chunk, is it stored; for a node, is it complete (its whole subtree
    /// stored)? Same order and length as `ids`.
    fn has_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>, left_store::Error>;
    /// The stored node (complete or not), decoded, or `None` when it is not stored.
    fn node(&self, id: NodeId) -> Result<Option<Node>, left_store::Error>;
}

/// A server's answer to a peer's `Have` or `Update` given its own head: `Same` when the heads are
/// equal, `Excess` with our head when they differ and we have one (the peer pulls it; pulling a
/// head it already holds costs one local lookup), and nothing when we have no head to offer.
pub fn answer_have(ours: Option<NodeId>, theirs: Option<NodeId>) -> Option<crate::ecp::Message> {
    match ours {
        Some(h) if Some(h) == theirs => Some(crate::ecp::Message::Same),
        Some(h) => Some(crate::ecp::Message::Excess { head: h }),
        None => None,
    }
}

#[cfg(test)]
mod tests;
