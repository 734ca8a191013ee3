//! Pushing the monthly package: a local FHIR server that honours `ifNoneExist`, and a local
//! MLLP listener that answers AA, AE, then times out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use rounds_tests::{repo_root, rounds_bin};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn rounds(args: &[&str]) -> String {
    rounds_tests::rounds_cli(args)
}

/// A closed November in a fresh store.
fn closed_store() -> tempfile::TempDir {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    rounds(&[
        "import",
        "--store",
        s,
        repo_root()
            .join("examples/sunnyvale.json")
            .to_str()
            .unwrap(),
    ]);
    rounds(&[
        "close-month",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--store",
        s,
    ]);
    store
}

#[derive(Default)]
struct Fhir {
    /// identifier (the ifNoneExist query) → times created
    created: Mutex<HashMap<String, usize>>,
    requests: Mutex<usize>,
    /// Delay the response to this request number (to kill the pusher mid-push).
    stall_at: Mutex<Option<usize>>,
}

async fn transaction(
    State(f): State<Arc<Fhir>>,
    Json(bundle): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let n = {
        let mut r = f.requests.lock().unwrap();
        *r += 1;
        *r
    };
    if *f.stall_at.lock().unwrap() == Some(n) {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
    let mut out = Vec::new();
    for e in bundle["entry"].as_array().cloned().unwrap_or_default() {
        let key = e["request"]["ifNoneExist"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut created = f.created.lock().unwrap();
        let status = if created.contains_key(&key) {
            "200 OK"
        } else {
            "201 Created"
        };
        *created.entry(key).or_default() += usize::from(status.starts_with("201"));
        out.push(json!({ "response": { "status": status } }));
    }
    (
        axum::http::StatusCode::OK,
        Json(json!({ "resourceType": "Bundle", "type": "transaction-response", "entry": out })),
    )
}

async fn fhir_server() -> (Arc<Fhir>, u16) {
    let state = Arc::new(Fhir::default());
    let app = axum::Router::new()
        .route("/fhir", post(transaction))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_push_is_idempotent_across_repeats_and_a_killed_pusher() {
    let (fhir, port) = fhir_server().await;
    let store = closed_store();
    let s = store.path().to_str().unwrap();
    let config = store.path().join("push.toml");
    std::fs::write(
        &config,
        format!("[fhir]\nbase_url = \"http://127.0.0.1:{port}/fhir\"\ntimeout_seconds = 60\n"),
    )
    .unwrap();
    // Kill the pusher while the 4th bundle is in flight.
    *fhir.stall_at.lock().unwrap() = Some(4);
    let mut child = std::process::Command::new(rounds_bin().unwrap())
        .args([
            "push",
            "send",
            "--facility",
            "sunnyvale",
            "--month",
            "2026-11",
            "--config",
            config.to_str().unwrap(),
            "--store",
            s,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if *fhir.requests.lock().unwrap() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(*fhir.requests.lock().unwrap() >= 4);
    child.kill().unwrap();
    child.wait().unwrap();
    *fhir.stall_at.lock().unwrap() = None;
    // Restarted, it finishes what was left (the interrupted bundle is sent again).
    let out = rounds(&[
        "push",
        "send",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--config",
        config.to_str().unwrap(),
        "--store",
        s,
    ]);
    // `rounds` asserts the exit status: zero, every item acknowledged.
    assert!(
        out.contains("queued 0 new") && out.contains("failed 0, pending 0"),
        "{out}"
    );
    // And a second push of the same month sends nothing.
    let again = rounds(&[
        "push",
        "send",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--config",
        config.to_str().unwrap(),
        "--store",
        s,
    ]);
    assert!(again.contains("queued 0 new"), "{again}");
    let requests = *fhir.requests.lock().unwrap();
    // A different store pushing the same month: every entry is found by its identifier.
    let other = closed_store();
    let o = other.path().to_str().unwrap();
    let cfg2 = other.path().join("push.toml");
    std::fs::write(&cfg2, std::fs::read(&config).unwrap()).unwrap();
    rounds(&[
        "push",
        "send",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--config",
        cfg2.to_str().unwrap(),
        "--store",
        o,
    ]);
    assert!(*fhir.requests.lock().unwrap() > requests);
    let created = fhir.created.lock().unwrap();
    assert!(created.len() > 100, "{}", created.len());
    assert!(
        created.values().all(|n| *n == 1),
        "a resource was created twice: {:?}",
        created.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    let status: Vec<Value> =
        serde_json::from_str(&rounds(&["push", "status", "--store", s])).unwrap();
    assert_eq!(status.len(), 14);
    assert!(status.iter().all(|i| i["status"] == "acknowledged"));
}

/// MSH-10 of a message, and the message without its MSH (the same across resends).
fn parse(message: &str) -> (String, String) {
    let mut segs = message.split('\r');
    let msh = segs.next().unwrap_or_default();
    let control = msh.split('|').nth(9).unwrap_or_default().to_string();
    (control, segs.collect::<Vec<_>>().join("\r"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_push_records_aa_ae_and_retries_a_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut sock, _)) = listener.accept().await {
            n += 1;
            let rec = rec.clone();
            let k = n;
            tokio::spawn(async move {
                let Some(text) = rounds_tests::read_mllp(&mut sock).await else {
                    return;
                };
                let (control, body) = parse(&text);
                rec.lock().unwrap().push(body);
                let ack = |code: &str, extra: &str| {
                    format!(
                        "\u{b}MSH|^~\\&|EHR|PRACTICE|ROUNDS|ROUNDS|20261201000000||ACK|A{k}|P|2.5.1\rMSA|{code}|{control}{extra}\u{1c}\r"
                    )
                };
                let reply = match k {
                    2 => ack(
                        "AE",
                        "\rERR|^^^207&Application internal error&HL70357||207|E||||FT1-7 unknown charge code",
                    ),
                    3 => {
                        // No answer: the sender times out.
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                        return;
                    }
                    _ => ack("AA", ""),
                };
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    let store = closed_store();
    let s = store.path().to_str().unwrap();
    let config = store.path().join("push.toml");
    std::fs::write(
        &config,
        format!("max_attempts = 4\n[hl7]\naddress = \"127.0.0.1:{port}\"\ntimeout_seconds = 1\n"),
    )
    .unwrap();
    // One message failed for good: `push send` says so in one line and exits non-zero.
    let run = rounds_tests::rounds_cli_output(&[
        "push",
        "send",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--config",
        config.to_str().unwrap(),
        "--store",
        s,
        "--wait",
        "30",
    ]);
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(!run.status.success(), "{out}");
    assert!(out.contains("failed 1, pending 0"), "{out}");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("incomplete: 1 failed, 0 pending")),
        "{err}"
    );
    let items: Vec<Value> =
        serde_json::from_str(&rounds(&["push", "status", "--store", s])).unwrap();
    let failed: Vec<&Value> = items.iter().filter(|i| i["status"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("FT1-7 unknown charge code"),
        "{failed:?}"
    );
    let retried: Vec<&Value> = items
        .iter()
        .filter(|i| i["attempts"].as_u64().unwrap() > 1)
        .collect();
    assert_eq!(retried.len(), 1, "{items:#?}");
    assert_eq!(retried[0]["status"], "acknowledged");
    assert!(
        retried[0]["acknowledgement"]
            .as_str()
            .unwrap()
            .contains("MSA|AA")
    );
    // Nothing acknowledged was sent twice; only the timed-out message went out again.
    let received = received.lock().unwrap();
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for b in received.iter() {
        *counts.entry(b).or_default() += 1;
    }
    assert_eq!(
        counts.values().filter(|n| **n == 2).count(),
        1,
        "{counts:?}"
    );
    assert!(counts.values().all(|n| *n <= 2));
    assert_eq!(received.len(), items.len() + 1);
}

/// While a server runs on the store, `rounds push status` answers through its admin API, and
/// `/metrics` shows the outbox by status after the server's push round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_status_through_a_running_server_and_the_outbox_in_metrics() {
    let (_fhir, port) = fhir_server().await;
    let store = closed_store();
    let s = store.path().to_str().unwrap();
    let config = store.path().join("push.toml");
    std::fs::write(
        &config,
        format!("[fhir]\nbase_url = \"http://127.0.0.1:{port}/fhir\"\n"),
    )
    .unwrap();
    rounds(&[
        "push",
        "send",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--config",
        config.to_str().unwrap(),
        "--store",
        s,
    ]);
    let server = rounds_tests::ServerProcess::start_with(
        store.path(),
        &["--push", config.to_str().unwrap()],
    )
    .unwrap();
    let status: Vec<Value> = serde_json::from_str(&rounds(&[
        "push",
        "status",
        "--month",
        "2026-11",
        "--store",
        s,
        "--server",
        &format!("https://127.0.0.1:{}", server.port),
    ]))
    .unwrap();
    assert_eq!(status.len(), 14);
    assert!(
        status
            .iter()
            .all(|i| i["payload"].as_str().unwrap().ends_with(" bytes"))
    );
    let mut seen = 0.0;
    for _ in 0..100 {
        seen = rounds_tests::metric(&server, "rounds_push_outbox_items{status=\"acknowledged\"}")
            .await
            .unwrap();
        if seen == 14.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(seen, 14.0);
}

/// A CA, a listener certificate for `localhost` and a client certificate, all signed by it.
struct Pki {
    ca: rcgen::Certificate,
    leaf: (rustls::pki_types::CertificateDer<'static>, Vec<u8>),
    client_pem: (String, String),
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Interface engine CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["rounds-pusher".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca,
        leaf: (leaf.der().clone(), leaf_key.serialize_der()),
        client_pem: (client.pem(), client_key.serialize_pem()),
    }
}

/// An MLLP-over-TLS listener that asks for a client certificate signed by the CA and answers AA;
/// it records (MSH-10, the message without MSH) of every message.
async fn tls_listener(pki: &Pki) -> (u16, Arc<Mutex<Vec<(String, String)>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![pki.leaf.0.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.leaf.1.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, rec) = (acceptor.clone(), rec.clone());
            tokio::spawn(async move {
                let Ok(mut sock) = acceptor.accept(tcp).await else {
                    return;
                };
                let Some(text) = rounds_tests::read_mllp(&mut sock).await else {
                    return;
                };
                let (control, body) = parse(&text);
                rec.lock().unwrap().push((control.clone(), body));
                let ack = format!(
                    "\u{b}MSH|^~\\&|EHR|PRACTICE|ROUNDS|ROUNDS|20261201000000||ACK|A1|P|2.5.1\rMSA|AA|{control}\u{1c}\r"
                );
                let _ = sock.write_all(ack.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (port, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_over_tls_with_a_client_certificate_and_a_new_control_id_per_transmission() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = pki();
    let (port, received) = tls_listener(&pki).await;
    let store = closed_store();
    let s = store.path().to_str().unwrap();
    // Copies of the store from before any push: "restored from a backup".
    let copy = || {
        let d = tempfile::tempdir().unwrap();
        rounds_tests::copy_dir(store.path(), d.path()).unwrap();
        d
    };
    let (no_client, wrong_name, restored) = (copy(), copy(), copy());
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("client.pem"),
        dir.path().join("client-key.pem"),
    );
    std::fs::write(&ca, pki.ca.pem()).unwrap();
    std::fs::write(&cert, &pki.client_pem.0).unwrap();
    std::fs::write(&key, &pki.client_pem.1).unwrap();
    let send = |store: &Path, config: &str| {
        let path = dir.path().join("push.toml");
        std::fs::write(&path, config).unwrap();
        rounds_tests::rounds_cli_output(&[
            "push",
            "send",
            "--facility",
            "sunnyvale",
            "--month",
            "2026-11",
            "--config",
            path.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--wait",
            "3",
        ])
    };
    let tls = format!(
        "max_attempts = 2\n[hl7]\naddress = \"127.0.0.1:{port}\"\ntimeout_seconds = 5\ntls = true\n\
         server_name = \"localhost\"\nca_file = \"{}\"\n",
        ca.display()
    );
    let with_client = format!(
        "{tls}client_cert = \"{}\"\nclient_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    // Without the client certificate the listener refuses the handshake: nothing lands, and
    // `push send` says so with a non-zero exit.
    let refused = send(no_client.path(), &tls);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("CertificateRequired"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    // A listener whose certificate does not carry the expected name is not trusted.
    let wrong = send(
        wrong_name.path(),
        &with_client.replace(
            "server_name = \"localhost\"",
            "server_name = \"ehr.example\"",
        ),
    );
    assert!(!wrong.status.success());
    assert!(received.lock().unwrap().is_empty());
    // With both, every message lands.
    let out = send(store.path(), &with_client);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Vec<(String, String)> = received.lock().unwrap().clone();
    assert!(first.len() > 20, "{}", first.len());
    let _ = s;
    // The store restored from before the push sends every message again: new control ids, the
    // same messages otherwise (business keys unchanged).
    let out = send(restored.path(), &with_client);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let all: Vec<(String, String)> = received.lock().unwrap().clone();
    let second = &all[first.len()..];
    assert_eq!(second.len(), first.len());
    let controls: std::collections::BTreeSet<&String> = all.iter().map(|(c, _)| c).collect();
    assert_eq!(controls.len(), all.len(), "an MSH-10 was used twice");
    assert!(all.iter().all(|(c, _)| c.len() <= 20));
    // The business keys: PV1-19 (visit), FT1-2 (charge), TXA-12 (document), ORC-3 (result).
    let keys = |v: &[(String, String)]| {
        let mut all: Vec<Vec<String>> = v
            .iter()
            .map(|(_, body)| {
                body.split('\r')
                    .filter_map(|seg| {
                        let f: Vec<&str> = seg.split('|').collect();
                        let at = match f[0] {
                            "PV1" => 19,
                            "FT1" => 2,
                            "TXA" => 12,
                            "ORC" => 3,
                            _ => return None,
                        };
                        f.get(at).map(|x| format!("{}-{at}={x}", f[0]))
                    })
                    .collect()
            })
            .collect();
        all.sort();
        all
    };
    assert_eq!(keys(&first), keys(second));
    assert!(
        keys(&first)
            .iter()
            .flatten()
            .any(|k| k.starts_with("FT1-2="))
    );
}
