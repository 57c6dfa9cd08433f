//! Prometheus metrics: one registry, and per-listener / per-backend handles
//! resolved once so the relay path only touches atomics.

use crate::config::Protocol;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Connect times on loopback are tens of microseconds; across a WAN, up to seconds.
const CONNECT_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
];
/// L4 connections last from a request (milliseconds) to a session (hours).
const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

// Label values, named once: series are created from these and forgotten
// (when a listener or backend leaves) from the same lists.
const DIRECTIONS: [&str; 2] = ["in", "out"];
const REJECT_REASONS: [&str; 2] = ["denied", "limit"];
const UDP_DROP_REASONS: [&str; 3] = ["table_full", "no_backend", "send_error"];
const CONNECT_FAILURES: [&str; 3] = ["refused", "timeout", "error"];
const CHECK_RESULTS: [&str; 2] = ["success", "failure"];
const TRANSITIONS: [&str; 2] = ["up", "down"];

/// Every metric switchyard exports.
pub struct Metrics {
    pub registry: Registry,
    listener_connections: IntCounterVec,
    listener_active: IntGaugeVec,
    listener_bytes: IntCounterVec,
    listener_no_backend: IntCounterVec,
    listener_rejected: IntCounterVec,
    accept_errors: IntCounterVec,
    zero_copy: IntCounterVec,
    connection_duration: HistogramVec,
    udp_sessions: IntGaugeVec,
    udp_sessions_total: IntCounterVec,
    udp_datagrams: IntCounterVec,
    udp_dropped: IntCounterVec,
    backend_up: IntGaugeVec,
    backend_draining: IntGaugeVec,
    backend_weight: IntGaugeVec,
    backend_active: IntGaugeVec,
    backend_connections: IntCounterVec,
    backend_connect_failures: IntCounterVec,
    backend_bytes: IntCounterVec,
    backend_checks: IntCounterVec,
    backend_transitions: IntCounterVec,
    connect_duration: HistogramVec,
    pub reloads_success: IntCounter,
    pub reloads_failure: IntCounter,
    pub last_reload_success: Gauge,
}

/// Handles for one listener.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub connections: IntCounter,
    pub active: IntGauge,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub no_backend: IntCounter,
    pub rejected_denied: IntCounter,
    /// Times the listener reached `max_connections` and left clients in the backlog.
    pub rejected_limit: IntCounter,
    pub accept_errors: IntCounter,
    /// Connection directions that turned bulk and moved on with splice(2).
    pub zero_copy: IntCounter,
    pub duration: Histogram,
    pub udp_sessions: IntGauge,
    pub udp_sessions_total: IntCounter,
    pub udp_in: IntCounter,
    pub udp_out: IntCounter,
    pub udp_dropped_full: IntCounter,
    pub udp_dropped_no_backend: IntCounter,
    pub udp_dropped_send: IntCounter,
}

/// Handles for one backend of one pool.
#[derive(Clone)]
pub struct BackendMetrics {
    pub up: IntGauge,
    pub draining: IntGauge,
    pub weight: IntGauge,
    pub active: IntGauge,
    pub connections: IntCounter,
    pub fail_refused: IntCounter,
    pub fail_timeout: IntCounter,
    pub fail_other: IntCounter,
    /// Bytes sent to the backend.
    pub bytes_out: IntCounter,
    /// Bytes received from the backend.
    pub bytes_in: IntCounter,
    pub checks_ok: IntCounter,
    pub checks_failed: IntCounter,
    pub to_up: IntCounter,
    pub to_down: IntCounter,
    pub connect_duration: Histogram,
}

/// Removes the series `labels` + each of `last`. One that was never created
/// (the other protocol's, a reason that never happened) is no error worth
/// reporting.
fn forget_each(v: &IntCounterVec, labels: &[&str], last: &[&str]) {
    for x in last {
        let mut all = labels.to_vec();
        all.push(x);
        let _ = v.remove_label_values(&all);
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector");
        let build = gauge(
            &r,
            "switchyard_build_info",
            "Build information; always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let reloads = counter(
            &r,
            "switchyard_config_reloads_total",
            "Configuration reloads by result.",
            &["result"],
        );
        let last_reload_success = Gauge::new(
            "switchyard_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )
        .expect("valid metric");
        r.register(Box::new(last_reload_success.clone()))
            .expect("unique metric");
        let l = &["listener"];
        let pb = &["pool", "backend"];
        Metrics {
            listener_connections: counter(
                &r,
                "switchyard_listener_connections_total",
                "TCP connections accepted.",
                l,
            ),
            listener_active: gauge(
                &r,
                "switchyard_listener_active_connections",
                "TCP connections open now.",
                l,
            ),
            listener_bytes: counter(
                &r,
                "switchyard_listener_bytes_total",
                "Bytes from clients (in) and to clients (out).",
                &["listener", "direction"],
            ),
            listener_no_backend: counter(
                &r,
                "switchyard_listener_no_backend_total",
                "Connections closed because no backend could take them.",
                l,
            ),
            listener_rejected: counter(
                &r,
                "switchyard_listener_rejected_total",
                "Clients refused (denied) or held in the backlog at max_connections (limit).",
                &["listener", "reason"],
            ),
            accept_errors: counter(
                &r,
                "switchyard_accept_errors_total",
                "Errors from accept().",
                l,
            ),
            zero_copy: counter(
                &r,
                "switchyard_listener_zero_copy_total",
                "TCP connection directions that turned bulk and moved on with splice(2).",
                l,
            ),
            connection_duration: histogram(
                &r,
                "switchyard_connection_duration_seconds",
                "How long proxied TCP connections lasted.",
                l,
                DURATION_BUCKETS,
            ),
            udp_sessions: gauge(&r, "switchyard_udp_sessions", "UDP sessions open now.", l),
            udp_sessions_total: counter(
                &r,
                "switchyard_udp_sessions_total",
                "UDP sessions created.",
                l,
            ),
            udp_datagrams: counter(
                &r,
                "switchyard_udp_datagrams_total",
                "Datagrams from clients (in) and to clients (out).",
                &["listener", "direction"],
            ),
            udp_dropped: counter(
                &r,
                "switchyard_udp_dropped_total",
                "Datagrams dropped, by reason.",
                &["listener", "reason"],
            ),
            backend_up: gauge(
                &r,
                "switchyard_backend_up",
                "1 when the backend is healthy.",
                pb,
            ),
            backend_draining: gauge(
                &r,
                "switchyard_backend_draining",
                "1 when an operator drains the backend.",
                pb,
            ),
            backend_weight: gauge(
                &r,
                "switchyard_backend_weight",
                "The backend's current weight.",
                pb,
            ),
            backend_active: gauge(
                &r,
                "switchyard_backend_active_connections",
                "Connections and UDP sessions open to the backend now.",
                pb,
            ),
            backend_connections: counter(
                &r,
                "switchyard_backend_connections_total",
                "Connections and UDP sessions established to the backend.",
                pb,
            ),
            backend_connect_failures: counter(
                &r,
                "switchyard_backend_connect_failures_total",
                "Failed connects to the backend, by reason.",
                &["pool", "backend", "reason"],
            ),
            backend_bytes: counter(
                &r,
                "switchyard_backend_bytes_total",
                "Bytes received from (in) and sent to (out) the backend.",
                &["pool", "backend", "direction"],
            ),
            backend_checks: counter(
                &r,
                "switchyard_backend_health_checks_total",
                "Active health checks, by result.",
                &["pool", "backend", "result"],
            ),
            backend_transitions: counter(
                &r,
                "switchyard_backend_transitions_total",
                "Health state changes, by the state entered.",
                &["pool", "backend", "to"],
            ),
            connect_duration: histogram(
                &r,
                "switchyard_backend_connect_duration_seconds",
                "Time to establish a TCP connection to the backend.",
                pb,
                CONNECT_BUCKETS,
            ),
            reloads_success: reloads.with_label_values(&["success"]),
            reloads_failure: reloads.with_label_values(&["failure"]),
            last_reload_success,
            registry: r,
        }
    }

    /// Handles for listener `name`. Series of the other protocol are not
    /// exported: their handles count into nothing.
    pub fn listener(&self, name: &str, protocol: Protocol) -> ListenerMetrics {
        let l = [name];
        let tcp = protocol == Protocol::Tcp;
        let [inward, outward] = DIRECTIONS;
        let [denied, limit] = REJECT_REASONS;
        let [full, no_backend, send_error] = UDP_DROP_REASONS;
        let c = |v: &IntCounterVec, labels: &[&str], wanted: bool| {
            if wanted {
                v.with_label_values(labels)
            } else {
                IntCounter::new("unexported", "-").expect("valid metric")
            }
        };
        let g = |v: &IntGaugeVec, wanted: bool| {
            if wanted {
                v.with_label_values(&l)
            } else {
                IntGauge::new("unexported", "-").expect("valid metric")
            }
        };
        ListenerMetrics {
            connections: c(&self.listener_connections, &l, tcp),
            active: g(&self.listener_active, tcp),
            bytes_in: c(&self.listener_bytes, &[name, inward], true),
            bytes_out: c(&self.listener_bytes, &[name, outward], true),
            no_backend: c(&self.listener_no_backend, &l, tcp),
            rejected_denied: c(&self.listener_rejected, &[name, denied], true),
            rejected_limit: c(&self.listener_rejected, &[name, limit], tcp),
            accept_errors: c(&self.accept_errors, &l, tcp),
            zero_copy: c(&self.zero_copy, &l, tcp),
            duration: if tcp {
                self.connection_duration.with_label_values(&l)
            } else {
                Histogram::with_opts(HistogramOpts::new("unexported", "-")).expect("valid metric")
            },
            udp_sessions: g(&self.udp_sessions, !tcp),
            udp_sessions_total: c(&self.udp_sessions_total, &l, !tcp),
            udp_in: c(&self.udp_datagrams, &[name, inward], !tcp),
            udp_out: c(&self.udp_datagrams, &[name, outward], !tcp),
            udp_dropped_full: c(&self.udp_dropped, &[name, full], !tcp),
            udp_dropped_no_backend: c(&self.udp_dropped, &[name, no_backend], !tcp),
            udp_dropped_send: c(&self.udp_dropped, &[name, send_error], !tcp),
        }
    }

    /// Drops the series of a listener that a reload removed.
    pub fn forget_listener(&self, name: &str) {
        let l = [name];
        let _ = self.listener_connections.remove_label_values(&l);
        let _ = self.listener_active.remove_label_values(&l);
        let _ = self.listener_no_backend.remove_label_values(&l);
        let _ = self.accept_errors.remove_label_values(&l);
        let _ = self.zero_copy.remove_label_values(&l);
        let _ = self.connection_duration.remove_label_values(&l);
        let _ = self.udp_sessions.remove_label_values(&l);
        let _ = self.udp_sessions_total.remove_label_values(&l);
        forget_each(&self.listener_bytes, &l, &DIRECTIONS);
        forget_each(&self.listener_rejected, &l, &REJECT_REASONS);
        forget_each(&self.udp_datagrams, &l, &DIRECTIONS);
        forget_each(&self.udp_dropped, &l, &UDP_DROP_REASONS);
    }

    pub fn backend(&self, pool: &str, backend: &str) -> BackendMetrics {
        let pb = [pool, backend];
        let with = |v: &IntCounterVec, x: &str| v.with_label_values(&[pool, backend, x]);
        let [refused, timeout, error] = CONNECT_FAILURES;
        let [inward, outward] = DIRECTIONS;
        let [success, failure] = CHECK_RESULTS;
        let [up, down] = TRANSITIONS;
        BackendMetrics {
            up: self.backend_up.with_label_values(&pb),
            draining: self.backend_draining.with_label_values(&pb),
            weight: self.backend_weight.with_label_values(&pb),
            active: self.backend_active.with_label_values(&pb),
            connections: self.backend_connections.with_label_values(&pb),
            fail_refused: with(&self.backend_connect_failures, refused),
            fail_timeout: with(&self.backend_connect_failures, timeout),
            fail_other: with(&self.backend_connect_failures, error),
            bytes_out: with(&self.backend_bytes, outward),
            bytes_in: with(&self.backend_bytes, inward),
            checks_ok: with(&self.backend_checks, success),
            checks_failed: with(&self.backend_checks, failure),
            to_up: with(&self.backend_transitions, up),
            to_down: with(&self.backend_transitions, down),
            connect_duration: self.connect_duration.with_label_values(&pb),
        }
    }

    /// Drops the series of a backend that left a pool, so scrapes stop showing it.
    pub fn forget_backend(&self, pool: &str, backend: &str) {
        let pb = [pool, backend];
        for g in [
            &self.backend_up,
            &self.backend_draining,
            &self.backend_weight,
            &self.backend_active,
        ] {
            let _ = g.remove_label_values(&pb);
        }
        let _ = self.backend_connections.remove_label_values(&pb);
        let _ = self.connect_duration.remove_label_values(&pb);
        forget_each(&self.backend_connect_failures, &pb, &CONNECT_FAILURES);
        forget_each(&self.backend_bytes, &pb, &DIRECTIONS);
        forget_each(&self.backend_checks, &pb, &CHECK_RESULTS);
        forget_each(&self.backend_transitions, &pb, &TRANSITIONS);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
