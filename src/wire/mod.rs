//! What a proxy reads off the wire before it relays: the PROXY protocol
//! header a proxy in front sends, the TLS ClientHello's server name, and
//! the same from a QUIC client's Initial packets. Pure functions over bytes,
//! each with property tests.

pub mod hello;
pub mod proxy_protocol;
pub mod quic;
mod reader;
