//! The serving side: turn one `GetNodes` / `GetChunks` into replies, one message at a time.

use crate::ecp::{Message, ObjectRef, MAX_CHUNK_BYTES, MAX_NODES_PER_REPLY, MAX_NODE_BYTES};
use left_store::{ChunkId, NodeId, Store};
use std::collections::VecDeque;

/// Where a server reads objects in their stored form. Implemented for [`Store`].
pub trait ObjectSource {
    /// The encoded node, or `None` when it is not stored.
    fn node_bytes(&self, id: NodeId) -> Result<Option<Vec<u8>>, left_store::Error>;
    /// The encoded chunk (codec byte and payload), or `None` when it is not stored.
    fn chunk_bytes(&self, id: ChunkId) -> Result<Option<Vec<u8>>, left_store::Error>;
}

impl ObjectSource for Store {
    fn node_bytes(&self, id: NodeId) -> Result<Option<Vec<u8>>, left_store::Error> {
        self.get_node(id)
    }

    fn chunk_bytes(&self, id: ChunkId) -> Result<Option<Vec<u8>>, left_store::Error> {
        self.get_chunk(id)
    }
}

enum Wanted {
    Nodes(VecDeque<NodeId>),
    Chunks(VecDeque<ChunkId>),
}

/// The replies to one request, produced lazily so a server holds at most one reply in memory per
/// request: `GetNodes` gets `Nodes` messages of up to [`MAX_NODES_PER_REPLY`] nodes, `GetChunks`
/// one `Chunk` per id, and whatever is not stored is listed in one final `NotFound`.
pub struct Answer {
    wanted: Wanted,
    missing: Vec<ObjectRef>,
}

impl Answer {
    /// The answer to `request`, or `None` when it is not a `GetNodes` / `GetChunks`.
    pub fn new(request: &Message) -> Option<Answer> {
        let wanted = match request {
            Message::GetNodes { ids } => Wanted::Nodes(ids.iter().copied().collect()),
            Message::GetChunks { ids } => Wanted::Chunks(ids.iter().copied().collect()),
            _ => return None,
        };
        Some(Answer {
            wanted,
            missing: Vec::new(),
        })
    }

    /// The next reply, or `None` when the request is fully answered.
    pub fn poll(&mut self, src: &dyn ObjectSource) -> Result<Option<Message>, left_store::Error> {
        match &mut self.wanted {
            Wanted::Nodes(ids) => {
                let mut nodes = Vec::new();
                while nodes.len() < MAX_NODES_PER_REPLY {
                    let Some(id) = ids.pop_front() else { break };
                    match src.node_bytes(id)? {
                        Some(b) if b.len() <= MAX_NODE_BYTES => nodes.push((id, b)),
                        _ => self.missing.push(ObjectRef::Node(id)),
                    }
                }
                if !nodes.is_empty() {
                    return Ok(Some(Message::Nodes { nodes }));
                }
            }
            Wanted::Chunks(ids) => {
                while let Some(id) = ids.pop_front() {
                    match src.chunk_bytes(id)? {
                        Some(bytes) if bytes.len() <= MAX_CHUNK_BYTES => {
                            return Ok(Some(Message::Chunk { id, bytes }))
                        }
                        _ => self.missing.push(ObjectRef::Chunk(id)),
                    }
                }
            }
        }
        if self.missing.is_empty() {
            Ok(None)
        } else {
            Ok(Some(Message::NotFound {
                ids: std::mem::take(&mut self.missing),
            }))
        }
    }
}
