//! The TCP byte relay: moves bytes both ways between two connected sockets
//! until both directions have ended, keeping half-close exact.
//!
//! An idle connection holds no buffer: each direction waits for readiness,
//! then reads into a per-thread scratch buffer and writes straight on. Only
//! bytes the peer cannot take yet are copied into a buffer of the connection's
//! own, freed as soon as they are written. A direction whose read fills the
//! whole scratch buffer is a bulk flow: with `zero_copy`, it switches to
//! `splice(2)` for the rest of its life.
//!
//! TCP keepalive on the backend socket is turned on by the relay's timer
//! once the connection has lived a moment (`KEEPALIVE_AFTER_MS`), not when it
//! is made: a short connection ends before a probe could ever be due, and
//! skips the four `setsockopt` calls. The kernel counts the keepalive idle
//! time from the last byte received, so probes fall due exactly when they
//! would have had keepalive been on from the connect.
//!
//! It runs past 400 lines with its tests; the relay's two pumps, its one
//! timer and the hand-over's safe point are read together, and what stands
//! alone is beside it (`end.rs`, `splice.rs`).
//!
//! Safety: the one unsafe call here borrows the backend socket's descriptor
//! to set keepalive on it (`Keepalive::turn_on`) while `relay` holds the
//! `&mut TcpStream` it came from, so the descriptor is open and the same
//! socket's; `splice.rs` keeps its own.
//!
//! An abortive close stays abortive: when one side resets (or a socket call
//! on it fails), the other side is closed with `SO_LINGER {1, 0}`, so it sees
//! a reset too, never a clean end that would make a cut-off transfer look
//! complete.

mod end;
pub mod rate;
mod ring;
mod splice;
mod streams;
pub mod tap;

use end::Broken;
pub use end::{RelayEnd, Side};
pub use streams::relay_streams;

use std::cell::RefCell;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
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

/// What a relay did.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Bytes from the client to the backend.
    pub up: u64,
    /// Bytes from the backend to the client.
    pub down: u64,
    /// How it ended.
    pub end: RelayEnd,
    /// Whose EOF came first, if either side closed.
    pub first_eof: Option<Side>,
}

/// A connection's timers: how long it may stay silent, and the keepalive
/// idle time to turn on for the backend socket (`None`: leave it as it is).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub idle: Duration,
    pub keepalive: Option<Duration>,
}

/// Keepalive is turned on for the backend socket once the connection has
/// lived this long (or half its keepalive idle time, if that is shorter).
const KEEPALIVE_AFTER_MS: u64 = 1000;

/// Relays between `client` and `backend` until both directions end, `idle`
/// passes with no traffic, or `stop` fires.
pub async fn relay(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    timers: Timers,
    stop: Stops<'_>,
    splice: Splice<'_>,
    up_meter: Meter<'_>,
    down_meter: Meter<'_>,
) -> Outcome {
    if crate::engine::uring() && splice.limits.is_none() && crate::engine::ring::here() {
        crate::engine::relayed_on_ring();
        // Boxed: inline, the ring relay's 2,192 bytes would set every
        // connection's task size, epoll's too.
        let meters = (up_meter, down_meter);
        return Box::pin(ring::relay((client, backend), timers, stop, splice, meters)).await;
    }
    let (progress, mut keepalive, idle_ms) = start(timers, backend);
    // The pumps borrow both sockets; they end with this block.
    let end = {
        let (client_read, client_write) = client.split();
        let (backend_read, backend_write) = backend.split();
        let both = async {
            tokio::try_join!(
                pump(
                    (client_read, Side::Client),
                    backend_write,
                    &progress,
                    up_meter,
                    &splice,
                ),
                pump(
                    (backend_read, Side::Backend),
                    client_write,
                    &progress,
                    down_meter,
                    &splice,
                )
            )
        };
        tokio::pin!(both);
        watch!(both, &progress, (idle_ms, &mut keepalive), &stop)
    };
    ended(end, (client, backend), &progress)
}

/// A relay's shared state, its keepalive timer and its idle time in ms.
fn start(timers: Timers, backend: &TcpStream) -> (Progress, Keepalive, u64) {
    let started = now_ms();
    let progress = Progress {
        last: AtomicU64::new(started),
        ended: AtomicU8::new(0),
        holding: AtomicU8::new(0),
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
    };
    // Turned on once; kept outside the relay's loop, which may make a new idle watch.
    let keepalive = Keepalive::later(timers.keepalive, started, backend.as_raw_fd());
    (progress, keepalive, timers.idle.as_millis() as u64)
}

/// Waits for both directions to end (`both`, pinned), the connection to
/// stay silent for `idle_ms`, or a stop; on the way turns keepalive on. A
/// macro, not a function: inline, its state shares the relay's, and every
/// connection's task stays a step of tokio's task cell smaller.
macro_rules! watch {
    ($both:ident, $progress:expr, ($idle_ms:expr, $keepalive:expr), $stop:expr) => {{
        let (progress, stop): (&Progress, &Stops<'_>) = ($progress, $stop);
        let mut may_hand_over = true;
        loop {
            tokio::select! {
                r = &mut $both => break r.err().unwrap_or(RelayEnd::Closed),
                _ = $crate::relay::idle_watch(&progress.last, $idle_ms, $keepalive) => break RelayEnd::Idle,
                _ = stop.hard.cancelled() => break RelayEnd::Shutdown,
                _ = stop.handover.cancelled(), if may_hand_over => {
                    // Safe only while both directions wait to read with
                    // nothing held: dropping the pumps then loses no byte.
                    // Otherwise the connection finishes here (it drains).
                    if progress.holding.load(Ordering::Relaxed) == 0
                        && progress.ended.load(Ordering::Relaxed) == 0
                    {
                        break RelayEnd::HandedOver;
                    }
                    may_hand_over = false;
                }
            }
        }
    }};
}
use watch;

/// What a relay that ended with `end` did; an abort on one side becomes
/// one on the other.
fn ended(
    end: RelayEnd,
    (client, backend): (&TcpStream, &TcpStream),
    progress: &Progress,
) -> Outcome {
    if let RelayEnd::Reset(side) | RelayEnd::Error(side) = end {
        // The other side learns of the abort as an abort: a reset on close.
        let other = match side {
            Side::Client => backend,
            Side::Backend => client,
        };
        if let Err(e) = socket2::SockRef::from(other).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, "cannot set SO_LINGER for an abortive close");
        }
    }
    Outcome {
        first_eof: match progress.ended.load(Ordering::Relaxed) {
            1 => Some(Side::Client),
            2 => Some(Side::Backend),
            _ => None,
        },
        up: progress.up.load(Ordering::Relaxed),
        down: progress.down.load(Ordering::Relaxed),
        end,
    }
}

/// Whether bulk directions may switch to splice(2) (`zero_copy`), where
/// each switch is counted, and the byte-rate limits of the connection.
pub struct Splice<'a> {
    /// With `zero_copy`: counts the directions that switched (`None`: none may).
    pub switched: Option<&'a IntCounter>,
    /// The connection's byte-rate limits, if it has any.
    pub limits: Option<&'a rate::RateLimits>,
}

/// What ends a relay from outside.
pub struct Stops<'a> {
    /// Ends it at once (the grace is over).
    pub hard: &'a CancellationToken,
    /// Asks it to stop at a safe point, for a new process to take over.
    pub handover: &'a CancellationToken,
}

/// What both directions of one relay share: one reference per direction
/// instead of four keeps every connection's task small.
struct Progress {
    /// When a byte last moved either way.
    last: AtomicU64,
    /// Which side's EOF came first: 0 none yet, 1 the client's, 2 the backend's.
    ended: AtomicU8,
    /// Directions holding bytes in this process (unwritten, or in a splice
    /// pipe): while any does, the connection cannot be handed over.
    holding: AtomicU8,
    /// Bytes from the client.
    up: AtomicU64,
    /// Bytes from the backend.
    down: AtomicU64,
}

/// Keepalive to turn on for the backend socket `fd` at `at_ms` (never, once
/// that is `u64::MAX`), with `idle_ms` of silence before probes.
struct Keepalive {
    at_ms: u64,
    idle_ms: u32,
    fd: RawFd,
}

impl Keepalive {
    fn later(idle: Option<Duration>, started: u64, fd: RawFd) -> Keepalive {
        let idle_ms = idle.map_or(0, |d| d.as_millis().min(u32::MAX as u128) as u32);
        let at_ms = match idle {
            Some(_) => started + KEEPALIVE_AFTER_MS.min(idle_ms as u64 / 2),
            None => u64::MAX,
        };
        Keepalive { at_ms, idle_ms, fd }
    }

    fn turn_on(&mut self) {
        self.at_ms = u64::MAX;
        // SAFETY: `fd` is the backend socket's, taken from the `&mut TcpStream`
        // that `relay` borrows (through its halves) for as long as this watch
        // runs, so the descriptor is open and the same socket's.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let idle = Duration::from_millis(self.idle_ms as u64);
        if let Err(e) = crate::net::keepalive(socket2::SockRef::from(&fd), Some(idle)) {
            tracing::debug!(error = %e, "cannot turn keepalive on for a backend connection");
        }
    }
}

/// Resolves once `idle_ms` has passed since the last recorded activity; on
/// the way, turns `keepalive` on when it is due (one timer for both).
async fn idle_watch(last: &AtomicU64, idle_ms: u64, keepalive: &mut Keepalive) {
    loop {
        let deadline = last.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = now_ms();
        if now >= deadline {
            return;
        }
        if now >= keepalive.at_ms {
            keepalive.turn_on();
            continue;
        }
        let wake = deadline.min(keepalive.at_ms);
        tokio::time::sleep(Duration::from_millis(wake - now)).await;
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

impl<'a> Tally<'a> {
    fn new(meter: Meter<'a>) -> Tally<'a> {
        Tally {
            meter,
            read: 0,
            written: 0,
            flushed_at: now_ms(),
        }
    }

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
    (mut from, side): (ReadHalf<'_>, Side),
    mut to: WriteHalf<'_>,
    progress: &Progress,
    meter: Meter<'_>,
    splice: &Splice<'_>,
) -> Result<(), RelayEnd> {
    let (last, ended) = (&progress.last, &progress.ended);
    let total = match side {
        Side::Client => &progress.up,
        Side::Backend => &progress.down,
    };
    let limit = splice.limits.map(|l| match side {
        Side::Client => &l.up,
        Side::Backend => &l.down,
    });
    let tapped = side == Side::Client && splice.limits.is_some_and(|l| l.tap.is_some());
    if let Some(limit) = limit.filter(|l| l.limits() || tapped) {
        // Boxed: an unlimited connection's task does not carry its state.
        return Box::pin(limited(
            (from, side),
            to,
            progress,
            Tally::new(meter),
            (splice, limit),
        ))
        .await;
    }
    let mut tally = Tally::new(meter);
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let step = poll_fn(|cx| {
            SCRATCH_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut from).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Broken::read(e))),
                    Poll::Ready(Ok(())) => {}
                }
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(Step::Eof));
                }
                let written = match Pin::new(&mut to).poll_write(cx, &buf[..n]) {
                    Poll::Ready(Ok(w)) => w,
                    Poll::Pending => 0,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Broken::write(e))),
                };
                if written < n {
                    pending.extend_from_slice(&buf[written..n]);
                }
                Poll::Ready(Ok(Step::Moved { read: n, written }))
            })
        })
        .await
        .map_err(|b: Broken| b.end(side))?;
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
        let held = !pending.is_empty();
        if held {
            progress.holding.fetch_add(1, Ordering::Relaxed);
        }
        while !pending.is_empty() {
            let w = to
                .write(&pending)
                .await
                .map_err(|e| Broken::write(e).end(side))?;
            pending.drain(..w);
            let now = now_ms();
            tally.add(0, w, now);
            last.store(now, Ordering::Relaxed);
        }
        if held {
            progress.holding.fetch_sub(1, Ordering::Relaxed);
        }
        if pending.capacity() > 0 {
            pending = Vec::new();
        }
        // A read that filled the whole scratch buffer marks a bulk flow.
        if let (Some(switched), SCRATCH) = (splice.switched, read) {
            match splice::Pipe::new() {
                Ok(mut pipe) => {
                    switched.inc();
                    // A spliced flow is never handed over (its pipe may hold bytes).
                    progress.holding.fetch_add(1, Ordering::Relaxed);
                    // Boxed: only bulk flows pay for its state, not every connection's task.
                    Box::pin(splice::forward(
                        from.as_ref(),
                        to.as_ref(),
                        (&mut pipe, None),
                        spliced(total, &mut tally, last),
                    ))
                    .await
                    .map_err(|b| b.end(side))?;
                    break;
                }
                // Out of descriptors: copying still works.
                Err(e) => tracing::debug!(error = %e, "cannot make a pipe; relaying by copy"),
            }
        }
    }
    at_eof(side, to.as_ref(), ended);
    Ok(())
}

/// A direction whose bytes pass at a limited rate or are tapped for a
/// mirror: each read and splice takes at most the allowance its gate gives
/// (all it wants, unlimited), and waits for one holding nothing. It still
/// switches to splice(2) once a read fills its allowance, unless tapped.
async fn limited(
    (mut from, side): (ReadHalf<'_>, Side),
    mut to: WriteHalf<'_>,
    progress: &Progress,
    mut tally: Tally<'_>,
    (splice, limit): (&Splice<'_>, &rate::Limit),
) -> Result<(), RelayEnd> {
    use tokio::io::AsyncReadExt;
    let total = match side {
        Side::Client => &progress.up,
        Side::Backend => &progress.down,
    };
    let mut gate = rate::Gate::new(limit);
    let tap = splice
        .limits
        .and_then(|l| l.tap.as_ref())
        .filter(|_| side == Side::Client);
    let mut buf = vec![0u8; SCRATCH];
    loop {
        let allow = gate.take(buf.len()).await;
        let n = from
            .read(&mut buf[..allow])
            .await
            .map_err(|e| Broken::read(e).end(side))?;
        gate.give_back(allow - n);
        if n == 0 {
            break;
        }
        let now = now_ms();
        total.fetch_add(n as u64, Ordering::Relaxed);
        tally.add(n, 0, now);
        progress.last.store(now, Ordering::Relaxed);
        if let Some(tap) = tap {
            tap.offer(&buf[..n]);
        }
        progress.holding.fetch_add(1, Ordering::Relaxed);
        to.write_all(&buf[..n])
            .await
            .map_err(|e| Broken::write(e).end(side))?;
        progress.holding.fetch_sub(1, Ordering::Relaxed);
        let now = now_ms();
        tally.add(0, n, now);
        progress.last.store(now, Ordering::Relaxed);
        // A read that took its whole allowance: the source has more. A
        // tapped direction copies on, so its bytes pass through here, until
        // its mirror is cut.
        let bulk = n == allow && n >= rate::MIN_SPLICE && tap.is_none_or(|t| t.is_done());
        if let (Some(switched), true) = (splice.switched, bulk) {
            match splice::Pipe::new() {
                Ok(mut pipe) => {
                    switched.inc();
                    drop(buf);
                    progress.holding.fetch_add(1, Ordering::Relaxed);
                    splice::forward(
                        from.as_ref(),
                        to.as_ref(),
                        (&mut pipe, Some(&mut gate)),
                        spliced(total, &mut tally, &progress.last),
                    )
                    .await
                    .map_err(|b| b.end(side))?;
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "cannot make a pipe; relaying by copy"),
            }
        }
    }
    at_eof(side, to.as_ref(), &progress.ended);
    Ok(())
}

/// What a spliced direction does at each step: counts the bytes read
/// (`total`, `tally`) and written, and marks the connection active.
fn spliced<'a, 'm>(
    total: &'a AtomicU64,
    tally: &'a mut Tally<'m>,
    last: &'a AtomicU64,
) -> impl FnMut(usize, usize) + use<'a, 'm> {
    move |read, written| {
        let now = now_ms();
        total.fetch_add(read as u64, Ordering::Relaxed);
        tally.add(read, written, now);
        last.store(now, Ordering::Relaxed);
    }
}

/// After EOF from a direction's source: the first direction to end records
/// its side and shuts the other socket's write half.
fn at_eof(side: Side, to: &TcpStream, ended: &AtomicU8) {
    // When the other direction has ended too, both sockets are closed right
    // after this, and a shutdown first would be a wasted syscall. The first
    // direction to end records its side (1: the client's EOF came first, 2:
    // the backend's).
    let code = match side {
        Side::Client => 1,
        Side::Backend => 2,
    };
    if ended
        .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        if let Err(e) = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
            // The peer may already be gone; that ends the other direction anyway.
            tracing::debug!(error = %e, "shutdown(SHUT_WR) failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection's task holds this state, idle or not: keep it
    /// under 1.25 KiB (the splice path is boxed, so bulk-only state is not in
    /// it).
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
            Timers {
                idle: Duration::from_secs(1),
                keepalive: Some(Duration::from_secs(60)),
            },
            Stops {
                hard: &stop,
                handover: &stop,
            },
            Splice {
                switched: Some(&c),
                limits: None,
            },
            meter(),
            meter(),
        );
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1280, "the relay future grew to {size} bytes");
    }
}
