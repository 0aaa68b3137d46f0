//! Restore from a peer (`left restore SNAPSHOT [PATH] --to DIR --from PEER`): make a snapshot,
//! or one path in it, complete in the local store by fetching what is missing from one peer,
//! without moving the head or checking anything out; the caller then restores as usual.
//!
//! Steps: resolve the snapshot (locally, a full id, or `peer` for the peer's head), fetch the
//! folder nodes along PATH one level at a time ([`NodeSession`]), then the subtree at PATH with a
//! pull of its node. What is already complete here is not fetched, and nothing is fetched at all
//! (no connection is made) when the store holds the whole path.
//!
//! What it is not: it writes no file outside the store and prints nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use left_store::node::{DirNode, Node, Target as EntryTarget};
use left_store::{EntryKind, NodeId, Store};

use super::peer_setup::{runtime, Net};
use super::{peer_errors, Context, Error, Meters, Result};
use crate::session::{self, Endpoints, FetchConfig, NodeSession, PeerOutcome, Target};

/// What a restore from a peer fetched.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// The peer, as given.
    pub peer: String,
    /// Nodes fetched (folders along the path included).
    pub nodes: u64,
    /// Chunks fetched.
    pub chunks: u64,
    /// Their plain bytes.
    pub bytes: u64,
}

/// The snapshot to restore: known here, given in full, or the peer's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// This snapshot.
    Known(NodeId),
    /// Whatever head the peer has.
    PeersHead,
}

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The peer (resolved).
    pub target: Target,
    /// Encrypt packets.
    pub encryption: bool,
    /// Seconds without progress before giving up.
    pub timeout: f64,
}

/// Which snapshot `spec` names: `peer` (the peer's head), one the store resolves, or a full id
/// the store does not hold yet.
pub fn wanted(store: &Store, spec: &str) -> Result<Wanted> {
    let spec = spec.trim();
    if spec == "peer" {
        return Ok(Wanted::PeersHead);
    }
    match store.resolve(spec) {
        Ok(id) => Ok(Wanted::Known(id)),
        Err(e) => match spec.parse::<NodeId>() {
            Ok(id) if spec.len() == 64 => Ok(Wanted::Known(id)),
            _ => {
                let hint = matches!(e, left_store::Error::NotFound { .. }).then(|| {
                    "with --from, give the snapshot's full id (as `left log` prints it on the peer), or `peer` for the peer's current head".to_string()
                });
                Err(Error::Peers {
                    message: format!("unknown snapshot {spec:?}: {e}"),
                    hint,
                })
            }
        },
    }
}

/// Makes snapshot `wanted` (or only `path` in it) complete in the store at `dir`, fetching from
/// `opts.target` what is missing. Returns the snapshot and what was fetched.
pub fn run(
    dir: &Path,
    store: &Arc<Store>,
    opts: &RestoreOptions,
    wanted: Wanted,
    path: Option<&Path>,
    meters: Meters<'_>,
) -> Result<(NodeId, Fetched)> {
    let net = Net::load(dir, store, opts.encryption, opts.timeout)?;
    let rt = runtime()?;
    let target = &opts.target;
    let fetched = rt.block_on(async {
        let eps = net.endpoints(std::slice::from_ref(target))?;
        let r = fetch_path(&eps, store, target, &net.fcfg, wanted, path, meters).await;
        eps.close().await;
        r
    });
    drop(rt);
    fetched
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
    async fn session(&mut self) -> Result<&mut NodeSession> {
        if self.session.is_none() {
            let s = NodeSession::open(self.eps, self.target.addr, self.cfg, self.store)
                .await
                .map_err(|e| Error::PeersFailed {
                    message: format!("cannot reach {}: {e}", self.target.label),
                    peers: vec![PeerOutcome {
                        label: self.target.label.clone(),
                        error: Some(e),
                        ..PeerOutcome::default()
                    }],
                })?;
            self.session = Some(s);
        }
        Ok(self.session.as_mut().expect("just opened"))
    }

    /// Fetches and stores the nodes `ids`; returns those the peer does not have.
    async fn get(&mut self, ids: &[NodeId]) -> Result<Vec<NodeId>> {
        let store = self.store;
        let label = self.target.label.clone();
        let got = self
            .session()
            .await?
            .get_nodes(ids, &mut |id, bytes| {
                store.put_node(id, bytes).map(drop).map_err(Into::into)
            })
            .await
            .map_err(|e| match e {
                session::Error::Local(e) => Error::Other(format!("cannot fetch from {label}: {e}")),
                session::Error::Peer(e) => Error::Peers {
                    message: format!("cannot fetch from {label}: {e}"),
                    hint: None,
                },
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
fn missing_folder_nodes(store: &Store, dir: NodeId) -> Result<Vec<NodeId>> {
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(n) = stack.pop() {
        match store.get_node(n)? {
            None => out.push(n),
            Some(b) => match Node::decode_verified(&n, &b)? {
                Node::Dir(DirNode::Index { children, .. }) => stack.extend(children),
                Node::Dir(DirNode::Leaf(_)) => {}
                _ => {
                    return Err(Error::Other(format!(
                        "node {} is not a folder",
                        n.fmt_short()
                    )))
                }
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
    meters: Meters<'_>,
) -> Result<(NodeId, Fetched)> {
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
    let bar = meters();
    let report = session::fetch(
        eps,
        store.clone(),
        std::slice::from_ref(target),
        &cfg,
        &*bar,
    )
    .await;
    bar.finish();
    fetched.nodes += report.stats.nodes_fetched;
    fetched.chunks = report.stats.chunks_fetched;
    fetched.bytes = report.stats.chunk_bytes_fetched;
    if let Some(e) = &report.local_error {
        return Err(Error::Other(format!(
            "cannot fetch from {}: {e}",
            target.label
        )));
    }
    if !report.heads.iter().any(|(h, _)| *h == subtree) {
        let what = match path {
            Some(p) => format!("/{} of {}", p.display(), snapshot.fmt_short()),
            None => snapshot.fmt_short(),
        };
        return Err(Error::PeersFailed {
            message: format!(
                "cannot fetch {what} from {}: {}",
                target.label,
                peer_errors(&report.peers)
            ),
            peers: report.peers,
        });
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
) -> Result<(NodeId, Option<NodeId>)> {
    let store = lazy.store;
    let label = lazy.target.label.clone();
    let snapshot = match wanted {
        Wanted::Known(id) => id,
        Wanted::PeersHead => lazy.session().await?.head().ok_or_else(|| Error::Peers {
            message: format!("{label} has no snapshot yet"),
            hint: Some("run `left add` there first".into()),
        })?,
    };
    if store.get_node(snapshot)?.is_none() && !lazy.get(&[snapshot]).await?.is_empty() {
        return Err(Error::Peers {
            message: format!("{label} does not have snapshot {}", snapshot.fmt_short()),
            hint: Some(
                "`left log` on the peer lists the snapshots it has; `peer` names its current head"
                    .into(),
            ),
        });
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
    let lacking = |p: &Path| Error::Peers {
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
                return Err(lacking(&at));
            }
        }
        let name = c.as_os_str();
        at.push(name);
        let entries = store.dir_entries(dir)?;
        let not_there = || Error::Peers {
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
            _ => return Err(not_there()),
        }
    }
    Ok((snapshot, Some(dir)))
}
