//! Staging: big new files written out while their chunks are fetched, so the checkout that
//! follows renames them into place ([`CheckoutOptions::staged`](crate::CheckoutOptions::staged)) instead of reading, decoding and verifying every chunk again
//! (for a fresh 1 GiB file that second pass was most of the checkout).
//!
//! The pull driver tells the [`Stager`] about every node it stores (in the order the engine walks
//! them, which is parents before children) and every chunk a reader task has verified, with its
//! plain bytes. A file node of at least [`STAGE_MIN`] bytes gets a stage file; its chunk-list
//! nodes, as they arrive, give each chunk's offsets in it; a verified chunk is written at every
//! offset still waiting for it, by a writer thread (a bounded queue of [`WRITE_QUEUE`] chunks),
//! so the reader tasks go on receiving and verifying while the file is written. A stage is complete when every chunk-list node beneath its file
//! node arrived and every byte of it was written; only complete stages are handed on
//! ([`StagedFiles`]). A chunk or chunk-list node the store already had never arrives, so a file
//! that shares content with what is stored (an update of a big file) stays incomplete and is
//! written by the checkout as before (copying unchanged ranges from the old file).
//!
//! Stage files live in `<store>/stage/<pid>-<n>/`; a new stager removes the folders of other
//! processes (a crash's leftovers), and [`StagedFiles`] removes its own when dropped.
//!
//! Memory is bounded by [`MAX_LOCATIONS`] chunk offsets awaited at once (~50 bytes each): a file
//! that would pass it is not staged. Nor is a file that would leave less than [`FREE_MARGIN`]
//! free on the store's file system once it and its chunks in the store are written (counting the
//! stages before it), so staging does not fill a disk the store writes to. Every list's entries
//! must add up to what its parent says (and a file's to its size): offsets come from them. Every write error just gives up that stage.

use crate::node::{Content, Node};
use crate::{ChunkId, NodeId, StagedFiles};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Smallest file staged: smaller ones gain little and would cost a file each.
pub const STAGE_MIN: u64 = 1 << 20;
/// Most chunk offsets awaited at once (over all stages).
pub const MAX_LOCATIONS: usize = 1 << 18;
/// Free space a stage must leave on the store's file system: staging never makes the fetch
/// itself (or anything else) run out of space.
pub const FREE_MARGIN: u64 = 256 << 20;

/// Chunks queued to the writer thread at most (each up to the largest chunk).
pub const WRITE_QUEUE: usize = 32;

/// See the module documentation. Shared by the pull loop and the reader tasks.
#[derive(Debug)]
pub struct Stager {
    inner: Mutex<Inner>,
}

/// One verified chunk for the writer thread: its bytes and the places they go.
struct WriteJob {
    plain: Vec<u8>,
    places: Vec<(Arc<File>, u64, Arc<Progress>)>,
}

/// What the writer thread did to a stage.
#[derive(Debug, Default)]
struct Progress {
    written: AtomicU64,
    failed: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    files: Vec<Stage>,
    by_node: HashMap<NodeId, usize>,
    /// Chunk-list node awaited → where it goes: stage, offset of its first byte, the bytes its
    /// entries must add up to, and its level (`None`: any, the root of a file's list).
    lists: HashMap<NodeId, Vec<Awaited>>,
    /// Chunk awaited → (stage, offset, length the list gives) of each place it goes.
    chunks: HashMap<ChunkId, Vec<(usize, u64, u64)>>,
    locations: usize,
    /// Bytes of the stages opened so far (their blocks are allocated as chunks arrive).
    reserved: u64,
    closed: bool,
    /// The writer thread's queue and handle: the file writes leave the reader tasks, which go
    /// on receiving and verifying.
    tx: Option<std::sync::mpsc::SyncSender<WriteJob>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// A chunk-list node awaited by a stage.
#[derive(Debug, Clone, Copy)]
struct Awaited {
    stage: usize,
    off: u64,
    len: u64,
    level: Option<u8>,
}

#[derive(Debug)]
struct Stage {
    node: NodeId,
    size: u64,
    path: PathBuf,
    file: Option<Arc<File>>,
    /// Chunk-list nodes beneath it not arrived yet.
    lists_pending: usize,
    /// Bytes written by the writer thread (each offset once), and whether a write failed.
    progress: Arc<Progress>,
    failed: bool,
}

impl Stager {
    /// A stager writing into a fresh folder beneath `<store_dir>/stage`. Folders other processes
    /// left there are removed first (only one process owns a store at a time, so they are what
    /// a crash left); this process's other stages are left alone.
    pub fn new(store_dir: &Path) -> std::io::Result<Stager> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let base = store_dir.join("stage");
        let pid = std::process::id();
        let mine = format!("{pid}-");
        if let Ok(rd) = std::fs::read_dir(&base) {
            for e in rd.flatten() {
                if !e.file_name().to_string_lossy().starts_with(&mine) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<WriteJob>(WRITE_QUEUE);
        let writer = std::thread::Builder::new()
            .name("left-stage".into())
            .spawn(move || {
                for job in rx {
                    for (f, off, p) in job.places {
                        match f.write_all_at(&job.plain, off) {
                            Ok(()) => {
                                p.written
                                    .fetch_add(job.plain.len() as u64, Ordering::Relaxed);
                            }
                            Err(_) => p.failed.store(true, Ordering::Relaxed),
                        }
                    }
                }
            })?;
        Ok(Stager {
            inner: Mutex::new(Inner {
                dir,
                files: Vec::new(),
                by_node: HashMap::new(),
                lists: HashMap::new(),
                chunks: HashMap::new(),
                locations: 0,
                reserved: 0,
                closed: false,
                tx: Some(tx),
                writer: Some(writer),
            }),
        })
    }

    /// A node was verified and stored: a big file node opens a stage; an awaited chunk-list node
    /// places its entries.
    pub fn node_stored(&self, id: NodeId, bytes: &[u8]) {
        let Ok(mut s) = self.inner.lock() else { return };
        if s.closed {
            return;
        }
        let is_list = s.lists.contains_key(&id);
        let Ok(node) = Node::decode(bytes) else {
            return;
        };
        match node {
            Node::File(f) if f.size >= STAGE_MIN && !s.by_node.contains_key(&id) => {
                // The store takes up to as much again for the same chunks while they arrive.
                let need = s
                    .reserved
                    .saturating_add(f.size.saturating_mul(2))
                    .saturating_add(FREE_MARGIN);
                if free_bytes(&s.dir).is_none_or(|free| free < need) {
                    return;
                }
                s.reserved += f.size.saturating_mul(2);
                let i = s.files.len();
                let path = s.dir.join(format!("{i}"));
                s.files.push(Stage {
                    node: id,
                    size: f.size,
                    path,
                    file: None,
                    lists_pending: 0,
                    progress: Arc::default(),
                    failed: false,
                });
                s.by_node.insert(id, i);
                match f.content {
                    Content::Inline(refs) => {
                        let total = refs.iter().try_fold(0u64, |t, e| t.checked_add(e.len));
                        if total == Some(f.size) {
                            s.place(i, 0, 0, &refs);
                        } else {
                            s.files[i].failed = true;
                        }
                    }
                    Content::Tree(root) => {
                        s.files[i].lists_pending += 1;
                        s.lists.entry(root).or_default().push(Awaited {
                            stage: i,
                            off: 0,
                            len: f.size,
                            level: None,
                        });
                    }
                }
            }
            Node::ChunkList(l) if is_list => {
                // The list must cover exactly the bytes its parent says (and sit at the level
                // below it): offsets come from these lengths, so a tree that lies about them
                // would otherwise leave bytes unwritten in a stage that looks complete.
                let total = l.entries.iter().try_fold(0u64, |t, e| t.checked_add(e.len));
                for a in s.lists.remove(&id).unwrap_or_default() {
                    s.files[a.stage].lists_pending -= 1;
                    if total != Some(a.len) || a.level.is_some_and(|v| v != l.level) {
                        s.files[a.stage].failed = true;
                        continue;
                    }
                    s.place(a.stage, a.off, l.level, &l.entries);
                }
            }
            _ => {}
        }
    }

    /// A chunk's plain bytes were verified against its id: written wherever a stage awaits it.
    pub fn chunk_verified(&self, id: &ChunkId, plain: &[u8]) {
        let (job, tx) = {
            let Ok(mut s) = self.inner.lock() else { return };
            if s.closed {
                return;
            }
            let Some(places) = s.chunks.remove(id) else {
                return;
            };
            s.locations -= places.len();
            let places: Vec<_> = places
                .into_iter()
                .filter_map(|(i, off, len)| s.place_write(i, off, len, plain.len()))
                .collect();
            let Some(tx) = s.tx.clone() else { return };
            if places.is_empty() {
                return;
            }
            (
                WriteJob {
                    plain: plain.to_vec(),
                    places,
                },
                tx,
            )
        };
        // Outside the lock: a full queue holds this reader back (the memory bound), not others.
        let _ = tx.send(job);
    }

    /// Ends staging: the complete stages, to hand to the checkout; the rest are deleted.
    pub fn finish(&self) -> StagedFiles {
        let mut done = HashMap::new();
        let lock = || match self.inner.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let writer = {
            let mut s = lock();
            s.closed = true;
            s.lists.clear();
            s.chunks.clear();
            s.tx = None;
            s.writer.take()
        };
        // Every queued write lands before the stages are judged (the queue ends once the last
        // reader's send returned).
        if let Some(w) = writer {
            let _ = w.join();
        }
        let mut s = lock();
        for st in s.files.iter_mut() {
            let file = st.file.take();
            let written = st.progress.written.load(Ordering::Relaxed);
            let complete = !st.failed
                && !st.progress.failed.load(Ordering::Relaxed)
                && st.lists_pending == 0
                && written == st.size;
            if complete && file.is_some() {
                done.insert(st.node, (st.path.clone(), st.size));
            } else if file.is_some() {
                let _ = std::fs::remove_file(&st.path);
            }
        }
        StagedFiles::new(s.dir.clone(), done)
    }
}

/// Bytes available to us on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl Inner {
    /// Entries of a chunk list (or a file node's inline list, `level` 0) starting at `off` of
    /// stage `i`: chunks await their bytes, child lists their node.
    fn place(&mut self, i: usize, mut off: u64, level: u8, entries: &[crate::node::ChunkRef]) {
        if self.files[i].failed {
            return;
        }
        if self.locations + entries.len() > MAX_LOCATIONS {
            self.files[i].failed = true;
            return;
        }
        for e in entries {
            if level == 0 {
                self.chunks
                    .entry(ChunkId(e.id))
                    .or_default()
                    .push((i, off, e.len));
                self.locations += 1;
            } else {
                self.files[i].lists_pending += 1;
                self.lists.entry(NodeId(e.id)).or_default().push(Awaited {
                    stage: i,
                    off,
                    len: e.len,
                    level: Some(level - 1),
                });
            }
            off = off.saturating_add(e.len);
        }
    }

    /// A verified chunk of `n` bytes goes at `off` of stage `i`, where the list says `len` bytes
    /// go: the place for the writer thread (opening the stage file first). A chunk of another
    /// length (a tree that lies about lengths) gives the stage up: with every length checked,
    /// the places never overlap, so `written == size` means every byte is there.
    fn place_write(
        &mut self,
        i: usize,
        off: u64,
        len: u64,
        n: usize,
    ) -> Option<(Arc<File>, u64, Arc<Progress>)> {
        let st = &mut self.files[i];
        if st.failed || n as u64 != len || off.saturating_add(len) > st.size {
            st.failed = true;
            return None;
        }
        if st.file.is_none() {
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&st.path)
                .and_then(|f| f.set_len(st.size).map(|_| f));
            match f {
                Ok(f) => st.file = Some(Arc::new(f)),
                Err(_) => {
                    st.failed = true;
                    return None;
                }
            }
        }
        let f = st.file.clone().expect("opened above");
        Some((f, off, st.progress.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{ChunkListNode, ChunkRef, FileNode};
    use crate::Hash;

    fn chunk(seed: u8, len: usize) -> (ChunkId, Vec<u8>) {
        let b: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        (ChunkId(Hash::of(&b)), b)
    }

    fn cref(c: &(ChunkId, Vec<u8>)) -> ChunkRef {
        ChunkRef {
            id: c.0 .0,
            len: c.1.len() as u64,
        }
    }

    fn file(content: Content, size: u64) -> (NodeId, Vec<u8>) {
        Node::File(FileNode {
            size,
            mode: 0o644,
            mtime_ns: 1,
            content,
        })
        .encode_with_id()
        .unwrap()
    }

    fn list(level: u8, entries: Vec<ChunkRef>) -> (NodeId, Vec<u8>) {
        Node::ChunkList(ChunkListNode { level, entries })
            .encode_with_id()
            .unwrap()
    }

    fn staged_bytes(s: &StagedFiles, id: NodeId) -> Option<Vec<u8>> {
        s.take(id).map(|(p, _)| std::fs::read(p).unwrap())
    }

    /// Inline chunks, one of them twice in the file, arriving out of order and twice (an endgame
    /// duplicate): the stage holds exactly the file's bytes.
    #[test]
    fn inline_file_staged_whole() {
        let t = tempfile::tempdir().unwrap();
        let st = Stager::new(t.path()).unwrap();
        let (a, b) = (chunk(1, 400_000), chunk(2, 350_000));
        let refs = vec![cref(&a), cref(&b), cref(&a)];
        let size = 1_150_000;
        let (id, bytes) = file(Content::Inline(refs), size);
        st.node_stored(id, &bytes);
        st.chunk_verified(&b.0, &b.1);
        st.chunk_verified(&a.0, &a.1);
        st.chunk_verified(&a.0, &a.1);
        let staged = st.finish();
        let want = [a.1.clone(), b.1.clone(), a.1.clone()].concat();
        assert_eq!(staged_bytes(&staged, id), Some(want));
        let dir = t.path().join("stage");
        assert!(std::fs::read_dir(&dir).unwrap().next().is_some());
        drop(staged);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "folder removed"
        );
    }

    /// A two-level chunk-list tree: offsets come from the lists as they arrive.
    #[test]
    fn tree_file_staged_whole() {
        let t = tempfile::tempdir().unwrap();
        let st = Stager::new(t.path()).unwrap();
        let cs: Vec<_> = (0..6).map(|i| chunk(i, 200_000 + i as usize)).collect();
        let (l1, l1b) = list(0, cs[..3].iter().map(cref).collect());
        let (l2, l2b) = list(0, cs[3..].iter().map(cref).collect());
        let n1: u64 = cs[..3].iter().map(|c| c.1.len() as u64).sum();
        let n2: u64 = cs[3..].iter().map(|c| c.1.len() as u64).sum();
        let (root, rootb) = list(
            1,
            vec![
                ChunkRef { id: l1.0, len: n1 },
                ChunkRef { id: l2.0, len: n2 },
            ],
        );
        let (id, bytes) = file(Content::Tree(root), n1 + n2);
        st.node_stored(id, &bytes);
        st.node_stored(root, &rootb);
        st.node_stored(l2, &l2b);
        for c in cs[3..].iter().rev() {
            st.chunk_verified(&c.0, &c.1);
        }
        st.node_stored(l1, &l1b);
        for c in &cs[..3] {
            st.chunk_verified(&c.0, &c.1);
        }
        let staged = st.finish();
        let want: Vec<u8> = cs.iter().flat_map(|c| c.1.clone()).collect();
        assert_eq!(staged_bytes(&staged, id), Some(want));
    }

    /// What is never complete is not handed on: a chunk that never arrived (the store had it), a
    /// chunk-list node that never arrived, a chunk whose length is not the one the list gives, a
    /// small file.
    #[test]
    fn incomplete_stages_are_dropped() {
        let t = tempfile::tempdir().unwrap();
        let st = Stager::new(t.path()).unwrap();
        let (a, b) = (chunk(1, 600_000), chunk(2, 600_000));
        // A chunk missing.
        let (f1, f1b) = file(Content::Inline(vec![cref(&a), cref(&b)]), 1_200_000);
        // A list node missing.
        let (l, _) = list(0, vec![cref(&a), cref(&b)]);
        let (f2, f2b) = file(Content::Tree(l), 1_200_000);
        // The list lies about a length (and the size agrees with the lie).
        let c = chunk(3, 700_000);
        let lie = ChunkRef {
            id: c.0 .0,
            len: 600_000,
        };
        let (f3, f3b) = file(Content::Inline(vec![cref(&a), lie]), 1_200_000);
        // Small.
        let (f4, f4b) = file(
            Content::Inline(vec![ChunkRef {
                id: a.0 .0,
                len: 1000,
            }]),
            1000,
        );
        for (id, b) in [(f1, &f1b), (f2, &f2b), (f3, &f3b), (f4, &f4b)] {
            st.node_stored(id, b);
        }
        st.chunk_verified(&a.0, &a.1);
        st.chunk_verified(&c.0, &c.1);
        let staged = st.finish();
        assert!(staged.is_empty(), "{staged:?}");
        let dir = std::fs::read_dir(t.path().join("stage"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0, "files removed");
    }

    /// A tree whose interior lengths lie (a list placed where its parent says it covers 0 bytes,
    /// then 2X) would place the same chunk at offset 0 twice and count the file complete with
    /// X bytes never written: the lengths are checked against each list as it arrives.
    #[test]
    fn interior_lengths_that_lie_fail_the_stage() {
        let t = tempfile::tempdir().unwrap();
        let st = Stager::new(t.path()).unwrap();
        let c = chunk(5, 1 << 20);
        let x = c.1.len() as u64;
        let (l, lb) = list(0, vec![cref(&c)]);
        let (root, rootb) = list(
            1,
            vec![
                ChunkRef { id: l.0, len: 0 },
                ChunkRef {
                    id: l.0,
                    len: 2 * x,
                },
            ],
        );
        let (id, bytes) = file(Content::Tree(root), 2 * x);
        st.node_stored(id, &bytes);
        st.node_stored(root, &rootb);
        st.node_stored(l, &lb);
        st.chunk_verified(&c.0, &c.1);
        assert!(st.finish().is_empty());
        // A level-0 list where a level-1 one belongs fails too.
        let st = Stager::new(t.path()).unwrap();
        let (root2, root2b) = list(2, vec![ChunkRef { id: l.0, len: x }]);
        let (id2, bytes2) = file(Content::Tree(root2), x);
        st.node_stored(id2, &bytes2);
        st.node_stored(root2, &root2b);
        st.node_stored(l, &lb);
        st.chunk_verified(&c.0, &c.1);
        assert!(st.finish().is_empty());
    }

    /// A crash's leftovers (another process's folder) go; this process's other stages stay.
    #[test]
    fn leftovers_of_other_processes_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let old = t.path().join("stage/4000000000-0");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("0"), b"left by a crash").unwrap();
        let first = Stager::new(t.path()).unwrap();
        assert!(!old.exists());
        let a = chunk(1, 1 << 20);
        let (id, b) = file(Content::Inline(vec![cref(&a)]), 1 << 20);
        first.node_stored(id, &b);
        first.chunk_verified(&a.0, &a.1);
        let staged = first.finish();
        let _second = Stager::new(t.path()).unwrap();
        assert_eq!(staged_bytes(&staged, id), Some(a.1.clone()));
    }

    /// Files past the location budget are not staged; nothing after `finish` writes.
    #[test]
    fn budget_and_close() {
        let t = tempfile::tempdir().unwrap();
        let st = Stager::new(t.path()).unwrap();
        let a = chunk(1, 16);
        // One list of 1000 chunks, 300 times: 300,000 places.
        let (l, lb) = list(0, vec![cref(&a); 1000]);
        let (root, rootb) = list(
            1,
            vec![
                ChunkRef {
                    id: l.0,
                    len: 16_000
                };
                300
            ],
        );
        let (big, bigb) = file(Content::Tree(root), 300 * 16_000);
        const { assert!(300 * 1000 > MAX_LOCATIONS) };
        st.node_stored(big, &bigb);
        st.node_stored(root, &rootb);
        st.node_stored(l, &lb);
        st.chunk_verified(&a.0, &a.1);
        let b = chunk(2, 2 << 20);
        let (f, fb) = file(Content::Inline(vec![cref(&b)]), 2 << 20);
        st.node_stored(f, &fb);
        let staged = st.finish();
        st.chunk_verified(&b.0, &b.1);
        assert!(staged.is_empty());
    }
}
