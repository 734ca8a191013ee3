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
