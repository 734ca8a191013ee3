//! `rounds serve`: axum over rustls, the sync endpoint, health and metrics, graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rounds_core::DocumentId;
use rounds_core::sync::hub::{Access, Action, ConnId, HubConfig};
use rounds_core::sync::wire::Message;
use tokio::sync::{mpsc, watch};

use crate::services::auth::Device;
use crate::services::security::{AuditRecord, RateLimiter, Security};
use crate::sync::access::{FacilityAccess, FacilityIndex};
use crate::sync::flusher::Flusher;
use crate::sync::metrics::Metrics;
use crate::sync::shards::{DEV_SHARD, Shard, ShardCore, ShardMsg, Shards};
use crate::sync::store::Store;

mod admission;
pub mod adt;
mod alerting;
mod close;
pub mod connection;
mod driver;
mod import;
pub use admission::{EnrolError, SyncRefusal};
pub use import::{ImportError, Imported};
mod ingest;
pub mod network;
pub mod tls;

/// `rounds serve` settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A directory (sled) or a `postgres://` URL.
    pub store: crate::sync::store::StoreLocation,
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
    pub notify: Option<crate::services::notify::NotifyConfig>,
    /// Where "now" comes from for deadlines, escalations and retries (the system clock, or a
    /// test's clock).
    pub clock: crate::services::alerting::Clock,
    /// How often to escalate overdue alerts and deliver notifications.
    pub alert_tick: Duration,
    /// The practice's EHR (`push.toml`): the console's "approve and push" queues packages and
    /// the server sends them. None: packages are downloaded or pushed with `rounds push`.
    pub push: Option<crate::services::push::PushConfig>,
    /// The facility ADT feed listener (`--adt-listen`); none: no listener.
    pub adt: Option<AdtListen>,
}

/// `--adt-listen`, `--adt-config`, `--adt-tls`.
#[derive(Debug, Clone)]
pub struct AdtListen {
    pub listen: SocketAddr,
    pub settings: rounds_core::adt::AdtSettings,
    /// MLLP inside TLS with the server's certificate.
    pub tls: bool,
}

/// Per-device limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connections_per_device: usize,
    pub documents_per_connection: usize,
    /// Documents no connection uses kept in memory, across facilities (the least recently used
    /// leave first; 0: at once).
    pub idle_documents: usize,
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
    pub network: crate::server::network::NetworkLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_per_device: 4,
            documents_per_connection: 50_000,
            idle_documents: rounds_core::sync::hub::DEFAULT_IDLE_DOCUMENTS,
            frames_per_second: 500.0,
            frame_burst: 20_000.0,
            enrolments_per_minute: 10.0,
            code_lifetime: crate::services::security::CODE_LIFETIME,
            outbound_bytes: 32 << 20,
            sign_ins_per_minute: 20.0,
            network: crate::server::network::NetworkLimits::default(),
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
    senders: HashMap<ConnId, crate::sync::outlet::Outlet>,
    info: HashMap<ConnId, ConnInfo>,
    device_conns: HashMap<String, usize>,
}

/// State shared by all connections.
pub struct Shared {
    /// This server's presence on a PostgreSQL store (while this lives; see `store::lease`).
    _presence: Option<crate::sync::store::lease::Presence>,
    /// A command's `writer` lease on a PostgreSQL store (while this lives).
    _writer: Option<crate::sync::store::lease::WriterGuard>,
    /// One hub per facility (see `shards.rs`).
    pub shards: Shards,
    conns: Mutex<Conns>,
    pub store: Arc<Store>,
    flusher: Flusher,
    pub metrics: Arc<Metrics>,
    pub max_frame: usize,
    pub next_conn: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    pub security: Security,
    pub index: Arc<FacilityIndex>,
    pub ledger: crate::services::ledger::Ledger,
    pub rules: rounds_core::billing::RuleSet,
    /// Documents whose changes re-open closed months: document → (facility, month).
    pub recheck:
        Mutex<HashMap<DocumentId, std::collections::BTreeSet<(String, rounds_core::Month)>>>,
    pub facilities: crate::sync::store::kv::Tree,
    /// The registered facilities, as last read from `facilities`.
    pub(crate) facility_cache: Mutex<Option<Vec<String>>>,
    pub(crate) late_tx: mpsc::UnboundedSender<(String, rounds_core::Month)>,
    pub limits: Limits,
    pub alerting: crate::services::alerting::Alerting,
    pub accounts: crate::services::accounts::Accounts,
    /// Changes refused by the gate or the write policy.
    pub quarantine: crate::sync::quarantine::Quarantine,
    pub(crate) push: std::sync::RwLock<Option<crate::services::push::PushConfig>>,
    pub(crate) alert_rx: Mutex<Option<mpsc::UnboundedReceiver<DocumentId>>>,
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
    pub hashers: crate::services::accounts::hashing::Hashers,
    /// Connections open, in all and per client address (taken in the acceptor).
    pub caps: Arc<crate::server::network::ConnectionCaps>,
    /// Audit records anyone can cause, one per source and reason per interval.
    pub noisy: crate::services::audit_aggregate::Aggregator,
    /// The background jobs' leases on a shared store (see `store::lease::JobLease`).
    jobs: Mutex<HashMap<&'static str, Arc<crate::sync::store::lease::JobLease>>>,
    /// The other servers' writes to a shared store (see `store::feed`); stops when dropped.
    feed: Mutex<Option<crate::sync::store::feed::Feed>>,
    /// Itself, for the shard drainers it starts (they hold it weakly: dropping the server
    /// drops the shards, closes their inboxes and ends the drainers).
    me: Weak<Shared>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::sync::store::StoreError),
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
    #[error(transparent)]
    Held(#[from] crate::sync::store::lease::HeldError),
}

impl Shared {
    /// Open the store and set up the shared state for a server (no sockets yet).
    pub fn open(
        location: &crate::sync::store::StoreLocation,
        max_frame: usize,
        dev_token: Option<String>,
        limits: Limits,
        rules: rounds_core::billing::RuleSet,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Shared>, ServeError> {
        Shared::open_as(
            location, max_frame, dev_token, limits, rules, shutdown, false,
        )
    }

    /// The shared state for a command that writes through it (`rounds import`): on a shared
    /// database it takes the `writer` lease, and is refused while a server runs.
    pub fn open_command(
        location: &crate::sync::store::StoreLocation,
        limits: Limits,
        rules: rounds_core::billing::RuleSet,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Shared>, ServeError> {
        Shared::open_as(location, 8 << 20, None, limits, rules, shutdown, true)
    }

    fn open_as(
        location: &crate::sync::store::StoreLocation,
        max_frame: usize,
        dev_token: Option<String>,
        limits: Limits,
        rules: rounds_core::billing::RuleSet,
        shutdown: watch::Receiver<bool>,
        command: bool,
    ) -> Result<Arc<Shared>, ServeError> {
        if let Some(dir) = location.dir() {
            std::fs::create_dir_all(dir).map_err(|source| ServeError::Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        }
        let store = Arc::new(Store::open_at(location)?);
        // Servers share a database side by side (sled: the directory's lock keeps one); a
        // command writing to it straight makes a starting server wait.
        let (presence, writer) = match location {
            crate::sync::store::StoreLocation::Postgres(_) if command => (
                None,
                Some(crate::sync::store::lease::WriterGuard::acquire(
                    store.meta().clone(),
                )?),
            ),
            crate::sync::store::StoreLocation::Postgres(_) => (
                Some(crate::sync::store::lease::Presence::announce(
                    store.meta().clone(),
                )?),
                None,
            ),
            crate::sync::store::StoreLocation::Dir(_) => (None, None),
        };
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
                idle_cache: rounds_core::sync::hub::IdleCache::new(limits.idle_documents),
                reserved_actors: vec![automerge::ActorId::from(store.reserved_actor())],
                ..HubConfig::default()
            },
        );
        let security = Security::open(&store, dev_token, limits.code_lifetime)
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let ledger = crate::services::ledger::Ledger::open(store.db())
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let facilities = store
            .db()
            .open_tree("facilities")
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let (late_tx, late_rx) = mpsc::unbounded_channel();
        let (alerting, alert_rx) =
            crate::services::alerting::Alerting::open(store.db(), store.server_actor())
                .map_err(|e| ServeError::Flush(e.to_string()))?;
        let accounts = crate::services::accounts::Accounts::open(store.db())
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let quarantine = crate::sync::quarantine::Quarantine::open(store.db())
            .map_err(|e| ServeError::Flush(e.to_string()))?;
        let hash_threads = limits.network.password_hashes_at_once.max(1);
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            inbox_budget: Arc::new(tokio::sync::Semaphore::new(
                crate::sync::shards::ALL_INBOXES_KIB as usize,
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
            hashers: crate::services::accounts::hashing::Hashers::start(hash_threads),
            caps: crate::server::network::ConnectionCaps::new(
                limits.network.max_connections,
                limits.network.max_connections_per_address,
            ),
            noisy: crate::services::audit_aggregate::Aggregator::new(chrono::Duration::seconds(
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
            _presence: presence,
            _writer: writer,
            feed: Mutex::new(None),
            jobs: Mutex::new(HashMap::new()),
        });
        if !command {
            let me = Arc::downgrade(&shared);
            let feed = crate::sync::store::feed::start(&shared.store, move |changes| {
                if let Some(shared) = me.upgrade() {
                    shared.absorb(changes);
                }
            });
            *shared.feed.lock().unwrap_or_else(|p| p.into_inner()) = feed;
        }
        for (facility, month) in shared.ledger.closed_months() {
            shared.watch_closed(&facility, month);
        }
        shared.clone().start_late_data(late_rx);
        Ok(shared)
    }

    /// A round of a background job, when this server runs it: always on sled; on a shared
    /// store only while it holds the job's lease (one server at a time; renewed until the
    /// returned round drops; taken over within the lease's 15 s when its holder dies).
    pub async fn run_job(&self, job: &'static str) -> Option<crate::sync::store::lease::JobRound> {
        if !self.store.is_shared() {
            return Some(crate::sync::store::lease::JobRound::unleased());
        }
        let lease = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(job)
            .or_insert_with(|| {
                Arc::new(crate::sync::store::lease::JobLease::new(
                    self.store.meta().clone(),
                    job,
                ))
            })
            .clone();
        let round =
            tokio::task::spawn_blocking(move || crate::sync::store::lease::JobRound::start(lease))
                .await
                .ok()
                .flatten();
        if round.is_some() {
            tracing::debug!(job, "this server runs the job's round");
        }
        round
    }

    /// Other servers' writes (from the feed's thread): the facility index forgets a changed
    /// roster, and every shard whose hub holds or watches the document takes the change in
    /// (through its inbox, in order with its frames).
    fn absorb(&self, changes: Vec<crate::sync::store::feed::Change>) {
        let mut docs: Vec<DocumentId> = changes.iter().map(|c| c.doc).collect();
        docs.sort_unstable();
        docs.dedup();
        self.metrics.feed_changes.inc_by(docs.len() as u64);
        for doc in &docs {
            self.index.changed(doc, || None);
        }
        for shard in self.shards.all() {
            for doc in &docs {
                let wanted = match shard.try_lock() {
                    Some(core) => core.hub.wants(*doc),
                    None => true,
                };
                if wanted {
                    let _ = shard.inbox().blocking_send(ShardMsg::Absorb(*doc));
                }
            }
        }
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
            runtime.spawn(driver::drive(self.me.clone(), shard.clone(), rx));
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

    /// Whether another enrolment attempt from `client` is allowed now.
    /// Whether another console sign-in from `client` for `username` is allowed now.
    pub fn admit_sign_in(&self, client: &str, username: &str) -> bool {
        self.sign_in_per_address.allow(client) && self.sign_in_per_account.allow(username)
    }

    pub fn admit_enrolment(&self, client: &str) -> bool {
        self.enrol_limiter.allow(client)
    }

    /// The EHR push configuration, when the server was started with one.
    pub fn push_config(&self) -> Option<crate::services::push::PushConfig> {
        self.push.read().ok().and_then(|p| p.clone())
    }

    /// Send due push items every `every` (only with a push configuration).
    pub(crate) fn start_push_worker(self: Arc<Self>, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut shutdown = self.shutdown.clone();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                self.metrics.heartbeat("push", every);
                let Some(config) = self.push_config() else {
                    continue;
                };
                let Some(_round) = self.run_job("push").await else {
                    continue;
                };
                match crate::services::push::Outbox::open(self.store.db()) {
                    Ok(outbox) => {
                        let m = self.metrics.clone();
                        let observe = move |s: crate::services::push::Status, took: Duration| {
                            m.push_seconds.observe(took.as_secs_f64());
                            use crate::services::push::Status as S;
                            let outcome = match s {
                                S::Acknowledged => "acknowledged",
                                S::Failed => "failed",
                                S::Pending => "retried",
                            };
                            m.push_sends
                                .get_or_create(&crate::sync::metrics::label("outcome", outcome))
                                .inc();
                        };
                        let (ok, failed, pending) =
                            outbox.process_observed(&config, &observe).await;
                        for (status, v) in [
                            ("acknowledged", ok),
                            ("failed", failed),
                            ("pending", pending),
                        ] {
                            self.metrics
                                .push_outbox
                                .get_or_create(&crate::sync::metrics::label("status", status))
                                .set(i64::try_from(v).unwrap_or(i64::MAX));
                        }
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
    pub(crate) fn network_samples(&self) -> Vec<(&'static str, &'static str, &'static str, f64)> {
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

    /// What `/metrics` reads at scrape time: documents in memory, password hashes, connection
    /// caps and aggregated audit records, outbox depth and age, open alerts, quarantine.
    pub(crate) fn scrape_samples(&self) -> Vec<crate::sync::metrics::Sample> {
        use crate::sync::metrics::{Sample, SampleKind};
        let now = chrono::Utc::now();
        let age = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
        };
        let mut out = vec![
            Sample {
                name: "rounds_documents_in_memory",
                help: "Documents held in memory now.",
                kind: SampleKind::Gauge,
                value: self.documents_in_memory() as f64,
            },
            Sample {
                name: "rounds_password_hashes",
                help: "Console password hashes computed (checks, and the equal work for unknown users).",
                kind: SampleKind::Counter,
                value: self.accounts.password_hashes() as f64,
            },
        ];
        for (name, help, kind, value) in self.network_samples() {
            out.push(Sample {
                name: name.strip_suffix("_total").unwrap_or(name),
                help,
                kind: if kind == "counter" {
                    SampleKind::Counter
                } else {
                    SampleKind::Gauge
                },
                value,
            });
        }
        let notices = self.alerting.outbox.pending();
        let oldest_notice = notices
            .iter()
            .filter_map(|d| chrono::DateTime::parse_from_rfc3339(&d.notice.raised_at).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .min();
        let pushes: Vec<_> = crate::services::push::Outbox::open(self.store.db())
            .map(|o| o.all())
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.status == crate::services::push::Status::Pending)
            .collect();
        let oldest_push = pushes.iter().filter_map(|i| i.queued_at).min();
        out.extend([
            Sample {
                name: "rounds_notify_outbox_pending",
                help: "Alert notifications waiting to be delivered.",
                kind: SampleKind::Gauge,
                value: notices.len() as f64,
            },
            Sample {
                name: "rounds_notify_outbox_oldest_age_seconds",
                help: "Age of the oldest alert notification waiting (0 when none).",
                kind: SampleKind::Gauge,
                value: age(oldest_notice),
            },
            Sample {
                name: "rounds_push_outbox_pending",
                help: "Push outbox items waiting to be sent or retried.",
                kind: SampleKind::Gauge,
                value: pushes.len() as f64,
            },
            Sample {
                name: "rounds_push_outbox_oldest_age_seconds",
                help: "Age of the oldest push outbox item waiting (0 when none).",
                kind: SampleKind::Gauge,
                value: age(oldest_push),
            },
            Sample {
                name: "rounds_alerts_open",
                help: "Alerts waiting for a response (acknowledgement or escalation).",
                kind: SampleKind::Gauge,
                // NaN when the store cannot count (PostgreSQL down): never a reassuring 0.
                value: self.alerting.open.len().map_or(f64::NAN, |n| n as f64),
            },
            Sample {
                name: "rounds_quarantine_entries",
                help: "Refused changes held for review.",
                kind: SampleKind::Gauge,
                value: self.quarantine.len() as f64,
            },
        ]);
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::outlet::Outbound;

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
            &dir.path().into(),
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
        let (tx_a, mut rx_a, _) = crate::sync::outlet::Outlet::new(1 << 20);
        let (tx_b, mut rx_b, _) = crate::sync::outlet::Outlet::new(1 << 20);
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
