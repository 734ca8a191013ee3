//! The batched summary exchange (`rounds/summary/1`), driven deterministically: a hub over an
//! in-memory store and tablets (replicas on disk) whose frames are carried by hand, so every
//! per-document message can be counted.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use rounds_core::DocumentId;
use rounds_core::sync::device::DeviceSession;
use rounds_core::sync::hub::{Action, AllowAll, Hub, HubConfig};
use rounds_core::sync::summary::{self, Prefix};
use rounds_core::sync::wire::{Message, PeerMetadata};

/// Two tablets of the facility, each synced once (and disconnected).
fn synced_pair(
    server: &mut Server,
    facility: &str,
    da: &tempfile::TempDir,
    db: &tempfile::TempDir,
) -> (rounds_core::Replica, rounds_core::Replica) {
    let (mut a, mut b) = (tablet(da, facility), tablet(db, facility));
    for (conn, t) in [(1, &mut a), (2, &mut b)] {
        let (s, _) = connect(server, conn, t);
        disconnect(server, conn, t, s);
    }
    (a, b)
}

#[test]
fn an_idle_reconnect_is_one_summary_and_no_per_document_message() {
    let (mut server, facility, _) = server_with_facility();
    let dir = tempfile::tempdir().unwrap();
    let mut tab = tablet(&dir, &facility);
    // First sync: everything one by one (nothing to summarize yet).
    let (s, first) = connect(&mut server, 1, &mut tab);
    let docs = tab.documents_to_sync().len();
    assert!(docs > 5, "{docs}");
    assert_eq!(first.summary.summarized, 0);
    assert_eq!(first.per_document.len(), docs);
    // Every exchange is over: the connection is still open, yet no document stays in memory
    // for it (each is watched, and reloads when it changes).
    assert_eq!(server.hub.loaded_documents(), 0);
    disconnect(&mut server, 1, &mut tab, s);

    // Reconnect with nothing changed: one summary of 14 bytes a document, nothing else.
    let (s, idle) = connect(&mut server, 2, &mut tab);
    assert_eq!(idle.summary.summarized, docs);
    assert_eq!((idle.summary.differ, idle.summary.unknown), (0, 0));
    assert_eq!(idle.per_document_frames, 0, "{idle:?}");
    assert!(
        idle.summary.bytes <= 14 * docs + 128,
        "{} bytes for {docs} documents",
        idle.summary.bytes
    );
    // Nothing was loaded into the server's memory to answer it.
    assert_eq!(server.hub.loaded_documents(), 0);
    disconnect(&mut server, 2, &mut tab, s);
}

#[test]
fn the_summary_syncs_exactly_the_documents_changed_elsewhere() {
    let (mut server, facility, patients) = server_with_facility();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = synced_pair(&mut server, &facility, &da, &db);
    // While A is offline, B edits three residents' care plans and syncs.
    for p in &patients[..3] {
        b.edit_care_plan(p, "walk twice a day", now()).unwrap();
    }
    let (s, _) = connect(&mut server, 3, &mut b);
    disconnect(&mut server, 3, &mut b, s);
    let expected = stale(&mut server, &a);
    assert_eq!(expected.len(), 3, "{expected:?}");

    let (s, sent) = connect(&mut server, 4, &mut a);
    assert_eq!(sent.summary.differ, 3, "{sent:?}");
    assert_eq!(
        sent.per_document, expected,
        "only the changed documents, one by one"
    );
    assert!(stale(&mut server, &a).is_empty());
    disconnect(&mut server, 4, &mut a, s);
}

#[test]
fn a_document_changed_on_the_server_while_the_tablet_was_offline_is_found() {
    let (mut server, facility, patients) = server_with_facility();
    let dir = tempfile::tempdir().unwrap();
    let mut tab = tablet(&dir, &facility);
    let (s, _) = connect(&mut server, 1, &mut tab);
    disconnect(&mut server, 1, &mut tab, s);
    // The server writes to a patient document (as its alerting and import do): a change no
    // tablet made.
    let doc = DocumentId::patient(&facility, &patients[0]);
    let mut copy = automerge::Automerge::load(&server.store.chunks[&doc].concat()).unwrap();
    let before = copy.get_heads();
    {
        use automerge::transaction::Transactable;
        let mut tx = copy.transaction();
        tx.put(automerge::ROOT, "serverNote", "from the server")
            .unwrap();
        tx.commit();
    }
    server.merge(doc, &copy.save_after(&before));

    let (s, sent) = connect(&mut server, 2, &mut tab);
    assert_eq!(sent.summary.differ, 1, "{sent:?}");
    assert_eq!(sent.per_document, BTreeSet::from([doc]));
    assert!(stale(&mut server, &tab).is_empty());
    disconnect(&mut server, 2, &mut tab, s);
}

#[test]
fn a_watched_document_that_changes_during_the_connection_is_synced_then() {
    let (mut server, facility, patients) = server_with_facility();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = synced_pair(&mut server, &facility, &da, &db);
    // A reconnects and stays connected, all its documents confirmed by the summary.
    let (mut sa, idle) = connect(&mut server, 3, &mut a);
    assert_eq!(idle.per_document_frames, 0);
    // B changes a document A watches.
    b.edit_care_plan(&patients[1], "fluids", now()).unwrap();
    server.hub.connect(4, Arc::new(AllowAll));
    let (mut sb, join) = DeviceSession::start(&b);
    let mut to_b = vec![join];
    let mut to_a: Vec<Vec<u8>> = Vec::new();
    let mut sent_a = Sent::default();
    let mut first_to_a = None;
    for _ in 0..50 {
        if to_b.is_empty() && to_a.is_empty() {
            break;
        }
        let mut out = Vec::new();
        for f in std::mem::take(&mut to_b) {
            let actions = server.hub.receive(4, &f, &mut server.store);
            out.extend(server.execute(actions));
        }
        for f in std::mem::take(&mut to_a) {
            let actions = server.hub.receive(3, &f, &mut server.store);
            out.extend(server.execute(actions));
        }
        for (c, f) in out {
            if c == 4 {
                to_b.extend(sb.receive(&mut b, &f).unwrap());
            } else if c == 3 {
                if first_to_a.is_none()
                    && let Ok(Message::Sync { data, .. }) = Message::decode(&f)
                {
                    first_to_a = Some(automerge::sync::Message::decode(&data).unwrap());
                }
                let replies = sa.receive(&mut a, &f).unwrap();
                for r in &replies {
                    if let Ok(Message::Sync { document_id, .. }) = Message::decode(r) {
                        sent_a.per_document.insert(document_id.parse().unwrap());
                    }
                }
                to_a.extend(replies);
            }
        }
    }
    let doc = DocumentId::patient(&facility, &patients[1]);
    assert_eq!(sent_a.per_document, BTreeSet::from([doc]));
    // The server's first message to the watcher already carries the change (no round trip
    // for its heads and bloom filter first).
    assert!(
        first_to_a.is_some_and(|m| !m.changes.is_empty()),
        "the watcher's first message is the change"
    );
    assert_eq!(a.heads(doc).map(sorted), Some(server.heads(doc)));
    assert!(stale(&mut server, &a).is_empty());
    disconnect(&mut server, 3, &mut a, sa);
    disconnect(&mut server, 4, &mut b, sb);
}

#[test]
fn local_changes_never_ride_the_summary() {
    let (mut server, facility, patients) = server_with_facility();
    let dir = tempfile::tempdir().unwrap();
    let mut tab = tablet(&dir, &facility);
    let (s, _) = connect(&mut server, 1, &mut tab);
    disconnect(&mut server, 1, &mut tab, s);
    let docs = tab.documents_to_sync().len();
    tab.edit_care_plan(&patients[2], "new plan", now()).unwrap();
    let doc = DocumentId::patient(&facility, &patients[2]);
    let (s, sent) = connect(&mut server, 2, &mut tab);
    // The changed document went straight to per-document sync; the rest were summarized.
    assert_eq!(sent.summary.direct, 1);
    assert_eq!(sent.summary.summarized, docs - 1);
    assert_eq!(sent.per_document, BTreeSet::from([doc]));
    assert_eq!(server.heads(doc), sorted(tab.heads(doc).unwrap()));
    disconnect(&mut server, 2, &mut tab, s);
}

#[test]
fn a_fingerprint_collision_hides_a_change_for_one_connection_at_most() {
    let (mut server, facility, patients) = server_with_facility();
    let dir = tempfile::tempdir().unwrap();
    let mut tab = tablet(&dir, &facility);
    let (s, _) = connect(&mut server, 1, &mut tab);
    disconnect(&mut server, 1, &mut tab, s);
    // The server's copy of a document moves on.
    let doc = DocumentId::patient(&facility, &patients[0]);
    let mut copy = automerge::Automerge::load(&server.store.chunks[&doc].concat()).unwrap();
    let before = copy.get_heads();
    {
        use automerge::transaction::Transactable;
        let mut tx = copy.transaction();
        tx.put(automerge::ROOT, "serverNote", "x").unwrap();
        tx.commit();
    }
    server.merge(doc, &copy.save_after(&before));
    // A collision, forced: an entry whose fingerprint happens to equal the server's under this
    // salt although the tablet's heads differ. That connection is told the document is in sync.
    server.hub.connect(9, Arc::new(AllowAll));
    let join = Message::Join {
        sender_id: "forger".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    };
    server.hub.receive(9, &join.encode(), &mut server.store);
    let salt = vec![1u8; 16];
    let heads = server.heads(doc);
    let forged = Message::Summary {
        sender_id: "forger".into(),
        target_id: "server".into(),
        salt: salt.clone(),
        entries: summary::entry(&salt, &doc, &heads).to_vec(),
    };
    let out = server.hub.receive(9, &forged.encode(), &mut server.store);
    let reply = out.iter().find_map(|a| match a {
        Action::Send(9, f) => Message::decode(f).ok(),
        _ => None,
    });
    assert!(
        matches!(reply, Some(Message::SummaryReply { ref differ, .. }) if differ.is_empty()),
        "{reply:?}"
    );
    // The tablet's own next connection draws a new salt: the difference is found.
    let (s, sent) = connect(&mut server, 2, &mut tab);
    assert_eq!(sent.per_document, BTreeSet::from([doc]));
    assert!(stale(&mut server, &tab).is_empty());
    disconnect(&mut server, 2, &mut tab, s);
    // And two connections never share a salt (drawn at random, 16 bytes).
    let (_, j1) = DeviceSession::start(&tab);
    let (_, j2) = DeviceSession::start(&tab);
    assert_ne!(j1, j2);
}

#[test]
fn a_prefix_shared_by_two_stored_documents_is_answered_as_unknown() {
    let mut server = Server::new();
    let genesis = rounds_core::document::genesis(rounds_core::document::DocKind::Facility)
        .unwrap()
        .save();
    let a = DocumentId::from_bytes([5; 16]);
    let mut b_bytes = [5u8; 16];
    b_bytes[12] = 6;
    let b = DocumentId::from_bytes(b_bytes);
    server.merge(a, &genesis);
    server.merge(b, &genesis);
    server.hub.connect(1, Arc::new(AllowAll));
    let join = Message::Join {
        sender_id: "t".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    };
    server.hub.receive(1, &join.encode(), &mut server.store);
    let salt = vec![2u8; 8];
    let heads = server.heads(a);
    let mut entries = summary::entry(&salt, &a, &heads).to_vec();
    // And a prefix nothing has.
    entries.extend_from_slice(&summary::entry(
        &salt,
        &DocumentId::from_bytes([8; 16]),
        &heads,
    ));
    let msg = Message::Summary {
        sender_id: "t".into(),
        target_id: "server".into(),
        salt,
        entries,
    };
    let out = server.hub.receive(1, &msg.encode(), &mut server.store);
    let Some(Message::SummaryReply {
        differ, unknown, ..
    }) = out.iter().find_map(|a| match a {
        Action::Send(1, f) => Message::decode(f).ok(),
        _ => None,
    })
    else {
        panic!("no reply: {out:?}");
    };
    assert!(differ.is_empty());
    let unknown: Vec<Prefix> = summary::prefixes(&unknown).collect();
    assert_eq!(unknown, vec![[5; summary::PREFIX], [8; summary::PREFIX]]);
}

#[test]
fn an_oversized_summary_is_refused_with_an_error() {
    let mut server = Server {
        hub: Hub::new(
            "server".into(),
            "s".into(),
            0,
            HubConfig {
                max_docs_per_conn: 2,
                ..HubConfig::default()
            },
        ),
        store: MemStore::default(),
    };
    server.hub.connect(1, Arc::new(AllowAll));
    let join = Message::Join {
        sender_id: "t".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    };
    server.hub.receive(1, &join.encode(), &mut server.store);
    let msg = Message::Summary {
        sender_id: "t".into(),
        target_id: "server".into(),
        salt: vec![0; 8],
        entries: vec![0; rounds_core::sync::summary::ENTRY * 3],
    };
    let out = server.hub.receive(1, &msg.encode(), &mut server.store);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Close(1, r) if r.contains("summary of 3")))
    );
}

/// Another server sharing the store wrote a document this hub's connection watches (the
/// tablet's summary confirmed it): `Hub::absorb` reads the stored change in and sends it to
/// the watcher at once, without persisting it again. A document nobody here holds or watches
/// costs nothing.
#[test]
fn a_change_another_server_stored_reaches_the_watchers_through_absorb() {
    let (mut server, facility, patients) = server_with_facility();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = synced_pair(&mut server, &facility, &da, &db);
    let (mut sa, idle) = connect(&mut server, 3, &mut a);
    assert_eq!(idle.per_document_frames, 0);
    assert_eq!(server.hub.loaded_documents(), 0);
    // B's change lands in the store through another server (this hub never sees a frame).
    b.edit_care_plan(&patients[1], "fluids", now()).unwrap();
    let doc = DocumentId::patient(&facility, &patients[1]);
    let bytes = b.document(doc).unwrap().save();
    server.store.chunks.entry(doc).or_default().push(bytes);
    assert_ne!(a.heads(doc).map(sorted), Some(server.heads(doc)));
    let chunks_before = server.store.chunks[&doc].len();
    let actions = server.hub.absorb(doc, &mut server.store).unwrap();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Persist { .. })),
        "absorbing persists nothing"
    );
    let frames = server.execute(actions);
    assert!(frames.iter().all(|(c, _)| *c == 3), "only the watcher");
    assert!(!frames.is_empty(), "the watcher is told");
    let mut replies = Vec::new();
    for (_, f) in frames {
        replies.extend(sa.receive(&mut a, &f).unwrap());
    }
    let mut sent = Sent::default();
    carry(&mut server, 3, &mut a, &mut sa, replies, &mut sent);
    assert_eq!(a.heads(doc).map(sorted), Some(server.heads(doc)));
    assert_eq!(server.store.chunks[&doc].len(), chunks_before);
    // A document no connection here holds or watches: nothing loaded, nothing sent.
    disconnect(&mut server, 3, &mut a, sa);
    let loaded = server.hub.loaded_documents();
    let other = DocumentId::patient(&facility, &patients[2]);
    assert!(!server.hub.wants(other));
    assert!(
        server
            .hub
            .absorb(other, &mut server.store)
            .unwrap()
            .is_empty()
    );
    assert_eq!(server.hub.loaded_documents(), loaded);
}
