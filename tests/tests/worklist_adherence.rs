//! `rounds worklist` says which RPM periods are heading for too few reading days at the rate so
//! far (examples/sunnyvale.json as of 2026-11-10: the periods Oct 20 – Nov 18 and Oct 15 – Nov 13).

use rounds_tests::{repo_root, rounds_cli};

#[test]
fn the_worklist_names_rpm_periods_at_risk_with_days_needed_and_left() {
    let data = repo_root().join("examples/sunnyvale.json");
    let out = rounds_cli(&[
        "worklist",
        "--data",
        data.to_str().unwrap(),
        "--as-of",
        "2026-11-10",
    ]);
    let line = |p: &str| {
        out.lines()
            .find(|l| l.starts_with(p) && l.contains(" rpm "))
            .unwrap_or_else(|| panic!("no rpm row for {p}:\n{out}"))
            .to_string()
    };
    // 15 days so far, 8 left: on track, nothing said.
    assert!(!line("p-007").contains("days"), "{}", line("p-007"));
    assert!(line("p-007").contains("15d/8d"));
    // 6 days, 8 left: 16 is out of reach.
    assert!(
        line("p-008").contains("16 days out of reach (6 so far, 8 left)"),
        "{}",
        line("p-008")
    );
    // 14 days, 3 left: possible, but not at the rate so far.
    assert!(
        line("p-017").contains("behind: 2 more days needed in 3 left"),
        "{}",
        line("p-017")
    );
    // On the period's last day with one reading day: 2 is still reachable, with a reading today.
    let last = rounds_cli(&[
        "worklist",
        "--data",
        data.to_str().unwrap(),
        "--as-of",
        "2026-11-18",
    ]);
    let p009 = last
        .lines()
        .find(|l| l.starts_with("p-009") && l.contains(" rpm "))
        .expect("p-009 row");
    assert!(
        p009.contains("16 days out of reach (1 so far, 0 left): 99445 at most"),
        "{p009}"
    );
}

/// The alert kind: with `rpm_adherence` among the notify events, the server sends one notice per
/// RPM period at risk (as of its clock), naming ids and days, never names; on track says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periods_at_risk_are_notified_once_by_webhook() {
    use std::sync::{Arc, Mutex};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let data = repo_root().join("examples/sunnyvale.json");
    rounds_cli(&["import", data.to_str().unwrap(), "--store", s]);
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "2026-11-10T20:00:00Z").unwrap();

    // A webhook receiver recording the bodies.
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let log = log.clone();
            async move {
                if let Ok(v) = serde_json::from_str(&body) {
                    log.lock().unwrap().push(v);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let notify = dir.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "events = [\"rpm_adherence\"]\n[webhook]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"0123456789abcdef-secret\"\n"
        ),
    )
    .unwrap();
    let _server = rounds_tests::ServerProcess::start_with(
        &store,
        &[
            "--clock-file",
            clock.to_str().unwrap(),
            "--notify",
            notify.to_str().unwrap(),
            "--alert-tick-seconds",
            "1",
        ],
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = seen.lock().unwrap().len();
        if n >= 2 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A few more ticks: nothing is sent twice.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let got = seen.lock().unwrap().clone();
    let of = |p: &str| {
        got.iter()
            .filter(|v| v.to_string().contains(&format!("\"{p}\"")))
            .cloned()
            .collect::<Vec<_>>()
    };
    let p008 = of("p-008");
    assert_eq!(p008.len(), 1, "{got:?}");
    let text = p008[0].to_string();
    assert!(text.contains("rpm.adherence"), "{text}");
    assert!(text.contains("rpm_adherence:short"), "{text}");
    assert!(
        text.contains("16 days out of reach (6 so far, 8 left)"),
        "{text}"
    );
    let p017 = of("p-017");
    assert_eq!(p017.len(), 1, "{got:?}");
    assert!(p017[0].to_string().contains("rpm_adherence:behind"));
    assert!(of("p-007").is_empty(), "on track: no notice");
    let names: Vec<String> = rounds_tests::sunnyvale()
        .unwrap()
        .patients
        .iter()
        .map(|p| p.name.clone())
        .collect();
    for v in &got {
        for n in &names {
            assert!(!v.to_string().contains(n.as_str()), "a name in {v}");
        }
    }
}
