//! The TCP byte relay: moves bytes both ways between two connected sockets
//! until both directions have ended, keeping half-close exact.
//!
//! An idle connection holds no buffer: each direction waits for readiness,
//! then reads into a per-thread scratch buffer and writes straight on. Only
//! bytes the peer cannot take yet are copied into a buffer of the connection's
//! own, freed as soon as they are written. This module is the seam for a
//! zero-copy (splice) relay.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::pool::now_ms;

/// 64 KiB matches the largest read a loopback socket usually returns and is
/// allocated once per worker thread, not per connection.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// Byte counters one direction adds to as it moves data.
pub struct Meter<'a> {
    pub read: &'a IntCounter,
    pub written: &'a IntCounter,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their write half.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// The daemon's shutdown grace ran out.
    Shutdown,
    /// A socket error (reset, broken pipe) ended it.
    Error,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::Shutdown => "shutdown",
            End::Error => "error",
        }
    }
}

/// What a relay did.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Bytes from the client to the backend.
    pub up: u64,
    /// Bytes from the backend to the client.
    pub down: u64,
    pub end: End,
}

/// Relays between `client` and `backend` until both directions end, `idle`
/// passes with no traffic, or `stop` fires.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    stop: &CancellationToken,
    up_meter: Meter<'_>,
    down_meter: Meter<'_>,
) -> Outcome {
    let last = AtomicU64::new(now_ms());
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let both = async {
        tokio::try_join!(
            pump(client, backend, &last, &up, up_meter),
            pump(backend, client, &last, &down, down_meter)
        )
    };
    let end = tokio::select! {
        r = both => if r.is_ok() { End::Closed } else { End::Error },
        _ = idle_watch(&last, idle) => End::Idle,
        _ = stop.cancelled() => End::Shutdown,
    };
    Outcome {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        end,
    }
}

/// Resolves once `idle` has passed since the last recorded activity.
async fn idle_watch(last: &AtomicU64, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let deadline = last.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = now_ms();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}

enum Step {
    Eof,
    Moved { read: usize, written: usize },
    NotReady,
}

/// Copies `from` → `to` until EOF, then shuts down `to`'s write half.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    last: &AtomicU64,
    total: &AtomicU64,
    meter: Meter<'_>,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        let step = SCRATCH_BUF.with(|buf| -> io::Result<Step> {
            let mut buf = buf.borrow_mut();
            let n = match from.try_read(&mut buf) {
                Ok(0) => return Ok(Step::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::NotReady),
                Err(e) => return Err(e),
            };
            let written = match to.try_write(&buf[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            if written < n {
                pending.extend_from_slice(&buf[written..n]);
            }
            Ok(Step::Moved { read: n, written })
        })?;
        match step {
            Step::NotReady => continue,
            Step::Eof => {
                shutdown_write(to);
                return Ok(());
            }
            Step::Moved { read, written } => {
                total.fetch_add(read as u64, Ordering::Relaxed);
                meter.read.inc_by(read as u64);
                meter.written.inc_by(written as u64);
                last.store(now_ms(), Ordering::Relaxed);
            }
        }
        while !pending.is_empty() {
            to.writable().await?;
            match to.try_write(&pending) {
                Ok(w) => {
                    pending.drain(..w);
                    meter.written.inc_by(w as u64);
                    last.store(now_ms(), Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if pending.capacity() > 0 {
            pending = Vec::new();
        }
    }
}

fn shutdown_write(s: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(s).shutdown(Shutdown::Write) {
        // The peer may already be gone; that ends the other direction anyway.
        tracing::debug!(error = %e, "shutdown(SHUT_WR) failed");
    }
}
