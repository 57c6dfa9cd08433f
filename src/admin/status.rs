//! The typed status the API answers with and `switchyard ctl` reads: a
//! backend's state and counts are defined once (`Backend::state`,
//! `BackendMetrics::connect_failures`) and travel as these types, so the
//! API, `ctl`, the status page and the history cannot disagree.

use serde::{Deserialize, Serialize};

use crate::backend::agent::AgentStatus;
use crate::backend::{BackendState, CheckResult};
use crate::pool::Member;

/// One backend, as `/api/v1/pools` and the backend actions answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Its address, as configured or discovered.
    pub addr: String,
    /// Its name (the address unless one was given).
    pub name: String,
    /// Up, down or draining.
    pub state: BackendState,
    /// Whether health (active and passive) lets it take traffic.
    pub healthy: bool,
    /// Whether an operator drained it.
    pub draining: bool,
    /// Its weight now.
    pub weight: u32,
    /// Its own cap on open connections, if any.
    pub max_connections: Option<u32>,
    /// Its priority group: 0 is the highest, 256 the backups.
    #[serde(default)]
    pub priority: u32,
    /// Whether it is a backup (`backup = true`).
    #[serde(default)]
    pub backup: bool,
    /// Connections and sessions open to it now.
    pub active: u64,
    /// Connections made to it.
    pub connections_total: u64,
    /// Bytes from it.
    pub bytes_in: u64,
    /// Bytes to it.
    pub bytes_out: u64,
    /// Failed connects, every reason counted.
    pub connect_failures: u64,
    /// Its last active check, if it has one.
    pub last_check: Option<CheckResult>,
    /// What its agent said, when its pool has one and it was asked.
    #[serde(default)]
    pub agent: Option<AgentStatus>,
}

/// One pool, as `/api/v1/pools` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Its name.
    pub name: String,
    /// Its strategy.
    pub strategy: String,
    /// Its active check's kind (`none` without one).
    pub health_check: String,
    /// The PROXY protocol version it sends, if any.
    pub proxy_protocol: Option<String>,
    /// Its TLS to backends, if it starts one.
    #[serde(default)]
    pub tls: Option<PoolTlsStatus>,
    /// The priority group new connections go to (256: the backups), -1
    /// when no backend is available, as `switchyard_pool_active_priority`.
    #[serde(default)]
    pub active_priority: i64,
    /// Whether new connections are spread over every backend, health aside.
    #[serde(default)]
    pub panic: bool,
    /// Its `panic_threshold`, if set.
    #[serde(default)]
    pub panic_threshold: Option<f64>,
    /// Its `on_all_down`.
    #[serde(default)]
    pub on_all_down: String,
    /// The local address its connections leave from, if it names one.
    #[serde(default)]
    pub source: Option<String>,
    /// Its per-connection byte rates (`upload`, `download`), bytes per second.
    #[serde(default)]
    pub rates: crate::config::Rates,
    /// The listeners that send to it (by default or by a route).
    pub listeners: Vec<String>,
    /// Its backends, in order.
    pub backends: Vec<BackendStatus>,
}

/// A pool's TLS to its backends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolTlsStatus {
    /// The name sent and verified, when one is set for the pool.
    pub server_name: Option<String>,
    /// Whether backends' certificates are verified.
    pub verify: bool,
    /// Whether we present a client certificate.
    pub client_certificate: bool,
}

impl PoolTlsStatus {
    /// The status of `t`.
    pub(crate) fn of(t: &crate::config::PoolTls) -> PoolTlsStatus {
        PoolTlsStatus {
            server_name: t.server_name.clone(),
            verify: t.verify,
            client_certificate: t.cert.is_some(),
        }
    }
}

/// The rates of one backend in `/api/v1/history`, as `ctl status` reads
/// them: one value per bin, `None` where nothing was known.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackendRates {
    /// New connections and sessions per second.
    #[serde(default)]
    pub new_per_s: Vec<Option<f64>>,
    /// Bytes per second from it.
    #[serde(default)]
    pub bytes_in_per_s: Vec<Option<f64>>,
    /// Bytes per second to it.
    #[serde(default)]
    pub bytes_out_per_s: Vec<Option<f64>>,
}

/// The part of `/api/v1/history` that `ctl status` reads: pools by name,
/// their backends by address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryRates {
    /// Every pool's backends.
    #[serde(default)]
    pub pools: std::collections::BTreeMap<String, std::collections::BTreeMap<String, BackendRates>>,
}

/// The part of `/api/v1/pools` that `ctl` reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolsStatus {
    /// Every pool.
    pub pools: Vec<PoolStatus>,
}

impl BackendStatus {
    /// The status of pool member `m` now.
    pub(crate) fn of(m: &Member) -> BackendStatus {
        let b = &m.backend;
        let mt = &b.metrics;
        BackendStatus {
            addr: b.label.clone(),
            name: b.name.clone(),
            state: b.state(),
            healthy: b.is_healthy(),
            draining: b.is_draining(),
            weight: m.weight.get(),
            max_connections: m.max_connections.map(|x| x.get()),
            priority: m.priority,
            backup: m.priority == crate::config::BACKUP,
            active: b.active(),
            connections_total: mt.connections.get(),
            bytes_in: mt.bytes_in.get(),
            bytes_out: mt.bytes_out.get(),
            connect_failures: mt.connect_failures(),
            last_check: b.last_check(),
            agent: b.agent.status(),
        }
    }
}
