//! The trust boundary over real TLS: a hostile client with a valid tablet token sends raw
//! Automerge changes, one per attack. Each is refused (the device told which rule), quarantined
//! and audited, and nothing of it is stored: month close bills exactly what legitimate entries
//! earn. Legitimate entries from the same tablet, before and after, are accepted and billed.

use std::time::{Duration, Instant};

use automerge::sync::SyncDoc;
use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, Automerge, AutomergeError, ROOT, ReadDoc};
use futures_util::SinkExt;
use rounds_core::document as d;
use rounds_core::replica::NewInteraction;
use rounds_core::sync::wire::Message;
use rounds_core::{DocumentId, Month, Program, Replica};
use rounds_tests::raw::{connect, join, next_message};
use rounds_tests::{ServerProcess, https_request, repo_root};
use tokio_tungstenite::tungstenite::Message as Ws;

fn rounds(args: &[&str]) -> String {
    rounds_tests::rounds_cli(args)
}

/// sunnyvale and oakwood in one store, a tablet token for each.
fn setup(store: &std::path::Path) -> (String, String) {
    let s = store.to_str().unwrap();
    let example = repo_root().join("examples/sunnyvale.json");
    rounds(&["import", "--store", s, example.to_str().unwrap()]);
    let mut other: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    other["facility"]["id"] = "oakwood".into();
    let path = store.join("oakwood.json");
    std::fs::write(&path, other.to_string()).unwrap();
    rounds(&["import", "--store", s, path.to_str().unwrap()]);
    let token = |facility: &str, name: &str| {
        let v: serde_json::Value = serde_json::from_str(&rounds(&[
            "device",
            "add",
            "--facility",
            facility,
            "--name",
            name,
            "--store",
            s,
        ]))
        .unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    (token("sunnyvale", "tab-a"), token("oakwood", "tab-b"))
}

/// A sync message carrying `chunks` as its changes.
fn sync_data(chunks: Vec<Vec<u8>>) -> Vec<u8> {
    automerge::sync::Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: vec![automerge::sync::Have::default()],
        changes: automerge::sync::ChunkList::from(chunks),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    }
    .encode()
}

/// Send `data` for `doc` on a fresh connection; returns the server's answer.
async fn send(server: &ServerProcess, token: &str, doc: DocumentId, data: Vec<u8>) -> String {
    let mut ws = connect(server, token).await.unwrap();
    let server_id = join(&mut ws, "hostile").await;
    let m = Message::Sync {
        sender_id: "hostile".into(),
        target_id: server_id,
        document_id: doc.to_string(),
        data,
    };
    ws.send(Ws::Binary(m.encode().into())).await.unwrap();
    loop {
        match next_message(&mut ws).await {
            Some(Message::Error { message, .. }) => return message,
            Some(Message::Sync { .. }) => continue,
            other => return format!("{other:?}"),
        }
    }
}

/// A change made on a copy of `doc` with a fresh actor: its bytes.
fn forged(
    doc: &Automerge,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError>,
) -> Vec<u8> {
    let mut copy = doc.fork();
    copy.set_actor(ActorId::random());
    copy.transact::<_, _, AutomergeError>(f).unwrap();
    copy.get_last_local_change().unwrap().raw_bytes().to_vec()
}

fn minutes(patient: &str, start: &str, minutes: i64) -> NewInteraction {
    let started_at: chrono::DateTime<chrono::Utc> = start.parse().unwrap();
    NewInteraction {
        patient: patient.into(),
        staff: "rn-lee".into(),
        program: Program::Ccm,
        started_at,
        ended_at: started_at + chrono::Duration::minutes(minutes),
        interactive: true,
        activity: Some("care coordination".into()),
        note: None,
    }
}

fn codes_of(encounters: &serde_json::Value, patient: &str) -> Vec<String> {
    encounters
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["patient"] == patient)
        .max_by_key(|v| v["version"].as_u64())
        .map(|v| {
            v["encounter"]["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["code"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_refused_quarantined_and_audited_while_real_entries_are_billed() {
    let store = tempfile::tempdir().unwrap();
    let (token, _) = setup(store.path());
    let server = ServerProcess::start_with(store.path(), &[]).unwrap();
    let mut opts = server.options();
    opts.token = token.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut tablet = Replica::open(dir.path()).unwrap();
    tablet.join_facility("sunnyvale").unwrap();
    let now: chrono::DateTime<chrono::Utc> = "2026-11-25T15:00:00Z".parse().unwrap();
    rounds_core::sync::net::sync(&mut tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    // Before: p-004 (17 min) gets 5 more minutes and reaches 99490.
    tablet
        .log_interaction(minutes("p-004", "2026-11-24T14:00:00Z", 5), now)
        .unwrap();
    let report = rounds_core::sync::net::sync(&mut tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");

    let month: Month = "2026-11".parse().unwrap();
    let fac_id = DocumentId::facility("sunnyvale");
    let fac = tablet.document(fac_id).unwrap().clone();
    let pm_id = DocumentId::patient_month("sunnyvale", "p-004", month);
    let pm = tablet.document(pm_id).unwrap().clone();
    let entries = tablet.month_entries("p-004", month);
    let (first, second) = (entries.interactions[0].id, entries.interactions[1].id);
    let p_id = DocumentId::patient("sunnyvale", "p-018");
    let pdoc = tablet.document(p_id).unwrap().clone();

    let attacks: Vec<(&str, DocumentId, Vec<u8>, &str)> = vec![
        (
            "an aide's time made to count",
            fac_id,
            forged(&fac, |tx| {
                let staff = d::container(tx, d::STAFF).unwrap();
                let (_, aide) = tx.get(&staff, "aide-1")?.unwrap();
                tx.put(&aide, "counts_for_billing", true)
            }),
            "server-only",
        ),
        (
            "a time zone that does not exist",
            fac_id,
            forged(&fac, |tx| {
                let f = d::container(tx, d::FACILITY).unwrap();
                tx.put(&f, "timezone", "Not/AZone")
            }),
            "server-only",
        ),
        (
            "a protocol that silences SpO2 alerts",
            fac_id,
            forged(&fac, |tx| {
                let mut p = rounds_core::alerts::AlertProtocol::standard();
                for r in &mut p.rules {
                    if r.below.is_some() {
                        r.below = Some(-1001.0);
                    }
                }
                tx.put(ROOT, d::ALERT_PROTOCOL, p.to_json())
            }),
            "server-only",
        ),
        (
            "a resident added to the roster",
            fac_id,
            forged(&fac, |tx| {
                let p = d::container(tx, d::PATIENTS).unwrap();
                tx.put(&p, "p-999", DocumentId::patient("sunnyvale", "p-999").url())
            }),
            "server-only",
        ),
        (
            "the minutes of an interaction edited",
            pm_id,
            forged(&pm, |tx| {
                let m = d::container(tx, d::INTERACTIONS).unwrap();
                let (_, e) = tx.get(&m, first.to_string())?.unwrap();
                tx.put(&e, "ended_at", "2026-11-02T23:59:00-05:00")
            }),
            "write-once",
        ),
        (
            "an interaction deleted",
            pm_id,
            forged(&pm, |tx| {
                let m = d::container(tx, d::INTERACTIONS).unwrap();
                tx.delete(&m, second.to_string())
            }),
            "write-once",
        ),
        (
            "a staff id that is a path",
            pm_id,
            forged(&pm, |tx| {
                let m = d::container(tx, d::INTERACTIONS).unwrap();
                let id = uuid::Uuid::now_v7().to_string();
                d::put_json(
                    tx,
                    &m,
                    id.as_str(),
                    &serde_json::json!({"id": id, "patient": "p-004", "staff": "../x",
                        "program": "ccm", "started_at": "2026-11-20T10:00:00-05:00",
                        "ended_at": "2026-11-20T10:30:00-05:00", "interactive": true}),
                )
            }),
            "entry-schema",
        ),
        (
            "a patient document's containers made again, not from genesis",
            p_id,
            forged(&pdoc, |tx| {
                let prof = tx.put_object(ROOT, d::PROFILE, automerge::ObjType::Map)?;
                tx.put(&prof, "died_on", "2026-11-01")
            }),
            "server-only",
        ),
    ];
    for (what, doc, change, rule) in &attacks {
        let answer = send(&server, &token, *doc, sync_data(vec![change.clone()])).await;
        assert!(
            answer.starts_with(&format!("refused: document {doc}"))
                && answer.contains(&format!("rule {rule}:")),
            "{what}: {answer}"
        );
    }

    // After: the same tablet's next real entry is accepted (p-001: 23 + 20 minutes → 99439).
    tablet
        .log_interaction(minutes("p-001", "2026-11-24T16:00:00Z", 20), now)
        .unwrap();
    let report = rounds_core::sync::net::sync(&mut tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");

    // Quarantined, audited, counted.
    let s = store.path().to_str().unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let q: Vec<serde_json::Value> = serde_json::from_str(&rounds(&[
        "quarantine",
        "list",
        "--store",
        s,
        "--server",
        &url,
    ]))
    .unwrap();
    assert_eq!(q.len(), attacks.len(), "{q:#?}");
    assert!(
        q.iter()
            .all(|e| e["device"] == "tab-a" && e["facility"] == "sunnyvale")
    );
    let shown: serde_json::Value = serde_json::from_str(&rounds(&[
        "quarantine",
        "show",
        q[0]["id"].as_str().unwrap(),
        "--store",
        s,
        "--server",
        &url,
    ]))
    .unwrap();
    assert!(!shown["bytes_base64"].as_str().unwrap().is_empty());
    let audit: Vec<serde_json::Value> = serde_json::from_str(&rounds(&[
        "audit", "--device", "tab-a", "--store", s, "--server", &url,
    ]))
    .unwrap();
    let refused = audit.iter().filter(|r| r["action"] == "refused").count();
    assert_eq!(refused, attacks.len(), "{audit:#?}");
    let (_, metrics) = https_request(&server, "GET", "/metrics", None, None)
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("rounds_changes_refused_total {}", attacks.len())),
        "{metrics}"
    );

    // Month close bills what the real entries earn, and nothing the attacks tried.
    rounds(&[
        "close-month",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--store",
        s,
        "--server",
        &url,
    ]);
    let enc: serde_json::Value = serde_json::from_str(&rounds(&[
        "encounters",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--store",
        s,
        "--server",
        &url,
    ]))
    .unwrap();
    assert!(codes_of(&enc, "p-004").contains(&"99490".to_string()));
    assert!(codes_of(&enc, "p-001").contains(&"99439".to_string()));
    assert!(!codes_of(&enc, "p-018").contains(&"99490".to_string()));
    // The server's copy of the facility is untouched (a fresh device sees the real zone).
    let dir2 = tempfile::tempdir().unwrap();
    let mut fresh = Replica::open(dir2.path()).unwrap();
    fresh.join_facility("sunnyvale").unwrap();
    rounds_core::sync::net::sync(&mut fresh, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    let roster = fresh.facility().unwrap();
    assert_eq!(roster.facility.timezone, "America/New_York");
    assert!(
        roster
            .staff
            .iter()
            .any(|s| s.id == "aide-1" && !s.counts_for_billing)
    );
    assert!(!fresh.patient_ids().contains(&"p-999".to_string()));
    assert_eq!(fresh.month_entries("p-004", month).interactions.len(), 2);

    // A stay reported at the bedside is an event the server takes from the same tablet, and
    // every device then reads it among the resident's stays.
    tablet
        .report_stay(
            "p-004",
            rounds_core::StayKind::Inpatient,
            "2026-11-26".parse().unwrap(),
            "2026-11-28".parse().unwrap(),
            "rn-lee",
            "2026-11-29T15:00:00Z".parse().unwrap(),
        )
        .unwrap();
    let report = rounds_core::sync::net::sync(&mut tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");
    rounds_core::sync::net::sync(&mut fresh, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    let stays = fresh.patient("p-004").unwrap().stays;
    assert_eq!(stays.len(), 1, "{stays:?}");
    assert_eq!(stays[0].from, "2026-11-26".parse().unwrap());
}

/// A deflate bomb: a compressed change chunk of about a megabyte that inflates past 1 GiB.
fn bomb() -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 8 << 20];
    for _ in 0..130 {
        enc.write_all(&zeros).unwrap();
    }
    let body = enc.finish().unwrap();
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    let mut len = body.len() as u64;
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            chunk.push(b);
            break;
        }
        chunk.push(b | 0x80);
    }
    chunk.extend_from_slice(&body);
    chunk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inflation_bomb_is_refused_in_bounded_memory_without_stalling_another_facility() {
    let store = tempfile::tempdir().unwrap();
    let (token_a, token_b) = setup(store.path());
    let server = ServerProcess::start_with(store.path(), &[]).unwrap();
    let chunk = bomb();
    assert!(chunk.len() < 1_200_000, "{} bytes", chunk.len());
    let data = sync_data(vec![chunk]);
    // Warm up: one real request from each facility.
    let month: Month = "2026-11".parse().unwrap();
    let b_doc = DocumentId::facility("oakwood");
    let mut b = connect(&server, &token_b).await.unwrap();
    let b_server = join(&mut b, "other").await;
    let request = |doc: DocumentId| Message::Request {
        sender_id: "other".into(),
        target_id: b_server.clone(),
        document_id: doc.to_string(),
        data: Automerge::new()
            .generate_sync_message(&mut automerge::sync::State::new())
            .unwrap()
            .encode(),
    };
    b.send(Ws::Binary(request(b_doc).encode().into()))
        .await
        .unwrap();
    assert!(matches!(
        next_message(&mut b).await,
        Some(Message::Sync { .. })
    ));
    // Load oakwood's patient documents once, so what is measured below is waiting, not loading.
    for p in ["p-001", "p-002", "p-003", "p-004", "p-005", "p-006"] {
        b.send(Ws::Binary(
            request(DocumentId::patient("oakwood", p)).encode().into(),
        ))
        .await
        .unwrap();
        assert!(matches!(
            next_message(&mut b).await,
            Some(Message::Sync { .. })
        ));
    }
    let before = server.peak_rss_kib();

    // Bombs from sunnyvale while oakwood asks for its documents.
    let target = DocumentId::patient_month("sunnyvale", "p-001", month);
    let bomber = async {
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(send(&server, &token_a, target, data.clone()).await);
        }
        answers
    };
    let other = async {
        let mut worst = Duration::ZERO;
        for p in ["p-001", "p-002", "p-003", "p-004", "p-005", "p-006"] {
            let t = Instant::now();
            b.send(Ws::Binary(
                request(DocumentId::patient("oakwood", p)).encode().into(),
            ))
            .await
            .unwrap();
            assert!(matches!(
                next_message(&mut b).await,
                Some(Message::Sync { .. })
            ));
            worst = worst.max(t.elapsed());
        }
        worst
    };
    let (answers, worst) = tokio::join!(bomber, other);
    for a in &answers {
        assert!(a.contains("rule too-large:"), "{a}");
    }
    let grown_mib = (server.peak_rss_kib().saturating_sub(before)) / 1024;
    println!("bomb: peak RSS grew {grown_mib} MiB; other facility's slowest answer {worst:?}");
    assert!(grown_mib < 64, "peak RSS grew {grown_mib} MiB");
    assert!(
        worst < Duration::from_millis(100),
        "other facility waited {worst:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_with_a_refused_change_resets_and_its_valid_entries_reach_the_server_once() {
    let store = tempfile::tempdir().unwrap();
    let (token, _) = setup(store.path());
    let server = ServerProcess::start_with(store.path(), &[]).unwrap();
    let mut opts = server.options();
    opts.token = token.clone();
    opts.attempts = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut tablet = Replica::open(dir.path()).unwrap();
    tablet.join_facility("sunnyvale").unwrap();
    rounds_core::sync::net::sync(&mut tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    let now: chrono::DateTime<chrono::Utc> = "2026-11-25T15:00:00Z".parse().unwrap();
    let month: Month = "2026-11".parse().unwrap();
    let pm_id = DocumentId::patient_month("sunnyvale", "p-004", month);
    // A valid entry logged offline...
    let valid = tablet
        .log_interaction(minutes("p-004", "2026-11-24T14:00:00Z", 5), now)
        .unwrap();
    // ...and an app bug: an existing interaction's minutes edited (arrives as a sync message
    // from a buggy component, so the replica's own write path never saw it).
    let original = tablet
        .month_entries("p-004", month)
        .interactions
        .into_iter()
        .find(|i| i.id != valid.id)
        .expect("an interaction the server already has");
    let doc = tablet.document(pm_id).unwrap().clone();
    let tampered = forged(&doc, |tx| {
        let m = d::container(tx, d::INTERACTIONS).unwrap();
        let key = original.id.to_string();
        let (_, e) = tx.get(&m, key)?.unwrap();
        tx.put(&e, "ended_at", "2026-11-02T23:59:00-05:00")
    });
    tablet
        .receive_sync_message(pm_id, "buggy-component", &sync_data(vec![tampered]))
        .unwrap();
    // The server refuses it; the sync stops instead of resending it forever.
    let err = rounds_core::sync::net::sync(&mut tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap_err();
    let rounds_core::sync::net::NetError::Refused { document, message } = err else {
        panic!("expected a refusal, got {err}");
    };
    assert_eq!(document, Some(pm_id), "{message}");
    assert!(message.contains("rule write-once"), "{message}");
    // Recovery: reset, sync (the server's copy), re-log, sync.
    let kept = tablet.reset_document(pm_id).unwrap();
    assert!(kept >= 2, "{kept}");
    rounds_core::sync::net::sync(&mut tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    let (written, dropped) = tablet.apply_relogs(now).unwrap();
    assert_eq!(
        (written, dropped),
        (1, 0),
        "only the valid new entry is written back"
    );
    assert!(tablet.pending_relogs().is_empty());
    let report = rounds_core::sync::net::sync(&mut tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");
    // A fresh device sees the valid entry once and the original minutes.
    let dir2 = tempfile::tempdir().unwrap();
    let mut fresh = Replica::open(dir2.path()).unwrap();
    fresh.join_facility("sunnyvale").unwrap();
    rounds_core::sync::net::sync(&mut fresh, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    let got = fresh.month_entries("p-004", month).interactions;
    assert_eq!(got.iter().filter(|i| i.id == valid.id).count(), 1);
    let orig = got.iter().find(|i| i.id == original.id).unwrap();
    assert_eq!(orig.ended_at, original.ended_at);
}

/// `rounds ARGS…` that must fail: its stderr.
fn rounds_fails(args: &[&str]) -> String {
    let out = std::process::Command::new(rounds_tests::rounds_bin().unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "rounds {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn import_and_the_admin_api_refuse_ids_that_are_not_safe() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let example: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/sunnyvale.json")).unwrap(),
    )
    .unwrap();
    let long = "x".repeat(10_000);
    for bad in ["a/b", "..", "../../x", "a\u{0}b", "a\u{1b}b", long.as_str()] {
        for field in ["facility", "patients[0]"] {
            let mut data = example.clone();
            if field == "facility" {
                data["facility"]["id"] = bad.into();
            } else {
                data["patients"][0]["id"] = bad.into();
            }
            let path = store.path().join("bad.json");
            std::fs::write(&path, data.to_string()).unwrap();
            let err = rounds_fails(&["import", "--store", s, path.to_str().unwrap()]);
            assert!(
                err.contains(field) && err.contains("not a valid id"),
                "{bad:?}: {err}"
            );
            assert!(
                err.len() < 2_000,
                "the error repeats a 10 kB id: {} bytes",
                err.len()
            );
        }
        if bad.contains('\0') {
            continue; // not expressible as a command-line argument
        }
        let err = rounds_fails(&[
            "device",
            "add",
            "--facility",
            bad,
            "--name",
            "t",
            "--store",
            s,
        ]);
        assert!(
            err.contains("facility") && err.contains("not a valid id"),
            "{bad:?}: {err}"
        );
        let err = rounds_fails(&["device", "code", "--facility", bad, "--store", s]);
        assert!(err.contains("not a valid id"), "{bad:?}: {err}");
    }
    // Nothing was imported.
    assert!(!rounds(&["device", "list", "--store", s]).contains("\"t\""));
}
