//! `rounds`: the Rounds server binary — the sync server (`serve`), onboarding (`import`),
//! billing a data file (`bill`), the nurse's worklist (`worklist`) and the rule set (`rules`).
#![forbid(unsafe_code)]

mod access;
mod admin;
mod admin_client;
mod alerting;
mod audit_aggregate;
mod auth;
mod cli;
mod close;
mod connection;
mod console;
mod demo;
mod export;
mod flusher;
mod import;
mod ledger;
mod metrics;
mod network;
mod notify;
mod outlet;
mod pdf;
mod push;
mod quarantine;
mod read_model;
mod security;
mod server;
mod shards;
mod store;
mod tls;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROUNDS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
