//! Scripted faults: lost, corrupted and replayed handshake messages, reordering, duplication,
//! corruption, loss bursts, MTU drops, partitions and restarts.

use super::*;

// ---------------------------------------------------------------------------------------------
// Scripted faults
// ---------------------------------------------------------------------------------------------

#[test]
fn first_flight_lost() {
    let mut sim = Sim::pair(2);
    sim.nodes[0].app.plan = vec![200_000];
    let mut dropped = 0;
    sim.hook = Some(Box::new(move |from, _, _| {
        if from == 0 && dropped < 2 {
            dropped += 1;
            return Verdict::Drop;
        }
        Verdict::Pass
    }));
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(20));
    let h = sim.app(0).conn.unwrap();
    assert!(
        sim.nodes[0]
            .ep
            .connection_ref(h)
            .unwrap()
            .stats()
            .handshake_retransmits
            >= 2
    );
}

#[test]
fn second_and_third_handshake_messages_lost() {
    let mut sim = Sim::pair(3);
    sim.nodes[0].app.plan = vec![100_000];
    let mut n = 0;
    sim.hook = Some(Box::new(move |_, _, d| {
        // Drop the first message 2 and the first message 3 (kind 2 = Handshake).
        if d[0] & 0x0f == 2 && n < 2 {
            n += 1;
            return Verdict::Drop;
        }
        Verdict::Pass
    }));
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(20));
}

#[test]
fn corrupted_handshake_messages_recover() {
    // Corrupt the first copy of message 2 and of message 3 in every region (keys, static key,
    // payload tag): each must fail authentication and leave the state able to accept the resend.
    for (pos_from_end, seed) in [(1usize, 13u64), (20, 14), (40, 15), (70, 16)] {
        let mut sim = Sim::pair(seed);
        sim.nodes[0].app.plan = vec![50_000];
        let mut done = [false; 2];
        sim.hook = Some(Box::new(move |from, _, d| {
            if d[0] & 0x0f == 2 && !done[from] && d.len() > pos_from_end {
                done[from] = true;
                let mut c = d.to_vec();
                let i = c.len() - pos_from_end;
                c[i] ^= 0x10;
                return Verdict::Replace(c);
            }
            Verdict::Pass
        }));
        sim.connect(0, 1);
        expect_done(&mut sim, Duration::from_secs(30));
    }
}

#[test]
fn handshake_replayed() {
    let mut sim = Sim::pair(4);
    sim.nodes[0].app.plan = vec![100_000];
    let first = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let f2 = first.clone();
    sim.hook = Some(Box::new(move |from, _, d| {
        if from == 0 && f2.borrow().is_empty() {
            *f2.borrow_mut() = d.to_vec();
        }
        Verdict::Pass
    }));
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(10));
    let initial = first.borrow().clone();
    assert_eq!(initial[0] & 0x0f, 1, "captured the Initial");
    let accepted = sim.nodes[1].ep.stats().accepted;
    let conns = sim.nodes[1].ep.handles().len();
    // Replayed from the same address: routed to the existing connection, which ignores it.
    for _ in 0..5 {
        sim.inject(addr(0), 1, &initial);
    }
    assert_eq!(sim.nodes[1].ep.stats().accepted, accepted);
    assert_eq!(sim.nodes[1].ep.handles().len(), conns);
    // Replayed from elsewhere: it passes the PSK check (it is a real message) and the responder
    // answers, but the replayer cannot finish the handshake, and the half-open state times out.
    let attacker: SocketAddr = "10.9.9.9:1".parse().unwrap();
    sim.inject(attacker, 1, &initial);
    assert_eq!(sim.nodes[1].ep.handles().len(), conns + 1);
    let mut sent_to_attacker = 0;
    while let Some(t) = sim.nodes[1].ep.poll_transmit(sim.now, &mut sim.buf) {
        if t.destination == attacker {
            sent_to_attacker += t.size;
        }
    }
    assert!(
        sent_to_attacker > 0 && sent_to_attacker <= 3 * initial.len(),
        "amplification: {sent_to_attacker}"
    );
    let ok = sim.run(Duration::from_secs(120), |s| {
        s.nodes[1].ep.handles().len() == conns
    });
    assert!(ok, "half-open handshake from the replay is reaped");
    // The real connection is still fine (keep-alives keep it up).
    assert!(sim.app(0).lost.is_none() && sim.app(1).lost.is_none());
}

#[test]
fn reordered() {
    let mut sim = Sim::pair(5);
    sim.set_all(|i| {
        i.reorder = 0.3;
        i.jitter = Duration::from_millis(8);
    });
    sim.nodes[0].app.plan = vec![1_000_000, 300_000];
    sim.nodes[1].app.plan = vec![200_000];
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(30));
}

#[test]
fn duplicated() {
    let mut sim = Sim::pair(6);
    sim.set_all(|i| i.duplicate = 0.5);
    sim.nodes[0].app.plan = vec![1_000_000];
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(30));
    let h = sim.app(1).conn.unwrap();
    assert!(
        sim.nodes[1]
            .ep
            .connection_ref(h)
            .unwrap()
            .stats()
            .duplicates
            > 100
    );
}

#[test]
fn corrupted_byte_fails_authentication() {
    let mut sim = Sim::pair(7);
    sim.set_all(|i| i.corrupt = 0.05);
    sim.nodes[0].app.plan = vec![1_000_000];
    sim.nodes[1].app.plan = vec![100_000];
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(60));
    let h = sim.app(1).conn.unwrap();
    assert!(
        sim.nodes[1]
            .ep
            .connection_ref(h)
            .unwrap()
            .stats()
            .auth_failures
            > 0
    );
}

#[test]
fn corrupted_packet_changes_no_state() {
    let mut sim = Sim::pair(8);
    sim.nodes[0].app.plan = vec![10_000];
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(10));
    let pkt = sim.last_data_packet_to(1);
    let h = sim.app(1).conn.unwrap();
    let before = sim.nodes[1].ep.connection_ref(h).unwrap().stats();
    let timeout = sim.nodes[1].ep.poll_timeout();
    for i in 0..pkt.len() {
        for bit in [0x01, 0x80] {
            let mut p = pkt.clone();
            p[i] ^= bit;
            sim.inject(addr(0), 1, &p);
        }
    }
    let after = sim.nodes[1].ep.connection_ref(h).unwrap().stats();
    assert_eq!(
        after.recv_packets, before.recv_packets,
        "no corrupted packet was accepted"
    );
    assert_eq!(sim.nodes[1].ep.poll_timeout(), timeout, "timers unchanged");
    // The only replies are stateless resets for the corrupted connection ids (a flipped cid names
    // a connection the endpoint does not have), each smaller than its trigger.
    while let Some(t) = sim.nodes[1].ep.poll_transmit(sim.now, &mut sim.buf) {
        assert_eq!(sim.buf[0] & 0x0f, 5, "only resets");
        assert!(t.size < pkt.len());
    }
    assert!(
        sim.nodes[1].ep.stats().resets_sent <= 16,
        "one per corrupted cid bit"
    );
    assert!(sim.nodes[1].ep.poll_event().is_none());
    // The initiator ignores those resets: they are not for its connection id.
    let _ = sim.run(Duration::from_millis(500), |_| false);
    assert!(sim.app(0).lost.is_none() && sim.app(1).lost.is_none());
}

/// A burst of dropped full-size packets (as when a socket buffer overflows) is congestion, not a
/// path MTU black hole: the sender keeps its 1452-byte datagrams.
#[test]
fn loss_burst_is_not_a_black_hole() {
    let mut sim = Sim::pair(19);
    sim.nodes[0].app.plan = vec![20_000_000];
    sim.connect(0, 1);
    let at_max = |s: &Sim| {
        s.app(0)
            .conn
            .and_then(|h| s.nodes[0].ep.connection_ref(h))
            .is_some_and(|c| c.stats().mtu == 1452)
    };
    let ok = sim.run(Duration::from_secs(5), |s| {
        at_max(s) && received(s, 1) > 2_000_000
    });
    assert!(ok, "probed up to 1452");
    // Drop the next 60 full-size datagrams from the sender, then pass everything again.
    let mut left = 60;
    sim.hook = Some(Box::new(move |from, _, d| {
        if from == 0 && d.len() == 1452 && left > 0 {
            left -= 1;
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    }));
    expect_done(&mut sim, Duration::from_secs(60));
    let h = sim.app(0).conn.unwrap();
    let st = sim.nodes[0].ep.connection_ref(h).unwrap().stats();
    assert!(st.lost_packets >= 60, "the burst was lost: {st:?}");
    assert_eq!(st.black_holes, 0, "no black hole: {st:?}");
    assert_eq!(st.mtu, 1452, "kept full-size datagrams: {st:?}");
}

#[test]
fn mtu_drop_recovers() {
    let mut sim = Sim::pair(9);
    sim.nodes[0].app.plan = vec![20_000_000];
    sim.connect(0, 1);
    let ok = sim.run(Duration::from_secs(5), |s| {
        s.app(0)
            .conn
            .and_then(|h| s.nodes[0].ep.connection_ref(h))
            .is_some_and(|c| c.stats().mtu == 1452)
            && received(s, 1) > 2_000_000
    });
    assert!(ok, "probed up to 1452");
    // The path now carries only 1300-byte datagrams: a black hole for full-size packets.
    sim.set_all(|i| i.mtu = 1300);
    expect_done(&mut sim, Duration::from_secs(60));
    let h = sim.app(0).conn.unwrap();
    let st = sim.nodes[0].ep.connection_ref(h).unwrap().stats();
    assert!(st.black_holes >= 1, "black hole detected");
    assert!(
        st.mtu <= 1300,
        "settled at a size the path carries: {}",
        st.mtu
    );
}

#[test]
fn partition_then_heal() {
    let mut sim = Sim::pair(10);
    sim.nodes[0].app.plan = vec![20_000_000];
    sim.connect(0, 1);
    assert!(sim.run(Duration::from_secs(5), |s| received(s, 1) > 1_000_000));
    sim.set_all(|i| i.up = false);
    assert!(!sim.run(Duration::from_secs(8), Sim::transfers_done));
    sim.set_all(|i| i.up = true);
    expect_done(&mut sim, Duration::from_secs(60));
    assert!(sim.app(0).lost.is_none());
    let h = sim.app(0).conn.unwrap();
    let st = sim.nodes[0].ep.connection_ref(h).unwrap().stats();
    assert!(
        st.persistent_congestion >= 1,
        "the outage was persistent congestion: {st:?}"
    );
}

#[test]
fn partition_longer_than_idle_timeout_errors() {
    let mut sim = Sim::pair(11);
    sim.nodes[0].app.plan = vec![20_000_000];
    sim.connect(0, 1);
    assert!(sim.run(Duration::from_secs(5), |s| received(s, 1) > 1_000_000));
    sim.set_all(|i| i.up = false);
    let ok = sim.run(Duration::from_secs(120), |s| {
        s.app(0).lost.is_some() && s.app(1).lost.is_some()
    });
    assert!(ok, "both sides give up within the bound");
    assert_eq!(sim.app(0).lost, Some(ConnectionError::TimedOut));
    assert_eq!(sim.app(1).lost, Some(ConnectionError::TimedOut));
}

#[test]
fn one_side_restarted() {
    let mut sim = Sim::pair(12);
    sim.nodes[0].app.plan = vec![20_000_000];
    sim.connect(0, 1);
    assert!(sim.run(Duration::from_secs(5), |s| received(s, 1) > 1_000_000));
    // The responder restarts: new process, same keys, no memory of the connection.
    sim.nodes[1].ep = Endpoint::new(config(2, 999));
    sim.nodes[1].app = App {
        read_enabled: true,
        ..App::default()
    };
    let t0 = sim.now;
    let ok = sim.run(Duration::from_secs(120), |s| s.app(0).lost.is_some());
    assert!(ok, "the initiator notices within the bound");
    // The restarted responder answers the old connection's packets with a stateless reset, so the
    // initiator learns within a round trip or two instead of after its idle timeout.
    assert_eq!(sim.app(0).lost, Some(ConnectionError::PeerReset));
    assert!(
        sim.now - t0 < Duration::from_secs(1),
        "took {:?}",
        sim.now - t0
    );
    assert!(sim.nodes[1].ep.stats().drops(DropReason::UnknownConnection) > 0);
    assert!(sim.nodes[1].ep.stats().resets_sent > 0);
    // A new connection works.
    sim.nodes[0].app = App {
        read_enabled: true,
        plan: vec![300_000],
        ..App::default()
    };
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(20));
}

#[test]
fn initiator_restarted() {
    let mut sim = Sim::pair(13);
    sim.nodes[0].app.plan = vec![20_000_000];
    sim.connect(0, 1);
    assert!(sim.run(Duration::from_secs(5), |s| received(s, 1) > 1_000_000));
    // The initiator restarts with the same keys and address and connects again at once.
    sim.nodes[0].ep = Endpoint::new(config(1, 555));
    sim.nodes[0].app = App {
        read_enabled: true,
        plan: vec![300_000],
        ..App::default()
    };
    let old = sim.app(1).conn.unwrap();
    sim.nodes[1].app = App {
        read_enabled: true,
        ..App::default()
    };
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(20));
    // The responder's old connection ends: reset by the restarted initiator (or, if no packet of
    // it reached the new endpoint, by idle timeout), within the bound.
    let ok = sim.run(Duration::from_secs(60), |s| {
        s.nodes[1].ep.connection_ref(old).is_none()
    });
    assert!(ok, "old connection reaped: {}", sim.describe());
    assert!(sim.app(1).events.iter().any(|e| matches!(
        e,
        Event::ConnectionLost {
            reason: ConnectionError::PeerReset | ConnectionError::TimedOut
        }
    )));
}
