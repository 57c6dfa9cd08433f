//! The PROXY protocol (HAProxy's specification, versions 1 and 2): a header
//! before a connection's own bytes that names the client a proxy in front
//! saw. Pure functions over bytes: [`parse`] reads a header off the front of
//! a buffer, [`v1`] and [`v2`] write one.
//!
//! The parser never reads past its input, never panics, and allocates at
//! most the header's TLV bytes, which `limit` bounds.
//!
//! It runs past 400 lines: the parser and the writers of both versions
//! share their constants and are proven against each other; the tests are
//! apart, in `proxy_protocol/tests.rs`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The twelve bytes every version 2 header begins with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A version 1 header is at most this long, `\r\n` included.
pub const V1_MAX: usize = 107;

/// The TLV type of a CRC32C checksum over the whole header: it cannot hold
/// for a header written anew, so it is never passed on.
const TLV_CRC32C: u8 = 0x03;

/// Which version a header was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text form.
    V1,
    /// The binary form.
    V2,
}

/// What the header's sender speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A stream (TCP).
    Stream,
    /// Datagrams (UDP).
    Dgram,
    /// Not said (`UNKNOWN`, `LOCAL`, `AF_UNSPEC`, or a Unix socket).
    Unspec,
}

/// A header read off the front of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The version it was written in.
    pub version: Version,
    /// The client and the address it connected to; `None` when the sender
    /// proxies nobody (`LOCAL`: its own health check) or does not say
    /// (`UNKNOWN`, an unspecified or Unix family).
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// The transport named (v2; `Stream` for a v1 `TCP4`/`TCP6`).
    pub transport: Transport,
    /// The v2 TLVs as they came (type, length, value each), checked to be
    /// well formed; a CRC32C TLV is left out.
    pub tlvs: Vec<u8>,
}

/// Why bytes are no PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The bytes begin neither `PROXY ` nor the v2 signature.
    #[error("no PROXY protocol header")]
    NotProxy,
    /// Longer than the limit (107 bytes for v1, the listener's for v2).
    #[error("header too long")]
    TooLong,
    /// Not as the specification says.
    #[error("malformed header: {0}")]
    Malformed(&'static str),
}

/// Reads a header off the front of `buf`: `Ok(None)` while more bytes are
/// needed, `Ok(Some((header, n)))` once the first `n` bytes are one (the
/// rest is the connection's own data). `limit` bounds a v2 header's length.
///
/// The addresses come out in their [canonical](super::canonical) form: an
/// IPv4 client written as `::ffff:a.b.c.d` is `a.b.c.d`.
pub fn parse(buf: &[u8], limit: usize) -> Result<Option<(Header, usize)>, Invalid> {
    Ok(parse_any(buf, limit)?.map(|(mut h, n)| {
        h.addrs = h
            .addrs
            .map(|(src, dst)| (super::canonical(src), super::canonical(dst)));
        (h, n)
    }))
}

fn parse_any(buf: &[u8], limit: usize) -> Result<Option<(Header, usize)>, Invalid> {
    if buf.is_empty() {
        return Ok(None);
    }
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] == V2_SIGNATURE[..sig] {
        return if buf.len() < 16 {
            Ok(None)
        } else {
            parse_v2(buf, limit)
        };
    }
    let p = buf.len().min(6);
    if buf[..p] == b"PROXY "[..p] {
        return parse_v1(buf);
    }
    Err(Invalid::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Invalid> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.contains(&b'\n') {
            return Err(Invalid::Malformed("v1 line without CR"));
        }
        if window.len() == V1_MAX {
            return Err(Invalid::TooLong);
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[6..cr]).map_err(|_| Invalid::Malformed("not text"))?;
    let mut words = line.split(' ');
    let family = words.next().unwrap_or("");
    let header = |addrs| Header {
        version: Version::V1,
        addrs,
        transport: if addrs.is_some() {
            Transport::Stream
        } else {
            Transport::Unspec
        },
        tlvs: Vec::new(),
    };
    if family == "UNKNOWN" {
        // Whatever follows UNKNOWN is to be ignored.
        return Ok(Some((header(None), cr + 2)));
    }
    let want_v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(Invalid::Malformed("unknown v1 protocol")),
    };
    let mut next = || words.next().ok_or(Invalid::Malformed("missing v1 field"));
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if words.next().is_some() {
        return Err(Invalid::Malformed("extra v1 field"));
    }
    let ip = |s: &str| -> Result<IpAddr, Invalid> {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| Invalid::Malformed("bad v1 address"))?;
        if ip.is_ipv6() != want_v6 {
            return Err(Invalid::Malformed("v1 address of the wrong family"));
        }
        Ok(ip)
    };
    let port = |s: &str| -> Result<u16, Invalid> {
        // Decimal digits only, no sign, no leading zero.
        if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
            return Err(Invalid::Malformed("bad v1 port"));
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid::Malformed("bad v1 port"));
        }
        s.parse().map_err(|_| Invalid::Malformed("bad v1 port"))
    };
    let addrs = (
        SocketAddr::new(ip(src)?, port(sport)?),
        SocketAddr::new(ip(dst)?, port(dport)?),
    );
    Ok(Some((header(Some(addrs)), cr + 2)))
}

fn parse_v2(buf: &[u8], limit: usize) -> Result<Option<(Header, usize)>, Invalid> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(Invalid::Malformed("v2 version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Invalid::Malformed("unknown v2 command")),
    };
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = 16 + len;
    if total > limit {
        return Err(Invalid::TooLong);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    let transport = match fam & 0x0f {
        0 => Transport::Unspec,
        1 => Transport::Stream,
        2 => Transport::Dgram,
        _ => return Err(Invalid::Malformed("unknown v2 transport")),
    };
    let (addrs, rest) = match fam >> 4 {
        0 => (None, body),
        1 => {
            let a = body
                .get(..12)
                .ok_or(Invalid::Malformed("v2 IPv4 block too short"))?;
            let ip = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            let pair = (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            );
            (Some(pair), &body[12..])
        }
        2 => {
            let a = body
                .get(..36)
                .ok_or(Invalid::Malformed("v2 IPv6 block too short"))?;
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::from(b)
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            let pair = (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            );
            (Some(pair), &body[36..])
        }
        3 => {
            let rest = body
                .get(216..)
                .ok_or(Invalid::Malformed("v2 Unix block too short"))?;
            (None, rest)
        }
        _ => return Err(Invalid::Malformed("unknown v2 address family")),
    };
    let tlvs = kept_tlvs(rest)?;
    let header = Header {
        version: Version::V2,
        // LOCAL: the receiver uses the real connection's addresses.
        addrs: if local { None } else { addrs },
        transport: if local { Transport::Unspec } else { transport },
        tlvs,
    };
    Ok(Some((header, total)))
}

/// Checks that `tlvs` is a whole sequence of TLVs; returns them without any
/// CRC32C.
fn kept_tlvs(mut tlvs: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut kept = Vec::with_capacity(tlvs.len());
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Err(Invalid::Malformed("truncated v2 TLV"));
        }
        let len = 3 + u16::from_be_bytes([tlvs[1], tlvs[2]]) as usize;
        let one = tlvs
            .get(..len)
            .ok_or(Invalid::Malformed("v2 TLV longer than the header"))?;
        if one[0] != TLV_CRC32C {
            kept.extend_from_slice(one);
        }
        tlvs = &tlvs[len..];
    }
    Ok(kept)
}

/// The two addresses in one family: an IPv4 address beside an IPv6 one is
/// written in its IPv6-mapped form; IPv6-mapped pairs go back to IPv4.
fn one_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src), canon(dst));
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// A version 1 header: the client `src` connected to `dst`.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = one_family(src, dst);
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A version 2 header. `addrs`: the client and the address it reached, or
/// `None` for the `LOCAL` command (the proxy's own connection, such as a
/// health check). `tlvs` are written after the addresses as they are.
pub fn v2(addrs: Option<(SocketAddr, SocketAddr)>, transport: Transport, tlvs: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36 + tlvs.len());
    out.extend_from_slice(&V2_SIGNATURE);
    let mut block = Vec::with_capacity(36 + tlvs.len());
    let fam = match addrs.map(|(s, d)| one_family(s, d)) {
        None => {
            out.push(0x20);
            0x00
        }
        Some((src, dst)) => {
            out.push(0x21);
            let t = match transport {
                Transport::Stream => 0x1,
                Transport::Dgram => 0x2,
                Transport::Unspec => 0x0,
            };
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    block.extend_from_slice(&s.octets());
                    block.extend_from_slice(&d.octets());
                    block.extend_from_slice(&src.port().to_be_bytes());
                    block.extend_from_slice(&dst.port().to_be_bytes());
                    0x10 | t
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V6(v) => v,
                        IpAddr::V4(v) => v.to_ipv6_mapped(),
                    };
                    let (s, d): (Ipv6Addr, Ipv6Addr) = (v6(s), v6(d));
                    block.extend_from_slice(&s.octets());
                    block.extend_from_slice(&d.octets());
                    block.extend_from_slice(&src.port().to_be_bytes());
                    block.extend_from_slice(&dst.port().to_be_bytes());
                    0x20 | t
                }
            }
        }
    };
    out.push(fam);
    // The length is 16 bits: TLVs that would overflow it are left out.
    if block.len() + tlvs.len() <= usize::from(u16::MAX) {
        block.extend_from_slice(tlvs);
    }
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// The version 1 header for a client of no IP family (a Unix socket's):
/// the receiver uses the connection's own addresses.
pub const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

/// The length of each address in a v2 `AF_UNIX` block (`sun_path`).
const UNIX_ADDR: usize = 108;

/// A version 2 header for a client of a Unix stream socket: `src` (the
/// client's name, empty when unnamed, as most are) connected to `dst` (the
/// listener's), each a `sun_path` (an abstract name begins with NUL),
/// zero-padded to 108 bytes; longer ones are cut. `tlvs` follow as they are.
pub fn v2_unix(src: &[u8], dst: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 2 * UNIX_ADDR + tlvs.len());
    out.extend_from_slice(&V2_SIGNATURE);
    // PROXY command, AF_UNIX over STREAM.
    out.push(0x21);
    out.push(0x31);
    let tlvs = if 2 * UNIX_ADDR + tlvs.len() <= usize::from(u16::MAX) {
        tlvs
    } else {
        &[]
    };
    out.extend_from_slice(&((2 * UNIX_ADDR + tlvs.len()) as u16).to_be_bytes());
    for name in [src, dst] {
        let name = &name[..name.len().min(UNIX_ADDR)];
        out.extend_from_slice(name);
        out.resize(out.len() + UNIX_ADDR - name.len(), 0);
    }
    out.extend_from_slice(tlvs);
    out
}

/// What a proxy that ended TLS tells the backend of it in v2 TLVs.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts<'a> {
    /// The protocol version, `TLSv1.3`.
    pub version: &'a str,
    /// The server name the client asked for.
    pub server_name: Option<&'a str>,
    /// The client presented a certificate on this connection.
    pub client_cert: bool,
    /// That certificate was verified.
    pub verified: bool,
    /// Its subject's common name.
    pub common_name: Option<&'a str>,
}

/// One TLV: type, 16-bit length, value (cut to what the length can say).
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let value = &value[..value.len().min(usize::from(u16::MAX))];
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// `PP2_TYPE_AUTHORITY` (the server name) and `PP2_TYPE_SSL` with its
/// `PP2_SUBTYPE_SSL_VERSION` and `PP2_SUBTYPE_SSL_CN`, as HAProxy's
/// `send-proxy-v2-ssl-cn` writes them: client flags `PP2_CLIENT_SSL`, and
/// `PP2_CLIENT_CERT_CONN` with a client certificate; `verify` is 0 when
/// that certificate was verified.
pub fn tls_tlvs(facts: &TlsFacts<'_>) -> Vec<u8> {
    const AUTHORITY: u8 = 0x02;
    const SSL: u8 = 0x20;
    const SSL_VERSION: u8 = 0x21;
    const SSL_CN: u8 = 0x22;
    const CLIENT_SSL: u8 = 0x01;
    const CLIENT_CERT_CONN: u8 = 0x02;
    let mut out = Vec::new();
    if let Some(name) = facts.server_name {
        tlv(&mut out, AUTHORITY, name.as_bytes());
    }
    let mut ssl = vec![
        CLIENT_SSL
            | if facts.client_cert {
                CLIENT_CERT_CONN
            } else {
                0
            },
    ];
    let verify: u32 = if facts.client_cert && !facts.verified {
        1
    } else {
        0
    };
    ssl.extend_from_slice(&verify.to_be_bytes());
    tlv(&mut ssl, SSL_VERSION, facts.version.as_bytes());
    if let Some(cn) = facts.common_name {
        tlv(&mut ssl, SSL_CN, cn.as_bytes());
    }
    tlv(&mut out, SSL, &ssl);
    out
}

#[cfg(test)]
mod tests;
