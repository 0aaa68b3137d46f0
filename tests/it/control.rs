//! The commands beside a serving process: a control server runs in this test process (tokio runtime,
//! an open [`Store`] holding the lock, a [`StoreHandler`]) while the real `left` binary works on the
//! same store folder: `add` and `gc` go through the socket, `log`, `ls`, `restore`, `verify` open
//! the store read-only, `status` reports the server. A stale socket file confuses nothing.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use left::control::{self, Handler, Request, Response, StoreHandler};
use left::identity::Identity;
use left_store::Store;
use serde_json::{json, Value};

use crate::util::*;

/// A control server over an open store, run on its own tokio runtime until dropped (or stopped
/// with a `Stop` request).
struct Server {
    rt: tokio::runtime::Runtime,
    store: Arc<Store>,
    stop_tx: Arc<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    status_calls: Arc<AtomicUsize>,
}

impl Server {
    /// Opens the share's store (taking its lock) and serves it.
    fn start(share: &Share) -> Server {
        let store = Arc::new(Store::open(&share.store).expect("open store"));
        let device = Identity::load(&share.store)
            .expect("identity")
            .device_id()
            .0;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tx = Arc::new(tx);
        let status_calls = Arc::new(AtomicUsize::new(0));
        let calls = status_calls.clone();
        let stop = tx.clone();
        let handler = StoreHandler::new(
            store.clone(),
            share.root.clone(),
            device,
            Box::new(move || {
                calls.fetch_add(1, Ordering::Relaxed);
                json!({ "listening": "test", "connections": 0 })
            }),
            Box::new(move || {
                let _ = stop.send(true);
            }),
        );
        Server::run(share, store, Arc::new(handler), tx, rx, status_calls)
    }

    fn run(
        share: &Share,
        store: Arc<Store>,
        handler: Arc<dyn Handler>,
        stop_tx: Arc<tokio::sync::watch::Sender<bool>>,
        rx: tokio::sync::watch::Receiver<bool>,
        status_calls: Arc<AtomicUsize>,
    ) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = share.store.clone();
        let task = rt.spawn(async move { control::serve(&dir, handler, rx).await });
        let server = Server {
            rt,
            store,
            stop_tx,
            task: Some(task),
            status_calls,
        };
        wait_for("the control socket to answer", LIMIT, || {
            matches!(
                control::call(&share.store, &Request::Status),
                Ok(Some(Response::Status(_)))
            )
        });
        server
    }

    /// Waits for the serve task to end (after a Stop request or `stop`).
    fn join(&mut self) {
        if let Some(task) = self.task.take() {
            self.rt
                .block_on(task)
                .expect("serve task")
                .expect("serve result");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(task) = self.task.take() {
            let _ = self.rt.block_on(task);
        }
    }
}

const LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

fn head_of(store: &Store) -> Option<String> {
    store.head().expect("head").map(|h| h.to_string())
}

#[test]
fn add_and_gc_go_through_the_socket_and_reads_work_beside_it() {
    let share = Share::new();
    share.write("a.txt", b"first version\n");
    share.write("dir/b.bin", &random_bytes(7, 300_000));
    let mut server = Server::start(&share);

    // add: made by the serving process, printed as a local add prints it.
    let add = share.add(&["-m", "through the socket"]);
    let snap = add["snapshot"].as_str().expect("a snapshot").to_owned();
    assert_eq!(u(&add, "files"), 2, "{add}");
    assert_eq!(head_of(&server.store), Some(snap.clone()));
    let human = share.left(&["add"]).expect_code(0);
    assert!(
        human.out().starts_with("no changes, head stays "),
        "{}",
        human.out()
    );

    // add of one path, given relative to the current folder; paths outside are refused here.
    share.write("dir/c.txt", b"c");
    share.write("a.txt", b"not yet added\n");
    let one = run(left_in(&share.root.join("dir")).args(["--json", "add", "c.txt"]))
        .expect_code(0)
        .json();
    let second = one["snapshot"].as_str().expect("a snapshot").to_owned();
    assert_eq!(head_of(&server.store), Some(second.clone()));
    let outside = share.scratch("outside");
    let r = share
        .left(&["add", outside.to_str().unwrap()])
        .expect_code(1);
    assert!(r.stderr.contains("outside the share"), "{}", r.stderr);

    // Reads beside the server: log, ls, restore, verify on a read-only store.
    let log = share.json(&["log"], 0);
    let ids: Vec<&str> = log["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), snap.as_str()]);
    assert_eq!(log["snapshots"][1]["message"], "through the socket");
    let ls = share.json(&["ls", "head", "dir"], 0);
    let names: Vec<&str> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.bin", "c.txt"]);
    let target = share.scratch("restored");
    share
        .left(&["restore", &snap, "--to", target.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(
        fs::read(target.join("a.txt")).unwrap(),
        b"first version\n",
        "restored the first snapshot's a.txt"
    );
    assert_eq!(
        fs::read(target.join("dir/b.bin")).unwrap(),
        random_bytes(7, 300_000)
    );
    assert!(!target.join("dir/c.txt").exists());
    let target = share.scratch("restored-head");
    share
        .left(&["restore", "head", "--to", target.to_str().unwrap()])
        .expect_code(0);
    assert_eq!(fs::read(target.join("dir/c.txt")).unwrap(), b"c");
    assert_eq!(
        fs::read(target.join("a.txt")).unwrap(),
        b"first version\n",
        "a.txt was not given to the second add"
    );
    share.verify_clean();

    // status: the server answers, with its own status and the head.
    let before = server.status_calls.load(Ordering::Relaxed);
    let status = share.json(&["status"], 0);
    assert_eq!(status["serving"], Value::Bool(true), "{status}");
    assert_eq!(status["head"], Value::String(second.clone()), "{status}");
    assert_eq!(status["serve"]["listening"], "test", "{status}");
    assert!(status["peers"].is_array(), "{status}");
    assert_eq!(
        status["share_root"].as_str(),
        share.root.to_str(),
        "{status}"
    );
    assert!(server.status_calls.load(Ordering::Relaxed) > before);
    let human = share.left(&["status"]).expect_code(0);
    assert!(human.out().contains("serving on"), "{}", human.out());

    // gc through the socket: drop the first snapshot's tree, keep what the head needs.
    share.write("dir/b.bin", &random_bytes(8, 300_000));
    share.add(&[]);
    let gc = share.json(&["gc", "--keep-last", "1"], 0);
    assert!(u(&gc, "chunks_removed") > 0, "{gc}");
    let human = share.left(&["gc"]).expect_code(0);
    assert!(
        human.out().starts_with("gc: removed 0 chunks"),
        "{}",
        human.out()
    );
    share.verify_clean();

    // Stop through the socket: the server ends and removes its socket; the store is free again.
    assert_eq!(
        control::call(&share.store, &Request::Stop).unwrap(),
        Some(Response::Stopping)
    );
    server.join();
    assert!(!control::socket_path(&share.store).exists());
    drop(server);
    let status = share.json(&["status"], 0);
    assert_eq!(status["serving"], Value::Bool(false), "{status}");
    share.write("d.txt", b"d");
    let local = share.add(&[]);
    assert!(local["snapshot"].is_string(), "{local}");
}

#[test]
fn skipped_files_through_the_socket_exit_3_like_a_local_add() {
    if is_root() {
        eprintln!("skipped: root reads unreadable files");
        return;
    }
    let share = Share::new();
    share.write("ok.txt", b"ok");
    let locked = share.write("locked.txt", b"secret");
    fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let _server = Server::start(&share);
    let r = share.left(&["--json", "add"]).expect_code(3);
    let v = r.json();
    assert_eq!(v["skipped"][0]["path"], "locked.txt", "{v}");
    assert!(
        r.stderr.contains("left: skipped locked.txt"),
        "{}",
        r.stderr
    );
}

/// A handler that fails every request, as a store error would.
struct Failing;

impl Handler for Failing {
    fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status(json!({ "share_root": "/" })),
            _ => Response::Error {
                message: "cannot snapshot: disk on fire".into(),
                hint: Some("call the fire brigade".into()),
            },
        }
    }
}

#[test]
fn server_errors_print_their_message_and_hint() {
    let share = Share::new();
    let store = Arc::new(Store::open(&share.store).expect("open store"));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let _server = Server::run(
        &share,
        store,
        Arc::new(Failing),
        Arc::new(tx),
        rx,
        Arc::new(AtomicUsize::new(0)),
    );
    // The share root "/" makes every path of the share lie inside it.
    for args in [&["add"][..], &["gc"]] {
        let r = share.left(args).expect_code(1);
        assert_eq!(
            r.stderr, "left: cannot snapshot: disk on fire\nhint: call the fire brigade\n",
            "{args:?}"
        );
    }
}

/// Leaves a socket file at the control path with nobody listening, as a killed server does.
fn stale_socket(store: &Path) {
    drop(UnixListener::bind(control::socket_path(store)).expect("bind"));
    assert!(control::socket_path(store).exists());
}

#[test]
fn stale_socket_confuses_nothing() {
    let share = Share::new();
    stale_socket(&share.store);
    share.write("x", b"x");
    // Unlocked store: everything runs locally.
    let add = share.add(&[]);
    assert!(add["snapshot"].is_string(), "{add}");
    let status = share.json(&["status"], 0);
    assert_eq!(status["serving"], Value::Bool(false), "{status}");
    assert_eq!(status["head"], add["snapshot"], "{status}");

    // Locked by a process that does not serve: add keeps the lock error and its hint.
    let holder = Store::open(&share.store).expect("open store");
    let r = share.left(&["add"]).expect_code(1);
    assert!(r.stderr.contains("in use by pid"), "{}", r.stderr);
    assert!(
        r.stderr.contains("hint: another left command"),
        "{}",
        r.stderr
    );
    share.left(&["gc"]).expect_code(1);
    // Reads still work, read-only.
    assert_eq!(share.head(), add["snapshot"].as_str().map(str::to_owned));
    drop(holder);

    // A server replaces the stale socket and answers.
    let _server = Server::start(&share);
    share.write("y", b"y");
    let add = share.add(&[]);
    assert_eq!(u(&add, "files"), 2, "{add}");
    assert_eq!(share.json(&["status"], 0)["serving"], Value::Bool(true));
}
