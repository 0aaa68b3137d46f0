//! Object ids: 32-byte BLAKE3 hashes and their typed newtypes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A 32-byte BLAKE3 hash. Display/Debug print lowercase hex.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }
    /// First 12 hex characters, for humans.
    pub fn fmt_short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Parses a hex string of any length <= 64 into (prefix bytes, has odd nibble); used for prefixes.
    pub(crate) fn hex_nibbles(s: &str) -> Option<Vec<u8>> {
        s.bytes()
            .map(|c| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error from parsing a hex hash.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a 64-character hex hash: {0:?}")]
pub struct ParseHashError(String);

impl FromStr for Hash {
    type Err = ParseHashError;
    fn from_str(s: &str) -> Result<Hash, ParseHashError> {
        let nib = Hash::hex_nibbles(s).ok_or_else(|| ParseHashError(s.to_string()))?;
        if nib.len() != 64 {
            return Err(ParseHashError(s.to_string()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in nib.chunks(2).enumerate() {
            out[i] = pair[0] << 4 | pair[1];
        }
        Ok(Hash(out))
    }
}

macro_rules! newtype {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(
            Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
        )]
        pub struct $name(pub Hash);

        impl $name {
            /// First 12 hex characters.
            pub fn fmt_short(&self) -> String {
                self.0.fmt_short()
            }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0 .0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl FromStr for $name {
            type Err = ParseHashError;
            fn from_str(s: &str) -> Result<Self, ParseHashError> {
                Hash::from_str(s).map($name)
            }
        }
    };
}

newtype!(ChunkId, "Id of a chunk: BLAKE3 of its plain bytes.");
newtype!(NodeId, "Id of a node: BLAKE3 of its encoding.");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"abc");
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(
            s,
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(s.parse::<Hash>().unwrap(), h);
        assert_eq!(h.fmt_short(), "6437b3ac3846");
        assert!("xyz".parse::<Hash>().is_err());
        assert!(s[..63].parse::<Hash>().is_err());
    }
}
