//! switchyard: a layer-4 (TCP and UDP) load balancer.
//!
//! The map, in layers; each imports only from the layers below it
//! (`ARCHITECTURE.md` tells the life of a connection, a datagram and a reload):
//!
//! - **leaves**
//!   - [`config`]: the TOML file, parsed into raw types and validated into
//!     [`config::Config`], with every problem located by file, line and column.
//!   - `metrics`: the Prometheus registry; each family declared once beside
//!     its owner's handle set (listener, backend).
//!   - [`balance`]: the strategies (`random`, `round_robin`, `weighted`, `maglev`,
//!     `least_conn`, `p2c`) behind one small trait, built from the backends'
//!     identities and told the flow each pick is for.
//!   - `clock`: the coarse millisecond clock deadlines use.
//!   - [`notify`]: systemd's `sd_notify` protocol.
//!   - [`wire`]: what is read off the wire before relaying, as pure
//!     functions with property tests: the PROXY protocol (v1, v2), the TLS
//!     ClientHello's server name and ALPN, QUIC v1 Initial packets.
//! - **model**
//!   - `backend`: one backend's live state: health (active verdict, passive
//!     ejection), drain, open connections, as atomics.
//!   - `pool`: pools: an immutable snapshot per pool behind an atomic swap,
//!     changed through one door (`Pool::update`) under one lock.
//! - **data plane**
//!   - [`workers`]: the data plane's threads, one single-threaded runtime
//!     each; a connection lives on the worker that accepted it.
//!   - `net`: listening sockets with the options a proxy needs.
//!   - `relay`: the TCP byte relay (half-close exact, splice for bulk).
//!   - `listener`: one listener's sockets: bind, launch, re-point, retire;
//!     a folder per path: `listener::tcp` (accept, greet: the PROXY header
//!     and the ClientHello read before connecting, connect with retries,
//!     carry, hand over) and `listener::udp` (the receive loop, per-client
//!     sessions, bounded, expiring when idle; the socket calls in
//!     `listener::udp::sock`); `listener::route` holds a listener's pools by
//!     route, `listener::clients` the per-address limits.
//! - **control**
//!   - `health`: active checks (`tcp`, `http`, `udp`) with rise/fall,
//!     following each pool's membership by difference.
//!   - `discovery`: backends from DNS (A/AAAA, SRV) and etcd (a small
//!     client over etcd's JSON gateway, read then watched), fed to each pool
//!     through its one door and kept in `state_dir`; `cluster`: this
//!     instance's lease-bound entry in the fleet's registry.
//!   - `admin`: `/metrics`, the JSON API, `/healthz`, `/readyz` and the
//!     status page, over the small `admin::Control` trait.
//!   - [`server`]: the running daemon: a reload is planned as data
//!     (`server::plan`) and then carried out in one step; drains on shutdown.
//!   - [`demo`]: echo backends and a generated config for `switchyard demo`.
//!   - `history`: the last hour of every listener and backend, sampled by
//!     the server, served to the page and `/api/v1/history`.
//!   - [`ctl`]: `switchyard ctl`, the admin API from a shell.
//!
//! `main.rs` parses arguments, sets up logging and signals, and calls [`Server`].

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub(crate) mod admin;
pub(crate) mod backend;
pub mod balance;
pub(crate) mod clock;
pub(crate) mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub(crate) mod discovery;
pub mod endpoint;
pub mod engine;
pub mod fds;
pub(crate) mod health;
pub(crate) mod history;
pub mod import;
pub(crate) mod listener;
pub mod log;
pub(crate) mod metrics;
pub(crate) mod net;
pub mod notify;
pub(crate) mod pool;
pub(crate) mod relay;
pub mod server;
pub(crate) mod sys;
pub mod tls;
pub mod wire;
pub mod workers;

pub use config::Config;
pub use server::Server;
