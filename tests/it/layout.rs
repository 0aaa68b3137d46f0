//! Source checks: the structure ARCHITECTURE.md promises, read from the source files themselves.
//!
//! - the library's modules form layers (each imports only lower layers; [`LAYERS`]);
//! - the CLI (src/cli/) imports nothing from `left::session`, `left::net` or `left::rdt`: it
//!   parses, prints and maps exit codes, the use cases live in `left::app`;
//! - src/sync/ does no IO: no store, file system, socket, runtime or clock;
//! - the store crate's top-level modules import each other without a cycle, and none does
//!   `use crate::*`;
//! - `unsafe` in the store is rare and each block says why it is sound;
//! - every file is within the size rule.
//!
//! Comments are ignored (a doc may name `Store::add`); a file's inline `#[cfg(test)]` module at
//! its bottom counts as test code.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` (relative to the repository), sorted.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root().join(dir)];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// The code of a file before its first `#[cfg(test)]`, with `//` comments removed.
fn code(p: &Path) -> String {
    let full = fs::read_to_string(p).unwrap();
    let body = full.split("#[cfg(test)]").next().unwrap_or("");
    body.lines()
        .map(|l| match l.find("//") {
            // `//` inside a string literal ("http://") is rare in this tree; a string that
            // holds one only shortens what is checked.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `src` holds `word` as a whole identifier (not `StoreNode` for `Store`).
fn has_word(src: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    src.match_indices(word).any(|(i, _)| {
        let before = src[..i].chars().next_back().is_none_or(|c| !ident(c));
        let after = src[i + word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !ident(c));
        before && after
    })
}

/// The first path segments `src` names after `prefix` (`crate::`, `super::`, `left::`),
/// including the items of `prefix{a, b::c}` groups.
fn named_after(src: &str, prefix: &str) -> BTreeSet<String> {
    let flat: String = src.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = BTreeSet::new();
    for (i, _) in flat.match_indices(prefix) {
        // `left_store::` contains no `left::`, but `xleft::` would: require a boundary.
        let before = flat[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &flat[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(j, _)| j);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let head: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !head.is_empty() {
                            out.insert(head);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !head.is_empty() {
                out.insert(head);
            }
        }
    }
    out
}

/// The library's layers, lowest first: a module may import only modules of lower layers.
const LAYERS: &[&[&str]] = &[
    // Pure building blocks: the transport core, the wire format, text and time helpers.
    &["rdt", "ecp", "sanitize", "identity", "watch", "duration"],
    // The sans-IO sync engine, the tokio driver of rdt, the peer book.
    &["sync", "net", "peers"],
    // Sessions over the network; the control socket of a running serve.
    &["session", "control"],
    // The use cases the CLI calls.
    &["app"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Top-level module of a file under `dir` (`src/sync/pull.rs` and `src/sync.rs` are `sync`).
fn top_module(dir: &str, p: &Path) -> String {
    let r = p.strip_prefix(root().join(dir)).unwrap();
    let first = r
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn library_modules_import_only_lower_layers() {
    let mut checked = 0;
    for f in rust_files("src") {
        let m = top_module("src", &f);
        if m == "cli" || m == "main" || m == "lib" {
            continue;
        }
        let Some(mine) = layer_of(&m) else {
            panic!("{}: module `{m}` has no layer: add it to LAYERS in tests/it/layout.rs and ARCHITECTURE.md", rel(&f));
        };
        for used in named_after(&code(&f), "crate::") {
            if used == m {
                continue;
            }
            if let Some(theirs) = layer_of(&used) {
                assert!(
                    theirs < mine,
                    "{} (layer {mine}, `{m}`) imports `{used}` (layer {theirs}): a module may import only lower layers",
                    rel(&f)
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 30, "found the library sources ({checked} files)");
}

#[test]
fn cli_imports_no_session_net_or_rdt() {
    let files = rust_files("src/cli");
    assert!(files.len() > 5, "found the CLI sources: {files:?}");
    let mut files = files;
    files.push(root().join("src/main.rs"));
    for f in files {
        let used = named_after(&code(&f), "left::");
        for banned in ["session", "net", "rdt"] {
            assert!(
                !used.contains(banned),
                "{} imports `left::{banned}`: the CLI reaches the network only through `left::app`",
                rel(&f)
            );
        }
    }
}

#[test]
fn sync_engine_does_no_io() {
    let mut files = rust_files("src/sync");
    files.push(root().join("src/sync.rs"));
    assert!(files.len() > 4, "found the sync sources: {files:?}");
    let banned = [
        "std::fs",
        "std::net",
        "std::thread",
        "tokio",
        "UdpSocket",
        "Instant::now",
        "SystemTime",
        "File::open",
        "rayon",
    ];
    for f in files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let src = code(&f);
        for b in banned {
            assert!(
                !src.contains(b),
                "{} mentions `{b}`: src/sync/ must stay IO-free",
                rel(&f)
            );
        }
        assert!(
            !has_word(&src, "Store"),
            "{} names the store (`Store`): the engine sees objects only through its traits",
            rel(&f)
        );
    }
}

#[test]
fn store_modules_form_no_cycle_and_import_explicitly() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let files = rust_files("store/src");
    assert!(files.len() > 10, "found the store sources");
    for f in &files {
        let full = fs::read_to_string(f).unwrap();
        assert!(
            !full.contains("use crate::*"),
            "{} does `use crate::*`: import what the file uses by name",
            rel(f)
        );
        let m = top_module("store/src", f);
        if m == "lib" {
            continue;
        }
        let used = named_after(&code(f), "crate::");
        graph
            .entry(m.clone())
            .or_default()
            .extend(used.into_iter().filter(|u| *u != m));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) {
        match state.get(m) {
            Some(2) => return,
            Some(1) => {
                let at = path.iter().position(|p| p == m).unwrap();
                panic!(
                    "store modules import each other in a cycle: {} -> {m}",
                    path[at..].join(" -> ")
                );
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for d in &graph[m] {
            visit(d, graph, state, path);
        }
        path.pop();
        state.insert(m.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        visit(m, &graph, &mut state, &mut Vec::new());
    }
    // The two modules that once imported each other stay apart.
    assert!(!graph["add"].contains("checkout") && !graph["checkout"].contains("add"));
}

#[test]
fn store_unsafe_is_rare_and_justified() {
    let mut blocks = Vec::new();
    for f in rust_files("store/src") {
        let src = code(&f);
        let full = fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = full.lines().collect();
        for (n, l) in src.lines().enumerate() {
            if has_word(l, "unsafe") {
                let from = n.saturating_sub(4);
                let justified = lines[from..=n].iter().any(|l| l.contains("SAFETY"));
                assert!(
                    justified,
                    "{}:{}: `unsafe` without a `// SAFETY:` note just above",
                    rel(&f),
                    n + 1
                );
                blocks.push(format!("{}:{}", rel(&f), n + 1));
            }
        }
    }
    assert!(
        blocks.len() <= 6,
        "{} `unsafe` in store/src (at most 6): {blocks:?}",
        blocks.len()
    );
}

/// The size rule: a source file holds at most 800 lines of code before its inline test module,
/// and no file (a test file included) more than 2,000; the pull engine and the rdt connection,
/// each one state machine, may hold 1,300.
#[test]
fn files_are_within_the_size_rule() {
    const CODE_MAX: usize = 800;
    const FILE_MAX: usize = 2_000;
    const EXCEPTIONS: &[(&str, usize)] =
        &[("src/sync/pull.rs", 1_300), ("src/rdt/conn/mod.rs", 1_300)];
    let mut over = Vec::new();
    let mut seen = 0;
    for dir in [
        "src",
        "store/src",
        "benches",
        "tests",
        "store/tests",
        "fuzz",
    ] {
        for f in rust_files(dir) {
            seen += 1;
            let r = rel(&f);
            let full = fs::read_to_string(&f).unwrap();
            let total = full.lines().count();
            let is_test = r.starts_with("tests/")
                || r.starts_with("store/tests/")
                || r.ends_with("/tests.rs")
                || r.contains("/tests/");
            let code_lines = full
                .lines()
                .take_while(|l| !l.starts_with("#[cfg(test)]"))
                .count();
            let limit = EXCEPTIONS
                .iter()
                .find(|(p, _)| *p == r)
                .map_or(CODE_MAX, |&(_, n)| n);
            if total > FILE_MAX {
                over.push(format!("{r}: {total} lines (at most {FILE_MAX})"));
            } else if !is_test && code_lines > limit {
                over.push(format!(
                    "{r}: {code_lines} lines before its tests (at most {limit})"
                ));
            }
        }
    }
    assert!(seen > 80, "found the sources ({seen} files)");
    assert!(
        over.is_empty(),
        "files over the size rule (split them along a seam):\n{}",
        over.join("\n")
    );
}
