//! `rounds serve`: axum over rustls, the sync endpoint, health and metrics, graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use rounds_core::DocumentId;
use rounds_core::sync::hub::{Access, Action, AllowAll, ConnId, Hub, HubConfig};
use tokio::sync::{mpsc, watch};

use crate::access::{FacilityAccess, FacilityIndex};
use crate::auth::{self, Device};
use crate::flusher::Flusher;
use crate::metrics::Metrics;
use crate::security::{AuditRecord, RateLimiter, Security};
use crate::store::SledStore;
use crate::tls;

/// What a connection task is told to do.
pub enum Outbound {
    Frame(Vec<u8>),
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
        }
    }
}

/// A connection's device and what has been audited for it.
struct ConnInfo {
    device: Device,
    audited: HashSet<(DocumentId, bool)>,
}

/// The hub and the senders of the open connections, under one lock.
pub struct Core {
    pub hub: Hub,
    /// Documents persisted since the last flush (for late-data re-evaluation).
    persisted: Vec<DocumentId>,
    senders: HashMap<ConnId, mpsc::UnboundedSender<Outbound>>,
    conns: HashMap<ConnId, ConnInfo>,
    device_conns: HashMap<String, usize>,
}

/// State shared by all connections.
pub struct Shared {
    core: Mutex<Core>,
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
    pub(crate) late_tx: mpsc::UnboundedSender<(String, rounds_core::Month)>,
    pub limits: Limits,
    pub alerting: crate::alerting::Alerting,
    pub accounts: crate::console::accounts::Accounts,
    /// Changes refused by the gate or the write policy.
    pub quarantine: crate::quarantine::Quarantine,
    push: std::sync::RwLock<Option<crate::push::PushConfig>>,
    alert_rx: Mutex<Option<mpsc::UnboundedReceiver<DocumentId>>>,
    frame_limiter: RateLimiter,
    enrol_limiter: RateLimiter,
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
        let hub = Hub::new(
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
        let shared = Arc::new(Shared {
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
            core: Mutex::new(Core {
                hub,
                persisted: Vec::new(),
                senders: HashMap::new(),
                conns: HashMap::new(),
                device_conns: HashMap::new(),
            }),
            security,
            index: Arc::new(FacilityIndex::new(store.clone())),
            frame_limiter: RateLimiter::new(limits.frames_per_second, limits.frame_burst),
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug; keep serving with the state as it is.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a connection; refused when the device has too many open already.
    pub fn register(
        &self,
        conn: ConnId,
        tx: mpsc::UnboundedSender<Outbound>,
        device: Device,
    ) -> Result<(), String> {
        let access: Arc<dyn Access> = match &device.facility {
            Some(f) => Arc::new(FacilityAccess {
                facility: f.clone(),
                index: self.index.clone(),
            }),
            None => Arc::new(AllowAll),
        };
        let mut core = self.lock();
        let open = core.device_conns.entry(device.name.clone()).or_default();
        if *open >= self.limits.connections_per_device {
            return Err(format!(
                "device {} already has {} connections open (limit {})",
                device.name, open, self.limits.connections_per_device
            ));
        }
        *open += 1;
        core.hub.connect(conn, access);
        core.senders.insert(conn, tx);
        core.conns.insert(
            conn,
            ConnInfo {
                device,
                audited: HashSet::new(),
            },
        );
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

    fn audit_for(
        &self,
        core: &Core,
        conn: ConnId,
        action: &str,
        doc: Option<&str>,
        detail: Option<String>,
    ) {
        let mut rec = AuditRecord::new(action);
        if let Some(info) = core.conns.get(&conn) {
            rec.device = Some(info.device.name.clone());
            rec.facility = info.device.facility.clone();
            if let (Some(f), Some(d)) = (
                &info.device.facility,
                doc.and_then(|d| d.parse::<DocumentId>().ok()),
            ) {
                rec.patient = self.index.lookup(f, &d).flatten();
            }
        }
        rec.document = doc.map(str::to_string);
        rec.detail = detail;
        self.security.record(rec);
    }

    /// Carry out hub actions; returns whether something was persisted (a flush is due).
    fn execute(&self, core: &mut Core, actions: Vec<Action>) -> bool {
        let mut wrote = false;
        for action in actions {
            match action {
                Action::Send(conn, frame) => {
                    if let Some(tx) = core.senders.get(&conn) {
                        let _ = tx.send(Outbound::Frame(frame));
                    }
                }
                Action::Close(conn, reason) => {
                    tracing::warn!(conn, %reason, "closing connection");
                    if let Some(tx) = core.senders.get(&conn) {
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
                    self.audit_for(core, conn, "denied", Some(&doc), None);
                }
                Action::Accessed { conn, doc, wrote } => {
                    let first = core
                        .conns
                        .get_mut(&conn)
                        .is_some_and(|i| i.audited.insert((doc, wrote)));
                    if first {
                        let action = if wrote { "write" } else { "read" };
                        self.audit_for(core, conn, action, Some(&doc.to_string()), None);
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
                    let (device, facility) = core
                        .conns
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
                    self.audit_for(core, conn, "refused", Some(&doc.to_string()), Some(text));
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

    async fn flush_and_release(&self) {
        match self.flusher.flush().await {
            Ok(seq) => {
                let persisted = {
                    let mut core = self.lock();
                    let actions = core.hub.flushed(seq);
                    self.execute(&mut core, actions);
                    std::mem::take(&mut core.persisted)
                };
                self.alerts_changed(&persisted);
                self.late_data(persisted).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "store flush failed; changes stay unacknowledged")
            }
        }
    }

    /// A frame from a connection: decoded, screened by the gate, policy-checked and applied on
    /// the blocking pool (never on an async worker), then flushed before anything is released.
    pub async fn receive(self: &Arc<Self>, conn: ConnId, frame: axum::body::Bytes) {
        let shared = self.clone();
        let wrote = tokio::task::spawn_blocking(move || {
            let mut core = shared.lock();
            let mut loader = &*shared.store;
            let actions = core.hub.receive(conn, &frame, &mut loader);
            shared.execute(&mut core, actions)
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(conn, error = %e, "frame processing failed");
            false
        });
        if wrote {
            self.flush_and_release().await;
        }
    }

    pub async fn protocol_error(&self, conn: ConnId, reason: &str) {
        tracing::warn!(conn, %reason, "protocol error");
        let mut core = self.lock();
        self.audit_for(
            &core,
            conn,
            "protocol-error",
            None,
            Some(reason.to_string()),
        );
        let target_id = core.hub.peer_of(conn).map(str::to_string);
        if let Some(tx) = core.senders.get(&conn) {
            let frame = rounds_core::sync::wire::Message::Error {
                sender_id: Some(core.hub.peer_id().to_string()),
                target_id,
                message: reason.to_string(),
            }
            .encode();
            let _ = tx.send(Outbound::Frame(frame));
            let _ = tx.send(Outbound::Close(reason.to_string()));
        }
        let actions = core.hub.disconnect(conn);
        self.execute(&mut core, actions);
    }

    pub async fn unregister(&self, conn: ConnId) {
        let mut core = self.lock();
        core.senders.remove(&conn);
        if let Some(info) = core.conns.remove(&conn)
            && let Some(n) = core.device_conns.get_mut(&info.device.name)
        {
            *n = n.saturating_sub(1);
        }
        let actions = core.hub.disconnect(conn);
        self.execute(&mut core, actions);
    }

    /// Whether another enrolment attempt from `client` is allowed now.
    pub fn admit_enrolment(&self, client: &str) -> bool {
        self.enrol_limiter.allow(client)
    }

    /// Merge whole documents (an import) and fan them out; returns once they are durable.
    pub async fn merge(&self, docs: Vec<(DocumentId, Vec<u8>)>) -> Result<(), String> {
        let mut failure = None;
        {
            let mut core = self.lock();
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
        self.flush_and_release().await;
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

    pub fn documents_in_memory(&self) -> usize {
        self.lock().hub.loaded_documents()
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

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn sync_upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let token = auth::token_of(&headers, q.token.as_deref());
    match shared.security.authenticate(token) {
        Ok(device) => ws
            .max_message_size(shared.max_frame)
            .max_frame_size(shared.max_frame)
            .on_upgrade(move |socket| crate::connection::handle(socket, shared, device)),
        Err(e) => (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        shared.metrics.render(shared.documents_in_memory()),
    )
}

async fn import(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = crate::admin::admin_only(&shared, &headers) {
        return r;
    }
    let data = match rounds_core::parse_data_file(&body) {
        Ok(d) => d,
        Err(p) => return (StatusCode::UNPROCESSABLE_ENTITY, format!("{p}\n")).into_response(),
    };
    match crate::import::documents_of(&data) {
        Ok(docs) => {
            shared.register_facility(&data.facility.id);
            let n = docs.len();
            match shared.merge(docs).await {
                Ok(()) => axum::Json(serde_json::json!({
                    "facility": data.facility.id,
                    "facility_url": DocumentId::facility(&data.facility.id).url(),
                    "documents": n,
                }))
                .into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
            }
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The HTTP routes.
pub fn router(shared: Arc<Shared>) -> Router {
    crate::console::routes()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/sync", any(sync_upgrade))
        .route("/api/v1/import", post(import))
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
    let server = if opts.insecure_http {
        eprintln!(
            "WARNING: --insecure-http: traffic (patient data, tokens) is NOT encrypted; use only on a trusted network"
        );
        let h = handle.clone();
        let addr = opts.listen;
        tokio::spawn(async move {
            axum_server::bind(addr)
                .handle(h)
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await
        })
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
        let h = handle.clone();
        let addr = opts.listen;
        tokio::spawn(async move {
            axum_server::bind_rustls(addr, config)
                .handle(h)
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await
        })
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
