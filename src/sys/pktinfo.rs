//! The UDP calls that carry a datagram's local address (`IP_PKTINFO`,
//! `IPV6_PKTINFO`): received with each datagram on a wildcard listener, and
//! given as the source of its reply. Neither rustix nor socket2 builds
//! these control messages, so they are built and walked here.
//!
//! `recvmsg` and `sendmsg` are given a `msghdr` whose name, one `iovec` and
//! control buffer all point into memory this module owns for the whole call
//! (the control buffer is `u64`-aligned, as `cmsghdr` needs); control
//! messages are walked only with `CMSG_FIRSTHDR`/`CMSG_NXTHDR` within the
//! length the kernel returned, and read with unaligned reads.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::UdpSocket;

/// Room for one `in6_pktinfo` control message (the larger of the two).
type PktinfoCmsgSpace = [u64; 8];

/// Receives one datagram with the client's address and, when the socket
/// asked for it (`want_destination`), the local address it was sent to.
pub(crate) fn recv_from_to(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    let mut control: PktinfoCmsgSpace = [0; 8];
    let mut local = None;
    // SAFETY: the buffers the message points into are ours for the call; see the module documentation.
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
    // SAFETY: the buffers the message points into are ours for the call; see the module documentation.
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
