//! Loopback tests of the tokio side of the transport (`left::net`): impaired sockets, and the rdt
//! driver with and without impairment.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use left::net::impair::ImpairmentConfig;
use left::net::udp::{ImpairedSocket, RecvMeta, SocketConfig, Transmit, MAX_RECEIVE_BUFFER};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Receives until `want` datagrams arrived or `timeout` passed; returns them in arrival order.
async fn receive(socket: &ImpairedSocket, want: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut storage = vec![vec![0u8; MAX_RECEIVE_BUFFER]; 8];
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < want {
        let mut meta = [RecvMeta::default(); 8];
        let mut bufs: Vec<IoSliceMut<'_>> = storage
            .iter_mut()
            .map(|b| IoSliceMut::new(&mut b[..]))
            .collect();
        let Ok(result) = tokio::time::timeout_at(deadline, socket.recv(&mut bufs, &mut meta)).await
        else {
            break;
        };
        let n = result.expect("recv");
        for (m, b) in meta.iter().zip(storage.iter()).take(n) {
            out.extend(b[..m.len].chunks(m.stride.max(1)).map(<[u8]>::to_vec));
        }
    }
    out
}

fn numbered(i: u32, len: usize) -> Vec<u8> {
    let mut d = vec![0xa5; len];
    d[..4].copy_from_slice(&i.to_be_bytes());
    d
}

#[tokio::test]
async fn rate_capped_socket_paces_datagrams_in_order() {
    // 400 datagrams of 1000 bytes through a 2 MB/s cap take about 200 ms and keep their order.
    let config = SocketConfig {
        impairment: Some("rate=2m,seed=3".parse::<ImpairmentConfig>().unwrap()),
        ..SocketConfig::default()
    };
    let a = ImpairedSocket::bind(loopback(), &config).unwrap();
    let b = ImpairedSocket::bind(loopback(), &SocketConfig::default()).unwrap();
    let start = Instant::now();
    for i in 0..400 {
        let d = numbered(i, 1000);
        let t = Transmit {
            destination: b.local_addr().unwrap(),
            contents: &d,
            segment_size: None,
        };
        a.send(&t).await.unwrap();
    }
    let got = receive(&b, 400, Duration::from_secs(10)).await;
    let elapsed = start.elapsed();
    assert_eq!(got.len(), 400);
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d, &numbered(i as u32, 1000), "datagram {i} out of order");
    }
    assert!(
        elapsed >= Duration::from_millis(190),
        "cap not applied: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "far slower than the cap: {elapsed:?}"
    );
}

#[tokio::test]
async fn tail_drop_queue_bounds_a_burst() {
    // One GSO send of 100 datagrams (decided at one instant) into a 10-datagram queue at 1 MB/s:
    // exactly 10 get through.
    let config = SocketConfig {
        impairment: Some("rate=1m,queue=10k,seed=4".parse().unwrap()),
        ..SocketConfig::default()
    };
    let a = ImpairedSocket::bind(loopback(), &config).unwrap();
    let b = ImpairedSocket::bind(loopback(), &SocketConfig::default()).unwrap();
    let mut burst = Vec::new();
    for i in 0..100 {
        burst.extend(numbered(i, 1000));
    }
    let t = Transmit {
        destination: b.local_addr().unwrap(),
        contents: &burst,
        segment_size: Some(1000),
    };
    a.send(&t).await.unwrap();
    let stats = a.impairment_stats().unwrap();
    assert_eq!(stats.dropped_queue, 90, "{stats:?}");
    let got = receive(&b, 11, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 10);
    assert_eq!(got[0], numbered(0, 1000));
}

#[tokio::test]
async fn impaired_ipv6_socket_delivers_with_delay() {
    let v6: SocketAddr = "[::1]:0".parse().unwrap();
    let config = SocketConfig {
        impairment: Some("delay=20ms,seed=5".parse().unwrap()),
        ..SocketConfig::default()
    };
    let (a, b) = match (
        ImpairedSocket::bind(v6, &config),
        ImpairedSocket::bind(v6, &SocketConfig::default()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("no IPv6 loopback here ({e}); skipping");
            return;
        }
    };
    let start = Instant::now();
    let d = numbered(7, 1200);
    let t = Transmit {
        destination: b.local_addr().unwrap(),
        contents: &d,
        segment_size: None,
    };
    a.send(&t).await.unwrap();
    let got = receive(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(got, vec![d]);
    assert!(start.elapsed() >= Duration::from_millis(20));
}

// ---------------------------------------------------------------------------------------------
// The rdt driver

use left::net::driver::{Endpoint, NetError};
use left::rdt::EndpointConfig;

const PSK: [u8; 32] = [7; 32];

fn endpoint_config(secret: u8, seed: u64) -> EndpointConfig {
    EndpointConfig::new([secret; 32], PSK, seed)
}

fn endpoint(secret: u8, seed: u64, impairment: Option<&str>) -> Endpoint {
    let socket = SocketConfig {
        impairment: impairment.map(|s| s.parse().expect("impairment spec")),
        ..SocketConfig::default()
    };
    Endpoint::bind(loopback(), &socket, endpoint_config(secret, seed)).expect("bind endpoint")
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 10) as u8)
        .collect()
}

/// Sends `data` on one stream from a client to a server and returns what the server read.
async fn transfer(client: &Endpoint, server: &Endpoint, data: &[u8]) -> Result<Vec<u8>, NetError> {
    let server_addr = server.local_addr().unwrap();
    let accept = {
        let server = server.clone();
        let len = data.len();
        tokio::spawn(async move {
            let conn = server.accept().await.ok_or(NetError::EndpointClosed)?;
            let mut stream = conn.accept_stream().await?;
            let got = stream.read_to_end(len + 1).await?;
            Ok::<_, NetError>((conn, got))
        })
    };
    let conn = client.connect(server_addr).await?;
    assert_eq!(conn.peer_key(), server.public_key());
    let mut stream = conn.open_stream().await?;
    stream.write_all(data).await?;
    stream.finish()?;
    let (server_conn, got) = accept.await.expect("accept task")?;
    assert_eq!(server_conn.peer_key(), client.public_key());
    stream.finished().await?;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_moves_a_stream_over_clean_loopback() {
    let server = endpoint(1, 1, None);
    let client = endpoint(2, 2, None);
    let data = payload(40 << 20, 1);
    let got = tokio::time::timeout(Duration::from_secs(60), transfer(&client, &server, &data))
        .await
        .expect("transfer timed out")
        .expect("transfer failed");
    assert!(
        got == data,
        "received {} bytes, differing from the {} sent",
        got.len(),
        data.len()
    );
    client.close().await;
    server.close().await;
}
