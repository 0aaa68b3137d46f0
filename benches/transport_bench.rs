//! Bulk-transfer benchmark: rdt against quinn (QUIC) over loopback, through the same impaired UDP
//! sockets.
//!
//! ```text
//! cargo run --release --example transport_bench -- --bytes N --loss FRACTION [--encryption off|both]
//!     [--runs 3] [--seed S] [--impair SPEC] [--only rdt|quinn]
//! cargo run --release --example transport_bench -- --fairness SECONDS [--impair SPEC]
//! ```
//!
//! Each run moves `--bytes` (default 1 GiB) over one connection and one unidirectional stream, from
//! one endpoint to another in the same process on one two-thread tokio runtime. Both transports use
//! [`left::net::udp::ImpairedSocket`]: the same socket buffers (8 MiB asked), GSO/GRO, and the same
//! seeded impairment (`--loss` random loss on both directions, plus any `--impair` keys in
//! `LEFT_IMPAIR` syntax). quinn gets its default crypto (rustls, ring) and CUBIC, 1200-byte initial
//! datagrams probing up to 1452, like rdt, and the same flow-control windows.
//!
//! The receiver checks every byte against the sender's pattern (a 1 MiB + 13 random block repeated;
//! the odd period catches misplaced data), so goodput counts only verified bytes. Goodput is
//! `bytes / wall time` from connect to the last byte verified, in MB/s (10^6 bytes); CPU is the
//! process's user + system time over the same interval (`getrusage`), per GiB moved. Runs alternate
//! rdt, quinn, rdt, quinn, ...; the median of `--runs` runs of each is reported. Output: one JSON
//! object on stdout; a table, and each rdt run's sender counters (`ConnectionStats`: losses,
//! probes, congestion events), on stderr.
//!
//! `--encryption both` adds an rdt run with encryption off to every round (rdt encrypted, rdt
//! encryption off, quinn, ...), so the encrypted / encryption-off ratio (`rdt_on_over_off`) comes
//! from one run under the same machine load; `rdt_mb_s` is then the encrypted goodput.
//!
//! `--fairness SECONDS` instead runs one rdt flow and one quinn flow at the same time through one
//! shared bottleneck ([`left::net::udp::Link`]: `--impair` keys, by default `rate=8m,queue=64k`,
//! that is 8 MB/s with a 64 kB tail-drop queue), measures each flow's goodput after a one-second
//! warm-up, and exits non-zero unless each gets between half and twice the other's share.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use left::net::impair::ImpairmentConfig;
use left::net::udp::{ImpairedSocket, RecvMeta, SocketConfig, Transmit, RECEIVE_BATCH};
use rand::{RngCore, SeedableRng};

/// Period of the payload pattern: 1 MiB plus a prime, so data put at the wrong offset mismatches.
const PATTERN_PERIOD: usize = (1 << 20) + 13;
/// Bytes handed to a stream write at a time.
const WRITE_CHUNK: usize = 64 * 1024;
/// A run that takes longer than this is reported as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Options {
    bytes: u64,
    loss: f64,
    encryption: bool,
    /// Also run rdt with encryption off in every round (`--encryption both`).
    compare_off: bool,
    runs: usize,
    seed: u64,
    impair: ImpairmentConfig,
    only: Option<String>,
    /// Seconds of a fairness run (rdt and quinn at once over one capped link) instead of the
    /// bulk benchmark.
    fairness: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Measurement {
    secs: f64,
    cpu_secs: f64,
}

impl Measurement {
    fn mb_s(&self, bytes: u64) -> f64 {
        bytes as f64 / self.secs / 1e6
    }
    fn cpu_per_gib(&self, bytes: u64) -> f64 {
        self.cpu_secs / (bytes as f64 / (1u64 << 30) as f64)
    }
}

fn main() {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("transport_bench: {e}");
            eprintln!(
                "usage: transport_bench [--bytes N] [--loss FRACTION] [--encryption on|off|both] [--runs N] [--seed S] [--impair SPEC] [--only rdt|quinn]"
            );
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let pattern = Arc::new(make_pattern(options.seed));
    if let Some(secs) = options.fairness {
        match runtime.block_on(fairness::run(&options, secs, pattern)) {
            Ok((json, pass)) => {
                println!("{json}");
                std::process::exit(if pass { 0 } else { 1 });
            }
            Err(e) => {
                eprintln!("transport_bench: fairness run failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let sizes = runtime.block_on(async {
        let s = ImpairedSocket::bind("127.0.0.1:0".parse().unwrap(), &SocketConfig::default())
            .expect("bind loopback");
        (
            s.socket().buffer_sizes(),
            s.socket().max_gso_segments(),
            s.socket().gro_segments(),
        )
    });
    eprintln!(
        "transport_bench: {} bytes, loss {}, encryption {}, {} runs; socket buffers asked {} got snd {} rcv {}, gso {} gro {}",
        options.bytes,
        options.loss,
        if options.compare_off {
            "on and off"
        } else if options.encryption {
            "on"
        } else {
            "off"
        },
        options.runs,
        sizes.0.send_requested,
        sizes.0.send_granted,
        sizes.0.recv_granted,
        sizes.1,
        sizes.2
    );
    let mut rdt = Vec::new();
    let mut rdt_off = Vec::new();
    let off_options = Options {
        encryption: false,
        ..options.clone()
    };
    let mut quinn = Vec::new();
    let mut errors = Vec::new();
    for run in 0..options.runs {
        let run_seed = options.seed.wrapping_add(run as u64 * 1000);
        if options.only.as_deref() != Some("quinn") {
            match runtime.block_on(measure(rdt_transfer(&options, run_seed, pattern.clone()))) {
                Ok(m) => {
                    eprintln!(
                        "  run {run} rdt:   {:8.1} MB/s  {:6.2} cpu s/GiB",
                        m.mb_s(options.bytes),
                        m.cpu_per_gib(options.bytes)
                    );
                    rdt.push(m)
                }
                Err(e) => {
                    eprintln!("  run {run} rdt failed: {e}");
                    errors.push(format!("rdt run {run}: {e}"));
                }
            }
        }
        if options.compare_off && options.only.as_deref() != Some("quinn") {
            match runtime.block_on(measure(rdt_transfer(
                &off_options,
                run_seed,
                pattern.clone(),
            ))) {
                Ok(m) => {
                    eprintln!(
                        "  run {run} rdt encryption off: {:8.1} MB/s  {:6.2} cpu s/GiB",
                        m.mb_s(options.bytes),
                        m.cpu_per_gib(options.bytes)
                    );
                    rdt_off.push(m)
                }
                Err(e) => {
                    eprintln!("  run {run} rdt encryption off failed: {e}");
                    errors.push(format!("rdt encryption off run {run}: {e}"));
                }
            }
        }
        if options.only.as_deref() != Some("rdt") {
            match runtime.block_on(measure(quinn_transfer(&options, run_seed, pattern.clone()))) {
                Ok(m) => {
                    eprintln!(
                        "  run {run} quinn: {:8.1} MB/s  {:6.2} cpu s/GiB",
                        m.mb_s(options.bytes),
                        m.cpu_per_gib(options.bytes)
                    );
                    quinn.push(m)
                }
                Err(e) => {
                    eprintln!("  run {run} quinn failed: {e}");
                    errors.push(format!("quinn run {run}: {e}"));
                }
            }
        }
    }
    let median = |v: &[Measurement], f: &dyn Fn(&Measurement) -> f64| -> Option<f64> {
        let mut xs: Vec<f64> = v.iter().map(f).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        (!xs.is_empty()).then(|| xs[xs.len() / 2])
    };
    let bytes = options.bytes;
    let rdt_mb_s = median(&rdt, &|m| m.mb_s(bytes));
    let quinn_mb_s = median(&quinn, &|m| m.mb_s(bytes));
    let rdt_cpu = median(&rdt, &|m| m.cpu_per_gib(bytes));
    let quinn_cpu = median(&quinn, &|m| m.cpu_per_gib(bytes));
    let ratio = match (rdt_mb_s, quinn_mb_s) {
        (Some(r), Some(q)) if q > 0.0 => Some(r / q),
        _ => None,
    };
    let rdt_off_mb_s = median(&rdt_off, &|m| m.mb_s(bytes));
    let rdt_off_cpu = median(&rdt_off, &|m| m.cpu_per_gib(bytes));
    let on_over_off = match (rdt_mb_s, rdt_off_mb_s) {
        (Some(r), Some(o)) if o > 0.0 => Some(r / o),
        _ => None,
    };
    let fmt = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.2}"));
    eprintln!();
    eprintln!("| transport | goodput MB/s (median) | CPU s/GiB (median) | runs |");
    eprintln!("|---|---|---|---|");
    eprintln!(
        "| rdt   | {} | {} | {} |",
        fmt(rdt_mb_s),
        fmt(rdt_cpu),
        rdt.len()
    );
    if options.compare_off {
        eprintln!(
            "| rdt, encryption off | {} | {} | {} |",
            fmt(rdt_off_mb_s),
            fmt(rdt_off_cpu),
            rdt_off.len()
        );
    }
    eprintln!(
        "| quinn | {} | {} | {} |",
        fmt(quinn_mb_s),
        fmt(quinn_cpu),
        quinn.len()
    );
    eprintln!("rdt/quinn goodput ratio: {}", fmt(ratio));
    if options.compare_off {
        eprintln!(
            "rdt encrypted / encryption off goodput ratio: {}",
            fmt(on_over_off)
        );
    }
    let mut json = serde_json::json!({
        "bytes": options.bytes,
        "loss": options.loss,
        "encryption": if options.encryption { "on" } else { "off" },
        "quinn_encryption": "on (rustls default suites; quinn cannot switch it off)",
        "runs": options.runs,
        "seed": options.seed,
        "impairment": options.impair.to_string(),
        "rdt_mb_s": rdt_mb_s,
        "quinn_mb_s": quinn_mb_s,
        "rdt_cpu_s_per_gib": rdt_cpu,
        "quinn_cpu_s_per_gib": quinn_cpu,
        "rdt_over_quinn": ratio,
        "rdt_runs_mb_s": rdt.iter().map(|m| m.mb_s(bytes)).collect::<Vec<_>>(),
        "quinn_runs_mb_s": quinn.iter().map(|m| m.mb_s(bytes)).collect::<Vec<_>>(),
        "socket_send_buffer": sizes.0.send_granted,
        "socket_recv_buffer": sizes.0.recv_granted,
        "gso_segments": sizes.1,
        "gro_segments": sizes.2,
        "errors": errors,
    });
    if options.compare_off {
        json["encryption"] = "both".into();
        json["rdt_off_mb_s"] = rdt_off_mb_s.into();
        json["rdt_off_cpu_s_per_gib"] = rdt_off_cpu.into();
        json["rdt_off_runs_mb_s"] = rdt_off
            .iter()
            .map(|m| m.mb_s(bytes))
            .collect::<Vec<_>>()
            .into();
        json["rdt_on_over_off"] = on_over_off.into();
    }
    println!("{json}");
    if !errors.is_empty() {
        std::process::exit(1);
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        bytes: 1 << 30,
        loss: 0.0,
        encryption: true,
        compare_off: false,
        runs: 3,
        seed: 1,
        impair: ImpairmentConfig::default(),
        only: None,
        fairness: None,
    };
    let mut extra: Option<ImpairmentConfig> = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--bytes" => o.bytes = parse_bytes(&value("--bytes")?)?,
            "--loss" => {
                let v = value("--loss")?;
                o.loss = v
                    .parse()
                    .map_err(|_| format!("--loss {v:?} is not a number"))?;
                if !(0.0..1.0).contains(&o.loss) {
                    return Err(format!("--loss {v} must be in [0, 1)"));
                }
            }
            "--encryption" => {
                o.encryption = match value("--encryption")?.as_str() {
                    "on" => true,
                    "off" => false,
                    "both" => {
                        o.compare_off = true;
                        true
                    }
                    v => return Err(format!("--encryption {v:?}: expected on, off or both")),
                }
            }
            "--runs" => {
                let v = value("--runs")?;
                o.runs = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--runs {v:?} is not a positive integer"))?;
            }
            "--seed" => {
                let v = value("--seed")?;
                o.seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?} is not an unsigned integer"))?;
            }
            "--impair" => {
                let v = value("--impair")?;
                extra = Some(v.parse().map_err(|e| format!("--impair: {e}"))?);
            }
            "--only" => {
                let v = value("--only")?;
                if v != "rdt" && v != "quinn" {
                    return Err(format!("--only {v:?}: expected rdt or quinn"));
                }
                o.only = Some(v);
            }
            "--fairness" => {
                let v = value("--fairness")?;
                o.fairness = Some(v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    format!("--fairness {v:?} is not a positive number of seconds")
                })?);
            }
            "--bench" => {} // passed by `cargo bench`; harmless
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.bytes == 0 {
        return Err("--bytes must be positive".into());
    }
    let mut impair = extra.unwrap_or_default();
    if o.loss > 0.0 {
        impair.loss = o.loss;
    }
    impair.seed = o.seed;
    impair.validate().map_err(|e| e.to_string())?;
    o.impair = impair;
    Ok(o)
}

/// Parses `1073741824`, `1G`, `256M`, `64K` (binary multiples).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (number, shift) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 10),
        Some('M') => (&s[..s.len() - 1], 20),
        Some('G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("--bytes {s:?} is not a size like 1073741824 or 1G"))
}

fn make_pattern(seed: u64) -> Vec<u8> {
    let mut pattern = vec![0u8; PATTERN_PERIOD];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7061_7474).fill_bytes(&mut pattern);
    pattern
}

/// The sender's bytes for stream offset `offset`, at most `max` of them (never crossing a period).
fn pattern_at(pattern: &[u8], offset: u64, max: usize) -> &[u8] {
    let start = (offset % PATTERN_PERIOD as u64) as usize;
    let end = (start + max).min(PATTERN_PERIOD);
    &pattern[start..end]
}

/// Checks received bytes at stream offset `offset` against the pattern.
fn verify(pattern: &[u8], offset: u64, mut data: &[u8]) -> bool {
    let mut offset = offset;
    while !data.is_empty() {
        let expected = pattern_at(pattern, offset, data.len());
        if data[..expected.len()] != *expected {
            return false;
        }
        data = &data[expected.len()..];
        offset += expected.len() as u64;
    }
    true
}

/// The two sockets of a run: impaired alike, with seeds of their own.
fn socket_pair(
    options: &Options,
    run_seed: u64,
) -> io::Result<(Arc<ImpairedSocket>, Arc<ImpairedSocket>)> {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let config = |seed: u64| SocketConfig {
        impairment: options
            .impair
            .is_active()
            .then(|| options.impair.with_seed(seed)),
        ..SocketConfig::default()
    };
    let a = ImpairedSocket::bind(loopback, &config(run_seed.wrapping_mul(2)))?;
    let b = ImpairedSocket::bind(loopback, &config(run_seed.wrapping_mul(2) + 1))?;
    Ok((Arc::new(a), Arc::new(b)))
}

/// When and at what process CPU time the receiver verified the last byte; teardown after that
/// point is not measured.
type Finish = (Instant, f64);

fn finish_now() -> Finish {
    (Instant::now(), cpu_seconds())
}

/// Runs `transfer` and measures wall time and process CPU time from its start to its [`Finish`].
async fn measure(
    transfer: impl Future<Output = Result<Finish, String>>,
) -> Result<Measurement, String> {
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    match tokio::time::timeout(RUN_TIMEOUT, transfer).await {
        Ok(Ok((t1, cpu1))) => Ok(Measurement {
            secs: (t1 - t0).as_secs_f64(),
            cpu_secs: cpu1 - cpu0,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("timed out after {RUN_TIMEOUT:?}")),
    }
}

/// User plus system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes a `rusage` we own; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

// ---------------------------------------------------------------------------------------------
// rdt

async fn rdt_transfer(
    options: &Options,
    run_seed: u64,
    pattern: Arc<Vec<u8>>,
) -> Result<Finish, String> {
    rdt_side::transfer(options, run_seed, pattern).await
}

mod rdt_side {
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
        let (client, server, server_addr) =
            endpoints(client_socket, server_socket, options, run_seed)?;
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
}

// ---------------------------------------------------------------------------------------------
// quinn

async fn quinn_transfer(
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
fn quinn_endpoints(
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

// ---------------------------------------------------------------------------------------------
// fairness: rdt and quinn through one capped link

mod fairness {
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
            let s =
                UdpSocket::bind(loopback, &SocketConfig::default()).map_err(|e| e.to_string())?;
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
        let (client, server, server_addr) =
            quinn_endpoints(client_socket, server_socket, &options)?;
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
}
