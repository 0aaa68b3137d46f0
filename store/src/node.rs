//! Merkle nodes: files, chunk lists, folders and snapshots.
//!
//! A node is encoded as one version byte ([`NODE_VERSION`]) followed by the postcard encoding of
//! [`Node`]; its id is the BLAKE3 hash of those bytes. Nodes are immutable and never exceed
//! [`MAX_NODE_SIZE`] encoded, whatever the file or folder size:
//!
//! - [`FileNode`]: size, mode, mtime and its content: the chunk entries inline for small files, or the
//!   root of a chunk-list tree.
//! - [`ChunkListNode`]: a level of a content-defined Merkle tree (a "prolly tree") over
//!   `(ChunkId, len)` entries. A node ends after an entry whose id hash hits a boundary (about one in
//!   [`CHUNK_FANOUT`]), or at [`CHUNK_MAX_FANOUT`] entries. A boundary needs at least two entries, so
//!   even runs of identical entries (zero runs, repeated blocks) shrink every level by half or more:
//!   the tree stays shallow and no node is large. An edit rewrites one leaf and its ancestors:
//!   O(log n) small nodes.
//! - [`DirNode`]: sorted entries (raw name bytes, kind, mode, mtime, size, child id or link target),
//!   split the same way on the hash of the entry name, or when the encoded size nears the limit, and
//!   indexed by upper levels when a folder is wide.
//! - [`Snapshot`]: root folder, parents, device, time, message.
//!
//! Decoding is bounded and strict: oversize input, an unknown version, trailing bytes, unsorted or
//! invalid names, and empty interior nodes are errors, never panics. This module is pure (no I/O):
//! builders hand every new node to a `put` callback.

use crate::error::{Error, Result};
use crate::ids::{ChunkId, Hash, NodeId};
use crate::types::{EntryKind, Snapshot};
use serde::{Deserialize, Serialize};

/// Version byte at the start of every encoded node.
pub const NODE_VERSION: u8 = 1;
/// No encoded node may be larger than this.
pub const MAX_NODE_SIZE: usize = 64 * 1024;
/// Target fan-out of chunk-list nodes (a boundary falls after ~1 in this many entries).
pub const CHUNK_FANOUT: u32 = 128;
/// Hard maximum entries per chunk-list node (~44 KiB encoded at most).
pub const CHUNK_MAX_FANOUT: usize = 1024;
/// Files with at most this many chunks keep their chunk entries inline in the file node.
pub const INLINE_CHUNKS: usize = 32;
/// Target fan-out of folder nodes.
pub const DIR_FANOUT: u32 = 64;
/// A folder leaf is cut before it would exceed this many (estimated) encoded bytes.
pub const DIR_LEAF_BYTES: usize = 48 * 1024;
/// Longest accepted entry name.
pub const MAX_NAME: usize = 4096;
/// Longest accepted symlink target.
pub const MAX_LINK: usize = 8192;
/// Deepest accepted tree level.
pub const MAX_LEVEL: u8 = 40;

/// A reference to a chunk (level 0: chunk id + plain length) or to a lower chunk-list node
/// (level > 0: node id + plain bytes beneath it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Chunk id (level 0) or child node id.
    pub id: Hash,
    /// Plain bytes covered.
    pub len: u64,
}

/// Content of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Chunk entries kept in the file node (small files; empty for an empty file).
    Inline(Vec<ChunkRef>),
    /// Root of a chunk-list tree.
    Tree(NodeId),
}

/// A file node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNode {
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// The bytes.
    pub content: Content,
}

/// One level of a chunk-list tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkListNode {
    /// 0 for leaves (entries are chunks), > 0 for interior nodes (entries are child nodes).
    pub level: u8,
    /// Entries in file order.
    pub entries: Vec<ChunkRef>,
}

/// What a folder entry points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// File or folder node.
    Node(NodeId),
    /// Symlink target, raw bytes.
    Link(Vec<u8>),
}

/// One folder entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Raw name bytes (no `/`, no NUL, not `.` or `..`).
    pub name: Vec<u8>,
    /// Kind.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, ns.
    pub mtime_ns: i64,
    /// File size, link length, or 0 for folders.
    pub size: u64,
    /// Child node or link target.
    pub target: Target,
}

impl DirEntry {
    fn estimated_size(&self) -> usize {
        let t = match &self.target {
            Target::Node(_) => 33,
            Target::Link(l) => l.len() + 3,
        };
        self.name.len() + t + 40
    }
}

/// A folder node: a leaf of sorted entries, or an index over lower folder nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirNode {
    /// Sorted entries.
    Leaf(Vec<DirEntry>),
    /// Lower-level folder nodes, in name order.
    Index {
        /// Level (>= 1).
        level: u8,
        /// Children.
        children: Vec<NodeId>,
    },
}

/// Any node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    /// A file.
    File(FileNode),
    /// A chunk-list tree node.
    ChunkList(ChunkListNode),
    /// A folder (or part of one).
    Dir(DirNode),
    /// A snapshot.
    Snapshot(Snapshot),
}

/// Id of a child reachable from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Child {
    /// A chunk.
    Chunk(ChunkId, u64),
    /// A node.
    Node(NodeId),
}

impl Node {
    /// Encodes (version byte + postcard). Errors if the result exceeds [`MAX_NODE_SIZE`].
    pub fn encode(&self) -> Result<Vec<u8>> {
        let out = postcard::to_extend(self, vec![NODE_VERSION])
            .map_err(|e| Error::Invalid(format!("node encoding failed: {e}")))?;
        if out.len() > MAX_NODE_SIZE {
            return Err(Error::Invalid(format!(
                "node of {} bytes exceeds {MAX_NODE_SIZE}",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Encodes and hashes.
    pub fn encode_with_id(&self) -> Result<(NodeId, Vec<u8>)> {
        let b = self.encode()?;
        Ok((NodeId(Hash::of(&b)), b))
    }

    /// Decodes and validates (bounded, strict).
    pub fn decode(bytes: &[u8]) -> Result<Node> {
        if bytes.len() > MAX_NODE_SIZE {
            return Err(Error::corrupt(format!(
                "node of {} bytes exceeds {MAX_NODE_SIZE}",
                bytes.len()
            )));
        }
        let (&v, body) = bytes
            .split_first()
            .ok_or_else(|| Error::corrupt("empty node"))?;
        if v != NODE_VERSION {
            return Err(Error::corrupt(format!("unknown node version {v}")));
        }
        let (node, rest): (Node, &[u8]) = postcard::take_from_bytes(body)
            .map_err(|e| Error::corrupt(format!("node does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::corrupt(format!(
                "node has {} trailing bytes",
                rest.len()
            )));
        }
        node.validate()?;
        Ok(node)
    }

    /// Decodes and checks that the bytes hash to `id`.
    pub fn decode_verified(id: &NodeId, bytes: &[u8]) -> Result<Node> {
        if Hash::of(bytes) != id.0 {
            return Err(Error::corrupt(format!(
                "node {id} is corrupt: hash mismatch"
            )));
        }
        Node::decode(bytes).map_err(|e| Error::corrupt(format!("node {id} is corrupt: {e}")))
    }

    fn validate(&self) -> Result<()> {
        match self {
            Node::File(f) => {
                if let Content::Inline(e) = &f.content {
                    // Checked: the lengths come from a peer or a disk and may be crafted to wrap.
                    let sum = e.iter().try_fold(0u64, |a, c| a.checked_add(c.len));
                    if e.len() > CHUNK_MAX_FANOUT || sum != Some(f.size) {
                        return Err(Error::corrupt("file node size does not match its chunks"));
                    }
                }
            }
            Node::ChunkList(c) => {
                if c.entries.is_empty() || c.entries.len() > CHUNK_MAX_FANOUT || c.level > MAX_LEVEL
                {
                    return Err(Error::corrupt(
                        "chunk list node has a bad entry count or level",
                    ));
                }
            }
            Node::Dir(DirNode::Leaf(entries)) => {
                for (i, e) in entries.iter().enumerate() {
                    check_name(&e.name)?;
                    if i > 0 && entries[i - 1].name >= e.name {
                        return Err(Error::corrupt(
                            "folder entries are not sorted or not unique",
                        ));
                    }
                    match (&e.kind, &e.target) {
                        (EntryKind::Symlink, Target::Link(l)) => {
                            if l.is_empty() || l.len() > MAX_LINK || l.contains(&0) {
                                return Err(Error::corrupt("invalid symlink target"));
                            }
                        }
                        (EntryKind::File | EntryKind::Dir, Target::Node(_)) => {}
                        _ => {
                            return Err(Error::corrupt(
                                "folder entry kind does not match its target",
                            ))
                        }
                    }
                }
            }
            Node::Dir(DirNode::Index { level, children }) => {
                if children.is_empty()
                    || children.len() > CHUNK_MAX_FANOUT
                    || *level == 0
                    || *level > MAX_LEVEL
                {
                    return Err(Error::corrupt(
                        "folder index node has a bad entry count or level",
                    ));
                }
            }
            Node::Snapshot(s) => {
                if s.parents.len() > 64 {
                    return Err(Error::corrupt("snapshot has too many parents"));
                }
            }
        }
        Ok(())
    }

    /// Direct children (chunks and nodes) in order.
    pub fn children(&self) -> Vec<Child> {
        match self {
            Node::File(f) => match &f.content {
                Content::Inline(e) => e
                    .iter()
                    .map(|c| Child::Chunk(ChunkId(c.id), c.len))
                    .collect(),
                Content::Tree(id) => vec![Child::Node(*id)],
            },
            Node::ChunkList(c) if c.level == 0 => c
                .entries
                .iter()
                .map(|c| Child::Chunk(ChunkId(c.id), c.len))
                .collect(),
            Node::ChunkList(c) => c
                .entries
                .iter()
                .map(|c| Child::Node(NodeId(c.id)))
                .collect(),
            Node::Dir(DirNode::Leaf(entries)) => entries
                .iter()
                .filter_map(|e| match e.target {
                    Target::Node(id) => Some(Child::Node(id)),
                    Target::Link(_) => None,
                })
                .collect(),
            Node::Dir(DirNode::Index { children, .. }) => {
                children.iter().map(|c| Child::Node(*c)).collect()
            }
            // A snapshot's tree is its root; parents are history, not content.
            Node::Snapshot(s) => vec![Child::Node(s.root)],
        }
    }
}

/// Checks an entry name: non-empty, at most [`MAX_NAME`] bytes, no `/` or NUL, not `.` or `..`.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || name == b"."
        || name == b".."
        || name.contains(&b'/')
        || name.contains(&0)
    {
        return Err(Error::corrupt(format!(
            "invalid entry name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

fn hash_bits(h: &Hash) -> u32 {
    u32::from_le_bytes([h.0[28], h.0[29], h.0[30], h.0[31]])
}

/// Splits `items` into groups: cut after an item when `boundary(item)` says so and the group has at
/// least two items, when the group reaches `max_count`, or before an item that would push the
/// group's `size` past `max_bytes`.
fn split<T>(
    items: Vec<T>,
    boundary: impl Fn(&T) -> bool,
    size: impl Fn(&T) -> usize,
    max_count: usize,
    max_bytes: usize,
) -> Vec<Vec<T>> {
    let mut groups = Vec::new();
    let mut cur: Vec<T> = Vec::new();
    let mut bytes = 0;
    for it in items {
        let s = size(&it);
        if !cur.is_empty() && bytes + s > max_bytes {
            groups.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += s;
        let cut = boundary(&it);
        cur.push(it);
        if (cut && cur.len() >= 2) || cur.len() >= max_count {
            groups.push(std::mem::take(&mut cur));
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    groups
}

/// Builds the content of a file from its chunk entries, handing new chunk-list nodes to `put`.
pub fn build_content(
    entries: Vec<ChunkRef>,
    put: &mut dyn FnMut(NodeId, Vec<u8>) -> Result<()>,
) -> Result<Content> {
    let mut b = ContentBuilder::new();
    for e in entries {
        b.push(e, put)?;
    }
    b.finish(put)
}

/// Streaming builder of a file's chunk-list tree: entries are pushed in file order and nodes are
/// handed to `put` as soon as they close, so memory is bounded by the tree depth times the maximum
/// fan-out, whatever the file size. Gives exactly the tree [`build_content`] describes.
#[derive(Debug, Default)]
pub struct ContentBuilder {
    inline: Vec<ChunkRef>,
    streaming: bool,
    /// Per level: the open group and how many nodes were closed.
    levels: Vec<(Vec<ChunkRef>, u64)>,
}

impl ContentBuilder {
    /// An empty builder.
    pub fn new() -> ContentBuilder {
        ContentBuilder::default()
    }

    /// Appends the next chunk of the file.
    pub fn push(
        &mut self,
        e: ChunkRef,
        put: &mut dyn FnMut(NodeId, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        if !self.streaming {
            self.inline.push(e);
            if self.inline.len() > INLINE_CHUNKS {
                self.streaming = true;
                for e in std::mem::take(&mut self.inline) {
                    self.push_level(0, e, put)?;
                }
            }
            return Ok(());
        }
        self.push_level(0, e, put)
    }

    fn push_level(
        &mut self,
        l: usize,
        e: ChunkRef,
        put: &mut dyn FnMut(NodeId, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        if l > MAX_LEVEL as usize {
            return Err(Error::Invalid("chunk list tree too deep".into()));
        }
        if self.levels.len() <= l {
            self.levels.push((Vec::new(), 0));
        }
        let cut = hash_bits(&e.id).is_multiple_of(CHUNK_FANOUT);
        let cur = &mut self.levels[l].0;
        cur.push(e);
        if (cut && cur.len() >= 2) || cur.len() >= CHUNK_MAX_FANOUT {
            self.close(l, put)?;
        }
        Ok(())
    }

    fn close(
        &mut self,
        l: usize,
        put: &mut dyn FnMut(NodeId, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let g = std::mem::take(&mut self.levels[l].0);
        if g.is_empty() {
            return Ok(());
        }
        let len = g.iter().map(|e| e.len).sum();
        let (id, bytes) = Node::ChunkList(ChunkListNode {
            level: l as u8,
            entries: g,
        })
        .encode_with_id()?;
        put(id, bytes)?;
        self.levels[l].1 += 1;
        self.push_level(l + 1, ChunkRef { id: id.0, len }, put)
    }

    /// Closes the open groups bottom-up and returns the file's content.
    pub fn finish(mut self, put: &mut dyn FnMut(NodeId, Vec<u8>) -> Result<()>) -> Result<Content> {
        if !self.streaming {
            return Ok(Content::Inline(self.inline));
        }
        let mut l = 0;
        loop {
            let (open, closed) = (&self.levels[l].0, self.levels[l].1);
            let groups = closed + u64::from(!open.is_empty());
            if groups == 1 && open.is_empty() {
                // The one closed node of this level is the root (the only entry one level up).
                return Ok(Content::Tree(NodeId(self.levels[l + 1].0[0].id)));
            }
            if groups == 1 {
                let g = std::mem::take(&mut self.levels[l].0);
                let (id, bytes) = Node::ChunkList(ChunkListNode {
                    level: l as u8,
                    entries: g,
                })
                .encode_with_id()?;
                put(id, bytes)?;
                return Ok(Content::Tree(id));
            }
            self.close(l, put)?;
            l += 1;
        }
    }
}

/// Builds a folder from entries sorted by name, handing every new node to `put`; returns the root.
pub fn build_dir(
    entries: Vec<DirEntry>,
    put: &mut dyn FnMut(NodeId, Vec<u8>) -> Result<()>,
) -> Result<NodeId> {
    let groups = split(
        entries,
        |e| hash_bits(&Hash::of(&e.name)).is_multiple_of(DIR_FANOUT),
        DirEntry::estimated_size,
        usize::MAX,
        DIR_LEAF_BYTES,
    );
    let mut ids = Vec::with_capacity(groups.len().max(1));
    if groups.is_empty() {
        let (id, bytes) = Node::Dir(DirNode::Leaf(Vec::new())).encode_with_id()?;
        put(id, bytes)?;
        return Ok(id);
    }
    for g in groups {
        let (id, bytes) = Node::Dir(DirNode::Leaf(g)).encode_with_id()?;
        put(id, bytes)?;
        ids.push(id);
    }
    let mut level = 1u8;
    while ids.len() > 1 {
        let groups = split(
            ids,
            |id| hash_bits(&id.0).is_multiple_of(DIR_FANOUT),
            |_| 1,
            CHUNK_MAX_FANOUT,
            usize::MAX,
        );
        let mut next = Vec::with_capacity(groups.len());
        for g in groups {
            let (id, bytes) = Node::Dir(DirNode::Index { level, children: g }).encode_with_id()?;
            put(id, bytes)?;
            next.push(id);
        }
        ids = next;
        level += 1;
    }
    Ok(ids[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn chunk(i: u64) -> ChunkRef {
        ChunkRef {
            id: Hash::of(&i.to_le_bytes()),
            len: 65536,
        }
    }

    #[test]
    fn inline_lengths_that_wrap_are_refused() {
        // Two chunks whose lengths add up to 2^64 + 5 would "match" a size of 5 if the sum wrapped.
        let node = Node::File(FileNode {
            size: 5,
            mode: 0o644,
            mtime_ns: 0,
            content: Content::Inline(vec![
                ChunkRef {
                    id: Hash::of(b"a"),
                    len: u64::MAX,
                },
                ChunkRef {
                    id: Hash::of(b"b"),
                    len: 6,
                },
            ]),
        });
        let bytes = node.encode().unwrap();
        assert!(Node::decode(&bytes).is_err());
    }

    fn build(entries: Vec<ChunkRef>) -> (Content, HashMap<NodeId, Vec<u8>>) {
        let mut nodes = HashMap::new();
        let c = build_content(entries, &mut |id, b| {
            nodes.insert(id, b);
            Ok(())
        })
        .unwrap();
        (c, nodes)
    }

    /// Depth of the chunk-list tree and every leaf entry, read back through `nodes`.
    fn read_back(c: &Content, nodes: &HashMap<NodeId, Vec<u8>>) -> (usize, Vec<ChunkRef>) {
        fn walk(id: NodeId, nodes: &HashMap<NodeId, Vec<u8>>, out: &mut Vec<ChunkRef>) -> usize {
            let b = &nodes[&id];
            assert!(b.len() <= MAX_NODE_SIZE);
            match Node::decode_verified(&id, b).unwrap() {
                Node::ChunkList(c) if c.level == 0 => {
                    out.extend(c.entries);
                    1
                }
                Node::ChunkList(c) => {
                    let mut d = 0;
                    for e in c.entries {
                        d = d.max(walk(NodeId(e.id), nodes, out));
                    }
                    d + 1
                }
                n => panic!("unexpected {n:?}"),
            }
        }
        let mut out = Vec::new();
        match c {
            Content::Inline(e) => (0, e.clone()),
            Content::Tree(root) => (walk(*root, nodes, &mut out), out),
        }
    }

    /// The level-by-level reference construction the streaming builder must match.
    fn reference(entries: Vec<ChunkRef>) -> Content {
        if entries.len() <= INLINE_CHUNKS {
            return Content::Inline(entries);
        }
        let mut level = 0u8;
        let mut cur = entries;
        loop {
            let groups = split(
                cur,
                |e| hash_bits(&e.id).is_multiple_of(CHUNK_FANOUT),
                |_| 1,
                CHUNK_MAX_FANOUT,
                usize::MAX,
            );
            let next: Vec<ChunkRef> = groups
                .into_iter()
                .map(|g| {
                    let len = g.iter().map(|e| e.len).sum();
                    let (id, _) = Node::ChunkList(ChunkListNode { level, entries: g })
                        .encode_with_id()
                        .unwrap();
                    ChunkRef { id: id.0, len }
                })
                .collect();
            if next.len() == 1 {
                return Content::Tree(NodeId(next[0].id));
            }
            cur = next;
            level += 1;
        }
    }

    #[test]
    fn streaming_builder_matches_reference() {
        for n in [0u64, 1, 32, 33, 100, 129, 1023, 1024, 1025, 5000, 70_000] {
            let entries: Vec<ChunkRef> = (0..n).map(chunk).collect();
            assert_eq!(build(entries.clone()).0, reference(entries), "n = {n}");
            let zeros = vec![chunk(0); n as usize];
            assert_eq!(build(zeros.clone()).0, reference(zeros), "zeros n = {n}");
        }
    }

    #[test]
    fn all_zero_file_is_small_and_shallow() {
        // 64 GiB of identical chunks (a zero run), 1M entries.
        let n = 1 << 20;
        let entries = vec![chunk(0); n];
        let (c, nodes) = build(entries.clone());
        let (depth, back) = read_back(&c, &nodes);
        assert_eq!(back, entries);
        assert!(depth <= 21, "depth {depth}");
        assert!(nodes.len() <= 25, "{} distinct nodes", nodes.len());
        assert!(nodes.values().all(|b| b.len() <= MAX_NODE_SIZE));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn repeated_blocks_give_bounded_nodes(pattern in proptest::collection::vec(0u64..8, 1..20), n in 1000usize..40_000) {
            let entries: Vec<ChunkRef> = (0..n).map(|i| chunk(pattern[i % pattern.len()])).collect();
            let (c, nodes) = build(entries.clone());
            let (depth, back) = read_back(&c, &nodes);
            prop_assert_eq!(back, entries);
            prop_assert!(depth <= 17, "depth {}", depth);
            prop_assert!(nodes.values().all(|b| b.len() <= MAX_NODE_SIZE));
        }

        #[test]
        fn edit_rewrites_log_n_nodes(n in 2000u64..30_000, at in any::<prop::sample::Index>(), insert in any::<bool>()) {
            let entries: Vec<ChunkRef> = (0..n).map(chunk).collect();
            let (c1, n1) = build(entries.clone());
            let mut edited = entries.clone();
            let i = at.index(edited.len());
            if insert { edited.insert(i, chunk(u64::MAX)); } else { edited[i] = chunk(u64::MAX); }
            let (c2, n2) = build(edited.clone());
            let (depth, back) = read_back(&c2, &n2);
            prop_assert_eq!(back, edited);
            let (d1, _) = read_back(&c1, &n1);
            let new = n2.keys().filter(|k| !n1.contains_key(k)).count();
            // One leaf per level, plus at most one neighbour per level when a boundary moved.
            prop_assert!(new <= 2 * depth.max(d1) + 1, "new {} depth {}", new, depth);
        }
    }

    fn entry(name: &str) -> DirEntry {
        DirEntry {
            name: name.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 1,
            size: 3,
            target: Target::Node(NodeId(Hash::of(name.as_bytes()))),
        }
    }

    #[test]
    fn wide_folder_splits_and_stays_small() {
        let mut entries: Vec<DirEntry> = (0..100_000)
            .map(|i| entry(&format!("file-{i:07}")))
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut nodes = HashMap::new();
        let root = build_dir(entries.clone(), &mut |id, b| {
            assert!(b.len() <= MAX_NODE_SIZE);
            nodes.insert(id, b);
            Ok(())
        })
        .unwrap();
        fn collect(id: NodeId, nodes: &HashMap<NodeId, Vec<u8>>, out: &mut Vec<DirEntry>) {
            match Node::decode_verified(&id, &nodes[&id]).unwrap() {
                Node::Dir(DirNode::Leaf(e)) => out.extend(e),
                Node::Dir(DirNode::Index { children, .. }) => {
                    for c in children {
                        collect(c, nodes, out)
                    }
                }
                n => panic!("{n:?}"),
            }
        }
        let mut back = Vec::new();
        collect(root, &nodes, &mut back);
        assert_eq!(back, entries);
        assert!(nodes.len() > 100);
        // One changed entry rewrites one leaf plus the index path.
        let mut edited = entries.clone();
        edited[50_000].size = 4;
        let mut new = 0;
        build_dir(edited, &mut |id, _| {
            new += usize::from(!nodes.contains_key(&id));
            Ok(())
        })
        .unwrap();
        assert!(new <= 4, "{new}");
        // Empty folder.
        let mut one = 0;
        build_dir(Vec::new(), &mut |_, _| {
            one += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(one, 1);
    }

    #[test]
    fn decoding_is_strict() {
        let n = Node::Dir(DirNode::Leaf(vec![entry("a"), entry("b")]));
        let (id, b) = n.encode_with_id().unwrap();
        assert_eq!(Node::decode_verified(&id, &b).unwrap(), n);
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(Node::decode(&trailing)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
        let mut ver = b.clone();
        ver[0] = 9;
        assert!(Node::decode(&ver)
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        assert!(Node::decode(&[]).is_err());
        assert!(Node::decode(&b[..b.len() - 3]).is_err());
        assert!(Node::decode(&vec![1u8; MAX_NODE_SIZE + 1]).is_err());
        // Unsorted entries and bad names are refused.
        let bad = Node::Dir(DirNode::Leaf(vec![entry("b"), entry("a")]))
            .encode()
            .unwrap();
        assert!(Node::decode(&bad)
            .unwrap_err()
            .to_string()
            .contains("sorted"));
        let bad = Node::Dir(DirNode::Leaf(vec![entry("..")]))
            .encode()
            .unwrap();
        assert!(Node::decode(&bad).is_err());
        let bad = Node::Dir(DirNode::Leaf(vec![entry("a/b")]))
            .encode()
            .unwrap();
        assert!(Node::decode(&bad).is_err());
        // A length prefix claiming a huge vector fails without allocating it.
        let mut huge = vec![NODE_VERSION, 1]; // ChunkList
        huge.push(0); // level
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // 4G entries
        assert!(Node::decode(&huge).is_err());
        assert!(Node::decode_verified(&NodeId(Hash::of(b"x")), &b).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = bytes;
            if !b.is_empty() { b[0] = NODE_VERSION; }
            let _ = Node::decode(&b);
        }
    }
}
