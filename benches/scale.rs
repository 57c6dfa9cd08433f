//! How switchyard's cost grows with the work: new connections per second and
//! their p99 at 10, 1,000 and 10,000 concurrent clients; UDP exchanges per
//! second over 1, 100 and 10,000 client addresses (sessions); memory per
//! idle TCP connection and per idle UDP session; CPU seconds per GiB relayed,
//! beside HAProxy with `splice-auto` when it is installed.
//!
//! `cargo bench --bench scale` (add `-- --seconds N`, `-- --json FILE`). It
//! runs the release binary against backends of its own in a child process
//! (so each process needs half the descriptors), on loopback, with ports
//! from the kernel; every loop is bounded by a deadline. Under `cargo test
//! --all-targets` (no `--bench` argument) it makes one quick pass over small
//! levels, which checks the bench without the wait.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn main() {
    raise_nofile();
    if std::env::var_os("SCALE_BACKENDS").is_some() {
        return backends();
    }
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    // `cargo test --all-targets` runs this without `--bench`: then one quick
    // pass over small levels checks that the bench itself works.
    let quick = !args.iter().any(|a| a == "--bench");
    let secs: f64 = opt("--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.3 } else { 3.0 });
    let level = Duration::from_secs_f64(secs);
    let (conns, clients, idle, mib): ([usize; 3], [usize; 3], usize, u64) = if quick {
        ([10, 100, 200], [1, 10, 100], 200, 64)
    } else {
        ([10, 1000, 10_000], [1, 100, 10_000], 5000, 4096)
    };
    let json = opt("--json");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backends = Backends::start();
    let proxy = Proxy::start(&backends);
    let mut report = serde_json::Map::new();

    // Each concurrent client holds two descriptors in the proxy and one here
    // and in the backends' process.
    let room = (nofile() as usize).saturating_sub(2048) / 2;

    // Memory first, each on a proxy of its own that has served nothing yet:
    // a heap that earlier load grew would hide the growth.
    let n = idle.min(room);
    let tcp_idle = rt.block_on(idle_tcp(&Proxy::start(&backends), n));
    let udp_idle = rt.block_on(idle_udp(&Proxy::start(&backends), n));
    println!("memory (proxy RSS growth over {n} idle clients)");
    println!("  per idle TCP connection: {tcp_idle:.2} KiB");
    println!("  per idle UDP session:    {udp_idle:.2} KiB\n");
    report.insert(
        "idle".into(),
        serde_json::json!({"clients": n, "tcp_kib": tcp_idle, "udp_kib": udp_idle}),
    );

    println!("new connections (connect, 4 bytes each way, backend closes), {secs} s a level");
    println!(
        "{:>12} {:>12} {:>10} {:>10}",
        "concurrent", "conn/s", "p50 ms", "p99 ms"
    );
    let mut conn = Vec::new();
    for want in conns {
        let c = want.min(room);
        let r = rt.block_on(conn_rate(proxy.tcp, c, level));
        let note = if c < want { " (descriptor limit)" } else { "" };
        println!(
            "{c:>12} {:>12.0} {:>10.2} {:>10.2}{note}",
            r.rate, r.p50_ms, r.p99_ms
        );
        conn.push(serde_json::json!({"concurrent": c, "conn_s": r.rate, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}));
    }
    report.insert("conn".into(), conn.into());

    println!("\nUDP exchanges (64-byte datagram and its echo), 64 in flight, {secs} s a level");
    println!("{:>12} {:>12} {:>10}", "clients", "exchanges/s", "lost");
    let mut udp = Vec::new();
    for want in clients {
        let n = want.min(room);
        let r = rt.block_on(udp_rate(proxy.udp, n, level));
        println!("{n:>12} {:>12.0} {:>10}", r.rate, r.lost);
        udp.push(serde_json::json!({"clients": n, "exchanges_s": r.rate, "lost": r.lost}));
    }
    report.insert("udp".into(), udp.into());

    println!("\nCPU per GiB relayed ({mib} MiB one way, client to a discarding backend)");
    let ours = cpu_per_gib(proxy.child.0.id(), proxy.bulk, mib);
    println!(
        "  switchyard: {:.3} CPU s/GiB at {:.2} Gbit/s",
        ours.0, ours.1
    );
    let mut bulk =
        serde_json::json!({"switchyard_cpu_s_per_gib": ours.0, "switchyard_gbit_s": ours.1});
    match Haproxy::start(backends.sink) {
        Some(h) => {
            let theirs = cpu_per_gib(h.child.0.id(), h.addr, mib);
            println!(
                "  HAProxy (splice-auto): {:.3} CPU s/GiB at {:.2} Gbit/s; switchyard ÷ HAProxy {:.2}",
                theirs.0,
                theirs.1,
                ours.0 / theirs.0
            );
            bulk["haproxy_cpu_s_per_gib"] = theirs.0.into();
            bulk["haproxy_gbit_s"] = theirs.1.into();
        }
        None => println!("  HAProxy: skipped: haproxy not installed"),
    }
    report.insert("bulk".into(), bulk);

    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    }
}

fn raise_nofile() {
    // SAFETY: getrlimit and setrlimit read and write a struct we own.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_max = l.rlim_max.max(65_536);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
            }
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    l.rlim_cur
}

/// The backends, in a child process: a TCP server that answers four bytes
/// with four and closes, a UDP echo, a TCP sink. Prints their addresses.
fn backends() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tcp = listener_with_backlog();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!(
            "{} {} {}",
            tcp.local_addr().unwrap(),
            udp.local_addr().unwrap(),
            sink.local_addr().unwrap()
        );
        std::io::stdout().flush().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut b = [0u8; 4];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                    }
                });
            }
        });
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = sink.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut b = vec![0u8; 1 << 20];
                    while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                });
            }
        });
        let mut b = [0u8; 2048];
        loop {
            if let Ok((n, from)) = udp.recv_from(&mut b).await {
                let _ = udp.send_to(&b[..n], from).await;
            }
        }
    });
}

fn listener_with_backlog() -> tokio::net::TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(16_384).unwrap();
    s.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(TcpListener::from(s)).unwrap()
}

struct Backends {
    _child: Kill,
    tcp: SocketAddr,
    udp: SocketAddr,
    sink: SocketAddr,
}

impl Backends {
    fn start() -> Backends {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("SCALE_BACKENDS", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let a: Vec<SocketAddr> = line
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        Backends {
            _child: Kill(child),
            tcp: a[0],
            udp: a[1],
            sink: a[2],
        }
    }
}

/// Kills and reaps its child when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Proxy {
    child: Kill,
    tcp: SocketAddr,
    udp: SocketAddr,
    bulk: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start(b: &Backends) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("scale.toml");
        let listener = |name: &str, proto: &str| {
            format!(
                "[[listeners]]\nname = \"{name}\"\nprotocol = \"{proto}\"\nbind = \"127.0.0.1:0\"\npool = \"{name}\"\naccess_log = false\n{}",
                if proto == "tcp" { "backlog = 16384\n" } else { "max_sessions = 20000\nmax_sessions_per_ip = 20000\n" }
            )
        };
        let text = format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n{}{}{}[pools.conn]\nbackends = [{{ addr = \"{}\" }}]\n[pools.udp]\nbackends = [{{ addr = \"{}\" }}]\n[pools.bulk]\nbackends = [{{ addr = \"{}\" }}]\n",
            listener("conn", "tcp"),
            listener("udp", "udp"),
            listener("bulk", "tcp"),
            b.tcp,
            b.udp,
            b.sink
        );
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut found = std::collections::HashMap::new();
        while found.len() < 4 {
            let line = lines.next().expect("switchyard started").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "admin endpoint listening" {
                found.insert("admin".into(), v["addr"].as_str().unwrap().parse().unwrap());
            }
            if v["message"] == "listening" {
                found.insert(
                    v["listener"].as_str().unwrap().to_string(),
                    v["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap(),
                );
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Proxy {
            child: Kill(child),
            tcp: found["conn"],
            udp: found["udp"],
            bulk: found["bulk"],
            admin: found["admin"],
            _dir: dir,
        }
    }
}

struct Rate {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// `c` clients, each connecting again as soon as its last connection ends,
/// until `d` has passed. Client addresses spread over 127.0.1.x so the
/// ephemeral ports of one address never run out.
async fn conn_rate(to: SocketAddr, c: usize, d: Duration) -> Rate {
    let end = Instant::now() + d;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..c {
        let errors = errors.clone();
        let source = SocketAddr::from(([127, 0, 1, (k % 250) as u8 + 1], 0));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), exchange(source, to)).await {
                    Ok(Ok(())) => lat.push(t.elapsed()),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let took = started.elapsed().as_secs_f64();
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Rate {
        rate: lat.len() as f64 / took,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

async fn exchange(source: SocketAddr, to: SocketAddr) -> std::io::Result<()> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(source)?;
    let mut s = s.connect(to).await?;
    s.write_all(b"ping").await?;
    let mut b = [0u8; 8];
    let mut got = 0;
    loop {
        match s.read(&mut b[got..]).await? {
            0 => break,
            n => got += n,
        }
    }
    if got != 4 {
        return Err(std::io::Error::other("short answer"));
    }
    Ok(())
}

struct UdpRate {
    rate: f64,
    lost: u64,
}

/// `n` client sockets (sessions), 64 exchanges in flight over them, each
/// socket's turn coming round in order, until `d` has passed; a reply not
/// back within 200 ms is lost.
async fn udp_rate(to: SocketAddr, n: usize, d: Duration) -> UdpRate {
    let lanes = n.min(64);
    // Fewer clients than lanes: each lane keeps several exchanges in flight
    // on its one socket.
    let burst = 64 / lanes;
    let lost = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::new();
    for k in 0..n {
        let source = SocketAddr::from(([127, 0, 2, (k % 250) as u8 + 1], 0));
        let s = tokio::net::UdpSocket::bind(source).await.unwrap();
        s.connect(to).await.unwrap();
        sockets.push(s);
    }
    // Every session made (and answered once) before the clock starts.
    let mut by_lane: Vec<Vec<tokio::net::UdpSocket>> = (0..lanes).map(|_| Vec::new()).collect();
    for (k, s) in sockets.into_iter().enumerate() {
        by_lane[k % lanes].push(s);
    }
    let warm = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    let start = Arc::new(tokio::sync::Barrier::new(lanes));
    for lane in by_lane {
        let (lost, done, start) = (lost.clone(), done.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mut b = [0u8; 64];
            for s in &lane {
                while Instant::now() < warm && !ask(s, &mut b).await {}
            }
            start.wait().await;
            let end = Instant::now() + d;
            let mut i = 0;
            while Instant::now() < end {
                let answered = ask_many(&lane[i % lane.len()], &mut b, burst).await;
                done.fetch_add(answered, Ordering::Relaxed);
                lost.fetch_add(burst as u64 - answered, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    UdpRate {
        rate: done.load(Ordering::Relaxed) as f64 / d.as_secs_f64(),
        lost: lost.load(Ordering::Relaxed),
    }
}

/// Sends `k` datagrams on `s`, then counts the replies that come back within
/// 200 ms of the last one.
async fn ask_many(s: &tokio::net::UdpSocket, b: &mut [u8; 64], k: usize) -> u64 {
    if k == 1 {
        return ask(s, b).await as u64;
    }
    for _ in 0..k {
        if s.send(&b[..]).await.is_err() {
            return 0;
        }
    }
    let mut got = 0;
    while got < k as u64 {
        match tokio::time::timeout(Duration::from_millis(200), s.recv(b)).await {
            Ok(Ok(64)) => got += 1,
            _ => break,
        }
    }
    got
}

async fn ask(s: &tokio::net::UdpSocket, b: &mut [u8; 64]) -> bool {
    if s.send(&b[..]).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_millis(200), s.recv(b)).await,
        Ok(Ok(64))
    )
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// RSS growth per connection over `n` connections held open, each having
/// carried one exchange's first bytes (so each has been served, not only
/// accepted).
async fn idle_tcp(p: &Proxy, n: usize) -> f64 {
    settle(p).await;
    let before = rss_kib(p.child.0.id());
    let mut held = Vec::new();
    for k in 0..n {
        let source = SocketAddr::from(([127, 0, 3, (k % 250) as u8 + 1], 0));
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(source).unwrap();
        held.push(s.connect(p.bulk).await.unwrap());
    }
    wait_metric(p, "switchyard_listener_active_connections", "bulk", n).await;
    let after = rss_kib(p.child.0.id());
    drop(held);
    wait_metric(p, "switchyard_listener_active_connections", "bulk", 0).await;
    (after - before) / n as f64
}

/// RSS growth per session over `n` client addresses, each with one exchange
/// answered.
async fn idle_udp(p: &Proxy, n: usize) -> f64 {
    settle(p).await;
    let before = rss_kib(p.child.0.id());
    let mut held = Vec::new();
    let mut b = [0u8; 64];
    for k in 0..n {
        let source = SocketAddr::from(([127, 0, 4, (k % 250) as u8 + 1], 0));
        let s = tokio::net::UdpSocket::bind(source).await.unwrap();
        s.connect(p.udp).await.unwrap();
        for _ in 0..5 {
            if ask(&s, &mut b).await {
                break;
            }
        }
        held.push(s);
    }
    let after = rss_kib(p.child.0.id());
    (after - before) / n as f64
}

/// Waits until the proxy answers on its admin endpoint with nothing open, so
/// the baseline is taken after its start's own allocations.
async fn settle(p: &Proxy) {
    wait_metric(p, "switchyard_listener_active_connections", "conn", 0).await;
}

/// Waits (up to 30 s) until `/metrics` shows `value` for the series of
/// `listener`.
async fn wait_metric(p: &Proxy, name: &str, listener: &str, value: usize) {
    let label = format!("listener=\"{listener}\"");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = TcpStream::connect(p.admin).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        let now = body
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if now == Some(value as f64) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{name} of {listener} stayed at {now:?}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU seconds per GiB `pid` spends while a client pushes `mib` MiB through
/// `to`, and the rate it went at in Gbit/s.
fn cpu_per_gib(pid: u32, to: SocketAddr, mib: u64) -> (f64, f64) {
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime and stime: fields 14 and 15, the 12th and 13th after ')'.
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let mut s = TcpStream::connect(to).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let (c0, t0) = (cpu(), Instant::now());
    for _ in 0..mib {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let took = t0.elapsed().as_secs_f64();
    (
        (cpu() - c0) * 1024.0 / mib as f64,
        mib as f64 * 8.0 * 1_048_576.0 / 1e9 / took,
    )
}

struct Haproxy {
    child: Kill,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(sink: SocketAddr) -> Option<Haproxy> {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("haproxy").is_file()));
        if !found {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // A port from the kernel, given to HAProxy at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  nbthread 2\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option splice-auto\nlisten bulk\n  bind {addr}\n  server s {sink}\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < end, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Haproxy {
            child: Kill(child),
            addr,
            _dir: dir,
        })
    }
}
