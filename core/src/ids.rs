//! Derived identifiers: documents and keys that two offline devices must agree on without talking.
//!
//! A document id is a name-based UUID (version 8 over SHA-256 of a namespaced name), written as an
//! automerge-repo `DocumentId` (bs58check of its 16 bytes) and as a URL `automerge:<DocumentId>`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::month::Month;

/// A name-based UUID (version 8) over SHA-256 of `name`.
pub fn name_uuid(name: &str) -> Uuid {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A fresh entry id: a UUIDv7 whose timestamp is `now` and whose other 74 bits are random.
///
/// The core reads no clock: the caller passes the time, as it does to every action. Entries made
/// at the same millisecond (two tablets, or one action writing two entries) still get different
/// ids from the random bits. A time before 1970 (never produced by a real clock) is written as 0.
pub fn entry_id(now: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(now.timestamp()).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, now.timestamp_subsec_nanos());
    Uuid::new_v7(ts)
}

/// The key of a consent imported without one: stable for the same patient and position.
pub fn consent_key(patient: &str, index: usize) -> String {
    name_uuid(&format!("rounds/consent/{patient}/{index}")).to_string()
}

/// A name component with `%` and `/` escaped, so no two (facility, patient, month) share a
/// derived name. Valid ids ([`check_id`]) contain neither, so their names are unchanged.
fn escape(component: &str) -> std::borrow::Cow<'_, str> {
    if component.contains(['%', '/']) {
        component.replace('%', "%25").replace('/', "%2F").into()
    } else {
        component.into()
    }
}

/// The longest facility, patient, staff or practitioner id.
pub const MAX_ID_LEN: usize = 64;

/// An id that is not a safe facility, patient, staff or practitioner id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field}: {shown:?} is not a valid id ({reason}); ids are 1-64 characters of A-Z a-z 0-9 . _ - and do not start with '.'"
)]
pub struct IdError {
    pub field: String,
    /// The id as given, cut to 32 characters and with control characters escaped.
    pub shown: String,
    pub reason: &'static str,
}

/// Check a facility, patient, staff or practitioner id: `[A-Za-z0-9._-]{1,64}`, not starting
/// with `.` (so never `.` or `..`, never a path separator, never a control character).
pub fn check_id(field: &str, id: &str) -> Result<(), IdError> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id.len() > MAX_ID_LEN {
        Some("longer than 64 characters")
    } else if id.starts_with('.') {
        Some("starts with '.'")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("a character outside A-Z a-z 0-9 . _ -")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(IdError {
            field: field.to_string(),
            shown: id.chars().take(32).collect(),
            reason,
        }),
    }
}

/// An automerge-repo document id: 16 bytes, shown as bs58check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocumentId([u8; 16]);

impl DocumentId {
    pub fn from_bytes(bytes: [u8; 16]) -> DocumentId {
        DocumentId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    fn named(name: &str) -> DocumentId {
        DocumentId(*name_uuid(name).as_bytes())
    }

    /// The facility document: name, zone, roster.
    pub fn facility(facility: &str) -> DocumentId {
        DocumentId::named(&format!("rounds/facility/{}", escape(facility)))
    }

    /// A patient's document: demographics, conditions, consents, care plan.
    pub fn patient(facility: &str, patient: &str) -> DocumentId {
        DocumentId::named(&format!(
            "rounds/patient/{}/{}",
            escape(facility),
            escape(patient)
        ))
    }

    /// A patient's month: the time entries, readings and corrections of that month.
    pub fn patient_month(facility: &str, patient: &str, month: Month) -> DocumentId {
        DocumentId::named(&format!(
            "rounds/patient-month/{}/{}/{month}",
            escape(facility),
            escape(patient)
        ))
    }

    /// `automerge:<DocumentId>`.
    pub fn url(&self) -> String {
        format!("automerge:{self}")
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an automerge document id: {0:?}")]
pub struct DocumentIdError(pub String);

impl FromStr for DocumentId {
    type Err = DocumentIdError;
    fn from_str(s: &str) -> Result<DocumentId, DocumentIdError> {
        let raw = s.strip_prefix("automerge:").unwrap_or(s);
        let bytes = bs58::decode(raw)
            .with_check(None)
            .into_vec()
            .map_err(|_| DocumentIdError(s.to_string()))?;
        let arr: [u8; 16] = bytes
            .try_into()
            .map_err(|_| DocumentIdError(s.to_string()))?;
        Ok(DocumentId(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_carry_the_time_passed_in_and_differ_at_the_same_instant() {
        let now: DateTime<Utc> = "2026-11-03T14:00:00.250Z".parse().unwrap();
        let a = entry_id(now);
        let b = entry_id(now);
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 7);
        let (secs, nanos) = a.get_timestamp().unwrap().to_unix();
        assert_eq!(secs, 1_793_714_400);
        assert_eq!(nanos, 250_000_000);
        // Ids sort by the time passed in, whatever the clock of the machine says.
        let later = entry_id(now + chrono::Duration::milliseconds(1));
        assert!(later > a && later > b);
        let before_1970: DateTime<Utc> = "1969-12-31T23:59:59Z".parse().unwrap();
        assert_eq!(
            entry_id(before_1970).get_timestamp().unwrap().to_unix().0,
            0
        );
    }

    #[test]
    fn derived_ids_are_stable_and_round_trip() {
        let m: Month = "2026-11".parse().unwrap();
        let a = DocumentId::patient_month("sunnyvale", "p-001", m);
        let b = DocumentId::patient_month("sunnyvale", "p-001", m);
        assert_eq!(a, b);
        assert_ne!(a, DocumentId::patient_month("sunnyvale", "p-002", m));
        assert_ne!(a, DocumentId::patient_month("sunnyvale", "p-001", m.next()));
        let parsed: DocumentId = a.url().parse().unwrap();
        assert_eq!(parsed, a);
        assert_eq!(name_uuid("x").get_version_num(), 8);
        assert!("automerge:notbase58!!".parse::<DocumentId>().is_err());
    }

    #[test]
    fn valid_ids_keep_their_document_names_and_others_cannot_collide() {
        let m: Month = "2026-11".parse().unwrap();
        // Unchanged for valid ids (documents already stored keep their ids).
        assert_eq!(
            DocumentId::patient("sunnyvale", "p-001"),
            DocumentId::named("rounds/patient/sunnyvale/p-001")
        );
        // "a/b" + "c" and "a" + "b/c" would have shared a name.
        assert_ne!(
            DocumentId::patient_month("a/b", "c", m),
            DocumentId::patient_month("a", "b/c", m)
        );
        assert_ne!(
            DocumentId::patient("a%2Fb", "c"),
            DocumentId::patient("a/b", "c")
        );
    }

    #[test]
    fn ids_are_restricted() {
        for ok in ["p-001", "sunnyvale", "A.b_c-9", &"x".repeat(64)] {
            assert!(check_id("patient", ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(10_000);
        for bad in [
            "",
            "a/b",
            "..",
            ".hidden",
            "../../x",
            "a\0b",
            "a\u{1}b",
            "é",
            long.as_str(),
        ] {
            let e = check_id("patient", bad).unwrap_err();
            assert!(e.to_string().starts_with("patient: "), "{e}");
            assert!(e.shown.chars().count() <= 32);
        }
    }
}
