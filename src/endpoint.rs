//! Where a listener listens or a backend answers: an IP address and port, or
//! a Unix-domain socket (a path, or a name in Linux's abstract namespace).
//!
//! Written `127.0.0.1:80`, `[::1]:80`, `unix:/run/app.sock` or
//! `unix:@name`. An endpoint is `Copy`, as the socket address it mostly is:
//! a Unix name is interned once and shared. The names a process ever meets
//! are those of its configuration files (discovery answers IP addresses
//! only), so the interned set stays as small as they are.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;

/// The most bytes a Unix socket's name may have: `sun_path` is 108 bytes,
/// one of them the path's terminating NUL (an abstract name has none, and
/// its leading NUL takes that place).
pub const MAX_UNIX_NAME: usize = 107;

/// A Unix listener's client where an IP address is wanted (limits, hashes,
/// logs): it has none, so every one of them is this, `0.0.0.0:0`, unless a
/// PROXY header names the client behind it.
pub const UNIX_CLIENT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// A client as logs show it: its address, or `unix` for a Unix listener's.
pub struct Client<'a>(pub &'a SocketAddr);

impl fmt::Display for Client<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self.0 == UNIX_CLIENT {
            f.write_str("unix")
        } else {
            self.0.fmt(f)
        }
    }
}

/// An IP socket address or a Unix-domain socket's name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// An IP address and port.
    Inet(SocketAddr),
    /// A Unix-domain stream socket.
    Unix(UnixName),
}

/// A Unix-domain socket's name: a path, or `@name` in the abstract
/// namespace.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixName(&'static str);

/// Every name interned so far.
static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

impl UnixName {
    /// The name `text` (`/path` or `@name`), if it can be one: not empty,
    /// no NUL byte, at most [`MAX_UNIX_NAME`] bytes.
    pub fn new(text: &str) -> Result<UnixName, String> {
        if text.is_empty() || text == "@" {
            return Err("a Unix socket needs a path or an @name".into());
        }
        if text.contains('\0') {
            return Err("a Unix socket's name cannot hold a NUL byte".into());
        }
        if text.len() > MAX_UNIX_NAME {
            return Err(format!(
                "a Unix socket's name is at most {MAX_UNIX_NAME} bytes (sun_path); this one has {}",
                text.len()
            ));
        }
        if !text.starts_with('@') && !text.starts_with('/') {
            return Err("a Unix socket's path must be absolute (or an @name)".into());
        }
        let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        let names = names.get_or_insert_with(HashSet::new);
        let name = match names.get(text) {
            Some(n) => *n,
            None => {
                let n: &'static str = Box::leak(text.to_string().into_boxed_str());
                names.insert(n);
                n
            }
        };
        Ok(UnixName(name))
    }

    /// The name `text`, if it has been met before (never interning it):
    /// what text from outside the configuration (an API path) is looked up
    /// with, so it cannot grow the interned set.
    pub fn known(text: &str) -> Option<UnixName> {
        let names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        names.as_ref()?.get(text).map(|n| UnixName(n))
    }

    /// As written: `/path` or `@name`.
    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// Whether it is in the abstract namespace (no file).
    pub fn is_abstract(&self) -> bool {
        self.0.starts_with('@')
    }

    /// The file's path, unless abstract.
    pub fn path(&self) -> Option<&'static std::path::Path> {
        (!self.is_abstract()).then(|| std::path::Path::new(self.0))
    }

    /// The bytes of `sun_path`: the path, or a NUL and the abstract name.
    pub fn sun_path(&self) -> Vec<u8> {
        match self.0.strip_prefix('@') {
            Some(name) => [&[0u8][..], name.as_bytes()].concat(),
            None => self.0.as_bytes().to_vec(),
        }
    }

    /// As a socket address to bind or connect to.
    pub fn sock_addr(&self) -> std::io::Result<socket2::SockAddr> {
        use std::os::unix::ffi::OsStrExt;
        socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&self.sun_path()))
    }
}

impl Endpoint {
    /// The IP socket address, unless it is a Unix socket.
    pub fn inet(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Inet(a) => Some(*a),
            Endpoint::Unix(_) => None,
        }
    }

    /// The Unix socket's name, if it is one.
    pub fn unix(&self) -> Option<UnixName> {
        match self {
            Endpoint::Unix(n) => Some(*n),
            Endpoint::Inet(_) => None,
        }
    }

    /// Whether an IPv6 address (a Unix socket is not).
    pub fn is_ipv6(&self) -> bool {
        matches!(self, Endpoint::Inet(a) if a.is_ipv6())
    }

    /// `text` as an endpoint some configuration named: an IP address and
    /// port, or a Unix name met before ([`UnixName::known`]).
    pub fn known(text: &str) -> Option<Endpoint> {
        match text.strip_prefix("unix:") {
            Some(name) => UnixName::known(name).map(Endpoint::Unix),
            None => text.parse().ok().map(Endpoint::Inet),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint::Inet(a)
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    /// `IP:PORT`, `[IPv6]:PORT`, `unix:/path` or `unix:@name`.
    fn from_str(s: &str) -> Result<Endpoint, String> {
        match s.strip_prefix("unix:") {
            Some(name) => UnixName::new(name).map(Endpoint::Unix),
            None => s
                .parse::<SocketAddr>()
                .map(Endpoint::Inet)
                .map_err(|_| format!("`{s}` is not an IP:PORT address or a unix:/path")),
        }
    }
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Inet(a) => a.fmt(f),
            Endpoint::Unix(n) => write!(f, "unix:{n}"),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_and_write_alike() {
        for text in [
            "127.0.0.1:80",
            "[::1]:443",
            "unix:/run/app.sock",
            "unix:@switchyard",
        ] {
            let e: Endpoint = text.parse().unwrap();
            assert_eq!(e.to_string(), text);
        }
        let a: Endpoint = "unix:/run/a.sock".parse().unwrap();
        let b: Endpoint = "unix:/run/a.sock".parse().unwrap();
        assert_eq!(a, b);
        assert!(
            std::ptr::eq(a.unix().unwrap().as_str(), b.unix().unwrap().as_str()),
            "interned once"
        );
        assert_eq!(
            "unix:@x"
                .parse::<Endpoint>()
                .unwrap()
                .unix()
                .unwrap()
                .sun_path(),
            b"\0x"
        );
    }

    #[test]
    fn a_lookup_never_interns() {
        let text = format!("unix:/run/lookup-{}.sock", std::process::id());
        assert_eq!(Endpoint::known(&text), None);
        assert_eq!(
            Endpoint::known(&text),
            None,
            "still unknown: not interned by asking"
        );
        let e: Endpoint = text.parse().unwrap();
        assert_eq!(Endpoint::known(&text), Some(e));
        assert_eq!(
            Endpoint::known("127.0.0.1:80"),
            Some("127.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn names_that_cannot_be_are_refused() {
        let long = format!("unix:/{}", "a".repeat(MAX_UNIX_NAME));
        assert!(long
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("at most 107 bytes"));
        let fits = format!("unix:/{}", "a".repeat(MAX_UNIX_NAME - 1));
        assert!(fits.parse::<Endpoint>().is_ok());
        for bad in [
            "unix:",
            "unix:@",
            "unix:run/a.sock",
            "unix:/a\0b",
            "localhost:80",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?}");
        }
    }
}
