//! The devices this store has seen, and which of them it trusts: the peer book.
//!
//! Every device that completes a handshake (it holds the share key) is recorded with when it was
//! first and last seen and from which address. The user can *pin* devices and *revoke* them:
//!
//! - a revoked device is never allowed, whatever else holds;
//! - once any device is pinned, the book is in *pin mode*: only pinned devices are allowed;
//! - otherwise every device holding the share key is allowed.
//!
//! The book lives in `<store_dir>/peers.json`, a small JSON document (device ids in their base32
//! form). It is rewritten atomically (a temp file with mode 0600, fsync, rename, fsync of the
//! folder), so a crash leaves either the old or the new book. Two processes may change it at once
//! (a running `left serve` recording peers while `left peers --pin` runs): every change takes an
//! exclusive `flock` on `<store_dir>/peers.lock`, reloads the file, applies itself and saves, so no
//! change is lost. A long-running process sees others' changes through [`PeerBook::refresh`].
//!
//! The file is read with a size limit ([`MAX_FILE_BYTES`]). A bad file never stops a command: an
//! oversized one (older versions let a flood of device keys grow it past the limit) is salvaged
//! (pinned, revoked and named records kept, the rest cut to the cap), a corrupt one is set aside;
//! either way the original is kept as `peers.json.bad-<unix time>` and a warning says so.
//!
//! **Bounds.** A device is recorded only after it proved the share key and sent a valid `Hello`
//! (the server calls [`PeerBook::record_seen`] then). Records the user made or named (pinned,
//! revoked, or [`PeerRecord::named`]) are never dropped; the others ("seen only") are capped at
//! [`Limits::max_seen`] (the least recently seen go first) and dropped after [`Limits::max_age`]
//! without contact. Sightings are written at most once per [`Limits::write_interval`] (later ones
//! wait in memory, at most `max_seen` of them, and go out with the next write or when the book is
//! dropped); pins and revocations are written at once.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::identity::DeviceId;

/// File name of the peer book inside the store folder.
pub const PEERS_FILE: &str = "peers.json";
/// File name of the lock taken while changing the book.
pub const PEERS_LOCK_FILE: &str = "peers.lock";
/// Largest peer book read (about 30 000 records); a bigger file is refused as malformed.
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// Largest file the salvage of an oversized book reads; beyond it the book is set aside whole.
pub const MAX_SALVAGE_BYTES: u64 = 64 << 20;

/// Bounds of the book (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most records that are neither pinned, revoked nor named (about 250 bytes each on disk).
    pub max_seen: usize,
    /// Such a record not seen for this long is dropped.
    pub max_age: Duration,
    /// Sightings are written at most this often.
    pub write_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_seen: 1024,
            max_age: Duration::from_secs(180 * 24 * 3600),
            write_interval: Duration::from_secs(10),
        }
    }
}

/// What can go wrong loading or saving the peer book.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O failure on a file of the book.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file does not parse, or is too big.
    #[error("peer book {} is malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why (one line).
        reason: String,
    },
    /// The device is not in the book (pin, revoke and their undoing need a device seen before,
    /// except [`PeerBook::pin`] and [`PeerBook::revoke`], which add it).
    #[error("device {device} is not in the peer book")]
    Unknown {
        /// The device.
        device: DeviceId,
    },
    /// [`PeerBook::forget`] of a pinned device.
    #[error("device {device} is pinned: forgetting it would change who may connect; unpin it first (`left peers --unpin`)")]
    Pinned {
        /// The device.
        device: DeviceId,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One device in the book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The device (its public key).
    pub device: DeviceId,
    /// When it was first seen, Unix seconds (0 when added by pin/revoke before ever being seen).
    pub first_seen: i64,
    /// When it was last seen, Unix seconds (0: never).
    pub last_seen: i64,
    /// The address it was last seen at.
    pub last_addr: Option<SocketAddr>,
    /// Pinned by the user: in pin mode only pinned devices are allowed.
    pub pinned: bool,
    /// Revoked by the user: never allowed.
    pub revoked: bool,
    /// A device the user named (reached at an address given to `--peer`): never aged out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub named: bool,
}

impl PeerRecord {
    /// Whether the record is the user's (pinned, revoked or named): never dropped by the bounds.
    pub fn is_kept(&self) -> bool {
        self.pinned || self.revoked || self.named
    }
}

/// The on-disk form.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FileForm {
    version: u32,
    peers: Vec<PeerRecord>,
}

const FILE_VERSION: u32 = 1;

/// Identity of the file last loaded, to notice others' changes cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

/// The devices seen and trusted (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct PeerBook {
    records: Vec<PeerRecord>,
    stamp: Option<Stamp>,
    limits: Limits,
    /// Sightings not written yet: device → (when, where, named).
    pending: HashMap<[u8; 32], (i64, SocketAddr)>,
    /// Addresses the user named (`--peer`): a device seen there is marked named.
    named_addrs: Vec<SocketAddr>,
    /// When sightings were last written.
    last_write: Option<Instant>,
    /// Where `pending` goes when the book is dropped.
    dir: Option<PathBuf>,
}

impl PeerBook {
    /// Reads `<store_dir>/peers.json`; a missing file is an empty book. A malformed or oversized
    /// file is salvaged or set aside with a warning (see the module docs), never an error.
    pub fn load(store_dir: &Path) -> Result<PeerBook> {
        let path = store_dir.join(PEERS_FILE);
        let limits = Limits::default();
        let (records, stamp) = read_or_recover(store_dir, &path, &limits)?;
        Ok(PeerBook {
            records,
            stamp,
            limits,
            pending: HashMap::new(),
            named_addrs: Vec::new(),
            last_write: None,
            dir: Some(store_dir.to_owned()),
        })
    }

    /// The same book with other bounds (tests use small ones).
    pub fn with_limits(mut self, limits: Limits) -> PeerBook {
        self.limits = limits;
        self
    }

    /// Addresses the user named (`left serve --peer`): a device seen at one of them is marked
    /// [`PeerRecord::named`] and never dropped by the bounds.
    pub fn set_named_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.named_addrs = addrs;
    }

    /// Writes the sightings still waiting (the rate limit held them back).
    pub fn flush(&mut self, store_dir: &Path) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.change(store_dir, |_| Ok(()))
    }

    /// Sightings waiting to be written.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Reloads the book if the file changed since it was last read or written by this value
    /// (another process pinned or revoked a device). Returns whether it reloaded.
    pub fn refresh(&mut self, store_dir: &Path) -> Result<bool> {
        let path = store_dir.join(PEERS_FILE);
        if stamp_of(&path)? == self.stamp {
            return Ok(false);
        }
        let (records, stamp) = read_or_recover(store_dir, &path, &self.limits)?;
        self.records = records;
        self.stamp = stamp;
        Ok(true)
    }

    /// Every record, in the order devices were first added.
    pub fn records(&self) -> &[PeerRecord] {
        &self.records
    }

    /// The record of `device`, if any.
    pub fn get(&self, device: &[u8; 32]) -> Option<&PeerRecord> {
        self.records.iter().find(|r| &r.device.0 == device)
    }

    /// Whether any device is pinned (then only pinned devices are allowed).
    pub fn pin_mode(&self) -> bool {
        self.records.iter().any(|r| r.pinned && !r.revoked)
    }

    /// Whether a device may talk to us: never when revoked; when any device is pinned (pin mode),
    /// only pinned ones; otherwise every device holding the share key.
    pub fn allows(&self, device: &[u8; 32]) -> bool {
        match self.get(device) {
            Some(r) if r.revoked => false,
            Some(r) if r.pinned => true,
            _ => !self.pin_mode(),
        }
    }

    /// The allow-list for rdt's `EndpointConfig::allowed_peers`: `Some(pinned devices)` in pin
    /// mode, else `None` (revoked devices must still be refused with [`PeerBook::allows`]).
    pub fn allowed_peers(&self) -> Option<Vec<[u8; 32]>> {
        self.pin_mode().then(|| {
            self.records
                .iter()
                .filter(|r| r.pinned && !r.revoked)
                .map(|r| r.device.0)
                .collect()
        })
    }

    /// Records `device` seen at `addr` now; returns whether the device is new. Call it only for a
    /// device that proved the share key and sent a valid `Hello`. The write is rate-limited
    /// ([`Limits::write_interval`]): a sighting may wait in memory for the next write.
    pub fn record_seen(
        &mut self,
        store_dir: &Path,
        device: [u8; 32],
        addr: SocketAddr,
    ) -> Result<bool> {
        let now = unix_now();
        let new = self.get(&device).is_none() && !self.pending.contains_key(&device);
        if self.pending.len() < self.limits.max_seen.max(1) || self.pending.contains_key(&device) {
            self.pending.insert(device, (now, addr));
        }
        self.dir.get_or_insert_with(|| store_dir.to_owned());
        let due = self
            .last_write
            .is_none_or(|t| t.elapsed() >= self.limits.write_interval);
        if due {
            self.change(store_dir, |_| Ok(()))?;
        }
        Ok(new)
    }

    /// Pins `device` (adding it if never seen) and clears a revocation; saves.
    pub fn pin(&mut self, store_dir: &Path, device: &DeviceId) -> Result<()> {
        self.change(store_dir, |records| {
            let r = entry(records, device);
            r.pinned = true;
            r.revoked = false;
            Ok(())
        })
    }

    /// Revokes `device` (adding it if never seen) and clears a pin; saves.
    pub fn revoke(&mut self, store_dir: &Path, device: &DeviceId) -> Result<()> {
        self.change(store_dir, |records| {
            let r = entry(records, device);
            r.revoked = true;
            r.pinned = false;
            Ok(())
        })
    }

    /// Removes the pin of a device in the book; saves.
    pub fn unpin(&mut self, store_dir: &Path, device: &DeviceId) -> Result<()> {
        self.change(store_dir, |records| {
            existing(records, device)?.pinned = false;
            Ok(())
        })
    }

    /// Forgets `device`: removes its record (and a sighting waiting to be written); saves.
    /// Returns whether a record was removed. A revoked record stays (forgetting must not let a
    /// revoked device back in), and a pinned one is refused with [`Error::Pinned`] (it would
    /// change who may connect; unpin it first). Its `peers/<device>` ref is the caller's to
    /// drop (`left_store::Store::drop_peer_ref`).
    pub fn forget(&mut self, store_dir: &Path, device: &DeviceId) -> Result<bool> {
        self.pending.remove(&device.0);
        self.change(store_dir, |records| {
            match records.iter().position(|r| r.device == *device) {
                Some(i) if records[i].pinned => Err(Error::Pinned { device: *device }),
                Some(i) if records[i].revoked => Ok(false),
                Some(i) => {
                    records.remove(i);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    /// Lifts the revocation of a device in the book; saves.
    pub fn unrevoke(&mut self, store_dir: &Path, device: &DeviceId) -> Result<()> {
        self.change(store_dir, |records| {
            existing(records, device)?.revoked = false;
            Ok(())
        })
    }

    /// The one device of the book whose id starts with `prefix` (case-insensitive). `Ok(None)`
    /// when none does; an error message when the prefix is ambiguous or empty.
    pub fn find_prefix(&self, prefix: &str) -> std::result::Result<Option<DeviceId>, String> {
        let p = prefix.trim().to_ascii_lowercase();
        if p.is_empty() {
            return Err("empty device id".into());
        }
        let mut hits = self
            .records
            .iter()
            .map(|r| r.device)
            .filter(|d| d.to_string().starts_with(&p));
        match (hits.next(), hits.next()) {
            (None, _) => Ok(None),
            (Some(d), None) => Ok(Some(d)),
            (Some(_), Some(_)) => Err(format!(
                "device id prefix {prefix:?} matches several devices; give more characters"
            )),
        }
    }

    /// Locks the book, reloads it, applies `f`, saves when `f` succeeds, and unlocks.
    fn change<T>(
        &mut self,
        store_dir: &Path,
        f: impl FnOnce(&mut Vec<PeerRecord>) -> Result<T>,
    ) -> Result<T> {
        let _lock = BookLock::take(store_dir)?;
        let path = store_dir.join(PEERS_FILE);
        let (mut records, _) = read_or_recover_locked(&path, &self.limits)?;
        let out = f(&mut records)?;
        for (device, (when, addr)) in std::mem::take(&mut self.pending) {
            let named = self.named_addrs.contains(&addr);
            apply_seen(&mut records, device, when, addr, named);
        }
        prune(&mut records, &self.limits, unix_now());
        write_file(&path, &records)?;
        self.last_write = Some(Instant::now());
        self.stamp = stamp_of(&path)?;
        self.records = records;
        Ok(out)
    }
}

impl Drop for PeerBook {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.clone() {
            if let Err(e) = self.flush(&dir) {
                crate::sanitize::eprint_line(&format!(
                    "left: warning: cannot record {} peer(s) in the peer book: {e}",
                    self.pending.len()
                ));
            }
        }
    }
}

fn apply_seen(
    records: &mut Vec<PeerRecord>,
    device: [u8; 32],
    now: i64,
    addr: SocketAddr,
    named: bool,
) {
    match records.iter_mut().find(|r| r.device.0 == device) {
        Some(r) => {
            if r.first_seen == 0 {
                r.first_seen = now;
            }
            r.last_seen = r.last_seen.max(now);
            r.last_addr = Some(addr);
            r.named |= named;
        }
        None => records.push(PeerRecord {
            device: DeviceId(device),
            first_seen: now,
            last_seen: now,
            last_addr: Some(addr),
            pinned: false,
            revoked: false,
            named,
        }),
    }
}

/// Applies the bounds: records the user made or named stay; the others are dropped once not
/// seen for `max_age`, then the least recently seen beyond `max_seen`. Order is kept.
fn prune(records: &mut Vec<PeerRecord>, limits: &Limits, now: i64) {
    let max_age = i64::try_from(limits.max_age.as_secs()).unwrap_or(i64::MAX);
    records
        .retain(|r| r.is_kept() || r.last_seen == 0 || now.saturating_sub(r.last_seen) <= max_age);
    let mut seen: Vec<(i64, usize)> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_kept())
        .map(|(i, r)| (r.last_seen, i))
        .collect();
    if seen.len() <= limits.max_seen {
        return;
    }
    // Newest first; everything past the cap goes.
    seen.sort_by(|a, b| b.cmp(a));
    let drop: std::collections::HashSet<usize> =
        seen[limits.max_seen..].iter().map(|(_, i)| *i).collect();
    let mut i = 0;
    records.retain(|_| {
        let keep = !drop.contains(&i);
        i += 1;
        keep
    });
}

fn entry<'a>(records: &'a mut Vec<PeerRecord>, device: &DeviceId) -> &'a mut PeerRecord {
    let i = match records.iter().position(|r| r.device == *device) {
        Some(i) => i,
        None => {
            records.push(PeerRecord {
                device: *device,
                first_seen: 0,
                last_seen: 0,
                last_addr: None,
                pinned: false,
                revoked: false,
                named: false,
            });
            records.len() - 1
        }
    };
    &mut records[i]
}

fn existing<'a>(records: &'a mut [PeerRecord], device: &DeviceId) -> Result<&'a mut PeerRecord> {
    records
        .iter_mut()
        .find(|r| r.device == *device)
        .ok_or(Error::Unknown { device: *device })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn stamp_of(path: &Path) -> Result<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp {
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// [`read_file`], with a malformed file recovered under the book's lock.
fn read_or_recover(
    store_dir: &Path,
    path: &Path,
    limits: &Limits,
) -> Result<(Vec<PeerRecord>, Option<Stamp>)> {
    match read_file(path) {
        Err(Error::Malformed { .. }) => {
            let _lock = BookLock::take(store_dir)?;
            read_or_recover_locked(path, limits)
        }
        r => r,
    }
}

/// [`read_file`]; a malformed file (the caller holds the lock) is salvaged when it parses (an
/// oversized book: its records bounded by `limits`) or else set aside, the original kept as
/// `peers.json.bad-<unix time>`, with a warning on stderr. Only I/O failures are errors.
fn read_or_recover_locked(
    path: &Path,
    limits: &Limits,
) -> Result<(Vec<PeerRecord>, Option<Stamp>)> {
    let reason = match read_file(path) {
        Err(Error::Malformed { reason, .. }) => reason,
        r => return r,
    };
    let salvaged = salvage(path);
    let backup = {
        let base = format!("{}.bad-{}", path.display(), unix_now());
        let mut b = PathBuf::from(&base);
        let mut n = 1;
        while b.exists() {
            b = PathBuf::from(format!("{base}-{n}"));
            n += 1;
        }
        b
    };
    fs::rename(path, &backup).map_err(io_err(path))?;
    let shown = crate::sanitize::field(&reason);
    match salvaged {
        Some(mut records) => {
            let before = records.len();
            prune(&mut records, limits, unix_now());
            write_file(path, &records)?;
            crate::sanitize::eprint_line(&format!(
                "left: warning: the peer book {} was malformed ({shown}); kept {} of its {before}                  records (every pinned, revoked and named one); the original is {}",
                path.display(),
                records.len(),
                backup.display()
            ));
            Ok((records, stamp_of(path)?))
        }
        None => {
            crate::sanitize::eprint_line(&format!(
                "left: warning: the peer book {} is unreadable ({shown}); it was moved to {} and                  an empty book is used: pin or revoke devices again with `left peers --pin/--revoke`",
                path.display(),
                backup.display()
            ));
            Ok((Vec::new(), None))
        }
    }
}

/// The records of a book that parses but breaks a limit (too big, a device listed twice); `None`
/// when it does not parse or is of another version.
fn salvage(path: &Path) -> Option<Vec<PeerRecord>> {
    let mut buf = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_SALVAGE_BYTES + 1)
        .read_to_end(&mut buf)
        .ok()?;
    if buf.len() as u64 > MAX_SALVAGE_BYTES {
        return None;
    }
    let form: FileForm = serde_json::from_slice(&buf).ok()?;
    if form.version != FILE_VERSION {
        return None;
    }
    let mut out: Vec<PeerRecord> = Vec::new();
    let mut index: HashMap<DeviceId, usize> = HashMap::new();
    for r in form.peers {
        match index.get(&r.device) {
            // A device listed twice: a revocation wins over a pin, flags add up.
            Some(&i) => {
                let o = &mut out[i];
                o.revoked |= r.revoked;
                o.pinned = (o.pinned || r.pinned) && !o.revoked;
                o.named |= r.named;
                if r.last_seen > o.last_seen {
                    o.last_seen = r.last_seen;
                    o.last_addr = r.last_addr;
                }
            }
            None => {
                index.insert(r.device, out.len());
                out.push(r);
            }
        }
    }
    Some(out)
}

fn read_file(path: &Path) -> Result<(Vec<PeerRecord>, Option<Stamp>)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let stamp = stamp_of(path)?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    let malformed = |reason: String| Error::Malformed {
        path: path.to_owned(),
        reason,
    };
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(malformed(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let form: FileForm = serde_json::from_slice(&buf).map_err(|e| malformed(e.to_string()))?;
    if form.version != FILE_VERSION {
        return Err(malformed(format!(
            "version {} (this build reads {FILE_VERSION})",
            form.version
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = form.peers.iter().find(|r| !seen.insert(r.device)) {
        return Err(malformed(format!("device {} listed twice", dup.device)));
    }
    Ok((form.peers, stamp))
}

fn write_file(path: &Path, records: &[PeerRecord]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{PEERS_FILE}.tmp-{}", std::process::id()));
    let form = FileForm {
        version: FILE_VERSION,
        peers: records.to_vec(),
    };
    let mut bytes = serde_json::to_vec_pretty(&form).map_err(|e| Error::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    let write = || -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

/// An exclusive `flock` on `peers.lock`, released on drop (when the file closes).
struct BookLock(#[allow(dead_code)] File);

impl BookLock {
    fn take(store_dir: &Path) -> Result<BookLock> {
        let path = store_dir.join(PEERS_LOCK_FILE);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        loop {
            // SAFETY: flock on a valid descriptor owned by `f`.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(BookLock(f));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(&path)(e));
            }
        }
    }
}

/// Drops the `peers/<device>` ref of every device `book` lists as revoked, so the last snapshot
/// it published no longer keeps bytes alive here (a revocation made while the store was busy,
/// or a sync that stored the ref just after it, can leave one behind). `left gc` calls it
/// first. Refs of devices the book does not list are kept (the book ages out records that were
/// only seen, and such a ref may still hold a head not yet merged): gc reports them, and
/// `left peers --forget DEVICE` drops one. `head` and refs outside `peers/` are never touched.
/// Returns the names of the refs dropped.
pub fn drop_revoked_refs(
    book: &PeerBook,
    store: &left_store::Store,
) -> left_store::Result<Vec<String>> {
    let mut dropped = Vec::new();
    for (name, _) in store.refs()? {
        let Some(d) = name.strip_prefix("peers/") else {
            continue;
        };
        let revoked = d
            .parse::<DeviceId>()
            .ok()
            .and_then(|dev| book.get(&dev.0))
            .is_some_and(|r| r.revoked);
        if revoked && store.drop_peer_ref(d)?.is_some() {
            dropped.push(name);
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A book that writes every sighting at once (no rate limit).
    fn load_now(d: &Path) -> PeerBook {
        PeerBook::load(d).unwrap().with_limits(Limits {
            write_interval: Duration::ZERO,
            ..Limits::default()
        })
    }

    fn device(n: u32) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&n.to_be_bytes());
        d[31] = 0x5a;
        d
    }

    fn ino(d: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(d.join(PEERS_FILE)).unwrap().ino()
    }

    fn backups(d: &Path) -> Vec<PathBuf> {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".bad-"))
            .collect()
    }

    #[test]
    fn a_flood_of_device_keys_is_capped_and_never_drops_the_users_records() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let limits = Limits {
            max_seen: 16,
            write_interval: Duration::ZERO,
            ..Limits::default()
        };
        let mut book = PeerBook::load(d).unwrap().with_limits(limits);
        book.set_named_addrs(vec![addr(99)]);
        let (pinned, revoked, named) = (DeviceId(device(1)), DeviceId(device(2)), device(3));
        book.record_seen(d, pinned.0, addr(1)).unwrap();
        book.record_seen(d, revoked.0, addr(2)).unwrap();
        book.record_seen(d, named, addr(99)).unwrap();
        book.revoke(d, &revoked).unwrap();
        // Not pinned yet: pin mode would keep the flood out before it is ever recorded.
        for n in 0..500 {
            book.record_seen(d, device(1000 + n), addr(5)).unwrap();
        }
        book.pin(d, &pinned).unwrap();
        let back = PeerBook::load(d).unwrap();
        let seen_only = back.records().iter().filter(|r| !r.is_kept()).count();
        let size = fs::metadata(d.join(PEERS_FILE)).unwrap().len();
        eprintln!(
            "500 fresh device keys: {} records, {seen_only} seen-only, {size} bytes",
            back.records().len()
        );
        assert_eq!(seen_only, 16);
        assert!(back.get(&pinned.0).unwrap().pinned);
        assert!(back.get(&revoked.0).unwrap().revoked);
        assert!(back.get(&named).unwrap().named);
        // The most recent ones stay.
        assert!(back.get(&device(1499)).is_some());
        assert!(back.get(&device(1000)).is_none());
    }

    #[test]
    fn records_not_seen_for_long_age_out_but_the_users_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old = unix_now() - 400 * 24 * 3600;
        let rec = |n: u32, pinned: bool, revoked: bool| PeerRecord {
            device: DeviceId(device(n)),
            first_seen: old,
            last_seen: old,
            last_addr: Some(addr(1)),
            pinned,
            revoked,
            named: false,
        };
        write_file(
            &d.join(PEERS_FILE),
            &[
                rec(1, false, false),
                rec(2, true, false),
                rec(3, false, true),
            ],
        )
        .unwrap();
        let mut book = load_now(d);
        book.record_seen(d, device(4), addr(4)).unwrap();
        let back = PeerBook::load(d).unwrap();
        assert!(
            back.get(&device(1)).is_none(),
            "an old seen-only record stays"
        );
        for n in [2, 3, 4] {
            assert!(back.get(&device(n)).is_some(), "record {n} went");
        }
    }

    #[test]
    fn sightings_are_written_at_most_once_per_interval_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut book = PeerBook::load(d).unwrap();
        assert!(book.record_seen(d, device(0), addr(1)).unwrap());
        let first = ino(d);
        for n in 1..300 {
            assert!(book.record_seen(d, device(n), addr(1)).unwrap());
        }
        // Every save renames a new file into place: the same inode means no write.
        assert_eq!(ino(d), first, "the book was rewritten for a sighting");
        assert_eq!(book.pending(), 299);
        assert_eq!(PeerBook::load(d).unwrap().records().len(), 1);
        // A pin is written at once, with the sightings waiting.
        let mut cli = PeerBook::load(d).unwrap();
        cli.pin(d, &DeviceId(device(7))).unwrap();
        drop(book);
        let back = PeerBook::load(d).unwrap();
        assert_eq!(back.records().len(), 300);
        assert!(back.get(&device(7)).unwrap().pinned);
    }

    #[test]
    fn an_oversized_book_is_salvaged_and_a_corrupt_one_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // What a flood left before the bounds: past MAX_FILE_BYTES, unreadable.
        let mut records: Vec<PeerRecord> = (0..40_000)
            .map(|n| PeerRecord {
                device: DeviceId(device(100 + n)),
                first_seen: unix_now() - 10,
                last_seen: unix_now() - 10 + i64::from(n % 7),
                last_addr: Some(addr(2)),
                pinned: false,
                revoked: false,
                named: false,
            })
            .collect();
        records[5].pinned = true;
        records[6].revoked = true;
        write_file(&d.join(PEERS_FILE), &records).unwrap();
        let size = fs::metadata(d.join(PEERS_FILE)).unwrap().len();
        assert!(size > MAX_FILE_BYTES, "{size}");
        assert!(matches!(
            read_file(&d.join(PEERS_FILE)),
            Err(Error::Malformed { .. })
        ));
        let mut book = PeerBook::load(d).unwrap();
        assert!(book.pin_mode());
        assert!(book.allows(&device(105)) && !book.allows(&device(106)));
        assert_eq!(book.records().len(), Limits::default().max_seen + 2);
        assert_eq!(backups(d).len(), 1);
        assert_eq!(fs::metadata(&backups(d)[0]).unwrap().len(), size);
        // `left peers --pin` works on it again.
        book.pin(d, &DeviceId(device(1))).unwrap();
        assert!(PeerBook::load(d).unwrap().get(&device(1)).unwrap().pinned);

        fs::write(d.join(PEERS_FILE), b"{\"version\":1,\"peers\":[{\"dev").unwrap();
        let book = PeerBook::load(d).unwrap();
        assert!(book.records().is_empty());
        assert_eq!(backups(d).len(), 2);
        assert!(!d.join(PEERS_FILE).exists());
    }

    #[test]
    fn empty_book_allows_everyone_and_records_devices() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = load_now(dir.path());
        assert!(book.records().is_empty());
        assert!(book.allows(&[1; 32]));
        assert_eq!(book.allowed_peers(), None);
        assert!(book.record_seen(dir.path(), [1; 32], addr(1)).unwrap());
        assert!(!book.record_seen(dir.path(), [1; 32], addr(2)).unwrap());
        let back = PeerBook::load(dir.path()).unwrap();
        assert_eq!(back.records().len(), 1);
        assert_eq!(back.records()[0].last_addr, Some(addr(2)));
        assert!(back.records()[0].first_seen > 0);
        let mode = fs::metadata(dir.path().join(PEERS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn pin_mode_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut book = load_now(d);
        let (a, b, c) = (DeviceId([1; 32]), DeviceId([2; 32]), DeviceId([3; 32]));
        book.record_seen(d, a.0, addr(1)).unwrap();
        book.record_seen(d, b.0, addr(2)).unwrap();
        book.revoke(d, &b).unwrap();
        assert!(book.allows(&a.0) && !book.allows(&b.0) && book.allows(&c.0));
        assert_eq!(book.allowed_peers(), None);
        book.pin(d, &a).unwrap();
        assert!(book.allows(&a.0) && !book.allows(&b.0) && !book.allows(&c.0));
        assert_eq!(book.allowed_peers(), Some(vec![a.0]));
        // Pinning a revoked device lifts the revocation, and the reverse.
        book.pin(d, &b).unwrap();
        assert!(book.allows(&b.0));
        book.revoke(d, &b).unwrap();
        assert!(!book.allows(&b.0));
        book.unpin(d, &a).unwrap();
        assert!(book.allows(&a.0) && book.allows(&c.0) && !book.allows(&b.0));
        book.unrevoke(d, &b).unwrap();
        assert!(book.allows(&b.0));
        assert!(matches!(
            book.unpin(d, &c),
            Err(Error::Unknown { device }) if device == c
        ));
    }

    #[test]
    fn changes_by_another_handle_are_not_lost_and_refresh_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut serve = load_now(d);
        let mut cli = load_now(d);
        serve.record_seen(d, [1; 32], addr(1)).unwrap();
        cli.revoke(d, &DeviceId([1; 32])).unwrap();
        // The serving handle still holds its old view until it refreshes ...
        assert!(serve.allows(&[1; 32]));
        assert!(serve.refresh(d).unwrap());
        assert!(!serve.allows(&[1; 32]));
        assert!(!serve.refresh(d).unwrap());
        // ... and its next record does not undo the revocation.
        serve.record_seen(d, [2; 32], addr(2)).unwrap();
        let back = PeerBook::load(d).unwrap();
        assert!(back.get(&[1; 32]).unwrap().revoked);
        assert_eq!(back.records().len(), 2);
    }

    #[test]
    fn prefixes_resolve_uniquely() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut book = load_now(d);
        let a = DeviceId([0; 32]); // "aaaa..."
        let b = DeviceId([0xff; 32]); // "7777..."
        book.record_seen(d, a.0, addr(1)).unwrap();
        book.record_seen(d, b.0, addr(1)).unwrap();
        assert_eq!(book.find_prefix("AAA").unwrap(), Some(a));
        assert_eq!(book.find_prefix("77").unwrap(), Some(b));
        assert_eq!(book.find_prefix("b").unwrap(), None);
        assert!(book.find_prefix("").is_err());
        let mut c = [0u8; 32];
        c[31] = 1;
        book.record_seen(d, c, addr(1)).unwrap();
        assert!(book.find_prefix("aaaa").is_err());
    }

    #[test]
    fn bad_files_are_set_aside_not_errors_nor_panics() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let id = DeviceId([5; 32]);
        let rec = format!(
            "{{\"device\":\"{id}\",\"first_seen\":1,\"last_seen\":1,\"last_addr\":null,\"pinned\":false,\"revoked\":true}}"
        );
        let twice = format!("{{\"version\":1,\"peers\":[{rec},{rec}]}}");
        for (n, bad) in [
            &b"not json"[..],
            b"{\"version\":1,\"peers\":[{\"device\":\"xyz\"}]}",
            b"{\"version\":9,\"peers\":[]}",
            twice.as_bytes(),
            &vec![b' '; MAX_FILE_BYTES as usize + 1][..],
        ]
        .into_iter()
        .enumerate()
        {
            fs::write(d.join(PEERS_FILE), bad).unwrap();
            assert!(
                matches!(read_file(&d.join(PEERS_FILE)), Err(Error::Malformed { .. })),
                "{n}"
            );
            let book = PeerBook::load(d).unwrap();
            assert_eq!(backups(d).len(), n + 1, "{n}: no backup");
            if n == 3 {
                // A device listed twice parses: it is kept once, still revoked.
                assert_eq!(book.records().len(), 1);
                assert!(!book.allows(&id.0));
            } else {
                assert!(book.records().is_empty(), "{n}");
            }
        }
    }
}
