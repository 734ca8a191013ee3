//! Which documents belong to a facility: its facility document, its patients' documents, and
//! their month documents (derived ids, computed from the roster in the stored facility document
//! and rebuilt when that document changes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use automerge::{ChangeHash, ReadDoc};
use chrono::{Datelike, Utc};
use rounds_core::sync::hub::Access;
use rounds_core::{DocumentId, Month};

use crate::store::SledStore;

struct Built {
    heads: Vec<ChangeHash>,
    /// Document → the patient it belongs to (None for the facility document).
    docs: HashMap<DocumentId, Option<String>>,
}

/// Facility → its documents, cached.
pub struct FacilityIndex {
    store: Arc<SledStore>,
    cache: Mutex<HashMap<String, Built>>,
}

/// First month for which month documents are recognised.
const FIRST_YEAR: i32 = 2020;

impl FacilityIndex {
    pub fn new(store: Arc<SledStore>) -> FacilityIndex {
        FacilityIndex {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn facility_doc(&self, facility: &str) -> Option<automerge::Automerge> {
        self.store.load_doc(&DocumentId::facility(facility))
    }

    fn build(&self, facility: &str) -> Built {
        let mut docs = HashMap::new();
        docs.insert(DocumentId::facility(facility), None);
        let Some(doc) = self.facility_doc(facility) else {
            return Built {
                heads: Vec::new(),
                docs,
            };
        };
        let heads = doc.get_heads();
        let patients: Vec<String> =
            rounds_core::document::container(&doc, rounds_core::document::PATIENTS)
                .map(|m| doc.keys(&m).collect())
                .unwrap_or_default();
        let now = Utc::now().date_naive();
        let last = Month::new(now.year() + 2, now.month()).unwrap_or(Month::of(now));
        for p in patients {
            docs.insert(DocumentId::patient(facility, &p), Some(p.clone()));
            let mut m = Month::new(FIRST_YEAR, 1).unwrap_or(last);
            while m <= last {
                docs.insert(DocumentId::patient_month(facility, &p, m), Some(p.clone()));
                m = m.next();
            }
        }
        Built { heads, docs }
    }

    /// `Some(patient)` when the document belongs to the facility (`Some(None)`: the facility
    /// document itself); `None` when it does not.
    pub fn lookup(&self, facility: &str, doc: &DocumentId) -> Option<Option<String>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = cache.get(facility)
            && let Some(p) = b.docs.get(doc)
        {
            return Some(p.clone());
        }
        // Unknown: rebuild only if the roster changed since the last build.
        let current = self
            .facility_doc(facility)
            .map(|d| d.get_heads())
            .unwrap_or_default();
        let stale = cache.get(facility).is_none_or(|b| b.heads != current);
        if stale {
            let built = self.build(facility);
            cache.insert(facility.to_string(), built);
        }
        cache.get(facility).and_then(|b| b.docs.get(doc).cloned())
    }
}

/// A device's access: the documents of its facility.
pub struct FacilityAccess {
    pub facility: String,
    pub index: Arc<FacilityIndex>,
}

impl Access for FacilityAccess {
    fn allows(&self, doc: &DocumentId) -> bool {
        self.index.lookup(&self.facility, doc).is_some()
    }
}
