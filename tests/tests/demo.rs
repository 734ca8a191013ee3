//! `rounds demo` end to end; its summary matches `rounds bill` on the data it exported.

use std::collections::BTreeMap;

use rounds_tests::rounds_bin;

#[test]
fn demo_runs_end_to_end_and_matches_rounds_bill() {
    let dir = tempfile::tempdir().unwrap();
    let (store, out) = (dir.path().join("store"), dir.path().join("out"));
    let run = std::process::Command::new(rounds_bin().unwrap())
        .args(["demo", "--listen", "127.0.0.1:0", "--exit", "--store"])
        .arg(&store)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("documents confirmed by the server"),
        "{stdout}"
    );
    // "    99490  10 lines, 10 units  …"
    let mut summary: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for line in stdout.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() >= 5
            && parts[0].len() == 5
            && parts[0].chars().all(|c| c.is_ascii_digit())
            && parts[2] == "lines,"
        {
            summary.insert(
                parts[0].to_string(),
                (parts[1].parse().unwrap(), parts[3].parse().unwrap()),
            );
        }
    }
    assert!(summary.contains_key("99490"), "{stdout}");
    // Two practices, each with its own summary.
    for practice in ["smith-primary-care", "garcia-geriatrics"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{practice}: "))
                    && l.contains("patients served")),
            "{stdout}"
        );
        assert!(
            out.join(format!("summary-{practice}-sunnyvale-2026-11.csv"))
                .exists(),
            "{practice}'s summary CSV"
        );
    }
    let bill = std::process::Command::new(rounds_bin().unwrap())
        .args(["bill", "--month", "2026-11", "--data"])
        .arg(out.join("data.json"))
        .output()
        .unwrap();
    assert!(
        bill.status.success(),
        "{}",
        String::from_utf8_lossy(&bill.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&bill.stdout).unwrap();
    let mut billed: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for e in v["encounters"].as_array().unwrap() {
        for l in e["lines"].as_array().unwrap() {
            let entry = billed
                .entry(l["code"].as_str().unwrap().to_string())
                .or_default();
            entry.0 += 1;
            entry.1 += l["units"].as_u64().unwrap();
        }
    }
    assert_eq!(summary, billed);
    let served = v["encounters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["lines"].as_array().unwrap().is_empty())
        .count();
    assert!(
        stdout.contains(&format!(
            "patients served (with billable lines): {served} of 20"
        )),
        "{stdout}"
    );
    for sub in ["fhir", "hl7", "pdf"] {
        assert!(
            std::fs::read_dir(out.join(sub)).unwrap().count() > 5,
            "{sub}"
        );
    }
    // The tablets' files are encrypted at rest.
    let tablet = store.join("tablet-1/docs");
    for f in std::fs::read_dir(tablet).unwrap().flatten() {
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(!bytes.windows(8).any(|w| w == b"Jane Doe"));
    }
}
