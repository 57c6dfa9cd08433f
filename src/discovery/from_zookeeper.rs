//! Backends from a ZooKeeper registry: the children of `path`, each one
//! member in the pool's `format`, read with watches and read again as the
//! watches fire. A burst of changes is applied as one set. An expired
//! session is replaced and everything read again; while no server answers,
//! the last set stays.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::layout::{self, Host};
use super::zookeeper::{Error, Event, Zk, ZkSettings};
use super::{Context, Entries, Store};
use crate::config::{DiscoveryConfig, ZkFormat, ZooKeeper};
use crate::pool::Found;

/// Reconnecting: from this, doubling to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// After a watch fires, how long others may follow before the set is read
/// and applied once.
const BURST: Duration = Duration::from_millis(5);

/// How long a write through the API may wait for ZooKeeper.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A change to write to a member's node (a native registry's).
pub(crate) struct Write {
    path: String,
    data: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Writes `data` to node `path` through the pool's follower.
pub(super) async fn write(
    follower: &mpsc::Sender<Write>,
    path: String,
    data: Vec<u8>,
) -> Result<(), String> {
    let (done, answer) = oneshot::channel();
    let asked = follower.send(Write { path, data, done });
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        asked
            .await
            .map_err(|_| "its follower stopped".to_string())?;
        answer
            .await
            .map_err(|_| "its follower stopped".to_string())?
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
    }
}

/// What the registry holds, as last read.
#[derive(Default)]
struct ZkView {
    /// Each child's name and data (Dubbo's providers: no data).
    nodes: BTreeMap<String, Vec<u8>>,
    /// Children whose data was refused, and why, so each is logged once.
    refused: HashMap<String, String>,
    /// Host names looked up in this session.
    hosts: HashMap<(String, u16), Option<SocketAddr>>,
    /// Whether a session was ever made (a new one replaces an expired one).
    had_session: bool,
}

pub(super) async fn follow(cx: &mut Context, d: &DiscoveryConfig, z: &ZooKeeper) {
    let (tx, mut writes) = mpsc::channel(16);
    cx.shared.lock().unwrap_or_else(|e| e.into_inner()).store = match z.format {
        ZkFormat::Native => Store::ZooKeeper(tx),
        other => Store::NotOurs(format!(
            "pool `{}` follows a {} registry in ZooKeeper ({}), whose members their own services write; drain or weigh them there",
            cx.pool.name,
            other.as_str(),
            z.path
        )),
    };
    let mut zk = Zk::new(ZkSettings {
        servers: z.servers.clone(),
        chroot: z.chroot.clone(),
        timeout: z.session_timeout,
        digest: z.digest.as_ref().map(|s| s.0.clone()),
    });
    let mut view = ZkView::default();
    let mut retry = RETRY_MIN;
    loop {
        let e = session(cx, d, z, &mut zk, &mut view, &mut writes, &mut retry).await;
        cx.report(d, Err(e.to_string()));
        if matches!(e, Error::Expired) {
            // A new session at once: the set may have changed meanwhile.
            continue;
        }
        let pause = tokio::time::sleep(retry);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                Some(w) = writes.recv() => {
                    let _ = w.done.send(Err(e.to_string()));
                }
            }
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// One session: connect, read everything with watches, then follow the
/// watches and write what the API asks, until something fails.
async fn session(
    cx: &mut Context,
    d: &DiscoveryConfig,
    z: &ZooKeeper,
    zk: &mut Zk,
    view: &mut ZkView,
    writes: &mut mpsc::Receiver<Write>,
    retry: &mut Duration,
) -> Error {
    let r: Result<std::convert::Infallible, Error> = async {
        if zk.connect().await? && view.had_session {
            tracing::warn!(pool = %cx.pool.name, "the ZooKeeper session expired; a new one reads every member again");
        }
        view.had_session = true;
        *retry = RETRY_MIN;
        view.hosts.clear();
        read_children(zk, z, view, None).await?;
        publish(cx, d, z, view).await;
        loop {
            let first = tokio::select! {
                e = zk.event() => e?,
                // Quiet, with the session's pings answered: heard from.
                _ = tokio::time::sleep(d.refresh) => {
                    cx.contact();
                    continue;
                }
                Some(w) = writes.recv() => {
                    let r = zk.set_data(&w.path, &w.data, -1).await;
                    let _ = w.done.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    match r {
                        Err(e @ (Error::Unreachable(_) | Error::Expired)) => return Err(e),
                        _ => continue,
                    }
                }
            };
            let mut children = false;
            let mut changed = BTreeSet::new();
            let mut take = |e: Event| {
                let member = |p: &str| {
                    p.strip_prefix(z.path.as_str())
                        .and_then(|r| r.strip_prefix('/'))
                        .map(str::to_string)
                };
                match e {
                    Event::Children(_) | Event::Created(_) => children = true,
                    Event::Deleted(p) | Event::Data(p) => match member(&p) {
                        Some(name) => {
                            changed.insert(name);
                        }
                        None => children = true,
                    },
                }
            };
            take(first);
            while let Ok(e) = tokio::time::timeout(BURST, zk.event()).await {
                take(e?);
            }
            if children {
                read_children(zk, z, view, Some(changed)).await?;
            } else {
                read_data(zk, z, view, changed.into_iter().collect()).await?;
            }
            publish(cx, d, z, view).await;
        }
    }
    .await;
    match r {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

fn node(z: &ZooKeeper, name: &str) -> String {
    format!("{}/{name}", z.path)
}

/// Reads the children of `path` with a watch (or, while it does not exist,
/// watches for it), then the data of the new ones and of `changed`.
async fn read_children(
    zk: &mut Zk,
    z: &ZooKeeper,
    view: &mut ZkView,
    changed: Option<BTreeSet<String>>,
) -> Result<(), Error> {
    let names = loop {
        match zk.children(&z.path, true).await? {
            Some(names) => break names,
            // Not there yet: watched for, and empty until it is.
            None if !zk.exists(&z.path, true).await? => {
                view.nodes.clear();
                return Ok(());
            }
            None => continue,
        }
    };
    let now: BTreeSet<String> = names.into_iter().collect();
    view.nodes.retain(|n, _| now.contains(n));
    if z.format == ZkFormat::Dubbo {
        // A provider is its node's name; its data says nothing more.
        for n in now {
            view.nodes.entry(n).or_default();
        }
        return Ok(());
    }
    let mut read: Vec<String> = match changed {
        // Everything, so every member has its watch (a new session or
        // connection has none).
        None => now.into_iter().collect(),
        Some(changed) => now
            .into_iter()
            .filter(|n| !view.nodes.contains_key(n) || changed.contains(n))
            .collect(),
    };
    read.sort();
    read_data(zk, z, view, read).await
}

/// Reads (and watches) the data of `names`.
async fn read_data(
    zk: &mut Zk,
    z: &ZooKeeper,
    view: &mut ZkView,
    names: Vec<String>,
) -> Result<(), Error> {
    if z.format == ZkFormat::Dubbo || names.is_empty() {
        for n in &names {
            view.nodes.remove(n);
        }
        return Ok(());
    }
    let paths: Vec<String> = names.iter().map(|n| node(z, n)).collect();
    for (name, data) in names.into_iter().zip(zk.data(&paths, true).await?) {
        match data {
            Some((bytes, _version)) => view.nodes.insert(name, bytes),
            None => view.nodes.remove(&name),
        };
    }
    Ok(())
}

/// Turns the view into backends and reports them.
async fn publish(cx: &mut Context, d: &DiscoveryConfig, z: &ZooKeeper, view: &mut ZkView) {
    let mut found = Vec::new();
    let mut entries = Entries::new();
    let ZkView {
        nodes,
        refused,
        hosts,
        ..
    } = view;
    refused.retain(|n, _| nodes.contains_key(n));
    let pool = cx.pool.name.clone();
    // Each node refused is logged once for each reason.
    let refuse = |refused: &mut HashMap<String, String>, name: &str, why: String| {
        if refused.get(name) != Some(&why) {
            tracing::warn!(pool = %pool, node = %node(z, name), error = %why, "a ZooKeeper node names no backend; it is left out");
            refused.insert(name.to_string(), why);
        }
    };
    for (name, data) in nodes.iter() {
        let m = match layout::member(z.format, z.endpoint.as_deref(), name, data) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(why) => {
                refuse(refused, name, why);
                continue;
            }
        };
        let addr = match &m.host {
            Host::Addr(a) => *a,
            Host::Name(h, p) => {
                let key = (h.clone(), *p);
                if !hosts.contains_key(&key) {
                    let a = tokio::net::lookup_host((h.as_str(), *p))
                        .await
                        .ok()
                        .and_then(|mut it| it.next());
                    hosts.insert(key.clone(), a);
                }
                match hosts[&key] {
                    Some(a) => a,
                    None => {
                        refuse(refused, name, format!("its host {h} does not resolve"));
                        continue;
                    }
                }
            }
        };
        refused.remove(name);
        if let Some(v) = m.entry {
            entries.insert(addr, (node(z, name), v));
        }
        found.push(Found {
            addr,
            name: m.name,
            weight: m.weight,
            draining: m.draining,
        });
    }
    cx.shared.lock().unwrap_or_else(|e| e.into_inner()).entries = entries;
    cx.report(d, Ok(found));
}
