//! rdt: our reliable, congestion-controlled, encrypted transport over UDP, as a state machine with
//! no IO.
//!
//! rdt moves ordered byte streams between two devices that share a key. It follows quinn-proto's
//! sans-IO design: the core never touches a socket, never reads a clock and never uses a global
//! RNG. The caller feeds it datagrams and the current time and drains what it wants sent, when it
//! wants to be woken, and what happened. That makes it deterministic: the network simulator in
//! `tests/it/rdt_sim/` replays any run from a seed.
//!
//! # Driving it
//! One [`Endpoint`] per UDP socket. The driver loop is:
//!
//! 1. for every datagram received: [`Endpoint::handle_datagram`]`(now, from, bytes)`;
//! 2. when the timer from [`Endpoint::poll_timeout`] expires: [`Endpoint::handle_timeout`]`(now)`;
//! 3. then drain [`Endpoint::poll_transmit`]`(now, &mut buf)` until `None`, sending
//!    `buf[..t.size]` to `t.destination` (as `t.size / segment_size` GSO segments when
//!    `t.segment_size` is set), drain [`Endpoint::poll_event`], and re-arm the timer from
//!    [`Endpoint::poll_timeout`].
//!
//! Connections are created by [`Endpoint::connect`] (initiator) or accepted automatically when a
//! valid first handshake message arrives (responder, if [`EndpointConfig::accept`] is set); both
//! report [`Event::Connected`] with the peer's device key. Streams are driven through
//! [`Endpoint::connection`]: [`Connection::open`], [`Connection::write`] (returns how many bytes
//! flow control accepted), [`Connection::finish`], [`Connection::read`], [`Connection::reset`],
//! [`Connection::close`]. Stream 0 ([`StreamId::CONTROL`]) is open from the start for ordered
//! control messages; other streams are independent, so a loss delays only the stream it hits.
//!
//! # What it does
//! - Packets: a clear header (version, kind, connection id, packet number) and AEAD-sealed frames;
//!   see [`packet`] for the format. A sliding window drops duplicates and replays.
//! - Handshake: Noise XXpsk0 with the share key as PSK; see [`crypto`] for why that pattern and how
//!   a sender without the key is refused before any Diffie-Hellman. Encryption can be switched off
//!   ([`TransportConfig::encryption`]): packets are then authenticated but sent in clear; both
//!   sides must agree or the handshake fails with [`ConnectionError::EncryptionMismatch`] on both.
//! - Loss recovery as RFC 9002 (packet threshold 3, time threshold 9/8 RTT, PTO with backoff);
//!   lost frames, not packets, are retransmitted. Congestion control behind
//!   [`congestion::Controller`] (CUBIC by default, NewReno), with pacing.
//! - Path MTU: datagrams start at 1200 bytes and probe up to [`TransportConfig::max_datagram_size`]
//!   with padded probes; a lost probe is not congestion, and a black hole after probing falls back
//!   to 1200 bytes.
//! - Before a responder has validated the initiator's address it sends at most 3x the bytes it
//!   received, and under load ([`RetryPolicy`]) it answers with a stateless retry token first.
//! - Path validation (RFC 9000 sections 8.2 and 9): an authenticated packet from a new peer
//!   address (a NAT rebinding, or an attacker's copy) does not move the connection. The new
//!   address gets a PATH_CHALLENGE (8 random bytes) and nothing else, at most
//!   [`PATH_AMPLIFICATION`] (3) times the bytes received from it, retried up to
//!   [`PATH_CHALLENGES`] (4) times with a doubling gap from one probe timeout; data keeps going to
//!   the old address. A PATH_RESPONSE with the same bytes moves the connection there (and probes
//!   at once, since what went to the old address is likely lost); no answer, or a newer packet
//!   from the old address, abandons it.
//!
//! The buffer given to `poll_transmit` must hold at least one datagram of
//! [`TransportConfig::max_datagram_size`] bytes (1452 by default); a buffer of `n` datagrams lets
//! up to `min(n, max_gso_segments)` go out in one call. Calling `handle_timeout` early, or
//! `poll_transmit` when nothing is due, is harmless. `now` must not go backwards.
//!
//! # Security properties
//! - *Who can talk*: only holders of the share key. The first handshake message is checked against
//!   it with hashing and one AEAD open; anything else is dropped without a reply, without state and
//!   without Diffie-Hellman ([`DropReason::HandshakeAuth`]). A replayed genuine first message costs
//!   the responder one handshake's DH work and at most 3x its size in replies, and the replayer
//!   cannot finish the handshake; [`RetryPolicy`] turns that into one small stateless reply.
//! - *Who they are*: each side learns the other's static device key ([`Event::Connected`]), and an
//!   allow-list ([`EndpointConfig::allowed_peers`]) refuses others with a clear error on both sides.
//! - *What is authenticated*: every Data packet, header included (the header is the AEAD's
//!   associated data, the full packet number its nonce); handshake messages by Noise; Retry packets
//!   by an HMAC under the share key. Connection ids and transport parameters travel inside the
//!   Noise payloads, so a corrupted or forged handshake header cannot redirect a connection. No
//!   unauthenticated packet changes connection state; the only state created before
//!   authentication of the peer's identity is the responder's half-open handshake, which requires
//!   the share key and times out.
//! - *What is encrypted*: Data packet frames (stream data, acks, credit, close reasons) with
//!   AES-256-GCM or ChaCha20-Poly1305 under per-direction keys from Noise's `split()`, unless
//!   encryption is off; the clear header (version, kind, destination connection id, low 32 bits of
//!   the packet number) is never encrypted. Static keys are encrypted in the handshake.
//! - *Replays*: a 4096-packet sliding window per connection rejects duplicates and replays, and
//!   anything older than the window; it is updated only after authentication.
//! - *Amplification*: before the initiator's address is validated (by message 3 or a retry token)
//!   a responder sends at most 3x the bytes it received from it, and so does either side to a new
//!   peer address until it answers a path challenge: someone who races a captured packet from a
//!   spoofed address gets only challenges sent there, and the connection stays on its path.
//!   Retry and Reset packets are smaller than the packets that cause them.
//! - *Restarts*: each side tells the other, inside the handshake, a reset token for its connection
//!   id: an HMAC of the id under a key derived from its static secret. A restarted endpoint answers
//!   packets for ids it does not know with that token, and the peer closes at once
//!   ([`ConnectionError::PeerReset`]); nobody without the static secret can make a valid one.
//! - *Memory*: stream data buffered for a peer is bounded by the connection window, the number of
//!   live peer streams by `max_streams`, out-of-order fragments by `connection_window / 256`, and
//!   handshakes in progress by [`EndpointConfig::max_pending_handshakes`].
//!
//! # What it does not do
//! No sockets, timers or threads (that is `src/net`); no active migration (we never change our
//! own address on purpose, and a new peer path keeps the old path's congestion and RTT state,
//! which suits a NAT rebinding); an attacker who can both race packets and forward the challenge
//! to the real peer can still move the connection to its own address (it is then on path, where
//! it could drop packets anyway); no 0-RTT; no unreliable datagrams; no key update (a connection must not send 2^64 packets).
#![warn(missing_docs)]

pub mod congestion;
pub mod conn;
pub mod crypto;
pub mod endpoint;
pub mod frame;
pub mod pacing;
pub mod packet;
pub mod range_set;
pub mod rtt;
pub mod stream;

use std::time::Duration;

pub use congestion::CongestionAlgorithm;
pub use conn::{Connection, ConnectionStats, Side};
pub use crypto::CipherSuite;
pub use endpoint::{ConnectionHandle, DropReason, Endpoint, EndpointStats};
pub use stream::{StreamError, StreamId};

/// Smallest datagram payload every path must carry (and the size of the first client packet).
pub const INITIAL_DATAGRAM_SIZE: u16 = 1200;
/// Until a new peer address answers a path challenge, a connection sends to it at most this many
/// times the bytes of the authenticated packets it received from it (RFC 9000 sections 8 and 9).
pub const PATH_AMPLIFICATION: u64 = 3;
/// Path challenges sent to a new peer address (the first and its retransmissions, the gap
/// doubling from one probe timeout) before giving up on it; the connection keeps its old path.
pub const PATH_CHALLENGES: u32 = 4;
/// Default probing ceiling: 1500-byte Ethernet MTU minus IPv6 (40) and UDP (8) headers.
pub const DEFAULT_MAX_DATAGRAM_SIZE: u16 = 1452;

/// Close codes at or above this value are reserved for the transport.
pub const TRANSPORT_CODE_BASE: u64 = 1 << 32;
/// Close code: the peer broke the protocol.
pub const CODE_PROTOCOL_VIOLATION: u64 = TRANSPORT_CODE_BASE + 1;
/// Close code: the peer's device key is not allowed.
pub const CODE_KEY_REFUSED: u64 = TRANSPORT_CODE_BASE + 2;
/// Close code: encryption settings differ.
pub const CODE_ENCRYPTION_MISMATCH: u64 = TRANSPORT_CODE_BASE + 3;

/// Per-connection transport settings. Both sides choose their own; flow-control windows are what
/// *we* grant the peer.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Encrypt packets (true) or only authenticate them (false). Must match the peer's.
    pub encryption: bool,
    /// AEAD for Data packets (the initiator's choice wins).
    pub cipher: CipherSuite,
    /// Congestion controller.
    pub congestion: CongestionAlgorithm,
    /// Pace sends over the round trip.
    pub pacing: bool,
    /// RTT assumed before the first sample.
    pub initial_rtt: Duration,
    /// Close the connection after this long without an authenticated packet.
    pub idle_timeout: Duration,
    /// Send a PING after this long without sending (None: never).
    pub keep_alive: Option<Duration>,
    /// Give up a handshake after this long.
    pub handshake_timeout: Duration,
    /// Connection-level receive window in bytes (bounds buffered stream data).
    pub connection_window: u64,
    /// Per-stream receive window in bytes.
    pub stream_window: u64,
    /// Streams the peer may have open at once (besides the control stream).
    pub max_streams: u64,
    /// Largest datagram payload to probe for, in bytes (at least 1200).
    pub max_datagram_size: u16,
    /// Wait this long after a black hole before probing the path MTU again.
    pub mtu_probe_retry: Duration,
    /// Acknowledge after this many ack-eliciting packets.
    pub ack_frequency: u32,
    /// Acknowledge at most this long after an ack-eliciting packet. The peer adds it to its probe
    /// timeout, so a short delay (1 ms by default, against QUIC's customary 25 ms) is what lets a
    /// lost tail packet be recovered quickly; it costs at most one extra ACK per millisecond when
    /// traffic is sparse. Measured through the loopback driver at 1% and 5% random loss, 10 ms
    /// gave about half the goodput of 1 ms.
    pub max_ack_delay: Duration,
    /// Most datagrams one `poll_transmit` may batch for GSO.
    pub max_gso_segments: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            encryption: true,
            cipher: CipherSuite::default(),
            congestion: CongestionAlgorithm::default(),
            pacing: true,
            initial_rtt: Duration::from_millis(333),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            handshake_timeout: Duration::from_secs(10),
            connection_window: 32 << 20,
            stream_window: 16 << 20,
            max_streams: 256,
            max_datagram_size: DEFAULT_MAX_DATAGRAM_SIZE,
            mtu_probe_retry: Duration::from_secs(600),
            ack_frequency: 2,
            max_ack_delay: Duration::from_millis(1),
            max_gso_segments: 10,
        }
    }
}

/// When a responder demands a stateless retry before keeping any handshake state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Never (address validation then comes from the handshake itself).
    Never,
    /// Always.
    Always,
    /// When more than this many handshakes are in progress.
    WhenPendingAbove(usize),
}

/// Endpoint settings: identity, share key, who may connect.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// This device's X25519 static secret.
    pub static_secret: [u8; 32],
    /// The share key, used as the Noise pre-shared key.
    pub psk: [u8; 32],
    /// If set, only these device public keys may connect (either direction).
    pub allowed_peers: Option<Vec<[u8; 32]>>,
    /// Accept incoming handshakes.
    pub accept: bool,
    /// Stateless retry policy.
    pub retry: RetryPolicy,
    /// Handshakes in progress beyond which new ones are dropped.
    pub max_pending_handshakes: usize,
    /// Seed of the endpoint's ChaCha20 stream: connection ids, ephemeral X25519 keys and the
    /// retry-token key all come from it. Production: 32 bytes from the OS RNG
    /// (`left::net::os_seed`, since the core itself does no IO); tests: expanded from a `u64` ([`EndpointConfig::new`]),
    /// so a run replays.
    pub seed: [u8; 32],
    /// Bytes of unacknowledged stream data all connections together may buffer for sending
    /// (each one also at most its own `connection_window`, whatever the peer grants). A write
    /// beyond it waits, as for flow control.
    pub send_buffer_budget: u64,
    /// Scope of the stateless-reset key (derived from `static_secret` and this): endpoints of
    /// one device in different scopes never make each other's reset tokens. The `net` driver
    /// sets it to the socket's local port when it is 0.
    pub reset_scope: u64,
    /// Transport settings for every connection.
    pub transport: TransportConfig,
}

/// Default [`EndpointConfig::send_buffer_budget`]: 32 MiB, one connection's default window, so one
/// transfer runs at full speed and many peers share it.
pub const DEFAULT_SEND_BUFFER_BUDGET: u64 = 32 << 20;

impl EndpointConfig {
    /// A config with defaults for everything but the keys and a replayable seed (tests,
    /// simulations): the same `seed` gives the same connection ids and ephemeral keys.
    pub fn new(static_secret: [u8; 32], psk: [u8; 32], seed: u64) -> Self {
        use rand::SeedableRng;
        let seed = rand_chacha::ChaCha20Rng::seed_from_u64(seed).get_seed();
        Self::with_seed(static_secret, psk, seed)
    }

    /// A config with defaults for everything but the keys and the full 32-byte seed.
    pub fn with_seed(static_secret: [u8; 32], psk: [u8; 32], seed: [u8; 32]) -> Self {
        Self {
            static_secret,
            psk,
            allowed_peers: None,
            accept: true,
            retry: RetryPolicy::WhenPendingAbove(64),
            max_pending_handshakes: 1024,
            seed,
            send_buffer_budget: DEFAULT_SEND_BUFFER_BUDGET,
            reset_scope: 0,
            transport: TransportConfig::default(),
        }
    }
}

/// What to send: `buf[..size]` to `destination`, as one datagram or, when `segment_size` is set,
/// as consecutive datagrams of `segment_size` bytes (the last may be shorter), ready for GSO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Where to send.
    pub destination: core::net::SocketAddr,
    /// Bytes written to the buffer.
    pub size: usize,
    /// Size of each datagram when more than one was written.
    pub segment_size: Option<usize>,
}

/// Something that happened on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed; `peer_key` is the peer's device (static) public key.
    Connected {
        /// The peer's X25519 static public key.
        peer_key: [u8; 32],
    },
    /// The peer opened a stream.
    StreamOpened {
        /// The stream.
        id: StreamId,
    },
    /// A stream has data (or its end) to read.
    StreamReadable {
        /// The stream.
        id: StreamId,
    },
    /// A stream that refused a write has credit again.
    StreamWritable {
        /// The stream.
        id: StreamId,
    },
    /// The peer raised its stream limit after an `open` failed with `StreamLimit`.
    StreamsAvailable,
    /// Everything written on a finished stream was acknowledged.
    StreamFinished {
        /// The stream.
        id: StreamId,
    },
    /// The peer reset a stream.
    StreamReset {
        /// The stream.
        id: StreamId,
        /// The peer's error code.
        code: u64,
    },
    /// The connection ended; no more events follow.
    ConnectionLost {
        /// Why.
        reason: ConnectionError,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// No authenticated packet arrived within the idle timeout.
    #[error("timed out: no packet from the peer within the idle timeout")]
    TimedOut,
    /// The handshake did not complete in time (peer unreachable, or a different share key).
    #[error("handshake timed out: peer unreachable or its share key differs")]
    HandshakeTimedOut,
    /// The peer closed the connection.
    #[error("closed by peer with code {code}: {reason}")]
    PeerClosed {
        /// The peer's code.
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// We closed the connection.
    #[error("closed locally")]
    LocallyClosed,
    /// The peer broke the protocol.
    #[error("protocol violation: {reason}")]
    ProtocolViolation {
        /// What it did.
        reason: &'static str,
    },
    /// The two sides disagree about encryption.
    #[error("encryption setting mismatch: ours is {}, the peer's is {}", on_off(*local), on_off(*peer))]
    EncryptionMismatch {
        /// Our setting.
        local: bool,
        /// The peer's setting.
        peer: bool,
    },
    /// The peer's device key is not in our allow-list.
    #[error("peer device key {} is not allowed", short_key(key))]
    PeerKeyRefused {
        /// The refused key.
        key: [u8; 32],
    },
    /// The peer refused our device key.
    #[error("the peer does not allow our device key")]
    RefusedByPeer,
    /// The peer no longer knows the connection (it restarted) and said so with a valid reset.
    #[error("the peer lost the connection (it restarted)")]
    PeerReset,
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn short_key(k: &[u8; 32]) -> String {
    k[..6].iter().map(|b| format!("{b:02x}")).collect()
}
