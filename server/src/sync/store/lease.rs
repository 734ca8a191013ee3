//! Leases on a shared (PostgreSQL) store.
//!
//! - **Servers** run side by side: each keeps a *presence* (`lease:server:<id>`, see
//!   [`Presence`]) for as long as it runs, so commands know to go through a server.
//! - **Commands** that write straight to the store (import, push, read-model, migrate) take the
//!   `writer` lease ([`WriterGuard`]) and then check that no server is present; a server
//!   starting meanwhile waits until the command's lease is gone. Each side writes its entry
//!   before reading the other's, so one of them always sees the other.
//! - **Background jobs** (automatic month close, push, notifications, escalations) run on one
//!   server at a time: each round takes the job's lease ([`JobLease`]), so a killed server's
//!   jobs are taken over once its lease runs out.
//!
//! A lease is a `meta` entry `lease:<name>` = `holder ‖ expiry (ms since the epoch)`, taken and
//! renewed with compare-and-swap, so two processes never both believe they hold it. The holder
//! renews it every [`RENEW_EVERY`]; a holder that dies stops renewing, and after [`LEASE_TTL`]
//! another process may take it. A command that finds its `writer` lease taken must stop writing
//! at once (it exits): that is what keeps it apart from servers when it was paused longer than
//! the lease. A job's lease is renewed while a round runs ([`JobRound`]); only a holder paused
//! (or cut from the database) for longer than the lease can overlap the next holder's round —
//! the ledger's versions are insert-if-absent, so a close cannot write one twice, but a push
//! item could then be sent twice. Expiry is judged by each process's clock: servers
//! sharing a database keep their clocks synchronised (NTP), and the TTL is far above their skew.
//!
//! Architecture invariant: on sled the directory's file lock does this job and no lease is used.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::kv::{KvResult, Tree};

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the holder renews it.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Who holds a lease and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub holder: String,
    pub expires_ms: u64,
}

impl Holder {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.expires_ms.to_be_bytes().to_vec();
        v.extend_from_slice(self.holder.as_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Holder> {
        let (t, h) = b.split_at_checked(8)?;
        Some(Holder {
            expires_ms: u64::from_be_bytes(t.try_into().ok()?),
            holder: String::from_utf8_lossy(h).to_string(),
        })
    }

    /// Whether it is still in force at `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms
    }
}

/// One named lease, as seen by one would-be holder.
#[derive(Debug, Clone)]
pub struct Lease {
    meta: Tree,
    key: String,
    /// This process: a fresh id per start.
    me: String,
    ttl: Duration,
}

impl Lease {
    pub fn new(meta: Tree, name: &str, me: &str) -> Lease {
        Lease {
            meta,
            key: format!("lease:{name}"),
            me: me.to_string(),
            ttl: LEASE_TTL,
        }
    }

    /// The current holder, live or not.
    pub fn holder(&self) -> KvResult<Option<Holder>> {
        Ok(self.meta.get(&self.key)?.and_then(|v| Holder::decode(&v)))
    }

    /// Whether some process holds it now.
    pub fn held(&self) -> KvResult<Option<Holder>> {
        Ok(self.holder()?.filter(|h| h.live_at(now_ms())))
    }

    /// Take it if free or expired (or already ours); true when we hold it now.
    pub fn try_acquire(&self) -> KvResult<bool> {
        let now = now_ms();
        let current = self.meta.get(&self.key)?;
        if let Some(h) = current.as_deref().and_then(Holder::decode)
            && h.live_at(now)
            && h.holder != self.me
        {
            return Ok(false);
        }
        let mine = Holder {
            holder: self.me.clone(),
            expires_ms: now + self.ttl.as_millis() as u64,
        };
        Ok(self
            .meta
            .compare_and_swap(&self.key, current.as_deref(), Some(mine.encode()))?
            .is_ok())
    }

    /// Extend our lease; false when it is no longer ours (another process took it).
    pub fn renew(&self) -> KvResult<bool> {
        let Some(current) = self.meta.get(&self.key)? else {
            return Ok(false);
        };
        match Holder::decode(&current) {
            Some(h) if h.holder == self.me => {}
            _ => return Ok(false),
        }
        let mine = Holder {
            holder: self.me.clone(),
            expires_ms: now_ms() + self.ttl.as_millis() as u64,
        };
        Ok(self
            .meta
            .compare_and_swap(&self.key, Some(current), Some(mine.encode()))?
            .is_ok())
    }

    /// Give it up (if ours), so another process may take it at once.
    pub fn release(&self) -> KvResult<()> {
        if let Some(current) = self.meta.get(&self.key)?
            && Holder::decode(&current).is_some_and(|h| h.holder == self.me)
        {
            let _ = self
                .meta
                .compare_and_swap(&self.key, Some(current), None::<Vec<u8>>)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::sync::store::kv::Db::Sled(sled::open(dir.path()).unwrap());
        let t = db.open_tree("meta").unwrap();
        (dir, t)
    }

    #[test]
    fn one_holder_at_a_time_and_a_dead_one_is_replaced() {
        let (_d, t) = meta();
        let a = Lease::new(t.clone(), "writer", "a");
        let b = Lease::new(t.clone(), "writer", "b");
        assert!(a.try_acquire().unwrap());
        assert!(
            !b.try_acquire().unwrap(),
            "b must wait while a's lease is live"
        );
        assert!(a.renew().unwrap());
        assert!(!b.renew().unwrap(), "b never held it");
        // a dies: its lease runs out.
        let expired = Holder {
            holder: "a".into(),
            expires_ms: now_ms() - 1,
        };
        t.insert("lease:writer", expired.encode()).unwrap();
        assert!(b.try_acquire().unwrap(), "an expired lease is taken over");
        assert!(!a.renew().unwrap(), "a learns it lost the lease");
        assert_eq!(b.held().unwrap().unwrap().holder, "b");
        a.release().unwrap();
        assert_eq!(
            b.held().unwrap().unwrap().holder,
            "b",
            "a cannot release b's"
        );
        b.release().unwrap();
        assert!(b.held().unwrap().is_none());
        assert!(a.try_acquire().unwrap());
    }

    #[test]
    fn a_job_runs_on_one_server_and_moves_when_its_holder_is_gone() {
        let (_d, t) = meta();
        let a = std::sync::Arc::new(JobLease::new(t.clone(), "auto-close"));
        let b = std::sync::Arc::new(JobLease::new(t.clone(), "auto-close"));
        let round = JobRound::start(a.clone());
        assert!(round.is_some());
        assert!(JobRound::start(b.clone()).is_none(), "one server at a time");
        drop(round);
        // The holder keeps it between rounds...
        assert!(JobRound::start(b.clone()).is_none());
        assert!(JobRound::start(a.clone()).is_some());
        // ... until it dies: its lease runs out (or, stopped cleanly, is released).
        let dead = Holder {
            holder: a.lease.me.clone(),
            expires_ms: now_ms() - 1,
        };
        t.insert("lease:job:auto-close", dead.encode()).unwrap();
        assert!(JobRound::start(b.clone()).is_some(), "taken over");
        assert!(JobRound::start(a.clone()).is_none());
        drop(b);
        // (The ended rounds' renewal threads let go of it within 100 ms.)
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            JobRound::start(a).is_some(),
            "released when the server stops"
        );
    }

    #[test]
    fn commands_and_servers_keep_apart() {
        let (_d, t) = meta();
        let server = Presence::announce(t.clone()).unwrap();
        assert_eq!(servers_present(t.clone()).unwrap(), 1);
        assert!(matches!(
            WriterGuard::acquire(t.clone()),
            Err(HeldError::Served)
        ));
        // Refused, the command left no lease behind: another server starts.
        let second = Presence::announce(t.clone()).unwrap();
        assert_eq!(servers_present(t.clone()).unwrap(), 2);
        drop((server, second));
        assert_eq!(servers_present(t.clone()).unwrap(), 0);
        let command = WriterGuard::acquire(t.clone()).unwrap();
        assert!(matches!(
            Presence::announce(t.clone()),
            Err(HeldError::Held { .. })
        ));
        assert_eq!(
            servers_present(t.clone()).unwrap(),
            0,
            "the waiting server withdrew"
        );
        drop(command);
        assert!(Presence::announce(t).is_ok());
    }

    #[test]
    fn a_damaged_lease_record_does_not_block_forever() {
        let (_d, t) = meta();
        t.insert("lease:writer", b"junk".to_vec()).unwrap();
        let a = Lease::new(t, "writer", "a");
        assert!(a.try_acquire().unwrap());
    }
}

/// Another process holds the lease.
#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    #[error(
        "another rounds process writes to this database (its lease runs {secs} s more unless renewed): run commands through the server (--server), or wait for it to stop"
    )]
    Held { secs: u64 },
    #[error(
        "a rounds server runs on this database: run commands through it (--server), or stop it"
    )]
    Served,
    #[error("reading the writer's lease: {0}")]
    Kv(#[from] super::kv::KvError),
}

/// The writer's lease, held and renewed in the background for as long as this lives; released
/// when dropped. If a renewal finds the lease taken (or cannot renew it before it would
/// expire), the process exits: it may no longer write.
pub struct WriterGuard {
    lease: Lease,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WriterGuard {
    /// Take the `writer` lease now, or say who holds it.
    pub fn acquire(meta: Tree) -> Result<WriterGuard, HeldError> {
        let me = uuid::Uuid::new_v4().to_string();
        let lease = Lease::new(meta, "writer", &me);
        if !lease.try_acquire()? {
            let secs = lease
                .held()?
                .map_or(0, |h| h.expires_ms.saturating_sub(now_ms()) / 1000);
            return Err(HeldError::Held { secs });
        }
        // Then no server may be present (a server starting now sees our lease and waits).
        match servers_present(lease.meta.clone()) {
            Ok(0) => {}
            Ok(_) => {
                let _ = lease.release();
                return Err(HeldError::Served);
            }
            Err(e) => {
                let _ = lease.release();
                return Err(e.into());
            }
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, s) = (lease.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("rounds-lease".into())
            .spawn(move || renew_until_stopped(&l, &s));
        if let Err(e) = spawned {
            let _ = lease.release();
            return Err(HeldError::Kv(super::kv::KvError::Pool(
                super::kv::pg::PoolError::Thread(e.to_string()),
            )));
        }
        tracing::info!("writer's lease taken");
        Ok(WriterGuard { lease, stop })
    }
}

fn renew_until_stopped(lease: &Lease, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let mut last_ok = std::time::Instant::now();
    loop {
        let until = std::time::Instant::now() + RENEW_EVERY;
        while std::time::Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        match lease.renew() {
            Ok(true) => last_ok = std::time::Instant::now(),
            Ok(false) => {
                tracing::error!("the writer's lease was taken by another server: stopping");
                eprintln!("rounds: the writer's lease was taken by another server: stopping");
                std::process::exit(75);
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the writer's lease failed; retrying");
                // Stop before the lease could lapse while we still believe we hold it.
                if last_ok.elapsed() + RENEW_EVERY >= LEASE_TTL {
                    tracing::error!("the writer's lease could not be renewed in time: stopping");
                    eprintln!("rounds: the writer's lease could not be renewed: stopping");
                    std::process::exit(75);
                }
            }
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.lease.release() {
            tracing::warn!(error = %e, "releasing the writer's lease");
        }
    }
}

/// How many servers are present on the database now.
pub fn servers_present(meta: Tree) -> KvResult<usize> {
    let now = now_ms();
    let mut n = 0;
    for item in meta.scan_prefix("lease:server:") {
        let (_, v) = item?;
        if Holder::decode(&v).is_some_and(|h| h.live_at(now)) {
            n += 1;
        }
    }
    Ok(n)
}

/// A server's presence on a shared database, renewed in the background while this lives and
/// removed when it drops. Unlike the writer's lease it excludes no other server.
pub struct Presence {
    lease: Lease,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Presence {
    /// Announce this server; fails when a command holds the `writer` lease (the server waits).
    pub fn announce(meta: Tree) -> Result<Presence, HeldError> {
        let me = uuid::Uuid::new_v4().to_string();
        let lease = Lease::new(meta.clone(), &format!("server:{me}"), &me);
        if !lease.try_acquire()? {
            return Err(HeldError::Held { secs: 0 });
        }
        if let Some(h) = Lease::new(meta, "writer", &me).held()? {
            let _ = lease.release();
            return Err(HeldError::Held {
                secs: h.expires_ms.saturating_sub(now_ms()) / 1000,
            });
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, s) = (lease.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("rounds-presence".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                while !s.load(Ordering::SeqCst) {
                    let until = std::time::Instant::now() + RENEW_EVERY;
                    while std::time::Instant::now() < until {
                        if s.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    // Lost (a pause longer than the lease): announce again.
                    match l.renew() {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = l.try_acquire();
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing the server's presence"),
                    }
                }
            });
        if let Err(e) = spawned {
            let _ = lease.release();
            return Err(HeldError::Kv(super::kv::KvError::Pool(
                super::kv::pg::PoolError::Thread(e.to_string()),
            )));
        }
        Ok(Presence { lease, stop })
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.lease.release() {
            tracing::warn!(error = %e, "removing the server's presence");
        }
    }
}

/// A background job's lease: the job runs a round only while `held` (taken or renewed at the
/// start of each round), so one server at a time runs it and another takes over within
/// [`LEASE_TTL`] of the holder's death. Rounds are expected to be shorter than the TTL; a
/// round that finds the lease gone next time simply stops running the job.
pub struct JobLease {
    lease: Lease,
}

impl JobLease {
    pub fn new(meta: Tree, job: &str) -> JobLease {
        let me = uuid::Uuid::new_v4().to_string();
        JobLease {
            lease: Lease::new(meta, &format!("job:{job}"), &me),
        }
    }

    fn try_hold(&self) -> bool {
        match self.lease.renew() {
            Ok(true) => true,
            Ok(false) => self.lease.try_acquire().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "taking a job's lease");
                false
            }),
            Err(e) => {
                tracing::warn!(error = %e, "renewing a job's lease");
                false
            }
        }
    }
}

/// A round of a job on the server holding its lease: the lease is renewed every
/// [`RENEW_EVERY`] until this drops (at the round's end), so a long round keeps it.
pub struct JobRound {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl JobRound {
    /// A round with no lease to renew (a store with one server: sled).
    pub fn unleased() -> JobRound {
        JobRound {
            stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Start a round if this server holds (or takes) the job's lease.
    pub fn start(lease: std::sync::Arc<JobLease>) -> Option<JobRound> {
        if !lease.try_hold() {
            return None;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("rounds-job".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                let mut last = std::time::Instant::now();
                while !s.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= RENEW_EVERY {
                        last = std::time::Instant::now();
                        if !matches!(lease.lease.renew(), Ok(true)) {
                            tracing::warn!("a job's lease could not be renewed during its round");
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "starting a job's lease renewal");
        }
        Some(JobRound { stop })
    }
}

impl Drop for JobRound {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for JobLease {
    fn drop(&mut self) {
        let _ = self.lease.release();
    }
}
