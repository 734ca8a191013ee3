//! The device's files are encrypted at rest with the key the app passes in.

use chrono::{Duration, TimeZone, Utc};
use rounds_core::replica::NewInteraction;
use rounds_core::{Program, Replica, ReplicaError};
use rounds_tests::{ServerProcess, sunnyvale, sync_with};

const NOTE: &str = "Discussed the daughter's visit and the new insulin pen";

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_patient_data_in_plain_text_and_a_wrong_key_is_refused() {
    let store = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(store.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = [0x5a; 32];
    {
        let mut d = Replica::open_encrypted(dir.path(), &key).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 15, 0, 0).unwrap();
        d.import(&sunnyvale().unwrap(), now).unwrap();
        d.log_interaction(
            NewInteraction {
                patient: "p-001".into(),
                staff: "rn-lee".into(),
                program: Program::Ccm,
                started_at: now,
                ended_at: now + Duration::minutes(9),
                interactive: true,
                activity: None,
                note: Some(NOTE.into()),
            },
            now,
        )
        .unwrap();
        d.edit_care_plan("p-002", "Robert Miller prefers morning calls", now)
            .unwrap();
        let report = sync_with(&mut d, &server).await.unwrap();
        assert!(report.unsent.is_empty());
    }
    let data = sunnyvale().unwrap();
    let mut secrets: Vec<String> = data.patients.iter().map(|p| p.name.clone()).collect();
    secrets.push(NOTE.into());
    secrets.push("insulin".into());
    secrets.push("Reviewed medications".into());
    let all = files(dir.path());
    assert!(all.len() > 20, "{all:?}");
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        for s in &secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s:?} in plain text in {}",
                f.display()
            );
        }
    }
    // The right key opens it and everything is there.
    let d = Replica::open_encrypted(dir.path(), &key).unwrap();
    let month = "2026-12".parse().unwrap();
    assert_eq!(
        d.month_entries("p-001", month).interactions[0]
            .note
            .as_deref(),
        Some(NOTE)
    );
    drop(d);
    // A wrong key, or no key, is a clear error.
    match Replica::open_encrypted(dir.path(), &[0x5b; 32]) {
        Err(e @ ReplicaError::WrongKey(_)) => assert!(e.to_string().contains("wrong key")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened with the wrong key"),
    }
    match Replica::open(dir.path()) {
        Err(e @ ReplicaError::KeyRequired(_)) => assert!(e.to_string().contains("encrypted")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened without a key"),
    }
}
