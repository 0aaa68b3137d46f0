//! Packet headers, packet-number truncation and the replay window.
//!
//! Every packet starts with one clear byte: the protocol version in the high nibble and the packet
//! kind in the low nibble, followed by the 8-byte destination connection id. Then, by kind:
//!
//! ```text
//! Initial    | b0 | dst cid 8 | src cid 8 | token len varint | token | msg len u16 | Noise msg 1 | zero padding
//! Handshake  | b0 | dst cid 8 | src cid 8 | msg len u16 | Noise msg 2 or 3
//! Retry      | b0 | dst cid 8 | src cid 8 | token len varint | token | tag 16
//! Data       | b0 | dst cid 8 | packet number 4 (truncated) | sealed frames | AEAD tag 16
//! Reset      | b0 | zero 8 | reset token 16
//! ```
//!
//! A Reset answers a Data packet for a connection id the endpoint does not know (it restarted);
//! the token, exchanged inside the handshake, lets the peer close at once instead of waiting for
//! its idle timeout. It is smaller than the packet that triggers it, so it cannot amplify.
//!
//! The whole clear header of a Data packet is the AEAD associated data, and the full 64-bit packet
//! number is the nonce, so nothing in it can be changed without failing authentication.

use crate::rdt::frame::{Reader, Writer};

/// Wire version in the high nibble of the first byte.
pub const VERSION: u8 = 1;
/// Bytes of a Data packet header.
pub const DATA_HEADER_LEN: usize = 1 + 8 + 4;
/// Bytes of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Longest Noise message accepted.
pub const MAX_NOISE_LEN: usize = 512;
/// Longest retry token accepted.
pub const MAX_TOKEN_LEN: usize = 64;
/// Sliding replay window, in packet numbers.
pub const REPLAY_WINDOW: u64 = 4096;

/// Packet kinds (low nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Initiator's first handshake message.
    Initial = 1,
    /// Handshake messages 2 and 3.
    Handshake = 2,
    /// Stateless retry carrying an address-validation token.
    Retry = 3,
    /// Sealed frames.
    Data = 4,
    /// Stateless reset.
    Reset = 5,
}

/// Why a datagram was not parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Shorter than its header says.
    #[error("truncated packet")]
    Truncated,
    /// The version nibble is not ours.
    #[error("unsupported version {0}")]
    Version(u8),
    /// The kind nibble is unknown.
    #[error("unknown packet kind {0}")]
    Kind(u8),
    /// A length field is out of range.
    #[error("bad length field")]
    Length,
}

/// The first byte of a packet.
pub(crate) fn first_byte(kind: Kind) -> u8 {
    (VERSION << 4) | kind as u8
}

/// Parses the first byte and destination cid of any packet.
pub(crate) fn parse_prefix(b: &[u8]) -> Result<(Kind, u64), PacketError> {
    if b.len() < 9 {
        return Err(PacketError::Truncated);
    }
    if b[0] >> 4 != VERSION {
        return Err(PacketError::Version(b[0] >> 4));
    }
    let kind = match b[0] & 0x0f {
        1 => Kind::Initial,
        2 => Kind::Handshake,
        3 => Kind::Retry,
        4 => Kind::Data,
        5 => Kind::Reset,
        k => return Err(PacketError::Kind(k)),
    };
    let cid = u64::from_be_bytes(b[1..9].try_into().expect("length checked above"));
    Ok((kind, cid))
}

/// A parsed handshake-phase packet (Initial, Handshake or Retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LongPacket<'a> {
    pub kind: Kind,
    pub dst: u64,
    pub src: u64,
    /// Retry token (Initial and Retry only; empty otherwise).
    pub token: &'a [u8],
    /// Noise message (Initial and Handshake) or the 16-byte tag (Retry).
    pub payload: &'a [u8],
    /// Bytes covered by the Retry tag (everything before it).
    pub tagged_len: usize,
}

/// Parses an Initial, Handshake or Retry packet.
pub(crate) fn parse_long(b: &[u8]) -> Result<LongPacket<'_>, PacketError> {
    let (kind, dst) = parse_prefix(b)?;
    let mut r = Reader::new(&b[9..]);
    let src = u64::from_be_bytes(
        r.bytes(8)
            .map_err(|_| PacketError::Truncated)?
            .try_into()
            .expect("8 bytes"),
    );
    let token = if matches!(kind, Kind::Initial | Kind::Retry) {
        let len = r.varint().map_err(|_| PacketError::Truncated)?;
        if len > MAX_TOKEN_LEN as u64 {
            return Err(PacketError::Length);
        }
        r.bytes(len as usize).map_err(|_| PacketError::Truncated)?
    } else {
        &[]
    };
    let tagged_len = 9 + r.pos();
    let payload = match kind {
        Kind::Retry => r.bytes(TAG_LEN).map_err(|_| PacketError::Truncated)?,
        Kind::Initial | Kind::Handshake => {
            let hi = r.u8().map_err(|_| PacketError::Truncated)?;
            let lo = r.u8().map_err(|_| PacketError::Truncated)?;
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if len > MAX_NOISE_LEN {
                return Err(PacketError::Length);
            }
            r.bytes(len).map_err(|_| PacketError::Truncated)?
        }
        Kind::Data | Kind::Reset => return Err(PacketError::Kind(kind as u8)),
    };
    Ok(LongPacket {
        kind,
        dst,
        src,
        token,
        payload,
        tagged_len,
    })
}

/// Writes an Initial or Handshake packet into `buf`, returning its length (before any padding).
/// Returns `None` if `buf` is too small.
pub(crate) fn write_long(
    buf: &mut [u8],
    kind: Kind,
    dst: u64,
    src: u64,
    token: &[u8],
    noise: &[u8],
) -> Option<usize> {
    let need = 1 + 8 + 8 + 9 + token.len() + 2 + noise.len();
    if buf.len() < need {
        return None;
    }
    let mut w = Writer::new(buf, 0);
    w.u8(first_byte(kind));
    w.slice(&dst.to_be_bytes());
    w.slice(&src.to_be_bytes());
    if kind != Kind::Handshake {
        w.varint(token.len() as u64);
        w.slice(token);
    }
    if kind == Kind::Retry {
        return Some(w.pos);
    }
    w.slice(&(noise.len() as u16).to_be_bytes());
    w.slice(noise);
    Some(w.pos)
}

/// Length of a Reset packet.
pub const RESET_LEN: usize = 1 + 8 + TAG_LEN;

/// Writes a Reset packet; `buf` must hold [`RESET_LEN`] bytes.
pub(crate) fn write_reset(buf: &mut [u8], token: &[u8; TAG_LEN]) {
    buf[0] = first_byte(Kind::Reset);
    buf[1..9].fill(0);
    buf[9..RESET_LEN].copy_from_slice(token);
}

/// Writes a Data packet header with the truncated packet number.
pub(crate) fn write_data_header(buf: &mut [u8], dst: u64, pn: u64) {
    buf[0] = first_byte(Kind::Data);
    buf[1..9].copy_from_slice(&dst.to_be_bytes());
    buf[9..13].copy_from_slice(&(pn as u32).to_be_bytes());
}

/// Recovers a full packet number from its low 32 bits (RFC 9000 appendix A.3).
pub fn decode_pn(truncated: u32, largest: Option<u64>) -> u64 {
    let expected = largest.map_or(0, |l| l + 1);
    let win: u64 = 1 << 32;
    let hwin = win / 2;
    let mask = win - 1;
    let candidate = (expected & !mask) | u64::from(truncated);
    if expected >= hwin && candidate <= expected - hwin && candidate < (1 << 62) - win {
        candidate + win
    } else if candidate > expected + hwin && candidate >= win {
        candidate - win
    } else {
        candidate
    }
}

/// Remembers which of the last [`REPLAY_WINDOW`] packet numbers were accepted.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    largest: Option<u64>,
    bits: Box<[u64; (REPLAY_WINDOW / 64) as usize]>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            largest: None,
            bits: Box::new([0; (REPLAY_WINDOW / 64) as usize]),
        }
    }
}

impl ReplayWindow {
    /// The largest accepted packet number.
    pub fn largest(&self) -> Option<u64> {
        self.largest
    }

    /// Whether `pn` is new and inside the window (checked before decryption, marked after).
    pub fn is_fresh(&self, pn: u64) -> bool {
        match self.largest {
            None => true,
            Some(l) if pn > l => true,
            Some(l) if l - pn >= REPLAY_WINDOW => false,
            Some(_) => {
                let i = (pn % REPLAY_WINDOW) as usize;
                self.bits[i / 64] & (1 << (i % 64)) == 0
            }
        }
    }

    /// Records `pn` as accepted.
    pub fn mark(&mut self, pn: u64) {
        let l = self.largest.unwrap_or(pn);
        if pn > l || self.largest.is_none() {
            // Clear the slots that slide out of the window between l+1 and pn.
            let start = if self.largest.is_none() { pn } else { l + 1 };
            if pn - start >= REPLAY_WINDOW {
                self.bits.fill(0);
            } else {
                for x in start..=pn {
                    let i = (x % REPLAY_WINDOW) as usize;
                    self.bits[i / 64] &= !(1 << (i % 64));
                }
            }
            self.largest = Some(pn);
        }
        let i = (pn % REPLAY_WINDOW) as usize;
        self.bits[i / 64] |= 1 << (i % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn long_round_trip_and_truncation() {
        let mut buf = [0u8; 300];
        let n = write_long(&mut buf, Kind::Initial, 7, 9, b"tok", b"noise!").unwrap();
        let p = parse_long(&buf[..n]).unwrap();
        assert_eq!(
            (p.kind, p.dst, p.src, p.token, p.payload),
            (Kind::Initial, 7, 9, &b"tok"[..], &b"noise!"[..])
        );
        for cut in 0..n {
            assert!(parse_long(&buf[..cut]).is_err(), "cut {cut}");
        }
        buf[0] = 0x21;
        assert_eq!(parse_prefix(&buf[..n]), Err(PacketError::Version(2)));
        buf[0] = 0x1f;
        assert_eq!(parse_prefix(&buf[..n]), Err(PacketError::Kind(15)));
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert!(w.is_fresh(5));
        w.mark(5);
        assert!(!w.is_fresh(5));
        assert!(w.is_fresh(3));
        w.mark(3);
        assert!(!w.is_fresh(3));
        w.mark(5 + REPLAY_WINDOW);
        assert!(!w.is_fresh(5), "too old");
        assert!(w.is_fresh(10));
        assert!(!w.is_fresh(5 + REPLAY_WINDOW));
    }

    proptest! {
        #[test]
        fn pn_decode(largest in 0u64..(1 << 40), delta in 1u64..(1 << 30)) {
            let pn = largest + delta;
            prop_assert_eq!(decode_pn(pn as u32, Some(largest)), pn);
            if largest >= delta {
                let old = largest - delta;
                prop_assert_eq!(decode_pn(old as u32, Some(largest)), old);
            }
        }

        #[test]
        fn replay_model(pns in proptest::collection::vec(0u64..10_000, 1..300)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut largest: Option<u64> = None;
            for pn in pns {
                let expect = !seen.contains(&pn) && largest.is_none_or(|l| pn + REPLAY_WINDOW > l);
                prop_assert_eq!(w.is_fresh(pn), expect);
                if expect { w.mark(pn); seen.insert(pn); largest = Some(largest.map_or(pn, |l| l.max(pn))); }
            }
        }
    }
}
