//! Congestion control behind one trait, with NewReno and CUBIC implementations.
//!
//! The connection tells the controller what happens ([`Controller::on_sent`], [`Controller::on_ack`],
//! [`Controller::on_congestion_event`], [`Controller::on_mtu_update`]) and asks it how many bytes may
//! be in flight ([`Controller::window`]). Windows are in bytes. Loss of a path-MTU probe is never
//! reported as congestion.

mod cubic;
mod new_reno;

pub use cubic::Cubic;
pub use new_reno::NewReno;

use std::time::Instant;

use crate::rdt::rtt::RttEstimator;

/// Which congestion controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionAlgorithm {
    /// RFC 9002 section 7 NewReno.
    NewReno,
    /// RFC 9438 CUBIC (the default).
    #[default]
    Cubic,
}

impl CongestionAlgorithm {
    /// A fresh controller for datagrams of `mtu` bytes.
    pub fn build(self, mtu: u16) -> Box<dyn Controller> {
        match self {
            Self::NewReno => Box::new(NewReno::new(mtu)),
            Self::Cubic => Box::new(Cubic::new(mtu)),
        }
    }
}

/// A congestion controller.
pub trait Controller: Send + std::fmt::Debug {
    /// A packet of `bytes` was sent.
    fn on_sent(&mut self, _now: Instant, _bytes: u64) {}

    /// A packet of `bytes` sent at `sent` was acknowledged. `app_limited` means the sender had
    /// nothing more to send, so the window was not the limit and must not grow.
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    );

    /// Packets were declared lost; `sent` is when the newest of them was sent.
    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent: bool);

    /// The datagram size changed.
    fn on_mtu_update(&mut self, mtu: u16);

    /// Bytes that may be in flight.
    fn window(&self) -> u64;
}

/// RFC 9002 section 7.2: the initial window.
pub(crate) fn initial_window(mtu: u16) -> u64 {
    let mtu = u64::from(mtu);
    (10 * mtu).min((2 * mtu).max(14720))
}

/// RFC 9002 section 7.2: the minimum window.
pub(crate) fn minimum_window(mtu: u16) -> u64 {
    2 * u64::from(mtu)
}
