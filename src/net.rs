//! The tokio side of the transport: UDP sockets, the impairment layer, and the driver that runs the
//! sans-IO `rdt` state machine. This is the only asynchronous code in the crate.
//!
//! - [`impair`]: a seeded model of a bad path (loss, bursty loss, delay, jitter, reordering,
//!   duplication, corruption, a bandwidth cap with a tail-drop queue). Pure logic, given `now`.
//! - [`udp`]: sockets over `quinn-udp` (GSO sends, GRO and `recvmmsg` receives) with buffers raised by
//!   `socket2`, and [`udp::ImpairedSocket`], which puts [`impair`] in front of the sends (through a
//!   [`udp::Link`], which several sockets may share as one bottleneck).
//! - [`driver`]: one tokio task per `rdt::Endpoint`, and the async handles callers use
//!   ([`driver::Endpoint`], [`driver::Connection`], [`driver::Stream`]).
//!
//! Impairment is off unless a test or benchmark configures it or the `LEFT_IMPAIR` environment
//! variable is set, e.g. `LEFT_IMPAIR="loss=0.01,delay=5ms,seed=7"`, and the socket is opened with
//! [`udp::SocketConfig::from_env`]; see [`impair::ImpairmentConfig::parse`] for every key.
//!
//! The driver honours the core's timer to the microsecond (a `timerfd` on Linux, see `timer.rs`):
//! pacing deadlines are often under a millisecond away, which tokio's timers would round up.

#![warn(missing_docs)]

pub mod driver;
pub mod impair;
mod timer;
pub mod udp;

/// 32 bytes from the operating system's random source, the seed of every production rdt endpoint
/// (`rdt::EndpointConfig::with_seed`): connection ids, ephemeral keys and the retry-token key
/// come from it. Panics only if the OS has no working random source (as `rand::random` would).
pub fn os_seed() -> [u8; 32] {
    use rand::TryRngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .expect("the operating system's random source failed");
    seed
}
