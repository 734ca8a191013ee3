//! The hub's durability hold, driven deterministically: a peer that talks about a document while
//! the document is held is answered when it is released.

use std::sync::Arc;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use rounds_core::DocumentId;
use rounds_core::sync::hub::{Action, AllowAll, EmptyStore, Hub, HubConfig};
use rounds_core::sync::wire::{Message, PeerMetadata};

const CONN: u64 = 1;

fn sync_frame(doc: DocumentId, m: sync::Message) -> Vec<u8> {
    Message::Sync {
        sender_id: "tablet".into(),
        target_id: "server".into(),
        document_id: doc.to_string(),
        data: m.encode(),
    }
    .encode()
}

/// The sync messages the hub sends to the tablet among `actions`.
fn answers(actions: &[Action]) -> Vec<sync::Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(CONN, frame) => match Message::decode(frame) {
                Ok(Message::Sync { data, .. }) => sync::Message::decode(&data).ok(),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn a_peer_that_spoke_while_its_document_was_held_is_answered_on_release() {
    let mut hub = Hub::new("server".into(), "storage".into(), 0, HubConfig::default());
    hub.connect(CONN, Arc::new(AllowAll));
    let join = Message::Join {
        sender_id: "tablet".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    }
    .encode();
    hub.receive(CONN, &join, &mut EmptyStore);
    let id = DocumentId::from_bytes([7; 16]);

    // The tablet holds a change the server lacks.
    let mut tablet = AutoCommit::new();
    tablet.put(ROOT, "note", "taken at the bedside").unwrap();
    let mut state = sync::State::new();

    // First exchange: heads and a bloom filter each way.
    let m1 = tablet.sync().generate_sync_message(&mut state).unwrap();
    let out = hub.receive(CONN, &sync_frame(id, m1), &mut EmptyStore);
    let s1 = answers(&out);
    assert_eq!(s1.len(), 1, "the first message is answered at once");
    tablet
        .sync()
        .receive_sync_message(&mut state, s1.into_iter().next().unwrap())
        .unwrap();

    // The tablet sends its change: persisted, so the document is held and nothing is answered.
    let a = tablet.sync().generate_sync_message(&mut state).unwrap();
    assert_eq!(a.changes.len(), 1);
    let out = hub.receive(CONN, &sync_frame(id, a), &mut EmptyStore);
    assert!(out.iter().any(|a| matches!(a, Action::Persist { .. })));
    assert!(answers(&out).is_empty(), "held: no answer before the flush");

    // Before any answer, the tablet sends again (as it does when two server messages crossed
    // its change): no changes, and heads that are already the server's heads.
    state.in_flight = false;
    let b = tablet.sync().generate_sync_message(&mut state).unwrap();
    assert!(b.changes.is_empty());
    let out = hub.receive(CONN, &sync_frame(id, b), &mut EmptyStore);
    assert!(answers(&out).is_empty(), "still held");

    // The flush: the tablet hears that the server has its change.
    let out = hub.flushed(hub.seq());
    let answer = answers(&out);
    assert_eq!(answer.len(), 1, "the held peer is answered on release");
    assert_eq!(answer[0].heads, tablet.get_heads());
    tablet
        .sync()
        .receive_sync_message(&mut state, answer.into_iter().next().unwrap())
        .unwrap();
    assert_eq!(state.their_heads.as_deref(), Some(&tablet.get_heads()[..]));
    // And the conversation ends there.
    assert!(tablet.sync().generate_sync_message(&mut state).is_none());
}
