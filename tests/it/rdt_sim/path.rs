//! Path validation: spoofed copies from a new address, unanswered challenges, NAT rebinding.

use super::*;

// ---------------------------------------------------------------------------------------------
// Path validation
// ---------------------------------------------------------------------------------------------

/// An outsider on the path races copies of the client's packets from a spoofed address (a victim's):
/// each arrives before the original, which is then a dropped duplicate. The server must challenge
/// the spoofed address, never send it data: at most 3x the bytes it got from there.
#[test]
fn spoofed_replay_is_not_reflected() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let seed = 14;
    eprintln!("spoofed_replay_is_not_reflected: seed {seed}");
    let mut sim = Sim::pair(seed);
    // A 40 Mbit/s path, so the transfer outlasts the attack.
    sim.set_all(|i| {
        i.rate = 40_000_000;
        i.queue_bytes = 200_000;
    });
    sim.nodes[1].app.plan = vec![20_000_000];
    sim.connect(0, 1);
    assert!(sim.run(Duration::from_secs(5), |s| received(s, 0) > 1_000_000));
    let spoofed: SocketAddr = "10.9.9.9:5000".parse().unwrap();
    let captured: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let c2 = captured.clone();
    sim.hook = Some(Box::new(move |from, to, d| {
        let mut c = c2.borrow_mut();
        if from == 0 && to == 1 && d[0] & 0x0f == 4 && c.is_none() {
            *c = Some(d.to_vec());
        }
        Verdict::Pass
    }));
    let server = sim.app(1).conn.unwrap();
    let mut injected = 0u64;
    let mut rounds = 0;
    let mut moved = Vec::new();
    for round in 0..20 {
        *captured.borrow_mut() = None;
        let c3 = captured.clone();
        if !sim.run(Duration::from_secs(1), move |_| c3.borrow().is_some()) {
            // The client sends nothing: it receives nothing (the server went elsewhere).
            break;
        }
        let pkt = captured.borrow_mut().take().unwrap();
        // The original is 10 ms away on the link; the copy arrives now.
        sim.inject(spoofed, 1, &pkt);
        injected += pkt.len() as u64;
        rounds += 1;
        let _ = sim.run(Duration::from_millis(150), |_| false);
        let remote = sim.nodes[1]
            .ep
            .connection_ref(server)
            .unwrap()
            .remote_address();
        if remote != addr(0) {
            moved.push((round, remote));
        }
    }
    sim.hook = None;
    // Leave time for every retransmitted challenge.
    let _ = sim.run(Duration::from_secs(3), |_| false);
    let reflected = sim.stray.get(&spoofed).copied().unwrap_or(0);
    let ratio = reflected as f64 / injected as f64;
    eprintln!(
        "spoofed_replay_is_not_reflected: {rounds} races, {injected} bytes from the spoofed \
         address, {reflected} sent to it ({ratio:.2}x)"
    );
    assert!(
        reflected <= 3 * injected,
        "{reflected} bytes reflected to {spoofed} for {injected} received from it ({ratio:.1}x)"
    );
    assert!(
        moved.is_empty(),
        "the server followed the spoofed address: {moved:?}"
    );
    assert_eq!(rounds, 20, "the client kept sending");
    let st = sim.nodes[1].ep.connection_ref(server).unwrap().stats();
    eprintln!("spoofed_replay_is_not_reflected: server {st:?}");
    expect_done(&mut sim, Duration::from_secs(60));
    assert_eq!(
        sim.nodes[1]
            .ep
            .connection_ref(server)
            .unwrap()
            .remote_address(),
        addr(0)
    );
}

/// A replayed packet from a spoofed address while the real client is silent: the server
/// retransmits its challenge a bounded number of times within 3x what came from there, gives up,
/// and keeps the old path, which works again once the client is heard from.
#[test]
fn unanswered_challenges_stop_within_the_budget() {
    let seed = 15;
    eprintln!("unanswered_challenges_stop_within_the_budget: seed {seed}");
    let mut sim = Sim::pair(seed);
    sim.set_all(|i| {
        i.rate = 40_000_000;
        i.queue_bytes = 200_000;
    });
    sim.nodes[0].app.plan = vec![10_000_000];
    sim.connect(0, 1);
    assert!(sim.run(Duration::from_secs(5), |s| received(s, 1) > 500_000));
    // The attacker takes a client packet off the wire and sends it from a spoofed address.
    let spoofed: SocketAddr = "10.9.9.8:6000".parse().unwrap();
    let fresh = std::rc::Rc::new(std::cell::RefCell::new(None::<Vec<u8>>));
    let f2 = fresh.clone();
    // From the first one taken, the server hears nothing more from the client; the attacker
    // keeps the last (newest) packet.
    sim.hook = Some(Box::new(move |from, to, d| {
        if from == 0 && to == 1 && d[0] & 0x0f == 4 {
            *f2.borrow_mut() = Some(d.to_vec());
        }
        if from == 0 && f2.borrow().is_some() {
            return Verdict::Drop;
        }
        Verdict::Pass
    }));
    let f3 = fresh.clone();
    assert!(sim.run(Duration::from_secs(2), move |_| f3.borrow().is_some()));
    // The client is cut off (both ways): nobody answers a challenge. What is in flight lands.
    sim.set_all(|i| i.up = false);
    let _ = sim.run(Duration::from_millis(100), |_| false);
    sim.hook = None;
    let copy = fresh.borrow_mut().take().unwrap();
    sim.inject(spoofed, 1, &copy);
    let server = sim.app(1).conn.unwrap();
    let _ = sim.run(Duration::from_secs(10), |_| false);
    let st = sim.nodes[1].ep.connection_ref(server).unwrap().stats();
    let reflected = sim.stray.get(&spoofed).copied().unwrap_or(0);
    eprintln!(
        "unanswered_challenges_stop_within_the_budget: {} bytes from {spoofed}, {reflected} sent \
         to it in {} challenges",
        copy.len(),
        st.path_challenges
    );
    assert!(reflected > 0, "the new address was challenged");
    assert!(
        reflected <= 3 * copy.len() as u64,
        "{reflected} bytes for {}",
        copy.len()
    );
    assert!(st.path_challenges <= u64::from(left::rdt::PATH_CHALLENGES));
    assert_eq!(st.path_abandoned, 1, "{st:?}");
    assert_eq!(st.path_validations, 0);
    let conn = sim.nodes[1].ep.connection_ref(server).unwrap();
    assert_eq!(conn.remote_address(), addr(0));
    assert!(
        conn.poll_timeout().is_some(),
        "the connection is alive and waits for the peer"
    );
    sim.set_all(|i| i.up = true);
    expect_done(&mut sim, Duration::from_secs(60));
}

/// A NAT rebinding mid-transfer: the client's address changes and packets to the old one are
/// lost. The server validates the new address and the transfer completes, every byte checked.
#[test]
fn nat_rebinding_mid_transfer_completes() {
    let seeds: Vec<u64> = match std::env::var("LEFT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("LEFT_SIM_SEED is a u64")],
        Err(_) => (0..12).collect(),
    };
    for seed in seeds {
        eprintln!(
            "nat_rebinding_mid_transfer_completes: seed {seed} (LEFT_SIM_SEED={seed} replays)"
        );
        let mut sim = Sim::pair(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let loss = rng.random_range(0.0..0.02);
        let jitter = Duration::from_micros(rng.random_range(0..3000));
        sim.set_all(|i| {
            i.loss = loss;
            i.jitter = jitter;
        });
        sim.nodes[0].app.plan = vec![1_000_000, 2_000_000];
        sim.nodes[1].app.plan = vec![3_000_000];
        sim.connect(0, 1);
        let at = rng.random_range(200_000..1_500_000);
        assert!(
            sim.run(Duration::from_secs(20), |s| received(s, 1) + received(s, 0)
                > at),
            "seed {seed}: {}",
            sim.describe()
        );
        let moved: SocketAddr = SocketAddr::from(([10, 0, 0, 101], 40_000 + seed as u16));
        sim.nodes[0].addr = moved;
        expect_done(&mut sim, Duration::from_secs(60));
        assert!(sim.app(0).lost.is_none() && sim.app(1).lost.is_none());
        let server = sim.app(1).conn.unwrap();
        let conn = sim.nodes[1].ep.connection_ref(server).unwrap();
        assert_eq!(
            conn.remote_address(),
            moved,
            "seed {seed}: the server follows the rebinding"
        );
        eprintln!(
            "nat_rebinding_mid_transfer_completes: seed {seed} done at {:?}, {:?}",
            sim.elapsed(),
            conn.stats()
        );
    }
}
