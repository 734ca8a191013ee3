//! How one FHIR server takes a package: a transaction or a batch, at most so many entries per
//! bundle, only the resource types it accepts. [`bundles_for`] turns the package's one
//! transaction bundle ([`super::fhir::bundle`]) into the bundles to send, in order.
//!
//! Every entry stays a conditional create on its business identifier, so each bundle is
//! idempotent on its own and a push that stopped half-way resumes without duplicates. A reference
//! to an entry in an earlier bundle (or, in a batch, to any other entry) becomes a conditional
//! reference on that entry's business identifier (`Encounter?identifier=system|value`), which
//! the server resolves to the resource an earlier bundle created. Entries are sent in dependency
//! order: what is referenced (Condition, Encounter, the note) before what references it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Transaction (all or nothing per bundle) or batch (each entry on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleMode {
    Transaction,
    Batch,
}

/// The resource types a package holds, in dependency order.
pub const RESOURCE_TYPES: [&str; 7] = [
    "Condition",
    "Consent",
    "Encounter",
    "DocumentReference",
    "ChargeItem",
    "Observation",
    "CarePlan",
];

/// A FHIR target's delivery profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub mode: BundleMode,
    /// Entries per bundle (None: the whole package in one bundle).
    pub max_entries: Option<usize>,
    /// The resource types the server accepts (a subset of [`RESOURCE_TYPES`]).
    pub resources: Vec<String>,
}

/// The named presets (`profile = "…"` in `push.toml`).
pub const PRESETS: [(&str, &str); 4] = [
    (
        "transaction",
        "one transaction bundle per patient-month with every resource (the default)",
    ),
    (
        "strict-transaction",
        "transactions of at most 8 entries (servers that isolate conditional transactions strictly, such as Medplum), every resource",
    ),
    (
        "batch",
        "batch bundles of at most 50 entries in dependency order, every resource (servers without transactions)",
    ),
    (
        "no-charges",
        "one transaction per patient-month without ChargeItem: the charges go by HL7 DFT^P03 or the charge CSV",
    ),
];

impl Delivery {
    /// A named preset.
    pub fn preset(name: &str) -> Option<Delivery> {
        let all: Vec<String> = RESOURCE_TYPES.iter().map(|s| s.to_string()).collect();
        Some(match name {
            "transaction" => Delivery {
                mode: BundleMode::Transaction,
                max_entries: None,
                resources: all,
            },
            "strict-transaction" => Delivery {
                mode: BundleMode::Transaction,
                max_entries: Some(8),
                resources: all,
            },
            "batch" => Delivery {
                mode: BundleMode::Batch,
                max_entries: Some(50),
                resources: all,
            },
            "no-charges" => Delivery {
                mode: BundleMode::Transaction,
                max_entries: None,
                resources: all.into_iter().filter(|r| r != "ChargeItem").collect(),
            },
            _ => return None,
        })
    }

    pub fn accepts(&self, resource_type: &str) -> bool {
        self.resources.iter().any(|r| r == resource_type)
    }
}

impl Default for Delivery {
    fn default() -> Delivery {
        Delivery::preset("transaction").unwrap_or(Delivery {
            mode: BundleMode::Transaction,
            max_entries: None,
            resources: Vec::new(),
        })
    }
}

/// One entry of the package, as the splitter sees it.
struct Node {
    entry: Value,
    urn: String,
    /// `Type?identifier=system|value`: how another bundle refers to it.
    conditional: String,
    /// The package's entries it refers to (by urn).
    refers_to: BTreeSet<String>,
}

fn internal_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("reference", Value::String(s)) if s.starts_with("urn:uuid:") => {
                        out.insert(s.clone());
                    }
                    _ => internal_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| internal_refs(x, out)),
        _ => {}
    }
}

/// Remove every `{ "reference": urn }` naming a dropped entry: the element from its array, or
/// the field holding it.
fn strip_refs(v: &mut Value, dropped: &BTreeSet<String>) {
    let names = |x: &Value| {
        x.get("reference")
            .and_then(Value::as_str)
            .is_some_and(|s| dropped.contains(s))
    };
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !names(x));
            for x in m.values_mut() {
                strip_refs(x, dropped);
            }
            // A list emptied by the above goes too (FHIR has no empty arrays).
            m.retain(|_, x| !matches!(x, Value::Array(a) if a.is_empty()));
        }
        Value::Array(a) => {
            a.retain(|x| !names(x));
            for x in a.iter_mut() {
                strip_refs(x, dropped);
            }
        }
        _ => {}
    }
}

/// Point references to entries outside this bundle at their business identifiers.
fn rewrite_refs(v: &mut Value, outside: &BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "reference"
                    && let Some(c) = x.as_str().and_then(|s| outside.get(s))
                {
                    *x = Value::String(c.clone());
                } else {
                    rewrite_refs(x, outside);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, outside)),
        _ => {}
    }
}

/// The bundles to send for one package under a delivery profile, in the order to send them.
/// Empty when the server takes none of the package's resources.
pub fn bundles_for(package: &Value, d: &Delivery) -> Vec<Value> {
    let entries = package["entry"].as_array().cloned().unwrap_or_default();
    let mut dropped = BTreeSet::new();
    let mut nodes: Vec<Node> = Vec::new();
    for entry in entries {
        let urn = entry["fullUrl"].as_str().unwrap_or_default().to_string();
        let rtype = entry["resource"]["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !d.accepts(&rtype) {
            dropped.insert(urn);
            continue;
        }
        let ident = &entry["resource"]["identifier"][0];
        let conditional = format!(
            "{rtype}?identifier={}|{}",
            ident["system"].as_str().unwrap_or_default(),
            ident["value"].as_str().unwrap_or_default()
        );
        nodes.push(Node {
            entry,
            urn,
            conditional,
            refers_to: BTreeSet::new(),
        });
    }
    for n in &mut nodes {
        if !dropped.is_empty() {
            strip_refs(&mut n.entry["resource"], &dropped);
        }
        internal_refs(&n.entry["resource"], &mut n.refers_to);
    }
    if nodes.is_empty() {
        return Vec::new();
    }
    // Groups of entries, each group's references pointing only into itself or earlier groups.
    let groups: Vec<Vec<usize>> = match d.mode {
        BundleMode::Transaction => (0..nodes.len())
            .collect::<Vec<_>>()
            .chunks(d.max_entries.unwrap_or(usize::MAX).max(1))
            .map(<[usize]>::to_vec)
            .collect(),
        BundleMode::Batch => {
            // In a batch nothing may refer to another entry of the same bundle: one level of
            // the dependency order per bundle (chunked), every internal reference conditional.
            let index: BTreeMap<&str, usize> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.urn.as_str(), i))
                .collect();
            let mut level = vec![0usize; nodes.len()];
            for i in 0..nodes.len() {
                level[i] = nodes[i]
                    .refers_to
                    .iter()
                    .filter_map(|u| index.get(u.as_str()))
                    .filter(|j| **j < i)
                    .map(|j| level[*j] + 1)
                    .max()
                    .unwrap_or(0);
            }
            let top = level.iter().copied().max().unwrap_or(0);
            let mut out = Vec::new();
            for l in 0..=top {
                let at: Vec<usize> = (0..nodes.len()).filter(|i| level[*i] == l).collect();
                for chunk in at.chunks(d.max_entries.unwrap_or(usize::MAX).max(1)) {
                    out.push(chunk.to_vec());
                }
            }
            out
        }
    };
    let kind = match d.mode {
        BundleMode::Transaction => "transaction",
        BundleMode::Batch => "batch",
    };
    groups
        .into_iter()
        .map(|group| {
            let inside: BTreeSet<&str> = group.iter().map(|i| nodes[*i].urn.as_str()).collect();
            let outside: BTreeMap<String, String> = nodes
                .iter()
                .filter(|n| d.mode == BundleMode::Batch || !inside.contains(n.urn.as_str()))
                .map(|n| (n.urn.clone(), n.conditional.clone()))
                .collect();
            let entries: Vec<Value> = group
                .iter()
                .map(|i| {
                    let mut e = nodes[*i].entry.clone();
                    rewrite_refs(&mut e["resource"], &outside);
                    e
                })
                .collect();
            json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32, rtype: &str, refs: &[u32]) -> Value {
        let mut r = json!({ "resourceType": rtype, "identifier": [{ "system": "s", "value": format!("v{n}") }] });
        if !refs.is_empty() {
            r["ref"] = json!(
                refs.iter()
                    .map(|x| json!({ "reference": format!("urn:uuid:{x}") }))
                    .collect::<Vec<_>>()
            );
        }
        json!({ "fullUrl": format!("urn:uuid:{n}"), "resource": r,
                "request": { "method": "POST", "url": rtype, "ifNoneExist": format!("identifier=s|v{n}") } })
    }

    fn package() -> Value {
        json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
            entry(1, "Condition", &[]),
            entry(2, "Encounter", &[1]),
            entry(3, "DocumentReference", &[2]),
            entry(4, "ChargeItem", &[2, 3]),
            entry(5, "Observation", &[]),
            entry(6, "CarePlan", &[1]),
        ] })
    }

    fn refs(b: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for e in b["entry"].as_array().unwrap() {
            for r in e["resource"]["ref"].as_array().into_iter().flatten() {
                out.push(r["reference"].as_str().unwrap().to_string());
            }
        }
        out
    }

    #[test]
    fn the_default_is_the_package_itself() {
        let out = bundles_for(&package(), &Delivery::default());
        assert_eq!(out, vec![package()]);
    }

    #[test]
    fn a_small_limit_splits_in_order_and_refers_back_by_business_identifier() {
        let d = Delivery {
            max_entries: Some(2),
            ..Default::default()
        };
        let out = bundles_for(&package(), &d);
        assert_eq!(out.len(), 3);
        // Encounter (2) refers to Condition (1) in its own bundle: unchanged.
        assert_eq!(refs(&out[0]), vec!["urn:uuid:1"]);
        // DocumentReference and ChargeItem refer to the Encounter of an earlier bundle.
        assert_eq!(
            refs(&out[1]),
            vec![
                "Encounter?identifier=s|v2",
                "Encounter?identifier=s|v2",
                "urn:uuid:3"
            ]
        );
        assert_eq!(refs(&out[2]), vec!["Condition?identifier=s|v1"]);
        assert!(
            out.iter()
                .all(|b| b["entry"].as_array().unwrap().len() <= 2)
        );
    }

    #[test]
    fn a_batch_sends_each_level_after_what_it_refers_to_and_never_within_a_bundle() {
        let d = Delivery::preset("batch").unwrap();
        let out = bundles_for(&package(), &d);
        let types: Vec<Vec<String>> = out
            .iter()
            .map(|b| {
                b["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(
            types,
            vec![
                vec!["Condition", "Observation"],
                vec!["Encounter", "CarePlan"],
                vec!["DocumentReference"],
                vec!["ChargeItem"]
            ]
        );
        assert!(out.iter().all(|b| b["type"] == "batch"));
        assert!(
            out.iter()
                .all(|b| refs(b).iter().all(|r| !r.starts_with("urn:")))
        );
    }

    #[test]
    fn a_type_the_server_does_not_take_is_left_out_with_references_to_it() {
        let mut d = Delivery::default();
        d.resources.retain(|r| r != "DocumentReference");
        let out = bundles_for(&package(), &d);
        assert_eq!(out.len(), 1);
        let entries = out[0]["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 5);
        let charge = entries
            .iter()
            .find(|e| e["resource"]["resourceType"] == "ChargeItem")
            .unwrap();
        assert_eq!(
            charge["resource"]["ref"],
            json!([{ "reference": "urn:uuid:2" }])
        );
        let no_charges = Delivery::preset("no-charges").unwrap();
        let out = bundles_for(&package(), &no_charges);
        assert!(
            out[0]["entry"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["resource"]["resourceType"] != "ChargeItem")
        );
        d.resources.clear();
        assert!(bundles_for(&package(), &d).is_empty());
    }
}
