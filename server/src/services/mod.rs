//! The domain services. They use [`crate::sync`] and the core, never [`crate::server`],
//! [`crate::http`] or axum types. See `lib.rs` for the layers.

pub mod accounts;
pub mod alerting;
pub mod audit_aggregate;
pub mod auth;
pub mod backup;
pub mod export;
pub mod import;
pub mod ledger;
pub mod migrate;
pub mod notify;
pub mod pdf;
pub mod practice_summary;
pub mod push;
pub mod secret;
pub mod security;
