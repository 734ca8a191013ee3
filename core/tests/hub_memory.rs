//! What the hub keeps in memory and what it sends a peer that starts from nothing: documents
//! no exchange uses stay in a bounded, shared idle cache (least recently used leave first), and
//! peers that start from nothing share one saved copy of the whole document.

mod common;

use std::sync::Arc;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use common::MemStore;
use rounds_core::DocumentId;
use rounds_core::sync::hub::{Action, AllowAll, Hub, HubConfig, IdleCache};
use rounds_core::sync::wire::{Message, PeerMetadata};

const CONN: u64 = 1;

fn join(hub: &mut Hub, conn: u64, store: &mut MemStore) {
    let join = Message::Join {
        sender_id: format!("tablet-{conn}"),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    }
    .encode();
    hub.connect(conn, Arc::new(AllowAll));
    hub.receive(conn, &join, store);
}

fn frame(conn: u64, doc: DocumentId, m: sync::Message) -> Vec<u8> {
    Message::Sync {
        sender_id: format!("tablet-{conn}"),
        target_id: "server".into(),
        document_id: doc.to_string(),
        data: m.encode(),
    }
    .encode()
}

fn answers(conn: u64, actions: &[Action]) -> Vec<sync::Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(c, f) if *c == conn => match Message::decode(f) {
                Ok(Message::Sync { data, .. }) => sync::Message::decode(&data).ok(),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A document with `n` changes, stored as one chunk.
fn stored_doc(store: &mut MemStore, id: DocumentId, n: usize) -> AutoCommit {
    let mut doc = AutoCommit::new();
    for i in 0..n {
        doc.put(ROOT, format!("k{i}"), i as i64).unwrap();
        doc.commit();
    }
    store.chunks.insert(id, vec![doc.save()]);
    doc
}

/// A fresh peer syncs `id` to the end with the hub; returns the messages it received.
fn fetch(
    hub: &mut Hub,
    conn: u64,
    id: DocumentId,
    store: &mut MemStore,
) -> (AutoCommit, Vec<sync::Message>) {
    let mut peer = AutoCommit::new();
    let mut state = sync::State::new();
    let mut got = Vec::new();
    for _ in 0..10 {
        let Some(m) = peer.sync().generate_sync_message(&mut state) else {
            break;
        };
        let out = hub.receive(conn, &frame(conn, id, m), store);
        let a = answers(conn, &out);
        if a.is_empty() {
            break;
        }
        for m in a {
            got.push(m.clone());
            peer.sync().receive_sync_message(&mut state, m).unwrap();
        }
    }
    (peer, got)
}

#[test]
fn fresh_peers_share_one_saved_document() {
    let mut store = MemStore::default();
    let id = DocumentId::from_bytes([3; 16]);
    let mut server_doc = stored_doc(&mut store, id, 5);
    let mut hub = Hub::new("server".into(), "st".into(), 0, HubConfig::default());
    join(&mut hub, 1, &mut store);
    join(&mut hub, 2, &mut store);
    // automerge 0.12's first message advertises v2: a peer with nothing gets the whole
    // document, one chunk in a v2 message, the same bytes for every such peer.
    let mut whole = Vec::new();
    for conn in [1, 2] {
        let (mut peer, got) = fetch(&mut hub, conn, id, &mut store);
        assert_eq!(peer.get_heads(), server_doc.get_heads());
        let with_changes: Vec<&sync::Message> =
            got.iter().filter(|m| !m.changes.is_empty()).collect();
        assert_eq!(with_changes.len(), 1, "{got:?}");
        assert_eq!(with_changes[0].version, sync::MessageVersion::V2);
        assert_eq!(with_changes[0].changes.len(), 1, "the saved document");
        whole.push(with_changes[0].changes.iter().next().unwrap().to_vec());
    }
    assert_eq!(whole[0], whole[1]);
    assert_eq!(whole[0], server_doc.save());
}

#[test]
fn idle_documents_stay_up_to_the_shared_limit_least_recently_used_leaving_first() {
    let mut store = MemStore::default();
    let ids: Vec<DocumentId> = (0..6u8)
        .map(|i| DocumentId::from_bytes([i + 10; 16]))
        .collect();
    for id in &ids {
        stored_doc(&mut store, *id, 2);
    }
    // Two hubs (two facilities) share a budget of three idle documents.
    let config = HubConfig {
        idle_cache: IdleCache::new(3),
        ..HubConfig::default()
    };
    let budget = config.idle_cache.clone();
    let mut a = Hub::new("server".into(), "st".into(), 0, config.clone());
    let mut b = Hub::new("server".into(), "st".into(), 0, config);
    join(&mut a, 1, &mut store);
    join(&mut b, 2, &mut store);

    for id in &ids[..3] {
        fetch(&mut a, 1, *id, &mut store);
    }
    // Each exchange is over: the documents are idle, and all three fit.
    assert_eq!(a.loaded_documents(), 3);
    assert_eq!(budget.count(), 3);

    // Used again, the first becomes the most recently used.
    fetch(&mut a, 1, ids[0], &mut store);
    // Hub b's documents push the budget over: each hub evicts its own least recently used.
    fetch(&mut b, 2, ids[3], &mut store);
    assert_eq!(budget.count(), 3);
    assert_eq!(
        b.loaded_documents(),
        0,
        "b's only idle document left, a's stay"
    );
    // In hub a, ids[1] is the least recently used now.
    fetch(&mut a, 1, ids[4], &mut store);
    assert_eq!(budget.count(), 3);
    assert_eq!(a.loaded_documents(), 3);
    assert!(a.heads(ids[1]).is_none(), "the least recently used left");
    assert!(a.heads(ids[0]).is_some(), "the one used again stayed");
    assert!(a.heads(ids[4]).is_some());

    // A hub that goes away gives its share back.
    drop(a);
    assert_eq!(budget.count(), 0);
}

#[test]
fn with_no_idle_cache_a_document_leaves_when_its_exchange_ends() {
    let mut store = MemStore::default();
    let id = DocumentId::from_bytes([21; 16]);
    stored_doc(&mut store, id, 1);
    let config = HubConfig {
        idle_cache: IdleCache::new(0),
        ..HubConfig::default()
    };
    let mut hub = Hub::new("server".into(), "st".into(), 0, config);
    join(&mut hub, CONN, &mut store);
    let (mut peer, _) = fetch(&mut hub, CONN, id, &mut store);
    assert!(!peer.get_heads().is_empty());
    assert_eq!(hub.loaded_documents(), 0);
}
