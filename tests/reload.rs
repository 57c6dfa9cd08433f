//! Reload through the library: what a reload keeps (UDP sessions, sockets,
//! connections on removed listeners and backends) and what it changes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use switchyard::{Config, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

fn config(listeners: &[(&str, &str, SocketAddr)], backends: &[SocketAddr]) -> Config {
    let mut text = String::from("shutdown_grace = \"30s\"\n");
    for (name, proto, bind) in listeners {
        text.push_str(&format!(
            "[[listeners]]\nname = \"{name}\"\nprotocol = \"{proto}\"\nbind = \"{bind}\"\npool = \"p\"\n"
        ));
    }
    text.push_str(&format!(
        "[pools.p]\nbackends = {}\n",
        backends_toml(backends, None)
    ));
    Config::parse(&text, Path::new("reload.toml")).unwrap()
}

async fn line(r: &mut BufReader<TcpStream>, w_msg: &str) -> String {
    r.get_mut()
        .write_all(format!("{w_msg}\n").as_bytes())
        .await
        .unwrap();
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut l))
        .await
        .unwrap()
        .unwrap();
    l
}

#[tokio::test]
async fn a_reload_keeps_connections_on_removed_listeners_and_backends_and_moves_udp_sessions() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(config(
        &[("t", "tcp", any), ("old", "tcp", any), ("u", "udp", any)],
        &[a.addr],
    ))
    .await
    .unwrap();
    let (t, old, u) = (
        server.local_addr("t").unwrap(),
        server.local_addr("old").unwrap(),
        server.local_addr("u").unwrap(),
    );

    // A UDP session and a TCP connection on the listener about to go, both on `a`.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"one", u).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(&buf[..n], b"a: one");
    let mut on_old = BufReader::new(TcpStream::connect(old).await.unwrap());
    assert_eq!(line(&mut on_old, "x").await, "a: x\n");

    // Remove listener `old` and backend `a`; add `b`.
    server
        .reload(config(&[("t", "tcp", any), ("u", "udp", any)], &[b.addr]))
        .await
        .unwrap();
    assert_eq!(
        server.local_addr("t"),
        Some(t),
        "kept listener, kept socket"
    );
    assert_eq!(server.local_addr("u"), Some(u));
    assert_eq!(
        ask(t).await,
        "b",
        "pool changes apply to new connections at once"
    );

    // The established connection on the removed listener runs on, to the removed backend.
    assert_eq!(line(&mut on_old, "y").await, "a: y\n");
    wait_for(
        "the removed listener to refuse",
        Duration::from_secs(5),
        || std::net::TcpStream::connect(old).is_err(),
    )
    .await;

    // The UDP session was on the removed backend: the client's next
    // datagram re-picks, onto `b`, as a new session.
    client.send_to(b"two", u).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"b: two");
    assert_eq!(
        value(&server, "switchyard_udp_sessions_total{listener=\"u\"}"),
        2.0
    );
    // The removed backend's series are gone from /metrics.
    assert!(!server
        .metrics()
        .render()
        .contains(&format!("backend=\"{}\"", a.addr)));
    // A reload that keeps its backend keeps the session: same backend, no new one.
    server
        .reload(config(
            &[("t", "tcp", any), ("u", "udp", any)],
            &[b.addr, a.addr],
        ))
        .await
        .unwrap();
    client.send_to(b"three", u).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"b: three");
    assert_eq!(
        value(&server, "switchyard_udp_sessions_total{listener=\"u\"}"),
        2.0
    );
    // Series of the removed listener are gone from /metrics.
    let text = server.metrics().render();
    assert!(!text.contains("listener=\"old\""));
}

#[tokio::test]
async fn a_removed_listeners_connections_end_after_the_grace() {
    let a = Backend::start("a").await;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut first = config(&[("t", "tcp", any), ("old", "tcp", any)], &[a.addr]);
    first.shutdown_grace = Duration::from_millis(200);
    let server = Server::start(first).await.unwrap();
    let mut on_old = BufReader::new(
        TcpStream::connect(server.local_addr("old").unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(line(&mut on_old, "x").await, "a: x\n");
    let mut next = config(&[("t", "tcp", any)], &[a.addr]);
    next.shutdown_grace = Duration::from_millis(200);
    server.reload(next).await.unwrap();
    let mut rest = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), on_old.read_line(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed once the grace ran out");
}

#[tokio::test]
async fn udp_datagrams_with_every_backend_down_are_dropped_and_counted() {
    let text = format!(
        "[[listeners]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n[pools.p.health]\nkind = \"udp\"\nsend = \"ping\"\ninterval = \"50ms\"\nfall = 1\n",
        dead_addr()
    );
    let server = start(&text).await;
    let series = format!(
        "switchyard_backend_up{{backend=\"{}\",pool=\"p\"}}",
        server.view().pools["p"].snapshot().members[0].backend.addr
    );
    wait_metric(&server, &series, 0.0, Duration::from_secs(5)).await;
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        client
            .send_to(b"x", server.local_addr("u").unwrap())
            .unwrap();
    }
    wait_metric(
        &server,
        "switchyard_udp_dropped_total{listener=\"u\",reason=\"no_backend\"}",
        5.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        value(&server, "switchyard_udp_sessions{listener=\"u\"}"),
        0.0
    );
}

#[tokio::test]
async fn lowering_max_connections_holds_once_busy_connections_close() {
    let a = Backend::start("a").await;
    let text = |limit: u32| {
        format!(
            "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nmax_connections = {limit}\n\
             [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
            a.addr
        )
    };
    let server = start(&text(3)).await;
    let front = server.local_addr("t").unwrap();
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = BufReader::new(TcpStream::connect(front).await.unwrap());
        assert_eq!(line(&mut c, &i.to_string()).await, format!("a: {i}\n"));
        held.push(c);
    }
    // Every permit is held when the limit drops to 1.
    server
        .reload(Config::parse(&text(1), Path::new("reload.toml")).unwrap())
        .await
        .unwrap();
    drop(held);
    wait_idle(&server, "t").await;
    let mut first = BufReader::new(TcpStream::connect(front).await.unwrap());
    assert_eq!(line(&mut first, "x").await, "a: x\n");
    let limited = value(
        &server,
        "switchyard_listener_rejected_total{listener=\"t\",reason=\"limit\"}",
    );
    let second = tokio::spawn(async move { ask(front).await });
    // The listener finds the second client waiting at the limit.
    wait_metric(
        &server,
        "switchyard_listener_rejected_total{listener=\"t\",reason=\"limit\"}",
        limited + 1.0,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        !second.is_finished(),
        "the lowered limit of 1 let a second connection in"
    );
    drop(first);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .unwrap()
            .unwrap(),
        "a"
    );

    // Raising it again is exact too.
    server
        .reload(Config::parse(&text(2), Path::new("reload.toml")).unwrap())
        .await
        .unwrap();
    let mut one = BufReader::new(TcpStream::connect(front).await.unwrap());
    let mut two = BufReader::new(TcpStream::connect(front).await.unwrap());
    assert_eq!(line(&mut one, "1").await, "a: 1\n");
    assert_eq!(line(&mut two, "2").await, "a: 2\n");
}

/// Reading the file of a reload may block (a slow disk, a hung network
/// mount, a host name whose resolver is silent). It must not stall a single
/// connection, even with one runtime worker: here the file is a FIFO that
/// blocks the read until the test writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_reload_that_blocks_stalls_no_connection() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("switchyard.toml");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let text = format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let server = Server::start(Config::parse(&text, &fifo).unwrap())
        .await
        .unwrap();
    let front = server.local_addr("front").unwrap();
    let reloading = tokio::spawn({
        let server = server.clone();
        async move { server.reload_file().await }
    });
    // The file arrives in 3 s whatever happens, so a stalled runtime shows
    // as slow answers below rather than as a hung test.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        std::fs::write(&fifo, text).unwrap();
    });
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert_eq!(ask(front).await, "a");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a connection stalled {:?} behind a blocked reload",
            started.elapsed()
        );
    }
    assert!(
        !reloading.is_finished(),
        "the reload is still waiting for its file"
    );
    reloading.await.unwrap().unwrap();
    writer.join().unwrap();
}

/// Renaming a listener, or turning `reuse_port` on or off, hands its sockets
/// over: the reload succeeds (the address is never free, so it cannot be
/// lost), clients keep being served throughout, and a connection on the old
/// listener runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_listener_or_changing_reuse_port_hands_its_sockets_over() {
    let a = Backend::start("a").await;
    // A fixed port: a listener on port 0 has nothing to hand over.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = |name: &str, reuse_port: bool| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\npool = \"p\"\nreuse_port = {reuse_port}\n\
             [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
            a.addr
        )
    };
    let parse = |t: String| Config::parse(&t, Path::new("reload.toml")).unwrap();
    let server = Server::start(parse(text("old", false))).await.unwrap();
    let front = server.local_addr("old").unwrap();
    let mut held = BufReader::new(TcpStream::connect(front).await.unwrap());
    assert_eq!(line(&mut held, "1").await, "a: 1\n");

    // Clients throughout, bounded in count and time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut served, mut failed) = (0, 0);
            let started = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(30)
                && served + failed < 100_000
            {
                match try_ask(front).await {
                    Ok(_) => served += 1,
                    Err(_) => failed += 1,
                }
            }
            (served, failed)
        }
    });
    for (name, reuse_port) in [("new", true), ("new", false), ("newer", true)] {
        server
            .reload(parse(text(name, reuse_port)))
            .await
            .unwrap_or_else(|e| panic!("renaming to {name} with reuse_port = {reuse_port}: {e}"));
        assert_eq!(server.local_addr(name), Some(front), "{name}: same address");
        assert_eq!(ask(front).await, "a");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (served, failed) = client.await.unwrap();
    assert!(served > 0);
    assert_eq!(
        failed, 0,
        "{failed} clients failed across the reloads ({served} served)"
    );
    // The connection made on the first listener runs on.
    assert_eq!(line(&mut held, "2").await, "a: 2\n");
}

/// A UDP listener that a reload removes takes no more datagrams, but a reply
/// still on its way reaches the client from the old socket; its sessions
/// then end within a second, so a shutdown does not wait out their idle
/// timeout (30 s here).
#[tokio::test]
async fn a_removed_udp_listener_delivers_late_replies_then_its_sessions_end() {
    // A backend that answers only when told to.
    let backend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let (n, from) = backend.recv_from(&mut buf).await.unwrap();
        let _ = got_tx.send(());
        let _ = go_rx.await;
        backend.send_to(&buf[..n], from).await.unwrap();
    });
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(config(
        &[("t", "tcp", any), ("u", "udp", any)],
        &[backend_addr],
    ))
    .await
    .unwrap();
    let u = server.local_addr("u").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(b"late", u).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), got_rx)
        .await
        .expect("the backend got the datagram")
        .unwrap();
    server
        .reload(config(&[("t", "tcp", any)], &[backend_addr]))
        .await
        .unwrap();
    // The listener is gone; the reply comes now, through its old socket.
    go_tx.send(()).unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .expect("the late reply reached the client")
        .unwrap();
    assert_eq!(&buf[..n], b"late");
    // With nothing more on its way, the session ends a second after its
    // last datagram, well inside the 30 s grace.
    let started = std::time::Instant::now();
    server.shutdown().await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(2500),
        "shutdown waited {waited:?} for a drained UDP session, which ends a second after its last datagram"
    );
}
