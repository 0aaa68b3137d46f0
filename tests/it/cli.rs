//! The CLI end to end on good input: init, add, log, ls, restore, verify, gc, id, output formats.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};

use serde_json::Value;

use crate::util::*;

/// An mtime well in the past (2020-09-13), for files a test expects the scan cache to skip.
const OLD: i64 = 1_600_000_000_000_000_000;

/// A tree with every kind of thing `add` must keep: bytes, modes, ns mtimes, links, empty folders,
/// a non-UTF-8 name, an empty file and a file spanning several chunks.
fn fill_rich_tree(share: &Share) {
    let root = &share.root;
    share.write("hello.txt", b"hello, left\n");
    share.write("empty-file", b"");
    share.write("docs/a.md", &b"# a\n".repeat(1000));
    share.write("docs/deep/b.bin", &random_bytes(1, 700_000));
    let script = share.write("run.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let private = share.write("docs/private", b"secret");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    let raw_name = OsStr::from_bytes(b"caf\xe9-latin1.txt");
    fs::write(root.join("docs").join(raw_name), b"non-utf8 name").unwrap();
    symlink("docs/a.md", root.join("link-to-a")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    symlink("deep", root.join("docs/link-to-dir")).unwrap();
    // Distinct ns mtimes, set bottom-up so creating children does not disturb them.
    let mut t = 1_600_000_000_123_456_789i64;
    for rel in [
        "hello.txt",
        "empty-file",
        "docs/a.md",
        "docs/deep/b.bin",
        "run.sh",
        "docs/private",
        "empty/nested-empty",
        "empty",
        "docs/deep",
        "docs",
    ] {
        set_mtime(&root.join(rel), t);
        t += 1_000_000_007;
    }
    set_mtime(&root.join("docs").join(raw_name), t);
}

#[test]
fn round_trip_keeps_bytes_modes_mtimes_links_empty_dirs_and_raw_names() {
    let share = Share::new();
    fill_rich_tree(&share);
    let add = share.add(&["-m", "first"]);
    let snap = add["snapshot"]
        .as_str()
        .expect("a snapshot was made")
        .to_owned();
    assert_eq!(snap.len(), 64);
    assert_eq!(u(&add, "files"), 7, "{add}");
    assert_eq!(u(&add, "symlinks"), 3, "{add}");
    assert!(add["skipped"].as_array().unwrap().is_empty());

    let log = share.json(&["log"], 0);
    let snaps = log["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"], Value::String(snap.clone()));
    assert_eq!(snaps[0]["message"], "first");

    let target = share.scratch("restored");
    let r = share.json(&["restore", &snap, "--to", target.to_str().unwrap()], 0);
    assert_eq!(u(&r, "files"), 7, "{r}");
    assert_same_tree(&share.root, &target);

    // Restoring by prefix and by "head" names the same snapshot.
    let target2 = share.scratch("restored2");
    share
        .left(&["restore", &snap[..8], "--to", target2.to_str().unwrap()])
        .expect_code(0);
    assert_same_tree(&share.root, &target2);
}

#[test]
fn restore_of_one_path_writes_only_that_subtree() {
    let share = Share::new();
    fill_rich_tree(&share);
    share.add(&[]);
    let target = share.scratch("only-deep");
    share
        .left(&[
            "restore",
            "head",
            "docs/deep",
            "--to",
            target.to_str().unwrap(),
        ])
        .expect_code(0);
    let got = read_tree(&target);
    let names: Vec<_> = got
        .keys()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("b.bin")),
        "b.bin not restored: {names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("hello")), "{names:?}");
}

#[test]
fn ls_lists_entries_with_kinds_and_link_targets() {
    let share = Share::new();
    fill_rich_tree(&share);
    share.add(&[]);
    let root = share.json(&["ls"], 0);
    let entries = root["entries"].as_array().unwrap();
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {root}"))
    };
    assert_eq!(find("docs")["kind"], "dir");
    assert_eq!(find("run.sh")["kind"], "file");
    assert_eq!(find("run.sh")["mode"].as_u64().unwrap() & 0o777, 0o755);
    assert_eq!(find("link-to-a")["kind"], "symlink");
    assert_eq!(find("link-to-a")["link_target"], "docs/a.md");
    assert!(
        !entries.iter().any(|e| e["name"] == ".left"),
        "the store folder was snapshot: {root}"
    );

    // A path with and without an explicit snapshot; a file path lists that one file.
    let docs = share.json(&["ls", "docs"], 0);
    let docs_head = share.json(&["ls", "head", "docs"], 0);
    assert_eq!(docs["entries"], docs_head["entries"]);
    let one = share.json(&["ls", "head", "docs/a.md"], 0);
    assert_eq!(one["entries"].as_array().unwrap().len(), 1);
    assert_eq!(u(&one["entries"][0], "size"), 4000);

    // The human listing prints the raw (non-UTF-8) name bytes.
    let human = share.left(&["ls", "docs"]).expect_code(0);
    assert!(
        human
            .stdout
            .windows(b"caf\xe9-latin1.txt".len())
            .any(|w| w == b"caf\xe9-latin1.txt"),
        "raw name missing: {:?}",
        human.out()
    );
    // An unknown path is an error naming it.
    let bad = share.left(&["ls", "head", "no/such/thing"]).expect_code(1);
    assert!(bad.stderr.starts_with("left: "), "{}", bad.stderr);
}

#[test]
fn unchanged_add_makes_no_snapshot() {
    let share = Share::new();
    share.write("a.txt", b"one");
    let first = share.add(&[]);
    let head = first["snapshot"].as_str().unwrap().to_owned();
    let again = share.add(&[]);
    assert_eq!(again["snapshot"], Value::Null, "{again}");
    assert_eq!(again["head"], Value::String(head.clone()));
    assert_eq!(share.snapshots(), 1);
    assert_eq!(share.head().as_deref(), Some(head.as_str()));
    let human = share.left(&["add"]).expect_code(0);
    assert!(human.out().starts_with("no changes"), "{}", human.out());
}

#[test]
fn second_add_of_unchanged_big_file_reads_nothing() {
    let share = Share::new();
    let data = random_bytes(7, 24 << 20);
    // Old mtimes: a store may rightly re-read files modified in the same instant as its last scan.
    set_mtime(&share.write("big.bin", &data), OLD);
    let first = share.add(&[]);
    assert_eq!(u(&first, "bytes_read"), data.len() as u64, "{first}");
    assert!(u(&first, "bytes_new") >= data.len() as u64, "{first}");
    // Touch an unrelated file so a snapshot is made, but the big file is not re-read.
    set_mtime(&share.write("small.txt", b"x"), OLD);
    let second = share.add(&[]);
    assert!(second["snapshot"].is_string(), "{second}");
    assert_eq!(u(&second, "bytes_read"), 1, "{second}");
    let third = share.add(&[]);
    assert_eq!(u(&third, "bytes_read"), 0, "{third}");
    // --rehash reads everything again but stores nothing new.
    let rehash = share.add(&["--rehash"]);
    assert_eq!(u(&rehash, "bytes_read"), data.len() as u64 + 1, "{rehash}");
    assert_eq!(u(&rehash, "bytes_new"), 0, "{rehash}");
    assert_eq!(rehash["snapshot"], Value::Null, "{rehash}");
}

#[test]
fn copied_file_is_deduplicated() {
    let share = Share::new();
    let data = random_bytes(11, 4 << 20);
    set_mtime(&share.write("orig.bin", &data), OLD);
    let first = share.add(&[]);
    let full = u(&first, "bytes_new");
    share.write("dir/copy.bin", &data);
    let second = share.add(&[]);
    assert!(second["snapshot"].is_string());
    assert_eq!(u(&second, "bytes_read"), data.len() as u64, "{second}");
    assert_eq!(u(&second, "bytes_new"), 0, "{second}");
    assert!(
        u(&second, "bytes_stored") < full / 100,
        "a copy stored {} of {full} bytes",
        u(&second, "bytes_stored")
    );
}

#[test]
fn leftignore_excludes_matching_paths() {
    let share = Share::new();
    share.write(".leftignore", b"*.tmp\nbuild/\n!keep.tmp\n");
    share.write("a.txt", b"a");
    share.write("junk.tmp", b"junk");
    share.write("keep.tmp", b"keep");
    share.write("build/out.o", b"obj");
    share.write("src/build/inner.o", b"obj");
    share.add(&[]);
    let names = |v: Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let root = names(share.json(&["ls"], 0));
    assert!(root.contains(&"a.txt".to_owned()), "{root:?}");
    assert!(root.contains(&"keep.tmp".to_owned()), "{root:?}");
    assert!(root.contains(&".leftignore".to_owned()), "{root:?}");
    assert!(!root.contains(&"junk.tmp".to_owned()), "{root:?}");
    assert!(!root.contains(&"build".to_owned()), "{root:?}");
    let src = names(share.json(&["ls", "src"], 0));
    assert!(!src.contains(&"build".to_owned()), "{src:?}");
}

#[test]
fn add_of_given_paths_keeps_the_rest_of_the_tree() {
    let share = Share::new();
    share.write("a/one.txt", b"1");
    share.write("b/two.txt", b"2");
    share.add(&[]);
    share.write("a/one.txt", b"1 changed");
    share.write("b/two.txt", b"2 changed");
    // From a subfolder, with a relative path.
    let mut cmd = left_in(&share.root.join("a"));
    cmd.args(["--json", "add", "one.txt"]);
    let v = run(&mut cmd).expect_code(0).json();
    assert!(v["snapshot"].is_string(), "{v}");
    let target = share.scratch("out");
    share
        .left(&["restore", "head", "--to", target.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(fs::read(target.join("a/one.txt")).unwrap(), b"1 changed");
    assert_eq!(
        fs::read(target.join("b/two.txt")).unwrap(),
        b"2",
        "b was not given"
    );
}

#[test]
fn add_path_outside_the_share_is_refused() {
    let share = Share::new();
    share.write("a.txt", b"a");
    let outside = share.scratch("elsewhere");
    fs::write(outside.join("x"), b"x").unwrap();
    let r = share
        .left(&["add", outside.join("x").to_str().unwrap()])
        .expect_code(1);
    assert!(r.stderr.contains("outside the share"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    // `..` that leaves the share counts as outside too.
    let r = share.left(&["add", "../elsewhere"]).expect_code(1);
    assert!(r.stderr.contains("outside the share"), "{}", r.stderr);
    // So does a path into the store folder.
    let r = share.left(&["add", ".left"]).expect_code(1);
    assert!(r.stderr.contains("store folder"), "{}", r.stderr);
    assert_eq!(share.head(), None, "no snapshot may be made");
}

#[test]
fn add_missing_path_is_refused() {
    let share = Share::new();
    share.write("a.txt", b"a");
    let r = share.left(&["add", "a.txt", "no-such-file"]).expect_code(1);
    assert_eq!(
        r.stderr.lines().next().unwrap(),
        "left: no-such-file does not exist"
    );
    let r = share.left(&["add", "no/such/dir/file"]).expect_code(1);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert_eq!(share.head(), None, "no snapshot may be made");
}

#[test]
fn restore_into_non_empty_target_needs_force() {
    let share = Share::new();
    share.write("a.txt", b"from the snapshot");
    share.add(&[]);
    let target = share.scratch("busy");
    fs::write(target.join("a.txt"), b"precious").unwrap();
    fs::write(target.join("other"), b"also here").unwrap();
    let r = share
        .left(&["restore", "head", "--to", target.to_str().unwrap()])
        .expect_code(1);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert_eq!(fs::read(target.join("a.txt")).unwrap(), b"precious");
    share
        .left(&[
            "restore",
            "head",
            "--to",
            target.to_str().unwrap(),
            "--force",
        ])
        .expect_code(0);
    assert_eq!(
        fs::read(target.join("a.txt")).unwrap(),
        b"from the snapshot"
    );
}

#[test]
fn outside_any_share_says_how_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(left_in(tmp.path()).arg("add")).expect_code(1);
    assert!(r.stderr.contains("not inside a left share"), "{}", r.stderr);
    assert!(r.stderr.contains("left init"), "{}", r.stderr);
}

#[test]
fn unknown_snapshot_is_a_clear_error() {
    let share = Share::new();
    share.write("a", b"a");
    share.add(&[]);
    let r = share.left(&["ls", "head~5"]).expect_code(1);
    assert!(r.stderr.starts_with("left: "), "{}", r.stderr);
    assert_eq!(
        r.stderr.lines().filter(|l| l.starts_with("left:")).count(),
        1
    );
    let r = share
        .left(&[
            "restore",
            "ffff",
            "--to",
            share.scratch("t").to_str().unwrap(),
        ])
        .expect_code(1);
    assert!(r.stderr.contains("ffff"), "{}", r.stderr);
}

#[test]
fn init_makes_private_keys_and_id_matches_snapshots() {
    let share = Share::uninit();
    let v = run(left_in(&share.root).args(["--json", "init"]))
        .expect_code(0)
        .json();
    let device = v["device"].as_str().unwrap().to_owned();
    assert_eq!(device.len(), 52);
    assert!(device
        .bytes()
        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
    for key in ["identity", "share.key"] {
        let meta = fs::metadata(share.store.join(key)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{key}");
        assert_eq!(meta.len(), 32, "{key}");
    }
    let id = share.left(&["id"]).expect_code(0);
    assert_eq!(id.out().trim(), device);
    share.write("f", b"f");
    share.add(&[]);
    let log = share.json(&["log"], 0);
    assert_eq!(log["snapshots"][0]["device"], Value::String(device));
    // A second init refuses to overwrite the store (and its keys).
    let again = share.left(&["init"]).expect_code(1);
    assert!(again.stderr.starts_with("left: "), "{}", again.stderr);
}

#[test]
fn init_with_store_elsewhere_and_discovery_by_env() {
    let share = Share::uninit();
    let store = share.tmp.path().join("my-store");
    share
        .left(&["init", "--store", store.to_str().unwrap()])
        .expect_code(0);
    assert!(!share.store.exists(), "no .left with --store");
    share.write("x.txt", b"x");
    // Without --store there is nothing to discover ...
    share.left(&["add"]).expect_code(1);
    // ... with LEFT_STORE the store (and the recorded share root) is found from anywhere.
    let v = run(left_in(share.tmp.path())
        .env("LEFT_STORE", &store)
        .args(["--json", "add"]))
    .expect_code(0)
    .json();
    assert_eq!(u(&v, "files"), 1, "{v}");
}

#[test]
fn json_mode_prints_one_object_per_command() {
    let share = Share::new();
    share.write("a.txt", b"a");
    let add = share.add(&[]);
    for key in [
        "snapshot",
        "files",
        "bytes_read",
        "bytes_new",
        "bytes_stored",
        "skipped",
    ] {
        assert!(add.get(key).is_some(), "add lacks {key}: {add}");
    }
    let target = share.scratch("r");
    for args in [
        vec!["log"],
        vec!["ls"],
        vec!["verify"],
        vec!["gc"],
        vec!["id"],
        vec!["restore", "head", "--to", target.to_str().unwrap()],
    ] {
        // Run::json asserts exactly one line holding one object.
        share.json(&args, 0);
    }
}

#[test]
fn quiet_prints_nothing_on_success() {
    let share = Share::new();
    share.write("a.txt", b"a");
    let r = share.left(&["-q", "add"]).expect_code(0);
    assert!(r.stdout.is_empty() && r.stderr.is_empty(), "{r:?}");
}

#[test]
fn gc_keeps_what_snapshots_need() {
    let share = Share::new();
    let v1 = random_bytes(21, 3 << 20);
    share.write("f.bin", &v1);
    share.add(&[]);
    share.write("f.bin", &random_bytes(22, 3 << 20));
    share.add(&[]);
    let gc = share.json(&["gc"], 0);
    assert_eq!(u(&gc, "chunks_removed"), 0, "everything is reachable: {gc}");
    share.verify_clean();
    let target = share.scratch("old");
    share
        .left(&["restore", "head~1", "--to", target.to_str().unwrap()])
        .expect_code(0);
    assert!(fs::read(target.join("f.bin")).unwrap() == v1);
    // Keeping only the last tree drops the first version's chunks and shrinks the store.
    let gc = share.json(&["gc", "--keep-last", "1"], 0);
    assert!(u(&gc, "chunks_removed") > 0, "{gc}");
    share.verify_clean();
    let target = share.scratch("new");
    share
        .left(&["restore", "head", "--to", target.to_str().unwrap()])
        .expect_code(0);
    assert_same_tree(&share.root, &target);
}

#[test]
fn gc_refuses_a_policy_that_drops_heads_files() {
    let share = Share::new();
    share.write("f.bin", &random_bytes(31, 1 << 20));
    share.add(&[]);
    share.write("f.bin", &random_bytes(32, 1 << 20));
    share.add(&[]);
    let r = share.left(&["gc", "--keep-last", "0"]).expect_code(2);
    let err = r.stderr.clone();
    assert!(
        err.contains("--keep-last 0") && err.contains("head"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Nothing was dropped: both snapshots still restore.
    share.verify_clean();
    for (spec, dir) in [("head", "h"), ("head~1", "h1")] {
        let target = share.scratch(dir);
        share
            .left(&["restore", spec, "--to", target.to_str().unwrap()])
            .expect_code(0);
    }
}

#[test]
fn help_documents_exit_codes_and_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let help = run(left_in(tmp.path()).arg("--help")).expect_code(0);
    for needle in [
        "Exit codes",
        "0  success",
        "1  error",
        "2  usage",
        "3  finished",
    ] {
        assert!(help.out().contains(needle), "{needle}: {}", help.out());
    }
    let bad = run(left_in(tmp.path()).args(["add", "--no-such-flag"])).expect_code(2);
    assert!(bad.stdout.is_empty());
    run(left_in(tmp.path()).arg("restore")).expect_code(2);
}

#[test]
fn closed_stdout_exits_quietly() {
    let share = Share::new();
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here only.
    let (read, write) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(read); // every write to the pipe now fails with EPIPE
    let out = share
        .cmd(&["id"])
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", out);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `add --follow-links` stores what a link inside the share points to; a link whose target
/// leaves the share stays a link (its target's bytes are never published).
#[test]
fn follow_links_stores_what_links_point_to_inside_the_share_only() {
    let share = Share::new();
    let outside = share.scratch("data");
    let secret = random_bytes(30, 300_000);
    fs::write(outside.join("secret.bin"), &secret).unwrap();
    let data = random_bytes(31, 300_000);
    share.write("data/payload.bin", &data);
    symlink("data/payload.bin", share.root.join("payload.bin")).unwrap();
    symlink(outside.join("secret.bin"), share.root.join("secret.bin")).unwrap();

    let kind = |ls: &Value, name: &str| {
        ls["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["kind"].as_str().unwrap().to_owned())
    };
    // With --follow-links the file inside the share is stored, and restores as a regular file;
    // the link that leaves the share stays a link.
    let v = share.add(&["--follow-links"]);
    assert!(v["snapshot"].is_string(), "{v}");
    assert_eq!(u(&v, "symlinks"), 1, "{v}");
    let ls = share.json(&["ls"], 0);
    assert_eq!(kind(&ls, "payload.bin").as_deref(), Some("file"), "{ls}");
    assert_eq!(kind(&ls, "secret.bin").as_deref(), Some("symlink"), "{ls}");
    let target = share.scratch("restored");
    share
        .left(&["restore", "head", "--to", target.to_str().unwrap()])
        .expect_code(0);
    let restored = target.join("payload.bin");
    assert!(fs::symlink_metadata(&restored).unwrap().is_file());
    assert!(fs::read(&restored).unwrap() == data);
    assert!(fs::symlink_metadata(target.join("secret.bin"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// `left share-key` on one device, `left init --join` on another: same share id, new device key.
#[test]
fn share_key_and_join_make_the_same_share() {
    let a = Share::new();
    let key_run = a.left(&["share-key"]).expect_code(0);
    let key = key_run.out().trim_end().to_owned();
    assert_eq!(key_run.out(), format!("{key}\n"), "one line");
    assert_eq!(key.len(), 52, "{key}");
    let key_json = a.json(&["share-key"], 0);
    assert_eq!(key_json["share_key"], Value::String(key.clone()));
    let a_id = a.json(&["id"], 0);

    // Joined with the key on the command line.
    let b = Share::uninit();
    let v = b.json(&["init", "--join", &key], 0);
    assert_eq!(v["joined"], Value::Bool(true), "{v}");
    let b_id = b.json(&["id"], 0);
    assert_eq!(b_id["share"], a_id["share"]);
    assert_eq!(key_json["share"], a_id["share"]);
    assert_ne!(b_id["device"], a_id["device"], "the device key is new");
    assert_eq!(
        fs::read(b.store.join("share.key")).unwrap(),
        fs::read(a.store.join("share.key")).unwrap()
    );
    let meta = fs::metadata(b.store.join("share.key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(b.json(&["status"], 0)["share"], a_id["share"]);

    // Joined with the key on stdin (upper case, surrounded by white space).
    let c = Share::uninit();
    let mut cmd = c.cmd(&["--json", "init", "--join", "-"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "  {}  ", key.to_uppercase()).unwrap();
    }
    Run::from_output(child.wait_with_output().unwrap()).expect_code(0);
    assert_eq!(c.json(&["id"], 0)["share"], a_id["share"]);

    // A fresh init is a different share.
    let d = Share::new();
    assert_ne!(d.json(&["id"], 0)["share"], a_id["share"]);
}

#[test]
fn bad_join_keys_are_one_line_errors_and_create_nothing() {
    let share = Share::uninit();
    let valid = Share::new().left(&["share-key"]).expect_code(0).out();
    let cut = valid.trim()[..51].to_owned();
    for key in ["nonsense", cut.as_str(), "", "-"] {
        // "-" reads an empty stdin (the helper's stdin is /dev/null).
        let r = share
            .left(&["init", "--join", key, "joined"])
            .expect_code(1);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{key:?}: {}", r.stderr);
        assert!(
            lines[0].starts_with("left: bad share key given to --join: not a share key"),
            "{key:?}: {}",
            r.stderr
        );
        assert!(lines[1].starts_with("hint: "), "{}", r.stderr);
        assert!(
            !share.root.join("joined").exists(),
            "{key:?}: made the folder"
        );
    }
}

#[test]
fn peers_pin_revoke_and_list() {
    let share = Share::new();
    let other = Share::new();
    let other_id = other.left(&["id"]).expect_code(0).out().trim().to_owned();
    let empty = share.json(&["peers"], 0);
    assert_eq!(empty["peers"], Value::Array(vec![]), "{empty}");
    assert_eq!(empty["pin_mode"], Value::Bool(false));
    assert!(share
        .left(&["peers"])
        .expect_code(0)
        .out()
        .contains("no devices seen yet"));

    // A device never seen needs its full id; then a prefix finds it.
    let r = share
        .left(&["peers", "--pin", &other_id[..10]])
        .expect_code(1);
    assert!(
        r.stderr.contains("no device in the peer book"),
        "{}",
        r.stderr
    );
    let pinned = share.json(&["peers", "--pin", &other_id], 0);
    assert_eq!(pinned["pin_mode"], Value::Bool(true), "{pinned}");
    assert_eq!(
        pinned["peers"][0]["device"],
        Value::String(other_id.clone())
    );
    assert_eq!(pinned["peers"][0]["pinned"], Value::Bool(true));
    let meta = fs::metadata(share.store.join("peers.json")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let list = share.left(&["peers"]).expect_code(0).out();
    assert!(list.starts_with(&other_id), "{list}");
    assert!(list.contains("[pinned]"), "{list}");

    let revoked = share.json(&["peers", "--revoke", &other_id[..6].to_uppercase()], 0);
    assert_eq!(
        revoked["peers"][0]["revoked"],
        Value::Bool(true),
        "{revoked}"
    );
    assert_eq!(
        revoked["peers"][0]["pinned"],
        Value::Bool(false),
        "{revoked}"
    );
    assert_eq!(revoked["pin_mode"], Value::Bool(false), "{revoked}");
    assert!(share.left(&["peers"]).out().contains("[revoked]"));
    let status = share.json(&["status"], 0);
    assert_eq!(status["peers"][0]["revoked"], Value::Bool(true), "{status}");

    let back = share.json(&["peers", "--unrevoke", &other_id[..6]], 0);
    assert_eq!(back["peers"][0]["revoked"], Value::Bool(false), "{back}");
    // One change at a time.
    share
        .left(&["peers", "--pin", &other_id, "--revoke", &other_id])
        .expect_code(2);
}

/// Sets `peers/<device>` to `snap` in the share's store, as a sync would.
fn plant_peer_ref(share: &Share, device: &str, snap: &str) {
    let store = left_store::Store::open(&share.store).unwrap();
    let id = store.resolve(snap).unwrap();
    store.set_ref(&format!("peers/{device}"), id).unwrap();
}

/// `left peers --forget DEVICE` drops the device's ref (also of a device the book no longer
/// lists), so gc frees what only its last snapshot held; gc drops the ref of a device revoked
/// while the ref was left behind; forgetting keeps a revocation and refuses a pinned device.
#[test]
fn forgetting_or_revoking_a_device_lets_gc_free_what_its_snapshot_pinned() {
    let share = Share::new();
    let dev1 = left::identity::DeviceId([7; 32]).to_string();
    let dev2 = left::identity::DeviceId([8; 32]).to_string();
    share.write("keep.txt", b"keep");
    share.write("big1.bin", &random_bytes(41, 4 << 20));
    let s1 = share.add(&[])["snapshot"].as_str().unwrap().to_owned();
    plant_peer_ref(&share, &dev1, &s1);
    fs::remove_file(share.root.join("big1.bin")).unwrap();
    share.add(&[]);

    let human = share.left(&["gc", "--keep-last", "1"]).expect_code(0).out();
    let short: String = dev1.chars().take(8).collect();
    assert!(
        human.contains(&format!(
            "kept alive by peers/{short} (not in the peer book): 1 snapshot, "
        )) && human.contains(&format!("`left peers --forget {dev1}` drops it")),
        "{human}"
    );
    let r = share.json(&["peers", "--forget", &dev1], 0);
    assert_eq!(r["dropped_ref"], Value::String(s1), "{r}");
    let gc = share.json(&["gc", "--keep-last", "1"], 0);
    assert!(u(&gc, "chunks_removed") > 0, "{gc}");
    assert!(
        gc["kept_by"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["name"] == "head"),
        "{gc}"
    );

    // Revoked first, ref stored after (a sync that was running): gc drops it.
    share.json(&["peers", "--revoke", &dev2], 0);
    share.write("big2.bin", &random_bytes(42, 4 << 20));
    let s3 = share.add(&[])["snapshot"].as_str().unwrap().to_owned();
    plant_peer_ref(&share, &dev2, &s3);
    fs::remove_file(share.root.join("big2.bin")).unwrap();
    share.add(&[]);
    let gc = share.json(&["gc", "--keep-last", "1"], 0);
    assert_eq!(
        gc["dropped_refs"],
        serde_json::json!([format!("peers/{dev2}")]),
        "{gc}"
    );
    assert!(u(&gc, "chunks_removed") > 0, "{gc}");
    share.verify_clean();
    let out = share.scratch("restored");
    share
        .left(&["restore", "head", "--to", out.to_str().unwrap()])
        .expect_code(0);
    assert_same_tree(&share.root, &out);

    // Forgetting a revoked device keeps it revoked; a pinned one is refused.
    let r = share.json(&["peers", "--forget", &dev2], 0);
    let rec = r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["device"] == dev2.as_str());
    assert_eq!(
        rec.map(|p| p["revoked"].clone()),
        Some(Value::Bool(true)),
        "{r}"
    );
    share.json(&["peers", "--pin", &dev1], 0);
    let r = share.left(&["peers", "--forget", &dev1]).expect_code(1);
    assert!(one_error_line(&r).contains("pinned"), "{}", r.stderr);
    let r = share.json(&["peers"], 0);
    assert!(
        r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["device"] == dev1.as_str() && p["pinned"] == true),
        "{r}"
    );
}

/// Beside a running `left serve` (which holds the store), `peers --revoke` drops the device's
/// ref through the control socket and gc, run by the serving process, reports and frees.
#[test]
fn beside_a_serve_revoking_a_device_drops_its_ref_and_gc_frees_it() {
    let share = Share::new();
    let dev = left::identity::DeviceId([9; 32]).to_string();
    share.write("big.bin", &random_bytes(43, 4 << 20));
    let s1 = share.add(&[])["snapshot"].as_str().unwrap().to_owned();
    plant_peer_ref(&share, &dev, &s1);
    fs::remove_file(share.root.join("big.bin")).unwrap();
    share.add(&[]);
    let server = share.serve();
    let gc = share.json(&["gc", "--keep-last", "1"], 0);
    let k = gc["kept_by"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == format!("peers/{dev}"))
        .unwrap_or_else(|| panic!("{gc}"));
    assert!(u(k, "only_bytes") > 3 << 20, "{gc}");
    let r = share.json(&["peers", "--revoke", &dev], 0);
    assert_eq!(r["dropped_ref"], Value::String(s1), "{r}");
    let gc = share.json(&["gc", "--keep-last", "1"], 0);
    assert!(u(&gc, "chunks_removed") > 0, "{gc}");
    server.stop();
    share.verify_clean();
}
