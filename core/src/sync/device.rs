//! `DeviceSession`: the device side of the protocol as a sans-IO state machine over a
//! [`Replica`]. Feed it the server's frames; it returns the frames to send and tracks which
//! documents the server has confirmed (its heads include all of ours).

use std::collections::{BTreeMap, HashMap};

use super::summary::{self, Prefix};
use super::wire::{CAP_ANSWERS_EVERY_SYNC, CAP_SUMMARY, Message, PROTOCOL_VERSION, PeerMetadata};
use crate::ids::DocumentId;
use crate::replica::{Replica, ReplicaError};

/// Where one document stands in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocProgress {
    /// Messages still going back and forth.
    Syncing,
    /// The server holds every change we hold (and we hold every change it has).
    Confirmed,
    /// The server does not have it and we do not either.
    Unavailable,
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("server sent a bad frame: {0}")]
    BadFrame(String),
    #[error("server error: {0}")]
    Server(String),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// What the summary exchange of a session did (all zero when the server does not speak it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SummaryStats {
    /// Documents listed in the summary.
    pub summarized: usize,
    /// Of those, documents the server named as changed.
    pub differ: usize,
    /// Of those, documents the server could not resolve (synced one by one).
    pub unknown: usize,
    /// Bytes of the summary frame.
    pub bytes: usize,
    /// Documents synced one by one from the start (local changes, new, or sharing a prefix).
    pub direct: usize,
}

/// One connection's worth of syncing.
pub struct DeviceSession {
    peer_id: String,
    /// The server's peer id and the key its sync states are kept under (its storage id).
    server: Option<(String, String)>,
    docs: BTreeMap<DocumentId, DocProgress>,
    /// The server answers every sync message, changed document or not (a Rounds server): never
    /// settle by silence, wait for its answers (a loaded server can be quiet for a while).
    server_answers_all: bool,
    /// Summarized documents awaiting the server's reply, by prefix.
    summarized: HashMap<Prefix, DocumentId>,
    summary: SummaryStats,
}

impl DeviceSession {
    /// A new session and the `join` frame to send first.
    pub fn start(replica: &Replica) -> (DeviceSession, Vec<u8>) {
        // A fresh peer id per connection (as automerge-repo's own peers do): a server keeps
        // in-memory sync state per peer id, and a state that outlived its connection remembers
        // changes "sent" into a closed socket and would never send them again. What persists
        // across connections is keyed by the storage id (the replica's actor) instead.
        let session = uuid::Uuid::new_v4().simple().to_string();
        // Short, because every sync message carries it: an actor prefix for the logs + 48 random bits.
        let actor = replica.actor();
        let peer_id = format!(
            "device-{}-{}",
            actor.get(..8).unwrap_or(&actor),
            &session[..12]
        );
        let join = Message::Join {
            sender_id: peer_id.clone(),
            peer_metadata: PeerMetadata {
                storage_id: Some(replica.actor()),
                is_ephemeral: false,
                capabilities: vec![CAP_SUMMARY.into()],
            },
            supported_protocol_versions: vec![PROTOCOL_VERSION.into()],
        };
        (
            DeviceSession {
                peer_id,
                server: None,
                docs: BTreeMap::new(),
                server_answers_all: false,
                summarized: HashMap::new(),
                summary: SummaryStats::default(),
            },
            join.encode(),
        )
    }

    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The key the server's sync states are kept under (its storage id), once it has answered.
    pub fn server_key(&self) -> Option<&str> {
        self.server.as_ref().map(|(_, k)| k.as_str())
    }

    /// (confirmed or unavailable, total) documents.
    pub fn progress(&self) -> (usize, usize) {
        let done = self
            .docs
            .values()
            .filter(|p| **p != DocProgress::Syncing)
            .count();
        (done, self.docs.len())
    }

    /// Documents the server has not confirmed yet.
    pub fn unconfirmed(&self) -> Vec<DocumentId> {
        self.docs
            .iter()
            .filter(|(_, p)| **p == DocProgress::Syncing)
            .map(|(d, _)| *d)
            .collect()
    }

    /// Whether the handshake is done and every document is confirmed or unavailable.
    pub fn is_complete(&self) -> bool {
        self.server.is_some() && self.docs.values().all(|p| *p != DocProgress::Syncing)
    }

    /// What the summary exchange did in this session.
    pub fn summary(&self) -> SummaryStats {
        self.summary
    }

    /// The status of each document.
    pub fn documents(&self) -> &BTreeMap<DocumentId, DocProgress> {
        &self.docs
    }

    fn sync_frame(&self, replica: &mut Replica, doc: DocumentId) -> Option<Vec<u8>> {
        let (server, key) = self.server.as_ref()?;
        let data = replica.generate_sync_message(doc, key)?;
        let (sender_id, target_id, document_id) =
            (self.peer_id.clone(), server.clone(), doc.to_string());
        Some(
            if replica.has_document(doc) {
                Message::Sync {
                    sender_id,
                    target_id,
                    document_id,
                    data,
                }
            } else {
                Message::Request {
                    sender_id,
                    target_id,
                    document_id,
                    data,
                }
            }
            .encode(),
        )
    }

    /// Start syncing documents not yet in the session; returns frames to send.
    fn add_documents(&mut self, replica: &mut Replica) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for doc in replica.documents_to_sync() {
            if self.docs.contains_key(&doc) {
                continue;
            }
            self.docs.insert(doc, DocProgress::Syncing);
            out.extend(self.sync_frame(replica, doc));
        }
        out
    }

    /// Start the session with a summary (the server speaks `rounds/summary/1`): documents
    /// unchanged since the last confirmed sync go into one `rounds-summary`; the others (local
    /// changes, never synced, or sharing an id prefix with another) are synced one by one now.
    fn start_with_summary(&mut self, replica: &mut Replica) -> Vec<Vec<u8>> {
        let Some((server, key)) = self.server.clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut candidates = Vec::new();
        let mut direct = Vec::new();
        let mut per_prefix: HashMap<Prefix, usize> = HashMap::new();
        for doc in replica.documents_to_sync() {
            self.docs.insert(doc, DocProgress::Syncing);
            match replica.heads_if_shared(doc, &key) {
                Some(heads) => {
                    *per_prefix.entry(summary::prefix(&doc)).or_default() += 1;
                    candidates.push((doc, heads));
                }
                None => direct.push(doc),
            }
        }
        let salt = uuid::Uuid::new_v4().into_bytes().to_vec();
        let mut entries = Vec::new();
        for (doc, heads) in candidates {
            let prefix = summary::prefix(&doc);
            if per_prefix.get(&prefix) == Some(&1) {
                entries.extend_from_slice(&summary::entry(&salt, &doc, &heads));
                self.summarized.insert(prefix, doc);
            } else {
                // Two documents share the prefix: neither is summarized.
                direct.push(doc);
            }
        }
        direct.sort();
        direct.dedup();
        self.summary.direct = direct.len();
        for doc in direct {
            out.extend(self.sync_frame(replica, doc));
        }
        if !self.summarized.is_empty() {
            self.summary.summarized = self.summarized.len();
            let frame = Message::Summary {
                sender_id: self.peer_id.clone(),
                target_id: server,
                salt,
                entries,
            }
            .encode();
            self.summary.bytes = frame.len();
            out.push(frame);
        }
        out
    }

    /// The server's `rounds-summary-reply`: changed and unresolved documents are synced one by
    /// one, every other summarized document is confirmed as it is.
    fn summary_reply(
        &mut self,
        replica: &mut Replica,
        differ: &[u8],
        unknown: &[u8],
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let pending = std::mem::take(&mut self.summarized);
        let mut resync = Vec::new();
        for doc in summary::document_ids(differ) {
            // Only documents this session summarized (a server cannot add others this way).
            if pending.get(&summary::prefix(&doc)) == Some(&doc) {
                resync.push(doc);
                self.summary.differ += 1;
            }
        }
        for p in summary::prefixes(unknown) {
            if let Some(doc) = pending.get(&p) {
                resync.push(*doc);
                self.summary.unknown += 1;
            }
        }
        for doc in pending.values() {
            if !resync.contains(doc) {
                self.docs.insert(*doc, DocProgress::Confirmed);
            }
        }
        for doc in resync {
            out.extend(self.sync_frame(replica, doc));
        }
        out
    }

    /// Save the session's sync states (shared heads) for the next connection; call when the
    /// connection ends, however it ends.
    pub fn save(&self, replica: &mut Replica) -> Result<(), SessionError> {
        if let Some((_, key)) = &self.server {
            replica.save_sync_states(key)?;
        }
        Ok(())
    }

    /// The server has been quiet: documents that did not change since the last confirmed sync
    /// are confirmed (some servers, like the automerge-repo reference server, do not answer a
    /// peer that has nothing new). Returns whether the session is complete.
    pub fn settle(&mut self, replica: &Replica) -> bool {
        if self.server_answers_all {
            return self.is_complete();
        }
        if let Some((_, key)) = &self.server {
            for (doc, status) in self.docs.iter_mut() {
                if *status == DocProgress::Syncing && replica.in_sync_with(*doc, key) {
                    *status = DocProgress::Confirmed;
                }
            }
        }
        self.is_complete()
    }

    /// A frame from the server; returns the frames to send in reply.
    pub fn receive(
        &mut self,
        replica: &mut Replica,
        frame: &[u8],
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        let msg = Message::decode(frame).map_err(|e| SessionError::BadFrame(e.to_string()))?;
        match msg {
            Message::Peer {
                sender_id,
                peer_metadata,
                ..
            } => {
                // Negotiated, not guessed from the server's name.
                let answers_all = peer_metadata.has(CAP_ANSWERS_EVERY_SYNC);
                let speaks_summary = peer_metadata.has(CAP_SUMMARY);
                let key = peer_metadata
                    .storage_id
                    .unwrap_or_else(|| sender_id.clone());
                // A new connection is a new sync session; shared heads persist on disk.
                replica.reset_sync_sessions(&key);
                self.server_answers_all = answers_all;
                self.server = Some((sender_id, key));
                if speaks_summary && self.docs.is_empty() {
                    return Ok(self.start_with_summary(replica));
                }
                Ok(self.add_documents(replica))
            }
            Message::SummaryReply {
                differ, unknown, ..
            } => {
                if self.server.is_none() {
                    return Err(SessionError::BadFrame("summary reply before peer".into()));
                }
                Ok(self.summary_reply(replica, &differ, &unknown))
            }
            Message::Sync {
                document_id, data, ..
            }
            | Message::Request {
                document_id, data, ..
            } => {
                let Some((_, key)) = self.server.clone() else {
                    return Err(SessionError::BadFrame("sync before peer".into()));
                };
                let doc: DocumentId = document_id.parse().map_err(|_| {
                    SessionError::BadFrame(format!("bad document id {document_id:?}"))
                })?;
                replica.receive_sync_message(doc, &key, &data)?;
                let mut out: Vec<Vec<u8>> = self.sync_frame(replica, doc).into_iter().collect();
                let confirmed = replica.in_sync_with(doc, &key);
                self.docs.insert(
                    doc,
                    if confirmed {
                        DocProgress::Confirmed
                    } else {
                        DocProgress::Syncing
                    },
                );
                // The facility document lists patients and months: when it changes, sync the
                // documents it lists too (only then: listing them all hashes every id).
                if replica.facility_id().map(DocumentId::facility) == Some(doc) {
                    out.extend(self.add_documents(replica));
                }
                Ok(out)
            }
            Message::DocUnavailable { document_id, .. } => {
                if let Ok(doc) = document_id.parse::<DocumentId>() {
                    let status = if replica.has_document(doc) {
                        DocProgress::Syncing
                    } else {
                        DocProgress::Unavailable
                    };
                    self.docs.insert(doc, status);
                }
                Ok(Vec::new())
            }
            Message::Error { message, .. } => Err(SessionError::Server(message)),
            _ => Ok(Vec::new()),
        }
    }
}
