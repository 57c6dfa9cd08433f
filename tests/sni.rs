//! Routing by server name without terminating TLS, against real TLS peers:
//! `openssl s_server` behind routes, `openssl s_client` in front, by exact
//! name, by wildcard, without a name, with a hello cut into many records
//! and sent a byte at a time; plain text to the listener's pool; and
//! `sni_required`. QUIC: RFC 9001's client Initial and a real Chromium's.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::process::{free_addr, wait_listening, Proc};
use common::{installed, value, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const LOCAL: [u8; 4] = [127, 0, 0, 1];

/// A self-signed certificate for `cn`, made with openssl.
fn cert(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (c, k)
}

/// A real `openssl s_server` presenting a certificate for `cn`.
async fn s_server(dir: &Path, cn: &str) -> (Proc, SocketAddr) {
    let (c, k) = cert(dir, cn);
    let addr = free_addr();
    let log = dir.join(format!("{cn}.log"));
    let mut child = Proc::spawn(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &addr.to_string()])
            .arg("-cert")
            .arg(&c)
            .arg("-key")
            .arg(&k),
        &log,
    );
    wait_listening(addr, &mut child, &log, Duration::from_secs(10)).await;
    (child, addr)
}

/// Runs `openssl s_client` to `to` naming `name` (none: `-noservername`);
/// the common name of the certificate it was shown, if the handshake worked.
async fn s_client(to: SocketAddr, name: Option<&str>) -> Option<String> {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-brief", "-connect", &to.to_string()]);
    match name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .expect("s_client finished in time")
        .expect("s_client runs");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Peer certificate: CN = "))
        .map(str::to_string)
}

fn tls_config(front: &str, extra: &str, pools: &[(&str, SocketAddr)]) -> String {
    let mut t = format!(
        "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\npool = \"plain\"\n{extra}\n\
         [[listeners.routes]]\nsni = [\"api.example.com\"]\npool = \"api\"\n\
         [[listeners.routes]]\nname = \"wildcard\"\nsni = [\"*.wild.example\"]\npool = \"wild\"\n{front}"
    );
    for (name, addr) in pools {
        t += &format!("[pools.{name}]\nbackends = [{{ addr = \"{addr}\" }}]\n");
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_reach_the_server_their_hello_names() {
    if !installed("openssl", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_api, api) = s_server(dir.path(), "api.example.com").await;
    let (_wild, wild) = s_server(dir.path(), "wild.example").await;
    let plain = Backend::start("plain").await;
    let server = common::start(&tls_config(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        "",
        &[("api", api), ("wild", wild), ("plain", plain.addr)],
    ))
    .await;
    let front = server.local_addr("tls").unwrap();
    // The API shows the routes as configured.
    let admin = server.admin_addr().await.unwrap();
    let (status, body) = tokio::task::spawn_blocking(move || {
        common::daemon::http(admin, "GET", "/api/v1/listeners", &[], "")
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let routes = &v["listeners"][0]["routes"];
    assert_eq!(routes[0]["sni"][0], "api.example.com");
    assert_eq!(
        (routes[1]["name"].as_str(), routes[1]["pool"].as_str()),
        (Some("wildcard"), Some("wild"))
    );

    assert_eq!(
        s_client(front, Some("api.example.com")).await.as_deref(),
        Some("api.example.com")
    );
    // Names compare without regard to case.
    assert_eq!(
        s_client(front, Some("API.Example.COM")).await.as_deref(),
        Some("api.example.com")
    );
    assert_eq!(
        s_client(front, Some("x.wild.example")).await.as_deref(),
        Some("wild.example")
    );
    // A wildcard matches one label: these go to the listener's pool (a
    // plain-text backend, where the handshake fails).
    let before = plain.accepted.load(Ordering::SeqCst);
    assert_eq!(s_client(front, Some("a.b.wild.example")).await, None);
    assert_eq!(s_client(front, None).await, None);
    assert_eq!(plain.accepted.load(Ordering::SeqCst), before + 2);
    // Plain text is no TLS: the listener's pool, bytes unchanged.
    assert_eq!(common::ask(front).await, "plain");

    let routed = |route: &str| {
        value(
            &server,
            &format!("switchyard_listener_routed_total{{listener=\"tls\",route=\"{route}\"}}"),
        )
    };
    let inspected = |r: &str| {
        value(
            &server,
            &format!("switchyard_listener_inspected_total{{listener=\"tls\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(
        (routed("api"), routed("wildcard"), routed("default")),
        (2.0, 1.0, 3.0)
    );
    assert_eq!(
        (
            inspected("sni"),
            inspected("no_match"),
            inspected("no_sni"),
            inspected("not_tls")
        ),
        (3.0, 1.0, 1.0, 1.0)
    );
    // A reload re-points routes on the same socket; a route that is gone
    // takes its series with it.
    let next = format!(
        "[[listeners]]\nname = \"tls\"\nbind = \"{front}\"\npool = \"plain\"\n\
         [[listeners.routes]]\nsni = [\"api.example.com\"]\npool = \"wild\"\n\
         [pools.wild]\nbackends = [{{ addr = \"{wild}\" }}]\n[pools.plain]\nbackends = [{{ addr = \"{}\" }}]\n",
        plain.addr
    );
    server
        .reload(switchyard::Config::parse(&next, Path::new("next.toml")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        s_client(front, Some("api.example.com")).await.as_deref(),
        Some("wild.example")
    );
    assert_eq!(routed("wild"), 1.0);
    assert!(!server.metrics().render().contains("route=\"wildcard\""));
    server.shutdown().await;
}

/// Reads one whole ClientHello off `s`, as TLS records: the record bytes
/// and the handshake message inside them.
async fn read_hello(s: &mut TcpStream) -> Vec<u8> {
    let mut msg = Vec::new();
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x16, "a handshake record");
        let mut body = vec![0u8; u16::from_be_bytes([head[3], head[4]]) as usize];
        s.read_exact(&mut body).await.unwrap();
        msg.extend_from_slice(&body);
        if msg.len() >= 4
            && msg.len() >= 4 + u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize
        {
            return msg;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_cut_into_records_and_sent_a_byte_at_a_time_still_routes() {
    if !installed("openssl", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_api, api) = s_server(dir.path(), "api.example.com").await;
    let plain = Backend::start("plain").await;
    let dead = common::dead_addr();
    let server = common::start(&tls_config(
        "",
        "",
        &[("api", api), ("wild", dead), ("plain", plain.addr)],
    ))
    .await;
    let front = server.local_addr("tls").unwrap();

    // A relay between a real s_client and the proxy that re-cuts the
    // client's hello into records of 7 bytes and sends them a byte at a
    // time; the rest of the handshake passes through as it is. TLS allows
    // any cut of handshake messages into records, so the handshake with the
    // real server still completes, if every byte reached it unchanged.
    let relay = TcpListener::bind(SocketAddr::from((LOCAL, 0)))
        .await
        .unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let relaying = tokio::spawn(async move {
        let (mut client, _) = relay.accept().await.unwrap();
        let msg = read_hello(&mut client).await;
        let mut upstream = TcpStream::connect(front).await.unwrap();
        upstream.set_nodelay(true).unwrap();
        for part in msg.chunks(7) {
            let mut record = vec![0x16, 3, 1];
            record.extend_from_slice(&(part.len() as u16).to_be_bytes());
            record.extend_from_slice(part);
            for b in record {
                upstream.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    assert_eq!(
        s_client(relay_addr, Some("api.example.com"))
            .await
            .as_deref(),
        Some("api.example.com")
    );
    relaying.abort();
    assert_eq!(
        value(
            &server,
            "switchyard_listener_routed_total{listener=\"tls\",route=\"api\"}"
        ),
        1.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_required_closes_clients_without_a_readable_name() {
    if !installed("openssl", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_api, api) = s_server(dir.path(), "api.example.com").await;
    let plain = Backend::start("plain").await;
    let server = common::start(&tls_config(
        "",
        "sni_required = true\ntls_inspect_timeout = \"300ms\"",
        &[
            ("api", api),
            ("wild", common::dead_addr()),
            ("plain", plain.addr),
        ],
    ))
    .await;
    let front = server.local_addr("tls").unwrap();
    assert_eq!(
        s_client(front, Some("api.example.com")).await.as_deref(),
        Some("api.example.com")
    );
    assert_eq!(s_client(front, None).await, None);
    // Plain text, and a client that sends half a record and waits.
    for (bytes, hold) in [(&b"who\n"[..], false), (&[0x16, 3, 1, 0, 200, 1][..], true)] {
        let mut c = TcpStream::connect(front).await.unwrap();
        c.write_all(bytes).await.unwrap();
        if !hold {
            c.shutdown().await.unwrap();
        }
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .ok();
        assert!(got.is_empty());
    }
    assert_eq!(
        plain.accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the listener's pool"
    );
    let inspected = |r: &str| {
        value(
            &server,
            &format!("switchyard_listener_inspected_total{{listener=\"tls\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(
        (
            inspected("no_sni"),
            inspected("not_tls"),
            inspected("timeout")
        ),
        (1.0, 1.0, 1.0)
    );
    assert_eq!(
        value(
            &server,
            "switchyard_listener_rejected_total{listener=\"tls\",reason=\"sni_required\"}"
        ),
        3.0
    );
    server.shutdown().await;
}

/// A UDP backend that counts the datagrams it gets and answers none.
async fn recorder() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let s = UdpSocket::bind(SocketAddr::from((LOCAL, 0))).await.unwrap();
    let addr = s.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = s.recv(&mut buf).await {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_initials_route_by_server_name() {
    let ex = Backend::start("ex").await;
    let d = Backend::start("d").await;
    let (q, mut got) = recorder().await;
    let server = common::start(&format!(
        "[[listeners]]\nname = \"quic\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"d\"\n\
         [[listeners.routes]]\nsni = [\"example.com\"]\npool = \"ex\"\n\
         [[listeners.routes]]\nsni = [\"quic.example\"]\nalpn = [\"h3\"]\npool = \"q\"\n\
         [pools.ex]\nbackends = [{{ addr = \"{}\" }}]\n[pools.d]\nbackends = [{{ addr = \"{}\" }}]\n\
         [pools.q]\nbackends = [{{ addr = \"{q}\" }}]\n",
        ex.addr, d.addr
    ))
    .await;
    let front = server.local_addr("quic").unwrap();
    let ask =
        |payload: &'static [u8]| common::ask_udp(SocketAddr::from((LOCAL, 0)), front, payload);
    // RFC 9001 A.2: a client Initial naming example.com.
    let initial = include_bytes!("../src/wire/quic/rfc9001-a2-client-initial.bin");
    assert_eq!(ask(initial).await, "ex");
    // Anything that is no QUIC Initial: the listener's pool.
    assert_eq!(ask(b"hello").await, "d");
    let inspected = |r: &str| {
        value(
            &server,
            &format!("switchyard_listener_inspected_total{{listener=\"quic\",result=\"{r}\"}}"),
        )
    };
    assert_eq!((inspected("sni"), inspected("not_tls")), (1.0, 1.0));

    // A real QUIC client: Chromium forced onto QUIC for quic.example, whose
    // name resolves (inside Chromium) to the listener. Its hello offers h3
    // and, with a post-quantum key share, spans two Initial packets.
    if !installed("chromium", "chromium") {
        return;
    }
    let profile = tempfile::tempdir().unwrap();
    let log = profile.path().join("chromium.log");
    let _chromium = Proc::spawn(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-quic",
                "--origin-to-force-quic-on=quic.example:443",
            ])
            .arg(format!(
                "--host-resolver-rules=MAP quic.example:443 {front}"
            ))
            .arg(format!(
                "--user-data-dir={}",
                profile.path().join("p").display()
            ))
            .args(["--dump-dom", "https://quic.example/"]),
        &log,
    );
    let first = tokio::time::timeout(Duration::from_secs(20), got.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no QUIC datagram reached the route's backend:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .unwrap();
    assert!(
        first.len() >= 1200 && first[0] & 0xf0 == 0xc0,
        "a QUIC Initial"
    );
    assert_eq!(inspected("sni"), 2.0);
    assert_eq!(
        value(
            &server,
            "switchyard_listener_routed_total{listener=\"quic\",route=\"q\"}"
        ),
        1.0
    );
    server.shutdown().await;
}
