//! `add`: snapshot a share folder (or some paths in it) as the new head.
//!
//! 1. **Scan** with the `ignore` crate: only `.leftignore` files (gitignore syntax) filter; hidden
//!    files and `.gitignore` do not. `.left`, the store folder and the temporary files of a checkout
//!    or restore (`.left-tmp-*`) are never entered. Files, folders
//!    (empty ones too) and symlinks (verbatim unless `follow_links`) are recorded with their mode,
//!    mtime in ns and raw name bytes.
//! 2. **Scan cache**: a file whose size, mtime, ctime and inode match its cache record, and whose file
//!    node is still complete in the store, keeps that node without being read (`rehash` disables this).
//!    A record written while the file's mtime was within [`Store::RACY_MARGIN_NS`] of the moment its
//!    read started is *racy*: a write in the same timestamp tick right after the read would not
//!    change the stat, so the next add reads that file again even if its stat matches (git's "racy
//!    clean" problem); that re-read, once the file is older, writes a normal record.
//! 3. **Pipeline** for the other files, four stages joined by bounded channels: a reader thread
//!    reads each file in 1 MiB blocks straight into a ~4 MiB batch buffer and cuts chunks (FastCDC)
//!    in place, so chunk bytes are not copied on this serial stage. A changed file whose scan
//!    record names a previous version this add cut itself (and whose node is complete) is not
//!    scanned again where it did not change: at each true cut the reader checks whether the
//!    previous version's next chunk is there again (BLAKE3 of those bytes, on the rayon pool, and
//!    FastCDC's decision at its end, see [`chunker::CutCheck`]) and takes it with its known id;
//!    after a mismatch it cuts with FastCDC and looks each new chunk up among the next old chunks
//!    (a bounded window) to find where the old list continues ([`Reuse`]). The chunks are exactly
//!    those of a full FastCDC pass. The bytes read so far are cut (and reused chunks hashed) on
//!    the rayon pool while the next block is read, so the copy out of the page cache overlaps
//!    the hashing (a changed 1 GiB file: 0.8-1.0 s → 0.53-0.65 s). A hashing
//!    thread hashes (BLAKE3), checks the chunk index and compresses new chunks of a batch on the
//!    rayon pool (both cores); the calling thread turns each batch into chunk, chunk-list node, file
//!    node and completeness-mark puts; a writer thread writes those batches to RocksDB. Every stage
//!    works on a different batch at the same time. Memory is bounded by the channels (about six
//!    batches in flight) whatever the file sizes.
//!    A file whose stat changes while it is read is read again (at most 3 more times) and then skipped
//!    with a reason; an unreadable file is skipped. Neither stops the snapshot. A skipped path
//!    (unreadable, changing, FIFO/socket, a folder that cannot be listed) keeps the previous
//!    snapshot's entry (a folder: its whole previous subtree), so a skip never reads as a deletion;
//!    a path skipped that was not in the previous snapshot is left out.
//! 4. **Tree**: folder nodes are built bottom-up; with `only` paths, the new subtrees are spliced into
//!    the previous head's tree. If the root equals the head's root, no snapshot is made. Otherwise the
//!    snapshot node is written and the memtables are flushed (table and blob files, synced by
//!    RocksDB), so every WAL file is obsolete, then `head` moves in a synced batch: the chunk data
//!    reaches the disk once (blob files), and the next open replays a WAL of one entry.
//!
//! 5. **Frozen paths**: a path the head tracks that `.leftignore` now covers keeps the head's entry
//!    (it is *frozen*, counted in [`AddReport::frozen`]) until [`Store::forget`] drops it on purpose.
//!
//! ## Where each part lives
//!
//! - `mod.rs`: [`Store::add`] itself: the scan roots, the scan-cache lookups, the jobs, then the
//!   tree, the frozen paths and the snapshot and `head` writes, in that order.
//! - `walk`: the folder walk (step 1) and the decision per entry (kind, skip, carried forward).
//! - `pipeline`: the bounded queues and the hashing and bookkeeping stages (step 3).
//! - `reader`: the reader thread: reading one file, its re-reads when it changes, the read hook.
//! - `reuse`: taking the previous version's cuts again ([`chunker::CutCheck`], the window).
//! - `writer`: the batched puts of one add (nodes, chunks with their index entries).
//! - `tree`: folder nodes bottom-up, the splice of `only` paths, the previous tree (step 4).
//! - `frozen`: paths `.leftignore` covers that the head tracks (step 5), and [`Store::forget`].
//!
//! ## What it is not
//!
//! Not done here: watching, merging with other devices, ignoring by size or type, writing the
//! share (that is [`crate::checkout`]).

use crate::db::{cf, Batch};
use crate::node::{build_dir, Node, Target};
use crate::scan::{Stat, RACY_MARGIN_NS, REC_CUT_HERE, REC_RACY};
use crate::store::{now_ns, rel_components};
use crate::{
    AddOptions, AddReport, CheckoutOptions, EntryKind, Error, NodeId, Progress, Result, Snapshot,
    Store,
};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

mod frozen;
mod pipeline;
mod reader;
mod reuse;
mod tree;
mod walk;
mod writer;

use frozen::{freeze, Ignores};
use pipeline::Job;
use tree::{build_subtree, splice, to_dir_entry, PrevTree};
use walk::Links;
use writer::Writer;

pub use frozen::FROZEN_WARN;
pub use reader::{debug_set_read_hook, ReadHook};

impl Store {
    /// How recent (ns) a file's mtime may be, relative to the start of its read, for its
    /// scan record to be marked racy (read again by the next add even if its stat matches).
    pub const RACY_MARGIN_NS: i64 = RACY_MARGIN_NS;
}

impl Store {
    /// Test hook: writes the scan record of `rel` (in the share at `share`) as if the file as it
    /// is now had been read as `node`, racy or not: what a write within the timestamp tick
    /// right after a read leaves behind.
    #[doc(hidden)]
    pub fn debug_forge_scan_record(
        &self,
        share: &Path,
        rel: &Path,
        node: NodeId,
        racy: bool,
    ) -> Result<()> {
        let m = fs::symlink_metadata(share.join(rel)).map_err(|e| Error::io(share.join(rel), e))?;
        let rec = Stat::of(&m).record_bytes(node, if racy { REC_RACY } else { 0 });
        let mut b = Batch::default();
        b.put(&self.db, cf::SCAN, rel.as_os_str().as_bytes(), &rec);
        self.db.write(b.inner, false)
    }
}

struct Ent {
    rel: PathBuf,
    name: Vec<u8>,
    kind: EntryKind,
    stat: Stat,
    link: Option<Vec<u8>>,
    node: Option<NodeId>,
    children: Vec<usize>,
    /// Could not be stored this time (unreadable, changing, not a file type we store, a folder that
    /// could not be listed): the previous snapshot's entry at this path, if any, is kept instead, so
    /// a skip never looks like a deletion.
    skipped: bool,
    /// Deleted between the scan and the read: left out.
    gone: bool,
}

/// Counters of one add, for tests and measurements ([`Store::debug_add_with_stats`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AddStats {
    /// Plain bytes of chunks taken from a previous version of their file (cut and id reused,
    /// verified by BLAKE3 and FastCDC's decision at the cut) instead of being cut by FastCDC.
    pub bytes_cut_reused: u64,
    /// Chunks taken that way.
    pub chunks_cut_reused: u64,
    /// Plain bytes cut by FastCDC.
    pub bytes_cut_cdc: u64,
    /// Of those, bytes the reader hashed itself, looking for the previous version's chunks.
    pub bytes_cut_resync: u64,
    /// Files read although their stat matched the scan record, because the record was racy.
    pub files_racy_reread: u64,
    /// Scan records written racy.
    pub records_racy: u64,
}

impl Store {
    /// Snapshot the share folder (or only the given paths, relative to the share root or absolute
    /// inside it, merged into the previous head's tree) as the new head. The store folder itself and
    /// `.left` are never scanned. No change: `report.snapshot` is `None` and the head does not move.
    ///
    /// First, a checkout a crash cut short is finished, and after a reboot the checkouts that
    /// finished without fsync just before it are checked again ([`Store::resume_checkout`]), so
    /// a snapshot never records a half-checked-out folder, or a file a power cut took back, as a
    /// local change.
    pub fn add(
        &self,
        share_root: &Path,
        only: &[PathBuf],
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<AddReport> {
        self.debug_add_with_stats(share_root, only, opts, progress)
            .map(|(r, _)| r)
    }

    /// [`Store::add`], also returning counters of what the reader did (tests, measurements).
    #[doc(hidden)]
    pub fn debug_add_with_stats(
        &self,
        share_root: &Path,
        only: &[PathBuf],
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<(AddReport, AddStats)> {
        self.writable()?;
        let mut stats = AddStats::default();
        self.resume_checkout(share_root, &CheckoutOptions::default(), progress)?;
        let _g = self.op.read().expect("op lock");
        let share = fs::canonicalize(share_root).map_err(|e| Error::io(share_root, e))?;
        let store_dir = fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let mut report = AddReport::default();
        let head = self.head()?;
        let head_snap = head.map(|h| self.snapshot(h)).transpose()?;
        let prev_root = match (&head, &head_snap) {
            (Some(h), Some(s)) if !self.is_shallow(*h)? => Some(s.root),
            _ => None,
        };

        // Scan roots, relative to the share.
        let mut roots: Vec<PathBuf> = Vec::new();
        if only.is_empty() {
            roots.push(PathBuf::new());
        } else {
            for p in only {
                let rel = if p.is_absolute() {
                    let abs = normalize(p);
                    abs.strip_prefix(&share)
                        .map(Path::to_path_buf)
                        .or_else(|_| {
                            abs.strip_prefix(normalize(share_root))
                                .map(Path::to_path_buf)
                        })
                        .map_err(|_| Error::PathOutsideShare { path: p.clone() })?
                } else {
                    p.clone()
                };
                let comps = rel_components(&rel)
                    .map_err(|_| Error::PathOutsideShare { path: p.clone() })?;
                // Normalized: "." and "a/./b" become "" and "a/b"; "" is the whole share.
                let rel: PathBuf = comps
                    .iter()
                    .map(|c| std::ffi::OsStr::from_bytes(c))
                    .collect();
                if !roots.contains(&rel) {
                    roots.push(rel);
                }
            }
            if roots.iter().any(|r| r.as_os_str().is_empty()) {
                roots = vec![PathBuf::new()];
            }
        }

        // Paths a checkout could not write: while the disk shows what it saw there, the head's
        // entry (the version it meant to write) is kept, so the old bytes are not published.
        let unwritten = self.unwritten()?;
        let links = Links::new(
            self,
            &share,
            &store_dir,
            opts.follow_links,
            head_snap.as_ref().map(|s| s.root),
        )?;
        let mut ents: Vec<Ent> = Vec::new();
        let mut scan_roots: Vec<(PathBuf, Option<usize>)> = Vec::new();
        for rel in &roots {
            let idx = self.scan(
                &share,
                &store_dir,
                rel,
                &links,
                !only.is_empty(),
                &unwritten,
                &mut ents,
                &mut report,
            )?;
            if idx.is_none() {
                let known = match prev_root {
                    Some(r) if !rel.as_os_str().is_empty() => self.lookup(r, rel).is_ok(),
                    _ => false,
                };
                if !known {
                    return Err(Error::not_found(format!(
                        "{} does not exist in the share",
                        rel.display()
                    )));
                }
            }
            scan_roots.push((rel.clone(), idx));
        }

        // Scan cache (batched lookups), then jobs for everything not known unchanged. A file whose
        // record is racy is read again even if its stat matches. A file whose record names a node
        // this store cut keeps it as the previous version whose cuts its reader may reuse.
        let files: Vec<usize> = (0..ents.len())
            .filter(|&i| ents[i].kind == EntryKind::File && !ents[i].skipped)
            .collect();
        let mut prevs: HashMap<usize, NodeId> = HashMap::new();
        if !opts.rehash {
            for part in files.chunks(4096) {
                let keys: Vec<&[u8]> = part
                    .iter()
                    .map(|&i| ents[i].rel.as_os_str().as_bytes())
                    .collect();
                let vals = self.db.get_many(cf::SCAN, &keys)?;
                // (entry, node, unchanged)
                let mut found: Vec<(usize, NodeId, bool)> = Vec::new();
                for (&i, v) in part.iter().zip(vals) {
                    let Some((st, node, flags)) = v.as_deref().and_then(Stat::from_record) else {
                        continue;
                    };
                    let same = st == ents[i].stat;
                    if same && flags & REC_RACY == 0 {
                        found.push((i, node, true));
                    } else if flags & REC_CUT_HERE != 0 {
                        stats.files_racy_reread += u64::from(same);
                        found.push((i, node, false));
                    }
                }
                let ids: Vec<NodeId> = found.iter().map(|h| h.1).collect();
                for ((i, node, same), ok) in found.into_iter().zip(self.has_nodes(&ids)?) {
                    match (ok, same) {
                        (true, true) => ents[i].node = Some(node),
                        (true, false) => {
                            prevs.insert(i, node);
                        }
                        (false, _) => {}
                    }
                }
            }
        }
        let mut jobs = Vec::new();
        let mut total = 0u64;
        let scan_ns = now_ns();
        for i in files {
            let e = &ents[i];
            // Still being written: modified within `settle_ns` (a future mtime more than a second
            // ahead is a timestamp from elsewhere, not a write in progress).
            if e.node.is_none()
                && opts.settle_ns > 0
                && e.stat.mtime_ns > scan_ns - opts.settle_ns
                && e.stat.mtime_ns <= scan_ns + 1_000_000_000
            {
                let e = &mut ents[i];
                e.skipped = true;
                report.files = report.files.saturating_sub(1);
                report.unsettled.push(e.rel.clone());
                continue;
            }
            let e = &ents[i];
            if e.node.is_none() {
                total += e.stat.size;
                jobs.push(Job {
                    ent: i,
                    abs: share.join(&e.rel),
                    prev: prevs.get(&i).copied(),
                });
            }
        }

        progress.start("add", Some(total));
        let res = self.run_pipeline(jobs, &mut ents, &mut report, &mut stats, progress);
        progress.finish();
        res?;

        // Folders bottom-up, then splice.
        let mut w = Writer {
            store: self,
            sink: None,
            batch: Batch::default(),
            written: HashSet::new(),
            report: &mut report,
        };
        let mut prev = PrevTree::new(prev_root);
        let mut new_root = prev_root;
        let mut root_built = None;
        for (rel, idx) in &scan_roots {
            let entry = match idx {
                // Skipped (e.g. an unreadable share root or `only` path): keep what was there.
                Some(i) if ents[*i].skipped => {
                    if rel.as_os_str().is_empty() {
                        continue;
                    }
                    prev.entry(self, rel)?
                }
                Some(i) => {
                    build_subtree(&mut w, &mut ents, *i, &mut prev)?;
                    to_dir_entry(&ents[*i])
                }
                None => None,
            };
            if rel.as_os_str().is_empty() {
                root_built = entry.and_then(|e| {
                    if let Target::Node(id) = e.target {
                        Some(id)
                    } else {
                        None
                    }
                });
            } else {
                let comps = rel_components(rel)?;
                new_root = Some(splice(
                    &mut w,
                    &share,
                    new_root,
                    &comps,
                    PathBuf::new(),
                    entry,
                )?);
            }
        }
        if let Some(r) = root_built {
            new_root = Some(r);
        }
        let new_root = match new_root {
            Some(r) => r,
            None => build_dir(Vec::new(), &mut |id, b| w.put_node(id, b))?,
        };
        // Tracked paths that `.leftignore` now covers keep the head's entry (frozen).
        let frozen_before = self.frozen_count()?;
        let (new_root, frozen) = match prev_root {
            Some(p) if p == new_root => (new_root, frozen_before),
            Some(p) => {
                // The walk reads the new folders: written first.
                w.flush()?;
                let mut ig = Ignores::new(&share);
                let mut n = 0;
                let r = freeze(&mut w, &mut ig, p, Some(new_root), Path::new(""), &mut n)?;
                // The walk visits only folders that changed: after a full scan that is every
                // frozen path (the scan left each out); after an add of `only` paths, the frozen
                // paths elsewhere were not visited, so the count can only grow.
                let n = if only.is_empty() {
                    n
                } else {
                    n.max(frozen_before)
                };
                (r.expect("a root folder"), n)
            }
            None => (new_root, 0),
        };
        w.flush()?;
        drop(w);
        report.frozen = frozen;
        report.newly_frozen = frozen.saturating_sub(frozen_before);
        if frozen != frozen_before {
            self.set_frozen(frozen, report.newly_frozen)?;
        }

        report.head = head;
        if Some(new_root) == head_snap.as_ref().map(|s| s.root)
            && head.is_some()
            && prev_root.is_some()
        {
            self.flush_after_add();
            return Ok((report, stats));
        }
        let snap = Snapshot {
            root: new_root,
            parents: head.into_iter().collect(),
            device: opts.device,
            time_ns: opts
                .time_ns
                .unwrap_or_else(now_ns)
                .max(head_snap.as_ref().map(|s| s.time_ns + 1).unwrap_or(0)),
            message: opts.message.clone(),
        };
        if snap.message.len() > 16 * 1024 {
            return Err(Error::Invalid(
                "snapshot message is longer than 16 KiB".into(),
            ));
        }
        let (sid, bytes) = Node::Snapshot(snap).encode_with_id()?;
        let mut b = Batch::default();
        b.put(&self.db, cf::NODES, sid.as_bytes(), &bytes);
        b.put(&self.db, cf::COMPLETE, sid.as_bytes(), b"");
        report.bytes_stored += bytes.len() as u64;
        self.db.write(b.inner, false)?;
        // Flushed before the ref moves: the flush writes the memtables to table and blob files and
        // syncs them, which makes every WAL file obsolete, so the synced ref write below syncs a
        // WAL of one entry instead of writing all live WAL files (up to the WAL budget of chunk
        // data) to disk a second time.
        self.flush_after_add();
        let mut b = Batch::default();
        b.put(&self.db, cf::REFS, b"head", sid.as_bytes());
        self.db.write(b.inner, true)?;
        report.snapshot = Some(sid);
        report.head = Some(sid);
        Ok((report, stats))
    }

    /// Flushes the memtables, so the next open does not replay the WAL (up to the whole memtable
    /// budget of chunks, nodes and scan records: 0.1-1.8 s) and a synced write after it does not
    /// write that WAL to disk. Best effort: a failed flush only leaves the WAL to the next synced
    /// write and the replay to the next open.
    fn flush_after_add(&self) {
        let _ = self.db.flush_all();
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Lexical normalization (no symlink resolution): drops `.`, folds `..`.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}
