//! Test helpers: a share in a temp folder, running the real `left` binary, comparing trees.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

/// Path of the binary under test.
pub fn left_bin() -> &'static str {
    env!("CARGO_BIN_EXE_left")
}

/// A `left` command with a clean environment (no LEFT_STORE, no fault hook) running in `dir`.
pub fn left_in(dir: &Path) -> Command {
    let mut cmd = Command::new(left_bin());
    cmd.current_dir(dir)
        .env_remove("LEFT_STORE")
        .env_remove("LEFT_FAULT")
        .stdin(Stdio::null());
    cmd
}

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn from_output(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Stdout as text (lossy).
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts the exit code, printing both streams when it differs.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\nstdout: {}\nstderr: {}",
            self.out(),
            self.stderr
        );
        self
    }

    /// Stdout parsed as exactly one JSON object (and nothing else).
    #[track_caller]
    pub fn json(&self) -> Value {
        let text = self.out();
        let v: Value = serde_json::from_str(text.trim_end())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {text:?}"));
        assert!(v.is_object(), "stdout JSON is not an object: {text}");
        assert_eq!(
            text.trim_end().lines().count(),
            1,
            "more than one line: {text}"
        );
        v
    }
}

/// Runs a prepared command.
pub fn run(cmd: &mut Command) -> Run {
    Run::from_output(cmd.output().expect("cannot start the left binary"))
}

/// A share folder with a store, in its own temp folder.
pub struct Share {
    pub tmp: TempDir,
    /// The share root (canonical).
    pub root: PathBuf,
    /// The store folder (root/.left).
    pub store: PathBuf,
}

impl Share {
    /// An empty folder `share` in a new temp folder, not yet initialised.
    pub fn uninit() -> Share {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = fs::canonicalize(tmp.path())
            .expect("canonicalize")
            .join("share");
        fs::create_dir(&root).expect("mkdir share");
        let store = root.join(".left");
        Share { tmp, root, store }
    }

    /// A share with `left init` done.
    pub fn new() -> Share {
        let share = Share::uninit();
        share.left(&["init"]).expect_code(0);
        assert!(share.store.is_dir(), "init made no store");
        share
    }

    /// A command running in the share root.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = left_in(&self.root);
        cmd.args(args);
        cmd
    }

    /// Runs `left ARGS` in the share root.
    pub fn left(&self, args: &[&str]) -> Run {
        run(&mut self.cmd(args))
    }

    /// Runs `left --json ARGS`, asserts exit `code`, returns the JSON object.
    #[track_caller]
    pub fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.left(&all).expect_code(code).json()
    }

    /// `left add --json`, expecting success.
    #[track_caller]
    pub fn add(&self, args: &[&str]) -> Value {
        let mut all = vec!["add"];
        all.extend_from_slice(args);
        self.json(&all, 0)
    }

    /// The head snapshot id, or None.
    #[track_caller]
    pub fn head(&self) -> Option<String> {
        let log = self.json(&["log", "--limit", "1"], 0);
        log["snapshots"]
            .as_array()
            .expect("snapshots array")
            .first()
            .map(|s| s["id"].as_str().expect("id").to_owned())
    }

    /// Number of snapshots in the history.
    #[track_caller]
    pub fn snapshots(&self) -> usize {
        self.json(&["log"], 0)["snapshots"]
            .as_array()
            .expect("snapshots array")
            .len()
    }

    /// A new empty folder in the temp folder (outside the share).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        fs::create_dir_all(&p).expect("mkdir scratch");
        p
    }

    /// Writes `bytes` to `rel` in the share, creating parent folders.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir parent");
        }
        fs::write(&p, bytes).expect("write file");
        p
    }

    /// Asserts `left verify` exits 0.
    #[track_caller]
    pub fn verify_clean(&self) {
        let v = self.json(&["verify"], 0);
        assert_eq!(v["ok"], Value::Bool(true), "{v}");
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough for chunk tests.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What a tree holds, path by path: kind, permission bits, mtime (ns), content or link target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File {
        mode: u32,
        mtime_ns: i64,
        bytes: Vec<u8>,
    },
    Dir {
        mode: u32,
        mtime_ns: i64,
    },
    Link {
        target: OsString,
    },
}

/// Reads a whole tree (without following links), skipping the top-level `.left`.
pub fn read_tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("under root").to_owned();
        if rel == Path::new(".left") {
            continue;
        }
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let mode = meta.permissions().mode() & 0o7777;
        let e = if meta.file_type().is_symlink() {
            Entry::Link {
                target: fs::read_link(&path).expect("readlink").into_os_string(),
            }
        } else if meta.is_dir() {
            walk(root, &path, out);
            Entry::Dir { mode, mtime_ns }
        } else {
            Entry::File {
                mode,
                mtime_ns,
                bytes: fs::read(&path).expect("read file"),
            }
        };
        out.insert(rel, e);
    }
}

/// Asserts two trees are identical, naming the first difference (without dumping file contents).
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = read_tree(expected);
    let b = read_tree(actual);
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(names_a, names_b, "different paths");
    for (path, ea) in &a {
        let eb = &b[path];
        match (ea, eb) {
            (
                Entry::File {
                    mode: ma,
                    mtime_ns: ta,
                    bytes: ba,
                },
                Entry::File {
                    mode: mb,
                    mtime_ns: tb,
                    bytes: bb,
                },
            ) => {
                assert!(ba == bb, "{}: contents differ", path.display());
                assert_eq!(ma, mb, "{}: mode", path.display());
                assert_eq!(ta, tb, "{}: mtime", path.display());
            }
            _ => assert_eq!(ea, eb, "{}", path.display()),
        }
    }
}

/// Sets a file's or folder's mtime (ns since the epoch) without following links.
pub fn set_mtime(path: &Path, ns: i64) {
    let ts = libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    let times = [ts, ts];
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .expect("no NUL in path");
    // SAFETY: c is a valid NUL-terminated path and times points to two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// Total size of the regular files under `dir`.
pub fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    for entry in rd.flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => total += du(&entry.path()),
            Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

/// Whether this process runs as root (some fault tests then drop privileges for the child).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Reads a JSON field as u64.
#[track_caller]
pub fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}
