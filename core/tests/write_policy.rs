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
