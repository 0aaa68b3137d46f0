//! The scan cache: what `add` and `checkout` record of each file they read or wrote, so the next
//! `add` can trust an unchanged stat instead of reading the file again.
//!
//! - [`Stat`] is the part of a file's metadata the cache compares (size, mtime, ctime, inode,
//!   permission bits) and the 68-byte record kept per path in the `scan` column family, with its
//!   flags ([`REC_RACY`], [`REC_CUT_HERE`]) in the mode word's high bits.
//! - [`Seen`] is what a checkout saw at a path it could not write (`meta/unwritten/<path>`), which
//!   `add` compares to decide the disk still shows the old version.
//! - [`TMP_PREFIX`] names the temporary files of checkout and restore ([`tmp_name`]), which a scan
//!   never reads.
//!
//! What this module is not: it reads no folder and writes no record itself (add's walk and the
//! checkout do, in their own batches); it decides nothing about racy reads beyond [`Stat::racy`].
use crate::ids::{Hash, NodeId};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A unique hidden temporary name: `.left-tmp-<16 hex>`.
pub(crate) fn tmp_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut seed = Vec::with_capacity(32);
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    seed.extend_from_slice(&crate::store::now_ns().to_le_bytes());
    let h = Hash::of(&seed);
    format!("{TMP_PREFIX}{}", &h.to_string()[..16])
}

/// A scan record is *racy* when the file's mtime is within this of the moment its read started
/// (or later): 2 s. A write right after the read changes the stat only if it gets a new mtime (and
/// ctime), and a timestamp is the filesystem's clock when the write starts, rounded to its
/// granularity: ext4, xfs and btrfs take it from the kernel's coarse clock (a tick of 1-10 ms);
/// ext3, HFS+ and some NFS servers keep whole seconds, FAT and exFAT 2 s for mtime. So a file
/// whose mtime is more than 2 s before its read started gets a different mtime from any later
/// write. Costs one re-read of each file written within 2 s before an add, at the next add.
///
/// The ctime is not looked at (as git's racy check): a later write that then puts the mtime back
/// (`cp -p`, `rsync -t`, `tar x`) changes the ctime, which the stat compares, unless all of it
/// happens in the very tick of the ctime recorded, with the same size and the very same old mtime.
/// Counting a recent ctime as racy would instead re-read, once, every file recently linked,
/// renamed, chmodded or put in place with its old mtime (a hard-linked benchmark input, every file
/// a checkout writes): a cost on every such add for a race that needs a writer to restore the
/// exact mtime within one clock tick.
pub(crate) const RACY_MARGIN_NS: i64 = 2_000_000_000;

/// Prefix of the temporary files of checkout and restore (never scanned by `add`).
pub const TMP_PREFIX: &str = ".left-tmp-";
/// Scan record flags, kept in the high bits of the mode word (a mode never uses bits above
/// 0o7777), so a record stays 68 bytes (gc keeps only 68-byte records) and old records read as
/// "no flags". The record may be stale: read the file again even if its stat matches.
pub(crate) const REC_RACY: u32 = 1 << 31;
/// The record's file node was cut by this store's `add` (FastCDC with the store's sizes), so its
/// cuts may be reused ([`chunker::CutCheck`]); not set by checkout, whose nodes come from peers.
pub(crate) const REC_CUT_HERE: u32 = 1 << 30;
pub(crate) const REC_FLAGS: u32 = REC_RACY | REC_CUT_HERE;

/// What the scan cache records of a file (and compares to decide it is unchanged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) ino: u64,
    pub(crate) mode: u32,
}

impl Stat {
    pub(crate) fn of(m: &fs::Metadata) -> Stat {
        Stat {
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            mode: m.mode() & 0o7777,
        }
    }
    /// From a raw `stat` (as `fstatat` fills it).
    pub(crate) fn of_raw(st: &crate::fs::RawStat) -> Stat {
        Stat {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
            ino: st.st_ino,
            mode: st.st_mode & 0o7777,
        }
    }
    /// A scan record without flags (not racy, node not known to be cut here).
    pub(crate) fn cache_bytes(&self, node: NodeId) -> [u8; 68] {
        self.record_bytes(node, 0)
    }
    /// A scan record with `flags` (`REC_*`) in the high bits of the mode word.
    pub(crate) fn record_bytes(&self, node: NodeId, flags: u32) -> [u8; 68] {
        let mut b = [0u8; 68];
        b[..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..16].copy_from_slice(&self.mtime_ns.to_le_bytes());
        b[16..24].copy_from_slice(&self.ctime_ns.to_le_bytes());
        b[24..32].copy_from_slice(&self.ino.to_le_bytes());
        b[32..36].copy_from_slice(&((self.mode & !REC_FLAGS) | (flags & REC_FLAGS)).to_le_bytes());
        b[36..].copy_from_slice(node.as_bytes());
        b
    }
    /// The stat and node of a scan record, and whether it is racy (its file may have changed
    /// within its timestamp tick after it was read).
    pub(crate) fn from_cache_racy(b: &[u8]) -> Option<(Stat, NodeId, bool)> {
        Stat::from_record(b).map(|(st, node, f)| (st, node, f & REC_RACY != 0))
    }
    /// The stat, node and flags (`REC_*`) of a scan record.
    pub(crate) fn from_record(b: &[u8]) -> Option<(Stat, NodeId, u32)> {
        if b.len() != 68 {
            return None;
        }
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8"));
        let mode = u32::from_le_bytes(b[32..36].try_into().expect("4"));
        Some((
            Stat {
                size: u(0..8),
                mtime_ns: u(8..16) as i64,
                ctime_ns: u(16..24) as i64,
                ino: u(24..32),
                mode: mode & !REC_FLAGS,
            },
            NodeId(Hash(b[36..].try_into().expect("32"))),
            mode & REC_FLAGS,
        ))
    }
    /// Whether a record of this stat, for a read that started at `started` and ended at `ended`
    /// (ns), is racy: its mtime is not clearly older than the read ([`RACY_MARGIN_NS`]). An mtime
    /// far in the future (a clock set back, a `touch -d`) is not racy: a later write gets a
    /// timestamp of now, which differs from it.
    pub(crate) fn racy(&self, started: i64, ended: i64) -> bool {
        self.mtime_ns >= started.saturating_sub(RACY_MARGIN_NS)
            && self.mtime_ns <= ended.saturating_add(RACY_MARGIN_NS)
    }
}

/// What a checkout saw on disk at a path it could not write (`present: false`: nothing there).
/// While the disk still shows exactly this, `add` keeps the head's entry for the path (the
/// version the checkout meant to write) instead of publishing the old bytes as a local change,
/// and every later checkout tries the path again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seen {
    present: bool,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    mode: u32,
}

impl Seen {
    /// Nothing there.
    pub(crate) const ABSENT: Seen = Seen {
        present: false,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        ino: 0,
        mode: 0,
    };

    pub(crate) fn present(s: Stat, mode: u32) -> Seen {
        Seen {
            present: true,
            size: s.size,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.ctime_ns,
            ino: s.ino,
            mode,
        }
    }

    /// From `lstat` (`None`: nothing there).
    pub(crate) fn of(st: Option<&crate::fs::RawStat>) -> Seen {
        st.map_or(Seen::ABSENT, |st| {
            Seen::present(Stat::of_raw(st), st.st_mode)
        })
    }

    /// The same from `fs::symlink_metadata`.
    pub(crate) fn of_meta(m: Option<&std::fs::Metadata>) -> Seen {
        use std::os::unix::fs::MetadataExt;
        m.map_or(Seen::ABSENT, |m| Seen::present(Stat::of(m), m.mode()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_names_are_hidden_and_unique() {
        let a = tmp_name();
        let b = tmp_name();
        assert!(a.starts_with(TMP_PREFIX) && a.len() == TMP_PREFIX.len() + 16);
        assert_ne!(a, b);
    }

    fn stat() -> Stat {
        Stat {
            size: 123_456,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_001_000_000_001,
            ino: 987_654,
            mode: 0o4755,
        }
    }

    #[test]
    fn scan_records_keep_their_format() {
        let node = NodeId(Hash::of(b"node"));
        // A record as add wrote it before flags existed (and as checkout writes it).
        let mut old = Vec::new();
        old.extend_from_slice(&123_456u64.to_le_bytes());
        old.extend_from_slice(&1_700_000_000_123_456_789i64.to_le_bytes());
        old.extend_from_slice(&1_700_000_001_000_000_001i64.to_le_bytes());
        old.extend_from_slice(&987_654u64.to_le_bytes());
        old.extend_from_slice(&0o4755u32.to_le_bytes());
        old.extend_from_slice(node.as_bytes());
        assert_eq!(old.len(), 68);
        assert_eq!(stat().cache_bytes(node).to_vec(), old);
        assert_eq!(Stat::from_record(&old), Some((stat(), node, 0)));
        for flags in [REC_CUT_HERE, REC_RACY | REC_CUT_HERE, REC_RACY] {
            let b = stat().record_bytes(node, flags);
            assert_eq!(b.len(), 68, "gc keeps only 68-byte records");
            assert_eq!(Stat::from_record(&b), Some((stat(), node, flags)));
            // Checkout's view: the stat without the flags, and whether the record is racy.
            assert_eq!(
                Stat::from_cache_racy(&b),
                Some((stat(), node, flags & REC_RACY != 0))
            );
        }
        assert_eq!(Stat::from_record(&old[..67]), None);
    }

    #[test]
    fn racy_is_a_time_near_the_read() {
        let s = 1_000_000_000_000i64;
        let e = s + 5_000_000;
        let at = |m: i64, c: i64| Stat {
            mtime_ns: m,
            ctime_ns: c,
            ..stat()
        };
        let old = s - RACY_MARGIN_NS - 1;
        assert!(!at(old, old).racy(s, e));
        assert!(
            at(s - RACY_MARGIN_NS, old).racy(s, e),
            "mtime at the margin"
        );
        assert!(at(s - 1, old).racy(s, e), "mtime just before the read");
        assert!(at(e, e).racy(s, e), "changed during the read");
        // Only the mtime counts (see RACY_MARGIN_NS).
        assert!(!at(old, e).racy(s, e), "recent ctime, old mtime");
        // Far in the future (a clock set back, touch -d): a later write changes it anyway.
        assert!(!at(e + RACY_MARGIN_NS + 1, old).racy(s, e));
    }
}
