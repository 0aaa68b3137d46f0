//! Content-defined chunking with FastCDC v2020.
//!
//! The `fastcdc` crate is pinned to an exact version (`=5.0.0`) because chunk ids follow cut points:
//! a release that moved cut points would silently change every chunk id and lose deduplication
//! against existing stores. The golden vectors in this module's tests fail if that ever happens.
//!
//! [`Chunker`] cuts a stream fed in blocks of any size, producing the same cut points as one pass
//! over the whole input (a chunk is only emitted once the bytes after it are known, except at the
//! end of the stream). It does not hash or compress; see [`crate::codec`].

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
    fn streaming_equals_whole() {
        let data = gen(7, 3 << 20);
        let whole = cut_all(&data, SIZES);
        for block in [1000, 65536, 300_000, 1 << 20, 8 << 20] {
            assert_eq!(stream(&data, SIZES, block), whole, "block {block}");
        }
        assert!(stream(&[], SIZES, 10).is_empty());
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
