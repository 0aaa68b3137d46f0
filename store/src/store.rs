//! The [`Store`] handle (skeleton: bodies being filled in).

use crate::*;
use std::path::{Path, PathBuf};

/// An open store (holds the exclusive lock until dropped).
pub struct Store {
    #[allow(dead_code)]
    dir: PathBuf,
    cfg: StoreConfig,
}

fn todo_err() -> Error {
    Error::Db("not implemented yet".into())
}

impl Store {
    /// Creates a new store folder (must not exist or be empty).
    pub fn create(store_dir: &Path, cfg: StoreConfig) -> Result<Store> {
        Ok(Store { dir: store_dir.to_path_buf(), cfg })
    }
    /// Opens an existing store, taking an exclusive lock.
    pub fn open(store_dir: &Path) -> Result<Store> {
        Err(Error::NotAStore { path: store_dir.to_path_buf() })
    }
    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }
    /// Current head snapshot.
    pub fn head(&self) -> Result<Option<NodeId>> {
        Ok(None)
    }
    /// Snapshot the share folder (or only the given paths) as the new head.
    pub fn add(
        &self,
        _share_root: &Path,
        _only: &[PathBuf],
        _opts: &AddOptions,
        _progress: &dyn Progress,
    ) -> Result<AddReport> {
        Err(todo_err())
    }
    /// Resolves "head", "head~N", a full hex id or a unique prefix of >= 4 hex chars.
    pub fn resolve(&self, _spec: &str) -> Result<NodeId> {
        Err(todo_err())
    }
    /// Reads a snapshot node.
    pub fn snapshot(&self, _id: NodeId) -> Result<Snapshot> {
        Err(todo_err())
    }
    /// Ancestors of `from` (itself first), newest first, at most `limit`.
    pub fn log(&self, _from: NodeId, _limit: usize) -> Result<Vec<(NodeId, Snapshot)>> {
        Err(todo_err())
    }
    /// Entries of the folder at `path` in `snapshot`.
    pub fn ls(&self, _snapshot: NodeId, _path: &Path) -> Result<Vec<LsEntry>> {
        Err(todo_err())
    }
    /// Restores `snapshot` (or `path` inside it) into `target`.
    pub fn restore(
        &self,
        _snapshot: NodeId,
        _path: Option<&Path>,
        _target: &Path,
        _opts: &RestoreOptions,
        _progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        Err(todo_err())
    }
    /// Re-hashes every chunk and node reachable from refs.
    pub fn verify(&self, _progress: &dyn Progress) -> Result<VerifyReport> {
        Err(todo_err())
    }
    /// Drops unreachable chunks and nodes.
    pub fn gc(&self, _opts: &GcOptions, _progress: &dyn Progress) -> Result<GcReport> {
        Err(todo_err())
    }
    /// On-disk size of the store folder in bytes.
    pub fn disk_usage(&self) -> Result<u64> {
        Ok(0)
    }
    /// Test hook: flips a byte of the stored chunk `id`.
    #[doc(hidden)]
    pub fn debug_corrupt_chunk(&self, _id: ChunkId) -> Result<()> {
        Err(todo_err())
    }
}
