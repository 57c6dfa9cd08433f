//! Listening sockets, made with the options a proxy needs, and accepting on
//! them. The system calls go through rustix, which wraps each safely.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol as SockProto, Socket, Type};

use crate::endpoint::{Endpoint, UnixName};

/// Receive buffer for UDP listeners: room for bursts of a few thousand
/// datagrams while the relay task is busy.
const UDP_RCVBUF: usize = 4 << 20;

/// The unspecified address of a family (`0.0.0.0` or `::`): where a socket
/// the kernel gives its own address leaves from.
pub(crate) fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    }
}

/// Keepalive probes are sent this often once they start (or as often as the
/// idle time, if shorter) ...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ... and this many unanswered ones end the connection: a vanished peer is
/// found a minute after the idle time.
const KEEPALIVE_PROBES: u32 = 6;

/// Turns TCP keepalive on with probes after `idle` of silence, or off.
pub(crate) fn keepalive(socket: socket2::SockRef<'_>, idle: Option<Duration>) -> io::Result<()> {
    match idle {
        Some(idle) => socket.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(KEEPALIVE_INTERVAL.min(idle))
                .with_retries(KEEPALIVE_PROBES),
        ),
        None => socket.set_keepalive(false),
    }
}

/// A non-blocking TCP listener with SO_REUSEADDR (and SO_REUSEPORT when
/// asked), and the keepalive its accepted sockets inherit.
pub fn tcp_listener(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
    tcp_keepalive: Option<Duration>,
) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProto::TCP),
    )?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux, which
    // saves a setsockopt per client connection.
    s.set_tcp_nodelay(true)?;
    // Inherited too: no syscall per connection for the client side.
    if tcp_keepalive.is_some() {
        keepalive(socket2::SockRef::from(&s), tcp_keepalive)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog as i32)?;
    Ok(s.into())
}

/// A non-blocking Unix stream listener on `name`, carried as a
/// `TcpListener` (see [`unix_stream`]).
///
/// A path is made safely: what is there already is replaced only if it is
/// a socket nobody listens on (one left by a process that died); anything
/// else (a file, a live socket) is an error. The socket is bound in a
/// directory of this process's own beside the path, given `file`'s mode
/// and owner, made to listen, and then renamed over the path: a client
/// never finds the path missing, nor a socket there that refuses it or has
/// the wrong mode.
pub fn unix_listener(
    name: UnixName,
    backlog: u32,
    file: crate::config::UnixFile,
) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    let Some(path) = name.path() else {
        // The abstract namespace: no file; a name in use is EADDRINUSE.
        s.bind(&name.sock_addr()?)?;
        s.listen(backlog as i32)?;
        s.set_nonblocking(true)?;
        return Ok(std::net::TcpListener::from(std::os::fd::OwnedFd::from(s)));
    };
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; it is not replaced",
                    path.display()
                ),
            ))
        }
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another process listens on {}", path.display()),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Made in a directory of this process's own (mode 0700, beside the
    // path): nobody else can replace the socket there between its making
    // and its chmod/chown, which follow a path.
    let parent = path.parent().unwrap_or(std::path::Path::new("/"));
    let private = parent.join(format!(".switchyard-{}", std::process::id()));
    let temp = private.join("s");
    if temp.as_os_str().len() > crate::endpoint::MAX_UNIX_NAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "no room beside {} for the temporary name it is made under ({} bytes; a Unix socket's name has at most {}): use a shorter directory",
                path.display(),
                temp.as_os_str().len(),
                crate::endpoint::MAX_UNIX_NAME
            ),
        ));
    }
    // One left by a process of the same id that died: ours to clear.
    let _ = std::fs::remove_dir_all(&private);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    }
    let made = (|| {
        s.bind(&socket2::SockAddr::unix(&temp)?)?;
        if let Some(mode) = file.mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
        }
        if file.owner.is_some() || file.group.is_some() {
            std::os::unix::fs::chown(&temp, file.owner, file.group)?;
        }
        s.listen(backlog as i32)?;
        std::fs::rename(&temp, path)
    })();
    let _ = std::fs::remove_dir_all(&private);
    made?;
    s.set_nonblocking(true)?;
    Ok(std::net::TcpListener::from(std::os::fd::OwnedFd::from(s)))
}

/// A non-blocking UDP socket bound to `addr` (with SO_REUSEPORT when asked:
/// the kernel then keeps each client on one socket of the group).
pub fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(SockProto::UDP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // The kernel caps this at net.core.rmem_max; a smaller buffer still works.
    if let Err(e) = s.set_recv_buffer_size(UDP_RCVBUF) {
        tracing::debug!(error = %e, "cannot raise SO_RCVBUF");
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A listening socket registered with the reactor for readability, so an
/// accept loop can wait for a client before taking it.
pub(crate) fn watch_listener(
    listener: std::net::TcpListener,
) -> io::Result<tokio::io::unix::AsyncFd<std::net::TcpListener>> {
    crate::sys::watch(listener, tokio::io::Interest::READABLE)
}

/// Whether a client waits in `listener`'s accept queue (one `poll`, asked
/// only on the slow path, when the listener is at a limit).
pub(crate) fn client_waiting(listener: &std::net::TcpListener) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    // On an error, assume someone waits: the caller then waits for a place,
    // which is never wrong, only possibly counted.
    match poll(&mut fds, Some(&Timespec::default())) {
        Ok(0) => false,
        Ok(_) => fds[0].revents().contains(PollFlags::IN),
        Err(_) => true,
    }
}

/// Accepts one client, its socket already non-blocking and close-on-exec
/// (one syscall, as tokio's own accept does). A Unix listener's client is
/// [`UNIX_CLIENT`](crate::endpoint::UNIX_CLIENT).
pub(crate) fn accept(
    listener: &std::net::TcpListener,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::{acceptfrom_with, SocketFlags};
    let (fd, addr) = acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let peer = match addr {
        Some(a) if a.address_family() == rustix::net::AddressFamily::UNIX => {
            crate::endpoint::UNIX_CLIENT
        }
        // An unnamed Unix client may come with no address at all.
        None => crate::endpoint::UNIX_CLIENT,
        Some(a) => SocketAddr::try_from(a)
            .map_err(|_| io::Error::other("accepted a socket of an unknown family"))?,
    };
    Ok((std::net::TcpStream::from(fd), peer))
}

/// Binds `socket` (not yet connected) to leave from `ip`, the port chosen
/// by the kernel (a stream's caller sets `IP_BIND_ADDRESS_NO_PORT` first,
/// so the port is chosen at connect and many connections share the
/// address). `transparent` allows an address that is not this host's (the
/// client's own, for `source = "client"`): `IP_TRANSPARENT`, which takes
/// `CAP_NET_ADMIN` (or `CAP_NET_RAW`).
pub(crate) fn bind_source(socket: &Socket, (ip, transparent): (IpAddr, bool)) -> io::Result<()> {
    if transparent {
        match ip {
            IpAddr::V4(_) => socket.set_ip_transparent_v4(true),
            IpAddr::V6(_) => socket.set_ip_transparent_v6(true),
        }
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect from the client's address (IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW): {e}"),
            )
        })?;
    }
    socket.bind(&SocketAddr::new(ip, 0).into())
}

/// Whether this process may connect from addresses not its own
/// (`IP_TRANSPARENT`, for `source = "client"`): asked before a
/// configuration that needs it is applied.
pub(crate) fn may_connect_transparently() -> io::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_ip_transparent_v4(true)
}

/// A connected Unix stream socket as the data plane carries every
/// connection: a `TcpStream`. The calls made on a connection (recv, send,
/// splice, shutdown, peek, `SO_LINGER`, readiness, passing it at an
/// upgrade) are the same for both families; the few that are TCP's own
/// (`TCP_NODELAY`, keepalive) fail with `EOPNOTSUPP` and are skipped, and
/// no address is asked of it (a Unix client's are its listener's).
pub(crate) fn unix_stream(s: impl Into<std::os::fd::OwnedFd>) -> std::net::TcpStream {
    std::net::TcpStream::from(s.into())
}

/// Connects to `addr`: TCP, or a Unix socket carried as [`unix_stream`]
/// says.
pub(crate) async fn connect(addr: Endpoint) -> io::Result<tokio::net::TcpStream> {
    match addr {
        Endpoint::Inet(a) => tokio::net::TcpStream::connect(a).await,
        Endpoint::Unix(name) => connect_unix(name),
    }
}

/// Connects to the Unix stream socket `name`, carried as [`unix_stream`]
/// says. A local connect completes at once or fails (`EAGAIN`: its
/// server's backlog is full), so there is nothing to wait for.
pub(crate) fn connect_unix(name: UnixName) -> io::Result<tokio::net::TcpStream> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
    socket.connect(&name.sock_addr()?)?;
    tokio::net::TcpStream::from_std(unix_stream(socket))
}

/// A connection's own end, as a PROXY header names it.
pub(crate) enum LocalEnd {
    /// An IP address and port.
    Inet(SocketAddr),
    /// A Unix socket: the peer's `sun_path` and ours (empty when unnamed;
    /// an abstract name begins with NUL).
    Unix { peer: Vec<u8>, ours: Vec<u8> },
}

/// What `s`'s own end is (`getsockname`, and for a Unix socket
/// `getpeername` too).
pub(crate) fn local_end(s: &impl std::os::fd::AsFd) -> io::Result<LocalEnd> {
    use rustix::net::{getpeername, getsockname, AddressFamily, SocketAddrUnix};
    let ours = getsockname(s)?;
    if ours.address_family() != AddressFamily::UNIX {
        return SocketAddr::try_from(ours)
            .map(LocalEnd::Inet)
            .map_err(|_| io::Error::other("a socket of an unknown family"));
    }
    let sun_path = |a: rustix::net::SocketAddrAny| -> Vec<u8> {
        match SocketAddrUnix::try_from(a) {
            Ok(u) => match (u.path_bytes(), u.abstract_name()) {
                (Some(p), _) => p.to_vec(),
                (None, Some(n)) => [&[0u8][..], n].concat(),
                (None, None) => Vec::new(),
            },
            Err(_) => Vec::new(),
        }
    };
    let peer = getpeername(s)?.map(sun_path).unwrap_or_default();
    Ok(LocalEnd::Unix {
        peer,
        ours: sun_path(ours),
    })
}

/// Whether `e` is the proxy's own shortage, not the peer's doing, and which:
/// `descriptors` (EMFILE, ENFILE), `buffers` (ENOBUFS, ENOMEM) or `ports`
/// (EADDRNOTAVAIL: the ephemeral ports are spent). Such an error says nothing
/// about a backend and is never counted against one.
pub(crate) fn local_cause(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::EMFILE | libc::ENFILE => Some("descriptors"),
        libc::ENOBUFS | libc::ENOMEM => Some("buffers"),
        libc::EADDRNOTAVAIL => Some("ports"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_tcp_nodelay() {
        let idle = Duration::from_secs(30);
        let l = tcp_listener("127.0.0.1:0".parse().unwrap(), 16, false, Some(idle)).unwrap();
        let addr = l.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        l.set_nonblocking(false).unwrap();
        let (accepted, _) = l.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        let s = socket2::SockRef::from(&accepted);
        assert!(s.keepalive().unwrap(), "keepalive is inherited too");
        assert_eq!(s.tcp_keepalive_time().unwrap(), idle);
        assert_eq!(s.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(s.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
    }
}
