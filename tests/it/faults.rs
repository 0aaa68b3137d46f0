//! The CLI on bad input and failures: unreadable files, a locked store, a full disk, corrupt
//! chunks, and crashes (a deterministic abort at the N-th write batch, and a real SIGKILL).

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::*;

/// The unprivileged user and group `left` runs as in the permission test.
const NOBODY: u32 = 65534;

/// Makes `cmd` run as nobody when the tests run as root (root reads every file regardless of mode).
fn as_unprivileged(cmd: &mut Command) -> &mut Command {
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

/// No core files from deliberate aborts (they would land in the share and be snapshot next time).
fn no_core_dump(cmd: &mut Command) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn chown_tree(path: &Path, uid: u32) {
    chown(path, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

#[test]
fn unreadable_file_is_reported_by_path_skipped_and_exit_3() {
    let share = Share::uninit();
    share.write("readable.txt", b"fine");
    share.write("sub/also-fine.txt", b"fine too");
    let secret = share.write("sub/secret.txt", b"you cannot read me");
    if is_root() {
        fs::set_permissions(share.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        chown_tree(&share.root, NOBODY);
    }
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    run(as_unprivileged(&mut share.cmd(&["init"]))).expect_code(0);

    let r = run(as_unprivileged(&mut share.cmd(&["--json", "add"]))).expect_code(3);
    let v = r.json();
    assert!(v["snapshot"].is_string(), "a snapshot is still made: {v}");
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{v}");
    assert_eq!(skipped[0]["path"], "sub/secret.txt", "{v}");
    assert!(
        r.stderr.contains("left: skipped sub/secret.txt"),
        "stderr names the file: {}",
        r.stderr
    );

    // The rest of the tree is in the snapshot; the unreadable file is not.
    let ls = share.json(&["ls", "sub"], 0);
    let names: Vec<_> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["also-fine.txt"], "{ls}");
    share.verify_clean();

    // Human mode: the same exit code and a summary that counts the skip.
    let r = run(as_unprivileged(&mut share.cmd(&["add"]))).expect_code(3);
    assert!(r.out().contains("1 skipped"), "{}", r.out());
}

#[test]
fn locked_store_is_a_clear_error() {
    let share = Share::new();
    share.write("a.txt", b"a");
    let held = left_store::Store::open(&share.store).expect("open store in the test");
    let r = share.left(&["add"]).expect_code(1);
    let first = r.stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("left: "), "{}", r.stderr);
    assert!(
        first.contains(&format!("store is in use by pid {}", std::process::id())),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("hint: "), "{}", r.stderr);
    // Read-only commands open the store read-only beside the holder (as beside a running serve).
    share.left(&["log"]).expect_code(0);
    drop(held);
    assert!(share.add(&[])["snapshot"].is_string());
}

/// A share with one snapshot of `a.bin` and a new, bigger `b.bin` waiting to be added.
/// Returns (share, first head, bytes of the new file).
fn share_with_pending_change(new_len: usize) -> (Share, String, Vec<u8>) {
    let share = Share::new();
    share.write("a.bin", &random_bytes(100, 1 << 20));
    let head = share.add(&["-m", "before"])["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let data = random_bytes(101, new_len);
    share.write("b.bin", &data);
    (share, head, data)
}

/// The store is readable, verify is clean and head is still `head`.
#[track_caller]
fn assert_intact(share: &Share, head: &str) {
    share.verify_clean();
    assert_eq!(share.head().as_deref(), Some(head), "head moved");
    let target = share.scratch(&format!("check-{}", rand_suffix()));
    share
        .left(&["restore", head, "--to", target.to_str().unwrap()])
        .expect_code(0);
    assert!(target.join("a.bin").is_file());
    assert!(!target.join("b.bin").exists());
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn disk_full_while_adding_keeps_the_previous_head() {
    for n in [1, 2, 3] {
        let (share, head, data) = share_with_pending_change(8 << 20);
        let r = run(share
            .cmd(&["add"])
            .env("LEFT_FAULT", format!("fail-write:{n}")));
        let r = r.expect_code(1);
        assert!(r.stderr.contains("disk full"), "n={n}: {}", r.stderr);
        assert!(
            r.stderr.contains("hint: free some disk space"),
            "{}",
            r.stderr
        );
        assert!(r.stdout.is_empty());
        assert_intact(&share, &head);
        // Once there is room again, the add goes through.
        let v = share.add(&[]);
        assert!(v["snapshot"].is_string(), "n={n}: {v}");
        assert!(u(&v, "bytes_new") <= data.len() as u64 + (1 << 20));
        share.verify_clean();
    }
}

#[test]
fn abort_at_several_write_batches_leaves_a_consistent_store() {
    let new_len = 16 << 20;
    let mut crashed = 0;
    for n in [1, 2, 3, 5, 8] {
        let (share, head, _) = share_with_pending_change(new_len);
        let mut cmd = share.cmd(&["add"]);
        cmd.env("LEFT_FAULT", format!("abort-write:{n}"));
        let out = no_core_dump(&mut cmd).output().unwrap();
        if out.status.success() {
            // Fewer than n write batches: nothing to test for this n, but it must be consistent.
            share.verify_clean();
            continue;
        }
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "n={n}: {out:?}");
        crashed += 1;
        assert_intact(&share, &head);
        let v = share.add(&[]);
        assert!(v["snapshot"].is_string(), "n={n}: {v}");
        if n > 1 {
            assert!(
                u(&v, "bytes_new") < new_len as u64,
                "n={n}: the add after the crash reused nothing: {v}"
            );
        }
        share.verify_clean();
    }
    assert!(crashed >= 2, "the abort hook fired only {crashed} times");
}

#[test]
fn sigkill_at_several_points_of_an_add_leaves_a_consistent_store() {
    let new_len = 96 << 20;
    let mut kills = 0;
    // Kill points: once the store has grown by this much. The store writes chunks in batches of about
    // 8 MiB, so each point lies after at least one whole batch and before the last.
    for grown in [12u64 << 20, 32 << 20, 56 << 20] {
        let (share, head, _) = share_with_pending_change(new_len);
        let before = du(&share.store);
        let mut child = share
            .cmd(&["add"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Polling the store size is a condition, not a timed sleep; if the add wins the race the
        // test still checks consistency, and says so.
        let killed = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            if du(&share.store) > before + grown {
                child.kill().unwrap();
                break true;
            }
            std::thread::yield_now();
        };
        let status = child.wait().unwrap();
        if killed {
            assert_eq!(status.signal(), Some(libc::SIGKILL));
            kills += 1;
            assert_intact(&share, &head);
            let v = share.add(&[]);
            assert!(
                u(&v, "bytes_new") < new_len as u64,
                "killed after {grown} bytes: the next add reused nothing: {v}"
            );
        } else {
            eprintln!("note: left add finished before the store grew by {grown} bytes");
        }
        share.verify_clean();
    }
    assert!(kills >= 1, "no add could be killed mid-way");
}

#[test]
fn corrupt_chunk_is_named_by_verify_and_never_restored() {
    let share = Share::new();
    // Smaller than the minimum chunk size: the file is exactly one chunk, whose id is its hash.
    let victim = random_bytes(5, 12 * 1024);
    share.write("dir/victim.bin", &victim);
    share.write("fine.txt", b"unharmed");
    share.add(&[]);
    let chunk = left_store::ChunkId(left_store::Hash::of(&victim));
    {
        let store = left_store::Store::open(&share.store).unwrap();
        store.debug_corrupt_chunk(chunk).expect("corrupt hook");
    }

    let r = share.left(&["--json", "verify"]).expect_code(1);
    let v = r.json();
    assert_eq!(v["ok"], Value::Bool(false));
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert_eq!(problems[0]["object"], "chunk");
    assert_eq!(problems[0]["kind"], "corrupt");
    assert_eq!(problems[0]["id"], Value::String(chunk.to_string()));
    assert_eq!(problems[0]["paths"][0], "dir/victim.bin", "{v}");
    assert!(r.stderr.contains("verify found 1 problem"), "{}", r.stderr);

    let human = share.left(&["verify"]).expect_code(1);
    assert!(
        human
            .out()
            .contains(&format!("corrupt chunk {chunk}, used by: dir/victim.bin")),
        "{}",
        human.out()
    );

    let target = share.scratch("restored");
    let r = share
        .left(&["restore", "head", "--to", target.to_str().unwrap()])
        .expect_code(1);
    assert!(r.stderr.contains("corrupt"), "{}", r.stderr);
    // Whatever was written must be right: every file (temp files included) holds exactly the bytes
    // of the share's file of that name.
    assert_no_wrong_bytes(&share.root, &target);
}

/// Every regular file under `target` holds exactly the bytes of the same path under `source`.
#[track_caller]
fn assert_no_wrong_bytes(source: &Path, target: &Path) {
    for (path, entry) in read_tree(target) {
        if let Entry::File { bytes, .. } = entry {
            assert!(
                fs::read(source.join(&path)).ok() == Some(bytes),
                "{} holds bytes the snapshot does not have",
                path.display()
            );
        }
    }
}

#[test]
fn damaged_chunk_inside_a_big_file_blocks_only_that_file() {
    for damage in ["corrupt", "missing"] {
        let share = Share::new();
        share.write("big.bin", &random_bytes(8, 6 << 20));
        share.write("other/fine.txt", b"unharmed");
        let snap = share.add(&[])["snapshot"].as_str().unwrap().to_owned();
        let chunk = {
            let store = left_store::Store::open(&share.store).unwrap();
            let id = store.resolve(&snap).unwrap();
            let chunks = store.debug_file_chunks(id, Path::new("big.bin")).unwrap();
            assert!(
                chunks.len() > 10,
                "expected many chunks, got {}",
                chunks.len()
            );
            let victim = chunks[chunks.len() / 2];
            match damage {
                "corrupt" => store.debug_corrupt_chunk(victim).unwrap(),
                _ => store.debug_delete_chunk(victim).unwrap(),
            }
            victim
        };
        let r = share.left(&["verify"]).expect_code(1);
        assert!(
            r.out()
                .contains(&format!("{damage} chunk {chunk}, used by: big.bin")),
            "{damage}: {}",
            r.out()
        );
        // The whole snapshot cannot be restored, and nothing wrong is written.
        let target = share.scratch(&format!("all-{damage}"));
        share
            .left(&["restore", "head", "--to", target.to_str().unwrap()])
            .expect_code(1);
        assert_no_wrong_bytes(&share.root, &target);
        assert!(
            !target.join("big.bin").exists(),
            "{damage}: partial big.bin"
        );
        // What does not use the chunk still restores.
        let target = share.scratch(&format!("other-{damage}"));
        share
            .left(&["restore", "head", "other", "--to", target.to_str().unwrap()])
            .expect_code(0);
        assert_eq!(fs::read(target.join("fine.txt")).unwrap(), b"unharmed");
    }
}

#[test]
fn fifo_in_the_share_is_skipped_not_waited_on() {
    let share = Share::new();
    share.write("a.txt", b"a");
    let fifo = std::ffi::CString::new(
        share
            .root
            .join("pipe")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: fifo is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // Nobody ever writes to the pipe: an add that opened it would block forever.
    let r = share.left(&["--json", "add"]).expect_code(3);
    let v = r.json();
    assert!(v["snapshot"].is_string(), "{v}");
    assert_eq!(v["skipped"][0]["path"], "pipe", "{v}");
    assert!(r.stderr.contains("left: skipped pipe"), "{}", r.stderr);
}
