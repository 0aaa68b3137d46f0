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
//!
//! Files: `main.rs` (options, the run loop, the report, and what both transports share: the
//! payload pattern, the socket pair, measuring), `rdt_side.rs` and `quinn_side.rs` (one bulk
//! transfer over each transport), `fairness.rs` (the `--fairness` mode).
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

mod fairness;
mod quinn_side;
mod rdt_side;

use quinn_side::{quinn_endpoints, quinn_transfer};

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
