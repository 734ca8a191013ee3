//! The deterministic sync harness: a hub over an in-memory store and tablets (replicas on disk)
//! whose frames are carried by hand, so every per-document message can be counted.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use rounds_core::sync::device::{DeviceSession, SummaryStats};
use rounds_core::sync::hub::{Action, AllowAll, Hub, HubConfig, IdleCache, Loader};
use rounds_core::sync::summary::{self, Prefix, Resolved};
use rounds_core::sync::wire::Message;
use rounds_core::{DocumentId, Replica, parse_data_file};

/// The server's store: chunks per document, sync states per (document, peer).
#[derive(Default)]
pub struct MemStore {
    pub chunks: BTreeMap<DocumentId, Vec<Vec<u8>>>,
    pub states: HashMap<(DocumentId, String), Vec<u8>>,
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

pub struct Server {
    pub hub: Hub,
    pub store: MemStore,
}

impl Server {
    pub fn new() -> Server {
        Server {
            hub: Hub::new(
                "server".into(),
                "server-storage".into(),
                0,
                // No idle cache: a document in memory is one an exchange uses (the cache's
                // own behaviour is tested in hub_memory.rs).
                HubConfig {
                    idle_cache: IdleCache::new(0),
                    ..HubConfig::default()
                },
            ),
            store: MemStore::default(),
        }
    }

    /// Carry out actions: persist (and flush at once), save sync states; returns the frames
    /// sent to each connection.
    pub fn execute(&mut self, actions: Vec<Action>) -> Vec<(u64, Vec<u8>)> {
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

    pub fn merge(&mut self, doc: DocumentId, bytes: &[u8]) {
        let actions = self.hub.merge(doc, bytes, &mut self.store).unwrap();
        self.execute(actions);
    }

    pub fn heads(&mut self, doc: DocumentId) -> Vec<automerge::ChangeHash> {
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
pub struct Sent {
    /// Documents named in per-document messages (`sync`/`request`) from the tablet.
    pub per_document: BTreeSet<DocumentId>,
    pub per_document_frames: usize,
    pub summary: SummaryStats,
}

/// A tablet connection `conn` from connect to quiet: every frame carried both ways until none
/// is left. The connection stays open (watching) until `disconnect`.
pub fn connect(server: &mut Server, conn: u64, tablet: &mut Replica) -> (DeviceSession, Sent) {
    server.hub.connect(conn, Arc::new(AllowAll));
    let (mut session, join) = DeviceSession::start(tablet);
    let mut sent = Sent::default();
    carry(server, conn, tablet, &mut session, vec![join], &mut sent);
    sent.summary = session.summary();
    assert!(session.is_complete(), "{:?}", session.unconfirmed());
    (session, sent)
}

pub fn carry(
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

pub fn disconnect(server: &mut Server, conn: u64, tablet: &mut Replica, session: DeviceSession) {
    session.save(tablet).unwrap();
    let actions = server.hub.disconnect(conn);
    server.execute(actions);
}

/// A server holding the example facility, and its patients' ids.
pub fn server_with_facility() -> (Server, String, Vec<String>) {
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

pub fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap()
}

pub fn tablet(dir: &tempfile::TempDir, facility: &str) -> Replica {
    let mut r = Replica::open(dir.path()).unwrap();
    r.join_facility(facility).unwrap();
    r
}

/// A tablet's documents that differ from the server's.
pub fn stale(server: &mut Server, tablet: &Replica) -> BTreeSet<DocumentId> {
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

pub fn sorted(mut h: Vec<automerge::ChangeHash>) -> Vec<automerge::ChangeHash> {
    h.sort();
    h
}
