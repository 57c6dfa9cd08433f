//! Handing established TCP connections to a new process (a binary upgrade).
//!
//! The old and the new process share a `SOCK_SEQPACKET` socket pair: one
//! message per connection, a small JSON description ([`Moved`]) with the
//! client's and the backend's sockets attached (`SCM_RIGHTS`). A relay is
//! stopped only at a safe point (both directions waiting to read, no byte
//! held in the process, neither side half-closed), so nothing is in flight
//! in user space when its sockets move: the new process simply relays on.
//! The pair and its messages go through rustix, whose ancillary buffers
//! borrow the descriptors sent and own the ones received.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
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
    pub backend: crate::endpoint::Endpoint,
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
                    let fds = [job.fds[0].as_fd(), job.fds[1].as_fd()];
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
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Room for the control message of the two descriptors a connection takes.
const FD_CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(2));

/// Sends one message with `fds` attached (blocking).
pub fn send(channel: &OwnedFd, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); FD_CMSG_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    rustix::net::sendmsg(
        channel,
        &[IoSlice::new(body)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message and the descriptors attached (blocking); `None`
/// once the other end has closed.
pub fn recv(channel: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut space = [MaybeUninit::<u8>::uninit(); FD_CMSG_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        channel,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    // Every descriptor received is owned here, and closed if not wanted.
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    match got.bytes {
        0 => Ok(None),
        n => Ok(Some((n, fds))),
    }
}
