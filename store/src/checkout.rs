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

    /// Whether snapshot `ancestor` is `of` or one of its ancestors (walks parents, bounded work; a
    /// shallow or missing parent counts as not found).
    pub fn is_ancestor(&self, ancestor: NodeId, of: NodeId) -> Result<bool> {
        let _ = (ancestor, of);
        Err(Error::Invalid("not yet".into()))
    }

    /// Opens a store that another process holds (e.g. a running `left serve`) for reading only: no
    /// lock is taken; every write returns [`Error::ReadOnly`]. Reads see the data as of the open.
    pub fn open_read_only(store_dir: &Path) -> Result<Store> {
        let _ = store_dir;
        Err(Error::Invalid("not yet".into()))
    }

    /// Stores a chunk whose encoded bytes the caller has already verified against `id` (the sync
    /// engine verifies every arrival). `plain_len` is the decoded length. Same effect as
    /// [`Store::put_chunk`] otherwise. Returns whether it was new.
    pub fn put_chunk_verified(&self, id: ChunkId, encoded: &[u8], plain_len: u32) -> Result<bool> {
        let _ = (id, encoded, plain_len);
        Err(Error::Invalid("not yet".into()))
    }
}
