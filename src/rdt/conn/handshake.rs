//! The connection's side of the Noise XXpsk0 handshake: building the first message (initiator)
//! or answering one (responder), reading messages 2 and 3, honouring a Retry token, turning
//! Noise's split into the two packet keys ([`PacketKey`]), resending handshake messages on a
//! backed-off timer, the 3x anti-amplification limit before the initiator's address is
//! validated, and rebuilding the Noise state after a failed read.
//!
//! What this is not: the Noise pattern and the AEADs (`crypto.rs`); the stateless checks an
//! endpoint makes before any connection exists (PSK check of message 1, retry tokens, routing:
//! `endpoint.rs`); the parameters' encoding (`params.rs`). There are no key phases: a connection
//! keeps the keys of its handshake for life (no key update, see the crate docs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use core::net::SocketAddr;

use super::params::Params;
use super::recovery::MAX_PTO_PERIOD;
use super::{Connection, Identity, Side, State};
use crate::rdt::crypto::{self, CipherSuite, PacketKey};
use crate::rdt::packet::{self, Kind};
use crate::rdt::stream::Streams;
use crate::rdt::{
    ConnectionError, Event, TransportConfig, CODE_KEY_REFUSED, INITIAL_DATAGRAM_SIZE,
};

/// Handshake state kept until the handshake is confirmed.
pub(super) struct Handshake {
    pub(super) noise: Option<snow::HandshakeState>,
    /// Seed of the handshake's ephemeral key, to rebuild the state after a failed read.
    pub(super) seed: [u8; 32],
    /// Our parameters payload, and (responder) the initiator's first message, for the rebuild.
    pub(super) our_payload: Vec<u8>,
    pub(super) peer_msg1: Vec<u8>,
    /// The last handshake message we sent, resent on loss.
    pub(super) msg: Vec<u8>,
    pub(super) token: Vec<u8>,
    pub(super) send_pending: bool,
    pub(super) timer: Option<Instant>,
    pub(super) backoff: u32,
    pub(super) first_sent: Option<Instant>,
    pub(super) retransmitted: bool,
    pub(super) deadline: Instant,
    pub(super) recv_bytes: u64,
    pub(super) sent_bytes: u64,
    pub(super) validated: bool,
}

impl Connection {
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

    pub(super) fn handle_retry(&mut self, data: &[u8]) {
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

    pub(super) fn handle_handshake(&mut self, now: Instant, data: &[u8]) {
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

    pub(super) fn write_handshake(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
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

    /// The handshake retransmission timer: resend our last message, backing off.
    pub(super) fn on_handshake_timer(&mut self, now: Instant) {
        if let Some(hs) = self.hs.as_mut() {
            if hs.timer.is_some_and(|t| now >= t) {
                hs.send_pending = true;
                hs.retransmitted = true;
                hs.backoff = (hs.backoff + 1).min(6);
                hs.timer = None;
                self.stats.handshake_retransmits += 1;
            }
        }
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
