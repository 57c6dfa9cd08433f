//! Connecting a client to a backend: pick, dial with retries on other
//! backends, and tell the backend's own failures from the proxy's.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::backend::ActiveGuard;
use crate::endpoint::Endpoint;
use crate::metrics::TlsHandshakes;
use crate::net::local_cause;
use crate::pool::{Pool, Snapshot};

/// Starts a TCP connection to `addr` (from `source`, when given: see
/// [`crate::net::bind_source`]), with TCP_NODELAY set before connecting
/// (keepalive is the relay's to turn on, once the connection has lived a
/// moment: see `relay`).
fn start_connect(addr: SocketAddr, source: Option<(IpAddr, bool)>) -> Result<Socket, DialError> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source {
        // Port 0 is chosen at connect, so many connections share the address.
        crate::sys::set_int(&socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        crate::net::bind_source(&socket, source).map_err(DialError::Source)?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(socket)
}

/// Connects to `backend` for `client`.
///
/// The outcome is read from the readiness the connect raises (writable, or
/// error/hang-up), so a successful connect costs no `getsockopt(SO_ERROR)`;
/// that is asked only to name a failure.
async fn dial(backend: &crate::backend::Backend, client: IpAddr) -> Result<TcpStream, DialError> {
    let addr = match backend.addr {
        Endpoint::Inet(a) => a,
        // A Unix socket is connected at once, or not at all.
        Endpoint::Unix(name) => return Ok(crate::net::connect_unix(name)?),
    };
    let source = backend.source_for(client).map_err(DialError::Source)?;
    let socket = start_connect(addr, source)?;
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
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connection closed while connecting",
                )
            })
            .into());
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

/// What a backend connection begins with: a PROXY header (`bytes[..header]`,
/// before TLS when the pool starts TLS), then the client's bytes read while
/// greeting it.
#[derive(Debug, Default)]
pub(super) struct Preamble {
    pub bytes: Vec<u8>,
    pub header: usize,
}

impl Preamble {
    /// How many of its bytes are the client's.
    pub fn early(&self) -> usize {
        self.bytes.len() - self.header
    }
}

/// A connected backend: plain, or with TLS the pool started.
pub(super) enum TcpUpstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Why a backend connection was not made: the socket's error, a failed
/// TLS handshake (counted under its result), or the pool's `source` that
/// could not be taken (the proxy's doing, never the backend's).
enum DialError {
    Io(io::Error),
    Tls(&'static str, io::Error),
    Source(io::Error),
}

impl From<io::Error> for DialError {
    fn from(e: io::Error) -> Self {
        DialError::Io(e)
    }
}

/// Opens a connection to `backend` and writes `preamble` on it (with the
/// pool's TLS started after the header): a backend that cannot take those
/// has not taken the connection.
async fn dial_and_greet(
    backend: &crate::backend::Backend,
    preamble: &Preamble,
    (tls, client): (Option<(&crate::tls::Originator, &TlsHandshakes)>, IpAddr),
) -> Result<TcpUpstream, DialError> {
    use tokio::io::AsyncWriteExt;
    let mut stream = dial(backend, client).await?;
    let Some(tls) = tls else {
        if !preamble.bytes.is_empty() {
            stream.write_all(&preamble.bytes).await?;
        }
        return Ok(TcpUpstream::Plain(stream));
    };
    // Boxed: a TLS stream's state is large, and no part of a plain
    // connection's task.
    Box::pin(start_tls(stream, backend, preamble, tls)).await
}

/// Writes the PROXY header, then starts the pool's TLS and writes the
/// client's early bytes through it.
async fn start_tls(
    mut stream: TcpStream,
    backend: &crate::backend::Backend,
    preamble: &Preamble,
    (tls, handshakes): (&crate::tls::Originator, &TlsHandshakes),
) -> Result<TcpUpstream, DialError> {
    use tokio::io::AsyncWriteExt;
    let (header, early) = preamble.bytes.split_at(preamble.header);
    if !header.is_empty() {
        stream.write_all(header).await?;
    }
    let started = tokio::time::Instant::now();
    let mut stream = match tls.connect(stream, &backend.name, backend.addr).await {
        Ok(s) => s,
        Err(e) => {
            let result = crate::tls::classify(&e);
            handshakes.count(result);
            return Err(DialError::Tls(result, e));
        }
    };
    handshakes.count("ok");
    handshakes.seconds.observe(started.elapsed().as_secs_f64());
    if !early.is_empty() {
        stream.write_all(early).await?;
        stream.flush().await?;
    }
    Ok(TcpUpstream::Tls(Box::new(stream)))
}

/// Counts and logs a client no backend could be given.
pub(super) fn refused_connect(
    shared: &super::shared::TcpShared,
    listener: &str,
    who: SocketAddr,
    refusal: ConnectRefusal,
) {
    let m = &shared.metrics;
    match refusal {
        ConnectRefusal::NoBackend => {
            m.no_backend.inc();
            tracing::warn!(listener, client = %who, "no backend could take the connection; closing it");
        }
        ConnectRefusal::Local(reason, e) => {
            m.local.count(reason);
            if !shared.local_log.ready() {
            } else if reason == "source" {
                tracing::error!(listener, client = %who, error = %e, "cannot connect from the pool's source; closing connections it cannot serve (logged at most once a second)");
            } else {
                tracing::error!(listener, reason, error = %e, "the proxy is out of its own resources; closing connections it cannot serve (logged at most once a second)");
            }
        }
    }
}

/// Connects to an available backend of `pool` (as `snap` has it), trying
/// others on failure; `preamble` is written first on the connection that is
/// kept.
pub(super) async fn connect(
    (pool, snap): (&Pool, &Snapshot),
    client: SocketAddr,
    listener: &str,
    preamble: &Preamble,
) -> Result<(TcpUpstream, ActiveGuard), ConnectRefusal> {
    let cfg = &snap.config;
    let mut tried = Vec::with_capacity(cfg.retries as usize + 1);
    for _ in 0..=cfg.retries {
        let i = snap.pick(client, &tried).ok_or(ConnectRefusal::NoBackend)?;
        tried.push(i);
        let backend = &snap.members[i].backend;
        // Count it before connecting so least_conn sees in-flight connects.
        let guard = backend.open();
        let started = tokio::time::Instant::now();
        let result = match tokio::time::timeout(
            cfg.connect_timeout,
            dial_and_greet(
                backend,
                preamble,
                (
                    // Not bound outside the loop: every connection's task
                    // would carry it.
                    cfg.tls.as_ref().map(|t| (&*t.built, pool.tls_handshakes())),
                    client.ip(),
                ),
            ),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(DialError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
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
            Err(DialError::Source(e)) => return Err(ConnectRefusal::Local("source", e)),
            Err(DialError::Io(e)) if local_cause(&e).is_some() => {
                let reason = local_cause(&e).expect("checked in the guard");
                return Err(ConnectRefusal::Local(reason, e));
            }
            Err(DialError::Tls(result, e)) => {
                backend.metrics.fail_tls.inc();
                backend.connect_failed(cfg.max_fails, cfg.fail_timeout);
                tracing::warn!(listener, %client, backend = %backend.addr, result, error = %e, "TLS handshake with backend failed");
            }
            Err(DialError::Io(e)) => {
                backend.count_failure(&e);
                backend.connect_failed(cfg.max_fails, cfg.fail_timeout);
                tracing::warn!(listener, %client, backend = %backend.addr, error = %e, "connect to backend failed");
            }
        }
    }
    Err(ConnectRefusal::NoBackend)
}
