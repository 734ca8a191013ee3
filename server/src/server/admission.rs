//! Who gets in: a device's sync connection, a device's enrolment, a console account's creation.
//! The services behind `GET /sync`, `POST /api/v1/devices/enroll` and `POST /api/v1/users`;
//! every refusal a stranger can cause is audited through the per-source aggregator.

use chrono::{DateTime, Utc};

use super::Shared;
use crate::services::accounts::{AccountError, Role, User};
use crate::services::auth::{AuthError, Device};
use crate::services::security::{AuditRecord, SecurityError};

/// Why a sync connection was not let in.
#[derive(Debug, thiserror::Error)]
pub enum SyncRefusal {
    #[error(
        "tokens in the URL are turned off on this server (--no-query-tokens): send an Authorization: Bearer header"
    )]
    QueryTokensOff,
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Why an enrolment did nothing.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("too many enrolment attempts; wait a minute")]
    RateLimited,
    #[error(transparent)]
    Security(#[from] SecurityError),
}

impl Shared {
    /// The device a sync connection from `client` speaks for: its token from the header, or from
    /// the URL (`query`) unless the operator turned that off.
    pub(crate) fn admit_sync(
        &self,
        header: Option<&str>,
        query: Option<&str>,
        client: &str,
    ) -> Result<Device, SyncRefusal> {
        if query.is_some() && self.limits.network.no_query_tokens {
            self.metrics.query_tokens_refused.inc();
            return Err(SyncRefusal::QueryTokensOff);
        }
        self.security.authenticate(header.or(query)).map_err(|e| {
            let mut a = AuditRecord::new("sync-unauthorized");
            a.detail = Some(format!("{e} (from {client})"));
            self.audit_noisy(client, "sync without a valid token", a);
            SyncRefusal::Auth(e)
        })
    }

    /// Exchange a one-time enrolment code for a device token; returns (token, facility).
    /// Attempts are rate-limited per client address.
    pub(crate) fn enrol_device(
        &self,
        client: &str,
        code: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, String), EnrolError> {
        if !self.admit_enrolment(client) {
            let mut rec = AuditRecord::new("enrol-refused");
            rec.detail = Some(format!("rate limited (from {client})"));
            self.audit_noisy(client, "enrolment rate limited", rec);
            return Err(EnrolError::RateLimited);
        }
        Ok(self.security.enroll(code, name, now)?)
    }

    /// Create a console account (its password hashed on a hashing thread, like a sign-in).
    /// Audited.
    pub(crate) async fn add_console_user(
        self: &std::sync::Arc<Self>,
        username: String,
        password: String,
        role: Role,
        facilities: Vec<String>,
        practices: Vec<String>,
    ) -> Result<User, AccountError> {
        let s = self.clone();
        let u = self
            .hashers
            .run(move || {
                s.accounts
                    .add_user(&username, &password, role, &facilities, &practices)
            })
            .await
            .ok_or_else(|| AccountError::Store("the password could not be hashed".into()))??;
        let mut a = AuditRecord::new("user-added");
        a.device = Some(format!("user:{}", u.username));
        a.detail = Some(format!("{} ({})", u.username, u.role.as_str()));
        self.security.record(a);
        Ok(u)
    }
}
