//! Discovery at scale: 10,000 backends in one etcd prefix and in one
//! ZooKeeper path, followed by two switchyard instances. For each store: how
//! long each instance takes to serve the whole set from its start, and how
//! long one change takes to be seen by both (a drain through one
//! instance's API, written to the store, until the other obeys it), as the
//! median and 99th percentile of 100 changes.
//!
//! `cargo bench --bench registry` (add `-- --backends N`, `-- --json FILE`).
//! It needs `etcd` (Debian `etcd-server`) and ZooKeeper (`zookeeper` on a
//! JRE); a store that is missing is skipped with one line. The backends'
//! addresses are loopback addresses nothing listens on and nothing dials
//! (the pools have no health check). Under `cargo test --all-targets` (no
//! `--bench` argument) it makes one quick pass over 200 backends.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::zookeeper::ZooKeeper;
use switchyard::Server;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 60, (i / 250) as u8, 1 + (i % 250) as u8], 9000))
}

fn config(state: &Path, discovery: &str) -> String {
    format!(
        "state_dir = \"{}\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
         [pools.web]\nstrategy = \"maglev\"\n[pools.web.discovery]\n{discovery}",
        state.display()
    )
}

fn count(s: &Server) -> usize {
    s.view().pools["web"].snapshot().members.len()
}

fn draining(s: &Server, a: SocketAddr) -> bool {
    s.view().pools["web"]
        .snapshot()
        .find(a)
        .is_some_and(|m| m.backend.is_draining())
}

/// Waits for `cond`, bounded; how long it took.
async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    start.elapsed()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Two instances on one store: their load times and the change latencies.
async fn measure(
    store: &str,
    n: usize,
    changes: usize,
    dir: &Path,
    discovery: &str,
) -> serde_json::Value {
    let mut loads = Vec::new();
    let mut servers = Vec::new();
    for i in 0..2 {
        let t = Instant::now();
        let s = common::start(&config(&dir.join(format!("{store}-{i}")), discovery)).await;
        until(
            &format!("{store}: the first set"),
            Duration::from_secs(120),
            || count(&s) == n,
        )
        .await;
        loads.push(t.elapsed());
        servers.push(s);
    }
    let admin = servers[0].admin_addr().await.unwrap();
    let mut seen = Vec::new();
    for k in 0..changes {
        let a = addr(k * 7 % n);
        let action = if k % 2 == 0 { "drain" } else { "enable" };
        let want = k % 2 == 0;
        let t = Instant::now();
        let path = format!("/api/v1/pools/web/backends/{a}/{action}");
        let (code, body) = tokio::task::spawn_blocking(move || {
            common::daemon::http(admin, "POST", &path, &[], "")
        })
        .await
        .unwrap();
        assert_eq!(code, 200, "{body}");
        let other = &servers[1];
        until(
            &format!("{store}: a change"),
            Duration::from_secs(10),
            || draining(other, a) == want,
        )
        .await;
        seen.push(t.elapsed());
    }
    seen.sort();
    for s in servers {
        s.shutdown().await;
    }
    let out = serde_json::json!({
        "backends": n,
        "initial_load_s": loads.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
        "change_seen_by_both_ms": {
            "p50": pct(&seen, 0.5),
            "p99": pct(&seen, 0.99),
            "max": pct(&seen, 1.0),
            "changes": changes,
        },
    });
    println!("{store}: {out}");
    out
}

/// Puts `n` keys through etcd's JSON gateway, 128 to a transaction (etcd's
/// default limit), as each write waits for the disk.
fn etcd_fill(client: SocketAddr, n: usize) {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(128) {
        let puts: Vec<String> = chunk
            .iter()
            .map(|&i| {
                format!(
                    "{{\"requestPut\":{{\"key\":\"{}\",\"value\":\"{}\"}}}}",
                    b64(&format!("/bench/web/{i:05}")),
                    b64(&format!("{{\"addr\":\"{}\"}}", addr(i)))
                )
            })
            .collect();
        let body = format!("{{\"success\":[{}]}}", puts.join(","));
        let mut c = TcpStream::connect(client).unwrap();
        write!(
            c,
            "POST /v3/kv/txn HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "etcd: {answer}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let quick = !args.iter().any(|a| a == "--bench");
    let n: usize = opt("--backends")
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 200 } else { 10_000 });
    assert!(n <= 250 * 250, "at most 62,500 backends");
    let changes = if quick { 10 } else { 100 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut report = serde_json::Map::new();
    rt.block_on(async {
        if common::installed("etcd", "etcd-server") {
            let etcd = Etcd::start(&dir.path().join("etcd")).await;
            let client = etcd.client;
            let t = Instant::now();
            tokio::task::spawn_blocking(move || etcd_fill(client, n))
                .await
                .unwrap();
            println!("etcd: {n} keys written in {:?}", t.elapsed());
            let d = format!(
                "kind = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"/bench/web/\"\n",
                etcd.endpoint()
            );
            report.insert(
                "etcd".into(),
                measure("etcd", n, changes, dir.path(), &d).await,
            );
        }
        if common::zookeeper::installed() {
            let zk = ZooKeeper::start(&dir.path().join("zk")).await;
            let mut lines = vec![
                "create /bench \"\"".to_string(),
                "create /bench/web \"\"".to_string(),
            ];
            lines.extend(
                (0..n).map(|i| format!("create /bench/web/m{i:05} {{\"addr\":\"{}\"}}", addr(i))),
            );
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let t = Instant::now();
            zk.run(&lines).await;
            println!("zookeeper: {n} nodes written in {:?}", t.elapsed());
            let d = format!(
                "kind = \"zookeeper\"\nservers = [\"{}\"]\npath = \"/bench/web\"\n",
                zk.server()
            );
            report.insert(
                "zookeeper".into(),
                measure("zookeeper", n, changes, dir.path(), &d).await,
            );
        }
    });
    if let Some(file) = opt("--json") {
        std::fs::write(file, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    }
}
