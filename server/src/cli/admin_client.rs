//! `rounds device …` and `rounds audit`: through the running server's admin API (credentials
//! read from the store directory), or straight on the store when no server runs on it.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::cli::CliError;
use crate::http::urlencode;
use crate::services::security::{AuditQuery, Security, audit_csv};

/// Where admin commands go.
pub struct AdminTarget {
    pub store: crate::sync::store::StoreLocation,
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
    Close {
        facility: String,
        month: rounds_core::Month,
    },
    Encounters {
        facility: String,
        month: rounds_core::Month,
        changed: bool,
        practice: Option<String>,
    },
    /// A vendor integration allowed to post device readings; returns its API key once.
    Integration {
        facility: String,
        name: String,
        mapping: Option<Box<crate::services::alerting::vendors::GenericMapping>>,
    },
    Integrations,
    /// A web console account.
    UserAdd {
        username: String,
        role: crate::services::accounts::Role,
        facilities: Vec<String>,
        practices: Vec<String>,
        password: String,
    },
    Users,
    /// The push outbox (payloads as their size).
    PushStatus {
        facility: Option<String>,
        month: Option<String>,
        practice: Option<String>,
    },
    /// Every practice.
    Practices,
    /// Create or replace practices (JSON: one object or a list).
    PracticeSet {
        body: String,
    },
    /// Per practice and facility of a closed month.
    Summary {
        month: rounds_core::Month,
        practice: Option<String>,
        csv: bool,
    },
    /// Set a facility's alert protocol from TOML text.
    Protocol {
        facility: String,
        toml: String,
    },
    /// Refused changes (of one facility's devices).
    Quarantine {
        facility: Option<String>,
    },
    /// One refused change with its bytes.
    QuarantineShow {
        id: String,
    },
    /// A consistent copy of the store into a new directory (on the server's machine).
    Backup {
        to: PathBuf,
    },
    /// Returns the files as JSON (`[{name, bytes(base64)}]`).
    Export {
        facility: String,
        month: rounds_core::Month,
        format: crate::services::export::Format,
        practice: Option<String>,
    },
}

fn invalid(e: impl std::fmt::Display) -> CliError {
    CliError::Invalid(e.to_string())
}

/// Run an operation; prints its result.
pub fn run(target: &AdminTarget, op: Op) -> Result<String, CliError> {
    // Straight on the store when nothing holds it (sled: the directory's lock; PostgreSQL: the
    // writer's lease), else through the running server.
    let opened = crate::sync::store::Store::open_at(&target.store);
    if let (Err(e), None) = (&opened, target.store.dir()) {
        return Err(invalid(e));
    }
    if let Ok(store) = opened {
        // PostgreSQL: the command writes only while no server does (it takes the writer's
        // lease); a running server is asked instead.
        let _writer = match target.store.dir() {
            Some(_) => None,
            None => match crate::sync::store::lease::WriterGuard::acquire(store.meta().clone()) {
                Ok(g) => Some(g),
                Err(
                    crate::sync::store::lease::HeldError::Held { .. }
                    | crate::sync::store::lease::HeldError::Served,
                ) => {
                    let credentials = credentials(target, Some(&store))?;
                    drop(store);
                    return tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(invalid)?
                        .block_on(via_api(target, credentials, op));
                }
                Err(e) => return Err(invalid(e)),
            },
        };
        let security = Security::open(&store, None, crate::services::security::CODE_LIFETIME)
            .map_err(invalid)?;
        let out = direct(&store, &security, op);
        let _ = store.flush();
        return out;
    }
    let credentials = credentials(target, None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(invalid)?;
    rt.block_on(via_api(target, credentials, op))
}

/// The admin credential and the running server's certificate (PEM, when known): from the
/// store directory, or from the database (where the server records the certificate it serves).
struct Credentials {
    token: String,
    cert: Option<Vec<u8>>,
}

fn credentials(
    target: &AdminTarget,
    store: Option<&crate::sync::store::Store>,
) -> Result<Credentials, CliError> {
    match (target.store.dir(), store) {
        (Some(dir), _) => {
            let token_path = dir.join("admin-token");
            let token = std::fs::read_to_string(&token_path).map_err(|e| {
                CliError::Invalid(format!(
                    "{}: {e} (admin commands need the store's admin credential)",
                    token_path.display()
                ))
            })?;
            Ok(Credentials {
                token,
                cert: std::fs::read(dir.join("tls/cert.pem")).ok(),
            })
        }
        (None, Some(store)) => {
            let token = store
                .read_file("admin-token")
                .map_err(invalid)?
                .ok_or_else(|| {
                    invalid(format!(
                        "{}: no admin credential yet (start a server on it once)",
                        target.store
                    ))
                })?;
            Ok(Credentials {
                token: String::from_utf8_lossy(&token).to_string(),
                cert: store.read_file("tls/cert.pem").map_err(invalid)?,
            })
        }
        (None, None) => Err(invalid(format!(
            "{}: the database did not open",
            target.store
        ))),
    }
}

/// Export straight into `out` when nothing holds the store (no server running): the files go
/// from the builders to the disk, not through JSON. None: a server holds the store.
pub fn export_local(
    target: &AdminTarget,
    facility: &str,
    month: rounds_core::Month,
    format: crate::services::export::Format,
    practice: Option<&str>,
    out: &Path,
) -> Option<Result<usize, CliError>> {
    let store = match crate::sync::store::Store::open_at(&target.store) {
        Ok(s) => s,
        Err(e) if target.store.dir().is_none() => return Some(Err(invalid(e))),
        Err(_) => return None,
    };
    // PostgreSQL with a server running: through the server.
    if target.store.dir().is_none()
        && crate::sync::store::lease::servers_present(store.meta().clone()).unwrap_or(1) > 0
    {
        return None;
    }
    Some((|| {
        let security = Security::open(&store, None, crate::services::security::CODE_LIFETIME)
            .map_err(invalid)?;
        let ledger = crate::services::ledger::Ledger::open(store.db()).map_err(invalid)?;
        let files = crate::services::export::export(
            &store,
            &ledger,
            facility,
            month,
            format,
            &rounds_core::ehr::ExportConfig::default(),
            practice,
        )
        .map_err(invalid)?;
        crate::services::export::write(out, &files)
            .map_err(|e| CliError::Invalid(format!("{}: {e}", out.display())))?;
        let mut rec = crate::services::security::AuditRecord::new("export");
        rec.facility = Some(facility.to_string());
        rec.detail = Some(format!("{month} {format:?}, {} files", files.len()));
        security.record(rec);
        let _ = store.flush();
        Ok(files.len())
    })())
}

fn direct(store: &crate::sync::store::Store, s: &Security, op: Op) -> Result<String, CliError> {
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
        Op::Backup { to } => {
            let m = crate::services::backup::backup(store, &to, &mut |step| {
                tracing::info!(step, "backup");
            })
            .map_err(invalid)?;
            let mut rec = crate::services::security::AuditRecord::new("backup");
            rec.detail = Some(format!(
                "{} documents to {}",
                m.documents.len(),
                to.display()
            ));
            s.record(rec);
            m.summary(&to)
        }
        Op::Quarantine { facility } => {
            let q = crate::sync::quarantine::Quarantine::open(store.db()).map_err(invalid)?;
            serde_json::to_string_pretty(&q.list(facility.as_deref(), 1000)).unwrap_or_default()
        }
        Op::QuarantineShow { id } => {
            let q = crate::sync::quarantine::Quarantine::open(store.db()).map_err(invalid)?;
            let e = q
                .get(&id)
                .ok_or_else(|| CliError::Invalid(format!("no quarantine entry {id:?}")))?;
            serde_json::to_string_pretty(&e).unwrap_or_default()
        }
        Op::Integration {
            facility,
            name,
            mapping,
        } => {
            let (alerting, _) =
                crate::services::alerting::Alerting::open(store.db(), store.server_actor())
                    .map_err(invalid)?;
            let key = alerting
                .add_integration(&facility, &name, mapping.map(|m| *m))
                .map_err(invalid)?;
            json(serde_json::json!({"name": name, "facility": facility, "api_key": key}))
        }
        Op::UserAdd {
            username,
            role,
            facilities,
            practices,
            password,
        } => {
            let accounts =
                crate::services::accounts::Accounts::open(store.db()).map_err(invalid)?;
            let u = accounts
                .add_user(&username, &password, role, &facilities, &practices)
                .map_err(invalid)?;
            let mut rec = crate::services::security::AuditRecord::new("user-added");
            rec.device = Some(format!("user:{}", u.username));
            rec.detail = Some(format!("{} ({})", u.username, u.role.as_str()));
            s.record(rec);
            json(
                serde_json::json!({"username": u.username, "role": u.role, "facilities": u.facilities, "practices": u.practices}),
            )
        }
        Op::Practices => serde_json::to_string_pretty(&store.practices.all()).unwrap_or_default(),
        Op::PushStatus {
            facility,
            month,
            practice,
        } => {
            let outbox = crate::services::push::Outbox::open(store.db()).map_err(invalid)?;
            serde_json::to_string_pretty(&outbox.status(
                facility.as_deref(),
                month.as_deref(),
                practice.as_deref(),
            ))
            .unwrap_or_default()
        }
        Op::PracticeSet { body } => {
            let practices = crate::sync::store::practices::parse_practices(&body)
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            store
                .practices
                .put(&practices)
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            let mut rec = crate::services::security::AuditRecord::new("practice-set");
            rec.detail = Some(format!(
                "practice {}",
                practices
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            s.record(rec);
            serde_json::to_string_pretty(&practices).unwrap_or_default()
        }
        Op::Summary {
            month,
            practice,
            csv,
        } => {
            let ledger = crate::services::ledger::Ledger::open(store.db()).map_err(invalid)?;
            let rules = rounds_core::billing::RuleSet::default();
            match (practice, csv) {
                (Some(p), true) => String::from_utf8_lossy(
                    &crate::services::practice_summary::practice_csv(store, &ledger, &p, month)
                        .map_err(invalid)?,
                )
                .to_string(),
                (None, true) => {
                    let rows = crate::services::practice_summary::rows(
                        store, &ledger, &rules, month, None,
                    )
                    .map_err(invalid)?;
                    String::from_utf8_lossy(
                        &crate::services::practice_summary::company_csv(&rows, month)
                            .map_err(invalid)?,
                    )
                    .to_string()
                }
                (p, false) => serde_json::to_string_pretty(
                    &crate::services::practice_summary::rows(
                        store,
                        &ledger,
                        &rules,
                        month,
                        p.as_deref(),
                    )
                    .map_err(invalid)?,
                )
                .unwrap_or_default(),
            }
        }
        Op::Users => {
            let accounts =
                crate::services::accounts::Accounts::open(store.db()).map_err(invalid)?;
            let users: Vec<serde_json::Value> = accounts
                .users()
                .into_iter()
                .map(|u| serde_json::json!({"username": u.username, "role": u.role, "facilities": u.facilities, "practices": u.practices, "created_at": u.created_at}))
                .collect();
            json(serde_json::Value::Array(users))
        }
        Op::Integrations => {
            let (alerting, _) =
                crate::services::alerting::Alerting::open(store.db(), store.server_actor())
                    .map_err(invalid)?;
            serde_json::to_string_pretty(&alerting.integrations()).unwrap_or_default()
        }
        Op::Protocol { facility, toml } => {
            let rules = crate::services::alerting::set_protocol_on_store(store, &facility, &toml)
                .map_err(CliError::Invalid)?;
            let mut rec = crate::services::security::AuditRecord::new("protocol-set");
            rec.facility = Some(facility.clone());
            rec.detail = Some(format!("{rules} rules"));
            s.record(rec);
            json(serde_json::json!({"facility": facility, "rules": rules}))
        }
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
        Op::Close { facility, month } => {
            let ledger = crate::services::ledger::Ledger::open(store.db()).map_err(invalid)?;
            let v = ledger
                .close(
                    store,
                    &facility,
                    month,
                    &rounds_core::billing::RuleSet::default(),
                )
                .map_err(invalid)?;
            serde_json::to_string_pretty(&v).unwrap_or_default()
        }
        Op::Encounters {
            facility,
            month,
            changed,
            practice,
        } => {
            let ledger = crate::services::ledger::Ledger::open(store.db()).map_err(invalid)?;
            let versions = ledger.select_versions(&facility, month, changed);
            let versions = match &practice {
                Some(p) => crate::services::ledger::for_practice(&versions, p, &facility),
                None => versions,
            };
            serde_json::to_string_pretty(&versions).unwrap_or_default()
        }
        Op::Export {
            facility,
            month,
            format,
            practice,
        } => {
            let ledger = crate::services::ledger::Ledger::open(store.db()).map_err(invalid)?;
            let files = crate::services::export::export(
                store,
                &ledger,
                &facility,
                month,
                format,
                &rounds_core::ehr::ExportConfig::default(),
                practice.as_deref(),
            )
            .map_err(invalid)?;
            let mut rec = crate::services::security::AuditRecord::new("export");
            rec.facility = Some(facility);
            rec.detail = Some(format!("{month} {format:?}, {} files", files.len()));
            s.record(rec);
            serde_json::to_string(&files).unwrap_or_default()
        }
    })
}

fn fingerprint_of(pem: &[u8]) -> Result<[u8; 32], CliError> {
    let der = CertificateDer::from_pem_slice(pem)
        .map_err(|e| CliError::Invalid(format!("the server's certificate: {e}")))?;
    Ok(Sha256::digest(der.as_ref()).into())
}

async fn via_api(
    target: &AdminTarget,
    credentials: Credentials,
    op: Op,
) -> Result<String, CliError> {
    let token = credentials.token;
    let trust = match &credentials.cert {
        Some(pem) => rounds_core::sync::net::Trust::Fingerprint(fingerprint_of(pem)?),
        None => rounds_core::sync::net::Trust::SystemRoots,
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
        Op::Backup { to } => {
            let to = std::path::absolute(&to).map_err(invalid)?;
            client
                .post(format!("{base}/api/v1/backup"))
                .header("content-type", "application/json")
                .body(serde_json::json!({"to": to}).to_string())
        }
        Op::Quarantine { facility } => client.get(match facility {
            Some(f) => format!("{base}/api/v1/quarantine?facility={}", urlencode(&f)),
            None => format!("{base}/api/v1/quarantine"),
        }),
        Op::QuarantineShow { id } => {
            client.get(format!("{base}/api/v1/quarantine/{}", urlencode(&id)))
        }
        Op::Integration {
            facility,
            name,
            mapping,
        } => client
            .post(format!("{base}/api/v1/integrations"))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({"facility": facility, "name": name, "mapping": mapping})
                    .to_string(),
            ),
        Op::Integrations => client.get(format!("{base}/api/v1/integrations")),
        Op::UserAdd {
            username,
            role,
            facilities,
            practices,
            password,
        } => client
            .post(format!("{base}/api/v1/users"))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({"username": username, "role": role, "facilities": facilities, "practices": practices, "password": password})
                    .to_string(),
            ),
        Op::Users => client.get(format!("{base}/api/v1/users")),
        Op::Practices => client.get(format!("{base}/api/v1/practices")),
        Op::PushStatus {
            facility,
            month,
            practice,
        } => {
            let mut q = Vec::new();
            for (k, v) in [("facility", facility), ("month", month), ("practice", practice)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", urlencode(&v)));
                }
            }
            client.get(format!("{base}/api/v1/push?{}", q.join("&")))
        }
        Op::PracticeSet { body } => {
            // One PUT per practice: the API takes one at a time.
            let practices = crate::sync::store::practices::parse_practices(&body)
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            let mut out = Vec::new();
            for p in practices {
                let resp = client
                    .put(format!("{base}/api/v1/practices/{}", urlencode(&p.id)))
                    .header("content-type", "application/json")
                    .body(serde_json::to_string(&p).unwrap_or_default())
                    .bearer_auth(token.trim())
                    .send()
                    .await
                    .map_err(|e| CliError::Invalid(format!("{base}: {e}")))?;
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if !status.is_success() {
                    return Err(CliError::Invalid(format!("practice {}: {status}: {text}", p.id)));
                }
                out.push(serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default());
            }
            return Ok(serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Op::Summary {
            month,
            practice,
            csv,
        } => {
            let practice = practice
                .map(|p| format!("&practice={}", urlencode(&p)))
                .unwrap_or_default();
            let format = if csv { "csv" } else { "json" };
            client.get(format!(
                "{base}/api/v1/summary?month={month}&format={format}{practice}"
            ))
        }
        Op::Protocol { facility, toml } => client
            .post(format!("{base}/api/v1/protocol"))
            .header("content-type", "application/json")
            .body(serde_json::json!({"facility": facility, "toml": toml}).to_string()),
        Op::Revoke { name } => client.post(format!("{base}/api/v1/devices/{name}/revoke")),
        Op::Close { facility, month } => client
            .post(format!("{base}/api/v1/close"))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({"facility": facility, "month": month.to_string()}).to_string(),
            ),
        Op::Encounters {
            facility,
            month,
            changed,
            practice,
        } => client.get(format!(
            "{base}/api/v1/encounters?facility={}&month={month}&changed={changed}{}",
            urlencode(&facility),
            practice
                .map(|p| format!("&practice={}", urlencode(&p)))
                .unwrap_or_default()
        )),
        Op::Export {
            facility,
            month,
            format,
            practice,
        } => {
            let f = serde_json::to_value(format)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let practice = practice
                .map(|p| format!("&practice={}", urlencode(&p)))
                .unwrap_or_default();
            client.get(format!(
                "{base}/api/v1/export?facility={}&month={month}&format={f}{practice}",
                urlencode(&facility)
            ))
        }
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
            target.store
        ))
    })?;
    let status = resp.status();
    let text = resp.text().await.map_err(invalid)?;
    if status.is_success() {
        Ok(text)
    } else {
        Err(CliError::Invalid(format!(
            "{status}: {}",
            crate::http::api_error::detail_of(&text)
        )))
    }
}
