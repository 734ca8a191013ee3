//! Our device client against the automerge-repo reference server (`bench/reference-server.mjs`,
//! the JS Repo with NodeFS storage; its packages are installed by `scripts/test` into
//! `bench/node_modules`).
//!
//! Regression: three tablets that changed the same documents offline sync at once, then again.
//! The reference server keeps its in-memory sync state per *peer id* across connections, so a
//! client that reused its peer id after a disconnect was never re-sent changes the server had
//! "sent" into the closed socket, and the two sides exchanged empty messages without end.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use rounds_core::Replica;
use rounds_core::replica::NewInteraction;
use rounds_core::sync::net::{SyncOptions, Trust, sync};
use rounds_tests::{entry_ids, repo_root, sunnyvale};

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_reference(dir: &std::path::Path) -> (Node, u16) {
    let bench = repo_root().join("bench");
    assert!(
        bench
            .join("node_modules/@automerge/automerge-repo-storage-nodefs")
            .exists(),
        "bench/node_modules is missing: run `npm install --prefix bench` (scripts/test does)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let child = Command::new("node")
        .arg(bench.join("reference-server.mjs"))
        .arg(port.to_string())
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node");
    let node = Node(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (node, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("reference server did not start on {port}");
}

async fn round(tablets: Vec<Replica>, url: &str) -> Vec<Replica> {
    let mut tasks = Vec::new();
    for mut r in tablets {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let opts = SyncOptions::new("unused", Trust::SystemRoots);
            let report = sync(&mut r, &url, &opts, &mut |_, _| {}).await;
            (r, report)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        let (r, report) = t.await.unwrap();
        let report = report.unwrap();
        assert!(report.unsent.is_empty(), "unsent: {:?}", report.unsent);
        out.push(r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tablets_converge_through_the_reference_server() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let (_node, port) = start_reference(&work.path().join("ref-store"));
    let url = format!("ws://127.0.0.1:{port}/");
    let day = Utc.with_ymd_and_hms(2026, 12, 3, 14, 0, 0).unwrap();
    let mut tablets = Vec::new();
    for t in 0..3 {
        let mut r = Replica::open(work.path().join(format!("tablet-{t}"))).unwrap();
        r.import(&sunnyvale().unwrap(), day).unwrap();
        // Every tablet logs time for the same patients: shared documents change on all three.
        for (k, patient) in ["p-001", "p-002", "p-003"].iter().enumerate() {
            let at = day + chrono::Duration::minutes((t * 10 + k) as i64);
            r.log_interaction(
                NewInteraction {
                    patient: patient.to_string(),
                    staff: "rn-lee".into(),
                    program: rounds_core::Program::Ccm,
                    started_at: at,
                    ended_at: at + chrono::Duration::minutes(4),
                    interactive: true,
                    activity: None,
                    note: None,
                },
                at,
            )
            .unwrap();
        }
        tablets.push(r);
    }
    let converge = async {
        let tablets = round(tablets, &url).await; // push
        round(tablets, &url).await // pull the others' changes
    };
    let tablets = tokio::time::timeout(Duration::from_secs(120), converge)
        .await
        .expect("tablets did not converge through the reference server within 120 s");
    let ids: Vec<Vec<String>> = tablets.iter().map(|r| entry_ids(r).unwrap()).collect();
    assert!(
        ids[0].len() >= 9,
        "expected the 9 interactions, got {}",
        ids[0].len()
    );
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
}
