//! `source = "client"`: connections and UDP sessions reach the backend from
//! the client's own address, through the routing the README gives.
//!
//! Three namespaces: the test's own (see `common::netns`) runs the proxy; a
//! client and a backend each have one of their own, joined to the proxy's by
//! a veth pair, with private addresses. The backend routes everything back
//! through the proxy, whose policy rule delivers the replies meant for its
//! transparent sockets to them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::netns::{in_namespace, iptables, root, run, runtime, Peer};
use common::*;

const CLIENT: &str = "10.77.1.2";
const PROXY_FRONT: &str = "10.77.1.1";
const PROXY_BACK: &str = "10.77.2.1";
const BACKEND: &str = "10.77.2.2";

/// The README's routing: packets for a socket bound with IP_TRANSPARENT are
/// marked, and marked packets are delivered locally.
fn route_replies_to_the_proxy() {
    iptables("-t mangle -A PREROUTING -p tcp -m socket --transparent -j MARK --set-mark 1");
    iptables("-t mangle -A PREROUTING -p udp -m socket --transparent -j MARK --set-mark 1");
    run(&["ip", "rule", "add", "fwmark", "1", "lookup", "100"]);
    run(&[
        "ip",
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        "100",
    ]);
}

/// A TCP and UDP backend (same port) in `ns` that answers each connection
/// or datagram with the address it came from.
fn start_backend(ns: &Peer) -> SocketAddr {
    let (tcp, udp) = ns.inside(|| {
        let tcp = std::net::TcpListener::bind((BACKEND, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        (tcp, std::net::UdpSocket::bind((BACKEND, port)).unwrap())
    });
    let addr = tcp.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { return };
            let peer = s.peer_addr().unwrap();
            let _ = writeln!(s, "{}", peer.ip());
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(from.ip().to_string().as_bytes(), from);
        }
    });
    addr
}

/// From the client's namespace: the address the backend saw, over TCP and
/// over UDP, through listener addresses `tcp` and `udp`.
fn seen_from_client(ns: &Peer, tcp: SocketAddr, udp: SocketAddr) -> (String, String) {
    ns.inside(move || {
        let s = std::net::TcpStream::connect_timeout(&tcp, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let u = std::net::UdpSocket::bind((CLIENT, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        u.connect(udp).unwrap();
        u.send(b"who").unwrap();
        let mut buf = [0u8; 64];
        let n = u.recv(&mut buf).unwrap();
        (
            line.trim().to_string(),
            String::from_utf8_lossy(&buf[..n]).to_string(),
        )
    })
}

fn config(backend: SocketAddr) -> String {
    let mut toml = String::new();
    for (pool, source) in [("client", "source = \"client\""), ("own", "")] {
        toml += &format!(
            "[[listeners]]\nname = \"{pool}-tcp\"\nbind = \"{PROXY_FRONT}:0\"\npool = \"{pool}\"\naccess_log = false\n\
             [[listeners]]\nname = \"{pool}-udp\"\nprotocol = \"udp\"\nbind = \"{PROXY_FRONT}:0\"\npool = \"{pool}\"\naccess_log = false\n\
             [pools.{pool}]\n{source}\nbackends = [{{ addr = \"{backend}\" }}]\n\
             [pools.{pool}.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\ninitial = \"down\"\n"
        );
    }
    toml
}

/// The backend sees the client's address with `source = "client"`, over
/// TCP and UDP, and the proxy's own without it; health checks leave from
/// the proxy's own address.
#[test]
fn the_backend_sees_the_clients_own_address() {
    if !in_namespace("the_backend_sees_the_clients_own_address") {
        return;
    }
    let client = Peer::new(
        "sy-client",
        ("syc0", &format!("{CLIENT}/24")),
        ("syc1", &format!("{PROXY_FRONT}/24")),
        PROXY_FRONT,
    );
    let backend_ns = Peer::new(
        "sy-backend",
        ("syb0", &format!("{BACKEND}/24")),
        ("syb1", &format!("{PROXY_BACK}/24")),
        PROXY_BACK,
    );
    route_replies_to_the_proxy();
    let backend = start_backend(&backend_ns);
    runtime().block_on(async {
        let server = start(&config(backend)).await;
        // Up only once a check has passed: checks leave from the proxy's
        // own address, which the backend answers directly.
        wait_for("both pools up", Duration::from_secs(10), || server.ready()).await;
        let addr = |name: &str| server.local_addr(name).unwrap();
        assert_eq!(
            seen_from_client(&client, addr("client-tcp"), addr("client-udp")),
            (CLIENT.to_string(), CLIENT.to_string()),
            "source = \"client\": the backend sees the client"
        );
        assert_eq!(
            seen_from_client(&client, addr("own-tcp"), addr("own-udp")),
            (PROXY_BACK.to_string(), PROXY_BACK.to_string()),
            "without it, the backend sees the proxy"
        );
        let text = server.metrics().render();
        let source_errors =
            "switchyard_listener_local_errors_total{listener=\"client-tcp\",reason=\"source\"}";
        assert_eq!(metric(&text, source_errors), Some(0.0));
    });
}

/// Without CAP_NET_ADMIN (or CAP_NET_RAW), a configuration with `source = "client"` is
/// refused at start, naming the pool and the capability, rather than
/// failing every connection.
#[test]
fn without_the_capability_it_is_refused_at_start() {
    if !root("without_the_capability_it_is_refused_at_start") || !installed("setpriv", "util-linux")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nsource = \"client\"\nbackends = [{ addr = \"127.0.0.1:9\" }]\n",
    )
    .unwrap();
    let mut child = std::process::Command::new("setpriv")
        // IP_TRANSPARENT takes either capability.
        .args(["--bounding-set", "-net_admin,-net_raw"])
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("it started without CAP_NET_ADMIN");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("pools.p.source = \"client\" needs CAP_NET_ADMIN"),
        "{err}"
    );
}
