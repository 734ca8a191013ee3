//! Hand-computed cases for rules 19–67 of `docs/billing-rules.md` (APCM, G0570, BHI 99484, RTM
//! and the concurrency matrix). Each case starts from one patient in America/New_York with two
//! chronic conditions and one behavioral condition, and changes one thing. November 2026 has 30
//! days; every November date is EST (-05:00), every October date after the 8th of March EDT.

use chrono::{DateTime, FixedOffset, NaiveDate};
use rounds_core::billing::rules::{ApcmBhi, QmbOn, RpmRtmConflict, TcmBlocksApcm};
use rounds_core::billing::{
    BillingRun, Encounter, ExceptionKind, ExceptionProgram, Revocation, RuleSet, bill,
};
use rounds_core::*;
use uuid::Uuid;

fn date(s: &str) -> NaiveDate {
    s.parse().expect("date")
}

fn ts(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).expect("timestamp")
}

/// The local offset of a 2026 date in New York.
fn offset(day: NaiveDate) -> &'static str {
    if day < date("2026-11-01") && day > date("2026-03-08") {
        "-04:00"
    } else {
        "-05:00"
    }
}

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
            cond("I10", true, None),
            cond("F32.9", false, None),
            cond("E11.9", true, None),
        ],
        consents: vec![],
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

fn cond(icd10: &str, chronic: bool, behavioral: Option<bool>) -> Condition {
    Condition {
        behavioral,
        icd10: icd10.into(),
        chronic,
    }
}

fn consent(d: &mut DataFile, program: Program, given: &str, revoked: Option<&str>) {
    d.patients[0].consents.push(Consent {
        id: None,
        program,
        given_on: date(given),
        method: Some("verbal".into()),
        by: Some("rn".into()),
        revoked_on: revoked.map(date),
        document: None,
    });
}

/// An APCM patient: the base patient with an APCM consent from January.
fn apcm_patient() -> DataFile {
    let mut d = base();
    consent(&mut d, Program::Apcm, "2026-01-10", None);
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
    ix_full(d, day, start, secs, who, program, true)
}

fn ix_full(
    d: &mut DataFile,
    day: u32,
    start: &str,
    secs: i64,
    who: &str,
    program: Program,
    interactive: bool,
) -> Uuid {
    let s = ts(&format!("2026-11-{day:02}T{start}-05:00"));
    let i = id();
    d.interactions.push(Interaction {
        id: i,
        patient: "p".into(),
        staff: who.into(),
        program,
        started_at: s,
        ended_at: s + chrono::Duration::seconds(secs),
        interactive,
        activity: None,
        note: None,
        amends: None,
    });
    i
}

/// `minutes` of `program` by `rn` on Nov 3 at 10:00.
fn minutes(d: &mut DataFile, program: Program, minutes: i64) {
    ix(d, 3, "10:00:00", minutes * 60, "rn", program);
}

fn rtm_reading(d: &mut DataFile, day: NaiveDate, source: ReadingSource) -> Uuid {
    let r = id();
    d.readings.push(Reading {
        program: Some(ReadingProgram::Rtm),
        id: r,
        patient: "p".into(),
        kind: ReadingKind::PainScore,
        systolic: None,
        diastolic: None,
        value: Some(4.0),
        unit: "{score}".into(),
        measured_at: ts(&format!("{day}T09:00:00{}", offset(day))),
        device: Some("app".into()),
        source,
    });
    r
}

/// RTM readings on `days` distinct days from `from`, one each at 09:00 local.
fn rtm_days(d: &mut DataFile, from: &str, days: i64) {
    let start = date(from);
    for k in 0..days {
        rtm_reading(d, start + chrono::Duration::days(k), ReadingSource::Device);
    }
}

fn rpm_days(d: &mut DataFile, from: &str, days: i64) {
    let start = date(from);
    for k in 0..days {
        let day = start + chrono::Duration::days(k);
        d.readings.push(Reading {
            program: None,
            id: id(),
            patient: "p".into(),
            kind: ReadingKind::BloodPressure,
            systolic: Some(130.0),
            diastolic: Some(80.0),
            value: None,
            unit: "mm[Hg]".into(),
            measured_at: ts(&format!("{day}T09:00:00{}", offset(day))),
            device: Some("cuff".into()),
            source: ReadingSource::Device,
        });
    }
}

fn enrol_rtm(d: &mut DataFile, setup: &str, kind: RtmKind) {
    d.patients[0].rtm = Some(RtmEnrolment {
        device_setup_on: Some(date(setup)),
        kind,
        devices: vec!["app".into()],
    });
    consent(d, Program::Rtm, setup, None);
}

fn enrol_rpm(d: &mut DataFile, setup: &str) {
    d.patients[0].rpm = Some(RpmEnrolment {
        device_setup_on: date(setup),
        devices: vec!["cuff".into()],
    });
    consent(d, Program::Rpm, setup, None);
}

fn external(d: &mut DataFile, code: &str, dos: &str, practitioner: &str) {
    d.patients[0].external_services.push(ExternalService {
        id: Some(format!("ext-{code}")),
        code: code.into(),
        date_of_service: date(dos),
        practitioner: practitioner.into(),
        npi: None,
        note: None,
    });
}

fn run_with(d: &DataFile, month: &str, rules: &RuleSet) -> BillingRun {
    let problems = validate::validate(d);
    assert!(problems.is_empty(), "{problems:?}");
    bill(d, month.parse().expect("month"), rules).expect("bill")
}

fn enc(d: &DataFile, month: &str) -> Encounter {
    run_with(d, month, &RuleSet::default()).encounters.remove(0)
}

fn enc_with(d: &DataFile, month: &str, rules: &RuleSet) -> Encounter {
    run_with(d, month, rules).encounters.remove(0)
}

/// (code, units) of the encounter's lines, in output order.
fn codes(e: &Encounter) -> Vec<(&str, u32)> {
    e.lines.iter().map(|l| (l.code.as_str(), l.units)).collect()
}

fn line<'a>(e: &'a Encounter, code: &str) -> &'a rounds_core::billing::Line {
    e.lines
        .iter()
        .find(|l| l.code == code)
        .unwrap_or_else(|| panic!("no {code} line in {:?}", codes(e)))
}

/// Whether some exception of `program` contains every one of `words` (any case).
fn said(e: &Encounter, program: ExceptionProgram, words: &[&str]) -> bool {
    e.exceptions.iter().any(|x| {
        let r = x.reason.to_lowercase();
        x.program == program && words.iter().all(|w| r.contains(&w.to_lowercase()))
    })
}

#[track_caller]
fn assert_said(e: &Encounter, program: ExceptionProgram, words: &[&str]) {
    assert!(
        said(e, program, words),
        "no {program:?} exception with {words:?} in {:#?}",
        e.exceptions
    );
}

// Rules 19–25: programs and shared definitions ---------------------------------------------------

#[test]
fn r19_one_persons_overlapping_time_counts_once_across_the_new_programs() {
    let mut d = apcm_patient();
    consent(&mut d, Program::Bhi, "2026-01-10", None);
    // 10:00–10:30 APCM and 10:15–10:45 BHI by the same nurse: 45 minutes of real time.
    ix(&mut d, 3, "10:00:00", 30 * 60, "rn", Program::Apcm);
    ix(&mut d, 3, "10:15:00", 30 * 60, "rn", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.apcm + e.minutes.bhi, 45, "{:?}", e.minutes);
    // Two different people at the same time each count.
    let mut d = apcm_patient();
    consent(&mut d, Program::Bhi, "2026-01-10", None);
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    d.patients[0]
        .consents
        .retain(|c| c.program != Program::Apcm);
    ix(&mut d, 3, "10:00:00", 12 * 60, "rn", Program::Bhi);
    ix(&mut d, 3, "10:00:00", 12 * 60, "rn2", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.bhi, 24);
    assert_eq!(codes(&e), vec![("99484", 1)]);
}

#[test]
fn r20_apcm_consent_revoked_mid_month_bills_that_month_but_not_the_next() {
    let mut d = base();
    consent(&mut d, Program::Apcm, "2026-01-10", Some("2026-11-15"));
    ix(&mut d, 20, "10:00:00", 5 * 60, "rn", Program::Apcm);
    ix(&mut d, 2, "10:00:00", 60, "rn", Program::Apcm);
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
    let mut dec = d.clone();
    dec.interactions.clear();
    let s = ts("2026-12-02T10:00:00-05:00");
    dec.interactions.push(Interaction {
        id: id(),
        patient: "p".into(),
        staff: "rn".into(),
        program: Program::Apcm,
        started_at: s,
        ended_at: s + chrono::Duration::minutes(5),
        interactive: true,
        activity: None,
        note: None,
        amends: None,
    });
    let e = enc(&dec, "2026-12");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "consent"]);
}

#[test]
fn r20_apcm_consent_given_on_the_last_day_covers_the_month() {
    let mut d = base();
    consent(&mut d, Program::Apcm, "2026-11-30", None);
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
}

#[test]
fn r20_rtm_revocation_stops_readings_and_time_on_its_date() {
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    d.patients[0].consents[0].revoked_on = Some(date("2026-11-11"));
    rtm_days(&mut d, "2026-11-01", 20); // Nov 1..20; only Nov 1..10 count
    ix(&mut d, 5, "10:00:00", 10 * 60, "rn", Program::Rtm);
    ix(&mut d, 12, "10:00:00", 30 * 60, "rn", Program::Rtm); // after revocation
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.rtm, 10);
    assert_eq!(e.rtm_periods.len(), 1);
    assert_eq!(e.rtm_periods[0].days, 10);
    assert_eq!(e.rtm_periods[0].end, date("2026-11-10"));
    assert_eq!(codes(&e), vec![("98975", 1), ("98979", 1), ("98984", 1)]);
    // A consent revoked on or before the month's first day: nothing.
    let mut d2 = d.clone();
    d2.patients[0].consents[0].revoked_on = Some(date("2026-11-01"));
    let e = enc(&d2, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Rtm, &["RTM", "consent"]);
}

fn bhi_patient() -> DataFile {
    let mut d = base();
    consent(&mut d, Program::Bhi, "2026-01-10", None);
    d
}

#[test]
fn r21_behavioral_condition_by_chapter_and_by_flag() {
    // F-chapter code: behavioral.
    let mut d = bhi_patient();
    minutes(&mut d, Program::Bhi, 20);
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("99484", 1)]);
    // behavioral: false overrides the chapter.
    let mut d2 = d.clone();
    d2.patients[0].conditions[1].behavioral = Some(false);
    let e = enc(&d2, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Bhi, &["behavioral"]);
    // Dementia coded G30.9 needs the flag.
    let mut d3 = d.clone();
    d3.patients[0].conditions[1] = cond("G30.9", true, None);
    assert!(enc(&d3, "2026-11").lines.is_empty());
    d3.patients[0].conditions[1].behavioral = Some(true);
    let e = enc(&d3, "2026-11");
    assert_eq!(codes(&e), vec![("99484", 1)]);
    assert_eq!(line(&e, "99484").diagnoses, vec!["G30.9".to_string()]);
}

#[test]
fn r22_qmb_period_covering_the_date_of_service_gives_g0558() {
    let mut d = apcm_patient();
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    d.patients[0].qmb_periods.push(QmbPeriod {
        from: date("2026-06-01"),
        to: None,
    });
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0558", 1)]);
    // Ends on the 29th: the DOS (30th) is not covered.
    d.patients[0].qmb_periods[0].to = Some(date("2026-11-29"));
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
    // Ends on the 30th: inclusive.
    d.patients[0].qmb_periods[0].to = Some(date("2026-11-30"));
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0558", 1)]);
    // Starts after the month: not QMB.
    d.patients[0].qmb_periods[0] = QmbPeriod {
        from: date("2026-12-01"),
        to: None,
    };
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
}

#[test]
fn r23_dates_of_service_monthly_device_and_setup() {
    let mut d = apcm_patient();
    consent(&mut d, Program::Bhi, "2026-01-10", None);
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    ix(&mut d, 4, "10:00:00", 60, "rn", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert_eq!(line(&e, "G0557").date_of_service, date("2026-11-30"));
    assert_eq!(line(&e, "G0570").date_of_service, date("2026-11-30"));
    // Death earlier in the month moves the monthly DOS.
    d.patients[0].died_on = Some(date("2026-11-20"));
    let e = enc(&d, "2026-11");
    assert_eq!(line(&e, "G0557").date_of_service, date("2026-11-20"));
    assert_eq!(line(&e, "G0570").date_of_service, date("2026-11-20"));
    // RTM: device code on the period's last day, 98975 on the set-up date, management month end.
    let mut r = base();
    enrol_rtm(&mut r, "2026-10-20", RtmKind::Musculoskeletal);
    rtm_days(&mut r, "2026-10-20", 16);
    ix(&mut r, 5, "10:00:00", 20 * 60, "rn", Program::Rtm);
    let e = enc(&r, "2026-11");
    assert_eq!(line(&e, "98977").date_of_service, date("2026-11-18"));
    assert_eq!(line(&e, "98975").date_of_service, date("2026-10-20"));
    assert_eq!(line(&e, "98980").date_of_service, date("2026-11-30"));
}

#[test]
fn r23_no_date_of_service_after_death() {
    let mut r = base();
    enrol_rtm(&mut r, "2026-11-01", RtmKind::Respiratory);
    rtm_days(&mut r, "2026-11-01", 25);
    ix(&mut r, 5, "10:00:00", 20 * 60, "rn", Program::Rtm);
    r.patients[0].died_on = Some(date("2026-11-12"));
    let e = enc(&r, "2026-11");
    assert!(!e.lines.is_empty());
    for l in &e.lines {
        assert!(l.date_of_service <= date("2026-11-12"), "{l:?}");
    }
    // The period is cut short by death: 12 days, the short code.
    assert_eq!(e.rtm_periods[0].end, date("2026-11-12"));
    assert!(e.lines.iter().any(|l| l.code == "98984"));
}

#[test]
fn r24_place_of_service_and_rendering_npi_on_every_new_line() {
    let mut d = apcm_patient();
    consent(&mut d, Program::Bhi, "2026-01-10", None);
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Cbt);
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    ix(&mut d, 4, "10:00:00", 60, "rn", Program::Bhi);
    rtm_days(&mut d, "2026-11-01", 30);
    ix(&mut d, 5, "10:00:00", 45 * 60, "rn", Program::Rtm);
    let e = enc(&d, "2026-11");
    assert_eq!(
        codes(&e),
        vec![
            ("98975", 1),
            ("98978", 1),
            ("98980", 1),
            ("98981", 1),
            ("G0557", 1),
            ("G0570", 1)
        ]
    );
    for l in &e.lines {
        assert_eq!(l.place_of_service, "32", "{}", l.code);
        assert_eq!(l.rendering_npi, "1234567893", "{}", l.code);
    }
}

#[test]
fn r25_diagnoses_per_program() {
    let mut d = apcm_patient();
    consent(&mut d, Program::Bhi, "2026-01-10", None);
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    ix(&mut d, 4, "10:00:00", 60, "rn", Program::Bhi);
    rtm_days(&mut d, "2026-11-01", 5);
    let e = enc(&d, "2026-11");
    let chronic = vec!["I10".to_string(), "E11.9".to_string()];
    assert_eq!(line(&e, "G0557").diagnoses, chronic);
    assert_eq!(line(&e, "G0570").diagnoses, vec!["F32.9".to_string()]);
    assert_eq!(line(&e, "98984").diagnoses, chronic);
    // Without chronic conditions, APCM and RTM lines carry all conditions.
    for c in &mut d.patients[0].conditions {
        c.chronic = false;
    }
    let e = enc(&d, "2026-11");
    let all = vec!["I10".to_string(), "F32.9".to_string(), "E11.9".to_string()];
    assert_eq!(line(&e, "G0556").diagnoses, all);
    assert_eq!(line(&e, "98984").diagnoses, all);
}

// Rules 26–29: APCM --------------------------------------------------------------------------

#[test]
fn r26_apcm_is_evaluated_only_with_a_consent_or_an_interaction() {
    let d = base();
    let e = enc(&d, "2026-11");
    assert!(
        !e.exceptions
            .iter()
            .any(|x| x.program == ExceptionProgram::Apcm)
    );
    let mut d = base();
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "consent"]);
}

#[test]
fn r26_each_apcm_requirement_blocks_the_line_with_a_reason() {
    let ready = || {
        let mut d = apcm_patient();
        ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
        d
    };
    assert_eq!(codes(&enc(&ready(), "2026-11")), vec![("G0557", 1)]);

    // a. consent given after the month
    let mut d = ready();
    d.patients[0].consents[0].given_on = date("2026-12-01");
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "consent"]);
    // b. no attestation, or one after the month
    let mut d = ready();
    d.practitioners[0].apcm_attested_on = None;
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "attest"]);
    d.practitioners[0].apcm_attested_on = Some(date("2026-12-01"));
    assert_said(&enc(&d, "2026-11"), ExceptionProgram::Apcm, &["attest"]);
    d.practitioners[0].apcm_attested_on = Some(date("2026-11-30"));
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
    // c. no initiating visit
    let mut d = ready();
    d.patients[0].initiating_visit_on = None;
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "initiating visit"]);
    // d. care plan established after the month
    let mut d = ready();
    d.patients[0]
        .care_plan
        .as_mut()
        .expect("care plan")
        .established_on = Some(date("2026-12-02"));
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "care plan"]);
    // e. no condition
    let mut d = ready();
    d.patients[0].conditions.clear();
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "condition"]);
}

#[test]
fn r27_no_activity_no_apcm_and_stay_time_is_reported_not_counted() {
    let d = apcm_patient();
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "activity"]);
    // Activity only inside a Part A stay: not counted, with the stay named.
    let mut d = apcm_patient();
    d.patients[0].stays.push(Stay {
        kind: StayKind::PartA,
        from: date("2026-11-01"),
        to: date("2026-11-10"),
    });
    ix(&mut d, 3, "10:00:00", 15 * 60, "rn", Program::Apcm);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "activity"]);
    assert_said(&e, ExceptionProgram::Apcm, &["not counted", "Part A"]);
    // Activity by staff who do not count, or after death, is not activity either.
    let mut d = apcm_patient();
    ix(&mut d, 3, "10:00:00", 15 * 60, "aide", Program::Apcm);
    ix(&mut d, 25, "10:00:00", 15 * 60, "rn", Program::Apcm);
    d.patients[0].died_on = Some(date("2026-11-20"));
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["after the date of death"]);
}

#[test]
fn r28_levels_by_chronic_conditions_and_qmb() {
    let mk = |chronic: usize, qmb: bool| {
        let mut d = apcm_patient();
        ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
        d.patients[0].conditions = (0..chronic.max(1))
            .map(|k| cond(&format!("E1{k}.9"), k < chronic, None))
            .collect();
        if qmb {
            d.patients[0].qmb_periods.push(QmbPeriod {
                from: date("2026-01-01"),
                to: None,
            });
        }
        codes(&enc(&d, "2026-11"))
            .first()
            .map(|c| c.0.to_string())
            .unwrap_or_default()
    };
    assert_eq!(mk(0, false), "G0556");
    assert_eq!(mk(1, false), "G0556");
    assert_eq!(mk(1, true), "G0556");
    assert_eq!(mk(2, false), "G0557");
    assert_eq!(mk(2, true), "G0558");
    assert_eq!(mk(5, true), "G0558");
    // Minutes never change the level.
    let mut d = apcm_patient();
    ix(&mut d, 3, "10:00:00", 90 * 60, "rn", Program::Apcm);
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
}

#[test]
fn r29_apcm_minutes_are_reported_without_a_threshold() {
    let mut d = apcm_patient();
    ix(&mut d, 3, "10:00:00", 59, "rn", Program::Apcm);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.apcm, 0);
    assert_eq!(codes(&e), vec![("G0557", 1)]);
    ix(&mut d, 4, "10:00:00", 7 * 60 + 30, "rn", Program::Apcm);
    assert_eq!(enc(&d, "2026-11").minutes.apcm, 8);
}

// Rules 30–33: the behavioral-health add-ons ------------------------------------------------

fn apcm_bhi_patient() -> DataFile {
    let mut d = apcm_patient();
    consent(&mut d, Program::Bhi, "2026-01-10", None);
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    d
}

#[test]
fn r30_g0570_with_apcm_needs_no_minimum_time() {
    let mut d = apcm_bhi_patient();
    let b = ix(&mut d, 4, "10:00:00", 30, "rn", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("G0557", 1), ("G0570", 1)]);
    assert!(line(&e, "G0570").evidence.contains(&b));
}

#[test]
fn r31_g0570_names_what_is_missing() {
    // No BHI consent.
    let mut d = apcm_patient();
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    ix(&mut d, 4, "10:00:00", 10 * 60, "rn", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("G0557", 1)]);
    assert_said(&e, ExceptionProgram::Bhi, &["G0570", "consent"]);
    // No behavioral condition.
    let mut d = apcm_bhi_patient();
    ix(&mut d, 4, "10:00:00", 10 * 60, "rn", Program::Bhi);
    d.patients[0].conditions.remove(1);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("G0557", 1)]);
    assert_said(&e, ExceptionProgram::Bhi, &["G0570", "behavioral"]);
    // No qualifying BHI interaction (only an aide's).
    let mut d = apcm_bhi_patient();
    ix(&mut d, 4, "10:00:00", 10 * 60, "aide", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("G0557", 1)]);
    assert_said(&e, ExceptionProgram::Bhi, &["G0570", "interaction"]);
}

#[test]
fn r32_g0568_and_g0569_are_never_produced() {
    let mut d = apcm_bhi_patient();
    ix(&mut d, 4, "10:00:00", 120 * 60, "rn", Program::Bhi);
    ix(&mut d, 5, "10:00:00", 120 * 60, "dr", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert!(
        !e.lines
            .iter()
            .any(|l| l.code == "G0568" || l.code == "G0569")
    );
    assert_eq!(codes(&e), vec![("G0557", 1), ("G0570", 1)]);
}

#[test]
fn r33_with_apcm_bhi_time_is_billed_as_g0570_never_99484() {
    let mut d = apcm_bhi_patient();
    ix(&mut d, 4, "10:00:00", 45 * 60, "rn", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("G0557", 1), ("G0570", 1)]);
    assert_eq!(e.minutes.bhi, 45);
    // Without a surviving APCM line (no activity), the same time is 99484.
    d.interactions.retain(|i| i.program != Program::Apcm);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("99484", 1)]);
}

// Rules 34–37: general BHI ------------------------------------------------------------------

#[test]
fn r34_bhi_requirements() {
    // Evaluated only with a consent or an interaction.
    let e = enc(&base(), "2026-11");
    assert!(
        !e.exceptions
            .iter()
            .any(|x| x.program == ExceptionProgram::Bhi)
    );
    // Interaction without consent.
    let mut d = base();
    minutes(&mut d, Program::Bhi, 25);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Bhi, &["BHI", "consent"]);
    // No behavioral condition.
    let mut d = bhi_patient();
    minutes(&mut d, Program::Bhi, 25);
    d.patients[0].conditions.remove(1);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Bhi, &["behavioral"]);
    // No initiating visit.
    let mut d = bhi_patient();
    minutes(&mut d, Program::Bhi, 25);
    d.patients[0].initiating_visit_on = Some(date("2026-12-01"));
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Bhi, &["initiating visit"]);
}

#[test]
fn r35_99484_at_twenty_minutes_one_unit_only() {
    let mut d = bhi_patient();
    ix(&mut d, 3, "10:00:00", 20 * 60 - 1, "rn", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_eq!(e.minutes.bhi, 19);
    assert_said(
        &e,
        ExceptionProgram::Bhi,
        &["BHI needs 1 more minute for 99484"],
    );
    ix(&mut d, 4, "10:00:00", 1, "dr", Program::Bhi); // the practitioner's own second counts
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.bhi, 20);
    assert_eq!(codes(&e), vec![("99484", 1)]);
    ix(&mut d, 5, "10:00:00", 90 * 60, "rn", Program::Bhi);
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("99484", 1)]);
}

#[test]
fn r36_bhi_time_in_a_stay_counts_but_not_after_death_or_by_non_counting_staff() {
    let mut d = bhi_patient();
    d.patients[0].stays.push(Stay {
        kind: StayKind::Inpatient,
        from: date("2026-11-01"),
        to: date("2026-11-10"),
    });
    ix(&mut d, 3, "10:00:00", 20 * 60, "rn", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.bhi, 20);
    assert_eq!(codes(&e), vec![("99484", 1)]);
    // Aide time and time after death never count.
    let mut d = bhi_patient();
    ix(&mut d, 3, "10:00:00", 15 * 60, "rn", Program::Bhi);
    ix(&mut d, 4, "10:00:00", 15 * 60, "aide", Program::Bhi);
    ix(&mut d, 25, "10:00:00", 15 * 60, "rn", Program::Bhi);
    d.patients[0].died_on = Some(date("2026-11-20"));
    let e = enc(&d, "2026-11");
    assert_eq!(e.minutes.bhi, 15);
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Bhi, &["after the date of death"]);
}

#[test]
fn r37_99484_is_billed_alongside_ccm() {
    let mut d = bhi_patient();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    ix(&mut d, 3, "10:00:00", 20 * 60, "rn", Program::Ccm);
    ix(&mut d, 4, "10:00:00", 20 * 60, "rn", Program::Bhi);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("99484", 1), ("99490", 1)]);
    assert_eq!((e.minutes.ccm, e.minutes.bhi), (20, 20));
}

// Rules 38–42: RTM --------------------------------------------------------------------------

#[test]
fn r38_rtm_needs_consent_and_setup_but_no_initiating_visit() {
    // Readings without a set-up.
    let mut d = base();
    consent(&mut d, Program::Rtm, "2026-10-01", None);
    rtm_days(&mut d, "2026-11-01", 20);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Rtm, &["RTM", "set-up"]);
    // Set up but no consent.
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    d.patients[0].consents.clear();
    rtm_days(&mut d, "2026-11-01", 20);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Rtm, &["RTM", "consent"]);
    // No initiating visit, no care plan: still billed.
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    d.patients[0].initiating_visit_on = None;
    d.patients[0].care_plan = None;
    rtm_days(&mut d, "2026-11-01", 20);
    assert_eq!(
        codes(&enc(&d, "2026-11")),
        vec![("98975", 1), ("98976", 1), ("98979", 0)]
            .into_iter()
            .filter(|c| c.1 > 0)
            .collect::<Vec<_>>()
    );
}

#[test]
fn r39_rtm_periods_are_30_days_from_setup_billed_in_the_month_they_end() {
    let mut d = base();
    enrol_rtm(&mut d, "2026-10-20", RtmKind::Respiratory);
    rtm_days(&mut d, "2026-10-20", 60);
    let oct = enc(&d, "2026-10");
    assert!(oct.rtm_periods.is_empty(), "{:?}", oct.rtm_periods);
    assert!(!oct.lines.iter().any(|l| l.code == "98976"));
    let nov = enc(&d, "2026-11");
    assert_eq!(nov.rtm_periods.len(), 1);
    assert_eq!(
        (nov.rtm_periods[0].start, nov.rtm_periods[0].end),
        (date("2026-10-20"), date("2026-11-18"))
    );
    assert_eq!(nov.rtm_periods[0].days, 30);
    let dec = enc(&d, "2026-12");
    assert_eq!(
        (dec.rtm_periods[0].start, dec.rtm_periods[0].end),
        (date("2026-11-19"), date("2026-12-18"))
    );
    assert!(dec.lines.iter().any(|l| l.code == "98976"));
    assert!(!dec.lines.iter().any(|l| l.code == "98975"));
}

#[test]
fn r40_device_codes_by_day_count_and_kind() {
    let device = |days: i64, kind: RtmKind| {
        let mut d = base();
        enrol_rtm(&mut d, "2026-11-01", kind);
        rtm_days(&mut d, "2026-11-01", days);
        let e = enc(&d, "2026-11");
        let code: Vec<String> = e
            .lines
            .iter()
            .filter(|l| l.code != "98975")
            .map(|l| l.code.clone())
            .collect();
        (code, e)
    };
    let (c, e) = device(1, RtmKind::Respiratory);
    assert!(c.is_empty());
    assert_said(&e, ExceptionProgram::Rtm, &["98984"]);
    let (_, e) = device(1, RtmKind::Musculoskeletal);
    assert_said(&e, ExceptionProgram::Rtm, &["98985"]);
    let (_, e) = device(1, RtmKind::Cbt);
    assert_said(&e, ExceptionProgram::Rtm, &["98986"]);
    assert_eq!(device(2, RtmKind::Respiratory).0, vec!["98984"]);
    assert_eq!(device(15, RtmKind::Respiratory).0, vec!["98984"]);
    assert_eq!(device(16, RtmKind::Respiratory).0, vec!["98976"]);
    assert_eq!(device(2, RtmKind::Musculoskeletal).0, vec!["98985"]);
    assert_eq!(device(16, RtmKind::Musculoskeletal).0, vec!["98977"]);
    assert_eq!(device(2, RtmKind::Cbt).0, vec!["98986"]);
    assert_eq!(device(30, RtmKind::Cbt).0, vec!["98978"]);
}

#[test]
fn r40_manual_readings_rpm_readings_stays_and_repeats_do_not_make_days() {
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    rtm_days(&mut d, "2026-11-01", 15); // Nov 1..15
    // Repeats on the same day, manual readings and RPM readings add nothing.
    rtm_reading(&mut d, date("2026-11-01"), ReadingSource::Device);
    rtm_reading(&mut d, date("2026-11-20"), ReadingSource::Manual);
    rpm_days(&mut d, "2026-11-21", 3);
    assert_eq!(enc(&d, "2026-11").rtm_periods[0].days, 15);
    // A patient-reported reading does count.
    rtm_reading(&mut d, date("2026-11-25"), ReadingSource::PatientReported);
    let e = enc(&d, "2026-11");
    assert_eq!(e.rtm_periods[0].days, 16);
    assert!(e.lines.iter().any(|l| l.code == "98976"));
    // A Part A stay over the last days removes them.
    d.patients[0].stays.push(Stay {
        kind: StayKind::PartA,
        from: date("2026-11-15"),
        to: date("2026-11-30"),
    });
    assert_eq!(enc(&d, "2026-11").rtm_periods[0].days, 14);
}

#[test]
fn r41_98975_once_on_the_first_earning_period() {
    let mut d = base();
    enrol_rtm(&mut d, "2026-10-01", RtmKind::Respiratory);
    // First period Oct 1–30: one day only. Second Oct 31–Nov 29: 5 days.
    rtm_days(&mut d, "2026-10-05", 1);
    rtm_days(&mut d, "2026-11-10", 5);
    let oct = enc(&d, "2026-10");
    assert!(!oct.lines.iter().any(|l| l.code == "98975"));
    let nov = enc(&d, "2026-11");
    assert_eq!(codes(&nov), vec![("98975", 1), ("98984", 1)]);
    assert_eq!(line(&nov, "98975").date_of_service, date("2026-10-01"));
    // The next earning period does not bill it again.
    rtm_days(&mut d, "2026-12-01", 5);
    let dec = enc(&d, "2026-12");
    assert_eq!(codes(&dec), vec![("98984", 1)]);
}

#[test]
fn r42_management_ladder() {
    let mgmt = |mins: i64| {
        let mut d = base();
        enrol_rtm(&mut d, "2026-12-15", RtmKind::Respiratory); // no device period ends in Nov
        d.patients[0].consents[0].given_on = date("2026-10-01");
        minutes(&mut d, Program::Rtm, mins);
        let e = enc(&d, "2026-11");
        codes(&e)
            .into_iter()
            .map(|(c, u)| (c.to_string(), u))
            .collect::<Vec<_>>()
    };
    let v = |x: &[(&str, u32)]| {
        x.iter()
            .map(|(c, u)| (c.to_string(), *u))
            .collect::<Vec<_>>()
    };
    assert_eq!(mgmt(9), v(&[]));
    assert_eq!(mgmt(10), v(&[("98979", 1)]));
    assert_eq!(mgmt(19), v(&[("98979", 1)]));
    assert_eq!(mgmt(20), v(&[("98980", 1)]));
    assert_eq!(mgmt(39), v(&[("98980", 1)]));
    assert_eq!(mgmt(40), v(&[("98980", 1), ("98981", 1)]));
    assert_eq!(mgmt(60), v(&[("98980", 1), ("98981", 2)]));
    assert_eq!(mgmt(200), v(&[("98980", 1), ("98981", 2)]));
}

#[test]
fn r42_management_needs_an_interactive_communication() {
    let mut d = base();
    enrol_rtm(&mut d, "2026-12-15", RtmKind::Respiratory);
    d.patients[0].consents[0].given_on = date("2026-10-01");
    ix_full(&mut d, 3, "10:00:00", 25 * 60, "rn", Program::Rtm, false);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Rtm, &["interactive"]);
    ix_full(&mut d, 4, "10:00:00", 60, "rn", Program::Rtm, true);
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("98980", 1)]);
}

#[test]
fn r42_rtm_readings_never_make_rpm_days_nor_an_rpm_enrolment() {
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    rtm_days(&mut d, "2026-11-01", 20);
    let e = enc(&d, "2026-11");
    assert!(e.rpm_periods.is_empty());
    assert!(
        !e.exceptions
            .iter()
            .any(|x| x.program == ExceptionProgram::Rpm),
        "{:?}",
        e.exceptions
    );
    // And RPM readings never make RTM days.
    let mut d = base();
    enrol_rpm(&mut d, "2026-11-01");
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    rpm_days(&mut d, "2026-11-01", 20);
    let e = enc(&d, "2026-11");
    assert_eq!(e.rpm_periods[0].days, 20);
    assert_eq!(e.rtm_periods[0].days, 0);
}

// Rules 43–49: conflicts -------------------------------------------------------------------

#[test]
fn r43a_same_practitioner_tcm_blocks_apcm_another_practitioners_does_not() {
    let mut d = apcm_bhi_patient();
    ix(&mut d, 4, "10:00:00", 60, "rn", Program::Bhi);
    external(&mut d, "99496", "2026-11-09", "dr");
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty(), "{:?}", codes(&e));
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "TCM", "99496", "dr"]);
    // Another practitioner's TCM: APCM stands.
    let mut d = apcm_bhi_patient();
    external(&mut d, "99496", "2026-11-09", "other");
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
    // A TCM dated in another month does not block (default dos_month).
    let mut d = apcm_bhi_patient();
    external(&mut d, "99495", "2026-10-25", "dr");
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
}

#[test]
fn r43a_every_family_of_the_apcm_list_blocks_and_is_named() {
    for (code, family) in [
        ("99490", "CCM"),
        ("99487", "CCM"),
        ("99424", "PCM"),
        ("99426", "PCM"),
        ("99495", "TCM"),
        ("99452", "interprofessional"),
        ("G2250", "virtual check-in"),
        ("99421", "e-visit"),
    ] {
        let mut d = apcm_bhi_patient();
        external(&mut d, code, "2026-11-15", "dr");
        let e = enc(&d, "2026-11");
        assert!(e.lines.is_empty(), "{code}: {:?}", codes(&e));
        assert_said(&e, ExceptionProgram::Apcm, &["APCM", family, code]);
    }
}

#[test]
fn r43b_same_practitioner_cocm_removes_99484() {
    let mut d = bhi_patient();
    minutes(&mut d, Program::Bhi, 30);
    external(&mut d, "99492", "2026-11-02", "dr");
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Bhi, &["CoCM", "99492"]);
}

#[test]
fn r43c_apcm_by_another_practitioner_blocks_ours() {
    let mut d = apcm_bhi_patient();
    external(&mut d, "G0557", "2026-11-05", "other");
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(
        &e,
        ExceptionProgram::Apcm,
        &["APCM", "another practitioner"],
    );
}

#[test]
fn r43d_esrd_services_block_ccm() {
    for code in ["G0181", "G0182", "90951", "90960", "90970"] {
        let mut d = base();
        consent(&mut d, Program::Ccm, "2026-01-10", None);
        minutes(&mut d, Program::Ccm, 25);
        external(&mut d, code, "2026-11-07", "other");
        let e = enc(&d, "2026-11");
        assert!(e.lines.is_empty(), "{code}");
        assert_said(&e, ExceptionProgram::Ccm, &["CCM", code]);
    }
    // 90971 is outside the range.
    let mut d = base();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    minutes(&mut d, Program::Ccm, 25);
    external(&mut d, "90971", "2026-11-07", "other");
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("99490", 1)]);
}

#[test]
fn r43e_external_rpm_blocks_rtm_and_external_rtm_blocks_rpm() {
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    rtm_days(&mut d, "2026-11-01", 20);
    external(&mut d, "99454", "2026-11-20", "other");
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Rtm, &["RTM", "RPM", "99454"]);

    let mut d = base();
    enrol_rpm(&mut d, "2026-11-01");
    rpm_days(&mut d, "2026-11-01", 20);
    external(&mut d, "98977", "2026-11-20", "other");
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Rpm, &["RPM", "RTM", "98977"]);
}

#[test]
fn r44_apcm_wins_over_ccm_and_pcm_unless_ccm_is_chosen() {
    let mut d = apcm_bhi_patient();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    ix(&mut d, 5, "10:00:00", 25 * 60, "rn", Program::Ccm);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("G0557", 1)]);
    assert_said(&e, ExceptionProgram::Ccm, &["APCM", "CCM"]);
    d.patients[0]
        .program_choice
        .insert("2026-11".parse().expect("month"), Program::Ccm);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("99490", 1)]);
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "chosen"]);

    let mut d = apcm_bhi_patient();
    consent(&mut d, Program::Pcm, "2026-01-10", None);
    d.patients[0].pcm_condition = Some("E11.9".into());
    ix(&mut d, 5, "10:00:00", 35 * 60, "rn", Program::Pcm);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("G0557", 1)]);
    assert_said(&e, ExceptionProgram::Pcm, &["APCM", "PCM"]);
}

#[test]
fn r44_g0570_falls_with_its_apcm_line() {
    let mut d = apcm_bhi_patient();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    ix(&mut d, 4, "10:00:00", 25 * 60, "rn", Program::Bhi);
    ix(&mut d, 5, "10:00:00", 25 * 60, "rn", Program::Ccm);
    d.patients[0]
        .program_choice
        .insert("2026-11".parse().expect("month"), Program::Ccm);
    // APCM is dropped by the choice; BHI is then general BHI (25 min ≥ 20).
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("99484", 1), ("99490", 1)]);
}

#[test]
fn r45_ccm_and_pcm_unchanged() {
    let mut d = base();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    consent(&mut d, Program::Pcm, "2026-01-10", None);
    d.patients[0].pcm_condition = Some("E11.9".into());
    ix(&mut d, 3, "10:00:00", 25 * 60, "rn", Program::Ccm);
    ix(&mut d, 4, "10:00:00", 35 * 60, "rn", Program::Pcm);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Pcm, &["CCM", "PCM"]);
    d.patients[0]
        .program_choice
        .insert("2026-11".parse().expect("month"), Program::Pcm);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("99426", 1)]);
    assert_said(&e, ExceptionProgram::Ccm, &["chosen"]);
}

fn rpm_and_rtm() -> DataFile {
    let mut d = base();
    enrol_rpm(&mut d, "2026-11-01");
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    rpm_days(&mut d, "2026-11-01", 20);
    rtm_days(&mut d, "2026-11-01", 20);
    ix(&mut d, 5, "10:00:00", 25 * 60, "rn", Program::Rtm);
    d
}

#[test]
fn r46_rpm_and_rtm_in_one_month_bill_neither_until_chosen() {
    let mut d = rpm_and_rtm();
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty(), "{:?}", codes(&e));
    assert_said(&e, ExceptionProgram::Rpm, &["RPM", "RTM"]);
    assert_said(&e, ExceptionProgram::Rtm, &["RPM", "RTM"]);
    d.patients[0]
        .program_choice
        .insert("2026-11".parse().expect("month"), Program::Rtm);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("98975", 1), ("98976", 1), ("98980", 1)]);
    assert_said(&e, ExceptionProgram::Rpm, &["RPM", "RTM", "chosen"]);
    d.patients[0]
        .program_choice
        .insert("2026-11".parse().expect("month"), Program::Rpm);
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("99453", 1), ("99454", 1)]);
    assert_said(&e, ExceptionProgram::Rtm, &["RPM", "RTM", "chosen"]);
}

#[test]
fn r47_cocm_removes_g0570_only_when_same_practitioner() {
    let mut d = apcm_bhi_patient();
    ix(&mut d, 4, "10:00:00", 60, "rn", Program::Bhi);
    external(&mut d, "G2214", "2026-11-12", "dr");
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("G0557", 1)]);
    assert_said(&e, ExceptionProgram::Bhi, &["CoCM"]);
    let mut d = apcm_bhi_patient();
    ix(&mut d, 4, "10:00:00", 60, "rn", Program::Bhi);
    external(&mut d, "99493", "2026-11-12", "other");
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1), ("G0570", 1)]);
}

#[test]
fn r48_tcm_with_ccm_is_a_warning_and_the_lines_stand() {
    let mut d = base();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    minutes(&mut d, Program::Ccm, 25);
    external(&mut d, "99495", "2026-11-09", "dr");
    let e = enc(&d, "2026-11");
    assert_eq!(codes(&e), vec![("99490", 1)]);
    assert!(
        e.exceptions
            .iter()
            .any(|x| x.kind == ExceptionKind::Warning && x.reason.contains("TCM"))
    );
    // Another practitioner's TCM: no warning.
    let mut d = base();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    minutes(&mut d, Program::Ccm, 25);
    external(&mut d, "99495", "2026-11-09", "other");
    assert!(!said(&enc(&d, "2026-11"), ExceptionProgram::Ccm, &["TCM"]));
}

#[test]
fn r49_program_choice_outside_a_conflict_has_no_effect() {
    let mut d = base();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    minutes(&mut d, Program::Ccm, 25);
    let before = enc(&d, "2026-11");
    d.patients[0]
        .program_choice
        .insert("2026-11".parse().expect("month"), Program::Rtm);
    let after = enc(&d, "2026-11");
    assert_eq!(before, after);
    // Rule 33 is a substitution, not a conflict: choosing BHI does not give 99484 over G0570.
    let mut d = apcm_bhi_patient();
    ix(&mut d, 4, "10:00:00", 25 * 60, "rn", Program::Bhi);
    d.patients[0]
        .program_choice
        .insert("2026-11".parse().expect("month"), Program::Bhi);
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1), ("G0570", 1)]);
}

// Rules 50–52: output ----------------------------------------------------------------------

#[test]
fn r50_minutes_rtm_periods_and_exception_programs() {
    let mut d = apcm_bhi_patient();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    ix(&mut d, 4, "10:00:00", 21 * 60, "rn", Program::Bhi);
    ix(&mut d, 5, "10:00:00", 12 * 60, "rn", Program::Rtm);
    rtm_days(&mut d, "2026-11-01", 1);
    let e = enc(&d, "2026-11");
    assert_eq!((e.minutes.apcm, e.minutes.bhi, e.minutes.rtm), (1, 21, 12));
    assert_eq!(e.rtm_periods.len(), 1);
    assert_eq!(e.rtm_periods[0].days, 1);
    // The short-period exception belongs to RTM.
    assert_said(&e, ExceptionProgram::Rtm, &["98984"]);
    let json = serde_json::to_value(&e).expect("json");
    assert_eq!(json["minutes"]["apcm"], 1);
    assert_eq!(json["minutes"]["bhi"], 21);
    assert_eq!(json["minutes"]["rtm"], 12);
    assert_eq!(json["rtm_periods"][0]["days"], 1);
    // An exception caused by an external service belongs to the program that lost its line.
    let mut d = apcm_bhi_patient();
    external(&mut d, "99495", "2026-11-09", "dr");
    let e = enc(&d, "2026-11");
    let x = e
        .exceptions
        .iter()
        .find(|x| x.reason.contains("99495"))
        .expect("exception");
    assert_eq!(x.program, ExceptionProgram::Apcm);
    assert_eq!(serde_json::to_value(x).expect("json")["program"], "apcm");
}

#[test]
fn r51_lines_sorted_and_add_ons_only_with_their_base() {
    let mut d = apcm_bhi_patient();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Musculoskeletal);
    ix(&mut d, 4, "10:00:00", 10 * 60, "rn", Program::Bhi);
    ix(&mut d, 5, "10:00:00", 65 * 60, "rn", Program::Rtm);
    rtm_days(&mut d, "2026-11-01", 20);
    let e = enc(&d, "2026-11");
    let mut sorted = e.lines.clone();
    sorted.sort_by(|a, b| {
        (a.code.as_str(), a.date_of_service).cmp(&(b.code.as_str(), b.date_of_service))
    });
    assert_eq!(e.lines, sorted);
    assert_eq!(
        codes(&e),
        vec![
            ("98975", 1),
            ("98977", 1),
            ("98980", 1),
            ("98981", 2),
            ("G0557", 1),
            ("G0570", 1)
        ]
    );
    // A TCM removes APCM and so G0570; an RPM code removes 98980 and so 98981.
    external(&mut d, "99495", "2026-11-09", "dr");
    external(&mut d, "99457", "2026-11-09", "other");
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty(), "{:?}", codes(&e));
}

#[test]
fn r52_nothing_billable_has_a_reason() {
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Cbt);
    let e = enc(&d, "2026-11");
    assert!(e.lines.is_empty());
    assert!(!e.exceptions.is_empty());
}

// Rules 53–59: validation ------------------------------------------------------------------

/// The base file with one patient enrolled in everything, as JSON to break.
fn json() -> serde_json::Value {
    let mut d = apcm_bhi_patient();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    rtm_days(&mut d, "2026-11-01", 2);
    rpm_days(&mut d, "2026-11-01", 1);
    d.patients[0].qmb_periods.push(QmbPeriod {
        from: date("2026-01-01"),
        to: None,
    });
    external(&mut d, "99495", "2026-11-09", "dr");
    serde_json::to_value(&d).expect("json")
}

/// Parse a broken file: it must be rejected, and some problem must name `entry` and `field`.
#[track_caller]
fn rejected(v: &serde_json::Value, entry: &str, field: &str) {
    let text = serde_json::to_string(v).expect("text");
    let problems = match parse_data_file(&text) {
        Ok(_) => panic!("accepted a file that breaks {entry} {field}"),
        Err(p) => p.0,
    };
    assert!(
        problems
            .iter()
            .any(|p| p.entry.contains(entry) && p.field.contains(field)),
        "no problem naming {entry:?} / {field:?}: {problems:#?}"
    );
}

#[test]
fn r53_to_r59_the_breadth_file_itself_is_valid() {
    let text = serde_json::to_string(&json()).expect("text");
    parse_data_file(&text).expect("valid");
}

#[test]
fn r53_unknown_programs_are_rejected_where_they_appear() {
    let mut v = json();
    v["patients"][0]["consents"][0]["program"] = "cocm".into();
    rejected(&v, "patient p", "program");
    let mut v = json();
    v["interactions"][0]["program"] = "apcm2".into();
    rejected(&v, "interaction", "program");
    let mut v = json();
    v["readings"][0]["program"] = "rpmx".into();
    rejected(&v, "reading", "program");
    let mut v = json();
    v["patients"][0]["program_choice"] = serde_json::json!({"2026-11": "tcm"});
    rejected(&v, "patient p", "program_choice");
}

#[test]
fn r54_reading_kind_must_match_its_program() {
    // An RTM reading of a physiologic kind.
    let mut v = json();
    let r = &mut v["readings"][0];
    assert_eq!(r["program"], "rtm");
    r["kind"] = "heart_rate".into();
    r["unit"] = "/min".into();
    r["value"] = 70.into();
    rejected(&v, "reading", "kind");
    // A therapeutic kind without a program (so RPM).
    let mut v = json();
    v["readings"][0]
        .as_object_mut()
        .expect("object")
        .remove("program");
    rejected(&v, "reading", "kind");
}

#[test]
fn r55_patient_reported_is_refused_on_rpm_readings() {
    let mut v = json();
    let r = v["readings"]
        .as_array_mut()
        .expect("array")
        .iter_mut()
        .find(|r| r["kind"] == "blood_pressure")
        .expect("rpm reading");
    r["source"] = "patient_reported".into();
    rejected(&v, "reading", "source");
}

#[test]
fn r56_therapeutic_values_and_units_are_checked() {
    for (kind, unit, bad) in [
        ("pain_score", "{score}", 11.0),
        ("range_of_motion", "deg", 361.0),
        ("medication_adherence", "{dose}", -1.0),
        ("therapy_adherence", "{session}", 101.0),
        ("therapy_response", "{score}", 1000.5),
    ] {
        let mut v = json();
        let r = &mut v["readings"][0];
        r["kind"] = kind.into();
        r["unit"] = unit.into();
        r["value"] = bad.into();
        rejected(&v, "reading", "value");
        // The same kind with a good value is accepted …
        v["readings"][0]["value"] = 1.into();
        let text = serde_json::to_string(&v).expect("text");
        parse_data_file(&text).unwrap_or_else(|p| panic!("{kind}: {p}"));
        // … and with a wrong unit or no value is not.
        let mut w = v.clone();
        w["readings"][0]["unit"] = "kg".into();
        rejected(&w, "reading", "unit");
        let mut w = v.clone();
        w["readings"][0]
            .as_object_mut()
            .expect("object")
            .remove("value");
        rejected(&w, "reading", "value");
    }
}

#[test]
fn r57_rtm_kind_and_setup_are_required() {
    let mut v = json();
    v["patients"][0]["rtm"]["kind"] = "cardiac".into();
    rejected(&v, "patient p", "rtm.kind");
    let mut v = json();
    v["patients"][0]["rtm"]
        .as_object_mut()
        .expect("object")
        .remove("device_setup_on");
    rejected(&v, "patient p", "rtm.device_setup_on");
}

#[test]
fn r58_external_services_are_checked() {
    let field = "external_services[0]";
    for bad in ["9949", "ABCDE", "99495X", "G22501", ""] {
        let mut v = json();
        v["patients"][0]["external_services"][0]["code"] = bad.into();
        rejected(&v, "patient p", &format!("{field}.code"));
    }
    for good in ["0001F", "G2250", "99495"] {
        let mut v = json();
        v["patients"][0]["external_services"][0]["code"] = good.into();
        let text = serde_json::to_string(&v).expect("text");
        parse_data_file(&text).unwrap_or_else(|p| panic!("{good}: {p}"));
    }
    let mut v = json();
    v["patients"][0]["external_services"][0]["date_of_service"] = "2026-11-31".into();
    rejected(&v, "patient p", "date_of_service");
    let mut v = json();
    v["patients"][0]["external_services"][0]["practitioner"] = "dr-nobody".into();
    rejected(&v, "patient p", &format!("{field}.practitioner"));
    let mut v = json();
    v["patients"][0]["external_services"][0]["npi"] = "1234567890".into();
    rejected(&v, "patient p", &format!("{field}.npi"));
}

#[test]
fn r59_qmb_periods_and_attestation_dates_are_checked() {
    let mut v = json();
    v["patients"][0]["qmb_periods"][0] =
        serde_json::json!({"from": "2026-05-01", "to": "2026-04-30"});
    rejected(&v, "patient p", "qmb_periods[0].to");
    let mut v = json();
    v["patients"][0]["qmb_periods"][0] = serde_json::json!({"from": "May 2026"});
    rejected(&v, "patient p", "qmb_periods");
    let mut v = json();
    v["practitioners"][0]["apcm_attested_on"] = "2026-02-30".into();
    rejected(&v, "practitioner", "apcm_attested_on");
}

// Rules 60–64: the words billing staff rely on ----------------------------------------------

#[test]
fn r60_apcm_reasons() {
    // Consent and attestation and activity are covered by r26/r27; blocked by family:
    let mut d = apcm_bhi_patient();
    external(&mut d, "99491", "2026-11-09", "dr");
    assert_said(
        &enc(&d, "2026-11"),
        ExceptionProgram::Apcm,
        &["APCM", "CCM"],
    );
    let mut d = apcm_bhi_patient();
    external(&mut d, "G0558", "2026-11-09", "dr2");
    assert_said(
        &enc(&d, "2026-11"),
        ExceptionProgram::Apcm,
        &["APCM", "another practitioner"],
    );
    let mut d = apcm_patient();
    d.practitioners[0].apcm_attested_on = None;
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    assert_said(
        &enc(&d, "2026-11"),
        ExceptionProgram::Apcm,
        &["APCM", "attest"],
    );
}

#[test]
fn r61_ccm_dropped_for_apcm_and_by_choice() {
    let mut d = apcm_bhi_patient();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    minutes(&mut d, Program::Ccm, 25);
    let e = enc(&d, "2026-11");
    assert_said(&e, ExceptionProgram::Ccm, &["APCM", "CCM"]);
    assert!(
        e.exceptions
            .iter()
            .any(|x| x.kind == ExceptionKind::Conflict)
    );
}

#[test]
fn r62_bhi_reasons() {
    let mut d = bhi_patient();
    minutes(&mut d, Program::Bhi, 5);
    assert_said(&enc(&d, "2026-11"), ExceptionProgram::Bhi, &["99484"]);
    let mut d = bhi_patient();
    minutes(&mut d, Program::Bhi, 25);
    external(&mut d, "99494", "2026-11-09", "dr");
    assert_said(&enc(&d, "2026-11"), ExceptionProgram::Bhi, &["CoCM"]);
}

#[test]
fn r63_rtm_reasons() {
    let mut d = rpm_and_rtm();
    d.patients[0]
        .program_choice
        .insert("2026-11".parse().expect("month"), Program::Rpm);
    assert_said(
        &enc(&d, "2026-11"),
        ExceptionProgram::Rtm,
        &["RPM", "RTM", "chosen"],
    );
}

#[test]
fn r64_tcm_warning_and_stay_wording() {
    let mut d = base();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    minutes(&mut d, Program::Ccm, 25);
    external(&mut d, "99496", "2026-11-02", "dr");
    assert_said(&enc(&d, "2026-11"), ExceptionProgram::Ccm, &["TCM"]);
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    d.patients[0].stays.push(Stay {
        kind: StayKind::Inpatient,
        from: date("2026-11-02"),
        to: date("2026-11-04"),
    });
    ix(&mut d, 3, "10:00:00", 15 * 60, "rn", Program::Rtm);
    assert_said(
        &enc(&d, "2026-11"),
        ExceptionProgram::Rtm,
        &["not counted", "inpatient"],
    );
}

// Rules 65–67: the settings, each flipped ----------------------------------------------------

#[test]
fn r65_apcm_settings_flipped() {
    // apcm_requires_activity = false: a month without activity bills.
    let d = apcm_patient();
    let rules = RuleSet {
        apcm_requires_activity: false,
        ..RuleSet::default()
    };
    assert_eq!(codes(&enc_with(&d, "2026-11", &rules)), vec![("G0557", 1)]);
    // apcm_revocation = on_date: a revocation on the 15th stops activity after it counting.
    let mut d = apcm_patient();
    d.patients[0].consents[0].revoked_on = Some(date("2026-11-15"));
    ix(&mut d, 20, "10:00:00", 60, "rn", Program::Apcm);
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
    let rules = RuleSet {
        apcm_revocation: Revocation::OnDate,
        ..RuleSet::default()
    };
    let e = enc_with(&d, "2026-11", &rules);
    assert!(e.lines.is_empty(), "{:?}", codes(&e));
    // apcm_bhi = standalone: 99484 with APCM, never G0570.
    let mut d = apcm_bhi_patient();
    ix(&mut d, 4, "10:00:00", 25 * 60, "rn", Program::Bhi);
    let rules = RuleSet {
        apcm_bhi: ApcmBhi::Standalone,
        ..RuleSet::default()
    };
    assert_eq!(
        codes(&enc_with(&d, "2026-11", &rules)),
        vec![("99484", 1), ("G0557", 1)]
    );
    // apcm_wins_over_ccm_pcm = false: neither until chosen.
    let mut d = apcm_bhi_patient();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    minutes(&mut d, Program::Ccm, 25);
    let rules = RuleSet {
        apcm_wins_over_ccm_pcm: false,
        ..RuleSet::default()
    };
    let e = enc_with(&d, "2026-11", &rules);
    assert!(e.lines.is_empty(), "{:?}", codes(&e));
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "CCM"]);
    // apcm_exclude_stay_activity = false: activity inside a stay counts.
    let mut d = apcm_patient();
    d.patients[0].stays.push(Stay {
        kind: StayKind::PartA,
        from: date("2026-11-01"),
        to: date("2026-11-10"),
    });
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    assert!(enc(&d, "2026-11").lines.is_empty());
    let rules = RuleSet {
        apcm_exclude_stay_activity: false,
        ..RuleSet::default()
    };
    assert_eq!(codes(&enc_with(&d, "2026-11", &rules)), vec![("G0557", 1)]);
    // qmb_on = any_day: a QMB period ending on the 10th still gives G0558.
    let mut d = apcm_patient();
    ix(&mut d, 3, "10:00:00", 60, "rn", Program::Apcm);
    d.patients[0].qmb_periods.push(QmbPeriod {
        from: date("2026-01-01"),
        to: Some(date("2026-11-10")),
    });
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
    let rules = RuleSet {
        qmb_on: QmbOn::AnyDay,
        ..RuleSet::default()
    };
    assert_eq!(codes(&enc_with(&d, "2026-11", &rules)), vec![("G0558", 1)]);
}

#[test]
fn r66_bhi_and_rtm_settings_flipped() {
    // bhi_threshold
    let mut d = bhi_patient();
    minutes(&mut d, Program::Bhi, 15);
    let rules = RuleSet {
        bhi_threshold: 15,
        ..RuleSet::default()
    };
    assert_eq!(codes(&enc_with(&d, "2026-11", &rules)), vec![("99484", 1)]);
    // bhi_count_stay_time = false
    let mut d = bhi_patient();
    d.patients[0].stays.push(Stay {
        kind: StayKind::PartA,
        from: date("2026-11-01"),
        to: date("2026-11-10"),
    });
    minutes(&mut d, Program::Bhi, 25);
    let rules = RuleSet {
        bhi_count_stay_time: false,
        ..RuleSet::default()
    };
    let e = enc_with(&d, "2026-11", &rules);
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Bhi, &["not counted", "Part A"]);
    // bhi_revocation = on_date
    let mut d = base();
    consent(&mut d, Program::Bhi, "2026-01-10", Some("2026-11-02"));
    ix(&mut d, 5, "10:00:00", 25 * 60, "rn", Program::Bhi);
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("99484", 1)]);
    let rules = RuleSet {
        bhi_revocation: Revocation::OnDate,
        ..RuleSet::default()
    };
    assert!(enc_with(&d, "2026-11", &rules).lines.is_empty());
    // RTM periods, day thresholds and management ladder
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    rtm_days(&mut d, "2026-11-01", 3);
    ix(&mut d, 5, "10:00:00", 15 * 60, "rn", Program::Rtm);
    assert_eq!(
        codes(&enc(&d, "2026-11")),
        vec![("98975", 1), ("98979", 1), ("98984", 1)]
    );
    let rules = RuleSet {
        rtm_period_days: 10,
        rtm_min_days_short: 1,
        rtm_min_days_long: 3,
        rtm_mgmt_short_threshold: 5,
        rtm_mgmt_threshold: 15,
        rtm_mgmt_addon_block: 5,
        rtm_mgmt_addon_cap: Some(0),
        ..RuleSet::default()
    };
    // Periods Nov 1–10, 11–20, 21–30: all three end in November; the first has 3 days, the
    // long code at a minimum of 3; 15 minutes reach the 98980 threshold of 15, no add-on (cap 0).
    let e = enc_with(&d, "2026-11", &rules);
    assert_eq!(e.rtm_periods.len(), 3);
    assert_eq!(codes(&e), vec![("98975", 1), ("98976", 1), ("98980", 1)]);
    // rtm_mgmt_requires_interactive = false
    let mut d = base();
    enrol_rtm(&mut d, "2026-12-15", RtmKind::Respiratory);
    d.patients[0].consents[0].given_on = date("2026-10-01");
    ix_full(&mut d, 3, "10:00:00", 25 * 60, "rn", Program::Rtm, false);
    let rules = RuleSet {
        rtm_mgmt_requires_interactive: false,
        ..RuleSet::default()
    };
    assert_eq!(codes(&enc_with(&d, "2026-11", &rules)), vec![("98980", 1)]);
    // rtm_revocation = end_of_month: readings after a mid-month revocation still count.
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    d.patients[0].consents[0].revoked_on = Some(date("2026-11-11"));
    rtm_days(&mut d, "2026-11-01", 20);
    assert_eq!(enc(&d, "2026-11").rtm_periods[0].days, 10);
    let rules = RuleSet {
        rtm_revocation: Revocation::EndOfMonth,
        ..RuleSet::default()
    };
    assert_eq!(
        enc_with(&d, "2026-11", &rules).rtm_periods[0].days,
        20,
        "end_of_month revocation"
    );
    // rtm_exclude_stay_days = false
    let mut d = base();
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    rtm_days(&mut d, "2026-11-01", 20);
    d.patients[0].stays.push(Stay {
        kind: StayKind::PartA,
        from: date("2026-11-01"),
        to: date("2026-11-10"),
    });
    assert_eq!(enc(&d, "2026-11").rtm_periods[0].days, 10);
    let rules = RuleSet {
        rtm_exclude_stay_days: false,
        ..RuleSet::default()
    };
    assert_eq!(enc_with(&d, "2026-11", &rules).rtm_periods[0].days, 20);
}

#[test]
fn r67_tcm_service_period_and_rpm_first() {
    // A TCM on Oct 20 by the same practitioner: its service period runs to Nov 18.
    let mut d = apcm_bhi_patient();
    external(&mut d, "99495", "2026-10-20", "dr");
    assert_eq!(codes(&enc(&d, "2026-11")), vec![("G0557", 1)]);
    let rules = RuleSet {
        tcm_blocks_apcm: TcmBlocksApcm::ServicePeriod,
        ..RuleSet::default()
    };
    let e = enc_with(&d, "2026-11", &rules);
    assert!(e.lines.is_empty());
    assert_said(&e, ExceptionProgram::Apcm, &["APCM", "TCM"]);
    // rpm_rtm_conflict = rpm_first: RPM stands, RTM is dropped.
    let d = rpm_and_rtm();
    let rules = RuleSet {
        rpm_rtm_conflict: RpmRtmConflict::RpmFirst,
        ..RuleSet::default()
    };
    let e = enc_with(&d, "2026-11", &rules);
    assert_eq!(codes(&e), vec![("99453", 1), ("99454", 1)]);
    assert_said(&e, ExceptionProgram::Rtm, &["RPM", "RTM"]);
}

#[test]
fn r65_to_r67_settings_parse_from_toml_and_bad_values_are_refused() {
    let text = r#"
name = "custom"
apcm_bhi = "standalone"
qmb_on = "any_day"
tcm_blocks_apcm = "service_period"
rpm_rtm_conflict = "rpm_first"
rtm_mgmt_addon_cap = 3
bhi_count_stay_time = false
"#;
    let rules = RuleSet::from_toml(text).expect("parses");
    assert_eq!(rules.apcm_bhi, ApcmBhi::Standalone);
    assert_eq!(rules.qmb_on, QmbOn::AnyDay);
    assert_eq!(rules.tcm_blocks_apcm, TcmBlocksApcm::ServicePeriod);
    assert_eq!(rules.rpm_rtm_conflict, RpmRtmConflict::RpmFirst);
    assert_eq!(rules.rtm_mgmt_addon_cap, Some(3));
    assert!(!rules.bhi_count_stay_time);
    assert!(rules.apcm_requires_activity, "unset keeps its default");
    for bad in [
        "apcm_bhi = \"both\"",
        "qmb_on = \"monthly\"",
        "rpm_rtm_conflict = \"rtm_first\"",
        "apcm_requires_activty = true",
    ] {
        assert!(RuleSet::from_toml(bad).is_err(), "{bad}");
    }
}

// The worklist: what each new program still needs --------------------------------------------

#[test]
fn worklist_shows_apcm_activity_bhi_minutes_rtm_steps_and_conflicts() {
    use rounds_core::billing::worklist::worklist;
    let mut d = apcm_patient();
    consent(&mut d, Program::Ccm, "2026-01-10", None);
    consent(&mut d, Program::Bhi, "2026-01-10", None);
    enrol_rtm(&mut d, "2026-11-01", RtmKind::Respiratory);
    ix(&mut d, 5, "10:00:00", 25 * 60, "rn", Program::Ccm);
    ix(&mut d, 6, "10:00:00", 12 * 60, "rn", Program::Rtm);
    let items = worklist(&d, date("2026-11-10"), &RuleSet::default()).expect("worklist");
    let of = |p: Program| {
        items
            .iter()
            .find(|i| i.program == p)
            .unwrap_or_else(|| panic!("no {p:?} row"))
    };
    // No APCM activity yet: one interaction of any length earns G0557.
    assert_eq!(of(Program::Apcm).next_code.as_deref(), Some("G0557"));
    assert_eq!(of(Program::Apcm).minutes_to_next, Some(1));
    // BHI without APCM line: 20 minutes for 99484.
    assert_eq!(of(Program::Bhi).next_code.as_deref(), Some("99484"));
    assert_eq!(of(Program::Bhi).minutes_to_next, Some(20));
    // RTM: 12 minutes, 98980 at 20.
    assert_eq!(of(Program::Rtm).minutes, 12);
    assert_eq!(of(Program::Rtm).next_code.as_deref(), Some("98980"));
    assert_eq!(of(Program::Rtm).minutes_to_next, Some(8));
    // Once APCM has activity, its row is done, BHI is G0570 for one interaction, and CCM shows
    // it is blocked by APCM.
    ix(&mut d, 7, "10:00:00", 60, "rn", Program::Apcm);
    let items = worklist(&d, date("2026-11-10"), &RuleSet::default()).expect("worklist");
    let of = |p: Program| items.iter().find(|i| i.program == p).expect("row");
    assert_eq!(of(Program::Apcm).next_code, None);
    assert_eq!(of(Program::Bhi).next_code.as_deref(), Some("G0570"));
    assert!(
        of(Program::Ccm)
            .blocked_by
            .iter()
            .any(|b| b.contains("APCM")),
        "{:?}",
        of(Program::Ccm).blocked_by
    );
}
