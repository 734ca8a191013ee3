//! Alerts on the server: RPM device ingestion (`POST /api/v1/readings`), raising alerts for
//! readings that arrive by sync without one, escalating alerts not acknowledged by their deadline,
//! and queueing notifications.
//!
//! The server writes documents like a device does — through a staging [`Replica`] holding copies
//! of the documents involved, with the server's own fixed actor — and merges the changes into the
//! hub, which persists them and fans them out. Staged writes are serialized (one actor, one
//! sequence of changes).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rounds_core::alerts::{AlertView, Severity};
use rounds_core::replica::NewReading;
use rounds_core::{DocumentId, Month, ReadingKind, ReadingSource, Replica, ReplicaError};
use serde::{Deserialize, Serialize};

use tokio::sync::mpsc;

use crate::api_error::{Admin, ApiError};
use crate::notify::{AlertNotice, NotifyConfig, Outbox};
use crate::security::AuditRecord;
use crate::server::Shared;

mod http;

pub use http::{
    VendorReading, add_integration, ingest, list_integrations, notifications, set_protocol,
};

/// Where "now" comes from: the system clock, or a file holding an RFC 3339 time (tests of
/// deadlines and escalation).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    File(PathBuf),
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::File(p) => std::fs::read_to_string(p)
                .ok()
                .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(Utc::now),
        }
    }
}

/// An alert waiting for a response, in the escalation index.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenAlert {
    facility: String,
    patient: String,
    month: Month,
    deadline: DateTime<Utc>,
    severity: Severity,
}

/// A vendor integration allowed to post readings for one facility.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Integration {
    pub name: String,
    pub facility: String,
    pub created_at: DateTime<Utc>,
    key_sha256: String,
}

/// The server's alert state.
pub struct Alerting {
    open: sled::Tree,
    integrations: sled::Tree,
    integration_keys: sled::Tree,
    pub outbox: Outbox,
    pub clock: RwLock<Clock>,
    pub config: RwLock<NotifyConfig>,
    /// Serializes staged writes (one server actor).
    stage_lock: tokio::sync::Mutex<()>,
    /// (facility, vendor device id) → patient, rebuilt on a miss.
    devices: Mutex<HashMap<(String, String), String>>,
    pub(crate) eval_tx: mpsc::UnboundedSender<DocumentId>,
    /// The server's actor id (derived from the store's storage id).
    actor: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(String),
}

impl Alerting {
    pub fn open(
        db: &sled::Db,
        storage_id: &str,
    ) -> sled::Result<(Alerting, mpsc::UnboundedReceiver<DocumentId>)> {
        let (eval_tx, rx) = mpsc::unbounded_channel();
        Ok((
            Alerting {
                open: db.open_tree("alerts_open")?,
                integrations: db.open_tree("integrations")?,
                integration_keys: db.open_tree("integration_keys")?,
                outbox: Outbox::open(db)?,
                clock: RwLock::new(Clock::System),
                config: RwLock::new(NotifyConfig::default()),
                stage_lock: tokio::sync::Mutex::new(()),
                devices: Mutex::new(HashMap::new()),
                eval_tx,
                actor: rounds_core::policy::server_actor(storage_id),
            },
            rx,
        ))
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock
            .read()
            .map(|c| c.now())
            .unwrap_or_else(|_| Utc::now())
    }

    fn config(&self) -> NotifyConfig {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Create an integration and its API key (shown once; stored as SHA-256).
    pub fn add_integration(&self, facility: &str, name: &str) -> Result<String, AlertingError> {
        for (field, id) in [("name", name), ("facility", facility)] {
            rounds_core::ids::check_id(field, id)
                .map_err(|e| AlertingError::Invalid(e.to_string()))?;
        }
        let key = crate::security::random_secret("rik_", 32)
            .map_err(|e| AlertingError::Store(e.to_string()))?;
        let rec = Integration {
            name: name.to_string(),
            facility: facility.to_string(),
            created_at: Utc::now(),
            key_sha256: crate::security::sha256_hex(&key),
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| AlertingError::Store(e.to_string()))?;
        let swapped = self
            .integrations
            .compare_and_swap(name, None as Option<&[u8]>, Some(bytes))
            .map_err(|e| AlertingError::Store(e.to_string()))?;
        if swapped.is_err() {
            return Err(AlertingError::Invalid(format!(
                "integration {name:?} exists"
            )));
        }
        self.integration_keys
            .insert(rec.key_sha256.as_bytes(), name.as_bytes())
            .map_err(|e| AlertingError::Store(e.to_string()))?;
        let _ = self.integrations.flush();
        let _ = self.integration_keys.flush();
        Ok(key)
    }

    pub fn integrations(&self) -> Vec<Integration> {
        self.integrations
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .collect()
    }

    fn integration_of(&self, key: &str) -> Option<Integration> {
        let h = crate::security::sha256_hex(key);
        let name = self.integration_keys.get(h.as_bytes()).ok()??;
        let rec: Integration = serde_json::from_slice(&self.integrations.get(&name).ok()??).ok()?;
        crate::auth::constant_time_eq(rec.key_sha256.as_bytes(), h.as_bytes()).then_some(rec)
    }

    /// Alerts in the escalation index (waiting for a response), as (alert id, deadline).
    pub fn open_alerts(&self) -> Vec<(String, DateTime<Utc>)> {
        self.open
            .iter()
            .flatten()
            .filter_map(|(k, v)| {
                let o: OpenAlert = serde_json::from_slice(&v).ok()?;
                Some((String::from_utf8_lossy(&k).to_string(), o.deadline))
            })
            .collect()
    }
}

/// Copies of some documents in a staging replica, and their heads before any write.
struct Staged {
    replica: Replica,
    facility: String,
    before: BTreeMap<DocumentId, Vec<automerge::ChangeHash>>,
}

impl Shared {
    /// Documents `docs` of `facility` (those that exist) in a staging replica.
    fn stage(&self, facility: &str, docs: &[DocumentId]) -> Result<Staged, String> {
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
    async fn commit(&self, s: &Staged) -> Result<usize, String> {
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
    fn month_set(facility: &str, patient: &str, month: Month) -> Vec<DocumentId> {
        vec![
            DocumentId::facility(facility),
            DocumentId::patient(facility, patient),
            DocumentId::patient_month(facility, patient, month.previous()),
            DocumentId::patient_month(facility, patient, month),
        ]
    }

    /// Update the escalation index (and queue "raised" notices) from a patient-month's alerts.
    fn index_alerts(&self, facility: &str, patient: &str, month: Month, views: &[AlertView]) {
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
                if first && v.alert.severity == Severity::Urgent && config.wants("urgent_raised") {
                    self.alerting.outbox.enqueue(
                        &config,
                        &format!("{}/raised", v.alert.id),
                        &notice("alert.urgent_raised", facility, v, None, Vec::new()),
                    );
                }
            } else {
                let _ = self.alerting.open.remove(key.as_bytes());
            }
        }
        let _ = self.alerting.open.flush();
    }

    /// A document's bytes as the hub holds them now (loaded from the store if it let it go).
    fn current_bytes(&self, shard: &crate::shards::Shard, id: DocumentId) -> Option<Vec<u8>> {
        self.document_bytes(shard, id).ok().flatten()
    }

    /// Raise missing alerts on changed patient-month documents and refresh the index. The work
    /// runs on blocking threads: a sync storm must not starve the connections.
    async fn evaluate_months(self: &Arc<Self>, docs: Vec<DocumentId>) {
        let _guard = self.alerting.stage_lock.lock().await;
        let now = self.alerting.now();
        let since = now - chrono::Duration::days(7);
        for id in docs {
            let shared = self.clone();
            // Cheap survey first: is it a patient-month, and has it readings recent enough to
            // alert on? Most synced documents only need their alerts indexed.
            let survey = tokio::task::spawn_blocking(move || {
                // Most flushed documents are still loaded: their type costs nothing to read.
                let shard = shared.shard_of_doc(&id);
                let loaded_kind = shard.lock().hub.root_str(id, "type");
                if loaded_kind.is_some_and(|k| k != "patient-month") {
                    return None;
                }
                let bytes = shared.current_bytes(&shard, id)?;
                let doc = automerge::Automerge::load(&bytes).ok()?;
                let get = |k: &str| rounds_core::document::root_str(&doc, k);
                if get("type")?.as_str() != "patient-month" {
                    return None;
                }
                let (facility, patient) = (get("facility")?, get("patient")?);
                let month: Month = get("month")?.parse().ok()?;
                if DocumentId::patient_month(&facility, &patient, month) != id {
                    return None;
                }
                let e = rounds_core::replica::read_month(&doc);
                let recent = e
                    .readings
                    .iter()
                    .any(|r| r.measured_at.with_timezone(&Utc) >= since);
                let views = rounds_core::alerts::fold(&e.alerts, &e.alert_events);
                Some((facility, patient, month, recent, views))
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
                self.escalate_due().await;
                let config = self.alerting.config();
                self.alerting.outbox.deliver_due(&config, &http).await;
            }
        });
    }

    /// Queue changed documents for alert evaluation.
    pub fn alerts_changed(&self, docs: &[DocumentId]) {
        for d in docs {
            let _ = self.alerting.eval_tx.send(*d);
        }
    }

    /// The patient of a vendor device in a facility (index rebuilt from the patient documents on
    /// a miss).
    fn patient_of_device(&self, facility: &str, device: &str) -> Option<String> {
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

fn notice(
    event: &str,
    facility: &str,
    v: &AlertView,
    escalation: Option<&rounds_core::alerts::AlertEvent>,
    on_call: Vec<String>,
) -> AlertNotice {
    AlertNotice {
        event: event.to_string(),
        alert_id: v.alert.id.to_string(),
        facility: facility.to_string(),
        patient: v.alert.patient.clone(),
        severity: v.alert.severity.as_str().to_string(),
        rule: v.alert.rule.clone(),
        message: v.alert.message.clone(),
        raised_at: v.alert.raised_at.to_rfc3339(),
        deadline: v.alert.deadline.to_rfc3339(),
        escalated_to: escalation.and_then(|e| e.to.clone()),
        escalated_at: escalation.map(|e| e.at.to_rfc3339()),
        on_call,
    }
}

type DocLoader<'a> = dyn FnMut(DocumentId) -> Result<Option<Vec<u8>>, String> + 'a;

/// A staging replica with the facility's documents and the protocol written.
fn stage_protocol(
    actor: &[u8],
    facility: &str,
    protocol: &rounds_core::alerts::AlertProtocol,
    load: &mut DocLoader<'_>,
) -> Result<Staged, (StatusCode, String)> {
    let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let mut replica = Replica::staging(actor, facility);
    let fid = DocumentId::facility(facility);
    let Some(bytes) = load(fid).map_err(internal)? else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("unknown facility {facility:?}"),
        ));
    };
    replica
        .adopt(fid, &bytes)
        .map_err(|e| internal(e.to_string()))?;
    let mut before = BTreeMap::new();
    before.insert(fid, replica.heads(fid).unwrap_or_default());
    // The roster's patients are needed to check per-patient overrides.
    for p in replica.patient_ids() {
        let id = DocumentId::patient(facility, &p);
        if let Some(bytes) = load(id).map_err(internal)? {
            replica
                .adopt(id, &bytes)
                .map_err(|e| internal(e.to_string()))?;
            before.insert(id, replica.heads(id).unwrap_or_default());
        }
    }
    match replica.set_alert_protocol(protocol, Utc::now()) {
        Ok(()) => Ok(Staged {
            facility: facility.to_string(),
            replica,
            before,
        }),
        Err(ReplicaError::Invalid(p)) => Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("alert protocol is invalid:\n{p}"),
        )),
        Err(e) => Err(internal(e.to_string())),
    }
}

/// `rounds protocol set` on a stopped server's store; returns the number of facility rules.
pub fn set_protocol_on_store(
    store: &crate::store::SledStore,
    facility: &str,
    toml: &str,
) -> Result<usize, String> {
    let protocol =
        rounds_core::alerts::AlertProtocol::from_toml(toml).map_err(|e| e.to_string())?;
    let (alerting, _) =
        Alerting::open(store.db(), store.storage_id()).map_err(|e| e.to_string())?;
    let mut load = |id: DocumentId| Ok(store.load_doc(&id).map(|d| d.save()));
    let staged =
        stage_protocol(&alerting.actor, facility, &protocol, &mut load).map_err(|(_, e)| e)?;
    let mut seq = store.written_seq();
    for id in staged.replica.document_ids() {
        let heads = staged.before.get(&id).cloned().unwrap_or_default();
        if staged.replica.heads(id).unwrap_or_default() == heads {
            continue;
        }
        if let Some(bytes) = staged.replica.changes_since(id, &heads) {
            seq += 1;
            store
                .persist(&id, seq, &bytes, false)
                .map_err(|e| e.to_string())?;
        }
    }
    store.flush().map_err(|e| e.to_string())?;
    Ok(protocol.rules.len())
}
