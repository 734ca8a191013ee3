//! Arbitrary bytes as the changes of a sync message: the gate screens them with bounded work,
//! and whatever passes is expanded and checked by the write policy. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rounds_core::policy::{DocScope, Pending, check_device_change};
use rounds_core::sync::gate::{GateLimits, expand, screen};

fuzz_target!(|data: &[u8]| {
    let Ok(base) = rounds_core::document::genesis(rounds_core::document::DocKind::PatientMonth)
    else {
        return;
    };
    let Ok(month) = "2026-11".parse() else {
        return;
    };
    let scope = DocScope::patient_month("f", "p-1", month);
    // Small caps so a run explores the limits instead of spending its time inflating.
    let limits = GateLimits {
        max_change_bytes: 1 << 16,
        max_message_bytes: 1 << 18,
        max_change_ops: 2_000,
        max_message_ops: 8_000,
        max_changes: 64,
    };
    if let Ok(changes) = screen([data].into_iter(), &limits) {
        let mut pending = Pending::default();
        for c in &changes {
            if let Some(e) = expand(c) {
                let _ = check_device_change(&base, &base.get_heads(), &scope, &e, &[], &mut pending);
            }
        }
    }
});
