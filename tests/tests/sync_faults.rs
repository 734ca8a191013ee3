//! The network misbehaves, peers misbehave: nothing is lost, nothing is duplicated, the server
//! keeps serving.

use chrono::{Duration, TimeZone, Utc};
use futures_util::{SinkExt, StreamExt};
use rounds_core::replica::NewInteraction;
use rounds_core::sync::wire::{Message, PeerMetadata};
use rounds_core::{Program, Replica};
use rounds_tests::{
    DEV_TOKEN, ServerProcess, cutting_proxy, entry_ids, https_get, sunnyvale, sync_with, tls_client,
};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn device(dir: &std::path::Path) -> Replica {
    let mut r = Replica::open(dir).unwrap();
    r.import(
        &sunnyvale().unwrap(),
        Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap(),
    )
    .unwrap();
    r
}

fn log(r: &mut Replica, k: i64) {
    let start = Utc.with_ymd_and_hms(2026, 12, 3, 14, 0, 0).unwrap() + Duration::minutes(k * 37);
    r.log_interaction(
        NewInteraction {
            patient: ["p-001", "p-002", "p-005"][(k % 3) as usize].into(),
            staff: "rn-lee".into(),
            program: Program::Ccm,
            started_at: start,
            ended_at: start + Duration::minutes(7),
            interactive: true,
            activity: None,
            note: None,
        },
        start,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_after_n_bytes_retries_and_converges_exactly_once() {
    let store = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(store.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = device(dir.path());
    let mut k = 0;
    for cut_at in [
        60usize, 300, 700, 1_500, 3_000, 6_000, 12_000, 25_000, 50_000, 100_000,
    ] {
        for _ in 0..3 {
            log(&mut d, k);
            k += 1;
        }
        // Two cut connections, then a clean one.
        let proxy = cutting_proxy(server.port, cut_at, 2).await.unwrap();
        let mut opts = server.options();
        opts.idle_timeout = std::time::Duration::from_secs(5);
        let url = format!("wss://127.0.0.1:{proxy}/sync");
        let report = rounds_core::sync::net::sync(&mut d, &url, &opts, &mut |_, _| {})
            .await
            .unwrap();
        assert!(report.unsent.is_empty(), "cut at {cut_at}: {report:?}");
    }
    // The server holds each entry exactly once: a new device sees exactly the device's entries.
    let other = tempfile::tempdir().unwrap();
    let mut fresh = Replica::open(other.path()).unwrap();
    fresh.join_facility("sunnyvale").unwrap();
    sync_with(&mut fresh, &server).await.unwrap();
    let want = entry_ids(&d).unwrap();
    let got = entry_ids(&fresh).unwrap();
    assert_eq!(got, want);
    let mut dedup = got.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), got.len());
    let (data, _) = fresh.export().unwrap();
    let minutes: i64 = data
        .interactions
        .iter()
        .filter(|i| {
            i.started_at > chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").unwrap()
        })
        .map(|i| (i.ended_at - i.started_at).num_minutes())
        .sum();
    assert_eq!(minutes, 7 * k);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(server: &ServerProcess) -> Socket {
    let mut req = format!("wss://127.0.0.1:{}/sync", server.port)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {DEV_TOKEN}").parse().unwrap(),
    );
    let connector = tokio_tungstenite::Connector::Rustls(tls_client(server).unwrap());
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
            .unwrap();
    ws
}

fn join() -> Vec<u8> {
    Message::Join {
        sender_id: "raw-peer".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    }
    .encode()
}

/// Read until the server closes; returns the error message it sent, if any.
async fn closed_with(ws: &mut Socket) -> Option<String> {
    let mut error = None;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Ws::Binary(b)))) => {
                if let Ok(Message::Error { message, .. }) = Message::decode(&b) {
                    error = Some(message);
                }
            }
            Ok(Some(Ok(Ws::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return error,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("server did not close the connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_connection() {
    let store = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(store.path(), &["--max-frame", "65536"]).unwrap();

    let mut ws = raw(&server).await;
    ws.send(Ws::Text("hello".into())).await.unwrap();
    assert!(closed_with(&mut ws).await.unwrap().contains("text frames"));

    let mut ws = raw(&server).await;
    ws.send(Ws::Binary(vec![0xff, 0x00, 0x13].into()))
        .await
        .unwrap();
    assert!(closed_with(&mut ws).await.unwrap().contains("not CBOR"));

    let mut ws = raw(&server).await;
    let bogus = {
        let mut out = Vec::new();
        ciborium_like_map(&mut out);
        out
    };
    ws.send(Ws::Binary(bogus.into())).await.unwrap();
    assert!(
        closed_with(&mut ws)
            .await
            .unwrap()
            .contains("unknown message type")
    );

    let mut ws = raw(&server).await;
    ws.send(Ws::Binary(join().into())).await.unwrap();
    let peer = loop {
        match ws.next().await {
            Some(Ok(Ws::Binary(b))) => break b,
            Some(Ok(_)) => continue,
            _ => panic!("no peer message"),
        }
    };
    let Ok(Message::Peer {
        sender_id: server_id,
        ..
    }) = Message::decode(&peer)
    else {
        panic!("not a peer message")
    };
    let doc = rounds_core::DocumentId::facility("sunnyvale").to_string();
    let sync = Message::Sync {
        sender_id: "raw-peer".into(),
        target_id: server_id,
        document_id: doc,
        data: vec![1, 2, 3, 4],
    };
    ws.send(Ws::Binary(sync.encode().into())).await.unwrap();
    assert!(
        closed_with(&mut ws)
            .await
            .unwrap()
            .contains("not an Automerge sync message")
    );

    let mut ws = raw(&server).await;
    let _ = ws.send(Ws::Binary(vec![0u8; 200_000].into())).await;
    closed_with(&mut ws).await;

    // A request before the handshake is refused too.
    let mut ws = raw(&server).await;
    let early = Message::Request {
        sender_id: "x".into(),
        target_id: "y".into(),
        document_id: "z".into(),
        data: vec![],
    };
    ws.send(Ws::Binary(early.encode().into())).await.unwrap();
    assert!(closed_with(&mut ws).await.unwrap().contains("join"));

    // The server keeps serving: a device syncs normally, and the errors were counted.
    let dir = tempfile::tempdir().unwrap();
    let mut d = device(dir.path());
    log(&mut d, 1);
    let report = sync_with(&mut d, &server).await.unwrap();
    assert!(report.unsent.is_empty());
    let (status, metrics) = https_get(&server, "/metrics").await.unwrap();
    assert!(status.contains("200"), "{status}");
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rounds_protocol_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "{metrics}");
    let (status, body) = https_get(&server, "/healthz").await.unwrap();
    assert!(status.contains("200") && body.contains("ok"));
}

/// `{"type": "bogus"}` in CBOR, by hand.
fn ciborium_like_map(out: &mut Vec<u8>) {
    out.push(0xa1);
    out.push(0x64);
    out.extend(b"type");
    out.push(0x65);
    out.extend(b"bogus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_at_the_upgrade() {
    let store = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(store.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = device(dir.path());
    let mut opts = server.options();
    opts.token = "wrong".into();
    opts.attempts = 1;
    let err = rounds_core::sync::net::sync(&mut d, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

/// The platform's verifier (what the tablets use without a pinned fingerprint) refuses a server
/// whose certificate no trusted root signed — the self-signed one a test server makes — before
/// any frame; pinning that certificate's fingerprint syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_verifier_refuses_an_untrusted_certificate_and_a_pin_accepts_it() {
    let store = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(store.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d = device(dir.path());
    log(&mut d, 1);
    let before = entry_ids(&d).unwrap();
    let mut opts = server.options();
    opts.trust = rounds_core::sync::net::Trust::Platform;
    opts.attempts = 1;
    let err = rounds_core::sync::net::sync(&mut d, &server.url(), &opts, &mut |_, _| {})
        .await
        .unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(text.contains("certificate"), "{err}");
    assert_eq!(
        entry_ids(&d).unwrap(),
        before,
        "the entries stay on the device"
    );
    let pinned = sync_with(&mut d, &server).await.unwrap();
    assert!(pinned.unsent.is_empty(), "{pinned:?}");
}

/// A server that takes the device's join, then only sends keep-alive pings and never answers a
/// sync message: the device's idle timeout counts from the last sync frame, so pings do not keep
/// a stalled session open forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_alone_do_not_keep_a_stalled_sync_open() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let mut ping = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    if ws.send(Ws::Ping(Vec::new().into())).await.is_err() {
                        return;
                    }
                }
                m = ws.next() => match m {
                    Some(Ok(Ws::Binary(b))) => {
                        if let Ok(Message::Join { sender_id, .. }) = Message::decode(&b) {
                            let peer = Message::Peer {
                                sender_id: "rounds-stalled".into(),
                                target_id: sender_id,
                                peer_metadata: PeerMetadata::default(),
                                selected_protocol_version: "1".into(),
                            };
                            let _ = ws.send(Ws::Binary(peer.encode().into())).await;
                        }
                        // Sync messages: never answered.
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut d = device(dir.path());
    log(&mut d, 0);
    let mut opts = rounds_core::sync::net::SyncOptions::new(
        "token",
        rounds_core::sync::net::Trust::SystemRoots,
    );
    opts.idle_timeout = std::time::Duration::from_secs(2);
    opts.attempts = 1;
    let url = format!("ws://127.0.0.1:{port}/sync");
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        rounds_core::sync::net::sync(&mut d, &url, &opts, &mut |_, _| {}),
    )
    .await
    .expect("the stalled session ended at its idle timeout, not never");
    match outcome {
        Err(rounds_core::sync::net::NetError::GaveUp { last, .. }) => {
            assert!(last.starts_with("no message from the server"), "{last}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// Join as `me` and ask for `doc` (knowing nothing of it).
async fn join_and_request(
    ws: &mut rounds_tests::raw::Socket,
    me: &str,
    doc: rounds_core::DocumentId,
) {
    let server_id = rounds_tests::raw::join(ws, me).await;
    let data = automerge::sync::SyncDoc::generate_sync_message(
        &automerge::Automerge::new(),
        &mut automerge::sync::State::new(),
    )
    .unwrap()
    .encode();
    rounds_tests::raw::send(
        ws,
        Message::Request {
            sender_id: me.into(),
            target_id: server_id,
            document_id: doc.to_string(),
            data,
        },
    )
    .await;
}

/// A peer that does not read what the server sends is cut once more than `--max-outbound-bytes`
/// wait for it, instead of being buffered without end; the other connections go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_and_the_rest_go_on() {
    use rounds_tests::raw;
    let store = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with(store.path(), &["--max-outbound-bytes", "1048576"]).unwrap();
    // The server holds the facility.
    let dir = tempfile::tempdir().unwrap();
    let mut d = device(dir.path());
    sync_with(&mut d, &server).await.unwrap();
    let fac = rounds_core::DocumentId::facility("sunnyvale");
    // The slow reader joins, asks for the facility, reads the answer, then nothing more.
    let mut slow = raw::connect_slow_reader(&server, DEV_TOKEN).await.unwrap();
    join_and_request(&mut slow, "slow-reader", fac).await;
    assert!(matches!(
        raw::next_message(&mut slow).await,
        Some(Message::Sync { .. })
    ));
    // Another peer of the same document sends ephemeral messages: 25 MiB relayed to the slow one.
    let mut busy = raw::connect(&server, DEV_TOKEN).await.unwrap();
    join_and_request(&mut busy, "busy-peer", fac).await;
    assert!(matches!(
        raw::next_message(&mut busy).await,
        Some(Message::Sync { .. })
    ));
    let ephemeral = |count: u64, len: usize| Message::Ephemeral {
        sender_id: "busy-peer".into(),
        target_id: String::new(),
        document_id: fac.to_string(),
        session_id: "s".into(),
        count,
        data: vec![7; len],
    };
    for count in 1..=100u64 {
        raw::send(&mut busy, ephemeral(count, 256 << 10)).await;
    }
    // The slow reader was cut: counted, and its socket ends once what was in flight is read.
    let mut cut = false;
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = https_get(&server, "/metrics").await.unwrap().1;
        if metrics.contains("rounds_slow_readers_total 1") {
            cut = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(cut, "the slow reader was not cut: {metrics}");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(Ok(_)) = slow.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the slow reader's connection stayed open");
    // The rest go on: the busy peer is still served, and a device syncs.
    raw::send(&mut busy, ephemeral(101, 1)).await;
    log(&mut d, 1);
    let report = sync_with(&mut d, &server).await.unwrap();
    assert!(report.unsent.is_empty(), "{report:?}");
}
