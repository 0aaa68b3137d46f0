//! Throughput check on a big file, run by hand:
//! `LEFT_BENCH_FILE=/var/tmp/bench/base.bin cargo test --release --workspace --test store measure_throughput -- --nocapture`
//! These are measurements, not checks, so they are ignored by default; run with `--ignored` and the
//! variable set. The CI-sized and full-size figures come from benches/store_e2e.py.

use left_store::*;
use std::path::Path;
use std::time::Instant;

fn cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

#[test]
#[ignore = "measurement: run by hand with LEFT_BENCH_FILE set and --ignored"]
fn add_and_restore_big_file() {
    let file = std::env::var("LEFT_BENCH_FILE").expect("set LEFT_BENCH_FILE (see the file docs)");
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::hard_link(&file, share.join("big.bin")).unwrap();
    let size = std::fs::metadata(&file).unwrap().len() as f64;
    let store = Store::create(&tmp.path().join("store"), StoreConfig::default()).unwrap();
    let (t, c) = (Instant::now(), cpu());
    let r = store
        .add(&share, &[], &AddOptions::default(), &NoProgress)
        .unwrap();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "add: {:.2} s ({:.2} s cpu), {:.0} MB/s, bytes_new {} bytes_stored {}",
        dt,
        cpu() - c,
        size / dt / 1e6,
        r.bytes_new,
        r.bytes_stored
    );
    let t = Instant::now();
    let r2 = store
        .add(&share, &[], &AddOptions::default(), &NoProgress)
        .unwrap();
    println!(
        "second add: {:.3} s, read {}",
        t.elapsed().as_secs_f64(),
        r2.bytes_read
    );
    let out = tmp.path().join("out");
    let (t, c) = (Instant::now(), cpu());
    store
        .restore(
            r.snapshot.unwrap(),
            None,
            &out,
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "restore: {:.2} s ({:.2} s cpu), {:.0} MB/s",
        dt,
        cpu() - c,
        size / dt / 1e6
    );
    let t = Instant::now();
    let v = store.verify(&NoProgress).unwrap();
    println!(
        "verify: {:.2} s, problems {}",
        t.elapsed().as_secs_f64(),
        v.problems.len()
    );
    assert!(v.problems.is_empty());
    println!("disk usage {}", store.disk_usage().unwrap());
    let _ = Path::new("");
}

#[test]
#[ignore = "measurement: run by hand with LEFT_BENCH_SMALL set and --ignored"]
fn many_small_files() {
    let n = std::env::var("LEFT_BENCH_SMALL").expect("set LEFT_BENCH_SMALL (see the file docs)");
    let n: usize = n.parse().unwrap();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let share = tmp.path().join("share");
    for i in 0..n {
        let d = share.join(format!("d{:03}", i % 300));
        if i < 300 {
            std::fs::create_dir_all(&d).unwrap();
        }
        let len = 1024 + (i * 7919) % (15 * 1024);
        let data: Vec<u8> = (0..len)
            .map(|j| (j as u64 * 31 + i as u64 * 17) as u8)
            .collect();
        std::fs::write(d.join(format!("f{i}")), data).unwrap();
    }
    let store = Store::create(&tmp.path().join("store"), StoreConfig::default()).unwrap();
    let t = Instant::now();
    let r = store
        .add(&share, &[], &AddOptions::default(), &NoProgress)
        .unwrap();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "first add of {n} files: {:.2} s, {:.0} files/s, stored {}",
        dt,
        n as f64 / dt,
        r.bytes_stored
    );
    let t = Instant::now();
    let r2 = store
        .add(&share, &[], &AddOptions::default(), &NoProgress)
        .unwrap();
    println!(
        "rescan: {:.3} s, read {}, snapshot {:?}",
        t.elapsed().as_secs_f64(),
        r2.bytes_read,
        r2.snapshot
    );
    assert!(r2.snapshot.is_none());
}

#[test]
#[ignore = "measurement: run by hand with LEFT_BENCH_MUT_DIR set and --ignored"]
fn mutation_growth() {
    let dir =
        std::env::var("LEFT_BENCH_MUT_DIR").expect("set LEFT_BENCH_MUT_DIR (see the file docs)");
    let dir = std::path::PathBuf::from(dir);
    for k in ["a", "b", "c", "d"] {
        let m = dir.join(format!("mut_{k}.bin"));
        if !m.exists() {
            continue;
        }
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let share = tmp.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::hard_link(dir.join("base.bin"), share.join("f.bin")).unwrap();
        let store = Store::create(&tmp.path().join("store"), StoreConfig::default()).unwrap();
        store
            .add(&share, &[], &AddOptions::default(), &NoProgress)
            .unwrap();
        std::fs::remove_file(share.join("f.bin")).unwrap();
        std::fs::hard_link(&m, share.join("f.bin")).unwrap();
        let r = store
            .add(&share, &[], &AddOptions::default(), &NoProgress)
            .unwrap();
        println!(
            "mutation {k}: bytes_new {} bytes_stored {} ({:.2} MiB)",
            r.bytes_new,
            r.bytes_stored,
            r.bytes_stored as f64 / 1048576.0
        );
    }
}

/// Per-chunk cost of storing pulled chunks one at a time (`put_chunk_verified`) against batches
/// (`put_chunks_verified`): 16384 distinct 64 KiB incompressible chunks (1 GiB) per round, each
/// round into a fresh store; batch sizes alternate so noise from other work shows. Run: `cargo test --release --workspace --test store measure_throughput -- --ignored
/// --nocapture put_chunks_batched`.
#[test]
#[ignore = "measurement: run by hand with --ignored"]
fn put_chunks_batched() {
    const N: usize = 16384;
    const LEN: usize = 64 << 10;
    // Incompressible, distinct chunks (xorshift per chunk), prepared before timing.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; LEN];
    let chunks: Vec<(ChunkId, Vec<u8>)> = (0..N)
        .map(|_| {
            for w in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            (ChunkId(Hash::of(&buf)), codec::encode(&buf))
        })
        .collect();
    assert_eq!(chunks[0].1[0], codec::CODEC_RAW);
    // Interleaved rounds: the machine is shared, so compare side by side.
    for batch in [1usize, 64, 1, 64, 16, 256, 1, 64] {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = Store::create(&tmp.path().join("store"), StoreConfig::default()).unwrap();
        let (t, c) = (Instant::now(), cpu());
        let mut new = 0;
        if batch == 1 {
            for (id, enc) in &chunks {
                new += store.put_chunk_verified(*id, enc, LEN as u32).unwrap() as usize;
            }
        } else {
            for b in chunks.chunks(batch) {
                let v: Vec<(ChunkId, &[u8], u32)> =
                    b.iter().map(|(id, e)| (*id, &e[..], LEN as u32)).collect();
                new += store.put_chunks_verified(&v).unwrap();
            }
        }
        let (dt, dc) = (t.elapsed().as_secs_f64(), cpu() - c);
        assert_eq!(new, N);
        println!(
            "{} x 64 KiB, batch {batch:>3}: {dt:.2} s wall ({:.1} µs/chunk), {dc:.2} s cpu ({:.1} µs/chunk)",
            N,
            dt * 1e6 / N as f64,
            dc * 1e6 / N as f64
        );
    }
}

/// `add` of a big file changed slightly (the update benchmark's first step on the sending peer):
/// base.bin is added once, then each mutation is copied over it and added, and base.bin again
/// (every add has a change to read). Run: `LEFT_BENCH_MUT_DIR=/var/tmp/left-bench/e2e-1073741824
/// cargo test --release --workspace --test store measure_throughput -- --ignored --nocapture
/// add_of_changed_file`.
#[test]
#[ignore = "measurement: run by hand with LEFT_BENCH_MUT_DIR set and --ignored"]
fn add_of_changed_file() {
    let dir =
        std::env::var("LEFT_BENCH_MUT_DIR").expect("set LEFT_BENCH_MUT_DIR (see the file docs)");
    let dir = std::path::PathBuf::from(dir);
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let store = Store::create(&tmp.path().join("store"), StoreConfig::default()).unwrap();
    let f = share.join("f.bin");
    std::fs::copy(dir.join("base.bin"), &f).unwrap();
    store
        .add(&share, &[], &AddOptions::default(), &NoProgress)
        .unwrap();
    for k in ["a", "b", "c", "d"] {
        for src in [dir.join(format!("mut_{k}.bin")), dir.join("base.bin")] {
            std::fs::copy(&src, &f).unwrap();
            let (t, c) = (Instant::now(), cpu());
            let (r, s) = store
                .debug_add_with_stats(&share, &[], &AddOptions::default(), &NoProgress)
                .unwrap();
            let (dt, dc) = (t.elapsed().as_secs_f64(), cpu() - c);
            assert!(r.snapshot.is_some());
            println!(
                "add after copying {:>9} over it: {dt:.3} s wall, {dc:.3} s cpu, read {} new {}; \
                 cuts reused for {} bytes ({} chunks), FastCDC cut {} (hashed by the reader {})",
                src.file_name().unwrap().to_string_lossy(),
                r.bytes_read,
                r.bytes_new,
                s.bytes_cut_reused,
                s.chunks_cut_reused,
                s.bytes_cut_cdc,
                s.bytes_cut_resync
            );
        }
    }
}
