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
    /// The encounters as JSON (docs/data-file.md).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The log format: `serve`'s (and `config check`'s) flag, else `ROUNDS_LOG_FORMAT`.
    pub fn log_format(&self) -> LogFormat {
        match &self.command {
            Command::Serve(a) => a.log_format,
            Command::Config {
                command: ConfigCommand::Check(a),
            } => a.log_format,
            _ => match std::env::var("ROUNDS_LOG_FORMAT").as_deref() {
                Ok("json") => LogFormat::Json,
                _ => LogFormat::Text,
            },
        }
    }
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
    Serve(Box<ServeArgs>),
    /// The server's configuration: `check` validates it (flags, environment, `--config` file and
    /// the files it names) and prints the effective settings, secrets redacted.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Practices: the billing entities (group NPI, TIN, practitioners, EHR identifiers) and
    /// their monthly summaries over all facilities.
    Practice {
        #[command(subcommand)]
        command: PracticeCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: crate::sync::store::StoreLocation,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// Web console accounts (the console is at https://HOST:PORT/console/).
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: crate::sync::store::StoreLocation,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// Vendor integrations allowed to post RPM device readings to /api/v1/readings.
    Integration {
        #[command(subcommand)]
        command: IntegrationCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: crate::sync::store::StoreLocation,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// Alert protocols: thresholds, deadlines and on-call staff per facility.
    Protocol {
        #[command(subcommand)]
        command: ProtocolCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: crate::sync::store::StoreLocation,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// Enrol, list and revoke devices (through the running server, or on the store).
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: crate::sync::store::StoreLocation,
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
    },
    /// Changes refused by the write policy or the gate, kept for review (through the running
    /// server, or on the store).
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: crate::sync::store::StoreLocation,
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
        store: crate::sync::store::StoreLocation,
    },
    /// Close a month now: store each patient's encounter (version 1, or a new version when late
    /// data changed the lines).
    CloseMonth {
        #[arg(long)]
        facility: String,
        #[arg(long)]
        month: String,
        #[arg(long, default_value = "./rounds-data")]
        store: crate::sync::store::StoreLocation,
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
        /// Only the months concerning this practice, with only its lines.
        #[arg(long)]
        practice: Option<String>,
        #[arg(long, default_value = "./rounds-data")]
        store: crate::sync::store::StoreLocation,
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
        format: crate::services::export::Format,
        /// Only this practice's patients and lines, with its EHR identifiers.
        #[arg(long)]
        practice: Option<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "./rounds-data")]
        store: crate::sync::store::StoreLocation,
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        server: String,
    },
    /// Push a closed month's package into the practice's EHR (FHIR REST and/or HL7 over MLLP),
    /// or show the outbox. Works on the store directly (server stopped).
    Push {
        #[command(subcommand)]
        command: PushCommand,
        #[arg(long, default_value = "./rounds-data", global = true)]
        store: crate::sync::store::StoreLocation,
        /// For `status` while a server runs on the store: its base URL.
        #[arg(long, default_value = "https://127.0.0.1:8443", global = true)]
        server: String,
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
        store: crate::sync::store::StoreLocation,
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        server: String,
    },
    /// A consistent copy of the store into a new directory, while the server runs (through
    /// its admin API; the directory is on the server's machine) or on a stopped store.
    Backup {
        /// A new or empty directory.
        #[arg(long)]
        to: PathBuf,
        #[arg(long, default_value = "./rounds-data", env = "ROUNDS_STORE")]
        store: crate::sync::store::StoreLocation,
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        server: String,
    },
    /// Restore a backup into a new store directory (no server on it), checking every document
    /// against the backup's manifest.
    Restore {
        /// The backup directory (`rounds backup --to`).
        #[arg(long)]
        from: PathBuf,
        /// A new or empty store directory.
        #[arg(long)]
        to: PathBuf,
    },
    /// Move a sled store into an empty PostgreSQL database and verify the copy (entries per
    /// tree, every document's heads). No server may run on either while it runs.
    Migrate {
        /// The sled store directory.
        #[arg(long)]
        from: PathBuf,
        /// `postgres://USER@HOST:PORT/DATABASE` of an empty database.
        #[arg(long)]
        to: crate::sync::store::StoreLocation,
    },
    /// Load a data file into a server store (the server must not be running on it; use
    /// `--server` to import through a running server).
    Import {
        /// The data file; or, with --facility, a census CSV or a FHIR Bundle of Patient resources.
        file: PathBuf,
        /// Add the residents of a census CSV (`.csv`) or a FHIR Patient bundle (`.json`) to this
        /// facility, already imported (columns and fields: docs/data-file.md, "Rosters").
        #[arg(long)]
        facility: Option<String>,
        #[arg(long, default_value = "./rounds-data", conflicts_with = "server")]
        store: crate::sync::store::StoreLocation,
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

/// `rounds serve`'s flags (each also an environment variable, and a key of `--config`).
#[derive(Debug, clap::Args, serde::Serialize)]
pub struct ServeArgs {
    /// A `rounds.toml` holding any of these settings (the flag names, `_` or `-`): a flag or
    /// its environment variable wins over the file, the file over the default. `rounds config
    /// check` shows the result.
    #[arg(long, env = "ROUNDS_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Log lines on stderr as text or as JSON (one object per line); the level is ROUNDS_LOG
    /// (`info` adds the HTTP access log).
    #[arg(long, value_enum, default_value = "text", env = "ROUNDS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The store directory (sled database, TLS certificate).
    #[arg(long, default_value = "./rounds-data", env = "ROUNDS_STORE")]
    pub store: crate::sync::store::StoreLocation,
    #[arg(long, default_value = "127.0.0.1:8443", env = "ROUNDS_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain; without it a self-signed certificate is generated into the store.
    #[arg(long, requires = "tls_key", env = "ROUNDS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert", env = "ROUNDS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (no TLS). Only on a trusted network.
    #[arg(long, env = "ROUNDS_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Largest WebSocket frame accepted, in bytes.
    #[arg(long, default_value_t = 8 << 20, env = "ROUNDS_MAX_FRAME")]
    pub max_frame: usize,
    /// Accept this development token for every facility's documents (testing only; or
    /// ROUNDS_DEV_TOKEN). Devices normally enrol: see `rounds device`.
    #[arg(long, env = "ROUNDS_DEV_TOKEN")]
    #[serde(serialize_with = "config::redact")]
    pub dev_token: Option<String>,
    /// Connections one device may hold open at once.
    #[arg(long, default_value_t = 4, env = "ROUNDS_MAX_CONNECTIONS_PER_DEVICE")]
    pub max_connections_per_device: usize,
    /// Documents one connection may sync.
    #[arg(
        long,
        default_value_t = 50_000,
        env = "ROUNDS_MAX_DOCUMENTS_PER_CONNECTION"
    )]
    pub max_documents_per_connection: usize,
    /// Documents no connection uses that stay in memory, across all facilities, so one asked
    /// for again soon is not reloaded from the store (least recently used leave first; 0: a
    /// document leaves memory as soon as no exchange uses it). Peak memory follows it.
    #[arg(long, default_value_t = rounds_core::sync::hub::DEFAULT_IDLE_DOCUMENTS, env = "ROUNDS_IDLE_DOCUMENTS")]
    pub idle_documents: usize,
    /// Bytes queued for one connection and not yet read by its peer before the connection
    /// is cut (a peer that reads too slowly is disconnected, not buffered without end).
    #[arg(long, default_value_t = 32 << 20, env = "ROUNDS_MAX_OUTBOUND_BYTES")]
    pub max_outbound_bytes: usize,
    /// Console sign-in attempts per minute per client address, and per account.
    #[arg(long, default_value_t = 20.0, env = "ROUNDS_SIGN_INS_PER_MINUTE")]
    pub sign_ins_per_minute: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub network: Box<crate::server::network::NetworkLimits>,
    /// Sustained frames per second per device (bursts of --frame-burst allowed).
    #[arg(long, default_value_t = 500.0, env = "ROUNDS_FRAMES_PER_SECOND")]
    pub frames_per_second: f64,
    #[arg(long, default_value_t = 20_000.0, env = "ROUNDS_FRAME_BURST")]
    pub frame_burst: f64,
    /// Hours an enrolment code stays valid.
    #[arg(long, default_value_t = 24.0, env = "ROUNDS_ENROLMENT_CODE_HOURS")]
    pub enrolment_code_hours: f64,
    /// A TOML rule set for month close (default: the built-in medicare-ffs-2026).
    #[arg(long, env = "ROUNDS_RULES")]
    pub rules: Option<PathBuf>,
    /// Seconds between checks for months past their grace window.
    #[arg(long, default_value_t = 3600, env = "ROUNDS_CLOSE_CHECK_SECONDS")]
    pub close_check_seconds: u64,
    /// Listen for the facilities' HL7 v2 ADT feeds (MLLP) on this address; needs --adt-config.
    #[arg(long, env = "ROUNDS_ADT_LISTEN", requires = "adt_config")]
    pub adt_listen: Option<std::net::SocketAddr>,
    /// The ADT feeds: a TOML file with one [[feed]] per sending facility (MSH-4 → facility,
    /// practitioner for new residents, hospital locations, Part A field); see docs/adt.md.
    #[arg(long, env = "ROUNDS_ADT_CONFIG", requires = "adt_listen")]
    pub adt_config: Option<PathBuf>,
    /// MLLP inside TLS on --adt-listen, with the server's certificate.
    #[arg(long, requires = "adt_listen", env = "ROUNDS_ADT_TLS")]
    pub adt_tls: bool,
    /// Alert notifications: a TOML file with [webhook] (url, HMAC secret) and/or [email]
    /// (SMTP); see ARCHITECTURE.md. Without it, alerts show only in the apps.
    #[arg(long, env = "ROUNDS_NOTIFY")]
    pub notify: Option<PathBuf>,
    /// Seconds between escalation checks and notification deliveries.
    #[arg(long, default_value_t = 10, env = "ROUNDS_ALERT_TICK_SECONDS")]
    pub alert_tick_seconds: u64,
    /// Read the current time from this file (RFC 3339) for alert deadlines (tests only).
    #[arg(long, hide = true, env = "ROUNDS_CLOCK_FILE")]
    pub clock_file: Option<PathBuf>,
    /// The practice's EHR (push.toml, as for `rounds push`): the console's "approve and
    /// push" queues a closed month and the server sends it.
    #[arg(long, env = "ROUNDS_PUSH")]
    pub push: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration `rounds serve` would run with (the same flags, environment
    /// and `--config`), print it as TOML with secrets redacted; non-zero on any problem.
    Check(Box<ServeArgs>),
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
        /// push.toml: [fhir] base_url/token/fingerprint, [hl7] address, [export] identifiers;
        /// [practices.<id>] the same per practice.
        #[arg(long)]
        config: PathBuf,
        /// Only this practice's packages (default: every practice's, each to its own EHR).
        #[arg(long)]
        practice: Option<String>,
        /// Seconds to keep retrying before returning.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Put failed items back in the queue (after their cause is fixed); the next `push send`
    /// or the server's pusher sends them. By key, or every failed item of a month.
    Retry {
        /// Outbox keys (as `push status` shows them).
        keys: Vec<String>,
        /// Every failed item of this facility and month (with `--month`).
        #[arg(long)]
        facility: Option<String>,
        #[arg(long, requires = "facility")]
        month: Option<String>,
    },
    /// Pending, acknowledged and failed items of the outbox.
    Status {
        #[arg(long)]
        facility: Option<String>,
        #[arg(long)]
        month: Option<String>,
        #[arg(long)]
        practice: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PracticeCommand {
    /// Every practice (JSON).
    List,
    /// Create or replace practices from a JSON file (one practice object or a list), each
    /// checked; a practitioner already in another practice is refused and nothing changes.
    Set { file: PathBuf },
    /// A closed month per practice and facility: patients served, units per code, estimated
    /// payment (JSON; `--csv` for CSV: the company's view, or with `--practice` its summary).
    Summary {
        #[arg(long)]
        month: String,
        #[arg(long)]
        practice: Option<String>,
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account; the password is read from standard input (one line, 12+ characters).
    Add {
        #[arg(long)]
        username: String,
        #[arg(long, value_enum)]
        role: crate::services::accounts::Role,
        /// A facility the user works for (repeat for several): facility staff.
        #[arg(long = "facility")]
        facilities: Vec<String>,
        /// A practice the user works for (repeat for several): a practice's billing or clinical
        /// staff, who see its patients in every facility.
        #[arg(long = "practice")]
        practices: Vec<String>,
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
        /// For a vendor without its own adapter: a TOML file saying where its posts put each
        /// field (POST /api/v1/vendors/generic; see docs/vendors.md).
        #[arg(long)]
        mapping: Option<PathBuf>,
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

mod admin;
pub mod admin_client;
pub mod config;
mod data;
pub mod demo;
pub mod progress;
mod run;
mod serve;
mod store;

pub use run::run;

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
        let mut blocked = i.blocked_by.clone();
        if let Some(p) = &i.period
            && p.adherence != worklist::Adherence::OnTrack
        {
            blocked.insert(0, p.adherence.describe(p));
        }
        s.push_str(&format!(
            "{:<10} {:<4} {:>7} {:<6} {:>7}  {:<23} {}\n",
            i.patient,
            i.program.as_str(),
            i.minutes,
            next,
            needs,
            period,
            blocked.join("; ")
        ));
    }
    s
}

/// Run an admin operation (through the running server, or on the store) and print its answer.
fn admin(
    store: crate::sync::store::StoreLocation,
    server: String,
    op: crate::cli::admin_client::Op,
) -> Result<(), CliError> {
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
    path: &str,
    content_type: &str,
) -> Result<String, CliError> {
    let tls = rounds_core::sync::net::client_config(&trust)
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| CliError::Invalid(format!("HTTP client: {e}")))?;
    let endpoint = format!("{}{path}", url.trim_end_matches('/'));
    let resp = client
        .post(&endpoint)
        .bearer_auth(token)
        .header("content-type", content_type)
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
