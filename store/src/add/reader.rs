//! The reader thread of an add: reads each job's file into the batch buffer and cuts it in place.
//!
//! One file at a time ([`Reader::read_one`]): 1 MiB blocks straight into the ~4 MiB batch buffer,
//! cutting what was read before on the rayon pool while the next block is read; the stat before and
//! after the read decides whether the file changed meanwhile (read again, at most [`MAX_REREADS`]
//! more times, then skipped with a reason) and whether its scan record is racy. The test hook
//! ([`ReadHook`]) runs after the first block of each attempt.
//!
//! It is not the reuse of old cuts (see `reuse`, which adds the [`Mode::Fast`] and
//! [`Mode::Resync`] cutting to [`Reader`]) and writes nothing to the store.

use super::one_line;
use super::pipeline::{Item, Job, Known, ReadBatch, BATCH_BYTES, OVERLAP_MIN, READ_BLOCK};
use super::reuse::{Mode, Reuse};
use crate::chunker;
use crate::scan::Stat;
use crate::store::now_ns;
use crate::{NodeId, Store};
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

const MAX_REREADS: usize = 3;

/// Test hook: called by the reader thread after the first block of each read attempt of a file,
/// with the file's path and the attempt number (0 = first read).
#[doc(hidden)]
pub type ReadHook = fn(&Path, usize);

static READ_HOOK: std::sync::RwLock<Option<ReadHook>> = std::sync::RwLock::new(None);

/// Installs (or removes) the process-wide [`ReadHook`] (tests only).
#[doc(hidden)]
pub fn debug_set_read_hook(hook: Option<ReadHook>) {
    *READ_HOOK.write().expect("hook lock") = hook;
}

/// Reader thread: reads and cuts every job's file, sending batches of chunks.
///
/// Files are read straight into the batch buffer and cut in place ([`chunker::cut_ready`]): chunk
/// bytes are never copied on this thread, which is the serial stage of the pipeline. Only the
/// uncut tail of a file (at most `max` bytes) moves to the next buffer when a batch is sent.
/// Buffers are allocated zeroed once (`cap` bytes, recycled through `pool`); `fill` is how much of
/// one holds data.
pub(super) fn read_files(
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
pub(super) struct Reader<'s> {
    pub(super) store: &'s Store,
    pub(super) check: chunker::CutCheck,
    pub(super) sizes: chunker::ChunkSizes,
    pub(super) cap: usize,
    pub(super) rb: ReadBatch,
    pub(super) fill: usize,
    pub(super) tx: crossbeam_channel::Sender<ReadBatch>,
    pub(super) pool: crossbeam_channel::Receiver<Vec<u8>>,
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
}
