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
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("no target directory"))?;
    let bin = dir.join("rounds");
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "rounds-server", "--bin", "rounds"])
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
        use std::io::BufRead;
        let mut child = std::process::Command::new(rounds_bin()?)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--dev-token",
                DEV_TOKEN,
                "--store",
            ])
            .arg(store)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
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
