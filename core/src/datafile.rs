//! Reading a `rounds-data/1` file: each entry is parsed on its own, so one bad entry yields one
//! problem naming it and its field, and every other problem in the file is still reported.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{DataFile, Facility};
use crate::problem::{Problem, Problems};
use crate::validate::validate;

/// Parse and validate a data file. On any problem nothing is returned but the problems.
pub fn parse_data_file(text: &str) -> Result<DataFile, Problems> {
    let root: Value = serde_json::from_str(text).map_err(|e| {
        Problems(vec![Problem::new(
            "file",
            "",
            format!("not valid JSON: {e}"),
        )])
    })?;
    let data = from_value(&root)?;
    let problems = validate(&data);
    if problems.is_empty() {
        Ok(data)
    } else {
        Err(Problems(problems))
    }
}

/// Build a data file from parsed JSON, one entry at a time (no semantic validation).
pub fn from_value(root: &Value) -> Result<DataFile, Problems> {
    let mut problems = Vec::new();
    let Some(obj) = root.as_object() else {
        return Err(Problems(vec![Problem::new(
            "file",
            "",
            "expected a JSON object",
        )]));
    };
    let format = match obj.get("format") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            problems.push(Problem::new(
                "file",
                "format",
                "missing; expected \"rounds-data/1\"",
            ));
            String::new()
        }
    };
    let facility: Option<Facility> = match obj.get("facility") {
        Some(v) => parse_entry(v, || "facility".to_string(), &mut problems),
        None => {
            problems.push(Problem::new("file", "facility", "missing"));
            None
        }
    };
    let practices = parse_list(obj.get("practices"), "practices", "practice", &mut problems);
    let practitioners = parse_list(
        obj.get("practitioners"),
        "practitioners",
        "practitioner",
        &mut problems,
    );
    let staff = parse_list(obj.get("staff"), "staff", "staff", &mut problems);
    let patients = parse_list(obj.get("patients"), "patients", "patient", &mut problems);
    let interactions = parse_list(
        obj.get("interactions"),
        "interactions",
        "interaction",
        &mut problems,
    );
    let readings = parse_list(obj.get("readings"), "readings", "reading", &mut problems);
    let timers = parse_list(obj.get("timers"), "timers", "timer", &mut problems);
    let corrections = parse_list(
        obj.get("corrections"),
        "corrections",
        "correction",
        &mut problems,
    );
    match facility {
        Some(facility) if problems.is_empty() => Ok(DataFile {
            format,
            facility,
            practices,
            practitioners,
            staff,
            patients,
            interactions,
            readings,
            timers,
            corrections,
        }),
        _ => Err(Problems(problems)),
    }
}

/// How an entry is named in a problem: `<kind> <id>` when it has a string id, else `<list>[i]`.
pub fn entry_name(v: &Value, list: &str, kind: &str, index: usize) -> String {
    match v.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => format!("{kind} {id}"),
        _ => format!("{list}[{index}]"),
    }
}

/// Parse one entry; on failure record the problem with the failing field's path.
pub fn parse_entry<T: DeserializeOwned>(
    v: &Value,
    name: impl FnOnce() -> String,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            let msg = e.into_inner().to_string();
            problems.push(Problem::new(name(), field, friendly(&msg)));
            None
        }
    }
}

fn friendly(msg: &str) -> String {
    match msg {
        "input contains invalid characters" | "premature end of input" | "trailing input" => {
            format!(
                "{msg} (expected an RFC 3339 timestamp such as 2026-11-03T14:00:00-05:00 or a date such as 2026-11-03)"
            )
        }
        _ => msg.to_string(),
    }
}

fn parse_list<T: DeserializeOwned>(
    v: Option<&Value>,
    list: &str,
    kind: &str,
    problems: &mut Vec<Problem>,
) -> Vec<T> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| parse_entry(item, || entry_name(item, list, kind, i), problems))
            .collect(),
        Some(_) => {
            problems.push(Problem::new("file", list, "expected a list"));
            Vec::new()
        }
    }
}
