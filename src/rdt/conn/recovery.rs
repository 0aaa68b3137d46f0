//! Loss recovery and acknowledgements (RFC 9002), from the connection's side: the record of
//! sent packets and what each carried ([`SentPacket`], [`Retx`]), ACK processing with RTT
//! samples, loss detection, the probe timeout, persistent congestion, when an ACK is due, and
//! the congestion-window and pacing gate for ack-eliciting packets.
//!
//! A packet is lost when a packet sent 3 or more packet numbers later is acknowledged, or when it
//! is older than 9/8 of the RTT and something sent later was acknowledged; when nothing is
//! acknowledged for a probe timeout (PTO, doubled on each expiry) the sender sends up to two
//! probe packets, which may exceed the congestion window. Lost *frames* are requeued (stream
//! ranges, credit updates, resets), never whole packets.
//!
//! Acknowledgements are sent after `ack_frequency` ack-eliciting packets, immediately when a
//! packet arrives out of order, or after `max_ack_delay`; they are written when the driver next
//! polls, so one ACK covers a whole received batch.
//!
//! What this is not: the congestion controllers (`congestion/`), the RTT estimator (`rtt.rs`)
//! and the pacer (`pacing.rs`), which this only feeds; writing the ACK frame and the packets
//! (`mod.rs`, `frame.rs`); what a lost or acknowledged MTU probe means for the datagram size
//! (`path.rs`).

use std::time::{Duration, Instant};

use super::Connection;
use crate::rdt::frame;
use crate::rdt::stream::StreamMeta;
use crate::rdt::INITIAL_DATAGRAM_SIZE;

/// Retransmittable content of a sent packet.
#[derive(Debug, Clone, Copy)]
pub(super) enum Retx {
    Stream(StreamMeta),
    MaxData,
    MaxStreams,
    Credit(u64),
    Reset(u64),
    HandshakeDone,
}

#[derive(Debug)]
pub(super) struct SentPacket {
    pub(super) time: Instant,
    pub(super) size: u16,
    pub(super) ack_eliciting: bool,
    pub(super) mtu_probe: bool,
    pub(super) retx: Vec<Retx>,
}

/// Longest probe timeout after backoff (unless one base PTO is longer).
pub(super) const MAX_PTO_PERIOD: Duration = Duration::from_secs(4);

impl Connection {
    pub(super) fn pto_base(&self) -> Duration {
        self.rtt.pto_base()
            + self
                .peer_params
                .map_or(self.config.max_ack_delay, |p| p.max_ack_delay)
    }

    pub(super) fn pto_deadline(&self) -> Option<Instant> {
        if self.eliciting_in_flight == 0 {
            return None;
        }
        let base = self.pto_base();
        let backoff = 1u32 << self.pto_count.min(16);
        // Exponential backoff, capped so a long run of losses cannot stall the path for minutes.
        let period = (base * backoff).min(base.max(MAX_PTO_PERIOD));
        Some(self.last_eliciting_sent? + period)
    }

    /// The acknowledgement, loss and probe timers: send a due ACK, declare packets lost, or
    /// after a probe timeout arm two probes carrying the oldest unacknowledged data.
    pub(super) fn on_recovery_timeout(&mut self, now: Instant) {
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
    }

    pub(super) fn on_ack(
        &mut self,
        now: Instant,
        ack: frame::AckFrame<'_>,
    ) -> Result<(), &'static str> {
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
            self.mtud.on_probe_acked(now, p.size);
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

    fn on_packet_lost(&mut self, now: Instant, mut p: SentPacket) {
        self.stats.lost_packets += 1;
        if p.ack_eliciting {
            self.in_flight -= u64::from(p.size);
            self.eliciting_in_flight -= 1;
        }
        if p.mtu_probe {
            self.mtud.on_probe_lost(now, p.size);
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
    pub(super) fn requeue_oldest(&mut self) {
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

    pub(super) fn trim_sent(&mut self) {
        while let Some(None) = self.sent.front() {
            self.sent.pop_front();
            self.sent_base += 1;
        }
    }

    pub(super) fn ack_due(&self, now: Instant) -> bool {
        self.ack_pending
            && (self.ack_now
                || self.ack_eliciting_since_ack >= self.config.ack_frequency
                || self.ack_deadline.is_some_and(|t| now >= t))
    }

    /// Whether congestion control and pacing allow an ack-eliciting packet of `size` now.
    pub(super) fn can_send_eliciting(&mut self, now: Instant, size: u64) -> bool {
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
}
