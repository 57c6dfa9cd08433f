//! Pools that follow a real ZooKeeper: switchyard's own (native) entries,
//! written back on a drain; members that vanish with their owner's
//! session; a session of ours that expires behind a silent network, and
//! ZooKeeper itself restarted, with the last set served meanwhile (from
//! `state_dir` after a restart of ours); and the registries of Curator,
//! Finagle server sets and Dubbo as their own clients write them, with a
//! digest-protected path.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::zookeeper::{self, ZooKeeper};
use common::{value, Backend};
use switchyard::Server;

fn members(server: &Server, pool: &str) -> BTreeSet<SocketAddr> {
    server.view().pools[pool]
        .snapshot()
        .members
        .iter()
        .map(|m| m.backend.addr.inet().unwrap())
        .collect()
}

fn backend(server: &Server, pool: &str, addr: SocketAddr) -> Option<(bool, u32)> {
    let snap = server.view().pools[pool].snapshot();
    let m = snap.find(addr)?;
    Some((m.backend.is_draining(), m.weight.get()))
}

async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

async fn post(admin: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || common::daemon::http(admin, "POST", &path, &[], ""))
        .await
        .unwrap()
}

/// Who answers a new connection to `front`, `n` times.
async fn answers(front: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(common::ask(front).await);
    }
    seen
}

fn config(state: &Path, pools: &str) -> String {
    format!(
        "state_dir = \"{}\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n{pools}",
        state.display()
    )
}

fn native(servers: &str) -> String {
    format!(
        "[pools.web]\n[pools.web.discovery]\nkind = \"zookeeper\"\nservers = [\"{servers}\"]\n\
         path = \"/sy/web\"\nsession_timeout = \"2s\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_registry_is_followed_written_and_outlived() {
    if !zookeeper::installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut zk = ZooKeeper::start(&dir.path().join("zk")).await;
    let (a, b, c, d, e) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
        Backend::start("e").await,
    );
    zk.run(&[
        "create /sy \"\"",
        "create /sy/web \"\"",
        &format!(
            "create /sy/web/c {{\"addr\":\"{}\",\"name\":\"c\"}}",
            c.addr
        ),
        // Entries whose name would stand for another backend (its address,
        // or a name taken) are left out.
        &format!(
            "create /sy/web/x {{\"addr\":\"{}\",\"name\":\"{}\"}}",
            common::dead_addr(),
            c.addr
        ),
        &format!(
            "create /sy/web/y {{\"addr\":\"{}\",\"name\":\"c\"}}",
            common::dead_addr()
        ),
    ])
    .await;
    // A service registers itself, as its own session's ephemeral nodes.
    let mut owner = zk.session(1000);
    owner.send(&format!(
        "create -e /sy/web/a {{\"addr\":\"{}\",\"name\":\"a\"}}",
        a.addr
    ));
    owner.send(&format!("create -e /sy/web/b {}", b.addr));
    owner.wait_for("Created /sy/web/b").await;

    let gate = common::gate::Gate::start(zk.addr).await;
    let state = dir.path().join("state");
    let server = common::start(&config(&state, &native(&gate.addr.to_string()))).await;
    until("the first read", Duration::from_secs(10), || {
        members(&server, "web") == BTreeSet::from([a.addr, b.addr, c.addr])
    })
    .await;
    let front = server.local_addr("front").unwrap();
    assert_eq!(
        answers(front, 3).await,
        BTreeSet::from(["a".into(), "b".into(), "c".into()])
    );

    // A drain through the API is written to the node first, then obeyed.
    let admin = server.admin_addr().await.unwrap();
    let (code, body) = post(
        admin,
        &format!("/api/v1/pools/web/backends/{}/drain", a.addr),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(backend(&server, "web", a.addr), Some((true, 1)));
    let got = zk.run(&["get /sy/web/a"]).await;
    assert!(
        got.contains("\"draining\":true") && got.contains("\"name\":\"a\""),
        "{got}"
    );

    // The owner changes its entry: seen at once.
    let t = Instant::now();
    owner.send(&format!(
        "set /sy/web/b {{\"addr\":\"{}\",\"weight\":3}}",
        b.addr
    ));
    until("a weight set in ZooKeeper", Duration::from_secs(5), || {
        backend(&server, "web", b.addr) == Some((false, 3))
    })
    .await;
    eprintln!(
        "a change seen in {:?} (with the client's own latency)",
        t.elapsed()
    );

    // The owner dies without a word: its nodes leave with its session.
    let t = Instant::now();
    owner.kill();
    until(
        "the dead owner's members to leave",
        Duration::from_secs(6),
        || members(&server, "web") == BTreeSet::from([c.addr]),
    )
    .await;
    eprintln!(
        "an owner's death seen in {:?} (its session timeout is 1s)",
        t.elapsed()
    );
    assert_eq!(answers(front, 2).await, BTreeSet::from(["c".into()]));

    // The network to ZooKeeper goes silent past our session's timeout: the
    // session expires there; meanwhile a member joins. When the path comes
    // back a new session reads it.
    let error = "switchyard_discovery_updates_total{pool=\"web\",result=\"error\"}";
    let before = value(&server, error);
    gate.silence(true);
    zk.run(&[&format!("create /sy/web/d {}", d.addr)]).await;
    until("the silence noticed", Duration::from_secs(5), || {
        value(&server, error) > before
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // past the 2s session timeout, on purpose
    assert_eq!(
        members(&server, "web"),
        BTreeSet::from([c.addr]),
        "the last set serves"
    );
    gate.silence(false);
    let took = until("a new session's read", Duration::from_secs(10), || {
        members(&server, "web") == BTreeSet::from([c.addr, d.addr])
    })
    .await;
    eprintln!("back {took:?} after the path returned");

    // ZooKeeper dies: the last set serves, a write is refused (503) and
    // changes nothing; a restart of ours serves the set kept in state_dir.
    zk.kill();
    until("the lost server noticed", Duration::from_secs(5), || {
        value(&server, error) > before + 1.0
    })
    .await;
    let (code, body) = post(
        admin,
        &format!("/api/v1/pools/web/backends/{}/drain", c.addr),
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(backend(&server, "web", c.addr), Some((false, 1)));
    assert_eq!(
        answers(front, 2).await,
        BTreeSet::from(["c".into(), "d".into()])
    );
    server.shutdown().await;
    let server = common::start(&config(&state, &native(&zk.server()))).await;
    assert_eq!(members(&server, "web"), BTreeSet::from([c.addr, d.addr]));
    let front = server.local_addr("front").unwrap();
    assert_eq!(
        answers(front, 2).await,
        BTreeSet::from(["c".into(), "d".into()])
    );

    // ZooKeeper comes back with its data: followed again.
    zk.restart().await;
    zk.run(&[&format!("create /sy/web/e {}", e.addr)]).await;
    until("ZooKeeper back", Duration::from_secs(10), || {
        members(&server, "web") == BTreeSet::from([c.addr, d.addr, e.addr])
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_serverset_dubbo_and_protected_registries() {
    if !zookeeper::installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk")).await;
    let bs: Vec<Backend> = backends(["c1", "c2", "s1", "s2", "d1", "d2", "p1"]).await;
    let addr = |i: usize| bs[i].addr;
    let url = |i: usize, query: &str| {
        let raw = format!(
            "dubbo://{}/com.example.Api?anyhost=true&application=demo&interface=com.example.Api&side=provider{query}",
            addr(i)
        );
        percent_encoding::utf8_percent_encode(&raw, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    zk.run(&[
        "create /services \"\"",
        "create /services/web \"\"",
        "create /aurora \"\"",
        "create /aurora/web \"\"",
        "create /dubbo \"\"",
        "create /dubbo/com.example.Api \"\"",
        "create /dubbo/com.example.Api/providers \"\"",
        "addauth digest reader:s3cret",
        "create /secure \"\" auth::cdrwa",
        &format!("create /secure/p1 {} auth::cdrwa", addr(6)),
    ])
    .await;
    // Each registry as its clients write it: Curator's instance JSON under
    // the instance id, server-set members as ephemeral sequential nodes,
    // Dubbo providers as ephemeral nodes named by their URL.
    let mut svc = zk.session(4000);
    for (i, id) in [(0, "3f1c0d5e"), (1, "9a7b2c4d")] {
        svc.send(&format!(
            "create -e /services/web/{id} {{\"name\":\"web\",\"id\":\"{id}\",\"address\":\"{}\",\"port\":{},\"sslPort\":null,\"payload\":null,\"registrationTimeUTC\":1764000000000,\"serviceType\":\"DYNAMIC\",\"uriSpec\":null}}",
            addr(i).ip(),
            addr(i).port()
        ));
    }
    for (i, status) in [(2, "ALIVE"), (3, "STARTING")] {
        svc.send(&format!(
            "create -e -s /aurora/web/member_ {{\"serviceEndpoint\":{{\"host\":\"{}\",\"port\":{}}},\"additionalEndpoints\":{{\"aurora\":{{\"host\":\"{}\",\"port\":{}}}}},\"status\":\"{status}\",\"shard\":{i}}}",
            addr(i).ip(),
            addr(i).port(),
            addr(i).ip(),
            addr(i).port()
        ));
    }
    svc.send(&format!(
        "create -e /dubbo/com.example.Api/providers/{} 127.0.0.1",
        url(4, "&weight=200")
    ));
    svc.send(&format!(
        "create -e /dubbo/com.example.Api/providers/{} 127.0.0.1",
        url(5, "&disabled=true")
    ));
    svc.wait_for("Created /dubbo/com.example.Api/providers/")
        .await;

    std::fs::write(dir.path().join("digest"), "reader:s3cret\n").unwrap();
    std::fs::write(dir.path().join("wrong"), "reader:guess\n").unwrap();
    let s = zk.server();
    let pool = |name: &str, extra: &str| {
        format!("[pools.{name}]\n[pools.{name}.discovery]\nkind = \"zookeeper\"\nservers = [\"{s}\"]\n{extra}\n")
    };
    let pools = [
        pool("web", "path = \"/services/web\"\nformat = \"curator\""),
        pool("jobs", "path = \"/web\"\nchroot = \"/aurora\"\nformat = \"serverset\"\nendpoint = \"aurora\"\nallow_empty = true"),
        pool("api", "path = \"/dubbo/com.example.Api/providers\"\nformat = \"dubbo\""),
        pool("secure", &format!("path = \"/secure\"\ndigest_auth_file = \"{}\"", dir.path().join("digest").display())),
        pool("locked", &format!("path = \"/secure\"\ndigest_auth_file = \"{}\"", dir.path().join("wrong").display())),
    ]
    .concat();
    let listeners = "[[listeners]]\nname = \"jobs\"\nbind = \"127.0.0.1:0\"\npool = \"jobs\"\n\
                     [[listeners]]\nname = \"api\"\nbind = \"127.0.0.1:0\"\npool = \"api\"\n\
                     [[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\npool = \"secure\"\n";
    let server = common::start(&config(
        &dir.path().join("state"),
        &format!("{listeners}{pools}"),
    ))
    .await;
    until("every registry read", Duration::from_secs(10), || {
        members(&server, "web") == BTreeSet::from([addr(0), addr(1)])
            && members(&server, "jobs") == BTreeSet::from([addr(2)])
            && members(&server, "api") == BTreeSet::from([addr(4), addr(5)])
            && members(&server, "secure") == BTreeSet::from([addr(6)])
            && common::metric(
                &server.metrics().render(),
                "switchyard_discovery_updates_total{pool=\"locked\",result=\"error\"}",
            )
            .unwrap_or(0.0)
                >= 1.0
    })
    .await;
    let view = server.view();
    let snap = view.pools["web"].snapshot();
    let names: BTreeSet<String> = snap
        .members
        .iter()
        .map(|m| m.backend.name.to_string())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["3f1c0d5e".into(), "9a7b2c4d".into()])
    );
    assert_eq!(backend(&server, "api", addr(4)), Some((false, 200)));
    assert_eq!(backend(&server, "api", addr(5)), Some((true, 100)));
    assert!(members(&server, "locked").is_empty());
    assert!(
        value(
            &server,
            "switchyard_discovery_updates_total{pool=\"locked\",result=\"error\"}"
        ) >= 1.0
    );

    let ask = |l: &str| server.local_addr(l).unwrap();
    assert_eq!(
        answers(ask("front"), 4).await,
        BTreeSet::from(["c1".into(), "c2".into()])
    );
    assert_eq!(answers(ask("jobs"), 2).await, BTreeSet::from(["s1".into()]));
    assert_eq!(answers(ask("api"), 2).await, BTreeSet::from(["d1".into()]));
    assert_eq!(
        answers(ask("secure"), 1).await,
        BTreeSet::from(["p1".into()])
    );

    // The second server-set member becomes ALIVE, by its owner's write.
    svc.send(&format!(
        "set /aurora/web/member_0000000001 {{\"serviceEndpoint\":{{\"host\":\"{0}\",\"port\":{1}}},\"additionalEndpoints\":{{\"aurora\":{{\"host\":\"{0}\",\"port\":{1}}}}},\"status\":\"ALIVE\",\"shard\":3}}",
        addr(3).ip(),
        addr(3).port()
    ));
    until("a member come alive", Duration::from_secs(5), || {
        members(&server, "jobs") == BTreeSet::from([addr(2), addr(3)])
    })
    .await;
    // Another program's registry is not ours to write: 409, and why.
    let admin = server.admin_addr().await.unwrap();
    let (code, body) = post(
        admin,
        &format!("/api/v1/pools/web/backends/{}/drain", addr(0)),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("curator") && body.contains("their own services"),
        "{body}"
    );
    assert_eq!(backend(&server, "web", addr(0)), Some((false, 1)));

    // The services stop: their session closes and its members leave (a
    // pool that allows an empty set empties; the others keep the last).
    svc.send("quit");
    until(
        "the services' members to leave",
        Duration::from_secs(5),
        || members(&server, "jobs").is_empty(),
    )
    .await;
    assert_eq!(members(&server, "web").len(), 2);
    server.shutdown().await;
}

async fn backends<const N: usize>(names: [&str; N]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        out.push(Backend::start(n).await);
    }
    out
}
