//! Server storage in sled, behind the narrow [`Loader`] reads of the hub plus a few writes.
//!
//! Trees: `chunks` (key = document id ‖ sequence number, big-endian; value = an Automerge chunk —
//! incremental changes or a whole-document snapshot), `sync_states` (key = document id ‖ peer
//! storage id), `heads` (key = document id; value = the sequence number of the newest chunk it
//! describes ‖ the document's heads, 32 bytes each: what the summary exchange compares without
//! loading the document — an entry older than the newest chunk is recomputed from the chunks),
//! `meta` (`storage-id`, `seq`), `practices` (`practices::PracticeRegistry`). A snapshot replaces the chunks with smaller sequence
//! numbers in one atomic batch, so a crash during compaction leaves either the old chunks or the
//! snapshot, never neither.

pub mod practices;
pub mod read_model;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rounds_core::DocumentId;
use rounds_core::sync::hub::Loader;
use rounds_core::sync::summary;

/// Storage failures, with the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("store {op}: {source}")]
    Sled {
        op: &'static str,
        #[source]
        source: sled::Error,
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

fn err(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |source| StoreError::Sled { op, source }
}

/// The store's format: `meta/store-format`. A store without it (made before formats were
/// recorded) is format 0; opening runs the migrations from its format up to this one, each
/// recorded as it completes; a store of a newer format is refused.
pub const STORE_FORMAT: u64 = 1;

/// The migrations: `MIGRATIONS[i]` takes a store from format `i` to `i + 1`.
type Migration = fn(&sled::Db) -> Result<(), StoreError>;
const MIGRATIONS: [Migration; STORE_FORMAT as usize] = [
    // 0 → 1: the layout is unchanged; the format is recorded from now on, and the `heads`
    // tree (a cache, rebuilt on demand) is cleared so every entry is re-derived from chunks.
    |db| {
        let heads = db.open_tree("heads").map_err(err("open heads"))?;
        heads.clear().map_err(err("clear heads"))
    },
];

fn migrate(db: &sled::Db, meta: &sled::Tree, path: &Path) -> Result<(), StoreError> {
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
            path: path.display().to_string(),
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

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    /// Writers of the document trees (chunks, heads, sync states, seq) hold it shared; a backup
    /// holds it exclusively while it copies them, so its copy is a state the store was in.
    gate: std::sync::RwLock<()>,
    /// The store directory (what `probe` writes into).
    dir: std::path::PathBuf,
    chunks: sled::Tree,
    sync_states: sled::Tree,
    heads: sled::Tree,
    meta: sled::Tree,
    storage_id: String,
    /// Largest sequence number written (not necessarily flushed).
    written: AtomicU64,
    /// Each document's newest chunk sequence number (from the keys at open, then every write):
    /// what the read model checks its entries against, without reading a chunk.
    latest: std::sync::Mutex<std::collections::HashMap<DocumentId, u64>>,
    /// Each patient and patient-month document read into the model, kept by sequence number.
    pub read_model: crate::sync::store::read_model::ReadModel,
    /// The practices billed for (`practices::PracticeRegistry`).
    pub practices: practices::PracticeRegistry,
}

fn chunk_key(doc: &DocumentId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(doc.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl SledStore {
    /// Open (or create) the store in `dir/db`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
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
                let id = uuid::Uuid::new_v4().to_string();
                meta.insert("storage-id", id.as_bytes())
                    .map_err(err("write storage id"))?;
                db.flush().map_err(err("flush"))?;
                id
            }
        };
        let mut seq = meta
            .get("seq")
            .map_err(err("read seq"))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        // A chunk may be durable while the seq record is not: take the larger.
        let mut latest = std::collections::HashMap::new();
        for k in chunks.iter().keys().flatten() {
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
        let read_model =
            crate::sync::store::read_model::ReadModel::open(&db).map_err(err("open read_model"))?;
        let practices = practices::PracticeRegistry::open(&db).map_err(err("open practices"))?;
        Ok(SledStore {
            gate: std::sync::RwLock::new(()),
            practices,
            dir: dir.to_path_buf(),
            db,
            chunks,
            sync_states,
            heads,
            meta,
            storage_id,
            written: AtomicU64::new(seq),
            latest: std::sync::Mutex::new(latest),
            read_model,
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
        let path = self.dir.join(".ready-probe");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&path)?;
            f.write_all(now.as_bytes())?;
            f.sync_all()?;
            std::fs::remove_file(&path)
        };
        write().map_err(|e| format!("store directory {}: {e}", self.dir.display()))
    }

    /// The underlying database (for the security trees).
    pub fn db(&self) -> &sled::Db {
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
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        if snapshot {
            for k in self.chunks.scan_prefix(doc.as_bytes()).keys() {
                let k = k.map_err(err("scan chunks"))?;
                if k.as_ref() < chunk_key(doc, seq).as_slice() {
                    batch.remove(k);
                }
            }
        }
        batch.insert(chunk_key(doc, seq).as_slice(), chunk);
        self.chunks.apply_batch(batch).map_err(err("write chunk"))?;
        {
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            let e = latest.entry(*doc).or_insert(seq);
            *e = (*e).max(seq);
        }
        self.meta
            .insert("seq", &seq.to_be_bytes())
            .map_err(err("write seq"))?;
        self.written.fetch_max(seq, Ordering::SeqCst);
        Ok(())
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

    /// Record a document's heads as of its chunk `seq` (see the `heads` tree).
    pub fn record_heads(
        &self,
        doc: &DocumentId,
        seq: u64,
        heads: &[automerge::ChangeHash],
    ) -> Result<(), StoreError> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut v = Vec::with_capacity(8 + 32 * heads.len());
        v.extend_from_slice(&seq.to_be_bytes());
        for h in heads {
            v.extend_from_slice(&h.0);
        }
        self.heads
            .insert(doc.as_bytes(), v)
            .map_err(err("write heads"))?;
        Ok(())
    }

    /// A stored document's heads: from the `heads` tree when it describes the newest chunk,
    /// else computed from the chunks (and recorded).
    pub fn stored_heads(
        &self,
        doc: &DocumentId,
    ) -> Result<Option<Vec<automerge::ChangeHash>>, StoreError> {
        let Some(latest) = self.latest_seq(doc) else {
            return Ok(None);
        };
        if let Some(v) = self.heads.get(doc.as_bytes()).map_err(err("read heads"))?
            && v.len() >= 8
            && (v.len() - 8).is_multiple_of(32)
            && v[..8] == latest.to_be_bytes()
        {
            let heads = v[8..]
                .chunks_exact(32)
                .filter_map(|h| <[u8; 32]>::try_from(h).ok())
                .map(automerge::ChangeHash)
                .collect();
            return Ok(Some(heads));
        }
        let Some(d) = self.load_doc(doc) else {
            return Ok(None);
        };
        let heads = d.get_heads();
        self.record_heads(doc, latest, &heads)?;
        Ok(Some(heads))
    }

    /// Hold off the document writers (see `gate`) while a backup copies the document trees.
    pub fn freeze(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The names of the trees that hold the documents (copied under [`SledStore::freeze`]).
    pub const DOCUMENT_TREES: [&'static str; 4] = ["chunks", "heads", "meta", "sync_states"];

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Every document id with stored chunks.
    pub fn document_ids(&self) -> Vec<DocumentId> {
        let mut out: Vec<DocumentId> = Vec::new();
        for k in self.chunks.iter().keys().flatten() {
            if let Some(id) = k.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                let id = DocumentId::from_bytes(id);
                if out.last() != Some(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// A stored document, loaded (None when the store does not have it).
    pub fn load_doc(&self, id: &DocumentId) -> Option<automerge::Automerge> {
        let mut loader = self;
        let chunks = loader.load(id).ok()??;
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

impl Loader for &SledStore {
    fn load(&mut self, doc: &DocumentId) -> Result<Option<Vec<Vec<u8>>>, String> {
        let mut out = Vec::new();
        for v in self.chunks.scan_prefix(doc.as_bytes()).values() {
            out.push(v.map_err(|e| e.to_string())?.to_vec());
        }
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    fn load_sync_state(&mut self, doc: &DocumentId, peer_storage: &str) -> Option<Vec<u8>> {
        let mut key = doc.as_bytes().to_vec();
        key.extend_from_slice(peer_storage.as_bytes());
        self.sync_states.get(key).ok().flatten().map(|v| v.to_vec())
    }

    fn heads(&mut self, doc: &DocumentId) -> Result<Option<Vec<automerge::ChangeHash>>, String> {
        self.stored_heads(doc).map_err(|e| e.to_string())
    }

    /// The documents whose chunk keys start with the prefix (keys are id ‖ sequence number):
    /// at most two distinct ids are read.
    fn resolve(&mut self, prefix: &summary::Prefix) -> summary::Resolved {
        let mut found: Option<DocumentId> = None;
        for k in self.chunks.scan_prefix(prefix).keys() {
            let Ok(k) = k else {
                return summary::Resolved::None;
            };
            let Some(id) = k.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) else {
                continue;
            };
            let id = DocumentId::from_bytes(id);
            match found {
                None => found = Some(id),
                Some(f) if f == id => {}
                Some(_) => return summary::Resolved::Many,
            }
        }
        found.map_or(summary::Resolved::None, summary::Resolved::One)
    }
}
