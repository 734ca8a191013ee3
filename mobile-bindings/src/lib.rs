//! rounds-mobile: the uniffi facade over rounds-core for the Android (Kotlin) and iOS (Swift)
//! tablet apps. The uniffi surface arrives with the mobile-bindings issue; until then this crate
//! re-exports the core so the workspace layout is in place.
#![forbid(unsafe_code)]

pub use rounds_core as core;
