//! Rounds server library: the sync server, the services behind it (month close and the
//! encounter ledger, alerting, EHR push, security, console accounts, the read model) and the
//! command line. The `rounds` binary (`main.rs`) only sets up logging and calls [`cli::run`].
//!
//! Entry points: [`server::start`] / [`server::serve`] (the HTTP + WebSocket server),
//! [`cli::run`] (every command), [`read_model::facility_data`] (a facility as pages, close and
//! export read it), [`ledger::Ledger::close`] (month close).
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod admin_client;
pub mod alerting;
pub mod api_error;
pub mod audit_aggregate;
pub mod auth;
pub mod cli;
pub mod close;
pub mod connection;
pub mod console;
pub mod demo;
pub mod export;
pub mod flusher;
pub mod import;
pub mod ledger;
pub mod metrics;
pub mod network;
pub mod notify;
pub mod outlet;
pub mod pdf;
pub mod push;
pub mod quarantine;
pub mod read_model;
pub mod security;
pub mod server;
pub mod shards;
pub mod store;
pub mod tls;
