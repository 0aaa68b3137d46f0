//! The history fetch of the use cases: the ancestry headers of fetched heads (so merge bases can
//! be found), and what a merge still lacks (a history header, a merge base's tree). One copy,
//! used by one-shot sync and by the automatic loop; both call [`crate::session::fetch_history`]
//! through it.
//!
//! What it is not: the wire side of a history fetch (that is [`crate::session`]); it decides
//! nothing about merging (that is [`super::integrate`]).

use std::net::SocketAddr;
use std::sync::Arc;

use left_store::{NodeId, Store};

use super::integrate::Integrated;
use crate::session::{self, Endpoints, FetchConfig, NodeSession, Target, HISTORY_LIMIT};

/// Fetches the whole ancestry (headers only) of `head` from the first of `addrs` that answers.
pub async fn fetch_ancestry(
    eps: &Endpoints,
    fcfg: &FetchConfig,
    store: &Store,
    head: NodeId,
    addrs: &[SocketAddr],
) {
    for &addr in addrs {
        let history = session::fetch_history(eps, addr, fcfg, store, head, i64::MIN, HISTORY_LIMIT);
        if history.await.is_ok() {
            break;
        }
    }
}

/// Fetches the snapshot header `id` and its missing ancestry from the first of `sources` that
/// has it; returns the payload bytes of the header, for the counters.
pub async fn fetch_headers(
    eps: &Endpoints,
    store: &Arc<Store>,
    sources: &[Target],
    fcfg: &FetchConfig,
    id: NodeId,
) -> u64 {
    for t in sources {
        let Ok(mut s) = NodeSession::open(eps, t.addr, fcfg, store).await else {
            continue;
        };
        let mut bytes = 0u64;
        let mut keep = |nid: NodeId, b: &[u8]| -> Result<(), session::Error> {
            bytes += b.len() as u64;
            store
                .put_snapshot_header(nid, b)
                .map(drop)
                .map_err(Into::into)
        };
        let got = s.get_nodes(&[id], &mut keep).await;
        s.close().await;
        if matches!(&got, Ok(g) if g.contains(&id)) {
            let _ =
                session::fetch_history(eps, t.addr, fcfg, store, id, i64::MIN, HISTORY_LIMIT).await;
            return bytes;
        }
    }
    0
}

/// Fetches what the integration `ig` lacked from `sources`: its missing history headers, then
/// the trees of its merge bases (not staged: a merge base is not checked out, and a stager would
/// empty the stage folder the head's staged files are waiting in). Returns (payload bytes,
/// chunks) for the counters.
pub async fn fetch_missing(
    eps: &Endpoints,
    store: &Arc<Store>,
    sources: &[Target],
    fcfg: &FetchConfig,
    ig: &Integrated,
) -> (u64, u64) {
    let (mut payload, mut chunks) = (0, 0);
    for id in &ig.need_headers {
        payload += fetch_headers(eps, store, sources, fcfg, *id).await;
    }
    for base in &ig.need_trees {
        let mut want = fcfg.clone();
        want.want = Some(*base);
        want.announce = false;
        want.stage = false;
        let r = session::fetch(eps, store.clone(), sources, &want, &()).await;
        payload += r.stats.payload_bytes_received;
        chunks += r.stats.chunks_fetched;
    }
    (payload, chunks)
}
