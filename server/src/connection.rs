//! One WebSocket connection: frames in go to the hub, frames out come from the hub.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as WsMessage, WebSocket};
use rounds_core::sync::hub::ConnId;
use tokio::sync::mpsc;

use crate::auth::Device;
use crate::server::{Outbound, Shared};

/// How often the server pings; a peer silent for three intervals is dropped.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Serve one connection until it closes or the server shuts down.
pub async fn handle(mut socket: WebSocket, shared: Arc<Shared>, device: Device) {
    let conn: ConnId = shared.next_conn.fetch_add(1, Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Outbound>();
    if let Err(reason) = shared.register(conn, tx, device.clone()).await {
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
    shared.metrics.connections_total.fetch_add(1, Relaxed);
    shared.metrics.connections_open.fetch_add(1, Relaxed);
    tracing::info!(conn, device = %device.name, "connection opened");
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
                if socket.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    break "write error on ping".to_string();
                }
            }
            incoming = socket.recv() => {
                last_heard = Instant::now();
                let frame = match incoming {
                    None => break "closed by peer".to_string(),
                    Some(Err(e)) => break format!("read error: {e}"),
                    Some(Ok(WsMessage::Binary(b))) => b,
                    Some(Ok(WsMessage::Text(_))) => {
                        shared.metrics.protocol_errors.fetch_add(1, Relaxed);
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
                shared.metrics.messages_received.fetch_add(1, Relaxed);
                shared.metrics.bytes_received.fetch_add(frame.len() as u64, Relaxed);
                if frame.len() > shared.max_frame {
                    shared.metrics.protocol_errors.fetch_add(1, Relaxed);
                    shared.protocol_error(conn, &format!("frame of {} bytes exceeds the limit of {} bytes", frame.len(), shared.max_frame)).await;
                    continue;
                }
                shared.receive(conn, frame).await;
            }
            out = rx.recv() => match out {
                Some(Outbound::Frame(bytes)) => {
                    shared.metrics.messages_sent.fetch_add(1, Relaxed);
                    shared.metrics.bytes_sent.fetch_add(bytes.len() as u64, Relaxed);
                    if let Err(e) = socket.send(WsMessage::Binary(bytes.into())).await {
                        break format!("write error: {e}");
                    }
                }
                Some(Outbound::Close(reason)) => {
                    let _ = socket.send(WsMessage::Close(None)).await;
                    break reason;
                }
                None => break "server dropped the connection".to_string(),
            },
            _ = shutdown.changed() => {
                let _ = socket.send(WsMessage::Close(None)).await;
                break "server shutting down".to_string();
            }
        }
    };
    shared.unregister(conn).await;
    shared.metrics.connections_open.fetch_sub(1, Relaxed);
    tracing::info!(conn, %reason, "connection closed");
}
