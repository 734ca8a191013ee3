//! Month close and the encounter ledger: each patient's encounter, versioned, with the document
//! heads and rule set it was computed from. A new version is stored only when the lines change
//! (late data): an *amendment* when lines were added or units raised, a *void* when a billed line
//! lost its basis. Versions are never rewritten.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rounds_core::billing::{self, Encounter, Line, RuleSet};
use rounds_core::{DataFile, Month};
use serde::{Deserialize, Serialize};

use crate::sync::store::Store;

/// What a version is, relative to the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionKind {
    /// Version 1, at month close.
    Original,
    /// Lines added or units raised.
    Amendment,
    /// A billed line removed or its units lowered (an overpayment to report).
    Void,
}

/// The difference between two versions' lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineDiff {
    pub added: Vec<Line>,
    pub removed: Vec<Line>,
}

/// One stored version of a patient's encounter for a month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncounterVersion {
    pub facility: String,
    pub month: Month,
    pub patient: String,
    pub version: u32,
    pub kind: VersionKind,
    pub rule_set: String,
    pub computed_at: DateTime<Utc>,
    /// Document URL → heads (hex) the encounter was computed from.
    pub heads: BTreeMap<String, Vec<String>>,
    pub encounter: Encounter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<LineDiff>,
}

/// Errors of close and export.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("facility {0:?} has no facility document in this store")]
    NoFacility(String),
    #[error("facility {facility}: {problems}")]
    Unreadable { facility: String, problems: String },
    #[error("store: {0}")]
    Store(String),
    #[error(transparent)]
    Billing(#[from] billing::BillingError),
    /// Another close of the same month (on another server) wrote this version first: close
    /// again, from the versions as they are now.
    #[error("version {version} of {patient} was written meanwhile by another close")]
    Conflict { patient: String, version: u32 },
}

pub use crate::sync::store::read_model::{FacilityData, facility_data};

impl From<crate::sync::store::read_model::ReadError> for LedgerError {
    fn from(e: crate::sync::store::read_model::ReadError) -> LedgerError {
        use crate::sync::store::read_model::ReadError;
        match e {
            ReadError::NoFacility(f) => LedgerError::NoFacility(f),
            ReadError::Unreadable { facility, problems } => {
                LedgerError::Unreadable { facility, problems }
            }
            ReadError::Failed(m) => LedgerError::Store(m),
        }
    }
}

/// The `closed_months` value of a month whose close started but has not completed.
const CLOSING: &[u8] = b"closing";

/// The ledger in the store.
pub struct Ledger {
    versions: crate::sync::store::kv::Tree,
    closed: crate::sync::store::kv::Tree,
}

fn key(facility: &str, month: Month, patient: &str, version: u32) -> Vec<u8> {
    let mut k = prefix(facility, month);
    k.extend_from_slice(patient.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn prefix(facility: &str, month: Month) -> Vec<u8> {
    let mut k = facility.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(month.to_string().as_bytes());
    k.push(0);
    k
}

fn diff(old: &[Line], new: &[Line]) -> LineDiff {
    LineDiff {
        added: new.iter().filter(|l| !old.contains(l)).cloned().collect(),
        removed: old.iter().filter(|l| !new.contains(l)).cloned().collect(),
    }
}

/// Void when a billed code disappeared or lost units; otherwise an amendment.
fn kind_of(d: &LineDiff) -> VersionKind {
    let lost = d.removed.iter().any(|r| {
        d.added
            .iter()
            .find(|a| a.code == r.code)
            .is_none_or(|a| a.units < r.units)
    });
    if lost {
        VersionKind::Void
    } else {
        VersionKind::Amendment
    }
}

impl Ledger {
    /// Versions of a month: all, or (`changed`) those of patients with more than one version.
    pub fn select_versions(
        &self,
        facility: &str,
        month: rounds_core::Month,
        changed: bool,
    ) -> Vec<EncounterVersion> {
        let all = self.versions(facility, month);
        if !changed {
            return all;
        }
        let changed_patients: std::collections::BTreeSet<String> = all
            .iter()
            .filter(|v| v.version > 1)
            .map(|v| v.patient.clone())
            .collect();
        all.into_iter()
            .filter(|v| changed_patients.contains(&v.patient))
            .collect()
    }

    pub fn open(db: &crate::sync::store::kv::Db) -> Result<Ledger, LedgerError> {
        let e = |e: crate::sync::store::kv::KvError| LedgerError::Store(e.to_string());
        Ok(Ledger {
            versions: db.open_tree("encounter_versions").map_err(e)?,
            closed: db.open_tree("closed_months").map_err(e)?,
        })
    }

    /// Whether the month's close completed (a close in progress, or one interrupted by a
    /// crash, is not: the automatic close picks an interrupted one up again).
    pub fn is_closed(&self, facility: &str, month: Month) -> bool {
        matches!(self.closed.get(prefix(facility, month)), Ok(Some(v)) if v.as_ref() != CLOSING)
    }

    /// Whether a close of the month started (completed or not).
    fn is_marked(&self, facility: &str, month: Month) -> bool {
        self.closed
            .contains_key(prefix(facility, month))
            .unwrap_or(false)
    }

    /// Every version of a facility's month, in patient then version order.
    pub fn versions(&self, facility: &str, month: Month) -> Vec<EncounterVersion> {
        self.versions
            .scan_prefix(prefix(facility, month))
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// The newest version per patient.
    pub fn latest(&self, facility: &str, month: Month) -> Vec<EncounterVersion> {
        let mut by_patient: BTreeMap<String, EncounterVersion> = BTreeMap::new();
        for v in self.versions(facility, month) {
            by_patient.insert(v.patient.clone(), v);
        }
        by_patient.into_values().collect()
    }

    /// Close (or re-evaluate a closed) month: compute every encounter and store a new version
    /// where the lines changed. Returns the versions written.
    ///
    /// The month is marked (`closing`) *before* its documents are read, and closed once every
    /// version is written: a change written on another
    /// server sharing the store either is read here or, committed after that read, finds the
    /// mark when that server looks for closed months it touched — and re-closes the month
    /// itself. Each version is written only if absent ([`LedgerError::Conflict`] when another
    /// close wrote it first). A first close that fails takes its mark back.
    pub fn close(
        &self,
        store: &Store,
        facility: &str,
        month: Month,
        rules: &RuleSet,
    ) -> Result<Vec<EncounterVersion>, LedgerError> {
        let was_marked = self.is_marked(facility, month);
        if !was_marked {
            self.closed
                .insert(prefix(facility, month), CLOSING)
                .map_err(|e| LedgerError::Store(e.to_string()))?;
        }
        let written = self.close_marked(store, facility, month, rules);
        if written.is_err()
            && !was_marked
            && let Err(e) = self.closed.remove(prefix(facility, month))
        {
            tracing::error!(facility, %month, error = %e, "could not take back a failed close's mark");
        }
        written
    }

    fn close_marked(
        &self,
        store: &Store,
        facility: &str,
        month: Month,
        rules: &RuleSet,
    ) -> Result<Vec<EncounterVersion>, LedgerError> {
        let fd = facility_data(store, facility)?;
        let run = billing::bill(&fd.data, month, rules)?;
        let latest: BTreeMap<String, EncounterVersion> = self
            .latest(facility, month)
            .into_iter()
            .map(|v| (v.patient.clone(), v))
            .collect();
        let now = Utc::now();
        let mut written = Vec::new();
        // Each encounter rests on the facility document and its patient's documents: group the
        // documents by owner once (not once per encounter).
        let mut shared_docs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_patient: BTreeMap<&str, Vec<(String, Vec<String>)>> = BTreeMap::new();
        for (id, owner) in &fd.owner {
            let Some(h) = fd.heads.get(id) else {
                continue;
            };
            match owner {
                None => {
                    shared_docs.insert(id.url(), h.clone());
                }
                Some(p) => by_patient
                    .entry(p.as_str())
                    .or_default()
                    .push((id.url(), h.clone())),
            }
        }
        for enc in run.encounters {
            let mut heads = shared_docs.clone();
            if let Some(docs) = by_patient.get(enc.patient.as_str()) {
                heads.extend(docs.iter().cloned());
            }
            let (version, kind, d) = match latest.get(&enc.patient) {
                None => (1, VersionKind::Original, None),
                Some(prev) if prev.encounter.lines == enc.lines => continue,
                Some(prev) => {
                    let d = diff(&prev.encounter.lines, &enc.lines);
                    (prev.version + 1, kind_of(&d), Some(d))
                }
            };
            let v = EncounterVersion {
                facility: facility.to_string(),
                month,
                patient: enc.patient.clone(),
                version,
                kind,
                rule_set: run.rule_set.clone(),
                computed_at: now,
                heads,
                encounter: enc,
                diff: d,
            };
            let bytes = serde_json::to_vec(&v).map_err(|e| LedgerError::Store(e.to_string()))?;
            // Insert only if absent: a version, once written, is never rewritten.
            self.versions
                .compare_and_swap(
                    key(facility, month, &v.patient, version),
                    None as Option<&[u8]>,
                    Some(bytes),
                )
                .map_err(|e| LedgerError::Store(e.to_string()))?
                .map_err(|_| LedgerError::Conflict {
                    patient: v.patient.clone(),
                    version,
                })?;
            written.push(v);
        }
        self.closed
            .insert(prefix(facility, month), now.to_rfc3339().as_bytes())
            .map_err(|e| LedgerError::Store(e.to_string()))?;
        store
            .flush()
            .map_err(|e| LedgerError::Store(e.to_string()))?;
        Ok(written)
    }

    /// Closed (facility, month) pairs, and those whose close started (their late data is watched).
    pub fn closed_months(&self) -> Vec<(String, Month)> {
        self.closed
            .iter()
            .keys()
            .flatten()
            .filter_map(|k| {
                let s = String::from_utf8_lossy(&k).to_string();
                let mut parts = s.split('\0');
                Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
            })
            .collect()
    }
}

/// Versions as one practice sees them: those whose month concerns it, with only its lines
/// (`default`: the facility's own practice, for lines without one).
pub fn for_practice(
    versions: &[EncounterVersion],
    practice: &str,
    default: &str,
) -> Vec<EncounterVersion> {
    versions
        .iter()
        .filter(|v| v.encounter.concerns(practice, default))
        .map(|v| {
            let mut v = v.clone();
            v.encounter = v.encounter.for_practice(practice, default);
            v
        })
        .collect()
}

/// A closed month ready for packaging: the facility's data, its zone and the latest versions.
pub struct ClosedMonth {
    pub data: std::sync::Arc<FacilityData>,
    pub tz: chrono_tz::Tz,
    pub versions: Vec<EncounterVersion>,
    /// The data split by patient, and each patient's alerts: one package reads its patient's
    /// part only (a package per patient over the whole file was quadratic). Made on first use:
    /// summaries and the company's view never need them.
    split: std::sync::OnceLock<Split>,
}

type Split = (
    BTreeMap<String, DataFile>,
    BTreeMap<String, Vec<rounds_core::alerts::AlertView>>,
);

/// The month's versions as one billing run (the summary's input).
pub fn billing_run(month: Month, versions: &[EncounterVersion]) -> billing::BillingRun {
    billing::BillingRun {
        month,
        rule_set: versions
            .first()
            .map(|v| v.rule_set.clone())
            .unwrap_or_default(),
        encounters: versions.iter().map(|v| v.encounter.clone()).collect(),
    }
}

impl ClosedMonth {
    /// The practice of lines without one: the facility's own (a file without practices).
    pub fn default_practice(&self) -> &str {
        &self.data.data.facility.id
    }

    /// The practices this month concerns (a practitioner of record in it), sorted.
    pub fn practices(&self) -> Vec<String> {
        let default = self.default_practice();
        let mut out: Vec<String> = self
            .versions
            .iter()
            .flat_map(|v| {
                if v.encounter.practices.is_empty() {
                    vec![default.to_string()]
                } else {
                    v.encounter.practices.clone()
                }
            })
            .chain(self.versions.iter().flat_map(|v| {
                v.encounter
                    .lines
                    .iter()
                    .map(|l| Encounter::line_practice(l, default).to_string())
            }))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A practice by id: the registered one, or the facility's implicit practice.
    pub fn practice(&self, id: &str) -> Option<rounds_core::Practice> {
        self.data
            .data
            .practices
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .or_else(|| (id == self.default_practice()).then(|| self.data.data.implicit_practice()))
    }

    /// The latest versions as one practice sees them: the months that concern it, with only
    /// its lines.
    pub fn versions_for(&self, practice: &str) -> Vec<EncounterVersion> {
        for_practice(&self.versions, practice, self.default_practice())
    }

    /// Each version with its patient, ready for the package builders.
    pub fn patient_months<'a>(
        &'a self,
        versions: &'a [EncounterVersion],
        month: Month,
        now: DateTime<Utc>,
        config: &'a rounds_core::ehr::ExportConfig,
    ) -> Vec<rounds_core::ehr::PatientMonth<'a>> {
        let (parts, alerts) = self.split.get_or_init(|| {
            let mut alerts: BTreeMap<String, Vec<rounds_core::alerts::AlertView>> = BTreeMap::new();
            for a in &self.data.alerts {
                alerts
                    .entry(a.alert.patient.clone())
                    .or_default()
                    .push(a.clone());
            }
            (self.data.data.by_patient(), alerts)
        });
        versions
            .iter()
            .filter_map(|v| {
                let part = parts.get(&v.patient)?;
                let patient = part.patients.first()?;
                Some(rounds_core::ehr::PatientMonth {
                    data: part,
                    patient,
                    month,
                    encounter: &v.encounter,
                    alerts: alerts.get(&v.patient).map_or(&[], Vec::as_slice),
                    version: v.version,
                    tz: self.tz,
                    now,
                    config,
                })
            })
            .collect()
    }
}

/// Load a closed month (an error naming the command to run when it is not closed).
pub fn closed_month(
    store: &Store,
    ledger: &Ledger,
    facility: &str,
    month: Month,
) -> Result<ClosedMonth, LedgerError> {
    if !ledger.is_closed(facility, month) {
        return Err(LedgerError::Store(format!(
            "{facility} {month} is not closed yet: run `rounds close-month --facility {facility} --month {month}` first"
        )));
    }
    let data = facility_data(store, facility)?;
    let tz = data
        .data
        .facility
        .timezone
        .parse()
        .map_err(|_| LedgerError::Store(format!("facility {facility}: bad time zone")))?;
    Ok(ClosedMonth {
        data,
        tz,
        versions: ledger.latest(facility, month),
        split: std::sync::OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sync::store::read_model::tests::store_with_example;

    #[test]
    fn a_failed_first_close_takes_its_mark_back_and_a_failed_re_close_keeps_it() {
        let (_dir, store, facility) = store_with_example();
        let ledger = Ledger::open(store.db()).unwrap();
        let month: Month = "2026-11".parse().unwrap();
        let rules = RuleSet::default();
        // A facility without documents: the close fails, and leaves no mark behind.
        assert!(matches!(
            ledger.close(&store, "nowhere", month, &rules),
            Err(LedgerError::NoFacility(_))
        ));
        assert!(!ledger.is_closed("nowhere", month));
        assert!(ledger.closed_months().is_empty());
        // A real close marks the month and writes its versions once.
        let first = ledger.close(&store, &facility, month, &rules).unwrap();
        assert!(!first.is_empty());
        assert!(ledger.is_closed(&facility, month));
        assert!(
            ledger
                .close(&store, &facility, month, &rules)
                .unwrap()
                .is_empty()
        );
        // A close interrupted (by a crash) leaves its month marked but not closed: its late
        // data is still watched, the automatic close does it again, and that completes it.
        ledger
            .closed
            .insert(prefix(&facility, month), CLOSING)
            .unwrap();
        assert!(!ledger.is_closed(&facility, month));
        assert!(ledger.closed_months().contains(&(facility.clone(), month)));
        ledger.close(&store, &facility, month, &rules).unwrap();
        assert!(ledger.is_closed(&facility, month));
        // A re-close that fails keeps the mark that was there before (a marked month of a
        // facility without documents stands in for one).
        ledger
            .closed
            .insert(prefix("nowhere", month), b"earlier".to_vec())
            .unwrap();
        assert!(ledger.close(&store, "nowhere", month, &rules).is_err());
        assert!(ledger.is_closed("nowhere", month));
    }
}
