//! Property test through the binary: an arbitrary tree of files, folders and symlinks (raw byte
//! names, modes, ns mtimes, empty files and folders, multi-chunk files) comes back from
//! `left add` + `left restore` identical, and a second `left add` makes no snapshot.
//!
//! On failure proptest prints the minimal failing tree and its seed, and records the case in a
//! `proptest-regressions` file that is replayed first on the next run (commit that file).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;

use crate::util::*;

#[derive(Debug, Clone)]
enum Item {
    File {
        seed: u64,
        len: usize,
        mode: u32,
        mtime_ns: i64,
    },
    Dir {
        mode: u32,
        mtime_ns: i64,
        children: BTreeMap<Vec<u8>, Item>,
    },
    Link {
        target: Vec<u8>,
    },
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Mostly readable names, sometimes arbitrary bytes (no '/' and no NUL, which unix forbids).
        3 => "[a-z0-9_. -]{1,10}".prop_map(String::into_bytes),
        1 => prop::collection::vec(1u8..=255, 1..8)
            .prop_map(|v| v.into_iter().map(|b| if b == b'/' { b'x' } else { b }).collect()),
    ]
    .prop_filter("reserved name", |n| {
        !matches!(n.as_slice(), b"." | b".." | b".left" | b".leftignore")
    })
}

fn mtime() -> impl Strategy<Value = i64> {
    // 1970 .. 2033, any nanosecond.
    0i64..2_000_000_000_000_000_000
}

fn leaf() -> impl Strategy<Value = Item> {
    let len = prop_oneof![
        3 => 0usize..200,
        2 => 1_000usize..70_000,
        1 => 200_000usize..600_000,
    ];
    prop_oneof![
        4 => (any::<u64>(), len, prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o400, 0o4755]), mtime())
            .prop_map(|(seed, len, mode, mtime_ns)| Item::File { seed, len, mode, mtime_ns }),
        1 => prop::collection::vec(1u8..=255, 1..20)
            .prop_map(|target| Item::Link { target }),
        1 => (prop::sample::select(vec![0o755u32, 0o700, 0o750]), mtime())
            .prop_map(|(mode, mtime_ns)| Item::Dir { mode, mtime_ns, children: BTreeMap::new() }),
    ]
}

fn tree() -> impl Strategy<Value = BTreeMap<Vec<u8>, Item>> {
    let item = leaf().prop_recursive(3, 24, 6, |inner| {
        (
            prop::sample::select(vec![0o755u32, 0o700, 0o750]),
            mtime(),
            prop::collection::btree_map(name(), inner, 0..6),
        )
            .prop_map(|(mode, mtime_ns, children)| Item::Dir {
                mode,
                mtime_ns,
                children,
            })
    });
    prop::collection::btree_map(name(), item, 1..8)
}

fn write_items(dir: &Path, items: &BTreeMap<Vec<u8>, Item>) {
    for (name, item) in items {
        let path = dir.join(OsStr::from_bytes(name));
        match item {
            Item::File {
                seed,
                len,
                mode,
                mtime_ns,
            } => {
                fs::write(&path, random_bytes(*seed, *len)).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                set_mtime(&path, *mtime_ns);
            }
            Item::Dir {
                mode,
                mtime_ns,
                children,
            } => {
                fs::create_dir(&path).unwrap();
                write_items(&path, children);
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                // Last, since creating the children changed it.
                set_mtime(&path, *mtime_ns);
            }
            Item::Link { target } => symlink(OsStr::from_bytes(target), &path).unwrap(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    })]

    #[test]
    fn add_then_restore_gives_the_same_tree(items in tree()) {
        let share = Share::new();
        write_items(&share.root, &items);
        let add = share.add(&[]);
        prop_assert!(add["snapshot"].is_string(), "{}", add);
        prop_assert!(add["skipped"].as_array().unwrap().is_empty(), "{}", add);
        let target = share.scratch("restored");
        share
            .left(&["restore", "head", "--to", target.to_str().unwrap()])
            .expect_code(0);
        assert_same_tree(&share.root, &target);
        let again = share.add(&[]);
        prop_assert!(again["snapshot"].is_null(), "unchanged tree made a snapshot: {}", again);
    }
}
