//! This instance in the fleet's registry (`[cluster]`): a key under the
//! cluster prefix in etcd, bound to a lease this instance keeps alive, whose
//! value says where its admin endpoint is, its version, listeners and the
//! health of its pools. An instance that dies leaves the list when its
//! lease runs out; one that stops deletes its key at once.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::discovery::etcd::Etcd;

/// What this instance says of itself, made fresh for each renewal.
pub(crate) type Describe = Arc<dyn Fn() -> Value + Send + Sync>;

/// A registration that runs until dropped.
pub(crate) struct Cluster {
    pub config: ClusterConfig,
    etcd: Etcd,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Cluster {
    /// Registers this instance and keeps it registered.
    pub fn start(
        config: &ClusterConfig,
        describe: Describe,
        parent: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Cluster {
        let etcd = Etcd::new(config.endpoints.clone(), config.tls.clone());
        let stop = parent.child_token();
        tracker.spawn(register(
            etcd.clone(),
            config.clone(),
            describe,
            stop.clone(),
        ));
        Cluster {
            config: config.clone(),
            etcd,
            stop,
        }
    }

    /// What lists the fleet, apart from this registration.
    pub fn lister(&self) -> Lister {
        Lister {
            etcd: self.etcd.clone(),
            prefix: self.config.prefix.clone(),
        }
    }
}

/// Lists the fleet's instances.
pub(crate) struct Lister {
    etcd: Etcd,
    prefix: String,
}

impl Lister {
    /// The instances registered now, each as it describes itself. An entry
    /// that is not a description (not JSON, `null`, or an object without a
    /// version and pools) is left out and counted, so one stray key cannot
    /// hide the fleet.
    pub async fn list(&self) -> Result<crate::admin::Fleet, String> {
        let (_, kvs) = self
            .etcd
            .range(&self.prefix)
            .await
            .map_err(|e| e.to_string())?;
        let mut fleet = crate::admin::Fleet::default();
        for kv in kvs {
            let v: Option<Value> = kv.value.and_then(|v| serde_json::from_slice(&v).ok());
            match v {
                Some(v) if v["version"].is_string() && v["pools"].is_object() => {
                    fleet.instances.push(v)
                }
                _ => fleet.skipped += 1,
            }
        }
        Ok(fleet)
    }
}

/// Keeps this instance's key alive: a lease of `ttl`, renewed every third
/// of it, the description written again each time; on trouble, a new lease.
async fn register(etcd: Etcd, config: ClusterConfig, describe: Describe, stop: CancellationToken) {
    let key = format!("{}{}", config.prefix, config.name);
    let every = config.ttl / 3;
    let mut said: Option<String> = None;
    let mut say = |state: Result<(), String>| {
        let now = state.clone().err();
        if said != now {
            match &state {
                Ok(()) => tracing::info!(key, "registered in the cluster"),
                Err(e) => {
                    tracing::warn!(key, error = %e, "cannot register in the cluster; retrying")
                }
            }
            said = now;
        }
    };
    loop {
        let failure = match etcd.grant(config.ttl).await {
            Err(e) => e.to_string(),
            Ok(lease) => loop {
                let mut value = describe();
                value["name"] = Value::from(config.name.clone());
                if let Err(e) = etcd
                    .put(&key, value.to_string().as_bytes(), Some(lease))
                    .await
                {
                    break e.to_string();
                }
                say(Ok(()));
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => {
                        // Leave the list now rather than when the lease ends.
                        let _ = tokio::time::timeout(Duration::from_secs(2), etcd.delete(&key)).await;
                        return;
                    }
                }
                if let Err(e) = etcd.keep_alive(lease).await {
                    break e.to_string();
                }
            },
        };
        say(Err(failure));
        tokio::select! {
            _ = tokio::time::sleep(every.min(Duration::from_secs(2))) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// How an instance running `view` describes itself in the registry: its
/// admin address, version, listeners, and each pool's backends and how
/// many are up.
pub(crate) fn describe(view: &crate::admin::View) -> serde_json::Value {
    let pools: serde_json::Map<String, serde_json::Value> = view
        .pools
        .iter()
        .map(|(name, p)| {
            let snap = p.snapshot();
            let up = snap
                .members
                .iter()
                .filter(|m| m.backend.is_healthy())
                .count();
            (
                name.clone(),
                serde_json::json!({ "backends": snap.members.len(), "up": up }),
            )
        })
        .collect();
    serde_json::json!({
        "admin": view.admin.map(|a| format!("http://{a}/")),
        "version": env!("CARGO_PKG_VERSION"),
        "listeners": view.listeners.iter().map(|l| serde_json::json!({
            "name": l.name, "protocol": l.protocol, "addr": l.addr,
        })).collect::<Vec<_>>(),
        "pools": pools,
    })
}
