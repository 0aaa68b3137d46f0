//! The streaming ecp decoder on arbitrary bytes cut at arbitrary points: it must never panic, must
//! decode the same messages (and the same first error) however the stream is split, and every
//! message it accepts must re-encode within the encoder's limits and decode back to itself.
//!
//! Input layout: two bytes seed the split points, the rest is the stream.
#![no_main]
use left::ecp::{decode_frame, encode, DecodeError, Decoder, Message};
use libfuzzer_sys::fuzz_target;

/// Decodes `stream` fed in pieces whose lengths come from `seed`; returns the messages and the
/// first error (the decoder's errors are final).
fn decode_split(stream: &[u8], seed: u16) -> (Vec<Message>, Option<DecodeError>) {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut x = u32::from(seed) | 1;
    let mut rest = stream;
    while !rest.is_empty() {
        // xorshift32 picks the next piece length: mostly small, sometimes whole frames.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = match x % 4 {
            0 => 1,
            1 => (x >> 8) as usize % 8 + 1,
            2 => (x >> 8) as usize % 300 + 1,
            _ => rest.len(),
        }
        .min(rest.len());
        let mut piece = &rest[..n];
        rest = &rest[n..];
        loop {
            match dec.decode(&mut piece) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => {
                    // Errors are sticky.
                    assert_eq!(dec.decode(&mut &b"\0\0\0\x02\x01\x0c"[..]), Err(e.clone()));
                    return (out, Some(e));
                }
            }
        }
        assert!(piece.is_empty(), "Ok(None) left input unread");
        assert!(
            dec.buffered() <= left::ecp::LEN_PREFIX + left::ecp::MAX_FRAME_LEN,
            "decoder buffered {} bytes",
            dec.buffered()
        );
    }
    (out, None)
}

/// Decodes `stream` frame by frame with [`decode_frame`] on the whole buffer.
fn decode_whole(stream: &[u8]) -> (Vec<Message>, Option<DecodeError>) {
    let mut out = Vec::new();
    let mut rest = stream;
    loop {
        match decode_frame(rest) {
            Ok((m, used)) => {
                assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
                out.push(m);
            }
            Err(DecodeError::Incomplete) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let seed = u16::from_le_bytes([data[0], data[1]]);
    let stream = &data[2..];
    let split = decode_split(stream, seed);
    let whole = decode_whole(stream);
    assert_eq!(split, whole, "splitting the stream changed what it decodes to");
    for m in &split.0 {
        let frame = encode(m).unwrap_or_else(|e| panic!("decoded {m:?} does not re-encode: {e}"));
        let (back, used) = decode_frame(&frame).expect("re-encoded frame decodes");
        assert_eq!(used, frame.len());
        assert_eq!(&back, m, "re-encoding changed the message");
    }
});
