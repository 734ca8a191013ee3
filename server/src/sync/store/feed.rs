//! The change feed of a store shared by several servers: which documents the *other* servers
//! wrote, so this one can pass their changes on to its connected tablets.
//!
//! Every chunk a server writes adds, in the same transaction, a `changes` entry (key: the next
//! `rounds_ids` number, big-endian; value: the chunk key, document id ‖ sequence number). The
//! feed runs on a thread of its own with a connection of its own:
//!
//! - **Notifications** (PostgreSQL): the writing transaction also runs `pg_notify` on
//!   [`CHANGES_CHANNEL`](super::kv::pg::CHANGES_CHANNEL) with the entry, delivered at commit, so
//!   another server learns of a write within milliseconds.
//! - **Polling** (every engine; the only path where `pg_notify` is missing): every
//!   [`POLL_EVERY`] the feed reads the entries above a low-water mark. Numbers are taken before
//!   their transaction commits, so an entry may appear below one already seen; the mark is
//!   therefore the largest number seen [`LOOKBACK`] before the last successful poll, and
//!   entries already delivered are skipped. A notification lost with a dropped connection is
//!   found by the next poll.
//!
//! Entries older than [`KEEP`] are deleted by whichever server's feed gets there (a server
//! stopped for longer reloads every document it needs from the store anyway).
//!
//! Architecture invariant: the feed only tells; the store is the truth. What a server does with
//! a change (absorb it into a loaded document, forget an idle copy, re-read it in the read
//! model) it could also do by reading the store, so a late or repeated delivery is harmless.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use rounds_core::DocumentId;

use super::Store;
use super::kv::pg::{CHANGES_CHANNEL, PgKv};

/// How often the feed polls (and the longest a write goes unnoticed without notifications).
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// How far back a poll looks for entries committed late.
pub const LOOKBACK: Duration = Duration::from_secs(5);
/// Entries read per query of a poll.
const PAGE: usize = 5000;
/// How long entries are kept.
pub const KEEP: Duration = Duration::from_secs(600);

/// A chunk another server wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub doc: DocumentId,
    pub seq: u64,
}

impl Change {
    /// From a `changes` entry's value (a chunk key); None when it is not one.
    pub fn decode(value: &[u8]) -> Option<Change> {
        let doc = <[u8; 16]>::try_from(value.get(..16)?).ok()?;
        let seq = <[u8; 8]>::try_from(value.get(16..24)?).ok()?;
        (value.len() == 24).then(|| Change {
            doc: DocumentId::from_bytes(doc),
            seq: u64::from_be_bytes(seq),
        })
    }
}

/// A notification's payload: the entry's key and value, hex.
fn parse_payload(payload: &str) -> Option<(u64, Change)> {
    let bytes = hex::decode(payload).ok()?;
    let id = u64::from_be_bytes(<[u8; 8]>::try_from(bytes.get(..8)?).ok()?);
    Some((id, Change::decode(bytes.get(8..)?)?))
}

/// The running feed; stopped when dropped.
pub struct Feed {
    stop: Arc<AtomicBool>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Start the feed of a shared store (None on sled): `deliver` gets each batch of other servers'
/// writes, in the order they were learnt, from the feed's thread.
pub fn start(store: &Arc<Store>, deliver: impl Fn(Vec<Change>) + Send + 'static) -> Option<Feed> {
    let pg = store.pg()?.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let st = Arc::downgrade(store);
    let spawned = std::thread::Builder::new()
        .name("rounds-feed".into())
        .spawn(move || {
            let mut state = State::default();
            while !s.load(Ordering::SeqCst) {
                let Some(store) = st.upgrade() else { return };
                // Tells the store of another server's write (and answers whether it was ours).
                let own = |c: &Change| !store.foreign_change(&c.doc, c.seq);
                match state.run(&pg, &s, &own, &deliver) {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "the change feed lost its connection; reconnecting");
                        drop(store);
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the change feed");
        return None;
    }
    Some(Feed { stop })
}

#[derive(Default)]
struct State {
    /// Entry numbers delivered (or skipped) that are above the low-water mark.
    seen: HashSet<u64>,
    /// The largest number seen at each successful poll.
    history: VecDeque<(Instant, u64)>,
    /// Entries up to here were all seen (set at the first poll to the newest entry then).
    low: Option<u64>,
    max_seen: u64,
    last_prune: Option<Instant>,
    /// The mark at each pruning: entries at or below one [`KEEP`] old are deleted.
    marks: VecDeque<(Instant, u64)>,
}

impl State {
    fn run(
        &mut self,
        pg: &PgKv,
        stop: &AtomicBool,
        own: &dyn Fn(&Change) -> bool,
        deliver: &dyn Fn(Vec<Change>),
    ) -> Result<(), String> {
        let mut client = pg.connect().map_err(|e| e.to_string())?;
        if pg.notifies() {
            client
                .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
                .map_err(|e| e.to_string())?;
        }
        let select = client
            .prepare(&format!(
                "SELECT key, value FROM \"kv_changes\" WHERE key > $1 ORDER BY key LIMIT {PAGE}"
            ))
            .map_err(|e| e.to_string())?;
        if self.low.is_none() {
            let rows = client
                .query(
                    "SELECT key FROM \"kv_changes\" ORDER BY key DESC LIMIT 1",
                    &[],
                )
                .map_err(|e| e.to_string())?;
            let newest = rows
                .first()
                .map(|r| r.get::<_, Vec<u8>>(0))
                .and_then(|k| k.try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            self.low = Some(newest);
            self.max_seen = newest;
        }
        let mut last_poll = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let mut batch = Vec::new();
            if pg.notifies() {
                let mut notes = client.notifications();
                let wait = POLL_EVERY.saturating_sub(last_poll.elapsed());
                // The first waits; the rest are the ones already here.
                let first = notes
                    .timeout_iter(wait.max(Duration::from_millis(1)))
                    .next()
                    .map_err(|e| e.to_string())?;
                if let Some(n) = first {
                    batch.push(n);
                    let mut pending = notes.iter();
                    while let Some(n) = pending.next().map_err(|e| e.to_string())? {
                        batch.push(n);
                        if batch.len() >= 4096 {
                            break;
                        }
                    }
                }
            } else {
                std::thread::sleep(POLL_EVERY.saturating_sub(last_poll.elapsed()));
            }
            let mut changes = Vec::new();
            for n in batch {
                if let Some((id, c)) = parse_payload(n.payload()) {
                    self.take(id, c, own, &mut changes);
                }
            }
            if last_poll.elapsed() >= POLL_EVERY {
                // Page by page from the mark: a busy window may hold more than one page.
                let mut from = self.low.unwrap_or(0);
                loop {
                    let rows = client
                        .query(&select, &[&from.to_be_bytes().to_vec()])
                        .map_err(|e| e.to_string())?;
                    let full = rows.len() >= PAGE;
                    for r in rows {
                        let key: Vec<u8> = r.get(0);
                        let value: Vec<u8> = r.get(1);
                        let Ok(k) = <[u8; 8]>::try_from(key) else {
                            continue;
                        };
                        let id = u64::from_be_bytes(k);
                        from = from.max(id);
                        if let Some(c) = Change::decode(&value) {
                            self.take(id, c, own, &mut changes);
                        }
                    }
                    if !full {
                        break;
                    }
                }
                last_poll = Instant::now();
                self.advance(last_poll);
                if self.last_prune.is_none_or(|t| t.elapsed() >= KEEP / 10) {
                    self.prune(&mut client, last_poll);
                }
            }
            if !changes.is_empty() {
                deliver(changes);
            }
        }
        Ok(())
    }

    fn take(&mut self, id: u64, c: Change, own: &dyn Fn(&Change) -> bool, out: &mut Vec<Change>) {
        if self.low.is_some_and(|l| id <= l) || !self.seen.insert(id) {
            return;
        }
        self.max_seen = self.max_seen.max(id);
        if !own(&c) {
            out.push(c);
        }
    }

    /// Move the low-water mark to the largest number seen [`LOOKBACK`] before `now`.
    fn advance(&mut self, now: Instant) {
        self.history.push_back((now, self.max_seen));
        while let Some(&(t, m)) = self.history.front() {
            if now.duration_since(t) < LOOKBACK {
                break;
            }
            self.low = Some(self.low.unwrap_or(0).max(m));
            self.history.pop_front();
        }
        if let Some(low) = self.low {
            self.seen.retain(|&id| id > low);
        }
    }

    /// Delete entries older than [`KEEP`] (by number: the mark of a poll that long ago).
    fn prune(&mut self, client: &mut postgres::Client, now: Instant) {
        self.last_prune = Some(now);
        let Some(low) = self.low else { return };
        self.marks.push_back((now, low));
        let mut bound = None;
        while let Some(&(t, m)) = self.marks.front() {
            if now.duration_since(t) < KEEP {
                break;
            }
            bound = Some(m);
            self.marks.pop_front();
        }
        if let Some(b) = bound
            && let Err(e) = client.execute(
                "DELETE FROM \"kv_changes\" WHERE key <= $1",
                &[&b.to_be_bytes().to_vec()],
            )
        {
            tracing::warn!(error = %e, "pruning the change feed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_and_junk_does_not() {
        let doc = DocumentId::from_bytes([7; 16]);
        let mut v = doc.as_bytes().to_vec();
        v.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(Change::decode(&v), Some(Change { doc, seq: 42 }));
        assert_eq!(Change::decode(&v[..23]), None);
        let mut long = v.clone();
        long.push(0);
        assert_eq!(Change::decode(&long), None);
        let mut payload = 9u64.to_be_bytes().to_vec();
        payload.extend_from_slice(&v);
        assert_eq!(
            parse_payload(&hex::encode(&payload)),
            Some((9, Change { doc, seq: 42 }))
        );
        assert_eq!(parse_payload("zz"), None);
        assert_eq!(parse_payload(""), None);
    }

    #[test]
    fn the_mark_trails_by_the_lookback_and_late_entries_below_the_newest_are_taken() {
        let mut s = State {
            low: Some(10),
            max_seen: 10,
            ..State::default()
        };
        let doc = DocumentId::from_bytes([1; 16]);
        let c = Change { doc, seq: 1 };
        let mut out = Vec::new();
        let foreign = |_: &Change| false;
        s.take(12, c, &foreign, &mut out);
        s.take(12, c, &foreign, &mut out);
        s.take(9, c, &foreign, &mut out);
        assert_eq!(
            out.len(),
            1,
            "a repeat and an entry below the mark are skipped"
        );
        let t0 = Instant::now();
        s.advance(t0);
        assert_eq!(s.low, Some(10), "the mark waits a lookback");
        // 11 commits late, after 12 was seen: still above the mark, so taken.
        s.take(11, c, &foreign, &mut out);
        assert_eq!(out.len(), 2);
        s.advance(t0 + LOOKBACK);
        assert_eq!(s.low, Some(12));
        assert!(s.seen.is_empty());
        let own = |_: &Change| true;
        s.take(13, c, &own, &mut out);
        assert_eq!(out.len(), 2, "own writes are not delivered");
    }
}
