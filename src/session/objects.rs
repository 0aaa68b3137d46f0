//! The sync engine's view of the store: its traits ([`LocalObjects`], [`ObjectSource`])
//! implemented for [`Store`], [`apply_to_store`] for a pull's effects, and
//! [`PullConfig::for_store`]. They live here, not in `sync`, so the engine stays free of IO: it
//! only ever sees the traits.
//!
//! What this module is not: it makes no decision (the engine does) and batches nothing (the pull
//! driver in `client/driver.rs` may gather chunks into one write before applying them).

use crate::sync::{Effect, LocalObjects, ObjectSource, PullConfig};
use left_store::node::Node;
use left_store::{ChunkId, NodeId, ObjectId, Store};

impl LocalObjects for Store {
    fn has_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>, left_store::Error> {
        Store::has_many(self, ids)
    }

    fn node(&self, id: NodeId) -> Result<Option<Node>, left_store::Error> {
        match self.get_node(id)? {
            Some(bytes) => Node::decode_verified(&id, &bytes).map(Some),
            None => Ok(None),
        }
    }
}

impl ObjectSource for Store {
    /// A receive-only device never serves a snapshot of its local changes
    /// ([`Store::may_serve_snapshot`]): to the asking peer it is not here.
    fn node_bytes(&self, id: NodeId) -> Result<Option<Vec<u8>>, left_store::Error> {
        let Some(bytes) = self.get_node(id)? else {
            return Ok(None);
        };
        if self.receive_only()?
            && matches!(Node::decode_verified(&id, &bytes), Ok(Node::Snapshot(_)))
            && !self.may_serve_snapshot(id)?
        {
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    fn chunk_bytes(&self, id: ChunkId) -> Result<Option<Vec<u8>>, left_store::Error> {
        self.get_chunk(id)
    }
}

impl PullConfig {
    /// The defaults, with the chunk size limit taken from the local store's configuration.
    pub fn for_store(store: &Store) -> PullConfig {
        PullConfig {
            max_chunk_size: store.config().chunk_max as usize,
            ..PullConfig::default()
        }
    }
}

/// Applies a pull's effect to a store. `Done`, `Failed` and `PeerDropped` change nothing here.
pub fn apply_to_store(store: &Store, effect: &Effect) -> Result<(), left_store::Error> {
    match effect {
        Effect::StoreNode(id, bytes) => store.put_node(*id, bytes).map(drop),
        Effect::StoreChunk(id, encoded, plain_len) => {
            store.put_chunk_verified(*id, encoded, *plain_len).map(drop)
        }
        Effect::MarkComplete(id) => store.mark_complete(*id).map(drop),
        Effect::Done(_) | Effect::Failed(_) | Effect::PeerDropped { .. } => Ok(()),
    }
}
