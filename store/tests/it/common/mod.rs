//! Helpers shared by the store integration tests.
#![allow(dead_code)]

use left_store::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub fn small_cfg() -> StoreConfig {
    StoreConfig {
        chunk_min: 1024,
        chunk_avg: 4096,
        chunk_max: 16384,
        memory_budget: 16 << 20,
        share_root: None,
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn rand_bytes(seed: u64, len: usize) -> Vec<u8> {
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

/// What a tree looks like: path -> (kind, mode, mtime_ns, content or link target).
pub type Picture = BTreeMap<PathBuf, (char, u32, i64, Vec<u8>)>;

pub fn picture(root: &Path) -> Picture {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut Picture) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.as_os_str().as_bytes() == b".left" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let mt = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, ('l', 0, mt, t.as_os_str().as_bytes().to_vec()));
            } else if m.is_dir() {
                walk(root, &p, out);
                out.insert(rel, ('d', mode, mt, Vec::new()));
            } else {
                out.insert(rel, ('f', mode, mt, fs::read(&p).unwrap()));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

pub fn set_mtime(p: &Path, ns: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    };
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts, ts].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

pub fn add(store: &Store, share: &Path) -> AddReport {
    store
        .add(
            share,
            &[],
            &AddOptions {
                message: "t".into(),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap()
}

/// Snapshots `share` with message `msg`; the new snapshot (`None`: nothing changed).
pub fn add_msg(store: &Store, share: &Path, msg: &str) -> Option<NodeId> {
    store
        .add(
            share,
            &[],
            &AddOptions {
                message: msg.into(),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap()
        .snapshot
}

/// Tests that install the reader's test hook hold this while they do: the hook is process-wide.
static HOOK_USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// The share the installed hook acts on.
static HOOK_ROOT: std::sync::RwLock<Option<PathBuf>> = std::sync::RwLock::new(None);

/// Uninstalls the hook when dropped (also when the test panics).
struct HookGuard<'a>(#[allow(dead_code)] std::sync::MutexGuard<'a, ()>);

impl Drop for HookGuard<'_> {
    fn drop(&mut self) {
        debug_set_read_hook(None);
        *HOOK_ROOT.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Runs `f` with the reader's test hook set to `hook` for files under `root`. All store tests
/// share one process, so hook users take turns, and a hook must call [`hooked`] first to leave
/// other tests' files alone.
pub fn with_read_hook<T>(root: &Path, hook: ReadHook, f: impl FnOnce() -> T) -> T {
    let _guard = HookGuard(HOOK_USERS.lock().unwrap_or_else(|e| e.into_inner()));
    *HOOK_ROOT.write().unwrap_or_else(|e| e.into_inner()) = Some(root.to_path_buf());
    debug_set_read_hook(Some(hook));
    f()
}

/// Whether `path` is under the share of the test that installed the hook.
pub fn hooked(path: &Path) -> bool {
    HOOK_ROOT
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_deref()
        .is_some_and(|root| path.starts_with(root))
}
