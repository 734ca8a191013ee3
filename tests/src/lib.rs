//! rounds-tests: end-to-end scenarios across the Rounds crates, plus small helpers they share.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use rounds_core::{DataFile, DocumentId, Replica, parse_data_file};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `examples/sunnyvale.json`, parsed.
pub fn sunnyvale() -> anyhow::Result<DataFile> {
    let text = std::fs::read_to_string(repo_root().join("examples/sunnyvale.json"))?;
    parse_data_file(&text).map_err(|p| anyhow::anyhow!("{p}"))
}

/// Exchange sync messages for one document until both sides are quiet. Returns messages sent.
pub fn sync_doc(
    a: &mut Replica,
    a_name: &str,
    b: &mut Replica,
    b_name: &str,
    doc: DocumentId,
) -> anyhow::Result<usize> {
    let mut sent = 0;
    for _ in 0..100 {
        let mut quiet = true;
        if let Some(m) = a.generate_sync_message(doc, b_name) {
            b.receive_sync_message(doc, a_name, &m)?;
            sent += 1;
            quiet = false;
        }
        if let Some(m) = b.generate_sync_message(doc, a_name) {
            a.receive_sync_message(doc, b_name, &m)?;
            sent += 1;
            quiet = false;
        }
        if quiet {
            return Ok(sent);
        }
    }
    anyhow::bail!("sync of {doc} did not converge in 100 rounds")
}

/// Sync every document either replica holds.
pub fn sync_all(
    a: &mut Replica,
    a_name: &str,
    b: &mut Replica,
    b_name: &str,
) -> anyhow::Result<usize> {
    let mut ids = a.document_ids();
    ids.extend(b.document_ids());
    ids.sort();
    ids.dedup();
    let mut sent = 0;
    for id in ids {
        sent += sync_doc(a, a_name, b, b_name, id)?;
    }
    Ok(sent)
}

/// A `rounds serve` child process on 127.0.0.1 with a fresh port.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
    /// SHA-256 of the server certificate.
    pub fingerprint: [u8; 32],
    pub store: PathBuf,
}

/// The development token the test servers accept.
pub const DEV_TOKEN: &str = "test-token";

/// The `rounds` binary, built on demand when `cargo test` did not build it.
pub fn rounds_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let here = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no target directory"))?;
    // Test executables live in <profile>/deps, binaries in <profile>.
    let dir = if here.ends_with("deps") {
        here.parent().unwrap_or(here)
    } else {
        here
    };
    let bin = dir.join("rounds");
    if !bin.exists() {
        let mut args = vec!["build", "-p", "rounds-server", "--bin", "rounds"];
        if dir.ends_with("release") {
            args.push("--release");
        }
        let status = std::process::Command::new(env!("CARGO"))
            .args(&args)
            .current_dir(repo_root())
            .status()?;
        anyhow::ensure!(status.success(), "building rounds failed");
    }
    Ok(bin)
}

impl ServerProcess {
    /// Start a server on `store` (TLS with a generated certificate) and wait until it listens.
    pub fn start(store: &Path) -> anyhow::Result<ServerProcess> {
        Self::start_with(store, &[])
    }

    pub fn start_with(store: &Path, extra: &[&str]) -> anyhow::Result<ServerProcess> {
        Self::start_inner(store, extra, None)
    }

    /// Start on a given port (a restart that the devices find where they left it).
    pub fn start_on_port(store: &Path, port: u16) -> anyhow::Result<ServerProcess> {
        Self::start_listening(store, &format!("127.0.0.1:{port}"), &[], None)
    }

    /// Like `start_with`, with the server's log (`ROUNDS_LOG=debug`, stderr) written to `log`.
    pub fn start_logged(store: &Path, extra: &[&str], log: &Path) -> anyhow::Result<ServerProcess> {
        Self::start_inner(store, extra, Some(log))
    }

    fn start_inner(
        store: &Path,
        extra: &[&str],
        log: Option<&Path>,
    ) -> anyhow::Result<ServerProcess> {
        Self::start_listening(store, "127.0.0.1:0", extra, log)
    }

    fn start_listening(
        store: &Path,
        listen: &str,
        extra: &[&str],
        log: Option<&Path>,
    ) -> anyhow::Result<ServerProcess> {
        use std::io::BufRead;
        let stderr = match log {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path)?),
            None => std::process::Stdio::inherit(),
        };
        let mut command = std::process::Command::new(rounds_bin()?);
        if log.is_some() {
            command.env("ROUNDS_LOG", "debug");
        }
        let mut child = command
            .args([
                "serve",
                "--listen",
                listen,
                "--dev-token",
                DEV_TOKEN,
                "--store",
            ])
            .arg(store)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut fingerprint = None;
        let port = loop {
            let line = lines
                .next()
                .ok_or_else(|| anyhow::anyhow!("server exited before listening"))??;
            if let Some(hex) = line.split("sha256 ").nth(1) {
                let bytes: Vec<u8> = (0..hex.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                    .collect();
                fingerprint = Some(
                    <[u8; 32]>::try_from(bytes).map_err(|_| anyhow::anyhow!("bad fingerprint"))?,
                );
            }
            if let Some(rest) = line.split("127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                break digits.parse::<u16>()?;
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(ServerProcess {
            child,
            port,
            fingerprint: fingerprint.unwrap_or([0; 32]),
            store: store.to_path_buf(),
        })
    }

    /// The admin credential the server created in its store.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.store.join("admin-token"))?
            .trim()
            .to_string())
    }

    pub fn url(&self) -> String {
        format!("wss://127.0.0.1:{}/sync", self.port)
    }

    pub fn options(&self) -> rounds_core::sync::net::SyncOptions {
        let mut o = rounds_core::sync::net::SyncOptions::new(
            DEV_TOKEN,
            rounds_core::sync::net::Trust::Fingerprint(self.fingerprint),
        );
        o.idle_timeout = std::time::Duration::from_secs(10);
        o.backoff = std::time::Duration::from_millis(50);
        o
    }

    /// The server process's peak resident memory (VmHWM) in KiB; 0 when unknown.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        Ok(self.child.wait()?)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sync a replica with a server (retries included), panicking with the error on failure.
pub async fn sync_with(
    replica: &mut Replica,
    server: &ServerProcess,
) -> anyhow::Result<rounds_core::sync::net::SyncReport> {
    let opts = server.options();
    rounds_core::sync::net::sync(replica, &server.url(), &opts, &mut |_, _| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Sorted ids of every interaction and reading a replica exports.
pub fn entry_ids(replica: &Replica) -> anyhow::Result<Vec<String>> {
    let (data, problems) = replica.export().map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(problems.is_empty(), "{problems:?}");
    let mut ids: Vec<String> = data.interactions.iter().map(|i| i.id.to_string()).collect();
    ids.extend(data.readings.iter().map(|r| r.id.to_string()));
    ids.extend(data.timers.iter().map(|t| t.id.to_string()));
    ids.sort();
    Ok(ids)
}

/// A TLS client config that trusts exactly the server's certificate fingerprint.
pub fn tls_client(server: &ServerProcess) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let cfg = rounds_core::sync::net::client_config(&rounds_core::sync::net::Trust::Fingerprint(
        server.fingerprint,
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(std::sync::Arc::new(cfg))
}

/// A plain HTTP/1.1 GET over TLS to the server; returns (status line, body).
pub async fn https_get(server: &ServerProcess, path: &str) -> anyhow::Result<(String, String)> {
    https_request(server, "GET", path, None, None).await
}

/// A plain HTTP/1.1 request over TLS with an optional JSON body and bearer token.
pub async fn https_request(
    server: &ServerProcess,
    method: &str,
    path: &str,
    json: Option<&serde_json::Value>,
    token: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let body = json.map(|j| j.to_string()).unwrap_or_default();
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if json.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    https_raw(server, method, path, &body, &headers).await
}

/// POST `body` (sent as is, as JSON) to `path` with extra `headers`, as a device vendor's cloud
/// would; returns the status line and the body.
pub async fn https_post_raw(
    server: &ServerProcess,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(String, String)> {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    https_raw(server, "POST", path, body, &all).await
}

/// One HTTPS request with exactly these headers (besides Host, Connection and Content-Length);
/// returns the status line and the body.
async fn https_raw(
    server: &ServerProcess,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?;
    let connector = tokio_rustls::TlsConnector::from(tls_client(server)?);
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body.as_bytes()).await?;
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A TCP connection to the server from the loopback address `source` (any 127.x.y.z works on
/// Linux), to act as different clients.
pub async fn tcp_from(
    server: &ServerProcess,
    source: std::net::Ipv4Addr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((source, 0)))?;
    socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], server.port)))
        .await
}

/// A TLS connection to the server from the loopback address `source`.
pub async fn tls_from(
    server: &ServerProcess,
    source: std::net::Ipv4Addr,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tcp_from(server, source).await?;
    let connector = tokio_rustls::TlsConnector::from(tls_client(server)?);
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(connector.connect(name, tcp).await?)
}

/// One HTTP/1.1 exchange over TLS: the raw request head (without the blank line) and body;
/// returns (status code, response headers lower-cased, body).
pub async fn https_exchange(
    server: &ServerProcess,
    head: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<(String, String)>, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?;
    let connector = tokio_rustls::TlsConnector::from(tls_client(server)?);
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    let request = format!(
        "{head}\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(request.as_bytes()).await?;
    tls.write_all(body).await?;
    tls.flush().await?;
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// Sign in to the web console as a browser would (the form's CSRF cookie and field, then the
/// POST); returns the status of the POST and its body.
pub async fn console_sign_in(
    server: &ServerProcess,
    username: &str,
    password: &str,
) -> anyhow::Result<(u16, String)> {
    let (status, _, body) = console_session(server, username, password).await?;
    Ok((status, body))
}

/// Like `console_sign_in`; also returns the session cookie (`rounds_session=…`) when signed in.
pub async fn console_session(
    server: &ServerProcess,
    username: &str,
    password: &str,
) -> anyhow::Result<(u16, Option<String>, String)> {
    let (_, headers, form) = https_exchange(server, "GET /console/login HTTP/1.1", b"").await?;
    let cookie = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .and_then(|(_, v)| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no sign-in cookie"))?
        .to_string();
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or_else(|| anyhow::anyhow!("no CSRF field in the sign-in form"))?;
    let body = format!(
        "csrf={}&username={}&password={}",
        urlencode(csrf),
        urlencode(username),
        urlencode(password)
    );
    let head = format!(
        "POST /console/login HTTP/1.1\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded"
    );
    let (status, headers, body) = https_exchange(server, &head, body.as_bytes()).await?;
    let session = headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .find(|c| c.starts_with("rounds_session=") && c.len() > "rounds_session=".len())
        .map(str::to_string);
    Ok((status, session, body))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of one unlabelled metric from `/metrics`; 0 when absent.
pub async fn metric(server: &ServerProcess, name: &str) -> anyhow::Result<f64> {
    let (_, _, text) = https_exchange(server, "GET /metrics HTTP/1.1", b"").await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0.0))
}

/// Add a console user with the `rounds user add` command (the password on stdin).
pub fn add_console_user(
    store: &Path,
    username: &str,
    role: &str,
    facilities: &[&str],
    password: &str,
) -> anyhow::Result<()> {
    let scope: Vec<&str> = facilities.iter().flat_map(|f| ["--facility", f]).collect();
    add_console_user_scoped(store, username, role, &scope, password)
}

/// `rounds user add` with its scope as arguments (`--facility F`, `--practice P`).
pub fn add_console_user_scoped(
    store: &Path,
    username: &str,
    role: &str,
    scope: &[&str],
    password: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut cmd = std::process::Command::new(rounds_bin()?);
    cmd.args(["user", "add", "--username", username, "--role", role]);
    cmd.args(scope);
    let mut child = cmd
        .arg("--store")
        .arg(store)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}")?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "rounds user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The server process's current resident memory (VmRSS) in KiB; 0 when unknown.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A TCP proxy on 127.0.0.1 that forwards to `port`; the first `cut` connections are cut after
/// `after` bytes (both directions together). Returns the proxy's port.
pub async fn cutting_proxy(port: u16, after: usize, cut: usize) -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_port = listener.local_addr()?.port();
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let limit = if n < cut { after } else { usize::MAX };
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let _ = pipe(client, server, limit).await;
            });
        }
    });
    Ok(proxy_port)
}

async fn pipe(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    limit: usize,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut total = 0usize;
    let mut a = [0u8; 4096];
    let mut b = [0u8; 4096];
    loop {
        tokio::select! {
            n = cr.read(&mut a) => {
                let n = n?;
                if n == 0 { return Ok(()); }
                let allowed = n.min(limit.saturating_sub(total));
                sw.write_all(&a[..allowed]).await?;
                total += n;
            }
            n = sr.read(&mut b) => {
                let n = n?;
                if n == 0 { return Ok(()); }
                let allowed = n.min(limit.saturating_sub(total));
                cw.write_all(&b[..allowed]).await?;
                total += n;
            }
        }
        if total >= limit {
            // Cut: drop both sides mid-stream.
            return Ok(());
        }
    }
}

/// Run `rounds ARGS…`, panicking with its stderr on failure; returns stdout.
pub fn rounds_cli(args: &[&str]) -> String {
    let out = rounds_cli_output(args);
    assert!(
        out.status.success(),
        "rounds {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Read one MLLP frame from a test listener's connection: the message without its framing (None
/// when the peer closes first).
pub async fn read_mllp<S: tokio::io::AsyncRead + Unpin>(sock: &mut S) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while !buf.windows(2).any(|w| w == [0x1c, 0x0d]) {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(m) => buf.extend_from_slice(&chunk[..m]),
        }
    }
    Some(
        String::from_utf8_lossy(&buf)
            .trim_matches(|c| c == '\u{b}' || c == '\u{1c}' || c == '\r')
            .to_string(),
    )
}

/// Copy a directory tree (a stopped server's store: a "restored backup" in the tests).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// Run the `rounds` binary and return its whole output, whatever its status.
pub fn rounds_cli_output(args: &[&str]) -> std::process::Output {
    std::process::Command::new(rounds_bin().expect("rounds binary"))
        .args(args)
        .output()
        .expect("run rounds")
}

/// A process's peak resident memory (VmHWM) in KiB; 0 when unknown.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A raw automerge-repo client over TLS, for tests that speak the protocol frame by frame (a
/// hostile client, denied documents, revocation).
pub mod raw {
    use futures_util::{SinkExt, StreamExt};
    use rounds_core::sync::wire::{Message, PeerMetadata};
    use tokio_tungstenite::tungstenite::Message as Ws;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::{ServerProcess, tls_client};

    pub type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// The `/sync` upgrade request with a bearer token.
    fn upgrade_request(
        server: &ServerProcess,
        token: &str,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, String> {
        let mut req = server
            .url()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|_| "bad token".to_string())?,
        );
        Ok(req)
    }

    /// Open `/sync` with a bearer token (frames up to 64 MiB either way).
    pub async fn connect(server: &ServerProcess, token: &str) -> Result<Socket, String> {
        let req = upgrade_request(server, token)?;
        let connector =
            tokio_tungstenite::Connector::Rustls(tls_client(server).map_err(|e| e.to_string())?);
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        tokio_tungstenite::connect_async_tls_with_config(req, Some(config), false, Some(connector))
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| e.to_string())
    }

    /// Open `/sync?token=…` the way a browser WebSocket client must (no header).
    pub async fn connect_with_query_token(
        server: &ServerProcess,
        token: &str,
    ) -> Result<Socket, String> {
        let req = format!("{}?token={token}", server.url())
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let connector =
            tokio_tungstenite::Connector::Rustls(tls_client(server).map_err(|e| e.to_string())?);
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| e.to_string())
    }

    /// Open `/sync` over a socket whose receive buffer is tiny: a peer that reads slowly
    /// (or not at all) fills the server's queue for it quickly.
    pub async fn connect_slow_reader(
        server: &ServerProcess,
        token: &str,
    ) -> Result<Socket, String> {
        let req = upgrade_request(server, token)?;
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .set_recv_buffer_size(4096)
            .map_err(|e| e.to_string())?;
        let tcp = socket
            .connect(([127, 0, 0, 1], server.port).into())
            .await
            .map_err(|e| e.to_string())?;
        let connector =
            tokio_tungstenite::Connector::Rustls(tls_client(server).map_err(|e| e.to_string())?);
        tokio_tungstenite::client_async_tls_with_config(req, tcp, None, Some(connector))
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| e.to_string())
    }

    /// The next protocol message; None on close, error or 10 s of silence.
    pub async fn next_message(ws: &mut Socket) -> Option<Message> {
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .ok()??
            {
                Ok(Ws::Binary(b)) => return Message::decode(&b).ok(),
                Ok(Ws::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Send a protocol message.
    pub async fn send(ws: &mut Socket, m: Message) {
        ws.send(Ws::Binary(m.encode().into()))
            .await
            .expect("send a frame");
    }

    /// Join as `me` and return the server's peer id.
    pub async fn join(ws: &mut Socket, me: &str) -> String {
        send(
            ws,
            Message::Join {
                sender_id: me.into(),
                peer_metadata: PeerMetadata::default(),
                supported_protocol_versions: vec!["1".into()],
            },
        )
        .await;
        match next_message(ws).await {
            Some(Message::Peer { sender_id, .. }) => sender_id,
            other => panic!("expected peer, got {other:?}"),
        }
    }
}

/// PostgreSQL for the tests: a fresh database per test on the throwaway cluster `scripts/test`
/// starts (`ROUNDS_TEST_POSTGRES`), dropped when the test ends.
pub mod pg {
    use std::sync::atomic::{AtomicU32, Ordering};

    /// One test's database.
    pub struct TestDatabase {
        pub url: String,
        admin: String,
        name: String,
    }

    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// The cluster's URL (`ROUNDS_TEST_POSTGRES`), or a clear failure saying how to get one.
    pub fn cluster() -> String {
        std::env::var("ROUNDS_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!(
                "ROUNDS_TEST_POSTGRES is not set: run the tests with scripts/test, or start a \
                 cluster with `scripts/test-postgres start DIR` and export the URL it prints"
            )
        })
    }

    /// The CA of the certificate the cluster offers (`ROUNDS_TEST_POSTGRES_CA`, set by
    /// `scripts/test`: `DIR/tls/ca.pem` of `scripts/test-postgres start DIR`).
    pub fn cluster_ca() -> String {
        std::env::var("ROUNDS_TEST_POSTGRES_CA").unwrap_or_else(|_| {
            panic!(
                "ROUNDS_TEST_POSTGRES_CA is not set: run the tests with scripts/test, or export                  DIR/tls/ca.pem of `scripts/test-postgres start DIR`"
            )
        })
    }

    /// Run blocking client work on its own thread (the driver refuses to run inside a test's
    /// tokio runtime).
    fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    impl TestDatabase {
        /// Create an empty database.
        pub fn create() -> TestDatabase {
            TestDatabase::create_on(&cluster())
        }

        /// Create an empty database on the cluster at `admin` (a `postgres://…/postgres` URL).
        pub fn create_on(admin: &str) -> TestDatabase {
            let admin = admin.to_string();
            let name = format!(
                "rounds_t{}_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst),
                uuid::Uuid::new_v4()
                    .simple()
                    .to_string()
                    .get(..8)
                    .unwrap_or("x")
            );
            let (a, n) = (admin.clone(), name.clone());
            off_runtime(move || {
                let mut c = postgres::Client::connect(&a, postgres::NoTls)
                    .unwrap_or_else(|e| panic!("connecting to the test cluster {a}: {e}"));
                c.batch_execute(&format!("CREATE DATABASE {n}"))
                    .unwrap_or_else(|e| panic!("creating {n}: {e}"));
            });
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            TestDatabase {
                url: format!("{base}/{name}"),
                admin,
                name,
            }
        }

        /// Run SQL on this database (inspection in tests).
        pub fn query_i64(&self, sql: &str) -> i64 {
            let (url, sql) = (self.url.clone(), sql.to_string());
            off_runtime(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                c.query_one(sql.as_str(), &[]).unwrap().get(0)
            })
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let (admin, name) = (self.admin.clone(), self.name.clone());
            off_runtime(move || {
                if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                    let _ =
                        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            });
        }
    }
}
