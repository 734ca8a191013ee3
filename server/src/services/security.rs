//! Devices, enrolment, tokens, revocation and the audit log, kept in the server's sled store.
//!
//! Tokens are 32 random bytes (bs58), stored only as their SHA-256. Enrolment codes are single
//! use and valid 24 hours. The admin credential is created on first run in `<store>/admin-token`
//! (mode 0600). The audit log is append-only: keys are increasing sequence numbers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::services::auth::{AuthError, Device};

/// How long an enrolment code is valid (by default).
pub const CODE_LIFETIME: Duration = Duration::hours(24);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub name: String,
    pub facility: String,
    pub enrolled_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    token_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CodeRecord {
    facility: String,
    expires_at: DateTime<Utc>,
    used_by: Option<String>,
}

/// One audit record. Never holds patient names: ids only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub action: String,
    pub device: Option<String>,
    pub facility: Option<String>,
    pub document: Option<String>,
    pub patient: Option<String>,
    pub detail: Option<String>,
    /// A summary of aggregated events (`audit_aggregate`): how many more like this one there
    /// were in its interval. None: one event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u64>,
}

impl AuditRecord {
    pub fn new(action: &str) -> AuditRecord {
        AuditRecord {
            at: Utc::now(),
            action: action.to_string(),
            device: None,
            facility: None,
            document: None,
            patient: None,
            detail: None,
            repeated: None,
        }
    }
}

/// Filters for `rounds audit`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditQuery {
    pub patient: Option<String>,
    pub device: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("store: {0}")]
    Store(#[from] crate::sync::store::kv::KvError),
    #[error(transparent)]
    StoreFile(#[from] crate::sync::store::StoreError),
    #[error("{0}")]
    Io(String),
    #[error("a device named {0:?} already exists")]
    Exists(String),
    #[error("no device named {0:?}")]
    NoDevice(String),
    #[error("enrolment code not valid (unknown, expired or already used)")]
    BadCode,
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `prefix` + `bytes` random bytes in base58.
pub(crate) fn random_secret(prefix: &str, bytes: usize) -> Result<String, SecurityError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| SecurityError::Io(format!("random: {e}")))?;
    Ok(format!("{prefix}{}", bs58::encode(b).into_string()))
}

/// A token bucket per key.
/// Keys one [`RateLimiter`] tracks at most.
pub const RATE_KEYS: usize = 10_000;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key`; false when the bucket is empty. At most [`RATE_KEYS`] keys are
    /// tracked: past that, keys whose bucket has refilled are forgotten, and while every tracked
    /// key is still limited a new key is refused (bounded memory whatever the sources).
    pub fn allow(&self, key: &str) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if b.len() >= RATE_KEYS && !b.contains_key(key) {
            let (per, burst) = (self.per_second, self.burst);
            b.retain(|_, (t, last)| *t + now.duration_since(*last).as_secs_f64() * per < burst);
            if b.len() >= RATE_KEYS {
                return false;
            }
        }
        let (tokens, last) = b.entry(key.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The security records of one store.
pub struct Security {
    devices: crate::sync::store::kv::Tree,
    tokens: crate::sync::store::kv::Tree,
    codes: crate::sync::store::kv::Tree,
    audit: crate::sync::store::kv::Tree,
    db: crate::sync::store::kv::Db,
    admin_token_sha256: String,
    dev_token: Option<String>,
    code_lifetime: Duration,
}

impl Security {
    /// Open the trees; create the admin credential file on first run.
    pub fn open(
        store: &crate::sync::store::Store,
        dev_token: Option<String>,
        code_lifetime: Duration,
    ) -> Result<Security, SecurityError> {
        let db = store.db();
        let admin = match store.read_file("admin-token")? {
            Some(t) => String::from_utf8_lossy(&t).trim().to_string(),
            None => {
                let t = random_secret("rat_", 32)?;
                let kept = store.create_file("admin-token", format!("{t}\n").as_bytes())?;
                String::from_utf8_lossy(&kept).trim().to_string()
            }
        };
        Ok(Security {
            devices: db.open_tree("devices")?,
            tokens: db.open_tree("tokens")?,
            codes: db.open_tree("enrolment_codes")?,
            audit: db.open_tree("audit")?,
            db: db.clone(),
            admin_token_sha256: sha256_hex(&admin),
            dev_token: dev_token.filter(|t| !t.is_empty()),
            code_lifetime,
        })
    }

    /// Whether `token` is the admin credential.
    pub fn is_admin(&self, token: Option<&str>) -> bool {
        token.is_some_and(|t| sha256_hex(t) == self.admin_token_sha256)
    }

    /// The device a token belongs to; revoked devices and unknown tokens are refused.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Device, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        if let Some(dev) = &self.dev_token
            && crate::services::auth::constant_time_eq(token.as_bytes(), dev.as_bytes())
        {
            return Ok(Device {
                name: "development".into(),
                facility: None,
            });
        }
        let name = self
            .tokens
            .get(sha256_hex(token))
            .ok()
            .flatten()
            .ok_or(AuthError::Rejected)?;
        let name = String::from_utf8_lossy(&name).to_string();
        match self.device(&name) {
            Some(d) if d.revoked_at.is_none() => Ok(Device {
                name: d.name,
                facility: Some(d.facility),
            }),
            _ => Err(AuthError::Rejected),
        }
    }

    pub fn device(&self, name: &str) -> Option<DeviceRecord> {
        self.devices
            .get(name)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
    }

    /// Whether the device has been revoked (checked on every frame).
    pub fn is_revoked(&self, name: &str) -> bool {
        self.device(name).is_some_and(|d| d.revoked_at.is_some())
    }

    fn check_name(name: &str) -> Result<(), SecurityError> {
        rounds_core::ids::check_id("name", name).map_err(|e| SecurityError::Invalid(e.to_string()))
    }

    fn check_facility(facility: &str) -> Result<(), SecurityError> {
        rounds_core::ids::check_id("facility", facility)
            .map_err(|e| SecurityError::Invalid(e.to_string()))
    }

    pub fn add_device(&self, facility: &str, name: &str) -> Result<String, SecurityError> {
        Self::check_name(name)?;
        Self::check_facility(facility)?;
        let token = random_secret("rdt_", 32)?;
        let record = DeviceRecord {
            name: name.to_string(),
            facility: facility.to_string(),
            enrolled_at: Utc::now(),
            revoked_at: None,
            token_sha256: sha256_hex(&token),
        };
        let value = serde_json::to_vec(&record).map_err(|e| SecurityError::Io(e.to_string()))?;
        if self
            .devices
            .compare_and_swap(name, None as Option<&[u8]>, Some(value))?
            .is_err()
        {
            return Err(SecurityError::Exists(name.to_string()));
        }
        self.tokens
            .insert(record.token_sha256.as_bytes(), name.as_bytes())?;
        let mut a = AuditRecord::new("enrol");
        a.device = Some(name.to_string());
        a.facility = Some(facility.to_string());
        self.record(a);
        self.db.flush()?;
        Ok(token)
    }

    /// A one-time enrolment code for a facility, valid 24 hours.
    pub fn create_code(&self, facility: &str) -> Result<(String, DateTime<Utc>), SecurityError> {
        Self::check_facility(facility)?;
        let code = random_secret("", 10)?;
        let expires_at = Utc::now() + self.code_lifetime;
        let rec = CodeRecord {
            facility: facility.to_string(),
            expires_at,
            used_by: None,
        };
        self.codes.insert(
            sha256_hex(&code).as_bytes(),
            serde_json::to_vec(&rec).map_err(|e| SecurityError::Io(e.to_string()))?,
        )?;
        self.db.flush()?;
        Ok((code, expires_at))
    }

    /// Exchange an enrolment code for a token (single use).
    pub fn enroll(
        &self,
        code: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, String), SecurityError> {
        Self::check_name(name)?;
        let key = sha256_hex(code);
        let old = self
            .codes
            .get(key.as_bytes())?
            .ok_or(SecurityError::BadCode)?;
        let rec: CodeRecord = serde_json::from_slice(&old).map_err(|_| SecurityError::BadCode)?;
        if rec.used_by.is_some() || rec.expires_at < now {
            let mut a = AuditRecord::new("enrol-refused");
            a.facility = Some(rec.facility.clone());
            a.detail = Some(
                if rec.used_by.is_some() {
                    "code already used"
                } else {
                    "code expired"
                }
                .into(),
            );
            self.record(a);
            return Err(SecurityError::BadCode);
        }
        let used = CodeRecord {
            used_by: Some(name.to_string()),
            ..rec.clone()
        };
        let new = serde_json::to_vec(&used).map_err(|e| SecurityError::Io(e.to_string()))?;
        // Only one concurrent exchange of the same code can win.
        if self
            .codes
            .compare_and_swap(key.as_bytes(), Some(old), Some(new))?
            .is_err()
        {
            return Err(SecurityError::BadCode);
        }
        let token = self.add_device(&rec.facility, name)?;
        Ok((token, rec.facility))
    }

    pub fn list(&self) -> Vec<DeviceRecord> {
        self.devices
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// Revoke a device: its token stops working and its connections close on their next frame.
    pub fn revoke(&self, name: &str) -> Result<DeviceRecord, SecurityError> {
        let mut d = self
            .device(name)
            .ok_or_else(|| SecurityError::NoDevice(name.to_string()))?;
        if d.revoked_at.is_none() {
            d.revoked_at = Some(Utc::now());
            self.devices.insert(
                name,
                serde_json::to_vec(&d).map_err(|e| SecurityError::Io(e.to_string()))?,
            )?;
            self.tokens.remove(d.token_sha256.as_bytes())?;
            let mut a = AuditRecord::new("revoke");
            a.device = Some(name.to_string());
            a.facility = Some(d.facility.clone());
            self.record(a);
            self.db.flush()?;
        }
        Ok(d)
    }

    /// Append an audit record (best effort: a failure is logged, never fatal to the request).
    pub fn record(&self, rec: AuditRecord) {
        let result = self.db.generate_id().and_then(|id| {
            let v = serde_json::to_vec(&rec).unwrap_or_default();
            self.audit.insert(id.to_be_bytes(), v).map(|_| ())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, action = %rec.action, "could not write an audit record");
        }
    }

    pub fn query(&self, q: &AuditQuery) -> Vec<AuditRecord> {
        self.audit
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice::<AuditRecord>(&v).ok())
            .filter(|r| {
                q.patient
                    .as_ref()
                    .is_none_or(|p| r.patient.as_ref() == Some(p))
            })
            .filter(|r| {
                q.device
                    .as_ref()
                    .is_none_or(|d| r.device.as_ref() == Some(d))
            })
            .filter(|r| q.since.is_none_or(|s| r.at >= s))
            .collect()
    }
}

/// The audit records as CSV.
pub fn audit_csv(records: &[AuditRecord]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "at", "action", "device", "facility", "document", "patient", "detail", "repeated",
    ]);
    for r in records {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        let _ = w.write_record([
            r.at.to_rfc3339(),
            r.action.clone(),
            o(&r.device),
            o(&r.facility),
            o(&r.document),
            o(&r.patient),
            o(&r.detail),
            r.repeated.map(|n| n.to_string()).unwrap_or_default(),
        ]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Write a file only the owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecurityError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| SecurityError::Io(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .map_err(|e| SecurityError::Io(format!("{}: {e}", path.display())))?;
    f.sync_all()
        .map_err(|e| SecurityError::Io(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn a_rate_limiter_tracks_a_bounded_number_of_sources() {
        let r = RateLimiter::new(1.0 / 60.0, 2.0);
        assert!(r.allow("a") && r.allow("a"));
        assert!(!r.allow("a"), "burst spent");
        // Past RATE_KEYS sources, each still limited, a new source is refused rather than
        // tracked: memory stays bounded whatever the number of addresses.
        for i in 1..RATE_KEYS {
            r.allow(&format!("k{i}"));
            r.allow(&format!("k{i}"));
        }
        assert!(!r.allow("one-too-many"));
        assert!(r.buckets.lock().unwrap().len() <= RATE_KEYS);
    }
}
