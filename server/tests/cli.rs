//! The `rounds` command line: bill, worklist, rules, check.

use std::path::PathBuf;
use std::process::{Command, Output};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/sunnyvale.json")
}

fn rounds(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rounds"))
        .args(args)
        .output()
        .expect("run rounds")
}

#[test]
fn bill_prints_the_months_encounters_as_json() {
    let out = rounds(&[
        "bill",
        "--data",
        example().to_str().unwrap(),
        "--month",
        "2026-11",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["month"], "2026-11");
    assert_eq!(v["rule_set"], "medicare-ffs-2026");
    let encounters = v["encounters"].as_array().unwrap();
    assert_eq!(encounters.len(), 20);
    let p1 = &encounters[0];
    assert_eq!(p1["patient"], "p-001");
    assert_eq!(p1["lines"][0]["code"], "99490");
    assert_eq!(p1["lines"][0]["date_of_service"], "2026-11-30");
    assert_eq!(p1["lines"][0]["place_of_service"], "32");
    for e in encounters {
        let lines = e["lines"].as_array().unwrap();
        if lines.is_empty() {
            assert!(!e["exceptions"].as_array().unwrap().is_empty(), "{e}");
        }
        let codes: Vec<&str> = lines.iter().map(|l| l["code"].as_str().unwrap()).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        assert_eq!(codes, sorted);
    }
}

#[test]
fn bill_csv_is_the_monthly_summary_with_totals() {
    let out = rounds(&[
        "bill",
        "--data",
        example().to_str().unwrap(),
        "--month",
        "2026-11",
        "--format",
        "csv",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("month,facility,billing_provider,billing_npi,patient_id,patient_name")
    );
    assert!(text.contains("99490x1"));
    assert!(text.lines().any(|l| l.contains("TOTAL facility")));
    assert!(
        text.lines()
            .any(|l| l.contains("TOTAL provider Alan Smith, MD"))
    );
}

#[test]
fn invalid_input_prints_one_line_per_problem_and_nothing_on_stdout() {
    let text = std::fs::read_to_string(example()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["facility"]["timezone"] = "Nowhere/Land".into();
    v["interactions"][0]["staff"] = "ghost".into();
    v["readings"][0]["systolic"] = 400.into();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    let out = rounds(&[
        "bill",
        "--data",
        bad.to_str().unwrap(),
        "--month",
        "2026-11",
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("facility: field `timezone`")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("field `staff`") && l.contains("ghost")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.contains("field `systolic`")),
        "{err}"
    );
    // And no patient name leaks into the errors.
    assert!(!err.contains("Jane Doe"));
}

#[test]
fn bad_arguments_are_clear() {
    let out = rounds(&[
        "bill",
        "--data",
        example().to_str().unwrap(),
        "--month",
        "11/2026",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM"));
    let out = rounds(&["bill", "--data", "/nonexistent.json", "--month", "2026-11"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.json"));
}

#[test]
fn rules_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "name = \"strict\"\nccm_standard_threshold = 30\n").unwrap();
    let out = rounds(&[
        "bill",
        "--data",
        example().to_str().unwrap(),
        "--month",
        "2026-11",
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rule_set"], "strict");
    // p-001 has 23 CCM minutes: billable by default, not with a 30-minute threshold.
    assert!(v["encounters"][0]["lines"].as_array().unwrap().is_empty());
    std::fs::write(&rules, "ccm_treshold = 30\n").unwrap();
    let out = rounds(&[
        "bill",
        "--data",
        example().to_str().unwrap(),
        "--month",
        "2026-11",
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ccm_treshold"));
    let printed = rounds(&["rules"]);
    assert!(String::from_utf8_lossy(&printed.stdout).contains("ccm_standard_threshold = 20"));
}

#[test]
fn worklist_shows_minutes_to_the_next_code() {
    let out = rounds(&[
        "worklist",
        "--data",
        example().to_str().unwrap(),
        "--as-of",
        "2026-11-20",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let items: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!items.is_empty());
    for i in &items {
        if let (Some(m), Some(n)) = (i["minutes"].as_u64(), i["minutes_to_next"].as_u64()) {
            assert!(m + n >= 10, "{i}");
        }
    }
    let table = rounds(&[
        "worklist",
        "--data",
        example().to_str().unwrap(),
        "--as-of",
        "2026-11-20",
    ]);
    assert!(String::from_utf8_lossy(&table.stdout).starts_with("patient"));
}
