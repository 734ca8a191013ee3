//! `rounds backup` and `rounds restore`: a consistent copy of a store while the server runs.
//!
//! Contract: the backup directory holds a complete store (`db/`, the TLS files and credentials
//! beside it) and `rounds-backup.json`, the manifest: the format, when, and every document's heads
//! in the copy. The document trees (chunks, heads, seq, sync states) are copied while the store's
//! document writers are held off ([`Store::freeze`]), so the copy is a state the store was
//! in — no chunk without the chunks before it; a sync storm only waits for the copy. The other
//! trees (ledger, outboxes, audit, devices, accounts, quarantine, read model) are copied record
//! by record after it, each record whole. The copy is flushed before the manifest is written:
//! a directory without a manifest is not a backup. Restore copies a backup into an empty
//! directory, opens it (running the store's migrations) and checks every document's heads
//! against the manifest before it says done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sync::store::Store;

/// The manifest's format.
pub const BACKUP_FORMAT: u32 = 1;
const MANIFEST: &str = "rounds-backup.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub storage_id: String,
    pub store_format: u64,
    /// Records per tree.
    pub trees: BTreeMap<String, u64>,
    /// Document id (automerge URL form) → its heads (hex), in the copy.
    pub documents: BTreeMap<String, Vec<String>>,
}

impl Manifest {
    /// What `rounds backup` prints (and the admin API answers).
    pub fn summary(&self, to: &Path) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "backup": to,
            "created_at": self.created_at,
            "documents": self.documents.len(),
            "trees": self.trees,
        }))
        .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {message}")]
    Target { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("copying tree {tree}: {source}")]
    Kv {
        tree: String,
        #[source]
        source: crate::sync::store::kv::KvError,
    },
    #[error(
        "a PostgreSQL store is backed up by the database's own tools (pg_dump, or base backups with WAL archiving for point-in-time recovery), not `rounds backup`"
    )]
    NotADirectory,
    #[error(transparent)]
    Store(#[from] crate::sync::store::StoreError),
    #[error("{0}")]
    Verify(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An empty (or absent) directory to write into.
fn empty_target(dir: &Path) -> Result<(), BackupError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(BackupError::Target {
                path: dir.to_path_buf(),
                message: "not empty: give a new directory".into(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))
}

/// Copy every entry of `from` into the tree `name` of `to`, in batches; returns the count.
pub fn copy_tree(
    from: &crate::sync::store::kv::Tree,
    to: &crate::sync::store::kv::Db,
    name: &str,
) -> Result<u64, crate::sync::store::kv::KvError> {
    let target = to.open_tree(name)?;
    let mut n = 0;
    let mut batch = crate::sync::store::kv::Batch::default();
    for kv in from.iter() {
        let (k, v) = kv?;
        batch.insert(k, v);
        n += 1;
        if batch.len() == 2_000 {
            target.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    target.apply_batch(batch)?;
    Ok(n)
}

/// Files beside the database (TLS certificate and key, admin token, …), recursively.
fn copy_files(from: &Path, to: &Path, skip: &[&str]) -> Result<usize, BackupError> {
    let mut n = 0;
    for e in std::fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(io(from))?;
        let name = e.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        let kind = e.file_type().map_err(io(&src))?;
        if kind.is_dir() {
            std::fs::create_dir_all(&dst).map_err(io(&dst))?;
            n += copy_files(&src, &dst, &[])?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Every document's heads in a store (sorted), by document URL.
pub(crate) fn heads_of(store: &Store) -> BTreeMap<String, Vec<String>> {
    store
        .document_ids()
        .into_iter()
        .map(|id| {
            let mut heads: Vec<String> = store
                .load_doc(&id)
                .map(|d| d.get_heads().iter().map(|h| h.to_string()).collect())
                .unwrap_or_default();
            heads.sort();
            (id.url(), heads)
        })
        .collect()
}

/// Back `store` up into `to` (absent or empty). `progress` hears each step.
pub fn backup(
    store: &Store,
    to: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Manifest, BackupError> {
    let Some(store_dir) = store.dir() else {
        return Err(BackupError::NotADirectory);
    };
    empty_target(to)?;
    let db_path = to.join("db");
    let kv_err = |tree: &str| {
        let tree = tree.to_string();
        move |source| BackupError::Kv { tree, source }
    };
    let copy = crate::sync::store::kv::Db::Sled(
        sled::Config::new()
            .path(&db_path)
            .flush_every_ms(None)
            .open()
            .map_err(|source| BackupError::Kv {
                tree: "(open)".into(),
                source: source.into(),
            })?,
    );
    let mut trees = BTreeMap::new();
    {
        let _frozen = store.freeze();
        for name in Store::DOCUMENT_TREES {
            let t = store.db().open_tree(name).map_err(kv_err(name))?;
            trees.insert(
                name.to_string(),
                copy_tree(&t, &copy, name).map_err(kv_err(name))?,
            );
        }
    }
    progress(&format!(
        "documents copied ({} chunks)",
        trees.get("chunks").copied().unwrap_or(0)
    ));
    for name in store.db().tree_names().map_err(kv_err("(list)"))? {
        if Store::DOCUMENT_TREES.contains(&name.as_str()) {
            continue;
        }
        let t = store.db().open_tree(&name).map_err(kv_err(&name))?;
        let n = copy_tree(&t, &copy, &name).map_err(kv_err(&name))?;
        trees.insert(name, n);
    }
    progress(&format!("{} trees copied", trees.len()));
    copy.flush().map_err(kv_err("(flush)"))?;
    drop(copy);
    let files = copy_files(store_dir, to, &["db", MANIFEST, ".ready-probe"])?;
    progress(&format!("{files} files beside the database copied"));
    // Read the copy back: its heads are the manifest's.
    let copied = Store::open(to)?;
    let documents = heads_of(&copied);
    let manifest = Manifest {
        format: BACKUP_FORMAT,
        created_at: chrono::Utc::now(),
        storage_id: copied.storage_id().to_string(),
        store_format: crate::sync::store::STORE_FORMAT,
        trees,
        documents,
    };
    drop(copied);
    let path = to.join(MANIFEST);
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Target {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_synced(&path, &text)?;
    progress(&format!(
        "manifest written: {} documents",
        manifest.documents.len()
    ));
    Ok(manifest)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Read a backup's manifest (refusing a directory that is not a complete backup).
pub fn manifest(from: &Path) -> Result<Manifest, BackupError> {
    let path = from.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| BackupError::Target {
        path: path.clone(),
        message: format!("{e}: not a complete backup (no manifest)"),
    })?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| BackupError::Target {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if m.format > BACKUP_FORMAT {
        return Err(BackupError::Target {
            path,
            message: format!(
                "backup format {} is newer than this rounds understands ({BACKUP_FORMAT})",
                m.format
            ),
        });
    }
    Ok(m)
}

/// Restore the backup in `from` into the store directory `to` (absent or empty), then check
/// every document's heads against the manifest. Returns the manifest.
pub fn restore(
    from: &Path,
    to: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Manifest, BackupError> {
    let m = manifest(from)?;
    empty_target(to)?;
    let files = copy_files(from, to, &[MANIFEST])?;
    progress(&format!("{files} files copied"));
    let store = Store::open(to)?;
    let heads = heads_of(&store);
    if heads != m.documents {
        let differ = m
            .documents
            .iter()
            .filter(|(id, h)| heads.get(*id) != Some(h))
            .map(|(id, _)| id.clone())
            .chain(
                heads
                    .keys()
                    .filter(|id| !m.documents.contains_key(*id))
                    .cloned(),
            )
            .take(5)
            .collect::<Vec<_>>();
        return Err(BackupError::Verify(format!(
            "the restored store does not match the manifest: documents {} differ",
            differ.join(", ")
        )));
    }
    store.flush()?;
    progress(&format!("{} documents verified", heads.len()));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_a_whole_backup_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let e = manifest(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no manifest"), "{e}");
        std::fs::write(dir.path().join(MANIFEST), b"{not json").unwrap_or_else(|e| panic!("{e}"));
        let e = manifest(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(MANIFEST), "{e}");
        let newer = serde_json::json!({
            "format": BACKUP_FORMAT + 1, "created_at": "2026-12-06T00:00:00Z",
            "storage_id": "x", "store_format": 1, "trees": {}, "documents": {}
        });
        std::fs::write(dir.path().join(MANIFEST), newer.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let e = manifest(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("newer"), "{e}");
        // Restoring it writes nothing.
        let to = dir.path().join("restored");
        assert!(restore(dir.path(), &to, &mut |_| {}).is_err());
        assert!(!to.exists());
    }
}
