//! What the peer's frames do to [`Streams`]: STREAM data into the receive buffers (opening a
//! new peer stream within MAX_STREAMS), RESET_STREAM, and the credit it grants us (MAX_DATA,
//! MAX_STREAM_DATA, MAX_STREAMS); and the receive-side limits we advertise. Each check that the
//! peer broke the protocol returns a [`Violation`].
//!
//! What this is not: reading by the application (`Streams::read`, in `stream.rs`); what goes
//! into our packets and what their acknowledgement or loss means (`send.rs`).

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Stream, StreamId, Streams, Violation};
use crate::rdt::Event;

impl Streams {
    /// Looks up (or, for a valid new peer stream, creates) the stream a frame refers to.
    fn remote_get(
        &mut self,
        id: u64,
        events: &mut VecDeque<Event>,
    ) -> Result<Option<&mut Stream>, Violation> {
        if !self.map.contains_key(&id) {
            if id != 0 && id < 4 {
                // Stream 0 is the only stream with n = 0.
                return Err(Violation::BadStream);
            }
            if self.is_local(id) {
                return if id >> 2 < self.next_local {
                    Ok(None)
                } else {
                    Err(Violation::BadStream)
                };
            }
            let n = id >> 2;
            if self.remote_closed.contains(n) {
                return Ok(None);
            }
            if n > self.local_max_streams {
                return Err(Violation::StreamLimit);
            }
            self.insert(id);
            events.push_back(Event::StreamOpened { id: StreamId(id) });
        }
        Ok(self.map.get_mut(&id))
    }

    /// Whether the stream is still held (opened and not yet released).
    pub fn contains(&self, id: StreamId) -> bool {
        self.map.contains_key(&id.0)
    }

    /// Handles a received STREAM frame.
    pub fn on_stream_frame(
        &mut self,
        id: u64,
        offset: u64,
        fin: bool,
        data: Bytes,
        events: &mut VecDeque<Event>,
    ) -> Result<(), Violation> {
        let recv_limit = self.recv_max_data;
        let mut total = self.recv_highest_total;
        let mut added = 0;
        let Some(st) = self.remote_get(id, events)? else {
            return Ok(());
        };
        let r = &mut st.recv;
        let end = offset + data.len() as u64;
        if end > r.max_data {
            return Err(Violation::FlowControl);
        }
        if let Some(f) = r.final_size {
            if end > f || (fin && end != f) {
                return Err(Violation::FinalSize);
            }
        } else if fin {
            if end < r.highest {
                return Err(Violation::FinalSize);
            }
            r.final_size = Some(end);
        }
        if end > r.highest {
            total += end - r.highest;
            if total > recv_limit {
                return Err(Violation::FlowControl);
            }
            r.highest = end;
        }
        if r.reset.is_none() {
            // Store only the parts not yet received, so segments never overlap.
            let mut pos = offset.max(r.read_offset);
            while let Some(gap) = r.received.first_gap(pos..end) {
                let piece = data.slice((gap.start - offset) as usize..(gap.end - offset) as usize);
                r.segments.insert(gap.start, piece);
                r.received.insert(gap.clone());
                added += 1;
                pos = gap.end;
            }
            let readable = r
                .segments
                .first_key_value()
                .is_some_and(|(&k, _)| k == r.read_offset)
                || r.final_size == Some(r.read_offset);
            if readable && !r.notified {
                r.notified = true;
                events.push_back(Event::StreamReadable { id: StreamId(id) });
            }
        }
        self.recv_highest_total = total;
        self.segments_total += added;
        if self.segments_total > self.max_segments {
            return Err(Violation::Fragments);
        }
        Ok(())
    }

    /// Handles RESET_STREAM.
    pub fn on_reset(
        &mut self,
        id: u64,
        code: u64,
        final_size: u64,
        events: &mut VecDeque<Event>,
    ) -> Result<(), Violation> {
        let limit = self.recv_max_data;
        let mut total = self.recv_highest_total;
        let mut dropped = 0;
        let Some(st) = self.remote_get(id, events)? else {
            return Ok(());
        };
        let r = &mut st.recv;
        if r.final_size.is_some_and(|f| f != final_size)
            || final_size < r.highest
            || final_size > r.max_data
        {
            return Err(Violation::FinalSize);
        }
        total += final_size - r.highest;
        if total > limit {
            return Err(Violation::FlowControl);
        }
        r.highest = final_size;
        r.final_size = Some(final_size);
        if r.reset.is_none() {
            r.reset = Some(code);
            r.done = true;
            let unread = final_size - r.read_offset;
            dropped = r.segments.len();
            r.segments.clear();
            events.push_back(Event::StreamReset {
                id: StreamId(id),
                code,
            });
            self.read_total += unread;
        }
        self.recv_highest_total = total;
        self.segments_total -= dropped;
        self.maybe_remove(id);
        Ok(())
    }

    /// Handles MAX_STREAM_DATA.
    pub fn on_max_stream_data(
        &mut self,
        id: u64,
        max: u64,
        events: &mut VecDeque<Event>,
    ) -> Result<(), Violation> {
        let Some(st) = self.remote_get(id, events)? else {
            return Ok(());
        };
        if max > st.send.max_data {
            st.send.max_data = max;
            if st.send.blocked {
                st.send.blocked = false;
                events.push_back(Event::StreamWritable { id: StreamId(id) });
            }
        }
        Ok(())
    }

    /// Handles MAX_DATA.
    pub fn on_max_data(&mut self, max: u64, events: &mut VecDeque<Event>) {
        if max > self.send_max_data {
            self.send_max_data = max;
            for (&id, st) in self.map.iter_mut() {
                if st.send.blocked {
                    st.send.blocked = false;
                    events.push_back(Event::StreamWritable { id: StreamId(id) });
                }
            }
        }
    }

    /// Handles MAX_STREAMS.
    pub fn on_max_streams(&mut self, max: u64, events: &mut VecDeque<Event>) {
        if max > self.peer_max_streams {
            self.peer_max_streams = max;
            if self.open_blocked {
                self.open_blocked = false;
                events.push_back(Event::StreamsAvailable);
            }
        }
    }

    /// The cumulative stream limit we grant the peer.
    pub fn local_max_streams(&self) -> u64 {
        self.local_max_streams
    }

    /// The connection-level credit we grant the peer.
    pub fn recv_max_data(&self) -> u64 {
        self.recv_max_data
    }
}
