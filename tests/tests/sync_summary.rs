//! The summary exchange against a real server, with an enrolled tablet: an idle reconnect is one
//! summary, and after another tablet's entries exactly the changed documents are synced.

use chrono::{Duration, TimeZone, Utc};
use rounds_core::replica::NewInteraction;
use rounds_core::sync::net::{SyncReport, sync};
use rounds_core::{Program, Replica};
use rounds_tests::{ServerProcess, repo_root, rounds_cli};

fn setup(store: &std::path::Path) -> String {
    let s = store.to_str().unwrap();
    let example = repo_root().join("examples/sunnyvale.json");
    rounds_cli(&["import", "--store", s, example.to_str().unwrap()]);
    let added: serde_json::Value = serde_json::from_str(&rounds_cli(&[
        "device",
        "add",
        "--facility",
        "sunnyvale",
        "--name",
        "tab-a",
        "--store",
        s,
    ]))
    .unwrap();
    added["token"].as_str().unwrap().to_string()
}

async fn sync_tablet(server: &ServerProcess, token: &str, tablet: &mut Replica) -> SyncReport {
    let mut opts = server.options();
    opts.token = token.to_string();
    let report = sync(tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_reconnect_is_one_summary_and_changes_come_document_by_document() {
    let store = tempfile::tempdir().unwrap();
    let token = setup(store.path());
    let server = ServerProcess::start_with(store.path(), &[]).unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Replica::open(da.path()).unwrap();
    let mut b = Replica::open(db.path()).unwrap();
    for t in [&mut a, &mut b] {
        t.join_facility("sunnyvale").unwrap();
        sync_tablet(&server, &token, t).await;
    }
    // Reopened, as after an app restart: the summary comes from the saved sync states.
    drop(a);
    let mut a = Replica::open(da.path()).unwrap();
    let idle = sync_tablet(&server, &token, &mut a).await;
    let docs = idle.documents;
    eprintln!("idle reconnect: {idle:?}");
    assert!(docs > 10, "{idle:?}");
    assert_eq!(idle.summary.summarized, docs, "{idle:?}");
    // join + summary out, peer + reply back.
    assert_eq!((idle.frames_sent, idle.frames_received), (2, 2), "{idle:?}");
    assert!(idle.summary.bytes <= 16 * docs + 128, "{idle:?}");

    // B logs time for two residents this month; A's reconnect syncs those documents only.
    let now = Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).unwrap();
    for p in ["p-001", "p-002"] {
        b.log_interaction(
            NewInteraction {
                patient: p.into(),
                staff: "rn-lee".into(),
                program: Program::Ccm,
                started_at: now,
                ended_at: now + Duration::minutes(12),
                interactive: true,
                activity: None,
                note: None,
            },
            now,
        )
        .unwrap();
    }
    sync_tablet(&server, &token, &mut b).await;
    let after = sync_tablet(&server, &token, &mut a).await;
    eprintln!("after two entries elsewhere: {after:?}");
    // The month documents (new or changed) and the facility document that lists months: at most
    // three documents differ, and the rest stay summarized.
    assert!((1..=3).contains(&after.summary.differ), "{after:?}");
    assert!(after.summary.summarized >= docs - 1, "{after:?}");
    let month: rounds_core::Month = "2026-12".parse().unwrap();
    assert_eq!(a.month_entries("p-001", month).interactions.len(), 1);
    assert_eq!(a.month_entries("p-002", month).interactions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_tablet_skips_a_closed_month_yet_its_late_entry_amends_the_encounter() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let token = setup(store.path());
    rounds_cli(&[
        "close-month",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--store",
        s,
    ]);
    let server = ServerProcess::start_with(store.path(), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Replica::open(dir.path()).unwrap();
    t.join_facility("sunnyvale").unwrap();
    // December 20th: November is closed and past its grace window.
    t.set_sync_window(Some(rounds_core::SyncWindow::new(
        chrono::NaiveDate::from_ymd_opt(2026, 12, 20).unwrap(),
    )));
    sync_tablet(&server, &token, &mut t).await;
    let nov: rounds_core::Month = "2026-11".parse().unwrap();
    assert!(t.month_docs().iter().all(|(_, m, _)| *m != nov));
    assert!(!t.patients().0.is_empty());

    // A late 16-minute call for p-002 in November (45 → 61 minutes: a second 99439).
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-20T15:00:00-05:00")
        .unwrap()
        .with_timezone(&Utc);
    t.log_interaction(
        NewInteraction {
            patient: "p-002".into(),
            staff: "rn-lee".into(),
            program: Program::Ccm,
            started_at: start,
            ended_at: start + Duration::minutes(16),
            interactive: true,
            activity: Some("phone_call".into()),
            note: None,
        },
        Utc.with_ymd_and_hms(2026, 12, 20, 9, 0, 0).unwrap(),
    )
    .unwrap();
    let report = sync_tablet(&server, &token, &mut t).await;
    assert_eq!(
        report.dropped, 1,
        "synced, then left the tablet: {report:?}"
    );
    assert!(t.month_docs().iter().all(|(_, m, _)| *m != nov));

    let url = format!("https://127.0.0.1:{}", server.port);
    let mut amended = None;
    for _ in 0..50 {
        let changed: Vec<serde_json::Value> = serde_json::from_str(&rounds_cli(&[
            "encounters",
            "--facility",
            "sunnyvale",
            "--month",
            "2026-11",
            "--changed",
            "--store",
            s,
            "--server",
            &url,
        ]))
        .unwrap();
        amended = changed
            .into_iter()
            .find(|v| v["patient"] == "p-002" && v["version"] == 2);
        if amended.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let amended = amended.expect("the late entry amends p-002's encounter");
    assert_eq!(amended["kind"], "amendment");
    assert_eq!(amended["diff"]["added"][0]["code"], "99439");
}
