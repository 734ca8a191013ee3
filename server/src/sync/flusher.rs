//! Batched flushes: every connection that wrote waits for a flush that covers its write, and one
//! fsync serves all the writers that arrived while the previous one ran.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::sync::metrics::Metrics;
use crate::sync::store::Store;

/// Handle to the flush task.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::UnboundedSender<oneshot::Sender<Result<u64, String>>>,
}

impl Flusher {
    /// Start the flush task.
    pub fn start(store: Arc<Store>, metrics: Arc<Metrics>) -> Flusher {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<u64, String>>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                // Everything written before this point is covered by the flush below.
                let target = store.written_seq();
                let started = Instant::now();
                let s = store.clone();
                let result = match tokio::task::spawn_blocking(move || s.flush()).await {
                    Ok(Ok(_)) => Ok(target),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                metrics.observe_flush(started.elapsed());
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
        Flusher { tx }
    }

    /// Wait until everything written so far is durable; returns the durable sequence number.
    pub async fn flush(&self) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| "flush task stopped".to_string())?;
        rx.await.map_err(|_| "flush task stopped".to_string())?
    }
}
