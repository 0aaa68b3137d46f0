//! The serving side: an accept loop, one task per connection, a [`ServeSession`] per peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use left_store::Store;
use tokio::sync::{mpsc, watch};

use super::wire::{FrameReader, FrameWriter, ReadError};
use super::{sanitize, short_device, CODE_PROTOCOL_ERROR};
use crate::ecp::{ErrorCode, Message};
use crate::net::driver::{Connection, Endpoint, CODE_NO_ERROR, CODE_REFUSED};
use crate::sync::ServeSession;

/// Who may use the share, asked right after each handshake. The CLI implements it with the peer
/// book; tests use [`AllowAll`] or their own.
pub trait PeerPolicy: Send + Sync + 'static {
    /// Whether the device (its public key) may use the share now.
    fn allows(&self, device: &[u8; 32]) -> bool;
    /// Records that an allowed device connected from `addr` and sent a valid `Hello` (may do
    /// blocking IO: it is called on a blocking thread).
    fn seen(&self, device: &[u8; 32], addr: SocketAddr);
}

/// A policy allowing every device that holds the share key, recording nothing.
pub struct AllowAll;

impl PeerPolicy for AllowAll {
    fn allows(&self, _device: &[u8; 32]) -> bool {
        true
    }
    fn seen(&self, _device: &[u8; 32], _addr: SocketAddr) {}
}

/// Settings of a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Our [`Message::Hello`] (see [`super::hello`]).
    pub hello: Message,
    /// Requests queued per peer before its stream is no longer read (backpressure).
    pub max_pending: usize,
    /// A peer that sends no `Hello` this long after the handshake is dropped.
    pub hello_timeout: Duration,
    /// A peer that takes no reply bytes for this long (it stopped reading) is dropped.
    pub write_timeout: Duration,
    /// Reply bytes encoded before they are written to the stream in one piece.
    pub write_batch: usize,
    /// Sessions served at once, over all peers; a connection beyond it is refused.
    pub max_connections: usize,
    /// Sessions served at once for one device key; a connection beyond it is refused.
    pub max_per_device: usize,
}

/// Default [`ServerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// Default [`ServerConfig::max_per_device`].
pub const DEFAULT_MAX_PER_DEVICE: usize = 4;

/// How long a session that ends with an Error waits for the peer to acknowledge it before the
/// close (which drops unacknowledged data). 1 s was too short on a loaded machine; a peer that
/// never acknowledges holds its session slot this long at most.
const ERROR_LINGER: Duration = Duration::from_secs(3);

impl ServerConfig {
    /// Defaults around `hello`.
    pub fn new(hello: Message) -> ServerConfig {
        ServerConfig {
            hello,
            max_pending: 8,
            hello_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            write_batch: 512 * 1024,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_device: DEFAULT_MAX_PER_DEVICE,
        }
    }
}

/// Something that happened to a peer, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A peer completed the handshake and was allowed.
    Connected {
        /// Its address.
        addr: SocketAddr,
        /// Its device key.
        device: [u8; 32],
    },
    /// A peer was refused (not allowed, or its handshake failed: encryption mismatch, ...).
    Refused {
        /// Its address.
        addr: SocketAddr,
        /// Its device key, when the handshake got that far.
        device: Option<[u8; 32]>,
        /// Why, one line.
        reason: String,
    },
    /// A peer told us its head (`Have` or `Update`); `None` when it has none. Automatic sync
    /// pulls a head it does not hold.
    PeerHead {
        /// Its address (the peer's own endpoint: a serving peer connects from its listening
        /// address, so this is where it can be reached).
        addr: SocketAddr,
        /// Its device key.
        device: [u8; 32],
        /// Its head.
        head: Option<left_store::NodeId>,
        /// It said `Update` (its head just changed), not `Have`.
        update: bool,
    },
    /// A peer's session ended.
    Disconnected {
        /// Its address.
        addr: SocketAddr,
        /// Its device key.
        device: [u8; 32],
        /// `None` for a clean end, else why, one line.
        error: Option<String>,
    },
}

/// A connected peer, for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its device key.
    pub device: [u8; 32],
    /// Its address.
    pub addr: SocketAddr,
    /// UDP payload bytes sent to it.
    pub bytes_sent: u64,
    /// UDP payload bytes received from it.
    pub bytes_received: u64,
}

struct Inner {
    endpoint: Endpoint,
    store: Arc<Store>,
    cfg: ServerConfig,
    policy: Arc<dyn PeerPolicy>,
    events: Option<mpsc::UnboundedSender<ServerEvent>>,
    conns: Mutex<HashMap<u64, Connection>>,
    next_id: AtomicU64,
    gate: Gate,
}

/// Whether peers' object requests may read the store now.
///
/// Sessions read objects only while holding a [`Gate::read`] guard, one reply at a time. Work that
/// deletes objects a pull may want (gc) runs through [`Server::busy_while`]: it marks the server
/// busy, so from then on every session answers object requests (and drops its pending ones) with
/// `Working`, waits until no session is mid-read, runs, and clears the mark. `add` needs none of
/// this: it only adds objects and moves the head, and a snapshot never changes, so a pull of the
/// previous head finds everything it wants.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    idle: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Sessions reading objects now.
    readers: usize,
    /// `busy_while` calls running or waiting.
    holders: usize,
    /// Set by [`Server::set_busy`].
    manual: Option<u32>,
}

/// The `retry_after_ms` told to peers while gc or another `busy_while` runs.
pub(super) const BUSY_RETRY_MS: u32 = 500;

impl GateState {
    fn busy(&self) -> Option<u32> {
        self.manual.or((self.holders > 0).then_some(BUSY_RETRY_MS))
    }
}

/// Held while a session reads objects.
struct ReadGuard<'a>(&'a Gate);

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.readers -= 1;
        if st.readers == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read permit, or the `retry_after_ms` to answer with while busy. Never blocks.
    fn read(&self) -> Result<ReadGuard<'_>, u32> {
        let mut st = self.lock();
        if let Some(ms) = st.busy() {
            return Err(ms);
        }
        st.readers += 1;
        Ok(ReadGuard(self))
    }
}

/// Serves a store to every peer that connects to an endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// A server of `store` on `endpoint`. Events go to `events` when given.
    pub fn new(
        endpoint: Endpoint,
        store: Arc<Store>,
        cfg: ServerConfig,
        policy: Arc<dyn PeerPolicy>,
        events: Option<mpsc::UnboundedSender<ServerEvent>>,
    ) -> Server {
        Server {
            inner: Arc::new(Inner {
                endpoint,
                store,
                cfg,
                policy,
                events,
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                gate: Gate::default(),
            }),
        }
    }

    /// The endpoint served on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Peers connected now.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let conns = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<PeerStatus> = conns
            .values()
            .map(|c| {
                let stats = c.stats().unwrap_or_default();
                PeerStatus {
                    device: c.peer_key(),
                    addr: c.remote_addr(),
                    bytes_sent: stats.sent_bytes,
                    bytes_received: stats.recv_bytes,
                }
            })
            .collect();
        out.sort_by_key(|p| p.addr);
        out
    }

    /// While set, object requests are answered with `Working { retry_after_ms }` (the store is
    /// busy, say with a checkout). Does not wait for replies being read; see
    /// [`Server::busy_while`] for work that must not overlap them.
    pub fn set_busy(&self, retry_after_ms: Option<u32>) {
        self.inner.gate.lock().manual = retry_after_ms;
    }

    /// Runs `work` while peers' object requests are answered with `Working` (retry shortly):
    /// marks the server busy, waits until no session is reading an object (each read is one
    /// reply, so this is short), runs `work`, and clears the mark. Pending requests are dropped
    /// with a `Working` too, so a peer re-asks them afterwards. For work that deletes objects
    /// (gc); blocks, so call it off the async threads (the control socket's handlers run on
    /// blocking threads).
    pub fn busy_while<T>(&self, work: impl FnOnce() -> T) -> T {
        struct Holder<'a>(&'a Gate);
        impl Drop for Holder<'_> {
            fn drop(&mut self) {
                self.0.lock().holders -= 1;
            }
        }
        let gate = &self.inner.gate;
        let mut st = gate.lock();
        st.holders += 1;
        let _holder = Holder(gate);
        while st.readers > 0 {
            st = gate.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        drop(st);
        work()
    }

    /// Accepts and serves peers until `shutdown` turns true; then says `Bye` to every peer, closes
    /// every connection (code 0) and the endpoint.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        let ep = self.inner.endpoint.clone();
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                conn = ep.accept() => {
                    let Some(conn) = conn else { break };
                    let inner = self.inner.clone();
                    let rx = shutdown.clone();
                    tasks.spawn(async move { serve_connection(inner, conn, rx).await });
                }
                failure = ep.next_incoming_failure() => {
                    if let Some((addr, reason)) = failure {
                        self.inner.emit(ServerEvent::Refused {
                            addr,
                            device: None,
                            reason: reason.to_string(),
                        });
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Sessions see the shutdown flag themselves; give their Byes a moment to go out.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .is_err()
        {
            tasks.abort_all();
        }
        ep.close().await;
    }
}

impl Inner {
    fn emit(&self, e: ServerEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }
}

/// Removes a connection from the status table when its task ends, however it ends.
struct Registered<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

async fn serve_connection(inner: Arc<Inner>, conn: Connection, shutdown: watch::Receiver<bool>) {
    let device = conn.peer_key();
    let addr = conn.remote_addr();
    if !inner.policy.allows(&device) {
        let reason = format!(
            "device {} is not allowed to use this share (revoked, or not pinned while others are)",
            short_device(&device)
        );
        conn.close(CODE_REFUSED, reason.as_bytes());
        inner.emit(ServerEvent::Refused {
            addr,
            device: Some(device),
            reason,
        });
        // Let the close go out before the last handle drops.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
        return;
    }
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    if let Some(reason) = register(&inner, id, &conn) {
        conn.close(CODE_REFUSED, reason.as_bytes());
        inner.emit(ServerEvent::Refused {
            addr,
            device: Some(device),
            reason,
        });
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
        return;
    }
    let _registered = Registered { inner: &inner, id };
    inner.emit(ServerEvent::Connected { addr, device });
    let error = match run_session(&inner, &conn, shutdown).await {
        Ok(()) => {
            conn.close(CODE_NO_ERROR, b"session over");
            None
        }
        Err(e) => {
            conn.close(e.code, e.reason.as_bytes());
            Some(e.reason)
        }
    };
    // Give the close (and anything queued before it) a moment to reach the peer.
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
    inner.emit(ServerEvent::Disconnected {
        addr,
        device,
        error,
    });
}

/// Adds the connection to the table unless that would pass a connection cap; else why not.
fn register(inner: &Inner, id: u64, conn: &Connection) -> Option<String> {
    let mut conns = inner.conns.lock().unwrap_or_else(|p| p.into_inner());
    let device = conn.peer_key();
    let cfg = &inner.cfg;
    if conns.len() >= cfg.max_connections {
        return Some(format!(
            "too many peers connected ({}); try again later",
            cfg.max_connections
        ));
    }
    if conns.values().filter(|c| c.peer_key() == device).count() >= cfg.max_per_device {
        return Some(format!(
            "device {} already has {} connections open; close one first",
            short_device(&device),
            cfg.max_per_device
        ));
    }
    conns.insert(id, conn.clone());
    None
}

/// Why a session ended badly: the close code and a one-line reason (also sent to the peer).
struct SessionEnd {
    code: u64,
    reason: String,
}

impl SessionEnd {
    fn protocol(reason: String) -> SessionEnd {
        SessionEnd {
            code: CODE_PROTOCOL_ERROR,
            reason,
        }
    }
}

async fn run_session(
    inner: &Inner,
    conn: &Connection,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionEnd> {
    let cfg = &inner.cfg;
    let mut reader = FrameReader::new(conn.control_stream());
    let mut writer = FrameWriter::new(conn.control_stream());
    let mut session = ServeSession::new(cfg.hello.clone(), cfg.max_pending);
    let mut greeted = false;
    // Set when the session ended badly: its queued reply goes out first.
    let mut end: Option<SessionEnd> = None;
    // A lost connection's reason may be the peer's CLOSE text: escaped and bounded.
    let net = |e: crate::net::driver::NetError| SessionEnd {
        code: CODE_NO_ERROR,
        reason: sanitize(&e.to_string()),
    };
    loop {
        // Answer everything answerable, taking in requests that already arrived as we go.
        loop {
            while session.wants_input() {
                match reader.try_next() {
                    Ok(Some(m)) => {
                        if let Err(e) = handle(inner, conn, &mut session, &mut greeted, m) {
                            end.get_or_insert(e);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(malformed(&mut writer, e).await),
                }
            }
            // Objects are read only with the gate's permit; while busy, pending requests turn
            // into one `Working` and nothing is read.
            let polled = {
                let permit = inner.gate.read();
                session.set_busy(permit.as_ref().err().copied());
                session.poll_message(&*inner.store)
            };
            let msg = match polled {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    let reason = format!("the serving store failed: {e}");
                    let _ = writer.queue(&Message::Error {
                        code: ErrorCode::INTERNAL,
                        message: reason.clone(),
                    });
                    let _ = tokio::time::timeout(Duration::from_secs(1), writer.flush()).await;
                    return Err(SessionEnd {
                        code: CODE_PROTOCOL_ERROR,
                        reason,
                    });
                }
            };
            if writer.queue(&msg).is_err() {
                // A reply over a limit (never from a sound store): say so instead.
                let _ = writer.queue(&Message::Error {
                    code: ErrorCode::INTERNAL,
                    message: format!("cannot encode a {} reply", msg.kind()),
                });
            }
            if writer.buffered() >= cfg.write_batch {
                flush(&mut writer, cfg.write_timeout).await.map_err(net)?;
            }
        }
        flush(&mut writer, cfg.write_timeout).await.map_err(net)?;
        if session.is_closed() {
            match end {
                None => {
                    writer.finish();
                    return Ok(());
                }
                Some(e) => {
                    // Let the Error reach the peer before the close.
                    writer.finish_and_wait(ERROR_LINGER).await;
                    return Err(e);
                }
            }
        }
        let hello_deadline = async {
            if greeted {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(cfg.hello_timeout).await
            }
        };
        tokio::select! {
            r = reader.next() => match r {
                Ok(Some(m)) => {
                    if let Err(e) = handle(inner, conn, &mut session, &mut greeted, m) {
                        end.get_or_insert(e);
                    }
                }
                Ok(None) => {
                    writer.finish();
                    return Ok(());
                }
                // The peer closed the connection cleanly: the session is over.
                Err(ReadError::Net(crate::net::driver::NetError::ConnectionLost(
                    crate::rdt::ConnectionError::PeerClosed { code: CODE_NO_ERROR, .. },
                ))) => return Ok(()),
                Err(ReadError::Net(e)) => return Err(net(e)),
                Err(e) => return Err(malformed(&mut writer, e).await),
            },
            _ = hello_deadline => {
                return Err(SessionEnd::protocol(format!(
                    "no Hello within {} s",
                    cfg.hello_timeout.as_secs()
                )));
            }
            _ = shutdown.changed() => {
                let _ = writer.queue(&Message::Bye);
                let _ = tokio::time::timeout(Duration::from_secs(1), writer.flush()).await;
                writer.finish();
                return Err(SessionEnd { code: CODE_NO_ERROR, reason: "server shutting down".into() });
            }
        }
    }
}

fn handle(
    inner: &Inner,
    conn: &Connection,
    session: &mut ServeSession,
    greeted: &mut bool,
    msg: Message,
) -> Result<(), SessionEnd> {
    let is_hello = matches!(msg, Message::Hello { .. });
    if *greeted {
        let told = match &msg {
            Message::Have { head, .. } => Some((*head, false)),
            Message::Update { head, .. } => Some((Some(*head), true)),
            _ => None,
        };
        if let Some((head, update)) = told {
            inner.emit(ServerEvent::PeerHead {
                addr: conn.remote_addr(),
                device: conn.peer_key(),
                head,
                update,
            });
        }
    }
    // A request arriving while busy is answered with `Working` at once.
    session.set_busy(inner.gate.lock().busy());
    let head = if matches!(msg, Message::Have { .. } | Message::Update { .. }) {
        inner.store.published().ok().flatten()
    } else {
        None
    };
    match session.handle_message(msg, head) {
        Ok(()) => {
            if is_hello && !*greeted {
                // Recorded only now: the device proved the share key (handshake) and sent a
                // valid Hello. The book write is the policy's (rate-limited) business.
                let policy = inner.policy.clone();
                let (device, addr) = (conn.peer_key(), conn.remote_addr());
                drop(tokio::task::spawn_blocking(move || {
                    policy.seen(&device, addr)
                }));
            }
            *greeted |= is_hello;
            Ok(())
        }
        // The reply (an Error for a bad hello) is queued; the loop sends it and ends cleanly,
        // but the reason is worth a log line.
        Err(e) => {
            let reason = sanitize(&e.to_string());
            Err(SessionEnd {
                code: CODE_PROTOCOL_ERROR,
                reason,
            })
        }
    }
}

/// Sends `Error{MALFORMED}` (best effort) for a frame that did not decode.
async fn malformed(writer: &mut FrameWriter, e: ReadError) -> SessionEnd {
    let code = match &e {
        ReadError::Decode(d) => d.code(),
        _ => ErrorCode::MALFORMED,
    };
    // One line, as the decoder put it ("malformed Have message (12 bytes): it ends early").
    let reason = sanitize(&e.to_string());
    let _ = writer.queue(&Message::Error {
        code,
        message: reason.clone(),
    });
    let _ = tokio::time::timeout(ERROR_LINGER, writer.flush()).await;
    writer.finish_and_wait(ERROR_LINGER).await;
    SessionEnd::protocol(reason)
}

async fn flush(
    writer: &mut FrameWriter,
    timeout: Duration,
) -> Result<(), crate::net::driver::NetError> {
    match tokio::time::timeout(timeout, writer.flush()).await {
        Ok(r) => r,
        Err(_) => Err(crate::net::driver::NetError::Io(format!(
            "the peer took no data for {} s",
            timeout.as_secs()
        ))),
    }
}
