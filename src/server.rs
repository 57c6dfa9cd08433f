//! The running daemon: binds listeners, owns pools and their health checks,
//! applies a new configuration as one difference (reload), and drains on
//! shutdown. Everything the admin side reads comes from an immutable [`View`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::{Config, ConfigError};
use crate::health::Checks;
use crate::listener::{self, Bound, Listener, Tasks};
use crate::metrics::Metrics;
use crate::notify;
use crate::pool::Pool;

/// Why the daemon could not start or a reload could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error("admin: cannot bind {addr}: {cause}")]
    AdminBind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("admin: cannot read token_file {path}: {cause}")]
    Token {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
}

/// A listener as the admin side sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerView {
    pub name: String,
    pub protocol: &'static str,
    pub addr: SocketAddr,
    pub pool: String,
}

/// What is running now; replaced whole after every start and reload.
pub struct View {
    pub config: Arc<Config>,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub listeners: Vec<ListenerView>,
}

struct PoolEntry {
    pool: Arc<Pool>,
    _checks: Checks,
}

struct State {
    listeners: HashMap<String, Listener>,
    pools: HashMap<String, PoolEntry>,
    admin: Option<admin::Running>,
}

struct Inner {
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    view: ArcSwap<View>,
    /// Parent of every listener's `stop`.
    accept_stop: CancellationToken,
    /// Parent of every listener's `hard_stop`.
    hard_stop: CancellationToken,
    /// Health checks and the admin server.
    background: CancellationToken,
    /// Accept loops and connections.
    tracker: TaskTracker,
    bg_tracker: TaskTracker,
}

/// A handle to the running daemon; clones share it.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// Binds everything in `config` and starts serving. Fails, with nothing
    /// left running, if any listener or the admin endpoint cannot bind.
    pub async fn start(config: Config) -> Result<Server, Error> {
        let metrics = Arc::new(Metrics::new());
        let inner = Arc::new(Inner {
            metrics,
            state: Mutex::new(State {
                listeners: HashMap::new(),
                pools: HashMap::new(),
                admin: None,
            }),
            view: ArcSwap::from_pointee(View {
                config: Arc::new(config.clone()),
                pools: BTreeMap::new(),
                listeners: Vec::new(),
            }),
            accept_stop: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            background: CancellationToken::new(),
            tracker: TaskTracker::new(),
            bg_tracker: TaskTracker::new(),
        });
        let server = Server { inner };
        server.apply(config).await?;
        Ok(server)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// What is running now.
    pub fn view(&self) -> Arc<View> {
        self.inner.view.load_full()
    }

    /// The bound address of listener `name` (useful after binding port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.view()
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.addr)
    }

    /// The bound admin address, if `[admin]` is configured.
    pub async fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.state.lock().await.admin.as_ref().map(|a| a.addr)
    }

    /// Whether every listener is bound and every pool has a healthy backend.
    pub fn ready(&self) -> bool {
        let view = self.view();
        !self.inner.accept_stop.is_cancelled() && view.pools.values().all(|p| p.snapshot().any_up())
    }

    /// Re-reads the configuration file and applies it, as SIGHUP does.
    /// Invalid files change nothing; either way the result is counted.
    pub async fn reload_file(&self) -> Result<(), Error> {
        notify::reloading();
        let path = self.view().config.source.clone();
        let result = match Config::load(&path) {
            Ok(config) => self.reload(config).await,
            Err(e) => {
                self.inner.metrics.reloads_failure.inc();
                for line in e.to_string().lines() {
                    tracing::error!("{line}");
                }
                tracing::error!(
                    problems = e.problems.len(),
                    "reload refused: invalid configuration; the previous configuration stays in force"
                );
                Err(e.into())
            }
        };
        notify::notify("READY=1");
        result
    }

    /// Applies `config` as one difference from what runs now.
    pub async fn reload(&self, config: Config) -> Result<(), Error> {
        let result = self.apply(config).await;
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => {
                self.inner.metrics.reloads_failure.inc();
                tracing::error!(error = %e, "reload failed; the previous configuration stays in force");
            }
        }
        result
    }

    async fn apply(&self, config: Config) -> Result<(), Error> {
        let inner = &self.inner;
        let mut st = inner.state.lock().await;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }

        // Everything that can fail happens before anything changes.
        let mut fresh: HashMap<String, Bound> = HashMap::new();
        for l in &config.listeners {
            let same = st
                .listeners
                .get(&l.name)
                .is_some_and(|r| r.config.socket_key() == l.socket_key());
            if !same {
                fresh.insert(l.name.clone(), listener::bind(l)?);
            }
        }
        let admin_next = match &config.admin {
            Some(a) => {
                let token = admin::load_token(a)?;
                match &st.admin {
                    Some(running) if running.bind == a.bind => {
                        running
                            .settings
                            .store(Arc::new(admin::Settings::new(a, token)));
                        None
                    }
                    _ => Some(admin::Running::bind(a, token)?),
                }
            }
            None => None,
        };
        if config.admin.is_none() {
            st.admin = None;
        }
        if let Some(next) = admin_next {
            next.spawn(self.clone(), &inner.background, &inner.bg_tracker);
            st.admin = Some(next);
        }

        for (name, cfg) in &config.pools {
            match st.pools.get_mut(name) {
                Some(entry) => {
                    if entry.pool.apply(cfg) {
                        entry._checks =
                            Checks::start(&entry.pool, &inner.background, &inner.bg_tracker);
                    }
                }
                None => {
                    let pool = Pool::new(cfg, inner.metrics.clone());
                    let checks = Checks::start(&pool, &inner.background, &inner.bg_tracker);
                    st.pools.insert(
                        name.clone(),
                        PoolEntry {
                            pool,
                            _checks: checks,
                        },
                    );
                }
            }
        }

        let grace = config.shutdown_grace;
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let pool = st.pools[&l.pool].pool.clone();
            let old = st.listeners.remove(&l.name);
            let running = match fresh.remove(&l.name) {
                Some(bound) => {
                    if let Some(old) = old {
                        if old.config.protocol != l.protocol {
                            inner.metrics.forget_listener(&l.name);
                        }
                        old.retire(grace);
                    }
                    Listener::launch(l.clone(), bound, pool, &self.tasks())
                }
                None => {
                    let old = old.expect("kept listeners are running");
                    old.reroute(l, pool)
                }
            };
            listeners.insert(l.name.clone(), running);
        }
        for (_, old) in st.listeners.drain() {
            tracing::info!(listener = %old.config.name, "listener removed; established connections run on");
            inner.metrics.forget_listener(&old.config.name);
            old.retire(grace);
        }
        st.listeners = listeners;
        st.pools.retain(|name, entry| {
            let keep = config.pools.contains_key(name);
            if !keep {
                entry.pool.forget_metrics();
            }
            keep
        });

        let mut views: Vec<ListenerView> = st
            .listeners
            .values()
            .map(|r| ListenerView {
                name: r.config.name.clone(),
                protocol: r.config.protocol.as_str(),
                addr: r.addr,
                pool: r.config.pool.clone(),
            })
            .collect();
        let order: HashMap<&str, usize> = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), i))
            .collect();
        views.sort_by_key(|v| order[v.name.as_str()]);
        let pools = st
            .pools
            .iter()
            .map(|(k, v)| (k.clone(), v.pool.clone()))
            .collect();
        inner.view.store(Arc::new(View {
            config: Arc::new(config),
            pools,
            listeners: views,
        }));
        inner.metrics.reloads_success.inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        inner.metrics.last_reload_success.set(now.as_secs_f64());
        Ok(())
    }

    fn tasks(&self) -> Tasks<'_> {
        let inner = &self.inner;
        Tasks {
            metrics: &inner.metrics,
            accept_stop: &inner.accept_stop,
            hard_stop: &inner.hard_stop,
            tracker: &inner.tracker,
        }
    }

    /// Stops accepting everywhere, lets connections finish for up to the
    /// configured `shutdown_grace`, then closes the rest.
    pub async fn shutdown(&self) {
        let grace = self.view().config.shutdown_grace;
        self.shutdown_within(grace).await;
    }

    /// [`Server::shutdown`] with an explicit grace period.
    pub async fn shutdown_within(&self, grace: Duration) {
        let inner = &self.inner;
        inner.accept_stop.cancel();
        inner.tracker.close();
        let open = inner.view.load().listeners.len();
        tracing::info!(listeners = open, grace = %humantime::format_duration(grace), "shutting down; draining connections");
        if tokio::time::timeout(grace, inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace over; closing the remaining connections");
            inner.hard_stop.cancel();
            inner.tracker.wait().await;
        }
        inner.background.cancel();
        inner.bg_tracker.close();
        inner.bg_tracker.wait().await;
        let mut st = inner.state.lock().await;
        st.admin = None;
        st.pools.clear();
    }

    /// Ends every connection now (a second signal during shutdown).
    pub fn abort(&self) {
        self.inner.accept_stop.cancel();
        self.inner.hard_stop.cancel();
        self.inner.background.cancel();
    }
}
