//! The load test: one facility's tablets converge while the server is attacked by bad console
//! sign-ins (from many addresses, each a new TLS connection with a new username, so neither
//! rate limit spares the password hash) and slowloris connections (TLS, then a request head
//! trickled a byte a second; each one the server closes is opened again).
//!
//! Both runs use a TLS server on a copy of the same store, so the unloaded and the attacked
//! storm do the same work; the attack starts a few seconds before the storm and runs its full
//! length; the server's peak RSS is read after it ends.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rounds_core::sync::net::Trust;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Args, Server, StormResult, copy_dir, storm, templates};

/// A TLS Rounds server on `store` (bench limits: one token per facility shared by its tablets).
fn start_tls(store: &Path) -> (Server, u16, [u8; 32]) {
    use std::io::BufRead;
    let mut child = Command::new(rounds_tests::rounds_bin().expect("rounds"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(super::BENCH_LIMITS)
        .arg("--store")
        .arg(store)
        .stdout(Stdio::piped())
        .stderr(super::server_log())
        .spawn()
        .expect("start rounds");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut fingerprint = [0u8; 32];
    let port = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("read");
        if let Some(hex) = line.split("sha256 ").nth(1) {
            for (i, b) in fingerprint.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
            }
        }
        if let Some(rest) = line.split("127.0.0.1:").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            break digits.parse::<u16>().expect("port");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (
        Server {
            child,
            url: format!("wss://127.0.0.1:{port}/sync"),
            trust: Trust::Fingerprint(fingerprint),
        },
        port,
        fingerprint,
    )
}

#[derive(Default)]
struct Tally {
    sign_ins_checked: AtomicU64,
    sign_ins_refused: AtomicU64,
    sign_ins_failed: AtomicU64,
    slowloris_opened: AtomicU64,
    slowloris_closed_by_server: AtomicU64,
}

struct Target {
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl Target {
    async fn connect(
        &self,
        from: Ipv4Addr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((from, 0).into())?;
        let tcp = socket.connect(([127, 0, 0, 1], self.port).into()).await?;
        let name =
            rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        self.tls.connect(name, tcp).await
    }
}

/// One bad sign-in: a new connection, a forged (but self-consistent) CSRF pair, a new username.
async fn bad_sign_in(target: &Target, from: Ipv4Addr, n: u64, tally: &Tally) {
    let body = format!("csrf=x&username=attacker-{n}&password=guess-{n}");
    let request = format!(
        "POST /console/login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Cookie: rounds_login_csrf=x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let result = async {
        let mut tls = target.connect(from).await?;
        tls.write_all(request.as_bytes()).await?;
        tls.flush().await?;
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
        Ok::<_, std::io::Error>(buf)
    }
    .await;
    let status = result
        .ok()
        .and_then(|b| String::from_utf8_lossy(&b).get(9..12).map(str::to_string));
    match status.as_deref() {
        Some("401") => &tally.sign_ins_checked,
        Some("429") => &tally.sign_ins_refused,
        _ => &tally.sign_ins_failed,
    }
    .fetch_add(1, Ordering::Relaxed);
}

/// One slowloris client until `until`: a request head a byte a second, reopened when closed.
async fn slowloris(target: Arc<Target>, from: Ipv4Addr, until: Instant, tally: Arc<Tally>) {
    let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: ".to_vec();
    while Instant::now() < until {
        let Ok(mut tls) = target.connect(from).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        tally.slowloris_opened.fetch_add(1, Ordering::Relaxed);
        let mut sent = 0usize;
        loop {
            if Instant::now() >= until {
                return;
            }
            let byte = head.get(sent).copied().unwrap_or(b'a');
            let wrote = tls.write_all(&[byte]).await.and(tls.flush().await);
            // The server closing shows as a failed write or a read of 0 bytes.
            let mut probe = [0u8; 64];
            let closed = wrote.is_err()
                || matches!(
                    tokio::time::timeout(Duration::from_secs(1), tls.read(&mut probe)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                );
            if closed {
                tally
                    .slowloris_closed_by_server
                    .fetch_add(1, Ordering::Relaxed);
                break;
            }
            sent += 1;
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct AttackReport {
    tablets: usize,
    documents_per_tablet: usize,
    attack_seconds: u64,
    bad_sign_ins_per_second: u64,
    slowloris_connections: usize,
    unloaded_converge_seconds: f64,
    attacked_converge_seconds: f64,
    ratio: f64,
    unloaded_peak_rss_mib: f64,
    attacked_peak_rss_mib: f64,
    converged: bool,
    sign_ins_sent: u64,
    sign_ins_checked: u64,
    sign_ins_refused_429: u64,
    sign_ins_failed: u64,
    slowloris_opened: u64,
    slowloris_closed_by_server: u64,
}

pub fn run(rt: &tokio::runtime::Runtime, a: &Args, work: &Path) {
    let store = work.join("attack-store");
    let templates = rt.block_on(templates(1, a, &store, work));
    let store2 = work.join("attack-store-2");
    copy_dir(&store, &store2);

    let (server, _, _) = start_tls(&store);
    let unloaded: StormResult = rt.block_on(storm("unloaded", &[&server], &templates, a, work));
    drop(server);
    eprintln!("{unloaded:?}");

    let (server, port, fingerprint) = start_tls(&store2);
    let tls = rounds_core::sync::net::client_config(&Trust::Fingerprint(fingerprint))
        .expect("tls client");
    let target = Arc::new(Target {
        port,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    });
    let tally = Arc::new(Tally::default());
    let attack_for = Duration::from_secs(a.attack_seconds);
    let until = Instant::now() + attack_for;
    let sent = Arc::new(AtomicU64::new(0));
    let attack = rt.spawn({
        let (target, tally, sent) = (target.clone(), tally.clone(), sent.clone());
        let (rate, slow) = (a.bad_sign_ins_per_second.max(1), a.slowloris);
        async move {
            let mut clients = Vec::new();
            for _ in 0..slow {
                clients.push(tokio::spawn(slowloris(
                    target.clone(),
                    Ipv4Addr::new(127, 0, 2, 1),
                    until,
                    tally.clone(),
                )));
            }
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
            let mut n = 0u64;
            while Instant::now() < until {
                tick.tick().await;
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                // From 250 addresses in turn: the per-address limit does not stop the flood.
                let from = Ipv4Addr::new(127, 0, 1, (n % 250) as u8 + 1);
                let (target, tally) = (target.clone(), tally.clone());
                clients.push(tokio::spawn(async move {
                    bad_sign_in(&target, from, n, &tally).await;
                }));
            }
            for c in clients {
                let _ = c.await;
            }
        }
    });
    // Let the attack reach full strength, then the storm.
    std::thread::sleep(Duration::from_secs(3).min(attack_for / 4));
    let attacked = rt.block_on(storm("attacked", &[&server], &templates, a, work));
    eprintln!("{attacked:?}");
    let _ = rt.block_on(attack);
    let attacked_peak = server.peak_rss_kib() as f64 / 1024.0;
    drop(server);

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let report = AttackReport {
        tablets: attacked.tablets,
        documents_per_tablet: attacked.documents,
        attack_seconds: a.attack_seconds,
        bad_sign_ins_per_second: a.bad_sign_ins_per_second,
        slowloris_connections: a.slowloris,
        unloaded_converge_seconds: unloaded.converge_seconds,
        attacked_converge_seconds: attacked.converge_seconds,
        ratio: attacked.converge_seconds / unloaded.converge_seconds.max(1e-9),
        unloaded_peak_rss_mib: unloaded.peak_rss_mib,
        attacked_peak_rss_mib: attacked_peak,
        converged: unloaded.converged && attacked.converged,
        sign_ins_sent: load(&sent),
        sign_ins_checked: load(&tally.sign_ins_checked),
        sign_ins_refused_429: load(&tally.sign_ins_refused),
        sign_ins_failed: load(&tally.sign_ins_failed),
        slowloris_opened: load(&tally.slowloris_opened),
        slowloris_closed_by_server: load(&tally.slowloris_closed_by_server),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    println!();
    println!(
        "| tablets | docs/tablet | unloaded converge s | attacked converge s | ratio | peak RSS MiB (unloaded / attacked) | bad sign-ins sent / hashed / 429 | slowloris opened / closed by server | converged |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} | {} / {} / {} | {} / {} | {} |",
        report.tablets,
        report.documents_per_tablet,
        report.unloaded_converge_seconds,
        report.attacked_converge_seconds,
        report.ratio,
        report.unloaded_peak_rss_mib,
        report.attacked_peak_rss_mib,
        report.sign_ins_sent,
        report.sign_ins_checked,
        report.sign_ins_refused_429,
        report.slowloris_opened,
        report.slowloris_closed_by_server,
        report.converged
    );
}
