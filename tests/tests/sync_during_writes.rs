//! A nurse's write never waits behind the network: the sync shell (`sync_with` over
//! `&Mutex<Replica>`, as the mobile bindings use it) takes the replica's lock per frame. Through
//! a proxy that slows every chunk, a sync takes seconds; writes made meanwhile from another
//! thread each take a small fraction of it, and all of them reach the server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeZone;
use rounds_core::Replica;
use rounds_core::replica::NewInteraction;
use rounds_tests::{ServerProcess, sunnyvale};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Copy `from` to `to`, holding every chunk for `delay`.
async fn slow_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        tokio::time::sleep(delay).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy to `port` that holds every chunk for `delay` in both directions.
async fn slow_proxy(port: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(slow_pipe(cr, sw, delay));
            tokio::spawn(slow_pipe(sr, cw, delay));
        }
    });
    me
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_slow_sync_do_not_wait_for_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("store")).unwrap();
    let proxy = slow_proxy(server.port, Duration::from_millis(25)).await;
    let t0 = chrono::Utc
        .with_ymd_and_hms(2026, 11, 20, 15, 0, 0)
        .unwrap();
    let mut tablet = Replica::open(dir.path().join("t")).unwrap();
    tablet.import(&sunnyvale().unwrap(), t0).unwrap();
    let tablet = Arc::new(Mutex::new(tablet));

    // The sync, through the slow proxy, on its own task.
    let url = format!("wss://127.0.0.1:{proxy}/sync");
    let opts = server.options();
    let syncing = tablet.clone();
    let started = Instant::now();
    let sync = tokio::spawn(async move {
        let mut access: &Mutex<Replica> = &syncing;
        let r = rounds_core::sync::net::sync_with(&mut access, &url, &opts, &mut |_, _| {}).await;
        (r, started.elapsed())
    });

    // A nurse logging time from another thread while it runs.
    let writer = tablet.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let nurse = std::thread::spawn(move || {
        let mut latencies = Vec::new();
        let mut ids = Vec::new();
        let mut i = 0i64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 200 {
            let start = t0 + chrono::Duration::minutes(i * 5);
            let began = Instant::now();
            let entry = writer
                .lock()
                .unwrap()
                .log_interaction(
                    NewInteraction {
                        patient: "p-004".into(),
                        staff: "rn-lee".into(),
                        program: rounds_core::Program::Ccm,
                        started_at: start,
                        ended_at: start + chrono::Duration::minutes(2),
                        interactive: true,
                        activity: Some("call".into()),
                        note: None,
                    },
                    t0,
                )
                .unwrap();
            latencies.push(began.elapsed());
            ids.push(entry.id);
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (latencies, ids)
    });
    let (result, took) = sync.await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut latencies, ids) = nurse.join().unwrap();
    result.unwrap();
    assert!(
        took > Duration::from_secs(1),
        "the proxy should make the sync slow: {took:?}"
    );
    assert!(
        latencies.len() >= 10,
        "{} writes during {took:?}",
        latencies.len()
    );
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let max = *latencies.last().unwrap();
    eprintln!(
        "sync {took:?}; {} writes, p50 {:?}, p99 {p99:?}, max {max:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    // Held for the whole sync, a write would wait up to all of it; per frame, a frame at most.
    assert!(p99 < took / 5, "p99 {p99:?} against a sync of {took:?}");
    assert!(max < took / 2, "max {max:?} against a sync of {took:?}");

    // Everything written during the sync reaches the server with the next one.
    let mut access: &Mutex<Replica> = &tablet;
    let url = server.url();
    let report =
        rounds_core::sync::net::sync_with(&mut access, &url, &server.options(), &mut |_, _| {})
            .await
            .unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");
    let mut fresh = Replica::open(dir.path().join("fresh")).unwrap();
    fresh.import(&sunnyvale().unwrap(), t0).unwrap();
    rounds_tests::sync_with(&mut fresh, &server).await.unwrap();
    let month = rounds_core::Month::of(t0.date_naive());
    let seen: std::collections::BTreeSet<uuid::Uuid> = fresh
        .month_entries("p-004", month)
        .interactions
        .iter()
        .map(|i| i.id)
        .collect();
    for id in &ids {
        assert!(
            seen.contains(id),
            "interaction {id} written during the sync is missing"
        );
    }
}
