//! Clean transfers in both directions, encryption off, streams, flow control, resets and close.

use super::*;

// ---------------------------------------------------------------------------------------------
// Basic transfers
// ---------------------------------------------------------------------------------------------

#[test]
fn clean_transfer_both_directions_many_streams() {
    let mut sim = Sim::pair(1);
    sim.nodes[0].app.plan = vec![100_000, 3_000_000, 1, 0, 250_000];
    sim.nodes[1].app.plan = vec![500_000];
    sim.connect(0, 1);
    assert!(
        sim.run(Duration::from_secs(30), Sim::transfers_done),
        "transfer did not finish: {}",
        sim.describe()
    );
    let k0 = sim.nodes[0].ep.public_key();
    let k1 = sim.nodes[1].ep.public_key();
    assert_eq!(sim.app(0).peer_key, Some(k1));
    assert_eq!(sim.app(1).peer_key, Some(k0));
    let h = sim.app(0).conn.unwrap();
    let stats = sim.nodes[0].ep.connection_ref(h).unwrap().stats();
    assert_eq!(
        stats.mtu, 1452,
        "MTU probing reached the maximum on a clean path"
    );
    assert_eq!(stats.lost_packets, 0);
    // 3.85 MB over a 20 ms RTT path with slow start should take well under 2 s.
    assert!(
        sim.elapsed() < Duration::from_secs(2),
        "took {:?}",
        sim.elapsed()
    );
}

#[test]
fn encryption_off_sends_clear_but_authenticated() {
    for enc in [true, false] {
        let mut a = config(1, 7);
        let mut b = config(2, 8);
        a.transport.encryption = enc;
        b.transport.encryption = enc;
        let mut sim = Sim::new(7, vec![a, b]);
        sim.nodes[0].app.plan = vec![50_000];
        // Look for a run of pattern bytes in what goes over the wire.
        let needle = chunk(StreamId::CONTROL, 1000, 32).to_vec();
        let seen = std::rc::Rc::new(std::cell::Cell::new(false));
        let s2 = seen.clone();
        sim.hook = Some(Box::new(move |_, _, d| {
            if d.windows(32).any(|w| w == &needle[..]) {
                s2.set(true);
            }
            Verdict::Pass
        }));
        sim.connect(0, 1);
        assert!(sim.run(Duration::from_secs(10), Sim::transfers_done));
        assert_eq!(
            seen.get(),
            !enc,
            "plaintext visible on the wire iff encryption is off"
        );
        // A flipped bit in a clear packet still fails authentication.
        let h = sim.app(1).conn.unwrap();
        let mut pkt = sim.last_data_packet_to(1);
        let before = sim.nodes[1].ep.connection_ref(h).unwrap().stats();
        let last = pkt.len() - 20;
        pkt[last] ^= 0x40;
        sim.inject(addr(0), 1, &pkt);
        let after = sim.nodes[1].ep.connection_ref(h).unwrap().stats();
        assert!(after.auth_failures + after.duplicates > before.auth_failures + before.duplicates);
        assert_eq!(after.recv_packets, before.recv_packets);
    }
}

// ---------------------------------------------------------------------------------------------
// Streams, flow control, close
// ---------------------------------------------------------------------------------------------

#[test]
fn flow_control_bounds_receiver_buffer() {
    let mut a = config(1, 70);
    let mut b = config(2, 71);
    a.transport.connection_window = 300_000;
    b.transport.connection_window = 300_000;
    b.transport.stream_window = 100_000;
    let mut sim = Sim::new(70, vec![a, b]);
    sim.nodes[1].app.read_enabled = false;
    sim.connect(0, 1);
    assert!(!sim.run(Duration::from_millis(500), |_| false));
    let h = sim.app(0).conn.unwrap();
    let c = sim.nodes[0].ep.connection(h).unwrap();
    let s1 = c.open().unwrap();
    let s2 = c.open().unwrap();
    let s3 = c.open().unwrap();
    let s4 = c.open().unwrap();
    let big = |id| chunk(id, 0, 1_000_000);
    let w1 = c.write_bytes(s1, big(s1)).unwrap();
    assert_eq!(w1, 100_000, "stream window");
    let w2 = c.write_bytes(s2, big(s2)).unwrap();
    let w3 = c.write_bytes(s3, big(s3)).unwrap();
    let w4 = c.write_bytes(s4, big(s4)).unwrap();
    assert_eq!(w2 + w3, 200_000);
    assert_eq!(w4, 0, "connection window exhausted");
    assert_eq!(c.write_bytes(s1, chunk(s1, 100_000, 1000)).unwrap(), 0);
    let _ = sim.run(Duration::from_secs(2), |_| false);
    let h = sim.app(0).conn.unwrap();
    assert_eq!(
        sim.nodes[0].ep.connection_ref(h).unwrap().unacked_bytes(),
        0,
        "all delivered into the receive buffer"
    );
    // Reading releases credit and a Writable event follows.
    sim.nodes[1].app.read_enabled = true;
    let _ = sim.run(Duration::from_secs(2), |_| false);
    assert!(sim
        .app(0)
        .events
        .iter()
        .any(|e| matches!(e, Event::StreamWritable { .. })));
    let c = sim.nodes[0].ep.connection(h).unwrap();
    assert!(c.write_bytes(s4, big(s4)).unwrap() > 0);
}

/// A writer that writes (through the copying `Connection::write`) only when `StreamWritable`
/// names its stream still moves far more than the flow-control windows: every partial or zero
/// write registers interest, so new credit always wakes it. Run clean and at 3% loss.
#[test]
fn waiting_writer_moves_far_more_than_the_windows() {
    for (seed, loss) in [(90u64, 0.0), (91, 0.03)] {
        let mut a = config(1, seed);
        let mut b = config(2, seed + 1);
        for c in [&mut a, &mut b] {
            c.transport.connection_window = 96 * 1024;
            c.transport.stream_window = 48 * 1024;
        }
        let mut sim = Sim::new(seed, vec![a, b]);
        sim.set_all(|i| i.loss = loss);
        sim.nodes[0].app.wait_writable = true;
        // Control stream plus a uni and a bi stream: about 70 connection windows in all.
        sim.nodes[0].app.plan = vec![2_000_000, 3_000_000, 2_000_000];
        sim.connect(0, 1);
        let ok = sim.run(Duration::from_secs(300), Sim::transfers_done);
        assert!(
            ok,
            "seed {seed} loss {loss}: waiting writer stalled: {}",
            sim.describe()
        );
        let app = sim.app(0);
        let writable = app
            .events
            .iter()
            .filter(|e| matches!(e, Event::StreamWritable { .. }))
            .count() as u64;
        println!(
            "seed {seed} loss {loss}: {} partial writes, {writable} StreamWritable, done at {:?}",
            app.partial_writes,
            sim.elapsed()
        );
        assert!(
            app.partial_writes >= 50,
            "seed {seed}: the windows limited the writer ({} partial writes)",
            app.partial_writes
        );
        assert!(
            writable >= app.partial_writes,
            "seed {seed}: {writable} StreamWritable events for {} partial writes",
            app.partial_writes
        );
    }
}

#[test]
fn stream_limit_is_raised_as_streams_close() {
    let mut a = config(1, 75);
    let mut b = config(2, 76);
    a.transport.max_streams = 3;
    b.transport.max_streams = 3;
    let mut sim = Sim::new(75, vec![a, b]);
    // 1 control-stream plan plus 19 more streams, only 3 of which may be open at once.
    sim.nodes[0].app.plan = vec![10_000; 20];
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(30));
    assert_eq!(sim.app(1).recv.len(), 20);
    assert!(sim.app(0).events.contains(&Event::StreamsAvailable));
}

#[test]
fn reset_and_close_carry_codes() {
    let mut sim = Sim::pair(80);
    sim.connect(0, 1);
    assert!(!sim.run(Duration::from_millis(300), |_| false));
    let h = sim.app(0).conn.unwrap();
    let c = sim.nodes[0].ep.connection(h).unwrap();
    let id = c.open().unwrap();
    c.write_bytes(id, chunk(id, 0, 7)).unwrap();
    c.reset(id, 42).unwrap();
    let _ = sim.run(Duration::from_millis(300), |_| false);
    assert!(sim
        .app(1)
        .events
        .contains(&Event::StreamReset { id, code: 42 }));
    let now = sim.now;
    sim.nodes[0]
        .ep
        .connection(h)
        .unwrap()
        .close(now, 7, b"bye now");
    let ok = sim.run(Duration::from_secs(5), |s| s.app(1).lost.is_some());
    assert!(ok);
    assert_eq!(
        sim.app(1).lost,
        Some(ConnectionError::PeerClosed {
            code: 7,
            reason: "bye now".into()
        })
    );
    assert_eq!(sim.app(0).lost, Some(ConnectionError::LocallyClosed));
    // Both endpoints forget the connection after draining.
    let ok = sim.run(Duration::from_secs(10), |s| {
        s.nodes.iter().all(|n| n.ep.handles().is_empty())
    });
    assert!(ok);
}

#[test]
fn new_reno_also_transfers() {
    let mut a = config(1, 90);
    a.transport.congestion = left::rdt::CongestionAlgorithm::NewReno;
    let mut sim = Sim::new(90, vec![a, config(2, 91)]);
    sim.set_all(|i| i.loss = 0.02);
    sim.nodes[0].app.plan = vec![2_000_000];
    sim.connect(0, 1);
    expect_done(&mut sim, Duration::from_secs(60));
}
