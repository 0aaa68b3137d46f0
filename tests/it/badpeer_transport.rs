//! Bad peers against the transport bounds of a real `left serve`: crafted clients built on the
//! sans-IO rdt core, driven here over a plain loopback UDP socket so they can do what the driver
//! never would (grant a 2^62-byte window and then stop acknowledging).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use left::ecp::{self, Message, ShareId, PROTOCOL_VERSION};
use left::rdt::{self, ConnectionHandle, EndpointConfig, Event, StreamId};
use left_store::ChunkId;

use crate::util::*;

/// A client speaking rdt from the core itself: every datagram, timer and transmit is ours to
/// give or withhold.
struct RawPeer {
    sock: UdpSocket,
    ep: rdt::Endpoint,
    h: ConnectionHandle,
    buf: Vec<u8>,
    recv: Vec<u8>,
    /// Events seen, for assertions.
    events: Vec<Event>,
    received_bytes: u64,
}

impl RawPeer {
    /// Connects to `server` as device `device_n` (endpoint seed `n`) granting `window` bytes of flow-control credit (connection and
    /// stream), and sends Hello. Panics if the handshake does not complete within 10 s.
    fn connect(
        share_key: [u8; 32],
        server: SocketAddr,
        device_n: u64,
        n: u64,
        window: u64,
    ) -> RawPeer {
        let secret: [u8; 32] = random_bytes(0x7a77_0000 + device_n, 32).try_into().unwrap();
        let device = left::identity::Identity::from_secret(secret).device_id().0;
        let mut cfg = EndpointConfig::new(secret, share_key, n);
        cfg.accept = false;
        cfg.transport.connection_window = window;
        cfg.transport.stream_window = window;
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut ep = rdt::Endpoint::new(cfg);
        let h = ep.connect(Instant::now(), server);
        let mut p = RawPeer {
            sock,
            ep,
            h,
            buf: vec![0u8; 64 * 1024],
            recv: vec![0u8; 64 * 1024],
            events: Vec::new(),
            received_bytes: 0,
        };
        let connected = p.pump(Duration::from_secs(10), |p| {
            p.events
                .iter()
                .any(|e| matches!(e, Event::Connected { .. }))
        });
        assert!(connected, "handshake with serve: {:?}", p.events);
        let hello = Message::Hello {
            protocol: PROTOCOL_VERSION,
            share: ShareId::from_key(&share_key),
            device,
            encryption: true,
        };
        p.write(&ecp::encode(&hello).unwrap());
        p
    }

    fn conn(&mut self) -> &mut rdt::Connection {
        self.ep.connection(self.h).expect("connection alive")
    }

    /// Queues `bytes` on the control stream (all of it: the server's window is large).
    fn write(&mut self, bytes: &[u8]) {
        let n = self.conn().write(StreamId::CONTROL, bytes).unwrap();
        assert_eq!(
            n,
            bytes.len(),
            "the server's credit took only part of a request"
        );
    }

    /// Runs the endpoint honestly (receive, timers, send, acknowledge) until `done` or `limit`.
    fn pump(&mut self, limit: Duration, mut done: impl FnMut(&mut RawPeer) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            // Up to 256 datagrams per turn, then timers and transmits.
            for _ in 0..256 {
                match self.sock.recv_from(&mut self.recv) {
                    Ok((n, from)) => {
                        self.received_bytes += n as u64;
                        self.ep.handle_datagram(
                            Instant::now(),
                            from,
                            BytesMut::from(&self.recv[..n]),
                        );
                    }
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if self.ep.poll_timeout().is_some_and(|t| t <= now) {
                self.ep.handle_timeout(now);
            }
            while let Some(t) = self.ep.poll_transmit(Instant::now(), &mut self.buf) {
                let seg = t.segment_size.unwrap_or(t.size);
                for d in self.buf[..t.size].chunks(seg) {
                    let _ = self.sock.send_to(d, t.destination);
                }
            }
            while let Some((_, e)) = self.ep.poll_event() {
                self.events.push(e);
            }
        }
    }

    /// Pumps until everything we wrote was acknowledged and the server has sent `bytes` (it is
    /// answering); from then on the caller stops pumping: nothing more is acknowledged.
    fn until_answering(&mut self, bytes: u64) {
        let ok = self.pump(Duration::from_secs(20), |p| {
            p.received_bytes >= bytes && p.conn().unacked_bytes() == 0
        });
        assert!(
            ok,
            "the server did not take the requests and answer ({} bytes received)",
            self.received_bytes
        );
    }
}

/// Resident set of a process in KiB: `VmRSS` (now) or `VmHWM` (peak).
fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// A served share with a 64 MiB file; its chunk ids, the largest first.
fn served_share() -> (Share, Server, Vec<ChunkId>) {
    let a = Share::new();
    a.write("big.bin", &random_bytes(31, 64 << 20));
    a.add(&[]);
    let chunks = {
        let store = left_store::Store::open(&a.store).unwrap();
        let head = store.head().unwrap().unwrap();
        let mut ids = store
            .debug_file_chunks(head, std::path::Path::new("big.bin"))
            .unwrap();
        let size = |id: &ChunkId| store.get_chunk(*id).unwrap().map_or(0, |b| b.len());
        ids.sort_by_key(|id| std::cmp::Reverse(size(id)));
        ids
    };
    let server = a.serve();
    (a, server, chunks)
}

/// The attack of issue 10 item 4: clients that grant a 2^62-byte window, ask for the largest chunk
/// 1,024 times per GetChunks and for every chunk of the file, then never acknowledge a byte. Three
/// device keys at once, so only a budget shared by all connections bounds the server.
#[test]
fn a_client_granting_a_huge_window_and_never_acking_stays_bounded() {
    let (a, server, chunks) = served_share();
    let pid = server.child.id();
    // The baseline: serve after start and after an honest peer pulled the whole file (so its
    // store caches are warm, as they would be on a serving machine).
    let b = a.join();
    b.sync_ok(&[server.addr()], &["--timeout", "60"], &[]);
    assert_same_tree(&a.root, &b.root);
    let base = rss_kib(pid, "VmRSS:");
    let base_peak = rss_kib(pid, "VmHWM:");
    let key = a.share_key_bytes();
    let mut peers = Vec::new();
    for n in 0..3u64 {
        let mut p = RawPeer::connect(key, server.addr, n + 1, n + 1, 1 << 62);
        // 2 x 1,024 times the largest chunk (512 MiB of replies before the fix), and then every
        // chunk of the file once (64 MiB).
        let dup = ecp::encode(&Message::GetChunks {
            ids: vec![chunks[0]; ecp::MAX_IDS_PER_REQUEST],
        })
        .unwrap();
        p.write(&dup);
        p.write(&dup);
        for ids in chunks.chunks(ecp::MAX_IDS_PER_REQUEST) {
            p.write(&ecp::encode(&Message::GetChunks { ids: ids.to_vec() }).unwrap());
        }
        // The first client sees replies flowing; the others may find the shared budget spent
        // and only need their requests delivered.
        p.until_answering(if n == 0 { 1 << 20 } else { 1 });
        peers.push(p);
    }
    // Nobody acknowledges from here on. Watch serve's memory for a while: before the fix it
    // buffered every reply at once (the growth shows within a second).
    let watch = Instant::now();
    let mut peak = 0;
    while watch.elapsed() < Duration::from_secs(4) {
        peak = peak.max(rss_kib(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let hwm = rss_kib(pid, "VmHWM:");
    eprintln!(
        "serve RSS: baseline {} MiB (peak {} MiB before the attack), {} MiB at most during it \
         (VmHWM {} MiB)",
        base / 1024,
        base_peak / 1024,
        peak / 1024,
        hwm / 1024
    );
    assert!(
        peak.max(hwm) < base_peak.max(base) + 64 * 1024,
        "serve grew from {} MiB to {} MiB for clients that never acknowledge",
        base_peak.max(base) / 1024,
        peak.max(hwm) / 1024
    );
    drop(peers);
    // Still serving.
    let c = a.join();
    c.sync_ok(&[server.addr()], &["--timeout", "60"], &[]);
    assert_same_tree(&a.root, &c.root);
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// One device key may hold at most 4 sessions: a fifth connection is refused, with the reason.
#[test]
fn a_device_opening_many_connections_is_capped() {
    let a = Share::new();
    a.write("small.txt", b"small\n");
    a.add(&[]);
    let server = a.serve();
    let key = a.share_key_bytes();
    // The same device key five times (from five endpoints).
    let mut peers: Vec<RawPeer> = (0..5)
        .map(|n| RawPeer::connect(key, server.addr, 7, 100 + n, 1 << 20))
        .collect();
    let lost = |p: &RawPeer| {
        p.events.iter().find_map(|e| match e {
            Event::ConnectionLost { reason } => Some(reason.to_string()),
            _ => None,
        })
    };
    // Pump every peer in turn until one of them was refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        for p in peers.iter_mut() {
            p.pump(Duration::from_millis(5), |_| false);
        }
        let refused: Vec<String> = peers.iter().filter_map(lost).collect();
        if !refused.is_empty() {
            break refused;
        }
        assert!(Instant::now() < deadline, "no connection was refused");
    };
    eprintln!("refused: {refused:?}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("connections open"), "{refused:?}");
    let log = server.stop();
    assert!(log.contains("connections open"), "{log}");
}
