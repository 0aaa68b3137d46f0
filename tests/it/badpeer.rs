//! Bad peers, end to end: the real `left sync` against a fake peer written here with the library
//! (an rdt endpoint holding the share key, answering with crafted ecp frames).
//!
//! Each test checks the same contract: `left sync` exits non-zero with one line naming the peer and
//! the cause (or succeeds from a second, honest peer when one is given), writes nothing outside the
//! share (a canary folder beside it is compared before and after), leaves the share folder as it was,
//! stores nothing unverified, and never panics. The engine-level versions of these cases live in
//! `src/sync/tests.rs`; these run the whole binary over real sockets.
//!
//! The victim share always has a head of its own (one file), and every crafted snapshot names that
//! head as its parent, so the fetched head is a fast-forward and only the crafted content can stop
//! the checkout. A control test (`honest_fake_peer_syncs`) proves the fake peer itself is good.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use left::ecp::{self, Message, ObjectRef, ShareId, PROTOCOL_VERSION, WIRE_VERSION};
use left::net::driver::{Connection, Endpoint, Stream};
use left::net::udp::SocketConfig;
use left::rdt::EndpointConfig;
use left_store::node::{
    build_content, build_dir, ChunkListNode, ChunkRef, Content, DirEntry, DirNode, FileNode, Node,
    Target,
};
use left_store::{ChunkId, EntryKind, Hash, NodeId, Snapshot};
use serde_json::Value;

use crate::util::*;

// ------------------------------------------------------------------------------ crafted objects

/// Nodes and chunks a fake peer serves, in their stored (encoded) form.
#[derive(Clone, Default)]
pub struct Objects {
    pub nodes: HashMap<NodeId, Vec<u8>>,
    pub chunks: HashMap<ChunkId, Vec<u8>>,
}

impl Objects {
    /// Stores a chunk of `plain` bytes (zstd or raw, as the store would encode it).
    pub fn chunk(&mut self, plain: &[u8]) -> ChunkRef {
        let id = ChunkId(Hash::of(plain));
        self.chunks.insert(id, left_store::codec::encode(plain));
        ChunkRef {
            id: id.0,
            len: plain.len() as u64,
        }
    }

    /// Stores a node as encoded by the store's own encoder (which does not validate: crafted nodes
    /// with bad names encode fine and are refused only when decoded).
    pub fn node(&mut self, node: &Node) -> NodeId {
        let (id, bytes) = node.encode_with_id().expect("node encodes");
        self.nodes.insert(id, bytes);
        id
    }

    /// A file of `plain` bytes cut into 64 KiB chunks; returns its node and size.
    pub fn file(&mut self, plain: &[u8]) -> (NodeId, u64) {
        let refs: Vec<ChunkRef> = plain.chunks(64 * 1024).map(|c| self.chunk(c)).collect();
        let mut new = Vec::new();
        let content = build_content(refs, &mut |id, b| {
            new.push((id, b));
            Ok(())
        })
        .expect("content");
        self.nodes.extend(new);
        let id = self.node(&Node::File(FileNode {
            size: plain.len() as u64,
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000,
            content,
        }));
        (id, plain.len() as u64)
    }

    /// A folder of `entries` (sorted here) built the way the store builds folders.
    pub fn dir(&mut self, mut entries: Vec<DirEntry>) -> NodeId {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut new = Vec::new();
        let id = build_dir(entries, &mut |id, b| {
            new.push((id, b));
            Ok(())
        })
        .expect("dir");
        self.nodes.extend(new);
        id
    }

    /// One folder leaf holding exactly `entries` in the given order (no validation).
    pub fn leaf(&mut self, entries: Vec<DirEntry>) -> NodeId {
        self.node(&Node::Dir(DirNode::Leaf(entries)))
    }

    /// A snapshot of `root` with `parents`.
    pub fn snapshot(&mut self, root: NodeId, parents: Vec<NodeId>) -> NodeId {
        self.node(&Node::Snapshot(Snapshot {
            root,
            parents,
            device: [9; 32],
            // After the victim's own head: ancestry is searched newest first, down to the
            // ancestor's time.
            time_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i64,
            message: "crafted".into(),
        }))
    }
}

pub fn file_entry(name: &[u8], id: NodeId, size: u64) -> DirEntry {
    DirEntry {
        name: name.to_vec(),
        kind: EntryKind::File,
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
        size,
        target: Target::Node(id),
    }
}

pub fn dir_entry(name: &[u8], id: NodeId) -> DirEntry {
    DirEntry {
        name: name.to_vec(),
        kind: EntryKind::Dir,
        mode: 0o755,
        mtime_ns: 1_700_000_000_000_000_000,
        size: 0,
        target: Target::Node(id),
    }
}

pub fn link_entry(name: &[u8], target: &[u8]) -> DirEntry {
    DirEntry {
        name: name.to_vec(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        mtime_ns: 1_700_000_000_000_000_000,
        size: target.len() as u64,
        target: Target::Link(target.to_vec()),
    }
}

// ------------------------------------------------------------------------------ the fake peer

/// What the fake peer does with one message from `left sync`.
pub enum Step {
    /// Write these raw bytes (whole frames, or anything else) on the stream the message came on.
    Send(Vec<Vec<u8>>),
    /// Say nothing (the connection stays alive: rdt keeps it so).
    Silence,
    /// Write these bytes, then close the whole connection.
    SendThenClose(Vec<Vec<u8>>),
}

/// The fake peer's state, seen by its script.
pub struct Ctx {
    pub hello: Message,
    pub head: NodeId,
    pub objects: Objects,
    /// Every message received, by kind (for assertions about what the client asked).
    pub received: Vec<Message>,
}

pub type Script = Box<dyn FnMut(&Message, &mut Ctx) -> Step + Send>;

pub fn frame(m: &Message) -> Vec<u8> {
    ecp::encode(m).expect("encode")
}

/// The honest answer to `msg`: nothing for hello (ours is sent first), Excess (or Same) for Have/Update, every node and
/// chunk asked for that the peer has, NotFound for the rest.
pub fn honest(msg: &Message, ctx: &Ctx) -> Vec<Vec<u8>> {
    match msg {
        // Our hello went out when the connection opened (both sides greet first).
        Message::Hello { .. } => Vec::new(),
        Message::Have { head, .. } => {
            if *head == Some(ctx.head) {
                vec![frame(&Message::Same)]
            } else {
                vec![frame(&Message::Excess { head: ctx.head })]
            }
        }
        Message::Update { head, .. } => {
            if *head == ctx.head {
                vec![frame(&Message::Same)]
            } else {
                vec![frame(&Message::Excess { head: ctx.head })]
            }
        }
        Message::GetNodes { ids } => {
            let mut out = Vec::new();
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for id in ids {
                match ctx.objects.nodes.get(id) {
                    Some(b) => found.push((*id, b.clone())),
                    None => missing.push(ObjectRef::Node(*id)),
                }
            }
            for batch in found.chunks(ecp::MAX_NODES_PER_REPLY) {
                out.push(frame(&Message::Nodes {
                    nodes: batch.to_vec(),
                }));
            }
            if !missing.is_empty() {
                out.push(frame(&Message::NotFound { ids: missing }));
            }
            out
        }
        Message::GetChunks { ids } => {
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for id in ids {
                match ctx.objects.chunks.get(id) {
                    Some(b) => out.push(frame(&Message::Chunk {
                        id: *id,
                        bytes: b.clone(),
                    })),
                    None => missing.push(ObjectRef::Chunk(*id)),
                }
            }
            if !missing.is_empty() {
                out.push(frame(&Message::NotFound { ids: missing }));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// A script that is honest except where `twist` returns `Some`.
pub fn honest_but(
    mut twist: impl FnMut(&Message, &mut Ctx) -> Option<Step> + Send + 'static,
) -> Script {
    Box::new(move |m, ctx| twist(m, ctx).unwrap_or_else(|| Step::Send(honest(m, ctx))))
}

/// A fake peer listening on loopback, stopped when dropped.
pub struct FakePeer {
    pub addr: SocketAddr,
    pub device: [u8; 32],
    ctx: Arc<Mutex<Ctx>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakePeer {
    /// Starts a fake peer for the share with `share_key`, offering `head` from `objects`.
    pub fn start(share_key: [u8; 32], head: NodeId, objects: Objects, script: Script) -> FakePeer {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            share_key,
            head,
            objects,
            script,
        )
    }

    pub fn start_on(
        listen: SocketAddr,
        share_key: [u8; 32],
        head: NodeId,
        objects: Objects,
        script: Script,
    ) -> FakePeer {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let secret: [u8; 32] = random_bytes(0xfa4e_0000 + n, 32).try_into().unwrap();
        let device = left::identity::Identity::from_secret(secret).device_id().0;
        let share = ShareId::from_key(&share_key);
        let ctx = Arc::new(Mutex::new(Ctx {
            hello: Message::Hello {
                protocol: PROTOCOL_VERSION,
                share,
                device,
                encryption: true,
            },
            head,
            objects,
            received: Vec::new(),
        }));
        let script = Arc::new(Mutex::new(script));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let ctx2 = ctx.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let config = EndpointConfig::new(secret, share_key, n);
                let ep = match Endpoint::bind(listen, &SocketConfig::default(), config) {
                    Ok(ep) => ep,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = addr_tx.send(Ok(ep.local_addr().expect("local addr")));
                let mut stop_rx = stop_rx;
                loop {
                    tokio::select! {
                        conn = ep.accept() => {
                            let Some(conn) = conn else { break };
                            tokio::spawn(serve_conn(conn, ctx2.clone(), script.clone()));
                        }
                        _ = &mut stop_rx => break,
                    }
                }
                ep.close().await;
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake peer started")
            .unwrap_or_else(|e| panic!("fake peer cannot bind {listen}: {e}"));
        FakePeer {
            addr,
            device,
            ctx,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Kinds of the messages received so far.
    pub fn received_kinds(&self) -> Vec<&'static str> {
        self.ctx
            .lock()
            .unwrap()
            .received
            .iter()
            .map(|m| m.kind())
            .collect()
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_conn(conn: Connection, ctx: Arc<Mutex<Ctx>>, script: Arc<Mutex<Script>>) {
    // ecp runs on the control stream, and each side greets first.
    let hello = frame(&ctx.lock().unwrap().hello);
    tokio::spawn(serve_stream(
        conn.control_stream(),
        Some(hello),
        ctx.clone(),
        script.clone(),
    ));
    while let Ok(stream) = conn.accept_stream().await {
        tokio::spawn(serve_stream(stream, None, ctx.clone(), script.clone()));
    }
}

async fn serve_stream(
    mut stream: Stream,
    greeting: Option<Vec<u8>>,
    ctx: Arc<Mutex<Ctx>>,
    script: Arc<Mutex<Script>>,
) {
    if let Some(g) = greeting {
        if stream.write_all(&g).await.is_err() {
            return;
        }
    }
    let mut dec = ecp::Decoder::new();
    loop {
        let bytes = match stream.read(256 * 1024).await {
            Ok(Some(b)) => b,
            _ => return,
        };
        let mut input = &bytes[..];
        loop {
            let msg = match dec.decode(&mut input) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                // The real client never sends garbage; stop reading if it did.
                Err(_) => return,
            };
            let step = {
                let mut ctx = ctx.lock().unwrap();
                ctx.received.push(msg.clone());
                let mut script = script.lock().unwrap();
                (script)(&msg, &mut ctx)
            };
            match step {
                Step::Send(frames) => {
                    for f in frames {
                        if stream.write_all(&f).await.is_err() {
                            return;
                        }
                    }
                }
                Step::Silence => {}
                Step::SendThenClose(frames) => {
                    for f in frames {
                        if stream.write_all(&f).await.is_err() {
                            return;
                        }
                    }
                    let _ = stream.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(2), stream.finished()).await;
                    stream.connection().close(0, b"fake peer closes");
                    return;
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------ the victim

/// The share under attack: one file in a snapshot of its own, a canary folder beside it.
struct Victim {
    share: Share,
    head: NodeId,
    canary: PathBuf,
    tree_before: BTreeMap<PathBuf, Entry>,
    canary_before: BTreeMap<PathBuf, Entry>,
}

impl Victim {
    fn new() -> Victim {
        let share = Share::new();
        share.write("keep.txt", b"the victim's own file\n");
        share.add(&[]);
        let head: NodeId = share
            .head()
            .expect("head")
            .parse::<NodeId>()
            .expect("head id parses");
        let canary = share.scratch("canary");
        std::fs::write(canary.join("canary.txt"), b"must stay as it is").unwrap();
        let tree_before = read_tree(&share.root);
        let canary_before = read_tree(&canary);
        Victim {
            share,
            head,
            canary,
            tree_before,
            canary_before,
        }
    }

    fn key(&self) -> [u8; 32] {
        self.share.share_key_bytes()
    }

    /// Runs `left sync` against `peers` with a bound on file sizes (so a checkout that believed a
    /// crafted size could not fill the disk) and a bound on time.
    fn sync(&self, peers: &[String], extra: &[&str]) -> (Run, Duration) {
        let mut cmd = self.share.sync_cmd(peers, extra, &[]);
        // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 2 << 30,
                    rlim_max: 2 << 30,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let start = Instant::now();
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start left sync");
        // Read both pipes on threads so a chatty child cannot block; bound the run.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut out, &mut v).ok();
            v
        });
        let t_err = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut err, &mut v).ok();
            v
        });
        let status = match wait_timeout(&mut child, Duration::from_secs(120)) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("left sync still running after 120 s");
            }
        };
        let elapsed = start.elapsed();
        let r = Run {
            code: status.code(),
            stdout: t_out.join().unwrap(),
            stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        };
        (r, elapsed)
    }

    /// Nothing outside the share changed, and the share folder is as it was.
    #[track_caller]
    fn assert_untouched(&self) {
        assert_eq!(
            read_tree(&self.canary),
            self.canary_before,
            "the canary folder beside the share changed"
        );
        let outside: Vec<_> = std::fs::read_dir(self.share.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        for name in &outside {
            let n = name.to_string_lossy();
            assert!(
                n == "share" || n == "canary" || n.starts_with("serve-"),
                "something appeared beside the share: {n}"
            );
        }
        let now = read_tree(&self.share.root);
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            self.tree_before.keys().collect::<Vec<_>>(),
            "the share folder's paths changed"
        );
        assert_eq!(now, self.tree_before, "the share folder changed");
        if let Ok(meta) = std::fs::symlink_metadata("/tmp/outside") {
            panic!("/tmp/outside exists: {meta:?}");
        }
    }

    /// Whether the victim's store holds `chunk` (opened after the sync has exited).
    fn has_chunk(&self, chunk: ChunkId) -> bool {
        let store = left_store::Store::open(&self.share.store).expect("open victim store");
        store.has_chunks(&[chunk]).unwrap()[0]
    }

    fn has_node(&self, node: NodeId) -> bool {
        let store = left_store::Store::open(&self.share.store).expect("open victim store");
        store.has_nodes(&[node]).unwrap()[0]
    }
}

/// Asserts a failed sync: non-zero exit, one line naming `peer` and containing one of `causes`
/// (case-insensitive), no panic; returns the line.
#[track_caller]
fn assert_refused(r: &Run, peer: &str, causes: &[&str]) -> String {
    assert_ne!(r.code, Some(0), "sync succeeded: {}", r.out());
    assert!(r.code.is_some(), "sync died of a signal: {}", r.stderr);
    let line = one_error_line(r);
    assert!(
        line.contains(peer),
        "the error does not name {peer}: {line}"
    );
    let lower = line.to_lowercase();
    assert!(
        causes.iter().any(|c| lower.contains(&c.to_lowercase())),
        "the error names none of {causes:?}: {line}"
    );
    line
}

/// The `hint:` line of a failed run, without the prefix (`""` when there is none).
fn hint_of(r: &Run) -> String {
    r.stderr
        .lines()
        .find_map(|l| l.strip_prefix("hint: "))
        .unwrap_or_default()
        .to_owned()
}

/// Asserts the hint of a run refused for bad data from the peer: that one, not the "is `left
/// serve` running" one.
#[track_caller]
fn assert_bad_data_hint(r: &Run) {
    let hint = hint_of(r);
    assert!(hint.contains("failed verification"), "hint: {hint}");
    assert!(!hint.contains("left serve"), "hint: {hint}");
}

/// A good tree: two files (one of several chunks) and a folder, as a child of `parent`.
fn good_tree(objects: &mut Objects, parent: NodeId) -> (NodeId, ChunkId, NodeId) {
    let big = random_bytes(77, 300 * 1024);
    let (big_id, big_size) = objects.file(&big);
    let (small_id, small_size) = objects.file(b"hello from the fake peer\n");
    let sub = objects.dir(vec![file_entry(b"inner.txt", small_id, small_size)]);
    let root = objects.dir(vec![
        file_entry(b"big.bin", big_id, big_size),
        file_entry(b"keep.txt", small_id, small_size),
        dir_entry(b"sub", sub),
    ]);
    let head = objects.snapshot(root, vec![parent]);
    let first_chunk = ChunkId(Hash::of(&big[..64 * 1024]));
    (head, first_chunk, big_id)
}

fn sync_limits() -> [&'static str; 2] {
    ["--timeout", "15"]
}

// ------------------------------------------------------------------------------ tests

#[test]
fn honest_fake_peer_syncs() {
    // The control: the fake peer, honest, is a peer `left sync` can sync from.
    let v = Victim::new();
    let mut objects = Objects::default();
    let (head, _, _) = good_tree(&mut objects, v.head);
    let peer = FakePeer::start(v.key(), head, objects, honest_but(|_, _| None));
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let r = r.expect_code(0);
    let j = r.json();
    assert_eq!(j["head"], Value::String(head.to_string()), "{j}");
    let root = &v.share.root;
    assert_eq!(
        std::fs::read(root.join("big.bin")).unwrap(),
        random_bytes(77, 300 * 1024)
    );
    assert_eq!(
        std::fs::read(root.join("sub/inner.txt")).unwrap(),
        b"hello from the fake peer\n"
    );
    assert_eq!(read_tree(&v.canary), v.canary_before);
    assert_eq!(
        j["peers"][0]["device"],
        Value::String(left::identity::DeviceId(peer.device).to_string()),
        "{j}"
    );
    let kinds = peer.received_kinds();
    assert!(kinds.contains(&"Hello"), "{kinds:?}");
    assert!(kinds.contains(&"GetChunks"), "{kinds:?}");
}

/// One bad-frame case: the honest peer, but the first message of kind `at` is answered with
/// `bytes` (then the connection is closed when `close` is set).
fn bad_frame_case(at: &'static str, bytes: Vec<u8>, close: bool, causes: &[&str]) -> Run {
    let v = Victim::new();
    let mut objects = Objects::default();
    let (head, _, _) = good_tree(&mut objects, v.head);
    let mut fired = false;
    let peer = FakePeer::start(
        v.key(),
        head,
        objects,
        honest_but(move |m, _| {
            if fired || m.kind() != at {
                return None;
            }
            fired = true;
            Some(if close {
                Step::SendThenClose(vec![bytes.clone()])
            } else {
                Step::Send(vec![bytes.clone()])
            })
        }),
    );
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    assert_refused(&r, &peer.addr(), causes);
    v.assert_untouched();
    r
}

#[test]
fn malformed_frame_is_refused() {
    // A valid length and version, then a body that is no message (variant 200).
    let body = [WIRE_VERSION, 200, 1, 2, 3];
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    let r = bad_frame_case("Have", f, false, &["malformed"]);
    // One clean line: the cause once, what was wrong in words, and the bad-data hint.
    let line = one_error_line(&r);
    assert_eq!(line.matches("malformed").count(), 1, "{line}");
    assert!(!line.contains("Serde"), "{line}");
    assert!(line.contains("unknown message type 200"), "{line}");
    assert_bad_data_hint(&r);
}

#[test]
fn truncated_frame_is_refused() {
    // The real answer to GetNodes, cut in the middle, then the connection ends.
    let v = Victim::new();
    let mut objects = Objects::default();
    let (head, _, _) = good_tree(&mut objects, v.head);
    let peer = FakePeer::start(
        v.key(),
        head,
        objects,
        honest_but(|m, ctx| match m {
            Message::GetNodes { .. } => {
                let whole = honest(m, ctx).concat();
                Some(Step::SendThenClose(vec![whole[..whole.len() / 2].to_vec()]))
            }
            _ => None,
        }),
    );
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    assert_refused(
        &r,
        &peer.addr(),
        &["truncat", "closed", "ended", "lost", "incomplete"],
    );
    v.assert_untouched();
}

#[test]
fn oversize_length_prefix_is_refused() {
    let f = vec![0xff, 0xff, 0xff, 0xf0, WIRE_VERSION, 3];
    let r = bad_frame_case("Have", f, false, &["exceeds", "too large", "limit"]);
    assert_bad_data_hint(&r);
}

#[test]
fn wrong_version_byte_is_refused() {
    let mut f = frame(&Message::Same);
    f[ecp::LEN_PREFIX] = WIRE_VERSION + 1;
    let r = bad_frame_case("Have", f, false, &["version"]);
    let hint = hint_of(&r);
    assert!(hint.contains("upgrade"), "hint: {hint}");
}

#[test]
fn chunk_not_matching_its_id_is_refused_and_not_stored() {
    let v = Victim::new();
    let mut objects = Objects::default();
    let (head, victim_chunk, _) = good_tree(&mut objects, v.head);
    let peer = FakePeer::start(
        v.key(),
        head,
        objects,
        honest_but(move |m, ctx| match m {
            Message::GetChunks { ids } if ids.contains(&victim_chunk) => {
                let mut out = honest(m, ctx);
                // Replace the victim's answer by other bytes under its id.
                let forged = frame(&Message::Chunk {
                    id: victim_chunk,
                    bytes: left_store::codec::encode(&random_bytes(1, 64 * 1024)),
                });
                out.insert(0, forged);
                out.retain(|f| {
                    !matches!(ecp::decode_frame(f), Ok((Message::Chunk { id, bytes }, _))
                        if id == victim_chunk && ecp::verify_chunk(&id, &bytes, 1 << 20).is_ok())
                });
                Some(Step::Send(out))
            }
            _ => None,
        }),
    );
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    assert_refused(&r, &peer.addr(), &["chunk"]);
    assert_bad_data_hint(&r);
    v.assert_untouched();
    assert!(!v.has_chunk(victim_chunk), "the forged chunk was stored");
}

#[test]
fn node_not_matching_its_id_is_refused_and_not_stored() {
    let v = Victim::new();
    let mut objects = Objects::default();
    let (head, _, big_file) = good_tree(&mut objects, v.head);
    let peer = FakePeer::start(
        v.key(),
        head,
        objects,
        honest_but(move |m, ctx| match m {
            Message::GetNodes { ids } if ids.contains(&big_file) => {
                // Another valid node's bytes under the file node's id.
                let other = Node::File(FileNode {
                    size: 0,
                    mode: 0o644,
                    mtime_ns: 0,
                    content: Content::Inline(vec![]),
                })
                .encode()
                .unwrap();
                let nodes = ids
                    .iter()
                    .filter_map(|id| {
                        let bytes = if *id == big_file {
                            other.clone()
                        } else {
                            ctx.objects.nodes.get(id)?.clone()
                        };
                        Some((*id, bytes))
                    })
                    .collect();
                Some(Step::Send(vec![frame(&Message::Nodes { nodes })]))
            }
            _ => None,
        }),
    );
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    assert_refused(&r, &peer.addr(), &["node"]);
    v.assert_untouched();
    assert!(!v.has_node(big_file), "the forged node was stored");
}

#[test]
fn unsafe_names_are_refused() {
    for name in [
        &b".."[..],
        b".",
        b"a/b",
        b"nul\0byte",
        b"/abs",
        b"/tmp/outside",
    ] {
        let v = Victim::new();
        let mut objects = Objects::default();
        let (file, size) = objects.file(b"evil bytes\n");
        // One leaf, written by hand: the store's builder would refuse nothing either, but this
        // keeps the bad entry alone in its node.
        let root = objects.leaf(vec![file_entry(name, file, size)]);
        let head = objects.snapshot(root, vec![v.head]);
        let peer = FakePeer::start(v.key(), head, objects, honest_but(|_, _| None));
        let (r, _) = v.sync(&[peer.addr()], &sync_limits());
        let shown = String::from_utf8_lossy(name);
        eprintln!("name {shown:?}: {}", r.stderr.trim());
        assert_refused(&r, &peer.addr(), &["name", "invalid", "node"]);
        v.assert_untouched();
        assert!(
            !v.has_node(root),
            "{shown:?}: the bad folder node was stored"
        );
    }
}

#[test]
fn symlink_then_folder_of_the_same_name_cannot_escape() {
    // A folder index whose two leaves both hold `x`: first a symlink to the canary folder, then a
    // folder `x` with a file `evil`. A checkout that made the link and then wrote `x/evil` would
    // write into the canary folder.
    let v = Victim::new();
    let mut objects = Objects::default();
    let (evil, size) = objects.file(b"written through a symlink\n");
    let inner = objects.dir(vec![file_entry(b"evil", evil, size)]);
    let target = v.canary.as_os_str().as_encoded_bytes().to_vec();
    let leaf1 = objects.leaf(vec![link_entry(b"x", &target)]);
    let leaf2 = objects.leaf(vec![dir_entry(b"x", inner)]);
    let root = objects.node(&Node::Dir(DirNode::Index {
        level: 1,
        children: vec![leaf1, leaf2],
    }));
    let head = objects.snapshot(root, vec![v.head]);
    let peer = FakePeer::start(v.key(), head, objects, honest_but(|_, _| None));
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    eprintln!("exit {:?}, stderr: {}", r.code, r.stderr);
    eprintln!(
        "share after: {:?}",
        read_tree(&v.share.root).keys().collect::<Vec<_>>()
    );
    assert!(!v.canary.join("evil").exists(), "wrote through the symlink");
    assert_eq!(
        read_tree(&v.canary),
        v.canary_before,
        "the canary folder changed"
    );
    assert_ne!(
        r.code,
        Some(0),
        "sync accepted a folder with a duplicate name: {}",
        r.out()
    );
    one_error_line(&r);
    v.assert_untouched();
}

#[test]
fn a_symlink_already_checked_out_is_replaced_not_written_through() {
    // Snapshot 1 (honest) has `x` -> the canary folder; snapshot 2 makes `x` a folder holding
    // `evil`. Checking out 2 over 1 must replace the link, never write through it.
    let v = Victim::new();
    let mut objects = Objects::default();
    let target = v.canary.as_os_str().as_encoded_bytes().to_vec();
    let root1 = objects.dir(vec![link_entry(b"x", &target)]);
    let snap1 = objects.snapshot(root1, vec![v.head]);
    let (evil, size) = objects.file(b"written through a symlink\n");
    let inner = objects.dir(vec![file_entry(b"evil", evil, size)]);
    let root2 = objects.dir(vec![dir_entry(b"x", inner)]);
    let snap2 = objects.snapshot(root2, vec![snap1]);

    let peer = FakePeer::start(v.key(), snap1, objects.clone(), honest_but(|_, _| None));
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    r.expect_code(0);
    let link = v.share.root.join("x");
    assert_eq!(std::fs::read_link(&link).unwrap(), v.canary);
    drop(peer);

    let peer = FakePeer::start(v.key(), snap2, objects, honest_but(|_, _| None));
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(
        !v.canary.join("evil").exists(),
        "wrote through the symlink (exit {:?}: {})",
        r.code,
        r.stderr
    );
    assert_eq!(read_tree(&v.canary), v.canary_before, "canary changed");
    if r.code == Some(0) {
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.is_dir(), "x is not a folder after the checkout");
        assert_eq!(
            std::fs::read(link.join("evil")).unwrap(),
            b"written through a symlink\n"
        );
    } else {
        one_error_line(&r);
    }
}

#[test]
fn a_file_claiming_one_petabyte_is_refused_without_filling_the_disk() {
    // A well-formed chunk-list tree whose every leaf entry is the same 256 KiB zero chunk:
    // 4 x 1024 x 1024 x 1024 x 256 KiB = 1 PiB from one chunk and four small nodes.
    let v = Victim::new();
    let mut objects = Objects::default();
    let zero = objects.chunk(&vec![0u8; 256 * 1024]);
    let l0 = objects.node(&Node::ChunkList(ChunkListNode {
        level: 0,
        entries: vec![zero; 1024],
    }));
    let mut below = (l0, 256u64 << 20);
    for (level, fan) in [(1u8, 1024usize), (2, 1024), (3, 4)] {
        let r = ChunkRef {
            id: below.0 .0,
            len: below.1,
        };
        let id = objects.node(&Node::ChunkList(ChunkListNode {
            level,
            entries: vec![r; fan],
        }));
        below = (id, below.1 * fan as u64);
    }
    assert_eq!(below.1, 1 << 50);
    let file = objects.node(&Node::File(FileNode {
        size: 1 << 50,
        mode: 0o644,
        mtime_ns: 1,
        content: Content::Tree(below.0),
    }));
    let root = objects.dir(vec![file_entry(b"huge.bin", file, 1 << 50)]);
    let head = objects.snapshot(root, vec![v.head]);
    let peer = FakePeer::start(v.key(), head, objects, honest_but(|_, _| None));
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    eprintln!("stderr: {}", r.stderr);
    assert_ne!(r.code, Some(0), "a 1 PiB checkout succeeded?");
    assert!(r.code.is_some(), "sync died of a signal (file size limit?)");
    let line = one_error_line(&r);
    // How much is needed and how much is free, where.
    assert!(line.contains("writes 1.0 PiB"), "{line}");
    assert!(line.contains(" free on /"), "{line}");
    let hint = hint_of(&r);
    assert!(hint.contains("file system"), "hint: {hint}");
    assert!(du(&v.share.root) < 512 << 20, "the checkout wrote a lot");
    v.assert_untouched();
}

#[test]
fn a_zstd_bomb_chunk_is_refused_and_not_stored() {
    // The file claims a 64 KiB chunk; the chunk's zstd payload is tiny but expands to 4 MiB (past
    // the maximum chunk size on the wire and in the store). Its id is the hash of those 4 MiB.
    let v = Victim::new();
    let mut objects = Objects::default();
    let plain = vec![0u8; 4 << 20];
    let bomb = ChunkId(Hash::of(&plain));
    let encoded = left_store::codec::encode(&plain);
    assert!(encoded.len() < 64 * 1024, "{}", encoded.len());
    objects.chunks.insert(bomb, encoded);
    let file = objects.node(&Node::File(FileNode {
        size: 64 * 1024,
        mode: 0o644,
        mtime_ns: 1,
        content: Content::Inline(vec![ChunkRef {
            id: bomb.0,
            len: 64 * 1024,
        }]),
    }));
    let root = objects.dir(vec![file_entry(b"bomb.bin", file, 64 * 1024)]);
    let head = objects.snapshot(root, vec![v.head]);
    let peer = FakePeer::start(v.key(), head, objects, honest_but(|_, _| None));
    let (r, _) = v.sync(&[peer.addr()], &sync_limits());
    assert_refused(&r, &peer.addr(), &["chunk"]);
    v.assert_untouched();
    assert!(!v.has_chunk(bomb), "the bomb was stored");
}

#[test]
fn a_peer_that_stalls_forever_is_given_up_on() {
    // Hello and Excess, then silence: rdt keeps the connection alive, so only the sync's own stall
    // detection can end it.
    let v = Victim::new();
    let mut objects = Objects::default();
    let (head, _, _) = good_tree(&mut objects, v.head);
    let peer = FakePeer::start(
        v.key(),
        head,
        objects,
        honest_but(|m, _| match m {
            Message::GetNodes { .. } | Message::GetChunks { .. } => Some(Step::Silence),
            _ => None,
        }),
    );
    let (r, took) = v.sync(&[peer.addr()], &["--timeout", "5"]);
    eprintln!(
        "stall: exit {:?} after {took:?}: {}",
        r.code,
        r.stderr.trim()
    );
    assert_refused(
        &r,
        &peer.addr(),
        &["stall", "timed out", "timeout", "no answer"],
    );
    // --timeout is the whole budget without progress: stall detection included (slack for load).
    assert!(took < Duration::from_secs(5 + 7), "took {took:?}");
    let hint = hint_of(&r);
    assert!(hint.contains("left serve"), "hint: {hint}");
    v.assert_untouched();
}

#[test]
fn a_peer_that_offers_but_serves_nothing_is_dropped() {
    // Excess, then NotFound for every node and chunk.
    let v = Victim::new();
    let mut objects = Objects::default();
    let (head, _, _) = good_tree(&mut objects, v.head);
    let peer = FakePeer::start(
        v.key(),
        head,
        objects,
        honest_but(|m, _| match m {
            Message::GetNodes { ids } => Some(Step::Send(vec![frame(&Message::NotFound {
                ids: ids.iter().map(|i| ObjectRef::Node(*i)).collect(),
            })])),
            Message::GetChunks { ids } => Some(Step::Send(vec![frame(&Message::NotFound {
                ids: ids.iter().map(|i| ObjectRef::Chunk(*i)).collect(),
            })])),
            _ => None,
        }),
    );
    let (r, took) = v.sync(&[peer.addr()], &["--timeout", "5"]);
    eprintln!("notfound: exit {:?} after {took:?}", r.code);
    assert_refused(
        &r,
        &peer.addr(),
        &["not found", "notfound", "missing", "lacks", "does not have"],
    );
    v.assert_untouched();
}

/// A bad peer beside an honest one: the sync succeeds from the honest one and names the bad one
/// in its JSON.
fn with_a_good_peer(name: &str, spoils: &[&str], bad: Script) {
    let v = Victim::new();
    let mut objects = Objects::default();
    let (head, _, _) = good_tree(&mut objects, v.head);
    let good = FakePeer::start(v.key(), head, objects.clone(), honest_but(|_, _| None));
    let bad = FakePeer::start(v.key(), head, objects, bad);
    let (r, took) = v.sync(&[bad.addr(), good.addr()], &["--timeout", "30"]);
    eprintln!(
        "{name}: exit {:?} after {took:?}: {}",
        r.code,
        r.stderr.trim()
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(r.code, Some(0), "{name}: {}", r.stderr);
    assert!(
        took < Duration::from_secs(8),
        "{name}: the bad peer held the sync up for {took:?} (the stall timeout is 10 s)"
    );
    let j = r.json();
    assert_eq!(j["head"], Value::String(head.to_string()), "{name}: {j}");
    assert_eq!(
        std::fs::read(v.share.root.join("big.bin")).unwrap(),
        random_bytes(77, 300 * 1024),
        "{name}"
    );
    assert_eq!(read_tree(&v.canary), v.canary_before, "{name}");
    let peers = j["peers"].as_array().expect("peers list");
    let bad_entry = peers
        .iter()
        .find(|p| p["addr"] == Value::String(bad.addr()))
        .unwrap_or_else(|| panic!("{name}: the bad peer is not listed: {j}"));
    let good_entry = peers
        .iter()
        .find(|p| p["addr"] == Value::String(good.addr()))
        .unwrap_or_else(|| panic!("{name}: the good peer is not listed: {j}"));
    assert!(good_entry["error"].is_null(), "{name}: {j}");
    // The bad peer may have been dropped (error set) or never asked for what it spoils (the good
    // one was quicker); when it was asked, it must have been dropped.
    let asked = bad.received_kinds().iter().any(|k| spoils.contains(k));
    if asked {
        assert!(
            bad_entry["error"].is_string(),
            "{name}: the bad peer was asked and not dropped: {j}\nstderr: {}",
            r.stderr
        );
    }
}

#[test]
fn a_bad_peer_beside_a_good_one_does_not_stop_the_sync() {
    with_a_good_peer(
        "forged chunks",
        &["GetChunks"],
        honest_but(|m, ctx| match m {
            Message::GetChunks { ids } => Some(Step::Send(
                ids.iter()
                    .map(|id| {
                        frame(&Message::Chunk {
                            id: *id,
                            bytes: left_store::codec::encode(b"not it"),
                        })
                    })
                    .collect(),
            )),
            _ => {
                let _ = ctx;
                None
            }
        }),
    );
    with_a_good_peer(
        "not found",
        &["GetChunks"],
        honest_but(|m, _| match m {
            Message::GetChunks { ids } => Some(Step::Send(vec![frame(&Message::NotFound {
                ids: ids.iter().map(|i| ObjectRef::Chunk(*i)).collect(),
            })])),
            _ => None,
        }),
    );
    with_a_good_peer(
        // Not dropped (the sync ends before the stall timeout), but it must not hold the sync up:
        // its requests are asked again of the good peer (checked below by the time).
        "stall",
        &[],
        honest_but(|m, _| match m {
            Message::GetNodes { .. } | Message::GetChunks { .. } => Some(Step::Silence),
            _ => None,
        }),
    );
    with_a_good_peer(
        "garbage",
        &["GetChunks"],
        honest_but(|m, _| match m {
            Message::GetChunks { .. } => Some(Step::Send(vec![vec![0, 0, 0, 3, 9, 9, 9]])),
            _ => None,
        }),
    );
}

// ------------------------------------------------------------------------------ floods

/// Peak RSS of a process in KiB (`VmHWM`), while it runs.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Runs `cmd` to the end and returns its run and its peak RSS in KiB: the largest `VmHWM` of
/// `/proc/<pid>/status` sampled while it runs (the high-water mark of the program's own memory
/// after exec). Not `wait4`'s `ru_maxrss`: that also counts the forked image of this test
/// process from before the exec, which is as big as whatever other tests hold at the time.
// The child is reaped by wait4, not by Child::wait.
#[allow(clippy::zombie_processes)]
pub fn run_with_peak_rss(cmd: &mut std::process::Command, limit: Duration) -> (Run, u64) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).ok();
        v
    });
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + limit;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child with WNOHANG.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut peak = 0u64;
    let hwm = |pid: libc::pid_t| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    loop {
        if let Some(k) = hwm(pid) {
            peak = peak.max(k);
        }
        // SAFETY: valid pointers to locals; pid is our unreaped child.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(rc >= 0, "wait4: {}", std::io::Error::last_os_error());
        if rc == pid {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let code = if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else {
        None
    };
    let run = Run {
        code,
        stdout: t_out.join().unwrap(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
    };
    assert!(peak > 0, "no VmHWM was read while the child ran");
    (run, peak)
}

#[test]
fn a_flood_of_unsolicited_chunks_does_not_grow_the_client() {
    // Right after Excess the peer pushes 256 MiB of chunks nobody asked for, then answers
    // honestly. The sync may use the peer or drop it, but its memory must stay bounded.
    let v = Victim::new();
    let mut objects = Objects::default();
    let (head, _, _) = good_tree(&mut objects, v.head);
    // A valid 200 KiB chunk (its id matches), 1280 times.
    let plain = random_bytes(5, 200 * 1024);
    let junk_id = ChunkId(Hash::of(&plain));
    let flood = frame(&Message::Chunk {
        id: junk_id,
        bytes: left_store::codec::encode(&plain),
    });
    let peer = FakePeer::start(
        v.key(),
        head,
        objects,
        honest_but(move |m, ctx| match m {
            Message::Have { .. } => {
                let mut out = honest(m, ctx);
                out.extend(std::iter::repeat_n(flood.clone(), 1280));
                Some(Step::Send(out))
            }
            _ => None,
        }),
    );
    let mut cmd = v.share.sync_cmd(&[peer.addr()], &["--timeout", "30"], &[]);
    let (r, peak_kib) = run_with_peak_rss(&mut cmd, Duration::from_secs(120));
    eprintln!(
        "flooded client: exit {:?}, peak RSS {} MiB: {}",
        r.code,
        peak_kib / 1024,
        r.stderr.trim()
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(
        peak_kib < 256 * 1024,
        "the client grew to {} MiB",
        peak_kib / 1024
    );
    if r.code == Some(0) {
        assert_eq!(
            std::fs::read(v.share.root.join("big.bin")).unwrap(),
            random_bytes(77, 300 * 1024)
        );
    } else {
        assert_refused(
            &r,
            &peer.addr(),
            &["unexpected", "unsolicited", "not asked", "chunk"],
        );
        v.assert_untouched();
    }
    assert_eq!(read_tree(&v.canary), v.canary_before);
    eprintln!(
        "the unsolicited chunk was {}stored",
        if v.has_chunk(junk_id) { "" } else { "not " }
    );
}

// ------------------------------------------------------------------------------ bad clients

/// A fake client of a real `left serve`: connected, hellos exchanged.
struct FakeClient {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    stream: Stream,
    dec: ecp::Decoder,
    /// Keeps the endpoint alive.
    _ep: Endpoint,
}

impl FakeClient {
    fn connect(share_key: [u8; 32], server: SocketAddr, seed: u64) -> FakeClient {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let secret: [u8; 32] = random_bytes(0xc11e_0000 + seed, 32).try_into().unwrap();
        let device = left::identity::Identity::from_secret(secret).device_id().0;
        let (ep, conn, stream) = rt.block_on(async {
            let ep = Endpoint::bind(
                "127.0.0.1:0".parse().unwrap(),
                &SocketConfig::default(),
                EndpointConfig::new(secret, share_key, seed),
            )
            .unwrap();
            let conn = tokio::time::timeout(Duration::from_secs(10), ep.connect(server))
                .await
                .expect("handshake in time")
                .expect("handshake");
            let mut stream = conn.control_stream();
            let hello = Message::Hello {
                protocol: PROTOCOL_VERSION,
                share: ShareId::from_key(&share_key),
                device,
                encryption: true,
            };
            stream.write_all(&frame(&hello)).await.unwrap();
            (ep, conn, stream)
        });
        let mut c = FakeClient {
            rt,
            conn,
            stream,
            dec: ecp::Decoder::new(),
            _ep: ep,
        };
        let first = c.next(Duration::from_secs(10)).expect("server hello");
        assert_eq!(first.kind(), "Hello", "{first:?}");
        c
    }

    /// The next message, `None` when the stream or connection ended or `limit` passed.
    fn next(&mut self, limit: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut buf: &[u8] = &[];
            if let Ok(Some(m)) = self.dec.decode(&mut buf) {
                return Some(m);
            }
            let read = self.rt.block_on(async {
                tokio::time::timeout_at(deadline, self.stream.read(1 << 20)).await
            });
            let bytes = match read {
                Ok(Ok(Some(b))) => b,
                _ => return None,
            };
            let mut input = &bytes[..];
            // Keep decoding what is buffered: feed the bytes, return the first message (the rest
            // stays in the decoder only if it is a partial frame, so decode them all here).
            let mut first = None;
            loop {
                match self.dec.decode(&mut input) {
                    Ok(Some(m)) => {
                        if first.is_none() {
                            first = Some(m);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => panic!("the server sent bytes that do not decode: {e}"),
                }
            }
            if first.is_some() {
                return first;
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        self.send_within(bytes, Duration::from_secs(10))
    }

    /// Writes `bytes`; false if the write failed or was not accepted within `limit`.
    fn send_within(&mut self, bytes: &[u8], limit: Duration) -> bool {
        let fut = self.stream.write_all(bytes);
        self.rt
            .block_on(async { tokio::time::timeout(limit, fut).await })
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the server closed the connection; returns why, or `None` if it did not
    /// within `limit`.
    fn closed_within(&self, limit: Duration) -> Option<String> {
        self.rt.block_on(async {
            tokio::time::timeout(limit, self.conn.closed())
                .await
                .ok()
                .map(|e| e.to_string())
        })
    }
}

/// A served share with a 64 MiB file and its chunk ids.
fn served_share() -> (Share, Server, Vec<ChunkId>) {
    let a = Share::new();
    a.write("big.bin", &random_bytes(21, 64 << 20));
    a.write("small.txt", b"small\n");
    a.add(&[]);
    let chunks = {
        let store = left_store::Store::open(&a.store).unwrap();
        let head = store.head().unwrap().unwrap();
        store
            .debug_file_chunks(head, std::path::Path::new("big.bin"))
            .unwrap()
    };
    let server = a.serve();
    (a, server, chunks)
}

#[test]
fn garbage_from_a_client_ends_only_that_session() {
    let (a, server, _) = served_share();
    for (what, bytes) in [
        ("malformed", vec![0, 0, 0, 3, WIRE_VERSION, 200, 200]),
        ("oversize", vec![0xff, 0xff, 0xff, 0xff, WIRE_VERSION]),
        ("version", {
            let mut f = frame(&Message::Same);
            f[ecp::LEN_PREFIX] = WIRE_VERSION + 7;
            f
        }),
    ] {
        let mut c = FakeClient::connect(a.share_key_bytes(), server.addr, 1);
        assert!(c.send(&bytes), "{what}: could not send");
        // The server says why (an Error, best effort), then closes with the reason.
        let mut said = String::new();
        while let Some(m) = c.next(Duration::from_secs(10)) {
            if let Message::Error { message, .. } = &m {
                said = message.clone();
            }
        }
        let closed = c
            .closed_within(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{what}: the server kept the connection"));
        eprintln!("{what}: Error {said:?}, closed: {closed}");
        let why = format!("{said} {closed}").to_lowercase();
        assert!(
            ["malformed", "version", "exceeds"]
                .iter()
                .any(|w| why.contains(w)),
            "{what}: the server did not say why: {why}"
        );
    }
    // The server is still up and still serves.
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    assert_same_tree(&a.root, &b.root);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.to_lowercase().contains("malformed"), "{log}");
}

#[test]
fn a_client_that_asks_everything_and_never_reads_stays_bounded() {
    let (a, server, chunks) = served_share();
    let pid = server.child.id();
    let before = peak_rss_kib(pid);
    let mut c = FakeClient::connect(a.share_key_bytes(), server.addr, 2);
    // Every chunk of the 64 MiB file, asked up to 4000 times (250 GiB of replies; 130 MB of
    // requests, past every window), never reading a reply.
    let mut sent = 0;
    let mut blocked = false;
    'outer: for _ in 0..4000 {
        for ids in chunks.chunks(ecp::MAX_IDS_PER_REQUEST) {
            let req = frame(&Message::GetChunks { ids: ids.to_vec() });
            if !c.send_within(&req, Duration::from_secs(2)) {
                blocked = true;
                // Backpressure reached us: the server stopped reading our requests.
                break 'outer;
            }
            sent += 1;
        }
    }
    eprintln!("{sent} requests went out before backpressure");
    assert!(
        blocked,
        "the server read all {sent} requests without pushing back"
    );
    // Meanwhile a real peer syncs from the same server.
    let b = a.join();
    b.sync_ok(&[server.addr()], &["--timeout", "60"], &[]);
    assert_same_tree(&a.root, &b.root);
    let peak = peak_rss_kib(pid);
    eprintln!(
        "serve peak RSS: {} MiB at start, {} MiB with a greedy client and a sync",
        before / 1024,
        peak / 1024
    );
    assert!(
        peak < 256 * 1024,
        "the server grew to {} MiB for a client that never reads",
        peak / 1024
    );
    drop(c);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}
