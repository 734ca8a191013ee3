//! The quarantine: changes the gate or the write policy refused, kept for an administrator to
//! look at (`rounds quarantine list|show`, `GET /api/v1/quarantine`, the console's devices page).
//!
//! An entry names the device, facility, document, change hash, the rule broken and a detail
//! (ids only, never patient names), with the refused bytes: the change, or the first 64 KiB of
//! a message refused before it parsed. The same bytes resent (a device retrying) are kept once,
//! so the quarantine grows with distinct refusals, not with retries.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A refused change, without its bytes (lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineSummary {
    pub id: String,
    pub at: DateTime<Utc>,
    pub device: Option<String>,
    pub facility: Option<String>,
    pub document: String,
    /// Hex hash of the refused change (none when the message did not parse).
    pub change: Option<String>,
    pub rule: String,
    pub detail: String,
    pub size: usize,
    pub sha256: String,
    /// How many times these bytes were sent and refused.
    pub times: u64,
}

/// A refused change with its bytes (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    #[serde(flatten)]
    pub summary: QuarantineSummary,
    pub bytes_base64: String,
}

/// What to quarantine.
pub struct Refused<'a> {
    pub device: Option<String>,
    pub facility: Option<String>,
    pub document: String,
    pub change: Option<String>,
    pub rule: String,
    pub detail: String,
    pub bytes: &'a [u8],
}

/// Entries kept at most; past this the oldest are dropped (each is at most 64 KiB of bytes, so
/// the quarantine stays under about 640 MiB even if every entry were that large).
pub const MAX_ENTRIES: usize = 10_000;

/// The quarantine trees in the store.
pub struct Quarantine {
    /// id (UUIDv7, time-ordered) → summary JSON (small: lists never read the bytes).
    entries: crate::sync::store::kv::Tree,
    /// id → the refused bytes.
    bytes: crate::sync::store::kv::Tree,
    /// sha256 of the bytes → id.
    by_hash: crate::sync::store::kv::Tree,
    max_entries: usize,
    /// Entries held (read once at open; at most `max_entries`, so a short walk).
    count: std::sync::atomic::AtomicUsize,
}

impl Quarantine {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn open(
        db: &crate::sync::store::kv::Db,
    ) -> Result<Quarantine, crate::sync::store::kv::KvError> {
        Quarantine::open_with(db, MAX_ENTRIES)
    }

    fn open_with(
        db: &crate::sync::store::kv::Db,
        max_entries: usize,
    ) -> Result<Quarantine, crate::sync::store::kv::KvError> {
        let entries = db.open_tree("quarantine")?;
        let count = std::sync::atomic::AtomicUsize::new(entries.len()?);
        Ok(Quarantine {
            entries,
            bytes: db.open_tree("quarantine-bytes")?,
            by_hash: db.open_tree("quarantine-by-hash")?,
            max_entries,
            count,
        })
    }

    /// Keep a refused change; returns its id (the existing one when the same bytes were kept).
    pub fn add(&self, r: Refused<'_>) -> Result<String, crate::sync::store::kv::KvError> {
        let sha256: String = Sha256::digest(r.bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some(id) = self.by_hash.get(sha256.as_bytes())? {
            let id = String::from_utf8_lossy(&id).to_string();
            self.entries.update_and_fetch(id.as_bytes(), |old| {
                let mut e: QuarantineSummary = serde_json::from_slice(old?).ok()?;
                e.times += 1;
                serde_json::to_vec(&e).ok()
            })?;
            return Ok(id);
        }
        let id = uuid::Uuid::now_v7().to_string();
        let summary = QuarantineSummary {
            id: id.clone(),
            at: Utc::now(),
            device: r.device,
            facility: r.facility,
            document: r.document,
            change: r.change,
            rule: r.rule,
            detail: r.detail,
            size: r.bytes.len(),
            sha256: sha256.clone(),
            times: 1,
        };
        let json = serde_json::to_vec(&summary).unwrap_or_default();
        self.bytes.insert(id.as_bytes(), r.bytes)?;
        self.entries.insert(id.as_bytes(), json)?;
        self.by_hash.insert(sha256.as_bytes(), id.as_bytes())?;
        // Keep the newest `max_entries`: drop the oldest (ids are time-ordered).
        use std::sync::atomic::Ordering::Relaxed;
        if self.count.fetch_add(1, Relaxed) + 1 > self.max_entries
            && let Some((old_id, old)) = self.entries.pop_min()?
        {
            self.count.fetch_sub(1, Relaxed);
            self.bytes.remove(&old_id)?;
            if let Ok(e) = serde_json::from_slice::<QuarantineSummary>(&old) {
                self.by_hash.remove(e.sha256.as_bytes())?;
            }
        }
        Ok(id)
    }

    /// The newest `limit` entries (newest first), optionally of one facility's devices.
    pub fn list(&self, facility: Option<&str>, limit: usize) -> Vec<QuarantineSummary> {
        self.entries
            .iter()
            .rev()
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| serde_json::from_slice::<QuarantineSummary>(&v).ok())
            .filter(|s| facility.is_none() || s.facility.as_deref() == facility)
            .take(limit)
            .collect()
    }

    /// One entry with its bytes.
    pub fn get(&self, id: &str) -> Option<QuarantineEntry> {
        let summary = serde_json::from_slice(&self.entries.get(id.as_bytes()).ok()??).ok()?;
        let bytes = self.bytes.get(id.as_bytes()).ok()??;
        Some(QuarantineEntry {
            summary,
            bytes_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_are_kept_once_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::sync::store::kv::Db::Sled(sled::open(dir.path()).unwrap());
        let q = Quarantine::open(&db).unwrap();
        let refused = |bytes: &'static [u8]| Refused {
            device: Some("tab-1".into()),
            facility: Some("sunnyvale".into()),
            document: "doc".into(),
            change: Some("abc".into()),
            rule: "server-only".into(),
            detail: "/staff/aide-1: written only by the server".into(),
            bytes,
        };
        let a = q.add(refused(b"change-1")).unwrap();
        let b = q.add(refused(b"change-1")).unwrap();
        let c = q.add(refused(b"change-2")).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let all = q.list(None, 100);
        assert_eq!(all.len(), 2);
        assert_eq!(q.get(&a).unwrap().summary.times, 2);
        assert_eq!(q.list(Some("oakridge"), 100).len(), 0);
        let e = q.get(&c).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(e.bytes_base64)
                .unwrap(),
            b"change-2"
        );
    }

    #[test]
    fn the_oldest_entries_go_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::sync::store::kv::Db::Sled(sled::open(dir.path()).unwrap());
        let q = Quarantine::open_with(&db, 3).unwrap();
        let ids: Vec<String> = (0..5u8)
            .map(|i| {
                q.add(Refused {
                    device: None,
                    facility: Some("f".into()),
                    document: "doc".into(),
                    change: None,
                    rule: "too-large".into(),
                    detail: String::new(),
                    bytes: &[i],
                })
                .unwrap()
            })
            .collect();
        let kept: Vec<String> = q.list(None, 100).into_iter().map(|s| s.id).collect();
        assert_eq!(kept, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
        // A dropped entry's bytes are new again.
        let again = q
            .add(Refused {
                device: None,
                facility: None,
                document: "doc".into(),
                change: None,
                rule: "too-large".into(),
                detail: String::new(),
                bytes: &[0],
            })
            .unwrap();
        assert_ne!(again, ids[0]);
        assert_eq!(
            Quarantine::open_with(&db, 3).unwrap().list(None, 100).len(),
            3
        );
    }
}
