//! Import/export of the `rounds-data/1` file and its validation errors.

use rounds_core::{Replica, parse_data_file};
use rounds_tests::{repo_root, sunnyvale};

#[test]
fn import_then_export_of_the_example_is_lossless() {
    let original = sunnyvale().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(dir.path()).unwrap();
    r.import(&original, chrono::Utc::now()).unwrap();
    let (exported, problems) = r.export().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let mut want = original.clone();
    want.canonicalize();
    assert_eq!(exported.facility, want.facility);
    assert_eq!(exported.patients, want.patients);
    assert_eq!(exported.interactions, want.interactions);
    assert_eq!(exported.readings, want.readings);
    assert_eq!(exported, want);
    // Through JSON text and a second replica, still the same.
    let text = serde_json::to_string_pretty(&exported).unwrap();
    let again = parse_data_file(&text).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let mut r2 = Replica::open(dir2.path()).unwrap();
    r2.import(&again, chrono::Utc::now()).unwrap();
    assert_eq!(r2.export().unwrap().0, want);
    // Importing the same file twice changes nothing.
    let heads: Vec<_> = r.document_ids().iter().map(|d| r.heads(*d)).collect();
    r.import(&original, chrono::Utc::now()).unwrap();
    let heads2: Vec<_> = r.document_ids().iter().map(|d| r.heads(*d)).collect();
    assert_eq!(heads, heads2);
}

/// Break the example in one place; expect exactly one problem naming `entry` and `field`.
fn expect_problem(edit: impl FnOnce(&mut serde_json::Value), entry: &str, field: &str) {
    let text = std::fs::read_to_string(repo_root().join("examples/sunnyvale.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    let problems = parse_data_file(&v.to_string())
        .expect_err("must be rejected")
        .0;
    assert!(
        problems
            .iter()
            .any(|p| p.entry.contains(entry) && p.field == field),
        "wanted {entry} / {field}, got {problems:#?}"
    );
    assert_eq!(problems.len(), 1, "{problems:#?}");
    // And a replica imports nothing from it.
    if let Ok(data) = rounds_core::datafile::from_value(&v) {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Replica::open(dir.path()).unwrap();
        assert!(r.import(&data, chrono::Utc::now()).is_err());
        assert!(r.document_ids().is_empty());
        assert!(r.facility_id().is_none());
    }
}

#[test]
fn each_validation_error_names_entry_and_field() {
    let first_interaction =
        |v: &serde_json::Value| v["interactions"][0]["id"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(repo_root().join("examples/sunnyvale.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let iid = first_interaction(&v);
    let rid = v["readings"][0]["id"].as_str().unwrap().to_string();

    // End before start.
    expect_problem(
        |v| {
            let start = v["interactions"][0]["started_at"].clone();
            v["interactions"][0]["started_at"] = v["interactions"][0]["ended_at"].clone();
            v["interactions"][0]["ended_at"] = start;
        },
        &iid,
        "ended_at",
    );
    // Unknown references.
    expect_problem(
        |v| v["interactions"][0]["patient"] = "p-404".into(),
        &iid,
        "patient",
    );
    expect_problem(
        |v| v["interactions"][0]["staff"] = "ghost".into(),
        &iid,
        "staff",
    );
    expect_problem(
        |v| v["patients"][0]["billing_practitioner"] = "dr-nobody".into(),
        "patient p-001",
        "billing_practitioner",
    );
    // Malformed ICD-10.
    expect_problem(
        |v| v["patients"][1]["conditions"][0]["icd10"] = "E11-9".into(),
        "patient p-002",
        "conditions[0].icd10",
    );
    // Bad IANA zone.
    expect_problem(
        |v| v["facility"]["timezone"] = "America/Nowhere".into(),
        "facility",
        "timezone",
    );
    // Impossible readings.
    expect_problem(
        |v| v["readings"][0]["systolic"] = 400.into(),
        &rid,
        "systolic",
    );
    expect_problem(
        |v| {
            v["readings"][0]["kind"] = "spo2".into();
            v["readings"][0]["value"] = 140.into();
            v["readings"][0]["unit"] = "%".into();
            v["readings"][0].as_object_mut().unwrap().remove("systolic");
            v["readings"][0]
                .as_object_mut()
                .unwrap()
                .remove("diastolic");
        },
        &rid,
        "value",
    );
    // A bad date and a bad timestamp.
    expect_problem(
        |v| v["patients"][2]["died_on"] = "2026-02-30".into(),
        "patient p-003",
        "died_on",
    );
    expect_problem(
        |v| v["interactions"][0]["started_at"] = "yesterday".into(),
        &iid,
        "started_at",
    );
}

#[test]
fn several_problems_are_all_reported() {
    let text = std::fs::read_to_string(repo_root().join("examples/sunnyvale.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["facility"]["timezone"] = "Mars/Olympus".into();
    v["readings"][0]["systolic"] = 400.into();
    v["patients"][0]["conditions"][0]["icd10"] = "nope".into();
    let problems = parse_data_file(&v.to_string()).unwrap_err().0;
    assert_eq!(problems.len(), 3, "{problems:#?}");
}
