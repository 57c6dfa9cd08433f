//! DNS discovery against a real DNS server (dnsmasq, answers changed by
//! rewriting its hosts file and sending SIGHUP): every A record is a
//! backend, SRV ports and weights are used, a change is followed within
//! `refresh`, an empty answer, an error answer and silence keep the last
//! set and are counted, and a resolver that never answers stalls no
//! connection of another listener.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{free_addr, Proc};
use common::{installed, value, Backend};
use switchyard::Server;

/// A real dnsmasq answering for `svc.test` from a hosts file.
struct Dnsmasq {
    proc: Option<Proc>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Dnsmasq {
    /// One to start, on an address of its own, with its files in `dir`.
    fn new(dir: &Path) -> Dnsmasq {
        Dnsmasq {
            proc: None,
            addr: free_addr(),
            dir: dir.to_path_buf(),
        }
    }

    fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// Starts it; `args` add to the common ones.
    async fn start(&mut self, args: &[String]) {
        let log = self.dir.join("dnsmasq.log");
        let mut cmd = Command::new("dnsmasq");
        cmd.args(["-k", "--conf-file=/dev/null", "--bind-interfaces"])
            .arg(format!("--listen-address={}", self.addr.ip()))
            .args([
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--log-facility=-",
            ])
            .arg(format!("--port={}", self.addr.port()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .args(args);
        self.proc = Some(Proc::spawn(&mut cmd, &log));
        // Ready when it answers: a query for a name it has.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if query(self.addr).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Re-reads the hosts file, as an operator's `kill -HUP` does.
    fn reload(&self) {
        let pid = self.proc.as_ref().unwrap().0.id() as i32;
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }

    fn stop(&mut self) {
        self.proc = None;
    }
}

/// Whether anything answers a DNS query at `addr`.
async fn query(addr: SocketAddr) -> bool {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A query for `ready.svc.test`, type A.
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready", "svc", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let _ = s.send_to(&q, addr).await;
    let mut buf = [0u8; 512];
    tokio::time::timeout(Duration::from_millis(200), s.recv(&mut buf))
        .await
        .is_ok()
}

fn members(server: &Server, pool: &str) -> BTreeSet<(SocketAddr, u32)> {
    server.view().pools[pool]
        .snapshot()
        .members
        .iter()
        .map(|m| (m.backend.addr.inet().unwrap(), m.weight.get()))
        .collect()
}

async fn converge(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn write_hosts(path: &Path, lines: &[(&str, &str)]) {
    let text: String = lines
        .iter()
        .map(|(ip, name)| format!("{ip} {name}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_records_become_backends_and_follow_changes() {
    if !installed("dnsmasq", "dnsmasq-base") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Three backends on one port of three loopback addresses, for A records;
    // two on ports of their own, for SRV.
    // The kernel picks the port on the first address; nothing else binds
    // the other two.
    let _b21 = Backend::start_at("b21", SocketAddr::from(([127, 0, 0, 21], 0))).await;
    let port = _b21.addr.port();
    let at = |last: u8| SocketAddr::from(([127, 0, 0, last], port));
    let (_b22, _b23) = (
        Backend::start_at("b22", at(22)).await,
        Backend::start_at("b23", at(23)).await,
    );
    let (s1, s2) = (Backend::start("s1").await, Backend::start("s2").await);
    let refuser_addr = free_addr();
    let mut dns = Dnsmasq::new(dir.path());
    let mut lines = vec![
        ("127.0.0.1", "ready.svc.test"),
        ("127.0.0.21", "api.svc.test"),
        ("127.0.0.22", "api.svc.test"),
        ("127.0.0.1", "s1.svc.test"),
        ("127.0.0.1", "s2.svc.test"),
    ];
    write_hosts(&dns.hosts(), &lines);
    let serving = vec![
        format!("--addn-hosts={}", dns.hosts().display()),
        "--local=/svc.test/".into(),
        format!(
            "--srv-host=_web._tcp.svc.test,s1.svc.test,{},0,10",
            s1.addr.port()
        ),
        format!(
            "--srv-host=_web._tcp.svc.test,s2.svc.test,{},0,30",
            s2.addr.port()
        ),
        // A lower priority's record is not used while the best one answers.
        format!("--srv-host=_web._tcp.svc.test,s1.svc.test,1,5,10"),
    ];
    dns.start(&serving).await;
    let resolver = dns.addr.to_string();
    let server = common::start(&format!(
        "state_dir = \"{}\"\n\
         [[listeners]]\nname = \"api\"\nbind = \"127.0.0.1:0\"\npool = \"api\"\n\
         [pools.api.discovery]\nkind = \"dns\"\nname = \"api.svc.test\"\nport = {port}\nresolver = \"{resolver}\"\nrefresh = \"1s\"\n\
         [pools.srv]\nstrategy = \"weighted\"\n\
         [pools.srv.discovery]\nkind = \"dns_srv\"\nname = \"_web._tcp.svc.test\"\nresolver = \"{resolver}\"\nrefresh = \"1s\"\n",
        dir.path().join("state").display()
    ))
    .await;
    converge("the first answers", Duration::from_secs(5), || {
        members(&server, "api").len() == 2 && members(&server, "srv").len() == 2
    })
    .await;
    assert_eq!(
        members(&server, "api"),
        BTreeSet::from([(at(21), 1), (at(22), 1)])
    );
    assert_eq!(
        members(&server, "srv"),
        BTreeSet::from([(s1.addr, 10), (s2.addr, 30)])
    );
    let front = server.local_addr("api").unwrap();
    let seen: BTreeSet<String> = [common::ask(front).await, common::ask(front).await].into();
    assert_eq!(seen, BTreeSet::from(["b21".to_string(), "b22".to_string()]));

    // A change of records is followed within `refresh` (1s), plus the
    // lookup itself.
    lines.retain(|(ip, _)| *ip != "127.0.0.21");
    lines.push(("127.0.0.23", "api.svc.test"));
    write_hosts(&dns.hosts(), &lines);
    dns.reload();
    let took = converge("a changed record", Duration::from_millis(2500), || {
        members(&server, "api") == BTreeSet::from([(at(22), 1), (at(23), 1)])
    })
    .await;
    eprintln!("a DNS change followed in {took:?} (refresh 1s)");

    let count = |result: &str| {
        value(
            &server,
            &format!("switchyard_discovery_updates_total{{pool=\"api\",result=\"{result}\"}}"),
        )
    };
    let kept = BTreeSet::from([(at(22), 1), (at(23), 1)]);
    // The name disappears (NXDOMAIN): without allow_empty, the set stays.
    lines.retain(|(_, name)| *name != "api.svc.test");
    write_hosts(&dns.hosts(), &lines);
    dns.reload();
    converge("an empty answer", Duration::from_secs(5), || {
        count("empty") >= 1.0
    })
    .await;
    assert_eq!(members(&server, "api"), kept);

    // An error answer (dnsmasq forwarding to a server that refuses): kept.
    let mut refuser = Dnsmasq {
        proc: None,
        addr: refuser_addr,
        dir: dir.path().join("refuser"),
    };
    std::fs::create_dir_all(&refuser.dir).unwrap();
    write_hosts(&refuser.hosts(), &[("127.0.0.1", "ready.svc.test")]);
    refuser
        .start(&[format!("--addn-hosts={}", refuser.hosts().display())])
        .await;
    dns.stop();
    dns.start(&[
        format!("--addn-hosts={}", dns.hosts().display()),
        format!(
            "--server=/svc.test/{}#{}",
            refuser_addr.ip(),
            refuser_addr.port()
        ),
    ])
    .await;
    let errors = count("error");
    converge("an error answer", Duration::from_secs(5), || {
        count("error") > errors
    })
    .await;
    assert_eq!(members(&server, "api"), kept);

    // No server at all (timeouts): kept, and traffic flows.
    dns.stop();
    let errors = count("error");
    converge("a silent server", Duration::from_secs(8), || {
        count("error") > errors
    })
    .await;
    assert_eq!(members(&server, "api"), kept);
    assert!(["b22", "b23"].contains(&common::ask(front).await.as_str()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_never_answers_stalls_no_other_connection() {
    // Needs no tool: the resolver is a socket that swallows queries.
    let hole = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let fast = Backend::start("fast").await;
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(&format!(
        "state_dir = \"{}\"\n\
         [[listeners]]\nname = \"fast\"\nbind = \"127.0.0.1:0\"\npool = \"fast\"\n\
         [pools.fast]\nbackends = [{{ addr = \"{}\" }}]\n\
         [pools.slow.discovery]\nkind = \"dns\"\nname = \"slow.svc.test\"\nport = 80\nresolver = \"{hole_addr}\"\nrefresh = \"1s\"\n",
        dir.path().display(),
        fast.addr
    ))
    .await;
    let front = server.local_addr("fast").unwrap();
    // While lookups hang, every connection of the other listener is served
    // at once.
    let mut buf = [0u8; 512];
    let mut worst = Duration::ZERO;
    let mut queries = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        assert_eq!(common::ask(front).await, "fast");
        worst = worst.max(t.elapsed());
        while hole.try_recv(&mut buf).is_ok() {
            queries += 1;
        }
    }
    eprintln!("slowest connection while lookups hung: {worst:?}; {queries} queries swallowed");
    assert!(queries >= 1, "no lookup was in flight");
    // Lookups hang for seconds: a connection that waited on one would show it.
    assert!(
        worst < Duration::from_millis(500),
        "a connection waited {worst:?}"
    );
    let errors = "switchyard_discovery_updates_total{pool=\"slow\",result=\"error\"}";
    converge("a timed-out lookup counted", Duration::from_secs(8), || {
        value(&server, errors) >= 1.0
    })
    .await;
    assert!(members(&server, "slow").is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_s_dns_interface_at_thousands_of_instances() {
    if !installed("dnsmasq", "dnsmasq-base") {
        return;
    }
    // Consul's DNS interface as its users point a resolver at it: SRV
    // records for `NAME.service.consul` (only passing instances), each
    // target a node name with its A record. dnsmasq plays Consul. 1,400
    // instances fit in one answer over TCP; 2,000 cannot (a DNS message
    // holds at most 65,535 bytes, and each record with its uncompressed
    // target takes about 45), and are refused rather than taken in part;
    // 2,000 addresses as A records fit.
    let dir = tempfile::tempdir().unwrap();
    let mut dns = Dnsmasq::new(dir.path());
    let ip = |i: usize| format!("127.62.{}.{}", i / 250, 1 + i % 250);
    let mut hosts = vec![("127.0.0.1".to_string(), "ready.svc.test".to_string())];
    let mut conf = String::new();
    for i in 0..2000 {
        let node = format!("node-{i}.node.dc1.consul");
        hosts.push((ip(i), node.clone()));
        hosts.push((ip(i), "nodes.service.consul".into()));
        conf.push_str(&format!(
            "srv-host=big.service.consul,{node},{},1,1\n",
            8000 + i % 7
        ));
        if i < 1400 {
            conf.push_str(&format!(
                "srv-host=web.service.consul,{node},{},1,1\n",
                8000 + i % 7
            ));
        }
    }
    let lines: Vec<(&str, &str)> = hosts
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_hosts(&dns.hosts(), &lines);
    std::fs::write(dir.path().join("consul.conf"), conf).unwrap();
    dns.start(&[
        format!("--addn-hosts={}", dns.hosts().display()),
        format!("--conf-file={}", dir.path().join("consul.conf").display()),
        "--local=/consul/".into(),
        "--local=/svc.test/".into(),
    ])
    .await;
    let pool = |name: &str, d: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\npool = \"{name}\"\n\
             [pools.{name}]\n[pools.{name}.discovery]\nresolver = \"{}\"\n{d}\n",
            dns.addr
        )
    };
    let t = Instant::now();
    let server = common::start(&format!(
        "state_dir = \"{}\"\n{}{}{}",
        dir.path().join("state").display(),
        pool("web", "kind = \"dns_srv\"\nname = \"web.service.consul\""),
        pool("big", "kind = \"dns_srv\"\nname = \"big.service.consul\""),
        pool(
            "nodes",
            "kind = \"dns\"\nname = \"nodes.service.consul\"\nport = 8000"
        ),
    ))
    .await;
    let took = converge("1,400 SRV targets", Duration::from_secs(10), || {
        members(&server, "web").len() == 1400
    })
    .await;
    eprintln!("1,400 SRV targets served {took:?} after start");
    let m = members(&server, "web");
    assert!(m.contains(&(format!("{}:8000", ip(0)).parse().unwrap(), 1)));
    assert!(m.contains(&(
        format!("{}:{}", ip(1399), 8000 + 1399 % 7).parse().unwrap(),
        1
    )));
    converge("2,000 A records", Duration::from_secs(10), || {
        members(&server, "nodes").len() == 2000
    })
    .await;
    eprintln!("and 2,000 A records {:?} after start", t.elapsed());
    let error = "switchyard_discovery_updates_total{pool=\"big\",result=\"error\"}";
    converge("2,000 SRV targets refused", Duration::from_secs(10), || {
        common::value(&server, error) >= 1.0
    })
    .await;
    assert!(
        members(&server, "big").is_empty(),
        "no part of a cut answer is served"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_weights_allow_empty_and_state_dir() {
    if !installed("dnsmasq", "dnsmasq-base") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (Backend::start("s1").await, Backend::start("s2").await);
    let mut dns = Dnsmasq::new(dir.path());
    let mut lines = vec![
        ("127.0.0.1", "ready.svc.test"),
        ("127.0.0.1", "s1.svc.test"),
        ("127.0.0.1", "s2.svc.test"),
        ("127.0.0.31", "gone.svc.test"),
    ];
    write_hosts(&dns.hosts(), &lines);
    let args = vec![
        format!("--addn-hosts={}", dns.hosts().display()),
        "--local=/svc.test/".into(),
        // Every local answer lives one second: the TTL, not `refresh`
        // (60s below), says when to ask again.
        "--local-ttl=1".into(),
        // SRV weights outside switchyard's 1..=256: 0 counts as 1, 1000 as 256.
        format!(
            "--srv-host=_web._tcp.svc.test,s1.svc.test,{},0,0",
            s1.addr.port()
        ),
        format!(
            "--srv-host=_web._tcp.svc.test,s2.svc.test,{},0,1000",
            s2.addr.port()
        ),
    ];
    dns.start(&args).await;
    let state = dir.path().join("state");
    let resolver = dns.addr;
    let config = |state: &Path| {
        format!(
            "state_dir = \"{}\"\n\
             [[listeners]]\nname = \"srv\"\nbind = \"127.0.0.1:0\"\npool = \"srv\"\n\
             [pools.srv]\nstrategy = \"weighted\"\n\
             [pools.srv.discovery]\nkind = \"dns_srv\"\nname = \"_web._tcp.svc.test\"\nresolver = \"{}\"\nrefresh = \"60s\"\n\
             [pools.gone.discovery]\nkind = \"dns\"\nname = \"gone.svc.test\"\nport = 9\nresolver = \"{}\"\nrefresh = \"60s\"\nallow_empty = true\n",
            state.display(),
            resolver,
            resolver
        )
    };
    let server = common::start(&config(&state)).await;
    converge("the first answers", Duration::from_secs(5), || {
        members(&server, "srv").len() == 2 && members(&server, "gone").len() == 1
    })
    .await;
    assert_eq!(
        members(&server, "srv"),
        BTreeSet::from([(s1.addr, 1), (s2.addr, 256)])
    );
    let metric = |pool: &str, name: &str| {
        value(
            &server,
            &format!("switchyard_discovery_{name}{{pool=\"{pool}\"}}"),
        )
    };
    assert_eq!(metric("srv", "backends"), 2.0);
    assert!(metric("srv", "last_success_timestamp_seconds") > 1.7e9);
    assert!(
        value(
            &server,
            "switchyard_discovery_updates_total{pool=\"srv\",result=\"changed\"}"
        ) >= 1.0
    );

    // A change is asked for at the TTL (1s), long before `refresh`.
    lines.push(("127.0.0.32", "gone.svc.test"));
    write_hosts(&dns.hosts(), &lines);
    dns.reload();
    let took = converge("a change at the TTL", Duration::from_secs(4), || {
        members(&server, "gone").len() == 2
    })
    .await;
    eprintln!("a change seen {took:?} after it, with a 1s TTL and refresh = 60s");

    // With allow_empty, a name that goes away empties its pool.
    lines.retain(|(_, name)| *name != "gone.svc.test");
    write_hosts(&dns.hosts(), &lines);
    dns.reload();
    converge("an allowed empty answer", Duration::from_secs(4), || {
        members(&server, "gone").is_empty()
    })
    .await;
    assert_eq!(metric("gone", "backends"), 0.0);

    // A restart while the name server is down serves the kept set.
    server.shutdown().await;
    dns.stop();
    let again = common::start(&config(&state)).await;
    assert_eq!(
        members(&again, "srv"),
        BTreeSet::from([(s1.addr, 1), (s2.addr, 256)])
    );
    let front = again.local_addr("srv").unwrap();
    assert!(["s1", "s2"].contains(&common::ask(front).await.as_str()));
    again.shutdown().await;

    // A state_dir that cannot be written (a file stands where the folder
    // would be) is said once; discovery runs on.
    dns.start(&args).await;
    let not_a_dir = dir.path().join("not-a-dir");
    std::fs::write(&not_a_dir, "").unwrap();
    let third = common::start(&config(&not_a_dir)).await;
    converge(
        "answers without a state_dir",
        Duration::from_secs(5),
        || members(&third, "srv").len() == 2,
    )
    .await;
    third.shutdown().await;
}
