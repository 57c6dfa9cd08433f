//! Handing established TCP connections to a new process (a binary upgrade).
//!
//! The old and the new process share a `SOCK_SEQPACKET` socket pair: one
//! message per connection, a small JSON description ([`Moved`]) with the
//! client's and the backend's sockets attached (`SCM_RIGHTS`). A relay is
//! stopped only at a safe point (both directions waiting to read, no byte
//! held in the process, neither side half-closed), so nothing is in flight
//! in user space when its sockets move: the new process simply relays on.
//!
//! Safety: `sendmsg` and `recvmsg` get a `msghdr` whose one `iovec` and whose
//! control buffer (`u64`-aligned, as `cmsghdr` needs) are memory this module
//! owns for the whole call. Descriptors received are each wrapped in an
//! `OwnedFd` at once (closed exactly once), and any beyond the two expected
//! are closed too.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// One moved connection, as the new process needs to know it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Moved {
    /// The listener it came through (by name).
    pub listener: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The backend it is connected to.
    pub backend: SocketAddr,
    /// Bytes relayed so far, from the client and to it.
    pub up: u64,
    /// Bytes relayed so far, to the client.
    pub down: u64,
    /// How long it had been open, in milliseconds.
    pub age_ms: u64,
}

/// The old process's side: asks relays to stop at a safe point, and sends
/// the stopped connections on.
///
/// The sending is done by one thread of its own, never on a data-plane
/// worker: `sendmsg` on the channel blocks while the new process is slow to
/// take messages, and a worker blocked there would stall every other
/// connection it carries. A relay hands its connection to that thread and
/// awaits the outcome like any other event.
#[derive(Debug, Default)]
pub struct Handover {
    /// Fired when a new process is ready to take connections.
    pub token: CancellationToken,
    sender: std::sync::OnceLock<mpsc::Sender<Job>>,
}

/// One connection to send: its description, copies of its two sockets, and
/// where to say how it went.
struct Job {
    body: Vec<u8>,
    fds: [OwnedFd; 2],
    done: oneshot::Sender<io::Result<()>>,
}

impl Handover {
    /// A new process serves and listens on `channel`: hand connections over.
    pub fn begin(&self, channel: OwnedFd) -> io::Result<()> {
        if self.sender.get().is_some() {
            return Err(io::Error::other(
                "connections are being handed over already",
            ));
        }
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("switchyard-handover".into())
            .spawn(move || {
                // Ends when the last sender goes (the daemon is gone), and
                // closes the channel, which tells the new process so.
                for job in rx {
                    let fds = [job.fds[0].as_raw_fd(), job.fds[1].as_raw_fd()];
                    // A relay that stopped waiting (its daemon stopped)
                    // needs no answer.
                    let _ = job.done.send(send(&channel, &job.body, &fds));
                }
            })?;
        if self.sender.set(tx).is_err() {
            return Err(io::Error::other(
                "connections are being handed over already",
            ));
        }
        self.token.cancel();
        Ok(())
    }

    /// Sends one stopped connection; its sockets here may then be closed.
    pub async fn send(
        &self,
        moved: &Moved,
        client: BorrowedFd<'_>,
        backend: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let Some(sender) = self.sender.get() else {
            return Err(io::Error::other("no new process to hand over to"));
        };
        let body = serde_json::to_vec(moved).map_err(io::Error::other)?;
        let fds = [client.try_clone_to_owned()?, backend.try_clone_to_owned()?];
        let (done, outcome) = oneshot::channel();
        sender
            .send(Job { body, fds, done })
            .map_err(|_| io::Error::other("the hand-over thread has ended"))?;
        outcome
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the hand-over thread has ended")))
    }
}

/// A `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array we own.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for two descriptors' control message.
type FdCmsgSpace = [u64; 4];

/// Sends one message with `fds` attached (blocking).
pub fn send(channel: &OwnedFd, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut control: FdCmsgSpace = [0; 4];
    // SAFETY: see the module documentation.
    let n = unsafe {
        let mut iov = libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let size = std::mem::size_of_val(fds) as u32;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c) as *mut RawFd,
                fds.len(),
            );
        }
        libc::sendmsg(channel.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one message and the descriptors attached (blocking); `None`
/// once the other end has closed.
pub fn recv(channel: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut control: FdCmsgSpace = [0; 4];
    let mut fds = Vec::new();
    // SAFETY: see the module documentation.
    let n = unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of::<FdCmsgSpace>() as _;
        let n = libc::recvmsg(channel.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n >= 0 {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let data = libc::CMSG_DATA(c) as *const RawFd;
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        n
    };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        n => Ok(Some((n as usize, fds))),
    }
}
