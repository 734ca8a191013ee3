//! rounds-tests: end-to-end scenarios across the Rounds crates, plus small helpers they share.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use rounds_core::{DataFile, DocumentId, Replica, parse_data_file};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `examples/sunnyvale.json`, parsed.
pub fn sunnyvale() -> anyhow::Result<DataFile> {
    let text = std::fs::read_to_string(repo_root().join("examples/sunnyvale.json"))?;
    parse_data_file(&text).map_err(|p| anyhow::anyhow!("{p}"))
}

/// Exchange sync messages for one document until both sides are quiet. Returns messages sent.
pub fn sync_doc(
    a: &mut Replica,
    a_name: &str,
    b: &mut Replica,
    b_name: &str,
    doc: DocumentId,
) -> anyhow::Result<usize> {
    let mut sent = 0;
    for _ in 0..100 {
        let mut quiet = true;
        if let Some(m) = a.generate_sync_message(doc, b_name) {
            b.receive_sync_message(doc, a_name, &m)?;
            sent += 1;
            quiet = false;
        }
        if let Some(m) = b.generate_sync_message(doc, a_name) {
            a.receive_sync_message(doc, b_name, &m)?;
            sent += 1;
            quiet = false;
        }
        if quiet {
            return Ok(sent);
        }
    }
    anyhow::bail!("sync of {doc} did not converge in 100 rounds")
}

/// Sync every document either replica holds.
pub fn sync_all(
    a: &mut Replica,
    a_name: &str,
    b: &mut Replica,
    b_name: &str,
) -> anyhow::Result<usize> {
    let mut ids = a.document_ids();
    ids.extend(b.document_ids());
    ids.sort();
    ids.dedup();
    let mut sent = 0;
    for id in ids {
        sent += sync_doc(a, a_name, b, b_name, id)?;
    }
    Ok(sent)
}
