//! Discovered pools: a task per pool that follows its `[discovery]`
//! settings (started, changed or removed by reloads) and feeds what the
//! source finds through the pool's one door (`Pool::set_found`), leaving
//! the pool's settings to the file. A failed lookup, an unreachable etcd or
//! (without `allow_empty`) an empty answer keeps the last set; each change
//! of state is logged once and every answer is counted. Sets are kept under
//! `state_dir` and served at start until the source answers.
//!
//! It runs past 400 lines: it is the one door every source's answer passes
//! (its names checked, sorted, kept, written back), with each source in a
//! file of its own.

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
#[derive(Default, Clone)]
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
    metrics: DiscoveryMetrics,
    shared: Arc<Mutex<Shared>>,
    /// The last state logged (`ok`, `empty`, or the error), so each change
    /// is logged once.
    logged: Option<String>,
    /// The set last handed to the keeper.
    saved: Vec<Found>,
    keeper: Keeper,
    /// Entries left out for their name, as `addr name`, so each is logged
    /// once.
    misnamed: std::collections::HashSet<String>,
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
        let (store, entry) = {
            let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            (s.store.clone(), s.entries.get(&addr).cloned())
        };
        let what = match &store {
            Store::Local => return None,
            Store::NotOurs(why) => return Some(Err(Unshared::NotOurs(why.clone()))),
            Store::Etcd(_) => "etcd key",
            Store::ZooKeeper(_) => "ZooKeeper node",
        };
        let Some((key, value)) = entry else {
            return Some(Err(Unshared::Unavailable(format!(
                "no {what} holds backend {addr}"
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
        Some(match store {
            Store::Etcd(etcd) => etcd.put(&key, text.as_bytes(), None).await.map_err(|e| {
                Unshared::Unavailable(format!(
                    "etcd did not take the change ({e}); nothing changed"
                ))
            }),
            Store::ZooKeeper(follower) => from_zookeeper::write(&follower, key, text.into_bytes())
                .await
                .map_err(|e| {
                    Unshared::Unavailable(format!(
                        "ZooKeeper did not take the change ({e}); nothing changed"
                    ))
                }),
            // Answered above.
            Store::Local | Store::NotOurs(_) => return None,
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
    // The source followed last: a reload that changes it serves the new
    // source's set (kept in state_dir), or nothing until it answers, as a
    // restart would; never the old source's backends under the new name.
    let mut followed: Option<Source> = None;
    loop {
        let settings = pool.snapshot().config.discovery.clone();
        let Some(settings) = settings else {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = stop.cancelled() => return,
            }
            continue;
        };
        if followed.as_ref() != Some(&settings.source) {
            let kept = state::load(&state_dir, &pool.name, &settings.source).unwrap_or_default();
            if followed.is_some() || pool.snapshot().members.len() != kept.len() {
                tracing::info!(pool = %pool.name, source = settings.source.kind(), backends = kept.len(), "a new discovery source: serving its kept set until it answers");
            }
            pool.set_found(&kept);
            followed = Some(settings.source.clone());
        }
        let mut cx = Context {
            pool: pool.clone(),
            metrics: metrics.discovery(&pool.name),
            shared: shared.clone(),
            logged: None,
            saved: Vec::new(),
            keeper: Keeper::start(
                state_dir.clone(),
                pool.name.clone(),
                settings.source.clone(),
            ),
            misnamed: Default::default(),
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

/// Keeps a pool's latest set in `state_dir` off the follower's path: each
/// new set is handed over, and a task writes the latest (sets that arrive
/// while one is written are passed over), so a slow or stuck disk never
/// delays a change.
struct Keeper {
    latest: tokio::sync::watch::Sender<Option<Vec<Found>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    fn start(dir: PathBuf, pool: String, source: Source) -> Keeper {
        let (latest, mut rx) = tokio::sync::watch::channel(None::<Vec<Found>>);
        let task = tokio::spawn(async move {
            // Failing to keep it is said once.
            let mut said = false;
            while rx.changed().await.is_ok() {
                let Some(found) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let (d, p, s) = (dir.clone(), pool.clone(), source.clone());
                let saved = tokio::task::spawn_blocking(move || state::save(&d, &p, &s, &found))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                if let Err(e) = saved {
                    if !said {
                        tracing::warn!(pool = %pool, dir = %dir.display(), error = %e, "cannot keep the discovered set in state_dir; a restart while the source is unreachable would start without it");
                        said = true;
                    }
                }
            }
        });
        Keeper { latest, task }
    }

    fn keep(&self, found: &[Found]) {
        self.latest.send_replace(Some(found.to_vec()));
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the saved set, then follows the source for good.
async fn run(cx: &mut Context, d: &DiscoveryConfig) {
    // What is served until the source answers.
    cx.metrics
        .backends
        .set(cx.pool.snapshot().members.len() as i64);
    match &d.source {
        Source::Dns {
            name,
            port,
            resolver,
        } => dns::follow(cx, d, *resolver, dns::Ask::Addresses(name, *port)).await,
        Source::DnsSrv { name, resolver } => {
            dns::follow(cx, d, *resolver, dns::Ask::Services(name)).await
        }
        Source::Etcd {
            endpoints,
            prefix,
            tls,
        } => from_etcd::follow(cx, d, Etcd::new(endpoints.clone(), tls.clone()), prefix).await,
        Source::ZooKeeper(z) => from_zookeeper::follow(cx, d, z).await,
    }
}

/// Now, in Unix seconds.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Context {
    /// The source was heard from.
    fn contact(&self) {
        self.metrics.last_contact.set(unix_now());
    }

    /// Every source's answer in one form: in address order, one entry per
    /// address (the first), and without the entries whose name another
    /// entry already has (the first by address keeps it, the same on every
    /// instance) or that is another backend's address, so a name always
    /// means one backend and never stands for another; each is logged once.
    fn named(&mut self, mut found: Vec<Found>) -> Vec<Found> {
        found.sort_by_key(|f| f.addr);
        found.dedup_by_key(|f| f.addr);
        let addrs: std::collections::HashSet<SocketAddr> = found.iter().map(|f| f.addr).collect();
        let mut names = std::collections::HashSet::new();
        let mut kept = Vec::with_capacity(found.len());
        let mut now = std::collections::HashSet::new();
        for f in found {
            let why = match &f.name {
                Some(n)
                    if n.parse::<SocketAddr>()
                        .is_ok_and(|a| a != f.addr && addrs.contains(&a)) =>
                {
                    Some("is another backend's address")
                }
                Some(n) if !names.insert(n.clone()) => Some("is another backend's name"),
                _ => None,
            };
            match why {
                None => kept.push(f),
                Some(why) => {
                    let key = format!("{} {}", f.addr, f.name.as_deref().unwrap_or_default());
                    if !self.misnamed.contains(&key) {
                        tracing::warn!(pool = %self.pool.name, backend = %f.addr, name = ?f.name, "a discovered backend's name {why}; it is left out");
                    }
                    now.insert(key);
                }
            }
        }
        self.misnamed = now;
        kept
    }

    /// Applies an answer, or keeps the last set; counts it, logs a change
    /// of state once, and keeps an applied set on disk.
    fn report(&mut self, d: &DiscoveryConfig, answer: Result<Vec<Found>, String>) {
        let answer = answer.map(|found| self.named(found));
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
                m.last_success.set(unix_now());
                m.last_contact.set(unix_now());
                m.backends.set(found.len() as i64);
                if self.pool.set_found(&found) {
                    m.changed.inc();
                    tracing::info!(pool = %name, backends = found.len(), "discovered backends changed");
                } else {
                    m.unchanged.inc();
                }
                if found != self.saved {
                    self.keeper.keep(&found);
                    self.saved = found;
                }
            }
        }
    }
}
