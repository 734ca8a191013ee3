//! The batched summary exchange (`rounds/summary/1`), driven deterministically: a hub over an
//! in-memory store and tablets (replicas on disk) whose frames are carried by hand, so every
//! per-document message can be counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use rounds_core::sync::device::{DeviceSession, SummaryStats};
use rounds_core::sync::hub::{Action, AllowAll, Hub, HubConfig, Loader};
use rounds_core::sync::summary::{self, Prefix, Resolved};
use rounds_core::sync::wire::{Message, PeerMetadata};
use rounds_core::{DocumentId, Replica, parse_data_file};

/// The server's store: chunks per document, sync states per (document, peer).
#[derive(Default)]
struct MemStore {
    chunks: BTreeMap<DocumentId, Vec<Vec<u8>>>,
    states: HashMap<(DocumentId, String), Vec<u8>>,
}

impl Loader for MemStore {
    fn load(&mut self, doc: &DocumentId) -> Result<Option<Vec<Vec<u8>>>, String> {
        Ok(self.chunks.get(doc).cloned())
    }
    fn load_sync_state(&mut self, doc: &DocumentId, peer: &str) -> Option<Vec<u8>> {
        self.states.get(&(*doc, peer.to_string())).cloned()
    }
    fn resolve(&mut self, prefix: &Prefix) -> Resolved {
        let found: Vec<DocumentId> = self
            .chunks
            .keys()
            .filter(|d| summary::prefix(d) == *prefix)
            .copied()
            .collect();
        match found.as_slice() {
            [] => Resolved::None,
            [one] => Resolved::One(*one),
            _ => Resolved::Many,
        }
    }
}

struct Server {
    hub: Hub,
    store: MemStore,
}

impl Server {
    fn new() -> Server {
        Server {
            hub: Hub::new(
                "server".into(),
                "server-storage".into(),
                0,
                HubConfig::default(),
            ),
            store: MemStore::default(),
        }
    }

    /// Carry out actions: persist (and flush at once), save sync states; returns the frames
    /// sent to each connection.
    fn execute(&mut self, actions: Vec<Action>) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pending = actions;
        while !pending.is_empty() {
            let mut wrote = false;
            for a in std::mem::take(&mut pending) {
                match a {
                    Action::Send(c, f) => out.push((c, f)),
                    Action::Persist {
                        doc,
                        chunk,
                        snapshot,
                        ..
                    } => {
                        let chunks = self.store.chunks.entry(doc).or_default();
                        if snapshot {
                            chunks.clear();
                        }
                        chunks.push(chunk);
                        wrote = true;
                    }
                    Action::SaveSyncState {
                        doc,
                        peer_storage,
                        state,
                    } => {
                        self.store.states.insert((doc, peer_storage), state);
                    }
                    _ => {}
                }
            }
            if wrote {
                pending = self.hub.flushed(self.hub.seq());
            }
        }
        out
    }

    fn merge(&mut self, doc: DocumentId, bytes: &[u8]) {
        let actions = self.hub.merge(doc, bytes, &mut self.store).unwrap();
        self.execute(actions);
    }

    fn heads(&mut self, doc: DocumentId) -> Vec<automerge::ChangeHash> {
        let mut h = match self.hub.heads(doc) {
            Some(h) => h,
            None => self.store.heads(&doc).unwrap().unwrap_or_default(),
        };
        h.sort();
        h
    }
}

/// What one connection sent.
#[derive(Default, Debug)]
struct Sent {
    /// Documents named in per-document messages (`sync`/`request`) from the tablet.
    per_document: BTreeSet<DocumentId>,
    per_document_frames: usize,
    summary: SummaryStats,
}

/// A tablet connection `conn` from connect to quiet: every frame carried both ways until none
/// is left. The connection stays open (watching) until `disconnect`.
fn connect(server: &mut Server, conn: u64, tablet: &mut Replica) -> (DeviceSession, Sent) {
    server.hub.connect(conn, Arc::new(AllowAll));
    let (mut session, join) = DeviceSession::start(tablet);
    let mut sent = Sent::default();
    carry(server, conn, tablet, &mut session, vec![join], &mut sent);
    sent.summary = session.summary();
    assert!(session.is_complete(), "{:?}", session.unconfirmed());
    (session, sent)
}

fn carry(
    server: &mut Server,
    conn: u64,
    tablet: &mut Replica,
    session: &mut DeviceSession,
    mut to_server: Vec<Vec<u8>>,
    sent: &mut Sent,
) {
    let mut rounds = 0;
    while !to_server.is_empty() {
        rounds += 1;
        assert!(rounds < 1000, "no quiet");
        let mut to_tablet = Vec::new();
        for frame in std::mem::take(&mut to_server) {
            match Message::decode(&frame).unwrap() {
                Message::Sync { document_id, .. } | Message::Request { document_id, .. } => {
                    sent.per_document.insert(document_id.parse().unwrap());
                    sent.per_document_frames += 1;
                }
                _ => {}
            }
            let actions = server.hub.receive(conn, &frame, &mut server.store);
            to_tablet.extend(server.execute(actions));
        }
        for (c, frame) in to_tablet {
            if c == conn {
                to_server.extend(session.receive(tablet, &frame).unwrap());
            }
        }
    }
}

fn disconnect(server: &mut Server, conn: u64, tablet: &mut Replica, session: DeviceSession) {
    session.save(tablet).unwrap();
    let actions = server.hub.disconnect(conn);
    server.execute(actions);
}

/// A server holding the example facility, and its patients' ids.
fn server_with_facility() -> (Server, String, Vec<String>) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/sunnyvale.json"
    ))
    .unwrap();
    let data = parse_data_file(&text).unwrap();
    let mut source = Replica::in_memory();
    source.import(&data, now()).unwrap();
    let mut server = Server::new();
    for id in source.document_ids() {
        let bytes = source.document(id).unwrap().save();
        server.merge(id, &bytes);
    }
    let facility = source.facility_id().unwrap().to_string();
    (server, facility, source.patient_ids())
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap()
}

fn tablet(dir: &tempfile::TempDir, facility: &str) -> Replica {
    let mut r = Replica::open(dir.path()).unwrap();
    r.join_facility(facility).unwrap();
    r
}

/// A tablet's documents that differ from the server's.
fn stale(server: &mut Server, tablet: &Replica) -> BTreeSet<DocumentId> {
    tablet
        .documents_to_sync()
        .into_iter()
        .filter(|d| {
            let mut ours = tablet.heads(*d).unwrap_or_default();
            ours.sort();
            ours != server.heads(*d)
        })
        .collect()
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
    disconnect(&mut server, 1, &mut tab, s);

    // Reconnect with nothing changed: one summary of 16 bytes a document, nothing else.
    let (s, idle) = connect(&mut server, 2, &mut tab);
    assert_eq!(idle.summary.summarized, docs);
    assert_eq!((idle.summary.differ, idle.summary.unknown), (0, 0));
    assert_eq!(idle.per_document_frames, 0, "{idle:?}");
    assert!(
        idle.summary.bytes <= 16 * docs + 128,
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
    let (mut a, mut b) = (tablet(&da, &facility), tablet(&db, &facility));
    for (conn, t) in [(1, &mut a), (2, &mut b)] {
        let (s, _) = connect(&mut server, conn, t);
        disconnect(&mut server, conn, t, s);
    }
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
    let (mut a, mut b) = (tablet(&da, &facility), tablet(&db, &facility));
    for (conn, t) in [(1, &mut a), (2, &mut b)] {
        let (s, _) = connect(&mut server, conn, t);
        disconnect(&mut server, conn, t, s);
    }
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
    assert_eq!(a.heads(doc).map(sorted), Some(server.heads(doc)));
    assert!(stale(&mut server, &a).is_empty());
    disconnect(&mut server, 3, &mut a, sa);
    disconnect(&mut server, 4, &mut b, sb);
}

fn sorted(mut h: Vec<automerge::ChangeHash>) -> Vec<automerge::ChangeHash> {
    h.sort();
    h
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
    assert_eq!(unknown, vec![[5; 8], [8; 8]]);
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
        entries: vec![0; 16 * 3],
    };
    let out = server.hub.receive(1, &msg.encode(), &mut server.store);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Close(1, r) if r.contains("summary of 3")))
    );
}
