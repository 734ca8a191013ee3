//! Devices and the sync server over real TLS sockets on 127.0.0.1.

use chrono::{Duration, TimeZone, Utc};
use rounds_core::replica::{NewInteraction, NewReading};
use rounds_core::{Program, ReadingKind, ReadingSource, Replica};
use rounds_tests::{ServerProcess, entry_ids, sunnyvale, sync_with};

fn device(dir: &std::path::Path) -> Replica {
    let mut r = Replica::open(dir).unwrap();
    r.import(
        &sunnyvale().unwrap(),
        Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap(),
    )
    .unwrap();
    r
}

/// A small deterministic generator for "random" entries.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn log_random(r: &mut Replica, rng: &mut Lcg, n: usize) {
    let patients = ["p-001", "p-002", "p-003", "p-007", "p-015"];
    let staff = ["rn-lee", "rn-okafor", "lpn-ruiz"];
    for _ in 0..n {
        let start = Utc.with_ymd_and_hms(2026, 12, 2, 14, 0, 0).unwrap()
            + Duration::minutes(rng.next(40_000) as i64);
        let patient = patients[rng.next(5) as usize].to_string();
        if rng.next(3) == 0 {
            r.record_reading(
                NewReading {
                    patient,
                    kind: ReadingKind::HeartRate,
                    systolic: None,
                    diastolic: None,
                    value: Some(60.0 + rng.next(40) as f64),
                    unit: "/min".into(),
                    measured_at: start,
                    device: Some("cuff".into()),
                    source: ReadingSource::Device,
                    program: None,
                },
                start,
            )
            .unwrap();
        } else {
            r.log_interaction(
                NewInteraction {
                    patient,
                    staff: staff[rng.next(3) as usize].into(),
                    program: Program::Ccm,
                    started_at: start,
                    ended_at: start + Duration::minutes(1 + rng.next(30) as i64),
                    interactive: true,
                    activity: None,
                    note: None,
                },
                start,
            )
            .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_offline_devices_converge_and_a_sixth_gets_everything() {
    let store = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(store.path()).unwrap();
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut devices: Vec<Replica> = dirs[..5].iter().map(|d| device(d.path())).collect();
    let mut rng = Lcg(42);
    for d in devices.iter_mut() {
        let n = 5 + rng.next(10) as usize;
        log_random(d, &mut rng, n);
    }
    // Reconnect in a scrambled order, twice round, so everyone sees everyone.
    let order = [3usize, 0, 4, 1, 2, 2, 4, 0, 3, 1];
    for i in order {
        let report = sync_with(&mut devices[i], &server).await.unwrap();
        assert!(report.unsent.is_empty(), "device {i}: {report:?}");
    }
    let want = entry_ids(&devices[0]).unwrap();
    assert!(want.len() > 40, "{}", want.len());
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(entry_ids(d).unwrap(), want, "device {i}");
    }
    // A new device bound to the facility gets everything from the server alone.
    let mut fresh = Replica::open(dirs[5].path()).unwrap();
    fresh.join_facility("sunnyvale").unwrap();
    let report = sync_with(&mut fresh, &server).await.unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");
    assert_eq!(entry_ids(&fresh).unwrap(), want);
    assert_eq!(fresh.export().unwrap().0, devices[0].export().unwrap().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_changes_survive_a_server_sigkill() {
    let store = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(store.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = device(dir.path());
    log_random(&mut d, &mut Lcg(7), 12);
    let report = sync_with(&mut d, &server).await.unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");
    // The device has observed that the server has its changes: kill the server at once.
    server.kill();
    let server = ServerProcess::start(store.path()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut fresh = Replica::open(other.path()).unwrap();
    fresh.join_facility("sunnyvale").unwrap();
    sync_with(&mut fresh, &server).await.unwrap();
    assert_eq!(entry_ids(&fresh).unwrap(), entry_ids(&d).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_nothing_new_is_one_small_exchange_per_document() {
    let store = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(store.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = device(dir.path());
    log_random(&mut d, &mut Lcg(9), 20);
    let first = sync_with(&mut d, &server).await.unwrap();
    drop(d);
    // Reopen (as after an app restart): sync states come from disk.
    let mut d = Replica::open(dir.path()).unwrap();
    let again = sync_with(&mut d, &server).await.unwrap();
    let docs = again.documents as u64;
    assert!(docs > 20, "{again:?}");
    let per_doc = (again.bytes_sent + again.bytes_received) / docs;
    eprintln!(
        "idle reconnect: {docs} documents, {} frames, {} bytes sent, {} received, {per_doc} bytes/document (first sync: {} + {} bytes)",
        again.frames_sent + again.frames_received,
        again.bytes_sent,
        again.bytes_received,
        first.bytes_sent,
        first.bytes_received
    );
    // One request and one reply per document (plus the handshake), each well under 512 bytes.
    assert!(again.frames_sent <= docs + 1 + docs / 4, "{again:?}");
    assert!(per_doc < 512, "{per_doc} bytes per document");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_through_a_running_server_then_graceful_shutdown_and_restart() {
    let store = tempfile::tempdir().unwrap();
    // No idle cache: a document leaves memory as soon as no exchange uses it.
    let mut server = ServerProcess::start_with(store.path(), &["--idle-documents", "0"]).unwrap();
    let hex: String = server
        .fingerprint
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = std::process::Command::new(rounds_tests::rounds_bin().unwrap())
        .args([
            "import",
            "--server",
            &format!("https://127.0.0.1:{}", server.port),
        ])
        .args([
            "--token",
            server.admin_token().unwrap().as_str(),
            "--fingerprint",
            &hex,
        ])
        .arg(rounds_tests::repo_root().join("examples/sunnyvale.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["facility"], "sunnyvale");
    assert!(
        reply["facility_url"]
            .as_str()
            .unwrap()
            .starts_with("automerge:")
    );

    // A new device gets the whole facility from the server.
    let dir = tempfile::tempdir().unwrap();
    let mut fresh = Replica::open(dir.path()).unwrap();
    fresh.join_facility("sunnyvale").unwrap();
    let report = sync_with(&mut fresh, &server).await.unwrap();
    assert!(
        report.unsent.is_empty() && report.unavailable == 0,
        "{report:?}"
    );
    let mut want = sunnyvale().unwrap();
    want.canonicalize();
    assert_eq!(fresh.export().unwrap().0, want);

    // Idle documents leave memory once their exchanges are over.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = rounds_tests::https_get(&server, "/metrics")
            .await
            .unwrap()
            .1;
        if metrics.contains("rounds_documents_in_memory 0\n") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains("rounds_documents_in_memory 0\n"),
        "{metrics}"
    );

    // SIGTERM: a clean exit; the restarted server reuses its certificate.
    let fingerprint = server.fingerprint;
    let status = server.stop().unwrap();
    assert!(status.success(), "{status:?}");
    let server = ServerProcess::start(store.path()).unwrap();
    assert_eq!(server.fingerprint, fingerprint);
    let dir2 = tempfile::tempdir().unwrap();
    let mut again = Replica::open(dir2.path()).unwrap();
    again.join_facility("sunnyvale").unwrap();
    sync_with(&mut again, &server).await.unwrap();
    assert_eq!(again.export().unwrap().0, want);
}
