//! left: peer-to-peer file sync on a content-addressed block store.
//!
//! The library holds everything but the command line: the device identity, the rdt transport
//! (sans-IO), its tokio driver, the ecp message protocol and the sync engine (sans-IO). The store is
//! its own crate, `left_store`. ARCHITECTURE.md is the map.

pub mod app;
pub mod control;
pub mod duration;
pub mod ecp;
pub mod identity;
pub mod net;
pub mod peers;
pub mod rdt;
pub mod sanitize;
pub mod session;
pub mod sync;
pub mod watch;
