//! The server's configuration: `rounds.toml` (`--config`, `ROUNDS_CONFIG`) under the flags and
//! their environment variables, and `rounds config check`.
//!
//! Precedence, highest first: a flag on the command line, its environment variable
//! (`ROUNDS_<FLAG>`), the key of the same name in `rounds.toml`, the default. The file's keys are
//! the flag names (`max_frame` or `max-frame`); a list is repeated (`trusted_proxy = ["10.0.0.1"]`);
//! the notify, push, ADT and rule files stay separate files the config names. An unknown key is
//! an error naming it.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{CommandFactory, Parser};

use super::{Cli, CliError, ServeArgs};

/// Parse the command line, with `--config`'s settings under what the flags and environment set.
pub fn parse_args(raw: Vec<OsString>) -> Cli {
    let cmd = Cli::command();
    let matches = match cmd.clone().try_get_matches_from(&raw) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let serve = match matches.subcommand() {
        Some(("serve", m)) => cmd.find_subcommand("serve").map(|c| (m, c.clone())),
        Some(("config", m)) => match m.subcommand() {
            Some(("check", m2)) => cmd
                .find_subcommand("config")
                .and_then(|c| c.find_subcommand("check"))
                .map(|c| (m2, c.clone())),
            _ => None,
        },
        _ => None,
    };
    let mut args = raw.clone();
    if let Some((m, sub)) = serve
        && let Some(path) = m.get_one::<std::path::PathBuf>("config")
    {
        match file_args(path, &sub, m) {
            Ok(extra) => args.extend(extra),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        }
    }
    match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    }
}

/// The arguments a config file adds: one per key whose flag was given neither on the command
/// line nor by its environment variable.
fn file_args(
    path: &Path,
    sub: &clap::Command,
    m: &clap::ArgMatches,
) -> Result<Vec<OsString>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| CliError::Invalid(format!("{}: {e}", path.display())))?;
    let bad =
        |key: &str, why: String| CliError::Invalid(format!("{}: {key}: {why}", path.display()));
    let mut out = Vec::new();
    for (key, value) in &table {
        let id = key.replace('-', "_");
        let arg = sub
            .get_arguments()
            .find(|a| {
                a.get_id().as_str() == id
                    || a.get_long()
                        .is_some_and(|l| l == key || l.replace('-', "_") == id)
            })
            .ok_or_else(|| {
                bad(
                    key,
                    "not a setting of rounds serve (see rounds serve --help)".into(),
                )
            })?;
        let id = arg.get_id().as_str();
        if id == "config" {
            return Err(bad(key, "a config file cannot name another".into()));
        }
        if matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let long = arg.get_long().unwrap_or(id);
        let takes_value = arg.get_action().takes_values();
        let scalar = |v: &toml::Value| -> Result<String, CliError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                _ => Err(bad(key, "use a string, number or boolean".into())),
            }
        };
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    out.push(OsString::from(format!("--{long}")));
                }
            }
            toml::Value::Array(items) => {
                for v in items {
                    out.push(OsString::from(format!("--{long}={}", scalar(v)?)));
                }
            }
            v => out.push(OsString::from(format!("--{long}={}", scalar(v)?))),
        }
    }
    Ok(out)
}

/// `serialize_with` for a secret flag: never printed.
pub fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// `rounds config check`: load everything `serve` would load, print the effective settings.
pub fn check(args: &ServeArgs) -> Result<String, CliError> {
    let mut problems = Vec::new();
    let mut out = String::from("# rounds serve: the effective configuration (secrets redacted)\n");
    match toml::to_string(args) {
        Ok(t) => out.push_str(&t),
        Err(e) => problems.push(format!("settings: {e}")),
    }
    if let Some(path) = &args.notify {
        match crate::services::notify::NotifyConfig::load(path) {
            Ok(c) => section(&mut out, "notify", &c),
            Err(e) => problems.push(format!("--notify {e}")),
        }
    }
    if let Some(path) = &args.push {
        match crate::services::push::PushConfig::load(path) {
            Ok(c) => {
                // The push file's own shape, with its secrets redacted by their type.
                out.push_str(&format!(
                    "\n# --push {}: {} FHIR target(s), {} HL7 target(s), {} practice route(s)\n",
                    path.display(),
                    usize::from(c.fhir.is_some())
                        + c.practices.values().filter(|p| p.fhir.is_some()).count(),
                    usize::from(c.hl7.is_some())
                        + c.practices.values().filter(|p| p.hl7.is_some()).count(),
                    c.practices.len()
                ));
                for (name, t) in c.fhir.iter().map(|t| ("fhir".to_string(), t)).chain(
                    c.practices.iter().filter_map(|(id, p)| {
                        p.fhir.as_ref().map(|t| (format!("practices.{id}.fhir"), t))
                    }),
                ) {
                    out.push_str(&format!(
                        "# [{name}] base_url = {:?}, token = {}\n",
                        t.base_url,
                        t.token
                            .as_ref()
                            .map_or("none".to_string(), |s| format!("{s:?}"))
                    ));
                }
            }
            Err(e) => problems.push(format!("--push {e}")),
        }
    }
    if let Some(path) = &args.adt_config {
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| rounds_core::adt::AdtSettings::parse(&t))
        {
            Ok(c) => section(&mut out, "adt", &c),
            Err(e) => problems.push(format!("--adt-config {}: {e}", path.display())),
        }
    }
    if let Err(e) = super::load_rules(args.rules.as_deref()) {
        problems.push(format!("--rules {e}"));
    }
    match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => {
            for (flag, p) in [("--tls-cert", c), ("--tls-key", k)] {
                if let Err(e) = std::fs::metadata(p) {
                    problems.push(format!("{flag} {}: {e}", p.display()));
                }
            }
        }
        (None, None) if args.insecure_http => {}
        (None, None) => out
            .push_str("\n# no --tls-cert: a self-signed certificate is generated into the store\n"),
        _ => problems.push("--tls-cert and --tls-key go together".into()),
    }
    if args.dev_token.is_some() {
        out.push_str(
            "\n# WARNING: --dev-token accepts one token for every facility (testing only)\n",
        );
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(CliError::Invalid(problems.join("\n")))
    }
}

fn section<T: serde::Serialize>(out: &mut String, name: &str, v: &T) {
    let mut wrapper = toml::Table::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(v) {
        wrapper.insert(name.to_string(), toml::Value::Table(t));
    }
    if let Ok(t) = toml::to_string(&wrapper) {
        out.push('\n');
        out.push_str(&t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag of `rounds serve` can be set by an environment variable `ROUNDS_<FLAG>`.
    #[test]
    fn every_serve_flag_has_an_environment_variable() {
        let cmd = Cli::command();
        let serve = cmd
            .find_subcommand("serve")
            .unwrap_or_else(|| panic!("no serve"));
        let mut n = 0;
        for a in serve.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = a
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no environment variable"));
            let env = env.to_string_lossy();
            assert!(env.starts_with("ROUNDS_"), "--{id}: {env}");
            n += 1;
        }
        assert!(n > 30, "only {n} flags seen");
    }
}
