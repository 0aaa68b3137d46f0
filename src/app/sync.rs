//! One-shot sync (`left sync PEER...`): pull what peers have, then check it out into the share
//! folder.
//!
//! Steps: finish a checkout a crash cut short; snapshot the share ("before sync") so no local
//! change can be overwritten unseen; write again what earlier checkouts could not; fetch from
//! every peer at once ([`crate::session::fetch`], retrying with backoff while nothing can be
//! fetched, for at most `timeout` seconds without progress) and the history between a peer's
//! head and ours; record the peers that answered in the peer book; then [`decide`]: when the
//! fetched head is ahead of ours (or we have none, or our tree is empty), check it out; when
//! both sides changed, merge by automatic sync's rules ([`merge_fetched`]). When the history
//! needed for that merge is on no peer reached, the folder is left untouched and the report says
//! `diverged`.
//!
//! What it is not: it prints nothing (warnings go to the caller as [`Event`]s, the result is a
//! [`Synced`] report or a [`Refusal`]) and chooses no exit code; it does not open the store (the
//! caller does, with its own rule for a store a `left serve` holds).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use left_store::{AddOptions, CheckoutOptions, CheckoutReport, NodeId, Progress, Skipped, Store};

use super::decide::{decide, Decision};
use super::history::{fetch_ancestry, fetch_missing};
use super::integrate::{integrate, IntegrateOptions, Integrated};
use super::peer_setup::{runtime, BookPolicy, Net};
use super::{Context, Error, Meters, Result};
use crate::identity::{self, DeviceId, Identity};
use crate::session::{self, Endpoints, FetchConfig, FetchReport, Target};

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// The peers to pull from (resolved; at least one).
    pub targets: Vec<Target>,
    /// Encrypt packets.
    pub encryption: bool,
    /// fsync every file the checkout writes.
    pub fsync: bool,
    /// Seconds without progress before giving up.
    pub timeout: f64,
    /// Check out what the deletion guard would hold ([`super::guard`]): the user said yes.
    pub yes: bool,
}

/// Something worth telling the user while a sync runs, in the order it happens.
#[derive(Debug)]
pub enum Event<'a> {
    /// The share was snapshot before the fetch: `newly_frozen` tracked paths are now ignored,
    /// and `skipped` could not be read (each keeps its previous version).
    Snapshotted {
        /// Tracked paths `.leftignore` covers since this snapshot.
        newly_frozen: u64,
        /// Paths the snapshot kept at their previous version.
        skipped: &'a [Skipped],
    },
    /// The history of a peer's head could not be fetched from it.
    HistoryFailed {
        /// The head.
        head: NodeId,
        /// The peer, as given.
        peer: &'a str,
        /// Why not.
        error: &'a session::Error,
    },
    /// The peer book could not record a peer that answered (a warning, never a failure): the
    /// text after `warning: `.
    BookWarning(String),
    /// Both sides changed, and the history needed to merge them is on no peer reached; nothing
    /// is checked out.
    Diverged {
        /// One peer whose head diverged.
        peer: &'a str,
    },
    /// A path changed on both sides: both are kept, the other version under `copy`.
    Conflict {
        /// The path.
        path: &'a str,
        /// The name of the other version.
        copy: &'a str,
    },
}

/// Why a sync stopped after the fetch without checking anything out (nothing was changed in the
/// folder; what was fetched is kept).
#[derive(Debug)]
pub enum Refusal {
    /// The local store failed while storing what peers sent.
    LocalStore(session::LocalError),
    /// The checkout found the disk full.
    NoSpace {
        /// The head it was checking out.
        to: NodeId,
        /// The store's error.
        error: left_store::Error,
        /// How much it needs against what is free, when that can be found.
        space: Option<Space>,
    },
    /// The deletion guard held the fetched head: it would delete or replace too many files
    /// here. It is recorded for `left hold`; `yes` checks it out.
    Held(Box<super::guard::Hold>),
    /// The fetched tree is malformed (refused before anything was written).
    Corrupt {
        /// The head.
        to: NodeId,
        /// The store's error.
        error: left_store::Error,
    },
}

/// Why a checkout needs more space than there is.
#[derive(Clone, Debug)]
pub struct Space {
    /// Bytes the checkout writes (new or changed files), before what the replaced ones free.
    pub needs: u64,
    /// Bytes free to unprivileged users on the share's file system.
    pub free: u64,
    /// The file system's whole size.
    pub size: u64,
    /// Its mount point.
    pub mount: PathBuf,
}

/// What a sync did.
#[derive(Debug)]
pub struct Synced {
    /// The decision taken on the fetched heads.
    pub decision: Decision,
    /// The fetch, per peer, with its counters.
    pub fetch: FetchReport,
    /// UDP payload bytes (sent, received) over the endpoints.
    pub udp: (u64, u64),
    /// The checkout of a fetched head, when one ran.
    pub checkout: Option<CheckoutReport>,
    /// The merge of diverged heads, when one ran.
    pub merged: Option<Integrated>,
    /// The merge could not be made (its history is on no peer reached): nothing checked out.
    pub diverged: bool,
    /// The retry of paths earlier checkouts could not write, when there were any.
    pub retried: Option<CheckoutReport>,
    /// Paths the snapshot before the fetch could not read (not counting unwritten ones).
    pub skipped: Vec<Skipped>,
    /// Paths still not written here, after the retry and the checkout.
    pub unwritten: Vec<PathBuf>,
    /// Our head at the end.
    pub head: Option<NodeId>,
    /// Seconds of the fetch.
    pub fetch_seconds: f64,
    /// Seconds of the decision, checkout or merge, and closing the endpoints.
    pub checkout_seconds: f64,
    /// On a send-only device: the peers' heads as seen now ([`Decision::SendOnly`]).
    pub seen: Vec<super::send_only::Seen>,
}

impl Synced {
    /// The head the peers offered: the one checked out, else the first fetched.
    pub fn fetched_head(&self) -> Option<NodeId> {
        match &self.decision {
            Decision::Checkout(h) => Some(*h),
            _ => self.fetch.heads.first().map(|(h, _)| *h),
        }
    }
}

/// The outcome of [`run`].
#[derive(Debug)]
pub enum Outcome {
    /// The sync ran to its end (every peer may still have failed: [`Decision::Failed`]).
    Synced(Box<Synced>),
    /// It stopped before checking anything out.
    Refused(Refusal),
}

/// Runs a one-shot sync of the share `share` of the store at `dir` (opened by the caller, who
/// holds its lock) with `opts.targets`.
pub fn run(
    dir: &Path,
    store: Store,
    share: &Path,
    opts: &SyncOptions,
    progress: &dyn Progress,
    meters: Meters<'_>,
    on_event: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<Outcome> {
    let store = Arc::new(store);
    let identity = Identity::load(dir).context("cannot read the device key")?;
    let share_key = identity::load_share_key(dir).context("cannot read the share key")?;
    let device = identity.device_id();
    let policy = BookPolicy::load(dir)?;
    let mut copts = CheckoutOptions {
        fsync: opts.fsync,
        ..Default::default()
    };

    // 1. A checkout a crash cut short is finished first.
    if store
        .pending_checkout()
        .context("cannot read the checkout journal")?
        .is_some()
    {
        store
            .resume_checkout(share, &copts, progress)
            .context("cannot finish the interrupted checkout")?;
    }
    // 2. Snapshot local changes so nothing is overwritten unseen.
    let unwritten_before = store
        .unwritten_paths()
        .context("cannot read the paths earlier checkouts could not write")?;
    let add = store
        .add(
            share,
            &[],
            &AddOptions {
                device: device.0,
                message: "before sync".into(),
                ..AddOptions::default()
            },
            progress,
        )
        .with_context(|| format!("cannot snapshot {} before syncing", share.display()))?;
    // Paths add kept at their previous version because it could not read them (a path an earlier
    // checkout could not write is reported as unwritten instead, below).
    let skipped: Vec<Skipped> = add
        .skipped
        .iter()
        .filter(|s| !unwritten_before.contains(&s.path))
        .cloned()
        .collect();
    on_event(Event::Snapshotted {
        newly_frozen: add.newly_frozen,
        skipped: &skipped,
    });
    // Paths earlier checkouts could not write are tried again at every sync, also when there
    // is nothing new to fetch (their cause may be gone: a folder made writable).
    let retried = if unwritten_before.is_empty() {
        None
    } else {
        store
            .retry_unwritten(share, &copts)
            .context("cannot write the paths an earlier checkout could not")?
    };
    let local_head = store.head().context("cannot read the head")?;
    if store.send_only().context("cannot read the folder type")? {
        return send_only(
            dir, store, opts, identity, share_key, policy, retried, skipped, on_event,
        );
    }

    // 3. Fetch.
    let fetch_started = Instant::now();
    let net = Net::new(
        identity,
        share_key,
        policy.allowed_peers(),
        &store,
        opts.encryption,
        opts.timeout,
    );
    let mut fcfg = net.fcfg.clone();
    // Big new files are written out as they arrive, for the checkout below to rename in.
    fcfg.stage = true;
    let targets = &opts.targets;
    let rt = runtime()?;
    let (report, eps) = rt.block_on(async {
        let eps = net.endpoints(targets)?;
        let bar = meters();
        let report = session::fetch(&eps, store.clone(), targets, &fcfg, &*bar).await;
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
                        Err(e) => on_event(Event::HistoryFailed {
                            head: *head,
                            peer: label,
                            error: &e,
                        }),
                    }
                }
            }
        }
        Ok::<_, Error>((report, eps))
    })?;
    let fetch_seconds = fetch_started.elapsed().as_secs_f64();
    record_peers(dir, &report, on_event);
    let checkout_started = Instant::now();

    // 4. Decide.
    if let Some(e) = &report.local_error {
        return Ok(Outcome::Refused(Refusal::LocalStore(e.clone())));
    }
    let decision = decide(&store, local_head, &report)?;
    copts.staged = report.staged.clone();
    let mut checkout: Option<CheckoutReport> = None;
    let mut merged: Option<Integrated> = None;
    let mut diverged = false;
    match &decision {
        Decision::Checkout(to) => {
            if !opts.yes {
                let verdict = super::guard::check(&store, local_head, *to, *to)
                    .context("cannot measure what the checkout takes away")?;
                if let super::guard::Verdict::Held(h) = verdict {
                    rt.block_on(eps.close());
                    return Ok(Outcome::Refused(Refusal::Held(h)));
                }
            }
            let r = match store.checkout(share, local_head, *to, &copts, progress) {
                Ok(r) => r,
                Err(error @ left_store::Error::DiskFull { .. }) => {
                    let space = space_report(&store, *to, local_head, share);
                    return Ok(Outcome::Refused(Refusal::NoSpace {
                        to: *to,
                        error,
                        space,
                    }));
                }
                // The store refuses a malformed tree (a folder naming an entry twice, ...) in its
                // planning pass, before it writes anything.
                Err(error @ left_store::Error::Corrupt { .. }) => {
                    return Ok(Outcome::Refused(Refusal::Corrupt { to: *to, error }))
                }
                Err(e) => {
                    return Err(e).context(format!(
                        "cannot check out {} into {}",
                        to.fmt_short(),
                        share.display()
                    ))
                }
            };
            if store
                .receive_only()
                .context("cannot read the folder type")?
            {
                // The folder had no local changes: the share's version moves with it.
                store
                    .set_ref(left_store::SHARE_REF, *to)
                    .context("cannot record the share's version")?;
            }
            checkout = Some(r);
        }
        Decision::Diverged(peer) => {
            // Both sides changed (a share joined with files already in it, or edits on both
            // sides): merged as automatic sync merges, so nothing is lost (a path changed on
            // both sides keeps both versions, the other one under a conflict name).
            let iopts = IntegrateOptions {
                device: device.0,
                message: "before sync".into(),
                checkout: copts.clone(),
                settle_ns: 0,
                time_ns: None,
                accept: if opts.yes {
                    report.heads.iter().map(|(h, _)| *h).collect()
                } else {
                    Vec::new()
                },
            };
            let heads: Vec<NodeId> = report.heads.iter().map(|(h, _)| *h).collect();
            let ig = rt
                .block_on(merge_fetched(
                    &eps, &store, share, &report, &fcfg, &heads, &iopts, progress,
                ))
                .with_context(|| format!("cannot merge with what {peer} has"))?;
            if let Some((h, e)) = ig.errors.first() {
                return Err(Error::Other(format!(
                    "cannot merge {} from {peer} into {}: {e}",
                    h.fmt_short(),
                    share.display()
                )));
            }
            if !ig.need_trees.is_empty() || !ig.need_headers.is_empty() {
                diverged = true;
                on_event(Event::Diverged { peer });
            }
            for (path, copy) in &ig.conflicts {
                on_event(Event::Conflict { path, copy });
            }
            if let Some(h) = ig.held.first() {
                rt.block_on(eps.close());
                return Ok(Outcome::Refused(Refusal::Held(Box::new(h.clone()))));
            }
            merged = Some(ig);
        }
        Decision::UpToDate | Decision::Failed | Decision::SendOnly => {}
    }
    let udp = eps.udp_bytes();
    rt.block_on(eps.close());
    drop(rt);
    let checkout_seconds = checkout_started.elapsed().as_secs_f64();
    let head = store.head().ok().flatten();
    if opts.yes && head != local_head {
        // The user said yes to what the guard would have held: nothing of it is held any more,
        // and the guard counts from here.
        for (h, _) in &report.heads {
            super::guard::accepted(&store, *h, head).context("cannot update the deletion guard")?;
        }
    }
    // What is still not written here, after the retry and the checkout.
    let unwritten = store
        .unwritten_paths()
        .context("cannot read the paths the checkout could not write")?;
    Ok(Outcome::Synced(Box::new(Synced {
        decision,
        fetch: report,
        udp,
        checkout,
        merged,
        diverged,
        retried,
        skipped,
        unwritten,
        head,
        fetch_seconds,
        checkout_seconds,
        seen: Vec::new(),
    })))
}

/// One-shot sync on a send-only device: the local changes were snapshotted; the peers' heads
/// are looked at (their headers stored, under `seen/<device>`), nothing is fetched or checked
/// out.
#[allow(clippy::too_many_arguments)]
fn send_only(
    dir: &Path,
    store: Arc<Store>,
    opts: &SyncOptions,
    identity: Identity,
    share_key: [u8; 32],
    policy: BookPolicy,
    retried: Option<CheckoutReport>,
    skipped: Vec<Skipped>,
    on_event: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<Outcome> {
    let started = Instant::now();
    let net = Net::new(
        identity,
        share_key,
        policy.allowed_peers(),
        &store,
        opts.encryption,
        opts.timeout,
    );
    let rt = runtime()?;
    let (looked, udp) = rt.block_on(async {
        let eps = net.endpoints(&opts.targets)?;
        let looked = super::send_only::look(&eps, &store, &opts.targets, &net.fcfg).await;
        let udp = eps.udp_bytes();
        eps.close().await;
        Ok::<_, Error>((looked, udp))
    })?;
    drop(rt);
    let report = FetchReport {
        peers: looked.peers,
        ..FetchReport::default()
    };
    record_peers(dir, &report, on_event);
    let decision = if report.all_failed() {
        Decision::Failed
    } else {
        Decision::SendOnly
    };
    let seen = super::send_only::seen(&store).context("cannot read the peers' heads")?;
    let unwritten = store
        .unwritten_paths()
        .context("cannot read the paths the checkout could not write")?;
    Ok(Outcome::Synced(Box::new(Synced {
        decision,
        fetch: report,
        udp,
        checkout: None,
        merged: None,
        diverged: false,
        retried,
        skipped,
        unwritten,
        head: store.head().ok().flatten(),
        fetch_seconds: started.elapsed().as_secs_f64(),
        checkout_seconds: 0.0,
        seen,
    })))
}

/// Records in the peer book every peer that answered (its device, at the address we reached it
/// at), so `left peers`, `left verify --repair` and a later `left sync` without arguments know
/// it. A book that cannot be written is a warning, never a failed sync.
fn record_peers(dir: &Path, report: &FetchReport, on_event: &mut (dyn FnMut(Event<'_>) + Send)) {
    let answered: Vec<([u8; 32], std::net::SocketAddr)> = report
        .peers
        .iter()
        .filter(|p| p.error.is_none() || p.fetched || p.same)
        .filter_map(|p| Some((p.device?, p.addr?)))
        .collect();
    if answered.is_empty() {
        return;
    }
    let mut book = match crate::peers::PeerBook::load(dir) {
        Ok(b) => b,
        Err(e) => {
            on_event(Event::BookWarning(format!(
                "cannot record the peers reached: {e}"
            )));
            return;
        }
    };
    for (device, addr) in answered {
        if let Err(e) = book.record_seen(dir, device, addr) {
            on_event(Event::BookWarning(format!(
                "cannot record peer {}: {e}",
                DeviceId(device)
            )));
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
        let addrs: Vec<std::net::SocketAddr> =
            idx.iter().filter_map(|&i| report.peers[i].addr).collect();
        fetch_ancestry(eps, fcfg, store, *h, &addrs).await;
    }
    let mut total: Option<Integrated> = None;
    for round in 0..3 {
        let ig = integrate(store, share, heads, opts, progress)?;
        match &mut total {
            None => total = Some(ig.clone()),
            Some(t) => t.add_round(&ig),
        }
        if (ig.need_trees.is_empty() && ig.need_headers.is_empty()) || round == 2 {
            break;
        }
        fetch_missing(eps, store, &sources, fcfg, &ig).await;
    }
    Ok(total.unwrap_or_default())
}

/// For a checkout refused for want of space: the size of every file of `to` that is new or
/// changed against `from` (what the checkout writes, before the space the replaced files free)
/// against what `statvfs` reports free to unprivileged users. `None` when either cannot be found.
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
    Some(Space {
        needs,
        free,
        size,
        mount: mount_point(share),
    })
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
fn bytes_to_write(store: &Store, to: NodeId, from: Option<NodeId>) -> left_store::Result<u64> {
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
