//! The write policy on real changes: every action of a device replica passes it, and tampered
//! changes — the attacks a stolen tablet or a buggy app would make — are refused with the rule
//! they break. The replica refuses the same changes before they reach its disk.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, Automerge, AutomergeError, ROOT, ReadDoc};
use chrono::{DateTime, Utc};
use rounds_core::document::{self as d};
use rounds_core::policy::{DocScope, Pending, Rule, check_device_change};
use rounds_core::replica::{Acknowledgement, NewInteraction, NewReading};
use rounds_core::*;
use uuid::Uuid;

fn now() -> DateTime<Utc> {
    "2026-11-20T15:00:00Z".parse().unwrap()
}

fn tablet(dir: &std::path::Path) -> Replica {
    let data = parse_data_file(include_str!("../../examples/sunnyvale.json")).unwrap();
    let mut r = Replica::open(dir).unwrap();
    r.import(&data, now()).unwrap();
    r
}

fn interaction(patient: &str, staff: &str) -> NewInteraction {
    NewInteraction {
        patient: patient.into(),
        staff: staff.into(),
        program: Program::Ccm,
        started_at: "2026-11-20T14:00:00Z".parse().unwrap(),
        ended_at: "2026-11-20T14:12:00Z".parse().unwrap(),
        interactive: true,
        activity: Some("call".into()),
        note: None,
    }
}

/// Make a change on a copy of `doc` with a fresh actor and check it as the server would.
fn tampered(
    doc: &Automerge,
    scope: &DocScope,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError>,
) -> Result<(), rounds_core::policy::Refusal> {
    let mut copy = doc.fork();
    copy.set_actor(ActorId::random());
    copy.transact::<_, _, AutomergeError>(f).unwrap();
    let change = copy.get_last_local_change().unwrap();
    let expanded = rounds_core::sync::gate::expand(&change).unwrap();
    check_device_change(
        doc,
        &doc.get_heads(),
        scope,
        &expanded,
        &[],
        &mut Pending::default(),
    )
}

#[test]
fn every_action_of_a_tablet_passes_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = tablet(dir.path());
    let i = r
        .log_interaction(interaction("p-004", "rn-lee"), now())
        .unwrap();
    r.amend_interaction(i.id, interaction("p-004", "rn-okafor"), now())
        .unwrap();
    let t = r
        .start_timer("p-001", "rn-lee", Program::Ccm, None, now())
        .unwrap();
    r.stop_timer(t.id, true, Some("done".into()), now())
        .unwrap();
    r.void_entry(i.id, "rn-lee", Some("wrong patient".into()), now())
        .unwrap();
    let (reading, alerts) = r
        .record_reading_alerts(
            NewReading {
                patient: "p-007".into(),
                kind: ReadingKind::Spo2,
                systolic: None,
                diastolic: None,
                value: Some(86.0),
                unit: "%".into(),
                measured_at: now(),
                device: Some("cuff-07".into()),
                source: ReadingSource::Device,
                program: None,
            },
            now(),
        )
        .unwrap();
    assert_eq!(reading.patient, "p-007");
    assert_eq!(alerts.len(), 1, "SpO2 86 raises an alert");
    r.acknowledge_alert(
        alerts[0].id,
        Acknowledgement {
            by: "rn-lee".into(),
            note: "called".into(),
            minutes: 5,
            interactive: true,
        },
        now(),
    )
    .unwrap();
    r.resolve_alert(alerts[0].id, "rn-lee", None, now())
        .unwrap();
    r.edit_care_plan("p-001", "Walk daily.", now()).unwrap();
    let key = r
        .record_consent(
            "p-004",
            Consent {
                id: None,
                program: Program::Rpm,
                given_on: "2026-11-20".parse().unwrap(),
                method: Some("verbal".into()),
                by: Some("rn-lee".into()),
                revoked_on: None,
                document: None,
            },
            now(),
        )
        .unwrap();
    r.revoke_consent("p-004", &key, "2026-11-21".parse().unwrap(), now())
        .unwrap();
    // A brand-new month: its root fields and the facility's months index.
    let mut dec = interaction("p-002", "rn-lee");
    dec.started_at = "2026-12-02T14:00:00Z".parse().unwrap();
    dec.ended_at = "2026-12-02T14:20:00Z".parse().unwrap();
    r.log_interaction(dec, now()).unwrap();
}

#[test]
fn tampered_changes_are_refused_with_their_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = tablet(dir.path());
    let i = r
        .log_interaction(interaction("p-004", "rn-lee"), now())
        .unwrap();
    let other = r
        .log_interaction(interaction("p-004", "rn-lee"), now())
        .unwrap();
    let month: Month = "2026-11".parse().unwrap();
    let fac = DocScope::facility("sunnyvale");
    let fdoc = r
        .document(DocumentId::facility("sunnyvale"))
        .unwrap()
        .clone();
    let pm_scope = DocScope::patient_month("sunnyvale", "p-004", month);
    let pm = r.document(pm_scope.document_id()).unwrap().clone();
    let p_scope = DocScope::patient("sunnyvale", "p-004");
    let pdoc = r.document(p_scope.document_id()).unwrap().clone();
    let rule = |res: Result<(), rounds_core::policy::Refusal>| res.unwrap_err().rule;

    // An aide's time made to count.
    let got = rule(tampered(&fdoc, &fac, |tx| {
        let staff = d::container(tx, d::STAFF).unwrap();
        let (_, aide) = tx.get(&staff, "aide-1")?.unwrap();
        tx.put(&aide, "counts_for_billing", true)
    }));
    assert_eq!(got, Rule::ServerOnly);
    // A time zone that does not exist.
    let got = rule(tampered(&fdoc, &fac, |tx| {
        let f = d::container(tx, d::FACILITY).unwrap();
        tx.put(&f, "timezone", "Not/AZone")
    }));
    assert_eq!(got, Rule::ServerOnly);
    // An alert protocol that silences everything.
    let got = rule(tampered(&fdoc, &fac, |tx| {
        tx.put(ROOT, d::ALERT_PROTOCOL, "{}")
    }));
    assert_eq!(got, Rule::ServerOnly);
    // A resident added to the roster.
    let got = rule(tampered(&fdoc, &fac, |tx| {
        let p = d::container(tx, d::PATIENTS).unwrap();
        tx.put(&p, "p-999", "automerge:x")
    }));
    assert_eq!(got, Rule::ServerOnly);
    // A months index entry for a patient not on the roster.
    let got = rule(tampered(&fdoc, &fac, |tx| {
        let m = d::container(tx, d::MONTHS).unwrap();
        let url = DocumentId::patient_month("sunnyvale", "p-999", month).url();
        tx.put(&m, "p-999/2026-11", url)
    }));
    assert_eq!(got, Rule::ServerOnly);
    // Minutes of an existing interaction edited.
    let got = rule(tampered(&pm, &pm_scope, |tx| {
        let m = d::container(tx, d::INTERACTIONS).unwrap();
        let (_, e) = tx.get(&m, i.id.to_string())?.unwrap();
        tx.put(&e, "ended_at", "2026-11-20T15:59:00+00:00")
    }));
    assert_eq!(got, Rule::WriteOnce);
    // An interaction deleted.
    let got = rule(tampered(&pm, &pm_scope, |tx| {
        let m = d::container(tx, d::INTERACTIONS).unwrap();
        tx.delete(&m, other.id.to_string())
    }));
    assert_eq!(got, Rule::WriteOnce);
    // A new entry whose key is not a UUID, or names another patient, or a staff id that is a path.
    let body = |id: &str, patient: &str, staff: &str| {
        serde_json::json!({"id": id, "patient": patient, "staff": staff, "program": "ccm",
            "started_at": "2026-11-20T10:00:00-05:00", "ended_at": "2026-11-20T10:30:00-05:00",
            "interactive": true})
    };
    let got = rule(tampered(&pm, &pm_scope, |tx| {
        let m = d::container(tx, d::INTERACTIONS).unwrap();
        d::put_json(tx, &m, "entry-1", &body("entry-1", "p-004", "rn-lee"))
    }));
    assert_eq!(got, Rule::EntryKey);
    let id = Uuid::now_v7().to_string();
    let got = rule(tampered(&pm, &pm_scope, |tx| {
        let m = d::container(tx, d::INTERACTIONS).unwrap();
        d::put_json(tx, &m, id.as_str(), &body(&id, "p-018", "rn-lee"))
    }));
    assert_eq!(got, Rule::EntrySchema);
    let got = rule(tampered(&pm, &pm_scope, |tx| {
        let m = d::container(tx, d::INTERACTIONS).unwrap();
        d::put_json(tx, &m, id.as_str(), &body(&id, "p-004", "../x"))
    }));
    assert_eq!(got, Rule::EntrySchema);
    // ...while the same entry, well formed, passes: the gate does not refuse everything.
    tampered(&pm, &pm_scope, |tx| {
        let m = d::container(tx, d::INTERACTIONS).unwrap();
        d::put_json(tx, &m, id.as_str(), &body(&id, "p-004", "rn-lee"))
    })
    .unwrap();
    // A patient's billing facts.
    let got = rule(tampered(&pdoc, &p_scope, |tx| {
        let prof = d::container(tx, d::PROFILE).unwrap();
        tx.put(&prof, "died_on", "2026-11-01")
    }));
    assert_eq!(got, Rule::ServerOnly);
    // A patient-month that claims to be another patient's.
    let fresh = DocScope::patient_month("sunnyvale", "p-005", month);
    let genesis = d::genesis(d::DocKind::PatientMonth).unwrap();
    let got = rule(tampered(&genesis, &fresh, |tx| {
        tx.put(ROOT, "facility", "sunnyvale")?;
        tx.put(ROOT, "patient", "p-018")?;
        tx.put(ROOT, "month", "2026-11")
    }));
    assert_eq!(got, Rule::DocumentIdentity);
    // A patient document not made from genesis: its own containers, by a device.
    let got = rule(tampered(&Automerge::new(), &p_scope, |tx| {
        tx.put(ROOT, "type", "patient")?;
        tx.put_object(ROOT, d::PROFILE, automerge::ObjType::Map)?;
        Ok(())
    }));
    assert_eq!(got, Rule::ServerOnly);
    // The genesis actor used for anything but genesis.
    let mut forged = pm.fork();
    forged.set_actor(ActorId::from(d::GENESIS_ACTOR));
    forged
        .transact::<_, _, AutomergeError>(|tx| tx.put(ROOT, "month", "2026-12"))
        .unwrap();
    let ch = forged.get_last_local_change().unwrap();
    let got = check_device_change(
        &pm,
        &pm.get_heads(),
        &pm_scope,
        &ch.decode(),
        &[],
        &mut Pending::default(),
    )
    .unwrap_err()
    .rule;
    assert_eq!(got, Rule::ReservedActor);
}

#[test]
fn the_replica_refuses_before_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = tablet(dir.path());
    let err = r
        .record_consent(
            "p-004",
            Consent {
                id: Some("../x".into()),
                program: Program::Rpm,
                given_on: "2026-11-20".parse().unwrap(),
                method: None,
                by: None,
                revoked_on: None,
                document: None,
            },
            now(),
        )
        .unwrap_err();
    match err {
        ReplicaError::Refused { refusal, .. } => assert_eq!(refusal.rule, Rule::EntryKey),
        other => panic!("expected a refusal, got {other}"),
    }
    // Nothing reached memory or disk.
    let doc = DocumentId::patient("sunnyvale", "p-004");
    let consents = |r: &Replica| {
        let d = r.document(doc).unwrap();
        let m = d::container(d, d::CONSENTS).unwrap();
        d.keys(&m).collect::<Vec<_>>()
    };
    assert!(!consents(&r).contains(&"../x".to_string()));
    drop(r);
    let r = Replica::open(dir.path()).unwrap();
    assert!(!consents(&r).contains(&"../x".to_string()));
    // The replica still works.
    let mut r = r;
    r.log_interaction(interaction("p-004", "rn-lee"), now())
        .unwrap();
}

/// A stay and a death reported at the bedside: write-once events the policy takes from a
/// tablet, that the patient's billing facts fold in — never an overwrite of the profile.
#[test]
fn bedside_stays_and_deaths_are_write_once_events_billing_folds_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = tablet(dir.path());
    let before = r.patient("p-004").unwrap();
    assert!(before.stays.is_empty() && before.died_on.is_none());
    r.report_stay(
        "p-004",
        StayKind::Inpatient,
        "2026-11-10".parse().unwrap(),
        "2026-11-14".parse().unwrap(),
        "rn-lee",
        now(),
    )
    .unwrap();
    r.report_death("p-004", "2026-11-19".parse().unwrap(), "rn-lee", now())
        .unwrap();
    let after = r.patient("p-004").unwrap();
    assert_eq!(
        after.stays,
        vec![Stay {
            kind: StayKind::Inpatient,
            from: "2026-11-10".parse().unwrap(),
            to: "2026-11-14".parse().unwrap(),
        }]
    );
    assert_eq!(after.died_on, Some("2026-11-19".parse().unwrap()));
    // A later report of an earlier death wins; a later date does not move it.
    r.report_death("p-004", "2026-11-21".parse().unwrap(), "rn-lee", now())
        .unwrap();
    assert_eq!(
        r.patient("p-004").unwrap().died_on,
        Some("2026-11-19".parse().unwrap())
    );
    // Bad reports are refused before anything is written, naming the field.
    let e = r
        .report_stay(
            "p-004",
            StayKind::PartA,
            "2026-11-14".parse().unwrap(),
            "2026-11-10".parse().unwrap(),
            "rn-lee",
            now(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("to"), "{e}");
    assert!(
        r.report_death("p-004", "2026-11-19".parse().unwrap(), "../x", now())
            .is_err()
    );
    assert!(
        r.report_death("nobody", "2026-11-19".parse().unwrap(), "rn-lee", now())
            .is_err()
    );

    // The server's view: the same checks on tampered changes.
    let facility = r.facility().unwrap().facility.id;
    let id = DocumentId::patient(&facility, "p-004");
    let doc = r.document(id).unwrap().clone();
    let scope = DocScope::patient(&facility, "p-004");
    let reports = d::container(&doc, d::BEDSIDE_REPORTS).unwrap();
    let existing = doc.keys(&reports).next().unwrap();
    // Editing a report: refused.
    let refusal = tampered(&doc, &scope, |tx| {
        let (_, obj) = tx.get(&reports, existing.as_str())?.unwrap();
        tx.put(&obj, "reported_by", "rn-okafor")
    })
    .unwrap_err();
    assert_eq!(refusal.rule, Rule::WriteOnce);
    // Deleting one: refused.
    let refusal = tampered(&doc, &scope, |tx| tx.delete(&reports, existing.as_str())).unwrap_err();
    assert_eq!(refusal.rule, Rule::WriteOnce);
    // A report naming another patient, or with a body that is not a report: refused.
    let report = |patient: &str, event: serde_json::Value| {
        let id = Uuid::now_v7();
        (
            id,
            serde_json::json!({
                "id": id.to_string(),
                "patient": patient,
                "reported_by": "rn-lee",
                "reported_at": "2026-11-20T09:00:00-08:00",
                "event": event,
            }),
        )
    };
    let put = |tx: &mut Transaction<'_>, id: Uuid, body: &serde_json::Value| {
        d::put_json(tx, &reports, id.to_string(), body)
    };
    let (k, body) = report(
        "p-001",
        serde_json::json!({"kind": "death", "on": "2026-11-19"}),
    );
    let refusal = tampered(&doc, &scope, |tx| put(tx, k, &body)).unwrap_err();
    assert_eq!(refusal.rule, Rule::EntrySchema);
    let (k, body) = report(
        "p-004",
        serde_json::json!({"kind": "discharge", "on": "2026-11-19"}),
    );
    let refusal = tampered(&doc, &scope, |tx| put(tx, k, &body)).unwrap_err();
    assert_eq!(refusal.rule, Rule::EntrySchema);
    let (k, body) = report(
        "p-004",
        serde_json::json!({"kind": "death", "on": "2027-03-01"}),
    );
    let refusal = tampered(&doc, &scope, |tx| put(tx, k, &body)).unwrap_err();
    assert_eq!(refusal.rule, Rule::EntrySchema, "{refusal:?}");
    // A well-formed one from another tablet: accepted.
    let (k, body) = report(
        "p-004",
        serde_json::json!({"kind": "stay", "stay": "part_a", "from": "2026-11-01", "to": "2026-11-03"}),
    );
    tampered(&doc, &scope, |tx| put(tx, k, &body)).unwrap();
    // An ADT event (a discharge that would stop billing) forged by a tablet: refused, the
    // feed's events are the server's.
    let (k, body) = report(
        "p-004",
        serde_json::json!({"kind": "adt", "message": "M1", "sender": "PCC", "trigger": "A03",
            "on": "2026-11-02", "changes": [{"change": "discharged"}]}),
    );
    let refusal = tampered(&doc, &scope, |tx| put(tx, k, &body)).unwrap_err();
    assert_eq!(refusal.rule, Rule::ServerOnly, "{refusal:?}");
    // The profile's own stays and date of death stay the server's.
    let refusal = tampered(&doc, &scope, |tx| {
        let profile = d::container(tx, d::PROFILE).unwrap();
        tx.put(&profile, "died_on", "2026-11-01")
    })
    .unwrap_err();
    assert_eq!(refusal.rule, Rule::ServerOnly);
}

/// The migration that adds `bedside_reports` is one deterministic change: two tablets that make
/// it offline make the same change, and the policy takes exactly that change with the genesis
/// actor, nothing else.
#[test]
fn the_patient_migration_is_deterministic_and_the_only_other_genesis_actor_change() {
    let m1 = d::migration(d::DocKind::Patient).unwrap().clone();
    let mut a = d::genesis(d::DocKind::Patient).unwrap();
    let mut b = d::genesis(d::DocKind::Patient).unwrap();
    b.set_actor(ActorId::random());
    b.transact::<_, _, AutomergeError>(|tx| {
        let t = d::container(tx, d::CARE_PLAN_TEXT).unwrap();
        tx.update_text(&t, "Walk daily.")
    })
    .unwrap();
    assert!(d::migrate(&mut a, d::DocKind::Patient).unwrap());
    assert!(d::migrate(&mut b, d::DocKind::Patient).unwrap());
    assert!(!d::migrate(&mut a, d::DocKind::Patient).unwrap(), "once");
    a.merge(&mut b).unwrap();
    // One container, not two conflicting ones.
    assert_eq!(a.get_all(ROOT, d::BEDSIDE_REPORTS).unwrap().len(), 1);
    assert!(a.get_change_by_hash(&m1.hash()).is_some());
    // Nothing else is added to the other types.
    assert!(d::migration(d::DocKind::Facility).is_none());
    assert!(d::migration(d::DocKind::PatientMonth).is_none());
    // The policy: the migration passes; another change with the genesis actor does not.
    let genesis = d::genesis(d::DocKind::Patient).unwrap();
    let scope = DocScope::patient("sunnyvale", "p-004");
    let expanded = rounds_core::sync::gate::expand(&m1).unwrap();
    check_device_change(
        &genesis,
        &genesis.get_heads(),
        &scope,
        &expanded,
        &[],
        &mut Pending::default(),
    )
    .unwrap();
    let mut forged = genesis.fork();
    forged.set_actor(ActorId::from(d::GENESIS_ACTOR));
    forged
        .transact::<_, _, AutomergeError>(|tx| {
            tx.put_object(ROOT, d::BEDSIDE_REPORTS, automerge::ObjType::List)?;
            Ok(())
        })
        .unwrap();
    let change = forged.get_last_local_change().unwrap();
    let refusal = check_device_change(
        &genesis,
        &genesis.get_heads(),
        &scope,
        &rounds_core::sync::gate::expand(&change).unwrap(),
        &[],
        &mut Pending::default(),
    )
    .unwrap_err();
    assert_eq!(refusal.rule, Rule::ReservedActor);
}
