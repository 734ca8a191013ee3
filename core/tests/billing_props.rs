//! Property tests: the encounter does not depend on the order entries arrive in, nor on an entry
//! arriving twice (as it may through sync).

use chrono::{DateTime, Duration, FixedOffset};
use proptest::prelude::*;
use rounds_core::billing::{RuleSet, bill};
use rounds_core::*;
use uuid::Uuid;

fn base() -> DataFile {
    let text = include_str!("../../examples/sunnyvale.json");
    let mut d = parse_data_file(text).expect("example parses");
    d.patients.truncate(3);
    d.interactions.clear();
    d.readings.clear();
    // Make p-001 an RPM patient too.
    d.patients[0].rpm = Some(RpmEnrolment {
        device_setup_on: "2026-10-20".parse().unwrap(),
        devices: vec!["cuff".into()],
    });
    d.patients[0].consents.push(Consent {
        id: None,
        program: Program::Rpm,
        given_on: "2026-10-20".parse().unwrap(),
        method: None,
        by: None,
        revoked_on: None,
        document: None,
    });
    d
}

const STAFF: [&str; 4] = ["rn-lee", "rn-okafor", "aide-1", "dr-smith"];
const PATIENTS: [&str; 3] = ["p-001", "p-002", "p-003"];

#[derive(Debug, Clone)]
enum Entry {
    Interaction(Interaction),
    Reading(Reading),
}

fn at(day: u32, minute: u32) -> DateTime<FixedOffset> {
    let start = DateTime::parse_from_rfc3339("2026-10-25T00:00:00-04:00").unwrap();
    start + Duration::days(i64::from(day)) + Duration::minutes(i64::from(minute))
}

fn entry() -> impl Strategy<Value = Entry> {
    let interaction = (
        0..3usize,
        0..4usize,
        0..3usize,
        0..40u32,
        0..1440u32,
        1..3600i64,
        any::<bool>(),
        any::<u128>(),
    )
        .prop_map(|(p, s, prog, day, minute, secs, interactive, id)| {
            let start = at(day, minute);
            Entry::Interaction(Interaction {
                id: Uuid::from_u128(id),
                patient: PATIENTS[p].into(),
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
    let reading = (0..40u32, 0..1440u32, any::<bool>(), any::<u128>()).prop_map(
        |(day, minute, manual, id)| {
            Entry::Reading(Reading {
                program: None,
                id: Uuid::from_u128(id),
                patient: "p-001".into(),
                kind: ReadingKind::HeartRate,
                systolic: None,
                diastolic: None,
                value: Some(72.0),
                unit: "/min".into(),
                measured_at: at(day, minute),
                device: Some("cuff".into()),
                source: if manual {
                    ReadingSource::Manual
                } else {
                    ReadingSource::Device
                },
            })
        },
    );
    prop_oneof![3 => interaction, 1 => reading]
}

fn with(entries: &[Entry]) -> DataFile {
    let mut d = base();
    for e in entries {
        match e {
            Entry::Interaction(i) => d.interactions.push(i.clone()),
            Entry::Reading(r) => d.readings.push(r.clone()),
        }
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn order_of_entries_does_not_matter(
        (entries, shuffled) in prop::collection::vec(entry(), 0..40)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    ) {
        let rules = RuleSet::default();
        for month in ["2026-10", "2026-11", "2026-12"] {
            let m: Month = month.parse().unwrap();
            let a = bill(&with(&entries), m, &rules).unwrap();
            let b = bill(&with(&shuffled), m, &rules).unwrap();
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn an_entry_received_twice_counts_once(
        entries in prop::collection::vec(entry(), 1..40),
        dup in prop::collection::vec(any::<prop::sample::Index>(), 1..5),
    ) {
        let mut twice = entries.clone();
        for i in dup {
            twice.push(entries[i.index(entries.len())].clone());
        }
        let rules = RuleSet::default();
        let m: Month = "2026-11".parse().unwrap();
        prop_assert_eq!(bill(&with(&entries), m, &rules).unwrap(), bill(&with(&twice), m, &rules).unwrap());
    }
}
