//! Carrying a reload out: the plan (`plan.rs`) says what changes; this does
//! everything that can fail first (binding, taking sockets over, reading the
//! token), then the rest in one step, and publishes the new view.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::plan::{self, AdminStep, Current, ListenerStep, Plan, PoolStep};
use super::upgrade::Inherited;
use super::{off_runtime, Error, PoolEntry, Server, State};
use crate::admin::{self, ListenerView, View};
use crate::cluster::Cluster;
use crate::config::{Config, ConnectFrom, ListenerConfig};
use crate::discovery::Discovery;
use crate::health::Checks;
use crate::listener::{self, Bound, Listener, Pools, Tasks};
use crate::pool::Pool;

/// What the prepare phase made: every socket and file a reload needs, so
/// that nothing after it can fail.
struct Prepared {
    /// Sockets of the listeners not kept, by name.
    fresh: HashMap<String, Bound>,
    /// The admin token, read.
    token: Option<String>,
    /// A new admin endpoint, when the plan binds one.
    admin: Option<admin::AdminEndpoint>,
}

impl Server {
    /// Plans the change from what runs to `config`, then carries it out in
    /// four phases: prepare (everything that can fail: binding, taking
    /// sockets over, reading the token; a failure changes nothing), commit
    /// pools, commit listeners (and the admin endpoint), publish.
    pub(super) async fn apply(&self, config: Config) -> Result<(), Error> {
        let mut st = self.inner.state.lock().await;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        let plan = plan::plan(
            &Current {
                listeners: st.listeners.values().map(|l| &l.config).collect(),
                pools: st.pools.keys().map(String::as_str).collect(),
                admin: st.admin.as_ref().map(|a| a.bind),
            },
            &config,
        );
        let prepared = prepare(&mut st, &plan, &config)?;
        // Nothing fails from here on.
        crate::log::configure(&config.log);
        self.commit_pools(&mut st, &plan, &config).await;
        self.commit_listeners(&mut st, &plan, &config, prepared);
        self.publish(&mut st, config);
        Ok(())
    }

    /// Adds and updates pools (the dropped ones go after the listeners that
    /// used them).
    async fn commit_pools(&self, st: &mut State, plan: &Plan, config: &Config) {
        let inner = &self.inner;
        for (name, step) in &plan.pools {
            let cfg = config.pools[name].clone();
            match step {
                PoolStep::Update => {
                    let pool = st.pools[name].pool.clone();
                    off_runtime(move || pool.apply(&cfg)).await;
                }
                PoolStep::Add => {
                    let metrics = inner.metrics.clone();
                    let state_dir = config.state_dir.clone();
                    let pool = off_runtime(move || {
                        let pool = Pool::new(&cfg, metrics);
                        crate::discovery::restore(&pool, &state_dir);
                        pool
                    })
                    .await;
                    let checks = Checks::start(&pool, &inner.background, &inner.bg_tracker);
                    let discovery = Discovery::start(
                        &pool,
                        config.state_dir.clone(),
                        &inner.metrics,
                        &inner.background,
                        &inner.bg_tracker,
                    );
                    st.pools.insert(
                        name.clone(),
                        PoolEntry {
                            pool,
                            _checks: checks,
                            discovery,
                        },
                    );
                }
            }
        }
    }

    /// The admin endpoint kept, stopped or replaced; listeners kept
    /// (re-pointed), launched on their prepared sockets, or retired; then
    /// the pools no one uses are dropped.
    fn commit_listeners(&self, st: &mut State, plan: &Plan, config: &Config, prepared: Prepared) {
        let inner = &self.inner;
        let Prepared {
            mut fresh,
            token,
            admin: new_admin,
        } = prepared;
        match (plan.admin, &config.admin, &st.admin) {
            (AdminStep::Keep, Some(a), Some(running)) => running
                .settings
                .store(Arc::new(admin::Settings::new(a, token))),
            (AdminStep::Stop, ..) => st.admin = None,
            _ => {}
        }
        if let Some(next) = new_admin {
            let daemon: admin::Daemon = Arc::new(self.clone());
            next.spawn(daemon, &inner.background, &inner.bg_tracker);
            st.admin = Some(next);
        }

        let grace = config.shutdown_grace;
        let tasks = self.tasks();
        for (name, step) in &plan.listeners {
            let l = listener_config(config, name);
            let pools = Pools {
                default: st.pools[&l.pool].pool.clone(),
                routes: l
                    .routes
                    .iter()
                    .map(|r| st.pools[&r.pool].pool.clone())
                    .collect(),
                mirror: l.mirror.as_ref().map(|m| st.pools[&m.pool].pool.clone()),
            };
            let old = st.listeners.remove(name);
            let running = match (step, fresh.remove(name), old) {
                (ListenerStep::Keep, _, Some(old)) => old.reroute(l, pools, &inner.metrics),
                (step, Some(bound), old) => {
                    if let Some(old) = old {
                        if *step
                            == (ListenerStep::Rebind {
                                forget_metrics: true,
                            })
                        {
                            old.forget_metrics();
                        } else {
                            old.forget_routes(l);
                        }
                        old.retire(grace, &tasks);
                    }
                    Listener::launch(l.clone(), bound, pools, &tasks)
                }
                _ => unreachable!("the plan binds every listener it does not keep"),
            };
            st.listeners.insert(name.clone(), running);
        }
        for name in &plan.retire {
            if let Some(old) = st.listeners.remove(name) {
                tracing::info!(listener = %name, "listener removed; established connections run on");
                old.forget_metrics();
                old.retire(grace, &tasks);
            }
        }
        for name in &plan.drop_pools {
            if let Some(entry) = st.pools.remove(name) {
                entry.pool.close();
            }
        }
    }

    /// Publishes what now runs: the admin side's view, the history's
    /// interval, the fleet registration, and the reload's metrics.
    fn publish(&self, st: &mut State, config: Config) {
        let inner = &self.inner;
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerView::of(l, st.listeners[&l.name].addr))
            .collect();
        let pools = st
            .pools
            .iter()
            .map(|(k, v)| (k.clone(), v.pool.clone()))
            .collect();
        let every = config
            .admin
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |a| a.history_interval);
        inner.history_every_ms.store(
            every.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        match (&config.cluster, &st.cluster) {
            (Some(c), Some(running)) if running.config == *c => {}
            (Some(c), _) => {
                st.cluster = Some(Cluster::start(
                    c,
                    self.describe(),
                    &inner.background,
                    &inner.bg_tracker,
                ))
            }
            (None, _) => st.cluster = None,
        }
        inner.view.store(Arc::new(View {
            config: Arc::new(config),
            pools,
            listeners,
            admin: st.admin.as_ref().map(|a| a.addr),
        }));
        inner.metrics.reloads_success.inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        inner.metrics.last_reload_success.set(now.as_secs_f64());
    }

    fn tasks(&self) -> Tasks<'_> {
        let inner = &self.inner;
        Tasks {
            metrics: &inner.metrics,
            accept_stop: &inner.accept_stop,
            hard_stop: &inner.hard_stop,
            tracker: &inner.tracker,
            background: &inner.background,
            bg_tracker: &inner.bg_tracker,
            handover: &inner.handover,
        }
    }
}

/// Listener `name` of `config` (the plan names only listeners it has).
fn listener_config<'c>(config: &'c Config, name: &str) -> &'c ListenerConfig {
    config
        .listeners
        .iter()
        .find(|l| l.name == name)
        .expect("the plan names only listeners of the new file")
}

/// Everything that can fail, before anything changes: sockets for every
/// listener not kept (inherited, taken over or bound anew), the admin token,
/// and a new admin endpoint's socket.
fn prepare(st: &mut State, plan: &Plan, config: &Config) -> Result<Prepared, Error> {
    let mut transparent = config
        .pools
        .iter()
        .filter(|(_, p)| p.source == Some(ConnectFrom::Client));
    if let Some((pool, _)) = transparent.next() {
        crate::net::may_connect_transparently().map_err(|error| Error::Transparent {
            pool: pool.clone(),
            error,
        })?;
    }
    let mut fresh = HashMap::new();
    for (name, step) in &plan.listeners {
        if *step == ListenerStep::Keep {
            continue;
        }
        let l = listener_config(config, name);
        let inherited = st.inherited.take_listener(l);
        let taking_over = match step {
            ListenerStep::TakeOver { from } => st.listeners.get(from),
            _ => None,
        };
        let bound = match (inherited, taking_over) {
            (Some(fds), _) => {
                tracing::info!(listener = %name, "listening on the socket the previous process handed over");
                Bound::inherit(l, fds)
            }
            (None, Some(from)) => {
                tracing::info!(listener = %name, from = %from.config.name, "taking over the sockets of a listener on the same address");
                listener::take_over(from, l)?
            }
            (None, None) => listener::bind(l)?,
        };
        fresh.insert(name.clone(), bound);
    }
    let token = match &config.admin {
        Some(a) => admin::load_token(a)?,
        None => None,
    };
    let admin = match (plan.admin, &config.admin) {
        (AdminStep::Bind, Some(a)) => Some(match st.inherited.take_admin(a.bind) {
            Some(socket) => admin::AdminEndpoint::serve_on(a, token.clone(), socket)?,
            None => admin::AdminEndpoint::bind(a, token.clone())?,
        }),
        _ => None,
    };
    if !st.inherited.is_empty() {
        tracing::info!("upgrade: sockets of listeners the new configuration lacks are closed");
    }
    st.inherited = Inherited::default();
    Ok(Prepared {
        fresh,
        token,
        admin,
    })
}

impl Server {
    /// How this instance describes itself in the fleet's registry: made
    /// fresh from what runs at each renewal.
    fn describe(&self) -> crate::cluster::Describe {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move || match weak.upgrade() {
            Some(inner) => crate::cluster::describe(&inner.view.load()),
            None => serde_json::Value::Null,
        })
    }
}
