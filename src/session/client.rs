//! The pulling side: connect to every peer, exchange `Have`, run one [`crate::sync::Pull`] per
//! distinct head, retry with backoff while nothing could be fetched; and the smaller asks of a
//! peer outside a pull (its head, snapshot headers, nodes by id).
//!
//! One file per operation:
//! - [`connect`]: opening and closing a session (handshake, `Hello`, `Have`/`Update`, `Bye`) and
//!   the mapping of every failure to a one-line reason and a [`PeerFailure`] kind;
//! - [`fetch`](mod@fetch): [`fetch()`], its settings and report, the rounds, grace and backoff;
//! - [`driver`]: one pull driven over the sessions of the peers that offered its head;
//! - [`history`]: [`fetch_history`] (snapshot headers) and [`heads`] (the peers' heads alone);
//! - [`nodes`]: [`NodeSession`], nodes asked by id.
//!
//! What this module is not: the serving side ([`super::Server`]), the sans-IO engine
//! ([`crate::sync`]), or the automatic-sync loop ([`super::auto`]).

mod connect;
mod driver;
mod fetch;
mod history;
mod nodes;

pub use connect::{Endpoints, Target};
pub use fetch::{fetch, DevicePolicy, FetchConfig, FetchProgress, FetchReport, PeerOutcome};
pub use history::{fetch_history, heads, HISTORY_LIMIT};
pub use nodes::{NodeSession, NodeSink};
