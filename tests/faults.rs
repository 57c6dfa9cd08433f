//! Faults the kernel really produces, made with `iptables` inside a network
//! namespace of each test's own (see `common::netns`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::netns::{in_namespace, iptables, runtime};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

fn pool(backends: &[SocketAddr], extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [[listeners]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nbackends = {}\n{extra}\n",
        backends_toml(backends, None)
    )
}

/// A backend whose SYNs vanish (no answer, no refusal): clients are served by
/// the other within `connect_timeout` and a little, and the black-holed one
/// is taken out, so later clients do not wait at all.
#[test]
fn a_backend_that_drops_syns_is_avoided_and_taken_out() {
    if !in_namespace("a_backend_that_drops_syns_is_avoided_and_taken_out") {
        return;
    }
    runtime().block_on(async {
        let hole = Backend::start("hole").await;
        let good = Backend::start("good").await;
        iptables(&format!("-A INPUT -p tcp --dport {} --syn -j DROP", hole.addr.port()));
        let connect_timeout = Duration::from_millis(300);
        let server = start(&pool(
            &[hole.addr, good.addr],
            "connect_timeout = \"300ms\"\nmax_fails = 1\nfail_timeout = \"1h\"",
        ))
        .await;
        let front = server.local_addr("front").unwrap();
        for i in 0..10 {
            let started = Instant::now();
            assert_eq!(ask(front).await, "good", "client {i}");
            assert!(
                started.elapsed() < connect_timeout + Duration::from_secs(1),
                "client {i} waited {:?}",
                started.elapsed()
            );
        }
        let timeouts = format!(
            "switchyard_backend_connect_failures_total{{backend=\"{}\",pool=\"p\",reason=\"timeout\"}}",
            hole.addr
        );
        assert_eq!(value(&server, &timeouts), 1.0, "one timeout, then it was out");
        assert_eq!(hole.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    });
}

/// A partition in the middle of an established connection: the backend
/// vanishes without a word. TCP keepalive finds it, the connection ends
/// (the client sees a reset, not a clean end), and its place under
/// `max_connections` comes back.
#[test]
fn a_partition_mid_connection_is_found_by_keepalive() {
    if !in_namespace("a_partition_mid_connection_is_found_by_keepalive") {
        return;
    }
    runtime().block_on(async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let server = start(&pool(&[a.addr, b.addr], "tcp_keepalive = \"1s\"").replace(
            "access_log = false",
            "access_log = false\nmax_connections = 1",
        ))
        .await;
        let front = server.local_addr("front").unwrap();
        let mut held = echoed(front, "x", "a").await;
        let mut buf = [0u8; 16];
        // Everything to and from backend `a` vanishes from here on.
        iptables(&format!(
            "-A INPUT -p tcp --dport {} -j DROP",
            a.addr.port()
        ));
        iptables(&format!(
            "-A INPUT -p tcp --sport {} -j DROP",
            a.addr.port()
        ));
        // Keepalive: 1 s of silence, then probes 1 s apart, 6 unanswered.
        let started = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(30), held.read(&mut buf))
            .await
            .expect("keepalive never ended the partitioned connection");
        assert!(
            matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "the client must see the connection broken, not ended: {end:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        wait_idle(&server, "front").await;
        // The place came back: with max_connections = 1, a new client is served.
        let name = tokio::time::timeout(Duration::from_secs(10), ask(front))
            .await
            .expect("the place under max_connections never came back");
        assert_eq!(name, "b");
    });
}

/// A backend that answers with a reset in the middle of a connection: the
/// client sees the reset too.
#[test]
fn a_backend_reset_mid_connection_reaches_the_client() {
    if !in_namespace("a_backend_reset_mid_connection_reaches_the_client") {
        return;
    }
    runtime().block_on(async {
        let a = Backend::start("a").await;
        let server = start(&pool(&[a.addr], "")).await;
        let front = server.local_addr("front").unwrap();
        let mut held = echoed(front, "x", "a").await;
        let mut buf = [0u8; 16];
        iptables(&format!(
            "-A INPUT -p tcp --dport {} -j REJECT --reject-with tcp-reset",
            a.addr.port()
        ));
        held.write_all(b"y\n").await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf))
            .await
            .expect("the reset never reached the client");
        assert!(
            matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{end:?}"
        );
    });
}

/// A UDP backend that answers with ICMP port unreachable: its clients'
/// sessions move to the other backend.
#[test]
fn a_udp_backend_answering_icmp_unreachable_loses_its_sessions() {
    if !in_namespace("a_udp_backend_answering_icmp_unreachable_loses_its_sessions") {
        return;
    }
    runtime().block_on(async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let server = start(&pool(&[a.addr, b.addr], "max_fails = 1")).await;
        let u = server.local_addr("u").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |msg: &'static str| {
            let client = &client;
            async move {
                client.send_to(msg.as_bytes(), u).await.unwrap();
                let mut buf = [0u8; 64];
                let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).to_string())
            }
        };
        // Round robin starts this client on `a`.
        assert_eq!(ask("one").await.as_deref(), Some("a: one"));
        iptables(&format!(
            "-A INPUT -p udp --dport {} -j REJECT --reject-with icmp-port-unreachable",
            a.addr.port()
        ));
        // The next datagram meets the ICMP error; the one after re-picks.
        let _ = ask("two").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if ask("three").await.as_deref() == Some("b: three") {
                break;
            }
            assert!(Instant::now() < deadline, "the session never moved to b");
        }
    });
}
