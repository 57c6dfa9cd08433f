//! Zero-copy forwarding for bulk flows: splice(2) moves bytes from one socket
//! into a pipe and from the pipe into the other socket, without copying them
//! through user space. The calls go through rustix, whose `pipe_with`
//! returns owned descriptors and whose `splice` borrows both ends for the
//! whole call.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{pipe_with, PipeFlags, SpliceFlags};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::rate::Gate;
use super::Broken;

/// Pipe capacity asked for, and how much one splice call moves at most:
/// four times Linux's default, so a bulk flow needs a quarter of the calls.
/// Unprivileged processes may raise a pipe up to /proc/sys/fs/pipe-max-size
/// (1 MiB by default); if refused, the default 64 KiB is used.
const CHUNK: usize = 256 * 1024;

/// A pipe that holds bytes between the two splices.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe now.
    held: usize,
    /// The pipe's two descriptors, in the data plane's budget.
    _fds: crate::fds::Held,
}

impl Pipe {
    /// A new pipe, or an error when the descriptor budget or the kernel
    /// has none to spare (the caller then copies instead).
    pub fn new() -> io::Result<Pipe> {
        let budget = crate::fds::try_take(2)
            .ok_or_else(|| io::Error::other("the descriptor budget has no room for a pipe"))?;
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        if let Err(e) = rustix::pipe::fcntl_setpipe_size(&write, CHUNK) {
            // Above /proc/sys/fs/pipe-max-size or the user's pipe quota: the
            // default 64 KiB still works, with more calls per MiB.
            tracing::debug!(error = %io::Error::from(e), "cannot enlarge a splice pipe");
        }
        Ok(Pipe {
            read,
            write,
            held: 0,
            _fds: budget,
        })
    }
}

/// One splice from `from`'s current position to `to`'s (no offsets).
fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
}

/// Moves bytes `from` → `to` through `pipe` until `from` reaches EOF (the
/// pipe then empty), each splice into the pipe at most what `gate` allows
/// when the direction is limited. `moved(read, written)` is told every step.
pub async fn forward(
    from: &TcpStream,
    to: &TcpStream,
    (pipe, mut gate): (&mut Pipe, Option<&mut Gate<'_>>),
    mut moved: impl FnMut(usize, usize),
) -> Result<(), Broken> {
    loop {
        let allow = match gate.as_mut() {
            Some(g) => g.take(CHUNK).await,
            None => CHUNK,
        };
        // The pipe is empty here, so WouldBlock can only mean the socket has nothing.
        let n = loop {
            from.readable().await.map_err(Broken::read)?;
            match from.try_io(Interest::READABLE, || splice(from, &pipe.write, allow)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Broken::read(e)),
            }
        };
        if let Some(g) = gate.as_mut() {
            g.give_back(allow - n);
        }
        if n == 0 {
            return Ok(());
        }
        pipe.held += n;
        moved(n, 0);
        while pipe.held > 0 {
            to.writable().await.map_err(Broken::write)?;
            match to.try_io(Interest::WRITABLE, || splice(&pipe.read, to, pipe.held)) {
                Ok(m) => {
                    pipe.held -= m;
                    moved(0, m);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Broken::write(e)),
            }
        }
    }
}
