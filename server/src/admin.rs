//! The admin API (admin token) and device enrolment (one-time code).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth;
use crate::security::{AuditQuery, AuditRecord, SecurityError, audit_csv};
use crate::server::Shared;

/// `Some(401 response)` unless the request carries the admin credential.
pub(crate) fn admin_only(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    if shared.security.is_admin(auth::token_of(headers, None)) {
        None
    } else {
        Some((StatusCode::UNAUTHORIZED, "admin token required\n").into_response())
    }
}

fn error(e: SecurityError) -> Response {
    let status = match e {
        SecurityError::Exists(_) => StatusCode::CONFLICT,
        SecurityError::NoDevice(_) => StatusCode::NOT_FOUND,
        SecurityError::BadCode => StatusCode::FORBIDDEN,
        SecurityError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e}\n")).into_response()
}

#[derive(Deserialize)]
pub struct FacilityBody {
    facility: String,
}

pub async fn create_code(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(b): Json<FacilityBody>,
) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    match shared.security.create_code(&b.facility) {
        Ok((code, expires_at)) => {
            Json(json!({"code": code, "facility": b.facility, "expires_at": expires_at}))
                .into_response()
        }
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
pub struct AddBody {
    facility: String,
    name: String,
}

pub async fn add_device(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(b): Json<AddBody>,
) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    match shared.security.add_device(&b.facility, &b.name) {
        Ok(token) => {
            Json(json!({"name": b.name, "facility": b.facility, "token": token})).into_response()
        }
        Err(e) => error(e),
    }
}

pub async fn list_devices(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    Json(shared.security.list()).into_response()
}

pub async fn revoke(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    match shared.security.revoke(&name) {
        Ok(d) => Json(d).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
pub struct AuditParams {
    patient: Option<String>,
    device: Option<String>,
    since: Option<String>,
    format: Option<String>,
}

pub async fn audit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(p): Query<AuditParams>,
) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    let since = match p.since.as_deref().map(parse_since) {
        Some(Err(e)) => {
            return (StatusCode::UNPROCESSABLE_ENTITY, format!("since: {e}\n")).into_response();
        }
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let records = shared.security.query(&AuditQuery {
        patient: p.patient,
        device: p.device,
        since,
    });
    if p.format.as_deref() == Some("csv") {
        ([("content-type", "text/csv")], audit_csv(&records)).into_response()
    } else {
        Json(records).into_response()
    }
}

/// `2026-11-24T08:00:00Z` or `2026-11-24` (midnight UTC).
pub fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    s.parse::<chrono::NaiveDate>()
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| format!("{s:?} is not a date or an RFC 3339 time"))
}

#[derive(Deserialize)]
pub struct EnrollBody {
    code: String,
    name: String,
}

pub async fn enroll(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(b): Json<EnrollBody>,
) -> Response {
    let client = shared.limits.network.client_ip(peer, &headers);
    if !shared.admit_enrolment(&client.to_string()) {
        let mut rec = AuditRecord::new("enrol-refused");
        rec.detail = Some(format!("rate limited (from {client})"));
        shared.audit_noisy(&client.to_string(), "enrolment rate limited", rec);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many enrolment attempts; wait a minute\n",
        )
            .into_response();
    }
    match shared.security.enroll(&b.code, &b.name, chrono::Utc::now()) {
        Ok((token, facility)) => Json(json!({
            "name": b.name,
            "facility": facility,
            "facility_url": rounds_core::DocumentId::facility(&facility).url(),
            "token": token,
        }))
        .into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
pub struct MonthBody {
    facility: String,
    month: String,
}

fn month_of(s: &str) -> Result<rounds_core::Month, Box<Response>> {
    s.parse().map_err(|e: rounds_core::month::MonthParseError| {
        Box::new((StatusCode::UNPROCESSABLE_ENTITY, format!("month: {e}\n")).into_response())
    })
}

pub async fn close_month(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(b): Json<MonthBody>,
) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    let month = match month_of(&b.month) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let s = shared.clone();
    let facility = b.facility.clone();
    match tokio::task::spawn_blocking(move || s.close_month(&facility, month)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Deserialize)]
pub struct EncounterParams {
    facility: String,
    month: String,
    changed: Option<bool>,
}

pub async fn encounters(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(p): Query<EncounterParams>,
) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    let month = match month_of(&p.month) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    Json(crate::admin_client::select_versions(
        &shared.ledger,
        &p.facility,
        month,
        p.changed.unwrap_or(false),
    ))
    .into_response()
}

#[derive(Deserialize)]
pub struct ExportParams {
    facility: String,
    month: String,
    format: crate::export::Format,
}

pub async fn export(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(p): Query<ExportParams>,
) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    let month = match month_of(&p.month) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let s = shared.clone();
    let facility = p.facility.clone();
    let result = tokio::task::spawn_blocking(move || {
        crate::export::export(
            &s.store,
            &s.ledger,
            &facility,
            month,
            p.format,
            &rounds_core::ehr::ExportConfig::default(),
        )
    })
    .await;
    match result {
        Ok(Ok(files)) => {
            let mut rec = AuditRecord::new("export");
            rec.facility = Some(p.facility.clone());
            rec.detail = Some(format!("{month} {:?}, {} files", p.format, files.len()));
            shared.security.record(rec);
            Json(files).into_response()
        }
        Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Deserialize)]
pub struct QuarantineParams {
    facility: Option<String>,
    /// Newest entries to return (default 1000).
    limit: Option<usize>,
}

/// `GET /api/v1/quarantine[?facility=F]`: refused changes, newest first (without their bytes).
pub async fn quarantine_list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(p): Query<QuarantineParams>,
) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    Json(
        shared
            .quarantine
            .list(p.facility.as_deref(), p.limit.unwrap_or(1000)),
    )
    .into_response()
}

/// `GET /api/v1/quarantine/{id}`: one refused change with its bytes (base64).
pub async fn quarantine_show(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if let Some(r) = admin_only(&shared, &headers) {
        return r;
    }
    match shared.quarantine.get(&id) {
        Some(e) => Json(e).into_response(),
        None => (StatusCode::NOT_FOUND, "no quarantine entry with this id\n").into_response(),
    }
}
