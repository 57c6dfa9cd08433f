//! Prometheus metrics: one registry, and per-owner handle sets resolved once
//! so the relay path only touches atomics.
//!
//! A family is declared once, as a `Family` constant beside the handle set
//! that uses it (`listener.rs`, `backend.rs`). The registry registers it the
//! first time an owner asks for it, and an owner's [`Series`] remembers every
//! series it created, so forgetting an owner (a listener or backend that a
//! reload removed) removes exactly those. Adding a family means one constant
//! and one field of its handle set, nothing else.

mod backend;
mod discovery;
mod listener;
mod mirror;
mod pool;
mod tls;

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use backend::BackendMetrics;
pub use discovery::DiscoveryMetrics;
pub use listener::{Inspected, RouteMetrics, TcpListenerMetrics, UdpListenerMetrics};
pub use mirror::MirrorMetrics;
pub use pool::PoolMetrics;
pub use tls::{CertExpiry, TlsHandshakes};

/// What kind of series a family holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SeriesKind {
    Counter,
    Gauge,
    /// With these bucket bounds.
    Histogram(&'static [f64]),
}

/// One metric family: everything Prometheus needs to know about it but the
/// owner's labels, which the handle set supplies.
#[derive(Debug)]
pub(crate) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: SeriesKind,
    /// A label of the family's own beyond the owner's (`direction`, `reason`).
    pub extra: Option<&'static str>,
}

impl Family {
    /// A family whose series are labelled by their owner alone.
    pub const fn new(name: &'static str, help: &'static str, kind: SeriesKind) -> Family {
        Family {
            name,
            help,
            kind,
            extra: None,
        }
    }

    /// A family of counters with a label of its own (`direction`, `reason`).
    pub const fn by(name: &'static str, help: &'static str, extra: &'static str) -> Family {
        Family {
            name,
            help,
            kind: SeriesKind::Counter,
            extra: Some(extra),
        }
    }
}

enum Registered {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Histogram(HistogramVec),
}

/// Every metric switchyard exports.
pub struct Metrics {
    registry: Registry,
    families: Mutex<HashMap<&'static str, Registered>>,
    /// Successful configuration loads (start and reloads).
    pub reloads_success: IntCounter,
    /// Refused reloads (invalid file, bind failure).
    pub reloads_failure: IntCounter,
    /// Unix time of the last successful load.
    pub last_reload_success: Gauge,
    /// Tasks alive on the workers, set when the metrics are rendered.
    worker_tasks: IntGauge,
    /// Tasks alive on the control runtime, likewise.
    control_tasks: IntGauge,
    /// The allocator's bytes in use, likewise.
    heap_in_use: IntGauge,
}

impl Metrics {
    /// A registry with the process collector, build info and reload series.
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector");
        let register = |c: Box<dyn Collector>| r.register(c).expect("unique metric");
        let build = IntGaugeVec::new(
            Opts::new(
                "switchyard_build_info",
                "Build information and the data-plane engine that runs; always 1.",
            ),
            &["version", "engine"],
        )
        .expect("valid metric");
        register(Box::new(build.clone()));
        let engine = crate::engine::chosen().map_or("epoll", |e| e.name);
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), engine])
            .set(1);
        let reloads = IntCounterVec::new(
            Opts::new(
                "switchyard_config_reloads_total",
                "Configuration reloads by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        register(Box::new(reloads.clone()));
        let last_reload_success = Gauge::new(
            "switchyard_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )
        .expect("valid metric");
        register(Box::new(last_reload_success.clone()));
        register(Box::new(crate::log::DROPPED.clone()));
        let tasks = IntGaugeVec::new(
            Opts::new(
                "switchyard_runtime_alive_tasks",
                "Tasks alive now: on the data plane's workers, and on the control runtime (admin, health, discovery).",
            ),
            &["runtime"],
        )
        .expect("valid metric");
        register(Box::new(tasks.clone()));
        let heap_in_use = IntGauge::new(
            "switchyard_heap_in_use_bytes",
            "Bytes the allocator has handed out and not had back (glibc's mallinfo2), beside the resident memory of process_resident_memory_bytes: the one grows only with what the daemon holds.",
        )
        .expect("valid metric");
        register(Box::new(heap_in_use.clone()));
        Metrics {
            heap_in_use,
            worker_tasks: tasks.with_label_values(&["workers"]),
            control_tasks: tasks.with_label_values(&["control"]),
            reloads_success: reloads.with_label_values(&["success"]),
            reloads_failure: reloads.with_label_values(&["failure"]),
            last_reload_success,
            families: Mutex::new(HashMap::new()),
            registry: r,
        }
    }

    /// Starts the handle set of one owner, labelled `names` = `values`.
    pub(crate) fn owner(&self, names: &'static [&'static str], values: &[&str]) -> Owner<'_> {
        Owner {
            metrics: self,
            names,
            values: values.iter().map(|v| v.to_string()).collect(),
            series: Series(Vec::new()),
        }
    }

    /// The registered vector of `family`, registering it on first use.
    fn family<T>(
        &self,
        family: &Family,
        owner: &'static [&'static str],
        get: impl Fn(&Registered) -> Option<T>,
    ) -> T {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let entry = families.entry(family.name).or_insert_with(|| {
            let mut labels: Vec<&str> = owner.to_vec();
            labels.extend(family.extra);
            let opts = Opts::new(family.name, family.help);
            let (registered, collector): (Registered, Box<dyn Collector>) = match family.kind {
                SeriesKind::Counter => {
                    let v = IntCounterVec::new(opts, &labels).expect("valid metric");
                    (Registered::Counter(v.clone()), Box::new(v))
                }
                SeriesKind::Gauge => {
                    let v = IntGaugeVec::new(opts, &labels).expect("valid metric");
                    (Registered::Gauge(v.clone()), Box::new(v))
                }
                SeriesKind::Histogram(buckets) => {
                    let v = HistogramVec::new(
                        HistogramOpts::from(opts).buckets(buckets.to_vec()),
                        &labels,
                    )
                    .expect("valid metric");
                    (Registered::Histogram(v.clone()), Box::new(v))
                }
            };
            self.registry.register(collector).expect("unique metric");
            registered
        });
        get(entry).unwrap_or_else(|| panic!("{} is declared with two kinds", family.name))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let (workers, control) = crate::workers::alive_tasks();
        self.worker_tasks.set(workers as i64);
        self.control_tasks.set(control as i64);
        if let Some(bytes) = crate::sys::heap_in_use() {
            self.heap_in_use.set(bytes as i64);
        }
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

/// Builds one owner's handles, remembering each series it creates.
pub(crate) struct Owner<'m> {
    metrics: &'m Metrics,
    names: &'static [&'static str],
    values: Vec<String>,
    series: Series,
}

impl Owner<'_> {
    /// The owner's label values, plus `extra`'s value when the family has one.
    fn labels(&self, family: &Family, extra: Option<&'static str>) -> Vec<String> {
        assert_eq!(
            family.extra.is_some(),
            extra.is_some(),
            "{}: the extra label's value",
            family.name
        );
        let mut values = self.values.clone();
        values.extend(extra.map(str::to_string));
        values
    }

    /// A counter of `family` (with `extra` as its own label's value).
    pub fn counter(&mut self, family: &Family, extra: Option<&'static str>) -> IntCounter {
        let v = self.metrics.family(family, self.names, |r| match r {
            Registered::Counter(v) => Some(v.clone()),
            _ => None,
        });
        self.series(v, self.labels(family, extra))
    }

    /// A gauge of `family`.
    pub fn gauge(&mut self, family: &Family) -> IntGauge {
        let v = self.metrics.family(family, self.names, |r| match r {
            Registered::Gauge(v) => Some(v.clone()),
            _ => None,
        });
        self.series(v, self.labels(family, None))
    }

    /// A histogram of `family`.
    pub fn histogram(&mut self, family: &Family) -> Histogram {
        let v = self.metrics.family(family, self.names, |r| match r {
            Registered::Histogram(v) => Some(v.clone()),
            _ => None,
        });
        self.series(v, self.labels(family, None))
    }

    /// The series `labels` of `v`, remembered for forgetting.
    fn series<T: MetricVecBuilder + 'static>(
        &mut self,
        v: MetricVec<T>,
        labels: Vec<String>,
    ) -> T::M {
        let handle = v.with_label_values(&labels);
        self.series.0.push(Box::new(move || {
            // Already gone is no error worth reporting.
            let _ = v.remove_label_values(&labels);
        }));
        handle
    }

    /// Every series created so far, to forget them together later.
    pub fn finish(self) -> Series {
        self.series
    }
}

/// The series one owner created; [`Series::forget`] removes them from scrapes.
pub struct Series(Vec<Box<dyn Fn() + Send + Sync>>);

impl Series {
    /// Removes every series of the owner (it left the configuration).
    pub fn forget(&self) {
        for forget in &self.0 {
            forget();
        }
    }
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Series({})", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_forgets_exactly_its_own_series() {
        let m = Metrics::new();
        let a = m.tcp_listener("a");
        let b = m.udp_listener("b");
        let c = m.backend("p", "127.0.0.1:1", "one");
        a.connections.inc();
        b.datagrams_in.inc();
        c.bytes_in.inc_by(5);
        let text = m.render();
        assert!(text.contains("switchyard_listener_connections_total{listener=\"a\"} 1"));
        assert!(text.contains("switchyard_udp_datagrams_total{direction=\"in\",listener=\"b\"} 1"));
        assert!(text.contains(
            "switchyard_backend_bytes_total{backend=\"127.0.0.1:1\",backend_name=\"one\",direction=\"in\",pool=\"p\"} 5"
        ));
        // Each protocol exports only its own series.
        assert!(!text.contains("switchyard_listener_connections_total{listener=\"b\"}"));
        assert!(!text.contains("switchyard_udp_sessions{listener=\"a\"}"));
        a.forget();
        let text = m.render();
        assert!(!text.contains("listener=\"a\""), "{text}");
        assert!(text.contains("switchyard_listener_bytes_total{direction=\"in\",listener=\"b\"} 0"));
        c.forget();
        assert!(!m.render().contains("pool=\"p\""));
    }
}
