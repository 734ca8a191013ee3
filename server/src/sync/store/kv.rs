//! The ordered key-value trees every part of the server stores in, on one of two engines:
//! sled (embedded, the default: `--store DIR`) or PostgreSQL (`--store postgres://…`).
//!
//! [`Db`] opens named [`Tree`]s; a tree maps byte keys to byte values, iterates in key order
//! (bytewise, as sled and PostgreSQL's `bytea` both compare), and offers the few atomic
//! operations the services rely on: compare-and-swap, read-modify-write, an atomic batch,
//! pop-the-smallest. The services are written once against this API.
//!
//! On PostgreSQL each tree is a table `"kv_<name>" (key BYTEA PRIMARY KEY, value BYTEA NOT NULL)`
//! (see [`pg`] for the statements, all of which CockroachDB and YugabyteDB also run). Every
//! write is its own committed transaction (a batch is one transaction), so **a call that
//! returned is durable**: `flush` has nothing left to do. On sled, writes are durable after
//! `flush`, as before.
//!
//! Architecture invariant: no service names an engine. Only the store's opening, backups
//! (`services::backup`, a sled-directory format) and `rounds migrate` look at which one it is.

pub mod pg;

use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// A value (sled's cheaply-cloned byte buffer, used by both engines).
pub type IVec = sled::IVec;

/// A storage failure, keeping the engine's error.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("postgres: {0}")]
    Pool(#[from] pg::PoolError),
}

pub type KvResult<T> = Result<T, KvError>;

/// A compare-and-swap lost: what the key held instead.
pub type CasConflict = sled::CompareAndSwapError;

/// The database: sled's, or a PostgreSQL pool.
#[derive(Clone)]
pub enum Db {
    Sled(sled::Db),
    Pg(Arc<pg::PgKv>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Sled(_) => f.write_str("Db::Sled"),
            Db::Pg(p) => write!(f, "Db::Pg({})", p.redacted_url()),
        }
    }
}

impl Db {
    /// Open (creating) a tree. Names are lowercase ASCII letters, digits, `_` and `-`.
    pub fn open_tree(&self, name: &str) -> KvResult<Tree> {
        Ok(match self {
            Db::Sled(db) => Tree::Sled(db.open_tree(name)?),
            Db::Pg(p) => Tree::Pg(p.open_tree(name)?),
        })
    }

    /// A unique, increasing id (across every server on the database).
    pub fn generate_id(&self) -> KvResult<u64> {
        Ok(match self {
            Db::Sled(db) => db.generate_id()?,
            Db::Pg(p) => p.generate_id()?,
        })
    }

    /// Make everything written so far durable (PostgreSQL: already is).
    pub fn flush(&self) -> KvResult<usize> {
        Ok(match self {
            Db::Sled(db) => db.flush()?,
            Db::Pg(_) => 0,
        })
    }

    /// Apply several trees' batches: on PostgreSQL in one transaction (one round trip's worth
    /// of commit), on sled one after the other (each batch atomic).
    pub fn apply_batches(&self, writes: Vec<(&Tree, Batch)>) -> KvResult<()> {
        match self {
            Db::Pg(p) => {
                let mut ops = Vec::with_capacity(writes.len());
                for (tree, batch) in writes {
                    match tree {
                        Tree::Pg(t) => ops.push((t.table().to_string(), batch.ops)),
                        Tree::Sled(_) => tree.apply_batch(batch)?,
                    }
                }
                Ok(p.apply_batches(ops)?)
            }
            Db::Sled(_) => {
                for (tree, mut batch) in writes {
                    // A single write is cheaper as itself than as a batch.
                    match (batch.ops.len(), batch.ops.pop()) {
                        (1, Some((k, Some(v)))) => {
                            tree.insert(k, v)?;
                        }
                        (1, Some((k, None))) => {
                            tree.remove(k)?;
                        }
                        (_, last) => {
                            batch.ops.extend(last);
                            tree.apply_batch(batch)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The trees that exist (for `rounds migrate`).
    pub fn tree_names(&self) -> KvResult<Vec<String>> {
        Ok(match self {
            Db::Sled(db) => db
                .tree_names()
                .into_iter()
                .map(|n| String::from_utf8_lossy(&n).to_string())
                .filter(|n| n != "__sled__default")
                .collect(),
            Db::Pg(p) => p.tree_names()?,
        })
    }

    /// The sled database, for what only exists there (directory backups).
    pub fn as_sled(&self) -> Option<&sled::Db> {
        match self {
            Db::Sled(db) => Some(db),
            Db::Pg(_) => None,
        }
    }

    /// Which engine, for messages and metrics: `sled` or `postgres`.
    pub fn engine(&self) -> &'static str {
        match self {
            Db::Sled(_) => "sled",
            Db::Pg(_) => "postgres",
        }
    }
}

/// One tree.
#[derive(Clone)]
pub enum Tree {
    Sled(sled::Tree),
    Pg(pg::PgTree),
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tree::Sled(t) => write!(f, "Tree::Sled({})", String::from_utf8_lossy(&t.name())),
            Tree::Pg(t) => write!(f, "Tree::Pg({})", t.name()),
        }
    }
}

/// Writes applied together (all or none).
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub(crate) ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), None));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

fn owned_bound(b: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The smallest key greater than every key starting with `prefix` (None: no such key).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Tree {
    pub fn get(&self, key: impl AsRef<[u8]>) -> KvResult<Option<IVec>> {
        Ok(match self {
            Tree::Sled(t) => t.get(key)?,
            Tree::Pg(t) => t.get(key.as_ref())?.map(IVec::from),
        })
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> KvResult<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Set a key; returns what it held.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<IVec>) -> KvResult<Option<IVec>> {
        let value: IVec = value.into();
        Ok(match self {
            Tree::Sled(t) => t.insert(key, value)?,
            Tree::Pg(t) => t.insert(key.as_ref(), &value)?.map(IVec::from),
        })
    }

    /// Delete a key; returns what it held.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> KvResult<Option<IVec>> {
        Ok(match self {
            Tree::Sled(t) => t.remove(key)?,
            Tree::Pg(t) => t.remove(key.as_ref())?.map(IVec::from),
        })
    }

    /// Set `key` to `new` only if it holds `old` (None: absent / delete), atomically — across
    /// servers on PostgreSQL.
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        old: Option<impl AsRef<[u8]>>,
        new: Option<impl Into<IVec>>,
    ) -> KvResult<Result<(), CasConflict>> {
        let new: Option<IVec> = new.map(Into::into);
        Ok(match self {
            Tree::Sled(t) => t.compare_and_swap(key, old, new)?,
            Tree::Pg(t) => t
                .compare_and_swap(
                    key.as_ref(),
                    old.as_ref().map(|o| o.as_ref()),
                    new.as_deref(),
                )?
                .map_err(|current| CasConflict {
                    current: current.map(IVec::from),
                    proposed: new,
                }),
        })
    }

    /// Replace a key's value with `f(current)` atomically (retried on a concurrent change);
    /// returns the new value.
    pub fn update_and_fetch<V: Into<IVec>>(
        &self,
        key: impl AsRef<[u8]>,
        mut f: impl FnMut(Option<&[u8]>) -> Option<V>,
    ) -> KvResult<Option<IVec>> {
        match self {
            Tree::Sled(t) => Ok(t.update_and_fetch(key, f)?),
            Tree::Pg(_) => loop {
                let current = self.get(key.as_ref())?;
                let new: Option<IVec> = f(current.as_deref()).map(Into::into);
                if self
                    .compare_and_swap(key.as_ref(), current.as_deref(), new.clone())?
                    .is_ok()
                {
                    return Ok(new);
                }
            },
        }
    }

    /// Remove and return the smallest entry.
    pub fn pop_min(&self) -> KvResult<Option<(IVec, IVec)>> {
        Ok(match self {
            Tree::Sled(t) => t.pop_min()?,
            Tree::Pg(t) => t.pop_min()?.map(|(k, v)| (IVec::from(k), IVec::from(v))),
        })
    }

    pub fn first(&self) -> KvResult<Option<(IVec, IVec)>> {
        self.iter().next().transpose()
    }

    pub fn last(&self) -> KvResult<Option<(IVec, IVec)>> {
        self.iter().next_back().transpose()
    }

    /// Every entry in key order.
    pub fn iter(&self) -> Iter {
        self.range::<&[u8], _>(..)
    }

    /// Every key in order, without reading the values (PostgreSQL: only the key column).
    pub fn iter_keys(&self) -> impl DoubleEndedIterator<Item = KvResult<IVec>> {
        match self {
            Tree::Sled(t) => Iter::Sled(t.iter()),
            Tree::Pg(t) => Iter::Pg(t.iter_keys(Bound::Unbounded, Bound::Unbounded)),
        }
        .keys()
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.scan_prefix(prefix)),
            Tree::Pg(t) => {
                let p = prefix.as_ref();
                let hi = prefix_end(p).map_or(Bound::Unbounded, Bound::Excluded);
                Iter::Pg(t.iter(Bound::Included(p.to_vec()), hi))
            }
        }
    }

    /// The entries within `range`, in key order.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        match self {
            Tree::Sled(t) => {
                let lo = owned_bound(range.start_bound().map(|k| k.as_ref()));
                let hi = owned_bound(range.end_bound().map(|k| k.as_ref()));
                Iter::Sled(t.range::<Vec<u8>, _>((lo, hi)))
            }
            Tree::Pg(t) => Iter::Pg(t.iter(
                owned_bound(range.start_bound().map(|k| k.as_ref())),
                owned_bound(range.end_bound().map(|k| k.as_ref())),
            )),
        }
    }

    /// Number of entries (a count: costs a scan on both engines).
    /// How many entries the tree holds (PostgreSQL: a `count(*)`, which can fail).
    pub fn len(&self) -> KvResult<usize> {
        match self {
            Tree::Sled(t) => Ok(t.len()),
            Tree::Pg(t) => Ok(t.len()?),
        }
    }

    pub fn is_empty(&self) -> KvResult<bool> {
        match self {
            Tree::Sled(t) => Ok(t.is_empty()),
            Tree::Pg(t) => Ok(t.is_empty()?),
        }
    }

    /// Delete every entry.
    pub fn clear(&self) -> KvResult<()> {
        match self {
            Tree::Sled(t) => Ok(t.clear()?),
            Tree::Pg(t) => Ok(t.clear()?),
        }
    }

    /// Apply every write of `batch`, or none.
    pub fn apply_batch(&self, batch: Batch) -> KvResult<()> {
        match self {
            Tree::Sled(t) => {
                let mut b = sled::Batch::default();
                for (k, v) in batch.ops {
                    match v {
                        Some(v) => b.insert(k, v),
                        None => b.remove(k),
                    }
                }
                Ok(t.apply_batch(b)?)
            }
            Tree::Pg(t) => Ok(t.apply_batch(&batch.ops)?),
        }
    }

    /// Make this tree's writes durable (PostgreSQL: already are).
    pub fn flush(&self) -> KvResult<usize> {
        match self {
            Tree::Sled(t) => Ok(t.flush()?),
            Tree::Pg(_) => Ok(0),
        }
    }

    /// [`Tree::flush`] off the async thread.
    pub async fn flush_async(&self) -> KvResult<usize> {
        match self {
            Tree::Sled(t) => Ok(t.flush_async().await?),
            Tree::Pg(_) => Ok(0),
        }
    }

    /// The tree's name.
    pub fn name(&self) -> String {
        match self {
            Tree::Sled(t) => String::from_utf8_lossy(&t.name()).to_string(),
            Tree::Pg(t) => t.name().to_string(),
        }
    }
}

/// Entries in key order (both ends: `rev()` walks from the largest).
pub enum Iter {
    Sled(sled::Iter),
    Pg(pg::PgIter),
}

impl Iterator for Iter {
    type Item = KvResult<(IVec, IVec)>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled(i) => i.next().map(|r| r.map_err(KvError::from)),
            Iter::Pg(i) => i
                .next()
                .map(|r| r.map(|(k, v)| (IVec::from(k), IVec::from(v)))),
        }
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled(i) => i.next_back().map(|r| r.map_err(KvError::from)),
            Iter::Pg(i) => i
                .next_back()
                .map(|r| r.map(|(k, v)| (IVec::from(k), IVec::from(v)))),
        }
    }
}

impl Iter {
    pub fn keys(self) -> impl DoubleEndedIterator<Item = KvResult<IVec>> {
        self.map(|r| r.map(|(k, _)| k))
    }

    pub fn values(self) -> impl DoubleEndedIterator<Item = KvResult<IVec>> {
        self.map(|r| r.map(|(_, v)| v))
    }
}
