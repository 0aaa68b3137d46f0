//! Test hooks of [`Store`]: writes no real caller makes (forged arrival times, corrupted or
//! deleted objects) and a look at the chunks of a file, for the store's and the binary's tests.
//! Hidden from the docs (`#[doc(hidden)]` on each); the methods keep their names, so callers
//! write `store.debug_corrupt_chunk(id)` as before. The other hooks stay beside what they poke:
//! `debug_add_with_stats` is `add` itself (add/mod.rs), the read hook is in add/reader.rs.

use crate::db::{cf, Batch};
use crate::node::{Node, Target};
use crate::scan::{Stat, REC_RACY};
use crate::store::arrival_key;
use crate::{ChunkId, Error, NodeId, Result, Store};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

impl Store {
    /// Test hook: sets the arrival time of a snapshot (as if it had arrived at `ns`).
    #[doc(hidden)]
    pub fn debug_set_arrival(&self, id: NodeId, ns: i64) -> Result<()> {
        let mut b = Batch::default();
        b.put(&self.db, cf::META, &arrival_key(id), &ns.to_le_bytes());
        self.db.write(b.inner, false)
    }

    /// Test hook: forgets the arrival record of a snapshot (as a store made before they existed).
    #[doc(hidden)]
    pub fn debug_clear_arrival(&self, id: NodeId) -> Result<()> {
        let mut b = Batch::default();
        b.delete(&self.db, cf::META, &arrival_key(id));
        self.db.write(b.inner, false)
    }

    /// Test hook: flips the last byte of the stored (encoded) chunk `id`, keeping its index entry.
    #[doc(hidden)]
    pub fn debug_corrupt_chunk(&self, id: ChunkId) -> Result<()> {
        let enc = self
            .get_chunk(id)?
            .ok_or_else(|| Error::not_found(format!("chunk {id} is missing")))?;
        self.debug_put_flipped(cf::CHUNKS, id.as_bytes(), enc)
    }

    /// Test hook: flips the last byte of the stored node `id`.
    #[doc(hidden)]
    pub fn debug_corrupt_node(&self, id: NodeId) -> Result<()> {
        let n = self
            .get_node(id)?
            .ok_or_else(|| Error::not_found(format!("node {id} is missing")))?;
        self.debug_put_flipped(cf::NODES, id.as_bytes(), n)
    }

    /// Writes `value` back under `key` in `family` with its last byte flipped.
    fn debug_put_flipped(&self, family: &str, key: &[u8], mut value: Vec<u8>) -> Result<()> {
        // Stored chunks and nodes are never empty (a codec or version byte comes first).
        *value.last_mut().expect("stored objects are never empty") ^= 0x55;
        let mut b = Batch::default();
        b.put(&self.db, family, key, &value);
        self.db.write(b.inner, false)
    }

    /// Test hook: the chunk ids of a file in a snapshot, in order.
    #[doc(hidden)]
    pub fn debug_file_chunks(&self, snapshot: NodeId, path: &Path) -> Result<Vec<ChunkId>> {
        let root = self.snapshot_root(snapshot)?;
        let e = self
            .lookup(root, path)?
            .ok_or_else(|| Error::Invalid("the root is not a file".into()))?;
        let Target::Node(id) = e.target else {
            return Err(Error::Invalid("not a file".into()));
        };
        let Node::File(fnode) = self.read_node(id)? else {
            return Err(Error::Invalid("not a file".into()));
        };
        let mut out = Vec::new();
        self.file_chunks(&fnode.content, &mut |refs| {
            out.extend(refs.iter().map(|r| ChunkId(r.id)));
            Ok(())
        })?;
        Ok(out)
    }

    /// Test hook: deletes a stored chunk (index entry included).
    #[doc(hidden)]
    pub fn debug_delete_chunk(&self, id: ChunkId) -> Result<()> {
        let mut b = Batch::default();
        b.delete(&self.db, cf::CHUNKS, id.as_bytes());
        b.delete(&self.db, cf::CHUNK_INDEX, id.as_bytes());
        self.db.write(b.inner, false)
    }

    /// Test hook: writes the scan record of `rel` (in the share at `share`) as if the file as it
    /// is now had been read as `node`, racy or not: what a write within the timestamp tick
    /// right after a read leaves behind.
    #[doc(hidden)]
    pub fn debug_forge_scan_record(
        &self,
        share: &Path,
        rel: &Path,
        node: NodeId,
        racy: bool,
    ) -> Result<()> {
        let m = fs::symlink_metadata(share.join(rel)).map_err(|e| Error::io(share.join(rel), e))?;
        let rec = Stat::of(&m).record_bytes(node, if racy { REC_RACY } else { 0 });
        let mut b = Batch::default();
        b.put(&self.db, cf::SCAN, rel.as_os_str().as_bytes(), &rec);
        self.db.write(b.inner, false)
    }
}
