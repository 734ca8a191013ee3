//! Interop with the reference JS client: `@automerge/automerge-repo` 2.5 with its WebSocket
//! adapter (installed by `scripts/test` into `tests/js/node_modules`).

use chrono::{Duration, TimeZone, Utc};
use rounds_core::replica::NewInteraction;
use rounds_core::{DocumentId, Month, Program, Replica};
use rounds_tests::{DEV_TOKEN, ServerProcess, repo_root, sunnyvale, sync_with};

fn node(server: &ServerProcess, args: &[&str]) -> serde_json::Value {
    let js = repo_root().join("tests/js");
    assert!(
        js.join("node_modules/@automerge/automerge-repo").exists(),
        "tests/js/node_modules is missing: run `npm install --prefix tests/js` (scripts/test does)"
    );
    let url = format!("wss://localhost:{}/sync?token={DEV_TOKEN}", server.port);
    let out = std::process::Command::new("node")
        .arg(js.join("interop.mjs"))
        .arg(&url)
        .args(args)
        .env("NODE_EXTRA_CA_CERTS", server.store.join("tls/cert.pem"))
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["interactions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_and_a_rust_replica_see_each_others_entries() {
    let store = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(store.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Replica::open(dir.path()).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 12, 4, 14, 0, 0).unwrap();
    d.import(&sunnyvale().unwrap(), now).unwrap();
    let call = |minutes| NewInteraction {
        patient: "p-001".into(),
        staff: "rn-lee".into(),
        program: Program::Ccm,
        started_at: now,
        ended_at: now + Duration::minutes(minutes),
        interactive: true,
        activity: None,
        note: None,
    };
    let first = d.log_interaction(call(12), now).unwrap();
    sync_with(&mut d, &server).await.unwrap();

    // JS finds the month document the Rust replica created, sees its entry, adds one.
    let month: Month = "2026-12".parse().unwrap();
    let doc = DocumentId::patient_month("sunnyvale", "p-001", month).url();
    let js_id = uuid::Uuid::now_v7().to_string();
    let seen = node(&server, &[&doc, "add", &js_id, "p-001"]);
    assert!(ids(&seen).contains(&first.id.to_string()), "{seen}");

    // The Rust replica sees the JS entry after its next sync, and can bill it.
    sync_with(&mut d, &server).await.unwrap();
    let entries = d.month_entries("p-001", month);
    let from_js = entries
        .interactions
        .iter()
        .find(|i| i.id.to_string() == js_id)
        .unwrap_or_else(|| panic!("JS entry missing; problems: {:?}", entries.problems));
    assert_eq!(
        (from_js.ended_at - from_js.started_at).num_seconds(),
        9 * 60 + 30
    );

    // The other way: a new Rust entry reaches a fresh JS peer.
    let second = d
        .log_interaction(call(5), now + Duration::hours(2))
        .unwrap();
    sync_with(&mut d, &server).await.unwrap();
    let listed = ids(&node(&server, &[&doc, "list"]));
    for want in [first.id.to_string(), second.id.to_string(), js_id] {
        assert!(listed.contains(&want), "{want} not in {listed:?}");
    }
}
