//! Pushing the monthly package into the practice's EHR: a durable outbox in the store, FHIR REST
//! (transaction bundles) and HL7 v2 over MLLP, retries with backoff that survive restarts, and a
//! ledger of what the EHR acknowledged.
//!
//! Every item has a business key (bundle: `<key>-<version>-FHIR`, HL7: `<key>-<version>-<type>`);
//! enqueueing the same package twice adds nothing. Once acknowledged, an item is never sent again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rounds_core::Month;
use rounds_core::ehr::delivery::{BundleMode, Delivery, PRESETS, RESOURCE_TYPES, bundles_for};
use rounds_core::ehr::{ExportConfig, fhir, hl7};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

use crate::services::ledger::{Ledger, LedgerError, closed_month};
use crate::sync::store::Store;

/// `push.toml`: where each practice's EHR listens. The top-level `[fhir]`, `[hl7]` and
/// `[export]` are the targets of a facility's own practice (a data file without practices);
/// `[practices.<id>]` holds each practice's own. A practice's packages go only to its own
/// targets: a practice without a section gets nothing, and the push says so.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub fhir: Option<FhirTarget>,
    pub hl7: Option<Hl7Target>,
    #[serde(default)]
    pub export: ExportConfig,
    /// Attempts before an item is marked failed (default 8).
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub practices: std::collections::BTreeMap<String, PracticeTargets>,
}

/// One practice's EHR targets (`[practices.<id>]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PracticeTargets {
    pub fhir: Option<FhirTarget>,
    pub hl7: Option<Hl7Target>,
    /// Its export settings (the top-level `[export]` when absent); the practice's own EHR
    /// identifiers (`Practice::ehr`) apply on top.
    pub export: Option<ExportConfig>,
}

/// Where one practice's packages go.
pub struct Route<'a> {
    pub fhir: Option<&'a FhirTarget>,
    pub hl7: Option<&'a Hl7Target>,
    pub export: &'a ExportConfig,
}

/// What queueing a month did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Messages added (already-queued keys are not counted).
    pub added: usize,
    /// Practices with lines this month but no target in `push.toml`: nothing queued for them.
    pub without_target: Vec<String>,
    /// Practices whose FHIR profile takes no ChargeItem and that have no HL7 target: their
    /// charges go by the charge CSV (`rounds export --format csv`).
    pub charges_by_csv: Vec<String>,
}

impl PushConfig {
    /// The targets of `practice` (None: an outbox item from before practices, or a facility's
    /// own practice, whose id is the facility's).
    /// None when the practice has no section, or one without any target.
    pub fn route(&self, practice: Option<&str>, facility: &str) -> Option<Route<'_>> {
        let practice = practice.unwrap_or(facility);
        let route = match self.practices.get(practice) {
            Some(t) => Route {
                fhir: t.fhir.as_ref(),
                hl7: t.hl7.as_ref(),
                export: t.export.as_ref().unwrap_or(&self.export),
            },
            None if practice == facility => Route {
                fhir: self.fhir.as_ref(),
                hl7: self.hl7.as_ref(),
                export: &self.export,
            },
            None => return None,
        };
        (route.fhir.is_some() || route.hl7.is_some()).then_some(route)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirTarget {
    /// The FHIR base URL; the bundle is POSTed to it.
    pub base_url: String,
    pub token: Option<crate::services::secret::Secret>,
    /// Trust this certificate fingerprint (SHA-256 hex) instead of the system roots.
    pub fingerprint: Option<String>,
    pub timeout_seconds: Option<u64>,
    /// A named delivery profile (`ehr::delivery::PRESETS`; `transaction` by default).
    pub profile: Option<String>,
    /// Overrides of the profile: `transaction` or `batch`.
    pub mode: Option<BundleMode>,
    /// Overrides of the profile: entries per bundle.
    pub max_entries: Option<usize>,
    /// Overrides of the profile: the resource types the EHR accepts.
    pub resources: Option<Vec<String>>,
}

impl FhirTarget {
    /// The delivery profile: the preset with this target's overrides, checked.
    pub fn delivery(&self) -> Result<Delivery, String> {
        let name = self.profile.as_deref().unwrap_or("transaction");
        let mut d = Delivery::preset(name).ok_or_else(|| {
            let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            format!("profile: {name:?} is not a profile ({})", known.join(", "))
        })?;
        if let Some(m) = self.mode {
            d.mode = m;
        }
        if let Some(n) = self.max_entries {
            if n == 0 {
                return Err("max_entries: use at least 1".into());
            }
            d.max_entries = Some(n);
        }
        if let Some(r) = &self.resources {
            if let Some(bad) = r.iter().find(|x| !RESOURCE_TYPES.contains(&x.as_str())) {
                return Err(format!(
                    "resources: {bad:?} is not a resource type of the package ({})",
                    RESOURCE_TYPES.join(", ")
                ));
            }
            d.resources = r.clone();
        }
        Ok(d)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Target {
    /// host:port of the MLLP listener.
    pub address: String,
    pub timeout_seconds: Option<u64>,
    /// MLLP over TLS (the listener's certificate is verified).
    #[serde(default)]
    pub tls: bool,
    /// The name the listener's certificate must carry (the address's host by default).
    pub server_name: Option<String>,
    /// PEM file of the CA certificates that sign the listener's certificate (the system's
    /// roots by default).
    pub ca_file: Option<std::path::PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (hex) instead.
    pub fingerprint: Option<String>,
    /// A client certificate and its key (PEM) for listeners that ask for one.
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

impl Hl7Target {
    /// The TLS client settings (None without `tls`), checked: files readable, a key with a
    /// certificate.
    pub fn tls_config(&self) -> Result<Option<rustls::ClientConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        if !self.tls {
            if self.ca_file.is_some() || self.client_cert.is_some() || self.fingerprint.is_some() {
                return Err("ca_file, fingerprint and client_cert need tls = true".into());
            }
            return Ok(None);
        }
        let client = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(c)
                    .map_err(|e| format!("client_cert {}: {e}", c.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("client_cert {}: {e}", c.display()))?;
                let key = PrivateKeyDer::from_pem_file(k)
                    .map_err(|e| format!("client_key {}: {e}", k.display()))?;
                Some((certs, key))
            }
            _ => return Err("client_cert and client_key go together".into()),
        };
        if let Some(hex) = &self.fingerprint {
            if client.is_some() {
                return Err("fingerprint: pinning takes no client certificate; use ca_file".into());
            }
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            let pin = <[u8; 32]>::try_from(bytes)
                .map_err(|_| "fingerprint: expected 64 hex digits".to_string())?;
            return rounds_core::sync::net::client_config(
                &rounds_core::sync::net::Trust::Fingerprint(pin),
            )
            .map(Some)
            .map_err(|e| e.to_string());
        }
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?
                {
                    let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        Ok(Some(match client {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client_cert: {e}"))?,
            None => builder.with_no_client_auth(),
        }))
    }

    /// The name the listener's certificate is checked against.
    fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            self.address
                .rsplit_once(':')
                .map_or(self.address.as_str(), |(h, _)| h)
                .trim_matches(|c| c == '[' || c == ']')
                .to_string()
        })
    }
}

impl PushConfig {
    pub fn load(path: &Path) -> Result<PushConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PushConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse and check `push.toml` (every FHIR target's delivery profile).
    pub fn parse(text: &str) -> Result<PushConfig, String> {
        let c: PushConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(f) = &c.fhir {
            f.delivery().map_err(|e| format!("[fhir] {e}"))?;
        }
        if let Some(h) = &c.hl7 {
            h.tls_config().map_err(|e| format!("[hl7] {e}"))?;
        }
        for (id, p) in &c.practices {
            if let Some(f) = &p.fhir {
                f.delivery()
                    .map_err(|e| format!("[practices.{id}.fhir] {e}"))?;
            }
            if let Some(h) = &p.hl7 {
                h.tls_config()
                    .map_err(|e| format!("[practices.{id}.hl7] {e}"))?;
            }
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Fhir,
    Hl7,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Acknowledged,
    Failed,
}

/// One message in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub key: String,
    pub facility: String,
    /// The practice whose EHR receives it (absent: the facility's own practice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practice: Option<String>,
    pub month: Month,
    pub patient: String,
    pub version: u32,
    pub target: Target,
    pub payload: String,
    pub status: Status,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// What the EHR answered on success (HTTP status and body excerpt, or the ACK).
    pub acknowledgement: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// FHIR: what the EHR answered for each resource of the bundle, at the last attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceStatus>,
    /// When it was queued (absent on items queued before this was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
}

/// One resource of a FHIR bundle as the EHR answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// `<Type> <business identifier>`.
    pub resource: String,
    /// The entry's HTTP status (`201`, `200`, `400`…).
    pub status: String,
    /// The EHR's error text for a refused entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether an earlier part of the same split package failed (this one then waits for a person).
fn behind_a_failure(key: &str, failed: &std::collections::BTreeSet<&str>) -> bool {
    let mut k = key.to_string();
    while let Some(prev) = previous_part(&k) {
        if failed.contains(prev.as_str()) {
            return true;
        }
        k = prev;
    }
    false
}

/// A FHIR item's place in its package: (the key of the part before it, if any).
fn previous_part(key: &str) -> Option<String> {
    let (head, tail) = key.rsplit_once("-FHIR-")?;
    let (i, n) = tail.split_once("of")?;
    let i: u32 = i.parse().ok()?;
    (i > 1).then(|| format!("{head}-FHIR-{:02}of{n}", i - 1))
}

/// The outbox tree.
pub struct Outbox {
    items: crate::sync::store::kv::Tree,
}

impl Outbox {
    pub fn open(db: &crate::sync::store::kv::Db) -> Result<Outbox, String> {
        Ok(Outbox {
            items: db.open_tree("push_outbox").map_err(|e| e.to_string())?,
        })
    }

    /// Queue the package of a closed month (latest versions): each practice's patients and
    /// lines for that practice's targets only (`only`: one practice). Already-queued keys are
    /// skipped.
    pub fn enqueue(
        &self,
        store: &Store,
        ledger: &Ledger,
        config: &PushConfig,
        facility: &str,
        month: Month,
        only: Option<&str>,
    ) -> Result<Enqueued, LedgerError> {
        let closed = closed_month(store, ledger, facility, month)?;
        let now = Utc::now();
        let mut out = Enqueued::default();
        for practice in closed.practices() {
            if only.is_some_and(|o| o != practice) {
                continue;
            }
            let versions = closed.versions_for(&practice);
            if versions.iter().all(|v| v.encounter.lines.is_empty()) {
                continue;
            }
            let Some(route) = config.route(Some(&practice), facility) else {
                tracing::warn!(facility, practice, %month, "no push target for this practice: nothing queued");
                out.without_target.push(practice);
                continue;
            };
            let export = match closed.practice(&practice) {
                Some(p) => route.export.for_practice(&p),
                None => route.export.clone(),
            };
            let delivery = route.fhir.map(|f| f.delivery().unwrap_or_default());
            if delivery.as_ref().is_some_and(|d| !d.accepts("ChargeItem")) && route.hl7.is_none() {
                out.charges_by_csv.push(practice.clone());
            }
            let explicit = practice != closed.default_practice();
            out.added += self.enqueue_practice(
                &closed,
                &versions,
                &route,
                &export,
                (facility, month, now),
                explicit.then_some(practice.as_str()),
            )?;
        }
        store
            .flush()
            .map_err(|e| LedgerError::Store(e.to_string()))?;
        Ok(out)
    }

    /// One practice's packages of a closed month.
    fn enqueue_practice(
        &self,
        closed: &crate::services::ledger::ClosedMonth,
        versions: &[crate::services::ledger::EncounterVersion],
        route: &Route<'_>,
        export: &ExportConfig,
        (facility, month, now): (&str, Month, DateTime<Utc>),
        practice: Option<&str>,
    ) -> Result<usize, LedgerError> {
        let mut added = 0;
        for pm in closed.patient_months(versions, month, now, export) {
            if pm.encounter.lines.is_empty() {
                continue;
            }
            let mut payloads: Vec<(Target, String, String)> = Vec::new();
            if let Some(f) = route.fhir {
                // One item per bundle of the target's profile, sent in order (a part waits for
                // the one before it).
                let parts = bundles_for(&fhir::bundle(&pm), &f.delivery().unwrap_or_default());
                let n = parts.len();
                for (i, part) in parts.into_iter().enumerate() {
                    let kind = if n == 1 {
                        "FHIR".to_string()
                    } else {
                        format!("FHIR-{:02}of{n:02}", i + 1)
                    };
                    payloads.push((
                        Target::Fhir,
                        kind,
                        serde_json::to_string(&part).unwrap_or_default(),
                    ));
                }
            }
            if route.hl7.is_some() {
                if let Some(m) = hl7::dft_p03(&pm, 0) {
                    payloads.push((Target::Hl7, "DFT".into(), m));
                }
                payloads.push((Target::Hl7, "MDM".into(), hl7::mdm_t02(&pm, 0)));
                if let Some(m) = hl7::oru_r01(&pm, 0) {
                    payloads.push((Target::Hl7, "ORU".into(), m));
                }
            }
            for (target, kind, payload) in payloads {
                // A practice's own items carry its id: two practices' packages of one
                // patient-month never share a key.
                let key = match practice {
                    Some(p) => format!("{p}/{}-v{}-{kind}", pm.key(), pm.version),
                    None => format!("{}-v{}-{kind}", pm.key(), pm.version),
                };
                let item = OutboxItem {
                    key: key.clone(),
                    facility: facility.to_string(),
                    practice: practice.map(str::to_string),
                    month,
                    patient: pm.patient.id.clone(),
                    version: pm.version,
                    target,
                    payload,
                    status: Status::Pending,
                    attempts: 0,
                    next_attempt_at: now,
                    last_error: None,
                    acknowledgement: None,
                    acknowledged_at: None,
                    resources: Vec::new(),
                    queued_at: Some(now),
                };
                let bytes =
                    serde_json::to_vec(&item).map_err(|e| LedgerError::Store(e.to_string()))?;
                if self
                    .items
                    .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(bytes))
                    .map_err(|e| LedgerError::Store(e.to_string()))?
                    .is_ok()
                {
                    added += 1;
                }
            }
        }
        Ok(added)
    }

    /// The outbox as people read it: items of a facility, month and practice (each optional),
    /// with each payload replaced by its size.
    pub fn status(
        &self,
        facility: Option<&str>,
        month: Option<&str>,
        practice: Option<&str>,
    ) -> Vec<OutboxItem> {
        self.all()
            .into_iter()
            .filter(|i| facility.is_none_or(|f| i.facility == f))
            .filter(|i| month.is_none_or(|m| i.month.to_string() == m))
            .filter(|i| practice.is_none_or(|p| i.practice.as_deref().unwrap_or(&i.facility) == p))
            .map(|mut i| {
                i.payload = format!("{} bytes", i.payload.len());
                i
            })
            .collect()
    }

    pub fn all(&self) -> Vec<OutboxItem> {
        self.items
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// Put a failed item back in the queue (a person decided to try again).
    pub fn retry(&self, key: &str) -> Result<(), String> {
        let Some(mut item) = self.all().into_iter().find(|i| i.key == key) else {
            return Err(format!("no push item {key:?}"));
        };
        if item.status == Status::Failed {
            item.status = Status::Pending;
            item.attempts = 0;
            item.next_attempt_at = Utc::now();
            self.save(&item)?;
        }
        Ok(())
    }

    fn save(&self, item: &OutboxItem) -> Result<(), String> {
        let bytes = serde_json::to_vec(item).map_err(|e| e.to_string())?;
        self.items
            .insert(item.key.as_bytes(), bytes)
            .map_err(|e| e.to_string())?;
        self.items.flush().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Send every due pending item once. Returns (acknowledged, failed, still pending).
    pub async fn process(&self, config: &PushConfig) -> (usize, usize, usize) {
        self.process_observed(config, &|_, _| {}).await
    }

    /// [`Outbox::process`], telling `observe` each send's outcome (`Status::Acknowledged`,
    /// `Status::Failed`, or `Status::Pending` for one to be retried).
    pub async fn process_observed(
        &self,
        config: &PushConfig,
        observe: &(dyn Fn(Status, Duration) + Sync),
    ) -> (usize, usize, usize) {
        let max = config.max_attempts.unwrap_or(8);
        let now = Utc::now();
        for mut item in self
            .all()
            .into_iter()
            .filter(|i| i.status == Status::Pending && i.next_attempt_at <= now)
        {
            // A bundle of a split package waits for the one before it (what it refers to).
            if let Some(prev) = previous_part(&item.key) {
                let done = self
                    .items
                    .get(prev.as_bytes())
                    .ok()
                    .flatten()
                    .and_then(|v| serde_json::from_slice::<OutboxItem>(&v).ok())
                    .is_some_and(|p| p.status == Status::Acknowledged);
                if !done {
                    continue;
                }
            }
            item.attempts += 1;
            let span = tracing::info_span!(
                "push",
                key = %item.key,
                facility = %item.facility,
                target = ?item.target,
                attempt = item.attempts
            );
            let started = std::time::Instant::now();
            let route = config.route(item.practice.as_deref(), &item.facility);
            let section = match &item.practice {
                Some(p) => format!("[practices.{p}]"),
                None => "the top level".to_string(),
            };
            let outcome = match (item.target, route) {
                (_, None) => Outcome::Failed(format!(
                    "no push target for its practice: {section} is missing"
                )),
                (Target::Fhir, Some(r)) => match r.fhir {
                    Some(t) => {
                        let (outcome, resources) =
                            send_fhir(t, &item.payload).instrument(span.clone()).await;
                        if !resources.is_empty() {
                            item.resources = resources;
                        }
                        outcome
                    }
                    None => Outcome::Failed(format!("no [fhir] target configured in {section}")),
                },
                (Target::Hl7, Some(r)) => match r.hl7 {
                    Some(t) => send_hl7(t, &item).instrument(span.clone()).await,
                    None => Outcome::Failed(format!("no [hl7] target configured in {section}")),
                },
            };
            let _entered = span.enter();
            observe(
                match &outcome {
                    Outcome::Acknowledged(_) => Status::Acknowledged,
                    Outcome::Failed(_) => Status::Failed,
                    Outcome::Retry(_) => Status::Pending,
                },
                started.elapsed(),
            );
            match outcome {
                Outcome::Acknowledged(ack) => {
                    item.status = Status::Acknowledged;
                    item.acknowledgement = Some(ack);
                    item.acknowledged_at = Some(Utc::now());
                    item.last_error = None;
                    tracing::info!(key = %item.key, "pushed and acknowledged");
                }
                Outcome::Failed(e) => {
                    item.status = Status::Failed;
                    item.last_error = Some(e);
                    tracing::warn!(key = %item.key, error = ?item.last_error, "push failed; needs attention");
                }
                Outcome::Retry(e) => {
                    item.last_error = Some(e);
                    if item.attempts >= max {
                        item.status = Status::Failed;
                    } else {
                        let backoff = 2u64.saturating_pow(item.attempts.min(10)).min(600);
                        item.next_attempt_at =
                            Utc::now() + chrono::Duration::milliseconds((backoff * 250) as i64);
                    }
                    tracing::info!(key = %item.key, attempts = item.attempts, error = ?item.last_error, "push will be retried");
                }
            }
            if let Err(e) = self.save(&item) {
                tracing::error!(key = %item.key, error = %e, "could not record a push outcome");
            }
        }
        let all = self.all();
        let count = |s: Status| all.iter().filter(|i| i.status == s).count();
        (
            count(Status::Acknowledged),
            count(Status::Failed),
            count(Status::Pending),
        )
    }

    /// Process until nothing can be sent any more (waiting for backoffs), at most `limit`. A
    /// part of a split package behind a failed part cannot: it waits for a person.
    pub async fn drain(&self, config: &PushConfig, limit: Duration) -> (usize, usize, usize) {
        self.drain_observed(config, limit, &mut |_| {}).await
    }

    /// [`Outbox::drain`], telling `round` the counts after each round.
    pub async fn drain_observed(
        &self,
        config: &PushConfig,
        limit: Duration,
        round: &mut dyn FnMut((usize, usize, usize)),
    ) -> (usize, usize, usize) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let counts = self.process(config).await;
            round(counts);
            if counts.2 == 0 || tokio::time::Instant::now() >= deadline {
                return counts;
            }
            let all = self.all();
            let failed: std::collections::BTreeSet<&str> = all
                .iter()
                .filter(|i| i.status == Status::Failed)
                .map(|i| i.key.as_str())
                .collect();
            let sendable = all
                .iter()
                .filter(|i| i.status == Status::Pending)
                .any(|i| !behind_a_failure(&i.key, &failed));
            if !sendable {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

enum Outcome {
    Acknowledged(String),
    Failed(String),
    Retry(String),
}

/// The resources of a bundle, by index: `<Type> <business identifier>`.
fn bundle_resources(bundle: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(bundle).unwrap_or_default();
    v["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e["resource"]["resourceType"].as_str().unwrap_or("?"),
                        e["resource"]["identifier"][0]["value"]
                            .as_str()
                            .unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The text of an OperationOutcome's issues.
fn outcome_text(o: &serde_json::Value) -> String {
    o["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .map(|i| {
                    let text = i["details"]["text"]
                        .as_str()
                        .or_else(|| i["diagnostics"].as_str())
                        .unwrap_or("");
                    match i["expression"][0].as_str() {
                        Some(at) => format!("{text} ({at})"),
                        None => text.to_string(),
                    }
                })
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// Read a transaction or batch response entry by entry: acknowledged when every entry is 2xx,
/// retried when one is 429 or 5xx (each entry is a conditional create: sending again creates
/// nothing twice), failed when one is refused.
fn read_bundle_response(
    sent: &str,
    status: u16,
    body: &str,
) -> Option<(Outcome, Vec<ResourceStatus>)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    if v["resourceType"] != "Bundle" {
        return None;
    }
    let entries = v["entry"].as_array()?;
    let names = bundle_resources(sent);
    let mut out = Vec::new();
    let (mut refused, mut retry) = (Vec::new(), false);
    for (i, e) in entries.iter().enumerate() {
        let st = e["response"]["status"].as_str().unwrap_or("").trim();
        let code: u16 = st
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let name = names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("entry {i}"));
        let error = (!(200..300).contains(&code)).then(|| {
            let t = outcome_text(&e["response"]["outcome"]);
            if t.is_empty() { st.to_string() } else { t }
        });
        if code == 429 || code >= 500 || code == 0 {
            retry = true;
        } else if !(200..300).contains(&code) {
            refused.push(format!("{name}: {}", error.clone().unwrap_or_default()));
        }
        out.push(ResourceStatus {
            resource: name,
            status: if st.is_empty() {
                "?".into()
            } else {
                st.to_string()
            },
            error,
        });
    }
    let outcome = if !refused.is_empty() {
        Outcome::Failed(format!(
            "HTTP {status}: {} of {} resources refused: {}",
            refused.len(),
            entries.len(),
            refused.join(" | ")
        ))
    } else if retry || entries.len() != names.len() {
        Outcome::Retry(format!(
            "HTTP {status}: {} of {} entries answered, some to be retried",
            entries.len(),
            names.len()
        ))
    } else {
        Outcome::Acknowledged(format!(
            "HTTP {status}: {} resources accepted",
            entries.len()
        ))
    };
    Some((outcome, out))
}

async fn send_fhir(t: &FhirTarget, bundle: &str) -> (Outcome, Vec<ResourceStatus>) {
    let none = |o: Outcome| (o, Vec::new());
    let trust = match t.fingerprint.as_deref() {
        Some(hex) => {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            match <[u8; 32]>::try_from(bytes) {
                Ok(b) => rounds_core::sync::net::Trust::Fingerprint(b),
                Err(_) => {
                    return none(Outcome::Failed(
                        "fingerprint: expected 64 hex digits".into(),
                    ));
                }
            }
        }
        None => rounds_core::sync::net::Trust::SystemRoots,
    };
    let mut builder =
        reqwest::Client::builder().timeout(Duration::from_secs(t.timeout_seconds.unwrap_or(30)));
    if t.base_url.starts_with("https:") {
        match rounds_core::sync::net::client_config(&trust) {
            Ok(tls) => builder = builder.tls_backend_preconfigured(tls),
            Err(e) => return none(Outcome::Failed(e.to_string())),
        }
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return none(Outcome::Failed(e.to_string())),
    };
    let mut req = client
        .post(&t.base_url)
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string());
    if let Some(token) = &t.token {
        req = req.bearer_auth(token.expose());
    }
    match req.send().await {
        Err(e) => none(Outcome::Retry(format!("FHIR server: {e}"))),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            let excerpt: String = body.chars().take(300).collect();
            match status {
                200 | 201 => read_bundle_response(bundle, status, &body).unwrap_or_else(|| {
                    none(Outcome::Acknowledged(format!("HTTP {status}: {excerpt}")))
                }),
                412 => none(Outcome::Failed(format!(
                    "HTTP 412: a business identifier matches several resources on the EHR: {excerpt}"
                ))),
                408 | 429 | 500..=599 => none(Outcome::Retry(format!("HTTP {status}: {excerpt}"))),
                _ => {
                    let text = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .map(|v| outcome_text(&v))
                        .filter(|t| !t.is_empty())
                        .unwrap_or(excerpt);
                    none(Outcome::Failed(format!("HTTP {status}: {text}")))
                }
            }
        }
    }
}

/// Replace MSH-10 (a new control id per attempt; business keys stay the same).
fn with_control_id(message: &str, control: &str) -> String {
    let mut segs: Vec<String> = message.split('\r').map(str::to_string).collect();
    if let Some(msh) = segs.first_mut() {
        let mut fields: Vec<&str> = msh.split('|').collect();
        if fields.len() > 9 {
            fields[9] = control;
            *msh = fields.join("|");
        }
    }
    segs.join("\r")
}

/// One MLLP exchange on an open stream: the framed message out, the framed answer back.
async fn mllp_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    message: &str,
) -> std::io::Result<Vec<u8>> {
    let mut frame = vec![0x0b];
    frame.extend_from_slice(message.as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    stream.write_all(&frame).await?;
    stream.flush().await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(2).any(|w| w == [0x1c, 0x0d]) || buf.len() > 1 << 20 {
            break;
        }
    }
    Ok(buf)
}

/// A control id (MSH-10) unique to this transmission: 19 random hex digits after `R` (20
/// characters, HL7 v2.5.1's limit). Never derived from the item, so a resend after a restart or
/// from a restored store never repeats one; the business keys in FT1, TXA, ORC and PV1-19 stay.
fn control_id() -> String {
    format!("R{}", &uuid::Uuid::new_v4().simple().to_string()[..19])
}

async fn send_hl7(t: &Hl7Target, item: &OutboxItem) -> Outcome {
    let timeout = Duration::from_secs(t.timeout_seconds.unwrap_or(10));
    let control = control_id();
    let message = with_control_id(&item.payload, &control);
    let tls = match t.tls_config() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("[hl7] {e}")),
    };
    let name = t.server_name();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&t.address).await?;
        match tls {
            None => mllp_exchange(tcp, &message).await,
            Some(config) => {
                let server_name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| std::io::Error::other(format!("server_name {name:?}: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(server_name, tcp)
                    .await?;
                mllp_exchange(stream, &message).await
            }
        }
    };
    let reply = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Outcome::Retry(format!("no ACK within {timeout:?}")),
        Ok(Err(e)) => return Outcome::Retry(format!("MLLP {}: {e}", t.address)),
        Ok(Ok(b)) => String::from_utf8_lossy(&b)
            .trim_matches(|c| c == '\u{b}' || c == '\u{1c}' || c == '\r')
            .to_string(),
    };
    let segment = |name: &str| {
        reply
            .split('\r')
            .find(|s| s.starts_with(name))
            .map(str::to_string)
    };
    let Some(msa) = segment("MSA") else {
        return Outcome::Retry(format!("reply without MSA: {reply:?}"));
    };
    let fields: Vec<&str> = msa.split('|').collect();
    let code = fields.get(1).copied().unwrap_or_default();
    if fields.get(2).is_some_and(|c| *c != control) {
        return Outcome::Retry(format!(
            "ACK for another message ({})",
            fields.get(2).unwrap_or(&"")
        ));
    }
    let detail = segment("ERR")
        .or_else(|| fields.get(3).map(|s| s.to_string()))
        .unwrap_or_default();
    match code {
        "AA" | "CA" => Outcome::Acknowledged(format!("{msa} (control {control})")),
        "AE" | "CE" => Outcome::Failed(format!("application error: {detail}")),
        "AR" | "CR" => Outcome::Retry(format!("rejected: {detail}")),
        other => Outcome::Retry(format!("unknown acknowledgement code {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn config(text: &str) -> Result<PushConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn a_practice_is_routed_to_its_own_targets_only() {
        let c = config(
            "[fhir]\nbase_url = \"https://own.example/fhir\"\n\
             [practices.north.fhir]\nbase_url = \"https://north.example/fhir\"\n\
             [practices.south.hl7]\naddress = \"10.0.0.9:2575\"\n",
        )
        .unwrap();
        let north = c.route(Some("north"), "oak").unwrap();
        assert_eq!(north.fhir.unwrap().base_url, "https://north.example/fhir");
        assert!(north.hl7.is_none());
        let south = c.route(Some("south"), "oak").unwrap();
        assert!(south.fhir.is_none(), "never the top-level target");
        // A practice without a section gets nothing; the facility's own practice the top level.
        assert!(c.route(Some("west"), "oak").is_none());
        let own = c.route(None, "oak").unwrap();
        assert_eq!(own.fhir.unwrap().base_url, "https://own.example/fhir");
        assert!(c.route(Some("oak"), "oak").is_some());
        // Without top-level targets a facility's own practice has none either.
        let bare = config("[practices.north.hl7]\naddress = \"10.0.0.9:2575\"\n").unwrap();
        assert!(bare.route(None, "oak").is_none());
    }

    #[test]
    fn profiles_and_tls_settings_are_checked_when_push_toml_is_loaded() {
        let bad = [
            (
                "[fhir]\nbase_url = \"x\"\nprofile = \"fast\"\n",
                "[fhir] profile: \"fast\"",
            ),
            ("[fhir]\nbase_url = \"x\"\nmax_entries = 0\n", "max_entries"),
            (
                "[practices.north.fhir]\nbase_url = \"x\"\nresources = [\"Patient\"]\n",
                "[practices.north.fhir] resources: \"Patient\"",
            ),
            (
                "[hl7]\naddress = \"h:1\"\nca_file = \"/x.pem\"\n",
                "need tls = true",
            ),
            (
                "[hl7]\naddress = \"h:1\"\ntls = true\nclient_cert = \"/c.pem\"\n",
                "client_cert and client_key go together",
            ),
            (
                "[hl7]\naddress = \"h:1\"\ntls = true\nca_file = \"/nonexistent/ca.pem\"\n",
                "ca_file /nonexistent/ca.pem",
            ),
            (
                "[hl7]\naddress = \"h:1\"\ntls = true\nfingerprint = \"abc\"\n",
                "64 hex digits",
            ),
        ];
        for (text, want) in bad {
            let e = PushConfig::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let ok =
            PushConfig::parse("[fhir]\nbase_url = \"x\"\nprofile = \"batch\"\nmax_entries = 10\n")
                .unwrap();
        let d = ok.fhir.unwrap().delivery().unwrap();
        assert_eq!((d.mode, d.max_entries), (BundleMode::Batch, Some(10)));
    }

    #[test]
    fn an_ehr_answer_is_read_entry_by_entry_whatever_it_holds() {
        let sent = json!({ "entry": [
            { "resource": { "resourceType": "Encounter", "identifier": [{ "value": "e1" }] } },
            { "resource": { "resourceType": "ChargeItem", "identifier": [{ "value": "c1" }] } },
        ] })
        .to_string();
        let answer = |entries: Value| {
            json!({ "resourceType": "Bundle", "type": "batch-response", "entry": entries })
                .to_string()
        };
        let ok = answer(
            json!([{ "response": { "status": "201 Created" } }, { "response": { "status": "200" } }]),
        );
        assert!(matches!(
            read_bundle_response(&sent, 200, &ok),
            Some((Outcome::Acknowledged(_), _))
        ));
        let refused = answer(json!([
            { "response": { "status": "201" } },
            { "response": { "status": "400", "outcome": { "issue": [{ "details": { "text": "bad code" }, "expression": ["ChargeItem.code"] }] } } }
        ]));
        let Some((Outcome::Failed(e), resources)) = read_bundle_response(&sent, 200, &refused)
        else {
            panic!("a refused entry fails the item");
        };
        assert!(
            e.contains("ChargeItem c1: bad code (ChargeItem.code)"),
            "{e}"
        );
        assert_eq!(
            resources[1].error.as_deref(),
            Some("bad code (ChargeItem.code)")
        );
        let busy = answer(
            json!([{ "response": { "status": "201" } }, { "response": { "status": "503" } }]),
        );
        assert!(matches!(
            read_bundle_response(&sent, 200, &busy),
            Some((Outcome::Retry(_), _))
        ));
        // Fewer entries than sent, garbage statuses, or not a bundle at all.
        let short = answer(json!([{ "response": { "status": "201" } }]));
        assert!(matches!(
            read_bundle_response(&sent, 200, &short),
            Some((Outcome::Retry(_), _))
        ));
        let garbage = answer(json!([{ "response": {} }, { "nonsense": true }]));
        assert!(matches!(
            read_bundle_response(&sent, 200, &garbage),
            Some((Outcome::Retry(_), _))
        ));
        assert!(read_bundle_response(&sent, 200, "not json").is_none());
        assert!(read_bundle_response(&sent, 200, "{\"resourceType\":\"Patient\"}").is_none());
    }

    #[test]
    fn a_typo_in_a_practice_section_is_an_error_naming_it() {
        let e = config("[practices.north.fhir]\nbase_ulr = \"https://x\"\n").unwrap_err();
        assert!(e.to_string().contains("base_ulr"), "{e}");
        let e = config("[practices.north]\nfihr = 1\n").unwrap_err();
        assert!(e.to_string().contains("fihr"), "{e}");
    }
}
