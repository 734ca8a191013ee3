//! Administration through the running server's admin API (or on a stopped server's store):
//! console users, vendor integrations, the alert protocol, refused changes, devices, the audit
//! log, month close, encounters and the export.

use super::*;

pub(super) fn user(
    command: UserCommand,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
    let op = match command {
        UserCommand::Add {
            username,
            role,
            facilities,
            practices,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| CliError::Invalid(format!("password from stdin: {e}")))?;
            crate::cli::admin_client::Op::UserAdd {
                username,
                role,
                facilities,
                practices,
                password: password.trim_end_matches(['\r', '\n']).to_string(),
            }
        }
        UserCommand::List => crate::cli::admin_client::Op::Users,
    };
    admin(store, server, op)
}

pub(super) fn practice(
    command: PracticeCommand,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
    let op = match command {
        PracticeCommand::List => crate::cli::admin_client::Op::Practices,
        PracticeCommand::Set { file } => {
            let body = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
            // Checked here first, so a bad file names its problems before anything is sent.
            crate::sync::store::practices::parse_practices(&body)
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            crate::cli::admin_client::Op::PracticeSet { body }
        }
        PracticeCommand::Summary {
            month,
            practice,
            csv,
        } => crate::cli::admin_client::Op::Summary {
            month: parse_month(&month)?,
            practice,
            csv,
        },
    };
    admin(store, server, op)
}

pub(super) fn integration(
    command: IntegrationCommand,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
    let op = match command {
        IntegrationCommand::Add {
            facility,
            name,
            mapping,
        } => {
            let mapping = match mapping {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| CliError::Invalid(format!("{}: {e}", path.display())))?;
                    Some(Box::new(
                        crate::services::alerting::vendors::GenericMapping::from_toml(&text)
                            .map_err(|e| CliError::Invalid(format!("{}: {e}", path.display())))?,
                    ))
                }
                None => None,
            };
            crate::cli::admin_client::Op::Integration {
                facility,
                name,
                mapping,
            }
        }
        IntegrationCommand::List => crate::cli::admin_client::Op::Integrations,
    };
    admin(store, server, op)
}

/// An alert-protocol file: its text and the protocol, checked.
fn read_protocol(file: &Path) -> Result<(String, rounds_core::alerts::AlertProtocol), CliError> {
    let text = read(file)?;
    let p = rounds_core::alerts::AlertProtocol::from_toml(&text)
        .map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
    Ok((text, p))
}

pub(super) fn protocol(
    command: ProtocolCommand,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
    match command {
        ProtocolCommand::Default => {
            print!("{}", rounds_core::alerts::DEFAULT_PROTOCOL);
            Ok(())
        }
        ProtocolCommand::Check { file } => {
            let (_, p) = read_protocol(&file)?;
            println!("{}: ok, {} rules", file.display(), p.rules.len());
            Ok(())
        }
        ProtocolCommand::Set { facility, file } => {
            let (toml, _) = read_protocol(&file)?;
            let op = crate::cli::admin_client::Op::Protocol { facility, toml };
            admin(store, server, op)
        }
    }
}

pub(super) fn quarantine(
    command: QuarantineCommand,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
    let op = match command {
        QuarantineCommand::List { facility } => {
            crate::cli::admin_client::Op::Quarantine { facility }
        }
        QuarantineCommand::Show { id } => crate::cli::admin_client::Op::QuarantineShow { id },
    };
    admin(store, server, op)
}

pub(super) fn device(
    command: DeviceCommand,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
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

pub(super) fn audit(
    patient: Option<String>,
    device: Option<String>,
    since: Option<String>,
    csv: bool,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
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

pub(super) fn close_month(
    facility: String,
    month: String,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
    let month = parse_month(&month)?;
    let progress = crate::cli::progress::Progress::new("close-month", None);
    progress.update(None, &format!("closing {facility} {month}"));
    let out = crate::cli::admin_client::run(
        &crate::cli::admin_client::AdminTarget { store, server },
        crate::cli::admin_client::Op::Close { facility, month },
    )?;
    progress.finish("done");
    println!("{}", out.trim_end());
    Ok(())
}

pub(super) fn encounters(
    facility: String,
    month: String,
    changed: bool,
    practice: Option<String>,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
    let month = parse_month(&month)?;
    let out = crate::cli::admin_client::run(
        &crate::cli::admin_client::AdminTarget { store, server },
        crate::cli::admin_client::Op::Encounters {
            facility,
            month,
            changed,
            practice,
        },
    )?;
    println!("{}", out.trim_end());
    Ok(())
}

pub(super) fn export(
    facility: String,
    month: String,
    format: crate::services::export::Format,
    practice: Option<String>,
    out: PathBuf,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
    let month = parse_month(&month)?;
    let target = crate::cli::admin_client::AdminTarget { store, server };
    let progress = crate::cli::progress::Progress::new("export", None);
    progress.update(None, &format!("building the {month} package of {facility}"));
    if let Some(written) = crate::cli::admin_client::export_local(
        &target,
        &facility,
        month,
        format,
        practice.as_deref(),
        &out,
    ) {
        let written = written?;
        progress.finish("done");
        println!("wrote {written} files to {}", out.display());
        return Ok(());
    }
    let files = crate::cli::admin_client::run(
        &target,
        crate::cli::admin_client::Op::Export {
            facility,
            month,
            format,
            practice,
        },
    )?;
    let files: Vec<crate::services::export::ExportFile> =
        serde_json::from_str(&files).map_err(|e| CliError::Invalid(format!("export: {e}")))?;
    crate::services::export::write(&out, &files)
        .map_err(|e| CliError::Invalid(format!("{}: {e}", out.display())))?;
    progress.finish("done");
    println!("wrote {} files to {}", files.len(), out.display());
    Ok(())
}
