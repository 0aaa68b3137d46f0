//! The write state of one add ([`Writer`]): nodes and chunks (with their index entries) put into
//! RocksDB batches once each, and the batches written here or handed to the pipeline's writer
//! thread.
//!
//! It is not the durability rule (the snapshot and `head` writes in `mod.rs`; see [`crate::db`]).

use crate::db::{cf, Batch, IndexEntry};
use crate::node::{ContentBuilder, FileNode, Node};
use crate::scan::Stat;
use crate::{AddReport, ChunkId, Error, Hash, NodeId, Result, Store};
use std::collections::HashSet;

/// Buffer of the pipeline's RocksDB batches: they are written once past 4 MiB of values (the last
/// chunk may pass it by up to a chunk), so most never grow.
pub(super) const WRITE_BATCH_CAP: usize = (4 << 20) + (512 << 10);

/// Per-add write state.
pub(super) struct Writer<'a> {
    pub(super) store: &'a Store,
    /// When set, full batches go to the writer thread instead of being written here.
    pub(super) sink: Option<crossbeam_channel::Sender<rocksdb::WriteBatch>>,
    pub(super) batch: Batch,
    pub(super) written: HashSet<Hash>,
    pub(super) report: &'a mut AddReport,
}

impl Writer<'_> {
    pub(super) fn put_node(&mut self, id: NodeId, bytes: Vec<u8>) -> Result<()> {
        if !self.written.insert(id.0) {
            return Ok(());
        }
        if self.store.db.exists(cf::COMPLETE, id.as_bytes())? {
            return Ok(());
        }
        self.report.bytes_stored += bytes.len() as u64;
        self.batch
            .put(&self.store.db, cf::NODES, id.as_bytes(), &bytes);
        self.batch
            .put(&self.store.db, cf::COMPLETE, id.as_bytes(), b"");
        Ok(())
    }

    pub(super) fn put_chunk(&mut self, id: ChunkId, len: usize, enc: &[u8]) {
        if !self.written.insert(id.0) {
            return;
        }
        self.report.bytes_new += len as u64;
        self.report.bytes_stored += enc.len() as u64;
        self.batch
            .put(&self.store.db, cf::CHUNKS, id.as_bytes(), enc);
        let ie = IndexEntry {
            len: len as u32,
            codec: enc[0],
            enc_len: enc.len() as u32,
        };
        self.batch.put(
            &self.store.db,
            cf::CHUNK_INDEX,
            id.as_bytes(),
            &ie.to_bytes(),
        );
    }

    pub(super) fn flush(&mut self) -> Result<()> {
        if !self.batch.is_empty() {
            let b = std::mem::replace(&mut self.batch, Batch::with_capacity(WRITE_BATCH_CAP));
            match &self.sink {
                Some(tx) => tx
                    .send(b.inner)
                    .map_err(|_| Error::Db("the write thread stopped".into()))?,
                None => self.store.db.write(b.inner, false)?,
            }
        }
        if self.written.len() > 1 << 20 {
            self.written.clear();
        }
        Ok(())
    }

    pub(super) fn file_node(&mut self, st: Stat, content: ContentBuilder) -> Result<NodeId> {
        let content = content.finish(&mut |id, b| self.put_node(id, b))?;
        let (id, bytes) = Node::File(FileNode {
            size: st.size,
            mode: st.mode,
            mtime_ns: st.mtime_ns,
            content,
        })
        .encode_with_id()?;
        self.put_node(id, bytes)?;
        Ok(id)
    }
}
