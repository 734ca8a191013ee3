//! The monthly package for the practice's EHR: the note, FHIR R4 transaction bundles, HL7 v2.5.1
//! messages (`docs/ehr-integration.md`). Pure functions of the data and the encounter.

pub mod delivery;
pub mod fhir;
pub mod hl7;
pub mod note;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::billing::Encounter;
use crate::model::{DataFile, Patient, Program};
use crate::month::Month;

/// Per-practice export settings (identifier systems, HL7 applications).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportConfig {
    /// Short practice code used in business identifiers (`<practice>-<MRN>-<YYYY-MM>-…`).
    pub practice: String,
    /// Base of our own identifier systems (`<base>/monthly-encounter`, `/charge`, …).
    pub id_base: String,
    /// The practice EHR's MRN identifier system.
    pub mrn_system: String,
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// FHIR Encounter.class code (`VR` virtual or `AMB`).
    pub encounter_class: String,
}

impl ExportConfig {
    /// These settings with a practice's own EHR identifiers where it names them.
    pub fn for_practice(&self, p: &crate::model::Practice) -> ExportConfig {
        let mut c = self.clone();
        let e = &p.ehr;
        let set = |field: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                field.clone_from(v);
            }
        };
        set(&mut c.practice, &e.code);
        set(&mut c.mrn_system, &e.mrn_system);
        set(&mut c.sending_application, &e.sending_application);
        set(&mut c.sending_facility, &e.sending_facility);
        set(&mut c.receiving_application, &e.receiving_application);
        set(&mut c.receiving_facility, &e.receiving_facility);
        c
    }
}

impl Default for ExportConfig {
    fn default() -> ExportConfig {
        ExportConfig {
            practice: "PRACTICE".into(),
            id_base: "https://rounds.example.org/fhir/sid".into(),
            mrn_system: "https://practice.example.org/fhir/sid/mrn".into(),
            sending_application: "ROUNDS".into(),
            sending_facility: "ROUNDS".into(),
            receiving_application: "EHR".into(),
            receiving_facility: "PRACTICE".into(),
            encounter_class: "VR".into(),
        }
    }
}

/// Everything about one patient's month that goes into the package.
pub struct PatientMonth<'a> {
    pub data: &'a DataFile,
    pub patient: &'a Patient,
    pub month: Month,
    pub encounter: &'a Encounter,
    /// Alerts (any patient; the note picks this patient's of this month).
    pub alerts: &'a [crate::alerts::AlertView],
    /// Ledger version (1 = original).
    pub version: u32,
    pub tz: Tz,
    /// When the package is made (message times, posting dates).
    pub now: DateTime<Utc>,
    pub config: &'a ExportConfig,
}

impl PatientMonth<'_> {
    pub fn mrn(&self) -> String {
        self.patient
            .mrn
            .clone()
            .unwrap_or_else(|| self.patient.id.clone())
    }

    /// `<practice>-<MRN>-<YYYY-MM>`.
    pub fn key(&self) -> String {
        format!("{}-{}-{}", self.config.practice, self.mrn(), self.month)
    }

    /// First and last instant of the month in the facility's zone.
    pub fn period(&self) -> (DateTime<FixedOffset>, DateTime<FixedOffset>) {
        let start = crate::billing::time::local_midnight(self.tz, self.month.first_day());
        let end = crate::billing::time::local_midnight(self.tz, self.month.next().first_day())
            - chrono::Duration::seconds(1);
        (self.local(start), self.local(end))
    }

    pub fn local(&self, t: DateTime<Utc>) -> DateTime<FixedOffset> {
        self.tz.from_utc_datetime(&t.naive_utc()).fixed_offset()
    }

    /// The practitioner the package is for: the one whose NPI the lines carry (the practitioner
    /// of record of the practice receiving it), else the patient's billing practitioner.
    pub fn practitioner_id(&self) -> &str {
        self.encounter
            .lines
            .first()
            .and_then(|l| {
                self.data
                    .practitioners
                    .iter()
                    .find(|p| p.npi == l.rendering_npi)
            })
            .map_or(self.patient.billing_practitioner.as_str(), |p| {
                p.id.as_str()
            })
    }

    /// The practice the package is for (the practitioner's), when the data names practices.
    pub fn practice(&self) -> Option<&crate::model::Practice> {
        self.data.practice_of(self.practitioner_id())
    }

    pub fn practitioner_npi(&self) -> String {
        let id = self.practitioner_id();
        self.data
            .practitioners
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.npi.clone())
            .unwrap_or_default()
    }

    pub fn person_name(&self, id: &str) -> String {
        self.data
            .staff
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.name.clone())
            .or_else(|| {
                self.data
                    .practitioners
                    .iter()
                    .find(|p| p.id == id)
                    .map(|p| p.name.clone())
            })
            .unwrap_or_else(|| id.to_string())
    }

    /// Programs with lines this month.
    pub fn programs(&self) -> Vec<Program> {
        Program::ALL
            .into_iter()
            .filter(|p| {
                self.encounter
                    .lines
                    .iter()
                    .any(|l| crate::billing::summary::program_of_code(&l.code) == Some(*p))
            })
            .collect()
    }
}

/// Short descriptions of the codes we bill.
pub fn code_text(code: &str) -> &'static str {
    match code {
        "99490" => "Chronic care mgmt svc 1st 20 min",
        "99439" => "Chronic care mgmt svc each addl 20 min",
        "99487" => "Complex chronic care mgmt 1st 60 min",
        "99489" => "Complex chronic care mgmt each addl 30 min",
        "99491" => "Chronic care mgmt by physician 1st 30 min",
        "99437" => "Chronic care mgmt by physician each addl 30 min",
        "99424" => "Principal care mgmt by physician 1st 30 min",
        "99425" => "Principal care mgmt by physician each addl 30 min",
        "99426" => "Principal care mgmt by staff 1st 30 min",
        "99427" => "Principal care mgmt by staff each addl 30 min",
        "99453" => "Remote monitoring setup and patient education",
        "99454" => "Remote monitoring device supply 16-30 days",
        "99445" => "Remote monitoring device supply 2-15 days",
        "99470" => "Remote monitoring treatment mgmt 10 min",
        "99457" => "Remote monitoring treatment mgmt 1st 20 min",
        "99458" => "Remote monitoring treatment mgmt each addl 20 min",
        "G0556" => "Advanced primary care mgmt, one condition or fewer",
        "G0557" => "Advanced primary care mgmt, two or more conditions",
        "G0558" => "Advanced primary care mgmt, QMB, two or more conditions",
        "G0570" => "Behavioral health integration with advanced primary care mgmt",
        "99484" => "Behavioral health integration care mgmt 20 min",
        "98975" => "Remote therapeutic monitoring setup and patient education",
        "98976" => "Remote therapeutic monitoring respiratory device 16-30 days",
        "98977" => "Remote therapeutic monitoring musculoskeletal device 16-30 days",
        "98978" => "Remote therapeutic monitoring CBT device 16-30 days",
        "98984" => "Remote therapeutic monitoring respiratory device 2-15 days",
        "98985" => "Remote therapeutic monitoring musculoskeletal device 2-15 days",
        "98986" => "Remote therapeutic monitoring CBT device 2-15 days",
        "98979" => "Remote therapeutic monitoring treatment mgmt 10 min",
        "98980" => "Remote therapeutic monitoring treatment mgmt 1st 20 min",
        "98981" => "Remote therapeutic monitoring treatment mgmt each addl 20 min",
        _ => "Care management service",
    }
}
