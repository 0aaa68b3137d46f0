//! The network path, from the connection's side: path-MTU discovery (a binary search from 1200
//! bytes up to `max_datagram_size` with padded probes, and the fall back to 1200 after a black
//! hole) and path validation (RFC 9000 section 8.2): an authenticated packet from a new peer
//! address gets a PATH_CHALLENGE there, at most [`PATH_AMPLIFICATION`](crate::rdt::PATH_AMPLIFICATION)
//! times the bytes received from it and [`PATH_CHALLENGES`](crate::rdt::PATH_CHALLENGES) times,
//! and the connection moves only when the matching PATH_RESPONSE comes back.
//!
//! What this is not: active migration (we never change our own address); congestion or RTT state
//! per path (a new path keeps the old one's, which suits a NAT rebinding); loss detection itself
//! (`recovery.rs` tells this file when a probe or full-size packet was acknowledged or lost).

use std::time::{Duration, Instant};

use core::net::SocketAddr;
use rand::RngCore;

use super::Connection;
use crate::rdt::crypto;
use crate::rdt::frame::{self, Writer};
use crate::rdt::packet::{self, DATA_HEADER_LEN, TAG_LEN};
use crate::rdt::{Transmit, INITIAL_DATAGRAM_SIZE};

/// Path MTU discovery state (a binary search between the current and the maximum size).
#[derive(Debug)]
pub(super) struct Mtud {
    pub(super) current: u16,
    pub(super) max: u16,
    pub(super) lo: u16,
    pub(super) hi: u16,
    pub(super) probe: Option<(u64, u16)>,
    pub(super) fails: u8,
    pub(super) next_probe: Option<Instant>,
    pub(super) black_hole_losses: u32,
}

/// A new peer address being validated (RFC 9000 section 8.2): until `challenge` comes back in a
/// PATH_RESPONSE, only challenges go there, at most `PATH_AMPLIFICATION` x `recv_bytes`.
#[derive(Debug)]
pub(super) struct PathCheck {
    pub(super) addr: SocketAddr,
    pub(super) challenge: [u8; 8],
    /// Bytes of authenticated datagrams received from `addr`, and bytes we sent there.
    pub(super) recv_bytes: u64,
    pub(super) sent_bytes: u64,
    pub(super) sends: u32,
    pub(super) send_pending: bool,
    /// When to send the challenge again (or give up after the last one).
    pub(super) timer: Option<Instant>,
}

/// Size of a datagram that carries only a PATH_CHALLENGE.
const CHALLENGE_PACKET_LEN: usize = DATA_HEADER_LEN + 9 + TAG_LEN;

const MTU_SEARCH_DONE_GAP: u16 = 20;
const BLACK_HOLE_THRESHOLD: u32 = 5;

impl Mtud {
    pub(super) fn new(max: u16) -> Self {
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

    pub(super) fn candidate(&self) -> Option<u16> {
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

    pub(super) fn due(&self, now: Instant) -> Option<u16> {
        if self.probe.is_some() || self.next_probe.is_none_or(|t| t > now) {
            return None;
        }
        self.candidate()
    }

    /// The probe of `size` bytes was acknowledged: the path carries it, search above it.
    pub(super) fn on_probe_acked(&mut self, now: Instant, size: u16) {
        self.probe = None;
        self.lo = size;
        self.fails = 0;
        self.current = size;
        self.next_probe = Some(now);
    }

    /// The probe of `size` bytes was lost (not congestion): after 3 losses in a row, search
    /// below it.
    pub(super) fn on_probe_lost(&mut self, now: Instant, size: u16) {
        self.probe = None;
        self.fails += 1;
        if self.fails >= 3 {
            self.hi = size;
            self.fails = 0;
        }
        self.next_probe = Some(now);
    }
}

impl Connection {
    /// Path validation for an authenticated datagram of `len` bytes from `from` (`newest`: it
    /// carried the highest packet number yet). A new address is challenged, never followed at
    /// once: an attacker who races a captured packet from a spoofed address gets only challenges
    /// sent there, at most `PATH_AMPLIFICATION` times what it sent.
    pub(super) fn on_packet_from(&mut self, from: SocketAddr, len: u64, newest: bool) {
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
    pub(super) fn on_path_response(&mut self, data: [u8; 8]) {
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
    pub(super) fn write_challenge(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
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

    /// The path-challenge timer: challenge the new address again, or give up on it after
    /// [`PATH_CHALLENGES`](crate::rdt::PATH_CHALLENGES) challenges.
    pub(super) fn on_path_timer(&mut self, now: Instant) {
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
    }

    /// One loss-detection pass declared full-size packets lost. A burst of losses counts once
    /// (a congestion drop on a bulk transfer loses many full-size packets at once, and is no
    /// sign of a black hole); only [`BLACK_HOLE_THRESHOLD`] such passes in a row, with no
    /// full-size packet acknowledged in between, fall back to 1200 bytes.
    pub(super) fn on_large_loss(&mut self, now: Instant) {
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
}
