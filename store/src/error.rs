//! The one error type of the store crate.

use crate::ids::NodeId;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the store. Messages are short, lowercase and name the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process holds the store lock.
    #[error("store is in use by pid {pid}")]
    Locked {
        /// Process id written in the lock file by the holder.
        pid: u32,
    },
    /// The folder holds no store.
    #[error("no left store at {} (run `left init`)", path.display())]
    NotAStore {
        /// The folder that was opened.
        path: PathBuf,
    },
    /// `create` on a folder that already holds something.
    #[error("{} already exists and is not empty", path.display())]
    AlreadyExists {
        /// The folder.
        path: PathBuf,
    },
    /// An I/O error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No space left on the device holding `path`.
    #[error("disk full while writing {}", path.display())]
    DiskFull {
        /// The path (or store folder) being written.
        path: PathBuf,
    },
    /// An object failed verification or decoding.
    #[error("{what}")]
    Corrupt {
        /// What is corrupt and why, e.g. "chunk 1a2b.. is corrupt: hash mismatch".
        what: String,
    },
    /// An unknown snapshot, path or missing object.
    #[error("{what}")]
    NotFound {
        /// What was not found.
        what: String,
    },
    /// `restore` into a non-empty folder without `force`.
    #[error("restore target {} is not empty (use --force)", path.display())]
    TargetNotEmpty {
        /// The target folder.
        path: PathBuf,
    },
    /// A path given to `add` lies outside the share.
    #[error("{} is outside the share", path.display())]
    PathOutsideShare {
        /// The offending path.
        path: PathBuf,
    },
    /// The store was made with an incompatible format version.
    #[error("store format version {found} is not supported (this build reads {supported})")]
    Version {
        /// Version found on disk.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },
    /// Invalid argument (bad snapshot spec, bad config, ...).
    #[error("{0}")]
    Invalid(String),
    /// A write on a store opened with [`crate::Store::open_read_only`].
    #[error("the store is open read-only (a `left serve` owns it)")]
    ReadOnly,
    /// A RocksDB error.
    #[error("database error: {0}")]
    Db(String),
    /// A merge needs the files (tree) of this snapshot, a merge base or one of the heads, and the
    /// store holds only its header (history fetched without trees, or dropped by gc): fetch the
    /// tree from a peer, then merge again. Never merged against another base instead.
    #[error(
        "the files of snapshot {} are needed for the merge and are not in this store (fetch them, then merge again)",
        .0.fmt_short()
    )]
    NeedTree(NodeId),
    /// A merge needs these snapshot headers (sorted) to find its merge base: they are parents of
    /// stored snapshots but not stored. Fetch them from a peer, then merge again.
    #[error(
        "the history between the two heads is incomplete here ({} snapshot headers missing, e.g. {}): fetch them, then merge again",
        .0.len(),
        .0.first().map(|i| i.fmt_short()).unwrap_or_default()
    )]
    NeedHeaders(Vec<NodeId>),
}

/// Result with the store's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error on `path`, mapping ENOSPC/EDQUOT to [`Error::DiskFull`].
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::DiskFull { path },
            _ => Error::Io { path, source },
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Error {
        Error::Corrupt { what: what.into() }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> Error {
        Error::NotFound { what: what.into() }
    }
}
