//! `AddOptions::settle_ns`: a file modified just now is taken as still being written and is not
//! snapshotted yet; it keeps its previous version, or stays out when it is new.

use crate::common::*;
use left_store::*;
use std::fs;

fn store_for(share: &std::path::Path, dir: &std::path::Path) -> Store {
    let mut cfg = small_cfg();
    cfg.share_root = Some(share.to_path_buf());
    Store::create(dir, cfg).unwrap()
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// The names at the top of a snapshot.
fn names(store: &Store, snapshot: NodeId) -> Vec<std::ffi::OsString> {
    store
        .ls(snapshot, std::path::Path::new(""))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

#[test]
fn files_still_being_written_wait_for_a_later_add() {
    let tmp = tempfile::tempdir().unwrap();
    let share = fs::canonicalize(tmp.path()).unwrap().join("share");
    fs::create_dir(&share).unwrap();
    let store = store_for(&share, &tmp.path().join("store"));
    let settle = AddOptions {
        settle_ns: 5_000_000_000,
        ..AddOptions::default()
    };
    let old = now_ns() - 60_000_000_000;
    fs::write(share.join("done.txt"), b"finished long ago").unwrap();
    set_mtime(&share.join("done.txt"), old);
    fs::write(share.join("growing.log"), b"first half").unwrap();
    let r = store.add(&share, &[], &settle, &NoProgress).unwrap();
    assert_eq!(r.unsettled, vec![std::path::PathBuf::from("growing.log")]);
    assert_eq!(r.files, 1);
    let head = r.snapshot.unwrap();
    assert_eq!(
        names(&store, head),
        vec![std::ffi::OsString::from("done.txt")],
        "the new file stays out"
    );

    // It was snapshotted once, then is being rewritten: the snapshot keeps its old version.
    set_mtime(&share.join("growing.log"), old);
    let r = store.add(&share, &[], &settle, &NoProgress).unwrap();
    assert!(r.unsettled.is_empty());
    let first = r.snapshot.unwrap();
    fs::write(share.join("growing.log"), b"first half, second half").unwrap();
    let r = store.add(&share, &[], &settle, &NoProgress).unwrap();
    assert_eq!(r.unsettled.len(), 1);
    assert!(r.snapshot.is_none(), "nothing settled changed: no snapshot");
    assert_eq!(store.head().unwrap(), Some(first));

    // Settled (older than the wait): snapshotted. Without the wait (`left add`): at once.
    let r = store
        .add(&share, &[], &AddOptions::default(), &NoProgress)
        .unwrap();
    assert!(r.unsettled.is_empty());
    let out = tmp.path().join("out");
    store
        .restore(
            r.snapshot.unwrap(),
            Some(std::path::Path::new("growing.log")),
            &out,
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(
        fs::read(out.join("growing.log")).unwrap(),
        b"first half, second half"
    );

    // A timestamp far in the future is not a write in progress.
    fs::write(
        share.join("future.txt"),
        b"from a camera with a wrong clock",
    )
    .unwrap();
    set_mtime(&share.join("future.txt"), now_ns() + 3_600_000_000_000);
    let r = store.add(&share, &[], &settle, &NoProgress).unwrap();
    assert!(
        !r.unsettled
            .contains(&std::path::PathBuf::from("future.txt")),
        "{:?}",
        r.unsettled
    );
    assert!(names(&store, r.snapshot.unwrap()).contains(&std::ffi::OsString::from("future.txt")));
}
