//! `Replica`: the device's durable store of Automerge documents and the staff actions on it.
//!
//! A replica belongs to one facility (set by the first import). It holds the facility document,
//! each patient's document and each patient-month document in `<dir>/docs`, one [`DocFile`] each.
//! Every action writes one Automerge change with the device's own actor and returns only after
//! the change is fsynced. Time is passed in (`now`), never read from a clock here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{ActorId, AutomergeError, ChangeHash, ROOT, ReadDoc};
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypt::{KeyBytes, Sealer};
use crate::doc_file::{DocFile, StoreError, sync_dir};
use crate::document::{self as d, DocKind};
use crate::ids::DocumentId;
use crate::model::*;
use crate::month::Month;
use crate::problem::{Problem, Problems};
use crate::validate;
use crate::view;
pub use crate::view::{MonthEntries, Roster, TimerStop, read_month};

mod alert_actions;
use alert_actions::write_alerts;
pub use alert_actions::{Acknowledgement, TriageCall};

const META_FILE: &str = "replica.json";
/// Entries kept aside while a refused document is reset (see `Replica::reset_document`).
const RELOG_DIR: &str = "relog";
const META_FORMAT: &str = "rounds-replica/1";

/// What can go wrong in a replica action. Names ids, never patient names.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("document {doc}: {source}")]
    Automerge {
        doc: DocumentId,
        #[source]
        source: Box<AutomergeError>,
    },
    #[error("invalid input:\n{0}")]
    Invalid(Problems),
    #[error("{path}: {message}")]
    Meta { path: PathBuf, message: String },
    #[error("{0}: the replica is encrypted; open it with its key")]
    KeyRequired(PathBuf),
    #[error("{0}: wrong key for this replica")]
    WrongKey(PathBuf),
    #[error("this replica has no facility yet: import a data file first")]
    NoFacility,
    #[error("this replica belongs to facility {have:?}, not {want:?}")]
    OtherFacility { have: String, want: String },
    #[error("unknown patient {0:?}")]
    UnknownPatient(String),
    #[error("unknown entry {0}")]
    UnknownEntry(Uuid),
    #[error("timer {0} is already stopped")]
    TimerAlreadyStopped(Uuid),
    #[error("document {doc}: bad sync message: {message}")]
    SyncMessage { doc: DocumentId, message: String },
    /// The write policy refuses the change (the same check the server makes): nothing was
    /// written.
    #[error("document {doc}: refused by the write policy: {refusal}")]
    Refused {
        doc: DocumentId,
        refusal: crate::policy::Refusal,
    },
}

impl ReplicaError {
    fn invalid(entry: impl Into<String>, field: &str, message: impl Into<String>) -> ReplicaError {
        ReplicaError::Invalid(Problems(vec![Problem::new(entry, field, message)]))
    }
}

type Result<T, E = ReplicaError> = std::result::Result<T, E>;

#[derive(Debug, Serialize, Deserialize)]
struct ReplicaMeta {
    format: String,
    /// Hex of the device's Automerge actor id.
    actor: String,
    facility: Option<String>,
    /// A known text sealed with the replica's key (hex), to tell a wrong key at open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_check: Option<String>,
}

const KEY_CHECK: &[u8] = b"rounds-replica-key-check";

/// A time entry logged after the fact.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInteraction {
    pub patient: String,
    pub staff: String,
    pub program: Program,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub interactive: bool,
    pub activity: Option<String>,
    pub note: Option<String>,
}

/// A reading typed in or received from a device.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReading {
    pub patient: String,
    pub kind: ReadingKind,
    pub systolic: Option<f64>,
    pub diastolic: Option<f64>,
    pub value: Option<f64>,
    pub unit: String,
    pub measured_at: DateTime<Utc>,
    pub device: Option<String>,
    pub source: ReadingSource,
    /// RPM (absent) or RTM.
    pub program: Option<crate::model::ReadingProgram>,
}

/// What a nurse sees for a patient's month on the tablet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthSummary {
    pub patient: String,
    pub month: Month,
    /// Whole minutes per program (exact durations summed, then floored), voided entries excluded.
    pub minutes: BTreeMap<Program, u32>,
    /// Distinct local dates with at least one device reading.
    pub reading_days: u32,
    pub running_timers: usize,
}

/// Entries to write, per patient-month: (container, key, value).
type MonthWrites = BTreeMap<(String, Month), Vec<(&'static str, String, serde_json::Value)>>;

/// The device store.
pub struct Replica {
    dir: PathBuf,
    docs_dir: PathBuf,
    actor: ActorId,
    facility: Option<String>,
    sealer: Option<Sealer>,
    key_check: Option<String>,
    /// A throw-away replica: no fsync (import staging, benchmarks' templates).
    scratch: bool,
    /// No files at all (`Replica::in_memory`): the server's staging writes.
    memory: bool,
    docs: BTreeMap<DocumentId, DocFile>,
    sync_states: HashMap<(DocumentId, String), sync::State>,
    /// Per peer: the sync states as last saved (document → encoded state).
    saved_sync: HashMap<String, HashMap<DocumentId, Vec<u8>>>,
    /// Which documents the device keeps (None: all).
    window: Option<SyncWindow>,
}

/// Which documents a tablet keeps: its facility's document, the documents of the residents on
/// the roster, and their month documents of open months — the current month and later, an
/// earlier month until its grace window has passed (the server closes it then), and
/// `retention_months` more before the current month. A document outside the window leaves the
/// device once the server has confirmed it ([`Replica::drop_outside_window`]); a late entry for
/// such a month re-creates its document, which syncs and then leaves again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncWindow {
    /// The device's local date.
    pub today: chrono::NaiveDate,
    /// Days after a month's end until it closes (the rule set's `grace_days`, 7 by default).
    pub grace_days: u32,
    /// Closed months kept besides the open ones, counted back from the current month.
    pub retention_months: u32,
}

impl SyncWindow {
    /// The window on `today` with the default grace window (7 days) and no retention.
    pub fn new(today: chrono::NaiveDate) -> SyncWindow {
        SyncWindow {
            today,
            grace_days: crate::billing::RuleSet::default().grace_days,
            retention_months: 0,
        }
    }

    /// Whether the window holds the month's documents.
    pub fn holds(&self, month: Month) -> bool {
        let current = Month::of(self.today);
        if month >= current {
            return true;
        }
        if (self.today - month.last_day()).num_days() <= i64::from(self.grace_days) {
            return true;
        }
        let back =
            (current.year() - month.year()) * 12 + current.number() as i32 - month.number() as i32;
        back <= self.retention_months as i32
    }
}

impl Replica {
    /// Open an unencrypted replica in `dir` (tools and tests), creating it when empty.
    pub fn open(dir: impl AsRef<Path>) -> Result<Replica> {
        Replica::open_with(dir, None)
    }

    /// Open the replica in `dir` with its 256-bit key (from the platform keystore), creating it
    /// when empty. Every document file is encrypted with XChaCha20-Poly1305; a wrong key is
    /// refused at open.
    pub fn open_encrypted(dir: impl AsRef<Path>, key: &KeyBytes) -> Result<Replica> {
        Replica::open_with(dir, Some(Sealer::new(key)))
    }

    /// A throw-away, unencrypted replica that does not fsync: for building documents (import
    /// staging), never for a device's data.
    pub fn open_scratch(dir: impl AsRef<Path>) -> Result<Replica> {
        let mut r = Replica::open_with(dir, None)?;
        r.scratch = true;
        for f in r.docs.values_mut() {
            f.set_scratch();
        }
        Ok(r)
    }

    /// A replica with no files, unencrypted and unchecked like a scratch replica: for building
    /// documents on the server (import, staged alert and reading writes), where the result is
    /// merged into the server's own store. Sync states and re-logs are not kept.
    pub fn in_memory() -> Replica {
        Replica {
            dir: PathBuf::new(),
            docs_dir: PathBuf::new(),
            actor: ActorId::random(),
            facility: None,
            sealer: None,
            key_check: None,
            scratch: true,
            memory: true,
            docs: BTreeMap::new(),
            sync_states: HashMap::new(),
            saved_sync: HashMap::new(),
            window: None,
        }
    }

    /// Write `replica.json` (nothing for an in-memory replica).
    fn save_meta(&self, meta: &ReplicaMeta) -> Result<()> {
        if self.memory {
            return Ok(());
        }
        write_meta(&self.dir, meta)
    }

    /// A document's file: on disk, or none for an in-memory replica.
    fn doc_file(&self, id: DocumentId) -> Result<DocFile> {
        if self.memory {
            return Ok(DocFile::in_memory());
        }
        Ok(DocFile::open(
            &self.docs_dir,
            &id.to_string(),
            self.sealer.as_ref(),
        )?)
    }

    fn open_with(dir: impl AsRef<Path>, sealer: Option<Sealer>) -> Result<Replica> {
        let dir = dir.as_ref().to_path_buf();
        let docs_dir = dir.join("docs");
        fs::create_dir_all(&docs_dir).map_err(|source| StoreError::Io {
            path: docs_dir.clone(),
            source,
        })?;
        let meta_path = dir.join(META_FILE);
        let meta = match fs::read(&meta_path) {
            Ok(bytes) => {
                let meta: ReplicaMeta =
                    serde_json::from_slice(&bytes).map_err(|e| ReplicaError::Meta {
                        path: meta_path.clone(),
                        message: e.to_string(),
                    })?;
                if meta.format != META_FORMAT {
                    return Err(ReplicaError::Meta {
                        path: meta_path,
                        message: format!("unknown format {:?}", meta.format),
                    });
                }
                meta
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key_check = match &sealer {
                    Some(s) => Some(hex_encode(
                        &s.seal(KEY_CHECK)
                            .map_err(|_| ReplicaError::WrongKey(meta_path.clone()))?,
                    )),
                    None => None,
                };
                let meta = ReplicaMeta {
                    format: META_FORMAT.to_string(),
                    actor: ActorId::random().to_hex_string(),
                    facility: None,
                    key_check,
                };
                write_meta(&dir, &meta)?;
                meta
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: meta_path,
                    source,
                }
                .into());
            }
        };
        match (&sealer, &meta.key_check) {
            (None, Some(_)) => return Err(ReplicaError::KeyRequired(dir.join(META_FILE))),
            (Some(_), None) => {
                return Err(ReplicaError::Meta {
                    path: dir.join(META_FILE),
                    message: "this replica is not encrypted; open it without a key".into(),
                });
            }
            (Some(s), Some(check)) => {
                let ok = hex_decode(check)
                    .and_then(|b| s.open(&b).ok())
                    .is_some_and(|p| p == KEY_CHECK);
                if !ok {
                    return Err(ReplicaError::WrongKey(dir.join(META_FILE)));
                }
            }
            (None, None) => {}
        }
        let actor_bytes = hex_decode(&meta.actor).ok_or_else(|| ReplicaError::Meta {
            path: dir.join(META_FILE),
            message: "actor is not hex".into(),
        })?;
        let actor = ActorId::from(actor_bytes);
        let mut docs = BTreeMap::new();
        let entries = fs::read_dir(&docs_dir).map_err(|source| StoreError::Io {
            path: docs_dir.clone(),
            source,
        })?;
        let mut stems = BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(stem) = name
                .strip_suffix(".log")
                .or_else(|| name.strip_suffix(".snap"))
            {
                stems.insert(stem.to_string());
            }
        }
        for stem in stems {
            let Ok(id) = stem.parse::<DocumentId>() else {
                tracing::warn!(file = %stem, "ignoring a file that is not a document");
                continue;
            };
            let mut file = DocFile::open(&docs_dir, &stem, sealer.as_ref())?;
            file.doc.set_actor(actor.clone());
            docs.insert(id, file);
        }
        Ok(Replica {
            dir,
            docs_dir,
            actor,
            facility: meta.facility,
            sealer,
            key_check: meta.key_check,
            scratch: false,
            memory: false,
            docs,
            sync_states: HashMap::new(),
            saved_sync: HashMap::new(),
            window: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device's Automerge actor id (hex).
    pub fn actor(&self) -> String {
        self.actor.to_hex_string()
    }

    /// The facility id this replica belongs to.
    pub fn facility_id(&self) -> Option<&str> {
        self.facility.as_deref()
    }

    // ----- documents -------------------------------------------------------------------------

    /// Every document the replica holds.
    pub fn document_ids(&self) -> Vec<DocumentId> {
        self.docs.keys().copied().collect()
    }

    /// The current heads of a document.
    pub fn heads(&self, doc: DocumentId) -> Option<Vec<ChangeHash>> {
        self.docs.get(&doc).map(|f| f.doc.get_heads())
    }

    /// Read access to a document.
    pub fn document(&self, doc: DocumentId) -> Option<&automerge::Automerge> {
        self.docs.get(&doc).map(|f| &f.doc)
    }

    /// The document, loaded or created from its genesis and persisted.
    fn ensure_doc(&mut self, id: DocumentId, kind: DocKind) -> Result<&mut DocFile> {
        if !self.docs.contains_key(&id) {
            let mut file = self.doc_file(id)?;
            file.doc.set_actor(self.actor.clone());
            if self.scratch {
                file.set_scratch();
            }
            self.docs.insert(id, file);
        }
        let file = self.docs.get_mut(&id).ok_or(ReplicaError::Meta {
            path: PathBuf::new(),
            message: "document vanished".into(),
        })?;
        if d::kind_of(&file.doc).is_none() {
            let genesis = d::genesis(kind).map_err(|source| ReplicaError::Automerge {
                doc: id,
                source: Box::new(source),
            })?;
            file.doc
                .load_incremental(&genesis.save())
                .map_err(|source| ReplicaError::Automerge {
                    doc: id,
                    source: Box::new(source),
                })?;
            file.doc.set_actor(self.actor.clone());
            file.persist()?;
        }
        // Containers added after the genesis (the same deterministic change everywhere).
        let migrated =
            d::migrate(&mut file.doc, kind).map_err(|source| ReplicaError::Automerge {
                doc: id,
                source: Box::new(source),
            })?;
        if migrated {
            file.persist()?;
        }
        Ok(file)
    }

    /// Apply one change to a document (created from genesis if needed) and make it durable.
    /// On a device the change is checked against the write policy first (the server's check):
    /// a refused change is dropped and never reaches disk.
    fn change<R>(
        &mut self,
        id: DocumentId,
        kind: DocKind,
        now: DateTime<Utc>,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, AutomergeError>,
    ) -> Result<R> {
        self.change_as(id, kind, now, !self.scratch, f)
    }

    /// `checked: false` only for what the server's writer makes (import, the alert protocol):
    /// not checked here; the server's gate refuses it from a device.
    fn change_as<R>(
        &mut self,
        id: DocumentId,
        kind: DocKind,
        now: DateTime<Utc>,
        checked: bool,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, AutomergeError>,
    ) -> Result<R> {
        let file = self.ensure_doc(id, kind)?;
        let before = file.doc.get_heads();
        let result = file
            .doc
            .transact_with::<_, _, AutomergeError, _>(
                |_| CommitOptions::default().with_time(now.timestamp_millis()),
                f,
            )
            .map_err(|fail| ReplicaError::Automerge {
                doc: id,
                source: Box::new(fail.error),
            })?
            .result;
        if checked {
            let verdict = self.scope_of(id, kind).and_then(|scope| {
                let doc = self.document(id).ok_or_else(|| vanished(id))?;
                crate::policy::check_local_changes(doc, &before, &scope)
                    .map_err(|refusal| ReplicaError::Refused { doc: id, refusal })
            });
            if let Err(e) = verdict {
                // Drop the change: reload the document as it is on disk.
                let mut file = self.doc_file(id)?;
                file.doc.set_actor(self.actor.clone());
                self.docs.insert(id, file);
                return Err(e);
            }
        }
        let file = self.docs.get_mut(&id).ok_or_else(|| vanished(id))?;
        file.persist()?;
        Ok(result)
    }

    /// What a document is, for the write policy: from its id and, for a month, its root fields.
    fn scope_of(&self, id: DocumentId, kind: DocKind) -> Result<crate::policy::DocScope> {
        use crate::policy::{DocScope, Refusal, Rule};
        let facility = self.facility.as_deref().ok_or(ReplicaError::NoFacility)?;
        let refused = |detail: &str| ReplicaError::Refused {
            doc: id,
            refusal: Refusal::new(Rule::DocumentIdentity, "/", detail),
        };
        let scope = match kind {
            DocKind::Facility => DocScope::facility(facility),
            DocKind::Patient => {
                let p = self
                    .patient_ids()
                    .into_iter()
                    .find(|p| DocumentId::patient(facility, p) == id)
                    .ok_or_else(|| refused("not the document of a rostered patient"))?;
                DocScope::patient(facility, &p)
            }
            DocKind::PatientMonth => {
                let doc = self
                    .document(id)
                    .ok_or_else(|| refused("no such document"))?;
                let p = d::root_str(doc, "patient");
                let m = d::root_str(doc, "month").and_then(|m| m.parse::<Month>().ok());
                match (p, m) {
                    (Some(p), Some(m)) => DocScope::patient_month(facility, &p, m),
                    _ => return Err(refused("a patient-month without its patient and month")),
                }
            }
        };
        if scope.document_id() != id {
            return Err(refused("the document's fields do not derive its id"));
        }
        Ok(scope)
    }

    // ----- facility --------------------------------------------------------------------------

    fn facility_doc_id(&self) -> Result<DocumentId> {
        self.facility
            .as_deref()
            .map(DocumentId::facility)
            .ok_or(ReplicaError::NoFacility)
    }

    /// The facility, its practitioners and its staff, as held in the facility document.
    pub fn facility(&self) -> Result<Roster> {
        let id = self.facility_doc_id()?;
        let doc = self.document(id).ok_or(ReplicaError::NoFacility)?;
        view::read_roster(doc).map_err(|p| ReplicaError::Invalid(Problems(p)))
    }

    fn zone(&self) -> Result<(String, Tz)> {
        let f = self.facility()?.facility;
        let tz = validate::parse_zone(&f.timezone).ok_or_else(|| {
            ReplicaError::invalid(
                "facility",
                "timezone",
                format!("{:?} is not an IANA time zone", f.timezone),
            )
        })?;
        Ok((f.id, tz))
    }

    /// The facility document's URL, `automerge:<id>`.
    pub fn facility_url(&self) -> Result<String> {
        Ok(self.facility_doc_id()?.url())
    }

    // ----- patients --------------------------------------------------------------------------

    /// Patient ids listed in the facility document.
    pub fn patient_ids(&self) -> Vec<String> {
        self.facility_doc_id()
            .ok()
            .and_then(|id| self.document(id))
            .map(view::roster_patient_ids)
            .unwrap_or_default()
    }

    /// One patient, read from their document (with the care-plan text).
    pub fn patient(&self, patient: &str) -> Result<Patient> {
        let facility = self.facility.clone().ok_or(ReplicaError::NoFacility)?;
        let id = DocumentId::patient(&facility, patient);
        let doc = self
            .document(id)
            .ok_or_else(|| ReplicaError::UnknownPatient(patient.to_string()))?;
        view::read_patient(doc, patient).map_err(|p| ReplicaError::Invalid(Problems(p)))
    }

    /// Every patient of the facility; unreadable ones are reported, not fatal.
    pub fn patients(&self) -> (Vec<Patient>, Vec<Problem>) {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for id in self.patient_ids() {
            match self.patient(&id) {
                Ok(p) => out.push(p),
                Err(ReplicaError::Invalid(Problems(ps))) => problems.extend(ps),
                Err(e) => problems.push(Problem::new(format!("patient {id}"), "", e.to_string())),
            }
        }
        (out, problems)
    }

    fn require_patient(&self, patient: &str) -> Result<()> {
        if self.patient_ids().iter().any(|p| p == patient) {
            Ok(())
        } else {
            Err(ReplicaError::UnknownPatient(patient.to_string()))
        }
    }

    fn require_person(&self, entry: &str, field: &str, person: &str) -> Result<()> {
        let roster = self.facility()?;
        if roster.practitioners.iter().any(|p| p.id == person)
            || roster.staff.iter().any(|s| s.id == person)
        {
            Ok(())
        } else {
            Err(ReplicaError::invalid(
                entry,
                field,
                format!("unknown staff or practitioner {person:?}"),
            ))
        }
    }

    /// Replace the care plan's free text; concurrent edits on other devices merge.
    pub fn edit_care_plan(&mut self, patient: &str, text: &str, now: DateTime<Utc>) -> Result<()> {
        let facility = self.facility.clone().ok_or(ReplicaError::NoFacility)?;
        self.require_patient(patient)?;
        let id = DocumentId::patient(&facility, patient);
        self.change(id, DocKind::Patient, now, |tx| {
            let t = d::container(tx, d::CARE_PLAN_TEXT).ok_or(AutomergeError::NotAnObject)?;
            tx.update_text(&t, text)
        })
    }

    /// Report from the bedside that a resident had a Part A or inpatient stay (inclusive local
    /// dates, reported once the resident is back): a write-once event billing folds in like a
    /// stay of the profile. Returns the report's id.
    pub fn report_stay(
        &mut self,
        patient: &str,
        stay: StayKind,
        from: NaiveDate,
        to: NaiveDate,
        reported_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Uuid> {
        if to < from {
            return Err(ReplicaError::invalid(
                format!("stay report for patient {patient}"),
                "to",
                "is before from",
            ));
        }
        self.report(
            patient,
            BedsideEvent::Stay { stay, from, to },
            reported_by,
            now,
        )
    }

    /// Report from the bedside that a resident died on a local date: a write-once event billing
    /// folds in like a date of death of the profile (the earliest reported wins). Returns the
    /// report's id.
    pub fn report_death(
        &mut self,
        patient: &str,
        on: NaiveDate,
        reported_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Uuid> {
        self.report(patient, BedsideEvent::Death { on }, reported_by, now)
    }

    /// Write an event of the facility's ADT feed under its derived id (the server's staging
    /// replica does this; a device's change carrying one is refused by the policy). Returns
    /// false when an event with that id is already there (a repeat writes nothing).
    pub fn record_adt_event(
        &mut self,
        patient: &str,
        id: Uuid,
        event: BedsideEvent,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let facility = self.facility.clone().ok_or(ReplicaError::NoFacility)?;
        self.require_patient(patient)?;
        if !matches!(event, BedsideEvent::Adt { .. }) {
            return Err(ReplicaError::invalid(
                format!("ADT event for patient {patient}"),
                "event",
                "not an ADT event",
            ));
        }
        let doc = DocumentId::patient(&facility, patient);
        let key = id.to_string();
        if let Some(d) = self.docs.get(&doc)
            && let Some(map) = d::container(&d.doc, d::BEDSIDE_REPORTS)
            && automerge::ReadDoc::get(&d.doc, &map, key.as_str())
                .ok()
                .flatten()
                .is_some()
        {
            return Ok(false);
        }
        let (reported_at, _) = self.local(now)?;
        let report = BedsideReport {
            id,
            patient: patient.to_string(),
            reported_by: "adt".to_string(),
            reported_at,
            event,
        };
        self.change(doc, DocKind::Patient, now, |tx| {
            let map = d::container(tx, d::BEDSIDE_REPORTS).ok_or(AutomergeError::NotAnObject)?;
            d::put_entry(tx, &map, &key, &report)
        })?;
        Ok(true)
    }

    fn report(
        &mut self,
        patient: &str,
        event: BedsideEvent,
        reported_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Uuid> {
        let facility = self.facility.clone().ok_or(ReplicaError::NoFacility)?;
        self.require_patient(patient)?;
        crate::ids::check_id("reported_by", reported_by).map_err(|e| {
            ReplicaError::invalid(
                format!("bedside report for patient {patient}"),
                "reported_by",
                e.to_string(),
            )
        })?;
        let (reported_at, _) = self.local(now)?;
        let report = BedsideReport {
            id: crate::ids::entry_id(now),
            patient: patient.to_string(),
            reported_by: reported_by.to_string(),
            reported_at,
            event,
        };
        let id = DocumentId::patient(&facility, patient);
        let key = report.id.to_string();
        self.change(id, DocKind::Patient, now, |tx| {
            let map = d::container(tx, d::BEDSIDE_REPORTS).ok_or(AutomergeError::NotAnObject)?;
            d::put_entry(tx, &map, &key, &report)
        })?;
        Ok(report.id)
    }

    /// Record a consent (given, or given and already revoked). Returns its key.
    pub fn record_consent(
        &mut self,
        patient: &str,
        mut consent: Consent,
        now: DateTime<Utc>,
    ) -> Result<String> {
        let facility = self.facility.clone().ok_or(ReplicaError::NoFacility)?;
        self.require_patient(patient)?;
        let key = consent
            .id
            .clone()
            .unwrap_or_else(|| crate::ids::entry_id(now).to_string());
        consent.id = None;
        if let Some(by) = &consent.by {
            self.require_person(&format!("consent {key}"), "by", by)?;
        }
        if let Some(r) = consent.revoked_on
            && r < consent.given_on
        {
            return Err(ReplicaError::invalid(
                format!("consent {key}"),
                "revoked_on",
                "is before given_on",
            ));
        }
        let id = DocumentId::patient(&facility, patient);
        let k = key.clone();
        self.change(id, DocKind::Patient, now, |tx| {
            let map = d::container(tx, d::CONSENTS).ok_or(AutomergeError::NotAnObject)?;
            d::put_entry(tx, &map, &k, &consent)
        })?;
        Ok(key)
    }

    /// Revoke a consent as of a date.
    pub fn revoke_consent(
        &mut self,
        patient: &str,
        consent: &str,
        on: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let facility = self.facility.clone().ok_or(ReplicaError::NoFacility)?;
        let current = self
            .patient(patient)?
            .consents
            .into_iter()
            .find(|c| c.id.as_deref() == Some(consent))
            .ok_or_else(|| {
                ReplicaError::invalid(
                    format!("patient {patient}"),
                    "consents",
                    format!("unknown consent {consent}"),
                )
            })?;
        if on < current.given_on {
            return Err(ReplicaError::invalid(
                format!("consent {consent}"),
                "revoked_on",
                "is before given_on",
            ));
        }
        let id = DocumentId::patient(&facility, patient);
        self.change(id, DocKind::Patient, now, |tx| {
            let map = d::container(tx, d::CONSENTS).ok_or(AutomergeError::NotAnObject)?;
            match tx.get(&map, consent)? {
                Some((_, obj)) => tx.put(&obj, "revoked_on", on.to_string()),
                None => Err(AutomergeError::NotAnObject),
            }
        })
    }

    // ----- patient months --------------------------------------------------------------------

    fn month_doc(&mut self, patient: &str, month: Month, now: DateTime<Utc>) -> Result<DocumentId> {
        let facility = self.facility.clone().ok_or(ReplicaError::NoFacility)?;
        let id = DocumentId::patient_month(&facility, patient, month);
        let fresh = self
            .docs
            .get(&id)
            .map(|f| d::root_str(&f.doc, "patient").is_none())
            .unwrap_or(true);
        if fresh {
            let (p, m, f) = (patient.to_string(), month.to_string(), facility.clone());
            self.change(id, DocKind::PatientMonth, now, |tx| {
                tx.put(ROOT, "facility", f.as_str())?;
                tx.put(ROOT, "patient", p.as_str())?;
                tx.put(ROOT, "month", m.as_str())
            })?;
            let key = format!("{patient}/{month}");
            let url = id.url();
            self.change(
                DocumentId::facility(&facility),
                DocKind::Facility,
                now,
                |tx| {
                    let months = d::container(tx, d::MONTHS).ok_or(AutomergeError::NotAnObject)?;
                    if tx.get(&months, key.as_str())?.is_none() {
                        tx.put(&months, key.as_str(), url.as_str())?;
                    }
                    Ok(())
                },
            )?;
        }
        Ok(id)
    }

    /// The patient-month documents held, as (patient, month, id).
    pub fn month_docs(&self) -> Vec<(String, Month, DocumentId)> {
        self.docs
            .iter()
            .filter(|(_, f)| d::kind_of(&f.doc) == Some(DocKind::PatientMonth))
            .filter_map(|(id, f)| {
                let p = d::root_str(&f.doc, "patient")?;
                let m = d::root_str(&f.doc, "month")?.parse().ok()?;
                Some((p, m, *id))
            })
            .collect()
    }

    /// The entries stored in one patient-month document.
    pub fn month_entries(&self, patient: &str, month: Month) -> MonthEntries {
        let Some(facility) = self.facility.as_deref() else {
            return MonthEntries::default();
        };
        match self.document(DocumentId::patient_month(facility, patient, month)) {
            Some(doc) => read_month(doc),
            None => MonthEntries::default(),
        }
    }

    fn local(&self, t: DateTime<Utc>) -> Result<(DateTime<FixedOffset>, Month)> {
        let (_, tz) = self.zone()?;
        let local = t.with_timezone(&tz);
        Ok((local.fixed_offset(), Month::of(local.date_naive())))
    }

    /// Start a timer: the start event is durable when this returns, so the timer survives the
    /// app being killed. Stop it with [`Replica::stop_timer`].
    pub fn start_timer(
        &mut self,
        patient: &str,
        staff: &str,
        program: Program,
        activity: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<RunningTimer> {
        self.require_patient(patient)?;
        let id = crate::ids::entry_id(now);
        self.require_person(&format!("timer {id}"), "staff", staff)?;
        let (started_at, month) = self.local(now)?;
        let timer = RunningTimer {
            id,
            patient: patient.to_string(),
            staff: staff.to_string(),
            program,
            started_at,
            activity,
        };
        let doc = self.month_doc(patient, month, now)?;
        self.change(doc, DocKind::PatientMonth, now, |tx| {
            let map = d::container(tx, d::TIMERS).ok_or(AutomergeError::NotAnObject)?;
            d::put_entry(tx, &map, &id.to_string(), &timer)
        })?;
        Ok(timer)
    }

    /// Every running timer on this replica.
    pub fn running_timers(&self) -> Vec<RunningTimer> {
        let mut out: Vec<RunningTimer> = self
            .docs
            .values()
            .filter(|f| d::kind_of(&f.doc) == Some(DocKind::PatientMonth))
            .flat_map(|f| read_month(&f.doc).running_timers)
            .collect();
        out.sort_by_key(|t| t.id);
        out
    }

    /// Stop a running timer; the time entry it becomes is returned once durable.
    pub fn stop_timer(
        &mut self,
        timer: Uuid,
        interactive: bool,
        note: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Interaction> {
        let (doc_id, entries) = self
            .find_month_of(timer)
            .ok_or(ReplicaError::UnknownEntry(timer))?;
        let Some(running) = entries
            .running_timers
            .iter()
            .find(|t| t.id == timer)
            .cloned()
        else {
            return if entries.interactions.iter().any(|i| i.id == timer) {
                Err(ReplicaError::TimerAlreadyStopped(timer))
            } else {
                Err(ReplicaError::UnknownEntry(timer))
            };
        };
        let (ended_at, _) = self.local(now)?;
        let interaction = Interaction {
            id: running.id,
            patient: running.patient.clone(),
            staff: running.staff.clone(),
            program: running.program,
            started_at: running.started_at,
            ended_at,
            interactive,
            activity: running.activity.clone(),
            note: note.clone(),
            amends: None,
        };
        let mut problems = Vec::new();
        validate::check_interaction_times(&interaction, &format!("timer {timer}"), &mut problems);
        if !problems.is_empty() {
            return Err(ReplicaError::Invalid(Problems(problems)));
        }
        let stop = TimerStop {
            ended_at,
            interactive,
            note,
        };
        self.change(doc_id, DocKind::PatientMonth, now, |tx| {
            let map = d::container(tx, d::TIMER_STOPS).ok_or(AutomergeError::NotAnObject)?;
            d::put_entry(tx, &map, &timer.to_string(), &stop)
        })?;
        Ok(interaction)
    }

    fn check_new_interaction(&self, i: &Interaction) -> Result<()> {
        self.require_patient(&i.patient)?;
        let entry = format!("interaction {}", i.id);
        self.require_person(&entry, "staff", &i.staff)?;
        let mut problems = Vec::new();
        validate::check_interaction_times(i, &entry, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ReplicaError::Invalid(Problems(problems)))
        }
    }

    fn write_interaction(&mut self, i: &Interaction, now: DateTime<Utc>) -> Result<()> {
        let (_, tz) = self.zone()?;
        let month = Month::of(i.started_at.with_timezone(&tz).date_naive());
        let doc = self.month_doc(&i.patient, month, now)?;
        self.change(doc, DocKind::PatientMonth, now, |tx| {
            let map = d::container(tx, d::INTERACTIONS).ok_or(AutomergeError::NotAnObject)?;
            if tx.get(&map, i.id.to_string())?.is_none() {
                d::put_entry(tx, &map, &i.id.to_string(), i)?;
            }
            Ok(())
        })
    }

    fn to_interaction(
        &self,
        n: NewInteraction,
        amends: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Interaction> {
        let (started_at, _) = self.local(n.started_at)?;
        let (ended_at, _) = self.local(n.ended_at)?;
        Ok(Interaction {
            id: crate::ids::entry_id(now),
            patient: n.patient,
            staff: n.staff,
            program: n.program,
            started_at,
            ended_at,
            interactive: n.interactive,
            activity: n.activity,
            note: n.note,
            amends,
        })
    }

    /// Log a time entry after the fact.
    pub fn log_interaction(
        &mut self,
        n: NewInteraction,
        now: DateTime<Utc>,
    ) -> Result<Interaction> {
        let i = self.to_interaction(n, None, now)?;
        self.check_new_interaction(&i)?;
        self.write_interaction(&i, now)?;
        Ok(i)
    }

    /// Correct a time entry: a new entry that replaces `original` (which stops counting).
    pub fn amend_interaction(
        &mut self,
        original: Uuid,
        n: NewInteraction,
        now: DateTime<Utc>,
    ) -> Result<Interaction> {
        let (_, entries) = self
            .find_month_of(original)
            .ok_or(ReplicaError::UnknownEntry(original))?;
        if !entries.interactions.iter().any(|i| i.id == original) {
            return Err(ReplicaError::UnknownEntry(original));
        }
        let i = self.to_interaction(n, Some(original), now)?;
        self.check_new_interaction(&i)?;
        self.write_interaction(&i, now)?;
        Ok(i)
    }

    /// Record a reading; impossible values are rejected with the field named. Alerts it raises
    /// under the facility's protocol are written in the same change (see [`Replica::record_reading_alerts`]).
    pub fn record_reading(&mut self, n: NewReading, now: DateTime<Utc>) -> Result<Reading> {
        self.record_reading_alerts(n, now).map(|(r, _)| r)
    }

    /// Record a reading and return the alerts it raised (on the tablet, offline too).
    pub fn record_reading_alerts(
        &mut self,
        n: NewReading,
        now: DateTime<Utc>,
    ) -> Result<(Reading, Vec<crate::alerts::Alert>)> {
        self.write_reading(crate::ids::entry_id(now), n, now)
            .map(|(r, a, _)| (r, a))
    }

    /// Record a reading under a given id (a vendor reading's derived id). Returns whether it was
    /// new: a reading already stored under `id` is left as it is and nothing is written.
    pub fn record_reading_with_id(
        &mut self,
        id: Uuid,
        n: NewReading,
        now: DateTime<Utc>,
    ) -> Result<(Reading, Vec<crate::alerts::Alert>, bool)> {
        self.write_reading(id, n, now)
    }

    fn write_reading(
        &mut self,
        id: Uuid,
        n: NewReading,
        now: DateTime<Utc>,
    ) -> Result<(Reading, Vec<crate::alerts::Alert>, bool)> {
        self.require_patient(&n.patient)?;
        // A device's clock may run a little ahead; a reading from later than that is refused.
        if n.measured_at > now + chrono::Duration::minutes(10) {
            return Err(ReplicaError::invalid(
                format!("reading {id}"),
                "measured_at",
                format!("{} is in the future", n.measured_at.to_rfc3339()),
            ));
        }
        let (measured_at, month) = self.local(n.measured_at)?;
        let reading = Reading {
            id,
            patient: n.patient,
            kind: n.kind,
            systolic: n.systolic,
            diastolic: n.diastolic,
            value: n.value,
            unit: n.unit,
            measured_at,
            device: n.device,
            source: n.source,
            program: n.program,
        };
        let mut problems = Vec::new();
        validate::check_reading(&reading, &format!("reading {}", reading.id), &mut problems);
        if !problems.is_empty() {
            return Err(ReplicaError::Invalid(Problems(problems)));
        }
        let existing = self
            .month_entries(&reading.patient, month)
            .readings
            .into_iter()
            .find(|r| r.id == id);
        if let Some(r) = existing {
            return Ok((r, Vec::new(), false));
        }
        let alerts = self.alerts_for(&reading, month, now)?;
        let doc = self.month_doc(&reading.patient, month, now)?;
        self.change(doc, DocKind::PatientMonth, now, |tx| {
            let map = d::container(tx, d::READINGS).ok_or(AutomergeError::NotAnObject)?;
            d::put_entry(tx, &map, &reading.id.to_string(), &reading)?;
            write_alerts(tx, &alerts)
        })?;
        Ok((reading, alerts, true))
    }

    /// Void an entry (interaction, timer or reading): it stays on record and stops counting.
    pub fn void_entry(
        &mut self,
        target: Uuid,
        by: &str,
        reason: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Correction> {
        let (doc_id, _) = self
            .find_month_of(target)
            .ok_or(ReplicaError::UnknownEntry(target))?;
        let id = crate::ids::entry_id(now);
        self.require_person(&format!("correction {id}"), "by", by)?;
        let (at, _) = self.local(now)?;
        let correction = Correction {
            id,
            target,
            kind: CorrectionKind::Void,
            at,
            by: by.to_string(),
            reason,
        };
        self.change(doc_id, DocKind::PatientMonth, now, |tx| {
            let map = d::container(tx, d::CORRECTIONS).ok_or(AutomergeError::NotAnObject)?;
            d::put_entry(tx, &map, &id.to_string(), &correction)
        })?;
        Ok(correction)
    }

    /// The month document holding an entry (interaction, timer or reading) with this id.
    fn find_month_of(&self, entry: Uuid) -> Option<(DocumentId, MonthEntries)> {
        let key = entry.to_string();
        self.docs.iter().find_map(|(id, f)| {
            if d::kind_of(&f.doc) != Some(DocKind::PatientMonth) {
                return None;
            }
            let holds = [d::INTERACTIONS, d::READINGS, d::TIMERS].iter().any(|c| {
                d::container(&f.doc, c)
                    .map(|m| matches!(f.doc.get(&m, key.as_str()), Ok(Some(_))))
                    .unwrap_or(false)
            });
            holds.then(|| (*id, read_month(&f.doc)))
        })
    }

    /// Minutes per program and reading days for a patient's month, as the nurse sees it.
    pub fn patient_month_summary(&self, patient: &str, month: Month) -> Result<MonthSummary> {
        self.require_patient(patient)?;
        let (_, tz) = self.zone()?;
        let e = self.month_entries(patient, month);
        let superseded: BTreeSet<Uuid> = e
            .corrections
            .iter()
            .map(|c| c.target)
            .chain(e.interactions.iter().filter_map(|i| i.amends))
            .collect();
        let mut seconds: BTreeMap<Program, i64> = BTreeMap::new();
        for i in e
            .interactions
            .iter()
            .filter(|i| !superseded.contains(&i.id))
        {
            *seconds.entry(i.program).or_default() += (i.ended_at - i.started_at).num_seconds();
        }
        let days: BTreeSet<NaiveDate> = e
            .readings
            .iter()
            .filter(|r| r.source == ReadingSource::Device && !superseded.contains(&r.id))
            .map(|r| r.measured_at.with_timezone(&tz).date_naive())
            .collect();
        Ok(MonthSummary {
            patient: patient.to_string(),
            month,
            minutes: Program::ALL
                .iter()
                .map(|p| (*p, (seconds.get(p).copied().unwrap_or(0) / 60) as u32))
                .collect(),
            reading_days: days.len() as u32,
            running_timers: e.running_timers.len(),
        })
    }

    // ----- import / export -------------------------------------------------------------------

    /// Import a data file. It is validated first; on any problem nothing is written. Entries
    /// already present (same id) are left as they are: import is idempotent.
    pub fn import(&mut self, data: &DataFile, now: DateTime<Utc>) -> Result<()> {
        let problems = validate::validate(data);
        if !problems.is_empty() {
            return Err(ReplicaError::Invalid(Problems(problems)));
        }
        let fid = data.facility.id.clone();
        match &self.facility {
            Some(have) if *have != fid => {
                return Err(ReplicaError::OtherFacility {
                    have: have.clone(),
                    want: fid,
                });
            }
            Some(_) => {}
            None => {
                self.facility = Some(fid.clone());
                self.save_meta(&ReplicaMeta {
                    format: META_FORMAT.to_string(),
                    actor: self.actor.to_hex_string(),
                    facility: Some(fid.clone()),
                    key_check: self.key_check.clone(),
                })?;
            }
        }
        let facility_json = serde_json::to_value(&data.facility).unwrap_or_default();
        self.change_as(
            DocumentId::facility(&fid),
            DocKind::Facility,
            now,
            false,
            |tx| {
                let f = d::container(tx, d::FACILITY).ok_or(AutomergeError::NotAnObject)?;
                update_fields(tx, &f, &facility_json)?;
                let practitioners =
                    d::container(tx, d::PRACTITIONERS).ok_or(AutomergeError::NotAnObject)?;
                for p in &data.practitioners {
                    update_entry(tx, &practitioners, &p.id, p)?;
                }
                let staff = d::container(tx, d::STAFF).ok_or(AutomergeError::NotAnObject)?;
                for s in &data.staff {
                    update_entry(tx, &staff, &s.id, s)?;
                }
                let patients = d::container(tx, d::PATIENTS).ok_or(AutomergeError::NotAnObject)?;
                for p in &data.patients {
                    let url = DocumentId::patient(&fid, &p.id).url();
                    if tx.get(&patients, p.id.as_str())?.is_none() {
                        tx.put(&patients, p.id.as_str(), url)?;
                    }
                }
                Ok(())
            },
        )?;
        for p in &data.patients {
            let mut profile = serde_json::to_value(p).unwrap_or_default();
            let mut text = None;
            if let Some(obj) = profile.as_object_mut() {
                obj.remove("consents");
                if let Some(plan) = obj.get_mut("care_plan").and_then(|v| v.as_object_mut()) {
                    text = plan
                        .remove("text")
                        .and_then(|t| t.as_str().map(str::to_string));
                }
            }
            let consents: Vec<(String, Consent)> = p
                .consents
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let key =
                        c.id.clone()
                            .unwrap_or_else(|| crate::ids::consent_key(&p.id, i));
                    (
                        key,
                        Consent {
                            id: None,
                            ..c.clone()
                        },
                    )
                })
                .collect();
            self.change_as(
                DocumentId::patient(&fid, &p.id),
                DocKind::Patient,
                now,
                false,
                |tx| {
                    let prof = d::container(tx, d::PROFILE).ok_or(AutomergeError::NotAnObject)?;
                    update_fields(tx, &prof, &profile)?;
                    let cmap = d::container(tx, d::CONSENTS).ok_or(AutomergeError::NotAnObject)?;
                    for (k, c) in &consents {
                        update_entry(tx, &cmap, k, c)?;
                    }
                    if let Some(t) = &text {
                        let tobj = d::container(tx, d::CARE_PLAN_TEXT)
                            .ok_or(AutomergeError::NotAnObject)?;
                        if tx.text(&tobj)? != *t {
                            tx.update_text(&tobj, t)?;
                        }
                    }
                    Ok(())
                },
            )?;
        }
        // Entries, grouped per patient-month document (the month of their local start).
        let tz = validate::parse_zone(&data.facility.timezone).ok_or(ReplicaError::NoFacility)?;
        let month_of = |t: &DateTime<FixedOffset>| Month::of(t.with_timezone(&tz).date_naive());
        let mut groups: MonthWrites = BTreeMap::new();
        let mut push = |patient: &str,
                        month: Month,
                        container: &'static str,
                        id: Uuid,
                        v: serde_json::Value| {
            groups
                .entry((patient.to_string(), month))
                .or_default()
                .push((container, id.to_string(), v));
        };
        for i in &data.interactions {
            push(
                &i.patient,
                month_of(&i.started_at),
                d::INTERACTIONS,
                i.id,
                serde_json::to_value(i).unwrap_or_default(),
            );
        }
        for r in &data.readings {
            push(
                &r.patient,
                month_of(&r.measured_at),
                d::READINGS,
                r.id,
                serde_json::to_value(r).unwrap_or_default(),
            );
        }
        for t in &data.timers {
            push(
                &t.patient,
                month_of(&t.started_at),
                d::TIMERS,
                t.id,
                serde_json::to_value(t).unwrap_or_default(),
            );
        }
        for c in &data.corrections {
            // A correction lives beside its target.
            let target = data
                .interactions
                .iter()
                .find(|i| i.id == c.target)
                .map(|i| (i.patient.clone(), month_of(&i.started_at)))
                .or_else(|| {
                    data.readings
                        .iter()
                        .find(|r| r.id == c.target)
                        .map(|r| (r.patient.clone(), month_of(&r.measured_at)))
                });
            if let Some((p, m)) = target {
                push(
                    &p,
                    m,
                    d::CORRECTIONS,
                    c.id,
                    serde_json::to_value(c).unwrap_or_default(),
                );
            }
        }
        for ((patient, month), entries) in groups {
            let doc = self.month_doc(&patient, month, now)?;
            self.change_as(doc, DocKind::PatientMonth, now, false, |tx| {
                for (container, key, v) in &entries {
                    let map = d::container(tx, container).ok_or(AutomergeError::NotAnObject)?;
                    if tx.get(&map, key.as_str())?.is_none() {
                        d::put_json(tx, &map, key.as_str(), v)?;
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Everything the replica holds for its facility, as a data file in canonical order.
    /// Entries that cannot be read are returned as problems beside it.
    pub fn export(&self) -> Result<(DataFile, Vec<Problem>)> {
        let facility = self.facility_doc_id()?;
        let fdoc = self.document(facility).ok_or(ReplicaError::NoFacility)?;
        let fid = self.facility.clone().unwrap_or_default();
        let patients: Vec<(String, &automerge::Automerge)> = self
            .patient_ids()
            .into_iter()
            .filter_map(|p| {
                let doc = self.document(DocumentId::patient(&fid, &p))?;
                Some((p, doc))
            })
            .collect();
        let months: Vec<&automerge::Automerge> = self
            .month_docs()
            .into_iter()
            .filter_map(|(_, _, id)| self.document(id))
            .collect();
        view::assemble(fdoc, patients, months).map_err(|p| ReplicaError::Invalid(Problems(p)))
    }

    // ----- sync -------------------------------------------------------------------------------

    fn sync_states_path(&self, peer: &str) -> PathBuf {
        let safe: String = peer
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join("sync").join(format!("{safe}.states"))
    }

    /// The sync states last saved for `peer` (one file per peer, read once).
    fn saved_states(&mut self, peer: &str) -> &HashMap<DocumentId, Vec<u8>> {
        if !self.saved_sync.contains_key(peer) {
            let mut map = HashMap::new();
            if let Some(Ok(bytes)) = (!self.memory).then(|| fs::read(self.sync_states_path(peer))) {
                // Records: 16-byte document id, u32 LE length, encoded state. A damaged tail
                // only costs a fuller resync of the documents it held.
                let mut rest = bytes.as_slice();
                while rest.len() >= 20 {
                    let mut id = [0u8; 16];
                    id.copy_from_slice(&rest[..16]);
                    let len = u32::from_le_bytes([rest[16], rest[17], rest[18], rest[19]]) as usize;
                    let Some(state) = rest.get(20..20 + len) else {
                        break;
                    };
                    map.insert(DocumentId::from_bytes(id), state.to_vec());
                    rest = &rest[20 + len..];
                }
            }
            self.saved_sync.insert(peer.to_string(), map);
        }
        self.saved_sync.entry(peer.to_string()).or_default()
    }

    /// The sync state with `peer` for `doc`: in memory, else as last saved on disk, else new.
    fn sync_state(&mut self, doc: DocumentId, peer: &str) -> &mut sync::State {
        let key = (doc, peer.to_string());
        if !self.sync_states.contains_key(&key) {
            let saved = self
                .saved_states(peer)
                .get(&doc)
                .and_then(|b| sync::State::decode(b).ok())
                .unwrap_or_default();
            self.sync_states.insert(key.clone(), saved);
        }
        self.sync_states.entry(key).or_default()
    }

    /// Save the sync states with `peer` (their shared heads) in one file, so that a reconnect
    /// resumes instead of starting over. Called at the end of a connection, not per message.
    pub fn save_sync_states(&mut self, peer: &str) -> Result<()> {
        if self.memory {
            return Ok(());
        }
        let mut map = self.saved_states(peer).clone();
        for ((doc, p), state) in &self.sync_states {
            if p == peer {
                map.insert(*doc, state.encode());
            }
        }
        let mut bytes = Vec::new();
        let mut docs: Vec<_> = map.iter().collect();
        docs.sort_by_key(|(d, _)| **d);
        for (doc, state) in docs {
            bytes.extend_from_slice(doc.as_bytes());
            bytes.extend_from_slice(&(state.len() as u32).to_le_bytes());
            bytes.extend_from_slice(state);
        }
        let path = self.sync_states_path(peer);
        let io = |source| {
            ReplicaError::Store(StoreError::Io {
                path: path.clone(),
                source,
            })
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, &bytes).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        self.saved_sync.insert(peer.to_string(), map);
        Ok(())
    }

    // ----- recovery after a refusal ------------------------------------------------------------

    /// Recover from a change the server refused (`NetError::Refused`): keep this document's
    /// entries aside in `relog/<doc>` (fsynced, sealed like the documents), drop the local copy
    /// and its sync states, so the next sync brings the server's copy; then
    /// [`Replica::apply_relogs`] writes back, through the write policy, every kept entry the
    /// server's copy lacks — each once, under its own id. The refused change itself (an edit, a
    /// deletion, a malformed entry) is not an entry the policy accepts, so it is not re-made.
    /// Returns how many entries were kept aside.
    pub fn reset_document(&mut self, doc: DocumentId) -> Result<usize> {
        if self.memory {
            return Err(ReplicaError::Meta {
                path: PathBuf::new(),
                message: "an in-memory replica keeps no re-logs to reset a document with".into(),
            });
        }
        let file = self
            .docs
            .get(&doc)
            .ok_or(ReplicaError::UnknownEntry(Uuid::nil()))?;
        let kind = d::kind_of(&file.doc).unwrap_or(DocKind::PatientMonth);
        let containers: &[&str] = match kind {
            DocKind::PatientMonth => &[
                d::INTERACTIONS,
                d::READINGS,
                d::TIMERS,
                d::TIMER_STOPS,
                d::CORRECTIONS,
                d::ALERTS,
                d::ALERT_EVENTS,
            ],
            DocKind::Patient => &[d::CONSENTS],
            DocKind::Facility => &[],
        };
        let mut entries = serde_json::Map::new();
        let mut kept = 0;
        for c in containers {
            if let serde_json::Value::Object(m) = d::container_json(&file.doc, c) {
                kept += m.len();
                entries.insert(c.to_string(), serde_json::Value::Object(m));
            }
        }
        let relog = serde_json::json!({
            "kind": kind.as_str(),
            "patient": d::root_str(&file.doc, "patient"),
            "month": d::root_str(&file.doc, "month"),
            "entries": entries,
        });
        let dir = self.dir.join(RELOG_DIR);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReplicaError::Store(StoreError::Io { path, source })
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{doc}.relog"));
        let mut bytes = serde_json::to_vec(&relog).unwrap_or_default();
        if let Some(s) = &self.sealer {
            bytes = s
                .seal(&bytes)
                .map_err(|_| ReplicaError::WrongKey(path.clone()))?;
        }
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir)?;
        self.forget_documents(&[doc])?;
        Ok(kept)
    }

    /// Drop local copies: files, memory, sync states (memory and saved).
    fn forget_documents(&mut self, docs: &[DocumentId]) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ReplicaError::Store(StoreError::Io { path: p, source })
        };
        for doc in docs {
            self.docs.remove(doc);
            if self.memory {
                continue;
            }
            for ext in ["log", "snap"] {
                let f = self.docs_dir.join(format!("{doc}.{ext}"));
                match fs::remove_file(&f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&f)(e)),
                }
            }
        }
        if !self.memory {
            sync_dir(&self.docs_dir)?;
        }
        self.sync_states.retain(|(d, _), _| !docs.contains(d));
        let peers: Vec<String> = self.saved_sync.keys().cloned().collect();
        for peer in peers {
            if let Some(m) = self.saved_sync.get_mut(&peer) {
                m.retain(|d, _| !docs.contains(d));
            }
            self.save_sync_states(&peer)?;
        }
        Ok(())
    }

    // ----- the sync window ----------------------------------------------------------------------

    /// Keep only the sync window's documents (see [`SyncWindow`]); `None` holds every document
    /// (tools, the server's staging, tests of history). Not persisted: the app sets it with the
    /// device's date before each sync.
    pub fn set_sync_window(&mut self, window: Option<SyncWindow>) {
        self.window = window;
    }

    /// The sync window in force.
    pub fn sync_window(&self) -> Option<SyncWindow> {
        self.window
    }

    /// Whether a document belongs in the sync window: the facility document, the documents of
    /// residents on the roster, and their month documents of months the window holds. Any
    /// document when no window is set.
    pub fn in_window(&self, doc: DocumentId) -> bool {
        let (Some(w), Some(f)) = (self.window, self.facility.as_deref()) else {
            return true;
        };
        if doc == DocumentId::facility(f) {
            return true;
        }
        let roster = self.patient_ids();
        if roster.iter().any(|p| DocumentId::patient(f, p) == doc) {
            return true;
        }
        let Some(file) = self.docs.get(&doc) else {
            return false;
        };
        let p = d::root_str(&file.doc, "patient");
        let m = d::root_str(&file.doc, "month").and_then(|m| m.parse::<Month>().ok());
        match (p, m) {
            (Some(p), Some(m)) => roster.contains(&p) && w.holds(m),
            // Not a document of a resident (a document being received): keep it.
            _ => d::kind_of(&file.doc).is_none(),
        }
    }

    /// Drop the documents outside the sync window whose every change `peer` (the server's
    /// storage id) has confirmed — never one with unsent changes or entries kept aside for a
    /// re-log. Call after a completed sync. Returns the dropped documents.
    pub fn drop_outside_window(&mut self, peer: &str) -> Result<Vec<DocumentId>> {
        if self.window.is_none() {
            return Ok(Vec::new());
        }
        let relogs = self.pending_relogs();
        let outside: Vec<DocumentId> = self
            .docs
            .keys()
            .copied()
            .filter(|d| !self.in_window(*d) && !relogs.contains(d))
            .collect();
        let confirmed: Vec<DocumentId> = outside
            .into_iter()
            .filter(|d| self.in_sync_with(*d, peer) || self.heads_if_shared(*d, peer).is_some())
            .collect();
        self.forget_documents(&confirmed)?;
        Ok(confirmed)
    }

    /// Documents with entries kept aside by [`Replica::reset_document`].
    pub fn pending_relogs(&self) -> Vec<DocumentId> {
        let Some(Ok(rd)) = (!self.memory).then(|| fs::read_dir(self.dir.join(RELOG_DIR))) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_suffix(".relog")?.parse().ok()
            })
            .collect()
    }

    /// Write back the entries kept aside by [`Replica::reset_document`] that the document (now
    /// the server's copy, after a sync) lacks; call after a sync, then sync again. Each entry is
    /// one change through the write policy: an entry the policy refuses is dropped and counted.
    /// Returns (written, dropped).
    pub fn apply_relogs(&mut self, now: DateTime<Utc>) -> Result<(usize, usize)> {
        let (mut written, mut dropped) = (0, 0);
        for doc in self.pending_relogs() {
            let path = self.dir.join(RELOG_DIR).join(format!("{doc}.relog"));
            let mut bytes = fs::read(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            if let Some(s) = &self.sealer {
                bytes = s
                    .open(&bytes)
                    .map_err(|_| ReplicaError::WrongKey(path.clone()))?;
            }
            let relog: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| ReplicaError::Meta {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let kind = relog["kind"]
                .as_str()
                .and_then(DocKind::parse)
                .unwrap_or(DocKind::PatientMonth);
            if kind == DocKind::PatientMonth && self.document(doc).is_none() {
                // The server never had it: make it again, from genesis.
                let (Some(p), Some(m)) = (
                    relog["patient"].as_str(),
                    relog["month"]
                        .as_str()
                        .and_then(|m| m.parse::<Month>().ok()),
                ) else {
                    continue;
                };
                let id = self.month_doc(p, m, now)?;
                if id != doc {
                    continue;
                }
            }
            if self.document(doc).is_none() {
                // Not synced yet: keep the relog for later.
                continue;
            }
            let entries = relog["entries"].as_object().cloned().unwrap_or_default();
            for (container, map) in entries {
                let Some(map) = map.as_object() else { continue };
                let Some(c) = DocKind::containers(kind)
                    .iter()
                    .map(|(n, _)| *n)
                    .find(|n| *n == container)
                else {
                    continue;
                };
                for (key, value) in map {
                    let present = self.document(doc).is_some_and(|dd| {
                        d::container(dd, c)
                            .is_some_and(|m| matches!(dd.get(&m, key.as_str()), Ok(Some(_))))
                    });
                    if present {
                        continue;
                    }
                    match self.change(doc, kind, now, |tx| {
                        let m = d::container(tx, c).ok_or(AutomergeError::NotAnObject)?;
                        d::put_json(tx, &m, key.as_str(), value)
                    }) {
                        Ok(()) => written += 1,
                        Err(ReplicaError::Refused { .. }) => dropped += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            fs::remove_file(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok((written, dropped))
    }

    /// Forget the in-memory sync session with `peer` (a new connection starts a new session;
    /// the saved shared heads are kept).
    pub fn reset_sync_sessions(&mut self, peer: &str) {
        self.sync_states.retain(|(_, p), _| p != peer);
    }

    /// Whether `peer` has told us it holds exactly the changes of `doc` we hold.
    pub fn in_sync_with(&self, doc: DocumentId, peer: &str) -> bool {
        let Some(file) = self.docs.get(&doc) else {
            return false;
        };
        let Some(state) = self.sync_states.get(&(doc, peer.to_string())) else {
            return false;
        };
        let mut ours = file.doc.get_heads();
        ours.sort();
        match &state.their_heads {
            Some(theirs) => {
                let mut theirs = theirs.clone();
                theirs.sort();
                theirs == ours
            }
            // Nothing heard in this session: confirmed if nothing changed since the last one.
            None => {
                let mut shared = state.shared_heads.clone();
                shared.sort();
                !ours.is_empty() && shared == ours
            }
        }
    }

    /// The document's heads when they are exactly the heads last shared with `peer` — nothing
    /// changed on this side since the last confirmed sync (what a summary may list); `None` when
    /// the document is absent or has changes `peer` has not confirmed.
    pub fn heads_if_shared(&mut self, doc: DocumentId, peer: &str) -> Option<Vec<ChangeHash>> {
        let mut ours = self.docs.get(&doc)?.doc.get_heads();
        if ours.is_empty() {
            return None;
        }
        let mut shared = self.sync_state(doc, peer).shared_heads.clone();
        ours.sort();
        shared.sort();
        (ours == shared).then_some(ours)
    }

    /// Whether the replica holds any change of `doc`.
    pub fn has_document(&self, doc: DocumentId) -> bool {
        self.docs
            .get(&doc)
            .is_some_and(|f| !f.doc.get_heads().is_empty())
    }

    /// The documents a device syncs: all it holds, plus the facility document and the patient
    /// and patient-month documents the facility document lists (with a sync window, only the
    /// month documents the window holds; documents held outside it sync, then leave).
    pub fn documents_to_sync(&self) -> Vec<DocumentId> {
        let mut ids: BTreeSet<DocumentId> = self.docs.keys().copied().collect();
        if let Some(f) = self.facility.as_deref() {
            let facility = DocumentId::facility(f);
            ids.insert(facility);
            for p in self.patient_ids() {
                ids.insert(DocumentId::patient(f, &p));
            }
            // Month documents other devices created, listed in the facility's index.
            if let Some((doc, months)) = self
                .document(facility)
                .and_then(|doc| d::container(doc, d::MONTHS).map(|m| (doc, m)))
            {
                let roster: Option<BTreeSet<String>> = self
                    .window
                    .map(|_| self.patient_ids().into_iter().collect());
                for key in doc.keys(&months) {
                    if let Some((p, m)) = key.split_once('/')
                        && let Ok(month) = m.parse::<Month>()
                    {
                        // With a window, only the open months of residents on the roster.
                        let wanted = match (&self.window, &roster) {
                            (Some(w), Some(r)) => w.holds(month) && r.contains(p),
                            _ => true,
                        };
                        if wanted {
                            ids.insert(DocumentId::patient_month(f, p, month));
                        }
                    }
                }
            }
        }
        ids.into_iter().collect()
    }

    /// Bind the replica to a facility without importing (a new device that will receive
    /// everything by sync).
    pub fn join_facility(&mut self, facility: &str) -> Result<()> {
        match &self.facility {
            Some(have) if have != facility => Err(ReplicaError::OtherFacility {
                have: have.clone(),
                want: facility.to_string(),
            }),
            Some(_) => Ok(()),
            None => {
                self.facility = Some(facility.to_string());
                self.save_meta(&ReplicaMeta {
                    format: META_FORMAT.to_string(),
                    actor: self.actor.to_hex_string(),
                    facility: Some(facility.to_string()),
                    key_check: self.key_check.clone(),
                })
            }
        }
    }

    /// The next sync message for `doc` to `peer`, if there is anything to say.
    pub fn generate_sync_message(&mut self, doc: DocumentId, peer: &str) -> Option<Vec<u8>> {
        if !self.docs.contains_key(&doc) {
            let mut file = self.doc_file(doc).ok()?;
            file.doc.set_actor(self.actor.clone());
            self.docs.insert(doc, file);
        }
        let mut state = std::mem::take(self.sync_state(doc, peer));
        let msg = self
            .docs
            .get(&doc)
            .and_then(|f| f.doc.generate_sync_message(&mut state))
            .map(|m| m.encode());
        *self.sync_state(doc, peer) = state;
        msg
    }

    /// Apply a sync message from `peer` for `doc` (created empty if unknown) and persist.
    pub fn receive_sync_message(
        &mut self,
        doc: DocumentId,
        peer: &str,
        message: &[u8],
    ) -> Result<()> {
        let msg = sync::Message::decode(message).map_err(|e| ReplicaError::SyncMessage {
            doc,
            message: e.to_string(),
        })?;
        if !self.docs.contains_key(&doc) {
            let mut file = self.doc_file(doc)?;
            file.doc.set_actor(self.actor.clone());
            self.docs.insert(doc, file);
        }
        let mut state = std::mem::take(self.sync_state(doc, peer));
        let result = match self.docs.get_mut(&doc) {
            Some(file) => file
                .doc
                .receive_sync_message(&mut state, msg)
                .map_err(|source| ReplicaError::Automerge {
                    doc,
                    source: Box::new(source),
                })
                .and_then(|()| file.persist().map_err(ReplicaError::from)),
            None => Ok(()),
        };
        *self.sync_state(doc, peer) = state;
        result
    }
}

/// Write only the top-level fields of `v` that differ from what `obj` holds.
fn update_fields(
    tx: &mut Transaction<'_>,
    obj: &automerge::ObjId,
    v: &serde_json::Value,
) -> Result<(), AutomergeError> {
    let Some(fields) = v.as_object() else {
        return Ok(());
    };
    for (k, v) in fields {
        let current = match tx.get(obj, k.as_str())? {
            Some((val, id)) => d::value_to_json(tx, &val, &id)?,
            None => serde_json::Value::Null,
        };
        if current != *v || tx.get(obj, k.as_str())?.is_none() {
            d::put_json(tx, obj, k.as_str(), v)?;
        }
    }
    Ok(())
}

/// Write a keyed entry when absent, or update its changed fields.
fn update_entry<S: Serialize>(
    tx: &mut Transaction<'_>,
    map: &automerge::ObjId,
    key: &str,
    value: &S,
) -> Result<(), AutomergeError> {
    let v = serde_json::to_value(value).map_err(|_| AutomergeError::Fail)?;
    match tx.get(map, key)? {
        Some((automerge::Value::Object(_), obj)) => update_fields(tx, &obj, &v),
        _ => d::put_json(tx, map, key, &v),
    }
}

/// A document the replica was just working on is not in memory (a bug, not bad input).
fn vanished(doc: DocumentId) -> ReplicaError {
    ReplicaError::Meta {
        path: PathBuf::from(doc.to_string()),
        message: "document vanished from memory".into(),
    }
}

fn write_meta(dir: &Path, meta: &ReplicaMeta) -> Result<()> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| ReplicaError::Meta {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ReplicaError::Store(StoreError::Io { path: p, source })
    };
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)?;
    Ok(())
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
