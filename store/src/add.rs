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
//! Not done here: watching, merging with other devices, ignoring by size or type.

use crate::codec::Encoder;
use crate::db::{cf, Batch, IndexEntry};
use crate::node::{build_dir, ChunkRef, ContentBuilder, DirEntry, FileNode, Node, Target};
use crate::scan::{Stat, RACY_MARGIN_NS, REC_CUT_HERE, REC_RACY};
use crate::store::{now_ns, rel_components};
use crate::*;
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const READ_BLOCK: usize = 1 << 20;
const BATCH_BYTES: usize = 4 << 20;
/// Buffer of the pipeline's RocksDB batches: they are written once past 4 MiB of values (the last
/// chunk may pass it by up to a chunk), so most never grow.
const WRITE_BATCH_CAP: usize = (4 << 20) + (512 << 10);
/// Uncut bytes below this are cut after the next read instead of beside it (see `read_one`).
const OVERLAP_MIN: usize = 256 << 10;
const MAX_REREADS: usize = 3;
/// Old chunks a changed file's reader looks ahead to find where the old list continues after a
/// change (an insertion or deletion shifts it): 4096 entries, ~256 MiB of the old file at the
/// default sizes, ~400 KiB of memory.
const REUSE_WINDOW: usize = 4096;
/// After this many bytes cut without finding an old chunk again, the rest of the file is cut
/// without looking (the reader stops hashing chunks itself, which the hashing stage does in
/// parallel with the reading).
const RESYNC_LIMIT: u64 = 64 << 20;
/// While looking for the old list, the reader cuts and hashes one chunk at a time (it stops
/// cutting at the first old chunk found) until this many bytes went unmatched; then a whole read
/// block at a time, hashed on the rayon pool (a long new stretch: an old chunk is not near).
const RESYNC_BULK: u64 = 1 << 20;
/// Old chunks checked at once (hashed on the rayon pool) in [`Mode::Fast`], at most: the group
/// starts at 2 after a change and doubles after each group found whole. After a mismatch the rest
/// of its group was hashed for nothing, and each group costs a wake-up of the pool, so groups are
/// small near changes and as large as the bytes read allow elsewhere.
const REUSE_GROUP: usize = 64;

impl Store {
    /// How recent (ns) a file's mtime may be, relative to the start of its read, for its
    /// scan record to be marked racy (read again by the next add even if its stat matches).
    pub const RACY_MARGIN_NS: i64 = RACY_MARGIN_NS;
}

/// Test hook: called by the reader thread after the first block of each read attempt of a file,
/// with the file's path and the attempt number (0 = first read).
#[doc(hidden)]
pub type ReadHook = fn(&Path, usize);

static READ_HOOK: std::sync::RwLock<Option<ReadHook>> = std::sync::RwLock::new(None);

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

/// Installs (or removes) the process-wide [`ReadHook`] (tests only).
#[doc(hidden)]
pub fn debug_set_read_hook(hook: Option<ReadHook>) {
    *READ_HOOK.write().expect("hook lock") = hook;
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

/// What the reader already knows of a chunk's id.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Nothing: the hashing stage hashes it.
    No,
    /// A chunk of the file's previous version, found again (hashed by the reader): already stored.
    Reused(ChunkId),
    /// Cut by FastCDC and hashed by the reader while looking for the previous version's chunks.
    Hashed(ChunkId),
}

enum Item {
    Chunk {
        job: usize,
        start: usize,
        len: usize,
        known: Known,
    },
    Restart {
        job: usize,
    },
    /// The file could not be read (`gone`: it no longer exists, i.e. it was deleted meanwhile).
    Failed {
        job: usize,
        reason: String,
        gone: bool,
    },
    Done {
        job: usize,
        stat: Stat,
        /// The scan record must be marked racy.
        racy: bool,
    },
}

#[derive(Default)]
struct ReadBatch {
    buf: Vec<u8>,
    items: Vec<Item>,
    bytes_read: u64,
}

struct Job {
    ent: usize,
    abs: PathBuf,
    /// The file node of the file's previous version, cut by this store and complete, whose cuts
    /// the reader may reuse.
    prev: Option<NodeId>,
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

/// A chunk after the hashing stage: its id, and its encoding unless the store already has it.
type Hashed = Result<(ChunkId, Option<Vec<u8>>)>;

thread_local! {
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::new());
}

/// Per-add write state.
struct Writer<'a> {
    store: &'a Store,
    /// When set, full batches go to the writer thread instead of being written here.
    sink: Option<crossbeam_channel::Sender<rocksdb::WriteBatch>>,
    batch: Batch,
    written: HashSet<Hash>,
    report: &'a mut AddReport,
}

impl Writer<'_> {
    fn put_node(&mut self, id: NodeId, bytes: Vec<u8>) -> Result<()> {
        if !self.written.insert(id.0) {
            return Ok(());
        }
        if self.store.db.exists(cf::COMPLETE, id.as_bytes())? {
            return Ok(());
        }
        self.report.bytes_stored += bytes.len() as u64;
        self.batch
            .put(&self.store.db, cf::NODES, id.as_bytes(), &bytes);
        self.batch
            .put(&self.store.db, cf::COMPLETE, id.as_bytes(), b"");
        Ok(())
    }

    fn put_chunk(&mut self, id: ChunkId, len: usize, enc: &[u8]) {
        if !self.written.insert(id.0) {
            return;
        }
        self.report.bytes_new += len as u64;
        self.report.bytes_stored += enc.len() as u64;
        self.batch
            .put(&self.store.db, cf::CHUNKS, id.as_bytes(), enc);
        let ie = IndexEntry {
            len: len as u32,
            codec: enc[0],
            enc_len: enc.len() as u32,
        };
        self.batch.put(
            &self.store.db,
            cf::CHUNK_INDEX,
            id.as_bytes(),
            &ie.to_bytes(),
        );
    }

    fn flush(&mut self) -> Result<()> {
        if !self.batch.is_empty() {
            let b = std::mem::replace(&mut self.batch, Batch::with_capacity(WRITE_BATCH_CAP));
            match &self.sink {
                Some(tx) => tx
                    .send(b.inner)
                    .map_err(|_| Error::Db("the write thread stopped".into()))?,
                None => self.store.db.write(b.inner, false)?,
            }
        }
        if self.written.len() > 1 << 20 {
            self.written.clear();
        }
        Ok(())
    }

    fn file_node(&mut self, st: Stat, content: ContentBuilder) -> Result<NodeId> {
        let content = content.finish(&mut |id, b| self.put_node(id, b))?;
        let (id, bytes) = Node::File(FileNode {
            size: st.size,
            mode: st.mode,
            mtime_ns: st.mtime_ns,
            content,
        })
        .encode_with_id()?;
        self.put_node(id, bytes)?;
        Ok(id)
    }
}

fn walk_error_path(e: &ignore::Error) -> Option<PathBuf> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path.clone()),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            walk_error_path(err)
        }
        ignore::Error::Loop { child, .. } => Some(child.clone()),
        _ => None,
    }
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

    /// Scans `rel` (relative to `share`) into `ents`; returns the index of its entry, or `None` if it
    /// does not exist.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        share: &Path,
        store_dir: &Path,
        rel: &Path,
        links: &Links,
        parents: bool,
        unwritten: &[(PathBuf, crate::scan::Seen)],
        ents: &mut Vec<Ent>,
        report: &mut AddReport,
    ) -> Result<Option<usize>> {
        let abs = share.join(rel);
        let meta = match links.metadata(rel, &abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&abs, e)),
        };
        let name = rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let root = push_ent(ents, rel.to_path_buf(), name, &meta, &abs, report)?;
        if ents[root].kind != EntryKind::Dir {
            return Ok(Some(root));
        }
        let mut dirs: HashMap<PathBuf, usize> = HashMap::new();
        dirs.insert(rel.to_path_buf(), root);
        let store_dir = store_dir.to_path_buf();
        // Links that must stay links while the walk follows the others: left out of the walk
        // (so it does not descend into them) and recorded verbatim after it.
        let unfollowed: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let mut wb = ignore::WalkBuilder::new(&abs);
        let policy = links.follow.then(|| (links.clone(), unfollowed.clone()));
        let share_dir = share.to_path_buf();
        wb.standard_filters(false)
            .hidden(false)
            .parents(parents)
            .follow_links(links.follow)
            .add_custom_ignore_filename(".leftignore")
            .filter_entry(move |e| {
                let keep = e.file_name() != ".left"
                    && !e
                        .file_name()
                        .as_bytes()
                        .starts_with(crate::scan::TMP_PREFIX.as_bytes())
                    && e.path() != store_dir;
                if let (true, Some((links, unfollowed))) = (keep && e.path_is_symlink(), &policy) {
                    if let Ok(r) = e.path().strip_prefix(&share_dir) {
                        if e.depth() > 0 && !links.follows(r, e.path()) {
                            unfollowed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(r.to_path_buf());
                            return false;
                        }
                    }
                }
                keep
            });
        for r in wb.build() {
            let de = match r {
                Ok(de) => de,
                Err(e) => {
                    let reason = one_line(&e.to_string());
                    match walk_error_path(&e)
                        .and_then(|p| p.strip_prefix(share).ok().map(Path::to_path_buf))
                    {
                        Some(r) => skip_path(ents, &dirs, r, reason, report),
                        None => report.skipped.push(Skipped {
                            path: PathBuf::new(),
                            reason,
                        }),
                    }
                    continue;
                }
            };
            if de.depth() == 0 {
                continue;
            }
            let Ok(r) = de.path().strip_prefix(share) else {
                continue;
            };
            let r = r.to_path_buf();
            let parent = r.parent().and_then(|p| dirs.get(p).copied());
            let Some(parent) = parent else { continue };
            let meta = match links.metadata(&r, de.path()) {
                Ok(m) => m,
                // Deleted since it was listed: a deletion, not a skip.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    skip_path(ents, &dirs, r, one_line(&e.to_string()), report);
                    continue;
                }
            };
            let name = de.file_name().as_bytes().to_vec();
            let i = push_ent(ents, r.clone(), name, &meta, de.path(), report)?;
            // Skipped entries stay in their folder so the previous version is carried forward.
            ents[parent].children.push(i);
            if ents[i].kind == EntryKind::Dir && !ents[i].skipped {
                dirs.insert(r, i);
            }
        }
        let unfollowed = std::mem::take(&mut *unfollowed.lock().unwrap_or_else(|p| p.into_inner()));
        for r in unfollowed {
            let parent = r.parent().and_then(|p| dirs.get(p).copied());
            let Some(parent) = parent else { continue };
            let abs = share.join(&r);
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    skip_path(ents, &dirs, r, one_line(&e.to_string()), report);
                    continue;
                }
            };
            let name = r
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default();
            let i = push_ent(ents, r, name, &meta, &abs, report)?;
            ents[parent].children.push(i);
        }
        for (p, seen) in unwritten {
            if p.as_os_str().is_empty() || !p.starts_with(rel) {
                continue;
            }
            let m = fs::symlink_metadata(share.join(p)).ok();
            if crate::scan::Seen::of_meta(m.as_ref()) != *seen {
                continue;
            }
            let reason: String =
                "the last checkout could not write it; the synced version is kept".into();
            if p == rel {
                // An `only` path: its previous entry is carried whole.
                ents[root].skipped = true;
                ents[root].children.clear();
                report.skipped.push(Skipped {
                    path: p.clone(),
                    reason,
                });
                continue;
            }
            // Scanned already: marked skipped in its folder (a folder drops what it found).
            let parent = p.parent().and_then(|q| dirs.get(q).copied());
            let name = p.file_name().map(|n| n.as_bytes().to_vec());
            let found = parent.zip(name).and_then(|(parent, name)| {
                ents[parent]
                    .children
                    .iter()
                    .copied()
                    .find(|&c| ents[c].name == name)
            });
            match found {
                Some(c) => {
                    ents[c].skipped = true;
                    ents[c].children.clear();
                    dirs.remove(p);
                    report.skipped.push(Skipped {
                        path: p.clone(),
                        reason,
                    });
                }
                None => skip_path(ents, &dirs, p.clone(), reason, report),
            }
        }
        Ok(Some(root))
    }

    fn run_pipeline(
        &self,
        jobs: Vec<Job>,
        ents: &mut [Ent],
        report: &mut AddReport,
        stats: &mut AddStats,
        progress: &dyn Progress,
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let sizes = self.sizes();
        let max = sizes.max as usize;
        let job_ents: Vec<usize> = jobs.iter().map(|j| j.ent).collect();
        let (tx, rx) = crossbeam_channel::bounded::<ReadBatch>(1);
        let (htx, hrx) = crossbeam_channel::bounded::<(ReadBatch, Vec<Hashed>)>(1);
        let (pool_tx, pool_rx) = crossbeam_channel::bounded::<Vec<u8>>(2);
        let (wtx, wrx) = crossbeam_channel::bounded::<rocksdb::WriteBatch>(1);
        let db = &self.db;
        let mut refs: Vec<ContentBuilder> =
            (0..job_ents.len()).map(|_| ContentBuilder::new()).collect();
        let result = std::thread::scope(|scope| {
            // The reader reads the previous versions' chunk lists from the store as it goes.
            scope.spawn(move || read_files(self, jobs, sizes, tx, pool_rx));
            // Writes overlap with hashing and compressing the next batch.
            let writer = scope.spawn(move || -> Result<()> {
                for b in wrx.iter() {
                    db.write(b, false)?;
                }
                Ok(())
            });
            // Hashing and compressing (on the rayon pool) overlap with this thread's bookkeeping of
            // the previous batch, so the pool never waits for it.
            scope.spawn(move || {
                for rb in rx.iter() {
                    let done: Vec<Hashed> = rb
                        .items
                        .par_iter()
                        .filter_map(|it| match it {
                            Item::Chunk {
                                start, len, known, ..
                            } => Some((*start, *len, *known)),
                            _ => None,
                        })
                        .map(|(s, l, known)| {
                            let data = &rb.buf[s..s + l];
                            let id = match known {
                                // Stored: the previous version's node is complete, and gc cannot
                                // run during an add.
                                Known::Reused(id) => return Ok((id, None)),
                                Known::Hashed(id) => id,
                                Known::No => ChunkId(Hash::of(data)),
                            };
                            if db.exists(cf::CHUNK_INDEX, id.as_bytes())? {
                                return Ok((id, None));
                            }
                            debug_assert!(l <= max);
                            Ok((id, Some(ENCODER.with(|e| e.borrow_mut().encode(data)))))
                        })
                        .collect();
                    if htx.send((rb, done)).is_err() {
                        return;
                    }
                }
            });
            let mut w = Writer {
                store: self,
                sink: Some(wtx),
                batch: Batch::with_capacity(WRITE_BATCH_CAP),
                written: HashSet::new(),
                report,
            };
            let mut result = Ok(());
            for (rb, done) in hrx.iter() {
                let ReadBatch {
                    buf,
                    items,
                    bytes_read,
                } = rb;
                w.report.bytes_read += bytes_read;
                let mut done = done.into_iter();
                let step = (|| -> Result<()> {
                    for it in items {
                        match it {
                            Item::Chunk {
                                job, len, known, ..
                            } => {
                                match known {
                                    Known::Reused(_) => {
                                        stats.bytes_cut_reused += len as u64;
                                        stats.chunks_cut_reused += 1;
                                    }
                                    Known::Hashed(_) => {
                                        stats.bytes_cut_cdc += len as u64;
                                        stats.bytes_cut_resync += len as u64;
                                    }
                                    Known::No => stats.bytes_cut_cdc += len as u64,
                                }
                                let (id, enc) = done.next().expect("one result per chunk")?;
                                if let Some(enc) = enc {
                                    w.put_chunk(id, len, &enc);
                                }
                                let r = ChunkRef {
                                    id: id.0,
                                    len: len as u64,
                                };
                                refs[job].push(r, &mut |id, b| w.put_node(id, b))?;
                            }
                            Item::Restart { job } => refs[job] = ContentBuilder::new(),
                            Item::Failed { job, reason, gone } => {
                                refs[job] = ContentBuilder::new();
                                let e = &mut ents[job_ents[job]];
                                w.report.files = w.report.files.saturating_sub(1);
                                if gone {
                                    // Deleted since the scan: a deletion, not a skip.
                                    e.gone = true;
                                } else {
                                    e.skipped = true;
                                    w.report.skipped.push(Skipped {
                                        path: e.rel.clone(),
                                        reason,
                                    });
                                }
                            }
                            Item::Done { job, stat, racy } => {
                                let r = std::mem::take(&mut refs[job]);
                                let id = w.file_node(stat, r)?;
                                let e = &mut ents[job_ents[job]];
                                e.stat = stat;
                                e.node = Some(id);
                                let flags = if racy {
                                    stats.records_racy += 1;
                                    REC_CUT_HERE | REC_RACY
                                } else {
                                    REC_CUT_HERE
                                };
                                w.batch.put(
                                    &self.db,
                                    cf::SCAN,
                                    e.rel.as_os_str().as_bytes(),
                                    &stat.record_bytes(id, flags),
                                );
                            }
                        }
                    }
                    w.flush()
                })();
                let _ = pool_tx.try_send(buf);
                progress.advance(bytes_read);
                if let Err(e) = step {
                    result = Err(e);
                    break;
                }
            }
            drop(hrx);
            drop(w);
            // The writer's own error (e.g. disk full) wins over "the write thread stopped".
            match writer.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => result,
                Err(_) => Err(Error::Db("the write thread panicked".into())),
            }
        });
        result
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Which symlinks `add --follow-links` follows. Never one whose target leaves the share (or
/// lies in the store), and never one that the head records as a link: a link a peer planted
/// (`photos -> ~/.ssh/id_rsa`) arrives as a link and stays one, so its target is not published.
/// Without `--follow-links`, no link is followed.
#[derive(Clone, Default)]
struct Links {
    follow: bool,
    /// The share and the store, canonical.
    share: PathBuf,
    store: PathBuf,
    /// Paths the head's tree holds as symlinks.
    verbatim: Arc<HashSet<PathBuf>>,
}

impl Links {
    fn new(
        store: &Store,
        share: &Path,
        store_dir: &Path,
        follow: bool,
        head_root: Option<NodeId>,
    ) -> Result<Links> {
        if !follow {
            return Ok(Links::default());
        }
        let mut verbatim = HashSet::new();
        let mut stack: Vec<(NodeId, PathBuf)> =
            head_root.into_iter().map(|r| (r, PathBuf::new())).collect();
        while let Some((id, rel)) = stack.pop() {
            for e in store.dir_entries(id)? {
                let path = rel.join(std::ffi::OsStr::from_bytes(&e.name));
                match (&e.kind, &e.target) {
                    (EntryKind::Symlink, _) => {
                        verbatim.insert(path);
                    }
                    (EntryKind::Dir, Target::Node(d)) => stack.push((*d, path)),
                    _ => {}
                }
            }
        }
        Ok(Links {
            follow,
            share: share.to_path_buf(),
            store: store_dir.to_path_buf(),
            verbatim: Arc::new(verbatim),
        })
    }

    /// Whether the symlink at `rel` (`abs` on disk) is followed.
    fn follows(&self, rel: &Path, abs: &Path) -> bool {
        if !self.follow || self.verbatim.contains(rel) {
            return false;
        }
        match fs::canonicalize(abs) {
            Ok(t) => t.starts_with(&self.share) && !t.starts_with(&self.store),
            Err(_) => false,
        }
    }

    /// The metadata `add` records for `abs`: the link's own unless it is followed.
    fn metadata(&self, rel: &Path, abs: &Path) -> std::io::Result<fs::Metadata> {
        let m = fs::symlink_metadata(abs)?;
        if m.file_type().is_symlink() && self.follows(rel, abs) {
            return fs::metadata(abs);
        }
        Ok(m)
    }
}

fn push_ent(
    ents: &mut Vec<Ent>,
    rel: PathBuf,
    name: Vec<u8>,
    meta: &fs::Metadata,
    abs: &Path,
    report: &mut AddReport,
) -> Result<usize> {
    let ft = meta.file_type();
    let (kind, link, skipped) = if ft.is_symlink() {
        match fs::read_link(abs) {
            Ok(t) => (
                EntryKind::Symlink,
                Some(t.as_os_str().as_bytes().to_vec()),
                false,
            ),
            Err(e) => {
                report.skipped.push(Skipped {
                    path: rel.clone(),
                    reason: one_line(&e.to_string()),
                });
                (EntryKind::Symlink, None, true)
            }
        }
    } else if ft.is_dir() {
        (EntryKind::Dir, None, false)
    } else if ft.is_file() {
        (EntryKind::File, None, false)
    } else {
        report.skipped.push(Skipped {
            path: rel.clone(),
            reason: "not a regular file, folder or symlink".into(),
        });
        (EntryKind::File, None, true)
    };
    let link_bad = link
        .as_ref()
        .map(|l| l.is_empty() || l.len() > node::MAX_LINK)
        .unwrap_or(false);
    let mut skipped = skipped;
    if link_bad || (!name.is_empty() && node::check_name(&name).is_err()) {
        report.skipped.push(Skipped {
            path: rel.clone(),
            reason: "name or link target cannot be stored".into(),
        });
        skipped = true;
    }
    if !skipped {
        match kind {
            EntryKind::File => report.files += 1,
            EntryKind::Dir => report.dirs += 1,
            EntryKind::Symlink => report.symlinks += 1,
        }
    }
    ents.push(Ent {
        rel,
        name,
        kind,
        stat: Stat::of(meta),
        link,
        node: None,
        children: Vec::new(),
        skipped,
        gone: false,
    });
    Ok(ents.len() - 1)
}

/// Records that `r` (relative to the share) could not be scanned. A folder already scanned (one
/// that could not be listed) is marked skipped, so its previous subtree is kept; another path gets a
/// skipped placeholder in its folder, so its previous entry (if any) is kept.
fn skip_path(
    ents: &mut Vec<Ent>,
    dirs: &HashMap<PathBuf, usize>,
    r: PathBuf,
    reason: String,
    report: &mut AddReport,
) {
    if let Some(&i) = dirs.get(&r) {
        if !ents[i].skipped {
            ents[i].skipped = true;
            ents[i].children.clear();
            report.dirs = report.dirs.saturating_sub(1);
        }
    } else if let (Some(&parent), Some(name)) =
        (r.parent().and_then(|p| dirs.get(p)), r.file_name())
    {
        let name = name.as_bytes().to_vec();
        let known = ents[parent]
            .children
            .iter()
            .any(|&c| ents[c].name == name && ents[c].skipped);
        if !known {
            ents.push(Ent {
                rel: r.clone(),
                name,
                kind: EntryKind::File,
                stat: Stat::default(),
                link: None,
                node: None,
                children: Vec::new(),
                skipped: true,
                gone: false,
            });
            let i = ents.len() - 1;
            ents[parent].children.push(i);
        }
    }
    report.skipped.push(Skipped { path: r, reason });
}

/// Entries of the previous snapshot's tree, looked up by path, for carrying skipped paths forward.
/// Only paths that were skipped are looked up, so this costs nothing on a normal add; it keeps the
/// node ids of the folders it walked through and the entries of the last folder it read.
struct PrevTree {
    root: Option<NodeId>,
    folders: HashMap<PathBuf, Option<NodeId>>,
    last: Option<(PathBuf, Vec<DirEntry>)>,
}

impl PrevTree {
    fn new(root: Option<NodeId>) -> PrevTree {
        PrevTree {
            root,
            folders: HashMap::new(),
            last: None,
        }
    }

    /// The previous folder node at `rel` ("" = root), if there was a folder there.
    fn folder(&mut self, store: &Store, rel: &Path) -> Result<Option<NodeId>> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root);
        }
        if let Some(v) = self.folders.get(rel) {
            return Ok(*v);
        }
        let id = match self.entry(store, rel)? {
            Some(DirEntry {
                kind: EntryKind::Dir,
                target: Target::Node(id),
                ..
            }) => Some(id),
            _ => None,
        };
        self.folders.insert(rel.to_path_buf(), id);
        Ok(id)
    }

    /// The previous entry at `rel` (not the root), if any.
    fn entry(&mut self, store: &Store, rel: &Path) -> Result<Option<DirEntry>> {
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return Ok(None);
        };
        if self.root.is_none() {
            return Ok(None);
        }
        if self.last.as_ref().map(|(p, _)| p != parent).unwrap_or(true) {
            let entries = match self.folder(store, parent)? {
                Some(id) => store.dir_entries(id)?,
                None => Vec::new(),
            };
            self.last = Some((parent.to_path_buf(), entries));
        }
        let entries = &self.last.as_ref().expect("set above").1;
        Ok(entries
            .binary_search_by(|e| e.name.as_slice().cmp(name.as_bytes()))
            .ok()
            .map(|p| entries[p].clone()))
    }
}

fn to_dir_entry(e: &Ent) -> Option<DirEntry> {
    if e.skipped || e.gone {
        return None;
    }
    let target = match e.kind {
        EntryKind::Symlink => Target::Link(e.link.clone()?),
        _ => Target::Node(e.node?),
    };
    let size = match e.kind {
        EntryKind::File => e.stat.size,
        EntryKind::Symlink => e.link.as_ref().map(|l| l.len() as u64).unwrap_or(0),
        EntryKind::Dir => 0,
    };
    Some(DirEntry {
        name: e.name.clone(),
        kind: e.kind,
        mode: e.stat.mode,
        mtime_ns: e.stat.mtime_ns,
        size,
        target,
    })
}

/// Builds folder nodes under `ents[i]` bottom-up (iteratively: deep trees cannot overflow the stack).
/// A skipped child keeps its entry from the previous snapshot (`prev`), if it had one.
fn build_subtree(
    w: &mut Writer<'_>,
    ents: &mut [Ent],
    i: usize,
    prev: &mut PrevTree,
) -> Result<()> {
    if ents[i].kind != EntryKind::Dir || ents[i].skipped {
        return Ok(());
    }
    // Post-order over folders.
    let mut order = Vec::new();
    let mut stack = vec![i];
    while let Some(d) = stack.pop() {
        order.push(d);
        for &c in &ents[d].children {
            if ents[c].kind == EntryKind::Dir && !ents[c].skipped {
                stack.push(c);
            }
        }
    }
    for &d in order.iter().rev() {
        let mut entries: Vec<DirEntry> = ents[d]
            .children
            .iter()
            .filter_map(|&c| to_dir_entry(&ents[c]))
            .collect();
        for &c in &ents[d].children {
            if ents[c].skipped {
                entries.extend(prev.entry(w.store, &ents[c].rel)?);
            }
        }
        // Stable: what was scanned comes before a carried entry of the same name and wins.
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        let id = build_dir(entries, &mut |id, b| w.put_node(id, b))?;
        ents[d].node = Some(id);
        if w.batch.bytes > (4 << 20) {
            w.flush()?;
        }
    }
    Ok(())
}

/// Replaces (or removes, when `new` is `None`) the entry at `comps` under folder `dir`; returns the
/// new folder id. Folders along the way that are new get their metadata from disk.
fn splice(
    w: &mut Writer<'_>,
    share: &Path,
    dir: Option<NodeId>,
    comps: &[Vec<u8>],
    prefix: PathBuf,
    new: Option<DirEntry>,
) -> Result<NodeId> {
    let mut entries = match dir {
        Some(d) => w.store.dir_entries(d)?,
        None => Vec::new(),
    };
    let name = &comps[0];
    let pos = entries.binary_search_by(|e| e.name.as_slice().cmp(name));
    if comps.len() == 1 {
        match (pos, new) {
            (Ok(p), Some(n)) => entries[p] = n,
            (Err(p), Some(n)) => entries.insert(p, n),
            (Ok(p), None) => {
                entries.remove(p);
            }
            (Err(_), None) => {}
        }
    } else {
        let here = prefix.join(std::ffi::OsStr::from_bytes(name));
        let old = pos.ok().map(|p| entries[p].clone());
        let child_dir = old.as_ref().and_then(|e| match (&e.kind, &e.target) {
            (EntryKind::Dir, Target::Node(id)) => Some(*id),
            _ => None,
        });
        let id = splice(w, share, child_dir, &comps[1..], here.clone(), new)?;
        let (mode, mtime_ns) = match fs::symlink_metadata(share.join(&here)) {
            Ok(m) if m.is_dir() => (
                m.mode() & 0o7777,
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ),
            _ => old
                .as_ref()
                .map(|e| (e.mode, e.mtime_ns))
                .unwrap_or((0o755, 0)),
        };
        let e = DirEntry {
            name: name.clone(),
            kind: EntryKind::Dir,
            mode,
            mtime_ns,
            size: 0,
            target: Target::Node(id),
        };
        match pos {
            Ok(p) => entries[p] = e,
            Err(p) => entries.insert(p, e),
        }
    }
    build_dir(entries, &mut |id, b| w.put_node(id, b))
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

/// Reader thread: reads and cuts every job's file, sending batches of chunks.
///
/// Files are read straight into the batch buffer and cut in place ([`chunker::cut_ready`]): chunk
/// bytes are never copied on this thread, which is the serial stage of the pipeline. Only the
/// uncut tail of a file (at most `max` bytes) moves to the next buffer when a batch is sent.
/// Buffers are allocated zeroed once (`cap` bytes, recycled through `pool`); `fill` is how much of
/// one holds data.
fn read_files(
    store: &Store,
    jobs: Vec<Job>,
    sizes: chunker::ChunkSizes,
    tx: crossbeam_channel::Sender<ReadBatch>,
    pool: crossbeam_channel::Receiver<Vec<u8>>,
) {
    let cap = BATCH_BYTES + 2 * READ_BLOCK + 2 * sizes.max as usize + OVERLAP_MIN;
    let mut r = Reader {
        store,
        check: chunker::CutCheck::new(sizes),
        sizes,
        cap,
        rb: ReadBatch::default(),
        fill: 0,
        tx,
        pool,
    };
    r.rb.buf = r.fresh_buf();
    for (job, j) in jobs.iter().enumerate() {
        let mut attempt = 0;
        loop {
            match r.read_one(job, attempt, &j.abs, j.prev) {
                Err(()) => return, // receiver gone
                Ok(ReadOutcome::Ok(stat, racy)) => {
                    r.rb.items.push(Item::Done { job, stat, racy });
                    break;
                }
                Ok(ReadOutcome::Failed(reason)) => {
                    r.rb.items.push(Item::Failed {
                        job,
                        reason,
                        gone: false,
                    });
                    break;
                }
                Ok(ReadOutcome::Gone) => {
                    r.rb.items.push(Item::Failed {
                        job,
                        reason: String::new(),
                        gone: true,
                    });
                    break;
                }
                Ok(ReadOutcome::Changed) => {
                    attempt += 1;
                    if attempt > MAX_REREADS {
                        r.rb.items.push(Item::Failed {
                            job,
                            reason: "changed while being read".into(),
                            gone: false,
                        });
                        break;
                    }
                    r.rb.items.push(Item::Restart { job });
                }
            }
        }
        if (r.fill >= BATCH_BYTES || r.rb.items.len() >= 4096) && r.send(r.fill).is_err() {
            return;
        }
    }
    if !r.rb.items.is_empty() {
        let _ = r.tx.send(r.rb);
    }
}

enum ReadOutcome {
    /// Read whole: its stat, and whether its scan record must be marked racy.
    Ok(Stat, bool),
    Failed(String),
    Gone,
    Changed,
}

/// The reader thread's state: the batch being filled, `fill` bytes of its buffer in use.
struct Reader<'s> {
    store: &'s Store,
    check: chunker::CutCheck,
    sizes: chunker::ChunkSizes,
    cap: usize,
    rb: ReadBatch,
    fill: usize,
    tx: crossbeam_channel::Sender<ReadBatch>,
    pool: crossbeam_channel::Receiver<Vec<u8>>,
}

/// One chunk of a file's previous version: id, plain length, offset in that version.
#[derive(Debug, Clone, Copy)]
struct OldChunk {
    id: Hash,
    len: u64,
    off: u64,
}

/// The chunk entries of a stored file in order, read one chunk-list node at a time: memory is the
/// tree depth times the fan-out (at most 41 x 1024 entries), whatever the file size. A node that
/// is missing, corrupt or not where it belongs ends the list early (the reader then cuts the rest
/// with FastCDC, which is always correct).
struct OldChunks<'s> {
    store: &'s Store,
    /// The chunk-list nodes being walked, root first: level, entries, index of the next entry.
    stack: Vec<(u8, Vec<ChunkRef>, usize)>,
}

impl<'s> OldChunks<'s> {
    fn new(store: &'s Store, content: node::Content) -> OldChunks<'s> {
        let stack = match content {
            node::Content::Inline(e) => vec![(0, e, 0)],
            node::Content::Tree(root) => match store.read_node(root) {
                Ok(Node::ChunkList(c)) => vec![(c.level, c.entries, 0)],
                _ => Vec::new(),
            },
        };
        OldChunks { store, stack }
    }
}

impl Iterator for OldChunks<'_> {
    type Item = ChunkRef;

    fn next(&mut self) -> Option<ChunkRef> {
        loop {
            let (level, entries, i) = self.stack.last_mut()?;
            let Some(&e) = entries.get(*i) else {
                self.stack.pop();
                continue;
            };
            *i += 1;
            if *level == 0 {
                return Some(e);
            }
            let level = *level;
            match self.store.read_node(NodeId(e.id)) {
                Ok(Node::ChunkList(c)) if c.level + 1 == level => {
                    self.stack.push((c.level, c.entries, 0))
                }
                _ => {
                    self.stack.clear();
                    return None;
                }
            }
        }
    }
}

/// How a changed file's reader is cutting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// At a true cut where the previous version's next chunk (the front of the window) may be
    /// again: check it, take it if it is.
    Fast,
    /// Cutting with FastCDC and hashing each chunk to find it among the next old chunks.
    Resync,
    /// Cutting with FastCDC only (no old chunk left, or none found for [`RESYNC_LIMIT`] bytes).
    Plain,
}

/// A changed file's previous version, whose cuts its reader reuses where the file did not change.
///
/// At each true cut (the file's start, the end of every chunk emitted) `cursor` names the old
/// chunk that may come next. In [`Mode::Fast`] the reader takes the next old chunks as long as
/// [`chunker::CutCheck::keeps_cut`] says FastCDC would cut at their end and their bytes hash to
/// their id; their cut is then FastCDC's (see [`chunker::CutCheck`]). After a mismatch it cuts
/// with FastCDC ([`Mode::Resync`]) and looks each chunk's id up among the old chunks of the window
/// (up to [`REUSE_BEHIND`] before the cursor and the rest of [`REUSE_WINDOW`] after it): an
/// overwrite keeps offsets, an insertion or deletion shifts them, and a new chunk equal to an old
/// one says where the old list continues. In that order, it takes: the chunk's id at the old
/// offset the last alignment predicts (`shift`), an old chunk boundary where that alignment puts
/// the chunk's end (an overwrite keeps the alignment), or the id elsewhere (nearest to the
/// prediction) but only on probation: data often repeats (zero runs, copied blocks), so such a
/// jump is undone unless the next old chunk is there too. Emitted chunks are true cuts in every
/// mode: the window only decides where to look, never what is cut.
struct Reuse<'s> {
    old: OldChunks<'s>,
    /// Size of the previous version.
    old_size: u64,
    /// Offset of the next old chunk `old` yields.
    next_off: u64,
    /// Old chunks `base..base + win.len()` (sequence numbers in the old list).
    win: std::collections::VecDeque<OldChunk>,
    base: u64,
    /// The old chunk that may come next (`base <= cursor <= base + win.len()`).
    cursor: u64,
    /// Where each id of `win` is, ascending.
    index: HashMap<Hash, std::collections::VecDeque<u64>>,
    mode: Mode,
    /// Bytes cut in [`Mode::Resync`] since the last old chunk was found.
    unmatched: u64,
    /// Offset in the new file of the current true cut.
    new_off: u64,
    /// New offset minus old offset where the two lists were last aligned.
    shift: i64,
    /// `(cursor, shift)` before a jump on probation: restored if the jump is not confirmed.
    fallback: Option<(u64, i64)>,
    /// Old chunks to check at once in [`Mode::Fast`] (up to [`REUSE_GROUP`]).
    group: usize,
}

/// Old chunks the window keeps before the cursor, so that a resync can also go back (after an id
/// found more than once was taken at the wrong place).
const REUSE_BEHIND: u64 = 1024;

impl<'s> Reuse<'s> {
    /// The previous version `prev` (a file node), or `None` if it cannot be read.
    fn open(store: &'s Store, prev: NodeId) -> Option<Reuse<'s>> {
        let Ok(Node::File(f)) = store.read_node(prev) else {
            return None;
        };
        Some(Reuse {
            old: OldChunks::new(store, f.content),
            old_size: f.size,
            next_off: 0,
            win: std::collections::VecDeque::new(),
            base: 0,
            cursor: 0,
            index: HashMap::new(),
            mode: Mode::Fast,
            unmatched: 0,
            new_off: 0,
            shift: 0,
            fallback: None,
            group: 2,
        })
    }

    /// Drops old chunks more than [`REUSE_BEHIND`] before the cursor and tops the window up to
    /// [`REUSE_WINDOW`] entries.
    fn fill(&mut self) {
        let low = self
            .fallback
            .map_or(self.cursor, |(c, _)| c.min(self.cursor));
        while low - self.base > REUSE_BEHIND {
            let Some(e) = self.win.pop_front() else { break };
            if let Some(seqs) = self.index.get_mut(&e.id) {
                debug_assert_eq!(seqs.front(), Some(&self.base));
                seqs.pop_front();
                if seqs.is_empty() {
                    self.index.remove(&e.id);
                }
            }
            self.base += 1;
        }
        while self.win.len() < REUSE_WINDOW {
            let Some(e) = self.old.next() else { return };
            let seq = self.base + self.win.len() as u64;
            self.index.entry(e.id).or_default().push_back(seq);
            self.win.push_back(OldChunk {
                id: e.id,
                len: e.len,
                off: self.next_off,
            });
            self.next_off = self.next_off.saturating_add(e.len);
        }
    }

    /// The old chunks from the cursor on.
    fn ahead(&self) -> impl Iterator<Item = &OldChunk> {
        self.win.range((self.cursor - self.base) as usize..)
    }

    /// The old chunk at `seq` was found again as the new chunk of `len` bytes at `new_off`: the
    /// lists are aligned after it.
    fn take(&mut self, seq: u64, len: usize) {
        let c = self.win[(seq - self.base) as usize];
        self.cursor = seq + 1;
        self.shift = self.new_off as i64 - c.off as i64;
        self.new_off += len as u64;
    }

    /// An old chunk was taken in [`Mode::Fast`]: the alignment is confirmed.
    fn confirmed(&mut self) {
        self.fallback = None;
        self.unmatched = 0;
    }

    /// The old chunk at the cursor is not next: look for the old list (undoing a jump on
    /// probation).
    fn reject(&mut self) {
        if let Some((cursor, shift)) = self.fallback.take() {
            self.cursor = cursor;
            self.shift = shift;
        }
        self.mode = Mode::Resync;
        self.group = 2;
    }

    /// Bytes from an old chunk's start to the previous version's end.
    fn rem_old(&self, c: &OldChunk) -> u64 {
        self.old_size.saturating_sub(c.off)
    }

    /// The old chunk of the window that starts at old offset `off`.
    fn starting_at(&self, off: i64) -> Option<u64> {
        let i = self.win.partition_point(|c| (c.off as i64) < off);
        (self.win.get(i)?.off as i64 == off).then_some(self.base + i as u64)
    }

    /// After a new chunk `id` of `len` bytes was cut at `new_off` with FastCDC: where the old list
    /// continues, if it can tell.
    fn found(&mut self, id: Hash, len: usize) {
        if self.mode == Mode::Fast {
            if self
                .ahead()
                .next()
                .is_some_and(|c| c.id == id && c.len == len as u64)
            {
                self.take(self.cursor, len);
                self.confirmed();
                return;
            }
            self.reject();
        }
        let expect = self.new_off as i64 - self.shift;
        let mut elsewhere = None;
        if let Some(seqs) = self.index.get(&id) {
            // The occurrence nearest to where the current alignment puts this chunk.
            let off = |seq: u64| self.win[(seq - self.base) as usize].off as i64;
            let i = seqs.partition_point(|&q| off(q) < expect);
            let nearest = [i.checked_sub(1), Some(i)]
                .into_iter()
                .flatten()
                .filter_map(|i| seqs.get(i).copied())
                .filter(|&q| self.win[(q - self.base) as usize].len == len as u64)
                .min_by_key(|&q| (off(q) - expect).unsigned_abs());
            if let Some(q) = nearest {
                if off(q) == expect {
                    self.take(q, len);
                    self.mode = Mode::Fast;
                    self.confirmed();
                    return;
                }
                elsewhere = Some(q);
            }
        }
        if let Some(q) = self.starting_at(expect + len as i64) {
            self.new_off += len as u64;
            self.cursor = q;
            self.mode = Mode::Fast;
        } else if let Some(q) = elsewhere {
            self.fallback = Some((self.cursor, self.shift));
            self.take(q, len);
            self.mode = Mode::Fast;
        } else {
            self.new_off += len as u64;
        }
        self.unmatched += len as u64;
    }
}

/// Hashes chunks `(start, len)` of `data`, on the rayon pool when there are several.
fn hash_chunks(data: &[u8], chunks: &[(usize, usize)]) -> Vec<Hash> {
    if chunks.len() <= 1 {
        return chunks
            .iter()
            .map(|&(s, l)| Hash::of(&data[s..s + l]))
            .collect();
    }
    chunks
        .par_iter()
        .map(|&(s, l)| Hash::of(&data[s..s + l]))
        .collect()
}

impl Reader<'_> {
    /// A buffer of `cap` bytes: a recycled one, else a new one.
    fn fresh_buf(&self) -> Vec<u8> {
        let mut b = self.pool.try_recv().unwrap_or_default();
        b.resize(self.cap, 0);
        b
    }

    /// Sends the current batch; the bytes from `keep` to `fill` (the uncut tail of the file being
    /// read) start the next buffer. `Err` when the receiver is gone.
    fn send(&mut self, keep: usize) -> std::result::Result<(), ()> {
        let mut buf = self.fresh_buf();
        let tail = self.fill - keep;
        buf[..tail].copy_from_slice(&self.rb.buf[keep..self.fill]);
        let full = std::mem::replace(
            &mut self.rb,
            ReadBatch {
                buf,
                items: Vec::new(),
                bytes_read: 0,
            },
        );
        self.fill = tail;
        self.tx.send(full).map_err(|_| ())
    }

    /// Reads one file into the batch buffer(s), adding an item per chunk. `prev`: the file node of
    /// its previous version, whose cuts may be reused.
    fn read_one(
        &mut self,
        job: usize,
        attempt: usize,
        path: &Path,
        prev: Option<NodeId>,
    ) -> std::result::Result<ReadOutcome, ()> {
        let started = now_ns();
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadOutcome::Gone),
            Err(e) => return Ok(ReadOutcome::Failed(one_line(&e.to_string()))),
        };
        let before = match f.metadata() {
            Ok(m) if m.is_file() => Stat::of(&m),
            Ok(_) => return Ok(ReadOutcome::Failed("no longer a regular file".into())),
            Err(e) => return Ok(ReadOutcome::Failed(one_line(&e.to_string()))),
        };
        // A file of one chunk has nothing to gain from its previous cuts.
        let mut reuse = prev
            .filter(|_| before.size > u64::from(self.sizes.max))
            .and_then(|p| Reuse::open(self.store, p));
        // This file's uncut bytes are `pend..fill` of the buffer, and `pend` is a true cut.
        // Invariant before each read: `pend < BATCH_BYTES` and `fill - pend < max + READ_BLOCK +
        // OVERLAP_MIN` (`fill - pend <= max` after a cut, plus the block read beside it; or less
        // than OVERLAP_MIN left uncut, plus a block), so a block always fits (`cap`).
        let mut pend = self.fill;
        let mut total = 0u64;
        let outcome = loop {
            // The bytes read so far are cut while the next block is read, on the rayon pool: the
            // copy out of the page cache and the hashing of reused chunks overlap. Small pending
            // stretches (a small file, the end of one) are cut after the read, without waking
            // the pool.
            let mut buf = std::mem::take(&mut self.rb.buf);
            let (head, tail) = buf.split_at_mut(self.fill);
            let block = &mut tail[..READ_BLOCK];
            let read = |f: &mut File, block: &mut [u8]| loop {
                match f.read(block) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            };
            let res = if head.len() - pend >= OVERLAP_MIN {
                let (res, p) = rayon::join(
                    || read(&mut f, block),
                    || self.cut(head, job, pend, &mut reuse, false),
                );
                pend = p;
                res
            } else {
                read(&mut f, block)
            };
            self.rb.buf = buf;
            let n = match res {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) => break Some(ReadOutcome::Failed(one_line(&e.to_string()))),
            };
            if total == 0 {
                if let Some(h) = *READ_HOOK.read().expect("hook lock") {
                    h(path, attempt);
                }
            }
            total += n as u64;
            self.rb.bytes_read += n as u64;
            self.fill += n;
            if pend >= BATCH_BYTES {
                self.send(pend)?;
                pend = 0;
            }
        };
        if let Some(failed) = outcome {
            // Uncut bytes of a file that will not be stored.
            self.fill = pend;
            return Ok(failed);
        }
        let buf = std::mem::take(&mut self.rb.buf);
        let end = self.cut(&buf[..self.fill], job, pend, &mut reuse, true);
        self.rb.buf = buf;
        debug_assert_eq!(end, self.fill, "all cut at the end of the file");
        let after = match f.metadata() {
            Ok(m) => Stat::of(&m),
            Err(e) => return Ok(ReadOutcome::Failed(one_line(&e.to_string()))),
        };
        let path_now = fs::metadata(path).ok().map(|m| Stat::of(&m));
        if before != after || total != after.size || path_now != Some(after) {
            return Ok(ReadOutcome::Changed);
        }
        Ok(ReadOutcome::Ok(after, after.racy(started, now_ns())))
    }

    /// Cuts the file's pending bytes `pend..fill` (`pend` a true cut), adding an item per chunk
    /// whose end is certain (every chunk at the end of the file, `eof`); returns the new `pend`.
    /// Afterwards `fill - pend <= max`, and `pend == fill` at the end of the file.
    fn cut(
        &mut self,
        buf: &[u8],
        job: usize,
        mut pend: usize,
        reuse: &mut Option<Reuse<'_>>,
        eof: bool,
    ) -> usize {
        if let Some(ru) = reuse.as_mut() {
            loop {
                let again = match ru.mode {
                    Mode::Fast => self.cut_reused(buf, job, &mut pend, ru, eof),
                    Mode::Resync => self.cut_resync(buf, job, &mut pend, ru, eof),
                    Mode::Plain => break,
                };
                if !again {
                    return pend;
                }
            }
        }
        self.cut_plain(buf, job, pend, eof)
    }

    /// FastCDC only, the chunks' ids left to the hashing stage.
    fn cut_plain(&mut self, buf: &[u8], job: usize, pend: usize, eof: bool) -> usize {
        let items = &mut self.rb.items;
        let data = &buf[pend..];
        let mut push = |start: usize, len: usize| {
            items.push(Item::Chunk {
                job,
                start: pend + start,
                len,
                known: Known::No,
            })
        };
        if eof {
            let mut start = 0;
            for len in chunker::cut_all(data, self.sizes) {
                push(start, len);
                start += len;
            }
            buf.len()
        } else {
            pend + chunker::cut_ready(data, self.sizes, push)
        }
    }

    /// [`Mode::Fast`]: takes the previous version's next chunks while they are there again. Returns
    /// whether to go on cutting (in another mode); `false` when more bytes are needed, or at the end
    /// of the file, all cut.
    fn cut_reused(
        &mut self,
        buf: &[u8],
        job: usize,
        pend: &mut usize,
        ru: &mut Reuse<'_>,
        eof: bool,
    ) -> bool {
        let max = self.sizes.max as usize;
        let data = &buf[*pend..];
        if data.is_empty() {
            return false;
        }
        ru.fill();
        if ru.ahead().next().is_none() {
            ru.mode = Mode::Plain;
            return true;
        }
        // The old chunks that may follow, as far as the bytes read decide: FastCDC's decision at
        // a chunk's end needs the byte after it, and the bytes left to the end of the file unless
        // more than `max` are (all such counts decide alike).
        let mut cands: Vec<(usize, usize)> = Vec::new();
        let mut off = 0;
        let mut need_bytes = false;
        let mut rejected = false;
        for c in ru.ahead() {
            let left = data.len() - off;
            if left == 0 {
                // At the end of the file: all cut. (Before it, `left > max` below.)
                break;
            }
            if !eof && left <= max {
                need_bytes = true;
                break;
            }
            let len = c.len as usize;
            if !self
                .check
                .keeps_cut(&data[off..], len, ru.rem_old(c), left as u64)
            {
                rejected = true;
                break;
            }
            cands.push((off, len));
            off += len;
            if cands.len() == ru.group {
                break;
            }
        }
        let ids = hash_chunks(data, &cands);
        let mut taken = 0;
        let mut end = 0;
        for (&(s, len), id) in cands.iter().zip(ids) {
            if ru.ahead().next().map(|c| c.id) != Some(id) {
                rejected = true;
                break;
            }
            self.rb.items.push(Item::Chunk {
                job,
                start: *pend + s,
                len,
                known: Known::Reused(ChunkId(id)),
            });
            ru.take(ru.cursor, len);
            taken += 1;
            end = s + len;
        }
        debug_assert!(taken == cands.len() || rejected);
        *pend += end;
        if taken > 0 {
            ru.confirmed();
        }
        if taken == ru.group {
            ru.group = (2 * ru.group).min(REUSE_GROUP);
        }
        if rejected {
            ru.reject();
            return true;
        }
        if need_bytes || *pend == buf.len() {
            return false;
        }
        // The next group; or the window ran out: top it up (or, at the old list's end, cut the
        // rest with FastCDC).
        true
    }

    /// [`Mode::Resync`]: cuts what is certain with FastCDC, hashes each chunk and looks for it among
    /// the next old chunks, stopping at the first found. Returns whether to go on cutting in
    /// another mode ([`Mode::Fast`] after an old chunk was found, or [`Mode::Plain`]); `false`
    /// when more bytes are needed, or at the end of the file, all cut.
    fn cut_resync(
        &mut self,
        buf: &[u8],
        job: usize,
        pend: &mut usize,
        ru: &mut Reuse<'_>,
        eof: bool,
    ) -> bool {
        loop {
            ru.fill();
            // Past the old list's end (an append, as far as the alignment says), nothing is left
            // to find.
            let past_end = ru.new_off as i64 - ru.shift >= ru.old_size as i64;
            if past_end || ru.ahead().next().is_none() || ru.unmatched > RESYNC_LIMIT {
                ru.mode = Mode::Plain;
                return true;
            }
            let data = &buf[*pend..];
            let mut cuts: Vec<(usize, usize)> = Vec::new();
            if ru.unmatched < RESYNC_BULK {
                cuts.extend(chunker::cut_first(data, self.sizes, eof).map(|l| (0, l)));
            } else if eof {
                let mut start = 0;
                for len in chunker::cut_all(data, self.sizes) {
                    cuts.push((start, len));
                    start += len;
                }
            } else {
                chunker::cut_ready(data, self.sizes, |s, l| cuts.push((s, l)));
            }
            if cuts.is_empty() {
                return false;
            }
            let ids = hash_chunks(data, &cuts);
            let mut end = 0;
            for (&(s, len), id) in cuts.iter().zip(ids) {
                self.rb.items.push(Item::Chunk {
                    job,
                    start: *pend + s,
                    len,
                    known: Known::Hashed(ChunkId(id)),
                });
                end = s + len;
                ru.found(id, len);
            }
            *pend += end;
            if ru.mode == Mode::Fast {
                return *pend < buf.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat() -> Stat {
        Stat {
            size: 123_456,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_001_000_000_001,
            ino: 987_654,
            mode: 0o4755,
        }
    }

    #[test]
    fn scan_records_keep_their_format() {
        let node = NodeId(Hash::of(b"node"));
        // A record as add wrote it before flags existed (and as checkout writes it).
        let mut old = Vec::new();
        old.extend_from_slice(&123_456u64.to_le_bytes());
        old.extend_from_slice(&1_700_000_000_123_456_789i64.to_le_bytes());
        old.extend_from_slice(&1_700_000_001_000_000_001i64.to_le_bytes());
        old.extend_from_slice(&987_654u64.to_le_bytes());
        old.extend_from_slice(&0o4755u32.to_le_bytes());
        old.extend_from_slice(node.as_bytes());
        assert_eq!(old.len(), 68);
        assert_eq!(stat().cache_bytes(node).to_vec(), old);
        assert_eq!(Stat::from_record(&old), Some((stat(), node, 0)));
        for flags in [REC_CUT_HERE, REC_RACY | REC_CUT_HERE, REC_RACY] {
            let b = stat().record_bytes(node, flags);
            assert_eq!(b.len(), 68, "gc keeps only 68-byte records");
            assert_eq!(Stat::from_record(&b), Some((stat(), node, flags)));
            // Checkout's view: the stat without the flags, and whether the record is racy.
            assert_eq!(
                Stat::from_cache_racy(&b),
                Some((stat(), node, flags & REC_RACY != 0))
            );
        }
        assert_eq!(Stat::from_record(&old[..67]), None);
    }

    #[test]
    fn racy_is_a_time_near_the_read() {
        let s = 1_000_000_000_000i64;
        let e = s + 5_000_000;
        let at = |m: i64, c: i64| Stat {
            mtime_ns: m,
            ctime_ns: c,
            ..stat()
        };
        let old = s - RACY_MARGIN_NS - 1;
        assert!(!at(old, old).racy(s, e));
        assert!(
            at(s - RACY_MARGIN_NS, old).racy(s, e),
            "mtime at the margin"
        );
        assert!(at(s - 1, old).racy(s, e), "mtime just before the read");
        assert!(at(e, e).racy(s, e), "changed during the read");
        // Only the mtime counts (see RACY_MARGIN_NS).
        assert!(!at(old, e).racy(s, e), "recent ctime, old mtime");
        // Far in the future (a clock set back, touch -d): a later write changes it anyway.
        assert!(!at(e + RACY_MARGIN_NS + 1, old).racy(s, e));
    }
}

/// More paths than this newly frozen by one add is reported ([`AddReport::newly_frozen`]): a
/// `.leftignore` rule that suddenly covers much of the share (a peer's `*`) is worth a warning.
pub const FROZEN_WARN: u64 = 100;

/// Meta key: how many paths the last add carried forward frozen, and how many of those it froze
/// anew when that number last changed (two u64 LE).
const FROZEN_KEY: &[u8] = b"frozen";

/// The `.leftignore` rules of the share as they are on disk now, for paths that the scan did not
/// see (deleted or ignored). One matcher per folder, read once.
struct Ignores {
    share: PathBuf,
    dirs: HashMap<PathBuf, Option<ignore::gitignore::Gitignore>>,
}

impl Ignores {
    fn new(share: &Path) -> Ignores {
        Ignores {
            share: share.to_path_buf(),
            dirs: HashMap::new(),
        }
    }

    fn matcher(&mut self, dir: &Path) -> Option<&ignore::gitignore::Gitignore> {
        if !self.dirs.contains_key(dir) {
            let abs = self.share.join(dir);
            let file = abs.join(".leftignore");
            let m = if file.is_file() {
                let mut b = ignore::gitignore::GitignoreBuilder::new(&abs);
                // A bad line is ignored here as the walker ignores it.
                let _ = b.add(&file);
                b.build().ok()
            } else {
                None
            };
            self.dirs.insert(dir.to_path_buf(), m);
        }
        self.dirs.get(dir).and_then(Option::as_ref)
    }

    /// Whether the scan's walker would leave `rel` out: it, or a folder above it, is matched by
    /// the deepest `.leftignore` rule that matches it (from the share root down), as ignored.
    fn ignored(&mut self, rel: &Path, is_dir: bool) -> bool {
        let comps: Vec<_> = rel.components().collect();
        let mut prefix = PathBuf::new();
        for (i, c) in comps.iter().enumerate() {
            prefix.push(c);
            let dir = i + 1 < comps.len() || is_dir;
            // The folders holding `prefix`, deepest first.
            let mut parent = prefix.parent().map(Path::to_path_buf);
            while let Some(d) = parent {
                let abs = self.share.join(&prefix);
                if let Some(m) = self.matcher(&d) {
                    match m.matched(&abs, dir) {
                        ignore::Match::Ignore(_) => return true,
                        ignore::Match::Whitelist(_) => break,
                        ignore::Match::None => {}
                    }
                }
                parent = d.parent().map(Path::to_path_buf);
            }
        }
        false
    }
}

/// Paths (files, links, empty folders) in the subtree of `e`.
fn count_paths(store: &Store, e: &DirEntry) -> Result<u64> {
    let (EntryKind::Dir, Target::Node(id)) = (&e.kind, &e.target) else {
        return Ok(1);
    };
    let mut n = 0u64;
    let mut stack = vec![*id];
    while let Some(d) = stack.pop() {
        let entries = store.dir_entries(d)?;
        if entries.is_empty() {
            n += 1;
        }
        for c in entries {
            match (&c.kind, &c.target) {
                (EntryKind::Dir, Target::Node(id)) => stack.push(*id),
                _ => n += 1,
            }
        }
    }
    Ok(n)
}

/// Frozen paths: an entry of the head's tree (`prev`) that the scan left out because a
/// `.leftignore` rule now covers it is carried forward as it is in the head (which holds the
/// peers' changes merged into it), so ignoring a tracked path never publishes a deletion, and
/// its local edits and deletions are not published either (`Store::forget` drops one on purpose).
/// Walks only the folders whose ids differ between `prev` and `new`. Returns the new folder id
/// (`None`: no folder, as `new`) and adds the frozen paths to `frozen`.
fn freeze(
    w: &mut Writer<'_>,
    ig: &mut Ignores,
    prev: NodeId,
    new: Option<NodeId>,
    rel: &Path,
    frozen: &mut u64,
) -> Result<Option<NodeId>> {
    if Some(prev) == new {
        return Ok(new);
    }
    let old = w.store.dir_entries(prev)?;
    let mut out = match new {
        Some(n) => w.store.dir_entries(n)?,
        None => Vec::new(),
    };
    let mut changed = false;
    for p in old {
        let path = rel.join(std::ffi::OsStr::from_bytes(&p.name));
        let is_dir = p.kind == EntryKind::Dir;
        let pdir = match (&p.kind, &p.target) {
            (EntryKind::Dir, Target::Node(id)) => Some(*id),
            _ => None,
        };
        match out.binary_search_by(|e| e.name.as_slice().cmp(&p.name)) {
            Ok(i) => {
                let ndir = match (&out[i].kind, &out[i].target) {
                    (EntryKind::Dir, Target::Node(id)) => Some(*id),
                    _ => None,
                };
                if let (Some(pd), Some(nd)) = (pdir, ndir) {
                    if pd != nd {
                        let id = freeze(w, ig, pd, Some(nd), &path, frozen)?.expect("a folder");
                        if id != nd {
                            out[i].target = Target::Node(id);
                            changed = true;
                        }
                    }
                }
            }
            Err(i) => {
                if ig.ignored(&path, is_dir) {
                    *frozen += count_paths(w.store, &p)?;
                    out.insert(i, p);
                    changed = true;
                } else if let Some(pd) = pdir {
                    // Deleted folder: what was ignored inside it stays.
                    if let Some(id) = freeze(w, ig, pd, None, &path, frozen)? {
                        let mut e = p;
                        e.target = Target::Node(id);
                        out.insert(i, e);
                        changed = true;
                    }
                }
            }
        }
    }
    if !changed {
        return Ok(new);
    }
    Ok(Some(build_dir(out, &mut |id, b| w.put_node(id, b))?))
}

impl Store {
    /// Paths the last `add` carried forward frozen (tracked, now covered by `.leftignore`).
    pub fn frozen_count(&self) -> Result<u64> {
        Ok(self.frozen_status()?.0)
    }

    /// ([`Store::frozen_count`], how many of them the add that last changed that count froze
    /// anew): `left status` warns while the second is over [`FROZEN_WARN`].
    pub fn frozen_status(&self) -> Result<(u64, u64)> {
        let v = self.db.get(cf::META, FROZEN_KEY)?.unwrap_or_default();
        let word = |i: usize| {
            v.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
        };
        Ok((word(0), word(1)))
    }

    fn set_frozen(&self, frozen: u64, newly: u64) -> Result<()> {
        let mut v = frozen.to_le_bytes().to_vec();
        v.extend_from_slice(&newly.to_le_bytes());
        let mut b = Batch::default();
        b.put(&self.db, cf::META, FROZEN_KEY, &v);
        self.db.write(b.inner, false)?;
        Ok(())
    }

    /// Drops `paths` (tracked paths now covered by `.leftignore`: frozen) from the head's tree on
    /// purpose: a new snapshot without them, so peers delete them; the files on disk stay. A path
    /// that is not in the head, or not ignored (the next add would record it again), is refused.
    /// Returns the new snapshot.
    pub fn forget(
        &self,
        share_root: &Path,
        paths: &[PathBuf],
        opts: &AddOptions,
    ) -> Result<NodeId> {
        self.writable()?;
        self.resume_checkout(share_root, &CheckoutOptions::default(), &NoProgress)?;
        let _g = self.op.read().expect("op lock");
        let share = fs::canonicalize(share_root).map_err(|e| Error::io(share_root, e))?;
        let head = self
            .head()?
            .ok_or_else(|| Error::not_found("no snapshot yet: nothing to forget"))?;
        if self.is_shallow(head)? {
            return Err(Error::NeedTree(head));
        }
        let head_snap = self.snapshot(head)?;
        let mut ig = Ignores::new(&share);
        let mut report = AddReport::default();
        let mut w = Writer {
            store: self,
            sink: None,
            batch: Batch::default(),
            written: HashSet::new(),
            report: &mut report,
        };
        let mut root = head_snap.root;
        let mut names = Vec::new();
        let mut forgotten = 0u64;
        for p in paths {
            let rel = if p.is_absolute() {
                normalize(p)
                    .strip_prefix(&share)
                    .map(Path::to_path_buf)
                    .map_err(|_| Error::PathOutsideShare { path: p.clone() })?
            } else {
                p.clone()
            };
            let comps =
                rel_components(&rel).map_err(|_| Error::PathOutsideShare { path: p.clone() })?;
            if comps.is_empty() {
                return Err(Error::Invalid(
                    "forget needs a path inside the share, not the share itself".into(),
                ));
            }
            let rel: PathBuf = comps
                .iter()
                .map(|c| std::ffi::OsStr::from_bytes(c))
                .collect();
            let e = self.lookup(root, &rel)?.ok_or_else(|| {
                Error::not_found(format!("{} is not in the snapshot", rel.display()))
            })?;
            if !ig.ignored(&rel, e.kind == EntryKind::Dir) {
                return Err(Error::Invalid(format!(
                    "{} is not ignored, so the next add would record it again: add it to \
                     .leftignore first (or delete it and run add)",
                    rel.display()
                )));
            }
            forgotten += count_paths(self, &e)?;
            root = splice(&mut w, &share, Some(root), &comps, PathBuf::new(), None)?;
            // The next path is looked up in the new tree.
            w.flush()?;
            names.push(rel.display().to_string());
        }
        w.flush()?;
        drop(w);
        let snap = Snapshot {
            root,
            parents: vec![head],
            device: opts.device,
            time_ns: opts
                .time_ns
                .unwrap_or_else(now_ns)
                .max(head_snap.time_ns + 1),
            message: if opts.message.is_empty() {
                one_line(&format!("forget {}", names.join(" ")))
                    .chars()
                    .take(4096)
                    .collect()
            } else {
                opts.message.clone()
            },
        };
        let (sid, bytes) = Node::Snapshot(snap).encode_with_id()?;
        let mut b = Batch::default();
        b.put(&self.db, cf::NODES, sid.as_bytes(), &bytes);
        b.put(&self.db, cf::COMPLETE, sid.as_bytes(), b"");
        self.db.write(b.inner, false)?;
        self.flush_after_add();
        let mut b = Batch::default();
        b.put(&self.db, cf::REFS, b"head", sid.as_bytes());
        self.db.write(b.inner, true)?;
        let (frozen, _) = self.frozen_status()?;
        self.set_frozen(frozen.saturating_sub(forgotten), 0)?;
        Ok(sid)
    }
}
