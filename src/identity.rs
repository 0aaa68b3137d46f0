//! Device identity and share key files.
//!
//! Every store holds two secrets, created once by `left init` and never rewritten:
//!
//! - `identity`: this device's X25519 static secret (32 raw bytes, file mode 0600). Its public key is
//!   the device id: it is recorded in every snapshot this device makes, and a later issue uses it as
//!   the Noise static key, so peers can pin or revoke a device.
//! - `share.key`: 32 random bytes (mode 0600), the pre-shared key a later issue mixes into the
//!   handshake so only devices that know it can talk about the share.
//!
//! Both come from the operating system's random source. The files are created with `O_EXCL` and mode
//! 0600 from the start, so a secret is never readable by others, not even for an instant, and an
//! existing key is never overwritten. This module does no key exchange itself.
//!
//! The device id is printed as [`DeviceId`]'s `Display`: 52 lowercase RFC 4648 base32 characters
//! without padding (copyable, no ambiguous case), parsed back by `FromStr` (and serialised as that
//! string). The share key is printed the same way by [`format_share_key`] (`left share-key`) and
//! read back by [`parse_share_key`], which also takes 64 hex digits; `left init --join KEY` writes
//! a given key with [`save_share_key`], under the same `O_EXCL`, mode 0600 rules.
#![warn(missing_docs)]

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::TryRngCore;
use x25519_dalek::{PublicKey, StaticSecret};

/// File name of the device's X25519 secret inside the store folder.
pub const IDENTITY_FILE: &str = "identity";
/// File name of the share's pre-shared key inside the store folder.
pub const SHARE_KEY_FILE: &str = "share.key";

/// Length in bytes of both secrets.
const KEY_LEN: usize = 32;

/// What can go wrong reading or writing the key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file is missing: the store was not made by `left init`.
    #[error("no key file at {path} (run `left init`)")]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// The key file already exists; keys are never overwritten.
    #[error("key file {path} already exists")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The file exists but does not hold exactly 32 bytes.
    #[error("key file {path} is malformed: expected {KEY_LEN} bytes, found {len}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its length in bytes (capped at what was read).
        len: u64,
    },
    /// Another I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The operating system's random source failed.
    #[error("cannot read the OS random source: {0}")]
    Random(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A device's public key, which is its id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub [u8; KEY_LEN]);

/// A device's X25519 static key pair, loaded from or saved to the store folder.
pub struct Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl Identity {
    /// Generates a new key pair from the OS random source.
    pub fn generate() -> Result<Identity> {
        Ok(Identity::from_secret(random_bytes()?))
    }

    /// Builds the key pair from a 32-byte secret (clamping happens in the X25519 operation).
    pub fn from_secret(secret: [u8; KEY_LEN]) -> Identity {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret);
        Identity { secret, public }
    }

    /// Writes the secret to `store_dir/identity` (mode 0600); fails if the file exists.
    pub fn save(&self, store_dir: &Path) -> Result<()> {
        write_secret(&store_dir.join(IDENTITY_FILE), &self.secret.to_bytes())
    }

    /// Reads `store_dir/identity`.
    pub fn load(store_dir: &Path) -> Result<Identity> {
        Ok(Identity::from_secret(read_secret(
            &store_dir.join(IDENTITY_FILE),
        )?))
    }

    /// The device id (public key).
    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.public.to_bytes())
    }

    /// The X25519 static secret, for the handshake of a later issue.
    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

impl fmt::Debug for Identity {
    // Never print the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("device", &self.device_id())
            .finish_non_exhaustive()
    }
}

/// Creates `store_dir/share.key` with 32 random bytes (mode 0600); fails if the file exists.
pub fn create_share_key(store_dir: &Path) -> Result<()> {
    write_secret(&store_dir.join(SHARE_KEY_FILE), &random_bytes()?)
}

/// Creates `store_dir/share.key` holding `key` (mode 0600); fails if the file exists. Used by
/// `left init --join`, so a second device shares the first one's key.
pub fn save_share_key(store_dir: &Path, key: &[u8; KEY_LEN]) -> Result<()> {
    write_secret(&store_dir.join(SHARE_KEY_FILE), key)
}

/// The printable form of a share key: 52 lowercase base32 characters, like a device id.
pub fn format_share_key(key: &[u8; KEY_LEN]) -> String {
    base32_encode(key)
}

/// Error returned when a string is not a share key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a share key: expected 52 base32 characters (a-z, 2-7) as `left share-key` prints, or 64 hex digits")]
pub struct ParseShareKeyError;

/// Parses a share key as [`format_share_key`] prints it (any case), or as 64 hex digits.
/// Surrounding white space is ignored.
pub fn parse_share_key(s: &str) -> std::result::Result<[u8; KEY_LEN], ParseShareKeyError> {
    let s = s.trim();
    if s.len() == 2 * KEY_LEN && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut key = [0u8; KEY_LEN];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| ParseShareKeyError)?;
            key[i] = u8::from_str_radix(text, 16).map_err(|_| ParseShareKeyError)?;
        }
        return Ok(key);
    }
    // The base32 form has the same shape as a device id.
    s.parse::<DeviceId>()
        .map(|d| d.0)
        .map_err(|_| ParseShareKeyError)
}

/// Reads `store_dir/share.key`.
pub fn load_share_key(store_dir: &Path) -> Result<[u8; KEY_LEN]> {
    read_secret(&store_dir.join(SHARE_KEY_FILE))
}

impl DeviceId {
    /// First 8 characters of the base32 form, for logs and listings.
    pub fn fmt_short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32_encode(&self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// Error returned when a string is not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a device id: expected 52 base32 characters (a-z, 2-7)")]
pub struct ParseDeviceIdError;

impl FromStr for DeviceId {
    type Err = ParseDeviceIdError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bytes = base32_decode(s.trim()).ok_or(ParseDeviceIdError)?;
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| ParseDeviceIdError)?;
        // Reject non-canonical spellings (stray low bits in the last character).
        if base32_encode(&arr) != s.trim().to_ascii_lowercase() {
            return Err(ParseDeviceIdError);
        }
        Ok(DeviceId(arr))
    }
}

impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The project's one base32 (conflict copies name devices the same way).
fn base32_encode(bytes: &[u8]) -> String {
    left_store::base32::encode(bytes)
}

fn base32_decode(s: &str) -> Option<Vec<u8>> {
    left_store::base32::decode(s)
}

fn random_bytes() -> Result<[u8; KEY_LEN]> {
    let mut buf = [0u8; KEY_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| Error::Random(e.to_string()))?;
    Ok(buf)
}

fn write_secret(path: &Path, bytes: &[u8; KEY_LEN]) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::AlreadyExists {
                path: path.to_owned(),
            },
            _ => io_err(e),
        })?;
    // The umask can only remove bits, but make the mode explicit anyway.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

fn read_secret(path: &Path) -> Result<[u8; KEY_LEN]> {
    let file = fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::Missing {
            path: path.to_owned(),
        },
        _ => Error::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    // Read at most one byte more than a key, so a huge file cannot make us allocate.
    let mut buf = Vec::with_capacity(KEY_LEN + 1);
    file.take(KEY_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Io {
            path: path.to_owned(),
            source: e,
        })?;
    buf.try_into().map_err(|b: Vec<u8>| Error::Malformed {
        path: path.to_owned(),
        len: b.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trip_and_rfc4648_vectors() {
        // RFC 4648 section 10 test vectors (lowercase, unpadded).
        assert_eq!(base32_encode(b"f"), "my");
        assert_eq!(base32_encode(b"fo"), "mzxq");
        assert_eq!(base32_encode(b"foo"), "mzxw6");
        assert_eq!(base32_encode(b"foobar"), "mzxw6ytboi");
        let id = DeviceId([0xa5; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 52);
        assert_eq!(s.parse::<DeviceId>().unwrap(), id);
        assert_eq!(s.to_uppercase().parse::<DeviceId>().unwrap(), id);
        assert!("xyz".parse::<DeviceId>().is_err());
        assert!(s[..51].parse::<DeviceId>().is_err());
    }

    #[test]
    fn save_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate().unwrap();
        id.save(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Identity::load(dir.path()).unwrap();
        assert_eq!(back.device_id(), id.device_id());
        assert!(matches!(
            Identity::generate().unwrap().save(dir.path()),
            Err(Error::AlreadyExists { .. })
        ));
        create_share_key(dir.path()).unwrap();
        let k1 = load_share_key(dir.path()).unwrap();
        assert_ne!(k1, [0u8; 32]);
        assert!(create_share_key(dir.path()).is_err());
    }

    #[test]
    fn share_keys_print_parse_and_save() {
        let key = [0x3c; 32];
        let text = format_share_key(&key);
        assert_eq!(text.len(), 52);
        assert_eq!(parse_share_key(&text).unwrap(), key);
        assert_eq!(
            parse_share_key(&format!("  {}\n", text.to_uppercase())).unwrap(),
            key
        );
        assert_eq!(parse_share_key(&"3c".repeat(32)).unwrap(), key);
        for bad in ["", "abc", &text[..51], &"3c".repeat(31), &"zz".repeat(32)] {
            assert_eq!(parse_share_key(bad), Err(ParseShareKeyError), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        save_share_key(dir.path(), &key).unwrap();
        assert_eq!(load_share_key(dir.path()).unwrap(), key);
        let mode = fs::metadata(dir.path().join(SHARE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            save_share_key(dir.path(), &[1; 32]),
            Err(Error::AlreadyExists { .. })
        ));
    }

    #[test]
    fn device_ids_serialise_as_their_text() {
        let id = DeviceId([7; 32]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<DeviceId>("\"nope\"").is_err());
    }

    #[test]
    fn malformed_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Identity::load(dir.path()),
            Err(Error::Missing { .. })
        ));
        fs::write(dir.path().join(IDENTITY_FILE), [1u8; 40]).unwrap();
        assert!(matches!(
            Identity::load(dir.path()),
            Err(Error::Malformed { len: 33, .. })
        ));
    }
}
