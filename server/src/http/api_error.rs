//! One error type for the admin API, rendered as RFC 9457 problem details
//! (`application/problem+json`: `type`, `title`, `status`, `detail`), the [`Admin`] extractor
//! that checks the admin credential, and [`blocking`] for store work off the async workers.
//!
//! A handler is then a few lines over a service call:
//! `async fn h(_: Admin, State(s): State<Arc<Shared>>, …) -> Result<Json<T>, ApiError>`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::server::Shared;

/// An API failure: the HTTP status and a sentence for the person reading it (ids, never names).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: detail.into(),
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "admin token required")
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, detail)
    }

    /// The request is well-formed but names something wrong (a bad month, an unknown facility).
    pub fn invalid(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    /// The RFC 9457 body.
    pub fn problem(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), detail = %self.detail, "API error");
        }
        (
            self.status,
            [("content-type", "application/problem+json")],
            self.problem().to_string(),
        )
            .into_response()
    }
}

impl From<crate::services::security::SecurityError> for ApiError {
    fn from(e: crate::services::security::SecurityError) -> ApiError {
        use crate::services::security::SecurityError as S;
        let status = match e {
            S::Exists(_) => StatusCode::CONFLICT,
            S::NoDevice(_) => StatusCode::NOT_FOUND,
            S::BadCode => StatusCode::FORBIDDEN,
            S::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::services::ledger::LedgerError> for ApiError {
    fn from(e: crate::services::ledger::LedgerError) -> ApiError {
        ApiError::invalid(e.to_string())
    }
}

impl From<crate::services::alerting::AlertingError> for ApiError {
    fn from(e: crate::services::alerting::AlertingError) -> ApiError {
        use crate::services::alerting::AlertingError as A;
        match e {
            A::Invalid(d) => ApiError::invalid(d),
            A::NotFound(d) => ApiError::not_found(d),
            A::Store(d) => ApiError::internal(d),
        }
    }
}

impl From<crate::services::alerting::vendor::IngestError> for ApiError {
    fn from(e: crate::services::alerting::vendor::IngestError) -> ApiError {
        use crate::services::alerting::vendor::IngestError as I;
        let status = match &e {
            I::Unauthorized => StatusCode::UNAUTHORIZED,
            I::Malformed(_) => StatusCode::BAD_REQUEST,
            I::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            I::UnknownDevice(_) => StatusCode::NOT_FOUND,
            I::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::sync::store::practices::PracticeError> for ApiError {
    fn from(e: crate::sync::store::practices::PracticeError) -> ApiError {
        use crate::sync::store::practices::PracticeError as P;
        let status = match &e {
            P::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            P::Conflict { .. } => StatusCode::CONFLICT,
            P::Store { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::server::ImportError> for ApiError {
    fn from(e: crate::server::ImportError) -> ApiError {
        match e {
            crate::server::ImportError::Invalid(p) => ApiError::invalid(p.to_string()),
            crate::server::ImportError::Practice(e) => e.into(),
            crate::server::ImportError::Internal(d) => ApiError::internal(d),
        }
    }
}

impl From<crate::server::SyncRefusal> for ApiError {
    fn from(e: crate::server::SyncRefusal) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

impl From<crate::server::EnrolError> for ApiError {
    fn from(e: crate::server::EnrolError) -> ApiError {
        match e {
            crate::server::EnrolError::RateLimited => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            }
            crate::server::EnrolError::Security(e) => e.into(),
        }
    }
}

impl From<crate::services::accounts::AccountError> for ApiError {
    fn from(e: crate::services::accounts::AccountError) -> ApiError {
        use crate::services::accounts::AccountError as A;
        match e {
            A::Exists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            A::Store(d) => ApiError::internal(d),
            e => ApiError::invalid(e.to_string()),
        }
    }
}

/// The detail of a problem-details body, or the text itself when it is not one (for the CLI,
/// which prints what the server said).
pub fn detail_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail")?.as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

/// Proof that the request carries the admin credential (`Authorization: Bearer …`).
pub struct Admin;

impl FromRequestParts<Arc<Shared>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Admin, ApiError> {
        if shared
            .security
            .is_admin(crate::http::token_of(&parts.headers, None))
        {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// Run store work on the blocking pool; a task that panicked is a 500.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_problem_details_and_the_cli_reads_their_detail() {
        let e = ApiError::invalid("month: \"2026-13\" is not a month");
        let resp = e.clone().into_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["title"], "Unprocessable Entity");
        assert_eq!(v["type"], "about:blank");
        assert_eq!(detail_of(&String::from_utf8_lossy(&body)), e.detail);
        assert_eq!(detail_of("plain text\n"), "plain text");
    }
}
