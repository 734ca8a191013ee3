//! The admin API (admin token) and device enrolment (one-time code).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::http::api_error::{Admin, ApiError, blocking};
use crate::server::Shared;
use crate::services::security::{AuditQuery, AuditRecord, audit_csv};

type Api<T> = Result<Json<T>, ApiError>;

#[derive(Deserialize)]
pub struct FacilityBody {
    facility: String,
}

pub async fn create_code(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Json(b): Json<FacilityBody>,
) -> Api<serde_json::Value> {
    let (code, expires_at) = shared.security.create_code(&b.facility)?;
    Ok(Json(
        json!({"code": code, "facility": b.facility, "expires_at": expires_at}),
    ))
}

#[derive(Deserialize)]
pub struct AddBody {
    facility: String,
    name: String,
}

pub async fn add_device(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Json(b): Json<AddBody>,
) -> Api<serde_json::Value> {
    let token = shared.security.add_device(&b.facility, &b.name)?;
    Ok(Json(
        json!({"name": b.name, "facility": b.facility, "token": token}),
    ))
}

pub async fn list_devices(
    _: Admin,
    State(shared): State<Arc<Shared>>,
) -> Api<Vec<crate::services::security::DeviceRecord>> {
    Ok(Json(shared.security.list()))
}

pub async fn revoke(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Api<crate::services::security::DeviceRecord> {
    Ok(Json(shared.security.revoke(&name)?))
}

#[derive(Deserialize)]
pub struct AuditParams {
    patient: Option<String>,
    device: Option<String>,
    since: Option<String>,
    format: Option<String>,
}

pub async fn audit(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Query(p): Query<AuditParams>,
) -> Result<Response, ApiError> {
    let since = p
        .since
        .as_deref()
        .map(parse_since)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("since: {e}")))?;
    let records = shared.security.query(&AuditQuery {
        patient: p.patient,
        device: p.device,
        since,
    });
    Ok(if p.format.as_deref() == Some("csv") {
        ([("content-type", "text/csv")], audit_csv(&records)).into_response()
    } else {
        Json(records).into_response()
    })
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
) -> Api<serde_json::Value> {
    let client = shared.limits.network.client_ip(peer, &headers).to_string();
    let (token, facility) = shared.enrol_device(&client, &b.code, &b.name, chrono::Utc::now())?;
    Ok(Json(json!({
        "name": b.name,
        "facility": facility,
        "facility_url": rounds_core::DocumentId::facility(&facility).url(),
        "token": token,
    })))
}

#[derive(Deserialize)]
pub struct MonthBody {
    facility: String,
    month: String,
}

fn month_of(s: &str) -> Result<rounds_core::Month, ApiError> {
    s.parse()
        .map_err(|e: rounds_core::month::MonthParseError| ApiError::invalid(format!("month: {e}")))
}

pub async fn close_month(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Json(b): Json<MonthBody>,
) -> Api<Vec<crate::services::ledger::EncounterVersion>> {
    let month = month_of(&b.month)?;
    let facility = b.facility;
    Ok(Json(
        blocking(move || Ok(shared.close_month(&facility, month)?)).await?,
    ))
}

#[derive(Deserialize)]
pub struct EncounterParams {
    facility: String,
    month: String,
    changed: Option<bool>,
    /// Only the months concerning this practice, with only its lines.
    practice: Option<String>,
}

pub async fn encounters(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Query(p): Query<EncounterParams>,
) -> Api<Vec<crate::services::ledger::EncounterVersion>> {
    let month = month_of(&p.month)?;
    let versions = shared
        .ledger
        .select_versions(&p.facility, month, p.changed.unwrap_or(false));
    Ok(Json(match &p.practice {
        Some(practice) => crate::services::ledger::for_practice(&versions, practice, &p.facility),
        None => versions,
    }))
}

#[derive(Deserialize)]
pub struct ExportParams {
    facility: String,
    month: String,
    format: crate::services::export::Format,
    practice: Option<String>,
}

pub async fn export(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Query(p): Query<ExportParams>,
) -> Api<Vec<crate::services::export::ExportFile>> {
    let month = month_of(&p.month)?;
    let (s, facility, format) = (shared.clone(), p.facility.clone(), p.format);
    let practice = p.practice.clone();
    let files = blocking(move || {
        Ok(crate::services::export::export(
            &s.store,
            &s.ledger,
            &facility,
            month,
            format,
            &rounds_core::ehr::ExportConfig::default(),
            practice.as_deref(),
        )?)
    })
    .await?;
    let mut rec = AuditRecord::new("export");
    rec.facility = Some(p.facility);
    rec.detail = Some(format!("{month} {:?}, {} files", p.format, files.len()));
    shared.security.record(rec);
    Ok(Json(files))
}

#[derive(Deserialize)]
pub struct QuarantineParams {
    facility: Option<String>,
    /// Newest entries to return (default 1000).
    limit: Option<usize>,
}

/// `GET /api/v1/quarantine[?facility=F]`: refused changes, newest first (without their bytes).
pub async fn quarantine_list(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Query(p): Query<QuarantineParams>,
) -> Result<Response, ApiError> {
    Ok(Json(
        shared
            .quarantine
            .list(p.facility.as_deref(), p.limit.unwrap_or(1000)),
    )
    .into_response())
}

/// `GET /api/v1/quarantine/{id}`: one refused change with its bytes (base64).
pub async fn quarantine_show(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let e = shared
        .quarantine
        .get(&id)
        .ok_or_else(|| ApiError::not_found("no quarantine entry with this id"))?;
    Ok(Json(e).into_response())
}

/// `GET /api/v1/practices`: every practice the server bills for.
pub async fn practices(
    _: Admin,
    State(shared): State<Arc<Shared>>,
) -> Api<Vec<rounds_core::Practice>> {
    let s = shared.clone();
    Ok(Json(blocking(move || Ok(s.store.practices.all())).await?))
}

/// `PUT /api/v1/practices/{id}`: create or replace one practice (JSON body).
pub async fn put_practice(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: String,
) -> Api<rounds_core::Practice> {
    let mut practices = crate::sync::store::practices::parse_practices(&body)?;
    let practice = match (practices.pop(), practices.is_empty()) {
        (Some(p), true) if p.id == id => p,
        (Some(p), true) => {
            return Err(ApiError::invalid(format!(
                "practice {}: field `id`: does not match the path ({id:?})",
                p.id
            )));
        }
        _ => return Err(ApiError::invalid("expected one practice object")),
    };
    let (s, p) = (shared.clone(), practice.clone());
    blocking(move || Ok(s.store.practices.put(std::slice::from_ref(&p))?)).await?;
    let mut rec = AuditRecord::new("practice-set");
    rec.detail = Some(format!("practice {id}"));
    shared.security.record(rec);
    Ok(Json(practice))
}

#[derive(Deserialize)]
pub struct SummaryParams {
    month: String,
    practice: Option<String>,
    format: Option<String>,
}

/// `GET /api/v1/summary?month=M[&practice=P][&format=csv]`: per practice and facility (the
/// company's view), or one practice's; `format=csv` with a practice is its summary CSV.
pub async fn summary(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Query(p): Query<SummaryParams>,
) -> Result<Response, ApiError> {
    let month = month_of(&p.month)?;
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "format: {other:?} is not json or csv"
            )));
        }
    };
    let s = shared.clone();
    let practice = p.practice.clone();
    let out = blocking(move || {
        let store = &s.store;
        Ok(match (&practice, csv) {
            (Some(pr), true) => String::from_utf8_lossy(
                &crate::services::practice_summary::practice_csv(store, &s.ledger, pr, month)?,
            )
            .to_string(),
            (None, true) => {
                let rows = crate::services::practice_summary::rows(
                    store, &s.ledger, &s.rules, month, None,
                )?;
                String::from_utf8_lossy(&crate::services::practice_summary::company_csv(
                    &rows, month,
                )?)
                .to_string()
            }
            (_, false) => serde_json::to_string(&crate::services::practice_summary::rows(
                store,
                &s.ledger,
                &s.rules,
                month,
                practice.as_deref(),
            )?)
            .unwrap_or_default(),
        })
    })
    .await?;
    let mut rec = AuditRecord::new("summary");
    rec.detail = Some(format!(
        "{month} {}",
        p.practice.as_deref().unwrap_or("all practices")
    ));
    shared.security.record(rec);
    let mime = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    };
    Ok(([("content-type", mime)], out).into_response())
}

#[derive(Deserialize)]
pub struct PushParams {
    facility: Option<String>,
    month: Option<String>,
    practice: Option<String>,
}

/// `GET /api/v1/push[?facility=F][&month=M][&practice=P]`: the push outbox, payloads as sizes.
pub async fn push_status(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Query(p): Query<PushParams>,
) -> Api<Vec<crate::services::push::OutboxItem>> {
    let s = shared.clone();
    Ok(Json(
        blocking(move || {
            let outbox =
                crate::services::push::Outbox::open(s.store.db()).map_err(ApiError::internal)?;
            Ok(outbox.status(
                p.facility.as_deref(),
                p.month.as_deref(),
                p.practice.as_deref(),
            ))
        })
        .await?,
    ))
}

#[derive(Deserialize)]
pub struct BackupBody {
    /// A new (or empty) directory on the server's machine.
    to: std::path::PathBuf,
}

/// `POST /api/v1/backup` (admin): a consistent copy of the store into `to`, while serving.
pub async fn backup(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Json(b): Json<BackupBody>,
) -> Api<serde_json::Value> {
    if !b.to.is_absolute() {
        return Err(ApiError::invalid(
            "to: give an absolute path on the server's machine",
        ));
    }
    let (s, to) = (shared.clone(), b.to.clone());
    let m = blocking(move || {
        crate::services::backup::backup(&s.store, &to, &mut |step| {
            tracing::info!(step, "backup");
        })
        .map_err(|e| ApiError::invalid(e.to_string()))
    })
    .await?;
    let mut rec = AuditRecord::new("backup");
    rec.detail = Some(format!(
        "{} documents to {}",
        m.documents.len(),
        b.to.display()
    ));
    shared.security.record(rec);
    let text = m.summary(&b.to);
    Ok(Json(serde_json::from_str(&text).unwrap_or_default()))
}
