//! What keeps bytes alive in a gc (`GcReport::kept_by`) and dropping a peer's ref
//! (`Store::drop_peer_ref`): a stale `peers/<device>` ref must not pin deleted bytes unseen.

use crate::common::*;
use left_store::*;
use std::fs;
use std::path::Path;

/// A device id as the `left` binary writes it in `peers/<device>` (any bare name works here).
const DEV: &str = "eirceircei";
const BIG: usize = 4 << 20;

fn root<'a>(r: &'a GcReport, name: &str) -> Option<&'a GcRoot> {
    r.kept_by.iter().find(|k| k.name == name)
}

fn restores(store: &Store, snap: NodeId, expected: &Path, out: &Path) {
    store
        .restore(snap, None, out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    for e in fs::read_dir(expected).unwrap() {
        let e = e.unwrap();
        if e.file_name() == ".left" {
            continue;
        }
        assert_eq!(
            fs::read(e.path()).unwrap(),
            fs::read(out.join(e.file_name())).unwrap(),
            "{:?}",
            e.file_name()
        );
    }
}

/// A peer's last snapshot holds a big file head deleted; with `keep_last 1` only the peer's ref
/// keeps it, and the report says so. Dropping the ref frees it at the next gc.
#[test]
fn a_peer_ref_pins_a_file_head_deleted_until_it_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("keep"), rand_bytes(1, 50_000)).unwrap();
    fs::write(share.join("big"), rand_bytes(2, BIG)).unwrap();
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    let s1 = add(&store, &share).snapshot.unwrap();
    store.set_ref(&format!("peers/{DEV}"), s1).unwrap();
    fs::remove_file(share.join("big")).unwrap();
    let s2 = add(&store, &share).snapshot.unwrap();

    let r = store
        .gc(&GcOptions { keep_last: Some(1) }, &NoProgress)
        .unwrap();
    assert_eq!(
        r.chunks_removed, 0,
        "the peer's ref keeps the big file: {r:?}"
    );
    let peer = root(&r, &format!("peers/{DEV}")).unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(peer.snapshot, Some(s1));
    assert_eq!(peer.snapshots, 1, "its own snapshot (also the merge base)");
    assert!(
        peer.only_bytes >= BIG as u64 * 9 / 10 && peer.only_chunks > 100,
        "the big file is what only the peer's ref holds: {peer:?}"
    );
    let head = root(&r, "head").unwrap();
    assert_eq!((head.snapshot, head.snapshots), (Some(s2), 1), "{head:?}");
    assert_eq!(head.only_bytes, 0, "keep is in both trees: {head:?}");
    assert_eq!(r.kept_by[0].name, "head", "head comes first: {r:?}");
    assert!(
        root(&r, "retention").is_none(),
        "keep_last 1 keeps only head's own tree"
    );
    // Asked again, gc says the same (the report is about what stays).
    let again = store
        .gc(&GcOptions { keep_last: Some(1) }, &NoProgress)
        .unwrap();
    assert_eq!(again.kept_by, r.kept_by);

    assert_eq!(store.drop_peer_ref(DEV).unwrap(), Some(s1));
    assert_eq!(store.drop_peer_ref(DEV).unwrap(), None, "already gone");
    assert!(store.refs().unwrap().iter().all(|(n, _)| n == "head"));
    let r = store
        .gc(&GcOptions { keep_last: Some(1) }, &NoProgress)
        .unwrap();
    assert!(r.chunks_removed > 100, "{r:?}");
    assert!(
        r.bytes_after + (BIG as u64 / 2) < r.bytes_before,
        "the disk got the big file back: {r:?}"
    );
    assert!(r.kept_by.iter().all(|k| k.name == "head"), "{r:?}");
    assert!(store.is_shallow(s1).unwrap());
    assert!(store.verify(&NoProgress).unwrap().problems.is_empty());
    restores(&store, s2, &share, &tmp.path().join("out"));
}

/// Without a retention rule every tree any ref reaches is kept: a peer's snapshot that head
/// never merged keeps its files, reported as that ref's alone; dropping the ref frees them.
#[test]
fn an_unmerged_peer_snapshot_is_reported_and_freed_once_its_ref_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    fs::create_dir_all(&ours).unwrap();
    fs::create_dir_all(&theirs).unwrap();
    fs::write(ours.join("mine"), rand_bytes(3, 30_000)).unwrap();
    fs::write(theirs.join("theirs-big"), rand_bytes(4, BIG)).unwrap();
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    let q = add(&store, &ours).snapshot.unwrap();
    // The peer's snapshot descends from ours; head stays at ours.
    let p = add(&store, &theirs).snapshot.unwrap();
    store.set_ref(&format!("peers/{DEV}"), p).unwrap();
    store.set_ref("head", q).unwrap();

    let r = store.gc(&GcOptions::default(), &NoProgress).unwrap();
    assert_eq!((r.chunks_removed, r.nodes_removed), (0, 0), "{r:?}");
    let peer = root(&r, &format!("peers/{DEV}")).unwrap();
    assert_eq!(
        peer.snapshots, 2,
        "its snapshot and ours below it: {peer:?}"
    );
    assert!(peer.only_bytes >= BIG as u64 * 9 / 10, "{peer:?}");
    let head = root(&r, "head").unwrap();
    assert_eq!(head.snapshots, 1, "{head:?}");
    assert_eq!(head.only_bytes, 0, "ours is reached by both refs: {head:?}");

    // Only peers/ refs can be dropped, never head.
    for bad in ["", "../head", "x/y"] {
        assert!(
            matches!(store.drop_peer_ref(bad), Err(Error::Invalid(_))),
            "{bad:?}"
        );
    }
    assert_eq!(store.head().unwrap(), Some(q));
    assert_eq!(store.drop_peer_ref(DEV).unwrap(), Some(p));
    let r = store.gc(&GcOptions::default(), &NoProgress).unwrap();
    assert!(r.chunks_removed > 100, "{r:?}");
    assert!(r.bytes_after + (BIG as u64 / 2) < r.bytes_before, "{r:?}");
    let head = root(&r, "head").unwrap();
    assert!(
        head.only_bytes >= 30_000 / 2,
        "ours is head's alone now: {head:?}"
    );
    assert!(store.verify(&NoProgress).unwrap().problems.is_empty());
    restores(&store, q, &ours, &tmp.path().join("out"));
}

/// Retention beyond the refs' own trees is its own root: with `keep_last 2` the snapshot before
/// head is kept by the rule, and what only it holds is reported as the rule's.
#[test]
fn retention_is_reported_as_a_root() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("f"), rand_bytes(5, 200_000)).unwrap();
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    add(&store, &share);
    fs::write(share.join("f"), rand_bytes(6, 200_000)).unwrap();
    add(&store, &share);
    let r = store
        .gc(&GcOptions { keep_last: Some(2) }, &NoProgress)
        .unwrap();
    let rule = root(&r, "retention").unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!((rule.snapshot, rule.snapshots), (None, 1), "{rule:?}");
    assert!(
        rule.only_bytes >= 150_000,
        "the first version is the rule's: {rule:?}"
    );
    let head = root(&r, "head").unwrap();
    assert_eq!(head.snapshots, 1);
    assert!(head.only_bytes >= 150_000, "{head:?}");
}
