//! One connection's state machine: handshake, packet protection, loss recovery, congestion
//! control, pacing, path-MTU discovery, acknowledgements and streams.
//!
//! A `Connection` is owned by an [`Endpoint`](crate::rdt::Endpoint), which routes datagrams to it
//! by connection id; applications reach it through `Endpoint::connection` to use streams.
//!
//! Method taxonomy (as in quinn-proto): `handle_*` feed input, `poll_*` drain output, and the stream
//! methods (`open`, `write`, `finish`, `read`, `reset`, `close`) are the application's API. Nothing
//! here reads a clock: every method that needs the time takes `now`.
//!
//! Loss recovery follows RFC 9002: a packet is lost when a packet sent 3 or more packet numbers
//! later is acknowledged, or when it is older than 9/8 of the RTT and something sent later was
//! acknowledged; when nothing is acknowledged for a probe timeout (PTO, doubled on each expiry) the
//! sender sends up to two probe packets, which may exceed the congestion window. Lost *frames* are
//! requeued (stream ranges, credit updates, resets), never whole packets.
//!
//! Acknowledgements are sent after `ack_frequency` ack-eliciting packets, immediately when a packet
//! arrives out of order, or after `max_ack_delay`; they are written when the driver next polls, so
//! one ACK covers a whole received batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use core::net::SocketAddr;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::rdt::congestion::Controller;
use crate::rdt::crypto::{self, CipherSuite, PacketKey};
use crate::rdt::frame::{self, Decoder, Frame, Reader, Writer};
use crate::rdt::pacing::Pacer;
use crate::rdt::packet::{self, Kind, ReplayWindow, DATA_HEADER_LEN, TAG_LEN};
use crate::rdt::range_set::RangeSet;
use crate::rdt::rtt::RttEstimator;
use crate::rdt::stream::{
    Limits, SendBudget, StreamError, StreamId, StreamMeta, Streams, Violation,
};
use crate::rdt::{
    ConnectionError, Event, Transmit, TransportConfig, CODE_ENCRYPTION_MISMATCH, CODE_KEY_REFUSED,
    CODE_PROTOCOL_VIOLATION, INITIAL_DATAGRAM_SIZE,
};

/// Which end of the handshake a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Sent the first handshake message.
    Initiator,
    /// Answered it.
    Responder,
}

/// Counters for tests, logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Datagrams sent.
    pub sent_packets: u64,
    /// Datagram bytes sent.
    pub sent_bytes: u64,
    /// Authenticated datagrams received.
    pub recv_packets: u64,
    /// Bytes of the authenticated datagrams received (UDP payload).
    pub recv_bytes: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// PTO probe packets sent (these may exceed the congestion window).
    pub probe_packets: u64,
    /// Congestion events (window reductions requested).
    pub congestion_events: u64,
    /// Congestion events that were persistent congestion (window back to the minimum).
    pub persistent_congestion: u64,
    /// Packets that failed authentication.
    pub auth_failures: u64,
    /// Duplicate or replayed packets dropped.
    pub duplicates: u64,
    /// Current datagram size.
    pub mtu: u16,
    /// Times the datagram size fell back to 1200 after a black hole.
    pub black_holes: u64,
    /// Handshake packets retransmitted.
    pub handshake_retransmits: u64,
    /// PATH_CHALLENGE packets sent to a new peer address.
    pub path_challenges: u64,
    /// New peer addresses validated (the connection moved to them).
    pub path_validations: u64,
    /// New peer addresses abandoned: no answer to [`PATH_CHALLENGES`](crate::rdt::PATH_CHALLENGES)
    /// challenges, or the old address sent the newest packet.
    pub path_abandoned: u64,
}

/// Keys and policy shared by every connection of an endpoint.
#[derive(Debug)]
pub(crate) struct Identity {
    pub static_secret: [u8; 32],
    pub static_pub: [u8; 32],
    pub psk: [u8; 32],
    pub allowed: Option<Vec<[u8; 32]>>,
    pub reset_key: crypto::ResetKey,
    /// Send-buffer bytes all connections of the endpoint may hold together.
    pub send_budget: Arc<SendBudget>,
}

impl Identity {
    fn allows(&self, key: &[u8; 32]) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(key))
    }
}

/// Parameters carried in handshake payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    /// The sender's connection id. Carried here, inside the authenticated Noise payload, because
    /// the clear header's copy is not authenticated: a corrupted or forged cid in a handshake
    /// header must not redirect the connection.
    pub cid: u64,
    /// The token a restarted sender would put in a Reset for `cid`.
    pub reset_token: [u8; 16],
    pub encryption: bool,
    pub suite: CipherSuite,
    pub limits: Limits,
    /// How long the sender may delay an acknowledgement (the peer's PTO and RTT use it).
    pub max_ack_delay: Duration,
}

const PARAMS_VERSION: u8 = 1;

impl Params {
    pub fn from_config(c: &TransportConfig, cid: u64, reset_token: [u8; 16]) -> Self {
        Self {
            cid,
            reset_token,
            encryption: c.encryption,
            suite: c.cipher,
            limits: Limits {
                max_data: c.connection_window,
                max_stream_data: c.stream_window,
                max_streams: c.max_streams,
            },
            max_ack_delay: c.max_ack_delay,
        }
    }

    pub fn encode(&self, out: &mut [u8; 64]) -> usize {
        let mut w = Writer::new(out, 0);
        w.u8(PARAMS_VERSION);
        w.slice(&self.cid.to_be_bytes());
        w.slice(&self.reset_token);
        w.u8(u8::from(self.encryption));
        w.u8(self.suite.to_byte());
        w.varint(self.limits.max_data.min(frame::VARINT_MAX));
        w.varint(self.limits.max_stream_data.min(frame::VARINT_MAX));
        w.varint(self.limits.max_streams.min(frame::VARINT_MAX));
        w.varint((self.max_ack_delay.as_micros() as u64).min(frame::VARINT_MAX));
        w.pos
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader::new(b);
        if r.u8().ok()? != PARAMS_VERSION {
            return None;
        }
        let cid = u64::from_be_bytes(r.bytes(8).ok()?.try_into().ok()?);
        let reset_token = r.bytes(16).ok()?.try_into().ok()?;
        let encryption = match r.u8().ok()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let suite = CipherSuite::from_byte(r.u8().ok()?)?;
        let limits = Limits {
            max_data: r.varint().ok()?,
            max_stream_data: r.varint().ok()?,
            max_streams: r.varint().ok()?,
        };
        // Capped so a peer cannot stretch our timers without bound.
        let max_ack_delay = Duration::from_micros(r.varint().ok()?.min(1_000_000));
        Some(Self {
            cid,
            reset_token,
            encryption,
            suite,
            limits,
            max_ack_delay,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshake,
    Established,
    Closing { until: Instant },
    Draining { until: Instant },
    Drained,
}

/// Retransmittable content of a sent packet.
#[derive(Debug, Clone, Copy)]
enum Retx {
    Stream(StreamMeta),
    MaxData,
    MaxStreams,
    Credit(u64),
    Reset(u64),
    HandshakeDone,
}

#[derive(Debug)]
struct SentPacket {
    time: Instant,
    size: u16,
    ack_eliciting: bool,
    mtu_probe: bool,
    retx: Vec<Retx>,
}

struct Handshake {
    noise: Option<snow::HandshakeState>,
    /// Seed of the handshake's ephemeral key, to rebuild the state after a failed read.
    seed: [u8; 32],
    /// Our parameters payload, and (responder) the initiator's first message, for the rebuild.
    our_payload: Vec<u8>,
    peer_msg1: Vec<u8>,
    /// The last handshake message we sent, resent on loss.
    msg: Vec<u8>,
    token: Vec<u8>,
    send_pending: bool,
    timer: Option<Instant>,
    backoff: u32,
    first_sent: Option<Instant>,
    retransmitted: bool,
    deadline: Instant,
    recv_bytes: u64,
    sent_bytes: u64,
    validated: bool,
}

/// Path MTU discovery state (a binary search between the current and the maximum size).
#[derive(Debug)]
struct Mtud {
    current: u16,
    max: u16,
    lo: u16,
    hi: u16,
    probe: Option<(u64, u16)>,
    fails: u8,
    next_probe: Option<Instant>,
    black_hole_losses: u32,
}

/// A new peer address being validated (RFC 9000 section 8.2): until `challenge` comes back in a
/// PATH_RESPONSE, only challenges go there, at most `PATH_AMPLIFICATION` x `recv_bytes`.
#[derive(Debug)]
struct PathCheck {
    addr: SocketAddr,
    challenge: [u8; 8],
    /// Bytes of authenticated datagrams received from `addr`, and bytes we sent there.
    recv_bytes: u64,
    sent_bytes: u64,
    sends: u32,
    send_pending: bool,
    /// When to send the challenge again (or give up after the last one).
    timer: Option<Instant>,
}

/// Size of a datagram that carries only a PATH_CHALLENGE.
const CHALLENGE_PACKET_LEN: usize = DATA_HEADER_LEN + 9 + TAG_LEN;

const MTU_SEARCH_DONE_GAP: u16 = 20;
/// Longest probe timeout after backoff (unless one base PTO is longer).
const MAX_PTO_PERIOD: Duration = Duration::from_secs(4);
const BLACK_HOLE_THRESHOLD: u32 = 5;

impl Mtud {
    fn new(max: u16) -> Self {
        let max = max.max(INITIAL_DATAGRAM_SIZE);
        Self {
            current: INITIAL_DATAGRAM_SIZE,
            max,
            lo: INITIAL_DATAGRAM_SIZE,
            hi: max + 1,
            probe: None,
            fails: 0,
            next_probe: None,
            black_hole_losses: 0,
        }
    }

    fn candidate(&self) -> Option<u16> {
        if self.hi - self.lo <= MTU_SEARCH_DONE_GAP || self.current >= self.max {
            return None;
        }
        // Try the maximum first (the common case on a clean path), then bisect.
        Some(if self.hi == self.max + 1 {
            self.max
        } else {
            self.lo + (self.hi - self.lo) / 2
        })
    }

    fn due(&self, now: Instant) -> Option<u16> {
        if self.probe.is_some() || self.next_probe.is_none_or(|t| t > now) {
            return None;
        }
        self.candidate()
    }
}

/// A connection. See the module docs.
pub struct Connection {
    side: Side,
    config: Arc<TransportConfig>,
    identity: Arc<Identity>,
    local_cid: u64,
    remote_cid: u64,
    initial_dcid: u64,
    remote: SocketAddr,
    /// A new peer address not yet validated, and the RNG for its challenge.
    path_check: Option<PathCheck>,
    path_rng: ChaCha20Rng,
    /// A PATH_CHALLENGE's bytes to echo in our next packet.
    path_response: Option<[u8; 8]>,
    state: State,
    hs: Option<Box<Handshake>>,
    confirmed: bool,
    peer_key: Option<[u8; 32]>,
    send_key: Option<PacketKey>,
    recv_key: Option<PacketKey>,
    // Packet numbers and acknowledgements.
    next_pn: u64,
    replay: ReplayWindow,
    received: RangeSet,
    largest_recv_time: Option<Instant>,
    ack_pending: bool,
    ack_eliciting_since_ack: u32,
    ack_deadline: Option<Instant>,
    ack_now: bool,
    // Recovery.
    sent: VecDeque<Option<SentPacket>>,
    sent_base: u64,
    in_flight: u64,
    eliciting_in_flight: u64,
    largest_acked: Option<u64>,
    loss_time: Option<Instant>,
    pto_count: u32,
    last_eliciting_sent: Option<Instant>,
    probes: u8,
    rtt: RttEstimator,
    cc: Box<dyn Controller>,
    pacer: Pacer,
    pace_until: Option<Instant>,
    app_limited: bool,
    mtud: Mtud,
    // Pending control frames.
    ping_pending: bool,
    handshake_done_pending: bool,
    close_frame: Option<(u64, Bytes)>,
    close_send_pending: bool,
    streams: Option<Streams>,
    peer_params: Option<Params>,
    events: VecDeque<Event>,
    idle_deadline: Instant,
    last_sent: Instant,
    last_now: Instant,
    stats: ConnectionStats,
    retx_pool: Vec<Vec<Retx>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.side)
            .field("local_cid", &format_args!("{:016x}", self.local_cid))
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    fn base(
        side: Side,
        config: Arc<TransportConfig>,
        identity: Arc<Identity>,
        local_cid: u64,
        remote_cid: u64,
        initial_dcid: u64,
        remote: SocketAddr,
        now: Instant,
        hs: Box<Handshake>,
    ) -> Self {
        let mtu = INITIAL_DATAGRAM_SIZE;
        Self {
            side,
            cc: config.congestion.build(mtu),
            rtt: RttEstimator::new(config.initial_rtt),
            mtud: Mtud::new(config.max_datagram_size),
            idle_deadline: now + config.idle_timeout,
            config,
            identity,
            local_cid,
            remote_cid,
            initial_dcid,
            remote,
            path_check: None,
            path_rng: {
                // The handshake's seed on another ChaCha stream: replayable, independent of the
                // ephemeral key drawn from stream 0.
                let mut r = ChaCha20Rng::from_seed(hs.seed);
                r.set_stream(1);
                r
            },
            path_response: None,
            state: State::Handshake,
            hs: Some(hs),
            confirmed: false,
            peer_key: None,
            send_key: None,
            recv_key: None,
            next_pn: 0,
            replay: ReplayWindow::default(),
            received: RangeSet::new(),
            largest_recv_time: None,
            ack_pending: false,
            ack_eliciting_since_ack: 0,
            ack_deadline: None,
            ack_now: false,
            sent: VecDeque::new(),
            sent_base: 0,
            in_flight: 0,
            eliciting_in_flight: 0,
            largest_acked: None,
            loss_time: None,
            pto_count: 0,
            last_eliciting_sent: None,
            probes: 0,
            pacer: Pacer::new(mtu),
            pace_until: None,
            app_limited: true,
            ping_pending: false,
            handshake_done_pending: false,
            close_frame: None,
            close_send_pending: false,
            streams: None,
            peer_params: None,
            events: VecDeque::new(),
            last_sent: now,
            last_now: now,
            stats: ConnectionStats {
                mtu,
                ..Default::default()
            },
            retx_pool: Vec::new(),
        }
    }

    /// Starts a handshake towards `remote`.
    pub(crate) fn new_initiator(
        config: Arc<TransportConfig>,
        identity: Arc<Identity>,
        local_cid: u64,
        initial_dcid: u64,
        remote: SocketAddr,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<Self, snow::Error> {
        let mut noise = crypto::build_handshake(
            true,
            &identity.static_secret,
            &identity.static_pub,
            &identity.psk,
            seed,
        )?;
        let mut payload = [0u8; 64];
        let token = identity.reset_key.token(local_cid);
        let n = Params::from_config(&config, local_cid, token).encode(&mut payload);
        let mut msg = vec![0u8; packet::MAX_NOISE_LEN];
        let len = noise.write_message(&payload[..n], &mut msg)?;
        msg.truncate(len);
        let hs = Box::new(Handshake {
            noise: Some(noise),
            seed,
            our_payload: payload[..n].to_vec(),
            peer_msg1: Vec::new(),
            msg,
            token: Vec::new(),
            send_pending: true,
            timer: None,
            backoff: 0,
            first_sent: None,
            retransmitted: false,
            deadline: now + config.handshake_timeout,
            recv_bytes: 0,
            sent_bytes: 0,
            validated: true,
        });
        Ok(Self::base(
            Side::Initiator,
            config,
            identity,
            local_cid,
            initial_dcid,
            initial_dcid,
            remote,
            now,
            hs,
        ))
    }

    /// Answers a first handshake message that already passed the PSK check in `noise`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_responder(
        config: Arc<TransportConfig>,
        identity: Arc<Identity>,
        mut noise: snow::HandshakeState,
        seed: [u8; 32],
        peer_msg1: &[u8],
        peer: Params,
        local_cid: u64,
        remote_cid: u64,
        initial_dcid: u64,
        remote: SocketAddr,
        recv_bytes: u64,
        validated: bool,
        now: Instant,
    ) -> Result<Self, snow::Error> {
        let mut payload = [0u8; 64];
        let ours = Params::from_config(&config, local_cid, identity.reset_key.token(local_cid));
        let n = ours.encode(&mut payload);
        let mut msg = vec![0u8; packet::MAX_NOISE_LEN];
        let len = noise.write_message(&payload[..n], &mut msg)?;
        msg.truncate(len);
        let hs = Box::new(Handshake {
            noise: Some(noise),
            seed,
            our_payload: payload[..n].to_vec(),
            peer_msg1: peer_msg1.to_vec(),
            msg,
            token: Vec::new(),
            send_pending: true,
            timer: None,
            backoff: 0,
            first_sent: None,
            retransmitted: false,
            deadline: now + config.handshake_timeout,
            recv_bytes,
            sent_bytes: 0,
            validated,
        });
        let mut c = Self::base(
            Side::Responder,
            config,
            identity,
            local_cid,
            remote_cid,
            initial_dcid,
            remote,
            now,
            hs,
        );
        c.peer_params = Some(peer);
        if peer.encryption != ours.encryption {
            // Answer anyway so the initiator learns our setting and fails with the same error.
            c.fail(
                now,
                ConnectionError::EncryptionMismatch {
                    local: ours.encryption,
                    peer: peer.encryption,
                },
            );
        }
        Ok(c)
    }

    // ---- Application API ----

    /// Opens a new bidirectional stream. It is released when both sides have finished (or reset)
    /// their direction, so the peer must finish its side too, even if it writes nothing.
    pub fn open(&mut self) -> Result<StreamId, StreamError> {
        self.live_streams()?.open(false)
    }

    /// Opens a new unidirectional stream: only we write, the peer only reads. Released once the
    /// peer has read it to the end and our data is acknowledged; the right kind for one-way payloads.
    pub fn open_uni(&mut self) -> Result<StreamId, StreamError> {
        self.live_streams()?.open(true)
    }

    /// Queues bytes on a stream, copying only what flow control accepts; returns the count
    /// (possibly 0). When that is less than `data.len()` the stream is marked blocked and an
    /// [`Event::StreamWritable`] follows once the peer grants more credit, so a writer may wait for
    /// that event instead of polling.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        self.live_streams()?.write_slice(id, data)
    }

    /// Queues shared bytes on a stream without copying; returns how many were accepted. Like
    /// [`Connection::write`], a partial or zero write is followed by [`Event::StreamWritable`].
    pub fn write_bytes(&mut self, id: StreamId, data: Bytes) -> Result<usize, StreamError> {
        self.live_streams()?.write(id, data)
    }

    /// Ends the stream after the bytes written so far.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.live_streams()?.finish(id)
    }

    /// Abandons sending on a stream with an application error code.
    pub fn reset(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        self.live_streams()?.reset(id, code)
    }

    /// Reads up to `max` ordered bytes. `Ok(None)`: the stream ended and everything was read (once
    /// our direction is done too the stream is then forgotten, and later reads return
    /// `UnknownStream`). `Err(StreamError::Blocked)`: nothing yet; a [`Event::StreamReadable`]
    /// follows.
    pub fn read(&mut self, id: StreamId, max: usize) -> Result<Option<Bytes>, StreamError> {
        let streams = self.streams.as_mut().ok_or(StreamError::NotConnected)?;
        streams.read(id, max)
    }

    /// Whether the stream is still held: opened and not yet released (both directions finished
    /// or reset, and everything read). A peer stream that was opened and reset before anybody
    /// looked at it is already released.
    pub fn has_stream(&self, id: StreamId) -> bool {
        self.streams.as_ref().is_some_and(|s| s.contains(id))
    }

    /// Closes the connection with an application code and reason (at most 1024 bytes are sent).
    pub fn close(&mut self, now: Instant, code: u64, reason: &[u8]) {
        let reason = &reason[..reason.len().min(frame::MAX_REASON_LEN)];
        self.close_with(now, code, reason, ConnectionError::LocallyClosed);
    }

    // ---- Inputs ----

    /// Handles one datagram addressed to this connection.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, mut data: BytesMut) {
        self.last_now = self.last_now.max(now);
        let Ok((kind, _)) = packet::parse_prefix(&data) else {
            return;
        };
        if let Some(hs) = self.hs.as_mut() {
            if !hs.validated && from == self.remote {
                hs.recv_bytes += data.len() as u64;
            }
        }
        match self.state {
            State::Drained => return,
            State::Draining { .. } => return,
            State::Closing { .. } => {
                // Repeat the CLOSE for an authenticated packet only, at most one per packet.
                if kind == Kind::Data && self.authenticate(&mut data).is_some() {
                    self.close_send_pending = true;
                }
                if self.side == Side::Responder && kind == Kind::Initial {
                    // A failed handshake still answers retransmitted first messages (bounded by 3x).
                    if let Some(hs) = self.hs.as_mut() {
                        hs.send_pending = true;
                    }
                }
                return;
            }
            _ => {}
        }
        match kind {
            Kind::Initial => {
                if self.side == Side::Responder && self.state == State::Handshake {
                    if let Some(hs) = self.hs.as_mut() {
                        hs.send_pending = true;
                    }
                }
            }
            Kind::Retry => self.handle_retry(&data),
            Kind::Handshake => self.handle_handshake(now, &data),
            Kind::Data => self.handle_data(now, from, data),
            // Resets are matched by token at the endpoint, never routed by connection id.
            Kind::Reset => {}
        }
    }

    /// Handles expired timers. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        match self.state {
            State::Drained => return,
            State::Closing { until } | State::Draining { until } => {
                if now >= until {
                    self.state = State::Drained;
                }
                return;
            }
            State::Handshake => {
                if let Some(hs) = &self.hs {
                    if now >= hs.deadline {
                        self.lost(ConnectionError::HandshakeTimedOut);
                        return;
                    }
                }
            }
            State::Established => {}
        }
        if now >= self.idle_deadline && self.state == State::Established {
            self.lost(ConnectionError::TimedOut);
            return;
        }
        if let Some(hs) = self.hs.as_mut() {
            if hs.timer.is_some_and(|t| now >= t) {
                hs.send_pending = true;
                hs.retransmitted = true;
                hs.backoff = (hs.backoff + 1).min(6);
                hs.timer = None;
                self.stats.handshake_retransmits += 1;
            }
        }
        if self.state != State::Established {
            return;
        }
        if let Some(p) = self.path_check.as_mut() {
            if p.timer.is_some_and(|t| now >= t) {
                p.timer = None;
                if p.sends >= crate::rdt::PATH_CHALLENGES {
                    tracing::debug!(addr = %p.addr, "rdt: new peer address never answered; keeping the old one");
                    self.path_check = None;
                    self.stats.path_abandoned += 1;
                } else {
                    p.send_pending = true;
                }
            }
        }
        if self.ack_deadline.is_some_and(|t| now >= t) {
            self.ack_now = true;
            self.ack_deadline = None;
        }
        if self.loss_time.is_some_and(|t| now >= t) {
            self.detect_lost(now);
        } else if self.pto_deadline().is_some_and(|t| now >= t) {
            self.pto_count = (self.pto_count + 1).min(16);
            self.probes = 2;
            self.requeue_oldest();
        }
        if let Some(k) = self.config.keep_alive {
            if self.eliciting_in_flight == 0 && now >= self.last_sent + k {
                self.ping_pending = true;
            }
        }
    }

    // ---- Outputs ----

    /// Writes the next datagram(s) to send into `buf` (at least 1452 bytes, more to batch).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.last_now = self.last_now.max(now);
        if let Some(n) = self.write_handshake(now, buf) {
            return Some(self.transmit(n, None));
        }
        match self.state {
            State::Established => {}
            State::Closing { .. } if self.close_send_pending => {
                self.close_send_pending = false;
                let n = self.write_close(buf)?;
                return Some(self.transmit(n, None));
            }
            _ => return None,
        }
        if let Some(t) = self.write_challenge(now, buf) {
            return Some(t);
        }
        if let Some(size) = self.mtud.due(now) {
            if buf.len() >= usize::from(size) && self.can_send_eliciting(now, u64::from(size)) {
                let n = self.write_data(now, &mut buf[..usize::from(size)], Some(size))?;
                return Some(self.transmit(n, None));
            }
        }
        // After repeated probe timeouts, probe with minimum-size packets: if the path MTU dropped,
        // only those get through, and their acknowledgements expose the black hole.
        let mtu = if self.probes > 0 && self.pto_count >= 2 {
            usize::from(INITIAL_DATAGRAM_SIZE)
        } else {
            usize::from(self.mtud.current)
        };
        let mut total = 0;
        let mut count = 0;
        while count < self.config.max_gso_segments.max(1) && buf.len() - total >= mtu {
            let Some(n) = self.write_data(now, &mut buf[total..total + mtu], None) else {
                break;
            };
            total += n;
            count += 1;
            if n < mtu {
                break;
            }
        }
        if count == 0 {
            return None;
        }
        Some(self.transmit(total, (count > 1).then_some(mtu)))
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        match self.state {
            State::Drained => return None,
            State::Closing { until } | State::Draining { until } => return Some(until),
            State::Handshake => {
                if let Some(hs) = &self.hs {
                    at(Some(hs.deadline));
                    at(hs.timer);
                }
                return t;
            }
            State::Established => {}
        }
        if let Some(hs) = &self.hs {
            at(hs.timer);
        }
        at(Some(self.idle_deadline));
        at(self.path_check.as_ref().and_then(|p| p.timer));
        at(self.ack_deadline);
        at(self.loss_time.or_else(|| self.pto_deadline()));
        // Keep-alive only matters when nothing is in flight; otherwise the PTO probes the path.
        if self.eliciting_in_flight == 0 {
            at(self.config.keep_alive.map(|k| self.last_sent + k));
        }
        if self.has_eliciting_to_send() {
            at(self.pace_until);
        }
        // A probe that is due but waits for congestion window is sent on the next ack, not a timer.
        at(self.mtud.next_probe.filter(|&t| {
            t > self.last_now && self.mtud.probe.is_none() && self.mtud.candidate().is_some()
        }));
        t
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- Introspection ----

    /// Which side of the handshake this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The peer's device key, once the handshake has revealed it.
    pub fn peer_key(&self) -> Option<[u8; 32]> {
        self.peer_key
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// Whether the handshake completed and the connection is not closing.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the connection is gone for good.
    pub fn is_drained(&self) -> bool {
        self.state == State::Drained
    }

    /// Bytes in flight (sent, ack-eliciting, neither acknowledged nor lost).
    pub fn bytes_in_flight(&self) -> u64 {
        self.in_flight
    }

    /// The congestion window in bytes.
    pub fn congestion_window(&self) -> u64 {
        self.cc.window()
    }

    /// The smoothed RTT.
    pub fn rtt(&self) -> Duration {
        self.rtt.get()
    }

    /// Counters.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats;
        s.mtu = self.mtud.current;
        s
    }

    /// Stream bytes written but not yet acknowledged by the peer.
    pub fn unacked_bytes(&self) -> u64 {
        self.streams.as_ref().map_or(0, |s| s.unacked_bytes())
    }

    /// Bytes this connection holds in send buffers (at most its connection window, whatever
    /// credit the peer grants).
    pub fn send_buffered(&self) -> u64 {
        self.streams.as_ref().map_or(0, |s| s.send_buffered())
    }

    /// Another connection released send budget: writers cut short by it may try again.
    pub(crate) fn on_budget_released(&mut self) {
        if let Some(s) = self.streams.as_mut() {
            s.wake_blocked(&mut self.events);
        }
    }

    pub(crate) fn local_cid(&self) -> u64 {
        self.local_cid
    }

    /// Whether `token` is the peer's reset token for this connection.
    pub(crate) fn is_reset_token(&self, token: &[u8]) -> bool {
        matches!(self.state, State::Established | State::Closing { .. })
            && self
                .peer_params
                .is_some_and(|p| crypto::ct_eq(&p.reset_token, token))
    }

    /// The peer proved it lost the connection: end it without sending anything.
    pub(crate) fn handle_reset(&mut self) {
        match self.state {
            State::Established => self.lost(ConnectionError::PeerReset),
            State::Closing { .. } => self.state = State::Drained,
            _ => {}
        }
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.state == State::Handshake
    }

    // ---- Internals: state changes ----

    fn live_streams(&mut self) -> Result<&mut Streams, StreamError> {
        if self.state != State::Established {
            return Err(StreamError::NotConnected);
        }
        self.streams.as_mut().ok_or(StreamError::NotConnected)
    }

    fn transmit(&self, size: usize, segment_size: Option<usize>) -> Transmit {
        Transmit {
            destination: self.remote,
            size,
            segment_size,
        }
    }

    fn pto_base(&self) -> Duration {
        self.rtt.pto_base()
            + self
                .peer_params
                .map_or(self.config.max_ack_delay, |p| p.max_ack_delay)
    }

    fn pto_deadline(&self) -> Option<Instant> {
        if self.eliciting_in_flight == 0 {
            return None;
        }
        let base = self.pto_base();
        let backoff = 1u32 << self.pto_count.min(16);
        // Exponential backoff, capped so a long run of losses cannot stall the path for minutes.
        let period = (base * backoff).min(base.max(MAX_PTO_PERIOD));
        Some(self.last_eliciting_sent? + period)
    }

    /// Ends the connection without sending anything.
    fn lost(&mut self, reason: ConnectionError) {
        if self.state != State::Drained {
            self.events.push_back(Event::ConnectionLost { reason });
            self.state = State::Drained;
        }
    }

    /// Ends a connection whose handshake cannot complete, keeping the state a short while so the
    /// peer's retransmissions still get our last message (and thus the same error).
    fn fail(&mut self, now: Instant, reason: ConnectionError) {
        self.events.push_back(Event::ConnectionLost { reason });
        self.state = State::Closing {
            until: now + 3 * self.pto_base(),
        };
    }

    fn close_with(&mut self, now: Instant, code: u64, reason: &[u8], error: ConnectionError) {
        match self.state {
            State::Established => {
                self.close_frame = Some((code, Bytes::copy_from_slice(reason)));
                self.close_send_pending = true;
                self.events
                    .push_back(Event::ConnectionLost { reason: error });
                self.state = State::Closing {
                    until: now + 3 * self.pto_base(),
                };
            }
            State::Handshake => self.lost(error),
            _ => {}
        }
    }

    fn violation(&mut self, now: Instant, reason: &'static str) {
        tracing::debug!(reason, "rdt: closing on protocol violation");
        self.close_with(
            now,
            CODE_PROTOCOL_VIOLATION,
            reason.as_bytes(),
            ConnectionError::ProtocolViolation { reason },
        );
    }

    // ---- Internals: handshake ----

    fn handle_retry(&mut self, data: &[u8]) {
        if self.side != Side::Initiator || self.state != State::Handshake {
            return;
        }
        let Ok(p) = packet::parse_long(data) else {
            return;
        };
        let Some(hs) = self.hs.as_mut() else { return };
        // A new token replaces an expired one; the same token again changes nothing.
        if p.src != self.initial_dcid || p.token.is_empty() || p.token == hs.token.as_slice() {
            return;
        }
        let tag = crypto::retry_tag(&self.identity.psk, &data[..p.tagged_len]);
        if !crypto::ct_eq(&tag, p.payload) {
            self.stats.auth_failures += 1;
            return;
        }
        hs.token = p.token.to_vec();
        hs.send_pending = true;
    }

    fn handle_handshake(&mut self, now: Instant, data: &[u8]) {
        let Ok(p) = packet::parse_long(data) else {
            return;
        };
        let Some(hs) = self.hs.as_mut() else { return };
        let Some(noise) = hs.noise.as_mut() else {
            return;
        };
        if self.state != State::Handshake || noise.is_my_turn() {
            return;
        }
        let mut payload = [0u8; packet::MAX_NOISE_LEN];
        match self.side {
            Side::Initiator => {
                // Message 2: the responder's ephemeral and static keys and its parameters.
                let Ok(n) = noise.read_message(p.payload, &mut payload) else {
                    hs.noise = rebuild(&self.identity, Side::Initiator, hs);
                    self.stats.auth_failures += 1;
                    return;
                };
                let Some(peer) = Params::decode(&payload[..n]) else {
                    self.lost(ConnectionError::ProtocolViolation {
                        reason: "bad handshake parameters",
                    });
                    return;
                };
                if let (Some(t), false) = (hs.first_sent, hs.retransmitted) {
                    self.rtt
                        .update(Duration::ZERO, now.saturating_duration_since(t));
                }
                self.remote_cid = peer.cid;
                if peer.encryption != self.config.encryption {
                    self.lost(ConnectionError::EncryptionMismatch {
                        local: self.config.encryption,
                        peer: peer.encryption,
                    });
                    return;
                }
                let Some(key) = remote_static(noise) else {
                    return;
                };
                let mut msg = vec![0u8; packet::MAX_NOISE_LEN];
                let Ok(len) = noise.write_message(&[], &mut msg) else {
                    return;
                };
                msg.truncate(len);
                let (k_i2r, k_r2i) = noise.dangerously_get_raw_split();
                hs.noise = None;
                hs.msg = msg;
                hs.send_pending = true;
                hs.backoff = 0;
                hs.retransmitted = false;
                hs.timer = None;
                let suite = self.config.cipher;
                self.establish(now, key, &k_i2r, &k_r2i, suite, peer);
            }
            Side::Responder => {
                // Message 3: the initiator's static key.
                let Ok(_) = noise.read_message(p.payload, &mut payload) else {
                    hs.noise = rebuild(&self.identity, Side::Responder, hs);
                    self.stats.auth_failures += 1;
                    return;
                };
                let Some(key) = remote_static(noise) else {
                    return;
                };
                let (k_i2r, k_r2i) = noise.dangerously_get_raw_split();
                if let (Some(t), false) = (hs.first_sent, hs.retransmitted) {
                    self.rtt
                        .update(Duration::ZERO, now.saturating_duration_since(t));
                }
                self.hs = None;
                let Some(peer) = self.peer_params else { return };
                self.handshake_done_pending = true;
                self.establish(now, key, &k_r2i, &k_i2r, peer.suite, peer);
            }
        }
    }

    fn establish(
        &mut self,
        now: Instant,
        key: [u8; 32],
        send: &[u8; 32],
        recv: &[u8; 32],
        suite: CipherSuite,
        peer: Params,
    ) {
        let enc = self.config.encryption;
        self.send_key = Some(PacketKey::new(suite, send, enc));
        self.recv_key = Some(PacketKey::new(suite, recv, enc));
        self.peer_key = Some(key);
        let local = Params::from_config(&self.config, self.local_cid, [0; 16]).limits;
        self.streams = Some(
            Streams::new(self.side == Side::Initiator, local, peer.limits)
                .with_budget(self.identity.send_budget.clone()),
        );
        self.peer_params = Some(peer);
        self.state = State::Established;
        self.idle_deadline = now + self.config.idle_timeout;
        if let Some(hs) = &self.hs {
            // An initiator keeps resending message 3 until the responder confirms; give that the
            // whole handshake budget even if the idle timeout is shorter.
            self.idle_deadline = self.idle_deadline.max(hs.deadline);
        }
        self.mtud.next_probe = Some(now);
        if !self.identity.allows(&key) {
            tracing::debug!("rdt: refusing peer device key");
            self.close_with(
                now,
                CODE_KEY_REFUSED,
                b"device key not allowed",
                ConnectionError::PeerKeyRefused { key },
            );
            return;
        }
        self.events.push_back(Event::Connected { peer_key: key });
    }

    fn write_handshake(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let pto = self.pto_base();
        let side = self.side;
        let (local, remote) = (self.local_cid, self.remote_cid);
        let hs = self.hs.as_mut()?;
        if !hs.send_pending {
            return None;
        }
        if matches!(self.state, State::Drained | State::Draining { .. }) {
            return None;
        }
        let initial = side == Side::Initiator && hs.noise.is_some();
        let kind = if initial {
            Kind::Initial
        } else {
            Kind::Handshake
        };
        let mut n = packet::write_long(buf, kind, remote, local, &hs.token, &hs.msg)?;
        if initial {
            let pad = usize::from(INITIAL_DATAGRAM_SIZE);
            if buf.len() < pad {
                return None;
            }
            buf[n..pad].fill(0);
            n = pad;
        }
        if !hs.validated && hs.sent_bytes + n as u64 > 3 * hs.recv_bytes {
            // Anti-amplification: wait for more bytes from the unvalidated peer.
            return None;
        }
        hs.sent_bytes += n as u64;
        hs.send_pending = false;
        if hs.first_sent.is_none() {
            hs.first_sent = Some(now);
        }
        if side == Side::Initiator {
            let period = (pto.max(Duration::from_millis(1)) * (1 << hs.backoff))
                .min(pto.max(MAX_PTO_PERIOD));
            hs.timer = Some(now + period);
        }
        self.stats.sent_packets += 1;
        self.stats.sent_bytes += n as u64;
        Some(n)
    }

    // ---- Internals: data packets ----

    /// Checks a Data packet's packet number against the replay window and authenticates (and
    /// decrypts) it in place; returns the packet number and body length, and marks the number seen.
    fn authenticate(&mut self, data: &mut BytesMut) -> Option<(u64, usize)> {
        if data.len() < DATA_HEADER_LEN + TAG_LEN {
            return None;
        }
        let key = self.recv_key.as_mut()?;
        let truncated = u32::from_be_bytes(data[9..13].try_into().expect("length checked"));
        let pn = packet::decode_pn(truncated, self.replay.largest());
        if !self.replay.is_fresh(pn) {
            self.stats.duplicates += 1;
            return None;
        }
        let Ok(body_len) = key.open(pn, data, DATA_HEADER_LEN) else {
            self.stats.auth_failures += 1;
            return None;
        };
        self.replay.mark(pn);
        Some((pn, body_len))
    }

    fn handle_data(&mut self, now: Instant, from: SocketAddr, mut data: BytesMut) {
        let datagram_len = data.len() as u64;
        let Some((pn, body_len)) = self.authenticate(&mut data) else {
            return;
        };
        // Authenticated from here on.
        self.stats.recv_packets += 1;
        self.stats.recv_bytes += datagram_len;
        self.idle_deadline = now + self.config.idle_timeout.max(3 * self.pto_base());
        if self.side == Side::Initiator && !self.confirmed {
            self.confirmed = true;
            self.hs = None;
        }
        let largest_before = self.received.max();
        let newest = largest_before.is_none_or(|l| pn > l);
        if newest {
            self.largest_recv_time = Some(now);
        }
        self.on_packet_from(from, datagram_len, newest);
        let out_of_order = largest_before.is_some_and(|l| pn < l || pn > l + 1);
        self.received.insert_one(pn);
        self.received.truncate_low(64);
        let datagram_len = data.len();
        let bytes = data.freeze();
        let body = bytes.slice(DATA_HEADER_LEN..DATA_HEADER_LEN + body_len);
        let mut eliciting = false;
        for f in Decoder::new(&body) {
            let f = match f {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, "rdt: bad frame");
                    self.violation(now, "malformed frame");
                    return;
                }
            };
            match f {
                Frame::Padding | Frame::Ack(_) | Frame::Close { .. } => {}
                _ => eliciting = true,
            }
            if let Err(reason) = self.handle_frame(now, f, &body, datagram_len) {
                self.violation(now, reason);
                return;
            }
            if self.state != State::Established {
                return;
            }
        }
        if eliciting {
            self.ack_pending = true;
            self.ack_eliciting_since_ack += 1;
            if out_of_order {
                self.ack_now = true;
            }
            if self.ack_deadline.is_none() {
                self.ack_deadline = Some(now + self.config.max_ack_delay);
            }
        }
    }

    /// Path validation for an authenticated datagram of `len` bytes from `from` (`newest`: it
    /// carried the highest packet number yet). A new address is challenged, never followed at
    /// once: an attacker who races a captured packet from a spoofed address gets only challenges
    /// sent there, at most `PATH_AMPLIFICATION` times what it sent.
    fn on_packet_from(&mut self, from: SocketAddr, len: u64, newest: bool) {
        if from == self.remote {
            // The peer is still where it was: a pending check was a stray copy (or an old path).
            if newest && self.path_check.take().is_some() {
                self.stats.path_abandoned += 1;
            }
            return;
        }
        match self.path_check.as_mut() {
            Some(p) if p.addr == from => p.recv_bytes = p.recv_bytes.saturating_add(len),
            _ if newest => {
                if self.path_check.is_some() {
                    self.stats.path_abandoned += 1;
                }
                let mut challenge = [0u8; 8];
                self.path_rng.fill_bytes(&mut challenge);
                self.path_check = Some(PathCheck {
                    addr: from,
                    challenge,
                    recv_bytes: len,
                    sent_bytes: 0,
                    sends: 0,
                    send_pending: true,
                    timer: None,
                });
            }
            _ => {}
        }
    }

    /// A PATH_RESPONSE: if it echoes the pending challenge, move to the new address.
    fn on_path_response(&mut self, data: [u8; 8]) {
        let Some(p) = self.path_check.as_ref() else {
            return;
        };
        if !crypto::ct_eq(&p.challenge, &data) {
            return;
        }
        tracing::debug!(from = %self.remote, to = %p.addr, "rdt: peer address validated");
        self.remote = p.addr;
        self.path_check = None;
        self.stats.path_validations += 1;
        // What was sent to the old address while the peer moved (a NAT rebinding) is likely
        // gone: probe the new path now instead of after a backed-off timeout.
        if self.eliciting_in_flight > 0 {
            self.pto_count = 0;
            self.probes = self.probes.max(1);
            self.requeue_oldest();
        }
    }

    /// Writes a datagram carrying only the pending PATH_CHALLENGE, addressed to the new address,
    /// if the amplification budget allows it.
    fn write_challenge(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let pto = self.pto_base();
        let p = self.path_check.as_mut()?;
        if !p.send_pending || buf.len() < CHALLENGE_PACKET_LEN {
            return None;
        }
        let budget = p.recv_bytes.saturating_mul(crate::rdt::PATH_AMPLIFICATION);
        if p.sent_bytes + CHALLENGE_PACKET_LEN as u64 > budget {
            // Sent once more bytes arrive from there (or given up on at the timer).
            return None;
        }
        let key = self.send_key.as_mut()?;
        let pn = self.next_pn;
        self.next_pn += 1;
        let mut w = Writer::new(buf, DATA_HEADER_LEN);
        w.u8(frame::ty::PATH_CHALLENGE);
        w.slice(&p.challenge);
        let len = w.pos;
        packet::write_data_header(buf, self.remote_cid, pn);
        let n = key.seal(pn, buf, DATA_HEADER_LEN, len);
        p.sent_bytes += n as u64;
        p.send_pending = false;
        p.timer = Some(now + pto.max(Duration::from_millis(1)) * (1 << p.sends.min(8)));
        p.sends += 1;
        let destination = p.addr;
        // Not counted in flight: a challenge is answered by a PATH_RESPONSE, not retransmitted.
        self.sent.push_back(None);
        self.trim_sent();
        self.stats.sent_packets += 1;
        self.stats.sent_bytes += n as u64;
        self.stats.path_challenges += 1;
        Some(Transmit {
            destination,
            size: n,
            segment_size: None,
        })
    }

    fn handle_frame(
        &mut self,
        now: Instant,
        f: Frame<'_>,
        body: &Bytes,
        datagram_len: usize,
    ) -> Result<(), &'static str> {
        let events = &mut self.events;
        match f {
            Frame::Padding | Frame::Ping => {}
            Frame::Ack(ack) => self.on_ack(now, ack)?,
            Frame::Stream {
                id,
                offset,
                fin,
                data,
            } => {
                // Small frames are copied so a tiny frame cannot pin a whole datagram in memory.
                let bytes = if data.len() * 4 < datagram_len {
                    Bytes::copy_from_slice(&body[data])
                } else {
                    body.slice(data)
                };
                let streams = self
                    .streams
                    .as_mut()
                    .ok_or("stream frame before handshake")?;
                streams
                    .on_stream_frame(id, offset, fin, bytes, events)
                    .map_err(Violation::reason)?;
            }
            Frame::MaxData(m) => self
                .streams
                .as_mut()
                .ok_or("early frame")?
                .on_max_data(m, events),
            Frame::MaxStreamData { id, max } => self
                .streams
                .as_mut()
                .ok_or("early frame")?
                .on_max_stream_data(id, max, events)
                .map_err(Violation::reason)?,
            Frame::MaxStreams(m) => self
                .streams
                .as_mut()
                .ok_or("early frame")?
                .on_max_streams(m, events),
            Frame::ResetStream {
                id,
                code,
                final_size,
            } => self
                .streams
                .as_mut()
                .ok_or("early frame")?
                .on_reset(id, code, final_size, events)
                .map_err(Violation::reason)?,
            Frame::Close { code, reason } => {
                let reason = match code {
                    CODE_KEY_REFUSED => ConnectionError::RefusedByPeer,
                    CODE_ENCRYPTION_MISMATCH => ConnectionError::EncryptionMismatch {
                        local: self.config.encryption,
                        peer: !self.config.encryption,
                    },
                    _ => ConnectionError::PeerClosed {
                        code,
                        reason: String::from_utf8_lossy(reason).into_owned(),
                    },
                };
                self.events.push_back(Event::ConnectionLost { reason });
                self.state = State::Draining {
                    until: now + 3 * self.pto_base(),
                };
            }
            Frame::HandshakeDone => {
                if self.side != Side::Initiator {
                    return Err("handshake-done from the initiator");
                }
            }
            // Echoed in our next packet, on our current path (the peer answered from the address
            // it challenged, or from the one we use; either way only we can read the challenge).
            Frame::PathChallenge(data) => self.path_response = Some(data),
            Frame::PathResponse(data) => self.on_path_response(data),
        }
        Ok(())
    }

    fn on_ack(&mut self, now: Instant, ack: frame::AckFrame<'_>) -> Result<(), &'static str> {
        if ack.largest >= self.next_pn {
            return Err("ack of an unsent packet");
        }
        if self.largest_acked.is_none_or(|l| ack.largest > l) {
            self.largest_acked = Some(ack.largest);
        }
        let mut newly_eliciting = false;
        let mut largest_newly: Option<Instant> = None;
        let end = self.sent_base + self.sent.len() as u64;
        for r in ack.iter() {
            let lo = r.start.max(self.sent_base);
            let hi = r.end.min(end);
            for pn in lo..hi {
                let idx = (pn - self.sent_base) as usize;
                let Some(p) = self.sent[idx].take() else {
                    continue;
                };
                if pn == ack.largest {
                    largest_newly = Some(p.time);
                }
                newly_eliciting |= p.ack_eliciting;
                self.on_packet_acked(now, p);
            }
        }
        if let (Some(sent), true) = (largest_newly, newly_eliciting) {
            let max = self
                .peer_params
                .map_or(self.config.max_ack_delay, |p| p.max_ack_delay);
            let delay = Duration::from_micros(ack.delay_us).min(max);
            self.rtt.update(delay, now.saturating_duration_since(sent));
        }
        if largest_newly.is_some() || newly_eliciting {
            self.pto_count = 0;
        }
        self.detect_lost(now);
        self.trim_sent();
        Ok(())
    }

    fn on_packet_acked(&mut self, now: Instant, mut p: SentPacket) {
        if p.ack_eliciting {
            self.in_flight -= u64::from(p.size);
            self.eliciting_in_flight -= 1;
            self.cc
                .on_ack(now, p.time, u64::from(p.size), self.app_limited, &self.rtt);
        }
        if p.mtu_probe {
            self.mtud.probe = None;
            self.mtud.lo = p.size;
            self.mtud.fails = 0;
            self.mtud.current = p.size;
            self.mtud.next_probe = Some(now);
            self.cc.on_mtu_update(p.size);
        }
        if p.size > INITIAL_DATAGRAM_SIZE {
            self.mtud.black_hole_losses = 0;
        }
        let events = &mut self.events;
        for r in p.retx.drain(..) {
            if let (Retx::Stream(m), Some(s)) = (r, self.streams.as_mut()) {
                s.on_frame_acked(&m, events);
            } else if let (Retx::Reset(id), Some(s)) = (r, self.streams.as_mut()) {
                s.on_reset_result(id, true);
            }
        }
        self.retx_pool.push(p.retx);
    }

    fn detect_lost(&mut self, now: Instant) {
        self.loss_time = None;
        let Some(largest) = self.largest_acked else {
            return;
        };
        let delay = (self.rtt.latest().max(self.rtt.get()) * 9 / 8).max(Duration::from_millis(1));
        let mut lost_newest: Option<Instant> = None;
        // RFC 9002 section 7.6: a contiguous run of lost ack-eliciting packets spanning more than
        // three PTOs (with an RTT sample taken) is persistent congestion.
        let persistent_span = self.pto_base() * 3;
        let mut run: Option<(usize, Instant)> = None;
        let mut persistent = false;
        // Whether this pass declared lost a full-size (current, above 1200) non-probe packet.
        let mut large_lost = false;
        let mut idx = 0;
        while idx < self.sent.len() {
            let pn = self.sent_base + idx as u64;
            if pn > largest {
                break;
            }
            let Some(p) = &self.sent[idx] else {
                idx += 1;
                continue;
            };
            if p.time + delay <= now || largest >= pn + 3 {
                let p = self.sent[idx].take().expect("checked above");
                if !p.mtu_probe {
                    lost_newest = Some(lost_newest.map_or(p.time, |t| t.max(p.time)));
                    large_lost |= p.size > INITIAL_DATAGRAM_SIZE && p.size == self.mtud.current;
                }
                if p.ack_eliciting && !p.mtu_probe {
                    run = match run {
                        Some((last, start)) if last + 1 == idx => {
                            persistent |= self.rtt.has_sample()
                                && p.time.saturating_duration_since(start) > persistent_span;
                            Some((idx, start))
                        }
                        _ => Some((idx, p.time)),
                    };
                }
                self.on_packet_lost(now, p);
            } else {
                let t = p.time + delay;
                self.loss_time = Some(self.loss_time.map_or(t, |x| x.min(t)));
            }
            idx += 1;
        }
        if large_lost {
            self.on_large_loss(now);
        }
        if let Some(sent) = lost_newest {
            self.stats.congestion_events += 1;
            self.stats.persistent_congestion += u64::from(persistent);
            self.cc.on_congestion_event(now, sent, persistent);
        }
    }

    /// One loss-detection pass declared full-size packets lost. A burst of losses counts once
    /// (a congestion drop on a bulk transfer loses many full-size packets at once, and is no
    /// sign of a black hole); only [`BLACK_HOLE_THRESHOLD`] such passes in a row, with no
    /// full-size packet acknowledged in between, fall back to 1200 bytes.
    fn on_large_loss(&mut self, now: Instant) {
        self.mtud.black_hole_losses += 1;
        if self.mtud.black_hole_losses >= BLACK_HOLE_THRESHOLD {
            // Large packets keep disappearing while the path once carried them: fall back.
            tracing::debug!("rdt: path MTU black hole, falling back to 1200");
            self.stats.black_holes += 1;
            self.mtud.current = INITIAL_DATAGRAM_SIZE;
            self.mtud.lo = INITIAL_DATAGRAM_SIZE;
            self.mtud.hi = self.mtud.max + 1;
            self.mtud.black_hole_losses = 0;
            self.mtud.next_probe = Some(now + self.config.mtu_probe_retry);
            self.cc.on_mtu_update(INITIAL_DATAGRAM_SIZE);
        }
    }

    fn on_packet_lost(&mut self, now: Instant, mut p: SentPacket) {
        self.stats.lost_packets += 1;
        if p.ack_eliciting {
            self.in_flight -= u64::from(p.size);
            self.eliciting_in_flight -= 1;
        }
        if p.mtu_probe {
            self.mtud.probe = None;
            self.mtud.fails += 1;
            if self.mtud.fails >= 3 {
                self.mtud.hi = p.size;
                self.mtud.fails = 0;
            }
            self.mtud.next_probe = Some(now);
        }
        for r in p.retx.drain(..) {
            match r {
                Retx::Stream(m) => {
                    if let Some(s) = self.streams.as_mut() {
                        s.on_frame_lost(&m);
                    }
                }
                Retx::MaxData => {
                    if let Some(s) = self.streams.as_mut() {
                        s.max_data_pending = true;
                    }
                }
                Retx::MaxStreams => {
                    if let Some(s) = self.streams.as_mut() {
                        s.max_streams_pending = true;
                    }
                }
                Retx::Credit(id) => {
                    if let Some(s) = self.streams.as_mut() {
                        s.on_credit_lost(id);
                    }
                }
                Retx::Reset(id) => {
                    if let Some(s) = self.streams.as_mut() {
                        s.on_reset_result(id, false);
                    }
                }
                Retx::HandshakeDone => self.handshake_done_pending = true,
            }
        }
        self.retx_pool.push(p.retx);
    }

    /// On a probe timeout, queue the oldest in-flight packet's stream data again (without declaring
    /// it lost), so the probes carry data rather than only a PING (RFC 9002 section 6.2.4).
    fn requeue_oldest(&mut self) {
        let Some(p) = self.sent.iter().flatten().find(|p| p.ack_eliciting) else {
            return;
        };
        if let Some(s) = self.streams.as_mut() {
            for r in &p.retx {
                if let Retx::Stream(m) = r {
                    s.on_frame_lost(m);
                }
            }
        }
    }

    fn trim_sent(&mut self) {
        while let Some(None) = self.sent.front() {
            self.sent.pop_front();
            self.sent_base += 1;
        }
    }

    fn has_eliciting_to_send(&self) -> bool {
        self.probes > 0
            || self.ping_pending
            || self.handshake_done_pending
            || self
                .streams
                .as_ref()
                .is_some_and(|s| s.has_pending() || s.max_data_pending || s.max_streams_pending)
    }

    fn ack_due(&self, now: Instant) -> bool {
        self.ack_pending
            && (self.ack_now
                || self.ack_eliciting_since_ack >= self.config.ack_frequency
                || self.ack_deadline.is_some_and(|t| now >= t))
    }

    /// Whether congestion control and pacing allow an ack-eliciting packet of `size` now.
    fn can_send_eliciting(&mut self, now: Instant, size: u64) -> bool {
        if self.probes > 0 {
            return true;
        }
        if self.in_flight + size > self.cc.window() {
            // An acknowledgement, not a timer, unblocks this.
            self.app_limited = false;
            self.pace_until = None;
            return false;
        }
        if self.config.pacing {
            let rtt = if self.rtt.has_sample() {
                self.rtt.get()
            } else {
                self.config.initial_rtt
            };
            if let Some(t) = self
                .pacer
                .delay(now, size, self.mtud.current, self.cc.window(), rtt)
            {
                self.pace_until = Some(t);
                return false;
            }
        }
        self.pace_until = None;
        true
    }

    /// Writes one Data packet into `buf` (whose length is the datagram limit). `probe` is the size
    /// of an MTU probe to pad to.
    fn write_data(&mut self, now: Instant, buf: &mut [u8], probe: Option<u16>) -> Option<usize> {
        let limit = buf.len();
        let eliciting_ok = self.has_eliciting_to_send() || probe.is_some();
        let can_elicit = eliciting_ok && self.can_send_eliciting(now, limit as u64);
        // A path response goes out at once, whatever the congestion window: the peer is waiting
        // for it to send anything to us at all (9 bytes, not retransmitted: the peer re-challenges).
        let respond = self.path_response.is_some() && probe.is_none();
        let ack = self.ack_due(now) || ((can_elicit || respond) && self.ack_pending);
        if !ack && !can_elicit && !respond {
            if !eliciting_ok {
                self.app_limited = true;
            }
            return None;
        }
        let pn = self.next_pn;
        let mut retx = self.retx_pool.pop().unwrap_or_default();
        let end = limit - TAG_LEN;
        let mut w = Writer::new(&mut buf[..end], DATA_HEADER_LEN);
        if ack {
            let delay = self
                .largest_recv_time
                .map_or(0, |t| now.saturating_duration_since(t).as_micros() as u64);
            if frame::write_ack(&mut w, &self.received, delay, end - DATA_HEADER_LEN) {
                self.ack_pending = false;
                self.ack_now = false;
                self.ack_eliciting_since_ack = 0;
                self.ack_deadline = None;
            }
        }
        if respond && w.remaining() >= 9 {
            if let Some(data) = self.path_response.take() {
                w.u8(frame::ty::PATH_RESPONSE);
                w.slice(&data);
            }
        }
        let mut eliciting = false;
        if can_elicit {
            if probe.is_some() {
                w.u8(frame::ty::PING);
                eliciting = true;
            } else {
                if self.handshake_done_pending && w.remaining() >= 1 {
                    w.u8(frame::ty::HANDSHAKE_DONE);
                    self.handshake_done_pending = false;
                    retx.push(Retx::HandshakeDone);
                    eliciting = true;
                }
                if let Some(s) = self.streams.as_mut() {
                    if s.max_data_pending && w.remaining() >= 9 {
                        w.u8(frame::ty::MAX_DATA);
                        w.varint(s.recv_max_data());
                        s.max_data_pending = false;
                        retx.push(Retx::MaxData);
                        eliciting = true;
                    }
                    if s.max_streams_pending && w.remaining() >= 9 {
                        w.u8(frame::ty::MAX_STREAMS);
                        w.varint(s.local_max_streams());
                        s.max_streams_pending = false;
                        retx.push(Retx::MaxStreams);
                        eliciting = true;
                    }
                    let mut resets = Vec::new();
                    let mut credits = Vec::new();
                    s.write_control(&mut w, &mut resets, &mut credits);
                    for id in resets {
                        retx.push(Retx::Reset(id));
                        eliciting = true;
                    }
                    for id in credits {
                        retx.push(Retx::Credit(id));
                        eliciting = true;
                    }
                    while w.remaining() > 8 {
                        let Some(m) = s.write_stream_frame(&mut w) else {
                            break;
                        };
                        retx.push(Retx::Stream(m));
                        eliciting = true;
                    }
                }
                if !eliciting && (self.ping_pending || self.probes > 0) && w.remaining() >= 1 {
                    w.u8(frame::ty::PING);
                    eliciting = true;
                }
            }
        }
        if eliciting {
            self.ping_pending = false;
        }
        let mut len = w.pos;
        if len == DATA_HEADER_LEN {
            self.retx_pool.push(retx);
            return None;
        }
        if let Some(size) = probe {
            let target = usize::from(size) - TAG_LEN;
            buf[len..target].fill(0);
            len = target;
        }
        packet::write_data_header(buf, self.remote_cid, pn);
        let key = self
            .send_key
            .as_mut()
            .expect("established connections have keys");
        let n = key.seal(pn, buf, DATA_HEADER_LEN, len);
        self.next_pn += 1;
        if eliciting && self.probes > 0 {
            self.probes -= 1;
            self.stats.probe_packets += 1;
        }
        let size = n as u16;
        if eliciting {
            self.in_flight += u64::from(size);
            self.eliciting_in_flight += 1;
            self.last_eliciting_sent = Some(now);
            self.cc.on_sent(now, u64::from(size));
            self.pacer.on_sent(u64::from(size));
        }
        if probe.is_some() {
            self.mtud.probe = Some((pn, size));
        }
        self.sent.push_back(Some(SentPacket {
            time: now,
            size,
            ack_eliciting: eliciting,
            mtu_probe: probe.is_some(),
            retx,
        }));
        if !eliciting {
            // Ack-only packets are never acknowledged themselves; forget them at once.
            if let Some(Some(p)) = self.sent.back_mut().map(Option::take) {
                self.retx_pool.push(p.retx);
            }
            self.trim_sent();
        }
        self.last_sent = now;
        self.stats.sent_packets += 1;
        self.stats.sent_bytes += n as u64;
        Some(n)
    }

    fn write_close(&mut self, buf: &mut [u8]) -> Option<usize> {
        let (code, reason) = self.close_frame.clone()?;
        let key = self.send_key.as_mut()?;
        let need = DATA_HEADER_LEN + 1 + 8 + 8 + reason.len() + TAG_LEN;
        if buf.len() < need {
            return None;
        }
        let pn = self.next_pn;
        self.next_pn += 1;
        let mut w = Writer::new(buf, DATA_HEADER_LEN);
        w.u8(frame::ty::CLOSE);
        w.varint(code);
        w.varint(reason.len() as u64);
        w.slice(&reason);
        let len = w.pos;
        packet::write_data_header(buf, self.remote_cid, pn);
        let n = key.seal(pn, buf, DATA_HEADER_LEN, len);
        // Keep our record of packet numbers dense.
        self.sent.push_back(None);
        self.trim_sent();
        Some(n)
    }
}

/// Rebuilds a handshake state to where it was before a failed read.
///
/// snow 0.10 rolls back only the hash and chaining key when `read_message` fails, not the cipher
/// key or nonce, so one corrupted message 2 or 3 would poison the state and every retransmission
/// after it would fail too. The ephemeral key comes from a seeded RNG, so replaying our own side of
/// the transcript (and the stored message 1, for a responder) reproduces the exact state. This costs
/// up to three X25519 operations, and only for a packet that reached a handshaking connection and
/// failed authentication.
fn rebuild(identity: &Identity, side: Side, hs: &Handshake) -> Option<snow::HandshakeState> {
    let id = identity;
    let mut noise = crypto::build_handshake(
        side == Side::Initiator,
        &id.static_secret,
        &id.static_pub,
        &id.psk,
        hs.seed,
    )
    .ok()?;
    let mut buf = [0u8; packet::MAX_NOISE_LEN];
    if side == Side::Responder {
        noise.read_message(&hs.peer_msg1, &mut buf).ok()?;
    }
    noise.write_message(&hs.our_payload, &mut buf).ok()?;
    Some(noise)
}

fn remote_static(noise: &snow::HandshakeState) -> Option<[u8; 32]> {
    noise.get_remote_static()?.try_into().ok()
}

/// Draws a random connection id.
pub(crate) fn random_cid(rng: &mut ChaCha20Rng) -> u64 {
    rng.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_and_reject() {
        let p = Params::from_config(&TransportConfig::default(), 77, [5; 16]);
        let mut b = [0u8; 64];
        let n = p.encode(&mut b);
        assert_eq!(Params::decode(&b[..n]), Some(p));
        for cut in 0..n {
            assert_eq!(Params::decode(&b[..cut]), None);
        }
        b[25] = 7;
        assert_eq!(Params::decode(&b[..n]), None);
    }
}
