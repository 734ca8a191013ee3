//! Practices as tenants, end to end: facility `oak` has residents of two practices (`north`,
//! `south`), practice `north` also serves facility `elm`, and `sunnyvale` is a data file of
//! today (one implicit practice). Each practice's FHIR and HL7 receivers get exactly its own
//! patients' packages; a practice's billing user is refused (403, audited) another practice's
//! patient and summary; the practice's summary is the sum of its facilities.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use rounds_tests::{ServerProcess, add_console_user_scoped, console_session, https_exchange};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const PASSWORD: &str = "correct horse battery staple";
const MONTH: &str = "2026-11";

fn rounds(args: &[&str]) -> String {
    rounds_tests::rounds_cli(args)
}

fn patient(id: &str, dr: &str) -> Value {
    json!({
        "id": id, "name": format!("Resident {id}"), "mrn": format!("MRN-{id}"),
        "billing_practitioner": dr,
        "conditions": [ { "icd10": "I10", "chronic": true }, { "icd10": "E11.9", "chronic": true } ],
        "consents": [ { "program": "ccm", "given_on": "2026-01-05", "method": "verbal", "by": "rn-1" } ],
        "initiating_visit_on": "2026-01-05",
        "care_plan": { "established_on": "2026-01-06" }
    })
}

fn ccm(n: u32, patient: &str, day: u32, minutes: u32, tz: &str) -> Value {
    json!({ "id": format!("01930c1e-0000-7000-8000-{n:012}"), "patient": patient, "staff": "rn-1",
            "program": "ccm", "interactive": true,
            "started_at": format!("2026-11-{day:02}T10:00:00{tz}"),
            "ended_at": format!("2026-11-{day:02}T10:{minutes:02}:00{tz}") })
}

fn north() -> Value {
    json!({ "id": "north", "name": "North Primary Care", "group_npi": "1987654328", "tin": "123456789",
            "practitioners": ["dr-a"], "ehr": { "code": "NORTH", "receiving_application": "NORTH-EHR" } })
}

fn facility(id: &str, name: &str, tz: &str, practices: Vec<Value>, practitioners: Value) -> Value {
    json!({
        "format": "rounds-data/1",
        "facility": { "id": id, "name": name, "timezone": tz, "place_of_service": "32" },
        "practices": practices,
        "practitioners": practitioners,
        "staff": [ { "id": "rn-1", "name": "RN One", "role": "clinical", "counts_for_billing": true } ]
    })
}

/// `oak`: north's o-north, south's o-south, and o-move from dr-a (north) to dr-b (south) on
/// the 15th with a new consent; south confirms transition months.
fn oak() -> Value {
    let south = json!({ "id": "south", "name": "South Internal Medicine", "group_npi": "1112223338",
                        "tin": "987654321", "practitioners": ["dr-b"], "confirms_transition_months": true,
                        "ehr": { "code": "SOUTH", "receiving_application": "SOUTH-EHR" } });
    let mut f = facility(
        "oak",
        "Oak Manor",
        "America/New_York",
        vec![north(), south],
        json!([ { "id": "dr-a", "name": "A, MD", "npi": "1234567893" },
                { "id": "dr-b", "name": "B, MD", "npi": "1444555662" } ]),
    );
    let mut moving = patient("o-move", "dr-a");
    moving["practitioners_of_record"] = json!([
        { "practitioner": "dr-a", "from": "2026-01-01", "to": "2026-11-14" },
        { "practitioner": "dr-b", "from": "2026-11-15" }
    ]);
    moving["consents"].as_array_mut().unwrap().push(
        json!({ "program": "ccm", "given_on": "2026-11-15", "method": "verbal", "by": "rn-1" }),
    );
    f["patients"] = json!([
        patient("o-north", "dr-a"),
        patient("o-south", "dr-b"),
        moving
    ]);
    let tz = "-05:00";
    f["interactions"] = json!([
        ccm(1, "o-north", 3, 25, tz),
        ccm(2, "o-south", 4, 21, tz),
        ccm(3, "o-move", 5, 15, tz),
        ccm(4, "o-move", 20, 22, tz)
    ]);
    f
}

/// `elm`: two more of north's patients, in another facility and zone.
fn elm() -> Value {
    let mut f = facility(
        "elm",
        "Elm House",
        "America/Chicago",
        vec![north()],
        json!([ { "id": "dr-a", "name": "A, MD", "npi": "1234567893" } ]),
    );
    f["patients"] = json!([patient("e-north-1", "dr-a"), patient("e-north-2", "dr-a")]);
    let tz = "-06:00";
    f["interactions"] = json!([
        ccm(11, "e-north-1", 6, 25, tz),
        ccm(12, "e-north-2", 7, 45, tz)
    ]);
    f
}

/// What one EHR received: every FHIR bundle and HL7 message, as text.
#[derive(Default)]
struct Ehr {
    fhir: Mutex<Vec<String>>,
    hl7: Mutex<Vec<String>>,
}

impl Ehr {
    /// Which of our residents' MRNs it received, per channel.
    fn mrns(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        const ALL: [&str; 5] = ["o-north", "o-south", "o-move", "e-north-1", "e-north-2"];
        let find = |texts: &[String]| -> BTreeSet<String> {
            ALL.iter()
                .map(|id| format!("MRN-{id}"))
                .filter(|mrn| texts.iter().any(|t| t.contains(mrn.as_str())))
                .collect()
        };
        (
            find(&self.fhir.lock().unwrap()),
            find(&self.hl7.lock().unwrap()),
        )
    }
}

async fn transaction(State(e): State<Arc<Ehr>>, Json(bundle): Json<Value>) -> Json<Value> {
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    e.fhir.lock().unwrap().push(bundle.to_string());
    let out: Vec<Value> = entries
        .iter()
        .map(|_| json!({ "response": { "status": "201 Created" } }))
        .collect();
    Json(json!({ "resourceType": "Bundle", "type": "transaction-response", "entry": out }))
}

/// A FHIR endpoint and an MLLP listener (AA for everything) for one practice.
async fn ehr() -> (Arc<Ehr>, u16, u16) {
    let state = Arc::new(Ehr::default());
    let app = axum::Router::new()
        .route("/fhir", post(transaction))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fhir_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mllp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hl7_port = mllp.local_addr().unwrap().port();
    let rec = state.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = mllp.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let Some(text) = rounds_tests::read_mllp(&mut sock).await else {
                    return;
                };
                let control = text
                    .split('\r')
                    .next()
                    .and_then(|msh| msh.split('|').nth(9))
                    .unwrap_or_default()
                    .to_string();
                rec.hl7.lock().unwrap().push(text);
                let ack = format!(
                    "\u{b}MSH|^~\\&|EHR|PRACTICE|ROUNDS|ROUNDS|20261201000000||ACK|A1|P|2.5.1\rMSA|AA|{control}\u{1c}\r"
                );
                let _ = sock.write_all(ack.as_bytes()).await;
            });
        }
    });
    (state, fhir_port, hl7_port)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The `TOTAL …` rows of a summary CSV: label → codes (`99490x1;99439x1`).
fn totals(csv: &str) -> BTreeMap<String, BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    let mut r = csv::Reader::from_reader(csv.as_bytes());
    for row in r.records().flatten() {
        let label = row.get(4).unwrap_or_default();
        if !label.starts_with("TOTAL facility") && !label.starts_with("TOTAL practice") {
            continue;
        }
        let codes: BTreeMap<String, u32> = row
            .get(21)
            .unwrap_or_default()
            .split(';')
            .filter(|c| !c.is_empty())
            .filter_map(|c| {
                let (code, units) = c.split_once('x')?;
                Some((code.to_string(), units.parse().ok()?))
            })
            .collect();
        let key = format!("{label} {}", row.get(1).unwrap_or_default());
        out.insert(key, codes);
    }
    out
}

async fn get(server: &ServerProcess, cookie: &str, path: &str) -> (u16, String) {
    let (status, _, body) = https_exchange(
        server,
        &format!("GET {path} HTTP/1.1\r\nCookie: {cookie}"),
        b"",
    )
    .await
    .unwrap();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_practice_gets_its_own_patients_and_nobody_elses() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    for (name, data) in [("oak.json", oak()), ("elm.json", elm())] {
        let path = dir.path().join(name);
        std::fs::write(&path, data.to_string()).unwrap();
        rounds(&["import", "--store", s, path.to_str().unwrap()]);
    }
    let sunnyvale = rounds_tests::repo_root().join("examples/sunnyvale.json");
    rounds(&["import", "--store", s, sunnyvale.to_str().unwrap()]);
    // The registry holds the two practices; today's file added none.
    let practices: Vec<Value> =
        serde_json::from_str(&rounds(&["practice", "list", "--store", s])).unwrap();
    let ids: BTreeSet<String> = practices
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, set(&["north", "south"]));
    for f in ["oak", "elm", "sunnyvale"] {
        rounds(&[
            "close-month",
            "--facility",
            f,
            "--month",
            MONTH,
            "--store",
            s,
        ]);
    }
    // A data file of today is one practice, billed as before: no practice on its lines.
    let sunny: Vec<Value> = serde_json::from_str(&rounds(&[
        "encounters",
        "--facility",
        "sunnyvale",
        "--month",
        MONTH,
        "--store",
        s,
    ]))
    .unwrap();
    assert!(
        sunny
            .iter()
            .any(|v| !v["encounter"]["lines"].as_array().unwrap().is_empty())
    );
    assert!(
        !serde_json::to_string(&sunny)
            .unwrap()
            .contains("\"practice"),
        "no practice keys for a one-practice file"
    );

    // The encounter ledger per (practice, facility, month): north's months at oak, its lines.
    let north_oak: Vec<Value> = serde_json::from_str(&rounds(&[
        "encounters",
        "--facility",
        "oak",
        "--month",
        MONTH,
        "--practice",
        "north",
        "--store",
        s,
    ]))
    .unwrap();
    let patients: BTreeSet<&str> = north_oak
        .iter()
        .map(|v| v["patient"].as_str().unwrap())
        .collect();
    assert_eq!(patients, BTreeSet::from(["o-north", "o-move"]));
    for v in &north_oak {
        for l in v["encounter"]["lines"].as_array().unwrap() {
            assert_eq!(l["practice"], "north", "{v}");
        }
    }

    // Push: each practice to its own EHR, FHIR and HL7.
    let (north_ehr, north_fhir, north_hl7) = ehr().await;
    let (south_ehr, south_fhir, south_hl7) = ehr().await;
    let config = dir.path().join("push.toml");
    std::fs::write(
        &config,
        format!(
            "[practices.north.fhir]\nbase_url = \"http://127.0.0.1:{north_fhir}/fhir\"\n\
             [practices.north.hl7]\naddress = \"127.0.0.1:{north_hl7}\"\n\
             [practices.south.fhir]\nbase_url = \"http://127.0.0.1:{south_fhir}/fhir\"\n\
             [practices.south.hl7]\naddress = \"127.0.0.1:{south_hl7}\"\n"
        ),
    )
    .unwrap();
    for f in ["oak", "elm", "sunnyvale"] {
        let out = rounds_tests::rounds_cli_output(&[
            "push",
            "send",
            "--facility",
            f,
            "--month",
            MONTH,
            "--config",
            config.to_str().unwrap(),
            "--store",
            s,
            "--wait",
            "30",
        ]);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("failed 0, pending 0"), "{f}: {stdout}");
        if f == "sunnyvale" {
            // Its own practice has no target here: nothing of it goes to north's or south's EHR.
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("practice sunnyvale: no push target"),
                "{out:?}"
            );
        }
    }
    let north_mrns = set(&["MRN-o-north", "MRN-e-north-1", "MRN-e-north-2"]);
    let south_mrns = set(&["MRN-o-south", "MRN-o-move"]);
    assert_eq!(north_ehr.mrns(), (north_mrns.clone(), north_mrns));
    assert_eq!(south_ehr.mrns(), (south_mrns.clone(), south_mrns));
    // The billing provider is each practice's group NPI.
    assert!(
        north_ehr
            .fhir
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.contains("\"serviceProvider\"") && b.contains("1987654328"))
    );
    assert!(
        south_ehr
            .fhir
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.contains("\"serviceProvider\"") && b.contains("1112223338"))
    );
    // One bundle per patient with lines, nothing else (nothing of sunnyvale's).
    assert_eq!(north_ehr.fhir.lock().unwrap().len(), 3);
    assert_eq!(south_ehr.fhir.lock().unwrap().len(), 2);
    // Each EHR got its practice's identifiers, and o-move's November went to south only.
    assert!(
        north_ehr
            .hl7
            .lock()
            .unwrap()
            .iter()
            .all(|m| m.contains("|NORTH-EHR|"))
    );
    assert!(
        south_ehr
            .hl7
            .lock()
            .unwrap()
            .iter()
            .all(|m| m.contains("|SOUTH-EHR|"))
    );
    assert!(
        south_ehr
            .fhir
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.contains("MRN-o-move"))
            .all(|b| b.contains("1444555662") && !b.contains("1234567893"))
    );

    // The practice's summary equals the sum of its facilities (each facility's own export).
    let practice_csv = rounds(&[
        "practice",
        "summary",
        "--month",
        MONTH,
        "--practice",
        "north",
        "--csv",
        "--store",
        s,
    ]);
    let t = totals(&practice_csv);
    let practice_total = t
        .iter()
        .find(|(k, _)| k.starts_with("TOTAL practice"))
        .map(|(_, v)| v.clone())
        .expect("a practice total");
    let mut sum: BTreeMap<String, u32> = BTreeMap::new();
    for f in ["oak", "elm"] {
        let out = dir.path().join(format!("export-{f}"));
        rounds(&[
            "export",
            "--facility",
            f,
            "--month",
            MONTH,
            "--format",
            "csv",
            "--practice",
            "north",
            "--out",
            out.to_str().unwrap(),
            "--store",
            s,
        ]);
        let csv =
            std::fs::read_to_string(out.join(format!("summary-north-{f}-{MONTH}.csv"))).unwrap();
        for (k, codes) in totals(&csv) {
            assert!(k.starts_with("TOTAL facility"), "{k}");
            for (c, u) in codes {
                *sum.entry(c).or_default() += u;
            }
        }
    }
    assert_eq!(practice_total, sum);
    assert_eq!(practice_total.get("99490"), Some(&3), "{practice_total:?}");
    assert_eq!(practice_total.get("99439"), Some(&1), "{practice_total:?}");

    // The console: a billing user of north, the company, and oak's own billing staff.
    add_console_user_scoped(
        &store,
        "north-billing",
        "billing",
        &["--practice", "north"],
        PASSWORD,
    )
    .unwrap();
    add_console_user_scoped(&store, "company", "company", &[], PASSWORD).unwrap();
    add_console_user_scoped(
        &store,
        "oak-billing",
        "billing",
        &["--facility", "oak"],
        PASSWORD,
    )
    .unwrap();
    let server = ServerProcess::start(&store).unwrap();
    let (_, north_cookie, _) = console_session(&server, "north-billing", PASSWORD)
        .await
        .unwrap();
    let north_cookie = north_cookie.expect("signed in");
    let (status, _) = get(
        &server,
        &north_cookie,
        "/console/patient?facility=oak&patient=o-north",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = get(
        &server,
        &north_cookie,
        "/console/patient?facility=elm&patient=e-north-1",
    )
    .await;
    assert_eq!(
        status, 200,
        "a practice's staff see its patients in every facility"
    );
    let (status, _) = get(
        &server,
        &north_cookie,
        "/console/patient?facility=oak&patient=o-south",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = get(
        &server,
        &north_cookie,
        "/console/summary?practice=south&month=2026-11",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = get(
        &server,
        &north_cookie,
        "/console/summary.csv?practice=south&month=2026-11",
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = get(
        &server,
        &north_cookie,
        "/console/summary?practice=north&month=2026-11",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("elm") && body.contains("oak"), "{body}");
    let (status, body) = get(
        &server,
        &north_cookie,
        "/console/?facility=oak&as_of=2026-11-30",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("Resident o-north") && !body.contains("Resident o-south"));
    let (status, _) = get(&server, &north_cookie, "/console/company?month=2026-11").await;
    assert_eq!(status, 403, "the company's view is the company's");
    let (status, _) = get(
        &server,
        &north_cookie,
        "/console/download?facility=oak&month=2026-11&format=pdf&patient=o-south",
    )
    .await;
    assert_eq!(status, 403);
    let (status, csv) = get(
        &server,
        &north_cookie,
        "/console/download?facility=oak&month=2026-11&format=csv",
    )
    .await;
    assert_eq!(status, 200);
    assert!(csv.contains("o-north") && !csv.contains("o-south"), "{csv}");
    // o-move's November concerns north too (dr-a until the 14th), but its line is south's.
    let move_rows: Vec<&str> = csv.lines().filter(|l| l.contains(",o-move,")).collect();
    assert!(!move_rows.is_empty() && move_rows.iter().all(|l| l.contains("not billable")));
    // Facility staff see their facility's residents, whatever the practice; not practices.
    let (_, oak_cookie, _) = console_session(&server, "oak-billing", PASSWORD)
        .await
        .unwrap();
    let oak_cookie = oak_cookie.expect("signed in");
    let (status, _) = get(
        &server,
        &oak_cookie,
        "/console/patient?facility=oak&patient=o-south",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = get(
        &server,
        &oak_cookie,
        "/console/patient?facility=elm&patient=e-north-1",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = get(
        &server,
        &oak_cookie,
        "/console/summary?practice=north&month=2026-11",
    )
    .await;
    assert_eq!(status, 403);
    // The company sees every practice and facility, with estimated payments.
    let (_, company_cookie, _) = console_session(&server, "company", PASSWORD).await.unwrap();
    let company_cookie = company_cookie.expect("signed in");
    let (status, body) = get(&server, &company_cookie, "/console/company?month=2026-11").await;
    assert_eq!(status, 200);
    for p in ["north", "south", "sunnyvale"] {
        assert!(body.contains(p), "{p}");
    }
    // A practice id from the address bar is checked before it goes anywhere (a file name).
    let (status, _) = get(
        &server,
        &company_cookie,
        "/console/summary.csv?practice=%22a%22%3B%20x&month=2026-11",
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = get(&server, &company_cookie, "/console/practices").await;
    assert_eq!(status, 200);
    assert!(body.contains("North Primary Care") && body.contains("South Internal Medicine"));
    let (status, _) = get(&server, &north_cookie, "/console/practices").await;
    assert_eq!(status, 403, "practices are managed by the company");
    // The company's form: checked like the data file's entries, CSRF required.
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let post = |form: String| {
        let head = format!(
            "POST /console/practices HTTP/1.1\r\nCookie: {company_cookie}\r\nContent-Type: application/x-www-form-urlencoded"
        );
        let server = &server;
        async move {
            https_exchange(server, &head, form.as_bytes())
                .await
                .unwrap()
        }
    };
    let (status, _, page) = post(format!("csrf={csrf}&id=west&name=West&tin=12")).await;
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("practice west: field `tin`"), "{page}");
    let (status, _, _) = post("id=west&name=West".to_string()).await;
    assert_eq!(status, 403, "no CSRF token");
    let (status, _, page) = post(format!("csrf={csrf}&id=west&name=West&practitioners=dr-a")).await;
    assert_eq!(status, 422, "dr-a is north's: {page}");
    let (_, body) = get(&server, &company_cookie, "/console/practices").await;
    assert!(!body.contains(">west<"), "nothing saved");
    let (status, _, _) = post(format!("csrf={csrf}&id=west&name=West&tin=123456789")).await;
    assert_eq!(status, 303);
    let (_, body) = get(&server, &company_cookie, "/console/practices").await;
    assert!(body.contains(">west<"));
    let (status, csv) = get(
        &server,
        &company_cookie,
        "/console/company.csv?month=2026-11",
    )
    .await;
    assert_eq!(status, 200);
    let mut per_facility: BTreeMap<String, f64> = BTreeMap::new();
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    let mut r = csv::Reader::from_reader(csv.as_bytes());
    for row in r.records().flatten() {
        if &row[5] != "ALL" {
            continue;
        }
        let amount: f64 = row[7].parse().unwrap();
        if &row[2] == "TOTAL" {
            total.insert(row[1].to_string(), amount);
        } else {
            *per_facility.entry(row[1].to_string()).or_default() += amount;
        }
    }
    assert_eq!(
        per_facility.keys().collect::<Vec<_>>(),
        vec!["north", "south", "sunnyvale"]
    );
    for (p, amount) in &per_facility {
        assert!(
            (total[p] - amount).abs() < 0.005,
            "{p}: {} vs {amount}",
            total[p]
        );
    }
    // 99490 ($66.13) × 3 + 99439 ($47.50) for north.
    assert!(
        (total["north"] - (3.0 * 66.13 + 47.50)).abs() < 0.005,
        "{total:?}"
    );

    // Every denial is in the audit log, naming the user and what was refused.
    let token = server.admin_token().unwrap();
    let (_, _, audit) = https_exchange(
        &server,
        &format!("GET /api/v1/audit HTTP/1.1\r\nAuthorization: Bearer {token}"),
        b"",
    )
    .await
    .unwrap();
    let records: Vec<Value> = serde_json::from_str(&audit).unwrap();
    let denied = |pred: &dyn Fn(&Value) -> bool| {
        records.iter().any(|r| {
            r["action"] == "console-denied" && r["device"] == "user:north-billing" && pred(r)
        })
    };
    assert!(denied(&|r| r["patient"] == "o-south"), "{records:#?}");
    assert!(denied(&|r| r["detail"] == "practice south"), "{records:#?}");
}

/// Practices from outside — the admin API's body, a file for `rounds practice set` — are hostile
/// until checked: a bad one is refused naming the entry and the field, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_practices_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    // The CLI on a stopped server's store.
    let file = dir.path().join("practices.json");
    std::fs::write(
        &file,
        json!([north(), { "id": "x", "name": "X", "tin": "12" }]).to_string(),
    )
    .unwrap();
    let out =
        rounds_tests::rounds_cli_output(&["practice", "set", file.to_str().unwrap(), "--store", s]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("practice x: field `tin`"), "{err}");
    std::fs::write(&file, json!([north()]).to_string()).unwrap();
    rounds(&["practice", "set", file.to_str().unwrap(), "--store", s]);

    let server = ServerProcess::start(&store).unwrap();
    let token = server.admin_token().unwrap();
    let put = |id: &str, body: Value| {
        let head = format!(
            "PUT /api/v1/practices/{id} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"
        );
        let body = body.to_string();
        let server = &server;
        async move {
            https_exchange(server, &head, body.as_bytes())
                .await
                .unwrap()
        }
    };
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "south",
            json!({ "id": "south", "name": "S", "group_npi": "1234567890" }),
            422,
            "practice south: field `group_npi`",
        ),
        (
            "south",
            json!({ "id": "other", "name": "S" }),
            422,
            "does not match the path",
        ),
        (
            "south",
            json!({ "id": "south", "name": "S", "practitioners": ["dr-a"] }),
            409,
            "already in practice",
        ),
        (
            "south",
            json!({ "id": "south", "name": "S", "practitioners": "dr-b" }),
            422,
            "practice south: field `practitioners`",
        ),
        ("south", json!([1, 2]), 422, "practices[0]"),
        (
            "south",
            json!({ "id": "south", "name": "S", "contacts": ["nobody"] }),
            422,
            "contacts[0]",
        ),
    ];
    for (id, body, status, text) in cases {
        let (got, _, answer) = put(id, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer.contains(text), "{body}: {answer}");
    }
    let (got, _, _) = https_exchange(
        &server,
        "PUT /api/v1/practices/south HTTP/1.1\r\nContent-Type: application/json",
        b"{}",
    )
    .await
    .unwrap();
    assert_eq!(got, 401, "the admin credential is required");
    // Nothing changed: north alone, as it was.
    let (_, _, list) = https_exchange(
        &server,
        &format!("GET /api/v1/practices HTTP/1.1\r\nAuthorization: Bearer {token}"),
        b"",
    )
    .await
    .unwrap();
    let list: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["practitioners"], json!(["dr-a"]));
    // A good one is saved.
    let (got, _, answer) = put(
        "south",
        json!({ "id": "south", "name": "South", "tin": "987654321", "practitioners": ["dr-b"] }),
    )
    .await;
    assert_eq!(got, 200, "{answer}");
}
