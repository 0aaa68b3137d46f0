//! Nodes asked by id outside a pull: [`NodeSession`] holds one peer's session open for the few
//! nodes a caller wants one by one (the folders along a path, snapshot headers), each checked
//! against its id before it is handed over, with the `Working` pause and the stall timeout.
//!
//! What this module is not: it walks no tree and keeps no completeness marks (a tree is fetched
//! with [`super::fetch`] and [`super::FetchConfig::want`]).

use std::net::SocketAddr;
use std::time::Duration;

use left_store::{NodeId, Store};

use super::connect::{
    close_session, error_kind, open_session, read_error, Answer, Endpoints, Greeting, Session,
    NO_ANSWER_CAUSES,
};
use super::fetch::FetchConfig;
use crate::ecp::Message;
use crate::session::{sanitize, Error, PeerError, PeerFailure};

/// Takes each node a peer sent, already checked against its id (stores it, say); an error ends
/// the request with that error.
pub type NodeSink<'a> = dyn FnMut(NodeId, &[u8]) -> Result<(), Error> + Send + 'a;

/// Asks the peer for the nodes `want` (at most [`crate::ecp::MAX_IDS_PER_REQUEST`]) and hands
/// each one, checked against its id, to `keep`. Returns the ids received; the others the peer
/// does not have. A node not asked for, a node that does not match its id, an `Error`, or
/// `stall` without an answer ends the call with the reason.
pub(super) async fn request_nodes(
    s: &mut Session,
    want: &[NodeId],
    stall: Duration,
    keep: &mut NodeSink<'_>,
) -> Result<Vec<NodeId>, Error> {
    let lost = |e: crate::session::wire::WriteError| {
        PeerError::retry(PeerFailure::Unreachable, e.to_string())
    };
    s.writer
        .send(&Message::GetNodes { ids: want.to_vec() })
        .await
        .map_err(lost)?;
    let mut got = Vec::new();
    let mut answered = 0;
    while answered < want.len() {
        let msg = tokio::time::timeout(stall, s.reader.next())
            .await
            .map_err(|_| {
                PeerError::retry(
                    PeerFailure::Unreachable,
                    format!("stalled: no answer for {:.1} s", stall.as_secs_f64()),
                )
            })?
            .map_err(|e| read_error(&e))?
            .ok_or_else(|| {
                PeerError::retry(PeerFailure::Unreachable, "the peer ended the session")
            })?;
        match msg {
            Message::Nodes { nodes } => {
                for (id, bytes) in nodes {
                    if !want.contains(&id) || got.contains(&id) {
                        let why = format!("the peer sent node {} unasked", id.fmt_short());
                        return Err(PeerError::fatal(PeerFailure::Misbehaved, why).into());
                    }
                    crate::ecp::verify_node(&id, &bytes)
                        .map_err(|e| PeerError::fatal(PeerFailure::Misbehaved, e.to_string()))?;
                    keep(id, &bytes)?;
                    got.push(id);
                    answered += 1;
                }
            }
            Message::NotFound { ids } => answered += ids.len(),
            Message::Working { retry_after_ms } => {
                tokio::time::sleep(Duration::from_millis(retry_after_ms.min(5_000).into())).await;
                s.writer
                    .send(&Message::GetNodes { ids: want.to_vec() })
                    .await
                    .map_err(lost)?;
                got.clear();
                answered = 0;
            }
            Message::Error { code, message } => {
                let why = format!("the peer refused: {}", sanitize(&message));
                return Err(PeerError::retry(error_kind(code), why).into());
            }
            // Repeated hellos and heads need no answer here.
            _ => {}
        }
    }
    Ok(got)
}

/// A session with one peer outside a [`crate::sync::Pull`]: the head it offered in the `Have` exchange, and
/// nodes asked by id (`GetNodes`), each checked against its id before it is handed over. For the
/// few nodes a caller wants one by one (the folders along a path, snapshot headers); a tree is
/// fetched with [`fetch`] and [`FetchConfig::want`].
pub struct NodeSession {
    s: Session,
    head: Option<NodeId>,
    device: Option<[u8; 32]>,
    stall: Duration,
}

impl NodeSession {
    /// Connects to the peer at `addr` (handshake, `Hello`, `Have` with our head), within
    /// `cfg.connect_timeout`.
    pub async fn open(
        endpoints: &Endpoints,
        addr: SocketAddr,
        cfg: &FetchConfig,
        store: &Store,
    ) -> Result<NodeSession, PeerError> {
        let endpoint = endpoints.for_addr(addr).ok_or_else(|| {
            PeerError::fatal(
                PeerFailure::Other,
                "no local endpoint for its address family",
            )
        })?;
        let greeting = Greeting::new(cfg, store);
        let mut device = None;
        let s = tokio::time::timeout(
            cfg.connect_timeout,
            open_session(endpoint, addr, &greeting, &mut device),
        )
        .await
        .map_err(|_| {
            PeerError::retry(
                PeerFailure::Unreachable,
                format!(
                    "no answer within {:.1} s ({NO_ANSWER_CAUSES})",
                    cfg.connect_timeout.as_secs_f64()
                ),
            )
        })??;
        let head = match s.answer {
            Answer::Excess(h) => Some(h),
            Answer::Same => greeting.local_head,
            Answer::Nothing => None,
        };
        Ok(NodeSession {
            s,
            head,
            device,
            stall: cfg.pull.stall_timeout,
        })
    }

    /// The peer's head (`None`: it has no snapshot).
    pub fn head(&self) -> Option<NodeId> {
        self.head
    }

    /// The peer's device key.
    pub fn device(&self) -> Option<[u8; 32]> {
        self.device
    }

    /// Asks for `ids` (in requests of at most [`crate::ecp::MAX_IDS_PER_REQUEST`]) and hands each
    /// node received, verified against its id, to `keep`. Returns the ids received: the others
    /// the peer does not have.
    pub async fn get_nodes(
        &mut self,
        ids: &[NodeId],
        keep: &mut NodeSink<'_>,
    ) -> Result<Vec<NodeId>, Error> {
        let mut got = Vec::new();
        for part in ids.chunks(crate::ecp::MAX_IDS_PER_REQUEST) {
            got.extend(request_nodes(&mut self.s, part, self.stall, keep).await?);
        }
        Ok(got)
    }

    /// Says goodbye and closes.
    pub async fn close(self) {
        close_session(self.s).await;
    }
}
