//! Store tests: one test binary (`cargo test --release --workspace --test store`) with a module
//! per area, as tests/it.rs is for the `left` crate. `common` holds the helpers. Tests that
//! crash a child process re-run this binary with `--exact <module>::<test>`.

#[path = "it/add_fastpath.rs"]
mod add_fastpath;
#[path = "it/add_fastpath_changing.rs"]
mod add_fastpath_changing;
#[path = "it/changing.rs"]
mod changing;
#[path = "it/checkout.rs"]
mod checkout;
#[path = "it/common/mod.rs"]
mod common;
#[path = "it/frozen.rs"]
mod frozen;
#[path = "it/gc_roots.rs"]
mod gc_roots;
#[path = "it/integrity.rs"]
mod integrity;
#[path = "it/measure_throughput.rs"]
mod measure_throughput;
#[path = "it/merge.rs"]
mod merge;
#[path = "it/objects.rs"]
mod objects;
#[path = "it/removals.rs"]
mod removals;
#[path = "it/roundtrip.rs"]
mod roundtrip;
#[path = "it/settle.rs"]
mod settle;
