//! The proxy end to end over loopback: distributions per strategy, byte-exact
//! relay, half-close, failure handling, and UDP sessions.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

async fn three() -> Vec<Backend> {
    vec![
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ]
}

fn tcp_config(strategy: &str, backends: &[Backend], weights: Option<&[u32]>) -> String {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nstrategy = \"{strategy}\"\nbackends = {}\n",
        backends_toml(&addrs, weights)
    )
}

/// A TCP listener `front` on port 0, with `listener_extra` keys, in front
/// of pool `p` (round robin over `backends`).
fn front(backends: &[std::net::SocketAddr], listener_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n{listener_extra}\n\
         [pools.p]\nbackends = {}\n",
        backends_toml(backends, None)
    )
}

async fn count_picks(
    front: std::net::SocketAddr,
    n: usize,
) -> (Vec<String>, HashMap<String, usize>) {
    let mut order = Vec::new();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let name = ask(front).await;
        *counts.entry(name.clone()).or_insert(0) += 1;
        order.push(name);
    }
    (order, counts)
}

#[tokio::test]
async fn round_robin_is_exact_over_300_connections() {
    let b = three().await;
    let server = start(&tcp_config("round_robin", &b, None)).await;
    let front = server.local_addr("front").unwrap();
    let (order, counts) = count_picks(front, 300).await;
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    // Strict rotation: every window of three names each backend once.
    for w in order.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["a", "b", "c"]);
    }
}

#[tokio::test]
async fn weighted_gives_each_backend_its_weight_per_cycle() {
    let b = three().await;
    let server = start(&tcp_config("weighted", &b, Some(&[1, 2, 3]))).await;
    let front = server.local_addr("front").unwrap();
    let (order, counts) = count_picks(front, 600).await;
    assert_eq!((counts["a"], counts["b"], counts["c"]), (100, 200, 300));
    for cycle in order.chunks(6) {
        let n = |x: &str| cycle.iter().filter(|c| *c == x).count();
        assert_eq!((n("a"), n("b"), n("c")), (1, 2, 3), "{cycle:?}");
        // Smooth: the heaviest never takes three in a row.
        assert!(
            cycle.windows(3).all(|w| !w.iter().all(|c| c == "c")),
            "{cycle:?}"
        );
    }
}

#[tokio::test]
async fn random_is_within_statistical_bounds() {
    let b = three().await;
    let server = start(&tcp_config("random", &b, None)).await;
    let front = server.local_addr("front").unwrap();
    let (_, counts) = count_picks(front, 600).await;
    // Binomial(600, 1/3): mean 200, sd 11.5; 5 sd either side.
    for name in ["a", "b", "c"] {
        let c = counts.get(name).copied().unwrap_or(0);
        assert!((142..=258).contains(&c), "{counts:?}");
    }
}

#[tokio::test]
async fn sixty_four_mib_each_way_arrive_byte_exact_with_splice() {
    sixty_four_mib(true).await;
}

#[tokio::test]
async fn sixty_four_mib_each_way_arrive_byte_exact_by_copy() {
    sixty_four_mib(false).await;
}

async fn sixty_four_mib(zero_copy: bool) {
    let echo = echo_raw().await;
    let server = start(&front(&[echo], &format!("zero_copy = {zero_copy}"))).await;
    let front = server.local_addr("front").unwrap();
    let stream = TcpStream::connect(front).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    const TOTAL: usize = 64 << 20;
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut chunk = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            // xorshift: cheap pseudo-random bytes, different in every chunk.
            for b in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b.copy_from_slice(&state.to_le_bytes()[..b.len()]);
            }
            w.write_all(&chunk).await.unwrap();
            hash.update(&chunk);
            sent += chunk.len();
        }
        w.shutdown().await.unwrap();
        hash.finalize()
    });
    let mut hash = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), r.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n;
    }
    let sent = writer.await.unwrap();
    assert_eq!(got, TOTAL);
    assert_eq!(
        sent,
        hash.finalize(),
        "the echoed bytes differ from those sent"
    );
    wait_metric(
        &server,
        "switchyard_listener_bytes_total{direction=\"out\",listener=\"front\"}",
        TOTAL as f64,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        value(
            &server,
            "switchyard_listener_bytes_total{direction=\"in\",listener=\"front\"}"
        ),
        TOTAL as f64
    );
    let switched = value(
        &server,
        "switchyard_listener_zero_copy_total{listener=\"front\"}",
    );
    if zero_copy {
        assert!(switched >= 1.0, "a 64 MiB flow must move by splice");
    } else {
        assert_eq!(switched, 0.0, "zero_copy = false never splices");
    }
}

#[tokio::test]
async fn half_close_lets_a_late_reply_through() {
    half_close(5000).await;
}

#[tokio::test]
async fn half_close_after_a_bulk_upload_lets_a_late_reply_through() {
    // Eight MiB: enough for full 64 KiB reads, so the upload moves by splice.
    half_close(8 << 20).await;
}

async fn half_close(size: usize) {
    // The backend answers only after the client's EOF, with the byte count.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let server = start(&front(&[addr], "")).await;
    let mut s = TcpStream::connect(server.local_addr("front").unwrap())
        .await
        .unwrap();
    s.write_all(&vec![7u8; size]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, format!("got {size} bytes"));
    // The path this test names was the one taken: splice for a bulk upload
    // (its 64 KiB reads fill the buffer), copying for a short one.
    wait_idle(&server, "front").await;
    let spliced = value(
        &server,
        "switchyard_listener_zero_copy_total{listener=\"front\"}",
    );
    if size >= 1 << 20 {
        assert_eq!(spliced, 1.0, "the upload moved by splice");
    } else {
        assert_eq!(spliced, 0.0, "a short upload never pays for a pipe");
    }
}

#[tokio::test]
async fn a_failed_connect_closes_the_client_and_is_counted() {
    // A port that was just free: nothing listens there.
    let dead = dead_addr();
    let server = start(&front(&[dead], "")).await;
    let mut s = TcpStream::connect(server.local_addr("front").unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(
        value(
            &server,
            "switchyard_listener_no_backend_total{listener=\"front\"}"
        ),
        1.0
    );
    let refused = format!("switchyard_backend_connect_failures_total{{backend=\"{dead}\",pool=\"p\",reason=\"refused\"}}");
    assert_eq!(value(&server, &refused), 1.0);
}

fn udp_config(backends: &[Backend], extra: &str) -> String {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    format!(
        "[[listeners]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n{extra}\n\
         [pools.p]\nstrategy = \"round_robin\"\nbackends = {}\n",
        backends_toml(&addrs, None)
    )
}

async fn udp_ask(s: &UdpSocket, front: std::net::SocketAddr, msg: &str) -> String {
    s.send_to(msg.as_bytes(), front).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("udp reply in time")
        .unwrap();
    assert_eq!(from, front, "replies come from the listener's address");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

// Two worker threads: the listener gets two SO_REUSEPORT receive loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_are_sticky_and_spread() {
    let b = three().await;
    let server = start(&udp_config(&b, "")).await;
    let front = server.local_addr("u").unwrap();
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    // Every client socket stays open to the end, so no two clients can share
    // a source port (a closed one's port may be handed out again).
    let mut clients = Vec::new();
    for client in 0..30 {
        clients.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let s = clients.last().unwrap();
        let mut names = Vec::new();
        for i in 0..5 {
            let reply = udp_ask(s, front, &format!("c{client} m{i}")).await;
            let (name, echoed) = reply.split_once(": ").unwrap();
            assert_eq!(echoed, format!("c{client} m{i}"));
            names.push(name.to_string());
        }
        assert!(
            names.iter().all(|n| n == &names[0]),
            "client {client} moved: {names:?}"
        );
        *per_backend.entry(names[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(
        per_backend.len(),
        3,
        "every backend got clients: {per_backend:?}"
    );
    assert!(per_backend.values().all(|&n| n == 10), "{per_backend:?}");
    assert_eq!(
        value(&server, "switchyard_udp_sessions{listener=\"u\"}"),
        30.0
    );
    assert_eq!(
        value(
            &server,
            "switchyard_udp_datagrams_total{direction=\"in\",listener=\"u\"}"
        ),
        150.0
    );
    // A burst of 200 from one client, answered as fast as the backend goes:
    // the loops count in batches, and every count is exact once they wait.
    let s = &clients[0];
    let mut sent = 0usize;
    for i in 0..200 {
        let msg = format!("burst {i}");
        sent += msg.len();
        s.send_to(msg.as_bytes(), front).await.unwrap();
    }
    let mut replied = 0usize;
    let mut buf = [0u8; 1500];
    for _ in 0..200 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .expect("every reply of the burst in time")
            .unwrap();
        replied += n;
    }
    // Before it: 150 replies, each the backend's name, ": " and the message.
    let before: usize = (0..30)
        .flat_map(|c| (0..5).map(move |i| 1 + 2 + format!("c{c} m{i}").len()))
        .sum();
    common::wait_metric(
        &server,
        "switchyard_udp_datagrams_total{direction=\"out\",listener=\"u\"}",
        350.0,
        Duration::from_secs(5),
    )
    .await;
    let out_bytes = "switchyard_listener_bytes_total{direction=\"out\",listener=\"u\"}";
    assert_eq!(value(&server, out_bytes), (before + replied) as f64);
    let backends_in: f64 = b
        .iter()
        .map(|x| {
            value(
                &server,
                &format!(
                    "switchyard_backend_bytes_total{{backend=\"{}\",direction=\"in\",pool=\"p\"}}",
                    x.addr
                ),
            )
        })
        .sum();
    assert_eq!(backends_in, (before + replied) as f64);
    assert_eq!(
        value(
            &server,
            "switchyard_udp_datagrams_total{direction=\"in\",listener=\"u\"}"
        ),
        350.0
    );
    let asked: usize = (0..30)
        .flat_map(|c| (0..5).map(move |i| format!("c{c} m{i}").len()))
        .sum();
    assert_eq!(
        value(
            &server,
            "switchyard_listener_bytes_total{direction=\"in\",listener=\"u\"}"
        ),
        (asked + sent) as f64
    );
}

// Two worker threads: the listener gets two SO_REUSEPORT receive loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_session_table_stays_within_max_sessions() {
    let b = three().await;
    // Every client here is 127.0.0.1: the per-address bound is lifted to the
    // table's, so this is the table bound alone.
    let server = start(&udp_config(
        &b,
        "max_sessions = 100\nmax_sessions_per_ip = 100",
    ))
    .await;
    let front = server.local_addr("u").unwrap();
    let mut sockets = Vec::new();
    // Paced in batches of 100, each received before the next is sent, so no
    // datagram is lost to a full socket buffer on a busy machine.
    for batch in 1..=30 {
        for _ in 0..100 {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"hello", front).unwrap();
            sockets.push(s);
        }
        wait_metric(
            &server,
            "switchyard_udp_datagrams_total{direction=\"in\",listener=\"u\"}",
            (batch * 100) as f64,
            Duration::from_secs(10),
        )
        .await;
    }
    assert_eq!(
        value(&server, "switchyard_udp_sessions{listener=\"u\"}"),
        100.0
    );
    assert_eq!(
        value(&server, "switchyard_udp_sessions_total{listener=\"u\"}"),
        100.0
    );
    assert_eq!(
        value(
            &server,
            "switchyard_udp_dropped_total{listener=\"u\",reason=\"table_full\"}"
        ),
        2900.0
    );
}

/// One host with many source ports cannot take every session: by default it
/// may hold a quarter of `max_sessions`, and other hosts are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_take_every_udp_session() {
    let b = three().await;
    let server = start(&udp_config(&b, "max_sessions = 100")).await;
    let front = server.local_addr("u").unwrap();
    let mut sockets = Vec::new();
    for _ in 0..100 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"hello", front).unwrap();
        sockets.push(s);
    }
    let dropped = "switchyard_udp_dropped_total{listener=\"u\",reason=\"ip_limit\"}";
    wait_metric(&server, dropped, 75.0, Duration::from_secs(10)).await;
    assert_eq!(
        value(&server, "switchyard_udp_sessions{listener=\"u\"}"),
        25.0
    );
    // Another host gets a session at once.
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let reply = udp_ask(&other, front, "me too").await;
    assert!(reply.ends_with(": me too"), "{reply}");
    assert_eq!(
        value(
            &server,
            "switchyard_udp_dropped_total{listener=\"u\",reason=\"table_full\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn udp_sessions_expire_when_idle() {
    let b = three().await;
    let server = start(&udp_config(&b, "idle_timeout = \"200ms\"")).await;
    let front = server.local_addr("u").unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let first = udp_ask(&s, front, "one").await;
    assert_eq!(
        value(&server, "switchyard_udp_sessions{listener=\"u\"}"),
        1.0
    );
    wait_metric(
        &server,
        "switchyard_udp_sessions{listener=\"u\"}",
        0.0,
        Duration::from_secs(5),
    )
    .await;
    // A new session is a new pick: round robin moves on to the next backend.
    let second = udp_ask(&s, front, "two").await;
    assert_ne!(first.split(':').next(), second.split(':').next());
    assert_eq!(
        value(&server, "switchyard_udp_sessions_total{listener=\"u\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_runs_one_socket_per_worker_and_serves() {
    let b = three().await;
    let text = tcp_config("round_robin", &b, None)
        .replace("access_log = false", "reuse_port = true\nbacklog = 4096");
    let server = start(&text).await;
    let front = server.local_addr("front").unwrap();
    assert_ne!(front.port(), 0);
    assert_eq!(
        listening_sockets(front.port()),
        2,
        "one socket per worker thread"
    );
    let (_, counts) = count_picks(front, 60).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&c| c == 20), "{counts:?}");
}

/// TCP sockets listening on `port` in this network namespace.
fn listening_sockets(port: u16) -> usize {
    common::tcp_sockets(true)
        .iter()
        .filter(|s| s.local.port() == port && s.state == "0A")
        .count()
}

/// With `reuse_port` each socket has its own queue, and `max_connections`
/// bounds them together: a client is served whichever socket the kernel
/// puts it on, and the limit is counted only when a client really waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_and_max_connections_serve_every_socket() {
    let b = three().await;
    let text = tcp_config("round_robin", &b, None).replace(
        "access_log = false",
        "reuse_port = true\nmax_connections = 1",
    );
    let server = start(&text).await;
    let front = server.local_addr("front").unwrap();
    assert_eq!(listening_sockets(front.port()), 2);
    let limit = "switchyard_listener_rejected_total{listener=\"front\",reason=\"limit\"}";
    // One client at a time, each on a fresh source port (so on either socket).
    for i in 0..20 {
        let name = tokio::time::timeout(Duration::from_secs(5), ask(front))
            .await
            .unwrap_or_else(|_| panic!("client {i} waited while the listener was under its limit"));
        assert!(!name.is_empty());
        wait_idle(&server, "front").await;
    }
    assert_eq!(
        value(&server, limit),
        0.0,
        "nobody ever waited at the limit"
    );
    // Now one is held open and a second must wait: that is counted.
    let mut held = TcpStream::connect(front).await.unwrap();
    held.write_all(b"who\n").await.unwrap();
    let mut buf = [0u8; 64];
    let _ = held.read(&mut buf).await.unwrap();
    let second = tokio::spawn(ask(front));
    wait_metric(&server, limit, 1.0, Duration::from_secs(5)).await;
    assert!(!second.is_finished());
    drop(held);
    let name = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served once the first closed")
        .unwrap();
    assert!(!name.is_empty());
}

#[tokio::test]
async fn a_dead_udp_backend_is_taken_out_and_its_clients_move() {
    let live = Backend::start("live").await;
    // A UDP port with nothing behind it answers with ICMP port unreachable.
    let dead = dead_addr();
    let text = format!(
        "[[listeners]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]\nmax_fails = 1\n",
        live.addr
    );
    let server = start(&text).await;
    let front = server.local_addr("u").unwrap();
    // Round robin sends the first client to the dead backend.
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(b"lost", front).await.unwrap();
    let refused = format!("switchyard_backend_connect_failures_total{{backend=\"{dead}\",pool=\"p\",reason=\"refused\"}}");
    wait_metric(&server, &refused, 1.0, Duration::from_secs(5)).await;
    // Its next datagram starts a new session on the live backend.
    assert_eq!(udp_ask(&s, front, "again").await, "live: again");
}

#[tokio::test]
async fn ipv6_loopback_works_end_to_end() {
    let l = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            let _ = s
                .write_all(format!("hello {}\n", peer.ip()).as_bytes())
                .await;
        }
    });
    let server = start(&format!(
        "[[listeners]]\nname = \"v6\"\nbind = \"[::1]:0\"\npool = \"p\"\nallow = [\"::1/128\"]\n[pools.p]\nbackends = [{{ addr = \"{addr}\" }}]\n"
    ))
    .await;
    let front = server.local_addr("v6").unwrap();
    assert!(front.is_ipv6());
    let mut s = TcpStream::connect(front).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(reply, "hello ::1\n");
}

#[tokio::test]
async fn failed_connects_are_not_counted_as_connections() {
    let a = Backend::start("a").await;
    let dead = dead_addr();
    let server = start(&front(&[dead, a.addr], "")).await;
    assert_eq!(ask(server.local_addr("front").unwrap()).await, "a");
    let total = |b: std::net::SocketAddr| {
        value(
            &server,
            &format!("switchyard_backend_connections_total{{backend=\"{b}\",pool=\"p\"}}"),
        )
    };
    assert_eq!((total(dead), total(a.addr)), (0.0, 1.0));
}

/// Reads until EOF or an error; returns the bytes and whether a reset ended it.
fn read_to_end_or_reset(s: &mut std::net::TcpStream) -> (usize, bool) {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut total, mut buf) = (0, [0u8; 16384]);
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total, false),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (total, true),
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

#[test]
fn a_backend_reset_reaches_the_client_as_a_reset() {
    use std::io::Write;
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        s.write_all(&[7u8; 16]).unwrap();
        reset(s);
    });
    let daemon = daemon::Daemon::start(&front(&[addr], ""), &[], &[]);
    let mut client = std::net::TcpStream::connect(daemon.listeners()["front"]).unwrap();
    let (bytes, was_reset) = read_to_end_or_reset(&mut client);
    assert_eq!(bytes, 16, "the bytes before the reset arrive");
    assert!(
        was_reset,
        "a clean EOF would tell the client the reply was complete"
    );
    daemon.wait_log("access line", Duration::from_secs(5), |v| {
        v["message"] == "tcp connection" && v["end"] == "backend_reset"
    });
}

#[test]
fn a_client_reset_reaches_the_backend_as_a_reset() {
    use std::io::Write;
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        tx.send(read_to_end_or_reset(&mut s)).unwrap();
    });
    let daemon = daemon::Daemon::start(&front(&[addr], ""), &[], &[]);
    let mut client = std::net::TcpStream::connect(daemon.listeners()["front"]).unwrap();
    // Past the 64 KiB that switches a direction to splice, so both paths count.
    client.write_all(&vec![1u8; 100_000]).unwrap();
    reset(client);
    let (bytes, was_reset) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(bytes <= 100_000);
    assert!(
        was_reset,
        "an aborted upload must not look complete to the backend ({bytes} bytes then EOF)"
    );
    daemon.wait_log("access line", Duration::from_secs(5), |v| {
        v["message"] == "tcp connection" && v["end"] == "client_reset"
    });
}

/// A UDP listener on a wildcard address replies from the address each
/// client sent to: a client that connected its socket to 127.0.0.3 (as most
/// DNS stubs connect to their server) only accepts replies from there.
/// (Only loopback traffic reaches the listener here: the clients send to
/// 127.0.0.0/8 alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_replies_leave_from_the_address_the_client_sent_to() {
    let b = three().await;
    let text = udp_config(&b, "").replace("127.0.0.1:0", "0.0.0.0:0");
    let server = start(&text).await;
    let port = server.local_addr("u").unwrap().port();
    for (i, dst) in ["127.0.0.3", "127.0.0.1", "127.0.0.9"].iter().enumerate() {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect((*dst, port)).await.unwrap();
        s.send(format!("hello {i}").as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no reply from {dst}: it left from another address"))
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with(&format!(": hello {i}")));
    }
}

/// The kernel's timer field (`tr` in /proc/net/tcp: 2 is keepalive) of the
/// TCP socket from `local` port to `remote` port, if there is one.
fn tcp_timer(local: u16, remote: u16) -> Option<String> {
    common::tcp_sockets(false)
        .into_iter()
        .find(|s| s.local.port() == local && s.remote_port == remote)
        .map(|s| s.timer)
}

/// A vanished peer must not hold its descriptors for the whole idle timeout:
/// keepalive is on, by default, on both sides of a proxied connection.
#[tokio::test]
async fn keepalive_is_on_both_sides_and_can_be_turned_off() {
    let a = Backend::start("a").await;
    let text = format!(
        "[[listeners]]\nname = \"ka\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\ntcp_keepalive = \"30s\"\n\
         [[listeners]]\nname = \"off\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\ntcp_keepalive = \"0s\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let server = start(&text).await;
    for (listener, want) in [("ka", "02"), ("off", "00")] {
        let front = server.local_addr(listener).unwrap();
        let mut c = TcpStream::connect(front).await.unwrap();
        c.write_all(b"who\n").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = c.read(&mut buf).await.unwrap();
        let client_port = c.local_addr().unwrap().port();
        // Keepalive's timer, or (turned off) any other: a retransmit timer
        // can be on for a moment on a busy machine.
        let timer = tcp_timer(front.port(), client_port);
        assert!(
            timer
                .as_deref()
                .is_some_and(|t| (t == "02") == (want == "02")),
            "{listener}: the proxy's client-side socket shows timer {timer:?}"
        );
        // The proxy's socket to the backend: keepalive by the pool's default,
        // turned on once the connection has lived a second.
        let what = format!("{listener}: a backend-side socket with keepalive");
        wait_for(&what, Duration::from_secs(5), || {
            backend_side_timer(a.addr.port(), "02")
        })
        .await;
    }
}

/// The timers of the established sockets to `backend_port`, from
/// /proc/net/tcp (`00` none, `01` retransmit or loss probe, `02` keepalive).
fn backend_side_timers(backend_port: u16) -> Vec<String> {
    common::tcp_sockets(false)
        .into_iter()
        .filter(|s| s.remote_port == backend_port && s.state == "01")
        .map(|s| s.timer)
        .collect()
}

/// Whether an established socket to `backend_port` shows the timer `want`.
fn backend_side_timer(backend_port: u16, want: &str) -> bool {
    backend_side_timers(backend_port).iter().any(|t| t == want)
}

/// A connection that ends within its first second never has keepalive
/// turned on for its backend socket (no probe could have been due): the
/// four `setsockopt` calls are saved on every short connection.
#[tokio::test]
async fn a_short_connection_skips_backend_keepalive() {
    // A look at the socket later than a second after the connect proves
    // nothing. The workers are shared with this binary's other tests (the
    // 64 MiB transfers among them), so a look can come late: a late try is
    // made again a moment later (with a backend of its own, so an earlier
    // try's socket is never the one looked at), for up to 30 s and 20 tries.
    let mut late = Vec::new();
    let began = Instant::now();
    while late.len() < 20 && began.elapsed() < Duration::from_secs(30) {
        let a = Backend::start("a").await;
        let text = format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pools.p]\ntcp_keepalive = \"30s\"\nbackends = [{{ addr = \"{}\" }}]\n",
            a.addr
        );
        let server = start(&text).await;
        let front = server.local_addr("l").unwrap();
        let born = Instant::now();
        let mut c = TcpStream::connect(front).await.unwrap();
        c.write_all(b"who\n").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = c.read(&mut buf).await.unwrap();
        // Keepalive's timer is not on (a retransmit or loss-probe timer may
        // be, for a moment, on a busy machine).
        let timers = backend_side_timers(a.addr.port());
        let looked = born.elapsed();
        if looked >= Duration::from_millis(900) {
            late.push(looked);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        assert!(
            !timers.is_empty() && !timers.iter().any(|t| t == "02"),
            "keepalive was on before the connection had lived a second: {timers:?}"
        );
        // Past its first second, the same connection has it.
        wait_for(
            "keepalive on a connection past its first second",
            Duration::from_secs(5),
            || backend_side_timer(a.addr.port(), "02"),
        )
        .await;
        return;
    }
    panic!("every look at the socket came too late to tell: {late:?} after the connect");
}

/// Sends a line and reads the answer; `None` when the proxy closed instead.
async fn answer(s: &mut TcpStream) -> Option<String> {
    reply(s, b"who\n").await
}

#[tokio::test]
async fn per_address_limits_refuse_one_client_and_serve_the_others() {
    let b = three().await;
    let paced_listener = tcp_config("round_robin", &b, None)
        .replace("name = \"front\"", "name = \"paced\"")
        .replace(
            "access_log = false",
            "connection_rate_per_ip = 0.5\nconnection_burst_per_ip = 3",
        );
    let text = tcp_config("round_robin", &b, None)
        .replace("access_log = false", "max_connections_per_ip = 2")
        + paced_listener.split("[pools.p]").next().unwrap();
    let server = start(&text).await;
    let (front, paced) = (
        server.local_addr("front").unwrap(),
        server.local_addr("paced").unwrap(),
    );
    // Two open from one address; its third is refused, another address is served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.5", front).await;
        assert!(answer(&mut s).await.is_some());
        held.push(s);
    }
    let mut third = connect_from("127.0.0.5", front).await;
    assert_eq!(
        answer(&mut third).await,
        None,
        "a third connection from one address"
    );
    let mut other = connect_from("127.0.0.6", front).await;
    assert!(
        answer(&mut other).await.is_some(),
        "another address is served"
    );
    assert_eq!(
        value(
            &server,
            "switchyard_listener_rejected_total{listener=\"front\",reason=\"ip_limit\"}"
        ),
        1.0
    );
    drop(held.pop());
    wait_metric(
        &server,
        "switchyard_listener_active_connections{listener=\"front\"}",
        2.0,
        Duration::from_secs(5),
    )
    .await;
    let mut again = connect_from("127.0.0.5", front).await;
    assert!(
        answer(&mut again).await.is_some(),
        "a closed connection frees a place"
    );

    // A burst of three from one address, then refused until tokens come back
    // (one per 2 s); another address has its own bucket.
    for i in 0..3 {
        let mut s = connect_from("127.0.0.7", paced).await;
        assert!(answer(&mut s).await.is_some(), "burst connection {i}");
    }
    let mut fourth = connect_from("127.0.0.7", paced).await;
    assert_eq!(answer(&mut fourth).await, None, "past the burst");
    let mut other = connect_from("127.0.0.8", paced).await;
    assert!(answer(&mut other).await.is_some());
    assert_eq!(
        value(
            &server,
            "switchyard_listener_rejected_total{listener=\"paced\",reason=\"ip_rate\"}"
        ),
        1.0
    );
}

/// Two instances with the same backends pick the same backend for the same
/// client (Maglev), for TCP and UDP, without talking to each other; and
/// one client always gets the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_instances_agree_on_every_client() {
    let b = three().await;
    let text = udp_config(&b, "").replace("strategy = \"round_robin\"", "strategy = \"maglev\"")
        + "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n";
    let one = start(&text).await;
    // The other lists the backends in another order: the table is the same.
    let addrs: Vec<_> = b.iter().rev().map(|x| x.addr).collect();
    let other_text = text.replace(
        &backends_toml(&b.iter().map(|x| x.addr).collect::<Vec<_>>(), None),
        &backends_toml(&addrs, None),
    );
    assert_ne!(other_text, text);
    let two = start(&other_text).await;
    let mut spread: HashMap<String, usize> = HashMap::new();
    for i in 0..60u8 {
        let from = format!("127.0.{}.{}", 10 + i / 50, 1 + i % 50);
        let mut names = Vec::new();
        for server in [&one, &two] {
            for _ in 0..2 {
                let mut s = connect_from(&from, server.local_addr("t").unwrap()).await;
                let name = answer(&mut s).await.expect("served");
                names.push(name.split(':').next().unwrap().to_string());
            }
            let u = UdpSocket::bind(format!("{from}:0")).await.unwrap();
            let reply = udp_ask(&u, server.local_addr("u").unwrap(), "q").await;
            names.push(reply.split(':').next().unwrap().to_string());
        }
        assert!(
            names.iter().all(|n| n == &names[0]),
            "client {from}: {names:?}"
        );
        *spread.entry(names[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(spread.len(), 3, "every backend has clients: {spread:?}");
}
