//! Connecting a client to a backend: pick, dial with retries on other
//! backends, and tell the backend's own failures from the proxy's.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::backend::ActiveGuard;
use crate::net::local_cause;
use crate::pool::Snapshot;

/// Opens a TCP connection to `addr`, with TCP_NODELAY set before connecting
/// (keepalive is the relay's to turn on, once the connection has lived a
/// moment: see `relay`).
///
/// The outcome is read from the readiness the connect raises (writable, or
/// error/hang-up), so a successful connect costs no `getsockopt(SO_ERROR)`;
/// that is asked only to name a failure.
async fn dial(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        // Bytes waiting mean the connection was made, even if the backend
        // has reset it since: those bytes and the reset are the relay's to
        // pass on (SO_ERROR would swallow the reset). A peek leaves both.
        let mut first = [std::mem::MaybeUninit::<u8>::uninit()];
        if matches!(socket2::SockRef::from(&stream).peek(&mut first), Ok(n) if n > 0) {
            return Ok(stream);
        }
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connection closed while connecting",
            )
        }));
    }
    Ok(stream)
}

/// Why a client could not be given a backend.
pub(super) enum ConnectRefusal {
    /// Every backend tried failed, or none was available.
    NoBackend,
    /// The proxy itself ran short (`descriptors`, `buffers`, `ports`):
    /// no backend is to blame, and trying others would not help.
    Local(&'static str, io::Error),
}

/// Opens a connection to `addr` and writes `preamble` (a PROXY header, the
/// client's first bytes) on it: a backend that cannot take those has not
/// taken the connection.
async fn dial_and_greet(addr: SocketAddr, preamble: &[u8]) -> io::Result<TcpStream> {
    let mut stream = dial(addr).await?;
    if !preamble.is_empty() {
        tokio::io::AsyncWriteExt::write_all(&mut stream, preamble).await?;
    }
    Ok(stream)
}

/// Connects to an available backend of `pool`, trying others on failure;
/// `preamble` is written first on the connection that is kept.
pub(super) async fn connect(
    snap: &Snapshot,
    client: SocketAddr,
    listener: &str,
    preamble: &[u8],
) -> Result<(TcpStream, ActiveGuard), ConnectRefusal> {
    let cfg = &snap.config;
    let mut tried = Vec::with_capacity(cfg.retries as usize + 1);
    for _ in 0..=cfg.retries {
        let i = snap.pick(client, &tried).ok_or(ConnectRefusal::NoBackend)?;
        tried.push(i);
        let backend = &snap.members[i].backend;
        // Count it before connecting so least_conn sees in-flight connects.
        let guard = backend.open();
        let started = tokio::time::Instant::now();
        let result =
            match tokio::time::timeout(cfg.connect_timeout, dial_and_greet(backend.addr, preamble))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            };
        match result {
            Ok(stream) => {
                backend
                    .metrics
                    .connect_duration
                    .observe(started.elapsed().as_secs_f64());
                // Passive health hears of the success when the connection
                // ends: one the backend ends at once, without a byte, is
                // no success (see EARLY_CLOSE).
                return Ok((stream, guard.established()));
            }
            Err(e) if local_cause(&e).is_some() => {
                let reason = local_cause(&e).expect("checked in the guard");
                return Err(ConnectRefusal::Local(reason, e));
            }
            Err(e) => {
                backend.count_failure(&e);
                backend.connect_failed(cfg.max_fails, cfg.fail_timeout);
                tracing::warn!(listener, %client, backend = %backend.addr, error = %e, "connect to backend failed");
            }
        }
    }
    Err(ConnectRefusal::NoBackend)
}
