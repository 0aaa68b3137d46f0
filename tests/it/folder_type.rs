//! Folder types: a receive-only device takes the peers' changes, never publishes its own (its
//! local snapshot is neither announced nor served), keeps both versions of a path changed on
//! both sides, and `left revert` brings it back to the share's version.

use crate::util::{assert_same_tree, Share};

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
