//! Pull memory (issue 10, item 6): a peer that answers every node request but never sends the one
//! chunk every file of a 200 000-file tree shares. `left sync` must not hold a record per file
//! while it waits: the walk stops at `PullConfig::max_pending_refs` (65 536 by default), the peer
//! is dropped by the stall timeout, and the error names the withheld chunk.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use left::ecp::Message;
use left_store::node::{build_content, DirEntry, FileNode, Node, Target};
use left_store::{ChunkId, EntryKind, NodeId};

use crate::badpeer::{dir_entry, honest, honest_but, run_with_peak_rss, FakePeer, Objects, Step};
use crate::util::*;

const DIRS: usize = 200;
const FILES: usize = 1000;

/// `DIRS` folders of `FILES` files; every file is the chunk `x` and then a chunk of its own.
fn shared_chunk_tree(o: &mut Objects, parent: NodeId) -> (NodeId, ChunkId) {
    let x = o.chunk(b"the chunk every file shares");
    let mut top = Vec::new();
    for d in 0..DIRS {
        let mut entries = Vec::new();
        for f in 0..FILES {
            let own = o.chunk(format!("file {f} of folder {d}").as_bytes());
            let size = x.len + own.len;
            let content = build_content(vec![x.clone(), own], &mut |_, _| {
                unreachable!("two chunks are listed inline")
            })
            .unwrap();
            let id = o.node(&Node::File(FileNode {
                size,
                mode: 0o644,
                mtime_ns: 1_700_000_000_000_000_000,
                content,
            }));
            entries.push(DirEntry {
                name: format!("f{f:05}").into_bytes(),
                kind: EntryKind::File,
                mode: 0o644,
                mtime_ns: 1_700_000_000_000_000_000,
                size,
                target: Target::Node(id),
            });
        }
        let sub = o.dir(entries);
        top.push(dir_entry(format!("d{d:05}").as_bytes(), sub));
    }
    let root = o.dir(top);
    (o.snapshot(root, vec![parent]), ChunkId(x.id))
}

#[test]
fn a_peer_withholding_a_chunk_every_file_shares_cannot_grow_the_pull() {
    let share = Share::new();
    share.write("keep.txt", b"the victim's own file\n");
    share.add(&[]);
    let mine = share.head().unwrap().parse::<NodeId>().unwrap();
    let mut objects = Objects::default();
    let (head, x) = shared_chunk_tree(&mut objects, mine);
    let tree_nodes = objects.nodes.len();
    let asked = Arc::new(AtomicUsize::new(0));
    let asked2 = asked.clone();
    let peer = FakePeer::start(
        share.share_key_bytes(),
        head,
        objects,
        honest_but(move |m, ctx| match m {
            Message::GetNodes { ids } => {
                asked2.fetch_add(ids.len(), Ordering::Relaxed);
                None
            }
            // Every chunk but `x`, which it neither sends nor says it lacks.
            Message::GetChunks { ids } if ids.contains(&x) => {
                let rest: Vec<ChunkId> = ids.iter().copied().filter(|c| *c != x).collect();
                if rest.is_empty() {
                    return Some(Step::Silence);
                }
                Some(Step::Send(honest(&Message::GetChunks { ids: rest }, ctx)))
            }
            _ => None,
        }),
    );
    let mut cmd = share.sync_cmd(&[peer.addr()], &["--timeout", "20"], &[]);
    let (r, peak_kib) = run_with_peak_rss(&mut cmd, Duration::from_secs(600));
    let asked = asked.load(Ordering::Relaxed);
    eprintln!(
        "withholding peer: exit {:?}, peak RSS {} MiB, {asked} node ids asked of {tree_nodes}: {}",
        r.code,
        peak_kib / 1024,
        r.stderr.trim()
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_ne!(r.code, Some(0), "the sync cannot finish without the chunk");
    assert!(
        r.stderr.contains(&format!("owes chunk {}", x.fmt_short())),
        "the error does not name the withheld chunk: {}",
        r.stderr
    );
    // The walk stopped at its bound (65 536 references, each asked node holds one) instead of
    // opening every file of the tree.
    assert!(
        asked <= 65_536 + 32,
        "the pull asked for {asked} nodes of {tree_nodes} while a chunk was withheld"
    );
    // Measured: 45 MiB with the bound, 149 MiB without it (every file held open).
    assert!(
        peak_kib < 100 * 1024,
        "the client grew to {} MiB",
        peak_kib / 1024
    );
}
