//! rounds-mobile: the Rounds core for the tablet apps, through uniffi (Kotlin on Android, Swift
//! on iOS, Python for tests). One object, [`RoundsReplica`], with the staff actions, the queries
//! and sync; records for the domain types; one error enum. No panic crosses the FFI: every
//! fallible call returns a [`RoundsError`], which becomes a Kotlin/Swift exception.
//!
//! Threading: `sync` and `enrol` are async (Kotlin `suspend`, Swift `async`, Python coroutines);
//! they wait on the network without holding anything, take the replica's lock only while a
//! frame is applied (so actions and queries run during a sync), and stop when the calling
//! coroutine/task is cancelled (or on `cancel_sync`). Every other method is a short local
//! action (the replica's lock and one durable write to the device's disk): thread-safe and
//! blocking, so call them off the UI thread (`Dispatchers.IO`, a background `Task`).
//!
//! Times are the platform's instant type (`java.time.Instant`, `Date`, `datetime`); calendar
//! dates (`YYYY-MM-DD`) and months (`YYYY-MM`) are strings, as the facility's local calendar
//! reads them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, NaiveDate, Utc};
use rounds_core::replica::{NewInteraction, NewReading};
use rounds_core::{Month, Program as CoreProgram, ReadingKind as CoreKind, Replica};

uniffi::setup_scaffolding!();

/// Every failure, as a typed enum the app can switch on (Kotlin: `RoundsException.Invalid`
/// and so on, with the fields as properties; Swift: `RoundsError.Invalid(entry:field:detail:)`).
/// `detail` is fit for a log or a support ticket: ids, never names.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum RoundsError {
    /// Bad input. `entry` is what was being written (`reading`, `consent`, an entry id) and
    /// `field` the argument or field at fault (`systolic`, `given_on`, `measured_at`), so the
    /// app can put the message next to the right input; `detail` says what is wrong.
    #[error("{entry}: field `{field}`: {detail}")]
    Invalid {
        entry: String,
        field: String,
        detail: String,
    },
    /// No such patient, entry or alert — or no facility joined yet.
    #[error("not found: {detail}")]
    NotFound { detail: String },
    /// The device's disk failed or the replica is damaged.
    #[error("storage: {detail}")]
    Storage { detail: String },
    /// The replica is encrypted with another key.
    #[error("wrong key: {detail}")]
    WrongKey { detail: String },
    /// The network or the server (after the retries): try again later; nothing is lost.
    #[error("sync: {detail}")]
    Sync { detail: String },
    /// The sync was cancelled (`cancel_sync`, or the coroutine/task was cancelled).
    #[error("sync cancelled")]
    Cancelled,
    /// The write policy refused a change (here before writing, or by the server during a
    /// sync), or the server refused an enrolment code (`document` empty). After a refusal of a
    /// synced change: `reset_document(document)`, sync, `apply_relogs()`, sync.
    #[error("refused: {detail}")]
    Refused { document: String, detail: String },
}

impl From<rounds_core::ReplicaError> for RoundsError {
    fn from(e: rounds_core::ReplicaError) -> RoundsError {
        use rounds_core::ReplicaError as E;
        let detail = e.to_string();
        match e {
            E::Invalid(problems) => match problems.0.first() {
                Some(p) => RoundsError::Invalid {
                    entry: p.entry.clone(),
                    field: p.field.clone(),
                    detail: problems
                        .0
                        .iter()
                        .map(|p| p.message.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                },
                None => invalid("input", "", detail),
            },
            E::OtherFacility { .. } => invalid("replica", "facility", detail),
            E::TimerAlreadyStopped(_) => invalid("timer", "timer_id", detail),
            E::UnknownPatient(_) | E::UnknownEntry(_) | E::NoFacility => {
                RoundsError::NotFound { detail }
            }
            E::WrongKey(_) | E::KeyRequired(_) => RoundsError::WrongKey { detail },
            E::Refused { doc, .. } => RoundsError::Refused {
                document: doc.to_string(),
                detail,
            },
            _ => RoundsError::Storage { detail },
        }
    }
}

fn parse_day(entry: &str, field: &str, value: &str) -> Result<NaiveDate, RoundsError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
        invalid(
            entry,
            field,
            format!("{value:?} is not a date (YYYY-MM-DD)"),
        )
    })
}

fn parse_month(entry: &str, value: &str) -> Result<Month, RoundsError> {
    value
        .parse()
        .map_err(|e: rounds_core::month::MonthParseError| invalid(entry, "month", e.to_string()))
}

fn invalid(entry: &str, field: &str, detail: impl Into<String>) -> RoundsError {
    RoundsError::Invalid {
        entry: entry.to_string(),
        field: field.to_string(),
        detail: detail.into(),
    }
}

fn sync_error(e: impl std::fmt::Display) -> RoundsError {
    RoundsError::Sync {
        detail: e.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Program {
    Ccm,
    Pcm,
    Rpm,
    Apcm,
    Bhi,
    Rtm,
}

impl From<Program> for CoreProgram {
    fn from(p: Program) -> CoreProgram {
        match p {
            Program::Ccm => CoreProgram::Ccm,
            Program::Pcm => CoreProgram::Pcm,
            Program::Rpm => CoreProgram::Rpm,
            Program::Apcm => CoreProgram::Apcm,
            Program::Bhi => CoreProgram::Bhi,
            Program::Rtm => CoreProgram::Rtm,
        }
    }
}

impl From<CoreProgram> for Program {
    fn from(p: CoreProgram) -> Program {
        match p {
            CoreProgram::Ccm => Program::Ccm,
            CoreProgram::Pcm => Program::Pcm,
            CoreProgram::Rpm => Program::Rpm,
            CoreProgram::Apcm => Program::Apcm,
            CoreProgram::Bhi => Program::Bhi,
            CoreProgram::Rtm => Program::Rtm,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ReadingKind {
    BloodPressure,
    HeartRate,
    Weight,
    Glucose,
    Spo2,
    Temperature,
    RespiratoryRate,
    /// RTM kinds (with `program: Rtm`).
    MedicationAdherence,
    TherapyAdherence,
    TherapyResponse,
    PainScore,
    RangeOfMotion,
}

impl From<ReadingKind> for CoreKind {
    fn from(k: ReadingKind) -> CoreKind {
        match k {
            ReadingKind::BloodPressure => CoreKind::BloodPressure,
            ReadingKind::HeartRate => CoreKind::HeartRate,
            ReadingKind::Weight => CoreKind::Weight,
            ReadingKind::Glucose => CoreKind::Glucose,
            ReadingKind::Spo2 => CoreKind::Spo2,
            ReadingKind::Temperature => CoreKind::Temperature,
            ReadingKind::RespiratoryRate => CoreKind::RespiratoryRate,
            ReadingKind::MedicationAdherence => CoreKind::MedicationAdherence,
            ReadingKind::TherapyAdherence => CoreKind::TherapyAdherence,
            ReadingKind::TherapyResponse => CoreKind::TherapyResponse,
            ReadingKind::PainScore => CoreKind::PainScore,
            ReadingKind::RangeOfMotion => CoreKind::RangeOfMotion,
        }
    }
}

/// A running timer.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Timer {
    pub id: String,
    pub patient: String,
    pub staff: String,
    pub program: Program,
    pub started_at: std::time::SystemTime,
}

/// A time entry.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Interaction {
    pub id: String,
    pub patient: String,
    pub staff: String,
    pub program: Program,
    pub started_at: std::time::SystemTime,
    pub ended_at: std::time::SystemTime,
    /// The month it counts in, `YYYY-MM`, on the facility's calendar (for
    /// `patient_month_summary` and `patient_month_document`).
    pub month: String,
    pub seconds: i64,
    pub interactive: bool,
    pub note: Option<String>,
}

/// A time entry to log after the fact.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct InteractionInput {
    pub patient: String,
    pub staff: String,
    pub program: Program,
    pub started_at: std::time::SystemTime,
    pub ended_at: std::time::SystemTime,
    pub interactive: bool,
    pub activity: Option<String>,
    pub note: Option<String>,
}

/// A reading to record.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ReadingInput {
    pub patient: String,
    pub kind: ReadingKind,
    pub systolic: Option<f64>,
    pub diastolic: Option<f64>,
    pub value: Option<f64>,
    /// UCUM: `mm[Hg]`, `/min`, `kg`, `[lb_av]`, `mg/dL`, `mmol/L`, `%`, `Cel`, `[degF]`; for RTM
    /// kinds `{dose}`, `{session}`, `{score}`, `deg`.
    pub unit: String,
    /// The device's serial or id (the cuff, the scale).
    pub device: Option<String>,
    /// Who produced it: a device (absent: a device), staff typing it in (never counts as an
    /// RPM or RTM day), or the patient in the RTM app (RTM only; counts as an RTM day).
    #[uniffi(default = None)]
    pub source: Option<ReadingSource>,
    /// The monitoring program: RPM when absent; RTM for the therapeutic kinds.
    #[uniffi(default = None)]
    pub program: Option<ReadingProgram>,
    /// When the device measured it (absent: now). A reading a cuff took offline and hands
    /// over later counts on the day it was taken; a time in the future is refused.
    #[uniffi(default = None)]
    pub measured_at: Option<std::time::SystemTime>,
}

/// Who produced a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ReadingSource {
    Device,
    Manual,
    PatientReported,
}

/// Which monitoring program a reading belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ReadingProgram {
    Rpm,
    Rtm,
}

/// A patient in the facility list.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct PatientInfo {
    pub id: String,
    pub name: String,
    pub mrn: Option<String>,
    pub programs: Vec<Program>,
}

/// Minutes and reading days of one patient-month.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct MonthSummary {
    pub patient: String,
    pub month: String,
    pub ccm_minutes: u32,
    pub pcm_minutes: u32,
    pub rpm_minutes: u32,
    pub reading_days: u32,
    pub running_timers: u32,
}

/// One worklist row: where a patient stands this month in one program.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct WorklistItem {
    pub patient: String,
    pub program: Program,
    pub minutes: u32,
    pub next_code: Option<String>,
    pub minutes_to_next: Option<u32>,
    pub reading_days: Option<u32>,
    pub reading_days_left: Option<u32>,
    /// Alerts of the patient still waiting for a response.
    pub open_alerts: u32,
    pub blocked_by: Vec<String>,
}

/// An alert raised by a reading, with where it stands.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct AlertInfo {
    pub id: String,
    pub patient: String,
    pub reading: String,
    pub rule: String,
    pub severity: AlertSeverity,
    /// What broke the rule ("spo2 85 % < 90"), without patient identifiers.
    pub message: String,
    pub raised_at: std::time::SystemTime,
    /// Acknowledge before this or it escalates to the billing practitioner.
    pub deadline: std::time::SystemTime,
    pub status: AlertStatus,
    /// Notes of acknowledgements, resolutions and escalations, oldest first.
    pub notes: Vec<String>,
}

/// A recorded reading and the alerts it raised on this tablet.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct RecordedReading {
    pub id: String,
    pub alerts: Vec<AlertInfo>,
}

/// A call to the 24/7 line.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TriageCallInput {
    pub patient: String,
    pub staff: String,
    pub started_at: std::time::SystemTime,
    pub ended_at: std::time::SystemTime,
    pub outcome: TriageOutcome,
    pub note: Option<String>,
}

/// What came of a call to the 24/7 line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TriageOutcome {
    Advised,
    NurseVisit,
    PractitionerNotified,
    SentToEmergency,
    NoActionNeeded,
}

/// A stay away from the facility's care that stops billing for its days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum StayKind {
    /// A skilled-nursing (Part A) stay.
    PartA,
    /// A hospital inpatient stay.
    Inpatient,
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AlertSeverity {
    Urgent,
    Warning,
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AlertStatus {
    Open,
    Escalated,
    Acknowledged,
    Resolved,
}

fn alert_info(v: rounds_core::alerts::AlertView) -> AlertInfo {
    use rounds_core::alerts::{AlertStatus as S, Severity};
    AlertInfo {
        id: v.alert.id.to_string(),
        patient: v.alert.patient.clone(),
        reading: v.alert.reading.to_string(),
        rule: v.alert.rule.clone(),
        severity: match v.alert.severity {
            Severity::Urgent => AlertSeverity::Urgent,
            Severity::Warning => AlertSeverity::Warning,
        },
        message: v.alert.message.clone(),
        raised_at: v.alert.raised_at.with_timezone(&Utc).into(),
        deadline: v.alert.deadline.with_timezone(&Utc).into(),
        status: match v.status {
            S::Open => AlertStatus::Open,
            S::Escalated => AlertStatus::Escalated,
            S::Acknowledged => AlertStatus::Acknowledged,
            S::Resolved => AlertStatus::Resolved,
        },
        notes: v.events.iter().filter_map(|e| e.note.clone()).collect(),
    }
}

/// A consent captured at the bedside.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ConsentInput {
    pub patient: String,
    pub program: Program,
    /// The local date it was given, `YYYY-MM-DD`.
    pub given_on: String,
    /// How: `verbal`, `written`, `electronic`, …
    #[uniffi(default = None)]
    pub method: Option<String>,
    /// The staff id who obtained it.
    #[uniffi(default = None)]
    pub by: Option<String>,
    /// Where the signed form or recording is kept (a document id or URL of the practice's).
    #[uniffi(default = None)]
    pub document: Option<String>,
}

/// Which documents the tablet keeps (`set_sync_window`): the open months and the closed ones
/// still within `grace_days` of their end, plus `retention_months` more.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncWindowSettings {
    /// The tablet's local date, `YYYY-MM-DD`.
    pub today: String,
    pub grace_days: u32,
    pub retention_months: u32,
}

/// What `apply_relogs` did.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct RelogResult {
    /// Entries written back (the server's copy lacked them).
    pub written: u32,
    /// Entries the write policy refused (the refused change's content), dropped.
    pub dropped: u32,
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncResult {
    pub documents: u32,
    pub confirmed: u32,
    /// Documents whose changes the server has not confirmed yet.
    pub unsent: u32,
    pub attempts: u32,
}

/// Progress of a sync, reported from the sync's thread.
#[uniffi::export(with_foreign)]
pub trait SyncProgress: Send + Sync {
    fn on_progress(&self, done: u32, total: u32);
}

/// Which kind of document changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum DocumentKind {
    /// The roster: residents, staff, the alert protocol.
    Facility,
    /// A resident's profile, consents, care plan, reported stays.
    Patient,
    /// A resident's month: time, readings, timers, alerts.
    PatientMonth,
}

/// A document that changed (after a sync, or an action on this replica).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DocumentChange {
    pub document: String,
    pub kind: DocumentKind,
    pub patient: Option<String>,
    /// `YYYY-MM` for a month document.
    pub month: Option<String>,
}

/// Where a sync is.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum SyncState {
    Started,
    Progress { done: u32, total: u32 },
    Finished { documents: u32, unsent: u32 },
    Failed { message: String },
}

/// The app's listener: which documents changed (so the screens showing them refresh, without
/// polling) and how a sync is going. Called on the thread that made the change, after the
/// replica's lock is released (so the app may query from the callback).
#[uniffi::export(with_foreign)]
pub trait ChangeObserver: Send + Sync {
    fn on_changed(&self, changes: Vec<DocumentChange>);
    fn on_sync_state(&self, state: SyncState);
}

type Heads = std::collections::BTreeMap<rounds_core::DocumentId, Vec<automerge::ChangeHash>>;

fn heads_of(r: &Replica) -> Heads {
    r.document_ids()
        .into_iter()
        .filter_map(|d| Some((d, r.heads(d)?)))
        .collect()
}

/// The documents whose heads differ between two snapshots, described.
fn changes_between(r: &Replica, before: &Heads, after: &Heads) -> Vec<DocumentChange> {
    let changed: Vec<rounds_core::DocumentId> = after
        .iter()
        .filter(|(d, h)| before.get(*d) != Some(*h))
        .map(|(d, _)| *d)
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    let facility = r.facility_id().map(str::to_string).unwrap_or_default();
    let mut known: std::collections::BTreeMap<rounds_core::DocumentId, DocumentChange> =
        std::collections::BTreeMap::new();
    let fdoc = rounds_core::DocumentId::facility(&facility);
    known.insert(
        fdoc,
        DocumentChange {
            document: fdoc.to_string(),
            kind: DocumentKind::Facility,
            patient: None,
            month: None,
        },
    );
    for p in r.patient_ids() {
        let d = rounds_core::DocumentId::patient(&facility, &p);
        known.insert(
            d,
            DocumentChange {
                document: d.to_string(),
                kind: DocumentKind::Patient,
                patient: Some(p),
                month: None,
            },
        );
    }
    for (p, m, d) in r.month_docs() {
        known.insert(
            d,
            DocumentChange {
                document: d.to_string(),
                kind: DocumentKind::PatientMonth,
                patient: Some(p),
                month: Some(m.to_string()),
            },
        );
    }
    changed
        .into_iter()
        .filter_map(|d| known.get(&d).cloned())
        .collect()
}

/// The replica's lock while an action runs: with an observer registered, the documents'
/// heads are noted when it is taken and compared when it is released, and the observer hears
/// what changed once the lock is free.
struct Observed<'a> {
    guard: Option<MutexGuard<'a, Replica>>,
    before: Option<Heads>,
    observer: Option<Arc<dyn ChangeObserver>>,
}

impl std::ops::Deref for Observed<'_> {
    type Target = Replica;
    fn deref(&self) -> &Replica {
        self.guard
            .as_deref()
            .unwrap_or_else(|| unreachable!("held until drop"))
    }
}

impl std::ops::DerefMut for Observed<'_> {
    fn deref_mut(&mut self) -> &mut Replica {
        self.guard
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("held until drop"))
    }
}

impl Drop for Observed<'_> {
    fn drop(&mut self) {
        let (Some(guard), Some(before), Some(observer)) =
            (self.guard.take(), self.before.take(), self.observer.take())
        else {
            return;
        };
        let after = heads_of(&guard);
        let changes = changes_between(&guard, &before, &after);
        drop(guard);
        if !changes.is_empty() {
            observer.on_changed(changes);
        }
    }
}

/// Where the app keeps the device's token (the Android Keystore, the iOS Keychain): `enrol`
/// hands it over once and never returns it.
#[uniffi::export(with_foreign)]
pub trait TokenStore: Send + Sync {
    fn save(&self, token: String);
}

/// What an enrolment gives the app (the token went to its `TokenStore`).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Enrolled {
    pub facility: String,
    pub device_name: String,
}

/// The server's trust: empty for the platform's verifier (the OS trust store), else a pinned
/// SHA-256 fingerprint of the server's certificate (64 hex digits, `:` allowed).
fn trust_of(fingerprint: &str) -> Result<rounds_core::sync::net::Trust, RoundsError> {
    if fingerprint.is_empty() {
        platform::ready()?;
        return Ok(rounds_core::sync::net::Trust::Platform);
    }
    let hex: String = fingerprint.chars().filter(|c| *c != ':').collect();
    let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    match bytes.map(<[u8; 32]>::try_from) {
        Some(Ok(b)) if hex.len() == 64 => Ok(rounds_core::sync::net::Trust::Fingerprint(b)),
        _ => Err(invalid(
            "server",
            "fingerprint",
            "expected the certificate's SHA-256 as 64 hex digits (or empty for the OS trust store)",
        )),
    }
}

/// The device's store of the facility's documents.
#[derive(uniffi::Object)]
pub struct RoundsReplica {
    inner: Mutex<Replica>,
    cancel: Arc<AtomicBool>,
    observer: Mutex<Option<Arc<dyn ChangeObserver>>>,
}

fn interaction(i: rounds_core::Interaction) -> Interaction {
    Interaction {
        id: i.id.to_string(),
        seconds: (i.ended_at - i.started_at).num_seconds(),
        month: i.started_at.format("%Y-%m").to_string(),
        patient: i.patient,
        staff: i.staff,
        program: i.program.into(),
        started_at: i.started_at.with_timezone(&Utc).into(),
        ended_at: i.ended_at.with_timezone(&Utc).into(),
        interactive: i.interactive,
        note: i.note,
    }
}

fn timer(t: rounds_core::RunningTimer) -> Timer {
    Timer {
        id: t.id.to_string(),
        patient: t.patient,
        staff: t.staff,
        program: t.program.into(),
        started_at: t.started_at.with_timezone(&Utc).into(),
    }
}

/// A reading taken now.
fn new_reading(reading: ReadingInput) -> NewReading {
    let measured_at = reading
        .measured_at
        .map_or_else(Utc::now, DateTime::<Utc>::from);
    NewReading {
        patient: reading.patient,
        kind: reading.kind.into(),
        systolic: reading.systolic,
        diastolic: reading.diastolic,
        value: reading.value,
        unit: reading.unit,
        measured_at,
        device: reading.device,
        source: match reading.source.unwrap_or(ReadingSource::Device) {
            ReadingSource::Device => rounds_core::ReadingSource::Device,
            ReadingSource::Manual => rounds_core::ReadingSource::Manual,
            ReadingSource::PatientReported => rounds_core::ReadingSource::PatientReported,
        },
        program: reading.program.map(|p| match p {
            ReadingProgram::Rpm => rounds_core::ReadingProgram::Rpm,
            ReadingProgram::Rtm => rounds_core::ReadingProgram::Rtm,
        }),
    }
}

fn uuid_of(s: &str, entry: &str, field: &str) -> Result<uuid::Uuid, RoundsError> {
    s.parse()
        .map_err(|_| invalid(entry, field, format!("{s:?} is not an entry id")))
}

impl RoundsReplica {
    fn lock(&self) -> Observed<'_> {
        let observer = self.observer();
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = observer.as_ref().map(|_| heads_of(&guard));
        Observed {
            guard: Some(guard),
            before,
            observer,
        }
    }

    fn observer(&self) -> Option<Arc<dyn ChangeObserver>> {
        self.observer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[uniffi::export]
impl RoundsReplica {
    /// Open (or create) the replica in `dir`, encrypted with the 32-byte `key` from the platform
    /// keystore.
    #[uniffi::constructor]
    pub fn open(dir: String, key: Vec<u8>) -> Result<Arc<RoundsReplica>, RoundsError> {
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| invalid("replica", "key", "must be 32 bytes"))?;
        let replica = Replica::open_encrypted(&dir, &key)?;
        Ok(Arc::new(RoundsReplica {
            inner: Mutex::new(replica),
            cancel: Arc::new(AtomicBool::new(false)),
            observer: Mutex::new(None),
        }))
    }

    /// Bind a new device to its facility (then `sync` fetches the roster).
    pub fn join_facility(&self, facility: String) -> Result<(), RoundsError> {
        Ok(self.lock().join_facility(&facility)?)
    }

    /// The patients of the facility.
    pub fn patients(&self) -> Vec<PatientInfo> {
        let (patients, _) = self.lock().patients();
        patients
            .into_iter()
            .map(|p| {
                let mut programs: Vec<Program> =
                    p.consents.iter().map(|c| c.program.into()).collect();
                programs.dedup();
                PatientInfo {
                    id: p.id,
                    name: p.name,
                    mrn: p.mrn,
                    programs,
                }
            })
            .collect()
    }

    /// Start a timer now; it survives the app being killed.
    pub fn start_timer(
        &self,
        patient: String,
        staff: String,
        program: Program,
    ) -> Result<Timer, RoundsError> {
        Ok(timer(self.lock().start_timer(
            &patient,
            &staff,
            program.into(),
            None,
            Utc::now(),
        )?))
    }

    /// Stop a running timer now; returns the time entry.
    pub fn stop_timer(
        &self,
        timer_id: String,
        interactive: bool,
        note: Option<String>,
    ) -> Result<Interaction, RoundsError> {
        let id = uuid_of(&timer_id, "timer", "timer_id")?;
        Ok(interaction(self.lock().stop_timer(
            id,
            interactive,
            note,
            Utc::now(),
        )?))
    }

    pub fn running_timers(&self) -> Vec<Timer> {
        self.lock()
            .running_timers()
            .into_iter()
            .map(timer)
            .collect()
    }

    /// Log a time entry after the fact.
    pub fn log_interaction(&self, input: InteractionInput) -> Result<Interaction, RoundsError> {
        let n = NewInteraction {
            patient: input.patient,
            staff: input.staff,
            program: input.program.into(),
            started_at: input.started_at.into(),
            ended_at: input.ended_at.into(),
            interactive: input.interactive,
            activity: input.activity,
            note: input.note,
        };
        Ok(interaction(self.lock().log_interaction(n, Utc::now())?))
    }

    /// Record a reading taken now; impossible values are refused with the field named.
    pub fn record_reading(&self, reading: ReadingInput) -> Result<String, RoundsError> {
        let n = new_reading(reading);
        Ok(self.lock().record_reading(n, Utc::now())?.id.to_string())
    }

    /// Record a reading taken now and return the alerts it raised under the facility's
    /// protocol (evaluated here, offline too).
    pub fn record_reading_with_alerts(
        &self,
        reading: ReadingInput,
    ) -> Result<RecordedReading, RoundsError> {
        let n = new_reading(reading);
        let mut r = self.lock();
        let (reading, raised) = r.record_reading_alerts(n, Utc::now())?;
        let ids: Vec<uuid::Uuid> = raised.iter().map(|a| a.id).collect();
        let alerts = r
            .open_alerts()
            .into_iter()
            .filter(|v| ids.contains(&v.alert.id))
            .map(alert_info)
            .collect();
        Ok(RecordedReading {
            id: reading.id.to_string(),
            alerts,
        })
    }

    /// Alerts waiting for a response (open or escalated), soonest deadline first.
    pub fn open_alerts(&self) -> Vec<AlertInfo> {
        self.lock()
            .open_alerts()
            .into_iter()
            .map(alert_info)
            .collect()
    }

    /// Acknowledge an alert with a note; `minutes` spent are logged as an interaction.
    pub fn acknowledge_alert(
        &self,
        alert_id: String,
        by: String,
        note: String,
        minutes: u32,
        interactive: bool,
    ) -> Result<(), RoundsError> {
        let id = uuid_of(&alert_id, "alert", "alert_id")?;
        self.lock().acknowledge_alert(
            id,
            rounds_core::replica::Acknowledgement {
                by,
                note,
                minutes,
                interactive,
            },
            Utc::now(),
        )?;
        Ok(())
    }

    /// Mark an alert resolved.
    pub fn resolve_alert(
        &self,
        alert_id: String,
        by: String,
        note: Option<String>,
    ) -> Result<(), RoundsError> {
        let id = uuid_of(&alert_id, "alert", "alert_id")?;
        self.lock().resolve_alert(id, &by, note, Utc::now())?;
        Ok(())
    }

    /// Escalate an alert to the patient's billing practitioner now.
    pub fn escalate_alert(
        &self,
        alert_id: String,
        by: String,
        note: Option<String>,
    ) -> Result<(), RoundsError> {
        let id = uuid_of(&alert_id, "alert", "alert_id")?;
        self.lock().escalate_alert(id, &by, note, Utc::now())?;
        Ok(())
    }

    /// Log a 24/7 line call (an interactive interaction recording the triage outcome).
    pub fn log_triage_call(&self, call: TriageCallInput) -> Result<Interaction, RoundsError> {
        use rounds_core::alerts::TriageOutcome as T;
        let outcome = match call.outcome {
            TriageOutcome::Advised => T::Advised,
            TriageOutcome::NurseVisit => T::NurseVisit,
            TriageOutcome::PractitionerNotified => T::PractitionerNotified,
            TriageOutcome::SentToEmergency => T::SentToEmergency,
            TriageOutcome::NoActionNeeded => T::NoActionNeeded,
        };
        let i = self.lock().log_triage_call(
            rounds_core::replica::TriageCall {
                patient: call.patient,
                staff: call.staff,
                started_at: call.started_at.into(),
                ended_at: call.ended_at.into(),
                outcome,
                note: call.note,
            },
            Utc::now(),
        )?;
        Ok(interaction(i))
    }

    /// Void an entry (it stays on record and stops counting).
    pub fn void_entry(
        &self,
        entry_id: String,
        by: String,
        reason: Option<String>,
    ) -> Result<(), RoundsError> {
        let id = uuid_of(&entry_id, "entry", "entry_id")?;
        self.lock().void_entry(id, &by, reason, Utc::now())?;
        Ok(())
    }

    /// Replace the care plan's text (concurrent edits on other tablets merge).
    pub fn edit_care_plan(&self, patient: String, text: String) -> Result<(), RoundsError> {
        Ok(self.lock().edit_care_plan(&patient, &text, Utc::now())?)
    }

    /// Report from the bedside that a resident had a stay (inclusive dates `YYYY-MM-DD`,
    /// reported once the resident is back): a write-once event billing folds in. Returns the
    /// report's id.
    pub fn report_stay(
        &self,
        patient: String,
        stay: StayKind,
        from: String,
        to: String,
        reported_by: String,
    ) -> Result<String, RoundsError> {
        let kind = match stay {
            StayKind::PartA => rounds_core::StayKind::PartA,
            StayKind::Inpatient => rounds_core::StayKind::Inpatient,
        };
        let from = parse_day("stay", "from", &from)?;
        let to = parse_day("stay", "to", &to)?;
        let id = self
            .lock()
            .report_stay(&patient, kind, from, to, &reported_by, Utc::now())?;
        Ok(id.to_string())
    }

    /// Report from the bedside that a resident died on a date (`YYYY-MM-DD`): a write-once event
    /// billing folds in. Returns the report's id.
    pub fn report_death(
        &self,
        patient: String,
        on: String,
        reported_by: String,
    ) -> Result<String, RoundsError> {
        let on = parse_day("death", "on", &on)?;
        let id = self
            .lock()
            .report_death(&patient, on, &reported_by, Utc::now())?;
        Ok(id.to_string())
    }

    /// Minutes per program and device reading days of a month (`YYYY-MM`).
    pub fn patient_month_summary(
        &self,
        patient: String,
        month: String,
    ) -> Result<MonthSummary, RoundsError> {
        let m = parse_month("month", &month)?;
        let s = self.lock().patient_month_summary(&patient, m)?;
        let minutes = |p| s.minutes.get(&p).copied().unwrap_or(0);
        Ok(MonthSummary {
            patient: s.patient.clone(),
            month: s.month.to_string(),
            ccm_minutes: minutes(CoreProgram::Ccm),
            pcm_minutes: minutes(CoreProgram::Pcm),
            rpm_minutes: minutes(CoreProgram::Rpm),
            reading_days: s.reading_days,
            running_timers: s.running_timers as u32,
        })
    }

    /// Who needs what this month, as of a date (`YYYY-MM-DD`).
    pub fn worklist(&self, as_of: String) -> Result<Vec<WorklistItem>, RoundsError> {
        let day = parse_day("worklist", "as_of", &as_of)?;
        let (data, alerts) = {
            let r = self.lock();
            (r.export()?.0, r.open_alerts())
        };
        let mut items = rounds_core::billing::worklist::worklist(
            &data,
            day,
            &rounds_core::billing::RuleSet::default(),
        )
        .map_err(|e| invalid("worklist", "", e.to_string()))?;
        rounds_core::billing::worklist::attach_alerts(&mut items, &alerts);
        Ok(items
            .into_iter()
            .map(|i| WorklistItem {
                patient: i.patient,
                program: i.program.into(),
                minutes: i.minutes,
                next_code: i.next_code,
                minutes_to_next: i.minutes_to_next,
                reading_days: i.period.as_ref().map(|p| p.reading_days),
                reading_days_left: i.period.as_ref().map(|p| p.days_left),
                open_alerts: i.open_alerts,
                blocked_by: i.blocked_by,
            })
            .collect())
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl RoundsReplica {
    /// Sync with the server (`wss://host:port/sync`), trusting the certificate with this SHA-256
    /// fingerprint (hex; empty for the platform's trust store). Suspends until done, failed or
    /// cancelled — without blocking the replica: actions and queries from other coroutines run
    /// during the sync (the replica is locked only while a frame is applied). Retries with
    /// backoff (a server restart mid-sync is survived); cancelling the coroutine/task, or
    /// `cancel_sync`, stops it with `RoundsError::Cancelled`, nothing lost.
    pub async fn sync(
        &self,
        url: String,
        token: String,
        fingerprint: String,
        progress: Option<Arc<dyn SyncProgress>>,
    ) -> Result<SyncResult, RoundsError> {
        let trust = trust_of(&fingerprint)?;
        self.cancel.store(false, Ordering::SeqCst);
        let mut opts = rounds_core::sync::net::SyncOptions::new(token, trust);
        opts.cancel = Some(self.cancel.clone());
        let observer = self.observer();
        let before = observer
            .as_ref()
            .map(|_| heads_of(&self.inner.lock().unwrap_or_else(|p| p.into_inner())));
        if let Some(o) = &observer {
            o.on_sync_state(SyncState::Started);
        }
        // The replica's lock is taken per frame, not for the whole sync: the nurse's actions
        // and the app's queries run while the network is awaited.
        let mut access = &self.inner;
        let result =
            rounds_core::sync::net::sync_with(&mut access, &url, &opts, &mut |done, total| {
                if let Some(p) = &progress {
                    p.on_progress(done as u32, total as u32);
                }
                if let Some(o) = &observer {
                    o.on_sync_state(SyncState::Progress {
                        done: done as u32,
                        total: total as u32,
                    });
                }
            })
            .await;
        if let (Some(o), Some(before)) = (&observer, &before) {
            let changes = {
                let r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                changes_between(&r, before, &heads_of(&r))
            };
            if !changes.is_empty() {
                o.on_changed(changes);
            }
            o.on_sync_state(match &result {
                Ok(r) => SyncState::Finished {
                    documents: r.documents as u32,
                    unsent: r.unsent.len() as u32,
                },
                Err(e) => SyncState::Failed {
                    message: e.to_string(),
                },
            });
        }
        match result {
            Ok(r) => Ok(SyncResult {
                documents: r.documents as u32,
                confirmed: r.confirmed as u32,
                unsent: r.unsent.len() as u32,
                attempts: r.attempts,
            }),
            Err(rounds_core::sync::net::NetError::Cancelled) => Err(RoundsError::Cancelled),
            Err(rounds_core::sync::net::NetError::Refused { document, message }) => {
                Err(RoundsError::Refused {
                    document: document.map(|d| d.to_string()).unwrap_or_default(),
                    detail: message,
                })
            }
            Err(rounds_core::sync::net::NetError::Url(u)) => Err(invalid(
                "sync",
                "url",
                format!("{u:?} is not wss://host:port/sync"),
            )),
            Err(e) => Err(sync_error(e)),
        }
    }

    /// Enrol this tablet with a one-time code (`rounds device code`, or the console): the
    /// server (`https://host:port`) answers the device's token, which goes to `store` and is
    /// never returned; the replica joins the code's facility. Trust as for `sync`. A used,
    /// expired or unknown code is `RoundsError::Refused` (with an empty `document`).
    pub async fn enrol(
        &self,
        server: String,
        code: String,
        device_name: String,
        fingerprint: String,
        store: Arc<dyn TokenStore>,
    ) -> Result<Enrolled, RoundsError> {
        let trust = trust_of(&fingerprint)?;
        let e = rounds_core::sync::enrol::enrol(&server, &code, &device_name, &trust)
            .await
            .map_err(|e| match e {
                rounds_core::sync::net::NetError::Enrolment(m) => RoundsError::Refused {
                    document: String::new(),
                    detail: format!("enrolment: {m}"),
                },
                rounds_core::sync::net::NetError::Url(u) => invalid(
                    "enrolment",
                    "server",
                    format!("{u:?} is not https://host:port"),
                ),
                e => sync_error(e),
            })?;
        store.save(e.token);
        self.lock().join_facility(&e.facility)?;
        Ok(Enrolled {
            facility: e.facility,
            device_name: e.name,
        })
    }
}

#[uniffi::export]
impl RoundsReplica {
    /// The document id of a patient's month (`YYYY-MM`), as `RoundsError::Refused` names it.
    pub fn patient_month_document(
        &self,
        patient: String,
        month: String,
    ) -> Result<String, RoundsError> {
        let m = parse_month("month", &month)?;
        let r = self.lock();
        let facility = r.facility_id().ok_or_else(|| RoundsError::NotFound {
            detail: "this replica has no facility yet (enrol or join_facility)".into(),
        })?;
        Ok(rounds_core::DocumentId::patient_month(facility, &patient, m).to_string())
    }

    /// Recover from a change the server refused: the document's entries are kept aside and the
    /// local copy dropped, so the next sync brings the server's. Returns the entries kept.
    pub fn reset_document(&self, document: String) -> Result<u32, RoundsError> {
        let doc: rounds_core::DocumentId = document.parse().map_err(|_| {
            invalid(
                "reset",
                "document",
                format!("{document:?} is not a document id"),
            )
        })?;
        Ok(self.lock().reset_document(doc)? as u32)
    }

    /// After the sync that follows `reset_document`: write back the kept entries the server's
    /// copy lacks (each once, through the write policy). Sync again afterwards.
    pub fn apply_relogs(&self) -> Result<RelogResult, RoundsError> {
        let (written, dropped) = self.lock().apply_relogs(Utc::now())?;
        Ok(RelogResult {
            written: written as u32,
            dropped: dropped as u32,
        })
    }

    /// Documents with entries kept aside by `reset_document`, not yet written back.
    pub fn pending_relogs(&self) -> Vec<String> {
        self.lock()
            .pending_relogs()
            .into_iter()
            .map(|d| d.to_string())
            .collect()
    }

    /// Record a consent given at the bedside (a write-once entry of the patient's document);
    /// returns its id. Revocations are recorded by the practice in its console, not here.
    pub fn record_consent(&self, consent: ConsentInput) -> Result<String, RoundsError> {
        let given_on = parse_day("consent", "given_on", &consent.given_on)?;
        if let Some(d) = &consent.document
            && (d.len() > 500 || d.chars().any(char::is_control))
        {
            return Err(invalid(
                "consent",
                "document",
                "at most 500 characters, no control characters",
            ));
        }
        let c = rounds_core::Consent {
            id: None,
            program: consent.program.into(),
            given_on,
            method: consent.method,
            by: consent.by,
            revoked_on: None,
            document: consent.document,
        };
        Ok(self
            .lock()
            .record_consent(&consent.patient, c, Utc::now())?)
    }

    /// Keep only the documents of the sync window (applied at the next sync: what the server
    /// holds and lies outside the window leaves the tablet). `None`: keep everything.
    pub fn set_sync_window(&self, window: Option<SyncWindowSettings>) -> Result<(), RoundsError> {
        let w = match window {
            None => None,
            Some(w) => Some(rounds_core::SyncWindow {
                today: parse_day("sync window", "today", &w.today)?,
                grace_days: w.grace_days,
                retention_months: w.retention_months,
            }),
        };
        self.lock().set_sync_window(w);
        Ok(())
    }

    /// Register the app's observer (replacing any), or none.
    pub fn set_observer(&self, observer: Option<Arc<dyn ChangeObserver>>) {
        *self.observer.lock().unwrap_or_else(|p| p.into_inner()) = observer;
    }

    /// Stop a running `sync` (from another thread).
    pub fn cancel_sync(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// The platform's certificate verifier. On Android it needs the app's `Context` before the
/// first sync or enrolment with an empty fingerprint: the app calls
/// `RoundsPlatform.init(applicationContext)` (Kotlin, shipped in the Android package), whose
/// native half is [`Java_org_rounds_mobile_RoundsPlatform_init`]. Elsewhere nothing is needed.
mod platform {
    use std::sync::atomic::{AtomicBool, Ordering};

    static READY: AtomicBool = AtomicBool::new(!cfg!(target_os = "android"));

    /// Refuse (instead of the verifier's panic) when Android's initialisation was skipped.
    pub(crate) fn ready() -> Result<(), super::RoundsError> {
        if READY.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(super::invalid(
                "server",
                "fingerprint",
                "the OS trust store is not initialised: call RoundsPlatform.init(context) at \
                 app start (or pin the server's fingerprint)",
            ))
        }
    }

    #[cfg(target_os = "android")]
    fn init(env: &mut jni::Env, context: jni::objects::JObject) -> Result<(), jni::errors::Error> {
        rustls_platform_verifier::android::init_with_env(env, context)
    }

    #[cfg(not(target_os = "android"))]
    fn init(
        _env: &mut jni::Env,
        _context: jni::objects::JObject,
    ) -> Result<(), jni::errors::Error> {
        Ok(())
    }

    /// `org.rounds.mobile.RoundsPlatform.init(context: Context): Boolean` — hands the app's
    /// context to the platform verifier; true once it is ready.
    #[allow(unsafe_code)] // a JNI entry point must keep its exported name
    #[unsafe(no_mangle)]
    pub extern "system" fn Java_org_rounds_mobile_RoundsPlatform_init<'caller>(
        mut env: jni::EnvUnowned<'caller>,
        _class: jni::objects::JClass<'caller>,
        context: jni::objects::JObject<'caller>,
    ) -> jni::sys::jboolean {
        env.with_env(|env| -> Result<bool, jni::errors::Error> {
            init(env, context)?;
            READY.store(true, Ordering::SeqCst);
            Ok(true)
        })
        .resolve::<jni::errors::ThrowRuntimeExAndDefault>()
    }
}
