//! Checkout (moving a share folder between snapshots), and the store pieces the sync engine uses
//! with it: `is_ancestor`, `open_read_only` beside an open store, `put_chunk_verified`.

mod common;
use common::*;
use left_store::*;
use std::fs;
use std::path::Path;

fn add_msg(store: &Store, share: &Path, msg: &str) -> Option<NodeId> {
    store
        .add(
            share,
            &[],
            &AddOptions {
                message: msg.into(),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap()
        .snapshot
}

#[test]
fn is_ancestor_follows_parents() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    fs::create_dir(&share).unwrap();
    let store = Store::create(&t.path().join("store"), small_cfg()).unwrap();
    let mut snaps = Vec::new();
    for i in 0..4u64 {
        fs::write(share.join("f"), rand_bytes(i, 100)).unwrap();
        snaps.push(add_msg(&store, &share, "s").unwrap());
    }
    for (i, a) in snaps.iter().enumerate() {
        for (j, b) in snaps.iter().enumerate() {
            assert_eq!(store.is_ancestor(*a, *b).unwrap(), i <= j, "{i} {j}");
        }
    }
    // A snapshot on another branch (parent = snaps[1]) is not an ancestor of snaps[3], nor the reverse.
    let s1 = store.snapshot(snaps[1]).unwrap();
    let side = store
        .put_snapshot(&Snapshot {
            root: s1.root,
            parents: vec![snaps[1]],
            device: [7; 32],
            time_ns: s1.time_ns + 1,
            message: "side".into(),
        })
        .unwrap();
    assert!(store.is_ancestor(snaps[1], side).unwrap());
    assert!(!store.is_ancestor(side, snaps[3]).unwrap());
    assert!(!store.is_ancestor(snaps[3], side).unwrap());
    // An unknown id is nobody's ancestor; an unknown parent ends its branch.
    let unknown = NodeId(Hash::of(b"unknown"));
    assert!(!store.is_ancestor(unknown, snaps[3]).unwrap());
    let orphan = store
        .put_snapshot(&Snapshot {
            root: s1.root,
            parents: vec![unknown, snaps[0]],
            device: [7; 32],
            time_ns: s1.time_ns + 10,
            message: "orphan".into(),
        })
        .unwrap();
    assert!(store.is_ancestor(snaps[0], orphan).unwrap());
    assert!(!store.is_ancestor(snaps[2], orphan).unwrap());
}

#[test]
fn read_only_open_beside_an_open_store() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    fs::create_dir_all(share.join("d")).unwrap();
    fs::write(share.join("d/a"), rand_bytes(1, 50_000)).unwrap();
    fs::write(share.join("b"), b"hello").unwrap();
    let dir = t.path().join("store");
    let store = Store::create(&dir, small_cfg()).unwrap();
    let s1 = add_msg(&store, &share, "one").unwrap();
    // The primary stays open (as `left serve` would); a normal open is refused.
    assert!(matches!(Store::open(&dir), Err(Error::Locked { .. })));
    let ro = Store::open_read_only(&dir).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(ro.head().unwrap(), Some(s1));
    assert_eq!(ro.log(s1, 10).unwrap().len(), 1);
    let names: Vec<_> = ro
        .ls(s1, Path::new(""))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["b", "d"]);
    let out = t.path().join("out");
    ro.restore(s1, None, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(picture(&out), picture(&share));
    let v = ro.verify(&NoProgress).unwrap();
    assert!(v.problems.is_empty() && v.chunks_checked > 0, "{v:?}");
    // Writes are refused with the read-only error, before any work.
    let e = ro
        .add(&share, &[], &AddOptions::default(), &NoProgress)
        .unwrap_err();
    assert!(matches!(e, Error::ReadOnly), "{e}");
    assert!(e.to_string().contains("read-only"));
    assert!(matches!(
        ro.gc(&GcOptions::default(), &NoProgress),
        Err(Error::ReadOnly)
    ));
    let data = b"some chunk";
    let id = ChunkId(Hash::of(data));
    let enc = codec::encode(data);
    assert!(matches!(ro.put_chunk(id, &enc), Err(Error::ReadOnly)));
    assert!(matches!(ro.set_ref("head", s1), Err(Error::ReadOnly)));
    // The primary keeps working meanwhile; the read-only handle sees the data as of its open.
    fs::write(share.join("b"), b"changed").unwrap();
    let s2 = add_msg(&store, &share, "two").unwrap();
    assert_eq!(ro.head().unwrap(), Some(s1));
    let ro2 = Store::open_read_only(&dir).unwrap();
    assert_eq!(ro2.head().unwrap(), Some(s2));
    assert_eq!(ro2.log(s2, 10).unwrap().len(), 2);
    drop(ro);
    drop(ro2);
    // The primary was not disturbed.
    drop(store);
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.head().unwrap(), Some(s2));
    assert!(store.verify(&NoProgress).unwrap().problems.is_empty());
}

#[test]
fn put_chunk_verified_stores_like_put_chunk() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store"), small_cfg()).unwrap();
    let data = rand_bytes(5, 9000);
    let id = ChunkId(Hash::of(&data));
    let enc = codec::encode(&data);
    assert!(store
        .put_chunk_verified(id, &enc, data.len() as u32)
        .unwrap());
    assert!(!store
        .put_chunk_verified(id, &enc, data.len() as u32)
        .unwrap());
    assert!(!store.put_chunk(id, &enc).unwrap());
    assert_eq!(store.read_chunk(id).unwrap(), data);
    assert_eq!(store.chunk_info(id).unwrap().unwrap().len, 9000);
    assert!(store.has_chunks(&[id]).unwrap()[0]);
    // Bad lengths are refused without storing anything.
    let id2 = ChunkId(Hash::of(b"x"));
    assert!(store.put_chunk_verified(id2, &[], 1).is_err());
    assert!(store.put_chunk_verified(id2, &enc, 1 << 30).is_err());
    assert!(!store.has_chunks(&[id2]).unwrap()[0]);
}
