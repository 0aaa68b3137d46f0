//! Integration tests: the real `left` binary driven in temporary folders.
//!
//! One test binary (`cargo test --release --test it`) with a module per area: `cli` for the commands
//! on good input, `faults` for bad input, failures and crashes, `roundtrip` for a property test of
//! add + restore on arbitrary trees. `util` holds the helpers. `net` runs the tokio driver and sockets over loopback; `rdt_sim` is the deterministic network simulator of the rdt
//! transport core (scripted faults and seeded chaos; `LEFT_SIM_SEEDS`, `LEFT_SIM_SEED`).

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
#[path = "it/golden.rs"]
mod golden;
#[path = "it/layout.rs"]
mod layout;
#[path = "it/net.rs"]
mod net;
#[path = "it/rdt_sim.rs"]
mod rdt_sim;
#[path = "it/repair.rs"]
mod repair;
#[path = "it/roundtrip.rs"]
mod roundtrip;
#[path = "it/sync_e2e.rs"]
mod sync_e2e;
#[path = "it/util.rs"]
mod util;
