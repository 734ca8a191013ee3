//! The server side of alerting: staged writes of readings, alerts and escalations through an
//! in-memory replica with the server's actor, the escalation and notification loops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rounds_core::alerts::{AlertView, Severity};
use rounds_core::{DocumentId, Month, Replica, ReplicaError};

use tokio::sync::mpsc;

use crate::server::Shared;
use crate::services::alerting::*;
use crate::services::security::AuditRecord;

impl Shared {
    /// Create a vendor integration for `facility`; returns its API key (shown once). Audited.
    pub(crate) fn add_integration(
        &self,
        facility: &str,
        name: &str,
        mapping: Option<crate::services::alerting::vendors::GenericMapping>,
    ) -> Result<String, AlertingError> {
        let key = self.alerting.add_integration(facility, name, mapping)?;
        let mut a = AuditRecord::new("integration-added");
        a.facility = Some(facility.to_string());
        a.detail = Some(name.to_string());
        self.security.record(a);
        Ok(key)
    }

    /// Set `facility`'s alert protocol from its TOML text: checked, written into the facility
    /// document with the server's actor and merged into the hub. Returns the number of rules.
    pub(crate) async fn set_protocol(
        &self,
        facility: &str,
        toml: &str,
    ) -> Result<usize, AlertingError> {
        let protocol = rounds_core::alerts::AlertProtocol::from_toml(toml)
            .map_err(|e| AlertingError::Invalid(e.to_string()))?;
        let _guard = self.alerting.stage_lock.lock().await;
        let shard = self.shard_for(Some(facility));
        let mut loader = |id: DocumentId| self.document_bytes(&shard, id);
        let now = self.alerting.now();
        let staged = stage_protocol(&self.alerting.actor, facility, &protocol, &mut loader, now)?;
        self.commit(&staged).await.map_err(AlertingError::Store)?;
        let mut a = AuditRecord::new("protocol-set");
        a.facility = Some(facility.to_string());
        a.detail = Some(format!("{} rules", protocol.rules.len()));
        self.security.record(a);
        Ok(protocol.rules.len())
    }

    /// Documents `docs` of `facility` (those that exist) in a staging replica.
    pub(crate) fn stage(&self, facility: &str, docs: &[DocumentId]) -> Result<Staged, String> {
        let mut replica = Replica::staging(&self.alerting.actor, facility);
        let mut before = BTreeMap::new();
        let shard = self.shard_for(Some(facility));
        for id in docs {
            let bytes = self.document_bytes(&shard, *id)?;
            if let Some(bytes) = bytes {
                replica.adopt(*id, &bytes).map_err(|e| e.to_string())?;
                before.insert(*id, replica.heads(*id).unwrap_or_default());
            }
        }
        Ok(Staged {
            facility: facility.to_string(),
            replica,
            before,
        })
    }

    /// Merge what the staging replica wrote into the hub (persisted and fanned out).
    pub(crate) async fn commit(&self, s: &Staged) -> Result<usize, String> {
        let mut docs = Vec::new();
        for id in s.replica.document_ids() {
            let heads = s.before.get(&id).cloned().unwrap_or_default();
            if s.replica.heads(id).unwrap_or_default() == heads {
                continue;
            }
            if let Some(bytes) = s.replica.changes_since(id, &heads) {
                docs.push((id, bytes));
            }
        }
        let n = docs.len();
        if n > 0 {
            self.merge(&s.facility, docs).await?;
        }
        Ok(n)
    }

    /// The documents a patient-month's alerts need: facility, patient, the month and the one before.
    pub(crate) fn month_set(facility: &str, patient: &str, month: Month) -> Vec<DocumentId> {
        vec![
            DocumentId::facility(facility),
            DocumentId::patient(facility, patient),
            DocumentId::patient_month(facility, patient, month.previous()),
            DocumentId::patient_month(facility, patient, month),
        ]
    }

    /// Update the escalation index (and queue "raised" notices) from a patient-month's alerts.
    pub(crate) fn index_alerts(
        &self,
        facility: &str,
        patient: &str,
        month: Month,
        views: &[AlertView],
    ) {
        let config = self.alerting.config();
        for v in views {
            let key = v.alert.id.to_string();
            let escalated = v
                .events
                .iter()
                .any(|e| e.action == rounds_core::alerts::AlertAction::Escalated);
            let waiting = v.needs_response() && !escalated;
            if waiting {
                let o = OpenAlert {
                    facility: facility.to_string(),
                    patient: patient.to_string(),
                    month,
                    deadline: v.alert.deadline.with_timezone(&Utc),
                    severity: v.alert.severity,
                };
                let Ok(bytes) = serde_json::to_vec(&o) else {
                    continue;
                };
                let first = matches!(self.alerting.open.insert(key.as_bytes(), bytes), Ok(None));
                if first {
                    self.metrics.alerts_raised.inc();
                }
                if first && v.alert.severity == Severity::Urgent && config.wants("urgent_raised") {
                    self.alerting.outbox.enqueue(
                        &config,
                        &format!("{}/raised", v.alert.id),
                        &notice("alert.urgent_raised", facility, v, None, Vec::new()),
                        &self.practice_contacts(facility, patient),
                    );
                }
            } else {
                let _ = self.alerting.open.remove(key.as_bytes());
            }
        }
        let _ = self.alerting.open.flush();
    }

    /// The notification contacts of the practices of a patient's practitioners of record (the
    /// practice registry's), for the e-mail notices about the patient's alerts.
    pub(crate) fn practice_contacts(&self, facility: &str, patient: &str) -> Vec<String> {
        let Some(doc) = self.store.load_doc(&DocumentId::patient(facility, patient)) else {
            return Vec::new();
        };
        let Ok(p) = rounds_core::view::read_patient(&doc, patient) else {
            return Vec::new();
        };
        let who = p.all_practitioners();
        let mut out: Vec<String> = self
            .store
            .practices
            .all()
            .into_iter()
            .filter(|pr| pr.practitioners.iter().any(|x| who.contains(&x.as_str())))
            .flat_map(|pr| pr.contacts)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A document's bytes as the hub holds them now (loaded from the store if it let it go).
    pub(crate) fn current_bytes(
        &self,
        shard: &crate::sync::shards::Shard,
        id: DocumentId,
    ) -> Option<Vec<u8>> {
        self.document_bytes(shard, id).ok().flatten()
    }

    /// What the alert pass needs of a changed document: a patient-month's facility, patient,
    /// month, whether it holds readings since `since`, and its alerts (None: not a
    /// patient-month document, or not the one its id says).
    #[allow(clippy::type_complexity)]
    fn survey(
        doc: &automerge::Automerge,
        id: DocumentId,
        since: chrono::DateTime<Utc>,
    ) -> Option<(String, String, Month, bool, Vec<AlertView>)> {
        let get = |k: &str| rounds_core::document::root_str(doc, k);
        if get("type")?.as_str() != "patient-month" {
            return None;
        }
        let (facility, patient) = (get("facility")?, get("patient")?);
        let month: Month = get("month")?.parse().ok()?;
        if DocumentId::patient_month(&facility, &patient, month) != id {
            return None;
        }
        let e = rounds_core::replica::read_month(doc);
        let recent = e
            .readings
            .iter()
            .any(|r| r.measured_at.with_timezone(&Utc) >= since);
        let views = rounds_core::alerts::fold(&e.alerts, &e.alert_events);
        Some((facility, patient, month, recent, views))
    }

    /// Raise missing alerts on changed patient-month documents and refresh the index. The work
    /// runs on blocking threads: a sync storm must not starve the connections.
    pub(crate) async fn evaluate_months(self: &Arc<Self>, docs: Vec<DocumentId>) {
        let _guard = self.alerting.stage_lock.lock().await;
        let now = self.alerting.now();
        let since = now - chrono::Duration::days(7);
        for id in docs {
            let shared = self.clone();
            // Cheap survey first: is it a patient-month, and has it readings recent enough to
            // alert on? Most synced documents only need their alerts indexed.
            let survey = tokio::task::spawn_blocking(move || {
                // Most flushed documents are still loaded: read in place, without saving and
                // loading a copy.
                let shard = shared.shard_of_doc(&id);
                if let Some(found) = shard
                    .lock()
                    .hub
                    .with_loaded(id, |doc| Self::survey(doc, id, since))
                {
                    return found;
                }
                let bytes = shared.current_bytes(&shard, id)?;
                let doc = automerge::Automerge::load(&bytes).ok()?;
                Self::survey(&doc, id, since)
            })
            .await
            .ok()
            .flatten();
            let Some((facility, patient, month, recent, mut views)) = survey else {
                continue;
            };
            if recent {
                let shared = self.clone();
                let (f, p) = (facility.clone(), patient.clone());
                let staged = tokio::task::spawn_blocking(move || {
                    let mut staged = shared.stage(&f, &Self::month_set(&f, &p, month))?;
                    let new = staged
                        .replica
                        .raise_missing_alerts(&p, month, since, now)
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((staged, new.len()))
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                match staged {
                    Ok((staged, n)) => {
                        if n > 0 {
                            tracing::info!(doc = %id, alerts = n, "alerts raised for readings that arrived without them");
                            if let Err(e) = self.commit(&staged).await {
                                tracing::error!(doc = %id, error = %e, "could not store raised alerts");
                            }
                        }
                        views = staged.replica.alerts(&patient, month);
                    }
                    Err(e) => tracing::warn!(doc = %id, error = %e, "alert evaluation failed"),
                }
            }
            self.index_alerts(&facility, &patient, month, &views);
        }
    }

    /// Escalate every indexed alert past its deadline; returns how many were escalated.
    pub async fn escalate_due(&self) -> usize {
        let _guard = self.alerting.stage_lock.lock().await;
        let now = self.alerting.now();
        let due: Vec<(String, OpenAlert)> = self
            .alerting
            .open
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                Some((
                    String::from_utf8_lossy(&k).to_string(),
                    serde_json::from_slice::<OpenAlert>(&v).ok()?,
                ))
            })
            .filter(|(_, o)| o.deadline <= now)
            .collect();
        let config = self.alerting.config();
        let mut n = 0;
        for (key, o) in due {
            let Ok(alert) = key.parse::<uuid::Uuid>() else {
                let _ = self.alerting.open.remove(key.as_bytes());
                continue;
            };
            let mut staged = match self.stage(
                &o.facility,
                &Self::month_set(&o.facility, &o.patient, o.month),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(alert = %key, error = %e, "escalation: staging failed");
                    continue;
                }
            };
            let minutes = (o.deadline - now).num_minutes().abs();
            let note = Some(format!(
                "not acknowledged by the deadline ({minutes} min ago); escalated to the billing practitioner"
            ));
            match staged.replica.escalate_alert(alert, "server", note, now) {
                Ok(Some(event)) => {
                    if let Err(e) = self.commit(&staged).await {
                        tracing::error!(alert = %key, error = %e, "could not store an escalation");
                        continue;
                    }
                    n += 1;
                    self.metrics.alerts_escalated.inc();
                    let view = staged
                        .replica
                        .alerts(&o.patient, o.month)
                        .into_iter()
                        .find(|v| v.alert.id == alert);
                    if let Some(v) = view {
                        tracing::warn!(alert = %key, facility = %o.facility, "alert escalated");
                        let mut a = AuditRecord::new("alert-escalated");
                        a.facility = Some(o.facility.clone());
                        a.patient = Some(o.patient.clone());
                        a.detail = Some(format!(
                            "alert {key} to {}",
                            event.to.clone().unwrap_or_default()
                        ));
                        self.security.record(a);
                        if config.wants("escalated") {
                            self.alerting.outbox.enqueue(
                                &config,
                                &format!("{alert}/escalated"),
                                &notice(
                                    "alert.escalated",
                                    &o.facility,
                                    &v,
                                    Some(&event),
                                    staged.replica.alert_protocol().on_call,
                                ),
                                &self.practice_contacts(&o.facility, &o.patient),
                            );
                        }
                    }
                    let _ = self.alerting.open.remove(key.as_bytes());
                }
                Ok(None) => {
                    let _ = self.alerting.open.remove(key.as_bytes());
                }
                Err(ReplicaError::UnknownEntry(_)) => {
                    let _ = self.alerting.open.remove(key.as_bytes());
                }
                Err(e) => tracing::error!(alert = %key, error = %e, "escalation failed"),
            }
        }
        let _ = self.alerting.open.flush();
        n
    }

    /// The alert tasks: evaluation of changed documents (batched), escalation and delivery
    /// every `tick`.
    pub fn start_alerting(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<DocumentId>,
        tick: Duration,
    ) {
        let shared = self.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut due = std::collections::BTreeSet::from([first]);
                while let Ok(Some(d)) =
                    tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
                {
                    due.insert(d);
                }
                shared.evaluate_months(due.into_iter().collect()).await;
            }
        });
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .build()
                .unwrap_or_else(|_| reqwest::Client::new());
            let mut interval = tokio::time::interval(tick);
            let mut shutdown = self.shutdown.clone();
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = shutdown.changed() => return,
                }
                self.metrics.heartbeat("alerts", tick);
                let Some(_round) = self.run_job("alerts").await else {
                    continue;
                };
                self.escalate_due().await;
                self.check_adherence().await;
                let config = self.alerting.config();
                self.alerting.outbox.deliver_due(&config, &http).await;
            }
        });
    }

    /// RPM adherence (at most hourly, when `rpm_adherence` is among the notify events): every
    /// RPM patient whose open device period, at the rate of readings so far, will not reach 16
    /// data days (`behind`), can no longer reach 16 (`short`) or not even 2 (`lost`) gets one
    /// notice per period and status, naming ids and days only. Returns the notices queued.
    pub async fn check_adherence(&self) -> usize {
        let config = self.alerting.config();
        if !config.wants("rpm_adherence") {
            return 0;
        }
        let now = self.alerting.now();
        {
            let mut last = self
                .alerting
                .adherence_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| now - t < chrono::Duration::hours(1) && now >= t) {
                return 0;
            }
            *last = Some(now);
        }
        let mut queued = 0;
        for facility in self.facility_ids() {
            let store = self.store.clone();
            let rules = self.rules.clone();
            let f = facility.clone();
            let items = tokio::task::spawn_blocking(move || {
                let fd = crate::sync::store::read_model::facility_data(&store, &f).ok()?;
                let tz = rounds_core::validate::parse_zone(&fd.data.facility.timezone)?;
                let as_of = now.with_timezone(&tz).date_naive();
                rounds_core::billing::worklist::worklist(&fd.data, as_of, &rules).ok()
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
            for item in items {
                let Some(period) = item.period.as_ref() else {
                    continue;
                };
                use rounds_core::billing::worklist::Adherence;
                let status = match period.adherence {
                    Adherence::OnTrack => continue,
                    Adherence::Behind => "behind",
                    Adherence::Short => "short",
                    Adherence::Lost => "lost",
                };
                let key = format!(
                    "adherence/{facility}/{}/{}/{status}",
                    item.patient, period.start
                );
                let notice = crate::services::notify::AlertNotice {
                    event: crate::services::notify::ADHERENCE_EVENT.into(),
                    alert_id: key.clone(),
                    facility: facility.clone(),
                    patient: item.patient.clone(),
                    severity: "warning".into(),
                    rule: format!("rpm_adherence:{status}"),
                    message: format!(
                        "RPM period {} to {}: {}; {} more day(s) needed for 99454, {} for 99445",
                        period.start,
                        period.end,
                        period.adherence.describe(period),
                        period.days_to_99454,
                        period.days_to_99445
                    ),
                    raised_at: now.to_rfc3339(),
                    deadline: period.end.to_string(),
                    escalated_to: None,
                    escalated_at: None,
                    on_call: Vec::new(),
                };
                if self.alerting.outbox.enqueue(
                    &config,
                    &key,
                    &notice,
                    &self.practice_contacts(&facility, &item.patient),
                ) {
                    queued += 1;
                    let mut a = AuditRecord::new("rpm-adherence");
                    a.facility = Some(facility.clone());
                    a.patient = Some(item.patient.clone());
                    a.detail = Some(format!("period {} {status}", period.start));
                    self.security.record(a);
                }
            }
        }
        queued
    }

    /// Queue changed documents for alert evaluation.
    pub fn alerts_changed(&self, docs: &[DocumentId]) {
        for d in docs {
            let _ = self.alerting.eval_tx.send(*d);
        }
    }

    /// The patient of a vendor device in a facility (index rebuilt from the patient documents on
    /// a miss).
    pub(crate) fn patient_of_device(&self, facility: &str, device: &str) -> Option<String> {
        let key = (facility.to_string(), device.to_string());
        if let Some(p) = self.alerting.devices.lock().ok()?.get(&key) {
            return Some(p.clone());
        }
        let roster = self.store.load_doc(&DocumentId::facility(facility))?;
        let mut fresh = HashMap::new();
        for p in rounds_core::view::roster_patient_ids(&roster) {
            let Some(doc) = self.store.load_doc(&DocumentId::patient(facility, &p)) else {
                continue;
            };
            if let Ok(patient) = rounds_core::view::read_patient(&doc, &p)
                && let Some(rpm) = patient.rpm
            {
                for d in rpm.devices {
                    fresh.insert((facility.to_string(), d), p.clone());
                }
            }
        }
        let mut devices = self.alerting.devices.lock().ok()?;
        devices.retain(|(f, _), _| f != facility);
        devices.extend(fresh);
        devices.get(&key).cloned()
    }
}
