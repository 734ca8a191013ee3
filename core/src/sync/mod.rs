//! Sync: the automerge-repo v1 wire protocol and the sans-IO sessions that speak it.

pub mod device;
#[cfg(feature = "net")]
pub mod enrol;
pub mod gate;
pub mod hub;
#[cfg(feature = "net")]
pub mod net;
pub mod summary;
pub mod wire;
