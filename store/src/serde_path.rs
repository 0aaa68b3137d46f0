//! Paths in JSON: the text when the path is UTF-8, else its bytes as an array, so non-UTF-8 names
//! survive a trip through `serde_json` (serde's own `PathBuf` encoding refuses them).
//!
//! Use with `#[serde(with = "left_store::serde_path")]` on a `PathBuf` field and
//! `#[serde(with = "left_store::serde_path::many")]` on a `Vec<PathBuf>`. The encoding is a format:
//! the control socket's replies carry it (golden test `control_socket_lines_are_stable`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WirePath {
    Text(String),
    Bytes(Vec<u8>),
}

impl WirePath {
    fn of(p: &Path) -> WirePath {
        match p.to_str() {
            Some(s) => WirePath::Text(s.to_owned()),
            None => WirePath::Bytes(p.as_os_str().as_bytes().to_vec()),
        }
    }

    fn into_path(self) -> PathBuf {
        match self {
            WirePath::Text(s) => PathBuf::from(s),
            WirePath::Bytes(b) => PathBuf::from(OsString::from_vec(b)),
        }
    }
}

/// Serializes one path.
pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    WirePath::of(p).serialize(s)
}

/// Deserializes one path.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    WirePath::deserialize(d).map(WirePath::into_path)
}

/// The same for a list of paths.
pub mod many {
    use super::*;

    /// Serializes a list of paths.
    pub fn serialize<S: Serializer>(ps: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ps.iter().map(|p| WirePath::of(p)))
    }

    /// Deserializes a list of paths.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Vec::<WirePath>::deserialize(d).map(|v| v.into_iter().map(WirePath::into_path).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct T {
        #[serde(with = "super")]
        one: PathBuf,
        #[serde(with = "super::many")]
        many: Vec<PathBuf>,
    }

    #[test]
    fn text_and_bytes_round_trip() {
        let raw = PathBuf::from(OsString::from_vec(b"a\xffb".to_vec()));
        let t = T {
            one: "x/y".into(),
            many: vec![raw, "z".into()],
        };
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, r#"{"one":"x/y","many":[[97,255,98],"z"]}"#);
        assert_eq!(serde_json::from_str::<T>(&text).unwrap(), t);
    }
}
