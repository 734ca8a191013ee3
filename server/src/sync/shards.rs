//! One hub per facility, each under its own lock: one facility's sync work (decoding, the gate,
//! the write policy, Automerge, the store reads and writes of its documents) never waits on
//! another's.
//!
//! Each shard is driven by its inbox ([`ShardMsg`]): a connection puts its frames in its
//! facility's bounded inbox and goes on reading (a full inbox makes it wait: backpressure). One
//! drainer task per shard (started with the shard, see `Shared::shard_for`) takes the messages
//! waiting — up to [`BURST`] at a time — and feeds them to the hub in one hand-off to the
//! blocking pool, so decoding, the gate, the policy and Automerge never run on an async worker
//! and a burst of frames costs one hand-off, not one per frame. Connects, disconnects and flush
//! completions ([`ShardMsg::Flushed`]) come through the same inbox, so the hub sees a
//! connection's life in order and its durability hold works as in the sans-IO design: documents
//! with unflushed changes stay held while other frames go on being processed.
//!
//! There is no wake-up protocol to get wrong: the drainer is a plain loop over
//! `recv_many`, and it ends when the shard (its inbox's sender) is dropped.
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
use rounds_core::sync::hub::{Access, ConnId, Hub, HubConfig};
use rounds_core::sync::wire::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// The shard for documents of facilities this server has not imported (development token).
/// Never a facility id: ids cannot contain `*`.
pub const DEV_SHARD: &str = "*";

/// One facility's hub and what it persisted since its last flush.
pub struct ShardCore {
    pub hub: Hub,
    /// Documents persisted since the last flush (for alerts and late-data re-evaluation).
    pub persisted: Vec<DocumentId>,
}

/// Messages a shard's inbox holds before senders wait.
pub const INBOX: usize = 1024;
/// Messages a drainer feeds to its hub in one hand-off to the blocking pool; a busy facility
/// then lets the others have the workers.
pub const BURST: usize = 256;
/// Bytes of frames one shard's inbox holds before its connections wait, in KiB.
pub const INBOX_KIB: u32 = 32 << 10;
/// Bytes of frames all inboxes together hold before every connection waits, in KiB.
pub const ALL_INBOXES_KIB: u32 = 256 << 10;

/// What a shard's drainer feeds its hub, in the order it was put in the inbox.
pub enum ShardMsg {
    /// A connection registers in this shard.
    Connect {
        conn: ConnId,
        access: Arc<dyn Access>,
        /// The device's name (a `join` may only take over a peer id of the same device).
        device: String,
    },
    /// A frame from a connection whose home is this shard (a development-token connection's
    /// home shard decodes it and routes it on when its document belongs to another facility).
    Frame {
        conn: ConnId,
        frame: bytes::Bytes,
        /// Its share of the inboxes' byte budgets, given back once it is processed.
        budget: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    },
    /// A development-token connection's message for a document of this shard.
    Routed { conn: ConnId, msg: Message },
    /// A connection leaves this shard (its sync states are saved).
    Disconnect { conn: ConnId },
    /// Everything this hub persisted up to this sequence number is durable now.
    Flushed(u64),
    /// Another server sharing the store wrote this document (`Hub::absorb`).
    Absorb(DocumentId),
}

pub struct Shard {
    core: Mutex<ShardCore>,
    inbox: mpsc::Sender<ShardMsg>,
    /// The receiving side, until the drainer takes it.
    receiver: Mutex<Option<mpsc::Receiver<ShardMsg>>>,
    /// This inbox's byte budget (KiB permits).
    budget: Arc<Semaphore>,
    /// The development shard: its documents may also be loaded in a facility's shard.
    dev: bool,
}

impl Shard {
    /// Whether this is the development shard ([`DEV_SHARD`]).
    pub fn is_dev(&self) -> bool {
        self.dev
    }

    pub fn lock(&self) -> MutexGuard<'_, ShardCore> {
        // A panic while holding the lock would be a bug; keep serving with the state as it is.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock when it is free now (None: someone holds it).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, ShardCore>> {
        match self.core.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The inbox's sending side.
    pub fn inbox(&self) -> &mpsc::Sender<ShardMsg> {
        &self.inbox
    }

    /// The inbox's receiving side, once: whoever gets it drives the shard.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<ShardMsg>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// This inbox's byte budget.
    pub fn budget(&self) -> Arc<Semaphore> {
        self.budget.clone()
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
                let (inbox, receiver) = mpsc::channel(INBOX);
                // The development shard keeps no idle documents: a document it syncs may
                // belong to a facility's shard too, and a copy kept here would miss what that
                // shard writes (what this one writes, the others forget: `Shared::forget_elsewhere`).
                let dev = key == DEV_SHARD;
                let mut config = self.config.clone();
                if dev {
                    config.idle_cache = rounds_core::sync::hub::IdleCache::new(0);
                }
                Arc::new(Shard {
                    inbox,
                    receiver: Mutex::new(Some(receiver)),
                    budget: Arc::new(Semaphore::new(INBOX_KIB as usize)),
                    dev,
                    core: Mutex::new(ShardCore {
                        hub: Hub::with_sequence(
                            self.peer_id.clone(),
                            self.storage_id.clone(),
                            self.sequence.clone(),
                            config,
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
    use rounds_core::sync::hub::EmptyStore;

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
        let mut loader = EmptyStore;
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

    fn genesis() -> Vec<u8> {
        rounds_core::document::genesis(rounds_core::document::DocKind::Facility)
            .unwrap()
            .save()
    }
}
