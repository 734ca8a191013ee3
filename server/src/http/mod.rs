//! The HTTP side: the router (console, sync upgrade, metrics, import, admin API), starting and
//! stopping the listener with its TLS, caps and timeouts.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use rounds_core::DocumentId;
use tokio::sync::watch;

use crate::server::{ServeError, ServeOptions, Shared};

pub mod admin;
pub mod alerting;
pub mod api_error;
pub mod console;

/// The bearer token from the `Authorization` header, or the `token` query parameter.
pub fn token_of<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query_token)
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
    let client = shared.limits.network.client_ip(peer, &headers).to_string();
    let header = token_of(&headers, None);
    match shared.admit_sync(header, q.token.as_deref(), &client) {
        Ok(device) => ws
            .max_message_size(shared.max_frame)
            .max_frame_size(shared.max_frame)
            .on_upgrade(move |socket| {
                use tracing::Instrument;
                let span = tracing::info_span!(
                    "sync",
                    device = %device.name,
                    facility = device.facility.as_deref().unwrap_or("*")
                );
                crate::server::connection::handle(socket, shared, device).instrument(span)
            }),
        Err(e) => crate::http::api_error::ApiError::from(e).into_response(),
    }
}

/// The HTTP access log (target `rounds::access`, level info): method, path without its query
/// (a query may carry a token), status, time taken and client address — never headers or
/// bodies, so no token, password or patient data.
async fn access_log(
    State(shared): State<std::sync::Weak<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    if let Some(shared) = shared.upgrade() {
        shared
            .metrics
            .http_responses
            .get_or_create(&crate::sync::metrics::label(
                "code",
                resp.status().as_u16().to_string(),
            ))
            .inc();
    }
    tracing::info!(
        target: "rounds::access",
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        client = %client,
        "http"
    );
    resp
}

/// `/readyz`: 200 when the store takes a durable write and every background worker ran its
/// last round on time, else 503 with one line per problem. (`/healthz` is liveness only: the
/// process answers.)
async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let store = shared.store.clone();
    let mut problems = Vec::new();
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || store.probe()),
    )
    .await
    {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => problems.push(e),
        Ok(Err(e)) => problems.push(format!("store probe: {e}")),
        Err(_) => problems.push("store: no answer within 5 s".into()),
    }
    for (worker, secs) in shared.metrics.stale_workers() {
        problems.push(format!("worker {worker}: last round {secs} s ago"));
    }
    if problems.is_empty() {
        (axum::http::StatusCode::OK, "ready\n".to_string())
    } else {
        tracing::warn!(problems = %problems.join("; "), "not ready");
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", problems.join("\n")),
        )
    }
}

/// `/metrics`: OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`,
/// as Prometheus does), the Prometheus text format otherwise.
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    let s = shared.clone();
    let text = tokio::task::spawn_blocking(move || s.metrics.render(&s.scrape_samples()))
        .await
        .unwrap_or_default();
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
    } else {
        (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            crate::sync::metrics::to_prometheus_text(&text),
        )
    }
}

/// `POST /api/v1/import` (admin token): a data file into the facility's documents.
async fn import(
    _: crate::http::api_error::Admin,
    State(shared): State<Arc<Shared>>,
    body: String,
) -> Result<axum::Json<serde_json::Value>, crate::http::api_error::ApiError> {
    let done = shared.import_data(body).await?;
    Ok(axum::Json(serde_json::json!({
        "facility": done.facility,
        "facility_url": DocumentId::facility(&done.facility).url(),
        "documents": done.documents,
    })))
}

/// `POST /api/v1/import/census/{facility}` (a census CSV) and `/api/v1/import/fhir/{facility}`
/// (a Bundle of FHIR `Patient` resources), admin: the residents join a facility already on the
/// server; every row checked first, residents already on the roster left as they are.
async fn import_roster(
    _: crate::http::api_error::Admin,
    State(shared): State<Arc<Shared>>,
    axum::extract::Path((format, facility)): axum::extract::Path<(String, String)>,
    body: String,
) -> Result<axum::Json<serde_json::Value>, crate::http::api_error::ApiError> {
    use rounds_core::roster::RosterFormat;
    let format = match format.as_str() {
        "census" => RosterFormat::CensusCsv,
        "fhir" => RosterFormat::Fhir,
        other => {
            return Err(crate::http::api_error::ApiError::not_found(format!(
                "no roster format {other:?} (census, fhir)"
            )));
        }
    };
    let done = shared.import_roster(&facility, format, body).await?;
    Ok(axum::Json(serde_json::json!({
        "facility": done.facility,
        "added": done.added,
        "already_on_roster": done.already,
        "documents": done.documents,
    })))
}

/// The HTTP routes.
pub fn router(shared: Arc<Shared>) -> Router {
    use axum::extract::DefaultBodyLimit;
    let net = &shared.limits.network;
    let (body_limit, import_limit) = (net.max_body_bytes, net.max_import_bytes);
    crate::http::console::routes()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/sync", any(sync_upgrade))
        .route(
            "/api/v1/import",
            post(import).layer(DefaultBodyLimit::max(import_limit)),
        )
        .route(
            "/api/v1/import/{format}/{facility}",
            post(import_roster).layer(DefaultBodyLimit::max(import_limit)),
        )
        .route("/api/v1/readings", post(crate::http::alerting::ingest))
        .route(
            "/api/v1/vendors/{vendor}",
            post(crate::http::alerting::vendor_ingest),
        )
        .route(
            "/api/v1/integrations",
            get(crate::http::alerting::list_integrations)
                .post(crate::http::alerting::add_integration),
        )
        .route(
            "/api/v1/protocol",
            post(crate::http::alerting::set_protocol),
        )
        .route(
            "/api/v1/notifications",
            get(crate::http::alerting::notifications),
        )
        .route("/api/v1/devices/enroll", post(crate::http::admin::enroll))
        .route(
            "/api/v1/devices/codes",
            post(crate::http::admin::create_code),
        )
        .route(
            "/api/v1/devices",
            get(crate::http::admin::list_devices).post(crate::http::admin::add_device),
        )
        .route(
            "/api/v1/devices/{name}/revoke",
            post(crate::http::admin::revoke),
        )
        .route("/api/v1/audit", get(crate::http::admin::audit))
        .route(
            "/api/v1/quarantine",
            get(crate::http::admin::quarantine_list),
        )
        .route(
            "/api/v1/quarantine/{id}",
            get(crate::http::admin::quarantine_show),
        )
        .route("/api/v1/close", post(crate::http::admin::close_month))
        .route("/api/v1/backup", post(crate::http::admin::backup))
        .route("/api/v1/encounters", get(crate::http::admin::encounters))
        .route("/api/v1/export", get(crate::http::admin::export))
        .route("/api/v1/practices", get(crate::http::admin::practices))
        .route(
            "/api/v1/practices/{id}",
            axum::routing::put(crate::http::admin::put_practice),
        )
        .route("/api/v1/summary", get(crate::http::admin::summary))
        .route("/api/v1/push", get(crate::http::admin::push_status))
        // Every body-reading extractor stops at this (413); the import's own limit overrides it.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::downgrade(&shared),
            access_log,
        ))
        .with_state(shared)
}

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

/// Bind `opts.listen`, open the store and start serving; prints the certificate and address
/// lines.
pub async fn start(opts: &ServeOptions) -> Result<Running, ServeError> {
    start_on(bind(opts.listen)?, opts).await
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    std::net::TcpListener::bind(addr).map_err(|source| ServeError::Listen { addr, source })
}

/// Serve on `listener` (bound by the caller: port 0 in tests) until `shutdown` completes, then
/// close the connections, stop listening and flush the store.
pub async fn run(
    listener: std::net::TcpListener,
    opts: &ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let running = start_on(listener, opts).await?;
    shutdown.await;
    tracing::info!("shutting down");
    running.stop().await
}

/// Open the store and start serving on `listener`; prints the certificate and address lines.
pub async fn start_on(
    listener: std::net::TcpListener,
    opts: &ServeOptions,
) -> Result<Running, ServeError> {
    let listen = listener.local_addr().unwrap_or(opts.listen);
    // The HTTP clients (webhooks, FHIR push) need a process-wide TLS provider; the binary
    // installs it first, an embedding program may not have (a second install is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (stop_tx, stop_rx) = watch::channel(false);
    // On a shared database a server waits while a command writes to it straight (the command's
    // `writer` lease); other servers it joins side by side.
    let mut announced = false;
    let shared = loop {
        match Shared::open(
            &opts.store,
            opts.max_frame,
            opts.dev_token.clone(),
            opts.limits.clone(),
            opts.rules.clone(),
            stop_rx.clone(),
        ) {
            Err(ServeError::Held(crate::sync::store::lease::HeldError::Held { secs })) => {
                if !announced {
                    eprintln!(
                        "rounds: waiting: a command writes to {} (lease {secs} s more); serving when it ends",
                        opts.store
                    );
                    announced = true;
                }
                if *stop_rx.borrow() {
                    return Err(ServeError::Flush(
                        "stopped while waiting for the store".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other?,
        }
    };
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
    if let Ok(mut c) = shared.alerting.clock.write() {
        *c = opts.clock.clone();
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
    let mut out = std::io::stdout();
    let scheme = if opts.insecure_http { "http" } else { "https" };
    let mut fingerprint = String::new();
    let net = &opts.limits.network;
    let capped = crate::server::network::CappedAcceptor::new(shared.caps.clone());
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
    let mut current_tls: Option<Arc<crate::server::tls::CurrentTls>> = None;
    let server = if opts.insecure_http {
        eprintln!(
            "WARNING: --insecure-http: traffic (patient data, tokens) is NOT encrypted; use only on a trusted network"
        );
        let server = configure(
            from_tcp(listener, listen)?.acceptor(capped),
            net.header_timeout(),
        )
        .handle(handle.clone());
        tokio::spawn(async move { server.serve(service).await })
    } else {
        let tls = crate::server::tls::setup(
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
        // On a shared database, commands find the certificate to pin there.
        if opts.store.dir().is_none() {
            let pem = std::fs::read(&tls.cert_path)
                .map_err(|e| ServeError::Flush(format!("{}: {e}", tls.cert_path.display())))?;
            shared.store.write_file("tls/cert.pem", &pem)?;
        }
        let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.config.clone());
        let current = crate::server::tls::CurrentTls::new(tls.config.clone());
        current_tls = Some(current.clone());
        {
            let shared = Arc::downgrade(&shared);
            crate::server::tls::spawn_reloader(
                crate::server::tls::TlsSource {
                    store: opts.store.clone(),
                    cert: opts.tls_cert.clone(),
                    key: opts.tls_key.clone(),
                },
                &tls,
                (config.clone(), current),
                Duration::from_secs(5),
                stop_rx_for_tls(&shared),
                move |outcome| {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    let mut a = crate::services::security::AuditRecord::new("tls-reload");
                    match &outcome {
                        Ok(m) => {
                            tracing::info!("{m}");
                            a.detail = Some(m.clone());
                        }
                        Err(e) => {
                            tracing::error!("{e}");
                            a.action = "tls-reload-failed".into();
                            a.detail = Some(e.clone());
                        }
                    }
                    shared.security.record(a);
                },
            );
        }
        // The caps first (before the handshake), then TLS with the same timeout.
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
            .handshake_timeout(net.header_timeout())
            .acceptor(capped);
        let server = configure(
            from_tcp(listener, listen)?.acceptor(acceptor),
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
            addr: listen,
            source,
        });
    };
    let _ = writeln!(
        out,
        "rounds: listening on {scheme}://{addr} (sync at /sync, store {})",
        opts.store
    );
    if let Some(adt) = &opts.adt {
        let feed = crate::server::adt::AdtFeed::open(shared.store.db(), adt.settings.clone())
            .map_err(|e| ServeError::Flush(format!("opening the ADT feed's tree: {e}")))?;
        let tls = match (adt.tls, current_tls.clone()) {
            (false, _) => None,
            (true, Some(current)) => Some(current),
            (true, None) => {
                let tls = crate::server::tls::setup(
                    &opts.store,
                    opts.tls_cert.as_deref(),
                    opts.tls_key.as_deref(),
                )?;
                Some(crate::server::tls::CurrentTls::new(tls.config))
            }
        };
        let listener = tokio::net::TcpListener::bind(adt.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: adt.listen,
                source,
            })?;
        let at = listener.local_addr().unwrap_or(adt.listen);
        let _ = writeln!(
            out,
            "rounds: ADT feed (HL7 v2 over MLLP{}) on {at}, {} sending facilit{}",
            if adt.tls { ", TLS" } else { "" },
            adt.settings.feed.len(),
            if adt.settings.feed.len() == 1 {
                "y"
            } else {
                "ies"
            }
        );
        crate::server::adt::start(shared.clone(), Arc::new(feed), listener, tls);
    }
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

/// The server's shutdown signal, for a task that holds the server only weakly.
fn stop_rx_for_tls(shared: &std::sync::Weak<Shared>) -> watch::Receiver<bool> {
    match shared.upgrade() {
        Some(s) => s.shutdown.clone(),
        None => watch::channel(true).1,
    }
}

/// Run the server until SIGINT/SIGTERM, then close connections and flush.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    run(bind(opts.listen)?, &opts, wait_for_signal()).await?;
    println!("rounds: stopped; store flushed");
    Ok(())
}

fn from_tcp(
    listener: std::net::TcpListener,
    addr: SocketAddr,
) -> Result<axum_server::Server<SocketAddr>, ServeError> {
    axum_server::from_tcp(listener).map_err(|source| ServeError::Listen { addr, source })
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

/// Percent-encodes a path segment or query value (unreserved characters kept).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
