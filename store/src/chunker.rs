//! Content-defined chunking with FastCDC v2020.
//!
//! The `fastcdc` crate is pinned to an exact version (`=5.0.0`) because chunk ids follow cut points:
//! a release that moved cut points would silently change every chunk id and lose deduplication
//! against existing stores. The golden vectors in this module's tests fail if that ever happens.
//!
//! [`Chunker`] cuts a stream fed in blocks of any size, producing the same cut points as one pass
//! over the whole input (a chunk is only emitted once the bytes after it are known, except at the
//! end of the stream). It does not hash or compress; see [`crate::codec`].
//!
//! [`CutCheck`] decides, without scanning a chunk, whether FastCDC would cut a changed stream where
//! it cut the previous version: `add` uses it to keep the cuts of a changed file's unchanged parts
//! (see its documentation for the argument).

use crate::error::{Error, Result};
use fastcdc::v2020::{FastCDC, Normalization};

/// Chunk size limits (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    /// Minimum chunk size.
    pub min: u32,
    /// Target average chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
}

impl ChunkSizes {
    /// Checks the sizes against what FastCDC v2020 accepts.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "invalid chunk sizes min {} avg {} max {}",
                self.min, self.avg, self.max
            )))
        }
    }
}

/// Cuts `data` as one whole input; returns chunk lengths in order.
pub fn cut_all(data: &[u8], sizes: ChunkSizes) -> Vec<usize> {
    if data.is_empty() {
        return Vec::new();
    }
    FastCDC::with_level(
        data,
        sizes.min as usize,
        sizes.avg as usize,
        sizes.max as usize,
        Normalization::Level1,
    )
    .map(|c| c.length)
    .collect()
}

/// Cuts the chunks of `pending` (the bytes of a stream after its last cut) whose end is certain:
/// those cut with at least `max` bytes ahead, the same cuts as one pass over the whole stream.
/// Calls `emit(start, len)` for each, in order, and returns the bytes consumed; the rest stays
/// pending until more of the stream is known, or [`cut_all`] at its end. For callers that keep the
/// stream in their own buffer (no copy), like `add`'s reader; [`Chunker`] is the owning form.
pub fn cut_ready(pending: &[u8], sizes: ChunkSizes, mut emit: impl FnMut(usize, usize)) -> usize {
    let max = sizes.max as usize;
    let len = pending.len();
    if len < max {
        return 0;
    }
    let cdc = FastCDC::with_level(
        pending,
        sizes.min as usize,
        sizes.avg as usize,
        max,
        Normalization::Level1,
    );
    let mut pos = 0;
    // Only a cut found with at least `max` bytes ahead is final.
    while len - pos >= max {
        let (_, end) = cdc.cut(pos, len - pos);
        emit(pos, end - pos);
        pos = end;
    }
    pos
}

/// FastCDC v2020's cut decision at one position, computed from the 64 bytes before it: what lets
/// `add` keep the cuts of a file's previous version instead of scanning the unchanged parts again.
///
/// # How FastCDC v2020 (fastcdc 5.0.0, `cut_gear`) cuts one chunk
///
/// Called with the `rem` bytes from a chunk start `p` to the end of the stream: if `rem <= min` the
/// chunk is all of them. Otherwise `R = min(rem, max)`, `center = avg` (or `rem` when `rem < avg`;
/// normalization level 1 picks the strict mask `mask_s` below `center`, the loose `mask_l` from
/// it), and the gear hash restarts at 0 at offset `min`. Bytes are taken in pairs (pair `i` = offsets
/// `2i`, `2i + 1`) for `i` from `min / 2` while `i < R / 2`; the hash after offset `j` is
/// `H(j) = sum over min <= k <= j of gear[b(k)] << (j - k)` (wrapping; `GEAR_LS` is `GEAR << 1`, so
/// the two steps of a pair are this sum), and the chunk ends at the first *tested* offset `j` with
/// `H(j) & mask == 0` (tested as `(H << 1) & (mask << 1)` at even `j`), the mask being `mask_s` when
/// the pair index `j / 2 < center / 2`. **The chunk is then `j` bytes long: the byte at `j`, the first
/// byte of the next chunk, took part in the decision.** With no hit, the chunk is `R` bytes (the
/// maximum, or the end of the stream). Three facts follow:
///
/// 1. The decision at offset `j` depends only on the bytes `p..=p + j` and, through the mask and
///    whether `j` is tested at all, on `rem` (only via `min(rem, max)` and `center`, so every
///    `rem > max` is the same); `H(j)` depends only on the 64 bytes before and at `j`, because a
///    term shifted by 64 or more is 0.
/// 2. A cut at `p` is *true* (the one a pass over the whole stream makes) when `p` is the stream
///    start or the end of a true chunk: each cut starts from scratch at the previous one.
/// 3. So if a previous version of the stream had a true chunk of `len` bytes at `q`, whose bytes
///    equal the new stream's bytes at a true cut `p` (checked by BLAKE3 of the chunk), the new
///    chunk at `p` scans the same bytes with the same decisions below `len`, as long as the masks
///    agree there: no tested offset below `len` hits (the old chunk would have ended there). What
///    remains is the decision *at* `len`, which is not covered by the chunk's bytes:
///    - `len == max`: every offset below was tested without a hit in the old stream, and both
///      streams have `rem >= max`, so the new chunk is forced at `max` too;
///    - `len == rem_old` (the old stream's last chunk, cut by its end): trusted only when the new
///      stream also ends there (`rem_new == len`): same bytes, same `rem`, same result;
///    - otherwise the old chunk ended on a hash hit at `len`. The new one does too if offset `len`
///      is tested in the new stream and `H(len)`, computed here from the new bytes (the byte at
///      `p + len` included), hits with the new stream's mask; or, if `len` is not tested in the new
///      stream, when the new chunk is cut at `R = len` (the new stream ends there). Otherwise the
///      old cut is not used. BLAKE3 equality of the chunk alone is *not* enough: a different byte
///      right after it can move the cut (`tests::chunk_bytes_alone_do_not_decide_the_cut`).
///
/// Trusting an old chunk list this way needs it to be FastCDC's own output with the same sizes:
/// `add` uses only the chunk lists it cut itself (a scan-cache flag), never one a peer sent.
#[derive(Clone)]
pub struct CutCheck {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: std::borrow::Cow<'static, [u64]>,
    gear_ls: std::borrow::Cow<'static, [u64]>,
}

impl CutCheck {
    /// The check for these sizes (validated).
    pub fn new(sizes: ChunkSizes) -> CutCheck {
        let (mask_s, mask_l) =
            fastcdc::v2020::select_masks(sizes.avg as usize, Normalization::Level1);
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(0);
        CutCheck {
            min: sizes.min as usize,
            avg: sizes.avg as usize,
            max: sizes.max as usize,
            mask_s,
            mask_l,
            gear,
            gear_ls,
        }
    }

    /// `limit1`, `limit2` of `cut_gear` for a chunk with `rem` bytes to the end of the stream:
    /// pair `i` is tested when `min / 2 <= i < limit2`, with the strict mask when `i < limit1`.
    fn limits(&self, rem: u64) -> (usize, usize) {
        if rem <= self.min as u64 {
            return (0, 0);
        }
        let remaining = rem.min(self.max as u64) as usize;
        let center = if rem > self.max as u64 || remaining >= self.avg {
            self.avg
        } else {
            remaining
        };
        (center / 2, remaining / 2)
    }

    fn tested(&self, j: usize, rem: u64) -> bool {
        j >= self.min && j / 2 < self.limits(rem).1
    }

    /// Whether FastCDC, cutting a chunk that starts at `chunk[0]` with `rem` bytes to the end of the
    /// stream, tests offset `j` and finds a cut there (the chunk would be `j` bytes long, if no
    /// earlier offset hit). `chunk` holds at least `j + 1` bytes.
    pub fn hit(&self, chunk: &[u8], j: usize, rem: u64) -> bool {
        let (limit1, limit2) = self.limits(rem);
        let index = j / 2;
        if j < self.min || index >= limit2 {
            return false;
        }
        let mask = if index < limit1 {
            self.mask_s
        } else {
            self.mask_l
        };
        // Pairs below `index - 32` are shifted out of the 64-bit hash by offset `j`.
        let from = (self.min / 2).max(index.saturating_sub(32));
        let mut hash = 0u64;
        for i in from..=index {
            let a = 2 * i;
            hash = (hash << 2).wrapping_add(self.gear_ls[chunk[a] as usize]);
            if a == j {
                return hash & (mask << 1) == 0;
            }
            hash = hash.wrapping_add(self.gear[chunk[a + 1] as usize]);
        }
        hash & mask == 0
    }

    /// Whether FastCDC, cutting the new stream at a true cut whose bytes are `new` (at least
    /// `len + 1` of them, or all `rem_new` if fewer), ends the chunk at exactly `len`, given that
    /// `new[..len]` are the bytes of a true chunk of the previous version (checked by the caller,
    /// by hash) that had `rem_old` bytes from its start to the old stream's end. `rem_new` is the
    /// same count in the new stream; any value above `max` means "more than `max`". See the type's
    /// documentation for the argument.
    pub fn keeps_cut(&self, new: &[u8], len: usize, rem_old: u64, rem_new: u64) -> bool {
        let l = len as u64;
        if len == 0 || len > self.max || l > rem_new || l > rem_old {
            return false;
        }
        if len == self.max {
            return true;
        }
        if l == rem_old {
            return rem_new == rem_old;
        }
        // The old chunk ended on a hash hit at `len`: FastCDC tested it there. If it would not
        // have, the old list is not FastCDC's with these sizes; do not trust it.
        if !self.tested(len, rem_old) {
            return false;
        }
        let (l1_old, _) = self.limits(rem_old);
        let (l1_new, l2_new) = self.limits(rem_new);
        // Pairs holding an offset below `len` that the new stream tests must use the same mask as
        // in the old stream (the old one tested them all, since it tested `len`). This follows
        // from the checks above (a `center` below `avg` is a `rem` beyond `len`), so it is only a
        // guard.
        let below = (len - 1) / 2;
        if l2_new > self.min / 2 && below >= self.min / 2 {
            let last = below.min(l2_new - 1);
            let (lo, hi) = (l1_old.min(l1_new), l1_old.max(l1_new));
            // Pairs `lo..hi` have different masks; none may lie in `min / 2..=last`.
            if lo < hi && lo <= last && hi > self.min / 2 {
                return false;
            }
        }
        if self.tested(len, rem_new) {
            if new.len() <= len {
                return false;
            }
            self.hit(new, len, rem_new)
        } else {
            // No tested offset below `len` hits, `len` is not tested: the chunk is `R` bytes.
            rem_new.min(self.max as u64) == l
        }
    }
}

/// The length of the first chunk of `pending` (the bytes of a stream after a true cut), if its end
/// is certain: `pending` holds at least `max` bytes, or `end` says the stream ends with it. The
/// same cut as [`cut_ready`] and [`cut_all`] make there; one chunk at a time, for a caller that
/// looks at each chunk before cutting the next.
pub fn cut_first(pending: &[u8], sizes: ChunkSizes, end: bool) -> Option<usize> {
    if pending.is_empty() || (!end && pending.len() < sizes.max as usize) {
        return None;
    }
    let cdc = FastCDC::with_level(
        pending,
        sizes.min as usize,
        sizes.avg as usize,
        sizes.max as usize,
        Normalization::Level1,
    );
    Some(cdc.cut(0, pending.len()).1)
}

/// Streaming chunker: feed blocks with [`Chunker::push`], then call [`Chunker::finish`].
pub struct Chunker {
    sizes: ChunkSizes,
    buf: Vec<u8>,
}

impl Chunker {
    /// A chunker with the given sizes (call [`ChunkSizes::validate`] first).
    pub fn new(sizes: ChunkSizes) -> Chunker {
        Chunker {
            sizes,
            buf: Vec::new(),
        }
    }

    /// Appends `data` and calls `emit` for every chunk whose end is now certain.
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let buf = &self.buf;
        let pos = cut_ready(buf, self.sizes, |start, len| emit(&buf[start..start + len]));
        self.buf.drain(..pos);
    }

    /// Emits the remaining chunks at the end of the stream and resets the chunker.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        let mut pos = 0;
        for len in cut_all(&self.buf, self.sizes) {
            emit(&self.buf[pos..pos + len]);
            pos += len;
        }
        self.buf.clear();
    }

    /// Drops buffered bytes (restart of a file).
    pub fn reset(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIZES: ChunkSizes = ChunkSizes {
        min: 16 * 1024,
        avg: 64 * 1024,
        max: 256 * 1024,
    };
    const SMALL: ChunkSizes = ChunkSizes {
        min: 256,
        avg: 1024,
        max: 4096,
    };

    /// Deterministic pseudo-random bytes (xorshift64*), with compressible stretches.
    pub(crate) fn gen(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn stream(data: &[u8], sizes: ChunkSizes, block: usize) -> Vec<usize> {
        let mut c = Chunker::new(sizes);
        let mut lens = Vec::new();
        for b in data.chunks(block.max(1)) {
            c.push(b, |ch| lens.push(ch.len()));
        }
        c.finish(|ch| lens.push(ch.len()));
        lens
    }

    /// Golden cut points: FastCDC v2020 with the default sizes over 4 MiB of xorshift bytes
    /// (seed 42). If this fails, chunk ids changed: do not update the constants without a
    /// store format migration.
    #[test]
    fn golden_cut_points() {
        let data = gen(42, 4 << 20);
        let lens = cut_all(&data, SIZES);
        let ids: Vec<String> = data_chunks(&data, &lens)
            .map(|c| blake3::hash(c).to_hex()[..16].to_string())
            .collect();
        assert_eq!(lens, GOLDEN_LENS, "FastCDC cut points changed");
        assert_eq!(ids, GOLDEN_IDS, "chunk ids changed");
    }

    fn data_chunks<'a>(data: &'a [u8], lens: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut pos = 0;
        lens.iter().map(move |&l| {
            let c = &data[pos..pos + l];
            pos += l;
            c
        })
    }

    #[rustfmt::skip]
    const GOLDEN_LENS: &[usize] = &[
        68430, 75594, 21205, 92742, 199438, 70183, 66607, 104760, 81600, 77011,
        73310, 141375, 102055, 98050, 108844, 121897, 74181, 43322, 93236, 43354,
        27350, 49948, 87169, 117265, 85353, 100071, 29938, 106058, 31879, 71569,
        194741, 67496, 69618, 30644, 116541, 151524, 66060, 70583, 96657, 84698,
        226095, 195678, 68831, 34231, 36245, 78247, 69993, 72628,
    ];
    #[rustfmt::skip]
    const GOLDEN_IDS: &[&str] = &[
        "1dd09e6b40c6d168", "33f6ad46ed0ba075", "be2a9c73a29cbc0b", "02626d7164abc159", "eedbd4fb481a75cf", "7943764cf3137b12",
        "9a3368a3b7c65412", "7a646a7e025682bc", "f4a2124a0f3de433", "98a0c6381f971302", "ffc798e321b1c480", "08229255fd6dbd49",
        "2d17c908b61105af", "45da5e4b521d1d87", "a2bf2516d614dc82", "6fba9bbbed1e8607", "b7af9e9d1885c97a", "d227ee541d6848ae",
        "3b00463d6e261fe3", "5ad69beae321e678", "e426826836d1c561", "79dc35d30b189a3a", "27eff7dd7ad33ee7", "a180914c45cb5dad",
        "646db55998c9110c", "27c381797edff7c2", "aff5a60a0b0f76e4", "38c995312d4b5d68", "54e5df969399c7f0", "a5f7844eddf0e402",
        "05354950564d975d", "3beae0e22f594428", "1b85c5b618e5b101", "829c31723faddd19", "e70329fa3a103567", "76cec947c8bb620c",
        "0e9697f4e996ad49", "5b4e2e2099b8bb00", "6331c5153955ca84", "ed7cfeb0f703be42", "b72e02fe2a905105", "a43d5e742052580d",
        "f6d1fca529a5fffb", "d87e98331217998b", "651ec4a23fdb1311", "552d1b362426277d", "c17d3757679fd482", "35fa152629680c05",
    ];

    #[test]
    fn cut_first_one_at_a_time_equals_whole() {
        for data in [gen(8, 200_000), mixed(9, 200_000), Vec::new(), gen(10, 100)] {
            let whole = cut_all(&data, SMALL);
            let mut lens = Vec::new();
            let mut pos = 0;
            // As the reader does: cut while `max` bytes are known, the rest at the end.
            let known = data.len().saturating_sub(5000);
            while let Some(l) = cut_first(&data[pos..known.max(pos)], SMALL, false) {
                lens.push(l);
                pos += l;
            }
            while let Some(l) = cut_first(&data[pos..], SMALL, true) {
                lens.push(l);
                pos += l;
            }
            assert_eq!(lens, whole);
        }
    }

    #[test]
    fn streaming_equals_whole() {
        let data = gen(7, 3 << 20);
        let whole = cut_all(&data, SIZES);
        for block in [1000, 65536, 300_000, 1 << 20, 8 << 20] {
            assert_eq!(stream(&data, SIZES, block), whole, "block {block}");
        }
        assert!(stream(&[], SIZES, 10).is_empty());
    }

    /// Chunk sizes the cut-check tests run with: the store's small test sizes, odd-ish sizes and
    /// the defaults.
    const CHECK_SIZES: [ChunkSizes; 3] = [
        SMALL,
        ChunkSizes {
            min: 64,
            avg: 300,
            max: 1024,
        },
        SIZES,
    ];

    /// Bytes with every kind of cut: random stretches (hash hits), zero runs and a repeated short
    /// pattern (forced `max` cuts), text-like stretches.
    fn mixed(seed: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut r = gen(seed, 64);
        let mut k = 0u64;
        while out.len() < len {
            k += 1;
            let n = (u64::from_le_bytes(r[..8].try_into().unwrap()) % 9000) as usize + 1;
            match r[8] % 4 {
                0 => out.extend(std::iter::repeat_n(0u8, n)),
                1 => out.extend(b"abcabcab".iter().cycle().take(n)),
                2 => out.extend(
                    gen(seed ^ k, n)
                        .iter()
                        .map(|b| b"etaoin shrdlu\n"[*b as usize % 14]),
                ),
                _ => out.extend(gen(seed.wrapping_add(k), n)),
            }
            r = gen(seed.wrapping_mul(31).wrapping_add(k), 64);
        }
        out.truncate(len);
        out
    }

    /// [`CutCheck::hit`] is FastCDC's decision: within every chunk of a whole pass no offset hits,
    /// and a chunk shorter than `min(rem, max)` ends on a hit.
    fn check_hits(data: &[u8], sizes: ChunkSizes) {
        let c = CutCheck::new(sizes);
        let mut p = 0;
        for len in cut_all(data, sizes) {
            let rem = (data.len() - p) as u64;
            let chunk = &data[p..];
            for j in 0..len {
                assert!(
                    !c.hit(chunk, j, rem),
                    "hit at {j} inside a chunk of {len} at {p}"
                );
            }
            if (len as u64) < rem.min(sizes.max as u64) {
                assert!(c.hit(chunk, len, rem), "no hit at the cut {len} at {p}");
            }
            p += len;
        }
    }

    #[test]
    fn hit_is_fastcdcs_decision() {
        for (k, sizes) in CHECK_SIZES.iter().enumerate() {
            let n = if k == 2 { 3 << 20 } else { 300_000 };
            check_hits(&gen(11, n), *sizes);
            check_hits(&mixed(12, n), *sizes);
            // Short streams: `rem < avg`, `rem <= min`, odd lengths.
            for len in [
                1, 63, 64, 65, 255, 257, 299, 301, 1023, 1025, 4095, 4097, 70_001,
            ] {
                check_hits(&gen(len as u64, len), *sizes);
            }
        }
    }

    /// A chunk's bytes do not decide its cut alone: FastCDC looks at the first byte after the cut.
    /// So an old chunk found again by hash must still pass [`CutCheck::keeps_cut`].
    #[test]
    fn chunk_bytes_alone_do_not_decide_the_cut() {
        let data = gen(5, 400_000);
        let c = CutCheck::new(SMALL);
        let mut found = 0;
        let mut p = 0;
        for len in cut_all(&data, SMALL) {
            if p + len + 2000 > data.len() {
                break;
            }
            let mut b = data[p..p + len + 2000].to_vec();
            b[len] ^= 0x5a;
            let new_first = cut_all(&b, SMALL)[0];
            if new_first != len {
                found += 1;
                assert!(!c.keeps_cut(&b, len, (data.len() - p) as u64, b.len() as u64));
            }
            p += len;
        }
        assert!(found > 10, "only {found} cuts moved");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Soundness of [`CutCheck::keeps_cut`]: whenever it says a new stream that starts with the
        /// bytes of an old chunk is cut where the old one was, FastCDC agrees; and an unchanged
        /// continuation is always recognised.
        #[test]
        fn keeps_cut_is_fastcdcs_cut(seed in any::<u64>(), which in 0usize..3, len in 1usize..200_000,
                                     pick in any::<prop::sample::Index>(), tail_kind in 0usize..5,
                                     tail_len in 0usize..20_000) {
            let sizes = CHECK_SIZES[which];
            let max = sizes.max as usize;
            let old = if seed % 2 == 0 { gen(seed, len) } else { mixed(seed, len) };
            let lens = cut_all(&old, sizes);
            let i = pick.index(lens.len());
            let q: usize = lens[..i].iter().sum();
            let l = lens[i];
            let rem_old = (old.len() - q) as u64;
            let mut new = old[q..q + l].to_vec();
            match tail_kind {
                0 => new.extend_from_slice(&old[q + l..]),
                1 => {
                    new.extend_from_slice(&old[q + l..]);
                    if new.len() > l {
                        new[l] = new[l].wrapping_add(1 + (seed >> 8) as u8 % 255);
                    }
                }
                2 => new.extend_from_slice(&gen(seed ^ 77, tail_len)),
                3 => new.extend_from_slice(&old[q + l..(q + l + tail_len).min(old.len())]),
                _ => new.extend_from_slice(&mixed(seed ^ 99, tail_len % (2 * max))),
            }
            let c = CutCheck::new(sizes);
            let rem_new = new.len() as u64;
            let first = cut_all(&new, sizes)[0];
            let keep = c.keeps_cut(&new, l, rem_old, rem_new);
            if keep {
                prop_assert_eq!(first, l, "keeps_cut said yes, FastCDC cut at {}", first);
            }
            if tail_kind == 0 {
                prop_assert!(keep, "an unchanged continuation was not recognised");
            }
            // Any `rem_new` above `max` means the same.
            if rem_new > max as u64 {
                prop_assert_eq!(keep, c.keeps_cut(&new, l, rem_old, max as u64 + 1));
            }
        }

        #[test]
        fn hit_matches_fastcdc_on_random_input(seed in any::<u64>(), which in 0usize..2, len in 0usize..60_000) {
            check_hits(&mixed(seed, len), CHECK_SIZES[which]);
            check_hits(&gen(seed, len), CHECK_SIZES[which]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn chunks_cover_input_within_bounds(seed in any::<u64>(), len in 0usize..60_000, block in 1usize..9000) {
            let data = gen(seed, len);
            let lens = stream(&data, SMALL, block);
            prop_assert_eq!(lens.iter().sum::<usize>(), len);
            for (i, &l) in lens.iter().enumerate() {
                prop_assert!(l <= SMALL.max as usize);
                if i + 1 < lens.len() {
                    prop_assert!(l >= SMALL.min as usize);
                }
            }
            prop_assert_eq!(lens, cut_all(&data, SMALL));
        }

        #[test]
        fn insertion_changes_only_nearby_chunks(seed in any::<u64>(), at in 0usize..200_000, ins in 1usize..3000) {
            let data = gen(seed, 200_000);
            let mut edited = data[..at].to_vec();
            edited.extend_from_slice(&gen(seed ^ 0xdead, ins));
            edited.extend_from_slice(&data[at..]);
            let al = cut_all(&data, SMALL);
            let a: Vec<&[u8]> = data_chunks(&data, &al).collect();
            let bl = cut_all(&edited, SMALL);
            let b: Vec<&[u8]> = data_chunks(&edited, &bl).collect();
            let set: std::collections::HashSet<&[u8]> = a.iter().copied().collect();
            let new_bytes: usize = b.iter().filter(|c| !set.contains(*c)).map(|c| c.len()).sum();
            // The changed region is the insertion plus a few chunks around it.
            prop_assert!(new_bytes <= ins + 4 * SMALL.max as usize, "new {} ins {}", new_bytes, ins);
        }
    }
}
