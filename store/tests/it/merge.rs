//! Three-way merge of snapshots (`Store::merge`, `Store::merge_bases`) and the gc retention that
//! keeps what merging needs. Snapshots are built directly from small trees (no share folder).

use crate::common::small_cfg;
use left_store::node::{Content, DirEntry, FileNode, Node, Target};
use left_store::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

const DEV_A: [u8; 32] = [0x11; 32]; // base32 "ceirceir..."
const DEV_B: [u8; 32] = [0x22; 32]; // base32 "eirceirc..."
/// 2023-11-14 22:13:20 UTC.
const T0: i64 = 1_700_000_000 * 1_000_000_000;
const SEC: i64 = 1_000_000_000;

/// One entry of a test tree.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Spec {
    /// File: content, mode, mtime.
    F(Vec<u8>, u32, i64),
    /// Symlink target.
    L(Vec<u8>),
    /// Folder: mode, mtime (parents named only by a deeper path get 0o755, 0).
    D(u32, i64),
}

fn f(content: &str, mtime: i64) -> Spec {
    Spec::F(content.as_bytes().to_vec(), 0o644, mtime)
}

type Tree = BTreeMap<String, Spec>;

fn tree(items: &[(&str, Spec)]) -> Tree {
    items
        .iter()
        .map(|(p, s)| (p.to_string(), s.clone()))
        .collect()
}

struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("store"), small_cfg()).unwrap();
    Fx { _dir: dir, store }
}

impl Fx {
    fn put(&self, n: Node) -> NodeId {
        let (id, bytes) = n.encode_with_id().unwrap();
        assert!(
            self.store.put_node(id, &bytes).unwrap(),
            "node {id} complete"
        );
        id
    }

    fn file_node(&self, content: &[u8], mode: u32, mtime: i64) -> NodeId {
        let mut refs = Vec::new();
        if !content.is_empty() {
            let id = ChunkId(Hash::of(content));
            self.store
                .put_chunk(id, &left_store::codec::encode(content))
                .unwrap();
            refs.push(left_store::node::ChunkRef {
                id: id.0,
                len: content.len() as u64,
            });
        }
        self.put(Node::File(FileNode {
            size: content.len() as u64,
            mode,
            mtime_ns: mtime,
            content: Content::Inline(refs),
        }))
    }

    /// Builds the folder holding `items` (paths relative to it) and returns its id.
    fn build(&self, items: &Tree) -> NodeId {
        let mut top: BTreeMap<Vec<u8>, (Option<Spec>, Tree)> = BTreeMap::new();
        for (p, s) in items {
            match p.split_once('/') {
                None => top.entry(p.as_bytes().to_vec()).or_default().0 = Some(s.clone()),
                Some((first, rest)) => {
                    top.entry(first.as_bytes().to_vec())
                        .or_default()
                        .1
                        .insert(rest.to_string(), s.clone());
                }
            }
        }
        let mut entries = Vec::new();
        for (name, (spec, sub)) in top {
            let e = match spec {
                Some(Spec::F(c, mode, mtime)) => {
                    assert!(sub.is_empty(), "a file with children");
                    DirEntry {
                        name,
                        kind: EntryKind::File,
                        mode,
                        mtime_ns: mtime,
                        size: c.len() as u64,
                        target: Target::Node(self.file_node(&c, mode, mtime)),
                    }
                }
                Some(Spec::L(t)) => {
                    assert!(sub.is_empty(), "a link with children");
                    DirEntry {
                        name,
                        kind: EntryKind::Symlink,
                        mode: 0o777,
                        mtime_ns: 0,
                        size: t.len() as u64,
                        target: Target::Link(t),
                    }
                }
                Some(Spec::D(mode, mtime)) => DirEntry {
                    name,
                    kind: EntryKind::Dir,
                    mode,
                    mtime_ns: mtime,
                    size: 0,
                    target: Target::Node(self.build(&sub)),
                },
                None => DirEntry {
                    name,
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    mtime_ns: 0,
                    size: 0,
                    target: Target::Node(self.build(&sub)),
                },
            };
            entries.push(e);
        }
        let mut nodes = Vec::new();
        let root = left_store::node::build_dir(entries, &mut |id, b| {
            nodes.push((id, b));
            Ok(())
        })
        .unwrap();
        // Children first, so each node is marked complete when stored.
        for (id, b) in nodes {
            assert!(self.store.put_node(id, &b).unwrap());
        }
        root
    }

    fn snap(&self, t: &Tree, parents: &[NodeId], device: [u8; 32], time_ns: i64) -> NodeId {
        let root = self.build(t);
        self.store
            .put_snapshot(&Snapshot {
                root,
                parents: parents.to_vec(),
                device,
                time_ns,
                message: "t".into(),
            })
            .unwrap()
    }

    /// Path -> (kind, mode, mtime, content or link target) of a snapshot's tree; folders are
    /// `('d', mode, mtime, [])`.
    fn flat(&self, snap: NodeId) -> BTreeMap<String, (char, u32, i64, Vec<u8>)> {
        let root = self.store.snapshot(snap).unwrap().root;
        let mut out = BTreeMap::new();
        self.flat_dir(root, "", &mut out);
        out
    }

    fn flat_dir(
        &self,
        dir: NodeId,
        prefix: &str,
        out: &mut BTreeMap<String, (char, u32, i64, Vec<u8>)>,
    ) {
        for e in self.store.dir_entries(dir).unwrap() {
            let p = format!("{prefix}{}", String::from_utf8(e.name.clone()).unwrap());
            match e.target {
                Target::Link(l) => {
                    out.insert(p, ('l', e.mode, e.mtime_ns, l));
                }
                Target::Node(id) if e.kind == EntryKind::Dir => {
                    out.insert(p.clone(), ('d', e.mode, e.mtime_ns, Vec::new()));
                    self.flat_dir(id, &format!("{p}/"), out);
                }
                Target::Node(id) => {
                    let Node::File(fnode) = self.store.read_node(id).unwrap() else {
                        panic!("{p} is not a file node");
                    };
                    assert_eq!(
                        (fnode.mode, fnode.mtime_ns, fnode.size),
                        (e.mode, e.mtime_ns, e.size)
                    );
                    let Content::Inline(refs) = fnode.content else {
                        panic!("test files are small");
                    };
                    let mut bytes = Vec::new();
                    for r in refs {
                        bytes.extend(self.store.read_chunk(ChunkId(r.id)).unwrap());
                    }
                    out.insert(p, ('f', e.mode, e.mtime_ns, bytes));
                }
            }
        }
    }

    /// Merges both ways, checks the outcomes mirror each other (the same merge snapshot, whole
    /// and complete, with the fixed header), and returns `merge(a, b)`.
    fn merge(&self, a: NodeId, b: NodeId) -> MergeOutcome {
        let ab = self.store.merge(a, b).unwrap();
        let ba = self.store.merge(b, a).unwrap();
        match (&ab, &ba) {
            (MergeOutcome::UpToDate, MergeOutcome::FastForward(x)) => assert_eq!(*x, a),
            (MergeOutcome::FastForward(x), MergeOutcome::UpToDate) => assert_eq!(*x, b),
            (MergeOutcome::UpToDate, MergeOutcome::UpToDate) => assert_eq!(a, b),
            (
                MergeOutcome::Merged {
                    snapshot: s1,
                    conflicts: c1,
                },
                MergeOutcome::Merged {
                    snapshot: s2,
                    conflicts: c2,
                },
            ) => {
                assert_eq!(s1, s2, "merge(a, b) and merge(b, a) differ");
                let pair = |c: &[Conflict]| -> BTreeSet<(PathBuf, PathBuf)> {
                    c.iter().map(|c| (c.path.clone(), c.copy.clone())).collect()
                };
                assert_eq!(pair(c1), pair(c2));
                assert!(
                    self.store.has_nodes(&[*s1]).unwrap()[0],
                    "merge is complete"
                );
                let s = self.store.snapshot(*s1).unwrap();
                let (sa, sb) = (
                    self.store.snapshot(a).unwrap(),
                    self.store.snapshot(b).unwrap(),
                );
                let mut parents = vec![a, b];
                parents.sort();
                assert_eq!(s.parents, parents);
                assert_eq!(s.device, [0; 32]);
                assert_eq!(s.time_ns, sa.time_ns.max(sb.time_ns));
                assert_eq!(s.message, "merge");
                // Merging again gives the same snapshot; the merge is ahead of both.
                assert_eq!(self.store.merge(a, b).unwrap(), ab);
                assert_eq!(self.store.merge(*s1, a).unwrap(), MergeOutcome::UpToDate);
                assert_eq!(
                    self.store.merge(b, *s1).unwrap(),
                    MergeOutcome::FastForward(*s1)
                );
            }
            _ => panic!("asymmetric outcomes {ab:?} / {ba:?}"),
        }
        ab
    }

    fn merged(&self, a: NodeId, b: NodeId) -> (NodeId, Vec<Conflict>) {
        match self.merge(a, b) {
            MergeOutcome::Merged {
                snapshot,
                conflicts,
            } => (snapshot, conflicts),
            o => panic!("expected a merge, got {o:?}"),
        }
    }
}

fn item(s: &Spec) -> (char, u32, i64, Vec<u8>) {
    match s {
        Spec::F(c, m, t) => ('f', *m, *t, c.clone()),
        Spec::L(l) => ('l', 0o777, 0, l.clone()),
        Spec::D(m, t) => ('d', *m, *t, Vec::new()),
    }
}

/// The picture `flat` gives of a tree built from `t` (implicit parents included).
fn expect(t: &Tree) -> BTreeMap<String, (char, u32, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for (p, s) in t {
        let mut pre = String::new();
        for c in p.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            pre.push_str(c);
            out.entry(pre.clone())
                .or_insert(('d', 0o755, 0, Vec::new()));
            pre.push('/');
        }
        out.insert(p.clone(), item(s));
    }
    out
}

#[test]
fn disjoint_changes_merge() {
    let x = fx();
    let base = tree(&[("a", f("1", T0)), ("b", f("2", T0)), ("d/c", f("3", T0))]);
    let r = x.snap(&base, &[], DEV_A, T0);
    let mut o = base.clone();
    o.insert("a".into(), f("1 ours", T0 + SEC));
    o.insert("d/new".into(), f("n", T0 + SEC));
    let mut t = base.clone();
    t.insert("b".into(), f("2 theirs", T0 + 2 * SEC));
    t.remove("d/c");
    let so = x.snap(&o, &[r], DEV_A, T0 + SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + 2 * SEC);
    assert_eq!(x.store.merge_bases(so, st).unwrap().bases, vec![r]);
    let (m, conflicts) = x.merged(so, st);
    assert!(conflicts.is_empty());
    let want = tree(&[
        ("a", f("1 ours", T0 + SEC)),
        ("b", f("2 theirs", T0 + 2 * SEC)),
        ("d/new", f("n", T0 + SEC)),
    ]);
    assert_eq!(x.flat(m), expect(&want));
}

#[test]
fn same_file_edited_on_both_sides_keeps_both() {
    let x = fx();
    let base = tree(&[("notes.txt", f("v0", T0)), ("other", f("o", T0))]);
    let r = x.snap(&base, &[], DEV_A, T0);
    let mut o = base.clone();
    o.insert("notes.txt".into(), f("ours", T0 + SEC));
    let mut t = base.clone();
    t.insert("notes.txt".into(), f("theirs", T0 + 5 * SEC));
    let so = x.snap(&o, &[r], DEV_A, T0 + SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + 5 * SEC);
    let (m, conflicts) = x.merged(so, st);
    // Theirs is newer: it keeps the name; ours is kept under its mtime and device.
    let copy = "notes.sync-conflict-20231114-221321-ceirceir.txt";
    let mut want = t.clone();
    want.insert(copy.into(), f("ours", T0 + SEC));
    assert_eq!(x.flat(m), expect(&want));
    assert_eq!(
        conflicts,
        vec![Conflict {
            path: "notes.txt".into(),
            copy: copy.into(),
            winner: MergeSide::Theirs,
            winner_device: DEV_B,
            loser_device: DEV_A,
        }]
    );
    // Seen from the other side, the winner is "ours".
    let MergeOutcome::Merged { conflicts, .. } = x.store.merge(st, so).unwrap() else {
        panic!()
    };
    assert_eq!(conflicts[0].winner, MergeSide::Ours);

    // Equal mtimes: the greater device wins.
    let mut o2 = base.clone();
    o2.insert("notes.txt".into(), f("ours", T0 + SEC));
    let mut t2 = base.clone();
    t2.insert("notes.txt".into(), f("theirs", T0 + SEC));
    let so2 = x.snap(&o2, &[r], DEV_A, T0 + SEC);
    let st2 = x.snap(&t2, &[r], DEV_B, T0 + SEC);
    let (m2, c2) = x.merged(so2, st2);
    let mut want = t2.clone();
    want.insert(
        "notes.sync-conflict-20231114-221321-ceirceir.txt".into(),
        f("ours", T0 + SEC),
    );
    assert_eq!(x.flat(m2), expect(&want));
    assert_eq!(c2.len(), 1);
}

#[test]
fn conflict_name_already_taken_gets_a_number() {
    let x = fx();
    let copy = "n.sync-conflict-20231114-221321-ceirceir.txt";
    let base = tree(&[("n.txt", f("v0", T0)), (copy, f("an older copy", T0))]);
    let r = x.snap(&base, &[], DEV_A, T0);
    let mut o = base.clone();
    o.insert("n.txt".into(), f("ours", T0 + SEC));
    let mut t = base.clone();
    t.insert("n.txt".into(), f("theirs", T0 + 2 * SEC));
    let so = x.snap(&o, &[r], DEV_A, T0 + SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + 2 * SEC);
    let (m, conflicts) = x.merged(so, st);
    let copy2 = "n.sync-conflict-20231114-221321-ceirceir-2.txt";
    let mut want = t.clone();
    want.insert(copy2.into(), f("ours", T0 + SEC));
    assert_eq!(x.flat(m), expect(&want));
    assert_eq!(conflicts[0].copy, PathBuf::from(copy2));
}

/// Names near ext4's 255-byte limit: before, a conflict copy of a name over ~215 bytes was longer
/// than 255 bytes, so checkout could not write it and the losing version lived only in the
/// store. Two long names cut to the same prefix get different copies, and every copy can be
/// created in a real folder.
#[test]
fn conflict_copies_of_long_names_fit_in_a_folder() {
    let x = fx();
    let prefix = "é".repeat(120); // 240 bytes
    let one = format!("{prefix}-one.txt");
    let two = format!("{prefix}-two.txt");
    let base = tree(&[(one.as_str(), f("v0", T0)), (two.as_str(), f("w0", T0))]);
    let r = x.snap(&base, &[], DEV_A, T0);
    let mut o = base.clone();
    o.insert(one.clone(), f("ours 1", T0 + SEC));
    o.insert(two.clone(), f("ours 2", T0 + SEC));
    let mut t = base.clone();
    t.insert(one.clone(), f("theirs 1", T0 + 2 * SEC));
    t.insert(two.clone(), f("theirs 2", T0 + 2 * SEC));
    let so = x.snap(&o, &[r], DEV_A, T0 + SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + 2 * SEC);
    let (m, conflicts) = x.merged(so, st);
    assert_eq!(conflicts.len(), 2);
    let copies: BTreeSet<PathBuf> = conflicts.iter().map(|c| c.copy.clone()).collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    let dir = tempfile::tempdir().unwrap();
    for c in &conflicts {
        let name = c.copy.as_os_str().len();
        assert!(name <= CONFLICT_NAME_MAX, "{name} bytes: {:?}", c.copy);
        std::fs::write(dir.path().join(&c.copy), b"x")
            .unwrap_or_else(|e| panic!("{:?} cannot be created: {e}", c.copy));
    }
    let flat = x.flat(m);
    let kept: BTreeSet<&Vec<u8>> = flat.values().map(|v| &v.3).collect();
    for v in ["ours 1", "ours 2", "theirs 1", "theirs 2"] {
        assert!(kept.contains(&v.as_bytes().to_vec()), "{v} lost");
    }
    // Deterministic: the same merge again gives the same names.
    let (m2, _) = x.merged(so, st);
    assert_eq!(x.flat(m2), flat);
}

#[test]
fn edit_beats_delete_both_ways() {
    let x = fx();
    let base = tree(&[
        ("a", f("a0", T0)),
        ("b", f("b0", T0)),
        ("l", Spec::L(b"x".to_vec())),
    ]);
    let r = x.snap(&base, &[], DEV_A, T0);
    // Ours edits a and deletes b; theirs deletes a, edits b, and repoints the link ours deleted.
    let mut o = base.clone();
    o.insert("a".into(), f("a1", T0 + SEC));
    o.remove("b");
    o.remove("l");
    let mut t = base.clone();
    t.remove("a");
    t.insert("b".into(), f("b1", T0 + SEC));
    t.insert("l".into(), Spec::L(b"y".to_vec()));
    let so = x.snap(&o, &[r], DEV_A, T0 + SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + SEC);
    let (m, conflicts) = x.merged(so, st);
    assert!(conflicts.is_empty());
    let want = tree(&[
        ("a", f("a1", T0 + SEC)),
        ("b", f("b1", T0 + SEC)),
        ("l", Spec::L(b"y".to_vec())),
    ]);
    assert_eq!(x.flat(m), expect(&want));
    // A deletion on one side with nothing changed on the other is a deletion.
    let mut t2 = base.clone();
    t2.remove("a");
    let st2 = x.snap(&t2, &[r], DEV_B, T0 + SEC);
    let mut o2 = base.clone();
    o2.insert("b".into(), f("b2", T0 + SEC));
    let so2 = x.snap(&o2, &[r], DEV_A, T0 + SEC);
    let (m2, _) = x.merged(so2, st2);
    assert!(!x.flat(m2).contains_key("a"));
}

#[test]
fn folder_deleted_while_a_file_inside_was_edited() {
    let x = fx();
    let base = tree(&[
        ("d/x", f("x0", T0)),
        ("d/y", f("y0", T0)),
        ("d/sub/z", f("z0", T0)),
        ("keep", f("k", T0)),
    ]);
    let r = x.snap(&base, &[], DEV_A, T0);
    let o: Tree = base
        .iter()
        .filter(|(p, _)| !p.starts_with("d/"))
        .map(|(p, s)| (p.clone(), s.clone()))
        .collect();
    let mut t = base.clone();
    t.insert("d/x".into(), f("x1", T0 + SEC));
    t.insert("d/sub/new".into(), f("n", T0 + SEC));
    let so = x.snap(&o, &[r], DEV_A, T0 + SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + SEC);
    let (m, conflicts) = x.merged(so, st);
    assert!(conflicts.is_empty());
    // Unchanged contents go with the deletion; the edit and the new file stay.
    let want = tree(&[
        ("d/x", f("x1", T0 + SEC)),
        ("d/sub/new", f("n", T0 + SEC)),
        ("keep", f("k", T0)),
    ]);
    assert_eq!(x.flat(m), expect(&want));
    // Theirs only deleted inside the folder ours deleted: the folder is gone.
    let mut t2 = base.clone();
    t2.remove("d/y");
    let st2 = x.snap(&t2, &[r], DEV_B, T0 + SEC);
    let (m2, _) = x.merged(so, st2);
    assert_eq!(x.flat(m2), expect(&o));
}

#[test]
fn folder_against_file_keeps_the_folder() {
    let x = fx();
    let base = tree(&[("a", f("a", T0))]);
    let r = x.snap(&base, &[], DEV_A, T0);
    let mut o = base.clone();
    o.insert("p/inner".into(), f("i", T0 + SEC));
    let mut t = base.clone();
    t.insert("p".into(), f("a file", T0 + 9 * SEC));
    let so = x.snap(&o, &[r], DEV_A, T0 + SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + 9 * SEC);
    let (m, conflicts) = x.merged(so, st);
    // The folder keeps the name although the file is newer; the file moves aside.
    let copy = "p.sync-conflict-20231114-221329-eirceirc";
    let mut want = o.clone();
    want.insert(copy.into(), f("a file", T0 + 9 * SEC));
    assert_eq!(x.flat(m), expect(&want));
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].path, PathBuf::from("p"));
    assert_eq!(conflicts[0].winner, MergeSide::Ours);
    assert_eq!(conflicts[0].loser_device, DEV_B);

    // A folder replaced by a file on one side while the other only deleted inside it: the file
    // takes the name, no conflict.
    let base = tree(&[("d/x", f("x", T0)), ("d/y", f("y", T0))]);
    let r = x.snap(&base, &[], DEV_A, T0 + 20 * SEC);
    let o = tree(&[("d", f("now a file", T0 + 21 * SEC))]);
    let t = tree(&[("d/x", f("x", T0))]);
    let so = x.snap(&o, &[r], DEV_A, T0 + 21 * SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + 21 * SEC);
    let (m, conflicts) = x.merged(so, st);
    assert!(conflicts.is_empty());
    assert_eq!(x.flat(m), expect(&o));
    // ... but when the other side edited inside, both stay.
    let t = tree(&[("d/x", f("x edited", T0 + 22 * SEC)), ("d/y", f("y", T0))]);
    let st = x.snap(&t, &[r], DEV_B, T0 + 22 * SEC);
    let (m, conflicts) = x.merged(so, st);
    let mut want = tree(&[("d/x", f("x edited", T0 + 22 * SEC))]);
    want.insert(
        "d.sync-conflict-20231114-221341-ceirceir".into(),
        f("now a file", T0 + 21 * SEC),
    );
    assert_eq!(x.flat(m), expect(&want));
    assert_eq!(conflicts.len(), 1);
}

#[test]
fn metadata_change_and_content_change_both_survive() {
    let x = fx();
    let base = tree(&[("s", Spec::F(b"#!/bin/sh".to_vec(), 0o644, T0))]);
    let r = x.snap(&base, &[], DEV_A, T0);
    let o = tree(&[("s", Spec::F(b"#!/bin/sh".to_vec(), 0o755, T0))]); // chmod +x
    let t = tree(&[(
        "s",
        Spec::F(b"#!/bin/sh\necho hi".to_vec(), 0o644, T0 + SEC),
    )]); // edit
    let so = x.snap(&o, &[r], DEV_A, T0 + SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + SEC);
    let (m, conflicts) = x.merged(so, st);
    assert!(conflicts.is_empty());
    let want = tree(&[(
        "s",
        Spec::F(b"#!/bin/sh\necho hi".to_vec(), 0o755, T0 + SEC),
    )]);
    assert_eq!(x.flat(m), expect(&want));

    // The same content on both sides with different metadata: the greater (mtime, mode).
    let o = tree(&[("s", Spec::F(b"same".to_vec(), 0o600, T0 + 3 * SEC))]);
    let t = tree(&[("s", Spec::F(b"same".to_vec(), 0o755, T0 + 2 * SEC))]);
    let so = x.snap(&o, &[r], DEV_A, T0 + 3 * SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + 3 * SEC);
    let (m, conflicts) = x.merged(so, st);
    assert!(conflicts.is_empty());
    assert_eq!(x.flat(m), expect(&o));
}

#[test]
fn both_added_the_same_file() {
    let x = fx();
    let r = x.snap(&tree(&[("a", f("a", T0))]), &[], DEV_A, T0);
    let o = tree(&[("a", f("a", T0)), ("new/n", f("same", T0 + SEC))]);
    let t = tree(&[
        ("a", f("a", T0)),
        ("new/n", f("same", T0 + SEC)),
        ("t", f("t", T0)),
    ]);
    let so = x.snap(&o, &[r], DEV_A, T0 + SEC);
    let st = x.snap(&t, &[r], DEV_B, T0 + 2 * SEC);
    let (m, conflicts) = x.merged(so, st);
    assert!(conflicts.is_empty());
    assert_eq!(x.flat(m), expect(&t));
    // Added on both sides with different content: a conflict (no base to prefer one).
    let t2 = tree(&[("a", f("a", T0)), ("new/n", f("other", T0 + SEC))]);
    let st2 = x.snap(&t2, &[r], DEV_B, T0 + 2 * SEC);
    let (m2, c2) = x.merged(so, st2);
    assert_eq!(c2.len(), 1);
    // Equal mtimes, DEV_B is greater: theirs keeps the name.
    let fl = x.flat(m2);
    assert_eq!(fl["new/n"].3, b"other");
    assert_eq!(
        fl["new/n.sync-conflict-20231114-221321-ceirceir"].3,
        b"same"
    );
}

#[test]
fn criss_cross_uses_a_virtual_base() {
    let x = fx();
    let r = x.snap(
        &tree(&[("f", f("0", T0)), ("g", f("0", T0)), ("h", f("0", T0))]),
        &[],
        DEV_A,
        T0,
    );
    let a1 = x.snap(
        &tree(&[
            ("f", f("a", T0 + SEC)),
            ("g", f("0", T0)),
            ("h", f("0", T0)),
        ]),
        &[r],
        DEV_A,
        T0 + SEC,
    );
    let b1 = x.snap(
        &tree(&[
            ("f", f("0", T0)),
            ("g", f("b", T0 + SEC)),
            ("h", f("0", T0)),
        ]),
        &[r],
        DEV_B,
        T0 + SEC,
    );
    // Both sides merged a1 and b1, differently (b also changed h in its merge).
    let a2 = x.snap(
        &tree(&[
            ("f", f("a", T0 + SEC)),
            ("g", f("b", T0 + SEC)),
            ("h", f("0", T0)),
        ]),
        &[a1, b1],
        [0; 32],
        T0 + 2 * SEC,
    );
    let b2 = x.snap(
        &tree(&[
            ("f", f("a", T0 + SEC)),
            ("g", f("b", T0 + SEC)),
            ("h", f("x", T0 + 2 * SEC)),
        ]),
        &[a1, b1],
        [0; 32],
        T0 + 2 * SEC,
    );
    let a3 = x.snap(
        &tree(&[
            ("f", f("f3", T0 + 3 * SEC)),
            ("g", f("g3", T0 + 3 * SEC)),
            ("h", f("0", T0)),
        ]),
        &[a2],
        DEV_A,
        T0 + 3 * SEC,
    );
    let b3 = x.snap(
        &tree(&[
            ("f", f("a", T0 + SEC)),
            ("g", f("b", T0 + SEC)),
            ("h", f("x", T0 + 2 * SEC)),
        ]),
        &[b2],
        DEV_B,
        T0 + 3 * SEC,
    );
    let mut both = vec![a1, b1];
    both.sort();
    let mb = x.store.merge_bases(a3, b3).unwrap();
    assert_eq!(mb.bases, both);
    assert!(mb.is_complete());
    assert_eq!(x.store.merge_bases(b3, a3).unwrap(), mb);
    // Against either base alone f or g would conflict; against the virtual base (a1 and b1
    // merged: f=a, g=b, h=0) every change is one-sided.
    let (m, conflicts) = x.merged(a3, b3);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let want = tree(&[
        ("f", f("f3", T0 + 3 * SEC)),
        ("g", f("g3", T0 + 3 * SEC)),
        ("h", f("x", T0 + 2 * SEC)),
    ]);
    assert_eq!(x.flat(m), expect(&want));

    // The merge of merges: a4 = merge(a3, b3) against b2's child: one base (b3).
    let b4 = x.snap(
        &tree(&[
            ("f", f("a", T0 + SEC)),
            ("g", f("b", T0 + SEC)),
            ("h", f("x", T0 + 2 * SEC)),
            ("i", f("i", T0 + 4 * SEC)),
        ]),
        &[b3],
        DEV_B,
        T0 + 4 * SEC,
    );
    assert_eq!(x.store.merge_bases(m, b4).unwrap().bases, vec![b3]);
    let (m2, c2) = x.merged(m, b4);
    assert!(c2.is_empty());
    let mut want2 = want.clone();
    want2.insert("i".into(), f("i", T0 + 4 * SEC));
    assert_eq!(x.flat(m2), expect(&want2));
}

#[test]
fn unrelated_histories_merge_against_the_empty_tree() {
    let x = fx();
    let a = x.snap(
        &tree(&[
            ("mine", f("m", T0)),
            ("both", f("A", T0 + SEC)),
            ("same", f("s", T0)),
        ]),
        &[],
        DEV_A,
        T0 + SEC,
    );
    let b = x.snap(
        &tree(&[
            ("yours", f("y", T0)),
            ("both", f("B", T0)),
            ("same", f("s", T0)),
        ]),
        &[],
        DEV_B,
        T0 + SEC,
    );
    let mb = x.store.merge_bases(a, b).unwrap();
    assert!(mb.bases.is_empty() && mb.is_complete());
    let (m, conflicts) = x.merged(a, b);
    assert_eq!(conflicts.len(), 1);
    let want = tree(&[
        ("mine", f("m", T0)),
        ("yours", f("y", T0)),
        ("same", f("s", T0)),
        ("both", f("A", T0 + SEC)),
        ("both.sync-conflict-20231114-221320-eirceirc", f("B", T0)),
    ]);
    assert_eq!(x.flat(m), expect(&want));
}

#[test]
fn up_to_date_and_fast_forward() {
    let x = fx();
    let r = x.snap(&tree(&[("a", f("0", T0))]), &[], DEV_A, T0);
    let a = x.snap(&tree(&[("a", f("1", T0))]), &[r], DEV_A, T0 + SEC);
    let b = x.snap(&tree(&[("a", f("2", T0))]), &[a], DEV_B, T0 + 2 * SEC);
    assert_eq!(x.merge(b, a), MergeOutcome::UpToDate);
    assert_eq!(x.merge(b, r), MergeOutcome::UpToDate);
    assert_eq!(x.merge(r, b), MergeOutcome::FastForward(b));
    assert_eq!(x.merge(a, a), MergeOutcome::UpToDate);
    assert_eq!(x.store.merge_bases(a, b).unwrap().bases, vec![a]);
    // An equal tree does not make an ancestor "up to date" the other way.
    let c = x.snap(&tree(&[("a", f("1", T0))]), &[b], DEV_A, T0 + 3 * SEC);
    assert_eq!(x.merge(a, c), MergeOutcome::FastForward(c));
}

#[test]
fn equal_trees_with_different_ids_still_merge() {
    let x = fx();
    let r = x.snap(&tree(&[("a", f("0", T0))]), &[], DEV_A, T0);
    let t = tree(&[("a", f("1", T0 + SEC))]);
    let a = x.snap(&t, &[r], DEV_A, T0 + SEC);
    let b = x.snap(&t, &[r], DEV_B, T0 + 2 * SEC);
    assert_ne!(a, b);
    let (m, conflicts) = x.merged(a, b);
    assert!(conflicts.is_empty());
    let root = x.store.snapshot(a).unwrap().root;
    assert_eq!(x.store.snapshot(m).unwrap().root, root);
}

#[test]
fn missing_history_and_missing_trees_are_reported() {
    let x = fx();
    let ghost = NodeId(Hash::of(b"a parent this store never saw"));
    let a = x.snap(&tree(&[("a", f("a", T0))]), &[ghost], DEV_A, T0 + SEC);
    let b = x.snap(&tree(&[("b", f("b", T0))]), &[], DEV_B, T0 + SEC);
    let mb = x.store.merge_bases(a, b).unwrap();
    assert_eq!(mb.missing, vec![ghost]);
    assert!(!mb.is_complete());
    match x.store.merge(a, b) {
        Err(Error::NeedHeaders(m)) => assert_eq!(m, vec![ghost]),
        o => panic!("{o:?}"),
    }

    // A base whose tree is not stored (a header fetched as history).
    let shallow = Snapshot {
        root: NodeId(Hash::of(b"a tree that is not here")),
        parents: vec![],
        device: DEV_A,
        time_ns: T0,
        message: "old".into(),
    };
    let (sid, bytes) = Node::Snapshot(shallow).encode_with_id().unwrap();
    assert!(x.store.put_snapshot_header(sid, &bytes).unwrap());
    let c = x.snap(&tree(&[("c", f("c", T0))]), &[sid], DEV_A, T0 + SEC);
    let d = x.snap(&tree(&[("d", f("d", T0))]), &[sid], DEV_B, T0 + SEC);
    assert_eq!(x.store.merge_bases(c, d).unwrap().bases, vec![sid]);
    match x.store.merge(c, d) {
        Err(Error::NeedTree(s)) => assert_eq!(s, sid),
        o => panic!("{o:?}"),
    }
    // Ancestry alone still answers without the tree.
    assert_eq!(x.store.merge(c, sid).unwrap(), MergeOutcome::UpToDate);
}

#[test]
fn merge_of_a_merge_names_its_newest_parents_author() {
    let x = fx();
    let r = x.snap(&tree(&[("n", f("0", T0))]), &[], DEV_A, T0);
    let a = x.snap(
        &tree(&[("n", f("0", T0)), ("a", f("a", T0))]),
        &[r],
        DEV_A,
        T0 + SEC,
    );
    let b = x.snap(
        &tree(&[("n", f("0", T0)), ("b", f("b", T0))]),
        &[r],
        DEV_B,
        T0 + 2 * SEC,
    );
    let (m, _) = x.merged(a, b); // author: b's device (the newer parent)
    let c = x.snap(
        &tree(&[("n", f("c", T0 + 5 * SEC)), ("a", f("a", T0))]),
        &[a],
        DEV_A,
        T0 + 5 * SEC,
    );
    let mt = tree(&[
        ("n", f("m", T0 + 3 * SEC)),
        ("a", f("a", T0)),
        ("b", f("b", T0)),
    ]);
    let m2 = x.snap(&mt, &[m], [0; 32], T0 + 3 * SEC); // a merge-like snapshot without a device
    let (res, conflicts) = x.merged(c, m2);
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].loser_device, DEV_B);
    assert!(x
        .flat(res)
        .contains_key("n.sync-conflict-20231114-221323-eirceirc"));
}

// ------------------------------------------------------------------------------------------ gc

fn gc(x: &Fx, keep_last: Option<usize>, keep_within: Option<Duration>) {
    x.store
        .gc_keep_within(&GcOptions { keep_last }, keep_within, &NoProgress)
        .unwrap();
}

#[test]
fn gc_keeps_the_merge_base_with_each_peer() {
    let x = fx();
    let r = x.snap(&tree(&[("a", f("0", T0))]), &[], DEV_A, T0);
    let mut head = r;
    for i in 1..4 {
        head = x.snap(
            &tree(&[("a", f(&format!("ours {i}"), T0 + i * SEC))]),
            &[head],
            DEV_A,
            T0 + i * SEC,
        );
    }
    let peer = x.snap(
        &tree(&[("b", f("theirs", T0 + SEC)), ("a", f("0", T0))]),
        &[r],
        DEV_B,
        T0 + SEC,
    );
    x.store.set_ref("head", head).unwrap();
    x.store.set_ref("peers/bbbb", peer).unwrap();
    gc(&x, Some(1), None);
    assert!(
        !x.store.is_shallow(r).unwrap(),
        "the merge base keeps its tree"
    );
    assert!(x
        .store
        .is_shallow(x.store.resolve("head~1").unwrap())
        .unwrap());
    let (m, conflicts) = x.merged(head, peer);
    assert!(conflicts.is_empty());
    assert_eq!(
        x.flat(m),
        expect(&tree(&[
            ("a", f("ours 3", T0 + 3 * SEC)),
            ("b", f("theirs", T0 + SEC))
        ]))
    );

    // Without the peer ref, the same gc drops the base and merging says which tree it needs.
    let y = fx();
    let r = y.snap(&tree(&[("a", f("0", T0))]), &[], DEV_A, T0);
    let head = y.snap(&tree(&[("a", f("1", T0))]), &[r], DEV_A, T0 + SEC);
    let other = y.snap(&tree(&[("b", f("b", T0))]), &[r], DEV_B, T0 + SEC);
    y.store.set_ref("head", head).unwrap();
    y.store.set_ref("saved", other).unwrap(); // a ref, but not a peer's
    gc(&y, Some(1), None);
    assert!(y.store.is_shallow(r).unwrap());
    assert!(!y.store.is_shallow(other).unwrap());
    match y.store.merge(head, other) {
        Err(Error::NeedTree(s)) => assert_eq!(s, r),
        o => panic!("{o:?}"),
    }
}

#[test]
fn gc_keeps_both_bases_of_a_criss_cross() {
    let x = fx();
    let r = x.snap(&tree(&[("f", f("0", T0))]), &[], DEV_A, T0);
    let a1 = x.snap(&tree(&[("f", f("a", T0))]), &[r], DEV_A, T0 + SEC);
    let b1 = x.snap(&tree(&[("f", f("b", T0))]), &[r], DEV_B, T0 + SEC);
    let a2 = x.snap(
        &tree(&[("f", f("a", T0)), ("x", f("1", T0))]),
        &[a1, b1],
        [0; 32],
        T0 + 2 * SEC,
    );
    let b2 = x.snap(
        &tree(&[("f", f("b", T0)), ("y", f("1", T0))]),
        &[a1, b1],
        [0; 32],
        T0 + 2 * SEC,
    );
    let a3 = x.snap(
        &tree(&[("f", f("a", T0)), ("x", f("2", T0))]),
        &[a2],
        DEV_A,
        T0 + 3 * SEC,
    );
    x.store.set_ref("head", a3).unwrap();
    x.store.set_ref("peers/bbbb", b2).unwrap();
    gc(&x, Some(1), None);
    for s in [a1, b1, r] {
        assert!(!x.store.is_shallow(s).unwrap(), "{s} keeps its tree");
    }
    assert!(x.store.is_shallow(a2).unwrap());
    let (m, conflicts) = x.merged(a3, b2);
    // a1 and b1 changed f differently: the virtual base leaves f out, so a3's "a" and b2's "b"
    // are both changes against it and both are kept (neither wins silently).
    assert_eq!(conflicts.len(), 1);
    let fl = x.flat(m);
    let mut fs: Vec<&[u8]> = fl
        .iter()
        .filter(|(p, _)| p.starts_with('f'))
        .map(|(_, v)| v.3.as_slice())
        .collect();
    fs.sort();
    assert_eq!(fs, [b"a", b"b"]);
    assert!(fl.contains_key("x") && fl.contains_key("y"));
}

#[test]
fn gc_keep_within_counts_from_head_and_combines_with_keep_last() {
    let x = fx();
    let day = 86_400 * SEC;
    let mut ids = Vec::new();
    let mut parent = vec![];
    for i in 0..10i64 {
        let id = x.snap(
            &tree(&[("a", f(&format!("day {i}"), T0 + i * day))]),
            &parent,
            DEV_A,
            T0 + i * day,
        );
        x.store.debug_set_arrival(id, T0 + i * day).unwrap();
        ids.push(id);
        parent = vec![id];
    }
    // A side branch from day 2, as a peer ref would keep it.
    let side = x.snap(
        &tree(&[("a", f("side", T0))]),
        &[ids[2]],
        DEV_B,
        T0 + 8 * day,
    );
    x.store.debug_set_arrival(side, T0 + 8 * day).unwrap();
    x.store.set_ref("head", ids[9]).unwrap();
    x.store.set_ref("other", side).unwrap();
    // Within 3 days of head (day 9): days 6..=9 and the side branch (day 8).
    gc(&x, None, Some(Duration::from_secs(3 * 86_400)));
    let shallow: Vec<bool> = ids
        .iter()
        .map(|i| x.store.is_shallow(*i).unwrap())
        .collect();
    assert_eq!(
        shallow,
        [true, true, true, true, true, true, false, false, false, false]
    );
    assert!(!x.store.is_shallow(side).unwrap());

    let y = fx();
    let mut ids = Vec::new();
    let mut parent = vec![];
    for i in 0..10i64 {
        let id = y.snap(
            &tree(&[("a", f(&format!("day {i}"), T0 + i * day))]),
            &parent,
            DEV_A,
            T0 + i * day,
        );
        y.store.debug_set_arrival(id, T0 + i * day).unwrap();
        ids.push(id);
        parent = vec![id];
    }
    y.store.set_ref("head", ids[9]).unwrap();
    // keep_last 5 (days 5..=9) or within 2 days (7..=9): kept if either keeps it.
    gc(&y, Some(5), Some(Duration::from_secs(2 * 86_400)));
    let shallow: Vec<bool> = ids
        .iter()
        .map(|i| y.store.is_shallow(*i).unwrap())
        .collect();
    assert_eq!(
        shallow,
        [true, true, true, true, true, false, false, false, false, false]
    );
    // Within 8 days, keep_last 1: days 1..=9.
    gc(&y, Some(1), Some(Duration::from_secs(8 * 86_400)));
    assert!(y.store.is_shallow(ids[0]).unwrap());
    // Nothing dropped twice; the kept trees still read.
    assert_eq!(y.flat(ids[5])["a"].3, b"day 5");
}

/// Ten daily snapshots that arrived here one day apart (as `add` would have made them).
fn daily(x: &Fx) -> Vec<NodeId> {
    let day = 86_400 * SEC;
    let mut ids = Vec::new();
    let mut parent = vec![];
    for i in 0..10i64 {
        let id = x.snap(
            &tree(&[("a", f(&format!("day {i}"), T0 + i * day))]),
            &parent,
            DEV_A,
            T0 + i * day,
        );
        x.store.debug_set_arrival(id, T0 + i * day).unwrap();
        ids.push(id);
        parent = vec![id];
    }
    ids
}

#[test]
fn gc_keep_within_ignores_a_peers_clock() {
    let x = fx();
    let day = 86_400 * SEC;
    let ids = daily(&x);
    // A peer's snapshot dated 2200 (on day 8) arrives an hour after day 9, and head merges it: the merge
    // inherits the newest parent's time, so head too says 2200.
    let future = 7_258_118_400 * SEC; // 2200-01-01
    let peer = x.snap(
        &tree(&[("a", f("day 8", T0 + 8 * day)), ("p", f("peer", T0))]),
        &[ids[8]],
        DEV_B,
        future,
    );
    x.store
        .debug_set_arrival(peer, T0 + 9 * day + 3600 * SEC)
        .unwrap();
    let (m, _) = x.merged(ids[9], peer);
    assert_eq!(x.store.snapshot(m).unwrap().time_ns, future);
    x.store
        .debug_set_arrival(m, T0 + 9 * day + 7200 * SEC)
        .unwrap();
    x.store.set_ref("head", m).unwrap();
    x.store.set_ref("peers/bbbb", peer).unwrap();
    gc(&x, None, Some(Duration::from_secs(3 * 86_400)));
    let shallow: Vec<bool> = ids
        .iter()
        .map(|i| x.store.is_shallow(*i).unwrap())
        .collect();
    // Days 7..=9 arrived within 3 days of head's arrival (day 9 + 2h); day 6 did not.
    assert_eq!(
        shallow,
        [true, true, true, true, true, true, true, false, false, false],
        "retention measured by arrival, not by the declared 2200"
    );
    assert_eq!(x.flat(ids[7])["a"].3, b"day 7");
}

#[test]
fn snapshots_record_when_they_arrived_not_when_they_say() {
    let x = fx();
    let future = 7_258_118_400 * SEC; // 2200-01-01
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let root = x.build(&tree(&[("a", f("x", T0))]));
    let snap = Snapshot {
        root,
        parents: vec![],
        device: DEV_B,
        time_ns: future,
        message: "from the future".into(),
    };
    let (id, bytes) = Node::Snapshot(snap.clone()).encode_with_id().unwrap();
    // As a fetch stores it: the header alone, then (again) as a node.
    assert!(x.store.put_snapshot_header(id, &bytes).unwrap());
    let t = x.store.arrival(id).unwrap().expect("recorded");
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(before <= t && t <= after, "{before} <= {t} <= {after}");
    x.store.debug_set_arrival(id, T0).unwrap();
    x.store.put_node(id, &bytes).unwrap();
    assert_eq!(
        x.store.arrival(id).unwrap(),
        Some(T0),
        "the first arrival counts"
    );
    // One with no record (as `add` writes them, or an older store's) gets min(declared, now)
    // from the first gc, recorded so it stays.
    let old = Snapshot {
        time_ns: T0,
        message: "old".into(),
        ..snap.clone()
    };
    let (oid, obytes) = Node::Snapshot(old).encode_with_id().unwrap();
    x.store.put_node(oid, &obytes).unwrap();
    x.store.debug_clear_arrival(oid).unwrap();
    x.store.debug_clear_arrival(id).unwrap();
    x.store.set_ref("head", oid).unwrap();
    x.store.set_ref("peers/bbbb", id).unwrap();
    gc(&x, None, Some(Duration::from_secs(86_400)));
    assert_eq!(x.store.arrival(oid).unwrap(), Some(T0));
    let t = x.store.arrival(id).unwrap().expect("recorded by gc");
    assert!(t >= after && t < future, "future clamped to now: {t}");
}

#[test]
fn gc_keep_last_counts_only_snapshots_that_change_the_tree() {
    let x = fx();
    let mut ids = Vec::new();
    let mut parent = vec![];
    for i in 0..5i64 {
        let id = x.snap(
            &tree(&[("a", f(&format!("v{i}"), T0))]),
            &parent,
            DEV_A,
            T0 + i * SEC,
        );
        ids.push(id);
        parent = vec![id];
    }
    // A peer floods 50 snapshots that change nothing, and head follows them.
    let same = tree(&[("a", f("v4", T0))]);
    let mut top = ids[4];
    for i in 0..50i64 {
        top = x.snap(&same, &[top], DEV_B, T0 + (10 + i) * SEC);
    }
    x.store.set_ref("head", top).unwrap();
    gc(&x, Some(3), None);
    let shallow: Vec<bool> = ids
        .iter()
        .map(|i| x.store.is_shallow(*i).unwrap())
        .collect();
    assert_eq!(shallow, [true, true, false, false, false]);
    assert_eq!(x.flat(ids[2])["a"].3, b"v2");
}

#[test]
fn gc_refuses_a_policy_that_drops_heads_files() {
    let x = fx();
    let ids = daily(&x);
    x.store.set_ref("head", ids[9]).unwrap();
    match x
        .store
        .gc_keep_within(&GcOptions { keep_last: Some(0) }, None, &NoProgress)
    {
        Err(Error::Invalid(m)) => assert!(m.contains("head"), "{m}"),
        o => panic!("gc --keep-last 0 must be refused: {o:?}"),
    }
    for id in &ids {
        assert!(!x.store.is_shallow(*id).unwrap(), "nothing dropped");
    }
    assert_eq!(x.flat(ids[9])["a"].3, b"day 9");
    // Zero within: head (and only head's first-parent line up to now) is still kept.
    gc(&x, None, Some(Duration::ZERO));
    assert!(!x.store.is_shallow(ids[9]).unwrap());
    assert!(x.store.is_shallow(ids[8]).unwrap());
}

// ----------------------------------------------------------------------------- property test

const NAMES: [&str; 3] = ["a", "b.txt", ".c"];

/// Every path of up to three names, shallowest first (3, then 9, then 27).
fn all_paths() -> Vec<String> {
    let mut out: Vec<String> = NAMES.iter().map(|x| x.to_string()).collect();
    for depth in 1..3 {
        let start = out.len() - NAMES.len().pow(depth);
        let parents: Vec<String> = out[start..].to_vec();
        for p in parents {
            out.extend(NAMES.iter().map(|n| format!("{p}/{n}")));
        }
    }
    out
}

/// An index into [`all_paths`], biased to shallow paths so both sides often touch the same ones.
fn path() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0..3usize, 3 => 0..12usize, 2 => 0..39usize]
}

#[derive(Clone, Debug)]
enum Op {
    Set(Spec),
    Delete,
    Chmod,
    Touch,
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        4 => (0u8..4, prop::bool::ANY, 0i64..3).prop_map(|(c, x, t)| Spec::F(
            format!("content {c}").into_bytes(),
            if x { 0o755 } else { 0o644 },
            T0 + t * SEC
        )),
        1 => (0u8..3).prop_map(|t| Spec::L(format!("target {t}").into_bytes())),
        2 => (0i64..2).prop_map(|t| Spec::D(0o755, T0 + t * SEC)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => spec().prop_map(Op::Set),
        2 => Just(Op::Delete),
        1 => Just(Op::Chmod),
        1 => Just(Op::Touch),
    ]
}

fn under(p: &str, q: &str) -> bool {
    q == p || q.starts_with(&format!("{p}/"))
}

fn apply(t: &mut Tree, p: &str, op: &Op) {
    match op {
        Op::Delete => t.retain(|q, _| !under(p, q)),
        Op::Set(s) => {
            // Parents become folders (a file in the way is replaced).
            let comps: Vec<&str> = p.split('/').collect();
            for i in 1..comps.len() {
                let pre = comps[..i].join("/");
                if !matches!(t.get(&pre), Some(Spec::D(..))) {
                    t.insert(pre, Spec::D(0o755, T0));
                }
            }
            if matches!(s, Spec::D(..)) {
                if !matches!(t.get(p), Some(Spec::D(..))) {
                    t.retain(|q, _| !under(p, q));
                    t.insert(p.to_string(), s.clone());
                }
            } else {
                t.retain(|q, _| !under(p, q));
                t.insert(p.to_string(), s.clone());
            }
        }
        Op::Chmod => {
            if let Some(Spec::F(_, m, _)) = t.get_mut(p) {
                *m ^= 0o111;
            }
        }
        Op::Touch => match t.get_mut(p) {
            Some(Spec::F(_, _, mt)) | Some(Spec::D(_, mt)) => *mt += 7 * SEC,
            _ => {}
        },
    }
}

type Flat = BTreeMap<String, (char, u32, i64, Vec<u8>)>;

/// The flat picture with folder metadata blanked (a folder's mtime is not what a side "changed").
fn shape(fl: &Flat) -> Flat {
    fl.iter()
        .map(|(p, v)| {
            let v = if v.0 == 'd' {
                ('d', 0, 0, Vec::new())
            } else {
                v.clone()
            };
            (p.clone(), v)
        })
        .collect()
}

fn changed(b: &Flat, s: &Flat, p: &str) -> bool {
    let keys: BTreeSet<&String> = b.keys().chain(s.keys()).filter(|q| under(p, q)).collect();
    keys.into_iter().any(|q| b.get(q) != s.get(q))
}

/// `name` split as the conflict names split it: (stem, ext with its dot).
fn stem_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

fn check_case(
    x: &Fx,
    seed: u64,
    base: &Tree,
    o: &Tree,
    t: &Tree,
) -> std::result::Result<(), TestCaseError> {
    let r = x.snap(base, &[], DEV_A, T0);
    let so = x.snap(o, &[r], DEV_A, T0 + 10 * SEC);
    let st = x.snap(t, &[r], DEV_B, T0 + 10 * SEC);
    prop_assert_eq!(
        x.store.merge(so, so).unwrap(),
        MergeOutcome::UpToDate,
        "seed {}",
        seed
    );
    let m1 = x.store.merge(so, st).unwrap();
    let m2 = x.store.merge(st, so).unwrap();
    let (MergeOutcome::Merged { snapshot: s1, .. }, MergeOutcome::Merged { snapshot: s2, .. }) =
        (&m1, &m2)
    else {
        return Err(TestCaseError::fail(format!("seed {seed}: {m1:?} / {m2:?}")));
    };
    prop_assert_eq!(s1, s2, "seed {}: merge is not symmetric", seed);
    prop_assert!(x.store.has_nodes(&[*s1]).unwrap()[0], "seed {}", seed);
    let (fb, fo, ft, fr) = (
        shape(&x.flat(r)),
        shape(&x.flat(so)),
        shape(&x.flat(st)),
        shape(&x.flat(*s1)),
    );
    let paths: BTreeSet<&String> = fb.keys().chain(fo.keys()).chain(ft.keys()).collect();
    for p in &paths {
        let (co, ct) = (changed(&fb, &fo, p), changed(&fb, &ft, p));
        if co && !ct {
            prop_assert_eq!(
                fr.get(*p),
                fo.get(*p),
                "seed {}: {} changed only on ours",
                seed,
                p
            );
        }
        if ct && !co {
            prop_assert_eq!(
                fr.get(*p),
                ft.get(*p),
                "seed {}: {} changed only on theirs",
                seed,
                p
            );
        }
    }
    // No content of either side is lost: each file or link a side changed (kind or content)
    // is in the result under its name or a conflict name beside it.
    for side in [&fo, &ft] {
        for (p, v) in side.iter() {
            if v.0 == 'd' {
                continue;
            }
            let same = |a: &(char, u32, i64, Vec<u8>)| a.0 == v.0 && a.3 == v.3;
            if fb.get(p).is_some_and(same) {
                continue;
            }
            let (dir, name) = match p.rfind('/') {
                Some(i) => (&p[..=i], &p[i + 1..]),
                None => ("", p.as_str()),
            };
            let (stem, ext) = stem_ext(name);
            let prefix = format!("{dir}{stem}.sync-conflict-");
            let found = fr.get(p).is_some_and(same)
                || fr.iter().any(|(q, w)| {
                    q.starts_with(&prefix)
                        && !q[dir.len()..].contains('/')
                        && q.ends_with(ext)
                        && same(w)
                });
            prop_assert!(
                found,
                "seed {}: the version of {} = {:?} was lost",
                seed,
                p,
                v
            );
        }
    }
    Ok(())
}

fn prop_config() -> ProptestConfig {
    let seed = seed();
    eprintln!("merge property test seed {seed} (set LEFT_MERGE_SEED to change)");
    ProptestConfig {
        cases: 200,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn seed() -> u64 {
    std::env::var("LEFT_MERGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1eff_5eed)
}

proptest! {
    #![proptest_config(prop_config())]
    #[test]
    fn random_merges_are_symmetric_and_lose_nothing(
        base_ops in prop::collection::vec((path(), spec()), 0..12),
        ours_ops in prop::collection::vec((path(), op()), 0..7),
        theirs_ops in prop::collection::vec((path(), op()), 0..7),
    ) {
        thread_local!(static FX: Fx = fx());
        let paths = all_paths();
        assert_eq!(paths.len(), 39);
        let mut base = Tree::new();
        for (i, s) in &base_ops {
            apply(&mut base, &paths[*i], &Op::Set(s.clone()));
        }
        let (mut o, mut t) = (base.clone(), base.clone());
        for (i, op) in &ours_ops {
            apply(&mut o, &paths[*i], op);
        }
        for (i, op) in &theirs_ops {
            apply(&mut t, &paths[*i], op);
        }
        FX.with(|x| check_case(x, seed(), &base, &o, &t))?;
    }
}

/// Folder nodes (index and leaves) of the folder `dir`.
fn folder_nodes(x: &Fx, dir: NodeId, out: &mut BTreeSet<NodeId>) {
    out.insert(dir);
    if let Node::Dir(left_store::node::DirNode::Index { children, .. }) =
        x.store.read_node(dir).unwrap()
    {
        for c in children {
            folder_nodes(x, c, out);
        }
    }
}

fn folder_of(x: &Fx, snap: NodeId, name: &str) -> NodeId {
    let root = x.store.snapshot(snap).unwrap().root;
    let e = x
        .store
        .dir_entries(root)
        .unwrap()
        .into_iter()
        .find(|e| e.name == name.as_bytes())
        .unwrap();
    match e.target {
        Target::Node(id) => id,
        Target::Link(_) => panic!(),
    }
}

#[test]
fn wide_folders_merge_reusing_unchanged_leaves() {
    let x = fx();
    let mut base = Tree::new();
    for i in 0..3000 {
        base.insert(format!("w/f{i:04}"), f(&format!("file {i}"), T0));
    }
    let r = x.snap(&base, &[], DEV_A, T0);
    let edit = |t: &Tree, i: usize, what: &str, at: i64| {
        let mut t = t.clone();
        t.insert(format!("w/f{i:04}"), f(what, at));
        t
    };
    let a1 = x.snap(&edit(&base, 1, "a1", T0 + SEC), &[r], DEV_A, T0 + SEC);
    let b1 = x.snap(&edit(&base, 2998, "b1", T0 + SEC), &[r], DEV_B, T0 + SEC);
    let (m, conflicts) = x.merged(a1, b1);
    assert!(conflicts.is_empty());
    let want = edit(&edit(&base, 1, "a1", T0 + SEC), 2998, "b1", T0 + SEC);
    assert_eq!(x.flat(m), expect(&want));
    // Only the leaves holding the two edits and the index above them are new.
    let mut old = BTreeSet::new();
    folder_nodes(&x, folder_of(&x, a1, "w"), &mut old);
    folder_nodes(&x, folder_of(&x, b1, "w"), &mut old);
    let mut merged = BTreeSet::new();
    folder_nodes(&x, folder_of(&x, m, "w"), &mut merged);
    assert!(
        merged.len() > 10,
        "the folder is split ({} nodes)",
        merged.len()
    );
    let new = merged.difference(&old).count();
    assert!(new <= 4, "{new} new folder nodes");

    // A criss-cross over the wide folder: the virtual base is itself a split folder built by the
    // merge (read back from memory, never written).
    let a2 = x.snap(
        &edit(&want, 1500, "a2", T0 + 2 * SEC),
        &[a1, b1],
        [0; 32],
        T0 + 2 * SEC,
    );
    let b2 = x.snap(
        &edit(&want, 2000, "b2", T0 + 2 * SEC),
        &[a1, b1],
        [0; 32],
        T0 + 2 * SEC,
    );
    assert_eq!(x.store.merge_bases(a2, b2).unwrap().bases.len(), 2);
    let (m2, conflicts) = x.merged(a2, b2);
    assert!(conflicts.is_empty());
    let want2 = edit(
        &edit(&want, 1500, "a2", T0 + 2 * SEC),
        2000,
        "b2",
        T0 + 2 * SEC,
    );
    assert_eq!(x.flat(m2), expect(&want2));
}

/// `keep_adding` (a rejected change): every path of ours stays as it is (deleted, edited,
/// turned into a folder there: ours wins), and what the other tree adds is taken, beneath
/// folders both have and in folders only it has.
#[test]
fn keep_adding_keeps_all_of_ours_and_takes_only_additions() {
    let x = fx();
    let ours = tree(&[
        ("a", f("a ours", T0)),
        ("d/b", f("b", T0)),
        ("d/sub/c", f("c", T0)),
        ("p", f("p is a file here", T0)),
        ("gone-there", f("deleted on their side", T0)),
    ]);
    let so = x.snap(&ours, &[], DEV_A, T0);
    let theirs = tree(&[
        ("a", f("a edited there", T0 + SEC)),
        ("d/b", f("b", T0)),
        ("d/sub/new", f("added in a shared folder", T0 + SEC)),
        ("p/inner", f("a folder there", T0 + SEC)),
        ("e/f", f("added in a new folder", T0 + SEC)),
        ("top", f("added at the top", T0 + SEC)),
    ]);
    let st = x.snap(&theirs, &[so], DEV_B, T0 + SEC);
    let header = Snapshot {
        root: NodeId(Hash([0; 32])),
        parents: vec![so, st],
        device: DEV_A,
        time_ns: T0 + 2 * SEC,
        message: "kept".into(),
    };
    let k = x.store.keep_adding(so, st, header).unwrap();
    let s = x.store.snapshot(k).unwrap();
    assert_eq!(s.parents, vec![so, st]);
    assert_eq!(s.message, "kept");
    let mut want = ours.clone();
    want.insert("d/sub/new".into(), f("added in a shared folder", T0 + SEC));
    want.insert("e/f".into(), f("added in a new folder", T0 + SEC));
    want.insert("top".into(), f("added at the top", T0 + SEC));
    assert_eq!(x.flat(k), expect(&want));
    // Complete: it can be checked out and merged like any snapshot.
    assert!(x.store.has_nodes(&[k]).unwrap()[0]);
    // Nothing to add: the tree is ours, whole.
    let header = Snapshot {
        root: NodeId(Hash([0; 32])),
        parents: vec![so],
        device: DEV_A,
        time_ns: T0 + 3 * SEC,
        message: "same".into(),
    };
    let same = x.store.keep_adding(so, so, header).unwrap();
    assert_eq!(
        x.store.snapshot(same).unwrap().root,
        x.store.snapshot(so).unwrap().root
    );
}
