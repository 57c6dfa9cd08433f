//! What a TCP listener reads before it connects: the PROXY protocol header
//! of a trusted proxy in front (`accept_proxy`), then the TLS ClientHello's
//! server name (`routes`). Every byte read past the header is the client's
//! and goes to the backend first, unchanged.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::connect::Preamble;
use crate::config::ProxyVersion;
use crate::listener::route::Route;
use crate::metrics::TcpListenerMetrics;
use crate::wire::hello::{self, NotHello, MAX_HELLO};
use crate::wire::proxy_protocol::{self, Invalid, Transport};

/// Bytes held while waiting for a whole ClientHello: a 16 KiB hello cut
/// into records as small as a client may make them still fits.
const MAX_HELD: usize = 4 * MAX_HELLO;

/// What was learned before connecting.
#[derive(Debug, Default)]
pub(super) struct Greeting {
    /// The client: the PROXY header's source, or the peer.
    pub client: Option<SocketAddr>,
    /// The address the client connected to, when a header said.
    pub local: Option<SocketAddr>,
    /// The header's v2 TLVs, passed on to a v2 backend.
    pub tlvs: Vec<u8>,
    /// The client's own bytes read so far.
    pub early: Vec<u8>,
    /// The route (index into `config.routes`), `None` for the listener's pool.
    pub route: Option<usize>,
}

/// Why a connection is closed before it reaches a backend.
#[derive(Debug)]
pub(super) enum GreetRefusal {
    /// Its PROXY header: from an untrusted address, malformed, too long,
    /// incomplete or too slow.
    ProxyHeader(&'static str),
    /// `sni_required`, and no server name could be read.
    NoSni(&'static str),
    /// The client left before saying anything.
    Gone,
}

/// Reads more of `stream` into `buf` (at most `cap` bytes held), by
/// `deadline`. `Ok(false)` when the client closed its side.
async fn read_more(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    cap: usize,
    deadline: Instant,
) -> Result<bool, &'static str> {
    // The buffer grows as bytes come (1 KiB, then doubling): a client that
    // sends a byte and waits holds a kilobyte, not the cap.
    let room = cap.saturating_sub(buf.len()).min(buf.len().max(1024));
    if room == 0 {
        return Err("too_large");
    }
    loop {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return Err("timeout"),
            Ok(Err(_)) => return Err("error"),
            Ok(Ok(())) => {}
        }
        let start = buf.len();
        buf.resize(start + room, 0);
        let r = stream.try_read(&mut buf[start..]);
        let n = r.as_ref().copied().unwrap_or(0);
        buf.truncate(start + n);
        match r {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err("error"),
        }
    }
}

/// Reads what the listener needs to know before connecting `peer`.
pub(super) async fn greet(
    stream: &TcpStream,
    peer: SocketAddr,
    route: &Route,
    m: &TcpListenerMetrics,
) -> Result<Greeting, GreetRefusal> {
    let mut g = Greeting::default();
    if let Some(accept) = &route.config.accept_proxy {
        // A Unix socket's file mode says who may connect.
        if route.config.bind.unix().is_none() && !accept.trusts(peer.ip()) {
            return Err(GreetRefusal::ProxyHeader("untrusted"));
        }
        let deadline = Instant::now() + accept.timeout;
        let mut buf = Vec::new();
        let (header, n) = loop {
            match proxy_protocol::parse(&buf, accept.max_header) {
                Ok(Some(done)) => break done,
                Ok(None) => {}
                Err(Invalid::NotProxy) => return Err(GreetRefusal::ProxyHeader("not_proxy")),
                Err(Invalid::TooLong) => return Err(GreetRefusal::ProxyHeader("too_long")),
                Err(Invalid::Malformed(_)) => return Err(GreetRefusal::ProxyHeader("malformed")),
            }
            match read_more(
                stream,
                &mut buf,
                accept.max_header.max(proxy_protocol::V1_MAX),
                deadline,
            )
            .await
            {
                Ok(true) => {}
                Ok(false) if buf.is_empty() => return Err(GreetRefusal::Gone),
                Ok(false) => return Err(GreetRefusal::ProxyHeader("truncated")),
                Err("error") => return Err(GreetRefusal::Gone),
                Err(why) => return Err(GreetRefusal::ProxyHeader(why)),
            }
        };
        if let Some((src, dst)) = header.addrs {
            g.client = Some(src);
            g.local = Some(dst);
        }
        g.tlvs = header.tlvs;
        buf.drain(..n);
        g.early = buf;
    }
    if !route.config.routes.is_empty() {
        let deadline = Instant::now() + route.config.tls_inspect_timeout;
        let mut closed = false;
        let read = loop {
            match hello::from_records(&g.early) {
                Ok(Some(h)) => break Ok(h),
                Ok(None) => {}
                Err(e) => break Err(e.as_str()),
            }
            if closed {
                break Err("not_tls");
            }
            match read_more(stream, &mut g.early, MAX_HELD, deadline).await {
                Ok(true) => {}
                Ok(false) if g.early.is_empty() => return Err(GreetRefusal::Gone),
                Ok(false) => closed = true,
                Err("too_large") => break Err(NotHello::TooLarge.as_str()),
                Err("error") => return Err(GreetRefusal::Gone),
                Err(why) => break Err(why),
            }
        };
        let i = &m.inspected;
        match read {
            Ok(h) => {
                g.route = crate::config::route_for(&route.config.routes, h.sni.as_deref(), &h.alpn);
                match (&h.sni, g.route) {
                    (_, Some(_)) => i.sni.inc(),
                    (Some(_), None) => i.no_match.inc(),
                    (None, None) => {
                        i.no_sni.inc();
                        if route.config.sni_required {
                            return Err(GreetRefusal::NoSni("no_sni"));
                        }
                    }
                }
            }
            Err(why) => {
                i.by(why).inc();
                if route.config.sni_required {
                    return Err(GreetRefusal::NoSni(why));
                }
            }
        }
    }
    Ok(g)
}

/// The PROXY header (`version`, none without one) for client `who`, who
/// connected to `local` (the header in front's, else our socket's), with
/// `tlvs` (v2).
pub(super) fn header(
    client: &TcpStream,
    who: SocketAddr,
    version: Option<ProxyVersion>,
    local: Option<SocketAddr>,
    tlvs: &[u8],
) -> Vec<u8> {
    let Some(version) = version else {
        return Vec::new();
    };
    // getsockname cannot fail on a connected socket; were it to, the
    // header says "an unspecified address".
    let local = match local.map(crate::net::LocalEnd::Inet) {
        Some(l) => Some(l),
        None => crate::net::local_end(client).ok(),
    };
    let local = match local {
        Some(crate::net::LocalEnd::Inet(a)) => a,
        // A Unix listener's client, no header in front naming another.
        Some(crate::net::LocalEnd::Unix { peer, ours }) => {
            return match version {
                ProxyVersion::V1 => proxy_protocol::V1_UNKNOWN.to_vec(),
                ProxyVersion::V2 => proxy_protocol::v2_unix(&peer, &ours, tlvs),
            }
        }
        None => SocketAddr::new(crate::net::unspecified(who.is_ipv6()), 0),
    };
    match version {
        ProxyVersion::V1 => proxy_protocol::v1(who, local),
        ProxyVersion::V2 => proxy_protocol::v2(Some((who, local)), Transport::Stream, tlvs),
    }
}

/// What a backend connection of `pool` begins with: the pool's PROXY header
/// for client `who`, then the client's bytes read while greeting it.
pub(super) fn preamble(
    client: &TcpStream,
    who: SocketAddr,
    version: Option<ProxyVersion>,
    greeting: Option<Box<Greeting>>,
) -> Preamble {
    let (local, tlvs, early) = match greeting {
        Some(g) => (g.local, g.tlvs, g.early),
        None => (None, Vec::new(), Vec::new()),
    };
    let mut bytes = header(client, who, version, local, &tlvs);
    let header = bytes.len();
    if bytes.is_empty() {
        bytes = early;
    } else {
        bytes.extend_from_slice(&early);
    }
    Preamble { bytes, header }
}
