//! Durable storage of one Automerge document on a device: an append-only log of incremental
//! chunks (each record length- and CRC-framed, fsynced before an action returns), compacted
//! into a snapshot that replaces the log atomically.
//!
//! Files: `<id>.snap` (a full `save()`), `<id>.log` (records `[len u32 LE][crc32 u32 LE][bytes]`).
//! A torn last record (crash mid-write) fails its length or CRC check, is dropped and truncated.
//! Compaction writes `<id>.snap.tmp`, fsyncs, renames over `<id>.snap`, fsyncs the directory and
//! only then empties the log; a crash in between replays chunks the snapshot already holds, which
//! Automerge ignores.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use automerge::{Automerge, ChangeHash};

use crate::crypt::Sealer;

/// Log records after which the document is compacted into a snapshot.
pub const COMPACT_AFTER_RECORDS: usize = 256;

/// Where and why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: cannot be decrypted with this key (wrong key, or the file is damaged)")]
    Decrypt { path: PathBuf },
    #[error("{path}: not a readable Automerge document: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: Box<automerge::AutomergeError>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One document and its files.
pub struct DocFile {
    pub doc: Automerge,
    sealer: Option<Sealer>,
    /// fsync every write (false only for throw-away scratch replicas).
    durable: bool,
    /// No files at all (an in-memory replica's document): persisting only records the heads.
    memory: bool,
    persisted: Vec<ChangeHash>,
    snap_path: PathBuf,
    log_path: PathBuf,
    log_records: usize,
}

impl DocFile {
    /// Open (or create empty) the files for `stem` in `dir` and load what they hold.
    /// With a `sealer`, every record and snapshot is encrypted on disk.
    pub fn open(dir: &Path, stem: &str, sealer: Option<&Sealer>) -> Result<DocFile, StoreError> {
        let snap_path = dir.join(format!("{stem}.snap"));
        let log_path = dir.join(format!("{stem}.log"));
        let unseal = |bytes: Vec<u8>, path: &Path| -> Result<Vec<u8>, StoreError> {
            match sealer {
                Some(s) => s.open(&bytes).map_err(|_| StoreError::Decrypt {
                    path: path.to_path_buf(),
                }),
                None => Ok(bytes),
            }
        };
        let mut doc = match fs::read(&snap_path) {
            Ok(bytes) => Automerge::load(&unseal(bytes, &snap_path)?).map_err(|source| {
                StoreError::Corrupt {
                    path: snap_path.clone(),
                    source: Box::new(source),
                }
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Automerge::new(),
            Err(e) => return Err(io_err(&snap_path)(e)),
        };
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(io_err(&log_path))?;
        let mut pos = 0usize;
        let mut records = 0usize;
        while let Some((chunk, next)) = next_record(&bytes, pos) {
            let chunk = unseal(chunk.to_vec(), &log_path)?;
            if doc.load_incremental(&chunk).is_err() {
                break;
            }
            pos = next;
            records += 1;
        }
        if pos < bytes.len() {
            tracing::warn!(
                file = %log_path.display(),
                dropped_bytes = bytes.len() - pos,
                "dropping a torn record at the end of a document log"
            );
            log.set_len(pos as u64).map_err(io_err(&log_path))?;
            log.sync_all().map_err(io_err(&log_path))?;
        }
        drop(log);
        let persisted = doc.get_heads();
        Ok(DocFile {
            doc,
            sealer: sealer.cloned(),
            durable: true,
            memory: false,
            persisted,
            snap_path,
            log_path,
            log_records: records,
        })
    }

    /// Whether the files exist for `stem`.
    pub fn exists(dir: &Path, stem: &str) -> bool {
        dir.join(format!("{stem}.log")).exists() || dir.join(format!("{stem}.snap")).exists()
    }

    /// A document with no files (an in-memory replica's): `persist` and `compact` touch no disk.
    pub fn in_memory() -> DocFile {
        DocFile {
            doc: Automerge::new(),
            sealer: None,
            durable: false,
            memory: true,
            persisted: Vec::new(),
            snap_path: PathBuf::new(),
            log_path: PathBuf::new(),
            log_records: 0,
        }
    }

    /// Append every change not yet on disk and fsync. Returns once durable.
    pub fn persist(&mut self) -> Result<(), StoreError> {
        let heads = self.doc.get_heads();
        if heads == self.persisted {
            return Ok(());
        }
        if self.memory {
            self.persisted = heads;
            return Ok(());
        }
        let chunk = self.seal(self.doc.save_after(&self.persisted))?;
        if !chunk.is_empty() {
            let mut rec = Vec::with_capacity(chunk.len() + 8);
            rec.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            rec.extend_from_slice(&crc32fast::hash(&chunk).to_le_bytes());
            rec.extend_from_slice(&chunk);
            // Opened per write: a device (or an import) may hold thousands of documents.
            let mut log = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.log_path)
                .map_err(io_err(&self.log_path))?;
            log.write_all(&rec).map_err(io_err(&self.log_path))?;
            if self.durable {
                log.sync_data().map_err(io_err(&self.log_path))?;
            }
            self.log_records += 1;
        }
        self.persisted = heads;
        if self.log_records >= COMPACT_AFTER_RECORDS {
            self.compact()?;
        }
        Ok(())
    }

    /// Stop fsyncing (a scratch copy whose durability does not matter).
    pub fn set_scratch(&mut self) {
        self.durable = false;
    }

    fn seal(&self, bytes: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        match &self.sealer {
            Some(s) if !bytes.is_empty() => s.seal(&bytes).map_err(|_| StoreError::Decrypt {
                path: self.log_path.clone(),
            }),
            _ => Ok(bytes),
        }
    }

    /// Replace snapshot + log by one snapshot, crash-safely.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        if self.memory {
            return Ok(());
        }
        let tmp = self.snap_path.with_extension("snap.tmp");
        let bytes = self.seal(self.doc.save())?;
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&bytes).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &self.snap_path).map_err(io_err(&self.snap_path))?;
        if let Some(dir) = self.snap_path.parent() {
            sync_dir(dir)?;
        }
        let log = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.log_path)
            .map_err(io_err(&self.log_path))?;
        log.set_len(0).map_err(io_err(&self.log_path))?;
        log.sync_all().map_err(io_err(&self.log_path))?;
        self.log_records = 0;
        self.persisted = self.doc.get_heads();
        Ok(())
    }
}

/// fsync a directory so a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn next_record(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(pos..pos + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let body = bytes.get(pos + 8..pos + 8 + len)?;
    (crc32fast::hash(body) == crc).then_some((body, pos + 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{ROOT, transaction::Transactable};

    fn put(d: &mut DocFile, k: &str) {
        d.doc
            .transact::<_, _, automerge::AutomergeError>(|tx| tx.put(ROOT, k, 1))
            .unwrap();
        d.persist().unwrap();
    }

    #[test]
    fn survives_reopen_compaction_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DocFile::open(dir.path(), "x", None).unwrap();
        put(&mut d, "a");
        put(&mut d, "b");
        d.compact().unwrap();
        put(&mut d, "c");
        drop(d);
        // A torn record at the end: header promising more bytes than exist.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("x.log"))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9]).unwrap();
        drop(f);
        let mut d = DocFile::open(dir.path(), "x", None).unwrap();
        let keys: Vec<String> = automerge::ReadDoc::keys(&d.doc, ROOT).collect();
        assert_eq!(keys, vec!["a", "b", "c"]);
        put(&mut d, "d");
        drop(d);
        let d = DocFile::open(dir.path(), "x", None).unwrap();
        assert_eq!(automerge::ReadDoc::keys(&d.doc, ROOT).count(), 4);
    }
}
