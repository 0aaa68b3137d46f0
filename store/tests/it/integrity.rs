//! Bad input and failure: fault hooks (disk full, crash), corrupt chunks, the store lock, gc, and the
//! sync object API (missing/diff against a plain set difference).

use crate::common::*;
use left_store::node::{Child, Node};
use left_store::*;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn opts() -> AddOptions {
    AddOptions {
        message: "m".into(),
        ..Default::default()
    }
}

/// Child side of the fault tests: runs one add under LEFT_FAULT and reports how it ended.
#[test]
fn fault_child() {
    let Ok(dir) = std::env::var("LEFT_TEST_CHILD_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = Store::open(&dir.join("store")).unwrap();
    match store.add(&dir.join("share"), &[], &opts(), &NoProgress) {
        Ok(r) => println!("CHILD-OK {:?}", r.snapshot),
        Err(Error::DiskFull { .. }) => println!("CHILD-DISKFULL"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn run_child(dir: &Path, fault: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "integrity::fault_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LEFT_TEST_CHILD_DIR", dir)
        .env("LEFT_FAULT", fault)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Store with one snapshot, then a second version of the share waiting to be added.
fn two_versions(dir: &Path) -> NodeId {
    let share = dir.join("share");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("one"), rand_bytes(1, 100_000)).unwrap();
    let store = Store::create(&dir.join("store"), small_cfg()).unwrap();
    let s1 = add(&store, &share).snapshot.unwrap();
    // 20 MiB of new data: several pipeline batches, so faults land mid-add.
    fs::write(share.join("big"), rand_bytes(2, 20 << 20)).unwrap();
    fs::create_dir_all(share.join("d/e")).unwrap();
    fs::write(share.join("d/e/f"), b"f").unwrap();
    s1
}

fn check_after_fault(dir: &Path, s1: NodeId, status: &str) -> Store {
    let store = Store::open(&dir.join("store")).unwrap();
    let head = store.head().unwrap();
    let v = store.verify(&NoProgress).unwrap();
    assert!(
        v.problems.is_empty(),
        "{status}: verify found {:?}",
        v.problems
    );
    if status.contains("CHILD-OK") {
        assert_ne!(head, Some(s1));
    } else {
        assert_eq!(head, Some(s1), "{status}: head moved after a failed add");
    }
    store
}

#[test]
fn disk_full_keeps_head_and_verify_clean() {
    for n in [1, 2, 3, 5] {
        let tmp = tempfile::tempdir().unwrap();
        let s1 = two_versions(tmp.path());
        let (st, out) = run_child(tmp.path(), &format!("fail-write:{n}"));
        assert!(st.success(), "child failed: {out}");
        assert!(out.contains("CHILD-DISKFULL"), "fail-write:{n}: {out}");
        let store = check_after_fault(tmp.path(), s1, &out);
        // The next add works and reuses what was written.
        let r = add(&store, &tmp.path().join("share"));
        assert!(r.snapshot.is_some());
        assert!(store.verify(&NoProgress).unwrap().problems.is_empty());
    }
}

#[test]
fn crash_mid_add_leaves_store_usable_and_chunks_reused() {
    for n in [1, 2, 3, 4, 6] {
        let tmp = tempfile::tempdir().unwrap();
        let s1 = two_versions(tmp.path());
        let (st, out) = run_child(tmp.path(), &format!("abort-write:{n}"));
        let status = if st.success() {
            out.clone()
        } else {
            "CRASHED".to_string()
        };
        let store = check_after_fault(tmp.path(), s1, &status);
        let r = add(&store, &tmp.path().join("share"));
        if !st.success() {
            assert!(r.snapshot.is_some(), "abort-write:{n}");
            // Batches before the crash were kept: from the second write on, some data is reused.
            if n >= 3 {
                assert!(
                    r.bytes_new < 20 << 20,
                    "abort-write:{n}: nothing reused ({} new)",
                    r.bytes_new
                );
            }
        }
        assert!(store.verify(&NoProgress).unwrap().problems.is_empty());
        let out_dir = tmp.path().join("out");
        store
            .restore(
                store.head().unwrap().unwrap(),
                None,
                &out_dir,
                &RestoreOptions::default(),
                &NoProgress,
            )
            .unwrap();
        assert_eq!(
            fs::read(out_dir.join("big")).unwrap(),
            rand_bytes(2, 20 << 20)
        );
    }
}

#[test]
fn corrupt_chunk_found_by_verify_and_refused_by_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(share.join("sub")).unwrap();
    fs::write(share.join("sub/file"), rand_bytes(9, 300_000)).unwrap();
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    let s = add(&store, &share).snapshot.unwrap();
    let chunks = store.debug_file_chunks(s, Path::new("sub/file")).unwrap();
    assert!(chunks.len() > 3);
    store.debug_corrupt_chunk(chunks[2]).unwrap();
    let v = store.verify(&NoProgress).unwrap();
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    let p = &v.problems[0];
    assert_eq!(
        (p.object, p.kind, p.id),
        (ObjectKind::Chunk, ProblemKind::Corrupt, chunks[2].0)
    );
    assert_eq!(p.paths, vec![PathBuf::from("sub/file")]);
    let out = tmp.path().join("out");
    let e = store
        .restore(s, None, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&chunks[2].to_string()), "{e}");
    // No file with wrong bytes, no temp file left behind.
    let left: Vec<_> = fs::read_dir(out.join("sub")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // A missing chunk is reported as missing.
    store.debug_delete_chunk(chunks[0]).unwrap();
    let v = store.verify(&NoProgress).unwrap();
    assert!(v
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::Missing && p.id == chunks[0].0));
}

#[test]
fn corrupt_node_found_by_verify_and_refused_by_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(share.join("sub")).unwrap();
    fs::write(share.join("sub/file"), rand_bytes(9, 1000)).unwrap();
    fs::write(share.join("other"), b"fine").unwrap();
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    let s = add(&store, &share).snapshot.unwrap();
    let file_node = store.ls(s, Path::new("sub/file")).unwrap()[0].id;
    store.debug_corrupt_node(file_node).unwrap();
    let v = store.verify(&NoProgress).unwrap();
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    let p = &v.problems[0];
    assert_eq!(
        (p.object, p.kind, p.id),
        (ObjectKind::Node, ProblemKind::Corrupt, file_node.0)
    );
    assert_eq!(p.paths, vec![PathBuf::from("sub/file")]);
    let e = store
        .restore(
            s,
            None,
            &tmp.path().join("out"),
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&file_node.to_string()), "{e}");
    assert!(!tmp.path().join("out/sub/file").exists());
}

#[test]
fn second_open_is_locked_with_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(&tmp.path().join("s"), StoreConfig::default()).unwrap();
    match Store::open(&tmp.path().join("s")) {
        Err(Error::Locked { pid }) => assert_eq!(pid, std::process::id()),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("second open succeeded"),
    }
    drop(store);
    Store::open(&tmp.path().join("s")).unwrap();
    assert!(matches!(
        Store::open(&tmp.path().join("nothing")),
        Err(Error::NotAStore { .. })
    ));
    assert!(matches!(
        Store::create(&tmp.path().join("s"), StoreConfig::default()),
        Err(Error::AlreadyExists { .. })
    ));
    let e = Store::open(&tmp.path().join("nothing"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("no left store at"), "{e}");
}

#[test]
fn gc_shrinks_disk_and_keeps_what_is_reachable() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("keep"), rand_bytes(5, 50_000)).unwrap();
    fs::write(share.join("big"), rand_bytes(6, 24 << 20)).unwrap();
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    let s1 = add(&store, &share).snapshot.unwrap();
    fs::remove_file(share.join("big")).unwrap();
    let s2 = add(&store, &share).snapshot.unwrap();
    // Plain gc: everything is reachable, nothing removed.
    let r = store.gc(&GcOptions::default(), &NoProgress).unwrap();
    assert_eq!((r.chunks_removed, r.nodes_removed), (0, 0));
    // Keep only the last snapshot's tree: the big file's chunks go, and the disk shrinks.
    let r = store
        .gc(&GcOptions { keep_last: Some(1) }, &NoProgress)
        .unwrap();
    assert!(r.chunks_removed > 100, "{r:?}");
    assert!(r.bytes_after + (16 << 20) < r.bytes_before, "{r:?}");
    assert!(store.disk_usage().unwrap() + (16 << 20) < r.bytes_before);
    let v = store.verify(&NoProgress).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(
        store.log(s2, 10).unwrap().len(),
        2,
        "snapshot nodes are kept"
    );
    assert!(matches!(
        store.ls(s1, Path::new("")),
        Err(Error::NotFound { .. })
    ));
    let out = tmp.path().join("out");
    store
        .restore(s2, None, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(fs::read(out.join("keep")).unwrap(), rand_bytes(5, 50_000));
}

#[test]
fn gc_with_nothing_to_drop_does_not_grow_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("f"), rand_bytes(9, 200_000)).unwrap();
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    add(&store, &share);
    fs::write(share.join("f"), rand_bytes(10, 200_000)).unwrap();
    add(&store, &share);
    for _ in 0..2 {
        let r = store.gc(&GcOptions::default(), &NoProgress).unwrap();
        assert_eq!((r.chunks_removed, r.nodes_removed), (0, 0));
        assert!(r.bytes_after <= r.bytes_before, "{r:?}");
    }
    assert!(store.verify(&NoProgress).unwrap().problems.is_empty());
}

fn reach(store: &Store, root: NodeId) -> HashSet<ObjectId> {
    let mut out = HashSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !out.insert(ObjectId::Node(id)) {
            continue;
        }
        for c in store.read_node(id).unwrap().children() {
            match c {
                Child::Node(n) => stack.push(n),
                Child::Chunk(c, _) => {
                    out.insert(ObjectId::Chunk(c));
                }
            }
        }
    }
    out
}

fn copy(from: &Store, to: &Store, id: ObjectId) {
    match id {
        ObjectId::Chunk(c) => {
            to.put_chunk(c, &from.get_chunk(c).unwrap().unwrap())
                .unwrap();
        }
        ObjectId::Node(n) => {
            to.put_node(n, &from.get_node(n).unwrap().unwrap()).unwrap();
        }
    }
}

#[test]
fn missing_and_diff_match_set_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(share.join("x/y")).unwrap();
    let big = rand_bytes(7, 3 << 20);
    fs::write(share.join("x/big"), &big).unwrap();
    for i in 0..300 {
        fs::write(share.join(format!("x/y/f{i}")), rand_bytes(100 + i, 500)).unwrap();
    }
    let a = Store::create(&tmp.path().join("a"), small_cfg()).unwrap();
    let s1 = add(&a, &share).snapshot.unwrap();
    // Edit in place, add a file, delete one.
    let mut big2 = big.clone();
    big2[1_500_000..1_500_100].copy_from_slice(&[1u8; 100]);
    fs::write(share.join("x/big"), &big2).unwrap();
    fs::write(share.join("x/y/new"), b"new file").unwrap();
    fs::remove_file(share.join("x/y/f7")).unwrap();
    let s2 = add(&a, &share).snapshot.unwrap();
    let r1 = reach(&a, s1);
    let r2 = reach(&a, s2);
    let expected: HashSet<ObjectId> = r2.difference(&r1).copied().collect();
    assert!(
        expected.len() < 40,
        "an edit changes few objects: {}",
        expected.len()
    );

    let mut got = HashSet::new();
    let mut max_batch = 0;
    a.diff(s1, s2, 5, &mut |b| {
        max_batch = max_batch.max(b.len());
        got.extend(b.iter().copied());
        Ok(())
    })
    .unwrap();
    assert!(max_batch <= 5);
    assert_eq!(got, expected);

    // Store b holds s1 (copied bottom-up so marks are set); missing(s2) streams what it lacks.
    let b = Store::create(&tmp.path().join("b"), small_cfg()).unwrap();
    let mut order: Vec<ObjectId> = r1.iter().copied().collect();
    order.sort_by_key(|o| matches!(o, ObjectId::Node(_))); // chunks first
    for o in &order {
        if let ObjectId::Chunk(_) = o {
            copy(&a, &b, *o);
        }
    }
    assert!(
        b.mark_complete(s1).unwrap() || {
            for o in &order {
                copy(&a, &b, *o);
            }
            b.mark_complete(s1).unwrap()
        }
    );
    let mut fetched = HashSet::new();
    loop {
        let mut round = Vec::new();
        b.missing(s2, 7, &mut |ids| {
            assert!(ids.len() <= 7);
            round.extend_from_slice(ids);
            Ok(())
        })
        .unwrap();
        if round.is_empty() {
            break;
        }
        for id in round {
            assert!(fetched.insert(id), "{id:?} reported twice");
            copy(&a, &b, id);
        }
    }
    assert_eq!(fetched, expected);
    assert!(b.mark_complete(s2).unwrap());
    b.set_ref("head", s2).unwrap();
    assert!(b.verify(&NoProgress).unwrap().problems.is_empty());
    // A merge-like snapshot over a complete tree can be written and referenced.
    let m = b
        .put_snapshot(&Snapshot {
            root: b.snapshot(s2).unwrap().root,
            parents: vec![s2, s1],
            device: [7; 32],
            time_ns: 5,
            message: "merge".into(),
        })
        .unwrap();
    b.set_ref("head", m).unwrap();
    assert_eq!(b.log(m, 10).unwrap().len(), 3);
    assert!(b
        .put_snapshot(&Snapshot {
            root: NodeId(Hash::of(b"nope")),
            parents: vec![],
            device: [0; 32],
            time_ns: 0,
            message: String::new()
        })
        .is_err());
    // Bad objects are refused.
    let n = a.get_node(s2).unwrap().unwrap();
    assert!(b.put_node(s1, &n).is_err());
    let node = Node::decode(&n).unwrap();
    assert!(matches!(node, Node::Snapshot(_)));
}

/// Every id `missing` reports under `root`.
fn missing_set(store: &Store, root: NodeId) -> HashSet<ObjectId> {
    let mut out = HashSet::new();
    store
        .missing(root, 64, &mut |ids| {
            out.extend(ids.iter().copied());
            Ok(())
        })
        .unwrap();
    out
}

#[test]
fn repair_plan_reaches_damaged_objects_and_verified_copies_fix_them() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(share.join("sub")).unwrap();
    fs::write(share.join("sub/file"), rand_bytes(9, 300_000)).unwrap();
    fs::write(share.join("other"), b"fine").unwrap();
    // A second store of the same folder holds the same chunks and file nodes: the "peer".
    let good = Store::create(&tmp.path().join("good"), small_cfg()).unwrap();
    add(&good, &share);
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    let s1 = add(&store, &share).snapshot.unwrap();
    fs::write(share.join("extra"), b"x").unwrap();
    let s2 = add(&store, &share).snapshot.unwrap();
    let chunks = store.debug_file_chunks(s1, Path::new("sub/file")).unwrap();
    assert!(chunks.len() > 4);
    let other = store.ls(s1, Path::new("other")).unwrap()[0].id;
    store.debug_corrupt_chunk(chunks[1]).unwrap();
    store.debug_delete_chunk(chunks[3]).unwrap();
    store.debug_corrupt_node(other).unwrap();
    // The marks above them still claim completeness: a fetch would skip the damage.
    assert!(missing_set(&store, s2).is_empty());

    let v = store.verify(&NoProgress).unwrap();
    assert_eq!(v.problems.len(), 3, "{:?}", v.problems);
    let plan = store.repair_plan(&v.problems).unwrap();
    assert_eq!(plan.snapshots, vec![s2, s1], "newest first");
    assert!(
        plan.headers.is_empty() && plan.unfixable.is_empty(),
        "{plan:?}"
    );
    let damaged: HashSet<ObjectId> = [
        ObjectId::Chunk(chunks[1]),
        ObjectId::Chunk(chunks[3]),
        ObjectId::Node(other),
    ]
    .into();
    assert_eq!(plan.remove.iter().copied().collect::<HashSet<_>>(), damaged);
    // Planning changes nothing.
    assert_eq!(store.verify(&NoProgress).unwrap().problems, v.problems);
    // Two snapshots, their root folders, `sub`, `sub/file`'s node and its chunk list, and the
    // damaged node itself; nothing else.
    assert_eq!(plan.marks_cleared(), 8, "{plan:?}");

    store.apply_repair_plan(&plan).unwrap();
    assert!(!store.has_nodes(&[s1, s2]).unwrap().into_iter().any(|c| c));
    assert_eq!(missing_set(&store, s2), damaged);
    assert_eq!(missing_set(&store, s1), damaged);
    // Verified copies from the good store, as a fetch stores them; then the marks come back.
    for id in &damaged {
        match *id {
            ObjectId::Chunk(c) => {
                assert!(store
                    .put_chunk(c, &good.get_chunk(c).unwrap().unwrap())
                    .unwrap())
            }
            ObjectId::Node(n) => {
                assert!(store
                    .put_node(n, &good.get_node(n).unwrap().unwrap())
                    .unwrap())
            }
        }
    }
    assert!(store.mark_complete(s2).unwrap());
    assert!(store.mark_complete(s1).unwrap());
    assert!(store.verify(&NoProgress).unwrap().problems.is_empty());
    let out = tmp.path().join("out");
    store
        .restore(s1, None, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(
        fs::read(out.join("sub/file")).unwrap(),
        rand_bytes(9, 300_000)
    );
    // Nothing left to plan.
    assert!(store.repair_plan(&[]).unwrap().is_empty());

    // Damage again, and let `add` repair from the share folder, which still holds the files: with
    // the marks and the removed file node's scan-cache record gone, it reads both files again
    // instead of reusing their nodes, and stores what is missing.
    store.debug_delete_chunk(chunks[2]).unwrap();
    store.debug_corrupt_node(other).unwrap();
    let v = store.verify(&NoProgress).unwrap();
    assert_eq!(v.problems.len(), 2, "{:?}", v.problems);
    let plan = store.repair_plan(&v.problems).unwrap();
    store.apply_repair_plan(&plan).unwrap();
    add(&store, &share);
    for s in plan.snapshots {
        assert!(store.mark_complete(s).unwrap());
    }
    assert!(store.verify(&NoProgress).unwrap().problems.is_empty());
}
