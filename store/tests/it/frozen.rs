//! `.leftignore` never deletes: a tracked path that a rule starts to cover is *frozen* (its entry
//! is carried forward from head, local edits and deletions of it are not published), and
//! `Store::forget` drops one on purpose.

use crate::common::small_cfg;
use left_store::*;
use std::fs;
use std::path::{Path, PathBuf};

const DEV_A: [u8; 32] = [0x11; 32];
const DEV_B: [u8; 32] = [0x22; 32];

struct Fx {
    dir: tempfile::TempDir,
    store: Store,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("store"), small_cfg()).unwrap();
    fs::create_dir(dir.path().join("share")).unwrap();
    Fx { dir, store }
}

impl Fx {
    fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }
    fn write(&self, rel: &str, data: &str) {
        let p = self.share().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    fn add_from(&self, share: &Path, dev: [u8; 32]) -> AddReport {
        let opts = AddOptions {
            device: dev,
            ..Default::default()
        };
        self.store.add(share, &[], &opts, &NoProgress).unwrap()
    }
    fn add(&self) -> AddReport {
        self.add_from(&self.share(), DEV_A)
    }
    fn head(&self) -> NodeId {
        self.store.head().unwrap().unwrap()
    }
    fn entry(&self, snap: NodeId, rel: &str) -> Option<node::DirEntry> {
        self.store.entry_at(snap, Path::new(rel)).unwrap()
    }
}

/// A share with `a.txt`, `x.log` and `sub/y.log`, added; then `.leftignore` gets `*.log`.
fn frozen_fx() -> (Fx, NodeId) {
    let f = fx();
    f.write("a.txt", "a");
    f.write("x.log", "x1");
    f.write("sub/y.log", "y1");
    f.add();
    let s1 = f.head();
    f.write(".leftignore", "*.log\n");
    let r = f.add();
    assert!(r.snapshot.is_some(), "the new .leftignore is recorded");
    assert_eq!(r.frozen, 2, "x.log and sub/y.log are frozen: {r:?}");
    (f, s1)
}

#[test]
fn ignoring_tracked_files_keeps_them_in_the_next_snapshot() {
    let (f, s1) = frozen_fx();
    let s2 = f.head();
    assert!(f.entry(s2, ".leftignore").is_some());
    for p in ["x.log", "sub/y.log", "a.txt"] {
        assert_eq!(f.entry(s2, p), f.entry(s1, p), "{p} carried forward");
    }
    assert_eq!(f.store.frozen_count().unwrap(), 2);
    // A new ignored file was never tracked: it stays out.
    f.write("new.log", "n");
    f.write("a.txt", "a2");
    let r = f.add();
    assert!(r.snapshot.is_some());
    assert_eq!(f.entry(f.head(), "new.log"), None);
    assert_eq!(f.entry(f.head(), "x.log"), f.entry(s1, "x.log"));
    assert_eq!(r.frozen, 2);
}

#[test]
fn local_edits_and_deletions_of_frozen_files_are_not_published() {
    let (f, s1) = frozen_fx();
    f.write("x.log", "x2 edited locally");
    fs::remove_file(f.share().join("sub/y.log")).unwrap();
    f.add();
    let h = f.head();
    assert_eq!(
        f.entry(h, "x.log"),
        f.entry(s1, "x.log"),
        "edit not published"
    );
    assert_eq!(
        f.entry(h, "sub/y.log"),
        f.entry(s1, "sub/y.log"),
        "deletion not published"
    );
    // Deleting the whole folder that holds a frozen file does not publish its deletion either.
    fs::remove_dir(f.share().join("sub")).unwrap();
    f.add();
    assert_eq!(f.entry(f.head(), "sub/y.log"), f.entry(s1, "sub/y.log"));
}

#[test]
fn forget_drops_a_frozen_path_on_purpose_and_history_keeps_it() {
    let (f, s1) = frozen_fx();
    let before = f.head();
    let opts = AddOptions {
        device: DEV_A,
        ..Default::default()
    };
    // Not ignored: the next add would record it again, so forget refuses.
    let e = f
        .store
        .forget(&f.share(), &[PathBuf::from("a.txt")], &opts)
        .unwrap_err();
    assert!(e.to_string().contains("not ignored"), "{e}");
    // Not in the snapshot.
    assert!(f
        .store
        .forget(&f.share(), &[PathBuf::from("nope.log")], &opts)
        .is_err());
    assert_eq!(f.head(), before, "a refused forget does not move head");

    let sid = f
        .store
        .forget(&f.share(), &[PathBuf::from("x.log")], &opts)
        .unwrap();
    assert_eq!(f.head(), sid);
    assert_eq!(f.store.snapshot(sid).unwrap().parents, vec![before]);
    assert_eq!(f.entry(sid, "x.log"), None, "forgotten");
    assert_eq!(
        f.entry(sid, "sub/y.log"),
        f.entry(s1, "sub/y.log"),
        "still frozen"
    );
    assert_eq!(
        f.entry(before, "x.log"),
        f.entry(s1, "x.log"),
        "history keeps it"
    );
    assert!(f.share().join("x.log").exists(), "the file on disk stays");
    // The next add does not bring it back.
    f.write("a.txt", "a2");
    let r = f.add();
    assert!(r.snapshot.is_some());
    assert_eq!(f.entry(f.head(), "x.log"), None);
    assert_eq!(r.frozen, 1);
}

#[test]
fn a_peers_change_to_a_frozen_path_merged_into_head_is_kept() {
    let (f, s1) = frozen_fx();
    let ours = f.head();
    // A peer that does not ignore *.log edits x.log on top of s1 (its own share folder).
    let peer = f.dir.path().join("peer");
    fs::create_dir_all(peer.join("sub")).unwrap();
    fs::write(peer.join("a.txt"), "a").unwrap();
    fs::write(peer.join("x.log"), "x from the peer").unwrap();
    fs::write(peer.join("sub/y.log"), "y1").unwrap();
    f.store.set_ref("head", s1).unwrap();
    f.add_from(&peer, DEV_B);
    let theirs = f.head();
    f.store.set_ref("head", ours).unwrap();
    let merged = match f.store.merge(ours, theirs).unwrap() {
        MergeOutcome::Merged {
            snapshot,
            conflicts,
        } => {
            assert!(conflicts.is_empty(), "{conflicts:?}");
            snapshot
        }
        o => panic!("expected a merge, got {o:?}"),
    };
    f.store.set_ref("head", merged).unwrap();
    let peers = f.entry(theirs, "x.log");
    assert_ne!(peers, f.entry(s1, "x.log"));
    assert_eq!(f.entry(merged, "x.log"), peers);
    // Our share still has the old x.log (and an unrelated change): the next add keeps the peer's.
    f.write("a.txt", "a2");
    let r = f.add();
    assert!(r.snapshot.is_some());
    assert_eq!(
        f.entry(f.head(), "x.log"),
        peers,
        "the peer's change is kept"
    );
}

#[test]
fn a_leftignore_that_freezes_many_paths_is_reported() {
    let f = fx();
    for i in 0..150 {
        f.write(&format!("d{}/f{i}", i % 7), "x");
    }
    f.add();
    let s1 = f.head();
    f.write(".leftignore", "*\n!.leftignore\n");
    let r = f.add();
    assert_eq!(r.frozen, 150, "{r:?}");
    assert_eq!(r.newly_frozen, 150);
    assert!(r.newly_frozen > FROZEN_WARN);
    for i in [0, 77, 149] {
        let p = format!("d{}/f{i}", i % 7);
        assert_eq!(f.entry(f.head(), &p), f.entry(s1, &p), "{p}");
    }
    // The next add freezes nothing new.
    f.write(".leftignore", "*\n!.leftignore\n# again\n");
    let r = f.add();
    assert_eq!((r.frozen, r.newly_frozen), (150, 0));
}
