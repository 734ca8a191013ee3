//! rounds-bench: the sync server measured side by side with the automerge-repo reference server.
//!
//! Run (release, from the repository root; installs the reference server's npm packages):
//!   cargo run --release -p rounds-tests --bin rounds-bench -- [--facilities 1,2] [--residents 200]
//!       [--tablets 10] [--entries 40] [--writes 500] [--close-patients 10000] [--skip-reference]
//!
//! Workloads: reconnect storm (all tablets of all facilities reconnect at once with a day of
//! offline entries, then again to pull the others' changes: time to convergence, bytes, server
//! peak RSS), idle reconnect (round trips and bytes per unchanged document), device write
//! (durable `log_interaction` p50/p99, cold open of a 200-patient replica), month close (closing
//! and exporting N patient-months, Rounds only). Prints a JSON report and a Markdown table.
//!
//! `--history 1,24` adds the new-tablet scenario (Rounds only): a facility with that many months
//! of history (one call per resident per month, the last December 2026); a fresh tablet syncs
//! with the sync window of 2026-12-09 and without one: documents held, first sync, idle reconnect.
//!
//! `--postgres postgres://USER@HOST:PORT/postgres` also runs the Rounds storm with the store in
//! PostgreSQL: a fresh database on that cluster, the same starting store moved in with
//! `rounds migrate` (reported as server `rounds-postgres`), then again with two servers on one
//! such database, tablet `i` syncing with server `i mod 2` (`rounds-postgres-2-servers`; server
//! CPU and peak RSS are the two servers' sums).
//!
//! `--attack [--attack-seconds 30] [--bad-sign-ins-per-second 200] [--slowloris 500]
//! [--tablets 10]` runs only the load test (`attack.rs`): one facility's tablets converge on a TLS
//! server, unloaded, then again on a fresh store while bad console sign-ins and slowloris
//! connections hit the server; prints both times, their ratio and the server's peak RSS.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rounds_core::replica::{NewInteraction, NewReading};
use rounds_core::sync::net::{SyncOptions, SyncReport, Trust, sync};
use rounds_core::*;

struct Args {
    facilities: Vec<usize>,
    residents: usize,
    tablets: usize,
    entries: usize,
    writes: usize,
    close_patients: usize,
    skip_reference: bool,
    /// Also run the storm with the JS automerge-repo client as the tablets.
    js_tablets: bool,
    /// History lengths (months) for the new-tablet scenario; empty: not run.
    history: Vec<u32>,
    /// Run only the load test: the storm of one facility with and without an attack.
    attack: bool,
    attack_seconds: u64,
    bad_sign_ins_per_second: u64,
    slowloris: usize,
    /// Also run the Rounds storm with the store in PostgreSQL (a cluster URL; a fresh database
    /// per run, the sled store migrated into it).
    postgres: Option<String>,
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        raw.iter()
            .position(|a| a == name)
            .and_then(|i| raw.get(i + 1))
            .cloned()
    };
    let num =
        |name: &str, default: usize| get(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    Args {
        facilities: get("--facilities")
            .map(|v| {
                v.split(',')
                    .filter_map(|x| x.parse().ok())
                    .filter(|f: &usize| *f > 0)
                    .collect()
            })
            .unwrap_or_else(|| vec![1]),
        residents: num("--residents", 200),
        tablets: num("--tablets", 10),
        entries: num("--entries", 40),
        writes: num("--writes", 500),
        close_patients: num("--close-patients", 10_000),
        skip_reference: raw.iter().any(|a| a == "--skip-reference"),
        js_tablets: raw.iter().any(|a| a == "--js-tablets"),
        history: get("--history")
            .map(|v| {
                v.split(',')
                    .filter_map(|x| x.parse().ok())
                    .filter(|m: &u32| (1..=120).contains(m))
                    .collect()
            })
            .unwrap_or_default(),
        attack: raw.iter().any(|a| a == "--attack"),
        attack_seconds: num("--attack-seconds", 30) as u64,
        bad_sign_ins_per_second: num("--bad-sign-ins-per-second", 200) as u64,
        slowloris: num("--slowloris", 500),
        postgres: get("--postgres"),
    }
}

/// A facility of `residents` residents, every one enrolled in CCM (and every third in RPM).
fn facility(id: &str, residents: usize) -> DataFile {
    let text = std::fs::read_to_string(rounds_tests::repo_root().join("examples/sunnyvale.json"))
        .expect("example");
    let example = parse_data_file(&text).expect("example parses");
    let mut d = DataFile::new(Facility {
        id: id.to_string(),
        name: format!("Facility {id}"),
        timezone: "America/New_York".into(),
        place_of_service: "32".into(),
    });
    d.practitioners = example.practitioners.clone();
    d.staff = example.staff.clone();
    for i in 0..residents {
        let mut p = example.patients[i % example.patients.len()].clone();
        p.id = format!("r-{i:04}");
        p.name = format!("Resident {i}");
        p.mrn = Some(format!("{id}-{i}"));
        d.patients.push(p);
    }
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

/// A tablet: a copy of the facility template with its own actor id.
fn tablet(template: &Path, dir: &Path) -> Replica {
    copy_dir(template, dir);
    let meta = dir.join("replica.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).expect("meta")).expect("json");
    v["actor"] = uuid::Uuid::new_v4().simple().to_string().into();
    std::fs::write(&meta, v.to_string()).expect("write meta");
    Replica::open(dir).expect("open tablet")
}

fn offline_day(r: &mut Replica, residents: usize, entries: usize, seed: u64) {
    let mut x = seed | 1;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let day = Utc
        .with_ymd_and_hms(2026, 12, 9, 13, 0, 0)
        .single()
        .expect("time");
    for k in 0..entries {
        let patient = format!("r-{:04}", next(residents as u64));
        let at = day + chrono::Duration::minutes(next(600) as i64);
        if k % 2 == 0 {
            let _ = r.log_interaction(
                NewInteraction {
                    patient,
                    staff: "rn-lee".into(),
                    program: Program::Ccm,
                    started_at: at,
                    ended_at: at + chrono::Duration::minutes(1 + next(20) as i64),
                    interactive: true,
                    activity: None,
                    note: Some("bench".into()),
                },
                at,
            );
        } else {
            let _ = r.record_reading(
                NewReading {
                    patient,
                    kind: ReadingKind::HeartRate,
                    systolic: None,
                    diastolic: None,
                    value: Some(60.0 + next(40) as f64),
                    unit: "/min".into(),
                    measured_at: at,
                    device: Some("cuff".into()),
                    source: ReadingSource::Device,
                    program: None,
                },
                at,
            );
        }
    }
}

struct Server {
    child: Child,
    url: String,
    trust: Trust,
}

impl Server {
    fn peak_rss_kib(&self) -> u64 {
        rounds_tests::peak_rss_kib(self.child.id())
    }

    /// CPU seconds (user + system) the server process has used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which ends with ')'): utime and stime are the 12th
        // and 13th, in clock ticks (100 per second on Linux).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_555)
}

fn wait_listening(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on {port} did not start");
}

/// One token per facility is shared by all its tablets, and every tablet connects from
/// 127.0.0.1: no per-device or per-address limits in the way (512 per address by default, which
/// 1,000 tablets on one address exceed).
const BENCH_LIMITS: [&str; 8] = [
    "--max-connections-per-address",
    "100000",
    "--max-connections-per-device",
    "1000000",
    "--frames-per-second",
    "1e12",
    "--frame-burst",
    "1e12",
];

/// ROUNDS_BENCH_SERVER_LOG=FILE keeps the server's log (with ROUNDS_LOG) for a slow run.
fn server_log() -> Stdio {
    std::env::var_os("ROUNDS_BENCH_SERVER_LOG")
        .and_then(|f| std::fs::File::create(f).ok())
        .map_or_else(Stdio::null, Stdio::from)
}

fn start_rounds(store: &Path) -> Server {
    let port = free_port();
    // ROUNDS_BENCH_SERVER_WRAP="heaptrack -o /tmp/ht" runs the server under a profiler.
    let bin = rounds_tests::rounds_bin().expect("rounds");
    let wrap: Vec<String> = std::env::var("ROUNDS_BENCH_SERVER_WRAP")
        .map(|w| w.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let child = command
        .args([
            "serve",
            "--insecure-http",
            "--dev-token",
            "bench",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(BENCH_LIMITS)
        .arg("--store")
        .arg(store)
        .stdout(Stdio::null())
        .stderr(server_log())
        .spawn()
        .expect("start rounds");
    wait_listening(port);
    Server {
        child,
        url: format!("ws://127.0.0.1:{port}/sync"),
        trust: Trust::SystemRoots,
    }
}

fn start_reference(store: &Path) -> Server {
    let bench = rounds_tests::repo_root().join("bench");
    if !bench
        .join("node_modules/@automerge/automerge-repo-storage-nodefs")
        .exists()
    {
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&bench)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "npm install in bench/ failed");
    }
    let port = free_port();
    let child = Command::new("node")
        .arg(bench.join("reference-server.mjs"))
        .arg(port.to_string())
        .arg(store)
        .stdout(Stdio::null())
        .stderr(if std::env::var("ROUNDS_BENCH_DEBUG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start node");
    wait_listening(port);
    Server {
        child,
        url: format!("ws://127.0.0.1:{port}/"),
        trust: Trust::SystemRoots,
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct StormResult {
    server: String,
    facilities: usize,
    tablets: usize,
    documents: usize,
    push_seconds: f64,
    converge_seconds: f64,
    bytes_sent: u64,
    bytes_received: u64,
    peak_rss_mib: f64,
    idle_seconds: f64,
    idle_frames_per_doc: f64,
    idle_bytes_per_doc: f64,
    /// Server CPU seconds from the start of the push to convergence.
    server_cpu_seconds: f64,
    /// Server CPU milliseconds and bytes (both ways) per entry converged (tablets × entries).
    server_cpu_ms_per_entry: f64,
    bytes_per_entry: f64,
    /// The idle reconnect's summary exchange: documents summarized per tablet, summary bytes
    /// per summarized document, and per-document frames (both ways) per tablet besides it.
    idle_summarized_per_tablet: f64,
    idle_summary_bytes_per_doc: f64,
    idle_per_document_frames_per_tablet: f64,
    /// The pull round's summary: documents named as changed per tablet.
    pull_differ_per_tablet: f64,
    converged: bool,
}

/// Every tablet syncs at once, tablet `i` with server `i mod servers`.
async fn round(
    tablets: Vec<(Replica, String)>,
    servers: &[&Server],
) -> (Vec<(Replica, String)>, Duration, Vec<SyncReport>) {
    let start = Instant::now();
    let mut handles = Vec::new();
    for (i, (mut r, token)) in tablets.into_iter().enumerate() {
        let server = servers[i % servers.len()];
        let url = server.url.clone();
        let trust = server.trust.clone();
        handles.push(tokio::spawn(async move {
            let mut opts = SyncOptions::new(token.clone(), trust);
            opts.idle_timeout = Duration::from_secs(120);
            let report = sync(&mut r, &url, &opts, &mut |_, _| {}).await;
            ((r, token), report)
        }));
    }
    let mut back = Vec::new();
    let mut reports = Vec::new();
    for h in handles {
        let (r, report) = h.await.expect("task");
        back.push(r);
        reports.push(report.unwrap_or_else(|e| panic!("sync failed: {e}")));
    }
    (back, start.elapsed(), reports)
}

/// The storm against one server, or several sharing a store (each tablet keeps to one).
async fn storm(
    name: &str,
    servers: &[&Server],
    templates: &[Template],
    a: &Args,
    work: &Path,
) -> StormResult {
    let server = servers[0];
    // The server holds the facilities before the storm: Rounds by import (its tablets may not
    // write rosters), the reference server by one untimed sync of each facility's template.
    for (f, t) in templates.iter().enumerate() {
        let mut seed = tablet(&t.dir, &work.join(format!("{name}-seed-{f}")));
        let mut opts = SyncOptions::new(t.token.clone(), server.trust.clone());
        opts.idle_timeout = Duration::from_secs(120);
        sync(&mut seed, &server.url, &opts, &mut |_, _| {})
            .await
            .unwrap_or_else(|e| panic!("seeding {name} failed: {e}"));
    }
    let mut tablets = Vec::new();
    for (f, t) in templates.iter().enumerate() {
        for k in 0..a.tablets {
            let dir = work.join(format!("{name}-f{f}-t{k}"));
            let mut r = tablet(&t.dir, &dir);
            offline_day(&mut r, a.residents, a.entries, (f * 1000 + k + 7) as u64);
            tablets.push((r, t.token.clone()));
        }
    }
    let cpu_all = || servers.iter().map(|s| s.cpu_seconds()).sum::<f64>();
    let cpu0 = cpu_all();
    let (tablets, push, r1) = round(tablets, servers).await;
    let (tablets, pull, r2) = round(tablets, servers).await;
    let cpu = cpu_all() - cpu0;
    let (tablets, idle, r3) = round(tablets, servers).await;
    let docs: usize = r3.iter().map(|r| r.documents).sum();
    let n = tablets.len().max(1) as f64;
    let entries = (tablets.len() * a.entries).max(1) as f64;
    let sum = |rs: &[SyncReport], f: fn(&SyncReport) -> u64| rs.iter().map(f).sum::<u64>();
    // Converged: every tablet of a facility holds the same entries.
    let mut converged = true;
    for f in 0..templates.len() {
        let ids: Vec<usize> = tablets[f * a.tablets..(f + 1) * a.tablets]
            .iter()
            .map(|(t, _)| {
                t.export()
                    .map(|(d, _)| d.interactions.len() + d.readings.len())
                    .unwrap_or(0)
            })
            .collect();
        converged &= ids.windows(2).all(|w| w[0] == w[1]) && ids[0] >= a.entries;
    }
    StormResult {
        server: name.to_string(),
        facilities: templates.len(),
        tablets: tablets.len(),
        documents: docs / tablets.len().max(1),
        push_seconds: push.as_secs_f64(),
        converge_seconds: (push + pull).as_secs_f64(),
        bytes_sent: sum(&r1, |r| r.bytes_sent) + sum(&r2, |r| r.bytes_sent),
        bytes_received: sum(&r1, |r| r.bytes_received) + sum(&r2, |r| r.bytes_received),
        peak_rss_mib: servers.iter().map(|s| s.peak_rss_kib()).sum::<u64>() as f64 / 1024.0,
        idle_seconds: idle.as_secs_f64(),
        idle_frames_per_doc: sum(&r3, |r| r.frames_sent + r.frames_received) as f64
            / docs.max(1) as f64,
        idle_bytes_per_doc: sum(&r3, |r| r.bytes_sent + r.bytes_received) as f64
            / docs.max(1) as f64,
        server_cpu_seconds: cpu,
        server_cpu_ms_per_entry: cpu * 1e3 / entries,
        bytes_per_entry: (sum(&r1, |r| r.bytes_sent + r.bytes_received)
            + sum(&r2, |r| r.bytes_sent + r.bytes_received)) as f64
            / entries,
        idle_summarized_per_tablet: sum(&r3, |r| r.summary.summarized as u64) as f64 / n,
        idle_summary_bytes_per_doc: sum(&r3, |r| r.summary.bytes as u64) as f64
            / sum(&r3, |r| r.summary.summarized as u64).max(1) as f64,
        // Besides join/peer and the summary and its reply (when there was one).
        idle_per_document_frames_per_tablet: r3
            .iter()
            .map(|r| {
                let fixed = if r.summary.summarized > 0 { 4 } else { 2 };
                (r.frames_sent + r.frames_received).saturating_sub(fixed)
            })
            .sum::<u64>() as f64
            / n,
        pull_differ_per_tablet: sum(&r2, |r| (r.summary.differ + r.summary.direct) as u64) as f64
            / n,
        converged,
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct JsStormResult {
    /// Why the JS tablets did not converge (their process's error), if they did not.
    error: Option<String>,
    /// Messages the JS tablets received from the server, by type.
    received: serde_json::Value,
    server: String,
    facilities: usize,
    tablets: usize,
    entries: usize,
    /// From the JS tablets' first connection until every one sees every entry of its facility.
    converge_seconds: f64,
    /// Until every JS tablet had opened its facility's month documents.
    open_seconds: f64,
    server_cpu_seconds: f64,
    server_cpu_ms_per_entry: f64,
    peak_rss_mib: f64,
}

/// The storm with the real automerge-repo 2.5.6 client as the tablets (`bench/js-tablets.mjs`):
/// a seed tablet of each facility makes the current month's documents (one entry per resident,
/// untimed), then every JS tablet opens them all, adds its entries, and waits for the others'.
async fn js_storm(
    name: &str,
    server: &Server,
    templates: &[Template],
    a: &Args,
    work: &Path,
) -> JsStormResult {
    let month: Month = "2026-12".parse().expect("month");
    let mut facilities = Vec::new();
    for (f, t) in templates.iter().enumerate() {
        let mut seed = tablet(&t.dir, &work.join(format!("{name}-js-seed-{f}")));
        let facility = seed.facility_id().expect("facility").to_string();
        let patients = seed.patient_ids();
        let at = Utc
            .with_ymd_and_hms(2026, 12, 8, 14, 0, 0)
            .single()
            .expect("time");
        for p in &patients {
            seed.log_interaction(
                NewInteraction {
                    patient: p.clone(),
                    staff: "rn-lee".into(),
                    program: Program::Ccm,
                    started_at: at,
                    ended_at: at + chrono::Duration::minutes(3),
                    interactive: true,
                    activity: None,
                    note: None,
                },
                at,
            )
            .expect("seed entry");
        }
        let mut opts = SyncOptions::new(t.token.clone(), server.trust.clone());
        opts.idle_timeout = Duration::from_secs(120);
        sync(&mut seed, &server.url, &opts, &mut |_, _| {})
            .await
            .unwrap_or_else(|e| panic!("seeding {name} for the JS tablets failed: {e}"));
        let docs: Vec<String> = patients
            .iter()
            .map(|p| DocumentId::patient_month(&facility, p, month).url())
            .collect();
        facilities.push(serde_json::json!({
            "token": t.token, "patients": patients, "docs": docs,
        }));
    }
    let spec = work.join(format!("{name}-js-{}.json", templates.len()));
    std::fs::write(
        &spec,
        serde_json::json!({
            "url": server.url, "tablets": a.tablets, "entries": a.entries, "facilities": facilities,
            "timeout_seconds": std::env::var("ROUNDS_BENCH_JS_TIMEOUT")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1200),
        })
        .to_string(),
    )
    .expect("write spec");
    let cpu0 = server.cpu_seconds();
    let out = Command::new("node")
        .arg(rounds_tests::repo_root().join("bench/js-tablets.mjs"))
        .arg(&spec)
        .output()
        .expect("run node");
    let cpu = server.cpu_seconds() - cpu0;
    let entries = templates.len() * a.tablets * a.entries;
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let parsed = serde_json::from_str::<serde_json::Value>(line.trim());
    let v = match (out.status.success(), parsed) {
        (true, Ok(v)) => v,
        // The run goes on (the other servers, the other workloads): the failure is reported
        // in the table with the JS client's error.
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            let error = err
                .lines()
                .find(|l| l.starts_with("Error") || l.starts_with("js-tablets"))
                .unwrap_or("no output")
                .to_string();
            eprintln!("JS tablets against {name} failed: {err}");
            return JsStormResult {
                server: name.to_string(),
                facilities: templates.len(),
                tablets: templates.len() * a.tablets,
                entries,
                server_cpu_seconds: cpu,
                peak_rss_mib: server.peak_rss_kib() as f64 / 1024.0,
                error: Some(error),
                ..JsStormResult::default()
            };
        }
    };
    JsStormResult {
        error: None,
        received: v["received"].clone(),
        server: name.to_string(),
        facilities: templates.len(),
        tablets: templates.len() * a.tablets,
        entries,
        converge_seconds: v["seconds"].as_f64().unwrap_or(0.0),
        open_seconds: v["open_seconds"].as_f64().unwrap_or(0.0),
        server_cpu_seconds: cpu,
        server_cpu_ms_per_entry: cpu * 1e3 / entries.max(1) as f64,
        peak_rss_mib: server.peak_rss_kib() as f64 / 1024.0,
    }
}

/// A facility's template replica (the server's copy of its documents) and its tablet token.
struct Template {
    dir: PathBuf,
    token: String,
}

/// `rounds ARGS… --store STORE`, panicking with its stderr on failure; returns stdout.
fn rounds_on(store: &Path, args: &[&str]) -> String {
    let store = store.to_str().expect("store path");
    let mut all = args.to_vec();
    all.extend(["--store", store]);
    rounds_tests::rounds_cli(&all)
}

/// Import `count` facilities into `store`, enrol a tablet token for each, and sync one template
/// replica per facility from a Rounds server on that store (untimed setup).
async fn templates(count: usize, a: &Args, store: &Path, work: &Path) -> Vec<Template> {
    let run = |args: &[&str]| rounds_on(store, args);
    let mut tokens = Vec::new();
    for i in 0..count {
        let id = format!("fac{i}");
        let file = work.join(format!("{id}-{count}.json"));
        std::fs::write(
            &file,
            serde_json::to_vec(&facility(&id, a.residents)).expect("json"),
        )
        .expect("write");
        run(&["import", file.to_str().expect("path")]);
        let added: serde_json::Value = serde_json::from_str(&run(&[
            "device",
            "add",
            "--facility",
            &id,
            "--name",
            &format!("bench-{id}"),
        ]))
        .expect("device json");
        tokens.push((id, added["token"].as_str().expect("token").to_string()));
    }
    let server = start_rounds(store);
    let mut out = Vec::new();
    for (id, token) in tokens {
        let dir = work.join(format!("template-{count}-{id}"));
        let mut r = Replica::open(&dir).expect("template");
        r.join_facility(&id).expect("join");
        let mut opts = SyncOptions::new(token.clone(), server.trust.clone());
        opts.idle_timeout = Duration::from_secs(120);
        sync(&mut r, &server.url, &opts, &mut |_, _| {})
            .await
            .expect("template sync");
        out.push(Template { dir, token });
    }
    drop(server);
    out
}

/// The gate's and the write policy's cost per change, against Automerge applying it: real
/// interaction changes of a tablet, screened, expanded and checked as the server does.
fn gate_cost(a: &Args, work: &Path) -> serde_json::Value {
    use rounds_core::policy::{DocScope, Pending, check_device_change};
    use rounds_core::sync::gate::{GateLimits, expand, screen};
    let dir = work.join("gate-tablet");
    let mut r = Replica::open(&dir).expect("replica");
    r.import(&facility("g", 20), Utc::now()).expect("import");
    let month: Month = "2026-12".parse().expect("month");
    let doc = DocumentId::patient_month("g", "r-0000", month);
    let day = Utc
        .with_ymd_and_hms(2026, 12, 9, 9, 0, 0)
        .single()
        .expect("time");
    let n = a.writes.max(100);
    for k in 0..n {
        let at = day + chrono::Duration::minutes(k as i64);
        r.log_interaction(
            NewInteraction {
                patient: "r-0000".into(),
                staff: "rn-lee".into(),
                program: Program::Ccm,
                started_at: at,
                ended_at: at + chrono::Duration::minutes(5),
                interactive: true,
                activity: Some("call".into()),
                note: Some("bench".into()),
            },
            at,
        )
        .expect("write");
    }
    let full = r.document(doc).expect("month doc").clone();
    // The month's changes after its root fields: one interaction each.
    let changes: Vec<automerge::Change> = full.get_changes(&[]).into_iter().skip(2).collect();
    let base = {
        let mut b = automerge::Automerge::new();
        for c in full.get_changes(&[]).into_iter().take(2) {
            b.apply_changes([c]).expect("apply");
        }
        b
    };
    let scope = DocScope::patient_month("g", "r-0000", month);
    let limits = GateLimits::default();
    let raw: Vec<Vec<u8>> = changes.iter().map(|c| c.raw_bytes().to_vec()).collect();
    let t = Instant::now();
    for bytes in &raw {
        let screened = screen([bytes.as_slice()].into_iter(), &limits).expect("screen");
        let e = expand(&screened[0]).expect("expand");
        check_device_change(
            &base,
            &base.get_heads(),
            &scope,
            &e,
            &[],
            &mut Pending::default(),
        )
        .expect("policy");
    }
    let gate_us = t.elapsed().as_secs_f64() * 1e6 / raw.len() as f64;
    let t = Instant::now();
    let mut applied = base.clone();
    for c in &changes {
        applied.apply_changes([c.clone()]).expect("apply");
    }
    let apply_us = t.elapsed().as_secs_f64() * 1e6 / changes.len() as f64;
    serde_json::json!({"changes": raw.len(), "gate_and_policy_us_per_change": gate_us, "automerge_apply_us_per_change": apply_us})
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

#[path = "rounds-bench/attack.rs"]
mod attack;

/// A facility of `residents` residents with three 9-minute CCM interactions each in November.
/// A new tablet on a facility with `months` months of history (one 5-minute call per resident
/// per month, the last month December 2026): its first sync and an idle reconnect, with the
/// sync window of 2026-12-09 and, for contrast, without one (Rounds only).
#[derive(Debug, serde::Serialize)]
struct HistoryResult {
    months: u32,
    documents_on_server: usize,
    window: bool,
    documents_held: usize,
    first_sync_seconds: f64,
    first_sync_bytes: u64,
    first_sync_per_document_frames: u64,
    idle_seconds: f64,
    idle_bytes: u64,
    idle_per_document_frames: u64,
}

fn history_data(residents: usize, months: u32) -> DataFile {
    let mut data = facility("hist", residents);
    let mut month: Month = "2026-12".parse().expect("month");
    for _ in 1..months {
        month = month.previous();
    }
    for _ in 0..months {
        let at = chrono::DateTime::parse_from_rfc3339(&format!(
            "{}T10:00:00-05:00",
            month.first_day().format("%Y-%m-%d")
        ))
        .expect("time");
        for p in &data.patients.clone() {
            data.interactions.push(ccm_call(&p.id, at, 5));
        }
        month = month.next();
    }
    data
}

fn history_cost(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    months: u32,
    work: &Path,
) -> Vec<HistoryResult> {
    let store = work.join(format!("history-store-{months}"));
    let file = work.join(format!("history-{months}.json"));
    std::fs::write(
        &file,
        serde_json::to_vec(&history_data(a.residents, months)).expect("json"),
    )
    .expect("write");
    let run = |args: &[&str]| rounds_on(&store, args);
    run(&["import", file.to_str().expect("path")]);
    let added: serde_json::Value = serde_json::from_str(&run(&[
        "device",
        "add",
        "--facility",
        "hist",
        "--name",
        "bench-history",
    ]))
    .expect("device json");
    let token = added["token"].as_str().expect("token").to_string();
    let server = start_rounds(&store);
    // A server started on a store with past months open closes those past their grace window
    // in the background (23 months here): wait until it is idle, so the tablet's first sync is
    // timed alone.
    let mut cpu = server.cpu_seconds();
    for _ in 0..600 {
        std::thread::sleep(Duration::from_millis(250));
        let now = server.cpu_seconds();
        if now - cpu < 0.02 {
            break;
        }
        cpu = now;
    }
    let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 9).expect("date");
    let mut out = Vec::new();
    for window in [true, false] {
        let dir = work.join(format!("history-tablet-{months}-{window}"));
        let mut r = Replica::open(&dir).expect("tablet");
        r.join_facility("hist").expect("join");
        if window {
            r.set_sync_window(Some(SyncWindow::new(today)));
        }
        let mut opts = SyncOptions::new(token.clone(), server.trust.clone());
        opts.idle_timeout = Duration::from_secs(120);
        let once = |r: &mut Replica| {
            let t = Instant::now();
            let report = rt
                .block_on(sync(r, &server.url, &opts, &mut |_, _| {}))
                .unwrap_or_else(|e| panic!("history sync failed: {e}"));
            let fixed = if report.summary.summarized > 0 { 4 } else { 2 };
            (
                t.elapsed().as_secs_f64(),
                report.bytes_sent + report.bytes_received,
                (report.frames_sent + report.frames_received).saturating_sub(fixed),
            )
        };
        let (first_s, first_b, first_f) = once(&mut r);
        let (idle_s, idle_b, idle_f) = once(&mut r);
        out.push(HistoryResult {
            months,
            documents_on_server: 1 + a.residents * (1 + months as usize),
            window,
            documents_held: r.document_ids().len(),
            first_sync_seconds: first_s,
            first_sync_bytes: first_b,
            first_sync_per_document_frames: first_f,
            idle_seconds: idle_s,
            idle_bytes: idle_b,
            idle_per_document_frames: idle_f,
        });
    }
    out
}

/// A data file's interactive CCM call by rn-lee of `minutes` from `at`.
fn ccm_call(patient: &str, at: chrono::DateTime<chrono::FixedOffset>, minutes: i64) -> Interaction {
    Interaction {
        id: uuid::Uuid::now_v7(),
        patient: patient.to_string(),
        staff: "rn-lee".into(),
        program: Program::Ccm,
        started_at: at,
        ended_at: at + chrono::Duration::minutes(minutes),
        interactive: true,
        activity: None,
        note: None,
        amends: None,
    }
}

fn month_of_care(id: &str, residents: usize) -> DataFile {
    let mut data = facility(id, residents);
    for (k, p) in data.patients.clone().iter().enumerate() {
        for j in 0..3 {
            let at = chrono::DateTime::parse_from_rfc3339("2026-11-05T10:00:00-05:00")
                .expect("time")
                + chrono::Duration::days((k + j * 7) as i64 % 25);
            data.interactions.push(ccm_call(&p.id, at, 9));
        }
    }
    data
}

/// The console worklist of `facility` on a TLS server over `store` (imported, closed or not):
/// (first request ms, median of the next 10 ms, page bytes), signed in as an admin.
fn console_timing(rt: &tokio::runtime::Runtime, store: &Path, facility: &str) -> (f64, f64, usize) {
    const PASSWORD: &str = "bench-password-123";
    rounds_tests::add_console_user(store, "bench-admin", "admin", &[facility], PASSWORD)
        .expect("console user");
    let server = rounds_tests::ServerProcess::start(store).expect("server");
    rt.block_on(async {
        let (_, cookie, _) = rounds_tests::console_session(&server, "bench-admin", PASSWORD)
            .await
            .expect("sign in");
        let cookie = cookie.expect("session cookie");
        let head = format!(
            "GET /console/?facility={facility}&as_of=2026-11-20 HTTP/1.1\r\nCookie: {cookie}"
        );
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..11 {
            let t = Instant::now();
            let (status, _, body) = rounds_tests::https_exchange(&server, &head, b"")
                .await
                .expect("worklist");
            times.push(t.elapsed());
            assert_eq!(status, 200, "worklist: {status}");
            bytes = body.len();
        }
        let first = times.remove(0);
        times.sort();
        (first.as_secs_f64() * 1e3, percentile(&times, 0.5), bytes)
    })
}

fn main() {
    let a = args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().expect("work dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if a.attack {
        attack::run(&rt, &a, work.path());
        return;
    }
    let mut report = serde_json::Map::new();
    let mut storms = Vec::new();
    let mut js_storms = Vec::new();
    for &f in &a.facilities {
        // The facilities imported into a Rounds store, one enrolled tablet token each; one
        // template replica per facility synced from that server, copied per tablet.
        let store = work.path().join(format!("rounds-store-{f}"));
        let templates = rt.block_on(templates(f, &a, &store, work.path()));
        // The same starting store for the PostgreSQL run.
        let before = work.path().join(format!("rounds-store-{f}-before"));
        if a.postgres.is_some() {
            copy_dir(&store, &before);
        }
        let s = rt.block_on(storm(
            "rounds",
            &[&start_rounds(&store)],
            &templates,
            &a,
            work.path(),
        ));
        eprintln!("{s:?}");
        storms.push(s);
        if let Some(cluster) = &a.postgres {
            let db = rounds_tests::pg::TestDatabase::create_on(cluster);
            rounds_tests::rounds_cli(&[
                "migrate",
                "--from",
                before.to_str().expect("path"),
                "--to",
                &db.url,
            ]);
            let s = rt.block_on(storm(
                "rounds-postgres",
                &[&start_rounds(Path::new(&db.url))],
                &templates,
                &a,
                work.path(),
            ));
            eprintln!("{s:?}");
            storms.push(s);
            // Two servers on one database, the tablets split between them.
            let db2 = rounds_tests::pg::TestDatabase::create_on(cluster);
            rounds_tests::rounds_cli(&[
                "migrate",
                "--from",
                before.to_str().expect("path"),
                "--to",
                &db2.url,
            ]);
            let (one, two) = (
                start_rounds(Path::new(&db2.url)),
                start_rounds(Path::new(&db2.url)),
            );
            let s = rt.block_on(storm(
                "rounds-postgres-2-servers",
                &[&one, &two],
                &templates,
                &a,
                work.path(),
            ));
            eprintln!("{s:?}");
            storms.push(s);
        }
        if !a.skip_reference {
            let s = rt.block_on(storm(
                "reference",
                &[&start_reference(
                    &work.path().join(format!("ref-store-{f}")),
                )],
                &templates,
                &a,
                work.path(),
            ));
            eprintln!("{s:?}");
            storms.push(s);
        }
        if a.js_tablets {
            let j = rt.block_on(js_storm(
                "rounds",
                &start_rounds(&store),
                &templates,
                &a,
                work.path(),
            ));
            eprintln!("{j:?}");
            js_storms.push(j);
            if !a.skip_reference {
                let j = rt.block_on(js_storm(
                    "reference",
                    &start_reference(&work.path().join(format!("ref-js-store-{f}"))),
                    &templates,
                    &a,
                    work.path(),
                ));
                eprintln!("{j:?}");
                js_storms.push(j);
            }
        }
    }
    report.insert(
        "storm".into(),
        serde_json::to_value(&storms).unwrap_or_default(),
    );
    report.insert(
        "storm_js_tablets".into(),
        serde_json::to_value(&js_storms).unwrap_or_default(),
    );
    report.insert("gate".into(), gate_cost(&a, work.path()));
    let mut history = Vec::new();
    for &m in &a.history {
        for h in history_cost(&rt, &a, m, work.path()) {
            eprintln!("{h:?}");
            history.push(h);
        }
    }
    report.insert(
        "new_tablet_after_history".into(),
        serde_json::to_value(&history).unwrap_or_default(),
    );

    // Device write latency and cold open.
    let template = work.path().join("write-template");
    {
        let mut r = Replica::open_scratch(&template).expect("template");
        r.import(&facility("w", 200), Utc::now()).expect("import");
    }
    let t = Instant::now();
    let mut r = tablet(&template, &work.path().join("write-tablet"));
    let cold_open_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut lat = Vec::new();
    for k in 0..a.writes {
        let at = Utc
            .with_ymd_and_hms(2026, 12, 10, 9, 0, 0)
            .single()
            .expect("time")
            + chrono::Duration::minutes(k as i64);
        let t = Instant::now();
        r.log_interaction(
            NewInteraction {
                patient: format!("r-{:04}", k % 200),
                staff: "rn-lee".into(),
                program: Program::Ccm,
                started_at: at,
                ended_at: at + chrono::Duration::minutes(5),
                interactive: true,
                activity: None,
                note: None,
            },
            at,
        )
        .expect("write");
        lat.push(t.elapsed());
    }
    lat.sort();
    report.insert("device_write".into(), serde_json::json!({
        "writes": a.writes, "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99), "cold_open_200_patients_ms": cold_open_ms,
    }));

    // Month close: N patient-months in a store, closed and exported (Rounds only).
    if a.close_patients > 0 {
        let store = work.path().join("close-store");
        let data = month_of_care("big", a.close_patients);
        let file = work.path().join("big.json");
        std::fs::write(&file, serde_json::to_vec(&data).expect("json")).expect("write");
        let bin = rounds_tests::rounds_bin().expect("rounds");
        let t = Instant::now();
        let ok = Command::new(&bin)
            .arg("import")
            .arg("--store")
            .arg(&store)
            .arg(&file)
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let import_s = t.elapsed().as_secs_f64();
        assert!(ok, "import failed");
        let t = Instant::now();
        let ok = Command::new(&bin)
            .args([
                "close-month",
                "--facility",
                "big",
                "--month",
                "2026-11",
                "--store",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let close_s = t.elapsed().as_secs_f64();
        assert!(ok, "close failed");
        let export = |format: &str, out: &Path| {
            let ok = Command::new(&bin)
                .args([
                    "export",
                    "--facility",
                    "big",
                    "--month",
                    "2026-11",
                    "--format",
                ])
                .arg(format)
                .arg("--store")
                .arg(&store)
                .arg("--out")
                .arg(out)
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "export {format} to {} failed", out.display());
        };
        let t = Instant::now();
        let mut per_format = serde_json::Map::new();
        for format in ["fhir", "hl7", "csv"] {
            let tf = Instant::now();
            export(format, &work.path().join("big-out"));
            per_format.insert(format.into(), tf.elapsed().as_secs_f64().into());
        }
        let export_s = t.elapsed().as_secs_f64();
        // The same into memory (tmpfs), when there is one: the export's own cost, without the
        // disk's file creation (which varies a lot on shared virtual machines).
        let shm = Path::new("/dev/shm");
        let export_tmpfs_s = shm.is_dir().then(|| {
            let dir = shm.join(format!("rounds-bench-{}", std::process::id()));
            let t = Instant::now();
            for format in ["fhir", "hl7", "csv"] {
                export(format, &dir);
            }
            let s = t.elapsed().as_secs_f64();
            let _ = std::fs::remove_dir_all(&dir);
            s
        });
        let (big_first, big_median, big_bytes) = console_timing(&rt, &store, "big");
        let small_store = work.path().join("small-store");
        let small = work.path().join("small.json");
        std::fs::write(
            &small,
            serde_json::to_vec(&month_of_care("small", 200)).expect("json"),
        )
        .expect("write");
        let ok = Command::new(&bin)
            .arg("import")
            .arg("--store")
            .arg(&small_store)
            .arg(&small)
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "import small failed");
        let (small_first, small_median, small_bytes) = console_timing(&rt, &small_store, "small");
        report.insert("console_worklist".into(), serde_json::json!({
            "patient_months_10000": { "first_ms": big_first, "median_ms": big_median, "page_bytes": big_bytes },
            "residents_200": { "first_ms": small_first, "median_ms": small_median, "page_bytes": small_bytes },
        }));
        report.insert("month_close".into(), serde_json::json!({
            "patient_months": a.close_patients, "import_seconds": import_s, "close_seconds": close_s, "export_fhir_hl7_csv_seconds": export_s, "export_seconds_per_format": per_format, "export_fhir_hl7_csv_to_tmpfs_seconds": export_tmpfs_s,
        }));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    println!();
    println!(
        "| server | facilities | tablets | docs/tablet | push s | converge s | MB sent+recv | peak RSS MiB | idle s | idle frames/doc | idle bytes/doc | server CPU s | CPU ms/entry | bytes/entry | idle summary B/doc | idle per-doc frames/tablet | pull docs/tablet | converged |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &storms {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            s.server,
            s.facilities,
            s.tablets,
            s.documents,
            s.push_seconds,
            s.converge_seconds,
            (s.bytes_sent + s.bytes_received) as f64 / 1e6,
            s.peak_rss_mib,
            s.idle_seconds,
            s.idle_frames_per_doc,
            s.idle_bytes_per_doc,
            s.server_cpu_seconds,
            s.server_cpu_ms_per_entry,
            s.bytes_per_entry,
            s.idle_summary_bytes_per_doc,
            s.idle_per_document_frames_per_tablet,
            s.pull_differ_per_tablet,
            s.converged
        );
    }
    if !js_storms.is_empty() {
        println!();
        println!(
            "| JS tablets: server | facilities | tablets | entries | converge s | open s | server CPU s | CPU ms/entry | peak RSS MiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for j in &js_storms {
            if let Some(e) = &j.error {
                println!(
                    "| {} | {} | {} | {} | failed: {} | | {:.2} | | {:.0} |",
                    j.server,
                    j.facilities,
                    j.tablets,
                    j.entries,
                    e,
                    j.server_cpu_seconds,
                    j.peak_rss_mib
                );
                continue;
            }
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
                j.server,
                j.facilities,
                j.tablets,
                j.entries,
                j.converge_seconds,
                j.open_seconds,
                j.server_cpu_seconds,
                j.server_cpu_ms_per_entry,
                j.peak_rss_mib
            );
        }
    }
    if !history.is_empty() {
        println!();
        println!(
            "| history months | documents on server | sync window | documents held | first sync s | first sync KB | first sync per-doc frames | idle s | idle bytes | idle per-doc frames |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for h in &history {
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.0} | {} | {:.3} | {} | {} |",
                h.months,
                h.documents_on_server,
                if h.window { "yes" } else { "no" },
                h.documents_held,
                h.first_sync_seconds,
                h.first_sync_bytes as f64 / 1e3,
                h.first_sync_per_document_frames,
                h.idle_seconds,
                h.idle_bytes,
                h.idle_per_document_frames
            );
        }
    }
    // ROUNDS_BENCH_KEEP=1 keeps the work directory (stores, exports) for a closer look.
    if std::env::var_os("ROUNDS_BENCH_KEEP").is_some() {
        eprintln!("work directory kept: {}", work.path().display());
        std::mem::forget(work);
    }
}
