//! Per-listener families and the handle sets of TCP and UDP listeners. Each
//! protocol exports only its own series.

use prometheus::{Histogram, IntCounter, IntGauge};

use super::{Family, Metrics, Series, SeriesKind};

const LISTENER: &[&str] = &["listener"];

/// L4 connections last from a request (milliseconds) to a session (hours).
const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

const CONNECTIONS: Family = Family::new(
    "switchyard_listener_connections_total",
    "TCP connections accepted.",
    SeriesKind::Counter,
);
const ACTIVE: Family = Family::new(
    "switchyard_listener_active_connections",
    "TCP connections open now.",
    SeriesKind::Gauge,
);
const BYTES: Family = Family::by(
    "switchyard_listener_bytes_total",
    "Bytes from clients (in) and to clients (out).",
    "direction",
);
const NO_BACKEND: Family = Family::new(
    "switchyard_listener_no_backend_total",
    "Connections closed because no backend could take them.",
    SeriesKind::Counter,
);
const REJECTED: Family = Family::by(
    "switchyard_listener_rejected_total",
    "Clients refused or held back, by reason: denied, limit, descriptors, ip_limit, ip_rate, proxy_header, sni_required.",
    "reason",
);
const LOCAL_ERRORS: Family = Family::by(
    "switchyard_listener_local_errors_total",
    "Connections or datagrams not served for want of the proxy's own resources (descriptors, buffers, local ports) or of the pool's source address (source), by reason; never counted against a backend.",
    "reason",
);
const ACCEPT_ERRORS: Family = Family::new(
    "switchyard_accept_errors_total",
    "Errors from accept().",
    SeriesKind::Counter,
);
const ZERO_COPY: Family = Family::new(
    "switchyard_listener_zero_copy_total",
    "TCP connection directions that turned bulk and moved on with splice(2).",
    SeriesKind::Counter,
);
const DURATION: Family = Family::new(
    "switchyard_connection_duration_seconds",
    "How long proxied TCP connections lasted.",
    SeriesKind::Histogram(DURATION_BUCKETS),
);
const UDP_SESSIONS: Family = Family::new(
    "switchyard_udp_sessions",
    "UDP sessions open now.",
    SeriesKind::Gauge,
);
const UDP_SESSIONS_TOTAL: Family = Family::new(
    "switchyard_udp_sessions_total",
    "UDP sessions created.",
    SeriesKind::Counter,
);
const UDP_DATAGRAMS: Family = Family::by(
    "switchyard_udp_datagrams_total",
    "Datagrams from clients (in) and to clients (out).",
    "direction",
);
const UDP_DROPPED: Family = Family::by(
    "switchyard_udp_dropped_total",
    "Datagrams dropped, by reason.",
    "reason",
);

const INSPECTED: Family = Family::by(
    "switchyard_listener_inspected_total",
    "ClientHellos read for routing (TLS on TCP, QUIC Initial on UDP), by result: sni (a route matched), no_match, no_sni, not_tls, too_large, malformed, timeout.",
    "result",
);
const ROUTED: Family = Family::new(
    "switchyard_listener_routed_total",
    "TCP connections and UDP sessions sent to each route; route=\"default\" is the listener's own pool.",
    SeriesKind::Counter,
);
const ROUTE: &[&str] = &["listener", "route"];

/// What reading clients' ClientHellos came to, by result.
#[derive(Debug)]
pub struct Inspected {
    /// A route matched the server name or ALPN.
    pub sni: IntCounter,
    /// A name, but no route for it (the listener's pool).
    pub no_match: IntCounter,
    /// A ClientHello without a server name.
    pub no_sni: IntCounter,
    /// Bytes that are no TLS handshake (QUIC Initial on UDP).
    pub not_tls: IntCounter,
    /// A ClientHello over 16 KiB.
    pub too_large: IntCounter,
    /// A handshake not as the specification says.
    pub malformed: IntCounter,
    /// No whole ClientHello within `tls_inspect_timeout`.
    pub timeout: IntCounter,
}

impl Inspected {
    fn new(o: &mut super::Owner<'_>) -> Inspected {
        Inspected {
            sni: o.counter(&INSPECTED, Some("sni")),
            no_match: o.counter(&INSPECTED, Some("no_match")),
            no_sni: o.counter(&INSPECTED, Some("no_sni")),
            not_tls: o.counter(&INSPECTED, Some("not_tls")),
            too_large: o.counter(&INSPECTED, Some("too_large")),
            malformed: o.counter(&INSPECTED, Some("malformed")),
            timeout: o.counter(&INSPECTED, Some("timeout")),
        }
    }

    /// The counter of a result by its label.
    pub fn by(&self, result: &str) -> &IntCounter {
        match result {
            "sni" => &self.sni,
            "no_match" => &self.no_match,
            "no_sni" => &self.no_sni,
            "not_tls" => &self.not_tls,
            "too_large" => &self.too_large,
            "timeout" => &self.timeout,
            _ => &self.malformed,
        }
    }
}

/// The handles of one route of a listener.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Connections or sessions sent its way.
    pub routed: IntCounter,
    series: Series,
}

impl RouteMetrics {
    /// Removes this route's series from scrapes.
    pub fn forget(&self) {
        self.series.forget();
    }
}

/// Counts of clients not served for want of the proxy's own resources.
#[derive(Debug)]
pub struct LocalErrors {
    /// Out of descriptors (EMFILE, ENFILE, or the data plane's budget).
    pub descriptors: IntCounter,
    /// Out of kernel buffers or memory (ENOBUFS, ENOMEM).
    pub buffers: IntCounter,
    /// Out of local ports (EADDRNOTAVAIL).
    pub ports: IntCounter,
    /// The pool's `source` could not be taken: the client's address of
    /// another family than the backend's, or no `CAP_NET_ADMIN` for it.
    pub source: IntCounter,
}

impl LocalErrors {
    fn new(o: &mut super::Owner<'_>) -> LocalErrors {
        LocalErrors {
            descriptors: o.counter(&LOCAL_ERRORS, Some("descriptors")),
            buffers: o.counter(&LOCAL_ERRORS, Some("buffers")),
            ports: o.counter(&LOCAL_ERRORS, Some("ports")),
            source: o.counter(&LOCAL_ERRORS, Some("source")),
        }
    }

    /// Counts one under `reason` (`descriptors`, `buffers`, `ports` or
    /// `source`).
    pub fn count(&self, reason: &str) {
        match reason {
            "descriptors" => self.descriptors.inc(),
            "ports" => self.ports.inc(),
            "source" => self.source.inc(),
            _ => self.buffers.inc(),
        }
    }
}

/// Handles of one TCP listener.
#[derive(Debug)]
pub struct TcpListenerMetrics {
    /// Connections accepted and admitted.
    pub connections: IntCounter,
    /// Connections open now.
    pub active: IntGauge,
    /// Bytes from clients.
    pub bytes_in: IntCounter,
    /// Bytes to clients.
    pub bytes_out: IntCounter,
    /// Connections closed because no backend could take them.
    pub no_backend: IntCounter,
    /// Clients refused by allow/deny.
    pub rejected_denied: IntCounter,
    /// Times the listener reached `max_connections` and left clients in the backlog.
    pub rejected_limit: IntCounter,
    /// Clients refused at `max_connections_per_ip`.
    pub rejected_ip_limit: IntCounter,
    /// Clients refused past `connection_rate_per_ip`.
    pub rejected_ip_rate: IntCounter,
    /// Connections closed for their PROXY protocol header: from an
    /// untrusted address, malformed, too long or too slow.
    pub rejected_proxy_header: IntCounter,
    /// Connections closed under `sni_required` for want of a server name.
    pub rejected_sni: IntCounter,
    /// ClientHellos read, by result.
    pub inspected: Inspected,
    /// Times the data plane's descriptor budget was spent and clients were
    /// left in the backlog.
    pub rejected_descriptors: IntCounter,
    /// Connections closed for want of the proxy's own resources.
    pub local: LocalErrors,
    /// Errors from accept().
    pub accept_errors: IntCounter,
    /// Connection directions that turned bulk and moved on with splice(2).
    pub zero_copy: IntCounter,
    /// How long connections lasted.
    pub duration: Histogram,
    series: Series,
}

/// Handles of one UDP listener.
#[derive(Debug)]
pub struct UdpListenerMetrics {
    /// Bytes from clients.
    pub bytes_in: IntCounter,
    /// Bytes to clients.
    pub bytes_out: IntCounter,
    /// Datagrams from clients refused by allow/deny.
    pub rejected_denied: IntCounter,
    /// Sessions open now.
    pub sessions: IntGauge,
    /// Sessions created.
    pub sessions_total: IntCounter,
    /// Datagrams from clients.
    pub datagrams_in: IntCounter,
    /// Datagrams to clients.
    pub datagrams_out: IntCounter,
    /// Datagrams of new clients dropped at `max_sessions`.
    pub dropped_full: IntCounter,
    /// Datagrams dropped because no backend was available.
    pub dropped_no_backend: IntCounter,
    /// Datagrams that could not be sent on.
    pub dropped_send: IntCounter,
    /// Datagrams of new clients whose address holds `max_sessions_per_ip`.
    pub dropped_ip_limit: IntCounter,
    /// Datagrams of new clients dropped under `sni_required`.
    pub dropped_sni: IntCounter,
    /// QUIC ClientHellos read, by result.
    pub inspected: Inspected,
    /// Datagrams dropped for want of the proxy's own resources.
    pub local: LocalErrors,
    series: Series,
}

impl Metrics {
    /// The handles of TCP listener `name`.
    pub fn tcp_listener(&self, name: &str) -> TcpListenerMetrics {
        let mut o = self.owner(LISTENER, &[name]);
        TcpListenerMetrics {
            connections: o.counter(&CONNECTIONS, None),
            active: o.gauge(&ACTIVE),
            bytes_in: o.counter(&BYTES, Some("in")),
            bytes_out: o.counter(&BYTES, Some("out")),
            no_backend: o.counter(&NO_BACKEND, None),
            rejected_denied: o.counter(&REJECTED, Some("denied")),
            rejected_limit: o.counter(&REJECTED, Some("limit")),
            rejected_descriptors: o.counter(&REJECTED, Some("descriptors")),
            rejected_ip_limit: o.counter(&REJECTED, Some("ip_limit")),
            rejected_ip_rate: o.counter(&REJECTED, Some("ip_rate")),
            rejected_proxy_header: o.counter(&REJECTED, Some("proxy_header")),
            rejected_sni: o.counter(&REJECTED, Some("sni_required")),
            inspected: Inspected::new(&mut o),
            local: LocalErrors::new(&mut o),
            accept_errors: o.counter(&ACCEPT_ERRORS, None),
            zero_copy: o.counter(&ZERO_COPY, None),
            duration: o.histogram(&DURATION),
            series: o.finish(),
        }
    }

    /// The handles of UDP listener `name`.
    pub fn udp_listener(&self, name: &str) -> UdpListenerMetrics {
        let mut o = self.owner(LISTENER, &[name]);
        UdpListenerMetrics {
            bytes_in: o.counter(&BYTES, Some("in")),
            bytes_out: o.counter(&BYTES, Some("out")),
            rejected_denied: o.counter(&REJECTED, Some("denied")),
            sessions: o.gauge(&UDP_SESSIONS),
            sessions_total: o.counter(&UDP_SESSIONS_TOTAL, None),
            datagrams_in: o.counter(&UDP_DATAGRAMS, Some("in")),
            datagrams_out: o.counter(&UDP_DATAGRAMS, Some("out")),
            dropped_full: o.counter(&UDP_DROPPED, Some("table_full")),
            dropped_no_backend: o.counter(&UDP_DROPPED, Some("no_backend")),
            dropped_send: o.counter(&UDP_DROPPED, Some("send_error")),
            dropped_ip_limit: o.counter(&UDP_DROPPED, Some("ip_limit")),
            dropped_sni: o.counter(&UDP_DROPPED, Some("sni_required")),
            inspected: Inspected::new(&mut o),
            local: LocalErrors::new(&mut o),
            series: o.finish(),
        }
    }
}

impl Metrics {
    /// The handles of route `route` of listener `listener`.
    pub fn route(&self, listener: &str, route: &str) -> RouteMetrics {
        let mut o = self.owner(ROUTE, &[listener, route]);
        RouteMetrics {
            routed: o.counter(&ROUTED, None),
            series: o.finish(),
        }
    }
}

impl TcpListenerMetrics {
    /// Removes this listener's series from scrapes.
    pub fn forget(&self) {
        self.series.forget();
    }
}

impl UdpListenerMetrics {
    /// Removes this listener's series from scrapes.
    pub fn forget(&self) {
        self.series.forget();
    }
}
