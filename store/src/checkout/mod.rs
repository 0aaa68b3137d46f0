//! `checkout`: move the share folder from one snapshot to another, touching only what differs.
//!
//! ## What it does
//!
//! The two trees (`from`, the snapshot the folder holds now, or none; `to`) are walked together,
//! folder by folder, pairing entries by name. Equal entries (same kind, metadata and node id) are
//! skipped without descending, so the work is proportional to the change, and memory to the tree
//! depth times the folder width. For each path that differs:
//!
//! - a **file** is written to a temporary file beside it (`.left-tmp-<random>`, created with
//!   `O_EXCL`; from 1 MiB on its blocks are allocated first, see [`PREALLOCATE_MIN`]), gets its
//!   mode and mtime, and is renamed over the target. When the old file is
//!   provably the version `from` recorded (next point), the byte ranges whose chunks did not change
//!   are copied from it with `copy_file_range` (runs of consecutive chunks in one call; the
//!   chunk-id → old-offset map is capped at [`REUSE_MAP_CAP`] chunks, beyond which chunks come from
//!   the store); every other chunk is read from the store and hash-verified before its bytes are
//!   written, in windows: one window is fetched and verified on the rayon pool while the previous
//!   one is written. A file whose bytes did not change (only mode or mtime) is re-permissioned in
//!   place. A replaced big file is released on a release thread, which hands its last
//!   descriptor to a short-lived grandchild process whose exit frees it: freeing 1 GiB on ext4
//!   takes ~0.2 s, mostly waiting, and neither the checkout nor the exit of a one-shot command
//!   waits for it ([`Store::wait_released`] waits for the hand-over only).
//! - a **symlink** is created verbatim (never followed) under a temporary name and renamed in.
//! - a **folder** is created, filled, then given its mode and mtime (after its content).
//! - a **removed** path is deleted: files and links unlinked; folders lose only what the old tree
//!   had, and a folder that still holds other files stays (listed in `kept`).
//! - a file, link or folder replacing another kind is handled by removing the old one first.
//!
//! ## Local changes are never lost
//!
//! Before a path is replaced or removed, what is on disk must still be the `from` version: for a
//! file, its stat (size, mtime, ctime, inode, mode) equals the scan-cache record for that path and
//! that record's file node is `from`'s node, and when the record is racy (the file was written
//! within its timestamp tick of the scan's read, so a later write may not show in the stat) its
//! bytes hash to that node too; for a link, the same target; for a folder, a real folder. Otherwise the path is left alone and listed in [`CheckoutReport::kept`]. A path `from`
//! does not have but the disk does (untracked) is kept too; an untracked folder is merged into.
//! The old file is checked again just before the rename (a change meanwhile keeps it as well).
//! A path `from` had but the disk no longer has is simply written (an edit beats a deletion).
//!
//! ## Paths that cannot be written
//!
//! An error that concerns one path (`EACCES`, `EPERM`, `EROFS`, `ENAMETOOLONG`, `EILSEQ`,
//! `ETXTBSY`, `EMLINK`: a read-only folder, a name the file system refuses) leaves that path as it
//! is and the checkout goes on: it is listed in [`CheckoutReport::unwritten`] and recorded in
//! `meta` as `unwritten/<path>` with what was on disk there (`Seen`). While the disk still shows
//! exactly that, `add` keeps the head's entry for the path (the version this checkout meant to
//! write), so the old bytes never go out as a change; each later checkout tries the path again
//! (from the store, never reusing the old bytes) and drops the record once written, or once the
//! disk shows something else (a person changed it: an ordinary local change). Other errors (a
//! full disk, an I/O error) still stop the checkout, which the journal finishes later.
//!
//! ## Never outside the share
//!
//! Every operation is relative to a folder descriptor opened from the share root one component at
//! a time with `O_NOFOLLOW | O_DIRECTORY` (`openat`, `mkdirat`, `renameat`, `unlinkat`,
//! `symlinkat`, `fstatat`/`utimensat` with `AT_SYMLINK_NOFOLLOW`), and every name is one checked
//! component (no `/`, `.`, `..`, NUL, empty). No path is ever resolved through a symlink, so a
//! symlink on disk where the tree has a folder (put there by anyone) fails that path with a clear
//! reason in `kept` and nothing is written through it. Names reserved by left (`.left`,
//! `.left-tmp-*`, the store folder) are never written.
//!
//! ## Durability and crashes
//!
//! Before the folder is touched, a journal record `{from, to}` is written to the store's `meta`
//! column family in a synced batch. Scan-cache records of written files go to the store as the
//! checkout proceeds (unsynced WAL: a killed process loses none of them); at the end one synced
//! batch moves `head` to `to` and deletes the journal (that sync also makes every earlier record
//! durable). With [`CheckoutOptions::fsync`] each file is fsynced before its rename and each touched
//! folder after its content. [`Store::resume_checkout`] re-runs a journaled checkout: a path
//! already at its `to` version (its stat matches the record a finished write left, or, in this
//! recovery case only, its content hashes to the `to` file node) is skipped, and temporary files a
//! crash left in the folders it visits are removed. Another checkout is refused while one is
//! journaled (unless it is the same one, which then resumes).
//!
//! Without fsync, a checkout that *finished* may still have its files only in the page cache for
//! up to ~35 s (the kernel's writeback delay). Its final batch therefore also records a *settle*
//! record `{from, to, start, end, boot id}` (dropped after [`SETTLE_WINDOW_NS`]). When
//! `resume_checkout` (or the next `checkout`) runs in a later boot, the paths those checkouts
//! changed are checked again: a path at its `to` version is fine (for a file those checkouts
//! wrote, judged by its bytes, not its stat: preallocated blocks keep the size); a file or link whose ctime lies
//! within one of those checkouts' runs (written by it, its bytes lost) or whose bytes are still
//! the `from` version (a rename the power cut took back) is written again; anything else changed
//! after the checkout and is kept. Limit: a path created and removed again by two checkouts within
//! the window is not re-checked.
//!
//! ## Limits
//!
//! Folders nested deeper than [`CHECKOUT_MAX_DEPTH`] are refused before anything is written (one
//! open descriptor and a few stack frames per level). A setuid or setgid bit in a tree is not
//! applied (a peer cannot plant a setuid file); such a file then differs from its snapshot by mode.
//!
//! Before writing, the bytes to write are compared with the free space of the share's file system
//! (`statvfs`): not enough is [`Error::DiskFull`] with nothing touched.

mod apply;
mod journal;
mod plan;
mod settle;
pub mod stage;
mod unwritten;
mod write;

use crate::db::{cf, Batch};
use crate::fs::{cstring, free_bytes, fstat, fsync, open_at, RawStat, CWD};
use crate::release::{Release, Releaser};
pub use crate::scan::TMP_PREFIX;
use crate::scan::{Seen, Stat};
use crate::{CheckoutOptions, CheckoutReport, Error, NodeId, Progress, Result, Skipped, Store};
use plan::{check_space, Plan, TreeCheck};
use rustix::fs::{Mode as FileMode, OFlags};
pub use settle::SETTLE_WINDOW_NS;
use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
#[doc(hidden)]
pub use unwritten::{debug_set_deny_hook, DenyHook};
pub use write::PREALLOCATE_MIN;

/// Most chunks of an old file indexed for reuse (~60 bytes each); a bigger file's later chunks
/// come from the store.
pub const REUSE_MAP_CAP: usize = 1 << 18;
/// Scan-cache updates written per batch.
const SCAN_BATCH: usize = 512;
/// Deepest folder nesting a checkout writes (one open folder descriptor and a few stack frames
/// per level: a crafted deeper tree is refused rather than exhausting either).
pub const CHECKOUT_MAX_DEPTH: usize = 256;
/// Most paths listed in `kept` (one more entry says how many were left out).
const KEPT_MAX: usize = 10_000;

/// How a walk runs.
#[derive(Debug, Clone)]
enum Mode {
    /// A new checkout.
    Normal,
    /// Finishing a journaled checkout after a crash.
    Resume,
    /// Re-checking finished checkouts after a reboot: their runs (start, end) and the keys of
    /// their settle records.
    Settle {
        windows: Vec<(i64, i64)>,
        keys: Vec<Vec<u8>>,
    },
}

/// Adds the counts and kept paths of `r` to `into`.
fn absorb(into: &mut CheckoutReport, r: CheckoutReport) {
    into.files_written += r.files_written;
    into.files_removed += r.files_removed;
    into.dirs_created += r.dirs_created;
    into.dirs_removed += r.dirs_removed;
    into.symlinks_written += r.symlinks_written;
    into.bytes_written += r.bytes_written;
    into.bytes_reused += r.bytes_reused;
    into.kept.extend(r.kept);
}

/// What is at a path on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskKind {
    File,
    Dir,
    Symlink,
    Other,
}

fn disk_kind(st: &RawStat) -> DiskKind {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => DiskKind::File,
        libc::S_IFDIR => DiskKind::Dir,
        libc::S_IFLNK => DiskKind::Symlink,
        _ => DiskKind::Other,
    }
}

/// Mode bits checkout gives a file or folder: setuid and setgid are never set from a tree.
fn safe_mode(mode: u32) -> u32 {
    mode & 0o1777
}

const CHANGED_LOCALLY: &str = "changed locally since the last scan";
const UNTRACKED: &str =
    "exists on disk but not in the previous snapshot (untracked); not overwritten";

/// State of one checkout run.
struct Ctx<'a> {
    store: &'a Store,
    share: PathBuf,
    opts: &'a CheckoutOptions,
    progress: &'a dyn Progress,
    /// Resuming after a crash: paths may already be at their `to` version, temp files may be left.
    recovery: bool,
    /// Re-checking finished checkouts after a reboot: when each ran.
    settle: Option<Vec<(i64, i64)>>,
    /// The store folder, relative to the share, when it lies inside it.
    store_rel: Option<PathBuf>,
    report: CheckoutReport,
    kept_more: u64,
    scan: Batch,
    /// The store's release thread, once a big file was replaced (`Some(None)`: none could start).
    release: Option<Option<crossbeam_channel::Sender<Release>>>,
    /// Records of paths earlier checkouts could not write, not visited yet by this one.
    unwritten: HashMap<PathBuf, Seen>,
    /// Retrying such a path: the old file is checked before the rename but its bytes are never
    /// reused (they are not a version the store knows).
    no_reuse: bool,
}

impl Ctx<'_> {
    /// The release thread's queue, started on first use; `None` if no thread can start.
    fn release_tx(&mut self) -> Option<crossbeam_channel::Sender<Release>> {
        if self.release.is_none() {
            let mut g = self
                .store
                .releaser
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if g.is_none() {
                *g = Releaser::start();
            }
            self.release = Some(g.as_ref().and_then(|r| r.sender()));
        }
        self.release.clone().flatten()
    }

    fn keep(&mut self, path: &Path, reason: &str) {
        if self.report.kept.len() < KEPT_MAX {
            self.report.kept.push(Skipped {
                path: path.to_path_buf(),
                reason: reason.to_string(),
            });
        } else {
            self.kept_more += 1;
        }
    }

    fn io(&self, rel: &Path, e: io::Error) -> Error {
        Error::io(self.share.join(rel), e)
    }

    fn record(&mut self, rel: &Path, st: Stat, node: NodeId) -> Result<()> {
        self.scan.put(
            &self.store.db,
            cf::SCAN,
            rel.as_os_str().as_bytes(),
            &st.cache_bytes(node),
        );
        self.flush_scan(false)
    }

    fn forget(&mut self, rel: &Path) -> Result<()> {
        self.scan
            .delete(&self.store.db, cf::SCAN, rel.as_os_str().as_bytes());
        self.flush_scan(false)
    }

    fn flush_scan(&mut self, all: bool) -> Result<()> {
        if (all && !self.scan.is_empty()) || self.scan.len() >= SCAN_BATCH {
            let b = std::mem::take(&mut self.scan);
            self.store.db.write(b.inner, false)?;
        }
        Ok(())
    }

    /// The scan-cache record of `rel`, and whether it is racy.
    fn cached_racy(&self, rel: &Path) -> Result<Option<(Stat, NodeId, bool)>> {
        Ok(self
            .store
            .db
            .get(cf::SCAN, rel.as_os_str().as_bytes())?
            .and_then(|v| Stat::from_cache_racy(&v)))
    }

    /// The scan-cache record of `rel`.
    fn cached(&self, rel: &Path) -> Result<Option<(Stat, NodeId)>> {
        Ok(self.cached_racy(rel)?.map(|(st, node, _)| (st, node)))
    }

    /// Re-checking after a reboot: whether the settled checkout wrote this inode last (its ctime
    /// lies within that checkout's run).
    fn written_by_settled(&self, st: &RawStat) -> bool {
        let c = Stat::of_raw(st).ctime_ns;
        self.settle
            .as_ref()
            .map(|w| w.iter().any(|&(start, end)| c >= start && c <= end))
            .unwrap_or(false)
    }

    /// Whether `rel` is left's own (never written by a checkout).
    fn reserved(&self, rel: &Path, name: &[u8]) -> bool {
        name == b".left"
            || name.starts_with(TMP_PREFIX.as_bytes())
            || self.store_rel.as_deref() == Some(rel)
    }
}

impl Store {
    /// Waits until the files earlier checkouts replaced are released: checkout hands a replaced
    /// big file to a release thread (freeing 1 GiB on ext4 takes ~0.2 s, mostly waiting) and
    /// returns without waiting for it. The next checkout and the store's drop wait as well; call
    /// this to have their space back now.
    pub fn wait_released(&self) {
        let r = self
            .releaser
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(r);
    }

    /// Moves the share folder from snapshot `from` (`None`: nothing checked out yet) to snapshot
    /// `to`, touching only paths that differ between the two trees, then sets head = `to` (synced).
    /// `to` must be complete in the store. See the module documentation for what is written, what
    /// is kept, and what a crash leaves. A checkout cut short (an error or a crash) stays journaled:
    /// [`Store::resume_checkout`] finishes it, and another checkout is refused until then.
    pub fn checkout(
        &self,
        share_root: &Path,
        from: Option<NodeId>,
        to: NodeId,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
    ) -> Result<CheckoutReport> {
        self.writable()?;
        let settled = self.settle_after_reboot(share_root, opts, progress)?;
        let mode = match self.pending_checkout()? {
            None => Mode::Normal,
            Some(p) if p == (from, to) => Mode::Resume,
            Some((pf, pt)) => {
                return Err(Error::Invalid(format!(
                    "a checkout from {} to {} was cut short; finish it first (resume)",
                    pf.map(|f| f.fmt_short())
                        .unwrap_or_else(|| "nothing".into()),
                    pt.fmt_short()
                )))
            }
        };
        let mut r = self.run_checkout(share_root, from, to, opts, progress, mode)?;
        if let Some(s) = settled {
            absorb(&mut r, s);
        }
        Ok(r)
    }

    fn run_checkout(
        &self,
        share_root: &Path,
        from: Option<NodeId>,
        to: NodeId,
        opts: &CheckoutOptions,
        progress: &dyn Progress,
        mode: Mode,
    ) -> Result<CheckoutReport> {
        let _g = self.op.read().expect("op lock");
        let start_ns = crate::store::now_ns();
        if !self.has_nodes(&[to])?[0] {
            return Err(Error::not_found(format!(
                "snapshot {} is not completely stored",
                to.fmt_short()
            )));
        }
        let to_root = self.snapshot_root(to)?;
        let from_root = from.map(|f| self.snapshot_root(f)).transpose()?;
        let root_c = cstring(share_root.as_os_str().as_bytes())?;
        // The share root itself is the user's choice (it may be reached through a link); nothing
        // beneath it is.
        let root = open_at(
            CWD,
            &root_c,
            OFlags::RDONLY | OFlags::DIRECTORY,
            FileMode::empty(),
        )
        .map_err(|e| Error::io(share_root, e))?;
        let share = std::fs::canonicalize(share_root).map_err(|e| Error::io(share_root, e))?;
        let store_rel = std::fs::canonicalize(&self.dir)
            .ok()
            .and_then(|d| d.strip_prefix(&share).ok().map(Path::to_path_buf))
            .filter(|r| !r.as_os_str().is_empty());

        // Files earlier checkouts replaced are freed first (their space counts as free).
        self.wait_released();
        // Plan: bytes to write against the free space, before anything is touched.
        let mut plan = Plan::default();
        let mut check = TreeCheck::default();
        match self.plan_dir(
            from_root,
            Some(to_root),
            &mut plan,
            0,
            Path::new(""),
            &mut check,
        ) {
            Ok(()) => {}
            // A folder that does not decode as one, or names an entry twice.
            Err(e @ Error::Corrupt { .. }) => {
                check.bad.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
        let avail = free_bytes(root.as_fd()).map_err(|e| Error::io(share_root, e))?;
        // (Finishing or re-checking: most of the plan is usually done already, and refusing would
        // leave the folder half-way; a real shortage still fails each write with DiskFull.)
        if matches!(mode, Mode::Normal) {
            // Staged files are on disk already: renaming them in takes no space (when they are
            // on the share's file system; otherwise they are written as usual).
            if let Some(st) = &opts.staged {
                let root_dev = fstat(root.as_fd()).map(|s| s.st_dev).ok();
                if st.dev().is_some() && st.dev() == root_dev {
                    plan.write = plan.write.saturating_sub(st.bytes());
                }
            }
            check_space(&plan, avail, share_root)?;
        }
        // A malformed tree (a file entry on a folder node, chunk lists whose lengths do not add
        // up to the file's size) is refused before the journal is written: nothing is touched,
        // and nothing is left to replay.
        if let Some(bad) = check.bad.take() {
            match &mode {
                Mode::Normal => return Err(bad),
                // A journal an older version wrote for such a tree could never finish: it is
                // dropped (as `abort_checkout` does) and said so, so the store is not stuck.
                Mode::Resume => {
                    self.abort_checkout()?;
                    let mut report = CheckoutReport::default();
                    report.kept.push(Skipped {
                        path: PathBuf::new(),
                        reason: format!(
                            "the interrupted checkout to {} was dropped, its tree is malformed \
                             ({bad}); the folder keeps what it has and the next add records it",
                            to.fmt_short()
                        ),
                    });
                    return Ok(report);
                }
                // Re-checking finished checkouts: each path goes on its own (damage is per path).
                Mode::Settle { .. } => {}
            }
        }

        if matches!(mode, Mode::Normal) {
            self.write_journal(from, to)?;
        }

        let mut cx = Ctx {
            store: self,
            share: share_root.to_path_buf(),
            opts,
            progress,
            recovery: !matches!(mode, Mode::Normal),
            settle: match &mode {
                Mode::Settle { windows, .. } => Some(windows.clone()),
                _ => None,
            },
            store_rel,
            report: CheckoutReport::default(),
            kept_more: 0,
            scan: Batch::default(),
            release: None,
            unwritten: self.unwritten()?.into_iter().collect(),
            no_reuse: false,
        };
        progress.start("checkout", Some(plan.write));
        let r = self.apply_dir(&mut cx, &root, Path::new(""), from_root, Some(to_root), 0);
        let r = r.and_then(|()| match mode {
            Mode::Settle { .. } => Ok(()),
            _ => self.retry_unwritten_paths(&mut cx, &root, to),
        });
        progress.finish();
        // Scan records of what was written stay true whatever happened after.
        cx.flush_scan(true)?;
        r?;
        if opts.fsync {
            fsync(root.as_fd()).map_err(|e| Error::io(share_root, e))?;
        }
        let mut b = Batch::default();
        match &mode {
            Mode::Settle { keys, .. } => {
                for k in keys {
                    b.delete(&self.db, cf::META, k);
                }
            }
            _ => {
                b.put(&self.db, cf::REFS, b"head", to.as_bytes());
                b.delete(&self.db, cf::META, journal::JOURNAL_KEY);
            }
        }
        if !opts.fsync {
            self.add_settle(&mut b, from, to, start_ns)?;
        }
        self.db.write(b.inner, true)?;
        let mut report = cx.report;
        if cx.kept_more > 0 {
            report.kept.push(Skipped {
                path: PathBuf::new(),
                reason: format!("and {} more paths kept", cx.kept_more),
            });
        }
        Ok(report)
    }
}
