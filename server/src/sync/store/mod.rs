//! Server storage, behind the narrow [`Loader`] reads of the hub plus a few writes, on sled
//! (`--store DIR`, the default) or PostgreSQL (`--store postgres://…`): see [`kv`].
//!
//! Trees: `chunks` (key = document id ‖ sequence number, big-endian; value = an Automerge chunk —
//! incremental changes or a whole-document snapshot), `sync_states` (key = document id ‖ peer
//! storage id), `heads` (key = document id; value = the sequence number of the newest chunk it
//! describes ‖ the document's heads, 32 bytes each: what the summary exchange compares without
//! loading the document — an entry older than the newest chunk, or marked invalid, is recomputed
//! from the chunks), `meta` (`storage-id`, `seq`), `practices` (`practices::PracticeRegistry`),
//! and on PostgreSQL `changes` (the change feed: see [`feed`]). A snapshot replaces older chunks
//! in one atomic batch (on a database several servers share, only those it contains: see
//! [`Writers`]), so a crash during compaction leaves either the old chunks or the snapshot,
//! never neither.

pub mod feed;
pub mod kv;
pub mod lease;
pub mod practices;
pub mod read_model;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rounds_core::DocumentId;
use rounds_core::sync::hub::Loader;
use rounds_core::sync::summary;

/// Where the store lives: a directory (sled) or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Dir(PathBuf),
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE[?options]`.
    Postgres(String),
}

impl std::str::FromStr for StoreLocation {
    type Err = String;
    fn from_str(s: &str) -> Result<StoreLocation, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreLocation::Postgres(s.to_string()))
        } else if s.contains("://") {
            Err(format!(
                "{}: a store is a directory or a postgres:// URL",
                kv::pg::redact(s)
            ))
        } else if s.is_empty() {
            Err("the store is empty: give a directory or a postgres:// URL".into())
        } else {
            Ok(StoreLocation::Dir(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Dir(d) => write!(f, "{}", d.display()),
            StoreLocation::Postgres(u) => f.write_str(&kv::pg::redact(u)),
        }
    }
}

impl serde::Serialize for StoreLocation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(p: PathBuf) -> StoreLocation {
        StoreLocation::Dir(p)
    }
}

impl From<&Path> for StoreLocation {
    fn from(p: &Path) -> StoreLocation {
        StoreLocation::Dir(p.to_path_buf())
    }
}

impl StoreLocation {
    /// The directory of a sled store (None for PostgreSQL).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            StoreLocation::Dir(d) => Some(d),
            StoreLocation::Postgres(_) => None,
        }
    }
}

/// Documents whose heads entry the store keeps in memory (about 100 bytes each).
pub const HEADS_CACHED: usize = 200_000;

/// Connections a server keeps to PostgreSQL (`?pool_size=` is not a libpq option: this is it).
pub const PG_POOL_SIZE: usize = 8;

/// Storage failures, with the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: crate::sync::store::kv::KvError,
    },
    #[error("store {op}: {source}")]
    Kv {
        op: &'static str,
        #[source]
        source: crate::sync::store::kv::KvError,
    },
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the store at {path} is format {found}, newer than this rounds understands ({supported}): run the rounds that wrote it, or a newer one"
    )]
    Format {
        path: String,
        found: u64,
        supported: u64,
    },
}

fn err(op: &'static str) -> impl FnOnce(crate::sync::store::kv::KvError) -> StoreError {
    move |source| StoreError::Kv { op, source }
}

/// The store's format: `meta/store-format`. A store without it (made before formats were
/// recorded) is format 0; opening runs the migrations from its format up to this one, each
/// recorded as it completes; a store of a newer format is refused.
pub const STORE_FORMAT: u64 = 1;

/// The migrations: `MIGRATIONS[i]` takes a store from format `i` to `i + 1`.
type Migration = fn(&crate::sync::store::kv::Db) -> Result<(), StoreError>;
const MIGRATIONS: [Migration; STORE_FORMAT as usize] = [
    // 0 → 1: the layout is unchanged; the format is recorded from now on, and the `heads`
    // tree (a cache, rebuilt on demand) is cleared so every entry is re-derived from chunks.
    |db| {
        let heads = db.open_tree("heads").map_err(err("open heads"))?;
        heads.clear().map_err(err("clear heads"))
    },
];

fn migrate(
    db: &crate::sync::store::kv::Db,
    meta: &crate::sync::store::kv::Tree,
    path: &str,
) -> Result<(), StoreError> {
    let read = || -> Result<u64, StoreError> {
        Ok(meta
            .get("store-format")
            .map_err(err("read store format"))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    };
    let mut format = read()?;
    // A brand-new store starts at the current format.
    if format == 0
        && meta
            .get("storage-id")
            .map_err(err("read storage id"))?
            .is_none()
    {
        format = STORE_FORMAT;
    }
    if format > STORE_FORMAT {
        return Err(StoreError::Format {
            path: path.to_string(),
            found: format,
            supported: STORE_FORMAT,
        });
    }
    while format < STORE_FORMAT {
        let step = MIGRATIONS[format as usize];
        step(db)?;
        format += 1;
        meta.insert("store-format", &format.to_be_bytes())
            .map_err(err("write store format"))?;
        db.flush().map_err(err("flush"))?;
        tracing::info!(format, "store migrated");
    }
    meta.insert("store-format", &format.to_be_bytes())
        .map_err(err("write store format"))?;
    Ok(())
}

/// The store, on either engine.
pub struct Store {
    db: crate::sync::store::kv::Db,
    /// Writers of the document trees (chunks, heads, sync states, seq) hold it shared; a backup
    /// holds it exclusively while it copies them, so its copy is a state the store was in.
    gate: std::sync::RwLock<()>,
    /// Where it is (sled: the directory `probe` also writes a file into).
    location: StoreLocation,
    chunks: crate::sync::store::kv::Tree,
    sync_states: crate::sync::store::kv::Tree,
    heads: crate::sync::store::kv::Tree,
    /// The `heads` entries read or written, kept in memory (true while this process is the
    /// only writer; on a shared store an entry is dropped when the change feed reports another
    /// server's write): a reconnecting tablet's summary exchange then costs no database round
    /// trip per document on PostgreSQL. Bounded: cleared past [`HEADS_CACHED`] documents.
    heads_cache: std::sync::Mutex<std::collections::HashMap<DocumentId, sled::IVec>>,
    meta: crate::sync::store::kv::Tree,
    storage_id: String,
    /// Largest sequence number written (not necessarily flushed).
    written: AtomicU64,
    /// Each document's version: its newest chunk sequence number (from the keys at open, then
    /// every write), or on a shared store a fresh number per write another server made (from
    /// the change feed): what the read model checks its entries against, without reading a
    /// chunk. Ordered by id, it is also the index of stored documents: the summary exchange
    /// resolves an id prefix here, in memory, instead of in the chunks tree (a database round
    /// trip per document on PostgreSQL). Complete for this process's writes at once, and for
    /// another server's once the feed reports them (a document not yet listed is synced one
    /// by one, from the store).
    latest: std::sync::Mutex<std::collections::BTreeMap<DocumentId, u64>>,
    /// Each patient and patient-month document read into the model, kept by sequence number.
    pub read_model: crate::sync::store::read_model::ReadModel,
    /// The practices billed for (`practices::PracticeRegistry`).
    pub practices: practices::PracticeRegistry,
    /// Several servers write this store (PostgreSQL): see [`Writers`].
    writers: Option<Writers>,
}

/// What a store shared by several active servers (PostgreSQL) needs beyond one writer's.
///
/// - **Chunk numbers.** Each process takes a number from the database's `rounds_ids` at open
///   (its *epoch*) and numbers its chunks `epoch << 32 | n`: two servers never write the same
///   chunk key.
/// - **Compaction.** A snapshot replaces this process's own older chunks (its document holds
///   them), and another writer's chunks only when the snapshot already contains every change
///   in them (checked by loading them into the snapshot); the removal names each key, so a
///   chunk committed meanwhile is never removed.
/// - **Heads.** The `heads` entry is written in the chunk's transaction, compare-and-set
///   against the entry this process read before loading the document (`known`): when another
///   server wrote in between, the entry is marked invalid instead (this copy may lack its
///   change), and the next reader computes it again from the chunks.
/// - **Fan-out.** Every write adds a `changes` entry (announced with `pg_notify`); [`feed`]
///   hands the other servers' writes to the hubs, the read model and the caches here
///   ([`Store::foreign_change`]).
struct Writers {
    epoch: u64,
    /// Per loaded document, the `heads` entry read before its chunks were (None: there was none).
    known: std::sync::Mutex<std::collections::HashMap<DocumentId, Option<Vec<u8>>>>,
    /// Versions given to documents another server changed (the read model compares them).
    versions: AtomicU64,
}

impl Writers {
    fn owns(&self, seq: u64) -> bool {
        seq >> 32 == self.epoch
    }
}

/// A `heads` entry: `seq` ‖ the heads, 32 bytes each.
fn heads_entry(seq: u64, heads: &[automerge::ChangeHash]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 32 * heads.len());
    v.extend_from_slice(&seq.to_be_bytes());
    for h in heads {
        v.extend_from_slice(&h.0);
    }
    v
}

/// A `heads` entry marked invalid by `seq`'s writer (recomputed on the next read).
fn invalid_heads(seq: u64) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.push(0xff);
    v
}

/// The heads in a `heads` entry, when it is well formed (and, for sled, describes chunk `latest`).
fn parse_heads(v: &[u8], latest: Option<u64>) -> Option<Vec<automerge::ChangeHash>> {
    if v.len() < 8 + 32 || !(v.len() - 8).is_multiple_of(32) {
        return None;
    }
    if let Some(l) = latest
        && v[..8] != l.to_be_bytes()
    {
        return None;
    }
    Some(
        v[8..]
            .chunks_exact(32)
            .filter_map(|h| <[u8; 32]>::try_from(h).ok())
            .map(automerge::ChangeHash)
            .collect(),
    )
}

/// The sequence number in a chunk key.
fn seq_of(key: &[u8]) -> Option<u64> {
    key.get(16..24)
        .and_then(|t| <[u8; 8]>::try_from(t).ok())
        .map(u64::from_be_bytes)
}

/// Whether `snapshot` (a whole document) already holds every change in `chunks`.
fn contains_all(snapshot: &[u8], chunks: &[Vec<u8>]) -> bool {
    let Ok(mut doc) = automerge::Automerge::load(snapshot) else {
        return false;
    };
    let before = doc.get_heads();
    for c in chunks {
        if doc.load_incremental(c).is_err() {
            return false;
        }
    }
    use automerge::ReadDoc;
    doc.get_heads() == before && doc.get_missing_deps(&[]).is_empty()
}

fn chunk_key(doc: &DocumentId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(doc.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl Store {
    /// Open (or create) the sled store in `dir/db`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_at(&StoreLocation::Dir(dir.to_path_buf()))
    }

    /// Open (or create) the store: sled in `DIR/db`, or the PostgreSQL database (its schema
    /// migrated on open).
    pub fn open_at(location: &StoreLocation) -> Result<Store, StoreError> {
        let db = match location {
            StoreLocation::Dir(dir) => {
                let path = dir.join("db");
                kv::Db::Sled(
                    sled::Config::new()
                        .path(&path)
                        .flush_every_ms(Some(1000))
                        .open()
                        .map_err(|source| StoreError::Open {
                            path: path.display().to_string(),
                            source: source.into(),
                        })?,
                )
            }
            StoreLocation::Postgres(url) => {
                kv::Db::Pg(kv::pg::PgKv::open(url, PG_POOL_SIZE).map_err(|source| {
                    StoreError::Open {
                        path: kv::pg::redact(url),
                        source,
                    }
                })?)
            }
        };
        let path = location.to_string();
        let chunks = db.open_tree("chunks").map_err(err("open chunks"))?;
        let sync_states = db
            .open_tree("sync_states")
            .map_err(err("open sync_states"))?;
        let meta = db.open_tree("meta").map_err(err("open meta"))?;
        let heads = db.open_tree("heads").map_err(err("open heads"))?;
        migrate(&db, &meta, &path)?;
        let storage_id = match meta.get("storage-id").map_err(err("read storage id"))? {
            Some(v) => String::from_utf8_lossy(&v).to_string(),
            None => {
                // Servers opening one new database together agree on the first id written.
                let id = uuid::Uuid::new_v4().to_string();
                let _ = meta
                    .compare_and_swap("storage-id", None::<&[u8]>, Some(id.as_bytes()))
                    .map_err(err("write storage id"))?;
                db.flush().map_err(err("flush"))?;
                meta.get("storage-id")
                    .map_err(err("read storage id"))?
                    .map_or(id, |v| String::from_utf8_lossy(&v).to_string())
            }
        };
        let mut seq = meta
            .get("seq")
            .map_err(err("read seq"))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        // A chunk may be durable while the seq record is not: take the larger.
        let mut latest = std::collections::BTreeMap::new();
        for k in chunks.iter_keys().flatten() {
            if let (Some(id), Some(tail)) = (
                k.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                k.get(16..24).and_then(|t| <[u8; 8]>::try_from(t).ok()),
            ) {
                let n = u64::from_be_bytes(tail);
                seq = seq.max(n);
                let e = latest.entry(DocumentId::from_bytes(id)).or_insert(n);
                *e = (*e).max(n);
            }
        }
        let writers = match &db {
            kv::Db::Pg(_) => {
                db.open_tree("changes").map_err(err("open changes"))?;
                let epoch = db.generate_id().map_err(err("take an epoch"))?;
                if epoch >= 1 << 31 {
                    return Err(StoreError::Kv {
                        op: "take an epoch",
                        source: kv::KvError::Pool(kv::pg::PoolError::Thread(format!(
                            "rounds_ids reached {epoch}: chunk numbers would overflow"
                        ))),
                    });
                }
                seq = epoch << 32;
                Some(Writers {
                    epoch,
                    known: std::sync::Mutex::new(std::collections::HashMap::new()),
                    versions: AtomicU64::new((epoch << 32) | (1 << 31)),
                })
            }
            kv::Db::Sled(_) => None,
        };
        let read_model =
            crate::sync::store::read_model::ReadModel::open(&db).map_err(err("open read_model"))?;
        let practices = practices::PracticeRegistry::open(&db).map_err(err("open practices"))?;
        Ok(Store {
            gate: std::sync::RwLock::new(()),
            practices,
            location: location.clone(),
            db,
            chunks,
            sync_states,
            heads,
            heads_cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            meta,
            storage_id,
            written: AtomicU64::new(seq),
            latest: std::sync::Mutex::new(latest),
            read_model,
            writers,
        })
    }

    /// Whether the store takes a durable write now: a record through sled and flushed, and a
    /// file written and synced in the store directory (a disk gone, full or read-only fails).
    pub fn probe(&self) -> Result<(), String> {
        let now = chrono::Utc::now().to_rfc3339();
        self.meta
            .insert("ready-probe", now.as_bytes())
            .map_err(|e| format!("store write: {e}"))?;
        self.db.flush().map_err(|e| format!("store flush: {e}"))?;
        let Some(dir) = self.location.dir() else {
            return Ok(());
        };
        let path = dir.join(".ready-probe");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&path)?;
            f.write_all(now.as_bytes())?;
            f.sync_all()?;
            std::fs::remove_file(&path)
        };
        write().map_err(|e| format!("store directory {}: {e}", dir.display()))
    }

    /// The underlying database (for the security trees).
    pub fn db(&self) -> &crate::sync::store::kv::Db {
        &self.db
    }

    /// This store's stable storage id (sent to peers).
    pub fn storage_id(&self) -> &str {
        &self.storage_id
    }

    /// The largest sequence number written.
    pub fn written_seq(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Store a chunk; a snapshot replaces the document's older chunks atomically.
    pub fn persist(
        &self,
        doc: &DocumentId,
        seq: u64,
        chunk: &[u8],
        snapshot: bool,
    ) -> Result<(), StoreError> {
        self.persist_with_heads(doc, seq, chunk, snapshot, None)
    }

    /// Store a chunk written from a document whose heads are now `heads` (the hub's copy):
    /// they are recorded for the summary exchange (on a shared store only when no other server
    /// wrote the document since this copy was read; see [`Writers`]).
    pub fn persist_with_heads(
        &self,
        doc: &DocumentId,
        seq: u64,
        chunk: &[u8],
        snapshot: bool,
        heads: Option<&[automerge::ChangeHash]>,
    ) -> Result<(), StoreError> {
        if let Some(w) = &self.writers {
            return self.persist_shared(w, doc, seq, chunk, snapshot, heads);
        }
        {
            let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
            let mut batch = kv::Batch::default();
            if snapshot {
                for k in self.chunks.scan_prefix(doc.as_bytes()).keys() {
                    let k = k.map_err(err("scan chunks"))?;
                    if k.as_ref() < chunk_key(doc, seq).as_slice() {
                        batch.remove(k);
                    }
                }
            }
            batch.insert(chunk_key(doc, seq).as_slice(), chunk);
            let mut seq_record = kv::Batch::default();
            seq_record.insert("seq", seq.to_be_bytes());
            self.db
                .apply_batches(vec![(&self.chunks, batch), (&self.meta, seq_record)])
                .map_err(err("write chunk"))?;
            {
                let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
                let e = latest.entry(*doc).or_insert(seq);
                *e = (*e).max(seq);
            }
            self.written.fetch_max(seq, Ordering::SeqCst);
        }
        match heads {
            Some(h) => self.record_heads(doc, seq, h),
            None => Ok(()),
        }
    }

    fn persist_shared(
        &self,
        w: &Writers,
        doc: &DocumentId,
        seq: u64,
        chunk: &[u8],
        snapshot: bool,
        heads: Option<&[automerge::ChangeHash]>,
    ) -> Result<(), StoreError> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let key = chunk_key(doc, seq);
        let mut removes = Vec::new();
        if snapshot {
            let mut foreign = (Vec::new(), Vec::new());
            for item in self.chunks.scan_prefix(doc.as_bytes()) {
                let (k, v) = item.map_err(err("scan chunks"))?;
                let Some(s) = seq_of(&k) else { continue };
                if s == seq {
                    continue;
                }
                if w.owns(s) && s < seq {
                    removes.push(k.to_vec());
                } else {
                    foreign.0.push(k.to_vec());
                    foreign.1.push(v.to_vec());
                }
            }
            if !foreign.0.is_empty() && contains_all(chunk, &foreign.1) {
                removes.extend(foreign.0);
            }
        }
        let expected = {
            let mut known = w.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= HEADS_CACHED {
                known.clear();
            }
            known.get(doc).cloned()
        };
        let value = match (heads, &expected) {
            (Some(h), Some(_)) => Some(heads_entry(seq, h)),
            _ => None,
        };
        let recorded = self
            .pg()
            .ok_or(StoreError::Kv {
                op: "write chunk",
                source: kv::KvError::Pool(kv::pg::PoolError::Stopped),
            })?
            .write_chunk(kv::pg::ChunkWrite {
                key: key.to_vec(),
                chunk: chunk.to_vec(),
                removes,
                heads_key: doc.as_bytes().to_vec(),
                heads: value.clone().unwrap_or_else(|| invalid_heads(seq)),
                expected: expected.flatten(),
                invalid: invalid_heads(seq),
                change: key.to_vec(),
            })
            .map_err(err("write chunk"))?;
        {
            let mut known = w.known.lock().unwrap_or_else(|p| p.into_inner());
            match (&value, recorded) {
                (Some(v), true) => {
                    known.insert(*doc, Some(v.clone()));
                }
                _ => {
                    known.remove(doc);
                }
            }
        }
        match value.filter(|_| recorded) {
            Some(v) => self.cache_heads(*doc, v.into()),
            None => {
                self.heads_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(doc);
            }
        }
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*doc, seq);
        self.written.fetch_max(seq, Ordering::SeqCst);
        Ok(())
    }

    /// Another server wrote chunk `seq` of `doc` (from [`feed`]): forget what this process
    /// knew of the document's heads, give it a new version (the read model re-reads it), and
    /// list it if it is new. Returns false for this process's own writes (nothing to do).
    pub fn foreign_change(&self, doc: &DocumentId, seq: u64) -> bool {
        let Some(w) = &self.writers else {
            return false;
        };
        if w.owns(seq) {
            return false;
        }
        let version = w.versions.fetch_add(1, Ordering::SeqCst);
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*doc, version);
        self.heads_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(doc);
        true
    }

    /// The actor this process writes the server's own changes with (alerts): on a shared store
    /// one per process (`policy::server_instance_actor`), else the store's.
    pub fn server_actor(&self) -> Vec<u8> {
        match &self.writers {
            Some(w) => rounds_core::policy::server_instance_actor(&self.storage_id, w.epoch),
            None => rounds_core::policy::server_actor(&self.storage_id),
        }
    }

    /// The actor, or actor prefix, no device may write with (every server's).
    pub fn reserved_actor(&self) -> Vec<u8> {
        match &self.writers {
            Some(_) => rounds_core::policy::server_actor_prefix(&self.storage_id),
            None => rounds_core::policy::server_actor(&self.storage_id),
        }
    }

    /// Whether several servers may write this store at once (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.writers.is_some()
    }

    /// The PostgreSQL database, when the store is one (the change feed).
    pub fn pg(&self) -> Option<&std::sync::Arc<kv::pg::PgKv>> {
        match &self.db {
            kv::Db::Pg(pg) => Some(pg),
            kv::Db::Sled(_) => None,
        }
    }

    pub fn save_sync_state(
        &self,
        doc: &DocumentId,
        peer_storage: &str,
        state: &[u8],
    ) -> Result<(), StoreError> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut key = doc.as_bytes().to_vec();
        key.extend_from_slice(peer_storage.as_bytes());
        self.sync_states
            .insert(key, state)
            .map_err(err("write sync state"))?;
        Ok(())
    }

    /// Record a document's heads as of its chunk `seq` (see the `heads` tree; one writer only:
    /// a shared store records them in the chunk's transaction).
    fn record_heads(
        &self,
        doc: &DocumentId,
        seq: u64,
        heads: &[automerge::ChangeHash],
    ) -> Result<(), StoreError> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let v = heads_entry(seq, heads);
        self.heads
            .insert(doc.as_bytes(), v.clone())
            .map_err(err("write heads"))?;
        self.cache_heads(*doc, v.into());
        Ok(())
    }

    /// A stored document's heads: from the `heads` tree when it describes the newest chunk
    /// (sled) or is not marked invalid (shared store), else computed from the chunks (and
    /// recorded).
    pub fn stored_heads(
        &self,
        doc: &DocumentId,
    ) -> Result<Option<Vec<automerge::ChangeHash>>, StoreError> {
        let Some(latest) = self.latest_seq(doc) else {
            return Ok(None);
        };
        let latest = if self.writers.is_some() {
            None
        } else {
            Some(latest)
        };
        let cached = self
            .heads_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(doc)
            .cloned();
        if let Some(h) = cached.as_deref().and_then(|v| parse_heads(v, latest)) {
            return Ok(Some(h));
        }
        let read = self.heads.get(doc.as_bytes()).map_err(err("read heads"))?;
        if let Some(h) = read.as_deref().and_then(|v| parse_heads(v, latest)) {
            if let Some(v) = read {
                self.cache_heads(*doc, v);
            }
            return Ok(Some(h));
        }
        // Read after the entry: a write in between changes the entry, and the swap below fails.
        let Some(d) = self.load_doc(doc) else {
            return Ok(None);
        };
        let heads = d.get_heads();
        match latest {
            Some(l) => self.record_heads(doc, l, &heads)?,
            None => {
                let v = heads_entry(0, &heads);
                let swapped = self
                    .heads
                    .compare_and_swap(doc.as_bytes(), read.as_deref(), Some(v.clone()))
                    .map_err(err("write heads"))?;
                if swapped.is_ok() {
                    self.cache_heads(*doc, v.into());
                }
            }
        }
        Ok(Some(heads))
    }

    fn cache_heads(&self, doc: DocumentId, v: sled::IVec) {
        let mut cache = self.heads_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= HEADS_CACHED {
            cache.clear();
        }
        cache.insert(doc, v);
    }

    /// Hold off the document writers (see `gate`) while a backup copies the document trees.
    pub fn freeze(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The names of the trees that hold the documents (copied under [`Store::freeze`]).
    pub const DOCUMENT_TREES: [&'static str; 4] = ["chunks", "heads", "meta", "sync_states"];

    /// A small file kept with the store (the admin credential): `DIR/<name>` for sled (mode
    /// 0600); on PostgreSQL the `meta` tree's `file:<name>`, so every server and every command
    /// on the database shares it.
    pub fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.location.dir() {
            Some(dir) => match std::fs::read(dir.join(name)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::File {
                    path: dir.join(name).display().to_string(),
                    source: e,
                }),
            },
            None => Ok(self
                .meta
                .get(format!("file:{name}"))
                .map_err(err("read a file"))?
                .map(|v| v.to_vec())),
        }
    }

    /// Create a file kept with the store unless it exists (the first writer wins, across
    /// servers too); returns what it holds.
    pub fn create_file(&self, name: &str, contents: &[u8]) -> Result<Vec<u8>, StoreError> {
        if let Some(existing) = self.read_file(name)? {
            return Ok(existing);
        }
        match self.location.dir() {
            Some(dir) => {
                let path = dir.join(name);
                let write = || -> std::io::Result<()> {
                    use std::io::Write;
                    let mut opts = std::fs::OpenOptions::new();
                    opts.write(true).create_new(true);
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::OpenOptionsExt;
                        opts.mode(0o600);
                    }
                    let mut f = opts.open(&path)?;
                    f.write_all(contents)?;
                    f.sync_all()
                };
                write().map_err(|source| StoreError::File {
                    path: path.display().to_string(),
                    source,
                })?;
                Ok(contents.to_vec())
            }
            None => {
                let key = format!("file:{name}");
                let _ = self
                    .meta
                    .compare_and_swap(&key, None::<&[u8]>, Some(contents))
                    .map_err(err("write a file"))?;
                Ok(self.read_file(name)?.unwrap_or_else(|| contents.to_vec()))
            }
        }
    }

    /// Record a file with a shared (PostgreSQL) store, replacing what was there (the
    /// certificate a server serves, which commands on the database pin). Sled: nothing to do —
    /// the files are in the directory.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<(), StoreError> {
        if self.location.dir().is_none() {
            self.meta
                .insert(format!("file:{name}"), contents.to_vec())
                .map_err(err("write a file"))?;
        }
        Ok(())
    }

    /// The `meta` tree (leases).
    pub fn meta(&self) -> &kv::Tree {
        &self.meta
    }

    /// The database (for `rounds migrate`'s copy).
    pub fn kv(&self) -> &kv::Db {
        &self.db
    }

    /// Where the store is.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// The store directory (None on PostgreSQL).
    pub fn dir(&self) -> Option<&Path> {
        self.location.dir()
    }

    /// Make everything written so far durable (fsync).
    pub fn flush(&self) -> Result<usize, StoreError> {
        self.db.flush().map_err(err("flush"))
    }

    /// A document's newest chunk sequence number (None: not stored).
    pub fn latest_seq(&self, doc: &DocumentId) -> Option<u64> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(doc)
            .copied()
    }

    /// Several documents' newest chunk sequence numbers, under one lock.
    pub fn latest_seqs(&self, docs: &[DocumentId]) -> Vec<Option<u64>> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        docs.iter().map(|d| latest.get(d).copied()).collect()
    }

    /// Every document id with stored chunks, in id order.
    pub fn document_ids(&self) -> Vec<DocumentId> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// A stored document, loaded (None when the store does not have it).
    pub fn load_doc(&self, id: &DocumentId) -> Option<automerge::Automerge> {
        let chunks = self.chunks_of(id).ok()??;
        let mut doc = automerge::Automerge::new();
        for c in chunks {
            if let Err(e) = doc.load_incremental(&c) {
                tracing::error!(doc = %id, error = %e, "stored chunk does not load");
            }
        }
        Some(doc)
    }

    /// Number of stored chunks of a document.
    pub fn chunk_count(&self, doc: &DocumentId) -> usize {
        self.chunks.scan_prefix(doc.as_bytes()).count()
    }
}

impl Store {
    /// Every stored chunk of a document (None: not stored).
    fn chunks_of(&self, doc: &DocumentId) -> Result<Option<Vec<Vec<u8>>>, String> {
        let mut out = Vec::new();
        for v in self.chunks.scan_prefix(doc.as_bytes()).values() {
            out.push(v.map_err(|e| e.to_string())?.to_vec());
        }
        Ok(if out.is_empty() { None } else { Some(out) })
    }
}

/// The hub's reads. On a shared store, loading a document first notes its `heads` entry: the
/// hub's copy then holds every change written up to that entry (see [`Writers`]).
impl Loader for &Store {
    fn load(&mut self, doc: &DocumentId) -> Result<Option<Vec<Vec<u8>>>, String> {
        if let Some(w) = &self.writers {
            let entry = self
                .heads
                .get(doc.as_bytes())
                .map_err(|e| e.to_string())?
                .map(|v| v.to_vec());
            let chunks = self.chunks_of(doc)?;
            let mut known = w.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= HEADS_CACHED {
                known.clear();
            }
            known.insert(*doc, entry);
            return Ok(chunks);
        }
        self.chunks_of(doc)
    }

    fn load_sync_state(&mut self, doc: &DocumentId, peer_storage: &str) -> Option<Vec<u8>> {
        let mut key = doc.as_bytes().to_vec();
        key.extend_from_slice(peer_storage.as_bytes());
        self.sync_states.get(key).ok().flatten().map(|v| v.to_vec())
    }

    fn heads(&mut self, doc: &DocumentId) -> Result<Option<Vec<automerge::ChangeHash>>, String> {
        self.stored_heads(doc).map_err(|e| e.to_string())
    }

    /// The documents whose ids start with the prefix: at most two are looked at, in memory.
    fn resolve(&mut self, prefix: &summary::Prefix) -> summary::Resolved {
        let mut low = [0u8; 16];
        let n = prefix.len().min(16);
        low[..n].copy_from_slice(&prefix[..n]);
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let mut matching = latest
            .range(DocumentId::from_bytes(low)..)
            .map(|(id, _)| *id)
            .take_while(|id| id.as_bytes().starts_with(&prefix[..n]));
        match (matching.next(), matching.next()) {
            (None, _) => summary::Resolved::None,
            (Some(id), None) => summary::Resolved::One(id),
            (Some(_), Some(_)) => summary::Resolved::Many,
        }
    }
}
