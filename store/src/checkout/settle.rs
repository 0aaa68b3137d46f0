//! The settle window: a checkout that finished without fsync leaves a settle record `{from, to,
//! start, end, boot id}` for [`SETTLE_WINDOW_NS`]; in a later boot the paths those checkouts
//! changed are checked again (see "Durability and crashes" in the parent module). This file holds
//! the records, the boot id and the re-check's entry; the walk it runs is the checkout's own.

use super::Mode;
use crate::db::{cf, Batch};
use crate::{CheckoutOptions, CheckoutReport, Error, NodeId, Progress, Result, Store};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Prefix of the settle records in `meta` (`checkout-settle/<end ns, big-endian><to>`).
const SETTLE_PREFIX: &[u8] = b"checkout-settle/";
/// How long after a checkout its files may still be only in the page cache: the kernel writes
/// dirty data back once it is 30 s old (`vm.dirty_expire_centisecs`), every 5 s; four times that
/// for margin.
pub const SETTLE_WINDOW_NS: i64 = 120 * 1_000_000_000;
/// Most settle records kept (the oldest go first).
const SETTLE_MAX: usize = 64;

/// A finished checkout whose files were not fsynced: after a reboot (a different boot id), its
/// paths are checked again, since a power cut may have lost what only the page cache held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Settle {
    from: Option<NodeId>,
    to: NodeId,
    /// When the checkout started and ended (its own files have ctimes in between).
    start_ns: i64,
    end_ns: i64,
    boot: String,
}

impl Store {
    /// This boot's id (`/proc/sys/kernel/random/boot_id`; empty where there is none).
    fn boot_id(&self) -> String {
        if let Some(b) = self.boot_override.lock().expect("boot lock").clone() {
            return b;
        }
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// Test hook: pretend the machine booted again (checkout records and compares this id).
    #[doc(hidden)]
    pub fn debug_set_boot_id(&self, id: Option<&str>) {
        *self.boot_override.lock().expect("boot lock") = id.map(str::to_string);
    }

    /// Test hook: moves the end time of the newest settle record to `end_ns` (as if that
    /// checkout had ended then).
    #[doc(hidden)]
    pub fn debug_set_settle_end(&self, end_ns: i64) -> Result<()> {
        let mut b = Batch::default();
        if let Some((k, mut s)) = self.settle_records()?.pop() {
            s.end_ns = end_ns;
            let v = postcard::to_stdvec(&s).map_err(|e| Error::Invalid(e.to_string()))?;
            b.put(&self.db, cf::META, &k, &v);
        }
        self.db.write(b.inner, true)
    }

    /// Settle records, oldest first.
    fn settle_records(&self) -> Result<Vec<(Vec<u8>, Settle)>> {
        let mut out = Vec::new();
        for r in self.db.iter_prefix(cf::META, SETTLE_PREFIX) {
            let (k, v) = r?;
            let s: Settle = postcard::from_bytes(&v).map_err(|e| {
                Error::corrupt(format!("checkout settle record does not decode: {e}"))
            })?;
            out.push((k.to_vec(), s));
        }
        Ok(out)
    }

    /// Re-checks the finished, unsynced checkouts of an earlier boot, in one walk from the first
    /// one's `from` to the last one's `to`; drops the records of this boot that are older than
    /// [`SETTLE_WINDOW_NS`].
    pub(super) fn settle_after_reboot(
        &self,
        share_root: &Path,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<Option<CheckoutReport>> {
        let boot = self.boot_id();
        let now = crate::store::now_ns();
        let mut b = Batch::default();
        let mut earlier = Vec::new();
        for (key, s) in self.settle_records()? {
            if s.boot != boot {
                earlier.push((key, s));
            } else if s.end_ns < now - SETTLE_WINDOW_NS {
                b.delete(&self.db, cf::META, &key);
            }
        }
        if !b.is_empty() {
            self.db.write(b.inner, false)?;
        }
        let (Some(first), Some(last)) = (earlier.first(), earlier.last()) else {
            return Ok(None);
        };
        let (from, to) = (first.1.from, last.1.to);
        let mode = Mode::Settle {
            windows: earlier
                .iter()
                .map(|(_, s)| (s.start_ns, s.end_ns))
                .collect(),
            keys: earlier.iter().map(|(k, _)| k.clone()).collect(),
        };
        match self.run_checkout(share_root, from, to, opts, progress, mode) {
            Ok(r) => Ok(Some(r)),
            // Their trees are gone (gc): nothing left to compare with.
            Err(Error::NotFound { .. }) => {
                let mut b = Batch::default();
                for (k, _) in &earlier {
                    b.delete(&self.db, cf::META, k);
                }
                self.db.write(b.inner, true)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Puts the settle record of a checkout that just finished without fsync into `b`, and drops
    /// this boot's records past the window (and the oldest beyond [`SETTLE_MAX`]).
    pub(super) fn add_settle(
        &self,
        b: &mut Batch,
        from: Option<NodeId>,
        to: NodeId,
        start_ns: i64,
    ) -> Result<()> {
        let boot = self.boot_id();
        let end_ns = crate::store::now_ns();
        let old = self.settle_records()?;
        let live: Vec<&Vec<u8>> = old
            .iter()
            .filter(|(k, s)| {
                let stale = s.boot == boot && s.end_ns < end_ns - SETTLE_WINDOW_NS;
                if stale {
                    b.delete(&self.db, cf::META, k);
                }
                !stale
            })
            .map(|(k, _)| k)
            .collect();
        for k in live
            .iter()
            .take((live.len() + 1).saturating_sub(SETTLE_MAX))
        {
            b.delete(&self.db, cf::META, k);
        }
        let mut key = SETTLE_PREFIX.to_vec();
        key.extend_from_slice(&end_ns.to_be_bytes());
        key.extend_from_slice(to.as_bytes());
        let s = Settle {
            from,
            to,
            start_ns,
            end_ns,
            boot,
        };
        let v =
            postcard::to_stdvec(&s).map_err(|e| Error::Invalid(format!("settle record: {e}")))?;
        b.put(&self.db, cf::META, &key, &v);
        Ok(())
    }
}
