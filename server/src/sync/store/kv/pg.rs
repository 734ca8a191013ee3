//! The PostgreSQL engine of [`super::Db`]: a pool of connection threads, one table per tree.
//!
//! **Threads.** The services call the store synchronously (as they call sled), from the blocking
//! pool and sometimes from async tasks. The driver (`postgres`, the blocking face of
//! `tokio-postgres`) must not run inside the server's runtime, so each connection lives on its
//! own OS thread; a call sends a job to the pool and waits for its answer. Connections open
//! lazily and are reopened after a failure (the failed call reports it; nothing is retried
//! behind the caller's back, so a write is never applied twice).
//!
//! **Schema** (embedded, applied on open, recorded in `rounds_schema`):
//! `rounds_schema (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ)`, `rounds_trees (name TEXT
//! PRIMARY KEY)`, the sequence `rounds_ids`, and per tree `"kv_<name>" (key BYTEA PRIMARY KEY,
//! value BYTEA NOT NULL)`.
//!
//! **Statements** — plain SQL (no advisory locks, no `LOCK TABLE`; `LISTEN`/`pg_notify` only
//! where a probe at open finds them, the change feed polling otherwise): `CREATE TABLE/SEQUENCE
//! IF NOT EXISTS`,
//! `SELECT … WHERE key >= $1 AND key < $2 ORDER BY key [DESC] LIMIT n`, `INSERT … ON CONFLICT
//! (key) DO UPDATE SET value = EXCLUDED.value` (inside a `WITH old AS (SELECT …)` to return the
//! previous value), `INSERT … ON CONFLICT DO NOTHING`, `UPDATE … WHERE key = $1 AND value = $2`,
//! `DELETE … RETURNING`, `SELECT nextval('rounds_ids')`, `SELECT count(*)`, `BEGIN`/`COMMIT`
//! for a batch, and for a document write ([`PgKv::write_chunk`]) `INSERT … ON CONFLICT DO UPDATE
//! SET value = CASE WHEN … END RETURNING value` and `int8send(nextval('rounds_ids'))`. Only
//! PostgreSQL is tested here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use postgres::types::ToSql;
use postgres::{Client, Statement};

use super::{KvError, KvResult};

pub mod tls;
use tls::Transport;

/// The pool could not serve a call.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting to {url}: {}", chain(source))]
    Connect {
        url: String,
        #[source]
        source: postgres::Error,
    },
    #[error("{url} is not a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE): {source}")]
    Url {
        url: String,
        #[source]
        source: postgres::Error,
    },
    #[error("TLS to PostgreSQL: {0}")]
    Tls(String),
    #[error("{0:?} is not a tree name (lowercase letters, digits, _ and -)")]
    TreeName(String),
    #[error(
        "the database's schema is version {found}, newer than this rounds understands ({supported})"
    )]
    Schema { found: i64, supported: i64 },
    #[error("the connection pool has stopped")]
    Stopped,
    #[error("starting a thread: {0}")]
    Thread(String),
}

/// An error and its causes, one after the other (the driver's own message alone says only
/// "error performing TLS handshake", not which certificate was refused).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

/// One connection and its prepared statements.
pub struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let s = self.prepare(sql)?;
        self.client.query(&s, params)
    }

    pub fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let s = self.prepare(sql)?;
        self.client.execute(&s, params)
    }

    pub fn batch(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

type Job = Box<dyn FnOnce(Result<&mut Conn, PoolError>) + Send>;

/// The pool: `size` connection threads taking jobs from one queue.
struct Pool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    url: String,
}

impl Pool {
    fn start(
        config: postgres::Config,
        transport: Transport,
        url: String,
        size: usize,
    ) -> Arc<Pool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..size.max(1) {
            let rx = rx.clone();
            let config = config.clone();
            let transport = transport.clone();
            let redacted = url.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("rounds-pg-{i}"))
                .spawn(move || {
                    let mut conn: Option<Conn> = None;
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            match rx.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        if conn.as_mut().is_some_and(|c| c.client.is_closed()) {
                            conn = None;
                        }
                        if conn.is_none() {
                            match transport.connect(&config) {
                                Ok(client) => {
                                    conn = Some(Conn {
                                        client,
                                        statements: HashMap::new(),
                                    })
                                }
                                Err(source) => {
                                    job(Err(PoolError::Connect {
                                        url: redacted.clone(),
                                        source,
                                    }));
                                    continue;
                                }
                            }
                        }
                        if let Some(c) = conn.as_mut() {
                            job(Ok(c));
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a PostgreSQL connection thread");
            }
        }
        Arc::new(Pool {
            jobs: Mutex::new(Some(tx)),
            url,
        })
    }

    /// Run `f` on a connection and wait for its answer.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error> + Send + 'static,
    ) -> KvResult<T> {
        let (tx, rx) = mpsc::sync_channel::<KvResult<T>>(1);
        let job: Job = Box::new(move |conn| {
            let out = match conn {
                Ok(c) => f(c).map_err(KvError::from),
                Err(e) => Err(KvError::from(e)),
            };
            let _ = tx.send(out);
        });
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let sender = jobs.as_ref().ok_or(PoolError::Stopped)?;
            sender.send(job).map_err(|_| PoolError::Stopped)?;
        }
        rx.recv().map_err(|_| KvError::from(PoolError::Stopped))?
    }
}

/// The schema migrations: `MIGRATIONS[i]` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rounds_trees (name TEXT PRIMARY KEY);
     CREATE SEQUENCE IF NOT EXISTS rounds_ids;",
];

/// The schema version this rounds writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A PostgreSQL database holding the trees.
pub struct PgKv {
    pool: Arc<Pool>,
    trees: Mutex<HashSet<String>>,
    /// For connections of their own (the change feed's listener).
    config: postgres::Config,
    transport: Transport,
    /// Whether the database runs `pg_notify` (PostgreSQL does; engines without it are polled).
    notify: bool,
}

/// The channel the servers sharing a database announce their document writes on.
pub const CHANGES_CHANNEL: &str = "rounds_changes";

/// One document write, in one transaction (see [`PgKv::write_chunk`]).
pub struct ChunkWrite {
    /// The `chunks` entry.
    pub key: Vec<u8>,
    pub chunk: Vec<u8>,
    /// `chunks` entries the new one replaces (a snapshot's compaction).
    pub removes: Vec<Vec<u8>>,
    /// The `heads` entry: `heads` when it still holds `expected` (nobody else wrote the
    /// document since this writer's copy was read), else `invalid`.
    pub heads_key: Vec<u8>,
    pub heads: Vec<u8>,
    pub expected: Option<Vec<u8>>,
    pub invalid: Vec<u8>,
    /// The `changes` entry's value (its key is the next `rounds_ids` number).
    pub change: Vec<u8>,
}

fn valid_tree_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl PgKv {
    /// Connect (`size` connections at most), apply the schema migrations, and check the version.
    pub fn open(url: &str, size: usize) -> KvResult<Arc<PgKv>> {
        let redacted = redact(url);
        let (config, transport, options) = tls::parse(url, &redacted)?;
        let pool = Pool::start(config.clone(), transport.clone(), redacted, size);
        let mut kv = PgKv {
            pool,
            trees: Mutex::new(HashSet::new()),
            config,
            transport,
            notify: false,
        };
        kv.migrate()?;
        // Engines of the PostgreSQL protocol without LISTEN/NOTIFY are polled only (and so is
        // a database whose URL says `notify=off`).
        kv.notify = options.notify
            && kv
                .pool
                .run(|c| c.query("SELECT pg_notify('rounds_probe', '')", &[]))
                .is_ok();
        Ok(Arc::new(kv))
    }

    /// The URL without its password.
    pub fn redacted_url(&self) -> &str {
        &self.pool.url
    }

    fn migrate(&self) -> KvResult<()> {
        // Two servers starting together may race on `IF NOT EXISTS`; the loser retries once.
        let attempt = || {
            self.pool.run(|c| {
                c.batch(
                    "CREATE TABLE IF NOT EXISTS rounds_schema (
                         version BIGINT PRIMARY KEY,
                         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                )?;
                let rows = c.query("SELECT COALESCE(MAX(version), 0) FROM rounds_schema", &[])?;
                let found: i64 = rows.first().map_or(0, |r| r.get(0));
                if found > SCHEMA_VERSION {
                    return Ok(Err(found));
                }
                for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                    let version = i as i64 + 1;
                    let mut tx = c.client().transaction()?;
                    tx.batch_execute(step)?;
                    tx.execute(
                        "INSERT INTO rounds_schema (version) VALUES ($1) ON CONFLICT DO NOTHING",
                        &[&version],
                    )?;
                    tx.commit()?;
                    tracing::info!(version, "database schema migrated");
                }
                Ok(Ok(()))
            })
        };
        let outcome = match attempt() {
            Ok(o) => o,
            Err(_) => attempt()?,
        };
        outcome.map_err(|found| {
            PoolError::Schema {
                found,
                supported: SCHEMA_VERSION,
            }
            .into()
        })
    }

    pub fn open_tree(self: &Arc<Self>, name: &str) -> KvResult<PgTree> {
        if !valid_tree_name(name) {
            return Err(PoolError::TreeName(name.to_string()).into());
        }
        // Quoted: tree names may hold `-`; the name was checked, so nothing else needs escaping.
        let table = format!("\"kv_{name}\"");
        let known = self
            .trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name);
        if !known {
            let create = {
                let (table, name) = (table.clone(), name.to_string());
                move || {
                    let (table, name) = (table.clone(), name.clone());
                    move |c: &mut Conn| {
                        c.batch(&format!(
                            "CREATE TABLE IF NOT EXISTS {table} (key BYTEA PRIMARY KEY, value BYTEA NOT NULL)"
                        ))?;
                        c.execute(
                            "INSERT INTO rounds_trees (name) VALUES ($1) ON CONFLICT DO NOTHING",
                            &[&name],
                        )
                    }
                }
            };
            if self.pool.run(create()).is_err() {
                self.pool.run(create())?;
            }
            self.trees
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string());
        }
        Ok(PgTree {
            pool: self.pool.clone(),
            name: name.to_string(),
            table,
        })
    }

    pub fn generate_id(&self) -> KvResult<u64> {
        self.pool.run(|c| {
            let rows = c.query("SELECT nextval('rounds_ids')", &[])?;
            Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64)
        })
    }

    pub fn tree_names(&self) -> KvResult<Vec<String>> {
        self.pool.run(|c| {
            let rows = c.query("SELECT name FROM rounds_trees ORDER BY name", &[])?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }

    /// Several tables' writes in one transaction.
    pub fn apply_batches(&self, writes: Vec<(String, Ops)>) -> KvResult<()> {
        self.pool.run(move |c| {
            let mut prepared = Vec::with_capacity(writes.len());
            for (t, _) in &writes {
                prepared.push((
                    c.prepare(&format!(
                        "INSERT INTO {t} (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                    ))?,
                    c.prepare(&format!("DELETE FROM {t} WHERE key = $1"))?,
                ));
            }
            let mut tx = c.client().transaction()?;
            for ((_, ops), (upsert, delete)) in writes.iter().zip(&prepared) {
                for (k, v) in ops {
                    match v {
                        Some(v) => tx.execute(upsert, &[k, v])?,
                        None => tx.execute(delete, &[k])?,
                    };
                }
            }
            tx.commit()
        })
    }

    /// Whether writes announce themselves with `pg_notify` (else the feed polls only).
    pub fn notifies(&self) -> bool {
        self.notify
    }

    /// A connection of its own, outside the pool (the change feed's `LISTEN`).
    pub fn connect(&self) -> Result<Client, PoolError> {
        self.transport
            .connect(&self.config)
            .map_err(|source| PoolError::Connect {
                url: self.pool.url.clone(),
                source,
            })
    }

    /// A document write from one of several servers, in one transaction: the chunk (and the
    /// chunks it replaces), the `heads` entry set only if nobody else wrote the document since
    /// (compare-and-set, else marked invalid), and a `changes` entry announced to the other
    /// servers (`pg_notify` at commit, where the engine has it). Returns whether the heads
    /// were recorded.
    pub fn write_chunk(&self, w: ChunkWrite) -> KvResult<bool> {
        let notify = self.notify;
        self.pool.run(move |c| {
            let upsert = c.prepare(
                "INSERT INTO \"kv_chunks\" (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            )?;
            let delete = c.prepare("DELETE FROM \"kv_chunks\" WHERE key = $1")?;
            let heads = c.prepare(
                "INSERT INTO \"kv_heads\" (key, value)
                 VALUES ($1, CASE WHEN $3::BYTEA IS NULL THEN $2::BYTEA ELSE $4::BYTEA END)
                 ON CONFLICT (key) DO UPDATE SET value =
                   CASE WHEN \"kv_heads\".value = $3::BYTEA THEN $2::BYTEA ELSE $4::BYTEA END
                 RETURNING value",
            )?;
            let change = if notify {
                c.prepare(
                    "WITH c AS (INSERT INTO \"kv_changes\" (key, value)
                       VALUES (int8send(nextval('rounds_ids')), $1) RETURNING key, value)
                     SELECT pg_notify('rounds_changes', encode(key, 'hex') || encode(value, 'hex'))
                     FROM c",
                )?
            } else {
                c.prepare(
                    "INSERT INTO \"kv_changes\" (key, value)
                     VALUES (int8send(nextval('rounds_ids')), $1)",
                )?
            };
            let mut tx = c.client().transaction()?;
            for k in &w.removes {
                tx.execute(&delete, &[k])?;
            }
            tx.execute(&upsert, &[&w.key, &w.chunk])?;
            let rows = tx.query(&heads, &[&w.heads_key, &w.heads, &w.expected, &w.invalid])?;
            let recorded = rows
                .first()
                .is_some_and(|r| r.get::<_, Vec<u8>>(0) == w.heads);
            if notify {
                tx.query(&change, &[&w.change])?;
            } else {
                tx.execute(&change, &[&w.change])?;
            }
            tx.commit()?;
            Ok(recorded)
        })
    }

    /// Whether the database holds any entry in any tree (`rounds migrate` refuses then).
    pub fn has_data(self: &Arc<Self>) -> KvResult<bool> {
        for name in self.tree_names()? {
            if self.open_tree(&name)?.first_key()?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Run SQL of the caller's on a pooled connection (leases, fan-out, tests).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error> + Send + 'static,
    ) -> KvResult<T> {
        self.pool.run(f)
    }
}

impl Drop for PgKv {
    fn drop(&mut self) {
        // Closing the queue ends the connection threads once they finish their job.
        self.pool
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// One tree's table.
#[derive(Clone)]
pub struct PgTree {
    pool: Arc<Pool>,
    name: String,
    table: String,
}

type Entry = (Vec<u8>, Vec<u8>);

/// A batch's writes: key and new value (None: delete).
pub type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl PgTree {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table's quoted name.
    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        let sql = format!("SELECT value FROM {} WHERE key = $1", self.table);
        let key = key.to_vec();
        self.pool.run(move |c| {
            Ok(c.query(&sql, &[&key])?
                .first()
                .map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    pub fn insert(&self, key: &[u8], value: &[u8]) -> KvResult<Option<Vec<u8>>> {
        let t = &self.table;
        let sql = format!(
            "WITH old AS (SELECT value FROM {t} WHERE key = $1),
                  up AS (INSERT INTO {t} (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value)
             SELECT value FROM old"
        );
        let (key, value) = (key.to_vec(), value.to_vec());
        self.pool.run(move |c| {
            Ok(c.query(&sql, &[&key, &value])?
                .first()
                .map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    pub fn remove(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        let sql = format!("DELETE FROM {} WHERE key = $1 RETURNING value", self.table);
        let key = key.to_vec();
        self.pool.run(move |c| {
            Ok(c.query(&sql, &[&key])?
                .first()
                .map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    /// Ok(Ok(())) when swapped; Ok(Err(current)) when the key held something else.
    pub fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> KvResult<Result<(), Option<Vec<u8>>>> {
        let t = &self.table;
        let (k, o, n) = (
            key.to_vec(),
            old.map(<[u8]>::to_vec),
            new.map(<[u8]>::to_vec),
        );
        let changed = match (o, n) {
            (None, None) => return Ok(self.get(key)?.map_or(Ok(()), |v| Err(Some(v)))),
            (None, Some(n)) => {
                let sql = format!(
                    "INSERT INTO {t} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"
                );
                self.pool.run(move |c| c.execute(&sql, &[&k, &n]))?
            }
            (Some(o), Some(n)) => {
                let sql = format!("UPDATE {t} SET value = $3 WHERE key = $1 AND value = $2");
                self.pool.run(move |c| c.execute(&sql, &[&k, &o, &n]))?
            }
            (Some(o), None) => {
                let sql = format!("DELETE FROM {t} WHERE key = $1 AND value = $2");
                self.pool.run(move |c| c.execute(&sql, &[&k, &o]))?
            }
        };
        if changed == 1 {
            Ok(Ok(()))
        } else {
            Ok(Err(self.get(key)?))
        }
    }

    pub fn pop_min(&self) -> KvResult<Option<Entry>> {
        let t = &self.table;
        let sql = format!(
            "DELETE FROM {t} WHERE key = (SELECT key FROM {t} ORDER BY key LIMIT 1)
             RETURNING key, value"
        );
        loop {
            let sql = sql.clone();
            let popped = self.pool.run(move |c| {
                Ok(c.query(&sql, &[])?
                    .first()
                    .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))))
            })?;
            // Nothing deleted: empty, or another server took that entry first.
            if popped.is_some() || self.first_key()?.is_none() {
                return Ok(popped);
            }
        }
    }

    fn first_key(&self) -> KvResult<Option<Vec<u8>>> {
        let sql = format!("SELECT key FROM {} ORDER BY key LIMIT 1", self.table);
        self.pool
            .run(move |c| Ok(c.query(&sql, &[])?.first().map(|r| r.get::<_, Vec<u8>>(0))))
    }

    pub fn is_empty(&self) -> KvResult<bool> {
        Ok(self.first_key()?.is_none())
    }

    pub fn len(&self) -> KvResult<usize> {
        let sql = format!("SELECT count(*) FROM {}", self.table);
        self.pool.run(move |c| {
            Ok(c.query(&sql, &[])?
                .first()
                .map_or(0, |r| r.get::<_, i64>(0)) as usize)
        })
    }

    pub fn clear(&self) -> KvResult<()> {
        let sql = format!("DELETE FROM {}", self.table);
        self.pool.run(move |c| c.execute(&sql, &[]).map(|_| ()))
    }

    pub fn apply_batch(&self, ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> KvResult<()> {
        let t = self.table.clone();
        let ops = ops.to_vec();
        self.pool.run(move |c| {
            let upsert = c.prepare(&format!(
                "INSERT INTO {t} (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ))?;
            let delete = c.prepare(&format!("DELETE FROM {t} WHERE key = $1"))?;
            let mut tx = c.client().transaction()?;
            for (k, v) in &ops {
                match v {
                    Some(v) => tx.execute(&upsert, &[k, v])?,
                    None => tx.execute(&delete, &[k])?,
                };
            }
            tx.commit()
        })
    }

    pub fn iter(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> PgIter {
        PgIter {
            tree: self.clone(),
            lo,
            hi,
            front: VecDeque::new(),
            back: VecDeque::new(),
            exhausted: false,
            keys_only: false,
        }
    }

    /// Like [`PgTree::iter`], reading only the keys (values come back empty).
    pub fn iter_keys(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> PgIter {
        PgIter {
            keys_only: true,
            ..self.iter(lo, hi)
        }
    }

    /// One page of the range, from the front or the back.
    fn page(
        &self,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        back: bool,
        keys_only: bool,
    ) -> KvResult<Vec<Entry>> {
        let columns = if keys_only {
            "key, ''::bytea"
        } else {
            "key, value"
        };
        let mut sql = format!("SELECT {columns} FROM {} WHERE TRUE", self.table);
        let mut params: Vec<Vec<u8>> = Vec::new();
        for (bound, incl, excl) in [(lo, ">=", ">"), (hi, "<=", "<")] {
            match bound {
                Bound::Included(k) => {
                    params.push(k.clone());
                    sql.push_str(&format!(" AND key {incl} ${}", params.len()));
                }
                Bound::Excluded(k) => {
                    params.push(k.clone());
                    sql.push_str(&format!(" AND key {excl} ${}", params.len()));
                }
                Bound::Unbounded => {}
            }
        }
        sql.push_str(if back {
            " ORDER BY key DESC LIMIT 256"
        } else {
            " ORDER BY key LIMIT 256"
        });
        self.pool.run(move |c| {
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            Ok(c.query(&sql, &refs)?
                .iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }
}

/// A range read page by page (256 entries), from either end; the two ends never overlap.
pub struct PgIter {
    tree: PgTree,
    /// What is left to fetch: entries already buffered lie outside.
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    front: VecDeque<Entry>,
    back: VecDeque<Entry>,
    /// Nothing left between `lo` and `hi` (or an error was returned).
    exhausted: bool,
    /// Read keys only (values come back empty).
    keys_only: bool,
}

impl PgIter {
    fn fill(&mut self, back: bool) -> Result<(), KvError> {
        if self.exhausted {
            return Ok(());
        }
        let page = match self.tree.page(&self.lo, &self.hi, back, self.keys_only) {
            Ok(p) => p,
            Err(e) => {
                self.exhausted = true;
                return Err(e);
            }
        };
        match (back, page.last()) {
            (_, None) => self.exhausted = true,
            (false, Some((k, _))) => self.lo = Bound::Excluded(k.clone()),
            (true, Some((k, _))) => self.hi = Bound::Excluded(k.clone()),
        }
        if back {
            self.back.extend(page);
        } else {
            self.front.extend(page);
        }
        Ok(())
    }
}

impl Iterator for PgIter {
    type Item = KvResult<Entry>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.front.is_empty()
            && let Err(e) = self.fill(false)
        {
            return Some(Err(e));
        }
        // The front's pages are used up: what is left sits in the back's buffer, in reverse.
        self.front
            .pop_front()
            .or_else(|| self.back.pop_back())
            .map(Ok)
    }
}

impl DoubleEndedIterator for PgIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.is_empty()
            && let Err(e) = self.fill(true)
        {
            return Some(Err(e));
        }
        self.back
            .pop_front()
            .or_else(|| self.front.pop_back())
            .map(Ok)
    }
}
