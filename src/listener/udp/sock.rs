//! The UDP socket calls of the session relay, in one place, so batched or
//! address-aware I/O (recvmmsg, IP_PKTINFO) replaces this file alone.
//!
//! On a listener bound to a wildcard address (`0.0.0.0`, `[::]`), the
//! address each client sent to is read from `IP_PKTINFO`/`IPV6_PKTINFO` and
//! replies leave from it: otherwise the kernel picks a source of its own and
//! a client that connected its socket (most DNS stubs) drops the reply.
//!
//! The calls that carry `IP_PKTINFO` are in `sys::pktinfo`, with the
//! crate's other unsafe code.
//!
//! The calls go straight to the socket (std's or `socket2`'s), not through
//! tokio's readiness cache: a fresh session socket has not yet been seen
//! writable by the reactor, and a direct receive also collects a pending
//! socket error (an ICMP port-unreachable) that a readiness-gated one would
//! never attempt.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::sys;

/// A session's socket, connected to its backend.
pub(crate) type UdpUpstream = AsyncFd<std::net::UdpSocket>;

/// `SO_SELECT_ERR_QUEUE` (asm-generic/socket.h; the `libc` crate does not
/// export it for every Linux target). With it, a socket error raises
/// `EPOLLPRI` beside `EPOLLERR`.
const SO_SELECT_ERR_QUEUE: libc::c_int = 45;

/// Opens a session's socket, connected to `backend` from an ephemeral port.
///
/// An ICMP port-unreachable from the backend must wake the session's reply
/// task, but it raises only `EPOLLERR`, which tokio passes to no plain read
/// wait. With `SO_SELECT_ERR_QUEUE` it raises `EPOLLPRI` too, and a socket
/// registered for priority events counts that as readable: so the task waits
/// for readability alone, in the socket's own read slot, with no waiter of
/// its own to store.
pub(crate) fn open_upstream(
    backend: SocketAddr,
    source: Option<(IpAddr, bool)>,
) -> io::Result<UdpUpstream> {
    let s = bound(backend.is_ipv6(), source)?;
    s.connect(&backend.into())?;
    sys::set_int(&s, libc::SOL_SOCKET, SO_SELECT_ERR_QUEUE, 1)?;
    sys::watch(s.into(), Interest::READABLE | Interest::PRIORITY)
}

/// Opens a per-datagram session's socket: not connected, for it sends to
/// whichever backend each datagram picks (of `v6`'s family) and takes
/// replies from any of them (the caller checks the sender).
pub(crate) fn open_spread(v6: bool, source: Option<(IpAddr, bool)>) -> io::Result<UdpUpstream> {
    sys::watch(bound(v6, source)?.into(), Interest::READABLE)
}

/// A non-blocking UDP socket of `v6`'s family on an ephemeral port, of
/// `source`'s address when given (see [`crate::net::bind_source`]).
fn bound(v6: bool, source: Option<(IpAddr, bool)>) -> io::Result<socket2::Socket> {
    let domain = if v6 {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM.nonblocking(), None)?;
    match source {
        Some(source) => crate::net::bind_source(&s, source)?,
        None => s.bind(&SocketAddr::new(crate::net::unspecified(v6), 0).into())?,
    }
    Ok(s)
}

/// Sends one datagram to `to` on a per-datagram session's socket, after
/// `head` (a PROXY header) when there is one, without copying.
pub(crate) fn send_to(
    upstream: &UdpUpstream,
    (head, data): (Option<&[u8]>, &[u8]),
    to: SocketAddr,
) -> io::Result<usize> {
    let sock = socket2::SockRef::from(upstream.get_ref());
    match head {
        None => sock.send_to(data, &to.into()),
        Some(h) => {
            sock.send_to_vectored(&[io::IoSlice::new(h), io::IoSlice::new(data)], &to.into())
        }
    }
}

/// Receives one datagram and its sender on a per-datagram session's
/// socket; `WouldBlock` as [`recv`].
pub(crate) fn recv_from(upstream: &UdpUpstream, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    let r = upstream.get_ref().recv_from(buf);
    if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
        let _ = upstream.try_io(Interest::READABLE, |_| {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
    r
}

/// Sends one datagram on a connected session socket.
pub(crate) fn send(upstream: &UdpUpstream, data: &[u8]) -> io::Result<usize> {
    upstream.get_ref().send(data)
}

/// Sends `head` and `data` as one datagram on a connected session socket
/// (a PROXY protocol header before the client's payload), without copying.
pub(crate) fn send_after(upstream: &UdpUpstream, head: &[u8], data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(upstream.get_ref())
        .send_vectored(&[io::IoSlice::new(head), io::IoSlice::new(data)])
}

/// Receives one datagram from a connected session socket; `WouldBlock`
/// when none is waiting (and then tokio's readiness is cleared, so the next
/// wait sleeps).
pub(crate) fn recv(upstream: &UdpUpstream, buf: &mut [u8]) -> io::Result<usize> {
    let r = upstream.get_ref().recv(buf);
    if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
        // The WouldBlock is the point, not an error.
        let _ = upstream.try_io(Interest::READABLE, |_| {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
    r
}

/// Asks the kernel to tell, with each datagram, the address it was sent to.
pub(crate) fn want_destination(socket: &std::net::UdpSocket, v6: bool) -> io::Result<()> {
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    sys::set_int(socket, level, name, 1)
}

pub(crate) use sys::pktinfo::{recv_from_to, reply};
