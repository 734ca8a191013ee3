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

/// `POST /api/v1/readings` body: one reading from a device vendor's cloud.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorReading {
    /// The vendor's id of this reading: the idempotency key.
    pub reading_id: String,
    pub device_id: String,
    pub kind: ReadingKind,
    pub values: VendorValues,
    pub unit: String,
    pub measured_at: DateTime<chrono::FixedOffset>,
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

fn reject(
    shared: &Shared,
    status: StatusCode,
    integration: Option<&Integration>,
    detail: String,
) -> Response {
    let mut a = AuditRecord::new("ingest-rejected");
    a.device = integration.map(|i| format!("integration:{}", i.name));
    a.facility = integration.map(|i| i.facility.clone());
    a.detail = Some(detail.clone());
    shared.security.record(a);
    tracing::warn!(status = status.as_u16(), %detail, "reading rejected");
    (status, Json(serde_json::json!({ "error": detail }))).into_response()
}

/// Device ingestion: the vendor's reading written into the patient-month with `source: device`,
/// once per vendor reading id.
pub async fn ingest(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let key = crate::auth::token_of(&headers, None)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let Some(integration) = key.and_then(|k| shared.alerting.integration_of(k)) else {
        // Anyone can send this as often as they like: aggregated per client address.
        let detail = "a valid integration API key is required (Authorization: Bearer …)";
        let client = shared.limits.network.client_ip(peer, &headers).to_string();
        let mut a = AuditRecord::new("ingest-rejected");
        a.detail = Some(format!("{detail} (from {client})"));
        shared.audit_noisy(&client, "no valid API key", a);
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": detail })),
        )
            .into_response();
    };
    let de = &mut serde_json::Deserializer::from_str(&body);
    let r: VendorReading = match serde_path_to_error::deserialize(de) {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            return reject(
                &shared,
                StatusCode::BAD_REQUEST,
                Some(&integration),
                format!("reading: field {path}: {}", e.inner()),
            );
        }
    };
    let entry = format!("reading {:?}", r.reading_id);
    if r.reading_id.trim().is_empty() || r.reading_id.len() > 128 {
        return reject(
            &shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&integration),
            format!("{entry}: field reading_id: must be 1–128 characters"),
        );
    }
    let now = shared.alerting.now();
    if r.measured_at.with_timezone(&Utc) > now + chrono::Duration::minutes(10) {
        return reject(
            &shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&integration),
            format!(
                "{entry}: field measured_at: {} is in the future",
                r.measured_at
            ),
        );
    }
    let facility = integration.facility.clone();
    let Some(patient) = shared.patient_of_device(&facility, &r.device_id) else {
        return reject(
            &shared,
            StatusCode::NOT_FOUND,
            Some(&integration),
            format!(
                "{entry}: field device_id: unknown device {:?} (not enrolled for any patient of facility {facility})",
                r.device_id
            ),
        );
    };
    let id = rounds_core::ids::name_uuid(&format!(
        "rounds/vendor-reading/{}/{}",
        integration.name, r.reading_id
    ));
    let _guard = shared.alerting.stage_lock.lock().await;
    // The month of the reading in the facility's zone is found by the replica; stage the months
    // around the measured date (UTC month ± 1 covers every zone).
    let m = Month::of(r.measured_at.with_timezone(&Utc).date_naive());
    let mut docs = Shared::month_set(&facility, &patient, m);
    docs.push(DocumentId::patient_month(&facility, &patient, m.next()));
    let mut staged = match shared.stage(&facility, &docs) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "ingestion: staging failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not read the documents\n",
            )
                .into_response();
        }
    };
    let result = staged.replica.record_reading_with_id(
        id,
        NewReading {
            patient: patient.clone(),
            kind: r.kind,
            systolic: r.values.systolic,
            diastolic: r.values.diastolic,
            value: r.values.value,
            unit: r.unit.clone(),
            measured_at: r.measured_at.with_timezone(&Utc),
            device: Some(r.device_id.clone()),
            source: ReadingSource::Device,
        },
        now,
    );
    let (reading, alerts, new) = match result {
        Ok(x) => x,
        Err(ReplicaError::Invalid(p)) => {
            drop(_guard);
            return reject(
                &shared,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&integration),
                format!(
                    "{entry} (vendor): {}",
                    p.to_string().replace(&format!("reading {id}"), "")
                ),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "ingestion failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    };
    if new && let Err(e) = shared.commit(&staged).await {
        tracing::error!(error = %e, "ingestion: could not store the reading");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not store the reading\n",
        )
            .into_response();
    }
    let month = Month::of(reading.measured_at.date_naive());
    let views = staged.replica.alerts(&patient, month);
    shared.index_alerts(&facility, &patient, month, &views);
    let mut a = AuditRecord::new(if new { "ingest" } else { "ingest-duplicate" });
    a.device = Some(format!("integration:{}", integration.name));
    a.facility = Some(facility.clone());
    a.patient = Some(patient.clone());
    a.document = Some(DocumentId::patient_month(&facility, &patient, month).to_string());
    a.detail = Some(format!(
        "vendor reading {} device {}",
        r.reading_id, r.device_id
    ));
    shared.security.record(a);
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(serde_json::json!({
            "reading": reading.id,
            "patient": patient,
            "duplicate": !new,
            "alerts": alerts.iter().map(|a| serde_json::json!({
                "id": a.id, "rule": a.rule, "severity": a.severity, "deadline": a.deadline,
            })).collect::<Vec<_>>(),
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct IntegrationBody {
    facility: String,
    name: String,
}

/// `POST /api/v1/integrations` (admin): create a vendor integration; answers its API key once.
pub async fn add_integration(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Json(b): Json<IntegrationBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = shared
        .alerting
        .add_integration(&b.facility, &b.name)
        .map_err(|e| match e {
            AlertingError::Invalid(e) => ApiError::invalid(e),
            e => ApiError::internal(e.to_string()),
        })?;
    let mut a = AuditRecord::new("integration-added");
    a.facility = Some(b.facility.clone());
    a.detail = Some(b.name.clone());
    shared.security.record(a);
    Ok(Json(
        serde_json::json!({ "name": b.name, "facility": b.facility, "api_key": key }),
    ))
}

/// `GET /api/v1/integrations` (admin).
pub async fn list_integrations(_: Admin, State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.alerting.integrations()).into_response()
}

#[derive(Deserialize)]
pub struct ProtocolBody {
    facility: String,
    /// The protocol as TOML text.
    toml: String,
}

/// `POST /api/v1/protocol` (admin): set a facility's alert protocol (checked; written into the
/// facility document, so tablets evaluate it offline after their next sync).
pub async fn set_protocol(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Json(b): Json<ProtocolBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let protocol = rounds_core::alerts::AlertProtocol::from_toml(&b.toml)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let _guard = shared.alerting.stage_lock.lock().await;
    let shard = shared.shard_for(Some(&b.facility));
    let mut loader = |id: DocumentId| shared.document_bytes(&shard, id);
    let staged = stage_protocol(&shared.alerting.actor, &b.facility, &protocol, &mut loader)
        .map_err(|(status, e)| ApiError::new(status, e))?;
    shared.commit(&staged).await.map_err(ApiError::internal)?;
    let mut a = AuditRecord::new("protocol-set");
    a.facility = Some(b.facility.clone());
    a.detail = Some(format!("{} rules", protocol.rules.len()));
    shared.security.record(a);
    Ok(Json(
        serde_json::json!({ "facility": b.facility, "rules": protocol.rules.len() }),
    ))
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

/// `GET /api/v1/notifications` (admin): the outbox and the delivered ledger.
pub async fn notifications(_: Admin, State(shared): State<Arc<Shared>>) -> Response {
    Json(serde_json::json!({
        "pending": shared.alerting.outbox.pending(),
        "delivered": shared.alerting.outbox.delivered(),
        "open_alerts": shared.alerting.open_alerts().into_iter().map(|(id, deadline)| serde_json::json!({"alert": id, "deadline": deadline})).collect::<Vec<_>>(),
    }))
    .into_response()
}
