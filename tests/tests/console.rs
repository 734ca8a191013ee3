//! The web console in a real browser: headless Debian Chromium driven by playwright-core
//! (`tests/js/console.mjs`; `scripts/test` installs both). Screenshots of the worklist and the
//! patient page are written to `docs/screenshots/`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use rounds_tests::{ServerProcess, repo_root, rounds_bin, rounds_cli};

const NURSE_PASSWORD: &str = "nurse-password-123";
const BILLING_PASSWORD: &str = "billing-password-456";

fn add_user(store: &Path, username: &str, role: &str, facility: &str, password: &str) {
    let mut child = Command::new(rounds_bin().unwrap())
        .args([
            "user",
            "add",
            "--username",
            username,
            "--role",
            role,
            "--facility",
            facility,
            "--store",
        ])
        .arg(store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (patient_id, program) → codes, from a monthly summary CSV.
fn codes(csv: &str) -> BTreeSet<(String, String, String)> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (p, prog, c) = (col("patient_id"), col("program"), col("codes"));
    // The fields used are never quoted (ids, program, codes); split the rest carefully enough.
    let mut out = BTreeSet::new();
    for line in
        lines.filter(|l| !l.is_empty() && !l.starts_with("TOTAL") && !l.starts_with("total"))
    {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for ch in line.chars() {
            match ch {
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(ch),
            }
        }
        fields.push(cur);
        if fields.len() == header.len() && fields[p].starts_with("p-") {
            out.insert((fields[p].clone(), fields[prog].clone(), fields[c].clone()));
        }
    }
    out
}

#[test]
fn console_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (scripts/test does)"
    );
    let js = repo_root().join("tests/js");
    assert!(
        js.join("node_modules/playwright-core").exists(),
        "tests/js/node_modules/playwright-core is missing: npm install --prefix tests/js"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let example = repo_root().join("examples/sunnyvale.json");
    rounds_cli(&[
        "import",
        example.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    // A second facility the nurse does not belong to.
    let mut other: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    other["facility"]["id"] = "oakridge".into();
    other["facility"]["name"] = "Oak Ridge".into();
    let other_file = dir.path().join("oakridge.json");
    std::fs::write(&other_file, other.to_string()).unwrap();
    rounds_cli(&[
        "import",
        other_file.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    add_user(&store, "nina", "nurse", "sunnyvale", NURSE_PASSWORD);
    add_user(&store, "bill", "billing", "sunnyvale", BILLING_PASSWORD);
    add_user(&store, "lou", "nurse", "sunnyvale", NURSE_PASSWORD);

    let server = ServerProcess::start(&store).unwrap();
    let shots = repo_root().join("docs/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let out = Command::new("node")
        .arg(js.join("console.mjs"))
        .arg(format!("https://localhost:{}", server.port))
        .arg(&shots)
        .arg(&downloads)
        .env("CHROMIUM", &chromium)
        .env("NURSE_PASSWORD", NURSE_PASSWORD)
        .env("BILLING_PASSWORD", BILLING_PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();

    // The worklist shows the patients `rounds worklist` lists for the same day.
    let expected: serde_json::Value = serde_json::from_str(&rounds_cli(&[
        "worklist",
        "--data",
        example.to_str().unwrap(),
        "--as-of",
        "2026-11-20",
        "--format",
        "json",
    ]))
    .unwrap();
    let want: BTreeSet<String> = expected
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["patient"].as_str().unwrap().to_string())
        .collect();
    let got: BTreeSet<String> = seen["worklist_patients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want, "worklist patients");
    assert!(
        seen["worklist_title"]
            .as_str()
            .unwrap()
            .contains("November 2026"),
        "{seen}"
    );

    // The patient page with its charts.
    assert!(
        seen["patient_title"]
            .as_str()
            .unwrap()
            .contains("November 2026"),
        "{seen}"
    );
    assert!(seen["chart_svgs"].as_u64().unwrap() >= 1, "{seen}");
    assert!(seen["timeline_rows"].as_u64().unwrap() >= 1, "{seen}");
    for shot in ["worklist.png", "patient.png"] {
        let bytes = std::fs::read(shots.join(shot)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{shot}"
        );
    }

    // Another facility's patient: 403, audited.
    assert_eq!(seen["other_facility_status"], 403, "{seen}");
    assert_eq!(seen["csrf_missing_status"], 403, "{seen}");
    assert_eq!(seen["nurse_close_status"], 403, "{seen}");
    let base = format!("https://127.0.0.1:{}", server.port);
    let audit = rounds_cli(&[
        "audit",
        "--store",
        store.to_str().unwrap(),
        "--server",
        &base,
    ]);
    let records: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    assert!(
        records.iter().any(|r| r["action"] == "console-denied"
            && r["facility"] == "oakridge"
            && r["device"] == "user:nina"),
        "no audited denial"
    );
    assert!(
        records.iter().any(|r| r["action"] == "console-view-patient"
            && r["patient"] == "p-007"
            && r["device"] == "user:nina"),
        "patient view not audited"
    );

    // Month closed from the browser; the downloaded CSV has the rows `rounds bill` computes.
    assert!(
        seen["close_notice"].as_str().unwrap().contains("closed"),
        "{seen}"
    );
    assert!(seen["encounter_rows"].as_u64().unwrap() >= 1, "{seen}");
    let csv = std::fs::read_to_string(seen["csv"].as_str().unwrap()).unwrap();
    let billed = rounds_cli(&[
        "bill",
        "--data",
        example.to_str().unwrap(),
        "--month",
        "2026-11",
        "--format",
        "csv",
    ]);
    let (from_console, from_bill) = (codes(&csv), codes(&billed));
    assert!(!from_console.is_empty());
    assert_eq!(from_console, from_bill, "CSV rows");

    // Five wrong passwords lock the account, even against the right one.
    assert!(
        seen["lockout_message"].as_str().unwrap().contains("locked"),
        "{seen}"
    );
}
