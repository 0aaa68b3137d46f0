//! `left verify --repair` and `left restore --from PEER`: commands that fetch objects from peers
//! outside `left sync`, without moving the head or checking anything out.
//!
//! **verify --repair**: verify; plan the repair ([`Store::repair_plan`]: which objects to remove,
//! which completeness marks to clear, which snapshots reach the damage); make sure a peer answers
//! before touching the store (so a repair with no reachable peer leaves it exactly as it was);
//! apply the plan; fetch each damaged snapshot again with [`FetchConfig::want`] (a pull asks only
//! for what the store lacks, and every arrival is checked against its id); set the marks again;
//! verify again and report what was repaired and what was not.
//!
//! **restore --from PEER**: resolve the snapshot (locally, a full id, or `peer` for the peer's
//! head), fetch the folder nodes along PATH one level at a time ([`NodeSession`]), then the
//! subtree at PATH with a pull of its node; then restore as usual. What is already complete here
//! is not fetched, and nothing is fetched at all when the store holds the whole path.
//!
//! Both need the store to themselves: beside a running `left serve` they say so (one line, with
//! what to do), as `left sync` does.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use left::ecp::ShareId;
use left::identity::{self, DeviceId, Identity};
use left::peers::PeerBook;
use left::session::{self, Endpoints, FetchConfig, FetchReport, NodeSession, PeerOutcome, Target};
use left::sync::{PullConfig, PullStats};
use left_store::node::{DirNode, Node, Target as EntryTarget};
use left_store::{ChunkId, EntryKind, NodeId, ObjectId, ObjectKind, Problem, Store};
use serde_json::json;

use super::inspect::RestoreArgs;
use super::maintain::{problem_json, problem_line, VerifyArgs};
use super::serve::runtime;
use super::sync::{bad_address, bind_endpoints, failure_hint, resolve, FetchBar};
use super::{fmt, open_store_exclusive, CliError, Global, Output, EXIT_OK};

/// What talking to peers needs, read from the store folder.
struct Net {
    identity: Identity,
    share_key: [u8; 32],
    allowed: Option<Vec<[u8; 32]>>,
    encryption: bool,
    fcfg: FetchConfig,
}

impl Net {
    fn load(dir: &Path, store: &Store, encryption: bool, timeout: f64) -> anyhow::Result<Net> {
        let identity = Identity::load(dir).context("cannot read the device key")?;
        let share_key = identity::load_share_key(dir).context("cannot read the share key")?;
        let allowed = PeerBook::load(dir)
            .context("cannot read the peer book")?
            .allowed_peers();
        let mut pull = PullConfig::for_store(store);
        pull.stall_timeout = Duration::from_secs(10).min(Duration::from_secs_f64(timeout));
        let hello = session::hello(
            ShareId::from_key(&share_key),
            identity.device_id().0,
            encryption,
        );
        let mut fcfg = FetchConfig::new(hello, pull);
        fcfg.timeout = Duration::from_secs_f64(timeout);
        fcfg.connect_timeout = fcfg.connect_timeout.min(fcfg.timeout);
        Ok(Net {
            identity,
            share_key,
            allowed,
            encryption,
            fcfg,
        })
    }

    /// The client endpoints for `targets` (inside the runtime).
    fn endpoints(&self, targets: &[Target]) -> anyhow::Result<Endpoints> {
        bind_endpoints(
            targets,
            &self.identity,
            self.share_key,
            self.allowed.clone(),
            self.encryption,
        )
    }
}

fn check_timeout(timeout: f64) -> anyhow::Result<()> {
    if !(timeout.is_finite() && timeout > 0.0 && timeout < 1e9) {
        return Err(CliError::Usage {
            message: "--timeout must be a positive number of seconds".into(),
            hint: None,
        }
        .into());
    }
    Ok(())
}

/// Resolves peers as given (each once, by address).
pub(crate) fn given_targets(peers: &[String], ip: &[String]) -> anyhow::Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    for g in peers
        .iter()
        .chain(ip.iter())
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        let addr = resolve(g).map_err(|e| bad_address(g, &e))?;
        if !out.iter().any(|t| t.addr == addr) {
            out.push(Target {
                label: g.to_string(),
                addr,
            });
        }
    }
    Ok(out)
}

/// The last address of every device of the peer book that is still allowed, not already in
/// `targets`.
pub(crate) fn add_book_targets(dir: &Path, targets: &mut Vec<Target>) -> anyhow::Result<usize> {
    let book = PeerBook::load(dir).context("cannot read the peer book")?;
    let mut added = 0;
    for r in book.records() {
        let Some(addr) = r.last_addr else { continue };
        if !book.allows(&r.device.0) || targets.iter().any(|t| t.addr == addr) {
            continue;
        }
        targets.push(Target {
            label: addr.to_string(),
            addr,
        });
        added += 1;
    }
    Ok(added)
}

/// `label: error` of every failed peer, `; `-separated.
fn peer_errors(peers: &[PeerOutcome]) -> String {
    peers
        .iter()
        .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.label)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn peers_json(peers: &[PeerOutcome]) -> serde_json::Value {
    json!(peers
        .iter()
        .map(|p| json!({
            "peer": p.label,
            "addr": p.addr.map(|a| a.to_string()),
            "device": p.device.map(|d| DeviceId(d).to_string()),
            "error": p.error,
        }))
        .collect::<Vec<_>>())
}

fn object_id(p: &Problem) -> ObjectId {
    match p.object {
        ObjectKind::Chunk => ObjectId::Chunk(ChunkId(p.id)),
        ObjectKind::Node => ObjectId::Node(NodeId(p.id)),
    }
}

fn add_stats(total: &mut PullStats, s: &PullStats) {
    total.nodes_fetched += s.nodes_fetched;
    total.chunks_fetched += s.chunks_fetched;
    total.chunk_bytes_fetched += s.chunk_bytes_fetched;
    total.payload_bytes_received += s.payload_bytes_received;
}

/// Runs `left verify --repair`.
pub(crate) fn verify_repair(global: &Global, out: &Output, args: VerifyArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    check_timeout(args.timeout)?;
    let mut targets = given_targets(&args.peers, &args.ip)?;
    let (dir, store) = open_store_exclusive(global, "repair", "verify --repair")?;
    let store = Arc::new(store);
    let progress = out.progress();
    let before = store.verify(&progress).context("cannot verify the store")?;
    drop(progress);
    if before.problems.is_empty() {
        out.json(&json!({
            "ok": true,
            "problems_found": 0,
            "repaired": 0,
            "unrepaired": 0,
            "chunks_checked": before.chunks_checked,
            "nodes_checked": before.nodes_checked,
            "bytes_checked": before.bytes_checked,
            "problems": [],
            "repaired_objects": [],
            "peers": [],
        }))?;
        out.human(format!(
            "verify: ok, {} chunks ({}) and {} nodes checked; nothing to repair",
            before.chunks_checked,
            fmt::bytes(before.bytes_checked),
            before.nodes_checked
        ))?;
        return Ok(EXIT_OK);
    }
    let found = before.problems.len();
    let plan = store
        .repair_plan(&before.problems)
        .context("cannot plan the repair")?;
    let from_book = add_book_targets(&dir, &mut targets)?;

    // What a failure before anything was changed prints: the problems, as verify does.
    let unchanged = |peers: &[PeerOutcome]| -> anyhow::Result<()> {
        out.json(&json!({
            "ok": false,
            "problems_found": found,
            "repaired": 0,
            "unrepaired": found,
            "chunks_checked": before.chunks_checked,
            "nodes_checked": before.nodes_checked,
            "bytes_checked": before.bytes_checked,
            "problems": before.problems.iter().map(problem_json).collect::<Vec<_>>(),
            "repaired_objects": [],
            "peers": peers_json(peers),
        }))?;
        for p in &before.problems {
            out.data(problem_line("", p))?;
        }
        Ok(())
    };
    if plan.is_empty() {
        unchanged(&[])?;
        return Err(CliError::RepairIncomplete {
            left: found,
            found,
            why: ": the damaged objects hold the bytes their ids name (malformed where they are used), so no peer can send better ones".into(),
        }
        .into());
    }
    if targets.is_empty() {
        unchanged(&[])?;
        return Err(CliError::Usage {
            message: "cannot repair: no peer to fetch from".into(),
            hint: Some(format!(
                "name one: `left verify --repair HOST:PORT` (or --ip A,B); the peer book {} holds no address of an allowed device",
                dir.join(left::peers::PEERS_FILE).display()
            )),
        }
        .into());
    }

    let net = Net::load(&dir, &store, args.encryption, args.timeout)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let eps = net.endpoints(&targets)?;
        let r = repair_fetch(&eps, &store, &targets, &net.fcfg, &plan, out).await;
        eps.close().await;
        r
    });
    drop(rt);
    let fetched = match result? {
        Ok(f) => f,
        Err(probe) => {
            // No peer answered: nothing was changed.
            unchanged(&probe)?;
            return Err(CliError::Peers {
                message: format!(
                    "cannot repair: no peer could be reached: {}",
                    peer_errors(&probe)
                ),
                hint: failure_hint(&FetchReport {
                    peers: probe,
                    ..FetchReport::default()
                }),
            }
            .into());
        }
    };

    let progress = out.progress();
    let after = store
        .verify(&progress)
        .context("cannot verify the store after the repair")?;
    drop(progress);
    let still: HashSet<ObjectId> = after.problems.iter().map(object_id).collect();
    let repaired: Vec<_> = before
        .problems
        .iter()
        .filter(|p| !still.contains(&object_id(p)))
        .collect();
    let removed_corrupt = before
        .problems
        .iter()
        .filter(|p| p.kind == left_store::ProblemKind::Corrupt)
        .filter(|p| plan.remove.contains(&object_id(p)))
        .count();
    let st = &fetched.stats;
    out.json(&json!({
        "ok": after.problems.is_empty(),
        "problems_found": found,
        "repaired": repaired.len(),
        "unrepaired": after.problems.len(),
        "corrupt_removed": removed_corrupt,
        "marks_cleared": plan.marks_cleared(),
        "snapshots_fetched": fetched.snapshots,
        "headers_fetched": fetched.headers,
        "chunks_fetched": st.chunks_fetched,
        "nodes_fetched": st.nodes_fetched,
        "chunk_bytes_fetched": st.chunk_bytes_fetched,
        "payload_bytes_received": st.payload_bytes_received,
        "peers_from_book": from_book,
        "chunks_checked": after.chunks_checked,
        "nodes_checked": after.nodes_checked,
        "bytes_checked": after.bytes_checked,
        "seconds": started.elapsed().as_secs_f64(),
        "repaired_objects": repaired.iter().map(|p| problem_json(p)).collect::<Vec<_>>(),
        "problems": after.problems.iter().map(problem_json).collect::<Vec<_>>(),
        "peers": peers_json(&fetched.peers),
    }))?;
    for p in &repaired {
        out.human(problem_line("repaired ", p))?;
    }
    for p in &after.problems {
        out.data(problem_line("", p))?;
    }
    if !after.problems.is_empty() {
        let errors = peer_errors(&fetched.peers);
        return Err(CliError::RepairIncomplete {
            left: after.problems.len(),
            found,
            why: if errors.is_empty() {
                String::new()
            } else {
                format!(": {errors}")
            },
        }
        .into());
    }
    out.human(format!(
        "verify --repair: repaired {} problem(s): fetched {} chunks and {} nodes ({}); verify: ok, {} chunks ({}) and {} nodes checked",
        repaired.len(),
        st.chunks_fetched,
        st.nodes_fetched,
        fmt::bytes(st.chunk_bytes_fetched),
        after.chunks_checked,
        fmt::bytes(after.bytes_checked),
        after.nodes_checked
    ))?;
    Ok(EXIT_OK)
}

/// What the fetching part of a repair did.
struct Repaired {
    /// Snapshots pulled again.
    snapshots: usize,
    /// Snapshot headers fetched again.
    headers: usize,
    stats: PullStats,
    /// Every peer reached or tried, with the last error it gave (if any).
    peers: Vec<PeerOutcome>,
}

/// Asks every target for its head; if none answers, returns their outcomes (`Err`) with the
/// store untouched. Else applies `plan`, fetches what it needs from the peers that answered,
/// and sets the completeness marks again. `Ok(Err(_))`: no peer; `Err(_)`: a local failure.
async fn repair_fetch(
    eps: &Endpoints,
    store: &Arc<Store>,
    targets: &[Target],
    fcfg: &FetchConfig,
    plan: &left_store::RepairPlan,
    out: &Output,
) -> anyhow::Result<Result<Repaired, Vec<PeerOutcome>>> {
    let mut peers = session::heads(eps, targets, fcfg, store).await;
    let live: Vec<Target> = targets
        .iter()
        .zip(&peers)
        .filter(|(_, p)| p.error.is_none())
        .map(|(t, _)| t.clone())
        .collect();
    if live.is_empty() {
        return Ok(Err(peers));
    }
    store
        .apply_repair_plan(plan)
        .context("cannot prepare the store for the repair")?;
    let mut done = Repaired {
        snapshots: 0,
        headers: 0,
        stats: PullStats::default(),
        peers: Vec::new(),
    };
    let note = |peers: &mut Vec<PeerOutcome>, label: &str, error: String| {
        if let Some(p) = peers.iter_mut().find(|p| p.label == label) {
            p.error = Some(error);
        }
    };
    // Headers of snapshots whose trees were dropped on purpose: those nodes only.
    let mut headers: Vec<NodeId> = plan.headers.clone();
    for t in &live {
        if headers.is_empty() {
            break;
        }
        let mut s = match NodeSession::open(eps, t.addr, fcfg, store).await {
            Ok(s) => s,
            Err((_, e)) => {
                note(&mut peers, &t.label, e);
                continue;
            }
        };
        let got = s
            .get_nodes(&headers, &mut |id, bytes| {
                store
                    .put_node(id, bytes)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await;
        s.close().await;
        match got {
            Ok(got) => {
                done.headers += got.len();
                headers.retain(|h| !got.contains(h));
            }
            Err(e) => note(&mut peers, &t.label, e),
        }
    }
    // Trees: each damaged snapshot pulled again (only what is missing travels); one whose
    // objects an earlier pull already brought back is complete and skipped.
    for &sid in &plan.snapshots {
        if store
            .mark_complete(sid)
            .context("cannot check a snapshot")?
        {
            continue;
        }
        let mut cfg = fcfg.clone();
        cfg.want = Some(sid);
        let bar = FetchBar::new(!out.quiet);
        let report = session::fetch(eps, store.clone(), &live, &cfg, &bar).await;
        bar.finish();
        add_stats(&mut done.stats, &report.stats);
        if let Some(e) = &report.local_error {
            anyhow::bail!("cannot repair: {e}");
        }
        if report.heads.iter().any(|(h, _)| *h == sid) {
            done.snapshots += 1;
        }
        for p in &report.peers {
            if let Some(e) = &p.error {
                note(&mut peers, &p.label, e.clone());
            }
        }
    }
    for &sid in &plan.snapshots {
        store
            .mark_complete(sid)
            .context("cannot mark a repaired snapshot complete")?;
    }
    done.peers = peers;
    Ok(Ok(done))
}

/// What `restore --from` fetched.
pub(crate) struct Fetched {
    /// The peer, as given.
    pub peer: String,
    /// Nodes fetched (folders along the path included).
    pub nodes: u64,
    /// Chunks fetched.
    pub chunks: u64,
    /// Their plain bytes.
    pub bytes: u64,
}

/// The snapshot `restore --from` restores: known here, given in full, or the peer's head.
enum Wanted {
    Known(NodeId),
    PeersHead,
}

/// Runs `left restore SNAPSHOT [PATH] --to DIR --from PEER`.
pub(crate) fn restore_from(global: &Global, out: &Output, args: RestoreArgs) -> anyhow::Result<u8> {
    let peer = args.from.clone().unwrap_or_default();
    check_timeout(args.timeout)?;
    let targets = given_targets(std::slice::from_ref(&peer), &[])?;
    let Some(target) = targets.into_iter().next() else {
        return Err(bad_address(&peer, "empty peer address"));
    };
    let (dir, store) = open_store_exclusive(global, "fetch from a peer", "restore --from")?;
    let store = Arc::new(store);
    let spec = args.snapshot.trim();
    let wanted = if spec == "peer" {
        Wanted::PeersHead
    } else {
        match store.resolve(spec) {
            Ok(id) => Wanted::Known(id),
            Err(e) => match spec.parse::<NodeId>() {
                Ok(id) if spec.len() == 64 => Wanted::Known(id),
                _ => {
                    let hint = matches!(e, left_store::Error::NotFound { .. }).then(|| {
                        "with --from, give the snapshot's full id (as `left log` prints it on the peer), or `peer` for the peer's current head".to_string()
                    });
                    return Err(CliError::Peers {
                        message: format!("unknown snapshot {spec:?}: {e}"),
                        hint,
                    }
                    .into());
                }
            },
        }
    };
    let path = args
        .path
        .as_deref()
        .map(super::inspect::snapshot_path)
        .filter(|p| !p.as_os_str().is_empty());
    let net = Net::load(&dir, &store, args.encryption, args.timeout)?;
    let rt = runtime()?;
    let fetched = rt.block_on(async {
        let eps = net.endpoints(std::slice::from_ref(&target))?;
        let r = fetch_path(
            &eps,
            &store,
            &target,
            &net.fcfg,
            wanted,
            path.as_deref(),
            out,
        )
        .await;
        eps.close().await;
        r
    });
    drop(rt);
    let (snapshot, fetched) = fetched?;
    super::inspect::restore_into(
        out,
        &store,
        snapshot,
        path.as_deref(),
        &args.to,
        args.force,
        Some(Fetched { peer, ..fetched }),
    )
}

/// A session with the peer, opened when first needed.
struct Lazy<'a> {
    eps: &'a Endpoints,
    store: &'a Store,
    target: &'a Target,
    cfg: &'a FetchConfig,
    session: Option<NodeSession>,
    nodes: u64,
}

impl Lazy<'_> {
    async fn session(&mut self) -> anyhow::Result<&mut NodeSession> {
        if self.session.is_none() {
            let s = NodeSession::open(self.eps, self.target.addr, self.cfg, self.store)
                .await
                .map_err(|(kind, e)| CliError::Peers {
                    message: format!("cannot reach {}: {e}", self.target.label),
                    hint: super::sync::hint_for(kind).map(str::to_owned),
                })?;
            self.session = Some(s);
        }
        Ok(self.session.as_mut().expect("just opened"))
    }

    /// Fetches and stores the nodes `ids`; returns those the peer does not have.
    async fn get(&mut self, ids: &[NodeId]) -> anyhow::Result<Vec<NodeId>> {
        let store = self.store;
        let label = self.target.label.clone();
        let got = self
            .session()
            .await?
            .get_nodes(ids, &mut |id, bytes| {
                store
                    .put_node(id, bytes)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| CliError::Peers {
                message: format!("cannot fetch from {label}: {e}"),
                hint: None,
            })?;
        self.nodes += got.len() as u64;
        Ok(ids.iter().copied().filter(|i| !got.contains(i)).collect())
    }

    async fn close(self) {
        if let Some(s) = self.session {
            s.close().await;
        }
    }
}

/// The nodes of the folder rooted at `dir` (its index nodes, for a wide folder) not stored here.
fn missing_folder_nodes(store: &Store, dir: NodeId) -> anyhow::Result<Vec<NodeId>> {
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(n) = stack.pop() {
        match store.get_node(n)? {
            None => out.push(n),
            Some(b) => match Node::decode_verified(&n, &b)? {
                Node::Dir(DirNode::Index { children, .. }) => stack.extend(children),
                Node::Dir(DirNode::Leaf(_)) => {}
                _ => anyhow::bail!("node {} is not a folder", n.fmt_short()),
            },
        }
    }
    Ok(out)
}

/// Makes snapshot `wanted` (or only `path` in it) complete here, fetching from `target` what is
/// missing: the snapshot node, the folders along the path, then the subtree at the path.
async fn fetch_path(
    eps: &Endpoints,
    store: &Arc<Store>,
    target: &Target,
    cfg: &FetchConfig,
    wanted: Wanted,
    path: Option<&Path>,
    out: &Output,
) -> anyhow::Result<(NodeId, Fetched)> {
    let mut lazy = Lazy {
        eps,
        store,
        target,
        cfg,
        session: None,
        nodes: 0,
    };
    let r = walk_path(&mut lazy, wanted, path).await;
    let nodes = lazy.nodes;
    lazy.close().await;
    let (snapshot, subtree) = r?;
    let mut fetched = Fetched {
        peer: target.label.clone(),
        nodes,
        chunks: 0,
        bytes: 0,
    };
    let Some(subtree) = subtree else {
        return Ok((snapshot, fetched));
    };
    if store.has_nodes(&[subtree])?[0] {
        return Ok((snapshot, fetched));
    }
    let mut cfg = cfg.clone();
    cfg.want = Some(subtree);
    let bar = FetchBar::new(!out.quiet);
    let report = session::fetch(eps, store.clone(), std::slice::from_ref(target), &cfg, &bar).await;
    bar.finish();
    fetched.nodes += report.stats.nodes_fetched;
    fetched.chunks = report.stats.chunks_fetched;
    fetched.bytes = report.stats.chunk_bytes_fetched;
    if let Some(e) = &report.local_error {
        anyhow::bail!("cannot fetch from {}: {e}", target.label);
    }
    if !report.heads.iter().any(|(h, _)| *h == subtree) {
        let what = match path {
            Some(p) => format!("/{} of {}", p.display(), snapshot.fmt_short()),
            None => snapshot.fmt_short(),
        };
        return Err(CliError::Peers {
            message: format!(
                "cannot fetch {what} from {}: {}",
                target.label,
                peer_errors(&report.peers)
            ),
            hint: failure_hint(&report),
        }
        .into());
    }
    if subtree == snapshot {
        // A snapshot whose tree was dropped here, now whole again.
        store.mark_complete(snapshot)?;
    }
    Ok((snapshot, fetched))
}

/// Resolves the snapshot and walks `path` in it, fetching the snapshot node and the folder nodes
/// along the path that are not stored. Returns the snapshot and the node whose subtree the
/// restore reads (`None` for a symlink: nothing more to fetch).
async fn walk_path(
    lazy: &mut Lazy<'_>,
    wanted: Wanted,
    path: Option<&Path>,
) -> anyhow::Result<(NodeId, Option<NodeId>)> {
    let store = lazy.store;
    let label = lazy.target.label.clone();
    let snapshot = match wanted {
        Wanted::Known(id) => id,
        Wanted::PeersHead => lazy
            .session()
            .await?
            .head()
            .ok_or_else(|| CliError::Peers {
                message: format!("{label} has no snapshot yet"),
                hint: Some("run `left add` there first".into()),
            })?,
    };
    if store.get_node(snapshot)?.is_none() && !lazy.get(&[snapshot]).await?.is_empty() {
        return Err(CliError::Peers {
            message: format!("{label} does not have snapshot {}", snapshot.fmt_short()),
            hint: Some(
                "`left log` on the peer lists the snapshots it has; `peer` names its current head"
                    .into(),
            ),
        }
        .into());
    }
    let snap = store
        .snapshot(snapshot)
        .with_context(|| format!("cannot read snapshot {}", snapshot.fmt_short()))?;
    if store.is_shallow(snapshot)? {
        // Its tree was dropped here (or never fetched): the whole snapshot is fetched, which
        // makes it whole again.
        return Ok((snapshot, Some(snapshot)));
    }
    let mut dir = snap.root;
    let comps: Vec<_> = path.map(|p| p.components().collect()).unwrap_or_default();
    let lacking = |p: &Path| CliError::Peers {
        message: format!(
            "{label} does not have the folder /{} of snapshot {}",
            p.display(),
            snapshot.fmt_short()
        ),
        hint: Some(
            "the peer may hold only the history of that snapshot (gc --keep-last there)".into(),
        ),
    };
    let mut at = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        loop {
            let missing = missing_folder_nodes(store, dir)?;
            if missing.is_empty() {
                break;
            }
            if !lazy.get(&missing).await?.is_empty() {
                return Err(lacking(&at).into());
            }
        }
        let name = c.as_os_str();
        at.push(name);
        let entries = store.dir_entries(dir)?;
        let not_there = || CliError::Peers {
            message: format!(
                "/{} is not in snapshot {}",
                at.display(),
                snapshot.fmt_short()
            ),
            hint: Some(format!(
                "`left ls {snapshot}` lists what it holds (once restored or synced)"
            )),
        };
        let e = entries
            .into_iter()
            .find(|e| e.name.as_slice() == std::os::unix::ffi::OsStrExt::as_bytes(name))
            .ok_or_else(not_there)?;
        let last = i + 1 == comps.len();
        match (&e.kind, &e.target) {
            (_, EntryTarget::Link(_)) if last => return Ok((snapshot, None)),
            (_, EntryTarget::Node(id)) if last => return Ok((snapshot, Some(*id))),
            (EntryKind::Dir, EntryTarget::Node(id)) => dir = *id,
            _ => return Err(not_there().into()),
        }
    }
    Ok((snapshot, Some(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_peers_resolve_once_each() {
        let t = given_targets(
            &["127.0.0.1:5".into(), " ".into()],
            &["127.0.0.1:5".into(), "[::1]:7".into()],
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].label, "127.0.0.1:5");
        assert_eq!(t[1].addr, "[::1]:7".parse().unwrap());
        let e = given_targets(&["localhost:notaport".into()], &[]).unwrap_err();
        assert!(e.to_string().starts_with("bad peer address"), "{e}");
    }

    #[test]
    fn arguments_parse() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "left",
            "verify",
            "--repair",
            "h1",
            "--ip",
            "a,b",
            "--timeout",
            "3",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Verify(a) => {
                assert!(a.repair);
                assert_eq!(a.peers, vec!["h1"]);
                assert_eq!(a.ip, vec!["a", "b"]);
                assert_eq!(a.timeout, 3.0);
            }
            other => panic!("{other:?}"),
        }
        // Peers make sense only with --repair.
        assert!(crate::cli::Cli::try_parse_from(["left", "verify", "h1"]).is_err());
        assert!(crate::cli::Cli::try_parse_from(["left", "verify", "--timeout", "3"]).is_err());
        assert!(crate::cli::Cli::try_parse_from(["left", "verify"]).is_ok());
        let cli = crate::cli::Cli::try_parse_from([
            "left", "restore", "peer", "docs", "--to", "/tmp/x", "--from", "h:1",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Restore(a) => {
                assert_eq!(a.from.as_deref(), Some("h:1"));
                assert_eq!(a.snapshot, "peer");
            }
            other => panic!("{other:?}"),
        }
        assert!(crate::cli::Cli::try_parse_from([
            "left",
            "restore",
            "head",
            "--to",
            "/tmp/x",
            "--timeout",
            "3"
        ])
        .is_err());
    }
}
