//! `rounds serve`: axum over rustls, the sync endpoint, health and metrics, graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use rounds_core::DocumentId;
use rounds_core::sync::hub::{Access, Action, AllowAll, ConnId, HubConfig};
use rounds_core::sync::wire::Message;
use tokio::sync::{mpsc, watch};

use crate::access::{FacilityAccess, FacilityIndex};
use crate::auth::{self, Device};
use crate::flusher::Flusher;
use crate::metrics::Metrics;
use crate::security::{AuditRecord, RateLimiter, Security};
use crate::shards::{DEV_SHARD, Shard, ShardCore, ShardMsg, Shards};
use crate::store::SledStore;
use crate::tls;

/// What a connection task is told to do.
pub enum Outbound {
    Frame(Vec<u8>),
    /// A keepalive ping.
    Ping,
    /// Send a close and end the connection, for this reason.
    Close(String),
}

/// `rounds serve` settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub store: PathBuf,
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure_http: bool,
    pub max_frame: usize,
    /// A development token accepted for every document (never in production).
    pub dev_token: Option<String>,
    pub limits: Limits,
    pub rules: rounds_core::billing::RuleSet,
    /// How often to look for months past their grace window (automatic close).
    pub close_check: Duration,
    /// Alert notification settings (`notify.toml`); none: alerts only in the apps.
    pub notify: Option<crate::notify::NotifyConfig>,
    /// Read "now" from this file (RFC 3339) for deadlines (tests); None: the system clock.
    pub clock_file: Option<PathBuf>,
    /// How often to escalate overdue alerts and deliver notifications.
    pub alert_tick: Duration,
    /// The practice's EHR (`push.toml`): the console's "approve and push" queues packages and
    /// the server sends them. None: packages are downloaded or pushed with `rounds push`.
    pub push: Option<crate::push::PushConfig>,
}

/// Per-device limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connections_per_device: usize,
    pub documents_per_connection: usize,
    /// Sustained frames per second per device, and the burst allowed above it.
    pub frames_per_second: f64,
    pub frame_burst: f64,
    /// Enrolment attempts per minute per client address.
    pub enrolments_per_minute: f64,
    /// How long an enrolment code stays valid.
    pub code_lifetime: chrono::Duration,
    /// Bytes queued for one connection and not yet read by its peer before it is cut.
    pub outbound_bytes: usize,
    /// Console sign-in attempts per minute per client address, and per account.
    pub sign_ins_per_minute: f64,
    /// Connections, header timeout, body sizes, password hashes, query tokens, proxies.
    pub network: crate::network::NetworkLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_per_device: 4,
            documents_per_connection: 50_000,
            frames_per_second: 500.0,
            frame_burst: 20_000.0,
            enrolments_per_minute: 10.0,
            code_lifetime: crate::security::CODE_LIFETIME,
            outbound_bytes: 32 << 20,
            sign_ins_per_minute: 20.0,
            network: crate::network::NetworkLimits::default(),
        }
    }
}

/// A connection's device, what has been audited for it, and the shards it is registered in.
struct ConnInfo {
    device: Device,
    audited: HashSet<(DocumentId, bool)>,
    access: Arc<dyn Access>,
    /// Its facility's shard (the development shard for a development-token connection).
    home: Arc<Shard>,
    /// Every shard the connection is registered in (home first).
    shards: Vec<Arc<Shard>>,
    /// The `join` it sent, replayed into further shards (development-token connections).
    join: Option<Message>,
}

/// The open connections: senders, devices, per-device counts. Short critical sections only;
/// never held while a shard is locked or the store is written.
#[derive(Default)]
struct Conns {
    senders: HashMap<ConnId, crate::outlet::Outlet>,
    info: HashMap<ConnId, ConnInfo>,
    device_conns: HashMap<String, usize>,
}

/// State shared by all connections.
pub struct Shared {
    /// One hub per facility (see `shards.rs`).
    pub shards: Shards,
    conns: Mutex<Conns>,
    pub store: Arc<SledStore>,
    flusher: Flusher,
    pub metrics: Arc<Metrics>,
    pub max_frame: usize,
    pub next_conn: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    pub security: Security,
    pub index: Arc<FacilityIndex>,
    pub ledger: crate::ledger::Ledger,
    pub rules: rounds_core::billing::RuleSet,
    /// Documents whose changes re-open closed months: document → (facility, month).
    pub recheck:
        Mutex<HashMap<DocumentId, std::collections::BTreeSet<(String, rounds_core::Month)>>>,
    pub facilities: sled::Tree,
    /// The registered facilities, as last read from `facilities`.
    pub(crate) facility_cache: Mutex<Option<Vec<String>>>,
    pub(crate) late_tx: mpsc::UnboundedSender<(String, rounds_core::Month)>,
    pub limits: Limits,
    pub alerting: crate::alerting::Alerting,
    pub accounts: crate::console::accounts::Accounts,
    /// Changes refused by the gate or the write policy.
    pub quarantine: crate::quarantine::Quarantine,
    push: std::sync::RwLock<Option<crate::push::PushConfig>>,
    alert_rx: Mutex<Option<mpsc::UnboundedReceiver<DocumentId>>>,
    frame_limiter: RateLimiter,
    /// Frames processed at once on the blocking pool (two per core): bounds the threads, and
    /// with them the memory, a reconnect storm can take.
    frame_workers: tokio::sync::Semaphore,
    /// Bytes of frames waiting in all shards' inboxes together (KiB permits).
    inbox_budget: Arc<tokio::sync::Semaphore>,
    enrol_limiter: RateLimiter,
    /// Console sign-ins per client address and per account.
    sign_in_per_address: RateLimiter,
    sign_in_per_account: RateLimiter,
    /// Password hashes computed at once (each takes ~19 MiB): memory stays flat under a flood.
    pub sign_in_slots: tokio::sync::Semaphore,
    /// The threads that compute them, one per slot.
    pub hashers: crate::console::hashing::Hashers,
    /// Connections open, in all and per client address (taken in the acceptor).
    pub caps: Arc<crate::network::ConnectionCaps>,
    /// Audit records anyone can cause, one per source and reason per interval.
    pub noisy: crate::audit_aggregate::Aggregator,
    /// Itself, for the shard drainers it starts (they hold it weakly: dropping the server
    /// drops the shards, closes their inboxes and ends the drainers).
    me: Weak<Shared>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("flushing the store: {0}")]
    Flush(String),
}

impl Shared {
    /// Open the store and set up the shared state (no sockets yet).
    pub fn open(
        store_dir: &std::path::Path,
        max_frame: usize,
        dev_token: Option<String>,
        limits: Limits,
        rules: rounds_core::billing::RuleSet,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Shared>, ServeError> {
        std::fs::create_dir_all(store_dir).map_err(|source| ServeError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let store = Arc::new(SledStore::open(store_dir)?);
        let metrics = Arc::new(Metrics::default());
        let shards = Shards::new(
            // Short: every sync message carries it (the storage id keys what persists).
            format!(
                "rounds-{}",
                store.storage_id().get(..8).unwrap_or(store.storage_id())
            ),
            store.storage_id().to_string(),
            store.written_seq(),
            HubConfig {
                max_docs_per_conn: limits.documents_per_connection,
                reserved_actors: vec![automerge::ActorId::from(rounds_core::policy::server_actor(
                    store.storage_id(),
                ))],
                ..HubConfig::default()
            },
        );
        let security = Security::open(store.db(), store_dir, dev_token, limits.code_lifetime)
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let ledger = crate::ledger::Ledger::open(store.db())
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let facilities = store
            .db()
            .open_tree("facilities")
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let (late_tx, late_rx) = mpsc::unbounded_channel();
        let (alerting, alert_rx) = crate::alerting::Alerting::open(store.db(), store.storage_id())
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let accounts = crate::console::accounts::Accounts::open(store.db())
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let quarantine = crate::quarantine::Quarantine::open(store.db())
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let hash_threads = limits.network.password_hashes_at_once.max(1);
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            inbox_budget: Arc::new(tokio::sync::Semaphore::new(
                crate::shards::ALL_INBOXES_KIB as usize,
            )),
            accounts,
            quarantine,
            push: std::sync::RwLock::new(None),
            alerting,
            alert_rx: Mutex::new(Some(alert_rx)),
            late_tx,
            ledger,
            rules,
            recheck: Mutex::new(HashMap::new()),
            facilities,
            facility_cache: Mutex::new(None),
            shards,
            conns: Mutex::new(Conns::default()),
            security,
            index: Arc::new(FacilityIndex::new(store.clone())),
            frame_limiter: RateLimiter::new(limits.frames_per_second, limits.frame_burst),
            frame_workers: tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            sign_in_per_address: RateLimiter::new(
                limits.sign_ins_per_minute / 60.0,
                limits.sign_ins_per_minute,
            ),
            sign_in_per_account: RateLimiter::new(
                limits.sign_ins_per_minute / 60.0,
                limits.sign_ins_per_minute,
            ),
            sign_in_slots: tokio::sync::Semaphore::new(hash_threads),
            hashers: crate::console::hashing::Hashers::start(hash_threads),
            caps: crate::network::ConnectionCaps::new(
                limits.network.max_connections,
                limits.network.max_connections_per_address,
            ),
            noisy: crate::audit_aggregate::Aggregator::new(chrono::Duration::seconds(
                i64::try_from(limits.network.audit_aggregate_seconds).unwrap_or(i64::MAX / 1000),
            )),
            enrol_limiter: RateLimiter::new(
                limits.enrolments_per_minute / 60.0,
                limits.enrolments_per_minute,
            ),
            limits,
            flusher: Flusher::start(store.clone(), metrics.clone()),
            store,
            metrics,
            max_frame,
            next_conn: AtomicU64::new(1),
            shutdown,
        });
        for (facility, month) in shared.ledger.closed_months() {
            shared.watch_closed(&facility, month);
        }
        shared.clone().start_late_data(late_rx);
        Ok(shared)
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shard of a facility (the development shard for none), its drainer started on
    /// first use.
    pub fn shard_for(&self, facility: Option<&str>) -> Arc<Shard> {
        let shard = self.shards.get(facility.unwrap_or(DEV_SHARD));
        // Outside a runtime (never in the server) the drainer starts on a later call.
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && let Some(rx) = shard.take_receiver()
        {
            runtime.spawn(drive(self.me.clone(), shard.clone(), rx));
        }
        shard
    }

    /// The shard that holds a document: its registered facility's, else the development shard.
    pub fn shard_of_doc(&self, doc: &DocumentId) -> Arc<Shard> {
        let owner = self
            .facility_ids()
            .into_iter()
            .find(|f| self.index.scope(f, doc).is_some());
        self.shard_for(owner.as_deref())
    }

    /// A document's bytes as its shard's hub holds them (loaded from the store when it is not
    /// in memory; nothing kept).
    pub fn document_bytes(&self, shard: &Shard, id: DocumentId) -> Result<Option<Vec<u8>>, String> {
        let mut loader = &*self.store;
        shard.lock().hub.document_bytes(id, &mut loader)
    }

    /// Register a connection; refused when the device has too many open already.
    pub async fn register(
        &self,
        conn: ConnId,
        tx: crate::outlet::Outlet,
        device: Device,
    ) -> Result<(), String> {
        let access: Arc<dyn Access> = match &device.facility {
            Some(f) => Arc::new(FacilityAccess {
                facility: f.clone(),
                index: self.index.clone(),
            }),
            None => Arc::new(AllowAll),
        };
        let home = self.shard_for(device.facility.as_deref());
        let name = device.name.clone();
        {
            let mut conns = self.conns();
            let open = conns.device_conns.entry(device.name.clone()).or_default();
            if *open >= self.limits.connections_per_device {
                return Err(format!(
                    "device {} already has {} connections open (limit {})",
                    device.name, open, self.limits.connections_per_device
                ));
            }
            *open += 1;
            conns.senders.insert(conn, tx);
            conns.info.insert(
                conn,
                ConnInfo {
                    device,
                    audited: HashSet::new(),
                    access: access.clone(),
                    home: home.clone(),
                    shards: vec![home.clone()],
                    join: None,
                },
            );
        }
        // Through the inbox, so the hub sees it before the connection's first frame.
        let _ = home
            .inbox()
            .send(ShardMsg::Connect {
                conn,
                access,
                device: name,
            })
            .await;
        Ok(())
    }

    /// Checks before a frame is processed: revocation (takes effect on the next frame) and
    /// the device's frame rate.
    pub fn admit_frame(&self, device: &Device) -> Result<(), String> {
        if device.facility.is_some() && self.security.is_revoked(&device.name) {
            return Err(format!("device {} has been revoked", device.name));
        }
        if !self.frame_limiter.allow(&device.name) {
            return Err(format!(
                "device {} exceeded its request rate; slow down and reconnect",
                device.name
            ));
        }
        Ok(())
    }

    fn audit_for(&self, conn: ConnId, action: &str, doc: Option<&str>, detail: Option<String>) {
        let rec = self.audit_record_for(conn, action, doc, detail);
        self.security.record(rec);
    }

    /// A connection's audit record: its device, facility, document and that document's patient.
    fn audit_record_for(
        &self,
        conn: ConnId,
        action: &str,
        doc: Option<&str>,
        detail: Option<String>,
    ) -> AuditRecord {
        let mut rec = AuditRecord::new(action);
        let device = self
            .conns()
            .info
            .get(&conn)
            .map(|i| (i.device.name.clone(), i.device.facility.clone()));
        if let Some((name, facility)) = device {
            rec.device = Some(name);
            if let (Some(f), Some(d)) = (&facility, doc.and_then(|d| d.parse::<DocumentId>().ok()))
            {
                rec.patient = self.index.lookup(f, &d).flatten();
            }
            rec.facility = facility;
        }
        rec.document = doc.map(str::to_string);
        rec.detail = detail;
        rec
    }

    fn sender(&self, conn: ConnId) -> Option<crate::outlet::Outlet> {
        self.conns().senders.get(&conn).cloned()
    }

    /// Carry out hub actions; returns whether something was persisted (a flush is due).
    fn execute(&self, core: &mut ShardCore, actions: Vec<Action>) -> bool {
        let mut wrote = false;
        for action in actions {
            match action {
                Action::Send(conn, frame) => {
                    if let Some(tx) = self.sender(conn) {
                        let _ = tx.send(Outbound::Frame(frame));
                    }
                }
                Action::Close(conn, reason) => {
                    tracing::warn!(conn, %reason, "closing connection");
                    if let Some(tx) = self.sender(conn) {
                        let _ = tx.send(Outbound::Close(reason));
                    }
                }
                Action::Persist {
                    doc,
                    seq,
                    chunk,
                    snapshot,
                } => {
                    core.persisted.push(doc);
                    let stored = self.store.persist(&doc, seq, &chunk, snapshot);
                    self.index.changed(&doc, || {
                        core.hub
                            .container_keys(doc, rounds_core::document::PATIENTS)
                            .map(|k| k.into_iter().collect())
                    });
                    if let Err(e) = stored {
                        // The document stays held (never flushed), so nothing unsaved is acknowledged.
                        tracing::error!(doc = %doc, error = %e, "could not store a chunk");
                    } else {
                        wrote = true;
                    }
                }
                Action::SaveSyncState {
                    doc,
                    peer_storage,
                    state,
                } => {
                    if let Err(e) = self.store.save_sync_state(&doc, &peer_storage, &state) {
                        tracing::warn!(doc = %doc, error = %e, "could not store a sync state");
                    }
                }
                Action::Denied { conn, doc } => {
                    self.metrics
                        .access_denied
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(conn, doc = %doc, "document access denied");
                    // The first denial of each document per device in full, repeats
                    // aggregated: a device cannot write a record per frame.
                    let rec = self.audit_record_for(conn, "denied", Some(&doc), None);
                    let source = rec.device.clone().unwrap_or_else(|| format!("conn {conn}"));
                    self.audit_noisy(&source, &format!("denied {doc}"), rec);
                }
                Action::Accessed { conn, doc, wrote } => {
                    let first = self
                        .conns()
                        .info
                        .get_mut(&conn)
                        .is_some_and(|i| i.audited.insert((doc, wrote)));
                    if first {
                        let action = if wrote { "write" } else { "read" };
                        self.audit_for(conn, action, Some(&doc.to_string()), None);
                    }
                }
                Action::Refused {
                    conn,
                    doc,
                    change,
                    rule,
                    detail,
                    bytes,
                } => {
                    self.metrics
                        .changes_refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (device, facility) = self
                        .conns()
                        .info
                        .get(&conn)
                        .map(|i| (Some(i.device.name.clone()), i.device.facility.clone()))
                        .unwrap_or_default();
                    tracing::warn!(conn, doc = %doc, %rule, "change refused and quarantined");
                    let id = self
                        .quarantine
                        .add(crate::quarantine::Refused {
                            device,
                            facility,
                            document: doc.to_string(),
                            change: change.clone(),
                            rule: rule.to_string(),
                            detail: detail.clone(),
                            bytes: &bytes,
                        })
                        .map_err(|e| tracing::error!(error = %e, "could not quarantine"))
                        .ok();
                    let mut text = format!("rule {rule}: {detail}");
                    if let Some(h) = change {
                        text = format!("change {h} {text}");
                    }
                    if let Some(id) = id {
                        text.push_str(&format!(" (quarantine {id})"));
                    }
                    self.audit_for(conn, "refused", Some(&doc.to_string()), Some(text));
                }
                Action::Loaded(_) => {
                    self.metrics
                        .documents_loaded
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        wrote
    }

    /// A flush covering `seq` completed: the hub sends what it held back. Returns whether that
    /// persisted anything, and the documents persisted since the last release (for alerting and
    /// late-data re-evaluation).
    fn release(&self, core: &mut ShardCore, seq: u64) -> (bool, Vec<DocumentId>) {
        let actions = core.hub.flushed(seq);
        let wrote = self.execute(core, actions);
        (wrote, std::mem::take(&mut core.persisted))
    }

    /// Make a shard's writes durable, then release what its hub held back. The flush is
    /// requested after the shard's last write (its `seq`), so it covers it, whatever other
    /// shards wrote meanwhile. (For writes made outside the shard's drainer: merges.)
    async fn flush_and_release(&self, shard: &Shard) {
        let own = shard.lock().hub.seq();
        match self.flusher.flush().await {
            Ok(_) => {
                // Releasing only sends (the hub's pump never persists), so no further flush.
                let (_, persisted) = self.release(&mut shard.lock(), own);
                self.alerts_changed(&persisted);
                self.late_data(persisted).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "store flush failed; changes stay unacknowledged")
            }
        }
    }

    /// A frame from a connection: into its facility's inbox, waiting only while the inbox (or
    /// all inboxes together) hold their budget of frames. Returns without waiting for the
    /// frame to be processed: the connection goes on reading; answers go out through its sender.
    pub async fn receive(self: &Arc<Self>, conn: ConnId, frame: axum::body::Bytes) {
        let Some(home) = self.conns().info.get(&conn).map(|i| i.home.clone()) else {
            return;
        };
        // Frames are at most `max_frame`; a larger one still takes no more than a whole budget.
        let kib = u32::try_from(frame.len().div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        let Ok(all) = self
            .inbox_budget
            .clone()
            .acquire_many_owned(kib.min(crate::shards::ALL_INBOXES_KIB))
            .await
        else {
            return;
        };
        let Ok(own) = home
            .budget()
            .acquire_many_owned(kib.min(crate::shards::INBOX_KIB))
            .await
        else {
            return;
        };
        let _ = home
            .inbox()
            .send(ShardMsg::Frame {
                conn,
                frame,
                budget: (all, own),
            })
            .await;
    }

    /// Feed a batch of a shard's inbox to its hub (on the blocking pool). Returns the hub's
    /// last sequence number when something was persisted: a flush is due before the documents
    /// it wrote are released.
    fn drain(self: &Arc<Self>, shard: &Arc<Shard>, batch: Vec<ShardMsg>) -> Option<u64> {
        let mut core = shard.lock();
        let mut wrote = false;
        let mut released = Vec::new();
        tracing::trace!(messages = batch.len(), "drain");
        for msg in batch {
            match msg {
                ShardMsg::Connect {
                    conn,
                    access,
                    device,
                } => core.hub.connect_device(conn, access, Some(device)),
                ShardMsg::Frame {
                    conn,
                    frame,
                    budget,
                } => {
                    wrote |= self.process_frame(shard, &mut core, conn, &frame);
                    // Its room in the inboxes is free again.
                    drop(budget);
                }
                ShardMsg::Routed { conn, msg } => {
                    wrote |= self.process_message(shard, &mut core, conn, msg);
                }
                ShardMsg::Disconnect { conn } => {
                    let actions = core.hub.disconnect(conn);
                    wrote |= self.execute(&mut core, actions);
                }
                ShardMsg::Flushed(seq) => {
                    tracing::trace!(seq, "flush completed");
                    let (w, mut persisted) = self.release(&mut core, seq);
                    wrote |= w;
                    released.append(&mut persisted);
                }
            }
        }
        let seq = core.hub.seq();
        drop(core);
        if !released.is_empty() {
            self.alerts_changed(&released);
            let shared = self.clone();
            tokio::spawn(async move { shared.late_data(released).await });
        }
        wrote.then_some(seq)
    }

    /// One frame in its connection's home shard: a device's goes to the hub as it is; a
    /// development-token connection's is decoded and, when its document belongs to another
    /// facility, routed to that facility's inbox (processed there in order).
    fn process_frame(
        self: &Arc<Self>,
        shard: &Arc<Shard>,
        core: &mut ShardCore,
        conn: ConnId,
        frame: &[u8],
    ) -> bool {
        let dev = self
            .conns()
            .info
            .get(&conn)
            .is_some_and(|i| i.device.facility.is_none());
        let mut loader = &*self.store;
        if !dev {
            let actions = core.hub.receive(conn, frame, &mut loader);
            return self.execute(core, actions);
        }
        let msg = match Message::decode(frame) {
            Ok(m) => m,
            // The hub answers a bad frame with its error.
            Err(_) => {
                let actions = core.hub.receive(conn, frame, &mut loader);
                return self.execute(core, actions);
            }
        };
        let doc = match &msg {
            Message::Request { document_id, .. }
            | Message::Sync { document_id, .. }
            | Message::Ephemeral { document_id, .. } => document_id.parse::<DocumentId>().ok(),
            _ => None,
        };
        if let Message::Join { .. } = &msg
            && let Some(i) = self.conns().info.get_mut(&conn)
        {
            i.join = Some(msg.clone());
        }
        match doc.map(|d| self.shard_of_doc(&d)) {
            Some(target) if !Arc::ptr_eq(&target, shard) => {
                // Never wait here (this thread holds this shard's hub): a full inbox is waited
                // on by a task, which keeps this connection's messages for that shard in order
                // only as long as the inbox has room; a development token is not for production.
                match target.inbox().try_send(ShardMsg::Routed { conn, msg }) {
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                    Err(mpsc::error::TrySendError::Full(m)) => {
                        tokio::spawn(async move {
                            let _ = target.inbox().send(m).await;
                        });
                    }
                }
                false
            }
            _ => self.process_message(shard, core, conn, msg),
        }
    }

    /// A decoded message in this shard (registering the connection here first when it is a
    /// development-token connection seen here for the first time).
    fn process_message(
        &self,
        shard: &Arc<Shard>,
        core: &mut ShardCore,
        conn: ConnId,
        msg: Message,
    ) -> bool {
        let wrote = self.enter(conn, shard, core);
        let mut loader = &*self.store;
        let actions = core.hub.receive_message(conn, msg, &mut loader);
        self.execute(core, actions) || wrote
    }

    /// Register a connection in a further shard, replaying its `join` (the reply is dropped:
    /// the connection already has the server's `peer`). Nothing when it is registered here
    /// already, or gone: the check and the registration happen under the connection table's
    /// lock, so a connection that left is never registered again.
    fn enter(&self, conn: ConnId, shard: &Arc<Shard>, core: &mut ShardCore) -> bool {
        let (join, access, device) = {
            let mut conns = self.conns();
            let Some(i) = conns.info.get_mut(&conn) else {
                return false;
            };
            if i.shards.iter().any(|s| Arc::ptr_eq(s, shard)) {
                return false;
            }
            i.shards.push(shard.clone());
            (i.join.clone(), i.access.clone(), i.device.name.clone())
        };
        core.hub.connect_device(conn, access, Some(device));
        let Some(join) = join else {
            return false;
        };
        let mut loader = &*self.store;
        let actions = core.hub.receive_message(conn, join, &mut loader);
        let kept: Vec<Action> = actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Send(c, _) if *c == conn))
            .collect();
        self.execute(core, kept)
    }

    pub async fn protocol_error(&self, conn: ConnId, reason: &str) {
        tracing::warn!(conn, %reason, "protocol error");
        self.audit_for(conn, "protocol-error", None, Some(reason.to_string()));
        let target_id = self.conns().info.get(&conn).and_then(|i| match &i.join {
            Some(Message::Join { sender_id, .. }) => Some(sender_id.clone()),
            _ => None,
        });
        if let Some(tx) = self.sender(conn) {
            let frame = Message::Error {
                sender_id: Some(self.shards.peer_id().to_string()),
                target_id,
                message: reason.to_string(),
            }
            .encode();
            let _ = tx.send(Outbound::Frame(frame));
            let _ = tx.send(Outbound::Close(reason.to_string()));
        }
        self.leave_shards(conn, false).await;
    }

    pub async fn unregister(&self, conn: ConnId) {
        {
            let mut conns = self.conns();
            conns.senders.remove(&conn);
            if let Some(device) = conns.info.get(&conn).map(|i| i.device.name.clone())
                && let Some(n) = conns.device_conns.get_mut(&device)
            {
                *n = n.saturating_sub(1);
            }
        }
        self.leave_shards(conn, true).await;
    }

    /// Disconnect a connection from every shard it is in (its sync states are saved), through
    /// each shard's inbox, after whatever it sent before. With `forget`, its entry in the
    /// connection table goes in the same step, so no shard can register it again afterwards.
    async fn leave_shards(&self, conn: ConnId, forget: bool) {
        let shards = {
            let mut conns = self.conns();
            if forget {
                conns.info.remove(&conn).map(|i| i.shards)
            } else {
                conns.info.get(&conn).map(|i| i.shards.clone())
            }
        };
        for shard in shards.unwrap_or_default() {
            let _ = shard.inbox().send(ShardMsg::Disconnect { conn }).await;
        }
    }

    /// Whether another enrolment attempt from `client` is allowed now.
    /// Whether another console sign-in from `client` for `username` is allowed now.
    pub fn admit_sign_in(&self, client: &str, username: &str) -> bool {
        self.sign_in_per_address.allow(client) && self.sign_in_per_account.allow(username)
    }

    pub fn admit_enrolment(&self, client: &str) -> bool {
        self.enrol_limiter.allow(client)
    }

    /// Merge whole documents of a facility (an import, the server's staged writes) and fan them
    /// out; returns once they are durable.
    pub async fn merge(
        &self,
        facility: &str,
        docs: Vec<(DocumentId, Vec<u8>)>,
    ) -> Result<(), String> {
        let shard = self.shard_for(Some(facility));
        let mut failure = None;
        {
            let mut core = shard.lock();
            for (id, bytes) in &docs {
                let mut loader = &*self.store;
                match core.hub.merge(*id, bytes, &mut loader) {
                    Ok(actions) => {
                        self.execute(&mut core, actions);
                    }
                    Err(e) => failure = Some(format!("document {id}: {e}")),
                }
            }
        }
        self.flush_and_release(&shard).await;
        failure.map_or(Ok(()), Err)
    }

    /// The EHR push configuration, when the server was started with one.
    pub fn push_config(&self) -> Option<crate::push::PushConfig> {
        self.push.read().ok().and_then(|p| p.clone())
    }

    /// Send due push items every `every` (only with a push configuration).
    fn start_push_worker(self: Arc<Self>, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut shutdown = self.shutdown.clone();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let Some(config) = self.push_config() else {
                    continue;
                };
                match crate::push::Outbox::open(self.store.db()) {
                    Ok(outbox) => {
                        let (ok, failed, pending) = outbox.process(&config).await;
                        if ok + failed > 0 {
                            tracing::info!(ok, failed, pending, "push round");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "push outbox unavailable"),
                }
            }
        });
    }

    /// Audit an event anyone could repeat at will (an unauthenticated or rate-limited request,
    /// a device's repeated denial): the first of its `source` and `reason` in an interval is
    /// written in full, the rest as one summary record with a count.
    pub fn audit_noisy(&self, source: &str, reason: &str, rec: AuditRecord) {
        for r in self.noisy.note(source, reason, rec, chrono::Utc::now()) {
            self.security.record(r);
        }
    }

    /// Write the summaries of aggregation intervals that have ended (all of them with `all`).
    pub fn write_audit_summaries(&self, all: bool) {
        for r in self.noisy.due(chrono::Utc::now(), all) {
            self.security.record(r);
        }
    }

    /// `/metrics` samples of the connection caps and the aggregated audit records.
    fn network_samples(&self) -> Vec<(&'static str, &'static str, &'static str, f64)> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            (
                "rounds_tcp_connections_open",
                "TCP connections open now (pages, API calls and WebSockets).",
                "gauge",
                self.caps.open() as f64,
            ),
            (
                "rounds_connections_refused_total",
                "Connections closed on arrival: --max-connections reached.",
                "counter",
                self.caps.refused_total.load(Relaxed) as f64,
            ),
            (
                "rounds_connections_refused_per_address_total",
                "Connections closed on arrival: --max-connections-per-address reached.",
                "counter",
                self.caps.refused_per_address.load(Relaxed) as f64,
            ),
            (
                "rounds_audit_noisy_events_total",
                "Audited events anyone can repeat (unauthenticated, rate-limited, repeated denials).",
                "counter",
                self.noisy.events.load(Relaxed) as f64,
            ),
            (
                "rounds_audit_events_aggregated_total",
                "Of those, events counted into a summary record instead of written on their own.",
                "counter",
                self.noisy.folded.load(Relaxed) as f64,
            ),
        ]
    }

    pub fn documents_in_memory(&self) -> usize {
        self.shards
            .all()
            .iter()
            .map(|s| s.lock().hub.loaded_documents())
            .sum()
    }

    /// Flush everything (shutdown).
    pub async fn flush(&self) -> Result<(), ServeError> {
        self.flusher
            .flush()
            .await
            .map(|_| ())
            .map_err(ServeError::Flush)
    }
}

/// A shard's drainer: takes what waits in its inbox, up to a burst, and feeds it to the hub on
/// the blocking pool (at most `frame_workers` shards at once); when the burst persisted
/// something, asks for a flush whose completion comes back through the inbox. Ends when the
/// server is gone.
async fn drive(me: Weak<Shared>, shard: Arc<Shard>, mut rx: mpsc::Receiver<ShardMsg>) {
    let mut batch = Vec::with_capacity(crate::shards::BURST);
    loop {
        if rx.recv_many(&mut batch, crate::shards::BURST).await == 0 {
            return;
        }
        let Some(shared) = me.upgrade() else {
            return;
        };
        let wrote = {
            let Ok(_permit) = shared.frame_workers.acquire().await else {
                return;
            };
            let taken = std::mem::take(&mut batch);
            let (s, sh) = (shared.clone(), shard.clone());
            tokio::task::spawn_blocking(move || s.drain(&sh, taken))
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "shard drain failed");
                    None
                })
        };
        if let Some(seq) = wrote {
            let shard = shard.clone();
            tokio::spawn(async move {
                match shared.flusher.flush().await {
                    Ok(_) => {
                        let _ = shard.inbox().send(ShardMsg::Flushed(seq)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store flush failed; changes stay unacknowledged")
                    }
                }
            });
        }
    }
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn sync_upgrade(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    if q.token.is_some() && shared.limits.network.no_query_tokens {
        shared
            .metrics
            .query_tokens_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            "tokens in the URL are turned off on this server (--no-query-tokens): send an \
             Authorization: Bearer header\n",
        )
            .into_response();
    }
    let token = auth::token_of(&headers, q.token.as_deref());
    match shared.security.authenticate(token) {
        Ok(device) => ws
            .max_message_size(shared.max_frame)
            .max_frame_size(shared.max_frame)
            .on_upgrade(move |socket| crate::connection::handle(socket, shared, device)),
        Err(e) => {
            let client = shared.limits.network.client_ip(peer, &headers).to_string();
            let mut a = AuditRecord::new("sync-unauthorized");
            a.detail = Some(format!("{e} (from {client})"));
            shared.audit_noisy(&client, "sync without a valid token", a);
            (StatusCode::UNAUTHORIZED, e.to_string()).into_response()
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        shared.metrics.render(
            shared.documents_in_memory(),
            shared.accounts.password_hashes(),
            &shared.network_samples(),
        ),
    )
}

/// `POST /api/v1/import` (admin token): a data file into the facility's documents.
async fn import(
    _: crate::api_error::Admin,
    State(shared): State<Arc<Shared>>,
    body: String,
) -> Result<axum::Json<serde_json::Value>, crate::api_error::ApiError> {
    use crate::api_error::ApiError;
    let data = rounds_core::parse_data_file(&body).map_err(|p| ApiError::invalid(p.to_string()))?;
    let docs = crate::import::documents_of(&data).map_err(ApiError::internal)?;
    shared.register_facility(&data.facility.id);
    let n = docs.len();
    shared
        .merge(&data.facility.id, docs)
        .await
        .map_err(ApiError::internal)?;
    // Read what was written into the read model now, not at the first page or close.
    let (s, f) = (shared.clone(), data.facility.id.clone());
    crate::api_error::blocking(move || {
        crate::read_model::facility_data(&s.store, &f)
            .map(|_| ())
            .map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok(axum::Json(serde_json::json!({
        "facility": data.facility.id,
        "facility_url": DocumentId::facility(&data.facility.id).url(),
        "documents": n,
    })))
}

/// The HTTP routes.
pub fn router(shared: Arc<Shared>) -> Router {
    use axum::extract::DefaultBodyLimit;
    let net = &shared.limits.network;
    let (body_limit, import_limit) = (net.max_body_bytes, net.max_import_bytes);
    crate::console::routes()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/sync", any(sync_upgrade))
        .route(
            "/api/v1/import",
            post(import).layer(DefaultBodyLimit::max(import_limit)),
        )
        .route("/api/v1/readings", post(crate::alerting::ingest))
        .route(
            "/api/v1/integrations",
            get(crate::alerting::list_integrations).post(crate::alerting::add_integration),
        )
        .route("/api/v1/protocol", post(crate::alerting::set_protocol))
        .route("/api/v1/notifications", get(crate::alerting::notifications))
        .route("/api/v1/devices/enroll", post(crate::admin::enroll))
        .route("/api/v1/devices/codes", post(crate::admin::create_code))
        .route(
            "/api/v1/devices",
            get(crate::admin::list_devices).post(crate::admin::add_device),
        )
        .route("/api/v1/devices/{name}/revoke", post(crate::admin::revoke))
        .route("/api/v1/audit", get(crate::admin::audit))
        .route("/api/v1/quarantine", get(crate::admin::quarantine_list))
        .route(
            "/api/v1/quarantine/{id}",
            get(crate::admin::quarantine_show),
        )
        .route("/api/v1/close", post(crate::admin::close_month))
        .route("/api/v1/encounters", get(crate::admin::encounters))
        .route("/api/v1/export", get(crate::admin::export))
        // Every body-reading extractor stops at this (413); the import's own limit overrides it.
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(shared)
}

/// Run the server until SIGINT/SIGTERM, then close connections and flush.
/// A started server: its shared state, address and certificate fingerprint.
pub struct Running {
    pub shared: Arc<Shared>,
    pub addr: SocketAddr,
    /// SHA-256 of the TLS certificate (hex); empty with --insecure-http.
    pub fingerprint: String,
    handle: axum_server::Handle<SocketAddr>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Close the connections, stop listening, flush the store.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.handle.graceful_shutdown(Some(Duration::from_secs(5)));
        let _ = self.server.await;
        self.shared.write_audit_summaries(true);
        self.shared.flush().await
    }
}

/// Open the store and start listening; prints the certificate and address lines.
pub async fn start(opts: &ServeOptions) -> Result<Running, ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared::open(
        &opts.store,
        opts.max_frame,
        opts.dev_token.clone(),
        opts.limits.clone(),
        opts.rules.clone(),
        stop_rx,
    )?;
    shared.clone().start_auto_close(opts.close_check);
    {
        let shared = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.write_audit_summaries(false);
            }
        });
    }
    if let Ok(mut p) = shared.push.write() {
        *p = opts.push.clone();
    }
    shared.clone().start_push_worker(Duration::from_secs(5));
    if let Ok(mut c) = shared.alerting.config.write() {
        *c = opts.notify.clone().unwrap_or_default();
    }
    if let (Some(f), Ok(mut c)) = (&opts.clock_file, shared.alerting.clock.write()) {
        *c = crate::alerting::Clock::File(f.clone());
    }
    let alert_rx = shared
        .alert_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(rx) = alert_rx {
        shared.clone().start_alerting(rx, opts.alert_tick);
    }
    if opts.dev_token.is_some() {
        eprintln!(
            "WARNING: --dev-token: a development token is accepted for every facility's documents"
        );
    }
    let app = router(shared.clone());
    let handle = axum_server::Handle::new();
    let mut out = std::io::stdout().lock();
    let scheme = if opts.insecure_http { "http" } else { "https" };
    let mut fingerprint = String::new();
    let net = &opts.limits.network;
    let capped = crate::network::CappedAcceptor::new(shared.caps.clone());
    // Every request's headers within the timeout (hyper's own timer), and the first request
    // within it too: that also bounds the protocol detection before it, which hyper does not
    // time (a client that sends half a request line would otherwise hold its socket forever).
    fn configure<A>(
        mut server: axum_server::Server<SocketAddr, A>,
        timeout: Duration,
    ) -> axum_server::Server<SocketAddr, A> {
        server.http_builder().http1().header_read_timeout(timeout);
        server.first_request_timeout(timeout)
    }
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let server = if opts.insecure_http {
        eprintln!(
            "WARNING: --insecure-http: traffic (patient data, tokens) is NOT encrypted; use only on a trusted network"
        );
        let server = configure(
            axum_server::bind(opts.listen).acceptor(capped),
            net.header_timeout(),
        )
        .handle(handle.clone());
        tokio::spawn(async move { server.serve(service).await })
    } else {
        let tls = tls::setup(
            &opts.store,
            opts.tls_cert.as_deref(),
            opts.tls_key.as_deref(),
        )?;
        let _ = writeln!(
            out,
            "rounds: TLS certificate {}{} sha256 {}",
            tls.cert_path.display(),
            if tls.generated {
                " (generated, self-signed)"
            } else {
                ""
            },
            tls.fingerprint
        );
        fingerprint = tls.fingerprint.clone();
        let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.config);
        // The caps first (before the handshake), then TLS with the same timeout.
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
            .handshake_timeout(net.header_timeout())
            .acceptor(capped);
        let server = configure(
            axum_server::bind(opts.listen).acceptor(acceptor),
            net.header_timeout(),
        )
        .handle(handle.clone());
        tokio::spawn(async move { server.serve(service).await })
    };
    let Some(addr) = handle.listening().await else {
        let source = match server.await {
            Ok(Err(e)) => e,
            _ => std::io::Error::other("server did not start"),
        };
        return Err(ServeError::Listen {
            addr: opts.listen,
            source,
        });
    };
    let _ = writeln!(
        out,
        "rounds: listening on {scheme}://{addr} (sync at /sync, store {})",
        opts.store.display()
    );
    let _ = out.flush();
    Ok(Running {
        shared,
        addr,
        fingerprint,
        handle,
        stop: stop_tx,
        server,
    })
}

/// Run the server until SIGINT/SIGTERM, then close connections and flush.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let running = start(&opts).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.stop().await?;
    println!("rounds: stopped; store flushed");
    Ok(())
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join() -> axum::body::Bytes {
        Message::Join {
            sender_id: "tablet".into(),
            peer_metadata: rounds_core::sync::wire::PeerMetadata::default(),
            supported_protocol_versions: vec!["1".into()],
        }
        .encode()
        .into()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_facilitys_work_never_waits_on_anothers() {
        let dir = tempfile::tempdir().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let shared = Shared::open(
            dir.path(),
            8 << 20,
            None,
            Limits::default(),
            rounds_core::billing::RuleSet::default(),
            shutdown,
        )
        .unwrap();
        let device = |name: &str, facility: &str| Device {
            name: name.into(),
            facility: Some(facility.into()),
        };
        let (tx_a, mut rx_a, _) = crate::outlet::Outlet::new(1 << 20);
        let (tx_b, mut rx_b, _) = crate::outlet::Outlet::new(1 << 20);
        shared
            .register(1, tx_a, device("tab-a", "a"))
            .await
            .unwrap();
        shared
            .register(2, tx_b, device("tab-b", "b"))
            .await
            .unwrap();
        // Facility a's hub is busy (its lock held by another thread, as by a long merge)...
        let busy = shared.shard_for(Some("a"));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _guard = busy.lock();
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        held_rx.recv().unwrap();
        // ...a frame of a's waits in a's inbox (the connection is not held up)...
        tokio::time::timeout(Duration::from_secs(5), shared.receive(1, join()))
            .await
            .expect("a's frame queued");
        // ...and facility b is answered all the same.
        tokio::time::timeout(Duration::from_secs(5), shared.receive(2, join()))
            .await
            .expect("b's frame queued");
        let answer = tokio::time::timeout(Duration::from_secs(5), rx_b.recv())
            .await
            .expect("facility b waited on facility a");
        match answer {
            Some(Outbound::Frame(f)) => {
                assert!(matches!(Message::decode(&f), Ok(Message::Peer { .. })))
            }
            _ => panic!("no answer to b's join"),
        }
        assert!(
            rx_a.try_recv().is_none(),
            "a answered while its hub was busy"
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        // a's frame is served once its hub is free.
        let answer = tokio::time::timeout(Duration::from_secs(5), rx_a.recv())
            .await
            .expect("facility a served after its work");
        assert!(matches!(answer, Some(Outbound::Frame(_))));
        assert_eq!(shared.shards.all().len(), 2);
    }
}
