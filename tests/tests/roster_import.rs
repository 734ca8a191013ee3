//! Residents from the facility's census CSV and from FHIR `Patient` resources
//! (`tests/roster-samples/`), through `rounds import --facility` on a store and through the admin
//! API: bad rows reported per row and field with nothing imported, residents already on the
//! roster left alone, and the new residents on the month close.

use rounds_tests::{ServerProcess, https_post_raw, repo_root, rounds_cli, rounds_cli_output};

fn sample(name: &str) -> String {
    repo_root()
        .join("tests/roster-samples")
        .join(name)
        .to_string_lossy()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_and_fhir_rosters_join_the_facility_and_bad_rows_import_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let example = repo_root().join("examples/sunnyvale.json");
    rounds_cli(&["import", example.to_str().unwrap(), "--store", s]);

    // A census with one bad row: refused whole, naming rows and fields; nothing imported.
    let census = std::fs::read_to_string(sample("census.csv")).unwrap();
    let bad = format!(
        "{census}r-303,Ng,Anh,02/30/1940,F,North,103,A,2026-11-01,Medicare B,900303,1234567893,I10,\n\
         r-304,Ode,Tim,1940-01-01,M,North,104,A,2026-11-01,Medicare B,900304,1999999999,I10,\n"
    );
    let bad_file = dir.path().join("bad-census.csv");
    std::fs::write(&bad_file, bad).unwrap();
    let out = rounds_cli_output(&[
        "import",
        "--facility",
        "sunnyvale",
        bad_file.to_str().unwrap(),
        "--store",
        s,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("census row 5: field `birth_date`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("census row 6: field `attending_npi`"),
        "{stderr}"
    );

    // The good census: two residents added, the one already on the roster (by id) left alone.
    let out = rounds_cli(&[
        "import",
        "--facility",
        "sunnyvale",
        &sample("census.csv"),
        "--store",
        s,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["added"], serde_json::json!(["r-301", "r-302"]), "{out}");
    assert_eq!(v["already_on_roster"], serde_json::json!(["p-001"]));
    // Nothing of the bad file came in: r-301 was new just now, and a second run adds nothing.
    let again = rounds_cli(&[
        "import",
        "--facility",
        "sunnyvale",
        &sample("census.csv"),
        "--store",
        s,
    ]);
    assert!(again.contains("\"added\":[]"), "{again}");

    // The admin API on a running server: FHIR Patients.
    let server = ServerProcess::start(&store).unwrap();
    let token = server.admin_token().unwrap();
    let fhir = std::fs::read_to_string(sample("patients.json")).unwrap();
    let bearer = format!("Bearer {token}");
    let broken = fhir
        .replace("1937-05-21", "1937")
        .replace("Practitioner/dr-smith", "Practitioner/dr-nobody");
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/import/fhir/sunnyvale",
        &broken,
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(status.contains("422"), "{status} {resp}");
    assert!(
        resp.contains("Patient pcc-4401: field `birthDate`")
            && resp.contains("Patient pcc-4402: field `generalPractitioner`"),
        "{resp}"
    );
    let (status, _) = https_post_raw(&server, "/api/v1/import/fhir/sunnyvale", &fhir, &[])
        .await
        .unwrap();
    assert!(status.contains("401"), "{status}");
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/import/fhir/oakridge",
        &fhir,
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(
        status.contains("422") && resp.contains("oakridge"),
        "{status} {resp}"
    );
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/import/fhir/sunnyvale",
        &fhir,
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(status.contains("200"), "{status} {resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["added"], serde_json::json!(["pcc-4401", "pcc-4402"]));
    drop(server);

    // The new residents are on the roster the month close reads, with their facts.
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
    let patients: Vec<&str> = closed
        .iter()
        .filter_map(|v| v["encounter"]["patient"].as_str())
        .collect();
    for p in ["r-301", "r-302", "pcc-4401", "pcc-4402", "p-001"] {
        assert!(patients.contains(&p), "{p} not in {patients:?}");
    }
    assert_eq!(patients.len(), 24);
    // r-301 has no consent yet: nothing billed, with the reason.
    let r301 = closed
        .iter()
        .find(|v| v["encounter"]["patient"] == "r-301")
        .unwrap();
    assert!(r301["encounter"]["lines"].as_array().unwrap().is_empty());
}
