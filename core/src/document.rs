//! The Automerge document schema: facility, patient and patient-month documents.
//!
//! Every document type starts from a deterministic genesis change (fixed actor, time 0, the same
//! operations) that creates all of its top-level containers, so replicas that create the same
//! document offline share the containers and no entry hides another. Entries live in maps keyed
//! by their UUID and are written once. Values are written as plain Automerge maps, lists and
//! scalars (the JSON shape of the data file), so any automerge-repo client can read them.
//!
//! Reading never panics: an entry that does not parse is skipped and reported as a [`Problem`].

use automerge::transaction::Transactable;
use automerge::{
    ActorId, Automerge, AutomergeError, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue,
    transaction::CommitOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::datafile::parse_entry;
use crate::problem::Problem;

/// The schema version written into every document at genesis.
pub const SCHEMA_VERSION: i64 = 1;

/// The actor of every genesis change (and of the migration that follows it, see
/// [`migration`]); never used for anything else.
pub const GENESIS_ACTOR: &[u8] = b"rounds-genesis-v1";

/// The three document types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocKind {
    Facility,
    Patient,
    PatientMonth,
}

impl DocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Facility => "facility",
            DocKind::Patient => "patient",
            DocKind::PatientMonth => "patient-month",
        }
    }

    pub fn parse(s: &str) -> Option<DocKind> {
        match s {
            "facility" => Some(DocKind::Facility),
            "patient" => Some(DocKind::Patient),
            "patient-month" => Some(DocKind::PatientMonth),
            _ => None,
        }
    }

    /// Top-level containers added after the genesis by the type's [`migration`] change.
    pub fn added_containers(self) -> &'static [(&'static str, ObjType)] {
        match self {
            DocKind::Patient => &[(BEDSIDE_REPORTS, ObjType::Map)],
            DocKind::Facility | DocKind::PatientMonth => &[],
        }
    }

    /// The top-level containers created at genesis.
    pub fn containers(self) -> &'static [(&'static str, ObjType)] {
        match self {
            DocKind::Facility => &[
                (FACILITY, ObjType::Map),
                (PRACTITIONERS, ObjType::Map),
                (STAFF, ObjType::Map),
                (PATIENTS, ObjType::Map),
                (MONTHS, ObjType::Map),
            ],
            DocKind::Patient => &[
                (PROFILE, ObjType::Map),
                (CONSENTS, ObjType::Map),
                (CARE_PLAN_TEXT, ObjType::Text),
            ],
            DocKind::PatientMonth => &[
                (INTERACTIONS, ObjType::Map),
                (READINGS, ObjType::Map),
                (TIMERS, ObjType::Map),
                (TIMER_STOPS, ObjType::Map),
                (CORRECTIONS, ObjType::Map),
                (ALERTS, ObjType::Map),
                (ALERT_EVENTS, ObjType::Map),
            ],
        }
    }
}

// Top-level keys.
pub const FACILITY: &str = "facility";
pub const PRACTITIONERS: &str = "practitioners";
pub const STAFF: &str = "staff";
/// Facility document: patient id → patient document URL.
pub const PATIENTS: &str = "patients";
/// Facility document: `<patient>/<YYYY-MM>` → patient-month document URL.
pub const MONTHS: &str = "months";
pub const PROFILE: &str = "profile";
pub const CONSENTS: &str = "consents";
pub const CARE_PLAN_TEXT: &str = "care_plan_text";
/// Stays and deaths staff report from the bedside (`BedsideReport`), in patient documents; added
/// by the patient type's migration.
pub const BEDSIDE_REPORTS: &str = "bedside_reports";
pub const INTERACTIONS: &str = "interactions";
pub const READINGS: &str = "readings";
pub const TIMERS: &str = "timers";
pub const TIMER_STOPS: &str = "timer_stops";
pub const CORRECTIONS: &str = "corrections";
/// Patient-month: alert id (derived from reading + rule) → alert.
pub const ALERTS: &str = "alerts";
/// Patient-month: event id → acknowledgement / resolution / escalation of an alert.
pub const ALERT_EVENTS: &str = "alert_events";
/// Facility document: the alert protocol as a JSON string (replaced whole, last writer wins).
pub const ALERT_PROTOCOL: &str = "alert_protocol";

/// The deterministic first change of a document type: identical bytes on every replica.
pub fn genesis(kind: DocKind) -> Result<Automerge, AutomergeError> {
    let mut doc = Automerge::new();
    doc.set_actor(ActorId::from(GENESIS_ACTOR));
    doc.transact_with::<_, _, AutomergeError, _>(
        |_| CommitOptions::default().with_time(0),
        |tx| {
            tx.put(ROOT, "schema", SCHEMA_VERSION)?;
            tx.put(ROOT, "type", kind.as_str())?;
            for (name, ty) in kind.containers() {
                tx.put_object(ROOT, *name, *ty)?;
            }
            Ok(())
        },
    )
    .map_err(|f| f.error)?;
    Ok(doc)
}

/// The deterministic change that adds a type's [`DocKind::added_containers`] on top of its
/// genesis: the genesis actor's second change, at time 0, depending on the genesis only — so,
/// like the genesis, identical bytes wherever it is made, and two tablets that add it offline
/// add the same containers. None for a type with nothing added. (The schema number stays 1:
/// the addition only adds.)
pub fn migration(kind: DocKind) -> Option<&'static automerge::Change> {
    static CACHE: std::sync::OnceLock<[Option<automerge::Change>; 3]> = std::sync::OnceLock::new();
    let all = CACHE.get_or_init(|| {
        [DocKind::Facility, DocKind::Patient, DocKind::PatientMonth].map(|kind| {
            if kind.added_containers().is_empty() {
                return None;
            }
            let mut doc = genesis(kind).ok()?;
            doc.transact_with::<_, _, AutomergeError, _>(
                |_| CommitOptions::default().with_time(0),
                |tx| {
                    for (name, ty) in kind.added_containers() {
                        tx.put_object(ROOT, *name, *ty)?;
                    }
                    Ok(())
                },
            )
            .ok()?;
            let head = *doc.get_heads().first()?;
            doc.get_change_by_hash(&head)
        })
    });
    let i = match kind {
        DocKind::Facility => 0,
        DocKind::Patient => 1,
        DocKind::PatientMonth => 2,
    };
    all[i].as_ref()
}

/// Apply the type's [`migration`] to a document that has its genesis and lacks the migration.
/// Returns whether the document changed.
pub fn migrate(doc: &mut Automerge, kind: DocKind) -> Result<bool, AutomergeError> {
    let Some(change) = migration(kind) else {
        return Ok(false);
    };
    let hash = change.hash();
    let has = |doc: &Automerge, h: &automerge::ChangeHash| doc.get_change_by_hash(h).is_some();
    if has(doc, &hash) || !change.deps().iter().all(|d| has(doc, d)) {
        return Ok(false);
    }
    doc.apply_changes([change.clone()])?;
    Ok(true)
}

/// The object id of a top-level container, if present and of the right type.
pub fn container(doc: &impl ReadDoc, name: &str) -> Option<ObjId> {
    match doc.get(ROOT, name) {
        Ok(Some((automerge::Value::Object(_), id))) => Some(id),
        _ => None,
    }
}

/// A top-level string scalar.
pub fn root_str(doc: &impl ReadDoc, key: &str) -> Option<String> {
    match doc.get(ROOT, key) {
        Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// The document's type, from its genesis.
pub fn kind_of(doc: &impl ReadDoc) -> Option<DocKind> {
    root_str(doc, "type").and_then(|s| DocKind::parse(&s))
}

/// Write a JSON value under `obj[key]` as Automerge maps, lists and scalars.
pub fn put_json<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    key: impl Into<Prop>,
    v: &Value,
) -> Result<(), AutomergeError> {
    let key = key.into();
    match v {
        Value::Object(m) => {
            let child = tx.put_object(obj, key, ObjType::Map)?;
            for (k, v) in m {
                put_json(tx, &child, k.as_str(), v)?;
            }
        }
        Value::Array(items) => {
            let child = tx.put_object(obj, key, ObjType::List)?;
            for (i, v) in items.iter().enumerate() {
                insert_json(tx, &child, i, v)?;
            }
        }
        scalar => tx.put(obj, key, to_scalar(scalar))?,
    }
    Ok(())
}

fn insert_json<T: Transactable>(
    tx: &mut T,
    list: &ObjId,
    index: usize,
    v: &Value,
) -> Result<(), AutomergeError> {
    match v {
        Value::Object(m) => {
            let child = tx.insert_object(list, index, ObjType::Map)?;
            for (k, v) in m {
                put_json(tx, &child, k.as_str(), v)?;
            }
        }
        Value::Array(items) => {
            let child = tx.insert_object(list, index, ObjType::List)?;
            for (i, v) in items.iter().enumerate() {
                insert_json(tx, &child, i, v)?;
            }
        }
        scalar => tx.insert(list, index, to_scalar(scalar))?,
    }
    Ok(())
}

fn to_scalar(v: &Value) -> ScalarValue {
    match v {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ScalarValue::Int(i),
            (None, Some(u), _) => ScalarValue::Uint(u),
            (_, _, Some(f)) => ScalarValue::F64(f),
            _ => ScalarValue::Null,
        },
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        // Containers are handled by the callers.
        Value::Array(_) | Value::Object(_) => ScalarValue::Null,
    }
}

/// Serialize `value` and write it under `obj[key]`.
pub fn put_entry<T: Transactable, S: Serialize>(
    tx: &mut T,
    obj: &ObjId,
    key: &str,
    value: &S,
) -> Result<(), AutomergeError> {
    // Our entry types serialize to JSON objects infallibly (string keys, no custom serializers).
    let v = serde_json::to_value(value).map_err(|_| AutomergeError::Fail)?;
    put_json(tx, obj, key, &v)
}

/// An Automerge scalar as JSON (how every reader, and the write policy, sees it).
pub fn scalar_to_json(s: &ScalarValue) -> Value {
    match s {
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Int(i) => Value::from(*i),
        ScalarValue::Uint(u) => Value::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Timestamp(t) => Value::from(*t),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Null | ScalarValue::Bytes(_) | ScalarValue::Unknown { .. } => Value::Null,
    }
}

/// Read an Automerge value (scalar or object) as JSON.
pub fn value_to_json(
    doc: &impl ReadDoc,
    value: &automerge::Value<'_>,
    id: &ObjId,
) -> Result<Value, AutomergeError> {
    Ok(match value {
        automerge::Value::Scalar(s) => scalar_to_json(s.as_ref()),
        automerge::Value::Object(ObjType::Map | ObjType::Table) => {
            let mut m = Map::new();
            for key in doc.keys(id) {
                if let Some((v, child)) = doc.get(id, key.as_str())? {
                    m.insert(key, value_to_json(doc, &v, &child)?);
                }
            }
            Value::Object(m)
        }
        automerge::Value::Object(ObjType::List) => {
            let mut items = Vec::new();
            for i in 0..doc.length(id) {
                if let Some((v, child)) = doc.get(id, i)? {
                    items.push(value_to_json(doc, &v, &child)?);
                }
            }
            Value::Array(items)
        }
        automerge::Value::Object(ObjType::Text) => Value::String(doc.text(id)?),
    })
}

/// A container (map) read as JSON; `Null` when absent.
pub fn container_json(doc: &impl ReadDoc, name: &str) -> Value {
    match doc.get(ROOT, name) {
        Ok(Some((v, id))) => value_to_json(doc, &v, &id).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Every entry of a top-level map container, parsed; malformed entries are skipped and reported.
/// When the entry has an `id` field it must equal its key.
pub fn read_entries<T: DeserializeOwned>(
    doc: &impl ReadDoc,
    name: &str,
    kind: &str,
    problems: &mut Vec<Problem>,
) -> Vec<(String, T)> {
    let Some(map) = container(doc, name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for key in doc.keys(&map) {
        let entry = format!("{kind} {key}");
        let json = match doc.get(&map, key.as_str()) {
            Ok(Some((v, id))) => match value_to_json(doc, &v, &id) {
                Ok(j) => j,
                Err(e) => {
                    problems.push(Problem::new(entry, "", format!("unreadable: {e}")));
                    continue;
                }
            },
            _ => continue,
        };
        if let Some(id) = json.get("id").and_then(Value::as_str)
            && id != key
        {
            problems.push(Problem::new(
                entry,
                "id",
                format!("{id:?} does not match its key"),
            ));
            continue;
        }
        if let Some(t) = parse_entry::<T>(&json, || entry.clone(), problems) {
            out.push((key, t));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_is_identical_everywhere() {
        for kind in [DocKind::Facility, DocKind::Patient, DocKind::PatientMonth] {
            let a = genesis(kind).unwrap();
            let b = genesis(kind).unwrap();
            assert_eq!(a.get_heads(), b.get_heads());
            assert_eq!(a.save(), b.save());
            assert_eq!(kind_of(&a), Some(kind));
        }
    }

    #[test]
    fn json_round_trips_through_automerge() {
        let v = serde_json::json!({"a": 1, "b": [1.5, "x", null, true], "c": {"d": "e"}});
        let mut doc = genesis(DocKind::PatientMonth).unwrap();
        doc.set_actor(ActorId::random());
        doc.transact::<_, _, AutomergeError>(|tx| {
            let map = container(tx, INTERACTIONS).unwrap();
            put_json(tx, &map, "k", &v)
        })
        .unwrap();
        let back = container_json(&doc, INTERACTIONS);
        assert_eq!(back["k"], v);
    }

    #[test]
    fn malformed_entries_are_skipped_and_reported() {
        let mut doc = genesis(DocKind::PatientMonth).unwrap();
        doc.set_actor(ActorId::random());
        doc.transact::<_, _, AutomergeError>(|tx| {
            let map = container(tx, READINGS).unwrap();
            put_json(
                tx,
                &map,
                "bad",
                &serde_json::json!({"id": "bad", "kind": 7}),
            )?;
            tx.put(&map, "scalar", 5)
        })
        .unwrap();
        let mut problems = Vec::new();
        let got: Vec<(String, crate::model::Reading)> =
            read_entries(&doc, READINGS, "reading", &mut problems);
        assert!(got.is_empty());
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
