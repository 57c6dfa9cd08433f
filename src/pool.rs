//! Pools of backends. A pool's backend set lives in an immutable [`Snapshot`]
//! behind an atomic swap; [`Pool::apply`] is the one door through which a
//! reload, the admin API or discovery replaces it. Per-backend health and load
//! are atomics on [`Backend`], which survives a swap when its address stays.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::balance::{self, Candidates, Strategy};
use crate::config::{BackendConfig, PoolConfig};
use crate::metrics::{BackendMetrics, Metrics};

/// Passive ejections double `fail_timeout` each time, up to this factor.
const MAX_EJECTION_FACTOR: u32 = 16;

/// Milliseconds on tokio's clock since the first call (so paused-clock tests work).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    // Offset by one so that 0 can mean "never".
    tokio::time::Instant::now()
        .duration_since(epoch)
        .as_millis() as u64
        + 1
}

/// The last active check of a backend, for the admin API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckResult {
    pub ok: bool,
    pub detail: String,
    /// Milliseconds since the check, filled in when read.
    pub at_ms: u64,
}

/// One backend of one pool, with its live state.
pub struct Backend {
    pub addr: SocketAddr,
    /// The address as text, the `backend` label of its metrics.
    pub label: String,
    pub pool: String,
    up: AtomicBool,
    draining: AtomicBool,
    active: AtomicU64,
    passive_fails: AtomicU32,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    last_check: Mutex<Option<CheckResult>>,
    pub metrics: BackendMetrics,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("pool", &self.pool)
            .finish()
    }
}

impl Backend {
    fn new(pool: &str, addr: SocketAddr, up: bool, metrics: BackendMetrics) -> Backend {
        metrics.up.set(up as i64);
        metrics.draining.set(0);
        Backend {
            addr,
            label: addr.to_string(),
            pool: pool.to_string(),
            up: AtomicBool::new(up),
            draining: AtomicBool::new(false),
            active: AtomicU64::new(0),
            passive_fails: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_check: Mutex::new(None),
            metrics,
        }
    }

    /// The active checker's verdict (true until a check says otherwise, unless `initial = "down"`).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether passive health has taken the backend out for now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms()
    }

    /// Whether health (active and passive) lets it take traffic.
    pub fn is_healthy(&self) -> bool {
        self.is_up() && !self.is_ejected()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// An operator's drain (true) or enable (false).
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        self.metrics.draining.set(draining as i64);
    }

    /// Records the active checker's verdict; returns true when the state changed.
    pub fn set_up(&self, up: bool, reason: &str) -> bool {
        if up {
            // A passing active check ends a passive ejection early.
            self.ejected_until.store(0, Ordering::Relaxed);
            self.passive_fails.store(0, Ordering::Relaxed);
        }
        if self.up.swap(up, Ordering::Relaxed) == up {
            return false;
        }
        self.metrics.up.set(up as i64);
        if up {
            self.metrics.to_up.inc();
            tracing::info!(pool = %self.pool, backend = %self.addr, reason, "backend is up");
        } else {
            self.metrics.to_down.inc();
            tracing::warn!(pool = %self.pool, backend = %self.addr, reason, "backend is down");
        }
        true
    }

    pub fn record_check(&self, ok: bool, detail: String) {
        if ok {
            self.metrics.checks_ok.inc();
        } else {
            self.metrics.checks_failed.inc();
        }
        let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(CheckResult {
            ok,
            detail,
            at_ms: now_ms(),
        });
    }

    pub fn last_check(&self) -> Option<CheckResult> {
        let last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        last.clone().map(|mut c| {
            c.at_ms = now_ms().saturating_sub(c.at_ms);
            c
        })
    }

    /// Passive health: a connect to this backend failed.
    pub fn connect_failed(&self, max_fails: u32, fail_timeout: Duration) {
        if max_fails == 0 {
            return;
        }
        let fails = self.passive_fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails < max_fails {
            return;
        }
        self.passive_fails.store(0, Ordering::Relaxed);
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(4);
        let factor = (1u32 << n).min(MAX_EJECTION_FACTOR);
        let out_for = fail_timeout * factor;
        self.ejected_until
            .store(now_ms() + out_for.as_millis() as u64, Ordering::Relaxed);
        self.metrics.to_down.inc();
        tracing::warn!(
            pool = %self.pool, backend = %self.addr, consecutive_failures = fails,
            out_for = %humantime::format_duration(out_for), "backend taken out after failed connects"
        );
    }

    /// Passive health: a connect succeeded.
    pub fn connect_succeeded(&self) {
        if self.passive_fails.load(Ordering::Relaxed) != 0 {
            self.passive_fails.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && !self.is_ejected() {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a connection or session as open until the guard drops.
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.active.inc();
        self.metrics.connections.inc();
        ActiveGuard(self.clone())
    }
}

/// Decrements a backend's active count when dropped.
pub struct ActiveGuard(Arc<Backend>);

impl ActiveGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.active.dec();
    }
}

/// A backend as placed in one snapshot of a pool.
#[derive(Debug, Clone)]
pub struct Member {
    pub backend: Arc<Backend>,
    pub weight: NonZeroU32,
    pub max_connections: Option<NonZeroU32>,
}

impl Member {
    /// Whether it may take a new connection: healthy, not drained, not full.
    pub fn available(&self) -> bool {
        let b = &self.backend;
        b.is_healthy()
            && !b.is_draining()
            && self
                .max_connections
                .is_none_or(|m| b.active() < u64::from(m.get()))
    }
}

/// An immutable view of a pool: what one connection's pick works from.
#[derive(Debug)]
pub struct Snapshot {
    pub config: PoolConfig,
    pub members: Vec<Member>,
    strategy: Box<dyn Strategy>,
}

struct Choice<'a> {
    members: &'a [Member],
    tried: &'a [usize],
}

impl Candidates for Choice<'_> {
    fn len(&self) -> usize {
        self.members.len()
    }
    fn eligible(&self, i: usize) -> bool {
        !self.tried.contains(&i) && self.members[i].available()
    }
    fn weight(&self, i: usize) -> u32 {
        self.members[i].weight.get()
    }
    fn active(&self, i: usize) -> u64 {
        self.members[i].backend.active()
    }
}

impl Snapshot {
    /// Picks an available backend not among `tried` (indices into `members`).
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.strategy.pick(&Choice {
            members: &self.members,
            tried,
        })
    }

    pub fn find(&self, addr: SocketAddr) -> Option<&Member> {
        self.members.iter().find(|m| m.backend.addr == addr)
    }

    /// Whether any backend is healthy (drained ones count: they are only resting).
    pub fn any_up(&self) -> bool {
        self.members.iter().any(|m| m.backend.is_healthy())
    }
}

/// Why a change through the admin API was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("pool `{pool}` has no backend {addr}")]
    NoSuchBackend { pool: String, addr: SocketAddr },
}

/// A named pool. Cheap to read (`snapshot`), serialised to write.
pub struct Pool {
    pub name: String,
    current: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    write: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

impl Pool {
    pub fn new(config: &PoolConfig, metrics: Arc<Metrics>) -> Arc<Pool> {
        let snapshot = build(config, &HashMap::new(), &metrics);
        Arc::new(Pool {
            name: config.name.clone(),
            current: ArcSwap::from_pointee(snapshot),
            metrics,
            write: Mutex::new(()),
        })
    }

    /// The current snapshot; hold it for as long as one connection's pick and retries.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces backends, weights, strategy and settings in one swap. Backends
    /// whose address stays keep their health, drain state and counts; those
    /// that leave keep serving their established connections. Returns whether
    /// anything changed.
    pub fn apply(&self, config: &PoolConfig) -> bool {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        if old.config == *config {
            return false;
        }
        let keep: HashMap<SocketAddr, Arc<Backend>> = old
            .members
            .iter()
            .map(|m| (m.backend.addr, m.backend.clone()))
            .collect();
        let next = build(config, &keep, &self.metrics);
        for m in &old.members {
            if next.find(m.backend.addr).is_none() {
                self.metrics.forget_backend(&self.name, &m.backend.label);
            }
        }
        self.current.store(Arc::new(next));
        true
    }

    /// Changes one backend's weight for new connections (until the next reload).
    pub fn set_weight(&self, addr: SocketAddr, weight: NonZeroU32) -> Result<(), PoolError> {
        let mut config = self.snapshot().config.clone();
        let b = config
            .backends
            .iter_mut()
            .find(|b| b.addr == addr)
            .ok_or_else(|| PoolError::NoSuchBackend {
                pool: self.name.clone(),
                addr,
            })?;
        b.weight = weight;
        self.apply(&config);
        Ok(())
    }

    /// Drains (true) or re-enables (false) one backend.
    pub fn set_draining(&self, addr: SocketAddr, draining: bool) -> Result<(), PoolError> {
        let snap = self.snapshot();
        let m = snap.find(addr).ok_or_else(|| PoolError::NoSuchBackend {
            pool: self.name.clone(),
            addr,
        })?;
        m.backend.set_draining(draining);
        Ok(())
    }

    /// Removes every series of this pool's backends (the pool is going away).
    pub fn forget_metrics(&self) {
        for m in &self.snapshot().members {
            self.metrics.forget_backend(&self.name, &m.backend.label);
        }
    }
}

fn build(
    config: &PoolConfig,
    keep: &HashMap<SocketAddr, Arc<Backend>>,
    metrics: &Metrics,
) -> Snapshot {
    let members: Vec<Member> = config
        .backends
        .iter()
        .map(|b: &BackendConfig| {
            let backend = keep.get(&b.addr).cloned().unwrap_or_else(|| {
                let label = b.addr.to_string();
                Arc::new(Backend::new(
                    &config.name,
                    b.addr,
                    config.health.initial_up,
                    metrics.backend(&config.name, &label),
                ))
            });
            backend.metrics.weight.set(i64::from(b.weight.get()));
            Member {
                backend,
                weight: b.weight,
                max_connections: b.max_connections,
            }
        })
        .collect();
    let weights: Vec<u32> = members.iter().map(|m| m.weight.get()).collect();
    Snapshot {
        config: config.clone(),
        strategy: balance::build(config.strategy, &weights),
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn backend() -> Backend {
        let m = Metrics::new();
        Backend::new(
            "p",
            "127.0.0.1:1".parse().unwrap(),
            true,
            m.backend("p", "127.0.0.1:1"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn passive_ejection_lasts_fail_timeout_and_doubles() {
        let b = backend();
        let t = Duration::from_secs(10);
        b.connect_failed(3, t);
        b.connect_failed(3, t);
        assert!(b.is_healthy(), "two failures of three");
        b.connect_failed(3, t);
        assert!(!b.is_healthy());
        tokio::time::advance(Duration::from_millis(9_990)).await;
        assert!(!b.is_healthy());
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(b.is_healthy(), "back after fail_timeout");
        // A repeat offender stays out twice as long.
        for _ in 0..3 {
            b.connect_failed(3, t);
        }
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(!b.is_healthy());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.is_healthy());
        // A success after it is back resets the doubling.
        b.connect_succeeded();
        for _ in 0..3 {
            b.connect_failed(3, t);
        }
        tokio::time::advance(Duration::from_millis(10_010)).await;
        assert!(b.is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn an_active_pass_ends_an_ejection_early() {
        let b = backend();
        for _ in 0..3 {
            b.connect_failed(3, Duration::from_secs(60));
        }
        assert!(!b.is_healthy());
        assert!(!b.set_up(true, "check passed"), "already up: no transition");
        assert!(b.is_healthy());
    }

    #[test]
    fn max_fails_zero_disables_passive_health() {
        let b = backend();
        for _ in 0..100 {
            b.connect_failed(0, Duration::from_secs(10));
        }
        assert!(b.is_healthy());
    }

    #[tokio::test]
    async fn apply_keeps_state_of_backends_that_stay() {
        let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }]\n";
        let config = crate::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let mut pc = config.pools["p"].clone();
        let pool = Pool::new(&pc, Arc::new(Metrics::new()));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        pool.set_draining(a, true).unwrap();
        let before = pool.snapshot().find(a).unwrap().backend.clone();
        pc.backends.remove(1);
        pc.backends.push(BackendConfig {
            addr: "127.0.0.1:3".parse().unwrap(),
            weight: NonZeroU32::new(2).unwrap(),
            max_connections: None,
        });
        assert!(pool.apply(&pc));
        let snap = pool.snapshot();
        assert!(
            Arc::ptr_eq(&before, &snap.find(a).unwrap().backend),
            "same backend object kept"
        );
        assert!(snap.find(a).unwrap().backend.is_draining());
        assert!(snap.find("127.0.0.1:2".parse().unwrap()).is_none());
        assert!(!pool.apply(&pc), "applying the same config is a no-op");
        assert_eq!(
            pool.set_weight("127.0.0.1:9".parse().unwrap(), NonZeroU32::new(2).unwrap()),
            Err(PoolError::NoSuchBackend {
                pool: "p".into(),
                addr: "127.0.0.1:9".parse().unwrap()
            })
        );
    }
}
