//! Hand-computed cases for every numbered rule of `docs/billing-rules.md`.
//! Each case starts from one CCM-eligible patient in America/New_York and changes one thing.

use chrono::{DateTime, FixedOffset, NaiveDate};
use rounds_core::billing::{BillingRun, Encounter, RuleSet, bill};
use rounds_core::*;
use uuid::Uuid;

/// Expected (code, units) lines.
type Codes = &'static [(&'static str, u32)];

fn date(s: &str) -> NaiveDate {
    s.parse().expect("date")
}

fn ts(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).expect("timestamp")
}

fn base() -> DataFile {
    let mut d = DataFile::new(Facility {
        id: "f".into(),
        name: "F".into(),
        timezone: "America/New_York".into(),
        place_of_service: "32".into(),
    });
    d.practitioners.push(Practitioner {
        apcm_attested_on: None,
        id: "dr".into(),
        name: "Dr".into(),
        npi: "1234567893".into(),
    });
    d.practitioners.push(Practitioner {
        apcm_attested_on: None,
        id: "dr2".into(),
        name: "Dr 2".into(),
        npi: "1245319599".into(),
    });
    for (id, counts) in [("rn", true), ("rn2", true), ("aide", false)] {
        d.staff.push(Staff {
            id: id.into(),
            name: id.into(),
            role: StaffRole::Clinical,
            counts_for_billing: counts,
        });
    }
    d.patients.push(Patient {
        rtm: None,
        external_services: Vec::new(),
        program_choice: Default::default(),
        discharged_on: None,
        absences: Vec::new(),
        merged_into: None,
        qmb_periods: Vec::new(),
        id: "p".into(),
        name: "Test Patient".into(),
        birth_date: Some(date("1940-01-01")),
        mrn: Some("1".into()),
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
                icd10: "J06.9".into(),
                chronic: false,
            },
            Condition {
                behavioral: None,
                icd10: "E11.9".into(),
                chronic: true,
            },
        ],
        consents: vec![Consent {
            id: None,
            program: Program::Ccm,
            given_on: date("2026-01-10"),
            method: Some("verbal".into()),
            by: Some("rn".into()),
            revoked_on: None,
            document: None,
        }],
        initiating_visit_on: Some(date("2026-01-10")),
        care_plan: Some(CarePlan {
            established_on: Some(date("2026-01-12")),
            revised_on: vec![],
            text: None,
        }),
        complex_ccm_months: vec![],
        ccm_lane: Default::default(),
        pcm_condition: None,
        rpm: None,
        stays: vec![],
        died_on: None,
    });
    d
}

/// Counter-based ids keep entries distinct and ordered.
fn id() -> Uuid {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    Uuid::from_u64_pair(0x0193_0000_0000_7000, N.fetch_add(1, Ordering::Relaxed))
}

/// An interaction on a November day (EST), `start` "HH:MM:SS", lasting `secs`.
fn ix(d: &mut DataFile, day: u32, start: &str, secs: i64, who: &str, program: Program) -> Uuid {
    let s = ts(&format!("2026-11-{day:02}T{start}-05:00"));
    ix_at(
        d,
        s,
        s + chrono::Duration::seconds(secs),
        who,
        program,
        true,
    )
}

fn ix_at(
    d: &mut DataFile,
    s: DateTime<FixedOffset>,
    e: DateTime<FixedOffset>,
    who: &str,
    program: Program,
    interactive: bool,
) -> Uuid {
    let i = id();
    d.interactions.push(Interaction {
        id: i,
        patient: "p".into(),
        staff: who.into(),
        program,
        started_at: s,
        ended_at: e,
        interactive,
        activity: None,
        note: None,
        amends: None,
    });
    i
}

/// `minutes` of CCM by `who`, as one entry on Nov 3.
fn ccm(d: &mut DataFile, minutes: i64, who: &str) {
    ix(d, 3, "10:00:00", minutes * 60, who, Program::Ccm);
}

fn reading(d: &mut DataFile, at: &str, source: ReadingSource) -> Uuid {
    let r = id();
    d.readings.push(Reading {
        program: None,
        id: r,
        patient: "p".into(),
        kind: ReadingKind::BloodPressure,
        systolic: Some(130.0),
        diastolic: Some(80.0),
        value: None,
        unit: "mm[Hg]".into(),
        measured_at: ts(at),
        device: Some("cuff".into()),
        source,
    });
    r
}

/// Device readings on `days` distinct days starting at `from` (one each, 09:00 local).
fn reading_days(d: &mut DataFile, from: &str, days: i64) {
    let start = date(from);
    for k in 0..days {
        let day = start + chrono::Duration::days(k);
        let offset = if day < date("2026-11-01") && day > date("2026-03-08") {
            "-04:00"
        } else {
            "-05:00"
        };
        reading(d, &format!("{day}T09:00:00{offset}"), ReadingSource::Device);
    }
}

fn enrol_rpm(d: &mut DataFile, setup: &str) {
    let p = &mut d.patients[0];
    p.rpm = Some(RpmEnrolment {
        device_setup_on: date(setup),
        devices: vec!["cuff".into()],
    });
    p.consents.push(Consent {
        id: None,
        program: Program::Rpm,
        given_on: date(setup),
        method: None,
        by: None,
        revoked_on: None,
        document: None,
    });
}

fn run(d: &DataFile, month: &str) -> BillingRun {
    assert!(
        validate::validate(d).is_empty(),
        "{:?}",
        validate::validate(d)
    );
    bill(d, month.parse().unwrap(), &RuleSet::default()).unwrap()
}

fn enc(d: &DataFile, month: &str) -> Encounter {
    run(d, month).encounters.remove(0)
}

/// (code, units) of the encounter's lines, sorted by code.
fn codes(e: &Encounter) -> Vec<(&str, u32)> {
    e.lines.iter().map(|l| (l.code.as_str(), l.units)).collect()
}

fn has_exception(e: &Encounter, needle: &str) -> bool {
    e.exceptions.iter().any(|x| x.reason.contains(needle))
}

// Rule 1 ---------------------------------------------------------------------------------------

#[test]
fn r01_entry_crossing_midnight_into_the_month_is_split() {
    let mut d = base();
    // 23:50 EDT Oct 31 → 00:25 EDT Nov 1: 10 min in October, 25 min in November.
    ix_at(
        &mut d,
        ts("2026-10-31T23:50:00-04:00"),
        ts("2026-11-01T00:25:00-04:00"),
        "rn",
        Program::Ccm,
        true,
    );
    let nov = enc(&d, "2026-11");
    assert_eq!(nov.minutes.ccm, 25);
    assert_eq!(codes(&nov), vec![("99490", 1)]);
    let oct = enc(&d, "2026-10");
    assert_eq!(oct.minutes.ccm, 10);
    assert!(codes(&oct).is_empty());
    assert!(has_exception(&oct, "CCM needs 10 more minutes for 99490"));
}

#[test]
fn r01_dst_change_inside_an_entry_counts_real_time() {
    let mut d = base();
    // 01:50 EDT → 01:10 EST on Nov 1 2026 is 20 real minutes (local clock says −40).
    ix_at(
        &mut d,
        ts("2026-11-01T01:50:00-04:00"),
        ts("2026-11-01T01:10:00-05:00"),
        "rn",
        Program::Ccm,
        true,
    );
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.ccm, 20);
    assert_eq!(codes(&e), vec![("99490", 1)]);
}

#[test]
fn r01_days_are_local_to_the_facility_zone() {
    let mut d = base();
    // 03:00Z on Dec 1 is 22:00 on Nov 30 in New York: November time.
    ix_at(
        &mut d,
        ts("2026-12-01T03:00:00Z"),
        ts("2026-12-01T03:21:00Z"),
        "rn",
        Program::Ccm,
        true,
    );
    assert_eq!(enc(&d, "2026-11").minutes.ccm, 21);
    assert_eq!(enc(&d, "2026-12").minutes.ccm, 0);
}

// Rule 2 ---------------------------------------------------------------------------------------

#[test]
fn r02_exactly_twenty_minutes_summed_from_seconds() {
    let mut d = base();
    ix(&mut d, 3, "10:00:00", 7 * 60 + 20, "rn", Program::Ccm);
    ix(&mut d, 4, "10:00:00", 6 * 60 + 20, "rn", Program::Ccm);
    ix(&mut d, 5, "10:00:00", 6 * 60 + 20, "rn2", Program::Ccm);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.ccm, 20);
    assert_eq!(codes(&e), vec![("99490", 1)]);
}

#[test]
fn r02_one_second_short_is_not_rounded_up() {
    let mut d = base();
    ix(&mut d, 3, "10:00:00", 7 * 60 + 20, "rn", Program::Ccm);
    ix(&mut d, 4, "10:00:00", 6 * 60 + 20, "rn", Program::Ccm);
    ix(&mut d, 5, "10:00:00", 6 * 60 + 19, "rn2", Program::Ccm);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.ccm, 19);
    assert!(codes(&e).is_empty());
    assert!(has_exception(&e, "CCM needs 1 more minute for 99490"));
}

#[test]
fn r02_overlapping_entries_by_one_person_count_once() {
    let mut d = base();
    // 10:00–10:15 and 10:05–10:20 by the same nurse: 20 min, not 30.
    ix(&mut d, 3, "10:00:00", 15 * 60, "rn", Program::Ccm);
    ix(&mut d, 3, "10:05:00", 15 * 60, "rn", Program::Ccm);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.ccm, 20);
    assert_eq!(codes(&e), vec![("99490", 1)]);
    assert!(has_exception(&e, "10 min of rn's time overlapped"));
    // Two different people at the same time both count.
    let mut d = base();
    ix(&mut d, 3, "10:00:00", 15 * 60, "rn", Program::Ccm);
    ix(&mut d, 3, "10:00:00", 15 * 60, "rn2", Program::Ccm);
    assert_eq!(enc(&d, "2026-11").minutes.ccm, 30);
}

// Rule 3 ---------------------------------------------------------------------------------------

#[test]
fn r03_staff_not_counted_for_billing_is_reported_not_billed() {
    let mut d = base();
    ccm(&mut d, 15, "rn");
    ix(&mut d, 4, "10:00:00", 15 * 60, "aide", Program::Ccm);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.ccm, 15);
    assert!(codes(&e).is_empty());
    assert!(has_exception(
        &e,
        "15 min of CCM time not counted: aide is not counted for billing"
    ));
}

#[test]
fn r03_time_inside_a_part_a_stay_does_not_count() {
    let mut d = base();
    d.patients[0].stays.push(Stay {
        kind: StayKind::PartA,
        from: date("2026-11-05"),
        to: date("2026-11-12"),
    });
    ix(&mut d, 4, "10:00:00", 12 * 60, "rn", Program::Ccm); // before: counts
    ix(&mut d, 5, "10:00:00", 30 * 60, "rn", Program::Ccm); // first day of stay
    ix(&mut d, 12, "10:00:00", 30 * 60, "rn", Program::Ccm); // last day of stay
    ix(&mut d, 13, "10:00:00", 9 * 60, "rn", Program::Ccm); // after: counts
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.ccm, 21);
    assert_eq!(codes(&e), vec![("99490", 1)]);
    assert!(has_exception(
        &e,
        "60 min of CCM time not counted: inside the Part A stay 2026-11-05 to 2026-11-12"
    ));
}

#[test]
fn r03_practitioner_time_counts_and_time_after_death_does_not() {
    let mut d = base();
    d.patients[0].died_on = Some(date("2026-11-18"));
    ix(&mut d, 10, "10:00:00", 12 * 60, "dr2", Program::Ccm);
    ix(&mut d, 18, "10:00:00", 8 * 60, "rn", Program::Ccm);
    ix(&mut d, 19, "10:00:00", 30 * 60, "rn", Program::Ccm);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.ccm, 20);
    assert!(has_exception(
        &e,
        "30 min of CCM time not counted: after the date of death 2026-11-18"
    ));
    // Rule 14: date of service is the date of death.
    assert_eq!(e.lines[0].date_of_service, date("2026-11-18"));
}

#[test]
fn r03_r10_days_away_between_a_discharge_and_a_readmission_count_for_nothing() {
    let mut d = base();
    d.patients[0].absences.push(Absence {
        from: date("2026-11-06"),
        to: date("2026-11-15"),
    });
    enrol_rpm(&mut d, "2026-10-20");
    reading_days(&mut d, "2026-10-20", 30);
    ix(&mut d, 5, "10:00:00", 12 * 60, "rn", Program::Ccm); // discharge day: counts
    ix(&mut d, 10, "10:00:00", 30 * 60, "rn", Program::Ccm); // away
    ix(&mut d, 16, "10:00:00", 9 * 60, "rn", Program::Ccm); // readmission day: counts
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.ccm, 21);
    assert!(has_exception(
        &e,
        "30 min of CCM time not counted: while away from the facility (2026-11-06 to 2026-11-15"
    ));
    // Oct 20 – Nov 18 has a reading every day; the ten days away do not count.
    assert_eq!(e.rpm_periods[0].days, 20);
    // An absence that ends before it starts is refused.
    d.patients[0].absences[0].to = date("2026-11-01");
    assert!(
        validate::validate(&d)
            .iter()
            .any(|p| p.field == "absences[0].to"),
        "{:?}",
        validate::validate(&d)
    );
}

// CCM requirements ------------------------------------------------------------------------------

#[test]
fn ccm_requirements_each_block_billing_with_a_reason() {
    type Edit = fn(&mut Patient);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "no consent",
            |p| p.consents.clear(),
            "no CCM consent on file",
        ),
        (
            "consent after month",
            |p| p.consents[0].given_on = date("2026-12-01"),
            "no CCM consent in effect",
        ),
        (
            "revoked before month",
            |p| p.consents[0].revoked_on = Some(date("2026-10-31")),
            "no CCM consent in effect",
        ),
        (
            "one chronic condition",
            |p| p.conditions[2].chronic = false,
            "CCM needs 2 chronic conditions, 1 on file",
        ),
        (
            "no initiating visit",
            |p| p.initiating_visit_on = None,
            "no initiating visit",
        ),
        (
            "visit after month",
            |p| p.initiating_visit_on = Some(date("2026-12-02")),
            "no initiating visit",
        ),
        (
            "no care plan",
            |p| p.care_plan = None,
            "no care plan established",
        ),
    ];
    for (name, edit, reason) in cases {
        let mut d = base();
        edit(&mut d.patients[0]);
        ccm(&mut d, 25, "rn");
        let e = enc(&d, "2026-11");
        assert!(codes(&e).is_empty(), "{name}: {:?}", codes(&e));
        assert!(has_exception(&e, reason), "{name}: {:?}", e.exceptions);
    }
}

#[test]
fn ccm_consent_revoked_mid_month_still_bills_that_month_only() {
    let mut d = base();
    d.patients[0].consents[0].revoked_on = Some(date("2026-11-15"));
    ccm(&mut d, 25, "rn");
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("99490", 1)]);
    let mut dec = d.clone();
    dec.interactions.clear();
    ix_at(
        &mut dec,
        ts("2026-12-03T10:00:00-05:00"),
        ts("2026-12-03T10:30:00-05:00"),
        "rn",
        Program::Ccm,
        true,
    );
    let e = enc(&dec, "2026-12");
    assert!(codes(&e).is_empty());
    assert!(has_exception(&e, "no CCM consent in effect"));
}

// Rule 4 lanes -----------------------------------------------------------------------------------

#[test]
fn r04_lane_selection() {
    // Complex month, plan revised this month, ≥ 60 → complex.
    let mut d = base();
    d.patients[0].complex_ccm_months = vec!["2026-11".parse().unwrap()];
    d.patients[0].care_plan.as_mut().unwrap().revised_on = vec![date("2026-11-03")];
    ccm(&mut d, 65, "rn");
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("99487", 1)]);
    // Same, but the plan was not touched this month → standard.
    let mut s = d.clone();
    s.patients[0].care_plan.as_mut().unwrap().revised_on = vec![date("2026-10-03")];
    assert_eq!(codes(&enc(&s, "2026-11")), vec![("99439", 2), ("99490", 1)]);
    // Complex month and revised, but under 60 → standard.
    let mut u = base();
    u.patients[0].complex_ccm_months = vec!["2026-11".parse().unwrap()];
    u.patients[0].care_plan.as_mut().unwrap().revised_on = vec![date("2026-11-03")];
    ccm(&mut u, 50, "rn");
    assert_eq!(codes(&enc(&u, "2026-11")), vec![("99439", 1), ("99490", 1)]);
}

#[test]
fn r04_lane_override() {
    let mut d = base();
    d.patients[0]
        .ccm_lane
        .insert("2026-11".parse().unwrap(), CcmLane::Complex);
    ccm(&mut d, 45, "rn");
    let e = enc(&d, "2026-11");
    assert!(codes(&e).is_empty());
    assert!(has_exception(
        &e,
        "complex CCM needs 15 more minutes for 99487"
    ));
    // Override to standard wins over a qualifying complex month.
    let mut s = base();
    s.patients[0].complex_ccm_months = vec!["2026-11".parse().unwrap()];
    s.patients[0].care_plan.as_mut().unwrap().revised_on = vec![date("2026-11-03")];
    s.patients[0]
        .ccm_lane
        .insert("2026-11".parse().unwrap(), CcmLane::Standard);
    ccm(&mut s, 95, "rn");
    assert_eq!(codes(&enc(&s, "2026-11")), vec![("99439", 2), ("99490", 1)]);
}

// Rule 5 standard --------------------------------------------------------------------------------

#[test]
fn r05_standard_ladder_and_cap() {
    let table: &[(i64, Codes)] = &[
        (19, &[]),
        (20, &[("99490", 1)]),
        (39, &[("99490", 1)]),
        (40, &[("99439", 1), ("99490", 1)]),
        (59, &[("99439", 1), ("99490", 1)]),
        (60, &[("99439", 2), ("99490", 1)]),
        (130, &[("99439", 2), ("99490", 1)]),
    ];
    for (minutes, want) in table {
        let mut d = base();
        ccm(&mut d, *minutes, "rn");
        assert_eq!(codes(&enc(&d, "2026-11")), want.to_vec(), "{minutes} min");
    }
}

// Rule 6 complex ---------------------------------------------------------------------------------

#[test]
fn r06_complex_ladder() {
    let table: &[(i64, Codes)] = &[
        (59, &[]),
        (60, &[("99487", 1)]),
        (89, &[("99487", 1)]),
        (90, &[("99487", 1), ("99489", 1)]),
        (150, &[("99487", 1), ("99489", 3)]),
    ];
    for (minutes, want) in table {
        let mut d = base();
        d.patients[0]
            .ccm_lane
            .insert("2026-11".parse().unwrap(), CcmLane::Complex);
        ccm(&mut d, *minutes, "rn");
        assert_eq!(codes(&enc(&d, "2026-11")), want.to_vec(), "{minutes} min");
    }
}

// Rule 7 practitioner ----------------------------------------------------------------------------

#[test]
fn r07_practitioner_lane_counts_only_the_billing_practitioners_time() {
    let table: &[(i64, Codes)] = &[
        (29, &[]),
        (30, &[("99491", 1)]),
        (59, &[("99491", 1)]),
        (60, &[("99437", 1), ("99491", 1)]),
        (95, &[("99437", 2), ("99491", 1)]),
    ];
    for (minutes, want) in table {
        let mut d = base();
        d.patients[0]
            .ccm_lane
            .insert("2026-11".parse().unwrap(), CcmLane::Practitioner);
        ix(&mut d, 3, "10:00:00", minutes * 60, "dr", Program::Ccm);
        ix(&mut d, 4, "10:00:00", 40 * 60, "rn", Program::Ccm); // staff time: not in this lane
        ix(&mut d, 5, "10:00:00", 40 * 60, "dr2", Program::Ccm); // another practitioner: not P
        let e = enc(&d, "2026-11");
        assert_eq!(e.minutes.ccm_practitioner, *minutes as u32);
        assert_eq!(codes(&e), want.to_vec(), "{minutes} min");
    }
}

// Rule 8 diagnoses --------------------------------------------------------------------------------

#[test]
fn r08_ccm_diagnoses_are_the_chronic_conditions_in_file_order() {
    let mut d = base();
    ccm(&mut d, 25, "rn");
    let e = enc(&d, "2026-11");
    assert_eq!(e.lines[0].diagnoses, vec!["I10", "E11.9"]);
}

// PCM --------------------------------------------------------------------------------------------

fn pcm_patient() -> DataFile {
    let mut d = base();
    let p = &mut d.patients[0];
    p.consents = vec![Consent {
        id: None,
        program: Program::Pcm,
        given_on: date("2026-02-01"),
        method: None,
        by: None,
        revoked_on: None,
        document: None,
    }];
    p.pcm_condition = Some("I50.9".into());
    d
}

#[test]
fn pcm_staff_and_practitioner_ladders() {
    let table: &[(&str, i64, Codes)] = &[
        ("rn", 29, &[]),
        ("rn", 30, &[("99426", 1)]),
        ("rn", 60, &[("99426", 1), ("99427", 1)]),
        ("rn", 150, &[("99426", 1), ("99427", 2)]),
        ("dr", 30, &[("99424", 1)]),
        ("dr", 95, &[("99424", 1), ("99425", 2)]),
    ];
    for (who, minutes, want) in table {
        let mut d = pcm_patient();
        ix(&mut d, 3, "10:00:00", minutes * 60, who, Program::Pcm);
        let e = enc(&d, "2026-11");
        assert_eq!(codes(&e), want.to_vec(), "{who} {minutes} min");
        if !want.is_empty() {
            assert_eq!(e.lines[0].diagnoses, vec!["I50.9"]);
        }
    }
}

#[test]
fn pcm_and_ccm_by_the_same_practitioner_bill_neither() {
    let mut d = pcm_patient();
    d.patients[0]
        .consents
        .push(base().patients[0].consents[0].clone());
    ix(&mut d, 3, "10:00:00", 35 * 60, "rn", Program::Pcm);
    ix(&mut d, 4, "10:00:00", 25 * 60, "rn", Program::Ccm);
    let e = enc(&d, "2026-11");
    assert!(codes(&e).is_empty(), "{:?}", codes(&e));
    assert!(has_exception(
        &e,
        "CCM and PCM by the same billing practitioner"
    ));
}

// Rules 9–11 RPM device ---------------------------------------------------------------------------

#[test]
fn r09_periods_are_30_days_from_setup_and_billed_in_the_month_they_end() {
    let mut d = base();
    d.patients[0].consents.clear();
    enrol_rpm(&mut d, "2026-10-20");
    reading_days(&mut d, "2026-10-20", 60); // every day of two periods
    let e = enc(&d, "2026-11");
    assert_eq!(e.rpm_periods.len(), 1);
    assert_eq!(
        (
            e.rpm_periods[0].start,
            e.rpm_periods[0].end,
            e.rpm_periods[0].days
        ),
        (date("2026-10-20"), date("2026-11-18"), 30)
    );
    let dev: Vec<_> = e.lines.iter().filter(|l| l.code == "99454").collect();
    assert_eq!(dev.len(), 1);
    assert_eq!(dev[0].date_of_service, date("2026-11-18"));
    // The next period (Nov 19 – Dec 18) is billed in December.
    let dec = enc(&d, "2026-12");
    assert_eq!(dec.rpm_periods[0].start, date("2026-11-19"));
    assert!(
        dec.lines
            .iter()
            .any(|l| l.code == "99454" && l.date_of_service == date("2026-12-18"))
    );
}

#[test]
fn r10_reading_day_thresholds_99445_vs_99454() {
    for (days, want) in [
        (0, None),
        (1, None),
        (2, Some("99445")),
        (15, Some("99445")),
        (16, Some("99454")),
        (30, Some("99454")),
    ] {
        let mut d = base();
        d.patients[0].consents.clear();
        enrol_rpm(&mut d, "2026-10-20");
        reading_days(&mut d, "2026-10-20", days);
        let e = enc(&d, "2026-11");
        let got = e
            .lines
            .iter()
            .find(|l| l.code == "99445" || l.code == "99454")
            .map(|l| l.code.as_str());
        assert_eq!(got, want, "{days} days");
        assert_eq!(e.rpm_periods[0].days, days as u32);
        // 99445 and 99454 never together.
        assert!(!(codes(&e).contains(&("99445", 1)) && codes(&e).contains(&("99454", 1))));
    }
}

#[test]
fn r10_manual_readings_and_repeat_readings_do_not_add_days() {
    let mut d = base();
    d.patients[0].consents.clear();
    enrol_rpm(&mut d, "2026-10-20");
    reading_days(&mut d, "2026-11-01", 15);
    // Three more readings on Nov 2 (already a day), and manual readings on 5 new days.
    for h in ["10", "14", "20"] {
        reading(
            &mut d,
            &format!("2026-11-02T{h}:00:00-05:00"),
            ReadingSource::Device,
        );
    }
    for day in 20..25 {
        reading(
            &mut d,
            &format!("2026-10-{day}T09:00:00-04:00"),
            ReadingSource::Manual,
        );
    }
    let e = enc(&d, "2026-11");
    assert_eq!(e.rpm_periods[0].days, 15);
    assert!(codes(&e).contains(&("99445", 1)));
}

#[test]
fn r10_reading_days_in_a_stay_or_after_death_do_not_count() {
    let mut d = base();
    d.patients[0].consents.clear();
    enrol_rpm(&mut d, "2026-10-20");
    d.patients[0].stays.push(Stay {
        kind: StayKind::Inpatient,
        from: date("2026-10-25"),
        to: date("2026-10-29"),
    });
    d.patients[0].died_on = Some(date("2026-11-10"));
    reading_days(&mut d, "2026-10-20", 30);
    let e = enc(&d, "2026-11");
    // Oct 20–Nov 10 is 22 days, minus 5 stay days = 17 days; period cut short at death.
    assert_eq!(e.rpm_periods[0].days, 17);
    assert_eq!(e.rpm_periods[0].end, date("2026-11-10"));
    let line = e.lines.iter().find(|l| l.code == "99454").expect("99454");
    assert_eq!(line.date_of_service, date("2026-11-10"));
}

#[test]
fn r11_99453_once_on_the_first_earning_period() {
    let mut d = base();
    d.patients[0].consents.clear();
    enrol_rpm(&mut d, "2026-09-20");
    reading_days(&mut d, "2026-09-21", 1); // period 1 (Sep 20 – Oct 19): 1 day, earns nothing
    reading_days(&mut d, "2026-10-20", 20); // period 2 (Oct 20 – Nov 18): earns 99454
    reading_days(&mut d, "2026-11-19", 5); // period 3 (Nov 19 – Dec 18): earns 99445
    let oct = enc(&d, "2026-10");
    assert!(!codes(&oct).iter().any(|(c, _)| *c == "99453"));
    let nov = enc(&d, "2026-11");
    let setup = nov
        .lines
        .iter()
        .find(|l| l.code == "99453")
        .expect("99453 in November");
    assert_eq!(setup.date_of_service, date("2026-09-20"));
    let dec = enc(&d, "2026-12");
    assert!(codes(&dec).contains(&("99445", 1)));
    assert!(!codes(&dec).iter().any(|(c, _)| *c == "99453"));
}

#[test]
fn rpm_requires_consent_and_revocation_stops_counting_on_its_date() {
    let mut d = base();
    d.patients[0].consents.clear();
    enrol_rpm(&mut d, "2026-10-20");
    reading_days(&mut d, "2026-10-20", 30);
    d.patients[0].consents[0].revoked_on = Some(date("2026-11-01"));
    let e = enc(&d, "2026-11");
    // Days Oct 20–31 count (12); the period is cut at Oct 31, so it is billed in October.
    assert!(e.rpm_periods.is_empty());
    let oct = enc(&d, "2026-10");
    assert_eq!(
        (oct.rpm_periods[0].end, oct.rpm_periods[0].days),
        (date("2026-10-31"), 12)
    );
    assert!(codes(&oct).contains(&("99445", 1)));
    let mut none = base();
    none.patients[0].consents.clear();
    enrol_rpm(&mut none, "2026-10-20");
    none.patients[0].consents.clear();
    reading_days(&mut none, "2026-10-20", 30);
    let e = enc(&none, "2026-11");
    assert!(codes(&e).is_empty());
    assert!(has_exception(&e, "no RPM consent in effect"));
}

// Rule 12 RPM management -------------------------------------------------------------------------

#[test]
fn r12_management_ladder_99470_vs_99457_and_99458() {
    let table: &[(i64, Codes)] = &[
        (9, &[]),
        (10, &[("99470", 1)]),
        (19, &[("99470", 1)]),
        (20, &[("99457", 1)]),
        (39, &[("99457", 1)]),
        (40, &[("99457", 1), ("99458", 1)]),
        (60, &[("99457", 1), ("99458", 2)]),
        (100, &[("99457", 1), ("99458", 2)]),
    ];
    for (minutes, want) in table {
        let mut d = base();
        d.patients[0].consents.clear();
        enrol_rpm(&mut d, "2026-11-20"); // first period ends in December: no device lines
        ix(&mut d, 3, "10:00:00", minutes * 60, "rn", Program::Rpm);
        let e = enc(&d, "2026-11");
        assert_eq!(codes(&e), want.to_vec(), "{minutes} min");
    }
}

#[test]
fn r12_management_needs_an_interactive_communication() {
    let mut d = base();
    d.patients[0].consents.clear();
    enrol_rpm(&mut d, "2026-11-20");
    ix_at(
        &mut d,
        ts("2026-11-03T10:00:00-05:00"),
        ts("2026-11-03T10:25:00-05:00"),
        "rn",
        Program::Rpm,
        false,
    );
    let e = enc(&d, "2026-11");
    assert!(codes(&e).is_empty());
    assert!(has_exception(&e, "no interactive communication"));
    // One short interactive call makes the whole month's time billable.
    ix_at(
        &mut d,
        ts("2026-11-04T10:00:00-05:00"),
        ts("2026-11-04T10:02:00-05:00"),
        "rn",
        Program::Rpm,
        true,
    );
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("99457", 1)]);
}

// Rule 13 separate buckets -----------------------------------------------------------------------

#[test]
fn r13_rpm_and_ccm_time_never_add_up() {
    let mut d = base();
    enrol_rpm(&mut d, "2026-11-20");
    ix(&mut d, 3, "10:00:00", 15 * 60, "rn", Program::Ccm);
    ix(&mut d, 4, "10:00:00", 15 * 60, "rn", Program::Rpm);
    let e = enc(&d, "2026-11");
    assert_eq!((e.minutes.ccm, e.minutes.rpm), (15, 15));
    assert_eq!(codes(&e), vec![("99470", 1)]);
    assert!(has_exception(&e, "CCM needs 5 more minutes"));
}

// Rules 14–15 every line --------------------------------------------------------------------------

#[test]
fn r14_r15_date_of_service_place_and_npi() {
    let mut d = base();
    ccm(&mut d, 25, "rn");
    let e = enc(&d, "2026-11");
    let l = &e.lines[0];
    assert_eq!(l.date_of_service, date("2026-11-30"));
    assert_eq!(l.place_of_service, "32");
    assert_eq!(l.rendering_npi, "1234567893");
    d.patients[0].billing_practitioner = "dr2".into();
    d.facility.place_of_service = "11".into();
    let e = enc(&d, "2026-11");
    assert_eq!(
        (
            e.lines[0].place_of_service.as_str(),
            e.lines[0].rendering_npi.as_str()
        ),
        ("11", "1245319599")
    );
    // Died before the month: nothing, with a reason.
    d.patients[0].died_on = Some(date("2026-10-30"));
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert!(has_exception(&e, "died on 2026-10-30"));
}

// Rule 16 add-ons and lanes ----------------------------------------------------------------------

#[test]
fn r16_add_ons_never_without_their_base_and_one_lane() {
    let pairs = [
        ("99439", "99490"),
        ("99489", "99487"),
        ("99437", "99491"),
        ("99458", "99457"),
        ("99427", "99426"),
        ("99425", "99424"),
    ];
    for minutes in (0..=130).step_by(5) {
        for lane in [None, Some(CcmLane::Complex), Some(CcmLane::Practitioner)] {
            let mut d = base();
            enrol_rpm(&mut d, "2026-11-20");
            if let Some(l) = lane {
                d.patients[0].ccm_lane.insert("2026-11".parse().unwrap(), l);
            }
            ix(&mut d, 3, "10:00:00", minutes * 60, "rn", Program::Ccm);
            ix(&mut d, 4, "10:00:00", minutes * 60, "dr", Program::Ccm);
            ix(&mut d, 5, "10:00:00", minutes * 60, "rn", Program::Rpm);
            let e = enc(&d, "2026-11");
            let c: Vec<&str> = e.lines.iter().map(|l| l.code.as_str()).collect();
            for (addon, base_code) in pairs {
                assert!(!c.contains(&addon) || c.contains(&base_code), "{c:?}");
            }
            let lanes = ["99490", "99487", "99491"]
                .iter()
                .filter(|x| c.contains(x))
                .count();
            assert!(lanes <= 1, "{c:?}");
            assert!(!(c.contains(&"99470") && c.contains(&"99457")), "{c:?}");
        }
    }
}

#[test]
fn evidence_names_the_entries_behind_each_line() {
    let mut d = base();
    let a = ix(&mut d, 3, "10:00:00", 12 * 60, "rn", Program::Ccm);
    let b = ix(&mut d, 4, "10:00:00", 12 * 60, "rn", Program::Ccm);
    let aide = ix(&mut d, 5, "10:00:00", 12 * 60, "aide", Program::Ccm);
    let e = enc(&d, "2026-11");
    assert_eq!(e.lines[0].evidence, vec![a, b]);
    assert_eq!(e.evidence, vec![a, b]);
    assert!(!e.evidence.contains(&aide));
}

#[test]
fn voided_and_amended_entries_do_not_count() {
    let mut d = base();
    let a = ix(&mut d, 3, "10:00:00", 25 * 60, "rn", Program::Ccm);
    d.corrections.push(Correction {
        id: id(),
        target: a,
        kind: CorrectionKind::Void,
        at: ts("2026-11-04T10:00:00-05:00"),
        by: "rn".into(),
        reason: None,
    });
    assert_eq!(enc(&d, "2026-11").minutes.ccm, 0);
    let mut d = base();
    let a = ix(&mut d, 3, "10:00:00", 25 * 60, "rn", Program::Ccm);
    let b = ix(&mut d, 3, "10:00:00", 15 * 60, "rn", Program::Ccm);
    d.interactions.last_mut().unwrap().amends = Some(a);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.ccm, 15);
    assert!(!has_exception(&e, "overlapped"));
    let _ = b;
}

#[test]
fn a_patient_with_nothing_gets_a_reason() {
    let mut d = base();
    d.patients[0].consents.clear();
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert!(!e.exceptions.is_empty());
}
