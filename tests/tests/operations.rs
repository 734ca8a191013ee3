//! Running it for real: `/readyz` against a store that goes away, the systemd unit, and a
//! certificate replaced on disk served to the next connection without a restart.

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
