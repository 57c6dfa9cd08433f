//! Traffic policy against the real data plane: priority groups and backups
//! under load, `first` packing, panic at its threshold, and `try_all`.
//!
//! The backends here serve traffic whatever their health check says: a
//! check is answered by a switch the test turns, so a backend can fail its
//! check while it still serves, and any client failure is the proxy's.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A backend that answers each line with `<name>: <line>`, except the
/// health check's `check`, answered `ok`, or `sick` while `sick` is set.
struct Switchable {
    addr: SocketAddr,
    sick: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Switchable {
    async fn start(name: &'static str) -> Switchable {
        Switchable::start_on(name, "127.0.0.1").await
    }

    async fn start_on(name: &'static str, ip: &str) -> Switchable {
        let l = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = l.local_addr().unwrap();
        let sick = Arc::new(AtomicBool::new(false));
        let s = sick.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = l.accept().await else {
                    continue;
                };
                let sick = s.clone();
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let answer = match line.as_str() {
                            "check" if sick.load(Ordering::SeqCst) => "sick\n".to_string(),
                            "check" => "ok\n".to_string(),
                            _ => format!("{name}: {line}\n"),
                        };
                        if w.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Switchable { addr, sick, task }
    }

    fn sicken(&self, sick: bool) {
        self.sick.store(sick, Ordering::SeqCst);
    }

    fn up_series(&self) -> String {
        format!(
            "switchyard_backend_up{{backend=\"{}\",pool=\"p\"}}",
            self.addr
        )
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A check every 50 ms that fails on `sick`, two in a row to change state.
const CHECK: &str = "[pools.p.health]\nkind = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"500ms\"\n\
                     send = \"check\\n\"\nexpect = \"ok\"\nrise = 2\nfall = 2\n";

fn config(settings: &str, backends: &[(&Switchable, &str)]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(b, extra)| format!("{{ addr = \"{}\"{extra} }}", b.addr))
        .collect();
    format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\n{settings}\nbackends = [{}]\n{CHECK}",
        list.join(", ")
    )
}

/// Who answered the clients, and when, and every failure.
#[derive(Default)]
struct Answers {
    by: Mutex<Vec<(Instant, String)>>,
    failures: Mutex<Vec<String>>,
    count: AtomicUsize,
}

impl Answers {
    /// Names that answered between `from` and `to`, with their counts.
    fn between(&self, from: Instant, to: Instant) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (at, who) in self.by.lock().unwrap().iter() {
            if *at >= from && *at <= to {
                *m.entry(who.clone()).or_default() += 1;
            }
        }
        m
    }
}

/// Four clients asking in a loop until `stop`, bounded in count and time.
fn load(
    front: SocketAddr,
    stop: &Arc<AtomicBool>,
    answers: &Arc<Answers>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (stop, answers) = (stop.clone(), answers.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                for _ in 0..50_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(40) {
                        break;
                    }
                    // The time a connection's pick was made is before the
                    // connect returns; record the asking time.
                    let asked = Instant::now();
                    match try_ask(front).await {
                        Ok(who) => {
                            answers.by.lock().unwrap().push((asked, who));
                            answers.count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => answers.failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect()
}

async fn more_answers(answers: &Answers, n: usize) {
    let from = answers.count.load(Ordering::Relaxed);
    wait_for("more answers", Duration::from_secs(20), || {
        answers.count.load(Ordering::Relaxed) >= from + n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_take_over_and_give_back_under_load_without_a_failed_connection() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let backup = Switchable::start("backup").await;
    let server = start(&config(
        "",
        &[
            (&a, ""),
            (&b, ", priority = 1"),
            (&backup, ", backup = true"),
        ],
    ))
    .await;
    let front = server.local_addr("front").unwrap();
    let active = "switchyard_pool_active_priority{pool=\"p\"}";
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Answers::default());
    let clients = load(front, &stop, &answers);

    more_answers(&answers, 200).await;
    let t0 = Instant::now();
    more_answers(&answers, 200).await;
    assert_eq!(
        answers
            .between(t0, Instant::now())
            .keys()
            .collect::<Vec<_>>(),
        ["a"],
        "only group 0 takes traffic while it is up"
    );

    // Group 0 fails its check: group 1 takes over.
    a.sicken(true);
    wait_metric(&server, &a.up_series(), 0.0, Duration::from_secs(5)).await;
    let t1 = Instant::now();
    wait_metric(&server, active, 1.0, Duration::from_secs(5)).await;
    more_answers(&answers, 200).await;
    assert_eq!(
        answers
            .between(t1, Instant::now())
            .keys()
            .collect::<Vec<_>>(),
        ["b"],
        "group 1 alone while group 0 is down"
    );

    // Group 1 fails too: the backup.
    b.sicken(true);
    wait_metric(&server, &b.up_series(), 0.0, Duration::from_secs(5)).await;
    let t2 = Instant::now();
    wait_metric(&server, active, 256.0, Duration::from_secs(5)).await;
    more_answers(&answers, 200).await;
    assert_eq!(
        answers
            .between(t2, Instant::now())
            .keys()
            .collect::<Vec<_>>(),
        ["backup"],
        "the backup alone while the others are down"
    );

    // Group 0 comes back: it takes new connections again.
    a.sicken(false);
    wait_metric(&server, &a.up_series(), 1.0, Duration::from_secs(5)).await;
    let t3 = Instant::now();
    wait_metric(&server, active, 0.0, Duration::from_secs(5)).await;
    more_answers(&answers, 200).await;
    assert_eq!(
        answers
            .between(t3, Instant::now())
            .keys()
            .collect::<Vec<_>>(),
        ["a"],
        "failback to group 0"
    );

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failures = answers.failures.lock().unwrap().clone();
    let served = answers.count.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} connections failed: {:?}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(5)]
    );
    eprintln!("{served} connections through three groups, none failed");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_fills_each_backend_to_its_limit_before_the_next() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let c = Switchable::start("c").await;
    let server = start(&config(
        "strategy = \"first\"\nbackend_max_connections = 3",
        &[(&a, ", max_connections = 2"), (&b, ""), (&c, "")],
    ))
    .await;
    let front = server.local_addr("front").unwrap();
    let mut held = Vec::new();
    for name in ["a", "a", "b", "b", "b", "c"] {
        held.push(echoed(front, "hold", name).await);
    }
    // A connection of `a` ends: the next one fills its place, not c's.
    drop(held.remove(0));
    wait_metric(
        &server,
        &format!(
            "switchyard_backend_active_connections{{backend=\"{}\",pool=\"p\"}}",
            a.addr
        ),
        1.0,
        Duration::from_secs(5),
    )
    .await;
    held.push(echoed(front, "hold", "a").await);
    for _ in 0..2 {
        held.push(echoed(front, "hold", "c").await);
    }
    // Every backend at its limit (2 + 3 + 3): the ninth is refused.
    let no_backend = "switchyard_listener_no_backend_total{listener=\"front\"}";
    assert_eq!(value(&server, no_backend), 0.0);
    assert!(try_ask(front).await.is_err(), "every backend at its limit");
    assert_eq!(value(&server, no_backend), 1.0);
    drop(held);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_spreads_over_every_backend_below_the_threshold() {
    let bs = [
        Switchable::start("a").await,
        Switchable::start("b").await,
        Switchable::start("c").await,
        Switchable::start("d").await,
    ];
    let list: Vec<(&Switchable, &str)> = bs.iter().map(|b| (b, "")).collect();
    let server = start(&config("panic_threshold = 0.5", &list)).await;
    let front = server.local_addr("front").unwrap();
    let panic = "switchyard_pool_panic{pool=\"p\"}";
    let names = |n: usize| async move {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            seen.insert(try_ask(front).await.expect("an answer"));
        }
        seen
    };

    // Two of four down is the threshold, not below it: the two up take it all.
    bs[0].sicken(true);
    bs[1].sicken(true);
    wait_metric(&server, &bs[0].up_series(), 0.0, Duration::from_secs(5)).await;
    wait_metric(&server, &bs[1].up_series(), 0.0, Duration::from_secs(5)).await;
    assert_eq!(names(40).await, ["c", "d"].map(String::from).into());
    assert_eq!(value(&server, panic), 0.0);

    // Three down: one survivor would take everything; panic spreads it.
    bs[2].sicken(true);
    wait_metric(&server, &bs[2].up_series(), 0.0, Duration::from_secs(5)).await;
    assert_eq!(
        names(80).await,
        ["a", "b", "c", "d"].map(String::from).into()
    );
    assert_eq!(value(&server, panic), 1.0);

    // Back above the threshold: out of panic.
    bs[0].sicken(false);
    bs[1].sicken(false);
    wait_metric(&server, &bs[0].up_series(), 1.0, Duration::from_secs(5)).await;
    wait_metric(&server, &bs[1].up_series(), 1.0, Duration::from_secs(5)).await;
    assert_eq!(names(60).await, ["a", "b", "d"].map(String::from).into());
    assert_eq!(value(&server, panic), 0.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_down_try_all_still_serves_and_refuse_closes() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let server = start(&config(
        "on_all_down = \"try_all\"",
        &[(&a, ""), (&b, ", backup = true")],
    ))
    .await;
    let refusing = start(&config("", &[(&a, ""), (&b, ", backup = true")])).await;
    a.sicken(true);
    b.sicken(true);
    for s in [&server, &refusing] {
        wait_metric(s, &a.up_series(), 0.0, Duration::from_secs(5)).await;
        wait_metric(s, &b.up_series(), 0.0, Duration::from_secs(5)).await;
    }
    let front = server.local_addr("front").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(try_ask(front).await.expect("try_all serves"));
    }
    assert_eq!(seen, ["a", "b"].map(String::from).into());
    assert_eq!(value(&server, "switchyard_pool_panic{pool=\"p\"}"), 1.0);
    assert_eq!(
        value(&server, "switchyard_pool_active_priority{pool=\"p\"}"),
        -1.0
    );
    assert!(try_ask(refusing.local_addr("front").unwrap())
        .await
        .is_err());
    server.shutdown().await;
    refusing.shutdown().await;
}

/// An agent as operators write them, in Python: on each address given, one
/// port; each connection gets the contents of the file named after the
/// address it came to, once it has sent its line.
const AGENT: &str = r#"
import os, socket, sys, threading
folder, ips = sys.argv[1], sys.argv[2:]
while True:
    socks = []
    try:
        for ip in ips:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, socks[0].getsockname()[1] if socks else 0))
            s.listen(16)
            socks.append(s)
        break
    except OSError:
        for s in socks:
            s.close()
print(socks[0].getsockname()[1], flush=True)
def serve(s, ip):
    while True:
        c, _ = s.accept()
        try:
            c.settimeout(2)
            c.recv(64)
            with open(os.path.join(folder, ip)) as f:
                c.sendall(f.read().encode())
        except OSError:
            pass
        finally:
            c.close()
for s, ip in zip(socks, ips):
    threading.Thread(target=serve, args=(s, ip), daemon=True).start()
threading.Event().wait()
"#;

struct Agent {
    child: std::process::Child,
    port: u16,
    folder: tempfile::TempDir,
}

impl Agent {
    fn start(ips: &[&str]) -> Agent {
        use std::io::BufRead;
        let folder = tempfile::tempdir().unwrap();
        for ip in ips {
            std::fs::write(folder.path().join(ip), "up ready 100%\n").unwrap();
        }
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(AGENT)
            .arg(folder.path())
            .args(ips)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("agent said {line:?}"));
        Agent {
            child,
            port,
            folder,
        }
    }

    fn say(&self, ip: &str, line: &str) {
        std::fs::write(self.folder.path().join(ip), format!("{line}\n")).unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sets_weight_drain_and_down_but_never_lifts_an_operators_drain() {
    if !installed("python3", "python3") {
        return;
    }
    let (ip_a, ip_b) = ("127.0.0.2", "127.0.0.3");
    let a = Switchable::start_on("a", ip_a).await;
    let b = Switchable::start_on("b", ip_b).await;
    let agent = Agent::start(&[ip_a, ip_b]);
    let server = start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nstrategy = \"weighted\"\n\
         backends = [{{ addr = \"{}\", weight = 2 }}, {{ addr = \"{}\", weight = 2 }}]\n\
         [pools.p.agent]\nport = {}\ninterval = \"50ms\"\ntimeout = \"1s\"\nsend = \"status\\n\"\n",
        a.addr, b.addr, agent.port
    ))
    .await;
    let front = server.local_addr("front").unwrap();
    let admin = server.admin_addr().await.unwrap();
    let api_backend = move |addr: SocketAddr| {
        let (code, body) = common::daemon::http(admin, "GET", "/api/v1/pools", &[], "");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["addr"] == addr.to_string())
            .cloned()
            .unwrap()
    };
    let wait_api = |what: &'static str, addr: SocketAddr, cond: fn(&serde_json::Value) -> bool| async move {
        wait_for(what, Duration::from_secs(10), || cond(&api_backend(addr))).await;
    };
    let share = |n: usize| async move {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..n {
            *m.entry(try_ask(front).await.expect("an answer"))
                .or_default() += 1;
        }
        m
    };
    let weight_b = format!(
        "switchyard_backend_weight{{backend=\"{}\",pool=\"p\"}}",
        b.addr
    );
    wait_api("a's agent heard", a.addr, |v| {
        v["agent"]["last"] == "up ready 100%"
    })
    .await;
    wait_api("b's agent heard", b.addr, |v| {
        v["agent"]["last"] == "up ready 100%"
    })
    .await;
    assert_eq!(
        share(300).await,
        [("a".into(), 150), ("b".into(), 150)].into()
    );

    // Half the configured weight: 2 becomes 1, a third of the traffic.
    agent.say(ip_b, "50%");
    wait_metric(&server, &weight_b, 1.0, Duration::from_secs(10)).await;
    assert_eq!(
        share(300).await,
        [("a".into(), 200), ("b".into(), 100)].into()
    );
    assert_eq!(api_backend(b.addr)["agent"]["weight_percent"], 50);

    // Drained by its agent: no new connections.
    agent.say(ip_b, "drain");
    wait_api("b drained by its agent", b.addr, |v| {
        v["state"] == "draining"
    })
    .await;
    assert_eq!(share(30).await, [("a".into(), 30)].into());
    assert_eq!(
        api_backend(b.addr)["draining"],
        false,
        "not the operator's drain"
    );

    // An operator's drain holds whatever the agent says.
    let (code, body) = common::daemon::http(
        admin,
        "POST",
        &format!("/api/v1/pools/p/backends/{}/drain", b.addr),
        &[],
        "",
    );
    assert_eq!(code, 200, "{body}");
    agent.say(ip_b, "ready 100%");
    wait_metric(&server, &weight_b, 2.0, Duration::from_secs(10)).await;
    wait_api("the agent's ready heard", b.addr, |v| {
        v["agent"]["drain"] == false
    })
    .await;
    assert_eq!(api_backend(b.addr)["state"], "draining");
    assert_eq!(share(30).await, [("a".into(), 30)].into());
    let (code, body) = common::daemon::http(
        admin,
        "POST",
        &format!("/api/v1/pools/p/backends/{}/enable", b.addr),
        &[],
        "",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(share(30).await, [("a".into(), 15), ("b".into(), 15)].into());

    // Down by its agent, while its traffic port serves; then up again.
    agent.say(ip_b, "down # maintenance window");
    wait_api("b down by its agent", b.addr, |v| v["state"] == "down").await;
    assert_eq!(share(30).await, [("a".into(), 30)].into());
    agent.say(ip_b, "up");
    wait_api("b up again", b.addr, |v| v["state"] == "up").await;
    assert_eq!(share(30).await, [("a".into(), 15), ("b".into(), 15)].into());

    // An agent that stops answering changes nothing.
    drop(agent);
    wait_api("the agent's silence noted", b.addr, |v| {
        v["agent"]["last"]
            .as_str()
            .is_some_and(|l| l.starts_with("not reached"))
    })
    .await;
    assert_eq!(api_backend(b.addr)["state"], "up");
    assert_eq!(share(30).await, [("a".into(), 15), ("b".into(), 15)].into());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_datagram_spreads_each_datagram_and_replies_come_from_the_listener() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr))
        .collect();
    let server = start(&format!(
        "[[listeners]]\nname = \"spread\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         udp_balance = \"per_datagram\"\naccess_log = false\n\
         [[listeners]]\nname = \"sticky\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nbackends = [{}]\n",
        list.join(", ")
    ))
    .await;
    // A connected client socket takes replies only from the address it
    // sent to: every answer must come from the listener's.
    let ask_all = |listener: &'static str| {
        let front = server.local_addr(listener).unwrap();
        async move {
            let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.connect(front).await.unwrap();
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            let mut buf = [0u8; 128];
            for i in 0..30 {
                c.send(format!("q{i}").as_bytes()).await.unwrap();
                let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
                    .await
                    .expect("an answer through the listener")
                    .unwrap();
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let (who, what) = text.split_once(": ").unwrap();
                assert_eq!(what, format!("q{i}"), "each answer is its own query's");
                *counts.entry(who.to_string()).or_default() += 1;
            }
            counts
        }
    };
    assert_eq!(
        ask_all("spread").await,
        [("a".into(), 10), ("b".into(), 10), ("c".into(), 10)].into(),
        "round robin over every datagram"
    );
    let sticky = ask_all("sticky").await;
    assert_eq!(sticky.len(), 1, "a session keeps one backend: {sticky:?}");
    assert_eq!(
        value(
            &server,
            "switchyard_udp_sessions_total{listener=\"spread\"}"
        ),
        1.0,
        "one client, one session, whatever backends its datagrams went to"
    );
    server.shutdown().await;
}

/// Who connected: a TCP backend that answers each connection with the
/// peer's address, and a UDP one that answers each datagram so.
async fn reporters() -> (SocketAddr, SocketAddr) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = tcp.accept().await {
            let _ = s.write_all(format!("{}\n", peer.ip()).as_bytes()).await;
        }
    });
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let u = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(peer.ip().to_string().as_bytes(), peer).await;
        }
    });
    (t, u)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_sets_the_address_backends_see() {
    let (t, u) = reporters().await;
    let text = |source: &str| {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\npool = \"t\"\n\
             [[listeners]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"u\"\n\
             [pools.t]\n{source}backends = [{{ addr = \"{t}\" }}]\n\
             [pools.u]\n{source}backends = [{{ addr = \"{u}\" }}]\n"
        )
    };
    let server = start(&text("source = \"127.0.0.77\"\n")).await;
    let seen_tcp = |front: SocketAddr| async move {
        let c = tokio::net::TcpStream::connect(front).await.unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            BufReader::new(c).read_line(&mut line),
        )
        .await
        .unwrap()
        .unwrap();
        line.trim().to_string()
    };
    let seen_udp = |front: SocketAddr| async move {
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(b"who", front).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let (ft, fu) = (
        server.local_addr("t").unwrap(),
        server.local_addr("u").unwrap(),
    );
    assert_eq!(seen_tcp(ft).await, "127.0.0.77");
    assert_eq!(seen_udp(fu).await, "127.0.0.77");
    // The API says so.
    let admin = server.admin_addr().await.unwrap();
    let (code, body) = tokio::task::spawn_blocking(move || {
        common::daemon::http(admin, "GET", "/api/v1/pools", &[], "")
    })
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"source\":\"127.0.0.77\""), "{body}");
    // Many connections share the address: ports are chosen at connect.
    for _ in 0..50 {
        assert_eq!(seen_tcp(ft).await, "127.0.0.77");
    }
    // A reload moves new connections and sessions to the new address.
    server
        .reload(
            switchyard::Config::parse(
                &text("source = \"127.0.0.78\"\n"),
                std::path::Path::new("t.toml"),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seen_tcp(ft).await, "127.0.0.78");
    let c = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    c.send_to(b"who", fu).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"127.0.0.78", "a new session");
    // Without it, the system's choice.
    server
        .reload(switchyard::Config::parse(&text(""), std::path::Path::new("t.toml")).unwrap())
        .await
        .unwrap();
    assert_eq!(seen_tcp(ft).await, "127.0.0.1");
    server.shutdown().await;
}
