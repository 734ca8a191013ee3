//! The mobile bindings for real: the generated Python and Kotlin (on the JVM) run the tablet flow
//! against a running `rounds serve`, and the server has their entries. `scripts/bindings`
//! (run by `scripts/test`) generates the bindings; `scripts/test` installs kotlinc and JNA.

use std::path::PathBuf;
use std::process::Command;

use rounds_core::Replica;
use rounds_tests::{ServerProcess, repo_root, rounds_bin, sync_with};

fn bindings() -> PathBuf {
    let dir = std::env::var("ROUNDS_BINDINGS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .and_then(|p| p.parent())
                .and_then(|p| p.parent())
                .unwrap()
                .join("bindings")
        });
    assert!(
        dir.join("python/rounds_mobile.py").exists(),
        "no generated bindings in {}: run scripts/bindings",
        dir.display()
    );
    dir
}

fn server_with_device() -> (tempfile::TempDir, ServerProcess, String) {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(rounds_bin().unwrap())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&[
        "import",
        "--store",
        s,
        repo_root()
            .join("examples/sunnyvale.json")
            .to_str()
            .unwrap(),
    ]);
    let added: serde_json::Value = serde_json::from_str(&run(&[
        "device",
        "add",
        "--facility",
        "sunnyvale",
        "--name",
        "tablet",
        "--store",
        s,
    ]))
    .unwrap();
    let server = ServerProcess::start(store.path()).unwrap();
    (store, server, added["token"].as_str().unwrap().to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The entry ids a fresh replica gets from the server.
async fn on_server(server: &ServerProcess) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(dir.path()).unwrap();
    r.join_facility("sunnyvale").unwrap();
    sync_with(&mut r, server).await.unwrap();
    let (data, _) = r.export().unwrap();
    data.interactions
        .iter()
        .map(|i| i.id.to_string())
        .chain(data.readings.iter().map(|x| x.id.to_string()))
        .collect()
}

/// Run a flow process to its end: when it prints `MIDSYNC` (a sync under way, waiting), the
/// server is stopped and restarted on its port and the flow told (`CONTROL/resumed`). Returns
/// the flow's stdout lines and the server now running.
fn run_flow(
    mut command: Command,
    store: &std::path::Path,
    mut server: ServerProcess,
    control: &std::path::Path,
) -> (Vec<String>, ServerProcess) {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut restarted = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line == "MIDSYNC" {
            let port = server.port;
            let status = server.stop().unwrap();
            assert!(status.success(), "{status:?}");
            server = ServerProcess::start_on_port(store, port).unwrap();
            std::fs::write(control.join("resumed"), b"").unwrap();
            restarted = true;
        }
        lines.push(line);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        lines.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(restarted, "the flow never reported a sync under way");
    (lines, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_flow_reaches_the_server() {
    let b = bindings();
    let (store, server, token) = server_with_device();
    let replica = tempfile::tempdir().unwrap();
    let control = tempfile::tempdir().unwrap();
    let mut command = Command::new("python3");
    command
        .arg(repo_root().join("tests/mobile/flow.py"))
        .arg(b.join("python"))
        .args([&server.url(), &token, &hex(&server.fingerprint)])
        .arg(replica.path())
        .arg(control.path());
    let (lines, server) = run_flow(command, store.path(), server, control.path());
    let ids: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let held = on_server(&server).await;
    assert!(held.contains(&ids["interaction"].as_str().unwrap().to_string()));
    assert!(held.contains(&ids["reading"].as_str().unwrap().to_string()));
    assert!(held.contains(&ids["earlier"].as_str().unwrap().to_string()));
    // Written during a sync and around the server's restart: all there.
    let entries = ids["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 15, "{ids}");
    for id in entries {
        assert!(
            held.contains(&id.as_str().unwrap().to_string()),
            "{id} lost"
        );
    }
    // The reading keeps the time the device measured it; the consent reached the server.
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(dir.path()).unwrap();
    r.join_facility("sunnyvale").unwrap();
    sync_with(&mut r, &server).await.unwrap();
    let (data, _) = r.export().unwrap();
    let earlier = data
        .readings
        .iter()
        .find(|x| x.id.to_string() == ids["earlier"].as_str().unwrap())
        .unwrap();
    let age = chrono::Utc::now() - earlier.measured_at.with_timezone(&chrono::Utc);
    assert!(
        age > chrono::Duration::minutes(55) && age < chrono::Duration::minutes(70),
        "measured {age:?} ago"
    );
    let p012 = data.patients.iter().find(|p| p.id == "p-012").unwrap();
    assert!(
        p012.consents
            .iter()
            .any(|c| c.method.as_deref() == Some("written")
                && c.document.as_deref() == Some("scan://consents/p-012-ccm.pdf")),
        "{:?}",
        p012.consents
    );
}

/// A one-time enrolment code for sunnyvale from the running server.
fn enrolment_code(store: &std::path::Path, server: &ServerProcess) -> String {
    let out = Command::new(rounds_bin().unwrap())
        .args(["device", "code", "--facility", "sunnyvale", "--store"])
        .arg(store)
        .args(["--server", &format!("https://127.0.0.1:{}", server.port)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    code["code"].as_str().unwrap().to_string()
}

/// The Kotlin flow on the JVM with coroutines (tests/mobile/Main.kt): enrol by code, write from
/// one coroutine while another syncs, observe the callbacks, and survive the server's restart
/// in the middle of a sync — every entry it wrote reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kotlin_flow_on_the_jvm_reaches_the_server() {
    let b = bindings();
    let kt_home = std::env::var("ROUNDS_KOTLIN_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/rounds-kotlin/node_modules/kotlin-compiler")
        });
    let kotlinc = kt_home.join("bin/kotlinc");
    assert!(
        kotlinc.exists(),
        "kotlinc missing at {} (scripts/test installs it)",
        kotlinc.display()
    );
    let jna = PathBuf::from("/usr/share/java/jna.jar");
    assert!(
        jna.exists(),
        "JNA missing (apt-get install libjna-java; scripts/test does)"
    );
    let lib = kt_home.join("lib");
    let coroutines = lib.join("kotlinx-coroutines-core-jvm.jar");
    assert!(coroutines.exists(), "{} missing", coroutines.display());
    let work = tempfile::tempdir().unwrap();
    let jar = work.path().join("flow.jar");
    let generated = b.join("kotlin/uniffi/rounds_mobile/rounds_mobile.kt");
    let cp = format!("{}:{}", jna.display(), coroutines.display());
    let compile = Command::new(&kotlinc)
        .arg(&generated)
        .arg(repo_root().join("tests/mobile/Main.kt"))
        .arg(repo_root().join("tests/mobile/RoundsPlatform.kt"))
        .args(["-cp", &cp, "-d"])
        .arg(&jar)
        .output()
        .unwrap();
    assert!(
        compile.status.success(),
        "kotlinc: {}",
        String::from_utf8_lossy(&compile.stderr)
    );

    let (store, server, _token) = server_with_device();
    let code = enrolment_code(store.path(), &server);
    let replica = tempfile::tempdir().unwrap();
    let control = tempfile::tempdir().unwrap();
    let run_cp = format!(
        "{}:{cp}:{}",
        jar.display(),
        lib.join("kotlin-stdlib.jar").display()
    );
    let libdir = b.join("python");
    let mut command = Command::new("java");
    command
        .arg(format!("-Djna.library.path={}", libdir.display()))
        .args([
            "-cp",
            &run_cp,
            "MainKt",
            &format!("https://127.0.0.1:{}", server.port),
            &server.url(),
            &code,
            &hex(&server.fingerprint),
        ])
        .arg(replica.path())
        .arg(control.path());
    let (lines, server) = run_flow(command, store.path(), server, control.path());
    let ids: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let written: Vec<String> = ids["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // 20 readings during the first sync, the time entry, 5 readings around the restart.
    assert_eq!(written.len(), 26, "{written:?}");
    let held = on_server(&server).await;
    let missing: Vec<&String> = written.iter().filter(|id| !held.contains(id)).collect();
    assert!(missing.is_empty(), "not on the server: {missing:?}");
}

#[test]
fn swift_sources_have_the_public_api() {
    let swift = std::fs::read_to_string(bindings().join("swift/rounds_mobile.swift")).unwrap();
    for needle in [
        "open class RoundsReplica",
        "public static func `open`(dir: String, key: Data)throws  -> RoundsReplica",
        "func startTimer(patient: String, staff: String, program: Program) throws  -> Timer",
        "func stopTimer(timerId: String, interactive: Bool, note: String?) throws  -> Interaction",
        "func recordReading(reading: ReadingInput) throws  -> String",
        "func sync(url: String, token: String, fingerprint: String, progress: SyncProgress?) async throws  -> SyncResult",
        "func enrol(server: String, code: String, deviceName: String, fingerprint: String, store: TokenStore) async throws  -> Enrolled",
        "enum ReadingSource",
        "enum StayKind",
        "enum TriageOutcome",
        "case Invalid(entry: String, field: String, detail: String",
        "public var startedAt: Date",
        "func cancelSync()",
        "func worklist(asOf: String) throws  -> [WorklistItem]",
        "public protocol SyncProgress",
        "enum RoundsError: Swift.Error",
        "enum AlertSeverity",
        "enum AlertStatus",
        "enum SyncState",
        "protocol ChangeObserver",
        "protocol TokenStore",
        "func setObserver(observer: ChangeObserver?)",
        "func recordConsent(consent: ConsentInput) throws  -> String",
        "public struct WorklistItem",
    ] {
        assert!(swift.contains(needle), "generated Swift lacks {needle:?}");
    }
    let header = std::fs::read_to_string(bindings().join("swift/rounds_mobileFFI.h")).unwrap();
    assert!(header.contains("uniffi_rounds_mobile_fn_method_roundsreplica_sync"));
}

/// Enrolment by code through the bindings: the token goes to the app's store, the code is
/// single use, and the token syncs the facility.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_enrols_with_a_one_time_code() {
    let b = bindings();
    let (store, server, _token) = server_with_device();
    let code = enrolment_code(store.path(), &server);
    let replica = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/mobile/enrol.py"))
        .arg(b.join("python"))
        .args([
            &format!("https://127.0.0.1:{}", server.port),
            &server.url(),
            &code,
            &hex(&server.fingerprint),
        ])
        .arg(replica.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(v["facility"], "sunnyvale");
    assert_eq!(v["patients"], 20);
}

/// The Android and iOS packaging scripts: what this machine cannot build (no NDK, no Xcode) is
/// refused with what is missing, before anything is built or written.
#[test]
fn packaging_scripts_name_what_they_need() {
    for (script, needle) in [
        ("scripts/package-android", "ANDROID_NDK_HOME"),
        ("scripts/package-ios", "Xcode"),
    ] {
        let path = repo_root().join(script);
        let syntax = Command::new("bash").arg("-n").arg(&path).status().unwrap();
        assert!(syntax.success(), "{script}: not valid bash");
        let out_dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(&path)
            .arg(out_dir.path().join("out"))
            .env_remove("ANDROID_NDK_HOME")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{script}: {stderr}");
        assert!(stderr.contains(needle), "{script}: {stderr}");
        assert!(
            !out_dir.path().join("out").exists(),
            "{script} wrote before refusing"
        );
    }
}
