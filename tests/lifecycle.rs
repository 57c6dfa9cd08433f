//! The daemon's life under an operator: reloads under traffic (SIGHUP and the
//! API), invalid reloads, graceful and forced shutdown, systemd notification,
//! the unit file, and memory after a spike. These run the real binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{http, Daemon, Successors};
use common::Backend;

fn blocking_ask(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"who\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    line.split_once(':')
        .map(|(n, _)| n.to_string())
        .ok_or_else(|| format!("no reply ({line:?})"))
}

/// A connection through the daemon that has carried one line each way.
fn echoing(front: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(front).unwrap();
    // Every read on it fails instead of hanging.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"x\n").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    s
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reloads(d: &Daemon) -> usize {
    d.count_log(|v| v["message"] == "configuration reloaded")
}

fn config(admin: bool, backends: &[SocketAddr], extra_listener: bool, grace: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    let mut t = format!("shutdown_grace = \"{grace}\"\n");
    if admin {
        t.push_str("[admin]\nbind = \"127.0.0.1:0\"\n");
    }
    t.push_str("[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n");
    if extra_listener {
        t.push_str("[[listeners]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n");
    }
    t.push_str(&format!(
        "[pools.p]\nstrategy = \"round_robin\"\nbackends = [{}]\n",
        list.join(", ")
    ));
    t
}

#[test]
fn twenty_reloads_under_traffic_drop_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backends: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|n| rt.block_on(Backend::start(n)))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let daemon = Daemon::start(&config(false, &addrs[..2], false, "30s"), &[], &[]);
    let front = daemon.listeners()["front"];

    // One long connection, echoing across every reload.
    let mut held = TcpStream::connect(front).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut held_reader = BufReader::new(held.try_clone().unwrap());
    let mut echo = |i: usize| {
        held.write_all(format!("ping {i}\n").as_bytes()).unwrap();
        let mut line = String::new();
        held_reader.read_line(&mut line).unwrap();
        assert!(
            line.ends_with(&format!(": ping {i}\n")),
            "held connection broke at reload {i}: {line:?}"
        );
    };
    echo(0);

    // New connections all through the reloads, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut failures = Vec::new();
                for _ in 0..50_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    match blocking_ask(front) {
                        Ok(_) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e),
                    }
                }
                failures
            })
        })
        .collect();

    let sets = [[0, 1], [1, 2], [0, 2]];
    let mut removed_extra: Option<SocketAddr> = None;
    for i in 1..=20 {
        let with_extra = i % 2 == 1;
        let set: Vec<SocketAddr> = sets[i % 3].iter().map(|&k| addrs[k]).collect();
        std::fs::write(daemon.path(), config(false, &set, with_extra, "30s")).unwrap();
        let before = served.load(Ordering::Relaxed);
        daemon.signal("HUP");
        wait_until("the reload", Duration::from_secs(10), || {
            reloads(&daemon) == i
        });
        echo(i);
        let extra = daemon.listeners().get("extra").copied();
        if with_extra {
            let extra = extra.expect("the added listener is bound");
            assert!(blocking_ask(extra).is_ok(), "an added listener accepts");
            removed_extra = Some(extra);
        } else if let Some(gone) = removed_extra.take() {
            wait_until(
                "the removed listener to refuse",
                Duration::from_secs(5),
                || TcpStream::connect(gone).is_err(),
            );
        }
        wait_until("traffic after the reload", Duration::from_secs(10), || {
            served.load(Ordering::Relaxed) > before + 20
        });
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let failures = t.join().unwrap();
        assert!(
            failures.is_empty(),
            "new connections failed during reloads: {failures:?}"
        );
    }
    assert_eq!(
        daemon.listeners()["front"],
        front,
        "the kept listener kept its socket"
    );
    assert!(served.load(Ordering::Relaxed) > 400);
    echo(21);
}

#[test]
fn an_invalid_reload_changes_nothing_and_is_counted() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(Backend::start("a"));
    let b = rt.block_on(Backend::start("b"));
    let daemon = Daemon::start(&config(true, &[a.addr], false, "30s"), &[], &[]);
    let front = daemon.listeners()["front"];
    let admin = daemon.admin();

    std::fs::write(
        daemon.path(),
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"nope\"\n",
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_log("the reload error", Duration::from_secs(10), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("no pool named `nope`"))
    });
    assert_eq!(
        blocking_ask(front).as_deref(),
        Ok("a"),
        "the old configuration still serves"
    );
    let (_, metrics) = http(admin, "GET", "/metrics", &[], "");
    assert_eq!(
        common::metric(
            &metrics,
            "switchyard_config_reloads_total{result=\"failure\"}"
        ),
        Some(1.0)
    );

    // The API reloads too, and reports the problem to its caller.
    let (status, body) = http(admin, "POST", "/api/v1/reload", &[], "");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no pool named"), "{body}");

    // A valid file whose new listener cannot bind fails whole: nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let clash = config(true, &[b.addr], true, "30s").replace(
        "name = \"extra\"\nbind = \"127.0.0.1:0\"",
        &format!(
            "name = \"extra\"\nbind = \"{}\"",
            taken.local_addr().unwrap()
        ),
    );
    std::fs::write(daemon.path(), clash).unwrap();
    let (status, body) = http(admin, "POST", "/api/v1/reload", &[], "");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("listener `extra`: cannot bind"), "{body}");
    assert_eq!(
        blocking_ask(front).as_deref(),
        Ok("a"),
        "the pool change was not applied either"
    );
    assert!(!daemon.listeners().contains_key("extra"));

    std::fs::write(daemon.path(), config(true, &[b.addr], true, "30s")).unwrap();
    let (status, body) = http(admin, "POST", "/api/v1/reload", &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(blocking_ask(front).as_deref(), Ok("b"));
    let extra = daemon.wait_log("the new listener", Duration::from_secs(5), |v| {
        v["message"] == "listening" && v["listener"] == "extra"
    });
    assert!(blocking_ask(extra["addr"].as_str().unwrap().parse().unwrap()).is_ok());
    let (_, metrics) = http(admin, "GET", "/metrics", &[], "");
    assert_eq!(
        common::metric(
            &metrics,
            "switchyard_config_reloads_total{result=\"failure\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        common::metric(
            &metrics,
            "switchyard_config_reloads_total{result=\"success\"}"
        ),
        Some(2.0)
    );
}

/// A backend that, for `slow N`, sends N lines 100ms apart and then closes.
fn slow_backend() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut line = String::new();
                if BufReader::new(s.try_clone().unwrap())
                    .read_line(&mut line)
                    .is_err()
                {
                    return;
                }
                let n: usize = line
                    .trim()
                    .strip_prefix("slow ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                for i in 0..n {
                    if s.write_all(format!("chunk {i}\n").as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    addr
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let backend = slow_backend();
    let mut daemon = Daemon::start(&config(false, &[backend], false, "10s"), &[], &[]);
    let front = daemon.listeners()["front"];
    let mut s = TcpStream::connect(front).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"slow 8\n").unwrap();
    let mut reader = BufReader::new(s);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert_eq!(first, "chunk 0\n");

    daemon.signal("TERM");
    wait_until("new connects to be refused", Duration::from_secs(5), || {
        TcpStream::connect(front).is_err()
    });
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(
        rest.lines().count(),
        7,
        "the transfer in flight completed: {rest:?}"
    );
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn a_connection_past_the_grace_period_is_closed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(Backend::start("a"));
    let mut daemon = Daemon::start(&config(false, &[a.addr], false, "500ms"), &[], &[]);
    let mut s = echoing(daemon.listeners()["front"]);
    let started = Instant::now();
    daemon.signal("TERM");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = s.read(&mut [0u8; 8]).unwrap_or(0);
    assert_eq!(n, 0, "closed by the daemon");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(Backend::start("a"));
    let mut daemon = Daemon::start(&config(false, &[a.addr], false, "60s"), &[], &[]);
    let _held = echoing(daemon.listeners()["front"]);
    daemon.signal("TERM");
    daemon.wait_log("draining", Duration::from_secs(5), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    });
    daemon.signal("INT");
    assert_eq!(daemon.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn systemd_is_told_ready_reloading_stopping_in_order() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(Backend::start("a"));
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut daemon = Daemon::start(
        &config(true, &[a.addr], false, "1s"),
        &[],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let next = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert_eq!(next(), "READY=1");
    daemon.signal("HUP");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1");
    // A reload through the API whose client goes away at once still ends
    // with READY=1: systemd is never left at RELOADING=1.
    let admin = daemon.admin();
    let mut c = TcpStream::connect(admin).unwrap();
    c.write_all(
        b"POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    drop(c);
    assert!(next().starts_with("RELOADING=1\n"));
    assert_eq!(next(), "READY=1");
    daemon.signal("TERM");
    assert_eq!(next(), "STOPPING=1");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn the_unit_file_verifies_and_is_rated_ok() {
    if !common::installed("systemd-analyze", "systemd") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/switchyard.service")).unwrap();
    // Point the unit at the binary just built, so `verify` can check it exists.
    let unit = unit.replace(
        "/usr/local/bin/switchyard",
        env!("CARGO_BIN_EXE_switchyard"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.service");
    std::fs::write(&path, unit).unwrap();
    let analyze = |args: &[&str]| {
        std::process::Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .expect(
                "systemd-analyze (Debian package `systemd`) must be installed; .ci/run installs it",
            )
    };
    let verify = analyze(&["verify"]);
    let said = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("switchyard.service"),
        "verify complained: {said}"
    );

    let security = analyze(&["security", "--offline=true", "--no-pager"]);
    let out = String::from_utf8_lossy(&security.stdout).to_string();
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no rating in: {out}"));
    let exposure: f64 = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(exposure <= 2.5, "{line}");
    assert!(line.contains("OK") || line.contains("SAFE"), "{line}");

    // The drop-in for `source = "client"` verifies too, and grants the
    // capability: the security report counts it.
    let drop_in = dir.path().join("switchyard.service.d");
    std::fs::create_dir(&drop_in).unwrap();
    std::fs::copy(
        root.join("systemd/transparent.conf"),
        drop_in.join("transparent.conf"),
    )
    .unwrap();
    let verify = analyze(&["verify"]);
    let said = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(
        verify.status.success() && !said.contains("switchyard.service"),
        "with the drop-in: {said}"
    );
    let security = analyze(&["security", "--offline=true", "--no-pager"]);
    let out = String::from_utf8_lossy(&security.stdout).to_string();
    let granted = out
        .lines()
        .find(|l| l.contains("CAP_NET_ADMIN"))
        .unwrap_or_else(|| panic!("no CAP_NET_ADMIN line in: {out}"));
    assert!(
        granted.contains('✗'),
        "the drop-in grants CAP_NET_ADMIN: {granted}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_returns_to_baseline_after_a_spike() {
    if !common::installed("prlimit", "util-linux") {
        return;
    }
    // This test holds 2,000 sockets at once in its own process, and the
    // daemon (which inherits the limit) as many: raise the soft limit to the hard one.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap()
        .to_string();
    let raised = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={hard}:{hard}"),
        ])
        .status()
        .unwrap();
    assert!(raised.success());
    assert!(
        hard == "unlimited" || hard.parse::<u64>().unwrap() >= 4096,
        "need 4096 descriptors, the hard limit is {hard}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(Backend::start("a"));
    let daemon = Daemon::start(&config(true, &[a.addr], false, "1s"), &[], &[]);
    let front = daemon.listeners()["front"];
    let admin = daemon.admin();
    let pid = daemon.child.id();
    let active = || {
        let (_, m) = http(admin, "GET", "/metrics", &[], "");
        common::metric(
            &m,
            "switchyard_listener_active_connections{listener=\"front\"}",
        )
        .unwrap_or(-1.0)
    };
    let wave = |n: usize| {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = TcpStream::connect(front).unwrap();
            s.write_all(b"x\n").unwrap();
            held.push(s);
        }
        for s in &mut held {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
        }
        assert_eq!(active(), n as f64);
        drop(held);
        wait_until("connections to close", Duration::from_secs(10), || {
            active() == 0.0
        });
    };
    // Warm up: thread-local buffers, metric series, allocator arenas.
    wave(1000);
    let before = rss_kib(pid);
    for _ in 0..10 {
        wave(1000);
    }
    let after = rss_kib(pid);
    eprintln!("RSS before {before} KiB, after 10k connections {after} KiB");
    assert!(
        after <= before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn the_access_log_has_one_structured_line_per_connection_and_session() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(Backend::start("a"));
    let text = format!(
        "[[listeners]]\nname = \"logged\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[listeners]]\nname = \"quiet\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [[listeners]]\nname = \"dns\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\nidle_timeout = \"100ms\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let daemon = Daemon::start(&text, &[], &[]);
    let l = daemon.listeners();
    let client = echoing(l["logged"]);
    let client_addr = client.local_addr().unwrap().to_string();
    drop(client);
    drop(echoing(l["logged"]));
    drop(echoing(l["logged"]));
    drop(echoing(l["quiet"]));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    udp.send_to(b"hi", l["dns"]).unwrap();
    let mut buf = [0u8; 32];
    assert_eq!(udp.recv(&mut buf).unwrap(), 5);

    let is_access = |v: &serde_json::Value| v["target"] == "switchyard::access";
    // The three connections end on whichever worker took each, in any
    // order: the first client's line is the one that names it.
    let tcp = daemon.wait_log("tcp access line", Duration::from_secs(5), |v| {
        is_access(v) && v["listener"] == "logged" && v["client"] == client_addr.as_str()
    });
    assert_eq!(tcp["message"], "tcp connection");
    assert_eq!(tcp["backend"], a.addr.to_string().as_str());
    assert_eq!(
        (tcp["bytes_in"].as_u64(), tcp["bytes_out"].as_u64()),
        (Some(2), Some(5))
    );
    assert_eq!(tcp["end"], "closed");
    assert!(tcp["duration_ms"].is_u64());
    // One line per connection: three connections, three lines.
    wait_until("three access lines", Duration::from_secs(5), || {
        daemon.count_log(|v| is_access(v) && v["listener"] == "logged") >= 3
    });

    let session = daemon.wait_log("udp access line", Duration::from_secs(5), |v| {
        is_access(v) && v["listener"] == "dns"
    });
    assert_eq!(session["message"], "udp session");
    assert_eq!(session["end"], "idle_timeout");
    assert_eq!(session["datagrams_out"].as_u64(), Some(1));
    assert_eq!(
        daemon.count_log(|v| is_access(v) && v["listener"] == "logged"),
        3,
        "exactly one line per connection"
    );
    assert_eq!(
        daemon.count_log(|v| is_access(v) && v["listener"] == "quiet"),
        0,
        "access_log = false"
    );
}

/// Waits for process `pid` (handed to us as its reaper) to exit; returns
/// its exit code, read from /proc while it is a zombie, then reaps it.
fn wait_pid(pid: u32, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("process {pid} is gone unseen: {e}"));
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        // Field 3 is the state; field 52 the exit status, as waitpid gives it.
        if fields[0] == "Z" {
            let status: i32 = fields[49].parse().unwrap();
            let mut ignored = 0;
            // SAFETY: waitpid writes one int we own; it only reaps the zombie.
            unsafe { libc::waitpid(pid as i32, &mut ignored, libc::WNOHANG) };
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal_pid(pid: u32, sig: libc::c_int) {
    // SAFETY: kill sends a signal to a process we started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid}");
}

/// `kill -USR2` three times in a row under continuous new TCP connections
/// and UDP queries: nothing fails; an established, idle connection moves to
/// each new process and works on, so every old process exits 0 at once
/// instead of draining it for `shutdown_grace`.
#[test]
fn three_binary_upgrades_in_a_row_drop_nothing() {
    // The old processes' successors are their children: once an old one
    // exits, its child comes to us (as to systemd), so we can reap it.
    // SAFETY: prctl on this process only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(Backend::start("a"));
    let text = format!(
        "shutdown_grace = \"30s\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [[listeners]]\nname = \"dns\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        backend.addr
    );
    let mut daemon = Daemon::start(&text, &[], &[]);
    let (front, dns) = (daemon.listeners()["front"], daemon.listeners()["dns"]);
    let admin = daemon.admin();
    let mut held = echoing(front);

    let stop = Arc::new(AtomicBool::new(false));
    // The longest any new client waited for its answer, and the longest
    // round trip on an established connection pinged every 10 ms, both in
    // microseconds, over the whole run (three upgrades included).
    let (new_wait, live_wait) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (tcp_ok, tcp_failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (udp_ok, udp_failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed) = (stop.clone(), tcp_ok.clone(), tcp_failed.clone());
        let longest = new_wait.clone();
        load.push(std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                let asked = Instant::now();
                let answer = blocking_ask(front);
                longest.fetch_max(asked.elapsed().as_micros() as u64, Ordering::SeqCst);
                match answer {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        eprintln!("tcp client failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    {
        let (stop, longest) = (stop.clone(), live_wait.clone());
        let mut live = echoing(front);
        load.push(std::thread::spawn(move || {
            let started = Instant::now();
            let mut line = String::new();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                let sent = Instant::now();
                live.write_all(b"ping\n").unwrap();
                line.clear();
                let mut byte = [0u8; 1];
                while !line.ends_with('\n') {
                    live.read_exact(&mut byte)
                        .expect("the live connection answers");
                    line.push(byte[0] as char);
                }
                assert_eq!(line, "a: ping\n");
                longest.fetch_max(sent.elapsed().as_micros() as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    {
        let (stop, ok, failed) = (stop.clone(), udp_ok.clone(), udp_failed.clone());
        load.push(std::thread::spawn(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let started = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                i += 1;
                let q = format!("q{i}");
                // As a DNS client does: a query unanswered in 2 s is sent
                // again (twice at most); a late answer to an earlier query
                // is skipped, not taken for this one's.
                let answered = common::query_with_retries(&s, dns, &q, || {});
                if answered {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    eprintln!("udp query {q} not answered in three tries");
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }

    let served = |n: &Arc<AtomicUsize>| n.load(Ordering::SeqCst);
    let mut pids = vec![daemon.child.id()];
    let mut successors = Successors(Vec::new());
    for round in 1..=3 {
        // Traffic flows before each upgrade.
        let (t, u) = (served(&tcp_ok), served(&udp_ok));
        wait_until("traffic", Duration::from_secs(10), || {
            served(&tcp_ok) > t + 50 && served(&udp_ok) > u + 20
        });
        let successor = daemon.upgrade(*pids.last().unwrap(), round);
        pids.push(successor);
        successors.0.push(successor);
        // The old process hands its established connection over and exits
        // well before its 30 s grace: nothing is left for it to drain.
        let old = pids[pids.len() - 2];
        let code = if round == 1 {
            daemon.wait_exit(Duration::from_secs(15))
        } else {
            wait_pid(old, Duration::from_secs(15))
        };
        assert_eq!(code, Some(0), "old process {old}");
        // The established connection goes on, in the new process.
        held.write_all(b"still\n").unwrap();
        let mut line = String::new();
        BufReader::new(&held).read_line(&mut line).unwrap();
        assert_eq!(line, "a: still\n", "round {round}");
    }
    assert!(
        daemon.count_log(|v| v["message"]
            == "upgrade: took over the old process's established connections"
            && v["connections"].as_u64() >= Some(1))
            >= 3,
        "each new process took the connection over"
    );
    // The newest process serves on its own.
    let (t, u) = (served(&tcp_ok), served(&udp_ok));
    wait_until(
        "traffic after the last upgrade",
        Duration::from_secs(10),
        || served(&tcp_ok) > t + 100 && served(&udp_ok) > u + 50,
    );
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        served(&tcp_failed),
        0,
        "TCP clients failed ({} served)",
        served(&tcp_ok)
    );
    assert_eq!(
        served(&udp_failed),
        0,
        "UDP queries unanswered ({} answered)",
        served(&udp_ok)
    );
    // No client waits longer than a new process takes to start, and a live
    // connection pauses no longer than its hand-over takes; either far
    // below a second, even on a busy machine.
    let ms = |us: &Arc<AtomicU64>| us.load(Ordering::SeqCst) as f64 / 1000.0;
    eprintln!(
        "longest wait: new client {:.1} ms, live connection {:.1} ms",
        ms(&new_wait),
        ms(&live_wait)
    );
    assert!(
        ms(&new_wait) < 500.0,
        "a new client waited {:.1} ms",
        ms(&new_wait)
    );
    assert!(
        ms(&live_wait) < 500.0,
        "a live connection waited {:.1} ms for its answer",
        ms(&live_wait)
    );

    drop(held);
    let newest = pids[3];
    assert_eq!(
        http(admin, "GET", "/healthz", &[], "").0,
        200,
        "the newest process serves the admin endpoint on the same address"
    );
    signal_pid(newest, libc::SIGTERM);
    assert_eq!(wait_pid(newest, Duration::from_secs(20)), Some(0));
}

/// An upgrade whose new process cannot start (here: the file became
/// invalid) changes nothing: the old process says why and serves on.
#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(Backend::start("a"));
    let mut daemon = Daemon::start(&config(true, &[backend.addr], false, "1s"), &[], &[]);
    let front = daemon.listeners()["front"];
    let mut held = echoing(front);
    std::fs::write(daemon.path(), "this is not toml [").unwrap();
    daemon.signal("USR2");
    let failed = daemon.wait_log("the upgrade to fail", Duration::from_secs(30), |v| {
        v["message"] == "upgrade failed; this process serves on"
    });
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("exited before it was ready"),
        "{failed}"
    );
    assert_eq!(blocking_ask(front).unwrap(), "a");
    held.write_all(b"y\n").unwrap();
    let mut line = String::new();
    BufReader::new(&held).read_line(&mut line).unwrap();
    assert_eq!(line, "a: y\n");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
}

/// A connection that is mid-transfer when an upgrade comes (bytes held in
/// the old process) is not moved: it finishes there, byte for byte, and the
/// old process exits 0 once it has.
#[test]
fn a_connection_mid_transfer_finishes_in_the_old_process() {
    // SAFETY: prctl on this process only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    const TOTAL: usize = 32 << 20;
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        let chunk = vec![7u8; 64 << 10];
        for _ in 0..TOTAL / chunk.len() {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut daemon = Daemon::start(&config(false, &[addr], false, "30s"), &[], &[]);
    let mut client = TcpStream::connect(daemon.listeners()["front"]).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Read a first MiB (the flow is bulk by then), then stop reading: the
    // rest piles up in the old process's sockets and pipe.
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < 1 << 20 {
        got += client.read(&mut buf).unwrap();
    }
    let successor = daemon.upgrade(daemon.child.id(), 1);
    let _successors = Successors(vec![successor]);
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the old process must stay for the transfer it carries"
    );
    loop {
        match client.read(&mut buf).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    assert_eq!(got, TOTAL, "every byte arrived");
    // The client closes its side too: the connection is over.
    drop(client);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0));
    signal_pid(successor, libc::SIGTERM);
    assert_eq!(wait_pid(successor, Duration::from_secs(20)), Some(0));
}

/// A UDP session still open when the shutdown grace is over is ended then,
/// and its access-log line says so.
#[test]
fn a_udp_session_open_when_the_grace_ends_is_ended_as_shutdown() {
    // A backend that never answers: the session stays open.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // A grace shorter than the second a stopped listener's sessions get.
    let text = format!(
        "shutdown_grace = \"100ms\"\n\
         [[listeners]]\nname = \"dns\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        silent.local_addr().unwrap()
    );
    let mut daemon = Daemon::start(&text, &[], &[]);
    let front = daemon.listeners()["dns"];
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"hi", front).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(silent.recv(&mut buf).unwrap(), 2, "the backend got it");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
    let session = daemon.wait_log("udp access line", Duration::from_secs(5), |v| {
        v["target"] == "switchyard::access" && v["listener"] == "dns"
    });
    assert_eq!(session["end"], "shutdown");
    assert_eq!(session["datagrams_out"].as_u64(), Some(0));
}

/// A reload reads the included files again: a listener added in `conf.d`
/// is bound, and one whose file goes is retired.
#[test]
fn a_reload_reads_the_included_files_again() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(Backend::start("b"));
    let daemon = Daemon::start(
        &format!(
            "include = [\"conf.d/*.toml\"]\n[[listeners]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
            b.addr
        ),
        &[],
        &[],
    );
    let folder = daemon.path().parent().unwrap().join("conf.d");
    std::fs::create_dir(&folder).unwrap();
    assert!(!daemon.listeners().contains_key("added"));
    std::fs::write(
        folder.join("added.toml"),
        "[[listeners]]\nname = \"added\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
    )
    .unwrap();
    daemon.signal("HUP");
    wait_until("the reload", Duration::from_secs(10), || {
        reloads(&daemon) == 1
    });
    let added = daemon.listeners()["added"];
    assert_eq!(blocking_ask(added), Ok("b".to_string()));
    std::fs::remove_file(folder.join("added.toml")).unwrap();
    daemon.signal("HUP");
    wait_until("the second reload", Duration::from_secs(10), || {
        reloads(&daemon) == 2
    });
    wait_until(
        "the removed listener to refuse",
        Duration::from_secs(5),
        || TcpStream::connect(added).is_err(),
    );
    drop(b);
}
