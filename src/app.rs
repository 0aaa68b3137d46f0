//! The use cases of `left`: one-shot sync, repair, restore from a peer, the daemon (`left serve`),
//! its automatic-sync loop, and integrate (bring fetched heads into the share folder).
//!
//! A use case is one thing a user asks `left` to do with peers, run to completion here: it takes
//! plain settings (already parsed), an open [`left_store::Store`] and callbacks for progress and
//! events, does the work, and returns a typed report or a typed [`Error`]. The command line
//! (`src/cli/`, in the binary) turns flags into those settings and the report into human text,
//! JSON and an exit code; it never talks to [`crate::session`], [`crate::net`] or [`crate::rdt`]
//! itself, and names what it needs through the re-exports below.
//!
//! What app may import: the store, [`crate::session`], [`crate::sync`], [`crate::net`],
//! [`crate::rdt`], [`crate::peers`], [`crate::identity`], [`crate::control`]. What it must not do:
//! print (events go to the caller's callback, the automatic loop's too: [`auto::AutoEvent`]),
//! exit, or parse command-line flags. Human hints that are part of
//! an error's meaning travel in the error ([`Error::Peers`]) so the CLI prints them unchanged.
//!
//! Map: [`peer_setup`] (addresses, endpoints, fetch settings: the one copy), [`decide`] (the
//! fast-forward decision), [`history`] (the history fetch), [`sync`] (one-shot sync),
//! [`repair`], [`restore`], [`integrate`], [`guard`], [`folder`] (folder types), [`send_only`] (the deletion guard before every checkout),
//! [`auto`] (the automatic loop), [`daemon`] (the wiring of `left serve`).

pub mod auto;
pub mod daemon;
pub mod decide;
pub mod folder;
pub mod guard;
pub mod history;
pub mod integrate;
pub mod peer_setup;
pub mod repair;
pub mod restore;
pub mod send_only;
pub mod sync;

pub use crate::session::{
    FetchProgress, FetchReport, LocalError, PeerError, PeerFailure, PeerOutcome, ServerEvent,
    Target,
};
pub use crate::sync::{AgentConfig, PullStats};
pub use peer_setup::DEFAULT_PORT;

/// A progress meter for one fetch: created when the fetch starts, finished when it ends.
pub trait Meter: FetchProgress {
    /// The fetch ended (clear the bar).
    fn finish(&self) {}
}

impl Meter for () {}

/// Makes a [`Meter`] for each fetch a use case runs.
pub type Meters<'a> = &'a (dyn Fn() -> Box<dyn Meter> + Sync);

/// What a use case can fail with. The message is one line; where a hint helps, the variant
/// carries it (or the CLI knows it from the variant).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A peer address that does not parse (a usage error) or does not resolve (`why` starts
    /// with `cannot resolve`).
    #[error("bad peer address {given:?}: {why}")]
    BadAddress {
        /// The address as given.
        given: String,
        /// What is wrong with it.
        why: String,
    },
    /// Talking to peers failed in a way the use case cannot go on from.
    #[error("{message}")]
    Peers {
        /// What failed, one line.
        message: String,
        /// What to do about it.
        hint: Option<String>,
    },
    /// The peers tried all failed; how each failed is in `peers` (the hint comes from their
    /// failure kinds).
    #[error("{message}")]
    PeersFailed {
        /// What failed, one line.
        message: String,
        /// The peers tried, each with its error and failure kind.
        peers: Vec<PeerOutcome>,
    },
    /// A settings value that makes no sense (a usage error, as a bad flag).
    #[error("{message}")]
    Usage {
        /// What is wrong, one line.
        message: String,
        /// What to do about it.
        hint: Option<String>,
    },
    /// A store operation failed.
    #[error("{context}")]
    Store {
        /// What was being done.
        context: String,
        /// The store's error.
        #[source]
        source: left_store::Error,
    },
    /// A store operation failed (its message says what).
    #[error("{0}")]
    StoreOp(#[from] left_store::Error),
    /// The device key or the share key could not be read.
    #[error("{context}")]
    Identity {
        /// What was being read.
        context: String,
        /// Why not.
        #[source]
        source: crate::identity::Error,
    },
    /// The peer book could not be read.
    #[error("{context}")]
    PeerBook {
        /// What was being done.
        context: String,
        /// Why not.
        #[source]
        source: crate::peers::Error,
    },
    /// A socket, runtime or control-socket failure.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why not.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The caller's callback failed to print (a closed stdout, say).
    #[error("{0}")]
    Output(#[source] std::io::Error),
    /// Any other failure, already one line.
    #[error("{0}")]
    Other(String),
}

/// `label: error` of every failed peer, `; `-separated.
pub fn peer_errors(peers: &[PeerOutcome]) -> String {
    peers
        .iter()
        .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.label)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A use case's result.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds what was being done to a store (or other) failure, as `anyhow`'s `context` did.
pub(crate) trait Context<T> {
    /// Wraps the error with `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// Wraps the error with the message `what` returns.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, left_store::Error> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Store {
            context: what.into(),
            source,
        })
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Store {
            context: what().into(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, crate::identity::Error> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Identity {
            context: what.into(),
            source,
        })
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.context(what())
    }
}

impl<T> Context<T> for std::result::Result<T, crate::peers::Error> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::PeerBook {
            context: what.into(),
            source,
        })
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.context(what())
    }
}

/// Wraps any error as [`Error::Io`] with what was being done.
pub(crate) fn io_error(
    context: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Io {
        context: context.into(),
        source: Box::new(source),
    }
}
