//! The [`Store`] handle: creating, opening and locking a store, its config, and the read side of
//! trees (`dir_entries` and the checked folder walk, `snapshot_root`, `entry_at`, `ls`, the chunks
//! of a file, `disk_usage`), with the keys and path helpers the other modules share.
//!
//! Not here: refs and history (`head`, `set_ref`, `resolve`, `log`, `is_ancestor`) are in
//! [`crate::refs`]; object access for sync (`has_many`, `missing`, `diff`, `get_*`/`put_*`,
//! arrivals, completeness) in [`crate::objects`]; test hooks in [`crate::testing`]; `add` in
//! [`crate::add`], `restore` in [`crate::restore`], `verify` and repair in [`crate::maint`], `gc`
//! in [`crate::gc`]. Every method takes `&self`; a store-wide read/write lock keeps `gc` from
//! running while an `add` or a `put_*` is writing objects it has not referenced yet.

use crate::chunker;
use crate::db::{cf, Batch, Db, FORMAT_VERSION};
use crate::node::{self, Content, DirEntry, DirNode, Node, Target};
use crate::{ChunkId, EntryKind, Error, Hash, LsEntry, NodeId, Result, StoreConfig};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::RwLock;

/// An object id: a chunk or a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectId {
    /// A chunk.
    Chunk(ChunkId),
    /// A node.
    Node(NodeId),
}

/// An open store (holds the exclusive lock until dropped).
pub struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) cfg: StoreConfig,
    pub(crate) db: Db,
    /// The exclusive lock (`None` for a read-only handle).
    _lock: Option<File>,
    /// Held for reading by writers of objects (add, put), for writing by gc.
    pub(crate) op: RwLock<()>,
    /// Test hook: the boot id checkout records instead of the kernel's.
    pub(crate) boot_override: std::sync::Mutex<Option<String>>,
    /// Releases the files checkouts replaced, off their thread (see [`Store::wait_released`]).
    pub(crate) releaser: std::sync::Mutex<Option<crate::release::Releaser>>,
}

/// Mode of the store folder: only its owner may enter it.
pub const STORE_MODE: u32 = 0o700;

/// A store folder that others may enter or read (made by an older version, or chmod-ed) is set
/// back to [`STORE_MODE`], with a warning on stderr. Best effort: a folder we do not own (a
/// read-only view of another user's store) is left as it is.
fn repair_mode(dir: &Path) {
    let Ok(m) = fs::metadata(dir) else { return };
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    match fs::set_permissions(dir, fs::Permissions::from_mode(STORE_MODE)) {
        Ok(()) => eprintln!(
            "left: warning: the store folder {} was readable by other users (mode {mode:o}); \
             set it to {STORE_MODE:o}",
            dir.display()
        ),
        Err(e) => eprintln!(
            "left: warning: the store folder {} is readable by other users (mode {mode:o}) and \
             cannot be changed ({e}); run `chmod 700 {}`",
            dir.display(),
            dir.display()
        ),
    }
}

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    if let Err(e) = rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        if e == rustix::io::Errno::WOULDBLOCK {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            return Err(Error::Locked {
                pid: s.trim().parse().unwrap_or(0),
            });
        }
        return Err(Error::io(&path, e.into()));
    }
    f.set_len(0).map_err(|e| Error::io(&path, e))?;
    write!(f, "{}", std::process::id()).map_err(|e| Error::io(&path, e))?;
    Ok(f)
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Creates a new store folder (must not exist or be empty). Does not create identity keys.
    pub fn create(store_dir: &Path, cfg: StoreConfig) -> Result<Store> {
        chunker::ChunkSizes {
            min: cfg.chunk_min,
            avg: cfg.chunk_avg,
            max: cfg.chunk_max,
        }
        .validate()?;
        if let Ok(mut rd) = fs::read_dir(store_dir) {
            if rd.next().is_some() {
                return Err(Error::AlreadyExists {
                    path: store_dir.to_path_buf(),
                });
            }
        }
        fs::create_dir_all(store_dir).map_err(|e| Error::io(store_dir, e))?;
        // Only this user may read the store: it holds every version of every file, whatever
        // their modes in the share (RocksDB's files live inside, so the folder is enough).
        fs::set_permissions(store_dir, fs::Permissions::from_mode(STORE_MODE))
            .map_err(|e| Error::io(store_dir, e))?;
        let lock = lock(store_dir)?;
        let db = Db::open(&store_dir.join("db"), true, cfg.memory_budget)?;
        let mut b = Batch::default();
        b.put(&db, cf::META, b"format", &FORMAT_VERSION.to_le_bytes());
        let json = serde_json::to_vec(&cfg).map_err(|e| Error::Invalid(format!("config: {e}")))?;
        b.put(&db, cf::META, b"config", &json);
        db.write(b.inner, true)?;
        Ok(Store {
            dir: store_dir.to_path_buf(),
            cfg,
            db,
            _lock: Some(lock),
            op: RwLock::new(()),
            boot_override: std::sync::Mutex::new(None),
            releaser: std::sync::Mutex::new(None),
        })
    }

    /// Opens an existing store, taking an exclusive lock (flock on a lock file holding the pid):
    /// a second opener gets [`Error::Locked`].
    pub fn open(store_dir: &Path) -> Result<Store> {
        Store::open_mode(store_dir, false)
    }

    /// Opens a store that another process holds (e.g. a running `left serve`) for reading only: no
    /// lock is taken; every write returns [`Error::ReadOnly`]. Reads see the data as of the open
    /// (RocksDB read-only mode, which works beside a live primary, BlobDB included).
    ///
    /// RocksDB's read-only open reads the manifest, then the write-ahead logs; a flush of the
    /// writer landing between the two (its tables not yet in the manifest read, its logs already
    /// deleted) gives a view without the newest writes, such as a head ref without its snapshot.
    /// Such a view is opened again (up to 20 times, the flush is short).
    pub fn open_read_only(store_dir: &Path) -> Result<Store> {
        let mut tries = 0u64;
        loop {
            tries += 1;
            match Store::open_mode(store_dir, true) {
                Ok(store) => {
                    let consistent = match store.head()? {
                        Some(h) => store.get_node(h)?.is_some(),
                        None => true,
                    };
                    if consistent || tries >= 20 {
                        return Ok(store);
                    }
                }
                // The writer deleted a WAL or table file between RocksDB listing the folder and
                // opening it (a flush or compaction finished): a fresh listing will not name it.
                Err(Error::Db(m)) if tries < 20 && m.contains("No such file or directory") => {}
                Err(e) => return Err(e),
            }
            // Backoff before the next try (the writer's flush finishing), not synchronisation.
            std::thread::sleep(std::time::Duration::from_millis(5 * tries));
        }
    }

    /// Whether this handle was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.db.is_read_only()
    }

    /// `Err(Error::ReadOnly)` on a read-only handle (checked before long work that ends in writes).
    pub(crate) fn writable(&self) -> Result<()> {
        if self.db.is_read_only() {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    fn open_mode(store_dir: &Path, read_only: bool) -> Result<Store> {
        let dbdir = store_dir.join("db");
        if !dbdir.join("CURRENT").exists() {
            return Err(Error::NotAStore {
                path: store_dir.to_path_buf(),
            });
        }
        repair_mode(store_dir);
        let lock = if read_only {
            None
        } else {
            Some(lock(store_dir)?)
        };
        let open = |budget| {
            if read_only {
                Db::open_read_only(&dbdir, budget)
            } else {
                Db::open(&dbdir, false, budget)
            }
        };
        // Budget from the recorded config; open with the default first to read it.
        let db = open(StoreConfig::default().memory_budget)?;
        let ver = db
            .get(cf::META, b"format")?
            .ok_or_else(|| Error::NotAStore {
                path: store_dir.to_path_buf(),
            })?;
        let ver = u32::from_le_bytes(
            ver.get(..4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0xff; 4]),
        );
        if ver != FORMAT_VERSION {
            return Err(Error::Version {
                found: ver,
                supported: FORMAT_VERSION,
            });
        }
        let cfg: StoreConfig = serde_json::from_slice(
            &db.get(cf::META, b"config")?
                .ok_or_else(|| Error::corrupt("store config is missing"))?,
        )
        .map_err(|e| Error::corrupt(format!("store config does not parse: {e}")))?;
        chunker::ChunkSizes {
            min: cfg.chunk_min,
            avg: cfg.chunk_avg,
            max: cfg.chunk_max,
        }
        .validate()?;
        let db = if cfg.memory_budget != StoreConfig::default().memory_budget {
            drop(db);
            open(cfg.memory_budget)?
        } else {
            db
        };
        Ok(Store {
            dir: store_dir.to_path_buf(),
            cfg,
            db,
            _lock: lock,
            op: RwLock::new(()),
            boot_override: std::sync::Mutex::new(None),
            releaser: std::sync::Mutex::new(None),
        })
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn sizes(&self) -> chunker::ChunkSizes {
        chunker::ChunkSizes {
            min: self.cfg.chunk_min,
            avg: self.cfg.chunk_avg,
            max: self.cfg.chunk_max,
        }
    }

    /// All entries of the folder rooted at `id`, in name order (every level of a wide folder).
    ///
    /// Each leaf is checked when it is decoded, but a folder split over several leaves could still
    /// list a name in two leaves, or leaves out of order (each node valid alone, e.g. a link `x` in
    /// one leaf and a folder `x` in the next). So the names are checked across leaves too (see
    /// [`Store::walk_dir`]): a folder whose names do not strictly increase is [`Error::Corrupt`]
    /// ("folder node <id> lists <name> twice or out of order"), and every reader of folders
    /// (checkout, diff, restore, ls, add, verify) goes through that check.
    pub fn dir_entries(&self, id: NodeId) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        self.walk_dir(id, &mut |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams the entries of the folder rooted at `id` to `f` in name order, refusing (before
    /// handing it over) an entry whose name is not greater than the previous one, across all
    /// leaves. Memory: the previous leaf's last name and one node per index level.
    pub(crate) fn walk_dir(
        &self,
        id: NodeId,
        f: &mut dyn FnMut(DirEntry) -> Result<()>,
    ) -> Result<()> {
        let mut prev = None;
        self.walk_dir_at(id, id, &mut prev, f, 0)
    }

    fn walk_dir_at(
        &self,
        folder: NodeId,
        id: NodeId,
        prev: &mut Option<Vec<u8>>,
        f: &mut dyn FnMut(DirEntry) -> Result<()>,
        depth: u32,
    ) -> Result<()> {
        if depth > node::MAX_LEVEL as u32 {
            return Err(Error::corrupt(format!("folder node {id} is too deep")));
        }
        match self.read_node(id)? {
            Node::Dir(DirNode::Leaf(entries)) => {
                let Some(last) = entries.last().map(|e| e.name.clone()) else {
                    return Ok(());
                };
                // Decoding already refused a leaf out of order; checked again here all the same.
                let mut before = prev.as_deref();
                for e in &entries {
                    if before.is_some_and(|p| p >= &e.name[..]) {
                        return Err(Error::corrupt(format!(
                            "folder node {folder} lists {:?} twice or out of order",
                            String::from_utf8_lossy(&e.name)
                        )));
                    }
                    before = Some(&e.name);
                }
                for e in entries {
                    f(e)?;
                }
                *prev = Some(last);
            }
            Node::Dir(DirNode::Index { children, .. }) => {
                for c in children {
                    self.walk_dir_at(folder, c, prev, f, depth + 1)?;
                }
            }
            _ => return Err(Error::corrupt(format!("node {id} is not a folder"))),
        }
        Ok(())
    }

    /// The root tree node of a snapshot whose tree is kept (not dropped by `gc --keep-last`).
    pub fn snapshot_root(&self, snapshot: NodeId) -> Result<NodeId> {
        let s = self.snapshot(snapshot)?;
        if self.is_shallow(snapshot)? {
            return Err(Error::not_found(format!(
                "the files of snapshot {} are not in this store (history fetched without its trees, or dropped by gc)",
                snapshot.fmt_short()
            )));
        }
        Ok(s.root)
    }

    /// The entry at `path` (relative, no `..`) in `snapshot`'s tree, or `None` when there is none
    /// (or `path` is the root).
    pub fn entry_at(&self, snapshot: NodeId, path: &Path) -> Result<Option<DirEntry>> {
        let root = self.snapshot_root(snapshot)?;
        match self.lookup(root, path) {
            Err(Error::NotFound { .. }) => Ok(None),
            r => r,
        }
    }

    /// Finds the entry at `path` (relative, no `..`) under folder `root`. `None` for the root itself.
    pub(crate) fn lookup(&self, root: NodeId, path: &Path) -> Result<Option<DirEntry>> {
        let comps = rel_components(path)?;
        let mut dir = root;
        let mut found = None;
        for (i, c) in comps.iter().enumerate() {
            let entries = self.dir_entries(dir)?;
            let e = entries.into_iter().find(|e| &e.name == c).ok_or_else(|| {
                Error::not_found(format!("{} is not in the snapshot", path.display()))
            })?;
            if i + 1 < comps.len() {
                match (&e.kind, &e.target) {
                    (EntryKind::Dir, Target::Node(id)) => dir = *id,
                    _ => {
                        return Err(Error::not_found(format!(
                            "{} is not in the snapshot",
                            path.display()
                        )))
                    }
                }
            }
            found = Some(e);
        }
        Ok(found)
    }

    /// Entries of the folder at `path` ("" = root) in `snapshot`; if `path` is a file, that one entry.
    pub fn ls(&self, snapshot: NodeId, path: &Path) -> Result<Vec<LsEntry>> {
        let root = self.snapshot_root(snapshot)?;
        let dir = match self.lookup(root, path)? {
            None => root,
            Some(e) => match (&e.kind, &e.target) {
                (EntryKind::Dir, Target::Node(id)) => *id,
                _ => return Ok(vec![ls_entry(e)]),
            },
        };
        Ok(self.dir_entries(dir)?.into_iter().map(ls_entry).collect())
    }

    /// Walks every chunk of a file in order.
    pub(crate) fn file_chunks(
        &self,
        content: &Content,
        f: &mut dyn FnMut(&[node::ChunkRef]) -> Result<()>,
    ) -> Result<()> {
        match content {
            Content::Inline(e) => f(e),
            Content::Tree(root) => self.chunk_tree(*root, f, 0),
        }
    }

    fn chunk_tree(
        &self,
        id: NodeId,
        f: &mut dyn FnMut(&[node::ChunkRef]) -> Result<()>,
        depth: u32,
    ) -> Result<()> {
        if depth > node::MAX_LEVEL as u32 {
            return Err(Error::corrupt(format!("chunk list {id} is too deep")));
        }
        match self.read_node(id)? {
            Node::ChunkList(c) if c.level == 0 => f(&c.entries),
            Node::ChunkList(c) => {
                for e in c.entries {
                    self.chunk_tree(NodeId(e.id), f, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(Error::corrupt(format!("node {id} is not a chunk list"))),
        }
    }

    /// On-disk size of the store folder in bytes.
    pub fn disk_usage(&self) -> Result<u64> {
        fn walk(p: &Path) -> std::io::Result<u64> {
            let mut n = 0;
            for e in fs::read_dir(p)? {
                let e = e?;
                let m = e.metadata()?;
                n += if m.is_dir() {
                    walk(&e.path())?
                } else {
                    m.len()
                };
            }
            Ok(n)
        }
        walk(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

/// Deepest folder nesting the recursive walks accept (a path cannot be longer than 4096 bytes).
pub(crate) const MAX_DEPTH: usize = 2048;

pub(crate) fn shallow_key(id: NodeId) -> Vec<u8> {
    let mut k = b"shallow/".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// `meta/arrived/<id>`: when a snapshot node was first stored here (ns since the epoch, i64 little
/// endian, this machine's clock). Local only: retention measures age by it, never by the time a
/// snapshot declares (a peer's clock, or a merge's inherited time, can say anything).
pub(crate) fn arrival_key(id: NodeId) -> Vec<u8> {
    let mut k = b"arrived/".to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn ls_entry(e: DirEntry) -> LsEntry {
    let (id, link_target) = match e.target {
        Target::Node(id) => (id, None),
        Target::Link(l) => (NodeId(Hash::of(&l)), Some(OsString::from_vec(l))),
    };
    LsEntry {
        name: OsString::from_vec(e.name),
        kind: e.kind,
        mode: e.mode,
        size: e.size,
        mtime_ns: e.mtime_ns,
        id,
        link_target,
    }
}

/// Splits a relative path into name components; rejects `..`, absolute paths and odd names.
pub(crate) fn rel_components(path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
            Component::CurDir => {}
            _ => {
                return Err(Error::PathOutsideShare {
                    path: path.to_path_buf(),
                })
            }
        }
    }
    Ok(out)
}
