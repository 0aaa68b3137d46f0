//! The history of a peer's head and the peers' heads alone: [`fetch_history`] fetches the
//! snapshot headers between a fetched head and what this store knows (so ancestry and `left log`
//! see the chain), [`heads`] asks every target for its head without fetching anything.
//!
//! What this module is not: it fetches no tree (that is [`super::fetch`]); headers are stored
//! shallow.

use std::net::SocketAddr;

use left_store::{NodeId, Store};

use super::connect::{close_session, open_session, Endpoints, Greeting, Target};
use super::fetch::{FetchConfig, PeerOutcome, ANSWER_GRACE};
use super::nodes::{request_nodes, NodeSession};
use crate::session::{Error, PeerError, PeerFailure};

/// Most snapshot headers [`fetch_history`] fetches in one call.
pub const HISTORY_LIMIT: usize = 10_000;

/// Fetches from the peer at `addr` the snapshot headers between `head` (stored here) and the
/// snapshots this store already knows, so ancestry (`Store::is_ancestor`) and `left log` see the
/// chain: a peer that made two snapshots since we last synced is ahead of us, not diverged.
///
/// Only headers travel (about 200 bytes each; their trees are not fetched: they are stored as
/// shallow, as `gc --keep-last` leaves old snapshots). The walk goes newest first, one request
/// per generation of up to [`crate::ecp::MAX_IDS_PER_REQUEST`] unknown parents, and does not go
/// below `floor_ns` (snapshots older than the local head cannot lead to it: a snapshot is never
/// older than its parents) or past `limit` headers. A parent the peer lacks (its own history
/// is shallow) ends that branch. Every header is checked against its id and must be a snapshot;
/// anything else ends the call with the reason. Returns the number of headers stored.
pub async fn fetch_history(
    endpoints: &Endpoints,
    addr: SocketAddr,
    cfg: &FetchConfig,
    store: &Store,
    head: NodeId,
    floor_ns: i64,
    limit: usize,
) -> Result<usize, Error> {
    let unknown_parents = |ids: &[NodeId]| -> Result<Vec<NodeId>, Error> {
        let mut out = Vec::new();
        for id in ids {
            let snap = store.snapshot(*id)?;
            if snap.time_ns < floor_ns {
                continue;
            }
            for p in snap.parents {
                if store.get_node(p)?.is_none() && !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    };
    let mut want = unknown_parents(&[head])?;
    if want.is_empty() {
        return Ok(0);
    }
    let endpoint = endpoints
        .for_addr(addr)
        .ok_or_else(|| PeerError::fatal(PeerFailure::Other, format!("no endpoint for {addr}")))?;
    let mut device = None;
    let mut s = tokio::time::timeout(
        cfg.connect_timeout,
        open_session(endpoint, addr, &Greeting::new(cfg, store), &mut device),
    )
    .await
    .map_err(|_| PeerError::retry(PeerFailure::Unreachable, "no answer"))??;
    let mut stored = 0;
    let stall = cfg.pull.stall_timeout;
    let result = async {
        while !want.is_empty() && stored < limit {
            want.truncate(crate::ecp::MAX_IDS_PER_REQUEST.min(limit - stored));
            let got = request_nodes(&mut s, &want, stall, &mut |id, bytes| {
                if store
                    .put_snapshot_header(id, bytes)
                    .map_err(|e| header_error(id, e))?
                {
                    stored += 1;
                }
                Ok(())
            })
            .await?;
            want = unknown_parents(&got)?;
        }
        Ok::<(), Error>(())
    }
    .await;
    close_session(s).await;
    result.map(|()| stored)
}

/// A header the store refused: a local failure when the store failed, else the peer's (the header
/// does not decode as a snapshot).
fn header_error(id: NodeId, e: left_store::Error) -> Error {
    match e {
        left_store::Error::Corrupt { .. } => {
            let why = format!("snapshot {}: {e}", id.fmt_short());
            PeerError::fatal(PeerFailure::Misbehaved, why).into()
        }
        other => other.into(),
    }
}

/// Asks every target for its head at once (handshake, `Hello`, `Have`), fetching nothing: one
/// outcome per target, in order, with its device and head (ours when it answered `Same`), or the
/// error and its kind. Each is bounded by `cfg.connect_timeout`; once one peer has answered, the
/// others get [`ANSWER_GRACE`] more (as in [`fetch`]). Used to find out whether any peer can be
/// reached before changing anything that only a fetch can make good again.
pub async fn heads(
    endpoints: &Endpoints,
    targets: &[Target],
    cfg: &FetchConfig,
    store: &Store,
) -> Vec<PeerOutcome> {
    type Fut<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = PeerOutcome> + Send + 'a>>;
    let local_head = store.published().ok().flatten();
    let mut futs: Vec<Fut<'_>> = targets
        .iter()
        .map(|t| {
            Box::pin(async move {
                let mut out = PeerOutcome {
                    label: t.label.clone(),
                    addr: Some(t.addr),
                    ..PeerOutcome::default()
                };
                match NodeSession::open(endpoints, t.addr, cfg, store).await {
                    Ok(s) => {
                        out.device = s.device();
                        out.head = s.head();
                        out.same = s.head().is_some() && s.head() == local_head;
                        s.close().await;
                    }
                    Err(e) => out.error = Some(e),
                }
                out
            }) as Fut<'_>
        })
        .collect();
    let mut done: Vec<Option<PeerOutcome>> = targets.iter().map(|_| None).collect();
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(done.iter_mut()) {
            if o.is_some() {
                continue;
            }
            match std::future::Future::poll(f.as_mut(), cx) {
                std::task::Poll::Ready(v) => {
                    if v.error.is_none() && grace.is_none() {
                        grace = Some(Box::pin(tokio::time::sleep(ANSWER_GRACE)));
                    }
                    *o = Some(v);
                }
                std::task::Poll::Pending => pending = true,
            }
        }
        if !pending {
            return std::task::Poll::Ready(());
        }
        let grace_over = grace
            .as_mut()
            .is_some_and(|g| std::future::Future::poll(g.as_mut(), cx).is_ready());
        if grace_over {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    // Dropping the connects still running gives up on them.
    drop(futs);
    done.into_iter()
        .zip(targets)
        .map(|(o, t)| {
            o.unwrap_or_else(|| PeerOutcome {
                label: t.label.clone(),
                addr: Some(t.addr),
                error: Some(PeerError::retry(
                    PeerFailure::Unreachable,
                    format!(
                        "no answer within {:.1} s, while the other peers were done",
                        ANSWER_GRACE.as_secs_f64()
                    ),
                )),
                ..PeerOutcome::default()
            })
        })
        .collect()
}
