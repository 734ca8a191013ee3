//! `rounds migrate --from DIR --to postgres://…`: move a sled store into an empty PostgreSQL
//! database, completely, and prove it.
//!
//! Every tree is copied entry for entry (documents, sync states, devices and tokens, codes,
//! audit, ledger, outboxes, quarantine, accounts and sessions, read model, practices, meta — the
//! storage id and store format with it, so the tablets' sync states stay valid), and the admin
//! credential file moves into the database. Then the copy is checked: the same number of
//! entries in every tree, and every document's heads the same on both sides. A target that
//! holds anything is refused before a byte is written; the copy holds the database's writer
//! lease, so no server starts on it half-way.

use std::collections::BTreeMap;
use std::path::Path;

use crate::sync::store::kv::{Db, KvError};
use crate::sync::store::{Store, StoreError, StoreLocation};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the source {path}: {source} (no server may run on it while it is migrated)")]
    Source {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("the target must be a postgres:// URL, not {0}")]
    TargetKind(String),
    #[error("the target {url}: {source}")]
    Target {
        url: String,
        #[source]
        source: KvError,
    },
    #[error(
        "the target {url} is not empty (tree {tree} holds entries): migrate into a new, empty database"
    )]
    NotEmpty { url: String, tree: String },
    #[error(transparent)]
    Held(#[from] crate::sync::store::lease::HeldError),
    #[error("copying tree {tree}: {source}")]
    Copy {
        tree: String,
        #[source]
        source: KvError,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("verification failed: {0}")]
    Verify(String),
}

/// What was moved and checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Migrated {
    /// Entries per tree, equal on both sides.
    pub trees: BTreeMap<String, u64>,
    /// Documents whose heads were compared.
    pub documents: usize,
    pub storage_id: String,
}

/// Move the sled store in `from` into the empty database `to`; `progress` hears each step.
pub fn migrate(
    from: &Path,
    to: &StoreLocation,
    progress: &mut dyn FnMut(&str),
) -> Result<Migrated, MigrateError> {
    let StoreLocation::Postgres(url) = to else {
        return Err(MigrateError::TargetKind(to.to_string()));
    };
    let redacted = crate::sync::store::kv::pg::redact(url);
    let source = Store::open(from).map_err(|source| MigrateError::Source {
        path: from.display().to_string(),
        source,
    })?;
    let target_err = |source| MigrateError::Target {
        url: redacted.clone(),
        source,
    };
    let pg = crate::sync::store::kv::pg::PgKv::open(url, crate::sync::store::PG_POOL_SIZE)
        .map_err(target_err)?;
    for tree in pg.tree_names().map_err(target_err)? {
        if !pg
            .open_tree(&tree)
            .map_err(target_err)?
            .is_empty()
            .map_err(target_err)?
        {
            return Err(MigrateError::NotEmpty {
                url: redacted.clone(),
                tree,
            });
        }
    }
    let target = Db::Pg(pg);
    // No server may start on the database while it is half-copied.
    let meta = target.open_tree("meta").map_err(target_err)?;
    let _writer = crate::sync::store::lease::WriterGuard::acquire(meta)?;
    progress(&format!("copying {} into {redacted}", from.display()));
    let mut trees = BTreeMap::new();
    let names = source
        .kv()
        .tree_names()
        .map_err(|source| MigrateError::Copy {
            tree: "(list)".into(),
            source,
        })?;
    for name in names {
        let copy_err = |source| MigrateError::Copy {
            tree: name.clone(),
            source,
        };
        let t = source.kv().open_tree(&name).map_err(copy_err)?;
        let mut n = crate::services::backup::copy_tree(&t, &target, &name).map_err(copy_err)?;
        if name == "meta" {
            // The source's own lease entries are not part of the data.
            n = t
                .iter()
                .keys()
                .filter(|k| k.as_ref().is_ok_and(|k| !k.starts_with(b"lease:")))
                .count() as u64;
        }
        progress(&format!("{name}: {n} entries"));
        trees.insert(name, n);
    }
    // The admin credential, which a directory store keeps as a file.
    if let Ok(token) = std::fs::read(from.join("admin-token")) {
        target
            .open_tree("meta")
            .and_then(|m| m.insert("file:admin-token", token))
            .map_err(target_err)?;
    }
    // Check: entries per tree, then every document's heads.
    for (name, n) in &trees {
        let t = target.open_tree(name).map_err(target_err)?;
        let mut got = t.len().map_err(target_err)? as u64;
        if name == "meta" {
            got = t
                .iter()
                .keys()
                .filter(|k| {
                    k.as_ref()
                        .is_ok_and(|k| !k.starts_with(b"lease:") && !k.starts_with(b"file:"))
                })
                .count() as u64;
        }
        if got != *n {
            return Err(MigrateError::Verify(format!(
                "tree {name}: {n} entries in the source, {got} in the target"
            )));
        }
    }
    progress("entries counted: equal in every tree");
    let migrated = Store::open_at(to)?;
    let heads_of = crate::services::backup::heads_of;
    let (want, got) = (heads_of(&source), heads_of(&migrated));
    if want != got {
        let differ: Vec<String> = want
            .keys()
            .chain(got.keys())
            .filter(|id| want.get(*id) != got.get(*id))
            .take(5)
            .cloned()
            .collect();
        return Err(MigrateError::Verify(format!(
            "documents {} differ between the source and the target",
            differ.join(", ")
        )));
    }
    if migrated.storage_id() != source.storage_id() {
        return Err(MigrateError::Verify("the storage id differs".into()));
    }
    progress(&format!("{} documents' heads equal", want.len()));
    Ok(Migrated {
        trees,
        documents: want.len(),
        storage_id: source.storage_id().to_string(),
    })
}
