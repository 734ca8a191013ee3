//! Counters for `/metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Server counters; all monotonic except the gauges noted.
#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    /// Gauge.
    pub connections_open: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub documents_loaded: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub access_denied: AtomicU64,
    /// Changes (or messages) refused by the gate or the write policy.
    pub changes_refused: AtomicU64,
    /// Connections cut because their peer read too slowly.
    pub slow_readers: AtomicU64,
    /// Console sign-ins refused before any password check (rate limit, or every hashing slot
    /// busy).
    pub sign_ins_refused: AtomicU64,
    /// Sync upgrades refused because they carried a token in the URL with --no-query-tokens.
    pub query_tokens_refused: AtomicU64,
    /// Push sends by outcome (counters) and the outbox by status after the last round (gauges).
    pub push_acknowledged: AtomicU64,
    pub push_failed: AtomicU64,
    pub push_retried: AtomicU64,
    pub push_outbox_pending: AtomicU64,
    pub push_outbox_failed: AtomicU64,
    pub push_outbox_acknowledged: AtomicU64,
    flushes: AtomicU64,
    flush_micros_sum: AtomicU64,
    flush_micros_max: AtomicU64,
    /// Background workers' last round: name → (when, the longest gap expected).
    heartbeats:
        std::sync::Mutex<std::collections::BTreeMap<&'static str, (std::time::Instant, Duration)>>,
}

impl Metrics {
    /// A background worker finished a round; it is expected again within `every` (a worker
    /// silent for three times that is reported stale by `/readyz`).
    pub fn heartbeat(&self, worker: &'static str, every: Duration) {
        if let Ok(mut h) = self.heartbeats.lock() {
            h.insert(worker, (std::time::Instant::now(), every));
        }
    }

    /// The workers that missed their rounds: name and seconds since the last.
    pub fn stale_workers(&self) -> Vec<(&'static str, u64)> {
        let now = std::time::Instant::now();
        self.heartbeats
            .lock()
            .map(|h| {
                h.iter()
                    .filter(|(_, (at, every))| {
                        now.duration_since(*at) > (*every * 3).max(Duration::from_secs(30))
                    })
                    .map(|(n, (at, _))| (*n, now.duration_since(*at).as_secs()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn observe_flush(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.flushes.fetch_add(1, Relaxed);
        self.flush_micros_sum.fetch_add(us, Relaxed);
        self.flush_micros_max.fetch_max(us, Relaxed);
    }

    /// The Prometheus text exposition; `extra` are (name, help, type, value) samples others
    /// keep (connection caps, aggregated audit records).
    pub fn render(
        &self,
        documents_in_memory: usize,
        password_hashes: u64,
        extra: &[(&str, &str, &str, f64)],
    ) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let g = |a: &AtomicU64| a.load(Relaxed) as f64;
        counter(
            "rounds_connections_total",
            "WebSocket connections accepted.",
            "counter",
            g(&self.connections_total),
        );
        counter(
            "rounds_connections_open",
            "WebSocket connections open now.",
            "gauge",
            g(&self.connections_open),
        );
        counter(
            "rounds_messages_received_total",
            "Protocol messages received.",
            "counter",
            g(&self.messages_received),
        );
        counter(
            "rounds_messages_sent_total",
            "Protocol messages sent.",
            "counter",
            g(&self.messages_sent),
        );
        counter(
            "rounds_bytes_received_total",
            "Bytes of protocol messages received.",
            "counter",
            g(&self.bytes_received),
        );
        counter(
            "rounds_bytes_sent_total",
            "Bytes of protocol messages sent.",
            "counter",
            g(&self.bytes_sent),
        );
        counter(
            "rounds_documents_loaded_total",
            "Documents read into memory from the store.",
            "counter",
            g(&self.documents_loaded),
        );
        counter(
            "rounds_documents_in_memory",
            "Documents held in memory now.",
            "gauge",
            documents_in_memory as f64,
        );
        counter(
            "rounds_protocol_errors_total",
            "Connections closed for a protocol error.",
            "counter",
            g(&self.protocol_errors),
        );
        counter(
            "rounds_changes_refused_total",
            "Changes refused by the gate or the write policy (quarantined).",
            "counter",
            g(&self.changes_refused),
        );
        counter(
            "rounds_sign_ins_refused_total",
            "Console sign-ins refused before any password check (rate limit or busy).",
            "counter",
            g(&self.sign_ins_refused),
        );
        counter(
            "rounds_password_hashes_total",
            "Console password hashes computed (checks, and the equal work for unknown users).",
            "counter",
            password_hashes as f64,
        );
        counter(
            "rounds_slow_readers_total",
            "Connections cut because more than --max-outbound-bytes waited for their peer.",
            "counter",
            g(&self.slow_readers),
        );
        counter(
            "rounds_access_denied_total",
            "Document accesses refused.",
            "counter",
            g(&self.access_denied),
        );
        counter(
            "rounds_query_tokens_refused_total",
            "Sync upgrades refused for a token in the URL (--no-query-tokens).",
            "counter",
            g(&self.query_tokens_refused),
        );
        for (name, help, v) in [
            (
                "rounds_push_acknowledged_total",
                "Push sends the EHR acknowledged.",
                &self.push_acknowledged,
            ),
            (
                "rounds_push_failed_total",
                "Push sends that failed for good (needing a person).",
                &self.push_failed,
            ),
            (
                "rounds_push_retried_total",
                "Push sends that will be retried.",
                &self.push_retried,
            ),
        ] {
            counter(name, help, "counter", g(v));
        }
        for (status, v) in [
            ("pending", &self.push_outbox_pending),
            ("failed", &self.push_outbox_failed),
            ("acknowledged", &self.push_outbox_acknowledged),
        ] {
            counter(
                &format!("rounds_push_outbox_{status}"),
                &format!("Push outbox items {status} after the last push round."),
                "gauge",
                g(v),
            );
        }
        for (name, help, kind, v) in extra {
            counter(name, help, kind, *v);
        }
        counter(
            "rounds_flush_seconds_count",
            "Store flushes.",
            "counter",
            g(&self.flushes),
        );
        counter(
            "rounds_flush_seconds_sum",
            "Total time spent flushing the store.",
            "counter",
            g(&self.flush_micros_sum) / 1e6,
        );
        counter(
            "rounds_flush_seconds_max",
            "Longest store flush.",
            "gauge",
            g(&self.flush_micros_max) / 1e6,
        );
        s
    }
}
