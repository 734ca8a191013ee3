//! What anyone on the network can reach without a credential, and the limits that keep it from
//! locking nobody out, eating the server's memory, flooding the audit log or holding sockets open.

use std::time::Duration;

use rounds_tests::{ServerProcess, add_console_user, console_sign_in, metric, rss_kib};

const PASSWORD: &str = "correct horse battery staple";

/// A server whose per-address and per-account sign-in rate limits are out of the way, so what is
/// tested is the lockout and the bound on password hashes.
fn server_without_rate_limits(store: &std::path::Path) -> ServerProcess {
    ServerProcess::start_with(store, &["--sign-ins-per-minute", "100000"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_passwords_lock_the_account_after_five_checks() {
    let dir = tempfile::tempdir().unwrap();
    add_console_user(dir.path(), "ana", "admin", &["sunnyvale"], PASSWORD).unwrap();
    let server = server_without_rate_limits(dir.path());
    let before = metric(&server, "rounds_password_hashes_total")
        .await
        .unwrap();
    let guesses: Vec<_> = (0..40)
        .map(|i| {
            let server = &server;
            async move { console_sign_in(server, "ana", &format!("guess-{i}")).await }
        })
        .collect();
    let results = futures_util::future::join_all(guesses).await;
    let mut statuses = Vec::new();
    for r in results {
        let (status, body) = r.unwrap();
        assert!(!body.contains(PASSWORD));
        statuses.push(status);
    }
    assert!(
        statuses.iter().all(|s| *s != 303),
        "a wrong password signed in: {statuses:?}"
    );
    let checked = metric(&server, "rounds_password_hashes_total")
        .await
        .unwrap()
        - before;
    assert!(
        checked <= 5.0,
        "{checked} passwords were checked for one account before the lockout held (at most 5)"
    );
    // Locked: even the right password is refused now, without a check.
    let (_, body) = console_sign_in(&server, "ana", PASSWORD).await.unwrap();
    assert!(body.contains("locked until"), "{body}");
    let after = metric(&server, "rounds_password_hashes_total")
        .await
        .unwrap()
        - before;
    assert_eq!(
        after, checked,
        "a locked account's password was still checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_sign_ins_keep_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    add_console_user(dir.path(), "ana", "admin", &["sunnyvale"], PASSWORD).unwrap();
    let server = server_without_rate_limits(dir.path());
    // Warm up: one page and one sign-in, so the baseline holds what any running server holds.
    console_sign_in(&server, "ana", PASSWORD).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = rss_kib(server.child.id());
    assert!(base > 0, "no /proc status for the server");
    for wave in 0..2 {
        let attempts: Vec<_> = (0..100)
            .map(|i| {
                let server = &server;
                // Unknown users cost a full hash too (same time as a real check).
                async move { console_sign_in(server, &format!("nobody-{wave}-{i}"), "wrong").await }
            })
            .collect();
        for r in futures_util::future::join_all(attempts).await {
            let (status, _) = r.unwrap();
            assert!(status == 401 || status == 429, "{status}");
        }
    }
    let grown_mib = server.peak_rss_kib().saturating_sub(base) / 1024;
    assert!(
        grown_mib < 300,
        "200 concurrent sign-ins grew the server by {grown_mib} MiB (limit 300)"
    );
    let hashes = metric(&server, "rounds_password_hashes_total")
        .await
        .unwrap();
    assert!(
        hashes >= 2.0,
        "the flood was refused before any hash: {hashes}"
    );
}

/// Whether the server closes `stream` (EOF or an error) within `within`, reading and
/// discarding whatever it sends first.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_header_connections_are_closed_within_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--header-timeout-seconds", "2"]).unwrap();
    let started = std::time::Instant::now();
    let me = std::net::Ipv4Addr::LOCALHOST;
    // Half a request head (slowloris), one byte (under hyper's protocol detection), and a TCP
    // connection that never starts its TLS handshake.
    let mut half_headers = Vec::new();
    for _ in 0..20 {
        let mut tls = rounds_tests::tls_from(&server, me).await.unwrap();
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: local")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        half_headers.push(tls);
    }
    let mut one_byte = Vec::new();
    for _ in 0..5 {
        let mut tls = rounds_tests::tls_from(&server, me).await.unwrap();
        tls.write_all(b"G").await.unwrap();
        tls.flush().await.unwrap();
        one_byte.push(tls);
    }
    let mut no_handshake = Vec::new();
    for _ in 0..5 {
        no_handshake.push(rounds_tests::tcp_from(&server, me).await.unwrap());
    }
    let open = metric(&server, "rounds_tcp_connections_open")
        .await
        .unwrap();
    assert!(open >= 30.0, "{open} connections open");
    let limit = Duration::from_secs(8);
    for s in &mut half_headers {
        assert!(closed_within(s, limit).await, "a half header stayed open");
    }
    for s in &mut one_byte {
        assert!(
            closed_within(s, limit).await,
            "a one-byte request stayed open"
        );
    }
    for s in &mut no_handshake {
        assert!(
            closed_within(s, limit).await,
            "a silent TCP connection stayed open"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "closed before the timeout: {took:?}"
    );
    // The server still serves, and holds none of them.
    let (status, _, body) = rounds_tests::https_exchange(&server, "GET /healthz HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let open = metric(&server, "rounds_tcp_connections_open")
        .await
        .unwrap();
    assert!(open <= 2.0, "{open} connections still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_are_capped_per_address_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            "--max-connections-per-address",
            "4",
            "--max-connections",
            "7",
            "--header-timeout-seconds",
            "60",
        ],
    )
    .unwrap();
    let a = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let b = std::net::Ipv4Addr::new(127, 0, 0, 3);
    let c = std::net::Ipv4Addr::new(127, 0, 0, 4);
    let mut from_a = Vec::new();
    for _ in 0..4 {
        from_a.push(rounds_tests::tls_from(&server, a).await.unwrap());
    }
    // A fifth from the same address is closed before its handshake completes.
    assert!(rounds_tests::tls_from(&server, a).await.is_err());
    let mut from_b = Vec::new();
    for _ in 0..3 {
        from_b.push(rounds_tests::tls_from(&server, b).await.unwrap());
    }
    // Seven open: the eighth, from a third address, is refused too.
    assert!(rounds_tests::tls_from(&server, c).await.is_err());
    // One closes: its place is free again.
    drop(from_a.pop());
    let mut again = None;
    for _ in 0..50 {
        if let Ok(s) = rounds_tests::tls_from(&server, c).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a freed place was not given back");
    drop((from_a, from_b, again));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_address = metric(&server, "rounds_connections_refused_per_address_total")
        .await
        .unwrap();
    let total = metric(&server, "rounds_connections_refused_total")
        .await
        .unwrap();
    assert!(per_address >= 1.0 && total >= 1.0, "{per_address} {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_bodies_are_limited_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &["--max-body-bytes", "4096", "--max-import-bytes", "65536"],
    )
    .unwrap();
    let admin = server.admin_token().unwrap();
    let big = vec![b'x'; 10_000];
    for (path, kind) in [
        ("/api/v1/readings", "application/json"),
        ("/api/v1/devices/enroll", "application/json"),
        ("/console/login", "application/x-www-form-urlencoded"),
    ] {
        let head = format!("POST {path} HTTP/1.1\r\nContent-Type: {kind}");
        let (status, _, _) = rounds_tests::https_exchange(&server, &head, &big)
            .await
            .unwrap();
        assert_eq!(status, 413, "{path}");
    }
    // The import has its own, larger limit: 10 kB is read (and refused as a data file), 100 kB
    // is not read at all.
    let head = format!("POST /api/v1/import HTTP/1.1\r\nAuthorization: Bearer {admin}");
    let (status, _, _) = rounds_tests::https_exchange(&server, &head, &big)
        .await
        .unwrap();
    assert_ne!(status, 413);
    let huge = vec![b'x'; 100_000];
    let (status, _, _) = rounds_tests::https_exchange(&server, &head, &huge)
        .await
        .unwrap();
    assert_eq!(status, 413);
}

/// The audit records with `action`, through the admin API.
async fn audit_records(server: &ServerProcess, action: &str) -> Vec<serde_json::Value> {
    let head = format!(
        "GET /api/v1/audit HTTP/1.1\r\nAuthorization: Bearer {}",
        server.admin_token().unwrap()
    );
    let (status, _, body) = rounds_tests::https_exchange(server, &head, b"")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    all.into_iter().filter(|r| r["action"] == action).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthenticated_floods_add_a_handful_of_aggregated_audit_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            "--audit-aggregate-seconds",
            "2",
            "--sign-ins-per-minute",
            "5",
        ],
    )
    .unwrap();
    let reading = br#"{"reading_id":"r1","device_id":"d1","kind":"weight","values":{"value":80},"unit":"kg","measured_at":"2026-11-03T08:00:00Z"}"#;
    let posts: Vec<_> = (0..200)
        .map(|i| {
            let server = &server;
            async move {
                let head = if i % 2 == 0 {
                    "POST /api/v1/readings HTTP/1.1\r\nContent-Type: application/json".to_string()
                } else {
                    "POST /api/v1/readings HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Bearer wrong-key".to_string()
                };
                rounds_tests::https_exchange(server, &head, reading).await
            }
        })
        .collect();
    for r in futures_util::future::join_all(posts).await {
        assert_eq!(r.unwrap().0, 401);
    }
    // Rate-limited sign-ins (5 per minute from this address): refused, and aggregated too.
    for i in 0..30 {
        console_sign_in(&server, &format!("someone-{i}"), "x")
            .await
            .unwrap();
    }
    let rejected = audit_records(&server, "ingest-rejected").await;
    assert!(
        !rejected.is_empty() && rejected.len() <= 3,
        "{} records for 200 unauthenticated readings",
        rejected.len()
    );
    let refused = audit_records(&server, "console-login-refused").await;
    assert!(
        refused.len() <= 3,
        "{} records for 25 refused sign-ins",
        refused.len()
    );
    let events = metric(&server, "rounds_audit_noisy_events_total")
        .await
        .unwrap();
    assert!(events >= 225.0, "{events}");
    let folded = metric(&server, "rounds_audit_events_aggregated_total")
        .await
        .unwrap();
    assert!(folded >= 200.0, "{folded}");
    // When the interval ends, one summary with the count.
    let mut summary = None;
    for _ in 0..40 {
        let rejected = audit_records(&server, "ingest-rejected").await;
        if let Some(s) = rejected.iter().find(|r| r["repeated"].is_u64()) {
            summary = Some(s.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let summary = summary.expect("no summary record after the interval");
    assert_eq!(summary["repeated"], 199, "{summary}");
    let all = audit_records(&server, "ingest-rejected").await;
    assert_eq!(all.len(), 2, "{all:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_facility_admin_sees_only_their_facilities_users_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    add_console_user(store, "admin-a", "admin", &["fac-a"], PASSWORD).unwrap();
    add_console_user(store, "admin-b", "admin", &["fac-b"], PASSWORD).unwrap();
    add_console_user(store, "nurse-b", "nurse", &["fac-b"], PASSWORD).unwrap();
    add_console_user(store, "nurse-ab", "nurse", &["fac-a", "fac-b"], PASSWORD).unwrap();
    let server = ServerProcess::start_with(store, &["--sign-ins-per-minute", "1000"]).unwrap();
    // Failed sign-ins: another facility's nurse, a shared nurse, an unknown name; a lockout.
    for _ in 0..5 {
        console_sign_in(&server, "nurse-b", "wrong").await.unwrap();
    }
    console_sign_in(&server, "nurse-ab", "wrong").await.unwrap();
    console_sign_in(&server, "mallory-probe", "wrong")
        .await
        .unwrap();
    let page = |who: &'static str| {
        let server = &server;
        async move {
            let (status, cookie, body) = rounds_tests::console_session(server, who, PASSWORD)
                .await
                .unwrap();
            let cookie = cookie.unwrap_or_else(|| panic!("{who} did not sign in: {status} {body}"));
            let head = format!("GET /console/audit HTTP/1.1\r\nCookie: {cookie}");
            let (status, _, html) = rounds_tests::https_exchange(server, &head, b"")
                .await
                .unwrap();
            assert_eq!(status, 200, "{html}");
            html
        }
    };
    let a = page("admin-a").await;
    for hidden in [
        "nurse-b",
        "admin-b",
        "mallory-probe",
        "console-login-locked",
    ] {
        assert!(!a.contains(hidden), "admin-a sees {hidden}");
    }
    assert!(
        a.contains("user:nurse-ab"),
        "admin-a misses a shared user's failed sign-in"
    );
    assert!(a.contains("user:admin-a"));
    let b = page("admin-b").await;
    for shown in [
        "user:nurse-b",
        "console-login-locked",
        "user:nurse-ab",
        "user:admin-b",
    ] {
        assert!(b.contains(shown), "admin-b misses {shown}");
    }
    assert!(!b.contains("admin-a") && !b.contains("mallory-probe"));
    // The operator (admin token) still sees everything, the unknown name included.
    let head = format!(
        "GET /api/v1/audit HTTP/1.1\r\nAuthorization: Bearer {}",
        server.admin_token().unwrap()
    );
    let (_, _, all) = rounds_tests::https_exchange(&server, &head, b"")
        .await
        .unwrap();
    assert!(all.contains("mallory-probe") && all.contains("nurse-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_tokens_can_be_turned_off_and_are_never_logged() {
    use rounds_tests::{DEV_TOKEN, raw};
    let leaky = "leaky-query-token-7f3a9c";
    // On (the default, for browser clients), with every log line the server can write.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut server = ServerProcess::start_logged(&dir.path().join("store"), &[], &log).unwrap();
    let ws = raw::connect_with_query_token(&server, DEV_TOKEN).await;
    assert!(ws.is_ok(), "{:?}", ws.err());
    drop(ws);
    let refused = raw::connect_with_query_token(&server, leaky).await;
    assert!(refused.err().is_some_and(|e| e.contains("401")));
    // A console sign-in with a password, too: never logged either.
    console_sign_in(&server, "nobody", leaky).await.unwrap();
    server.stop().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 5,
        "debug logging was not on:\n{text}"
    );
    for secret in [DEV_TOKEN, leaky] {
        assert!(!text.contains(secret), "the log holds a token:\n{text}");
    }
    // Off: a token in the URL is refused with a clear reason; the header still works.
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--no-query-tokens"]).unwrap();
    let refused = raw::connect_with_query_token(&server, DEV_TOKEN).await;
    assert!(refused.err().is_some_and(|e| e.contains("401")));
    assert!(raw::connect(&server, DEV_TOKEN).await.is_ok());
    let n = metric(&server, "rounds_query_tokens_refused_total")
        .await
        .unwrap();
    assert_eq!(n, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_problem_details_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).unwrap();
    let (status, headers, body) =
        rounds_tests::https_exchange(&server, "GET /api/v1/devices HTTP/1.1", b"")
            .await
            .unwrap();
    assert_eq!(status, 401);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/problem+json"),
        "{headers:?}"
    );
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 401);
    assert_eq!(problem["detail"], "admin token required");
    let head = format!(
        "POST /api/v1/close HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {}",
        server.admin_token().unwrap()
    );
    let (status, _, body) = rounds_tests::https_exchange(
        &server,
        &head,
        br#"{"facility":"sunnyvale","month":"2026-13"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 422, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        problem["detail"].as_str().unwrap().starts_with("month:"),
        "{problem}"
    );
}
