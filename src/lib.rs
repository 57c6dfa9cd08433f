//! switchyard: a layer-4 (TCP and UDP) load balancer.
//!
//! The map, from the outside in:
//! - [`config`]: the TOML file, parsed into raw types and validated into
//!   [`config::Config`], with every problem located by file, line and column.
//! - [`server`]: the running daemon: binds listeners, owns pools, applies a
//!   reload as one difference, drains on shutdown.
//! - [`listener`]: one listener's sockets: bind, launch, re-point, retire.
//! - [`tcp`]: TCP listeners: the accept loop, connect with retries, relay.
//! - [`udp`]: UDP listeners: per-client sessions, bounded, expiring when idle.
//! - [`relay`]: the byte relay between two TCP sockets (the seam for zero-copy).
//! - [`pool`]: pools: an immutable snapshot per pool behind an atomic swap,
//!   replaced through one door (`Pool::apply`).
//! - [`backend`]: one backend's live state: health (active verdict, passive
//!   ejection), drain, open connections, as atomics.
//! - [`balance`]: the strategies (`random`, `round_robin`, `weighted`,
//!   `least_conn`, `p2c`) behind one small trait.
//! - [`health`]: active health checks (`tcp`, `http`, `udp`) with rise/fall.
//! - [`metrics`]: the Prometheus registry and pre-resolved handles.
//! - [`admin`]: `/metrics`, the JSON API, `/healthz`, `/readyz` and the status page.
//! - [`net`]: listening sockets with the options a proxy needs.
//! - [`notify`]: systemd's `sd_notify` protocol.
//! - [`demo`]: echo backends and a generated config for `switchyard demo`.

pub mod admin;
pub mod backend;
pub mod balance;
pub mod clock;
pub mod config;
pub mod demo;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod pool;
pub mod relay;
pub mod server;

pub use config::Config;
pub use server::Server;
