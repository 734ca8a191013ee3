//! Readings from a device vendor's cloud (`POST /api/v1/readings`): the body, its checks, and
//! what an ingestion answers. The orchestration (staging the patient's documents, writing the
//! reading, raising alerts, auditing) is `Shared::ingest_reading`.

use chrono::{DateTime, FixedOffset, Utc};
use rounds_core::alerts::Alert;
use rounds_core::{Reading, ReadingKind};
use serde::Deserialize;

/// The longest vendor reading id accepted.
pub const MAX_READING_ID: usize = 128;
/// How far in the future a reading's `measured_at` may be (vendors' clocks drift a little).
pub const FUTURE_SLACK_MINUTES: i64 = 10;

/// The body: one reading.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorReading {
    /// The vendor's id of this reading: the idempotency key.
    pub reading_id: String,
    pub device_id: String,
    pub kind: ReadingKind,
    pub values: VendorValues,
    pub unit: String,
    pub measured_at: DateTime<FixedOffset>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorValues {
    #[serde(default)]
    pub systolic: Option<f64>,
    #[serde(default)]
    pub diastolic: Option<f64>,
    #[serde(default)]
    pub value: Option<f64>,
}

/// Why a vendor reading was not taken. Every message names the reading and the field, never a
/// patient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// No API key, or one that names no integration.
    #[error("a valid integration API key is required (Authorization: Bearer …)")]
    Unauthorized,
    /// The body is not a reading (not JSON, a missing or unknown field, a wrong type).
    #[error("{0}")]
    Malformed(String),
    /// A reading, but not one that can be stored (bad id, future time, impossible value).
    #[error("{0}")]
    Invalid(String),
    /// The device is not enrolled for any patient of the integration's facility.
    #[error("{0}")]
    UnknownDevice(String),
    /// The store failed; nothing was written.
    #[error("{0}")]
    Store(String),
}

impl VendorReading {
    /// Parse a body, naming the field that is wrong.
    pub fn parse(body: &str) -> Result<VendorReading, IngestError> {
        let de = &mut serde_json::Deserializer::from_str(body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            IngestError::Malformed(format!("reading: field {}: {}", e.path(), e.inner()))
        })
    }

    /// How the reading is named in errors.
    pub fn entry(&self) -> String {
        format!("reading {:?}", self.reading_id)
    }

    /// The checks that need no documents: the id's length, a time not in the future.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), IngestError> {
        let entry = self.entry();
        if self.reading_id.trim().is_empty() || self.reading_id.len() > MAX_READING_ID {
            return Err(IngestError::Invalid(format!(
                "{entry}: field reading_id: must be 1–{MAX_READING_ID} characters"
            )));
        }
        if self.measured_at.with_timezone(&Utc)
            > now + chrono::Duration::minutes(FUTURE_SLACK_MINUTES)
        {
            return Err(IngestError::Invalid(format!(
                "{entry}: field measured_at: {} is in the future",
                self.measured_at
            )));
        }
        Ok(())
    }
}

/// The id a vendor reading is stored under: derived from the integration and the vendor's id,
/// so a re-sent reading lands on the same key and is stored once.
pub fn reading_uuid(integration: &str, reading_id: &str) -> uuid::Uuid {
    rounds_core::ids::name_uuid(&format!("rounds/vendor-reading/{integration}/{reading_id}"))
}

/// What an accepted reading answers.
#[derive(Debug)]
pub struct Ingested {
    /// The vendor's id of the reading.
    pub vendor_reading_id: String,
    pub reading: Reading,
    pub patient: String,
    pub alerts: Vec<Alert>,
    /// False when the reading was already stored (a resend): nothing was written.
    pub new: bool,
}

impl Ingested {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "reading": self.reading.id,
            "patient": self.patient,
            "duplicate": !self.new,
            "alerts": self.alerts.iter().map(|a| serde_json::json!({
                "id": a.id, "rule": a.rule, "severity": a.severity, "deadline": a.deadline,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"reading_id":"r-1","device_id":"cuff-77","kind":"blood_pressure",
        "values":{"systolic":142,"diastolic":88},"unit":"mm[Hg]",
        "measured_at":"2026-11-03T08:01:00-05:00"}"#;

    #[test]
    fn a_body_that_is_not_a_reading_names_the_field() {
        for (body, field) in [
            ("not json", "reading: field"),
            (r#"{"reading_id":"r-1"}"#, "device_id"),
            (&GOOD.replace("\"kind\"", "\"kinds\""), "kinds"),
            (&GOOD.replace("142", "\"high\""), "values.systolic"),
        ] {
            match VendorReading::parse(body) {
                Err(IngestError::Malformed(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn ids_and_times_are_checked_before_any_document_is_read() {
        let now: DateTime<Utc> = "2026-11-03T13:00:00Z".parse().unwrap();
        let r = VendorReading::parse(GOOD).unwrap();
        assert_eq!(r.check(now), Ok(()));
        let long = GOOD.replace("\"r-1\"", &format!("\"{}\"", "x".repeat(129)));
        let e = VendorReading::parse(&long).unwrap().check(now).unwrap_err();
        assert!(e.to_string().contains("field reading_id"), "{e}");
        let early: DateTime<Utc> = "2026-11-03T12:00:00Z".parse().unwrap();
        let e = r.check(early).unwrap_err();
        assert!(e.to_string().contains("field measured_at"), "{e}");
        assert_eq!(reading_uuid("acme", "r-1"), reading_uuid("acme", "r-1"));
        assert_ne!(reading_uuid("acme", "r-1"), reading_uuid("other", "r-1"));
    }
}
