//! Who gets in, and what they are charged: the client's address in one form
//! whether the socket or a PROXY header names it, per-address limits that
//! hold while a header or a ClientHello is still being read, and every byte
//! read before the backend was chosen counted as forwarded.

mod common;

use std::time::{Duration, Instant};

use common::{connect_from, reply, start, value, wait_idle, wait_metric, Backend};
use tokio::net::TcpStream;

fn rejected(server: &switchyard::Server, listener: &str, reason: &str) -> f64 {
    value(
        server,
        &format!(
            "switchyard_listener_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
        ),
    )
}

/// A header naming `::ffff:10.1.2.3` is the client 10.1.2.3: refused by a
/// deny of 10.0.0.0/8, and one budget with the plain form under a
/// per-address limit.
#[tokio::test]
async fn a_mapped_address_in_a_proxy_header_is_the_ipv4_client() {
    let b = Backend::start("b").await;
    let server = start(&format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         accept_proxy = true\nproxy_trusted = [\"127.0.0.0/8\"]\ndeny = [\"10.0.0.0/8\"]\n\
         max_connections_per_ip = 1\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        b.addr
    ))
    .await;
    let front = server.local_addr("front").unwrap();

    let mut plain = TcpStream::connect(front).await.unwrap();
    let header = b"PROXY TCP4 10.1.2.3 127.0.0.1 1000 80\r\nwho\n";
    assert_eq!(reply(&mut plain, header).await, None, "10.1.2.3 is denied");
    let mut mapped = TcpStream::connect(front).await.unwrap();
    let header = b"PROXY TCP6 ::ffff:10.1.2.3 ::1 1000 80\r\nwho\n";
    assert_eq!(
        reply(&mut mapped, header).await,
        None,
        "::ffff:10.1.2.3 is 10.1.2.3, and denied too"
    );
    assert_eq!(rejected(&server, "front", "denied"), 2.0);

    let mut first = TcpStream::connect(front).await.unwrap();
    let header = b"PROXY TCP4 11.9.9.9 127.0.0.1 1000 80\r\nwho\n";
    assert_eq!(reply(&mut first, header).await.as_deref(), Some("b: who\n"));
    let mut second = TcpStream::connect(front).await.unwrap();
    let header = b"PROXY TCP6 ::ffff:11.9.9.9 ::1 1001 80\r\nwho\n";
    assert_eq!(
        reply(&mut second, header).await,
        None,
        "the same client in its mapped form has no second budget"
    );
    assert_eq!(rejected(&server, "front", "ip_limit"), 1.0);
    // Another client behind the same proxy is served: the proxy's own
    // address was charged only while the header was read.
    let mut other = TcpStream::connect(front).await.unwrap();
    let header = b"PROXY TCP4 11.9.9.10 127.0.0.1 1000 80\r\nwho\n";
    assert_eq!(reply(&mut other, header).await.as_deref(), Some("b: who\n"));
}

/// Clients that connect and say nothing hold no more than their address's
/// share while the listener waits for a ClientHello: the rest of
/// `max_connections` stays free for others, who are served at once rather
/// than after `tls_inspect_timeout`.
#[tokio::test]
async fn per_address_limits_hold_while_a_hello_is_awaited() {
    let (plain, api) = (Backend::start("plain").await, Backend::start("api").await);
    let server = start(&format!(
        "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\npool = \"plain\"\naccess_log = false\n\
         max_connections = 4\nmax_connections_per_ip = 2\ntls_inspect_timeout = \"5s\"\n\
         [[listeners.routes]]\nsni = [\"api.example.com\"]\npool = \"api\"\n\
         [pools.plain]\nbackends = [{{ addr = \"{}\" }}]\n\
         [pools.api]\nbackends = [{{ addr = \"{}\" }}]\n",
        plain.addr, api.addr
    ))
    .await;
    let front = server.local_addr("tls").unwrap();
    // Four silent connections from one address: two are held, two refused
    // as they are accepted.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect_from("127.0.0.5", front).await);
    }
    wait_metric(
        &server,
        "switchyard_listener_rejected_total{listener=\"tls\",reason=\"ip_limit\"}",
        2.0,
        Duration::from_secs(3),
    )
    .await;
    // Another client is served now, long before the silent ones' 5 s.
    let began = Instant::now();
    let mut other = connect_from("127.0.0.6", front).await;
    assert_eq!(
        reply(&mut other, b"who\n").await.as_deref(),
        Some("plain: who\n")
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "served after {:?}",
        began.elapsed()
    );
}

/// The bytes a listener reads before it connects (the data behind a PROXY
/// header, a ClientHello) are counted on the listener and the backend, and
/// in the access log, like every byte the relay moves.
#[tokio::test]
async fn bytes_read_while_greeting_are_counted() {
    let b = Backend::start("b").await;
    let server = start(&format!(
        "[[listeners]]\nname = \"proxied\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         accept_proxy = true\nproxy_trusted = [\"127.0.0.0/8\"]\n\
         [[listeners]]\nname = \"routed\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [[listeners.routes]]\nsni = [\"api.example.com\"]\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        b.addr
    ))
    .await;
    // The header and the client's first line in one segment.
    let mut s = TcpStream::connect(server.local_addr("proxied").unwrap())
        .await
        .unwrap();
    let sent = b"PROXY TCP4 10.1.2.3 127.0.0.1 1000 80\r\nwho\n";
    assert_eq!(reply(&mut s, sent).await.as_deref(), Some("b: who\n"));
    drop(s);
    // Read while looking for a ClientHello (it is none: the listener's pool).
    let mut s = TcpStream::connect(server.local_addr("routed").unwrap())
        .await
        .unwrap();
    assert_eq!(
        reply(&mut s, b"hello there\n").await.as_deref(),
        Some("b: hello there\n")
    );
    drop(s);
    for (listener, want) in [("proxied", 4.0), ("routed", 12.0)] {
        wait_idle(&server, listener).await;
        assert_eq!(
            value(
                &server,
                &format!(
                    "switchyard_listener_bytes_total{{direction=\"in\",listener=\"{listener}\"}}"
                )
            ),
            want,
            "{listener}"
        );
    }
    assert_eq!(
        value(
            &server,
            &format!(
                "switchyard_backend_bytes_total{{backend=\"{}\",direction=\"out\",pool=\"p\"}}",
                b.addr
            )
        ),
        16.0
    );
}
