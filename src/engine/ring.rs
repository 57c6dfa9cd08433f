//! One io_uring per worker thread, driven from that worker's own runtime,
//! and the two operations the relay needs from it: receive into a buffer
//! the kernel picks, and send from it.
//!
//! The ring's descriptor is watched by the worker's event loop like any
//! socket; a driver task submits what connections queued and hands out
//! what completed. Submissions made while tasks run go in together, in one
//! `io_uring_enter`, when the driver runs next in the same turn.
//!
//! Receive buffers come from a pool the ring is given at start (provided
//! buffers): a receive waits without a buffer, and the kernel takes one only
//! when bytes arrive, so an idle connection holds none. A buffer goes back
//! to the pool when the `Chunk` holding it is dropped.
//!
//! An operation outlives its future when the future is dropped (a stop, an
//! idle timeout, a hand-over): its slot is then marked abandoned and a
//! cancel is submitted. Whatever it still completes with is kept: a buffer
//! goes back to the pool, and bytes a receive took are kept for its
//! connection, which `settle` waits for before the sockets are closed or
//! handed on. So no byte is lost and no socket is closed while the kernel
//! still holds an operation on it.
//!
//! Safety: this file holds the engine's `unsafe`. The invariants:
//! - Every submission's pointers point into the pool, which is allocated
//!   once per thread and never freed or moved while the thread lives (the
//!   workers live as long as the process).
//! - A buffer id is in exactly one place at a time: the kernel's pool, one
//!   `Chunk`, or one in-flight send's slot. Its bytes are read only through
//!   the `Chunk` that owns it.
//! - The ring, the pool and every slot are the one worker thread's
//!   (thread-local); a `Chunk` or an operation's future refers to them only
//!   by number, and the relay's futures never leave the worker that
//!   accepted their connection.
//!
//! It runs past 400 lines: the driver, the slots' life cycle and the
//! buffer pool are one invariant, read together.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;

// Receive buffers: a read that fills one marks a bulk flow, which the
// relay moves to splice(2).
/// How many receive buffers each worker's pool has.
pub const BUFFERS: u16 = 256;
/// The size of each receive buffer.
pub const BUFFER_SIZE: usize = 16 * 1024;
const GROUP: u16 = 0;
/// Submission queue entries; the completion queue is four times as deep.
const ENTRIES: u32 = 1024;
/// `user_data` of submissions whose completion nobody waits for (buffers
/// given back, cancels).
const UNWATCHED: u64 = u64::MAX;
/// `IORING_RECVSEND_POLL_FIRST`: a receive waits for data before trying,
/// as a relay's receive is made right after the last one emptied the socket.
const RECVSEND_POLL_FIRST: u16 = 1;

/// The flags every ring is made with, also what the probe tries.
pub(super) fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_cqsize(ENTRIES * 4)
        .setup_submit_all()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer()
        .setup_clamp();
    b
}

/// The operations the engine submits; the probe checks each is known.
pub(super) const OPCODES: [(u8, &str); 4] = [
    (opcode::Recv::CODE, "recv"),
    (opcode::Send::CODE, "send"),
    (opcode::ProvideBuffers::CODE, "provide_buffers"),
    (opcode::AsyncCancel::CODE, "async_cancel"),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A receive from this socket.
    Recv(RawFd),
    /// A send of this buffer's first `len` bytes.
    Send { bid: u16, len: u32 },
}

enum Slot {
    Free(Option<usize>),
    /// Submitted; its future waits.
    Pending {
        kind: Kind,
        conn: u64,
        waker: Option<Waker>,
    },
    /// Completed; its future has not taken the result yet.
    Done {
        kind: Kind,
        conn: u64,
        res: i32,
        flags: u32,
    },
    /// Its future is gone; the kernel still has it.
    Abandoned {
        kind: Kind,
        conn: u64,
    },
}

/// What a connection has in the ring: operations still in the kernel, and
/// bytes abandoned receives took, by socket.
#[derive(Default)]
struct ConnOps {
    in_flight: usize,
    left: Vec<(RawFd, Vec<u8>)>,
    waker: Option<Waker>,
    /// Its `Ops` was dropped before its operations ended (its task was):
    /// the entry goes with the last of them, and their bytes with it.
    gone: bool,
}

struct Driver {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Option<usize>,
    conns: HashMap<u64, ConnOps>,
    next_conn: u64,
    pool: Box<[u8]>,
    /// Receives that found the pool empty, waiting for a buffer back.
    starved: Vec<Waker>,
    /// Buffers given back so far: a receive that found the pool empty
    /// tries again at once if one came back since it was submitted.
    given: u64,
    /// The driver task, to be woken when something waits to be submitted.
    flush: Option<Waker>,
    flush_asked: bool,
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// The ring's descriptor, for the worker's event loop to watch.
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Makes this worker's ring, if it has none, and starts its driver on the
/// current runtime. False if it cannot (the caller relays by readiness).
pub fn here() -> bool {
    if DRIVER.with(|d| d.borrow().is_some()) {
        return true;
    }
    match Driver::new() {
        Ok((driver, fd)) => {
            // SAFETY: the ring's descriptor belongs to the driver, which
            // this thread keeps until it exits; the watch lives in the
            // driver task on this thread's runtime, so it ends first.
            let watch = match unsafe {
                AsyncFd::register_with_interest(RingFd(fd), tokio::io::Interest::READABLE)
            } {
                Ok(w) => w,
                Err(e) => {
                    let e = e.into_parts().1;
                    tracing::warn!(error = %e, "cannot watch an io_uring; this worker relays by readiness");
                    return false;
                }
            };
            DRIVER.with(|d| *d.borrow_mut() = Some(driver));
            tokio::spawn(drive(watch));
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot make an io_uring; this worker relays by readiness");
            false
        }
    }
}

impl Driver {
    fn new() -> io::Result<(Driver, RawFd)> {
        let mut ring = builder().build(ENTRIES)?;
        let mut pool = vec![0u8; BUFFERS as usize * BUFFER_SIZE].into_boxed_slice();
        let give =
            opcode::ProvideBuffers::new(pool.as_mut_ptr(), BUFFER_SIZE as i32, BUFFERS, GROUP, 0)
                .build()
                .user_data(UNWATCHED);
        // SAFETY: the pool lives in the driver for the thread's life (see
        // the module's invariants); the kernel writes only within it.
        unsafe { ring.submission().push(&give) }
            .map_err(|_| io::Error::other("a new ring's queue is full"))?;
        ring.submit_and_wait(1)?;
        let given = ring.completion().next().map(|c| c.result());
        match given {
            Some(r) if r >= 0 => {}
            Some(r) => return Err(io::Error::from_raw_os_error(-r)),
            None => return Err(io::Error::other("no answer to providing buffers")),
        }
        let fd = ring.as_raw_fd();
        let driver = Driver {
            ring,
            slots: Vec::new(),
            free: None,
            conns: HashMap::new(),
            next_conn: 1,
            pool,
            starved: Vec::new(),
            given: 0,
            flush: None,
            flush_asked: false,
        };
        Ok((driver, fd))
    }

    fn slot(&mut self, kind: Kind, conn: u64, waker: Option<&Waker>) -> usize {
        let pending = Slot::Pending {
            kind,
            conn,
            waker: waker.cloned(),
        };
        if let Some(conn) = self.conns.get_mut(&conn) {
            conn.in_flight += 1;
        }
        match self.free {
            Some(i) => {
                let Slot::Free(next) = self.slots[i] else {
                    unreachable!("the free list holds free slots only")
                };
                self.free = next;
                self.slots[i] = pending;
                i
            }
            None => {
                self.slots.push(pending);
                self.slots.len() - 1
            }
        }
    }

    fn release(&mut self, i: usize) {
        self.slots[i] = Slot::Free(self.free);
        self.free = Some(i);
    }

    /// Queues operation `kind` of connection `conn` on socket `fd` (a send
    /// from byte `from` of its buffer): its slot, and `given` then.
    fn submit(
        &mut self,
        kind: Kind,
        (conn, fd, from): (u64, RawFd, usize),
        waker: Option<&Waker>,
    ) -> (usize, u64) {
        let i = self.slot(kind, conn, waker);
        let entry = match kind {
            Kind::Recv(_) => {
                opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), BUFFER_SIZE as u32)
                    .buf_group(GROUP)
                    .ioprio(RECVSEND_POLL_FIRST)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
            Kind::Send { bid, len } => {
                let at = bid as usize * BUFFER_SIZE + from;
                let len = len - from as u32;
                opcode::Send::new(types::Fd(fd), self.pool[at..].as_ptr(), len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
        };
        self.push(entry.user_data(i as u64));
        (i, self.given)
    }

    /// Queues `entry` for the next submission, submitting now if the queue
    /// is full, and wakes the driver to submit it.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built here points into the pool or at
            // nothing (see the module's invariants).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                break;
            }
            if let Err(e) = self.ring.submit() {
                tracing::debug!(error = %e, "io_uring submit failed");
            }
        }
        if !self.flush_asked {
            self.flush_asked = true;
            if let Some(w) = &self.flush {
                w.wake_by_ref();
            }
        }
    }

    fn give_back(&mut self, bid: u16) {
        let at = self.pool[bid as usize * BUFFER_SIZE..].as_mut_ptr();
        let entry = opcode::ProvideBuffers::new(at, BUFFER_SIZE as i32, 1, GROUP, bid)
            .build()
            .user_data(UNWATCHED);
        self.push(entry);
        self.given += 1;
        for w in self.starved.drain(..) {
            w.wake();
        }
    }

    /// What a completed operation whose future is gone leaves: its buffer
    /// back in the pool, the bytes a receive took kept for its connection.
    fn settle_orphan(&mut self, kind: Kind, conn: u64, res: i32, flags: u32) {
        let bid = match kind {
            Kind::Send { bid, .. } => Some(bid),
            Kind::Recv(_) => cqueue::buffer_select(flags),
        };
        if let (Kind::Recv(fd), Some(bid), true) = (kind, bid, res > 0) {
            let at = bid as usize * BUFFER_SIZE;
            let bytes = self.pool[at..at + res as usize].to_vec();
            if let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.gone) {
                c.left.push((fd, bytes));
            }
        }
        if let Some(bid) = bid {
            self.give_back(bid);
        }
    }

    fn finished(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.in_flight -= 1;
            if c.in_flight == 0 {
                if c.gone {
                    self.conns.remove(&conn);
                } else if let Some(w) = c.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// The result of the operation in slot `i` if it has completed, its
    /// slot freed and its connection told; `None` while it is in the kernel.
    fn take(&mut self, i: usize) -> Option<(Kind, u64, i32, u32)> {
        let Slot::Done {
            kind,
            conn,
            res,
            flags,
        } = self.slots[i]
        else {
            return None;
        };
        self.release(i);
        self.finished(conn);
        Some((kind, conn, res, flags))
    }

    fn complete(&mut self) {
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            let (data, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            if data == UNWATCHED {
                if res < 0 && res != -libc::ENOENT && res != -libc::EALREADY {
                    tracing::debug!(error = %io::Error::from_raw_os_error(-res), "io_uring bookkeeping failed");
                }
                continue;
            }
            let i = data as usize;
            match std::mem::replace(&mut self.slots[i], Slot::Free(None)) {
                Slot::Pending { kind, conn, waker } => {
                    self.slots[i] = Slot::Done {
                        kind,
                        conn,
                        res,
                        flags,
                    };
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                Slot::Abandoned { kind, conn } => {
                    self.release(i);
                    self.settle_orphan(kind, conn, res, flags);
                    self.finished(conn);
                }
                other => {
                    self.slots[i] = other;
                    tracing::error!(slot = i, "io_uring completed an operation twice");
                }
            }
        }
    }
}

/// The driver task: submits what waits, hands out what completed, and
/// sleeps on the ring's descriptor in between.
async fn drive(watch: AsyncFd<RingFd>) {
    std::future::poll_fn(|cx| {
        let run = |cx: &Context<'_>| {
            DRIVER.with(|d| {
                let mut d = d.borrow_mut();
                let d = d.as_mut().expect("the driver runs on its ring's thread");
                if !d.flush.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    d.flush = Some(cx.waker().clone());
                }
                d.flush_asked = false;
                let mut sq = d.ring.submission();
                sq.sync();
                let work = !sq.is_empty() || sq.taskrun() || sq.cq_overflow();
                drop(sq);
                if work {
                    if let Err(e) = d.ring.submit() {
                        if e.raw_os_error() != Some(libc::EBUSY) {
                            tracing::debug!(error = %e, "io_uring submit failed");
                        }
                    }
                }
                d.complete();
            })
        };
        run(cx);
        loop {
            match watch.poll_read_ready(cx) {
                Poll::Ready(Ok(mut ready)) => {
                    ready.clear_ready();
                    run(cx);
                }
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "cannot watch the io_uring; its connections stall");
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

fn with<R>(f: impl FnOnce(&mut Driver) -> R) -> R {
    DRIVER.with(|d| {
        let mut d = d.borrow_mut();
        f(d.as_mut().expect("io_uring used on a worker without one"))
    })
}

/// A connection's operations, tracked so that none outlives its sockets.
pub struct Ops {
    id: u64,
}

impl Ops {
    /// A connection with nothing in the ring yet.
    pub fn open() -> Ops {
        with(|d| {
            let id = d.next_conn;
            d.next_conn += 1;
            d.conns.insert(id, ConnOps::default());
            Ops { id }
        })
    }

    /// Waits until the kernel holds no operation of this connection, and
    /// returns the bytes that receives took after their futures were
    /// dropped, in the order taken, with the socket each came from.
    pub async fn settle(&self) -> Vec<(RawFd, Vec<u8>)> {
        std::future::poll_fn(|cx| {
            with(|d| {
                let c = d.conns.get_mut(&self.id).expect("an open connection");
                if c.in_flight == 0 {
                    Poll::Ready(std::mem::take(&mut c.left))
                } else {
                    c.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// Receives from `fd` into a pool buffer: `None` at end of stream.
    pub fn recv(&self, fd: RawFd) -> Op<'_> {
        Op {
            conn: self,
            fd,
            state: OpState::Ready(Kind::Recv(fd), 0),
        }
    }

    /// As [`Ops::recv`], submitted now rather than when first awaited: a
    /// relay asks for the next bytes while it sends the last ones.
    pub fn recv_now(&self, fd: RawFd) -> Op<'_> {
        let (i, given) = with(|d| d.submit(Kind::Recv(fd), (self.id, fd, 0), None));
        Op {
            conn: self,
            fd,
            state: OpState::In(i, given),
        }
    }

    /// Sends `chunk`'s bytes from `from` on to `fd`; completes with the
    /// count sent and the chunk back.
    pub fn send(&self, fd: RawFd, chunk: Chunk, from: usize) -> Op<'_> {
        let kind = Kind::Send {
            bid: chunk.bid,
            len: chunk.len as u32,
        };
        std::mem::forget(chunk);
        Op {
            conn: self,
            fd,
            state: OpState::Ready(kind, from),
        }
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        let id = self.id;
        let _ = DRIVER.try_with(|d| {
            if let Some(d) = d.borrow_mut().as_mut() {
                if let Some(c) = d.conns.get_mut(&id) {
                    if c.in_flight == 0 {
                        d.conns.remove(&id);
                    } else {
                        // Removed when its last operation ends.
                        c.gone = true;
                        c.left.clear();
                    }
                }
            }
        });
    }
}

/// Bytes received into a pool buffer; the buffer goes back when dropped.
pub struct Chunk {
    bid: u16,
    len: usize,
}

impl Chunk {
    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with the bytes.
    pub fn read<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        with(|d| {
            let at = self.bid as usize * BUFFER_SIZE;
            f(&d.pool[at..at + self.len])
        })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let bid = self.bid;
        let _ = DRIVER.try_with(|d| {
            if let Some(d) = d.borrow_mut().as_mut() {
                d.give_back(bid);
            }
        });
    }
}

enum OpState {
    /// Not yet submitted: what to do, and (a send's) first byte.
    Ready(Kind, usize),
    /// In the ring, in this slot, submitted when `given` was this.
    In(usize, u64),
    /// A receive that found the pool empty, waiting for a buffer.
    Starved,
    Over,
}

/// One receive or send in flight.
pub struct Op<'a> {
    conn: &'a Ops,
    fd: RawFd,
    state: OpState,
}

/// What an operation completed with.
pub enum Done {
    /// A receive: bytes, or `None` at end of stream.
    Received(Option<Chunk>),
    /// A send: how many bytes went, and the chunk back.
    Sent(usize, Chunk),
}

impl Future for Op<'_> {
    type Output = io::Result<Done>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<Done>> {
        let this = &mut *self;
        let (conn, fd) = (this.conn.id, this.fd);
        loop {
            match this.state {
                OpState::Over => panic!("an io_uring operation polled after it completed"),
                OpState::Starved => {
                    // Woken by a buffer given back (or spuriously): try again.
                    this.state = OpState::Ready(Kind::Recv(fd), 0);
                }
                OpState::Ready(kind, from) => {
                    let (i, given) = with(|d| d.submit(kind, (conn, fd, from), Some(cx.waker())));
                    this.state = OpState::In(i, given);
                    return Poll::Pending;
                }
                OpState::In(i, given) => {
                    let done = with(|d| {
                        let done = d.take(i);
                        if done.is_none() {
                            let Slot::Pending { waker, .. } = &mut d.slots[i] else {
                                unreachable!("a live operation's slot is pending or done")
                            };
                            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                                *waker = Some(cx.waker().clone());
                            }
                        }
                        done
                    });
                    let Some((kind, _, res, flags)) = done else {
                        return Poll::Pending;
                    };
                    this.state = OpState::Over;
                    return Poll::Ready(match kind {
                        Kind::Recv(_) => {
                            let chunk = cqueue::buffer_select(flags).map(|bid| Chunk {
                                bid,
                                len: res.max(0) as usize,
                            });
                            if res == -libc::ENOBUFS {
                                this.state = OpState::Starved;
                                let came_back = with(|d| {
                                    let back = d.given != given;
                                    if !back {
                                        d.starved.push(cx.waker().clone());
                                    }
                                    back
                                });
                                if came_back {
                                    continue;
                                }
                                return Poll::Pending;
                            }
                            if res < 0 {
                                Err(io::Error::from_raw_os_error(-res))
                            } else if res == 0 {
                                Ok(Done::Received(None))
                            } else {
                                Ok(Done::Received(chunk))
                            }
                        }
                        Kind::Send { bid, len } => {
                            let chunk = Chunk {
                                bid,
                                len: len as usize,
                            };
                            if res < 0 {
                                Err(io::Error::from_raw_os_error(-res))
                            } else {
                                Ok(Done::Sent(res as usize, chunk))
                            }
                        }
                    });
                }
            }
        }
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, OpState::Over);
        let _ = DRIVER.try_with(|d| {
            let mut d = d.borrow_mut();
            let Some(d) = d.as_mut() else { return };
            match state {
                OpState::In(i, _) => {
                    if let Slot::Pending { kind, conn, .. } = d.slots[i] {
                        d.slots[i] = Slot::Abandoned { kind, conn };
                        d.push(
                            opcode::AsyncCancel::new(i as u64)
                                .build()
                                .user_data(UNWATCHED),
                        );
                    } else if let Some((kind, conn, res, flags)) = d.take(i) {
                        d.settle_orphan(kind, conn, res, flags);
                    }
                }
                OpState::Ready(Kind::Send { bid, .. }, _) => d.give_back(bid),
                _ => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn conns() -> usize {
        with(|d| d.conns.len())
    }

    /// Whether this machine gives the test a ring; says so when it does not
    /// (under CI, where nothing may be skipped, it fails).
    fn usable() -> bool {
        if let Err(why) = crate::engine::probe() {
            assert!(
                std::env::var_os("CI").is_none(),
                "io_uring not available here: {why}"
            );
            eprintln!("skipped: io_uring not available here: {why}");
            return false;
        }
        here()
    }

    /// Yields to the worker's other tasks (the driver) until `cond` holds.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..1_000_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never: {what}");
    }

    async fn pair() -> (std::net::TcpStream, tokio::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, tokio::net::TcpStream::from_std(b).unwrap())
    }

    /// Bytes a receive took after its future was dropped are not lost:
    /// `settle` hands them back, with the socket they came from.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_receive_keeps_its_bytes_for_settle() {
        if !usable() {
            return;
        }
        let (mut a, b) = pair().await;
        let ops = Ops::open();
        let recv = ops.recv_now(b.as_raw_fd());
        a.write_all(b"kept").unwrap();
        // The receive completes; its future is dropped unread.
        let OpState::In(slot, _) = recv.state else {
            panic!("recv_now submits at once")
        };
        until("the receive completes", || {
            with(|d| matches!(d.slots[slot], Slot::Done { .. }))
        })
        .await;
        drop(recv);
        let left = ops.settle().await;
        assert_eq!(left, vec![(b.as_raw_fd(), b"kept".to_vec())]);
        drop(ops);
        assert_eq!(conns(), 0);
    }

    /// A connection whose `Ops` goes while a receive waits in the kernel
    /// (its task was dropped) leaves nothing behind once the cancel lands.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_dropped_mid_receive_leaves_nothing() {
        if !usable() {
            return;
        }
        let (_a, b) = pair().await;
        let before = conns();
        let ops = Ops::open();
        let mut recv = Box::pin(ops.recv(b.as_raw_fd()));
        // Submitted on its first poll; nothing arrives.
        assert!(futures_util::poll!(recv.as_mut()).is_pending());
        drop(recv);
        drop(ops);
        assert_eq!(conns(), before + 1, "kept while the kernel has its receive");
        until("the cancelled receive's entry goes", || conns() == before).await;
    }
}
