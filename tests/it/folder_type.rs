//! Folder types: a receive-only device takes the peers' changes, never publishes its own (its
//! local snapshot is neither announced nor served), keeps both versions of a path changed on
//! both sides (the share's under the name, the local edit as the conflict copy), and `left revert` brings it back to the share's version.

use crate::util::{assert_same_tree, set_mtime, Share};

#[test]
fn a_receive_only_peer_keeps_its_edits_to_itself_and_reverts_to_the_share() {
    let a = Share::new();
    a.write("x.txt", b"x from a\n");
    a.write("docs/y.txt", b"y from a\n");
    a.add(&[]);
    let b = a.join();
    let server = a.serve();
    b.sync_ok(&[server.addr()], &[], &[]);
    server.stop();

    let j = b.json(&["folder-type", "receive-only"], 0);
    assert_eq!(j["folder_type"], "receive-only", "{j}");
    let published = b.head().unwrap();
    assert_eq!(j["published"], published.as_str(), "{j}");

    // Local changes on B: snapshotted into B's head, not published.
    b.write("x.txt", b"x edited on b\n");
    // Newer than A's later edit: the symmetric merge rule would let B's version keep the name.
    set_mtime(&b.root.join("x.txt"), 4_000_000_000 * 1_000_000_000);
    b.write("local.txt", b"only on b\n");
    b.add(&[]);
    let b_local = b.head().unwrap();
    assert_ne!(b_local, published);
    let status = b.json(&["status"], 0);
    assert_eq!(status["folder_type"], "receive-only", "{status}");

    let a_head = a.head().unwrap();
    let b_server = b.serve();
    let j = a.sync_ok(&[b_server.addr()], &[], &[]);
    assert_eq!(a.head().unwrap(), a_head, "A took nothing from B: {j}");
    assert!(!a.root.join("local.txt").exists());
    assert_eq!(std::fs::read(a.root.join("x.txt")).unwrap(), b"x from a\n");
    // Asked for it by id, B serves its published head but never its local snapshot.
    let to = a.scratch("restored");
    let r = a.left(&[
        "restore",
        &b_local,
        "--to",
        to.to_str().unwrap(),
        "--from",
        &b_server.addr(),
    ]);
    assert_ne!(r.code, Some(0), "B served its local snapshot: {}", r.out());
    let ok = a.scratch("restored-published");
    a.left(&[
        "restore",
        &published,
        "--to",
        ok.to_str().unwrap(),
        "--from",
        &b_server.addr(),
    ])
    .expect_code(0);
    b_server.stop();

    // A changes the path B changed, and another one: B takes both, and keeps its own edit.
    a.write("x.txt", b"x edited on a\n");
    a.write("docs/y.txt", b"y edited on a\n");
    a.add(&[]);
    let a_head = a.head().unwrap();
    let server = a.serve();
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(
        std::fs::read(b.root.join("docs/y.txt")).unwrap(),
        b"y edited on a\n",
        "{j}"
    );
    assert_eq!(
        std::fs::read(b.root.join("local.txt")).unwrap(),
        b"only on b\n"
    );
    let mut versions: Vec<Vec<u8>> = std::fs::read_dir(&b.root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("x"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        vec![b"x edited on a\n".to_vec(), b"x edited on b\n".to_vec()],
        "both versions of x.txt are kept"
    );
    // The share's version keeps the name; the local edit is the conflict copy.
    assert_eq!(
        std::fs::read(b.root.join("x.txt")).unwrap(),
        b"x edited on a\n"
    );
    let j = b.json(&["folder-type"], 0);
    assert_eq!(
        j["published"],
        a_head.as_str(),
        "B's share version is A's head: {j}"
    );
    server.stop();

    // Revert: the folder is A's again; the local changes stay in B's history.
    let j = b.json(&["revert"], 0);
    assert!(j["local"].is_string(), "{j}");
    assert_eq!(b.head().unwrap(), a_head);
    assert_same_tree(&a.root, &b.root);
    let back = b.scratch("local-again");
    b.left(&[
        "restore",
        j["local"].as_str().unwrap(),
        "--to",
        back.to_str().unwrap(),
    ])
    .expect_code(0);
    assert_eq!(
        std::fs::read(back.join("local.txt")).unwrap(),
        b"only on b\n"
    );
    // Nothing left to revert.
    let j = b.json(&["revert"], 0);
    assert!(j["local"].is_null(), "{j}");
}

/// A send-only device publishes its changes, looks at the peers' heads without taking a file
/// (their trees are not even stored), and `left override` makes the share match it: the peer
/// fast-forwards to a snapshot of the send-only folder, and its own versions stay in history.
#[test]
fn a_send_only_peer_publishes_takes_nothing_and_overrides_the_share() {
    let a = Share::new();
    a.write("x.txt", b"x from a\n");
    a.write("docs/y.txt", b"y from a\n");
    a.add(&[]);
    let c = a.join();
    let server = a.serve();
    c.sync_ok(&[server.addr()], &[], &[]);
    server.stop();
    let j = c.json(&["folder-type", "send-only"], 0);
    assert_eq!(j["folder_type"], "send-only", "{j}");
    let c_start = c.head().unwrap();

    // A changes a file and adds one: C looks, takes nothing.
    a.write("x.txt", b"x edited on a\n");
    a.write("a.txt", b"new on a\n");
    a.add(&[]);
    let a_head = a.head().unwrap();
    let server = a.serve();
    let j = c.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(j["send_only"], true, "{j}");
    assert_eq!(j["chunks_fetched"], 0, "{j}");
    assert_eq!(c.head().unwrap(), c_start, "C's head did not move: {j}");
    assert_eq!(std::fs::read(c.root.join("x.txt")).unwrap(), b"x from a\n");
    assert!(!c.root.join("a.txt").exists());
    let seen = j["seen"].as_array().expect("seen");
    assert_eq!(seen.len(), 1, "{j}");
    assert_eq!(seen[0]["head"], a_head.as_str(), "{j}");
    assert_eq!(seen[0]["has_ours"], true, "{j}");
    assert_eq!(seen[0]["behind"], false, "{j}");
    let status = c.json(&["status"], 0);
    assert_eq!(status["folder_type"], "send-only", "{status}");
    assert_eq!(status["seen"][0]["head"], a_head.as_str(), "{status}");
    // Only the header came: A's tree is not here, so it cannot be restored from C's store.
    let to = c.scratch("a-head");
    let r = c.left(&["restore", &a_head, "--to", to.to_str().unwrap()]);
    assert_ne!(r.code, Some(0), "C holds A's files: {}", r.out());
    server.stop();

    // C's own change is published: A merges it and keeps its own.
    c.write("c.txt", b"from c\n");
    c.add(&[]);
    let c_server = c.serve();
    a.sync_ok(&[c_server.addr()], &[], &[]);
    c_server.stop();
    assert_eq!(std::fs::read(a.root.join("c.txt")).unwrap(), b"from c\n");
    assert_eq!(
        std::fs::read(a.root.join("x.txt")).unwrap(),
        b"x edited on a\n"
    );
    let a_merged = a.head().unwrap();

    // Override: C looks at A's head again, then makes the share match its folder.
    let server = a.serve();
    c.sync_ok(&[server.addr()], &[], &[]);
    server.stop();
    let j = c.json(&["override"], 0);
    assert_eq!(j["made"], true, "{j}");
    assert_eq!(j["over"][0], a_merged.as_str(), "{j}");
    let o = c.head().unwrap();
    assert_eq!(j["head"], o.as_str());
    let c_server = c.serve();
    let j = a.sync_ok(&[c_server.addr()], &[], &[]);
    assert_eq!(a.head().unwrap(), o, "A fast-forwards to the override: {j}");
    assert_same_tree(&c.root, &a.root);
    assert!(!a.root.join("a.txt").exists());
    // What A had is still in its history.
    let back = a.scratch("before-override");
    a.left(&["restore", &a_merged, "--to", back.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(std::fs::read(back.join("a.txt")).unwrap(), b"new on a\n");
    c_server.stop();

    // Nothing more to override: A's head is C's.
    let server = a.serve();
    c.sync_ok(&[server.addr()], &[], &[]);
    server.stop();
    let j = c.json(&["override"], 0);
    assert_eq!(j["made"], false, "{j}");
    assert_eq!(c.head().unwrap(), o);
    // Override is for send-only folders.
    let r = a.left(&["override"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("send-only"), "{}", r.stderr);
}
