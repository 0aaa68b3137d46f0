//! Checkout: moving a share folder between snapshots (only changed paths, local changes kept,
//! never through a symlink, journaled and resumed after a crash or power cut).

use crate::common::*;
use left_store::node::{ChunkRef, Content, DirEntry, DirNode, FileNode, Node, Target};
use left_store::*;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------- checkout

/// Copies what `dst` lacks of snapshot `snap` from `src`, as a pull would, and marks it complete.
fn transfer(src: &Store, dst: &Store, snap: NodeId) {
    loop {
        let mut ids = Vec::new();
        dst.missing(snap, 1000, &mut |b| {
            ids.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        if ids.is_empty() {
            break;
        }
        for id in ids {
            match id {
                ObjectId::Node(n) => {
                    dst.put_node(n, &src.get_node(n).unwrap().unwrap()).unwrap();
                }
                ObjectId::Chunk(c) => {
                    let enc = src.get_chunk(c).unwrap().unwrap();
                    let len = src.chunk_info(c).unwrap().unwrap().len;
                    dst.put_chunk_verified(c, &enc, len).unwrap();
                }
            }
        }
    }
    assert!(dst.mark_complete(snap).unwrap());
}

/// Two devices: share A with store A (where changes are made and added), share B with store B
/// (where they are checked out). The stores live outside the shares.
struct Pair {
    t: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    sa: Store,
    sb: Option<Store>,
}

impl Pair {
    fn new() -> Pair {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let sa = Store::create(&t.path().join("sa"), small_cfg()).unwrap();
        let sb = Store::create(&t.path().join("sb"), small_cfg()).unwrap();
        Pair {
            t,
            a,
            b,
            sa,
            sb: Some(sb),
        }
    }

    fn sb(&self) -> &Store {
        self.sb.as_ref().unwrap()
    }

    /// Adds share A (must change) and moves it to store B; returns (B's head, the new snapshot).
    fn add_a(&self) -> (Option<NodeId>, NodeId) {
        let s = add_msg(&self.sa, &self.a, "a").expect("share A changed");
        transfer(&self.sa, self.sb(), s);
        (self.sb().head().unwrap(), s)
    }

    /// Adds share A and checks it out into share B.
    fn sync(&self) -> CheckoutReport {
        self.sync_with(&CheckoutOptions::default())
    }

    fn sync_with(&self, opts: &CheckoutOptions) -> CheckoutReport {
        let (from, to) = self.add_a();
        let r = self
            .sb()
            .checkout(&self.b, from, to, opts, &NoProgress)
            .unwrap();
        assert_eq!(self.sb().head().unwrap(), Some(to));
        assert_eq!(self.sb().pending_checkout().unwrap(), None);
        r
    }

    /// Share B holds exactly what share A holds, and an add in B finds nothing to read or store.
    fn assert_same(&self) {
        assert_eq!(picture(&self.b), picture(&self.a));
        let r = add(self.sb(), &self.b);
        assert_eq!(
            r.bytes_read, 0,
            "the scan cache knows every file checkout wrote"
        );
        assert_eq!(
            r.snapshot, None,
            "the checked-out tree is the snapshot's tree"
        );
    }
}

/// Files staged by a fetch (`CheckoutOptions::staged`) are renamed into place, not written; a
/// staged file whose size is off is ignored and the file written from the store as usual.
#[test]
fn staged_files_are_renamed_into_place() {
    let p = Pair::new();
    fs::write(p.a.join("big"), rand_bytes(7, 3 << 20)).unwrap();
    fs::write(p.a.join("other"), rand_bytes(8, 2 << 20)).unwrap();
    fs::write(p.a.join("small"), b"small").unwrap();
    let (from, to) = p.add_a();
    let node = |name: &str| match p
        .sb()
        .entry_at(to, Path::new(name))
        .unwrap()
        .unwrap()
        .target
    {
        Target::Node(n) => n,
        t => panic!("{t:?}"),
    };
    let stage = p.t.path().join("stage");
    fs::create_dir(&stage).unwrap();
    fs::copy(p.a.join("big"), stage.join("1")).unwrap();
    fs::write(stage.join("2"), rand_bytes(8, 1 << 20)).unwrap();
    let staged_ino = ino(&stage.join("1"));
    let files = [
        (node("big"), (stage.join("1"), 3 << 20)),
        (node("other"), (stage.join("2"), 1 << 20)),
    ]
    .into_iter()
    .collect();
    let staged = std::sync::Arc::new(StagedFiles::new(stage.clone(), files));
    let opts = CheckoutOptions {
        staged: Some(staged.clone()),
        ..Default::default()
    };
    let r = p.sb().checkout(&p.b, from, to, &opts, &NoProgress).unwrap();
    assert_eq!(r.files_staged, 1, "{r:?}");
    assert_eq!(r.files_written, 3, "{r:?}");
    assert_eq!(ino(&p.b.join("big")), staged_ino, "renamed, not copied");
    assert!(!stage.join("1").exists());
    p.assert_same();
    drop(opts);
    drop(staged);
    assert!(
        !stage.exists(),
        "the stage folder goes with the last reference"
    );
}

/// A path the checkout cannot write (a read-only folder; the hook stands in for one, since tests
/// run as root) does not stop the checkout: it is reported and recorded, the rest is written and
/// the head moves. An add does not publish the old bytes as a local change while they are still
/// there, and the next checkout writes the path once it can.
/// The deny hook is global to the process: its tests take turns.
static DENY_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_path_that_cannot_be_written_is_kept_at_the_synced_version_and_tried_again() {
    let _turn = DENY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    fn deny(p: &Path) -> bool {
        p.file_name().is_some_and(|n| n == "locked-by-test.bin")
    }
    let p = Pair::new();
    fs::create_dir(p.a.join("d")).unwrap();
    fs::write(p.a.join("d/locked-by-test.bin"), b"one").unwrap();
    fs::write(p.a.join("f"), b"one").unwrap();
    p.sync();
    p.assert_same();
    fs::write(p.a.join("d/locked-by-test.bin"), b"two two").unwrap();
    fs::write(p.a.join("f"), b"two").unwrap();
    left_store::checkout::debug_set_deny_hook(Some(deny));
    let r = p.sync();
    left_store::checkout::debug_set_deny_hook(None);
    assert_eq!(r.unwritten.len(), 1, "{r:?}");
    assert_eq!(r.unwritten[0].path, Path::new("d/locked-by-test.bin"));
    assert!(r.unwritten[0].reason.contains("denied"), "{r:?}");
    assert!(r.kept.is_empty(), "{r:?}");
    assert_eq!(fs::read(p.b.join("f")).unwrap(), b"two");
    assert_eq!(fs::read(p.b.join("d/locked-by-test.bin")).unwrap(), b"one");
    let locked = vec![PathBuf::from("d/locked-by-test.bin")];
    assert_eq!(p.sb().unwritten_paths().unwrap(), locked);
    // The old bytes are not a local change: no snapshot (it would send them back to the peers).
    let a = add(p.sb(), &p.b);
    assert_eq!(a.snapshot, None, "{a:?}");
    assert!(a.skipped.iter().any(|s| s.path == locked[0]), "{a:?}");
    // Changed again on A while still not writable: visited again, still not a local change (the
    // scan record names the oldest version), still recorded, still not published.
    fs::write(p.a.join("d/locked-by-test.bin"), b"three 3").unwrap();
    left_store::checkout::debug_set_deny_hook(Some(deny));
    let r = p.sync();
    left_store::checkout::debug_set_deny_hook(None);
    assert!(r.kept.is_empty(), "{r:?}");
    assert_eq!(r.unwritten.len(), 1, "{r:?}");
    assert_eq!(p.sb().unwritten_paths().unwrap(), locked);
    let a = add(p.sb(), &p.b);
    assert_eq!(a.snapshot, None, "{a:?}");
    // The next checkout (another change, elsewhere) writes it.
    fs::write(p.a.join("f"), b"three").unwrap();
    let r = p.sync();
    assert!(r.unwritten.is_empty(), "{r:?}");
    assert_eq!(r.files_written, 2, "{r:?}");
    p.assert_same();
    assert!(p.sb().unwritten_paths().unwrap().is_empty());
}

/// `retry_unwritten` writes such a path once it can, without a new snapshot (what automatic sync
/// does at each rescan); with nothing to retry it does nothing.
#[test]
fn retry_unwritten_writes_the_path_once_it_can() {
    let _turn = DENY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    fn deny(p: &Path) -> bool {
        p.file_name().is_some_and(|n| n == "locked-then-freed.bin")
    }
    let p = Pair::new();
    fs::create_dir(p.a.join("d")).unwrap();
    fs::write(p.a.join("d/locked-then-freed.bin"), b"one").unwrap();
    p.sync();
    assert!(p
        .sb()
        .retry_unwritten(&p.b, &CheckoutOptions::default())
        .unwrap()
        .is_none());
    fs::write(p.a.join("d/locked-then-freed.bin"), b"two two").unwrap();
    left_store::checkout::debug_set_deny_hook(Some(deny));
    let r = p.sync();
    assert_eq!(r.unwritten.len(), 1, "{r:?}");
    let again = p
        .sb()
        .retry_unwritten(&p.b, &CheckoutOptions::default())
        .unwrap()
        .expect("a path to retry");
    assert_eq!(again.unwritten.len(), 1, "still denied: {again:?}");
    left_store::checkout::debug_set_deny_hook(None);
    let head = p.sb().head().unwrap();
    let done = p
        .sb()
        .retry_unwritten(&p.b, &CheckoutOptions::default())
        .unwrap()
        .expect("a path to retry");
    assert!(done.unwritten.is_empty(), "{done:?}");
    assert_eq!(done.files_written, 1, "{done:?}");
    assert_eq!(p.sb().head().unwrap(), head);
    p.assert_same();
    assert!(p.sb().unwritten_paths().unwrap().is_empty());
}

/// Once the path changes on disk (a person fixed it by hand), it is an ordinary local change.
#[test]
fn an_unwritten_path_edited_by_hand_is_a_local_change() {
    let _turn = DENY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    fn deny(p: &Path) -> bool {
        p.file_name().is_some_and(|n| n == "locked-then-edited.bin")
    }
    let p = Pair::new();
    fs::write(p.a.join("locked-then-edited.bin"), b"one").unwrap();
    p.sync();
    fs::write(p.a.join("locked-then-edited.bin"), b"two two").unwrap();
    left_store::checkout::debug_set_deny_hook(Some(deny));
    let r = p.sync();
    left_store::checkout::debug_set_deny_hook(None);
    assert_eq!(r.unwritten.len(), 1, "{r:?}");
    fs::write(p.b.join("locked-then-edited.bin"), b"mine!").unwrap();
    let a = add(p.sb(), &p.b);
    let snap = a.snapshot.expect("the edit is a local change");
    let e = p
        .sb()
        .entry_at(snap, Path::new("locked-then-edited.bin"))
        .unwrap()
        .unwrap();
    assert_eq!(e.size, 5);
}

/// A racy scan record (the file was written within its timestamp tick right after add read it,
/// so its stat cannot show the change) is not trusted by checkout: the bytes are compared, and a
/// local edit hiding behind it is kept. A clean record is trusted, which is what records are for.
#[test]
fn a_racy_record_does_not_hide_a_local_edit_from_checkout() {
    for racy in [true, false] {
        let p = Pair::new();
        fs::write(p.a.join("f"), b"version one").unwrap();
        p.sync();
        let head = p.sb().head().unwrap().unwrap();
        let node = match p
            .sb()
            .entry_at(head, Path::new("f"))
            .unwrap()
            .unwrap()
            .target
        {
            Target::Node(n) => n,
            t => panic!("{t:?}"),
        };
        // An edit of the same length whose stat the record claims, as a same-tick write leaves.
        fs::write(p.b.join("f"), b"local edit!").unwrap();
        p.sb()
            .debug_forge_scan_record(&p.b, Path::new("f"), node, racy)
            .unwrap();
        fs::write(p.a.join("f"), b"version two").unwrap();
        let r = p.sync();
        if racy {
            assert_eq!(r.kept.len(), 1, "{r:?}");
            assert_eq!(fs::read(p.b.join("f")).unwrap(), b"local edit!");
        } else {
            assert!(r.kept.is_empty(), "{r:?}");
            assert_eq!(fs::read(p.b.join("f")).unwrap(), b"version two");
        }
    }
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

/// Descriptors of this process open on deleted files whose path starts with `prefix`.
fn open_deleted(prefix: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(t) = fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            if t.starts_with(&*prefix.to_string_lossy()) && t.ends_with(" (deleted)") {
                out.push(t);
            }
        }
    }
    out
}

/// Descriptors of any process (the detached releasers included) open on deleted files whose path
/// starts with `prefix`.
fn open_deleted_anywhere(prefix: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for p in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for e in fds.flatten() {
            if let Ok(t) = fs::read_link(e.path()) {
                let t = t.to_string_lossy().into_owned();
                if t.starts_with(&*prefix.to_string_lossy()) && t.ends_with(" (deleted)") {
                    out.push(format!("{}: {t}", p.file_name().to_string_lossy()));
                }
            }
        }
    }
    out
}

/// Big replaced files are copied from where unchanged and released by the release thread: after
/// `wait_released` (and after the store is dropped) no descriptor of the old versions is left in
/// this process, and the grandchild that frees each one exits soon after (nothing anywhere keeps
/// an old version alive).
#[test]
fn big_replaced_files_are_released() {
    let mut p = Pair::new();
    let size = 9 << 20;
    for n in ["big1", "big2"] {
        fs::write(
            p.a.join(n),
            rand_bytes(n.len() as u64 + n.as_bytes()[3] as u64, size),
        )
        .unwrap();
    }
    p.sync();
    p.assert_same();
    for (round, n) in ["big1", "big2", "big1"].iter().enumerate() {
        let mut data = fs::read(p.a.join(n)).unwrap();
        data[size / 2 + round * 1000..size / 2 + round * 1000 + 100].fill(round as u8 + 7);
        fs::write(p.a.join(n), &data).unwrap();
        let r = p.sync();
        assert_eq!(r.files_written, 1, "{r:?}");
        assert!(r.bytes_reused >= size as u64 - (256 << 10), "{r:?}");
        assert!(r.kept.is_empty(), "{:?}", r.kept);
        p.assert_same();
        p.sb().wait_released();
        assert_eq!(open_deleted(&p.b), Vec::<String>::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let left = open_deleted_anywhere(&p.b);
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "old versions still open: {left:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    // Both files at once; the store's drop waits for the release too.
    for n in ["big1", "big2"] {
        let mut data = fs::read(p.a.join(n)).unwrap();
        data[100..200].fill(1);
        fs::write(p.a.join(n), &data).unwrap();
    }
    let r = p.sync();
    assert_eq!(r.files_written, 2, "{r:?}");
    p.assert_same();
    drop(p.sb.take());
    assert_eq!(open_deleted(&p.b), Vec::<String>::new());
}

#[test]
fn only_changed_paths_are_touched() {
    let p = Pair::new();
    fs::create_dir_all(p.a.join("d/e")).unwrap();
    fs::write(p.a.join("same"), rand_bytes(1, 30_000)).unwrap();
    fs::write(p.a.join("changed"), rand_bytes(2, 30_000)).unwrap();
    fs::write(p.a.join("d/e/deep"), b"deep").unwrap();
    fs::write(p.a.join("d/gone"), b"gone").unwrap();
    fs::write(p.a.join("chmod"), b"mode").unwrap();
    fs::create_dir(p.a.join("empty")).unwrap();
    set_mtime(&p.a.join("d"), 1_600_000_000_123_456_789);
    let r = p.sync();
    assert_eq!((r.files_written, r.dirs_created), (5, 3), "{r:?}");
    assert_eq!(r.bytes_written, 60_000 + 4 + 4 + 4);
    assert!(r.kept.is_empty(), "{:?}", r.kept);
    p.assert_same();
    let (i_same, i_deep, i_changed) = (
        ino(&p.b.join("same")),
        ino(&p.b.join("d/e/deep")),
        ino(&p.b.join("changed")),
    );
    let i_chmod = ino(&p.b.join("chmod"));

    let mut data = rand_bytes(2, 30_000);
    data[100..200].copy_from_slice(&[7; 100]);
    fs::write(p.a.join("changed"), &data).unwrap();
    fs::remove_file(p.a.join("d/gone")).unwrap();
    fs::write(p.a.join("d/new"), b"new").unwrap();
    fs::set_permissions(p.a.join("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
    let r = p.sync();
    assert_eq!((r.files_written, r.files_removed), (2, 1), "{r:?}");
    assert_eq!(r.dirs_created + r.dirs_removed + r.symlinks_written, 0);
    assert_eq!(r.bytes_written, 30_003);
    p.assert_same();
    // Unchanged files (and the file only re-permissioned) keep their inode; a changed file is new.
    assert_eq!(ino(&p.b.join("same")), i_same);
    assert_eq!(ino(&p.b.join("d/e/deep")), i_deep);
    assert_eq!(ino(&p.b.join("chmod")), i_chmod);
    assert_ne!(ino(&p.b.join("changed")), i_changed);
    // No temporary file is left anywhere.
    assert!(picture(&p.b)
        .keys()
        .all(|k| !k.to_string_lossy().contains(".left-tmp-")));
}

#[test]
fn changed_big_file_reuses_unchanged_ranges() {
    let p = Pair::new();
    let mut data = rand_bytes(3, 8 << 20);
    fs::write(p.a.join("big"), &data).unwrap();
    let r = p.sync();
    assert_eq!((r.bytes_written, r.bytes_reused), (8 << 20, 0));
    // 64 KiB changed in the middle.
    let mid = 4 << 20;
    data[mid..mid + (64 << 10)].copy_from_slice(&rand_bytes(4, 64 << 10));
    fs::write(p.a.join("big"), &data).unwrap();
    let r = p.sync();
    assert_eq!(r.bytes_written, 8 << 20);
    assert!(r.bytes_reused >= 7 << 20, "reused only {}", r.bytes_reused);
    assert!(r.bytes_reused < 8 << 20);
    assert_eq!(fs::read(p.b.join("big")).unwrap(), data);
    p.assert_same();
    // An insertion shifts the rest: the chunks after it are still found in the old file.
    data.splice(1000..1000, rand_bytes(5, 5000));
    fs::write(p.a.join("big"), &data).unwrap();
    let r = p.sync();
    assert!(r.bytes_reused >= 7 << 20, "reused only {}", r.bytes_reused);
    assert_eq!(fs::read(p.b.join("big")).unwrap(), data);
    p.assert_same();
}

#[test]
fn deletions_kind_changes_and_symlinks() {
    let p = Pair::new();
    fs::create_dir_all(p.a.join("dir/sub")).unwrap();
    fs::write(p.a.join("dir/sub/f"), b"f").unwrap();
    fs::write(p.a.join("file"), b"file").unwrap();
    symlink("/etc/passwd", p.a.join("abs-link")).unwrap();
    symlink("../outside/x", p.a.join("rel-link")).unwrap();
    symlink("dangling", p.a.join("link-to-be-file")).unwrap();
    fs::write(p.a.join("file-to-be-link"), b"x").unwrap();
    p.sync();
    p.assert_same();
    // Links are written verbatim, never followed.
    assert_eq!(
        fs::read_link(p.b.join("abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(fs::symlink_metadata(p.b.join("rel-link"))
        .unwrap()
        .file_type()
        .is_symlink());

    // File -> folder, folder -> file, link <-> file, a removed folder tree.
    fs::remove_file(p.a.join("file")).unwrap();
    fs::create_dir(p.a.join("file")).unwrap();
    fs::write(p.a.join("file/inside"), b"inside").unwrap();
    fs::remove_dir_all(p.a.join("dir")).unwrap();
    fs::write(p.a.join("dir"), b"now a file").unwrap();
    fs::remove_file(p.a.join("link-to-be-file")).unwrap();
    fs::write(p.a.join("link-to-be-file"), b"now a file").unwrap();
    fs::remove_file(p.a.join("file-to-be-link")).unwrap();
    symlink("somewhere", p.a.join("file-to-be-link")).unwrap();
    symlink("/etc/other", p.a.join("new-link")).unwrap();
    fs::remove_file(p.a.join("abs-link")).unwrap();
    let r = p.sync();
    assert!(r.kept.is_empty(), "{:?}", r.kept);
    assert_eq!(r.dirs_removed, 2, "{r:?}");
    p.assert_same();

    // A link whose only change is its mtime.
    set_mtime(&p.a.join("new-link"), 1_234_567_890_000_000_001);
    let r = p.sync();
    assert_eq!(r.symlinks_written, 1, "{r:?}");
    p.assert_same();

    // Everything removed.
    for e in fs::read_dir(&p.a).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() && !e.is_symlink() {
            fs::remove_dir_all(e).unwrap();
        } else {
            fs::remove_file(e).unwrap();
        }
    }
    p.sync();
    p.assert_same();
    assert_eq!(fs::read_dir(&p.b).unwrap().count(), 0);
}

#[test]
fn local_changes_are_kept_and_listed() {
    let p = Pair::new();
    fs::create_dir_all(p.a.join("d")).unwrap();
    fs::write(p.a.join("edited"), b"v1").unwrap();
    fs::write(p.a.join("removed-there"), b"v1").unwrap();
    fs::write(p.a.join("d/f"), b"v1").unwrap();
    p.sync();
    // Local edits in B since the checkout (not yet added).
    fs::write(p.b.join("edited"), b"local edit").unwrap();
    fs::write(p.b.join("removed-there"), b"local edit too").unwrap();
    fs::write(p.b.join("untracked"), b"mine").unwrap();
    fs::write(p.b.join("d/untracked"), b"mine").unwrap();
    // Remote changes to the same paths.
    fs::write(p.a.join("edited"), b"remote v2").unwrap();
    fs::remove_file(p.a.join("removed-there")).unwrap();
    fs::write(p.a.join("untracked"), b"remote new file").unwrap();
    fs::remove_dir_all(p.a.join("d")).unwrap();
    fs::write(p.a.join("other"), b"remote").unwrap();
    let r = p.sync();
    let mut kept: Vec<(String, String)> = r
        .kept
        .iter()
        .map(|k| (k.path.display().to_string(), k.reason.clone()))
        .collect();
    kept.sort();
    assert_eq!(
        kept.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(),
        vec!["d", "edited", "removed-there", "untracked"],
        "{kept:?}"
    );
    assert!(kept[1].1.contains("changed locally since the last scan"));
    assert!(kept[3].1.contains("untracked"));
    assert_eq!(fs::read(p.b.join("edited")).unwrap(), b"local edit");
    assert_eq!(
        fs::read(p.b.join("removed-there")).unwrap(),
        b"local edit too"
    );
    assert_eq!(fs::read(p.b.join("untracked")).unwrap(), b"mine");
    // The folder lost its tracked file and kept the untracked one.
    assert!(!p.b.join("d/f").exists());
    assert_eq!(fs::read(p.b.join("d/untracked")).unwrap(), b"mine");
    assert_eq!(fs::read(p.b.join("other")).unwrap(), b"remote");
    // The next add in B records the local versions on top of the checked-out snapshot.
    let r = add(p.sb(), &p.b);
    assert!(r.snapshot.is_some());
    assert_eq!(r.bytes_read, 10 + 14 + 4 + 4);
}

#[test]
fn a_local_edit_is_not_overwritten() {
    // A file edited in B since its checkout is not replaced by the next version.
    let p = Pair::new();
    fs::write(p.a.join("x"), b"1").unwrap();
    p.sync();
    fs::write(p.a.join("x"), b"2").unwrap();
    fs::write(p.b.join("x"), b"local").unwrap();
    let r = p.sync();
    assert_eq!(r.kept.len(), 1);
    assert_eq!(fs::read(p.b.join("x")).unwrap(), b"local");
}

/// Puts a folder made of `entries` (sorted here) and returns its id.
fn put_dir(s: &Store, mut entries: Vec<DirEntry>) -> NodeId {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let (id, b) = Node::Dir(DirNode::Leaf(entries)).encode_with_id().unwrap();
    s.put_node(id, &b).unwrap();
    id
}

fn file_entry(s: &Store, name: &str, data: &[u8], claimed: Option<u64>) -> DirEntry {
    let cid = ChunkId(Hash::of(data));
    s.put_chunk(cid, &codec::encode(data)).unwrap();
    let size = claimed.unwrap_or(data.len() as u64);
    let (id, b) = Node::File(FileNode {
        size,
        mode: 0o644,
        mtime_ns: 1_000_000_000,
        content: Content::Inline(vec![ChunkRef {
            id: cid.0,
            len: size,
        }]),
    })
    .encode_with_id()
    .unwrap();
    assert!(s.put_node(id, &b).unwrap());
    DirEntry {
        name: name.as_bytes().to_vec(),
        kind: EntryKind::File,
        mode: 0o644,
        mtime_ns: 1_000_000_000,
        size,
        target: Target::Node(id),
    }
}

fn dir_entry(name: &str, id: NodeId) -> DirEntry {
    DirEntry {
        name: name.as_bytes().to_vec(),
        kind: EntryKind::Dir,
        mode: 0o755,
        mtime_ns: 1_000_000_000,
        size: 0,
        target: Target::Node(id),
    }
}

fn link_entry(name: &str, target: &Path) -> DirEntry {
    let t = target.as_os_str().as_encoded_bytes().to_vec();
    DirEntry {
        name: name.as_bytes().to_vec(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        mtime_ns: 1_000_000_000,
        size: t.len() as u64,
        target: Target::Link(t),
    }
}

fn put_snap(s: &Store, root: NodeId, parent: Option<NodeId>) -> NodeId {
    s.put_snapshot(&Snapshot {
        root,
        parents: parent.into_iter().collect(),
        device: [9; 32],
        time_ns: 1,
        message: "evil".into(),
    })
    .unwrap()
}

/// Every file under `dir`, for "nothing was written here" checks.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = picture(dir).into_keys().collect();
    v.sort();
    v
}

#[test]
fn checkout_never_writes_through_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    let outside = t.path().join("outside");
    fs::create_dir_all(&share).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
    let s = Store::create(&t.path().join("store"), small_cfg()).unwrap();
    let opts = CheckoutOptions::default();

    // 1. A tree with a link `a` -> outside, then a tree with a folder `a` holding `passwd`: the
    //    link (the checked-out version) is removed and a real folder made; outside is untouched.
    let s1 = put_snap(&s, put_dir(&s, vec![link_entry("a", &outside)]), None);
    let r = s.checkout(&share, None, s1, &opts, &NoProgress).unwrap();
    assert_eq!(r.symlinks_written, 1);
    assert_eq!(fs::read_link(share.join("a")).unwrap(), outside);
    let inner = put_dir(&s, vec![file_entry(&s, "passwd", b"evil", None)]);
    let s2 = put_snap(&s, put_dir(&s, vec![dir_entry("a", inner)]), Some(s1));
    let r = s
        .checkout(&share, Some(s1), s2, &opts, &NoProgress)
        .unwrap();
    assert!(r.kept.is_empty(), "{:?}", r.kept);
    assert_eq!(fs::read(outside.join("passwd")).unwrap(), b"root:x:0:0");
    assert!(fs::symlink_metadata(share.join("a")).unwrap().is_dir());
    assert_eq!(fs::read(share.join("a/passwd")).unwrap(), b"evil");

    // 2. Someone replaces the folder `a` by a link to outside; the next tree changes a/passwd:
    //    that path fails with a clear reason and nothing is written outside.
    fs::remove_dir_all(share.join("a")).unwrap();
    symlink(&outside, share.join("a")).unwrap();
    let inner3 = put_dir(
        &s,
        vec![
            file_entry(&s, "passwd", b"evil 2", None),
            file_entry(&s, "new", b"new", None),
        ],
    );
    let s3 = put_snap(
        &s,
        put_dir(
            &s,
            vec![dir_entry("a", inner3), file_entry(&s, "ok", b"ok", None)],
        ),
        Some(s2),
    );
    let before = listing(&outside);
    let r = s
        .checkout(&share, Some(s2), s3, &opts, &NoProgress)
        .unwrap();
    assert_eq!(r.kept.len(), 1, "{:?}", r.kept);
    assert_eq!(r.kept[0].path, Path::new("a"));
    assert!(r.kept[0].reason.contains("symlink"), "{}", r.kept[0].reason);
    assert_eq!(listing(&outside), before);
    assert_eq!(fs::read(outside.join("passwd")).unwrap(), b"root:x:0:0");
    assert_eq!(fs::read(share.join("ok")).unwrap(), b"ok");

    // 3. A first checkout into a share where an untracked link sits where the tree has a folder.
    let share2 = t.path().join("share2");
    fs::create_dir_all(&share2).unwrap();
    symlink(&outside, share2.join("a")).unwrap();
    let s4 = put_snap(&s, put_dir(&s, vec![dir_entry("a", inner3)]), None);
    let s2b = Store::create(&t.path().join("store2"), small_cfg()).unwrap();
    transfer(&s, &s2b, s4);
    let r = s2b.checkout(&share2, None, s4, &opts, &NoProgress).unwrap();
    assert_eq!(r.kept.len(), 1, "{:?}", r.kept);
    assert_eq!(listing(&outside), before);

    // 4. Names that would leave the folder cannot even be stored.
    for bad in [&b".."[..], b".", b"a/b", b"", b"x\0y", b"/etc"] {
        let mut e = file_entry(&s, "f", b"x", None);
        e.name = bad.to_vec();
        let (id, b) = Node::Dir(DirNode::Leaf(vec![e])).encode_with_id().unwrap();
        assert!(s.put_node(id, &b).is_err(), "{bad:?} accepted");
        assert!(s.get_node(id).unwrap().is_none());
    }
    // `.left` (the store's folder name) and temp names are never written.
    let s5 = put_snap(
        &s,
        put_dir(
            &s,
            vec![
                file_entry(&s, ".left", b"x", None),
                file_entry(&s, ".left-tmp-0123456789abcdef", b"x", None),
            ],
        ),
        None,
    );
    let share3 = t.path().join("share3");
    fs::create_dir_all(&share3).unwrap();
    let s3b = Store::create(&t.path().join("store3"), small_cfg()).unwrap();
    transfer(&s, &s3b, s5);
    let r = s3b.checkout(&share3, None, s5, &opts, &NoProgress).unwrap();
    assert_eq!(r.kept.len(), 2, "{:?}", r.kept);
    assert_eq!(fs::read_dir(&share3).unwrap().count(), 0);
}

#[test]
fn deep_trees_within_the_limit_work_and_deeper_ones_are_refused_whole() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::create(&t.path().join("store"), small_cfg()).unwrap();
    let chain = |depth: usize| {
        let mut id = put_dir(&s, vec![file_entry(&s, "leaf", b"leaf", None)]);
        for _ in 0..depth {
            id = put_dir(&s, vec![dir_entry("d", id)]);
        }
        put_snap(&s, id, None)
    };
    // Run on a thread with a small stack, as a sync engine's worker might.
    let ok = chain(CHECKOUT_MAX_DEPTH - 1);
    let deep = chain(CHECKOUT_MAX_DEPTH + 5);
    let share = t.path().join("share");
    fs::create_dir(&share).unwrap();
    let share2 = t.path().join("share2");
    fs::create_dir(&share2).unwrap();
    std::thread::scope(|sc| {
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn_scoped(sc, || {
                let r = s
                    .checkout(&share, None, ok, &CheckoutOptions::default(), &NoProgress)
                    .unwrap();
                assert_eq!(r.dirs_created as usize, CHECKOUT_MAX_DEPTH - 1);
            })
            .unwrap()
            .join()
            .unwrap();
    });
    let mut p = share.clone();
    for _ in 0..CHECKOUT_MAX_DEPTH - 1 {
        p.push("d");
    }
    assert_eq!(fs::read(p.join("leaf")).unwrap(), b"leaf");
    let e = s
        .checkout(
            &share2,
            None,
            deep,
            &CheckoutOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(e.to_string().contains("deeper than"), "{e}");
    assert_eq!(fs::read_dir(&share2).unwrap().count(), 0);
    assert_eq!(s.pending_checkout().unwrap(), None);
}

/// Puts a folder split by hand into one leaf per group (each leaf sorted, as a valid node must
/// be, but nothing checked across leaves) under one index node; returns the index node's id.
fn put_split_dir(s: &Store, leaves: Vec<Vec<DirEntry>>) -> NodeId {
    let children = leaves.into_iter().map(|l| put_dir(s, l)).collect();
    let (id, b) = Node::Dir(DirNode::Index { level: 1, children })
        .encode_with_id()
        .unwrap();
    assert!(s.put_node(id, &b).unwrap(), "the index node alone is valid");
    id
}

/// Asserts `r` is the corrupt-folder error naming folder node `dir` and the entry `name`.
fn assert_names_twice<T: std::fmt::Debug>(r: Result<T>, dir: NodeId, name: &str) {
    let want = format!("folder node {dir} lists {name:?} twice or out of order");
    match r {
        Err(Error::Corrupt { what }) => assert_eq!(what, want),
        other => panic!("expected Corrupt({want}), got {other:?}"),
    }
}

#[test]
fn a_folder_naming_an_entry_twice_across_leaves_is_refused_by_every_reader() {
    // Each leaf is valid alone; together they list `x` twice: first a link to a folder outside the
    // share, then a folder `x` holding `evil`. Checking out the link and then writing `x/evil`
    // would write outside; keeping only one of the two would drop the other silently.
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"outside").unwrap();
    let s = Store::create(&t.path().join("store"), small_cfg()).unwrap();
    let inner = put_dir(
        &s,
        vec![file_entry(&s, "evil", b"written through a link", None)],
    );
    let root = put_split_dir(
        &s,
        vec![vec![link_entry("x", &outside)], vec![dir_entry("x", inner)]],
    );
    let snap = put_snap(&s, root, None);
    assert!(s.has_nodes(&[snap]).unwrap()[0], "stored as complete");

    assert_names_twice(s.dir_entries(root), root, "x");
    assert_names_twice(s.ls(snap, Path::new("")), root, "x");
    assert_names_twice(s.ls(snap, Path::new("x")), root, "x");

    let target = t.path().join("restored");
    let r = s.restore(snap, None, &target, &RestoreOptions::default(), &NoProgress);
    assert_names_twice(r, root, "x");
    assert_eq!(
        listing(&target),
        Vec::<PathBuf>::new(),
        "restore wrote something"
    );

    let share = t.path().join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("mine"), b"local").unwrap();
    let before = picture(&share);
    let r = s.checkout(&share, None, snap, &CheckoutOptions::default(), &NoProgress);
    assert_names_twice(r, root, "x");
    assert_eq!(picture(&share), before, "checkout touched the share");
    assert_eq!(listing(&outside), vec![PathBuf::from("keep")]);
    assert_eq!(s.head().unwrap(), None);
    // Refused whole, not cut short: nothing is journaled for a resume to finish.
    assert_eq!(s.pending_checkout().unwrap(), None);

    // The same one level down, with leaves out of order (`b` then `a`), beside a good file at the
    // root and over a previous checkout: the whole checkout is refused before anything is written.
    let good = put_snap(
        &s,
        put_dir(&s, vec![file_entry(&s, "f", b"v1", None)]),
        None,
    );
    s.checkout(&share, None, good, &CheckoutOptions::default(), &NoProgress)
        .unwrap();
    let d = put_split_dir(
        &s,
        vec![
            vec![file_entry(&s, "b", b"b", None)],
            vec![file_entry(&s, "a", b"a", None)],
        ],
    );
    let bad = put_snap(
        &s,
        put_dir(
            &s,
            vec![file_entry(&s, "f", b"v2", None), dir_entry("d", d)],
        ),
        Some(good),
    );
    let before = picture(&share);
    let r = s.checkout(
        &share,
        Some(good),
        bad,
        &CheckoutOptions::default(),
        &NoProgress,
    );
    assert_names_twice(r, d, "a");
    assert_eq!(picture(&share), before, "checkout touched the share");
    assert_eq!(fs::read(share.join("f")).unwrap(), b"v1");
    assert_eq!(s.head().unwrap(), Some(good));
    assert_eq!(s.pending_checkout().unwrap(), None);
    assert_names_twice(s.ls(bad, Path::new("d")), d, "a");
    let target = t.path().join("restored-d");
    let r = s.restore(
        bad,
        Some(Path::new("d")),
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    );
    assert_names_twice(r, d, "a");
    assert_eq!(
        listing(&target),
        Vec::<PathBuf>::new(),
        "restore wrote something"
    );
    // diff (what a peer would be sent) refuses it too.
    let r = s.diff(good, bad, 100, &mut |_| Ok(()));
    assert_names_twice(r, d, "a");
    // verify names both folders (which `left` suggests after such an error).
    s.set_ref("peers/one", snap).unwrap();
    s.set_ref("peers/two", bad).unwrap();
    let mut found: Vec<(ObjectKind, ProblemKind, Hash, Vec<PathBuf>)> = s
        .verify(&NoProgress)
        .unwrap()
        .problems
        .into_iter()
        .map(|p| (p.object, p.kind, p.id, p.paths))
        .collect();
    found.sort_by_key(|p| p.3.clone());
    assert_eq!(
        found,
        vec![
            (
                ObjectKind::Node,
                ProblemKind::Corrupt,
                root.0,
                vec![PathBuf::new()]
            ),
            (
                ObjectKind::Node,
                ProblemKind::Corrupt,
                d.0,
                vec![PathBuf::from("d")]
            ),
        ]
    );
}

#[test]
fn not_enough_space_touches_nothing() {
    let p = Pair::new();
    fs::write(p.a.join("f"), b"v1").unwrap();
    let r = p.sync();
    assert_eq!(r.files_written, 1);
    let head = p.sb().head().unwrap().unwrap();
    // A tree claiming a 1 PB file, beside a normal change.
    let s = p.sb();
    let huge = file_entry(s, "huge", b"tiny chunk", Some(1 << 50));
    let f2 = file_entry(s, "f", b"v2", None);
    let to = put_snap(s, put_dir(s, vec![huge, f2]), Some(head));
    let before = picture(&p.b);
    let e = s
        .checkout(
            &p.b,
            Some(head),
            to,
            &CheckoutOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(matches!(e, Error::DiskFull { .. }), "{e}");
    assert_eq!(picture(&p.b), before);
    assert_eq!(s.head().unwrap(), Some(head));
    assert_eq!(s.pending_checkout().unwrap(), None);
}

/// Child side of the crash test: runs the checkout described by the environment (it aborts).
#[test]
#[ignore = "run by crash_mid_checkout_then_resume"]
fn checkout_crash_child() {
    let Ok(dir) = std::env::var("LEFT_TEST_CHILD_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = Store::open(&dir.join("sb")).unwrap();
    let from: Hash = std::env::var("LEFT_TEST_FROM").unwrap().parse().unwrap();
    let to: Hash = std::env::var("LEFT_TEST_TO").unwrap().parse().unwrap();
    let r = store.checkout(
        &dir.join("b"),
        Some(NodeId(from)),
        NodeId(to),
        &CheckoutOptions::default(),
        &NoProgress,
    );
    println!("CHILD-FINISHED {r:?}");
}

#[test]
fn crash_mid_checkout_then_resume() {
    for step in [1u32, 4, 9] {
        let mut p = Pair::new();
        fs::create_dir_all(p.a.join("d")).unwrap();
        for i in 0..6u64 {
            fs::write(p.a.join(format!("f{i}")), rand_bytes(i, 20_000)).unwrap();
            fs::write(p.a.join(format!("d/g{i}")), rand_bytes(i + 100, 3000)).unwrap();
        }
        fs::create_dir_all(p.a.join("old-dir/x")).unwrap();
        fs::write(p.a.join("old-dir/x/y"), b"y").unwrap();
        p.sync();
        for i in 0..6u64 {
            let mut d = rand_bytes(i, 20_000);
            d[5000..6000].copy_from_slice(&rand_bytes(i + 50, 1000));
            fs::write(p.a.join(format!("f{i}")), d).unwrap();
        }
        fs::remove_file(p.a.join("d/g1")).unwrap();
        fs::write(p.a.join("d/new"), b"new").unwrap();
        fs::remove_dir_all(p.a.join("old-dir")).unwrap();
        fs::write(p.a.join("old-dir"), b"a file now").unwrap();
        symlink("target", p.a.join("d/link")).unwrap();
        let (from, to) = p.add_a();
        let from = from.unwrap();
        p.sb = None; // the child takes the lock
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "checkout::checkout_crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LEFT_TEST_CHILD_DIR", p.t.path())
            .env("LEFT_TEST_FROM", from.0.to_string())
            .env("LEFT_TEST_TO", to.0.to_string())
            .env("LEFT_FAULT", format!("abort-checkout:{step}"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "step {step}: the child did not crash: {stdout}"
        );
        assert!(!stdout.contains("CHILD-FINISHED"), "{stdout}");
        // A temp file as a crash mid-write would leave it.
        fs::write(p.b.join(".left-tmp-00000000deadbeef"), b"partial").unwrap();
        let sb = Store::open(&p.t.path().join("sb")).unwrap();
        assert_eq!(sb.pending_checkout().unwrap(), Some((Some(from), to)));
        assert_eq!(sb.head().unwrap(), Some(from), "head moves only at the end");
        // Another checkout is refused until this one is finished.
        let other = sb.checkout(
            &p.b,
            Some(to),
            from,
            &CheckoutOptions::default(),
            &NoProgress,
        );
        assert!(matches!(other, Err(Error::Invalid(_))), "{other:?}");
        // gc runs meanwhile (a full disk must not deadlock) and keeps both trees.
        sb.gc(&GcOptions::default(), &NoProgress)
            .expect("gc runs while a checkout is journaled");
        if step == 4 {
            // `add` finishes the checkout before it scans: no half-checked-out snapshot.
            let r = add(&sb, &p.b);
            assert_eq!((r.snapshot, r.head), (None, Some(to)), "{r:?}");
        } else {
            let r = sb
                .resume_checkout(&p.b, &CheckoutOptions::default(), &NoProgress)
                .unwrap()
                .expect("a checkout was pending");
            assert!(r.kept.is_empty(), "step {step}: {:?}", r.kept);
            // 9 paths to write (8 files, 1 link), in name order; the crash came after the step-th.
            assert_eq!(
                r.files_written + r.symlinks_written,
                9 - step as u64,
                "step {step}: done paths are skipped: {r:?}"
            );
        }
        assert_eq!(sb.pending_checkout().unwrap(), None);
        assert_eq!(sb.head().unwrap(), Some(to));
        assert!(sb
            .resume_checkout(&p.b, &CheckoutOptions::default(), &NoProgress)
            .unwrap()
            .is_none());
        p.sb = Some(sb);
        p.assert_same();
    }
}

#[test]
fn after_a_power_cut_a_finished_checkout_is_checked_again() {
    let p = Pair::new();
    for f in [
        "renamed",
        "new-data-lost",
        "removed",
        "edited-after",
        "intact",
    ] {
        fs::write(p.a.join(f), format!("{f} v1")).unwrap();
    }
    // (With fsync: no settle record; the one of the checkout below is re-checked alone.)
    p.sync_with(&CheckoutOptions {
        fsync: true,
        ..Default::default()
    });
    for f in ["renamed", "edited-after", "intact"] {
        fs::write(p.a.join(f), format!("{f} v2")).unwrap();
    }
    fs::write(p.a.join("new"), b"new file").unwrap();
    fs::remove_file(p.a.join("removed")).unwrap();
    fs::remove_file(p.a.join("new-data-lost")).unwrap();
    fs::create_dir(p.a.join("new-data-lost")).unwrap();
    fs::write(p.a.join("new-data-lost/inner"), b"inner").unwrap();
    p.sync();
    let v2 = picture(&p.a);
    assert_eq!(picture(&p.b), v2);

    // What a power cut within the writeback delay may leave: a rename taken back (the old bytes
    // under the old name), a new file without its bytes, an unlink taken back.
    let sb = p.sb();
    fs::remove_file(p.b.join("renamed")).unwrap();
    fs::write(p.b.join("renamed"), b"renamed v1").unwrap();
    fs::write(p.b.join("new"), b"").unwrap();
    fs::write(p.b.join("new-data-lost/inner"), b"inn").unwrap();
    fs::write(p.b.join("removed"), b"removed v1").unwrap();
    // Those happened "during" the checkout: its recorded end moves past them, and the clock
    // file systems stamp ctimes with (coarse: a few ms) moves past that end.
    let end = now_ns();
    sb.debug_set_settle_end(end).unwrap();
    let probe = p.t.path().join("probe");
    while {
        fs::write(&probe, b"x").unwrap();
        let m = fs::metadata(&probe).unwrap();
        m.ctime() * 1_000_000_000 + m.ctime_nsec() <= end
    } {}
    // After the checkout, the user edits a file: that edit must survive.
    fs::write(p.b.join("edited-after"), b"local edit").unwrap();

    // Same boot: nothing to do (the page cache still holds everything).
    assert!(sb
        .resume_checkout(&p.b, &CheckoutOptions::default(), &NoProgress)
        .unwrap()
        .is_none());
    // After a reboot, the finished checkout is checked again.
    sb.debug_set_boot_id(Some("after a power cut"));
    let r = sb
        .resume_checkout(&p.b, &CheckoutOptions::default(), &NoProgress)
        .unwrap()
        .expect("a settle record was pending");
    assert_eq!(r.files_written, 3, "{r:?}");
    assert_eq!(r.files_removed, 1, "{r:?}");
    let kept: Vec<&Path> = r.kept.iter().map(|k| k.path.as_path()).collect();
    assert_eq!(kept, vec![Path::new("edited-after")]);
    let mut want = v2.clone();
    want.remove(Path::new("edited-after"));
    let mut got = picture(&p.b);
    assert_eq!(
        got.remove(Path::new("edited-after")).unwrap().3,
        b"local edit"
    );
    assert_eq!(got, want);
    // Done once: the record is gone.
    assert!(sb
        .resume_checkout(&p.b, &CheckoutOptions::default(), &NoProgress)
        .unwrap()
        .is_none());
    // The next add records only the real local edit.
    let r = add(sb, &p.b);
    assert_eq!(r.bytes_read, 10, "{r:?}");
}

#[test]
fn add_after_a_reboot_checks_the_last_checkout_first() {
    let p = Pair::new();
    fs::write(p.a.join("f"), b"version 1").unwrap();
    p.sync_with(&CheckoutOptions {
        fsync: true,
        ..Default::default()
    });
    fs::write(p.a.join("f"), b"version 2").unwrap();
    p.sync();
    let sb = p.sb();
    let v2 = sb.head().unwrap();
    // The power cut took the rename back.
    fs::remove_file(p.b.join("f")).unwrap();
    fs::write(p.b.join("f"), b"version 1").unwrap();
    sb.debug_set_boot_id(Some("rebooted"));
    // Without the check, this add would record "version 1" as a local edit (and a sync would
    // spread the revert).
    let r = add(sb, &p.b);
    assert_eq!(r.snapshot, None, "{r:?}");
    assert_eq!(sb.head().unwrap(), v2);
    assert_eq!(fs::read(p.b.join("f")).unwrap(), b"version 2");
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[test]
fn fsync_option_gives_the_same_result() {
    let p = Pair::new();
    fs::create_dir_all(p.a.join("d")).unwrap();
    fs::write(p.a.join("d/f"), rand_bytes(8, 100_000)).unwrap();
    let (from, to) = p.add_a();
    let r = p
        .sb()
        .checkout(
            &p.b,
            from,
            to,
            &CheckoutOptions {
                fsync: true,
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
    assert_eq!(r.files_written, 1);
    p.assert_same();
}

#[test]
fn checkout_from_nothing_into_a_share_that_already_matches_skips_nothing_it_cannot_prove() {
    // Files already on disk but unknown to the scan cache are untracked: kept, not overwritten.
    let p = Pair::new();
    fs::write(p.a.join("f"), b"same bytes").unwrap();
    fs::write(p.b.join("f"), b"same bytes").unwrap();
    let r = p.sync();
    assert_eq!(r.kept.len(), 1);
    assert_eq!(r.files_written, 0);
}

/// Checkout of a 1 GiB file changed by 1 MiB, and a fresh 1 GiB checkout. Needs the benchmark
/// files (`python3 shared/bench/gen.py all /var/tmp/left-bench/e2e-1073741824`). Run with
/// `CARGO_TARGET_DIR=/var/tmp/left-target cargo test --release --workspace --test store -- \
///  --ignored --nocapture measure_checkout_1gib`
#[test]
#[ignore = "measurement: needs /var/tmp/left-bench/e2e-1073741824 (minutes of I/O)"]
fn measure_checkout_1gib() {
    let dir = Path::new("/var/tmp/left-bench/e2e-1073741824");
    let base = dir.join("base.bin");
    let mutated = dir.join("mut_a.bin");
    assert!(base.exists(), "generate {} first", base.display());
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let sa = Store::create(&t.path().join("sa"), StoreConfig::default()).unwrap();
    let sb = Store::create(&t.path().join("sb"), StoreConfig::default()).unwrap();
    fs::copy(&base, a.join("file.bin")).unwrap();
    let s1 = add_msg(&sa, &a, "base").unwrap();
    transfer(&sa, &sb, s1);
    sync_disk();
    let (t0, c0) = (std::time::Instant::now(), cpu_s());
    let r = sb
        .checkout(&b, None, s1, &CheckoutOptions::default(), &NoProgress)
        .unwrap();
    let fresh = t0.elapsed().as_secs_f64();
    println!(
        "fresh checkout of 1 GiB: {fresh:.2} s ({:.0} MB/s), {:.2} s cpu, {r:?}",
        (1u64 << 30) as f64 / fresh / 1e6,
        cpu_s() - c0
    );
    let out = t.path().join("restored");
    sync_disk();
    let t0 = std::time::Instant::now();
    sb.restore(s1, None, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    println!(
        "restore of the same 1 GiB, for comparison: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    fs::remove_dir_all(&out).unwrap();
    fs::copy(&mutated, a.join("file.bin")).unwrap();
    let s2 = add_msg(&sa, &a, "mut_a").unwrap();
    transfer(&sa, &sb, s2);
    sync_disk();
    let t0 = std::time::Instant::now();
    let r = sb
        .checkout(&b, Some(s1), s2, &CheckoutOptions::default(), &NoProgress)
        .unwrap();
    let upd = t0.elapsed().as_secs_f64();
    println!(
        "checkout of 1 GiB changed by 1 MiB: {upd:.2} s, bytes_reused {} ({:.2}% of {}), {r:?}",
        r.bytes_reused,
        r.bytes_reused as f64 * 100.0 / r.bytes_written as f64,
        r.bytes_written
    );
    assert!(r.bytes_reused >= (1 << 30) - (4 << 20));
    // Back and forth a few more times (each replaces a written-back 1 GiB file), CPU seconds too.
    let mut at = s2;
    for _ in 0..3 {
        for to in [s1, s2] {
            sync_disk();
            let (t0, c0) = (std::time::Instant::now(), cpu_s());
            sb.checkout(&b, Some(at), to, &CheckoutOptions::default(), &NoProgress)
                .unwrap();
            let dt = t0.elapsed().as_secs_f64();
            sb.wait_released();
            println!(
                "checkout {} -> {}: {dt:.2} s wall, {:.2} s with the old file released, {:.2} s cpu",
                at.fmt_short(),
                to.fmt_short(),
                t0.elapsed().as_secs_f64(),
                cpu_s() - c0
            );
            at = to;
        }
    }
    let t0 = std::time::Instant::now();
    sync_disk();
    println!(
        "writeback after it (sync): {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let t0 = std::time::Instant::now();
    fs::copy(b.join("file.bin"), t.path().join("copy.bin")).unwrap();
    println!(
        "floor: one copy_file_range of the whole file (fs::copy): {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        fs::metadata(b.join("file.bin")).unwrap().len(),
        fs::metadata(&mutated).unwrap().len()
    );
    let same = Command::new("cmp")
        .arg(b.join("file.bin"))
        .arg(&mutated)
        .status()
        .unwrap();
    assert!(same.success());
}

/// CPU seconds of this process so far (all threads).
fn cpu_s() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn sync_disk() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Checkout of many small files: a fresh checkout, then one changed file (the walk must only
/// descend into the changed folder). Needs the benchmark tree (`many_files.py` in benches/, or
/// LEFT_MANY_DIR pointing to any folder). Run with
/// `CARGO_TARGET_DIR=/var/tmp/left-target cargo test --release --workspace --test store -- \
///  --ignored --nocapture measure_checkout_many_files`
#[test]
#[ignore = "measurement: needs /var/tmp/left-bench/many-100000"]
fn measure_checkout_many_files() {
    let src = std::env::var("LEFT_MANY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/tmp/left-bench/many-100000"));
    assert!(src.exists(), "{} is missing", src.display());
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::create_dir(&b).unwrap();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&a)
        .status()
        .unwrap();
    assert!(ok.success());
    let sa = Store::create(&t.path().join("sa"), StoreConfig::default()).unwrap();
    let sb = Store::create(&t.path().join("sb"), StoreConfig::default()).unwrap();
    let s1 = add_msg(&sa, &a, "base").unwrap();
    transfer(&sa, &sb, s1);
    sync_disk();
    let t0 = std::time::Instant::now();
    let r = sb
        .checkout(&b, None, s1, &CheckoutOptions::default(), &NoProgress)
        .unwrap();
    let fresh = t0.elapsed().as_secs_f64();
    println!(
        "fresh checkout of {} files ({} bytes): {fresh:.2} s",
        r.files_written, r.bytes_written
    );
    let out = t.path().join("restored");
    sync_disk();
    let t0 = std::time::Instant::now();
    sb.restore(s1, None, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    println!(
        "restore of the same, for comparison: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // One file changed deep inside.
    let victim = picture(&a)
        .into_iter()
        .find(|(_, v)| v.0 == 'f')
        .map(|(k, _)| k)
        .unwrap();
    fs::write(a.join(&victim), b"changed").unwrap();
    let s2 = add_msg(&sa, &a, "one").unwrap();
    transfer(&sa, &sb, s2);
    let t0 = std::time::Instant::now();
    let r = sb
        .checkout(&b, Some(s1), s2, &CheckoutOptions::default(), &NoProgress)
        .unwrap();
    println!(
        "checkout of one changed file among them: {:.3} s, {r:?}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(r.files_written, 1);
    assert_eq!(fs::read(b.join(&victim)).unwrap(), b"changed");
    let t0 = std::time::Instant::now();
    let r = add(&sb, &b);
    println!(
        "add in the checked-out share right after: {:.2} s, {} bytes read, snapshot {:?}",
        t0.elapsed().as_secs_f64(),
        r.bytes_read,
        r.snapshot
    );
    assert_eq!((r.bytes_read, r.snapshot), (0, None));
}

/// Random edits of share A (files, folders, links, kind changes, modes, mtimes), each round
/// checked out into share B, which must then hold exactly A and need no new snapshot. The seed is
/// printed; replay with LEFT_TEST_SEED=<seed>.
#[test]
fn random_edit_sequences_check_out_exactly() {
    let seeds: Vec<u64> = match std::env::var("LEFT_TEST_SEED") {
        Ok(s) => vec![s.parse().expect("LEFT_TEST_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        println!("seed {seed}");
        let p = Pair::new();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for round in 0..12 {
            for _ in 0..1 + rng.below(6) {
                random_edit(&p.a, &mut rng);
            }
            if add_msg(&p.sa, &p.a, "probe").is_none() {
                continue;
            }
            // (add_msg made the snapshot; sync adds nothing new, so take that head.)
            let to = p.sa.head().unwrap().unwrap();
            transfer(&p.sa, p.sb(), to);
            let from = p.sb().head().unwrap();
            let r = p
                .sb()
                .checkout(&p.b, from, to, &CheckoutOptions::default(), &NoProgress)
                .unwrap();
            assert!(r.kept.is_empty(), "seed {seed} round {round}: {:?}", r.kept);
            assert_eq!(picture(&p.b), picture(&p.a), "seed {seed} round {round}");
            let a = add(p.sb(), &p.b);
            assert_eq!(
                (a.bytes_read, a.snapshot),
                (0, None),
                "seed {seed} round {round}"
            );
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One random edit somewhere under `root` (at most three levels deep, names from a small set so
/// paths are reused and kinds change).
fn random_edit(root: &Path, rng: &mut Rng) {
    let names = ["a", "b", "c", "d"];
    let mut p = root.to_path_buf();
    for _ in 0..rng.below(3) {
        let n = p.join(names[rng.below(4) as usize]);
        if fs::symlink_metadata(&n)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            p = n;
        } else {
            break;
        }
    }
    let target = p.join(names[rng.below(4) as usize]);
    let meta = fs::symlink_metadata(&target).ok();
    let remove = |t: &Path| match fs::symlink_metadata(t) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(t).unwrap(),
        Ok(_) => fs::remove_file(t).unwrap(),
        Err(_) => {}
    };
    match rng.below(8) {
        0 | 1 => {
            // Write a file (new, or new content), sometimes a big one edited in place.
            let len = [0usize, 100, 5000, 70_000][rng.below(4) as usize];
            if meta.as_ref().map(|m| m.is_file()).unwrap_or(false) && rng.below(2) == 0 {
                let mut d = fs::read(&target).unwrap();
                if !d.is_empty() {
                    let i = rng.below(d.len() as u64) as usize;
                    d[i] ^= 0x5a;
                }
                d.extend_from_slice(&rand_bytes(rng.next(), 300));
                fs::write(&target, d).unwrap();
            } else {
                remove(&target);
                fs::write(&target, rand_bytes(rng.next(), len)).unwrap();
            }
        }
        2 => {
            remove(&target);
            fs::create_dir(&target).unwrap();
            fs::write(target.join("x"), rand_bytes(rng.next(), 50)).unwrap();
        }
        3 => {
            remove(&target);
            fs::create_dir(&target).unwrap();
        }
        4 => {
            remove(&target);
            let t = ["x", "../up", "/abs/target", "a/b"][rng.below(4) as usize];
            symlink(t, &target).unwrap();
        }
        5 => remove(&target),
        6 => {
            if let Some(m) = meta {
                if !m.file_type().is_symlink() {
                    let mode = [0o600, 0o644, 0o755, 0o700][rng.below(4) as usize];
                    fs::set_permissions(&target, fs::Permissions::from_mode(mode)).unwrap();
                }
            }
        }
        _ => {
            if meta.is_some() {
                set_mtime(
                    &target,
                    1_500_000_000_000_000_000 + rng.below(1 << 40) as i64,
                );
            }
        }
    }
}

/// Random edits, a checkout killed after a random number of renames, then resume: B must hold
/// exactly A. The seed is printed; replay with LEFT_TEST_SEED=<seed>.
#[test]
fn random_crashes_then_resume() {
    let seeds: Vec<u64> = match std::env::var("LEFT_TEST_SEED") {
        Ok(s) => vec![s.parse().expect("LEFT_TEST_SEED is a number")],
        Err(_) => vec![11, 12, 13],
    };
    for seed in seeds {
        println!("seed {seed}");
        let mut p = Pair::new();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for _ in 0..8 {
            random_edit(&p.a, &mut rng);
        }
        fs::write(p.a.join("anchor"), b"x").unwrap();
        p.sync();
        for round in 0..3 {
            for _ in 0..3 + rng.below(8) {
                random_edit(&p.a, &mut rng);
            }
            fs::write(p.a.join("anchor"), rand_bytes(rng.next(), 10)).unwrap();
            let (from, to) = p.add_a();
            let step = 1 + rng.below(6);
            p.sb = None;
            let out = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "checkout::checkout_crash_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("LEFT_TEST_CHILD_DIR", p.t.path())
                .env("LEFT_TEST_FROM", from.unwrap().0.to_string())
                .env("LEFT_TEST_TO", to.0.to_string())
                .env("LEFT_FAULT", format!("abort-checkout:{step}"))
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            // Fewer renames than `step`: the child finished normally.
            if out.status.success() {
                assert!(
                    stdout.contains("CHILD-FINISHED Ok"),
                    "seed {seed} round {round}: {stdout}"
                );
            } else {
                assert!(
                    !stdout.contains("CHILD-FINISHED"),
                    "seed {seed} round {round}: {stdout}"
                );
            }
            let sb = Store::open(&p.t.path().join("sb")).unwrap();
            let r = sb
                .resume_checkout(&p.b, &CheckoutOptions::default(), &NoProgress)
                .unwrap();
            assert_eq!(
                r.is_some(),
                !out.status.success(),
                "seed {seed} round {round}"
            );
            if let Some(r) = r {
                assert!(r.kept.is_empty(), "seed {seed} round {round}: {:?}", r.kept);
            }
            assert_eq!(sb.head().unwrap(), Some(to));
            p.sb = Some(sb);
            p.assert_same();
        }
    }
}

// ------------------------------------------------------------------ store folder permissions

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Child side of `the_store_folder_is_private_and_repaired_at_open`: opens the store named by the
/// environment (its warning goes to this process's stderr).
#[test]
#[ignore = "run by the_store_folder_is_private_and_repaired_at_open"]
fn open_store_child() {
    let Ok(dir) = std::env::var("LEFT_TEST_STORE_DIR") else {
        return;
    };
    let s = Store::open(Path::new(&dir)).unwrap();
    println!("CHILD-OPENED head={:?}", s.head().unwrap());
}

#[test]
fn the_store_folder_is_private_and_repaired_at_open() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("store");
    // A fresh store: only its owner may enter it, and the lock file is the owner's alone.
    let s = Store::create(&dir, small_cfg()).unwrap();
    assert_eq!(mode_of(&dir), 0o700, "a new store folder");
    assert_eq!(mode_of(&dir.join("lock")) & 0o077, 0, "the lock file");
    drop(s);
    // An empty folder made beforehand (0755) becomes private too.
    let pre = t.path().join("pre");
    fs::create_dir(&pre).unwrap();
    fs::set_permissions(&pre, fs::Permissions::from_mode(0o755)).unwrap();
    drop(Store::create(&pre, small_cfg()).unwrap());
    assert_eq!(mode_of(&pre), 0o700, "a store made in an existing folder");

    // A store an older version left at 0755: repaired at open, with a warning on stderr.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "checkout::open_store_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LEFT_TEST_STORE_DIR", &dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("CHILD-OPENED"), "{stdout}\n{stderr}");
    assert_eq!(mode_of(&dir), 0o700, "repaired at open");
    let warning: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("left: warning:"))
        .collect();
    assert_eq!(warning.len(), 1, "{stderr}");
    assert!(
        warning[0].contains("readable by other users") && warning[0].contains("755"),
        "{}",
        warning[0]
    );
    // Once private, opening says nothing.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "checkout::open_store_child",
            "--ignored",
            "--nocapture",
        ])
        .env("LEFT_TEST_STORE_DIR", &dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("left: warning:"), "{stderr}");
    // A read-only view repairs it as well.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
    drop(Store::open_read_only(&dir).unwrap());
    assert_eq!(mode_of(&dir), 0o700, "repaired at a read-only open");
}

// ------------------------------------------------------------------ crafted trees cannot jam

/// A file entry claiming 1 KiB whose chunk list covers 16 MiB (interior lengths that do not add
/// up), and a file entry pointing at a folder node: refused before the journal, nothing touched;
/// add, gc and an honest checkout still work.
#[test]
fn a_malformed_tree_is_refused_before_the_journal_and_jams_nothing() {
    let p = Pair::new();
    fs::write(p.a.join("f"), b"v1").unwrap();
    p.sync();
    let s = p.sb();
    let head = s.head().unwrap().unwrap();
    let chunk = rand_bytes(5, 16384);
    let cid = ChunkId(Hash::of(&chunk));
    s.put_chunk(cid, &codec::encode(&chunk)).unwrap();
    let leaf = Node::ChunkList(left_store::node::ChunkListNode {
        level: 0,
        entries: vec![
            ChunkRef {
                id: cid.0,
                len: 16384
            };
            64
        ],
    });
    let (leaf_id, b) = leaf.encode_with_id().unwrap();
    s.put_node(leaf_id, &b).unwrap();
    let top = Node::ChunkList(left_store::node::ChunkListNode {
        level: 1,
        entries: vec![
            ChunkRef {
                id: leaf_id.0,
                len: 64
            };
            16
        ],
    });
    let (top_id, b) = top.encode_with_id().unwrap();
    s.put_node(top_id, &b).unwrap();
    let (fid, b) = Node::File(FileNode {
        size: 1024,
        mode: 0o644,
        mtime_ns: 1_000_000_000,
        content: Content::Tree(top_id),
    })
    .encode_with_id()
    .unwrap();
    assert!(s.put_node(fid, &b).unwrap());
    let lying = DirEntry {
        name: b"lying".to_vec(),
        kind: EntryKind::File,
        mode: 0o644,
        mtime_ns: 1_000_000_000,
        size: 1024,
        target: Target::Node(fid),
    };
    let folder = put_dir(s, vec![file_entry(s, "inner", b"x", None)]);
    let on_folder = DirEntry {
        name: b"on-folder".to_vec(),
        kind: EntryKind::File,
        mode: 0o644,
        mtime_ns: 1_000_000_000,
        size: 0,
        target: Target::Node(folder),
    };
    for (bad, what) in [(lying, "cover"), (on_folder, "not a file")] {
        let f2 = file_entry(s, "f", b"v2", None);
        let to = put_snap(s, put_dir(s, vec![bad, f2]), Some(head));
        let before = picture(&p.b);
        let e = s
            .checkout(
                &p.b,
                Some(head),
                to,
                &CheckoutOptions::default(),
                &NoProgress,
            )
            .unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(what), "{e}");
        assert!(s.validate_tree(to, Some(head)).is_err());
        assert_eq!(s.pending_checkout().unwrap(), None, "{what}: journal left");
        assert_eq!(picture(&p.b), before);
        assert_eq!(s.head().unwrap(), Some(head));
    }
    // Nothing is stuck: gc and add run, an honest change checks out.
    s.gc(&GcOptions::default(), &NoProgress).unwrap();
    fs::write(p.b.join("local"), b"mine").unwrap();
    assert!(add_msg(s, &p.b, "after").is_some());
}

/// A journal an older version left for a malformed tree is dropped on resume; gc runs while a
/// checkout is journaled and keeps its trees; `abort_checkout` drops one.
#[test]
fn journaled_checkouts_do_not_block_gc_and_can_be_aborted() {
    let p = Pair::new();
    fs::write(p.a.join("f"), b"v1").unwrap();
    p.sync();
    let s = p.sb();
    let head = s.head().unwrap().unwrap();
    // A `to` no ref names, journaled (a checkout cut short).
    let to = put_snap(
        s,
        put_dir(s, vec![file_entry(s, "f", b"v2 only in to", None)]),
        Some(head),
    );
    s.debug_write_journal(Some(head), to).unwrap();
    s.gc(&GcOptions::default(), &NoProgress)
        .expect("gc runs while a checkout is journaled");
    let r = s
        .resume_checkout(&p.b, &CheckoutOptions::default(), &NoProgress)
        .unwrap()
        .unwrap();
    assert_eq!(r.files_written, 1);
    assert_eq!(fs::read(p.b.join("f")).unwrap(), b"v2 only in to");
    assert_eq!(s.head().unwrap(), Some(to));
    // Abort: head stays, the folder keeps what it has, the next add records it.
    let to2 = put_snap(
        s,
        put_dir(s, vec![file_entry(s, "f", b"v3", None)]),
        Some(to),
    );
    s.debug_write_journal(Some(to), to2).unwrap();
    assert_eq!(s.abort_checkout().unwrap(), Some((Some(to), to2)));
    assert_eq!(s.pending_checkout().unwrap(), None);
    assert_eq!(s.head().unwrap(), Some(to));
    // A journal for a malformed tree (an older version wrote it): dropped on resume.
    let folder = put_dir(s, vec![file_entry(s, "inner", b"x", None)]);
    let bad = put_snap(
        s,
        put_dir(
            s,
            vec![DirEntry {
                name: b"f".to_vec(),
                kind: EntryKind::File,
                mode: 0o644,
                mtime_ns: 1_000_000_000,
                size: 0,
                target: Target::Node(folder),
            }],
        ),
        Some(to),
    );
    s.debug_write_journal(Some(to), bad).unwrap();
    let r = s
        .resume_checkout(&p.b, &CheckoutOptions::default(), &NoProgress)
        .unwrap()
        .unwrap();
    assert!(r.kept.iter().any(|k| k.reason.contains("dropped")), "{r:?}");
    assert_eq!(s.pending_checkout().unwrap(), None);
    assert_eq!(s.head().unwrap(), Some(to));
    assert!(add_msg(s, &p.b, "after").is_some() || s.head().unwrap() == Some(to));
}
