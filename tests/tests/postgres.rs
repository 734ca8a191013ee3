//! `rounds` on PostgreSQL (`--store postgres://…`) against a real database on the throwaway
//! cluster `scripts/test` starts: a server serving tablets, commands going through the running
//! server, two servers side by side (tablets split between them converge; one killed
//! mid-storm loses nothing; a month closes once; a revocation through one cuts the device off
//! on the other), and `rounds migrate` of the demo's store giving the same month-close output
//! on both engines.

use std::path::{Path, PathBuf};

use chrono::{Duration, TimeZone, Utc};
use rounds_core::replica::NewInteraction;
use rounds_core::{Program, Replica};
use rounds_tests::pg::TestDatabase;
use rounds_tests::{ServerProcess, entry_ids, repo_root, rounds_cli, rounds_cli_output, sync_with};

fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A fresh database with the example facility imported straight into it (no server yet), and
/// a directory for the certificate.
fn imported() -> (TestDatabase, tempfile::TempDir) {
    let db = TestDatabase::create();
    rounds_cli(&[
        "import",
        "--store",
        &db.url,
        repo_root()
            .join("examples/sunnyvale.json")
            .to_str()
            .unwrap(),
    ]);
    (db, tempfile::tempdir().unwrap())
}

fn serve(db: &TestDatabase, cert: &Path, key: &Path) -> ServerProcess {
    serve_on(&db.url, cert, key)
}

/// A server on the database at `url` presenting `cert` (every server on a database presents
/// the same one); waits until it listens.
fn serve_on(url: &str, cert: &Path, key: &Path) -> ServerProcess {
    ServerProcess::start_with(
        Path::new(url),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .unwrap()
}

/// A command that failed, saying `needle` on stderr.
fn assert_refused(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

fn log(r: &mut Replica, k: i64) -> String {
    let start = Utc.with_ymd_and_hms(2026, 12, 2, 14, 0, 0).unwrap() + Duration::minutes(k * 23);
    r.log_interaction(
        NewInteraction {
            patient: ["p-001", "p-002", "p-005"][(k % 3) as usize].into(),
            staff: "rn-lee".into(),
            program: Program::Ccm,
            started_at: start,
            ended_at: start + Duration::minutes(11),
            interactive: true,
            activity: None,
            note: None,
        },
        start,
    )
    .unwrap()
    .id
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_serves_tablets_and_commands_go_through_it() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    // Straight into the database (no server yet).
    let out = rounds_cli(&[
        "import",
        "--store",
        &db.url,
        repo_root()
            .join("examples/sunnyvale.json")
            .to_str()
            .unwrap(),
    ]);
    assert!(out.contains("imported sunnyvale"), "{out}");
    // Without a certificate a server on a shared database refuses (all must serve the same).
    let refused = rounds_cli_output(&["serve", "--store", &db.url, "--listen", "127.0.0.1:0"]);
    assert_refused(&refused, "--tls-cert");

    let server = serve(&db, &cert, &key);
    // Two tablets: one writes, both converge through the server.
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Replica::open(d1.path()).unwrap();
    let mut b = Replica::open(d2.path()).unwrap();
    for r in [&mut a, &mut b] {
        r.join_facility("sunnyvale").unwrap();
    }
    sync_with(&mut a, &server).await.unwrap();
    let written: Vec<String> = (0..12).map(|k| log(&mut a, k)).collect();
    let report = sync_with(&mut a, &server).await.unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");
    sync_with(&mut b, &server).await.unwrap();
    let held = entry_ids(&b).unwrap();
    for id in &written {
        assert!(held.contains(id), "{id} did not reach the second tablet");
    }
    // The entries are rows in the database.
    assert!(db.query_i64("SELECT count(*) FROM \"kv_chunks\"") > 20);

    // A command on the database while the server runs goes through the server (the lease).
    let added = rounds_cli(&[
        "device",
        "add",
        "--facility",
        "sunnyvale",
        "--name",
        "tablet-pg",
        "--store",
        &db.url,
        "--server",
        &format!("https://127.0.0.1:{}", server.port),
    ]);
    let token = serde_json::from_str::<serde_json::Value>(&added).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut opts = server.options();
    opts.token = token;
    let dir3 = tempfile::tempdir().unwrap();
    let mut c = Replica::open(dir3.path()).unwrap();
    c.join_facility("sunnyvale").unwrap();
    rounds_core::sync::net::sync(&mut c, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    assert!(entry_ids(&c).unwrap().contains(&written[0]));
    // An import straight into the database is refused while the server writes to it.
    let busy = rounds_cli_output(&[
        "import",
        "--store",
        &db.url,
        repo_root()
            .join("examples/sunnyvale.json")
            .to_str()
            .unwrap(),
    ]);
    assert_refused(&busy, "a rounds server runs on this database");
    // So is a push beside the server's own pusher (it would send a package twice).
    let push = rounds_cli_output(&[
        "push",
        "send",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--config",
        "/nonexistent/push.toml",
        "--store",
        &db.url,
    ]);
    assert_refused(&push, "a rounds server runs on this database");
}

/// One device (and token) per tablet, added straight into the database (no server yet).
fn devices(db: &TestDatabase, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let out = rounds_cli(&[
                "device",
                "add",
                "--facility",
                "sunnyvale",
                "--name",
                &format!("tablet-{i}"),
                "--store",
                &db.url,
            ]);
            serde_json::from_str::<serde_json::Value>(&out).unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn with_token(server: &ServerProcess, token: &str) -> rounds_core::sync::net::SyncOptions {
    let mut o = server.options();
    o.token = token.to_string();
    o
}

/// A tablet per directory, tablet `i` joined and synced once with server `i mod 2`.
async fn tablets_split(
    dirs: &[tempfile::TempDir],
    servers: &[ServerProcess],
    tokens: &[String],
) -> Vec<Replica> {
    let mut tablets = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut r = Replica::open(d.path()).unwrap();
        r.join_facility("sunnyvale").unwrap();
        let s = &servers[i % 2];
        rounds_core::sync::net::sync(&mut r, &s.url(), &with_token(s, &tokens[i]), &mut |_, _| {})
            .await
            .unwrap();
        tablets.push(r);
    }
    tablets
}

/// Each tablet logs `per` entries; their ids.
fn log_each(tablets: &mut [Replica], per: usize) -> Vec<String> {
    let mut written = Vec::new();
    for (i, t) in tablets.iter_mut().enumerate() {
        for k in 0..per {
            written.push(log(t, (i * per + k) as i64));
        }
    }
    written
}

type Synced = tokio::task::JoinHandle<(Replica, bool)>;

/// Every tablet syncs at once with server `i mod 2`, in one attempt: each task gives the
/// tablet back and whether it sent everything.
fn storm(tablets: Vec<Replica>, servers: &[ServerProcess], tokens: &[String]) -> Vec<Synced> {
    let mut storm = Vec::new();
    for (i, mut t) in tablets.into_iter().enumerate() {
        let (url, mut opts) = (
            servers[i % 2].url(),
            with_token(&servers[i % 2], &tokens[i]),
        );
        opts.attempts = 1;
        storm.push(tokio::spawn(async move {
            let r = rounds_core::sync::net::sync(&mut t, &url, &opts, &mut |_, _| {}).await;
            (t, r.is_ok_and(|r| r.unsent.is_empty()))
        }));
    }
    storm
}

/// Two servers on one database, ten tablets split between them: every tablet ends up with every
/// other tablet's entries, whichever server it talks to — including documents the other server
/// holds in memory, which learn of the writes through the change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_converge() {
    converge_on_two_servers("").await;
}

/// The same with the change feed polling only (`notify=off`: as on an engine without
/// `LISTEN`/`NOTIFY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_converge_with_the_feed_polling_only() {
    converge_on_two_servers("?notify=off").await;
}

async fn converge_on_two_servers(options: &str) {
    let (db, dir) = imported();
    let (cert, key) = certificate(dir.path());
    let tokens = devices(&db, 10);
    let url = format!("{}{options}", db.url);
    let servers = [serve_on(&url, &cert, &key), serve_on(&url, &cert, &key)];
    assert_eq!(servers[0].fingerprint, servers[1].fingerprint);
    let dirs: Vec<tempfile::TempDir> = (0..10).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut tablets = tablets_split(&dirs, &servers, &tokens).await;
    // Every tablet writes, then all sync at once, each with its own server.
    let written = log_each(&mut tablets, 4);
    let mut tablets_back = Vec::new();
    for s in storm(tablets, &servers, &tokens) {
        let (t, finished) = s.await.unwrap();
        assert!(finished);
        tablets_back.push(t);
    }
    let mut tablets = tablets_back;
    // Another round: each tablet now gets what the others sent to either server (once the
    // feed had time to tell: notifications arrive within milliseconds, a poll within 0.5 s).
    tokio::time::sleep(std::time::Duration::from_millis(if options.is_empty() {
        0
    } else {
        1200
    }))
    .await;
    for (i, t) in tablets.iter_mut().enumerate() {
        let s = &servers[i % 2];
        rounds_core::sync::net::sync(t, &s.url(), &with_token(s, &tokens[i]), &mut |_, _| {})
            .await
            .unwrap();
    }
    for (i, t) in tablets.iter().enumerate() {
        let held = entry_ids(t).unwrap();
        let missing: Vec<&String> = written.iter().filter(|id| !held.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "tablet {i} (server {}) lacks {missing:?}",
            i % 2
        );
    }
    // The servers told each other: both fed changes through the feed.
    for s in &servers {
        assert!(
            rounds_tests::metric(s, "rounds_feed_changes_total")
                .await
                .unwrap()
                > 0.0
        );
    }
}

/// A device revoked through one server is cut off on the other at its next frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_on_one_server_is_cut_off_on_the_other() {
    use futures_util::SinkExt;
    use rounds_tests::raw::{connect, join, next_message};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let (db, dir) = imported();
    let (cert, key) = certificate(dir.path());
    let token = devices(&db, 1).remove(0);
    let a = serve(&db, &cert, &key);
    let b = serve(&db, &cert, &key);
    let mut ws = connect(&b, &token).await.unwrap();
    let server_id = join(&mut ws, "raw").await;
    rounds_cli(&[
        "device",
        "revoke",
        "tablet-0",
        "--store",
        &db.url,
        "--server",
        &format!("https://127.0.0.1:{}", a.port),
    ]);
    let m = rounds_core::sync::wire::Message::Request {
        sender_id: "raw".into(),
        target_id: server_id,
        document_id: rounds_core::DocumentId::facility("sunnyvale").to_string(),
        data: {
            use automerge::sync::SyncDoc;
            let doc = automerge::Automerge::new();
            let mut state = automerge::sync::State::new();
            doc.generate_sync_message(&mut state).unwrap().encode()
        },
    };
    ws.send(Ws::Binary(m.encode().into())).await.unwrap();
    match next_message(&mut ws).await {
        Some(rounds_core::sync::wire::Message::Error { message, .. }) => {
            assert!(message.contains("revoked"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(next_message(&mut ws).await.is_none());
    let err = connect(&b, &token).await.unwrap_err();
    assert!(err.contains("401"), "{err}");
}

/// The demo's sled store, migrated: every tree and document verified, a non-empty target
/// refused, and the month's encounters and its close the same on both engines.
#[test]
fn rounds_migrate_moves_the_demo_store_and_the_month_closes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (store, out) = (dir.path().join("store"), dir.path().join("out"));
    let demo = rounds_cli_output(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--exit",
        "--store",
        store.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let db = TestDatabase::create();
    let migrated = rounds_cli(&[
        "migrate",
        "--from",
        store.to_str().unwrap(),
        "--to",
        &db.url,
    ]);
    let v: serde_json::Value = serde_json::from_str(migrated.lines().last().unwrap()).unwrap();
    assert!(v["migrated"]["documents"].as_u64().unwrap() > 40, "{v}");
    assert!(
        v["migrated"]["trees"]["chunks"].as_u64().unwrap() > 40,
        "{v}"
    );
    // Migrating again into the now non-empty database is refused, and changes nothing.
    let chunks = db.query_i64("SELECT count(*) FROM \"kv_chunks\"");
    let again = rounds_cli_output(&[
        "migrate",
        "--from",
        store.to_str().unwrap(),
        "--to",
        &db.url,
    ]);
    assert_refused(&again, "not empty");
    assert_eq!(db.query_i64("SELECT count(*) FROM \"kv_chunks\""), chunks);

    // The same questions to both engines get the same answers.
    let ask = |s: &str, args: &[&str]| -> String {
        let mut a = args.to_vec();
        a.extend(["--store", s]);
        rounds_cli(&a)
    };
    let sled = store.to_str().unwrap();
    // The demo closed November: its encounters, a second close (nothing new: no versions), and
    // October's first close (an encounter per resident).
    for (args, versions) in [
        (
            &[
                "encounters",
                "--facility",
                "sunnyvale",
                "--month",
                "2026-11",
            ][..],
            20,
        ),
        (
            &[
                "close-month",
                "--facility",
                "sunnyvale",
                "--month",
                "2026-11",
            ][..],
            0,
        ),
        (
            &[
                "close-month",
                "--facility",
                "sunnyvale",
                "--month",
                "2026-10",
            ][..],
            20,
        ),
    ] {
        let (on_sled, on_pg) = (
            comparable(&ask(sled, args)),
            comparable(&ask(&db.url, args)),
        );
        assert_eq!(on_sled, on_pg, "{args:?}");
        assert_eq!(
            on_pg.as_array().map(Vec::len),
            Some(versions),
            "{args:?}: {on_pg}"
        );
    }
}

/// A command's JSON without the times it was computed at.
fn comparable(out: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(out).unwrap();
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("computed_at");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// The store URL is checked before anything is opened, and its password never printed.
#[test]
fn hostile_store_urls_are_refused_clearly() {
    let out = rounds_cli_output(&[
        "encounters",
        "--facility",
        "f",
        "--month",
        "2026-11",
        "--store",
        "postgres://rounds:s3cret@127.0.0.1:1/nowhere",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rounds:***@127.0.0.1:1/nowhere"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let out = rounds_cli_output(&["migrate", "--from", "/nonexistent", "--to", "/tmp/dir"]);
    assert_refused(&out, "postgres://");
}

/// Two servers, ten tablets split between them, one server killed with SIGKILL in the middle of
/// their storm: its tablets reconnect to the other server and no entry is lost (checked by
/// entry id on a fresh tablet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_storm_loses_nothing_and_the_other_serves_its_tablets() {
    let (db, dir) = imported();
    let (cert, key) = certificate(dir.path());
    let tokens = devices(&db, 10);
    let mut servers = [serve(&db, &cert, &key), serve(&db, &cert, &key)];
    // Ten tablets, each with a day of entries, joined and synced once with its server.
    let dirs: Vec<tempfile::TempDir> = (0..10).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut tablets = tablets_split(&dirs, &servers, &tokens).await;
    let written = log_each(&mut tablets, 8);
    // The storm: every tablet syncs at once with its server; server 0 dies in the middle.
    let storm = storm(tablets, &servers, &tokens);
    // Kill it once the first tablet is through: the others are in the middle of their sync.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !storm.iter().any(|s| s.is_finished()) && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    servers[0].kill();
    let mut tablets = Vec::new();
    let mut cut = 0;
    for (i, s) in storm.into_iter().enumerate() {
        let (t, finished) = s.await.unwrap();
        if i % 2 == 0 {
            cut += usize::from(!finished);
        } else {
            assert!(
                finished,
                "tablet {i} of the surviving server did not finish"
            );
        }
        tablets.push(t);
    }
    eprintln!("{cut} of the killed server's 5 tablets were cut off by the kill");
    assert!(
        cut > 0,
        "the kill came after the storm: nothing was interrupted"
    );
    // Every tablet (the killed server's too) syncs with the surviving server.
    let other = &servers[1];
    for (i, t) in tablets.iter_mut().enumerate() {
        let r = rounds_core::sync::net::sync(
            t,
            &other.url(),
            &with_token(other, &tokens[i]),
            &mut |_, _| {},
        )
        .await
        .unwrap();
        assert!(r.unsent.is_empty(), "{r:?}");
    }
    let fresh = tempfile::tempdir().unwrap();
    let mut check = Replica::open(fresh.path()).unwrap();
    check.join_facility("sunnyvale").unwrap();
    sync_with(&mut check, other).await.unwrap();
    let held = entry_ids(&check).unwrap();
    let missing: Vec<&String> = written.iter().filter(|id| !held.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "lost when server 0 was killed: {missing:?}"
    );
    assert_eq!(written.len(), 80);
}

/// Encounter versions of a month in the database: all (`min_version` 1) or from a version on.
fn versions(db: &TestDatabase, month: &str, min_version: u8) -> i64 {
    let prefix: String = format!("sunnyvale\0{month}\0")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    db.query_i64(&format!(
        "SELECT count(*) FROM \"kv_encounter_versions\"
         WHERE substring(key for {}) = '\\x{prefix}'::bytea
           AND get_byte(key, length(key) - 1) >= {min_version}",
        prefix.len() / 2
    ))
}

/// Two servers both running the automatic close every second: October (past its grace window)
/// closes once, on one of them; late data sent to the other server re-bills it once; two manual
/// closes of November at the same moment, one through each server, write each version once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_closes_exactly_once_with_two_servers() {
    let (db, dir) = imported();
    let (cert, key) = certificate(dir.path());
    let token = devices(&db, 1).remove(0);
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let extra = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--close-check-seconds",
        "1",
    ];
    let servers: Vec<ServerProcess> = logs
        .iter()
        .map(|l| ServerProcess::start_logged(Path::new(&db.url), &extra, l).unwrap())
        .collect();
    let closed = |m: &str| {
        let k: String = format!("sunnyvale\0{m}\0")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        db.query_i64(&format!(
            "SELECT count(*) FROM \"kv_closed_months\" WHERE key = '\\x{k}'::bytea"
        ))
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while closed("2026-10") == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(closed("2026-10"), 1, "October was not closed automatically");
    // Several more rounds on both servers.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let originals = versions(&db, "2026-10", 1);
    assert!(originals > 0);
    assert_eq!(
        versions(&db, "2026-10", 2),
        0,
        "a second version without new data"
    );
    let closes: usize = logs
        .iter()
        .map(|l| {
            std::fs::read_to_string(l)
                .unwrap()
                .lines()
                .filter(|l| {
                    l.contains("month closed after the grace window") && l.contains("2026-10")
                })
                .count()
        })
        .sum();
    assert_eq!(closes, 1, "October closed {closes} times");
    // One server ran every round of the job (it holds the job's lease).
    let runners =
        logs.iter()
            .filter(|l| {
                std::fs::read_to_string(l).unwrap().lines().any(|l| {
                    l.contains("this server runs the job's round") && l.contains("auto-close")
                })
            })
            .count();
    assert_eq!(runners, 1, "the automatic close ran on {runners} servers");

    // Late data for October through the second server: one new version, once.
    let d = tempfile::tempdir().unwrap();
    let mut t = Replica::open(d.path()).unwrap();
    t.join_facility("sunnyvale").unwrap();
    let opts = with_token(&servers[1], &token);
    rounds_core::sync::net::sync(&mut t, &servers[1].url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    let start = Utc.with_ymd_and_hms(2026, 10, 20, 15, 0, 0).unwrap();
    t.log_interaction(
        NewInteraction {
            patient: "p-001".into(),
            staff: "rn-lee".into(),
            program: Program::Ccm,
            started_at: start,
            ended_at: start + Duration::minutes(25),
            interactive: true,
            activity: None,
            note: None,
        },
        start,
    )
    .unwrap();
    rounds_core::sync::net::sync(&mut t, &servers[1].url(), &opts, &mut |_, _| {})
        .await
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while versions(&db, "2026-10", 2) == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(versions(&db, "2026-10", 2), 1, "late data re-billed once");
    assert_eq!(versions(&db, "2026-10", 3), 0);

    // November closed by hand through both servers at the same moment.
    let close = |s: &ServerProcess| {
        let (url, store) = (format!("https://127.0.0.1:{}", s.port), db.url.clone());
        std::thread::spawn(move || {
            rounds_cli_output(&[
                "close-month",
                "--facility",
                "sunnyvale",
                "--month",
                "2026-11",
                "--store",
                &store,
                "--server",
                &url,
            ])
        })
    };
    let both = [close(&servers[0]), close(&servers[1])];
    let outs: Vec<std::process::Output> = both.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        outs.iter().any(|o| o.status.success()),
        "{:?}",
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
            .collect::<Vec<_>>()
    );
    let nov = versions(&db, "2026-11", 1);
    assert!(nov > 0);
    assert_eq!(versions(&db, "2026-11", 2), 0, "a version written twice");
}

/// An enrolment code made through one server, redeemed through both at the same moment:
/// exactly one tablet gets a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_code_is_single_use_across_servers() {
    let (db, dir) = imported();
    let (cert, key) = certificate(dir.path());
    let (a, b) = (serve(&db, &cert, &key), serve(&db, &cert, &key));
    let code: serde_json::Value = serde_json::from_str(&rounds_cli(&[
        "device",
        "code",
        "--facility",
        "sunnyvale",
        "--store",
        &db.url,
        "--server",
        &format!("https://127.0.0.1:{}", a.port),
    ]))
    .unwrap();
    let (body_a, body_b) = (
        serde_json::json!({"code": code["code"], "name": "tab-a"}),
        serde_json::json!({"code": code["code"], "name": "tab-b"}),
    );
    let path = "/api/v1/devices/enroll";
    let (ra, rb) = tokio::join!(
        rounds_tests::https_request(&a, "POST", path, Some(&body_a), None),
        rounds_tests::https_request(&b, "POST", path, Some(&body_b), None)
    );
    let statuses = [ra.unwrap().0, rb.unwrap().0];
    let ok = statuses.iter().filter(|s| s.contains("200")).count();
    assert_eq!(ok, 1, "{statuses:?}");
    assert!(statuses.iter().any(|s| s.contains("403")), "{statuses:?}");
}

/// `sslmode=verify-full` with the database's CA: the import and a server reach PostgreSQL over
/// TLS (every connection of the server's pool and its change feed), and a tablet syncs through
/// it. With a CA that did not sign the database's certificate, the command is refused, naming
/// the database (password hidden) and the certificate problem, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_reached_over_verified_tls() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let ca = rounds_tests::pg::cluster_ca();
    let tls_url = format!("{}?sslmode=verify-full&sslrootcert={ca}", db.url);
    // A CA of our own (the tablets' server certificate) did not sign the database's.
    let wrong = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url,
        cert.display()
    );
    let example = repo_root().join("examples/sunnyvale.json");
    let refused = rounds_cli_output(&["import", "--store", &wrong, example.to_str().unwrap()]);
    assert_refused(&refused, "certificate");
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'kv_chunks'"
        ),
        0,
        "nothing written over a connection that was refused"
    );
    let out = rounds_cli(&["import", "--store", &tls_url, example.to_str().unwrap()]);
    assert!(out.contains("imported sunnyvale"), "{out}");
    let server = serve_on(&tls_url, &cert, &key);
    let d = tempfile::tempdir().unwrap();
    let mut t = Replica::open(d.path()).unwrap();
    t.join_facility("sunnyvale").unwrap();
    sync_with(&mut t, &server).await.unwrap();
    let id = log(&mut t, 1);
    sync_with(&mut t, &server).await.unwrap();
    // Every connection the server holds to this database is encrypted.
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let plain = db.query_i64(&format!(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = '{name}' AND NOT s.ssl AND a.pid <> pg_backend_pid()"
    ));
    let encrypted = db.query_i64(&format!(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = '{name}' AND s.ssl"
    ));
    assert_eq!(plain, 0, "a plain connection beside the server's TLS ones");
    assert!(encrypted >= 2, "the pool and the feed: {encrypted}");
    let d2 = tempfile::tempdir().unwrap();
    let mut u = Replica::open(d2.path()).unwrap();
    u.join_facility("sunnyvale").unwrap();
    sync_with(&mut u, &server).await.unwrap();
    assert!(entry_ids(&u).unwrap().contains(&id));
}
