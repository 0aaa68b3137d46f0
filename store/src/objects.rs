//! Object-level operations, what the sync engine needs: batched presence (`has_chunks`,
//! `has_nodes`, `has_many`), reading and writing chunks and nodes (`get_*`, `read_*`, `put_*`,
//! every chunk write through [`Batch::put_chunk`]), snapshot arrival times, completeness marks
//! (`mark_complete`), and the bounded walks that list what a tree lacks (`missing`) or what one
//! tree has that another lacks (`diff`).
//!
//! Not here: refs (see [`crate::refs`]), the read side of folders (see [`crate::store`]), and the
//! checks of `verify` (see [`crate::maint`]).

use crate::codec;
use crate::db::{cf, Batch, IndexEntry};
use crate::node::{Child, DirNode, Node, Target};
use crate::store::{arrival_key, now_ns, shallow_key, ObjectId, MAX_DEPTH};
use crate::{ChunkId, Error, NodeId, Result, Store};
use std::collections::HashSet;

impl Store {
    /// Batched presence of chunks (from the index: never loads a chunk).
    pub fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let keys: Vec<&[u8]> = ids.iter().map(|i| &i.as_bytes()[..]).collect();
        self.db.exists_many(cf::CHUNK_INDEX, &keys)
    }

    /// Batched presence of nodes, where present means complete (whole subtree stored).
    pub fn has_nodes(&self, ids: &[NodeId]) -> Result<Vec<bool>> {
        let keys: Vec<&[u8]> = ids.iter().map(|i| &i.as_bytes()[..]).collect();
        self.db.exists_many(cf::COMPLETE, &keys)
    }

    /// Batched presence of chunks and (complete) nodes.
    pub fn has_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let chunks: Vec<ChunkId> = ids
            .iter()
            .filter_map(|i| {
                if let ObjectId::Chunk(c) = i {
                    Some(*c)
                } else {
                    None
                }
            })
            .collect();
        let nodes: Vec<NodeId> = ids
            .iter()
            .filter_map(|i| {
                if let ObjectId::Node(n) = i {
                    Some(*n)
                } else {
                    None
                }
            })
            .collect();
        let mut c = self.has_chunks(&chunks)?.into_iter();
        let mut n = self.has_nodes(&nodes)?.into_iter();
        Ok(ids
            .iter()
            .map(|i| match i {
                ObjectId::Chunk(_) => c.next().unwrap_or(false),
                ObjectId::Node(_) => n.next().unwrap_or(false),
            })
            .collect())
    }

    /// Index record of a chunk.
    pub fn chunk_info(&self, id: ChunkId) -> Result<Option<IndexEntry>> {
        self.db
            .get(cf::CHUNK_INDEX, id.as_bytes())?
            .map(|b| IndexEntry::from_bytes(&b))
            .transpose()
    }

    /// The encoded bytes of a chunk (codec byte + payload), as stored and sent on the wire.
    pub fn get_chunk(&self, id: ChunkId) -> Result<Option<Vec<u8>>> {
        self.db.get_unchecked(cf::CHUNKS, id.as_bytes())
    }

    /// The plain bytes of a chunk, verified against its id.
    pub fn read_chunk(&self, id: ChunkId) -> Result<Vec<u8>> {
        let enc = self
            .get_chunk(id)?
            .ok_or_else(|| Error::not_found(format!("chunk {id} is missing")))?;
        codec::decode_verified(&id, &enc, self.cfg.chunk_max as usize)
    }

    /// Stores an encoded chunk after verifying it decodes (bounded) to bytes hashing to `id`.
    /// Returns whether it was new.
    pub fn put_chunk(&self, id: ChunkId, encoded: &[u8]) -> Result<bool> {
        let _g = self.op.read().expect("op lock");
        let plain = codec::decode_verified(&id, encoded, self.cfg.chunk_max as usize)?;
        if self.has_chunks(&[id])?[0] {
            return Ok(false);
        }
        let mut b = Batch::default();
        b.put_chunk(&self.db, id, encoded, plain.len() as u32);
        self.db.write(b.inner, false)?;
        Ok(true)
    }

    /// Stores a chunk whose encoded bytes the caller has already verified against `id` (the sync
    /// engine verifies every arrival; verifying again would cost ~30% of a pull). `plain_len` is the
    /// decoded length. Same effect as [`Store::put_chunk`] otherwise. Returns whether it was new.
    pub fn put_chunk_verified(&self, id: ChunkId, encoded: &[u8], plain_len: u32) -> Result<bool> {
        let _g = self.op.read().expect("op lock");
        if encoded.is_empty() || plain_len > self.cfg.chunk_max {
            return Err(Error::corrupt(format!("chunk {id} is corrupt: bad length")));
        }
        if self.has_chunks(&[id])?[0] {
            return Ok(false);
        }
        let mut b = Batch::default();
        b.put_chunk(&self.db, id, encoded, plain_len);
        self.db.write(b.inner, false)?;
        Ok(true)
    }

    /// Stores a batch of chunks the caller has already verified (as [`Store::put_chunk_verified`],
    /// each `(id, encoded bytes, plain length)`) in one RocksDB write: one presence lookup for the
    /// whole batch, one WAL append (unsynced, like `put_chunk_verified`), one memtable insert pass.
    /// Chunks already stored, and repeats of an id within the batch, are skipped. Returns how many
    /// were new. A bad length anywhere refuses the whole batch before anything is written.
    pub fn put_chunks_verified(&self, chunks: &[(ChunkId, &[u8], u32)]) -> Result<usize> {
        let _g = self.op.read().expect("op lock");
        for (id, enc, plain_len) in chunks {
            if enc.is_empty() || *plain_len > self.cfg.chunk_max {
                return Err(Error::corrupt(format!("chunk {id} is corrupt: bad length")));
            }
        }
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();
        let have = self.has_chunks(&ids)?;
        let mut seen = std::collections::HashSet::with_capacity(chunks.len());
        // Each put: the value, its 32-byte key, and a few bytes of record header; then the index.
        let cap: usize = chunks.iter().map(|c| c.1.len() + 128).sum();
        let mut b = Batch::with_capacity(cap);
        let mut new = 0;
        for ((id, enc, plain_len), had) in chunks.iter().zip(have) {
            if had || !seen.insert(*id) {
                continue;
            }
            b.put_chunk(&self.db, *id, enc, *plain_len);
            new += 1;
        }
        if new > 0 {
            self.db.write(b.inner, false)?;
        }
        Ok(new)
    }

    /// The encoded bytes of a node.
    pub fn get_node(&self, id: NodeId) -> Result<Option<Vec<u8>>> {
        self.db.get(cf::NODES, id.as_bytes())
    }

    /// A decoded, verified node; a missing node is [`Error::NotFound`].
    pub fn read_node(&self, id: NodeId) -> Result<Node> {
        let b = self
            .get_node(id)?
            .ok_or_else(|| Error::not_found(format!("node {id} is missing")))?;
        Node::decode_verified(&id, &b)
    }

    /// Stores an encoded node after verifying its hash and decoding it, and marks it complete when
    /// everything below it is already complete. Returns whether it is now complete.
    pub fn put_node(&self, id: NodeId, bytes: &[u8]) -> Result<bool> {
        let _g = self.op.read().expect("op lock");
        let node = Node::decode_verified(&id, bytes)?;
        let mut b = Batch::default();
        if matches!(node, Node::Snapshot(_)) {
            self.note_arrival(&mut b, id)?;
        }
        b.put(&self.db, cf::NODES, id.as_bytes(), bytes);
        let complete = self.children_complete(&node)?;
        if complete {
            b.put(&self.db, cf::COMPLETE, id.as_bytes(), b"");
        }
        self.db.write(b.inner, false)?;
        Ok(complete)
    }

    /// Stores the header of a snapshot whose tree is not being fetched (a parent of a fetched
    /// head, so history and ancestry work). The bytes are checked against `id` and must decode to
    /// a snapshot. Unless its tree is already complete here, the snapshot is recorded as shallow
    /// (as `gc --keep-last` records the snapshots whose trees it dropped), so `verify`, `gc`,
    /// `add` and `log` know its tree is absent. Returns whether it was new.
    pub fn put_snapshot_header(&self, id: NodeId, bytes: &[u8]) -> Result<bool> {
        let _g = self.op.read().expect("op lock");
        self.writable()?;
        let node = Node::decode_verified(&id, bytes)?;
        let Node::Snapshot(snap) = &node else {
            return Err(Error::corrupt(format!("{id} is not a snapshot")));
        };
        if self.get_node(id)?.is_some() {
            return Ok(false);
        }
        let mut b = Batch::default();
        self.note_arrival(&mut b, id)?;
        b.put(&self.db, cf::NODES, id.as_bytes(), bytes);
        if self.has_nodes(&[snap.root])?[0] {
            b.put(&self.db, cf::COMPLETE, id.as_bytes(), b"");
        } else {
            b.put(&self.db, cf::META, &shallow_key(id), b"");
        }
        self.db.write(b.inner, false)?;
        Ok(true)
    }

    /// Adds to `b` the record of when snapshot `id` arrived here (now), unless it has one: the
    /// first arrival counts, so fetching a snapshot again never makes it younger.
    pub(crate) fn note_arrival(&self, b: &mut Batch, id: NodeId) -> Result<()> {
        let k = arrival_key(id);
        // A snapshot stored before arrivals were recorded gets its record from gc instead.
        if !self.db.exists(cf::META, &k)? && !self.db.exists(cf::NODES, id.as_bytes())? {
            b.put(&self.db, cf::META, &k, &now_ns().to_le_bytes());
        }
        Ok(())
    }

    /// When snapshot `id` first arrived here (ns since the epoch, this machine's clock), if
    /// recorded. Snapshots stored before arrivals were recorded, and those `add` writes, have none
    /// until `gc` records one (see [`Store::gc`]).
    pub fn arrival(&self, id: NodeId) -> Result<Option<i64>> {
        Ok(self
            .db
            .get(cf::META, &arrival_key(id))?
            .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
            .map(i64::from_le_bytes))
    }

    fn children_complete(&self, node: &Node) -> Result<bool> {
        let (mut cs, mut ns) = (Vec::new(), Vec::new());
        for c in node.children() {
            match c {
                Child::Chunk(id, _) => cs.push(id),
                Child::Node(id) => ns.push(id),
            }
        }
        Ok(self.has_chunks(&cs)?.into_iter().all(|x| x)
            && self.has_nodes(&ns)?.into_iter().all(|x| x))
    }

    /// Sets completeness marks bottom-up under `root` (after nodes were stored top-down, as a fetch
    /// does). Returns whether `root` is complete.
    pub fn mark_complete(&self, root: NodeId) -> Result<bool> {
        self.mark_complete_at(root, 0)
    }

    fn mark_complete_at(&self, root: NodeId, depth: usize) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(format!(
                "tree under {root} is deeper than {MAX_DEPTH}"
            )));
        }
        if self.has_nodes(&[root])?[0] {
            return Ok(true);
        }
        let Some(bytes) = self.get_node(root)? else {
            return Ok(false);
        };
        let node = Node::decode_verified(&root, &bytes)?;
        // One multi-get for the chunks and one for the child nodes of this node (a 1 GiB file's
        // leaves hold ~128 chunks each: one lookup each would cost a round per chunk).
        let (mut cs, mut ns) = (Vec::new(), Vec::new());
        for c in node.children() {
            match c {
                Child::Chunk(id, _) => cs.push(id),
                Child::Node(id) => ns.push(id),
            }
        }
        let mut all = self.has_chunks(&cs)?.into_iter().all(|x| x);
        for (n, done) in ns.iter().zip(self.has_nodes(&ns)?) {
            if !done {
                all &= self.mark_complete_at(*n, depth + 1)?;
            }
        }
        if all {
            let mut b = Batch::default();
            b.put(&self.db, cf::COMPLETE, root.as_bytes(), b"");
            if matches!(node, Node::Snapshot(_)) {
                // A header fetched earlier as history now has its whole tree.
                b.delete(&self.db, cf::META, &shallow_key(root));
            }
            self.db.write(b.inner, false)?;
        }
        Ok(all)
    }

    /// Walks the tree under `root`, skipping complete subtrees, and calls `f` with batches of at most
    /// `batch` ids that are not stored (nodes not stored at all, and chunks). Memory stays bounded:
    /// the walk holds one node's children per level.
    pub fn missing(
        &self,
        root: NodeId,
        batch: usize,
        f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
    ) -> Result<()> {
        let batch = batch.max(1);
        let mut out = Vec::with_capacity(batch);
        let mut seen = Seen::default();
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            if self.has_nodes(&[id])?[0] || !seen.insert(ObjectId::Node(id)) {
                continue;
            }
            let Some(bytes) = self.get_node(id)? else {
                push(&mut out, ObjectId::Node(id), batch, f)?;
                continue;
            };
            let node = Node::decode_verified(&id, &bytes)?;
            let children = node.children();
            let chunk_ids: Vec<ChunkId> = children
                .iter()
                .filter_map(|c| {
                    if let Child::Chunk(c, _) = c {
                        Some(*c)
                    } else {
                        None
                    }
                })
                .collect();
            for (c, has) in chunk_ids.iter().zip(self.has_chunks(&chunk_ids)?) {
                if !has && seen.insert(ObjectId::Chunk(*c)) {
                    push(&mut out, ObjectId::Chunk(*c), batch, f)?;
                }
            }
            for c in children.iter().rev() {
                if let Child::Node(n) = c {
                    stack.push(*n);
                }
            }
        }
        if !out.is_empty() {
            f(&out)?;
        }
        Ok(())
    }

    /// Streams (in batches of at most `batch`) the ids of nodes and chunks reachable from `b` that are
    /// not reachable from `a`, skipping subtrees equal in both. Folders are compared by entry name and
    /// chunk lists node by node, so an object that moved between paths may be reported although `a`
    /// holds it elsewhere (a superset of the exact set difference; receivers check with `has_many`).
    /// `a` and `b` are snapshot or tree node ids; both must be stored.
    pub fn diff(
        &self,
        a: NodeId,
        b: NodeId,
        batch: usize,
        f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
    ) -> Result<()> {
        let batch = batch.max(1);
        let mut out = Vec::with_capacity(batch);
        let mut seen = Seen::default();
        self.diff_rec(Some(a), b, batch, &mut out, &mut seen, f, 0)?;
        if !out.is_empty() {
            f(&out)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn diff_rec(
        &self,
        a: Option<NodeId>,
        b: NodeId,
        batch: usize,
        out: &mut Vec<ObjectId>,
        seen: &mut Seen,
        f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(format!(
                "tree under {b} is deeper than {MAX_DEPTH}"
            )));
        }
        if a == Some(b) || !seen.insert(ObjectId::Node(b)) {
            return Ok(());
        }
        push(out, ObjectId::Node(b), batch, f)?;
        let nb = self.read_node(b)?;
        let na = match a {
            Some(a) => Some(self.read_node(a)?),
            None => None,
        };
        match &nb {
            Node::Snapshot(sb) => {
                let ra = match &na {
                    Some(Node::Snapshot(sa)) => Some(sa.root),
                    _ => None,
                };
                self.diff_rec(ra, sb.root, batch, out, seen, f, depth + 1)?;
            }
            Node::Dir(_) => {
                // Pair entries by name (through every level of a wide folder).
                let (ea, ia) = match (&na, a) {
                    (Some(Node::Dir(_)), Some(a)) => (self.dir_entries(a)?, index_nodes(self, a)?),
                    _ => (Vec::new(), HashSet::new()),
                };
                for n in index_nodes(self, b)? {
                    if n != b && !ia.contains(&n) && seen.insert(ObjectId::Node(n)) {
                        push(out, ObjectId::Node(n), batch, f)?;
                    }
                }
                let mut ai = 0;
                for e in self.dir_entries(b)? {
                    while ai < ea.len() && ea[ai].name < e.name {
                        ai += 1;
                    }
                    let prev = ea.get(ai).filter(|x| x.name == e.name);
                    if let Target::Node(id) = e.target {
                        let pa = prev.and_then(|p| {
                            if let Target::Node(x) = p.target {
                                Some(x)
                            } else {
                                None
                            }
                        });
                        self.diff_rec(pa, id, batch, out, seen, f, depth + 1)?;
                    }
                }
            }
            Node::File(_) | Node::ChunkList(_) => {
                let ca = match &na {
                    Some(n @ (Node::File(_) | Node::ChunkList(_))) => n.children(),
                    _ => Vec::new(),
                };
                self.diff_chunks(ca, nb.children(), batch, out, seen, f)?;
            }
        }
        Ok(())
    }

    /// Level-by-level diff of two chunk-list trees: children of b absent from a's children at the
    /// same level are new; the unmatched nodes on both sides are expanded one level down together.
    /// When more than [`DIFF_EXPAND`] nodes of a are unmatched at a level, a's side is dropped (the
    /// result becomes a superset) so memory stays bounded.
    fn diff_chunks(
        &self,
        a: Vec<Child>,
        b: Vec<Child>,
        batch: usize,
        out: &mut Vec<ObjectId>,
        seen: &mut Seen,
        f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
    ) -> Result<()> {
        let (mut a, mut b) = (a, b);
        while !b.is_empty() {
            let aset: HashSet<Child> = a.iter().copied().collect();
            let bset: HashSet<Child> = b.iter().copied().collect();
            let a_rest: Vec<NodeId> = a
                .iter()
                .filter_map(|c| {
                    if let Child::Node(n) = c {
                        (!bset.contains(c)).then_some(*n)
                    } else {
                        None
                    }
                })
                .collect();
            let mut next_b = Vec::new();
            for c in &b {
                if aset.contains(c) {
                    continue;
                }
                match *c {
                    Child::Chunk(id, _) => {
                        if seen.insert(ObjectId::Chunk(id)) {
                            push(out, ObjectId::Chunk(id), batch, f)?;
                        }
                    }
                    Child::Node(id) => {
                        if seen.insert(ObjectId::Node(id)) {
                            push(out, ObjectId::Node(id), batch, f)?;
                            next_b.extend(self.read_node(id)?.children());
                        }
                    }
                }
            }
            let mut next_a = Vec::new();
            if a_rest.len() <= DIFF_EXPAND {
                for n in a_rest {
                    next_a.extend(self.read_node(n)?.children());
                }
            }
            a = next_a;
            b = next_b;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- read side
}

/// Most unmatched chunk-list nodes of the old side expanded per level by `diff`.
const DIFF_EXPAND: usize = 256;

/// Folder nodes (leaves and index nodes) of the folder rooted at `id`.
fn index_nodes(s: &Store, id: NodeId) -> Result<HashSet<NodeId>> {
    let mut out = HashSet::new();
    let mut stack = vec![id];
    while let Some(n) = stack.pop() {
        out.insert(n);
        if let Node::Dir(DirNode::Index { children, .. }) = s.read_node(n)? {
            stack.extend(children);
        }
    }
    Ok(out)
}

fn push(
    out: &mut Vec<ObjectId>,
    id: ObjectId,
    batch: usize,
    f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
) -> Result<()> {
    out.push(id);
    if out.len() >= batch {
        f(out)?;
        out.clear();
    }
    Ok(())
}

/// A bounded "already emitted" set: forgets everything when it grows past a limit, so memory stays
/// bounded (at worst an id is emitted twice).
#[derive(Default)]
struct Seen(HashSet<ObjectId>);

impl Seen {
    const LIMIT: usize = 1 << 20;
    fn insert(&mut self, id: ObjectId) -> bool {
        if self.0.len() >= Self::LIMIT {
            self.0.clear();
        }
        self.0.insert(id)
    }
}
