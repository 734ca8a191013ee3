//! The practices the server bills for (`practices` tree: key = practice id, value = the
//! [`Practice`] as JSON). A practice spans facilities, so it lives beside the documents, not in a
//! facility's document; the read model fills each facility's `DataFile::practices` from here.
//!
//! Architecture invariant: a practitioner belongs to at most one practice across the registry;
//! a write that would put one in a second practice is refused and changes nothing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rounds_core::{Practice, Practitioner, Problem, Problems};

/// Why a practice was not saved.
#[derive(Debug, thiserror::Error)]
pub enum PracticeError {
    #[error("{0}")]
    Invalid(Problems),
    #[error(
        "practice {practice}: field `practitioners`: practitioner {practitioner:?} is already in practice {other:?}"
    )]
    Conflict {
        practice: String,
        practitioner: String,
        other: String,
    },
    #[error("store {op}: {source}")]
    Store {
        op: &'static str,
        #[source]
        source: crate::sync::store::kv::KvError,
    },
}

/// Practices from JSON: one practice object or a list of them, each checked on its own (a problem
/// names the entry and the field).
pub fn parse_practices(text: &str) -> Result<Vec<Practice>, PracticeError> {
    let one =
        |msg: String| PracticeError::Invalid(Problems(vec![Problem::new("practice", "", msg)]));
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| one(format!("not valid JSON: {e}")))?;
    let items = match v {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(_) => vec![v],
        _ => return Err(one("expected a practice object or a list of them".into())),
    };
    let mut problems = Vec::new();
    let practices: Vec<Practice> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            rounds_core::datafile::parse_entry(
                item,
                || rounds_core::datafile::entry_name(item, "practices", "practice", i),
                &mut problems,
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(practices)
    } else {
        Err(PracticeError::Invalid(Problems(problems)))
    }
}

pub struct PracticeRegistry {
    tree: crate::sync::store::kv::Tree,
    /// Bumped by every write: what the read model checks its facilities against.
    generation: AtomicU64,
    /// Writes are checked against the whole registry one at a time.
    writing: Mutex<()>,
}

impl PracticeRegistry {
    pub fn open(
        db: &crate::sync::store::kv::Db,
    ) -> Result<PracticeRegistry, crate::sync::store::kv::KvError> {
        Ok(PracticeRegistry {
            tree: db.open_tree("practices")?,
            generation: AtomicU64::new(0),
            writing: Mutex::new(()),
        })
    }

    /// Every practice, by id.
    pub fn all(&self) -> Vec<Practice> {
        self.tree
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Practice> {
        serde_json::from_slice(&self.tree.get(id.as_bytes()).ok()??).ok()
    }

    /// The practices with at least one of these practitioners, by id.
    pub fn of_practitioners(&self, practitioners: &[Practitioner]) -> Vec<Practice> {
        self.all()
            .into_iter()
            .filter(|p| {
                p.practitioners
                    .iter()
                    .any(|x| practitioners.iter().any(|y| y.id == *x))
            })
            .collect()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Save practices (new or replacing those with the same id), all or none: each is checked
    /// on its own and against every other practice's practitioners.
    pub fn put(&self, practices: &[Practice]) -> Result<(), PracticeError> {
        let problems: Vec<Problem> = practices
            .iter()
            .flat_map(rounds_core::validate::check_practice)
            .collect();
        if !problems.is_empty() {
            return Err(PracticeError::Invalid(Problems(problems)));
        }
        let _w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut after: Vec<Practice> = self
            .all()
            .into_iter()
            .filter(|p| !practices.iter().any(|q| q.id == p.id))
            .collect();
        after.extend(practices.iter().cloned());
        let mut member: std::collections::BTreeMap<&str, &str> = Default::default();
        for p in &after {
            for x in &p.practitioners {
                if let Some(other) = member.insert(x.as_str(), p.id.as_str())
                    && other != p.id
                {
                    let (practice, other) = if practices.iter().any(|q| q.id == p.id) {
                        (p.id.clone(), other.to_string())
                    } else {
                        (other.to_string(), p.id.clone())
                    };
                    return Err(PracticeError::Conflict {
                        practice,
                        practitioner: x.clone(),
                        other,
                    });
                }
            }
        }
        let mut batch = crate::sync::store::kv::Batch::default();
        for p in practices {
            let bytes = serde_json::to_vec(p).unwrap_or_default();
            batch.insert(p.id.as_bytes(), bytes);
        }
        self.tree
            .apply_batch(batch)
            .map_err(|source| PracticeError::Store {
                op: "write practices",
                source,
            })?;
        self.tree.flush().map_err(|source| PracticeError::Store {
            op: "flush practices",
            source,
        })?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
