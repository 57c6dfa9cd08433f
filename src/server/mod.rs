//! The running daemon: binds listeners, owns pools and their health checks,
//! applies a new configuration as one difference (reload: `plan` decides,
//! `Server::apply` carries it out), and drains on shutdown. Everything the
//! admin side reads comes from an immutable `View`.
//!
//! It runs past 400 lines: it is the server's whole public surface (start,
//! reload, upgrade, shutdown, and the control the admin side drives);
//! applying a configuration is in `apply.rs`, planning it in `plan.rs`.

mod apply;
mod plan;
mod sampler;
pub mod upgrade;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Control, ControlFuture, View};
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError};
use crate::discovery::Discovery;
use crate::health::Checks;
use crate::history::{History, Query};
use crate::listener::{self, Listener};
use crate::metrics::Metrics;
use crate::notify;
use crate::pool::{Change, Pool};
use upgrade::{Handed, Inherited, UpgradeError};

/// Why the daemon could not start or a reload could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    /// The admin endpoint could not be set up.
    #[error(transparent)]
    Admin(#[from] admin::Error),
    /// A pool connects from its clients' addresses, which this process
    /// may not.
    #[error("pools.{pool}.source = \"client\" needs CAP_NET_ADMIN (or CAP_NET_RAW) to connect from addresses not this host's (IP_TRANSPARENT): {error}; see the README's \"The client's own address to the backend\"")]
    Transparent {
        /// The first pool that asks for it.
        pool: String,
        /// What the kernel answered.
        error: std::io::Error,
    },
    /// `engine = "io_uring"` where io_uring cannot be used.
    #[error("{0}")]
    Engine(String),
    /// The data plane's worker threads could not be started.
    #[error("cannot start the worker threads")]
    Workers(#[source] std::io::Error),
}

struct PoolEntry {
    pool: Arc<Pool>,
    _checks: Checks,
    discovery: Discovery,
}

struct State {
    listeners: HashMap<String, Listener>,
    pools: HashMap<String, PoolEntry>,
    admin: Option<admin::AdminEndpoint>,
    /// This instance's registration in the fleet (`[cluster]`).
    cluster: Option<Cluster>,
    /// Sockets handed over by the process this one replaced, taken by the
    /// first configuration applied.
    inherited: Inherited,
}

struct Inner {
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    view: ArcSwap<View>,
    /// Parent of every listener's `stop`.
    accept_stop: CancellationToken,
    /// Parent of every listener's `hard_stop`.
    hard_stop: CancellationToken,
    /// Health checks, retire timers and the admin server.
    background: CancellationToken,
    /// Accept loops and connections.
    tracker: TaskTracker,
    /// Everything under `background`.
    bg_tracker: TaskTracker,
    /// An upgrade is under way.
    upgrading: std::sync::atomic::AtomicBool,
    /// Hands established connections to the new process of an upgrade.
    handover: Arc<listener::handover::Handover>,
    /// The last hour, sampled every `history_every_ms`.
    history: std::sync::Mutex<History>,
    history_every_ms: std::sync::atomic::AtomicU64,
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
        // The data plane runs on its workers however the library is started
        // (the binary starts them first; an embedding program or a test
        // gets the same threads here).
        let workers = config.workers.unwrap_or_else(crate::workers::default_count);
        crate::workers::start(workers, config.cpu_affinity).map_err(Error::Workers)?;
        let engine = crate::engine::choose(config.engine).map_err(Error::Engine)?;
        tracing::info!(engine = engine.name, why = %engine.why, "data-plane engine");
        let inner = Arc::new(Inner {
            metrics: Arc::new(Metrics::new()),
            state: Mutex::new(State {
                listeners: HashMap::new(),
                pools: HashMap::new(),
                admin: None,
                cluster: None,
                inherited: Inherited::from_env(),
            }),
            view: ArcSwap::from_pointee(View {
                config: Arc::new(config.clone()),
                pools: BTreeMap::new(),
                listeners: Vec::new(),
                admin: None,
            }),
            accept_stop: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            background: CancellationToken::new(),
            tracker: TaskTracker::new(),
            bg_tracker: TaskTracker::new(),
            upgrading: Default::default(),
            handover: Default::default(),
            history: Default::default(),
            history_every_ms: Default::default(),
        });
        let server = Server { inner };
        server.apply(config).await?;
        crate::fds::settle();
        server.inner.bg_tracker.spawn(server.clone().sample());
        Ok(server)
    }

    /// Every metric the daemon exports.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// What is running now.
    pub fn view(&self) -> Arc<View> {
        self.inner.view.load_full()
    }

    /// The bound address of listener `name` (useful after binding port 0);
    /// none for a Unix listener.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.local_endpoint(name).and_then(|e| e.inet())
    }

    /// Where listener `name` listens: its IP address and port, or its Unix
    /// socket.
    pub fn local_endpoint(&self, name: &str) -> Option<crate::endpoint::Endpoint> {
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
        // Reading the file may block (a slow disk, a FIFO) and host names
        // resolve with the system's blocking resolver: off the runtime.
        let result = match off_runtime(move || Config::load(&path)).await {
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
        let view = self.view();
        let threads = |c: &Config| (c.workers, c.cpu_affinity, c.engine);
        if threads(&view.config) != threads(&config) {
            tracing::warn!(
                workers = ?config.workers,
                cpu_affinity = config.cpu_affinity,
                engine = config.engine.as_str(),
                "workers, cpu_affinity and engine take effect at the next start or binary upgrade; the running workers stay as they are"
            );
        }
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

    /// Starts the binary anew from the same path and arguments, hands it
    /// every listening socket, and waits until it serves. On success this
    /// process should stop accepting and drain ([`Server::shutdown`]); on
    /// failure it serves on, untouched. Returns the new process's id.
    pub async fn upgrade(&self) -> Result<u32, UpgradeError> {
        use std::sync::atomic::Ordering;
        if self.inner.upgrading.swap(true, Ordering::SeqCst) {
            return Err(UpgradeError::Busy);
        }
        // The state stays locked until the new process has started, so no
        // reload changes the set of sockets in between; each handed socket
        // is a copy of our own, open until the new process has inherited it.
        let st = self.inner.state.lock().await;
        let result = async {
            let mut handed = Handed::default();
            for l in st.listeners.values() {
                let c = &l.config;
                let fds = l.listening_fds().map_err(UpgradeError::Sockets)?;
                handed.add_listener(&c.name, c.protocol.as_str(), c.bind, c.reuse_port, fds);
            }
            if let Some(a) = &st.admin {
                handed.add_admin(a.bind, a.socket_copy().map_err(UpgradeError::Sockets)?);
            }
            upgrade::start_successor(&handed).await
        }
        .await;
        if result.is_ok() {
            // The successor serves on the Unix listeners' files now.
            for l in st.listeners.values() {
                l.hand_on();
            }
        }
        drop(st);
        match result {
            Ok((pid, channel)) => {
                // Connections stop at a safe point and move to it.
                if let Err(e) = self.inner.handover.begin(channel) {
                    tracing::warn!(error = %e, "upgrade: cannot hand connections over; they drain here");
                }
                Ok(pid)
            }
            Err(e) => {
                self.inner.upgrading.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Takes over a connection the process this one replaced handed over.
    pub(crate) async fn adopt(
        &self,
        moved: listener::handover::Moved,
        client: std::net::TcpStream,
        backend: std::net::TcpStream,
    ) {
        let st = self.inner.state.lock().await;
        match st.listeners.get(&moved.listener) {
            Some(l) => l.adopt(moved, client, backend),
            None => {
                tracing::warn!(listener = %moved.listener, client = %moved.client, "a connection handed over through a listener this configuration lacks is closed")
            }
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
        st.cluster = None;
        // Unix listeners' files go with them (unless a successor took them).
        st.listeners.clear();
        st.pools.clear();
    }

    /// Ends every connection now (a second signal during shutdown).
    pub fn abort(&self) {
        self.inner.accept_stop.cancel();
        self.inner.hard_stop.cancel();
        self.inner.background.cancel();
    }
}

/// Runs `f` on the blocking pool: building a pool's strategy can take tens of
/// milliseconds for thousands of backends, too long for a runtime worker
/// that also carries connections.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl Control for Server {
    fn view(&self) -> Arc<View> {
        Server::view(self)
    }

    fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }

    fn ready(&self) -> bool {
        Server::ready(self)
    }

    fn reload(&self) -> ControlFuture<'_, Result<(), String>> {
        let server = self.clone();
        Box::pin(async move {
            // On a task of its own: a client that goes away mid-reload must
            // not cut it short (systemd would be left at RELOADING=1).
            let done = self
                .inner
                .bg_tracker
                .spawn(async move { server.reload_file().await.map_err(|e| e.to_string()) });
            done.await
                .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")))
        })
    }

    fn share(
        &self,
        pool: &str,
        addr: SocketAddr,
        change: Change,
    ) -> ControlFuture<'_, Option<Result<(), crate::pool::Unshared>>> {
        let pool = pool.to_string();
        Box::pin(async move {
            let writer = self
                .inner
                .state
                .lock()
                .await
                .pools
                .get(&pool)?
                .discovery
                .writer();
            writer.share(addr, change).await
        })
    }

    fn history(&self, q: &Query) -> serde_json::Value {
        self.inner
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .json(q)
    }

    fn cluster(&self) -> ControlFuture<'_, Option<Result<crate::admin::Fleet, String>>> {
        Box::pin(async move {
            let st = self.inner.state.lock().await;
            let cluster = st.cluster.as_ref()?;
            // Asked without holding the state: etcd may be slow.
            let listing = cluster.lister();
            drop(st);
            Some(listing.list().await)
        })
    }
}
