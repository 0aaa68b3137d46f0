//! Cut reuse: a changed file's reader takes its previous version's chunks again where the file did
//! not change, checked by [`chunker::CutCheck`] and BLAKE3, and finds where the old chunk list
//! continues after a change ([`Reuse`], a bounded window of old chunks).
//!
//! The chunks emitted are always exactly those of a full FastCDC pass: the window only decides
//! where to look, never what is cut. It is not the plain FastCDC cutting (`reader`) nor the
//! hashing of new chunks (`pipeline`).

use super::pipeline::{Item, Known};
use super::reader::Reader;
use crate::node::{self, ChunkRef, Node};
use crate::{chunker, ChunkId, Hash, NodeId, Store};
use rayon::prelude::*;
use std::collections::HashMap;

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
pub(super) enum Mode {
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
pub(super) struct Reuse<'s> {
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
    pub(super) mode: Mode,
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
    pub(super) fn open(store: &'s Store, prev: NodeId) -> Option<Reuse<'s>> {
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
    /// [`Mode::Fast`]: takes the previous version's next chunks while they are there again. Returns
    /// whether to go on cutting (in another mode); `false` when more bytes are needed, or at the end
    /// of the file, all cut.
    pub(super) fn cut_reused(
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
    pub(super) fn cut_resync(
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
