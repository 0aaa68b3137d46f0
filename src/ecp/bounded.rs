//! Serde helpers that enforce a limit while decoding, before allocating: bounded lists, byte strings
//! and text. Postcard announces a list's length up front, so an oversize list is refused on its
//! length alone.

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::Serializer;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

thread_local! {
    /// The last limit violation seen while decoding on this thread. postcard replaces custom
    /// error texts with a generic one, so the visitors leave theirs here for the decoder.
    static VIOLATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn violation<E: de::Error>(text: String) -> E {
    let e = E::custom(&text);
    VIOLATION.with(|v| *v.borrow_mut() = Some(text));
    e
}

/// Takes (and clears) the last limit violation recorded on this thread.
pub fn take_violation() -> Option<String> {
    VIOLATION.with(|v| v.borrow_mut().take())
}

struct VecVisitor<T, const N: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for VecVisitor<T, N> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of at most {N} items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        if let Some(n) = seq.size_hint() {
            if n > N {
                return Err(violation(format!(
                    "list of {n} items exceeds the limit of {N}"
                )));
            }
        }
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
        while let Some(item) = seq.next_element()? {
            if out.len() == N {
                return Err(violation(format!("list exceeds the limit of {N} items")));
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// Deserializes a list of at most `N` items.
pub fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>, const N: usize>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(VecVisitor::<T, N>(PhantomData))
}

struct BytesVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for BytesVisitor<N> {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "at most {N} bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        if v.len() > N {
            return Err(violation(format!(
                "{} bytes exceed the limit of {N}",
                v.len()
            )));
        }
        Ok(v.to_vec())
    }
}

/// Deserializes a byte string of at most `N` bytes.
pub fn bytes<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor::<N>)
}

/// Serializes a byte string compactly (length, then the bytes).
pub fn ser_bytes<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

struct TextVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for TextVisitor<N> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "UTF-8 text of at most {N} bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if v.len() > N {
            return Err(violation(format!(
                "text of {} bytes exceeds the limit of {N}",
                v.len()
            )));
        }
        Ok(v.to_owned())
    }
}

/// Deserializes UTF-8 text of at most `N` bytes.
pub fn text<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<String, D::Error> {
    d.deserialize_string(TextVisitor::<N>)
}
