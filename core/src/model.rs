//! The domain model: the facility, its people and patients, and the entries staff log.
//!
//! These types are the `rounds-data/1` data file's shapes (`docs/data-file.md`) and the values the
//! Automerge documents hold. Parsing with per-entry errors lives in [`crate::datafile`]; the
//! semantic checks live in [`crate::validate`].

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::month::Month;

/// The data-file format tag.
pub const DATA_FORMAT: &str = "rounds-data/1";

/// A nursing facility: months and days are local to its IANA time zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facility {
    pub id: String,
    pub name: String,
    pub timezone: String,
    pub place_of_service: String,
}

/// A billing practitioner (physician, NP, PA, CNS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Practitioner {
    pub id: String,
    pub name: String,
    pub npi: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaffRole {
    Clinical,
    NonClinical,
}

/// A staff member whose time may (or may not) count for the practice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Staff {
    pub id: String,
    pub name: String,
    pub role: StaffRole,
    pub counts_for_billing: bool,
}

/// A care-management program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    Ccm,
    Pcm,
    Rpm,
}

impl Program {
    pub const ALL: [Program; 3] = [Program::Ccm, Program::Pcm, Program::Rpm];

    pub fn as_str(self) -> &'static str {
        match self {
            Program::Ccm => "ccm",
            Program::Pcm => "pcm",
            Program::Rpm => "rpm",
        }
    }
}

impl std::fmt::Display for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A diagnosis on the patient's problem list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub icd10: String,
    #[serde(default)]
    pub chronic: bool,
}

/// Consent to a program; revocation is recorded, never deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consent {
    /// Stable key of the consent inside the patient document (derived on import when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub program: Program,
    pub given_on: NaiveDate,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub revoked_on: Option<NaiveDate>,
}

/// The care plan: dates for billing, free text for the clinicians (merged as Automerge text).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CarePlan {
    #[serde(default)]
    pub established_on: Option<NaiveDate>,
    #[serde(default)]
    pub revised_on: Vec<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Which CCM lane a month is billed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CcmLane {
    Standard,
    Complex,
    Practitioner,
}

/// RPM enrolment: device set-up date and the patient's devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpmEnrolment {
    pub device_setup_on: NaiveDate,
    #[serde(default)]
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StayKind {
    PartA,
    Inpatient,
}

/// A Part A or inpatient stay; inclusive local dates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stay {
    pub kind: StayKind,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Stay {
    pub fn contains(&self, date: NaiveDate) -> bool {
        self.from <= date && date <= self.to
    }
}

/// What staff saw at the bedside that billing must know, reported once from a tablet: a write-once
/// event in the patient's document (`bedside_reports`), never an edit of the patient's profile.
/// Billing folds it in: a reported stay counts like a stay of the profile, a reported death like
/// its date of death (the earliest one reported wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedsideReport {
    pub id: Uuid,
    pub patient: String,
    /// The staff id of whoever reported it.
    pub reported_by: String,
    pub reported_at: DateTime<FixedOffset>,
    pub event: BedsideEvent,
}

/// The event of a [`BedsideReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BedsideEvent {
    /// A Part A or inpatient stay, inclusive local dates (reported once the resident is back).
    Stay {
        stay: StayKind,
        from: NaiveDate,
        to: NaiveDate,
    },
    /// The resident died on this local date.
    Death { on: NaiveDate },
}

/// A resident of the facility.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patient {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub birth_date: Option<NaiveDate>,
    #[serde(default)]
    pub mrn: Option<String>,
    pub billing_practitioner: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub consents: Vec<Consent>,
    #[serde(default)]
    pub initiating_visit_on: Option<NaiveDate>,
    #[serde(default)]
    pub care_plan: Option<CarePlan>,
    #[serde(default)]
    pub complex_ccm_months: Vec<Month>,
    #[serde(default)]
    pub ccm_lane: BTreeMap<Month, CcmLane>,
    #[serde(default)]
    pub pcm_condition: Option<String>,
    #[serde(default)]
    pub rpm: Option<RpmEnrolment>,
    #[serde(default)]
    pub stays: Vec<Stay>,
    #[serde(default)]
    pub died_on: Option<NaiveDate>,
}

/// A time entry: care-management time by one person for one patient in one program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub id: Uuid,
    pub patient: String,
    /// A staff id or a practitioner id.
    pub staff: String,
    pub program: Program,
    pub started_at: DateTime<FixedOffset>,
    pub ended_at: DateTime<FixedOffset>,
    #[serde(default)]
    pub interactive: bool,
    #[serde(default)]
    pub activity: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// The entry this one corrects: the amended entry no longer counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amends: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingKind {
    BloodPressure,
    HeartRate,
    Weight,
    Glucose,
    Spo2,
    Temperature,
    RespiratoryRate,
}

impl ReadingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadingKind::BloodPressure => "blood_pressure",
            ReadingKind::HeartRate => "heart_rate",
            ReadingKind::Weight => "weight",
            ReadingKind::Glucose => "glucose",
            ReadingKind::Spo2 => "spo2",
            ReadingKind::Temperature => "temperature",
            ReadingKind::RespiratoryRate => "respiratory_rate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingSource {
    /// Uploaded automatically by the device: counts as an RPM day.
    Device,
    /// Typed in by staff: never counts as an RPM day.
    Manual,
}

/// A vital-sign reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub id: Uuid,
    pub patient: String,
    pub kind: ReadingKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systolic: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diastolic: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// UCUM unit.
    pub unit: String,
    pub measured_at: DateTime<FixedOffset>,
    #[serde(default)]
    pub device: Option<String>,
    pub source: ReadingSource,
}

/// A timer that was started and not yet stopped (the start event of a time entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningTimer {
    pub id: Uuid,
    pub patient: String,
    pub staff: String,
    pub program: Program,
    pub started_at: DateTime<FixedOffset>,
    #[serde(default)]
    pub activity: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionKind {
    /// The target entry no longer counts.
    Void,
}

/// A correction event: voids an earlier entry (an amendment is a new interaction with `amends`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    pub id: Uuid,
    pub target: Uuid,
    pub kind: CorrectionKind,
    pub at: DateTime<FixedOffset>,
    pub by: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One facility's data: the `rounds-data/1` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    pub format: String,
    pub facility: Facility,
    #[serde(default)]
    pub practitioners: Vec<Practitioner>,
    #[serde(default)]
    pub staff: Vec<Staff>,
    #[serde(default)]
    pub patients: Vec<Patient>,
    #[serde(default)]
    pub interactions: Vec<Interaction>,
    #[serde(default)]
    pub readings: Vec<Reading>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<RunningTimer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrections: Vec<Correction>,
}

impl DataFile {
    /// An empty data file for a facility.
    pub fn new(facility: Facility) -> DataFile {
        DataFile {
            format: DATA_FORMAT.to_string(),
            facility,
            practitioners: Vec::new(),
            staff: Vec::new(),
            patients: Vec::new(),
            interactions: Vec::new(),
            readings: Vec::new(),
            timers: Vec::new(),
            corrections: Vec::new(),
        }
    }

    /// The ids of entries that no longer count: voided, or amended by a later entry.
    pub fn superseded_ids(&self) -> std::collections::BTreeSet<Uuid> {
        let mut out: std::collections::BTreeSet<Uuid> =
            self.corrections.iter().map(|c| c.target).collect();
        out.extend(self.interactions.iter().filter_map(|i| i.amends));
        out
    }

    /// The file split by patient: each part holds the facility, the practitioners and staff,
    /// one patient, that patient's entries, and the corrections of those entries. What one
    /// patient's package needs, so building 10,000 packages does not scan every entry 10,000
    /// times. Corrections of entries no patient has are in no part.
    pub fn by_patient(&self) -> std::collections::BTreeMap<String, DataFile> {
        let mut parts: std::collections::BTreeMap<String, DataFile> = self
            .patients
            .iter()
            .map(|p| {
                let part = DataFile {
                    format: self.format.clone(),
                    facility: self.facility.clone(),
                    practitioners: self.practitioners.clone(),
                    staff: self.staff.clone(),
                    patients: vec![p.clone()],
                    interactions: Vec::new(),
                    readings: Vec::new(),
                    timers: Vec::new(),
                    corrections: Vec::new(),
                };
                (p.id.clone(), part)
            })
            .collect();
        let mut owner: std::collections::HashMap<Uuid, String> = std::collections::HashMap::new();
        for i in &self.interactions {
            owner.insert(i.id, i.patient.clone());
            if let Some(part) = parts.get_mut(&i.patient) {
                part.interactions.push(i.clone());
            }
        }
        for r in &self.readings {
            owner.insert(r.id, r.patient.clone());
            if let Some(part) = parts.get_mut(&r.patient) {
                part.readings.push(r.clone());
            }
        }
        for t in &self.timers {
            owner.insert(t.id, t.patient.clone());
            if let Some(part) = parts.get_mut(&t.patient) {
                part.timers.push(t.clone());
            }
        }
        for c in &self.corrections {
            if let Some(part) = owner.get(&c.target).and_then(|p| parts.get_mut(p)) {
                part.corrections.push(c.clone());
            }
        }
        parts
    }

    /// Sort every list into its canonical order and fill derived keys, so that two files holding
    /// the same data compare equal (the replica exports in this order).
    pub fn canonicalize(&mut self) {
        self.practitioners.sort_by(|a, b| a.id.cmp(&b.id));
        self.staff.sort_by(|a, b| a.id.cmp(&b.id));
        self.patients.sort_by(|a, b| a.id.cmp(&b.id));
        for p in &mut self.patients {
            for (i, c) in p.consents.iter_mut().enumerate() {
                if c.id.is_none() {
                    c.id = Some(crate::ids::consent_key(&p.id, i));
                }
            }
            p.consents.sort_by(|a, b| a.id.cmp(&b.id));
        }
        self.interactions.sort_by_key(|i| i.id);
        self.readings.sort_by_key(|r| r.id);
        self.timers.sort_by_key(|t| t.id);
        self.corrections.sort_by_key(|c| c.id);
    }
}
