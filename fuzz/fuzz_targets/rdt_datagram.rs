//! Whole datagrams into a listening endpoint and into an initiator mid-handshake: nothing may panic,
//! and no unauthenticated datagram may produce an event.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use left::rdt::{Endpoint, EndpointConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let mut responder = Endpoint::new(EndpointConfig::new([1; 32], [7; 32], 1));
    let mut initiator = Endpoint::new(EndpointConfig::new([2; 32], [7; 32], 2));
    initiator.connect(now, peer);
    let mut buf = vec![0u8; 2048];
    while initiator.poll_transmit(now, &mut buf).is_some() {}
    // Feed the input as a sequence of datagrams split on a length byte.
    let mut rest = data;
    let mut t = now;
    while !rest.is_empty() {
        let n = (rest[0] as usize * 8).min(rest.len() - 1);
        let dgram = &rest[1..1 + n];
        rest = &rest[1 + n..];
        t += Duration::from_millis(1);
        responder.handle_datagram(t, peer, BytesMut::from(dgram));
        initiator.handle_datagram(t, peer, BytesMut::from(dgram));
        responder.handle_timeout(t);
        initiator.handle_timeout(t);
        while responder.poll_transmit(t, &mut buf).is_some() {}
        while initiator.poll_transmit(t, &mut buf).is_some() {}
        assert!(responder.poll_event().is_none(), "unauthenticated input produced an event");
    }
});
