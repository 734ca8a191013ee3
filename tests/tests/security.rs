//! Enrolment, facility-scoped access, revocation and the audit log, against a real server.

use futures_util::SinkExt;
use rounds_core::sync::wire::Message;
use rounds_core::{DocumentId, Month, Replica};
use rounds_tests::raw::{connect, join, next_message};
use rounds_tests::{ServerProcess, https_request, repo_root, sunnyvale};
use tokio_tungstenite::tungstenite::Message as Ws;

fn rounds(args: &[&str]) -> String {
    rounds_tests::rounds_cli(args)
}

/// Two facilities in one store: sunnyvale (the example) and oakwood (the same residents under
/// another facility id), plus one enrolled device for sunnyvale. Returns the device token.
fn setup(store: &std::path::Path) -> String {
    let s = store.to_str().unwrap();
    let example = repo_root().join("examples/sunnyvale.json");
    rounds(&["import", "--store", s, example.to_str().unwrap()]);
    let mut other: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    other["facility"]["id"] = "oakwood".into();
    other["facility"]["name"] = "Oakwood Care".into();
    let path = store.join("oakwood.json");
    std::fs::write(&path, other.to_string()).unwrap();
    rounds(&["import", "--store", s, path.to_str().unwrap()]);
    let added: serde_json::Value = serde_json::from_str(&rounds(&[
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

fn first_sync_message() -> Vec<u8> {
    use automerge::sync::SyncDoc;
    let doc = automerge::Automerge::new();
    let mut state = automerge::sync::State::new();
    doc.generate_sync_message(&mut state).unwrap().encode()
}

fn pushed_document() -> Vec<u8> {
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    let mut doc = automerge::AutoCommit::new();
    doc.put(automerge::ROOT, "smuggled", "data").unwrap();
    let mut state = automerge::sync::State::new();
    doc.sync()
        .generate_sync_message(&mut state)
        .unwrap()
        .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_sees_only_its_facility_and_denials_are_audited() {
    let store = tempfile::tempdir().unwrap();
    let token = setup(store.path());
    let server = ServerProcess::start_with(store.path(), &[]).unwrap();

    // Its own facility syncs fine, with the enrolled token.
    let dir = tempfile::tempdir().unwrap();
    let mut tablet = Replica::open(dir.path()).unwrap();
    tablet.join_facility("sunnyvale").unwrap();
    let mut opts = server.options();
    opts.token = token.clone();
    let report = rounds_core::sync::net::sync(&mut tablet, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    assert!(
        report.unsent.is_empty() && report.unavailable == 0,
        "{report:?}"
    );
    assert_eq!(
        tablet.patients().0.len(),
        sunnyvale().unwrap().patients.len()
    );

    // Everything of oakwood is unavailable: request, sync, and a push of a new document id.
    let mut ws = connect(&server, &token).await.unwrap();
    let server_id = join(&mut ws, "raw").await;
    let month: Month = "2026-11".parse().unwrap();
    let foreign = [
        (
            "request",
            DocumentId::facility("oakwood"),
            first_sync_message(),
        ),
        (
            "sync",
            DocumentId::patient("oakwood", "p-001"),
            first_sync_message(),
        ),
        (
            "sync",
            DocumentId::patient_month("oakwood", "p-002", month),
            pushed_document(),
        ),
        ("sync", DocumentId::from_bytes([9; 16]), pushed_document()),
    ];
    for (kind, doc, data) in &foreign {
        let (sender_id, target_id, document_id) =
            ("raw".to_string(), server_id.clone(), doc.to_string());
        let m = if *kind == "request" {
            Message::Request {
                sender_id,
                target_id,
                document_id,
                data: data.clone(),
            }
        } else {
            Message::Sync {
                sender_id,
                target_id,
                document_id,
                data: data.clone(),
            }
        };
        ws.send(Ws::Binary(m.encode().into())).await.unwrap();
        match next_message(&mut ws).await {
            Some(Message::DocUnavailable { document_id, .. }) => {
                assert_eq!(document_id, doc.to_string())
            }
            other => panic!("{kind} {doc}: expected doc-unavailable, got {other:?}"),
        }
    }
    drop(ws);
    // The pushed ids were not created: a device of that facility... nobody can fetch them.
    let (_, body) = https_request(&server, "GET", "/metrics", None, None)
        .await
        .unwrap();
    assert!(body.contains("rounds_access_denied_total 4"), "{body}");

    // The audit log has the denials (through the running server's admin API).
    let s = store.path().to_str().unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let audit: Vec<serde_json::Value> = serde_json::from_str(&rounds(&[
        "audit", "--device", "tab-a", "--store", s, "--server", &url,
    ]))
    .unwrap();
    let denied: Vec<_> = audit.iter().filter(|r| r["action"] == "denied").collect();
    assert_eq!(denied.len(), 4, "{audit:#?}");
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "read" && r["patient"] == "p-001")
    );
    assert!(audit.iter().any(|r| r["action"] == "enrol"));
    let csv = rounds(&[
        "audit",
        "--patient",
        "p-001",
        "--csv",
        "--store",
        s,
        "--server",
        &url,
    ]);
    assert!(csv.starts_with("at,action,device,facility,document,patient,detail"));
    // No names in the audit log.
    assert!(!csv.contains("Jane Doe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_off_and_cannot_reconnect() {
    let store = tempfile::tempdir().unwrap();
    let token = setup(store.path());
    let server = ServerProcess::start(store.path()).unwrap();
    let mut ws = connect(&server, &token).await.unwrap();
    let server_id = join(&mut ws, "raw").await;
    let s = store.path().to_str().unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&rounds(&["device", "list", "--store", s, "--server", &url])).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0]["revoked_at"].is_null());
    assert!(
        !listed[0].to_string().contains(&token),
        "the token must not be listed"
    );
    rounds(&["device", "revoke", "tab-a", "--store", s, "--server", &url]);
    // The next frame closes the connection.
    let m = Message::Request {
        sender_id: "raw".into(),
        target_id: server_id,
        document_id: DocumentId::facility("sunnyvale").to_string(),
        data: first_sync_message(),
    };
    ws.send(Ws::Binary(m.encode().into())).await.unwrap();
    match next_message(&mut ws).await {
        Some(Message::Error { message, .. }) => assert!(message.contains("revoked"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(next_message(&mut ws).await.is_none());
    let err = connect(&server, &token).await.unwrap_err();
    assert!(err.contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_codes_are_single_use_and_expire() {
    let store = tempfile::tempdir().unwrap();
    setup(store.path());
    // Codes live 2 seconds on this server.
    let server =
        ServerProcess::start_with(store.path(), &["--enrolment-code-hours", "0.000556"]).unwrap();
    let s = store.path().to_str().unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let code: serde_json::Value = serde_json::from_str(&rounds(&[
        "device",
        "code",
        "--facility",
        "sunnyvale",
        "--store",
        s,
        "--server",
        &url,
    ]))
    .unwrap();
    let code = code["code"].as_str().unwrap().to_string();
    let body = serde_json::json!({"code": code, "name": "tab-b"});
    let (status, reply) =
        https_request(&server, "POST", "/api/v1/devices/enroll", Some(&body), None)
            .await
            .unwrap();
    assert!(status.contains("200"), "{status} {reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["facility"], "sunnyvale");
    let token = reply["token"].as_str().unwrap().to_string();
    assert!(connect(&server, &token).await.is_ok());
    // Reused: refused.
    let again = serde_json::json!({"code": code, "name": "tab-c"});
    let (status, _) = https_request(
        &server,
        "POST",
        "/api/v1/devices/enroll",
        Some(&again),
        None,
    )
    .await
    .unwrap();
    assert!(status.contains("403"), "{status}");
    // Expired: refused.
    let code2: serde_json::Value = serde_json::from_str(&rounds(&[
        "device",
        "code",
        "--facility",
        "sunnyvale",
        "--store",
        s,
        "--server",
        &url,
    ]))
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let late = serde_json::json!({"code": code2["code"], "name": "tab-d"});
    let (status, _) = https_request(&server, "POST", "/api/v1/devices/enroll", Some(&late), None)
        .await
        .unwrap();
    assert!(status.contains("403"), "{status}");
    // Guessing is rate limited.
    let mut limited = false;
    for i in 0..20 {
        let guess = serde_json::json!({"code": format!("guess{i}"), "name": "x"});
        let (status, _) = https_request(
            &server,
            "POST",
            "/api/v1/devices/enroll",
            Some(&guess),
            None,
        )
        .await
        .unwrap();
        limited |= status.contains("429");
    }
    assert!(limited);
    // Admin endpoints need the admin credential.
    let (status, _) = https_request(&server, "GET", "/api/v1/devices", None, Some(&token))
        .await
        .unwrap();
    assert!(status.contains("401"), "{status}");
}
