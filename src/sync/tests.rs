//! Pull engine tests: in-memory object sets, simulated peers on a virtual clock, scripted and
//! seeded misbehaviour. Randomised tests print their seed; replay with `LEFT_TEST_SEED=<seed>`.

use super::*;
use crate::ecp::{Message, ObjectRef};
use left_store::node::{build_content, build_dir, Child, ChunkRef, DirEntry, FileNode, Target};
use left_store::{ChunkId, EntryKind, Hash, Snapshot, Store};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------- in-memory store

/// An in-memory object set with the store's semantics: chunks are present when stored, nodes when
/// complete; `put_node` marks a node complete when its children are, `mark_complete` works
/// bottom-up.
#[derive(Default, Clone)]
struct Mem {
    nodes: HashMap<NodeId, Vec<u8>>,
    chunks: HashMap<ChunkId, Vec<u8>>,
    complete: HashSet<NodeId>,
}

impl Mem {
    fn decode(&self, id: NodeId) -> Option<Node> {
        self.nodes
            .get(&id)
            .map(|b| Node::decode_verified(&id, b).expect("stored nodes are valid"))
    }

    fn children_complete(&self, node: &Node) -> bool {
        node.children().iter().all(|c| match c {
            Child::Chunk(c, _) => self.chunks.contains_key(c),
            Child::Node(n) => self.complete.contains(n),
        })
    }

    fn put_node(&mut self, id: NodeId, bytes: Vec<u8>) {
        let node = Node::decode_verified(&id, &bytes).expect("the engine verified it");
        self.nodes.insert(id, bytes);
        if self.children_complete(&node) {
            self.complete.insert(id);
        }
    }

    fn mark_complete(&mut self, id: NodeId) -> bool {
        if self.complete.contains(&id) {
            return true;
        }
        let Some(node) = self.decode(id) else {
            return false;
        };
        let mut all = true;
        for c in node.children() {
            all &= match c {
                Child::Chunk(c, _) => self.chunks.contains_key(&c),
                Child::Node(n) => self.mark_complete(n),
            };
        }
        if all {
            self.complete.insert(id);
        }
        all
    }

    fn apply(&mut self, e: &Effect) {
        match e {
            Effect::StoreNode(id, b) => self.put_node(*id, b.clone()),
            Effect::StoreChunk(id, b, _) => {
                crate::ecp::verify_chunk(id, b, 1 << 20).expect("the engine verified it");
                self.chunks.insert(*id, b.clone());
            }
            Effect::MarkComplete(id) => {
                assert!(self.mark_complete(*id), "MarkComplete({id}) too early");
            }
            _ => {}
        }
    }

    /// Every node and chunk reachable from `head`.
    fn reachable(&self, head: NodeId) -> (HashSet<NodeId>, HashSet<ChunkId>) {
        let (mut nodes, mut chunks) = (HashSet::new(), HashSet::new());
        let mut stack = vec![head];
        while let Some(id) = stack.pop() {
            if !nodes.insert(id) {
                continue;
            }
            for c in self.decode(id).expect("reachable node stored").children() {
                match c {
                    Child::Chunk(c, _) => {
                        assert!(self.chunks.contains_key(&c), "chunk {c} missing");
                        chunks.insert(c);
                    }
                    Child::Node(n) => stack.push(n),
                }
            }
        }
        (nodes, chunks)
    }

    fn object_ids(&self) -> HashSet<ObjectId> {
        self.nodes
            .keys()
            .map(|n| ObjectId::Node(*n))
            .chain(self.chunks.keys().map(|c| ObjectId::Chunk(*c)))
            .collect()
    }
}

impl LocalObjects for Mem {
    fn has_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>, left_store::Error> {
        Ok(ids
            .iter()
            .map(|i| match i {
                ObjectId::Chunk(c) => self.chunks.contains_key(c),
                ObjectId::Node(n) => self.complete.contains(n),
            })
            .collect())
    }

    fn node(&self, id: NodeId) -> Result<Option<Node>, left_store::Error> {
        Ok(self.decode(id))
    }
}

impl ObjectSource for Mem {
    fn node_bytes(&self, id: NodeId) -> Result<Option<Vec<u8>>, left_store::Error> {
        Ok(self.nodes.get(&id).cloned())
    }

    fn chunk_bytes(&self, id: ChunkId) -> Result<Option<Vec<u8>>, left_store::Error> {
        Ok(self.chunks.get(&id).cloned())
    }
}

// ---------------------------------------------------------------------- random trees

struct TreeGen<'a> {
    rng: &'a mut ChaCha8Rng,
    mem: &'a mut Mem,
    pool: Vec<(ChunkId, u64)>,
    next_name: u64,
}

impl TreeGen<'_> {
    fn chunk(&mut self) -> ChunkRef {
        if !self.pool.is_empty() && self.rng.random_bool(0.15) {
            let (id, len) = self.pool[self.rng.random_range(0..self.pool.len())];
            return ChunkRef { id: id.0, len };
        }
        let len = self.rng.random_range(1..3000);
        let mut plain = vec![0u8; len];
        if self.rng.random_bool(0.7) {
            self.rng.fill_bytes(&mut plain);
        }
        // Make every chunk unique unless reused from the pool on purpose.
        plain[..8.min(len)].copy_from_slice(&self.next_name.to_le_bytes()[..8.min(len)]);
        self.next_name += 1;
        let id = ChunkId(Hash::of(&plain));
        self.mem
            .chunks
            .insert(id, left_store::codec::encode(&plain));
        self.pool.push((id, len as u64));
        ChunkRef {
            id: id.0,
            len: len as u64,
        }
    }

    fn put(&mut self, id: NodeId, bytes: Vec<u8>) {
        self.mem.nodes.insert(id, bytes);
    }

    fn file(&mut self, chunks: usize) -> (NodeId, u64) {
        let entries: Vec<ChunkRef> = (0..chunks).map(|_| self.chunk()).collect();
        let size = entries.iter().map(|e| e.len).sum();
        let mut new = Vec::new();
        let content = build_content(entries, &mut |id, b| {
            new.push((id, b));
            Ok(())
        })
        .unwrap();
        for (id, b) in new {
            self.put(id, b);
        }
        let (id, b) = Node::File(FileNode {
            size,
            mode: 0o644,
            mtime_ns: 1,
            content,
        })
        .encode_with_id()
        .unwrap();
        self.put(id, b);
        (id, size)
    }

    fn dir(&mut self, depth: u32, files: usize, max_chunks: usize) -> NodeId {
        let mut entries = Vec::new();
        for i in 0..files {
            let n = if self.rng.random_bool(0.1) {
                self.rng.random_range(33..=max_chunks.max(33))
            } else {
                self.rng.random_range(0..=max_chunks.min(8))
            };
            let (id, size) = self.file(n);
            entries.push(DirEntry {
                name: format!("f{i}").into_bytes(),
                kind: EntryKind::File,
                mode: 0o644,
                mtime_ns: 1,
                size,
                target: Target::Node(id),
            });
        }
        if depth > 0 {
            for i in 0..self.rng.random_range(1..=3) {
                let sub_files = self.rng.random_range(0..=files);
                let id = self.dir(depth - 1, sub_files, max_chunks);
                entries.push(DirEntry {
                    name: format!("d{i}").into_bytes(),
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    mtime_ns: 1,
                    size: 0,
                    target: Target::Node(id),
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        self.dir_of(entries)
    }

    fn dir_of(&mut self, entries: Vec<DirEntry>) -> NodeId {
        let mut new = Vec::new();
        let id = build_dir(entries, &mut |id, b| {
            new.push((id, b));
            Ok(())
        })
        .unwrap();
        for (id, b) in new {
            self.put(id, b);
        }
        id
    }

    fn snapshot(&mut self, root: NodeId, parents: Vec<NodeId>) -> NodeId {
        let (id, b) = Node::Snapshot(Snapshot {
            root,
            parents,
            device: [7; 32],
            time_ns: 0,
            message: String::new(),
        })
        .encode_with_id()
        .unwrap();
        self.put(id, b);
        id
    }
}

/// A random share: every object, all marked complete, and its head snapshot.
fn random_share(
    rng: &mut ChaCha8Rng,
    depth: u32,
    files: usize,
    max_chunks: usize,
) -> (Mem, NodeId) {
    let mut mem = Mem::default();
    let mut g = TreeGen {
        rng,
        mem: &mut mem,
        pool: Vec::new(),
        next_name: 0,
    };
    let root = g.dir(depth, files, max_chunks);
    let head = g.snapshot(root, Vec::new());
    assert!(mem.mark_complete(head));
    (mem, head)
}

fn seed_from_env() -> u64 {
    std::env::var("LEFT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>)
}

// ---------------------------------------------------------------------- simulated peers

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Good,
    /// Flips a byte in this fraction of node and chunk replies.
    Corrupt(f64),
    /// Answers this fraction of requests with `NotFound` for every id.
    NotFound(f64),
    /// Answers the first `n` requests, then nothing ever again.
    Stall(u32),
    /// Answers the first `n` requests, then says `Bye`.
    Bye(u32),
    /// Answers the first request with `Working`, then serves normally.
    WorkingOnce,
    /// Answers every request with a chunk of random bytes under a random id.
    Garbage,
    /// Answers everything except this chunk, which it never sends (nor says it lacks).
    Withhold(ChunkId),
}

struct SimPeer {
    src: Mem,
    behaviour: Behaviour,
    latency: Duration,
    /// Bytes per second.
    rate: f64,
    busy_until: Instant,
    requests: u32,
    /// Ids asked of this peer.
    asked: Vec<ObjectId>,
}

impl SimPeer {
    fn new(src: &Mem, behaviour: Behaviour, latency_ms: u64, start: Instant) -> SimPeer {
        SimPeer {
            src: src.clone(),
            behaviour,
            latency: Duration::from_millis(latency_ms),
            rate: 50e6,
            busy_until: start,
            requests: 0,
            asked: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Net {
    /// Replies by delivery time (sequence numbers keep the order of equal times).
    queue: BTreeMap<(Instant, u64), (PeerId, Message)>,
    seq: u64,
}

impl Net {
    fn push(&mut self, at: Instant, peer: PeerId, msg: Message) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (peer, msg));
    }

    fn request(
        &mut self,
        rng: &mut ChaCha8Rng,
        peers: &mut [SimPeer],
        peer: PeerId,
        msg: Message,
        now: Instant,
    ) {
        let p = &mut peers[peer.0 as usize];
        p.requests += 1;
        match &msg {
            Message::GetNodes { ids } => p.asked.extend(ids.iter().map(|n| ObjectId::Node(*n))),
            Message::GetChunks { ids } => p.asked.extend(ids.iter().map(|c| ObjectId::Chunk(*c))),
            _ => {}
        }
        let mut replies = Vec::new();
        match p.behaviour {
            Behaviour::Stall(n) if p.requests > n => return,
            Behaviour::Bye(n) if p.requests > n => replies.push(Message::Bye),
            Behaviour::WorkingOnce if p.requests == 1 => replies.push(Message::Working {
                retry_after_ms: 200,
            }),
            Behaviour::NotFound(f) if rng.random_bool(f) => {
                let ids = match &msg {
                    Message::GetNodes { ids } => ids.iter().map(|n| ObjectRef::Node(*n)).collect(),
                    Message::GetChunks { ids } => {
                        ids.iter().map(|c| ObjectRef::Chunk(*c)).collect()
                    }
                    _ => Vec::new(),
                };
                replies.push(Message::NotFound { ids });
            }
            Behaviour::Garbage => {
                let mut bytes = vec![0u8; 100];
                rng.fill_bytes(&mut bytes);
                let mut id = [0u8; 32];
                rng.fill_bytes(&mut id);
                replies.push(Message::Chunk {
                    id: ChunkId(Hash(id)),
                    bytes,
                });
            }
            _ => {
                let msg = match (&msg, p.behaviour) {
                    (Message::GetChunks { ids }, Behaviour::Withhold(x)) => {
                        let ids: Vec<ChunkId> = ids.iter().copied().filter(|c| *c != x).collect();
                        if ids.is_empty() {
                            return;
                        }
                        Message::GetChunks { ids }
                    }
                    _ => msg,
                };
                let mut a = Answer::new(&msg).expect("the pull sends only requests");
                while let Some(r) = a.poll(&p.src).unwrap() {
                    replies.push(r);
                }
                if let Behaviour::Corrupt(f) = p.behaviour {
                    for r in &mut replies {
                        let bytes = match r {
                            Message::Chunk { bytes, .. } => bytes,
                            Message::Nodes { nodes } => &mut nodes[0].1,
                            _ => continue,
                        };
                        if rng.random_bool(f) {
                            let i = rng.random_range(0..bytes.len());
                            bytes[i] ^= 0x40;
                        }
                    }
                }
            }
        }
        for r in replies {
            let size = match &r {
                Message::Chunk { bytes, .. } => bytes.len(),
                Message::Nodes { nodes } => nodes.iter().map(|n| n.1.len()).sum(),
                _ => 10,
            };
            let start = p.busy_until.max(now);
            let done = start + Duration::from_secs_f64(size as f64 / p.rate);
            p.busy_until = done;
            self.push(done + p.latency, peer, r);
        }
    }
}

struct Outcome {
    result: Result<NodeId, String>,
    stats: PullStats,
    dropped: Vec<(PeerId, String)>,
    /// Every id requested, in order (endgame copies included).
    requested: Vec<ObjectId>,
    elapsed: Duration,
    /// Largest items in flight seen at any one peer.
    max_items_seen: usize,
    /// The largest size of each part of the engine's state seen after any output.
    worst: MemoryUse,
}

/// Runs `pull` against `peers` until it finishes (or, with `stop_after_chunks`, until the local
/// set holds that many chunks), checking the window and memory bounds after every output.
fn run(
    pull: &mut Pull,
    local: &mut Mem,
    peers: &mut [SimPeer],
    rng: &mut ChaCha8Rng,
    start: Instant,
    stop_after_chunks: Option<usize>,
) -> Outcome {
    let mut net = Net::default();
    let mut now = start;
    let mut requested = Vec::new();
    let mut max_items_seen = 0;
    let cfg = pull.config().clone();
    let ids: Vec<PeerId> = (0..peers.len() as u64).map(PeerId).collect();
    let mut worst = MemoryUse::default();
    let outcome = |pull: &Pull, result, requested, now: Instant, max_items_seen, worst| Outcome {
        result,
        stats: pull.stats().clone(),
        dropped: pull.dropped().to_vec(),
        requested,
        elapsed: now - start,
        max_items_seen,
        worst,
    };
    for step in 0.. {
        assert!(step < 2_000_000, "pull did not finish");
        while let Some(out) = pull.poll(now, local) {
            match out {
                Output::Effect(e) => {
                    local.apply(&e);
                    match e {
                        Effect::Done(h) => {
                            return outcome(pull, Ok(h), requested, now, max_items_seen, worst)
                        }
                        Effect::Failed(r) => {
                            return outcome(
                                pull,
                                Err(r.to_string()),
                                requested,
                                now,
                                max_items_seen,
                                worst,
                            )
                        }
                        _ => {}
                    }
                }
                Output::Send { peer, message } => {
                    match &message {
                        Message::GetNodes { ids } => {
                            assert!(ids.len() <= cfg.max_nodes_per_request);
                            requested.extend(ids.iter().map(|n| ObjectId::Node(*n)))
                        }
                        Message::GetChunks { ids } => {
                            assert!(ids.len() <= cfg.max_chunks_per_request);
                            requested.extend(ids.iter().map(|c| ObjectId::Chunk(*c)))
                        }
                        m => panic!("pull sent {m:?}"),
                    }
                    net.request(rng, peers, peer, message, now);
                }
            }
            // The windows and the memory bound hold after every output.
            for &p in &ids {
                if let Some(f) = pull.in_flight(p) {
                    assert!(f.items <= cfg.max_items_per_peer, "{f:?}");
                    assert!(f.bytes <= cfg.max_bytes_per_peer, "{f:?}");
                    max_items_seen = max_items_seen.max(f.items);
                }
            }
            assert!(pull.in_flight_bytes() <= cfg.max_bytes_in_flight);
            let m = pull.memory();
            assert!(m.outstanding <= cfg.max_outstanding);
            worst.outstanding = worst.outstanding.max(m.outstanding);
            worst.refs = worst.refs.max(m.refs);
            worst.open_nodes = worst.open_nodes.max(m.open_nodes);
            worst.walk_stack = worst.walk_stack.max(m.walk_stack);
            worst.cached_nodes = worst.cached_nodes.max(m.cached_nodes);
            worst.queued = worst.queued.max(m.queued);
        }
        if stop_after_chunks.is_some_and(|n| local.chunks.len() >= n) {
            return outcome(
                pull,
                Err("stopped".into()),
                requested,
                now,
                max_items_seen,
                worst,
            );
        }
        let next_msg = net.queue.keys().next().map(|k| k.0);
        let next_timer = pull.poll_timeout();
        let t = match (next_msg, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => panic!("pull is stuck: no reply in flight and no timer"),
        };
        now = now.max(t);
        if next_msg.is_some_and(|m| m <= now) {
            let (_, (peer, msg)) = net.queue.pop_first().expect("checked above");
            pull.handle_message(now, peer, msg);
        }
        if next_timer.is_some_and(|t| t <= now) {
            pull.handle_timeout(now);
        }
    }
    unreachable!()
}

fn peer_ids(n: usize) -> Vec<PeerId> {
    (0..n as u64).map(PeerId).collect()
}

/// The pulled copy holds exactly what the source holds under `head`, all marked complete.
fn assert_identical(local: &Mem, src: &Mem, head: NodeId) {
    let (n1, c1) = src.reachable(head);
    let (n2, c2) = local.reachable(head);
    assert_eq!(n1, n2);
    assert_eq!(c1, c2);
    for n in &n1 {
        assert_eq!(local.nodes[n], src.nodes[n]);
        assert!(local.complete.contains(n), "node {n} not marked complete");
    }
    for c in &c1 {
        assert_eq!(local.chunks[c], src.chunks[c]);
    }
}

// ---------------------------------------------------------------------- tests

#[test]
fn pull_converges_to_an_identical_complete_copy() {
    let seed = seed_from_env();
    println!("seed={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (src, head) = random_share(&mut rng, 3, 6, 200);
    let start = Instant::now();
    let mut peers = vec![SimPeer::new(&src, Behaviour::Good, 20, start)];
    let mut local = Mem::default();
    let mut pull = Pull::new(head, &peer_ids(1), start, PullConfig::default());
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    assert_eq!(out.result, Ok(head));
    assert_identical(&local, &src, head);
    let (nodes, chunks) = src.reachable(head);
    // Every object crossed once, nothing twice.
    assert_eq!(out.stats.nodes_fetched, nodes.len() as u64);
    assert_eq!(out.stats.chunks_fetched, chunks.len() as u64);
    assert_eq!(out.requested.len(), nodes.len() + chunks.len());
    assert_eq!(out.stats.duplicates, 0);
    let plain: u64 = chunks
        .iter()
        .map(|c| {
            left_store::codec::decode(&src.chunks[c], 1 << 20)
                .unwrap()
                .len() as u64
        })
        .sum();
    assert_eq!(out.stats.chunk_bytes_fetched, plain);
    assert_eq!(out.stats.chunk_bytes_discovered, plain);
    assert!(pull.is_finished());
    assert_eq!(pull.poll(start, &local), None);
}

#[test]
fn pulling_a_complete_head_asks_nothing() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (src, head) = random_share(&mut rng, 1, 3, 10);
    let start = Instant::now();
    let mut local = src.clone();
    let mut peers = vec![SimPeer::new(&src, Behaviour::Good, 20, start)];
    let mut pull = Pull::new(head, &peer_ids(1), start, PullConfig::default());
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    assert_eq!(out.result, Ok(head));
    assert!(out.requested.is_empty());
}

#[test]
fn complete_subtrees_are_skipped() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (mut src, old_head) = random_share(&mut rng, 2, 5, 100);
    let mut local = src.clone();
    let Some(Node::Snapshot(old)) = src.decode(old_head) else {
        unreachable!()
    };
    // A new snapshot: the old root folder as `old`, plus a new folder.
    let mut g = TreeGen {
        rng: &mut rng,
        mem: &mut src,
        pool: Vec::new(),
        next_name: 1 << 40,
    };
    let new_dir = g.dir(1, 3, 50);
    let entries = vec![
        DirEntry {
            name: b"new".to_vec(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 1,
            size: 0,
            target: Target::Node(new_dir),
        },
        DirEntry {
            name: b"old".to_vec(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 1,
            size: 0,
            target: Target::Node(old.root),
        },
    ];
    let root = g.dir_of(entries);
    let head = g.snapshot(root, vec![old_head]);
    assert!(src.mark_complete(head));
    let before = local.object_ids();
    let start = Instant::now();
    let mut peers = vec![SimPeer::new(&src, Behaviour::Good, 20, start)];
    let mut pull = Pull::new(head, &peer_ids(1), start, PullConfig::default());
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    assert_eq!(out.result, Ok(head));
    assert_identical(&local, &src, head);
    // Only the new objects were asked for: the snapshot, the new root, and the new folder's tree.
    let new: HashSet<ObjectId> = src.object_ids().difference(&before).copied().collect();
    let asked: HashSet<ObjectId> = out.requested.iter().copied().collect();
    assert_eq!(asked, new);
    assert_eq!(out.requested.len(), new.len());
}

#[test]
fn resume_refetches_nothing_already_stored() {
    let seed = seed_from_env();
    println!("seed={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (src, head) = random_share(&mut rng, 3, 6, 200);
    let (_, all_chunks) = src.reachable(head);
    let start = Instant::now();
    let mut local = Mem::default();
    let mut peers = vec![SimPeer::new(&src, Behaviour::Good, 20, start)];
    let cfg = PullConfig {
        max_items_per_peer: 16,
        ..PullConfig::default()
    };
    let mut pull = Pull::new(head, &peer_ids(1), start, cfg.clone());
    let first = run(
        &mut pull,
        &mut local,
        &mut peers,
        &mut rng,
        start,
        Some(all_chunks.len() / 2),
    );
    assert_eq!(first.result, Err("stopped".into()));
    drop(pull);
    // The process died: what it stored stays, what was in flight is lost.
    let stored = local.object_ids();
    assert!(!stored.is_empty());
    let mut pull = Pull::new(head, &peer_ids(1), start, cfg);
    let second = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    assert_eq!(second.result, Ok(head));
    assert_identical(&local, &src, head);
    let again: Vec<_> = second
        .requested
        .iter()
        .filter(|id| stored.contains(id))
        .collect();
    assert!(
        again.is_empty(),
        "re-fetched {} stored objects",
        again.len()
    );
    // No chunk crossed twice over both runs.
    let chunk_requests = first
        .requested
        .iter()
        .chain(&second.requested)
        .filter(|id| matches!(id, ObjectId::Chunk(_)))
        .count();
    let in_flight_lost = first.stats.chunks_requested - first.stats.chunks_fetched;
    assert_eq!(
        chunk_requests as u64,
        all_chunks.len() as u64 + in_flight_lost
    );
}

fn run_with_bad_peer(bad: Behaviour, seed: u64) -> (Outcome, Mem, Mem, NodeId) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (src, head) = random_share(&mut rng, 2, 5, 100);
    let start = Instant::now();
    // The bad peer is listed first, so it gets the first requests.
    let mut peers = vec![
        SimPeer::new(&src, bad, 10, start),
        SimPeer::new(&src, Behaviour::Good, 30, start),
    ];
    let mut local = Mem::default();
    // Stall detection before the endgame, so a stalled peer is dropped rather than outrun.
    let cfg = PullConfig {
        stall_timeout: Duration::from_millis(300),
        endgame_after: Duration::from_secs(2),
        ..PullConfig::default()
    };
    let mut pull = Pull::new(head, &peer_ids(2), start, cfg);
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    (out, local, src, head)
}

#[test]
fn bad_peers_are_dropped_and_the_pull_finishes_elsewhere() {
    let cases = [
        (Behaviour::Corrupt(1.0), "bad"),
        (Behaviour::NotFound(1.0), "does not have"),
        (Behaviour::Stall(0), "stalled"),
        (Behaviour::Stall(3), "stalled"),
        (Behaviour::Bye(2), "closed"),
        (Behaviour::Garbage, "bad chunk"),
    ];
    for (bad, reason) in cases {
        let (out, local, src, head) = run_with_bad_peer(bad, 3);
        assert_eq!(out.result, Ok(head), "{bad:?}");
        assert_identical(&local, &src, head);
        assert_eq!(out.dropped.len(), 1, "{bad:?}: {:?}", out.dropped);
        assert_eq!(out.dropped[0].0, PeerId(0));
        assert!(
            out.dropped[0].1.contains(reason),
            "{bad:?}: {}",
            out.dropped[0].1
        );
    }
}

#[test]
fn working_pauses_a_peer_without_dropping_it() {
    let (out, local, src, head) = run_with_bad_peer(Behaviour::WorkingOnce, 4);
    assert_eq!(out.result, Ok(head));
    assert_identical(&local, &src, head);
    assert!(out.dropped.is_empty(), "{:?}", out.dropped);
}

#[test]
fn all_peers_bad_fails_with_every_reason() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (src, head) = random_share(&mut rng, 1, 3, 20);
    let start = Instant::now();
    let mut peers = vec![
        SimPeer::new(&src, Behaviour::Corrupt(1.0), 10, start),
        SimPeer::new(&src, Behaviour::Stall(0), 10, start),
    ];
    let mut local = Mem::default();
    let mut pull = Pull::new(head, &peer_ids(2), start, PullConfig::default());
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    let err = out.result.unwrap_err();
    assert!(err.starts_with("no peer left to fetch from"), "{err}");
    assert!(err.contains("peer 0: peer sent a bad"), "{err}");
    assert!(err.contains("peer 1: peer stalled"), "{err}");
    // Nothing unverified was stored: everything local verifies against the source.
    for (id, b) in &local.nodes {
        assert_eq!(&src.nodes[id], b);
    }
    for (id, b) in &local.chunks {
        assert_eq!(&src.chunks[id], b);
    }
}

#[test]
fn no_peers_fails_at_once() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (_, head) = random_share(&mut rng, 0, 1, 1);
    let mut pull = Pull::new(head, &[], Instant::now(), PullConfig::default());
    let local = Mem::default();
    match pull.poll(Instant::now(), &local) {
        Some(Output::Effect(Effect::Failed(Failure::Peers(r)))) => {
            assert!(r.contains("no peer has the head"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pull.poll(Instant::now(), &local), None);
}

/// A local store whose every lookup fails with a full disk.
struct FullDisk;

impl LocalObjects for FullDisk {
    fn has_many(&self, _: &[ObjectId]) -> Result<Vec<bool>, left_store::Error> {
        Err(left_store::Error::DiskFull {
            path: "/s/db".into(),
        })
    }

    fn node(&self, _: NodeId) -> Result<Option<Node>, left_store::Error> {
        Err(left_store::Error::DiskFull {
            path: "/s/db".into(),
        })
    }
}

#[test]
fn a_store_failure_ends_the_pull_as_a_typed_local_failure() {
    let mut rng = ChaCha8Rng::seed_from_u64(61);
    let (_, head) = random_share(&mut rng, 0, 1, 1);
    let mut pull = Pull::new(head, &[PeerId(0)], Instant::now(), PullConfig::default());
    let mut last = None;
    while let Some(out) = pull.poll(Instant::now(), &FullDisk) {
        last = Some(out);
    }
    match last {
        Some(Output::Effect(Effect::Failed(Failure::Local(e)))) => {
            assert!(e.disk_full, "{e:?}");
            assert_eq!(e.to_string(), "local store: disk full while writing /s/db");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn requests_spread_over_peers_and_windows_fill_but_never_overflow() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (src, head) = random_share(&mut rng, 3, 8, 300);
    let start = Instant::now();
    let mut peers: Vec<SimPeer> = (0..3)
        .map(|_| SimPeer::new(&src, Behaviour::Good, 20, start))
        .collect();
    let cfg = PullConfig {
        max_items_per_peer: 8,
        max_bytes_per_peer: 12_000,
        max_bytes_in_flight: 30_000,
        endgame_copies: 1,
        ..PullConfig::default()
    };
    let mut local = Mem::default();
    let mut pull = Pull::new(head, &peer_ids(3), start, cfg.clone());
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    assert_eq!(out.result, Ok(head));
    assert_identical(&local, &src, head);
    assert!(out.max_items_seen > 1);
    for p in &peers {
        assert!(p.asked.len() > 10, "one peer got only {}", p.asked.len());
    }
    assert_eq!(out.stats.endgame_requests, 0);
}

#[test]
fn endgame_asks_a_slow_peers_last_requests_elsewhere() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (src, head) = random_share(&mut rng, 2, 5, 100);
    let start = Instant::now();
    let run_with = |copies: usize, rng: &mut ChaCha8Rng| {
        let mut peers = vec![
            SimPeer::new(&src, Behaviour::Good, 5, start),
            SimPeer::new(&src, Behaviour::Good, 3000, start),
        ];
        let cfg = PullConfig {
            endgame_copies: copies,
            endgame_after: Duration::from_millis(100),
            ..PullConfig::default()
        };
        let mut local = Mem::default();
        let mut pull = Pull::new(head, &peer_ids(2), start, cfg);
        let out = run(&mut pull, &mut local, &mut peers, rng, start, None);
        assert_eq!(out.result, Ok(head));
        assert_identical(&local, &src, head);
        out
    };
    let without = run_with(1, &mut rng);
    let with = run_with(2, &mut rng);
    assert!(with.stats.endgame_requests > 0);
    assert!(
        with.elapsed < without.elapsed / 2,
        "endgame {:?} vs none {:?}",
        with.elapsed,
        without.elapsed
    );
    assert!(with.dropped.is_empty());
}

#[test]
fn memory_stays_bounded_on_a_wide_tree() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut src = Mem::default();
    let mut g = TreeGen {
        rng: &mut rng,
        mem: &mut src,
        pool: Vec::new(),
        next_name: 0,
    };
    // Two files of 20 000 chunks each (multi-level chunk lists) and 300 small files.
    let mut entries = Vec::new();
    for i in 0..302 {
        let (id, size) = g.file(if i < 2 { 20_000 } else { 3 });
        entries.push(DirEntry {
            name: format!("f{i:04}").into_bytes(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 1,
            size,
            target: Target::Node(id),
        });
    }
    let root = g.dir_of(entries);
    let head = g.snapshot(root, Vec::new());
    assert!(src.mark_complete(head));
    let start = Instant::now();
    let cfg = PullConfig {
        max_outstanding: 100,
        node_cache: 8,
        ..PullConfig::default()
    };
    let mut pull = Pull::new(head, &peer_ids(1), start, cfg);
    let mut local = Mem::default();
    let mut peers = vec![SimPeer::new(&src, Behaviour::Good, 5, start)];
    // Step by hand to watch the walk state after every input.
    let mut net = Net::default();
    let mut now = start;
    let mut worst = MemoryUse::default();
    'outer: loop {
        while let Some(out) = pull.poll(now, &local) {
            match out {
                Output::Effect(e) => {
                    local.apply(&e);
                    if matches!(e, Effect::Done(_)) {
                        break 'outer;
                    }
                    assert!(!matches!(e, Effect::Failed(_)), "{e:?}");
                }
                Output::Send { peer, message } => {
                    net.request(&mut rng, &mut peers, peer, message, now)
                }
            }
            let m = pull.memory();
            worst.outstanding = worst.outstanding.max(m.outstanding);
            worst.refs = worst.refs.max(m.refs);
            worst.open_nodes = worst.open_nodes.max(m.open_nodes);
            worst.walk_stack = worst.walk_stack.max(m.walk_stack);
            worst.cached_nodes = worst.cached_nodes.max(m.cached_nodes);
            worst.queued = worst.queued.max(m.queued);
        }
        let ((t, _), (peer, msg)) = net.queue.pop_first().expect("replies pending");
        now = now.max(t);
        pull.handle_message(now, peer, msg);
    }
    assert_identical(&local, &src, head);
    println!("worst {worst:?}");
    assert!(worst.outstanding <= 100);
    assert!(worst.queued <= 100 + 64);
    assert!(worst.cached_nodes <= 8);
    // Open nodes: the current path plus parents of what is outstanding, far below the tree's
    // 40 000 chunks and ~600 nodes.
    assert!(worst.open_nodes <= 200, "{worst:?}");
    assert!(worst.walk_stack <= 200, "{worst:?}");
}

#[test]
fn a_tree_deeper_than_the_limit_fails() {
    let mut src = Mem::default();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let mut g = TreeGen {
        rng: &mut rng,
        mem: &mut src,
        pool: Vec::new(),
        next_name: 0,
    };
    let mut id = g.dir(0, 1, 1);
    for _ in 0..20 {
        id = g.dir_of(vec![DirEntry {
            name: b"d".to_vec(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 1,
            size: 0,
            target: Target::Node(id),
        }]);
    }
    let head = g.snapshot(id, Vec::new());
    let start = Instant::now();
    let cfg = PullConfig {
        max_depth: 10,
        ..PullConfig::default()
    };
    let mut pull = Pull::new(head, &peer_ids(1), start, cfg);
    let mut local = Mem::default();
    let mut peers = vec![SimPeer::new(&src, Behaviour::Good, 5, start)];
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    let err = out.result.unwrap_err();
    assert!(err.contains("deeper than 10 levels"), "{err}");
}

#[test]
fn inline_empty_files_and_empty_dirs_complete() {
    let mut src = Mem::default();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut g = TreeGen {
        rng: &mut rng,
        mem: &mut src,
        pool: Vec::new(),
        next_name: 0,
    };
    let (empty_file, _) = g.file(0);
    let empty_dir = g.dir_of(Vec::new());
    let root = g.dir_of(vec![
        DirEntry {
            name: b"a".to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 1,
            size: 0,
            target: Target::Node(empty_file),
        },
        DirEntry {
            name: b"b".to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 1,
            size: 0,
            target: Target::Node(empty_file),
        },
        DirEntry {
            name: b"c".to_vec(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 1,
            size: 0,
            target: Target::Node(empty_dir),
        },
    ]);
    let head = g.snapshot(root, Vec::new());
    assert!(src.mark_complete(head));
    let start = Instant::now();
    let mut pull = Pull::new(head, &peer_ids(1), start, PullConfig::default());
    let mut local = Mem::default();
    let mut peers = vec![SimPeer::new(&src, Behaviour::Good, 5, start)];
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    assert_eq!(out.result, Ok(head));
    assert_identical(&local, &src, head);
    assert_eq!(out.requested.len(), 4);
}

/// Several peers with random misbehaviour; at least one is good, so the pull must finish with an
/// identical copy. Replay a failure with `LEFT_TEST_SEED=<seed>`.
#[test]
fn seeded_chaos_with_several_peers() {
    let base = seed_from_env();
    let (mut drops, mut endgame) = (0, 0);
    for i in 0..25u64 {
        let seed = base.wrapping_add(i);
        println!("seeded_chaos_with_several_peers seed={seed}");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (src, head) = random_share(&mut rng, 2, 5, 120);
        let start = Instant::now();
        let n = rng.random_range(2..=5);
        let good = rng.random_range(0..n);
        let mut peers: Vec<SimPeer> = (0..n)
            .map(|i| {
                let b = if i == good {
                    Behaviour::Good
                } else {
                    match rng.random_range(0..8) {
                        0 => Behaviour::Corrupt(rng.random_range(0.01..0.5)),
                        1 => Behaviour::NotFound(rng.random_range(0.01..0.5)),
                        2 => Behaviour::Stall(rng.random_range(0..20)),
                        3 => Behaviour::Bye(rng.random_range(0..20)),
                        4 => Behaviour::WorkingOnce,
                        5 => Behaviour::Garbage,
                        _ => Behaviour::Good,
                    }
                };
                let mut p = SimPeer::new(&src, b, rng.random_range(1..500), start);
                p.rate = rng.random_range(1e5..1e8);
                p
            })
            .collect();
        let cfg = PullConfig {
            max_outstanding: rng.random_range(4..2000),
            max_items_per_peer: rng.random_range(1..100),
            max_bytes_per_peer: rng.random_range(1..200_000),
            max_bytes_in_flight: rng.random_range(1..400_000),
            max_chunks_per_request: rng.random_range(1..64),
            max_nodes_per_request: rng.random_range(1..64),
            stall_timeout: Duration::from_secs(5),
            endgame_after: Duration::from_millis(rng.random_range(1..2000)),
            endgame_copies: rng.random_range(1..4),
            node_cache: rng.random_range(0..16),
            ..PullConfig::default()
        };
        let behaviours: Vec<Behaviour> = peers.iter().map(|p| p.behaviour).collect();
        let mut local = Mem::default();
        let mut pull = Pull::new(head, &peer_ids(n), start, cfg);
        let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
        assert_eq!(out.result, Ok(head), "seed {seed}: {behaviours:?}");
        assert_identical(&local, &src, head);
        assert!(
            out.dropped.iter().all(|(p, _)| p.0 as usize != good),
            "seed {seed}: good peer dropped: {:?}",
            out.dropped
        );
        drops += out.dropped.len();
        endgame += out.stats.endgame_requests;
    }
    // The chaos was real: peers were dropped and the endgame ran.
    assert!(drops > 0 && endgame > 0, "drops {drops}, endgame {endgame}");
}

/// The sans-IO rule: no sockets, clocks, tasks or async in ecp and sync.
#[test]
fn ecp_and_sync_do_no_io() {
    let sources = [
        include_str!("../ecp.rs"),
        include_str!("../ecp/codec.rs"),
        include_str!("../ecp/message.rs"),
        include_str!("../ecp/bounded.rs"),
        include_str!("../sync.rs"),
        include_str!("pull.rs"),
        include_str!("answer.rs"),
        include_str!("serve.rs"),
    ];
    for src in sources {
        for banned in [
            "tokio",
            "std::net",
            "Instant::now",
            "SystemTime",
            "thread::spawn",
            "async ",
            "std::fs",
        ] {
            assert!(!src.contains(banned), "found {banned:?}");
        }
    }
}

#[test]
fn answer_packs_nodes_and_lists_missing() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (src, _) = random_share(&mut rng, 3, 12, 40);
    assert!(src.nodes.len() > 80, "{}", src.nodes.len());
    // More than one reply's worth, so the answer is split.
    let mut ids: Vec<NodeId> = src.nodes.keys().copied().take(80).collect();
    ids.push(NodeId(Hash([1; 32])));
    let mut a = Answer::new(&Message::GetNodes { ids: ids.clone() }).unwrap();
    let mut got = Vec::new();
    let mut missing = Vec::new();
    while let Some(m) = a.poll(&src).unwrap() {
        match m {
            Message::Nodes { nodes } => {
                assert!(nodes.len() <= crate::ecp::MAX_NODES_PER_REPLY);
                got.extend(nodes.into_iter().map(|n| n.0));
            }
            Message::NotFound { ids } => missing.extend(ids),
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(got, ids[..80]);
    assert_eq!(missing, vec![ObjectRef::Node(NodeId(Hash([1; 32])))]);
    assert!(Answer::new(&Message::Same).is_none());
    let c: Vec<ChunkId> = src.chunks.keys().copied().take(3).collect();
    let mut a = Answer::new(&Message::GetChunks { ids: c.clone() }).unwrap();
    for id in &c {
        assert_eq!(
            a.poll(&src).unwrap(),
            Some(Message::Chunk {
                id: *id,
                bytes: src.chunks[id].clone()
            })
        );
    }
    assert_eq!(a.poll(&src).unwrap(), None);
}

/// The pull against a real RocksDB store: effects applied with `apply_to_store`.
#[test]
fn pull_into_a_real_store() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (src, head) = random_share(&mut rng, 2, 4, 60);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("store"), Default::default()).unwrap();
    let start = Instant::now();
    let mut pull = Pull::new(head, &peer_ids(1), start, PullConfig::default());
    let mut peers = vec![SimPeer::new(&src, Behaviour::Good, 5, start)];
    let mut net = Net::default();
    let mut now = start;
    let done = 'outer: loop {
        while let Some(out) = pull.poll(now, &store) {
            match out {
                Output::Effect(e) => {
                    crate::session::apply_to_store(&store, &e).unwrap();
                    match e {
                        Effect::Done(h) => break 'outer h,
                        Effect::Failed(r) => panic!("{r}"),
                        _ => {}
                    }
                }
                Output::Send { peer, message } => {
                    net.request(&mut rng, &mut peers, peer, message, now)
                }
            }
        }
        let ((t, _), (peer, msg)) = net.queue.pop_first().expect("replies pending");
        now = now.max(t);
        pull.handle_message(now, peer, msg);
    };
    assert_eq!(done, head);
    assert_eq!(store.has_nodes(&[head]).unwrap(), vec![true]);
    let (nodes, chunks) = src.reachable(head);
    for n in nodes {
        assert_eq!(store.get_node(n).unwrap().as_ref(), Some(&src.nodes[&n]));
    }
    for c in chunks {
        assert_eq!(store.get_chunk(c).unwrap().as_ref(), Some(&src.chunks[&c]));
    }
    // A second pull of the same head asks nothing.
    let mut again = Pull::new(head, &peer_ids(1), start, PullConfig::default());
    assert_eq!(
        again.poll(start, &store),
        Some(Output::Effect(Effect::Done(head)))
    );
}

#[test]
fn answer_have_says_same_or_excess() {
    let a = NodeId(Hash([1; 32]));
    let b = NodeId(Hash([2; 32]));
    assert_eq!(answer_have(Some(a), Some(a)), Some(Message::Same));
    assert_eq!(
        answer_have(Some(a), Some(b)),
        Some(Message::Excess { head: a })
    );
    assert_eq!(
        answer_have(Some(a), None),
        Some(Message::Excess { head: a })
    );
    assert_eq!(answer_have(None, Some(b)), None);
    assert_eq!(answer_have(None, None), None);
}

/// Engine overhead per object, without hashing costs dominating: 100 000 tiny chunks.
#[test]
fn engine_cost_per_chunk() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let mut src = Mem::default();
    let mut g = TreeGen {
        rng: &mut rng,
        mem: &mut src,
        pool: Vec::new(),
        next_name: 0,
    };
    let mut entries = Vec::new();
    for i in 0..10 {
        let (id, size) = g.file(10_000);
        entries.push(DirEntry {
            name: format!("f{i}").into_bytes(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 1,
            size,
            target: Target::Node(id),
        });
    }
    let root = g.dir_of(entries);
    let head = g.snapshot(root, Vec::new());
    let start = Instant::now();
    let mut peers = vec![
        SimPeer::new(&src, Behaviour::Good, 5, start),
        SimPeer::new(&src, Behaviour::Good, 5, start),
    ];
    let mut local = Mem::default();
    let mut pull = Pull::new(head, &peer_ids(2), start, PullConfig::default());
    let t = std::time::Instant::now();
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    let wall = t.elapsed();
    assert_eq!(out.result, Ok(head));
    println!(
        "100k chunks: {wall:?} wall (engine + simulated peers + verification), {} requests, {} chunks",
        out.stats.requests, out.stats.chunks_fetched
    );
    // Chunk requests are batched, not one per chunk.
    assert!(
        out.stats.requests * 8 < out.stats.chunks_fetched,
        "{:?}",
        out.stats
    );
}

/// Arbitrary replies (random ids, random bytes, wrong kinds) from known and unknown peers never
/// panic the engine, and nothing that fails verification is handed out for storing.
#[test]
fn random_replies_never_panic() {
    let seed = seed_from_env();
    println!("random_replies_never_panic seed={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (src, head) = random_share(&mut rng, 1, 4, 40);
    let ids: Vec<ObjectId> = src.object_ids().into_iter().collect();
    let start = Instant::now();
    let mut now = start;
    let mut pull = Pull::new(head, &peer_ids(3), start, PullConfig::default());
    let mut local = Mem::default();
    for _ in 0..5000 {
        while let Some(out) = pull.poll(now, &local) {
            if let Output::Effect(e) = &out {
                match e {
                    Effect::StoreNode(id, b) => assert_eq!(&src.nodes[id], b),
                    Effect::StoreChunk(id, b, _) => assert_eq!(&src.chunks[id], b),
                    _ => {}
                }
                local.apply(e);
            }
        }
        if pull.is_finished() {
            break;
        }
        let pick = ids[rng.random_range(0..ids.len())];
        let mut bytes = match pick {
            ObjectId::Node(n) => src.nodes[&n].clone(),
            ObjectId::Chunk(c) => src.chunks[&c].clone(),
        };
        if rng.random_bool(0.3) {
            let i = rng.random_range(0..bytes.len());
            bytes[i] = rng.random();
        }
        let msg = match rng.random_range(0..8) {
            0 | 1 => match pick {
                ObjectId::Node(n) => Message::Nodes {
                    nodes: vec![(n, bytes)],
                },
                ObjectId::Chunk(c) => Message::Chunk { id: c, bytes },
            },
            2 => Message::NotFound {
                ids: vec![ObjectRef::from(pick)],
            },
            3 => Message::Working {
                retry_after_ms: rng.random(),
            },
            4 => Message::Same,
            5 => Message::Chunk {
                id: ChunkId(Hash::of(&bytes)),
                bytes,
            },
            6 => Message::GetChunks { ids: Vec::new() },
            _ => Message::Nodes {
                nodes: vec![(NodeId(Hash::of(&bytes)), bytes)],
            },
        };
        now += Duration::from_millis(rng.random_range(0..50));
        pull.handle_message(now, PeerId(rng.random_range(0..5)), msg);
        pull.handle_timeout(now);
    }
}

/// A single peer serving `src`; returns the outcome and what was stored.
fn pull_from_one(src: &Mem, head: NodeId, cfg: PullConfig) -> (Outcome, Mem) {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let start = Instant::now();
    let mut peers = vec![SimPeer::new(src, Behaviour::Good, 5, start)];
    let mut local = Mem::default();
    let mut pull = Pull::new(head, &peer_ids(1), start, cfg);
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    (out, local)
}

#[test]
fn a_chunk_larger_than_the_limit_is_refused() {
    let mut src = Mem::default();
    let plain = vec![0u8; 100_000];
    let id = ChunkId(Hash::of(&plain));
    // zstd shrinks it to a few bytes: a small message that would decompress past the limit.
    let encoded = left_store::codec::encode(&plain);
    assert!(encoded.len() < 1000);
    src.chunks.insert(id, encoded);
    let (fid, b) = Node::File(FileNode {
        size: plain.len() as u64,
        mode: 0o644,
        mtime_ns: 1,
        content: left_store::node::Content::Inline(vec![ChunkRef {
            id: id.0,
            len: plain.len() as u64,
        }]),
    })
    .encode_with_id()
    .unwrap();
    src.nodes.insert(fid, b);
    let cfg = PullConfig {
        max_chunk_size: 64 * 1024,
        ..PullConfig::default()
    };
    let (out, local) = pull_from_one(&src, fid, cfg);
    let err = out.result.unwrap_err();
    assert!(err.contains("peer sent a bad chunk"), "{err}");
    assert!(err.contains("65536"), "{err}");
    assert!(local.chunks.is_empty());
    assert!(!local.complete.contains(&fid));
}

#[test]
fn a_tree_with_an_unsafe_name_is_refused() {
    for name in [&b"../evil"[..], b"a/b", b"..", b"nul\0", b"/abs"] {
        let mut src = Mem::default();
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        let mut g = TreeGen {
            rng: &mut rng,
            mem: &mut src,
            pool: Vec::new(),
            next_name: 0,
        };
        let (file, size) = g.file(2);
        // Encoding does not validate; decoding (on arrival) does.
        let (dir, b) = Node::Dir(left_store::node::DirNode::Leaf(vec![DirEntry {
            name: name.to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_ns: 1,
            size,
            target: Target::Node(file),
        }]))
        .encode_with_id()
        .unwrap();
        g.put(dir, b);
        let head = g.snapshot(dir, Vec::new());
        let (out, local) = pull_from_one(&src, head, PullConfig::default());
        let err = out.result.unwrap_err();
        assert!(err.contains("invalid entry name"), "{name:?}: {err}");
        assert!(!local.nodes.contains_key(&dir));
        assert!(!local.nodes.contains_key(&file));
    }
}

#[test]
fn chatter_does_not_hide_a_stall_and_peer_errors_stay_one_line() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let (_, head) = random_share(&mut rng, 1, 3, 10);
    let start = Instant::now();
    let cfg = PullConfig {
        stall_timeout: Duration::from_secs(1),
        ..PullConfig::default()
    };
    let mut pull = Pull::new(head, &peer_ids(2), start, cfg);
    let local = Mem::default();
    let Some(Output::Send { peer, .. }) = pull.poll(start, &local) else {
        panic!("expected a request")
    };
    // The asked peer only chats: it is still dropped when the stall timeout passes.
    for ms in [300, 600, 900] {
        let now = start + Duration::from_millis(ms);
        pull.handle_message(
            now,
            peer,
            Message::Have {
                share: crate::ecp::ShareId(Hash([0; 32])),
                head: Some(head),
            },
        );
        pull.handle_timeout(now);
    }
    assert_eq!(pull.peers().count(), 2);
    let late = start + Duration::from_millis(1000);
    assert_eq!(pull.poll_timeout(), Some(late));
    pull.handle_timeout(late);
    assert_eq!(pull.peers().count(), 1);
    assert!(pull.dropped()[0].1.contains("stalled"));
    let other = PeerId(1 - peer.0);
    pull.handle_message(
        late,
        other,
        Message::Error {
            code: crate::ecp::ErrorCode::INTERNAL,
            message: "disk\nfailed\x1b[31m".into(),
        },
    );
    let mut failed = None;
    while let Some(out) = pull.poll(late, &local) {
        if let Output::Effect(Effect::Failed(r)) = out {
            failed = Some(r.to_string());
        }
    }
    let r = failed.expect("no peer left");
    assert!(
        r.contains(r"peer sent error 7: disk\nfailed\x1b[31m"),
        "{r}"
    );
    assert!(!r.chars().any(|c| c.is_control()), "{r:?}");
}

fn hello(share: u8, encryption: bool) -> Message {
    Message::Hello {
        protocol: crate::ecp::PROTOCOL_VERSION,
        share: crate::ecp::ShareId(Hash([share; 32])),
        device: [9; 32],
        encryption,
    }
}

#[test]
fn serve_session_greets_answers_and_bounds_pending_requests() {
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let (src, head) = random_share(&mut rng, 1, 3, 10);
    let mut s = ServeSession::new(hello(1, true), 2);
    assert!(s.wants_input());
    s.handle_message(hello(1, true), Some(head)).unwrap();
    assert_eq!(s.poll_message(&src).unwrap(), Some(hello(1, true)));
    let share = crate::ecp::ShareId(Hash([1; 32]));
    s.handle_message(Message::Have { share, head: None }, Some(head))
        .unwrap();
    assert_eq!(
        s.poll_message(&src).unwrap(),
        Some(Message::Excess { head })
    );
    s.handle_message(
        Message::Have {
            share,
            head: Some(head),
        },
        Some(head),
    )
    .unwrap();
    assert_eq!(s.poll_message(&src).unwrap(), Some(Message::Same));
    // Two pending requests fill the queue: the driver stops reading.
    s.handle_message(Message::GetNodes { ids: vec![head] }, Some(head))
        .unwrap();
    let c = *src.chunks.keys().next().unwrap();
    s.handle_message(Message::GetChunks { ids: vec![c] }, Some(head))
        .unwrap();
    assert!(!s.wants_input());
    assert_eq!(
        s.poll_message(&src).unwrap(),
        Some(Message::Nodes {
            nodes: vec![(head, src.nodes[&head].clone())]
        })
    );
    assert_eq!(
        s.poll_message(&src).unwrap(),
        Some(Message::Chunk {
            id: c,
            bytes: src.chunks[&c].clone()
        })
    );
    assert_eq!(s.poll_message(&src).unwrap(), None);
    assert!(s.wants_input());
    s.set_busy(Some(250));
    s.handle_message(Message::GetChunks { ids: vec![c] }, Some(head))
        .unwrap();
    assert_eq!(
        s.poll_message(&src).unwrap(),
        Some(Message::Working {
            retry_after_ms: 250
        })
    );
    s.handle_message(Message::Bye, Some(head)).unwrap();
    assert!(s.is_closed() && !s.wants_input());
}

#[test]
fn serve_session_turned_busy_drops_pending_requests_with_one_working() {
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let (src, head) = random_share(&mut rng, 1, 3, 10);
    let c = *src.chunks.keys().next().unwrap();
    let mut s = ServeSession::new(hello(1, true), 4);
    s.handle_message(hello(1, true), None).unwrap();
    assert!(matches!(
        s.poll_message(&src).unwrap(),
        Some(Message::Hello { .. })
    ));
    s.handle_message(Message::GetChunks { ids: vec![c, c] }, Some(head))
        .unwrap();
    s.handle_message(Message::GetNodes { ids: vec![head] }, Some(head))
        .unwrap();
    // One reply of the first request went out, then the store turns busy.
    assert!(matches!(
        s.poll_message(&src).unwrap(),
        Some(Message::Chunk { .. })
    ));
    s.set_busy(Some(300));
    s.set_busy(Some(300));
    // Nothing more is read: one Working for everything pending, however often busy is set.
    let empty = Mem::default();
    assert_eq!(
        s.poll_message(&empty).unwrap(),
        Some(Message::Working {
            retry_after_ms: 300
        })
    );
    assert_eq!(s.poll_message(&empty).unwrap(), None);
    // Busy cleared: requests are served again.
    s.set_busy(None);
    s.handle_message(Message::GetNodes { ids: vec![head] }, Some(head))
        .unwrap();
    assert!(matches!(
        s.poll_message(&src).unwrap(),
        Some(Message::Nodes { .. })
    ));
}

#[test]
fn serve_session_refuses_mismatches_clearly() {
    let src = Mem::default();
    let mut s = ServeSession::new(hello(1, true), 4);
    let e = s.handle_message(hello(1, false), None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "peer refused: encryption is on here but off on the peer; use the same --encryption on both sides"
    );
    match s.poll_message(&src).unwrap() {
        Some(Message::Error { code, message }) => {
            assert_eq!(code, crate::ecp::ErrorCode::ENCRYPTION_MISMATCH);
            assert!(message.contains("encryption is on here but off on the peer"));
        }
        m => panic!("{m:?}"),
    }
    assert!(s.is_closed());
    // Objects before a hello: refused, nothing served.
    let mut s = ServeSession::new(hello(1, true), 4);
    let e = s
        .handle_message(Message::GetChunks { ids: vec![] }, None)
        .unwrap_err();
    assert_eq!(e, SessionError::Unexpected("GetChunks"));
    assert!(matches!(
        s.poll_message(&src).unwrap(),
        Some(Message::Error { .. })
    ));
    assert!(s.is_closed());
    let mut s = ServeSession::new(hello(1, true), 4);
    assert!(matches!(
        s.handle_message(hello(2, true), None),
        Err(SessionError::Hello(crate::ecp::HelloMismatch::Share { .. }))
    ));
}

/// A chunk the driver verified (off the engine's thread) is taken as checked: a failed check drops
/// the peer like a bad chunk, a passed one is stored with its plain length.
#[test]
fn chunks_checked_by_the_driver_are_trusted_as_checked() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (src, head) = random_share(&mut rng, 1, 2, 8);
    let start = Instant::now();
    let mut pull = Pull::new(head, &peer_ids(2), start, PullConfig::default());
    let mut local = Mem::default();
    let mut asked: Vec<(PeerId, ChunkId)> = Vec::new();
    while let Some(out) = pull.poll(start, &local) {
        match out {
            Output::Effect(e) => local.apply(&e),
            Output::Send {
                peer,
                message: Message::GetNodes { ids },
            } => {
                let nodes = ids.iter().map(|id| (*id, src.nodes[id].clone())).collect();
                pull.handle_message(start, peer, Message::Nodes { nodes });
            }
            Output::Send {
                peer,
                message: Message::GetChunks { ids },
            } => asked.extend(ids.into_iter().map(|c| (peer, c))),
            Output::Send { message, .. } => panic!("unexpected {message:?}"),
        }
    }
    let (good_peer, good) = asked[0];
    let bytes = src.chunks[&good].clone();
    let len = crate::ecp::verify_chunk(&good, &bytes, 1 << 20).unwrap();
    pull.handle_checked_chunk(start, good_peer, good, bytes.clone(), Ok(len));
    let mut stored = false;
    while let Some(out) = pull.poll(start, &local) {
        if let Output::Effect(e) = &out {
            if let Effect::StoreChunk(id, b, l) = e {
                assert_eq!((*id, b, *l as usize), (good, &bytes, len));
                stored = true;
            }
            local.apply(e);
        }
    }
    assert!(stored);
    let (bad_peer, bad) = *asked
        .iter()
        .find(|(_, c)| *c != good)
        .expect("several chunks asked");
    let check = Err(crate::ecp::VerifyError::Chunk {
        id: bad,
        reason: "checked elsewhere".into(),
    });
    pull.handle_checked_chunk(start, bad_peer, bad, src.chunks[&bad].clone(), check);
    assert!(
        pull.dropped()
            .iter()
            .any(|(p, r)| *p == bad_peer && r.contains("bad chunk")),
        "{:?}",
        pull.dropped()
    );
}

// ---------------------------------------------------------------------- walk bound (issue 10.6)

/// A share of `dirs` folders of `files` files each; every file is the chunk `x` followed by a
/// chunk of its own, so every leaf of the tree waits on `x`. Returns the share, its head and `x`.
fn shared_chunk_share(dirs: usize, files: usize) -> (Mem, NodeId, ChunkId) {
    let mut mem = Mem::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut g = TreeGen {
        rng: &mut rng,
        mem: &mut mem,
        pool: Vec::new(),
        next_name: 0,
    };
    let chunk = |g: &mut TreeGen, plain: &[u8]| {
        let id = ChunkId(Hash::of(plain));
        g.mem.chunks.insert(id, left_store::codec::encode(plain));
        ChunkRef {
            id: id.0,
            len: plain.len() as u64,
        }
    };
    let x = chunk(&mut g, b"the chunk every file shares");
    let mut top = Vec::new();
    for d in 0..dirs {
        let mut entries = Vec::new();
        for f in 0..files {
            let own = chunk(&mut g, format!("file {f} of folder {d}").as_bytes());
            let content = build_content(vec![x.clone(), own.clone()], &mut |_, _| {
                unreachable!("two chunks are listed inline")
            })
            .unwrap();
            let (id, b) = Node::File(FileNode {
                size: x.len + own.len,
                mode: 0o644,
                mtime_ns: 1,
                content,
            })
            .encode_with_id()
            .unwrap();
            g.put(id, b);
            entries.push(DirEntry {
                name: format!("f{f:05}").into_bytes(),
                kind: EntryKind::File,
                mode: 0o644,
                mtime_ns: 1,
                size: x.len + own.len,
                target: Target::Node(id),
            });
        }
        let id = g.dir_of(entries);
        top.push(DirEntry {
            name: format!("d{d:05}").into_bytes(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime_ns: 1,
            size: 0,
            target: Target::Node(id),
        });
    }
    let root = g.dir_of(top);
    let head = g.snapshot(root, Vec::new());
    assert!(mem.mark_complete(head));
    (mem, head, ChunkId(x.id))
}

/// Issue 10.6: a peer answers every node request but never sends the one chunk that every leaf
/// of a 24 000-file tree shares. The walk stops opening nodes at its bound instead of holding
/// every leaf, and the pull ends with the stall naming the chunk.
#[test]
fn a_peer_withholding_a_chunk_every_leaf_shares_cannot_grow_the_walk() {
    let (src, head, x) = shared_chunk_share(120, 200);
    let start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut peers = vec![SimPeer::new(&src, Behaviour::Withhold(x), 5, start)];
    let mut local = Mem::default();
    let bound = 2_000;
    let cfg = PullConfig {
        max_pending_refs: bound,
        ..PullConfig::default()
    };
    let mut pull = Pull::new(head, &peer_ids(1), start, cfg);
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    println!("worst {:?} stats {:?}", out.worst, out.stats);
    let err = out.result.unwrap_err();
    assert!(err.contains("stalled"), "{err}");
    assert!(
        err.contains(&format!("owes chunk {}", x.fmt_short())),
        "the error names the withheld chunk: {err}"
    );
    assert!(
        out.worst.open_nodes <= bound,
        "the walk held {} open nodes (bound {bound})",
        out.worst.open_nodes
    );
    assert!(out.worst.refs <= bound, "{:?}", out.worst);
    // Every open node but the head and every waiting id holds a reference.
    assert!(out.worst.outstanding <= bound + 1, "{:?}", out.worst);
    // The walk stopped at its bound: most of the tree was never asked for.
    assert!(
        out.stats.nodes_fetched < 4 * bound as u64,
        "{:?}",
        out.stats
    );
}

/// The same 24 000-file tree from an honest peer, and a random one with shared chunks, sync
/// completely under a bound far smaller than the tree.
#[test]
fn an_honest_tree_larger_than_the_walk_bound_syncs_within_it() {
    let (src, head, _) = shared_chunk_share(120, 200);
    let start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let bound = 2_000;
    let cfg = PullConfig {
        max_pending_refs: bound,
        ..PullConfig::default()
    };
    let mut peers = vec![SimPeer::new(&src, Behaviour::Good, 5, start)];
    let mut local = Mem::default();
    let mut pull = Pull::new(head, &peer_ids(1), start, cfg);
    let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
    println!("shared chunk: worst {:?} stats {:?}", out.worst, out.stats);
    assert_eq!(out.result, Ok(head));
    assert_identical(&local, &src, head);
    assert!(out.worst.refs <= bound, "{:?}", out.worst);
    assert!(out.worst.open_nodes <= bound, "{:?}", out.worst);
    assert_eq!(out.stats.duplicates, 0);

    // Random trees (shared chunks, big files with chunk-list nodes, nested folders) under a
    // bound of 64 references, less than one big file's list: past a quarter of it the walk
    // goes on only depth-first while nothing is in flight, and never past it.
    let seed = seed_from_env();
    println!("seed={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for round in 0..4 {
        let bound = 64;
        // A tree bigger than the bound (a small random tree would not test it): draw again.
        let (src, head, nodes, chunks) = loop {
            let (src, head) = random_share(&mut rng, 3, 12, 300);
            let (nodes, chunks) = src.reachable(head);
            if nodes.len() + chunks.len() > 4 * bound {
                break (src, head, nodes, chunks);
            }
        };
        let cfg = PullConfig {
            max_pending_refs: bound,
            ..PullConfig::default()
        };
        let peers_n = 1 + round % 2;
        let mut peers: Vec<SimPeer> = (0..peers_n)
            .map(|i| SimPeer::new(&src, Behaviour::Good, 5 + 10 * i as u64, start))
            .collect();
        let mut local = Mem::default();
        let mut pull = Pull::new(head, &peer_ids(peers_n), start, cfg);
        let out = run(&mut pull, &mut local, &mut peers, &mut rng, start, None);
        println!(
            "round {round}: {} nodes {} chunks, worst {:?}",
            nodes.len(),
            chunks.len(),
            out.worst
        );
        assert_eq!(out.result, Ok(head));
        assert_identical(&local, &src, head);
        assert!(out.worst.refs <= bound, "{:?}", out.worst);
        assert!(out.worst.open_nodes <= bound, "{:?}", out.worst);
    }
}

/// `+=` on [`PullStats`] sums every counter: each field distinct and non-zero (a struct literal
/// without `..`, so a new field must be named here), added twice to the default.
#[test]
fn pull_stats_add_assign_sums_every_field() {
    let s = PullStats {
        requests: 1,
        nodes_requested: 2,
        chunks_requested: 3,
        endgame_requests: 4,
        nodes_fetched: 5,
        chunks_fetched: 6,
        payload_bytes_received: 7,
        chunk_bytes_discovered: 8,
        chunk_bytes_fetched: 9,
        duplicates: 10,
        peers_dropped: 11,
    };
    let mut total = PullStats::default();
    total += &s;
    assert_eq!(total, s);
    total += &s;
    let doubled = PullStats {
        requests: 2,
        nodes_requested: 4,
        chunks_requested: 6,
        endgame_requests: 8,
        nodes_fetched: 10,
        chunks_fetched: 12,
        payload_bytes_received: 14,
        chunk_bytes_discovered: 16,
        chunk_bytes_fetched: 18,
        duplicates: 20,
        peers_dropped: 22,
    };
    assert_eq!(total, doubled);
}
