//! UDP sockets for the transports: [`UdpSocket`] wraps `quinn-udp` (GSO sends, GRO and `recvmmsg`
//! batched receives) with socket buffers raised through `socket2`; [`ImpairedSocket`] puts the seeded
//! impairment model of [`super::impair`] in front of its sends.
//!
//! Both transports of the benchmark (rdt and quinn) go through [`ImpairedSocket`], so they see the
//! same socket options, the same batching and the same impaired path. With no impairment configured
//! it is a plain pass-through (one branch per send).
//!
//! Impairment applies to outgoing datagrams only; put it on both ends to impair both directions.
//! The impairment state lives in a [`Link`], private to one socket or shared by several (a common
//! bottleneck, for fairness tests). Datagrams that must wait (delay, jitter, reordering, the
//! bandwidth cap, duplicates) go to the link's delay queue, drained by one tokio task per link;
//! tokio timers have millisecond granularity, so a rate-limited path releases datagrams in bursts
//! of at most one millisecond's worth, and a delay is honoured to within a millisecond. The queue
//! holds at most [`MAX_DELAY_QUEUE_BYTES`]; beyond that datagrams are dropped and counted. A link
//! that never gets a socket keeps an idle task until the runtime stops.
//!
//! Sends return [`io::ErrorKind::WouldBlock`] when the socket buffer is full; the caller waits on
//! [`ImpairedSocket::writable`] and retries. The impairment decisions of a send that would block are
//! rolled back, so a retried datagram is decided once and a seeded run stays reproducible for a
//! given sequence of accepted sends.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use quinn_udp::UdpSocketState;
use tokio::io::Interest;
use tokio::sync::Notify;

use super::impair::{Impairment, ImpairmentConfig, ImpairmentError, ImpairmentStats, Verdict};

pub use quinn_udp::RecvMeta;

/// Socket buffer size asked for by default, in bytes, for each direction.
pub const DEFAULT_SOCKET_BUFFER: usize = 8 << 20;

/// Most bytes the impairment delay queue of one socket holds before dropping.
pub const MAX_DELAY_QUEUE_BYTES: usize = 64 << 20;

/// Largest buffer a single receive may fill: a GRO batch of 64 KiB.
pub const MAX_RECEIVE_BUFFER: usize = 64 * 1024;

/// How many buffers one batched receive can fill (`recvmmsg` batch size).
pub const RECEIVE_BATCH: usize = quinn_udp::BATCH_SIZE;

/// Options for opening a socket.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// Requested `SO_SNDBUF` in bytes.
    pub send_buffer: usize,
    /// Requested `SO_RCVBUF` in bytes.
    pub recv_buffer: usize,
    /// Use `SO_SNDBUFFORCE`/`SO_RCVBUFFORCE` (needs `CAP_NET_ADMIN`) when the kernel's
    /// `net.core.[rw]mem_max` caps the request; silently falls back when not permitted.
    pub force_buffers: bool,
    /// Impairment of outgoing datagrams; `None` (the default) is a perfect path.
    pub impairment: Option<ImpairmentConfig>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            send_buffer: DEFAULT_SOCKET_BUFFER,
            recv_buffer: DEFAULT_SOCKET_BUFFER,
            force_buffers: true,
            impairment: None,
        }
    }
}

impl SocketConfig {
    /// The default configuration with impairment taken from `LEFT_IMPAIR`, if set.
    pub fn from_env() -> Result<Self, ImpairmentError> {
        let impairment = ImpairmentConfig::from_env()?;
        if let Some(config) = impairment.as_ref().filter(|c| c.is_active()) {
            // A lossy path on purpose is surprising in production: say so once per socket config.
            tracing::warn!(%config, "{} is set: outgoing datagrams are impaired", super::impair::IMPAIR_ENV);
        }
        Ok(Self {
            impairment,
            ..Self::default()
        })
    }
}

/// Socket buffer sizes asked for and granted. Linux reports twice the size it accounts for
/// (`socket(7)`), so `granted` is what `getsockopt` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSizes {
    /// Requested send buffer in bytes.
    pub send_requested: usize,
    /// Send buffer reported by the kernel.
    pub send_granted: usize,
    /// Requested receive buffer in bytes.
    pub recv_requested: usize,
    /// Receive buffer reported by the kernel.
    pub recv_granted: usize,
}

/// A datagram, or a GSO batch of equal-sized datagrams (the last may be shorter), to send.
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram bytes, or `segment_size`-byte segments back to back.
    pub contents: &'a [u8],
    /// The size of each datagram when `contents` holds several; `None` for one datagram.
    pub segment_size: Option<usize>,
}

impl Transmit<'_> {
    /// The datagrams this transmit carries, in order.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> {
        let size = self.segment_size.unwrap_or(self.contents.len()).max(1);
        self.contents.chunks(size)
    }
}

/// A UDP socket with `quinn-udp` batching and raised buffers. No impairment.
#[derive(Debug)]
pub struct UdpSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    buffers: BufferSizes,
}

impl UdpSocket {
    /// Binds a socket on `addr` (IPv4 or IPv6). Must be called within a tokio runtime.
    pub fn bind(addr: SocketAddr, config: &SocketConfig) -> io::Result<Self> {
        let domain = socket2::Domain::for_address(addr);
        let socket =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            // An IPv6 socket speaks IPv6 only, so that binding [::]:p and 0.0.0.0:p both work.
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        let buffers = raise_buffers(&socket, config)?;
        socket.bind(&addr.into())?;
        let std_socket: std::net::UdpSocket = socket.into();
        let state = UdpSocketState::new((&std_socket).into())?;
        let io = tokio::net::UdpSocket::from_std(std_socket)?;
        Ok(Self { io, state, buffers })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Socket buffer sizes asked for and granted.
    pub fn buffer_sizes(&self) -> BufferSizes {
        self.buffers
    }

    /// Most datagrams one [`Transmit`] may carry (1 without GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Most datagrams one receive buffer may hold (1 without GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Whether sent datagrams might be IP-fragmented (false when don't-fragment is set).
    pub fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    /// Sends without waiting. `WouldBlock` means the buffer is full: await [`Self::writable`].
    ///
    /// Errors that concern only this datagram (too big, ICMP unreachable reported on a later send)
    /// are logged and reported as sent: UDP is lossy and the transport recovers, as quinn does.
    pub fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let t = quinn_udp::Transmit {
            destination: transmit.destination,
            ecn: None,
            contents: transmit.contents,
            segment_size: transmit
                .segment_size
                .filter(|&s| s < transmit.contents.len()),
            src_ip: None,
        };
        match self.io.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.io).into(), &t)
        }) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                tracing::debug!(destination = %transmit.destination, error = %e, "udp send failed, datagram dropped");
                Ok(())
            }
        }
    }

    /// Sends, waiting for buffer space.
    pub async fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        loop {
            match self.try_send(transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                other => return other,
            }
        }
    }

    /// Waits until the socket can probably accept a send.
    pub async fn writable(&self) -> io::Result<()> {
        self.io.writable().await
    }

    /// Receives a batch: fills up to `bufs.len()` buffers, each with one datagram or a GRO batch
    /// described by the matching `meta` (`len`, `stride`, `addr`). Returns how many were filled.
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.io.poll_recv_ready(cx))?;
            if let Ok(n) = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                return Poll::Ready(Ok(n));
            }
        }
    }

    /// Async form of [`Self::poll_recv`].
    pub async fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_recv(cx, bufs, meta)).await
    }
}

/// A [`UdpSocket`] whose sends go through an impaired [`Link`] (or straight out when none is set).
///
/// Cheap to share behind an `Arc`. Dropping the last socket of a link stops the link's
/// delay-queue task and discards what the queue held.
#[derive(Debug)]
pub struct ImpairedSocket {
    socket: Arc<UdpSocket>,
    link: Option<Link>,
}

/// An impaired path: one [`Impairment`] and its delay queue. Usually private to one socket; shared
/// by several sockets ([`ImpairedSocket::with_link`]) it is a common bottleneck, so flows from
/// different sockets compete for one rate limit and one tail-drop queue (for fairness tests).
#[derive(Debug, Clone)]
pub struct Link {
    inner: Arc<LinkInner>,
}

#[derive(Debug)]
struct LinkInner {
    state: Mutex<ImpairState>,
    /// Wakes the delay-queue task when something is queued or a socket closes.
    wake: Notify,
    /// Sockets using the link; the delay-queue task ends when it drops to zero.
    sockets: AtomicU64,
    /// Set when the last socket is gone.
    closed: AtomicBool,
    overflow_drops: AtomicU64,
}

#[derive(Debug)]
struct ImpairState {
    impairment: Impairment,
    queue: BinaryHeap<Reverse<Delayed>>,
    queued_bytes: usize,
    next_seq: u64,
    /// Survivors of a GSO batch, copied together so they still leave in one send.
    scratch: Vec<u8>,
    /// Datagrams of the send in progress that must wait; committed to `queue` only if the send
    /// does not block.
    pending: Vec<Delayed>,
}

#[derive(Debug)]
struct Delayed {
    at: Instant,
    seq: u64,
    destination: SocketAddr,
    bytes: Vec<u8>,
    /// The socket it leaves by.
    via: Arc<UdpSocket>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl Link {
    /// A new impaired path. Must be called within a tokio runtime (the delay queue is a task).
    pub fn new(config: ImpairmentConfig) -> io::Result<Self> {
        let impairment =
            Impairment::new(config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let inner = Arc::new(LinkInner {
            state: Mutex::new(ImpairState {
                impairment,
                queue: BinaryHeap::new(),
                queued_bytes: 0,
                next_seq: 0,
                scratch: Vec::with_capacity(MAX_RECEIVE_BUFFER),
                pending: Vec::new(),
            }),
            wake: Notify::new(),
            sockets: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            overflow_drops: AtomicU64::new(0),
        });
        tokio::spawn(run_delay_queue(inner.clone()));
        Ok(Self { inner })
    }

    /// What the impairment decided so far, with delay-queue overflow drops counted as queue
    /// drops.
    pub fn stats(&self) -> ImpairmentStats {
        let mut stats = lock(&self.inner.state).impairment.stats();
        stats.dropped_queue += self.inner.overflow_drops.load(Ordering::Relaxed);
        stats
    }
}

impl ImpairedSocket {
    /// Binds a socket on `addr`, impaired as `config.impairment` says. Must be called within a
    /// tokio runtime (the delay queue is a task).
    pub fn bind(addr: SocketAddr, config: &SocketConfig) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr, config)?;
        Self::new(socket, config.impairment.clone())
    }

    /// Wraps an open socket with a path of its own. An inactive or absent configuration means no
    /// impairment.
    pub fn new(socket: UdpSocket, impairment: Option<ImpairmentConfig>) -> io::Result<Self> {
        let link = match impairment.filter(ImpairmentConfig::is_active) {
            Some(config) => Some(Link::new(config)?),
            None => None,
        };
        Ok(Self::with_optional_link(socket, link))
    }

    /// Wraps an open socket whose sends go through `link`, which other sockets may share.
    pub fn with_link(socket: UdpSocket, link: &Link) -> Self {
        Self::with_optional_link(socket, Some(link.clone()))
    }

    fn with_optional_link(socket: UdpSocket, link: Option<Link>) -> Self {
        if let Some(link) = &link {
            link.inner.sockets.fetch_add(1, Ordering::AcqRel);
        }
        Self {
            socket: Arc::new(socket),
            link,
        }
    }

    /// The underlying socket (for receiving and socket facts).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Whether an impairment is in force.
    pub fn is_impaired(&self) -> bool {
        self.link.is_some()
    }

    /// The impaired path, if any.
    pub fn link(&self) -> Option<&Link> {
        self.link.as_ref()
    }

    /// What the impairment decided so far (for every socket of a shared link); `None` when not
    /// impaired.
    pub fn impairment_stats(&self) -> Option<ImpairmentStats> {
        self.link.as_ref().map(Link::stats)
    }

    /// Sends through the impairment without waiting; see [`UdpSocket::try_send`].
    pub fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let Some(link) = &self.link else {
            return self.socket.try_send(transmit);
        };
        let mut guard = lock(&link.inner.state);
        let st = &mut *guard;
        let now = Instant::now();
        let saved = st.impairment.clone();
        st.scratch.clear();
        st.pending.clear();
        let mut untouched = true;
        let mut count = 0;
        for segment in transmit.segments() {
            count += 1;
            match st.impairment.decide(now, segment.len()) {
                Verdict::Drop(_) => untouched = false,
                Verdict::Deliver(d) => {
                    if let Some(at) = d.duplicate_at {
                        // Duplicates always take the queue, so a short last segment never ends up
                        // in the middle of a GSO batch.
                        let seq = next_seq(&mut st.next_seq);
                        st.pending.push(Delayed {
                            at,
                            seq,
                            destination: transmit.destination,
                            bytes: segment.to_vec(),
                            via: self.socket.clone(),
                        });
                    }
                    if d.at > now {
                        untouched = false;
                        let mut bytes = segment.to_vec();
                        if let Some(flip) = d.corrupt {
                            flip.apply(&mut bytes);
                        }
                        let seq = next_seq(&mut st.next_seq);
                        st.pending.push(Delayed {
                            at: d.at,
                            seq,
                            destination: transmit.destination,
                            bytes,
                            via: self.socket.clone(),
                        });
                    } else {
                        let start = st.scratch.len();
                        st.scratch.extend_from_slice(segment);
                        if let Some(flip) = d.corrupt {
                            untouched = false;
                            flip.apply(&mut st.scratch[start..]);
                        }
                    }
                }
            }
        }
        let result = if untouched && count > 0 {
            self.socket.try_send(transmit)
        } else if !st.scratch.is_empty() {
            let now_batch = Transmit {
                destination: transmit.destination,
                contents: &st.scratch,
                segment_size: transmit.segment_size,
            };
            self.socket.try_send(&now_batch)
        } else {
            Ok(())
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Undo the decisions: the caller retries this transmit once the socket has room.
                st.impairment = saved;
                st.pending.clear();
                Err(e)
            }
            other => {
                if !st.pending.is_empty() {
                    let pending = std::mem::take(&mut st.pending);
                    for delayed in pending {
                        if st.queued_bytes + delayed.bytes.len() > MAX_DELAY_QUEUE_BYTES {
                            link.inner.overflow_drops.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        st.queued_bytes += delayed.bytes.len();
                        st.queue.push(Reverse(delayed));
                    }
                    link.inner.wake.notify_one();
                }
                other
            }
        }
    }

    /// Sends through the impairment, waiting for buffer space.
    pub async fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        loop {
            match self.try_send(transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                other => return other,
            }
        }
    }

    /// Waits until the socket can probably accept a send.
    pub async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Receives a batch (not impaired); see [`UdpSocket::poll_recv`].
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.socket.poll_recv(cx, bufs, meta)
    }

    /// Async form of [`Self::poll_recv`].
    pub async fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.socket.recv(bufs, meta).await
    }
}

impl Drop for ImpairedSocket {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            if link.inner.sockets.fetch_sub(1, Ordering::AcqRel) == 1 {
                link.inner.closed.store(true, Ordering::Release);
                link.inner.wake.notify_one();
            }
        }
    }
}

fn next_seq(seq: &mut u64) -> u64 {
    *seq += 1;
    *seq
}

/// Locks the impairment state. It is never held across an await or a panic-prone call, so a
/// poisoned lock can only come from a bug elsewhere in the holder; its data is still consistent.
fn lock(state: &Mutex<ImpairState>) -> std::sync::MutexGuard<'_, ImpairState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drains the delay queue of one link: sleeps until the earliest datagram is due, then sends every
/// due datagram, batching runs of equal-sized datagrams to one destination by one socket with GSO.
async fn run_delay_queue(link: Arc<LinkInner>) {
    let mut due: Vec<Delayed> = Vec::new();
    let mut batch: Vec<u8> = Vec::with_capacity(MAX_RECEIVE_BUFFER);
    loop {
        if link.closed.load(Ordering::Acquire) {
            return;
        }
        let next = {
            let mut st = lock(&link.state);
            let now = Instant::now();
            while due.len() < 1024 {
                match st.queue.peek() {
                    Some(Reverse(d)) if d.at <= now => {
                        let Some(Reverse(d)) = st.queue.pop() else {
                            break;
                        };
                        st.queued_bytes -= d.bytes.len();
                        due.push(d);
                    }
                    _ => break,
                }
            }
            st.queue.peek().map(|Reverse(d)| d.at)
        };
        if due.is_empty() {
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = link.wake.notified() => {}
                    }
                }
                None => link.wake.notified().await,
            }
            continue;
        }
        let mut i = 0;
        while i < due.len() {
            let first = &due[i];
            let size = first.bytes.len();
            let max_segments = first.via.max_gso_segments().clamp(1, 64);
            let mut j = i + 1;
            // A GSO batch: same socket, same destination, same size, except the last one which
            // may be shorter.
            while j < due.len()
                && j - i < max_segments
                && Arc::ptr_eq(&due[j].via, &first.via)
                && due[j].destination == first.destination
                && due[j].bytes.len() <= size
                && (j - i + 1) * size <= MAX_RECEIVE_BUFFER
            {
                let short = due[j].bytes.len() < size;
                j += 1;
                if short {
                    break;
                }
            }
            batch.clear();
            for d in &due[i..j] {
                batch.extend_from_slice(&d.bytes);
            }
            let transmit = Transmit {
                destination: first.destination,
                contents: &batch,
                segment_size: (j - i > 1).then_some(size),
            };
            if let Err(e) = first.via.send(&transmit).await {
                tracing::debug!(error = %e, "impaired delayed send failed");
            }
            i = j;
        }
        due.clear();
    }
}

/// Raises the socket buffers, forcing past `net.core.[rw]mem_max` when allowed and asked to.
fn raise_buffers(socket: &socket2::Socket, config: &SocketConfig) -> io::Result<BufferSizes> {
    // Linux reports double what it was asked for (see socket(7)), so a report below twice the
    // request means `net.core.[rw]mem_max` capped us.
    let factor = if cfg!(any(target_os = "linux", target_os = "android")) {
        2
    } else {
        1
    };
    let _ = socket.set_send_buffer_size(config.send_buffer);
    if config.force_buffers && socket.send_buffer_size()? < config.send_buffer * factor {
        force_buffer(socket, libc::SO_SNDBUFFORCE, config.send_buffer);
    }
    let _ = socket.set_recv_buffer_size(config.recv_buffer);
    if config.force_buffers && socket.recv_buffer_size()? < config.recv_buffer * factor {
        force_buffer(socket, libc::SO_RCVBUFFORCE, config.recv_buffer);
    }
    Ok(BufferSizes {
        send_requested: config.send_buffer,
        send_granted: socket.send_buffer_size()?,
        recv_requested: config.recv_buffer,
        recv_granted: socket.recv_buffer_size()?,
    })
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn force_buffer(socket: &socket2::Socket, option: libc::c_int, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: the fd is open for the socket's lifetime, and we pass a pointer to a live c_int with
    // its exact size, as setsockopt(2) requires for these options.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "forcing socket buffer size not permitted");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn force_buffer(_socket: &socket2::Socket, _option: i32, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::impair::ImpairmentConfig;
    use std::time::Duration;

    async fn recv_all(socket: &ImpairedSocket, want: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut storage = vec![[0u8; MAX_RECEIVE_BUFFER]; 4];
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < want {
            let mut meta = [RecvMeta::default(); 4];
            let mut bufs: Vec<IoSliceMut<'_>> = storage
                .iter_mut()
                .map(|b| IoSliceMut::new(&mut b[..]))
                .collect();
            let n = match tokio::time::timeout_at(deadline, socket.recv(&mut bufs, &mut meta)).await
            {
                Ok(r) => r.expect("recv"),
                Err(_) => break,
            };
            for (m, b) in meta.iter().zip(storage.iter()).take(n) {
                for d in b[..m.len].chunks(m.stride.max(1)) {
                    out.push(d.to_vec());
                }
            }
        }
        out
    }

    fn pattern(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j) as u8).collect()
    }

    #[tokio::test]
    async fn plain_socket_gso_batch_arrives_whole_v4_and_v6() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let addr: SocketAddr = local.parse().unwrap();
            let (a, b) = match (
                ImpairedSocket::bind(addr, &SocketConfig::default()),
                ImpairedSocket::bind(addr, &SocketConfig::default()),
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) if addr.is_ipv6() => {
                    eprintln!("skipping IPv6: {e}");
                    continue;
                }
                (Err(e), _) | (_, Err(e)) => panic!("bind {addr}: {e}"),
            };
            let sizes = a.socket().buffer_sizes();
            assert!(sizes.recv_granted >= 212_992, "{sizes:?}");
            let segments = a.socket().max_gso_segments().min(10);
            let mut contents = Vec::new();
            for i in 0..segments {
                contents.extend(pattern(i, 1200));
            }
            contents.extend(pattern(segments, 500));
            let t = Transmit {
                destination: b.local_addr().unwrap(),
                contents: &contents,
                segment_size: Some(1200),
            };
            a.send(&t).await.unwrap();
            let got = recv_all(&b, segments + 1, Duration::from_secs(5)).await;
            assert_eq!(got.len(), segments + 1);
            for (i, d) in got.iter().enumerate() {
                let len = if i == segments { 500 } else { 1200 };
                assert_eq!(d, &pattern(i, len), "datagram {i} over {addr}");
            }
        }
    }

    #[tokio::test]
    async fn impaired_socket_loses_about_the_configured_fraction() {
        let config = SocketConfig {
            impairment: Some(ImpairmentConfig {
                loss: 0.2,
                seed: 42,
                ..Default::default()
            }),
            ..SocketConfig::default()
        };
        let a = ImpairedSocket::bind("127.0.0.1:0".parse().unwrap(), &config).unwrap();
        let b =
            ImpairedSocket::bind("127.0.0.1:0".parse().unwrap(), &SocketConfig::default()).unwrap();
        let n = 2000;
        for i in 0..n {
            let d = pattern(i, 100);
            a.send(&Transmit {
                destination: b.local_addr().unwrap(),
                contents: &d,
                segment_size: None,
            })
            .await
            .unwrap();
            if i % 100 == 99 {
                tokio::task::yield_now().await;
            }
        }
        let stats = a.impairment_stats().unwrap();
        let delivered = n - stats.dropped_random as usize;
        let got = recv_all(&b, delivered, Duration::from_secs(5)).await;
        assert_eq!(got.len(), delivered, "all survivors arrive, none extra");
        // 2000 at 20%: mean 400, sigma ~18.
        assert!(
            (300..500).contains(&stats.dropped_random),
            "dropped {}",
            stats.dropped_random
        );
    }

    #[tokio::test]
    async fn delayed_duplicated_and_corrupted_datagrams_arrive_late_twice_or_altered() {
        let config = SocketConfig {
            impairment: Some(ImpairmentConfig {
                delay: Duration::from_millis(30),
                duplicate: 0.5,
                corrupt: 0.5,
                seed: 9,
                ..Default::default()
            }),
            ..SocketConfig::default()
        };
        let a = ImpairedSocket::bind("127.0.0.1:0".parse().unwrap(), &config).unwrap();
        let b =
            ImpairedSocket::bind("127.0.0.1:0".parse().unwrap(), &SocketConfig::default()).unwrap();
        let n = 20;
        let mut contents = Vec::new();
        for i in 0..n {
            contents.extend(pattern(i, 1000));
        }
        let start = Instant::now();
        a.send(&Transmit {
            destination: b.local_addr().unwrap(),
            contents: &contents,
            segment_size: Some(1000),
        })
        .await
        .unwrap();
        let stats = a.impairment_stats().unwrap();
        let want = n + stats.duplicated as usize;
        let got = recv_all(&b, want, Duration::from_secs(5)).await;
        assert!(
            start.elapsed() >= Duration::from_millis(30),
            "delay not applied"
        );
        assert_eq!(got.len(), want);
        let originals: Vec<Vec<u8>> = (0..n).map(|i| pattern(i, 1000)).collect();
        let altered = got.iter().filter(|d| !originals.contains(d)).count();
        assert_eq!(
            altered as u64, stats.corrupted,
            "each corrupted datagram differs from every original"
        );
        for d in got.iter().filter(|d| !originals.contains(d)) {
            let diff_bits: u32 = originals
                .iter()
                .map(|o| {
                    o.iter()
                        .zip(d.iter())
                        .map(|(x, y)| (x ^ y).count_ones())
                        .sum::<u32>()
                })
                .min()
                .unwrap();
            assert_eq!(diff_bits, 1, "corruption flips exactly one bit");
        }
        assert!(
            stats.duplicated > 0 && stats.corrupted > 0,
            "seed 9 exercises both: {stats:?}"
        );
    }
}
