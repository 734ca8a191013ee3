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
pub enum WorklistFormat {
    Json,
    /// An aligned table for a terminal.
    Table,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
            let month: Month =
                month
                    .parse()
                    .map_err(|e: rounds_core::month::MonthParseError| {
                        CliError::BadMonth(e.to_string())
                    })?;
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
        Command::Rules => {
            print!("{}", RuleSet::default().to_toml());
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
