//! The TCP byte relay: moves bytes both ways between two connected sockets
//! until both directions have ended, keeping half-close exact.
//!
//! An idle connection holds no buffer: each direction waits for readiness,
//! then reads into a per-thread scratch buffer and writes straight on. Only
//! bytes the peer cannot take yet are copied into a buffer of the connection's
//! own, freed as soon as they are written. A direction whose read fills the
//! whole scratch buffer is a bulk flow: with `zero_copy`, it switches to
//! `splice(2)` for the rest of its life.

mod splice;

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::task::Poll;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;

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
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle: Duration,
    stop: &CancellationToken,
    zero_copy: Option<&IntCounter>,
    up_meter: Meter<'_>,
    down_meter: Meter<'_>,
) -> Outcome {
    let last = AtomicU64::new(now_ms());
    let ended = AtomicU8::new(0);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let (client_read, client_write) = client.split();
    let (backend_read, backend_write) = backend.split();
    let both = async {
        tokio::try_join!(
            pump(
                client_read,
                backend_write,
                &last,
                &ended,
                &up,
                up_meter,
                zero_copy
            ),
            pump(
                backend_read,
                client_write,
                &last,
                &ended,
                &down,
                down_meter,
                zero_copy
            )
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

/// Shared counters are flushed at most this often (and when a direction
/// ends), so that connections on different cores do not contend on them for
/// every chunk; scrapes lag by at most this much.
const FLUSH_MS: u64 = 200;

/// Local byte counts of one direction, added to the shared meters in batches.
struct Tally<'a> {
    meter: Meter<'a>,
    read: u64,
    written: u64,
    flushed_at: u64,
}

impl Tally<'_> {
    fn add(&mut self, read: usize, written: usize, now: u64) {
        self.read += read as u64;
        self.written += written as u64;
        if now >= self.flushed_at + FLUSH_MS {
            self.flush(now);
        }
    }

    fn flush(&mut self, now: u64) {
        if self.read > 0 {
            self.meter.read.inc_by(std::mem::take(&mut self.read));
        }
        if self.written > 0 {
            self.meter.written.inc_by(std::mem::take(&mut self.written));
        }
        self.flushed_at = now;
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush(0);
    }
}

enum Step {
    Eof,
    Moved { read: usize, written: usize },
}

/// Copies `from` → `to` until EOF, then shuts down `to`'s write half.
///
/// The read and the first write attempt happen in one poll, with the
/// per-thread scratch buffer borrowed only inside it; tokio's own read path
/// is used so that a short read clears readiness without an extra syscall.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    last: &AtomicU64,
    ended: &AtomicU8,
    total: &AtomicU64,
    meter: Meter<'_>,
    zero_copy: Option<&IntCounter>,
) -> io::Result<()> {
    let mut tally = Tally {
        meter,
        read: 0,
        written: 0,
        flushed_at: now_ms(),
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let step = poll_fn(|cx| {
            SCRATCH_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut from).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(Step::Eof));
                }
                let written = match Pin::new(&mut to).poll_write(cx, &buf[..n]) {
                    Poll::Ready(Ok(w)) => w,
                    Poll::Pending => 0,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                };
                if written < n {
                    pending.extend_from_slice(&buf[written..n]);
                }
                Poll::Ready(Ok(Step::Moved { read: n, written }))
            })
        })
        .await?;
        let now = now_ms();
        let read = match step {
            Step::Eof => break,
            Step::Moved { read, written } => {
                total.fetch_add(read as u64, Ordering::Relaxed);
                tally.add(read, written, now);
                last.store(now, Ordering::Relaxed);
                read
            }
        };
        while !pending.is_empty() {
            let w = to.write(&pending).await?;
            pending.drain(..w);
            let now = now_ms();
            tally.add(0, w, now);
            last.store(now, Ordering::Relaxed);
        }
        if pending.capacity() > 0 {
            pending = Vec::new();
        }
        // A read that filled the whole scratch buffer marks a bulk flow.
        if let Some(switched) = zero_copy.filter(|_| read == SCRATCH) {
            match splice::Pipe::new() {
                Ok(mut pipe) => {
                    switched.inc();
                    // Boxed: only bulk flows pay for its state, not every connection's task.
                    Box::pin(splice::forward(
                        from.as_ref(),
                        to.as_ref(),
                        &mut pipe,
                        |read, written| {
                            let now = now_ms();
                            total.fetch_add(read as u64, Ordering::Relaxed);
                            tally.add(read, written, now);
                            last.store(now, Ordering::Relaxed);
                        },
                    ))
                    .await?;
                    break;
                }
                // Out of descriptors: copying still works.
                Err(e) => tracing::debug!(error = %e, "cannot make a pipe; relaying by copy"),
            }
        }
    }
    // EOF from `from`. When the other direction has ended too, both sockets
    // are closed right after this, and a shutdown first would be a wasted syscall.
    if ended.fetch_add(1, Ordering::Relaxed) == 0 {
        if let Err(e) = to.shutdown().await {
            // The peer may already be gone; that ends the other direction anyway.
            tracing::debug!(error = %e, "shutdown(SHUT_WR) failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection's task holds this state, idle or not: keep it
    /// under 1 KiB (the splice path is boxed, so bulk-only state is not in it).
    #[tokio::test]
    async fn relay_state_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut b, _) = l.accept().await.unwrap();
        let c = IntCounter::new("c", "c").unwrap();
        let stop = CancellationToken::new();
        let meter = || Meter {
            read: &c,
            written: &c,
        };
        let f = relay(
            &mut a,
            &mut b,
            Duration::from_secs(1),
            &stop,
            Some(&c),
            meter(),
            meter(),
        );
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1024, "the relay future grew to {size} bytes");
    }
}
