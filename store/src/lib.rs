//! # left-store: the content-addressed chunk store behind `left`
//!
//! This crate turns a folder (the *share*) into immutable, content-addressed objects kept in one
//! RocksDB database, and turns those objects back into files:
//!
//! - **chunks**: file bytes cut by FastCDC v2020 (pinned crate version, sizes from [`StoreConfig`]),
//!   identified by the BLAKE3 hash of their plain bytes ([`ChunkId`]) and stored encoded (a codec
//!   byte, then raw or zstd bytes; see [`codec`]);
//! - **nodes**: postcard-encoded Merkle nodes (file, chunk list, folder, snapshot; see [`node`]),
//!   identified by the BLAKE3 hash of their encoding ([`NodeId`]);
//! - **refs**: named pointers to snapshots (`head`, later `peers/<id>`), moved in a synced batch after
//!   everything they reference is written (see [`db`] for the durability rules).
//!
//! [`Store`] is the entry point: `create`/`open` (with an exclusive lock) or `open_read_only` (no
//! lock, beside a process that holds it, e.g. `left serve`; writes fail with [`Error::ReadOnly`]),
//! `add` (snapshot a folder, streaming on all cores with bounded memory), `ls`, `log`, `resolve`,
//! `restore`, `verify` (and `repair_plan` / `apply_repair_plan`, which let a fetch bring back what
//! verify found damaged), `gc`, the object-level operations the sync engine needs (`has_many`,
//! `missing`, `diff`, `get_chunk`, `put_chunk`, `put_chunk_verified`, `get_node`, `put_node`,
//! `mark_complete`, `is_ancestor`), and `checkout`: moving the share folder from one snapshot to
//! another, touching only changed paths, reusing unchanged ranges of changed files, never writing
//! through a symlink, keeping local changes, journaled so a crash is finished by
//! `resume_checkout` (see [`checkout`] for the rules and what survives a power cut).
//!
//! What this crate does not do: it knows nothing about peers, the network or keys (it merges
//! two snapshots deterministically, [`Store::merge`], without knowing where they came from); it does
//! not watch folders; it does not encrypt chunks (codec bytes 2 and up are reserved for sealed chunks
//! later). Two processes cannot both open one store for writing: the second gets [`Error::Locked`].
#![warn(missing_docs)]

mod add;
pub mod base32;
pub mod checkout;
pub mod chunker;
pub mod codec;
pub mod date;
pub mod db;
mod error;
mod fs;
mod gc;
mod ids;
mod maint;
mod merge;
pub mod node;
mod objects;
mod refs;
mod release;
mod removals;
mod restore;
mod scan;
pub mod serde_path;
mod store;
#[doc(hidden)]
pub mod testing;
mod types;

#[doc(hidden)]
pub use add::{debug_set_read_hook, ReadHook, FROZEN_WARN};
pub use checkout::{CHECKOUT_MAX_DEPTH, REUSE_MAP_CAP, SETTLE_WINDOW_NS};
pub use error::{Error, Result};
pub use ids::{ChunkId, Hash, NodeId};
pub use maint::RepairPlan;
pub use merge::{
    base32_lower, conflict_name, AUTHOR_DEPTH, CONFLICT_NAME_MAX, MERGE_MESSAGE,
    VIRTUAL_BASE_DEPTH, VIRTUAL_MERGES,
};
pub use refs::{ANCESTOR_LIMIT, SEEN_PREFIX, SHARE_REF};
pub use removals::{Removals, TOP_FOLDERS};
pub use store::{ObjectId, Store, STORE_MODE};
pub use types::*;
