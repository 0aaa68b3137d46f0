//! The local control socket of a running `left serve`.
//!
//! While `left serve` runs it holds the store's exclusive lock, so other `left` commands cannot
//! open the store for writing. Instead they talk to the serving process through a Unix socket in
//! the store folder, `<store_dir>/control.sock`:
//!
//! - one connection carries one [`Request`] and one [`Response`], each a single line of JSON;
//! - a line longer than [`MAX_LINE`] bytes is refused (an error, never a bigger allocation);
//! - the socket file has mode 0600 from the moment it appears (it is bound inside a private 0700
//!   folder and renamed into place), and the server also checks that the connecting process runs
//!   as the same user (`SO_PEERCRED`), so only the store's owner can drive it;
//! - a client that connects and sends nothing is dropped after [`REQUEST_TIMEOUT`].
//!
//! [`serve`] runs the accept loop on tokio and hands each request to a [`Handler`] on a blocking
//! thread (store work is synchronous). [`StoreHandler`] is the handler a serving process uses: it
//! runs `add` and `gc` against its open store and delegates `Status` and `Stop` to closures the
//! server provides. A gc runs through the server's [`Exclusive`] hook, which holds peers' object
//! requests off (they get `Working` and retry) while it deletes; an `add` runs beside them, as it
//! only adds objects and moves the head. [`call`] is the blocking client the command line uses;
//! it returns `Ok(None)` when nothing listens (no socket file, or a stale one left by a killed
//! server), so the caller can fall back to opening the store itself.
//!
//! Paths inside requests and replies travel as text when they are UTF-8 and as a byte array
//! otherwise ([`left_store::serde_path`]), so non-UTF-8 names survive the trip. The `Add` and `Gc`
//! replies are the store's own [`AddReport`] and [`GcReport`], so the command line prints a reply
//! exactly as it prints a local result.
//!
//! A socket path longer than `sun_path` allows (about 108 bytes) is reached through
//! `/proc/self/fd/N/control.sock`, N being a descriptor of the store folder.
#![warn(missing_docs)]

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use left_store::{AddOptions, AddReport, GcOptions, GcReport, NoProgress, NodeId, Store};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// File name of the control socket inside the store folder.
pub const SOCKET_FILE: &str = "control.sock";
/// Largest request or response line, in bytes (the newline excluded).
pub const MAX_LINE: usize = 16 << 20;
/// How long the server waits for a connected client's request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long either side waits to write its line, and a client waits for the answer to
/// `Status` or `Stop` (`Add` and `Gc` take as long as they take).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// `<store_dir>/control.sock`.
pub fn socket_path(store_dir: &Path) -> PathBuf {
    store_dir.join(SOCKET_FILE)
}

/// A request to the serving process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Snapshot the share (or only `paths`, relative to the share root; empty: everything).
    Add {
        /// Paths relative to the share root (no `..`, not absolute).
        #[serde(with = "left_store::serde_path::many")]
        paths: Vec<PathBuf>,
        /// Snapshot message.
        message: String,
        /// Ignore the scan cache.
        rehash: bool,
        /// Store what symlinks point to.
        follow_links: bool,
    },
    /// Collect garbage.
    Gc {
        /// Keep the trees of only the last N snapshots.
        keep_last: Option<usize>,
        /// Also keep the trees of snapshots at most this many seconds older than head.
        #[serde(default)]
        keep_within_secs: Option<u64>,
    },
    /// Drop the ref `peers/<device>` (a device forgotten or revoked): its last snapshot no
    /// longer keeps bytes alive, so the next gc frees what only it held.
    DropPeerRef {
        /// The device id, as `left id` prints it.
        device: String,
    },
    /// Decide on a snapshot the deletion guard holds (`left hold accept|reject ID`).
    Hold {
        /// The held head, a full id or a unique prefix.
        id: String,
        /// Accept (check it out); else reject (keep our files).
        accept: bool,
    },
    /// The server's status (a JSON object; see [`StoreHandler`] for the keys it always has).
    Status,
    /// Stop serving.
    Stop,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// What `Add` did.
    Add(AddReport),
    /// What `Gc` did.
    Gc(GcReport),
    /// What `DropPeerRef` did: the snapshot the ref named (`None`: there was no such ref).
    PeerRefDropped(Option<NodeId>),
    /// What `Hold` did: the head after, and the files the checkout wrote and removed.
    Decided {
        /// The head after.
        head: Option<NodeId>,
        /// Files written.
        files_written: u64,
        /// Files removed.
        files_removed: u64,
    },
    /// The server's status.
    Status(serde_json::Value),
    /// The server is stopping.
    Stopping,
    /// The request failed.
    Error {
        /// What failed, one line.
        message: String,
        /// What to do about it, if known.
        hint: Option<String>,
    },
}

/// What can go wrong on the client side of the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Connecting failed for another reason than "nobody listens".
    #[error("cannot connect to the control socket {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Sending or receiving failed (including a timeout).
    #[error("control socket I/O failed: {0}")]
    Io(#[source] io::Error),
    /// The server closed the connection without an answer.
    #[error("the serving process closed the control connection without answering")]
    Closed,
    /// A line was longer than [`MAX_LINE`].
    #[error("control message longer than {MAX_LINE} bytes")]
    TooLong,
    /// The answer did not parse.
    #[error("malformed answer on the control socket: {0}")]
    Malformed(String),
}

/// What a serving process does with requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request (called on a blocking thread).
    fn handle(&self, req: Request) -> Response;
}

/// Serves the control socket until `shutdown` turns true (or its sender is dropped).
///
/// The caller must hold the store's lock (it has the store open), so no other server of the same
/// store can start meanwhile. A socket file left by a killed server is replaced; a socket that
/// still answers is an `AddrInUse` error. Each request runs on a blocking thread; at shutdown the
/// socket file is removed first (new clients see no server), then requests in flight finish.
pub async fn serve(
    store_dir: &Path,
    handler: Arc<dyn Handler>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    if *shutdown.borrow() {
        return Ok(());
    }
    let (std_listener, guard) = bind(store_dir)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tasks.spawn(connection(stream, handler.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: say so and back off instead of spinning.
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    drop(guard);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Removes the socket file on drop, if it is still the one this server bound.
struct SocketGuard {
    path: PathBuf,
    ino: u64,
    _dir: Option<File>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A path for the socket that fits `sun_path`: the real one, or one through `/proc/self/fd`.
fn reachable(store_dir: &Path, name: &str) -> io::Result<(PathBuf, Option<File>)> {
    let direct = store_dir.join(name);
    if direct.as_os_str().len() < 100 {
        return Ok((direct, None));
    }
    let dir = File::open(store_dir)?;
    let via = PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()));
    Ok((via, Some(dir)))
}

fn connect(store_dir: &Path) -> io::Result<StdUnixStream> {
    let (path, _dir) = reachable(store_dir, SOCKET_FILE)?;
    StdUnixStream::connect(path)
}

/// Binds the socket inside a private folder, sets mode 0600, renames it into place.
fn bind(store_dir: &Path) -> io::Result<(StdUnixListener, SocketGuard)> {
    let path = socket_path(store_dir);
    match connect(store_dir) {
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another process answers on {}", path.display()),
            ))
        }
        Err(e) if is_absent(&e) => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
    let tmp_name = format!(".cs{}", std::process::id());
    let tmp_dir = store_dir.join(&tmp_name);
    let _ = fs::remove_dir_all(&tmp_dir);
    fs::DirBuilder::new().mode(0o700).create(&tmp_dir)?;
    let result = (|| {
        let (tmp_sock, _dir) = reachable(store_dir, &format!("{tmp_name}/s"))?;
        let listener = StdUnixListener::bind(&tmp_sock)?;
        fs::set_permissions(&tmp_sock, fs::Permissions::from_mode(0o600))?;
        fs::rename(tmp_dir.join("s"), &path)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&tmp_dir);
    let listener = result.map_err(|e: io::Error| {
        io::Error::new(e.kind(), format!("cannot bind {}: {e}", path.display()))
    })?;
    let ino = fs::symlink_metadata(&path)?.ino();
    let dir = reachable(store_dir, SOCKET_FILE)?.1;
    Ok((
        listener,
        SocketGuard {
            path,
            ino,
            _dir: dir,
        },
    ))
}

/// Whether a connect error means "no server there" (no file, or a stale socket).
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// One connection: read the request, run it, write the answer.
async fn connection(stream: tokio::net::UnixStream, handler: Arc<dyn Handler>) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me => {}
        _ => return,
    }
    let (rd, mut wr) = stream.into_split();
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_line_async(rd)).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) | Err(_) => return,
        Ok(Err(e)) => {
            let _ = write_response(&mut wr, &error(e.to_string(), None)).await;
            return;
        }
    };
    let response = match serde_json::from_slice::<Request>(&line) {
        Ok(req) => tokio::task::spawn_blocking(move || handler.handle(req))
            .await
            .unwrap_or_else(|_| error("the request handler failed (panicked)".into(), None)),
        Err(e) => error(format!("malformed control request: {e}"), None),
    };
    let _ = write_response(&mut wr, &response).await;
}

fn error(message: String, hint: Option<String>) -> Response {
    Response::Error { message, hint }
}

async fn write_response(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(io::Error::other)?;
    if bytes.len() > MAX_LINE {
        bytes = serde_json::to_vec(&error(
            format!("the answer is larger than {MAX_LINE} bytes"),
            None,
        ))
        .map_err(io::Error::other)?;
    }
    bytes.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, async {
        wr.write_all(&bytes).await?;
        wr.shutdown().await
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` on a connection closed before any byte.
async fn read_line_async(rd: tokio::net::unix::OwnedReadHalf) -> io::Result<Option<Vec<u8>>> {
    let mut reader = tokio::io::BufReader::new(rd.take(MAX_LINE as u64 + 1));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    finish_line(line)
}

fn finish_line(mut line: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control message longer than {MAX_LINE} bytes"),
        ));
    } else if line.is_empty() {
        return Ok(None);
    }
    Ok(Some(line))
}

/// Sends `req` to the process serving `store_dir` and waits for its answer. `Ok(None)` when no
/// server listens there (no socket file, or a stale one).
pub fn call(store_dir: &Path, req: &Request) -> Result<Option<Response>, ControlError> {
    let stream = match connect(store_dir) {
        Ok(s) => s,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(source) => {
            return Err(ControlError::Connect {
                path: socket_path(store_dir),
                source,
            })
        }
    };
    let answer_timeout = match req {
        Request::Status | Request::Stop | Request::DropPeerRef { .. } => Some(IO_TIMEOUT),
        Request::Add { .. } | Request::Gc { .. } | Request::Hold { .. } => None,
    };
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .and_then(|_| stream.set_read_timeout(answer_timeout))
        .map_err(ControlError::Io)?;
    let mut bytes = serde_json::to_vec(req).map_err(|e| ControlError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_LINE {
        return Err(ControlError::TooLong);
    }
    bytes.push(b'\n');
    (&stream).write_all(&bytes).map_err(ControlError::Io)?;
    let mut reader = BufReader::new((&stream).take(MAX_LINE as u64 + 1));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(ControlError::Io)?;
    let line = match finish_line(line) {
        Ok(Some(line)) => line,
        Ok(None) => return Err(ControlError::Closed),
        Err(_) => return Err(ControlError::TooLong),
    };
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| ControlError::Malformed(e.to_string()))
}

/// The [`Handler`] of a serving process: `Add` and `Gc` run against its open store (one at a
/// time), `Status` and `Stop` call the server's closures.
///
/// The `Status` answer is the server's object with these keys added when it lacks them: `head`
/// (hex id or null), `share_root`, `unwritten` (the paths checkouts could not write) and
/// `device` (this device's id). The command line relies on
/// `share_root` to turn the paths given to `left add` into share-relative ones.
pub struct StoreHandler {
    /// The open store.
    pub store: Arc<Store>,
    /// The share folder (canonical).
    pub share_root: PathBuf,
    /// This device's public key, recorded in snapshots made through the socket.
    pub device: [u8; 32],
    /// The server's status object.
    pub status: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Asks the server to stop (it should then turn `serve`'s shutdown to true).
    pub stop: Box<dyn Fn() + Send + Sync>,
    /// Serialises store-changing requests (shared with automatic sync's tasks, see
    /// [`StoreHandler::with_folder_lock`]).
    ops: Arc<Mutex<()>>,
    /// Runs gc while peers are told the store is busy (see [`StoreHandler::with_exclusive`]).
    exclusive: Option<Exclusive>,
    /// Called after an `add` that made a snapshot (automatic sync then tells the peers).
    on_snapshot: Option<Box<dyn Fn() + Send + Sync>>,
    /// Decides on a held snapshot (see [`StoreHandler::with_hold`]).
    on_hold: Option<HoldFn>,
}

/// The serving process's answer to `Hold { id, accept }` (it runs under the folder lock).
pub type HoldFn = Box<dyn Fn(&str, bool) -> Response + Send + Sync>;

/// Runs the work it is given while peers' object requests are held off (the serving process
/// passes [`crate::session::Server::busy_while`]).
pub type Exclusive = Box<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

impl StoreHandler {
    /// A handler for `store` whose share is `share_root`.
    pub fn new(
        store: Arc<Store>,
        share_root: PathBuf,
        device: [u8; 32],
        status: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
        stop: Box<dyn Fn() + Send + Sync>,
    ) -> StoreHandler {
        StoreHandler {
            store,
            share_root,
            device,
            status,
            stop,
            ops: Arc::new(Mutex::new(())),
            exclusive: None,
            on_snapshot: None,
            on_hold: None,
        }
    }

    /// Uses `lock` to serialise `add` and `gc` with other work on the share folder (automatic
    /// sync scans and checks out under the same lock), so two snapshots never race for the head.
    pub fn with_folder_lock(mut self, lock: Arc<Mutex<()>>) -> StoreHandler {
        self.ops = lock;
        self
    }

    /// Answers `Hold` requests with `f`, called under the folder lock.
    pub fn with_hold(mut self, f: HoldFn) -> StoreHandler {
        self.on_hold = Some(f);
        self
    }

    /// Calls `f` after each `add` that made a snapshot.
    pub fn on_snapshot(mut self, f: Box<dyn Fn() + Send + Sync>) -> StoreHandler {
        self.on_snapshot = Some(f);
        self
    }

    /// Runs each `gc` through `exclusive`, so peers get `Working` (and retry) instead of
    /// objects it may be deleting. `add` runs beside the peers: it only adds objects and moves
    /// the head, and snapshots never change, so a pull in progress still finds all it wants.
    pub fn with_exclusive(mut self, exclusive: Exclusive) -> StoreHandler {
        self.exclusive = Some(exclusive);
        self
    }

    fn add(&self, paths: Vec<PathBuf>, opts: AddOptions) -> Response {
        for p in &paths {
            if !p.components().all(|c| matches!(c, Component::Normal(_))) {
                return error(
                    format!(
                        "{} is not a plain path relative to the share root",
                        p.display()
                    ),
                    None,
                );
            }
        }
        let _one = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        match self.store.add(&self.share_root, &paths, &opts, &NoProgress) {
            Ok(report) => {
                if report.snapshot.is_some() {
                    if let Some(f) = &self.on_snapshot {
                        f();
                    }
                }
                Response::Add(report)
            }
            Err(e) => store_error(
                &format!("cannot snapshot {}", self.share_root.display()),
                &e,
            ),
        }
    }
}

impl StoreHandler {
    fn run(&self, req: Request) -> Response {
        match req {
            Request::Add {
                paths,
                message,
                rehash,
                follow_links,
            } => self.add(
                paths,
                AddOptions {
                    follow_links,
                    rehash,
                    message,
                    device: self.device,
                    settle_ns: 0,
                    time_ns: None,
                },
            ),
            Request::Gc {
                keep_last,
                keep_within_secs,
            } => {
                let _one = self.ops.lock().unwrap_or_else(|e| e.into_inner());
                let mut result = None;
                let within = keep_within_secs.map(std::time::Duration::from_secs);
                let mut gc = || {
                    // Revoked devices' refs go first, so their last snapshots pin nothing.
                    let book = crate::peers::PeerBook::load(self.store.dir()).ok();
                    let dropped = match &book {
                        Some(b) => crate::peers::drop_revoked_refs(b, &self.store),
                        None => Ok(Vec::new()),
                    };
                    result = Some(dropped.and_then(|dropped| {
                        let mut r = self.store.gc_keep_within(
                            &GcOptions { keep_last },
                            within,
                            &NoProgress,
                        )?;
                        r.dropped_refs = dropped;
                        Ok(r)
                    }))
                };
                match &self.exclusive {
                    Some(exclusive) => exclusive(&mut gc),
                    None => gc(),
                }
                match result {
                    Some(Ok(report)) => Response::Gc(report),
                    Some(Err(e)) => store_error("cannot collect garbage", &e),
                    None => error("gc did not run".into(), None),
                }
            }
            Request::DropPeerRef { device } => match self.store.drop_peer_ref(&device) {
                Ok(snapshot) => Response::PeerRefDropped(snapshot),
                Err(e) => store_error(&format!("cannot drop the ref peers/{device}"), &e),
            },
            Request::Status => {
                let mut value = (self.status)();
                if let serde_json::Value::Object(map) = &mut value {
                    if !map.contains_key("head") {
                        let head = match self.store.head() {
                            Ok(h) => serde_json::json!(h.map(|h| h.to_string())),
                            Err(e) => serde_json::json!({ "error": e.to_string() }),
                        };
                        map.insert("head".into(), head);
                    }
                    map.entry("share_root").or_insert_with(|| {
                        serde_json::Value::String(self.share_root.to_string_lossy().into_owned())
                    });
                    // Paths checkouts could not write (tried again at every scan).
                    map.entry("unwritten").or_insert_with(|| {
                        let paths = self.store.unwritten_paths().unwrap_or_default();
                        serde_json::json!(paths
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>())
                    });
                    map.entry("device").or_insert_with(|| {
                        serde_json::Value::String(
                            crate::identity::DeviceId(self.device).to_string(),
                        )
                    });
                }
                Response::Status(value)
            }
            Request::Hold { id, accept } => match &self.on_hold {
                Some(f) => {
                    let _one = self.ops.lock().unwrap_or_else(|e| e.into_inner());
                    let r = f(&id, accept);
                    if matches!(r, Response::Decided { .. }) {
                        if let Some(f) = &self.on_snapshot {
                            f();
                        }
                    }
                    r
                }
                None => error("this server cannot decide on held snapshots".into(), None),
            },
            Request::Stop => {
                (self.stop)();
                Response::Stopping
            }
        }
    }
}

impl Handler for StoreHandler {
    fn handle(&self, req: Request) -> Response {
        let heavy = matches!(
            req,
            Request::Add { .. } | Request::Gc { .. } | Request::Hold { .. }
        );
        let response = self.run(req);
        if heavy {
            // The store raises glibc's trim threshold (db.rs) so chunk buffers are not mapped
            // and unmapped per chunk; a long-running serve hands the memory of a finished add
            // or gc back here instead of keeping it as its new high-water mark.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
        response
    }
}

fn store_error(context: &str, e: &left_store::Error) -> Response {
    error(format!("{context}: {e}"), store_error_hint(e))
}

/// The hint the command line shows under a store error, for the errors a serving process can
/// report too (so both say the same).
pub fn store_error_hint(e: &left_store::Error) -> Option<String> {
    match e {
        left_store::Error::DiskFull { .. } => Some(
            "free some disk space and run the command again; the previous snapshot is intact"
                .into(),
        ),
        left_store::Error::Corrupt { .. } => {
            Some("run `left verify` to list every damaged object and the paths using it".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use left_store::Skipped;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    struct Echo;

    impl Handler for Echo {
        fn handle(&self, req: Request) -> Response {
            match req {
                Request::Status => Response::Status(serde_json::json!({ "ok": true })),
                Request::Add { paths, .. } => Response::Add(AddReport {
                    files: paths.len() as u64,
                    skipped: paths
                        .into_iter()
                        .map(|path| Skipped {
                            path,
                            reason: "echo".into(),
                        })
                        .collect(),
                    ..AddReport::default()
                }),
                _ => error("no".into(), Some("hint".into())),
            }
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn wait_up(dir: &Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = call(dir, &Request::Status) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "control server did not come up"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn round_trip_raw_paths_errors_and_shutdown() {
        let rt = runtime();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(call(dir, &Request::Status).unwrap().is_none());
        let (tx, task) = {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let d = dir.to_owned();
            let task = rt.spawn(async move { serve(&d, Arc::new(Echo), rx).await });
            (tx, task)
        };
        wait_up(dir);
        let mode = fs::symlink_metadata(socket_path(dir)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        let raw = PathBuf::from(OsString::from_vec(b"caf\xe9".to_vec()));
        let req = Request::Add {
            paths: vec![PathBuf::from("a/b"), raw.clone()],
            message: "m".into(),
            rehash: false,
            follow_links: false,
        };
        match call(dir, &req).unwrap().unwrap() {
            Response::Add(r) => {
                assert_eq!(r.files, 2);
                assert_eq!(r.skipped[0].path, PathBuf::from("a/b"));
                assert_eq!(r.skipped[1].path, raw);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            call(
                dir,
                &Request::Gc {
                    keep_last: None,
                    keep_within_secs: None,
                },
            )
            .unwrap()
            .unwrap(),
            error("no".into(), Some("hint".into()))
        );
        // A second server on the same folder is refused while the first answers.
        let (_tx2, rx2) = tokio::sync::watch::channel(false);
        let err = rt.block_on(serve(dir, Arc::new(Echo), rx2)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        // Garbage and an oversize line get errors, not a crash.
        let mut s = StdUnixStream::connect(socket_path(dir)).unwrap();
        s.write_all(b"{nonsense\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("malformed control request"), "{answer}");
        let mut s = StdUnixStream::connect(socket_path(dir)).unwrap();
        let big = vec![b'x'; MAX_LINE + 10];
        let _ = s.write_all(&big);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.contains("longer than"), "{answer}");
        tx.send(true).unwrap();
        rt.block_on(task).unwrap().unwrap();
        assert!(!socket_path(dir).exists(), "socket removed on exit");
        assert!(call(dir, &Request::Status).unwrap().is_none());
    }

    #[test]
    fn stale_socket_is_replaced_and_long_paths_work() {
        let rt = runtime();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("x".repeat(120));
        fs::create_dir(&dir).unwrap();
        assert!(socket_path(&dir).as_os_str().len() > 108);
        // A socket file nobody listens on, as a killed server leaves it.
        {
            let (p, _d) = reachable(&dir, SOCKET_FILE).unwrap();
            drop(StdUnixListener::bind(p).unwrap());
        }
        assert!(socket_path(&dir).exists());
        assert!(call(&dir, &Request::Status).unwrap().is_none());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let d = dir.clone();
        let task = rt.spawn(async move { serve(&d, Arc::new(Echo), rx).await });
        wait_up(&dir);
        assert_eq!(
            call(&dir, &Request::Status).unwrap().unwrap(),
            Response::Status(serde_json::json!({ "ok": true }))
        );
        drop(tx);
        rt.block_on(task).unwrap().unwrap();
        assert!(!socket_path(&dir).exists());
    }

    #[test]
    fn wire_forms_are_stable() {
        let req = Request::Gc {
            keep_last: Some(3),
            keep_within_secs: Some(60),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"Gc":{"keep_last":3,"keep_within_secs":60}}"#
        );
        // A request from an older client (no keep_within_secs) still reads.
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"Gc":{"keep_last":3}}"#).unwrap(),
            Request::Gc {
                keep_last: Some(3),
                keep_within_secs: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#""Status""#
        );
        let p = Skipped {
            path: PathBuf::from(OsString::from_vec(vec![0xff, b'a'])),
            reason: "r".into(),
        };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"path":[255,97],"reason":"r"}"#);
        assert_eq!(serde_json::from_str::<Skipped>(&text).unwrap(), p);
    }
}
