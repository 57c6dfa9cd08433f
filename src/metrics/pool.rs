//! The families of a pool as a whole: which priority group takes its
//! traffic, and whether it is in panic.

use prometheus::IntGauge;

use super::{Family, Metrics, Series, SeriesKind};

const POOL: &[&str] = &["pool"];

const ACTIVE_PRIORITY: Family = Family::new(
    "switchyard_pool_active_priority",
    "The priority group new connections go to: 0 is the highest, 256 the backups, -1 when no backend is eligible.",
    SeriesKind::Gauge,
);
const PANIC: Family = Family::new(
    "switchyard_pool_panic",
    "1 while the pool spreads traffic over every backend, healthy or not: fewer than panic_threshold of them are eligible, or none is and on_all_down = \"try_all\".",
    SeriesKind::Gauge,
);

/// Handles of one pool.
#[derive(Debug)]
pub struct PoolMetrics {
    /// The active priority group.
    pub active_priority: IntGauge,
    /// Whether it is in panic.
    pub panic: IntGauge,
    series: Series,
}

impl Metrics {
    /// The handles of pool `pool`.
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        let mut o = self.owner(POOL, &[pool]);
        PoolMetrics {
            active_priority: o.gauge(&ACTIVE_PRIORITY),
            panic: o.gauge(&PANIC),
            series: o.finish(),
        }
    }
}

impl PoolMetrics {
    /// Removes these series from scrapes.
    pub fn forget(&self) {
        self.series.forget();
    }
}
