//! The transport parameters each side sends inside its Noise handshake payload: connection id,
//! reset token, encryption switch, cipher suite, flow-control limits and maximum ack delay, and
//! their versioned wire encoding.
//!
//! What this is not: the settings themselves ([`TransportConfig`](crate::rdt::TransportConfig)
//! and `EndpointConfig` live in `rdt.rs`); [`Params::from_config`] only picks out what the peer
//! must know. Reading and writing the handshake messages that carry the payload is
//! `handshake.rs`.

use std::time::Duration;

use crate::rdt::crypto::CipherSuite;
use crate::rdt::frame::{self, Reader, Writer};
use crate::rdt::stream::Limits;
use crate::rdt::TransportConfig;

/// Parameters carried in handshake payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    /// The sender's connection id. Carried here, inside the authenticated Noise payload, because
    /// the clear header's copy is not authenticated: a corrupted or forged cid in a handshake
    /// header must not redirect the connection.
    pub cid: u64,
    /// The token a restarted sender would put in a Reset for `cid`.
    pub reset_token: [u8; 16],
    pub encryption: bool,
    pub suite: CipherSuite,
    pub limits: Limits,
    /// How long the sender may delay an acknowledgement (the peer's PTO and RTT use it).
    pub max_ack_delay: Duration,
}

const PARAMS_VERSION: u8 = 1;

impl Params {
    pub fn from_config(c: &TransportConfig, cid: u64, reset_token: [u8; 16]) -> Self {
        Self {
            cid,
            reset_token,
            encryption: c.encryption,
            suite: c.cipher,
            limits: Limits {
                max_data: c.connection_window,
                max_stream_data: c.stream_window,
                max_streams: c.max_streams,
            },
            max_ack_delay: c.max_ack_delay,
        }
    }

    pub fn encode(&self, out: &mut [u8; 64]) -> usize {
        let mut w = Writer::new(out, 0);
        w.u8(PARAMS_VERSION);
        w.slice(&self.cid.to_be_bytes());
        w.slice(&self.reset_token);
        w.u8(u8::from(self.encryption));
        w.u8(self.suite.to_byte());
        w.varint(self.limits.max_data.min(frame::VARINT_MAX));
        w.varint(self.limits.max_stream_data.min(frame::VARINT_MAX));
        w.varint(self.limits.max_streams.min(frame::VARINT_MAX));
        w.varint((self.max_ack_delay.as_micros() as u64).min(frame::VARINT_MAX));
        w.pos
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader::new(b);
        if r.u8().ok()? != PARAMS_VERSION {
            return None;
        }
        let cid = u64::from_be_bytes(r.bytes(8).ok()?.try_into().ok()?);
        let reset_token = r.bytes(16).ok()?.try_into().ok()?;
        let encryption = match r.u8().ok()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let suite = CipherSuite::from_byte(r.u8().ok()?)?;
        let limits = Limits {
            max_data: r.varint().ok()?,
            max_stream_data: r.varint().ok()?,
            max_streams: r.varint().ok()?,
        };
        // Capped so a peer cannot stretch our timers without bound.
        let max_ack_delay = Duration::from_micros(r.varint().ok()?.min(1_000_000));
        Some(Self {
            cid,
            reset_token,
            encryption,
            suite,
            limits,
            max_ack_delay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_and_reject() {
        let p = Params::from_config(&TransportConfig::default(), 77, [5; 16]);
        let mut b = [0u8; 64];
        let n = p.encode(&mut b);
        assert_eq!(Params::decode(&b[..n]), Some(p));
        for cut in 0..n {
            assert_eq!(Params::decode(&b[..cut]), None);
        }
        b[25] = 7;
        assert_eq!(Params::decode(&b[..n]), None);
    }
}
