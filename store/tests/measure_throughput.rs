//! Throughput check on a big file, run by hand:
//! `LEFT_BENCH_FILE=/var/tmp/bench/base.bin cargo test --release -p left-store --test measure_throughput -- --nocapture`
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
