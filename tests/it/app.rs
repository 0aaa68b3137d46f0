//! The use cases of `left::app` called as a library, without the binary (the binary only sets
//! the shares up): the daemon serving and stopping, one-shot sync, restore from a peer,
//! integrate, repair, and the automatic loop converging.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use left::app::daemon::{self, DaemonOptions, Event as DaemonEvent};
use left::app::decide::Decision;
use left::app::integrate::{integrate, IntegrateOptions};
use left::app::repair::{self, Repair, RepairOptions};
use left::app::restore::{self, RestoreOptions, Wanted};
use left::app::sync::{self, Outcome, SyncOptions};
use left::app::{AgentConfig, Meter, Target};
use left_store::{NoProgress, Progress, Store};

use crate::util::{assert_same_tree, random_bytes, wait_for, Share};

/// A daemon running in this process on 127.0.0.1, stopped on drop.
struct Daemon {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<left::app::Result<()>>>,
    /// The automatic loop's events, as `{:?}`.
    auto_events: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Serves `share` (its store opened here); `peers`: sync automatically with them.
    fn start(share: &Share, peers: Vec<Target>, automatic: bool) -> Daemon {
        let store = Store::open(&share.store).expect("open the store");
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = DaemonOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            encryption: true,
            targets: peers,
            automatic,
            agent: AgentConfig {
                settle: Duration::from_millis(100),
                max_delay: Duration::from_secs(1),
                rescan: Duration::from_secs(60),
                exchange_interval: Duration::from_secs(1),
                min_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(500),
            },
            watch: false,
            fsync: false,
        };
        let (dir, root) = (share.store.clone(), share.root.clone());
        let addr_tx = std::sync::Mutex::new(addr_tx);
        let auto_events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let events = auto_events.clone();
        let thread = thread::spawn(move || {
            let on_event: daemon::OnEvent = std::sync::Arc::new(move |e: DaemonEvent<'_>| {
                match e {
                    DaemonEvent::Listening { addr, .. } => {
                        let _ = addr_tx.lock().unwrap().send(addr);
                    }
                    DaemonEvent::Auto(e) => events.lock().unwrap().push(format!("{e:?}")),
                    _ => {}
                }
                Ok(())
            });
            daemon::run(&dir, store, &root, opts, on_event, async move {
                let _ = stop_rx.await;
            })
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the daemon reports where it listens");
        Daemon {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
            auto_events,
        }
    }

    fn target(&self) -> Target {
        Target {
            label: self.addr.to_string(),
            addr: self.addr,
        }
    }

    /// Stops it and expects a clean end.
    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let r = self.thread.take().unwrap().join().expect("daemon thread");
        r.expect("the daemon stops cleanly");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn no_meter() -> Box<dyn Meter> {
    Box::new(())
}

fn populated() -> Share {
    let a = Share::new();
    a.write("a.txt", b"alpha\n");
    a.write("sub/b.txt", b"bravo\n");
    a.write("big.bin", &random_bytes(7, 600_000));
    a.add(&[]);
    a
}

fn one_shot_sync(b: &Share, target: Target) -> Box<sync::Synced> {
    let store = Store::open(&b.store).expect("open B");
    let opts = SyncOptions {
        targets: vec![target],
        encryption: true,
        fsync: false,
        timeout: 20.0,
        yes: false,
    };
    let mut events = Vec::new();
    let outcome = sync::run(
        &b.store,
        store,
        &b.root,
        &opts,
        &NoProgress,
        &no_meter,
        &mut |e| events.push(format!("{e:?}")),
    )
    .expect("sync runs");
    match outcome {
        Outcome::Synced(s) => s,
        Outcome::Refused(r) => panic!("refused: {r:?}; events {events:?}"),
    }
}

#[test]
fn daemon_serves_a_one_shot_sync_and_stops() {
    let a = populated();
    let b = a.join();
    let daemon = Daemon::start(&a, Vec::new(), false);
    let synced = one_shot_sync(&b, daemon.target());
    assert!(
        matches!(synced.decision, Decision::Checkout(_)),
        "{:?}",
        synced.decision
    );
    assert!(synced.checkout.as_ref().unwrap().files_written >= 3);
    assert!(synced.fetch.stats.chunks_fetched > 0);
    assert_eq!(synced.head, synced.fetched_head());
    assert!(!synced.diverged);
    daemon.stop();
    assert_same_tree(&a.root, &b.root);
    // Nothing new: a second sync is up to date.
    let daemon = Daemon::start(&a, Vec::new(), false);
    let again = one_shot_sync(&b, daemon.target());
    assert_eq!(again.decision, Decision::UpToDate);
    assert!(again.checkout.is_none());
    daemon.stop();
}

#[test]
fn restore_from_a_peer_then_integrate_checks_it_out() {
    let a = populated();
    let b = a.join();
    let daemon = Daemon::start(&a, Vec::new(), false);
    let store = std::sync::Arc::new(Store::open(&b.store).unwrap());
    assert_eq!(store.head().unwrap(), None);
    let opts = RestoreOptions {
        target: daemon.target(),
        encryption: true,
        timeout: 20.0,
    };
    // Only sub/ first: its folder nodes and b.txt, not big.bin.
    let (snapshot, fetched) = restore::run(
        &b.store,
        &store,
        &opts,
        Wanted::PeersHead,
        Some(Path::new("sub")),
        &no_meter,
    )
    .expect("restore fetches sub/");
    assert!(fetched.nodes > 0, "{fetched:?}");
    assert!(fetched.bytes < 600_000, "{fetched:?}");
    // Then the whole snapshot.
    let (again, whole) = restore::run(
        &b.store,
        &store,
        &opts,
        Wanted::Known(snapshot),
        None,
        &no_meter,
    )
    .expect("restore fetches the rest");
    assert_eq!(again, snapshot);
    assert!(whole.bytes >= 600_000, "{whole:?}");
    daemon.stop();
    // Nothing was checked out: the folder is empty but for the store.
    assert!(!b.root.join("a.txt").exists());
    // The subtree pulls left the snapshot whole: its mark can be set.
    assert!(store.mark_complete(snapshot).unwrap());
    // Integrate brings the complete head into the folder (a fast-forward from nothing).
    let ig = integrate(
        &store,
        &b.root,
        &[snapshot],
        &IntegrateOptions {
            device: [9; 32],
            ..Default::default()
        },
        &NoProgress,
    )
    .expect("integrate");
    assert!(ig.moved(), "{ig:?}");
    assert_eq!(ig.after, Some(snapshot));
    assert!(ig.errors.is_empty() && ig.need_trees.is_empty(), "{ig:?}");
    drop(store);
    assert_same_tree(&a.root, &b.root);
}

#[test]
fn repair_fetches_a_deleted_chunk_from_a_peer() {
    let a = populated();
    let b = a.join();
    let daemon = Daemon::start(&a, Vec::new(), false);
    one_shot_sync(&b, daemon.target());
    {
        let store = Store::open(&b.store).unwrap();
        let head = store.head().unwrap().unwrap();
        let chunks = store.debug_file_chunks(head, Path::new("big.bin")).unwrap();
        store.debug_delete_chunk(chunks[1]).unwrap();
    }
    let opts = RepairOptions {
        targets: vec![daemon.target()],
        encryption: true,
        timeout: 20.0,
    };
    let progress = || Box::new(NoProgress) as Box<dyn Progress>;
    let store = Store::open(&b.store).unwrap();
    let r = repair::run(&b.store, store, &opts, &progress, &no_meter).expect("repair runs");
    let Repair::Done(r) = r else {
        panic!("repair did nothing: {r:?}")
    };
    assert_eq!(r.before.problems.len(), 1, "{:?}", r.before.problems);
    assert_eq!(r.repaired.len(), 1);
    assert!(r.after.problems.is_empty(), "{:?}", r.after.problems);
    assert!(r.fetched.stats.chunks_fetched >= 1);
    // Clean now: a second repair finds nothing to do.
    let store = Store::open(&b.store).unwrap();
    let again = repair::run(&b.store, store, &opts, &progress, &no_meter).unwrap();
    assert!(matches!(again, Repair::Clean(_)), "{again:?}");
    daemon.stop();
}

#[test]
fn automatic_loop_converges_on_the_peers_head() {
    let a = populated();
    let b = a.join();
    let serving = Daemon::start(&a, Vec::new(), false);
    let auto = Daemon::start(&b, vec![serving.target()], true);
    let done = b.root.join("big.bin");
    wait_for(
        "B's automatic loop to check out A's head",
        Duration::from_secs(60),
        || std::fs::read(&done).is_ok_and(|d| d.len() == 600_000),
    );
    let label = serving.target().label;
    let events = auto.auto_events.clone();
    // The files are out before the exchange's report reaches the loop.
    wait_for(
        "the loop's report of the exchange",
        Duration::from_secs(30),
        || !events.lock().unwrap().is_empty(),
    );
    auto.stop();
    serving.stop();
    assert_same_tree(&a.root, &b.root);
    let (ha, hb) = (a.head(), b.head());
    assert_eq!(ha, hb);
    // The loop printed nothing: it told its caller, once, what it brought in and from whom.
    let events = events.lock().unwrap().clone();
    let want = format!(
        "Updated {{ merged: false, from: [{label:?}], now: Some({}), written: 3, removed: 0, kept: 0 }}",
        ha.clone().unwrap()
    );
    assert_eq!(events, vec![want]);
}
