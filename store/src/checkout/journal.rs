//! The checkout journal: the `{from, to}` record written (synced) before a checkout touches the
//! folder and deleted with the batch that moves `head`, and what reads it: finishing a checkout a
//! crash cut short ([`Store::resume_checkout`]) or dropping it ([`Store::abort_checkout`]). It is
//! not the walk itself (see the parent module) nor the settle records of finished checkouts
//! (`settle`).

use super::{absorb, Mode};
use crate::db::{cf, Batch};
use crate::{CheckoutOptions, CheckoutReport, Error, NodeId, Progress, Result, Store};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Key of the checkout journal in the `meta` column family.
pub(super) const JOURNAL_KEY: &[u8] = b"checkout";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    from: Option<NodeId>,
    to: NodeId,
}

impl Store {
    /// The checkout a crash (or an error) cut short, if any: (from, to).
    pub fn pending_checkout(&self) -> Result<Option<(Option<NodeId>, NodeId)>> {
        match self.db.get(cf::META, JOURNAL_KEY)? {
            None => Ok(None),
            Some(b) => {
                let j: Journal = postcard::from_bytes(&b).map_err(|e| {
                    Error::corrupt(format!("checkout journal does not decode: {e}"))
                })?;
                Ok(Some((j.from, j.to)))
            }
        }
    }

    /// Finishes a checkout a crash cut short (a no-op returning `None` when there is none): paths
    /// already at their `to` version are skipped (rehashing those whose stat does not say so),
    /// temporary files the crash left are removed, the rest is done as the checkout would have.
    ///
    /// First, after a reboot, it re-checks the checkouts that finished without fsync shortly
    /// before it (settle records, see the module documentation): a path such a checkout wrote
    /// that a power cut took back to its old bytes, or left short, is written again; a path
    /// changed after that checkout is left alone. Call it when a process that owns the store
    /// starts (`checkout` does this part too).
    pub fn resume_checkout(
        &self,
        share_root: &Path,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<Option<CheckoutReport>> {
        if self.is_read_only() {
            return Ok(None);
        }
        let mut out = self.settle_after_reboot(share_root, opts, progress)?;
        if let Some((from, to)) = self.pending_checkout()? {
            let r = self.run_checkout(share_root, from, to, opts, progress, Mode::Resume)?;
            match &mut out {
                None => out = Some(r),
                Some(o) => absorb(o, r),
            }
        }
        Ok(out)
    }

    /// Drops a checkout that was cut short (a crash, an error, or a tree that cannot be checked
    /// out), without touching the folder: it keeps what it has (some paths at the new version,
    /// the others at the old one, temporary files `add` never reads), `head` stays at the
    /// checkout's `from`, and the next `add` records what is on disk (so no byte there is lost;
    /// the scan records of the paths already written name their new versions). Returns the
    /// dropped checkout, `None` when there was none.
    pub fn abort_checkout(&self) -> Result<Option<(Option<NodeId>, NodeId)>> {
        self.writable()?;
        let Some(p) = self.pending_checkout()? else {
            return Ok(None);
        };
        let mut b = Batch::default();
        b.delete(&self.db, cf::META, JOURNAL_KEY);
        self.db.write(b.inner, true)?;
        Ok(Some(p))
    }

    /// Test hook: writes a checkout journal `{from, to}` as a checkout does before it touches
    /// the folder (to stand for a store an older version left journaled).
    #[doc(hidden)]
    pub fn debug_write_journal(&self, from: Option<NodeId>, to: NodeId) -> Result<()> {
        self.write_journal(from, to)
    }

    /// Writes the journal record `{from, to}` (synced).
    pub(super) fn write_journal(&self, from: Option<NodeId>, to: NodeId) -> Result<()> {
        let j = postcard::to_stdvec(&Journal { from, to })
            .map_err(|e| Error::Invalid(format!("checkout journal: {e}")))?;
        let mut b = Batch::default();
        b.put(&self.db, cf::META, JOURNAL_KEY, &j);
        self.db.write(b.inner, true)
    }
}
