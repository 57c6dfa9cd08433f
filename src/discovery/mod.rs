//! Discovered pools: a task per pool that follows its `[discovery]`
//! settings (started, changed or removed by reloads) and feeds what the
//! source finds through the pool's one door (`Pool::set_found`), leaving
//! the pool's settings to the file. A failed lookup, an unreachable etcd or
//! (without `allow_empty`) an empty answer keeps the last set; each change
//! of state is logged once and every answer is counted. Sets are kept under
//! `state_dir` and served at start until the source answers.

mod dns;
pub mod etcd;
mod from_etcd;
mod from_zookeeper;
mod layout;
mod state;
mod zookeeper;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DiscoveryConfig, Source};
use crate::metrics::{DiscoveryMetrics, Metrics};
use crate::pool::{Change, Found, Pool, Unshared};
use etcd::Etcd;

/// The entry of each backend of a pool in its store (its etcd key or
/// ZooKeeper node, and its value), to write a change back.
type Entries = HashMap<SocketAddr, (String, Value)>;

/// Where a pool's members are written, so a change made through one
/// instance reaches every instance.
#[derive(Default)]
enum Store {
    /// Nowhere: changes stay in this instance.
    #[default]
    Local,
    Etcd(Etcd),
    /// The ZooKeeper follower, which writes through its session.
    ZooKeeper(tokio::sync::mpsc::Sender<from_zookeeper::Write>),
    /// Another program's registry (the reason).
    NotOurs(String),
}

/// What a pool's writes need: its store and each backend's entry.
#[derive(Default)]
struct Shared {
    store: Store,
    entries: Entries,
}

/// A pool's discovery: stops with the pool.
pub(crate) struct Discovery {
    stop: CancellationToken,
    shared: Arc<Mutex<Shared>>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Where a running discovery reports.
struct Context {
    pool: Arc<Pool>,
    state_dir: PathBuf,
    metrics: DiscoveryMetrics,
    shared: Arc<Mutex<Shared>>,
    /// The last state logged (`ok`, `empty`, or the error), so each change
    /// is logged once.
    logged: Option<String>,
    /// The set last kept on disk.
    saved: Vec<Found>,
    /// Whether failing to keep it was said (once per run).
    unsaved_said: bool,
}

impl Discovery {
    /// Starts following `pool`'s discovery settings (none: it waits for a
    /// reload to give it some).
    pub fn start(
        pool: &Arc<Pool>,
        state_dir: PathBuf,
        metrics: &Arc<Metrics>,
        parent: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Discovery {
        let stop = parent.child_token();
        let shared = Arc::new(Mutex::new(Shared::default()));
        tracker.spawn(follow(
            pool.clone(),
            state_dir,
            metrics.clone(),
            shared.clone(),
            stop.clone(),
        ));
        Discovery { stop, shared }
    }

    /// What writes a change of this pool's backends back to its source.
    pub fn writer(&self) -> Writer {
        Writer(self.shared.clone())
    }
}

/// Writes changes back to a pool's source; see [`Writer::share`].
pub(crate) struct Writer(Arc<Mutex<Shared>>);

impl Writer {
    /// For a pool whose members live in etcd or in a native ZooKeeper
    /// registry: writes `change` of backend `addr` there, so every instance
    /// follows. `None` for pools whose changes stay local.
    pub async fn share(&self, addr: SocketAddr, change: Change) -> Option<Result<(), Unshared>> {
        enum To {
            Etcd(Etcd),
            Zk(tokio::sync::mpsc::Sender<from_zookeeper::Write>),
        }
        let (to, entry) = {
            let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let to = match &s.store {
                Store::Local => return None,
                Store::NotOurs(why) => return Some(Err(Unshared::NotOurs(why.clone()))),
                Store::Etcd(e) => To::Etcd(e.clone()),
                Store::ZooKeeper(z) => To::Zk(z.clone()),
            };
            (to, s.entries.get(&addr).cloned())
        };
        let Some((key, value)) = entry else {
            let store = match to {
                To::Etcd(_) => "etcd key",
                To::Zk(_) => "ZooKeeper node",
            };
            return Some(Err(Unshared::Unavailable(format!(
                "no {store} holds backend {addr}"
            ))));
        };
        let mut obj = match value {
            Value::Object(o) => o,
            _ => serde_json::Map::from_iter([("addr".to_string(), Value::from(addr.to_string()))]),
        };
        match change {
            Change::Drain(d) => obj.insert("draining".into(), Value::from(d)),
            Change::Weight(w) => obj.insert("weight".into(), Value::from(w.get())),
        };
        let text = Value::Object(obj).to_string();
        Some(match to {
            To::Etcd(etcd) => etcd.put(&key, text.as_bytes(), None).await.map_err(|e| {
                Unshared::Unavailable(format!(
                    "etcd did not take the change ({e}); nothing changed"
                ))
            }),
            To::Zk(follower) => from_zookeeper::write(&follower, key, text.into_bytes())
                .await
                .map_err(|e| {
                    Unshared::Unavailable(format!(
                        "ZooKeeper did not take the change ({e}); nothing changed"
                    ))
                }),
        })
    }
}

/// A new discovered pool starts with the set kept in `state_dir`, if any:
/// served from the first connection, until the source answers.
pub(crate) fn restore(pool: &Pool, state_dir: &std::path::Path) {
    let Some(d) = pool.snapshot().config.discovery.clone() else {
        return;
    };
    if let Some(saved) = state::load(state_dir, &pool.name, &d.source) {
        tracing::info!(pool = %pool.name, backends = saved.len(), "serving the discovered set kept in state_dir until the source answers");
        pool.set_found(&saved);
    }
}

/// Runs the pool's source while its settings stay; starts again when a
/// reload changes them.
async fn follow(
    pool: Arc<Pool>,
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
) {
    let mut changes = pool.changes();
    loop {
        let settings = pool.snapshot().config.discovery.clone();
        let Some(settings) = settings else {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = stop.cancelled() => return,
            }
            continue;
        };
        let mut cx = Context {
            pool: pool.clone(),
            state_dir: state_dir.clone(),
            metrics: metrics.discovery(&pool.name),
            shared: shared.clone(),
            logged: None,
            saved: Vec::new(),
            unsaved_said: false,
        };
        let pool2 = pool.clone();
        let changed = async {
            loop {
                if changes.changed().await.is_err() {
                    return;
                }
                if pool2.snapshot().config.discovery.as_ref() != Some(&settings) {
                    return;
                }
            }
        };
        tokio::select! {
            _ = run(&mut cx, &settings) => {}
            _ = changed => {}
            _ = stop.cancelled() => {
                cx.metrics.forget();
                return;
            }
        }
        *shared.lock().unwrap_or_else(|e| e.into_inner()) = Shared::default();
        cx.metrics.forget();
    }
}

/// Serves the saved set, then follows the source for good.
async fn run(cx: &mut Context, d: &DiscoveryConfig) {
    if cx.pool.snapshot().members.is_empty() {
        // A reload gave this pool a source: the set it kept, if any.
        restore(&cx.pool, &cx.state_dir);
    }
    match &d.source {
        Source::Dns {
            name,
            port,
            resolver,
        } => dns::follow(cx, d, *resolver, dns::Ask::Addresses(name, *port)).await,
        Source::DnsSrv { name, resolver } => {
            dns::follow(cx, d, *resolver, dns::Ask::Services(name)).await
        }
        Source::Etcd { endpoints, prefix } => {
            from_etcd::follow(cx, d, Etcd::new(endpoints.clone()), prefix).await
        }
        Source::ZooKeeper(z) => from_zookeeper::follow(cx, d, z).await,
    }
}

impl Context {
    /// Applies an answer, or keeps the last set; counts it, logs a change
    /// of state once, and keeps an applied set on disk.
    fn report(&mut self, d: &DiscoveryConfig, answer: Result<Vec<Found>, String>) {
        let m = &self.metrics;
        let name = &self.pool.name;
        let state = match &answer {
            Ok(f) if f.is_empty() && !d.allow_empty => "empty".to_string(),
            Ok(_) => "ok".to_string(),
            Err(e) => e.clone(),
        };
        let kept = self.pool.snapshot().members.len();
        if self.logged.as_ref() != Some(&state) {
            match (&answer, state.as_str()) {
                (Ok(f), "ok") => {
                    tracing::info!(pool = %name, source = d.source.kind(), backends = f.len(), "discovery answers")
                }
                (_, "empty") => {
                    tracing::warn!(pool = %name, source = d.source.kind(), kept, "discovery found no backend; the last set stays (allow_empty = false)")
                }
                _ => {
                    tracing::warn!(pool = %name, source = d.source.kind(), kept, error = %state, "discovery failed; the last set stays")
                }
            }
            self.logged = Some(state.clone());
        }
        match answer {
            Err(_) => m.error.inc(),
            Ok(_) if state == "empty" => m.empty.inc(),
            Ok(found) => {
                m.last_success.set(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0),
                );
                m.backends.set(found.len() as i64);
                if self.pool.set_found(&found) {
                    m.changed.inc();
                    tracing::info!(pool = %name, backends = found.len(), "discovered backends changed");
                } else {
                    m.unchanged.inc();
                }
                if found != self.saved {
                    match state::save(&self.state_dir, name, &d.source, &found) {
                        Ok(()) => self.saved = found,
                        Err(e) if !self.unsaved_said => {
                            tracing::warn!(pool = %name, dir = %self.state_dir.display(), error = %e, "cannot keep the discovered set in state_dir; a restart while the source is unreachable would start without it");
                            self.unsaved_said = true;
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    }
}
