//! Property tests for the concurrency matrix (billing rules 43–51): whatever entries a patient has,
//! in whatever order, received however many times, with whatever external services and program
//! choice, the month never carries two services CMS bundles, nor an add-on without its base; and
//! the encounter does not depend on the order or on duplicates.

use chrono::{DateTime, Duration, FixedOffset, NaiveDate};
use proptest::prelude::*;
use rounds_core::billing::rules::RpmRtmConflict;
use rounds_core::billing::{Encounter, RuleSet, bill};
use rounds_core::*;
use uuid::Uuid;

const MONTHS: [&str; 2] = ["2026-11", "2026-12"];
const STAFF: [&str; 4] = ["rn", "rn2", "aide", "dr"];

fn date(s: &str) -> NaiveDate {
    s.parse().expect("date")
}

/// One patient consented and enrolled in every program, with two chronic conditions and one
/// behavioral one: every conflict can arise.
fn base() -> DataFile {
    let mut d = DataFile::new(Facility {
        id: "f".into(),
        name: "F".into(),
        timezone: "America/New_York".into(),
        place_of_service: "32".into(),
    });
    d.practitioners.push(Practitioner {
        apcm_attested_on: Some(date("2026-01-01")),
        id: "dr".into(),
        name: "Dr".into(),
        npi: "1234567893".into(),
    });
    for (id, counts) in [("rn", true), ("rn2", true), ("aide", false)] {
        d.staff.push(Staff {
            id: id.into(),
            name: id.into(),
            role: StaffRole::Clinical,
            counts_for_billing: counts,
        });
    }
    let consents = Program::ALL
        .iter()
        .map(|&program| Consent {
            id: None,
            program,
            given_on: date("2026-01-10"),
            method: None,
            by: None,
            revoked_on: None,
            document: None,
        })
        .collect();
    d.patients.push(Patient {
        rtm: Some(RtmEnrolment {
            device_setup_on: Some(date("2026-10-25")),
            kind: RtmKind::Musculoskeletal,
            devices: vec![],
        }),
        external_services: Vec::new(),
        program_choice: Default::default(),
        discharged_on: None,
        absences: Vec::new(),
        merged_into: None,
        qmb_periods: vec![QmbPeriod {
            from: date("2026-11-15"),
            to: None,
        }],
        id: "p".into(),
        name: "Test Patient".into(),
        birth_date: None,
        mrn: None,
        billing_practitioner: "dr".into(),
        practitioners_of_record: Vec::new(),
        conditions: vec![
            Condition {
                behavioral: None,
                icd10: "I10".into(),
                chronic: true,
            },
            Condition {
                behavioral: None,
                icd10: "F32.9".into(),
                chronic: false,
            },
            Condition {
                behavioral: None,
                icd10: "E11.9".into(),
                chronic: true,
            },
        ],
        consents,
        initiating_visit_on: Some(date("2026-01-10")),
        care_plan: Some(CarePlan {
            established_on: Some(date("2026-01-12")),
            revised_on: vec![],
            text: None,
        }),
        complex_ccm_months: vec![],
        ccm_lane: Default::default(),
        pcm_condition: Some("E11.9".into()),
        rpm: Some(RpmEnrolment {
            device_setup_on: date("2026-10-25"),
            devices: vec![],
        }),
        stays: vec![],
        died_on: None,
    });
    d
}

#[derive(Debug, Clone)]
enum Entry {
    Interaction(Interaction),
    Reading(Reading),
}

fn at(day: u32, minute: u32) -> DateTime<FixedOffset> {
    let start = DateTime::parse_from_rfc3339("2026-10-28T00:00:00-04:00").expect("start");
    start + Duration::days(i64::from(day)) + Duration::minutes(i64::from(minute))
}

fn entry() -> impl Strategy<Value = Vec<Entry>> {
    let interaction = (
        0..STAFF.len(),
        0..Program::ALL.len(),
        0..60u32,
        0..1440u32,
        1..4000i64,
        any::<bool>(),
        any::<u128>(),
    )
        .prop_map(|(s, prog, day, minute, secs, interactive, id)| {
            let start = at(day, minute);
            Entry::Interaction(Interaction {
                id: Uuid::from_u128(id),
                patient: "p".into(),
                staff: STAFF[s].into(),
                program: Program::ALL[prog],
                started_at: start,
                ended_at: start + Duration::seconds(secs),
                interactive,
                activity: None,
                note: None,
                amends: None,
            })
        });
    // A run of readings on consecutive days, so device codes are reachable.
    let readings =
        (any::<bool>(), 0..60u32, 1..25u32, any::<u64>()).prop_map(|(rtm, first, days, seed)| {
            (0..days)
                .map(|k| {
                    let id = Uuid::from_u64_pair(seed, u64::from(k));
                    Entry::Reading(if rtm {
                        Reading {
                            program: Some(ReadingProgram::Rtm),
                            id,
                            patient: "p".into(),
                            kind: ReadingKind::RangeOfMotion,
                            systolic: None,
                            diastolic: None,
                            value: Some(90.0),
                            unit: "deg".into(),
                            measured_at: at(first + k, 600),
                            device: None,
                            source: ReadingSource::PatientReported,
                        }
                    } else {
                        Reading {
                            program: None,
                            id,
                            patient: "p".into(),
                            kind: ReadingKind::HeartRate,
                            systolic: None,
                            diastolic: None,
                            value: Some(72.0),
                            unit: "/min".into(),
                            measured_at: at(first + k, 600),
                            device: None,
                            source: ReadingSource::Device,
                        }
                    })
                })
                .collect::<Vec<_>>()
        });
    prop_oneof![
        4 => interaction.prop_map(|e| vec![e]),
        1 => readings,
    ]
}

/// External services a practice might report: the families of the matrix and a harmless code.
const EXTERNAL: [&str; 14] = [
    "99495", "99490", "99424", "99452", "G2250", "99421", "99492", "G2214", "G0557", "G0181",
    "99454", "98977", "99213", "99497",
];

fn external() -> impl Strategy<Value = ExternalService> {
    (0..EXTERNAL.len(), 0..60i64, any::<bool>()).prop_map(|(c, day, same)| ExternalService {
        id: None,
        code: EXTERNAL[c].into(),
        date_of_service: date("2026-10-28") + Duration::days(day),
        practitioner: if same { "dr" } else { "other" }.into(),
        npi: None,
        note: None,
    })
}

fn choice() -> impl Strategy<Value = Option<Program>> {
    prop_oneof![
        2 => Just(None),
        1 => (0..Program::ALL.len()).prop_map(|p| Some(Program::ALL[p])),
    ]
}

fn rules() -> impl Strategy<Value = RuleSet> {
    (any::<bool>(), any::<bool>()).prop_map(|(apcm_wins, rpm_first)| RuleSet {
        apcm_wins_over_ccm_pcm: apcm_wins,
        rpm_rtm_conflict: if rpm_first {
            RpmRtmConflict::RpmFirst
        } else {
            RpmRtmConflict::Neither
        },
        ..RuleSet::default()
    })
}

#[derive(Debug, Clone)]
struct Case {
    entries: Vec<Entry>,
    external: Vec<ExternalService>,
    choice: Option<Program>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(entry(), 0..30),
        prop::collection::vec(external(), 0..3),
        choice(),
    )
        .prop_map(|(e, external, choice)| Case {
            entries: e.into_iter().flatten().collect(),
            external,
            choice,
        })
}

fn file(c: &Case, entries: &[Entry]) -> DataFile {
    let mut d = base();
    d.patients[0].external_services = c.external.clone();
    if let Some(p) = c.choice {
        for m in MONTHS {
            d.patients[0]
                .program_choice
                .insert(m.parse().expect("month"), p);
        }
    }
    for e in entries {
        match e {
            Entry::Interaction(i) => d.interactions.push(i.clone()),
            Entry::Reading(r) => d.readings.push(r.clone()),
        }
    }
    d
}

const APCM: &[&str] = &["G0556", "G0557", "G0558"];
const CCM: &[&str] = &["99490", "99439", "99487", "99489", "99491", "99437"];
const PCM: &[&str] = &["99424", "99425", "99426", "99427"];
const RPM: &[&str] = &["99453", "99454", "99445", "99457", "99458", "99470"];
const RTM: &[&str] = &[
    "98975", "98976", "98977", "98978", "98984", "98985", "98986", "98979", "98980", "98981",
];

/// Every bundling and add-on invariant of rules 43–51, as a list of broken ones.
fn broken(e: &Encounter) -> Vec<String> {
    let has = |set: &[&str]| e.lines.iter().any(|l| set.contains(&l.code.as_str()));
    let code = |c: &str| e.lines.iter().any(|l| l.code == c);
    let mut out = Vec::new();
    let mut pair = |a: &str, b: &str, x: bool, y: bool| {
        if x && y {
            out.push(format!("{a} with {b}"));
        }
    };
    pair("APCM", "CCM", has(APCM), has(CCM));
    pair("APCM", "PCM", has(APCM), has(PCM));
    pair("CCM", "PCM", has(CCM), has(PCM));
    pair("RPM", "RTM", has(RPM), has(RTM));
    pair("G0570", "99484", code("G0570"), code("99484"));
    pair("98979", "98980", code("98979"), code("98980"));
    pair("99470", "99457", code("99470"), code("99457"));
    if code("G0570") && !has(APCM) {
        out.push("G0570 without APCM".into());
    }
    if code("98981") && !code("98980") {
        out.push("98981 without 98980".into());
    }
    if code("99458") && !code("99457") {
        out.push("99458 without 99457".into());
    }
    if e.lines
        .iter()
        .filter(|l| APCM.contains(&l.code.as_str()))
        .count()
        > 1
    {
        out.push("two APCM lines".into());
    }
    for l in &e.lines {
        if ["G0568", "G0569"].contains(&l.code.as_str()) {
            out.push(format!("{} produced", l.code));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn the_matrix_never_lets_two_bundled_services_through(
        (c, shuffled) in case().prop_flat_map(|c| {
            let entries = c.entries.clone();
            (Just(c), Just(entries).prop_shuffle())
        }),
        dup in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        rules in rules(),
    ) {
        // Any entry order, and some entries received twice.
        let mut arrived = shuffled.clone();
        if !shuffled.is_empty() {
            for i in dup {
                arrived.push(shuffled[i.index(shuffled.len())].clone());
            }
        }
        for month in MONTHS {
            let m: Month = month.parse().expect("month");
            let a = bill(&file(&c, &c.entries), m, &rules).expect("bill");
            let b = bill(&file(&c, &arrived), m, &rules).expect("bill");
            prop_assert_eq!(&a, &b, "order or duplicates changed the bill");
            for e in &a.encounters {
                let bad = broken(e);
                prop_assert!(bad.is_empty(), "{}: {:?} in {:?}", month, bad,
                    e.lines.iter().map(|l| (&l.code, l.units)).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn an_external_service_always_wins(c in case(), rules in rules()) {
        // A same-practitioner TCM in November: never an APCM line. Anyone's RTM code: no RPM
        // line. Anyone's G0181: no CCM line.
        let mut c = c;
        c.external.push(ExternalService {
            id: None,
            code: "99496".into(),
            date_of_service: date("2026-11-05"),
            practitioner: "dr".into(),
            npi: None,
            note: None,
        });
        c.external.push(ExternalService {
            id: None,
            code: "98976".into(),
            date_of_service: date("2026-11-06"),
            practitioner: "other".into(),
            npi: None,
            note: None,
        });
        c.external.push(ExternalService {
            id: None,
            code: "G0181".into(),
            date_of_service: date("2026-11-07"),
            practitioner: "other".into(),
            npi: None,
            note: None,
        });
        let run = bill(&file(&c, &c.entries), "2026-11".parse().expect("month"), &rules)
            .expect("bill");
        for e in &run.encounters {
            let codes: Vec<&str> = e.lines.iter().map(|l| l.code.as_str()).collect();
            prop_assert!(!codes.iter().any(|c| APCM.contains(c) || *c == "G0570"), "{:?}", codes);
            prop_assert!(!codes.iter().any(|c| RPM.contains(c)), "{:?}", codes);
            prop_assert!(!codes.iter().any(|c| CCM.contains(c)), "{:?}", codes);
        }
    }
}

/// The generator reaches the cases the properties are about: each program's lines, and each
/// conflict actually settled, across a fixed sample of cases.
#[test]
fn the_generated_cases_reach_every_program_and_every_conflict() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let c = case().new_tree(&mut runner).expect("case").current();
        let run = bill(
            &file(&c, &c.entries),
            "2026-11".parse().expect("month"),
            &RuleSet::default(),
        )
        .expect("bill");
        for e in &run.encounters {
            for (name, set) in [
                ("apcm", APCM),
                ("ccm", CCM),
                ("pcm", PCM),
                ("rpm", RPM),
                ("rtm", RTM),
            ] {
                if e.lines.iter().any(|l| set.contains(&l.code.as_str())) {
                    seen.insert(name.to_string());
                }
            }
            for code in ["G0570", "99484"] {
                if e.lines.iter().any(|l| l.code == code) {
                    seen.insert(code.to_string());
                }
            }
            for x in &e.exceptions {
                let r = &x.reason;
                if r.contains("APCM") && r.contains("CCM") {
                    seen.insert("apcm×ccm".into());
                }
                if r.contains("RPM") && r.contains("RTM") {
                    seen.insert("rpm×rtm".into());
                }
                if r.contains("CCM") && r.contains("PCM") {
                    seen.insert("ccm×pcm".into());
                }
                if r.contains("TCM") {
                    seen.insert("tcm".into());
                }
            }
        }
    }
    for want in [
        "apcm",
        "ccm",
        "rpm",
        "rtm",
        "G0570",
        "apcm×ccm",
        "rpm×rtm",
        "ccm×pcm",
        "tcm",
    ] {
        assert!(seen.contains(want), "never reached {want}: {seen:?}");
    }
}
