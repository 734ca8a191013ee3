//! Device vendors' own webhook posts at `POST /api/v1/vendors/<vendor>`: the documented sample
//! payloads of Tenovi (single and "post as array"), BodyTrace (scale and blood pressure) and Smart
//! Meter (one reading, and a batch of every reading type) land as
//! readings in the model's units, a replay is a no-op, a wrong credential is refused and audited,
//! and a post with one bad measurement writes nothing. Samples and their sources:
//! `tests/vendor-samples/`.

use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use rounds_core::{Reading, ReadingKind, ReadingSource, Replica};
use rounds_tests::{ServerProcess, https_post_raw, rounds_cli, sunnyvale, sync_with};

fn sample(name: &str, at: chrono::DateTime<Utc>) -> String {
    let path = rounds_tests::repo_root()
        .join("tests/vendor-samples")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("{TS}", &at.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .replace("{MS}", &at.timestamp_millis().to_string())
        .replace(
            "{LOCAL-5}",
            &(at - chrono::Duration::hours(5))
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string(),
        )
}

/// BodyTrace's IMEIs, enrolled as p-009's scale and p-017's cuff.
const BODYTRACE: [(&str, &str); 2] = [("p-009", "35301109712345"), ("p-017", "35301109754321")];

/// A server on a fixed clock (`t0`), a tablet holding the example facility with `devices`
/// enrolled (patient, device id) and synced, and an integration named `integration` with its key.
struct Setup {
    dir: tempfile::TempDir,
    store: PathBuf,
    server: ServerProcess,
    tablet: Replica,
    base: String,
    key: String,
    t0: DateTime<Utc>,
}

async fn setup(devices: &[(&str, &str)], integration: &str) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 12, 15, 15, 0, 0).unwrap();
    let clock = dir.path().join("clock");
    std::fs::write(&clock, t0.to_rfc3339()).unwrap();
    let store = dir.path().join("store");
    let server =
        ServerProcess::start_with(&store, &["--clock-file", clock.to_str().unwrap()]).unwrap();
    let mut data = sunnyvale().unwrap();
    for (p, device) in devices {
        let patient = data.patients.iter_mut().find(|x| x.id == *p).unwrap();
        patient.rpm.as_mut().unwrap().devices.push((*device).into());
    }
    let mut tablet = Replica::open(dir.path().join("t")).unwrap();
    tablet
        .import(&data, Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap())
        .unwrap();
    sync_with(&mut tablet, &server).await.unwrap();
    let base = format!("https://127.0.0.1:{}", server.port);
    let out = rounds_cli(&[
        "integration",
        "add",
        "--facility",
        "sunnyvale",
        "--name",
        integration,
        "--store",
        store.to_str().unwrap(),
        "--server",
        &base,
    ]);
    let key = serde_json::from_str::<serde_json::Value>(&out).unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    Setup {
        dir,
        store,
        server,
        tablet,
        base,
        key,
        t0,
    }
}

/// The tablet's readings after a sync, once checked that exactly `added` were written since it
/// held `before`.
async fn synced_readings(
    t: &mut Replica,
    server: &ServerProcess,
    before: usize,
    added: usize,
) -> Vec<Reading> {
    sync_with(t, server).await.unwrap();
    let (data, _) = t.export().unwrap();
    assert_eq!(
        data.readings.len(),
        before + added,
        "only the accepted posts wrote"
    );
    data.readings
}

/// The reading of `kind` from `device` (measured at `at`, when given).
fn reading_of<'a>(
    readings: &'a [Reading],
    device: &str,
    kind: ReadingKind,
    at: Option<DateTime<Utc>>,
) -> &'a Reading {
    readings
        .iter()
        .find(|r| {
            r.device.as_deref() == Some(device)
                && r.kind == kind
                && at.is_none_or(|at| r.measured_at.with_timezone(&Utc) == at)
        })
        .unwrap_or_else(|| panic!("no {kind:?} from {device}"))
}

/// `rounds audit` through the server.
fn audit(store: &Path, base: &str) -> String {
    rounds_cli(&[
        "audit",
        "--store",
        store.to_str().unwrap(),
        "--server",
        base,
    ])
}

fn basic(password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("bodytrace:{password}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_payloads_land_in_model_units_once_and_bad_posts_write_nothing() {
    let Setup {
        dir,
        store,
        server,
        tablet: mut t,
        base,
        key,
        t0,
    } = setup(&BODYTRACE, "tenovi-prod").await;
    let at = t0 - chrono::Duration::minutes(5);
    let before = t.export().unwrap().0.readings.len();

    // Tenovi, one measurement per post, key as a bearer token.
    let bearer = format!("Bearer {key}");
    let single = sample("tenovi-single.json", at);
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/tenovi",
        &single,
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(status.contains("201"), "{status} {resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["stored"], 1);
    assert_eq!(v["readings"][0]["patient"], "p-007");
    // The same post again (Tenovi re-sends on request): a no-op.
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/tenovi",
        &single,
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(status.contains("200"), "{status} {resp}");
    assert!(resp.contains("\"duplicates\":1"), "{resp}");

    // Tenovi "post as array", key in X-Api-Key: blood pressure and pulse stored, battery skipped.
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/tenovi",
        &sample("tenovi-array.json", at),
        &[("X-Api-Key", &key)],
    )
    .await
    .unwrap();
    assert!(status.contains("201"), "{status} {resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["stored"], 2, "{resp}");
    assert_eq!(v["skipped"][0], "tenovi battery_percentage");

    // BodyTrace scale and cuff, HTTP Basic auth with the key as password.
    for (file, patient) in [
        ("bodytrace-weight.json", "p-009"),
        ("bodytrace-bp.json", "p-017"),
    ] {
        let (status, resp) = https_post_raw(
            &server,
            "/api/v1/vendors/bodytrace",
            &sample(file, at),
            &[("Authorization", &basic(&key))],
        )
        .await
        .unwrap();
        assert!(status.contains("201"), "{file}: {status} {resp}");
        assert!(resp.contains(patient), "{file}: {resp}");
    }

    // A wrong credential: 401, nothing written; BodyTrace's key as a bearer token is not its style.
    for (path, auth) in [
        ("/api/v1/vendors/bodytrace", basic("wrong")),
        ("/api/v1/vendors/bodytrace", format!("Bearer {key}")),
        ("/api/v1/vendors/tenovi", "Bearer nope".to_string()),
    ] {
        let (status, _) = https_post_raw(
            &server,
            path,
            &sample("bodytrace-weight.json", at + chrono::Duration::minutes(1)),
            &[("Authorization", &auth)],
        )
        .await
        .unwrap();
        assert!(status.contains("401"), "{path} {auth}: {status}");
    }
    // An unknown vendor: 404.
    let (status, _) = https_post_raw(
        &server,
        "/api/v1/vendors/acme",
        "{}",
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(status.contains("404"), "{status}");

    // A batch with one unknown device: 404 naming it, and the good measurement is not written
    // either. One with an impossible value: 422 naming the field.
    let later = at + chrono::Duration::minutes(2);
    let mut batch: Vec<serde_json::Value> =
        serde_json::from_str(&sample("tenovi-array.json", later)).unwrap();
    batch[1]["hwi_device_id"] = "cuff-99".into();
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/tenovi",
        &serde_json::to_string(&batch).unwrap(),
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(
        status.contains("404") && resp.contains("cuff-99"),
        "{status} {resp}"
    );
    let mut batch: Vec<serde_json::Value> =
        serde_json::from_str(&sample("tenovi-array.json", later)).unwrap();
    batch[1]["value_1"] = "400".into();
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/tenovi",
        &serde_json::to_string(&batch).unwrap(),
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(
        status.contains("422") && resp.contains("value"),
        "{status} {resp}"
    );
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/tenovi",
        "[{\"metric\":\"pulse\"}]",
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(
        status.contains("400") && resp.contains("[0]"),
        "{status} {resp}"
    );

    // Any other vendor, through a mapping given with the integration.
    let mapping = dir.path().join("acme.toml");
    std::fs::write(
        &mapping,
        r#"
measurements = "/data"
reading_id = "/uid"
device_id = "/meter/serial"
measured_at = "/t"
time_format = "unix_s"
kind = "/type"
value = "/v"
systolic = "/sys"
diastolic = "/dia"
unit = "/u"

[kinds]
bp = "blood_pressure"
"#,
    )
    .unwrap();
    let out = rounds_cli(&[
        "integration",
        "add",
        "--facility",
        "sunnyvale",
        "--name",
        "acme-generic",
        "--mapping",
        mapping.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--server",
        &base,
    ]);
    let acme = serde_json::from_str::<serde_json::Value>(&out).unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let generic = serde_json::json!({"data": [
        {"uid": "a-1", "meter": {"serial": "cuff-09"}, "t": at.timestamp(), "type": "bp",
         "sys": "141", "dia": 87, "u": "mmHg"},
        {"uid": "a-2", "meter": {"serial": "cuff-09"}, "t": at.timestamp(), "type": "battery",
         "v": 50, "u": "%"}
    ]})
    .to_string();
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/generic",
        &generic,
        &[("Authorization", &format!("Bearer {acme}"))],
    )
    .await
    .unwrap();
    assert!(status.contains("201"), "{status} {resp}");
    assert!(resp.contains("generic battery"), "{resp}");
    // The Tenovi integration has no mapping: its key cannot post generic payloads.
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/generic",
        &generic,
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    assert!(
        status.contains("422") && resp.contains("mapping"),
        "{status} {resp}"
    );
    // A mapping that is not one is refused when the integration is created.
    std::fs::write(&mapping, "reading_id = \"uid\"\n").unwrap();
    let out = rounds_tests::rounds_cli_output(&[
        "integration",
        "add",
        "--facility",
        "sunnyvale",
        "--name",
        "acme-2",
        "--mapping",
        mapping.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--server",
        &base,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("acme.toml"));

    // What the tablet sees: seven readings, in the model's units, as device readings.
    let readings = synced_readings(&mut t, &server, before, 7).await;
    let of = |device: &str, kind: ReadingKind| reading_of(&readings, device, kind, Some(at));
    let bp = of("cuff-07", ReadingKind::BloodPressure);
    assert_eq!((bp.systolic, bp.diastolic), (Some(152.0), Some(91.0)));
    assert_eq!(bp.unit, "mm[Hg]");
    assert_eq!(bp.source, ReadingSource::Device);
    assert_eq!(bp.patient, "p-007");
    let pulse = of("cuff-08", ReadingKind::HeartRate);
    assert_eq!((pulse.value, pulse.unit.as_str()), (Some(71.0), "/min"));
    let weight = of("35301109712345", ReadingKind::Weight);
    assert_eq!((weight.value, weight.unit.as_str()), (Some(81.65), "kg"));
    assert_eq!(weight.patient, "p-009");
    let cuff = of("35301109754321", ReadingKind::BloodPressure);
    assert_eq!((cuff.systolic, cuff.diastolic), (Some(134.0), Some(82.0)));
    assert_eq!(
        of("35301109754321", ReadingKind::HeartRate).value,
        Some(66.0)
    );
    let acme = of("cuff-09", ReadingKind::BloodPressure);
    assert_eq!((acme.systolic, acme.unit.as_str()), (Some(141.0), "mm[Hg]"));

    // The refusals are audited; the unauthenticated ones aggregated per address.
    let audit = audit(&store, &base);
    assert!(audit.contains("ingest-rejected"), "{audit}");
    assert!(audit.contains("cuff-99"), "{audit}");
    assert!(audit.contains("ingest-non-vital"), "{audit}");
    // The non-vital metric is kept there with its value and device.
    assert!(
        audit.contains("tenovi battery_percentage=64 device cuff-08"),
        "{audit}"
    );
}

/// Smart Meter's IMEIs, enrolled on the example facility: a cuff (p-007), a glucose meter
/// (p-008), a scale (p-009), and user 2 of a shared pulse oximeter (p-017).
const SMART_METER: [(&str, &str); 4] = [
    ("p-007", "015732004417215"),
    ("p-008", "015732004431208"),
    ("p-009", "015732004445513"),
    ("p-017", "015732004459807/2"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_meter_readings_land_in_model_units_once_on_the_right_patient() {
    let Setup {
        dir: _dir,
        store,
        server,
        tablet: mut t,
        base,
        key,
        t0,
    } = setup(&SMART_METER, "smartmeter-prod").await;
    let bearer = format!("Bearer {key}");
    let at = t0 - chrono::Duration::minutes(5);
    let before = t.export().unwrap().0.readings.len();
    let post = |body: String, auth: String| {
        let server = &server;
        async move {
            https_post_raw(
                server,
                "/api/v1/vendors/smartmeter",
                &body,
                &[("Authorization", auth.as_str())],
            )
            .await
            .unwrap()
        }
    };

    // One reading per post, as Smart Meter forwards: the cuff's blood pressure and its pulse.
    let single = sample("smartmeter-bp.json", at);
    let (status, resp) = post(single.clone(), bearer.clone()).await;
    assert!(status.contains("201"), "{status} {resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["stored"], 2, "{resp}");
    assert_eq!(v["readings"][0]["patient"], "p-007");
    // Re-sent: a no-op.
    let (status, resp) = post(single, bearer.clone()).await;
    assert!(status.contains("200"), "{status} {resp}");
    assert!(resp.contains("\"duplicates\":2"), "{resp}");

    // A batch of the other types, key in X-Api-Key: glucose (mmol/L), weight (pounds), pulse
    // oximetry with its pulse; the control-solution test is kept out of the readings.
    let batch = sample("smartmeter-batch.json", at);
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/smartmeter",
        &batch,
        &[("X-Api-Key", key.as_str())],
    )
    .await
    .unwrap();
    assert!(status.contains("201"), "{status} {resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["stored"], 4, "{resp}");
    assert_eq!(v["skipped"][0], "smartmeter blood_glucose qa", "{resp}");
    let (status, resp) = https_post_raw(
        &server,
        "/api/v1/vendors/smartmeter",
        &batch,
        &[("X-Api-Key", key.as_str())],
    )
    .await
    .unwrap();
    assert!(
        status.contains("200") && resp.contains("\"duplicates\":4"),
        "{status} {resp}"
    );

    // Refusals, each writing nothing: a wrong key (401); another user of the shared oximeter,
    // not enrolled (404 naming the device); a reading whose day cannot be known (400 naming the
    // field); an impossible value (422).
    let later = at + chrono::Duration::minutes(2);
    let (status, _) = post(
        sample("smartmeter-bp.json", later),
        "Bearer wrong".to_string(),
    )
    .await;
    assert!(status.contains("401"), "{status}");
    let items: Vec<serde_json::Value> =
        serde_json::from_str(&sample("smartmeter-batch.json", later)).unwrap();
    for (i, change, expect, needle) in [
        (
            3,
            ("device_user", serde_json::json!(3)),
            "404",
            "015732004459807/3",
        ),
        (
            2,
            ("time_zone_offset", serde_json::Value::Null),
            "400",
            "[2]: field time_zone_offset",
        ),
        (
            0,
            ("blood_glucose_mmol", serde_json::json!(300)),
            "422",
            "field value: 300 mmol/L",
        ),
    ] {
        let mut bad = items.clone();
        bad[i][change.0] = change.1;
        let (status, resp) = post(serde_json::to_string(&bad).unwrap(), bearer.clone()).await;
        assert!(
            status.contains(expect) && resp.contains(needle),
            "{needle}: {status} {resp}"
        );
    }

    // What the tablet sees: six readings, in the model's units, on the right patients, at the
    // instant the device's local time and offset give.
    let readings = synced_readings(&mut t, &server, before, 6).await;
    let of = |device: &str, kind: ReadingKind| reading_of(&readings, device, kind, None);
    let bp = of("015732004417215", ReadingKind::BloodPressure);
    assert_eq!((bp.systolic, bp.diastolic), (Some(147.0), Some(89.0)));
    assert_eq!((bp.unit.as_str(), bp.patient.as_str()), ("mm[Hg]", "p-007"));
    assert_eq!(bp.measured_at.with_timezone(&Utc), at);
    assert_eq!(bp.source, ReadingSource::Device);
    let pulse = of("015732004417215", ReadingKind::HeartRate);
    assert_eq!((pulse.value, pulse.unit.as_str()), (Some(74.0), "/min"));
    let glucose = of("015732004431208", ReadingKind::Glucose);
    assert_eq!(
        (glucose.value, glucose.unit.as_str()),
        (Some(7.4), "mmol/L")
    );
    assert_eq!(glucose.patient, "p-008");
    let weight = of("015732004445513", ReadingKind::Weight);
    assert_eq!(
        (weight.value, weight.unit.as_str()),
        (Some(182.4), "[lb_av]")
    );
    assert_eq!(weight.patient, "p-009");
    let ox = of("015732004459807/2", ReadingKind::Spo2);
    assert_eq!(
        (ox.value, ox.unit.as_str(), ox.patient.as_str()),
        (Some(95.0), "%", "p-017")
    );
    assert_eq!(
        of("015732004459807/2", ReadingKind::HeartRate).value,
        Some(81.0)
    );
    assert!(
        !readings
            .iter()
            .any(|r| r.kind == ReadingKind::Glucose && r.value == Some(101.0)),
        "the control test is not a reading"
    );

    // Audited: the control test with its device, and the refusals.
    let audit = audit(&store, &base);
    assert!(
        audit.contains("smartmeter blood_glucose qa=true device 015732004431208"),
        "{audit}"
    );
    assert!(audit.contains("015732004459807/3"), "{audit}");
    assert!(
        audit.contains("smartmeter post: a valid integration API key is required"),
        "the wrong key is audited: {audit}"
    );
}
