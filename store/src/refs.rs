//! Refs and history: the named pointers to snapshots (`head`, `peers/<device>`: read, moved in a
//! synced batch, dropped), writing a snapshot node (`put_snapshot`), and walking snapshot headers
//! (`resolve`, `snapshot`, `log`, `is_ancestor` within [`ANCESTOR_LIMIT`], `is_shallow`).
//!
//! Not here: the tree under a snapshot (see [`crate::store`]), merge bases (see `merge`), and
//! which snapshots gc keeps (see [`crate::gc`]).

use crate::db::{cf, Batch};
use crate::node::Node;
use crate::store::shallow_key;
use crate::{Error, Hash, NodeId, Result, Snapshot, Store};
use std::collections::HashSet;

impl Store {
    /// Current head snapshot.
    pub fn head(&self) -> Result<Option<NodeId>> {
        self.get_ref("head")
    }

    /// The head this device announces and serves: `head`, except on a receive-only device
    /// ([`Store::receive_only`]), whose `head` holds its local scans (never announced) and which
    /// announces the ref `share`, the share's version it last took from its peers (`None` until
    /// it took one).
    pub fn published(&self) -> Result<Option<NodeId>> {
        if self.receive_only()? {
            self.get_ref(SHARE_REF)
        } else {
            self.head()
        }
    }

    /// Whether this device is receive-only: its local changes are never published.
    pub fn receive_only(&self) -> Result<bool> {
        Ok(self.db.get(cf::META, RECEIVE_ONLY_KEY)?.is_some())
    }

    /// Whether this device is send-only: it publishes its changes and never takes the peers'
    /// (it fetches their heads' headers only, under the refs `seen/<device>`).
    pub fn send_only(&self) -> Result<bool> {
        Ok(self.db.get(cf::META, SEND_ONLY_KEY)?.is_some())
    }

    /// Makes this device send-only (`true`; it stops being receive-only) or not. Synced batch.
    pub fn set_send_only(&self, on: bool) -> Result<()> {
        self.writable()?;
        let mut b = Batch::default();
        if on {
            b.put(&self.db, cf::META, SEND_ONLY_KEY, b"");
            b.delete(&self.db, cf::META, RECEIVE_ONLY_KEY);
            b.delete(&self.db, cf::REFS, SHARE_REF.as_bytes());
        } else {
            b.delete(&self.db, cf::META, SEND_ONLY_KEY);
            // What it saw of the peers' heads goes with the type (a fetch sets `peers/*`).
            for (name, _) in self.refs()? {
                if name.starts_with(SEEN_PREFIX) {
                    b.delete(&self.db, cf::REFS, name.as_bytes());
                }
            }
        }
        self.db.write(b.inner, true)
    }

    /// Makes this device receive-only (`true`: the share's version starts as the current head;
    /// it stops being send-only) or not (`false`: `head`, local changes included, is announced
    /// again). Synced batch.
    pub fn set_receive_only(&self, on: bool) -> Result<()> {
        self.writable()?;
        let mut b = Batch::default();
        if on {
            if self.receive_only()? {
                return Ok(());
            }
            b.put(&self.db, cf::META, RECEIVE_ONLY_KEY, b"");
            b.delete(&self.db, cf::META, SEND_ONLY_KEY);
            for (name, _) in self.refs()? {
                if name.starts_with(SEEN_PREFIX) {
                    b.delete(&self.db, cf::REFS, name.as_bytes());
                }
            }
            match self.head()? {
                Some(h) => b.put(&self.db, cf::REFS, SHARE_REF.as_bytes(), h.as_bytes()),
                None => b.delete(&self.db, cf::REFS, SHARE_REF.as_bytes()),
            }
        } else {
            b.delete(&self.db, cf::META, RECEIVE_ONLY_KEY);
            b.delete(&self.db, cf::REFS, SHARE_REF.as_bytes());
        }
        self.db.write(b.inner, true)
    }

    /// Whether a peer may be served snapshot `id`: on a receive-only device only the share's
    /// version and its history, never a snapshot of local changes.
    pub fn may_serve_snapshot(&self, id: NodeId) -> Result<bool> {
        if !self.receive_only()? {
            return Ok(true);
        }
        match self.get_ref(SHARE_REF)? {
            Some(p) => self.is_ancestor(id, p),
            None => Ok(false),
        }
    }

    /// Reads a ref.
    pub fn get_ref(&self, name: &str) -> Result<Option<NodeId>> {
        match self.db.get(cf::REFS, name.as_bytes())? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 32] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::corrupt(format!("ref {name} is corrupt")))?;
                Ok(Some(NodeId(Hash(b))))
            }
        }
    }

    /// Moves a ref to a snapshot whose tree must be complete (synced batch).
    pub fn set_ref(&self, name: &str, id: NodeId) -> Result<()> {
        if !self.has_nodes(&[id])?[0] {
            return Err(Error::not_found(format!(
                "snapshot {id} is not completely stored"
            )));
        }
        let mut b = Batch::default();
        b.put(&self.db, cf::REFS, name.as_bytes(), id.as_bytes());
        self.db.write(b.inner, true)
    }

    /// Sets the ref `seen/<device>` (see [`SEEN_PREFIX`]) to a snapshot whose header is stored
    /// here, its tree or not: what a send-only device knows of a peer's head. Synced.
    pub fn set_seen_ref(&self, device: &str, id: NodeId) -> Result<()> {
        if device.is_empty() || device.contains('/') {
            return Err(Error::Invalid(format!("{device:?} is not a device id")));
        }
        if self.get_node(id)?.is_none() {
            return Err(Error::not_found(format!(
                "snapshot {id} is not stored here"
            )));
        }
        self.snapshot(id)?;
        let name = format!("{SEEN_PREFIX}{device}");
        let mut b = Batch::default();
        b.put(&self.db, cf::REFS, name.as_bytes(), id.as_bytes());
        self.db.write(b.inner, true)
    }

    /// Writes a snapshot node (e.g. a merge made by the sync engine) whose root tree is complete, and
    /// returns its id. Does not move any ref (see [`Store::set_ref`]).
    pub fn put_snapshot(&self, snap: &Snapshot) -> Result<NodeId> {
        let _g = self.op.read().expect("op lock");
        if !self.has_nodes(&[snap.root])?[0] {
            return Err(Error::not_found(format!(
                "tree {} is not completely stored",
                snap.root
            )));
        }
        let (id, bytes) = Node::Snapshot(snap.clone()).encode_with_id()?;
        let mut b = Batch::default();
        self.note_arrival(&mut b, id)?;
        b.put(&self.db, cf::NODES, id.as_bytes(), &bytes);
        b.put(&self.db, cf::COMPLETE, id.as_bytes(), b"");
        self.db.write(b.inner, false)?;
        Ok(id)
    }

    /// All refs (name, snapshot).
    pub fn refs(&self) -> Result<Vec<(String, NodeId)>> {
        let mut out = Vec::new();
        for r in self.db.iter(cf::REFS) {
            let (k, v) = r?;
            let b: [u8; 32] = (*v)
                .try_into()
                .map_err(|_| Error::corrupt("a ref is corrupt"))?;
            out.push((String::from_utf8_lossy(&k).into_owned(), NodeId(Hash(b))));
        }
        Ok(out)
    }

    /// Deletes the refs `peers/<device>` (the last head fetched from that device) and
    /// `seen/<device>` (its head as a send-only device saw it) in a synced batch, so what only that snapshot held is freed by the next gc. Call it when a device is
    /// revoked or forgotten. `device` is a bare device id: a name with `/` (or an empty one) is
    /// refused, so this never touches `head` or any ref outside `peers/`. A checkout journal
    /// keeps its own trees whatever the refs say (gc's `checkout` root), so dropping the ref of
    /// the snapshot a checkout is moving to loses nothing. Returns the snapshot the ref named, or
    /// `None` when there was no such ref.
    pub fn drop_peer_ref(&self, device: &str) -> Result<Option<NodeId>> {
        self.writable()?;
        if device.is_empty() || device.contains('/') {
            return Err(Error::Invalid(format!(
                "{device:?} is not a device id: only a peers/<device> ref can be dropped"
            )));
        }
        let name = format!("peers/{device}");
        let seen = format!("{SEEN_PREFIX}{device}");
        let id = self.get_ref(&name)?;
        let seen_id = self.get_ref(&seen)?;
        if id.is_none() && seen_id.is_none() {
            return Ok(None);
        }
        let mut b = Batch::default();
        b.delete(&self.db, cf::REFS, name.as_bytes());
        b.delete(&self.db, cf::REFS, seen.as_bytes());
        self.db.write(b.inner, true)?;
        Ok(id.or(seen_id))
    }

    /// Resolves "head", "head~N" (first parent), a full hex id, or a unique hex prefix of >= 4 chars.
    pub fn resolve(&self, spec: &str) -> Result<NodeId> {
        let spec = spec.trim();
        let (base, back) = match spec.split_once('~') {
            Some((b, n)) => (
                b,
                n.parse::<usize>()
                    .map_err(|_| Error::Invalid(format!("bad snapshot spec {spec:?}")))?,
            ),
            None => (spec, 0),
        };
        let mut id = if base == "head" || base == "HEAD" {
            self.head()?
                .ok_or_else(|| Error::not_found("no snapshot yet (head is empty)"))?
        } else {
            self.resolve_hex(base)?
        };
        for i in 0..back {
            let s = self.snapshot(id)?;
            id = *s.parents.first().ok_or_else(|| {
                Error::not_found(format!("{spec}: history has only {} snapshots", i + 1))
            })?;
        }
        Ok(id)
    }

    fn resolve_hex(&self, s: &str) -> Result<NodeId> {
        let nib = Hash::hex_nibbles(s).filter(|n| n.len() >= 4 && n.len() <= 64);
        let Some(nib) = nib else {
            return Err(Error::Invalid(format!(
                "bad snapshot spec {s:?} (use head, head~N or a hex id of 4+ chars)"
            )));
        };
        let prefix: Vec<u8> = nib
            .chunks(2)
            .filter(|p| p.len() == 2)
            .map(|p| p[0] << 4 | p[1])
            .collect();
        let odd = (nib.len() % 2 == 1).then(|| nib[nib.len() - 1]);
        let mut found = Vec::new();
        for r in self.db.iter_prefix(cf::NODES, &prefix) {
            let (k, v) = r?;
            if let Some(n) = odd {
                if k.get(prefix.len()).map(|b| b >> 4) != Some(n) {
                    continue;
                }
            }
            if v.len() >= 2 && v[1] == 3 {
                // Variant 3 of Node: a snapshot (checked again on decode).
                let b: [u8; 32] = (*k)
                    .try_into()
                    .map_err(|_| Error::corrupt("bad node key"))?;
                found.push(NodeId(Hash(b)));
                if found.len() > 1 {
                    break;
                }
            }
        }
        match found.len() {
            0 => Err(Error::not_found(format!("no snapshot {s}"))),
            1 => Ok(found[0]),
            _ => Err(Error::Invalid(format!("snapshot prefix {s} is ambiguous"))),
        }
    }

    /// Reads a snapshot node.
    pub fn snapshot(&self, id: NodeId) -> Result<Snapshot> {
        match self.read_node(id) {
            Ok(Node::Snapshot(s)) => Ok(s),
            Ok(_) => Err(Error::Invalid(format!("{id} is not a snapshot"))),
            Err(Error::NotFound { .. }) => Err(Error::not_found(format!("no snapshot {id}"))),
            Err(e) => Err(e),
        }
    }

    /// Ancestors of `from` (itself first), newest first, at most `limit`.
    pub fn log(&self, from: NodeId, limit: usize) -> Result<Vec<(NodeId, Snapshot)>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut heap = std::collections::BinaryHeap::new();
        let mut snaps = std::collections::HashMap::new();
        let s = self.snapshot(from)?;
        seen.insert(from);
        heap.push((s.time_ns, from));
        snaps.insert(from, s);
        while let Some((_, id)) = heap.pop() {
            let s = snaps.remove(&id).expect("pushed with its snapshot");
            if out.len() >= limit {
                break;
            }
            for p in &s.parents {
                if seen.insert(*p) {
                    match self.snapshot(*p) {
                        Ok(ps) => {
                            heap.push((ps.time_ns, *p));
                            snaps.insert(*p, ps);
                        }
                        Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            out.push((id, s));
        }
        Ok(out)
    }

    /// Whether snapshot `ancestor` is `of` or one of its ancestors. Walks parents newest first and
    /// stops below `ancestor`'s time (a child is never older than its parents: `add` and merges
    /// keep times non-decreasing), so the work is the history since `ancestor`, and at most
    /// [`ANCESTOR_LIMIT`] snapshots in any case (beyond it: `false`). A missing parent ends its
    /// branch (counts as not found).
    pub fn is_ancestor(&self, ancestor: NodeId, of: NodeId) -> Result<bool> {
        if ancestor == of {
            return Ok(true);
        }
        let floor = match self.snapshot(ancestor) {
            Ok(s) => s.time_ns,
            Err(Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut seen = HashSet::new();
        let mut heap = std::collections::BinaryHeap::new();
        seen.insert(of);
        heap.push((self.snapshot(of)?.time_ns, of));
        while let Some((t, id)) = heap.pop() {
            if id == ancestor {
                return Ok(true);
            }
            if t < floor || seen.len() > ANCESTOR_LIMIT {
                break;
            }
            let s = match self.snapshot(id) {
                Ok(s) => s,
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            for p in s.parents {
                if seen.insert(p) {
                    match self.snapshot(p) {
                        Ok(ps) => heap.push((ps.time_ns, p)),
                        Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(false)
    }

    /// Whether gc dropped the tree of this snapshot (`gc --keep-last`).
    pub fn is_shallow(&self, snapshot: NodeId) -> Result<bool> {
        self.db.exists(cf::META, &shallow_key(snapshot))
    }
}

/// The ref a receive-only device announces (see [`Store::published`]).
pub const SHARE_REF: &str = "share";
const RECEIVE_ONLY_KEY: &[u8] = b"receive-only";
const SEND_ONLY_KEY: &[u8] = b"send-only";
/// The prefix of the refs a send-only device keeps its peers' heads under (headers only).
pub const SEEN_PREFIX: &str = "seen/";

/// Most snapshots [`Store::is_ancestor`] visits.
pub const ANCESTOR_LIMIT: usize = 1 << 20;
