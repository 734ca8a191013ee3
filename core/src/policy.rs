//! The write policy: what a device may write into which document. One piece of code, used by
//! the server's gate on every change a device sends and by the [`Replica`](crate::Replica)
//! before it makes a change durable, so a correct app never sees a refusal.
//!
//! A device (a tablet of the facility) may:
//!
//! | document      | path                                  | operation                          |
//! |---------------|---------------------------------------|------------------------------------|
//! | patient-month | `facility`, `patient`, `month` (root) | set, only to the document's own ids |
//! | patient-month | `interactions`, `readings`, `timers`, `timer_stops`, `corrections`, `alert_events` | add a new entry under a fresh UUID key, schema-valid, naming the document's patient |
//! | patient-month | `alerts`                              | add an alert under its derived id (`alert_id(reading, rule)`) |
//! | patient       | `care_plan_text`                      | edit the text                       |
//! | patient       | `consents`                            | add a consent; set its `revoked_on` once |
//! | patient       | `bedside_reports`                     | add a reported stay or death under a fresh UUID key, schema-valid, naming the document's patient (never an `adt` event: the server writes those from the facility's feed) |
//! | any           | the genesis and the type's migration  | the exact deterministic changes (`document::genesis`, `document::migration`) |
//! | facility      | `months`                              | add `<patient>/<YYYY-MM>` → that month's document URL, for a rostered patient |
//!
//! Everything else — the facility (time zone, place of service), practitioners, staff and
//! whether their time counts, the roster, the alert protocol, a patient's profile (conditions,
//! billing practitioner, enrolment, RPM devices, stays, date of death) — is written only by the
//! server's actor on behalf of an admin (admin API, console, import). Existing entries are never
//! edited or deleted by a device: a correction is a new entry. A change made with the genesis
//! actor must be the genesis change itself; a change made with the server's actor never comes
//! from a device.
//!
//! The check reads the change's operations (expanded by the gate with bounded work), rebuilds
//! every new entry's body from them and parses it as its model type; the document is only read
//! (at the heads the change applies to) for whether a key exists and for the roster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use automerge::{ActorId, Automerge, ChangeHash, ExpandedChange, ObjType, ReadDoc, ScalarValue};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::document::{self as d, DocKind, GENESIS_ACTOR};
use crate::ids::DocumentId;
use crate::model::{
    BedsideEvent, BedsideReport, Consent, Correction, Interaction, Reading, RunningTimer,
};
use crate::month::Month;

/// The rule a refused change broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Made with the genesis or the server's actor, which no device may use.
    ReservedActor,
    /// A path only the server writes (roster, staff, zone, protocol, patient facts).
    ServerOnly,
    /// An existing entry edited or deleted, or a key written twice.
    WriteOnce,
    /// An entry key that is not a canonical UUID (or a derived id that does not derive).
    EntryKey,
    /// An entry whose body does not parse as its kind or fails its checks.
    EntrySchema,
    /// Root fields that do not name the document's own facility, patient and month.
    DocumentIdentity,
    /// An operation no Rounds writer makes (increment, marks, deletes outside text).
    Operation,
    /// Depends on a change that was refused.
    DependsOnRefused,
    /// Over a size, count or operation cap.
    TooLarge,
    /// Bytes that do not decode.
    Malformed,
}

impl Rule {
    /// The rule a change the gate refused breaks.
    pub fn of_gate(e: &crate::sync::gate::GateError) -> Rule {
        use crate::sync::gate::GateError;
        match e {
            GateError::TooLarge { .. } => Rule::TooLarge,
            GateError::Malformed { .. } | GateError::DocumentChunk { .. } => Rule::Malformed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ReservedActor => "reserved-actor",
            Rule::ServerOnly => "server-only",
            Rule::WriteOnce => "write-once",
            Rule::EntryKey => "entry-key",
            Rule::EntrySchema => "entry-schema",
            Rule::DocumentIdentity => "document-identity",
            Rule::Operation => "operation",
            Rule::DependsOnRefused => "depends-on-refused",
            Rule::TooLarge => "too-large",
            Rule::Malformed => "malformed",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a change was refused: the rule, the path it touched, and a detail naming ids only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}: {path}: {detail}")]
pub struct Refusal {
    pub rule: Rule,
    pub path: String,
    pub detail: String,
}

impl Refusal {
    pub fn new(rule: Rule, path: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal {
            rule,
            path: path.into(),
            detail: detail.into(),
        }
    }
}

/// What a document is, from its derived id: the facility it belongs to, its type, and for
/// patient and patient-month documents the patient (and month).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocScope {
    pub facility: String,
    pub kind: DocKind,
    pub patient: Option<String>,
    pub month: Option<Month>,
}

impl DocScope {
    pub fn facility(facility: &str) -> DocScope {
        DocScope {
            facility: facility.to_string(),
            kind: DocKind::Facility,
            patient: None,
            month: None,
        }
    }

    pub fn patient(facility: &str, patient: &str) -> DocScope {
        DocScope {
            facility: facility.to_string(),
            kind: DocKind::Patient,
            patient: Some(patient.to_string()),
            month: None,
        }
    }

    pub fn patient_month(facility: &str, patient: &str, month: Month) -> DocScope {
        DocScope {
            facility: facility.to_string(),
            kind: DocKind::PatientMonth,
            patient: Some(patient.to_string()),
            month: Some(month),
        }
    }

    /// The document id this scope derives.
    pub fn document_id(&self) -> DocumentId {
        match (self.kind, &self.patient, self.month) {
            (DocKind::PatientMonth, Some(p), Some(m)) => {
                DocumentId::patient_month(&self.facility, p, m)
            }
            (DocKind::Patient, Some(p), _) => DocumentId::patient(&self.facility, p),
            _ => DocumentId::facility(&self.facility),
        }
    }
}

/// The server's own actor for a store: derived from its storage id, fixed for its lifetime.
pub fn server_actor(storage_id: &str) -> Vec<u8> {
    let digest = Sha256::digest(format!("rounds-server-actor/{storage_id}").as_bytes());
    digest[..16].to_vec()
}

/// The actor of one of several servers sharing a store (`instance`: its process's number): the
/// first 8 bytes of [`server_actor`] and the instance, so two servers never write changes with
/// the same actor and sequence number, and [`server_actor_prefix`] reserves them all.
pub fn server_instance_actor(storage_id: &str, instance: u64) -> Vec<u8> {
    let mut a = server_actor_prefix(storage_id);
    a.extend_from_slice(&instance.to_be_bytes());
    a
}

/// What every server actor of a store starts with (reserved: no device may use such an actor).
pub fn server_actor_prefix(storage_id: &str) -> Vec<u8> {
    server_actor(storage_id)[..8].to_vec()
}

/// Objects created by earlier accepted changes of the same batch (a message, or a device's
/// changes checked in order), so a later change may write into them, and keys they added.
#[derive(Debug, Default)]
pub struct Pending {
    /// Object id (`counter@actor`) → where it is.
    objects: HashMap<String, Place>,
    /// (container, key) added.
    keys: HashSet<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// A new entry (or a part of one) in a top-level container.
    Entry { container: String, key: String },
    /// An existing consent (only `revoked_on` may be set, once).
    Consent { key: String },
}

/// What the genesis change of a document type is: its hash and its top-level containers by
/// object id (`counter@actor`). Computed once per type, not per change checked.
struct Genesis {
    hash: Option<ChangeHash>,
    /// The type's migration change (`document::migration`), when it has one.
    migration: Option<ChangeHash>,
    containers: HashMap<String, &'static str>,
}

fn genesis_of(kind: DocKind) -> &'static Genesis {
    static CACHE: std::sync::OnceLock<[Genesis; 3]> = std::sync::OnceLock::new();
    let all = CACHE.get_or_init(|| {
        [DocKind::Facility, DocKind::Patient, DocKind::PatientMonth].map(|kind| {
            let mut containers = HashMap::new();
            let doc = d::genesis(kind).ok();
            let hash = doc.as_ref().and_then(|d| d.get_heads().first().copied());
            let migration = d::migration(kind);
            if let Some(mut doc) = doc {
                if let Some(m) = migration {
                    let _ = doc.apply_changes([m.clone()]);
                }
                for (name, _) in kind.containers().iter().chain(kind.added_containers()) {
                    if let Some(id) = d::container(&doc, name) {
                        containers.insert(id.to_string(), *name);
                    }
                }
            }
            Genesis {
                hash,
                migration: migration.map(|m| m.hash()),
                containers,
            }
        })
    });
    match kind {
        DocKind::Facility => &all[0],
        DocKind::Patient => &all[1],
        DocKind::PatientMonth => &all[2],
    }
}

fn op_id(counter: u64, actor: &ActorId) -> String {
    format!("{counter}@{}", actor.to_hex_string())
}

/// Whether `k` is a canonical (lower-case, hyphenated) UUID.
pub fn is_uuid_key(k: &str) -> bool {
    Uuid::parse_str(k).is_ok_and(|u| u.to_string() == k)
}

/// A body under construction, from the operations of one change.
#[derive(Debug)]
enum Node {
    Map(BTreeMap<String, Slot>),
    List(Vec<(String, Slot)>),
}

#[derive(Debug, Clone)]
enum Slot {
    Scalar(Value),
    Obj(String),
}

/// Check one change a device made (or sent) against the policy. `doc` is read at `at` (the heads
/// the change applies to); `reserved` are the actors (or actor prefixes) no device may use
/// besides genesis.
pub fn check_device_change(
    doc: &Automerge,
    at: &[ChangeHash],
    scope: &DocScope,
    change: &ExpandedChange,
    reserved: &[ActorId],
    pending: &mut Pending,
) -> Result<(), Refusal> {
    let actor = &change.actor_id;
    if actor.to_bytes() == GENESIS_ACTOR {
        // Only the genesis change itself, of this document's type, or its migration.
        let g = genesis_of(scope.kind);
        return if change.hash.is_some() && (change.hash == g.hash || change.hash == g.migration) {
            Ok(())
        } else {
            Err(Refusal::new(
                Rule::ReservedActor,
                "/",
                "a change made with the genesis actor that is not this document's genesis",
            ))
        };
    }
    // Reserved actors are prefixes: a store's servers share one (see `server_instance_actor`).
    if reserved
        .iter()
        .any(|r| actor.to_bytes().starts_with(r.to_bytes()))
    {
        return Err(Refusal::new(
            Rule::ReservedActor,
            "/",
            "a change made with the server's actor",
        ));
    }
    let containers = &genesis_of(scope.kind).containers;
    let mut nodes: HashMap<String, Node> = HashMap::new();
    // New entries: object id → (container, key).
    let mut entries: Vec<(String, String, String)> = Vec::new();
    let mut root_puts: BTreeMap<String, String> = BTreeMap::new();
    for (i, op) in change.operations.iter().enumerate() {
        let id = op_id(change.start_op.get() + i as u64, actor);
        let target = match &op.obj {
            automerge::legacy::ObjectId::Root => None,
            automerge::legacy::ObjectId::Id(o) => Some(op_id(o.0, &o.1)),
        };
        let key_str = match &op.key {
            automerge::legacy::Key::Map(k) => Some(k.to_string()),
            automerge::legacy::Key::Seq(_) => None,
        };
        let Some(target) = target else {
            // The document root.
            let path = format!("/{}", key_str.as_deref().unwrap_or("?"));
            if scope.kind != DocKind::PatientMonth {
                return Err(Refusal::new(
                    Rule::ServerOnly,
                    path,
                    "root fields are the server's",
                ));
            }
            let (Some(k), automerge::legacy::OpType::Put(ScalarValue::Str(v))) =
                (&key_str, &op.action)
            else {
                return Err(Refusal::new(
                    Rule::DocumentIdentity,
                    path,
                    "only facility, patient and month may be set, as strings",
                ));
            };
            let want = match k.as_str() {
                "facility" => Some(scope.facility.clone()),
                "patient" => scope.patient.clone(),
                "month" => scope.month.map(|m| m.to_string()),
                _ => None,
            };
            if want.as_deref() != Some(v.as_str()) {
                return Err(Refusal::new(
                    Rule::DocumentIdentity,
                    path,
                    "does not name this document's facility, patient and month",
                ));
            }
            root_puts.insert(k.clone(), v.to_string());
            continue;
        };
        if let Some(container) = containers.get(&target).copied() {
            container_op(
                doc,
                at,
                scope,
                container,
                op,
                &key_str,
                &id,
                pending,
                &mut nodes,
                &mut entries,
            )?;
            continue;
        }
        if nodes.contains_key(&target) {
            body_op(&target, op, &key_str, &id, &mut nodes)?;
            continue;
        }
        match pending.objects.get(&target).cloned() {
            Some(Place::Entry { container, key }) => {
                return Err(Refusal::new(
                    Rule::WriteOnce,
                    format!("/{container}/{key}"),
                    "an entry is written in one change and never edited",
                ));
            }
            Some(Place::Consent { key }) => {
                revoke_op(doc, at, &key, op, &key_str)?;
                continue;
            }
            None => {}
        }
        // An existing object of the document.
        let place = existing_place(doc, &target);
        match (scope.kind, place) {
            (DocKind::Patient, Some((c, Some(key)))) if c == d::CONSENTS => {
                revoke_op(doc, at, &key, op, &key_str)?;
                pending.objects.insert(target, Place::Consent { key });
            }
            (DocKind::Patient, Some((c, key))) if c == d::BEDSIDE_REPORTS => {
                return Err(Refusal::new(
                    Rule::WriteOnce,
                    format!("/{c}/{}", key.unwrap_or_default()),
                    "a bedside report is never edited or deleted; report again",
                ));
            }
            (DocKind::PatientMonth, Some((c, key))) => {
                return Err(Refusal::new(
                    Rule::WriteOnce,
                    format!("/{c}/{}", key.unwrap_or_default()),
                    "existing entries are never edited or deleted; log a correction",
                ));
            }
            (_, Some((c, key))) => {
                return Err(Refusal::new(
                    Rule::ServerOnly,
                    format!("/{c}/{}", key.unwrap_or_default()),
                    "written only by the server on behalf of an admin",
                ));
            }
            (_, None) => {
                return Err(Refusal::new(
                    Rule::Operation,
                    "/?",
                    format!("an operation on an object that is not in the document ({target})"),
                ));
            }
        }
    }
    if !root_puts.is_empty() && root_puts.len() != 3 {
        return Err(Refusal::new(
            Rule::DocumentIdentity,
            "/",
            "facility, patient and month are set together",
        ));
    }
    for (obj, container, key) in entries {
        let body = to_json(&obj, &nodes, 0).ok_or_else(|| {
            Refusal::new(
                Rule::EntrySchema,
                format!("/{container}/{key}"),
                "the entry's body is not a plain JSON object",
            )
        })?;
        check_entry(doc, at, scope, &container, &key, &body)?;
        pending.keys.insert((container.clone(), key.clone()));
        pending.objects.insert(obj, Place::Entry { container, key });
    }
    // Nested objects of new entries are part of them: never written again.
    for (obj, _) in nodes {
        pending.objects.entry(obj).or_insert(Place::Entry {
            container: "?".into(),
            key: "?".into(),
        });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn container_op(
    doc: &Automerge,
    at: &[ChangeHash],
    scope: &DocScope,
    container: &'static str,
    op: &automerge::legacy::Op,
    key: &Option<String>,
    id: &str,
    pending: &Pending,
    nodes: &mut HashMap<String, Node>,
    entries: &mut Vec<(String, String, String)>,
) -> Result<(), Refusal> {
    use automerge::legacy::OpType;
    let path = format!("/{container}/{}", key.as_deref().unwrap_or("[…]"));
    match (scope.kind, container) {
        (DocKind::Patient, d::CARE_PLAN_TEXT) => match &op.action {
            OpType::Put(ScalarValue::Str(_)) | OpType::Delete => Ok(()),
            _ => Err(Refusal::new(
                Rule::Operation,
                path,
                "the care-plan text takes text edits only",
            )),
        },
        (DocKind::Facility, d::MONTHS) => {
            let (Some(k), OpType::Put(ScalarValue::Str(url))) = (key, &op.action) else {
                return Err(Refusal::new(
                    Rule::WriteOnce,
                    path,
                    "the months index takes new URLs only",
                ));
            };
            let parsed = k
                .split_once('/')
                .and_then(|(p, m)| Some((p, m.parse::<Month>().ok()?)));
            let Some((patient, month)) = parsed else {
                return Err(Refusal::new(
                    Rule::EntryKey,
                    path,
                    "not <patient>/<YYYY-MM>",
                ));
            };
            let rostered = d::container(doc, d::PATIENTS)
                .is_some_and(|m| matches!(doc.get_at(&m, patient, at), Ok(Some(_))));
            if !rostered {
                return Err(Refusal::new(
                    Rule::ServerOnly,
                    path,
                    "names a patient who is not on the roster",
                ));
            }
            if url.as_str() != DocumentId::patient_month(&scope.facility, patient, month).url() {
                return Err(Refusal::new(
                    Rule::DocumentIdentity,
                    path,
                    "is not that patient-month's document URL",
                ));
            }
            Ok(())
        }
        (DocKind::Patient, d::CONSENTS | d::BEDSIDE_REPORTS)
        | (
            DocKind::PatientMonth,
            d::INTERACTIONS
            | d::READINGS
            | d::TIMERS
            | d::TIMER_STOPS
            | d::CORRECTIONS
            | d::ALERTS
            | d::ALERT_EVENTS,
        ) => {
            let (Some(k), OpType::Make(ObjType::Map), false) = (key, &op.action, op.insert) else {
                return Err(Refusal::new(
                    Rule::WriteOnce,
                    path,
                    "entries are added whole under a new key, never edited or deleted",
                ));
            };
            let key_ok = if container == d::CONSENTS {
                crate::ids::check_id("consent", k).is_ok()
            } else {
                is_uuid_key(k)
            };
            if !key_ok {
                return Err(Refusal::new(
                    Rule::EntryKey,
                    path,
                    "entry keys are canonical UUIDs",
                ));
            }
            let derived = matches!(container, d::ALERTS | d::ALERT_EVENTS);
            let exists = d::container(doc, container)
                .is_some_and(|m| matches!(doc.get_at(&m, k.as_str(), at), Ok(Some(_))));
            if (exists && !derived) || pending.keys.contains(&(container.to_string(), k.clone())) {
                return Err(Refusal::new(
                    Rule::WriteOnce,
                    path,
                    "an entry with this key exists; entries are written once",
                ));
            }
            if entries.iter().any(|(_, c, e)| c == container && e == k) {
                return Err(Refusal::new(Rule::WriteOnce, path, "key written twice"));
            }
            nodes.insert(id.to_string(), Node::Map(BTreeMap::new()));
            entries.push((id.to_string(), container.to_string(), k.clone()));
            Ok(())
        }
        (DocKind::PatientMonth, _) => Err(Refusal::new(
            Rule::WriteOnce,
            path,
            "not a container devices add to",
        )),
        _ => Err(Refusal::new(
            Rule::ServerOnly,
            path,
            "written only by the server on behalf of an admin",
        )),
    }
}

/// An operation inside an object created by this change (an entry's body).
fn body_op(
    target: &str,
    op: &automerge::legacy::Op,
    key: &Option<String>,
    id: &str,
    nodes: &mut HashMap<String, Node>,
) -> Result<(), Refusal> {
    use automerge::legacy::{ElementId, Key, OpType};
    let bad = |detail: &str| Refusal::new(Rule::Operation, "/entry", detail.to_string());
    let slot = match &op.action {
        OpType::Put(s) => Slot::Scalar(d::scalar_to_json(s)),
        OpType::Make(ObjType::Map) => {
            nodes.insert(id.to_string(), Node::Map(BTreeMap::new()));
            Slot::Obj(id.to_string())
        }
        OpType::Make(ObjType::List) => {
            nodes.insert(id.to_string(), Node::List(Vec::new()));
            Slot::Obj(id.to_string())
        }
        _ => {
            return Err(bad(
                "entries hold maps, lists and scalars only, written once",
            ));
        }
    };
    let Some(node) = nodes.get_mut(target) else {
        return Err(bad("unknown object"));
    };
    match (node, key, &op.key) {
        (Node::Map(m), Some(k), _) if !op.insert => {
            if m.insert(k.clone(), slot).is_some() {
                return Err(Refusal::new(
                    Rule::WriteOnce,
                    "/entry",
                    "field written twice",
                ));
            }
        }
        (Node::List(items), None, Key::Seq(after)) if op.insert => {
            let pos = match after {
                ElementId::Head => 0,
                ElementId::Id(o) => {
                    let after = op_id(o.0, &o.1);
                    items
                        .iter()
                        .position(|(e, _)| *e == after)
                        .map(|p| p + 1)
                        .ok_or_else(|| bad("list insert after an unknown element"))?
                }
            };
            items.insert(pos, (id.to_string(), slot));
        }
        _ => return Err(bad("an operation that does not build a new entry")),
    }
    Ok(())
}

fn to_json(obj: &str, nodes: &HashMap<String, Node>, depth: usize) -> Option<Value> {
    if depth > 16 {
        return None;
    }
    let slot = |s: &Slot| match s {
        Slot::Scalar(v) => Some(v.clone()),
        Slot::Obj(o) => to_json(o, nodes, depth + 1),
    };
    Some(match nodes.get(obj)? {
        Node::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Some((k.clone(), slot(v)?)))
                .collect::<Option<_>>()?,
        ),
        Node::List(items) => {
            Value::Array(items.iter().map(|(_, v)| slot(v)).collect::<Option<_>>()?)
        }
    })
}

/// Where an existing object of the document is: (top-level container, entry key).
fn existing_place(doc: &Automerge, obj: &str) -> Option<(String, Option<String>)> {
    let ex = doc.import_obj(obj).ok()?;
    let path = doc.parents(&ex).ok()?.path();
    let mut props = path.iter().map(|(_, p)| match p {
        automerge::Prop::Map(k) => k.clone(),
        automerge::Prop::Seq(i) => i.to_string(),
    });
    let container = props.next()?;
    Some((container, props.next()))
}

/// Setting `revoked_on` of an existing consent: once, to a date on or after `given_on`.
fn revoke_op(
    doc: &Automerge,
    at: &[ChangeHash],
    key: &str,
    op: &automerge::legacy::Op,
    field: &Option<String>,
) -> Result<(), Refusal> {
    let path = format!("/consents/{key}/{}", field.as_deref().unwrap_or("?"));
    let (Some("revoked_on"), automerge::legacy::OpType::Put(ScalarValue::Str(v))) =
        (field.as_deref(), &op.action)
    else {
        return Err(Refusal::new(
            Rule::WriteOnce,
            path,
            "a consent is never edited; only its revocation date is set, once",
        ));
    };
    let Ok(on) = v.parse::<chrono::NaiveDate>() else {
        return Err(Refusal::new(
            Rule::EntrySchema,
            path,
            "not a date (YYYY-MM-DD)",
        ));
    };
    let consent = d::container(doc, d::CONSENTS)
        .and_then(|m| match doc.get_at(&m, key, at) {
            Ok(Some((_, id))) => Some(id),
            _ => None,
        })
        .ok_or_else(|| Refusal::new(Rule::Operation, path.clone(), "unknown consent"))?;
    let current = |f: &str| match doc.get_at(&consent, f, at) {
        Ok(Some((automerge::Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    };
    if current("revoked_on").is_some() {
        return Err(Refusal::new(
            Rule::WriteOnce,
            path,
            "the consent is already revoked",
        ));
    }
    if let Some(given) = current("given_on").and_then(|g| g.parse::<chrono::NaiveDate>().ok())
        && on < given
    {
        return Err(Refusal::new(Rule::EntrySchema, path, "is before given_on"));
    }
    Ok(())
}

/// A new entry's body: parsed as its kind, checked, naming this document's patient.
fn check_entry(
    doc: &Automerge,
    at: &[ChangeHash],
    scope: &DocScope,
    container: &str,
    key: &str,
    body: &Value,
) -> Result<(), Refusal> {
    let path = format!("/{container}/{key}");
    let schema = |e: String| Refusal::new(Rule::EntrySchema, path.clone(), e);
    fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
        serde_path_to_error::deserialize(v.clone()).map_err(|e| {
            let field = e.path().to_string();
            format!("{field}: {}", e.into_inner())
        })
    }
    let person =
        |field: &str, id: &str| crate::ids::check_id(field, id).map_err(|e| schema(e.to_string()));
    let own_patient = |p: &str| {
        if Some(p) == scope.patient.as_deref() {
            Ok(())
        } else {
            Err(schema("patient: not this document's patient".into()))
        }
    };
    let own_id = |id: &Uuid| {
        if id.to_string() == key {
            Ok(())
        } else {
            Err(Refusal::new(
                Rule::EntryKey,
                path.clone(),
                "id does not match its key",
            ))
        }
    };
    let problems = |p: Vec<crate::problem::Problem>| {
        if p.is_empty() {
            Ok(())
        } else {
            Err(schema(
                p.iter()
                    .map(|p| format!("{}: {}", p.field, p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ))
        }
    };
    match container {
        d::INTERACTIONS => {
            let i: Interaction = parse(body).map_err(schema)?;
            own_id(&i.id)?;
            own_patient(&i.patient)?;
            person("staff", &i.staff)?;
            let mut p = Vec::new();
            crate::validate::check_interaction_times(&i, &format!("interaction {key}"), &mut p);
            problems(p)
        }
        d::BEDSIDE_REPORTS => {
            let r: BedsideReport = parse(body).map_err(schema)?;
            own_id(&r.id)?;
            own_patient(&r.patient)?;
            person("reported_by", &r.reported_by)?;
            match r.event {
                BedsideEvent::Adt { .. } => Err(Refusal::new(
                    Rule::ServerOnly,
                    path.clone(),
                    "ADT events come from the facility's feed through the server only",
                )),
                BedsideEvent::Stay { from, to, .. } if to < from => {
                    Err(schema("event.to: before event.from".into()))
                }
                BedsideEvent::Stay { from, .. } | BedsideEvent::Death { on: from }
                    if from > r.reported_at.date_naive() + chrono::Days::new(1) =>
                {
                    Err(schema("event: a date after it was reported".into()))
                }
                _ => Ok(()),
            }
        }
        d::READINGS => {
            let r: Reading = parse(body).map_err(schema)?;
            own_id(&r.id)?;
            own_patient(&r.patient)?;
            let mut p = Vec::new();
            crate::validate::check_reading(&r, &format!("reading {key}"), &mut p);
            problems(p)
        }
        d::TIMERS => {
            let t: RunningTimer = parse(body).map_err(schema)?;
            own_id(&t.id)?;
            own_patient(&t.patient)?;
            person("staff", &t.staff)
        }
        d::TIMER_STOPS => parse::<crate::view::TimerStop>(body)
            .map(|_| ())
            .map_err(schema),
        d::CORRECTIONS => {
            let c: Correction = parse(body).map_err(schema)?;
            own_id(&c.id)?;
            person("by", &c.by)
        }
        d::ALERTS => {
            let a: crate::alerts::Alert = parse(body).map_err(schema)?;
            own_id(&a.id)?;
            own_patient(&a.patient)?;
            if a.id != crate::alerts::alert_id(a.reading, &a.rule) {
                return Err(Refusal::new(
                    Rule::EntryKey,
                    path,
                    "an alert's id is derived from its reading and rule",
                ));
            }
            // Raised concurrently elsewhere: the same reading and rule, or refused.
            if let Some(existing) = existing_entry(doc, at, container, key) {
                let same = existing.get("reading") == body.get("reading")
                    && existing.get("rule") == body.get("rule");
                if !same {
                    return Err(Refusal::new(
                        Rule::WriteOnce,
                        path,
                        "a different alert exists",
                    ));
                }
            }
            Ok(())
        }
        d::ALERT_EVENTS => {
            let e: crate::alerts::AlertEvent = parse(body).map_err(schema)?;
            own_id(&e.id)?;
            person("by", &e.by)?;
            if existing_entry(doc, at, container, key).is_some()
                && !(e.action == crate::alerts::AlertAction::Escalated
                    && e.id == crate::alerts::escalation_id(e.alert))
            {
                return Err(Refusal::new(
                    Rule::WriteOnce,
                    path,
                    "an event with this key exists; only the derived escalation may be written twice",
                ));
            }
            Ok(())
        }
        d::CONSENTS => {
            let c: Consent = parse(body).map_err(schema)?;
            if let Some(by) = &c.by {
                person("by", by)?;
            }
            if c.revoked_on.is_some_and(|r| r < c.given_on) {
                return Err(schema("revoked_on: is before given_on".into()));
            }
            if let Some(d) = &c.document
                && (d.len() > 500 || d.chars().any(char::is_control))
            {
                return Err(schema(
                    "document: at most 500 characters, no control characters".into(),
                ));
            }
            Ok(())
        }
        _ => Err(Refusal::new(
            Rule::ServerOnly,
            path,
            "not a device's container",
        )),
    }
}

/// The `reading` and `rule` (or `action`) fields of an entry that existed at `at`.
fn existing_entry(
    doc: &Automerge,
    at: &[ChangeHash],
    container: &str,
    key: &str,
) -> Option<serde_json::Map<String, Value>> {
    let map = d::container(doc, container)?;
    let (_, id) = doc.get_at(&map, key, at).ok()??;
    let mut out = serde_json::Map::new();
    for f in ["reading", "rule", "action"] {
        if let Ok(Some((automerge::Value::Scalar(s), _))) = doc.get_at(&id, f, at) {
            out.insert(f.to_string(), d::scalar_to_json(s.as_ref()));
        }
    }
    Some(out)
}

/// Check a device's own new changes (the replica, before it makes them durable): the changes
/// of `doc` after `before`, in order.
pub fn check_local_changes(
    doc: &Automerge,
    before: &[ChangeHash],
    scope: &DocScope,
) -> Result<(), Refusal> {
    let mut pending = Pending::default();
    let mut at = before.to_vec();
    for change in doc.get_changes(before) {
        let expanded = crate::sync::gate::expand(&change).ok_or_else(|| {
            Refusal::new(
                Rule::Malformed,
                "/",
                "the change does not expand into operations",
            )
        })?;
        check_device_change(doc, &at, scope, &expanded, &[], &mut pending)?;
        at = vec![change.hash()];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_keys_are_canonical() {
        assert!(is_uuid_key("0193b2a4-5c6d-7e8f-9a0b-1c2d3e4f5a6b"));
        assert!(!is_uuid_key("0193B2A4-5C6D-7E8F-9A0B-1C2D3E4F5A6B"));
        assert!(!is_uuid_key("0193b2a45c6d7e8f9a0b1c2d3e4f5a6b"));
        assert!(!is_uuid_key("../x"));
    }

    #[test]
    fn rules_have_stable_names() {
        assert_eq!(Rule::ServerOnly.to_string(), "server-only");
        assert_eq!(
            serde_json::to_string(&Rule::DependsOnRefused).unwrap(),
            "\"depends-on-refused\""
        );
    }
}
