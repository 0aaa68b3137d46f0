//! Peer and fetch setup, the one copy every use case uses: peer addresses as given (resolved,
//! the peer book's when none is given), the rdt endpoints of this store (device key, share key,
//! allow-list, encryption, `LEFT_IMPAIR`), the tokio runtime of a command, and the fetch settings
//! of a one-shot command ([`Net`]).
//!
//! What it is not: it opens no connection and fetches nothing (that is [`crate::session`]); it
//! parses no flag (the CLI hands it the strings).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use left_store::Store;

use super::{io_error, Context, Error, Result};
use crate::ecp::ShareId;
use crate::identity::{self, DeviceId, Identity};
use crate::net::driver::Endpoint;
use crate::net::udp::SocketConfig;
use crate::peers::PeerBook;
use crate::rdt::EndpointConfig;
use crate::session::{self, Endpoints, FetchConfig, PeerPolicy, Target};
use crate::sync::PullConfig;

/// The default UDP port (the seed's, in its 20000-30000 range).
pub const DEFAULT_PORT: u16 = 22001;

/// `IP:PORT`, `[IPv6]:PORT`, or a bare (optionally bracketed) IP with the default port; `None`
/// for anything else (a host name, a bare port). Shared by `serve --listen` and `sync PEER`.
pub fn literal_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
}

/// Resolves one peer as given: `HOST:PORT`, `[IPv6]:PORT`, a bare IP or host (default port).
pub fn resolve(peer: &str) -> std::result::Result<SocketAddr, String> {
    let p = peer.trim();
    if p.is_empty() {
        return Err("empty peer address".into());
    }
    if let Some(a) = literal_addr(p) {
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

/// The error for a peer address that does not parse or resolve.
pub fn bad_address(given: &str, why: &str) -> Error {
    Error::BadAddress {
        given: given.to_string(),
        why: why.to_string(),
    }
}

/// The peers named on the command line, each resolved, in order: the positional ones as given
/// (an empty one is an error), then those of `--ip a,b,c` (trimmed, empty ones skipped). Kept
/// as given, duplicates too (`left sync`'s rule).
pub fn given_peers(peers: &[String], ip: &[String]) -> Result<Vec<Target>> {
    let mut given: Vec<String> = peers.to_vec();
    given.extend(
        ip.iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
    );
    let mut targets = Vec::new();
    for g in &given {
        let addr = resolve(g).map_err(|e| bad_address(g, &e))?;
        targets.push(Target {
            label: g.clone(),
            addr,
        });
    }
    Ok(targets)
}

/// Resolves peers as given (trimmed, empty ones skipped, each address once).
pub fn given_targets(peers: &[String], ip: &[String]) -> Result<Vec<Target>> {
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
pub fn add_book_targets(dir: &Path, targets: &mut Vec<Target>) -> Result<usize> {
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

/// The peer book as a [`PeerPolicy`]: re-read when another process changed it.
pub struct BookPolicy {
    dir: PathBuf,
    book: Mutex<PeerBook>,
}

impl BookPolicy {
    /// Reads the peer book of the store folder `dir`.
    pub fn load(dir: &Path) -> Result<BookPolicy> {
        let book = PeerBook::load(dir).context("cannot read the peer book")?;
        Ok(BookPolicy {
            dir: dir.to_owned(),
            book: Mutex::new(book),
        })
    }

    /// The transport's allow-list: `None` when every device of the share is allowed.
    pub fn allowed_peers(&self) -> Option<Vec<[u8; 32]>> {
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allowed_peers()
    }

    /// Devices reached at these addresses are never aged out of the book.
    pub fn set_named_addrs(&self, addrs: Vec<SocketAddr>) {
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_named_addrs(addrs);
    }
}

impl PeerPolicy for BookPolicy {
    fn allows(&self, device: &[u8; 32]) -> bool {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        // A book that cannot be re-read keeps its last view (and the error shows elsewhere).
        let _ = book.refresh(&self.dir);
        book.allows(device)
    }

    fn seen(&self, device: &[u8; 32], addr: SocketAddr) {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = book.record_seen(&self.dir, *device, addr) {
            crate::log_line!(
                "left: warning: cannot record peer {}: {e}",
                DeviceId(*device)
            );
        }
    }
}

/// The rdt endpoint settings of this store: device key, share key, allow-list, encryption.
pub fn endpoint_config(
    identity: &Identity,
    share_key: [u8; 32],
    allowed: Option<Vec<[u8; 32]>>,
    encryption: bool,
) -> EndpointConfig {
    let seed = crate::net::os_seed();
    let mut cfg = EndpointConfig::with_seed(identity.secret().to_bytes(), share_key, seed);
    cfg.allowed_peers = allowed;
    cfg.transport.encryption = encryption;
    cfg
}

/// Binds an endpoint, with the impairment layer when `LEFT_IMPAIR` asks for it.
pub fn bind(addr: SocketAddr, cfg: EndpointConfig) -> Result<Endpoint> {
    let socket = SocketConfig::from_env().map_err(|e| io_error("bad LEFT_IMPAIR", e))?;
    Endpoint::bind(addr, &socket, cfg).map_err(|e| io_error(format!("cannot listen on {addr}"), e))
}

/// One client endpoint per address family the targets use, with this device's key, the share key,
/// the peer book's allow-list and the encryption setting. Must run inside the tokio runtime.
pub fn bind_endpoints(
    targets: &[Target],
    identity: &Identity,
    share_key: [u8; 32],
    allowed: Option<Vec<[u8; 32]>>,
    encryption: bool,
) -> Result<Endpoints> {
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

/// A multi-threaded tokio runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| io_error("cannot start the async runtime", e))
}

/// Checks a `--timeout` in seconds: positive, finite, below 1e9.
pub fn check_timeout(timeout: f64) -> Result<()> {
    if !(timeout.is_finite() && timeout > 0.0 && timeout < 1e9) {
        return Err(Error::Usage {
            message: "--timeout must be a positive number of seconds".into(),
            hint: None,
        });
    }
    Ok(())
}

/// What a one-shot command (sync, repair, restore from a peer) needs to talk to peers, read
/// from the store folder: keys, the peer book's allow-list, the encryption setting, and the
/// fetch settings for a budget of `timeout` seconds without progress.
pub struct Net {
    /// This device.
    pub identity: Identity,
    /// The share key.
    pub share_key: [u8; 32],
    /// The transport's allow-list.
    pub allowed: Option<Vec<[u8; 32]>>,
    /// Encrypt packets.
    pub encryption: bool,
    /// How to fetch.
    pub fcfg: FetchConfig,
}

impl Net {
    /// Reads the keys and the peer book of the store folder `dir`.
    pub fn load(dir: &Path, store: &Store, encryption: bool, timeout: f64) -> Result<Net> {
        let identity = Identity::load(dir).context("cannot read the device key")?;
        let share_key = identity::load_share_key(dir).context("cannot read the share key")?;
        let allowed = PeerBook::load(dir)
            .context("cannot read the peer book")?
            .allowed_peers();
        Ok(Net::new(
            identity, share_key, allowed, store, encryption, timeout,
        ))
    }

    /// The settings from keys already read.
    pub fn new(
        identity: Identity,
        share_key: [u8; 32],
        allowed: Option<Vec<[u8; 32]>>,
        store: &Store,
        encryption: bool,
        timeout: f64,
    ) -> Net {
        let mut pull = PullConfig::for_store(store);
        // A peer silent this long is dropped (and retried while the timeout budget lasts).
        pull.stall_timeout = Duration::from_secs(10).min(Duration::from_secs_f64(timeout));
        let hello = session::hello(
            ShareId::from_key(&share_key),
            identity.device_id().0,
            encryption,
        );
        let mut fcfg = FetchConfig::new(hello, pull);
        fcfg.timeout = Duration::from_secs_f64(timeout);
        fcfg.connect_timeout = fcfg.connect_timeout.min(fcfg.timeout);
        Net {
            identity,
            share_key,
            allowed,
            encryption,
            fcfg,
        }
    }

    /// The client endpoints for `targets` (inside the runtime).
    pub fn endpoints(&self, targets: &[Target]) -> Result<Endpoints> {
        bind_endpoints(
            targets,
            &self.identity,
            self.share_key,
            self.allowed.clone(),
            self.encryption,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sync_keeps_peers_as_given() {
        let t = given_peers(
            &["127.0.0.1:5".into()],
            &[" 127.0.0.1:5 ".into(), "".into()],
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert!(given_peers(&[" ".into()], &[]).is_err());
    }
}
