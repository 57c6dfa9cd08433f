//! A tap on a connection's client-to-backend bytes: each chunk the relay
//! moves is offered to a mirror's queue without waiting. A mirror that
//! cannot keep up loses its copy: the tap is cut (its connection closed by
//! whoever reads the queue) and never offered to again; the real
//! connection does not notice.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The queue's length in chunks (each at most 64 KiB): what a mirror may
/// fall behind before it is cut.
pub const QUEUE: usize = 16;

/// One connection's tap.
#[derive(Debug)]
pub struct Tap {
    tx: mpsc::Sender<Bytes>,
    /// Fired when the tap is cut; the mirror's connection closes on it.
    pub cut: CancellationToken,
    done: AtomicBool,
    /// Counts cuts for falling behind.
    full: IntCounter,
}

impl Tap {
    /// A tap and the queue its mirror reads, with where a cut is counted.
    pub fn new(full: IntCounter) -> (Tap, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Tap {
                tx,
                cut: CancellationToken::new(),
                done: AtomicBool::new(false),
                full,
            },
            rx,
        )
    }

    /// Offers a copy of `data`; never waits.
    pub fn offer(&self, data: &[u8]) {
        if self.done.load(Ordering::Relaxed) {
            return;
        }
        match self.tx.try_send(Bytes::copy_from_slice(data)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.full.inc();
                self.stop();
            }
            // The mirror ended on its own (and counted why).
            Err(mpsc::error::TrySendError::Closed(_)) => self.stop(),
        }
    }

    /// Whether it takes no more copies (cut, or its mirror ended).
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.done.store(true, Ordering::Relaxed);
        self.cut.cancel();
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // The connection ended: the mirror finishes what is queued and closes.
        self.done.store(true, Ordering::Relaxed);
    }
}
