//! The deletion guard: no single peer can empty or rewrite this device's folder without the user
//! saying so.
//!
//! Before a checkout brings a fetched head in (a fast-forward or a merge, automatic or one-shot),
//! [`check`] measures what it would take away: the files of the tree last checked out here, as
//! this device last scanned them (so its own edits and deletions are its own business), that
//! the result deletes or replaces ([`left_store::Store::removals`]). The measure is cumulative:
//! what every checkout since the last confirmation took away is summed, so sixty snapshots that
//! each delete 1 % are caught like one that deletes 60 %. The checkout is *held* when the sum
//! reaches [`GuardConfig::files_limit`] files (max(10, min(50 % of the files, 1,000)) by
//! default) or half of the bytes (and at least [`GuardConfig::min_bytes`], so one edited
//! document of a small share is not a mass deletion); "the files" are the larger of the folder
//! at the last confirmation and the folder now.
//!
//! A held head is recorded in `<store>/guard.json` (one hold per device: a newer head from the
//! same device replaces its older hold) with a summary; the folder and head stay as they are,
//! local edits still publish on top, and the automatic loop does not pull the held head again.
//! The user decides with `left hold accept ID` (check it out) or `left hold reject ID`
//! ([`reject`]: a snapshot on top of both heads whose tree is ours, so the files are back for
//! everyone and the next merge does not delete them again); `left sync --yes` accepts what the
//! sync brings. A decision is a confirmation: the sum starts again from zero. Either way every
//! file deleted or replaced stays restorable from history: the guard only decides what is
//! checked out.
//!
//! What this module is not: it does not fetch, merge or check out (that is
//! [`super::integrate`]); it changes no snapshot a peer made.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use left_store::{NodeId, Removals, Snapshot, Store};
use serde::{Deserialize, Serialize};

use crate::identity::DeviceId;

/// File name of the guard's state in the store folder.
pub const GUARD_FILE: &str = "guard.json";

/// The guard's thresholds (per device; `left hold --config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuardConfig {
    /// Off: every checkout goes through (as before the guard).
    pub off: bool,
    /// Files deleted or replaced that always pass (the floor of the files limit).
    pub min_files: u64,
    /// Percent of the files that holds.
    pub files_percent: u64,
    /// Files deleted or replaced that always hold (the ceiling of the files limit).
    pub max_files: u64,
    /// Percent of the bytes that holds.
    pub bytes_percent: u64,
    /// Bytes deleted or replaced below which the bytes rule never holds.
    pub min_bytes: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            off: false,
            min_files: 10,
            files_percent: 50,
            max_files: 1000,
            bytes_percent: 50,
            min_bytes: 64 << 20,
        }
    }
}

impl GuardConfig {
    /// Files deleted or replaced that hold, for a base of `base_files` files:
    /// max(min_files, min(files_percent of them, max_files)).
    pub fn files_limit(&self, base_files: u64) -> u64 {
        let share = (base_files.saturating_mul(self.files_percent)).div_ceil(100);
        self.min_files.max(share.min(self.max_files))
    }

    /// Why `r` must be held against a base of `base_files` files and `base_bytes` bytes, or
    /// `None` when it passes.
    pub fn verdict(&self, r: &Removals, base_files: u64, base_bytes: u64) -> Option<String> {
        if self.off {
            return None;
        }
        let limit = self.files_limit(base_files);
        if r.files() >= limit {
            return Some(format!(
                "it deletes or replaces {} of {base_files} files (the guard holds from {limit})",
                r.files()
            ));
        }
        let bytes_limit = (base_bytes as u128 * self.bytes_percent as u128).div_ceil(100);
        if r.bytes() >= self.min_bytes && base_bytes > 0 && r.bytes() as u128 >= bytes_limit {
            return Some(format!(
                "it deletes or replaces {} of {} bytes (the guard holds from {}%)",
                r.bytes(),
                base_bytes,
                self.bytes_percent
            ));
        }
        None
    }
}

/// A head held for the user's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The fetched head that was held (what `left hold accept|reject` names).
    pub id: String,
    /// The device that made it.
    pub device: String,
    /// Why, one line.
    pub why: String,
    /// Files it deletes here.
    pub deleted_files: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Files whose content it replaces here.
    pub replaced_files: u64,
    /// Their bytes.
    pub replaced_bytes: u64,
    /// Deleted plus replaced files per top-level folder (`""`: the root), largest first.
    pub top: Vec<(String, u64)>,
    /// Files and bytes it was measured against (the larger of the folder at the last
    /// confirmation and the folder when held).
    pub base_files: u64,
    /// See `base_files`.
    pub base_bytes: u64,
    /// When it was held (ns since the epoch).
    pub held_at_ns: i64,
}

/// Files and bytes deleted or replaced, summed over the checkouts since the last confirmation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Taken {
    /// Files deleted.
    pub deleted_files: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Files replaced.
    pub replaced_files: u64,
    /// Their bytes.
    pub replaced_bytes: u64,
}

impl Taken {
    fn add(&mut self, r: &Removals) {
        self.deleted_files += r.deleted_files;
        self.deleted_bytes += r.deleted_bytes;
        self.replaced_files += r.replaced_files;
        self.replaced_bytes += r.replaced_bytes;
    }

    fn plus(mut self, r: &Removals) -> Removals {
        self.add(r);
        Removals {
            deleted_files: self.deleted_files,
            deleted_bytes: self.deleted_bytes,
            replaced_files: self.replaced_files,
            replaced_bytes: self.replaced_bytes,
            top: Vec::new(),
        }
    }
}

/// What `<store>/guard.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuardState {
    /// Thresholds.
    pub config: GuardConfig,
    /// Files and bytes of the folder at the last confirmation (`None` until the guard first
    /// measures something; then the folder as it was).
    pub confirmed: Option<(u64, u64)>,
    /// What the checkouts since then took away.
    pub since: Taken,
    /// Heads held, oldest first.
    pub held: Vec<Hold>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(GUARD_FILE)
}

fn err(what: String, e: impl std::fmt::Display) -> left_store::Error {
    left_store::Error::Corrupt {
        what: format!("{what}: {e}"),
    }
}

impl GuardState {
    /// Reads the state of the store folder `dir` (the default when there is none).
    pub fn load(dir: &Path) -> left_store::Result<GuardState> {
        let path = state_path(dir);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                err(
                    format!(
                        "{} is damaged (delete it to reset the deletion guard)",
                        path.display()
                    ),
                    e,
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GuardState::default()),
            Err(e) => Err(left_store::Error::io(path, e)),
        }
    }

    /// Writes it atomically (temp file, fsync, rename, fsync of the folder).
    pub fn save(&self, dir: &Path) -> left_store::Result<()> {
        let path = state_path(dir);
        let tmp = dir.join(format!(".{GUARD_FILE}.tmp"));
        let io = |e| left_store::Error::io(&path, e);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| err("cannot encode the guard".into(), e))?;
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// Whether `id` is held.
    pub fn is_held(&self, id: NodeId) -> bool {
        let hex = id.to_string();
        self.held.iter().any(|h| h.id == hex)
    }

    /// The hold named by `spec` (a full id or a unique prefix of at least 4 characters).
    pub fn find(&self, spec: &str) -> Option<&Hold> {
        let spec = spec.to_ascii_lowercase();
        let mut it = self
            .held
            .iter()
            .filter(|h| spec.len() >= 4 && h.id.starts_with(&spec));
        match (it.next(), it.next()) {
            (Some(h), None) => Some(h),
            _ => None,
        }
    }
}

/// What [`check`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Check it out.
    Pass,
    /// Held (recorded in the state); the checkout must not happen.
    Held(Box<Hold>),
}

/// Measures the checkout from `ours` to `to` (the result of bringing in the fetched head
/// `theirs`): the files of `ours` (this folder as last scanned) that `to` deletes or replaces,
/// added to what the checkouts since the last confirmation took away, against the larger of the
/// folder at that confirmation and the folder now. Records a hold when that reaches a limit;
/// else counts this checkout in (the caller checks out next). `ours` is `None` on a device with
/// no snapshot yet: nothing to take away. A head already held stays held.
pub fn check(
    store: &Store,
    ours: Option<NodeId>,
    theirs: NodeId,
    to: NodeId,
) -> left_store::Result<Verdict> {
    let Some(ours) = ours else {
        return Ok(Verdict::Pass);
    };
    let dir = store.dir().to_path_buf();
    let mut st = GuardState::load(&dir)?;
    if st.config.off {
        return Ok(Verdict::Pass);
    }
    if let Some(h) = st.held.iter().find(|h| h.id == theirs.to_string()) {
        return Ok(Verdict::Held(Box::new(h.clone())));
    }
    let r = store.removals(ours, ours, to)?;
    // An empty folder confirms nothing (a device's first snapshot of a share it just joined).
    let confirmed = st.confirmed.filter(|c| c.0 > 0);
    if r.files() == 0 && confirmed.is_some() {
        return Ok(Verdict::Pass);
    }
    let now = store.tree_totals(ours)?;
    let confirmed = match confirmed {
        Some(c) => c,
        None => {
            // The first checkout the guard sees with files here: the folder as it is now is
            // the confirmed one.
            st.confirmed = Some(now);
            st.save(&dir)?;
            now
        }
    };
    if r.files() == 0 {
        return Ok(Verdict::Pass);
    }
    let (base_files, base_bytes) = (confirmed.0.max(now.0), confirmed.1.max(now.1));
    let total = st.since.plus(&r);
    let Some(why) = st.config.verdict(&total, base_files, base_bytes) else {
        st.since.add(&r);
        st.save(&dir)?;
        return Ok(Verdict::Pass);
    };
    let device = DeviceId(store.author(theirs)?).to_string();
    let hold = Hold {
        id: theirs.to_string(),
        device: device.clone(),
        why,
        deleted_files: r.deleted_files,
        deleted_bytes: r.deleted_bytes,
        replaced_files: r.replaced_files,
        replaced_bytes: r.replaced_bytes,
        top: r
            .top
            .iter()
            .map(|(p, n)| (p.display().to_string(), *n))
            .collect(),
        base_files,
        base_bytes,
        held_at_ns: now_ns(),
    };
    // One hold per device: its newer head replaces the older one.
    st.held.retain(|h| h.device != device);
    st.held.push(hold.clone());
    st.save(&dir)?;
    Ok(Verdict::Held(Box::new(hold)))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The user confirmed the folder as it is at `head` (having accepted or rejected `id`): the
/// hold goes and the guard counts from here.
pub fn accepted(store: &Store, id: NodeId, head: Option<NodeId>) -> left_store::Result<()> {
    let dir = store.dir();
    let mut st = GuardState::load(dir)?;
    let hex = id.to_string();
    st.held.retain(|h| h.id != hex);
    st.since = Taken::default();
    st.confirmed = match head {
        Some(h) => Some(store.tree_totals(h)?),
        None => None,
    };
    st.save(dir)
}

/// Rejects the held head `id`: a snapshot with our head and `id` as parents becomes the head.
/// Its tree is ours plus what the change adds ([`Store::keep_adding`] over the tree the
/// checkout would have produced: `id`'s on a fast-forward, the merge's otherwise): every file
/// it would delete or replace keeps our version, the files it adds stay. Peers fast-forward to
/// it, so the files come back for them, and a merge with `id` is up to date here from now on.
/// Returns (our head before, the new head); the caller checks the additions out.
pub fn reject(store: &Store, id: NodeId, device: [u8; 32]) -> left_store::Result<(NodeId, NodeId)> {
    let ours = store.head()?.ok_or_else(|| left_store::Error::NotFound {
        what: "no head to keep".into(),
    })?;
    // A receive-only device keeps its files locally; the share's version (what it announces)
    // still moves to the rejected head, as it would have on accept, so it is not pulled again
    // and the device keeps converging with its peers.
    let new_share = if store.receive_only()? {
        match store.get_ref(left_store::SHARE_REF)? {
            None => Some(id),
            Some(p) => match store.merge(p, id)? {
                left_store::MergeOutcome::UpToDate => None,
                left_store::MergeOutcome::FastForward(t) => Some(t),
                left_store::MergeOutcome::Merged { snapshot, .. } => Some(snapshot),
            },
        }
    } else {
        None
    };
    let root = store.snapshot(ours)?.root;
    let snap = Snapshot {
        root,
        parents: vec![ours, id],
        device,
        time_ns: now_ns(),
        message: format!("kept the files {} would delete or replace", id.fmt_short()),
    };
    let target = match store.merge(ours, id) {
        Ok(left_store::MergeOutcome::FastForward(t)) => Some(t),
        Ok(left_store::MergeOutcome::Merged { snapshot, .. }) => Some(snapshot),
        // Up to date, or a merge that lacks history or trees: keep our tree as it is.
        _ => None,
    };
    let new = match target {
        Some(t) => match store.keep_adding(ours, t, snap.clone()) {
            Ok(n) => n,
            Err(left_store::Error::NeedTree(_)) => store.put_snapshot(&snap)?,
            Err(e) => return Err(e),
        },
        None => store.put_snapshot(&snap)?,
    };
    store.set_ref("head", new)?;
    if let Some(sh) = new_share {
        store.set_ref(left_store::SHARE_REF, sh)?;
    }
    accepted(store, id, Some(new))?;
    Ok((ours, new))
}

/// What [`decide`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decided {
    /// The head after.
    pub head: Option<NodeId>,
    /// Files the checkout wrote and removed (accept).
    pub files_written: u64,
    /// See `files_written`.
    pub files_removed: u64,
}

/// `left hold accept|reject SPEC`: the user's decision on the held head `spec` names. Accept
/// brings it in (fast-forward or merge, then checkout, with the guard stepped aside for it);
/// reject keeps our files ([`reject`]). Either way the hold goes and the guard counts from the
/// new head. The caller holds the folder lock (a serving process's control socket does).
pub fn decide(
    store: &Store,
    share: &Path,
    device: [u8; 32],
    spec: &str,
    accept: bool,
    checkout: &left_store::CheckoutOptions,
) -> super::Result<Decided> {
    use super::Context;
    let st = GuardState::load(store.dir()).context("cannot read the deletion guard")?;
    let Some(hold) = st.find(spec) else {
        return Err(super::Error::Usage {
            message: format!("no held snapshot {spec}"),
            hint: Some("`left hold` lists the held snapshots and their ids".into()),
        });
    };
    let id: NodeId = hold
        .id
        .parse()
        .map_err(|_| super::Error::Other(format!("the hold {} has a bad id", hold.id)))?;
    if !accept {
        let (before, head) = reject(store, id, device).context("cannot keep the files")?;
        // What the change adds is written here; nothing of ours is deleted or replaced.
        let r = store
            .checkout(share, Some(before), head, checkout, &left_store::NoProgress)
            .context("cannot write the files the rejected change adds")?;
        return Ok(Decided {
            head: Some(head),
            files_written: r.files_written,
            files_removed: r.files_removed,
        });
    }
    let opts = super::integrate::IntegrateOptions {
        device,
        message: "before accepting a held snapshot".into(),
        checkout: checkout.clone(),
        accept: vec![id],
        ..Default::default()
    };
    let ig = super::integrate::integrate(store, share, &[id], &opts, &left_store::NoProgress)
        .context("cannot bring the held snapshot in")?;
    if let Some((_, e)) = ig.errors.first() {
        return Err(super::Error::Other(format!(
            "cannot bring {} in: {e}",
            id.fmt_short()
        )));
    }
    if !ig.need_trees.is_empty() || !ig.need_headers.is_empty() {
        return Err(super::Error::Other(format!(
            "cannot merge with {}: part of its history is not here yet (sync again, then accept)",
            id.fmt_short()
        )));
    }
    let head = store.head().context("cannot read the head")?;
    accepted(store, id, head).context("cannot update the deletion guard")?;
    Ok(Decided {
        head,
        files_written: ig.files_written,
        files_removed: ig.files_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removals(files: u64, bytes: u64) -> Removals {
        Removals {
            deleted_files: files,
            deleted_bytes: bytes,
            ..Removals::default()
        }
    }

    #[test]
    fn the_files_limit_is_max_10_min_half_1000() {
        let c = GuardConfig::default();
        assert_eq!(c.files_limit(0), 10);
        assert_eq!(c.files_limit(15), 10);
        assert_eq!(c.files_limit(21), 11);
        assert_eq!(c.files_limit(100), 50);
        assert_eq!(c.files_limit(2000), 1000);
        assert_eq!(c.files_limit(1_000_000), 1000);
    }

    #[test]
    fn files_or_bytes_hold_and_small_changes_pass() {
        let c = GuardConfig::default();
        assert_eq!(c.verdict(&removals(9, 0), 10, 0), None);
        assert!(c.verdict(&removals(10, 0), 10, 0).is_some());
        assert_eq!(c.verdict(&removals(49, 0), 100, 0), None);
        assert!(c.verdict(&removals(50, 0), 100, 0).is_some());
        // One huge file: by bytes.
        let gib = 1u64 << 30;
        assert!(c.verdict(&removals(1, 50 * gib), 3, 60 * gib).is_some());
        assert_eq!(c.verdict(&removals(1, 20 * gib), 3, 60 * gib), None);
        // Half of a tiny share's bytes, below min_bytes: passes.
        assert_eq!(c.verdict(&removals(1, 6 << 10), 4, 10 << 10), None);
        let off = GuardConfig { off: true, ..c };
        assert_eq!(off.verdict(&removals(1000, 0), 1000, 0), None);
    }
}
