//! [`Pull`]: the sans-IO engine that fetches one remote head.

pub use super::config::{InFlight, MemoryUse, PullConfig, PullStats};
use super::LocalObjects;
use crate::ecp::{self, Message, ObjectRef, MAX_IDS_PER_REQUEST};
use left_store::node::{Child, Node};
use left_store::{ChunkId, NodeId, ObjectId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A peer as the driver names it (for example an index into its connection table).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// Bytes assumed for a node in flight (its size is unknown until it arrives).
const NODE_ESTIMATE: u64 = 16 * 1024;
/// Children classified per expansion step (one batched store query).
const EXPAND_BATCH: usize = 256;
/// The walk goes on freely below `max_pending_refs / REFS_SOFT_DIVISOR` references.
const REFS_SOFT_DIVISOR: usize = 4;
/// Longest pause a `Working` reply can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Something the driver must do. Apply store effects in order, before the next [`Pull::poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Store this verified node (`Store::put_node`).
    StoreNode(NodeId, Vec<u8>),
    /// Store this verified encoded chunk whose plain length is the `u32`
    /// (`Store::put_chunk_verified`; the engine has decoded it and checked its id).
    StoreChunk(ChunkId, Vec<u8>, u32),
    /// Everything beneath this node is stored: mark it complete (`Store::mark_complete`).
    MarkComplete(NodeId),
    /// A peer was dropped: close its session and report the reason.
    PeerDropped {
        /// The peer.
        peer: PeerId,
        /// Why, one line.
        reason: String,
        /// Why, for the driver to decide on retries and hints.
        cause: DropCause,
    },
    /// The head and everything beneath it are stored and marked complete. Last effect.
    Done(NodeId),
    /// The pull cannot finish (every peer dropped, or a local store error). Last effect.
    Failed(Failure),
}

/// Why a pull cannot finish ([`Effect::Failed`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The local store failed: no peer can fix it, so a driver stops at once.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// No peer can finish the pull (each one dropped, or none has the head), or the tree defeats
    /// the walk's bounds: the reason, one line.
    #[error("{0}")]
    Peers(String),
}

/// A failure of the local store while objects arrive, kept as its message and whether the disk
/// is full (the one case with its own remedy): `left_store::Error` is neither `Clone` nor `Eq`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("local store: {message}")]
pub struct LocalError {
    /// The store error's text.
    pub message: String,
    /// The store ran out of space ([`left_store::Error::DiskFull`]).
    pub disk_full: bool,
}

impl From<&left_store::Error> for LocalError {
    fn from(e: &left_store::Error) -> LocalError {
        LocalError {
            message: e.to_string(),
            disk_full: matches!(e, left_store::Error::DiskFull { .. }),
        }
    }
}

impl From<left_store::Error> for LocalError {
    fn from(e: left_store::Error) -> LocalError {
        LocalError::from(&e)
    }
}

/// Why the engine dropped a peer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DropCause {
    /// It sent a node or chunk that does not match its id: it lies, so retrying it is pointless.
    BadData,
    /// It said it lacks something beneath the head it announced: it lies, or it collected
    /// garbage since (its head moved on, and the old head's objects went).
    Missing,
    /// It owed replies and sent nothing for the stall timeout.
    Stalled,
    /// It ended the session (`Bye`): a server shutting down.
    Ended,
    /// It sent an `Error` with this code.
    PeerError(u16),
    /// The driver removed it ([`Pull::remove_peer`]: its connection failed).
    Removed,
}

/// One output of [`Pull::poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// An effect for the driver.
    Effect(Effect),
    /// A request to send to a peer.
    Send {
        /// The peer.
        peer: PeerId,
        /// The request (`GetNodes` or `GetChunks`).
        message: Message,
    },
}

/// A node whose subtree is not complete yet.
struct Open {
    /// Open nodes that wait for this one (one entry per reference).
    parents: Vec<NodeId>,
    /// Children referenced and not complete yet.
    pending: u32,
    /// Children classified so far.
    cursor: usize,
    /// Number of children.
    children: usize,
    /// Distance from the head.
    depth: u32,
}

/// An id queued or in flight.
struct Wait {
    /// Open nodes that wait for it (one entry per reference).
    parents: Vec<NodeId>,
    /// Estimated bytes.
    est: u64,
    /// Depth it will have when opened (nodes).
    depth: u32,
    /// Peers it was asked of (empty: queued).
    asked: Vec<PeerId>,
}

struct Peer {
    /// Ids asked of this peer and when.
    items: HashMap<ObjectId, Instant>,
    bytes: u64,
    /// Since when we have been waiting for this peer to say anything (set when a request goes
    /// out to a quiet peer, moved on by every reply, cleared by a reply that leaves nothing owed).
    /// Ids taken back because another peer answered first do not clear it: a peer that never
    /// answers is dropped even when the endgame keeps rescuing its requests.
    silent_since: Option<Instant>,
    paused_until: Option<Instant>,
}

#[derive(PartialEq, Eq)]
enum State {
    Start,
    Running,
    Finished,
}

/// Fetches one remote head and everything beneath it that the local store lacks.
/// See the [module docs](super) for how to drive it.
pub struct Pull {
    cfg: PullConfig,
    head: NodeId,
    state: State,
    peers: BTreeMap<PeerId, Peer>,
    dropped: Vec<(PeerId, String)>,
    open: HashMap<NodeId, Open>,
    stack: Vec<NodeId>,
    waiting: HashMap<ObjectId, Wait>,
    /// Entries in the `parents` lists of `open` and `waiting` (bounded by `max_pending_refs`).
    refs: usize,
    /// The walk stopped at `max_pending_refs` with requests in flight (nothing new to ask for
    /// until they are answered).
    blocked: bool,
    want_nodes: VecDeque<NodeId>,
    want_chunks: VecDeque<ChunkId>,
    cache: HashMap<NodeId, Arc<Node>>,
    cache_order: VecDeque<NodeId>,
    effects: VecDeque<Effect>,
    in_flight_bytes: u64,
    next_peer: PeerId,
    stats: PullStats,
    /// Latest time seen in any input.
    now: Instant,
}

impl Pull {
    /// A pull of `head` from `peers` (all of which announced it). Nothing happens until
    /// [`Pull::poll`].
    pub fn new(head: NodeId, peers: &[PeerId], now: Instant, mut cfg: PullConfig) -> Pull {
        let min_peer_bytes = cfg.max_chunk_size as u64 + 1;
        cfg.max_bytes_per_peer = cfg.max_bytes_per_peer.max(min_peer_bytes);
        cfg.max_bytes_in_flight = cfg.max_bytes_in_flight.max(cfg.max_bytes_per_peer);
        cfg.max_outstanding = cfg.max_outstanding.max(1);
        cfg.max_pending_refs = cfg.max_pending_refs.max(1);
        cfg.max_items_per_peer = cfg.max_items_per_peer.max(1);
        cfg.max_nodes_per_request = cfg.max_nodes_per_request.clamp(1, MAX_IDS_PER_REQUEST);
        cfg.max_chunks_per_request = cfg.max_chunks_per_request.clamp(1, MAX_IDS_PER_REQUEST);
        cfg.endgame_copies = cfg.endgame_copies.max(1);
        let mut pull = Pull {
            cfg,
            head,
            state: State::Start,
            peers: BTreeMap::new(),
            dropped: Vec::new(),
            open: HashMap::new(),
            stack: Vec::new(),
            waiting: HashMap::new(),
            refs: 0,
            blocked: false,
            want_nodes: VecDeque::new(),
            want_chunks: VecDeque::new(),
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            effects: VecDeque::new(),
            in_flight_bytes: 0,
            next_peer: PeerId(0),
            stats: PullStats::default(),
            now,
        };
        for &p in peers {
            pull.add_peer(now, p);
        }
        pull
    }

    /// The head being pulled.
    pub fn head(&self) -> NodeId {
        self.head
    }

    /// Adds a peer that has the head (for example one that answered `Excess` late).
    pub fn add_peer(&mut self, now: Instant, peer: PeerId) {
        if self.state == State::Finished {
            return;
        }
        self.now = self.now.max(now);
        self.peers.entry(peer).or_insert(Peer {
            items: HashMap::new(),
            bytes: 0,
            silent_since: None,
            paused_until: None,
        });
    }

    /// Drops a peer whose session ended (the driver saw the connection fail or close); its
    /// requests go back to the queue. No `PeerDropped` effect is emitted for it.
    pub fn remove_peer(&mut self, peer: PeerId, reason: &str) {
        if self.peers.contains_key(&peer) {
            self.drop_peer(peer, reason.to_string(), DropCause::Removed, false);
        }
    }

    /// Peers still in use.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// Peers dropped so far, with the reason.
    pub fn dropped(&self) -> &[(PeerId, String)] {
        &self.dropped
    }

    /// Counters.
    pub fn stats(&self) -> &PullStats {
        &self.stats
    }

    /// What is in flight at `peer`, if it is in use.
    pub fn in_flight(&self, peer: PeerId) -> Option<InFlight> {
        self.peers.get(&peer).map(|p| InFlight {
            items: p.items.len(),
            bytes: p.bytes,
        })
    }

    /// What `peer` was asked for longest ago and still owes, if anything (for error messages:
    /// a peer that withholds one object is named with it).
    pub fn oldest_owed(&self, peer: PeerId) -> Option<ObjectId> {
        let p = self.peers.get(&peer)?;
        p.items
            .iter()
            .min_by_key(|(key, t)| (**t, **key))
            .map(|(key, _)| *key)
    }

    /// Estimated bytes in flight over all peers.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes
    }

    /// The (adjusted) configuration.
    pub fn config(&self) -> &PullConfig {
        &self.cfg
    }

    /// Sizes of the engine's state.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            outstanding: self.waiting.len(),
            refs: self.refs,
            open_nodes: self.open.len(),
            walk_stack: self.stack.len(),
            cached_nodes: self.cache.len(),
            queued: self.want_nodes.len() + self.want_chunks.len(),
        }
    }

    /// Whether `Done` or `Failed` has been handed out (or is queued).
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Feeds a message from `peer`. Replies (`Nodes`, `Chunk`, `NotFound`, `Working`, `Error`,
    /// `Bye`) are consumed; handshake messages are the driver's business and ignored here.
    pub fn handle_message(&mut self, now: Instant, peer: PeerId, msg: Message) {
        if self.state == State::Finished {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            // A dropped or unknown peer: nothing it says is trusted or needed.
            return;
        };
        self.now = self.now.max(now);
        let progress = matches!(msg, Message::Nodes { .. } | Message::Chunk { .. });
        match msg {
            Message::Nodes { nodes } => {
                for (id, bytes) in nodes {
                    if !self.node_arrived(peer, id, bytes) {
                        break;
                    }
                }
            }
            Message::Chunk { id, bytes } => {
                let check = ecp::verify_chunk(&id, &bytes, self.cfg.max_chunk_size);
                self.chunk_arrived(peer, id, bytes, check);
            }
            Message::NotFound { ids } => {
                let asked = ids
                    .iter()
                    .find(|r| p.items.contains_key(&ObjectId::from(**r)));
                if let Some(r) = asked {
                    let what = match r {
                        ObjectRef::Node(n) => format!("node {}", n.fmt_short()),
                        ObjectRef::Chunk(c) => format!("chunk {}", c.fmt_short()),
                    };
                    self.drop_peer(
                        peer,
                        format!("peer does not have {what} beneath the head it announced"),
                        DropCause::Missing,
                        true,
                    );
                }
            }
            Message::Working { retry_after_ms } => {
                let wait = Duration::from_millis(retry_after_ms.into()).min(MAX_RETRY_AFTER);
                p.paused_until = Some(now + wait);
                self.requeue_peer(peer);
            }
            Message::Error { code, message } => {
                // The peer's text goes into our one-line report: escaped and bounded.
                let text = crate::sanitize::field(&message);
                self.drop_peer(
                    peer,
                    format!("peer sent error {}: {text}", code.0),
                    DropCause::PeerError(code.0),
                    true,
                );
            }
            Message::Bye => {
                self.drop_peer(
                    peer,
                    "peer closed the session".into(),
                    DropCause::Ended,
                    true,
                );
            }
            _ => {}
        }
        // The peer delivered something: the stall clock restarts if it still owes more. Other
        // messages (a periodic `Have`) are no sign that requests are being served.
        if let Some(p) = self.peers.get_mut(&peer) {
            if progress || p.items.is_empty() {
                p.silent_since = (!p.items.is_empty()).then_some(now);
            }
        }
    }

    /// Feeds a `Chunk` reply from `peer` whose verification the driver already ran (for example
    /// on another thread, with [`crate::ecp::verify_chunk`] and [`PullConfig::max_chunk_size`]):
    /// `check` is its result, trusted as is. Otherwise the same as [`Pull::handle_message`] with
    /// `Message::Chunk { id, bytes }`.
    pub fn handle_checked_chunk(
        &mut self,
        now: Instant,
        peer: PeerId,
        id: ChunkId,
        bytes: Vec<u8>,
        check: Result<usize, ecp::VerifyError>,
    ) {
        if self.state == State::Finished || !self.peers.contains_key(&peer) {
            return;
        }
        self.now = self.now.max(now);
        self.chunk_arrived(peer, id, bytes, check);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.silent_since = (!p.items.is_empty()).then_some(now);
        }
    }

    /// Checks timers: drops peers that stalled, un-pauses peers whose `Working` wait is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Finished {
            return;
        }
        self.now = self.now.max(now);
        let stalled: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.silent_since
                    .is_some_and(|t| now >= t + self.cfg.stall_timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in stalled {
            let secs = self.cfg.stall_timeout.as_secs_f64();
            // Name what it owes longest: a peer that withholds one object is seen for what it is.
            let owed = owed_note(self.oldest_owed(peer));
            self.drop_peer(
                peer,
                format!("peer stalled: no reply for {secs:.1} s{owed}"),
                DropCause::Stalled,
                true,
            );
        }
        for p in self.peers.values_mut() {
            if p.paused_until.is_some_and(|t| t <= now) {
                p.paused_until = None;
            }
        }
    }

    /// When [`Pull::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Finished {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for p in self.peers.values() {
            if let Some(s) = p.silent_since {
                min(s + self.cfg.stall_timeout);
            }
            if let Some(u) = p.paused_until {
                min(u);
            }
        }
        if self.is_endgame() {
            // The next id that becomes old enough to copy. Times already past were considered by
            // the last `poll`; a chance to use them again comes with the next reply.
            let copies = self.cfg.endgame_copies.min(self.peers.len());
            let next = self
                .waiting
                .iter()
                .filter(|(_, w)| !w.asked.is_empty() && w.asked.len() < copies)
                .filter_map(|(key, w)| {
                    let sent = w
                        .asked
                        .iter()
                        .filter_map(|p| self.peers.get(p)?.items.get(key).copied())
                        .min()?;
                    Some(sent + self.cfg.endgame_after)
                })
                .filter(|t| *t > self.now)
                .min();
            if let Some(n) = next {
                min(n);
            }
        }
        t
    }

    /// Whether effects are queued: the next [`Pull::poll`] returns one without looking at the
    /// store. A driver may hold back `StoreChunk` effects (to store them in one write) while this
    /// is true, and must store them before polling once it is false, and before applying any
    /// other effect.
    pub fn has_effects(&self) -> bool {
        !self.effects.is_empty()
    }

    /// The next output: queued effects first, then requests. Apply each effect before calling
    /// `poll` again (or see [`Pull::has_effects`]); call until it returns `None`.
    pub fn poll(&mut self, now: Instant, local: &dyn LocalObjects) -> Option<Output> {
        if let Some(e) = self.effects.pop_front() {
            return Some(Output::Effect(e));
        }
        if self.state == State::Finished {
            return None;
        }
        self.now = self.now.max(now);
        if let Err(e) = self.advance(local) {
            self.finish(Effect::Failed(Failure::Local(e.into())));
        }
        if let Some(e) = self.effects.pop_front() {
            return Some(Output::Effect(e));
        }
        if self.state == State::Finished {
            return None;
        }
        self.next_request(now)
            .map(|(peer, message)| Output::Send { peer, message })
    }

    // ------------------------------------------------------------------ the walk

    /// Starts the walk, expands open nodes while there is room, and fails when no peer is left.
    fn advance(&mut self, local: &dyn LocalObjects) -> Result<(), left_store::Error> {
        if self.state == State::Start {
            self.state = State::Running;
            let head = ObjectId::Node(self.head);
            if local.has_many(&[head])?[0] {
                self.finish(Effect::Done(self.head));
                return Ok(());
            }
            match local.node(self.head)? {
                Some(node) => self.open_node(self.head, Arc::new(node), Vec::new(), 0),
                None => {
                    self.waiting.insert(
                        head,
                        Wait {
                            parents: Vec::new(),
                            est: NODE_ESTIMATE,
                            depth: 0,
                            asked: Vec::new(),
                        },
                    );
                    self.want_nodes.push_back(self.head);
                }
            }
        }
        self.blocked = false;
        let hard = self.cfg.max_pending_refs;
        let soft = (hard / REFS_SOFT_DIVISOR).max(1);
        while self.state == State::Running && self.waiting.len() < self.cfg.max_outstanding {
            let Some(&top) = self.stack.last() else { break };
            if self.expand(top, local, soft, (soft / 2).max(1))? {
                continue;
            }
            // At the bound. What is in flight completes subtrees and frees references; a peer
            // that never answers is dropped by the stall timeout.
            if !self.waiting.is_empty() {
                self.blocked = true;
                break;
            }
            // Nothing is in flight, so no reply can free a reference: go on depth-first (the
            // top of the stack is the deepest node), a batch at a time, up to the hard limit.
            let limit = self.refs.saturating_add(EXPAND_BATCH).min(hard);
            if !self.expand(top, local, limit, limit)? {
                self.fail(format!(
                    "the tree under {} needs more than {hard} references tracked at once \
                     (the pull's max_pending_refs); a peer shaped it to defeat the depth-first \
                     walk, or the bound is too small for it",
                    self.head.fmt_short()
                ));
            }
        }
        if self.state == State::Running && self.peers.is_empty() && !self.waiting.is_empty() {
            let why = if self.dropped.is_empty() {
                "no peer has the head".to_string()
            } else {
                self.dropped
                    .iter()
                    .map(|(p, r)| format!("peer {}: {r}", p.0))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            self.fail(format!("no peer left to fetch from ({why})"));
        }
        Ok(())
    }

    /// Classifies the next batch of `top`'s children, stopping before a child that would take
    /// `refs` to `limit` (to `node_limit` for a node not open or waiting yet). Returns whether
    /// the walk moved (false: `top` is held at the limit).
    fn expand(
        &mut self,
        top: NodeId,
        local: &dyn LocalObjects,
        limit: usize,
        node_limit: usize,
    ) -> Result<bool, left_store::Error> {
        // A stale entry: `top` was promoted above it and classified (or completed) since.
        if self.open.get(&top).is_none_or(|o| o.cursor == o.children) {
            self.stack.pop();
            return Ok(true);
        }
        let node = match self.cache.get(&top) {
            Some(n) => n.clone(),
            None => match local.node(top)? {
                Some(n) => self.cache_put(top, Arc::new(n)),
                None => {
                    self.fail(format!(
                        "node {} vanished from the local store after it was stored",
                        top.fmt_short()
                    ));
                    return Ok(true);
                }
            },
        };
        let children = node.children();
        let (cursor, depth) = {
            let o = &self.open[&top];
            (o.cursor, o.depth)
        };
        let room = self.cfg.max_outstanding - self.waiting.len();
        let end = children.len().min(cursor + room.clamp(1, EXPAND_BATCH));
        let batch = &children[cursor..end];
        let ids: Vec<ObjectId> = batch
            .iter()
            .map(|c| match c {
                Child::Chunk(c, _) => ObjectId::Chunk(*c),
                Child::Node(n) => ObjectId::Node(*n),
            })
            .collect();
        let have = local.has_many(&ids)?;
        let mut pending = 0u32;
        let mut to_push = Vec::new();
        // Open nodes referenced again that are not classified yet: walked next, so what waits on
        // them is not held while the walk goes elsewhere.
        let mut promote = Vec::new();
        let mut end = end;
        for (i, (child, have)) in batch.iter().zip(have).enumerate() {
            if have {
                continue;
            }
            let tracked = self.refs + pending as usize;
            let new_node = |n: &NodeId| {
                !self.open.contains_key(n) && !self.waiting.contains_key(&ObjectId::Node(*n))
            };
            let full = match child {
                Child::Node(n) if new_node(n) => tracked >= node_limit,
                _ => tracked >= limit,
            };
            if full {
                end = cursor + i;
                break;
            }
            match *child {
                Child::Chunk(c, len) => {
                    pending += 1;
                    let key = ObjectId::Chunk(c);
                    if let Some(w) = self.waiting.get_mut(&key) {
                        w.parents.push(top);
                    } else {
                        let est = len.min(self.cfg.max_chunk_size as u64) + 1;
                        self.stats.chunk_bytes_discovered += est - 1;
                        self.waiting.insert(
                            key,
                            Wait {
                                parents: vec![top],
                                est,
                                depth: depth + 1,
                                asked: Vec::new(),
                            },
                        );
                        self.want_chunks.push_back(c);
                    }
                }
                Child::Node(n) => {
                    pending += 1;
                    let key = ObjectId::Node(n);
                    if let Some(o) = self.open.get_mut(&n) {
                        o.parents.push(top);
                        if o.cursor < o.children {
                            promote.push(n);
                        }
                    } else if let Some(w) = self.waiting.get_mut(&key) {
                        w.parents.push(top);
                    } else if let Some(stored) = local.node(n)? {
                        // Stored by an earlier pull but not complete: walk it without fetching.
                        if depth + 1 > self.cfg.max_depth {
                            self.fail(self.too_deep());
                            return Ok(true);
                        }
                        let node = Arc::new(stored);
                        let kids = node.children().len();
                        self.open.insert(
                            n,
                            Open {
                                parents: vec![top],
                                pending: 0,
                                cursor: 0,
                                children: kids,
                                depth: depth + 1,
                            },
                        );
                        to_push.push((n, node));
                    } else {
                        self.waiting.insert(
                            key,
                            Wait {
                                parents: vec![top],
                                est: NODE_ESTIMATE,
                                depth: depth + 1,
                                asked: Vec::new(),
                            },
                        );
                        self.want_nodes.push_back(n);
                    }
                }
            }
        }
        if end == cursor {
            return Ok(false);
        }
        let o = self.open.get_mut(&top).expect("stack holds open nodes");
        o.pending += pending;
        o.cursor = end;
        self.refs += pending as usize;
        let done_classifying = end == children.len();
        if done_classifying {
            // `top` is the stack's last element: nothing was pushed above it yet.
            self.stack.pop();
        }
        for (n, node) in to_push {
            self.push_open(n, node);
        }
        for n in promote {
            if self.open.get(&n).is_some_and(|o| o.cursor < o.children) {
                self.stack.push(n);
            }
        }
        if done_classifying {
            self.check_complete(top);
        }
        Ok(true)
    }

    fn too_deep(&self) -> String {
        format!(
            "the tree under {} is deeper than {} levels",
            self.head.fmt_short(),
            self.cfg.max_depth
        )
    }

    /// Opens a node that just arrived (or the head found stored).
    fn open_node(&mut self, id: NodeId, node: Arc<Node>, parents: Vec<NodeId>, depth: u32) {
        if depth > self.cfg.max_depth {
            self.fail(self.too_deep());
            return;
        }
        let children = node.children().len();
        self.open.insert(
            id,
            Open {
                parents,
                pending: 0,
                cursor: 0,
                children,
                depth,
            },
        );
        self.push_open(id, node);
    }

    /// Puts an entry of `open` on the walk stack, or completes it at once if it has no children.
    fn push_open(&mut self, id: NodeId, node: Arc<Node>) {
        let childless = self.open.get(&id).is_some_and(|o| o.children == 0);
        if childless {
            self.check_complete(id);
        } else {
            self.cache_put(id, node);
            self.stack.push(id);
        }
    }

    fn cache_put(&mut self, id: NodeId, node: Arc<Node>) -> Arc<Node> {
        if self.cfg.node_cache == 0 {
            return node;
        }
        while self.cache.len() >= self.cfg.node_cache {
            match self.cache_order.pop_front() {
                Some(old) => {
                    self.cache.remove(&old);
                }
                None => break,
            }
        }
        if self.cache.insert(id, node.clone()).is_none() {
            self.cache_order.push_back(id);
        }
        node
    }

    /// Completes `id` if all its children are classified and complete, then its parents in turn
    /// (bottom-up: a node is marked only after everything beneath it).
    fn check_complete(&mut self, id: NodeId) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            let ready = self
                .open
                .get(&id)
                .is_some_and(|o| o.pending == 0 && o.cursor == o.children);
            if !ready {
                continue;
            }
            let o = self.open.remove(&id).expect("checked above");
            self.refs -= o.parents.len();
            if let Some(_n) = self.cache.remove(&id) {
                self.cache_order.retain(|x| *x != id);
            }
            self.effects.push_back(Effect::MarkComplete(id));
            if id == self.head {
                self.finish(Effect::Done(id));
                return;
            }
            for p in o.parents {
                self.child_done(p, &mut work);
            }
        }
    }

    fn child_done(&mut self, parent: NodeId, work: &mut Vec<NodeId>) {
        if let Some(po) = self.open.get_mut(&parent) {
            po.pending = po.pending.saturating_sub(1);
            if po.pending == 0 && po.cursor == po.children {
                work.push(parent);
            }
        }
    }

    // ------------------------------------------------------------------ arrivals

    /// Takes an id out of flight everywhere; returns its wait record if it was wanted.
    fn settle(&mut self, key: ObjectId) -> Option<Wait> {
        let w = self.waiting.remove(&key)?;
        for p in &w.asked {
            if let Some(peer) = self.peers.get_mut(p) {
                if peer.items.remove(&key).is_some() {
                    peer.bytes -= w.est;
                    self.in_flight_bytes -= w.est;
                }
            }
        }
        Some(w)
    }

    /// Handles one node of a `Nodes` reply; returns false when the peer was dropped.
    fn node_arrived(&mut self, peer: PeerId, id: NodeId, bytes: Vec<u8>) -> bool {
        self.stats.payload_bytes_received += bytes.len() as u64;
        let node = match ecp::verify_node(&id, &bytes) {
            Ok(n) => n,
            Err(e) => {
                self.drop_peer(
                    peer,
                    format!("peer sent a bad node: {e}"),
                    DropCause::BadData,
                    true,
                );
                return false;
            }
        };
        let Some(w) = self.settle(ObjectId::Node(id)) else {
            self.stats.duplicates += 1;
            return true;
        };
        self.stats.nodes_fetched += 1;
        self.effects.push_back(Effect::StoreNode(id, bytes));
        self.open_node(id, Arc::new(node), w.parents, w.depth);
        true
    }

    fn chunk_arrived(
        &mut self,
        peer: PeerId,
        id: ChunkId,
        bytes: Vec<u8>,
        check: Result<usize, ecp::VerifyError>,
    ) {
        self.stats.payload_bytes_received += bytes.len() as u64;
        let plain_len = match check {
            Ok(n) => n as u64,
            Err(e) => {
                self.drop_peer(
                    peer,
                    format!("peer sent a bad chunk: {e}"),
                    DropCause::BadData,
                    true,
                );
                return;
            }
        };
        let Some(w) = self.settle(ObjectId::Chunk(id)) else {
            self.stats.duplicates += 1;
            return;
        };
        self.stats.chunks_fetched += 1;
        self.stats.chunk_bytes_fetched += plain_len;
        self.refs -= w.parents.len();
        self.effects
            .push_back(Effect::StoreChunk(id, bytes, plain_len as u32));
        let mut work = Vec::new();
        for p in w.parents {
            self.child_done(p, &mut work);
        }
        for n in work {
            self.check_complete(n);
        }
    }

    // ------------------------------------------------------------------ peers

    /// Takes every request in flight at `peer` back; ids asked of nobody else are queued first.
    fn requeue_peer(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut items: Vec<(ObjectId, Instant)> = p.items.drain().collect();
        self.in_flight_bytes -= p.bytes;
        p.bytes = 0;
        // Oldest last, so pushing to the front keeps the original order.
        items.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        for (key, _) in items {
            let Some(w) = self.waiting.get_mut(&key) else {
                continue;
            };
            w.asked.retain(|x| *x != peer);
            if w.asked.is_empty() {
                match key {
                    ObjectId::Node(n) => self.want_nodes.push_front(n),
                    ObjectId::Chunk(c) => self.want_chunks.push_front(c),
                }
            }
        }
    }

    fn drop_peer(&mut self, peer: PeerId, reason: String, cause: DropCause, announce: bool) {
        self.requeue_peer(peer);
        if self.peers.remove(&peer).is_none() {
            return;
        }
        self.stats.peers_dropped += 1;
        self.dropped.push((peer, reason.clone()));
        if announce {
            self.effects.push_back(Effect::PeerDropped {
                peer,
                reason,
                cause,
            });
        }
    }

    fn fail(&mut self, reason: String) {
        self.finish(Effect::Failed(Failure::Peers(reason)));
    }

    fn finish(&mut self, last: Effect) {
        if self.state == State::Finished {
            return;
        }
        self.state = State::Finished;
        self.effects.push_back(last);
        self.waiting.clear();
        self.refs = 0;
        self.open.clear();
        self.stack.clear();
        self.want_nodes.clear();
        self.want_chunks.clear();
        self.cache.clear();
        self.cache_order.clear();
    }

    // ------------------------------------------------------------------ requests

    /// A queued id is live when it is still wanted and asked of nobody.
    fn is_live(&self, key: &ObjectId) -> bool {
        is_live(&self.waiting, key)
    }

    fn trim_queues(&mut self) {
        while let Some(n) = self.want_nodes.front() {
            if self.is_live(&ObjectId::Node(*n)) {
                break;
            }
            self.want_nodes.pop_front();
        }
        while let Some(c) = self.want_chunks.front() {
            if self.is_live(&ObjectId::Chunk(*c)) {
                break;
            }
            self.want_chunks.pop_front();
        }
    }

    /// Nothing new to ask for: every wanted id is in flight and the walk has nothing left.
    fn is_endgame(&self) -> bool {
        (self.stack.is_empty() || self.blocked)
            && !self
                .want_nodes
                .iter()
                .any(|n| self.is_live(&ObjectId::Node(*n)))
            && !self
                .want_chunks
                .iter()
                .any(|c| self.is_live(&ObjectId::Chunk(*c)))
    }

    /// Room at `peer`: (ids, bytes).
    fn room(&self, peer: &Peer) -> (usize, u64) {
        let items = self.cfg.max_items_per_peer.saturating_sub(peer.items.len());
        let bytes = self.cfg.max_bytes_per_peer.saturating_sub(peer.bytes).min(
            self.cfg
                .max_bytes_in_flight
                .saturating_sub(self.in_flight_bytes),
        );
        (items, bytes)
    }

    /// Picks the next request: peers in turn, nodes before chunks, endgame copies last.
    fn next_request(&mut self, now: Instant) -> Option<(PeerId, Message)> {
        self.trim_queues();
        let order: Vec<PeerId> = self
            .peers
            .range(self.next_peer..)
            .chain(self.peers.range(..self.next_peer))
            .filter(|(_, p)| p.paused_until.is_none_or(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        let endgame = self.is_endgame();
        for peer in order {
            let (items, bytes) = self.room(&self.peers[&peer]);
            if items == 0 || bytes == 0 {
                continue;
            }
            let idle = self.peers[&peer].items.is_empty();
            let picked = if endgame {
                self.pick_endgame(peer, now, items, bytes)
            } else {
                self.pick_queued(items, bytes, idle)
            };
            let Some((keys, message)) = picked else {
                continue;
            };
            let p = self.peers.get_mut(&peer).expect("peer from the map");
            if p.silent_since.is_none() {
                p.silent_since = Some(now);
            }
            for key in &keys {
                let w = self.waiting.get_mut(key).expect("picked ids are waiting");
                w.asked.push(peer);
                p.items.insert(*key, now);
                p.bytes += w.est;
                self.in_flight_bytes += w.est;
            }
            self.stats.requests += 1;
            if endgame {
                self.stats.endgame_requests += 1;
            }
            match &message {
                Message::GetNodes { ids } => self.stats.nodes_requested += ids.len() as u64,
                Message::GetChunks { ids } => self.stats.chunks_requested += ids.len() as u64,
                _ => {}
            }
            // Start the next round after this peer, so requests spread over all peers.
            self.next_peer = PeerId(peer.0.wrapping_add(1));
            return Some((peer, message));
        }
        None
    }

    fn pick_queued(
        &mut self,
        items: usize,
        bytes: u64,
        idle: bool,
    ) -> Option<(Vec<ObjectId>, Message)> {
        let mut used = 0u64;
        let max = items.min(self.cfg.max_nodes_per_request);
        let ids = take_live(
            &mut self.want_nodes,
            &self.waiting,
            ObjectId::Node,
            max,
            bytes,
            &mut used,
        );
        if !ids.is_empty() {
            let keys = ids.iter().map(|n| ObjectId::Node(*n)).collect();
            return Some((keys, Message::GetNodes { ids }));
        }
        // A busy peer gets chunk requests in batches, not one id per freed slot: fewer, larger
        // requests cost less on both sides and the peer still has work queued meanwhile.
        let min_batch = (self.cfg.max_chunks_per_request / 4)
            .min(self.cfg.max_items_per_peer / 4)
            .max(1);
        if !idle && items < min_batch {
            return None;
        }
        let max = items.min(self.cfg.max_chunks_per_request);
        let bytes = bytes.min(
            self.cfg
                .max_request_bytes
                .max(self.cfg.max_chunk_size as u64 + 1),
        );
        let ids = take_live(
            &mut self.want_chunks,
            &self.waiting,
            ObjectId::Chunk,
            max,
            bytes,
            &mut used,
        );
        if ids.is_empty() {
            return None;
        }
        let keys = ids.iter().map(|c| ObjectId::Chunk(*c)).collect();
        Some((keys, Message::GetChunks { ids }))
    }

    /// Endgame: copies of the oldest requests in flight at other peers, one kind per request.
    fn pick_endgame(
        &self,
        peer: PeerId,
        now: Instant,
        items: usize,
        bytes: u64,
    ) -> Option<(Vec<ObjectId>, Message)> {
        let mut cands: Vec<(Instant, ObjectId, u64)> = self
            .waiting
            .iter()
            .filter(|(_, w)| {
                !w.asked.is_empty()
                    && w.asked.len() < self.cfg.endgame_copies
                    && !w.asked.contains(&peer)
            })
            .filter_map(|(key, w)| {
                let sent = w
                    .asked
                    .iter()
                    .filter_map(|p| self.peers.get(p)?.items.get(key).copied())
                    .min()?;
                (sent + self.cfg.endgame_after <= now).then_some((sent, *key, w.est))
            })
            .collect();
        if cands.is_empty() {
            return None;
        }
        cands.sort();
        let want_nodes = matches!(cands[0].1, ObjectId::Node(_));
        let mut used = 0;
        let mut keys = Vec::new();
        let max = items.min(if want_nodes {
            self.cfg.max_nodes_per_request
        } else {
            self.cfg.max_chunks_per_request
        });
        for (_, key, est) in cands {
            if keys.len() >= max {
                break;
            }
            if matches!(key, ObjectId::Node(_)) != want_nodes || used + est > bytes {
                continue;
            }
            used += est;
            keys.push(key);
        }
        if keys.is_empty() {
            return None;
        }
        let message = if want_nodes {
            Message::GetNodes {
                ids: keys
                    .iter()
                    .filter_map(|k| match k {
                        ObjectId::Node(n) => Some(*n),
                        ObjectId::Chunk(_) => None,
                    })
                    .collect(),
            }
        } else {
            Message::GetChunks {
                ids: keys
                    .iter()
                    .filter_map(|k| match k {
                        ObjectId::Chunk(c) => Some(*c),
                        ObjectId::Node(_) => None,
                    })
                    .collect(),
            }
        };
        Some((keys, message))
    }
}

/// " (it still owes chunk abcdef012345)", or nothing: the tail of a stall's one-line reason.
pub fn owed_note(owed: Option<ObjectId>) -> String {
    match owed {
        Some(ObjectId::Node(n)) => format!(" (it still owes node {})", n.fmt_short()),
        Some(ObjectId::Chunk(c)) => format!(" (it still owes chunk {})", c.fmt_short()),
        None => String::new(),
    }
}

/// Queued and not asked of anyone yet (a queue may hold stale entries: settled or in flight).
fn is_live(waiting: &HashMap<ObjectId, Wait>, key: &ObjectId) -> bool {
    waiting.get(key).is_some_and(|w| w.asked.is_empty())
}

/// Takes from the front of `queue` up to `max` live ids whose estimated sizes fit in `budget`
/// bytes together with `used` (which it advances), dropping the stale entries it passes.
fn take_live<T: Copy>(
    queue: &mut VecDeque<T>,
    waiting: &HashMap<ObjectId, Wait>,
    key_of: fn(T) -> ObjectId,
    max: usize,
    budget: u64,
    used: &mut u64,
) -> Vec<T> {
    let mut ids = Vec::new();
    while ids.len() < max {
        let Some(&id) = queue.front() else { break };
        let key = key_of(id);
        if !is_live(waiting, &key) {
            queue.pop_front();
            continue;
        }
        let est = waiting[&key].est;
        if *used + est > budget {
            break;
        }
        *used += est;
        queue.pop_front();
        ids.push(id);
    }
    ids
}
