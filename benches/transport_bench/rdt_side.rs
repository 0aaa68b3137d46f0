//! The rdt side of a run: two `left::net::driver` endpoints over the impaired sockets, one
//! unidirectional stream, the receiver verifying every byte. Also the rdt flow of `--fairness`.
//! Not the measuring or the report (`main.rs`).

use super::*;
use left::net::driver::Endpoint;
use left::rdt::EndpointConfig;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// An rdt client and server endpoint over our sockets (same share key, fresh device keys), and
/// the server's address.
fn endpoints(
    client_socket: Arc<ImpairedSocket>,
    server_socket: Arc<ImpairedSocket>,
    options: &Options,
    seed: u64,
) -> Result<(Endpoint, Endpoint, SocketAddr), String> {
    let server_addr = server_socket.local_addr().map_err(|e| e.to_string())?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7264_7421);
    let mut key = || {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        k
    };
    let psk = key();
    let mut server_config = EndpointConfig::new(key(), psk, seed);
    let mut client_config = EndpointConfig::new(key(), psk, seed + 1);
    client_config.accept = false;
    for c in [&mut server_config, &mut client_config] {
        c.transport.encryption = options.encryption;
    }
    let server = Endpoint::new(server_socket, server_config).map_err(|e| e.to_string())?;
    let client = Endpoint::new(client_socket, client_config).map_err(|e| e.to_string())?;
    Ok((client, server, server_addr))
}

/// An rdt flow that writes until `stop` while its receiver counts delivered bytes.
pub async fn flow(
    client_socket: Arc<ImpairedSocket>,
    server_socket: Arc<ImpairedSocket>,
    options: Options,
    pattern: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> Result<(), String> {
    let (client, server, server_addr) =
        endpoints(client_socket, server_socket, &options, options.seed)?;
    let receiver = tokio::spawn({
        let server = server.clone();
        async move {
            let conn = server.accept().await.ok_or("server endpoint closed")?;
            let mut stream = conn
                .accept_stream()
                .await
                .map_err(|e| format!("accept_stream: {e}"))?;
            while let Some(chunk) = stream
                .read(usize::MAX)
                .await
                .map_err(|e| format!("read: {e}"))?
            {
                count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, String>(conn)
        }
    });
    let conn = client
        .connect(server_addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream = conn
        .open_stream()
        .await
        .map_err(|e| format!("open_stream: {e}"))?;
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
    server_conn.close(0, b"done");
    drop((server_conn, stream, conn));
    client.close().await;
    server.close().await;
    Ok(())
}

pub async fn transfer(
    options: &Options,
    run_seed: u64,
    pattern: Arc<Vec<u8>>,
) -> Result<Finish, String> {
    let (client_socket, server_socket) =
        socket_pair(options, run_seed).map_err(|e| format!("bind: {e}"))?;
    let (client, server, server_addr) = endpoints(client_socket, server_socket, options, run_seed)?;
    let bytes = options.bytes;
    let receiver = tokio::spawn({
        let server = server.clone();
        let pattern = pattern.clone();
        async move {
            let conn = server.accept().await.ok_or("server endpoint closed")?;
            let mut stream = conn
                .accept_stream()
                .await
                .map_err(|e| format!("accept_stream: {e}"))?;
            let mut received = 0u64;
            while let Some(chunk) = stream
                .read(usize::MAX)
                .await
                .map_err(|e| format!("read: {e}"))?
            {
                if !verify(&pattern, received, &chunk) {
                    return Err(format!("corrupt data near offset {received}"));
                }
                received += chunk.len() as u64;
            }
            if received != bytes {
                return Err(format!("received {received} of {bytes} bytes"));
            }
            Ok::<_, String>((finish_now(), conn))
        }
    });
    let conn = client
        .connect(server_addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream = conn
        .open_stream()
        .await
        .map_err(|e| format!("open_stream: {e}"))?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(WRITE_CHUNK as u64) as usize;
        let data = pattern_at(&pattern, sent, n);
        stream
            .write_all(data)
            .await
            .map_err(|e| format!("write: {e}"))?;
        sent += data.len() as u64;
    }
    stream.finish().map_err(|e| format!("finish: {e}"))?;
    let (finish, server_conn) = receiver
        .await
        .map_err(|e| format!("receiver task: {e}"))??;
    if let Some(stats) = conn.stats() {
        eprintln!("    rdt sender: {stats:?}");
    }
    server_conn.close(0, b"done");
    drop((server_conn, stream, conn));
    client.close().await;
    server.close().await;
    Ok(finish)
}
