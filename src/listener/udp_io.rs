//! The UDP socket calls of the session relay, in one place, so batched or
//! address-aware I/O (recvmmsg, IP_PKTINFO) replaces this file alone.
//!
//! The calls go straight to the socket (through `socket2`), not through
//! tokio's readiness cache: a fresh session socket has not yet been seen
//! writable by the reactor, and a direct receive also collects a pending
//! socket error (an ICMP port-unreachable) that a readiness-gated one would
//! never attempt.

use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Opens a session's socket, connected to `backend` from an ephemeral port.
pub(crate) fn open_upstream(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if backend.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect(backend)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Sends one datagram on a connected session socket.
pub(crate) fn send(upstream: &UdpSocket, data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(upstream).send(data)
}

/// Receives one datagram from a connected session socket; `WouldBlock`
/// when none is waiting (and then tokio's readiness is cleared, so the next
/// wait sleeps).
pub(crate) fn recv(upstream: &UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
    let r = (&*socket2::SockRef::from(upstream)).read(buf);
    if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
        for interest in [Interest::READABLE, Interest::ERROR] {
            // The WouldBlock is the point, not an error.
            let _ = upstream.try_io(interest, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
        }
    }
    r
}

/// Sends a reply to `client` from the listener's socket.
pub(crate) fn reply(listener: &UdpSocket, data: &[u8], client: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(listener).send_to(data, &client.into())
}
