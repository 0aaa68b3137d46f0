//! What the automatic loop tells its caller instead of printing: [`AutoEvent`].

use std::sync::Arc;

use left_store::NodeId;

/// Something the automatic loop tells its caller. Paths and reasons may come from a peer: the
/// caller escapes them before they reach a terminal or a log ([`crate::log_line!`]).
#[derive(Debug)]
pub enum AutoEvent<'a> {
    /// An exchange moved the head: updated from (or merged with) the peers `from`.
    Updated {
        /// A merge (else a fast-forward).
        merged: bool,
        /// The peers whose heads were brought in, as given.
        from: Vec<&'a str>,
        /// The new head.
        now: Option<NodeId>,
        /// Files the checkout wrote.
        written: u64,
        /// Files it removed.
        removed: u64,
        /// Local changes it kept (snapshotted next).
        kept: usize,
    },
    /// A path changed on two devices: the other version is kept as `copy`.
    Conflict {
        /// The path.
        path: &'a str,
        /// The name the other version is kept under.
        copy: &'a str,
    },
    /// The deletion guard held a fetched head (nothing was checked out).
    Held(&'a crate::app::guard::Hold),
    /// A path the checkout could not write (its one-line warning).
    Unwritten(&'a str),
    /// A path a checkout could not write before is written now.
    WrittenNow(&'a std::path::Path),
    /// This many more tracked paths than at the scan before are frozen by `.leftignore`
    /// (more than [`left_store::FROZEN_WARN`]).
    NewlyFrozen(u64),
    /// A path the scan could not read (once, until it changes): not synced, it keeps its
    /// previous version.
    Skipped {
        /// The path.
        path: &'a str,
        /// Why.
        reason: &'a str,
    },
}

/// The caller's sink for [`AutoEvent`]s (called from the loop and its blocking tasks).
pub type OnAutoEvent = Arc<dyn Fn(AutoEvent<'_>) + Send + Sync>;
