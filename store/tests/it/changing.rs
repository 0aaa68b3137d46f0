//! A file that changes while it is read is re-read, and skipped (with a reason) when it never holds
//! still; it is never stored torn. Uses the reader's test hook
//! (`common::with_read_hook`: only on this test's share, one hook user at a time).

use crate::common::*;
use left_store::*;
use std::fs;
use std::io::Write;
use std::path::Path;

fn grow(path: &Path, attempt: usize) {
    if !hooked(path) {
        return;
    }
    let name = path.file_name().unwrap().to_str().unwrap();
    // "flaky" changes during its first two reads only; "restless" during every read.
    if (name == "flaky" && attempt < 2) || name == "restless" {
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b"more").unwrap();
        f.sync_all().unwrap();
    }
}

#[test]
fn changing_files_are_reread_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("flaky"), rand_bytes(1, 300_000)).unwrap();
    fs::write(share.join("restless"), rand_bytes(2, 300_000)).unwrap();
    fs::write(share.join("calm"), rand_bytes(3, 300_000)).unwrap();
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    let r = with_read_hook(&share, grow, || add(&store, &share));
    let snap = r.snapshot.expect("snapshot made despite the skipped file");
    assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
    assert_eq!(r.skipped[0].path, Path::new("restless"));
    assert!(r.skipped[0].reason.contains("changed while being read"));
    assert_eq!(r.files, 2);
    // The stored "flaky" is its final, whole content: 2 appends happened before the good read.
    let out = tmp.path().join("out");
    store
        .restore(snap, None, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    let flaky = fs::read(share.join("flaky")).unwrap();
    assert_eq!(flaky.len(), 300_008);
    assert_eq!(fs::read(out.join("flaky")).unwrap(), flaky);
    assert!(!out.join("restless").exists());
    // Read 3 times flaky, 4 times restless (1 + 3 re-reads), once calm (first blocks at least).
    assert!(
        r.bytes_read >= 3 * 300_000 + 4 * 300_000 + 300_000,
        "{}",
        r.bytes_read
    );

    // Once stored, a file that is skipped for changing keeps its previous version in the snapshot.
    let s2 = add(&store, &share).snapshot.unwrap();
    let stored = fs::read(share.join("restless")).unwrap();
    fs::write(share.join("restless"), rand_bytes(4, 200_000)).unwrap();
    fs::write(share.join("calm"), rand_bytes(5, 1000)).unwrap();
    let r3 = with_read_hook(&share, grow, || add(&store, &share));
    assert_eq!(r3.skipped.len(), 1, "{:?}", r3.skipped);
    let s3 = r3.snapshot.unwrap();
    let e2 = store.ls(s2, Path::new("restless")).unwrap();
    assert_eq!(store.ls(s3, Path::new("restless")).unwrap(), e2);
    let out = tmp.path().join("out3");
    store
        .restore(s3, None, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(fs::read(out.join("restless")).unwrap(), stored);
    assert_eq!(fs::read(out.join("calm")).unwrap(), rand_bytes(5, 1000));
}
