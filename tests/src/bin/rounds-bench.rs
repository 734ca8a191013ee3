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

fn start_rounds(store: &Path) -> Server {
    let port = free_port();
    let child = Command::new(rounds_tests::rounds_bin().expect("rounds"))
        .args([
            "serve",
            "--insecure-http",
            "--dev-token",
            "bench",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--max-connections-per-device",
            "1000000",
            "--frames-per-second",
            "1e12",
            "--frame-burst",
            "1e12",
            "--store",
        ])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    converged: bool,
}

async fn round(
    tablets: Vec<Replica>,
    server: &Server,
) -> (Vec<Replica>, Duration, Vec<SyncReport>) {
    let start = Instant::now();
    let mut handles = Vec::new();
    for mut r in tablets {
        let url = server.url.clone();
        let trust = server.trust.clone();
        handles.push(tokio::spawn(async move {
            let mut opts = SyncOptions::new("bench", trust);
            opts.idle_timeout = Duration::from_secs(120);
            let report = sync(&mut r, &url, &opts, &mut |_, _| {}).await;
            (r, report)
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

async fn storm(
    name: &str,
    server: Server,
    templates: &[(String, PathBuf)],
    a: &Args,
    work: &Path,
) -> StormResult {
    let mut tablets = Vec::new();
    for (f, (_, template)) in templates.iter().enumerate() {
        for t in 0..a.tablets {
            let dir = work.join(format!("{name}-f{f}-t{t}"));
            let mut r = tablet(template, &dir);
            offline_day(&mut r, a.residents, a.entries, (f * 1000 + t + 7) as u64);
            tablets.push(r);
        }
    }
    let (tablets, push, r1) = round(tablets, &server).await;
    let (tablets, pull, r2) = round(tablets, &server).await;
    let (tablets, idle, r3) = round(tablets, &server).await;
    let docs: usize = r3.iter().map(|r| r.documents).sum();
    let sum = |rs: &[SyncReport], f: fn(&SyncReport) -> u64| rs.iter().map(f).sum::<u64>();
    // Converged: every tablet of a facility holds the same entries.
    let mut converged = true;
    for f in 0..templates.len() {
        let ids: Vec<usize> = tablets[f * a.tablets..(f + 1) * a.tablets]
            .iter()
            .map(|t| {
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
        peak_rss_mib: server.peak_rss_kib() as f64 / 1024.0,
        idle_seconds: idle.as_secs_f64(),
        idle_frames_per_doc: sum(&r3, |r| r.frames_sent + r.frames_received) as f64
            / docs.max(1) as f64,
        idle_bytes_per_doc: sum(&r3, |r| r.bytes_sent + r.bytes_received) as f64
            / docs.max(1) as f64,
        converged,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

fn main() {
    let a = args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().expect("work dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = serde_json::Map::new();
    let mut storms = Vec::new();
    for &f in &a.facilities {
        // One template replica per facility (imported once), copied per tablet.
        let templates: Vec<(String, PathBuf)> = (0..f)
            .map(|i| {
                let id = format!("fac{i}");
                let dir = work.path().join(format!("template-{f}-{id}"));
                let mut r = Replica::open_scratch(&dir).expect("template");
                r.import(&facility(&id, a.residents), Utc::now())
                    .expect("import");
                (id, dir)
            })
            .collect();
        let s = rt.block_on(storm(
            "rounds",
            start_rounds(&work.path().join(format!("rounds-store-{f}"))),
            &templates,
            &a,
            work.path(),
        ));
        eprintln!("{s:?}");
        storms.push(s);
        if !a.skip_reference {
            let s = rt.block_on(storm(
                "reference",
                start_reference(&work.path().join(format!("ref-store-{f}"))),
                &templates,
                &a,
                work.path(),
            ));
            eprintln!("{s:?}");
            storms.push(s);
        }
    }
    report.insert(
        "storm".into(),
        serde_json::to_value(&storms).unwrap_or_default(),
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
        let mut data = facility("big", a.close_patients);
        for (k, p) in data.patients.clone().iter().enumerate() {
            for j in 0..3 {
                let at = chrono::DateTime::parse_from_rfc3339("2026-11-05T10:00:00-05:00")
                    .expect("time")
                    + chrono::Duration::days((k + j * 7) as i64 % 25);
                data.interactions.push(Interaction {
                    id: uuid::Uuid::now_v7(),
                    patient: p.id.clone(),
                    staff: "rn-lee".into(),
                    program: Program::Ccm,
                    started_at: at,
                    ended_at: at + chrono::Duration::minutes(9),
                    interactive: true,
                    activity: None,
                    note: None,
                    amends: None,
                });
            }
        }
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
        let t = Instant::now();
        for format in ["fhir", "hl7", "csv"] {
            let ok = Command::new(&bin)
                .args([
                    "export",
                    "--facility",
                    "big",
                    "--month",
                    "2026-11",
                    "--format",
                    format,
                    "--store",
                ])
                .arg(&store)
                .arg("--out")
                .arg(work.path().join("big-out"))
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "export {format} failed");
        }
        let export_s = t.elapsed().as_secs_f64();
        report.insert("month_close".into(), serde_json::json!({
            "patient_months": a.close_patients, "import_seconds": import_s, "close_seconds": close_s, "export_fhir_hl7_csv_seconds": export_s,
        }));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    println!();
    println!(
        "| server | facilities | tablets | docs/tablet | push s | converge s | MB sent+recv | peak RSS MiB | idle s | idle frames/doc | idle bytes/doc | converged |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &storms {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.2} | {:.2} | {:.0} | {} |",
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
            s.converged
        );
    }
}
