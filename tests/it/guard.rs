//! The deletion guard (`left::app::guard`): a peer's snapshot that would delete or replace many
//! files here is held, not checked out, until `left hold accept|reject` (or `sync --yes`).

use std::path::Path;
use std::time::Duration;

use crate::util::{assert_same_tree, wait_for, Share};

/// A share with `n` small files in two folders, snapshotted.
fn with_files(n: usize) -> Share {
    let a = Share::new();
    for i in 0..n {
        a.write(
            &format!("d{}/f{i:03}.txt", i % 2),
            format!("file {i}\n").as_bytes(),
        );
    }
    a.add(&[]);
    a
}

fn delete(share: &Share, range: std::ops::Range<usize>) {
    for i in range {
        std::fs::remove_file(share.root.join(format!("d{}/f{i:03}.txt", i % 2))).unwrap();
    }
    share.add(&[]);
}

fn count_files(root: &Path) -> usize {
    ["d0", "d1"]
        .iter()
        .map(|d| std::fs::read_dir(root.join(d)).map_or(0, |r| r.count()))
        .sum()
}

/// Files a sync's checkout (or merge) removed and wrote, from its `--json`.
fn removed(j: &serde_json::Value) -> u64 {
    j["checkout"]["files_removed"]
        .as_u64()
        .or(j["merged"]["files_removed"].as_u64())
        .unwrap_or(0)
}

fn written(j: &serde_json::Value) -> u64 {
    j["checkout"]["files_written"]
        .as_u64()
        .or(j["merged"]["files_written"].as_u64())
        .unwrap_or(0)
}

fn held(share: &Share) -> Vec<serde_json::Value> {
    share.json(&["hold"], 0)["held"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_mass_deletion_is_held_then_accepted() {
    let a = with_files(40);
    let b = a.join();
    let server = a.serve();
    b.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(count_files(&b.root), 40);
    // 60 % deleted in one snapshot.
    delete(&a, 0..24);
    let a_head = a.head().unwrap();
    let r = b.sync(&[server.addr()], &[], &[]).expect_code(5);
    assert!(r.stderr.contains("held"), "{}", r.stderr);
    assert_eq!(r.json()["held"]["deleted_files"], 24, "{}", r.out());
    assert_eq!(count_files(&b.root), 40, "nothing was checked out");
    assert_ne!(b.head(), Some(a_head.clone()));
    // Status and hold say what is held, from whom, and how to decide.
    let holds = held(&b);
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0]["id"], a_head.as_str());
    assert_eq!(holds[0]["replaced_files"], 0);
    let status = b.json(&["status"], 0);
    assert_eq!(status["held"][0]["id"], a_head.as_str(), "{status}");
    let human = b.left(&["status"]).expect_code(0).out();
    assert!(human.contains("left hold accept"), "{human}");
    // Syncing again does not check it out either.
    b.sync(&[server.addr()], &[], &[]).expect_code(5);
    // Accept: the deletions happen, the hold goes, the guard counts from here.
    let j = b.json(&["hold", "accept", &a_head[..10]], 0);
    assert_eq!(j["files_removed"], 24, "{j}");
    assert_eq!(count_files(&b.root), 16);
    assert_eq!(b.head(), Some(a_head.clone()));
    assert!(held(&b).is_empty());
    // The deleted files are still in history.
    let back = b.scratch("back");
    b.left(&["restore", "head~1", "--to", back.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(count_files(&back), 40);
    server.stop();
}

#[test]
fn small_deletions_add_up_until_they_are_held() {
    let a = with_files(100);
    let b = a.join();
    let server = a.serve();
    b.sync_ok(&[server.addr()], &[], &[]);
    // 30 %, then steps of 5 %: each passes alone; the one that reaches half of the files since
    // the last confirmation is held.
    delete(&a, 0..30);
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(removed(&j), 30, "{j}");
    for step in 0..3 {
        delete(&a, 30 + step * 5..35 + step * 5);
        b.sync_ok(&[server.addr()], &[], &[]);
    }
    delete(&a, 45..50);
    let r = b.sync(&[server.addr()], &[], &[]).expect_code(5);
    assert_eq!(r.json()["held"]["deleted_files"], 5, "{}", r.out());
    assert!(r.stderr.contains("50 of 100 files"), "{}", r.stderr);
    assert_eq!(count_files(&b.root), 55);
    // `--yes` checks it out and the count starts again from the 50 files left.
    let j = b.sync_ok(&[server.addr()], &["--yes"], &[]);
    assert_eq!(removed(&j), 5, "{j}");
    assert_eq!(count_files(&b.root), 50);
    assert!(held(&b).is_empty());
    delete(&a, 50..60);
    b.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(count_files(&b.root), 40);
    server.stop();
}

#[test]
fn local_deletions_do_not_count_and_reject_brings_the_files_back_for_everyone() {
    let a = with_files(40);
    let b = a.join();
    let c = a.join();
    let server = a.serve();
    b.sync_ok(&[server.addr()], &[], &[]);
    c.sync_ok(&[server.addr()], &[], &[]);
    // A first change sets each device's base (its 40 files).
    a.write("new.txt", b"new\n");
    a.add(&[]);
    b.sync_ok(&[server.addr()], &[], &[]);
    c.sync_ok(&[server.addr()], &[], &[]);
    // B deletes 20 of its own files; A deletes 12 others. B merges: only A's 12 count against
    // B's limit of 20 (counting B's own would make 32 and hold).
    delete(&b, 20..40);
    delete(&a, 0..12);
    let j = b.sync_ok(&[server.addr()], &[], &[]);
    assert_eq!(removed(&j), 12, "{j}");
    assert_eq!(count_files(&b.root), 8);
    // C still has all 40: A's 12 and 24 more hold there. The same change adds a file and
    // edits one.
    a.write("d0/added.txt", b"added with the deletions\n");
    a.write("d1/f037.txt", b"edited with the deletions\n");
    delete(&a, 12..36);
    let a_head = a.head().unwrap();
    c.sync(&[server.addr()], &[], &[]).expect_code(5);
    let j = c.json(&["hold", "reject", &a_head[..10]], 0);
    let kept = j["head"].as_str().unwrap().to_owned();
    // The reject keeps every file of C and takes what the change adds.
    assert_eq!(count_files(&c.root), 41);
    assert_eq!(
        std::fs::read(c.root.join("d0/added.txt")).unwrap(),
        b"added with the deletions\n"
    );
    assert_eq!(
        std::fs::read(c.root.join("d1/f037.txt")).unwrap(),
        b"file 37\n"
    );
    assert!(held(&c).is_empty());
    server.stop();
    // A pulls C's rejecting snapshot: a fast-forward that brings the 36 files (and the old
    // version of the edited one) back and keeps A's addition.
    let c_server = c.serve();
    let j = a.sync_ok(&[c_server.addr()], &[], &[]);
    assert_eq!(written(&j), 37, "{j}");
    assert_eq!(count_files(&a.root), 41);
    assert_eq!(a.head(), Some(kept));
    assert_same_tree(&c.root, &a.root);
    c_server.stop();
}

#[test]
fn one_huge_file_rewritten_is_held_by_bytes() {
    let a = Share::new();
    a.write("small.txt", b"small\n");
    a.write("disk.img", &crate::util::random_bytes(3, 3 << 20));
    a.add(&[]);
    let b = a.join();
    let server = a.serve();
    b.sync_ok(&[server.addr()], &[], &[]);
    // This device holds from 1 MiB (the default floor, 64 MiB, is for real disk images).
    b.left(&["hold", "--min-bytes", "1048576"]).expect_code(0);
    a.write("disk.img", &vec![0u8; 3 << 20]);
    a.add(&[]);
    let r = b.sync(&[server.addr()], &[], &[]).expect_code(5);
    let h = &r.json()["held"];
    assert_eq!(
        (h["replaced_files"].as_u64(), h["deleted_files"].as_u64()),
        (Some(1), Some(0)),
        "{h}"
    );
    assert!(h["why"].as_str().unwrap().contains("bytes"), "{h}");
    let img = std::fs::read(b.root.join("disk.img")).unwrap();
    assert!(img.iter().any(|&x| x != 0), "the image was not overwritten");
    // The guard off: everything goes through.
    b.left(&["hold", "--off"]).expect_code(0);
    b.sync_ok(&[server.addr()], &[], &[]);
    assert!(std::fs::read(b.root.join("disk.img"))
        .unwrap()
        .iter()
        .all(|&x| x == 0));
    server.stop();
}

#[test]
fn the_automatic_loop_holds_and_the_serving_process_decides() {
    let a = with_files(40);
    let b = a.join();
    let a_server = a.serve();
    b.sync_ok(&[a_server.addr()], &[], &[]);
    let b_server = b.serve_on(
        "127.0.0.1:0",
        &["--peer", &a_server.addr(), "--interval", "1", "--no-watch"],
        &[],
    );
    delete(&a, 0..30);
    let a_head = a.head().unwrap();
    wait_for("B's loop to hold A's head", Duration::from_secs(60), || {
        held(&b).iter().any(|h| h["id"] == a_head.as_str())
    });
    assert_eq!(count_files(&b.root), 40);
    // Through the control socket of the running serve.
    b.json(&["hold", "accept", &a_head[..10]], 0);
    assert_eq!(count_files(&b.root), 10);
    assert_eq!(b.head(), Some(a_head));
    let log = b_server.stop();
    assert!(log.contains("held snapshot"), "{log}");
    a_server.stop();
}

/// A pseudo-terminal (master, slave), for a child whose stdin must be a terminal.
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; the name buffer is sized
    // and NUL-terminated by ptsname_r.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = std::fs::File::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut buf = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
        let name = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_str()
            .unwrap()
            .to_owned();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(name)
            .unwrap();
        (master, slave)
    }
}

/// Runs `left sync ADDR` in `share` with its stdin and stderr on a terminal, answering
/// `answer`; returns (exit code, what the terminal showed).
fn sync_at_a_terminal(share: &Share, addr: &str, answer: &str) -> (Option<i32>, String) {
    use std::io::{Read, Write};
    use std::os::unix::io::AsRawFd;
    let (mut master, slave) = pty();
    let mut child = share
        .cmd(&["sync", addr])
        .stdin(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The line waits in the terminal until the prompt reads it.
    master.write_all(answer.as_bytes()).unwrap();
    let status = crate::util::wait_timeout(&mut child, Duration::from_secs(60))
        .expect("left sync did not end");
    // SAFETY: fcntl on a descriptor we own; the slave stays open here, so reading what the
    // child wrote gives the bytes and then EAGAIN, never EIO.
    unsafe {
        let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        shown.extend_from_slice(&buf[..n]);
    }
    drop(slave);
    (status.code(), String::from_utf8_lossy(&shown).into_owned())
}

/// At a terminal, `left sync` asks before checking out what the guard holds: "n" keeps the
/// files (exit 5, the hold listed), "y" checks it out (exit 0).
#[test]
fn at_a_terminal_sync_asks_before_a_held_checkout() {
    let a = with_files(40);
    let b = a.join();
    let server = a.serve();
    b.sync_ok(&[server.addr()], &[], &[]);
    delete(&a, 0..30);
    let (code, shown) = sync_at_a_terminal(&b, &server.addr(), "n\n");
    assert!(shown.contains("check it out anyway? [y/N]"), "{shown}");
    assert_eq!(code, Some(5), "{shown}");
    assert_eq!(count_files(&b.root), 40);
    assert_eq!(held(&b).len(), 1);
    let (code, shown) = sync_at_a_terminal(&b, &server.addr(), "y\n");
    assert!(shown.contains("check it out anyway? [y/N]"), "{shown}");
    assert_eq!(code, Some(0), "{shown}");
    assert_eq!(count_files(&b.root), 10);
    assert!(held(&b).is_empty());
    assert_eq!(b.head(), a.head());
    server.stop();
}

/// Sixty snapshots that each delete 1 % of the files are caught as one that deletes 60 %: the
/// measure adds up since the last decision, so the 50th deletion (50 % of 100 files) is held,
/// and none before it.
#[test]
fn sixty_one_percent_deletions_are_held_like_one_sixty_percent_deletion() {
    let a = with_files(100);
    let b = a.join();
    let server = a.serve();
    b.sync_ok(&[server.addr()], &[], &[]);
    let mut held_at = None;
    for i in 0..60 {
        delete(&a, i..i + 1);
        let r = b.sync(&[server.addr()], &[], &[]);
        match r.code {
            Some(0) => assert!(held_at.is_none(), "a sync went through after the hold"),
            Some(5) => {
                held_at.get_or_insert(i + 1);
            }
            c => panic!("sync exited {c:?}: {}", r.stderr),
        }
        if held_at.is_some() {
            break;
        }
    }
    assert_eq!(held_at, Some(50), "held after {held_at:?} deletions of 1 %");
    assert_eq!(
        count_files(&b.root),
        51,
        "the held 50th deletion is not checked out"
    );
    server.stop();
}
