//! `rounds.toml`, environment variables and `rounds config check`: a flag beats its environment
//! variable, which beats the file, which beats the default; secrets come from files or the
//! environment and are never printed; bad settings are refused naming the key; a server started
//! from a config file and the environment alone serves with those settings.

use std::process::Command;

use rounds_tests::rounds_bin;

fn rounds(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(rounds_bin().unwrap());
    c.current_dir(dir).args(args);
    // Nothing of the test runner's environment leaks in.
    for (k, _) in std::env::vars() {
        if k.starts_with("ROUNDS_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn config_file_environment_and_flags_layer_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("hook-key"), "hook-key-from-a-file-0123\n").unwrap();
    std::fs::write(
        d.join("notify.toml"),
        "[webhook]\nurl = \"https://oncall.example.org/rounds\"\nsecret = { file = \"hook-key\" }\n\n\
         [email]\nsmtp_host = \"smtp.example.org\"\nfrom = \"r@example.org\"\nto = [\"o@example.org\"]\n\
         username = \"rounds\"\npassword = { env = \"SMTP_PASSWORD\" }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("push.toml"),
        "[fhir]\nbase_url = \"https://ehr.example.org/fhir\"\ntoken = { env = \"FHIR_TOKEN\" }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("rounds.toml"),
        "listen = \"127.0.0.1:9443\"\nmax_frame = 1000\nmax-body-bytes = 4096\n\
         trusted_proxy = [\"10.0.0.1\", \"10.0.0.2\"]\nno_query_tokens = true\n\
         notify = \"notify.toml\"\npush = \"push.toml\"\n",
    )
    .unwrap();
    let env = [
        ("ROUNDS_CONFIG", "rounds.toml"),
        ("ROUNDS_MAX_FRAME", "2000"),
        ("ROUNDS_SIGN_INS_PER_MINUTE", "7"),
        ("ROUNDS_DEV_TOKEN", "dev-token-never-shown"),
        ("SMTP_PASSWORD", "smtp-password-never-shown"),
        ("FHIR_TOKEN", "fhir-token-never-shown"),
    ];
    let (ok, out, err) = rounds(d, &["config", "check", "--max-body-bytes", "8192"], &env);
    assert!(ok, "{err}");
    // Flag > environment > file > default.
    assert!(out.contains("max_body_bytes = 8192"), "{out}");
    assert!(out.contains("max_frame = 2000"), "{out}");
    assert!(out.contains("sign_ins_per_minute = 7.0"), "{out}");
    assert!(out.contains("listen = \"127.0.0.1:9443\""), "{out}");
    assert!(
        out.contains("trusted_proxies = [\"10.0.0.1\", \"10.0.0.2\"]"),
        "{out}"
    );
    assert!(out.contains("no_query_tokens = true"), "{out}");
    assert!(out.contains("max_connections = 4096"), "a default: {out}");
    // Secrets: resolved (the file and variables exist), shown only as where they came from.
    for secret in [
        "hook-key-from-a-file",
        "smtp-password-never-shown",
        "fhir-token-never-shown",
        "dev-token-never-shown",
    ] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(out.contains("<redacted, file hook-key>"), "{out}");
    assert!(out.contains("<redacted, env SMTP_PASSWORD>"), "{out}");
    assert!(out.contains("<redacted, env FHIR_TOKEN>"), "{out}");
    // The printed settings are themselves a valid config file.
    let effective: String = out
        .lines()
        .take_while(|l| !l.starts_with('['))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(d.join("effective.toml"), effective).unwrap();
    let (ok, _, err) = rounds(
        d,
        &["config", "check", "--config", "effective.toml"],
        &env[3..],
    );
    assert!(ok, "{err}");

    // A missing secret, an unknown key, a bad value: refused, naming what is wrong.
    let (ok, _, err) = rounds(d, &["config", "check"], &env[..5]);
    assert!(!ok);
    assert!(err.contains("FHIR_TOKEN"), "{err}");
    std::fs::write(d.join("bad.toml"), "max_frames = 10\n").unwrap();
    let (ok, _, err) = rounds(d, &["config", "check", "--config", "bad.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("bad.toml: max_frames: not a setting"), "{err}");
    std::fs::write(d.join("bad.toml"), "max_frame = \"lots\"\n").unwrap();
    let (ok, _, err) = rounds(d, &["config", "check", "--config", "bad.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("--max-frame"), "{err}");
    let (ok, _, err) = rounds(
        d,
        &["config", "check"],
        &[("ROUNDS_LISTEN", "not-an-address")],
    );
    assert!(!ok);
    assert!(err.contains("--listen"), "{err}");
}

/// `rounds serve` with nothing on its command line: the store, address and limits from the
/// environment and the config file.
#[test]
fn serve_takes_its_settings_from_the_environment_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        d.join("rounds.toml"),
        format!("listen = \"127.0.0.1:{port}\"\ninsecure_http = true\n"),
    )
    .unwrap();
    let mut c = Command::new(rounds_bin().unwrap());
    c.current_dir(d)
        .arg("serve")
        .env("ROUNDS_CONFIG", "rounds.toml")
        .env("ROUNDS_STORE", "store-from-env")
        .env("ROUNDS_MAX_BODY_BYTES", "100")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let line = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("listening on")))
        .unwrap()
        .unwrap();
    assert!(line.contains(&format!("http://127.0.0.1:{port}")), "{line}");
    assert!(line.contains("store-from-env"), "{line}");
    assert!(d.join("store-from-env").is_dir());
    // A body over ROUNDS_MAX_BODY_BYTES is refused with 413.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = "x".repeat(1000);
    write!(
        s,
        "POST /api/v1/readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let _ = child.kill();
    let _ = child.wait();
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
}
