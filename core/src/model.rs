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
    /// From this date the practitioner's practice attests that it delivers the APCM service
    /// elements (billing rule 26b); absent: no APCM for this practitioner's patients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apcm_attested_on: Option<NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaffRole {
    Clinical,
    NonClinical,
}

/// A practice: the billing entity (group NPI, TIN) whose EHR receives its patients' months. Which
/// practice a patient-month belongs to follows from the practitioner of record (a practitioner
/// belongs to at most one practice). A data file without a `practices` section is one practice:
/// [`DataFile::implicit_practice`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Practice {
    pub id: String,
    pub name: String,
    /// The group's type-2 NPI (billing provider), when it bills as a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_npi: Option<String>,
    /// The practice's taxpayer identification number (9 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tin: Option<String>,
    /// Ids of its billing practitioners.
    #[serde(default)]
    pub practitioners: Vec<String>,
    /// How its EHR names things: identifier systems and HL7 application names.
    #[serde(default)]
    pub ehr: PracticeEhr,
    /// Where notices for the practice go (e-mail addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<String>,
    /// The practice confirms, for a month in which a patient's billing practitioner changed,
    /// that the other practitioner has not billed it (billing rule P1): without it such a month
    /// is held with an exception.
    #[serde(default)]
    pub confirms_transition_months: bool,
    /// The Medicare payment locality for estimated payments (`<MAC>-<locality>`, e.g.
    /// `12502-99`); the rule set's national amounts when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
}

/// A practice's EHR identifiers (each optional: the push configuration's value when absent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PracticeEhr {
    /// Short practice code in business identifiers (`<code>-<MRN>-<YYYY-MM>-…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The EHR's MRN identifier system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrn_system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_application: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_facility: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_application: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_facility: Option<String>,
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
    /// Advanced Primary Care Management (G0556–G0558), per calendar month.
    Apcm,
    /// Behavioral Health Integration: 99484, or G0570 with APCM.
    Bhi,
    /// Remote Therapeutic Monitoring (98975–98986), device periods and monthly management.
    Rtm,
}

impl Program {
    pub const ALL: [Program; 6] = [
        Program::Ccm,
        Program::Pcm,
        Program::Rpm,
        Program::Apcm,
        Program::Bhi,
        Program::Rtm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Program::Ccm => "ccm",
            Program::Pcm => "pcm",
            Program::Rpm => "rpm",
            Program::Apcm => "apcm",
            Program::Bhi => "bhi",
            Program::Rtm => "rtm",
        }
    }

    /// The name billing staff use ("CCM", "APCM", …).
    pub fn label(self) -> String {
        self.as_str().to_uppercase()
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
    /// A behavioral-health condition (billing rule 21); absent: ICD-10-CM chapter 5 (`F…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavioral: Option<bool>,
}

impl Condition {
    /// Rule 21: the flag when given, else whether the code is in chapter 5 (`F`).
    pub fn is_behavioral(&self) -> bool {
        self.behavioral
            .unwrap_or_else(|| self.icd10.trim().to_ascii_uppercase().starts_with('F'))
    }
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
    /// Where the signed form or recording is kept (the practice's document id or URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
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

/// Which RTM program a patient's device serves: selects the device-supply code (rule 40).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RtmKind {
    Respiratory,
    Musculoskeletal,
    Cbt,
}

impl RtmKind {
    /// The device code for 2–15 days (short) and for 16 or more days (long).
    pub fn device_codes(self) -> (&'static str, &'static str) {
        match self {
            RtmKind::Respiratory => ("98984", "98976"),
            RtmKind::Musculoskeletal => ("98985", "98977"),
            RtmKind::Cbt => ("98986", "98978"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RtmKind::Respiratory => "respiratory",
            RtmKind::Musculoskeletal => "musculoskeletal",
            RtmKind::Cbt => "cbt",
        }
    }
}

/// RTM enrolment: set-up date, program kind and the patient's devices or apps. `device_setup_on`
/// and `kind` are optional in the shape so that a missing one is reported by validation with
/// its field name (billing rule 57) rather than as a parse error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RtmEnrolment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_setup_on: Option<NaiveDate>,
    pub kind: RtmKind,
    #[serde(default)]
    pub devices: Vec<String>,
}

/// A period of Qualified Medicare Beneficiary status; inclusive local dates, open-ended without
/// `to` (billing rule 22).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmbPeriod {
    pub from: NaiveDate,
    #[serde(default)]
    pub to: Option<NaiveDate>,
}

impl QmbPeriod {
    pub fn contains(&self, date: NaiveDate) -> bool {
        self.from <= date && self.to.is_none_or(|t| date <= t)
    }
}

/// A claim billed outside Rounds (a TCM, a CoCM month, another practitioner's APCM…): never a
/// line, but the concurrency rules remove what may not be billed with it (rule 43).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// CPT/HCPCS code.
    pub code: String,
    /// Local date of service as billed.
    pub date_of_service: NaiveDate,
    /// A practitioner id of the file, or `other`.
    pub practitioner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npi: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `ExternalService::practitioner` for anyone who is not a practitioner of the file.
pub const OTHER_PRACTITIONER: &str = "other";

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
    /// The `to` of a stay the ADT feed has opened and not yet closed.
    pub const OPEN_END: NaiveDate = match NaiveDate::from_ymd_opt(9999, 12, 31) {
        Some(d) => d,
        None => NaiveDate::MIN,
    };

    /// `to`, or "ongoing" for a stay still open.
    pub fn to_text(&self) -> String {
        if self.to == Self::OPEN_END {
            "ongoing".to_string()
        } else {
            self.to.to_string()
        }
    }

    pub fn contains(&self, date: NaiveDate) -> bool {
        self.from <= date && date <= self.to
    }
}

/// Days a resident was away from the facility between a discharge and a readmission (from the
/// ADT feed); inclusive local dates. Nothing in them counts, as after a discharge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Absence {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Absence {
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
    /// What the facility's HL7 v2 ADT feed said (written only by the server's actor, never by
    /// a device: see `policy`). One message is one event; `changes` is what it changes for
    /// billing, folded in by `view::read_patient` (see `adt::fold`).
    Adt {
        /// MSH-10 of the message.
        message: String,
        /// MSH-4 (sending facility) of the message.
        sender: String,
        /// The trigger event, e.g. `A03`.
        trigger: String,
        /// The local date the event took effect (EVN-6, else EVN-2, else MSH-7).
        on: NaiveDate,
        #[serde(default)]
        changes: Vec<AdtChange>,
    },
}

/// What one ADT message changes about a resident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdtChange {
    /// Admitted or registered (A01/A04); ends an open hospital stay and a discharge.
    Admitted,
    /// Left for a hospital (A02 to a hospital location, A03 with a hospital disposition): an
    /// inpatient stay from `on`, open until the resident is back.
    ToHospital,
    /// Back from hospital (A01/A04/A02 while a hospital stay is open): the stay ends the day before.
    Returned,
    /// Discharged (A03): the resident's active period ends on `on`.
    Discharged,
    /// Part A coverage began (`covered`) or ended on `on` (A01/A04/A08, from the field the
    /// facility's feed settings name).
    PartA { covered: bool },
    /// Died on this date (PID-29/30, or A03 with a death disposition).
    Died { on: NaiveDate },
    /// Cancels an earlier event of this feed (A11 cancels an admit, A12 a transfer, A13 a discharge).
    Cancelled { message: String },
    /// The medical record number changed (A40: this record survives under the new MRN).
    Mrn { mrn: String },
    /// This record was merged into another resident (A40): it is no longer billed.
    MergedInto { patient: String },
    /// Demographics or location updated; nothing billing reads.
    Updated,
}

/// A billing practitioner of record for a period: for one program, or for every program when
/// `program` is absent (a program's own period wins over an all-programs one). Inclusive local
/// dates; open-ended without `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PractitionerOfRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<Program>,
    pub practitioner: String,
    pub from: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<NaiveDate>,
}

impl PractitionerOfRecord {
    pub fn contains(&self, date: NaiveDate) -> bool {
        self.from <= date && self.to.is_none_or(|t| date <= t)
    }
}

/// When a practitioner's tenure for a program began after someone else's (billing rule P1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenure {
    /// The practitioner of record.
    pub practitioner: String,
    /// The first day of their tenure, when another practitioner was of record the day before.
    pub since: Option<NaiveDate>,
    /// That other practitioner.
    pub predecessor: Option<String>,
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
    /// The practitioner of record for every program and date no period below covers.
    pub billing_practitioner: String,
    /// Practitioners of record by program and period (billing rule P1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub practitioners_of_record: Vec<PractitionerOfRecord>,
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
    /// Qualified Medicare Beneficiary periods (APCM level G0558, rule 28).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qmb_periods: Vec<QmbPeriod>,
    /// RTM enrolment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtm: Option<RtmEnrolment>,
    /// Claims billed outside Rounds that the concurrency rules must see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_services: Vec<ExternalService>,
    /// Month → the program that wins a conflict (APCM × CCM/PCM, CCM × PCM, RPM × RTM).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub program_choice: BTreeMap<Month, Program>,
    /// Discharged from the facility on this local date (from the ADT feed): nothing after it
    /// counts, like a date of death.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discharged_on: Option<NaiveDate>,
    /// Discharged, then readmitted (from the ADT feed): the days between count for nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absences: Vec<Absence>,
    /// This record was merged into another resident (ADT A40): it is not billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
}

impl Patient {
    /// The billing practitioner of record for `program` on `date`.
    pub fn practitioner_on(&self, program: Program, date: NaiveDate) -> &str {
        let covering = |specific: bool| {
            self.practitioners_of_record
                .iter()
                .filter(|r| r.program.is_some() == specific)
                .filter(|r| r.program.is_none_or(|p| p == program))
                .find(|r| r.contains(date))
        };
        covering(true)
            .or_else(|| covering(false))
            .map_or(self.billing_practitioner.as_str(), |r| {
                r.practitioner.as_str()
            })
    }

    /// The practitioner of record for `program` on `date` and since when, if someone else was
    /// of record before.
    pub fn tenure(&self, program: Program, date: NaiveDate) -> Tenure {
        let current = self.practitioner_on(program, date);
        let mut boundaries: Vec<NaiveDate> = self
            .practitioners_of_record
            .iter()
            .flat_map(|r| [Some(r.from), r.to.and_then(|t| t.succ_opt())])
            .flatten()
            .filter(|d| *d <= date)
            .collect();
        boundaries.sort_unstable();
        boundaries.dedup();
        let mut since = None;
        let mut predecessor = None;
        for b in boundaries.into_iter().rev() {
            let Some(before) = b.pred_opt() else { continue };
            let other = self.practitioner_on(program, before);
            if other != current {
                since = Some(b);
                predecessor = Some(other.to_string());
                break;
            }
        }
        Tenure {
            practitioner: current.to_string(),
            since,
            predecessor,
        }
    }

    /// Every practitioner of record for `program` on some day from `from` to `to` (inclusive).
    pub fn practitioners_between(
        &self,
        program: Program,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Vec<String> {
        let mut days: Vec<NaiveDate> = vec![from];
        for r in &self.practitioners_of_record {
            for d in [Some(r.from), r.to.and_then(|t| t.succ_opt())]
                .into_iter()
                .flatten()
            {
                if from < d && d <= to {
                    days.push(d);
                }
            }
        }
        let mut out: Vec<String> = days
            .into_iter()
            .map(|d| self.practitioner_on(program, d).to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every practitioner ever of record for the patient.
    pub fn all_practitioners(&self) -> Vec<&str> {
        let mut out: Vec<&str> = std::iter::once(self.billing_practitioner.as_str())
            .chain(
                self.practitioners_of_record
                    .iter()
                    .map(|r| r.practitioner.as_str()),
            )
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
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
    /// RTM: doses taken or inhaler actuations, `{dose}` 0–100.
    MedicationAdherence,
    /// RTM: exercise sessions or CBT modules completed, `{session}` 0–100.
    TherapyAdherence,
    /// RTM: a patient-reported outcome or symptom scale, `{score}` 0–1000.
    TherapyResponse,
    /// RTM: a numeric pain rating, `{score}` 0–10.
    PainScore,
    /// RTM: a joint angle from a sensor, `deg` 0–360.
    RangeOfMotion,
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
            ReadingKind::MedicationAdherence => "medication_adherence",
            ReadingKind::TherapyAdherence => "therapy_adherence",
            ReadingKind::TherapyResponse => "therapy_response",
            ReadingKind::PainScore => "pain_score",
            ReadingKind::RangeOfMotion => "range_of_motion",
        }
    }

    /// A therapeutic kind (RTM only): its unit and value range (rule 56).
    pub fn therapeutic(self) -> Option<(&'static str, f64, f64)> {
        match self {
            ReadingKind::MedicationAdherence => Some(("{dose}", 0.0, 100.0)),
            ReadingKind::TherapyAdherence => Some(("{session}", 0.0, 100.0)),
            ReadingKind::TherapyResponse => Some(("{score}", 0.0, 1000.0)),
            ReadingKind::PainScore => Some(("{score}", 0.0, 10.0)),
            ReadingKind::RangeOfMotion => Some(("deg", 0.0, 360.0)),
            _ => None,
        }
    }
}

/// Which monitoring program a reading belongs to (absent: RPM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingProgram {
    Rpm,
    Rtm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingSource {
    /// Uploaded automatically by the device: counts as an RPM day.
    Device,
    /// Typed in by staff: never counts as an RPM or RTM day.
    Manual,
    /// Entered by the patient into the RTM device or app: counts as an RTM day (an error on an
    /// RPM reading).
    PatientReported,
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
    /// RPM (absent) or RTM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ReadingProgram>,
}

impl Reading {
    /// The reading's program: RPM unless it says RTM.
    pub fn program(&self) -> ReadingProgram {
        self.program.unwrap_or(ReadingProgram::Rpm)
    }
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
    /// The practices billing this facility's residents; absent in a one-practice file
    /// ([`DataFile::implicit_practice`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub practices: Vec<Practice>,
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
            practices: Vec::new(),
            practitioners: Vec::new(),
            staff: Vec::new(),
            patients: Vec::new(),
            interactions: Vec::new(),
            readings: Vec::new(),
            timers: Vec::new(),
            corrections: Vec::new(),
        }
    }

    /// The practice of a file without a `practices` section: the facility's own, under the
    /// facility's id and name, with every practitioner of the file.
    pub fn implicit_practice(&self) -> Practice {
        Practice {
            id: self.facility.id.clone(),
            name: self.facility.name.clone(),
            group_npi: None,
            tin: None,
            practitioners: self.practitioners.iter().map(|p| p.id.clone()).collect(),
            ehr: PracticeEhr::default(),
            contacts: Vec::new(),
            confirms_transition_months: false,
            locality: None,
        }
    }

    /// The practice a practitioner belongs to: one of `practices`, or the implicit practice
    /// when the file has none.
    pub fn practice_of(&self, practitioner: &str) -> Option<&Practice> {
        self.practices
            .iter()
            .find(|p| p.practitioners.iter().any(|x| x == practitioner))
    }

    /// The id of the practice a practitioner belongs to (the facility's id for a file without
    /// practices, or for a practitioner in none).
    pub fn practice_id_of(&self, practitioner: &str) -> String {
        self.practice_of(practitioner)
            .map_or_else(|| self.facility.id.clone(), |p| p.id.clone())
    }

    /// The practices the patient has ever had a practitioner of record in.
    pub fn practices_of_patient(&self, patient: &Patient) -> Vec<String> {
        let mut out: Vec<String> = patient
            .all_practitioners()
            .into_iter()
            .map(|x| self.practice_id_of(x))
            .collect();
        out.sort();
        out.dedup();
        out
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
                    practices: self.practices.clone(),
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
        self.practices.sort_by(|a, b| a.id.cmp(&b.id));
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
