//! Watching the share folder for automatic sync (`notify`: inotify on Linux).
//!
//! Events are hints, never the record: each one only tells the agent "something changed, scan
//! soon", and the scan compares the folder with the scan cache, so an event that is lost (an
//! inotify queue overflow, a folder created and filled before its watch was added, a watch limit
//! reached) costs at most one rescan period (`--rescan`), never a missed change. Events inside the
//! store folder (`.left`) and on checkout or restore temp files (`.left-tmp-*`) are dropped: the
//! store writes there all the time and they are never snapshotted.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A running watcher; dropping it stops watching.
pub struct FolderWatcher {
    _watcher: notify::RecommendedWatcher,
    pending: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FolderWatcher {
    /// The flag set while a hint is queued: the receiver clears it as it takes a hint (before
    /// acting on it), so a burst of events (an untar, a `git checkout`) queues one hint, not
    /// one per event, and none is lost.
    pub fn pending(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.pending.clone()
    }
}

/// Whether an event on `path` can matter to a snapshot of `share` (with its store at `store`).
fn relevant(share: &Path, store: &Path, path: &Path) -> bool {
    if path.starts_with(store) {
        return false;
    }
    let Ok(rel) = path.strip_prefix(share) else {
        return true;
    };
    !rel.components().any(|c| {
        let n = c.as_os_str().as_encoded_bytes();
        n == b".left" || n.starts_with(left_store::checkout::TMP_PREFIX.as_bytes())
    })
}

/// Watches `share` recursively; each relevant event sends `()` to `tx` (the receiver debounces).
/// Watch errors (a limit reached, a folder gone) go to `errors` as one line each; watching goes
/// on where it can, and the periodic rescan covers the rest.
pub fn watch(
    share: &Path,
    store_dir: &Path,
    tx: mpsc::UnboundedSender<()>,
    errors: mpsc::UnboundedSender<String>,
) -> Result<FolderWatcher, String> {
    let share: PathBuf = share.to_path_buf();
    let store: PathBuf =
        std::fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.to_path_buf());
    let share_c = share.clone();
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = pending.clone();
    let hint = move || {
        if !flag.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let _ = tx.send(());
        }
    };
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if matches!(ev.kind, EventKind::Access(_)) {
                    return;
                }
                // An event without paths (a queue overflow) means "anything may have changed".
                if ev.paths.is_empty() || ev.paths.iter().any(|p| relevant(&share_c, &store, p)) {
                    hint();
                }
            }
            Err(e) => {
                let _ = errors.send(e.to_string());
                // Something may have been missed: scan.
                hint();
            }
        })
        .map_err(|e| format!("cannot watch {}: {e}", share.display()))?;
    watcher
        .watch(&share, RecursiveMode::Recursive)
        .map_err(|e| format!("cannot watch {}: {e}", share.display()))?;
    Ok(FolderWatcher {
        _watcher: watcher,
        pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_temp_files_are_not_relevant() {
        let share = Path::new("/s");
        let store = Path::new("/s/.left");
        assert!(relevant(share, store, Path::new("/s/a.txt")));
        assert!(relevant(share, store, Path::new("/s/d/e/f")));
        assert!(!relevant(share, store, Path::new("/s/.left/db/000012.log")));
        assert!(!relevant(share, store, Path::new("/s/d/.left-tmp-1234-x")));
        // A store elsewhere.
        assert!(!relevant(share, Path::new("/st"), Path::new("/st/db/LOG")));
        assert!(relevant(share, Path::new("/st"), Path::new("/s/x")));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_change_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let share = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(share.join(".left")).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (etx, _erx) = mpsc::unbounded_channel();
        let w = watch(&share, &share.join(".left"), tx, etx).unwrap();
        // Writes in the store are not reported...
        std::fs::write(share.join(".left/x"), b"1").unwrap();
        // ...a new file in a new folder is.
        std::fs::create_dir(share.join("d")).unwrap();
        std::fs::write(share.join("d/f"), b"1").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the watcher is alive");
        // A burst queues one hint until it is taken; then the next change gives a new one.
        for i in 0..200 {
            std::fs::write(share.join(format!("d/burst-{i}")), b"x").unwrap();
        }
        assert!(rx.try_recv().is_err(), "a burst queued more than one hint");
        w.pending()
            .store(false, std::sync::atomic::Ordering::Release);
        std::fs::write(share.join("d/after"), b"y").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a new hint within 10 s")
            .expect("the watcher is alive");
    }
}
