//! Chunk encoding: one codec byte, then the payload.
//!
//! - `0` raw: the payload is the plain bytes;
//! - `1` zstd: the payload is one zstd frame (level [`ZSTD_LEVEL`]), kept only when it is at least
//!   ~5% smaller than the plain bytes, so incompressible data costs no decode time. Chunks of 24 KiB
//!   and more are first checked on three 2 KiB samples (first, middle, last): when none of them
//!   compresses by ~3%, the chunk is stored raw without compressing it whole (random or already
//!   compressed data costs no compression time either). A chunk that is random except in a
//!   region no sample touches is stored raw too: a small loss of ratio, never of correctness;
//! - `2..=255` are reserved (sealed chunks for untrusted peers later) and rejected today.
//!
//! The encoded form is what is stored and what a later issue sends on the wire, unchanged.
//! Decoding is bounded: a zstd payload may not decode to more than the store's maximum chunk size
//! (decompression into a buffer of that capacity; a bomb is an error, never an allocation), and the
//! result is checked against the chunk id by the caller ([`decode_verified`]).

use crate::error::{Error, Result};
use crate::ids::ChunkId;

/// Codec byte of raw chunks.
pub const CODEC_RAW: u8 = 0;
/// Codec byte of zstd chunks.
pub const CODEC_ZSTD: u8 = 1;
/// zstd level used for chunks.
pub const ZSTD_LEVEL: i32 = 1;

/// Compressor state, reusable across chunks (one per thread).
pub struct Encoder {
    cctx: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl Encoder {
    /// A new encoder at [`ZSTD_LEVEL`].
    pub fn new() -> Encoder {
        Encoder {
            cctx: zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd level 1 is valid"),
            scratch: Vec::new(),
        }
    }

    /// Whether `plain` looks incompressible: a trial compression of [`SAMPLES`] samples of
    /// [`SAMPLE`] bytes spread over the chunk saves less than ~3% on every one of them. Costs about a
    /// tenth of compressing a 64 KiB chunk, and saves the whole compression of random or already
    /// compressed data (a third of a typical mixed data set).
    fn looks_incompressible(&mut self, plain: &[u8]) -> bool {
        if plain.len() < SAMPLES * SAMPLE * 4 {
            return false;
        }
        let step = (plain.len() - SAMPLE) / (SAMPLES - 1);
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(SAMPLE));
        (0..SAMPLES).all(|i| {
            let s = &plain[i * step..i * step + SAMPLE];
            match self.cctx.compress_to_buffer(s, &mut self.scratch) {
                Ok(n) => {
                    self.scratch.clear();
                    n > SAMPLE - SAMPLE / 32
                }
                Err(_) => false,
            }
        })
    }

    /// Encodes `plain` (codec byte + payload).
    pub fn encode(&mut self, plain: &[u8]) -> Vec<u8> {
        if self.looks_incompressible(plain) {
            return raw(plain);
        }
        // Keep zstd only if it saves >= ~5%.
        let limit = plain.len() - plain.len() / 20;
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(plain.len()));
        if let Ok(n) = self.cctx.compress_to_buffer(plain, &mut self.scratch) {
            if n > 0 && n < limit {
                let mut out = Vec::with_capacity(n + 1);
                out.push(CODEC_ZSTD);
                out.extend_from_slice(&self.scratch[..n]);
                return out;
            }
        }
        raw(plain)
    }
}

/// Bytes per trial-compression sample (see `Encoder::looks_incompressible`).
const SAMPLE: usize = 2048;
/// Samples per chunk (first, last and evenly spaced between).
const SAMPLES: usize = 3;

fn raw(plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len() + 1);
    out.push(CODEC_RAW);
    out.extend_from_slice(plain);
    out
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

/// Encodes one chunk with a fresh encoder (convenience; prefer a reused [`Encoder`]).
pub fn encode(plain: &[u8]) -> Vec<u8> {
    Encoder::new().encode(plain)
}

thread_local! {
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decodes an encoded chunk into `out` (cleared first), never producing more than `max` bytes.
pub fn decode_into(encoded: &[u8], max: usize, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let (&codec, payload) = encoded
        .split_first()
        .ok_or_else(|| Error::corrupt("empty encoded chunk"))?;
    match codec {
        CODEC_RAW => {
            if payload.len() > max {
                return Err(Error::corrupt(format!(
                    "raw chunk of {} bytes exceeds the maximum chunk size {max}",
                    payload.len()
                )));
            }
            out.extend_from_slice(payload);
            Ok(())
        }
        CODEC_ZSTD => {
            out.reserve(max);
            DCTX.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| Error::corrupt(format!("zstd init: {e}")))?,
                    );
                }
                let d = d.as_mut().expect("set above");
                d.decompress_to_buffer(payload, out).map_err(|e| {
                    Error::corrupt(format!(
                        "zstd payload does not decode within {max} bytes: {e}"
                    ))
                })
            })?;
            if out.len() > max {
                return Err(Error::corrupt("zstd chunk exceeds the maximum chunk size"));
            }
            Ok(())
        }
        c => Err(Error::corrupt(format!("unknown chunk codec {c}"))),
    }
}

/// Decodes an encoded chunk (at most `max` plain bytes).
pub fn decode(encoded: &[u8], max: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decode_into(encoded, max, &mut out)?;
    Ok(out)
}

/// Decodes and checks the plain bytes hash to `id`.
pub fn decode_verified(id: &ChunkId, encoded: &[u8], max: usize) -> Result<Vec<u8>> {
    let out =
        decode(encoded, max).map_err(|e| Error::corrupt(format!("chunk {id} is corrupt: {e}")))?;
    if blake3::hash(&out).as_bytes() != id.as_bytes() {
        return Err(Error::corrupt(format!(
            "chunk {id} is corrupt: hash mismatch"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_uses_zstd_random_stays_raw() {
        let text = b"hello world ".repeat(5000);
        let e = encode(&text);
        assert_eq!(e[0], CODEC_ZSTD);
        assert!(e.len() < text.len() / 10);
        assert_eq!(decode(&e, text.len()).unwrap(), text);

        let rnd = blake3_stream(70_000);
        let e = encode(&rnd);
        assert_eq!(e[0], CODEC_RAW);
        assert_eq!(e.len(), rnd.len() + 1);
        assert_eq!(decode(&e, rnd.len()).unwrap(), rnd);
        assert!(encode(&[])[0] == CODEC_RAW);
    }

    #[test]
    fn sampling_skips_random_but_not_partly_compressible() {
        let mut enc = Encoder::new();
        let rnd = blake3_stream(256 * 1024);
        assert!(enc.looks_incompressible(&rnd));
        assert_eq!(enc.encode(&rnd)[0], CODEC_RAW);
        // Random with a compressible tail (one sample lands in it): compressed.
        let mut mixed = rnd[..192 * 1024].to_vec();
        mixed.extend_from_slice(&b"log line 17 GET /api ok\n".repeat(64 * 1024 / 24));
        assert!(!enc.looks_incompressible(&mixed));
        let e = enc.encode(&mixed);
        assert_eq!(e[0], CODEC_ZSTD);
        assert_eq!(decode(&e, mixed.len()).unwrap(), mixed);
        // Small chunks are always tried whole.
        assert!(!enc.looks_incompressible(&rnd[..16 * 1024]));
    }

    fn blake3_stream(n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        blake3::Hasher::new()
            .update(b"seed")
            .finalize_xof()
            .fill(&mut out);
        out
    }

    #[test]
    fn bomb_is_an_error() {
        let zeros = vec![0u8; 10 << 20];
        let e = encode(&zeros);
        assert_eq!(e[0], CODEC_ZSTD);
        let err = decode(&e, 256 * 1024).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        // Raw chunk over the limit too.
        let mut raw = vec![CODEC_RAW];
        raw.extend_from_slice(&[1u8; 2000]);
        assert!(decode(&raw, 1000).is_err());
        assert!(decode(&[7, 1, 2], 1000)
            .unwrap_err()
            .to_string()
            .contains("codec 7"));
        assert!(decode(&[], 1000).is_err());
        assert!(decode(&[CODEC_ZSTD, 1, 2, 3], 1000).is_err());
    }

    #[test]
    fn verified_decode_detects_mismatch() {
        let data = b"some chunk".to_vec();
        let id = ChunkId(crate::Hash::of(&data));
        let e = encode(&data);
        assert_eq!(decode_verified(&id, &e, 100).unwrap(), data);
        let mut bad = e.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode_verified(&id, &bad, 100)
            .unwrap_err()
            .to_string()
            .contains("hash mismatch"));
    }
}
