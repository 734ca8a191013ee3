//! Which documents belong to a facility: its facility document, its patients' documents, and
//! their month documents (derived ids, computed from the roster in the stored facility document
//! and rebuilt when that document changes).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use automerge::ReadDoc;
use chrono::{Datelike, Utc};
use rounds_core::policy::DocScope;
use rounds_core::sync::hub::Access;
use rounds_core::{DocumentId, Month};

use crate::sync::store::Store;

struct Built {
    /// The roster it was built from (sorted: a patient's index is its place here).
    patients: Vec<String>,
    /// Document → what it is, compactly (a facility has ~100 month ids per resident, so the
    /// index holds tens of thousands of entries per facility; a full `DocScope` each would cost
    /// megabytes per facility).
    docs: HashMap<DocumentId, Slot>,
}

/// What an indexed document is: the scope without its strings.
#[derive(Clone, Copy)]
enum Slot {
    Facility,
    Patient(u32),
    Month(u32, Month),
}

impl Built {
    fn scope(&self, facility: &str, doc: &DocumentId) -> Option<DocScope> {
        let patient = |i: u32| self.patients.get(i as usize);
        Some(match self.docs.get(doc)? {
            Slot::Facility => DocScope::facility(facility),
            Slot::Patient(i) => DocScope::patient(facility, patient(*i)?),
            Slot::Month(i, m) => DocScope::patient_month(facility, patient(*i)?, *m),
        })
    }
}

/// Facility → its documents, cached; rebuilt when the facility document changes (the roster),
/// never on a plain lookup, so access checks do no store I/O per frame.
pub struct FacilityIndex {
    store: Arc<Store>,
    cache: Mutex<HashMap<String, Arc<Built>>>,
    /// Facility document id → facility, for invalidation.
    facility_docs: Mutex<HashMap<DocumentId, String>>,
}

/// First month for which month documents are recognised.
const FIRST_YEAR: i32 = 2020;

impl FacilityIndex {
    pub fn new(store: Arc<Store>) -> FacilityIndex {
        FacilityIndex {
            store,
            cache: Mutex::new(HashMap::new()),
            facility_docs: Mutex::new(HashMap::new()),
        }
    }

    fn build(&self, facility: &str) -> Built {
        let mut docs = HashMap::new();
        docs.insert(DocumentId::facility(facility), Slot::Facility);
        let Some(doc) = self.store.load_doc(&DocumentId::facility(facility)) else {
            return Built {
                patients: Vec::new(),
                docs,
            };
        };
        let roster: BTreeSet<String> =
            rounds_core::document::container(&doc, rounds_core::document::PATIENTS)
                .map(|m| doc.keys(&m).collect())
                .unwrap_or_default();
        let patients: Vec<String> = roster.into_iter().collect();
        let now = Utc::now().date_naive();
        let last = Month::new(now.year() + 2, now.month()).unwrap_or(Month::of(now));
        for (i, p) in patients.iter().enumerate() {
            // A stored id that is not a valid id never becomes readable.
            if rounds_core::ids::check_id("patient", p).is_err() {
                continue;
            }
            let i = i as u32;
            docs.insert(DocumentId::patient(facility, p), Slot::Patient(i));
            let mut m = Month::new(FIRST_YEAR, 1).unwrap_or(last);
            while m <= last {
                docs.insert(DocumentId::patient_month(facility, p, m), Slot::Month(i, m));
                m = m.next();
            }
        }
        docs.shrink_to_fit();
        Built { patients, docs }
    }

    fn built(&self, facility: &str) -> Arc<Built> {
        if let Some(b) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(facility)
        {
            return b.clone();
        }
        // Built outside the lock: other facilities' lookups do not wait on this one's store read.
        let built = Arc::new(self.build(facility));
        self.facility_docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(DocumentId::facility(facility), facility.to_string());
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(facility.to_string(), built.clone());
        built
    }

    /// A document was written. When it is an indexed facility document and its roster
    /// (`roster()`: the patient ids of the written document, read from memory) differs from the
    /// one the index was built from, the index is rebuilt on the next lookup — so a patient taken
    /// off the roster is unreadable from the next frame on, while the frequent writes that leave
    /// the roster alone (a tablet adding a month to the index) cost one map lookup.
    pub fn changed(&self, doc: &DocumentId, roster: impl FnOnce() -> Option<BTreeSet<String>>) {
        let facility = self
            .facility_docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(doc)
            .cloned();
        let Some(f) = facility else {
            return;
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let same = match (cache.get(&f), roster()) {
            (Some(b), Some(now)) => b.patients.iter().eq(now.iter()),
            _ => false,
        };
        if !same {
            cache.remove(&f);
        }
    }

    /// What the document is when it belongs to the facility; `None` when it does not.
    pub fn scope(&self, facility: &str, doc: &DocumentId) -> Option<DocScope> {
        self.built(facility).scope(facility, doc)
    }

    /// `Some(patient)` when the document belongs to the facility (`Some(None)`: the facility
    /// document itself); `None` when it does not.
    pub fn lookup(&self, facility: &str, doc: &DocumentId) -> Option<Option<String>> {
        self.scope(facility, doc).map(|s| s.patient)
    }
}

/// A device's access: the documents of its facility.
pub struct FacilityAccess {
    pub facility: String,
    pub index: Arc<FacilityIndex>,
}

impl Access for FacilityAccess {
    fn allows(&self, doc: &DocumentId) -> bool {
        self.index.scope(&self.facility, doc).is_some()
    }

    fn scope(&self, doc: &DocumentId) -> Option<DocScope> {
        self.index.scope(&self.facility, doc)
    }
}

/// The development token's access: every document, in whichever facility's hub holds it.
/// Its documents span hubs, so it syncs document by document (no summary: see
/// [`Access::summarizable`]).
pub struct DevAccess;

impl Access for DevAccess {
    fn allows(&self, _: &DocumentId) -> bool {
        true
    }

    fn summarizable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use rounds_core::document::{self as d, DocKind};

    fn facility_doc(patients: &[&str]) -> Vec<u8> {
        let mut doc = d::genesis(DocKind::Facility).unwrap();
        doc.set_actor(automerge::ActorId::random());
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            let m = d::container(tx, d::PATIENTS).unwrap();
            for p in patients {
                tx.put(&m, *p, "automerge:x")?;
            }
            Ok(())
        })
        .unwrap();
        doc.save()
    }

    #[test]
    fn the_index_follows_the_roster_and_only_the_roster() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let fid = DocumentId::facility("f");
        store
            .persist(&fid, 1, &facility_doc(&["p-1", "p-2"]), true)
            .unwrap();
        let index = FacilityIndex::new(store.clone());
        let p2 = DocumentId::patient("f", "p-2");
        let m: Month = "2026-11".parse().unwrap();
        assert_eq!(index.lookup("f", &p2), Some(Some("p-2".into())));
        assert!(
            index
                .scope("f", &DocumentId::patient_month("f", "p-2", m))
                .is_some()
        );
        // The stored document loses p-2.
        store
            .persist(&fid, 2, &facility_doc(&["p-1"]), true)
            .unwrap();
        // A write that leaves the roster as it was keeps the index (no rebuild)...
        let same: BTreeSet<String> = ["p-1", "p-2"].map(String::from).into();
        index.changed(&fid, || Some(same));
        assert!(index.scope("f", &p2).is_some());
        // ...a write to another document does nothing...
        index.changed(&p2, || None);
        assert!(index.scope("f", &p2).is_some());
        // ...and a roster change makes p-2 unreadable on the next lookup.
        let now: BTreeSet<String> = ["p-1"].map(String::from).into();
        index.changed(&fid, || Some(now));
        assert_eq!(index.scope("f", &p2), None);
        assert_eq!(
            index.scope("f", &DocumentId::patient_month("f", "p-2", m)),
            None
        );
        assert!(index.scope("f", &DocumentId::patient("f", "p-1")).is_some());
    }
}
