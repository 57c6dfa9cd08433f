//! Health and resilience: dead, hung and returning backends, retries, limits,
//! idle timeouts, descriptor exhaustion, and least_conn under long connections.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{http, Daemon};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn up_series(addr: SocketAddr) -> String {
    format!("switchyard_backend_up{{backend=\"{addr}\",pool=\"p\"}}")
}

fn pool_toml(strategy: &str, addrs: &[SocketAddr], health: &str) -> String {
    format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nstrategy = \"{strategy}\"\nbackends = {}\n{health}\n",
        backends_toml(addrs, None)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_never_noticed_and_comes_back() {
    let a = Backend::start("a").await;
    let mut b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let b_addr = b.addr;
    let (interval, timeout, fall, rise) = (
        Duration::from_millis(100),
        Duration::from_millis(100),
        2u32,
        2u32,
    );
    let health = format!(
        "[pools.p.health]\nkind = \"tcp\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nfall = {fall}\nrise = {rise}\n",
        interval.as_millis(),
        timeout.as_millis()
    );
    // The worst case by the configuration: a check may have just run, so one
    // interval more than fall × interval + timeout (rise × interval back up);
    // four times that leaves room for a busy machine and is still far from
    // what passive health alone would take (fail_timeout, 10 s).
    let down_within = (interval * (fall + 1) + timeout) * 4;
    let up_within = (interval * (rise + 1) + timeout) * 4;
    let server = start(&pool_toml(
        "round_robin",
        &[a.addr, b.addr, c.addr],
        &health,
    ))
    .await;
    let front = server.local_addr("front").unwrap();

    // Steady load: four clients asking in a loop, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut failures = Vec::new();
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                match try_ask(front).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push((Instant::now(), e)),
                }
            }
            failures
        }));
    }
    wait_for("load to flow", Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) > 100
    })
    .await;

    // The moment of the kill is taken first: the aborted backend's resets
    // can reach a client before this task runs again.
    let killed = Instant::now();
    b.stop();
    wait_metric(&server, &up_series(b_addr), 0.0, Duration::from_secs(5)).await;
    let marked_down = Instant::now();
    let detected = killed.elapsed();
    assert!(
        detected < down_within,
        "took {detected:?} to notice (bound {down_within:?})"
    );

    let refused = format!("switchyard_backend_connect_failures_total{{backend=\"{b_addr}\",pool=\"p\",reason=\"refused\"}}");
    let failures_at_down = value(&server, &refused);
    let served = ok.load(Ordering::Relaxed);
    wait_for("more load after the mark", Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) > served + 300
    })
    .await;
    assert_eq!(
        value(&server, &refused),
        failures_at_down,
        "connects still went to the dead backend"
    );

    // Bring it back: it takes traffic again after rise × interval.
    let b2 = Backend::start_at("b", b_addr).await;
    let revived = Instant::now();
    wait_metric(&server, &up_series(b_addr), 1.0, Duration::from_secs(5)).await;
    assert!(
        revived.elapsed() < up_within,
        "took {:?} to come back (bound {up_within:?})",
        revived.elapsed()
    );
    wait_for("b to get connections", Duration::from_secs(10), || {
        b2.accepted.load(Ordering::SeqCst) > 10
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    // Connections the dying backend's kernel had already accepted (its
    // accept queue) are reset with it: established, they cannot be retried
    // elsewhere. At most one per client, and none once it is marked down;
    // every connect that failed was retried on another backend.
    let mut failures = Vec::new();
    for c in clients {
        let mine = c.await.unwrap();
        assert!(
            mine.len() <= 1,
            "one client failed more than once: {mine:?}"
        );
        failures.extend(mine);
    }
    // Each is an established connection cut by the backend's end, never a
    // refused connect or a wait: those were the proxy's to retry.
    assert!(
        failures.iter().all(|(_, e)| e == "closed without a reply"
            || e.contains("reset by peer")
            || e.contains("Broken pipe")),
        "a client failed otherwise than by a cut connection: {failures:?}"
    );
    assert!(
        failures
            .iter()
            .all(|(at, _)| *at >= killed && *at <= marked_down),
        "a client failed outside the moment of the kill: {failures:?}"
    );
    let to_down = format!(
        "switchyard_backend_transitions_total{{backend=\"{b_addr}\",pool=\"p\",to=\"down\"}}"
    );
    assert!(value(&server, &to_down) >= 1.0);
}

#[tokio::test]
async fn retries_hide_a_dead_backend_without_health_checks() {
    let a = Backend::start("a").await;
    let dead = dead_addr();
    let server = start(&pool_toml("round_robin", &[dead, a.addr], "")).await;
    let front = server.local_addr("front").unwrap();
    for _ in 0..20 {
        assert_eq!(try_ask(front).await.as_deref(), Ok("a"));
    }
    // Passive health: after max_fails (3) refused connects it is taken out.
    let refused = format!("switchyard_backend_connect_failures_total{{backend=\"{dead}\",pool=\"p\",reason=\"refused\"}}");
    assert_eq!(value(&server, &refused), 3.0);
}

#[tokio::test]
async fn all_backends_down_closes_clients_at_once() {
    let dead1 = dead_addr();
    let dead2 = dead_addr();
    let server = start(&pool_toml("round_robin", &[dead1, dead2], "")).await;
    let front = server.local_addr("front").unwrap();
    for _ in 0..5 {
        let started = Instant::now();
        assert!(try_ask(front).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(
        value(
            &server,
            "switchyard_listener_no_backend_total{listener=\"front\"}"
        ),
        5.0
    );
}

/// A backend that accepts connections and never says a word.
async fn mute_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn a_hung_backend_fails_the_send_expect_check() {
    let hung = mute_backend().await;
    let health = "[pools.p.health]\nkind = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"100ms\"\nfall = 2\nsend = \"PING\\r\\n\"\nexpect = \"+PONG\"\n";
    let server = start(&pool_toml("round_robin", &[hung], health)).await;
    wait_metric(&server, &up_series(hung), 0.0, Duration::from_secs(5)).await;
    let snap = server.view().pools["p"].snapshot();
    let last = snap.members[0].backend.last_check().unwrap();
    assert!(!last.ok && last.detail.contains("no answer"), "{last:?}");
    assert!(
        !server.ready(),
        "readyz must fail with every backend of a pool down"
    );
}

#[tokio::test]
async fn send_expect_passes_on_the_right_reply_and_fails_on_a_wrong_one() {
    // Answers `+PONG` to the first backend's checks and `-ERR` to the second's.
    async fn pong(reply: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    if s.read(&mut buf).await.unwrap_or(0) > 0 {
                        let _ = s.write_all(reply).await;
                    }
                });
            }
        });
        addr
    }
    let good = pong(b"+PONG\r\n").await;
    let bad = pong(b"-ERR\r\n").await;
    let health = "[pools.p.health]\nkind = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"500ms\"\nfall = 1\nsend = \"PING\\r\\n\"\nexpect = \"+PONG\"\n";
    let server = start(&pool_toml("round_robin", &[good, bad], health)).await;
    wait_metric(&server, &up_series(bad), 0.0, Duration::from_secs(5)).await;
    let passes = format!("switchyard_backend_health_checks_total{{backend=\"{good}\",pool=\"p\",result=\"success\"}}");
    wait_for("checks of the good one", Duration::from_secs(5), || {
        value(&server, &passes) >= 3.0
    })
    .await;
    assert_eq!(value(&server, &up_series(good)), 1.0);
    let snap = server.view().pools["p"].snapshot();
    let detail = snap.find(bad).unwrap().backend.last_check().unwrap().detail;
    assert!(detail.contains("wrong reply"), "{detail}");
}

#[tokio::test]
async fn an_http_check_follows_the_status_code() {
    let healthy = Arc::new(AtomicBool::new(false));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let flag = healthy.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let ok = req.starts_with("GET /healthz HTTP/1.1") && flag.load(Ordering::SeqCst);
                let status = if ok {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    let health = "[pools.p.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"500ms\"\nfall = 1\nrise = 1\n";
    let server = start(&pool_toml("round_robin", &[addr], health)).await;
    wait_metric(&server, &up_series(addr), 0.0, Duration::from_secs(5)).await;
    let snap = server.view().pools["p"].snapshot();
    assert_eq!(
        snap.members[0].backend.last_check().unwrap().detail,
        "status 503"
    );
    healthy.store(true, Ordering::SeqCst);
    wait_metric(&server, &up_series(addr), 1.0, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_udp_check_against_a_closed_port_marks_the_backend_down() {
    let closed = dead_addr();
    let live = Backend::start("live").await;
    let health = "[pools.p.health]\nkind = \"udp\"\nsend = \"ping\"\ninterval = \"50ms\"\ntimeout = \"300ms\"\nfall = 2\n";
    let server = start(&pool_toml("round_robin", &[closed, live.addr], health)).await;
    wait_metric(&server, &up_series(closed), 0.0, Duration::from_secs(5)).await;
    let passes = format!(
        "switchyard_backend_health_checks_total{{backend=\"{}\",pool=\"p\",result=\"success\"}}",
        live.addr
    );
    wait_for("the live one to pass", Duration::from_secs(5), || {
        value(&server, &passes) >= 2.0
    })
    .await;
    assert_eq!(value(&server, &up_series(live.addr)), 1.0);
    let snap = server.view().pools["p"].snapshot();
    let detail = snap
        .find(closed)
        .unwrap()
        .backend
        .last_check()
        .unwrap()
        .detail;
    assert!(detail.contains("unreachable"), "{detail}");
}

#[tokio::test]
async fn initial_down_waits_for_rise_passes() {
    let a = Backend::start("a").await;
    let health =
        "[pools.p.health]\nkind = \"tcp\"\ninterval = \"50ms\"\nrise = 2\ninitial = \"down\"\n";
    let server = start(&pool_toml("round_robin", &[a.addr], health)).await;
    assert_eq!(value(&server, &up_series(a.addr)), 0.0);
    wait_metric(&server, &up_series(a.addr), 1.0, Duration::from_secs(5)).await;
    assert_eq!(ask(server.local_addr("front").unwrap()).await, "a");
}

#[tokio::test]
async fn listener_max_connections_leaves_the_excess_in_the_backlog() {
    let a = Backend::start("a").await;
    let text = pool_toml("round_robin", &[a.addr], "").replace(
        "access_log = false",
        "access_log = false\nmax_connections = 2",
    );
    let server = start(&text).await;
    let front = server.local_addr("front").unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(front).await.unwrap();
        s.write_all(b"x\n").await.unwrap();
        let mut buf = [0u8; 16];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        held.push(s);
    }
    // The third connects (the kernel's backlog takes it) but is not served:
    // the listener finds it waiting at the limit, and counts that.
    let third = tokio::spawn(async move { ask(front).await });
    wait_metric(
        &server,
        "switchyard_listener_rejected_total{listener=\"front\",reason=\"limit\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond max_connections"
    );
    assert_eq!(
        a.accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the backend saw a third connection"
    );
    assert_eq!(
        value(
            &server,
            "switchyard_listener_connections_total{listener=\"front\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &server,
            "switchyard_listener_rejected_total{listener=\"front\",reason=\"limit\"}"
        ),
        1.0,
        "reaching the limit is counted"
    );
    drop(held.pop());
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .unwrap()
            .unwrap(),
        "a"
    );
}

#[tokio::test]
async fn a_full_backend_is_skipped() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let text = format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nbackends = [\
         {{ addr = \"{}\", max_connections = 1 }}, {{ addr = \"{}\" }}]\n",
        a.addr, b.addr
    );
    let server = start(&text).await;
    let front = server.local_addr("front").unwrap();
    // Hold one connection to `a` (round robin starts there).
    let mut held = TcpStream::connect(front).await.unwrap();
    held.write_all(b"x\n").await.unwrap();
    let mut buf = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), held.read_exact(&mut buf[..3]))
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(&buf[..3], b"a: ");
    for _ in 0..10 {
        assert_eq!(ask(front).await, "b", "a full backend must be skipped");
    }
    drop(held);
    wait_metric(
        &server,
        &format!(
            "switchyard_backend_active_connections{{backend=\"{}\",pool=\"p\"}}",
            a.addr
        ),
        0.0,
        Duration::from_secs(5),
    )
    .await;
    let names: Vec<String> = futures_collect(front, 4).await;
    assert!(names.contains(&"a".to_string()), "{names:?}");
}

async fn futures_collect(front: SocketAddr, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(ask(front).await);
    }
    v
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_idle_timeout() {
    let a = Backend::start("a").await;
    // Gaps of a quarter of the timeout keep it open with room to spare on a
    // busy machine; the close is awaited with a wide window.
    let text = pool_toml("round_robin", &[a.addr], "")
        .replace("access_log = false", "idle_timeout = \"1s\"");
    let server = start(&text).await;
    let mut s = TcpStream::connect(server.local_addr("front").unwrap())
        .await
        .unwrap();
    // Traffic keeps it open past the timeout...
    let mut last = Instant::now();
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        s.write_all(b"x\n").await.unwrap();
        let mut buf = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .expect("a reply in time")
            .unwrap();
        last = Instant::now();
    }
    // ...silence closes it.
    let started = last;
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test]
async fn least_conn_sends_new_work_to_the_idle_backend() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let server = start(&pool_toml("least_conn", &[a.addr, b.addr], "")).await;
    let front = server.local_addr("front").unwrap();
    let mut long = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(front).await.unwrap();
        s.write_all(b"x\n").await.unwrap();
        let mut name = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut name))
            .await
            .expect("a reply in time")
            .unwrap();
        long.push((name[0], s));
    }
    let on_a = long.iter().filter(|(n, _)| *n == b'a').count();
    assert_eq!(on_a, 5, "ties rotate: 10 connections split evenly");
    // Close b's five: a stays busy with five long connections.
    long.retain(|(n, _)| *n == b'a');
    let b_active = format!(
        "switchyard_backend_active_connections{{backend=\"{}\",pool=\"p\"}}",
        b.addr
    );
    wait_metric(&server, &b_active, 0.0, Duration::from_secs(5)).await;
    for _ in 0..20 {
        assert_eq!(ask(front).await, "b");
    }
}

/// Runs the real binary with 64 descriptors and exhausts them with held
/// client connections. Running out is the proxy's own shortage: clients wait
/// in the backlog, the admin endpoint keeps answering from its reserve, the
/// daemon does not spin, no backend is blamed (no failure counted, never
/// marked down), and service resumes as soon as descriptors are free.
#[test]
fn descriptor_exhaustion_is_the_proxys_own_and_never_a_backends() {
    if !common::installed("prlimit", "util-linux") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(Backend::start("a"));
    // Default passive health (max_fails = 3) and a fast active check: either
    // would take the backend out if the proxy's shortage were blamed on it.
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n[pools.p.health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nfall = 1\n",
        backend.addr
    );
    let daemon_started = Instant::now();
    let daemon = Daemon::start(&text, &["prlimit", "--nofile=64:64", "--"], &[]);
    let front = daemon.listeners()["front"];
    let admin = daemon.admin();
    let metrics = || {
        let (status, body) = http(admin, "GET", "/metrics", &[], "");
        assert_eq!(
            status, 200,
            "the admin endpoint answers while the proxy is starved"
        );
        body
    };
    let series =
        |body: &str, name: &str| metric(body, name).unwrap_or_else(|| panic!("no series {name}"));
    let cpu_before = cpu_ticks(daemon.child.id());
    let wall = Instant::now();

    // 120 clients need 240 descriptors in the daemon: far past 64.
    let mut held = Vec::new();
    for _ in 0..120 {
        match std::net::TcpStream::connect_timeout(&front, Duration::from_secs(2)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    let starved = "switchyard_listener_rejected_total{listener=\"front\",reason=\"descriptors\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while series(&metrics(), starved) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the descriptor budget never ran out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stay exhausted for a second: a spinning accept loop would burn a core.
    std::thread::sleep(Duration::from_secs(1));
    let cpu = cpu_ticks(daemon.child.id()) - cpu_before;
    let ticks = wall.elapsed().as_secs_f64() * 100.0;
    assert!(
        (cpu as f64) < ticks * 0.5,
        "daemon used {cpu} of {ticks:.0} ticks while out of descriptors"
    );
    let (status, _) = http(admin, "GET", "/healthz", &[], "");
    assert_eq!(status, 200);
    drop(held);

    // Served again at once, not after a fail_timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rt.block_on(try_ask(front)) {
            Ok(name) => {
                assert_eq!(name, "a");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never served again: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = metrics();
    let b = &backend.addr;
    for reason in ["refused", "timeout", "error"] {
        let name = format!(
            "switchyard_backend_connect_failures_total{{backend=\"{b}\",pool=\"p\",reason=\"{reason}\"}}"
        );
        assert_eq!(series(&body, &name), 0.0, "{name}: the backend was blamed");
    }
    let down =
        format!("switchyard_backend_transitions_total{{backend=\"{b}\",pool=\"p\",to=\"down\"}}");
    assert_eq!(series(&body, &down), 0.0, "the backend was marked down");
    assert_eq!(
        series(
            &body,
            &format!("switchyard_backend_up{{backend=\"{b}\",pool=\"p\"}}")
        ),
        1.0
    );
    let accept_errors = series(&body, "switchyard_accept_errors_total{listener=\"front\"}");
    let logged = daemon.count_log(|v| v["message"] == "accept failed");
    assert!(
        logged == 0 || accept_errors > 0.0,
        "accept errors were logged but not counted"
    );
    // At most once a second since the daemon started (plus the first).
    let seconds = daemon_started.elapsed().as_secs() as usize;
    assert!(
        logged <= seconds + 1,
        "accept errors were logged {logged} times in {seconds} s: at most once a second"
    );
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A backend that accepts and closes at once passes a TCP check, and under
/// `least_conn` (it never holds a connection) would take nearly every
/// client. Each such connection counts as a failed connect, so passive
/// health takes it out after `max_fails`.
#[tokio::test]
async fn a_black_hole_backend_is_taken_out() {
    let good = Backend::start("good").await;
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let swallowed = Arc::new(AtomicUsize::new(0));
    let count = swallowed.clone();
    std::thread::spawn(move || {
        for s in hole.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nstrategy = \"least_conn\"\nbackends = [{{ addr = \"{hole_addr}\" }}, {{ addr = \"{}\" }}]\n\
         [pools.p.health]\nkind = \"tcp\"\ninterval = \"1h\"\n",
        good.addr
    );
    let server = start(&text).await;
    let front = server.local_addr("front").unwrap();
    let mut answered = 0;
    for _ in 0..50 {
        if try_ask(front).await.is_ok_and(|n| n == "good") {
            answered += 1;
        }
    }
    // The clients it took; the hole also saw the one TCP check, when that
    // ran before the clients were done.
    let lost = 50 - answered;
    let swallowed = swallowed.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&lost),
        "the black hole took {lost} of 50 clients (max_fails = 3)"
    );
    assert!(
        swallowed == lost || swallowed == lost + 1,
        "the hole saw {swallowed} connections: {lost} clients and at most one check"
    );
    let closed = format!(
        "switchyard_backend_connect_failures_total{{backend=\"{hole_addr}\",pool=\"p\",reason=\"closed\"}}"
    );
    assert_eq!(value(&server, &closed), lost as f64);
    // The API counts them as the history and the metrics do: one sum of
    // every reason.
    let admin = server.admin_addr().await.unwrap();
    let (_, body) =
        tokio::task::spawn_blocking(move || http(admin, "GET", "/api/v1/pools", &[], ""))
            .await
            .unwrap();
    let pools: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hole = pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == hole_addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(hole["connect_failures"], lost as u64, "{hole}");
}

/// `on_backend_down = "close"`: established connections to a backend that
/// goes down (its check fails) or leaves the pool (a reload) are closed and
/// counted; by default ("keep") they run on.
#[tokio::test]
async fn on_backend_down_close_ends_established_connections() {
    let mut a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let text = |policy: &str, backends: &[SocketAddr]| {
        format!(
            "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
             [pools.p]\nbackends = {}\non_backend_down = \"{policy}\"\n\
             [pools.p.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\n",
            backends_toml(backends, None)
        )
    };
    let server = start(&text("close", &[a.addr])).await;
    let front = server.local_addr("front").unwrap();
    let mut held = echoed(front, "x", "a").await;
    let mut buf = [0u8; 16];
    // The backend stops accepting (its established connection would run on):
    // its check fails, it goes down, and the proxy closes the connection.
    a.stop();
    let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf))
        .await
        .expect("the connection was closed when its backend went down");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let closed = format!(
        "switchyard_backend_connections_closed_total{{backend=\"{}\",pool=\"p\"}}",
        a.addr
    );
    assert_eq!(value(&server, &closed), 1.0);

    // Leaving the pool by a reload closes its connections too.
    let server = start(&text("close", &[b.addr])).await;
    let front = server.local_addr("front").unwrap();
    let mut held = echoed(front, "y", "b").await;
    let c = Backend::start("c").await;
    server
        .reload(
            switchyard::Config::parse(&text("close", &[c.addr]), std::path::Path::new("t.toml"))
                .unwrap(),
        )
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf))
        .await
        .expect("the connection was closed when its backend left the pool");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    // "keep": the same removal leaves the connection running.
    let server = start(&text("keep", &[b.addr])).await;
    let front = server.local_addr("front").unwrap();
    let mut held = echoed(front, "z", "b").await;
    server
        .reload(
            switchyard::Config::parse(&text("keep", &[c.addr]), std::path::Path::new("t.toml"))
                .unwrap(),
        )
        .await
        .unwrap();
    held.write_all(b"w\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"b: w\n", "kept");
}

/// The binary, on its per-core workers, with one of two backends marked
/// down by its check: four concurrent clients never find "no backend",
/// whatever the cyclic strategy.
#[test]
fn concurrent_clients_always_find_the_backend_that_is_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(Backend::start("a"));
    let dead = dead_addr();
    for strategy in ["round_robin", "weighted"] {
        let text = format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n{}\
             [pools.p.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 2\n",
            pool_toml(strategy, &[a.addr, dead], "")
        );
        let daemon = Daemon::start(&text, &[], &[]);
        let (front, admin) = (daemon.listeners()["front"], daemon.admin());
        let scrape = |series: &str| metric(&http(admin, "GET", "/metrics", &[], "").1, series);
        let down = format!("switchyard_backend_up{{backend=\"{dead}\",pool=\"p\"}}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while scrape(&down) != Some(0.0) {
            assert!(
                Instant::now() < deadline,
                "{strategy}: {dead} not marked down"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let clients: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let (mut ok, mut failed) = (0usize, Vec::new());
                    while ok + failed.len() < 1500 && started.elapsed() < Duration::from_secs(20) {
                        match blocking_who(front) {
                            Ok(name) if name == "a" => ok += 1,
                            other => failed.push(other),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        let mut served = 0;
        for c in clients {
            let (ok, failed) = c.join().unwrap();
            assert!(failed.is_empty(), "{strategy}: clients failed: {failed:?}");
            served += ok;
        }
        assert!(
            served >= 400,
            "{strategy}: only {served} connections in 20 s"
        );
        let none = "switchyard_listener_no_backend_total{listener=\"front\"}";
        assert_eq!(
            scrape(none),
            Some(0.0),
            "{strategy}, after {served} connections"
        );
    }
}

/// One line on a new connection, from a plain thread: the answering backend.
fn blocking_who(front: SocketAddr) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(front).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"who\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    match line.split_once(':') {
        Some((name, _)) => Ok(name.to_string()),
        None => Err(format!("no answer: {line:?}")),
    }
}
