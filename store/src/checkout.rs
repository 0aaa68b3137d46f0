//! `checkout`: move the share folder from one snapshot to another, touching only what differs.

use crate::*;
use std::path::Path;

impl Store {
    /// Moves the share folder from snapshot `from` (`None`: nothing checked out yet) to snapshot
    /// `to`, touching only paths that differ between the two trees, then sets head = `to` (synced).
    /// `to` must be complete in the store.
    pub fn checkout(
        &self,
        share_root: &Path,
        from: Option<NodeId>,
        to: NodeId,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<CheckoutReport> {
        let _ = (share_root, from, to, opts, progress);
        Err(Error::Invalid("not yet".into()))
    }

    /// The checkout a crash cut short, if any: (from, to).
    pub fn pending_checkout(&self) -> Result<Option<(Option<NodeId>, NodeId)>> {
        Err(Error::Invalid("not yet".into()))
    }

    /// Finishes a checkout a crash cut short (no-op returning `None` when there is none).
    pub fn resume_checkout(
        &self,
        share_root: &Path,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<Option<CheckoutReport>> {
        let _ = (share_root, opts, progress);
        Err(Error::Invalid("not yet".into()))
    }
}
