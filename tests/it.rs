//! Integration tests: one test binary (`cargo test --release --test it`) with a module per area.
//!
//! - `cli`, `faults` and `roundtrip` drive the real `left` binary in temp folders: good input,
//!   bad input and crashes (fault hooks and SIGKILL), a proptest of add + restore on arbitrary
//!   trees. Faults are injected deterministically: `LEFT_FAULT=fail-write:N` (the N-th store write
//!   fails as on a full disk), `abort-write:N` (the process aborts before it, as a crash would),
//!   `abort-checkout:N` (abort right after the N-th path of a checkout is renamed into place);
//!   network faults come from the seeded impairment layer (`LEFT_IMPAIR`).
//! - `rdt_sim` is the deterministic network simulator of the rdt core (virtual clock, per-link
//!   seeded impairment, scripted faults, chaos seeds: `LEFT_SIM_SEEDS`, `LEFT_SIM_SEED`); `net`
//!   runs the tokio driver and sockets over loopback.
//! - `sync_e2e` runs `left serve` and `left sync` as processes (resume after SIGKILL with exact
//!   chunk counts, a server killed and restarted, 5% loss, diverged heads, IPv6); `auto` runs three
//!   `left serve --peer` on 127.X.Y.1/2/3; `auto_sim` drives real agents, pulls, merges and
//!   checkouts on real stores through a simulated network (`LEFT_AUTO_SIM_SEED(S)`).
//! - `repair` damages a store through its test hooks and repairs it from a peer; `badpeer*` is a
//!   fake peer built on the library serving crafted frames, nodes and chunks (bad ids, escaping
//!   trees, a 1 PB file, a zstd bomb, stalls, floods) to the real binary; `control` drives the
//!   binary beside an in-process control server.
//! - `golden` pins the text formats other versions read; `layout` checks the structure
//!   ARCHITECTURE.md promises (layers, imports, IO-free engine, file sizes) from the sources.
//! - `util` holds the helpers. Store-level tests are in store/tests/; the ecp and sync engine
//!   tests at the bottom of their modules.

#[path = "it/app.rs"]
mod app;
#[path = "it/auto.rs"]
mod auto;
#[path = "it/auto_sim.rs"]
mod auto_sim;
#[path = "it/badpeer.rs"]
mod badpeer;
#[path = "it/badpeer_pull.rs"]
mod badpeer_pull;
#[path = "it/badpeer_transport.rs"]
mod badpeer_transport;
#[path = "it/badpeer_tree.rs"]
mod badpeer_tree;
#[path = "it/cli.rs"]
mod cli;
#[path = "it/control.rs"]
mod control;
#[path = "it/faults.rs"]
mod faults;
#[path = "it/folder_type.rs"]
mod folder_type;
#[path = "it/golden.rs"]
mod golden;
#[path = "it/guard.rs"]
mod guard;
#[path = "it/layout.rs"]
mod layout;
#[path = "it/net.rs"]
mod net;
#[path = "it/rdt_sim/mod.rs"]
mod rdt_sim;
#[path = "it/repair.rs"]
mod repair;
#[path = "it/roundtrip.rs"]
mod roundtrip;
#[path = "it/sync_e2e.rs"]
mod sync_e2e;
#[path = "it/util.rs"]
mod util;
