//! TLS ended on listeners and started to backends, against real TLS peers:
//! `openssl s_client` and a rustls client in front, `openssl s_server`
//! (demanding our client certificate) behind; per-route certificates next
//! to passed-through routes; the client's identity onward in PROXY v2 TLVs;
//! checks over TLS; certificate rotation by reload under load; and hostile
//! handshakes bounded by `tls_handshake_timeout` and the per-address limit.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{self, Pair};
use common::process::{free_addr, wait_listening, Proc};
use common::{installed, value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The series of a handshake counter.
fn handshakes(side: &str, listener: &str, pool: &str, result: &str) -> String {
    format!("switchyard_tls_handshakes_total{{listener=\"{listener}\",pool=\"{pool}\",result=\"{result}\",side=\"{side}\"}}")
}

/// Runs `openssl s_client` to `to` with `args`; its output, and whether it
/// exited well.
async fn s_client(to: SocketAddr, args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-brief", "-connect", &to.to_string()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .expect("s_client finished in time")
        .expect("s_client runs");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

/// A real `openssl s_server -rev` (answers each line reversed) with `pair`,
/// demanding a client certificate signed by `client_ca` when given.
async fn s_server(
    dir: &Path,
    pair: &Pair,
    client_ca: Option<&Pair>,
    tag: &str,
) -> (Proc, SocketAddr) {
    let addr = free_addr();
    let log = dir.join(format!("s_server-{tag}.log"));
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-rev", "-accept", &addr.to_string()])
        .arg("-cert")
        .arg(&pair.cert)
        .arg("-key")
        .arg(&pair.key);
    if let Some(ca) = client_ca {
        cmd.args(["-Verify", "1", "-verify_return_error", "-CAfile"])
            .arg(&ca.cert);
    }
    let mut child = Proc::spawn(&mut cmd, &log);
    wait_listening(addr, &mut child, &log, Duration::from_secs(10)).await;
    (child, addr)
}

/// Starts the daemon from `toml` written as a file in `dir` (so that a
/// reload re-reads it).
async fn start_file(dir: &Path, toml: &str) -> switchyard::Server {
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, toml).unwrap();
    let config = switchyard::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    switchyard::Server::start(config).await.expect("starts")
}

/// Writes `n` random bytes to `s` while reading as many back; both digests.
async fn exchange<S>(s: S, n: usize) -> ([u8; 32], [u8; 32])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut left = n;
        let mut chunk = vec![0u8; 64 * 1024];
        while left > 0 {
            let k = left.min(chunk.len());
            rand::fill(&mut chunk[..k]);
            h.update(&chunk[..k]);
            w.write_all(&chunk[..k]).await.unwrap();
            left -= k;
        }
        w.shutdown().await.unwrap();
        <[u8; 32]>::from(h.finalize())
    });
    let mut h = Sha256::new();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        got += k;
    }
    assert_eq!(got, n, "bytes back");
    (writer.await.unwrap(), h.finalize().into())
}

fn pki_dir() -> (tempfile::TempDir, Pair, Pair) {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca(dir.path(), "test-ca");
    let server = pki::leaf(dir.path(), &ca, "tls.example", "server", 2);
    (dir, ca, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_ends_tls_and_its_backend_gets_the_plaintext() {
    if !installed("openssl", "openssl") {
        return;
    }
    let (dir, ca, server) = pki_dir();
    let echo = common::echo_raw().await;
    let toml = format!(
        "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [listeners.tls]\n{0}\nalpn = [\"echo\"]\n\
         [[listeners]]\nname = \"t13\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [listeners.tls]\n{0}\nmin_version = \"1.3\"\n\
         [pools.p]\nbackends = [{{ addr = \"{echo}\" }}]\n",
        server.toml().replace(", ", "\n")
    );
    let srv = start_file(dir.path(), &toml).await;
    let front = srv.local_addr("t").unwrap();
    // min_version = "1.3": a TLS 1.2 client is refused and counted.
    let t13 = srv.local_addr("t13").unwrap();
    let (ok, out) = s_client(t13, &["-tls1_2", "-servername", "tls.example"]).await;
    assert!(!ok, "{out}");
    common::wait_metric(
        &srv,
        &handshakes("client", "t13", "", "protocol_version"),
        1.0,
        Duration::from_secs(5),
    )
    .await;
    let ca_arg = ca.cert.to_str().unwrap();

    // openssl sees our certificate, verified, in each version.
    for (flag, version) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let (ok, out) = s_client(
            front,
            &[
                flag,
                "-CAfile",
                ca_arg,
                "-verify_return_error",
                "-servername",
                "tls.example",
                "-alpn",
                "echo",
            ],
        )
        .await;
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("Protocol version: {version}")),
            "{out}"
        );
        assert!(out.contains("Verification: OK"), "{out}");
    }

    // 16 MiB each way, byte-exact, through the terminating listener to a
    // plain echo backend; the client's end of writing reaches the backend
    // (half-close), whose end comes back.
    let config = pki::client(&ca, None, &["echo"]);
    let s = pki::connect(&config, front, "tls.example").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"echo"[..]));
    let (sent, back) = exchange(s, 16 << 20).await;
    assert_eq!(sent, back, "bytes changed on the way");

    assert_eq!(value(&srv, &handshakes("client", "t", "", "ok")), 3.0);
    let not_after = value(
        &srv,
        &format!(
            "switchyard_tls_certificate_not_after_timestamp_seconds{{file=\"{}\",listener=\"t\",pool=\"\"}}",
            server.cert.display()
        ),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(
        not_after > now + 86400.0 && not_after < now + 3.0 * 86400.0,
        "{not_after}"
    );
    srv.shutdown().await;
}

/// A backend that reads a PROXY v2 header and answers with what its TLS
/// TLVs say, one line: `version cn authority client-flags verify`.
async fn tlv_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                assert_eq!(&head[..12], b"\r\n\r\n\0\r\nQUIT\n");
                let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                let mut rest = vec![0u8; len];
                s.read_exact(&mut rest).await.unwrap();
                // IPv4 addresses: 12 bytes, then TLVs.
                let tlvs = &rest[12..];
                let (mut version, mut cn, mut authority, mut flags, mut verify) =
                    (String::new(), String::new(), String::new(), 0u8, u32::MAX);
                let walk = |mut b: &[u8], f: &mut dyn FnMut(u8, &[u8])| {
                    while b.len() >= 3 {
                        let t = b[0];
                        let l = u16::from_be_bytes([b[1], b[2]]) as usize;
                        f(t, &b[3..3 + l]);
                        b = &b[3 + l..];
                    }
                };
                walk(tlvs, &mut |t, v| match t {
                    0x02 => authority = String::from_utf8_lossy(v).into(),
                    0x20 => {
                        flags = v[0];
                        verify = u32::from_be_bytes([v[1], v[2], v[3], v[4]]);
                        walk(&v[5..], &mut |st, sv| match st {
                            0x21 => version = String::from_utf8_lossy(sv).into(),
                            0x22 => cn = String::from_utf8_lossy(sv).into(),
                            _ => {}
                        });
                    }
                    _ => {}
                });
                let line = format!("{version} {cn} {authority} {flags} {verify}\n");
                let _ = s.write_all(line.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_passes_the_clients_identity_on_in_proxy_v2() {
    if !installed("openssl", "openssl") {
        return;
    }
    let (dir, ca, server) = pki_dir();
    let clients_ca = pki::ca(dir.path(), "clients-ca");
    let alice = pki::leaf(dir.path(), &clients_ca, "alice", "alice", 2);
    let other_ca = pki::ca(dir.path(), "other-ca");
    let mallory = pki::leaf(dir.path(), &other_ca, "mallory", "mallory", 2);
    let backend = tlv_backend().await;
    let toml = format!(
        "[[listeners]]\nname = \"m\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [listeners.tls]\n{}\nclient_ca = \"{}\"\n\
         [pools.p]\nproxy_protocol = \"v2\"\nbackends = [{{ addr = \"{backend}\" }}]\n",
        server.toml().replace(", ", "\n"),
        clients_ca.cert.display()
    );
    let srv = start_file(dir.path(), &toml).await;
    let front = srv.local_addr("m").unwrap();

    let read_line = |mut s: tokio_rustls::client::TlsStream<TcpStream>| async move {
        let mut out = String::new();
        s.read_to_string(&mut out).await.map(|_| out)
    };
    let with = pki::client(&ca, Some(&alice), &[]);
    let s = pki::connect(&with, front, "tls.example").await.unwrap();
    let line = read_line(s).await.unwrap();
    // PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, verify 0 (verified).
    assert_eq!(line, "TLSv1.3 alice tls.example 3 0\n");

    // No certificate, or one from another CA: refused, counted, and no
    // backend sees a byte (TLS 1.3 ends the handshake for the client before
    // the server has judged its certificate, so the refusal shows on read).
    for (who, pair) in [("none", None), ("mallory", Some(&mallory))] {
        let config = pki::client(&ca, pair, &[]);
        let refused = match pki::connect(&config, front, "tls.example").await {
            Err(_) => true,
            Ok(s) => read_line(s).await.is_err(),
        };
        assert!(refused, "{who} was served");
    }
    // openssl without a certificate: refused the same way.
    let _ = s_client(front, &["-CAfile", ca.cert.to_str().unwrap()]).await;
    common::wait_metric(
        &srv,
        &handshakes("client", "m", "", "no_certificate"),
        2.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        value(&srv, &handshakes("client", "m", "", "unknown_ca")),
        1.0
    );
    assert_eq!(value(&srv, &handshakes("client", "m", "", "ok")), 1.0);
    // Only alice reached the backend.
    assert_eq!(
        value(
            &srv,
            &format!("switchyard_backend_connections_total{{backend=\"{backend}\",backend_name=\"{backend}\",pool=\"p\"}}")
        ),
        1.0
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_ends_tls_with_its_own_certificate_and_others_pass_through() {
    if !installed("openssl", "openssl") {
        return;
    }
    let (dir, ca, _) = pki_dir();
    let a = pki::leaf(dir.path(), &ca, "a.example", "a", 2);
    let b = pki::leaf(dir.path(), &ca, "b.example", "b", 2);
    // b.example's own server ends its TLS: we only route it.
    let (_b_server, b_addr) = s_server(dir.path(), &b, None, "b").await;
    let echo = common::echo_raw().await;
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"r\"\nbind = \"127.0.0.1:0\"\npool = \"plain\"\n\
         [[listeners.routes]]\nsni = [\"a.example\"]\npool = \"echo\"\ntls = {{ {} }}\n\
         [[listeners.routes]]\nsni = [\"b.example\"]\npool = \"b\"\n\
         [pools.echo]\nbackends = [{{ addr = \"{echo}\" }}]\n\
         [pools.b]\nbackends = [{{ addr = \"{b_addr}\" }}]\n\
         [pools.plain]\nbackends = [{{ addr = \"{echo}\" }}]\n",
        a.toml()
    );
    let srv = start_file(dir.path(), &toml).await;
    let front = srv.local_addr("r").unwrap();
    let config = pki::client(&ca, None, &[]);

    // a.example: ended here with a's certificate, the echo gets plaintext.
    let mut s = pki::connect(&config, front, "a.example").await.unwrap();
    assert_eq!(pki::peer_leaf(&s), pki::der(&a.cert));
    s.write_all(b"ping\n").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping\n");
    drop(s);
    // b.example: passed through to its own server, which answers reversed.
    let mut s = pki::connect(&config, front, "b.example").await.unwrap();
    assert_eq!(pki::peer_leaf(&s), pki::der(&b.cert));
    s.write_all(b"ping\n").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"gnip\n");
    // A name no route has, without a listener certificate: passed through
    // to the listener's pool (a plain echo), hello and all.
    let mut raw = TcpStream::connect(front).await.unwrap();
    let tls = pki::connect(&config, front, "c.example").await;
    assert!(tls.is_err(), "nobody ends TLS for c.example");
    raw.write_all(b"plain\n").await.unwrap();
    let mut buf = [0u8; 6];
    raw.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"plain\n");
    assert_eq!(value(&srv, &handshakes("client", "r", "", "ok")), 1.0);
    // The API says which route ends TLS, with what.
    let admin = srv.admin_addr().await.unwrap();
    let (_, body) = tokio::task::spawn_blocking(move || {
        common::daemon::http(admin, "GET", "/api/v1/listeners", &[], "")
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let routes = &v["listeners"][0]["routes"];
    assert_eq!(
        routes[0]["tls"]["own"]["common_name"], "a.example",
        "{body}"
    );
    assert_eq!(routes[1]["tls"], "passthrough", "{body}");
    assert!(v["listeners"][0]["tls"].is_null(), "{body}");
    drop((s, raw));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_starts_verified_tls_and_refuses_backends_it_cannot_trust() {
    if !installed("openssl", "openssl") {
        return;
    }
    let (dir, ca, _) = pki_dir();
    let good = pki::leaf(dir.path(), &ca, "db.internal", "good", 2);
    let wrong_name = pki::leaf(dir.path(), &ca, "other.internal", "wrong-name", 2);
    let other_ca = pki::ca(dir.path(), "other-ca");
    let untrusted = pki::leaf(dir.path(), &other_ca, "db.internal", "untrusted", 2);
    let lb = pki::leaf(dir.path(), &ca, "lb", "lb", 2);
    // Each backend demands our client certificate, signed by the test CA.
    let (_g, good_addr) = s_server(dir.path(), &good, Some(&ca), "good").await;
    let (_w, wrong_addr) = s_server(dir.path(), &wrong_name, Some(&ca), "wrong").await;
    let (_u, untrusted_addr) = s_server(dir.path(), &untrusted, Some(&ca), "untrusted").await;
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"db\"\n\
         [pools.db]\nretries = 2\nmax_fails = 1\nfail_timeout = \"60s\"\n\
         backends = [{{ addr = \"{untrusted_addr}\" }}, {{ addr = \"{wrong_addr}\" }}, {{ addr = \"{good_addr}\" }}]\n\
         [pools.db.tls]\nca = \"{}\"\nserver_name = \"db.internal\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.cert.display(),
        lb.cert.display(),
        lb.key.display()
    );
    let srv = start_file(dir.path(), &toml).await;
    let front = srv.local_addr("front").unwrap();
    // Every plain client is answered by the one backend it can trust.
    for i in 0..6 {
        let mut s = TcpStream::connect(front).await.unwrap();
        s.write_all(format!("hello{i}\n").as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 7];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(buf, format!("{i}olleh\n").into_bytes());
    }
    let failures = |addr: SocketAddr| {
        value(
            &srv,
            &format!("switchyard_backend_connect_failures_total{{backend=\"{addr}\",backend_name=\"{addr}\",pool=\"db\",reason=\"tls\"}}"),
        )
    };
    // max_fails = 1: each bad one failed once, then was left out.
    assert_eq!(failures(untrusted_addr), 1.0);
    assert_eq!(failures(wrong_addr), 1.0);
    assert_eq!(failures(good_addr), 0.0);
    assert_eq!(
        value(&srv, &handshakes("backend", "", "db", "unknown_ca")),
        1.0
    );
    assert_eq!(
        value(&srv, &handshakes("backend", "", "db", "bad_certificate")),
        1.0
    );
    assert_eq!(value(&srv, &handshakes("backend", "", "db", "ok")), 6.0);
    // When our client certificate expires: two days from now.
    let not_after = value(
        &srv,
        &format!(
            "switchyard_tls_certificate_not_after_timestamp_seconds{{file=\"{}\",listener=\"\",pool=\"db\"}}",
            lb.cert.display()
        ),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(
        not_after > now + 86400.0 && not_after < now + 3.0 * 86400.0,
        "{not_after}"
    );
    // The API and ctl show the pool's TLS.
    let admin = srv.admin_addr().await.unwrap();
    let (_, body) = tokio::task::spawn_blocking(move || {
        common::daemon::http(admin, "GET", "/api/v1/pools", &[], "")
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tls = &v["pools"][0]["tls"];
    assert_eq!(
        (
            tls["server_name"].as_str(),
            tls["verify"].as_bool(),
            tls["client_certificate"].as_bool()
        ),
        (Some("db.internal"), Some(true), Some(true)),
        "{body}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["ctl", "--admin", &admin.to_string(), "status"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.lines().next().unwrap().contains(" TLS "), "{out}");
    assert!(out.lines().nth(1).unwrap().contains(" yes "), "{out}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_run_over_the_pools_tls() {
    if !installed("openssl", "openssl") {
        return;
    }
    let (dir, ca, _) = pki_dir();
    let good = pki::leaf(dir.path(), &ca, "db.internal", "good", 2);
    let other_ca = pki::ca(dir.path(), "other-ca");
    let untrusted = pki::leaf(dir.path(), &other_ca, "db.internal", "untrusted", 2);
    let (_g, good_addr) = s_server(dir.path(), &good, None, "good").await;
    let (_u, untrusted_addr) = s_server(dir.path(), &untrusted, None, "untrusted").await;
    let toml = format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"db\"\n\
         [pools.db]\nbackends = [{{ addr = \"{untrusted_addr}\" }}, {{ addr = \"{good_addr}\" }}]\n\
         [pools.db.tls]\nca = \"{}\"\nserver_name = \"db.internal\"\n\
         [pools.db.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\nrise = 1\n",
        ca.cert.display()
    );
    let srv = start_file(dir.path(), &toml).await;
    let up = |addr: SocketAddr| {
        format!("switchyard_backend_up{{backend=\"{addr}\",backend_name=\"{addr}\",pool=\"db\"}}")
    };
    common::wait_metric(&srv, &up(untrusted_addr), 0.0, Duration::from_secs(5)).await;
    // The good one stays up through several checks (each a handshake).
    let checks = format!(
        "switchyard_backend_health_checks_total{{backend=\"{good_addr}\",backend_name=\"{good_addr}\",pool=\"db\",result=\"success\"}}"
    );
    common::wait_metric(&srv, &checks, 3.0, Duration::from_secs(5)).await;
    assert_eq!(value(&srv, &up(good_addr)), 1.0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_certificates_are_served_after_a_reload_with_no_handshake_failing() {
    if !installed("openssl", "openssl") {
        return;
    }
    let (dir, ca, _) = pki_dir();
    // The files the configuration names; their contents change.
    let live = Pair {
        cert: dir.path().join("live.crt"),
        key: dir.path().join("live.key"),
    };
    let first = pki::leaf(dir.path(), &ca, "tls.example", "first", 2);
    let second = pki::leaf(dir.path(), &ca, "tls.example", "second", 2);
    let stranger = pki::leaf(
        dir.path(),
        &pki::ca(dir.path(), "x-ca"),
        "tls.example",
        "x",
        2,
    );
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let echo = common::echo_raw().await;
    let toml = format!(
        "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [listeners.tls]\ncert = \"live.crt\"\nkey = \"live.key\"\n\
         [pools.p]\nbackends = [{{ addr = \"{echo}\" }}]\n"
    );
    let srv = start_file(dir.path(), &toml).await;
    let front = srv.local_addr("t").unwrap();
    let config = pki::client(&ca, None, &[]);

    // Load: handshakes one after another until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, done, failed, config) =
            (stop.clone(), done.clone(), failed.clone(), config.clone());
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match pki::connect(&config, front, "tls.example").await {
                    Ok(mut s) => {
                        let ok = s.write_all(b"x").await.is_ok() && {
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b).await.is_ok()
                        };
                        if ok {
                            done.fetch_add(1, Ordering::SeqCst);
                        } else {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    let s = pki::connect(&config, front, "tls.example").await.unwrap();
    assert_eq!(pki::peer_leaf(&s), pki::der(&first.cert));
    // An established connection carries on across the reload.
    let (mut held_r, mut held_w) = tokio::io::split(s);
    common::wait_for("load to run", Duration::from_secs(10), || {
        done.load(Ordering::SeqCst) > 20
    })
    .await;

    // A key that does not match its certificate: the reload fails as a
    // whole, the old certificate stays.
    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&stranger.key, &live.key).unwrap();
    let e = srv.reload_file().await.unwrap_err().to_string();
    assert!(
        e.contains("listeners[0].tls.key") && e.contains("does not match"),
        "{e}"
    );
    let s = pki::connect(&config, front, "tls.example").await.unwrap();
    assert_eq!(pki::peer_leaf(&s), pki::der(&first.cert));
    drop(s);

    std::fs::copy(&second.key, &live.key).unwrap();
    srv.reload_file().await.unwrap();
    let s = pki::connect(&config, front, "tls.example").await.unwrap();
    assert_eq!(pki::peer_leaf(&s), pki::der(&second.cert));
    drop(s);
    let at_reload = done.load(Ordering::SeqCst);
    common::wait_for("load after the reload", Duration::from_secs(10), || {
        done.load(Ordering::SeqCst) > at_reload + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed handshakes");
    held_w.write_all(b"still\n").await.unwrap();
    let mut buf = [0u8; 6];
    held_r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still\n");
    drop((held_r, held_w));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handshakes_end_within_the_timeout_and_within_their_limits() {
    if !installed("openssl", "openssl") {
        return;
    }
    // 1,000 clients and what they open here need more descriptors than a
    // soft limit of 1,024: raise it to the hard limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on this process, with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= 4096,
        "the descriptor limit is {}",
        lim.rlim_cur
    );
    let (dir, _ca, server) = pki_dir();
    let echo = common::echo_raw().await;
    let toml = format!(
        "[[listeners]]\nname = \"h\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         tls_handshake_timeout = \"1s\"\nmax_connections_per_ip = 40\n\
         [listeners.tls]\n{}\n\
         [pools.p]\nbackends = [{{ addr = \"{echo}\" }}]\n",
        server.toml().replace(", ", "\n")
    );
    let srv = start_file(dir.path(), &toml).await;
    let front = srv.local_addr("h").unwrap();

    /// How long until the proxy closed `s` (reading nothing but alerts).
    async fn closed_after(mut s: TcpStream, began: Instant) -> Duration {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return began.elapsed(),
                Ok(Ok(_)) => continue,
                Err(_) => panic!("not closed within 10 s"),
            }
        }
    }
    // Garbage: refused at once as no TLS.
    let began = Instant::now();
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_after(s, began).await < Duration::from_millis(900));
    // Connect and leave: eof.
    drop(TcpStream::connect(front).await.unwrap());
    // 1,000 clients from 20 addresses that send the start of a ClientHello
    // and stall, and one that sends a byte every 300 ms: each closed at the
    // timeout, measured from its own connect. The per-address limit holds 40
    // of each address's 50 at once; the other 10 are refused at accept,
    // before a byte is read.
    let hello_start = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut stalled = Vec::new();
    for i in 0..1000 {
        let from = format!("127.0.9.{}", 1 + i % 20);
        let mut s = common::connect_from(&from, front).await;
        let began = Instant::now();
        let _ = s.write_all(&hello_start).await;
        stalled.push(tokio::spawn(closed_after(s, began)));
    }
    let mut slow = common::connect_from("127.0.10.1", front).await;
    let slow_began = Instant::now();
    let dripping = tokio::spawn(async move {
        for b in hello_start {
            if slow.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        closed_after(slow, slow_began).await
    });
    let mut times = Vec::new();
    for t in stalled {
        times.push(t.await.unwrap());
    }
    times.sort();
    // The 200 past the limit went first, refused at accept; the 800 held
    // ended at the timeout, none much later.
    assert!(
        times[199] < Duration::from_millis(900),
        "{:?}",
        &times[190..210]
    );
    assert!(
        times[200] >= Duration::from_millis(950) && times[999] < Duration::from_secs(3),
        "{:?} {:?}",
        &times[195..205],
        &times[990..]
    );
    let slow_took = dripping.await.unwrap();
    assert!(
        slow_took >= Duration::from_millis(950) && slow_took < Duration::from_secs(3),
        "{slow_took:?}"
    );
    common::wait_metric(
        &srv,
        &handshakes("client", "h", "", "timeout"),
        801.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        value(&srv, &handshakes("client", "h", "", "bad_message")),
        1.0
    );
    assert_eq!(value(&srv, &handshakes("client", "h", "", "eof")), 1.0);
    assert_eq!(
        value(
            &srv,
            "switchyard_listener_rejected_total{listener=\"h\",reason=\"ip_limit\"}"
        ),
        200.0
    );
    // None of them reached a backend.
    assert_eq!(
        value(
            &srv,
            &format!("switchyard_backend_connections_total{{backend=\"{echo}\",backend_name=\"{echo}\",pool=\"p\"}}")
        ),
        0.0
    );
    srv.shutdown().await;
}

#[test]
fn check_names_the_file_and_key_of_a_certificate_problem() {
    if !installed("openssl", "openssl") {
        return;
    }
    let (dir, ca, server) = pki_dir();
    let soon = pki::leaf(dir.path(), &ca, "soon.example", "soon", 3);
    let other = pki::leaf(dir.path(), &ca, "other.example", "other", 2);
    let run = |toml: &str| {
        let path: PathBuf = dir.path().join("check.toml");
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let listener = |tls: &str| {
        format!(
            "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[listeners.tls]\n{tls}\n\
             [pools.p]\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n"
        )
    };
    // A key of another certificate.
    let (ok, out) = run(&listener(&format!(
        "cert = \"{}\"\nkey = \"{}\"",
        server.cert.display(),
        other.key.display()
    )));
    assert!(!ok, "{out}");
    assert!(
        out.contains("check.toml:7:")
            && out.contains("listeners[0].tls.key")
            && out.contains("does not match"),
        "{out}"
    );
    // A file that is not there.
    let (ok, out) = run(&listener("cert = \"missing.crt\"\nkey = \"missing.key\""));
    assert!(!ok, "{out}");
    assert!(
        out.contains("listeners[0].tls.cert") && out.contains("missing.crt: cannot read it"),
        "{out}"
    );
    // A certificate that expires in three days: a warning, not an error.
    let (ok, out) = run(&listener(&soon.toml().replace(", ", "\n")));
    assert!(ok, "{out}");
    assert!(
        out.contains("listeners[0].tls.cert") && out.contains("expires at"),
        "{out}"
    );
    // A pool without a CA to verify against.
    let (ok, out) = run(&format!(
        "{}[pools.p.tls]\nserver_name = \"x\"\n",
        listener(&server.toml().replace(", ", "\n"))
    ));
    assert!(!ok, "{out}");
    assert!(out.contains("pools.p.tls.ca"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_reads_the_server_name_from_our_proxy_v2_tlvs() {
    if !installed("openssl", "openssl") || !installed("haproxy", "haproxy") {
        return;
    }
    let (dir, ca, server) = pki_dir();
    // HAProxy takes our header (it refuses a malformed TLV) and answers
    // with the authority TLV it read. HAProxy 2.6 exposes no sample for the
    // SSL TLV's common name (fc_pp_tlv came in 2.9): that one is read by
    // `mutual_tls_passes_the_clients_identity_on_in_proxy_v2`.
    let addr = free_addr();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 5s\n  timeout server 5s\n\
             frontend f\n  bind {addr} accept-proxy\n  \
             http-request return status 200 content-type text/plain lf-string \"authority=%[fc_pp_authority]\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("haproxy.log");
    let mut hap = Proc::spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&cfg), &log);
    wait_listening(addr, &mut hap, &log, Duration::from_secs(10)).await;
    let toml = format!(
        "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\npool = \"hap\"\n\
         [listeners.tls]\n{}\n\
         [pools.hap]\nproxy_protocol = \"v2\"\nbackends = [{{ addr = \"{addr}\" }}]\n",
        server.toml().replace(", ", "\n")
    );
    let srv = start_file(dir.path(), &toml).await;
    let front = srv.local_addr("t").unwrap();
    let config = pki::client(&ca, None, &[]);
    let mut s = pki::connect(&config, front, "tls.example").await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("authority=tls.example"), "{out}");
    drop(s);
    srv.shutdown().await;
}

/// `ca = "@system-ca"`: backends are verified against the system's roots,
/// found where OpenSSL finds them (here `SSL_CERT_FILE`, the daemon's
/// environment): a backend the system trusts serves, one it does not is
/// refused before a byte reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_roots_verify_backends_when_asked() {
    if !installed("openssl", "openssl") {
        return;
    }
    let (dir, ca, _) = pki_dir();
    let good = pki::leaf(dir.path(), &ca, "db.internal", "good", 2);
    let other_ca = pki::ca(dir.path(), "other-ca");
    let (_g, backend) = s_server(dir.path(), &good, None, "system").await;
    let toml = format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"db\"\n\
         [pools.db]\nbackends = [{{ addr = \"{backend}\" }}]\n\
         [pools.db.tls]\nca = \"@system-ca\"\nserver_name = \"db.internal\"\n"
    );
    for (trusted, expect) in [(&ca, "olleh\n"), (&other_ca, "")] {
        let bundle = trusted.cert.display().to_string();
        let daemon = common::daemon::Daemon::start(
            &toml,
            &[],
            &[("SSL_CERT_FILE", &bundle), ("SSL_CERT_DIR", "/nonexistent")],
        );
        let mut s = TcpStream::connect(daemon.listeners()["front"])
            .await
            .unwrap();
        s.write_all(b"hello\n").await.unwrap();
        assert_eq!(line_or_close(&mut s).await, expect, "trusting {bundle}");
    }
}

/// A line read from `s`, or what came before it closed (within 10 s).
async fn line_or_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("an answer or a close in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).to_string()
}

/// `on_backend_down = "close"` holds for connections with TLS on either
/// side: a terminated client's connection and one the pool started TLS on
/// are both closed when their backend goes down, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_backend_down_close_ends_tls_connections_too() {
    if !installed("openssl", "openssl") {
        return;
    }
    let (dir, ca, server) = pki_dir();
    let backend_pair = pki::leaf(dir.path(), &ca, "db.internal", "db", 2);
    let mut plain = common::Backend::start("plain").await;
    let (_tls_backend, tls_addr) = s_server(dir.path(), &backend_pair, None, "down").await;
    // The TLS backend's check port, on its address: closing it takes the
    // backend down while its established connections live on (as killing
    // s_server would not).
    let check = std::net::TcpListener::bind((tls_addr.ip(), 0)).unwrap();
    let check_port = check.local_addr().unwrap().port();
    let toml = format!(
        "[[listeners]]\nname = \"ends\"\nbind = \"127.0.0.1:0\"\npool = \"plain\"\naccess_log = false\n\
         [listeners.tls]\n{}\n\
         [[listeners]]\nname = \"starts\"\nbind = \"127.0.0.1:0\"\npool = \"tls\"\naccess_log = false\n\
         [pools.plain]\non_backend_down = \"close\"\nbackends = [{{ addr = \"{}\" }}]\n\
         [pools.plain.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\n\
         [pools.tls]\non_backend_down = \"close\"\nbackends = [{{ addr = \"{tls_addr}\" }}]\n\
         [pools.tls.tls]\nca = \"{}\"\nserver_name = \"db.internal\"\n\
         [pools.tls.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\nport = {check_port}\ntls = false\n",
        server.toml().replace(", ", "\n"),
        plain.addr,
        ca.cert.display()
    );
    let srv = start_file(dir.path(), &toml).await;
    // A terminated client, answered by the plain backend.
    let config = pki::client(&ca, None, &[]);
    let mut ended = pki::connect(&config, srv.local_addr("ends").unwrap(), "tls.example")
        .await
        .unwrap();
    ended.write_all(b"x\n").await.unwrap();
    assert_eq!(line_or_close(&mut ended).await, "plain: x\n");
    // A plain client whose backend connection the pool started TLS on.
    let mut started = TcpStream::connect(srv.local_addr("starts").unwrap())
        .await
        .unwrap();
    started.write_all(b"abc\n").await.unwrap();
    assert_eq!(line_or_close(&mut started).await, "cba\n");

    // Both backends go down (their established connections would run on);
    // both connections end.
    plain.stop();
    drop(check);
    assert!(
        read_to_close(&mut ended).await,
        "the terminated connection was closed"
    );
    assert!(
        read_to_close(&mut started).await,
        "the originated connection was closed"
    );
    for (pool, addr) in [("plain", plain.addr), ("tls", tls_addr)] {
        let series = format!(
            "switchyard_backend_connections_closed_total{{backend=\"{addr}\",pool=\"{pool}\"}}"
        );
        common::wait_metric(&srv, &series, 1.0, Duration::from_secs(5)).await;
    }
}

/// Reads until the peer closes (or errs) within 5 s: whether it did.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = [0u8; 256];
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}
