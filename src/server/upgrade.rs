//! Binary upgrade: start the binary again from the same path and arguments,
//! hand it every listening socket (TCP, UDP and the admin endpoint), and wait
//! until it says it serves. Nothing is closed or re-bound on the way, so no
//! client is refused: until the new process accepts, clients wait in the
//! same kernel queues.
//!
//! The sockets travel by inheritance: their descriptors lose close-on-exec
//! in the child only (between fork and exec), and the child learns which is
//! which from one environment variable, [`SOCKETS_ENV`], a JSON list naming
//! each listener as the configuration does. A second variable names one end
//! of a socket pair, [`CHANNEL_ENV`], on which the child says `ready` once it
//! serves; if it exits or stays silent instead, the old process serves on
//! and says why. The same channel then carries the old process's idle
//! established connections over (see `listener::handover`).
//!
//! The descriptors themselves are passed and taken in `sys`: kept open
//! across the exec in the child only, and claimed once, checked to be
//! sockets of the right kind.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Server;
use crate::config::{ListenerConfig, Protocol};
use crate::listener::handover;
use crate::sys;

/// The listening sockets a new process inherits, as JSON.
pub const SOCKETS_ENV: &str = "SWITCHYARD_INHERITED_SOCKETS";
/// The descriptor on which a new process says it is ready.
pub const CHANNEL_ENV: &str = "SWITCHYARD_UPGRADE_CHANNEL";

/// How long a new process may take to start serving before the old one
/// gives up on it (it loads and validates the file, binds nothing new).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// One listener's sockets, named as the configuration names the listener.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HandedListener {
    pub name: String,
    pub protocol: String,
    /// The configured address (a port-0 listener keeps its real port).
    pub bind: crate::endpoint::Endpoint,
    pub reuse_port: bool,
    pub fds: Vec<RawFd>,
}

/// Everything handed to a new process.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Handed {
    pub listeners: Vec<HandedListener>,
    /// The admin endpoint's configured address and socket.
    pub admin: Option<(SocketAddr, RawFd)>,
    /// The descriptors named above: this process's own copies, open until
    /// the new process has inherited them.
    #[serde(skip)]
    owned: Vec<OwnedFd>,
}

impl Handed {
    /// Adds a listener (its name, protocol, address and `reuse_port`) with
    /// copies of its sockets, owned here until the new process has
    /// inherited them.
    pub(crate) fn add_listener(
        &mut self,
        name: &str,
        protocol: &str,
        bind: crate::endpoint::Endpoint,
        reuse_port: bool,
        fds: Vec<OwnedFd>,
    ) {
        self.listeners.push(HandedListener {
            name: name.to_string(),
            protocol: protocol.to_string(),
            bind,
            reuse_port,
            fds: fds.iter().map(AsRawFd::as_raw_fd).collect(),
        });
        self.owned.extend(fds);
    }

    /// Adds the admin endpoint's address and a copy of its socket.
    pub(crate) fn add_admin(&mut self, bind: SocketAddr, fd: OwnedFd) {
        self.admin = Some((bind, fd.as_raw_fd()));
        self.owned.push(fd);
    }

    /// The descriptors the new process inherits.
    fn fds(&self) -> Vec<RawFd> {
        self.owned.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// The path and arguments this process was started with, read at start (the
/// file at that path may be replaced by then: that is the point).
struct Origin {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
}

fn origin() -> &'static OnceLock<Origin> {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    &ORIGIN
}

/// Remembers how this process was started, for a later upgrade. Call it
/// early in `main`, before the binary on disk can change.
pub fn remember_origin() {
    let exe = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .filter(|p| p.components().count() > 1)
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("switchyard"));
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let _ = origin().set(Origin {
        exe,
        args: std::env::args_os().skip(1).collect(),
    });
}

/// Why an upgrade did not happen; the old process serves on.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// An upgrade needs `remember_origin` at start (the `switchyard run` command).
    #[error("this process cannot be upgraded: it was not started as `switchyard run`")]
    NoOrigin,
    /// The new binary could not be started.
    #[error("cannot start {path}: {cause}")]
    Spawn {
        /// The binary's path.
        path: PathBuf,
        /// What exec said.
        cause: io::Error,
    },
    /// It started but exited before serving (a bad file, a bad binary).
    #[error("the new process exited before it was ready ({0}); its log says why")]
    Exited(std::process::ExitStatus),
    /// It neither served nor exited in time.
    #[error("the new process was not ready within {}s and was stopped", READY_WITHIN.as_secs())]
    Timeout,
    /// The channel to it failed.
    #[error("the channel to the new process failed: {0}")]
    Channel(io::Error),
    /// Another upgrade is under way.
    #[error("an upgrade is already under way")]
    Busy,
    /// The listening sockets could not be copied for the new process
    /// (out of descriptors).
    #[error("cannot copy the listening sockets for the new process: {0}")]
    Sockets(io::Error),
}

/// Starts the new process with `handed`'s sockets and waits until it
/// serves. Returns its process id.
pub(crate) async fn start_successor(handed: &Handed) -> Result<(u32, OwnedFd), UpgradeError> {
    let origin = origin().get().ok_or(UpgradeError::NoOrigin)?;
    let (ours, theirs) = handover::pair().map_err(UpgradeError::Channel)?;
    let mut inherit = handed.fds();
    inherit.push(theirs.as_raw_fd());
    let json = serde_json::to_string(handed).expect("plain data serializes");
    let mut cmd = tokio::process::Command::new(&origin.exe);
    cmd.args(&origin.args)
        .env(SOCKETS_ENV, json)
        .env(CHANNEL_ENV, theirs.as_raw_fd().to_string())
        .kill_on_drop(false);
    sys::keep_on_exec(&mut cmd, inherit);
    let mut child = cmd.spawn().map_err(|cause| UpgradeError::Spawn {
        path: origin.exe.clone(),
        cause,
    })?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, path = %origin.exe.display(), "upgrade: started the new process; waiting for it to serve");
    // The wait is a blocking read on the blocking pool; it ends with a
    // message, or with the channel closing when the child exits or is killed.
    let waiting = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 64];
        let said = handover::recv(&ours, &mut buf).map(|m| m.map(|(n, _)| buf[..n].to_vec()));
        (ours, said)
    });
    let outcome = tokio::time::timeout(READY_WITHIN, async {
        tokio::select! {
            r = waiting => Ok(r.expect("the wait does not panic")),
            status = child.wait() => Err(status),
        }
    })
    .await;
    match outcome {
        Ok(Ok((ours, Ok(Some(said))))) if said.starts_with(b"ready") => Ok((pid, ours)),
        // The channel closed without a word: the child is going down.
        Ok(Ok((_, Ok(_)))) => Err(UpgradeError::Exited(
            child.wait().await.map_err(UpgradeError::Channel)?,
        )),
        Ok(Ok((_, Err(e)))) => Err(UpgradeError::Channel(e)),
        Ok(Err(Ok(status))) => Err(UpgradeError::Exited(status)),
        Ok(Err(Err(e))) => Err(UpgradeError::Channel(e)),
        Err(_) => {
            if let Err(e) = child.kill().await {
                tracing::warn!(pid, error = %e, "upgrade: cannot stop the new process");
            }
            Err(UpgradeError::Timeout)
        }
    }
}

/// In a new process: tells the old one that this one serves, then takes
/// the connections it hands over, until it closes the channel.
pub fn tell_ready(server: &Server) {
    let Some(fd) = std::env::var(CHANNEL_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    else {
        return;
    };
    // Once: the variable stays in the environment (changing it while other
    // threads run is unsafe), and a later upgrade sets its own.
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TOLD.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let Some(channel) = sys::inherited(fd, libc::SOCK_SEQPACKET) else {
        tracing::warn!(
            fd,
            "upgrade: the channel descriptor is not a socket; not answering"
        );
        return;
    };
    if let Err(e) = handover::send(&channel, b"ready", &[]) {
        tracing::warn!(error = %e, "upgrade: cannot tell the old process this one serves");
        return;
    }
    let (server, runtime) = (server.clone(), tokio::runtime::Handle::current());
    let spawned = std::thread::Builder::new()
        .name("switchyard-takeover".into())
        .spawn(move || take_connections(channel, server, runtime));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "upgrade: cannot take connections over; the old process drains them");
    }
}

/// Receives handed-over connections until the old process closes the channel.
fn take_connections(channel: OwnedFd, server: Server, runtime: tokio::runtime::Handle) {
    let mut buf = vec![0u8; 4096];
    let mut taken = 0u64;
    loop {
        match handover::recv(&channel, &mut buf) {
            Ok(None) => break,
            Ok(Some((n, fds))) => {
                let moved: handover::Moved = match serde_json::from_slice(&buf[..n]) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "upgrade: a handed-over connection without a readable description is closed");
                        continue;
                    }
                };
                let mut fds = fds.into_iter();
                let (Some(client), Some(backend)) = (fds.next(), fds.next()) else {
                    tracing::warn!("upgrade: a handed-over connection came without its sockets");
                    continue;
                };
                taken += 1;
                let server = server.clone();
                runtime.spawn(async move {
                    server.adopt(moved, client.into(), backend.into()).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: the channel from the old process failed");
                break;
            }
        }
    }
    tracing::info!(
        connections = taken,
        "upgrade: took over the old process's established connections"
    );
}

/// Sockets handed over by the process this one replaces, taken as the
/// configuration asks for them; those never asked for close at the end.
#[derive(Default)]
pub(crate) struct Inherited {
    listeners: HashMap<(String, Protocol, crate::endpoint::Endpoint, bool), Vec<OwnedFd>>,
    admin: Option<(SocketAddr, OwnedFd)>,
}

impl Inherited {
    /// Reads [`SOCKETS_ENV`], once per process (the variable stays in the
    /// environment: changing it while other threads run is unsafe). A
    /// malformed list or a descriptor that is not an open socket of the
    /// right kind is left alone and said.
    pub fn from_env() -> Inherited {
        static READ: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let Ok(json) = std::env::var(SOCKETS_ENV) else {
            return Inherited::default();
        };
        if READ.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Inherited::default();
        }
        let handed: Handed = match serde_json::from_str(&json) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: cannot read the inherited sockets; binding anew");
                return Inherited::default();
            }
        };
        let mut out = Inherited::default();
        for l in handed.listeners {
            let (protocol, kind) = match l.protocol.as_str() {
                "tcp" => (Protocol::Tcp, libc::SOCK_STREAM),
                "udp" => (Protocol::Udp, libc::SOCK_DGRAM),
                _ => continue,
            };
            let fds: Option<Vec<OwnedFd>> =
                l.fds.iter().map(|&fd| sys::inherited(fd, kind)).collect();
            let Some(fds) = fds.filter(|f| !f.is_empty()) else {
                tracing::warn!(listener = %l.name, "upgrade: an inherited descriptor is not a socket; binding anew");
                continue;
            };
            out.listeners
                .insert((l.name, protocol, l.bind, l.reuse_port), fds);
        }
        if let Some((bind, fd)) = handed.admin {
            if let Some(fd) = sys::inherited(fd, libc::SOCK_STREAM) {
                out.admin = Some((bind, fd));
            }
        }
        out
    }

    /// The sockets of the listener `l` names, if they were handed over.
    pub fn take_listener(&mut self, l: &ListenerConfig) -> Option<Vec<OwnedFd>> {
        self.listeners
            .remove(&(l.name.clone(), l.protocol, l.bind, l.reuse_port))
    }

    /// The admin endpoint's socket, if it was handed over for `bind`.
    pub fn take_admin(&mut self, bind: SocketAddr) -> Option<std::net::TcpListener> {
        match self.admin.take() {
            Some((b, fd)) if b == bind => Some(fd.into()),
            other => {
                self.admin = other;
                None
            }
        }
    }

    /// Whether anything is left over (closed when this is dropped).
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.admin.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// What is handed over is this process's own copy of each socket: it
    /// stays a listening socket (and the same one) when the listener that
    /// owned the original has closed it, so its number cannot have been
    /// reused for something else by the time the new process starts.
    #[test]
    fn handed_sockets_are_owned_copies() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut handed = Handed::default();
        handed.add_listener(
            "front",
            "tcp",
            addr.into(),
            false,
            vec![l.as_fd().try_clone_to_owned().unwrap()],
        );
        drop(l);
        // A descriptor opened now could take a freed number; it does not
        // take the handed one.
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_ne!(other.as_raw_fd(), handed.listeners[0].fds[0]);
        let fds = handed.fds();
        assert_eq!(fds, handed.listeners[0].fds);
        assert!(crate::sys::is_socket(fds[0], libc::SOCK_STREAM));
        assert!(
            std::net::TcpStream::connect(addr).is_ok(),
            "still listening"
        );
    }
}
