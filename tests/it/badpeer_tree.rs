//! A crafted snapshot must not jam the store: a peer built on the library (`badpeer`'s fake
//! peer) serves hash-valid trees that cannot be checked out (a file entry claiming 1 KiB whose
//! chunk list covers 16 MiB, a file entry pointing at a folder node). `left sync` refuses them
//! before anything is journaled or written, and afterwards `add`, `gc` and a sync from an honest
//! peer all work.

use left_store::node::{ChunkListNode, ChunkRef, Content, FileNode, Node};
use left_store::NodeId;
use serde_json::Value;

use crate::badpeer::{dir_entry, file_entry, honest_but, FakePeer, Objects};
use crate::util::*;

fn victim() -> (Share, NodeId) {
    let share = Share::new();
    share.write("keep.txt", b"the victim's own file\n");
    share.add(&[]);
    let head = share.head().unwrap().parse::<NodeId>().unwrap();
    (share, head)
}

/// A file node of claimed `size` whose chunk list covers far more.
fn lying_file(o: &mut Objects) -> NodeId {
    let c = o.chunk(&random_bytes(3, 64 * 1024));
    let leaf = o.node(&Node::ChunkList(ChunkListNode {
        level: 0,
        entries: vec![c; 16],
    }));
    let top = o.node(&Node::ChunkList(ChunkListNode {
        level: 1,
        entries: vec![
            ChunkRef {
                id: leaf.0,
                len: 64,
            };
            16
        ],
    }));
    o.node(&Node::File(FileNode {
        size: 1024,
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
        content: Content::Tree(top),
    }))
}

fn crafted(case: &str, parent: NodeId) -> (NodeId, Objects) {
    let mut o = Objects::default();
    let (ok, ok_size) = o.file(b"an honest file beside it\n");
    let bad = match case {
        "lying" => file_entry(b"bad.bin", lying_file(&mut o), 1024),
        _ => {
            let sub = o.dir(vec![file_entry(b"inner", ok, ok_size)]);
            file_entry(b"bad.bin", sub, 0)
        }
    };
    let root = o.dir(vec![bad, file_entry(b"keep.txt", ok, ok_size)]);
    (o.snapshot(root, vec![parent]), o)
}

#[test]
fn a_crafted_tree_is_refused_and_the_store_keeps_working() {
    for case in ["lying", "file-on-folder"] {
        let (share, head) = victim();
        let before = read_tree(&share.root);
        let (bad_head, objects) = crafted(case, head);
        let bad = FakePeer::start(
            share.share_key_bytes(),
            bad_head,
            objects,
            honest_but(|_, _| None),
        );
        let r = share.sync(&[bad.addr()], &["--timeout", "15"], &[]);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert_ne!(
            r.code,
            Some(0),
            "{case}: the crafted snapshot was checked out"
        );
        assert!(
            r.stderr.contains("bad.bin"),
            "{case}: the error does not name the path: {}",
            r.stderr
        );
        assert_eq!(read_tree(&share.root), before, "{case}: the share changed");
        {
            let store = left_store::Store::open(&share.store).unwrap();
            assert_eq!(store.pending_checkout().unwrap(), None, "{case}: journaled");
            assert_eq!(store.head().unwrap(), Some(head));
        }
        drop(bad);
        // add, gc, and a sync from an honest peer still work.
        share.write("new.txt", b"a local change\n");
        let j = share.add(&[]);
        assert!(j["snapshot"].is_string(), "{case}: {j}");
        let local = share.head().unwrap().parse::<NodeId>().unwrap();
        share.left(&["gc"]).expect_code(0);
        let mut o = Objects::default();
        let (f, size) = o.file(b"from the honest peer\n");
        let (keep, keep_size) = o.file(b"the victim's own file\n");
        let (new, new_size) = o.file(b"a local change\n");
        let sub = o.dir(vec![file_entry(b"inner.txt", f, size)]);
        let root = o.dir(vec![
            file_entry(b"keep.txt", keep, keep_size),
            file_entry(b"new.txt", new, new_size),
            dir_entry(b"sub", sub),
        ]);
        let good = o.snapshot(root, vec![local]);
        let honest = FakePeer::start(share.share_key_bytes(), good, o, honest_but(|_, _| None));
        let j = share.sync_ok(&[honest.addr()], &["--timeout", "15"], &[]);
        assert_eq!(j["head"], Value::String(good.to_string()), "{case}: {j}");
        assert_eq!(
            std::fs::read(share.root.join("sub/inner.txt")).unwrap(),
            b"from the honest peer\n"
        );
    }
}
