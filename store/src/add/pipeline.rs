//! The pipeline of one add: the bounded queues between the reader thread, the hashing stage and
//! the calling thread, and what travels on them.
//!
//! [`Store::run_pipeline`] starts a reader thread ([`super::reader`]), a hashing thread (BLAKE3,
//! the chunk-index check and zstd of a batch's new chunks on the rayon pool) and a writer thread
//! (RocksDB batches), and turns each hashed batch into chunk, chunk-list, file-node and scan-record
//! puts on the calling thread. Every queue holds one or two batches, so memory stays bounded (about
//! six batches of ~4 MiB in flight) whatever the file sizes.
//!
//! It is not the reading or the cutting (see `reader` and `reuse`) and decides nothing about the
//! tree.

use super::reader::read_files;
use super::writer::{Writer, WRITE_BATCH_CAP};
use super::{AddStats, Ent};
use crate::codec::Encoder;
use crate::db::{cf, Batch};
use crate::node::{ChunkRef, ContentBuilder};
use crate::scan::{Stat, REC_CUT_HERE, REC_RACY};
use crate::{AddReport, ChunkId, Error, Hash, NodeId, Progress, Result, Skipped, Store};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub(super) const READ_BLOCK: usize = 1 << 20;
pub(super) const BATCH_BYTES: usize = 4 << 20;
/// Uncut bytes below this are cut after the next read instead of beside it (see `read_one`).
pub(super) const OVERLAP_MIN: usize = 256 << 10;

/// What the reader already knows of a chunk's id.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    /// Nothing: the hashing stage hashes it.
    No,
    /// A chunk of the file's previous version, found again (hashed by the reader): already stored.
    Reused(ChunkId),
    /// Cut by FastCDC and hashed by the reader while looking for the previous version's chunks.
    Hashed(ChunkId),
}

pub(super) enum Item {
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
pub(super) struct ReadBatch {
    pub(super) buf: Vec<u8>,
    pub(super) items: Vec<Item>,
    pub(super) bytes_read: u64,
}

pub(super) struct Job {
    pub(super) ent: usize,
    pub(super) abs: PathBuf,
    /// The file node of the file's previous version, cut by this store and complete, whose cuts
    /// the reader may reuse.
    pub(super) prev: Option<NodeId>,
}

/// A chunk after the hashing stage: its id, and its encoding unless the store already has it.
type Hashed = Result<(ChunkId, Option<Vec<u8>>)>;

thread_local! {
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::new());
}

impl Store {
    pub(super) fn run_pipeline(
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
