//! One backend of one pool and its live state: the active checker's verdict,
//! passive ejection after failed connects, the operator's drain, and the
//! count of open connections. All atomics, read on every pick. What its
//! agent says is in [`agent`].
//!
//! It runs past 400 lines: a backend's live state (health, passive
//! ejection, slow start, drain, its source) is one struct's, and its tests
//! stay beside it.

pub mod agent;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::now_ms;
use crate::config::ConnectFrom;
use crate::endpoint::Endpoint;
use crate::metrics::BackendMetrics;

/// `on_down` when established connections are kept (the default).
const KEEP: u64 = u64::MAX;

/// Passive ejections double `fail_timeout` each time, up to this factor.
const MAX_EJECTION_FACTOR: u32 = 16;

/// A backend's state, one definition for every reader (see [`Backend::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Health (the active check, or passive ejection) keeps it out.
    Down,
    /// It takes new connections.
    Up,
    /// An operator drained it: no new connections, established ones run on.
    Draining,
}

impl BackendState {
    /// As the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Down => "down",
            BackendState::Up => "up",
            BackendState::Draining => "draining",
        }
    }
}

/// The last active check of a backend, as the admin API shows it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CheckResult {
    /// Whether it passed.
    pub ok: bool,
    /// What it saw, or why it failed.
    pub detail: String,
    /// Milliseconds since it ran.
    pub age_ms: u64,
}

/// The last active check as kept: when it ran, on `now_ms`'s clock.
#[derive(Clone)]
struct LastCheck {
    ok: bool,
    detail: String,
    at_ms: u64,
}

/// One backend of one pool, with its live state.
pub struct Backend {
    /// Its address (IP and port, or a Unix socket), its identity within
    /// the pool.
    pub addr: Endpoint,
    /// The address as text, the `backend` label of its metrics.
    pub label: String,
    /// Its name (default the address), the `backend_name` label.
    pub name: String,
    /// The pool it belongs to.
    pub pool: String,
    up: AtomicBool,
    draining: AtomicBool,
    /// Left its pool (a reload or discovery removed it).
    retired: AtomicBool,
    /// What happens to its established connections when it goes down or
    /// leaves its pool: `None` keeps them, `Some(grace)` closes them after
    /// `grace` (the pool's `on_backend_down`), set by each snapshot.
    on_down: AtomicU64,
    /// Fires when it goes down or leaves its pool; replaced when it comes back.
    down: Mutex<tokio_util::sync::CancellationToken>,
    /// Where connections to it leave from (its pool's `source`), set by
    /// each snapshot; read by every connect, without a lock.
    source: arc_swap::ArcSwapOption<ConnectFrom>,
    /// When it last came back (an up transition, the end of an ejection),
    /// for `slow_start`; 0 once it has warmed up.
    back_at: AtomicU64,
    active: AtomicU64,
    passive_fails: AtomicU32,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    last_check: Mutex<Option<LastCheck>>,
    /// What its agent said, if its pool has one.
    pub agent: agent::AgentState,
    /// Its series.
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
    pub(crate) fn new(
        pool: &str,
        (addr, name): (Endpoint, &str),
        up: bool,
        metrics: BackendMetrics,
    ) -> Backend {
        metrics.up.set(up as i64);
        metrics.draining.set(0);
        Backend {
            addr,
            label: addr.to_string(),
            name: name.to_string(),
            pool: pool.to_string(),
            up: AtomicBool::new(up),
            draining: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            back_at: AtomicU64::new(0),
            on_down: AtomicU64::new(KEEP),
            down: Mutex::new(tokio_util::sync::CancellationToken::new()),
            source: arc_swap::ArcSwapOption::const_empty(),
            active: AtomicU64::new(0),
            passive_fails: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_check: Mutex::new(None),
            agent: agent::AgentState::default(),
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

    /// Whether health (active and passive) and its agent let it take traffic.
    pub fn is_healthy(&self) -> bool {
        self.is_up() && !self.is_ejected() && !self.agent.out()
    }

    /// Whether it takes no new connections by an operator's drain or its agent's.
    pub fn is_drained(&self) -> bool {
        self.is_draining() || self.agent.drained()
    }

    /// Whether it has left its pool: established connections run on, but
    /// a UDP session on it re-picks on the client's next datagram.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// It left its pool: its series go, and no new traffic comes its way.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.fire_down();
        self.metrics.forget();
    }

    /// Sets where connections leave from; a local address only for a
    /// backend of its family.
    pub(crate) fn set_source(&self, source: Option<ConnectFrom>) {
        // Not for a Unix socket, which has no addresses to leave from.
        let source = source.filter(|s| match (s, self.addr) {
            (_, Endpoint::Unix(_)) => false,
            (ConnectFrom::Address(ip), Endpoint::Inet(a)) => ip.is_ipv4() == a.is_ipv4(),
            (ConnectFrom::Client, Endpoint::Inet(_)) => true,
        });
        // Every snapshot sets it: stored only when it changes.
        if self.source.load().as_deref() != source.as_ref() {
            self.source.store(source.map(std::sync::Arc::new));
        }
    }

    /// Where a connection for `client` leaves from: `(address, transparent)`,
    /// or `None` for the system's choice. The client's own address needs a
    /// client of the backend's family.
    pub(crate) fn source_for(
        &self,
        client: std::net::IpAddr,
    ) -> std::io::Result<Option<(std::net::IpAddr, bool)>> {
        match self.source.load().as_deref() {
            None => Ok(None),
            Some(ConnectFrom::Address(ip)) => Ok(Some((*ip, false))),
            Some(ConnectFrom::Client) if self.addr.inet().is_some_and(|a| a.is_ipv4() == client.is_ipv4()) => {
                Ok(Some((client, true)))
            }
            Some(ConnectFrom::Client) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "source = \"client\": the client {client} cannot connect to {} (another address family)",
                    self.addr
                ),
            )),
        }
    }

    /// The local address health checks leave from: the pool's `source`
    /// when it names one (checks never borrow a client's address).
    pub(crate) fn check_source(&self) -> Option<std::net::IpAddr> {
        match self.source.load().as_deref() {
            Some(ConnectFrom::Address(ip)) => Some(*ip),
            _ => None,
        }
    }

    /// Sets what happens to established connections when it goes down.
    pub(crate) fn set_on_down(&self, on_down: Option<Duration>) {
        let ms = on_down.map_or(KEEP, |d| (d.as_millis() as u64).min(KEEP - 1));
        self.on_down.store(ms, Ordering::Relaxed);
    }

    /// For a new connection: when its pool closes connections of a backend
    /// that goes down, the grace and the signal to watch.
    pub fn down_watch(&self) -> Option<(Duration, tokio_util::sync::CancellationToken)> {
        let ms = self.on_down.load(Ordering::Relaxed);
        if ms == KEEP {
            return None;
        }
        let grace = Duration::from_millis(ms);
        Some((
            grace,
            self.down.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ))
    }

    fn fire_down(&self) {
        self.down.lock().unwrap_or_else(|e| e.into_inner()).cancel();
    }

    /// Slow start: whether this pick may go to it. For `slow_start` after
    /// it came back, a pick is let through with a chance that grows from 0
    /// to 1 with the time since, so its share of new traffic ramps up
    /// instead of jumping to its full weight (or, under `least_conn`, to
    /// everything, since it starts with no connections).
    pub fn warm_enough(&self, slow_start: Duration) -> bool {
        let back = self.back_at.load(Ordering::Relaxed);
        if back == 0 || slow_start.is_zero() {
            return true;
        }
        let now = now_ms();
        if now < back {
            // Still ejected: health decides, not the ramp.
            return true;
        }
        let ramp = slow_start.as_millis() as u64;
        let since = now - back;
        if since >= ramp {
            self.back_at.store(0, Ordering::Relaxed);
            return true;
        }
        rand::random_range(0..ramp) < since
    }

    /// Whether an operator drained it.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Its state as the API, `ctl`, the status page and the history show
    /// it: a drain comes first, then health (active and passive).
    pub fn state(&self) -> BackendState {
        if self.is_drained() {
            BackendState::Draining
        } else if self.is_healthy() {
            BackendState::Up
        } else {
            BackendState::Down
        }
    }

    /// Connections and sessions open to it now.
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
            if self.ejected_until.swap(0, Ordering::Relaxed) > now_ms() {
                self.back_at.store(now_ms(), Ordering::Relaxed);
            }
            self.passive_fails.store(0, Ordering::Relaxed);
        }
        if self.up.swap(up, Ordering::Relaxed) == up {
            return false;
        }
        self.metrics.up.set(up as i64);
        if !up {
            self.fire_down();
        } else {
            // A fresh signal for the connections made from now on.
            *self.down.lock().unwrap_or_else(|e| e.into_inner()) =
                tokio_util::sync::CancellationToken::new();
        }
        if up {
            self.back_at.store(now_ms(), Ordering::Relaxed);
            self.metrics.to_up.inc();
            tracing::info!(pool = %self.pool, backend = %self.addr, reason, "backend is up");
        } else {
            self.metrics.to_down.inc();
            tracing::warn!(pool = %self.pool, backend = %self.addr, reason, "backend is down");
        }
        true
    }

    /// Records an active check's result (for the API) and counts it.
    pub fn record_check(&self, ok: bool, detail: String) {
        if ok {
            self.metrics.checks_ok.inc();
        } else {
            self.metrics.checks_failed.inc();
        }
        let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(LastCheck {
            ok,
            detail,
            at_ms: now_ms(),
        });
    }

    /// The last active check, with its age.
    pub fn last_check(&self) -> Option<CheckResult> {
        let last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        last.clone().map(|c| CheckResult {
            ok: c.ok,
            detail: c.detail,
            age_ms: now_ms().saturating_sub(c.at_ms),
        })
    }

    /// Counts a failed connect (or an error on a UDP session) under its
    /// `reason` label: refused, timeout or error.
    pub fn count_failure(&self, e: &std::io::Error) {
        let m = &self.metrics;
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => m.fail_refused.inc(),
            std::io::ErrorKind::TimedOut => m.fail_timeout.inc(),
            _ => m.fail_other.inc(),
        }
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
        // Saturating: a fail_timeout of years must not overflow into a panic.
        let out_for = fail_timeout.saturating_mul(factor);
        let out_ms = u64::try_from(out_for.as_millis()).unwrap_or(u64::MAX);
        let back = now_ms().saturating_add(out_ms);
        self.ejected_until.store(back, Ordering::Relaxed);
        self.back_at.store(back, Ordering::Relaxed);
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

    /// Counts a connection (from its connect attempt on) or a session as
    /// open until the guard drops; `connections_total` counts only those
    /// [`ActiveGuard::established`].
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.active.inc();
        ActiveGuard(self.clone())
    }
}

/// Decrements a backend's active count when dropped.
pub struct ActiveGuard(Arc<Backend>);

impl ActiveGuard {
    /// The connection or session is up: count it.
    pub fn established(self) -> ActiveGuard {
        self.0.metrics.connections.inc();
        self
    }

    /// The backend it counts on.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn backend() -> Backend {
        let m = Metrics::new();
        Backend::new(
            "p",
            ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:1"),
            true,
            m.backend("p", "127.0.0.1:1", "127.0.0.1:1"),
        )
    }

    #[test]
    fn a_source_applies_to_its_own_family_and_the_client_must_match() {
        let b = backend();
        let (v4, v6): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.7".parse().unwrap(), "2001:db8::7".parse().unwrap());
        b.set_source(Some(ConnectFrom::Address(v6)));
        assert_eq!(
            b.source_for(v4).unwrap(),
            None,
            "an IPv6 source for an IPv4 backend"
        );
        b.set_source(Some(ConnectFrom::Address(v4)));
        assert_eq!(b.source_for(v6).unwrap(), Some((v4, false)));
        assert_eq!(b.check_source(), Some(v4));
        b.set_source(Some(ConnectFrom::Client));
        assert_eq!(b.source_for(v4).unwrap(), Some((v4, true)));
        assert!(
            b.source_for(v6).is_err(),
            "an IPv6 client cannot leave from its address to an IPv4 backend"
        );
        assert_eq!(
            b.check_source(),
            None,
            "checks never borrow a client's address"
        );
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

    #[tokio::test(start_paused = true)]
    async fn a_huge_fail_timeout_saturates_instead_of_panicking() {
        let b = backend();
        for _ in 0..20 {
            b.connect_failed(1, Duration::MAX / 2);
        }
        assert!(!b.is_healthy());
        tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
        assert!(!b.is_healthy(), "still out a year later");
    }

    #[test]
    fn max_fails_zero_disables_passive_health() {
        let b = backend();
        for _ in 0..100 {
            b.connect_failed(0, Duration::from_secs(10));
        }
        assert!(b.is_healthy());
    }
}
