//! `--fairness`: one rdt flow and one quinn flow at the same time through one shared bottleneck
//! ([`left::net::udp::Link`]), each flow's goodput after a warm-up, and the half-to-twice check.

use super::*;
use left::net::udp::{Link, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub async fn run(
    options: &Options,
    secs: u64,
    pattern: Arc<Vec<u8>>,
) -> Result<(serde_json::Value, bool), String> {
    let mut impair = options.impair.clone();
    if impair.rate_limit_bytes_per_s.is_none() {
        impair.rate_limit_bytes_per_s = Some(8_000_000);
    }
    if impair.queue_limit_bytes.is_none() {
        impair.queue_limit_bytes = Some(64_000);
    }
    let link = Link::new(impair.clone()).map_err(|e| format!("link: {e}"))?;
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let on_link = || -> Result<Arc<ImpairedSocket>, String> {
        let s = UdpSocket::bind(loopback, &SocketConfig::default()).map_err(|e| e.to_string())?;
        Ok(Arc::new(ImpairedSocket::with_link(s, &link)))
    };
    let plain = || -> Result<Arc<ImpairedSocket>, String> {
        ImpairedSocket::bind(loopback, &SocketConfig::default())
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    let stop = Arc::new(AtomicBool::new(false));
    let counts = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let rdt = tokio::spawn(rdt_side::flow(
        on_link()?,
        plain()?,
        options.clone(),
        pattern.clone(),
        stop.clone(),
        counts[0].clone(),
    ));
    let quinn = tokio::spawn(quinn_flow(
        on_link()?,
        plain()?,
        options.clone(),
        pattern,
        stop.clone(),
        counts[1].clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = [
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    ];
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let shares = [
        counts[0].load(Ordering::Relaxed) - start[0],
        counts[1].load(Ordering::Relaxed) - start[1],
    ];
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for (name, task) in [("rdt", rdt), ("quinn", quinn)] {
        match tokio::time::timeout(Duration::from_secs(20), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => errors.push(format!("{name}: {e}")),
            Ok(Err(e)) => errors.push(format!("{name} task: {e}")),
            Err(_) => errors.push(format!("{name}: did not stop")),
        }
    }
    let mb_s = |b: u64| b as f64 / secs as f64 / 1e6;
    let ratio = if shares[1] > 0 {
        shares[0] as f64 / shares[1] as f64
    } else {
        f64::INFINITY
    };
    let pass = errors.is_empty() && (0.5..=2.0).contains(&ratio);
    eprintln!(
        "fairness over {secs} s through {}: rdt {:.2} MB/s, quinn {:.2} MB/s, ratio {ratio:.2} ({}); link {:?}",
        impair,
        mb_s(shares[0]),
        mb_s(shares[1]),
        if pass { "pass" } else { "FAIL" },
        link.stats()
    );
    let json = serde_json::json!({
        "mode": "fairness",
        "seconds": secs,
        "impairment": impair.to_string(),
        "encryption": if options.encryption { "on" } else { "off" },
        "rdt_mb_s": mb_s(shares[0]),
        "quinn_mb_s": mb_s(shares[1]),
        "rdt_over_quinn": ratio,
        "pass": pass,
        "errors": errors,
    });
    Ok((json, pass))
}

/// A quinn flow that writes until `stop` while its receiver counts delivered bytes.
async fn quinn_flow(
    client_socket: Arc<ImpairedSocket>,
    server_socket: Arc<ImpairedSocket>,
    options: Options,
    pattern: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> Result<(), String> {
    let (client, server, server_addr) = quinn_endpoints(client_socket, server_socket, &options)?;
    let receiver = tokio::spawn({
        let server = server.clone();
        async move {
            let incoming = server.accept().await.ok_or("server endpoint closed")?;
            let conn = incoming.await.map_err(|e| format!("accept: {e}"))?;
            let mut stream = conn
                .accept_uni()
                .await
                .map_err(|e| format!("accept_uni: {e}"))?;
            while let Some(chunk) = stream
                .read_chunk(usize::MAX, true)
                .await
                .map_err(|e| format!("read: {e}"))?
            {
                count.fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, String>(conn)
        }
    });
    let conn = client
        .connect(server_addr, "localhost")
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut stream = conn
        .open_uni()
        .await
        .map_err(|e| format!("open_uni: {e}"))?;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let data = pattern_at(&pattern, sent, WRITE_CHUNK);
        stream
            .write_all(data)
            .await
            .map_err(|e| format!("write: {e}"))?;
        sent += data.len() as u64;
    }
    stream.finish().map_err(|e| format!("finish: {e}"))?;
    let server_conn = receiver
        .await
        .map_err(|e| format!("receiver task: {e}"))??;
    server_conn.close(0u32.into(), b"done");
    conn.close(0u32.into(), b"done");
    client.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
    Ok(())
}
