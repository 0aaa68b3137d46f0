//! `left sync PEER...`: pull what peers have, then check it out into the share folder.
//!
//! Steps: open the store (taking its lock) and finish a checkout a crash cut short; snapshot the
//! share ("before sync") so no local change can be overwritten unseen; fetch from every peer at
//! once ([`left::session::fetch`], retrying with backoff while nothing can be fetched, for at most
//! `--timeout` seconds without progress); then, when the fetched head is ahead of ours (or we have
//! none, or our tree is empty), check it out. When both sides changed since they last agreed the
//! folder is left untouched, the fetched snapshot stays in the store as the peer's ref, and the
//! exit code is 4.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use left::ecp::ShareId;
use left::identity::{self, DeviceId, Identity};
use left::session::{
    self, Endpoints, FetchConfig, FetchProgress, FetchReport, PeerFailure, Target,
};
use left::sync::integrate::{integrate, IntegrateOptions, Integrated};
use left::sync::PullConfig;
use left_store::{AddOptions, CheckoutOptions, CheckoutReport, NodeId, Progress, Store};
use serde_json::json;

use super::serve::{bind, endpoint_config, parse_on_off, runtime, BookPolicy, DEFAULT_PORT};
use super::{
    fmt, share_root, CliError, Global, Output, EXIT_DIVERGED, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL,
};

/// The usage error for a peer address that does not parse or resolve.
pub(crate) fn bad_address(given: &str, why: &str) -> anyhow::Error {
    if why.starts_with("cannot resolve") {
        // A well-formed name the resolver cannot answer for (it may be the network): an error.
        return CliError::Peers {
            message: format!("bad peer address {given:?}: {why}"),
            hint: Some("check the host name, or give its IP address".into()),
        }
        .into();
    }
    CliError::Usage {
        message: format!("bad peer address {given:?}: {why}"),
        hint: Some(
            "give HOST:PORT, a host (port 22001), or an IP address ([::1]:22001, ::1)".into(),
        ),
    }
    .into()
}

/// Arguments of `left sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Peers to pull from: HOST:PORT, a bare host (port 22001), IPv4 or IPv6 ([::1]:22001, ::1)
    #[arg(value_name = "PEER")]
    peers: Vec<String>,
    /// More peers, comma-separated (as the seed's --ip a,b,c)
    #[arg(long, value_name = "A,B,C", value_delimiter = ',')]
    ip: Vec<String>,
    /// Encrypt packets (on|off, or yes|no); the peers must use the same setting
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    encryption: bool,
    /// fsync every file the checkout writes (the store is durable either way)
    #[arg(long)]
    fsync: bool,
    /// Give up after this many seconds without progress (retrying unreachable peers meanwhile)
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    timeout: f64,
}

/// The peers named on the command line: the positional ones, then those of `--ip a,b,c`.
pub(crate) fn given_peers(peers: &[String], ip: &[String]) -> Vec<String> {
    let mut given: Vec<String> = peers.to_vec();
    given.extend(
        ip.iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
    );
    given
}

/// Resolves one peer as given: `HOST:PORT`, `[IPv6]:PORT`, a bare IP or host (default port).
pub(crate) fn resolve(peer: &str) -> Result<SocketAddr, String> {
    let p = peer.trim();
    if p.is_empty() {
        return Err("empty peer address".into());
    }
    if let Some(a) = super::serve::literal_addr(p) {
        return Ok(a);
    }
    let (host, port) = match p.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("bad port {port:?}"))?;
            (h, port)
        }
        _ => (p, DEFAULT_PORT),
    };
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addrs.next().ok_or_else(|| format!("{host} has no address"))
}

/// One client endpoint per address family the targets use, with this device's key, the share key,
/// the peer book's allow-list and the encryption setting. Must run inside the tokio runtime.
pub(crate) fn bind_endpoints(
    targets: &[Target],
    identity: &Identity,
    share_key: [u8; 32],
    allowed: Option<Vec<[u8; 32]>>,
    encryption: bool,
) -> anyhow::Result<Endpoints> {
    let mut eps = Endpoints::default();
    if targets.iter().any(|t| t.addr.is_ipv4()) {
        let cfg = endpoint_config(identity, share_key, allowed.clone(), encryption);
        eps.v4 = Some(bind(SocketAddr::from(([0, 0, 0, 0], 0)), cfg)?);
    }
    if targets.iter().any(|t| t.addr.is_ipv6()) {
        let cfg = endpoint_config(identity, share_key, allowed, encryption);
        eps.v6 = Some(bind(SocketAddr::from(([0u16; 8], 0)), cfg)?);
    }
    Ok(eps)
}

/// The fetch's progress bar on stderr: chunk bytes fetched against those found missing so far
/// (the total grows while the walk goes on), with rate and ETA. Drawn only on a terminal, without
/// -q, and only once the fetch has run for a second.
pub(crate) struct FetchBar {
    bar: Option<indicatif::ProgressBar>,
    shown: std::sync::atomic::AtomicBool,
}

impl FetchBar {
    pub(crate) fn new(enabled: bool) -> FetchBar {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(0),
                indicatif::ProgressDrawTarget::hidden(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "   fetch [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        FetchBar {
            bar,
            shown: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            if self.shown.load(Ordering::Relaxed) {
                bar.finish_and_clear();
            }
        }
    }
}

impl FetchProgress for FetchBar {
    fn update(&self, discovered: u64, fetched: u64) {
        let Some(bar) = &self.bar else { return };
        bar.set_length(discovered.max(fetched));
        bar.set_position(fetched);
        if !self.shown.load(Ordering::Relaxed)
            && bar.elapsed() >= Duration::from_secs(1)
            && !self.shown.swap(true, Ordering::Relaxed)
        {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    }
}

/// What to do with the fetched heads.
enum Decision {
    /// Nothing fetched (every peer failed).
    Failed,
    /// Nothing to check out: up to date, or the peers are behind us.
    UpToDate,
    /// Check out this head.
    Checkout(NodeId),
    /// Both sides changed; `peer` names one peer whose head diverged.
    Diverged(String),
}

/// Runs `left sync`.
pub(crate) fn run(global: &Global, out: &Output, args: SyncArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let given = given_peers(&args.peers, &args.ip);
    let mut targets = Vec::new();
    for g in &given {
        let addr = resolve(g).map_err(|e| bad_address(g, &e))?;
        targets.push(Target {
            label: g.clone(),
            addr,
        });
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout < 1e9) {
        return Err(CliError::Usage {
            message: "--timeout must be a positive number of seconds".into(),
            hint: None,
        }
        .into());
    }
    // No peer named: the devices of the peer book, at the address each was last seen at.
    if targets.is_empty() {
        let dir = super::store_dir(global)?;
        super::remote::add_book_targets(&dir, &mut targets)?;
        if targets.is_empty() {
            return Err(CliError::Usage {
                message: "no peer given, and the peer book knows none".into(),
                hint: Some(
                    "name one: `left sync HOST:PORT` (or a host, or --ip A,B); a peer synced with once is remembered (`left peers`)"
                        .into(),
                ),
            }
            .into());
        }
    }

    let (dir, store) = super::open_store_exclusive(global, "sync", "sync")?;
    let store = Arc::new(store);
    let share = share_root(&dir, &store)?;
    let identity = Identity::load(&dir).context("cannot read the device key")?;
    let share_key = identity::load_share_key(&dir).context("cannot read the share key")?;
    let device = identity.device_id();
    let policy = BookPolicy::load(&dir)?;
    let mut copts = CheckoutOptions {
        fsync: args.fsync,
        ..Default::default()
    };
    let progress = out.progress();

    // 1. A checkout a crash cut short is finished first.
    if store
        .pending_checkout()
        .context("cannot read the checkout journal")?
        .is_some()
    {
        store
            .resume_checkout(&share, &copts, &progress)
            .context("cannot finish the interrupted checkout")?;
    }
    // 2. Snapshot local changes so nothing is overwritten unseen.
    let unwritten_before = store
        .unwritten_paths()
        .context("cannot read the paths earlier checkouts could not write")?;
    let add = store
        .add(
            &share,
            &[],
            &AddOptions {
                device: device.0,
                message: "before sync".into(),
                ..AddOptions::default()
            },
            &progress,
        )
        .with_context(|| format!("cannot snapshot {} before syncing", share.display()))?;
    // Paths add kept at their previous version because it could not read them (a path an earlier
    // checkout could not write is reported as unwritten instead, below).
    let skipped: Vec<&left_store::Skipped> = add
        .skipped
        .iter()
        .filter(|s| !unwritten_before.contains(&s.path))
        .collect();
    if !out.quiet {
        super::add::frozen_warning(add.newly_frozen);
        for s in &skipped {
            eprintln!(
                "left: warning: {}: {} (its previous version is kept)",
                s.path.display(),
                s.reason
            );
        }
    }
    // Paths earlier checkouts could not write are tried again at every sync, also when there
    // is nothing new to fetch (their cause may be gone: a folder made writable).
    let retried = if unwritten_before.is_empty() {
        None
    } else {
        store
            .retry_unwritten(&share, &copts)
            .context("cannot write the paths an earlier checkout could not")?
    };
    let local_head = store.head().context("cannot read the head")?;

    // 3. Fetch.
    let fetch_started = Instant::now();
    let share_id = ShareId::from_key(&share_key);
    let mut pull = PullConfig::for_store(&store);
    // A peer silent this long is dropped (and retried while the --timeout budget lasts).
    pull.stall_timeout = Duration::from_secs(10).min(Duration::from_secs_f64(args.timeout));
    let mut fcfg = FetchConfig::new(session::hello(share_id, device.0, args.encryption), pull);
    fcfg.timeout = Duration::from_secs_f64(args.timeout);
    fcfg.connect_timeout = fcfg.connect_timeout.min(fcfg.timeout);
    // Big new files are written out as they arrive, for the checkout below to rename in.
    fcfg.stage = true;
    let rt = runtime()?;
    let (report, eps) = rt.block_on(async {
        let eps = bind_endpoints(
            &targets,
            &identity,
            share_key,
            policy.allowed_peers(),
            args.encryption,
        )?;
        let bar = FetchBar::new(!out.quiet);
        let report = session::fetch(&eps, store.clone(), &targets, &fcfg, &bar).await;
        bar.finish();
        // A peer several snapshots ahead: fetch the headers between its head and ours, so the
        // decision below sees that ours is an ancestor (headers only, never their trees).
        if let Some(local) = local_head {
            for (head, idx) in &report.heads {
                if *head == local || store.is_ancestor(local, *head).unwrap_or(false) {
                    continue;
                }
                let Ok(floor) = store.snapshot(local).map(|s| s.time_ns) else {
                    continue;
                };
                for &i in idx {
                    let Some(addr) = report.peers[i].addr else {
                        continue;
                    };
                    let label = &report.peers[i].label;
                    match session::fetch_history(
                        &eps,
                        addr,
                        &fcfg,
                        &store,
                        *head,
                        floor,
                        session::HISTORY_LIMIT,
                    )
                    .await
                    {
                        Ok(_) => break,
                        Err(e) if !out.quiet => {
                            eprintln!(
                                "left: cannot fetch the history of {} from {label}: {e}",
                                head.fmt_short()
                            )
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        anyhow::Ok((report, eps))
    })?;
    let fetch_seconds = fetch_started.elapsed().as_secs_f64();
    record_peers(&dir, &report, out.quiet);
    let checkout_started = Instant::now();

    // 4. Decide.
    if let Some(e) = &report.local_error {
        return Ok(refuse(
            &format!("cannot sync: {e}"),
            Some(local_error_hint(e)),
        ));
    }
    let decision = decide(&store, local_head, &report)?;
    copts.staged = report.staged.clone();
    let mut checkout: Option<CheckoutReport> = None;
    let mut merged: Option<Integrated> = None;
    let mut diverged = false;
    match &decision {
        Decision::Checkout(to) => {
            let r = match store.checkout(&share, local_head, *to, &copts, &progress) {
                Ok(r) => r,
                Err(e @ left_store::Error::DiskFull { .. }) => {
                    let line = format!(
                        "cannot check out {} into {}",
                        to.fmt_short(),
                        share.display()
                    );
                    let hint = left::control::store_error_hint(&e);
                    return Ok(match space_report(&store, *to, local_head, &share) {
                        Some(space) => refuse(
                            &format!("{line}: not enough space: {}", space.text),
                            if space.needs > space.size {
                                Some("the snapshot needs more than this whole file system holds; nothing was changed")
                            } else {
                                hint.as_deref()
                            },
                        ),
                        None => refuse(&format!("{line}: {e}"), hint.as_deref()),
                    });
                }
                // The store refuses a malformed tree (a folder naming an entry twice, ...) in its
                // planning pass, before it writes anything.
                Err(e @ left_store::Error::Corrupt { .. }) => {
                    return Ok(refuse(
                        &format!("refusing to check out {}: {e}", to.fmt_short()),
                        Some(
                            "nothing was checked out; the fetched snapshot (or this store) is damaged: \
                             `left verify` here names what; a peer serving a malformed tree should hear of it",
                        ),
                    ))
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot check out {} into {}",
                        to.fmt_short(),
                        share.display()
                    )))
                }
            };
            checkout = Some(r);
        }
        Decision::Diverged(peer) => {
            // Both sides changed (a share joined with files already in it, or edits on both
            // sides): merged as automatic sync merges, so nothing is lost (a path changed on
            // both sides keeps both versions, the other one under a conflict name).
            let opts = IntegrateOptions {
                device: device.0,
                message: "before sync".into(),
                checkout: copts.clone(),
                settle_ns: 0,
                time_ns: None,
            };
            let heads: Vec<NodeId> = report.heads.iter().map(|(h, _)| *h).collect();
            let ig = rt
                .block_on(merge_fetched(
                    &eps, &store, &share, &report, &fcfg, &heads, &opts, &progress,
                ))
                .with_context(|| format!("cannot merge with what {peer} has"))?;
            if let Some((h, e)) = ig.errors.first() {
                return Err(anyhow::anyhow!(
                    "cannot merge {} from {peer} into {}: {e}",
                    h.fmt_short(),
                    share.display()
                ));
            }
            if !ig.need_trees.is_empty() || !ig.need_headers.is_empty() {
                diverged = true;
                eprintln!(
                    "left: both this share and {peer} changed since they last agreed, and the history needed to merge them is on no peer reached; nothing was checked out"
                );
            }
            if !out.quiet {
                for (path, copy) in &ig.conflicts {
                    eprintln!(
                        "left: {path} changed on both sides: both are kept, the other version as {copy}"
                    );
                }
            }
            merged = Some(ig);
        }
        Decision::UpToDate | Decision::Failed => {}
    }
    drop(progress);
    let udp = eps.udp_bytes();
    rt.block_on(eps.close());
    drop(rt);
    let checkout_seconds = checkout_started.elapsed().as_secs_f64();
    let head = store.head().ok().flatten();
    let seconds = started.elapsed().as_secs_f64();

    // 5. Output.
    let failed = matches!(decision, Decision::Failed);
    // What is still not written here, after the retry and the checkout.
    let unwritten = store
        .unwritten_paths()
        .context("cannot read the paths the checkout could not write")?;
    let mut stderr = std::io::stderr().lock();
    for p in &report.peers {
        if let Some(e) = &p.error {
            if failed {
                let _ = writeln!(stderr, "left: cannot sync: {}: {e}", p.label);
            } else if !out.quiet {
                let _ = writeln!(stderr, "left: warning: {}: {e}", p.label);
            }
        }
    }
    if failed {
        if let Some(hint) = failure_hint(&report) {
            let _ = writeln!(stderr, "hint: {hint}");
        }
    }
    drop(stderr);
    let st = &report.stats;
    out.json(&json!({
        "head": head.map(|h| h.to_string()),
        "fetched_head": fetched_head(&decision, &report).map(|h| h.to_string()),
        "bytes_sent": udp.0,
        "bytes_received": udp.1,
        "payload_bytes_received": st.payload_bytes_received,
        "chunks_fetched": st.chunks_fetched,
        "nodes_fetched": st.nodes_fetched,
        "chunk_bytes_fetched": st.chunk_bytes_fetched,
        "seconds": seconds,
        "fetch_seconds": fetch_seconds,
        "checkout_seconds": checkout_seconds,
        "checked_out": checkout.is_some() || merged.as_ref().is_some_and(|m| m.moved()),
        "diverged": diverged,
        "merged": merged.as_ref().map(|m| json!({
            "merges": m.merges,
            "fast_forwards": m.fast_forwards,
            "conflicts": m.conflicts.iter().map(|(path, copy)| json!({
                "path": path,
                "copy": copy,
            })).collect::<Vec<_>>(),
            "files_written": m.files_written,
            "files_removed": m.files_removed,
            "kept": m.kept,
        })),
        "retried": retried.as_ref().map(|r| json!({
            "files_written": r.files_written,
        })),
        "unwritten": unwritten.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "skipped": skipped.iter().map(|s| json!({
            "path": s.path.display().to_string(),
            "reason": s.reason,
        })).collect::<Vec<_>>(),
        "checkout": checkout.as_ref().map(|c| json!({
            "files_written": c.files_written,
            "files_removed": c.files_removed,
            "dirs_created": c.dirs_created,
            "dirs_removed": c.dirs_removed,
            "symlinks_written": c.symlinks_written,
            "bytes_written": c.bytes_written,
            "bytes_reused": c.bytes_reused,
            "files_staged": c.files_staged,
            "kept": c.kept.len(),
            "unwritten": c.unwritten.iter().map(|u| json!({
                "path": u.path.display().to_string(),
                "reason": u.reason,
            })).collect::<Vec<_>>(),
        })),
        "peers": report.peers.iter().map(|p| json!({
            "addr": p.addr.map(|a| a.to_string()).unwrap_or_default(),
            "peer": p.label,
            "device": p.device.map(|d| DeviceId(d).to_string()),
            "head": p.head.map(|h| h.to_string()),
            "error": p.error,
        })).collect::<Vec<_>>(),
    }))?;
    if failed {
        return Ok(EXIT_ERROR);
    }
    let line = match (&decision, &checkout) {
        (Decision::Checkout(to), Some(c)) => format!(
            "synced {}: fetched {} of new data ({} chunks, {} nodes; {} on the wire) in {seconds:.1} s; wrote {} {} ({}{}), removed {}",
            to.fmt_short(),
            fmt::bytes(st.chunk_bytes_fetched),
            st.chunks_fetched,
            st.nodes_fetched,
            fmt::bytes(udp.1),
            c.files_written,
            if c.files_written == 1 { "file" } else { "files" },
            fmt::bytes(c.bytes_written),
            if c.bytes_reused > 0 {
                format!(", {} of it copied from the old versions", fmt::bytes(c.bytes_reused))
            } else {
                String::new()
            },
            c.files_removed
        ),
        (Decision::Diverged(_), _) if diverged => format!(
            "fetched {} chunks and {} nodes ({}); the share diverged, nothing checked out",
            st.chunks_fetched,
            st.nodes_fetched,
            fmt::bytes(st.payload_bytes_received)
        ),
        (Decision::Diverged(peer), _) => {
            let m = merged.as_ref();
            format!(
                "merged what {peer} has with the changes here: {}; fetched {} of new data in {seconds:.1} s; wrote {} {}, removed {}{}",
                head.map(|h| h.fmt_short()).unwrap_or_default(),
                fmt::bytes(st.chunk_bytes_fetched),
                m.map_or(0, |m| m.files_written),
                if m.map_or(0, |m| m.files_written) == 1 { "file" } else { "files" },
                m.map_or(0, |m| m.files_removed),
                match m.map_or(0, |m| m.conflicts.len()) {
                    0 => String::new(),
                    n => format!("; {n} changed on both sides, both versions kept"),
                }
            )
        }
        _ => match head {
            Some(h) => format!("up to date at {}", h.fmt_short()),
            None => "up to date: no snapshot on either side".to_string(),
        },
    };
    let line = match retried.as_ref().map(|r| r.files_written) {
        Some(n) if n > 0 => format!(
            "{line}; wrote {n} {} an earlier checkout could not",
            if n == 1 { "path" } else { "paths" }
        ),
        _ => line,
    };
    out.human(line)?;
    if !out.quiet {
        let reports = retried.iter().chain(checkout.iter());
        let mut named = Vec::new();
        for u in reports.flat_map(|c| c.unwritten.iter()) {
            if !named.contains(&&u.path) {
                eprintln!("left: warning: {}: {}", u.path.display(), u.reason);
                named.push(&u.path);
            }
        }
        if let Some(m) = &merged {
            for u in &m.unwritten {
                eprintln!("left: warning: {u}");
            }
        }
        if !unwritten.is_empty() {
            eprintln!(
                "left: warning: {} path(s) could not be written here and keep their synced version in the store; `left sync` tries again (`left status` lists them)",
                unwritten.len()
            );
        }
    }
    Ok(if diverged {
        EXIT_DIVERGED
    } else if !unwritten.is_empty() || !skipped.is_empty() {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

/// Records in the peer book every peer that answered (its device, at the address we reached it
/// at), so `left peers`, `left verify --repair` and a later `left sync` without arguments know
/// it. A book that cannot be written is a warning, never a failed sync.
fn record_peers(dir: &Path, report: &FetchReport, quiet: bool) {
    let answered: Vec<([u8; 32], std::net::SocketAddr)> = report
        .peers
        .iter()
        .filter(|p| p.error.is_none() || p.fetched || p.same)
        .filter_map(|p| Some((p.device?, p.addr?)))
        .collect();
    if answered.is_empty() {
        return;
    }
    let mut book = match left::peers::PeerBook::load(dir) {
        Ok(b) => b,
        Err(e) => {
            if !quiet {
                eprintln!("left: warning: cannot record the peers reached: {e}");
            }
            return;
        }
    };
    for (device, addr) in answered {
        if let Err(e) = book.record_seen(dir, device, addr) {
            if !quiet {
                eprintln!(
                    "left: warning: cannot record peer {}: {e}",
                    DeviceId(device)
                );
            }
        }
    }
}

/// Merges the fetched `heads` into ours by automatic sync's rules ([`integrate`]): their whole
/// ancestry first (headers only), so the merge base is found; when a merge still lacks history
/// headers or a merge base's tree, those are fetched from the peers that offered the heads and
/// the merge is tried again (twice at most: what they lack, nobody reached has). What remains
/// missing is left in `need_headers` / `need_trees` (nothing was merged for those heads).
#[allow(clippy::too_many_arguments)]
async fn merge_fetched(
    eps: &Endpoints,
    store: &Arc<Store>,
    share: &Path,
    report: &FetchReport,
    fcfg: &FetchConfig,
    heads: &[NodeId],
    opts: &IntegrateOptions,
    progress: &dyn Progress,
) -> left_store::Result<Integrated> {
    let mut sources: Vec<Target> = Vec::new();
    for (h, idx) in &report.heads {
        for &i in idx {
            let Some(addr) = report.peers[i].addr else {
                continue;
            };
            if !sources.iter().any(|t| t.addr == addr) {
                sources.push(Target {
                    label: report.peers[i].label.clone(),
                    addr,
                });
            }
        }
        for &i in idx {
            let Some(addr) = report.peers[i].addr else {
                continue;
            };
            let history = session::fetch_history(
                eps,
                addr,
                fcfg,
                store,
                *h,
                i64::MIN,
                session::HISTORY_LIMIT,
            );
            if history.await.is_ok() {
                break;
            }
        }
    }
    let mut total = Integrated::default();
    for round in 0..3 {
        let ig = integrate(store, share, heads, opts, progress)?;
        if round == 0 {
            total.before = ig.before;
        }
        total.after = ig.after;
        total.scanned |= ig.scanned;
        total.merges += ig.merges;
        total.fast_forwards += ig.fast_forwards;
        total.conflicts.extend(ig.conflicts.iter().cloned());
        total.kept += ig.kept;
        total.unwritten.extend(ig.unwritten.iter().cloned());
        total.files_written += ig.files_written;
        total.files_removed += ig.files_removed;
        total.need_trees = ig.need_trees.clone();
        total.need_headers = ig.need_headers.clone();
        total.errors = ig.errors.clone();
        if (ig.need_trees.is_empty() && ig.need_headers.is_empty()) || round == 2 {
            break;
        }
        for id in &ig.need_headers {
            fetch_headers(eps, store, &sources, fcfg, *id).await;
        }
        for base in &ig.need_trees {
            let mut want = fcfg.clone();
            want.want = Some(*base);
            want.announce = false;
            // A merge base is not checked out (and a stager would empty the stage folder the
            // head's staged files are waiting in).
            want.stage = false;
            session::fetch(eps, store.clone(), &sources, &want, &()).await;
        }
    }
    Ok(total)
}

/// Fetches the snapshot header `id` and its ancestry from the first of `sources` that has it.
async fn fetch_headers(
    eps: &Endpoints,
    store: &Arc<Store>,
    sources: &[Target],
    fcfg: &FetchConfig,
    id: NodeId,
) {
    for t in sources {
        let Ok(mut s) = session::NodeSession::open(eps, t.addr, fcfg, store).await else {
            continue;
        };
        let mut keep = |nid: NodeId, b: &[u8]| -> Result<(), String> {
            store
                .put_snapshot_header(nid, b)
                .map(drop)
                .map_err(|e| format!("snapshot {}: {e}", nid.fmt_short()))
        };
        let got = s.get_nodes(&[id], &mut keep).await;
        s.close().await;
        if matches!(&got, Ok(g) if g.contains(&id)) {
            let _ = session::fetch_history(
                eps,
                t.addr,
                fcfg,
                store,
                id,
                i64::MIN,
                session::HISTORY_LIMIT,
            )
            .await;
            return;
        }
    }
}

fn fetched_head(d: &Decision, r: &FetchReport) -> Option<NodeId> {
    match d {
        Decision::Checkout(h) => Some(*h),
        _ => r.heads.first().map(|(h, _)| *h),
    }
}

/// What to do about one kind of failure, or `None` when no advice would help.
pub(crate) fn hint_for(kind: PeerFailure) -> Option<&'static str> {
    Some(match kind {
        PeerFailure::Unreachable => {
            "check that `left serve` runs on the peer, that the address and port are right, and that both sides hold the same share key (`left share-key`)"
        }
        PeerFailure::Misbehaved => {
            "the peer sent data that failed verification; nothing from it was kept; tell its owner (`left verify` there checks its store)"
        }
        PeerFailure::Refused => {
            "a device was refused: check `left peers` on both sides (`--pin`/`--unpin`, `--revoke`/`--unrevoke`)"
        }
        PeerFailure::Encryption => "use the same --encryption setting on both sides",
        PeerFailure::OtherShare => {
            "both sides must hold the same share key (`left share-key` there, `left init --join KEY` here)"
        }
        PeerFailure::Version => {
            "the two sides run incompatible versions of left: upgrade the older one"
        }
        PeerFailure::Other => return None,
    })
}

/// One hint line for a failed sync: the advice for each kind of failure among the peers (named
/// when they failed differently), or `None` when no advice would help.
pub(crate) fn failure_hint(r: &FetchReport) -> Option<String> {
    let mut kinds: Vec<(PeerFailure, Vec<&str>)> = Vec::new();
    for p in r.peers.iter().filter(|p| p.error.is_some()) {
        let kind = p.failure.unwrap_or(PeerFailure::Other);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, labels)) => labels.push(&p.label),
            None => kinds.push((kind, vec![&p.label])),
        }
    }
    let hints: Vec<(Vec<&str>, &str)> = kinds
        .into_iter()
        .filter_map(|(k, labels)| hint_for(k).map(|h| (labels, h)))
        .collect();
    match hints.as_slice() {
        [] => None,
        [(_, h)] => Some(h.to_string()),
        many => Some(
            many.iter()
                .map(|(labels, h)| format!("{}: {h}", labels.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// What to do about a local store failure during the fetch (the text is the store error's).
fn local_error_hint(error: &str) -> &'static str {
    if error.contains("disk full") {
        "free some disk space and run `left sync` again: what was fetched is kept and is not fetched again"
    } else {
        "run `left verify` to check the local store; what was fetched so far is kept"
    }
}

/// Prints a refusal (`left: LINE` and its hint) the way `main` prints errors; returns the exit
/// code.
fn refuse(line: &str, hint: Option<&str>) -> u8 {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "left: {line}");
    if let Some(h) = hint {
        let _ = writeln!(stderr, "hint: {h}");
    }
    EXIT_ERROR
}

/// Why a checkout needs more space than there is.
struct Space {
    /// "the checkout writes X, Y free on MOUNT (the file system of SHARE)".
    text: String,
    /// X.
    needs: u64,
    /// The file system's whole size.
    size: u64,
}

/// For a checkout refused for want of space. X is the size of every file of `to` that is new or
/// changed against `from` (what the checkout writes, before the space the replaced files free),
/// Y what `statvfs` reports free to unprivileged users. `None` when either cannot be found.
fn space_report(store: &Store, to: NodeId, from: Option<NodeId>, share: &Path) -> Option<Space> {
    let needs = bytes_to_write(store, to, from).ok()?;
    let c = std::ffi::CString::new(share.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    let size = (st.f_blocks as u64).saturating_mul(st.f_frsize as u64);
    let text = format!(
        "the checkout writes {}, {} free on {} (the file system of {})",
        fmt::bytes(needs),
        fmt::bytes(free),
        mount_point(share).display(),
        share.display()
    );
    Some(Space { text, needs, size })
}

/// The mount point of the file system holding `path`: its highest ancestor on the same device.
fn mount_point(path: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::metadata(path).map(|m| m.dev()) else {
        return path.to_path_buf();
    };
    let mut top = path;
    while let Some(parent) = top.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == dev => top = parent,
            _ => break,
        }
    }
    top.to_path_buf()
}

/// Bytes of the files of snapshot `to` that are new or changed against snapshot `from`. Work is
/// proportional to the changed folders.
fn bytes_to_write(store: &Store, to: NodeId, from: Option<NodeId>) -> anyhow::Result<u64> {
    use left_store::node::Target;
    use left_store::EntryKind;
    let new_root = store.snapshot_root(to)?;
    let old_root = from.and_then(|f| store.snapshot_root(f).ok());
    let mut total = 0u64;
    let mut work = vec![(new_root, old_root)];
    while let Some((dir, old)) = work.pop() {
        if Some(dir) == old {
            continue;
        }
        let entries = store.dir_entries(dir)?;
        let old_entries = match old {
            Some(o) => store.dir_entries(o).unwrap_or_default(),
            None => Vec::new(),
        };
        for e in entries {
            let before = old_entries
                .binary_search_by(|o| o.name.cmp(&e.name))
                .ok()
                .map(|i| &old_entries[i]);
            match (&e.kind, &e.target) {
                (EntryKind::Dir, Target::Node(child)) => {
                    let old_child = before.and_then(|o| match (&o.kind, &o.target) {
                        (EntryKind::Dir, Target::Node(n)) => Some(*n),
                        _ => None,
                    });
                    work.push((*child, old_child));
                }
                (EntryKind::File, _)
                    if before.is_none_or(|o| o.target != e.target || o.kind != e.kind) =>
                {
                    total = total.saturating_add(e.size);
                }
                _ => {}
            }
        }
    }
    Ok(total)
}

/// Chooses what to check out given the fetched heads.
fn decide(store: &Store, local: Option<NodeId>, report: &FetchReport) -> anyhow::Result<Decision> {
    if report.heads.is_empty() {
        if report.peers.iter().any(|p| p.error.is_none()) {
            return Ok(Decision::UpToDate);
        }
        return Ok(Decision::Failed);
    }
    let anc = |a: NodeId, b: NodeId| -> anyhow::Result<bool> {
        store
            .is_ancestor(a, b)
            .context("cannot compare snapshot histories")
    };
    // The newest fetched head: one every other fetched head is an ancestor of.
    let heads: Vec<NodeId> = report.heads.iter().map(|(h, _)| *h).collect();
    let mut best = None;
    'outer: for &h in &heads {
        for &o in &heads {
            if o != h && !anc(o, h)? {
                continue 'outer;
            }
        }
        best = Some(h);
        break;
    }
    let label_of = |h: NodeId| {
        report
            .heads
            .iter()
            .find(|(x, _)| *x == h)
            .and_then(|(_, idx)| idx.first())
            .map(|&i| report.peers[i].label.clone())
            .unwrap_or_else(|| "a peer".into())
    };
    let Some(best) = best else {
        return Ok(Decision::Diverged(label_of(heads[0])));
    };
    let Some(local) = local else {
        return Ok(Decision::Checkout(best));
    };
    if local == best || anc(best, local)? {
        return Ok(Decision::UpToDate);
    }
    let root_of = |h: NodeId| store.snapshot_root(h).context("cannot read a snapshot");
    let local_root = root_of(local)?;
    if local_root == root_of(best)? {
        return Ok(Decision::UpToDate);
    }
    if anc(local, best)? {
        return Ok(Decision::Checkout(best));
    }
    if store
        .dir_entries(local_root)
        .context("cannot read the local tree")?
        .is_empty()
    {
        return Ok(Decision::Checkout(best));
    }
    // Local snapshots since the last common one that changed nothing in the end (a file added
    // and removed again): our tree is the common ancestor's, so the peer's is simply newer.
    let history = |h: NodeId| store.log(h, 1000).context("cannot read the history");
    let ours: std::collections::HashSet<NodeId> =
        history(local)?.into_iter().map(|(id, _)| id).collect();
    if let Some((_, base)) = history(best)?.into_iter().find(|(id, _)| ours.contains(id)) {
        if base.root == local_root {
            return Ok(Decision::Checkout(best));
        }
    }
    Ok(Decision::Diverged(label_of(best)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "left",
            "sync",
            "h1",
            "--encryption",
            "off",
            "--ip",
            "10.0.0.1,::1",
            "--timeout",
            "5",
            "h2:7",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Sync(a) => {
                assert!(!a.encryption);
                assert_eq!(a.peers, vec!["h1", "h2:7"]);
                assert_eq!(a.ip, vec!["10.0.0.1", "::1"]);
                assert_eq!(a.timeout, 5.0);
                assert!(!a.fsync);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_kind_of_failure_gets_its_own_hint() {
        use left::session::PeerOutcome;
        let peer = |label: &str, failure: PeerFailure| PeerOutcome {
            label: label.into(),
            error: Some("it failed".into()),
            failure: Some(failure),
            ..PeerOutcome::default()
        };
        let hint = |peers: Vec<PeerOutcome>| {
            failure_hint(&FetchReport {
                peers,
                ..FetchReport::default()
            })
        };
        let one = |f| hint(vec![peer("a", f)]).unwrap_or_default();
        assert!(one(PeerFailure::Unreachable).contains("`left serve` runs"));
        for f in [
            PeerFailure::Misbehaved,
            PeerFailure::Refused,
            PeerFailure::Encryption,
            PeerFailure::OtherShare,
            PeerFailure::Version,
        ] {
            assert!(!one(f).contains("`left serve` runs"), "{f:?}: {}", one(f));
        }
        assert!(one(PeerFailure::Misbehaved).contains("failed verification"));
        assert!(one(PeerFailure::Refused).contains("left peers"));
        assert!(one(PeerFailure::Encryption).contains("--encryption"));
        assert!(one(PeerFailure::OtherShare).contains("share key"));
        assert!(one(PeerFailure::Version).contains("upgrade"));
        assert_eq!(hint(vec![peer("a", PeerFailure::Other)]), None);
        // Two peers failing the same way: one hint; differently: each named, on one line.
        assert_eq!(
            hint(vec![
                peer("a", PeerFailure::Unreachable),
                peer("b", PeerFailure::Unreachable)
            ]),
            Some(one(PeerFailure::Unreachable))
        );
        let both = hint(vec![
            peer("a", PeerFailure::Unreachable),
            peer("b", PeerFailure::Misbehaved),
            peer("c", PeerFailure::Other),
        ])
        .unwrap();
        assert!(both.starts_with("a: check that"), "{both}");
        assert!(both.contains("; b: the peer sent data"), "{both}");
        assert!(!both.contains('\n'), "{both}");
    }

    #[test]
    fn local_store_failures_get_their_own_hint() {
        assert!(local_error_hint("local store: disk full while writing /x")
            .contains("free some disk space"));
        assert!(local_error_hint("local store: chunk 1a2b is corrupt").contains("left verify"));
    }

    #[test]
    fn peer_addresses_resolve() {
        assert_eq!(
            resolve("127.0.0.1:5").unwrap(),
            "127.0.0.1:5".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1").unwrap(),
            "127.0.0.1:22001".parse().unwrap()
        );
        assert_eq!(resolve("[::1]:7").unwrap(), "[::1]:7".parse().unwrap());
        assert_eq!(resolve("::1").unwrap(), "[::1]:22001".parse().unwrap());
        assert_eq!(resolve("[::1]").unwrap(), "[::1]:22001".parse().unwrap());
        assert_eq!(resolve("localhost:9").unwrap().port(), 9);
        assert_eq!(resolve("localhost").unwrap().port(), DEFAULT_PORT);
        assert!(resolve("localhost:notaport").is_err());
        assert!(resolve("").is_err());
    }
}
