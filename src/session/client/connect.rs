//! Opening and closing a session with one peer, and naming its failures: the handshake over an
//! [`Endpoint`], our `Hello` and `Have` (or `Update`), the peer's answer ([`Answer`]: `Same`,
//! `Excess` or nothing to offer), `Bye` on the way out; and the mapping of every transport, decode
//! and protocol error to a one-line reason with a [`PeerFailure`] kind and whether it is worth
//! retrying ([`PeerError`]).
//!
//! What this module is not: it fetches nothing (a session is handed to the pull driver,
//! [`super::driver`], or to [`super::nodes`]) and decides nothing about retries or backoff
//! ([`super::fetch`] does).

use std::net::SocketAddr;
use std::time::Duration;

use left_store::{NodeId, Store};

use super::fetch::{DevicePolicy, FetchConfig};
use crate::ecp::{check_hello, DecodeError, ErrorCode, HelloMismatch, Message};
use crate::net::driver::{Connection, Endpoint, NetError, CODE_NO_ERROR, CODE_REFUSED};
use crate::rdt::ConnectionError;
use crate::session::wire::{FrameReader, FrameWriter, ReadError};
use crate::session::{sanitize, PeerError, PeerFailure, CODE_PROTOCOL_ERROR};

/// A peer to pull from: how the user named it and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// As given on the command line (for messages).
    pub label: String,
    /// Its resolved address.
    pub addr: SocketAddr,
}

/// The client endpoints: one per address family in use.
#[derive(Clone, Default)]
pub struct Endpoints {
    /// For IPv4 peers.
    pub v4: Option<Endpoint>,
    /// For IPv6 peers.
    pub v6: Option<Endpoint>,
}

impl Endpoints {
    /// The endpoint to reach `addr` with.
    pub fn for_addr(&self, addr: SocketAddr) -> Option<&Endpoint> {
        if addr.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    /// UDP payload bytes `(sent, received)` over every endpoint.
    pub fn udp_bytes(&self) -> (u64, u64) {
        [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .map(|e| e.udp_bytes())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Closes every endpoint (waits for the closes to go out).
    pub async fn close(&self) {
        for e in [&self.v4, &self.v6].into_iter().flatten() {
            e.close().await;
        }
    }
}

/// Why a peer may not answer a handshake at all: the transport cannot tell these apart (a peer
/// holding another share key cannot even decrypt our first packet).
pub(super) const NO_ANSWER_CAUSES: &str = "not running, unreachable, or holding another share key";

pub(super) fn net_error(e: &NetError) -> PeerError {
    use PeerFailure as F;
    let (kind, fatal) = match e {
        NetError::ConnectionLost(c) => match c {
            ConnectionError::EncryptionMismatch { .. } => (F::Encryption, true),
            ConnectionError::PeerKeyRefused { .. } | ConnectionError::RefusedByPeer => {
                (F::Refused, true)
            }
            ConnectionError::PeerClosed { code, .. } if *code == CODE_REFUSED => (F::Refused, true),
            ConnectionError::PeerClosed { code, .. } if *code == CODE_PROTOCOL_ERROR => {
                (F::Other, true)
            }
            ConnectionError::ProtocolViolation { .. } => (F::Misbehaved, false),
            ConnectionError::LocallyClosed => (F::Other, false),
            _ => (F::Unreachable, false),
        },
        NetError::Io(_) => (F::Unreachable, false),
        _ => (F::Other, false),
    };
    let reason = match e {
        NetError::ConnectionLost(ConnectionError::HandshakeTimedOut) => {
            format!("no answer ({NO_ANSWER_CAUSES})")
        }
        NetError::ConnectionLost(c) => c.to_string(),
        other => other.to_string(),
    };
    PeerError {
        reason,
        fatal,
        kind,
    }
}

pub(super) fn read_error(e: &ReadError) -> PeerError {
    match e {
        ReadError::Net(n) => net_error(n),
        ReadError::Decode(DecodeError::UnknownVersion { .. }) => {
            PeerError::fatal(PeerFailure::Version, e.to_string())
        }
        ReadError::Decode(_) | ReadError::Truncated => {
            PeerError::fatal(PeerFailure::Misbehaved, e.to_string())
        }
    }
}

/// The kind of failure an `Error { code }` from the peer reports.
pub(super) fn error_kind(code: ErrorCode) -> PeerFailure {
    match code {
        ErrorCode::PROTOCOL_VERSION => PeerFailure::Version,
        ErrorCode::SHARE_MISMATCH => PeerFailure::OtherShare,
        ErrorCode::ENCRYPTION_MISMATCH => PeerFailure::Encryption,
        ErrorCode::NOT_ALLOWED => PeerFailure::Refused,
        _ => PeerFailure::Other,
    }
}

/// The kind of failure a mismatch between our `Hello` and the peer's is.
fn hello_kind(e: &HelloMismatch) -> PeerFailure {
    match e {
        HelloMismatch::Protocol { .. } => PeerFailure::Version,
        HelloMismatch::Share { .. } => PeerFailure::OtherShare,
        HelloMismatch::Encryption { .. } => PeerFailure::Encryption,
        HelloMismatch::NotHello(_) => PeerFailure::Misbehaved,
    }
}

/// What a peer said to our `Have`.
pub(super) enum Answer {
    Same,
    Excess(NodeId),
    Nothing,
}

/// A connected peer whose `Have` was answered.
pub(super) struct Session {
    pub(super) conn: Connection,
    pub(super) reader: FrameReader,
    pub(super) writer: FrameWriter,
    pub(super) answer: Answer,
}

/// How to greet a peer: our `Hello`, then `Have` (or `Update` when announcing) with our head.
#[derive(Clone)]
pub(super) struct Greeting {
    hello: Message,
    pub(super) local_head: Option<NodeId>,
    /// `Some(parents)`: say `Update` with these parents.
    announce: Option<Vec<NodeId>>,
    allow: Option<DevicePolicy>,
}

impl Greeting {
    pub(super) fn new(cfg: &FetchConfig, store: &Store) -> Greeting {
        let local_head = store.published().ok().flatten();
        let announce = match (cfg.announce, local_head) {
            (true, Some(h)) => Some(
                store
                    .snapshot(h)
                    .map(|s| {
                        let mut p = s.parents;
                        p.truncate(crate::ecp::MAX_PARENTS);
                        p
                    })
                    .unwrap_or_default(),
            ),
            _ => None,
        };
        Greeting {
            hello: cfg.hello.clone(),
            local_head,
            announce,
            allow: cfg.allow.clone(),
        }
    }
}

pub(super) async fn open_session(
    endpoint: &Endpoint,
    addr: SocketAddr,
    greeting: &Greeting,
    device: &mut Option<[u8; 32]>,
) -> Result<Session, PeerError> {
    let hello = &greeting.hello;
    let local_head = greeting.local_head;
    let conn = endpoint.connect(addr).await.map_err(|e| net_error(&e))?;
    let key = conn.peer_key();
    *device = Some(key);
    if let Some(allow) = &greeting.allow {
        if !(allow.0)(&key) {
            let reason = format!(
                "device {} is not allowed here (revoked, or not pinned while others are: `left peers`)",
                crate::session::short_device(&key)
            );
            conn.close(CODE_REFUSED, reason.as_bytes());
            return Err(PeerError::fatal(PeerFailure::Refused, reason));
        }
    }
    let mut reader = FrameReader::new(conn.control_stream());
    let mut writer = FrameWriter::new(conn.control_stream());
    let share = match hello {
        Message::Hello { share, .. } => *share,
        _ => return Err(PeerError::fatal(PeerFailure::Other, "bad local hello")),
    };
    writer
        .queue(hello)
        .map_err(|e| PeerError::fatal(PeerFailure::Other, e.to_string()))?;
    let have = match (&greeting.announce, local_head) {
        (Some(parents), Some(head)) => Message::Update {
            share,
            head,
            parents: parents.clone(),
        },
        _ => Message::Have {
            share,
            head: local_head,
        },
    };
    writer
        .queue(&have)
        .map_err(|e| PeerError::fatal(PeerFailure::Other, e.to_string()))?;
    writer.flush().await.map_err(|e| net_error(&e))?;
    let mut greeted = false;
    loop {
        let msg = match reader.next().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(PeerError::retry(
                    PeerFailure::Unreachable,
                    "the peer ended the session",
                ))
            }
            Err(e) => {
                let err = read_error(&e);
                if matches!(e, ReadError::Decode(_)) {
                    let _ = writer
                        .send(&Message::Error {
                            code: ErrorCode::MALFORMED,
                            message: err.reason.clone(),
                        })
                        .await;
                    conn.close(CODE_PROTOCOL_ERROR, err.reason.as_bytes());
                }
                return Err(err);
            }
        };
        match msg {
            Message::Error { code, message } => {
                return Err(PeerError::fatal(
                    error_kind(code),
                    format!(
                        "the peer refused us: {} (code {})",
                        sanitize(&message),
                        code.0
                    ),
                ));
            }
            Message::Hello { .. } if !greeted => {
                if let Err(e) = check_hello(hello, &msg) {
                    let _ = writer.send(&e.to_message()).await;
                    conn.close(CODE_PROTOCOL_ERROR, e.to_string().as_bytes());
                    return Err(PeerError::fatal(hello_kind(&e), e.to_string()));
                }
                greeted = true;
            }
            _ if !greeted => {
                let reason = format!("the peer sent {} before Hello", msg.kind());
                conn.close(CODE_PROTOCOL_ERROR, reason.as_bytes());
                return Err(PeerError::fatal(PeerFailure::Misbehaved, reason));
            }
            Message::Same => {
                return Ok(Session {
                    conn,
                    reader,
                    writer,
                    answer: Answer::Same,
                })
            }
            Message::Excess { head } => {
                return Ok(Session {
                    conn,
                    reader,
                    writer,
                    answer: Answer::Excess(head),
                })
            }
            Message::Have { head, .. } => {
                return Ok(Session {
                    conn,
                    reader,
                    writer,
                    answer: match head {
                        Some(h) if Some(h) != local_head => Answer::Excess(h),
                        Some(_) => Answer::Same,
                        None => Answer::Nothing,
                    },
                })
            }
            Message::Bye => {
                return Err(PeerError::retry(
                    PeerFailure::Unreachable,
                    "the peer ended the session",
                ))
            }
            // Anything else (a repeated Hello, a Working) needs no answer.
            _ => {}
        }
    }
}

/// Says goodbye and closes.
pub(super) async fn close_session(mut s: Session) {
    let _ = tokio::time::timeout(Duration::from_millis(500), s.writer.send(&Message::Bye)).await;
    s.writer.finish();
    s.conn.close(CODE_NO_ERROR, b"sync done");
}
