//! Active health checks: one task per backend, jittered, with rise/fall
//! hysteresis. A pool's checks follow its membership by difference: a
//! backend that joins gets a checker, one that leaves loses its own, and
//! those that stay keep theirs (with their rise/fall progress) unless the
//! check's settings change. Passive health (failed connects) lives on
//! [`Backend`] itself.

mod agent;
mod probe;

use probe::Fault;

/// Paces the warning for checks the proxy could not run.
static LOCAL_LOG: crate::clock::Every = crate::clock::Every::ms(1000);

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::config::{AgentConfig, CheckKind, HealthConfig, PoolTls};
use crate::pool::{Pool, Snapshot};
use crate::tls::Originator;

/// The running checks of one pool; they stop when this is dropped.
pub struct Checks {
    stop: CancellationToken,
}

impl Checks {
    /// Starts checking `pool`'s backends (none for `kind = "none"`), and
    /// keeps following its changes.
    pub fn start(pool: &Arc<Pool>, parent: &CancellationToken, tracker: &TaskTracker) -> Checks {
        let stop = parent.child_token();
        let mut checkers = Checkers {
            settings: None,
            running: HashMap::new(),
            agents: None,
            pool: Arc::downgrade(pool),
            stop: stop.clone(),
            tracker: tracker.clone(),
        };
        // The first set starts at once, so a new pool is checked from the start.
        let mut changes = pool.changes();
        changes.mark_unchanged();
        checkers.follow(&pool.snapshot());
        let pool = pool.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = checkers.stop.cancelled() => return,
                }
                checkers.follow(&pool.snapshot());
            }
        });
        Checks { stop }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Running = HashMap<crate::endpoint::Endpoint, (Arc<Backend>, CancellationToken)>;

/// One pool's checker tasks, by backend.
struct Checkers {
    /// The checks' settings and the pool's TLS they run over.
    settings: Option<(HealthConfig, Option<PoolTls>)>,
    running: HashMap<crate::endpoint::Endpoint, (Arc<Backend>, CancellationToken)>,
    /// The agent's settings and the tasks asking it, by backend.
    agents: Option<(AgentConfig, Running)>,
    pool: Weak<Pool>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Checkers {
    /// Brings the running checkers and agents in line with `snap`.
    fn follow(&mut self, snap: &Snapshot) {
        self.follow_checks(snap);
        self.follow_agents(snap);
    }

    /// Brings the agent tasks in line with `snap`: new settings start them
    /// over; a pool that drops its agent forgets what the agents said.
    fn follow_agents(&mut self, snap: &Snapshot) {
        let now = snap.config.agent.as_ref();
        if self.agents.as_ref().map(|(c, _)| c) != now {
            if let Some((_, running)) = self.agents.take() {
                let mut reweigh = false;
                for (_, (backend, stop)) in running {
                    stop.cancel();
                    if now.is_none() {
                        reweigh |= backend.agent.clear();
                    }
                }
                if reweigh {
                    if let Some(pool) = self.pool.upgrade() {
                        pool.reweigh();
                    }
                }
            }
            self.agents = now.map(|c| (c.clone(), HashMap::new()));
        }
        let Some((cfg, running)) = &mut self.agents else {
            return;
        };
        keep_members(running, snap);
        for m in &snap.members {
            let b = &m.backend;
            if let std::collections::hash_map::Entry::Vacant(e) = running.entry(b.addr) {
                let stop = self.stop.child_token();
                self.tracker.spawn(agent::ask(
                    b.clone(),
                    self.pool.clone(),
                    cfg.clone(),
                    stop.clone(),
                ));
                e.insert((b.clone(), stop));
            }
        }
    }

    /// Brings the running checkers in line with `snap`.
    fn follow_checks(&mut self, snap: &Snapshot) {
        let cfg = &snap.config.health;
        let tls = snap.config.tls.as_ref().filter(|_| cfg.tls);
        let now = (cfg.clone(), tls.cloned());
        if self.settings.as_ref() != Some(&now) {
            // New settings: every checker starts over with them.
            for (_, (_, stop)) in self.running.drain() {
                stop.cancel();
            }
            self.settings = Some(now);
        }
        let tls = tls.map(|t| t.built.clone());
        keep_members(&mut self.running, snap);
        if cfg.check == CheckKind::None {
            return;
        }
        for m in &snap.members {
            let b = &m.backend;
            if !self.running.contains_key(&b.addr) {
                let stop = self.stop.child_token();
                self.tracker
                    .spawn(watch(b.clone(), cfg.clone(), tls.clone(), stop.clone()));
                self.running.insert(b.addr, (b.clone(), stop));
            }
        }
    }
}

/// Stops the tasks of backends no longer in `snap`.
fn keep_members(running: &mut Running, snap: &Snapshot) {
    running.retain(|addr, (backend, stop)| {
        let stays = snap
            .find(*addr)
            .is_some_and(|m| Arc::ptr_eq(&m.backend, backend));
        if !stays {
            stop.cancel();
        }
        stays
    });
}

/// Sleeps for `d` unless `stop` fires first; returns false when stopped.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

/// Checks one backend every `interval` until stopped.
async fn watch(
    backend: Arc<Backend>,
    cfg: HealthConfig,
    tls: Option<Arc<Originator>>,
    stop: CancellationToken,
) {
    // A random start spreads a pool's checks over the interval.
    let jitter = rand::rng().random_range(Duration::ZERO..cfg.interval);
    if !pause(jitter, &stop).await {
        return;
    }
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        let result = tokio::select! {
            r = tokio::time::timeout(cfg.timeout, probe::run(&cfg, &backend, tls.as_deref())) => match r {
                Ok(r) => r,
                Err(_) => Err(Fault::Backend(format!("no answer within {}", humantime::format_duration(cfg.timeout)))),
            },
            _ = stop.cancelled() => return,
        };
        match result {
            Ok(detail) => {
                backend.record_check(true, detail);
                passes += 1;
                fails = 0;
                // Up already: this still ends a passive ejection early.
                if backend.is_up() || passes >= cfg.rise {
                    backend.set_up(true, &format!("{passes} checks passed"));
                }
            }
            // The proxy could not even try: no verdict on the backend either way.
            Err(Fault::Local(reason)) => {
                if LOCAL_LOG.ready() {
                    tracing::warn!(pool = %backend.pool, backend = %backend.addr, reason, "health check not run: the proxy is out of its own resources (logged at most once a second)");
                }
            }
            Err(Fault::Backend(reason)) => {
                backend.record_check(false, reason.clone());
                fails += 1;
                passes = 0;
                if backend.is_up() && fails >= cfg.fall {
                    backend.set_up(false, &reason);
                }
            }
        }
        if !pause(cfg.interval, &stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::net::SocketAddr;
    use std::num::NonZeroU32;

    fn pool() -> Arc<Pool> {
        let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }]\n[pools.p.health]\ninterval = \"1h\"\n";
        let config = crate::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        Pool::new(&config.pools["p"], Arc::new(Metrics::new()))
    }

    fn token(c: &Checkers, port: u16) -> Option<CancellationToken> {
        c.running
            .get(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .map(|(_, t)| t.clone())
    }

    #[tokio::test]
    async fn checkers_follow_membership_by_difference() {
        let pool = pool();
        let mut c = Checkers {
            settings: None,
            running: HashMap::new(),
            agents: None,
            pool: Weak::new(),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        c.follow(&pool.snapshot());
        let (one, two) = (token(&c, 1).unwrap(), token(&c, 2).unwrap());

        // A weight change keeps every checker (and its rise/fall progress).
        let a = SocketAddr::from(([127, 0, 0, 1], 1)).into();
        pool.set_weight(a, NonZeroU32::new(3).unwrap()).unwrap();
        c.follow(&pool.snapshot());
        assert!(!one.is_cancelled() && !two.is_cancelled());

        // A backend joins and one leaves: only those two change.
        let mut cfg = pool.snapshot().config.clone();
        cfg.backends.remove(1);
        let mut three = cfg.backends[0].clone();
        three.addr = SocketAddr::from(([127, 0, 0, 1], 3)).into();
        cfg.backends.push(three);
        pool.apply(&cfg);
        c.follow(&pool.snapshot());
        assert!(!one.is_cancelled(), "the staying backend keeps its checker");
        assert!(two.is_cancelled(), "the leaving backend's checker stops");
        assert!(token(&c, 2).is_none());
        assert!(token(&c, 3).is_some(), "the joining backend gets a checker");

        // New check settings restart them all.
        let mut cfg = pool.snapshot().config.clone();
        cfg.health.rise = 5;
        pool.apply(&cfg);
        c.follow(&pool.snapshot());
        assert!(one.is_cancelled());
        assert!(token(&c, 1).is_some_and(|t| !t.is_cancelled()));
        c.stop.cancel();
    }
}
