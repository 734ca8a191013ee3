//! One WebSocket connection: frames in go to the hub, frames out come from the hub.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rounds_core::sync::hub::ConnId;

use crate::server::Shared;
use crate::services::auth::Device;
use crate::sync::outlet::Outbound;
use crate::sync::outlet::{Cut, Outlet, Queue, cut_off};

/// How often the server pings; a peer silent for three intervals is dropped.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Serve one connection until it closes or the server shuts down.
pub async fn handle(mut socket: WebSocket, shared: Arc<Shared>, device: Device) {
    let conn: ConnId = shared.next_conn.fetch_add(1, Relaxed);
    let (tx, queue, mut cut) = Outlet::new(shared.limits.outbound_bytes);
    if let Err(reason) = shared.register(conn, tx.clone(), device.clone()).await {
        tracing::warn!(conn, device = %device.name, %reason, "connection refused");
        let frame = rounds_core::sync::wire::Message::Error {
            sender_id: None,
            target_id: None,
            message: reason,
        }
        .encode();
        let _ = socket.send(WsMessage::Binary(frame.into())).await;
        let _ = socket.send(WsMessage::Close(None)).await;
        return;
    }
    shared.metrics.connections_total.inc();
    shared.metrics.connections_open.inc();
    tracing::info!(conn, device = %device.name, "connection opened");
    // Reading and writing are separate tasks: the connection always reads (waiting only on
    // its facility's inbox), whatever the peer does with what we send. With one task, a peer
    // that writes while we write (the device answering a burst of sync messages) deadlocks
    // the two once both sockets' buffers are full.
    let (sink, mut stream) = socket.split();
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<String>();
    let writer = tokio::spawn(write_loop(
        sink,
        queue,
        cut.clone(),
        shared.clone(),
        ended_tx,
    ));
    let mut shutdown = shared.shutdown.clone();
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut last_heard = Instant::now();
    let reason = loop {
        tokio::select! {
            _ = keepalive.tick() => {
                if last_heard.elapsed() > KEEPALIVE * 3 {
                    break "no response to pings".to_string();
                }
                let _ = tx.send(Outbound::Ping);
            }
            why = &mut ended => break why.unwrap_or_else(|_| "writer ended".to_string()),
            _ = cut_off(&mut cut) => {
                break format!(
                    "reading too slowly: more than {} bytes queued for it",
                    shared.limits.outbound_bytes
                );
            }
            incoming = stream.next() => {
                last_heard = Instant::now();
                let frame = match incoming {
                    None => break "closed by peer".to_string(),
                    Some(Err(e)) => break format!("read error: {e}"),
                    Some(Ok(WsMessage::Binary(b))) => b,
                    Some(Ok(WsMessage::Text(_))) => {
                        shared.metrics.protocol_errors.inc();
                        shared.protocol_error(conn, "text frames are not part of the protocol; send binary CBOR").await;
                        continue;
                    }
                    Some(Ok(WsMessage::Close(_))) => break "closed by peer".to_string(),
                    Some(Ok(_)) => continue,
                };
                if let Err(reason) = shared.admit_frame(&device) {
                    shared.protocol_error(conn, &reason).await;
                    continue;
                }
                shared.metrics.messages_received.inc();
                shared.metrics.bytes_received.inc_by(frame.len() as u64);
                if frame.len() > shared.max_frame {
                    shared.metrics.protocol_errors.inc();
                    shared.protocol_error(conn, &format!("frame of {} bytes exceeds the limit of {} bytes", frame.len(), shared.max_frame)).await;
                    continue;
                }
                shared.receive(conn, frame).await;
            }
            _ = shutdown.changed() => {
                let _ = tx.send(Outbound::Close("server shutting down".to_string()));
                break "server shutting down".to_string();
            }
        }
    };
    // Counted here, whichever task noticed the cut first.
    if *cut.borrow() {
        shared.metrics.slow_readers.inc();
    }
    shared.unregister(conn).await;
    // The writer sends what is queued, then a close, and ends once every sender is gone (the
    // connection table's went with `unregister`); a peer that stopped reading does not keep it.
    drop(tx);
    let abort = writer.abort_handle();
    if tokio::time::timeout(WRITER_GRACE, writer).await.is_err() {
        abort.abort();
    }
    shared.metrics.connections_open.dec();
    tracing::info!(conn, %reason, "connection closed");
}

/// How long a closing connection's writer may take to send what is queued.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// Send what the hub queued for this connection until a close, an error or the queue's end;
/// `ended` says why when the writer stops first.
async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut queue: Queue,
    mut cut: Cut,
    shared: Arc<Shared>,
    ended: tokio::sync::oneshot::Sender<String>,
) {
    let why = loop {
        let next = tokio::select! {
            next = queue.recv() => next,
            // Cut for reading too slowly: what is queued is dropped, not written.
            _ = cut_off(&mut cut) => break "cut: reading too slowly".to_string(),
        };
        match next {
            Some(Outbound::Frame(bytes)) => {
                let len = bytes.len();
                shared.metrics.messages_sent.inc();
                shared.metrics.bytes_sent.inc_by(len as u64);
                let sent = tokio::select! {
                    sent = sink.send(WsMessage::Binary(bytes.into())) => sent,
                    _ = cut_off(&mut cut) => break "cut: reading too slowly".to_string(),
                };
                queue.written(len);
                if let Err(e) = sent {
                    break format!("write error: {e}");
                }
            }
            Some(Outbound::Ping) => {
                if sink.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    break "write error on ping".to_string();
                }
            }
            Some(Outbound::Close(reason)) => {
                let _ = sink.send(WsMessage::Close(None)).await;
                break reason;
            }
            None => {
                let _ = sink.send(WsMessage::Close(None)).await;
                break "server dropped the connection".to_string();
            }
        }
    };
    let _ = ended.send(why);
}
