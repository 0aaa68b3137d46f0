//! A changed file whose previous cuts are being reused, and which changes again while it is read,
//! is read again from the start (reusing from scratch) and stored whole and exactly as a full
//! FastCDC pass cuts it. Uses the reader's test hook
//! (`common::with_read_hook`: only on this test's share, one hook user at a time).

use crate::common::*;
use left_store::chunker::{cut_all, ChunkSizes};
use left_store::*;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// During the first read attempt of "f": overwrite a few bytes near its end (same size).
fn poke(path: &Path, attempt: usize) {
    if hooked(path) && path.file_name().unwrap() == "f" && attempt == 0 {
        let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
        let len = f.metadata().unwrap().len();
        f.seek(SeekFrom::Start(len - 5000)).unwrap();
        f.write_all(&rand_bytes(99, 64)).unwrap();
        f.sync_all().unwrap();
    }
}

#[test]
fn a_file_changing_while_its_cuts_are_reused_is_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir(&share).unwrap();
    let cfg = small_cfg();
    let sizes = ChunkSizes {
        min: cfg.chunk_min,
        avg: cfg.chunk_avg,
        max: cfg.chunk_max,
    };
    let store = Store::create(&tmp.path().join("store"), cfg).unwrap();
    let f = share.join("f");
    let mut data = rand_bytes(1, 3 << 20);
    fs::write(&f, &data).unwrap();
    add(&store, &share);
    data[1 << 20..(1 << 20) + 300].copy_from_slice(&rand_bytes(2, 300));
    fs::write(&f, &data).unwrap();

    let res = with_read_hook(&share, poke, || {
        store.debug_add_with_stats(&share, &[], &AddOptions::default(), &NoProgress)
    });
    let (r, stats) = res.unwrap();
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    // Read twice: the first attempt saw the change.
    assert_eq!(r.bytes_read, 2 * data.len() as u64);
    assert!(stats.bytes_cut_reused > data.len() as u64, "{stats:?}");
    let now = fs::read(&f).unwrap();
    assert_ne!(now, data);
    let snap = r.snapshot.unwrap();
    let mut want = Vec::new();
    let mut pos = 0;
    for len in cut_all(&now, sizes) {
        want.push(ChunkId(Hash::of(&now[pos..pos + len])));
        pos += len;
    }
    assert_eq!(store.debug_file_chunks(snap, Path::new("f")).unwrap(), want);
    let out = tmp.path().join("out");
    store
        .restore(snap, None, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(fs::read(out.join("f")).unwrap(), now);
}
