//! One connection's state machine: its state, its public API, and the packet loop that ties the
//! parts together (authenticating and dispatching received frames, assembling Data packets).
//!
//! A `Connection` is owned by an [`Endpoint`](crate::rdt::Endpoint), which routes datagrams to it
//! by connection id; applications reach it through `Endpoint::connection` to use streams.
//!
//! Method taxonomy (as in quinn-proto): `handle_*` feed input, `poll_*` drain output, and the stream
//! methods (`open`, `write`, `finish`, `read`, `reset`, `close`) are the application's API. Nothing
//! here reads a clock: every method that needs the time takes `now`.
//!
//! The jobs live one per file, each an `impl Connection` block over the same state:
//! - `handshake.rs`: the Noise handshake (the constructors `new_initiator` and `new_responder`,
//!   messages 2 and 3, Retry, the packet keys, handshake retransmission and anti-amplification);
//! - `recovery.rs`: sent-packet tracking, ACK processing, loss detection, the probe timeout, when an
//!   ACK is due, and the congestion and pacing gate (RFC 9002);
//! - `path.rs`: path-MTU discovery and black-hole fallback, and path validation of a new peer
//!   address (PATH_CHALLENGE / PATH_RESPONSE);
//! - `params.rs`: the transport parameters exchanged in the handshake and their encoding.
//!
//! What this is not: stream buffers, reassembly and flow control (`stream.rs`); frame and packet
//! formats (`frame.rs`, `packet.rs`); routing, accepting and stateless replies (`endpoint.rs`);
//! any IO (`src/net`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use core::net::SocketAddr;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::rdt::congestion::Controller;
use crate::rdt::crypto::{self, PacketKey};
use crate::rdt::frame::{self, Decoder, Frame, Writer};
use crate::rdt::pacing::Pacer;
use crate::rdt::packet::{self, Kind, ReplayWindow, DATA_HEADER_LEN, TAG_LEN};
use crate::rdt::range_set::RangeSet;
use crate::rdt::rtt::RttEstimator;
use crate::rdt::stream::{SendBudget, StreamError, StreamId, Streams, Violation};
use crate::rdt::{
    ConnectionError, Event, Transmit, TransportConfig, CODE_ENCRYPTION_MISMATCH, CODE_KEY_REFUSED,
    CODE_PROTOCOL_VIOLATION, INITIAL_DATAGRAM_SIZE,
};

mod handshake;
mod params;
mod path;
mod recovery;

pub(crate) use params::Params;

use handshake::Handshake;
use path::{Mtud, PathCheck};
use recovery::{Retx, SentPacket};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshake,
    Established,
    Closing { until: Instant },
    Draining { until: Instant },
    Drained,
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
        self.on_handshake_timer(now);
        if self.state != State::Established {
            return;
        }
        self.on_path_timer(now);
        self.on_recovery_timeout(now);
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

    fn has_eliciting_to_send(&self) -> bool {
        self.probes > 0
            || self.ping_pending
            || self.handshake_done_pending
            || self
                .streams
                .as_ref()
                .is_some_and(|s| s.has_pending() || s.max_data_pending || s.max_streams_pending)
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

/// Draws a random connection id.
pub(crate) fn random_cid(rng: &mut ChaCha20Rng) -> u64 {
    rng.next_u64()
}
