//! Practices as tenants in the data file and the engine: the `practices` section checked entry by
//! entry, an old file as one practice, and a patient moving from one practice to another on the
//! 15th (billing rule P1: a new consent, one payer per month and per RPM period, held until the
//! new practice confirms, and 99453 once per episode).

use rounds_core::billing::{Encounter, ExceptionKind, ExceptionProgram, RuleSet, bill};
use rounds_core::datafile::parse_data_file;
use rounds_core::*;
use serde_json::{Value, json};

fn interaction(id: &str, patient: &str, start: &str, end: &str, program: &str) -> Value {
    json!({ "id": id, "patient": patient, "staff": "rn-1", "program": program,
            "started_at": start, "ended_at": end, "interactive": true })
}

/// Facility `oak`: practice `north` (dr-a) and practice `south` (dr-b). `p-north` and `p-south`
/// stay with their practice; `p-move` goes from dr-a to dr-b on 2026-11-15, with a BP cuff
/// uploading every day from 2026-10-01 and CCM time on both sides of the move.
fn two_practices() -> Value {
    let ccm = |given: &str| json!({ "program": "ccm", "given_on": given, "method": "verbal", "by": "rn-1" });
    let patient = |id: &str, dr: &str| {
        json!({
            "id": id, "name": format!("Patient {id}"), "mrn": format!("MRN-{id}"),
            "billing_practitioner": dr,
            "conditions": [ { "icd10": "I10", "chronic": true }, { "icd10": "E11.9", "chronic": true } ],
            "consents": [ ccm("2026-01-05") ],
            "initiating_visit_on": "2026-01-05",
            "care_plan": { "established_on": "2026-01-06" }
        })
    };
    let mut moving = patient("p-move", "dr-a");
    moving["practitioners_of_record"] = json!([
        { "practitioner": "dr-a", "from": "2026-01-01", "to": "2026-11-14" },
        { "practitioner": "dr-b", "from": "2026-11-15" }
    ]);
    moving["rpm"] = json!({ "device_setup_on": "2026-10-01", "devices": ["cuff-1"] });
    moving["consents"]
        .as_array_mut()
        .expect("consents")
        .push(json!({ "program": "rpm", "given_on": "2026-09-30" }));
    let mut readings = Vec::new();
    let mut day = chrono::NaiveDate::from_ymd_opt(2026, 10, 1).expect("date");
    let mut n = 0u32;
    while day <= chrono::NaiveDate::from_ymd_opt(2026, 12, 31).expect("date") {
        n += 1;
        readings.push(json!({
            "id": format!("01930c1f-0000-7000-8000-{n:012}"), "patient": "p-move",
            "kind": "blood_pressure", "systolic": 130, "diastolic": 80, "unit": "mm[Hg]",
            "measured_at": format!("{day}T08:00:00-05:00"), "device": "cuff-1", "source": "device"
        }));
        day = day.succ_opt().expect("date");
    }
    json!({
        "format": "rounds-data/1",
        "facility": { "id": "oak", "name": "Oak Manor", "timezone": "America/New_York", "place_of_service": "32" },
        "practices": [
            { "id": "north", "name": "North Primary Care", "group_npi": "1987654328", "tin": "123456789",
              "practitioners": ["dr-a"], "contacts": ["billing@north.example"] },
            { "id": "south", "name": "South Internal Medicine", "group_npi": "1112223338", "tin": "987654321",
              "practitioners": ["dr-b"] }
        ],
        "practitioners": [
            { "id": "dr-a", "name": "A, MD", "npi": "1234567893" },
            { "id": "dr-b", "name": "B, MD", "npi": "1444555662" }
        ],
        "staff": [ { "id": "rn-1", "name": "RN One", "role": "clinical", "counts_for_billing": true } ],
        "patients": [ patient("p-north", "dr-a"), patient("p-south", "dr-b"), moving ],
        "interactions": [
            interaction("01930c1e-0000-7000-8000-000000000001", "p-north", "2026-11-03T10:00:00-05:00", "2026-11-03T10:25:00-05:00", "ccm"),
            interaction("01930c1e-0000-7000-8000-000000000002", "p-south", "2026-11-04T10:00:00-05:00", "2026-11-04T10:21:00-05:00", "ccm"),
            interaction("01930c1e-0000-7000-8000-000000000003", "p-move", "2026-11-05T10:00:00-05:00", "2026-11-05T10:15:00-05:00", "ccm"),
            interaction("01930c1e-0000-7000-8000-000000000004", "p-move", "2026-11-20T10:00:00-05:00", "2026-11-20T10:22:00-05:00", "ccm"),
            interaction("01930c1e-0000-7000-8000-000000000005", "p-move", "2026-12-02T10:00:00-05:00", "2026-12-02T10:20:00-05:00", "ccm")
        ],
        "readings": readings
    })
}

fn parse(v: &Value) -> DataFile {
    match parse_data_file(&v.to_string()) {
        Ok(d) => d,
        Err(e) => panic!("fixture invalid: {e}"),
    }
}

fn encounter(d: &DataFile, month: &str, patient: &str) -> Encounter {
    let run = bill(d, month.parse().expect("month"), &RuleSet::default()).expect("bill");
    run.encounters
        .into_iter()
        .find(|e| e.patient == patient)
        .expect("encounter")
}

fn codes(e: &Encounter) -> Vec<(String, Option<String>)> {
    e.lines
        .iter()
        .map(|l| (l.code.clone(), l.practice.clone()))
        .collect()
}

fn has(e: &Encounter, kind: ExceptionKind, program: ExceptionProgram, text: &str) -> bool {
    e.exceptions
        .iter()
        .any(|x| x.kind == kind && x.program == program && x.reason.contains(text))
}

fn with_new_consents(mut v: Value) -> Value {
    let consents = v["patients"][2]["consents"]
        .as_array_mut()
        .expect("consents");
    consents.push(
        json!({ "program": "ccm", "given_on": "2026-11-15", "method": "verbal", "by": "rn-1" }),
    );
    consents.push(json!({ "program": "rpm", "given_on": "2026-11-16" }));
    v
}

fn s(x: &str) -> Option<String> {
    Some(x.to_string())
}

#[test]
fn each_line_carries_the_practice_of_its_practitioner_of_record() {
    let d = parse(&two_practices());
    let north = encounter(&d, "2026-11", "p-north");
    assert_eq!(codes(&north), vec![("99490".into(), s("north"))]);
    assert_eq!(north.practices, vec!["north".to_string()]);
    let south = encounter(&d, "2026-11", "p-south");
    assert_eq!(codes(&south), vec![("99490".into(), s("south"))]);
    assert_eq!(south.lines[0].rendering_npi, "1444555662");
}

#[test]
fn a_move_on_the_15th_without_a_new_consent_bills_nothing_for_the_new_practitioner() {
    let d = parse(&two_practices());
    let nov = encounter(&d, "2026-11", "p-move");
    assert!(nov.lines.is_empty(), "{:?}", nov.lines);
    assert_eq!(
        nov.practices,
        vec!["north".to_string(), "south".to_string()]
    );
    // Time before the move was furnished under dr-a and does not count for dr-b.
    assert!(has(
        &nov,
        ExceptionKind::NotCounted,
        ExceptionProgram::Ccm,
        "before the change of billing practitioner on 2026-11-15 (furnished under dr-a)"
    ));
    assert!(has(
        &nov,
        ExceptionKind::Requirement,
        ExceptionProgram::Ccm,
        "no CCM consent given to the new billing practitioner dr-b"
    ));
    assert!(has(
        &nov,
        ExceptionKind::Requirement,
        ExceptionProgram::Rpm,
        "no RPM consent given to the new billing practitioner dr-b"
    ));
    // Only dr-b's 22 minutes are counted.
    assert_eq!(nov.minutes.ccm, 22);
}

#[test]
fn the_transition_month_is_held_until_the_new_practice_confirms() {
    let d = parse(&with_new_consents(two_practices()));
    let nov = encounter(&d, "2026-11", "p-move");
    assert!(nov.lines.is_empty(), "{:?}", nov.lines);
    assert!(has(
        &nov,
        ExceptionKind::Conflict,
        ExceptionProgram::Ccm,
        "not billed until practice south confirms dr-a has not billed CCM"
    ));
    assert!(has(
        &nov,
        ExceptionKind::Conflict,
        ExceptionProgram::Rpm,
        "the RPM device period 2026-10-31 to 2026-11-29"
    ));
    // The month after is dr-b's alone: billed without any confirmation.
    let dec = encounter(&d, "2026-12", "p-move");
    assert_eq!(
        codes(&dec),
        vec![("99454".into(), s("south")), ("99490".into(), s("south"))]
    );
}

#[test]
fn once_confirmed_the_new_practice_bills_the_month_and_99453_is_never_billed_twice() {
    let mut v = with_new_consents(two_practices());
    v["practices"][1]["confirms_transition_months"] = json!(true);
    let d = parse(&v);
    let oct = encounter(&d, "2026-10", "p-move");
    assert_eq!(
        codes(&oct),
        vec![("99453".into(), s("north")), ("99454".into(), s("north"))]
    );
    let nov = encounter(&d, "2026-11", "p-move");
    assert_eq!(
        codes(&nov),
        vec![("99454".into(), s("south")), ("99490".into(), s("south"))]
    );
    assert!(
        nov.lines.iter().all(|l| l.rendering_npi == "1444555662"),
        "{:?}",
        nov.lines
    );
    assert!(has(
        &nov,
        ExceptionKind::Warning,
        ExceptionProgram::Ccm,
        "practice south confirms dr-a has not billed CCM"
    ));
    let dec = encounter(&d, "2026-12", "p-move");
    let all: Vec<String> = [oct, nov, dec]
        .iter()
        .flat_map(|e| e.lines.iter().map(|l| l.code.clone()))
        .collect();
    assert_eq!(all.iter().filter(|c| *c == "99453").count(), 1, "{all:?}");
}

#[test]
fn a_file_of_today_is_one_practice_and_bills_exactly_as_before() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/sunnyvale.json"
    ))
    .expect("example");
    let d = parse_data_file(&text).expect("valid");
    assert!(d.practices.is_empty());
    let implicit = d.implicit_practice();
    assert_eq!(implicit.id, d.facility.id);
    assert_eq!(implicit.practitioners.len(), d.practitioners.len());
    let run = bill(&d, "2026-11".parse().expect("month"), &RuleSet::default()).expect("bill");
    let out = serde_json::to_string(&run).expect("json");
    assert!(
        !out.contains("\"practice"),
        "no practice keys in a one-practice file"
    );
    assert!(run.encounters.iter().any(|e| !e.lines.is_empty()));
}

/// Every hostile variant is rejected naming the entry and the field, and nothing is returned.
#[test]
fn bad_practices_are_rejected_naming_the_entry_and_the_field() {
    type Case = (
        Box<dyn Fn(&mut Value)>,
        &'static str,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            Box::new(|v| v["practices"][0]["practitioners"] = json!(["dr-zz"])),
            "practice north",
            "practitioners[0]",
            "unknown practitioner \"dr-zz\"",
        ),
        (
            Box::new(|v| v["practices"][1]["practitioners"] = json!(["dr-b", "dr-a"])),
            "practice south",
            "practitioners[1]",
            "already in practice \"north\"",
        ),
        (
            Box::new(|v| v["practices"][0]["group_npi"] = json!("1234567890")),
            "practice north",
            "group_npi",
            "not a valid 10-digit NPI",
        ),
        (
            Box::new(|v| v["practices"][0]["tin"] = json!("12-345")),
            "practice north",
            "tin",
            "9-digit",
        ),
        (
            Box::new(|v| v["practices"][1]["id"] = json!("north")),
            "practice north",
            "id",
            "duplicate id",
        ),
        (
            Box::new(|v| v["practices"][0]["id"] = json!("../etc")),
            "practices[0]",
            "id",
            "not a valid id",
        ),
        (
            Box::new(|v| v["practices"][0]["contacts"] = json!(["not an address"])),
            "practice north",
            "contacts[0]",
            "e-mail",
        ),
        (
            Box::new(|v| v["practices"][0]["practitioners"] = json!([])),
            "patient p-north",
            "billing_practitioner",
            "belongs to no practice",
        ),
        (
            Box::new(|v| {
                v["patients"][2]["practitioners_of_record"][1]["from"] = json!("2026-11-10")
            }),
            "patient p-move",
            "practitioners_of_record[1]",
            "overlaps practitioners_of_record[0]",
        ),
        (
            Box::new(|v| {
                v["patients"][2]["practitioners_of_record"][0]["to"] = json!("2025-12-01")
            }),
            "patient p-move",
            "practitioners_of_record[0].to",
            "before from",
        ),
        (
            Box::new(|v| {
                v["patients"][2]["practitioners_of_record"][1]["practitioner"] = json!("dr-q")
            }),
            "patient p-move",
            "practitioners_of_record[1].practitioner",
            "unknown practitioner",
        ),
        (
            Box::new(|v| v["patients"][2]["practitioners_of_record"][1]["program"] = json!("xyz")),
            "patient p-move",
            "practitioners_of_record[1].program",
            "unknown variant",
        ),
        (
            Box::new(|v| v["practices"][0]["confirms_transition_months"] = json!("yes")),
            "practice north",
            "confirms_transition_months",
            "invalid type",
        ),
    ];
    for (change, entry, field, text) in cases {
        let mut v = two_practices();
        change(&mut v);
        let problems = match parse_data_file(&v.to_string()) {
            Ok(_) => panic!("accepted a bad file ({entry} {field})"),
            Err(p) => p,
        };
        assert!(
            problems
                .0
                .iter()
                .any(|p| p.entry == entry && p.field == field && p.message.contains(text)),
            "expected {entry} / {field} / {text:?}, got {problems}"
        );
    }
}

#[test]
fn a_program_of_its_own_wins_over_every_program() {
    let mut v = two_practices();
    v["patients"][0]["practitioners_of_record"] =
        json!([{ "program": "rpm", "practitioner": "dr-b", "from": "2026-01-01" }]);
    let d = parse(&v);
    let p = &d.patients[0];
    let day = "2026-11-10".parse().expect("date");
    assert_eq!(p.practitioner_on(Program::Rpm, day), "dr-b");
    assert_eq!(p.practitioner_on(Program::Ccm, day), "dr-a");
    assert_eq!(
        d.practices_of_patient(p),
        vec!["north".to_string(), "south".to_string()]
    );
    let t = d.patients[2].tenure(Program::Ccm, "2026-12-01".parse().expect("date"));
    assert_eq!(t.practitioner, "dr-b");
    assert_eq!(t.since, Some("2026-11-15".parse().expect("date")));
    assert_eq!(t.predecessor.as_deref(), Some("dr-a"));
}
