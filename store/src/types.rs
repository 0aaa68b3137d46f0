//! Plain public types of the store API: configuration, options, reports, progress.

use crate::ids::{Hash, NodeId};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::PathBuf;

/// Store configuration, fixed at `create` and recorded in the store's meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Minimum chunk size in bytes (FastCDC), default 16 KiB.
    pub chunk_min: u32,
    /// Average chunk size in bytes, default 64 KiB.
    pub chunk_avg: u32,
    /// Maximum chunk size in bytes, default 256 KiB. Also the decode limit of one chunk.
    pub chunk_max: u32,
    /// Bytes for RocksDB memtables + block cache (default 64 MiB).
    pub memory_budget: u64,
    /// Absolute path of the share folder this store snapshots.
    pub share_root: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunk_min: 16 * 1024,
            chunk_avg: 64 * 1024,
            chunk_max: 256 * 1024,
            memory_budget: 64 * 1024 * 1024,
            share_root: None,
        }
    }
}

/// Progress sink, called from worker threads; must be cheap.
pub trait Progress: Sync {
    /// A phase starts (`what` is a short label), with its total size when known.
    fn start(&self, what: &str, total_bytes: Option<u64>);
    /// `bytes` more bytes were processed.
    fn advance(&self, bytes: u64);
    /// The phase is over.
    fn finish(&self);
}

/// A [`Progress`] that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Options of [`crate::Store::add`].
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// Store what symlinks point to instead of the link.
    pub follow_links: bool,
    /// Ignore the scan cache: read and hash every file.
    pub rehash: bool,
    /// Snapshot message.
    pub message: String,
    /// This device's X25519 public key (recorded in the snapshot).
    pub device: [u8; 32],
    /// A file modified less than this many nanoseconds ago (by its mtime) is taken as still being
    /// written: it keeps its previous snapshot's entry (a new file stays out) and is listed in
    /// [`AddReport::unsettled`], to be snapshotted by a later add. 0: no such wait (`left add`).
    pub settle_ns: i64,
    /// The snapshot's time in ns (still never before its parent's); `None`: the clock. For
    /// simulations that replay a seed to the same snapshot ids.
    #[doc(hidden)]
    pub time_ns: Option<i64>,
}

/// What [`crate::Store::add`] did. Its JSON (serde) is the control socket's `Add` reply: fields
/// added later take `#[serde(default)]` so older replies still parse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReport {
    /// The new snapshot; `None` when nothing changed.
    pub snapshot: Option<NodeId>,
    /// The head after the add.
    pub head: Option<NodeId>,
    /// Files in the snapshot tree that was scanned.
    pub files: u64,
    /// Folders scanned (the root included).
    pub dirs: u64,
    /// Symlinks scanned.
    pub symlinks: u64,
    /// File bytes actually read from disk.
    pub bytes_read: u64,
    /// Plain bytes of chunks not already stored.
    pub bytes_new: u64,
    /// Encoded bytes written (chunks + nodes).
    pub bytes_stored: u64,
    /// Paths that could not be stored, with the reason. Each keeps the previous snapshot's entry
    /// (if it had one) in the new snapshot.
    pub skipped: Vec<Skipped>,
    /// Files modified within [`AddOptions::settle_ns`] of the scan: still being written, so they
    /// kept their previous entry (a new one stayed out) this time.
    /// Not on the control socket: an `add` through it never waits for files to settle.
    #[serde(skip)]
    pub unsettled: Vec<PathBuf>,
    /// Tracked paths a `.leftignore` rule now covers: *frozen*, their entries carried forward
    /// from the head (local edits and deletions of them are not published; `forget` drops one).
    #[serde(default)]
    pub frozen: u64,
    /// Of those, how many more than after the previous add (more than
    /// [`crate::FROZEN_WARN`] is worth a warning).
    #[serde(default)]
    pub newly_frozen: u64,
}

/// A file `add` could not store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Path relative to the share root.
    #[serde(with = "crate::serde_path")]
    pub path: PathBuf,
    /// Why (one line).
    pub reason: String,
}

/// A snapshot: one version of the whole share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Root folder node.
    pub root: NodeId,
    /// Parent snapshots (first parent first).
    pub parents: Vec<NodeId>,
    /// Device that made it.
    pub device: [u8; 32],
    /// Creation time, ns since the Unix epoch.
    pub time_ns: i64,
    /// Free text.
    pub message: String,
}

/// Kind of a folder entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Folder.
    Dir,
    /// Symbolic link (stored verbatim).
    Symlink,
}

/// One entry listed by [`crate::Store::ls`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsEntry {
    /// Name as raw bytes.
    pub name: OsString,
    /// Kind.
    pub kind: EntryKind,
    /// Permission bits (and file type bits are not included).
    pub mode: u32,
    /// File size, link target length, or 0 for folders.
    pub size: u64,
    /// Modification time in ns since the epoch.
    pub mtime_ns: i64,
    /// File/folder node; for a symlink, BLAKE3 of its target.
    pub id: NodeId,
    /// The link target, for symlinks.
    pub link_target: Option<OsString>,
}

/// Options of [`crate::Store::restore`].
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore into a non-empty target (overwriting what is there).
    pub force: bool,
}

/// What [`crate::Store::restore`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Files written.
    pub files: u64,
    /// Folders created or updated, the target folder included when a folder is restored (so it
    /// matches [`AddReport::dirs`], which counts the scanned root).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// File bytes written.
    pub bytes_written: u64,
}

/// What [`crate::Store::verify`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Chunks re-hashed.
    pub chunks_checked: u64,
    /// Nodes re-hashed.
    pub nodes_checked: u64,
    /// Plain bytes of chunks re-hashed.
    pub bytes_checked: u64,
    /// Every missing or corrupt object.
    pub problems: Vec<Problem>,
    /// Snapshot headers stored here (reachable from refs).
    pub snapshots: u64,
    /// Of those, the ones whose files are not here (history fetched as headers only, or trees
    /// `gc --keep-last` dropped): normal, not damage; `restore --from PEER` fetches them.
    pub shallow: u64,
    /// Snapshots whose parents are not stored here, oldest first: local history starts there.
    /// Normal on a peer that joined after those snapshots were made.
    pub history_starts: Vec<NodeId>,
}

/// Kind of stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ObjectKind {
    /// A chunk.
    Chunk,
    /// A node.
    Node,
}

/// What is wrong with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProblemKind {
    /// Referenced but not stored.
    Missing,
    /// Stored but its bytes do not match its id (or do not decode).
    Corrupt,
}

/// One missing or corrupt object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Chunk or node.
    pub object: ObjectKind,
    /// Its id.
    pub id: Hash,
    /// Missing or corrupt.
    pub kind: ProblemKind,
    /// Paths (in the newest snapshot that uses it) that use it, at most 10.
    pub paths: Vec<PathBuf>,
}

/// Options of [`crate::Store::gc`].
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Keep the trees of only the last N snapshots of head's first-parent history (snapshot nodes
    /// themselves are always kept). `None`: keep every tree reachable from refs.
    pub keep_last: Option<usize>,
}

/// What [`crate::Store::gc`] did. Its JSON (serde) is the control socket's `Gc` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Chunks deleted.
    pub chunks_removed: u64,
    /// Nodes deleted.
    pub nodes_removed: u64,
    /// Store size on disk before.
    pub bytes_before: u64,
    /// Store size on disk after.
    pub bytes_after: u64,
    /// What keeps the remaining bytes alive: one entry per ref (`head`, each `peers/<device>`,
    /// any other), then `checkout` (the trees of a journaled checkout) and `retention` (trees a
    /// `keep_last`/`keep_within` rule keeps beyond the refs' own), those two only when they keep
    /// something.
    pub kept_by: Vec<GcRoot>,
    /// Refs the caller dropped just before this gc ([`crate::Store::drop_peer_ref`]; `left`
    /// drops the `peers/<device>` refs of revoked devices). The store's gc itself drops no ref.
    #[serde(default)]
    pub dropped_refs: Vec<String>,
}

/// One thing that keeps bytes alive in a gc ([`GcReport::kept_by`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRoot {
    /// `head`, `peers/<device>`, another ref's name, `checkout` or `retention`.
    pub name: String,
    /// The snapshot a ref names (`None` for `checkout` and `retention`).
    pub snapshot: Option<NodeId>,
    /// Snapshots whose trees it keeps, alone or with others. Without a retention rule a ref
    /// keeps its snapshot and every ancestor; with one, its own snapshot and, for a
    /// `peers/<device>` ref, the merge bases with head.
    pub snapshots: u64,
    /// Chunks that only it keeps: without it, gc would remove them.
    pub only_chunks: u64,
    /// The stored (encoded) bytes of those chunks: about what the disk would get back.
    pub only_bytes: u64,
}

/// Options of [`crate::Store::checkout`].
#[derive(Debug, Clone, Default)]
pub struct CheckoutOptions {
    /// fsync every file before its rename and every touched folder after (`--fsync`). Without it
    /// the checkout journal in the store is what makes a crash recoverable.
    pub fsync: bool,
    /// Files a fetch already wrote out whole from verified chunks ([`StagedFiles`]): a file of
    /// the new tree found here is renamed into place instead of being written again.
    pub staged: Option<std::sync::Arc<StagedFiles>>,
}

/// Files written out while their chunks were fetched, by file node: each holds exactly the bytes
/// of that node, every chunk hash-verified before it was written. They live in one folder of the
/// store (so on the share's file system when the store is in the share); a checkout takes a file
/// from here by renaming it into place ([`CheckoutOptions::staged`]), which saves reading,
/// decoding and verifying its chunks again. Whatever no checkout took is deleted with the folder
/// when this is dropped.
#[derive(Debug, Default)]
pub struct StagedFiles {
    dir: Option<std::path::PathBuf>,
    dev: Option<u64>,
    files: std::sync::Mutex<std::collections::HashMap<crate::NodeId, (std::path::PathBuf, u64)>>,
}

impl StagedFiles {
    /// The staged files in `dir` (deleted on drop): file node → (path, size).
    pub fn new(
        dir: std::path::PathBuf,
        files: std::collections::HashMap<crate::NodeId, (std::path::PathBuf, u64)>,
    ) -> StagedFiles {
        use std::os::unix::fs::MetadataExt;
        StagedFiles {
            dev: std::fs::metadata(&dir).ok().map(|m| m.dev()),
            dir: Some(dir),
            files: std::sync::Mutex::new(files),
        }
    }

    /// Takes the staged file of `node`, if any: (path, size).
    pub fn take(&self, node: crate::NodeId) -> Option<(std::path::PathBuf, u64)> {
        self.files.lock().ok()?.remove(&node)
    }

    /// Files not taken yet.
    pub fn len(&self) -> usize {
        self.files.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// Whether every file was taken (or there were none).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file system (device number) the files are on.
    pub fn dev(&self) -> Option<u64> {
        self.dev
    }

    /// Bytes of the files not taken yet.
    pub fn bytes(&self) -> u64 {
        self.files
            .lock()
            .map(|f| f.values().map(|v| v.1).sum())
            .unwrap_or(0)
    }
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// What [`crate::Store::checkout`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckoutReport {
    /// Files written (created or replaced).
    pub files_written: u64,
    /// Files and symlinks removed.
    pub files_removed: u64,
    /// Folders created.
    pub dirs_created: u64,
    /// Folders removed.
    pub dirs_removed: u64,
    /// Symlinks created or replaced.
    pub symlinks_written: u64,
    /// File bytes written into the share (all of them).
    pub bytes_written: u64,
    /// Of those, bytes copied from the old version of the file (`copy_file_range`).
    pub bytes_reused: u64,
    /// Files renamed into place from [`StagedFiles`] (written while they were fetched).
    pub files_staged: u64,
    /// Paths left untouched because they changed locally since the last scan.
    pub kept: Vec<Skipped>,
    /// Paths that could not be written here (a read-only folder, a name the file system
    /// refuses), with the reason. They are left as they are; until they change on disk, snapshots
    /// keep the version the checkout meant to write (so the old bytes are not sent back to peers
    /// as a change), and every later checkout tries them again.
    pub unwritten: Vec<Skipped>,
}

/// The lowest common ancestors of two snapshots over the snapshot-header DAG
/// ([`crate::Store::merge_bases`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MergeBases {
    /// The merge bases, sorted by id: none for unrelated histories, one usually, several after a
    /// criss-cross.
    pub bases: Vec<NodeId>,
    /// Snapshot headers (sorted) the walk reached as parents but the store lacks. When not empty,
    /// `bases` may be wrong (too old, or missing altogether): fetch these headers and ask again.
    pub missing: Vec<NodeId>,
    /// The walk stopped after [`crate::ANCESTOR_LIMIT`] snapshots; `bases` may be wrong.
    pub truncated: bool,
}

impl MergeBases {
    /// Whether the walk saw every header it needed (`bases` are exact).
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && !self.truncated
    }
}

/// What [`crate::Store::merge`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MergeOutcome {
    /// Theirs is ours or one of its ancestors: nothing to do.
    UpToDate,
    /// Ours is an ancestor of theirs (the id): check theirs out and move head there.
    FastForward(NodeId),
    /// Both sides changed: a merge snapshot was written (head was not moved).
    Merged {
        /// The merge snapshot (the same on every peer merging the same two heads).
        snapshot: NodeId,
        /// Paths both sides changed differently, where both versions were kept.
        conflicts: Vec<Conflict>,
    },
}

/// A side of a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MergeSide {
    /// The first argument of [`crate::Store::merge`] (our head).
    Ours,
    /// The second argument (the peer's head).
    Theirs,
}

/// A path both sides of a merge changed differently: the winner keeps the name, the other version
/// is kept beside it under a `.sync-conflict-` name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The path (relative to the share) that keeps the winning version.
    pub path: PathBuf,
    /// Where the losing version was kept (same folder, conflict name).
    pub copy: PathBuf,
    /// Which side's version kept the name.
    pub winner: MergeSide,
    /// The author device of the winning side.
    pub winner_device: [u8; 32],
    /// The author device of the losing side (the device named in the conflict name).
    pub loser_device: [u8; 32],
}
