//! The relay on the io_uring engine: the same two directions, timer, stops
//! and safe point as the readiness relay beside it, with each receive and
//! send an operation in the worker's ring (`engine::ring`). Bytes pass
//! through a pool buffer the kernel picks when they arrive, so an idle
//! connection holds none; a receive that fills one marks a bulk flow,
//! which moves to splice(2) as it does on epoll.
//!
//! When the relay ends with operations still in the ring (a stop, an idle
//! timeout, a hand-over), it waits until the kernel has let go of both
//! sockets before they are closed or handed on. Bytes a receive took in
//! that moment are written on before a hand-over, so the new process
//! misses none.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::end::Broken;
use super::{
    at_eof, ended, splice, spliced, start, watch, Meter, Outcome, Progress, RelayEnd, Side, Splice,
    Stops, Tally, Timers,
};
use crate::clock::now_ms;
use crate::engine::ring::{Done, Ops, BUFFER_SIZE};

/// Relays `client` and `backend` through this worker's ring until both
/// directions end, `idle_ms` passes with no traffic, or `stop` fires.
pub(super) async fn relay(
    (client, backend): (&mut TcpStream, &mut TcpStream),
    timers: Timers,
    stop: Stops<'_>,
    splice: Splice<'_>,
    (up_meter, down_meter): (Meter<'_>, Meter<'_>),
) -> Outcome {
    let (progress, mut keepalive, idle_ms) = start(timers, backend);
    let conn = Ops::open();
    let mut end = {
        let both = async {
            tokio::try_join!(
                pump(
                    &conn,
                    (client, Side::Client),
                    backend,
                    &progress,
                    up_meter,
                    &splice
                ),
                pump(
                    &conn,
                    (backend, Side::Backend),
                    client,
                    &progress,
                    down_meter,
                    &splice
                ),
            )
        };
        tokio::pin!(both);
        watch!(both, &progress, (idle_ms, &mut keepalive), &stop)
    };
    // The pumps are gone; their operations may not be.
    let left = conn.settle().await;
    if end == RelayEnd::HandedOver {
        for (fd, bytes) in left {
            let (to, total, side) = if fd == client.as_raw_fd() {
                (&mut *backend, &progress.up, Side::Client)
            } else {
                (&mut *client, &progress.down, Side::Backend)
            };
            total.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if let Err(e) = to.write_all(&bytes).await {
                end = Broken::write(e).end(side);
                break;
            }
        }
    }
    ended(end, (client, backend), &progress)
}

/// Moves `from` → `to` until EOF, then shuts down `to`'s write half.
async fn pump(
    conn: &Ops,
    (from, side): (&TcpStream, Side),
    to: &TcpStream,
    progress: &Progress,
    meter: Meter<'_>,
    splice: &Splice<'_>,
) -> Result<(), RelayEnd> {
    let total = match side {
        Side::Client => &progress.up,
        Side::Backend => &progress.down,
    };
    let (rfd, wfd) = (from.as_raw_fd(), to.as_raw_fd());
    let mut tally = Tally::new(meter);
    let mut next = conn.recv(rfd);
    loop {
        let chunk = match next.await {
            Ok(Done::Received(Some(chunk))) => chunk,
            Ok(_) => break,
            Err(e) => return Err(Broken::read(e).end(side)),
        };
        let n = chunk.len();
        let now = now_ms();
        total.fetch_add(n as u64, Ordering::Relaxed);
        tally.add(n, 0, now);
        progress.last.store(now, Ordering::Relaxed);
        progress.holding.fetch_add(1, Ordering::Relaxed);
        // The next receive goes into the ring with this send, unless this
        // one filled its buffer: a bulk flow may move to splice(2) next,
        // and no receive of the ring's may then be waiting on the socket.
        next = if n < BUFFER_SIZE {
            conn.recv_now(rfd)
        } else {
            conn.recv(rfd)
        };
        let (mut sent, mut chunk) = (0, chunk);
        while sent < n {
            match conn.send(wfd, chunk, sent).await {
                Ok(Done::Sent(0, _)) => {
                    let zero = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err(Broken::write(zero).end(side));
                }
                Ok(Done::Sent(m, back)) => {
                    sent += m;
                    chunk = back;
                    let now = now_ms();
                    tally.add(0, m, now);
                    progress.last.store(now, Ordering::Relaxed);
                }
                Ok(Done::Received(_)) => unreachable!("a send completes as a send"),
                Err(e) => return Err(Broken::write(e).end(side)),
            }
        }
        drop(chunk);
        progress.holding.fetch_sub(1, Ordering::Relaxed);
        // A receive that filled a whole buffer marks a bulk flow.
        if let (Some(switched), BUFFER_SIZE) = (splice.switched, n) {
            if bulk(from, to, (side, total), progress, &mut tally, switched).await? {
                break;
            }
        }
    }
    at_eof(side, to, &progress.ended);
    Ok(())
}

/// The rest of a bulk direction, by splice(2) through a pipe (false if no
/// pipe could be made: the direction copies on).
async fn bulk(
    from: &TcpStream,
    to: &TcpStream,
    (side, total): (Side, &AtomicU64),
    progress: &Progress,
    tally: &mut Tally<'_>,
    switched: &prometheus::IntCounter,
) -> Result<bool, RelayEnd> {
    let mut pipe = match splice::Pipe::new() {
        Ok(pipe) => pipe,
        Err(e) => {
            tracing::debug!(error = %e, "cannot make a pipe; relaying by copy");
            return Ok(false);
        }
    };
    switched.inc();
    // A spliced flow is never handed over (its pipe may hold bytes).
    progress.holding.fetch_add(1, Ordering::Relaxed);
    let moved = spliced(total, tally, &progress.last);
    splice::forward(from, to, (&mut pipe, None), moved)
        .await
        .map_err(|b| b.end(side))?;
    Ok(true)
}
