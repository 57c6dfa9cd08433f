//! Pools of backends. A pool's backend set lives in an immutable [`Snapshot`]
//! behind an atomic swap; [`Pool::update`] is the one door through which a
//! reload, the admin API or discovery changes it: one read-modify-write of
//! the pool's configuration under one lock, so no change is lost to another.
//! [`Backend`]s (with their health, drain state and load) are identified by
//! address and survive a swap when their address stays; whoever follows the
//! membership (health checks) hears of each swap through [`Pool::changes`].
//!
//! It runs past 400 lines: the pool's one write path and the snapshot it
//! publishes depend on each other's invariants and are read together.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::balance::{self, Candidates, Flow, Peer, Strategy};
use crate::config::{AllDown, BackendConfig, PoolConfig};
use crate::endpoint::Endpoint;
use crate::metrics::Metrics;

/// A backend as placed in one snapshot of a pool.
#[derive(Debug, Clone)]
pub struct Member {
    /// The backend and its live state.
    pub backend: Arc<Backend>,
    /// Its weight in this snapshot.
    pub weight: NonZeroU32,
    /// Its connection limit, if any.
    pub max_connections: Option<NonZeroU32>,
    /// Its priority group: 0 is the highest, [`crate::config::BACKUP`] the backups.
    pub priority: u32,
}

impl Member {
    /// Whether it may take a new connection: healthy, not drained, not full.
    pub fn available(&self) -> bool {
        self.backend.is_healthy() && self.open()
    }

    /// Whether it may take a new connection when health is set aside
    /// (panic, `on_all_down = "try_all"`): not drained, not full.
    fn open(&self) -> bool {
        let b = &self.backend;
        !b.is_drained()
            && self
                .max_connections
                .is_none_or(|m| b.active() < u64::from(m.get()))
    }
}

/// One priority group of a snapshot: its members, in order, and the
/// strategy built from them alone (so Maglev's table and a rotation's turns
/// are the group's).
#[derive(Debug)]
struct Group {
    priority: u32,
    /// Indices into the snapshot's members.
    members: Vec<usize>,
    strategy: Box<dyn Strategy>,
}

/// An immutable view of a pool: what one connection's pick works from.
#[derive(Debug)]
pub struct Snapshot {
    /// The pool's configuration as this snapshot applies it.
    pub config: PoolConfig,
    /// Its backends, in configuration order (the strategy's indices).
    pub members: Vec<Member>,
    /// Each member's place in `members`, by address: finding one is O(1),
    /// so following a change of 10,000 discovered backends stays linear.
    index: HashMap<Endpoint, usize>,
    /// Its priority groups, highest first.
    groups: Vec<Group>,
    /// Every member as one group, for panic and `try_all`, when there are
    /// several groups (one group is its own).
    everyone: Option<Group>,
    policy: Arc<Policy>,
}

/// Which members a pick may take.
#[derive(Debug, Clone, Copy)]
enum Reach {
    /// Available ones, each let through by slow start with its chance (the
    /// pool's `slow_start`, or zero to let warming ones take their full share).
    Available(Duration),
    /// Any not drained or full, health aside.
    Open,
}

struct Choice<'a> {
    members: &'a [Member],
    group: &'a [usize],
    tried: &'a [usize],
    reach: Reach,
}

impl Candidates for Choice<'_> {
    fn len(&self) -> usize {
        self.group.len()
    }
    fn eligible(&self, i: usize) -> bool {
        let at = self.group[i];
        let m = &self.members[at];
        !self.tried.contains(&at)
            && match self.reach {
                Reach::Available(slow_start) => m.available() && m.backend.warm_enough(slow_start),
                Reach::Open => m.open(),
            }
    }
    fn weight(&self, i: usize) -> u32 {
        self.members[self.group[i]].weight.get()
    }
    fn active(&self, i: usize) -> u64 {
        self.members[self.group[i]].backend.active()
    }
}

impl Snapshot {
    /// Picks a backend for `client`, not among `tried` (indices into
    /// `members`): from the highest priority group with an available one;
    /// over every backend, health aside, in panic or (with `try_all`) when
    /// none is available.
    pub fn pick(&self, client: SocketAddr, tried: &[usize]) -> Option<usize> {
        let flow = Flow { client };
        let panic = self
            .config
            .panic_below
            .is_some_and(|below| self.below(below));
        if !panic {
            for g in &self.groups {
                if let Some(i) = self.pick_available(g, &flow, tried) {
                    if tried.is_empty() {
                        self.policy.observe(Some(g.priority), false);
                    }
                    return Some(i);
                }
            }
        }
        let spread = panic || self.config.on_all_down == AllDown::TryAll;
        if tried.is_empty() {
            self.policy.observe(self.active_priority(), spread);
        }
        if !spread {
            return None;
        }
        let all = self.everyone.as_ref().or(self.groups.first())?;
        self.pick_in(all, &flow, tried, Reach::Open)
    }

    /// A pick among `g`'s available members: warmed ones first, then (when
    /// only warming ones are available) better them than none.
    fn pick_available(&self, g: &Group, flow: &Flow, tried: &[usize]) -> Option<usize> {
        let slow_start = self.config.slow_start;
        self.pick_in(g, flow, tried, Reach::Available(slow_start))
            .or_else(|| {
                (!slow_start.is_zero())
                    .then(|| self.pick_in(g, flow, tried, Reach::Available(Duration::ZERO)))
                    .flatten()
            })
    }

    fn pick_in(&self, g: &Group, flow: &Flow, tried: &[usize], reach: Reach) -> Option<usize> {
        let choice = Choice {
            members: &self.members,
            group: &g.members,
            tried,
            reach,
        };
        g.strategy.pick(flow, &choice).map(|i| g.members[i])
    }

    /// Whether fewer than `below` thousandths of the backends not drained
    /// are available.
    fn below(&self, below: u32) -> bool {
        let (mut open, mut available) = (0u64, 0u64);
        for m in &self.members {
            if !m.backend.is_drained() {
                open += 1;
                available += u64::from(m.available());
            }
        }
        open > 0 && available * 1000 < open * u64::from(below)
    }

    /// The priority of the highest group with an available backend.
    pub fn active_priority(&self) -> Option<u32> {
        self.groups
            .iter()
            .find(|g| g.members.iter().any(|&i| self.members[i].available()))
            .map(|g| g.priority)
    }

    /// Whether new connections are spread over every backend, health aside.
    pub fn in_panic(&self) -> bool {
        match self.config.panic_below {
            Some(below) if self.below(below) => true,
            _ => {
                self.config.on_all_down == AllDown::TryAll
                    && !self.members.iter().any(Member::available)
            }
        }
    }

    /// Brings the pool's active group and panic, as exported and logged, up
    /// to date without a pick (the sampler calls it, so an idle pool's
    /// gauges follow its health too).
    pub fn observe(&self) {
        self.policy.observe(self.active_priority(), self.in_panic());
    }

    /// The member at `addr`, if it is in this snapshot.
    pub fn find(&self, addr: impl Into<Endpoint>) -> Option<&Member> {
        self.index.get(&addr.into()).map(|&i| &self.members[i])
    }

    /// Whether any backend is healthy (drained ones count: they are only resting).
    pub fn any_up(&self) -> bool {
        self.members.iter().any(|m| m.backend.is_healthy())
    }
}

/// A pool's active priority group and panic, as last seen by a pick: kept
/// across snapshots, exported, and logged when they change.
#[derive(Debug)]
struct Policy {
    pool: String,
    /// `NO_GROUP` or the priority, with `PANIC` set in panic.
    seen: AtomicU64,
    metrics: crate::metrics::PoolMetrics,
}

const NO_GROUP: u64 = u32::MAX as u64;
const PANIC: u64 = 1 << 32;

impl Policy {
    fn new(pool: &str, metrics: &Metrics) -> Policy {
        let metrics = metrics.pool(pool);
        metrics.active_priority.set(0);
        Policy {
            pool: pool.to_string(),
            seen: AtomicU64::new(0),
            metrics,
        }
    }

    /// Records what a pick saw; the first to see a change logs it.
    fn observe(&self, priority: Option<u32>, panic: bool) {
        let now = priority.map_or(NO_GROUP, u64::from) | if panic { PANIC } else { 0 };
        if self.seen.load(Ordering::Relaxed) == now {
            return;
        }
        let was = self.seen.swap(now, Ordering::Relaxed);
        if was == now {
            return;
        }
        let group = |v: u64| match v & !PANIC {
            NO_GROUP => "none".to_string(),
            p if p == u64::from(crate::config::BACKUP) => "backup".to_string(),
            p => p.to_string(),
        };
        if (was & !PANIC) != (now & !PANIC) {
            self.metrics
                .active_priority
                .set(priority.map_or(-1, i64::from));
            tracing::warn!(
                pool = %self.pool,
                from = %group(was),
                to = %group(now),
                "the pool's active priority group changed"
            );
        }
        if (was & PANIC) != (now & PANIC) {
            self.metrics.panic.set(i64::from(panic));
            if panic {
                tracing::warn!(
                    pool = %self.pool,
                    "pool in panic: too few backends are eligible, so new connections go to every backend, healthy or not"
                );
            } else {
                tracing::info!(pool = %self.pool, "pool out of panic");
            }
        }
    }
}

/// A change to one backend asked for through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Drain (true) or enable (false).
    Drain(bool),
    /// Set its weight.
    Weight(NonZeroU32),
}

/// Why a change could not be written to the store a pool's members live in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unshared {
    /// The store did not take it (unreachable, or it said no): nothing
    /// changed; it may be tried again.
    #[error("{0}")]
    Unavailable(String),
    /// The members belong to another program's registry: a change is made
    /// there, by their owners.
    #[error("{0}")]
    NotOurs(String),
}

/// One backend as discovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name (etcd entries may set it; default the address).
    pub name: Option<String>,
    /// Its weight (SRV records and etcd entries may set it).
    pub weight: NonZeroU32,
    /// Whether it is drained, when the source says (etcd), so a drain made
    /// through any instance holds on all of them.
    pub draining: Option<bool>,
}

/// Why a change through the admin API was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// The backend named is not in the pool.
    #[error("pool `{pool}` has no backend {addr}")]
    NoSuchBackend {
        /// The pool's name.
        pool: String,
        /// The address asked for.
        addr: Endpoint,
    },
}

/// A named pool. Cheap to read (`snapshot`), serialised to write.
pub struct Pool {
    /// Its configured name.
    pub name: String,
    current: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    write: Mutex<()>,
    changed: watch::Sender<()>,
    /// The handshakes of its TLS to backends, made on first use.
    tls: std::sync::OnceLock<crate::metrics::TlsHandshakes>,
    /// When the client certificate it presents expires, by file.
    cert_expiry: Mutex<Option<(String, crate::metrics::CertExpiry)>>,
    /// Its active priority group and panic, shared by its snapshots.
    policy: Arc<Policy>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

impl Pool {
    /// A pool with `config`'s backends, each new (health by `initial`).
    pub fn new(config: &PoolConfig, metrics: Arc<Metrics>) -> Arc<Pool> {
        let policy = Arc::new(Policy::new(&config.name, &metrics));
        let snapshot = build(config, &HashMap::new(), &metrics, &policy);
        let pool = Arc::new(Pool {
            policy,
            name: config.name.clone(),
            current: ArcSwap::from_pointee(snapshot),
            metrics,
            write: Mutex::new(()),
            changed: watch::Sender::new(()),
            tls: std::sync::OnceLock::new(),
            cert_expiry: Mutex::new(None),
        });
        pool.follow_cert(config);
        pool
    }

    /// Exports when the client certificate of `config` expires (and no
    /// longer that of a file it stopped using).
    fn follow_cert(&self, config: &PoolConfig) {
        let now = config.tls.as_ref().and_then(|t| {
            let (cert, _) = t.cert.as_ref()?;
            Some((cert.display().to_string(), t.built.leaf.as_ref()?.not_after))
        });
        let mut held = self.cert_expiry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((file, e)) = held.take() {
            if now.as_ref().is_none_or(|(f, _)| *f != file) {
                e.forget();
            }
        }
        *held = now.map(|(file, not_after)| {
            let e = self.metrics.cert_expiry(("", &self.name), &file, not_after);
            (file, e)
        });
    }

    /// Fires after every change of the snapshot.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The series of its TLS handshakes with backends.
    pub fn tls_handshakes(&self) -> &crate::metrics::TlsHandshakes {
        self.tls
            .get_or_init(|| self.metrics.tls_backends(&self.name))
    }

    /// Forgets its TLS series (the pool leaves the configuration).
    fn forget_tls(&self) {
        if let Some(t) = self.tls.get() {
            t.forget();
        }
    }

    /// The current snapshot; hold it for as long as one connection's pick and retries.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The keepalive idle time for connections to this pool's backends
    /// (`None`: off), read without taking a reference to the snapshot.
    pub fn tcp_keepalive(&self) -> Option<Duration> {
        self.current.load().config.tcp_keepalive
    }

    /// The one door: `change` edits the pool's current configuration under
    /// the write lock, and the result replaces backends, weights, strategy
    /// and settings in one swap. Backends whose address stays keep their
    /// health, drain state and counts; those that leave keep serving their
    /// established connections, and their series go. Returns whether
    /// anything changed; an error from `change` changes nothing.
    pub fn update<E>(
        &self,
        change: impl FnOnce(&mut PoolConfig) -> Result<(), E>,
    ) -> Result<bool, E> {
        let _w = self.lock();
        self.update_locked(change)
    }

    /// [`Pool::update`], with the write lock held by the caller.
    fn update_locked<E>(
        &self,
        change: impl FnOnce(&mut PoolConfig) -> Result<(), E>,
    ) -> Result<bool, E> {
        let old = self.current.load_full();
        let mut config = old.config.clone();
        change(&mut config)?;
        if old.config == config {
            return Ok(false);
        }
        self.rebuild(&old, config);
        Ok(true)
    }

    /// Builds the next snapshot from `config` in place of `old`, with the
    /// write lock held by the caller.
    fn rebuild(&self, old: &Snapshot, config: PoolConfig) {
        // A backend is its address and name: renamed, it is a new one.
        let keep: HashMap<(Endpoint, &str), Arc<Backend>> = old
            .members
            .iter()
            .map(|m| ((m.backend.addr, m.backend.name.as_str()), m.backend.clone()))
            .collect();
        let next = build(&config, &keep, &self.metrics, &self.policy);
        if old.config.tls != config.tls {
            self.follow_cert(&config);
        }
        let stays: HashSet<*const Backend> = next
            .members
            .iter()
            .map(|n| Arc::as_ptr(&n.backend))
            .collect();
        for m in &old.members {
            if !stays.contains(&Arc::as_ptr(&m.backend)) {
                m.backend.retire();
            }
        }
        self.current.store(Arc::new(next));
        self.changed.send_replace(());
    }

    /// Builds the snapshot again from the same configuration: an agent
    /// changed a backend's weight, and the strategies are built from them.
    pub fn reweigh(&self) {
        let _w = self.lock();
        let old = self.current.load_full();
        self.rebuild(&old, old.config.clone());
    }

    /// Replaces the whole configuration (a reload). Returns whether anything
    /// changed. A discovered pool keeps the backends it found: the file
    /// sets its settings, discovery its members.
    pub fn apply(&self, config: &PoolConfig) -> bool {
        let Ok(changed) = self.update(|c| {
            let found = std::mem::take(&mut c.backends);
            *c = config.clone();
            if config.discovery.is_some() {
                c.backends = found;
                for b in &mut c.backends {
                    b.max_connections = config.backend_max_connections;
                }
            }
            Ok::<(), Infallible>(())
        });
        changed
    }

    /// Replaces a discovered pool's members with `found`, leaving its
    /// settings alone; a backend whose entry says whether it is drained
    /// (etcd) is drained or enabled to match, in the same step. Returns
    /// whether the membership changed.
    pub fn set_found(&self, found: &[Found]) -> bool {
        let _w = self.lock();
        let changed = self.update_locked(|c| {
            c.backends = found
                .iter()
                .map(|f| BackendConfig {
                    addr: Endpoint::Inet(f.addr),
                    name: f.name.clone().unwrap_or_else(|| f.addr.to_string()),
                    weight: f.weight,
                    max_connections: c.backend_max_connections,
                    priority: 0,
                })
                .collect();
            // By name: the order `first` fills them in, the same on every
            // instance whatever order the source answered in.
            c.backends
                .sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
            Ok::<(), Infallible>(())
        });
        let snap = self.snapshot();
        for f in found {
            if let (Some(d), Some(m)) = (f.draining, snap.find(Endpoint::Inet(f.addr))) {
                m.backend.set_draining(d);
            }
        }
        changed.unwrap_or(false)
    }

    /// Changes one backend's weight for new connections (until the next reload).
    pub fn set_weight(&self, addr: Endpoint, weight: NonZeroU32) -> Result<(), PoolError> {
        self.update(|config| {
            let b = config
                .backends
                .iter_mut()
                .find(|b| b.addr == addr)
                .ok_or_else(|| PoolError::NoSuchBackend {
                    pool: self.name.clone(),
                    addr,
                })?;
            b.weight = weight;
            Ok(())
        })
        .map(|_| ())
    }

    /// Drains (true) or re-enables (false) one backend.
    pub fn set_draining(&self, addr: Endpoint, draining: bool) -> Result<(), PoolError> {
        // Under the write lock, so a concurrent change cannot swap the
        // backend out between finding and marking it.
        let _w = self.lock();
        let snap = self.snapshot();
        let m = snap.find(addr).ok_or_else(|| PoolError::NoSuchBackend {
            pool: self.name.clone(),
            addr,
        })?;
        m.backend.set_draining(draining);
        Ok(())
    }

    /// The pool is going away: every backend is retired (its series go).
    pub fn close(&self) {
        for m in &self.snapshot().members {
            m.backend.retire();
        }
        self.forget_tls();
        self.policy.metrics.forget();
        if let Some((_, e)) = self
            .cert_expiry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            e.forget();
        }
    }
}

/// A configured weight after the agent's share of it: at least 1 (0 %
/// drains instead) and at most the largest weight.
fn agent_weighted(weight: NonZeroU32, percent: u32) -> NonZeroU32 {
    if percent == 100 {
        return weight;
    }
    let w = (u64::from(weight.get()) * u64::from(percent) + 50) / 100;
    NonZeroU32::new(w.clamp(1, u64::from(crate::config::MAX_WEIGHT)) as u32).unwrap_or(weight)
}

fn build(
    config: &PoolConfig,
    keep: &HashMap<(Endpoint, &str), Arc<Backend>>,
    metrics: &Metrics,
    policy: &Arc<Policy>,
) -> Snapshot {
    let members: Vec<Member> = config
        .backends
        .iter()
        .map(|b: &BackendConfig| {
            let backend = keep
                .get(&(b.addr, b.name.as_str()))
                .cloned()
                .unwrap_or_else(|| {
                    let label = b.addr.to_string();
                    Arc::new(Backend::new(
                        &config.name,
                        (b.addr, &b.name),
                        config.health.initial_up,
                        metrics.backend(&config.name, &label, &b.name),
                    ))
                });
            let weight = agent_weighted(b.weight, backend.agent.percent());
            backend.metrics.weight.set(i64::from(weight.get()));
            backend.set_on_down(config.on_backend_down);
            backend.set_source(config.source);
            Member {
                backend,
                weight,
                max_connections: b.max_connections,
                priority: b.priority,
            }
        })
        .collect();
    let group = |priority: u32, at: Vec<usize>| {
        let peers: Vec<Peer> = at
            .iter()
            .map(|&i| Peer {
                addr: members[i].backend.addr,
                weight: members[i].weight.get(),
            })
            .collect();
        Group {
            priority,
            strategy: balance::build_with(config.strategy, &peers, &config.balance),
            members: at,
        }
    };
    let mut priorities: Vec<u32> = members.iter().map(|m| m.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let groups: Vec<Group> = priorities
        .iter()
        .map(|&p| {
            let at = (0..members.len())
                .filter(|&i| members[i].priority == p)
                .collect();
            group(p, at)
        })
        .collect();
    // Only panic and try_all reach past the groups.
    let spreads = config.panic_below.is_some() || config.on_all_down == AllDown::TryAll;
    let everyone = (groups.len() > 1 && spreads).then(|| group(0, (0..members.len()).collect()));
    let index = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.backend.addr, i))
        .collect();
    Snapshot {
        config: config.clone(),
        members,
        index,
        groups,
        everyone,
        policy: policy.clone(),
    }
}

#[cfg(test)]
mod tests;
