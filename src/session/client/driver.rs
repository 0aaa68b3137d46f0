//! One pull driven over the sessions of the peers that offered its head: a reader task per peer
//! (decoding, and verifying chunks off the engine's thread) and a writer task per peer feed one
//! loop that hands every message and timeout to the [`Pull`], applies each effect to the store
//! before polling again (consecutive chunks in one write), stages big files as their chunks
//! arrive, takes in peers that join late, and ends the pull after `timeout` without an arrival.
//!
//! What this module is not: it opens no session and picks no head (see [`super::fetch`]); it
//! retries nothing: a pull that lost its peers returns, and the caller decides.

use std::sync::Arc;
use std::time::Instant;

use left_store::{NodeId, Store};
use tokio::sync::mpsc;

use super::connect::{error_kind, net_error, read_error, Session};
use super::fetch::{FetchConfig, FetchProgress};
use crate::ecp::{ErrorCode, Message};
use crate::net::driver::{Connection, CODE_NO_ERROR};
use crate::session::{sanitize, Error, LocalError, PeerError, PeerFailure, CODE_PROTOCOL_ERROR};
use crate::sync::{DropCause, Effect, Output, PeerId, Pull, PullStats};

pub(super) struct PullResult {
    pub(super) outcome: Result<(), Error>,
    pub(super) stats: PullStats,
    /// When the last node or chunk arrived.
    pub(super) last_arrival: Option<Instant>,
    /// Peers dropped for saying they lack something beneath the head.
    pub(super) missing: Vec<usize>,
    pub(super) peer_errors: Vec<(usize, PeerError)>,
}

enum Event {
    Message(usize, Message),
    /// A chunk, verified by the reader task (off the engine's thread).
    Chunk {
        slot: usize,
        id: left_store::ChunkId,
        bytes: Vec<u8>,
        check: Result<usize, crate::ecp::VerifyError>,
    },
    Failed(usize, PeerError),
}

/// Most messages handled before the engine is polled again.
const EVENT_BATCH: usize = 32;

/// Starts the reader and writer tasks of a peer joining a pull in `slot`.
fn attach(
    slot: usize,
    s: Session,
    tx: &mpsc::Sender<Event>,
    cfg: &FetchConfig,
    tasks: &mut tokio::task::JoinSet<()>,
) -> (mpsc::UnboundedSender<Message>, Connection) {
    let Session {
        conn,
        mut reader,
        mut writer,
        ..
    } = s;
    let txr = tx.clone();
    let max_chunk = cfg.pull.max_chunk_size;
    let stager = cfg.stager.clone();
    tasks.spawn(async move {
        loop {
            let ev = match reader.next().await {
                // Chunks are verified here, in parallel with the engine and the store writes
                // (and their plain bytes staged, see `stage`).
                Ok(Some(Message::Chunk { id, bytes })) => {
                    let check = crate::ecp::verify_chunk_with(&id, &bytes, max_chunk, |plain| {
                        if let Some(s) = &stager {
                            s.chunk_verified(&id, plain);
                        }
                    });
                    Event::Chunk {
                        slot,
                        id,
                        bytes,
                        check,
                    }
                }
                Ok(Some(m)) => Event::Message(slot, m),
                Ok(None) => Event::Failed(
                    slot,
                    PeerError::retry(PeerFailure::Unreachable, "the peer ended the session"),
                ),
                Err(e) => Event::Failed(slot, read_error(&e)),
            };
            let last = matches!(ev, Event::Failed(..));
            if txr.send(ev).await.is_err() || last {
                return;
            }
        }
    });
    let (wtx, mut wrx) = mpsc::unbounded_channel::<Message>();
    let txw = tx.clone();
    tasks.spawn(async move {
        while let Some(m) = wrx.recv().await {
            let mut ok = writer.queue(&m).is_ok();
            while let Ok(m) = wrx.try_recv() {
                ok &= writer.queue(&m).is_ok();
            }
            if let Err(e) = writer.flush().await {
                let _ = txw.send(Event::Failed(slot, net_error(&e))).await;
                return;
            }
            if !ok {
                return;
            }
        }
        writer.finish();
    });
    (wtx, conn)
}

/// Where a pull starts from: the fetch's byte counts so far (for the progress bar) and the time
/// `timeout` counts from.
pub(super) struct Baseline {
    pub(super) discovered: u64,
    pub(super) fetched: u64,
    pub(super) idle_since: Instant,
}

pub(super) async fn run_pull(
    store: &Arc<Store>,
    head: NodeId,
    sessions: Vec<(usize, Session)>,
    mut late: mpsc::UnboundedReceiver<(usize, Session)>,
    cfg: &FetchConfig,
    progress: &dyn FetchProgress,
    base: Baseline,
) -> PullResult {
    let (tx, mut rx) = mpsc::channel::<Event>(cfg.queue.max(1));
    let mut writers = Vec::new();
    let mut conns = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, (i, s)) in sessions.into_iter().enumerate() {
        let (w, conn) = attach(slot, s, &tx, cfg, &mut tasks);
        writers.push(Some(w));
        conns.push((i, conn));
    }
    let mut late_open = true;
    let peers: Vec<PeerId> = (0..conns.len() as u64).map(PeerId).collect();
    let mut pull = Pull::new(head, &peers, Instant::now(), cfg.pull.clone());
    let mut peer_errors: Vec<(usize, PeerError)> = Vec::new();
    let mut missing: Vec<usize> = Vec::new();
    let (mut arrivals, mut last_arrival) = (0u64, None);
    // Verified chunks handed out by the engine and not stored yet (see `store_chunks`).
    let mut chunks: Vec<(left_store::ChunkId, Vec<u8>, u32)> = Vec::new();
    let outcome = loop {
        // Drain the engine, applying each effect before it can look at the store again
        // (consecutive chunks are gathered and stored in one write).
        let mut finished = None;
        loop {
            // Chunks handed out are stored in one write before the engine may look at the store
            // again, and before any other effect (a completeness mark) is applied.
            if !pull.has_effects() && !chunks.is_empty() {
                if let Err(err) = store_chunks(store, &mut chunks) {
                    finished = Some(Err(Error::Local(LocalError::from(err))));
                    break;
                }
            }
            let Some(out) = pull.poll(Instant::now(), &**store) else {
                break;
            };
            match out {
                Output::Effect(Effect::StoreChunk(id, bytes, plain_len)) => {
                    chunks.push((id, bytes, plain_len));
                }
                Output::Send { peer, message } => {
                    if let Some(Some(w)) = writers.get(peer.0 as usize) {
                        let _ = w.send(message);
                    }
                }
                Output::Effect(e) => {
                    // The gathered chunks go first: the effect may mark their files complete.
                    if !matches!(e, Effect::PeerDropped { .. }) && !chunks.is_empty() {
                        if let Err(err) = store_chunks(store, &mut chunks) {
                            finished = Some(Err(Error::Local(LocalError::from(err))));
                            break;
                        }
                    }
                    match e {
                        Effect::PeerDropped {
                            peer,
                            reason,
                            cause,
                        } => {
                            let slot = peer.0 as usize;
                            let (i, conn) = &conns[slot];
                            // Dropped for lying (bad data, NotFound for what it offered): not
                            // retried. A stall, a Bye (a server shutting down) or an Error may pass.
                            let kind = match cause {
                                DropCause::BadData | DropCause::Missing => PeerFailure::Misbehaved,
                                DropCause::Stalled | DropCause::Ended => PeerFailure::Unreachable,
                                DropCause::PeerError(code) => error_kind(ErrorCode(code)),
                                DropCause::Removed => PeerFailure::Other,
                            };
                            if cause == DropCause::Missing {
                                missing.push(*i);
                            }
                            peer_errors.push((
                                *i,
                                PeerError {
                                    reason: sanitize(&reason),
                                    // Missing is retried once: the server may have collected garbage
                                    // since it offered the head (see `attempt`).
                                    fatal: cause == DropCause::BadData,
                                    kind,
                                },
                            ));
                            conn.close(CODE_PROTOCOL_ERROR, reason.as_bytes());
                            writers[slot] = None;
                        }
                        Effect::Done(_) => finished = Some(Ok(())),
                        Effect::Failed(f) => finished = Some(Err(f.into())),
                        other => {
                            if let Err(err) = crate::session::apply_to_store(store, &other) {
                                finished = Some(Err(Error::Local(LocalError::from(err))));
                                break;
                            }
                            // Before the engine can ask for the node's children.
                            if let (Effect::StoreNode(id, bytes), Some(s)) = (&other, &cfg.stager) {
                                s.node_stored(*id, bytes);
                            }
                        }
                    }
                }
            }
        }
        let st = pull.stats();
        let arrived = st.nodes_fetched + st.chunks_fetched;
        if arrived > arrivals {
            arrivals = arrived;
            last_arrival = Some(Instant::now());
        }
        progress.update(
            base.discovered + st.chunk_bytes_discovered,
            base.fetched + st.chunk_bytes_fetched,
        );
        if let Some(f) = finished {
            break f;
        }
        let deadline = pull.poll_timeout();
        let idle_deadline =
            last_arrival.unwrap_or(base.idle_since).max(base.idle_since) + cfg.timeout;
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = late.recv(), if late_open => {
                match joined {
                    Some((i, s)) => {
                        let slot = conns.len();
                        let (w, conn) = attach(slot, s, &tx, cfg, &mut tasks);
                        writers.push(Some(w));
                        conns.push((i, conn));
                        pull.add_peer(Instant::now(), PeerId(slot as u64));
                    }
                    None => late_open = false,
                }
            }
            ev = rx.recv() => {
                // `tx` is held here, so the channel never ends.
                let Some(ev) = ev else { continue };
                let mut ev = Some(ev);
                let mut n = 0;
                while let Some(e) = ev.take() {
                    handle_event(&mut pull, e, &conns, &mut peer_errors, &mut writers);
                    n += 1;
                    if n >= EVENT_BATCH {
                        break;
                    }
                    ev = rx.try_recv().ok();
                }
            }
            _ = sleep => pull.handle_timeout(Instant::now()),
            _ = tokio::time::sleep_until(idle_deadline.into()) => {
                // Peers that answer but deliver nothing (`Working` forever, say) are not stalls
                // to the engine; `timeout` without an arrival ends the pull all the same.
                let secs = cfg.timeout.as_secs_f64();
                for p in pull.peers().collect::<Vec<_>>() {
                    let slot = p.0 as usize;
                    let owed = crate::sync::owed_note(pull.oldest_owed(p));
                    peer_errors.push((
                        conns[slot].0,
                        PeerError::retry(
                            PeerFailure::Unreachable,
                            format!("stalled: no object arrived from it for {secs:.1} s{owed}"),
                        ),
                    ));
                }
                break Err(Error::Peer(PeerError::retry(
                    PeerFailure::Other,
                    format!("no progress for {secs:.1} s"),
                )));
            }
        }
    };
    let stats = pull.stats().clone();
    drop(writers);
    tasks.abort_all();
    for (_, conn) in &conns {
        conn.close(CODE_NO_ERROR, b"sync done");
    }
    PullResult {
        outcome,
        stats,
        last_arrival,
        peer_errors,
        missing,
    }
}

/// Stores the gathered chunks in one write and empties the list.
fn store_chunks(
    store: &Store,
    chunks: &mut Vec<(left_store::ChunkId, Vec<u8>, u32)>,
) -> Result<(), left_store::Error> {
    let batch: Vec<(left_store::ChunkId, &[u8], u32)> = chunks
        .iter()
        .map(|(id, bytes, n)| (*id, bytes.as_slice(), *n))
        .collect();
    store.put_chunks_verified(&batch)?;
    chunks.clear();
    Ok(())
}

fn handle_event(
    pull: &mut Pull,
    ev: Event,
    conns: &[(usize, Connection)],
    peer_errors: &mut Vec<(usize, PeerError)>,
    writers: &mut [Option<mpsc::UnboundedSender<Message>>],
) {
    let now = Instant::now();
    match ev {
        Event::Message(slot, m) => pull.handle_message(now, PeerId(slot as u64), m),
        Event::Chunk {
            slot,
            id,
            bytes,
            check,
        } => pull.handle_checked_chunk(now, PeerId(slot as u64), id, bytes, check),
        Event::Failed(slot, err) => {
            if err.fatal {
                // A malformed message: the peer learns why from the close reason.
                conns[slot]
                    .1
                    .close(CODE_PROTOCOL_ERROR, err.reason.as_bytes());
            }
            if pull.peers().any(|p| p.0 as usize == slot) {
                pull.remove_peer(PeerId(slot as u64), &err.reason);
                peer_errors.push((conns[slot].0, err));
            }
            writers[slot] = None;
        }
    }
}
