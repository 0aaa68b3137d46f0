//! Criterion benches of the store's object operations: put/get of encoded chunks (RocksDB with
//! BlobDB) and batched presence checks (`has_many` over 10k ids, half of them stored). Short runs:
//! `cargo bench --bench store`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use left_store::{codec, ChunkId, Hash, NoProgress, ObjectId, Store, StoreConfig};
use std::time::Duration;

fn chunk(i: u64) -> Vec<u8> {
    // 64 KiB, half compressible.
    let mut v = vec![0u8; 65536];
    blake3::Hasher::new()
        .update(&i.to_le_bytes())
        .finalize_xof()
        .fill(&mut v[..32768]);
    v
}

fn benches(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::create(&tmp.path().join("store"), StoreConfig::default()).unwrap();
    let _ = NoProgress;
    let mut g = c.benchmark_group("store");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));

    // 10k stored chunks.
    let mut ids = Vec::new();
    for i in 0..10_000u64 {
        let plain = chunk(i);
        let id = ChunkId(Hash::of(&plain));
        store.put_chunk(id, &codec::encode(&plain)).unwrap();
        ids.push(id);
    }
    let mut next = 10_000u64;
    g.throughput(Throughput::Bytes(65536));
    g.bench_function("put_chunk_64k", |b| {
        b.iter_batched(
            || {
                next += 1;
                let plain = chunk(next);
                (ChunkId(Hash::of(&plain)), codec::encode(&plain))
            },
            |(id, enc)| store.put_chunk(id, &enc).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut k = 0usize;
    g.bench_function("get_chunk_64k_verified", |b| {
        b.iter(|| {
            k = (k + 7919) % ids.len();
            store.read_chunk(ids[k]).unwrap().len()
        })
    });
    g.throughput(Throughput::Elements(10_000));
    let mut probe: Vec<ChunkId> = ids.clone();
    // Half present, half absent.
    for (i, p) in probe.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
        *p = ChunkId(Hash::of(&(i as u64).to_be_bytes()));
    }
    let objects: Vec<ObjectId> = probe.iter().map(|c| ObjectId::Chunk(*c)).collect();
    g.bench_function("has_many_10k", |b| {
        b.iter(|| {
            store
                .has_many(&objects)
                .unwrap()
                .iter()
                .filter(|x| **x)
                .count()
        })
    });
    g.finish();
}

criterion_group!(store, benches);
criterion_main!(store);
