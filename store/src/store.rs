//! The [`Store`] handle: opening and locking, refs, object access for sync (`has_many`, `missing`,
//! `diff`, `get_*`/`put_*`), and the read side (`resolve`, `snapshot`, `log`, `ls`).
//!
//! `add` lives in [`crate::add`], `restore` in [`crate::restore`], `verify` and `gc` in
//! [`crate::maint`]. Every method takes `&self`; a store-wide read/write lock keeps `gc` from running
//! while an `add` or a `put_*` is writing objects it has not referenced yet.

use crate::codec;
use crate::db::{cf, Batch, Db, IndexEntry, FORMAT_VERSION};
use crate::node::{Child, Content, DirEntry, DirNode, Node, Target};
use crate::*;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
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
    // SAFETY: flock on a valid descriptor owned by `f`.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            return Err(Error::Locked {
                pid: s.trim().parse().unwrap_or(0),
            });
        }
        return Err(Error::io(&path, err));
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

    /// Current head snapshot.
    pub fn head(&self) -> Result<Option<NodeId>> {
        self.get_ref("head")
    }

    /// Reads a ref.
    pub fn get_ref(&self, name: &str) -> Result<Option<NodeId>> {
        match self.db.get(cf::REFS, name.as_bytes())? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 32] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::corrupt(format!("ref {name} is corrupt")))?;
                Ok(Some(NodeId(Hash(b))))
            }
        }
    }

    /// Moves a ref to a snapshot whose tree must be complete (synced batch).
    pub fn set_ref(&self, name: &str, id: NodeId) -> Result<()> {
        if !self.has_nodes(&[id])?[0] {
            return Err(Error::not_found(format!(
                "snapshot {id} is not completely stored"
            )));
        }
        let mut b = Batch::default();
        b.put(&self.db, cf::REFS, name.as_bytes(), id.as_bytes());
        self.db.write(b.inner, true)
    }

    /// Writes a snapshot node (e.g. a merge made by the sync engine) whose root tree is complete, and
    /// returns its id. Does not move any ref (see [`Store::set_ref`]).
    pub fn put_snapshot(&self, snap: &Snapshot) -> Result<NodeId> {
        let _g = self.op.read().expect("op lock");
        if !self.has_nodes(&[snap.root])?[0] {
            return Err(Error::not_found(format!(
                "tree {} is not completely stored",
                snap.root
            )));
        }
        let (id, bytes) = Node::Snapshot(snap.clone()).encode_with_id()?;
        let mut b = Batch::default();
        self.note_arrival(&mut b, id)?;
        b.put(&self.db, cf::NODES, id.as_bytes(), &bytes);
        b.put(&self.db, cf::COMPLETE, id.as_bytes(), b"");
        self.db.write(b.inner, false)?;
        Ok(id)
    }

    /// All refs (name, snapshot).
    pub fn refs(&self) -> Result<Vec<(String, NodeId)>> {
        let mut out = Vec::new();
        for r in self.db.iter(cf::REFS) {
            let (k, v) = r?;
            let b: [u8; 32] = (*v)
                .try_into()
                .map_err(|_| Error::corrupt("a ref is corrupt"))?;
            out.push((String::from_utf8_lossy(&k).into_owned(), NodeId(Hash(b))));
        }
        Ok(out)
    }

    /// Deletes the ref `peers/<device>` (the last head fetched from that device) in a synced
    /// batch, so what only that snapshot held is freed by the next gc. Call it when a device is
    /// revoked or forgotten. `device` is a bare device id: a name with `/` (or an empty one) is
    /// refused, so this never touches `head` or any ref outside `peers/`. A checkout journal
    /// keeps its own trees whatever the refs say (gc's `checkout` root), so dropping the ref of
    /// the snapshot a checkout is moving to loses nothing. Returns the snapshot the ref named, or
    /// `None` when there was no such ref.
    pub fn drop_peer_ref(&self, device: &str) -> Result<Option<NodeId>> {
        self.writable()?;
        if device.is_empty() || device.contains('/') {
            return Err(Error::Invalid(format!(
                "{device:?} is not a device id: only a peers/<device> ref can be dropped"
            )));
        }
        let name = format!("peers/{device}");
        let Some(id) = self.get_ref(&name)? else {
            return Ok(None);
        };
        let mut b = Batch::default();
        b.delete(&self.db, cf::REFS, name.as_bytes());
        self.db.write(b.inner, true)?;
        Ok(Some(id))
    }

    // ---------------------------------------------------------------- objects

    /// Batched presence of chunks (from the index: never loads a chunk).
    pub fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let keys: Vec<&[u8]> = ids.iter().map(|i| &i.as_bytes()[..]).collect();
        self.db.exists_many(cf::CHUNK_INDEX, &keys)
    }

    /// Batched presence of nodes, where present means complete (whole subtree stored).
    pub fn has_nodes(&self, ids: &[NodeId]) -> Result<Vec<bool>> {
        let keys: Vec<&[u8]> = ids.iter().map(|i| &i.as_bytes()[..]).collect();
        self.db.exists_many(cf::COMPLETE, &keys)
    }

    /// Batched presence of chunks and (complete) nodes.
    pub fn has_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let chunks: Vec<ChunkId> = ids
            .iter()
            .filter_map(|i| {
                if let ObjectId::Chunk(c) = i {
                    Some(*c)
                } else {
                    None
                }
            })
            .collect();
        let nodes: Vec<NodeId> = ids
            .iter()
            .filter_map(|i| {
                if let ObjectId::Node(n) = i {
                    Some(*n)
                } else {
                    None
                }
            })
            .collect();
        let mut c = self.has_chunks(&chunks)?.into_iter();
        let mut n = self.has_nodes(&nodes)?.into_iter();
        Ok(ids
            .iter()
            .map(|i| match i {
                ObjectId::Chunk(_) => c.next().unwrap_or(false),
                ObjectId::Node(_) => n.next().unwrap_or(false),
            })
            .collect())
    }

    /// Index record of a chunk.
    pub fn chunk_info(&self, id: ChunkId) -> Result<Option<IndexEntry>> {
        self.db
            .get(cf::CHUNK_INDEX, id.as_bytes())?
            .map(|b| IndexEntry::from_bytes(&b))
            .transpose()
    }

    /// The encoded bytes of a chunk (codec byte + payload), as stored and sent on the wire.
    pub fn get_chunk(&self, id: ChunkId) -> Result<Option<Vec<u8>>> {
        self.db.get_unchecked(cf::CHUNKS, id.as_bytes())
    }

    /// The plain bytes of a chunk, verified against its id.
    pub fn read_chunk(&self, id: ChunkId) -> Result<Vec<u8>> {
        let enc = self
            .get_chunk(id)?
            .ok_or_else(|| Error::not_found(format!("chunk {id} is missing")))?;
        codec::decode_verified(&id, &enc, self.cfg.chunk_max as usize)
    }

    /// Stores an encoded chunk after verifying it decodes (bounded) to bytes hashing to `id`.
    /// Returns whether it was new.
    pub fn put_chunk(&self, id: ChunkId, encoded: &[u8]) -> Result<bool> {
        let _g = self.op.read().expect("op lock");
        let plain = codec::decode_verified(&id, encoded, self.cfg.chunk_max as usize)?;
        if self.has_chunks(&[id])?[0] {
            return Ok(false);
        }
        let mut b = Batch::default();
        b.put(&self.db, cf::CHUNKS, id.as_bytes(), encoded);
        let ie = IndexEntry {
            len: plain.len() as u32,
            codec: encoded[0],
            enc_len: encoded.len() as u32,
        };
        b.put(&self.db, cf::CHUNK_INDEX, id.as_bytes(), &ie.to_bytes());
        self.db.write(b.inner, false)?;
        Ok(true)
    }

    /// Stores a chunk whose encoded bytes the caller has already verified against `id` (the sync
    /// engine verifies every arrival; verifying again would cost ~30% of a pull). `plain_len` is the
    /// decoded length. Same effect as [`Store::put_chunk`] otherwise. Returns whether it was new.
    pub fn put_chunk_verified(&self, id: ChunkId, encoded: &[u8], plain_len: u32) -> Result<bool> {
        let _g = self.op.read().expect("op lock");
        if encoded.is_empty() || plain_len > self.cfg.chunk_max {
            return Err(Error::corrupt(format!("chunk {id} is corrupt: bad length")));
        }
        if self.has_chunks(&[id])?[0] {
            return Ok(false);
        }
        let mut b = Batch::default();
        b.put(&self.db, cf::CHUNKS, id.as_bytes(), encoded);
        let ie = IndexEntry {
            len: plain_len,
            codec: encoded[0],
            enc_len: encoded.len() as u32,
        };
        b.put(&self.db, cf::CHUNK_INDEX, id.as_bytes(), &ie.to_bytes());
        self.db.write(b.inner, false)?;
        Ok(true)
    }

    /// Stores a batch of chunks the caller has already verified (as [`Store::put_chunk_verified`],
    /// each `(id, encoded bytes, plain length)`) in one RocksDB write: one presence lookup for the
    /// whole batch, one WAL append (unsynced, like `put_chunk_verified`), one memtable insert pass.
    /// Chunks already stored, and repeats of an id within the batch, are skipped. Returns how many
    /// were new. A bad length anywhere refuses the whole batch before anything is written.
    pub fn put_chunks_verified(&self, chunks: &[(ChunkId, &[u8], u32)]) -> Result<usize> {
        let _g = self.op.read().expect("op lock");
        for (id, enc, plain_len) in chunks {
            if enc.is_empty() || *plain_len > self.cfg.chunk_max {
                return Err(Error::corrupt(format!("chunk {id} is corrupt: bad length")));
            }
        }
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();
        let have = self.has_chunks(&ids)?;
        let mut seen = std::collections::HashSet::with_capacity(chunks.len());
        // Each put: the value, its 32-byte key, and a few bytes of record header; then the index.
        let cap: usize = chunks.iter().map(|c| c.1.len() + 128).sum();
        let mut b = Batch::with_capacity(cap);
        let mut new = 0;
        for ((id, enc, plain_len), had) in chunks.iter().zip(have) {
            if had || !seen.insert(*id) {
                continue;
            }
            b.put(&self.db, cf::CHUNKS, id.as_bytes(), enc);
            let ie = IndexEntry {
                len: *plain_len,
                codec: enc[0],
                enc_len: enc.len() as u32,
            };
            b.put(&self.db, cf::CHUNK_INDEX, id.as_bytes(), &ie.to_bytes());
            new += 1;
        }
        if new > 0 {
            self.db.write(b.inner, false)?;
        }
        Ok(new)
    }

    /// The encoded bytes of a node.
    pub fn get_node(&self, id: NodeId) -> Result<Option<Vec<u8>>> {
        self.db.get(cf::NODES, id.as_bytes())
    }

    /// A decoded, verified node; a missing node is [`Error::NotFound`].
    pub fn read_node(&self, id: NodeId) -> Result<Node> {
        let b = self
            .get_node(id)?
            .ok_or_else(|| Error::not_found(format!("node {id} is missing")))?;
        Node::decode_verified(&id, &b)
    }

    /// Stores an encoded node after verifying its hash and decoding it, and marks it complete when
    /// everything below it is already complete. Returns whether it is now complete.
    pub fn put_node(&self, id: NodeId, bytes: &[u8]) -> Result<bool> {
        let _g = self.op.read().expect("op lock");
        let node = Node::decode_verified(&id, bytes)?;
        let mut b = Batch::default();
        if matches!(node, Node::Snapshot(_)) {
            self.note_arrival(&mut b, id)?;
        }
        b.put(&self.db, cf::NODES, id.as_bytes(), bytes);
        let complete = self.children_complete(&node)?;
        if complete {
            b.put(&self.db, cf::COMPLETE, id.as_bytes(), b"");
        }
        self.db.write(b.inner, false)?;
        Ok(complete)
    }

    /// Stores the header of a snapshot whose tree is not being fetched (a parent of a fetched
    /// head, so history and ancestry work). The bytes are checked against `id` and must decode to
    /// a snapshot. Unless its tree is already complete here, the snapshot is recorded as shallow
    /// (as `gc --keep-last` records the snapshots whose trees it dropped), so `verify`, `gc`,
    /// `add` and `log` know its tree is absent. Returns whether it was new.
    pub fn put_snapshot_header(&self, id: NodeId, bytes: &[u8]) -> Result<bool> {
        let _g = self.op.read().expect("op lock");
        self.writable()?;
        let node = Node::decode_verified(&id, bytes)?;
        let Node::Snapshot(snap) = &node else {
            return Err(Error::corrupt(format!("{id} is not a snapshot")));
        };
        if self.get_node(id)?.is_some() {
            return Ok(false);
        }
        let mut b = Batch::default();
        self.note_arrival(&mut b, id)?;
        b.put(&self.db, cf::NODES, id.as_bytes(), bytes);
        if self.has_nodes(&[snap.root])?[0] {
            b.put(&self.db, cf::COMPLETE, id.as_bytes(), b"");
        } else {
            b.put(&self.db, cf::META, &shallow_key(id), b"");
        }
        self.db.write(b.inner, false)?;
        Ok(true)
    }

    /// Adds to `b` the record of when snapshot `id` arrived here (now), unless it has one: the
    /// first arrival counts, so fetching a snapshot again never makes it younger.
    pub(crate) fn note_arrival(&self, b: &mut Batch, id: NodeId) -> Result<()> {
        let k = arrival_key(id);
        // A snapshot stored before arrivals were recorded gets its record from gc instead.
        if !self.db.exists(cf::META, &k)? && !self.db.exists(cf::NODES, id.as_bytes())? {
            b.put(&self.db, cf::META, &k, &now_ns().to_le_bytes());
        }
        Ok(())
    }

    /// When snapshot `id` first arrived here (ns since the epoch, this machine's clock), if
    /// recorded. Snapshots stored before arrivals were recorded, and those `add` writes, have none
    /// until `gc` records one (see [`Store::gc`]).
    pub fn arrival(&self, id: NodeId) -> Result<Option<i64>> {
        Ok(self
            .db
            .get(cf::META, &arrival_key(id))?
            .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
            .map(i64::from_le_bytes))
    }

    /// Test hook: sets the arrival time of a snapshot (as if it had arrived at `ns`).
    #[doc(hidden)]
    pub fn debug_set_arrival(&self, id: NodeId, ns: i64) -> Result<()> {
        let mut b = Batch::default();
        b.put(&self.db, cf::META, &arrival_key(id), &ns.to_le_bytes());
        self.db.write(b.inner, false)
    }

    /// Test hook: forgets the arrival record of a snapshot (as a store made before they existed).
    #[doc(hidden)]
    pub fn debug_clear_arrival(&self, id: NodeId) -> Result<()> {
        let mut b = Batch::default();
        b.delete(&self.db, cf::META, &arrival_key(id));
        self.db.write(b.inner, false)
    }

    fn children_complete(&self, node: &Node) -> Result<bool> {
        let (mut cs, mut ns) = (Vec::new(), Vec::new());
        for c in node.children() {
            match c {
                Child::Chunk(id, _) => cs.push(id),
                Child::Node(id) => ns.push(id),
            }
        }
        Ok(self.has_chunks(&cs)?.into_iter().all(|x| x)
            && self.has_nodes(&ns)?.into_iter().all(|x| x))
    }

    /// Sets completeness marks bottom-up under `root` (after nodes were stored top-down, as a fetch
    /// does). Returns whether `root` is complete.
    pub fn mark_complete(&self, root: NodeId) -> Result<bool> {
        self.mark_complete_at(root, 0)
    }

    fn mark_complete_at(&self, root: NodeId, depth: usize) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(format!(
                "tree under {root} is deeper than {MAX_DEPTH}"
            )));
        }
        if self.has_nodes(&[root])?[0] {
            return Ok(true);
        }
        let Some(bytes) = self.get_node(root)? else {
            return Ok(false);
        };
        let node = Node::decode_verified(&root, &bytes)?;
        // One multi-get for the chunks and one for the child nodes of this node (a 1 GiB file's
        // leaves hold ~128 chunks each: one lookup each would cost a round per chunk).
        let (mut cs, mut ns) = (Vec::new(), Vec::new());
        for c in node.children() {
            match c {
                Child::Chunk(id, _) => cs.push(id),
                Child::Node(id) => ns.push(id),
            }
        }
        let mut all = self.has_chunks(&cs)?.into_iter().all(|x| x);
        for (n, done) in ns.iter().zip(self.has_nodes(&ns)?) {
            if !done {
                all &= self.mark_complete_at(*n, depth + 1)?;
            }
        }
        if all {
            let mut b = Batch::default();
            b.put(&self.db, cf::COMPLETE, root.as_bytes(), b"");
            if matches!(node, Node::Snapshot(_)) {
                // A header fetched earlier as history now has its whole tree.
                b.delete(&self.db, cf::META, &shallow_key(root));
            }
            self.db.write(b.inner, false)?;
        }
        Ok(all)
    }

    /// Walks the tree under `root`, skipping complete subtrees, and calls `f` with batches of at most
    /// `batch` ids that are not stored (nodes not stored at all, and chunks). Memory stays bounded:
    /// the walk holds one node's children per level.
    pub fn missing(
        &self,
        root: NodeId,
        batch: usize,
        f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
    ) -> Result<()> {
        let batch = batch.max(1);
        let mut out = Vec::with_capacity(batch);
        let mut seen = Seen::default();
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            if self.has_nodes(&[id])?[0] || !seen.insert(ObjectId::Node(id)) {
                continue;
            }
            let Some(bytes) = self.get_node(id)? else {
                push(&mut out, ObjectId::Node(id), batch, f)?;
                continue;
            };
            let node = Node::decode_verified(&id, &bytes)?;
            let children = node.children();
            let chunk_ids: Vec<ChunkId> = children
                .iter()
                .filter_map(|c| {
                    if let Child::Chunk(c, _) = c {
                        Some(*c)
                    } else {
                        None
                    }
                })
                .collect();
            for (c, has) in chunk_ids.iter().zip(self.has_chunks(&chunk_ids)?) {
                if !has && seen.insert(ObjectId::Chunk(*c)) {
                    push(&mut out, ObjectId::Chunk(*c), batch, f)?;
                }
            }
            for c in children.iter().rev() {
                if let Child::Node(n) = c {
                    stack.push(*n);
                }
            }
        }
        if !out.is_empty() {
            f(&out)?;
        }
        Ok(())
    }

    /// Streams (in batches of at most `batch`) the ids of nodes and chunks reachable from `b` that are
    /// not reachable from `a`, skipping subtrees equal in both. Folders are compared by entry name and
    /// chunk lists node by node, so an object that moved between paths may be reported although `a`
    /// holds it elsewhere (a superset of the exact set difference; receivers check with `has_many`).
    /// `a` and `b` are snapshot or tree node ids; both must be stored.
    pub fn diff(
        &self,
        a: NodeId,
        b: NodeId,
        batch: usize,
        f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
    ) -> Result<()> {
        let batch = batch.max(1);
        let mut out = Vec::with_capacity(batch);
        let mut seen = Seen::default();
        self.diff_rec(Some(a), b, batch, &mut out, &mut seen, f, 0)?;
        if !out.is_empty() {
            f(&out)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn diff_rec(
        &self,
        a: Option<NodeId>,
        b: NodeId,
        batch: usize,
        out: &mut Vec<ObjectId>,
        seen: &mut Seen,
        f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(format!(
                "tree under {b} is deeper than {MAX_DEPTH}"
            )));
        }
        if a == Some(b) || !seen.insert(ObjectId::Node(b)) {
            return Ok(());
        }
        push(out, ObjectId::Node(b), batch, f)?;
        let nb = self.read_node(b)?;
        let na = match a {
            Some(a) => Some(self.read_node(a)?),
            None => None,
        };
        match &nb {
            Node::Snapshot(sb) => {
                let ra = match &na {
                    Some(Node::Snapshot(sa)) => Some(sa.root),
                    _ => None,
                };
                self.diff_rec(ra, sb.root, batch, out, seen, f, depth + 1)?;
            }
            Node::Dir(_) => {
                // Pair entries by name (through every level of a wide folder).
                let (ea, ia) = match (&na, a) {
                    (Some(Node::Dir(_)), Some(a)) => (self.dir_entries(a)?, index_nodes(self, a)?),
                    _ => (Vec::new(), HashSet::new()),
                };
                for n in index_nodes(self, b)? {
                    if n != b && !ia.contains(&n) && seen.insert(ObjectId::Node(n)) {
                        push(out, ObjectId::Node(n), batch, f)?;
                    }
                }
                let mut ai = 0;
                for e in self.dir_entries(b)? {
                    while ai < ea.len() && ea[ai].name < e.name {
                        ai += 1;
                    }
                    let prev = ea.get(ai).filter(|x| x.name == e.name);
                    if let Target::Node(id) = e.target {
                        let pa = prev.and_then(|p| {
                            if let Target::Node(x) = p.target {
                                Some(x)
                            } else {
                                None
                            }
                        });
                        self.diff_rec(pa, id, batch, out, seen, f, depth + 1)?;
                    }
                }
            }
            Node::File(_) | Node::ChunkList(_) => {
                let ca = match &na {
                    Some(n @ (Node::File(_) | Node::ChunkList(_))) => n.children(),
                    _ => Vec::new(),
                };
                self.diff_chunks(ca, nb.children(), batch, out, seen, f)?;
            }
        }
        Ok(())
    }

    /// Level-by-level diff of two chunk-list trees: children of b absent from a's children at the
    /// same level are new; the unmatched nodes on both sides are expanded one level down together.
    /// When more than [`DIFF_EXPAND`] nodes of a are unmatched at a level, a's side is dropped (the
    /// result becomes a superset) so memory stays bounded.
    fn diff_chunks(
        &self,
        a: Vec<Child>,
        b: Vec<Child>,
        batch: usize,
        out: &mut Vec<ObjectId>,
        seen: &mut Seen,
        f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
    ) -> Result<()> {
        let (mut a, mut b) = (a, b);
        while !b.is_empty() {
            let aset: HashSet<Child> = a.iter().copied().collect();
            let bset: HashSet<Child> = b.iter().copied().collect();
            let a_rest: Vec<NodeId> = a
                .iter()
                .filter_map(|c| {
                    if let Child::Node(n) = c {
                        (!bset.contains(c)).then_some(*n)
                    } else {
                        None
                    }
                })
                .collect();
            let mut next_b = Vec::new();
            for c in &b {
                if aset.contains(c) {
                    continue;
                }
                match *c {
                    Child::Chunk(id, _) => {
                        if seen.insert(ObjectId::Chunk(id)) {
                            push(out, ObjectId::Chunk(id), batch, f)?;
                        }
                    }
                    Child::Node(id) => {
                        if seen.insert(ObjectId::Node(id)) {
                            push(out, ObjectId::Node(id), batch, f)?;
                            next_b.extend(self.read_node(id)?.children());
                        }
                    }
                }
            }
            let mut next_a = Vec::new();
            if a_rest.len() <= DIFF_EXPAND {
                for n in a_rest {
                    next_a.extend(self.read_node(n)?.children());
                }
            }
            a = next_a;
            b = next_b;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- read side

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

    /// Resolves "head", "head~N" (first parent), a full hex id, or a unique hex prefix of >= 4 chars.
    pub fn resolve(&self, spec: &str) -> Result<NodeId> {
        let spec = spec.trim();
        let (base, back) = match spec.split_once('~') {
            Some((b, n)) => (
                b,
                n.parse::<usize>()
                    .map_err(|_| Error::Invalid(format!("bad snapshot spec {spec:?}")))?,
            ),
            None => (spec, 0),
        };
        let mut id = if base == "head" || base == "HEAD" {
            self.head()?
                .ok_or_else(|| Error::not_found("no snapshot yet (head is empty)"))?
        } else {
            self.resolve_hex(base)?
        };
        for i in 0..back {
            let s = self.snapshot(id)?;
            id = *s.parents.first().ok_or_else(|| {
                Error::not_found(format!("{spec}: history has only {} snapshots", i + 1))
            })?;
        }
        Ok(id)
    }

    fn resolve_hex(&self, s: &str) -> Result<NodeId> {
        let nib = Hash::hex_nibbles(s).filter(|n| n.len() >= 4 && n.len() <= 64);
        let Some(nib) = nib else {
            return Err(Error::Invalid(format!(
                "bad snapshot spec {s:?} (use head, head~N or a hex id of 4+ chars)"
            )));
        };
        let prefix: Vec<u8> = nib
            .chunks(2)
            .filter(|p| p.len() == 2)
            .map(|p| p[0] << 4 | p[1])
            .collect();
        let odd = (nib.len() % 2 == 1).then(|| nib[nib.len() - 1]);
        let mut found = Vec::new();
        for r in self.db.iter_prefix(cf::NODES, &prefix) {
            let (k, v) = r?;
            if let Some(n) = odd {
                if k.get(prefix.len()).map(|b| b >> 4) != Some(n) {
                    continue;
                }
            }
            if v.len() >= 2 && v[1] == 3 {
                // Variant 3 of Node: a snapshot (checked again on decode).
                let b: [u8; 32] = (*k)
                    .try_into()
                    .map_err(|_| Error::corrupt("bad node key"))?;
                found.push(NodeId(Hash(b)));
                if found.len() > 1 {
                    break;
                }
            }
        }
        match found.len() {
            0 => Err(Error::not_found(format!("no snapshot {s}"))),
            1 => Ok(found[0]),
            _ => Err(Error::Invalid(format!("snapshot prefix {s} is ambiguous"))),
        }
    }

    /// Reads a snapshot node.
    pub fn snapshot(&self, id: NodeId) -> Result<Snapshot> {
        match self.read_node(id) {
            Ok(Node::Snapshot(s)) => Ok(s),
            Ok(_) => Err(Error::Invalid(format!("{id} is not a snapshot"))),
            Err(Error::NotFound { .. }) => Err(Error::not_found(format!("no snapshot {id}"))),
            Err(e) => Err(e),
        }
    }

    /// Ancestors of `from` (itself first), newest first, at most `limit`.
    pub fn log(&self, from: NodeId, limit: usize) -> Result<Vec<(NodeId, Snapshot)>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut heap = std::collections::BinaryHeap::new();
        let mut snaps = std::collections::HashMap::new();
        let s = self.snapshot(from)?;
        seen.insert(from);
        heap.push((s.time_ns, from));
        snaps.insert(from, s);
        while let Some((_, id)) = heap.pop() {
            let s = snaps.remove(&id).expect("pushed with its snapshot");
            if out.len() >= limit {
                break;
            }
            for p in &s.parents {
                if seen.insert(*p) {
                    match self.snapshot(*p) {
                        Ok(ps) => {
                            heap.push((ps.time_ns, *p));
                            snaps.insert(*p, ps);
                        }
                        Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            out.push((id, s));
        }
        Ok(out)
    }

    /// Whether snapshot `ancestor` is `of` or one of its ancestors. Walks parents newest first and
    /// stops below `ancestor`'s time (a child is never older than its parents: `add` and merges
    /// keep times non-decreasing), so the work is the history since `ancestor`, and at most
    /// [`ANCESTOR_LIMIT`] snapshots in any case (beyond it: `false`). A missing parent ends its
    /// branch (counts as not found).
    pub fn is_ancestor(&self, ancestor: NodeId, of: NodeId) -> Result<bool> {
        if ancestor == of {
            return Ok(true);
        }
        let floor = match self.snapshot(ancestor) {
            Ok(s) => s.time_ns,
            Err(Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut seen = HashSet::new();
        let mut heap = std::collections::BinaryHeap::new();
        seen.insert(of);
        heap.push((self.snapshot(of)?.time_ns, of));
        while let Some((t, id)) = heap.pop() {
            if id == ancestor {
                return Ok(true);
            }
            if t < floor || seen.len() > ANCESTOR_LIMIT {
                break;
            }
            let s = match self.snapshot(id) {
                Ok(s) => s,
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            for p in s.parents {
                if seen.insert(p) {
                    match self.snapshot(p) {
                        Ok(ps) => heap.push((ps.time_ns, p)),
                        Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(false)
    }

    /// Whether gc dropped the tree of this snapshot (`gc --keep-last`).
    pub fn is_shallow(&self, snapshot: NodeId) -> Result<bool> {
        self.db.exists(cf::META, &shallow_key(snapshot))
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

    /// Test hook: flips the last byte of the stored (encoded) chunk `id`, keeping its index entry.
    #[doc(hidden)]
    pub fn debug_corrupt_chunk(&self, id: ChunkId) -> Result<()> {
        let enc = self
            .get_chunk(id)?
            .ok_or_else(|| Error::not_found(format!("chunk {id} is missing")))?;
        self.debug_put_flipped(cf::CHUNKS, id.as_bytes(), enc)
    }

    /// Test hook: flips the last byte of the stored node `id`.
    #[doc(hidden)]
    pub fn debug_corrupt_node(&self, id: NodeId) -> Result<()> {
        let n = self
            .get_node(id)?
            .ok_or_else(|| Error::not_found(format!("node {id} is missing")))?;
        self.debug_put_flipped(cf::NODES, id.as_bytes(), n)
    }

    /// Writes `value` back under `key` in `family` with its last byte flipped.
    fn debug_put_flipped(&self, family: &str, key: &[u8], mut value: Vec<u8>) -> Result<()> {
        // Stored chunks and nodes are never empty (a codec or version byte comes first).
        *value.last_mut().expect("stored objects are never empty") ^= 0x55;
        let mut b = Batch::default();
        b.put(&self.db, family, key, &value);
        self.db.write(b.inner, false)
    }

    /// Test hook: the chunk ids of a file in a snapshot, in order.
    #[doc(hidden)]
    pub fn debug_file_chunks(&self, snapshot: NodeId, path: &Path) -> Result<Vec<ChunkId>> {
        let root = self.snapshot_root(snapshot)?;
        let e = self
            .lookup(root, path)?
            .ok_or_else(|| Error::Invalid("the root is not a file".into()))?;
        let Target::Node(id) = e.target else {
            return Err(Error::Invalid("not a file".into()));
        };
        let Node::File(fnode) = self.read_node(id)? else {
            return Err(Error::Invalid("not a file".into()));
        };
        let mut out = Vec::new();
        self.file_chunks(&fnode.content, &mut |refs| {
            out.extend(refs.iter().map(|r| ChunkId(r.id)));
            Ok(())
        })?;
        Ok(out)
    }

    /// Test hook: deletes a stored chunk (index entry included).
    #[doc(hidden)]
    pub fn debug_delete_chunk(&self, id: ChunkId) -> Result<()> {
        let mut b = Batch::default();
        b.delete(&self.db, cf::CHUNKS, id.as_bytes());
        b.delete(&self.db, cf::CHUNK_INDEX, id.as_bytes());
        self.db.write(b.inner, false)
    }
}

/// Deepest folder nesting the recursive walks accept (a path cannot be longer than 4096 bytes).
pub(crate) const MAX_DEPTH: usize = 2048;

/// Most snapshots [`Store::is_ancestor`] visits.
pub const ANCESTOR_LIMIT: usize = 1 << 20;

/// Most unmatched chunk-list nodes of the old side expanded per level by `diff`.
const DIFF_EXPAND: usize = 256;

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

/// Folder nodes (leaves and index nodes) of the folder rooted at `id`.
fn index_nodes(s: &Store, id: NodeId) -> Result<HashSet<NodeId>> {
    let mut out = HashSet::new();
    let mut stack = vec![id];
    while let Some(n) = stack.pop() {
        out.insert(n);
        if let Node::Dir(DirNode::Index { children, .. }) = s.read_node(n)? {
            stack.extend(children);
        }
    }
    Ok(out)
}

fn push(
    out: &mut Vec<ObjectId>,
    id: ObjectId,
    batch: usize,
    f: &mut dyn FnMut(&[ObjectId]) -> Result<()>,
) -> Result<()> {
    out.push(id);
    if out.len() >= batch {
        f(out)?;
        out.clear();
    }
    Ok(())
}

/// A bounded "already emitted" set: forgets everything when it grows past a limit, so memory stays
/// bounded (at worst an id is emitted twice).
#[derive(Default)]
struct Seen(HashSet<ObjectId>);

impl Seen {
    const LIMIT: usize = 1 << 20;
    fn insert(&mut self, id: ObjectId) -> bool {
        if self.0.len() >= Self::LIMIT {
            self.0.clear();
        }
        self.0.insert(id)
    }
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
