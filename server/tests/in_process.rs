//! The server in process, mini-redis style: `http::run` on a listener bound to port 0, a shutdown
//! future, and tokio's paused clock as the server's clock (`Clock::Tokio`), so the grace window,
//! alert deadlines and escalation are reached with `tokio::time::advance` instead of waiting or
//! rewriting a clock file. The process tests (`tests/tests/*.rs`) stay for the CLI, SIGKILL
//! durability and interoperability.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rounds_server::http;
use rounds_server::server::{Limits, ServeOptions};
use rounds_server::services::alerting::Clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn options(store: &Path, listen: SocketAddr, clock: Clock) -> ServeOptions {
    ServeOptions {
        store: store.to_path_buf().into(),
        listen,
        tls_cert: None,
        tls_key: None,
        insecure_http: true,
        max_frame: 8 << 20,
        dev_token: None,
        limits: Limits::default(),
        rules: Default::default(),
        close_check: Duration::from_secs(3600),
        notify: None,
        clock,
        alert_tick: Duration::from_secs(10),
        push: None,
        adt: None,
    }
}

/// One HTTP/1.1 exchange over loopback: (status, body).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Wait (in the paused clock's time) until `f` holds, or fail after `limit` of it.
async fn until<F, Fut>(limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_grace_window_and_alert_deadlines_run_on_the_servers_clock() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // 3 December: November is in its grace window (closed after the 7th).
    let t0: DateTime<Utc> = "2026-12-03T15:00:00Z".parse().unwrap();
    let clock = Clock::tokio_from(t0);
    let opts = options(&store, addr, clock.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        http::run(listener, &opts, async {
            let _ = stopped.await;
        })
        .await
    });

    let token_file = store.join("admin-token");
    until(Duration::from_secs(60), || async { token_file.exists() }).await;
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sunnyvale.json"),
    )
    .unwrap();
    let (status, body) =
        request(addr, "POST", "/api/v1/import", Some(&admin), Some(&example)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["facility"], "sunnyvale");

    let encounters = "/api/v1/encounters?facility=sunnyvale&month=2026-11";
    let (status, body) = request(addr, "GET", encounters, Some(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body).as_array().map(Vec::len),
        Some(0),
        "not closed yet"
    );

    // A vendor reading that raises an urgent alert (SpO2 86 % < 90: a 30-minute deadline).
    let (status, body) = request(
        addr,
        "POST",
        "/api/v1/integrations",
        Some(&admin),
        Some(r#"{"facility":"sunnyvale","name":"acme-rpm"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let key = json(&body)["api_key"].as_str().unwrap().to_string();
    let now = clock.now();
    let reading = serde_json::json!({
        "reading_id": "acme-1", "device_id": "cuff-07", "kind": "spo2",
        "values": {"value": 86}, "unit": "%", "measured_at": now.to_rfc3339(),
    })
    .to_string();
    let (status, body) =
        request(addr, "POST", "/api/v1/readings", Some(&key), Some(&reading)).await;
    assert_eq!(status, 201, "{body}");
    let created = json(&body);
    assert_eq!(
        created["alerts"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );
    let open = || async {
        let (_, body) = request(addr, "GET", "/api/v1/notifications", Some(&admin), None).await;
        json(&body)["open_alerts"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(open().await, 1);

    // A bad reading is refused with a problem naming the field, and changes nothing.
    let bad = reading
        .replace("\"unit\":\"%\"", "\"unit\":\"furlongs\"")
        .replace("acme-1", "acme-2");
    let (status, body) = request(addr, "POST", "/api/v1/readings", Some(&key), Some(&bad)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        json(&body)["detail"].as_str().unwrap().contains("unit"),
        "{body}"
    );
    let (status, _) = request(
        addr,
        "POST",
        "/api/v1/readings",
        Some("wrong"),
        Some(&reading),
    )
    .await;
    assert_eq!(status, 401);

    // Nobody answers: 31 minutes later the alert has been escalated (the escalation loop ticks
    // every 10 s of the paused clock).
    tokio::time::advance(Duration::from_secs(31 * 60)).await;
    until(Duration::from_secs(600), || async { open().await == 0 }).await;
    let (_, audit) = request(addr, "GET", "/api/v1/audit", Some(&admin), None).await;
    assert!(audit.contains("alert-escalated"), "{audit}");

    // Five days on (8 December): November is past its grace window and closed by the server's
    // own loop, without anyone asking.
    tokio::time::advance(Duration::from_secs(5 * 24 * 3600)).await;
    until(Duration::from_secs(3 * 3600), || async {
        let (_, body) = request(addr, "GET", encounters, Some(&admin), None).await;
        json(&body).as_array().map_or(0, Vec::len) > 0
    })
    .await;
    let (_, body) = request(addr, "GET", encounters, Some(&admin), None).await;
    let versions = json(&body);
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.len(), 20, "one version per resident");
    assert!(versions.iter().all(|v| v["version"] == 1), "{body}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
