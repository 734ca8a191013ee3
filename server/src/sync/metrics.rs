//! `/metrics`: the server's metrics, kept and exposed through `prometheus-client` (OpenMetrics
//! text: counters as `_total`, histograms with `_bucket`/`_sum`/`_count` and their unit).
//!
//! The metrics the server updates as it works live here (counters, gauges, histograms, the
//! HTTP and ingestion families); values that are read when scraped (documents in memory,
//! outbox depth and age, open alerts, quarantine, connection caps) are passed to
//! [`Metrics::render`] as [`Sample`]s.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Label sets: `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// A value read at scrape time.
pub struct Sample {
    /// The name; a counter's without `_total` (the encoder adds it).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: SampleKind,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    Counter,
    Gauge,
}

/// The server's metrics.
pub struct Metrics {
    pub connections_total: Counter,
    pub connections_open: Gauge,
    pub messages_received: Counter,
    pub messages_sent: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub documents_loaded: Counter,
    /// Documents another server sharing the store changed, as the change feed reported them.
    pub feed_changes: Counter,
    pub protocol_errors: Counter,
    pub access_denied: Counter,
    /// Changes (or messages) refused by the gate or the write policy.
    pub changes_refused: Counter,
    /// Connections cut because their peer read too slowly.
    pub slow_readers: Counter,
    /// Console sign-ins refused before any password check.
    pub sign_ins_refused: Counter,
    /// Sync upgrades refused because they carried a token in the URL with --no-query-tokens.
    pub query_tokens_refused: Counter,
    /// Push sends by outcome, and the outbox by status after the last round.
    pub push_sends: Family<Labels, Counter>,
    pub push_outbox: Family<Labels, Gauge>,
    /// Store flushes (fsync of a batch of changes).
    pub flush_seconds: Histogram,
    /// A burst of sync frames from a facility's inbox applied to its hub and persisted.
    pub sync_burst_seconds: Histogram,
    /// A month close.
    pub close_seconds: Histogram,
    /// One push send (FHIR transaction or HL7 message and its answer).
    pub push_seconds: Histogram,
    /// HTTP responses by status code.
    pub http_responses: Family<Labels, Counter>,
    /// Vendor and ADT input by kind and outcome.
    pub ingested: Family<Labels, Counter>,
    /// Alerts raised by the server and escalations.
    pub alerts_raised: Counter,
    pub alerts_escalated: Counter,
    /// Background workers' last round: name → (when, the longest gap expected).
    heartbeats:
        std::sync::Mutex<std::collections::BTreeMap<&'static str, (std::time::Instant, Duration)>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let seconds = || Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        Metrics {
            connections_total: Counter::default(),
            connections_open: Gauge::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            documents_loaded: Counter::default(),
            feed_changes: Counter::default(),
            protocol_errors: Counter::default(),
            access_denied: Counter::default(),
            changes_refused: Counter::default(),
            slow_readers: Counter::default(),
            sign_ins_refused: Counter::default(),
            query_tokens_refused: Counter::default(),
            push_sends: Family::default(),
            push_outbox: Family::default(),
            flush_seconds: seconds(),
            sync_burst_seconds: seconds(),
            close_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            push_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            http_responses: Family::default(),
            ingested: Family::default(),
            alerts_raised: Counter::default(),
            alerts_escalated: Counter::default(),
            heartbeats: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        }
    }
}

/// One label.
pub fn label(name: &str, value: impl Into<String>) -> Labels {
    vec![(name.to_string(), value.into())]
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

    /// One input (a vendor reading, an ADT message) by its source and what became of it.
    pub fn count_ingested(&self, source: &str, outcome: &str) {
        self.ingested
            .get_or_create(&vec![
                ("source".to_string(), source.to_string()),
                ("outcome".to_string(), outcome.to_string()),
            ])
            .inc();
    }

    pub fn observe_flush(&self, d: Duration) {
        self.flush_seconds.observe(d.as_secs_f64());
    }

    /// The exposition (OpenMetrics text), with `samples` read at scrape time.
    pub fn render(&self, samples: &[Sample]) -> String {
        let mut r = Registry::default();
        let counters: [(&str, &str, &Counter); 13] = [
            (
                "rounds_connections",
                "WebSocket connections accepted.",
                &self.connections_total,
            ),
            (
                "rounds_messages_received",
                "Protocol messages received.",
                &self.messages_received,
            ),
            (
                "rounds_messages_sent",
                "Protocol messages sent.",
                &self.messages_sent,
            ),
            (
                "rounds_bytes_received",
                "Bytes of protocol messages received.",
                &self.bytes_received,
            ),
            (
                "rounds_bytes_sent",
                "Bytes of protocol messages sent.",
                &self.bytes_sent,
            ),
            (
                "rounds_documents_loaded",
                "Documents read into memory from the store.",
                &self.documents_loaded,
            ),
            (
                "rounds_feed_changes",
                "Documents changed by another server sharing the store, as the change feed reported them.",
                &self.feed_changes,
            ),
            (
                "rounds_protocol_errors",
                "Connections closed for a protocol error.",
                &self.protocol_errors,
            ),
            (
                "rounds_changes_refused",
                "Changes refused by the gate or the write policy (quarantined).",
                &self.changes_refused,
            ),
            (
                "rounds_sign_ins_refused",
                "Console sign-ins refused before any password check (rate limit or busy).",
                &self.sign_ins_refused,
            ),
            (
                "rounds_slow_readers",
                "Connections cut because more than --max-outbound-bytes waited for their peer.",
                &self.slow_readers,
            ),
            (
                "rounds_access_denied",
                "Document accesses refused.",
                &self.access_denied,
            ),
            (
                "rounds_query_tokens_refused",
                "Sync upgrades refused for a token in the URL (--no-query-tokens).",
                &self.query_tokens_refused,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        r.register(
            "rounds_alerts_raised",
            "Alerts opened and waiting for a response, as the server indexed them.",
            self.alerts_raised.clone(),
        );
        r.register(
            "rounds_alerts_escalated",
            "Alerts escalated for want of an acknowledgement.",
            self.alerts_escalated.clone(),
        );
        r.register(
            "rounds_connections_open",
            "WebSocket connections open now.",
            self.connections_open.clone(),
        );
        r.register(
            "rounds_push_sends",
            "Push sends by outcome (acknowledged, failed, retried).",
            self.push_sends.clone(),
        );
        r.register(
            "rounds_push_outbox_items",
            "Push outbox items by status after the last push round.",
            self.push_outbox.clone(),
        );
        r.register(
            "rounds_http_responses",
            "HTTP responses by status code.",
            self.http_responses.clone(),
        );
        r.register(
            "rounds_ingested",
            "Vendor readings and ADT messages by source and outcome.",
            self.ingested.clone(),
        );
        for (name, help, h) in [
            ("rounds_flush", "Store flushes.", &self.flush_seconds),
            (
                "rounds_sync_burst",
                "Bursts of sync frames applied and persisted.",
                &self.sync_burst_seconds,
            ),
            ("rounds_close", "Month closes.", &self.close_seconds),
            (
                "rounds_push_send",
                "Push sends (a request and its answer).",
                &self.push_seconds,
            ),
        ] {
            r.register_with_unit(name, help, Unit::Seconds, h.clone());
        }
        for s in samples {
            match s.kind {
                SampleKind::Counter => {
                    let v = if s.value.is_finite() && s.value >= 0.0 {
                        s.value as u64
                    } else {
                        0
                    };
                    r.register(s.name, s.help, ConstCounter::new(v));
                }
                // Whole numbers as integers (`3`, not `3.0`).
                SampleKind::Gauge if s.value.fract() == 0.0 && s.value.abs() < 9.0e15 => {
                    r.register(s.name, s.help, ConstGauge::new(s.value as i64))
                }
                SampleKind::Gauge => r.register(s.name, s.help, ConstGauge::new(s.value)),
            }
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &r) {
            tracing::error!(error = %e, "encoding the metrics");
        }
        // The encoder ends every help text with a period; ours already have one.
        out.replace("..\n", ".\n")
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers that do not
/// ask for OpenMetrics: a counter family is named with its `_total` suffix in HELP and TYPE,
/// and the `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_the_histograms_with_units_and_converts_to_prometheus_text() {
        let m = Metrics::default();
        m.observe_flush(Duration::from_millis(3));
        m.connections_total.inc();
        m.http_responses.get_or_create(&label("code", "200")).inc();
        let om = m.render(&[Sample {
            name: "rounds_documents_in_memory",
            help: "Documents held in memory now.",
            kind: SampleKind::Gauge,
            value: 7.0,
        }]);
        assert!(om.contains("# UNIT rounds_flush_seconds seconds"), "{om}");
        assert!(om.contains("rounds_flush_seconds_count 1"), "{om}");
        assert!(om.contains("rounds_connections_total 1"), "{om}");
        assert!(
            om.contains("rounds_http_responses_total{code=\"200\"} 1"),
            "{om}"
        );
        assert!(om.contains("rounds_documents_in_memory 7\n"), "{om}");
        assert!(om.trim_end().ends_with("# EOF"), "{om}");
        assert!(!om.contains(".."), "{om}");
        let text = to_prometheus_text(&om);
        assert!(
            text.contains("# TYPE rounds_connections_total counter"),
            "{text}"
        );
        assert!(text.contains("# HELP rounds_connections_total "), "{text}");
        assert!(
            text.contains("# TYPE rounds_flush_seconds histogram"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}
