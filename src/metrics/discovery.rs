//! The families of pools whose backends are discovered (DNS, etcd).

use prometheus::{IntCounter, IntGauge};

use super::{Family, Metrics, Series, SeriesKind};

const POOL: &[&str] = &["pool"];

const UPDATES: Family = Family::by(
    "switchyard_discovery_updates_total",
    "Discovery answers, by result: changed, unchanged, empty (a successful answer with no backend, not applied without allow_empty), error (the last set stays), stale (an etcd watch found to have missed changes; read again).",
    "result",
);
const BACKENDS: Family = Family::new(
    "switchyard_discovery_backends",
    "Backends the pool's discovery found last.",
    SeriesKind::Gauge,
);
const LAST_SUCCESS: Family = Family::new(
    "switchyard_discovery_last_success_timestamp_seconds",
    "When the pool's discovery last got an answer (Unix time); its age tells how stale the set may be.",
    SeriesKind::Gauge,
);

const LAST_CONTACT: Family = Family::new(
    "switchyard_discovery_last_contact_timestamp_seconds",
    "When the pool's source was last heard from (Unix time): an answer, a watch message, a liveness probe answered or a ZooKeeper session that holds. A quiet but healthy watch keeps it recent; a stuck one lets it age.",
    SeriesKind::Gauge,
);

/// Handles of one discovered pool.
#[derive(Debug)]
pub struct DiscoveryMetrics {
    /// Answers that changed the set.
    pub changed: IntCounter,
    /// Answers that left it as it was.
    pub unchanged: IntCounter,
    /// Successful answers with no backend, not applied.
    pub empty: IntCounter,
    /// Failed lookups or an unreachable store.
    pub error: IntCounter,
    /// Watches found to have missed changes.
    pub stale: IntCounter,
    /// When the source was last heard from, in Unix seconds.
    pub last_contact: IntGauge,
    /// Backends found last.
    pub backends: IntGauge,
    /// When an answer last came, in Unix seconds.
    pub last_success: IntGauge,
    series: Series,
}

impl Metrics {
    /// The handles of discovered pool `pool`.
    pub fn discovery(&self, pool: &str) -> DiscoveryMetrics {
        let mut o = self.owner(POOL, &[pool]);
        DiscoveryMetrics {
            changed: o.counter(&UPDATES, Some("changed")),
            unchanged: o.counter(&UPDATES, Some("unchanged")),
            empty: o.counter(&UPDATES, Some("empty")),
            error: o.counter(&UPDATES, Some("error")),
            stale: o.counter(&UPDATES, Some("stale")),
            last_contact: o.gauge(&LAST_CONTACT),
            backends: o.gauge(&BACKENDS),
            last_success: o.gauge(&LAST_SUCCESS),
            series: o.finish(),
        }
    }
}

impl DiscoveryMetrics {
    /// Removes these series from scrapes.
    pub fn forget(&self) {
        self.series.forget();
    }
}
