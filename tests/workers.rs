//! The data plane on production's threads (one worker per core, which
//! `Server::start` starts as the binary does): a listener without
//! `reuse_port` whose one socket every worker watches, per-address UDP
//! limits held across the workers' sockets, and a PROXY-and-SNI listener
//! whose connections land on several workers.

mod common;

use std::time::Duration;

use common::{reply, start, value, wait_idle, wait_metric, Backend};
use tokio::net::{TcpStream, UdpSocket};

/// How many workers the daemon runs here: one per core, at least one.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sends `bytes`, reads the answer.
async fn exchange(s: &mut TcpStream, bytes: &[u8]) -> String {
    reply(s, bytes).await.expect("an answer, not a close")
}

/// With `reuse_port = false` the one listening socket is watched by every
/// worker (copies of it); a burst of concurrent clients is served whole and
/// every connection is counted and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_without_reuse_port_serves_every_client() {
    let b = Backend::start("b").await;
    let server = start(&format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\nreuse_port = false\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        b.addr
    ))
    .await;
    assert!(switchyard::workers::started());
    assert_eq!(switchyard::workers::count(), cores());
    let front = server.local_addr("front").unwrap();
    let clients: Vec<_> = (0..64)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(front).await.unwrap();
                exchange(&mut s, format!("c{i}\n").as_bytes()).await
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.await.unwrap(), format!("b: c{i}\n"));
    }
    wait_idle(&server, "front").await;
    assert_eq!(
        value(
            &server,
            "switchyard_listener_connections_total{listener=\"front\"}"
        ),
        64.0
    );
}

/// `max_sessions_per_ip` holds for one address whatever worker's socket
/// the kernel gives each of its source ports: eight ports from one
/// address, two sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_per_address_limits_hold_across_worker_sockets() {
    let b = Backend::start("b").await;
    let server = start(&format!(
        "[[listeners]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         max_sessions_per_ip = 2\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        b.addr
    ))
    .await;
    let front = server.local_addr("u").unwrap();
    let mut answered = 0;
    let mut sockets = Vec::new();
    for i in 0..8 {
        let s = UdpSocket::bind("127.0.0.9:0").await.unwrap();
        s.send_to(format!("q{i}").as_bytes(), front).await.unwrap();
        sockets.push(s);
    }
    let dropped = "switchyard_udp_dropped_total{listener=\"u\",reason=\"ip_limit\"}";
    wait_metric(&server, dropped, 6.0, Duration::from_secs(5)).await;
    for s in &sockets {
        let mut buf = [0u8; 64];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await
        {
            answered += 1;
        }
    }
    assert_eq!(answered, 2, "sessions for one address across the workers");
    assert_eq!(value(&server, dropped), 6.0);
}

/// A listener that reads a PROXY header and then looks for a ClientHello,
/// under concurrent clients spread over the workers: each is routed by
/// what it sent, and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_sni_listener_on_several_workers() {
    let (plain, api) = (Backend::start("plain").await, Backend::start("api").await);
    let server = start(&format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"plain\"\naccess_log = false\n\
         accept_proxy = true\nproxy_trusted = [\"127.0.0.0/8\"]\n\
         [[listeners.routes]]\nsni = [\"api.example.com\"]\npool = \"api\"\n\
         [pools.plain]\nbackends = [{{ addr = \"{}\" }}]\n\
         [pools.api]\nbackends = [{{ addr = \"{}\" }}]\n",
        plain.addr, api.addr
    ))
    .await;
    let front = server.local_addr("front").unwrap();
    let clients: Vec<_> = (0..48u8)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(front).await.unwrap();
                let hello = format!(
                    "PROXY TCP4 10.0.0.{i} 127.0.0.1 {} 80\r\nc{i}\n",
                    1000 + u16::from(i)
                );
                exchange(&mut s, hello.as_bytes()).await
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.await.unwrap(), format!("plain: c{i}\n"));
    }
    assert_eq!(
        value(
            &server,
            "switchyard_listener_inspected_total{listener=\"front\",result=\"not_tls\"}"
        ),
        48.0
    );
    assert_eq!(
        value(
            &server,
            "switchyard_listener_connections_total{listener=\"front\"}"
        ),
        48.0
    );
}

/// `workers = 3` and `cpu_affinity = true` in the real binary: three worker
/// threads, each allowed on one core only, in turn over the cores the
/// process may use; without `cpu_affinity` each may run anywhere.
#[test]
fn workers_and_cpu_affinity_shape_the_binarys_threads() {
    use common::daemon::Daemon;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(Backend::start("b"));
    let allowed = |pid: u32| -> Vec<String> {
        let mut out = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let t = t.unwrap().path();
            let comm = std::fs::read_to_string(t.join("comm")).unwrap();
            if !comm.starts_with("switchyard-w") {
                continue;
            }
            let status = std::fs::read_to_string(t.join("status")).unwrap();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            out.push(format!("{} {cpus}", comm.trim()));
        }
        out.sort();
        out
    };
    let mine = std::fs::read_to_string("/proc/self/status").unwrap();
    let all = mine
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let cores: Vec<usize> = {
        let mut v = Vec::new();
        for part in all.split(',') {
            match part.split_once('-') {
                Some((a, z)) => v.extend(a.parse::<usize>().unwrap()..=z.parse().unwrap()),
                None => v.push(part.parse().unwrap()),
            }
        }
        v
    };
    let text = |pin: bool| {
        format!(
            "workers = 3\ncpu_affinity = {pin}\n[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
            b.addr
        )
    };
    let pinned = Daemon::start(&text(true), &[], &[]);
    let want: Vec<String> = (0..3)
        .map(|i| format!("switchyard-w{i} {}", cores[i % cores.len()]))
        .collect();
    assert_eq!(allowed(pinned.child.id()), want);
    drop(pinned);
    let free = Daemon::start(&text(false), &[], &[]);
    let want: Vec<String> = (0..3).map(|i| format!("switchyard-w{i} {all}")).collect();
    assert_eq!(allowed(free.child.id()), want);
    drop(free);
    drop(b);
}
