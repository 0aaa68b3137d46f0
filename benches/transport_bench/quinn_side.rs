//! The quinn side of a run: quinn endpoints over the same impaired sockets (through
//! [`QuinnSocket`]), with rustls and a self-signed certificate, and transport settings matched to
//! rdt's. Not the measuring or the report (`main.rs`).

use super::*;

pub(super) async fn quinn_transfer(
    options: &Options,
    run_seed: u64,
    pattern: Arc<Vec<u8>>,
) -> Result<Finish, String> {
    let (client_socket, server_socket) =
        socket_pair(options, run_seed).map_err(|e| format!("bind: {e}"))?;
    let (client, server, server_addr) = quinn_endpoints(client_socket, server_socket, options)?;
    let bytes = options.bytes;
    let receiver = tokio::spawn({
        let server = server.clone();
        let pattern = pattern.clone();
        async move {
            let incoming = server.accept().await.ok_or("server endpoint closed")?;
            let conn = incoming.await.map_err(|e| format!("accept: {e}"))?;
            let mut stream = conn
                .accept_uni()
                .await
                .map_err(|e| format!("accept_uni: {e}"))?;
            let mut received = 0u64;
            while let Some(chunk) = stream
                .read_chunk(usize::MAX, true)
                .await
                .map_err(|e| format!("read: {e}"))?
            {
                if chunk.offset != received {
                    return Err(format!("chunk at {} expected {received}", chunk.offset));
                }
                if !verify(&pattern, received, &chunk.bytes) {
                    return Err(format!("corrupt data near offset {received}"));
                }
                received += chunk.bytes.len() as u64;
            }
            if received != bytes {
                return Err(format!("received {received} of {bytes} bytes"));
            }
            let finish = finish_now();
            conn.close(0u32.into(), b"done");
            Ok::<_, String>(finish)
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
    let finish = receiver
        .await
        .map_err(|e| format!("receiver task: {e}"))??;
    conn.close(0u32.into(), b"done");
    client.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
    client.wait_idle().await;
    server.wait_idle().await;
    Ok(finish)
}

/// A quinn client and server endpoint over our sockets, and the server's address.
pub(super) fn quinn_endpoints(
    client_socket: Arc<ImpairedSocket>,
    server_socket: Arc<ImpairedSocket>,
    options: &Options,
) -> Result<(quinn::Endpoint, quinn::Endpoint, SocketAddr), String> {
    let server_addr = server_socket.local_addr().map_err(|e| e.to_string())?;
    let (server_config, client_config) = quinn_configs(options)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let server = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_config),
        Arc::new(QuinnSocket(server_socket)),
        runtime.clone(),
    )
    .map_err(|e| format!("quinn server endpoint: {e}"))?;
    let mut client = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        Arc::new(QuinnSocket(client_socket)),
        runtime,
    )
    .map_err(|e| format!("quinn client endpoint: {e}"))?;
    client.set_default_client_config(client_config);
    Ok((client, server, server_addr))
}

fn quinn_configs(options: &Options) -> Result<(quinn::ServerConfig, quinn::ClientConfig), String> {
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let _ = options; // quinn always encrypts: "--encryption off" applies to rdt only.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .map_err(|e| format!("rcgen: {e}"))?;
    let cert_der = CertificateDer::from(cert.cert);
    let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let transport = Arc::new(quinn_transport());
    let mut server = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key.into())
        .map_err(|e| format!("server config: {e}"))?;
    server.transport_config(transport.clone());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert_der)
        .map_err(|e| format!("root store: {e}"))?;
    let mut client = quinn::ClientConfig::with_root_certificates(Arc::new(roots))
        .map_err(|e| format!("client config: {e}"))?;
    client.transport_config(transport);
    Ok((server, client))
}

/// quinn's transport settings: its defaults (CUBIC, ACK behaviour), with rdt's datagram sizes,
/// flow-control windows and idle timeout.
fn quinn_transport() -> quinn::TransportConfig {
    let rdt = left::rdt::TransportConfig::default();
    let mut t = quinn::TransportConfig::default();
    let varint = |v: u64| quinn::VarInt::from_u64(v).expect("window fits a varint");
    t.initial_mtu(left::rdt::INITIAL_DATAGRAM_SIZE)
        .min_mtu(left::rdt::INITIAL_DATAGRAM_SIZE)
        .mtu_discovery_config(Some({
            let mut m = quinn::MtuDiscoveryConfig::default();
            m.upper_bound(rdt.max_datagram_size);
            m
        }))
        .stream_receive_window(varint(rdt.stream_window))
        .receive_window(varint(rdt.connection_window))
        .send_window(rdt.connection_window)
        .max_idle_timeout(Some(
            rdt.idle_timeout.try_into().expect("idle timeout fits"),
        ));
    t
}

/// quinn's socket trait over our impaired socket, so quinn's datagrams cross the same path.
#[derive(Debug)]
struct QuinnSocket(Arc<ImpairedSocket>);

impl quinn::AsyncUdpSocket for QuinnSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(QuinnPoller {
            socket: self.0.clone(),
            writable: None,
        })
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        self.0.try_send(&Transmit {
            destination: transmit.destination,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Our socket speaks quinn-udp 0.6 and quinn 0.11 speaks 0.5: receive into our metadata and
        // copy the fields quinn reads.
        let mut ours = [RecvMeta::default(); RECEIVE_BATCH];
        let k = bufs.len().min(meta.len()).min(RECEIVE_BATCH);
        let n = std::task::ready!(self.0.poll_recv(cx, &mut bufs[..k], &mut ours[..k]))?;
        for (theirs, ours) in meta.iter_mut().zip(&ours[..n]) {
            theirs.addr = ours.addr;
            theirs.len = ours.len;
            theirs.stride = ours.stride;
            theirs.ecn = None;
            theirs.dst_ip = ours.dst_ip;
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.socket().max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.0.socket().gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.socket().may_fragment()
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

struct QuinnPoller {
    socket: Arc<ImpairedSocket>,
    writable: Option<WritableFuture>,
}

impl std::fmt::Debug for QuinnPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuinnPoller").finish_non_exhaustive()
    }
}

impl quinn::UdpPoller for QuinnPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fut = this.writable.get_or_insert_with(|| {
            let socket = this.socket.clone();
            Box::pin(async move { socket.writable().await })
        });
        let result = fut.as_mut().poll(cx);
        if result.is_ready() {
            this.writable = None;
        }
        result
    }
}
