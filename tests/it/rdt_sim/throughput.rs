//! The core's own throughput with no IO: how much CPU the state machines cost per byte.

use super::*;

// ---------------------------------------------------------------------------------------------
// Core throughput (no IO): how much CPU the state machines cost per byte
// ---------------------------------------------------------------------------------------------

/// Moves `bytes` over one stream between two endpoints that hand datagrams to each other directly
/// (no loss, no delay, GSO-sized batches); returns goodput in MB/s of wall time on this machine.
fn core_throughput(bytes: u64, encryption: bool) -> f64 {
    let mut a = config(1, 1);
    let mut b = config(2, 2);
    a.transport.encryption = encryption;
    b.transport.encryption = encryption;
    let mut ep = [Endpoint::new(a), Endpoint::new(b)];
    let t0 = Instant::now();
    // Virtual time advances 10 us per round, so pacing and timers behave as on a fast link.
    let mut now = t0;
    let h = ep[0].connect(now, addr(1));
    let mut buf = vec![0u8; 64 * 1500];
    let block = Bytes::from(vec![0xabu8; 1 << 20]);
    let (mut written, mut read) = (0u64, 0u64);
    let mut peer = None;
    let wall = std::time::Instant::now();
    while read < bytes {
        now += Duration::from_micros(10);
        for i in 0..2 {
            ep[i].handle_timeout(now);
            while let Some(t) = ep[i].poll_transmit(now, &mut buf) {
                let seg = t.segment_size.unwrap_or(t.size);
                for d in buf[..t.size].chunks(seg) {
                    ep[1 - i].handle_datagram(now, addr(i), BytesMut::from(d));
                }
            }
        }
        while let Some((hh, e)) = ep[1].poll_event() {
            if let Event::Connected { .. } = e {
                peer = Some(hh);
            }
        }
        while ep[0].poll_event().is_some() {}
        if let Some(c) = ep[0].connection(h) {
            if c.is_established() {
                while written < bytes {
                    let n = (bytes - written).min(block.len() as u64) as usize;
                    match c.write_bytes(StreamId::CONTROL, block.slice(..n)) {
                        Ok(0) => break,
                        Ok(k) => written += k as u64,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
        if let Some(p) = peer {
            let c = ep[1].connection(p).unwrap();
            while let Ok(Some(d)) = c.read(StreamId::CONTROL, usize::MAX) {
                read += d.len() as u64;
            }
        }
    }
    let st = ep[0].connection_ref(h).unwrap().stats();
    eprintln!(
        "sender: {st:?} rtt {:?} cwnd {}",
        ep[0].connection_ref(h).unwrap().rtt(),
        ep[0].connection_ref(h).unwrap().congestion_window()
    );
    bytes as f64 / wall.elapsed().as_secs_f64() / 1e6
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn core_throughput_report() {
    let mb = 512;
    let off0 = core_throughput(mb << 20, false);
    let on = core_throughput(mb << 20, true);
    let off = core_throughput(mb << 20, false);
    eprintln!("first off run {off0:.0} MB/s");
    eprintln!("core throughput: encrypted {on:.0} MB/s, encryption off {off:.0} MB/s (both sides on one core)");
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn lossy_goodput_report() {
    // A 1 Gbit/s path with 1 ms RTT and a 1 MB queue, like a fast LAN; goodput in simulated time.
    for loss in [0.0, 0.01, 0.05] {
        let mut sim = Sim::pair(77);
        sim.set_all(|i| {
            i.delay = Duration::from_micros(500);
            i.rate = 1_000_000_000;
            i.queue_bytes = 1 << 20;
            i.loss = loss;
        });
        sim.nodes[0].app.plan = vec![50 << 20];
        sim.connect(0, 1);
        let start = sim.now;
        assert!(
            sim.run(Duration::from_secs(120), Sim::transfers_done),
            "{}",
            sim.describe()
        );
        let secs = (sim.now - start).as_secs_f64();
        let h = sim.app(0).conn.unwrap();
        let st = sim.nodes[0].ep.connection_ref(h).unwrap().stats();
        eprintln!(
            "loss {loss}: {:.0} Mbit/s goodput ({} lost, {} congestion events)",
            (50u64 << 23) as f64 / secs / 1e6,
            st.lost_packets,
            st.congestion_events
        );
    }
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Arbitrary datagrams, and real packets with arbitrary bytes spliced in, never panic an
        /// endpoint with a live connection and are never accepted.
        #[test]
        fn arbitrary_datagrams_never_accepted(
            junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1500), 1..20),
            splice in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8),
        ) {
            let mut sim = Sim::pair(3);
            sim.nodes[0].app.plan = vec![1000];
            sim.connect(0, 1);
            prop_assert!(sim.run(Duration::from_secs(5), Sim::transfers_done));
            let real = sim.last_data_packet_to(1);
            let h = sim.app(1).conn.unwrap();
            let before = sim.nodes[1].ep.connection_ref(h).unwrap().stats();
            for j in &junk {
                sim.inject(addr(0), 1, j);
                let mut p = real.clone();
                for &(i, b) in &splice {
                    let i = usize::from(i) % p.len();
                    p[i] ^= b | 1;
                }
                sim.inject(addr(0), 1, &p);
            }
            let after = sim.nodes[1].ep.connection_ref(h).unwrap().stats();
            prop_assert_eq!(after.recv_packets, before.recv_packets);
            prop_assert!(sim.nodes[1].ep.poll_event().is_none());
        }
    }
}
