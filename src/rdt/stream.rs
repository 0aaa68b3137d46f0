//! Streams: ordered byte streams with per-stream and per-connection flow control.
//!
//! Stream ids are `4 n + 2 u + s` where `s` is the opener's side (0 initiator, 1 responder), `u` is 1
//! for a unidirectional stream (only the opener sends) and `n` counts that side's streams from 1;
//! stream 0 is the bidirectional control stream, open on both sides from the start. A side may open
//! only as many streams as the peer's cumulative MAX_STREAMS allows, and the peer raises it as
//! streams close, so the number of live streams is bounded by configuration.
//!
//! A stream is closed, forgotten and its slot returned to the peer when both directions are done:
//! ours finished and acknowledged (or reset), theirs read to the end (or reset). So the receiver
//! of a *bidirectional* stream must also finish (or reset) its own direction, even if it never
//! writes, to release it; one-way payloads should use unidirectional streams, which need nothing
//! from the receiver.
//!
//! Send side: written bytes are kept (as `Bytes` chunks, no copy) until acknowledged; lost ranges go
//! to a retransmission set and are re-sent as new frames, possibly split differently.
//! Receive side: out-of-order segments wait in a map keyed by offset, non-overlapping, until the gap
//! before them fills. The peer may send only up to the offsets we advertised, and the sum of those
//! is capped by the connection window, so buffered bytes never exceed the configured windows.
//!
//! Send memory is bounded by *our* settings, never by the peer's: whatever credit the peer grants
//! (a peer may grant 2^62 bytes and never acknowledge), a connection buffers at most its own
//! connection window of unacknowledged bytes, and all connections of an endpoint together at most
//! the endpoint's [`SendBudget`].
//!
//! This file holds the stream types and the application's side (open, write, finish, reset,
//! read); `stream/recv.rs` what the peer's frames do, `stream/send.rs` what goes into our packets
//! and what their acknowledgement or loss does.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::rdt::range_set::RangeSet;
use crate::rdt::Event;

mod recv;
mod send;

/// A stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The ordered control stream, open from the start on both sides.
    pub const CONTROL: StreamId = StreamId(0);

    /// Whether only the opener sends on this stream.
    pub fn is_unidirectional(self) -> bool {
        self.0 & 2 != 0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {}", self.0)
    }
}

/// Errors from stream operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// No such stream (never opened, or already closed and forgotten).
    #[error("unknown stream")]
    UnknownStream,
    /// Nothing to read now; a `StreamReadable` event follows when there is.
    #[error("no data ready")]
    Blocked,
    /// The peer reset the stream with this code.
    #[error("stream reset by peer with code {0}")]
    Reset(u64),
    /// The stream was already finished or reset locally.
    #[error("stream already finished")]
    Finished,
    /// The connection is not established (handshake pending or closed).
    #[error("connection not established")]
    NotConnected,
    /// The peer allows no more streams now.
    #[error("peer stream limit reached")]
    StreamLimit,
}

/// What a sent STREAM frame carried, kept to retransmit or release it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamMeta {
    pub id: u64,
    pub offset: u64,
    pub len: u64,
    pub fin: bool,
}

/// Violations of the stream rules by the peer (the connection closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    FlowControl,
    StreamLimit,
    FinalSize,
    BadStream,
    Fragments,
}

impl Violation {
    pub fn reason(self) -> &'static str {
        match self {
            Self::FlowControl => "peer exceeded flow-control credit",
            Self::StreamLimit => "peer exceeded stream limit",
            Self::FinalSize => "peer changed a stream's final size",
            Self::BadStream => "peer used a stream we never opened",
            Self::Fragments => "peer sent too many out-of-order fragments",
        }
    }
}

#[derive(Debug, Default)]
struct SendStream {
    chunks: VecDeque<(u64, Bytes)>,
    write_offset: u64,
    sent_offset: u64,
    max_data: u64,
    acked: RangeSet,
    acked_below: u64,
    retransmit: RangeSet,
    fin: bool,
    fin_sent: bool,
    fin_acked: bool,
    fin_lost: bool,
    reset: Option<u64>,
    reset_pending: bool,
    reset_acked: bool,
    blocked: bool,
    queued: bool,
}

impl SendStream {
    fn has_pending(&self) -> bool {
        if self.reset.is_some() {
            return false;
        }
        !self.retransmit.is_empty()
            || self.sent_offset < self.write_offset
            || (self.fin && (!self.fin_sent || self.fin_lost))
    }

    fn is_done(&self) -> bool {
        (self.fin && self.fin_acked && self.acked_below >= self.write_offset) || self.reset_acked
    }

    /// Copies `range` of written data into `out`.
    fn copy(&self, range: Range<u64>, out: &mut [u8]) {
        let mut i = self
            .chunks
            .partition_point(|(off, b)| off + b.len() as u64 <= range.start);
        let mut pos = range.start;
        let mut o = 0;
        while pos < range.end {
            let (off, b) = &self.chunks[i];
            let from = (pos - off) as usize;
            let n = (b.len() - from).min((range.end - pos) as usize);
            out[o..o + n].copy_from_slice(&b[from..from + n]);
            o += n;
            pos += n as u64;
            i += 1;
        }
    }

    /// Records an acknowledged range; returns the buffered bytes it freed.
    fn on_ack(&mut self, r: Range<u64>) -> u64 {
        if !self.retransmit.is_empty() {
            self.retransmit.remove(r.clone());
        }
        if r.start <= self.acked_below && self.acked.is_empty() {
            // In-order acknowledgement, the common case: no range bookkeeping.
            self.acked_below = self.acked_below.max(r.end);
        } else {
            self.acked.insert(r);
        }
        if let Some(first) = self.acked.first() {
            if first.start <= self.acked_below {
                self.acked_below = self.acked_below.max(first.end);
                self.acked.remove(0..self.acked_below);
            }
        }
        let mut freed = 0;
        while let Some((off, b)) = self.chunks.front() {
            if off + b.len() as u64 <= self.acked_below {
                freed += b.len() as u64;
                self.chunks.pop_front();
            } else {
                break;
            }
        }
        freed
    }
}

#[derive(Debug, Default)]
struct RecvStream {
    segments: BTreeMap<u64, Bytes>,
    received: RangeSet,
    read_offset: u64,
    highest: u64,
    final_size: Option<u64>,
    max_data: u64,
    reset: Option<u64>,
    done: bool,
    notified: bool,
    credit_pending: bool,
}

#[derive(Debug, Default)]
struct Stream {
    send: SendStream,
    recv: RecvStream,
}

/// Bytes held in send buffers (written, not yet acknowledged) by every connection of an
/// endpoint, and the most they may hold together. Shared by the endpoint's connections; plain
/// atomics only, so the core stays free of locks, threads and clocks.
#[derive(Debug)]
pub(crate) struct SendBudget {
    used: AtomicU64,
    limit: u64,
    /// A write was refused for want of budget: wake writers when some is released.
    blocked: AtomicBool,
}

impl SendBudget {
    pub fn new(limit: u64) -> Arc<SendBudget> {
        Arc::new(SendBudget {
            used: AtomicU64::new(0),
            limit,
            blocked: AtomicBool::new(false),
        })
    }

    /// Bytes that may still be buffered.
    pub fn room(&self) -> u64 {
        self.limit.saturating_sub(self.used.load(Ordering::Relaxed))
    }

    /// Bytes buffered now over all connections.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether some write was refused for want of budget and room is free again (clears the mark).
    pub fn take_unblocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
            && self.room() > 0
            && self.blocked.swap(false, Ordering::Relaxed)
    }
}

/// All streams of a connection.
#[derive(Debug)]
pub(crate) struct Streams {
    side: u64,
    map: BTreeMap<u64, Stream>,
    next_local: u64,
    peer_max_streams: u64,
    local_max_streams: u64,
    remote_closed: RangeSet,
    pub max_streams_pending: bool,
    send_queue: VecDeque<u64>,
    // Connection flow control, send side.
    send_max_data: u64,
    written: u64,
    // Connection flow control, receive side.
    recv_max_data: u64,
    recv_highest_total: u64,
    read_total: u64,
    pub max_data_pending: bool,
    conn_window: u64,
    stream_window: u64,
    initial_peer_stream_window: u64,
    credit_queue: VecDeque<u64>,
    reset_queue: VecDeque<u64>,
    /// Buffered receive segments over all streams, and the most allowed: flow control bounds the
    /// bytes, this bounds the per-segment overhead a peer could cause with tiny frames.
    segments_total: usize,
    max_segments: usize,
    /// An `open` failed on the stream limit; report when it rises.
    open_blocked: bool,
    /// Bytes held in our send buffers (written, not yet acknowledged or reset away).
    send_buffered: u64,
    /// The endpoint-wide budget those bytes also count against.
    budget: Arc<SendBudget>,
    /// A write was cut short by `conn_window` or the budget (not by the peer's credit).
    budget_blocked: bool,
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.send_buffered, Ordering::Relaxed);
    }
}

/// Initial flow-control parameters exchanged in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_data: u64,
    pub max_stream_data: u64,
    pub max_streams: u64,
}

impl Streams {
    pub fn new(initiator: bool, local: Limits, peer: Limits) -> Self {
        let mut s = Self {
            side: if initiator { 0 } else { 1 },
            map: BTreeMap::new(),
            next_local: 1,
            peer_max_streams: peer.max_streams,
            local_max_streams: local.max_streams,
            remote_closed: RangeSet::new(),
            max_streams_pending: false,
            send_queue: VecDeque::new(),
            send_max_data: peer.max_data,
            written: 0,
            recv_max_data: local.max_data,
            recv_highest_total: 0,
            read_total: 0,
            max_data_pending: false,
            conn_window: local.max_data,
            stream_window: local.max_stream_data,
            initial_peer_stream_window: peer.max_stream_data,
            credit_queue: VecDeque::new(),
            reset_queue: VecDeque::new(),
            segments_total: 0,
            max_segments: (local.max_data / 256).max(4096) as usize,
            open_blocked: false,
            send_buffered: 0,
            budget: SendBudget::new(u64::MAX),
            budget_blocked: false,
        };
        s.insert(0);
        s
    }

    /// Counts our send buffers against `budget` (shared by the endpoint's connections) too.
    pub fn with_budget(mut self, budget: Arc<SendBudget>) -> Self {
        debug_assert_eq!(self.send_buffered, 0);
        self.budget = budget;
        self
    }

    fn insert(&mut self, id: u64) {
        let mut st = Stream::default();
        st.send.max_data = self.initial_peer_stream_window;
        st.recv.max_data = self.stream_window;
        if id & 2 != 0 {
            if self.is_local(id) {
                // We only send: our receive direction is finished and empty from the start.
                st.recv.final_size = Some(0);
                st.recv.done = true;
            } else {
                // We only receive: our send direction is finished and acknowledged from the start.
                st.send.fin = true;
                st.send.fin_sent = true;
                st.send.fin_acked = true;
            }
        }
        self.map.insert(id, st);
    }

    fn is_local(&self, id: u64) -> bool {
        id == 0 && self.side == 0 || id != 0 && id & 1 == self.side
    }

    /// Opens a new local stream, bidirectional or unidirectional.
    pub fn open(&mut self, unidirectional: bool) -> Result<StreamId, StreamError> {
        if self.next_local > self.peer_max_streams {
            self.open_blocked = true;
            return Err(StreamError::StreamLimit);
        }
        let id = 4 * self.next_local + 2 * u64::from(unidirectional) + self.side;
        self.next_local += 1;
        self.insert(id);
        Ok(StreamId(id))
    }

    /// Accepts as much of `data` as flow control allows; returns the count.
    ///
    /// Accepting less than offered (including nothing) marks the stream blocked, so a
    /// [`Event::StreamWritable`] follows once the peer raises either credit.
    pub fn write(&mut self, id: StreamId, mut data: Bytes) -> Result<usize, StreamError> {
        let n = self.accept(id, data.len())?;
        if n == 0 {
            return Ok(0);
        }
        data.truncate(n);
        self.push(id, data);
        Ok(n)
    }

    /// Like [`Streams::write`], but copies only the accepted prefix of a borrowed slice.
    pub fn write_slice(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let n = self.accept(id, data.len())?;
        if n == 0 {
            return Ok(0);
        }
        self.push(id, Bytes::copy_from_slice(&data[..n]));
        Ok(n)
    }

    /// How many of `len` offered bytes the credit accepts on `id`; marks the stream blocked when
    /// that is fewer than offered, so that new credit reports `StreamWritable`.
    fn accept(&mut self, id: StreamId, len: usize) -> Result<usize, StreamError> {
        let conn_credit = self.send_max_data - self.written;
        // Our own bound on buffered bytes, whatever the peer granted: the peer's credit is
        // clamped to our connection window of unacknowledged bytes, and to the endpoint budget.
        let own_room = self.conn_window.saturating_sub(self.send_buffered);
        let global_room = self.budget.room();
        let room = own_room.min(global_room);
        let st = self.map.get_mut(&id.0).ok_or(StreamError::UnknownStream)?;
        let s = &mut st.send;
        if s.fin || s.reset.is_some() {
            return Err(StreamError::Finished);
        }
        let credit = (s.max_data - s.write_offset).min(conn_credit);
        let n = (len as u64).min(credit).min(room) as usize;
        if n < len {
            s.blocked = true;
            if room < credit.min(len as u64) {
                self.budget_blocked = true;
                if global_room < own_room {
                    self.budget.blocked.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(n)
    }

    /// Returns `n` buffered bytes to our window and the endpoint budget; writers cut short by
    /// either are told they may write again.
    fn release(&mut self, n: u64, events: &mut VecDeque<Event>) {
        if n == 0 {
            return;
        }
        self.send_buffered -= n;
        self.budget.used.fetch_sub(n, Ordering::Relaxed);
        if self.budget_blocked {
            self.wake_blocked(events);
        }
    }

    /// Tells every stream cut short by our window or the budget that it may write again (the
    /// endpoint calls this when another connection released budget).
    pub fn wake_blocked(&mut self, events: &mut VecDeque<Event>) {
        if !self.budget_blocked {
            return;
        }
        self.budget_blocked = false;
        for (&id, st) in self.map.iter_mut() {
            if st.send.blocked {
                st.send.blocked = false;
                events.push_back(Event::StreamWritable { id: StreamId(id) });
            }
        }
    }

    /// Bytes held in this connection's send buffers.
    pub fn send_buffered(&self) -> u64 {
        self.send_buffered
    }

    /// Appends `data` (already within credit, non-empty) to the stream's send buffer.
    fn push(&mut self, id: StreamId, data: Bytes) {
        let n = data.len();
        let Some(st) = self.map.get_mut(&id.0) else {
            return;
        };
        let s = &mut st.send;
        s.chunks.push_back((s.write_offset, data));
        s.write_offset += n as u64;
        self.written += n as u64;
        self.send_buffered += n as u64;
        self.budget.used.fetch_add(n as u64, Ordering::Relaxed);
        if !s.queued {
            s.queued = true;
            self.send_queue.push_back(id.0);
        }
    }

    /// How many bytes a write on `id` would accept now.
    #[cfg(test)]
    pub fn credit(&self, id: StreamId) -> Result<u64, StreamError> {
        let st = self.map.get(&id.0).ok_or(StreamError::UnknownStream)?;
        if st.send.fin || st.send.reset.is_some() {
            return Err(StreamError::Finished);
        }
        Ok((st.send.max_data - st.send.write_offset).min(self.send_max_data - self.written))
    }

    /// Marks the end of the stream.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let st = self.map.get_mut(&id.0).ok_or(StreamError::UnknownStream)?;
        if st.send.fin || st.send.reset.is_some() {
            return Err(StreamError::Finished);
        }
        st.send.fin = true;
        if !st.send.queued {
            st.send.queued = true;
            self.send_queue.push_back(id.0);
        }
        Ok(())
    }

    /// Abandons sending on the stream.
    pub fn reset(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        let st = self.map.get_mut(&id.0).ok_or(StreamError::UnknownStream)?;
        if st.send.reset.is_some() || st.send.fin_acked {
            return Err(StreamError::Finished);
        }
        st.send.reset = Some(code);
        st.send.reset_pending = true;
        let freed: u64 = st.send.chunks.drain(..).map(|(_, b)| b.len() as u64).sum();
        st.send.retransmit.clear();
        self.reset_queue.push_back(id.0);
        self.send_buffered -= freed;
        self.budget.used.fetch_sub(freed, Ordering::Relaxed);
        Ok(())
    }

    /// Reads up to `max` ordered bytes. `Ok(None)` means the stream ended and all was read.
    pub fn read(&mut self, id: StreamId, max: usize) -> Result<Option<Bytes>, StreamError> {
        let st = self.map.get_mut(&id.0).ok_or(StreamError::UnknownStream)?;
        let r = &mut st.recv;
        if let Some(code) = r.reset {
            return Err(StreamError::Reset(code));
        }
        let Some(mut entry) = r.segments.first_entry() else {
            if r.final_size == Some(r.read_offset) {
                if !r.done {
                    r.done = true;
                    self.maybe_remove(id.0);
                }
                return Ok(None);
            }
            r.notified = false;
            return Err(StreamError::Blocked);
        };
        if *entry.key() != r.read_offset {
            r.notified = false;
            return Err(StreamError::Blocked);
        }
        let whole = entry.get().len() <= max;
        let chunk = if whole {
            entry.remove()
        } else {
            let head = entry.get_mut().split_to(max);
            let rest = r.segments.remove(&r.read_offset).expect("entry exists");
            r.segments.insert(r.read_offset + max as u64, rest);
            head
        };
        let n = chunk.len() as u64;
        r.read_offset += n;
        self.read_total += n;
        self.segments_total -= usize::from(whole);
        // Raise the stream's credit once half its window is consumed.
        if r.final_size.is_none() && r.max_data - r.read_offset < self.stream_window / 2 {
            r.max_data = r.read_offset + self.stream_window;
            if !r.credit_pending {
                r.credit_pending = true;
                self.credit_queue.push_back(id.0);
            }
        }
        if self.recv_max_data - self.read_total < self.conn_window / 2 {
            self.recv_max_data = self.read_total + self.conn_window;
            self.max_data_pending = true;
        }
        Ok(Some(chunk))
    }

    fn maybe_remove(&mut self, id: u64) {
        let Some(st) = self.map.get(&id) else { return };
        if !(st.recv.done && st.send.is_done()) {
            return;
        }
        let st = self.map.remove(&id).expect("looked up above");
        // A done stream holds no data, but keep the budget exact whatever the path here.
        let left: u64 = st.send.chunks.iter().map(|(_, b)| b.len() as u64).sum();
        self.send_buffered -= left;
        self.budget.used.fetch_sub(left, Ordering::Relaxed);
        if !self.is_local(id) {
            self.remote_closed.insert_one(id >> 2);
            if id != 0 {
                self.local_max_streams += 1;
                self.max_streams_pending = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdt::frame::Writer;

    fn pair_limits(window: u64) -> Limits {
        Limits {
            max_data: window,
            max_stream_data: window,
            max_streams: 4,
        }
    }

    #[test]
    fn reassembly_in_any_order_delivers_once() {
        let mut s = Streams::new(false, pair_limits(1 << 20), pair_limits(1 << 20));
        let mut ev = VecDeque::new();
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        // Overlapping, duplicated and out-of-order pieces of stream 6 (unidirectional, opened by
        // the initiator).
        for (off, len) in [
            (500, 300),
            (0, 100),
            (50, 500),
            (800, 200),
            (0, 1000),
            (700, 50),
        ] {
            let fin = off + len == 1000;
            let piece = Bytes::copy_from_slice(&data[off..off + len]);
            s.on_stream_frame(6, off as u64, fin, piece, &mut ev)
                .unwrap();
        }
        assert_eq!(ev.front(), Some(&Event::StreamOpened { id: StreamId(6) }));
        assert!(StreamId(6).is_unidirectional());
        assert_eq!(
            s.write(StreamId(6), Bytes::from_static(b"no")),
            Err(StreamError::Finished)
        );
        let mut got = Vec::new();
        while let Ok(Some(b)) = s.read(StreamId(6), 64) {
            got.extend_from_slice(&b);
        }
        assert_eq!(got, data);
        assert_eq!(s.segments_total, 0);
        // Read to the end (the loop saw `Ok(None)`): the unidirectional stream is released, later
        // reads say so, and its slot is returned to the peer.
        assert_eq!(s.read(StreamId(6), 64), Err(StreamError::UnknownStream));
        assert!(!s.map.contains_key(&6));
        assert!(s.max_streams_pending);
        assert_eq!(s.local_max_streams(), 5);
    }

    #[test]
    fn peer_violations_are_refused() {
        let mut ev = VecDeque::new();
        let mut s = Streams::new(false, pair_limits(1000), pair_limits(1000));
        // Beyond the stream window.
        assert_eq!(
            s.on_stream_frame(4, 990, false, Bytes::from(vec![0; 20]), &mut ev),
            Err(Violation::FlowControl)
        );
        // Changing the final size.
        s.on_stream_frame(8, 0, true, Bytes::from(vec![0; 10]), &mut ev)
            .unwrap();
        assert_eq!(
            s.on_stream_frame(8, 5, true, Bytes::from(vec![0; 10]), &mut ev),
            Err(Violation::FinalSize)
        );
        // Beyond the stream limit (4 streams), and a stream of ours we never opened.
        assert_eq!(
            s.on_stream_frame(4 * 5, 0, false, Bytes::new(), &mut ev),
            Err(Violation::StreamLimit)
        );
        for bad in [1, 2, 3, 5, 7] {
            assert_eq!(
                s.on_stream_frame(bad, 0, false, Bytes::new(), &mut ev),
                Err(Violation::BadStream),
                "stream {bad}"
            );
        }
    }

    #[test]
    fn tiny_fragments_are_bounded() {
        let mut ev = VecDeque::new();
        let mut s = Streams::new(false, pair_limits(1 << 20), pair_limits(1 << 20));
        let mut result = Ok(());
        // One-byte frames with gaps never become readable; the count is capped.
        for i in 0..10_000u64 {
            result = s.on_stream_frame(4, 2 * i + 1, false, Bytes::from_static(b"x"), &mut ev);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(Violation::Fragments));
        assert!(s.segments_total <= s.max_segments + 1);
    }

    #[test]
    fn write_respects_credit_and_retransmits_lost_ranges() {
        let mut s = Streams::new(true, pair_limits(1 << 20), pair_limits(3000));
        let id = s.open(false).unwrap();
        assert_eq!(s.write(id, Bytes::from(vec![1u8; 5000])).unwrap(), 3000);
        assert_eq!(s.credit(id).unwrap(), 0);
        let mut buf = vec![0u8; 1200];
        let mut w = Writer::new(&mut buf, 0);
        let m = s.write_stream_frame(&mut w).unwrap();
        assert_eq!((m.offset, m.fin), (0, false));
        assert!(m.len > 1000);
        // Lost: the same range comes back, before new data.
        s.on_frame_lost(&m);
        let mut w = Writer::new(&mut buf, 0);
        let again = s.write_stream_frame(&mut w).unwrap();
        assert_eq!((again.offset, again.len), (m.offset, m.len));
        let mut ev = VecDeque::new();
        s.on_frame_acked(&again, &mut ev);
        assert_eq!(s.unacked_bytes(), 3000 - m.len);
    }

    /// Sends one frame of stream `id` and acknowledges it.
    fn send_and_ack(s: &mut Streams, ev: &mut VecDeque<Event>) -> u64 {
        let mut buf = vec![0u8; 1 << 16];
        let mut w = Writer::new(&mut buf, 0);
        let m = s.write_stream_frame(&mut w).expect("something to send");
        s.on_frame_acked(&m, ev);
        m.len
    }

    #[test]
    fn a_huge_peer_window_is_clamped_to_ours() {
        // The peer grants 2^62 bytes and never acknowledges: we still buffer only our window.
        let huge = Limits {
            max_data: 1 << 62,
            max_stream_data: 1 << 62,
            max_streams: 4,
        };
        let mut s = Streams::new(true, pair_limits(1 << 20), huge);
        let id = s.open(false).unwrap();
        let mut accepted = 0;
        // Small writes, so an acknowledged frame frees whole buffered pieces.
        for _ in 0..2000 {
            accepted += s.write(id, Bytes::from(vec![7u8; 1000])).unwrap();
        }
        assert_eq!(accepted, 1 << 20, "buffered past our 1 MiB window");
        assert_eq!(s.send_buffered(), 1 << 20);
        // An acknowledgement frees room and tells the writer.
        let mut ev = VecDeque::new();
        let acked = send_and_ack(&mut s, &mut ev);
        assert!(acked > 1000, "one frame carries several pieces");
        assert!(ev.contains(&Event::StreamWritable { id }), "{ev:?}");
        let room = (1 << 20) - s.send_buffered();
        assert!(room > 0 && room <= acked);
        assert_eq!(
            s.write(id, Bytes::from(vec![7u8; 1 << 20])).unwrap() as u64,
            room
        );
        // A reset gives everything back.
        s.reset(id, 1).unwrap();
        assert_eq!(s.send_buffered(), 0);
    }

    #[test]
    fn connections_share_one_send_budget() {
        let budget = SendBudget::new(1 << 20);
        let huge = pair_limits(1 << 40);
        let mut a = Streams::new(true, huge, huge).with_budget(budget.clone());
        let mut b = Streams::new(true, huge, huge).with_budget(budget.clone());
        let (ia, ib) = (a.open(false).unwrap(), b.open(false).unwrap());
        for _ in 0..768 {
            assert_eq!(a.write(ia, Bytes::from(vec![1u8; 1024])).unwrap(), 1024);
        }
        assert_eq!(
            b.write(ib, Bytes::from(vec![2u8; 768 << 10])).unwrap(),
            256 << 10
        );
        assert_eq!(budget.used(), 1 << 20);
        assert_eq!(budget.room(), 0);
        // `a` frees some: the budget says so once, and `b`'s writer is woken by the endpoint.
        let mut ev = VecDeque::new();
        send_and_ack(&mut a, &mut ev);
        assert!(budget.take_unblocked());
        assert!(!budget.take_unblocked());
        let mut ev = VecDeque::new();
        b.wake_blocked(&mut ev);
        assert_eq!(ev, VecDeque::from([Event::StreamWritable { id: ib }]));
        // A connection that goes away returns what it held.
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
