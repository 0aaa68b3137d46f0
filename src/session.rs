//! Peer sessions over the rdt driver: serving a store ([`Server`]) and pulling from peers
//! ([`fetch`]). This is where the sans-IO pieces meet the network: [`crate::ecp`] frames on a
//! [`crate::net::driver`] stream, [`crate::sync::ServeSession`] on the serving side and
//! [`crate::sync::Pull`] on the pulling side.
//!
//! A session is one connection and its control stream (stream 0), which both sides have open from
//! the handshake on; each side reads it with a [`wire::FrameReader`] (an [`crate::ecp::Decoder`]
//! fed as bytes arrive) and writes it with a [`wire::FrameWriter`] (frames batched into one stream
//! write). Both sides send `Hello` first and check the other's with [`crate::ecp::check_hello`];
//! the puller then sends `Have { head }` and the server answers `Same`, `Excess { head }` or, when
//! it has no head, its own `Have { head: None }`.
//!
//! Server: an accept loop, one task per connection. Right after the handshake the peer's device is
//! checked against a [`PeerPolicy`] (the CLI's peer book): a device not allowed is closed at once
//! with [`crate::net::driver::CODE_REFUSED`] and a reason the peer prints. Requests are answered
//! through a [`crate::sync::ServeSession`]; while it holds `max_pending` requests the stream is not
//! read (backpressure), and replies are batched into writes of about `write_batch` bytes, so a
//! peer costs at most that plus its pending requests and the transport's windows. Incoming
//! handshakes that fail before they can be accepted (encryption mismatch, a key the transport
//! refuses) are reported as [`ServerEvent::Refused`] from
//! [`crate::net::driver::Endpoint::next_incoming_failure`], so both sides see the reason.
//! Sessions read objects only with a permit from the server's busy gate: work that deletes
//! objects (a gc through the control socket) runs in [`Server::busy_while`], which waits for
//! reads in progress and meanwhile answers every object request, pending ones included, with
//! `Working` (the peer pauses and re-asks). An `add` needs no such care: snapshots never change,
//! so a pull of the previous head still finds everything.
//!
//! Puller: [`fetch`] connects to every target at once and starts a [`crate::sync::Pull`] as soon
//! as the first peer offers a head; peers offering the same head later join that pull, so a dead
//! or slow peer holds nothing up (different heads are pulled one after the other). The pull is
//! driven in one task: a reader task per peer decodes its messages and verifies chunks against
//! their ids (off the engine's thread) and forwards them over a bounded channel, a writer task
//! per peer sends requests, and the loop applies every effect to the store before polling the
//! engine again. A pull that loses every peer is retried with exponential backoff until the
//! configured time passes without progress; the store is the progress record, so a retry
//! fetches only what is missing; `timeout` counts from the last object that arrived, so a server
//! that dies mid-pull is given up on `timeout` after its last reply (the stall timeout, no longer
//! than `timeout`, is spent inside that budget). Each failed peer gets a [`PeerFailure`] kind
//! beside its one-line reason, so the caller can say what to do about it. Byte counts for `--json` come from the endpoints' sockets
//! ([`crate::net::driver::Endpoint::udp_bytes`]) and the engine's [`crate::sync::PullStats`]. Nothing a peer sends can panic this code: every decode error ends that peer's
//! session with `Error { MALFORMED }` and a one-line reason.
#![warn(missing_docs)]

mod client;
mod error;
mod objects;
mod server;
pub use left_store::checkout::stage;
pub mod wire;

pub use client::{
    fetch, fetch_history, heads, DevicePolicy, Endpoints, FetchConfig, FetchProgress, FetchReport,
    NodeSession, NodeSink, PeerOutcome, Target, HISTORY_LIMIT,
};
pub use error::{Error, LocalError, PeerError, PeerFailure};
pub use objects::apply_to_store;
pub use server::{AllowAll, PeerPolicy, PeerStatus, Server, ServerConfig, ServerEvent};

use crate::ecp::{Message, ShareId, PROTOCOL_VERSION};

/// Close code of a session that ended because the peer broke the ecp protocol, was refused at
/// `Hello`, or sent bad data; the reason travels with it.
pub const CODE_PROTOCOL_ERROR: u64 = 2;

/// Our `Hello`: this build's protocol version, the share id, our device key and encryption
/// setting.
pub fn hello(share: ShareId, device: [u8; 32], encryption: bool) -> Message {
    Message::Hello {
        protocol: PROTOCOL_VERSION,
        share,
        device,
        encryption,
    }
}

/// `text` on one line, escaped and bounded ([`crate::sanitize::field`]).
pub(crate) fn sanitize(text: &str) -> String {
    crate::sanitize::field(text)
}

/// The short printable form of a device key.
pub(crate) fn short_device(key: &[u8; 32]) -> String {
    crate::identity::DeviceId(*key).fmt_short()
}

#[cfg(test)]
mod tests;
