//! Storage and sync plumbing: below the services, knows nothing of HTTP or of the domain
//! services. See `lib.rs` for the layers.

pub mod access;
pub mod flusher;
pub mod metrics;
pub mod outlet;
pub mod quarantine;
pub mod shards;
pub mod store;
