//! The alerting HTTP handlers: vendor readings in (`/api/v1/readings`), integrations, the
//! alert protocol and the notification outbox (admin).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rounds_core::replica::NewReading;
use rounds_core::{DocumentId, Month, ReadingKind, ReadingSource, ReplicaError};
use serde::Deserialize;

use crate::http::api_error::{Admin, ApiError};
use crate::server::Shared;
use crate::services::alerting::*;
use crate::services::security::AuditRecord;

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
    let key = crate::http::token_of(&headers, None)
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

/// `GET /api/v1/notifications` (admin): the outbox and the delivered ledger.
pub async fn notifications(_: Admin, State(shared): State<Arc<Shared>>) -> Response {
    Json(serde_json::json!({
        "pending": shared.alerting.outbox.pending(),
        "delivered": shared.alerting.outbox.delivered(),
        "open_alerts": shared.alerting.open_alerts().into_iter().map(|(id, deadline)| serde_json::json!({"alert": id, "deadline": deadline})).collect::<Vec<_>>(),
    }))
    .into_response()
}
