//! A day of the facility's HL7 v2 ADT feed over MLLP (`rounds serve --adt-listen`): admissions
//! (a new resident, and one cancelled), a hospital transfer and return, Part A from A08s, a
//! merge, a discharge (and one cancelled), two deaths. The tablet sees the roster and the stays
//! the feed wrote; month close bills exactly what `rounds bill` bills on the data file with the
//! same facts typed in. Bad, unknown-facility and unmatched messages are AE and change nothing;
//! a repeated message is acknowledged and changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{NaiveDate, TimeZone, Utc};
use rounds_core::billing::{RuleSet, bill};
use rounds_core::{Replica, Stay, StayKind};
use rounds_tests::{ServerProcess, read_mllp, rounds_cli, sunnyvale, sync_with};
use tokio::io::AsyncWriteExt;

const FEED: &str = r#"
[[feed]]
sending_facility = "SUNNYVALE_PCC"
facility = "sunnyvale"
practitioner = "dr-smith"
hospital_locations = ["HOSP"]

[feed.part_a]
field = "PV1-20"
covered = ["MA"]
"#;

/// A segment with fields set by position.
fn seg(name: &str, fields: &[(usize, &str)]) -> String {
    let n = fields.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let mut v = vec![String::new(); n + 1];
    v[0] = name.to_string();
    for (i, x) in fields {
        v[*i] = x.to_string();
    }
    v.join("|")
}

fn pid(mrn: &str, name: &str) -> String {
    seg(
        "PID",
        &[
            (1, "1"),
            (3, &format!("{mrn}^^^PCC^MR")),
            (5, name),
            (7, "19400101"),
            (8, "F"),
        ],
    )
}

fn message(sender: &str, trigger: &str, control: &str, at: &str, rest: &[String]) -> String {
    let mut segs = vec![
        format!("MSH|^~\\&|PCC|{sender}|ROUNDS|RX|{at}||ADT^{trigger}^ADT_A01|{control}|P|2.5.1"),
        seg("EVN", &[(1, trigger), (2, at)]),
    ];
    segs.extend(rest.iter().cloned());
    segs.join("\r")
}

fn adt(trigger: &str, control: &str, at: &str, rest: &[String]) -> String {
    message("SUNNYVALE_PCC", trigger, control, at, rest)
}

/// Send one message, return (MSA-1, MSA-3).
async fn send(port: u16, msg: &str) -> (String, String) {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut frame = vec![0x0b];
    frame.extend_from_slice(msg.as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    sock.write_all(&frame).await.unwrap();
    let ack = read_mllp(&mut sock).await.expect("an ACK");
    let msa = ack
        .split('\r')
        .find(|s| s.starts_with("MSA|"))
        .unwrap_or_else(|| panic!("no MSA in {ack:?}"));
    let f: Vec<&str> = msa.split('|').collect();
    (
        f.get(1).copied().unwrap_or("").to_string(),
        f.get(3).copied().unwrap_or("").to_string(),
    )
}

async fn ok(port: u16, msg: &str) -> String {
    let (code, text) = send(port, msg).await;
    assert_eq!(code, "AA", "{text}\n{msg}");
    text
}

async fn refused(port: u16, msg: &str, field: &str) {
    let (code, text) = send(port, msg).await;
    assert_eq!(code, "AE", "{text}\n{msg}");
    assert!(text.contains(field), "{field} not in {text:?}");
}

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tablet(dir: &Path) -> Replica {
    let mut r = Replica::open(dir).unwrap();
    r.import(
        &sunnyvale().unwrap(),
        Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap(),
    )
    .unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_adt_traffic_sets_roster_and_stays_and_month_close_follows() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = dir.path().join("adt.toml");
    std::fs::write(&config, FEED).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    rounds_tests::add_console_user(&store, "ana", "nurse", &["sunnyvale"], "correct horse 12")
        .unwrap();
    let server = ServerProcess::start_with(
        &store,
        &[
            "--adt-listen",
            &listen,
            "--adt-config",
            config.to_str().unwrap(),
        ],
    )
    .unwrap();
    let mut t = tablet(&dir.path().join("t"));
    sync_with(&mut t, &server).await.unwrap();
    let roster_before = t.patient_ids().len();

    // Bad messages first: each AE naming the field, nothing written.
    refused(port, "hello", "MSH").await;
    refused(
        port,
        &message(
            "OTHER_HOME",
            "A02",
            "x1",
            "20261104",
            &[pid("100148", "X^Y"), seg("PV1", &[(3, "HOSP")])],
        ),
        "MSH-4",
    )
    .await;
    refused(
        port,
        &adt(
            "A02",
            "x2",
            "20261104",
            &[pid("999999", "X^Y"), seg("PV1", &[(3, "HOSP")])],
        ),
        "PID-3",
    )
    .await;
    refused(
        port,
        &adt("A01", "x3", "20261104", &[pid("300001", "")]),
        "PID-5",
    )
    .await;
    refused(
        port,
        &adt("A11", "x4", "20261104", &[pid("100148", "X^Y")]),
        "MSH-9",
    )
    .await;
    refused(
        port,
        &adt("A02", "x5", "2026-11-04", &[pid("100148", "X^Y")]),
        "EVN-2",
    )
    .await;
    sync_with(&mut t, &server).await.unwrap();
    assert_eq!(t.patient_ids().len(), roster_before);
    let p004 = t.patient("p-004").unwrap();
    assert!(p004.stays.is_empty() && p004.discharged_on.is_none());

    // The day's traffic (dates in November, the facility's local time).
    let new = ok(
        port,
        &adt(
            "A01",
            "m01",
            "20261103090000",
            &[
                pid("200001", "Newman^Ruth"),
                seg("PV1", &[(2, "I"), (3, "2W^201")]),
            ],
        ),
    )
    .await;
    assert!(new.contains("mrn-200001: admitted"), "{new}");
    ok(
        port,
        &adt(
            "A02",
            "m02",
            "20261114101500",
            &[pid("100074", "X^Y"), seg("PV1", &[(2, "I"), (3, "HOSP")])],
        ),
    )
    .await;
    ok(
        port,
        &adt(
            "A02",
            "m03",
            "20261116140000",
            &[pid("100074", "X^Y"), seg("PV1", &[(2, "I"), (3, "2W^202")])],
        ),
    )
    .await;
    // The transfer out again (same MSH-10): a no-op, so the stay is not reopened.
    let again = ok(
        port,
        &adt(
            "A02",
            "m02",
            "20261114101500",
            &[pid("100074", "X^Y"), seg("PV1", &[(2, "I"), (3, "HOSP")])],
        ),
    )
    .await;
    assert!(again.contains("duplicate"), "{again}");
    ok(
        port,
        &adt(
            "A08",
            "m04",
            "20261110",
            &[pid("100111", "X^Y"), seg("PV1", &[(3, "2W"), (20, "MA")])],
        ),
    )
    .await;
    ok(
        port,
        &adt(
            "A08",
            "m05",
            "20261120",
            &[pid("100111", "X^Y"), seg("PV1", &[(3, "2W"), (20, "MB")])],
        ),
    )
    .await;
    ok(
        port,
        &adt("A01", "m06", "20261105", &[pid("200002", "Ortiz^Luis")]),
    )
    .await;
    ok(
        port,
        &adt("A11", "m07", "20261105", &[pid("200002", "Ortiz^Luis")]),
    )
    .await;
    ok(
        port,
        &adt(
            "A40",
            "m08",
            "20261118",
            &[pid("100185", "X^Y"), seg("MRG", &[(1, "200001^^^PCC^MR")])],
        ),
    )
    .await;
    ok(
        port,
        &adt(
            "A03",
            "m09",
            "20261110",
            &[pid("100222", "X^Y"), seg("PV1", &[(3, "2W"), (36, "01")])],
        ),
    )
    .await;
    // … and readmitted on the 15th: the four days away count for nothing.
    ok(
        port,
        &adt(
            "A01",
            "m09r",
            "20261115",
            &[pid("100222", "X^Y"), seg("PV1", &[(3, "2W")])],
        ),
    )
    .await;
    ok(
        port,
        &adt(
            "A03",
            "m10",
            "20261123",
            &[
                pid("100037", "X^Y"),
                seg("PV1", &[(3, "2W"), (36, "20"), (45, "20261123")]),
            ],
        ),
    )
    .await;
    let mut dead = pid("100481", "X^Y");
    dead.push_str(&"|".repeat(21));
    dead.push_str("20261125|Y");
    ok(port, &adt("A08", "m11", "20261126", &[dead])).await;
    ok(
        port,
        &adt(
            "A03",
            "m12",
            "20261120",
            &[pid("100518", "X^Y"), seg("PV1", &[(36, "01")])],
        ),
    )
    .await;
    ok(
        port,
        &adt("A13", "m13", "20261120", &[pid("100518", "X^Y")]),
    )
    .await;
    let repeat = ok(
        port,
        &adt(
            "A03",
            "m10",
            "20261123",
            &[
                pid("100037", "X^Y"),
                seg("PV1", &[(36, "20"), (45, "20261123")]),
            ],
        ),
    )
    .await;
    assert!(repeat.contains("duplicate"), "{repeat}");
    // A merged-away MRN no longer matches anyone.
    refused(
        port,
        &adt("A08", "x6", "20261119", &[pid("200001", "X^Y")]),
        "PID-3",
    )
    .await;

    // p-004's MRN changes (A47): later messages use the new one, the old one matches nobody,
    // and an A47 onto another resident's MRN is refused (that would be a merge, an A40).
    ok(
        port,
        &adt(
            "A47",
            "m14",
            "20261127",
            &[pid("900148", "X^Y"), seg("MRG", &[(1, "100148^^^PCC^MR")])],
        ),
    )
    .await;
    ok(
        port,
        &adt("A08", "m15", "20261127", &[pid("900148", "X^Y")]),
    )
    .await;
    refused(
        port,
        &adt("A08", "x7", "20261127", &[pid("100148", "X^Y")]),
        "PID-3",
    )
    .await;
    refused(
        port,
        &adt(
            "A47",
            "x8",
            "20261127",
            &[pid("100074", "X^Y"), seg("MRG", &[(1, "900148^^^PCC^MR")])],
        ),
        "PID-3",
    )
    .await;

    // What the tablet sees.
    sync_with(&mut t, &server).await.unwrap();
    let ids = t.patient_ids();
    assert_eq!(ids.len(), roster_before + 2, "{ids:?}");
    let p = |id: &str| t.patient(id).unwrap();
    let ruth = p("mrn-200001");
    assert_eq!(ruth.mrn.as_deref(), Some("200001"));
    assert_eq!(ruth.billing_practitioner, "dr-smith");
    assert_eq!(ruth.merged_into.as_deref(), Some("p-005"));
    assert!(ruth.consents.is_empty() && ruth.conditions.is_empty());
    let inpatient = |from, to| Stay {
        kind: StayKind::Inpatient,
        from: d(from),
        to: d(to),
    };
    let part_a = |from, to| Stay {
        kind: StayKind::PartA,
        from: d(from),
        to: d(to),
    };
    assert_eq!(
        p("p-002").stays,
        vec![inpatient("2026-11-14", "2026-11-15")]
    );
    assert_eq!(p("p-003").stays, vec![part_a("2026-11-10", "2026-11-19")]);
    assert_eq!(p("p-006").discharged_on, None, "readmitted");
    assert_eq!(
        p("p-006").absences,
        vec![rounds_core::Absence {
            from: d("2026-11-11"),
            to: d("2026-11-14")
        }]
    );
    assert_eq!(p("p-001").died_on, Some(d("2026-11-23")));
    assert_eq!(p("p-001").discharged_on, Some(d("2026-11-23")));
    assert_eq!(p("p-013").died_on, Some(d("2026-11-25")));
    assert_eq!(
        p("p-014").discharged_on,
        None,
        "A13 cancelled the discharge"
    );
    assert!(p("p-004").stays.is_empty());
    assert_eq!(p("p-004").mrn.as_deref(), Some("900148"));
    let facility = t.facility().unwrap().facility.id;
    let luis = t
        .document(rounds_core::DocumentId::patient(&facility, "mrn-200002"))
        .map(|doc| rounds_core::view::read_adt(doc, "mrn-200002"))
        .unwrap();
    assert_eq!(luis.status(), Some("admission cancelled"));

    // What the console shows: the stay, the events, the merged record pending nothing.
    let (_, cookie, _) = rounds_tests::console_session(&server, "ana", "correct horse 12")
        .await
        .unwrap();
    let cookie = cookie.expect("signed in");
    let page = |path: String| {
        let cookie = cookie.clone();
        let server = &server;
        async move {
            let (status, _, body) = rounds_tests::https_exchange(
                server,
                &format!("GET {path} HTTP/1.1\r\nCookie: {cookie}"),
                b"",
            )
            .await
            .unwrap();
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    let p002 = page("/console/patient?facility=sunnyvale&patient=p-002&month=2026-11".into()).await;
    assert!(
        p002.contains("Hospital inpatient 2026-11-14 to 2026-11-15"),
        "{p002}"
    );
    assert!(p002.contains("back from hospital") && p002.contains("left for hospital"));
    let p006 = page("/console/patient?facility=sunnyvale&patient=p-006&month=2026-11".into()).await;
    assert!(
        p006.contains("Away (discharged, then readmitted) 2026-11-11 to 2026-11-14"),
        "{p006}"
    );
    let ruth_page =
        page("/console/patient?facility=sunnyvale&patient=mrn-200001&month=2026-11".into()).await;
    assert!(
        ruth_page.contains("Merged into") && ruth_page.contains("p-005"),
        "{ruth_page}"
    );
    let luis_page =
        page("/console/patient?facility=sunnyvale&patient=mrn-200002&month=2026-11".into()).await;
    assert!(
        luis_page.contains("admission cancelled") && luis_page.contains("cancelled"),
        "{luis_page}"
    );

    // Month close bills what `rounds bill` bills with the same facts in the data file.
    let mut server = server;
    server.stop().unwrap();
    let s = store.to_str().unwrap();
    let closed: Vec<serde_json::Value> = serde_json::from_str(&rounds_cli(&[
        "close-month",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--store",
        s,
    ]))
    .unwrap();
    let mut data = sunnyvale().unwrap();
    let baseline = bill(&data, "2026-11".parse().unwrap(), &RuleSet::default()).unwrap();
    fn at<'a>(data: &'a mut rounds_core::DataFile, id: &str) -> &'a mut rounds_core::Patient {
        data.patients.iter_mut().find(|x| x.id == id).unwrap()
    }
    at(&mut data, "p-002")
        .stays
        .push(inpatient("2026-11-14", "2026-11-15"));
    at(&mut data, "p-003")
        .stays
        .push(part_a("2026-11-10", "2026-11-19"));
    at(&mut data, "p-006").absences.push(rounds_core::Absence {
        from: d("2026-11-11"),
        to: d("2026-11-14"),
    });
    at(&mut data, "p-001").died_on = Some(d("2026-11-23"));
    at(&mut data, "p-001").discharged_on = Some(d("2026-11-23"));
    at(&mut data, "p-013").died_on = Some(d("2026-11-25"));
    let expected = bill(&data, "2026-11".parse().unwrap(), &RuleSet::default()).unwrap();
    let by_patient: BTreeMap<String, &serde_json::Value> = closed
        .iter()
        .map(|v| {
            (
                v["encounter"]["patient"].as_str().unwrap_or("").to_string(),
                &v["encounter"],
            )
        })
        .collect();
    for e in &expected.encounters {
        let got = by_patient
            .get(&e.patient)
            .unwrap_or_else(|| panic!("no closed encounter for {}", e.patient));
        assert_eq!(
            **got,
            serde_json::to_value(e).unwrap(),
            "patient {}",
            e.patient
        );
    }
    // And the feed made a difference where it should: time inside the stays, after the
    // discharge and before the readmission, and after the deaths no longer counts.
    let minutes = |encs: &[rounds_core::billing::Encounter], id: &str| {
        encs.iter()
            .find(|e| e.patient == id)
            .map(|e| serde_json::to_value(e.minutes).unwrap())
    };
    for id in ["p-002", "p-003", "p-006", "p-001"] {
        assert_ne!(
            minutes(&baseline.encounters, id),
            minutes(&expected.encounters, id),
            "{id}: the ADT facts should change the minutes"
        );
    }
    // The merged record is closed with its reason and no lines.
    let merged = by_patient
        .get("mrn-200001")
        .expect("the merged record's encounter");
    assert_eq!(merged["lines"], serde_json::json!([]));
    assert!(
        merged.to_string().contains("merged into resident p-005"),
        "{merged}"
    );

    // Every message is in the audit log: applied per patient, refusals with their reason.
    let audit = rounds_cli(&["audit", "--store", s]);
    assert!(
        audit.contains("A02 message m02 from SUNNYVALE_PCC"),
        "{audit}"
    );
    assert!(audit.contains("adt-duplicate"), "{audit}");
    assert!(audit.contains("x2: PID-3"), "{audit}");
    assert!(
        !audit.contains("Newman") && !audit.contains("Ruth"),
        "no names in the audit log"
    );
}

/// `--adt-tls`: MLLP inside TLS with the server's certificate; a plain connection gets no ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_can_come_over_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = dir.path().join("adt.toml");
    std::fs::write(&config, FEED).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = ServerProcess::start_with(
        &store,
        &[
            "--adt-listen",
            &listen,
            "--adt-config",
            config.to_str().unwrap(),
            "--adt-tls",
        ],
    )
    .unwrap();
    let mut t = tablet(&dir.path().join("t"));
    sync_with(&mut t, &server).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(rounds_tests::tls_client(&server).unwrap());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let msg = adt(
        "A02",
        "t1",
        "20261114",
        &[pid("100074", "X^Y"), seg("PV1", &[(3, "HOSP")])],
    );
    let mut frame = vec![0x0b];
    frame.extend_from_slice(msg.as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    tls.write_all(&frame).await.unwrap();
    let ack = read_mllp(&mut tls).await.expect("an ACK over TLS");
    assert!(ack.contains("MSA|AA|t1|"), "{ack}");
    // Plain MLLP on the TLS port: no ACK, nothing applied.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let msg2 = adt(
        "A02",
        "t2",
        "20261116",
        &[pid("100074", "X^Y"), seg("PV1", &[(3, "2W")])],
    );
    let mut frame = vec![0x0b];
    frame.extend_from_slice(msg2.as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    plain.write_all(&frame).await.unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(15), read_mllp(&mut plain))
            .await
            .unwrap()
            .is_none()
    );
    sync_with(&mut t, &server).await.unwrap();
    let stays = t.patient("p-002").unwrap().stays;
    assert_eq!(stays.len(), 1);
    assert_eq!(
        stays[0].to,
        Stay::OPEN_END,
        "still in hospital: t2 was not applied"
    );
}
