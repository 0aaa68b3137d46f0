//! Criterion benches of the per-byte work of `add`/`restore`: FastCDC chunking, BLAKE3, zstd
//! encode/decode, on 8 MiB of mixed data (one third random, one third text-like, one third zeros
//! and repeated blocks). Short runs: `cargo bench --bench chunk`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use left_store::chunker::{cut_all, ChunkSizes};
use left_store::codec;
use std::time::Duration;

const SIZES: ChunkSizes = ChunkSizes {
    min: 16 * 1024,
    avg: 64 * 1024,
    max: 256 * 1024,
};

fn mixed(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let words = [
        "the ",
        "chunk ",
        "peer ",
        "sync ",
        "GET /api/v1/items ",
        "200 ",
        "latency=",
        "12ms\n",
    ];
    let mut out = Vec::with_capacity(len);
    let third = len / 3;
    while out.len() < third {
        out.extend_from_slice(&next().to_le_bytes());
    }
    while out.len() < 2 * third {
        out.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
    }
    let block: Vec<u8> = (0..65536).map(|_| next() as u8).collect();
    while out.len() < len {
        if next() % 2 == 0 {
            out.extend_from_slice(&[0u8; 65536]);
        } else {
            out.extend_from_slice(&block);
        }
    }
    out.truncate(len);
    out
}

fn benches(c: &mut Criterion) {
    let data = mixed(8 << 20);
    let lens = cut_all(&data, SIZES);
    let mut g = c.benchmark_group("chunk");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("fastcdc_v2020", |b| b.iter(|| cut_all(&data, SIZES).len()));
    g.bench_function("blake3", |b| b.iter(|| blake3::hash(&data)));
    g.bench_function("zstd_encode_chunks", |b| {
        let mut enc = codec::Encoder::new();
        b.iter(|| {
            let mut pos = 0;
            let mut n = 0;
            for &l in &lens {
                n += enc.encode(&data[pos..pos + l]).len();
                pos += l;
            }
            n
        })
    });
    let mut enc = codec::Encoder::new();
    let mut pos = 0;
    let encoded: Vec<Vec<u8>> = lens
        .iter()
        .map(|&l| {
            let e = enc.encode(&data[pos..pos + l]);
            pos += l;
            e
        })
        .collect();
    g.bench_function("zstd_decode_chunks", |b| {
        b.iter_batched(
            || (),
            |_| {
                let mut out = Vec::new();
                let mut n = 0;
                for e in &encoded {
                    codec::decode_into(e, SIZES.max as usize, &mut out).unwrap();
                    n += out.len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(chunk, benches);
criterion_main!(chunk);
