//! Command-line interface: argument parsing and the commands that need no server.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use clap::{Parser, Subcommand, ValueEnum};
use rounds_core::billing::{self, RuleSet, summary, worklist};
use rounds_core::{DataFile, Month, parse_data_file};

#[derive(Debug, Parser)]
#[command(
    name = "rounds",
    version,
    about = "Rounds: offline-first CCM/RPM backend for nursing homes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BillFormat {
    /// The encounters as JSON (spec/data-file.md).
    Json,
    /// The monthly summary of all patients served.
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReadModelAction {
    /// Compare every current entry with a fresh read of its document.
    Check,
    /// Read every document again.
    Rebuild,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WorklistFormat {
    Json,
    /// An aligned table for a terminal.
    Table,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole loop on this machine: server, example facility, tablets syncing a month, month
    /// close, the EHR package in ./rounds-demo-out/, a summary; then keeps serving until Ctrl-C.
    Demo {
        #[arg(long, default_value = "./rounds-demo-data")]
        store: PathBuf,
        #[arg(long, default_value = "./rounds-demo-out")]
        out: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 3)]
        tablets: usize,
        /// Exit after the summary.
        #[arg(long)]
        exit: bool,
    },
    /// Bill one month of a `rounds-data/1` file: encounters as JSON (or the CSV summary) on stdout.
    Bill {
        /// The data file.
        #[arg(long)]
        data: PathBuf,
        /// The month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// A TOML rule set overriding the built-in `medicare-ffs-2026` defaults.
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "json")]
        format: BillFormat,
    },
    /// What each patient still needs this month: minutes to the next code, RPM days left.
    Worklist {
        #[arg(long)]
        data: PathBuf,
        /// The day to look from, YYYY-MM-DD (entries up to and including it count).
        #[arg(long)]
        as_of: String,
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: WorklistFormat,
    },
    /// Print the built-in rule set as TOML (a starting point for --rules).
    Rules,
    /// Validate a data file: one line per problem, exit non-zero when any.
    Check {
        #[arg(long)]
        data: PathBuf,
    },
    /// Run the sync server (WebSocket at /sync over TLS; /healthz, /metrics).
    Serve {
        /// The store directory (sled database, TLS certificate).
        #[arg(long, default_value = "./rounds-data")]
        store: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// PEM certificate chain; without it a self-signed certificate is generated into the store.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP (no TLS). Only on a trusted network.
        #[arg(long)]
        insecure_http: bool,
        /// Largest WebSocket frame accepted, in bytes.
        #[arg(long, default_value_t = 8 << 20)]
        max_frame: usize,
        /// Accept this development token for every facility's documents (testing only; or
        /// ROUNDS_DEV_TOKEN). Devices normally enrol: see `rounds device`.
        #[arg(long, env = "ROUNDS_DEV_TOKEN")]
        dev_token: Option<String>,
        /// Connections one device may hold open at once.
        #[arg(long, default_value_t = 4)]
        max_connections_per_device: usize,
        /// Documents one connection may sync.
        #[arg(long, default_value_t = 50_000)]
        max_documents_per_connection: usize,
        /// Bytes queued for one connection and not yet read by its peer before the connection
        /// is cut (a peer that reads too slowly is disconnected, not buffered without end).
        #[arg(long, default_value_t = 32 << 20)]
        max_outbound_bytes: usize,
        /// Console sign-in attempts per minute per client address, and per account.
        #[arg(long, default_value_t = 20.0)]
        sign_ins_per_minute: f64,
        #[command(flatten)]
        network: Box<crate::network::NetworkLimits>,
        /// Sustained frames per second per device (bursts of --frame-burst allowed).
        #[arg(long, default_value_t = 500.0)]
        frames_per_second: f64,
        #[arg(long, default_value_t = 20_000.0)]
        frame_burst: f64,
        /// Hours an enrolment code stays valid.
        #[arg(long, default_value_t = 24.0)]
        enrolment_code_hours: f64,
        /// A TOML rule set for month close (default: the built-in medicare-ffs-2026).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Seconds between checks for months past their grace window.
        #[arg(long, default_value_t = 3600)]
        close_check_seconds: u64,
        /// Alert notifications: a TOML file with [webhook] (url, HMAC secret) and/or [email]
        /// (SMTP); see ARCHITECTURE.md. Without it, alerts show only in the apps.
        #[arg(long)]
        notify: Option<PathBuf>,
        /// Seconds between escalation checks and notification deliveries.
        #[arg(long, default_value_t = 10)]
        alert_tick_seconds: u64,
        /// Read the current time from this file (RFC 3339) for alert deadlines (tests only).
        #[arg(long, hide = true)]
        clock_file: Option<PathBuf>,
        /// The practice's EHR (push.toml, as for `rounds push`): the console's "approve and
        /// push" queues a closed month and the server sends it.
        #[arg(long)]
        push: Option<PathBuf>,
    },
    /// Web console accounts (the console is at https://HOST:PORT/console/).
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// Vendor integrations allowed to post RPM device readings to /api/v1/readings.
    Integration {
        #[command(subcommand)]
        command: IntegrationCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// Alert protocols: thresholds, deadlines and on-call staff per facility.
    Protocol {
        #[command(subcommand)]
        command: ProtocolCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// Enrol, list and revoke devices (through the running server, or on the store).
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// Changes refused by the write policy or the gate, kept for review (through the running
    /// server, or on the store).
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// The read model (each patient and month document read once and kept, for pages, month
    /// close and export): `check` compares every current entry with a fresh read of its
    /// document, `rebuild` reads every document again. On a store no server has open.
    ReadModel {
        #[arg(value_enum)]
        action: ReadModelAction,
        #[arg(long, default_value = "./rounds-data")]
        store: PathBuf,
    },
    /// Close a month now: store each patient's encounter (version 1, or a new version when late
    /// data changed the lines).
    CloseMonth {
        #[arg(long)]
        facility: String,
        #[arg(long)]
        month: String,
        #[arg(long, default_value = "./rounds-data")]
        store: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        server: String,
    },
    /// The stored encounter versions of a month (`--changed`: only patients with amendments/voids).
    Encounters {
        #[arg(long)]
        facility: String,
        #[arg(long)]
        month: String,
        #[arg(long)]
        changed: bool,
        #[arg(long, default_value = "./rounds-data")]
        store: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        server: String,
    },
    /// Write the monthly package of a closed month: FHIR bundles, HL7 messages, CSV summary or PDF notes.
    Export {
        #[arg(long)]
        facility: String,
        #[arg(long)]
        month: String,
        #[arg(long, value_enum)]
        format: crate::export::Format,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "./rounds-data")]
        store: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        server: String,
    },
    /// Push a closed month's package into the practice's EHR (FHIR REST and/or HL7 over MLLP),
    /// or show the outbox. Works on the store directly (server stopped).
    Push {
        #[command(subcommand)]
        command: PushCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: PathBuf,
    },
    /// The audit log: who read, wrote or was denied what, and when.
    Audit {
        #[arg(long)]
        patient: Option<String>,
        #[arg(long)]
        device: Option<String>,
        /// Only records at or after this time (RFC 3339) or date (YYYY-MM-DD, UTC).
        #[arg(long)]
        since: Option<String>,
        /// CSV instead of JSON.
        #[arg(long)]
        csv: bool,
        #[arg(long, default_value = "./rounds-data")]
        store: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        server: String,
    },
    /// Load a data file into a server store (the server must not be running on it; use
    /// `--server` to import through a running server).
    Import {
        /// The data file.
        file: PathBuf,
        #[arg(long, default_value = "./rounds-data", conflicts_with = "server")]
        store: PathBuf,
        /// A running server's base URL, e.g. https://127.0.0.1:8443 (imports through its API).
        #[arg(long, requires = "token")]
        server: Option<String>,
        /// The admin token for --server.
        #[arg(long, env = "ROUNDS_TOKEN")]
        token: Option<String>,
        /// Trust the server certificate with this SHA-256 fingerprint (hex), e.g. a self-signed one.
        #[arg(long)]
        fingerprint: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Queue the month's package and send it; retries with backoff until acknowledged, failed,
    /// or --wait runs out (what is left stays queued for the next run).
    Send {
        #[arg(long)]
        facility: String,
        #[arg(long)]
        month: String,
        /// push.toml: [fhir] base_url/token/fingerprint, [hl7] address, [export] identifiers.
        #[arg(long)]
        config: PathBuf,
        /// Seconds to keep retrying before returning.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Pending, acknowledged and failed items of the outbox.
    Status {
        #[arg(long)]
        facility: Option<String>,
        #[arg(long)]
        month: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account; the password is read from standard input (one line, 12+ characters).
    Add {
        #[arg(long)]
        username: String,
        #[arg(long, value_enum)]
        role: crate::console::accounts::Role,
        /// A facility the user works for (repeat for several).
        #[arg(long = "facility", required = true)]
        facilities: Vec<String>,
    },
    /// Every account (no passwords).
    List,
}

#[derive(Debug, Subcommand)]
pub enum IntegrationCommand {
    /// Create an integration for a facility and print its API key (shown once).
    Add {
        #[arg(long)]
        facility: String,
        #[arg(long)]
        name: String,
    },
    /// Every integration (names and facilities; keys are never shown again).
    List,
}

#[derive(Debug, Subcommand)]
pub enum ProtocolCommand {
    /// Check a protocol file and set it as the facility's protocol (synced to its tablets).
    Set {
        #[arg(long)]
        facility: String,
        file: PathBuf,
    },
    /// Check a protocol file without setting it.
    Check { file: PathBuf },
    /// Print the built-in default protocol (a starting point for your own).
    Default,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// A one-time enrolment code for a facility (valid 24 hours, single use).
    Code {
        #[arg(long)]
        facility: String,
    },
    /// Create a device and print its token (for scripts).
    Add {
        #[arg(long)]
        facility: String,
        #[arg(long)]
        name: String,
    },
    /// Every device, with its facility and revocation.
    List,
    /// Revoke a device (a lost tablet): its connections close on their next frame.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Refused changes, newest first: device, document, rule broken, detail.
    List {
        #[arg(long)]
        facility: Option<String>,
    },
    /// One refused change with its bytes (base64).
    Show { id: String },
}

/// Run an admin operation (through the running server, or on the store) and print its answer.
fn admin(store: PathBuf, server: String, op: crate::admin_client::Op) -> Result<(), CliError> {
    let out = crate::admin_client::run(&crate::admin_client::AdminTarget { store, server }, op)?;
    println!("{}", out.trim_end());
    Ok(())
}

/// A command failure, printed on stderr as is.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One line per problem.
    #[error("{0}")]
    Invalid(String),
    #[error("--month: {0}")]
    BadMonth(String),
    #[error("--as-of: {0:?} is not a date (YYYY-MM-DD)")]
    BadDate(String),
    #[error("writing output: {0}")]
    Output(String),
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
                    crate::admin_client::Op::UserAdd {
                        username,
                        role,
                        facilities,
                        password: password.trim_end_matches(['\r', '\n']).to_string(),
                    }
                }
                UserCommand::List => crate::admin_client::Op::Users,
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
                    crate::admin_client::Op::Integration { facility, name }
                }
                IntegrationCommand::List => crate::admin_client::Op::Integrations,
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
                let op = crate::admin_client::Op::Protocol { facility, toml };
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
                    crate::admin_client::Op::Quarantine { facility }
                }
                QuarantineCommand::Show { id } => crate::admin_client::Op::QuarantineShow { id },
            };
            admin(store, server, op)
        }
        Command::Device {
            command,
            store,
            server,
        } => {
            let op = match command {
                DeviceCommand::Code { facility } => crate::admin_client::Op::Code { facility },
                DeviceCommand::Add { facility, name } => {
                    crate::admin_client::Op::Add { facility, name }
                }
                DeviceCommand::List => crate::admin_client::Op::List,
                DeviceCommand::Revoke { name } => crate::admin_client::Op::Revoke { name },
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
                .map(crate::admin::parse_since)
                .transpose()
                .map_err(|e| CliError::Invalid(format!("--since: {e}")))?;
            let op = crate::admin_client::Op::Audit {
                query: crate::security::AuditQuery {
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
            let out = crate::admin_client::run(
                &crate::admin_client::AdminTarget { store, server },
                crate::admin_client::Op::Close { facility, month },
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
            let out = crate::admin_client::run(
                &crate::admin_client::AdminTarget { store, server },
                crate::admin_client::Op::Encounters {
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
            let target = crate::admin_client::AdminTarget { store, server };
            if let Some(written) =
                crate::admin_client::export_local(&target, &facility, month, format, &out)
            {
                println!("wrote {} files to {}", written?, out.display());
                return Ok(());
            }
            let files = crate::admin_client::run(
                &target,
                crate::admin_client::Op::Export {
                    facility,
                    month,
                    format,
                },
            )?;
            let files: Vec<crate::export::ExportFile> = serde_json::from_str(&files)
                .map_err(|e| CliError::Invalid(format!("export: {e}")))?;
            crate::export::write(&out, &files)
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
        } => runtime()?.block_on(crate::demo::run(crate::demo::DemoOptions {
            store,
            out,
            listen,
            tablets,
            exit,
        })),
        Command::ReadModel { action, store } => {
            let st = crate::store::SledStore::open(&store).map_err(|e| {
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
            let st = crate::store::SledStore::open(&store).map_err(|e| {
                CliError::Invalid(format!("{e} (stop the server to push from this store)"))
            })?;
            let outbox = crate::push::Outbox::open(st.db()).map_err(CliError::Invalid)?;
            match command {
                PushCommand::Send {
                    facility,
                    month,
                    config,
                    wait,
                } => {
                    let month = parse_month(&month)?;
                    let config =
                        crate::push::PushConfig::load(&config).map_err(CliError::Invalid)?;
                    let ledger = crate::ledger::Ledger::open(st.db())
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
                        .filter(|i| i.status == crate::push::Status::Failed)
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
                .map(crate::push::PushConfig::load)
                .transpose()
                .map_err(CliError::Invalid)?;
            let rules = load_rules(rules.as_deref())?;
            let notify = notify
                .as_deref()
                .map(crate::notify::NotifyConfig::load)
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
                clock_file,
                alert_tick: std::time::Duration::from_secs(alert_tick_seconds.max(1)),
                push,
            };
            runtime()?
                .block_on(crate::server::serve(opts))
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
            let docs = crate::import::documents_of(&data).map_err(CliError::Invalid)?;
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
                crate::ledger::facility_data(&shared.store, &data.facility.id)
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
            crate::api_error::detail_of(&text)
        )))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Invalid(format!("starting the runtime: {e}")))
}

fn worklist_table(items: &[worklist::WorklistItem]) -> String {
    let mut s = format!(
        "{:<10} {:<4} {:>7} {:<6} {:>7}  {:<23} {}\n",
        "patient", "prog", "minutes", "next", "needs", "rpm period (days/left)", "blocked by"
    );
    for i in items {
        let next = i.next_code.clone().unwrap_or_else(|| "-".into());
        let needs = i
            .minutes_to_next
            .map(|m| format!("{m} min"))
            .unwrap_or_else(|| "-".into());
        let period = i
            .period
            .as_ref()
            .map(|p| {
                format!(
                    "{}..{} {}d/{}d",
                    p.start.format("%m-%d"),
                    p.end.format("%m-%d"),
                    p.reading_days,
                    p.days_left
                )
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<10} {:<4} {:>7} {:<6} {:>7}  {:<23} {}\n",
            i.patient,
            i.program.as_str(),
            i.minutes,
            next,
            needs,
            period,
            i.blocked_by.join("; ")
        ));
    }
    s
}
