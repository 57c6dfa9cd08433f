//! The TLS ClientHello, read without terminating TLS: the server name and
//! the ALPN list a client offers, from the first bytes of a TCP connection
//! (TLS records) or from a QUIC Initial's CRYPTO stream (handshake messages
//! as they are). Pure functions over bytes; nothing read past its input, no
//! panic, and no more kept than [`MAX_HELLO`].

use std::borrow::Cow;

use super::reader::Reader;

/// A ClientHello longer than this is not read (16 KiB, as a TLS record).
pub const MAX_HELLO: usize = 16 * 1024;

/// What a client asked for in its ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// The `server_name` (host name), in lower case, without a final dot.
    pub sni: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// Why no server name could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotHello {
    /// The bytes are not a TLS handshake.
    #[error("not TLS")]
    NotTls,
    /// The ClientHello is longer than [`MAX_HELLO`].
    #[error("ClientHello too large")]
    TooLarge,
    /// A TLS handshake, but not as the specification says.
    #[error("malformed ClientHello")]
    Malformed,
}

impl NotHello {
    /// The reason's label in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NotHello::NotTls => "not_tls",
            NotHello::TooLarge => "too_large",
            NotHello::Malformed => "malformed",
        }
    }
}

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// Reads the ClientHello from the first bytes of a TLS connection: its
/// records, however the client split the hello over them. `Ok(None)` while
/// more bytes are needed.
pub fn from_records(buf: &[u8]) -> Result<Option<Hello>, NotHello> {
    let mut pos = 0;
    let mut handshake: Cow<[u8]> = Cow::Borrowed(&[]);
    loop {
        let Some(head) = buf.get(pos..pos + 5) else {
            // The first bytes tell TLS from anything else at once.
            if buf.get(pos).is_some_and(|&t| t != HANDSHAKE)
                || buf.get(pos + 1).is_some_and(|&v| v != 3)
            {
                return Err(NotHello::NotTls);
            }
            return Ok(None);
        };
        if head[0] != HANDSHAKE || head[1] != 3 {
            return Err(NotHello::NotTls);
        }
        let len = u16::from_be_bytes([head[3], head[4]]) as usize;
        if len == 0 || len > MAX_HELLO + 256 {
            return Err(NotHello::Malformed);
        }
        let Some(fragment) = buf.get(pos + 5..pos + 5 + len) else {
            return Ok(None);
        };
        pos += 5 + len;
        handshake = if handshake.is_empty() {
            Cow::Borrowed(fragment)
        } else {
            Cow::Owned([&handshake[..], fragment].concat())
        };
        match from_handshake(&handshake)? {
            Some(hello) => return Ok(Some(hello)),
            None => continue,
        }
    }
}

/// Reads the ClientHello from the start of a handshake message stream (a
/// QUIC CRYPTO stream, or TLS records' contents). `Ok(None)` while more
/// bytes are needed.
pub fn from_handshake(stream: &[u8]) -> Result<Option<Hello>, NotHello> {
    let Some(head) = stream.get(..4) else {
        if stream.first().is_some_and(|&t| t != CLIENT_HELLO) {
            return Err(NotHello::NotTls);
        }
        return Ok(None);
    };
    if head[0] != CLIENT_HELLO {
        return Err(NotHello::NotTls);
    }
    let len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
    if len > MAX_HELLO {
        return Err(NotHello::TooLarge);
    }
    match stream.get(4..4 + len) {
        Some(body) => client_hello(body).map(Some),
        None => Ok(None),
    }
}

/// The ClientHello's body (after its four-byte handshake header).
fn client_hello(body: &[u8]) -> Result<Hello, NotHello> {
    let mut r = Reader::new(body, NotHello::Malformed);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    if r.vec8()?.rest().len() > 32 {
        return Err(NotHello::Malformed); // legacy_session_id
    }
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut hello = Hello::default();
    if r.is_empty() {
        return Ok(hello); // no extensions at all (TLS 1.0 style)
    }
    let mut exts = r.vec16()?;
    while !exts.is_empty() {
        let kind = exts.u16()? as u16;
        let mut data = exts.vec16()?;
        match kind {
            EXT_SERVER_NAME if hello.sni.is_none() => {
                let mut list = data.vec16()?;
                while !list.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?.rest();
                    if name_type == 0 && hello.sni.is_none() {
                        hello.sni = Some(host_name(name)?);
                    }
                }
            }
            EXT_ALPN if hello.alpn.is_empty() => {
                let mut list = data.vec16()?;
                while !list.is_empty() {
                    let proto = list.vec8()?.rest();
                    if proto.is_empty() {
                        return Err(NotHello::Malformed);
                    }
                    hello.alpn.push(proto.to_vec());
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// A server name as routes compare it: printable ASCII, lower case, no
/// final dot.
fn host_name(name: &[u8]) -> Result<String, NotHello> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 || !name.iter().all(|b| b.is_ascii_graphic()) {
        return Err(NotHello::Malformed);
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

#[cfg(test)]
pub(crate) mod tests;
