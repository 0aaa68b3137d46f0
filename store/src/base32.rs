//! Lowercase RFC 4648 base32 without padding: how device ids, share keys and the device part of
//! conflict names are spelled (`left id` prints 52 such characters for 32 bytes). One encoding
//! for the whole project, on the `data-encoding` crate; the spelling is a format that other
//! versions read (golden vectors in tests/it/golden.rs).
//!
//! What this module is not: it knows nothing of what the bytes are (keys, ids); callers check
//! lengths.

use data_encoding::{Encoding, Specification};
use std::sync::OnceLock;

fn lower() -> &'static Encoding {
    static ENCODING: OnceLock<Encoding> = OnceLock::new();
    ENCODING.get_or_init(|| {
        let mut spec = Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
        // Upper case reads as lower case; padding and stray trailing bits are refused, so each
        // byte string has exactly one accepted spelling per case.
        spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
        spec.check_trailing_bits = true;
        spec.encoding().expect("a valid base32 specification")
    })
}

/// `bytes` as lowercase base32, unpadded.
pub fn encode(bytes: &[u8]) -> String {
    lower().encode(bytes)
}

/// The bytes `s` spells in base32 (either case, unpadded, canonical trailing bits); `None` when
/// it is not such a spelling.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    lower().decode(s.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_lowercase_unpadded_and_either_case_decodes() {
        for (plain, text) in [
            (&b""[..], ""),
            (b"f", "my"),
            (b"fo", "mzxq"),
            (b"foo", "mzxw6"),
            (b"foob", "mzxw6yq"),
            (b"fooba", "mzxw6ytb"),
            (b"foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(encode(plain), text);
            assert_eq!(decode(text).as_deref(), Some(plain));
            assert_eq!(decode(&text.to_uppercase()).as_deref(), Some(plain));
        }
        // "mz" would leave stray bits in the last character; "m" is no length base32 has.
        assert_eq!(decode("mz"), None);
        assert_eq!(decode("m"), None);
        assert_eq!(decode("my=="), None);
        assert_eq!(decode("m1"), None);
    }
}
