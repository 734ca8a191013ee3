//! `rounds device …` and `rounds audit`: through the running server's admin API (credentials
//! read from the store directory), or straight on the store when no server runs on it.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::cli::CliError;
use crate::security::{AuditQuery, Security, audit_csv};

/// Where admin commands go.
pub struct AdminTarget {
    pub store: PathBuf,
    pub server: String,
}

/// An admin operation.
pub enum Op {
    Code {
        facility: String,
    },
    Add {
        facility: String,
        name: String,
    },
    List,
    Revoke {
        name: String,
    },
    Audit {
        query: AuditQuery,
        csv: bool,
        raw_since: Option<String>,
    },
}

fn invalid(e: impl std::fmt::Display) -> CliError {
    CliError::Invalid(e.to_string())
}

/// Run an operation; prints its result.
pub fn run(target: &AdminTarget, op: Op) -> Result<String, CliError> {
    // Straight on the store when nothing holds it (the server is not running).
    if let Ok(db) = sled::Config::new().path(target.store.join("db")).open() {
        let security = Security::open(&db, &target.store, None, crate::security::CODE_LIFETIME)
            .map_err(invalid)?;
        let out = direct(&security, op);
        let _ = db.flush();
        return out;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(invalid)?;
    rt.block_on(via_api(target, op))
}

fn direct(s: &Security, op: Op) -> Result<String, CliError> {
    let json = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default();
    Ok(match op {
        Op::Code { facility } => {
            let (code, expires_at) = s.create_code(&facility).map_err(invalid)?;
            json(serde_json::json!({"code": code, "facility": facility, "expires_at": expires_at}))
        }
        Op::Add { facility, name } => {
            let token = s.add_device(&facility, &name).map_err(invalid)?;
            json(serde_json::json!({"name": name, "facility": facility, "token": token}))
        }
        Op::List => serde_json::to_string_pretty(&s.list()).unwrap_or_default(),
        Op::Revoke { name } => {
            serde_json::to_string_pretty(&s.revoke(&name).map_err(invalid)?).unwrap_or_default()
        }
        Op::Audit { query, csv, .. } => {
            let records = s.query(&query);
            if csv {
                audit_csv(&records)
            } else {
                serde_json::to_string_pretty(&records).unwrap_or_default()
            }
        }
    })
}

fn fingerprint_of(cert: &Path) -> Result<[u8; 32], CliError> {
    let der = CertificateDer::from_pem_file(cert)
        .map_err(|e| CliError::Invalid(format!("{}: {e}", cert.display())))?;
    Ok(Sha256::digest(der.as_ref()).into())
}

async fn via_api(target: &AdminTarget, op: Op) -> Result<String, CliError> {
    let token_path = target.store.join("admin-token");
    let token = std::fs::read_to_string(&token_path).map_err(|e| {
        CliError::Invalid(format!(
            "{}: {e} (admin commands need the store's admin credential)",
            token_path.display()
        ))
    })?;
    let cert = target.store.join("tls/cert.pem");
    let trust = if cert.exists() {
        rounds_core::sync::net::Trust::Fingerprint(fingerprint_of(&cert)?)
    } else {
        rounds_core::sync::net::Trust::SystemRoots
    };
    let tls = rounds_core::sync::net::client_config(&trust).map_err(invalid)?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(invalid)?;
    let base = target.server.trim_end_matches('/');
    let req = match op {
        Op::Code { facility } => client
            .post(format!("{base}/api/v1/devices/codes"))
            .header("content-type", "application/json")
            .body(serde_json::json!({"facility": facility}).to_string()),
        Op::Add { facility, name } => client
            .post(format!("{base}/api/v1/devices"))
            .header("content-type", "application/json")
            .body(serde_json::json!({"facility": facility, "name": name}).to_string()),
        Op::List => client.get(format!("{base}/api/v1/devices")),
        Op::Revoke { name } => client.post(format!("{base}/api/v1/devices/{name}/revoke")),
        Op::Audit {
            query,
            csv,
            raw_since,
        } => {
            let mut params: Vec<(&str, String)> = Vec::new();
            if let Some(p) = query.patient {
                params.push(("patient", p));
            }
            if let Some(d) = query.device {
                params.push(("device", d));
            }
            if let Some(s) = raw_since {
                params.push(("since", s));
            }
            if csv {
                params.push(("format", "csv".into()));
            }
            let qs: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect();
            client.get(format!("{base}/api/v1/audit?{}", qs.join("&")))
        }
    };
    let resp = req.bearer_auth(token.trim()).send().await.map_err(|e| {
        CliError::Invalid(format!(
            "{base}: {e} (is the server running? the store at {} is locked)",
            target.store.display()
        ))
    })?;
    let status = resp.status();
    let text = resp.text().await.map_err(invalid)?;
    if status.is_success() {
        Ok(text)
    } else {
        Err(CliError::Invalid(format!("{status}: {}", text.trim())))
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
