//! Reading the facility's documents into the domain model, whoever holds them (a device's
//! replica, or the server's store at month close).

use std::collections::BTreeMap;

use automerge::{Automerge, ReadDoc};
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::document as d;
use crate::model::*;
use crate::month::Month;
use crate::problem::Problem;

/// The facility document's content.
#[derive(Debug, Clone, PartialEq)]
pub struct Roster {
    pub facility: Facility,
    pub practitioners: Vec<Practitioner>,
    pub staff: Vec<Staff>,
    /// Roster entries that could not be read.
    pub problems: Vec<Problem>,
}

/// Read a facility document.
pub fn read_roster(doc: &Automerge) -> Result<Roster, Vec<Problem>> {
    let mut problems = Vec::new();
    let facility_json = d::container_json(doc, d::FACILITY);
    let facility: Facility =
        crate::datafile::parse_entry(&facility_json, || "facility".into(), &mut problems)
            .ok_or_else(|| problems.clone())?;
    let practitioners = d::read_entries(doc, d::PRACTITIONERS, "practitioner", &mut problems)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let staff = d::read_entries(doc, d::STAFF, "staff", &mut problems)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    Ok(Roster {
        facility,
        practitioners,
        staff,
        problems,
    })
}

/// Patient ids listed in a facility document.
pub fn roster_patient_ids(doc: &Automerge) -> Vec<String> {
    d::container(doc, d::PATIENTS)
        .map(|m| doc.keys(&m).collect())
        .unwrap_or_default()
}

/// (patient, month) pairs listed in a facility document's month index.
pub fn roster_months(doc: &Automerge) -> Vec<(String, Month)> {
    d::container(doc, d::MONTHS)
        .map(|m| {
            doc.keys(&m)
                .filter_map(|k| {
                    let (p, m) = k.split_once('/')?;
                    Some((p.to_string(), m.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Fold bedside reports into a patient's profile (as JSON): a reported stay is one more stay, a
/// reported death sets the date of death when it is earlier than the profile's (or absent).
fn fold_reports(
    profile: &mut serde_json::Map<String, serde_json::Value>,
    reports: &[BedsideReport],
) {
    for r in reports {
        match &r.event {
            BedsideEvent::Stay { stay, from, to } => {
                let entry = profile
                    .entry("stays")
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if entry.is_null() {
                    *entry = serde_json::Value::Array(Vec::new());
                }
                if let Some(stays) = entry.as_array_mut() {
                    let s = Stay {
                        kind: *stay,
                        from: *from,
                        to: *to,
                    };
                    let v = serde_json::to_value(&s).unwrap_or_default();
                    if !stays.contains(&v) {
                        stays.push(v);
                    }
                }
            }
            BedsideEvent::Adt { .. } => {}
            BedsideEvent::Death { on } => {
                let earlier = profile
                    .get("died_on")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse::<chrono::NaiveDate>().ok())
                    .is_none_or(|d| *on < d);
                if earlier {
                    profile.insert("died_on".into(), serde_json::Value::String(on.to_string()));
                }
            }
        }
    }
    // The facility's ADT feed: its stays join the others, its death the reported ones (the
    // earliest wins), its discharge, MRN and merge are the feed's alone.
    let adt = crate::adt::fold(reports);
    if adt.events.is_empty() {
        return;
    }
    let mut extra: Vec<BedsideReport> = Vec::new();
    for s in &adt.stays {
        extra.push(BedsideReport {
            id: uuid::Uuid::nil(),
            patient: String::new(),
            reported_by: String::new(),
            reported_at: chrono::DateTime::<chrono::FixedOffset>::MIN_UTC.fixed_offset(),
            event: BedsideEvent::Stay {
                stay: s.kind,
                from: s.from,
                to: s.to,
            },
        });
    }
    if let Some(on) = adt.died_on {
        extra.push(BedsideReport {
            id: uuid::Uuid::nil(),
            patient: String::new(),
            reported_by: String::new(),
            reported_at: chrono::DateTime::<chrono::FixedOffset>::MIN_UTC.fixed_offset(),
            event: BedsideEvent::Death { on },
        });
    }
    fold_reports(profile, &extra);
    let date = |d: Option<chrono::NaiveDate>| {
        d.map_or(serde_json::Value::Null, |d| {
            serde_json::Value::String(d.to_string())
        })
    };
    if adt.discharged_on.is_some() {
        profile.insert("discharged_on".into(), date(adt.discharged_on));
    }
    if !adt.absences.is_empty()
        && let Ok(absences) = serde_json::to_value(&adt.absences)
    {
        profile.insert("absences".into(), absences);
    }
    if let Some(m) = adt.mrn {
        profile.insert("mrn".into(), serde_json::Value::String(m));
    }
    if let Some(m) = adt.merged_into {
        profile.insert("merged_into".into(), serde_json::Value::String(m));
    }
}

/// What the facility's ADT feed says about a patient (events, current status, stays).
pub fn read_adt(doc: &Automerge, patient: &str) -> crate::adt::AdtFold {
    let mut problems = Vec::new();
    let reports: Vec<BedsideReport> =
        d::read_entries(doc, d::BEDSIDE_REPORTS, "bedside report", &mut problems)
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r: &BedsideReport| r.patient == patient)
            .collect();
    crate::adt::fold(&reports)
}

/// Read a patient document (with the care-plan text and the bedside reports folded in).
pub fn read_patient(doc: &Automerge, patient: &str) -> Result<Patient, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut profile = d::container_json(doc, d::PROFILE);
    let consents: Vec<Consent> = d::read_entries(doc, d::CONSENTS, "consent", &mut problems)
        .into_iter()
        .map(|(k, mut c): (String, Consent)| {
            c.id = Some(k);
            c
        })
        .collect();
    let text = d::container(doc, d::CARE_PLAN_TEXT)
        .and_then(|t| doc.text(&t).ok())
        .unwrap_or_default();
    let reports: Vec<BedsideReport> =
        d::read_entries(doc, d::BEDSIDE_REPORTS, "bedside report", &mut problems)
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r: &BedsideReport| r.patient == patient)
            .collect();
    if let Some(obj) = profile.as_object_mut() {
        fold_reports(obj, &reports);
        obj.insert(
            "consents".into(),
            serde_json::to_value(&consents).unwrap_or_default(),
        );
        if !text.is_empty() {
            let plan = obj
                .entry("care_plan")
                .or_insert_with(|| serde_json::json!({}));
            if plan.is_null() {
                *plan = serde_json::json!({});
            }
            if let Some(p) = plan.as_object_mut() {
                p.insert("text".into(), serde_json::Value::String(text));
            }
        }
    }
    crate::datafile::parse_entry(&profile, || format!("patient {patient}"), &mut problems)
        .ok_or(problems)
}

/// A data file from a facility document, its patients' documents and month documents, in
/// canonical order; unreadable entries come back as problems.
pub fn assemble<'a>(
    facility_doc: &Automerge,
    patient_docs: impl IntoIterator<Item = (String, &'a Automerge)>,
    month_docs: impl IntoIterator<Item = &'a Automerge>,
) -> Result<(DataFile, Vec<Problem>), Vec<Problem>> {
    assemble_read(
        facility_doc,
        patient_docs
            .into_iter()
            .map(|(id, doc)| read_patient(doc, &id)),
        month_docs.into_iter().map(read_month),
    )
    .map(|(data, problems, _)| (data, problems))
}

/// [`assemble`] from documents already read (patients and months may be read in parallel),
/// with the months' alerts folded.
pub fn assemble_read(
    facility_doc: &Automerge,
    patients: impl IntoIterator<Item = Result<crate::model::Patient, Vec<Problem>>>,
    months: impl IntoIterator<Item = MonthEntries>,
) -> Result<(DataFile, Vec<Problem>, Vec<crate::alerts::AlertView>), Vec<Problem>> {
    let roster = read_roster(facility_doc)?;
    let mut problems = roster.problems;
    let mut data = DataFile::new(roster.facility);
    data.practitioners = roster.practitioners;
    data.staff = roster.staff;
    for p in patients {
        match p {
            Ok(p) => data.patients.push(p),
            Err(ps) => problems.extend(ps),
        }
    }
    let mut alerts = Vec::new();
    let mut events = Vec::new();
    for e in months {
        data.interactions.extend(e.interactions);
        data.readings.extend(e.readings);
        data.timers.extend(e.running_timers);
        data.corrections.extend(e.corrections);
        alerts.extend(e.alerts);
        events.extend(e.alert_events);
        problems.extend(e.problems);
    }
    data.canonicalize();
    Ok((data, problems, crate::alerts::fold(&alerts, &events)))
}

/// Every alert of these patient-month documents, with its history folded.
pub fn assemble_alerts<'a>(
    month_docs: impl IntoIterator<Item = &'a Automerge>,
) -> Vec<crate::alerts::AlertView> {
    let mut alerts = Vec::new();
    let mut events = Vec::new();
    for doc in month_docs {
        let e = read_month(doc);
        alerts.extend(e.alerts);
        events.extend(e.alert_events);
    }
    crate::alerts::fold(&alerts, &events)
}

/// The stop event of a timer, written once under the timer's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerStop {
    pub ended_at: DateTime<FixedOffset>,
    #[serde(default)]
    pub interactive: bool,
    #[serde(default)]
    pub note: Option<String>,
}

/// The entries of one patient-month document, as stored (nothing folded away).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonthEntries {
    /// Logged interactions and stopped timers.
    pub interactions: Vec<Interaction>,
    pub readings: Vec<Reading>,
    pub running_timers: Vec<RunningTimer>,
    pub corrections: Vec<Correction>,
    /// Alerts raised by this month's readings, and what was done about them.
    pub alerts: Vec<crate::alerts::Alert>,
    pub alert_events: Vec<crate::alerts::AlertEvent>,
    /// Entries that could not be read (skipped).
    pub problems: Vec<Problem>,
}

/// Read one patient-month document: stored entries, stopped timers folded into interactions.
pub fn read_month(doc: &automerge::Automerge) -> MonthEntries {
    let mut problems = Vec::new();
    let mut interactions: Vec<Interaction> =
        d::read_entries(doc, d::INTERACTIONS, "interaction", &mut problems)
            .into_iter()
            .map(|(_, i)| i)
            .collect();
    let readings = d::read_entries(doc, d::READINGS, "reading", &mut problems)
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let timers: Vec<(String, RunningTimer)> =
        d::read_entries(doc, d::TIMERS, "timer", &mut problems);
    let stops: BTreeMap<String, TimerStop> =
        d::read_entries(doc, d::TIMER_STOPS, "timer stop", &mut problems)
            .into_iter()
            .collect();
    let mut running_timers = Vec::new();
    for (key, t) in timers {
        match stops.get(&key) {
            Some(s) => interactions.push(Interaction {
                id: t.id,
                patient: t.patient,
                staff: t.staff,
                program: t.program,
                started_at: t.started_at,
                ended_at: s.ended_at,
                interactive: s.interactive,
                activity: t.activity,
                note: s.note.clone(),
                amends: None,
            }),
            None => running_timers.push(t),
        }
    }
    let corrections = d::read_entries(doc, d::CORRECTIONS, "correction", &mut problems)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    let alerts = d::read_entries(doc, d::ALERTS, "alert", &mut problems)
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let alert_events = d::read_entries(doc, d::ALERT_EVENTS, "alert event", &mut problems)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    interactions.sort_by_key(|i| i.id);
    MonthEntries {
        interactions,
        readings,
        running_timers,
        corrections,
        alerts,
        alert_events,
        problems,
    }
}
