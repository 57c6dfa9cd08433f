//! `switchyard import` on configurations from nginx's and HAProxy's own
//! documentation (`tests/import/`): the imported file passes `check`, lists
//! what it could not import with its file and line, and the same clients
//! reach the same backends through switchyard as through the real nginx
//! and HAProxy started from the original files.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::daemon::Daemon;
use common::process::{free_addr, wait_listening, Proc};
use common::tools::missing;
use common::{installed, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Where Debian puts nginx's stream module, which `nginx-stream.conf` loads.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// A TCP backend that answers its name to the first bytes of any
/// connection (a ClientHello included) and closes.
async fn namer(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(say_name(s, name));
        }
    });
    addr
}

/// `namer` on a Unix socket at `path`.
fn unix_namer(name: &'static str, path: &Path) {
    let l = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(say_name(s, name));
        }
    });
}

/// Answers `name` to the first bytes of `s`.
async fn say_name<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, name: &str) {
    let mut buf = [0u8; 4096];
    if s.read(&mut buf).await.unwrap_or(0) > 0 {
        let _ = s.write_all(format!("{name}\n").as_bytes()).await;
    }
}

/// A TLS ClientHello naming `sni`, as a client's first flight.
fn hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut c = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

/// Who answers `bytes` sent from `from` to `to`.
async fn who(from: IpAddr, to: SocketAddr, bytes: &[u8]) -> String {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    let mut c = s.connect(to).await.expect("connect");
    c.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).trim().to_string()
}

fn fill(template: &str, values: &HashMap<&str, String>) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Runs `switchyard import KIND FILE`: the TOML.
fn import(kind: &str, file: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["import", kind])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `switchyard check` on `toml`.
fn check(dir: &Path, toml: &str) {
    let path = dir.join("imported.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the imported file does not pass check:\n{}\n{toml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The template with fresh listener addresses and the shared backends.
fn render(
    template: &str,
    listeners: &[&str],
    backends: &HashMap<&str, String>,
    dir: &Path,
) -> (String, HashMap<&'static str, SocketAddr>) {
    let mut values = backends.clone();
    let mut addrs = HashMap::new();
    for l in listeners {
        let a = free_addr();
        let key: &'static str = Box::leak(l.to_string().into_boxed_str());
        addrs.insert(key, a);
        values.insert(key, a.to_string());
    }
    values.insert("DIR", dir.display().to_string());
    (fill(template, &values), addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_s_stream_examples_import_and_route_alike() {
    if !installed("nginx", "nginx-light") {
        return;
    }
    // Debian builds the stream module apart from nginx-light.
    if !Path::new(STREAM_MODULE).exists()
        && !missing("nginx's stream module", "libnginx-mod-stream")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/import/nginx-stream.conf"
    ))
    .unwrap();
    let (u1, u2) = (Backend::start("u1").await, Backend::start("u2").await);
    let mut b = HashMap::new();
    for (k, n) in [("B1", "b1"), ("B2", "b2"), ("B3", "b3"), ("B4", "b4")] {
        b.insert(k, namer(n).await.to_string());
    }
    b.insert("U1", u1.addr.to_string());
    b.insert("U2", u2.addr.to_string());
    let socket_dir = tempfile::tempdir().unwrap();
    let s3 = socket_dir.path().join("backend3.sock");
    unix_namer("b3u", &s3);
    b.insert("S3", s3.display().to_string());
    // The original, run by nginx.
    let (original, ng) = render(&template, &["L1", "L2", "L3"], &b, dir.path());
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, &original).unwrap();
    let log = dir.path().join("nginx.out");
    let mut child = Proc::spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf),
        &log,
    );
    wait_listening(ng["L1"], &mut child, &log, Duration::from_secs(10)).await;
    wait_listening(ng["L3"], &mut child, &log, Duration::from_secs(10)).await;
    // The same file with other listener addresses, imported and run by switchyard.
    let sydir = dir.path().join("sy");
    std::fs::create_dir_all(&sydir).unwrap();
    let (copy, sy) = render(&template, &["L1", "L2", "L3"], &b, &sydir);
    let copy_path = sydir.join("nginx.conf");
    std::fs::write(&copy_path, &copy).unwrap();
    let toml = import("nginx", &copy_path);
    eprintln!("{toml}");
    check(&sydir, &toml);
    // The Unix-socket server is one of the upstream's.
    assert!(
        toml.contains(&format!("addr = \"unix:{}\"", s3.display())),
        "{toml}"
    );
    assert!(toml.contains("error_log"), "{toml}");
    assert!(toml.contains("\nworkers = 1\n"), "{toml}");
    let _daemon = Daemon::start(&toml, &[], &[]);
    wait_listening(sy["L1"], &mut child, &log, Duration::from_secs(10)).await;

    // Hashed by the client's address over b1, b2 and the Unix socket's
    // b3u (weights 5, 1 and 1): both proxies keep each client on one
    // backend of the three (which one is each proxy's own hash), and
    // spread 120 clients over all three (one missed by chance: under
    // 2 x (6/7)^120, about 2 in 10 million).
    for (proxy, front) in [("nginx", ng["L1"]), ("switchyard", sy["L1"])] {
        let mut seen = BTreeSet::new();
        for i in 1..=120u8 {
            let from = IpAddr::from([127, 9, 0, i]);
            let first = who(from, front, b"hi\n").await;
            assert_eq!(
                who(from, front, b"hi\n").await,
                first,
                "{proxy}: a client moved"
            );
            seen.insert(first);
        }
        assert_eq!(
            seen,
            BTreeSet::from(["b1".into(), "b2".into(), "b3u".into()]),
            "{proxy}"
        );
    }
    // UDP to the dns upstream.
    for (proxy, front) in [("nginx", ng["L2"]), ("switchyard", sy["L2"])] {
        // A datagram may be lost on loopback under load: three tries.
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 512];
        let mut n = None;
        for _ in 0..3 {
            c.send_to(b"q", front).await.unwrap();
            if let Ok(r) = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf)).await {
                n = Some(r.unwrap());
                break;
            }
        }
        let n = n.unwrap_or_else(|| {
            panic!(
                "{proxy}: no UDP answer\n{}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            )
        });
        let got = String::from_utf8_lossy(&buf[..n])
            .split(':')
            .next()
            .unwrap()
            .to_string();
        assert!(got == "u1" || got == "u2", "{proxy}: {got}");
    }
    // By server name: the named one to `backend`, any other to backend2's
    // primary (its backup idle).
    for (proxy, front) in [("nginx", ng["L3"]), ("switchyard", sy["L3"])] {
        let named = who(
            IpAddr::from([127, 9, 1, 1]),
            front,
            &hello("backend.example.com"),
        )
        .await;
        assert!(
            ["b1", "b2", "b3u"].contains(&named.as_str()),
            "{proxy}: {named}"
        );
        for i in 1..=5u8 {
            let other = who(
                IpAddr::from([127, 9, 2, i]),
                front,
                &hello("other.example.com"),
            )
            .await;
            assert_eq!(other, "b3", "{proxy}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_s_mode_tcp_examples_import_and_route_alike() {
    if !installed("haproxy", "haproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/import/haproxy.cfg"
    ))
    .unwrap();
    let mut b = HashMap::new();
    for (k, n) in [("B5", "app1"), ("B6", "d1"), ("B7", "d2"), ("B8", "db1")] {
        b.insert(k, namer(n).await.to_string());
    }
    let (original, hp) = render(&template, &["L4", "L5"], &b, dir.path());
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, &original).unwrap();
    let log = dir.path().join("haproxy.out");
    let mut child = Proc::spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&cfg), &log);
    wait_listening(hp["L4"], &mut child, &log, Duration::from_secs(10)).await;
    wait_listening(hp["L5"], &mut child, &log, Duration::from_secs(10)).await;
    let sydir = dir.path().join("sy");
    std::fs::create_dir_all(&sydir).unwrap();
    let (copy, sy) = render(&template, &["L4", "L5"], &b, &sydir);
    let copy_path = sydir.join("haproxy.cfg");
    std::fs::write(&copy_path, &copy).unwrap();
    let toml = import("haproxy", &copy_path);
    eprintln!("{toml}");
    check(&sydir, &toml);
    let accept_line = copy
        .lines()
        .position(|l| l.contains("req_ssl_hello_type"))
        .unwrap()
        + 1;
    assert!(
        toml.contains(&format!(
            "{}:{accept_line}: tcp-request content accept",
            copy_path.display()
        )),
        "{toml}"
    );
    assert!(toml.contains("maxconn 256"), "{toml}");
    let _daemon = Daemon::start(&toml, &[], &[]);
    wait_listening(sy["L4"], &mut child, &log, Duration::from_secs(10)).await;
    for (proxy, front) in [("haproxy", hp["L4"]), ("switchyard", sy["L4"])] {
        assert_eq!(
            who(
                IpAddr::from([127, 9, 3, 1]),
                front,
                &hello("app1.example.com")
            )
            .await,
            "app1",
            "{proxy}"
        );
        for i in 1..=5u8 {
            assert_eq!(
                who(
                    IpAddr::from([127, 9, 4, i]),
                    front,
                    &hello("www.example.com")
                )
                .await,
                "d1",
                "{proxy}"
            );
        }
    }
    for (proxy, front) in [("haproxy", hp["L5"]), ("switchyard", sy["L5"])] {
        assert_eq!(
            who(IpAddr::from([127, 9, 5, 1]), front, b"select 1\n").await,
            "db1",
            "{proxy}"
        );
    }
}

/// HAProxy's `source … usesrc clientip` and nginx's `proxy_bind
/// $remote_addr transparent` become `source = "client"`; a plain address
/// stays an address.
#[test]
fn transparent_sources_import_as_client() {
    let dir = tempfile::tempdir().unwrap();
    let haproxy = dir.path().join("haproxy.cfg");
    std::fs::write(
        &haproxy,
        "frontend f\n    mode tcp\n    bind 127.0.0.1:7000\n    default_backend b\n\
         backend b\n    mode tcp\n    source 0.0.0.0 usesrc clientip\n    server s1 127.0.0.1:7001\n\
         backend c\n    mode tcp\n    source 10.0.0.5\n    server s2 127.0.0.1:7002\n",
    )
    .unwrap();
    let toml = import("haproxy", &haproxy);
    assert!(
        toml.contains("[pools.\"b\"]\nsource = \"client\""),
        "{toml}"
    );
    assert!(
        toml.contains("[pools.\"c\"]\nsource = \"10.0.0.5\""),
        "{toml}"
    );
    check(dir.path(), &toml);

    let nginx = dir.path().join("nginx.conf");
    std::fs::write(
        &nginx,
        "stream {\n  upstream app { server 127.0.0.1:7001; }\n  server {\n    listen 127.0.0.1:7000;\n    proxy_bind $remote_addr transparent;\n    proxy_pass app;\n  }\n}\n",
    )
    .unwrap();
    let toml = import("nginx", &nginx);
    assert!(toml.contains("source = \"client\""), "{toml}");
    check(dir.path(), &toml);
}

/// Unix sockets as the peers write them (HAProxy's `/path`, `abns@name`
/// and a file's `mode`/`user`; nginx's `unix:/path`) import as switchyard's
/// `unix:` endpoints, and the result passes `check`.
#[test]
fn unix_sockets_import_as_unix_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let haproxy = dir.path().join("haproxy.cfg");
    std::fs::write(
        &haproxy,
        format!(
            "frontend f\n    mode tcp\n    bind {}/front.sock mode 660 user nobody\n    bind abns@front\n    default_backend b\n\
             backend b\n    mode tcp\n    server app {}/app.sock\n    server other abns@app\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let toml = import("haproxy", &haproxy);
    let d = dir.path().display();
    for want in [
        format!("bind = \"unix:{d}/front.sock\"\nmode = \"660\"\nowner = \"nobody\""),
        "bind = \"unix:@front\"".to_string(),
        format!("addr = \"unix:{d}/app.sock\""),
        "addr = \"unix:@app\"".to_string(),
    ] {
        assert!(toml.contains(&want), "{want} in:\n{toml}");
    }
    check(dir.path(), &toml);

    let nginx = dir.path().join("nginx.conf");
    std::fs::write(
        &nginx,
        format!(
            "stream {{\n  upstream app {{ server unix:{d}/app.sock; }}\n  server {{\n    listen unix:{d}/front.sock;\n    proxy_pass app;\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let toml = import("nginx", &nginx);
    assert!(
        toml.contains(&format!("bind = \"unix:{d}/front.sock\"")),
        "{toml}"
    );
    assert!(
        toml.contains(&format!("addr = \"unix:{d}/app.sock\"")),
        "{toml}"
    );
    check(dir.path(), &toml);
}
