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

// ---------------------------------------------------------------------------------------------
// Peers: `left serve` and `left sync` as real processes on loopback.

/// Polls `cond` until it holds or `limit` has passed; panics naming `what` on timeout. The pause
/// between polls only limits CPU use: the condition, not the pause, is the synchronisation.
#[track_caller]
pub fn wait_for(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Waits for `child` to exit within `limit`; `None` (child still running) on timeout.
pub fn wait_timeout(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Sends `signal` to a child that has not been reaped yet.
pub fn signal(child: &std::process::Child, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the pid is our unreaped child, so it is not reused.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", child.id());
}

/// A seed for a randomised test: `LEFT_TEST_SEED` if set (to replay a run), else from the clock.
/// Printed, so a failing run can be replayed.
pub fn test_seed(what: &str) -> u64 {
    let seed = std::env::var("LEFT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000)
                .unwrap_or(1)
        });
    eprintln!("{what}: seed {seed} (replay with LEFT_TEST_SEED={seed})");
    seed
}

/// A running `left serve`, killed (SIGKILL) when dropped unless stopped first.
pub struct Server {
    pub child: std::process::Child,
    /// The address it listens on (from its `listening` line).
    pub addr: std::net::SocketAddr,
    /// The `listening` line.
    pub hello: Value,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
}

/// How long a server may take to print its `listening` line.
pub const SERVE_START_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Server {
    /// `addr` as a string, for `left sync`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        self.child.kill().expect("kill serve");
        self.child.wait().expect("reap serve");
    }

    /// SIGTERM, then expects a clean exit 0 within 10 s; returns its stderr.
    #[track_caller]
    pub fn stop(mut self) -> String {
        signal(&self.child, libc::SIGTERM);
        let status = wait_timeout(&mut self.child, std::time::Duration::from_secs(10));
        let stderr = self.stderr();
        match status {
            Some(s) => assert_eq!(s.code(), Some(0), "serve exit: {s:?}\nstderr: {stderr}"),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("serve did not stop within 10 s of SIGTERM\nstderr: {stderr}");
            }
        }
        stderr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `cmd` (a `left serve ... --json` command) and waits for its `listening` line.
#[track_caller]
pub fn start_server(cmd: &mut Command, stderr_path: PathBuf) -> Server {
    use std::io::BufRead;
    let err = fs::File::create(&stderr_path).expect("serve stderr file");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .expect("start left serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining stdout after the first line, so the server never blocks on it.
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more: keep reading and drop the lines.
                continue;
            }
        }
    });
    let line = match rx.recv_timeout(SERVE_START_LIMIT) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "left serve printed no listening line ({e})\nstderr: {}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
    };
    let hello: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("serve's first line is not JSON ({e}): {line:?}"));
    assert_eq!(hello["event"], "listening", "{hello}");
    let addr = hello["addr"]
        .as_str()
        .unwrap_or_else(|| panic!("no addr in {hello}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad addr in {hello}: {e}"));
    Server {
        child,
        addr,
        hello,
        stderr_path,
    }
}

impl Share {
    /// The share key (`left share-key`, one line).
    #[track_caller]
    pub fn share_key(&self) -> String {
        let r = self.left(&["share-key"]).expect_code(0);
        let out = r.out();
        assert_eq!(out.trim_end().lines().count(), 1, "{out}");
        out.trim().to_owned()
    }

    /// A new share that joined this one (`left init --join - DIR`, key on stdin), no head yet.
    #[track_caller]
    pub fn join(&self) -> Share {
        Share::join_key(&self.share_key())
    }

    /// A new share joined with `key` (`left init --join - DIR`, key on stdin).
    #[track_caller]
    pub fn join_key(key: &str) -> Share {
        use std::io::Write;
        let share = Share::uninit();
        let mut child = left_in(share.tmp.path())
            .args(["init", "--join", "-"])
            .arg(&share.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start left init --join");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{key}\n").as_bytes())
            .expect("write key");
        Run::from_output(child.wait_with_output().expect("init --join")).expect_code(0);
        assert!(share.store.is_dir(), "init --join made no store");
        share
    }

    /// The store's device id and share id checks aside, the raw share key bytes.
    pub fn share_key_bytes(&self) -> [u8; 32] {
        left::identity::load_share_key(&self.store).expect("share.key")
    }

    /// `left serve --listen LISTEN --json EXTRA...` with `env`, waiting until it listens.
    #[track_caller]
    pub fn serve_on(&self, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = self.cmd(&["--json", "serve", "--listen", listen]);
        cmd.args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let n = fs::read_dir(self.tmp.path())
            .map(|d| d.count())
            .unwrap_or(0);
        start_server(&mut cmd, self.tmp.path().join(format!("serve-{n}.stderr")))
    }

    /// `left serve` on an ephemeral loopback port.
    #[track_caller]
    pub fn serve(&self) -> Server {
        self.serve_on("127.0.0.1:0", &[], &[])
    }

    /// The `left --json sync ADDRS... EXTRA...` command with `env`.
    pub fn sync_cmd(&self, addrs: &[String], extra: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = self.cmd(&["--json", "sync"]);
        cmd.args(addrs).args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `left --json sync ADDRS... EXTRA...` to the end.
    pub fn sync(&self, addrs: &[String], extra: &[&str], env: &[(&str, &str)]) -> Run {
        run(&mut self.sync_cmd(addrs, extra, env))
    }

    /// A successful sync's JSON, with its basic sanity checked (no panic, exit 0).
    #[track_caller]
    pub fn sync_ok(&self, addrs: &[String], extra: &[&str], env: &[(&str, &str)]) -> Value {
        let r = self.sync(addrs, extra, env);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        r.expect_code(0).json()
    }
}

/// Asserts a failed command's stderr is exactly one line starting `left: ` with no panic (plus
/// at most one `hint: ` line under it, the CLI's convention), and returns that line.
#[track_caller]
pub fn one_error_line(r: &Run) -> String {
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    let hints = r.stderr.lines().filter(|l| l.starts_with("hint: ")).count();
    assert!(hints <= 1, "more than one hint: {}", r.stderr);
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("hint: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {}", r.stderr);
    assert!(lines[0].starts_with("left: "), "{}", r.stderr);
    lines[0].to_owned()
}

/// No core files from deliberate aborts (they would land in the share and be snapshot next time).
pub fn no_core_dump(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
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
