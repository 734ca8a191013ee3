//! Sync: the automerge-repo v1 wire protocol and the sans-IO sessions that speak it.

pub mod wire;
pub mod hub;
pub mod device;
#[cfg(feature = "net")]
pub mod net;
