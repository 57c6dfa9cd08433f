//! The UDP socket calls of the session relay, in one place, so batched or
//! address-aware I/O (recvmmsg, IP_PKTINFO) replaces this file alone.
//!
//! On a listener bound to a wildcard address (`0.0.0.0`, `[::]`), the
//! address each client sent to is read from `IP_PKTINFO`/`IPV6_PKTINFO` and
//! replies leave from it: otherwise the kernel picks a source of its own and
//! a client that connected its socket (most DNS stubs) drops the reply.
//!
//! Safety: `recvmsg` and `sendmsg` are given a `msghdr` whose name, one
//! `iovec` and control buffer all point into memory this module owns for the
//! whole call (the control buffer is `u64`-aligned, as `cmsghdr` needs);
//! control messages are walked only with `CMSG_FIRSTHDR`/`CMSG_NXTHDR`
//! within the length the kernel returned, and read with unaligned reads.
//!
//! A session's socket is registered with the reactor by [`open_upstream`],
//! which owns it: the descriptor stays open and the same for the whole life
//! of the `AsyncFd`, since the `UdpSocket` inside owns it.
//!
//! The calls go straight to the socket (std's or `socket2`'s), not through
//! tokio's readiness cache: a fresh session socket has not yet been seen
//! writable by the reactor, and a direct receive also collects a pending
//! socket error (an ICMP port-unreachable) that a readiness-gated one would
//! never attempt.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A session's socket, connected to its backend.
pub(crate) type Upstream = AsyncFd<std::net::UdpSocket>;

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
pub(crate) fn open_upstream(backend: SocketAddr) -> io::Result<Upstream> {
    let any: SocketAddr = if backend.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect(backend)?;
    s.set_nonblocking(true)?;
    set_int(s.as_raw_fd(), libc::SOL_SOCKET, SO_SELECT_ERR_QUEUE, 1)?;
    // SAFETY: see the module documentation.
    unsafe { AsyncFd::register_with_interest(s, Interest::READABLE | Interest::PRIORITY) }
        .map_err(io::Error::from)
}

/// Sends one datagram on a connected session socket.
pub(crate) fn send(upstream: &Upstream, data: &[u8]) -> io::Result<usize> {
    upstream.get_ref().send(data)
}

/// Sends `head` and `data` as one datagram on a connected session socket
/// (a PROXY protocol header before the client's payload), without copying.
pub(crate) fn send_after(upstream: &Upstream, head: &[u8], data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(upstream.get_ref())
        .send_vectored(&[io::IoSlice::new(head), io::IoSlice::new(data)])
}

/// Receives one datagram from a connected session socket; `WouldBlock`
/// when none is waiting (and then tokio's readiness is cleared, so the next
/// wait sleeps).
pub(crate) fn recv(upstream: &Upstream, buf: &mut [u8]) -> io::Result<usize> {
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
    set_int(socket.as_raw_fd(), level, name, 1)
}

/// Sets an integer socket option.
fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads the int we own, of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Room for one `in6_pktinfo` control message (the larger of the two).
type PktinfoCmsgSpace = [u64; 8];

/// Receives one datagram with the client's address and, when the socket
/// asked for it ([`want_destination`]), the local address it was sent to.
pub(crate) fn recv_from_to(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    let mut control: PktinfoCmsgSpace = [0; 8];
    let mut local = None;
    // SAFETY: see the module documentation.
    let (n, peer) = unsafe {
        socket2::SockAddr::try_init(|name, name_len| {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = name.cast();
            msg.msg_namelen = *name_len;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of::<PktinfoCmsgSpace>() as _;
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            *name_len = msg.msg_namelen;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
                let data = libc::CMSG_DATA(c);
                if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                    let info = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                    local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        info.ipi_addr.s_addr,
                    ))));
                } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                    let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                    local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            Ok(n as usize)
        })?
    };
    let peer = peer
        .as_socket()
        .ok_or_else(|| io::Error::other("a datagram from a non-IP address"))?;
    Ok((n, peer, local))
}

/// Sends a reply to `client` from the listener's socket, from the local
/// address `from` when given (a wildcard listener), else as the kernel picks.
pub(crate) fn reply(
    listener: &UdpSocket,
    data: &[u8],
    client: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    let Some(from) = from else {
        return socket2::SockRef::from(listener).send_to(data, &client.into());
    };
    let to = socket2::SockAddr::from(client);
    let mut control: PktinfoCmsgSpace = [0; 8];
    // SAFETY: see the module documentation.
    let n = unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = to.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = to.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        let (level, kind, size) = match from {
            IpAddr::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                std::mem::size_of::<libc::in_pktinfo>(),
            ),
            IpAddr::V6(_) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                std::mem::size_of::<libc::in6_pktinfo>(),
            ),
        };
        msg.msg_controllen = libc::CMSG_SPACE(size as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = kind;
        (*c).cmsg_len = libc::CMSG_LEN(size as u32) as _;
        match from {
            IpAddr::V4(a) => std::ptr::write_unaligned(
                libc::CMSG_DATA(c) as *mut libc::in_pktinfo,
                libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(a).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            IpAddr::V6(a) => std::ptr::write_unaligned(
                libc::CMSG_DATA(c) as *mut libc::in6_pktinfo,
                libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    ipi6_ifindex: 0,
                },
            ),
        }
        libc::sendmsg(listener.as_raw_fd(), &msg, 0)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
