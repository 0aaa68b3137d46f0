//! The endpoint's task (`run_driver`): receive batches into the core, fire its timer, hand
//! events to the waiting handles (accept backlog, failures, wake-ups), send what the core writes
//! in GSO batches, and record why and when it stopped. What this is not: the handles callers use
//! (`driver.rs`, `stream.rs`); the socket itself (`udp.rs`); the transport logic (`rdt`).

use std::future::poll_fn;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::{
    NetError, Shared, Slot, State, CODE_NO_ERROR, CODE_REFUSED, MAX_ACCEPT_BACKLOG,
    MAX_INCOMING_FAILURES, SHUTDOWN_GRACE,
};
use crate::net::timer::Timer;
use crate::net::udp::{RecvMeta, Transmit, MAX_RECEIVE_BUFFER, RECEIVE_BATCH};
use crate::rdt::{ConnectionError, Event};

/// The endpoint's task. Ends after shutdown once every connection drained (or the grace period
/// passed), or when the socket fails for good.
pub(super) async fn run_driver(shared: Arc<Shared>) {
    // Marks the endpoint stopped even if the driver panics (a bug in the core), so no handle
    // waits forever.
    let stop = StopGuard {
        shared: shared.clone(),
        reason: None,
    };
    let mut driver = Driver::new(shared);
    let reason = driver.run().await;
    let mut stop = stop;
    stop.reason = reason;
}

/// Records why the driver stopped and wakes every waiting handle, when dropped.
struct StopGuard {
    shared: Arc<Shared>,
    reason: Option<NetError>,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        let reason = self.reason.take().unwrap_or(if std::thread::panicking() {
            NetError::Io("endpoint driver panicked".into())
        } else {
            NetError::EndpointClosed
        });
        let mut state = self.shared.lock();
        state.stopped = Some(reason);
        for slot in state.slots.values_mut() {
            if slot.lost.is_none() {
                slot.lost = Some(ConnectionError::LocallyClosed);
            }
        }
        self.shared.wake_all(&state);
        drop(state);
        self.shared.done.send_replace(true);
    }
}

struct Driver {
    shared: Arc<Shared>,
    recv_storage: Vec<u8>,
    transmit_buf: Vec<u8>,
    shutdown_started: Option<Instant>,
    /// Microsecond timer: the core's pacing deadlines are often under a millisecond away.
    timer: Timer,
}

/// Consecutive receive errors after which the socket is considered dead.
const MAX_RECV_ERRORS: u32 = 100;

impl Driver {
    fn new(shared: Arc<Shared>) -> Self {
        // Room for a whole GSO batch of the largest datagrams the core may write.
        let segments = shared.socket.socket().max_gso_segments().clamp(1, 64);
        Self {
            shared,
            recv_storage: vec![0u8; RECEIVE_BATCH * MAX_RECEIVE_BUFFER],
            transmit_buf: vec![0u8; (segments * 1500).max(MAX_RECEIVE_BUFFER)],
            shutdown_started: None,
            timer: Timer::new(),
        }
    }

    async fn run(&mut self) -> Option<NetError> {
        let shared = self.shared.clone();
        let mut recv_errors = 0u32;
        let mut meta = [RecvMeta::default(); RECEIVE_BATCH];
        loop {
            if let Err(e) = self.flush().await {
                return Some(e);
            }
            let deadline = {
                let mut state = shared.lock();
                if shared.shutting_down.load(Ordering::Acquire) {
                    let now = Instant::now();
                    if self.shutdown_started.is_none() {
                        self.shutdown_started = Some(now);
                        for h in state.core.handles() {
                            if let Some(c) = state.core.connection(h) {
                                c.close(now, CODE_NO_ERROR, b"endpoint closed");
                            }
                        }
                        drop(state);
                        continue; // send the closes first
                    }
                    let grace_over = self
                        .shutdown_started
                        .is_some_and(|t| now - t > SHUTDOWN_GRACE);
                    if state.core.handles().is_empty() || grace_over {
                        return None;
                    }
                }
                let mut deadline = state.core.poll_timeout();
                if let Some(t) = self.shutdown_started {
                    let end = t + SHUTDOWN_GRACE;
                    deadline = Some(deadline.map_or(end, |d| d.min(end)));
                }
                deadline
            };
            let timer = &self.timer;
            let sleep = async {
                match deadline {
                    Some(t) => timer.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let mut bufs: Vec<IoSliceMut<'_>> = self
                .recv_storage
                .chunks_mut(MAX_RECEIVE_BUFFER)
                .map(IoSliceMut::new)
                .collect();
            tokio::select! {
                biased;
                result = poll_fn(|cx| shared.socket.poll_recv(cx, &mut bufs, &mut meta)) => {
                    drop(bufs);
                    match result {
                        Ok(n) => {
                            recv_errors = 0;
                            self.deliver(&meta[..n]);
                        }
                        Err(e) => {
                            recv_errors += 1;
                            tracing::debug!(error = %e, "rdt driver: receive failed");
                            if recv_errors >= MAX_RECV_ERRORS {
                                return Some(NetError::Io(format!("receive keeps failing: {e}")));
                            }
                        }
                    }
                }
                _ = sleep => {}
                _ = shared.wake_driver.notified() => {}
            }
        }
    }

    /// Feeds a received batch to the core. Each datagram is copied into its own buffer so the
    /// stream data the core keeps pins only that datagram, never the whole batch.
    fn deliver(&mut self, meta: &[RecvMeta]) {
        let now = Instant::now();
        let received: usize = meta.iter().map(|m| m.len).sum();
        self.shared
            .udp_received
            .fetch_add(received as u64, Ordering::Relaxed);
        let mut state = self.shared.lock();
        for (m, buf) in meta
            .iter()
            .zip(self.recv_storage.chunks(MAX_RECEIVE_BUFFER))
        {
            let len = m.len.min(buf.len());
            for datagram in buf[..len].chunks(m.stride.max(1)) {
                state
                    .core
                    .handle_datagram(now, m.addr, BytesMut::from(datagram));
            }
        }
    }

    /// Runs due timers, dispatches events and sends everything the core has to send.
    async fn flush(&mut self) -> Result<(), NetError> {
        loop {
            let transmit = {
                let mut state = self.shared.lock();
                let now = Instant::now();
                if state.core.poll_timeout().is_some_and(|t| t <= now) {
                    state.core.handle_timeout(now);
                }
                self.dispatch_events(&mut state);
                let t = state.core.poll_transmit(now, &mut self.transmit_buf);
                if t.is_none() {
                    // Sending can produce events (a closed connection is reaped).
                    self.dispatch_events(&mut state);
                }
                t
            };
            let Some(t) = transmit else { return Ok(()) };
            let size = t.size.min(self.transmit_buf.len());
            let out = Transmit {
                destination: t.destination,
                contents: &self.transmit_buf[..size],
                segment_size: t.segment_size,
            };
            self.shared.socket.send(&out).await?;
            self.shared
                .udp_sent
                .fetch_add(size as u64, Ordering::Relaxed);
        }
    }

    fn dispatch_events(&self, state: &mut State) {
        while let Some((h, event)) = state.core.poll_event() {
            let is_new = !state.slots.contains_key(&h);
            if is_new {
                // Only a responder's completed handshake creates a slot; other events of
                // connections nobody holds (failed handshakes) are dropped, and a lost one is
                // remembered for `next_incoming_failure`.
                if let Event::ConnectionLost { reason } = &event {
                    let addr = state
                        .core
                        .connection_ref(h)
                        .map(|c| c.remote_address())
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                    if state.failed_incoming.len() >= MAX_INCOMING_FAILURES {
                        state.failed_incoming.pop_front();
                    }
                    state.failed_incoming.push_back((addr, reason.clone()));
                    self.shared.failures.notify_waiters();
                }
                if !matches!(event, Event::Connected { .. }) {
                    continue;
                }
                let refuse: Option<&[u8]> = if self.shared.shutting_down.load(Ordering::Acquire) {
                    Some(b"endpoint closed")
                } else if state.incoming.len() >= MAX_ACCEPT_BACKLOG {
                    Some(b"accept backlog full")
                } else {
                    None
                };
                if let Some(reason) = refuse {
                    if let Some(c) = state.core.connection(h) {
                        c.close(Instant::now(), CODE_REFUSED, reason);
                    }
                    continue;
                }
                let slot = Slot::new(state.core.transport_config().max_streams);
                state.slots.insert(h, slot);
                state.incoming.push_back(h);
                self.shared.incoming.notify_waiters();
            }
            let State { core, slots, .. } = &mut *state;
            let Some(slot) = slots.get_mut(&h) else {
                continue;
            };
            match event {
                Event::Connected { peer_key } => slot.peer_key = Some(peer_key),
                Event::StreamOpened { id } => {
                    if slot.opened.len() >= slot.max_streams {
                        if let Some(c) = core.connection_ref(h) {
                            slot.opened.retain(|id| c.has_stream(*id));
                        }
                    }
                    if slot.opened.len() < slot.max_streams {
                        slot.opened.push_back(id);
                    }
                }
                Event::StreamFinished { id } => {
                    slot.finished.insert(id);
                }
                Event::ConnectionLost { reason } => {
                    slot.lost = Some(reason);
                    if slot.abandoned {
                        let notify = slot.notify.clone();
                        slots.remove(&h);
                        notify.notify_waiters();
                        continue;
                    }
                }
                // Readable, writable, reset: the waiting handle re-checks the core.
                _ => {}
            }
            slot.notify.notify_waiters();
        }
    }
}
