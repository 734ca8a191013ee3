//! The replica's alert actions: protocol, raising, acknowledging, resolving, escalating, and
//! 24/7 triage calls. Rules and folding are in [`crate::alerts`].

use std::collections::BTreeSet;

use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, AutomergeError, ChangeHash, ROOT, ReadDoc};
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{NewInteraction, Replica, ReplicaError, Result};
use crate::alerts::{
    self, Alert, AlertAction, AlertEvent, AlertProtocol, AlertView, TriageOutcome,
};
use crate::document::{self as d, DocKind};
use crate::ids::DocumentId;
use crate::model::{Interaction, Program, Reading};
use crate::month::Month;

/// Put alerts under their derived ids; an alert already there is left alone (same key, so two
/// replicas raising it concurrently still merge to one).
pub(crate) fn write_alerts(
    tx: &mut Transaction<'_>,
    alerts: &[Alert],
) -> std::result::Result<(), AutomergeError> {
    if alerts.is_empty() {
        return Ok(());
    }
    let map = d::container(tx, d::ALERTS).ok_or(AutomergeError::NotAnObject)?;
    for a in alerts {
        if tx.get(&map, a.id.to_string())?.is_none() {
            d::put_entry(tx, &map, &a.id.to_string(), a)?;
        }
    }
    Ok(())
}

/// A staff member's acknowledgement of an alert: the time spent is logged as an interaction.
#[derive(Debug, Clone)]
pub struct Acknowledgement {
    pub by: String,
    pub note: String,
    /// Minutes spent responding (at least 1); they count toward the month.
    pub minutes: u32,
    /// Whether it included a real-time conversation with the patient or caregiver.
    pub interactive: bool,
}

/// A call to the 24/7 line by a patient or caregiver.
#[derive(Debug, Clone)]
pub struct TriageCall {
    pub patient: String,
    pub staff: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub outcome: TriageOutcome,
    pub note: Option<String>,
}

impl Replica {
    /// A replica for the server's own writes (ingested readings, alerts, escalations): in
    /// memory (no files), and every change made with the server's fixed actor.
    pub fn staging(actor: &[u8], facility: &str) -> Replica {
        let mut r = Replica::in_memory();
        r.actor = ActorId::from(actor);
        r.facility = Some(facility.to_string());
        r
    }

    /// Load a document's bytes into this replica (staging).
    pub fn adopt(&mut self, id: DocumentId, bytes: &[u8]) -> Result<()> {
        let kind = automerge::Automerge::load(bytes)
            .ok()
            .and_then(|doc| d::kind_of(&doc))
            .unwrap_or(DocKind::PatientMonth);
        let actor = self.actor.clone();
        let file = self.ensure_doc(id, kind)?;
        file.doc
            .load_incremental(bytes)
            .map_err(|source| ReplicaError::Automerge {
                doc: id,
                source: Box::new(source),
            })?;
        file.doc.set_actor(actor);
        file.persist()?;
        Ok(())
    }

    /// The changes of `id` made after `heads` (all of them for empty heads), for merging elsewhere.
    pub fn changes_since(&self, id: DocumentId, heads: &[ChangeHash]) -> Option<Vec<u8>> {
        self.docs.get(&id).map(|f| f.doc.save_after(heads))
    }

    /// The facility's alert protocol ([`AlertProtocol::standard`] until one is set).
    pub fn alert_protocol(&self) -> AlertProtocol {
        self.facility_doc_id()
            .ok()
            .and_then(|id| self.document(id))
            .and_then(|doc| d::root_str(doc, d::ALERT_PROTOCOL))
            .and_then(|s| AlertProtocol::from_json(&s))
            .unwrap_or_else(AlertProtocol::standard)
    }

    /// Set the facility's alert protocol (replaces the whole protocol). On-call staff and the
    /// patients of overrides must be on the roster.
    pub fn set_alert_protocol(&mut self, p: &AlertProtocol, now: DateTime<Utc>) -> Result<()> {
        let mut problems = p.check();
        let roster = self.facility()?;
        for s in &p.on_call {
            if !roster.staff.iter().any(|x| &x.id == s)
                && !roster.practitioners.iter().any(|x| &x.id == s)
            {
                problems.push(crate::Problem::new(
                    "alert protocol",
                    "on_call",
                    format!("unknown staff {s:?}"),
                ));
            }
        }
        let patients = self.patient_ids();
        for patient in p.patients.keys() {
            if !patients.contains(patient) {
                problems.push(crate::Problem::new(
                    format!("patients.{patient}"),
                    "patient",
                    format!("unknown patient {patient:?}"),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(ReplicaError::Invalid(crate::Problems(problems)));
        }
        let json = p.to_json();
        let id = self.facility_doc_id()?;
        self.change_as(id, DocKind::Facility, now, false, |tx| {
            tx.put(ROOT, d::ALERT_PROTOCOL, json.as_str())
        })
    }

    /// The patient's readings of this month and the one before, and the voided entries.
    fn reading_history(&self, patient: &str, month: Month) -> (Vec<Reading>, BTreeSet<Uuid>) {
        let mut readings = Vec::new();
        let mut corrections = Vec::new();
        for m in [month.previous(), month] {
            let e = self.month_entries(patient, m);
            readings.extend(e.readings);
            corrections.extend(e.corrections);
        }
        (readings, alerts::voided_ids(&corrections))
    }

    fn evaluator(&self) -> String {
        if self.scratch {
            "server".to_string()
        } else {
            format!("device-{}", self.actor())
        }
    }

    /// The alerts a new reading raises.
    pub(crate) fn alerts_for(
        &self,
        reading: &Reading,
        month: Month,
        now: DateTime<Utc>,
    ) -> Result<Vec<Alert>> {
        let (history, voided) = self.reading_history(&reading.patient, month);
        let (now_local, _) = self.local(now)?;
        Ok(alerts::evaluate(
            &self.alert_protocol(),
            reading,
            &history,
            &voided,
            now_local,
            &self.evaluator(),
        ))
    }

    /// Raise the alerts that readings of a patient-month measured since `since` should have
    /// raised and did not (readings that arrived from elsewhere); returns the new alerts.
    pub fn raise_missing_alerts(
        &mut self,
        patient: &str,
        month: Month,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Alert>> {
        let entries = self.month_entries(patient, month);
        let have: BTreeSet<Uuid> = entries.alerts.iter().map(|a| a.id).collect();
        let (history, voided) = self.reading_history(patient, month);
        let (now_local, _) = self.local(now)?;
        let protocol = self.alert_protocol();
        let mut new = Vec::new();
        for r in &entries.readings {
            if r.measured_at.with_timezone(&Utc) < since {
                continue;
            }
            for a in alerts::evaluate(
                &protocol,
                r,
                &history,
                &voided,
                now_local,
                &self.evaluator(),
            ) {
                if !have.contains(&a.id) {
                    new.push(a);
                }
            }
        }
        if new.is_empty() {
            return Ok(new);
        }
        let Some(facility) = self.facility.clone() else {
            return Err(ReplicaError::NoFacility);
        };
        let doc = DocumentId::patient_month(&facility, patient, month);
        self.change(doc, DocKind::PatientMonth, now, |tx| write_alerts(tx, &new))?;
        Ok(new)
    }

    /// A patient-month's alerts with their histories.
    pub fn alerts(&self, patient: &str, month: Month) -> Vec<AlertView> {
        let e = self.month_entries(patient, month);
        alerts::fold(&e.alerts, &e.alert_events)
    }

    /// Every alert held that still needs a response, oldest first.
    pub fn open_alerts(&self) -> Vec<AlertView> {
        let mut out: Vec<AlertView> = self
            .month_docs()
            .into_iter()
            .flat_map(|(p, m, _)| self.alerts(&p, m))
            .filter(AlertView::needs_response)
            .collect();
        out.sort_by_key(|v| v.alert.deadline);
        out
    }

    /// The month document holding an alert, and the alert with its history.
    fn find_alert(&self, alert: Uuid) -> Option<(DocumentId, AlertView)> {
        let key = alert.to_string();
        let facility = self.facility.as_deref()?;
        self.month_docs().into_iter().find_map(|(p, m, id)| {
            let doc = self.document(id)?;
            let map = d::container(doc, d::ALERTS)?;
            matches!(doc.get(&map, key.as_str()), Ok(Some(_)))
                .then(|| {
                    let v = self
                        .alerts(&p, m)
                        .into_iter()
                        .find(|v| v.alert.id == alert)?;
                    Some((DocumentId::patient_month(facility, &p, m), v))
                })
                .flatten()
        })
    }

    fn write_event(&mut self, doc: DocumentId, e: &AlertEvent, now: DateTime<Utc>) -> Result<()> {
        self.change(doc, DocKind::PatientMonth, now, |tx| {
            let map = d::container(tx, d::ALERT_EVENTS).ok_or(AutomergeError::NotAnObject)?;
            if tx.get(&map, e.id.to_string())?.is_none() {
                d::put_entry(tx, &map, &e.id.to_string(), e)?;
            }
            Ok(())
        })
    }

    /// Acknowledge an alert with a note; the minutes spent are logged as an interaction (RPM
    /// for patients enrolled in RPM, else CCM) so they count toward the month.
    pub fn acknowledge_alert(
        &mut self,
        alert: Uuid,
        ack: Acknowledgement,
        now: DateTime<Utc>,
    ) -> Result<(AlertEvent, Interaction)> {
        let (doc, view) = self
            .find_alert(alert)
            .ok_or(ReplicaError::UnknownEntry(alert))?;
        let entry = format!("acknowledgement of alert {alert}");
        if ack.note.trim().is_empty() {
            return Err(ReplicaError::invalid(&entry, "note", "a note is required"));
        }
        if ack.minutes == 0 || ack.minutes > 240 {
            return Err(ReplicaError::invalid(
                &entry,
                "minutes",
                format!("{} is not between 1 and 240", ack.minutes),
            ));
        }
        self.require_person(&entry, "by", &ack.by)?;
        let program = match self.patient(&view.alert.patient) {
            Ok(p) if p.rpm.is_some() => Program::Rpm,
            _ => Program::Ccm,
        };
        let interaction = self.log_interaction(
            NewInteraction {
                patient: view.alert.patient.clone(),
                staff: ack.by.clone(),
                program,
                started_at: now - Duration::minutes(i64::from(ack.minutes)),
                ended_at: now,
                interactive: ack.interactive,
                activity: Some(format!("alert response: {}", view.alert.rule)),
                note: Some(ack.note.clone()),
            },
            now,
        )?;
        let (at, _) = self.local(now)?;
        let event = AlertEvent {
            id: crate::ids::entry_id(now),
            alert,
            action: AlertAction::Acknowledged,
            by: ack.by,
            at,
            note: Some(ack.note),
            interaction: Some(interaction.id),
            to: None,
        };
        self.write_event(doc, &event, now)?;
        Ok((event, interaction))
    }

    /// Mark an alert resolved.
    pub fn resolve_alert(
        &mut self,
        alert: Uuid,
        by: &str,
        note: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<AlertEvent> {
        let (doc, _) = self
            .find_alert(alert)
            .ok_or(ReplicaError::UnknownEntry(alert))?;
        self.require_person(&format!("resolution of alert {alert}"), "by", by)?;
        let (at, _) = self.local(now)?;
        let event = AlertEvent {
            id: crate::ids::entry_id(now),
            alert,
            action: AlertAction::Resolved,
            by: by.to_string(),
            at,
            note,
            interaction: None,
            to: None,
        };
        self.write_event(doc, &event, now)?;
        Ok(event)
    }

    /// Escalate an alert to the patient's billing practitioner. `by` is a staff id, or `server`
    /// for the automatic escalation at the deadline (whose id is derived, so it happens once).
    /// Returns None when the alert no longer needs a response or is already escalated.
    pub fn escalate_alert(
        &mut self,
        alert: Uuid,
        by: &str,
        note: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Option<AlertEvent>> {
        let (doc, view) = self
            .find_alert(alert)
            .ok_or(ReplicaError::UnknownEntry(alert))?;
        let automatic = by == "server";
        if !automatic {
            self.require_person(&format!("escalation of alert {alert}"), "by", by)?;
        }
        if !view.needs_response()
            || (automatic
                && view
                    .events
                    .iter()
                    .any(|e| e.action == AlertAction::Escalated))
        {
            return Ok(None);
        }
        let to = self
            .patient(&view.alert.patient)
            .map(|p| p.billing_practitioner)
            .ok();
        let (at, _) = self.local(now)?;
        let event = AlertEvent {
            id: if automatic {
                alerts::escalation_id(alert)
            } else {
                crate::ids::entry_id(now)
            },
            alert,
            action: AlertAction::Escalated,
            by: by.to_string(),
            at,
            note,
            interaction: None,
            to,
        };
        self.write_event(doc, &event, now)?;
        Ok(Some(event))
    }

    /// Log a 24/7 line call as an interaction whose activity records the triage outcome.
    pub fn log_triage_call(&mut self, call: TriageCall, now: DateTime<Utc>) -> Result<Interaction> {
        let program = match self.patient(&call.patient) {
            Ok(p) if p.rpm.is_some() => Program::Rpm,
            Ok(_) => Program::Ccm,
            Err(e) => return Err(e),
        };
        self.log_interaction(
            NewInteraction {
                patient: call.patient,
                staff: call.staff,
                program,
                started_at: call.started_at,
                ended_at: call.ended_at,
                interactive: true,
                activity: Some(call.outcome.activity()),
                note: call.note,
            },
            now,
        )
    }
}
