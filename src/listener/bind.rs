//! A listener's sockets before they serve: bound anew (one per worker with
//! `reuse_port`), inherited from the process this one replaced, or taken
//! over from a running listener on the same address. All that can fail on
//! a start or a reload fails here, before anything changes.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use crate::config::{ListenerConfig, Protocol};
use crate::net;
use crate::workers;

/// A listener's sockets could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener `{listener}`: cannot bind {protocol} {addr}: {cause}")]
pub struct BindError {
    /// The listener's name.
    pub listener: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The configured address.
    pub addr: SocketAddr,
    /// What the kernel said.
    pub cause: std::io::Error,
}

impl BindError {
    /// Listener `l`'s sockets could not be had, for `cause`.
    pub(super) fn of(l: &ListenerConfig, cause: std::io::Error) -> BindError {
        BindError {
            listener: l.name.clone(),
            protocol: l.protocol.as_str(),
            addr: l.bind,
            cause,
        }
    }
}

/// A listener's sockets, bound but not yet served.
pub(crate) enum Bound {
    Tcp(Vec<std::net::TcpListener>),
    Udp(Vec<std::net::UdpSocket>),
}

impl Bound {
    /// Sockets handed over by the process this one replaces (a binary
    /// upgrade), already bound and, for TCP, listening.
    pub(crate) fn inherit(protocol: Protocol, fds: Vec<OwnedFd>) -> Bound {
        match protocol {
            Protocol::Tcp => Bound::Tcp(fds.into_iter().map(Into::into).collect()),
            Protocol::Udp => Bound::Udp(fds.into_iter().map(Into::into).collect()),
        }
    }

    /// The address the sockets were given (the real port when bound to port 0).
    pub(super) fn local_addr(&self) -> SocketAddr {
        match self {
            Bound::Tcp(s) => s[0].local_addr(),
            Bound::Udp(s) => s[0].local_addr(),
        }
        .expect("a bound socket has an address")
    }
}

/// Binds one listener's socket(s): with `reuse_port`, one per worker thread.
pub(crate) fn bind(l: &ListenerConfig) -> Result<Bound, BindError> {
    let err = |cause| BindError::of(l, cause);
    match l.protocol {
        Protocol::Tcp => group(
            l,
            |addr, reuse| net::tcp_listener(addr, l.backlog, reuse, l.tcp_keepalive),
            |s| s.local_addr(),
        )
        .map(Bound::Tcp)
        .map_err(err),
        Protocol::Udp => group(l, net::udp_socket, |s| s.local_addr())
            .map(Bound::Udp)
            .map_err(err),
    }
}

/// One socket on the listener's address or, with `reuse_port`, one per
/// worker thread, the rest on the address the first was given (so port 0
/// works). Every socket has SO_REUSEPORT, whatever `reuse_port` says (it
/// only says how many sockets): a later reload can then add sockets to the
/// group, or a renamed listener take them over, without the address ever
/// being free (as HAProxy does). The kernel lets only sockets of the same
/// user join a group.
fn group<S>(
    l: &ListenerConfig,
    open: impl Fn(SocketAddr, bool) -> std::io::Result<S>,
    local_addr: impl Fn(&S) -> std::io::Result<SocketAddr>,
) -> std::io::Result<Vec<S>> {
    let first = open(l.bind, true)?;
    let addr = local_addr(&first)?;
    let mut sockets = vec![first];
    grow(l, addr, &mut sockets, open)?;
    Ok(sockets)
}

/// With `reuse_port`, adds sockets on `addr` until there is one per worker.
fn grow<S>(
    l: &ListenerConfig,
    addr: SocketAddr,
    sockets: &mut Vec<S>,
    open: impl Fn(SocketAddr, bool) -> std::io::Result<S>,
) -> std::io::Result<()> {
    if l.reuse_port {
        let workers = workers::count();
        while sockets.len() < workers {
            sockets.push(open(addr, true)?);
        }
    }
    Ok(())
}

/// The sockets for `l` from `fds`, copies of a running listener's on the
/// same protocol and address `addr`, grown to one per worker with
/// `reuse_port`.
pub(crate) fn take_over_fds(
    fds: Vec<OwnedFd>,
    addr: SocketAddr,
    l: &ListenerConfig,
) -> Result<Bound, BindError> {
    let err = |cause| BindError::of(l, cause);
    if !l.reuse_port && fds.len() > 1 {
        tracing::info!(listener = %l.name, sockets = fds.len(), "reuse_port is off: the listener keeps its sockets until the next start, so no queued client is reset");
    }
    if fds.is_empty() {
        return Err(err(std::io::Error::other(
            "the listener to take over has no socket",
        )));
    }
    match l.protocol {
        Protocol::Tcp => {
            let mut sockets: Vec<std::net::TcpListener> = fds.into_iter().map(Into::into).collect();
            grow(l, addr, &mut sockets, |addr, reuse| {
                net::tcp_listener(addr, l.backlog, reuse, l.tcp_keepalive)
            })
            .map_err(err)?;
            Ok(Bound::Tcp(sockets))
        }
        Protocol::Udp => {
            let mut sockets: Vec<std::net::UdpSocket> = fds.into_iter().map(Into::into).collect();
            grow(l, addr, &mut sockets, net::udp_socket).map_err(err)?;
            Ok(Bound::Udp(sockets))
        }
    }
}
