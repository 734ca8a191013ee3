//! `rounds serve`: axum over rustls, the sync endpoint, health and metrics, graceful shutdown.

use std::collections::HashMap;
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
use rounds_core::sync::hub::{Access, Action, ConnId, Hub, HubConfig};
use tokio::sync::{mpsc, watch};

use crate::auth;
use crate::flusher::Flusher;
use crate::metrics::Metrics;
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
    pub dev_token: String,
}

/// The hub and the senders of the open connections, under one lock.
pub struct Core {
    pub hub: Hub,
    senders: HashMap<ConnId, mpsc::UnboundedSender<Outbound>>,
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
    dev_token: String,
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
        dev_token: String,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Shared>, ServeError> {
        std::fs::create_dir_all(store_dir).map_err(|source| ServeError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let store = Arc::new(SledStore::open(store_dir)?);
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(
            format!("rounds-server-{}", store.storage_id()),
            store.storage_id().to_string(),
            store.written_seq(),
            HubConfig::default(),
        );
        Ok(Arc::new(Shared {
            core: Mutex::new(Core {
                hub,
                senders: HashMap::new(),
            }),
            flusher: Flusher::start(store.clone(), metrics.clone()),
            store,
            metrics,
            max_frame,
            next_conn: AtomicU64::new(1),
            shutdown,
            dev_token,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug; keep serving with the state as it is.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(
        &self,
        conn: ConnId,
        tx: mpsc::UnboundedSender<Outbound>,
        access: Arc<dyn Access>,
    ) {
        let mut core = self.lock();
        core.hub.connect(conn, access);
        core.senders.insert(conn, tx);
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
                    if let Err(e) = self.store.persist(&doc, seq, &chunk, snapshot) {
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

    /// Run a hub operation; if it persisted anything, flush and then release held documents.
    async fn apply(&self, f: impl FnOnce(&mut Hub, &SledStore) -> Vec<Action>) {
        let wrote = {
            let mut core = self.lock();
            let actions = f(&mut core.hub, &self.store);
            self.execute(&mut core, actions)
        };
        if wrote {
            self.flush_and_release().await;
        }
    }

    async fn flush_and_release(&self) {
        match self.flusher.flush().await {
            Ok(seq) => {
                let mut core = self.lock();
                let actions = core.hub.flushed(seq);
                self.execute(&mut core, actions);
            }
            Err(e) => {
                tracing::error!(error = %e, "store flush failed; changes stay unacknowledged")
            }
        }
    }

    pub async fn receive(&self, conn: ConnId, frame: &[u8]) {
        self.apply(|hub, store| {
            let mut loader = store;
            hub.receive(conn, frame, &mut loader)
        })
        .await;
    }

    pub async fn protocol_error(&self, conn: ConnId, reason: &str) {
        tracing::warn!(conn, %reason, "protocol error");
        let mut core = self.lock();
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
        let actions = core.hub.disconnect(conn);
        self.execute(&mut core, actions);
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
    match auth::authenticate(&shared.dev_token, token) {
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
    if auth::authenticate(&shared.dev_token, auth::token_of(&headers, None)).is_err() {
        return (StatusCode::UNAUTHORIZED, "admin token required\n").into_response();
    }
    let data = match rounds_core::parse_data_file(&body) {
        Ok(d) => d,
        Err(p) => return (StatusCode::UNPROCESSABLE_ENTITY, format!("{p}\n")).into_response(),
    };
    match crate::import::documents_of(&data) {
        Ok(docs) => {
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
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/sync", any(sync_upgrade))
        .route("/api/v1/import", post(import))
        .with_state(shared)
}

/// Run the server until SIGINT/SIGTERM, then close connections and flush.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared::open(&opts.store, opts.max_frame, opts.dev_token.clone(), stop_rx)?;
    let app = router(shared.clone());
    let handle = axum_server::Handle::new();
    let mut out = std::io::stdout().lock();
    let scheme = if opts.insecure_http { "http" } else { "https" };
    let server = if opts.insecure_http {
        eprintln!(
            "WARNING: --insecure-http: traffic (patient data, tokens) is NOT encrypted; use only on a trusted network"
        );
        let h = handle.clone();
        let addr = opts.listen;
        tokio::spawn(async move {
            axum_server::bind(addr)
                .handle(h)
                .serve(app.into_make_service())
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
        let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.config);
        let h = handle.clone();
        let addr = opts.listen;
        tokio::spawn(async move {
            axum_server::bind_rustls(addr, config)
                .handle(h)
                .serve(app.into_make_service())
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
    drop(out);
    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    handle.graceful_shutdown(Some(Duration::from_secs(5)));
    let _ = server.await;
    shared.flush().await?;
    println!("rounds: stopped; store flushed");
    Ok(())
}

async fn wait_for_signal() {
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
