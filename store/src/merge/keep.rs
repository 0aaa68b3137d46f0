//! [`Store::keep_adding`]: the tree of a rejected change (`left hold reject`): everything of
//! ours, plus what the other tree adds beneath it. Not a merge (nothing of ours changes, so
//! nothing here can delete or replace a file), and not symmetric; the snapshot it writes is a
//! decision of this device, as any local snapshot.

use super::{dir_id, is_dir, Ctx, MERGE_MAX_DEPTH};
use crate::node::{build_dir, DirEntry, Target};
use crate::{Error, NodeId, Result, Snapshot, Store};
use std::collections::HashMap;

impl Store {
    /// Writes a snapshot whose tree is snapshot `ours`'s tree plus every path of snapshot
    /// `theirs`'s tree that ours lacks (a file or folder it added, beneath folders both have or
    /// not). A path both have keeps ours: its kind, content, mode and time. The snapshot takes
    /// `header`'s parents, device, time and message (its `root` is ignored). Returns its id;
    /// moves no ref. Both trees must be complete here ([`Error::NeedTree`] otherwise).
    pub fn keep_adding(&self, ours: NodeId, theirs: NodeId, header: Snapshot) -> Result<NodeId> {
        let _g = self.op.read().expect("op lock");
        let ro = self.merge_tree_of(ours)?;
        let rt = self.merge_tree_of(theirs)?;
        self.writable()?;
        let mut ctx = Ctx {
            store: self,
            pending: HashMap::new(),
            empty: None,
            conflicts: Vec::new(),
            budget: 0,
        };
        let root = keep_dir(&mut ctx, ro, rt, 0)?;
        self.write_merge(&ctx, &Snapshot { root, ..header })
    }
}

/// Folder `o` with what folder `t` adds beneath it.
fn keep_dir(ctx: &mut Ctx<'_>, o: NodeId, t: NodeId, depth: usize) -> Result<NodeId> {
    if o == t {
        return Ok(o);
    }
    if depth > MERGE_MAX_DEPTH {
        return Err(Error::corrupt("folders nested too deep to keep"));
    }
    let eo = ctx.entries(Some(o))?;
    let et = ctx.entries(Some(t))?;
    let mut out: Vec<DirEntry> = Vec::with_capacity(eo.len().max(et.len()));
    let (mut i, mut j) = (0, 0);
    while i < eo.len() || j < et.len() {
        let ord = match (eo.get(i), et.get(j)) {
            (Some(a), Some(b)) => a.name.cmp(&b.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                out.push(eo[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(et[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (a, b) = (&eo[i], &et[j]);
                match (dir_id(a), dir_id(b)) {
                    (Some(da), Some(db)) if is_dir(a) && is_dir(b) && da != db => {
                        let kept = keep_dir(ctx, da, db, depth + 1)?;
                        out.push(DirEntry {
                            target: Target::Node(kept),
                            ..a.clone()
                        });
                    }
                    _ => out.push(a.clone()),
                }
                i += 1;
                j += 1;
            }
        }
    }
    let pending = &mut ctx.pending;
    build_dir(out, &mut |id, b| {
        pending.entry(id).or_insert(b);
        Ok(())
    })
}
