//! Onboarding: a `rounds-data/1` file turned into the facility's Automerge documents.

use chrono::Utc;
use rounds_core::{DataFile, DocumentId, Replica};

/// Build every document of a data file (through a throw-away replica, so the documents are the
/// same ones a device would create) and return them as (id, bytes).
pub fn documents_of(data: &DataFile) -> Result<Vec<(DocumentId, Vec<u8>)>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let mut replica = Replica::open_scratch(dir.path()).map_err(|e| e.to_string())?;
    replica
        .import(data, Utc::now())
        .map_err(|e| e.to_string())?;
    Ok(replica
        .document_ids()
        .into_iter()
        .filter_map(|id| replica.document(id).map(|d| (id, d.save())))
        .collect())
}
