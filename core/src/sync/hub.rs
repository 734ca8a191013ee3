//! `Hub`: the server side of the protocol as a sans-IO state machine.
//!
//! The shell (the `rounds serve` server) feeds it frames per connection and executes the
//! [`Action`]s it returns, in order: frames to send, connections to close, chunks to persist,
//! sync states to save. Loading a document or a sync state is a synchronous call on a
//! [`Loader`] (the store's reads are local). Time never enters.
//!
//! **Durability contract.** Every change the hub accepts is handed out as a `Persist` action with
//! a sequence number; a document with a persisted-but-not-yet-flushed change is *held*: no sync
//! message about it is generated until the shell reports [`Hub::flushed`] for that sequence. So
//! no peer ever sees heads the server has not made durable.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash};

use super::gate::{self, GateLimits};
use super::summary;
use super::wire::{CAP_ANSWERS_EVERY_SYNC, CAP_SUMMARY, Message, PROTOCOL_VERSION, PeerMetadata};
use crate::ids::DocumentId;

/// A connection, numbered by the shell.
pub type ConnId = u64;

/// Local reads the hub needs: a document's stored bytes and a peer's saved sync state.
pub trait Loader {
    /// Every stored chunk of the document, or `None` when the store does not have it.
    fn load(&mut self, doc: &DocumentId) -> Result<Option<Vec<Vec<u8>>>, String>;
    /// The sync state saved for (document, peer storage id).
    fn load_sync_state(&mut self, doc: &DocumentId, peer_storage: &str) -> Option<Vec<u8>>;
    /// A stored document's heads, `None` when the store does not have it. The default loads the
    /// document; a store that keeps heads beside the chunks answers without loading.
    fn heads(&mut self, doc: &DocumentId) -> Result<Option<Vec<ChangeHash>>, String> {
        let Some(chunks) = self.load(doc)? else {
            return Ok(None);
        };
        let mut d = Automerge::new();
        for chunk in &chunks {
            d.load_incremental(chunk).map_err(|e| e.to_string())?;
        }
        Ok(Some(d.get_heads()))
    }
    /// Which stored document has this id prefix (for the summary exchange). The default knows
    /// none, so every summarized document of such a store is synced one by one.
    fn resolve(&mut self, _prefix: &summary::Prefix) -> summary::Resolved {
        summary::Resolved::None
    }
}

/// A store that holds nothing: every document the hub is asked for is new (tests, fuzzing).
pub struct EmptyStore;

impl Loader for EmptyStore {
    fn load(&mut self, _: &DocumentId) -> Result<Option<Vec<Vec<u8>>>, String> {
        Ok(None)
    }
    fn load_sync_state(&mut self, _: &DocumentId, _: &str) -> Option<Vec<u8>> {
        None
    }
}

/// Which documents a connection may see. The security layer supplies the real policy.
pub trait Access: Send + Sync {
    fn allows(&self, doc: &DocumentId) -> bool;
    /// What the document is, for the write policy: `None` means the connection is trusted
    /// (the development token) and its changes are screened by the gate but not policy-checked.
    fn scope(&self, _doc: &DocumentId) -> Option<crate::policy::DocScope> {
        None
    }
    /// Whether every document this connection may see lives in this hub, so the hub can answer
    /// its summary and watch its documents. A connection whose documents span hubs (the
    /// development token's) answers `false`: every summarized document comes back as unknown and
    /// is synced one by one, where it lives.
    fn summarizable(&self) -> bool {
        true
    }
}

/// Allow every document (development and tests).
pub struct AllowAll;

impl Access for AllowAll {
    fn allows(&self, _: &DocumentId) -> bool {
        true
    }
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(ConnId, Vec<u8>),
    /// Close the connection after sending what came before; the reason is for logs.
    Close(ConnId, String),
    /// Store a chunk. With `snapshot`, the chunk holds the whole document and replaces every
    /// stored chunk of it with a smaller sequence number.
    Persist {
        doc: DocumentId,
        seq: u64,
        chunk: Vec<u8>,
        snapshot: bool,
    },
    SaveSyncState {
        doc: DocumentId,
        peer_storage: String,
        state: Vec<u8>,
    },
    /// An access was refused (for the audit log).
    Denied {
        conn: ConnId,
        doc: String,
    },
    /// A document was read into memory from the store.
    Loaded(DocumentId),
    /// A change (or a whole message) was refused by the gate or the write policy: nothing of
    /// the message was stored or fanned out, and the connection is being closed. `bytes` are
    /// what to quarantine (the refused change, or the message when it did not decode).
    Refused {
        conn: ConnId,
        doc: DocumentId,
        /// Hex hash of the refused change (None when the message was refused before parsing).
        change: Option<String>,
        rule: crate::policy::Rule,
        detail: String,
        bytes: Vec<u8>,
    },
    /// A connection synced a document; `wrote` when it brought changes (for the audit log).
    Accessed {
        conn: ConnId,
        doc: DocumentId,
        wrote: bool,
    },
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Incremental chunks after which a document is compacted into a snapshot.
    pub compact_after: usize,
    /// Documents one connection may sync at once.
    pub max_docs_per_conn: usize,
    /// Caps on the work one incoming message may cost.
    pub gate: GateLimits,
    /// Actors no device may write with (the server's own), besides the genesis actor.
    pub reserved_actors: Vec<automerge::ActorId>,
    /// A peer whose exchange about a document is over (it holds our heads, we have nothing to
    /// say) stops being a peer and watches the document instead, and a document with no peer
    /// left leaves memory: resident documents are those in an exchange or held for a flush,
    /// not every document a connection touched. Off, a document stays while any connection
    /// that synced it is open.
    pub demote_in_sync: bool,
    /// How many documents no exchange uses may stay in memory, across every hub sharing this
    /// configuration (one per facility), so that a document asked for again soon is not
    /// reloaded from the store: the least recently used leaves first. 0: a document leaves as
    /// soon as nobody uses it. A hub evicts only its own documents (when it parks one and the
    /// shared count is over), so the bound holds while a facility gone quiet keeps its share.
    pub idle_cache: IdleCache,
}

/// The budget of idle documents kept in memory (see [`HubConfig::idle_cache`]): a limit and the
/// count shared by the hubs cloned from one configuration.
#[derive(Debug, Clone)]
pub struct IdleCache {
    pub limit: usize,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl IdleCache {
    /// A budget of `limit` idle documents, to share by cloning.
    pub fn new(limit: usize) -> IdleCache {
        IdleCache {
            limit,
            count: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// Idle documents in memory now, across the hubs sharing the budget.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Idle documents kept by default: a few facilities' working sets (a facility of 200 residents
/// has ~400 documents), tens of MiB.
pub const DEFAULT_IDLE_DOCUMENTS: usize = 2_000;

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            compact_after: 64,
            max_docs_per_conn: 100_000,
            gate: GateLimits::default(),
            reserved_actors: Vec::new(),
            demote_in_sync: true,
            idle_cache: IdleCache::new(DEFAULT_IDLE_DOCUMENTS),
        }
    }
}

struct HubDoc {
    doc: Automerge,
    /// The document saved whole at these heads, for peers that start from nothing.
    saved: Option<(Vec<ChangeHash>, Vec<u8>)>,
    /// Sequence number of the last persisted change.
    last_seq: u64,
    chunks: usize,
    peers: BTreeSet<ConnId>,
}

struct HubConn {
    peer_id: Option<String>,
    metadata: PeerMetadata,
    states: HashMap<DocumentId, sync::State>,
    access: Arc<dyn Access>,
    /// Highest ephemeral count seen per (sender, session).
    ephemeral_seen: HashMap<String, u64>,
    /// The device behind the connection (None: a trusted connection, such as the development
    /// token's). A `join` may only take over a peer id of the same device.
    device: Option<String>,
    /// Documents this peer sent a message about while they were held: it is owed an answer
    /// when they are released, even one Automerge would skip (see [`Hub::pump`]).
    owed: HashSet<DocumentId>,
    /// Documents the peer's summary showed in sync, with the heads they had then: not loaded,
    /// not synced, until they change (see [`Hub::watch`]).
    watching: HashMap<DocumentId, Vec<ChangeHash>>,
}

/// The server's documents and connections.
pub struct Hub {
    peer_id: String,
    storage_id: String,
    config: HubConfig,
    /// Where sequence numbers come from: shared by every hub of a store, so numbers are unique
    /// across them.
    sequence: Arc<std::sync::atomic::AtomicU64>,
    /// The last sequence number this hub handed out.
    seq: u64,
    flushed: u64,
    docs: HashMap<DocumentId, HubDoc>,
    conns: HashMap<ConnId, HubConn>,
    /// Connections that asked for a document the server does not have (yet).
    waiting: HashMap<DocumentId, BTreeSet<ConnId>>,
    /// Connections watching each document (see [`HubConn::watching`]).
    watchers: HashMap<DocumentId, BTreeSet<ConnId>>,
    /// Changes refused per document: a later change that depends on one is refused too.
    refused: HashMap<DocumentId, std::collections::HashSet<automerge::ChangeHash>>,
    /// Documents whose last exchange ended, by when (a tick): the eviction order. An entry may
    /// be stale (the document is in use again); eviction skips it then.
    idle: std::collections::BTreeMap<u64, DocumentId>,
    idle_since: HashMap<DocumentId, u64>,
    tick: u64,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.config
            .idle_cache
            .count
            .fetch_sub(self.idle.len(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl Hub {
    /// `seq` continues the store's sequence numbers (the largest one stored).
    pub fn new(peer_id: String, storage_id: String, seq: u64, config: HubConfig) -> Hub {
        Hub::with_sequence(
            peer_id,
            storage_id,
            Arc::new(std::sync::atomic::AtomicU64::new(seq)),
            config,
        )
    }

    /// A hub that takes its sequence numbers from `sequence`, shared with the other hubs of the
    /// same store (one hub per facility). Each hub releases its held documents only when told
    /// that its own last number is durable ([`Hub::flushed`] with [`Hub::seq`]).
    pub fn with_sequence(
        peer_id: String,
        storage_id: String,
        sequence: Arc<std::sync::atomic::AtomicU64>,
        config: HubConfig,
    ) -> Hub {
        let seq = sequence.load(std::sync::atomic::Ordering::SeqCst);
        Hub {
            peer_id,
            storage_id,
            config,
            sequence,
            seq,
            flushed: seq,
            docs: HashMap::new(),
            conns: HashMap::new(),
            waiting: HashMap::new(),
            watchers: HashMap::new(),
            refused: HashMap::new(),
            idle: std::collections::BTreeMap::new(),
            idle_since: HashMap::new(),
            tick: 0,
        }
    }

    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// Documents held in memory.
    pub fn loaded_documents(&self) -> usize {
        self.docs.len()
    }

    /// The last sequence number this hub handed out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Register a new connection with its access policy (a trusted connection, of no device).
    pub fn connect(&mut self, conn: ConnId, access: Arc<dyn Access>) {
        self.connect_device(conn, access, None);
    }

    /// Register a new connection of a device with its access policy.
    pub fn connect_device(
        &mut self,
        conn: ConnId,
        access: Arc<dyn Access>,
        device: Option<String>,
    ) {
        self.conns.insert(
            conn,
            HubConn {
                peer_id: None,
                metadata: PeerMetadata::default(),
                states: HashMap::new(),
                access,
                ephemeral_seen: HashMap::new(),
                device,
                owed: HashSet::new(),
                watching: HashMap::new(),
            },
        );
    }

    /// The peer id a connection announced.
    pub fn peer_of(&self, conn: ConnId) -> Option<&str> {
        self.conns.get(&conn).and_then(|c| c.peer_id.as_deref())
    }

    fn error(&self, conn: ConnId, reason: String) -> Vec<Action> {
        let target_id = self.conns.get(&conn).and_then(|c| c.peer_id.clone());
        vec![
            Action::Send(
                conn,
                Message::Error {
                    sender_id: Some(self.peer_id.clone()),
                    target_id,
                    message: reason.clone(),
                }
                .encode(),
            ),
            Action::Close(conn, reason),
        ]
    }

    /// A frame from a connection.
    pub fn receive(&mut self, conn: ConnId, frame: &[u8], loader: &mut dyn Loader) -> Vec<Action> {
        if !self.conns.contains_key(&conn) {
            return Vec::new();
        }
        match Message::decode(frame) {
            Ok(m) => self.receive_message(conn, m, loader),
            Err(e) => self.error(conn, format!("bad frame: {e}")),
        }
    }

    /// A decoded frame from a connection (the shell decoded it to route it).
    pub fn receive_message(
        &mut self,
        conn: ConnId,
        msg: Message,
        loader: &mut dyn Loader,
    ) -> Vec<Action> {
        if !self.conns.contains_key(&conn) {
            return Vec::new();
        }
        let joined = self.conns.get(&conn).is_some_and(|c| c.peer_id.is_some());
        match msg {
            Message::Join {
                sender_id,
                peer_metadata,
                supported_protocol_versions,
            } => {
                if !supported_protocol_versions
                    .iter()
                    .any(|v| v == PROTOCOL_VERSION)
                {
                    return self.error(
                        conn,
                        "unsupported protocol version; this server speaks \"1\"".into(),
                    );
                }
                let mut actions = Vec::new();
                // A peer id in use by another device's connection is not taken over: that
                // would let one device disconnect another by naming its peer id.
                let device = self.conns.get(&conn).and_then(|c| c.device.clone());
                let foreign = self.conns.iter().any(|(id, c)| {
                    *id != conn
                        && c.peer_id.as_deref() == Some(sender_id.as_str())
                        && c.device != device
                });
                if foreign {
                    return self.error(
                        conn,
                        "peer id in use by another device's connection; use a fresh peer id per connection".into(),
                    );
                }
                // A re-join from the same peer (same device) replaces its older connection.
                let stale: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(id, c)| {
                        **id != conn && c.peer_id.as_deref() == Some(sender_id.as_str())
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for old in stale {
                    actions.extend(self.disconnect(old));
                    actions.push(Action::Close(
                        old,
                        "replaced by a newer join from the same peer".into(),
                    ));
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.peer_id = Some(sender_id.clone());
                    c.metadata = peer_metadata;
                }
                actions.push(Action::Send(
                    conn,
                    Message::Peer {
                        sender_id: self.peer_id.clone(),
                        target_id: sender_id,
                        peer_metadata: PeerMetadata {
                            storage_id: Some(self.storage_id.clone()),
                            is_ephemeral: false,
                            capabilities: vec![CAP_ANSWERS_EVERY_SYNC.into(), CAP_SUMMARY.into()],
                        },
                        selected_protocol_version: PROTOCOL_VERSION.into(),
                    }
                    .encode(),
                ));
                actions
            }
            _ if !joined => self.error(conn, "expected a join message first".into()),
            Message::Request {
                target_id,
                document_id,
                data,
                ..
            } if target_id == self.peer_id => {
                self.receive_sync(conn, &document_id, &data, true, loader)
            }
            Message::Sync {
                target_id,
                document_id,
                data,
                ..
            } if target_id == self.peer_id => {
                self.receive_sync(conn, &document_id, &data, false, loader)
            }
            Message::Request { .. } | Message::Sync { .. } => Vec::new(),
            Message::Summary {
                target_id,
                salt,
                entries,
                ..
            } if target_id == self.peer_id => self.receive_summary(conn, &salt, &entries, loader),
            Message::Summary { .. } | Message::SummaryReply { .. } => Vec::new(),
            Message::Ephemeral {
                sender_id,
                document_id,
                session_id,
                count,
                data,
                ..
            } => self.relay_ephemeral(conn, sender_id, document_id, session_id, count, data),
            Message::Error { message, .. } => {
                vec![Action::Close(conn, format!("peer error: {message}"))]
            }
            Message::Peer { .. } => self.error(conn, "unexpected peer message".into()),
            Message::DocUnavailable { .. }
            | Message::RemoteSubscriptionChange { .. }
            | Message::RemoteHeadsChanged { .. }
            | Message::Leave { .. } => Vec::new(),
        }
    }

    /// Refuse a message: nothing stored or fanned out, the change quarantined, the device told
    /// which rule it broke, the connection closed.
    fn refuse(
        &mut self,
        conn: ConnId,
        doc: DocumentId,
        change: Option<String>,
        rule: crate::policy::Rule,
        detail: String,
        bytes: Vec<u8>,
    ) -> Vec<Action> {
        let mut reason = format!("refused: document {doc}");
        if let Some(h) = &change {
            reason.push_str(&format!(" change {h}"));
        }
        reason.push_str(&format!(" rule {rule}: {detail}"));
        let mut out = vec![Action::Refused {
            conn,
            doc,
            change,
            rule,
            detail,
            bytes,
        }];
        out.extend(self.error(conn, reason));
        out
    }

    fn unavailable(&self, conn: ConnId, document_id: &str) -> Action {
        unavailable_action(&self.peer_id, &self.conns, conn, document_id)
    }

    fn receive_sync(
        &mut self,
        conn: ConnId,
        document_id: &str,
        data: &[u8],
        is_request: bool,
        loader: &mut dyn Loader,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Ok(doc_id) = document_id.parse::<DocumentId>() else {
            return vec![self.unavailable(conn, document_id)];
        };
        let Some(c) = self.conns.get(&conn) else {
            return actions;
        };
        if !c.access.allows(&doc_id) {
            return vec![
                Action::Denied {
                    conn,
                    doc: document_id.to_string(),
                },
                self.unavailable(conn, document_id),
            ];
        }
        if !c.states.contains_key(&doc_id) && c.states.len() >= self.config.max_docs_per_conn {
            return self.error(
                conn,
                format!(
                    "too many documents on one connection (limit {})",
                    self.config.max_docs_per_conn
                ),
            );
        }
        let scope = c.access.scope(&doc_id);
        let mut message =
            match sync::Message::decode(data) {
                Ok(m) => m,
                Err(e) => return self.error(
                    conn,
                    format!(
                        "document {document_id}: sync data is not an Automerge sync message: {e}"
                    ),
                ),
            };
        // The gate: every change screened with bounded work before Automerge sees it.
        let changes = if message.changes.is_empty() {
            Vec::new()
        } else {
            match gate::screen(message.changes.iter(), &self.config.gate) {
                Ok(c) => c,
                Err(e) => {
                    let keep = data.len().min(QUARANTINE_PREFIX);
                    return self.refuse(
                        conn,
                        doc_id,
                        None,
                        crate::policy::Rule::of_gate(&e),
                        e.to_string(),
                        data[..keep].to_vec(),
                    );
                }
            }
        };
        if let Entry::Vacant(slot) = self.docs.entry(doc_id) {
            let unavailable = || unavailable_action(&self.peer_id, &self.conns, conn, document_id);
            match loader.load(&doc_id) {
                Ok(Some(chunks)) => {
                    let mut doc = Automerge::new();
                    for chunk in &chunks {
                        if let Err(e) = doc.load_incremental(chunk) {
                            tracing::error!(doc = %doc_id, error = %e, "stored chunk does not load");
                        }
                    }
                    slot.insert(new_doc(doc, chunks.len()));
                    actions.push(Action::Loaded(doc_id));
                }
                Ok(None) if is_request => {
                    self.waiting.entry(doc_id).or_default().insert(conn);
                    return vec![unavailable()];
                }
                Ok(None) => {
                    // A push of a document we have never seen creates it.
                    slot.insert(new_doc(Automerge::new(), 0));
                }
                Err(e) => {
                    tracing::error!(doc = %doc_id, error = %e, "could not load a document");
                    return vec![unavailable()];
                }
            }
        }
        let (Some(c), Some(d)) = (self.conns.get_mut(&conn), self.docs.get_mut(&doc_id)) else {
            return actions;
        };
        let state = c.states.entry(doc_id).or_insert_with(|| {
            c.metadata
                .storage_id
                .as_deref()
                .filter(|_| !c.metadata.is_ephemeral)
                .and_then(|s| loader.load_sync_state(&doc_id, s))
                .and_then(|b| sync::State::decode(&b).ok())
                .unwrap_or_default()
        });
        if !changes.is_empty() {
            if let Some(scope) = &scope {
                let refused = self.refused.entry(doc_id).or_default();
                if let Err((change, rule, detail)) = check_changes(
                    &d.doc,
                    scope,
                    &changes,
                    &self.config.reserved_actors,
                    refused,
                ) {
                    let hash = change.hash();
                    let bytes = change.raw_bytes().to_vec();
                    return self.refuse(conn, doc_id, Some(hash.to_string()), rule, detail, bytes);
                }
            }
            // Hand Automerge the screened, uncompressed chunks (never the original bytes).
            message.changes = sync::ChunkList::from(
                changes
                    .iter()
                    .map(|c| c.raw_bytes().to_vec())
                    .collect::<Vec<_>>(),
            );
        }
        let before = d.doc.get_heads();
        if d.last_seq > self.flushed || !message.changes.is_empty() {
            // Held (or about to be, by this message's changes): the answer waits for the flush
            // and is owed whatever Automerge makes of this message (see `pump`).
            c.owed.insert(doc_id);
        }
        if let Err(e) = d.doc.receive_sync_message(state, message) {
            return self.error(
                conn,
                format!("document {document_id}: sync message rejected: {e}"),
            );
        }
        d.peers.insert(conn);
        // A peer now, no longer a watcher.
        if c.watching.remove(&doc_id).is_some()
            && let Some(w) = self.watchers.get_mut(&doc_id)
        {
            w.remove(&conn);
        }
        // Peers that asked for the document before it existed get it now.
        if let Some(waiting) = self.waiting.remove(&doc_id) {
            d.peers
                .extend(waiting.into_iter().filter(|w| self.conns.contains_key(w)));
        }
        let wrote = d.doc.get_heads() != before;
        tracing::trace!(conn, doc = %doc_id, changes = changes.len(), wrote, "sync message applied");
        actions.push(Action::Accessed {
            conn,
            doc: doc_id,
            wrote,
        });
        if wrote {
            self.promote_watchers(doc_id);
            let Some(d) = self.docs.get_mut(&doc_id) else {
                return actions;
            };
            let chunk = d.doc.save_after(&before);
            next_seq(&self.sequence, &mut self.seq);
            d.last_seq = self.seq;
            d.chunks += 1;
            actions.push(Action::Persist {
                doc: doc_id,
                seq: self.seq,
                chunk,
                snapshot: false,
            });
            if d.chunks > self.config.compact_after {
                next_seq(&self.sequence, &mut self.seq);
                d.last_seq = self.seq;
                d.chunks = 1;
                actions.push(Action::Persist {
                    doc: doc_id,
                    seq: self.seq,
                    chunk: d.doc.save(),
                    snapshot: true,
                });
            }
        }
        actions.extend(self.pump(doc_id));
        actions
    }

    /// Generate sync messages about `doc` for every peer syncing it, unless the document holds
    /// changes not yet flushed.
    ///
    /// A peer that sent messages while the document was held is always answered on release.
    /// Automerge skips an answer when the peer's last message announced exactly our heads
    /// (it takes our heads as known to the peer), but a held document's heads were never
    /// sent: a device that sent its change and then, before any answer, a second message
    /// already naming the new heads would otherwise never hear that the server has them, and
    /// would wait for an answer that never comes.
    fn pump(&mut self, doc_id: DocumentId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(d) = self.docs.get_mut(&doc_id) else {
            return out;
        };
        if d.last_seq > self.flushed {
            tracing::trace!(doc = %doc_id, last_seq = d.last_seq, flushed = self.flushed, "held until flushed");
            return out;
        }
        for conn in d.peers.clone() {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let Some(peer) = c.peer_id.clone() else {
                continue;
            };
            let state = c.states.entry(doc_id).or_default();
            if c.owed.remove(&doc_id) {
                state.have_responded = false;
            }
            // A peer that starts from nothing (and reads v2 messages) gets the whole document,
            // as Automerge would send it — but saved once per version of the document and
            // shared by every such peer: Automerge saves (and deflates) it anew for each peer,
            // which was the bulk of the server's work when fresh automerge-repo tablets open a
            // facility (`fresh_peers_share_one_saved_document`). Automerge
            // builds the message (and its state) as for a v1 peer, then the changes are
            // swapped for the saved document.
            let fresh = state.their_heads.as_ref().is_some_and(|h| h.is_empty())
                && state
                    .their_capabilities
                    .as_ref()
                    .is_some_and(|c| c.contains(&sync::Capability::MessageV2));
            let caps = state.their_capabilities.clone();
            if fresh && let Some(c) = state.their_capabilities.as_mut() {
                c.retain(|c| *c != sync::Capability::MessageV2);
            }
            let mut generated = d.doc.generate_sync_message(state);
            if fresh {
                state.their_capabilities = caps;
                if let Some(m) = generated.as_mut().filter(|m| !m.changes.is_empty()) {
                    let heads = d.doc.get_heads();
                    let saved = match &d.saved {
                        Some((h, bytes)) if *h == heads => bytes.clone(),
                        _ => {
                            let bytes = d.doc.save();
                            d.saved = Some((heads, bytes.clone()));
                            bytes
                        }
                    };
                    m.changes = sync::ChunkList::from(saved);
                    m.version = sync::MessageVersion::V2;
                }
            }
            tracing::trace!(conn, doc = %doc_id, sent = generated.is_some(), "pump");
            let quiet = generated.as_ref().is_none_or(|m| m.changes.is_empty());
            if quiet && self.config.demote_in_sync {
                // The peer holds exactly our heads and we send it no change (at most our heads,
                // which it has): the exchange is over unless the peer speaks again, and then
                // it is a peer again (`receive_sync`).
                // The peer becomes a watcher (promoted again when the document changes), so an
                // idle document does not stay in memory for the rest of the connection.
                let mut ours = d.doc.get_heads();
                ours.sort();
                let in_sync = state.their_heads.as_ref().is_some_and(|t| {
                    let mut t = t.clone();
                    t.sort();
                    t == ours
                });
                if in_sync {
                    d.peers.remove(&conn);
                    c.watching.insert(doc_id, ours);
                    self.watchers.entry(doc_id).or_default().insert(conn);
                }
            }
            if let Some(mut m) = generated {
                // Advertise v1 only, so peers send changes (which the gate screens one by
                // one), never a whole document in a v2 message.
                m.flags = None;
                out.push(Action::Send(
                    conn,
                    Message::Sync {
                        sender_id: self.peer_id.clone(),
                        target_id: peer,
                        document_id: doc_id.to_string(),
                        data: m.encode(),
                    }
                    .encode(),
                ));
            }
        }
        // Nobody is in an exchange about it and it is durable: it may leave memory (it reloads
        // from the store when it is next needed), the least recently used idle document first.
        if d.peers.is_empty() && self.config.demote_in_sync {
            self.park(doc_id);
            self.trim_idle();
        }
        out
    }

    /// Everything persisted up to `seq` is durable now: release held documents.
    pub fn flushed(&mut self, seq: u64) -> Vec<Action> {
        if seq <= self.flushed {
            return Vec::new();
        }
        let was = self.flushed;
        self.flushed = seq;
        let released: Vec<DocumentId> = self
            .docs
            .iter()
            .filter(|(_, d)| d.last_seq > was && d.last_seq <= seq)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        tracing::trace!(seq, released = released.len(), "flushed");
        for id in released {
            out.extend(self.pump(id));
        }
        self.evict_idle();
        out
    }

    /// The current state of a document as bytes (from memory, or loaded from the store without
    /// keeping it); None when neither has it.
    pub fn document_bytes(
        &mut self,
        doc_id: DocumentId,
        loader: &mut dyn Loader,
    ) -> Result<Option<Vec<u8>>, String> {
        if let Some(d) = self.docs.get(&doc_id) {
            return Ok(Some(d.doc.save()));
        }
        let Some(chunks) = loader.load(&doc_id)? else {
            return Ok(None);
        };
        let mut doc = Automerge::new();
        for chunk in &chunks {
            doc.load_incremental(chunk).map_err(|e| e.to_string())?;
        }
        Ok(Some(doc.save()))
    }

    /// A loaded document's heads (None when it is not in memory).
    pub fn heads(&self, doc_id: DocumentId) -> Option<Vec<ChangeHash>> {
        self.docs.get(&doc_id).map(|d| d.doc.get_heads())
    }

    /// Drop an idle copy of a document (another writer changed it in the store): it reloads
    /// when next needed. A copy in an exchange, or holding changes not yet durable, stays.
    pub fn forget(&mut self, doc_id: DocumentId) {
        if self.may_leave(doc_id) {
            self.docs.remove(&doc_id);
            if let Some(tick) = self.idle_since.remove(&doc_id) {
                self.idle.remove(&tick);
                self.unpark_count();
            }
        }
    }

    /// Whether the hub holds the document, or a connection watches or waits for it (what
    /// [`Hub::absorb`] acts on).
    pub fn wants(&self, doc_id: DocumentId) -> bool {
        self.docs.contains_key(&doc_id)
            || self.watchers.get(&doc_id).is_some_and(|w| !w.is_empty())
            || self.waiting.contains_key(&doc_id)
    }

    /// Another writer sharing the store (a second server) stored changes to a document. A copy
    /// in use takes them in from the store, and its peers, its watchers and the connections
    /// waiting for it to exist get them, as after a change received here — but nothing is
    /// persisted: it is stored already. An idle copy is forgotten; a document this hub neither
    /// holds nor watches needs nothing. Repeated or late calls are harmless.
    pub fn absorb(
        &mut self,
        doc_id: DocumentId,
        loader: &mut dyn Loader,
    ) -> Result<Vec<Action>, String> {
        let wanted = self.watchers.get(&doc_id).is_some_and(|w| !w.is_empty())
            || self.waiting.contains_key(&doc_id);
        match self.docs.get(&doc_id) {
            None if !wanted => return Ok(Vec::new()),
            Some(_) if !wanted && self.may_leave(doc_id) => {
                self.forget(doc_id);
                return Ok(Vec::new());
            }
            _ => {}
        }
        let Some(chunks) = loader.load(&doc_id)? else {
            return Ok(Vec::new());
        };
        let before = self.docs.get(&doc_id).map(|d| d.doc.get_heads());
        let d = self
            .docs
            .entry(doc_id)
            .or_insert_with(|| new_doc(Automerge::new(), 0));
        for chunk in &chunks {
            if let Err(e) = d.doc.load_incremental(chunk) {
                tracing::error!(doc = %doc_id, error = %e, "stored chunk does not load");
            }
        }
        d.chunks = chunks.len();
        if let Some(waiting) = self.waiting.remove(&doc_id) {
            d.peers
                .extend(waiting.into_iter().filter(|w| self.conns.contains_key(w)));
        }
        if before.as_ref() != Some(&d.doc.get_heads()) {
            self.promote_watchers(doc_id);
        }
        Ok(self.pump(doc_id))
    }

    /// Read a loaded document in place (no save, no load): `None` when it is not in memory.
    pub fn with_loaded<R>(&self, doc_id: DocumentId, f: impl FnOnce(&Automerge) -> R) -> Option<R> {
        self.docs.get(&doc_id).map(|d| f(&d.doc))
    }

    /// A loaded document's root string field (`type`, `facility`, `patient`, `month`).
    pub fn root_str(&self, doc_id: DocumentId, key: &str) -> Option<String> {
        self.docs
            .get(&doc_id)
            .and_then(|d| crate::document::root_str(&d.doc, key))
    }

    /// The keys of a loaded document's top-level map container (the facility's roster).
    pub fn container_keys(&self, doc_id: DocumentId, name: &str) -> Option<Vec<String>> {
        use automerge::ReadDoc;
        let d = self.docs.get(&doc_id)?;
        let m = crate::document::container(&d.doc, name)?;
        Some(d.doc.keys(&m).collect())
    }

    /// Merge document bytes from outside (an import); persisted and fanned out like a push.
    pub fn merge(
        &mut self,
        doc_id: DocumentId,
        bytes: &[u8],
        loader: &mut dyn Loader,
    ) -> Result<Vec<Action>, String> {
        let mut actions = Vec::new();
        if let Entry::Vacant(slot) = self.docs.entry(doc_id) {
            let mut doc = Automerge::new();
            let mut n = 0;
            if let Some(chunks) = loader.load(&doc_id)? {
                n = chunks.len();
                for chunk in &chunks {
                    doc.load_incremental(chunk).map_err(|e| e.to_string())?;
                }
            }
            slot.insert(new_doc(doc, n));
        }
        let Some(d) = self.docs.get_mut(&doc_id) else {
            return Ok(actions);
        };
        if let Some(waiting) = self.waiting.remove(&doc_id) {
            d.peers
                .extend(waiting.into_iter().filter(|w| self.conns.contains_key(w)));
        }
        let before = d.doc.get_heads();
        d.doc.load_incremental(bytes).map_err(|e| e.to_string())?;
        if d.doc.get_heads() != before {
            self.promote_watchers(doc_id);
            let Some(d) = self.docs.get_mut(&doc_id) else {
                return Ok(actions);
            };
            next_seq(&self.sequence, &mut self.seq);
            d.last_seq = self.seq;
            d.chunks += 1;
            actions.push(Action::Persist {
                doc: doc_id,
                seq: self.seq,
                chunk: d.doc.save_after(&before),
                snapshot: false,
            });
        }
        actions.extend(self.pump(doc_id));
        Ok(actions)
    }

    fn relay_ephemeral(
        &mut self,
        conn: ConnId,
        sender_id: String,
        document_id: String,
        session_id: String,
        count: u64,
        data: Vec<u8>,
    ) -> Vec<Action> {
        let Ok(doc_id) = document_id.parse::<DocumentId>() else {
            return Vec::new();
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        if !c.access.allows(&doc_id) {
            return vec![
                Action::Denied {
                    conn,
                    doc: document_id.clone(),
                },
                self.unavailable(conn, &document_id),
            ];
        }
        // Relayed only as the connection's own peer, and for a bounded number of sessions.
        if c.peer_id.as_deref() != Some(sender_id.as_str()) {
            return Vec::new();
        }
        let key = format!("{sender_id}/{session_id}");
        if c.ephemeral_seen
            .get(&key)
            .is_some_and(|seen| *seen >= count)
        {
            return Vec::new();
        }
        if !c.ephemeral_seen.contains_key(&key) && c.ephemeral_seen.len() >= EPHEMERAL_SESSIONS {
            return Vec::new();
        }
        c.ephemeral_seen.insert(key, count);
        // Everyone on the document: its peers and those watching it (in sync, not in memory).
        let mut on_doc: BTreeSet<ConnId> = self
            .docs
            .get(&doc_id)
            .map(|d| d.peers.clone())
            .unwrap_or_default();
        on_doc.extend(self.watchers.get(&doc_id).into_iter().flatten().copied());
        on_doc
            .iter()
            .filter(|p| **p != conn)
            .filter_map(|p| {
                let target = self.conns.get(p)?.peer_id.clone()?;
                Some(Action::Send(
                    *p,
                    Message::Ephemeral {
                        sender_id: sender_id.clone(),
                        target_id: target,
                        document_id: document_id.clone(),
                        session_id: session_id.clone(),
                        count,
                        data: data.clone(),
                    }
                    .encode(),
                ))
            })
            .collect()
    }

    /// A connection ended: save its sync states and let idle documents go.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(c) = self.conns.remove(&conn) else {
            return out;
        };
        if let (Some(storage), false) = (&c.metadata.storage_id, c.metadata.is_ephemeral) {
            for (doc, state) in &c.states {
                out.push(Action::SaveSyncState {
                    doc: *doc,
                    peer_storage: storage.clone(),
                    state: state.encode(),
                });
            }
        }
        for d in self.docs.values_mut() {
            d.peers.remove(&conn);
        }
        for w in self.waiting.values_mut() {
            w.remove(&conn);
        }
        self.waiting.retain(|_, w| !w.is_empty());
        for doc in c.watching.keys() {
            if let Some(w) = self.watchers.get_mut(doc) {
                w.remove(&conn);
                if w.is_empty() {
                    self.watchers.remove(doc);
                }
            }
        }
        self.evict_idle();
        out
    }

    /// A `rounds-summary`: answer which summarized documents differ (or cannot be resolved) and
    /// watch the others for this connection. Nothing is loaded for a document in sync: its heads
    /// come from memory when it is loaded, else from the store (see [`Loader::heads`]).
    fn receive_summary(
        &mut self,
        conn: ConnId,
        salt: &[u8],
        entries: &[u8],
        loader: &mut dyn Loader,
    ) -> Vec<Action> {
        let n = entries.len() / summary::ENTRY;
        if n > self.config.max_docs_per_conn {
            return self.error(
                conn,
                format!(
                    "summary of {n} documents; at most {} per connection",
                    self.config.max_docs_per_conn
                ),
            );
        }
        let Some(c) = self.conns.get(&conn) else {
            return Vec::new();
        };
        let access = c.access.clone();
        let Some(peer) = c.peer_id.clone() else {
            return Vec::new();
        };
        let mut differ = Vec::new();
        let mut unknown = Vec::new();
        let mut in_sync = Vec::new();
        for (prefix, fp) in summary::entries(entries) {
            let resolved = if access.summarizable() {
                loader.resolve(&prefix)
            } else {
                summary::Resolved::None
            };
            let doc = match resolved {
                summary::Resolved::One(doc) if access.allows(&doc) => doc,
                _ => {
                    unknown.extend_from_slice(&prefix);
                    continue;
                }
            };
            let heads = match self.docs.get(&doc) {
                // A held document's heads were never sent: sync it in full (the answer waits
                // for the flush, as ever).
                Some(d) if d.last_seq > self.flushed => None,
                Some(d) => Some(d.doc.get_heads()),
                None => match loader.heads(&doc) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!(doc = %doc, error = %e, "could not read a document's heads");
                        None
                    }
                },
            };
            match heads {
                Some(h) if summary::fingerprint(salt, &doc, &h) == fp => in_sync.push((doc, h)),
                _ => differ.extend_from_slice(doc.as_bytes()),
            }
        }
        tracing::debug!(
            conn,
            summarized = n,
            in_sync = in_sync.len(),
            differ = differ.len() / 16,
            unknown = unknown.len() / summary::PREFIX,
            "summary"
        );
        for (doc, heads) in in_sync {
            self.watch(conn, doc, heads);
        }
        vec![Action::Send(
            conn,
            Message::SummaryReply {
                sender_id: self.peer_id.clone(),
                target_id: peer,
                differ,
                unknown,
            }
            .encode(),
        )]
    }

    /// Watch a document for a connection whose copy has `heads`: when it changes on the server,
    /// the connection becomes one of its peers (see [`Hub::promote_watchers`]).
    fn watch(&mut self, conn: ConnId, doc: DocumentId, heads: Vec<ChangeHash>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if self.docs.get(&doc).is_some_and(|d| d.peers.contains(&conn)) {
            return;
        }
        c.watching.insert(doc, heads);
        self.watchers.entry(doc).or_default().insert(conn);
    }

    /// A document changed: the connections watching it become its peers, each starting from the
    /// heads its summary showed, so the next pump sends them what changed since.
    fn promote_watchers(&mut self, doc: DocumentId) {
        let Some(watchers) = self.watchers.remove(&doc) else {
            return;
        };
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        for conn in watchers {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let Some(heads) = c.watching.remove(&doc) else {
                continue;
            };
            c.states.entry(doc).or_insert_with(|| {
                // The peer held these heads (its summary showed them): send it what changed
                // since at once, instead of first asking for its heads and bloom filter — a
                // round trip per change and watcher. Were its heads to have moved meanwhile,
                // its answer restarts the ordinary exchange.
                let mut state = sync::State::new();
                state.shared_heads = heads.clone();
                state.their_heads = Some(heads.clone());
                state.their_have = Some(vec![sync::Have {
                    last_sync: heads,
                    bloom: sync::BloomFilter::default(),
                }]);
                state.their_need = Some(Vec::new());
                state
            });
            d.peers.insert(conn);
        }
    }

    /// Documents nobody syncs and whose changes are durable join the idle cache (they reload
    /// from the store once evicted).
    fn evict_idle(&mut self) {
        let idle: Vec<DocumentId> = self
            .docs
            .keys()
            .copied()
            .filter(|id| self.may_leave(*id) && !self.idle_since.contains_key(id))
            .collect();
        for id in idle {
            self.park(id);
        }
        self.trim_idle();
    }

    /// The document's exchange ended now: it becomes the most recently used idle document.
    fn park(&mut self, doc: DocumentId) {
        self.tick += 1;
        match self.idle_since.insert(doc, self.tick) {
            Some(old) => {
                self.idle.remove(&old);
            }
            None => {
                self.config
                    .idle_cache
                    .count
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.idle.insert(self.tick, doc);
    }

    /// Whether a loaded document may leave memory: no exchange uses it and it is durable.
    fn may_leave(&self, doc: DocumentId) -> bool {
        self.docs
            .get(&doc)
            .is_some_and(|d| d.peers.is_empty() && d.last_seq <= self.flushed)
    }

    /// One idle document fewer in the shared budget.
    fn unpark_count(&self) {
        self.config
            .idle_cache
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Evict this hub's least recently used idle documents while the shared budget is over.
    fn trim_idle(&mut self) {
        while self.config.idle_cache.count() > self.config.idle_cache.limit {
            let Some((_, doc)) = self.idle.pop_first() else {
                break;
            };
            self.idle_since.remove(&doc);
            self.unpark_count();
            // In use again (a peer, or a change not yet durable): it stays, and is parked
            // again when it is idle.
            if self.may_leave(doc) {
                self.docs.remove(&doc);
            }
        }
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

/// Take the next number from the store's shared sequence; `own` remembers it as this hub's last.
fn next_seq(sequence: &std::sync::atomic::AtomicU64, own: &mut u64) {
    *own = sequence.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
}

/// Ephemeral sessions one connection may have relayed (automerge-repo peers use one per
/// connection; more is not a real peer).
pub const EPHEMERAL_SESSIONS: usize = 16;

/// Bytes of an unparsed message kept in the quarantine.
pub const QUARANTINE_PREFIX: usize = 64 << 10;

/// Check a message's new changes against the write policy, in order. On refusal: the change,
/// the rule and the detail; the refused change and every later one of the message that depends
/// on it are remembered in `refused`.
fn check_changes<'c>(
    doc: &Automerge,
    scope: &crate::policy::DocScope,
    changes: &'c [automerge::Change],
    reserved: &[automerge::ActorId],
    refused: &mut std::collections::HashSet<automerge::ChangeHash>,
) -> Result<(), (&'c automerge::Change, crate::policy::Rule, String)> {
    use crate::policy::{Pending, Rule};
    use automerge::ReadDoc;
    let heads = doc.get_heads();
    let mut pending = Pending::default();
    let mut failed: Option<(&automerge::Change, Rule, String)> = None;
    for change in changes {
        if doc.get_change_by_hash(&change.hash()).is_some() {
            continue;
        }
        if change.deps().iter().any(|h| refused.contains(h)) {
            remember(refused, change.hash());
            if failed.is_none() {
                failed = Some((
                    change,
                    Rule::DependsOnRefused,
                    "depends on a change that was refused".into(),
                ));
            }
            continue;
        }
        if failed.is_some() {
            // Nothing of this message is stored; independent changes are judged when resent.
            continue;
        }
        let verdict = match gate::expand(change) {
            None => Err((
                Rule::Malformed,
                "does not expand into operations".to_string(),
            )),
            Some(expanded) => crate::policy::check_device_change(
                doc,
                &heads,
                scope,
                &expanded,
                reserved,
                &mut pending,
            )
            .map_err(|r| (r.rule, format!("{}: {}", r.path, r.detail))),
        };
        if let Err((rule, detail)) = verdict {
            remember(refused, change.hash());
            failed = Some((change, rule, detail));
        }
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Refused changes remembered per document, at most; past this the set starts over. A dependant
/// of a forgotten refused change is still never applied: its dependency never arrives.
const MAX_REFUSED_PER_DOC: usize = 1024;

fn remember(
    refused: &mut std::collections::HashSet<automerge::ChangeHash>,
    hash: automerge::ChangeHash,
) {
    if refused.len() >= MAX_REFUSED_PER_DOC {
        refused.clear();
    }
    refused.insert(hash);
}

/// A `doc-unavailable` reply to a connection.
fn unavailable_action(
    server: &str,
    conns: &HashMap<ConnId, HubConn>,
    conn: ConnId,
    document_id: &str,
) -> Action {
    let target_id = conns
        .get(&conn)
        .and_then(|c| c.peer_id.clone())
        .unwrap_or_default();
    Action::Send(
        conn,
        Message::DocUnavailable {
            sender_id: server.to_string(),
            target_id,
            document_id: document_id.to_string(),
        }
        .encode(),
    )
}

fn new_doc(doc: Automerge, chunks: usize) -> HubDoc {
    HubDoc {
        doc,
        saved: None,
        last_seq: 0,
        chunks,
        peers: BTreeSet::new(),
    }
}
