//! Arbitrary bytes as frames from a joined device of one facility: the hub decodes, routes,
//! screens and policy-checks them. Nothing may panic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use rounds_core::DocumentId;
use rounds_core::policy::DocScope;
use rounds_core::sync::hub::{Access, EmptyStore, Hub, HubConfig};
use rounds_core::sync::wire::{Message, PeerMetadata};


/// Every document is a patient-month of facility f (so the policy runs on every change).
struct OneFacility;
impl Access for OneFacility {
    fn allows(&self, _: &DocumentId) -> bool {
        true
    }
    fn scope(&self, _: &DocumentId) -> Option<DocScope> {
        Some(DocScope::patient_month("f", "p-1", "2026-11".parse().ok()?))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut hub = Hub::new("server".into(), "storage".into(), 0, HubConfig::default());
    hub.connect(1, Arc::new(OneFacility));
    let join = Message::Join {
        sender_id: "p".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    }
    .encode();
    hub.receive(1, &join, &mut EmptyStore);
    // The frame, then the same frame again (a device resending what the hub now knows).
    hub.receive(1, data, &mut EmptyStore);
    hub.receive(1, data, &mut EmptyStore);
    hub.flushed(hub.seq());
    hub.disconnect(1);
});
