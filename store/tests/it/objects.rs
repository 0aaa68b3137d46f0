//! The store pieces the sync engine uses beside a checkout: `is_ancestor`, `open_read_only`
//! beside an open store (and while its writer flushes), `put_chunk_verified` and its batch form.

use crate::common::*;
use left_store::*;
use std::fs;
use std::path::Path;

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

/// The writer keeps adding (each add flushes, so WAL files come and go) while readers open the
/// store read-only over and over: every open succeeds and sees a head whose snapshot it can read.
/// CI once saw a read-only open fail because a WAL file vanished between RocksDB's listing and its
/// stat of that file.
#[test]
fn read_only_opens_while_the_writer_flushes() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    fs::create_dir_all(&share).unwrap();
    let dir = t.path().join("store");
    let store = Store::create(&dir, small_cfg()).unwrap();
    fs::write(share.join("f"), rand_bytes(0, 20_000)).unwrap();
    add_msg(&store, &share, "0").unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 1..60u64 {
                fs::write(share.join("f"), rand_bytes(i, 20_000 + i as usize)).unwrap();
                fs::write(
                    share.join(format!("g{}", i % 7)),
                    rand_bytes(i + 1000, 3000),
                )
                .unwrap();
                add_msg(&store, &share, "w").unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut opens = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || opens < 20 {
            let ro = Store::open_read_only(&dir).unwrap_or_else(|e| panic!("open {opens}: {e}"));
            let head = ro.head().unwrap().expect("a head");
            assert!(ro.get_node(head).unwrap().is_some(), "open {opens}");
            opens += 1;
        }
    });
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
    // Objects the primary wrote and has not flushed (still in its WAL) are seen by a new reader.
    let data = rand_bytes(77, 5000);
    let cid = ChunkId(Hash::of(&data));
    assert!(store.put_chunk(cid, &codec::encode(&data)).unwrap());
    let ro3 = Store::open_read_only(&dir).unwrap();
    assert_eq!(ro3.read_chunk(cid).unwrap(), data);
    assert!(ro2.read_chunk(cid).is_err());
    drop(ro);
    drop(ro2);
    drop(ro3);
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

#[test]
fn put_chunks_verified_stores_a_batch() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::create(&t.path().join("store"), small_cfg()).unwrap();
    let datas: Vec<Vec<u8>> = (0..5)
        .map(|i| rand_bytes(100 + i, 3000 + i as usize))
        .collect();
    let encs: Vec<Vec<u8>> = datas.iter().map(|d| codec::encode(d)).collect();
    let ids: Vec<ChunkId> = datas.iter().map(|d| ChunkId(Hash::of(d))).collect();
    // One already stored, one repeated within the batch.
    store
        .put_chunk_verified(ids[0], &encs[0], datas[0].len() as u32)
        .unwrap();
    let mut batch: Vec<(ChunkId, &[u8], u32)> = (0..5)
        .map(|i| (ids[i], &encs[i][..], datas[i].len() as u32))
        .collect();
    batch.push((ids[3], &encs[3][..], datas[3].len() as u32));
    assert_eq!(store.put_chunks_verified(&batch).unwrap(), 4);
    for i in 0..5 {
        assert_eq!(store.read_chunk(ids[i]).unwrap(), datas[i]);
        assert_eq!(
            store.chunk_info(ids[i]).unwrap().unwrap().len as usize,
            datas[i].len()
        );
    }
    assert_eq!(store.put_chunks_verified(&batch).unwrap(), 0);
    assert_eq!(store.put_chunks_verified(&[]).unwrap(), 0);
    // A bad length anywhere refuses the whole batch, storing nothing.
    let d = rand_bytes(200, 2000);
    let e = codec::encode(&d);
    let id = ChunkId(Hash::of(&d));
    let bad = [(id, &e[..], d.len() as u32), (ids[4], &[][..], 10)];
    assert!(store.put_chunks_verified(&bad).is_err());
    let bad = [
        (id, &e[..], d.len() as u32),
        (ids[4], &encs[4][..], 1 << 30),
    ];
    assert!(store.put_chunks_verified(&bad).is_err());
    assert!(!store.has_chunks(&[id]).unwrap()[0]);
}
