//! Offline devices creating the same documents, logging, and merging: nothing hidden, nothing lost.

use chrono::{TimeZone, Utc};
use rounds_core::replica::{NewInteraction, NewReading};
use rounds_core::{
    DocumentId, Month, Program, ReadingKind, ReadingProgram, ReadingSource, Replica,
};
use rounds_tests::{sunnyvale, sync_all};

fn t(d: u32, h: u32, m: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, d, h, m, 0)
        .single()
        .expect("valid time")
}

fn device(dir: &tempfile::TempDir) -> Replica {
    let mut r = Replica::open(dir.path()).expect("open");
    let data = sunnyvale().expect("example");
    r.import(&data, t(1, 8, 0)).expect("import");
    r
}

fn call(patient: &str, staff: &str, day: u32, minutes: u32) -> NewInteraction {
    NewInteraction {
        patient: patient.into(),
        staff: staff.into(),
        program: Program::Ccm,
        started_at: t(day, 15, 0),
        ended_at: t(day, 15, minutes),
        interactive: true,
        activity: Some("phone_call".into()),
        note: Some("call".into()),
    }
}

fn december() -> Month {
    "2026-12".parse().expect("month")
}

/// Every interaction/reading/timer id in the December month of p-001.
fn entry_ids(r: &Replica) -> Vec<String> {
    let e = r.month_entries("p-001", december());
    let mut ids: Vec<String> = e.interactions.iter().map(|i| i.id.to_string()).collect();
    ids.extend(e.readings.iter().map(|x| x.id.to_string()));
    ids.extend(e.running_timers.iter().map(|x| x.id.to_string()));
    ids.sort();
    ids
}

#[test]
fn two_offline_devices_create_the_same_patient_month_and_merge() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (device(&da), device(&db));
    // Both create "p-001, December 2026" offline, each with its own entries.
    let a1 = a
        .log_interaction(call("p-001", "rn-lee", 2, 12), t(2, 16, 0))
        .unwrap();
    let timer = a
        .start_timer("p-001", "rn-lee", Program::Ccm, None, t(3, 14, 0))
        .unwrap();
    let b1 = b
        .log_interaction(call("p-001", "rn-okafor", 2, 9), t(2, 17, 0))
        .unwrap();
    let b2 = b
        .record_reading(
            NewReading {
                patient: "p-001".into(),
                kind: ReadingKind::BloodPressure,
                systolic: Some(138.0),
                diastolic: Some(84.0),
                value: None,
                unit: "mm[Hg]".into(),
                measured_at: t(2, 9, 0),
                device: Some("cuff-01".into()),
                source: ReadingSource::Device,
                program: None,
            },
            t(2, 9, 1),
        )
        .unwrap();
    let doc = DocumentId::patient_month("sunnyvale", "p-001", december());
    assert_ne!(a.heads(doc), b.heads(doc));

    let sent = sync_all(&mut a, "a", &mut b, "b").unwrap();
    assert!(sent > 0);
    let mut want = vec![
        a1.id.to_string(),
        timer.id.to_string(),
        b1.id.to_string(),
        b2.id.to_string(),
    ];
    want.sort();
    assert_eq!(entry_ids(&a), want);
    assert_eq!(entry_ids(&b), want);
    for id in a.document_ids() {
        assert_eq!(a.heads(id), b.heads(id), "heads of {id}");
    }
    // The timer started on A is running on B too, and B can stop it.
    assert_eq!(b.running_timers().len(), 1);
    let stopped = b.stop_timer(timer.id, true, None, t(3, 14, 25)).unwrap();
    assert_eq!((stopped.ended_at - stopped.started_at).num_minutes(), 25);
    sync_all(&mut a, "a", &mut b, "b").unwrap();
    assert!(a.running_timers().is_empty());
    let summary = a.patient_month_summary("p-001", december()).unwrap();
    assert_eq!(summary.minutes[&Program::Ccm], 12 + 9 + 25);
    assert_eq!(summary.reading_days, 1);

    // The state survives reopening the replica from disk.
    drop(a);
    let a = Replica::open(da.path()).unwrap();
    assert_eq!(entry_ids(&a), entry_ids(&b));
}

#[test]
fn three_devices_merged_in_different_orders_converge() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut r: Vec<Replica> = dirs.iter().map(device).collect();
    let staff = ["rn-lee", "rn-okafor", "lpn-ruiz"];
    let mut want = Vec::new();
    for (i, rep) in r.iter_mut().enumerate() {
        let e = rep
            .log_interaction(
                call("p-001", staff[i], 4 + i as u32, 5 + i as u32),
                t(9, 0, 0),
            )
            .unwrap();
        want.push(e.id.to_string());
        let e = rep
            .log_interaction(call("p-002", staff[i], 4, 7), t(9, 0, 1))
            .unwrap();
        want.push(e.id.to_string());
    }
    let (r0, rest) = r.split_at_mut(1);
    let (r1, r2) = rest.split_at_mut(1);
    let (r0, r1, r2) = (&mut r0[0], &mut r1[0], &mut r2[0]);
    // Order 1: 0↔1, then 1↔2, then 0↔1 again.  Order 2 is checked on fresh exports below.
    sync_all(r0, "r0", r1, "r1").unwrap();
    sync_all(r1, "r1", r2, "r2").unwrap();
    sync_all(r0, "r0", r1, "r1").unwrap();
    let ids = |rep: &Replica| {
        let mut v: Vec<String> = ["p-001", "p-002"]
            .iter()
            .flat_map(|p| rep.month_entries(p, december()).interactions)
            .map(|i| i.id.to_string())
            .collect();
        v.sort();
        v
    };
    want.sort();
    for rep in [&*r0, &*r1, &*r2] {
        assert_eq!(ids(rep), want);
    }
    for id in r0.document_ids() {
        assert_eq!(r0.heads(id), r1.heads(id));
        assert_eq!(r1.heads(id), r2.heads(id));
    }
    let exported: Vec<_> = [&*r0, &*r1, &*r2]
        .iter()
        .map(|x| x.export().unwrap().0)
        .collect();
    assert_eq!(exported[0], exported[1]);
    assert_eq!(exported[1], exported[2]);
}

#[test]
fn three_devices_merged_in_another_order_reach_the_same_state() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut r: Vec<Replica> = dirs.iter().map(device).collect();
    for (i, rep) in r.iter_mut().enumerate() {
        rep.log_interaction(call("p-003", "rn-lee", 10 + i as u32, 6), t(12, 0, 0))
            .unwrap();
    }
    let (r0, rest) = r.split_at_mut(1);
    let (r1, r2) = rest.split_at_mut(1);
    let (r0, r1, r2) = (&mut r0[0], &mut r1[0], &mut r2[0]);
    // Order 2: 2↔0, then 1↔2, then 0↔2.
    sync_all(r2, "r2", r0, "r0").unwrap();
    sync_all(r1, "r1", r2, "r2").unwrap();
    sync_all(r0, "r0", r2, "r2").unwrap();
    let doc = DocumentId::patient_month("sunnyvale", "p-003", december());
    assert_eq!(r0.heads(doc), r1.heads(doc));
    assert_eq!(r1.heads(doc), r2.heads(doc));
    assert_eq!(r0.month_entries("p-003", december()).interactions.len(), 3);
    assert_eq!(
        r0.patient_month_summary("p-003", december())
            .unwrap()
            .minutes[&Program::Ccm],
        18
    );
}

#[test]
fn concurrent_care_plan_edits_both_survive() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (device(&da), device(&db));
    a.edit_care_plan("p-001", "Goals: BP under 140/90.\n", t(1, 9, 0))
        .unwrap();
    sync_all(&mut a, "a", &mut b, "b").unwrap();
    a.edit_care_plan(
        "p-001",
        "Goals: BP under 140/90.\nDaily weights.\n",
        t(2, 9, 0),
    )
    .unwrap();
    b.edit_care_plan(
        "p-001",
        "Goals: BP under 140/90.\nLow-salt diet.\n",
        t(2, 9, 5),
    )
    .unwrap();
    sync_all(&mut a, "a", &mut b, "b").unwrap();
    let text_a = a.patient("p-001").unwrap().care_plan.unwrap().text.unwrap();
    let text_b = b.patient("p-001").unwrap().care_plan.unwrap().text.unwrap();
    assert_eq!(text_a, text_b);
    assert!(text_a.contains("Daily weights."), "{text_a}");
    assert!(text_a.contains("Low-salt diet."), "{text_a}");
    assert!(text_a.starts_with("Goals: BP under 140/90.\n"), "{text_a}");
}

#[test]
fn voided_and_amended_entries_stop_counting_but_stay_on_record() {
    let d = tempfile::tempdir().unwrap();
    let mut a = device(&d);
    let first = a
        .log_interaction(call("p-004", "rn-lee", 5, 20), t(5, 16, 0))
        .unwrap();
    let wrong = a
        .log_interaction(call("p-004", "rn-lee", 6, 30), t(6, 16, 0))
        .unwrap();
    a.amend_interaction(first.id, call("p-004", "rn-lee", 5, 15), t(7, 9, 0))
        .unwrap();
    a.void_entry(wrong.id, "rn-lee", Some("wrong patient".into()), t(7, 9, 1))
        .unwrap();
    let s = a.patient_month_summary("p-004", december()).unwrap();
    assert_eq!(s.minutes[&Program::Ccm], 15);
    let e = a.month_entries("p-004", december());
    assert_eq!(e.interactions.len(), 3);
    assert_eq!(e.corrections.len(), 1);
    assert!(
        a.void_entry(uuid::Uuid::now_v7(), "rn-lee", None, t(7, 9, 2))
            .is_err()
    );
}

#[test]
fn bad_actions_are_rejected_and_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut a = device(&d);
    let before: Vec<_> = a.document_ids().iter().map(|id| a.heads(*id)).collect();
    let mut backwards = call("p-001", "rn-lee", 5, 20);
    std::mem::swap(&mut backwards.started_at, &mut backwards.ended_at);
    let err = a
        .log_interaction(backwards, t(5, 16, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ended_at"), "{err}");
    let err = a
        .log_interaction(call("p-999", "rn-lee", 5, 20), t(5, 16, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("p-999"), "{err}");
    let err = a
        .log_interaction(call("p-001", "nobody", 5, 20), t(5, 16, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("staff") && err.contains("nobody"), "{err}");
    let err = a
        .record_reading(
            NewReading {
                patient: "p-001".into(),
                kind: ReadingKind::Spo2,
                systolic: None,
                diastolic: None,
                value: Some(140.0),
                unit: "%".into(),
                measured_at: t(5, 9, 0),
                device: None,
                source: ReadingSource::Manual,
                program: None,
            },
            t(5, 9, 0),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("value") && err.contains("140"), "{err}");
    let after: Vec<_> = a.document_ids().iter().map(|id| a.heads(*id)).collect();
    assert_eq!(before, after);
}

#[test]
fn rtm_readings_and_new_program_time_sync_like_rpm_and_bad_ones_are_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (device(&da), device(&db));
    let mut bhi = call("p-001", "rn-lee", 2, 14);
    bhi.program = Program::Bhi;
    let i = a.log_interaction(bhi, t(2, 16, 0)).unwrap();
    let pain = |program: Option<ReadingProgram>, source: ReadingSource| NewReading {
        patient: "p-001".into(),
        kind: ReadingKind::PainScore,
        systolic: None,
        diastolic: None,
        value: Some(6.0),
        unit: "{score}".into(),
        measured_at: t(2, 9, 0),
        device: Some("knee-app".into()),
        source,
        program,
    };
    let r = a
        .record_reading(
            pain(Some(ReadingProgram::Rtm), ReadingSource::PatientReported),
            t(2, 9, 1),
        )
        .unwrap();
    // A therapeutic kind on an RPM reading, and an RPM kind on an RTM one, are refused on the
    // tablet and write nothing.
    let before = a.heads(DocumentId::patient_month("sunnyvale", "p-001", december()));
    assert!(
        a.record_reading(pain(None, ReadingSource::Device), t(2, 9, 2))
            .is_err()
    );
    let mut hr = pain(Some(ReadingProgram::Rtm), ReadingSource::Device);
    hr.kind = ReadingKind::HeartRate;
    hr.unit = "/min".into();
    hr.value = Some(70.0);
    assert!(a.record_reading(hr, t(2, 9, 3)).is_err());
    assert_eq!(
        a.heads(DocumentId::patient_month("sunnyvale", "p-001", december())),
        before
    );

    sync_all(&mut a, "a", &mut b, "b").unwrap();
    let e = b.month_entries("p-001", december());
    let got = e
        .readings
        .iter()
        .find(|x| x.id == r.id)
        .expect("reading synced");
    assert_eq!(got.program, Some(ReadingProgram::Rtm));
    assert_eq!(got.kind, ReadingKind::PainScore);
    assert_eq!(got.source, ReadingSource::PatientReported);
    let got = e
        .interactions
        .iter()
        .find(|x| x.id == i.id)
        .expect("interaction synced");
    assert_eq!(got.program, Program::Bhi);
    let summary = b.patient_month_summary("p-001", december()).unwrap();
    assert_eq!(summary.minutes[&Program::Bhi], 14);
}
