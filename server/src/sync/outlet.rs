//! A connection's outbound queue, bounded in bytes.
//!
//! The hubs queue frames for a connection without waiting (they must never wait on a peer); the
//! connection's writer task sends them. A peer that reads too slowly lets the queue grow: past
//! its byte bound the connection is cut — the writer stops at once, the reader ends, the
//! connection is unregistered — instead of buffering without end. The device reconnects and
//! resumes from its saved sync state; nothing it sent is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, watch};

/// What a connection task is told to do.
pub enum Outbound {
    Frame(Vec<u8>),
    /// A keepalive ping.
    Ping,
    /// Send a close and end the connection, for this reason.
    Close(String),
}

/// The hubs' side: queue frames for one connection.
#[derive(Clone)]
pub struct Outlet {
    tx: mpsc::UnboundedSender<Outbound>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    cut: Arc<watch::Sender<bool>>,
}

/// The writer's side.
pub struct Queue {
    rx: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
}

/// Told when the connection was cut for reading too slowly.
pub type Cut = watch::Receiver<bool>;

impl Outlet {
    /// A queue that holds at most `limit` bytes of frames not yet written to the socket.
    pub fn new(limit: usize) -> (Outlet, Queue, Cut) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let (cut, cut_rx) = watch::channel(false);
        (
            Outlet {
                tx,
                queued: queued.clone(),
                limit,
                cut: Arc::new(cut),
            },
            Queue { rx, queued },
            cut_rx,
        )
    }

    /// Queue a message. False when the connection is gone or was cut; a frame that would take
    /// the queue past its bound cuts the connection instead of being queued.
    pub fn send(&self, msg: Outbound) -> bool {
        if *self.cut.borrow() {
            return false;
        }
        let len = match &msg {
            Outbound::Frame(f) => f.len(),
            Outbound::Ping | Outbound::Close(_) => 0,
        };
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if len > 0 && before + len > self.limit {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.cut.send_replace(true);
            return false;
        }
        self.tx.send(msg).is_ok()
    }

    /// Bytes queued and not yet written.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Resolves once the connection is cut (or its outlets are gone without a cut: never).
pub async fn cut_off(cut: &mut Cut) {
    if cut.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Queue {
    /// The next message to write; None once every outlet is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        self.rx.recv().await
    }

    /// A message already queued, if any (tests).
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }

    /// A frame of `len` bytes was written to the socket.
    pub fn written(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_queue_past_its_bound_cuts_the_connection() {
        let (outlet, mut queue, cut) = Outlet::new(100);
        assert!(outlet.send(Outbound::Frame(vec![0; 60])));
        assert_eq!(outlet.queued(), 60);
        // The writer takes one and writes it: room again.
        let Some(Outbound::Frame(f)) = queue.recv().await else {
            panic!("no frame");
        };
        queue.written(f.len());
        assert!(outlet.send(Outbound::Frame(vec![0; 60])));
        assert!(!*cut.borrow());
        // Nothing written meanwhile: the next frame would pass the bound, so the connection is cut.
        assert!(!outlet.send(Outbound::Frame(vec![0; 60])));
        assert!(*cut.borrow());
        assert_eq!(outlet.queued(), 60, "the refused frame is not counted");
        // After the cut nothing more is queued, not even a ping.
        assert!(!outlet.send(Outbound::Ping));
    }
}
