//! `left serve` and `left sync` end to end: real processes on loopback, killed for real.
//!
//! Every wait is a condition polled against a deadline (a store folder that grew, a process that
//! exited, a line that appeared), never a timed sleep. Slow transfers, needed to catch a sync in
//! the middle, come from the impairment layer's rate limit (`LEFT_IMPAIR=rate=...` on the serving
//! side); lossy ones from its loss and reordering, with the seed printed (`LEFT_TEST_SEED` replays).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use left_store::{ChunkId, Store};
use serde_json::Value;

use crate::util::*;

const MIB: usize = 1 << 20;

/// Files, a subfolder, a symlink, an empty folder and a `big_mib` MiB file of random bytes.
fn populate(share: &Share, big_mib: usize) {
    share.write("a.txt", b"alpha\n");
    share.write("sub/b.txt", b"bravo\n");
    share.write("sub/deeper/c.txt", &random_bytes(3, 70_000));
    symlink("sub/b.txt", share.root.join("link")).unwrap();
    fs::create_dir_all(share.root.join("empty")).unwrap();
    share.write("big.bin", &random_bytes(1, big_mib * MIB));
}

/// Every distinct chunk of the files `paths` in `share`'s head (the store opened while nothing
/// else has it).
fn chunks_of(share: &Share, paths: &[&str]) -> Vec<ChunkId> {
    let store = Store::open(&share.store).expect("open store");
    let head = store.head().unwrap().expect("head");
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in paths {
        for c in store.debug_file_chunks(head, Path::new(p)).unwrap() {
            if seen.insert(c) {
                out.push(c);
            }
        }
    }
    out
}

/// How many of `chunks` the store of `share` holds (opened after its user exited).
fn stored(share: &Share, chunks: &[ChunkId]) -> usize {
    let store = Store::open(&share.store).expect("open store after the kill");
    store
        .has_chunks(chunks)
        .unwrap()
        .into_iter()
        .filter(|b| *b)
        .count()
}

fn head_of(share: &Share) -> String {
    share.head().expect("a head")
}

/// The peer entry for `addr` in a sync's JSON.
#[track_caller]
fn peer_entry<'a>(j: &'a Value, addr: &str) -> &'a Value {
    j["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no peers list: {j}"))
        .iter()
        .find(|p| p["addr"] == Value::String(addr.to_owned()))
        .unwrap_or_else(|| panic!("{addr} is not in the peers list: {j}"))
}

/// Spawns `left --json sync` with piped output.
fn spawn_sync(
    share: &Share,
    addrs: &[String],
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Child {
    share
        .sync_cmd(addrs, extra, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start left sync")
}

/// Waits (bounded) for a spawned sync and returns its run.
#[track_caller]
fn finish(mut child: std::process::Child, limit: Duration) -> Run {
    if wait_timeout(&mut child, limit).is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "left sync still running after {limit:?}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Run::from_output(child.wait_with_output().unwrap())
}

#[test]
fn basic_sync_then_nothing_then_a_small_delta() {
    let a = Share::new();
    populate(&a, 32);
    a.add(&[]);
    let head = head_of(&a);
    let server = a.serve();
    assert!(server.hello["device"].is_string(), "{}", server.hello);

    let b = a.join();
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    assert_same_tree(&a.root, &b.root);
    assert_eq!(j["head"], Value::String(head.clone()), "{j}");
    assert_eq!(b.head().as_deref(), Some(head.as_str()));
    let big = 32 * MIB as u64;
    assert!(u(&j, "chunks_fetched") >= 32, "{j}");
    assert!(u(&j, "nodes_fetched") >= 5, "{j}");
    let payload = u(&j, "payload_bytes_received");
    assert!(payload >= big, "random data cannot shrink: {j}");
    assert!(payload < big + big / 10, "{j}");
    assert!(u(&j, "bytes_received") >= payload, "{j}");
    assert!(u(&j, "bytes_sent") > 0, "{j}");
    assert!(j["seconds"].as_f64().is_some_and(|s| s > 0.0), "{j}");
    assert_eq!(j["checked_out"], Value::Bool(true), "{j}");
    assert_eq!(j["diverged"], Value::Bool(false), "{j}");
    assert!(u(&j["checkout"], "files_written") >= 4, "{j}");
    assert!(u(&j["checkout"], "bytes_written") >= big, "{j}");
    // The big file was written out while it was fetched and renamed in (the 70 kB one is too
    // small to stage); nothing is left in the stage folder.
    assert_eq!(u(&j["checkout"], "files_staged"), 1, "{j}");
    let staged_left = |b: &Share| {
        fs::read_dir(b.store.join("stage"))
            .map(|d| {
                d.flat_map(|e| fs::read_dir(e.unwrap().path()).unwrap())
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(staged_left(&b), 0);
    let p = peer_entry(&j, &server.addr());
    assert!(p["error"].is_null(), "{j}");
    assert_eq!(p["head"], Value::String(head.clone()), "{j}");
    assert_eq!(p["device"], server.hello["device"], "{j}");

    // Nothing new: nothing crosses the wire but the exchange of heads.
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(u(&j, "chunks_fetched"), 0, "{j}");
    assert_eq!(u(&j, "nodes_fetched"), 0, "{j}");
    assert_eq!(u(&j, "payload_bytes_received"), 0, "{j}");
    assert_same_tree(&a.root, &b.root);

    // 1 MiB changed in the middle of the big file, added beside the running server (the add goes
    // through its control socket), which then serves the new head.
    let mut data = fs::read(a.root.join("big.bin")).unwrap();
    data[16 * MIB..17 * MIB].copy_from_slice(&random_bytes(2, MIB));
    fs::write(a.root.join("big.bin"), &data).unwrap();
    a.add(&[]);
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    eprintln!(
        "1 MiB edit: payload {} B, UDP {} B received, {} B reused, {} s",
        u(&j, "payload_bytes_received"),
        u(&j, "bytes_received"),
        u(&j["checkout"], "bytes_reused"),
        j["seconds"]
    );
    assert_same_tree(&a.root, &b.root);
    assert_eq!(j["head"], Value::String(head_of(&a)), "{j}");
    assert!(
        u(&j, "payload_bytes_received") < 2 * MIB as u64,
        "a 1 MiB edit moved {} payload bytes: {j}",
        u(&j, "payload_bytes_received")
    );
    assert!(
        u(&j["checkout"], "bytes_reused") >= 28 * MIB as u64,
        "the unchanged 31 MiB were not reused: {j}"
    );
    // An update shares chunks with the stored version: not staged (the old file's ranges are
    // copied instead), and nothing left behind.
    assert_eq!(u(&j["checkout"], "files_staged"), 0, "{j}");
    assert_eq!(staged_left(&b), 0);
    server.stop();
}

/// Waits until the store of `share` has grown by `by` bytes over `before`, or `child` exited;
/// returns whether it grew (and the child still runs).
fn grown_while_running(
    share: &Share,
    before: u64,
    by: u64,
    child: &mut std::process::Child,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if du(&share.store) > before + by {
            return true;
        }
        assert!(Instant::now() < deadline, "the store never grew by {by}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigkill_of_the_receiver_then_resume_fetches_only_what_is_missing() {
    let a = Share::new();
    populate(&a, 48);
    a.add(&[]);
    let all = chunks_of(&a, &["a.txt", "sub/b.txt", "sub/deeper/c.txt", "big.bin"]);
    assert!(all.len() > 40, "{} chunks", all.len());
    let plain_len: Vec<u64> = {
        let store = Store::open(&a.store).unwrap();
        all.iter()
            .map(|c| store.read_chunk(*c).unwrap().len() as u64)
            .collect()
    };

    // 10 MB/s out of the server: about 5 s for the whole file. Kill points: once B's store has
    // grown by this much.
    for grown in [4u64 << 20, 20 << 20, 36 << 20] {
        let slow = a.serve_on(
            "127.0.0.1:0",
            &[],
            &[("LEFT_IMPAIR", "rate=10000000,seed=1")],
        );
        let b = a.join();
        let before = du(&b.store);
        let mut child = spawn_sync(&b, &[slow.addr()], &[], &[]);
        let killed = grown_while_running(&b, before, grown, &mut child);
        assert!(killed, "the sync finished before its store grew by {grown}");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        slow.stop();

        let present = {
            let store = Store::open(&b.store).expect("open store after the kill");
            store.has_chunks(&all).unwrap()
        };
        let have = present.iter().filter(|p| **p).count();
        let missing = all.len() - have;
        let missing_bytes: u64 = present
            .iter()
            .zip(&plain_len)
            .filter(|(p, _)| !**p)
            .map(|(_, n)| n)
            .sum();
        eprintln!(
            "killed after {} MiB: {have} of {} chunks stored, {missing_bytes} bytes missing",
            grown >> 20,
            all.len()
        );
        assert!(have > 0, "nothing was stored before the kill");
        assert!(missing > 0, "everything was stored before the kill");

        let fast = a.serve();
        let j = b.sync_ok(&[fast.addr()], &[], &[]);
        assert_eq!(
            u(&j, "chunks_fetched"),
            missing as u64,
            "stored chunks crossed the wire again: {j}"
        );
        assert_eq!(u(&j, "chunk_bytes_fetched"), missing_bytes, "{j}");
        // Random data: the payload is the missing chunks plus the nodes, nothing stored twice.
        assert!(
            u(&j, "payload_bytes_received") < missing_bytes + (1 << 20),
            "{missing_bytes} bytes were missing: {j}"
        );
        assert_same_tree(&a.root, &b.root);
        fast.stop();
    }
}

#[test]
fn abort_at_a_store_write_then_resume_fetches_only_what_is_missing() {
    let a = Share::new();
    populate(&a, 24);
    a.add(&[]);
    let all = chunks_of(&a, &["a.txt", "sub/b.txt", "sub/deeper/c.txt", "big.bin"]);
    let server = a.serve();
    let mut partial = 0;
    // The first batches are the sync's own bookkeeping (and its snapshot of local changes); the
    // later ones hold fetched objects.
    for n in [4u32, 16, 64, 256] {
        let b = a.join();
        let mut cmd = b.sync_cmd(
            &[server.addr()],
            &[],
            &[("LEFT_FAULT", &format!("abort-write:{n}"))],
        );
        let out = no_core_dump(&mut cmd).output().unwrap();
        let r = Run::from_output(out.clone());
        if out.status.success() {
            eprintln!("abort-write:{n}: fewer than {n} write batches; nothing to resume");
            assert_same_tree(&a.root, &b.root);
            continue;
        }
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "n={n}: {r:?}");
        let have = stored(&b, &all);
        let missing = all.len() - have;
        eprintln!("abort-write:{n}: {have} of {} chunks stored", all.len());
        if have > 0 && missing > 0 {
            partial += 1;
        }
        let j = b.sync_ok(&[server.addr()], &[], &[]);
        assert_eq!(
            u(&j, "chunks_fetched"),
            missing as u64,
            "n={n}: stored chunks crossed the wire again: {j}"
        );
        assert_same_tree(&a.root, &b.root);
    }
    assert!(
        partial >= 1,
        "no abort point fell in the middle of the chunk transfer"
    );
    server.stop();
}

#[test]
fn abort_in_the_middle_of_a_checkout_then_the_next_sync_finishes_it() {
    let a = Share::new();
    populate(&a, 4);
    for i in 0..20 {
        a.write(
            &format!("many/f{i:02}.txt"),
            format!("file {i}\n").as_bytes(),
        );
    }
    a.add(&[]);
    let server = a.serve();
    let mut crashed = 0;
    for n in [1u32, 5, 15] {
        let b = a.join();
        let mut cmd = b.sync_cmd(
            &[server.addr()],
            &[],
            &[("LEFT_FAULT", &format!("abort-checkout:{n}"))],
        );
        let out = no_core_dump(&mut cmd).output().unwrap();
        if out.status.success() {
            eprintln!("abort-checkout:{n}: fewer than {n} paths; nothing to finish");
        } else {
            assert_eq!(out.status.signal(), Some(libc::SIGABRT), "n={n}: {out:?}");
            crashed += 1;
            let j = b.sync_ok(&[server.addr()], &[], &[]);
            assert_eq!(u(&j, "chunks_fetched"), 0, "n={n}: {j}");
        }
        assert_same_tree(&a.root, &b.root);
        // (This also finds any temp file the cut checkout left behind.)
    }
    assert!(
        crashed >= 2,
        "the checkout abort hook fired {crashed} times"
    );
    server.stop();
}

#[test]
fn server_killed_mid_transfer_then_restarted_on_the_same_port() {
    let a = Share::new();
    populate(&a, 48);
    a.add(&[]);
    let slow = a.serve_on(
        "127.0.0.1:0",
        &[],
        &[("LEFT_IMPAIR", "rate=10000000,seed=2")],
    );
    let addr = slow.addr();
    let b = a.join();
    let before = du(&b.store);
    let mut child = spawn_sync(&b, std::slice::from_ref(&addr), &["--timeout", "90"], &[]);
    assert!(
        grown_while_running(&b, before, 8 * MIB as u64, &mut child),
        "the sync finished before the server could be killed"
    );
    slow.kill();
    // Let the client notice: its store stops growing while the server is down. Restart at once
    // anyway; the client must cope with either order.
    let again = a.serve_on(&addr, &[], &[]);
    let r = finish(child, Duration::from_secs(120));
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let j = r.expect_code(0).json();
    assert_eq!(j["head"], Value::String(head_of(&a)), "{j}");
    assert_same_tree(&a.root, &b.root);
    again.stop();
}

#[test]
fn server_killed_and_never_back_is_named_after_the_timeout() {
    let a = Share::new();
    populate(&a, 48);
    a.add(&[]);
    let slow = a.serve_on(
        "127.0.0.1:0",
        &[],
        &[("LEFT_IMPAIR", "rate=10000000,seed=3")],
    );
    let addr = slow.addr();
    let b = a.join();
    let before = du(&b.store);
    let started = Instant::now();
    let mut child = spawn_sync(&b, std::slice::from_ref(&addr), &["--timeout", "5"], &[]);
    assert!(
        grown_while_running(&b, before, 4 * MIB as u64, &mut child),
        "the sync finished before the server could be killed"
    );
    slow.kill();
    let killed_at = started.elapsed();
    let r = finish(child, Duration::from_secs(90));
    let took = started.elapsed() - killed_at;
    eprintln!("gave up {took:?} after the kill: {}", r.stderr.trim());
    let r = r.expect_code(1);
    let line = one_error_line(&r);
    assert!(
        line.contains(&addr),
        "the error does not name {addr}: {line}"
    );
    // --timeout 5: no progress for 5 s in total (stall detection included), plus slack for load.
    assert!(
        took < Duration::from_secs(5 + 7),
        "took {took:?} to give up"
    );
    assert!(hint_of(&r).contains("left serve"), "{}", r.stderr);
    assert!(
        !b.root.join("big.bin").exists(),
        "a partial file was checked out"
    );
}

#[test]
fn five_percent_loss_with_reordering_both_ways() {
    let seed = test_seed("five_percent_loss_with_reordering_both_ways");
    let impair = format!("loss=0.05,reorder=0.05,seed={seed}");
    let a = Share::new();
    populate(&a, 8);
    a.add(&[]);
    let server = a.serve_on("127.0.0.1:0", &[], &[("LEFT_IMPAIR", &impair)]);
    let b = a.join();
    let r = b.sync(
        &[server.addr()],
        &["--timeout", "120"],
        &[("LEFT_IMPAIR", &impair)],
    );
    assert!(!r.stderr.contains("panicked"), "seed {seed}: {}", r.stderr);
    assert_eq!(r.code, Some(0), "seed {seed}: {}", r.stderr);
    let j = r.json();
    eprintln!(
        "seed {seed}: 8 MiB through 5% loss and reordering in {} s",
        j["seconds"]
    );
    assert!(
        u(&j, "bytes_received") > u(&j, "payload_bytes_received"),
        "{j}"
    );
    assert_same_tree(&a.root, &b.root);
    server.stop();
}

#[test]
fn encryption_mismatch_is_refused_on_both_sides() {
    let a = Share::new();
    a.write("x.txt", b"x");
    a.add(&[]);
    for (serve_opt, sync_opt) in [("off", "on"), ("no", "yes"), ("on", "no")] {
        let server = a.serve_on("127.0.0.1:0", &["--encryption", serve_opt], &[]);
        let b = a.join();
        let r = b.sync(
            &[server.addr()],
            &["--encryption", sync_opt, "--timeout", "5"],
            &[],
        );
        let r = r.expect_code(1);
        let line = one_error_line(&r);
        assert!(
            line.to_lowercase().contains("encryption"),
            "{serve_opt}/{sync_opt}: {line}"
        );
        let hint = hint_of(&r);
        assert!(hint.contains("--encryption"), "hint: {hint}");
        assert!(!hint.contains("left serve"), "hint: {hint}");
        assert!(line.contains(&server.addr()), "{line}");
        wait_for(
            "the server to report the mismatch",
            Duration::from_secs(10),
            || server.stderr().to_lowercase().contains("encryption"),
        );
        assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
        assert!(!b.root.join("x.txt").exists());
        server.stop();
    }
    // Matching settings in either spelling work.
    for (serve_opt, sync_opt) in [("no", "off"), ("yes", "on")] {
        let server = a.serve_on("127.0.0.1:0", &["--encryption", serve_opt], &[]);
        let b = a.join();
        b.sync_ok(&[server.addr()], &["--encryption", sync_opt], &[]);
        assert_same_tree(&a.root, &b.root);
        server.stop();
    }
}

/// The cause of an unwritten path goes away while the peer has nothing new: the next sync is
/// "up to date" and writes it all the same (before, it never did); `left status` lists the path
/// while it waits.
#[test]
fn an_unwritten_path_is_listed_in_status_and_written_by_the_next_sync_without_news() {
    let a = Share::new();
    a.write("d/locked.txt", b"one");
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    a.write("d/locked.txt", b"two two");
    a.add(&[]);
    b.sync(&[server.addr()], &[], &[("LEFT_FAULT_DENY", "locked.txt")])
        .expect_code(3);
    assert_eq!(fs::read(b.root.join("d/locked.txt")).unwrap(), b"one");
    let st = b.json(&["status"], 0);
    assert_eq!(st["unwritten"], serde_json::json!(["d/locked.txt"]), "{st}");
    let human = b.left(&["status"]).expect_code(0).out();
    assert!(
        human.contains("could not be written here") && human.contains("d/locked.txt"),
        "{human}"
    );
    // Still denied: still 3, still listed.
    b.sync(&[server.addr()], &[], &[("LEFT_FAULT_DENY", "locked.txt")])
        .expect_code(3);
    // The cause is gone; A made nothing new.
    let r = b.cmd(&["sync", &server.addr()]).output().unwrap();
    let r = Run::from_output(r).expect_code(0);
    assert!(r.out().contains("up to date"), "{}", r.out());
    assert!(
        r.out()
            .contains("wrote 1 path an earlier checkout could not"),
        "{}",
        r.out()
    );
    assert_eq!(fs::read(b.root.join("d/locked.txt")).unwrap(), b"two two");
    assert_eq!(b.json(&["status"], 0)["unwritten"], serde_json::json!([]));
    assert_same_tree(&a.root, &b.root);
    // And nothing is sent back as a change: B's head is A's.
    assert_eq!(b.head(), a.head());
    server.stop();
}

/// A folder that already holds files joins a share: the one-shot sync merges the two by the
/// automatic rules (exit 0, nothing lost: a name on both sides with different bytes keeps both
/// versions), instead of exit 4 "merging comes with automatic sync". The other side then
/// fast-forwards to the same merge.
#[test]
fn joining_with_files_already_there_merges_them() {
    let a = Share::new();
    a.write("same.txt", b"same on both\n");
    a.write("both.txt", b"A's version\n");
    a.write("only-a/x.txt", b"from A\n");
    a.add(&[]);
    a.write("later.txt", b"a second snapshot on A\n");
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    b.write("same.txt", b"same on both\n");
    b.write("both.txt", b"B's version\n");
    b.write("only-b/y.txt", b"from B\n");
    let r = b.sync(&[server.addr()], &[], &[]);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let j = r.expect_code(0).json();
    assert_eq!(j["diverged"], Value::Bool(false), "{j}");
    assert_eq!(j["checked_out"], Value::Bool(true), "{j}");
    assert_eq!(u(&j["merged"], "merges"), 1, "{j}");
    let tree = read_tree(&b.root);
    let names: Vec<String> = tree
        .keys()
        .map(|p| p.display().to_string())
        .filter(|p| !p.starts_with(".left"))
        .collect();
    for want in [
        "same.txt",
        "both.txt",
        "only-a/x.txt",
        "only-b/y.txt",
        "later.txt",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let copies: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("both.sync-conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "{names:?}");
    let mut versions = vec![
        fs::read(b.root.join("both.txt")).unwrap(),
        fs::read(b.root.join(copies[0])).unwrap(),
    ];
    versions.sort();
    assert_eq!(
        versions,
        vec![b"A's version\n".to_vec(), b"B's version\n".to_vec()]
    );
    assert_eq!(fs::read(b.root.join("only-b/y.txt")).unwrap(), b"from B\n");
    assert_eq!(j["head"].as_str(), b.head().as_deref(), "{j}");
    server.stop();
    // A pulls the merge: a fast-forward to the same snapshot and the same files.
    let bs = b.serve();
    a.sync_ok(&[bs.addr()], &[], &[]);
    assert_eq!(a.head(), b.head());
    assert_same_tree(&b.root, &a.root);
    bs.stop();
}

/// Both sides changed since they last agreed: one-shot sync merges as automatic sync does
/// (disjoint changes combine) and exits 0; the folder gets the other side's change.
#[test]
fn diverged_heads_are_merged_by_the_automatic_rules() {
    let a = Share::new();
    a.write("common.txt", b"common\n");
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    server.stop();

    a.write("common.txt", b"changed on A\n");
    a.add(&[]);
    b.write("mine.txt", b"made on B\n");
    b.add(&[]);
    let b_head = head_of(&b);

    let server = a.serve();
    let r = b.sync(&[server.addr()], &[], &[]);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let j = r.expect_code(0).json();
    assert_eq!(j["diverged"], Value::Bool(false), "{j}");
    assert_eq!(j["checked_out"], Value::Bool(true), "{j}");
    assert_eq!(j["fetched_head"], Value::String(head_of(&a)), "{j}");
    assert_eq!(u(&j["merged"], "merges"), 1, "{j}");
    assert_eq!(j["merged"]["conflicts"], serde_json::json!([]), "{j}");
    assert_eq!(
        fs::read(b.root.join("common.txt")).unwrap(),
        b"changed on A\n"
    );
    assert_eq!(fs::read(b.root.join("mine.txt")).unwrap(), b"made on B\n");
    let merge = head_of(&b);
    assert_ne!(merge, b_head);
    let log = b.json(&["log", "--limit", "1"], 0);
    let parents = &log["snapshots"][0]["parents"];
    assert!(
        parents.as_array().is_some_and(|p| p.len() == 2),
        "not a merge snapshot: {log}"
    );
    // Again: nothing new on either side, so up to date at the merge.
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(j["head"], Value::String(merge), "{j}");
    assert!(j["merged"].is_null(), "{j}");
    server.stop();
}

/// A path B cannot write (a read-only folder; `LEFT_FAULT_DENY` stands in for one, since tests
/// run as root) stops neither this sync nor the next ones: it is reported, everything else is
/// written and the head moves; an add on B does not send the old version back as a change; the
/// next sync writes it.
#[test]
fn a_path_that_cannot_be_written_does_not_stop_syncing() {
    let a = Share::new();
    a.write("d/locked.txt", b"one");
    a.write("f.txt", b"one");
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    a.write("d/locked.txt", b"two two");
    a.write("f.txt", b"two");
    a.add(&[]);
    let r = b.sync(&[server.addr()], &[], &[("LEFT_FAULT_DENY", "locked.txt")]);
    assert!(
        r.stderr.contains("d/locked.txt: cannot be written here"),
        "{}",
        r.stderr
    );
    // Finished, but a path was not written: exit 3, as README promises.
    let j = r.expect_code(3).json();
    assert_eq!(j["checkout"]["unwritten"][0]["path"], "d/locked.txt", "{j}");
    assert_eq!(j["unwritten"], serde_json::json!(["d/locked.txt"]), "{j}");
    assert_eq!(fs::read(b.root.join("f.txt")).unwrap(), b"two");
    assert_eq!(fs::read(b.root.join("d/locked.txt")).unwrap(), b"one");
    assert_eq!(b.head(), a.head());
    // Like any path add could not take as it is: exit 3, named, and its synced version kept.
    let add = b.json(&["add"], 3);
    assert!(
        add["snapshot"].is_null(),
        "the old bytes were published: {add}"
    );
    assert_eq!(add["skipped"][0]["path"], "d/locked.txt", "{add}");
    a.write("g.txt", b"new");
    a.add(&[]);
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(j["checkout"]["unwritten"], serde_json::json!([]), "{j}");
    assert_same_tree(&a.root, &b.root);
    server.stop();
}

#[test]
fn two_servers_with_the_same_head_both_serve() {
    let a1 = Share::new();
    populate(&a1, 24);
    a1.add(&[]);
    let head = head_of(&a1);
    // Both servers capped at 8 MB/s, so the pull lasts long enough to watch both serve it.
    let slow = [("LEFT_IMPAIR", "rate=8000000,seed=4")];
    let s1 = a1.serve_on("127.0.0.1:0", &[], &slow);
    let a2 = a1.join();
    a2.sync_ok(&[s1.addr()], &[], &[]);
    assert_eq!(head_of(&a2), head);
    let s2 = a2.serve_on("127.0.0.1:0", &[], &slow);

    let b = a1.join();
    let b_device = b.left(&["id"]).expect_code(0).out().trim().to_owned();
    let mut child = spawn_sync(&b, &[s1.addr(), s2.addr()], &[], &[]);
    // While it runs, ask each server (`left status` reaches it over its control socket) how much
    // it has sent to B.
    let mut sent = [0u64; 2];
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the sync did not finish");
        for (i, share) in [&a1, &a2].into_iter().enumerate() {
            let r = share.left(&["--json", "status"]);
            if r.code != Some(0) {
                continue;
            }
            let v = r.json();
            for p in v["serve"]["sessions"].as_array().into_iter().flatten() {
                if p["device"] == Value::String(b_device.clone()) {
                    sent[i] = sent[i].max(p["bytes_sent"].as_u64().unwrap_or(0));
                }
            }
        }
    }
    let r = finish(child, Duration::from_secs(10));
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let j = r.expect_code(0).json();
    assert_same_tree(&a1.root, &b.root);
    for s in [&s1, &s2] {
        let p = peer_entry(&j, &s.addr());
        assert!(p["error"].is_null(), "{j}");
        assert_eq!(p["head"], Value::String(head.clone()), "{j}");
    }
    eprintln!("bytes sent to B: A1 {} A2 {}", sent[0], sent[1]);
    for (i, n) in sent.iter().enumerate() {
        assert!(
            *n > 2 * MIB as u64,
            "server A{} sent only {n} bytes of 24 MiB: the pull did not spread ({sent:?})",
            i + 1
        );
    }

    // One of the two is dead before the sync starts: the other serves everything and the dead
    // one is named.
    let dead_addr = s2.addr();
    s2.kill();
    let alone = {
        let d = a1.join();
        let started = Instant::now();
        d.sync_ok(&[s1.addr()], &["--timeout", "20"], &[]);
        started.elapsed()
    };
    let c = a1.join();
    let started = Instant::now();
    let j = c.sync_ok(&[dead_addr.clone(), s1.addr()], &["--timeout", "20"], &[]);
    let with_dead = started.elapsed();
    eprintln!("from A1 alone: {alone:?}; with a dead peer listed too: {with_dead:?}");
    // The dead peer must not hold up a pull the live one can serve on its own.
    assert!(
        with_dead < alone + Duration::from_secs(3),
        "a dead peer held the sync up: {with_dead:?} against {alone:?} from the live peer alone"
    );
    assert_same_tree(&a1.root, &c.root);
    let dead = peer_entry(&j, &dead_addr);
    assert!(dead["error"].is_string(), "the dead peer is not named: {j}");
    assert!(peer_entry(&j, &s1.addr())["error"].is_null(), "{j}");
    s1.stop();
}

#[test]
fn a_peer_of_another_share_is_refused() {
    let a = Share::new();
    a.write("x.txt", b"x");
    a.add(&[]);
    let server = a.serve();
    // A share of its own: another key, so the handshake cannot complete.
    let stranger = Share::new();
    let started = Instant::now();
    let r = stranger.sync(&[server.addr()], &["--timeout", "5"], &[]);
    let took = started.elapsed();
    let r = r.expect_code(1);
    let line = one_error_line(&r);
    assert!(line.contains(&server.addr()), "{line}");
    assert!(line.contains("share key"), "{line}");
    assert!(hint_of(&r).contains("share key"), "{}", r.stderr);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(!stranger.root.join("x.txt").exists());
    server.stop();
}

#[test]
fn odd_but_valid_names_survive_the_trip() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let a = Share::new();
    for name in [
        &b"caf\xe9 latin-1"[..],
        b"new\nline",
        b"...",
        b" leading space",
        b"-dash",
        b"\xf0\x9f\xa6\x80 crab",
        b"back\\slash",
    ] {
        fs::write(a.root.join(OsStr::from_bytes(name)), name).unwrap();
    }
    symlink("../../outside/target", a.root.join("dangling-relative")).unwrap();
    symlink("/etc/hostname-not-followed", a.root.join("absolute-link")).unwrap();
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    assert_same_tree(&a.root, &b.root);
    server.stop();
}

#[test]
fn several_peers_sync_from_one_server_at_once() {
    let a = Share::new();
    populate(&a, 16);
    a.add(&[]);
    let server = a.serve();
    let bs: Vec<Share> = (0..4).map(|_| a.join()).collect();
    let children: Vec<_> = bs
        .iter()
        .map(|b| spawn_sync(b, &[server.addr()], &["--timeout", "60"], &[]))
        .collect();
    for (b, child) in bs.iter().zip(children) {
        let r = finish(child, Duration::from_secs(120));
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        r.expect_code(0);
        assert_same_tree(&a.root, &b.root);
    }
    server.stop();
}

#[test]
fn ipv6_loopback() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; nothing to test");
        return;
    }
    let a = Share::new();
    populate(&a, 2);
    a.add(&[]);
    let server = a.serve_on("[::1]:0", &[], &[]);
    assert!(server.addr.is_ipv6(), "{}", server.addr);
    let b = a.join();
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    assert_same_tree(&a.root, &b.root);
    assert!(peer_entry(&j, &server.addr())["error"].is_null(), "{j}");
    server.stop();
}

#[test]
fn a_revoked_device_is_refused_with_the_peer_book_hint() {
    let a = Share::new();
    a.write("x.txt", b"x");
    a.add(&[]);
    let b = a.join();
    let b_id = b.left(&["id"]).expect_code(0).out().trim().to_owned();
    a.left(&["peers", "--revoke", &b_id]).expect_code(0);
    let server = a.serve();
    let r = b.sync(&[server.addr()], &["--timeout", "5"], &[]);
    let r = r.expect_code(1);
    let line = one_error_line(&r);
    assert!(line.contains(&server.addr()), "{line}");
    let hint = hint_of(&r);
    assert!(hint.contains("left peers"), "hint: {hint}");
    assert!(!hint.contains("left serve"), "hint: {hint}");
    assert!(!b.root.join("x.txt").exists());
    server.stop();
}

/// The `hint:` line of a failed run, without the prefix (`""` when there is none).
fn hint_of(r: &Run) -> String {
    r.stderr
        .lines()
        .find_map(|l| l.strip_prefix("hint: "))
        .unwrap_or_default()
        .to_owned()
}

/// A disk that fills up while chunks arrive (the store's `fail-write` hook: the N-th write batch
/// fails with ENOSPC): the sync stops at once with one line and a hint to free space, the share
/// folder is untouched, and the next sync fetches only what is still missing. How many write
/// batches a sync makes depends on how arrivals are batched, so several fault points are tried
/// and at least one must fall inside the chunk transfer.
#[test]
fn disk_full_while_fetching_is_one_clear_line_and_loses_nothing() {
    let a = Share::new();
    populate(&a, 24);
    a.add(&[]);
    let all = chunks_of(&a, &["a.txt", "sub/b.txt", "sub/deeper/c.txt", "big.bin"]);
    let server = a.serve();
    let mut inside = 0;
    for n in [6u32, 12, 16, 20, 24, 32] {
        let b = a.join();
        let before = read_tree(&b.root);
        let fault = format!("fail-write:{n}");
        let mut cmd = b.sync_cmd(&[server.addr()], &[], &[("LEFT_FAULT", &fault)]);
        let r = Run::from_output(cmd.output().unwrap());
        if r.code == Some(0) {
            eprintln!("{fault}: fewer than {n} write batches");
            continue;
        }
        assert_eq!(r.code, Some(1), "{fault}: {r:?}");
        let line = one_error_line(&r);
        assert!(line.contains("disk full"), "{fault}: {line}");
        assert!(
            r.stderr.contains("hint: free some disk space"),
            "{fault}: {}",
            r.stderr
        );
        assert_eq!(
            read_tree(&b.root),
            before,
            "{fault}: the share folder changed"
        );
        let have = stored(&b, &all);
        eprintln!("{fault}: {have} of {} chunks stored", all.len());
        if have > 0 && have < all.len() {
            inside += 1;
        }
        let j = b.sync_ok(&[server.addr()], &[], &[]);
        assert_eq!(
            u(&j, "chunks_fetched"),
            (all.len() - have) as u64,
            "{fault}: {j}"
        );
        assert_same_tree(&a.root, &b.root);
    }
    assert!(inside >= 1, "no fault point fell inside the chunk transfer");
    server.stop();
}

/// A peer that made several snapshots since we last synced is ahead of us, not diverged: the
/// sync fetches the snapshot headers in between (not their trees), fast-forwards, and `left log`
/// shows the whole chain. Those old snapshots are shallow here: `ls` of one says why it cannot
/// list it, and `verify` and `gc` accept them.
#[test]
fn several_snapshots_ahead_is_a_fast_forward_with_history() {
    let a = Share::new();
    a.write("f.txt", b"one\n");
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    for (i, name) in ["g.txt", "h.txt", "i.txt"].iter().enumerate() {
        a.write(name, format!("{i}\n").as_bytes());
        a.add(&["-m", name]);
    }
    a.write("f.txt", b"two\n");
    a.add(&[]);
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(j["diverged"], Value::Bool(false), "{j}");
    assert_eq!(j["checked_out"], Value::Bool(true), "{j}");
    assert_same_tree(&a.root, &b.root);
    let ids = |s: &Share| -> Vec<String> {
        s.json(&["log"], 0)["snapshots"]
            .as_array()
            .expect("snapshots")
            .iter()
            .map(|e| e["id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(ids(&b), ids(&a), "B's history differs from A's");
    let shallow = &ids(&b)[1];
    let r = b.left(&["ls", &shallow[..12]]).expect_code(1);
    assert!(r.stderr.contains("not in this store"), "{}", r.stderr);
    b.left(&["verify"]).expect_code(0);
    b.left(&["gc"]).expect_code(0);
    b.left(&["verify"]).expect_code(0);
    server.stop();
}

/// `left sync` on a share whose store a running `left serve` owns: one line saying so, with what
/// to do, and nothing touched (the serve keeps serving).
#[test]
fn sync_beside_a_running_serve_says_who_owns_the_store() {
    let a = Share::new();
    a.write("f.txt", b"one\n");
    a.add(&[]);
    let server_a = a.serve();
    let b = a.join();
    let server_b = b.serve();
    let before = read_tree(&b.root);
    let mut cmd = b.sync_cmd(&[server_a.addr()], &[], &[]);
    let r = Run::from_output(cmd.output().unwrap());
    assert_eq!(r.code, Some(1), "{r:?}");
    let line = one_error_line(&r);
    assert!(
        line.contains("`left serve`") && line.contains("owns the store"),
        "{line}"
    );
    assert!(r.stderr.contains("hint: stop that serve"), "{}", r.stderr);
    assert_eq!(read_tree(&b.root), before);
    server_b.stop();
    b.sync_ok(&[server_a.addr()], &[], &[]);
    assert_same_tree(&a.root, &b.root);
    server_a.stop();
}

/// `left sync` records the peer it pulled from in the peer book (before, `left peers` said "no
/// devices seen yet", so `verify --repair` could not find it), and without an argument syncs
/// with the devices the book knows. No peer named and none known, or a malformed address: a
/// usage error (exit 2), one line.
#[test]
fn sync_records_its_peer_and_without_arguments_uses_the_known_ones() {
    let a = Share::new();
    a.write("f.txt", b"one");
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    let r = b.left(&["sync"]).expect_code(2);
    let line = one_error_line(&r);
    assert!(line.contains("no peer given"), "{line}");
    assert!(r.stderr.contains("hint: name one"), "{}", r.stderr);
    for bad in ["localhost:notaport", "host:99999", ""] {
        let r = b.left(&["sync", bad]).expect_code(2);
        assert!(
            one_error_line(&r).contains("bad peer address"),
            "{}",
            r.stderr
        );
    }
    let r = b
        .left(&["sync", &server.addr(), "--timeout", "0"])
        .expect_code(2);
    assert!(one_error_line(&r).contains("--timeout"), "{}", r.stderr);

    b.sync_ok(&[server.addr()], &[], &[]);
    let peers = b.json(&["peers"], 0);
    let rec = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["device"] == server.hello["device"])
        .unwrap_or_else(|| panic!("A is not in B's peer book: {peers}"));
    assert_eq!(rec["last_addr"], Value::String(server.addr()), "{peers}");

    a.write("f.txt", b"two");
    a.add(&[]);
    let j = b.sync_ok(&[], &[], &[]);
    assert_eq!(j["peers"][0]["addr"], Value::String(server.addr()), "{j}");
    assert_eq!(fs::read(b.root.join("f.txt")).unwrap(), b"two");
    assert_eq!(b.head(), a.head());
    server.stop();
}

/// Ctrl-C (SIGINT) in the middle of a fetch: one line, "interrupted; run the same command to
/// resume", exit 130; the store stays consistent, and the same command then fetches only what
/// is missing and finishes.
#[test]
fn sigint_during_a_sync_exits_130_and_the_same_command_resumes() {
    let a = Share::new();
    populate(&a, 24);
    a.add(&[]);
    let all = chunks_of(&a, &["a.txt", "sub/b.txt", "sub/deeper/c.txt", "big.bin"]);
    let slow = a.serve_on(
        "127.0.0.1:0",
        &[],
        &[("LEFT_IMPAIR", "rate=8000000,seed=2")],
    );
    let b = a.join();
    let before = du(&b.store);
    let mut child = spawn_sync(&b, &[slow.addr()], &[], &[]);
    assert!(
        grown_while_running(&b, before, 6 << 20, &mut child),
        "the sync finished before its store grew"
    );
    signal(&child, libc::SIGINT);
    let r = finish(child, Duration::from_secs(30));
    let r = r.expect_code(130);
    assert_eq!(
        one_error_line(&r),
        "left: interrupted; run the same command to resume"
    );
    assert!(r.stdout.is_empty(), "{}", r.out());
    slow.stop();
    let have = stored(&b, &all);
    assert!(
        have > 0 && have < all.len(),
        "{have} of {} chunks",
        all.len()
    );
    b.verify_clean();

    let fast = a.serve();
    let j = b.sync_ok(&[fast.addr()], &[], &[]);
    assert_eq!(
        u(&j, "chunks_fetched"),
        (all.len() - have) as u64,
        "stored chunks crossed the wire again: {j}"
    );
    assert_same_tree(&a.root, &b.root);
    b.verify_clean();
    fast.stop();
}

/// A FIFO in the share of an automatic-sync serve: the scan skips it (it is never read), and
/// that is no longer silent: `left status` lists it, and the serve's log names it once.
#[test]
fn a_fifo_skipped_by_automatic_sync_is_reported_in_status_and_the_log() {
    let a = Share::new();
    a.write("f.txt", b"x");
    let fifo = std::ffi::CString::new(a.root.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let server = a.serve_on("127.0.0.1:0", &["--auto", "--settle", "0.1"], &[]);
    let mut st = Value::Null;
    wait_for(
        "the scan to report the FIFO",
        Duration::from_secs(30),
        || {
            st = a.json(&["status"], 0);
            st["skipped"].as_array().is_some_and(|s| !s.is_empty())
        },
    );
    assert_eq!(st["skipped"][0]["path"], "pipe", "{st}");
    let human = a.left(&["status"]).expect_code(0).out();
    assert!(
        human.contains("could not be read at the last scan") && human.contains("  pipe: "),
        "{human}"
    );
    let log = server.stop();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("pipe:") && l.contains("warning"))
            .count(),
        1,
        "{log}"
    );
}

/// `.leftignore` never deletes: B publishes a `.leftignore` of `*` and `!.leftignore`, which
/// freezes every path it had from A (more than 100: B's add warns). A syncs it: A's files stay on
/// disk and in A's next snapshot, and A's own add reports the freeze too.
#[test]
fn a_peers_leftignore_of_everything_deletes_nothing() {
    let a = Share::new();
    for i in 0..120 {
        a.write(
            &format!("d{}/f{i}.txt", i % 5),
            format!("file {i}\n").as_bytes(),
        );
    }
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    server.stop();
    assert_same_tree(&a.root, &b.root);

    b.write(".leftignore", b"*\n!.leftignore\n");
    let r = b.left(&["add"]);
    let add_stderr = r.expect_code(0).stderr;
    let server = b.serve();
    let j = a.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(j["head"], Value::String(head_of(&b)), "{j}");
    server.stop();
    assert_eq!(
        fs::read(a.root.join(".leftignore")).unwrap(),
        b"*\n!.leftignore\n"
    );
    for i in 0..120 {
        let p = a.root.join(format!("d{}/f{i}.txt", i % 5));
        assert_eq!(
            fs::read(&p).unwrap_or_else(|e| panic!("{} deleted: {e}", p.display())),
            format!("file {i}\n").as_bytes()
        );
    }
    // B's add warned.
    assert!(
        add_stderr.contains("120 tracked paths are now ignored"),
        "no freeze warning: {add_stderr}"
    );
    // A's next add publishes no deletion either, and reports the freeze.
    a.write("d0/f0.txt", b"edited on A, frozen\n");
    let add = a.json(&["add"], 0);
    assert_eq!(add["frozen"], 120, "{add}");
    assert_eq!(add["newly_frozen"], 120, "{add}");
    let st = a.json(&["status"], 0);
    assert_eq!(st["frozen"], 120, "{st}");
    let ls = a.json(&["ls", "d3"], 0);
    assert!(ls.to_string().contains("f3.txt"), "{ls}");
    // `left forget` drops one on purpose; a path it cannot forget is a usage error (exit 2).
    let r = a.left(&["forget", "d3/nope.txt"]).expect_code(2);
    assert!(r.stderr.contains("not in the snapshot"), "{}", r.stderr);
    a.left(&["forget"]).expect_code(2);
    let j = a.json(&["forget", "d3/f3.txt"], 0);
    assert_eq!(j["frozen"], 119, "{j}");
    let ls = a.json(&["ls", "d3"], 0);
    assert!(!ls.to_string().contains("\"f3.txt\""), "{ls}");
    assert!(ls.to_string().contains("f8.txt"), "{ls}");
    assert!(
        a.root.join("d3/f3.txt").exists(),
        "forget keeps the file on disk"
    );
}

/// A freshly joined peer has only the head's history that the sync fetched (headers, some of
/// them without trees, the oldest parents not at all): that is normal, not damage. `verify`
/// passes and says where local history starts, and `left log` says so too. Before, verify
/// reported `missing node …` and "cannot be restored", exit 1, on every new peer.
#[test]
fn verify_on_a_fresh_joiner_passes_and_says_where_history_starts() {
    let a = Share::new();
    for i in 0..5 {
        a.write(&format!("f{i}.txt"), format!("{i}\n").as_bytes());
        a.add(&["-m", &format!("snapshot {i}")]);
    }
    let server = a.serve();
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    assert_same_tree(&a.root, &b.root);
    let r = b.left(&["verify"]);
    assert!(!r.stderr.contains("missing node"), "{}", r.stderr);
    let r = r.expect_code(0);
    assert!(r.out().contains("history: "), "{}", r.out());
    let j = b.json(&["verify"], 0);
    assert_eq!(j["ok"], Value::Bool(true), "{j}");
    assert!(j["snapshots"].as_u64().unwrap() >= 1, "{j}");
    let log = b.json(&["log"], 0);
    let starts = j["history_starts"].as_array().unwrap();
    assert!(
        !starts.is_empty(),
        "a joiner's history starts somewhere: {j}"
    );
    assert_eq!(log["history_starts"], j["history_starts"], "{log}");
    // Every snapshot local history starts at is in the log, and its missing parents are not.
    let ids: Vec<&Value> = log["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    for s in starts {
        assert!(ids.contains(&s), "{log}");
    }
    let human = b.left(&["log"]).expect_code(0);
    assert!(
        human.out().contains("local history starts at"),
        "{}",
        human.out()
    );
    server.stop();
}

fn kept_by<'a>(gc: &'a Value, name: &str) -> Option<&'a Value> {
    gc["kept_by"]
        .as_array()
        .expect("kept_by array")
        .iter()
        .find(|k| k["name"] == name)
}

/// A device's last snapshot (ref `peers/<device>`) holds a big file we deleted since: gc keeps
/// it and says that ref is what keeps it; once the device is revoked the ref is gone and the
/// next gc frees the bytes, while head's files still restore and verify is clean.
#[test]
fn a_revoked_devices_last_snapshot_no_longer_pins_bytes() {
    const BIG: usize = 8 << 20;
    let a = Share::new();
    a.write("keep.txt", b"kept by everyone");
    a.write("big.bin", &random_bytes(19, BIG));
    a.add(&[]);
    let server = a.serve();
    let b = a.join();
    b.sync_ok(&[server.addr()], &[], &[]);
    let device = server.hello["device"].as_str().expect("device").to_owned();
    server.stop();
    let peer_ref = format!("peers/{device}");
    let theirs = a.head().expect("a head");

    fs::remove_file(b.root.join("big.bin")).unwrap();
    b.add(&[]);
    let gc = b.json(&["gc", "--keep-last", "1"], 0);
    assert_eq!(
        u(&gc, "chunks_removed"),
        0,
        "the peer's snapshot keeps big.bin: {gc}"
    );
    let k = kept_by(&gc, &peer_ref).unwrap_or_else(|| panic!("no {peer_ref} in {gc}"));
    assert_eq!(k["snapshot"], Value::String(theirs.clone()), "{k}");
    assert_eq!(k["device"], Value::String(device.clone()), "{k}");
    assert_eq!(k["in_peer_book"], Value::Bool(true), "{k}");
    assert!(u(k, "only_bytes") >= BIG as u64 * 9 / 10, "{k}");
    assert_eq!(
        u(kept_by(&gc, "head").expect("head"), "only_bytes"),
        0,
        "{gc}"
    );
    let human = b.left(&["gc", "--keep-last", "1"]).expect_code(0).out();
    let short: String = device.chars().take(8).collect();
    assert!(
        human.contains(&format!("kept alive by peers/{short} (last seen "))
            && human.contains("only it holds")
            && human.contains(&format!("`left peers --forget {device}` drops it")),
        "{human}"
    );

    let r = b.json(&["peers", "--revoke", &device], 0);
    assert_eq!(r["dropped_ref"], Value::String(theirs), "{r}");
    let gc = b.json(&["gc", "--keep-last", "1"], 0);
    assert!(
        u(&gc, "chunks_removed") >= (BIG / (256 << 10)) as u64,
        "{gc}"
    );
    assert!(
        u(&gc, "bytes_after") + (BIG as u64 / 2) < u(&gc, "bytes_before"),
        "the disk got big.bin back: {gc}"
    );
    assert!(kept_by(&gc, &peer_ref).is_none(), "{gc}");
    b.verify_clean();
    let out = b.scratch("restored");
    b.left(&["restore", "head", "--to", out.to_str().unwrap()])
        .expect_code(0);
    assert_same_tree(&b.root, &out);
}
