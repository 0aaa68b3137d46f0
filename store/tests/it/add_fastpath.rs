//! `add` of a changed file reuses the cuts of its previous version where it did not change, and the
//! result is exactly a full FastCDC pass (same chunk ids, lengths, file node). Also: racily clean
//! scan records (a file changed within a timestamp tick after its read) are read again.
//!
//! The property test is seeded: it prints its seed, and `LEFT_FASTPATH_SEED=<n>` replays one
//! (`LEFT_FASTPATH_CASES` sets the case count).

use crate::common::*;
use left_store::chunker::{cut_all, ChunkSizes};
use left_store::node::{build_content, ChunkRef, FileNode, Node};
use left_store::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// The smallest sizes FastCDC accepts: many chunks from little data.
fn tiny_cfg() -> StoreConfig {
    StoreConfig {
        chunk_min: 64,
        chunk_avg: 256,
        chunk_max: 1024,
        memory_budget: 16 << 20,
        share_root: None,
    }
}

fn sizes(cfg: &StoreConfig) -> ChunkSizes {
    ChunkSizes {
        min: cfg.chunk_min,
        avg: cfg.chunk_avg,
        max: cfg.chunk_max,
    }
}

/// The file node a full FastCDC pass over the file at `path` gives.
fn expected_node(path: &Path, sizes: ChunkSizes) -> NodeId {
    let data = fs::read(path).unwrap();
    let m = fs::metadata(path).unwrap();
    let mut refs = Vec::new();
    let mut pos = 0;
    for len in cut_all(&data, sizes) {
        refs.push(ChunkRef {
            id: Hash::of(&data[pos..pos + len]),
            len: len as u64,
        });
        pos += len;
    }
    let content = build_content(refs, &mut |_, _| Ok(())).unwrap();
    Node::File(FileNode {
        size: data.len() as u64,
        mode: m.mode() & 0o7777,
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        content,
    })
    .encode_with_id()
    .unwrap()
    .0
}

/// The node the store's head holds for `name` at the share root.
fn stored_node(store: &Store, name: &str) -> NodeId {
    let head = store.head().unwrap().unwrap();
    let e = store.ls(head, Path::new(name)).unwrap();
    assert_eq!(e.len(), 1);
    e[0].id
}

fn add_stats(store: &Store, share: &Path) -> (AddReport, u64, u64, u64, u64) {
    let (r, s) = store
        .debug_add_with_stats(
            share,
            &[],
            &AddOptions {
                message: "t".into(),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
    (
        r,
        s.bytes_cut_reused,
        s.bytes_cut_cdc,
        s.files_racy_reread,
        s.records_racy,
    )
}

/// Bytes of mixed kinds: random, zero runs (forced maximum cuts), repeated blocks, text.
fn mixed(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut k = seed;
    while out.len() < len {
        k = k
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = ((k >> 33) % 5000 + 1) as usize;
        match (k >> 20) % 4 {
            0 => out.extend(std::iter::repeat_n(0u8, n)),
            1 => out.extend(rand_bytes(k % 4, 512).iter().cycle().take(n)),
            2 => out.extend(
                rand_bytes(k, n)
                    .iter()
                    .map(|b| b"the quick brown fox\n"[*b as usize % 20]),
            ),
            _ => out.extend(rand_bytes(k, n)),
        }
    }
    out.truncate(len);
    out
}

/// Where a mutation happens: a fraction of the file's length, moved to the next cut point of the
/// current bytes (plus `shift` bytes) when `snap` is set: changes right at a chunk boundary are
/// the ones that test FastCDC's decision at the end of an unchanged chunk.
#[derive(Debug, Clone, Copy)]
struct At {
    frac: f64,
    snap: bool,
    shift: usize,
}

impl At {
    fn plain(frac: f64) -> At {
        At {
            frac,
            snap: false,
            shift: 0,
        }
    }

    fn pos(&self, data: &[u8], sizes: ChunkSizes) -> usize {
        let mut p = ((self.frac * data.len() as f64) as usize).min(data.len());
        if self.snap {
            let mut c = 0;
            for len in cut_all(data, sizes) {
                if c >= p {
                    break;
                }
                c += len;
            }
            p = (c + self.shift).min(data.len());
        }
        p
    }
}

fn at() -> impl Strategy<Value = At> {
    (
        0.0..1.0f64,
        any::<bool>(),
        prop_oneof![Just(0usize), 0usize..3],
    )
        .prop_map(|(frac, snap, shift)| At { frac, snap, shift })
}

#[derive(Debug, Clone)]
enum Mutation {
    Overwrite {
        at: At,
        len: usize,
        seed: u64,
    },
    Insert {
        at: At,
        len: usize,
        seed: u64,
    },
    Delete {
        at: At,
        len: usize,
    },
    Append {
        len: usize,
        seed: u64,
    },
    Truncate {
        to: At,
    },
    Scattered {
        n: usize,
        len: usize,
        seed: u64,
    },
    Empty,
    Replace {
        len: usize,
        seed: u64,
    },
    /// The same bytes written again (only the stat changes).
    Touch,
}

fn apply(data: &mut Vec<u8>, m: &Mutation, sizes: ChunkSizes) {
    match *m {
        Mutation::Overwrite { at, len, seed } => {
            let p = at.pos(data, sizes);
            let end = (p + len).min(data.len());
            let b = rand_bytes(seed, end - p);
            data[p..end].copy_from_slice(&b);
        }
        Mutation::Insert { at, len, seed } => {
            let p = at.pos(data, sizes);
            let b = mixed(seed, len);
            data.splice(p..p, b);
        }
        Mutation::Delete { at, len } => {
            let p = at.pos(data, sizes);
            let end = (p + len).min(data.len());
            data.drain(p..end);
        }
        Mutation::Append { len, seed } => data.extend(rand_bytes(seed, len)),
        Mutation::Truncate { to } => {
            let n = to.pos(data, sizes);
            data.truncate(n);
        }
        Mutation::Scattered { n, len, seed } => {
            let mut x = seed | 1;
            for _ in 0..n {
                if data.is_empty() {
                    break;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = (x % data.len() as u64) as usize;
                let end = (p + len).min(data.len());
                let b = rand_bytes(x, end - p);
                data[p..end].copy_from_slice(&b);
            }
        }
        Mutation::Empty => data.clear(),
        Mutation::Replace { len, seed } => *data = mixed(seed, len),
        Mutation::Touch => {}
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (at(), prop_oneof![1usize..4, 1usize..5000], any::<u64>())
            .prop_map(|(at, len, seed)| Mutation::Overwrite { at, len, seed }),
        (at(), prop_oneof![1usize..4, 1usize..5000], any::<u64>())
            .prop_map(|(at, len, seed)| Mutation::Insert { at, len, seed }),
        (at(), prop_oneof![1usize..4, 1usize..5000])
            .prop_map(|(at, len)| Mutation::Delete { at, len }),
        (1usize..20_000, any::<u64>()).prop_map(|(len, seed)| Mutation::Append { len, seed }),
        at().prop_map(|to| Mutation::Truncate { to }),
        (1usize..20, 1usize..300, any::<u64>()).prop_map(|(n, len, seed)| Mutation::Scattered {
            n,
            len,
            seed
        }),
        Just(Mutation::Empty),
        (0usize..3000, any::<u64>()).prop_map(|(len, seed)| Mutation::Replace { len, seed }),
        Just(Mutation::Touch),
    ]
}

/// Every add after a random chain of mutations stores exactly the file node of a full FastCDC
/// pass, whether the reader reused old cuts or not.
#[test]
fn reused_cuts_equal_a_full_pass() {
    let seed: u64 = std::env::var("LEFT_FASTPATH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let cases: u32 = std::env::var("LEFT_FASTPATH_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    println!("reused_cuts_equal_a_full_pass: seed {seed} (LEFT_FASTPATH_SEED={seed} replays it)");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let reused = std::cell::Cell::new(0u64);
    let cut = std::cell::Cell::new(0u64);
    let strategy = (
        0usize..3,
        // Files of several read blocks (1 MiB) too: cutting overlaps the next block's read.
        prop_oneof![0usize..3000, 0usize..400_000, 2_000_000usize..6_000_000],
        any::<u64>(),
        prop::collection::vec(mutation(), 1..6),
    );
    let result = runner.run(&strategy, |(cfg_kind, base_len, base_seed, muts)| {
        let cfg = match cfg_kind {
            0 | 1 => tiny_cfg(),
            _ => small_cfg(),
        };
        let sz = sizes(&cfg);
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        fs::create_dir(&share).unwrap();
        let store = Store::create(&tmp.path().join("store"), cfg).unwrap();
        let f = share.join("f");
        let mut data = mixed(base_seed, base_len);
        fs::write(&f, &data).unwrap();
        add_stats(&store, &share);
        prop_assert_eq!(stored_node(&store, "f"), expected_node(&f, sz));
        for m in &muts {
            apply(&mut data, m, sz);
            fs::write(&f, &data).unwrap();
            let (_, r, c, _, _) = add_stats(&store, &share);
            reused.set(reused.get() + r);
            cut.set(cut.get() + c);
            prop_assert_eq!(
                stored_node(&store, "f"),
                expected_node(&f, sz),
                "after {:?} ({} bytes, seed {})",
                m,
                data.len(),
                seed
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("seed {seed}: {e}");
    }
    println!(
        "after the mutations: {} bytes in reused chunks, {} bytes cut by FastCDC",
        reused.get(),
        cut.get()
    );
    // Not a correctness condition, but the cases must exercise the reuse.
    assert!(reused.get() > 0, "no cut was reused in {cases} cases");
}

/// The reader takes the unchanged parts of a changed file from its previous version (and still
/// stores exactly FastCDC's chunks), for each kind of change.
#[test]
fn unchanged_parts_are_not_cut_again() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir(&share).unwrap();
    let cfg = small_cfg();
    let sz = sizes(&cfg);
    let store = Store::create(&tmp.path().join("store"), cfg.clone()).unwrap();
    let f = share.join("big");
    let mut data = mixed(7, 3 << 20);
    fs::write(&f, &data).unwrap();
    let (r, reused, cdc, _, _) = add_stats(&store, &share);
    assert_eq!(
        (reused, cdc),
        (0, data.len() as u64),
        "first add cuts it all"
    );
    assert_eq!(r.bytes_read, data.len() as u64);

    let steps = [
        Mutation::Overwrite {
            at: At::plain(0.5),
            len: 4096,
            seed: 1,
        },
        Mutation::Insert {
            at: At::plain(0.3),
            len: 10_000,
            seed: 2,
        },
        Mutation::Delete {
            at: At::plain(0.7),
            len: 5000,
        },
        Mutation::Append {
            len: 100_000,
            seed: 3,
        },
        Mutation::Scattered {
            n: 16,
            len: 4096,
            seed: 4,
        },
        Mutation::Truncate { to: At::plain(0.9) },
        Mutation::Touch,
    ];
    for m in &steps {
        apply(&mut data, m, sz);
        fs::write(&f, &data).unwrap();
        let (r, reused, cdc, _, _) = add_stats(&store, &share);
        assert_eq!(stored_node(&store, "big"), expected_node(&f, sz), "{m:?}");
        assert_eq!(r.bytes_read, data.len() as u64, "{m:?}");
        assert_eq!(reused + cdc, data.len() as u64, "{m:?}");
        // What FastCDC cut again: the changed bytes and a few chunks around each change.
        let changed = match m {
            Mutation::Append { len, .. } => *len as u64,
            Mutation::Scattered { n, .. } => *n as u64 * 4096,
            _ => 10_000,
        };
        let around = match m {
            Mutation::Scattered { n, .. } => *n as u64 * 4,
            _ => 4,
        } * cfg.chunk_max as u64;
        assert!(
            cdc <= changed + around,
            "{m:?}: {cdc} bytes cut by FastCDC, {reused} reused"
        );
        if matches!(m, Mutation::Touch) {
            assert_eq!(cdc, 0, "unchanged bytes: every cut reused");
            assert_eq!(r.bytes_new, 0);
        }
    }

    // With `rehash`, nothing is reused.
    fs::write(&f, &data).unwrap();
    let (_, s) = store
        .debug_add_with_stats(
            &share,
            &[],
            &AddOptions {
                rehash: true,
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
    assert_eq!(s.bytes_cut_reused, 0);
    assert_eq!(stored_node(&store, "big"), expected_node(&f, sz));
}

/// A scan record written by checkout (a node this store may not have cut: it may come from a
/// peer with other chunk sizes, or any cuts at all) is never used for reuse; the record the next
/// add writes is.
#[test]
fn only_cuts_made_here_are_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir(&share).unwrap();
    let cfg = small_cfg();
    let sz = sizes(&cfg);
    let store = Store::create(&tmp.path().join("store"), cfg).unwrap();
    let f = share.join("f");
    let mut data = mixed(9, 1 << 20);
    fs::write(&f, &data).unwrap();
    let s1 = add_stats(&store, &share).0.snapshot.unwrap();
    let v1 = data.clone();
    let step = |data: &mut Vec<u8>, seed| {
        apply(
            data,
            &Mutation::Overwrite {
                at: At::plain(0.1),
                len: 100,
                seed,
            },
            sz,
        )
    };
    step(&mut data, 5);
    fs::write(&f, &data).unwrap();
    let (r2, reused, _, _, _) = add_stats(&store, &share);
    assert!(reused > 0);
    // Back to the first version by checkout: it writes the scan record.
    store
        .checkout(
            &share,
            r2.snapshot,
            s1,
            &CheckoutOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(fs::read(&f).unwrap(), v1);
    data = v1;
    step(&mut data, 6);
    fs::write(&f, &data).unwrap();
    let (_, reused, cdc, _, _) = add_stats(&store, &share);
    assert_eq!(
        (reused, cdc),
        (0, data.len() as u64),
        "checkout's record is not reused"
    );
    assert_eq!(stored_node(&store, "f"), expected_node(&f, sz));
    step(&mut data, 7);
    fs::write(&f, &data).unwrap();
    let (_, reused, cdc, _, _) = add_stats(&store, &share);
    assert!(
        reused > data.len() as u64 / 2,
        "add's record is reused: {reused} reused, {cdc} cut"
    );
    assert_eq!(stored_node(&store, "f"), expected_node(&f, sz));
}

/// A record written while the file's mtime is within the margin of its read is racy: the next add
/// reads the file again even though its stat matches; once the file is older than the margin,
/// that re-read writes a normal record and the add after it reads nothing. An old file's record is
/// normal from the start, also when it was just put in place (fresh ctime, old mtime).
#[test]
fn racily_clean_records_are_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir(&share).unwrap();
    let store = Store::create(&tmp.path().join("store"), small_cfg()).unwrap();
    let margin = Duration::from_nanos(Store::RACY_MARGIN_NS as u64) + Duration::from_millis(150);
    fs::write(share.join("old"), rand_bytes(1, 30_000)).unwrap();
    fs::write(share.join("copied"), rand_bytes(3, 20_000)).unwrap();
    // Older than the margin: its mtime a minute back.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    set_mtime(&share.join("old"), now_ns - 60_000_000_000);
    fs::write(share.join("fresh"), rand_bytes(2, 70_000)).unwrap();
    // As `cp -p` leaves it: new ctime, old mtime.
    let old_mtime = fs::metadata(share.join("old")).unwrap().mtime_nsec()
        + fs::metadata(share.join("old")).unwrap().mtime() * 1_000_000_000;
    set_mtime(&share.join("copied"), old_mtime);

    let (r, _, _, reread, racy) = add_stats(&store, &share);
    assert_eq!(r.bytes_read, 120_000);
    assert_eq!(
        (reread, racy),
        (0, 1),
        "only the fresh file's record is racy"
    );

    // Nothing changed: the fresh file is read again (its stat matches a racy record), the old one
    // is not. Its record is racy again (the file is still within the margin).
    let (r, _, _, reread, racy) = add_stats(&store, &share);
    assert_eq!(r.bytes_read, 70_000);
    assert_eq!((reread, racy), (1, 1));
    assert!(r.snapshot.is_none());

    // Wait for the fresh file to age past the margin with its stat unchanged (its mtime cannot
    // be moved back without changing the stat): the property tested is about elapsed time.
    std::thread::sleep(margin);
    let (r, _, _, reread, racy) = add_stats(&store, &share);
    assert_eq!(r.bytes_read, 70_000);
    assert_eq!(
        (reread, racy),
        (1, 0),
        "now older than the margin: a normal record"
    );
    let (r, _, _, reread, racy) = add_stats(&store, &share);
    assert_eq!((r.bytes_read, reread, racy), (0, 0, 0));
}

/// The racy re-read is what catches a change the stat cannot show: same size, and the mtime put
/// back. (Here the ctime still changes, so the stat differs too; a write in the same timestamp
/// tick as the add's read would leave even the ctime as it was, which is what the racy record
/// covers. The record test above is the one that fails without it.)
#[test]
fn a_same_size_rewrite_with_the_old_mtime_is_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    fs::create_dir(&share).unwrap();
    let cfg = small_cfg();
    let sz = sizes(&cfg);
    let store = Store::create(&tmp.path().join("store"), cfg).unwrap();
    let f = share.join("f");
    fs::write(&f, rand_bytes(1, 200_000)).unwrap();
    let mt = {
        let m = fs::metadata(&f).unwrap();
        m.mtime() * 1_000_000_000 + m.mtime_nsec()
    };
    add_stats(&store, &share);
    fs::write(&f, rand_bytes(2, 200_000)).unwrap();
    set_mtime(&f, mt);
    let (r, _, _, _, _) = add_stats(&store, &share);
    assert!(r.snapshot.is_some());
    assert_eq!(stored_node(&store, "f"), expected_node(&f, sz));
}
