//! One hub per facility, each under its own lock: one facility's sync work (decoding, the gate,
//! the write policy, Automerge, the store reads and writes of its documents) never waits on
//! another's.
//!
//! A device's connection lives in its facility's shard. A development-token connection may
//! touch any facility: each of its documents goes to the shard of the facility that holds it
//! (registered facilities), or to the development shard [`DEV_SHARD`] for documents of
//! facilities this server has not imported. Every hub takes its sequence numbers from one
//! counter, so chunk numbers stay unique in the store; a shard releases its held documents only
//! after a flush requested after its own last write (see `Shared::flush_and_release`).
//!
//! Architecture invariant: a shard's lock is never taken while the connection table's lock is
//! held (register and unregister take them one after the other), so there is no lock-order
//! cycle.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use rounds_core::DocumentId;
use rounds_core::sync::hub::{Hub, HubConfig};

/// The shard for documents of facilities this server has not imported (development token).
/// Never a facility id: ids cannot contain `*`.
pub const DEV_SHARD: &str = "*";

/// One facility's hub and what it persisted since its last flush.
pub struct ShardCore {
    pub hub: Hub,
    /// Documents persisted since the last flush (for alerts and late-data re-evaluation).
    pub persisted: Vec<DocumentId>,
}

pub struct Shard {
    core: Mutex<ShardCore>,
}

impl Shard {
    pub fn lock(&self) -> MutexGuard<'_, ShardCore> {
        // A panic while holding the lock would be a bug; keep serving with the state as it is.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every shard, created on first use.
pub struct Shards {
    map: Mutex<HashMap<String, Arc<Shard>>>,
    sequence: Arc<AtomicU64>,
    peer_id: String,
    storage_id: String,
    config: HubConfig,
}

impl Shards {
    /// `seq` continues the store's sequence numbers.
    pub fn new(peer_id: String, storage_id: String, seq: u64, config: HubConfig) -> Shards {
        Shards {
            map: Mutex::new(HashMap::new()),
            sequence: Arc::new(AtomicU64::new(seq)),
            peer_id,
            storage_id,
            config,
        }
    }

    /// The server's peer id (the same in every shard).
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The shard of `key` (a facility id, or [`DEV_SHARD`]).
    pub fn get(&self, key: &str) -> Arc<Shard> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Shard {
                    core: Mutex::new(ShardCore {
                        hub: Hub::with_sequence(
                            self.peer_id.clone(),
                            self.storage_id.clone(),
                            self.sequence.clone(),
                            self.config.clone(),
                        ),
                        persisted: Vec::new(),
                    }),
                })
            })
            .clone()
    }

    /// Every shard created so far.
    pub fn all(&self) -> Vec<Arc<Shard>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_share_one_sequence_and_are_made_once() {
        let shards = Shards::new("s".into(), "st".into(), 41, HubConfig::default());
        let a = shards.get("a");
        let again = shards.get("a");
        assert!(Arc::ptr_eq(&a, &again));
        let b = shards.get("b");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(shards.all().len(), 2);
        // Both start after the store's last number; whatever one hands out, the other skips.
        let mut loader = NoStore;
        let doc = DocumentId::from_bytes([1; 16]);
        let seq_a = {
            let mut core = a.lock();
            core.hub.merge(doc, &genesis(), &mut loader).unwrap();
            core.hub.seq()
        };
        let seq_b = {
            let mut core = b.lock();
            core.hub
                .merge(DocumentId::from_bytes([2; 16]), &genesis(), &mut loader)
                .unwrap();
            core.hub.seq()
        };
        assert_eq!((seq_a, seq_b), (42, 43));
    }

    struct NoStore;
    impl rounds_core::sync::hub::Loader for NoStore {
        fn load(&mut self, _: &DocumentId) -> Result<Option<Vec<Vec<u8>>>, String> {
            Ok(None)
        }
        fn load_sync_state(&mut self, _: &DocumentId, _: &str) -> Option<Vec<u8>> {
            None
        }
    }

    fn genesis() -> Vec<u8> {
        rounds_core::document::genesis(rounds_core::document::DocKind::Facility)
            .unwrap()
            .save()
    }
}
