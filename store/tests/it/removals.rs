//! `Store::removals`, the measure the deletion guard holds on: deleted files count whole, a
//! replaced file counts only the bytes of its old chunks the new version lacks, metadata-only
//! changes and additions count nothing, and paths changed on our side since the base are ours.

use crate::common::*;
use left_store::*;
use std::fs;
use std::path::Path;

fn write(share: &Path, rel: &str, data: &[u8]) {
    let p = share.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

#[test]
fn deletions_count_whole_edits_count_the_chunks_they_change_and_metadata_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("store"), small_cfg()).unwrap();
    let share = dir.path().join("share");
    let big = rand_bytes(7, 1 << 20); // about 256 chunks of 4 KiB on average
    write(&share, "big.bin", &big);
    for i in 0..4 {
        write(&share, &format!("docs/{i}.txt"), &rand_bytes(100 + i, 3000));
    }
    write(&share, "touched.txt", b"same bytes, new time");
    let base = add_msg(&store, &share, "base").unwrap();

    // 4 KiB overwritten in the middle of the big file, two files deleted, one touched, one added.
    let mut edited = big.clone();
    edited[500_000..504_096].copy_from_slice(&rand_bytes(9, 4096));
    write(&share, "big.bin", &edited);
    fs::remove_file(share.join("docs/0.txt")).unwrap();
    fs::remove_file(share.join("docs/1.txt")).unwrap();
    set_mtime(&share.join("touched.txt"), 1_000_000_000);
    write(&share, "new.txt", b"added");
    let to = add_msg(&store, &share, "edit").unwrap();

    let r = store.removals(base, base, to).unwrap();
    assert_eq!((r.deleted_files, r.deleted_bytes), (2, 6000), "{r:?}");
    assert_eq!(r.replaced_files, 1, "only big.bin's content changed: {r:?}");
    assert!(
        r.replaced_bytes > 0 && r.replaced_bytes < 64 << 10,
        "a 4 KiB edit loses a few chunks, not the 1 MiB file: {r:?}"
    );
    assert_eq!(r.top.first().map(|t| t.1), Some(2), "docs/ first: {r:?}");

    // The same edit, measured from a side that already changed big.bin itself: ours to decide.
    fs::write(share.join("big.bin"), b"ours").unwrap();
    let ours = add_msg(&store, &share, "ours").unwrap();
    let r2 = store.removals(base, ours, to).unwrap();
    assert_eq!(r2.replaced_files, 0, "{r2:?}");

    // The big file zeroed: every old chunk is gone, so its whole size counts.
    fs::write(share.join("big.bin"), vec![0u8; big.len()]).unwrap();
    let zeroed = add_msg(&store, &share, "zeroed").unwrap();
    let r3 = store.removals(base, base, zeroed).unwrap();
    assert_eq!(r3.replaced_bytes, big.len() as u64, "{r3:?}");
    let (files, bytes) = store.tree_totals(zeroed).unwrap();
    assert_eq!(files, 5, "big, docs/2, docs/3, touched, new");
    assert_eq!(bytes, big.len() as u64 + 6000 + 20 + 5);
}
