//! `rounds bill` on `examples/breadth.json` (APCM, G0570, BHI, RTM and the conflicts between
//! them): the lines, units and dates of service of billing rules 19–67; and broken breadth files
//! refused with the entry and field on stderr and nothing on stdout.

use rounds_tests::{repo_root, rounds_cli, rounds_cli_output};
use serde_json::Value;

fn example() -> String {
    repo_root()
        .join("examples/breadth.json")
        .to_string_lossy()
        .to_string()
}

fn november() -> Value {
    let out = rounds_cli(&["bill", "--month", "2026-11", "--data", &example()]);
    serde_json::from_str(&out).expect("rounds bill prints JSON")
}

/// (code, units, date of service) of one patient's encounter.
fn lines(run: &Value, patient: &str) -> Vec<(String, u64, String)> {
    let e = encounter(run, patient);
    e["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["code"].as_str().expect("code").to_string(),
                l["units"].as_u64().expect("units"),
                l["date_of_service"].as_str().expect("dos").to_string(),
            )
        })
        .collect()
}

fn encounter<'a>(run: &'a Value, patient: &str) -> &'a Value {
    run["encounters"]
        .as_array()
        .expect("encounters")
        .iter()
        .find(|e| e["patient"] == patient)
        .unwrap_or_else(|| panic!("no encounter for {patient}"))
}

fn l(code: &str, units: u64, dos: &str) -> (String, u64, String) {
    (code.to_string(), units, dos.to_string())
}

/// Whether an exception of `program` contains all `words`.
fn said(run: &Value, patient: &str, program: &str, words: &[&str]) -> bool {
    encounter(run, patient)["exceptions"]
        .as_array()
        .expect("exceptions")
        .iter()
        .any(|x| {
            let reason = x["reason"].as_str().unwrap_or_default();
            x["program"] == program && words.iter().all(|w| reason.contains(w))
        })
}

#[test]
fn rounds_bill_gives_the_apcm_bhi_and_rtm_lines_of_rules_19_to_67() {
    let run = november();
    // APCM level 3 (two chronic conditions, QMB on the DOS) with the BHI add-on.
    assert_eq!(
        lines(&run, "b-001"),
        vec![l("G0558", 1, "2026-11-30"), l("G0570", 1, "2026-11-30")]
    );
    let g0570 = &encounter(&run, "b-001")["lines"][1];
    assert_eq!(g0570["diagnoses"], serde_json::json!(["F33.1"]));
    assert_eq!(g0570["place_of_service"], "32");
    assert_eq!(g0570["rendering_npi"], "1234567893");
    assert_eq!(encounter(&run, "b-001")["minutes"]["apcm"], 12);
    assert_eq!(encounter(&run, "b-001")["minutes"]["bhi"], 8);
    // APCM level 2; the month's CCM time (25 minutes) is dropped for APCM.
    assert_eq!(lines(&run, "b-002"), vec![l("G0557", 1, "2026-11-30")]);
    assert_eq!(encounter(&run, "b-002")["minutes"]["ccm"], 25);
    assert!(said(&run, "b-002", "ccm", &["APCM", "CCM"]));
    // APCM level 1: one chronic condition, two minutes of activity.
    assert_eq!(lines(&run, "b-009"), vec![l("G0556", 1, "2026-11-30")]);
    // General BHI alongside CCM.
    assert_eq!(
        lines(&run, "b-003"),
        vec![l("99484", 1, "2026-11-30"), l("99490", 1, "2026-11-30")]
    );
    // RTM respiratory: set-up on its date, the device code on the period's last day (Nov 18),
    // management at the month's end with one 20-minute add-on (45 minutes).
    assert_eq!(
        lines(&run, "b-004"),
        vec![
            l("98975", 1, "2026-10-20"),
            l("98976", 1, "2026-11-18"),
            l("98980", 1, "2026-11-30"),
            l("98981", 1, "2026-11-30"),
        ]
    );
    assert_eq!(encounter(&run, "b-004")["minutes"]["rtm"], 45);
    assert_eq!(
        encounter(&run, "b-004")["rtm_periods"][0],
        serde_json::json!({"start": "2026-10-20", "end": "2026-11-18", "days": 17})
    );
    // RTM musculoskeletal: 8 days of patient-reported scores, 12 minutes.
    assert_eq!(
        lines(&run, "b-005"),
        vec![
            l("98975", 1, "2026-11-01"),
            l("98979", 1, "2026-11-30"),
            l("98985", 1, "2026-11-30"),
        ]
    );
    // APCM blocked by the same practitioner's TCM.
    assert!(lines(&run, "b-006").is_empty());
    assert!(said(&run, "b-006", "apcm", &["APCM", "TCM", "99496"]));
    // RPM and RTM: neither until chosen; chosen RTM stands.
    assert!(lines(&run, "b-007").is_empty());
    assert!(said(&run, "b-007", "rpm", &["RPM", "RTM"]));
    assert!(said(&run, "b-007", "rtm", &["RPM", "RTM"]));
    assert_eq!(
        lines(&run, "b-008"),
        vec![l("98975", 1, "2026-11-01"), l("98977", 1, "2026-11-30")]
    );
    assert!(said(&run, "b-008", "rpm", &["chosen"]));
}

#[test]
fn rounds_bill_csv_lists_the_new_codes() {
    let out = rounds_cli(&[
        "bill",
        "--month",
        "2026-11",
        "--format",
        "csv",
        "--data",
        &example(),
    ]);
    for code in [
        "G0558", "G0570", "G0556", "99484", "98976", "98981", "98985",
    ] {
        assert!(out.contains(code), "{code} missing from the CSV:\n{out}");
    }
}

/// Write a broken copy of the example, bill it, and check the refusal.
#[track_caller]
fn refused(break_it: impl FnOnce(&mut Value), entry: &str, field: &str) {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(example()).expect("read")).expect("json");
    break_it(&mut v);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.json");
    std::fs::write(&path, serde_json::to_string(&v).expect("text")).expect("write");
    let out = rounds_cli_output(&[
        "bill",
        "--month",
        "2026-11",
        "--data",
        &path.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "printed on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(entry) && l.contains(field)),
        "stderr does not name {entry:?} and {field:?}:\n{stderr}"
    );
}

fn patient<'a>(v: &'a mut Value, id: &str) -> &'a mut Value {
    v["patients"]
        .as_array_mut()
        .expect("patients")
        .iter_mut()
        .find(|p| p["id"] == id)
        .expect("patient")
}

#[test]
fn broken_breadth_files_are_refused_naming_entry_and_field() {
    // An unknown program in a consent.
    refused(
        |v| patient(v, "b-001")["consents"][0]["program"] = "cocm".into(),
        "patient b-001",
        "program",
    );
    // An RTM reading of a physiologic kind.
    refused(
        |v| {
            let r = v["readings"]
                .as_array_mut()
                .expect("readings")
                .iter_mut()
                .find(|r| r["program"] == "rtm")
                .expect("rtm reading");
            r["kind"] = "weight".into();
            r["unit"] = "kg".into();
        },
        "reading",
        "kind",
    );
    // A QMB period that does not parse.
    refused(
        |v| patient(v, "b-001")["qmb_periods"][0]["from"] = "June 2026".into(),
        "patient b-001",
        "qmb_periods",
    );
    // An RTM kind we do not know.
    refused(
        |v| patient(v, "b-004")["rtm"]["kind"] = "cardiac".into(),
        "patient b-004",
        "rtm.kind",
    );
    // An external service by an unknown practitioner.
    refused(
        |v| patient(v, "b-006")["external_services"][0]["practitioner"] = "dr-who".into(),
        "patient b-006",
        "external_services[0].practitioner",
    );
    // An unknown program chosen for a month.
    refused(
        |v| patient(v, "b-008")["program_choice"]["2026-11"] = "tcm".into(),
        "patient b-008",
        "program_choice",
    );
    // A patient-reported RPM reading.
    refused(
        |v| {
            let r = v["readings"]
                .as_array_mut()
                .expect("readings")
                .iter_mut()
                .find(|r| r["kind"] == "blood_pressure")
                .expect("rpm reading");
            r["source"] = "patient_reported".into();
        },
        "reading",
        "source",
    );
    // An attestation date that is not a date.
    refused(
        |v| v["practitioners"][0]["apcm_attested_on"] = "yes".into(),
        "practitioner dr-smith",
        "apcm_attested_on",
    );
}

/// The files of `dir` (recursively) whose name ends with `suffix`, sorted.
fn files(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn month_close_hl7_fhir_and_csv_carry_the_same_lines_as_rounds_bill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let s = store.to_string_lossy().to_string();
    rounds_cli(&["import", "--store", &s, &example()]);
    // Version 1 of every stored encounter equals `rounds bill` on the file: the new fields survive
    // the documents and the read model.
    let closed: Vec<Value> = serde_json::from_str(&rounds_cli(&[
        "close-month",
        "--facility",
        "maplewood",
        "--month",
        "2026-11",
        "--store",
        &s,
    ]))
    .expect("close-month prints JSON");
    let run = november();
    let billed = run["encounters"].as_array().expect("encounters");
    assert_eq!(closed.len(), billed.len());
    for v in &closed {
        let patient = v["encounter"]["patient"].as_str().expect("patient");
        assert_eq!(
            v["encounter"]["lines"],
            encounter(&run, patient)["lines"],
            "{patient}"
        );
        assert_eq!(
            v["encounter"]["exceptions"],
            encounter(&run, patient)["exceptions"],
            "{patient}"
        );
    }
    // Every billed (code, units) pair, from `rounds bill`.
    let mut want: Vec<(String, String, u64)> = billed
        .iter()
        .flat_map(|e| {
            e["lines"].as_array().expect("lines").iter().map(move |l| {
                (
                    e["patient"].as_str().expect("patient").to_string(),
                    l["code"].as_str().expect("code").to_string(),
                    l["units"].as_u64().expect("units"),
                )
            })
        })
        .collect();
    want.sort();
    assert!(want.iter().any(|w| w.1 == "G0570") && want.iter().any(|w| w.1 == "98981"));

    let export = |format: &str| {
        let out = dir.path().join(format);
        rounds_cli(&[
            "export",
            "--facility",
            "maplewood",
            "--month",
            "2026-11",
            "--format",
            format,
            "--store",
            &s,
            "--out",
            &out.to_string_lossy(),
        ]);
        out
    };
    // FHIR: one ChargeItem per line.
    let mut fhir = Vec::new();
    for f in files(&export("fhir"), ".json") {
        let b: Value =
            serde_json::from_str(&std::fs::read_to_string(&f).expect("read")).expect("bundle");
        for e in b["entry"].as_array().expect("entries") {
            let r = &e["resource"];
            if r["resourceType"] == "ChargeItem" {
                let patient = f
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .split("-2026")
                    .next()
                    .expect("patient")
                    .to_string();
                fhir.push((
                    patient,
                    r["code"]["coding"][0]["code"]
                        .as_str()
                        .expect("code")
                        .to_string(),
                    r["quantity"]["value"].as_u64().expect("quantity"),
                ));
            }
        }
    }
    fhir.sort();
    assert_eq!(fhir, want, "FHIR ChargeItems");
    // A device-only RTM month's Encounter is typed by its device code, not the set-up.
    let b008 = files(&dir.path().join("fhir"), ".json")
        .into_iter()
        .find(|f| f.to_string_lossy().contains("b-008"))
        .expect("b-008 bundle");
    let b: Value =
        serde_json::from_str(&std::fs::read_to_string(b008).expect("read")).expect("json");
    let types: Vec<&str> = b["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Encounter")
        .filter_map(|e| e["resource"]["type"][0]["coding"][0]["code"].as_str())
        .collect();
    assert_eq!(types, vec!["98977"], "Encounter type of b-008");
    // HL7: one FT1 per line in the DFT^P03 messages (code in FT1-7, units in FT1-10).
    let mut hl7 = Vec::new();
    for f in files(&export("hl7"), "DFT_P03.hl7") {
        let text = std::fs::read_to_string(&f).expect("read");
        let patient = f
            .file_name()
            .expect("name")
            .to_string_lossy()
            .split("-2026")
            .next()
            .expect("patient")
            .to_string();
        for seg in text.split('\r').filter(|s| s.starts_with("FT1|")) {
            let fields: Vec<&str> = seg.split('|').collect();
            let code = fields[7].split('^').next().expect("code").to_string();
            let units: u64 = fields[10].parse().expect("units");
            hl7.push((patient.clone(), code, units));
        }
    }
    hl7.sort();
    assert_eq!(hl7, want, "HL7 FT1 segments");
    // CSV summary: every code with its units.
    let csv = files(&export("csv"), ".csv")
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read"))
        .collect::<String>();
    for (patient, code, units) in &want {
        assert!(
            csv.lines()
                .any(|l| l.contains(patient.as_str()) && l.contains(&format!("{code}x{units}"))),
            "{patient} {code}x{units} missing from the CSV summary"
        );
    }
}
