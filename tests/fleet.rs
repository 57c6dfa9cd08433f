//! One fleet against a real etcd: two switchyard instances on one prefix
//! follow puts and deletes within a second, pick the same backend for the
//! same client (Maglev, TCP and UDP), move only the removed backend's
//! clients, obey a drain made through either one, keep serving when etcd
//! dies, restart from `state_dir` while it is down, and list each other in
//! `[cluster]`. A reload of a discovered pool's settings keeps its
//! backends and their health.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{installed, metric, value, Backend};
use switchyard::Server;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

fn config(etcd: &str, state: &Path, extra: &str) -> String {
    format!(
        "state_dir = \"{}\"\n{extra}\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
         [[listeners]]\nname = \"udp\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n\
         [pools.web]\nstrategy = \"maglev\"\n\
         [pools.web.discovery]\nkind = \"etcd\"\nendpoints = [\"{etcd}\"]\nprefix = \"/sy/web/\"\n",
        state.display()
    )
}

fn members(server: &Server) -> BTreeSet<SocketAddr> {
    server.view().pools["web"]
        .snapshot()
        .members
        .iter()
        .map(|m| m.backend.addr.inet().unwrap())
        .collect()
}

fn draining(server: &Server, addr: SocketAddr) -> bool {
    server.view().pools["web"]
        .snapshot()
        .find(addr)
        .is_some_and(|m| m.backend.is_draining())
}

/// Waits until `cond` holds on every server; how long that took.
async fn converge(
    what: &str,
    servers: &[&Server],
    limit: Duration,
    cond: impl Fn(&Server) -> bool,
) -> Duration {
    let start = Instant::now();
    while !servers.iter().all(|s| cond(s)) {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// The backend that answers a TCP client at `src`.
async fn ask_from(src: IpAddr, front: SocketAddr) -> String {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(src, 0)).unwrap();
    let mut c = s.connect(front).await.expect("connect");
    c.write_all(b"who\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(c).read_line(&mut line),
    )
    .await
    .expect("a reply in time")
    .unwrap();
    line.split(':').next().unwrap().to_string()
}

/// The backend that answers a UDP client at `src`.
async fn ask_udp_from(src: IpAddr, front: SocketAddr) -> String {
    common::ask_udp(SocketAddr::new(src, 0), front, b"who").await
}

fn clients(third: u8, n: u8) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::from([127, third, 0, i])).collect()
}

async fn post(admin: SocketAddr, path: &str) -> u16 {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || common::daemon::http(admin, "POST", &path, &[], "").0)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_follow_one_etcd_prefix_as_one() {
    if !installed("etcd", "etcd-server") || !installed("etcdctl", "etcd-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(&dir.path().join("etcd")).await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    etcd.ctl(&["put", "/sy/web/a", &format!("{{\"addr\": \"{}\"}}", a.addr)])
        .await;
    etcd.ctl(&["put", "/sy/web/b", &b.addr.to_string()]).await;
    let ep = etcd.endpoint();
    let one = common::start(&config(&ep, &dir.path().join("one"), "")).await;
    let two = common::start(&config(&ep, &dir.path().join("two"), "")).await;
    let both = [&one, &two];
    converge("the first read", &both, Duration::from_secs(5), |s| {
        members(s).len() == 2
    })
    .await;

    // A put reaches both within a second.
    let t = Instant::now();
    etcd.ctl(&[
        "put",
        "/sy/web/c",
        &format!("{{\"addr\": \"{}\", \"weight\": 1}}", c.addr),
    ])
    .await;
    let put = converge("a put", &both, Duration::from_secs(1), |s| {
        members(s).len() == 3
    })
    .await;
    eprintln!(
        "put seen by both in {put:?} ({:?} with etcdctl)",
        t.elapsed()
    );

    // Every client reaches the same backend through either instance.
    let (f1, f2) = (
        one.local_addr("front").unwrap(),
        two.local_addr("front").unwrap(),
    );
    let ips = clients(1, 150);
    let mut before = Vec::new();
    for ip in &ips {
        let (x, y) = (ask_from(*ip, f1).await, ask_from(*ip, f2).await);
        assert_eq!(x, y, "client {ip}");
        before.push(x);
    }
    let names: BTreeSet<&str> = before.iter().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["a", "b", "c"]));
    let (u1, u2) = (
        one.local_addr("udp").unwrap(),
        two.local_addr("udp").unwrap(),
    );
    for ip in clients(2, 60) {
        assert_eq!(
            ask_udp_from(ip, u1).await,
            ask_udp_from(ip, u2).await,
            "udp client {ip}"
        );
    }

    // A delete reaches both within a second; only b's clients move.
    etcd.ctl(&["del", "/sy/web/b"]).await;
    let del = converge("a delete", &both, Duration::from_secs(1), |s| {
        !members(s).contains(&b.addr)
    })
    .await;
    eprintln!("delete seen by both in {del:?}");
    let mut moved = 0;
    for (ip, was) in ips.iter().zip(&before) {
        let (x, y) = (ask_from(*ip, f1).await, ask_from(*ip, f2).await);
        assert_eq!(x, y, "client {ip} after the delete");
        assert_ne!(x, "b");
        if was != "b" && x != *was {
            moved += 1;
        }
    }
    eprintln!("clients not on b that moved: {moved} of {}", ips.len());
    assert!(
        moved <= 2,
        "{moved} clients moved that were not on the removed backend"
    );

    // A drain through one instance's API is written to etcd and obeyed by the other.
    let admin1 = one.admin_addr().await.unwrap();
    let t = Instant::now();
    assert_eq!(
        post(
            admin1,
            &format!("/api/v1/pools/web/backends/{}/drain", a.addr)
        )
        .await,
        200
    );
    converge("a drain", &[&two], Duration::from_secs(1), |s| {
        draining(s, a.addr)
    })
    .await;
    eprintln!("drain through one obeyed by two in {:?}", t.elapsed());
    assert!(etcd
        .ctl(&["get", "/sy/web/a"])
        .await
        .contains("\"draining\":true"));

    // etcd dies: both serve the last set; a change it cannot take is refused
    // (503) and changes nothing anywhere.
    etcd.kill();
    let error = "switchyard_discovery_updates_total{pool=\"web\",result=\"error\"}";
    common::wait_for("the lost watch", Duration::from_secs(10), || {
        value(&one, error) >= 1.0 && value(&two, error) >= 1.0
    })
    .await;
    assert_eq!(
        post(
            admin1,
            &format!("/api/v1/pools/web/backends/{}/enable", a.addr)
        )
        .await,
        503
    );
    assert!(draining(&one, a.addr) && draining(&two, a.addr));
    for s in both {
        assert_eq!(members(s), BTreeSet::from([a.addr, c.addr]));
        assert_eq!(
            ask_from(IpAddr::from([127, 3, 0, 1]), s.local_addr("front").unwrap()).await,
            "c"
        );
    }

    // One instance restarts while etcd is down: it serves the set it kept.
    two.shutdown().await;
    let two = common::start(&config(&ep, &dir.path().join("two"), "")).await;
    assert_eq!(members(&two), BTreeSet::from([a.addr, c.addr]));
    assert!(draining(&two, a.addr));
    assert_eq!(
        ask_from(
            IpAddr::from([127, 3, 0, 2]),
            two.local_addr("front").unwrap()
        )
        .await,
        "c"
    );

    // etcd comes back: both follow it again.
    etcd.restart().await;
    etcd.ctl(&["put", "/sy/web/b", &b.addr.to_string()]).await;
    converge("etcd back", &[&one, &two], Duration::from_secs(10), |s| {
        members(s).len() == 3
    })
    .await;
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lists_the_live_instances() {
    if !installed("etcd", "etcd-server") || !installed("etcdctl", "etcd-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd")).await;
    let a = Backend::start("a").await;
    etcd.ctl(&["put", "/sy/web/a", &a.addr.to_string()]).await;
    let ep = etcd.endpoint();
    let cluster = |name: &str| {
        format!("[cluster]\nendpoints = [\"{ep}\"]\nname = \"{name}\"\nttl = \"2s\"\n")
    };
    let one = common::start(&config(&ep, &dir.path().join("one"), &cluster("one"))).await;
    let two = common::start(&config(&ep, &dir.path().join("two"), &cluster("two"))).await;
    // Stray keys under the prefix are not instances: left out, counted.
    etcd.ctl(&["put", "/switchyard/instances/stray", "null"])
        .await;
    etcd.ctl(&["put", "/switchyard/instances/junk", "{not json"])
        .await;
    let admin = one.admin_addr().await.unwrap();
    let list = || async move {
        let (status, body) = tokio::task::spawn_blocking(move || {
            common::daemon::http(admin, "GET", "/api/v1/cluster", &[], "")
        })
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut names: Vec<String> = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        (names, v)
    };
    let start = Instant::now();
    loop {
        let (names, v) = list().await;
        let entry = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "two")
            .cloned();
        // Each renewal describes the instance afresh: its pool is found by then.
        if names == ["one", "two"]
            && entry
                .as_ref()
                .is_some_and(|e| e["pools"]["web"]["backends"] == 1)
        {
            let two_admin = format!("http://{}/", two.admin_addr().await.unwrap());
            assert_eq!(entry.unwrap()["admin"], two_admin.as_str());
            assert_eq!(v["skipped"], 2, "{v}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An instance that stops leaves the list at once.
    two.shutdown().await;
    assert_eq!(list().await.0, ["one"]);
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_settings_keeps_discovered_backends_and_their_health() {
    if !installed("etcd", "etcd-server") || !installed("etcdctl", "etcd-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd")).await;
    let a = Backend::start("a").await;
    let dead = common::dead_addr();
    etcd.ctl(&["put", "/sy/web/a", &a.addr.to_string()]).await;
    etcd.ctl(&["put", "/sy/web/dead", &dead.to_string()]).await;
    let ep = etcd.endpoint();
    let health = "[pools.web.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\n";
    let text = config(&ep, &dir.path().join("one"), "") + health;
    let one = common::start(&text).await;
    let up = |s: &Server, addr: SocketAddr| {
        s.view().pools["web"]
            .snapshot()
            .find(addr)
            .map(|m| m.backend.is_healthy())
    };
    converge(
        "the dead backend found down",
        &[&one],
        Duration::from_secs(5),
        |s| up(s, dead) == Some(false),
    )
    .await;
    let next = text.replace(
        "strategy = \"maglev\"",
        "strategy = \"round_robin\"\nretries = 5",
    );
    one.reload(switchyard::Config::parse(&next, Path::new("next.toml")).unwrap())
        .await
        .unwrap();
    let snap = one.view().pools["web"].snapshot();
    assert_eq!(snap.config.retries, 5);
    assert_eq!(members(&one), BTreeSet::from([a.addr, dead]));
    assert_eq!(
        (up(&one, a.addr), up(&one, dead)),
        (Some(true), Some(false))
    );
    // Discovery goes on under the new settings.
    let b = Backend::start("b").await;
    etcd.ctl(&["put", "/sy/web/b", &b.addr.to_string()]).await;
    converge(
        "a put after the reload",
        &[&one],
        Duration::from_secs(1),
        |s| members(s).len() == 3,
    )
    .await;
    assert_eq!(
        one.view().pools["web"].snapshot().config.strategy.name(),
        "round_robin"
    );

    // A reload to another source that does not answer serves what a
    // restart would (that source's kept set: none), never the old source's
    // backends, and the gauge says what is served. Back on the first
    // source, it serves that again.
    let gauge = "switchyard_discovery_backends{pool=\"web\"}";
    let elsewhere = next
        .replace(&ep, &format!("http://{}", common::dead_addr()))
        .replace("/sy/web/", "/sy/other/");
    one.reload(switchyard::Config::parse(&elsewhere, Path::new("next.toml")).unwrap())
        .await
        .unwrap();
    converge(
        "the new source's set",
        &[&one],
        Duration::from_secs(2),
        // The gauge's series is made again with the new source: until then it
        // is missing, which is not yet what the test waits for.
        |s| members(s).is_empty() && metric(&s.metrics().render(), gauge) == Some(0.0),
    )
    .await;
    one.reload(switchyard::Config::parse(&next, Path::new("next.toml")).unwrap())
        .await
        .unwrap();
    converge(
        "the first source again",
        &[&one],
        Duration::from_secs(5),
        |s| members(s).len() == 3 && metric(&s.metrics().render(), gauge) == Some(3.0),
    )
    .await;
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_path_died_is_noticed_and_read_again() {
    if !installed("etcd", "etcd-server") || !installed("etcdctl", "etcd-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd")).await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    etcd.ctl(&["put", "/sy/web/a", &a.addr.to_string()]).await;
    let gate = common::gate::Gate::start(etcd.client).await;
    let text = config(
        &format!("http://{}", gate.addr),
        &dir.path().join("one"),
        "",
    )
    .replace(
        "prefix = \"/sy/web/\"",
        "prefix = \"/sy/web/\"\nrefresh = \"1s\"",
    );
    let one = common::start(&text).await;
    converge("the first read", &[&one], Duration::from_secs(5), |s| {
        members(s) == BTreeSet::from([a.addr])
    })
    .await;
    // Quiet but healthy: the probes answer, nothing is counted as wrong,
    // and the last contact stays recent.
    let contact = "switchyard_discovery_last_contact_timestamp_seconds{pool=\"web\"}";
    let stale = "switchyard_discovery_updates_total{pool=\"web\",result=\"stale\"}";
    let error = "switchyard_discovery_updates_total{pool=\"web\",result=\"error\"}";
    let before = value(&one, contact);
    converge(
        "a probe of the quiet watch",
        &[&one],
        Duration::from_secs(5),
        |s| value(s, contact) > before,
    )
    .await;
    assert_eq!((value(&one, stale), value(&one, error)), (0.0, 0.0));

    // The watch's path dies without a reset (new connections still get
    // through): the put below never comes down it, and the probe finds it.
    gate.freeze_existing();
    etcd.ctl(&["put", "/sy/web/b", &b.addr.to_string()]).await;
    let took = converge("the missed put", &[&one], Duration::from_secs(8), |s| {
        members(s) == BTreeSet::from([a.addr, b.addr])
    })
    .await;
    eprintln!("a stale watch read again {took:?} after the put");
    assert!(value(&one, stale) >= 1.0);

    // The store vanishes altogether: the quiet watch's probe gets no answer,
    // which is counted; the last set serves; when the path is back, so is
    // the set.
    gate.silence(true);
    converge(
        "the silence counted",
        &[&one],
        Duration::from_secs(10),
        |s| value(s, error) >= 1.0,
    )
    .await;
    assert_eq!(members(&one), BTreeSet::from([a.addr, b.addr]));
    etcd.ctl(&["put", "/sy/web/c", &c.addr.to_string()]).await;
    gate.silence(false);
    converge("back", &[&one], Duration::from_secs(15), |s| {
        members(s).len() == 3
    })
    .await;
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() {
    if !installed("etcd", "etcd-server")
        || !installed("etcdctl", "etcd-client")
        || !installed("openssl", "openssl")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start_tls(&dir.path().join("etcd")).await;
    let t = etcd.tls.clone().unwrap();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    etcd.ctl(&["put", "/sy/web/a", &a.addr.to_string()]).await;
    let ep = etcd.endpoint();
    assert!(ep.starts_with("https://"));
    let files = |me: bool| {
        let mut s = format!("ca = \"{}\"\n", t.ca.cert.display());
        if me {
            s += &format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                t.client.cert.display(),
                t.client.key.display()
            );
        }
        s
    };
    let cluster = format!(
        "[cluster]\nendpoints = [\"{ep}\"]\nname = \"one\"\n{}",
        files(true)
    );
    let one = common::start(&(config(&ep, &dir.path().join("one"), &cluster) + &files(true))).await;
    converge("a read over TLS", &[&one], Duration::from_secs(5), |s| {
        members(s) == BTreeSet::from([a.addr])
    })
    .await;
    etcd.ctl(&["put", "/sy/web/b", &b.addr.to_string()]).await;
    converge("a watch over TLS", &[&one], Duration::from_secs(5), |s| {
        members(s).len() == 2
    })
    .await;
    // A drain is written over TLS too.
    let admin = one.admin_addr().await.unwrap();
    assert_eq!(
        post(
            admin,
            &format!("/api/v1/pools/web/backends/{}/drain", a.addr)
        )
        .await,
        200
    );
    assert!(etcd
        .ctl(&["get", "/sy/web/a"])
        .await
        .contains("\"draining\":true"));
    // The instance registers itself over TLS.
    let start = Instant::now();
    loop {
        let (code, body) = tokio::task::spawn_blocking(move || {
            common::daemon::http(admin, "GET", "/api/v1/cluster", &[], "")
        })
        .await
        .unwrap();
        if code == 200 && body.contains("\"name\":\"one\"") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{code} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without a client certificate etcd refuses the handshake: counted,
    // nothing served.
    let two = common::start(&(config(&ep, &dir.path().join("two"), "") + &files(false))).await;
    let error = "switchyard_discovery_updates_total{pool=\"web\",result=\"error\"}";
    converge(
        "a refused handshake",
        &[&two],
        Duration::from_secs(5),
        |s| common::metric(&s.metrics().render(), error).unwrap_or(0.0) >= 1.0,
    )
    .await;
    assert!(members(&two).is_empty());
    one.shutdown().await;
    two.shutdown().await;
}

/// Runs `switchyard ctl ARGS`: exit code and stdout (stderr on failure).
fn ctl(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("ctl")
        .args(args)
        .output()
        .unwrap();
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_writes_to_etcd_and_a_killed_instance_leaves_the_fleet() {
    if !installed("etcd", "etcd-server") || !installed("etcdctl", "etcd-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd")).await;
    let a = Backend::start("a").await;
    etcd.ctl(&[
        "put",
        "/sy/web/a",
        &format!("{{\"addr\": \"{}\", \"name\": \"a\"}}", a.addr),
    ])
    .await;
    let ep = etcd.endpoint();
    let cluster = |name: &str| {
        format!("[cluster]\nendpoints = [\"{ep}\"]\nname = \"{name}\"\nttl = \"2s\"\n")
    };
    // One instance is the real binary, killed later; one is in this process.
    let admin = common::process::free_addr();
    let mut one = common::daemon::Daemon::start(
        &config(&ep, &dir.path().join("one"), &cluster("one")).replace(
            "bind = \"127.0.0.1:0\"\n[[listeners]]",
            &format!("bind = \"{admin}\"\n[[listeners]]"),
        ),
        &[],
        &[],
    );
    let two = common::start(&config(&ep, &dir.path().join("two"), &cluster("two"))).await;
    converge("two sees a", &[&two], Duration::from_secs(5), |s| {
        members(s).len() == 1
    })
    .await;

    // Weight and enable through ctl on the binary are written to etcd and
    // obeyed by the other instance.
    let admin_s = admin.to_string();
    let (code, out) = ctl(&["--admin", &admin_s, "weight", "web", "a", "5"]);
    assert_eq!((code, out.trim()), (0, "web/a: weight 5"), "{out}");
    let weight = |s: &Server| {
        s.view().pools["web"]
            .snapshot()
            .find(a.addr)
            .map(|m| m.weight.get())
    };
    converge("a weight from ctl", &[&two], Duration::from_secs(2), |s| {
        weight(s) == Some(5)
    })
    .await;
    assert!(etcd
        .ctl(&["get", "/sy/web/a"])
        .await
        .contains("\"weight\":5"));
    let (code, out) = ctl(&["--admin", &admin_s, "drain", "web", "a"]);
    assert_eq!(code, 0, "{out}");
    converge("a drain from ctl", &[&two], Duration::from_secs(2), |s| {
        draining(s, a.addr)
    })
    .await;
    let (code, out) = ctl(&["--admin", &admin_s, "enable", "web", "a"]);
    assert_eq!(code, 0, "{out}");
    converge("an enable from ctl", &[&two], Duration::from_secs(2), |s| {
        !draining(s, a.addr)
    })
    .await;
    let got = etcd.ctl(&["get", "/sy/web/a"]).await;
    assert!(
        got.contains("\"draining\":false") && got.contains("\"name\":\"a\""),
        "{got}"
    );

    // The binary is killed (no goodbye): its lease runs out and it leaves
    // the list within the ttl.
    let admin2 = two.admin_addr().await.unwrap();
    let names = move || {
        let (code, body) = common::daemon::http(admin2, "GET", "/api/v1/cluster", &[], "");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut n: Vec<String> = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap_or_default().to_string())
            .collect();
        n.sort();
        n
    };
    let start = Instant::now();
    while tokio::task::spawn_blocking(names).await.unwrap() != ["one", "two"] {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "both never listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one.signal("KILL");
    let _ = one.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    while tokio::task::spawn_blocking(names).await.unwrap() != ["two"] {
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "a killed instance stayed listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "a killed instance left the list {:?} after (ttl 2s)",
        killed.elapsed()
    );
    two.shutdown().await;

    // Without [cluster] there is no fleet to list: 404, and why.
    let three = common::start(&config(&ep, &dir.path().join("three"), "")).await;
    let admin3 = three.admin_addr().await.unwrap();
    let (code, body) = tokio::task::spawn_blocking(move || {
        common::daemon::http(admin3, "GET", "/api/v1/cluster", &[], "")
    })
    .await
    .unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no [cluster] section"), "{body}");
    three.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_store_answer_is_refused_before_it_is_parsed() {
    // A store that answers a range with 65 MiB (well-formed JSON padded
    // with spaces), sent a mebibyte at a time: refused at the cap, counted,
    // and nothing of it kept.
    use tokio::io::AsyncReadExt;
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = fake.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = fake.accept().await {
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let _ = s.read(&mut head).await;
                let pad = 65 * 1024 * 1024;
                let (open, close) = (r#"{"header":{"revision":"5"},"kvs":[]"#, "}");
                let len = open.len() + pad + close.len();
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{open}").as_bytes())
                    .await;
                let chunk = vec![b' '; 1024 * 1024];
                for _ in 0..65 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(close.as_bytes()).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let one = common::start(&config(&format!("http://{at}"), dir.path(), "")).await;
    let error = "switchyard_discovery_updates_total{pool=\"web\",result=\"error\"}";
    converge(
        "the oversized answer refused",
        &[&one],
        Duration::from_secs(20),
        |s| common::metric(&s.metrics().render(), error).unwrap_or(0.0) >= 1.0,
    )
    .await;
    assert!(members(&one).is_empty());
    assert_eq!(
        value(
            &one,
            "switchyard_discovery_updates_total{pool=\"web\",result=\"empty\"}"
        ),
        0.0,
        "the answer was taken"
    );
    one.shutdown().await;
}
