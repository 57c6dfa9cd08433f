//! What a proxy reads off the wire before it relays: the PROXY protocol
//! header a proxy in front sends, the TLS ClientHello's server name, and
//! the same from a QUIC client's Initial packets. Pure functions over bytes,
//! each with property tests.

pub mod hello;
pub mod proxy_protocol;
pub mod quic;
mod reader;

use std::net::SocketAddr;

/// A client's address in the one form every part of the proxy sees: an
/// IPv4 client reached through a dual-stack socket, or named by a proxy in
/// front as `::ffff:a.b.c.d`, is `a.b.c.d`. Allow and deny lists, per-address
/// limits, hashing, logs and the headers sent onward all compare and show
/// this form, so one client never counts as two.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}
