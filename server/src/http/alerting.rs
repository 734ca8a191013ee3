//! The alerting HTTP handlers: vendor readings in (`/api/v1/readings`), integrations, the
//! alert protocol and the notification outbox (admin).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::http::api_error::{Admin, ApiError};
use crate::server::Shared;

/// `POST /api/v1/readings`: one reading from a device vendor's cloud, with the integration's API
/// key (`Authorization: Bearer …` or `X-Api-Key`); stored once per vendor reading id.
pub async fn ingest(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let key = crate::http::token_of(&headers, None)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let client = shared.limits.network.client_ip(peer, &headers).to_string();
    let done = shared.ingest_reading(key, &client, &body).await?;
    let status = if done.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(done.to_json())))
}

/// `POST /api/v1/vendors/<vendor>`: a device vendor's own webhook post (`tenovi`: one
/// measurement or an array, key in `Authorization` or `X-Api-Key`; `smartmeter`: one reading
/// or an array, the key as Tenovi's; `bodytrace`: HTTP Basic auth with the key as password;
/// `generic`: through the integration's mapping). Every measurement is checked before any is written; a re-sent post
/// is stored once.
pub async fn vendor_ingest(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    axum::extract::Path(vendor): axum::extract::Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    use crate::services::alerting::vendors::Vendor;
    let Some(vendor) = Vendor::from_path(&vendor) else {
        return Err(ApiError::not_found(format!(
            "no adapter for vendor {vendor:?} (tenovi, bodytrace, smartmeter, generic; or POST /api/v1/readings)"
        )));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key = vendor.key(header("authorization"), header("x-api-key"));
    let client = shared.limits.network.client_ip(peer, &headers).to_string();
    let done = shared
        .ingest_vendor(vendor, key.as_deref(), &client, &body)
        .await?;
    let status = if done.readings.iter().any(|r| r.new) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(done.to_json())))
}

#[derive(Deserialize)]
pub struct IntegrationBody {
    facility: String,
    name: String,
    /// For the `generic` adapter: where this vendor puts each field.
    #[serde(default)]
    mapping: Option<crate::services::alerting::vendors::GenericMapping>,
}

/// `POST /api/v1/integrations` (admin): create a vendor integration; answers its API key once.
pub async fn add_integration(
    _: Admin,
    State(shared): State<Arc<Shared>>,
    Json(b): Json<IntegrationBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = shared.add_integration(&b.facility, &b.name, b.mapping)?;
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
    let rules = shared.set_protocol(&b.facility, &b.toml).await?;
    Ok(Json(
        serde_json::json!({ "facility": b.facility, "rules": rules }),
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
