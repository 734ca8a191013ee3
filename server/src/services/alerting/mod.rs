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
use std::sync::{Mutex, RwLock};

use chrono::{DateTime, Utc};
use rounds_core::alerts::{AlertView, Severity};
use rounds_core::{DocumentId, Month, Replica, ReplicaError};
use serde::{Deserialize, Serialize};

use tokio::sync::mpsc;

use crate::services::notify::{AlertNotice, NotifyConfig, Outbox};

pub mod vendor;
pub mod vendors;

/// Where "now" comes from: the system clock, a file holding an RFC 3339 time (process tests of
/// deadlines and escalation), or tokio's clock from a fixed start (in-process tests with a
/// paused clock: `tokio::time::advance` moves deadlines, escalations and retries together).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    File(PathBuf),
    Tokio {
        /// The time at `since`.
        at: DateTime<Utc>,
        since: tokio::time::Instant,
    },
}

impl Clock {
    /// Tokio's clock, reading `at` now.
    pub fn tokio_from(at: DateTime<Utc>) -> Clock {
        Clock::Tokio {
            at,
            since: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { at, since } => {
                let elapsed = chrono::Duration::from_std(since.elapsed()).unwrap_or_default();
                *at + elapsed
            }
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
pub(crate) struct OpenAlert {
    pub(crate) facility: String,
    pub(crate) patient: String,
    pub(crate) month: Month,
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) severity: Severity,
}

/// A vendor integration allowed to post readings for one facility.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Integration {
    pub name: String,
    pub facility: String,
    pub created_at: DateTime<Utc>,
    pub(crate) key_sha256: String,
    /// How the `generic` adapter reads this vendor's posts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<vendors::GenericMapping>,
}

/// The server's alert state.
pub struct Alerting {
    pub(crate) open: crate::sync::store::kv::Tree,
    pub(crate) integrations: crate::sync::store::kv::Tree,
    pub(crate) integration_keys: crate::sync::store::kv::Tree,
    pub outbox: Outbox,
    pub clock: RwLock<Clock>,
    pub config: RwLock<NotifyConfig>,
    /// Serializes staged writes (one server actor).
    pub(crate) stage_lock: tokio::sync::Mutex<()>,
    /// (facility, vendor device id) → patient, rebuilt on a miss.
    pub(crate) devices: Mutex<HashMap<(String, String), String>>,
    pub(crate) eval_tx: mpsc::UnboundedSender<DocumentId>,
    /// The server's actor id (derived from the store's storage id).
    pub(crate) actor: Vec<u8>,
    /// When the RPM adherence check last ran (server clock): it runs at most hourly.
    pub(crate) adherence_checked: Mutex<Option<DateTime<Utc>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    /// The request names something wrong (a bad protocol, a duplicate integration name).
    #[error("{0}")]
    Invalid(String),
    /// The request names something that does not exist (an unknown facility).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Store(String),
}

impl Alerting {
    pub fn open(
        db: &crate::sync::store::kv::Db,
        actor: Vec<u8>,
    ) -> crate::sync::store::kv::KvResult<(Alerting, mpsc::UnboundedReceiver<DocumentId>)> {
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
                actor,
                adherence_checked: Mutex::new(None),
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

    pub(crate) fn config(&self) -> NotifyConfig {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Create an integration and its API key (shown once; stored as SHA-256).
    pub fn add_integration(
        &self,
        facility: &str,
        name: &str,
        mapping: Option<vendors::GenericMapping>,
    ) -> Result<String, AlertingError> {
        if let Some(m) = &mapping {
            m.check().map_err(AlertingError::Invalid)?;
        }
        for (field, id) in [("name", name), ("facility", facility)] {
            rounds_core::ids::check_id(field, id)
                .map_err(|e| AlertingError::Invalid(e.to_string()))?;
        }
        let key = crate::services::security::random_secret("rik_", 32)
            .map_err(|e| AlertingError::Store(e.to_string()))?;
        let rec = Integration {
            name: name.to_string(),
            facility: facility.to_string(),
            created_at: Utc::now(),
            key_sha256: crate::services::security::sha256_hex(&key),
            mapping,
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

    pub(crate) fn integration_of(&self, key: &str) -> Option<Integration> {
        let h = crate::services::security::sha256_hex(key);
        let name = self.integration_keys.get(h.as_bytes()).ok()??;
        let rec: Integration = serde_json::from_slice(&self.integrations.get(&name).ok()??).ok()?;
        crate::services::auth::constant_time_eq(rec.key_sha256.as_bytes(), h.as_bytes())
            .then_some(rec)
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
pub(crate) struct Staged {
    pub(crate) replica: Replica,
    pub(crate) facility: String,
    pub(crate) before: BTreeMap<DocumentId, Vec<automerge::ChangeHash>>,
}

pub(crate) fn notice(
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

pub(crate) type DocLoader<'a> = dyn FnMut(DocumentId) -> Result<Option<Vec<u8>>, String> + 'a;

/// A staging replica with the facility's documents and the protocol written.
pub(crate) fn stage_protocol(
    actor: &[u8],
    facility: &str,
    protocol: &rounds_core::alerts::AlertProtocol,
    load: &mut DocLoader<'_>,
    now: DateTime<Utc>,
) -> Result<Staged, AlertingError> {
    let internal = AlertingError::Store;
    let mut replica = Replica::staging(actor, facility);
    let fid = DocumentId::facility(facility);
    let Some(bytes) = load(fid).map_err(internal)? else {
        return Err(AlertingError::NotFound(format!(
            "unknown facility {facility:?}"
        )));
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
    match replica.set_alert_protocol(protocol, now) {
        Ok(()) => Ok(Staged {
            facility: facility.to_string(),
            replica,
            before,
        }),
        Err(ReplicaError::Invalid(p)) => Err(AlertingError::Invalid(format!(
            "alert protocol is invalid:\n{p}"
        ))),
        Err(e) => Err(internal(e.to_string())),
    }
}

/// `rounds protocol set` on a stopped server's store; returns the number of facility rules.
pub fn set_protocol_on_store(
    store: &crate::sync::store::Store,
    facility: &str,
    toml: &str,
) -> Result<usize, String> {
    let protocol =
        rounds_core::alerts::AlertProtocol::from_toml(toml).map_err(|e| e.to_string())?;
    let (alerting, _) =
        Alerting::open(store.db(), store.server_actor()).map_err(|e| e.to_string())?;
    let mut load = |id: DocumentId| Ok(store.load_doc(&id).map(|d| d.save()));
    let staged = stage_protocol(
        &alerting.actor,
        facility,
        &protocol,
        &mut load,
        alerting.now(),
    )
    .map_err(|e| e.to_string())?;
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
