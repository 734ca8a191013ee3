//! Which documents belong to a facility: its facility document, its patients' documents, and
//! their month documents (derived ids, computed from the roster in the stored facility document
//! and rebuilt when that document changes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use automerge::ReadDoc;
use chrono::{Datelike, Utc};
use rounds_core::policy::DocScope;
use rounds_core::sync::hub::Access;
use rounds_core::{DocumentId, Month};

use crate::store::SledStore;

struct Built {
    /// Document → what it is (facility, type, patient, month).
    docs: HashMap<DocumentId, DocScope>,
}

/// Facility → its documents, cached; rebuilt when the facility document changes (the roster),
/// never on a plain lookup, so access checks do no store I/O per frame.
pub struct FacilityIndex {
    store: Arc<SledStore>,
    cache: Mutex<HashMap<String, Arc<Built>>>,
    /// Facility document id → facility, for invalidation.
    facility_docs: Mutex<HashMap<DocumentId, String>>,
}

/// First month for which month documents are recognised.
const FIRST_YEAR: i32 = 2020;

impl FacilityIndex {
    pub fn new(store: Arc<SledStore>) -> FacilityIndex {
        FacilityIndex {
            store,
            cache: Mutex::new(HashMap::new()),
            facility_docs: Mutex::new(HashMap::new()),
        }
    }

    fn build(&self, facility: &str) -> Built {
        let mut docs = HashMap::new();
        docs.insert(DocumentId::facility(facility), DocScope::facility(facility));
        let Some(doc) = self.store.load_doc(&DocumentId::facility(facility)) else {
            return Built { docs };
        };
        let patients: Vec<String> =
            rounds_core::document::container(&doc, rounds_core::document::PATIENTS)
                .map(|m| doc.keys(&m).collect())
                .unwrap_or_default();
        let now = Utc::now().date_naive();
        let last = Month::new(now.year() + 2, now.month()).unwrap_or(Month::of(now));
        for p in patients {
            // A stored id that is not a valid id never becomes readable.
            if rounds_core::ids::check_id("patient", &p).is_err() {
                continue;
            }
            docs.insert(
                DocumentId::patient(facility, &p),
                DocScope::patient(facility, &p),
            );
            let mut m = Month::new(FIRST_YEAR, 1).unwrap_or(last);
            while m <= last {
                docs.insert(
                    DocumentId::patient_month(facility, &p, m),
                    DocScope::patient_month(facility, &p, m),
                );
                m = m.next();
            }
        }
        Built { docs }
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

    /// A document was written: when it is a facility document, its index is rebuilt on the
    /// next lookup (a patient taken off the roster is unreadable from the next frame on).
    pub fn changed(&self, doc: &DocumentId) {
        let facility = self
            .facility_docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(doc)
            .cloned();
        if let Some(f) = facility {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&f);
        }
    }

    /// What the document is when it belongs to the facility; `None` when it does not.
    pub fn scope(&self, facility: &str, doc: &DocumentId) -> Option<DocScope> {
        self.built(facility).docs.get(doc).cloned()
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
