//! Audit records anyone can cause — unauthenticated requests, rate-limited ones, a device's
//! repeated denials — folded into one record per source and reason per interval, with a count.
//!
//! The first event of a (source, reason) pair in an interval is written in full at once, so an
//! operator sees the first wrong API key, the first denial of each document, as before. Further
//! events of that pair only count; when the interval ends one summary record is written, the
//! first one's fields with `repeated` set to how many more there were. Two hundred bad requests
//! thus cost two records, not two hundred, and `/metrics` counts every one of them.
//!
//! Architecture invariant: memory is bounded. At most [`MAX_WINDOWS`] pairs are tracked; once
//! that many are open, new pairs fold into one overflow window until the interval ends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, Utc};

use crate::services::security::AuditRecord;

/// (source, reason) pairs tracked at once.
pub const MAX_WINDOWS: usize = 10_000;

struct Window {
    opened: DateTime<Utc>,
    last: DateTime<Utc>,
    repeats: u64,
    /// The first event's record (the summary repeats its fields).
    first: AuditRecord,
}

/// Aggregated audit windows.
pub struct Aggregator {
    interval: Duration,
    windows: Mutex<HashMap<(String, String), Window>>,
    /// Events noted (each would have been its own record).
    pub events: AtomicU64,
    /// Events counted into a summary instead of written on their own.
    pub folded: AtomicU64,
}

impl Aggregator {
    pub fn new(interval: Duration) -> Aggregator {
        Aggregator {
            interval: interval.max(Duration::seconds(1)),
            windows: Mutex::new(HashMap::new()),
            events: AtomicU64::new(0),
            folded: AtomicU64::new(0),
        }
    }

    /// Note one event; returns the records to write now (the event itself when it is the first
    /// of its pair in the interval, and the summary of a pair's expired window).
    pub fn note(
        &self,
        source: &str,
        reason: &str,
        rec: AuditRecord,
        now: DateTime<Utc>,
    ) -> Vec<AuditRecord> {
        self.events.fetch_add(1, Ordering::Relaxed);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (source.to_string(), reason.to_string());
        if !windows.contains_key(&key) && windows.len() >= MAX_WINDOWS {
            key = ("*".to_string(), "too many sources at once".to_string());
        }
        let mut out = Vec::new();
        if let Some(w) = windows.get_mut(&key) {
            if now - w.opened < self.interval {
                w.repeats += 1;
                w.last = now;
                self.folded.fetch_add(1, Ordering::Relaxed);
                return out;
            }
            if let Some(w) = windows.remove(&key) {
                out.extend(summary(&key, w));
            }
        }
        windows.insert(
            key,
            Window {
                opened: now,
                last: now,
                repeats: 0,
                first: rec.clone(),
            },
        );
        out.push(rec);
        out
    }

    /// Summaries of the windows whose interval has ended by `now` (all of them with `all`, at
    /// shutdown); those windows are closed.
    pub fn due(&self, now: DateTime<Utc>, all: bool) -> Vec<AuditRecord> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let ended: Vec<(String, String)> = windows
            .iter()
            .filter(|(_, w)| all || now - w.opened >= self.interval)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in ended {
            if let Some(w) = windows.remove(&key) {
                out.extend(summary(&key, w));
            }
        }
        out.sort_by_key(|r| r.at);
        out
    }
}

/// The record for a window's repeats; none when the first event was the only one.
fn summary((source, reason): &(String, String), w: Window) -> Option<AuditRecord> {
    if w.repeats == 0 {
        return None;
    }
    let mut rec = w.first;
    rec.at = w.last;
    rec.repeated = Some(w.repeats);
    rec.detail = Some(format!(
        "{} more from {source} ({reason}) between {} and {} (aggregated)",
        w.repeats,
        w.opened.to_rfc3339(),
        w.last.to_rfc3339()
    ));
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_first_event_is_written_in_full_and_the_rest_once_per_interval() {
        let a = Aggregator::new(Duration::seconds(60));
        let mut written = Vec::new();
        for i in 0..200 {
            let mut r = AuditRecord::new("ingest-rejected");
            r.detail = Some(format!("attempt {i}"));
            written.extend(a.note("10.0.0.1", "no API key", r, t(i / 10)));
        }
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].detail.as_deref(), Some("attempt 0"));
        assert!(a.due(t(30), false).is_empty(), "the interval has not ended");
        let summaries = a.due(t(61), false);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].repeated, Some(199));
        assert_eq!(summaries[0].action, "ingest-rejected");
        assert_eq!(a.events.load(Ordering::Relaxed), 200);
        assert_eq!(a.folded.load(Ordering::Relaxed), 199);
        // A new interval starts with a full record again.
        let again = a.note(
            "10.0.0.1",
            "no API key",
            AuditRecord::new("ingest-rejected"),
            t(70),
        );
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].repeated, None);
    }

    #[test]
    fn sources_and_reasons_are_kept_apart_and_a_lone_event_has_no_summary() {
        let a = Aggregator::new(Duration::seconds(60));
        let r = || AuditRecord::new("denied");
        assert_eq!(a.note("tablet-1", "doc A", r(), t(0)).len(), 1);
        assert_eq!(a.note("tablet-1", "doc B", r(), t(0)).len(), 1);
        assert_eq!(a.note("tablet-2", "doc A", r(), t(0)).len(), 1);
        assert_eq!(a.note("tablet-1", "doc A", r(), t(1)).len(), 0);
        let s = a.due(t(0), true);
        assert_eq!(s.len(), 1, "only tablet-1/doc A repeated");
        assert_eq!(s[0].repeated, Some(1));
        // An expired window noted again writes its summary and the new first record.
        assert_eq!(a.note("x", "y", r(), t(0)).len(), 1);
        assert_eq!(a.note("x", "y", r(), t(5)).len(), 0);
        let out = a.note("x", "y", r(), t(100));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].repeated, Some(1));
        assert_eq!(out[1].repeated, None);
    }

    #[test]
    fn the_number_of_tracked_sources_is_bounded() {
        let a = Aggregator::new(Duration::seconds(60));
        let mut written = 0;
        for i in 0..(MAX_WINDOWS + 500) {
            written += a
                .note(&format!("10.{i}"), "r", AuditRecord::new("x"), t(0))
                .len();
        }
        assert_eq!(written, MAX_WINDOWS + 1, "one overflow record, then counts");
        assert!(a.windows.lock().unwrap().len() <= MAX_WINDOWS + 1);
        let s = a.due(t(0), true);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].repeated, Some(499));
    }
}
