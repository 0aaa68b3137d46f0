//! What goes into our packets from [`Streams`] (pending control frames, STREAM frames from the
//! send buffers and the retransmission set) and what follows when a packet is acknowledged or
//! lost: acknowledged ranges free the send buffer, lost ones are queued again, lost credit and
//! resets are re-sent.
//!
//! What this is not: writing by the application (`Streams::write`, in `stream.rs`); deciding
//! that a packet was lost (`conn/recovery.rs`); the frame encodings (`frame.rs`).

use std::collections::VecDeque;

use super::{StreamId, StreamMeta, Streams};
use crate::rdt::frame::{self, Writer};
use crate::rdt::Event;

impl Streams {
    /// A STREAM frame was acknowledged.
    pub fn on_frame_acked(&mut self, m: &StreamMeta, events: &mut VecDeque<Event>) {
        let Some(st) = self.map.get_mut(&m.id) else {
            return;
        };
        let s = &mut st.send;
        if s.reset.is_some() {
            return;
        }
        let freed = s.on_ack(m.offset..m.offset + m.len);
        if m.fin {
            s.fin_acked = true;
            s.fin_lost = false;
        }
        let done = s.is_done();
        self.release(freed, events);
        if done {
            events.push_back(Event::StreamFinished { id: StreamId(m.id) });
            self.maybe_remove(m.id);
        }
    }

    /// A STREAM frame was lost: queue its unacknowledged bytes again.
    pub fn on_frame_lost(&mut self, m: &StreamMeta) {
        let Some(st) = self.map.get_mut(&m.id) else {
            return;
        };
        let s = &mut st.send;
        if s.reset.is_some() {
            return;
        }
        let start = m.offset.max(s.acked_below);
        let end = m.offset + m.len;
        // Queue only the parts not acknowledged since (a later copy may have arrived).
        let mut pos = start;
        while let Some(gap) = s.acked.first_gap(pos..end) {
            s.retransmit.insert(gap.clone());
            pos = gap.end;
        }
        if m.fin && !s.fin_acked {
            s.fin_lost = true;
        }
        if s.has_pending() && !s.queued {
            s.queued = true;
            self.send_queue.push_back(m.id);
        }
    }

    /// A RESET_STREAM was acknowledged or lost.
    pub fn on_reset_result(&mut self, id: u64, acked: bool) {
        let Some(st) = self.map.get_mut(&id) else {
            return;
        };
        if acked {
            st.send.reset_acked = true;
            self.maybe_remove(id);
        } else if !st.send.reset_pending {
            st.send.reset_pending = true;
            self.reset_queue.push_back(id);
        }
    }

    /// A MAX_STREAM_DATA frame was lost: send the current value again.
    pub fn on_credit_lost(&mut self, id: u64) {
        if let Some(st) = self.map.get_mut(&id) {
            if !st.recv.credit_pending && st.recv.final_size.is_none() {
                st.recv.credit_pending = true;
                self.credit_queue.push_back(id);
            }
        }
    }

    /// Whether any stream has data, fin, resets or credit to send.
    pub fn has_pending(&self) -> bool {
        !self.send_queue.is_empty() || !self.credit_queue.is_empty() || !self.reset_queue.is_empty()
    }

    /// Writes pending RESET_STREAM and MAX_STREAM_DATA frames that fit; records them in `resets`
    /// and `credits`.
    pub fn write_control(
        &mut self,
        w: &mut Writer<'_>,
        resets: &mut Vec<u64>,
        credits: &mut Vec<u64>,
    ) {
        while let Some(&id) = self.reset_queue.front() {
            let Some(st) = self.map.get_mut(&id) else {
                self.reset_queue.pop_front();
                continue;
            };
            let code = st.send.reset.unwrap_or(0);
            let need = 1 + 8 + 8 + 8;
            if w.remaining() < need {
                return;
            }
            w.u8(frame::ty::RESET_STREAM);
            w.varint(id);
            w.varint(code);
            w.varint(st.send.write_offset);
            st.send.reset_pending = false;
            resets.push(id);
            self.reset_queue.pop_front();
        }
        while let Some(&id) = self.credit_queue.front() {
            let Some(st) = self.map.get_mut(&id) else {
                self.credit_queue.pop_front();
                continue;
            };
            if w.remaining() < 1 + 8 + 8 {
                return;
            }
            w.u8(frame::ty::MAX_STREAM_DATA);
            w.varint(id);
            w.varint(st.recv.max_data);
            st.recv.credit_pending = false;
            credits.push(id);
            self.credit_queue.pop_front();
        }
    }

    /// Writes one STREAM frame (retransmissions first) if any stream has something and it fits.
    pub fn write_stream_frame(&mut self, w: &mut Writer<'_>) -> Option<StreamMeta> {
        while let Some(id) = self.send_queue.pop_front() {
            let Some(st) = self.map.get_mut(&id) else {
                continue;
            };
            let s = &mut st.send;
            s.queued = false;
            if !s.has_pending() {
                continue;
            }
            let space = w.remaining();
            // Choose the range: a retransmission, else new data.
            let (offset, avail, is_new) = if let Some(r) = s.retransmit.first() {
                (r.start, r.end - r.start, false)
            } else {
                (s.sent_offset, s.write_offset - s.sent_offset, true)
            };
            let hdr = frame::stream_header_len(id, offset, avail.min(space as u64));
            if space < hdr + usize::from(avail > 0) {
                // Does not fit; keep it queued for the next packet.
                s.queued = true;
                self.send_queue.push_front(id);
                return None;
            }
            let len = avail.min((space - hdr) as u64);
            let end = offset + len;
            let fin = s.fin && end == s.write_offset && (is_new || s.fin_lost || !s.fin_sent);
            frame::write_stream_header(w, id, offset, len, fin);
            let pos = w.pos;
            s.copy(offset..end, &mut w.buf[pos..pos + len as usize]);
            w.pos += len as usize;
            if is_new {
                s.sent_offset = end;
            } else {
                s.retransmit.remove(offset..end);
            }
            if fin {
                s.fin_sent = true;
                s.fin_lost = false;
            }
            if s.has_pending() {
                s.queued = true;
                self.send_queue.push_back(id);
            }
            return Some(StreamMeta {
                id,
                offset,
                len,
                fin,
            });
        }
        None
    }

    /// Bytes of stream data written but not yet acknowledged, over all streams.
    pub fn unacked_bytes(&self) -> u64 {
        self.map
            .values()
            .map(|s| s.send.write_offset - s.send.acked_below)
            .sum()
    }
}
