//! Alerts end to end: raised offline on a tablet, not raised twice by the server, acknowledged on
//! two tablets offline; device ingestion (idempotent, unknown devices refused); escalation at the
//! deadline with a controllable clock, notified once by webhook (HMAC) and email (SMTP sink),
//! each after a first failure.

use std::io::BufRead;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use hmac::{Hmac, Mac};
use rounds_core::alerts::{AlertAction, AlertStatus};
use rounds_core::replica::{Acknowledgement, NewReading};
use rounds_core::{ReadingKind, ReadingSource, Replica};
use rounds_tests::{ServerProcess, https_request, rounds_cli, sunnyvale, sync_with};

fn tablet(dir: &Path) -> Replica {
    let mut r = Replica::open(dir).unwrap();
    r.import(
        &sunnyvale().unwrap(),
        Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap(),
    )
    .unwrap();
    r
}

fn spo2(patient: &str, value: f64, at: chrono::DateTime<Utc>) -> NewReading {
    NewReading {
        patient: patient.into(),
        kind: ReadingKind::Spo2,
        systolic: None,
        diastolic: None,
        value: Some(value),
        unit: "%".into(),
        measured_at: at,
        device: Some("oximeter".into()),
        source: ReadingSource::Manual,
        program: None,
    }
}

async fn wait_until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..secs * 10 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs} s waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_alert_is_raised_once_and_two_offline_acknowledgements_merge() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("store")).unwrap();
    let mut a = tablet(&dir.path().join("a"));
    let mut b = Replica::open(dir.path().join("b")).unwrap();
    b.join_facility("sunnyvale").unwrap();

    // Offline on tablet A: an SpO2 of 85 % raises an urgent alert right there.
    let now = Utc::now();
    let (reading, raised) = a
        .record_reading_alerts(spo2("p-003", 85.0, now - chrono::Duration::minutes(2)), now)
        .unwrap();
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].rule, "spo2-low");
    assert_eq!(a.open_alerts().len(), 1);
    let alert = raised[0].id;

    // Synced: the server sees the reading with its alert and raises no second one.
    sync_with(&mut a, &server).await.unwrap();
    let admin = server.admin_token().unwrap();
    wait_until("the server to index the alert", 15, async || {
        let (_, body) = https_request(&server, "GET", "/api/v1/notifications", None, Some(&admin))
            .await
            .unwrap();
        body.contains(&alert.to_string())
    })
    .await;
    // Give the server's evaluation a moment more, then pull everything onto tablet B.
    tokio::time::sleep(Duration::from_millis(800)).await;
    sync_with(&mut b, &server).await.unwrap();
    let on_b: Vec<_> = b
        .open_alerts()
        .into_iter()
        .filter(|v| v.alert.reading == reading.id)
        .collect();
    assert_eq!(on_b.len(), 1, "one alert for the reading: {on_b:?}");
    assert_eq!(on_b[0].alert.id, alert);
    assert!(
        on_b[0].alert.raised_by.starts_with("device-"),
        "raised by the tablet, not re-raised by the server: {}",
        on_b[0].alert.raised_by
    );
    let (_, body) = https_request(&server, "GET", "/api/v1/notifications", None, Some(&admin))
        .await
        .unwrap();
    assert_eq!(body.matches(&alert.to_string()).count(), 1, "{body}");

    // Both tablets acknowledge offline, each with a note.
    let later = now + chrono::Duration::minutes(5);
    a.acknowledge_alert(
        alert,
        Acknowledgement {
            by: "rn-lee".into(),
            note: "Rechecked: 91 % after repositioning".into(),
            minutes: 6,
            interactive: true,
        },
        later,
    )
    .unwrap();
    b.acknowledge_alert(
        alert,
        Acknowledgement {
            by: "rn-okafor".into(),
            note: "Called family; O2 on at 2 L".into(),
            minutes: 4,
            interactive: true,
        },
        later + chrono::Duration::minutes(1),
    )
    .unwrap();
    sync_with(&mut a, &server).await.unwrap();
    sync_with(&mut b, &server).await.unwrap();
    sync_with(&mut a, &server).await.unwrap();
    for (name, r) in [("a", &a), ("b", &b)] {
        let views: Vec<_> = r
            .month_docs()
            .into_iter()
            .flat_map(|(p, m, _)| r.alerts(&p, m))
            .filter(|v| v.alert.id == alert)
            .collect();
        assert_eq!(views.len(), 1, "tablet {name}");
        let v = &views[0];
        assert_eq!(v.status, AlertStatus::Acknowledged, "tablet {name}");
        let notes: Vec<&str> = v
            .events
            .iter()
            .filter(|e| e.action == AlertAction::Acknowledged)
            .filter_map(|e| e.note.as_deref())
            .collect();
        assert_eq!(notes.len(), 2, "tablet {name}: {notes:?}");
        assert!(notes.contains(&"Rechecked: 91 % after repositioning"));
        assert!(notes.contains(&"Called family; O2 on at 2 L"));
        // The acknowledgement time is logged as interactions (it counts toward the month).
        let ack_interactions = v.events.iter().filter_map(|e| e.interaction).count();
        assert_eq!(ack_interactions, 2);
        let (data, _) = r.export().unwrap();
        for e in &v.events {
            let i = e.interaction.unwrap();
            assert!(
                data.interactions
                    .iter()
                    .any(|x| x.id == i && x.note == e.note),
                "tablet {name}: interaction {i} missing"
            );
        }
    }
}

/// A webhook receiver on 127.0.0.1: the first request gets 500, later ones 200. Records
/// (headers, body) of every request.
type Requests = Arc<Mutex<Vec<(Vec<(String, String)>, String)>>>;

async fn webhook_receiver() -> (u16, Requests) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Requests = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body[..len].to_string());
                        }
                    }
                };
                let headers: Vec<(String, String)> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let first = {
                    let mut l = log.lock().unwrap();
                    l.push((headers, body));
                    l.len() == 1
                };
                let status = if first {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (port, seen)
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn smtp_sink(out: &Path) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("python3")
        .arg(rounds_tests::repo_root().join("tests/smtp_sink.py"))
        .arg(port.to_string())
        .arg(out)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with aiosmtpd (pip install aiosmtpd; scripts/test does)");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "SMTP sink did not start (is aiosmtpd installed?)"
    );
    (Child(child), port)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
    h.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_is_idempotent_and_an_unacknowledged_alert_escalates_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (hook_port, hooks) = webhook_receiver().await;
    let (_sink, smtp_port) = smtp_sink(&dir.path().join("mail"));
    let secret = "s3cret-for-the-test-0123456789";
    // The webhook key from a secrets file, not the TOML: the signatures below prove it is used.
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let notify = dir.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!(
            "[webhook]\nurl = \"http://127.0.0.1:{hook_port}/rounds\"\nsecret = {{ file = {:?} }}\n\n\
             [email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp_port}\nsecurity = \"none\"\n\
             from = \"rounds@practice.test\"\nto = [\"oncall@practice.test\"]\n",
            secret_file.display()
        ),
    )
    .unwrap();
    // The server's clock: mid-December, so the example's November readings are not recent.
    let t0 = Utc.with_ymd_and_hms(2026, 12, 15, 15, 0, 0).unwrap();
    let clock = dir.path().join("clock");
    std::fs::write(&clock, t0.to_rfc3339()).unwrap();
    let store = dir.path().join("store");
    // p-007's practitioner's practice has a notification contact: the e-mail goes to it too.
    let practice = dir.path().join("practice.json");
    std::fs::write(
        &practice,
        r#"{ "id": "smith-pc", "name": "Smith Primary Care", "practitioners": ["dr-smith"],
             "contacts": ["billing@smith.test"] }"#,
    )
    .unwrap();
    rounds_tests::rounds_cli(&[
        "practice",
        "set",
        practice.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    let server = ServerProcess::start_with(
        &store,
        &[
            "--notify",
            notify.to_str().unwrap(),
            "--clock-file",
            clock.to_str().unwrap(),
            "--alert-tick-seconds",
            "1",
        ],
    )
    .unwrap();
    let mut t = tablet(&dir.path().join("t"));
    sync_with(&mut t, &server).await.unwrap();

    let base = format!("https://127.0.0.1:{}", server.port);
    let out = rounds_cli(&[
        "integration",
        "add",
        "--facility",
        "sunnyvale",
        "--name",
        "acme-rpm",
        "--store",
        store.to_str().unwrap(),
        "--server",
        &base,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = v["api_key"].as_str().unwrap().to_string();

    let measured = (t0 - chrono::Duration::minutes(3)).to_rfc3339();
    let body = serde_json::json!({
        "reading_id": "acme-000123",
        "device_id": "cuff-07",
        "kind": "spo2",
        "values": {"value": 86},
        "unit": "%",
        "measured_at": measured,
    });
    let (status, resp) =
        https_request(&server, "POST", "/api/v1/readings", Some(&body), Some(&key))
            .await
            .unwrap();
    assert!(status.contains("201"), "{status} {resp}");
    let created: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(created["patient"], "p-007");
    assert_eq!(created["alerts"].as_array().unwrap().len(), 1, "{resp}");
    let reading_id = created["reading"].as_str().unwrap().to_string();
    // The same vendor reading again: stored once.
    let (status, resp) =
        https_request(&server, "POST", "/api/v1/readings", Some(&body), Some(&key))
            .await
            .unwrap();
    assert!(status.contains("200"), "{status} {resp}");
    assert!(resp.contains("\"duplicate\":true"), "{resp}");

    // Unknown device: 404, named, and nothing written.
    sync_with(&mut t, &server).await.unwrap();
    let before = t.export().unwrap().0.readings.len();
    let mut unknown = body.clone();
    unknown["device_id"] = "cuff-99".into();
    unknown["reading_id"] = "acme-000124".into();
    let (status, resp) = https_request(
        &server,
        "POST",
        "/api/v1/readings",
        Some(&unknown),
        Some(&key),
    )
    .await
    .unwrap();
    assert!(status.contains("404"), "{status} {resp}");
    assert!(
        resp.contains("device_id") && resp.contains("cuff-99"),
        "{resp}"
    );
    // Bad unit and impossible value: 422 naming the field.
    let mut bad = body.clone();
    bad["reading_id"] = "acme-000125".into();
    bad["unit"] = "kg".into();
    let (status, resp) = https_request(&server, "POST", "/api/v1/readings", Some(&bad), Some(&key))
        .await
        .unwrap();
    assert!(
        status.contains("422") && resp.contains("unit"),
        "{status} {resp}"
    );
    let mut bad = body.clone();
    bad["reading_id"] = "acme-000126".into();
    bad["values"]["value"] = 140.into();
    let (status, resp) = https_request(&server, "POST", "/api/v1/readings", Some(&bad), Some(&key))
        .await
        .unwrap();
    assert!(
        status.contains("422") && resp.contains("value"),
        "{status} {resp}"
    );
    // Without a key: 401.
    let (status, _) = https_request(&server, "POST", "/api/v1/readings", Some(&body), None)
        .await
        .unwrap();
    assert!(status.contains("401"), "{status}");
    sync_with(&mut t, &server).await.unwrap();
    let (data, _) = t.export().unwrap();
    assert_eq!(
        data.readings.len(),
        before,
        "rejected readings wrote nothing"
    );
    let stored: Vec<_> = data
        .readings
        .iter()
        .filter(|r| r.id.to_string() == reading_id)
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].source, ReadingSource::Device);
    let audit = rounds_cli(&[
        "audit",
        "--store",
        store.to_str().unwrap(),
        "--server",
        &base,
    ]);
    assert!(
        audit.contains("ingest-rejected") && audit.contains("cuff-99"),
        "{audit}"
    );

    // Nothing is due yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hooks.lock().unwrap().is_empty());
    // 31 minutes later, still not acknowledged: escalates, notified once per channel.
    std::fs::write(&clock, (t0 + chrono::Duration::minutes(31)).to_rfc3339()).unwrap();
    let mail = dir.path().join("mail");
    wait_until("webhook and email deliveries", 30, async || {
        hooks.lock().unwrap().len() >= 2 && mail.join("1.eml").exists()
    })
    .await;
    // Let more ticks pass: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let hooks = hooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 2, "one failed attempt, then one delivery");
    assert_eq!(
        header(&hooks[0].0, "x-rounds-delivery"),
        header(&hooks[1].0, "x-rounds-delivery"),
        "the retry is the same delivery"
    );
    let (h, body) = &hooks[1];
    let ts = header(h, "x-rounds-timestamp");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    let expect: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(header(h, "x-rounds-signature"), format!("sha256={expect}"));
    let n: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(n["event"], "alert.escalated");
    assert_eq!(n["patient"], "p-007");
    assert_eq!(n["escalated_to"], "dr-smith");
    let files: Vec<_> = std::fs::read_dir(&mail).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "exactly one email");
    let eml = std::fs::read_to_string(mail.join("1.eml")).unwrap();
    let subject = eml
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .unwrap_or_default()
        .to_string();
    assert!(subject.contains("urgent"), "{subject}");
    let to = eml
        .lines()
        .find(|l| l.starts_with("To:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        to.contains("oncall@practice.test") && to.contains("billing@smith.test"),
        "{to}"
    );
    let names: Vec<String> = sunnyvale()
        .unwrap()
        .patients
        .iter()
        .map(|p| p.name.clone())
        .collect();
    for name in &names {
        for part in name.split_whitespace().filter(|p| p.len() > 3) {
            assert!(
                !subject.contains(part),
                "patient name in the subject: {subject}"
            );
        }
    }
    assert!(!subject.contains("p-007"), "{subject}");

    // The escalation is in the documents: the tablet sees it.
    sync_with(&mut t, &server).await.unwrap();
    let esc: Vec<_> = t
        .month_docs()
        .into_iter()
        .flat_map(|(p, m, _)| t.alerts(&p, m))
        .filter(|v| v.alert.reading.to_string() == reading_id)
        .collect();
    assert_eq!(esc.len(), 1);
    assert_eq!(esc[0].status, AlertStatus::Escalated);
    let e: Vec<_> = esc[0]
        .events
        .iter()
        .filter(|e| e.action == AlertAction::Escalated)
        .collect();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].to.as_deref(), Some("dr-smith"));
}

#[test]
fn invalid_protocol_thresholds_are_rejected_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("protocol.toml");
    std::fs::write(
        &f,
        "[deadlines]\nurgent_minutes = 30\nwarning_minutes = 240\n\n[[rule]]\nid = \"o2\"\nkind = \"spo2\"\nabove = 95\nbelow = 97\nseverity = \"urgent\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(rounds_tests::rounds_bin().unwrap())
        .args(["protocol", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rule \"o2\"") && err.contains("above"),
        "{err}"
    );
    let default = rounds_cli(&["protocol", "default"]);
    std::fs::write(&f, default).unwrap();
    let ok = rounds_cli(&["protocol", "check", f.to_str().unwrap()]);
    assert!(ok.contains("5 rules"), "{ok}");
}

#[test]
fn triage_calls_resolutions_and_staff_escalations_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = tablet(&dir.path().join("t"));
    let now = Utc.with_ymd_and_hms(2026, 11, 20, 15, 0, 0).unwrap();
    // A 24/7 line call: an interactive interaction recording the outcome; it counts.
    let call = r
        .log_triage_call(
            rounds_core::replica::TriageCall {
                patient: "p-007".into(),
                staff: "rn-lee".into(),
                started_at: now - chrono::Duration::minutes(12),
                ended_at: now,
                outcome: rounds_core::alerts::TriageOutcome::NurseVisit,
                note: Some("Daughter called: dizziness; nurse visited".into()),
            },
            now,
        )
        .unwrap();
    assert!(call.interactive);
    assert_eq!(
        call.program,
        rounds_core::Program::Rpm,
        "p-007 is enrolled in RPM"
    );
    assert_eq!(call.activity.as_deref(), Some("triage-call: nurse_visit"));
    let (data, _) = r.export().unwrap();
    assert!(data.interactions.iter().any(|i| i.id == call.id));

    // Escalated by staff, then resolved: the history keeps both; resolved needs no response.
    let (_, raised) = r
        .record_reading_alerts(spo2("p-007", 84.0, now), now)
        .unwrap();
    let alert = raised[0].id;
    let e = r
        .escalate_alert(alert, "rn-lee", Some("Not improving".into()), now)
        .unwrap()
        .unwrap();
    assert_eq!(e.to.as_deref(), Some("dr-smith"));
    assert_eq!(r.open_alerts()[0].status, AlertStatus::Escalated);
    r.resolve_alert(alert, "dr-smith", Some("Seen; O2 started".into()), now)
        .unwrap();
    assert!(r.open_alerts().is_empty());
    // Bad input changes nothing: unknown staff, empty note, zero minutes.
    let before = r.export().unwrap().0.interactions.len();
    let ack = |by: &str, note: &str, minutes| Acknowledgement {
        by: by.into(),
        note: note.into(),
        minutes,
        interactive: false,
    };
    assert!(
        r.acknowledge_alert(alert, ack("nobody", "x", 3), now)
            .is_err()
    );
    assert!(
        r.acknowledge_alert(alert, ack("rn-lee", " ", 3), now)
            .is_err()
    );
    assert!(
        r.acknowledge_alert(alert, ack("rn-lee", "ok", 0), now)
            .is_err()
    );
    assert_eq!(r.export().unwrap().0.interactions.len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_raises_alerts_for_synced_readings_under_its_protocol() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let server = ServerProcess::start(&store).unwrap();
    let mut t = tablet(&dir.path().join("t"));
    sync_with(&mut t, &server).await.unwrap();

    // The practice tightens SpO2 to < 94 while the tablet is offline (it still has the default).
    let protocol = dir.path().join("protocol.toml");
    std::fs::write(
        &protocol,
        rounds_core::alerts::DEFAULT_PROTOCOL.replace(
            "id = \"spo2-low\"\nkind = \"spo2\"\nbelow = 90",
            "id = \"spo2-low\"\nkind = \"spo2\"\nbelow = 94",
        ),
    )
    .unwrap();
    let base = format!("https://127.0.0.1:{}", server.port);
    let out = rounds_cli(&[
        "protocol",
        "set",
        "--facility",
        "sunnyvale",
        protocol.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--server",
        &base,
    ]);
    assert!(
        out.contains("\"rules\":5") || out.contains("\"rules\": 5"),
        "{out}"
    );

    let now = Utc::now();
    let (reading, raised) = t
        .record_reading_alerts(spo2("p-002", 92.0, now - chrono::Duration::minutes(1)), now)
        .unwrap();
    assert!(
        raised.is_empty(),
        "the tablet's protocol does not alert at 92 %"
    );
    sync_with(&mut t, &server).await.unwrap();
    // The server evaluates the synced reading under the new protocol and raises the alert; the
    // tablet gets it (and the new protocol) on its next sync.
    let mut found = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sync_with(&mut t, &server).await.unwrap();
        found = t
            .open_alerts()
            .into_iter()
            .filter(|v| v.alert.reading == reading.id)
            .collect();
        if !found.is_empty() {
            break;
        }
    }
    assert_eq!(
        found.len(),
        1,
        "the server raised one alert for the synced reading"
    );
    assert_eq!(found[0].alert.raised_by, "server");
    assert_eq!(
        t.alert_protocol()
            .rules
            .iter()
            .find(|r| r.id == "spo2-low")
            .unwrap()
            .below,
        Some(94.0)
    );
    // A further reading on the tablet now alerts offline under the synced protocol.
    let (_, raised) = t
        .record_reading_alerts(spo2("p-002", 93.0, now), now)
        .unwrap();
    assert_eq!(raised.len(), 1);
}
