//! The admin endpoint: metrics that move with traffic and pass promtool, the
//! JSON API (drain, enable, weight), tokens, bad requests, and readiness.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::daemon::http;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

async fn with_admin(
    backends: &[SocketAddr],
    admin_extra: &str,
    strategy: &str,
) -> (switchyard::Server, SocketAddr) {
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{admin_extra}\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[listeners]]\nname = \"dns\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nstrategy = \"{strategy}\"\nbackends = {}\n",
        backends_toml(backends, None)
    );
    let server = start(&text).await;
    let admin = server.admin_addr().await.unwrap();
    (server, admin)
}

async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http(admin, "GET", &path, &[], ""))
        .await
        .unwrap()
}

async fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let (m, p, b) = (method.to_string(), path.to_string(), body.to_string());
    let h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http(admin, &m, &p, &h, &b)
    })
    .await
    .unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn backend(pools: &Value, addr: SocketAddr) -> &Value {
    pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr.to_string())
        .unwrap()
}

#[tokio::test]
async fn metrics_move_with_traffic_and_pass_promtool() {
    if !common::installed("promtool", "prometheus") {
        return;
    }
    let a = Backend::start("a").await;
    let (server, admin) = with_admin(&[a.addr], "", "round_robin").await;
    let front = server.local_addr("front").unwrap();
    for _ in 0..5 {
        assert_eq!(ask(front).await, "a");
    }
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(b"hi", server.local_addr("dns").unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"a: hi");

    wait_idle(&server, "front").await;
    // A reply is counted once its session's task has nothing more to read.
    common::wait_metric(
        &server,
        "switchyard_udp_datagrams_total{direction=\"out\",listener=\"dns\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let b = a.addr;
    let expect = [
        (
            "switchyard_listener_connections_total{listener=\"front\"}".to_string(),
            5.0,
        ),
        (
            "switchyard_listener_bytes_total{direction=\"in\",listener=\"front\"}".to_string(),
            20.0,
        ),
        (
            "switchyard_listener_bytes_total{direction=\"out\",listener=\"front\"}".to_string(),
            35.0,
        ),
        (
            format!("switchyard_backend_connections_total{{backend=\"{b}\",pool=\"p\"}}"),
            6.0,
        ),
        (
            format!(
                "switchyard_backend_bytes_total{{backend=\"{b}\",direction=\"out\",pool=\"p\"}}"
            ),
            22.0,
        ),
        (
            format!(
                "switchyard_backend_bytes_total{{backend=\"{b}\",direction=\"in\",pool=\"p\"}}"
            ),
            40.0,
        ),
        (
            format!(
                "switchyard_backend_connect_duration_seconds_count{{backend=\"{b}\",pool=\"p\"}}"
            ),
            5.0,
        ),
        (
            format!("switchyard_backend_up{{backend=\"{b}\",pool=\"p\"}}"),
            1.0,
        ),
        (
            format!("switchyard_backend_weight{{backend=\"{b}\",pool=\"p\"}}"),
            1.0,
        ),
        (
            "switchyard_connection_duration_seconds_count{listener=\"front\"}".to_string(),
            5.0,
        ),
        ("switchyard_udp_sessions{listener=\"dns\"}".to_string(), 1.0),
        (
            "switchyard_udp_sessions_total{listener=\"dns\"}".to_string(),
            1.0,
        ),
        (
            "switchyard_udp_datagrams_total{direction=\"in\",listener=\"dns\"}".to_string(),
            1.0,
        ),
        (
            "switchyard_udp_datagrams_total{direction=\"out\",listener=\"dns\"}".to_string(),
            1.0,
        ),
        (
            "switchyard_config_reloads_total{result=\"success\"}".to_string(),
            1.0,
        ),
        (
            format!(
                "switchyard_build_info{{engine=\"{}\",version=\"0.1.0\"}}",
                common::engine()
            ),
            1.0,
        ),
    ];
    for (series, want) in &expect {
        assert_eq!(metric(&text, series), Some(*want), "{series}");
    }
    assert!(metric(&text, "process_open_fds").unwrap() > 0.0);
    assert!(metric(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(
        metric(
            &text,
            "switchyard_config_last_reload_success_timestamp_seconds"
        )
        .unwrap()
            > 1.7e9
    );
    // No client address ever appears as a label.
    assert!(!text.contains(&udp.local_addr().unwrap().to_string()));
    // TCP-only series are not exported for a UDP listener.
    assert!(!text.contains("switchyard_listener_connections_total{listener=\"dns\"}"));

    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed; .ci/run installs it");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

#[tokio::test]
async fn drain_enable_and_weight_change_traffic_and_metrics() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (server, admin) = with_admin(&[a.addr, b.addr], "", "weighted").await;
    let front = server.local_addr("front").unwrap();

    // An established connection to `a` that must survive the drain.
    let mut held = TcpStream::connect(front).await.unwrap();
    held.write_all(b"1\n").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), held.read_exact(&mut buf))
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(&buf, b"a: 1\n");

    let drain = format!("/api/v1/pools/p/backends/{}/drain", a.addr);
    let (status, body) = call(admin, "POST", &drain, &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "draining");
    assert_eq!(
        value(
            &server,
            &format!(
                "switchyard_backend_draining{{backend=\"{}\",pool=\"p\"}}",
                a.addr
            )
        ),
        1.0
    );
    for _ in 0..10 {
        assert_eq!(ask(front).await, "b");
    }
    held.write_all(b"2\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), held.read_exact(&mut buf))
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(
        &buf, b"a: 2\n",
        "the drained backend's established connection runs on"
    );

    let (_, pools) = call(admin, "GET", "/api/v1/pools", &[], "").await;
    assert_eq!(backend(&pools, a.addr)["state"], "draining");
    assert_eq!(backend(&pools, a.addr)["active"], 1);

    let enable = format!("/api/v1/pools/p/backends/{}/enable", a.addr);
    let (status, body) = call(admin, "POST", &enable, &[], "").await;
    assert_eq!((status, body["state"].as_str()), (200, Some("up")));

    let weight = format!("/api/v1/pools/p/backends/{}/weight", b.addr);
    let (status, body) = call(admin, "PUT", &weight, &[], "{\"weight\": 3}").await;
    assert_eq!((status, body["weight"].as_u64()), (200, Some(3)), "{body}");
    assert_eq!(
        value(
            &server,
            &format!(
                "switchyard_backend_weight{{backend=\"{}\",pool=\"p\"}}",
                b.addr
            )
        ),
        3.0
    );
    let mut on_b = 0;
    for _ in 0..40 {
        if ask(front).await == "b" {
            on_b += 1;
        }
    }
    assert_eq!(on_b, 30, "weights 1:3 over 40 picks");
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let a = Backend::start("a").await;
    let (_server, admin) = with_admin(&[a.addr], "", "round_robin").await;
    let weight = format!("/api/v1/pools/p/backends/{}/weight", a.addr);
    let cases: Vec<(&str, String, &str, u16)> = vec![
        ("GET", "/nope".into(), "", 404),
        ("DELETE", "/metrics".into(), "", 405),
        (
            "GET",
            format!("/api/v1/pools/p/backends/{}/drain", a.addr),
            "",
            405,
        ),
        (
            "POST",
            "/api/v1/pools/missing/backends/127.0.0.1:1/drain".into(),
            "",
            404,
        ),
        (
            "POST",
            "/api/v1/pools/p/backends/not-an-addr/drain".into(),
            "",
            404,
        ),
        (
            "POST",
            "/api/v1/pools/p/backends/127.0.0.1:1/drain".into(),
            "",
            404,
        ),
        ("PUT", weight.clone(), "{\"weight\": 0}", 400),
        ("PUT", weight.clone(), "{\"weight\": \"heavy\"}", 400),
        ("PUT", weight.clone(), "not json", 400),
        ("PUT", weight.clone(), "{\"weight\": 2, \"extra\": 1}", 400),
    ];
    for (method, path, body, want) in cases {
        let (status, json) = call(admin, method, &path, &[], body).await;
        assert_eq!(status, want, "{method} {path} {body}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {json}"
        );
    }
    let big = "x".repeat(64 * 1024);
    let (status, _) = call(admin, "PUT", &weight, &[], &big).await;
    assert_eq!(status, 413);
    let (status, _) = get(admin, "/healthz").await;
    assert_eq!(status, 200, "still alive after bad requests");
}

#[tokio::test]
async fn a_token_guards_changes_and_optionally_reads() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let extra = format!("token_file = \"{}\"", token_file.display());
    let (_server, admin) = with_admin(&[a.addr], &extra, "round_robin").await;
    let drain = format!("/api/v1/pools/p/backends/{}/drain", a.addr);
    let post = |auth: &'static str| {
        let drain = drain.clone();
        async move {
            let headers: Vec<(&str, &str)> = if auth.is_empty() {
                vec![]
            } else {
                vec![("Authorization", auth)]
            };
            call(admin, "POST", &drain, &headers, "").await.0
        }
    };
    assert_eq!(post("").await, 401);
    assert_eq!(post("Bearer wrong").await, 401);
    assert_eq!(
        post("s3cret-token").await,
        401,
        "the Bearer scheme is required"
    );
    assert_eq!(post("Bearer s3cret-token").await, 200);
    assert_eq!(
        get(admin, "/api/v1/pools").await.0,
        200,
        "reads stay open by default"
    );

    let extra = format!(
        "token_file = \"{}\"\nprotect_reads = true",
        token_file.display()
    );
    let (_server, admin) = with_admin(&[a.addr], &extra, "round_robin").await;
    assert_eq!(get(admin, "/api/v1/pools").await.0, 401);
    assert_eq!(get(admin, "/metrics").await.0, 401);
    assert_eq!(
        call(
            admin,
            "GET",
            "/metrics",
            &[("Authorization", "Bearer s3cret-token")],
            ""
        )
        .await
        .0,
        200
    );
    assert_eq!(get(admin, "/healthz").await.0, 200, "probes stay open");
    assert_eq!(get(admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn readyz_follows_backend_health() {
    let dead = dead_addr();
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{dead}\" }}]\n[pools.p.health]\nkind = \"tcp\"\ninterval = \"50ms\"\nfall = 1\n"
    );
    let server = start(&text).await;
    let admin = server.admin_addr().await.unwrap();
    assert_eq!(get(admin, "/healthz").await.0, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(admin, "/readyz").await;
        if status == 503 {
            assert!(body.contains("\"ready\":false"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And back: once the backend answers (rise = 2 checks), ready again.
    let _back = Backend::start_at("a", dead).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(admin, "/readyz").await;
        if status == 200 {
            assert!(body.contains("\"ready\":true"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn allow_and_deny_lists_refuse_and_count() {
    let a = Backend::start("a").await;
    let text = format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\ndeny = [\"127.0.0.0/8\"]\n\
         [[listeners]]\nname = \"open\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nallow = [\"127.0.0.1\", \"::1\"]\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let server = start(&text).await;
    assert!(try_ask(server.local_addr("front").unwrap()).await.is_err());
    assert_eq!(
        value(
            &server,
            "switchyard_listener_rejected_total{listener=\"front\",reason=\"denied\"}"
        ),
        1.0
    );
    assert_eq!(ask(server.local_addr("open").unwrap()).await, "a");
}

/// Clients that send a request head slowly (or never finish it) are closed
/// after `header_timeout`, at most 64 are served at once (the rest wait in
/// the backlog, holding no descriptor of the daemon's), and the proxy is
/// never starved by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_admin_clients_are_closed_and_capped() {
    let a = Backend::start("a").await;
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\nheader_timeout = \"500ms\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let server = start(&text).await;
    let admin = server.admin_addr().await.unwrap();
    let front = server.local_addr("front").unwrap();
    // 80 clients start a request and never finish it: more than the 64
    // served at once, so each of the last 16 takes the place of the one idle
    // longest, which is closed at once.
    let began = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..80 {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // The proxy serves on.
    for _ in 0..10 {
        assert_eq!(ask(front).await, "a");
    }
    // Every one of them is closed, none with a real answer: the 16 oldest
    // to make room, before header_timeout; the others at header_timeout.
    for (i, mut s) in slow.into_iter().enumerate() {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a slow client held its connection past header_timeout");
        if i < 16 {
            assert!(
                began.elapsed() < Duration::from_millis(450),
                "client {i}, among the 16 oldest, was not closed for a newer one ({:?})",
                began.elapsed()
            );
        }
        // The rest at header_timeout (500 ms after each began, the last a
        // few milliseconds after the first), not long after.
        assert!(
            began.elapsed() < Duration::from_millis(2000),
            "client {i} was closed {:?} after the first began, with header_timeout 500ms",
            began.elapsed()
        );
        if let Ok(n) = n {
            // hyper may answer 408 before closing; never a real response.
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
        }
    }
    assert_eq!(get(admin, "/healthz").await.0, 200);
}

#[tokio::test]
async fn backends_go_by_their_names_in_the_api_metrics_and_log() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\", name = \"web-7\" }}, {{ addr = \"{}\" }}]\n",
        a.addr, b.addr
    );
    let server = start(&text).await;
    let admin = server.admin_addr().await.unwrap();
    // A path may name a backend by its name or its address.
    let (status, json) = call(
        admin,
        "POST",
        "/api/v1/pools/p/backends/web-7/drain",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        (json["name"].as_str(), json["state"].as_str()),
        (Some("web-7"), Some("draining"))
    );
    let path = format!("/api/v1/pools/p/backends/{}/drain", b.addr);
    let (status, json) = call(admin, "POST", &path, &[], "").await;
    assert_eq!(status, 200, "{json}");
    // An unnamed backend is named by its address.
    assert_eq!(json["name"].as_str(), Some(b.addr.to_string().as_str()));
    let text = server.metrics().render();
    let up = format!(
        "switchyard_backend_up{{backend=\"{}\",backend_name=\"web-7\",pool=\"p\"}} 1",
        a.addr
    );
    assert!(text.contains(&up), "{text}");
    server.shutdown().await;
}

/// Times a `GET /healthz` that runs while an attack holds the endpoint.
async fn probe(admin: SocketAddr) -> (u16, Duration) {
    let began = std::time::Instant::now();
    let (status, _) = get(admin, "/healthz").await;
    (status, began.elapsed())
}

/// Clients that connect and say nothing, far past the endpoint's cap of
/// connections: a probe gets in at once, because the connection idle
/// longest is closed to make room for it.
#[tokio::test]
async fn silent_connections_cannot_keep_a_probe_out() {
    let a = Backend::start("a").await;
    let (_server, admin) = with_admin(&[a.addr], "header_timeout = \"8s\"", "round_robin").await;
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(TcpStream::connect(admin).await.unwrap());
    }
    for _ in 0..3 {
        let (status, took) = probe(admin).await;
        assert_eq!(status, 200);
        assert!(
            took < Duration::from_secs(2),
            "/healthz answered after {took:?}, with header_timeout 8s"
        );
    }
    // The ones closed for it were the oldest: the newest are still open.
    let mut newest = silent.pop().unwrap();
    newest
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), newest.read_exact(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}

/// Request bodies that trickle in (no token needed: the default) hold their
/// connections no longer than `header_timeout`: they are answered 408 and
/// closed, and a probe is answered within that time meanwhile.
#[tokio::test]
async fn slow_request_bodies_end_at_the_deadline() {
    let a = Backend::start("a").await;
    let (_server, admin) = with_admin(&[a.addr], "header_timeout = \"1s\"", "round_robin").await;
    let path = format!("/api/v1/pools/p/backends/{}/weight", a.addr);
    let mut slow = Vec::new();
    for _ in 0..70 {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(
            format!(
                "PUT {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        slow.push(s);
    }
    // Each keeps sending a byte every 200 ms while the probes run.
    let trickle = tokio::spawn(async move {
        for _ in 0..15 {
            for s in slow.iter_mut() {
                let _ = s.write_all(b" ").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow
    });
    for _ in 0..3 {
        let (status, took) = probe(admin).await;
        assert_eq!(status, 200);
        assert!(
            took < Duration::from_secs(3),
            "/healthz answered after {took:?}, with header_timeout 1s"
        );
    }
    let mut slow = trickle.await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), slow[0].read_to_string(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("header_timeout"), "{answer}");
}
