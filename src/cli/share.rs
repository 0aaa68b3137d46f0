//! `left share-key`, `left peers` and `left status`: the share key, the devices seen, and the state
//! of this share (head, folder, a running `left serve`).

use anyhow::Context;
use clap::Args;
use left::control;
use left::ecp::ShareId;
use left::identity::{self, DeviceId, Identity};
use left::peers::{PeerBook, PeerRecord};
use serde_json::{json, Value};

use left_store::NodeId;

use super::{
    answer_error, call_served, fmt, open_or_served, open_store_read, store_dir, Global, Opened,
    Output, EXIT_OK,
};

/// Arguments of `left peers`.
#[derive(Debug, Args)]
#[command(
    after_help = "DEVICE is a device id as `left id` prints it, or a unique prefix of one \
in the list. Revoked devices are always refused. Once any device is pinned, only pinned devices \
may connect; unpin them all to accept every device holding the share key again. A running \
`left serve` picks changes up for new connections. --revoke and --forget also drop the last \
snapshot fetched from the device (its ref peers/DEVICE), so the next `left gc` frees what only \
that snapshot held; `left gc` drops such refs of revoked devices too."
)]
#[group(multiple = false)]
pub struct PeersArgs {
    /// Pin DEVICE: once any device is pinned, only pinned devices may connect
    #[arg(long, value_name = "DEVICE")]
    pin: Option<String>,
    /// Remove the pin of DEVICE
    #[arg(long, value_name = "DEVICE")]
    unpin: Option<String>,
    /// Revoke DEVICE: it may never connect again (until --unrevoke)
    #[arg(long, value_name = "DEVICE")]
    revoke: Option<String>,
    /// Lift the revocation of DEVICE
    #[arg(long, value_name = "DEVICE")]
    unrevoke: Option<String>,
    /// Forget DEVICE: drop its record and the last snapshot fetched from it (its
    /// `peers/<device>` ref, so the next gc frees what only that held); a revocation stays
    #[arg(long, value_name = "DEVICE")]
    forget: Option<String>,
}

/// Runs `left share-key`.
pub(crate) fn share_key(global: &Global, out: &Output) -> anyhow::Result<u8> {
    let store = store_dir(global)?;
    let key = identity::load_share_key(&store).context("cannot read the share key")?;
    let text = identity::format_share_key(&key);
    out.json(&json!({
        "share_key": text,
        "share": ShareId::from_key(&key).0.to_string(),
    }))?;
    out.data(text)?;
    Ok(EXIT_OK)
}

/// Runs `left peers`: lists the book, after applying a change if one is asked for.
pub(crate) fn peers(global: &Global, out: &Output, args: PeersArgs) -> anyhow::Result<u8> {
    let store = store_dir(global)?;
    let mut book = PeerBook::load(&store).context("cannot read the peer book")?;
    let change = [
        (args.pin, Change::Pin),
        (args.unpin, Change::Unpin),
        (args.revoke, Change::Revoke),
        (args.unrevoke, Change::Unrevoke),
        (args.forget, Change::Forget),
    ]
    .into_iter()
    .find_map(|(arg, change)| arg.map(|a| (a, change)));
    let mut done = None;
    // Forgotten or revoked: the device's last snapshot (ref `peers/<device>`) goes too.
    let mut dropped: Option<Option<NodeId>> = None;
    let mut kept_revoked = false;
    if let Some((given, change)) = change {
        let device = resolve_device(&book, &given, change)?;
        match change {
            Change::Pin => book.pin(&store, &device),
            Change::Unpin => book.unpin(&store, &device),
            Change::Revoke => book.revoke(&store, &device),
            Change::Unrevoke => book.unrevoke(&store, &device),
            Change::Forget => {
                if book.get(&device.0).is_some_and(|r| r.pinned) {
                    // Refused before the ref goes (PeerBook::forget says why).
                    book.forget(&store, &device)
                        .map(|_| ())
                        .context("cannot forget the device")?;
                }
                // The ref first: if the store cannot be reached, nothing changed.
                dropped = Some(
                    drop_peer_ref(global, &device)
                        .context("cannot drop the device's last snapshot; nothing was forgotten")?,
                );
                book.forget(&store, &device).map(|removed| {
                    kept_revoked = !removed && book.get(&device.0).is_some_and(|r| r.revoked);
                })
            }
        }
        .context("cannot change the peer book")?;
        if matches!(change, Change::Revoke) {
            // The revocation holds whatever happens here; a ref left behind (the store busy)
            // is dropped by the next `left gc`.
            match drop_peer_ref(global, &device) {
                Ok(d) => dropped = Some(d),
                Err(e) => eprintln!(
                    "left: warning: cannot drop the last snapshot of {device} now ({e:#}); the next `left gc` drops it"
                ),
            }
        }
        done = Some((change, device));
    }
    let mut j = json!({
        "pin_mode": book.pin_mode(),
        "peers": book.records().iter().map(record_json).collect::<Vec<_>>(),
    });
    if let Some(d) = &dropped {
        j["dropped_ref"] = json!(d.map(|s| s.to_string()));
    }
    out.json(&j)?;
    if let Some((change, device)) = done {
        let what = match change {
            Change::Pin => "pinned",
            Change::Unpin => "unpinned",
            Change::Revoke => "revoked",
            Change::Unrevoke => "no longer revoked:",
            Change::Forget if kept_revoked => "forgot (it stays revoked)",
            Change::Forget => "forgot",
        };
        let mode = if book.pin_mode() {
            "only pinned devices may connect"
        } else {
            "every device holding the share key may connect, unless revoked"
        };
        out.human(format!("{what} {device}; {mode}"))?;
        if let Some(Some(snap)) = dropped {
            let short: String = snap.to_string().chars().take(12).collect();
            out.human(format!(
                "dropped its last snapshot {short} (ref peers/{device}): the next `left gc` frees what only it held"
            ))?;
        }
        return Ok(EXIT_OK);
    }
    if book.records().is_empty() {
        out.human("no devices seen yet")?;
    }
    for r in book.records() {
        out.data(record_line(r))?;
    }
    Ok(EXIT_OK)
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Pin,
    Unpin,
    Revoke,
    Unrevoke,
    Forget,
}

/// Drops the ref `peers/<device>` (through a running `left serve` when there is one). Returns
/// the snapshot it named (`None`: there was none).
fn drop_peer_ref(global: &Global, device: &DeviceId) -> anyhow::Result<Option<NodeId>> {
    match open_or_served(global)? {
        Opened::Local(_, store) => Ok(store.drop_peer_ref(&device.to_string())?),
        Opened::Served(dir, _) => {
            let req = control::Request::DropPeerRef {
                device: device.to_string(),
            };
            match call_served(&dir, &req)? {
                control::Response::PeerRefDropped(s) => Ok(s),
                other => Err(answer_error(other, "DropPeerRef")),
            }
        }
    }
}

/// A device given on the command line: a unique prefix of one in the book, or (to pin or revoke a
/// device never seen) a full id.
fn resolve_device(book: &PeerBook, given: &str, change: Change) -> anyhow::Result<DeviceId> {
    match book.find_prefix(given) {
        Ok(Some(device)) => Ok(device),
        Err(ambiguous) => Err(anyhow::anyhow!(ambiguous)),
        Ok(None) => match (change, given.parse::<DeviceId>()) {
            (Change::Pin | Change::Revoke | Change::Forget, Ok(device)) => Ok(device),
            _ => Err(anyhow::anyhow!(
                "no device in the peer book has an id starting with {given:?} \
                 (`left peers` lists them; a device never seen needs its full id)"
            )),
        },
    }
}

fn seen(secs: i64) -> String {
    if secs == 0 {
        "never".to_owned()
    } else {
        fmt::time(secs.saturating_mul(1_000_000_000))
    }
}

fn record_line(r: &PeerRecord) -> String {
    let mut line = format!(
        "{}  first seen {}, last seen {}",
        r.device,
        seen(r.first_seen),
        seen(r.last_seen)
    );
    if let Some(addr) = r.last_addr {
        line.push_str(&format!(" from {addr}"));
    }
    if r.pinned {
        line.push_str("  [pinned]");
    }
    if r.revoked {
        line.push_str("  [revoked]");
    }
    line
}

fn record_json(r: &PeerRecord) -> Value {
    json!({
        "device": r.device.to_string(),
        "first_seen": r.first_seen,
        "last_seen": r.last_seen,
        "last_addr": r.last_addr.map(|a| a.to_string()),
        "pinned": r.pinned,
        "revoked": r.revoked,
    })
}

/// Runs `left status`.
///
/// With a `left serve` running, its view: `idle` (nothing to scan, fetch or check out), each
/// peer (`connected`, `head`, `in_sync`, `lag_bytes`, its last error), the transfer running and
/// the last error, beside the peer book's records. Without one: the store's head, `idle: true`,
/// and the peers the book knows with the heads last fetched from them (`peers/<device>` refs).
pub(crate) fn status(global: &Global, out: &Output) -> anyhow::Result<u8> {
    let dir = store_dir(global)?;
    let served = match control::call(&dir, &control::Request::Status)
        .context("cannot ask the serving process for its status")?
    {
        Some(control::Response::Status(v)) => Some(v),
        Some(other) => return Err(answer_error(other, "Status")),
        None => None,
    };
    let mut peer_refs: std::collections::BTreeMap<String, String> = Default::default();
    let (head, share_root) = match &served {
        Some(v) => (
            v["head"].as_str().map(str::to_owned),
            v["share_root"].as_str().map(str::to_owned),
        ),
        None => {
            let (_, store) = open_store_read(global)?;
            let head = store
                .head()
                .context("cannot read the head")?
                .map(|h| h.to_string());
            for (name, id) in store.refs().context("cannot read the refs")? {
                if let Some(d) = name.strip_prefix("peers/") {
                    peer_refs.insert(d.to_owned(), id.to_string());
                }
            }
            let root = store
                .config()
                .share_root
                .as_ref()
                .map(|p| fmt::json_path(p));
            (head, root)
        }
    };
    let device = Identity::load(&dir).ok().map(|id| id.device_id());
    let share = identity::load_share_key(&dir)
        .ok()
        .map(|k| ShareId::from_key(&k).0.to_string());
    let book = PeerBook::load(&dir).context("cannot read the peer book")?;
    // One list: the serving process's peers (configured, learned, connected) first, then the
    // book's other devices.
    let mut peers: Vec<Value> = Vec::new();
    if let Some(list) = served.as_ref().and_then(|v| v["peers"].as_array()) {
        for p in list {
            let mut p = p.clone();
            if let Some(rec) = p["device"]
                .as_str()
                .and_then(|d| book.records().iter().find(|r| r.device.to_string() == d))
            {
                p["pinned"] = json!(rec.pinned);
                p["revoked"] = json!(rec.revoked);
            }
            peers.push(p);
        }
    }
    for r in book.records() {
        let d = r.device.to_string();
        if peers
            .iter()
            .any(|p| p["device"].as_str() == Some(d.as_str()))
        {
            continue;
        }
        let mut v = record_json(r);
        v["connected"] = json!(false);
        v["head"] = json!(peer_refs.get(&d));
        v["addr"] = json!(r.last_addr.map(|a| a.to_string()));
        peers.push(v);
    }
    let idle = served
        .as_ref()
        .map(|v| v["idle"].as_bool().unwrap_or(true))
        .unwrap_or(true);
    let (unwritten, skipped) = super::inspect::local_problems(global, served.as_ref());
    // Best effort (read-only beside a serving process): tracked paths .leftignore now covers.
    let (frozen, newly_frozen) = open_store_read(global)
        .ok()
        .and_then(|(_, s)| s.frozen_status().ok())
        .unwrap_or((0, 0));
    // The deletion guard's holds (a file the serving process rewrites atomically).
    let guard = left::app::guard::GuardState::load(&dir).unwrap_or_default();
    let folder_type = open_store_read(global)
        .ok()
        .and_then(|(_, s)| left::app::folder::FolderType::of(&s).ok())
        .unwrap_or(left::app::folder::FolderType::SendReceive);
    // A send-only device's view of the peers' heads (headers it looked at, nothing taken).
    let seen = if folder_type == left::app::folder::FolderType::SendOnly {
        open_store_read(global)
            .ok()
            .and_then(|(_, s)| left::app::send_only::seen(&s).ok())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    out.json(&json!({
        "folder_type": folder_type.name(),
        "seen": seen,
        "held": guard.held,
        "guard": if guard.config.off { "off" } else { "on" },
        "frozen": frozen,
        "newly_frozen": newly_frozen,
        "unwritten": unwritten,
        "skipped": skipped,
        "store": fmt::json_path(&dir),
        "share_root": share_root,
        "head": head,
        "device": device.map(|d| d.to_string()),
        "share": share,
        "serving": served.is_some(),
        "automatic": served.as_ref().map(|v| v["automatic"].as_bool().unwrap_or(false)).unwrap_or(false),
        "idle": idle,
        "running": served.as_ref().and_then(|v| v["running"].as_str().map(str::to_owned)),
        "transfer": served.as_ref().map(|v| v["transfer"].clone()).unwrap_or(Value::Null),
        "last_error": served.as_ref().and_then(|v| v["last_error"].as_str().map(str::to_owned)),
        "serve": served,
        "pin_mode": book.pin_mode(),
        "peers": peers,
    }))?;
    let short = |s: Option<&str>, n: usize| match s {
        Some(s) => s.chars().take(n).collect(),
        None => "none".to_owned(),
    };
    out.data(format!(
        "share {} (store {})",
        share_root.as_deref().unwrap_or("(not recorded)"),
        dir.display()
    ))?;
    out.data(format!(
        "head {}; device {}{}",
        short(head.as_deref(), 12),
        short(device.map(|d| d.to_string()).as_deref(), 8),
        if book.pin_mode() { "; pin mode" } else { "" }
    ))?;
    match folder_type {
        left::app::folder::FolderType::SendReceive => {}
        left::app::folder::FolderType::ReceiveOnly => out.data(
            "folder type receive-only: local changes are not published (`left revert` drops them)",
        )?,
        left::app::folder::FolderType::SendOnly => {
            out.data("folder type send-only: the peers' changes are not taken here")?;
            for s in &seen {
                out.data(format!(
                    "  {} at {}: {}{}",
                    &s.device[..8.min(s.device.len())],
                    &s.head[..12.min(s.head.len())],
                    if s.has_ours {
                        "has this device's head"
                    } else {
                        "lacks this device's head"
                    },
                    if s.behind {
                        ""
                    } else {
                        "; has changes not taken here"
                    }
                ))?;
            }
            if seen.iter().any(|s| !s.behind) {
                out.data("  `left override` makes the share match this device")?;
            }
        }
    }
    match &served {
        Some(v) => {
            let state = if v["automatic"].as_bool() == Some(true) {
                match v["running"].as_str() {
                    Some(r) => format!("syncing automatically, now: {r}"),
                    None if idle => "syncing automatically, idle".to_owned(),
                    None => "syncing automatically, waiting".to_owned(),
                }
            } else {
                "serving only (no --peer)".to_owned()
            };
            out.data(format!(
                "serving on {}: {state}",
                v["listen"].as_str().unwrap_or("?")
            ))?;
            if let (Some(d), Some(f)) = (
                v["transfer"]["bytes_discovered"].as_u64(),
                v["transfer"]["bytes_fetched"].as_u64(),
            ) {
                out.data(format!(
                    "  fetching: {} of {}",
                    fmt::bytes(f),
                    fmt::bytes(d)
                ))?;
            }
            if let Some(e) = v["last_error"].as_str() {
                out.data(format!("  last error: {e}"))?;
            }
        }
        None => out.data("serving: no")?,
    }
    super::inspect::print_local_problems(out, &unwritten, &skipped)?;
    for h in &guard.held {
        out.data(super::hold::describe(h))?;
    }
    if !guard.held.is_empty() {
        out.data(
            "  held: not checked out here; `left hold accept ID` or `left hold reject ID` decides",
        )?;
    }
    if frozen > 0 {
        out.data(format!(
            "frozen: {frozen} tracked path(s) that .leftignore covers (kept as last synced; \
             `left forget PATH` drops one)"
        ))?;
    }
    if let Some(l) = super::add::frozen_warning_line(newly_frozen) {
        out.data(l)?;
    }
    for p in &peers {
        let name = p["peer"]
            .as_str()
            .or(p["addr"].as_str())
            .unwrap_or("?")
            .to_owned();
        let dev = short(p["device"].as_str(), 8);
        let state = if p["revoked"].as_bool() == Some(true) {
            "revoked".to_owned()
        } else if p["in_sync"].as_bool() == Some(true) {
            "in sync".to_owned()
        } else if p["connected"].as_bool() == Some(true) {
            match p["head"].as_str() {
                Some(h) => format!("connected, at {}", short(Some(h), 12)),
                None => "connected, no snapshot".to_owned(),
            }
        } else {
            "not connected".to_owned()
        };
        let err = p["last_error"]
            .as_str()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        out.data(format!("  peer {name} [{dev}]: {state}{err}"))?;
    }
    Ok(EXIT_OK)
}
