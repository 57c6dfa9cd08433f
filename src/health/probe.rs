//! One health probe of each kind. Each returns a short description of what
//! it saw, or the reason it failed.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::either::Either;

use crate::config::{CheckKind, HealthConfig, ProxyVersion};
use crate::endpoint::Endpoint;
use crate::tls::Originator;
use crate::wire::proxy_protocol::{self, Transport};

/// Why a probe did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The backend failed it (refused, silent, wrong reply).
    Backend(String),
    /// The proxy could not even try (out of descriptors, buffers or local
    /// ports): it says nothing about the backend.
    Local(String),
}

impl From<String> for Fault {
    fn from(s: String) -> Fault {
        Fault::Backend(s)
    }
}

/// A socket call's failure: the proxy's own shortage, or the backend's doing.
fn fault(what: &str, e: std::io::Error) -> Fault {
    match crate::net::local_cause(&e) {
        Some(reason) => Fault::Local(format!("{what}: out of {reason}: {e}")),
        None => Fault::Backend(format!("{what}: {e}")),
    }
}

/// Probes `backend`, from its pool's `source` address when it names one,
/// over the pool's TLS (`tls`) when it has one and the check is a stream's.
pub async fn run(
    cfg: &HealthConfig,
    backend: &crate::backend::Backend,
    tls: Option<&Originator>,
) -> Result<String, Fault> {
    let (name, from) = (backend.name.as_str(), backend.check_source());
    let mut target = backend.addr;
    // `check` refuses a check port for a pool of Unix sockets.
    if let (Some(port), Endpoint::Inet(a)) = (cfg.port, &mut target) {
        a.set_port(port);
    }
    match &cfg.check {
        CheckKind::None => Ok("no check".into()),
        CheckKind::Tcp { send, expect } => {
            let s = open((target, from), cfg.proxy_header).await?;
            let s = secure(s, tls, (target, name)).await?;
            tcp(s, send.as_deref(), expect.as_deref()).await
        }
        CheckKind::Http {
            path,
            expect_status,
            host,
        } => {
            let s = open((target, from), cfg.proxy_header).await?;
            let s = secure(s, tls, (target, name)).await?;
            http(s, target, path, *expect_status, host.as_deref()).await
        }
        CheckKind::Udp { send, expect } => {
            let header = cfg.proxy_header.map(|_| local_header(Transport::Dgram));
            let datagram = [header.unwrap_or_default().as_slice(), send].concat();
            let Endpoint::Inet(target) = target else {
                return Err("a UDP check needs an IP backend".to_string().into());
            };
            udp((target, from), &datagram, expect.as_deref()).await
        }
    }
}

/// A v2 header with the `LOCAL` command: the proxy's own connection.
fn local_header(t: Transport) -> Vec<u8> {
    proxy_protocol::v2(None, t, &[])
}

/// The unspecified address of `addr`'s family, or `from`: where a check
/// leaves from.
fn local(addr: SocketAddr, from: Option<IpAddr>) -> SocketAddr {
    SocketAddr::new(
        from.unwrap_or_else(|| crate::net::unspecified(addr.is_ipv6())),
        0,
    )
}

/// Connects to `addr` (from `from`, when given) and, when the pool sends
/// one, writes its PROXY header. A Unix socket's connection is carried as
/// the data plane carries it (see [`crate::net::unix_stream`]).
async fn open(
    (addr, from): (Endpoint, Option<IpAddr>),
    header: Option<ProxyVersion>,
) -> Result<TcpStream, Fault> {
    let addr = match addr {
        Endpoint::Inet(a) => a,
        Endpoint::Unix(name) => {
            let s = crate::net::connect_unix(name).map_err(connect_error)?;
            return with_header(s, header, None).await;
        }
    };
    let s = match from {
        None => TcpStream::connect(addr).await,
        Some(_) => {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| fault("cannot open a socket", e))?;
            socket
                .bind(local(addr, from))
                .map_err(|e| fault("cannot bind the pool's source", e))?;
            socket.connect(addr).await
        }
    }
    .map_err(connect_error)?;
    with_header(s, header, Some(addr)).await
}

/// Writes the pool's PROXY header on a check's connection to `addr` (an IP
/// backend's; v1 says `UNKNOWN` to a Unix socket).
async fn with_header(
    mut s: TcpStream,
    header: Option<ProxyVersion>,
    addr: Option<SocketAddr>,
) -> Result<TcpStream, Fault> {
    let header = match (header, addr) {
        (None, _) => return Ok(s),
        (Some(ProxyVersion::V2), _) => local_header(Transport::Stream),
        (Some(ProxyVersion::V1), None) => proxy_protocol::V1_UNKNOWN.to_vec(),
        (Some(ProxyVersion::V1), Some(addr)) => {
            let local = s.local_addr().map_err(|e| fault("getsockname", e))?;
            proxy_protocol::v1(local, addr)
        }
    };
    s.write_all(&header)
        .await
        .map_err(|e| format!("sending the PROXY header failed: {e}"))?;
    Ok(s)
}

/// A check's stream: plain, or with the pool's TLS started on it.
type Checked = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Starts the pool's TLS on `s` when it has one: a handshake the backend
/// fails is a failed check.
async fn secure(
    s: TcpStream,
    tls: Option<&Originator>,
    (addr, name): (Endpoint, &str),
) -> Result<Checked, Fault> {
    let Some(tls) = tls else {
        return Ok(Either::Left(s));
    };
    match tls.connect(s, name, addr).await {
        Ok(t) => Ok(Either::Right(Box::new(t))),
        Err(e) => Err(Fault::Backend(format!(
            "TLS handshake failed ({}): {e}",
            crate::tls::classify(&e)
        ))),
    }
}

fn connect_error(e: std::io::Error) -> Fault {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Fault::Backend("connection refused".into()),
        _ => fault("connect failed", e),
    }
}

fn shown(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]);
    s.escape_debug().to_string()
}

async fn tcp(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    send: Option<&[u8]>,
    expect: Option<&[u8]>,
) -> Result<String, Fault> {
    if let Some(send) = send {
        s.write_all(send)
            .await
            .map_err(|e| format!("send failed: {e}"))?;
    }
    let Some(expect) = expect else {
        // Over TLS, what was sent must leave before the check ends.
        s.flush().await.map_err(|e| format!("send failed: {e}"))?;
        return Ok("connected".into());
    };
    s.flush().await.map_err(|e| format!("send failed: {e}"))?;
    let mut got = Vec::with_capacity(expect.len());
    while got.len() < expect.len() {
        let mut buf = [0u8; 512];
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err(Fault::Backend(format!(
                "connection closed after {} byte(s) of reply",
                got.len()
            )));
        }
        got.extend_from_slice(&buf[..n]);
        if !expect.starts_with(&got[..got.len().min(expect.len())]) {
            break;
        }
    }
    if got.starts_with(expect) {
        Ok(format!("replied \"{}\"", shown(&got)))
    } else {
        Err(Fault::Backend(format!("wrong reply \"{}\"", shown(&got))))
    }
}

async fn http(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    addr: Endpoint,
    path: &str,
    expect_status: u16,
    host: Option<&str>,
) -> Result<String, Fault> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake failed: {e}"))?;
    let authority = host.map(str::to_string).unwrap_or_else(|| match addr {
        Endpoint::Inet(a) => a.to_string(),
        Endpoint::Unix(_) => "localhost".to_string(),
    });
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("switchyard/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    // The connection is driven inside this future (no task of its own), so
    // a check that times out leaves nothing running.
    let response = sender.send_request(req);
    tokio::pin!(response, conn);
    let result = tokio::select! {
        biased;
        r = &mut response => r,
        r = &mut conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "health check connection ended with an error");
            }
            // The response, if one came, was handed over before the end.
            response.await
        }
    };
    let status = result
        .map_err(|e| format!("http request failed: {e}"))?
        .status();
    if status.as_u16() == expect_status {
        Ok(format!("status {}", status.as_u16()))
    } else {
        Err(Fault::Backend(format!("status {}", status.as_u16())))
    }
}

async fn udp(
    (addr, from): (SocketAddr, Option<IpAddr>),
    send: &[u8],
    expect: Option<&[u8]>,
) -> Result<String, Fault> {
    let s = UdpSocket::bind(local(addr, from))
        .await
        .map_err(|e| fault("cannot bind", e))?;
    s.connect(addr)
        .await
        .map_err(|e| fault("cannot connect", e))?;
    s.send(send)
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    let mut buf = vec![0u8; 2048];
    let n = s.recv(&mut buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "port unreachable".to_string(),
        _ => format!("receive failed: {e}"),
    })?;
    match expect {
        Some(expect) if !buf[..n].starts_with(expect) => Err(Fault::Backend(format!(
            "wrong reply \"{}\"",
            shown(&buf[..n])
        ))),
        _ => Ok(format!("replied {n} byte(s)")),
    }
}
