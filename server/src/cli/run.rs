//! Carrying out a parsed command: each arm a few lines over a service or the admin client.

use super::*;

/// Run an admin operation (through the running server, or on the store) and print its answer.
fn admin(store: PathBuf, server: String, op: crate::cli::admin_client::Op) -> Result<(), CliError> {
    let out = crate::cli::admin_client::run(
        &crate::cli::admin_client::AdminTarget { store, server },
        op,
    )?;
    println!("{}", out.trim_end());
    Ok(())
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_month(s: &str) -> Result<Month, CliError> {
    s.parse()
        .map_err(|e: rounds_core::month::MonthParseError| CliError::BadMonth(e.to_string()))
}

fn load_data(path: &Path) -> Result<DataFile, CliError> {
    let text = read(path)?;
    parse_data_file(&text).map_err(|p| CliError::Invalid(p.to_string()))
}

fn load_rules(path: Option<&Path>) -> Result<RuleSet, CliError> {
    match path {
        None => Ok(RuleSet::default()),
        Some(p) => RuleSet::from_toml(&read(p)?)
            .map_err(|e| CliError::Invalid(format!("{}: {e}", p.display()))),
    }
}

fn out_err(e: impl std::fmt::Display) -> CliError {
    CliError::Output(e.to_string())
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Bill {
            data,
            month,
            rules,
            format,
        } => {
            let month = parse_month(&month)?;
            let rules = load_rules(rules.as_deref())?;
            let data = load_data(&data)?;
            let run = billing::bill(&data, month, &rules)
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            // Render fully before writing, so that a failure prints nothing on stdout.
            let mut buf = Vec::new();
            match format {
                BillFormat::Json => {
                    serde_json::to_writer_pretty(&mut buf, &run).map_err(out_err)?;
                    buf.push(b'\n');
                }
                BillFormat::Csv => summary::write_csv(&data, &run, &mut buf).map_err(out_err)?,
            }
            std::io::stdout().lock().write_all(&buf).map_err(out_err)
        }
        Command::Worklist {
            data,
            as_of,
            rules,
            format,
        } => {
            let as_of: NaiveDate = as_of
                .parse()
                .map_err(|_| CliError::BadDate(as_of.clone()))?;
            let rules = load_rules(rules.as_deref())?;
            let data = load_data(&data)?;
            let items = worklist::worklist(&data, as_of, &rules)
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            let text = match format {
                WorklistFormat::Json => {
                    serde_json::to_string_pretty(&items).map_err(out_err)? + "\n"
                }
                WorklistFormat::Table => worklist_table(&items),
            };
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(out_err)
        }
        Command::User {
            command,
            store,
            server,
        } => {
            let op = match command {
                UserCommand::Add {
                    username,
                    role,
                    facilities,
                } => {
                    let mut password = String::new();
                    std::io::stdin()
                        .read_line(&mut password)
                        .map_err(|e| CliError::Invalid(format!("password from stdin: {e}")))?;
                    crate::cli::admin_client::Op::UserAdd {
                        username,
                        role,
                        facilities,
                        password: password.trim_end_matches(['\r', '\n']).to_string(),
                    }
                }
                UserCommand::List => crate::cli::admin_client::Op::Users,
            };
            admin(store, server, op)
        }
        Command::Integration {
            command,
            store,
            server,
        } => {
            let op = match command {
                IntegrationCommand::Add { facility, name } => {
                    crate::cli::admin_client::Op::Integration { facility, name }
                }
                IntegrationCommand::List => crate::cli::admin_client::Op::Integrations,
            };
            admin(store, server, op)
        }
        Command::Protocol {
            command,
            store,
            server,
        } => match command {
            ProtocolCommand::Default => {
                print!("{}", rounds_core::alerts::DEFAULT_PROTOCOL);
                Ok(())
            }
            ProtocolCommand::Check { file } => {
                let text = std::fs::read_to_string(&file).map_err(|source| CliError::Read {
                    path: file.clone(),
                    source,
                })?;
                let p = rounds_core::alerts::AlertProtocol::from_toml(&text)
                    .map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
                println!("{}: ok, {} rules", file.display(), p.rules.len());
                Ok(())
            }
            ProtocolCommand::Set { facility, file } => {
                let toml = std::fs::read_to_string(&file).map_err(|source| CliError::Read {
                    path: file.clone(),
                    source,
                })?;
                rounds_core::alerts::AlertProtocol::from_toml(&toml)
                    .map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
                let op = crate::cli::admin_client::Op::Protocol { facility, toml };
                admin(store, server, op)
            }
        },
        Command::Quarantine {
            command,
            store,
            server,
        } => {
            let op = match command {
                QuarantineCommand::List { facility } => {
                    crate::cli::admin_client::Op::Quarantine { facility }
                }
                QuarantineCommand::Show { id } => {
                    crate::cli::admin_client::Op::QuarantineShow { id }
                }
            };
            admin(store, server, op)
        }
        Command::Device {
            command,
            store,
            server,
        } => {
            let op = match command {
                DeviceCommand::Code { facility } => crate::cli::admin_client::Op::Code { facility },
                DeviceCommand::Add { facility, name } => {
                    crate::cli::admin_client::Op::Add { facility, name }
                }
                DeviceCommand::List => crate::cli::admin_client::Op::List,
                DeviceCommand::Revoke { name } => crate::cli::admin_client::Op::Revoke { name },
            };
            admin(store, server, op)
        }
        Command::Audit {
            patient,
            device,
            since,
            csv,
            store,
            server,
        } => {
            let parsed = since
                .as_deref()
                .map(crate::http::admin::parse_since)
                .transpose()
                .map_err(|e| CliError::Invalid(format!("--since: {e}")))?;
            let op = crate::cli::admin_client::Op::Audit {
                query: crate::services::security::AuditQuery {
                    patient,
                    device,
                    since: parsed,
                },
                csv,
                raw_since: since,
            };
            admin(store, server, op)
        }
        Command::CloseMonth {
            facility,
            month,
            store,
            server,
        } => {
            let month = parse_month(&month)?;
            let out = crate::cli::admin_client::run(
                &crate::cli::admin_client::AdminTarget { store, server },
                crate::cli::admin_client::Op::Close { facility, month },
            )?;
            println!("{}", out.trim_end());
            Ok(())
        }
        Command::Encounters {
            facility,
            month,
            changed,
            store,
            server,
        } => {
            let month = parse_month(&month)?;
            let out = crate::cli::admin_client::run(
                &crate::cli::admin_client::AdminTarget { store, server },
                crate::cli::admin_client::Op::Encounters {
                    facility,
                    month,
                    changed,
                },
            )?;
            println!("{}", out.trim_end());
            Ok(())
        }
        Command::Export {
            facility,
            month,
            format,
            out,
            store,
            server,
        } => {
            let month = parse_month(&month)?;
            let target = crate::cli::admin_client::AdminTarget { store, server };
            if let Some(written) =
                crate::cli::admin_client::export_local(&target, &facility, month, format, &out)
            {
                println!("wrote {} files to {}", written?, out.display());
                return Ok(());
            }
            let files = crate::cli::admin_client::run(
                &target,
                crate::cli::admin_client::Op::Export {
                    facility,
                    month,
                    format,
                },
            )?;
            let files: Vec<crate::services::export::ExportFile> = serde_json::from_str(&files)
                .map_err(|e| CliError::Invalid(format!("export: {e}")))?;
            crate::services::export::write(&out, &files)
                .map_err(|e| CliError::Invalid(format!("{}: {e}", out.display())))?;
            println!("wrote {} files to {}", files.len(), out.display());
            Ok(())
        }
        Command::Demo {
            store,
            out,
            listen,
            tablets,
            exit,
        } => runtime()?.block_on(crate::cli::demo::run(crate::cli::demo::DemoOptions {
            store,
            out,
            listen,
            tablets,
            exit,
        })),
        Command::ReadModel { action, store } => {
            let st = crate::sync::store::SledStore::open(&store).map_err(|e| {
                CliError::Invalid(format!("{e} (stop the server to use this store)"))
            })?;
            match action {
                ReadModelAction::Check => {
                    let r = st.read_model.check(&st);
                    println!(
                        "read model: {} entries compared, {} stale (read again on next use), {} wrong",
                        r.compared,
                        r.stale,
                        r.mismatched.len()
                    );
                    if r.mismatched.is_empty() {
                        Ok(())
                    } else {
                        let ids: Vec<String> = r.mismatched.iter().map(|d| d.url()).collect();
                        Err(CliError::Invalid(format!(
                            "read-model entries differ from their documents: {} (run `rounds read-model rebuild`)",
                            ids.join(", ")
                        )))
                    }
                }
                ReadModelAction::Rebuild => {
                    let n = st
                        .read_model
                        .rebuild(&st)
                        .map_err(|e| CliError::Invalid(e.to_string()))?;
                    st.flush().map_err(|e| CliError::Invalid(e.to_string()))?;
                    println!("read model: {n} documents read again");
                    Ok(())
                }
            }
        }
        Command::Push { command, store } => {
            let st = crate::sync::store::SledStore::open(&store).map_err(|e| {
                CliError::Invalid(format!("{e} (stop the server to push from this store)"))
            })?;
            let outbox = crate::services::push::Outbox::open(st.db()).map_err(CliError::Invalid)?;
            match command {
                PushCommand::Send {
                    facility,
                    month,
                    config,
                    wait,
                } => {
                    let month = parse_month(&month)?;
                    let config = crate::services::push::PushConfig::load(&config)
                        .map_err(CliError::Invalid)?;
                    let ledger = crate::services::ledger::Ledger::open(st.db())
                        .map_err(|e| CliError::Invalid(e.to_string()))?;
                    let added = outbox
                        .enqueue(&st, &ledger, &config, &facility, month)
                        .map_err(|e| CliError::Invalid(e.to_string()))?;
                    let (ack, failed, pending) = runtime()?
                        .block_on(outbox.drain(&config, std::time::Duration::from_secs(wait)));
                    println!(
                        "queued {added} new; acknowledged {ack}, failed {failed}, pending {pending}"
                    );
                    for i in outbox
                        .all()
                        .iter()
                        .filter(|i| i.status == crate::services::push::Status::Failed)
                    {
                        println!(
                            "  failed {}: {}",
                            i.key,
                            i.last_error.clone().unwrap_or_default()
                        );
                    }
                    Ok(())
                }
                PushCommand::Status { facility, month } => {
                    let items: Vec<_> = outbox
                        .all()
                        .into_iter()
                        .filter(|i| facility.as_ref().is_none_or(|f| &i.facility == f))
                        .filter(|i| month.as_ref().is_none_or(|m| &i.month.to_string() == m))
                        .map(|mut i| {
                            i.payload = format!("{} bytes", i.payload.len());
                            i
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&items).unwrap_or_default()
                    );
                    Ok(())
                }
            }
        }
        Command::Rules => {
            print!("{}", RuleSet::default().to_toml());
            Ok(())
        }
        Command::Serve {
            store,
            listen,
            tls_cert,
            tls_key,
            insecure_http,
            max_frame,
            dev_token,
            max_connections_per_device,
            max_documents_per_connection,
            max_outbound_bytes,
            sign_ins_per_minute,
            network,
            frames_per_second,
            frame_burst,
            enrolment_code_hours,
            rules,
            close_check_seconds,
            notify,
            alert_tick_seconds,
            clock_file,
            push,
        } => {
            let push = push
                .as_deref()
                .map(crate::services::push::PushConfig::load)
                .transpose()
                .map_err(CliError::Invalid)?;
            let rules = load_rules(rules.as_deref())?;
            let notify = notify
                .as_deref()
                .map(crate::services::notify::NotifyConfig::load)
                .transpose()
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            let opts = crate::server::ServeOptions {
                store,
                listen,
                tls_cert,
                tls_key,
                insecure_http,
                max_frame,
                dev_token,
                limits: crate::server::Limits {
                    connections_per_device: max_connections_per_device,
                    documents_per_connection: max_documents_per_connection,
                    outbound_bytes: max_outbound_bytes,
                    sign_ins_per_minute,
                    network: *network,
                    frames_per_second,
                    frame_burst,
                    code_lifetime: chrono::Duration::milliseconds(
                        (enrolment_code_hours * 3_600_000.0) as i64,
                    ),
                    ..crate::server::Limits::default()
                },
                rules,
                close_check: std::time::Duration::from_secs(close_check_seconds.max(1)),
                notify,
                clock: clock_file
                    .map(crate::services::alerting::Clock::File)
                    .unwrap_or_default(),
                alert_tick: std::time::Duration::from_secs(alert_tick_seconds.max(1)),
                push,
            };
            runtime()?
                .block_on(crate::http::serve(opts))
                .map_err(|e| CliError::Invalid(e.to_string()))
        }
        Command::Import {
            file,
            store,
            server,
            token,
            fingerprint,
        } => {
            let data = load_data(&file)?;
            if let Some(url) = server {
                let body = read(&file)?;
                let trust = match fingerprint.as_deref() {
                    Some(hex) => {
                        rounds_core::sync::net::Trust::Fingerprint(parse_fingerprint(hex)?)
                    }
                    None => rounds_core::sync::net::Trust::SystemRoots,
                };
                let reply = runtime()?.block_on(post_import(
                    &url,
                    token.as_deref().unwrap_or_default(),
                    trust,
                    body,
                ))?;
                println!("{reply}");
                return Ok(());
            }
            let docs = crate::services::import::documents_of(&data, chrono::Utc::now())
                .map_err(CliError::Invalid)?;
            let n = docs.len();
            runtime()?.block_on(async {
                let (_tx, rx) = tokio::sync::watch::channel(false);
                let shared = crate::server::Shared::open(
                    &store,
                    8 << 20,
                    None,
                    crate::server::Limits::default(),
                    RuleSet::default(),
                    rx,
                )
                .map_err(|e| {
                    CliError::Invalid(format!(
                        "{e} (is a server running on this store? then import through it)"
                    ))
                })?;
                shared.register_facility(&data.facility.id);
                shared
                    .merge(&data.facility.id, docs)
                    .await
                    .map_err(CliError::Invalid)?;
                // Read what was written into the read model now, not at the first close.
                crate::services::ledger::facility_data(&shared.store, &data.facility.id)
                    .map(|_| ())
                    .map_err(|e| CliError::Invalid(e.to_string()))
            })?;
            println!(
                "imported {} ({} documents); facility document {}",
                data.facility.id,
                n,
                rounds_core::DocumentId::facility(&data.facility.id).url()
            );
            Ok(())
        }
        Command::Check { data } => {
            let d = load_data(&data)?;
            println!(
                "{}: valid ({} patients, {} interactions, {} readings)",
                data.display(),
                d.patients.len(),
                d.interactions.len(),
                d.readings.len()
            );
            Ok(())
        }
    }
}

fn parse_fingerprint(hex: &str) -> Result<[u8; 32], CliError> {
    let clean: String = hex.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let bytes: Vec<u8> = (0..clean.len() / 2)
        .filter_map(|i| u8::from_str_radix(clean.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| CliError::Invalid("--fingerprint: expected 64 hex digits (SHA-256)".into()))
}

async fn post_import(
    url: &str,
    token: &str,
    trust: rounds_core::sync::net::Trust,
    body: String,
) -> Result<String, CliError> {
    let tls = rounds_core::sync::net::client_config(&trust)
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| CliError::Invalid(format!("HTTP client: {e}")))?;
    let endpoint = format!("{}/api/v1/import", url.trim_end_matches('/'));
    let resp = client
        .post(&endpoint)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| CliError::Invalid(format!("{endpoint}: {e}")))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| CliError::Invalid(format!("{endpoint}: {e}")))?;
    if status.is_success() {
        Ok(text)
    } else {
        Err(CliError::Invalid(format!(
            "{endpoint}: {status}: {}",
            crate::http::api_error::detail_of(&text)
        )))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Invalid(format!("starting the runtime: {e}")))
}
