//! Running it for real: `/readyz` against a store that goes away, the systemd unit, and a
//! certificate replaced on disk served to the next connection without a restart.

use automerge::ReadDoc;
use rounds_tests::{ServerProcess, https_exchange, repo_root, rounds_bin};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_store_is_gone_and_healthz_stays_up() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let server = ServerProcess::start(&store).unwrap();
    let (status, _, body) = https_exchange(&server, "GET /readyz HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "ready");
    // The disk under the store goes away.
    std::fs::remove_dir_all(&store).unwrap();
    let (status, _, body) = https_exchange(&server, "GET /readyz HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store directory"), "{body}");
    let (status, _, body) = https_exchange(&server, "GET /healthz HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!(status, 200, "liveness only: {body}");
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo_root().join("deploy/rounds.service")).unwrap();
    for directive in [
        "User=rounds",
        "StateDirectory=rounds",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "KillSignal=SIGTERM",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(directive), "missing {directive:?}");
    }
    // `systemd-analyze verify` checks the unit against this machine's systemd; the binary path
    // must exist, so point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rounds.service");
    let bin = rounds_bin().unwrap();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/rounds", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
    // The example configuration the unit names is valid.
    let check = std::process::Command::new(&bin)
        .args(["config", "check", "--config"])
        .arg(repo_root().join("deploy/rounds.toml"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

fn certificate(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, [u8; 32]) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    let fp: [u8; 32] = Sha256::digest(c.cert.der()).into();
    (cert, key, fp)
}

/// Connect trusting only `fingerprint`: Ok when the server presents that certificate.
async fn handshake(port: u16, fingerprint: [u8; 32]) -> Result<(), String> {
    let cfg = rounds_core::sync::net::client_config(&rounds_core::sync::net::Trust::Fingerprint(
        fingerprint,
    ))
    .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first) = certificate(dir.path(), "a");
    let server = ServerProcess::start_with(
        &dir.path().join("store"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(server.fingerprint, first);
    handshake(server.port, first).await.unwrap();
    // An open connection survives the swap.
    let (_, _, before) = https_exchange(&server, "GET /healthz HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!(before.trim(), "ok");
    // The renewed pair replaces the files (as certbot or the practice's CA tooling would).
    let (new_cert, new_key, second) = certificate(dir.path(), "b");
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if handshake(server.port, second).await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not served within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        handshake(server.port, first).await.is_err(),
        "the old one is gone"
    );
    // SIGHUP reloads too (and does not stop the server).
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    handshake(server.port, second).await.unwrap();
    // The reload is in the audit log.
    let mut server = server;
    server.stop().unwrap();
    let audit = rounds_tests::rounds_cli(&[
        "audit",
        "--store",
        dir.path().join("store").to_str().unwrap(),
    ]);
    assert!(audit.contains("tls-reload"), "{audit}");
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = rounds_tests::rounds_cli_output(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Every document of a store: id → (heads, missing dependencies).
fn documents(store: &std::path::Path) -> std::collections::BTreeMap<String, (Vec<String>, usize)> {
    let s = rounds_server::sync::store::Store::open(store).unwrap();
    s.document_ids()
        .into_iter()
        .map(|id| {
            let d = s.load_doc(&id).unwrap();
            let mut heads: Vec<String> = d.get_heads().iter().map(|h| h.to_string()).collect();
            heads.sort();
            (id.url(), (heads, d.get_missing_deps(&[]).len()))
        })
        .collect()
}

/// A stopped store backed up and restored: the same document heads, encounter ledger, push
/// outbox and audit log; a second backup of the untouched original has the same manifest.
#[test]
fn a_backup_restores_the_same_heads_ledger_outbox_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("store");
    let s = store.to_str().unwrap();
    let example = repo_root().join("examples/sunnyvale.json");
    assert!(cli(&["import", example.to_str().unwrap(), "--store", s]).0);
    let (ok, _, err) = cli(&[
        "close-month",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--store",
        s,
    ]);
    assert!(ok, "{err}");
    // A push that cannot reach its EHR stays in the outbox.
    std::fs::write(
        d.join("push.toml"),
        "[hl7]\naddress = \"127.0.0.1:9\"\ntimeout_seconds = 1\n",
    )
    .unwrap();
    let _ = cli(&[
        "push",
        "send",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--config",
        d.join("push.toml").to_str().unwrap(),
        "--wait",
        "1",
        "--store",
        s,
    ]);
    let state = |store: &str| {
        let enc = cli(&[
            "encounters",
            "--facility",
            "sunnyvale",
            "--month",
            "2026-11",
            "--store",
            store,
        ]);
        let push = cli(&["push", "status", "--store", store]);
        let audit = cli(&["audit", "--store", store]);
        assert!(
            enc.0 && push.0 && audit.0,
            "{} {} {}",
            enc.2,
            push.2,
            audit.2
        );
        (enc.1, push.1, audit.1)
    };
    let before = state(s);
    assert!(
        before.1.contains("pending") || before.1.contains("failed"),
        "{}",
        before.1
    );

    let backup = d.join("backup");
    let (ok, out, err) = cli(&["backup", "--to", backup.to_str().unwrap(), "--store", s]);
    assert!(ok, "{err}");
    assert!(out.contains("\"documents\""), "{out}");
    // Into a directory that is not empty: refused.
    let (ok, _, err) = cli(&["backup", "--to", backup.to_str().unwrap(), "--store", s]);
    assert!(!ok && err.contains("not empty"), "{err}");

    let restored = d.join("restored");
    let (ok, out, err) = cli(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--to",
        restored.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"documents\""), "{out}");
    let r = restored.to_str().unwrap();
    let after = state(r);
    assert_eq!(before.0, after.0, "the encounter ledger");
    assert_eq!(before.1, after.1, "the push outbox");
    // The source's log has the backup's own record after what the copy holds.
    let source_audit = state(s).2;
    assert!(
        source_audit.starts_with(after.2.trim_end().trim_end_matches(']')),
        "the audit log"
    );
    assert!(source_audit.contains("\"backup\""));
    assert_eq!(
        documents(&store),
        documents(&restored),
        "the document heads"
    );
    // A directory that is not a backup, and a restore over an existing store: refused.
    let (ok, _, err) = cli(&[
        "restore",
        "--from",
        d.to_str().unwrap(),
        "--to",
        d.join("x").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no manifest"), "{err}");
    let (ok, _, err) = cli(&["restore", "--from", backup.to_str().unwrap(), "--to", r]);
    assert!(!ok && err.contains("not empty"), "{err}");
}

/// A backup taken through the running server while tablets sync: the restored store holds a
/// state the live store was in — every document complete (no change without its
/// dependencies), every change in it also in the live store afterwards, heads as the manifest
/// says — and a server on it serves the tablets' entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_a_sync_storm_restores_a_consistent_store() {
    use chrono::TimeZone;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let store = d.join("store");
    let server = ServerProcess::start(&store).unwrap();
    let data = rounds_tests::sunnyvale().unwrap();
    let t0 = chrono::Utc
        .with_ymd_and_hms(2026, 11, 20, 15, 0, 0)
        .unwrap();
    let mut tablets = Vec::new();
    for i in 0..4 {
        let mut t = rounds_core::Replica::open(d.join(format!("t{i}"))).unwrap();
        t.import(&data, t0).unwrap();
        rounds_tests::sync_with(&mut t, &server).await.unwrap();
        tablets.push(t);
    }
    let url = format!("https://127.0.0.1:{}", server.port);
    let backup = d.join("backup");
    let storm = async {
        let mut handles = Vec::new();
        for (i, mut t) in tablets.into_iter().enumerate() {
            let opts = server.options();
            let sync_url = server.url();
            handles.push(tokio::spawn(async move {
                for round in 0..8 {
                    let start =
                        t0 + chrono::Duration::minutes(i64::try_from(round * 10 + i).unwrap());
                    t.log_interaction(
                        rounds_core::replica::NewInteraction {
                            patient: "p-004".into(),
                            staff: "rn-lee".into(),
                            program: rounds_core::Program::Ccm,
                            started_at: start,
                            ended_at: start + chrono::Duration::minutes(3),
                            interactive: true,
                            activity: Some("call".into()),
                            note: None,
                        },
                        t0,
                    )
                    .unwrap();
                    rounds_core::sync::net::sync(&mut t, &sync_url, &opts, &mut |_, _| {})
                        .await
                        .unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    };
    let take = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (b, s, u) = (backup.clone(), store.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            cli(&[
                "backup",
                "--to",
                b.to_str().unwrap(),
                "--store",
                s.to_str().unwrap(),
                "--server",
                &u,
            ])
        })
        .await
        .unwrap()
    };
    let ((), (ok, out, err)) = tokio::join!(storm, take);
    assert!(ok, "{err}");
    assert!(out.contains("\"documents\""), "{out}");
    let mut server = server;
    server.stop().unwrap();

    let restored = d.join("restored");
    let (ok, _, err) = cli(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--to",
        restored.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let copy = documents(&restored);
    assert!(!copy.is_empty());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("rounds-backup.json")).unwrap()).unwrap();
    let live = rounds_server::sync::store::Store::open(&store).unwrap();
    for (id, (heads, missing)) in &copy {
        assert_eq!(*missing, 0, "{id}: a change without its dependencies");
        assert_eq!(
            manifest["documents"][id],
            serde_json::json!(heads),
            "{id}: heads as the manifest says"
        );
        let doc_id = live
            .document_ids()
            .into_iter()
            .find(|x| x.url() == *id)
            .unwrap_or_else(|| panic!("{id} not in the live store"));
        let doc = live.load_doc(&doc_id).unwrap();
        for h in heads {
            let hash: automerge::ChangeHash = h.parse().unwrap();
            assert!(
                doc.get_change_by_hash(&hash).is_some(),
                "{id}: {h} not in the live store"
            );
        }
    }
    drop(live);
    // A server on the restored store serves what it holds.
    let server = ServerProcess::start(&restored).unwrap();
    let mut fresh = rounds_core::Replica::open(d.join("fresh")).unwrap();
    fresh.import(&data, t0).unwrap();
    let report = rounds_tests::sync_with(&mut fresh, &server).await.unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");
    assert!(report.documents >= copy.len() / 2, "{report:?}");
}

/// `--log-format json`: every log line is a JSON object; the access log has method, path,
/// status and time; no line holds a patient's name or a token (the example's names, the
/// development and admin tokens, a token sent in a query string).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_hold_no_names_or_tokens() {
    use chrono::TimeZone;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let log = dir.path().join("server.log");
    let server = ServerProcess::start_logged(&store, &["--log-format", "json"], &log).unwrap();
    let admin = server.admin_token().unwrap();
    let data = rounds_tests::sunnyvale().unwrap();
    // Onboarding through the API, a tablet's sync, a wrong sign-in, a token in a query string.
    let body = std::fs::read(repo_root().join("examples/sunnyvale.json")).unwrap();
    let (status, _, text) = https_exchange(
        &server,
        &format!("POST /api/v1/import HTTP/1.1\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json"),
        &body,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let mut t = rounds_core::Replica::open(dir.path().join("t")).unwrap();
    t.import(
        &data,
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 20, 15, 0, 0)
            .unwrap(),
    )
    .unwrap();
    rounds_tests::sync_with(&mut t, &server).await.unwrap();
    let _ = https_exchange(
        &server,
        "POST /console/login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded",
        b"username=ana&password=not-the-password",
    )
    .await
    .unwrap();
    let _ = https_exchange(
        &server,
        "GET /sync?token=query-token-never-logged HTTP/1.1",
        b"",
    )
    .await
    .unwrap();
    let mut server = server;
    server.stop().unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let mut json_lines = 0;
    let mut access = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("WARNING:") {
            continue; // the operator's start-up banner (--dev-token)
        }
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        json_lines += 1;
        if v["target"] == "rounds::access" {
            access += 1;
            assert!(
                v["status"].is_u64() && v["path"].is_string() && v["ms"].is_u64(),
                "{line}"
            );
            assert!(!v["path"].as_str().unwrap_or("").contains('?'), "{line}");
        }
    }
    assert!(
        json_lines > 10 && access >= 3,
        "{json_lines} lines, {access} access"
    );
    let mut secrets: Vec<String> = data.patients.iter().map(|p| p.name.clone()).collect();
    secrets.extend([
        admin,
        rounds_tests::DEV_TOKEN.to_string(),
        "query-token-never-logged".to_string(),
        "not-the-password".to_string(),
    ]);
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "{s:?} is in the log");
    }
}

/// A scrape taken while tablets sync passes `promtool check metrics`, and has the histograms
/// (with units), the HTTP responses by status and the outbox and alert gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_taken_during_a_storm_pass_promtool() {
    use chrono::TimeZone;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("store")).unwrap();
    let data = rounds_tests::sunnyvale().unwrap();
    let t0 = chrono::Utc
        .with_ymd_and_hms(2026, 11, 20, 15, 0, 0)
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..3 {
        let mut t = rounds_core::Replica::open(dir.path().join(format!("t{i}"))).unwrap();
        t.import(&data, t0).unwrap();
        let (opts, url) = (server.options(), server.url());
        handles.push(tokio::spawn(async move {
            for _ in 0..3 {
                rounds_core::sync::net::sync(&mut t, &url, &opts, &mut |_, _| {})
                    .await
                    .unwrap();
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let (status, _, during) = https_exchange(&server, "GET /metrics HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!(status, 200);
    for h in handles {
        h.await.unwrap();
    }
    let (_, _, after) = https_exchange(&server, "GET /metrics HTTP/1.1", b"")
        .await
        .unwrap();
    for (when, text) in [("during", &during), ("after", &after)] {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{when}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in [
        "# TYPE rounds_flush_seconds histogram",
        "# TYPE rounds_sync_burst_seconds histogram",
        "# TYPE rounds_close_seconds histogram",
        "# TYPE rounds_push_send_seconds histogram",
        "rounds_http_responses_total{code=\"200\"}",
        "rounds_connections_open ",
        "rounds_documents_in_memory ",
        "rounds_notify_outbox_oldest_age_seconds ",
        "rounds_push_outbox_pending ",
        "rounds_alerts_open ",
        "rounds_quarantine_entries ",
    ] {
        assert!(after.contains(name), "no {name:?} in\n{after}");
    }
    let count = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count(&after, "rounds_sync_burst_seconds_count") > 0.0,
        "{after}"
    );
    assert!(count(&after, "rounds_connections_total") >= 3.0, "{after}");
    // OpenMetrics for a scraper that asks for it.
    let (_, headers, om) = https_exchange(
        &server,
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0",
        b"",
    )
    .await
    .unwrap();
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.contains("openmetrics")),
        "{headers:?}"
    );
    assert!(om.trim_end().ends_with("# EOF"));
}

/// Long work shows progress: off a terminal, `push --wait` writes a plain line every few
/// seconds with its counts, and exits non-zero with a one-line reason when items are left.
#[test]
fn push_wait_shows_progress_lines_and_fails_with_one_line_when_items_are_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = d.join("store");
    let s = s.to_str().unwrap();
    let example = repo_root().join("examples/sunnyvale.json");
    assert!(cli(&["import", example.to_str().unwrap(), "--store", s]).0);
    assert!(
        cli(&[
            "close-month",
            "--facility",
            "sunnyvale",
            "--month",
            "2026-11",
            "--store",
            s
        ])
        .0
    );
    std::fs::write(
        d.join("push.toml"),
        "[hl7]\naddress = \"127.0.0.1:9\"\ntimeout_seconds = 1\n",
    )
    .unwrap();
    let (ok, out, err) = cli(&[
        "push",
        "send",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--config",
        d.join("push.toml").to_str().unwrap(),
        "--wait",
        "8",
        "--store",
        s,
    ]);
    assert!(!ok, "{out}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("rounds push: "))
        .collect();
    assert!(lines.len() >= 2, "{err}");
    assert!(lines[0].contains("pending"), "{err}");
    assert!(lines.iter().all(|l| l.ends_with(" s)")), "{err}");
    let reason: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("push of sunnyvale 2026-11 incomplete"))
        .collect();
    assert_eq!(reason.len(), 1, "{err}");
}
