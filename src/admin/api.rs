//! The JSON API's handlers: pools and listeners to read, drain/enable and
//! weight to change.

use std::num::NonZeroU32;

use hyper::{Response, StatusCode};
use serde_json::json;

use super::status::{BackendStatus, PoolStatus};
use super::{error, Body, Control};
use crate::config::MAX_WEIGHT;
use crate::endpoint::Endpoint;
use crate::pool::{Change, Pool, Unshared};

pub fn pools(
    server: &dyn Control,
    writes_need_token: bool,
    reads_need_token: bool,
) -> Response<Body> {
    let view = server.view();
    let pools: Vec<PoolStatus> = view
        .pools
        .values()
        .map(|p| {
            let snap = p.snapshot();
            let listeners = view
                .listeners
                .iter()
                .filter(|l| l.pool == p.name || l.routes.iter().any(|r| r.pool == p.name))
                .map(|l| l.name.clone())
                .collect();
            PoolStatus {
                name: p.name.clone(),
                strategy: snap.config.strategy.name().to_string(),
                health_check: snap.config.health.check.name().to_string(),
                proxy_protocol: snap.config.proxy_protocol.map(|v| v.name().to_string()),
                tls: snap
                    .config
                    .tls
                    .as_ref()
                    .map(super::status::PoolTlsStatus::of),
                active_priority: snap.active_priority().map_or(-1, i64::from),
                panic: snap.in_panic(),
                panic_threshold: snap.config.panic_below.map(|t| f64::from(t) / 1000.0),
                on_all_down: snap.config.on_all_down.name().to_string(),
                source: snap.config.source.map(|s| s.to_string()),
                rates: snap.config.rates,
                listeners,
                backends: snap.members.iter().map(BackendStatus::of).collect(),
            }
        })
        .collect();
    super::json(
        StatusCode::OK,
        &json!({
            "pools": pools,
            "listeners": view.listeners,
            "auth": { "writes_need_token": writes_need_token, "reads_need_token": reads_need_token },
        }),
    )
}

pub fn listeners(server: &dyn Control) -> Response<Body> {
    super::json(
        StatusCode::OK,
        &json!({ "listeners": server.view().listeners }),
    )
}

// The error is a ready response, built only on the cold path.
#[allow(clippy::result_large_err)]
fn find(
    server: &dyn Control,
    pool: &str,
    addr: &str,
) -> Result<(std::sync::Arc<Pool>, Endpoint), Response<Body>> {
    let view = server.view();
    let pool = view
        .pools
        .get(pool)
        .cloned()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no pool named `{pool}`")))?;
    // An exact address first, then a name (names are unique in a pool and
    // never another backend's address), so no name can stand for another
    // backend.
    let snap = pool.snapshot();
    // Looked up, not parsed: a path from outside interns no Unix name.
    if let Some(a) = Endpoint::known(addr) {
        if snap.find(a).is_some() {
            return Ok((pool, a));
        }
    }
    if let Some(m) = snap.members.iter().find(|m| m.backend.name == addr) {
        let found = m.backend.addr;
        return Ok((pool, found));
    }
    let addr = Endpoint::known(addr).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "pool `{}` has no backend named `{addr}` (give its name, ip:port or unix:path)",
                pool.name
            ),
        )
    })?;
    Ok((pool, addr))
}

/// Checks that the backend is in the pool and, for a pool whose members
/// live in etcd, writes `change` there first, so every instance follows; a
/// write etcd does not take changes nothing.
async fn shared_first(
    server: &dyn Control,
    pool: &Pool,
    addr: Endpoint,
    change: Change,
) -> Result<(), Response<Body>> {
    if pool.snapshot().find(addr).is_none() {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("pool `{}` has no backend {addr}", pool.name),
        ));
    }
    // Discovery finds IP addresses only: a Unix socket is the file's own.
    let Some(addr) = addr.inet() else {
        return Ok(());
    };
    match server.share(&pool.name, addr, change).await {
        None | Some(Ok(())) => Ok(()),
        Some(Err(Unshared::Unavailable(e))) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e)),
        Some(Err(Unshared::NotOurs(e))) => Err(error(StatusCode::CONFLICT, e)),
    }
}

pub async fn set_draining(
    server: &dyn Control,
    pool: &str,
    addr: &str,
    draining: bool,
) -> Response<Body> {
    let (pool, addr) = match find(server, pool, addr) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Err(r) = shared_first(server, &pool, addr, Change::Drain(draining)).await {
        return r;
    }
    match pool.set_draining(addr, draining) {
        Ok(()) => {
            tracing::info!(pool = %pool.name, backend = %addr, draining, "backend drain state changed by the admin API");
            describe(&pool, addr)
        }
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

pub async fn set_weight(
    server: &dyn Control,
    pool: &str,
    addr: &str,
    body: &[u8],
) -> Response<Body> {
    let (pool, addr) = match find(server, pool, addr) {
        Ok(x) => x,
        Err(r) => return r,
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WeightBody {
        weight: u32,
    }
    let weight = match serde_json::from_slice::<WeightBody>(body) {
        Ok(w) if (1..=MAX_WEIGHT).contains(&w.weight) => {
            NonZeroU32::new(w.weight).expect("checked non-zero")
        }
        Ok(w) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("weight must be from 1 to {MAX_WEIGHT}, not {}", w.weight),
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"weight\": N}}: {e}"),
            )
        }
    };
    if let Err(r) = shared_first(server, &pool, addr, Change::Weight(weight)).await {
        return r;
    }
    // A weighted pool rebuilds its schedule (tens of milliseconds for
    // thousands of backends): off the runtime's worker threads.
    let changing = pool.clone();
    let changed = tokio::task::spawn_blocking(move || changing.set_weight(addr, weight))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    match changed {
        Ok(()) => {
            tracing::info!(pool = %pool.name, backend = %addr, weight = weight.get(), "backend weight changed by the admin API");
            describe(&pool, addr)
        }
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

fn describe(pool: &Pool, addr: Endpoint) -> Response<Body> {
    let snap = pool.snapshot();
    match snap.find(addr) {
        Some(m) => super::json(StatusCode::OK, &BackendStatus::of(m)),
        None => error(
            StatusCode::NOT_FOUND,
            format!("pool `{}` has no backend {addr}", pool.name),
        ),
    }
}

pub async fn cluster(server: &dyn Control) -> Response<Body> {
    match server.cluster().await {
        None => error(
            StatusCode::NOT_FOUND,
            "this instance has no [cluster] section",
        ),
        Some(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot list the cluster: {e}"),
        ),
        Some(Ok(fleet)) => super::json(
            StatusCode::OK,
            &json!({ "instances": fleet.instances, "skipped": fleet.skipped }),
        ),
    }
}

/// `?since=MS&points=N&pool=NAME&backends=ADDR,ADDR`, each optional.
pub fn history_query(query: Option<&str>) -> Result<crate::history::Query, String> {
    let mut q = crate::history::Query::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        let number = |what: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{what} must be a whole number, not `{v}`"))
        };
        match k {
            "since" => q.since_ms = Some(number("since (Unix milliseconds)")?),
            "points" => q.points = Some(number("points")?.clamp(1, 10_000) as usize),
            "pool" => q.pool = Some(v.into_owned()),
            "backends" => q.backends = Some(v.split(',').map(str::to_string).collect()),
            other => {
                return Err(format!(
                    "unknown parameter `{other}`; expected since, points, pool or backends"
                ))
            }
        }
    }
    Ok(q)
}
