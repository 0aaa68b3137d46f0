//! Merge bases: the lowest common ancestors of two heads over the snapshot-header DAG
//! ([`Store::merge_bases`], the painting walk of [`Paint`]) and the author device of a side
//! ([`Store::author`]). See the module doc of `merge` for the rules. Reads headers only; merges no
//! trees (that is `merge/mod.rs`).

use super::AUTHOR_DEPTH;
use crate::{Error, MergeBases, NodeId, Result, Store, ANCESTOR_LIMIT};
use std::collections::{BinaryHeap, HashMap};

const P1: u8 = 1;
const P2: u8 = 2;
const STALE: u8 = 4;

/// One snapshot seen by the ancestor walk.
struct Seen {
    flags: u8,
    time: i64,
    /// `None`: the header is not stored.
    parents: Option<Vec<NodeId>>,
    queued: bool,
}

/// The painting walk of [`Store::lca`].
struct Paint<'a> {
    store: &'a Store,
    seen: HashMap<NodeId, Seen>,
    heap: BinaryHeap<(i64, NodeId)>,
    /// Queued, not stale, carrying P1 (resp. P2).
    live: [usize; 2],
}

fn live_of(flags: u8) -> [usize; 2] {
    if flags & STALE != 0 {
        [0, 0]
    } else {
        [usize::from(flags & P1 != 0), usize::from(flags & P2 != 0)]
    }
}

impl Paint<'_> {
    fn count(&mut self, flags: u8, add: bool) {
        let l = live_of(flags);
        for (c, d) in self.live.iter_mut().zip(l) {
            if add {
                *c += d;
            } else {
                *c -= d;
            }
        }
    }

    /// Adds `flags` to `id`, queueing it when its flags grew (headers loaded on first sight).
    fn paint(&mut self, id: NodeId, flags: u8, start: bool) -> Result<()> {
        if let Some(s) = self.seen.get_mut(&id) {
            let (old, new) = (s.flags, s.flags | flags);
            if new == old {
                return Ok(());
            }
            s.flags = new;
            if s.parents.is_none() {
                return Ok(());
            }
            let (queued, time) = (s.queued, s.time);
            s.queued = true;
            if queued {
                self.count(old, false);
            } else {
                self.heap.push((time, id));
            }
            self.count(new, true);
            return Ok(());
        }
        match self.store.snapshot(id) {
            Ok(s) => {
                self.seen.insert(
                    id,
                    Seen {
                        flags,
                        time: s.time_ns,
                        parents: Some(s.parents),
                        queued: true,
                    },
                );
                self.heap.push((s.time_ns, id));
                self.count(flags, true);
            }
            Err(Error::NotFound { .. }) if !start => {
                self.seen.insert(
                    id,
                    Seen {
                        flags,
                        time: i64::MIN,
                        parents: None,
                        queued: false,
                    },
                );
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// The bases of a complete walk; [`Error::NeedHeaders`] or [`Error::Invalid`] otherwise.
pub(super) fn complete(m: MergeBases) -> Result<Vec<NodeId>> {
    if !m.missing.is_empty() {
        return Err(Error::NeedHeaders(m.missing));
    }
    if m.truncated {
        return Err(Error::Invalid(format!(
            "the histories are too long to find a merge base (more than {ANCESTOR_LIMIT} snapshots)"
        )));
    }
    Ok(m.bases)
}

impl Store {
    /// The lowest common ancestors of snapshots `a` and `b` over the snapshot-header DAG, sorted
    /// by id (see the module doc of `merge`). Reads headers only. `a` and `b` must be stored
    /// (else [`Error::NotFound`]); a parent header that is not stored ends its branch and is
    /// listed in [`MergeBases::missing`], in which case the bases may be wrong.
    pub fn merge_bases(&self, a: NodeId, b: NodeId) -> Result<MergeBases> {
        self.lca(&[a], &[b])
    }

    /// Lowest common ancestors of the set `one` (together) and the set `two`.
    pub(super) fn lca(&self, one: &[NodeId], two: &[NodeId]) -> Result<MergeBases> {
        let mut p = Paint {
            store: self,
            seen: HashMap::new(),
            heap: BinaryHeap::new(),
            live: [0, 0],
        };
        for id in one {
            p.paint(*id, P1, true)?;
        }
        for id in two {
            p.paint(*id, P2, true)?;
        }
        let mut candidates = Vec::new();
        let mut visited = 0usize;
        let mut truncated = false;
        let mut level = i64::MAX;
        loop {
            if p.live == [0, 0] {
                break;
            }
            // When one side has nothing unpainted left, no new common ancestor can appear once the
            // current time level is done (parents are never newer than their children).
            if (p.live[0] == 0 || p.live[1] == 0) && p.heap.peek().is_none_or(|&(t, _)| t < level) {
                break;
            }
            let Some((t, id)) = p.heap.pop() else { break };
            visited += 1;
            if visited > ANCESTOR_LIMIT {
                truncated = true;
                break;
            }
            level = t;
            let s = p.seen.get_mut(&id).expect("queued nodes are seen");
            s.queued = false;
            let mut f = s.flags;
            let parents = s.parents.clone().unwrap_or_default();
            p.count(f, false);
            if f & (P1 | P2) == P1 | P2 && f & STALE == 0 {
                candidates.push(id);
                f |= STALE;
                p.seen.get_mut(&id).expect("seen").flags = f;
            }
            for q in parents {
                p.paint(q, f, false)?;
            }
        }
        let mut missing: Vec<NodeId> = p
            .seen
            .iter()
            .filter(|(_, s)| s.parents.is_none() && s.flags & STALE == 0)
            .map(|(id, _)| *id)
            .collect();
        missing.sort();
        // Drop candidates that are ancestors of other candidates.
        let mut bases = Vec::with_capacity(candidates.len());
        for c in &candidates {
            let mut redundant = false;
            for d in &candidates {
                if d != c && self.is_ancestor(*c, *d)? {
                    redundant = true;
                    break;
                }
            }
            if !redundant {
                bases.push(*c);
            }
        }
        bases.sort();
        Ok(MergeBases {
            bases,
            missing,
            truncated,
        })
    }

    /// The device that wrote snapshot `id`: its own, or for a merge (zero device) that of its
    /// parent with the greatest `(time_ns, id)`, recursively; zeros when a header is missing.
    pub fn author(&self, id: NodeId) -> Result<[u8; 32]> {
        let mut cur = id;
        for _ in 0..AUTHOR_DEPTH {
            let s = match self.snapshot(cur) {
                Ok(s) => s,
                Err(Error::NotFound { .. }) => return Ok([0; 32]),
                Err(e) => return Err(e),
            };
            if s.device != [0; 32] {
                return Ok(s.device);
            }
            let mut best: Option<(i64, NodeId)> = None;
            for p in s.parents {
                let ps = match self.snapshot(p) {
                    Ok(ps) => ps,
                    Err(Error::NotFound { .. }) => return Ok([0; 32]),
                    Err(e) => return Err(e),
                };
                best = best.max(Some((ps.time_ns, p)));
            }
            match best {
                Some((_, p)) => cur = p,
                None => return Ok([0; 32]),
            }
        }
        Ok([0; 32])
    }

    /// The author of a set of snapshots merged together (a virtual merge): that of the one with
    /// the greatest `(time_ns, id)`.
    pub(super) fn author_of_set(&self, set: &[NodeId]) -> Result<[u8; 32]> {
        let mut best: Option<(i64, NodeId)> = None;
        for id in set {
            best = best.max(Some((self.snapshot(*id)?.time_ns, *id)));
        }
        match best {
            Some((_, id)) => self.author(id),
            None => Ok([0; 32]),
        }
    }

    /// Merge bases as [`Store::lca`], refusing an incomplete walk.
    pub(super) fn lca_complete(&self, one: &[NodeId], two: &[NodeId]) -> Result<Vec<NodeId>> {
        complete(self.lca(one, two)?)
    }
}
