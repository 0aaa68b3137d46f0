//! The endpoint: one per UDP socket. It owns the connections, routes datagrams to them by
//! connection id, accepts handshakes, answers floods with stateless retries and aggregates the
//! connections' transmits, timers and events.
//!
//! Refusals happen here, as cheaply as possible, and are counted by [`DropReason`]: a datagram
//! that is not ours, is truncated, or names no connection costs a header parse; a first handshake
//! message without the share key costs the PSK check (hashing and one AEAD open, no Diffie-Hellman)
//! and leaves no state behind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use core::net::SocketAddr;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::rdt::conn::{self, Connection, Identity, Params};
use crate::rdt::crypto::{self, TokenCheck, TokenKey};
use crate::rdt::packet::{self, Kind};
use crate::rdt::stream::SendBudget;
use crate::rdt::{
    EndpointConfig, Event, RetryPolicy, Transmit, TransportConfig, INITIAL_DATAGRAM_SIZE,
};

/// Identifies a connection within its endpoint. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionHandle(pub u64);

/// Why the endpoint dropped a datagram without any state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a well-formed rdt header (wrong version, unknown kind, truncated).
    #[error("malformed packet header")]
    Malformed,
    /// Names a connection id we do not have.
    #[error("unknown connection id")]
    UnknownConnection,
    /// A first handshake message in a datagram under 1200 bytes.
    #[error("initial packet not padded to 1200 bytes")]
    InitialTooSmall,
    /// A first handshake message failed the PSK check (wrong share key, corrupted, or garbage).
    #[error("handshake refused: wrong share key or corrupted first message")]
    HandshakeAuth,
    /// Handshake parameters could not be decoded.
    #[error("handshake parameters malformed")]
    BadParams,
    /// The endpoint does not accept incoming connections.
    #[error("not accepting connections")]
    NotAccepting,
    /// Too many handshakes in progress.
    #[error("too many pending handshakes")]
    Overloaded,
    /// A retry token was invalid or expired.
    #[error("invalid retry token")]
    BadToken,
}

/// Endpoint counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// The last drop reason.
    pub last_drop: Option<DropReason>,
    /// Retry packets sent.
    pub retries_sent: u64,
    /// Stateless resets sent (for packets to connection ids we do not know).
    pub resets_sent: u64,
    /// Stateless resets not sent because [`RESETS_PER_SECOND`] were sent this second.
    pub resets_limited: u64,
    /// Connections accepted (handshakes started as responder).
    pub accepted: u64,
}

impl EndpointStats {
    /// How many datagrams were dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }
}

/// The endpoint. See the module docs.
pub struct Endpoint {
    config: Arc<TransportConfig>,
    identity: Arc<Identity>,
    accept: bool,
    retry: RetryPolicy,
    max_pending: usize,
    rng: ChaCha20Rng,
    token_key: TokenKey,
    epoch: Option<Instant>,
    conns: BTreeMap<u64, Connection>,
    by_cid: HashMap<u64, u64>,
    by_initial: HashMap<(SocketAddr, u64), u64>,
    next_handle: u64,
    rr: u64,
    stateless: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<(ConnectionHandle, Event)>,
    stats: EndpointStats,
    /// Stateless resets: the current one-second window and how many were sent in it.
    reset_window: Option<(Instant, u32)>,
}

const MAX_STATELESS_QUEUE: usize = 64;
/// Stateless resets sent per second at most, whatever arrives.
pub const RESETS_PER_SECOND: u32 = 32;

impl Endpoint {
    /// A new endpoint.
    pub fn new(config: EndpointConfig) -> Self {
        let mut rng = ChaCha20Rng::from_seed(config.seed);
        let token_key = TokenKey::new(&crypto::seed_from(&mut rng));
        let mut transport = config.transport;
        transport.max_datagram_size = transport.max_datagram_size.max(INITIAL_DATAGRAM_SIZE);
        Self {
            identity: Arc::new(Identity {
                static_pub: crypto::public_key(&config.static_secret),
                static_secret: config.static_secret,
                psk: config.psk,
                allowed: config.allowed_peers,
                reset_key: crypto::ResetKey::new(&config.static_secret, config.reset_scope),
                send_budget: SendBudget::new(config.send_buffer_budget),
            }),
            config: Arc::new(transport),
            accept: config.accept,
            retry: config.retry,
            max_pending: config.max_pending_handshakes,
            rng,
            token_key,
            epoch: None,
            conns: BTreeMap::new(),
            by_cid: HashMap::new(),
            by_initial: HashMap::new(),
            next_handle: 0,
            rr: 0,
            stateless: VecDeque::new(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
            reset_window: None,
        }
    }

    /// This endpoint's device (static) public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.identity.static_pub
    }

    /// Starts a connection to `remote`; the handle reports [`Event::Connected`] or
    /// [`Event::ConnectionLost`].
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> ConnectionHandle {
        let local = self.fresh_cid();
        let initial_dcid = self.rng.next_u64();
        let seed = crypto::seed_from(&mut self.rng);
        let conn = Connection::new_initiator(
            self.config.clone(),
            self.identity.clone(),
            local,
            initial_dcid,
            remote,
            seed,
            now,
        )
        .expect("the Noise pattern and our own keys are valid");
        self.insert(conn)
    }

    /// The connection behind a handle, while it exists.
    pub fn connection(&mut self, h: ConnectionHandle) -> Option<&mut Connection> {
        self.conns.get_mut(&h.0)
    }

    /// The connection behind a handle, read-only.
    pub fn connection_ref(&self, h: ConnectionHandle) -> Option<&Connection> {
        self.conns.get(&h.0)
    }

    /// Handles of the live connections.
    pub fn handles(&self) -> Vec<ConnectionHandle> {
        self.conns.keys().map(|&k| ConnectionHandle(k)).collect()
    }

    /// The transport settings every connection of this endpoint uses.
    pub fn transport_config(&self) -> &TransportConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        self.epoch.get_or_insert(now);
        let (kind, dst) = match packet::parse_prefix(&data) {
            Ok(x) => x,
            Err(e) => {
                tracing::trace!(error = %e, %from, "rdt: dropping datagram");
                return self.drop(DropReason::Malformed);
            }
        };
        if kind == Kind::Reset {
            return self.handle_reset(&data);
        }
        let target = match kind {
            Kind::Initial => self
                .by_initial
                .get(&(from, dst))
                .or_else(|| self.by_cid.get(&dst))
                .copied(),
            _ => self.by_cid.get(&dst).copied(),
        };
        if let Some(h) = target {
            if let Some(c) = self.conns.get_mut(&h) {
                c.handle_datagram(now, from, data);
            }
            self.wake_budget();
            return;
        }
        if kind != Kind::Initial {
            // We may have restarted: tell the peer, with a token only we can make (RFC 9000
            // §10.3): only for a Data packet (never a Reset or a handshake packet), larger than
            // the smallest Data packet (a reset is always smaller than its trigger, so two
            // endpoints cannot loop), only for a cid that an endpoint with our reset key issued
            // (never an oracle for arbitrary cids), and at most RESETS_PER_SECOND.
            if kind == Kind::Data
                && data.len() >= packet::RESET_LEN + 16
                && self.identity.reset_key.issued(dst)
            {
                self.queue_reset(now, from, dst);
            }
            return self.drop(DropReason::UnknownConnection);
        }
        if let Err(reason) = self.accept_initial(now, from, &data) {
            tracing::debug!(%from, %reason, "rdt: refusing handshake");
            self.drop(reason);
        }
    }

    /// Handles expired timers of every connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        for c in self.conns.values_mut() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        self.reap();
        self.wake_budget();
    }

    /// Bytes held in send buffers over all connections (at most
    /// [`EndpointConfig::send_buffer_budget`]).
    pub fn send_buffered(&self) -> u64 {
        self.identity.send_budget.used()
    }

    /// When a write was refused for want of the shared send budget and some is free again, lets
    /// every connection's refused writers try again.
    fn wake_budget(&mut self) {
        if self.identity.send_budget.take_unblocked() {
            for c in self.conns.values_mut() {
                c.on_budget_released();
            }
        }
    }

    /// Writes the next datagram(s) to send into `buf` (at least 1452 bytes; a multiple of the
    /// datagram size lets several go out as one GSO batch).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((to, bytes)) = self.stateless.pop_front() {
            if buf.len() >= bytes.len() {
                buf[..bytes.len()].copy_from_slice(&bytes);
                return Some(Transmit {
                    destination: to,
                    size: bytes.len(),
                    segment_size: None,
                });
            }
        }
        // Round robin, starting after the connection that sent last.
        let rr = self.rr;
        for pass in 0..2 {
            let range = if pass == 0 {
                self.conns.range_mut(rr + 1..)
            } else {
                self.conns.range_mut(..=rr)
            };
            for (&k, c) in range {
                if let Some(t) = c.poll_transmit(now, buf) {
                    self.rr = k;
                    return Some(t);
                }
            }
        }
        self.reap();
        self.wake_budget();
        None
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(Connection::poll_timeout)
            .min()
    }

    /// The next event of any connection.
    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        for (&k, c) in self.conns.iter_mut() {
            if let Some(e) = c.poll_event() {
                return Some((ConnectionHandle(k), e));
            }
        }
        None
    }

    fn drop(&mut self, reason: DropReason) {
        *self.stats.dropped.entry(reason).or_default() += 1;
        self.stats.last_drop = Some(reason);
    }

    fn fresh_cid(&mut self) -> u64 {
        loop {
            let cid = self
                .identity
                .reset_key
                .issue_cid(conn::random_cid(&mut self.rng));
            if !self.by_cid.contains_key(&cid) {
                return cid;
            }
        }
    }

    fn insert(&mut self, conn: Connection) -> ConnectionHandle {
        let h = self.next_handle;
        self.next_handle += 1;
        self.by_cid.insert(conn.local_cid(), h);
        self.conns.insert(h, conn);
        ConnectionHandle(h)
    }

    /// Removes drained connections, keeping their last events.
    fn reap(&mut self) {
        if !self.conns.values().any(Connection::is_drained) {
            return;
        }
        let dead: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_drained())
            .map(|(&k, _)| k)
            .collect();
        for k in dead {
            let mut c = self.conns.remove(&k).expect("key from the map");
            while let Some(e) = c.poll_event() {
                self.events.push_back((ConnectionHandle(k), e));
            }
            self.by_cid.remove(&c.local_cid());
            if c.side() == crate::rdt::Side::Responder {
                self.by_initial.retain(|_, v| *v != k);
            }
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        self.epoch
            .map_or(0, |e| now.saturating_duration_since(e).as_millis() as u64)
    }

    fn accept_initial(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), DropReason> {
        if !self.accept {
            return Err(DropReason::NotAccepting);
        }
        if data.len() < usize::from(INITIAL_DATAGRAM_SIZE) {
            return Err(DropReason::InitialTooSmall);
        }
        let p = packet::parse_long(data).map_err(|_| DropReason::Malformed)?;
        let pending = self.conns.values().filter(|c| c.is_handshaking()).count();
        let validated = if p.token.is_empty() {
            let want_retry = match self.retry {
                RetryPolicy::Never => false,
                RetryPolicy::Always => true,
                RetryPolicy::WhenPendingAbove(n) => pending > n,
            };
            if want_retry {
                self.send_retry(now, from, p.src, p.dst);
                return Ok(());
            }
            false
        } else {
            match self
                .token_key
                .check(p.token, from, p.src, p.dst, self.now_ms(now))
            {
                TokenCheck::Valid => true,
                TokenCheck::Expired => {
                    self.send_retry(now, from, p.src, p.dst);
                    return Ok(());
                }
                TokenCheck::Invalid => return Err(DropReason::BadToken),
            }
        };
        if pending >= self.max_pending {
            return Err(DropReason::Overloaded);
        }
        // The PSK check: hashing and one AEAD open, no Diffie-Hellman.
        let seed = crypto::seed_from(&mut self.rng);
        let id = &self.identity;
        let mut noise =
            crypto::build_handshake(false, &id.static_secret, &id.static_pub, &id.psk, seed)
                .map_err(|_| DropReason::HandshakeAuth)?;
        let mut payload = [0u8; packet::MAX_NOISE_LEN];
        let n = noise
            .read_message(p.payload, &mut payload)
            .map_err(|_| DropReason::HandshakeAuth)?;
        let peer = Params::decode(&payload[..n]).ok_or(DropReason::BadParams)?;
        let local = self.fresh_cid();
        let conn = Connection::new_responder(
            self.config.clone(),
            self.identity.clone(),
            noise,
            seed,
            p.payload,
            peer,
            local,
            peer.cid,
            p.dst,
            from,
            data.len() as u64,
            validated,
            now,
        )
        .map_err(|_| DropReason::HandshakeAuth)?;
        let h = self.insert(conn);
        self.by_initial.insert((from, p.dst), h.0);
        self.stats.accepted += 1;
        Ok(())
    }

    fn queue_reset(&mut self, now: Instant, to: SocketAddr, cid: u64) {
        if self.stateless.len() >= MAX_STATELESS_QUEUE {
            return;
        }
        let (start, sent) = self.reset_window.get_or_insert((now, 0));
        if now.saturating_duration_since(*start) >= std::time::Duration::from_secs(1) {
            (*start, *sent) = (now, 0);
        }
        if *sent >= RESETS_PER_SECOND {
            self.stats.resets_limited += 1;
            return;
        }
        *sent += 1;
        let mut buf = vec![0u8; packet::RESET_LEN];
        packet::write_reset(&mut buf, &self.identity.reset_key.token(cid));
        self.stats.resets_sent += 1;
        self.stateless.push_back((to, buf));
    }

    fn handle_reset(&mut self, data: &[u8]) {
        let Some(token) = data.get(9..packet::RESET_LEN) else {
            return self.drop(DropReason::Malformed);
        };
        match self.conns.values_mut().find(|c| c.is_reset_token(token)) {
            Some(c) => c.handle_reset(),
            None => self.drop(DropReason::UnknownConnection),
        }
        self.reap();
    }

    fn send_retry(&mut self, now: Instant, to: SocketAddr, client_cid: u64, odcid: u64) {
        if self.stateless.len() >= MAX_STATELESS_QUEUE {
            return self.drop(DropReason::Overloaded);
        }
        let token = self
            .token_key
            .issue(to, client_cid, odcid, self.now_ms(now));
        let mut buf = vec![0u8; 128];
        let n = packet::write_long(&mut buf, Kind::Retry, client_cid, odcid, &token, &[])
            .expect("buffer fits a retry");
        let tag = crypto::retry_tag(&self.identity.psk, &buf[..n]);
        buf[n..n + packet::TAG_LEN].copy_from_slice(&tag);
        buf.truncate(n + packet::TAG_LEN);
        self.stats.retries_sent += 1;
        self.stateless.push_back((to, buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The source connection id and the ephemeral X25519 key of an endpoint's first Initial
    /// (`b0 | dst cid 8 | src cid 8 | token len 1 (0) | msg len 2 | e 32 | ...`).
    fn first_initial(config: EndpointConfig) -> ([u8; 8], [u8; 32]) {
        let mut ep = Endpoint::new(config);
        let now = Instant::now();
        ep.connect(now, SocketAddr::from(([127, 0, 0, 1], 9)));
        let mut buf = vec![0u8; 64 * 1024];
        let _initial = ep.poll_transmit(now, &mut buf).expect("an Initial");
        assert_eq!(buf[0] & 0x0f, Kind::Initial as u8);
        assert_eq!(buf[17], 0, "no token");
        (
            buf[9..17].try_into().unwrap(),
            buf[20..52].try_into().unwrap(),
        )
    }

    /// Issue 10 item 8: production endpoints draw 32 bytes from the OS RNG, so two of them share
    /// no connection id or ephemeral key (before the fix the seed was a `u64`: 2^64 streams in all);
    /// a test seed replays exactly.
    #[test]
    fn production_seeds_differ_and_test_seeds_replay() {
        let (secret, psk) = ([3u8; 32], [4u8; 32]);
        let production = || EndpointConfig::with_seed(secret, psk, crate::net::os_seed());
        let a = first_initial(production());
        let b = first_initial(production());
        assert_ne!(
            a.0, b.0,
            "two production endpoints chose the same connection id"
        );
        assert_ne!(
            a.1, b.1,
            "two production endpoints chose the same ephemeral key"
        );
        assert_eq!(
            first_initial(EndpointConfig::new(secret, psk, 77)),
            first_initial(EndpointConfig::new(secret, psk, 77)),
            "a seeded endpoint does not replay"
        );
        // All 256 bits of the seed count: seeds that agree in their first 64 bits differ.
        let mut s1 = [9u8; 32];
        let s2 = s1;
        s1[31] ^= 1;
        let (c1, c2) = (
            first_initial(EndpointConfig::with_seed(secret, psk, s1)),
            first_initial(EndpointConfig::with_seed(secret, psk, s2)),
        );
        assert_ne!(c1.0, c2.0);
        assert_ne!(c1.1, c2.1);
    }
}

#[cfg(test)]
mod reset_tests {
    use super::*;

    const SECRET: [u8; 32] = [5; 32];
    const PSK: [u8; 32] = [6; 32];

    fn data_packet(cid: u64, len: usize) -> BytesMut {
        let mut p = vec![0x5a_u8; len];
        p[0] = packet::first_byte(Kind::Data);
        p[1..9].copy_from_slice(&cid.to_be_bytes());
        BytesMut::from(&p[..])
    }

    /// Every Reset an endpoint sends now, with its size.
    fn resets(ep: &mut Endpoint, now: Instant) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        while let Some(t) = ep.poll_transmit(now, &mut buf) {
            assert_eq!(buf[0] & 0x0f, Kind::Reset as u8, "only resets");
            out.push(buf[..t.size].to_vec());
        }
        out
    }

    /// The connection id an endpoint issued for its first connection (its Initial's src cid).
    fn issued_cid(ep: &mut Endpoint, now: Instant) -> u64 {
        ep.connect(now, SocketAddr::from(([127, 0, 0, 1], 9)));
        let mut buf = vec![0u8; 64 * 1024];
        let _initial = ep.poll_transmit(now, &mut buf).expect("an Initial");
        u64::from_be_bytes(buf[9..17].try_into().unwrap())
    }

    /// Issue 10 item 10 (RFC 9000 §10.3, §21.11): a stateless reset only for a cid an endpoint
    /// with our reset key issued, only in our scope, only for a Data packet larger than the
    /// reset, and rate-limited. Before the fix any cid got its valid token, as often as asked.
    #[test]
    fn stateless_resets_are_no_oracle() {
        let now = Instant::now();
        let from = SocketAddr::from(([127, 0, 0, 2], 4000));
        let mut first = Endpoint::new(EndpointConfig::new(SECRET, PSK, 1));
        let ours = issued_cid(&mut first, now);
        // The same device restarted (other seed, same scope): a packet of the old connection
        // gets one reset, smaller than it, with the token the old connection advertised.
        let mut restarted = Endpoint::new(EndpointConfig::new(SECRET, PSK, 2));
        restarted.handle_datagram(now, from, data_packet(ours, 100));
        let r = resets(&mut restarted, now);
        assert_eq!(
            r.len(),
            1,
            "a restarted endpoint resets its old connections"
        );
        assert!(r[0].len() < 100);
        assert_eq!(r[0][9..], crypto::ResetKey::new(&SECRET, 0).token(ours));
        // A cid nobody issued: no reset, so no token for it (before: its valid token).
        for arbitrary in [0x1111_2222_3333_4444_u64, ours ^ 1, ours ^ (1 << 63)] {
            restarted.handle_datagram(now, from, data_packet(arbitrary, 100));
            assert!(
                resets(&mut restarted, now).is_empty(),
                "a reset for {arbitrary:#x}"
            );
        }
        // Another endpoint of the same device (another scope: serve vs sync) gives nothing.
        let mut cfg = EndpointConfig::new(SECRET, PSK, 3);
        cfg.reset_scope = 4001;
        let mut other = Endpoint::new(cfg);
        other.handle_datagram(now, from, data_packet(ours, 100));
        assert!(resets(&mut other, now).is_empty(), "another scope answered");
        // A packet too small to be more than a reset, or a Reset itself: no answer.
        restarted.handle_datagram(now, from, data_packet(ours, packet::RESET_LEN + 15));
        let mut reset = data_packet(ours, packet::RESET_LEN);
        reset[0] = packet::first_byte(Kind::Reset);
        restarted.handle_datagram(now, from, reset);
        assert!(resets(&mut restarted, now).is_empty());
        // A flood gets at most RESETS_PER_SECOND a second.
        let mut sent = 0;
        for _ in 0..1000 {
            restarted.handle_datagram(now, from, data_packet(ours, 100));
            sent += resets(&mut restarted, now).len();
        }
        assert_eq!(
            sent as u32,
            RESETS_PER_SECOND - 1,
            "one was sent this second already"
        );
        let later = now + std::time::Duration::from_secs(1);
        restarted.handle_datagram(later, from, data_packet(ours, 100));
        assert_eq!(
            resets(&mut restarted, later).len(),
            1,
            "the next second allows more"
        );
    }
}
