//! `left verify --repair` and `left restore --from`: damaged objects fetched again from a peer,
//! and paths of snapshots this store never had restored from a peer. Real processes on loopback;
//! the store is damaged through its test hooks while no `left` process runs on it. Every wait is
//! a condition polled against a deadline (inside the helpers), never a timed sleep.

use std::fs;
use std::path::Path;

use left_store::{ChunkId, NodeId, Store};
use serde_json::Value;

use crate::util::*;

const MIB: usize = 1 << 20;

/// Files, a subfolder, a symlink and a 2 MiB file of random bytes (about 32 chunks).
fn populate(share: &Share) {
    share.write("a.txt", b"alpha\n");
    share.write("sub/b.txt", b"bravo\n");
    share.write("sub/deeper/c.txt", &random_bytes(3, 70_000));
    std::os::unix::fs::symlink("sub/b.txt", share.root.join("link")).unwrap();
    share.write("big.bin", &random_bytes(1, 2 * MIB));
}

/// What the store of `share` reports as broken, as `left verify --json` prints it.
fn problems(share: &Share) -> Value {
    let r = share.left(&["--json", "verify"]);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    r.json()["problems"].clone()
}

/// The ids in a list of problems or repaired objects.
fn ids(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect();
    out.sort();
    out
}

/// A share A serving, and B synced from it (B's store then closed).
fn served_pair() -> (Share, Server, Share) {
    let a = Share::new();
    populate(&a);
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    assert_same_tree(&a.root, &b.root);
    (a, server, b)
}

/// Corrupts one chunk of big.bin, deletes another, and corrupts the node of sub/b.txt in B's
/// store (nothing else has it open). Returns the three ids.
fn damage(b: &Share) -> (ChunkId, ChunkId, NodeId) {
    let store = Store::open(&b.store).expect("open B's store");
    let head = store.head().unwrap().expect("head");
    let chunks = store.debug_file_chunks(head, Path::new("big.bin")).unwrap();
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    let (corrupt, gone) = (chunks[2], chunks[chunks.len() - 3]);
    store.debug_corrupt_chunk(corrupt).unwrap();
    store.debug_delete_chunk(gone).unwrap();
    let node = store.ls(head, Path::new("sub/b.txt")).unwrap()[0].id;
    store.debug_corrupt_node(node).unwrap();
    (corrupt, gone, node)
}

#[test]
fn repair_fetches_corrupt_and_missing_objects_from_a_peer() {
    let (a, server, b) = served_pair();
    let (corrupt, gone, node) = damage(&b);

    // verify names the three.
    let found = problems(&b);
    let mut expected = vec![corrupt.to_string(), gone.to_string(), node.to_string()];
    expected.sort();
    assert_eq!(ids(&found), expected, "{found}");
    let r = b.left(&["verify"]).expect_code(1);
    assert!(
        r.out()
            .contains(&format!("corrupt chunk {corrupt}, used by: big.bin")),
        "{}",
        r.out()
    );
    assert!(
        r.out()
            .contains(&format!("missing chunk {gone}, used by: big.bin")),
        "{}",
        r.out()
    );
    assert!(
        r.out()
            .contains(&format!("corrupt node {node}, used by: sub/b.txt")),
        "{}",
        r.out()
    );

    // --repair with A serving: exactly the two chunks and the node travel.
    let j = b.json(&["verify", "--repair", &server.addr()], 0);
    assert_eq!(j["ok"], Value::Bool(true), "{j}");
    assert_eq!(u(&j, "problems_found"), 3, "{j}");
    assert_eq!(u(&j, "repaired"), 3, "{j}");
    assert_eq!(u(&j, "unrepaired"), 0, "{j}");
    assert_eq!(u(&j, "corrupt_removed"), 2, "{j}");
    assert_eq!(u(&j, "chunks_fetched"), 2, "{j}");
    assert_eq!(u(&j, "nodes_fetched"), 1, "{j}");
    assert_eq!(ids(&j["repaired_objects"]), expected, "{j}");
    assert_eq!(j["problems"], Value::Array(vec![]), "{j}");
    assert!(j["peers"][0]["error"].is_null(), "{j}");
    assert_eq!(j["peers"][0]["device"], server.hello["device"], "{j}");
    b.verify_clean();
    let out = b.scratch("restored");
    b.left(&["restore", "head", "--to", out.to_str().unwrap()])
        .expect_code(0);
    assert_same_tree(&a.root, &out);

    // Again, this time from the peer book alone (no peer named): A's address is in B's book.
    let (corrupt, _, _) = damage(&b);
    fs::write(
        b.store.join("peers.json"),
        serde_json::to_vec(&serde_json::json!({
            "version": 1,
            "peers": [{
                "device": server.hello["device"],
                "first_seen": 1,
                "last_seen": 1,
                "last_addr": server.addr(),
                "pinned": false,
                "revoked": false,
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    let r = b.left(&["verify", "--repair"]).expect_code(0);
    assert!(
        r.out().contains(&format!(
            "repaired corrupt chunk {corrupt}, used by: big.bin"
        )),
        "{}",
        r.out()
    );
    assert!(r.out().contains("verify: ok"), "{}", r.out());
    b.verify_clean();
    // A clean store: nothing to repair, no peer asked.
    let j = b.json(&["verify", "--repair", "--ip", "127.0.0.1:9"], 0);
    assert_eq!(u(&j, "problems_found"), 0, "{j}");
    server.stop();
}

#[test]
fn repair_without_a_reachable_peer_fails_and_changes_nothing() {
    let (_a, server, b) = served_pair();
    let addr = server.addr();
    server.stop();
    let (_, _, _) = damage(&b);
    let before = problems(&b);
    assert_eq!(before.as_array().unwrap().len(), 3, "{before}");

    // Nobody answers at that address any more.
    let r = b
        .left(&["verify", "--repair", &addr, "--timeout", "2"])
        .expect_code(1);
    let line = one_error_line(&r);
    assert!(
        line.starts_with("left: cannot repair: no peer could be reached: "),
        "{line}"
    );
    assert!(line.contains(&addr), "{line}");
    assert!(r.stderr.contains("hint: "), "{}", r.stderr);
    // The problems are listed, and --json gives one object that says nothing was repaired.
    assert!(r.out().contains("missing chunk"), "{}", r.out());
    let r = b
        .left(&["--json", "verify", "--repair", &addr, "--timeout", "2"])
        .expect_code(1);
    let j = r.json();
    assert_eq!(u(&j, "repaired"), 0, "{j}");
    assert!(j["peers"][0]["error"].is_string(), "{j}");
    one_error_line(&r);

    // No peer named and none in the book (the sync recorded A: forget it): one line saying what
    // to do, a usage error (2).
    fs::remove_file(b.store.join("peers.json")).unwrap();
    let r = b.left(&["verify", "--repair"]).expect_code(2);
    assert_eq!(
        one_error_line(&r),
        "left: cannot repair: no peer to fetch from"
    );
    assert!(r.stderr.contains("peers.json"), "{}", r.stderr);
    let r = b
        .left(&["verify", "--repair", "localhost:notaport"])
        .expect_code(2);
    assert!(
        one_error_line(&r).contains("bad peer address"),
        "{}",
        r.stderr
    );
    b.left(&["verify", "127.0.0.1:9"]).expect_code(2);

    // The store is as it was: the same problems, and the marks above them untouched (a repair
    // clears them only once a peer has answered).
    assert_eq!(problems(&b), before);
    let store = Store::open(&b.store).unwrap();
    let head = store.head().unwrap().unwrap();
    assert!(store.has_nodes(&[head]).unwrap()[0]);
    drop(store);

    // Beside a running serve, --repair says it needs the store to itself.
    let serving = b.serve();
    let r = b
        .left(&["verify", "--repair", "127.0.0.1:9"])
        .expect_code(1);
    let line = one_error_line(&r);
    assert!(
        line.contains("cannot repair") && line.contains("owns the store"),
        "{line}"
    );
    assert!(r.stderr.contains("left verify --repair"), "{}", r.stderr);
    serving.stop();
}

#[test]
fn restore_from_a_peer_fetches_only_the_path() {
    let a = Share::new();
    a.write("docs/one.txt", b"first version\n");
    a.write("docs/deep/two.bin", &random_bytes(7, 300_000));
    let old = random_bytes(8, 100_000);
    a.write("sub/file", &old);
    a.write("big.bin", &random_bytes(9, 2 * MIB));
    let s1 = a.add(&[])["snapshot"].as_str().unwrap().to_owned();
    a.write("docs/one.txt", b"second version\n");
    a.write("sub/file", b"changed");
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    assert!(b.head().is_none());

    // The peer's head, one folder of it: only that folder's content travels.
    let out = b.scratch("docs");
    let j = b.json(
        &[
            "restore",
            "peer",
            "docs",
            "--to",
            out.to_str().unwrap(),
            "--from",
            &server.addr(),
        ],
        0,
    );
    assert_same_tree(&a.root.join("docs"), &out);
    let f = &j["fetched"];
    assert_eq!(f["peer"], Value::String(server.addr()), "{j}");
    let bytes = u(f, "chunk_bytes");
    assert!(
        (300_000..400_000).contains(&bytes),
        "big.bin must not travel: {j}"
    );
    assert_eq!(j["snapshot"].as_str(), a.head().as_deref(), "{j}");

    // An older snapshot B never had, by its full id: one file of it.
    let out = b.scratch("old");
    let r = b
        .left(&[
            "restore",
            &s1,
            "sub/file",
            "--to",
            out.to_str().unwrap(),
            "--from",
            &server.addr(),
        ])
        .expect_code(0);
    assert!(r.out().contains("fetched"), "{}", r.out());
    assert_eq!(fs::read(out.join("file")).unwrap(), old);

    // Nothing moved here: no head, nothing checked out, and the same path again fetches nothing.
    assert!(b.head().is_none());
    let again = b.scratch("again");
    let j = b.json(
        &[
            "restore",
            &s1,
            "sub/file",
            "--to",
            again.to_str().unwrap(),
            "--from",
            &server.addr(),
        ],
        0,
    );
    assert_eq!(u(&j["fetched"], "chunks"), 0, "{j}");
    assert_eq!(u(&j["fetched"], "nodes"), 0, "{j}");
    assert_eq!(fs::read(again.join("file")).unwrap(), old);
    server.stop();
}

#[test]
fn restore_from_bad_input_gives_one_line() {
    let a = Share::new();
    a.write("f.txt", b"x");
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    let addr = server.addr();
    let to = b.scratch("to");
    let to = to.to_str().unwrap();
    let fail = |args: &[&str]| {
        let r = b.left(args).expect_code(1);
        one_error_line(&r)
    };
    // A malformed peer address is a usage error (2).
    let r = b
        .left(&[
            "restore",
            "peer",
            "--to",
            to,
            "--from",
            "localhost:notaport",
        ])
        .expect_code(2);
    let line = one_error_line(&r);
    assert!(
        line.contains("bad peer address \"localhost:notaport\""),
        "{line}"
    );
    let line = fail(&["restore", "zz!z", "--to", to, "--from", &addr]);
    assert!(
        line.starts_with("left: unknown snapshot \"zz!z\""),
        "{line}"
    );
    let r = b
        .left(&["restore", "abcd", "--to", to, "--from", &addr])
        .expect_code(1);
    assert!(
        one_error_line(&r).starts_with("left: unknown snapshot \"abcd\""),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("hint: with --from, give the snapshot's full id"),
        "{}",
        r.stderr
    );
    let unknown = "ab".repeat(32);
    let line = fail(&["restore", &unknown, "--to", to, "--from", &addr]);
    assert!(line.contains("does not have snapshot"), "{line}");
    let line = fail(&["restore", "peer", "nope/x.txt", "--to", to, "--from", &addr]);
    assert!(line.contains("/nope is not in snapshot"), "{line}");
    // --timeout and --encryption only mean something with --from.
    b.left(&["restore", "head", "--to", to, "--timeout", "3"])
        .expect_code(2);
    // Nothing was written.
    assert_eq!(fs::read_dir(to).unwrap().count(), 0);
    server.stop();

    // A peer that does not answer.
    let r = b
        .left(&[
            "restore",
            "peer",
            "--to",
            to,
            "--from",
            &addr,
            "--timeout",
            "2",
        ])
        .expect_code(1);
    let line = one_error_line(&r);
    assert!(
        line.starts_with(&format!("left: cannot reach {addr}: no answer")),
        "{line}"
    );
    assert!(
        r.stderr.contains("hint: check that `left serve` runs"),
        "{}",
        r.stderr
    );
}

/// A peer B synced from is in B's peer book (before, `sync` recorded nothing: "no devices seen
/// yet"), so `verify --repair` with no peer named finds it.
#[test]
fn a_peer_synced_from_is_found_by_repair_without_arguments() {
    let (_a, server, b) = served_pair();
    let peers = b.json(&["peers"], 0);
    assert!(
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["device"] == server.hello["device"]
                && p["last_addr"] == Value::String(server.addr())),
        "A is not in B's book: {peers}"
    );
    let (corrupt, _, _) = damage(&b);
    let r = b.left(&["verify", "--repair"]).expect_code(0);
    assert!(
        r.out().contains(&format!(
            "repaired corrupt chunk {corrupt}, used by: big.bin"
        )),
        "{}",
        r.out()
    );
    b.verify_clean();
    server.stop();
}
