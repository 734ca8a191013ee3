//! rounds-mobile: the Rounds core for the tablet apps, through uniffi (Kotlin on Android, Swift
//! on iOS, Python for tests). One object, [`RoundsReplica`], with the staff actions, the queries
//! and sync; records for the domain types; one error enum. No panic crosses the FFI: every
//! fallible call returns a [`RoundsError`], which becomes a Kotlin/Swift exception.
//!
//! Threading: every method is blocking and thread-safe (an internal lock); call them from a
//! background thread/coroutine/queue, never the UI thread. `sync` runs on an internal tokio
//! runtime, takes the lock only while it applies a frame (so actions run during a sync), and
//! can be cancelled from another thread with `cancel_sync`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, NaiveDate, Utc};
use rounds_core::replica::{NewInteraction, NewReading};
use rounds_core::{Month, Program as CoreProgram, ReadingKind as CoreKind, ReadingSource, Replica};

uniffi::setup_scaffolding!();

/// Every failure, with a message fit for a log or a support ticket (ids, never names).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum RoundsError {
    /// Bad input: the message names the entry and the field.
    #[error("{message}")]
    Invalid { message: String },
    #[error("not found: {message}")]
    NotFound { message: String },
    #[error("storage: {message}")]
    Storage { message: String },
    #[error("wrong key: {message}")]
    WrongKey { message: String },
    #[error("sync: {message}")]
    Sync { message: String },
    #[error("sync cancelled")]
    Cancelled,
    /// The write policy refused a change (here before writing, or by the server during a
    /// sync). After a server refusal: `reset_document(document)`, sync, `apply_relogs()`, sync.
    #[error("refused: {message}")]
    Refused { document: String, message: String },
}

impl From<rounds_core::ReplicaError> for RoundsError {
    fn from(e: rounds_core::ReplicaError) -> RoundsError {
        use rounds_core::ReplicaError as E;
        let message = e.to_string();
        match e {
            E::Invalid(_) | E::OtherFacility { .. } | E::TimerAlreadyStopped(_) => {
                RoundsError::Invalid { message }
            }
            E::UnknownPatient(_) | E::UnknownEntry(_) | E::NoFacility => {
                RoundsError::NotFound { message }
            }
            E::WrongKey(_) | E::KeyRequired(_) => RoundsError::WrongKey { message },
            E::Refused { doc, .. } => RoundsError::Refused {
                document: doc.to_string(),
                message,
            },
            _ => RoundsError::Storage { message },
        }
    }
}

fn parse_day(field: &str, value: &str) -> Result<NaiveDate, RoundsError> {
    value
        .parse()
        .map_err(|_| invalid(format!("{field}: {value:?} is not a date (YYYY-MM-DD)")))
}

fn invalid(message: impl Into<String>) -> RoundsError {
    RoundsError::Invalid {
        message: message.into(),
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
    /// RFC 3339 with the facility's offset.
    pub started_at: String,
}

/// A time entry.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Interaction {
    pub id: String,
    pub patient: String,
    pub staff: String,
    pub program: Program,
    pub started_at: String,
    pub ended_at: String,
    pub seconds: i64,
    pub interactive: bool,
    pub note: Option<String>,
}

/// A time entry to log after the fact (RFC 3339 times).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct InteractionInput {
    pub patient: String,
    pub staff: String,
    pub program: Program,
    pub started_at: String,
    pub ended_at: String,
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
    pub device: Option<String>,
    /// True when typed in by staff (never counts as an RPM or RTM day).
    pub manual: bool,
    /// The monitoring program: RPM when absent; RTM for the therapeutic kinds.
    #[uniffi(default = None)]
    pub program: Option<ReadingProgram>,
    /// When the device measured it (absent: now). A reading a cuff took offline and hands
    /// over later counts on the day it was taken; a time in the future is refused.
    #[uniffi(default = None)]
    pub measured_at: Option<std::time::SystemTime>,
    /// True when the patient entered it in the RTM app (RTM only; counts as an RTM day).
    #[uniffi(default = false)]
    pub patient_reported: bool,
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

/// A call to the 24/7 line (RFC 3339 times). Outcome: `advised`, `nurse_visit`,
/// `practitioner_notified`, `sent_to_emergency` or `no_action_needed`.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TriageCallInput {
    pub patient: String,
    pub staff: String,
    pub started_at: String,
    pub ended_at: String,
    pub outcome: String,
    pub note: Option<String>,
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

fn trust_of(fingerprint: &str) -> Result<rounds_core::sync::net::Trust, RoundsError> {
    if fingerprint.is_empty() {
        return Ok(rounds_core::sync::net::Trust::SystemRoots);
    }
    let bytes: Vec<u8> = (0..fingerprint.len() / 2)
        .filter_map(|i| u8::from_str_radix(fingerprint.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    Ok(rounds_core::sync::net::Trust::Fingerprint(
        bytes
            .try_into()
            .map_err(|_| invalid("fingerprint: expected 64 hex digits"))?,
    ))
}

/// The device's store of the facility's documents.
#[derive(uniffi::Object)]
pub struct RoundsReplica {
    inner: Mutex<Replica>,
    cancel: Arc<AtomicBool>,
    observer: Mutex<Option<Arc<dyn ChangeObserver>>>,
}

fn ts(s: &str, field: &str) -> Result<DateTime<Utc>, RoundsError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| invalid(format!("{field}: {s:?} is not an RFC 3339 time")))
}

fn interaction(i: rounds_core::Interaction) -> Interaction {
    Interaction {
        id: i.id.to_string(),
        seconds: (i.ended_at - i.started_at).num_seconds(),
        patient: i.patient,
        staff: i.staff,
        program: i.program.into(),
        started_at: i.started_at.to_rfc3339(),
        ended_at: i.ended_at.to_rfc3339(),
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
        started_at: t.started_at.to_rfc3339(),
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
        source: if reading.manual {
            ReadingSource::Manual
        } else if reading.patient_reported {
            ReadingSource::PatientReported
        } else {
            ReadingSource::Device
        },
        program: reading.program.map(|p| match p {
            ReadingProgram::Rpm => rounds_core::ReadingProgram::Rpm,
            ReadingProgram::Rtm => rounds_core::ReadingProgram::Rtm,
        }),
    }
}

fn uuid_of(s: &str, field: &str) -> Result<uuid::Uuid, RoundsError> {
    s.parse()
        .map_err(|_| invalid(format!("{field}: {s:?} is not an entry id")))
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
            .map_err(|_| invalid("key: must be 32 bytes"))?;
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
        let id = uuid_of(&timer_id, "timer_id")?;
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
            started_at: ts(&input.started_at, "started_at")?,
            ended_at: ts(&input.ended_at, "ended_at")?,
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
        let id = uuid_of(&alert_id, "alert_id")?;
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
        let id = uuid_of(&alert_id, "alert_id")?;
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
        let id = uuid_of(&alert_id, "alert_id")?;
        self.lock().escalate_alert(id, &by, note, Utc::now())?;
        Ok(())
    }

    /// Log a 24/7 line call (an interactive interaction recording the triage outcome).
    pub fn log_triage_call(&self, call: TriageCallInput) -> Result<Interaction, RoundsError> {
        use rounds_core::alerts::TriageOutcome as T;
        let outcome = match call.outcome.as_str() {
            "advised" => T::Advised,
            "nurse_visit" => T::NurseVisit,
            "practitioner_notified" => T::PractitionerNotified,
            "sent_to_emergency" => T::SentToEmergency,
            "no_action_needed" => T::NoActionNeeded,
            other => {
                return Err(invalid(format!(
                    "outcome: {other:?} is not a triage outcome"
                )));
            }
        };
        let i = self.lock().log_triage_call(
            rounds_core::replica::TriageCall {
                patient: call.patient,
                staff: call.staff,
                started_at: ts(&call.started_at, "started_at")?,
                ended_at: ts(&call.ended_at, "ended_at")?,
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
        let id = uuid_of(&entry_id, "entry_id")?;
        self.lock().void_entry(id, &by, reason, Utc::now())?;
        Ok(())
    }

    /// Replace the care plan's text (concurrent edits on other tablets merge).
    pub fn edit_care_plan(&self, patient: String, text: String) -> Result<(), RoundsError> {
        Ok(self.lock().edit_care_plan(&patient, &text, Utc::now())?)
    }

    /// Report from the bedside that a resident had a stay (`part_a` or `inpatient`, inclusive
    /// dates `YYYY-MM-DD`, reported once the resident is back): a write-once event billing folds
    /// in. Returns the report's id.
    pub fn report_stay(
        &self,
        patient: String,
        stay: String,
        from: String,
        to: String,
        reported_by: String,
    ) -> Result<String, RoundsError> {
        let kind = match stay.as_str() {
            "part_a" => rounds_core::StayKind::PartA,
            "inpatient" => rounds_core::StayKind::Inpatient,
            _ => {
                return Err(invalid(format!(
                    "stay: {stay:?} is not part_a or inpatient"
                )));
            }
        };
        let from = parse_day("from", &from)?;
        let to = parse_day("to", &to)?;
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
        let on = parse_day("on", &on)?;
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
        let m: Month = month
            .parse()
            .map_err(|e: rounds_core::month::MonthParseError| invalid(format!("month: {e}")))?;
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
        let day: NaiveDate = as_of
            .parse()
            .map_err(|_| invalid(format!("as_of: {as_of:?} is not a date")))?;
        let (data, alerts) = {
            let r = self.lock();
            (r.export()?.0, r.open_alerts())
        };
        let mut items = rounds_core::billing::worklist::worklist(
            &data,
            day,
            &rounds_core::billing::RuleSet::default(),
        )
        .map_err(|e| invalid(e.to_string()))?;
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

    /// Sync with the server (`wss://host:port/sync`), trusting the certificate with this SHA-256
    /// fingerprint (hex; empty for the system roots). Blocks the calling thread until done,
    /// failed or cancelled — but not the replica: other threads' actions and queries run during
    /// the sync (the replica is locked only while a frame is applied).
    pub fn sync(
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RoundsError::Sync {
                message: e.to_string(),
            })?;
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
        let result = runtime.block_on(rounds_core::sync::net::sync_with(
            &mut access,
            &url,
            &opts,
            &mut |done, total| {
                if let Some(p) = &progress {
                    p.on_progress(done as u32, total as u32);
                }
                if let Some(o) = &observer {
                    o.on_sync_state(SyncState::Progress {
                        done: done as u32,
                        total: total as u32,
                    });
                }
            },
        ));
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
                    message,
                })
            }
            Err(e) => Err(RoundsError::Sync {
                message: e.to_string(),
            }),
        }
    }

    /// The document id of a patient's month (`YYYY-MM`), as `RoundsError::Refused` names it.
    pub fn patient_month_document(
        &self,
        patient: String,
        month: String,
    ) -> Result<String, RoundsError> {
        let m: Month = month
            .parse()
            .map_err(|e: rounds_core::month::MonthParseError| invalid(format!("month: {e}")))?;
        let r = self.lock();
        let facility = r.facility_id().ok_or_else(|| RoundsError::NotFound {
            message: "this replica has no facility yet".into(),
        })?;
        Ok(rounds_core::DocumentId::patient_month(facility, &patient, m).to_string())
    }

    /// Recover from a change the server refused: the document's entries are kept aside and the
    /// local copy dropped, so the next sync brings the server's. Returns the entries kept.
    pub fn reset_document(&self, document: String) -> Result<u32, RoundsError> {
        let doc: rounds_core::DocumentId = document
            .parse()
            .map_err(|_| invalid(format!("document: {document:?} is not a document id")))?;
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
    /// returns its id. Revocation is a later `record_consent` with the same program is not: the
    /// practice records revocations through its console.
    pub fn record_consent(&self, consent: ConsentInput) -> Result<String, RoundsError> {
        let given_on = NaiveDate::parse_from_str(&consent.given_on, "%Y-%m-%d").map_err(|_| {
            invalid(format!(
                "consent: field given_on: {:?} is not a date (YYYY-MM-DD)",
                consent.given_on
            ))
        })?;
        if let Some(d) = &consent.document
            && (d.len() > 500 || d.chars().any(char::is_control))
        {
            return Err(invalid(
                "consent: field document: at most 500 characters, no control characters",
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
                today: NaiveDate::parse_from_str(&w.today, "%Y-%m-%d").map_err(|_| {
                    invalid(format!(
                        "sync window: field today: {:?} is not a date (YYYY-MM-DD)",
                        w.today
                    ))
                })?,
                grace_days: w.grace_days,
                retention_months: w.retention_months,
            }),
        };
        self.lock().set_sync_window(w);
        Ok(())
    }

    /// Enrol this tablet with a one-time code (`rounds device code`, or the console): the
    /// server (`https://host:port`) answers the device's token, which goes to `store` and is
    /// never returned; the replica joins the code's facility. Trust as for `sync`.
    pub fn enrol(
        &self,
        server: String,
        code: String,
        device_name: String,
        fingerprint: String,
        store: Arc<dyn TokenStore>,
    ) -> Result<Enrolled, RoundsError> {
        let trust = trust_of(&fingerprint)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RoundsError::Sync {
                message: e.to_string(),
            })?;
        let e = runtime
            .block_on(rounds_core::sync::enrol::enrol(
                &server,
                &code,
                &device_name,
                &trust,
            ))
            .map_err(|e| match e {
                rounds_core::sync::net::NetError::Enrolment(m) => RoundsError::Refused {
                    document: String::new(),
                    message: format!("enrolment: {m}"),
                },
                rounds_core::sync::net::NetError::Url(u) => {
                    invalid(format!("server: {u:?} is not https://host:port"))
                }
                e => RoundsError::Sync {
                    message: e.to_string(),
                },
            })?;
        store.save(e.token);
        self.lock().join_facility(&e.facility)?;
        Ok(Enrolled {
            facility: e.facility,
            device_name: e.name,
        })
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
