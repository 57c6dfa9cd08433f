//! Per-backend families and the handle set of one backend of one pool.

use prometheus::{Histogram, IntCounter, IntGauge};

use super::{Family, Metrics, Series, SeriesKind};

const POOL_BACKEND: &[&str] = &["pool", "backend", "backend_name"];

/// Connect times on loopback are tens of microseconds; across a WAN, up to seconds.
const CONNECT_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
];

const UP: Family = Family::new(
    "switchyard_backend_up",
    "1 when the backend is healthy.",
    SeriesKind::Gauge,
);
const DRAINING: Family = Family::new(
    "switchyard_backend_draining",
    "1 when an operator drains the backend.",
    SeriesKind::Gauge,
);
const WEIGHT: Family = Family::new(
    "switchyard_backend_weight",
    "The backend's current weight.",
    SeriesKind::Gauge,
);
const ACTIVE: Family = Family::new(
    "switchyard_backend_active_connections",
    "Connections and UDP sessions open to the backend now.",
    SeriesKind::Gauge,
);
const CONNECTIONS: Family = Family::new(
    "switchyard_backend_connections_total",
    "Connections and UDP sessions established to the backend.",
    SeriesKind::Counter,
);
const CONNECT_FAILURES: Family = Family::by(
    "switchyard_backend_connect_failures_total",
    "Failed connects to the backend, by reason: refused, timeout, error, closed (taken and ended at once without a byte), tls (the pool's TLS handshake failed).",
    "reason",
);
const BYTES: Family = Family::by(
    "switchyard_backend_bytes_total",
    "Bytes received from (in) and sent to (out) the backend.",
    "direction",
);
const CHECKS: Family = Family::by(
    "switchyard_backend_health_checks_total",
    "Active health checks, by result.",
    "result",
);
const TRANSITIONS: Family = Family::by(
    "switchyard_backend_transitions_total",
    "Health state changes, by the state entered.",
    "to",
);
const CLOSED_ON_DOWN: Family = Family::new(
    "switchyard_backend_connections_closed_total",
    "Established connections closed because their backend went down or left its pool (on_backend_down = \"close\").",
    SeriesKind::Counter,
);
const CONNECT_DURATION: Family = Family::new(
    "switchyard_backend_connect_duration_seconds",
    "Time to establish a TCP connection to the backend.",
    SeriesKind::Histogram(CONNECT_BUCKETS),
);

/// Handles of one backend of one pool.
#[derive(Debug)]
pub struct BackendMetrics {
    /// 1 when healthy.
    pub up: IntGauge,
    /// 1 when drained.
    pub draining: IntGauge,
    /// Its current weight.
    pub weight: IntGauge,
    /// Connections and sessions open now.
    pub active: IntGauge,
    /// Connections and sessions established.
    pub connections: IntCounter,
    /// Connects refused.
    pub fail_refused: IntCounter,
    /// Connects timed out.
    pub fail_timeout: IntCounter,
    /// Connects failed otherwise.
    pub fail_other: IntCounter,
    /// Connections the backend took and ended at once, without a byte.
    pub fail_closed: IntCounter,
    /// The pool's TLS handshake with it failed.
    pub fail_tls: IntCounter,
    /// Bytes sent to the backend.
    pub bytes_out: IntCounter,
    /// Bytes received from the backend.
    pub bytes_in: IntCounter,
    /// Active checks passed.
    pub checks_ok: IntCounter,
    /// Active checks failed.
    pub checks_failed: IntCounter,
    /// Transitions to up.
    pub to_up: IntCounter,
    /// Transitions to down.
    pub to_down: IntCounter,
    /// Time to connect.
    pub connect_duration: Histogram,
    /// Established connections closed because it went down or left.
    pub closed_on_down: IntCounter,
    series: Series,
}

impl Metrics {
    /// The handles of backend `backend` (its address) in `pool`.
    pub fn backend(&self, pool: &str, backend: &str, name: &str) -> BackendMetrics {
        let mut o = self.owner(POOL_BACKEND, &[pool, backend, name]);
        BackendMetrics {
            up: o.gauge(&UP),
            draining: o.gauge(&DRAINING),
            weight: o.gauge(&WEIGHT),
            active: o.gauge(&ACTIVE),
            connections: o.counter(&CONNECTIONS, None),
            fail_refused: o.counter(&CONNECT_FAILURES, Some("refused")),
            fail_timeout: o.counter(&CONNECT_FAILURES, Some("timeout")),
            fail_other: o.counter(&CONNECT_FAILURES, Some("error")),
            fail_closed: o.counter(&CONNECT_FAILURES, Some("closed")),
            fail_tls: o.counter(&CONNECT_FAILURES, Some("tls")),
            bytes_out: o.counter(&BYTES, Some("out")),
            bytes_in: o.counter(&BYTES, Some("in")),
            checks_ok: o.counter(&CHECKS, Some("success")),
            checks_failed: o.counter(&CHECKS, Some("failure")),
            to_up: o.counter(&TRANSITIONS, Some("up")),
            to_down: o.counter(&TRANSITIONS, Some("down")),
            connect_duration: o.histogram(&CONNECT_DURATION),
            closed_on_down: o.counter(&CLOSED_ON_DOWN, None),
            series: o.finish(),
        }
    }
}

impl BackendMetrics {
    /// Every failed connect, whatever the reason (refused, timed out,
    /// failed otherwise, or taken and closed at once): the one sum the API,
    /// the history and `ctl` show as `connect_failures`.
    pub fn connect_failures(&self) -> u64 {
        self.fail_refused.get()
            + self.fail_timeout.get()
            + self.fail_other.get()
            + self.fail_closed.get()
            + self.fail_tls.get()
    }

    /// Removes this backend's series from scrapes (it left its pool).
    pub fn forget(&self) {
        self.series.forget();
    }
}
