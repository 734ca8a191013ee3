//! One hub per facility, each under its own lock: one facility's sync work (decoding, the gate,
//! the write policy, Automerge, the store reads and writes of its documents) never waits on
//! another's.
//!
//! Each shard is driven by its inbox: a connection puts its frames in its facility's bounded
//! inbox and goes on reading (a full inbox makes it wait: backpressure); one drainer at a time
//! takes a burst of messages off the inbox on the blocking pool and feeds them to the hub, so
//! decoding, the gate, the policy and Automerge never run on an async worker and a burst costs
//! one hand-off, not one per frame. Flush completions come back through the same inbox
//! ([`ShardMsg::Flushed`]), so the hub's durability hold works as in the sans-IO design: documents
//! with unflushed changes stay held while other frames go on being processed.
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
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};

use rounds_core::DocumentId;
use rounds_core::sync::hub::{ConnId, Hub, HubConfig};
use rounds_core::sync::wire::Message;
use tokio::sync::mpsc;

/// The shard for documents of facilities this server has not imported (development token).
/// Never a facility id: ids cannot contain `*`.
pub const DEV_SHARD: &str = "*";

/// One facility's hub and what it persisted since its last flush.
pub struct ShardCore {
    pub hub: Hub,
    /// Documents persisted since the last flush (for alerts and late-data re-evaluation).
    pub persisted: Vec<DocumentId>,
}

/// Frames a shard's inbox holds before senders wait.
pub const INBOX: usize = 1024;
/// Bytes of frames a shard's inbox holds before senders wait (counted in KiB), so queued frames
/// cost bounded memory whatever their size.
pub const INBOX_KIB: u32 = 64 << 10;

/// What a shard's drainer is given.
pub enum ShardMsg {
    /// A frame from a connection of this shard's facility (or the first shard of a
    /// development-token connection, which decodes and routes it).
    Frame {
        conn: ConnId,
        frame: axum::body::Bytes,
        /// The frame's share of the inbox's byte budget, returned when it is processed.
        budget: tokio::sync::OwnedSemaphorePermit,
    },
    /// A development-token connection's message for a document of this shard.
    Routed { conn: ConnId, msg: Message },
    /// Everything persisted up to this hub's `seq` is durable now.
    Flushed(u64),
}

pub struct Shard {
    core: Mutex<ShardCore>,
    inbox: mpsc::Sender<ShardMsg>,
    /// The inbox's byte budget (KiB permits).
    pub(crate) budget: Arc<tokio::sync::Semaphore>,
    rx: Mutex<mpsc::Receiver<ShardMsg>>,
    /// A drainer is scheduled or running.
    pub(crate) draining: AtomicBool,
}

impl Shard {
    pub fn lock(&self) -> MutexGuard<'_, ShardCore> {
        // A panic while holding the lock would be a bug; keep serving with the state as it is.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inbox's sending side.
    pub fn inbox(&self) -> &mpsc::Sender<ShardMsg> {
        &self.inbox
    }

    /// The inbox's receiving side (held by the one drainer).
    pub fn receiver(&self) -> MutexGuard<'_, mpsc::Receiver<ShardMsg>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether messages wait with no drainer on them (never blocks: a drainer holding the
    /// receiver will see them).
    pub fn has_waiting(&self) -> bool {
        self.rx.try_lock().is_ok_and(|rx| !rx.is_empty())
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
                let (inbox, rx) = mpsc::channel(INBOX);
                Arc::new(Shard {
                    inbox,
                    budget: Arc::new(tokio::sync::Semaphore::new(INBOX_KIB as usize)),
                    rx: Mutex::new(rx),
                    draining: AtomicBool::new(false),
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
