//! The relay for connections with TLS on either side: both ends are byte
//! streams that rustls encrypts or decrypts, so bytes are copied, never
//! spliced. As in the plain relay, an idle connection holds no buffer of
//! its own: each direction reads into the worker's scratch buffer and
//! writes straight on, and only what the other side cannot take yet is
//! kept, until it is written. Half-close stays exact: a side's EOF (its
//! `close_notify`, then its FIN) becomes a shutdown of the other side's
//! writing, which for TLS sends `close_notify` first.
//!
//! Such a connection cannot be handed to a new process (its TLS state is
//! this process's), so a binary upgrade lets it finish here.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::{Meter, Outcome, RelayEnd, Side, Tally, SCRATCH_BUF};
use crate::clock::now_ms;

/// What both directions record as they go.
struct StreamWatch {
    last: AtomicU64,
    first_eof: OnceLock<Side>,
    failed: OnceLock<(Side, io::ErrorKind)>,
    up: AtomicU64,
    down: AtomicU64,
}

/// One side's stream, watched: bytes read from it are counted (they are
/// written on in full unless the relay fails), its EOF and errors noted.
/// The shared byte counters get the counts in batches, as in the plain
/// relay (`Tally`), not on every read.
struct WatchedStream<'a, T> {
    inner: &'a mut T,
    side: Side,
    watch: &'a StreamWatch,
    tally: Tally<'a>,
}

impl<T> WatchedStream<'_, T> {
    fn failed(&self, e: &io::Error) {
        // The first failure is the cause; later ones follow from it.
        let _ = self.watch.failed.set((self.side, e.kind()));
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedStream<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n == 0 {
                    let _ = this.watch.first_eof.set(this.side);
                } else {
                    let now = now_ms();
                    this.watch.last.store(now, Ordering::Relaxed);
                    let total = match this.side {
                        Side::Client => &this.watch.up,
                        Side::Backend => &this.watch.down,
                    };
                    total.fetch_add(n, Ordering::Relaxed);
                    this.tally.add(n as usize, n as usize, now);
                }
            }
            Poll::Ready(Err(e)) => this.failed(e),
            Poll::Pending => {}
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedStream<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(e)) = &r {
            this.failed(e);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_flush(cx);
        if let Poll::Ready(Err(e)) = &r {
            this.failed(e);
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A peer already gone makes the shutdown fail; that ends the other
        // direction anyway, so it is not the relay's failure.
        let this = self.get_mut();
        match Pin::new(&mut *this.inner).poll_shutdown(cx) {
            Poll::Ready(Err(_)) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// One direction's progress: bytes the other side could not take yet, and
/// how far its end has gone.
#[derive(Default)]
struct Direction {
    held: Vec<u8>,
    at: usize,
    /// Its source reached EOF.
    eof: bool,
    /// Bytes were written since the last flush.
    unflushed: bool,
}

/// What one read into the scratch buffer came to.
enum Read {
    Waiting,
    Eof,
    Moved,
}

/// Moves what `from` has to `to` until it would wait (`Pending`), or until
/// `from` ended and `to` is shut down (`Ready(Ok)`).
fn poll_direction<R, W>(
    cx: &mut Context<'_>,
    from: &mut R,
    to: &mut W,
    d: &mut Direction,
) -> Poll<io::Result<()>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        while d.at < d.held.len() {
            match Pin::new(&mut *to).poll_write(cx, &d.held[d.at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    d.at += n;
                    d.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if d.held.capacity() > 0 {
            // Written: the connection keeps no buffer.
            d.held = Vec::new();
            d.at = 0;
        }
        if d.eof {
            // Sends what rustls holds, then close_notify and FIN.
            return Pin::new(&mut *to).poll_shutdown(cx);
        }
        let read = SCRATCH_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut rb = ReadBuf::new(&mut buf[..]);
            match Pin::new(&mut *from).poll_read(cx, &mut rb) {
                Poll::Pending => return Ok(Read::Waiting),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                return Ok(Read::Eof);
            }
            let written = match Pin::new(&mut *to).poll_write(cx, &buf[..n]) {
                Poll::Ready(Ok(w)) => w,
                Poll::Pending => 0,
                Poll::Ready(Err(e)) => return Err(e),
            };
            d.unflushed |= written > 0;
            if written < n {
                d.held.extend_from_slice(&buf[written..n]);
            }
            Ok(Read::Moved)
        })?;
        match read {
            Read::Moved => {}
            Read::Eof => d.eof = true,
            Read::Waiting => {
                // Nothing more to read for now: what rustls holds goes out.
                if d.unflushed {
                    match Pin::new(&mut *to).poll_flush(cx) {
                        Poll::Ready(Ok(())) => d.unflushed = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
                return Poll::Pending;
            }
        }
    }
}

/// Relays between `client` and `backend` until both directions end, `idle`
/// passes with no byte either way, or `hard` fires.
pub async fn relay_streams<C, B>(
    client: &mut C,
    backend: &mut B,
    idle: Duration,
    hard: &CancellationToken,
    up_meter: Meter<'_>,
    down_meter: Meter<'_>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let watch = StreamWatch {
        last: AtomicU64::new(now_ms()),
        first_eof: OnceLock::new(),
        failed: OnceLock::new(),
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
    };
    let mut c = WatchedStream {
        inner: client,
        side: Side::Client,
        watch: &watch,
        tally: Tally::new(up_meter),
    };
    let mut b = WatchedStream {
        inner: backend,
        side: Side::Backend,
        watch: &watch,
        tally: Tally::new(down_meter),
    };
    let idle_ms = idle.as_millis() as u64;
    let idle_watch = async {
        loop {
            let deadline = watch.last.load(Ordering::Relaxed).saturating_add(idle_ms);
            let now = now_ms();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
        }
    };
    let (mut up, mut down) = (Direction::default(), Direction::default());
    let (mut up_done, mut down_done) = (false, false);
    let both = std::future::poll_fn(|cx| {
        if !up_done {
            match poll_direction(cx, &mut c, &mut b, &mut up) {
                Poll::Ready(Ok(())) => up_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if !down_done {
            match poll_direction(cx, &mut b, &mut c, &mut down) {
                Poll::Ready(Ok(())) => down_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if up_done && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    });
    let end = tokio::select! {
        r = both => match r {
            Ok(_) => RelayEnd::Closed,
            Err(e) => match watch.failed.get() {
                Some(&(side, io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)) => {
                    RelayEnd::Reset(side)
                }
                Some(&(side, _)) => RelayEnd::Error(side),
                // A TLS error surfaces from the side that read it.
                None => {
                    tracing::debug!(error = %e, "relay ended in an error of no known side");
                    RelayEnd::Error(Side::Client)
                }
            },
        },
        _ = idle_watch => RelayEnd::Idle,
        _ = hard.cancelled() => RelayEnd::Shutdown,
    };
    Outcome {
        up: watch.up.load(Ordering::Relaxed),
        down: watch.down.load(Ordering::Relaxed),
        end,
        first_eof: watch.first_eof.get().copied(),
    }
}
