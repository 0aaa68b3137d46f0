//! What goes wrong in a session, typed by who can fix it: a peer ([`PeerError`], with the
//! [`PeerFailure`] kind that says what the user can do) or this store ([`LocalError`], which stops
//! a fetch at once whatever the peers). Callers pick hints and exit codes from these types, never
//! from the text.

pub use crate::sync::LocalError;

/// A peer's failure, by what the user can do about it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerFailure {
    /// It could not be reached or stopped answering (not running, wrong address or port, a
    /// firewall, a stall, a server shutting down).
    Unreachable,
    /// It sent data that failed verification or broke the protocol (a chunk or node that does
    /// not match its id, a malformed frame, `NotFound` for what it offered). Nothing unverified
    /// from it was kept.
    Misbehaved,
    /// It refuses this device, or this side refuses its device (pinned or revoked devices).
    Refused,
    /// Its `--encryption` setting differs from ours.
    Encryption,
    /// It serves another share (another share key).
    OtherShare,
    /// It speaks another protocol or wire version.
    Version,
    /// Anything else (an error it reported, a local problem with its address).
    Other,
}

/// A failure of one peer; `fatal` ones are not retried (the peer refuses us, or lies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct PeerError {
    /// What happened, one line (sanitized: a peer's words are escaped and bounded).
    pub reason: String,
    /// Not worth retrying this round: the peer refuses us, or lied.
    pub fatal: bool,
    /// What the user can do about it.
    pub kind: PeerFailure,
}

impl PeerError {
    /// A failure worth retrying.
    pub fn retry(kind: PeerFailure, reason: impl Into<String>) -> PeerError {
        PeerError {
            reason: reason.into(),
            fatal: false,
            kind,
        }
    }
    /// A failure not retried this round.
    pub fn fatal(kind: PeerFailure, reason: impl Into<String>) -> PeerError {
        PeerError {
            reason: reason.into(),
            fatal: true,
            kind,
        }
    }
}

/// A session's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The peer failed, or the pull could not finish with the peers it had.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The local store failed.
    #[error(transparent)]
    Local(#[from] LocalError),
}

impl From<left_store::Error> for Error {
    fn from(e: left_store::Error) -> Error {
        Error::Local(e.into())
    }
}

impl From<crate::sync::Failure> for Error {
    /// A pull's failure: a store error stays local; anything else is the peers' (kind `Other`).
    fn from(f: crate::sync::Failure) -> Error {
        match f {
            crate::sync::Failure::Local(l) => Error::Local(l),
            crate::sync::Failure::Peers(r) => Error::Peer(PeerError::retry(PeerFailure::Other, r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_stays_a_typed_local_error() {
        let store = left_store::Error::DiskFull {
            path: "/s/blobs".into(),
        };
        let e = Error::from(store);
        assert!(matches!(&e, Error::Local(l) if l.disk_full), "{e:?}");
        assert_eq!(
            e.to_string(),
            "local store: disk full while writing /s/blobs"
        );
        let f = crate::sync::Failure::Peers("no peer has the head".into());
        match Error::from(f) {
            Error::Peer(p) => {
                assert_eq!((p.kind, p.fatal), (PeerFailure::Other, false));
                assert_eq!(p.to_string(), "no peer has the head");
            }
            other => panic!("{other:?}"),
        }
    }
}
