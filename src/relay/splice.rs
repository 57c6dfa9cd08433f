//! Zero-copy forwarding for bulk flows: splice(2) moves bytes from one socket
//! into a pipe and from the pipe into the other socket, without copying them
//! through user space.
//!
//! Safety: the unsafe calls are `pipe2`, which hands us two new descriptors
//! that are wrapped in [`OwnedFd`] at once (so they are closed exactly once,
//! on drop), `fcntl(F_SETPIPE_SZ)` on the pipe we own, and `splice`, called only with the pipe's descriptors and with
//! the descriptors of two sockets borrowed (`&TcpStream`) for the whole call,
//! so none can be closed or reused underneath it. `splice` writes to no
//! memory of ours.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

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
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new, open, and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on the pipe we own; it only resizes its buffer.
        let rc =
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        if rc < 0 {
            // Above /proc/sys/fs/pipe-max-size or the user's pipe quota: the
            // default 64 KiB still works, with more calls per MiB.
            tracing::debug!(error = %io::Error::last_os_error(), "cannot enlarge a splice pipe");
        }
        Ok(Pipe {
            read,
            write,
            held: 0,
            _fds: budget,
        })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: see the module documentation; null offsets mean "current position".
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves bytes `from` → `to` through `pipe` until `from` reaches EOF (the
/// pipe then empty). `moved(read, written)` is told every step.
pub async fn forward(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &mut Pipe,
    mut moved: impl FnMut(usize, usize),
) -> Result<(), Broken> {
    let (pipe_in, pipe_out) = (pipe.write.as_raw_fd(), pipe.read.as_raw_fd());
    loop {
        // The pipe is empty here, so WouldBlock can only mean the socket has nothing.
        let n = loop {
            from.readable().await.map_err(Broken::read)?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe_in, CHUNK)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Broken::read(e)),
            }
        };
        if n == 0 {
            return Ok(());
        }
        pipe.held += n;
        moved(n, 0);
        while pipe.held > 0 {
            to.writable().await.map_err(Broken::write)?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe_out, to.as_raw_fd(), pipe.held)
            }) {
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
