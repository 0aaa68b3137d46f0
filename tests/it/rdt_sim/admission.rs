//! Who may talk and at what cost: retry under load and the amplification limit, expired retry
//! tokens, wrong share keys, pinned device keys, encryption mismatch, garbage datagrams.

use super::*;

#[test]
fn retry_under_load_and_amplification_limit() {
    let mut a = config(1, 20);
    let mut b = config(2, 21);
    b.retry = RetryPolicy::Always;
    a.transport.max_datagram_size = 1452;
    let mut sim = Sim::new(20, vec![a, b]);
    sim.nodes[0].app.plan = vec![100_000];
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(10));
    assert!(sim.nodes[1].ep.stats().retries_sent >= 1);
    // A spoofed Initial without a token gets only a small Retry, and one with a forged token is dropped.
    let mut c = Endpoint::new(config(3, 5));
    let spoofed: SocketAddr = "10.7.7.7:9".parse().unwrap();
    let _ = c.connect(sim.now, addr(1));
    let t = c.poll_transmit(sim.now, &mut sim.buf).unwrap();
    let initial = sim.buf[..t.size].to_vec();
    sim.inject(spoofed, 1, &initial);
    let t = sim.nodes[1]
        .ep
        .poll_transmit(sim.now, &mut sim.buf)
        .expect("a retry");
    assert_eq!(t.destination, spoofed);
    assert!(t.size < initial.len() / 3);
    let mut forged = initial.clone();
    // Token length byte 0 -> 24 with garbage token (shifts the rest; any result must be refused).
    forged.splice(
        17..18,
        std::iter::once(24u8).chain(std::iter::repeat_n(0xaa, 24)),
    );
    forged.truncate(initial.len());
    sim.inject(spoofed, 1, &forged);
    assert_eq!(
        sim.nodes[1].ep.stats().last_drop,
        Some(DropReason::BadToken)
    );
}

#[test]
fn expired_retry_token_gets_a_fresh_retry() {
    let a = config(1, 22);
    let mut b = config(2, 23);
    b.retry = RetryPolicy::Always;
    let mut sim = Sim::new(22, vec![a, b]);
    sim.nodes[0].app.plan = vec![10_000];
    // Lose the first six Initials that carry a token: with backoff that outlives the token.
    let mut dropped = 0;
    sim.hook = Some(Box::new(move |_, _, d| {
        if d[0] & 0x0f == 1 && d[17] != 0 && dropped < 6 {
            dropped += 1;
            return Verdict::Drop;
        }
        Verdict::Pass
    }));
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(60));
    assert!(
        sim.nodes[1].ep.stats().retries_sent >= 2,
        "a second retry was sent"
    );
    assert_eq!(sim.nodes[1].ep.stats().drops(DropReason::BadToken), 0);
}

#[test]
fn wrong_share_key_refused() {
    let mut a = config(1, 30);
    a.psk = [0x11; 32];
    let mut sim = Sim::new(30, vec![a, config(2, 31)]);
    sim.connect(0, 1);
    let ok = sim.run(Duration::from_secs(120), |s| s.app(0).lost.is_some());
    assert!(ok);
    assert_eq!(sim.app(0).lost, Some(ConnectionError::HandshakeTimedOut));
    let st = sim.nodes[1].ep.stats();
    assert!(st.drops(DropReason::HandshakeAuth) >= 1);
    assert_eq!(st.accepted, 0);
    assert!(
        sim.nodes[1].ep.handles().is_empty(),
        "no state kept for the stranger"
    );
    assert_eq!(sim.delivered[0], 0, "the responder never answered");
}

#[test]
fn unknown_device_key_refused_when_pinned() {
    // Responder pins a different key.
    let mut b = config(2, 41);
    b.allowed_peers = Some(vec![left::rdt::crypto::public_key(&key(9))]);
    let mut sim = Sim::new(40, vec![config(1, 40), b]);
    sim.connect(0, 1);
    let ok = sim.run(Duration::from_secs(30), |s| {
        s.app(0).lost.is_some() && s.app(1).lost.is_some()
    });
    assert!(ok);
    let k0 = sim.nodes[0].ep.public_key();
    assert_eq!(
        sim.app(1).lost,
        Some(ConnectionError::PeerKeyRefused { key: k0 })
    );
    assert_eq!(sim.app(0).lost, Some(ConnectionError::RefusedByPeer));
    assert_eq!(
        sim.app(1).peer_key,
        None,
        "no Connected event for a refused key"
    );
    // Initiator pins: the same, the other way round.
    let mut a = config(1, 42);
    a.allowed_peers = Some(vec![left::rdt::crypto::public_key(&key(9))]);
    let mut sim = Sim::new(42, vec![a, config(2, 43)]);
    sim.connect(0, 1);
    let ok = sim.run(Duration::from_secs(30), |s| {
        s.app(0).lost.is_some() && s.app(1).lost.is_some()
    });
    assert!(ok);
    let k1 = sim.nodes[1].ep.public_key();
    assert_eq!(
        sim.app(0).lost,
        Some(ConnectionError::PeerKeyRefused { key: k1 })
    );
    assert_eq!(sim.app(1).lost, Some(ConnectionError::RefusedByPeer));
    // The right pin connects.
    let mut a = config(1, 44);
    a.allowed_peers = Some(vec![left::rdt::crypto::public_key(&key(2))]);
    let mut sim = Sim::new(44, vec![a, config(2, 45)]);
    sim.nodes[0].app.plan = vec![1000];
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(5));
}

#[test]
fn encryption_mismatch_fails_on_both_sides() {
    let mut a = config(1, 50);
    a.transport.encryption = false;
    let mut sim = Sim::new(50, vec![a, config(2, 51)]);
    sim.connect(0, 1);
    let ok = sim.run(Duration::from_secs(30), |s| {
        s.app(0).lost.is_some() && s.app(1).lost.is_some()
    });
    assert!(ok);
    assert_eq!(
        sim.app(0).lost,
        Some(ConnectionError::EncryptionMismatch {
            local: false,
            peer: true
        })
    );
    assert_eq!(
        sim.app(1).lost,
        Some(ConnectionError::EncryptionMismatch {
            local: true,
            peer: false
        })
    );
    let msg = sim.app(0).lost.as_ref().unwrap().to_string();
    assert!(
        msg.contains("ours is off") && msg.contains("peer's is on"),
        "{msg}"
    );
}

#[test]
fn garbage_truncated_and_forged_datagrams() {
    let mut sim = Sim::pair(60);
    sim.nodes[0].app.plan = vec![20_000];
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(10));
    let pkt = sim.last_data_packet_to(1);
    let h = sim.app(1).conn.unwrap();
    let before = sim.nodes[1].ep.connection_ref(h).unwrap().stats();
    let mut rng = ChaCha8Rng::seed_from_u64(60);
    // Garbage of every length up to 1500 bytes, from the peer's address and from elsewhere.
    for len in 0..1500 {
        let mut g = vec![0u8; len];
        rng.fill_bytes(&mut g);
        sim.inject(addr(0), 1, &g);
        sim.inject("10.3.3.3:3".parse().unwrap(), 1, &g);
        // Garbage with a valid first byte of each kind.
        if len > 0 {
            for kind in 1..=5u8 {
                g[0] = 0x10 | kind;
                sim.inject(addr(0), 1, &g);
            }
        }
    }
    // Every truncation of a real packet.
    for cut in 0..pkt.len() {
        sim.inject(addr(0), 1, &pkt[..cut]);
    }
    // Forged packets: a valid header (right cid, fresh packet number), random body.
    for pn in 0..200u32 {
        let mut f = pkt[..13].to_vec();
        f[9..13].copy_from_slice(&(1_000 + pn).to_be_bytes());
        let mut body = vec![0u8; 100];
        rng.fill_bytes(&mut body);
        f.extend_from_slice(&body);
        sim.inject(addr(0), 1, &f);
    }
    let after = sim.nodes[1].ep.connection_ref(h).unwrap().stats();
    assert_eq!(
        after.recv_packets, before.recv_packets,
        "nothing unauthenticated accepted"
    );
    assert!(after.auth_failures >= before.auth_failures + 200);
    let st = sim.nodes[1].ep.stats();
    assert!(st.drops(DropReason::Malformed) > 0);
    assert!(st.drops(DropReason::UnknownConnection) > 0);
    assert!(st.drops(DropReason::InitialTooSmall) + st.drops(DropReason::HandshakeAuth) > 0);
    assert_eq!(st.accepted, 1);
    // And the connection still works.
    let h0 = sim.app(0).conn.unwrap();
    let c = sim.nodes[0].ep.connection(h0).unwrap();
    let id = c.open().unwrap();
    assert_eq!(c.write_bytes(id, chunk(id, 0, 11)).unwrap(), 11);
    let _ = sim.run(Duration::from_millis(500), |_| false);
    assert!(sim.app(0).lost.is_none() && sim.app(1).lost.is_none());
}
