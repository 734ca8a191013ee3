//! Peers cannot act as one another: a `join` takes over a peer id only for the same device, and
//! ephemeral messages are relayed only as the connection's own peer, for a bounded number of
//! sessions.

use std::sync::Arc;

use automerge::AutoCommit;
use automerge::sync::{self, SyncDoc};
use rounds_core::DocumentId;
use rounds_core::sync::hub::{Action, AllowAll, EPHEMERAL_SESSIONS, EmptyStore, Hub, HubConfig};
use rounds_core::sync::wire::{CAP_ANSWERS_EVERY_SYNC, Message, PeerMetadata};

fn hub() -> Hub {
    Hub::new("server".into(), "storage".into(), 0, HubConfig::default())
}

fn join(hub: &mut Hub, conn: u64, peer: &str) -> Vec<Action> {
    let frame = Message::Join {
        sender_id: peer.into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    }
    .encode();
    hub.receive(conn, &frame, &mut EmptyStore)
}

fn closed(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close(c, _) => Some(*c),
            _ => None,
        })
        .collect()
}

fn sent_to(actions: &[Action], conn: u64) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(c, f) if *c == conn => Message::decode(f).ok(),
            _ => None,
        })
        .collect()
}

#[test]
fn a_join_takes_over_a_peer_id_only_for_the_same_device() {
    let mut hub = hub();
    hub.connect_device(1, Arc::new(AllowAll), Some("tab-a".into()));
    hub.connect_device(2, Arc::new(AllowAll), Some("tab-b".into()));
    hub.connect_device(3, Arc::new(AllowAll), Some("tab-a".into()));
    assert!(closed(&join(&mut hub, 1, "peer-x")).is_empty());
    // Another device naming tab-a's peer id is refused; tab-a keeps its connection.
    let out = join(&mut hub, 2, "peer-x");
    assert_eq!(closed(&out), vec![2], "{out:?}");
    assert!(sent_to(&out, 2).iter().any(
        |m| matches!(m, Message::Error { message, .. } if message.contains("another device"))
    ));
    assert_eq!(hub.peer_of(1), Some("peer-x"));
    // The same device reconnecting replaces its older connection, as before.
    let out = join(&mut hub, 3, "peer-x");
    assert_eq!(closed(&out), vec![1], "{out:?}");
    assert_eq!(hub.peer_of(3), Some("peer-x"));
}

#[test]
fn ephemeral_messages_go_out_only_as_their_own_peer_and_for_few_sessions() {
    let mut hub = hub();
    let doc = DocumentId::from_bytes([3; 16]);
    for (conn, device, peer) in [(1, "tab-a", "peer-a"), (2, "tab-b", "peer-b")] {
        hub.connect_device(conn, Arc::new(AllowAll), Some(device.into()));
        join(&mut hub, conn, peer);
        // Both sync the document, so both receive what is relayed about it.
        let m = AutoCommit::new()
            .sync()
            .generate_sync_message(&mut sync::State::new())
            .unwrap();
        let frame = Message::Sync {
            sender_id: peer.into(),
            target_id: "server".into(),
            document_id: doc.to_string(),
            data: m.encode(),
        }
        .encode();
        hub.receive(conn, &frame, &mut EmptyStore);
    }
    let ephemeral = |sender: &str, session: usize| {
        Message::Ephemeral {
            sender_id: sender.into(),
            target_id: "server".into(),
            document_id: doc.to_string(),
            session_id: format!("s-{session}"),
            count: 1,
            data: vec![1, 2, 3],
        }
        .encode()
    };
    // tab-b naming tab-a as the sender: not relayed.
    let out = hub.receive(2, &ephemeral("peer-a", 0), &mut EmptyStore);
    assert!(sent_to(&out, 1).is_empty(), "{out:?}");
    // As itself: relayed to tab-a.
    let out = hub.receive(2, &ephemeral("peer-b", 0), &mut EmptyStore);
    assert_eq!(sent_to(&out, 1).len(), 1, "{out:?}");
    // New sessions beyond the bound: not relayed.
    for s in 1..EPHEMERAL_SESSIONS {
        let out = hub.receive(2, &ephemeral("peer-b", s), &mut EmptyStore);
        assert_eq!(sent_to(&out, 1).len(), 1, "session {s}");
    }
    let out = hub.receive(2, &ephemeral("peer-b", EPHEMERAL_SESSIONS), &mut EmptyStore);
    assert!(sent_to(&out, 1).is_empty(), "{out:?}");
}

#[test]
fn the_server_announces_what_it_speaks_in_its_peer_metadata_not_its_name() {
    let mut hub = hub();
    hub.connect(1, Arc::new(AllowAll));
    let sent = sent_to(&join(&mut hub, 1, "tablet-1"), 1);
    let Some(Message::Peer {
        sender_id,
        peer_metadata,
        ..
    }) = sent.first()
    else {
        panic!("no peer message: {sent:?}");
    };
    // Its name says nothing about Rounds; the capability does.
    assert_eq!(sender_id, "server");
    assert!(
        peer_metadata.has(CAP_ANSWERS_EVERY_SYNC),
        "{peer_metadata:?}"
    );
    assert!(!PeerMetadata::default().has(CAP_ANSWERS_EVERY_SYNC));
}
