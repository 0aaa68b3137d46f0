//! Source checks: the structure ARCHITECTURE.md promises, read from the source files themselves.
//!
//! - the library's modules form layers (each imports only lower layers; [`LAYERS`]);
//! - the CLI (src/cli/) imports nothing from `left::session`, `left::net` or `left::rdt`: it
//!   parses, prints and maps exit codes, the use cases live in `left::app`;
//! - src/sync/ does no IO: no store, file system, socket, runtime or clock;
//! - the store crate's top-level modules import each other without a cycle, and none does
//!   `use crate::*`;
//! - `unsafe` in the store is rare and each block says why it is sound;
//! - every file is within the size rule;
//! - ARCHITECTURE.md is within its budget and every test it names exists.
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
        // Test files may drive a module through higher layers (the pull against a real store).
        let is_test = f.file_name().is_some_and(|n| n == "tests.rs")
            || f.components().any(|c| c.as_os_str() == "tests");
        if m == "cli" || m == "main" || m == "lib" || is_test {
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

/// Every `fn` name defined in the `.rs` files under `dir`, by file.
fn fns_in(dir: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in rust_files(dir) {
        let src = fs::read_to_string(&f).unwrap();
        for (i, _) in src.match_indices("fn ") {
            let name: String = src[i + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((rel(&f), name));
            }
        }
    }
    out
}

/// Whether the test `reference` (as ARCHITECTURE.md writes it: `it::mod::name`,
/// `store::mod::name`, `lib::path::name`, or a bare `name` continuing a list) exists.
fn test_exists(reference: &str, fns: &[(String, String)]) -> bool {
    let parts: Vec<&str> = reference.split("::").collect();
    let name = *parts.last().unwrap();
    let in_file = |pred: &dyn Fn(&str) -> bool| fns.iter().any(|(f, n)| n == name && pred(f));
    match parts.as_slice() {
        ["it", m, ..] => in_file(&|f| {
            f == format!("tests/it/{m}.rs") || f.starts_with(&format!("tests/it/{m}/"))
        }),
        ["store", m, ..] => in_file(&|f| {
            f.starts_with("store/tests/")
                && (f.ends_with(&format!("/{m}.rs")) || f.contains(&format!("/{m}/")))
        }),
        ["lib", m, ..] => {
            in_file(&|f| f == format!("src/{m}.rs") || f.starts_with(&format!("src/{m}/")))
        }
        [_] => in_file(&|f| !f.starts_with("benches/")),
        _ => false,
    }
}

/// ARCHITECTURE.md stays within its budget, and every test it names exists: each invariant,
/// layer rule, durability rule and threat line points at a test that checks it.
#[test]
fn architecture_is_within_budget_and_names_real_tests() {
    let doc = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let lines: Vec<&str> = doc.lines().collect();
    assert!(
        lines.len() <= 200,
        "ARCHITECTURE.md has {} lines (at most 200)",
        lines.len()
    );
    let mut sections: Vec<(String, Vec<&str>)> = Vec::new();
    for l in &lines {
        if let Some(h) = l.strip_prefix("## ") {
            sections.push((h.to_string(), Vec::new()));
        } else if let Some(s) = sections.last_mut() {
            s.1.push(l);
        }
    }
    let budget = |name: &str, max: usize| {
        let s = sections.iter().find(|(h, _)| h.starts_with(name));
        let s = s.unwrap_or_else(|| panic!("ARCHITECTURE.md has no `## {name}` section"));
        assert!(
            s.1.len() <= max,
            "section `{}` has {} lines (at most {max})",
            s.0,
            s.1.len()
        );
    };
    budget("Threat model", 30);
    budget("Durability", 25);
    budget("Invariants", 40);

    let mut fns = Vec::new();
    for dir in ["src", "store/src", "tests", "store/tests"] {
        fns.extend(fns_in(dir));
    }
    let is_test_ref = |t: &str| {
        t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
            && (t.matches('_').count() >= 2
                || ["it::", "lib::", "store::"]
                    .iter()
                    .any(|p| t.starts_with(p)))
            && !t.ends_with(':')
    };
    let mut missing = Vec::new();
    for (heading, body) in &sections {
        let checked = ["The map", "Invariants", "Durability", "Threat model"];
        if !checked.iter().any(|c| heading.starts_with(c)) {
            continue;
        }
        // One entry per bullet (continuation lines joined); a bullet of a rules section must name a test.
        let mut entries: Vec<String> = Vec::new();
        for l in body {
            if l.starts_with("- ") || l.starts_with("**") || entries.is_empty() {
                entries.push(l.to_string());
            } else {
                entries.last_mut().unwrap().push_str(l);
            }
        }
        for e in entries {
            let refs: Vec<&str> = e
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|t| is_test_ref(t))
                .collect();
            for r in &refs {
                if !test_exists(r, &fns) {
                    missing.push(format!("{heading}: `{r}` names no test"));
                }
            }
            let rule = (heading.starts_with("Invariants") || heading.starts_with("Durability"))
                && e.starts_with("- ");
            if rule && refs.is_empty() {
                missing.push(format!(
                    "{heading}: a rule names no test: {}",
                    &e[..e.len().min(80)]
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md:\n{}",
        missing.join("\n")
    );
}
