//! The read model: every patient and patient-month document a facility's pages, month close and
//! export read, already read into the model (`view::read_patient`, `replica::read_month`), with
//! the heads it was read at.
//!
//! Each entry records the document's newest chunk sequence number when it was read. The store
//! knows every document's newest sequence number in memory (`Store::latest_seq`), so an
//! entry is checked without touching a chunk: equal numbers, the entry is current; otherwise the
//! document is loaded and read again, and only that one. Entries live in memory and in the
//! store's `read_model` tree, so a new process (`rounds close-month`, `rounds export`) starts
//! from them too; the import reads what it wrote at once.
//!
//! Architecture invariant: the read model is derived data. Losing it (or a wrong entry being
//! dropped) loses nothing — `rounds read-model rebuild` reads every document again, and
//! `rounds read-model check` compares every current entry with a fresh read of its document.
//! An entry is never newer than the sequence number it records: the number is taken before the
//! document is loaded, so a write in between only makes the entry look stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::BTreeMap;

use rounds_core::replica::MonthEntries;
use rounds_core::{DataFile, DocumentId, Patient, Problem, view};
use serde::{Deserialize, Serialize};

use crate::sync::store::Store;

/// A facility's data as the server holds it, with the heads of every document read.
pub struct FacilityData {
    pub data: DataFile,
    pub heads: BTreeMap<DocumentId, Vec<String>>,
    /// Which patient each document belongs to (None: the facility document).
    pub owner: BTreeMap<DocumentId, Option<String>>,
    /// Every alert of the facility's months, with its history.
    pub alerts: Vec<rounds_core::alerts::AlertView>,
}

/// Everything the store holds for a facility, from the read model: the assembled facility when
/// none of its documents changed since it was assembled (a page over 10,000 patient-months then
/// costs a look at 20,000 sequence numbers), else assembled again from the documents' entries
/// (only changed documents are read again).
pub fn facility_data(store: &Store, facility: &str) -> Result<Arc<FacilityData>, ReadError> {
    let model = &store.read_model;
    let fid = DocumentId::facility(facility);
    let cached = model
        .facilities
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(facility)
        .cloned();
    let practices_generation = store.practices.generation();
    if let Some(c) = cached
        && c.practices_generation == practices_generation
        && store.latest_seqs(&c.docs_ids) == c.docs_seqs
    {
        model.hits.fetch_add(1, Ordering::Relaxed);
        return Ok(c.data.clone());
    }
    // The sequence numbers before anything is read: a write meanwhile only makes the result
    // look stale next time.
    let fseq = store.latest_seq(&fid);
    let fdoc = store
        .load_doc(&fid)
        .ok_or_else(|| ReadError::NoFacility(facility.to_string()))?;
    let mut heads = BTreeMap::new();
    let mut owner = BTreeMap::new();
    heads.insert(fid, heads_hex(&fdoc));
    owner.insert(fid, None);
    // The patient and month documents from the read model; the ones it lacks or holds stale are
    // loaded and read on every core (the bulk of a first month close).
    let mut jobs: Vec<(DocumentId, String, Kind)> = Vec::new();
    for p in view::roster_patient_ids(&fdoc) {
        jobs.push((DocumentId::patient(facility, &p), p, Kind::Patient));
    }
    for (p, m) in view::roster_months(&fdoc) {
        jobs.push((DocumentId::patient_month(facility, &p, m), p, Kind::Month));
    }
    let seqs = store.latest_seqs(&jobs.iter().map(|(id, _, _)| *id).collect::<Vec<_>>());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let chunk = jobs.len().div_ceil(workers).max(1);
    type Rows = Vec<(DocumentId, std::sync::Arc<Entry>)>;
    let results: Option<Rows> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .filter_map(|(id, p, kind)| Some((*id, model.read(store, id, p, *kind)?)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A reader that panicked must fail the close, never drop documents silently.
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().ok()?);
        }
        Some(all)
    });
    let results = results
        .ok_or_else(|| ReadError::Failed("a document reader failed; nothing was read".into()))?;
    let mut patients = Vec::new();
    let mut months = Vec::new();
    for (id, entry) in results {
        heads.insert(id, entry.heads.clone());
        owner.insert(id, Some(entry.patient.clone()));
        match &entry.read {
            DocRead::Patient(r) => patients.push((**r).clone()),
            DocRead::Month(e) => months.push(e.clone()),
        }
    }
    let (mut data, problems, alerts) =
        view::assemble_read(&fdoc, patients, months).map_err(|p| ReadError::Unreadable {
            facility: facility.to_string(),
            problems: rounds_core::Problems(p).to_string(),
        })?;
    // The practices of this facility's practitioners (none: the facility is one practice).
    data.practices = store.practices.of_practitioners(&data.practitioners);
    for p in problems {
        tracing::warn!(facility, problem = %p, "entry skipped at month close");
    }
    let data = Arc::new(FacilityData {
        data,
        heads,
        owner,
        alerts,
    });
    let mut docs_ids = vec![fid];
    let mut docs_seqs = vec![fseq];
    docs_ids.extend(jobs.iter().map(|(id, _, _)| *id));
    docs_seqs.extend(seqs);
    model
        .facilities
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            facility.to_string(),
            Arc::new(Assembled {
                practices_generation,
                docs_ids,
                docs_seqs,
                data: data.clone(),
            }),
        );
    Ok(data)
}

/// One document, read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DocRead {
    Patient(Box<Result<Patient, Vec<Problem>>>),
    Month(MonthEntries),
}

/// A read document with what it was read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The document's newest chunk sequence number when it was read.
    pub seq: u64,
    /// Its heads (hex), as the ledger records them.
    pub heads: Vec<String>,
    /// The patient it belongs to.
    pub patient: String,
    pub read: DocRead,
}

/// What to read a document as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Patient,
    Month,
}

/// The outcome of `check`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Current entries compared with a fresh read.
    pub compared: usize,
    /// Entries older than their document (read again on next use; not compared).
    pub stale: usize,
    /// Current entries that differ from a fresh read.
    pub mismatched: Vec<DocumentId>,
}

/// Why a facility could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("facility {0:?} has no facility document in this store")]
    NoFacility(String),
    #[error("facility {facility}: {problems}")]
    Unreadable { facility: String, problems: String },
    #[error("{0}")]
    Failed(String),
}

/// A facility assembled from its documents, with every document's sequence number then.
struct Assembled {
    /// The practice registry's generation it was assembled with.
    practices_generation: u64,
    docs_ids: Vec<DocumentId>,
    docs_seqs: Vec<Option<u64>>,
    data: Arc<FacilityData>,
}

pub struct ReadModel {
    tree: crate::sync::store::kv::Tree,
    facilities: Mutex<HashMap<String, Arc<Assembled>>>,
    memory: Mutex<HashMap<DocumentId, Arc<Entry>>>,
    /// Documents loaded and read (entry missing or stale).
    pub reads: AtomicU64,
    /// Entries used as they were.
    pub hits: AtomicU64,
}

fn read_doc(doc: &automerge::Automerge, patient: &str, kind: Kind) -> DocRead {
    match kind {
        Kind::Patient => DocRead::Patient(Box::new(view::read_patient(doc, patient))),
        Kind::Month => DocRead::Month(rounds_core::replica::read_month(doc)),
    }
}

fn heads_hex(doc: &automerge::Automerge) -> Vec<String> {
    doc.get_heads().iter().map(|h| h.to_string()).collect()
}

impl ReadModel {
    pub fn open(
        db: &crate::sync::store::kv::Db,
    ) -> Result<ReadModel, crate::sync::store::kv::KvError> {
        Ok(ReadModel {
            tree: db.open_tree("read_model")?,
            memory: Mutex::new(HashMap::new()),
            facilities: Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<DocumentId, Arc<Entry>>> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The document `id` of `patient`, read as `kind`: from the model when current, else loaded
    /// and read again (and kept). None when the store does not hold the document.
    pub fn read(
        &self,
        store: &Store,
        id: &DocumentId,
        patient: &str,
        kind: Kind,
    ) -> Option<Arc<Entry>> {
        let seq = store.latest_seq(id)?;
        if let Some(e) = self.memory().get(id).filter(|e| e.seq == seq) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(e.clone());
        }
        let stored = self
            .tree
            .get(id.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice::<Entry>(&v).ok())
            .filter(|e| e.seq == seq && e.patient == patient);
        if let Some(e) = stored {
            self.hits.fetch_add(1, Ordering::Relaxed);
            let e = Arc::new(e);
            self.memory().insert(*id, e.clone());
            return Some(e);
        }
        let doc = store.load_doc(id)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let e = Arc::new(Entry {
            seq,
            heads: heads_hex(&doc),
            patient: patient.to_string(),
            read: read_doc(&doc, patient, kind),
        });
        match serde_json::to_vec(e.as_ref()) {
            Ok(bytes) => {
                if let Err(err) = self.tree.insert(id.as_bytes(), bytes) {
                    tracing::warn!(doc = %id, error = %err, "could not keep a read-model entry");
                }
            }
            Err(err) => tracing::warn!(doc = %id, error = %err, "read-model entry not encodable"),
        }
        self.memory().insert(*id, e.clone());
        Some(e)
    }

    /// Every stored entry.
    fn entries(&self) -> Vec<(DocumentId, Entry)> {
        self.tree
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let id = DocumentId::from_bytes(<[u8; 16]>::try_from(k.as_ref()).ok()?);
                Some((id, serde_json::from_slice::<Entry>(&v).ok()?))
            })
            .collect()
    }

    /// Compare every current entry with a fresh read of its document.
    pub fn check(&self, store: &Store) -> CheckReport {
        let mut report = CheckReport::default();
        for (id, e) in self.entries() {
            if store.latest_seq(&id) != Some(e.seq) {
                report.stale += 1;
                continue;
            }
            let Some(doc) = store.load_doc(&id) else {
                report.stale += 1;
                continue;
            };
            let kind = match e.read {
                DocRead::Patient(_) => Kind::Patient,
                DocRead::Month(_) => Kind::Month,
            };
            report.compared += 1;
            if heads_hex(&doc) != e.heads || read_doc(&doc, &e.patient, kind) != e.read {
                report.mismatched.push(id);
            }
        }
        report
    }

    /// Drop every entry and read each document again; returns how many were read.
    pub fn rebuild(&self, store: &Store) -> Result<usize, crate::sync::store::kv::KvError> {
        let entries = self.entries();
        self.tree.clear()?;
        self.memory().clear();
        self.facilities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut n = 0;
        for (id, e) in entries {
            let kind = match e.read {
                DocRead::Patient(_) => Kind::Patient,
                DocRead::Month(_) => Kind::Month,
            };
            n += usize::from(self.read(store, &id, &e.patient, kind).is_some());
        }
        Ok(n)
    }

    /// Entries held in memory now.
    pub fn in_memory(&self) -> usize {
        self.memory().len()
    }

    /// Replace a stored entry's read (tests: a wrong entry must be found by `check`).
    #[cfg(test)]
    fn corrupt(&self, id: &DocumentId, read: DocRead) {
        if let Some(mut e) = self
            .entries()
            .into_iter()
            .find(|(i, _)| i == id)
            .map(|(_, e)| e)
        {
            e.read = read;
            let _ = self
                .tree
                .insert(id.as_bytes(), serde_json::to_vec(&e).unwrap_or_default());
            self.memory().insert(*id, Arc::new(e));
            self.facilities
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store with one imported facility (the bundled Sunnyvale example).
    /// A sled store holding the example facility (also used by the ledger's tests).
    pub(crate) fn store_with_example() -> (tempfile::TempDir, Store, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data =
            rounds_core::parse_data_file(include_str!("../../../../examples/sunnyvale.json"))
                .unwrap();
        let facility = data.facility.id.clone();
        let mut replica = rounds_core::Replica::in_memory();
        replica.import(&data, chrono::Utc::now()).unwrap();
        let docs: Vec<(DocumentId, Vec<u8>)> = replica
            .document_ids()
            .into_iter()
            .filter_map(|id| replica.document(id).map(|d| (id, d.save())))
            .collect();
        for (i, (id, bytes)) in docs.iter().enumerate() {
            store.persist(id, i as u64 + 1, bytes, true).unwrap();
        }
        (dir, store, facility)
    }

    #[test]
    fn entries_are_reused_until_their_document_changes_and_check_finds_a_wrong_one() {
        let (_dir, store, facility) = store_with_example();
        let first = facility_data(&store, &facility).unwrap();
        let rm = &store.read_model;
        let reads = rm.reads.load(Ordering::Relaxed);
        assert!(reads > 0);
        // Again: nothing is read, the same data comes back.
        let again = facility_data(&store, &facility).unwrap();
        assert_eq!(rm.reads.load(Ordering::Relaxed), reads);
        assert_eq!(again.data, first.data);
        assert_eq!(again.heads, first.heads);
        let report = rm.check(&store);
        assert_eq!(report.mismatched, Vec::<DocumentId>::new());
        assert_eq!(report.compared as u64, reads);
        // One document changes: that one alone is read again.
        let (changed, _) = rm
            .entries()
            .into_iter()
            .find(|(_, e)| matches!(e.read, DocRead::Month(_)))
            .unwrap();
        let mut doc = store.load_doc(&changed).unwrap();
        let before = doc.get_heads();
        {
            use automerge::transaction::Transactable;
            let mut tx = doc.transaction();
            tx.put(automerge::ROOT, "touched", 1).unwrap();
            tx.commit();
        }
        store
            .persist(&changed, 1_000_000, &doc.save_after(&before), false)
            .unwrap();
        assert_eq!(rm.check(&store).stale, 1);
        let after = facility_data(&store, &facility).unwrap();
        assert_eq!(rm.reads.load(Ordering::Relaxed), reads + 1);
        assert_ne!(after.heads[&changed], first.heads[&changed]);
        assert_eq!(
            after.data, first.data,
            "an unknown root key reads as nothing new"
        );
        let reads = reads + 1;
        // A wrong entry is found, and a rebuild puts it right.
        let (id, _) = rm
            .entries()
            .into_iter()
            .find(|(_, e)| matches!(e.read, DocRead::Month(_)))
            .unwrap();
        rm.corrupt(&id, DocRead::Month(MonthEntries::default()));
        assert_eq!(rm.check(&store).mismatched, vec![id]);
        assert_eq!(rm.rebuild(&store).unwrap() as u64, reads - 1);
        assert!(rm.check(&store).mismatched.is_empty());
        let rebuilt = facility_data(&store, &facility).unwrap();
        assert_eq!(rebuilt.data, first.data);
    }

    #[test]
    fn a_new_process_starts_from_the_stored_entries() {
        let (dir, store, facility) = store_with_example();
        let first = facility_data(&store, &facility).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let second = facility_data(&store, &facility).unwrap();
        assert_eq!(store.read_model.reads.load(Ordering::Relaxed), 0);
        assert_eq!(second.data, first.data);
    }
}
