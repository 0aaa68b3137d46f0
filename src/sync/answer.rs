//! The serving side: turn one `GetNodes` / `GetChunks` into replies, one message at a time.

use crate::ecp::{Message, ObjectRef, MAX_CHUNK_BYTES, MAX_NODES_PER_REPLY, MAX_NODE_BYTES};
use left_store::{ChunkId, NodeId};
use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// Where a server reads objects in their stored form. Implemented for the store in `session`.
pub trait ObjectSource {
    /// The encoded node, or `None` when it is not stored.
    fn node_bytes(&self, id: NodeId) -> Result<Option<Vec<u8>>, left_store::Error>;
    /// The encoded chunk (codec byte and payload), or `None` when it is not stored.
    fn chunk_bytes(&self, id: ChunkId) -> Result<Option<Vec<u8>>, left_store::Error>;
}

enum Wanted {
    Nodes(VecDeque<NodeId>),
    Chunks(VecDeque<ChunkId>),
}

/// The replies to one request, produced lazily so a server holds at most one reply in memory per
/// request: `GetNodes` gets `Nodes` messages of up to [`MAX_NODES_PER_REPLY`] nodes, `GetChunks`
/// one `Chunk` per id, and whatever is not stored is listed in one final `NotFound`. An id repeated
/// within a request is answered once (a peer repeating one 256 KiB chunk 1,024 times gets one
/// chunk, not 256 MiB).
pub struct Answer {
    wanted: Wanted,
    missing: Vec<ObjectRef>,
}

impl Answer {
    /// The answer to `request`, or `None` when it is not a `GetNodes` / `GetChunks`.
    pub fn new(request: &Message) -> Option<Answer> {
        let wanted = match request {
            Message::GetNodes { ids } => Wanted::Nodes(once_each(ids)),
            Message::GetChunks { ids } => Wanted::Chunks(once_each(ids)),
            _ => return None,
        };
        Some(Answer {
            wanted,
            missing: Vec::new(),
        })
    }

    /// Ids still to answer (each once).
    pub fn remaining(&self) -> usize {
        match &self.wanted {
            Wanted::Nodes(ids) => ids.len(),
            Wanted::Chunks(ids) => ids.len(),
        }
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

/// `ids` in their order, each only the first time it appears.
fn once_each<T: Copy + Eq + Hash>(ids: &[T]) -> VecDeque<T> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use left_store::Hash as Blake;
    use std::collections::HashMap;

    struct Src(HashMap<ChunkId, Vec<u8>>);

    impl ObjectSource for Src {
        fn node_bytes(&self, _: NodeId) -> Result<Option<Vec<u8>>, left_store::Error> {
            Ok(None)
        }
        fn chunk_bytes(&self, id: ChunkId) -> Result<Option<Vec<u8>>, left_store::Error> {
            Ok(self.0.get(&id).cloned())
        }
    }

    #[test]
    fn a_repeated_id_is_answered_once() {
        let a = ChunkId(Blake::of(b"a"));
        let b = ChunkId(Blake::of(b"b"));
        let gone = ChunkId(Blake::of(b"gone"));
        let src = Src(HashMap::from([(a, vec![0; 1000]), (b, vec![1; 10])]));
        // One id 1,024 times, then others repeated in between.
        let mut ids = vec![a; 1024];
        ids.extend([b, a, gone, b, gone]);
        let mut answer = Answer::new(&Message::GetChunks { ids }).unwrap();
        assert_eq!(answer.remaining(), 3);
        let mut replies = Vec::new();
        while let Some(m) = answer.poll(&src).unwrap() {
            replies.push(m);
        }
        let chunks: Vec<ChunkId> = replies
            .iter()
            .filter_map(|m| match m {
                Message::Chunk { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(chunks, vec![a, b], "{} replies", replies.len());
        assert!(
            matches!(replies.last(), Some(Message::NotFound { ids }) if ids == &vec![ObjectRef::Chunk(gone)]),
            "{:?}",
            replies.last().map(Message::kind)
        );
        let n = NodeId(Blake::of(b"n"));
        let nodes = Answer::new(&Message::GetNodes { ids: vec![n; 1024] }).unwrap();
        assert_eq!(nodes.remaining(), 1);
    }
}
