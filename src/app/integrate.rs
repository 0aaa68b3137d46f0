//! [`integrate`]: bring heads fetched from peers into the share folder (the local half of
//! automatic sync and of a one-shot sync of diverged heads: the store and the folder, no
//! network, no clock). It lives in app, not in the IO-free `sync` engine, because it scans and
//! writes the share folder through the store.
//!
//! For each fetched head, in id order (so every peer takes the same steps for the same input):
//!
//! 1. First the folder is scanned (`Store::add`): a local change that was not snapshotted yet
//!    becomes a snapshot and takes part in the merge, so checkout never overwrites it.
//! 2. Then [`Store::merge`] decides: the fetched head is ours or behind us (nothing to do), ahead
//!    of us (fast-forward), or both sides changed (a deterministic three-way merge snapshot that
//!    every peer merging the same two heads computes identically; see the store's `merge`).
//!    Two special cases keep a fresh peer from adding merge snapshots to everyone's history: a
//!    fetched head that is a parentless snapshot of an empty folder (a peer that just joined)
//!    is ignored, and when *our* head is one, the fetched head is simply checked out. When both
//!    are, the greater id wins on both sides (so two fresh peers agree on one head).
//! 3. The folder is checked out from our head to the result (`Store::checkout`): only changed
//!    paths, temp file and rename, a path changed on disk since the scan (or still being written,
//!    so left out of it) is kept and reported in `kept`. When the incoming version of such a path
//!    differs from what we had, it is written beside it under a conflict name, so neither edit is
//!    lost: the next scan snapshots both (the local one keeps the name).
//!
//! Before step 3 the deletion guard ([`super::guard`]) measures what the checkout would take
//! away; a head it holds is listed in [`Integrated::held`] and neither checked out nor merged
//! into the head, unless it is in [`IntegrateOptions::accept`].
//!
//! A head that fails (an error reading it, a checkout that cannot write a path) is reported in
//! [`Integrated::errors`] and the others are still integrated.
//!
//! A merge is never attempted against a base that may be wrong: a base whose tree is not in the
//! store (history fetched headers-only) is listed in [`Integrated::need_trees`], history headers
//! the merge-base walk could not find in [`Integrated::need_headers`]; the driver fetches them and
//! calls again.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use left_store::{AddOptions, CheckoutOptions, NodeId, Progress, Store};

/// Settings of [`integrate`].
#[derive(Clone, Debug, Default)]
pub struct IntegrateOptions {
    /// This device (recorded in the snapshot a scan makes).
    pub device: [u8; 32],
    /// Message of a snapshot of local changes.
    pub message: String,
    /// Checkout settings (`fsync`).
    pub checkout: CheckoutOptions,
    /// Files modified less than this ago are not snapshotted yet ([`AddOptions::settle_ns`]).
    pub settle_ns: i64,
    /// The time of a snapshot the scan makes ([`AddOptions::time_ns`]; `None`: the clock).
    #[doc(hidden)]
    pub time_ns: Option<i64>,
    /// Heads the user accepted: checked out whatever the deletion guard says.
    pub accept: Vec<NodeId>,
}

/// What [`integrate`] did.
#[derive(Clone, Debug, Default)]
pub struct Integrated {
    /// Our head before (after the scan of local changes).
    pub before: Option<NodeId>,
    /// Our head after.
    pub after: Option<NodeId>,
    /// The scan found local changes and made a snapshot of them.
    pub scanned: bool,
    /// The scan found files still being written (left for a later scan).
    pub unsettled: bool,
    /// Fast-forwards made.
    pub fast_forwards: u32,
    /// Merge snapshots made.
    pub merges: u32,
    /// Conflicts resolved by keeping both versions, as (kept name, conflict copy name).
    pub conflicts: Vec<(String, String)>,
    /// Paths the checkouts left alone because they changed on disk meanwhile.
    pub kept: usize,
    /// Merge bases whose trees must be fetched before these heads can be merged.
    pub need_trees: Vec<NodeId>,
    /// Snapshot headers of the histories that must be fetched before these heads can be merged
    /// (their merge base cannot be found without them).
    pub need_headers: Vec<NodeId>,
    /// Files written and removed by the checkouts.
    pub files_written: u64,
    /// Files removed by the checkouts.
    pub files_removed: u64,
    /// Heads that could not be integrated, with why (one line each).
    pub errors: Vec<(NodeId, String)>,
    /// Paths the checkouts could not write here (`path: reason`, one line each); they keep the
    /// synced version in snapshots and are tried again at the next checkout.
    pub unwritten: Vec<String>,
    /// Heads the deletion guard held (not checked out; `left hold` decides).
    pub held: Vec<super::guard::Hold>,
}

impl Integrated {
    /// The head moved.
    pub fn moved(&self) -> bool {
        self.before != self.after
    }

    /// Adds a later round of the same integration (made after fetching what this one lacked):
    /// counts add up; the head after, what is still needed and the errors are the later round's.
    pub fn add_round(&mut self, ig: &Integrated) {
        self.after = ig.after;
        self.scanned |= ig.scanned;
        self.unsettled = ig.unsettled;
        self.merges += ig.merges;
        self.fast_forwards += ig.fast_forwards;
        self.conflicts.extend(ig.conflicts.iter().cloned());
        self.kept += ig.kept;
        self.unwritten.extend(ig.unwritten.iter().cloned());
        self.files_written += ig.files_written;
        self.files_removed += ig.files_removed;
        self.need_trees = ig.need_trees.clone();
        self.need_headers = ig.need_headers.clone();
        self.errors = ig.errors.clone();
        for h in &ig.held {
            if !self.held.contains(h) {
                self.held.push(h.clone());
            }
        }
    }
}

/// Whether a snapshot is a parentless snapshot of an empty folder (a peer's first scan of a
/// new, empty share).
fn is_empty_start(store: &Store, id: NodeId) -> left_store::Result<bool> {
    let s = store.snapshot(id)?;
    if !s.parents.is_empty() {
        return Ok(false);
    }
    if store.is_shallow(id)? {
        return Ok(false);
    }
    Ok(store.dir_entries(s.root)?.is_empty())
}

/// Scans the share, then fast-forwards to or merges with each of `heads` (complete in the
/// store) and checks the result out. See the module documentation.
pub fn integrate(
    store: &Store,
    share: &Path,
    heads: &[NodeId],
    opts: &IntegrateOptions,
    progress: &dyn Progress,
) -> left_store::Result<Integrated> {
    let add = store.add(
        share,
        &[],
        &AddOptions {
            device: opts.device,
            message: opts.message.clone(),
            settle_ns: opts.settle_ns,
            time_ns: opts.time_ns,
            ..AddOptions::default()
        },
        progress,
    )?;
    let mut out = Integrated {
        scanned: add.snapshot.is_some(),
        unsettled: !add.unsettled.is_empty(),
        before: store.head()?,
        ..Integrated::default()
    };
    out.after = out.before;
    let mut heads: Vec<NodeId> = heads.to_vec();
    heads.sort();
    heads.dedup();
    for theirs in heads {
        if let Err(e) = integrate_one(store, share, theirs, opts, progress, &mut out) {
            out.errors.push((theirs, e.to_string()));
        }
    }
    Ok(out)
}

/// Fast-forwards to or merges with one fetched head and checks the result out.
fn integrate_one(
    store: &Store,
    share: &Path,
    theirs: NodeId,
    opts: &IntegrateOptions,
    progress: &dyn Progress,
    out: &mut Integrated,
) -> left_store::Result<()> {
    if store.receive_only()? {
        return integrate_receive_only(store, share, theirs, opts, progress, out);
    }
    let ours = store.head()?;
    let target = merge_target(store, store.head()?, theirs, None, out)?;
    check_out(store, share, ours, theirs, target, opts, progress, out)
}

/// On a receive-only device: the share's version (ref `share`) moves to `theirs` as any
/// device's head would (fast-forward or the same deterministic merge); the folder, whose local
/// changes live in `head` only, gets it by a local merge of `head` with the new share's version
/// (a path changed on both sides keeps both versions: the share's under the name, the local
/// edit under a conflict name). The local
/// merge is never announced, so it cannot make peers ping-pong.
fn integrate_receive_only(
    store: &Store,
    share: &Path,
    theirs: NodeId,
    opts: &IntegrateOptions,
    progress: &dyn Progress,
    out: &mut Integrated,
) -> left_store::Result<()> {
    let published = store.get_ref(left_store::SHARE_REF)?;
    let Some(new_share) = merge_target(store, published, theirs, None, out)? else {
        return Ok(());
    };
    let ours = store.head()?;
    let target = if ours.is_none() || ours == published {
        Some(new_share)
    } else {
        let mut local = Integrated::default();
        // The share's version keeps the name; the local edit becomes the conflict copy.
        let prefer = Some(left_store::MergeSide::Theirs);
        let t = merge_target(store, ours, new_share, prefer, &mut local)?;
        out.conflicts.extend(local.conflicts);
        out.need_trees.extend(local.need_trees);
        out.need_headers.extend(local.need_headers);
        t
    };
    let held = out.held.len();
    check_out(store, share, ours, theirs, target, opts, progress, out)?;
    if out.held.len() == held {
        store.set_ref(left_store::SHARE_REF, new_share)?;
    }
    Ok(())
}

/// What checking out `theirs` over `ours` moves the folder to (`None`: nothing). `prefer`: the
/// side that keeps the name in a conflict ([`Store::merge_preferring`]; `None`: the symmetric
/// merge every peer computes alike).
fn merge_target(
    store: &Store,
    ours: Option<NodeId>,
    theirs: NodeId,
    prefer: Option<left_store::MergeSide>,
    out: &mut Integrated,
) -> left_store::Result<Option<NodeId>> {
    let target =
        match ours {
            None => Some(theirs),
            Some(o) if o == theirs => None,
            Some(o) => {
                let (theirs_empty, ours_empty) =
                    (is_empty_start(store, theirs)?, is_empty_start(store, o)?);
                if theirs_empty && (!ours_empty || theirs < o) {
                    None
                } else if ours_empty && !store.is_ancestor(theirs, o)? {
                    Some(theirs)
                } else {
                    let merged = match prefer {
                        None => store.merge(o, theirs),
                        Some(p) => store.merge_preferring(o, theirs, p),
                    };
                    match merged {
                        Ok(left_store::MergeOutcome::UpToDate) => None,
                        Ok(left_store::MergeOutcome::FastForward(t)) => {
                            out.fast_forwards += 1;
                            Some(t)
                        }
                        Ok(left_store::MergeOutcome::Merged {
                            snapshot,
                            conflicts,
                        }) => {
                            out.merges += 1;
                            out.conflicts.extend(conflicts.iter().map(|c| {
                                (c.path.display().to_string(), c.copy.display().to_string())
                            }));
                            Some(snapshot)
                        }
                        Err(left_store::Error::NeedTree(base)) => {
                            if !out.need_trees.contains(&base) {
                                out.need_trees.push(base);
                            }
                            None
                        }
                        Err(left_store::Error::NeedHeaders(ids)) => {
                            for id in ids {
                                if !out.need_headers.contains(&id) {
                                    out.need_headers.push(id);
                                }
                            }
                            None
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        };
    Ok(target)
}

/// Checks out `target` (if any) over `ours` after the deletion guard's say.
#[allow(clippy::too_many_arguments)]
fn check_out(
    store: &Store,
    share: &Path,
    ours: Option<NodeId>,
    theirs: NodeId,
    target: Option<NodeId>,
    opts: &IntegrateOptions,
    progress: &dyn Progress,
    out: &mut Integrated,
) -> left_store::Result<()> {
    if let Some(to) = target {
        if !opts.accept.contains(&theirs) {
            if let super::guard::Verdict::Held(h) = super::guard::check(store, ours, theirs, to)? {
                out.held.push(*h);
                return Ok(());
            }
        }
        let r = store.checkout(share, ours, to, &opts.checkout, progress)?;
        out.kept += r.kept.len();
        out.unwritten.extend(
            r.unwritten
                .iter()
                .map(|u| format!("{}: {}", u.path.display(), u.reason)),
        );
        out.files_written += r.files_written;
        out.files_removed += r.files_removed;
        out.after = store.head()?;
        for k in &r.kept {
            match keep_incoming(store, share, ours, to, &k.path) {
                Ok(Some(copy)) => out
                    .conflicts
                    .push((k.path.display().to_string(), copy.display().to_string())),
                Ok(None) => {}
                Err(e) => out.errors.push((
                    to,
                    format!(
                        "cannot keep the incoming version of {} beside the local one: {e}",
                        k.path.display()
                    ),
                )),
            }
        }
    }
    Ok(())
}

/// The checkout kept the local file at `path` (changed on disk since the scan). If the incoming
/// snapshot `to` changed that path too (a file or link that differs from `from`'s), its version is
/// written beside the local one under a conflict name, which is returned: both edits survive and
/// the next scan records both. Nothing is written through a symlink: every folder on the way must
/// be a real folder.
fn keep_incoming(
    store: &Store,
    share: &Path,
    from: Option<NodeId>,
    to: NodeId,
    path: &Path,
) -> left_store::Result<Option<std::path::PathBuf>> {
    use left_store::EntryKind;
    let Some(incoming) = store.entry_at(to, path)? else {
        // Deleted there, changed here: the edit wins.
        return Ok(None);
    };
    if incoming.kind == EntryKind::Dir {
        return Ok(None);
    }
    let before = match from {
        Some(f) => store.entry_at(f, path)?,
        None => None,
    };
    if before
        .as_ref()
        .is_some_and(|b| b.kind == incoming.kind && b.target == incoming.target)
    {
        // Only the local side changed it.
        return Ok(None);
    }
    let parent_rel = path.parent().unwrap_or(Path::new(""));
    let mut dir = share.to_path_buf();
    for c in parent_rel.components() {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(None),
        }
    }
    let device = store.author(to)?;
    let mut n = 1;
    let copy = loop {
        let c = left_store::conflict_name(&incoming.name, incoming.mtime_ns, &device, n);
        let c = <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(c);
        if std::fs::symlink_metadata(dir.join(&c)).is_err() {
            break c;
        }
        n += 1;
        if n > 1000 {
            return Ok(None);
        }
    };
    // Restored into a temp folder beside it (never snapshotted), then renamed into place.
    let tmp = dir.join(format!(
        "{}conflict-{}",
        left_store::checkout::TMP_PREFIX,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let name = std::ffi::OsStr::from_bytes(&incoming.name);
    let r = store
        .restore(
            to,
            Some(path),
            &tmp,
            &left_store::RestoreOptions::default(),
            &left_store::NoProgress,
        )
        .and_then(|_| {
            std::fs::rename(tmp.join(name), dir.join(&copy))
                .map_err(|e| left_store::Error::io(dir.join(&copy), e))
        });
    let _ = std::fs::remove_dir_all(&tmp);
    r?;
    Ok(Some(parent_rel.join(copy)))
}
