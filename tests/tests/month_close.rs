//! Month close, late data, and the monthly package (FHIR, HL7, CSV, PDF) validated by the
//! reference validators (hl7apy strict, the FHIR R4 JSON schema) and rendered by pdftoppm.

use chrono::{DateTime, Duration, Utc};
use rounds_core::billing::{RuleSet, bill};
use rounds_core::replica::NewInteraction;
use rounds_core::{Program, Replica};
use rounds_tests::{ServerProcess, repo_root, sunnyvale, sync_with};

fn rounds(args: &[&str]) -> String {
    rounds_tests::rounds_cli(args)
}

fn tool(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed (scripts/test installs it): {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn files(dir: &std::path::Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_late_data_and_the_validated_package() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let example = repo_root().join("examples/sunnyvale.json");
    rounds(&["import", "--store", s, example.to_str().unwrap()]);

    // 1. Version 1 of every encounter equals `rounds bill` on the same data.
    let v1: Vec<serde_json::Value> = serde_json::from_str(&rounds(&[
        "close-month",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--store",
        s,
    ]))
    .unwrap();
    let data = sunnyvale().unwrap();
    let billed = bill(&data, "2026-11".parse().unwrap(), &RuleSet::default()).unwrap();
    assert_eq!(v1.len(), billed.encounters.len());
    for (v, e) in v1.iter().zip(&billed.encounters) {
        assert_eq!(v["version"], 1);
        assert_eq!(v["kind"], "original");
        assert_eq!(
            v["encounter"],
            serde_json::to_value(e).unwrap(),
            "patient {}",
            e.patient
        );
        assert!(
            v["heads"].as_object().unwrap().len() >= 2,
            "heads of the documents used"
        );
    }
    let bill_cli: serde_json::Value = serde_json::from_str(&rounds(&[
        "bill",
        "--data",
        example.to_str().unwrap(),
        "--month",
        "2026-11",
    ]))
    .unwrap();
    assert_eq!(
        bill_cli["encounters"],
        serde_json::to_value(&billed.encounters).unwrap()
    );

    // 2. Late data through a device: p-002 gets 16 more minutes (45 → 61: a second 99439),
    //    p-001's largest entry is voided (23 → under 20: 99490 lost).
    let server = ServerProcess::start(store.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Replica::open(dir.path()).unwrap();
    d.import(&data, Utc::now()).unwrap();
    let start: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-20T15:00:00-05:00")
        .unwrap()
        .with_timezone(&Utc);
    d.log_interaction(
        NewInteraction {
            patient: "p-002".into(),
            staff: "rn-lee".into(),
            program: Program::Ccm,
            started_at: start,
            ended_at: start + Duration::minutes(16),
            interactive: true,
            activity: Some("phone_call".into()),
            note: Some("Late entry synced after month close".into()),
        },
        Utc::now(),
    )
    .unwrap();
    let largest = data
        .interactions
        .iter()
        .filter(|i| i.patient == "p-001")
        .max_by_key(|i| i.ended_at - i.started_at)
        .unwrap();
    d.void_entry(
        largest.id,
        "rn-lee",
        Some("wrong patient".into()),
        Utc::now(),
    )
    .unwrap();
    // And an SpO2 of 85 % that raises an alert in the closed month.
    d.record_reading_alerts(
        rounds_core::replica::NewReading {
            patient: "p-001".into(),
            kind: rounds_core::ReadingKind::Spo2,
            systolic: None,
            diastolic: None,
            value: Some(85.0),
            unit: "%".into(),
            measured_at: start + Duration::hours(1),
            device: Some("oximeter".into()),
            source: rounds_core::ReadingSource::Manual,
            program: None,
        },
        start + Duration::hours(1),
    )
    .unwrap();
    sync_with(&mut d, &server).await.unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let mut changed: Vec<serde_json::Value> = Vec::new();
    for _ in 0..50 {
        changed = serde_json::from_str(&rounds(&[
            "encounters",
            "--facility",
            "sunnyvale",
            "--month",
            "2026-11",
            "--changed",
            "--store",
            s,
            "--server",
            &url,
        ]))
        .unwrap();
        if changed.iter().filter(|v| v["version"] == 2).count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let find = |p: &str, version: u64| {
        changed
            .iter()
            .find(|v| v["patient"] == p && v["version"] == version)
            .cloned()
    };
    let p2 = find("p-002", 2).unwrap_or_else(|| panic!("no amendment: {changed:#?}"));
    assert_eq!(p2["kind"], "amendment");
    assert_eq!(p2["diff"]["added"][0]["code"], "99439");
    assert_eq!(p2["diff"]["added"][0]["units"], 2);
    let p1 = find("p-001", 2).unwrap_or_else(|| panic!("no void: {changed:#?}"));
    assert_eq!(p1["kind"], "void");
    assert_eq!(p1["diff"]["removed"][0]["code"], "99490");
    // Both versions are kept.
    assert!(find("p-001", 1).is_some() && find("p-002", 1).is_some());

    // 3. The package, exported through the running server, passes the validators.
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    for format in ["fhir", "hl7", "csv", "pdf"] {
        rounds(&[
            "export",
            "--facility",
            "sunnyvale",
            "--month",
            "2026-11",
            "--format",
            format,
            "--out",
            o,
            "--store",
            s,
            "--server",
            &url,
        ]);
    }
    let hl7 = files(&out.path().join("hl7"), "hl7");
    assert!(hl7.len() >= 20, "{hl7:?}");
    let mut args = vec![
        repo_root()
            .join("tests/validate_hl7.py")
            .display()
            .to_string(),
    ];
    args.extend(hl7.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, report) = tool("python3", &args);
    assert!(ok, "hl7apy strict validation failed:\n{report}");
    let fhir = files(&out.path().join("fhir"), "json");
    assert!(fhir.len() >= 10);
    let mut args = vec![
        repo_root()
            .join("tests/js/validate_fhir.mjs")
            .display()
            .to_string(),
    ];
    args.extend(fhir.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, report) = tool("node", &args);
    assert!(ok, "FHIR R4 schema validation failed:\n{report}");
    // The amended package carries version 2 with the raised units.
    let p2_bundle = std::fs::read_to_string(out.path().join("fhir/p-002-2026-11-v2.json")).unwrap();
    assert!(p2_bundle.contains("PRACTICE-100074-2026-11-99439"));
    let csv = std::fs::read_to_string(out.path().join("summary-sunnyvale-2026-11.csv")).unwrap();
    assert!(
        csv.lines()
            .any(|l| l.contains("p-002") && l.contains("99439x2")),
        "{csv}"
    );
    assert!(csv.contains("TOTAL facility"));

    // 4. The PDF renders to a non-blank page.
    let pdf = out.path().join("pdf/p-007-2026-11-v1.pdf");
    let prefix = out.path().join("page");
    let (ok, report) = tool(
        "pdftoppm",
        &[
            "-png",
            "-r",
            "50",
            "-f",
            "1",
            "-l",
            "1",
            pdf.to_str().unwrap(),
            prefix.to_str().unwrap(),
        ],
    );
    assert!(ok, "{report}");
    let png = files(out.path(), "png");
    assert_eq!(png.len(), 1, "{png:?}");
    let (ok, report) = tool(
        "pdftoppm",
        &[
            "-gray",
            "-r",
            "50",
            "-f",
            "1",
            "-l",
            "1",
            pdf.to_str().unwrap(),
            prefix.to_str().unwrap(),
        ],
    );
    assert!(ok, "{report}");
    let pgm = files(out.path(), "pgm");
    let bytes = std::fs::read(&pgm[0]).unwrap();
    // P5 header: magic, width height, max — then one byte per pixel.
    let mut fields = 0;
    let mut i = 0;
    while fields < 4 && i < bytes.len() {
        while bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        while !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        fields += 1;
    }
    let pixels = &bytes[i + 1..];
    let dark = pixels.iter().filter(|p| **p < 128).count();
    assert!(
        dark * 200 > pixels.len(),
        "page looks blank: {dark} dark of {} pixels",
        pixels.len()
    );

    // 4. The read model the server kept while closing, re-closing and exporting equals the
    //    documents read afresh (and a rebuild reads them all again).
    let mut server = server;
    server.stop().unwrap();
    let check = rounds(&["read-model", "check", "--store", s]);
    assert!(check.contains(", 0 wrong"), "{check}");
    let compared: usize = check
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(compared >= 10, "{check}");
    // The same package exported straight from the store (no server): the same files.
    let offline = tempfile::tempdir().unwrap();
    for format in ["fhir", "hl7", "csv"] {
        let said = rounds(&[
            "export",
            "--facility",
            "sunnyvale",
            "--month",
            "2026-11",
            "--format",
            format,
            "--out",
            offline.path().to_str().unwrap(),
            "--store",
            s,
        ]);
        assert!(said.starts_with("wrote "), "{said}");
    }
    for (sub, ext) in [("fhir", "json"), ("hl7", "hl7")] {
        let names = |d: &std::path::Path| {
            let mut v: Vec<String> = files(&d.join(sub), ext)
                .iter()
                .map(|f| f.rsplit('/').next().unwrap_or_default().to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(offline.path()), names(out.path()), "{sub}");
    }
    let csv = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("summary-sunnyvale-2026-11.csv")).unwrap()
    };
    assert_eq!(csv(offline.path()), csv(out.path()));
    let rebuilt = rounds(&["read-model", "rebuild", "--store", s]);
    assert!(rebuilt.contains("documents read again"), "{rebuilt}");
    let check = rounds(&["read-model", "check", "--store", s]);
    assert!(
        check.contains(" 0 stale") && check.contains(", 0 wrong"),
        "{check}"
    );
}
