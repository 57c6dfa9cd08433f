//! The client's identity carried through, against implementations we did
//! not write: a real nginx (`listen … proxy_protocol`) reports the client a
//! switchyard pool with `proxy_protocol` names, for v1 and v2, IPv4 and
//! IPv6; a real HAProxy in front (`send-proxy`, `send-proxy-v2`) reaches a
//! switchyard listener with `accept_proxy`, whose allow/deny and onward
//! header use the original client; bad headers are refused and counted
//! while other clients are served.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::{free_addr, wait_listening, Proc};
use common::{installed, value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A real nginx answering each request with the PROXY header's client
/// (`$proxy_protocol_addr $proxy_protocol_port`), on 127.0.0.1 and [::1].
async fn nginx(dir: &Path) -> (Proc, SocketAddr) {
    let addr = free_addr();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         server {{\n    listen {addr} proxy_protocol;\n    location / {{ return 200 \"$proxy_protocol_addr $proxy_protocol_port\\n\"; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let log = dir.join("nginx.out");
    let mut child = Proc::spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path),
        &log,
    );
    wait_listening(addr, &mut child, &log, Duration::from_secs(10)).await;
    (child, addr)
}

/// One HTTP request from `from` (port chosen by the kernel) to `to`; the
/// reply's body and the client's own address.
async fn get(from: IpAddr, to: SocketAddr) -> (String, SocketAddr) {
    let s = if from.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    let mut c = s.connect(to).await.expect("connect to the proxy");
    let me = c.local_addr().unwrap();
    c.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut reply))
        .await
        .expect("a reply in time")
        .expect("read the reply");
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    (body, me)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sees_the_client_for_v1_and_v2_over_ipv4_and_ipv6() {
    if !installed("nginx", "nginx-light") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, ng) = nginx(dir.path()).await;
    let server = common::start(&format!(
        "[[listeners]]\nname = \"v1\"\nbind = \"127.0.0.1:0\"\npool = \"v1\"\n\
         [[listeners]]\nname = \"v2\"\nbind = \"127.0.0.1:0\"\npool = \"v2\"\n\
         [[listeners]]\nname = \"v6\"\nbind = \"[::1]:0\"\npool = \"v2\"\n\
         [[listeners]]\nname = \"v6a\"\nbind = \"[::1]:0\"\npool = \"v1\"\n\
         [pools.v1]\nproxy_protocol = \"v1\"\nbackends = [{{ addr = \"{ng}\" }}]\n\
         [pools.v1.health]\nkind = \"http\"\nproxy_protocol = true\ninterval = \"200ms\"\n\
         [pools.v2]\nproxy_protocol = \"v2\"\nbackends = [{{ addr = \"{ng}\" }}]\n\
         [pools.v2.health]\nkind = \"http\"\nproxy_protocol = true\ninterval = \"200ms\"\n\
         [pools.plain]\nbackends = [{{ addr = \"{ng}\" }}]\n\
         [pools.plain.health]\nkind = \"http\"\ninterval = \"200ms\"\n"
    ))
    .await;
    for (listener, sources) in [
        ("v1", ["127.0.0.2", "127.0.0.3", "127.0.0.4"]),
        ("v2", ["127.0.0.5", "127.0.0.6", "127.0.0.7"]),
        ("v6", ["::1", "::1", "::1"]),
        ("v6a", ["::1", "::1", "::1"]),
    ] {
        let front = server.local_addr(listener).unwrap();
        for src in sources {
            let (body, me) = get(src.parse().unwrap(), front).await;
            assert_eq!(
                body,
                format!("{} {}", me.ip(), me.port()),
                "through listener {listener}"
            );
        }
    }
    // nginx requires a header on every connection: the checks (v2 LOCAL,
    // and v1 with the check's own addresses) pass only because they send
    // one; the same check without it fails.
    let checks = |pool: &str, result: &str| {
        value(
            &server,
            &format!("switchyard_backend_health_checks_total{{backend=\"{ng}\",pool=\"{pool}\",result=\"{result}\"}}"),
        )
    };
    for pool in ["v1", "v2"] {
        common::wait_for("three passed checks", Duration::from_secs(10), || {
            checks(pool, "success") >= 3.0
        })
        .await;
        assert_eq!(checks(pool, "failure"), 0.0, "pool {pool}");
    }
    common::wait_for(
        "a failed check without the header",
        Duration::from_secs(10),
        || checks("plain", "failure") >= 1.0,
    )
    .await;
    assert_eq!(checks("plain", "success"), 0.0);
    server.shutdown().await;
}

/// A real HAProxy in `mode tcp` with two frontends, one sending PROXY v1
/// (`send-proxy`) and one v2 (`send-proxy-v2`), both to `to`.
async fn haproxy(dir: &Path, to: SocketAddr) -> (Proc, SocketAddr, SocketAddr) {
    let v1 = free_addr();
    let v2 = free_addr();
    let conf = format!(
        "global\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         listen v1\n  bind {v1}\n  server s {to} send-proxy\n\
         listen v2\n  bind {v2}\n  server s {to} send-proxy-v2\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let log = dir.join("haproxy.out");
    let mut child = Proc::spawn(
        Command::new("haproxy").arg("-db").arg("-f").arg(&path),
        &log,
    );
    wait_listening(v1, &mut child, &log, Duration::from_secs(10)).await;
    wait_listening(v2, &mut child, &log, Duration::from_secs(10)).await;
    (child, v1, v2)
}

/// Connects from `from`, writes `bytes`, and reads until the proxy closes;
/// what came back. `hold` keeps the write side open (a slow header).
async fn refused(from: IpAddr, to: SocketAddr, bytes: &[u8], hold: bool) -> Vec<u8> {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    let mut c: TcpStream = s.connect(to).await.unwrap();
    c.write_all(bytes).await.unwrap();
    if !hold {
        c.shutdown().await.unwrap();
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the proxy never closed the connection");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_names_the_client_to_allow_deny_and_onward() {
    if !installed("nginx", "nginx-light") || !installed("haproxy", "haproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, ng) = nginx(dir.path()).await;
    let server = common::start(&format!(
        "[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\npool = \"ng\"\n\
         accept_proxy = true\nproxy_trusted = [\"127.0.0.1/32\"]\nproxy_timeout = \"300ms\"\n\
         deny = [\"127.0.0.9\"]\n\
         [pools.ng]\nproxy_protocol = \"v2\"\nbackends = [{{ addr = \"{ng}\" }}]\n"
    ))
    .await;
    let edge = server.local_addr("edge").unwrap();
    let (_haproxy, hv1, hv2) = haproxy(dir.path(), edge).await;
    let rejected = "switchyard_listener_rejected_total{listener=\"edge\",reason=\"proxy_header\"}";
    let denied = "switchyard_listener_rejected_total{listener=\"edge\",reason=\"denied\"}";

    // The original client, through HAProxy (v1 and v2) and switchyard, is
    // the client nginx sees.
    for (front, src) in [
        (hv1, "127.0.0.2"),
        (hv2, "127.0.0.3"),
        (hv1, "127.0.0.4"),
        (hv2, "127.0.0.5"),
    ] {
        let (body, me) = get(src.parse().unwrap(), front).await;
        assert_eq!(body, format!("{} {}", me.ip(), me.port()));
    }
    // deny names the original client, though it arrives from HAProxy's
    // address (which is trusted and not denied).
    for front in [hv1, hv2] {
        let (body, _) = get("127.0.0.9".parse().unwrap(), front).await;
        assert_eq!(body, "", "a denied client got a reply");
    }
    assert_eq!(value(&server, denied), 2.0);
    assert_eq!(value(&server, rejected), 0.0);

    // A well-formed header from outside proxy_trusted is refused.
    let header = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\nGET / HTTP/1.0\r\n\r\n";
    assert!(refused("127.0.0.6".parse().unwrap(), edge, header, false)
        .await
        .is_empty());
    // So are a truncated header and bytes that are no header at all.
    assert!(refused(
        "127.0.0.1".parse().unwrap(),
        edge,
        b"PROXY TCP4 192.0.2.1",
        false
    )
    .await
    .is_empty());
    assert!(refused(
        "127.0.0.1".parse().unwrap(),
        edge,
        b"GET / HTTP/1.0\r\n\r\n",
        false
    )
    .await
    .is_empty());
    assert_eq!(value(&server, rejected), 3.0);

    // A slow header is closed at proxy_timeout; meanwhile others are served.
    let started = tokio::time::Instant::now();
    let slow = tokio::spawn(refused(
        "127.0.0.1".parse().unwrap(),
        edge,
        b"PROXY TCP4 ",
        true,
    ));
    let (body, me) = get("127.0.0.7".parse().unwrap(), hv2).await;
    assert_eq!(body, format!("{} {}", me.ip(), me.port()));
    assert!(slow.await.unwrap().is_empty());
    // Closed at proxy_timeout (300 ms), not before, and not long after.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
        "a slow header was closed after {waited:?}, with proxy_timeout 300ms"
    );
    assert_eq!(value(&server, rejected), 4.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_udp_datagram_carries_a_v2_dgram_header_and_replies_pass_unchanged() {
    use switchyard::wire::proxy_protocol::{parse, Transport, Version};
    use tokio::net::UdpSocket;
    // A backend that takes the header off, says who sent the datagram, and
    // answers with the payload.
    let backend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let baddr = backend.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = backend.recv_from(&mut buf).await.unwrap();
            let (header, len) = parse(&buf[..n], 4096).unwrap().unwrap();
            let payload = buf[len..n].to_vec();
            backend.send_to(&payload, from).await.unwrap();
            let _ = tx.send((header, payload));
        }
    });
    let server = common::start(&format!(
        "[[listeners]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[listeners]]\nname = \"w\"\nprotocol = \"udp\"\nbind = \"0.0.0.0:0\"\npool = \"p\"\n\
         [pools.p]\nproxy_protocol = \"v2\"\nbackends = [{{ addr = \"{baddr}\" }}]\n"
    ))
    .await;
    for (listener, to_ip) in [("u", [127, 0, 0, 1]), ("w", [127, 0, 0, 9])] {
        // On the wildcard listener, the header names the address the client
        // sent to (127.0.0.9), not the wildcard.
        let port = server.local_addr(listener).unwrap().port();
        let to = SocketAddr::from((to_ip, port));
        for src in ["127.0.0.2", "127.0.0.3"] {
            let c = UdpSocket::bind((src.parse::<IpAddr>().unwrap(), 0))
                .await
                .unwrap();
            let me = c.local_addr().unwrap();
            for payload in [&b"first"[..], b"second, same session"] {
                c.send_to(payload, to).await.unwrap();
                let mut buf = [0u8; 512];
                let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
                    .await
                    .expect("a reply in time")
                    .unwrap();
                assert_eq!(&buf[..n], payload, "the reply passes unchanged");
                let (header, got) = rx.recv().await.unwrap();
                assert_eq!(got, payload);
                assert_eq!(header.version, Version::V2);
                assert_eq!(header.transport, Transport::Dgram);
                assert_eq!(header.addrs, Some((me, to)), "through {listener}");
            }
        }
    }
    server.shutdown().await;
}
