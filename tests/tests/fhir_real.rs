//! The push against a real FHIR implementation that no one here wrote: Medplum's FHIR router
//! over its in-memory repository, validating every resource against the R4 StructureDefinitions
//! (`tests/js/fhir-server.mjs`). The example month goes out under each delivery profile: every
//! resource of every patient lands, none is invalid, and neither a second push nor a push from a
//! store restored from before the first creates anything twice; a server failing mid-package is
//! resumed where it stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rounds_tests::repo_root;
use serde_json::{Value, json};

const MONTH: &str = "2026-11";
const MRN_SYSTEM: &str = "https://practice.example.org/fhir/sid/mrn";
const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

/// The Medplum-based server, killed on drop.
struct Fhir {
    child: Child,
    port: u16,
}

impl Drop for Fhir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fhir_server(flags: &[&str]) -> Fhir {
    let js = repo_root().join("tests/js");
    let mut child = Command::new("node")
        .arg(js.join("fhir-server.mjs"))
        .arg("0")
        .args(flags)
        .current_dir(&js)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node (tests/js needs `npm ci`)");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("the FHIR server exited before listening")
            .unwrap();
        if let Some(p) = line.strip_prefix("listening ") {
            break p.trim().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Fhir { child, port }
}

/// A plain HTTP/1.0 exchange (the server then closes, no chunking): status and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The practice's patients (by MRN) and practitioners (by NPI) exist in the EHR before any push:
/// the push refers to them and never creates them.
fn seed(port: u16) {
    let data: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/sunnyvale.json")).unwrap(),
    )
    .unwrap();
    let mut entries = Vec::new();
    for p in data["patients"].as_array().unwrap() {
        let mrn = p["mrn"].as_str().or(p["id"].as_str()).unwrap();
        entries.push(json!({ "resource": { "resourceType": "Patient", "identifier": [{ "system": MRN_SYSTEM, "value": mrn }] },
                             "request": { "method": "POST", "url": "Patient" } }));
    }
    for p in data["practitioners"].as_array().unwrap() {
        entries.push(json!({ "resource": { "resourceType": "Practitioner", "identifier": [{ "system": NPI, "value": p["npi"] }] },
                             "request": { "method": "POST", "url": "Practitioner" } }));
    }
    let bundle = json!({ "resourceType": "Bundle", "type": "batch", "entry": entries });
    let (status, body) = http(port, "POST", "/fhir", &bundle.to_string());
    assert_eq!(status, 200, "{body}");
}

/// Every resource of our identifier systems on the server: (type, identifier) → how many.
fn on_server(port: u16) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for t in rounds_core::ehr::delivery::RESOURCE_TYPES {
        let (status, body) = http(port, "GET", &format!("/fhir/{t}?_count=1000"), "");
        assert_eq!(status, 200, "{body}");
        let b: Value = serde_json::from_str(&body).unwrap();
        for e in b["entry"].as_array().into_iter().flatten() {
            let id = e["resource"]["identifier"][0]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            *out.entry((t.to_string(), id)).or_default() += 1;
        }
    }
    out
}

fn stats(port: u16) -> Value {
    serde_json::from_str(&http(port, "GET", "/_stats", "").1).unwrap()
}

/// What the month's packages hold: (type, identifier) of every entry of every bundle.
fn expected(store: &Path, dir: &Path, types: &[&str]) -> BTreeSet<(String, String)> {
    let out = dir.join("export");
    rounds_tests::rounds_cli(&[
        "export",
        "--facility",
        "sunnyvale",
        "--month",
        MONTH,
        "--format",
        "fhir",
        "--out",
        out.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    let mut set = BTreeSet::new();
    for f in std::fs::read_dir(out.join("fhir")).unwrap().flatten() {
        let b: Value = serde_json::from_str(&std::fs::read_to_string(f.path()).unwrap()).unwrap();
        for e in b["entry"].as_array().unwrap() {
            let t = e["resource"]["resourceType"].as_str().unwrap();
            if types.contains(&t) {
                let id = e["resource"]["identifier"][0]["value"].as_str().unwrap();
                set.insert((t.to_string(), id.to_string()));
            }
        }
    }
    set
}

fn copy_dir(from: &Path, to: &Path) {
    rounds_tests::copy_dir(from, to).unwrap();
}

/// November closed in a fresh store.
fn closed_store(dir: &Path) -> PathBuf {
    let store = dir.join("closed");
    let s = store.to_str().unwrap();
    let example = repo_root().join("examples/sunnyvale.json");
    rounds_tests::rounds_cli(&["import", "--store", s, example.to_str().unwrap()]);
    rounds_tests::rounds_cli(&[
        "close-month",
        "--facility",
        "sunnyvale",
        "--month",
        MONTH,
        "--store",
        s,
    ]);
    store
}

/// `rounds push send` of November from `store` with `profile` (push.toml lines) to `port`.
fn push(store: &Path, port: u16, profile: &str) -> (bool, String) {
    let config = store.with_extension("push.toml");
    std::fs::write(
        &config,
        format!("[fhir]\nbase_url = \"http://127.0.0.1:{port}/fhir\"\n{profile}\n"),
    )
    .unwrap();
    let out = rounds_tests::rounds_cli_output(&[
        "push",
        "send",
        "--facility",
        "sunnyvale",
        "--month",
        MONTH,
        "--config",
        config.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--wait",
        "60",
    ]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn assert_complete(port: u16, expect: &BTreeSet<(String, String)>, what: &str) {
    let got = on_server(port);
    let dups: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{what}: duplicates {dups:?}");
    let keys: BTreeSet<(String, String)> = got.into_keys().collect();
    assert_eq!(&keys, expect, "{what}: resources on the server");
    let s = stats(port);
    assert_eq!(s["invalid"], json!([]), "{what}: invalid resources");
}

#[test]
fn every_profile_lands_every_patient_and_a_repush_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let closed = closed_store(dir.path());
    let all = rounds_core::ehr::delivery::RESOURCE_TYPES;
    let everything = expected(&closed, dir.path(), &all);
    assert!(everything.iter().any(|(t, _)| t == "Observation"));
    let no_charge_types: Vec<&str> = all.iter().copied().filter(|t| *t != "ChargeItem").collect();
    let without_charges = expected(&closed, &dir.path().join("nc"), &no_charge_types);
    type Case<'a> = (&'a str, &'a [&'a str], &'a BTreeSet<(String, String)>);
    let cases: [Case; 4] = [
        // An EHR that takes a whole package in one transaction.
        (
            "profile = \"transaction\"",
            &["--no-strict-transactions"],
            &everything,
        ),
        // Medplum as it is: at most 8 entries in a transaction with conditional creates.
        ("profile = \"strict-transaction\"", &[], &everything),
        ("profile = \"batch\"", &[], &everything),
        // No ChargeItem (the charges go by HL7 or CSV), split for the same server.
        (
            "profile = \"no-charges\"\nmax_entries = 8",
            &[],
            &without_charges,
        ),
    ];
    for (n, (profile, flags, expect)) in cases.into_iter().enumerate() {
        let fhir = fhir_server(flags);
        seed(fhir.port);
        let store = dir.path().join(format!("store-{n}"));
        copy_dir(&closed, &store);
        let backup = dir.path().join(format!("backup-{n}"));
        copy_dir(&closed, &backup);
        let (ok, out) = push(&store, fhir.port, profile);
        assert!(
            ok && out.contains("failed 0, pending 0"),
            "{profile}: {out}"
        );
        assert_complete(fhir.port, expect, profile);
        // Without ChargeItem and without an HL7 target, the push says where the charges go.
        assert_eq!(
            out.contains("send its charges with the charge CSV"),
            profile.contains("no-charges"),
            "{profile}: {out}"
        );
        // Again from the same store: nothing is sent twice.
        let posts = stats(fhir.port)["posts"].clone();
        let (ok, out) = push(&store, fhir.port, profile);
        assert!(ok && out.contains("queued 0 new"), "{profile}: {out}");
        assert_eq!(stats(fhir.port)["posts"], posts);
        // From a store restored from before the push: everything goes again, nothing is new.
        let (ok, out) = push(&backup, fhir.port, profile);
        assert!(
            ok && out.contains("failed 0, pending 0"),
            "{profile}: {out}"
        );
        assert_complete(fhir.port, expect, &format!("{profile}, restored store"));
    }
}

#[test]
fn a_server_failing_mid_package_is_resumed_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let closed = closed_store(dir.path());
    let everything = expected(
        &closed,
        dir.path(),
        &rounds_core::ehr::delivery::RESOURCE_TYPES,
    );
    // POST 1 is the seed; the 4th bundle of the push fails with HTTP 500.
    let fhir = fhir_server(&["--fail-request", "5"]);
    seed(fhir.port);
    let (ok, out) = push(&closed, fhir.port, "profile = \"strict-transaction\"");
    assert!(ok && out.contains("failed 0, pending 0"), "{out}");
    assert_complete(fhir.port, &everything, "after a failure mid-package");
    let items: Vec<Value> = serde_json::from_str(&rounds_tests::rounds_cli(&[
        "push",
        "status",
        "--store",
        closed.to_str().unwrap(),
    ]))
    .unwrap();
    let retried: Vec<&Value> = items
        .iter()
        .filter(|i| i["attempts"].as_u64().unwrap() > 1)
        .collect();
    assert_eq!(retried.len(), 1, "{items:#?}");
    // Each resource's answer is in the outbox.
    assert!(
        retried[0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"].as_str().unwrap().starts_with("20"))
    );
}

#[test]
fn a_whole_package_in_one_transaction_is_refused_by_medplum_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let closed = closed_store(dir.path());
    let fhir = fhir_server(&[]);
    seed(fhir.port);
    let (_, out) = push(&closed, fhir.port, "profile = \"transaction\"");
    assert!(
        out.contains("Transaction requires strict isolation but has too many entries"),
        "{out}"
    );
}

#[test]
fn a_bundle_refused_mid_package_resumes_after_a_retry_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let closed = closed_store(dir.path());
    let everything = expected(
        &closed,
        dir.path(),
        &rounds_core::ehr::delivery::RESOURCE_TYPES,
    );
    // POST 1 is the seed; the EHR refuses the 3rd bundle of the push (HTTP 400).
    let fhir = fhir_server(&["--refuse-request", "4"]);
    seed(fhir.port);
    let (ok, out) = push(&closed, fhir.port, "profile = \"strict-transaction\"");
    assert!(!ok, "a refused bundle makes push send fail: {out}");
    assert!(out.contains("Refused on purpose for the test"), "{out}");
    // The parts after the refused one waited: nothing refers to what is not there.
    assert_eq!(stats(fhir.port)["invalid"], json!([]));
    let s = closed.to_str().unwrap();
    rounds_tests::rounds_cli(&[
        "push",
        "retry",
        "--facility",
        "sunnyvale",
        "--month",
        MONTH,
        "--store",
        s,
    ]);
    let (ok, out) = push(&closed, fhir.port, "profile = \"strict-transaction\"");
    assert!(ok && out.contains("failed 0, pending 0"), "{out}");
    assert_complete(fhir.port, &everything, "after a refusal and a retry");
}
