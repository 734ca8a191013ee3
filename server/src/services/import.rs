//! Onboarding: a `rounds-data/1` file turned into the facility's Automerge documents.

use chrono::{DateTime, Utc};
use rounds_core::{DataFile, DocumentId, Replica};

/// Build every document of a data file (through an in-memory replica, so the documents are the
/// same ones a device would create) and return them as (id, bytes).
pub fn documents_of(
    data: &DataFile,
    now: DateTime<Utc>,
) -> Result<Vec<(DocumentId, Vec<u8>)>, String> {
    let mut replica = Replica::in_memory();
    replica.import(data, now).map_err(|e| e.to_string())?;
    Ok(replica
        .document_ids()
        .into_iter()
        .filter_map(|id| replica.document(id).map(|d| (id, d.save())))
        .collect())
}
