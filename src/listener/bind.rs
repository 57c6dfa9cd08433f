//! A listener's sockets before they serve: bound anew (one per worker with
//! `reuse_port`), inherited from the process this one replaced, or taken
//! over from a running listener on the same address. All that can fail on
//! a start or a reload fails here, before anything changes.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::{ListenerConfig, Protocol};
use crate::endpoint::{Endpoint, UnixName};
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
    pub addr: Endpoint,
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

/// A listener's sockets, bound but not yet served. A Unix listener's
/// socket is carried as a `TcpListener` (see [`net::unix_stream`]), with
/// the file it made.
pub(crate) enum Bound {
    Tcp(Vec<std::net::TcpListener>, Option<Arc<SocketFile>>),
    Udp(Vec<std::net::UdpSocket>),
}

impl Bound {
    /// Sockets handed over by the process this one replaces (a binary
    /// upgrade) for `l`, already bound and, for TCP, listening; the file of
    /// a Unix listener is this process's to remove from now on.
    pub(crate) fn inherit(l: &ListenerConfig, fds: Vec<OwnedFd>) -> Bound {
        match l.protocol {
            Protocol::Tcp => Bound::Tcp(
                fds.into_iter().map(Into::into).collect(),
                l.bind.unix().and_then(SocketFile::found).map(Arc::new),
            ),
            Protocol::Udp => Bound::Udp(fds.into_iter().map(Into::into).collect()),
        }
    }

    /// The address the sockets were given (the real port when bound to
    /// port 0; a Unix socket's name as `bind` gives it).
    pub(super) fn local_addr(&self, bind: Endpoint) -> Endpoint {
        if bind.unix().is_some() {
            return bind;
        }
        match self {
            Bound::Tcp(s, _) => s[0].local_addr(),
            Bound::Udp(s) => s[0].local_addr(),
        }
        .expect("a bound socket has an address")
        .into()
    }
}

/// A Unix listener's socket file, removed when the last listener holding
/// it stops, unless a binary upgrade handed it on or something else has
/// taken the path since (another inode is there).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: &'static std::path::Path,
    /// The file's device and inode when it was made.
    made: (u64, u64),
    /// Handed to a successor: it is the successor's to remove.
    handed: AtomicBool,
}

impl SocketFile {
    /// The file now at `name`'s path (none for an abstract name).
    fn found(name: UnixName) -> Option<SocketFile> {
        let path = name.path()?;
        let meta = std::fs::symlink_metadata(path).ok()?;
        Some(SocketFile {
            path,
            made: (meta.dev(), meta.ino()),
            handed: AtomicBool::new(false),
        })
    }

    /// A successor process serves on it now.
    pub(crate) fn hand_on(&self) {
        self.handed.store(true, Ordering::Relaxed);
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.handed.load(Ordering::Relaxed) {
            return;
        }
        let ours =
            std::fs::symlink_metadata(self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.made);
        if ours {
            match std::fs::remove_file(self.path) {
                Ok(()) => {
                    tracing::debug!(path = %self.path.display(), "Unix listener's socket file removed")
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the Unix listener's socket file")
                }
            }
        }
    }
}

/// Binds one listener's socket(s): with `reuse_port`, one per worker thread
/// (a Unix socket is one: it has no port to share).
pub(crate) fn bind(l: &ListenerConfig) -> Result<Bound, BindError> {
    let err = |cause| BindError::of(l, cause);
    if let Endpoint::Unix(name) = l.bind {
        let socket = net::unix_listener(name, l.backlog, l.unix_file).map_err(err)?;
        let file = SocketFile::found(name).map(Arc::new);
        return Ok(Bound::Tcp(vec![socket], file));
    }
    let Endpoint::Inet(addr) = l.bind else {
        unreachable!("a Unix bind returned above")
    };
    match l.protocol {
        Protocol::Tcp => group(
            addr,
            l,
            |addr, reuse| net::tcp_listener(addr, l.backlog, reuse, l.tcp_keepalive),
            |s| s.local_addr(),
        )
        .map(|s| Bound::Tcp(s, None))
        .map_err(err),
        Protocol::Udp => group(addr, l, net::udp_socket, |s| s.local_addr())
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
    bind: SocketAddr,
    l: &ListenerConfig,
    open: impl Fn(SocketAddr, bool) -> std::io::Result<S>,
    local_addr: impl Fn(&S) -> std::io::Result<SocketAddr>,
) -> std::io::Result<Vec<S>> {
    let first = open(bind, true)?;
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
/// same protocol and address `addr` (and its Unix socket's `file`), grown
/// to one per worker with `reuse_port`.
pub(crate) fn take_over_fds(
    (fds, file): (Vec<OwnedFd>, Option<Arc<SocketFile>>),
    addr: Endpoint,
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
    let Endpoint::Inet(addr) = addr else {
        let sockets = fds.into_iter().map(Into::into).collect();
        return Ok(Bound::Tcp(sockets, file));
    };
    match l.protocol {
        Protocol::Tcp => {
            let mut sockets: Vec<std::net::TcpListener> = fds.into_iter().map(Into::into).collect();
            grow(l, addr, &mut sockets, |addr, reuse| {
                net::tcp_listener(addr, l.backlog, reuse, l.tcp_keepalive)
            })
            .map_err(err)?;
            Ok(Bound::Tcp(sockets, None))
        }
        Protocol::Udp => {
            let mut sockets: Vec<std::net::UdpSocket> = fds.into_iter().map(Into::into).collect();
            grow(l, addr, &mut sockets, net::udp_socket).map_err(err)?;
            Ok(Bound::Udp(sockets))
        }
    }
}
