//! Frames: the typed pieces of a packet body, and the QUIC variable-length integer codec.
//!
//! A frame starts with a one-byte type. Integers are QUIC varints (RFC 9000 section 16): the top two
//! bits of the first byte give the length (1, 2, 4 or 8 bytes), so values up to 2^62 - 1 fit.
//! Decoding is bounds-checked everywhere and returns [`FrameError`] on malformed input; it never
//! panics and never allocates.

use std::ops::Range;

/// Frame type bytes.
pub(crate) mod ty {
    pub const PADDING: u8 = 0x00;
    pub const PING: u8 = 0x01;
    pub const ACK: u8 = 0x02;
    pub const RESET_STREAM: u8 = 0x04;
    pub const STREAM: u8 = 0x08;
    pub const STREAM_FIN: u8 = 0x09;
    pub const MAX_DATA: u8 = 0x10;
    pub const MAX_STREAM_DATA: u8 = 0x11;
    pub const MAX_STREAMS: u8 = 0x12;
    /// 8 random bytes sent to a new peer address; the peer echoes them in a PATH_RESPONSE.
    pub const PATH_CHALLENGE: u8 = 0x1a;
    /// The 8 bytes of a PATH_CHALLENGE, echoed: the new address is the peer's.
    pub const PATH_RESPONSE: u8 = 0x1b;
    pub const CLOSE: u8 = 0x1c;
    pub const HANDSHAKE_DONE: u8 = 0x1e;
}

/// Largest value a varint can hold.
pub const VARINT_MAX: u64 = (1 << 62) - 1;
/// Most ACK ranges one frame may carry (more is a protocol violation).
pub const MAX_ACK_RANGES: u64 = 256;
/// Longest close reason accepted, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// Why a frame failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame runs past the end of the packet.
    #[error("truncated frame")]
    Truncated,
    /// The type byte is not one we know.
    #[error("unknown frame type {0:#x}")]
    UnknownType(u8),
    /// A field holds an impossible value.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

/// The encoded length of a varint.
pub fn varint_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// A cursor over a byte slice that reads bounds-checked values.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn u8(&mut self) -> Result<u8, FrameError> {
        let b = *self.buf.get(self.pos).ok_or(FrameError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.remaining() < n {
            return Err(FrameError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn varint(&mut self) -> Result<u64, FrameError> {
        let first = self.u8()?;
        let len = 1usize << (first >> 6);
        let mut v = u64::from(first & 0x3f);
        for &b in self.bytes(len - 1)? {
            v = (v << 8) | u64::from(b);
        }
        Ok(v)
    }
}

/// A cursor that writes into a caller-owned buffer. Callers check `remaining` first; writing past
/// the end is a local bug and panics (the slice index), never a reaction to peer input.
pub(crate) struct Writer<'a> {
    pub buf: &'a mut [u8],
    pub pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8], pos: usize) -> Self {
        Self { buf, pos }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn u8(&mut self, b: u8) {
        self.buf[self.pos] = b;
        self.pos += 1;
    }
    pub fn slice(&mut self, s: &[u8]) {
        self.buf[self.pos..self.pos + s.len()].copy_from_slice(s);
        self.pos += s.len();
    }
    pub fn varint(&mut self, v: u64) {
        debug_assert!(v <= VARINT_MAX);
        match varint_len(v) {
            1 => self.u8(v as u8),
            2 => self.slice(&((v as u16) | 0x4000).to_be_bytes()),
            4 => self.slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
            _ => self.slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
        }
    }
}

/// A decoded ACK frame. Ranges are validated at decode time and iterated lazily, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrame<'a> {
    /// Largest acknowledged packet number.
    pub largest: u64,
    /// Ack delay in microseconds.
    pub delay_us: u64,
    first: u64,
    count: u64,
    raw: &'a [u8],
}

impl<'a> AckFrame<'a> {
    /// The acknowledged ranges, highest first.
    pub fn iter(&self) -> AckIter<'a> {
        AckIter {
            r: Reader::new(self.raw),
            next: Some(self.largest - self.first..self.largest + 1),
            left: self.count,
        }
    }
}

/// Iterator over an [`AckFrame`]'s ranges, highest first.
pub struct AckIter<'a> {
    r: Reader<'a>,
    next: Option<Range<u64>>,
    left: u64,
}

impl Iterator for AckIter<'_> {
    type Item = Range<u64>;
    fn next(&mut self) -> Option<Range<u64>> {
        let cur = self.next.take()?;
        if self.left > 0 {
            self.left -= 1;
            // Validated at decode time, so these cannot fail; stop quietly if they somehow do.
            let gap = self.r.varint().ok()?;
            let len = self.r.varint().ok()?;
            let end = cur.start.checked_sub(gap.checked_add(2)?)?;
            let start = end.checked_sub(len)?;
            self.next = Some(start..end + 1);
        }
        Some(cur)
    }
}

/// A decoded frame, borrowing the packet body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A run of padding bytes.
    Padding,
    /// Elicit an acknowledgement.
    Ping,
    /// Acknowledged packet ranges.
    Ack(AckFrame<'a>),
    /// Stream data; `data` is the byte range of the payload within the decoded body.
    Stream {
        /// Stream id.
        id: u64,
        /// Offset of the first byte.
        offset: u64,
        /// Whether this is the last byte of the stream.
        fin: bool,
        /// Payload position within the body passed to the decoder.
        data: Range<usize>,
    },
    /// Connection-level credit: the peer may send stream bytes up to this total.
    MaxData(u64),
    /// Stream-level credit.
    MaxStreamData {
        /// Stream id.
        id: u64,
        /// Highest offset the peer may send.
        max: u64,
    },
    /// How many streams the peer may open in total.
    MaxStreams(u64),
    /// The sender abandons a stream.
    ResetStream {
        /// Stream id.
        id: u64,
        /// Application error code.
        code: u64,
        /// Final size of the stream.
        final_size: u64,
    },
    /// The connection closes.
    Close {
        /// Application error code.
        code: u64,
        /// Human-readable reason (UTF-8 by convention, not checked).
        reason: &'a [u8],
    },
    /// The responder confirms the handshake.
    HandshakeDone,
    /// Type 0x1a, then 8 bytes: sent (alone) to a new, unvalidated peer address; answered with a
    /// [`Frame::PathResponse`] carrying the same bytes. Only the peer's keys can read it, so an
    /// answer proves the peer receives at that address (RFC 9000 section 8.2).
    PathChallenge([u8; 8]),
    /// Type 0x1b, then the 8 bytes of a PATH_CHALLENGE received.
    PathResponse([u8; 8]),
}

fn eight(r: &mut Reader<'_>) -> Result<[u8; 8], FrameError> {
    r.bytes(8)?.try_into().map_err(|_| FrameError::Truncated)
}

/// Decodes the frames of a packet body one at a time.
pub struct Decoder<'a> {
    r: Reader<'a>,
}

impl<'a> Decoder<'a> {
    /// A decoder over `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            r: Reader::new(body),
        }
    }

    fn frame(&mut self) -> Result<Frame<'a>, FrameError> {
        let r = &mut self.r;
        let t = r.u8()?;
        Ok(match t {
            ty::PADDING => {
                // Consume the whole run of padding at once.
                while r.remaining() > 0 && r.buf[r.pos] == 0 {
                    r.pos += 1;
                }
                Frame::Padding
            }
            ty::PING => Frame::Ping,
            ty::ACK => {
                let largest = r.varint()?;
                let delay_us = r.varint()?;
                let count = r.varint()?;
                let first = r.varint()?;
                if count > MAX_ACK_RANGES || first > largest {
                    return Err(FrameError::Malformed("ack"));
                }
                let start = r.pos();
                let mut low = largest - first;
                for _ in 0..count {
                    let gap = r.varint()?;
                    let len = r.varint()?;
                    let end = low
                        .checked_sub(gap.checked_add(2).ok_or(FrameError::Malformed("ack"))?)
                        .ok_or(FrameError::Malformed("ack"))?;
                    low = end.checked_sub(len).ok_or(FrameError::Malformed("ack"))?;
                }
                let raw = &r.buf[start..r.pos()];
                Frame::Ack(AckFrame {
                    largest,
                    delay_us,
                    first,
                    count,
                    raw,
                })
            }
            ty::STREAM | ty::STREAM_FIN => {
                let id = r.varint()?;
                let offset = r.varint()?;
                let len = r.varint()?;
                if offset.checked_add(len).is_none_or(|e| e > VARINT_MAX) {
                    return Err(FrameError::Malformed("stream"));
                }
                let len = usize::try_from(len).map_err(|_| FrameError::Truncated)?;
                let start = r.pos();
                r.bytes(len)?;
                Frame::Stream {
                    id,
                    offset,
                    fin: t == ty::STREAM_FIN,
                    data: start..start + len,
                }
            }
            ty::MAX_DATA => Frame::MaxData(r.varint()?),
            ty::MAX_STREAM_DATA => Frame::MaxStreamData {
                id: r.varint()?,
                max: r.varint()?,
            },
            ty::MAX_STREAMS => Frame::MaxStreams(r.varint()?),
            ty::RESET_STREAM => Frame::ResetStream {
                id: r.varint()?,
                code: r.varint()?,
                final_size: r.varint()?,
            },
            ty::CLOSE => {
                let code = r.varint()?;
                let len = r.varint()?;
                if len > MAX_REASON_LEN as u64 {
                    return Err(FrameError::Malformed("close"));
                }
                Frame::Close {
                    code,
                    reason: r.bytes(len as usize)?,
                }
            }
            ty::HANDSHAKE_DONE => Frame::HandshakeDone,
            ty::PATH_CHALLENGE => Frame::PathChallenge(eight(r)?),
            ty::PATH_RESPONSE => Frame::PathResponse(eight(r)?),
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Frame<'a>, FrameError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.r.remaining() == 0 {
            return None;
        }
        let f = self.frame();
        if f.is_err() {
            // Stop after the first error.
            self.r.pos = self.r.buf.len();
        }
        Some(f)
    }
}

/// Bytes a STREAM frame header takes (type, id, offset, length).
pub fn stream_header_len(id: u64, offset: u64, len: u64) -> usize {
    1 + varint_len(id) + varint_len(offset) + varint_len(len)
}

/// Writes a STREAM frame header; the caller writes `len` data bytes right after.
pub(crate) fn write_stream_header(w: &mut Writer<'_>, id: u64, offset: u64, len: u64, fin: bool) {
    w.u8(if fin { ty::STREAM_FIN } else { ty::STREAM });
    w.varint(id);
    w.varint(offset);
    w.varint(len);
}

/// Encodes an ACK frame for `ranges` (ascending, disjoint), taking as many of the highest ranges as
/// fit in `space` bytes. Returns false (writing nothing) if not even one range fits.
pub(crate) fn write_ack(
    w: &mut Writer<'_>,
    ranges: &crate::rdt::range_set::RangeSet,
    delay_us: u64,
    space: usize,
) -> bool {
    let mut it = ranges.iter().rev();
    let Some(top) = it.next() else { return false };
    let largest = top.end - 1;
    let first = top.end - 1 - top.start;
    // Count how many more ranges fit, assuming a 2-byte count field.
    let mut size = 1 + varint_len(largest) + varint_len(delay_us) + 2 + varint_len(first);
    if size > space {
        return false;
    }
    let mut count = 0u64;
    let mut low = top.start;
    for r in it {
        if count >= MAX_ACK_RANGES {
            break;
        }
        let add = varint_len(low - r.end - 1) + varint_len(r.end - 1 - r.start);
        if size + add > space {
            break;
        }
        size += add;
        count += 1;
        low = r.start;
    }
    w.u8(ty::ACK);
    w.varint(largest);
    w.varint(delay_us.min(VARINT_MAX));
    w.varint(count);
    w.varint(first);
    let mut low = top.start;
    for r in ranges.iter().rev().skip(1).take(count as usize) {
        w.varint(low - r.end - 1);
        w.varint(r.end - 1 - r.start);
        low = r.start;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdt::range_set::RangeSet;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trip(v in 0u64..=VARINT_MAX) {
            let mut buf = [0u8; 8];
            let mut w = Writer::new(&mut buf, 0);
            w.varint(v);
            let n = w.pos;
            prop_assert_eq!(n, varint_len(v));
            let mut r = Reader::new(&buf[..n]);
            prop_assert_eq!(r.varint().unwrap(), v);
            // Any shorter prefix is truncated, never a panic.
            prop_assert_eq!(Reader::new(&buf[..n - 1]).varint(), Err(FrameError::Truncated));
        }

        #[test]
        fn ack_round_trip(vals in proptest::collection::btree_set(0u64..5000, 1..200)) {
            let mut set = RangeSet::new();
            for v in &vals { set.insert_one(*v); }
            let mut buf = [0u8; 2000];
            let mut w = Writer::new(&mut buf, 0);
            prop_assert!(write_ack(&mut w, &set, 1234, 2000));
            let n = w.pos;
            let mut d = Decoder::new(&buf[..n]);
            let Some(Ok(Frame::Ack(ack))) = d.next() else { panic!("not an ack") };
            prop_assert_eq!(ack.delay_us, 1234);
            let mut got = RangeSet::new();
            for r in ack.iter() { got.insert(r); }
            // All ranges fit in 2000 bytes unless more than MAX_ACK_RANGES.
            if set.len() as u64 <= MAX_ACK_RANGES + 1 { prop_assert_eq!(got, set); }
            prop_assert!(d.next().is_none());
        }

        #[test]
        fn decode_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for f in Decoder::new(&bytes) {
                if let Ok(Frame::Ack(a)) = f { for _ in a.iter() {} }
            }
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, 0);
        write_stream_header(&mut w, 4, 1 << 20, 3, true);
        w.slice(b"abc");
        w.u8(ty::MAX_DATA);
        w.varint(1 << 25);
        w.u8(ty::MAX_STREAM_DATA);
        w.varint(4);
        w.varint(77);
        w.u8(ty::CLOSE);
        w.varint(9);
        w.varint(3);
        w.slice(b"bye");
        w.u8(ty::RESET_STREAM);
        w.varint(8);
        w.varint(1);
        w.varint(100);
        w.u8(ty::PING);
        w.u8(ty::HANDSHAKE_DONE);
        w.u8(ty::PATH_CHALLENGE);
        w.slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        w.u8(ty::PATH_RESPONSE);
        w.slice(&[9; 8]);
        w.u8(ty::PADDING);
        w.u8(ty::PADDING);
        let n = w.pos;
        let body = &buf[..n];
        let frames: Vec<_> = Decoder::new(body).collect::<Result<_, _>>().unwrap();
        let Frame::Stream {
            id: 4,
            offset,
            fin: true,
            data,
        } = &frames[0]
        else {
            panic!()
        };
        assert_eq!(*offset, 1 << 20);
        assert_eq!(&body[data.clone()], b"abc");
        assert_eq!(frames[1], Frame::MaxData(1 << 25));
        assert_eq!(frames[2], Frame::MaxStreamData { id: 4, max: 77 });
        assert_eq!(
            frames[3],
            Frame::Close {
                code: 9,
                reason: b"bye"
            }
        );
        assert_eq!(
            frames[4],
            Frame::ResetStream {
                id: 8,
                code: 1,
                final_size: 100
            }
        );
        assert_eq!(
            &frames[5..],
            &[
                Frame::Ping,
                Frame::HandshakeDone,
                Frame::PathChallenge([1, 2, 3, 4, 5, 6, 7, 8]),
                Frame::PathResponse([9; 8]),
                Frame::Padding
            ]
        );
        assert_eq!(
            Decoder::new(&[ty::PATH_CHALLENGE, 1, 2, 3]).next(),
            Some(Err(FrameError::Truncated))
        );
        // Every truncation of a stream frame is an error, not a panic.
        for cut in 1..6 {
            let r: Result<Vec<_>, _> = Decoder::new(&body[..cut]).collect();
            assert_eq!(r, Err(FrameError::Truncated), "cut {cut}");
        }
        assert_eq!(
            Decoder::new(&[0x7f]).next(),
            Some(Err(FrameError::UnknownType(0x7f)))
        );
    }
}
