//! Helpers shared by the integration tests: in-test backends, a started
//! daemon, clients, and waiting on conditions with a deadline.
#![allow(dead_code)]

pub mod daemon;
pub mod etcd;
pub mod gate;
pub mod netns;
pub mod pki;
pub mod process;
pub mod tools;
pub mod zookeeper;

#[allow(unused_imports)]
pub use tools::installed;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard::{Config, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Connects to `front` from the local address `from` (127.0.0.0/8 is all
/// ours: each address plays another client).
pub async fn connect_from(from: &str, front: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(front).await.unwrap()
}

/// Closes with a reset (`SO_LINGER {1, 0}`), as a crashing or aborting peer does.
pub fn reset(s: std::net::TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Sends `bytes` on `s` and reads the answer; `None` when the proxy closed
/// the connection instead (fails after 5 s with neither).
pub async fn reply(s: &mut TcpStream, bytes: &[u8]) -> Option<String> {
    s.write_all(bytes).await.ok()?;
    let mut buf = [0u8; 128];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer or a close in time")
        .ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
}

/// Starts the daemon from TOML text.
pub async fn start(toml: &str) -> Server {
    let config = Config::parse(toml, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("bad test config:\n{e}"));
    Server::start(config).await.expect("daemon starts")
}

/// A TCP (and UDP, same port) backend that answers each line or datagram
/// with `<name>: <line>` and counts accepted connections.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        for _ in 0..16 {
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = tcp.local_addr().unwrap();
            let Ok(udp) = UdpSocket::bind(addr).await else {
                continue;
            };
            return Backend::serve(name, tcp, Some(udp));
        }
        panic!("no free port for TCP and UDP");
    }

    /// Serves on an address again (after `stop`), e.g. to bring a backend back.
    pub async fn start_at(name: &str, addr: SocketAddr) -> Backend {
        let tcp = bind_reuse(addr);
        let udp = UdpSocket::bind(addr).await.ok();
        Backend::serve(name, tcp, udp)
    }

    fn serve(name: &str, tcp: TcpListener, udp: Option<UdpSocket>) -> Backend {
        let addr = tcp.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        let (n, count) = (name.to_string(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((s, _)) = tcp.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let n = n.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if w.write_all(format!("{n}: {line}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        }));
        if let Some(udp) = udp {
            let n = name.to_string();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((len, peer)) = udp.recv_from(&mut buf).await else {
                        continue;
                    };
                    let reply = format!("{n}: {}", String::from_utf8_lossy(&buf[..len]));
                    let _ = udp.send_to(reply.as_bytes(), peer).await;
                }
            }));
        }
        Backend {
            name: name.to_string(),
            addr,
            accepted,
            tasks,
        }
    }

    /// Stops listening: new connects are refused (established ones run on).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP listener with SO_REUSEADDR, so a stopped backend's port can be reused at once.
pub fn bind_reuse(addr: SocketAddr) -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(128).unwrap();
    s.set_nonblocking(true).unwrap();
    TcpListener::from_std(s.into()).unwrap()
}

/// A raw echo backend: copies every byte back, and half-closes when the client does.
pub async fn echo_raw() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A connection through `front` that has carried one line each way, its
/// answer from backend `name`: for tests that hold it open.
pub async fn echoed(front: SocketAddr, line: &str, name: &str) -> TcpStream {
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        format!("{name}: {line}\n")
    );
    s
}

/// Sends one line on a new connection and returns the name of the backend that answered.
pub async fn ask(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    s.write_all(b"who\n").await.unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(&mut s);
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
        .await
        .expect("reply in time")
        .expect("read reply");
    line.split(':').next().unwrap().to_string()
}

/// Sends `payload` from a UDP socket bound to `from` and returns the name of
/// the backend that answered.
pub async fn ask_udp(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> String {
    let c = UdpSocket::bind(from).await.unwrap();
    c.send_to(payload, to).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
        .await
        .expect("a reply in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(':').next().unwrap().to_string()
}

/// Asks `q` at `to` from the blocking socket `s` (its read timeout set) as a
/// DNS client does: unanswered, it is sent again (three sends at most), and
/// a late answer to an earlier query is skipped, not taken for this one's.
/// `sent` is told of every send. Whether it was answered.
pub fn query_with_retries(
    s: &std::net::UdpSocket,
    to: SocketAddr,
    q: &str,
    mut sent: impl FnMut(),
) -> bool {
    let mut buf = [0u8; 256];
    (0..3).any(|_| {
        s.send_to(q.as_bytes(), to).unwrap();
        sent();
        loop {
            match s.recv(&mut buf) {
                Ok(n) if buf[..n].ends_with(q.as_bytes()) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    })
}

/// Like [`ask`] but reports failure instead of panicking.
pub async fn try_ask(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(b"who\n").await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await {
            Err(_) => return Err("timed out".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(0)) => return Err("closed without a reply".into()),
            Ok(Ok(_)) if byte[0] == b'\n' => break,
            Ok(Ok(_)) => buf.push(byte[0]),
        }
    }
    let line = String::from_utf8_lossy(&buf).to_string();
    Ok(line.split(':').next().unwrap().to_string())
}

/// An address where nothing listens, TCP or UDP: connects are refused and
/// datagrams draw ICMP port-unreachable. It lies on 127.0.0.3, which no test
/// binds, so another test in the same run can never take the port over (as
/// it could a just-freed port on 127.0.0.1).
pub fn dead_addr() -> SocketAddr {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Below the ephemeral range (32768 and up), so no outgoing socket holds it either.
    let port = 20_000 + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
    SocketAddr::from(([127, 0, 0, 3], port as u16))
}

/// One socket of the kernel's TCP table (/proc/net/tcp, and tcp6).
pub struct TcpSocket {
    /// The local address (the table writes `0100007F:1F90`).
    pub local: SocketAddr,
    pub remote_port: u16,
    /// `0A` is LISTEN, `01` ESTABLISHED.
    pub state: String,
    /// A listening socket's accept backlog; bytes unread otherwise.
    pub rx_queue: usize,
    /// The timer running (`00` none, `01` retransmit or loss probe, `02`
    /// keepalive).
    pub timer: String,
}

/// The TCP sockets of this network namespace, IPv4 and, with `v6`, IPv6.
pub fn tcp_sockets(v6: bool) -> Vec<TcpSocket> {
    let files: &[&str] = if v6 {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        &["/proc/net/tcp"]
    };
    let port = |a: &str| u16::from_str_radix(&a[a.len() - 4..], 16).unwrap();
    // The address is the kernel's words in hex, each in host (little-endian) order.
    let addr = |a: &str| {
        let (ip, _) = a.split_once(':').unwrap();
        let words: Vec<[u8; 4]> = (0..ip.len() / 8)
            .map(|i| {
                u32::from_str_radix(&ip[8 * i..8 * i + 8], 16)
                    .unwrap()
                    .to_le_bytes()
            })
            .collect();
        let ip = match words[..] {
            [w] => IpAddr::from(w),
            _ => IpAddr::from(<[u8; 16]>::try_from(words.concat()).unwrap()),
        };
        SocketAddr::new(ip, port(a))
    };
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    TcpSocket {
                        local: addr(f[1]),
                        remote_port: port(f[2]),
                        state: f[3].to_string(),
                        rx_queue: usize::from_str_radix(f[4].split_once(':').unwrap().1, 16)
                            .unwrap(),
                        timer: f[5][..2].to_string(),
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits until `cond` holds, checking every 10ms, failing after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the daemon's `series` reaches `want`, failing after `limit`.
pub async fn wait_metric(server: &Server, series: &str, want: f64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got = value(server, series);
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {series} to reach {want} (it is {got})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until listener `listener` has no connection open (their places
/// under `max_connections` are back).
pub async fn wait_idle(server: &Server, listener: &str) {
    let series = format!("switchyard_listener_active_connections{{listener=\"{listener}\"}}");
    wait_metric(server, &series, 0.0, Duration::from_secs(5)).await;
}

/// A series' name and its labels, from `name{a="x",b="y"}`.
fn series_parts(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}').unwrap_or(rest);
            let mut labels: Vec<&str> = inner
                .split("\",")
                .map(|l| l.trim_end_matches('"'))
                .filter(|l| !l.is_empty())
                .collect();
            labels.sort_unstable();
            (name, labels)
        }
    }
}

/// The value of one sample in Prometheus text, e.g.
/// `metric(&text, "switchyard_udp_sessions{listener=\"u\"}")`. A backend's
/// series may be named without its `backend_name` label (the address says
/// which backend it is).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    let (name, want) = series_parts(series);
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        let (n, mut labels) = series_parts(s);
        if n != name {
            return None;
        }
        if !want.iter().any(|w| w.starts_with("backend_name=")) {
            labels.retain(|l| !l.starts_with("backend_name="));
        }
        (labels == want).then(|| v.trim().parse().ok())?
    })
}

/// The daemon's current value for a series (0 when absent).
/// Panics when the series is not exported: a misspelled or missing series
/// must fail a test, not read as 0.
pub fn value(server: &Server, series: &str) -> f64 {
    let text = server.metrics().render();
    metric(&text, series).unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

/// A TOML backend list for these addresses, with optional weights.
pub fn backends_toml(addrs: &[SocketAddr], weights: Option<&[u32]>) -> String {
    let items: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| match weights {
            Some(w) => format!("{{ addr = \"{a}\", weight = {} }}", w[i]),
            None => format!("{{ addr = \"{a}\" }}"),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The engine the daemons of this run carry connections on: the one
/// `SWITCHYARD_ENGINE` names, else what `engine = "auto"` runs (epoll).
#[allow(dead_code)]
pub fn engine() -> &'static str {
    match std::env::var(switchyard::engine::ENV).as_deref() {
        Ok("io_uring") => "io_uring",
        _ => "epoll",
    }
}
