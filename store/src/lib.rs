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
//! [`Store`] is the entry point: `create`/`open` (with an exclusive lock), `add` (snapshot a folder,
//! streaming on all cores with bounded memory), `ls`, `log`, `resolve`, `restore`, `verify`, `gc`, and
//! the object-level operations the sync engine needs (`has_many`, `missing`, `diff`, `get_chunk`,
//! `put_chunk`, `get_node`, `put_node`).
//!
//! What this crate does not do: it knows nothing about peers, the network, keys or merging; it does
//! not watch folders; it does not encrypt chunks (codec bytes 2 and up are reserved for sealed chunks
//! later). It is not safe to open one store from two processes: the second gets [`Error::Locked`].
#![warn(missing_docs)]

mod add;
mod checkout;
pub mod chunker;
pub mod codec;
pub mod db;
mod error;
mod ids;
mod maint;
pub mod node;
mod restore;
mod store;
mod types;

#[doc(hidden)]
pub use add::{debug_set_read_hook, ReadHook};
pub use error::{Error, Result};
pub use ids::{ChunkId, Hash, NodeId};
pub use store::{ObjectId, Store, ANCESTOR_LIMIT};
pub use types::*;
