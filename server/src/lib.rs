//! Rounds server library. Four layers, each a directory, each using only the layers below it:
//!
//! - [`sync`]: the storage and the sync plumbing — the sled store and its read model, the
//!   facility shards (one sans-IO hub each), the flusher, connection queues, the write gate's
//!   quarantine, facility access, metrics. No domain services, no HTTP.
//! - [`services`]: the domain services — the encounter ledger, export, import, EHR push, alerting
//!   and notification, security and audit, console accounts. No axum types.
//! - [`server`]: the running server's state ([`server::Shared`]) and its drivers — frames fed to
//!   the hubs, background loops (automatic close, late data, alert escalation), network limits.
//! - [`http`]: the router, [`http::api_error::ApiError`], the admin and alert APIs, the console,
//!   TLS, and [`http::start`] / [`http::serve`].
//! - [`cli`]: every `rounds` command ([`cli::run`]), the admin client, the demo.
//!
//! The `rounds` binary (`main.rs`) only sets up logging and calls [`cli::run`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod http;
pub mod server;
pub mod services;
pub mod sync;
