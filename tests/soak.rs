//! The soak: steady TCP and UDP load on the real binary while everything
//! churns at once (reloads, binary upgrades, backends killed and brought
//! back, discovery changes through a real etcd, admin floods, clients that
//! reset and clients that stall). Every client failure must be one the
//! scenario causes; each process's memory, descriptors and tasks must come
//! back to their level after its warm-up; its counters must agree with what
//! the clients did.
//!
//! It runs for `SWITCHYARD_SOAK_SECS` seconds (90 by default), with a binary
//! upgrade every fifth of the run, so each process lives through several
//! churn cycles.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{http, Daemon, Successors};
use common::etcd::Etcd;
use common::{installed, metric, Backend};

/// How long one quiet point may wait for the load to settle.
const SETTLE: Duration = Duration::from_secs(20);

/// The daemon's file: `state` is the test's own directory for discovered
/// sets (the default, /var/lib/switchyard, is shared with anything else
/// running on the machine).
fn config(
    etcd: &str,
    state: &std::path::Path,
    backends: &[SocketAddr],
    udp: &[SocketAddr],
    weight_c: u32,
) -> String {
    format!(
        "shutdown_grace = \"20s\"\nstate_dir = \"{}\"\n\
         [admin]\nbind = \"127.0.0.1:0\"\nheader_timeout = \"1s\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [[listeners]]\nname = \"disc\"\nbind = \"127.0.0.1:0\"\npool = \"d\"\naccess_log = false\n\
         [[listeners]]\nname = \"dns\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"u\"\nidle_timeout = \"1s\"\naccess_log = false\n\
         [pools.p]\nstrategy = \"weighted\"\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{}\", weight = {weight_c} }}]\n\
         [pools.p.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 1\n\
         [pools.u]\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n\
         [pools.d]\nstrategy = \"round_robin\"\n\
         [pools.d.discovery]\nkind = \"etcd\"\nendpoints = [\"{etcd}\"]\nprefix = \"/soak/d/\"\n",
        state.display(),
        backends[0],
        backends[1],
        backends[2],
        udp[0],
        udp[1]
    )
}

/// What happened to the clients, by kind; every failure is kept with its
/// time, to be classified at the end.
#[derive(Default)]
struct Seen {
    /// Connections the clients opened, per listener (every kind of client).
    opened: HashMap<&'static str, AtomicUsize>,
    answered: AtomicUsize,
    resets: AtomicUsize,
    stalls: AtomicUsize,
    udp_sent: AtomicUsize,
    udp_answered: AtomicUsize,
    failures: Mutex<Vec<(Instant, &'static str, String)>>,
    /// The longest any TCP client waited for its answer, in microseconds.
    longest: AtomicU64,
}

impl Seen {
    fn new() -> Seen {
        let mut s = Seen::default();
        for l in ["front", "disc"] {
            s.opened.insert(l, AtomicUsize::new(0));
        }
        s
    }

    fn opened(&self, listener: &str) -> usize {
        self.opened[listener].load(Ordering::SeqCst)
    }

    fn fail(&self, what: &'static str, e: String) {
        self.failures
            .lock()
            .unwrap()
            .push((Instant::now(), what, e));
    }
}

/// The load's gate: the churn pauses it at quiet points and waits until no
/// client is mid-operation.
#[derive(Default)]
struct Gate {
    paused: AtomicBool,
    busy: AtomicUsize,
    stop: AtomicBool,
}

impl Gate {
    /// Waits while paused; false once the run is over.
    fn enter(&self) -> bool {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            if !self.paused.load(Ordering::SeqCst) {
                self.busy.fetch_add(1, Ordering::SeqCst);
                if !self.paused.load(Ordering::SeqCst) {
                    return true;
                }
                self.busy.fetch_sub(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn leave(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One line on a new connection: the backend's name, or why not.
fn ask(front: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&front, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"who\n").map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    line.split_once(':')
        .map(|(n, _)| n.to_string())
        .ok_or_else(|| format!("closed without a reply ({line:?})"))
}

/// A client thread: `turn` again and again, each through the gate, then
/// `pause`, until `limit` or the end of the run.
fn client(
    gate: &Arc<Gate>,
    limit: Duration,
    pause: Duration,
    mut turn: impl FnMut() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let gate = gate.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < limit && gate.enter() {
            turn();
            gate.leave();
            std::thread::sleep(pause);
        }
    })
}

fn spawn_load(
    front: SocketAddr,
    disc: SocketAddr,
    dns: SocketAddr,
    seen: &Arc<Seen>,
    gate: &Arc<Gate>,
    limit: Duration,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    // Asking clients: three on the static pool, one on the discovered one.
    for (listener, addr) in [
        ("front", front),
        ("front", front),
        ("front", front),
        ("disc", disc),
    ] {
        let seen = seen.clone();
        threads.push(client(gate, limit, Duration::from_millis(2), move || {
            let asked = Instant::now();
            let r = ask(addr);
            seen.longest
                .fetch_max(asked.elapsed().as_micros() as u64, Ordering::SeqCst);
            match r {
                Ok(_) => {
                    seen.opened[listener].fetch_add(1, Ordering::SeqCst);
                    seen.answered.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    // A connect that ends in a reset was accepted: the
                    // handshake completed and the daemon's end was reset
                    // (its backend killed) before this thread read the
                    // outcome. A connect the daemon never took is refused
                    // or times out.
                    if !e.starts_with("connect:") || e.contains("reset by peer") {
                        seen.opened[listener].fetch_add(1, Ordering::SeqCst);
                    }
                    seen.fail(listener, e);
                }
            }
        }));
    }
    // A client that resets: half a line, then RST.
    let s2 = seen.clone();
    threads.push(client(
        gate,
        limit,
        Duration::from_millis(20),
        move || match TcpStream::connect(front) {
            Ok(mut s) => {
                s2.opened["front"].fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"wh");
                common::reset(s);
                s2.resets.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => s2.fail("reset", format!("connect: {e}")),
        },
    ));
    // A client that stalls: connects, says nothing for half a second, goes.
    let s3 = seen.clone();
    threads.push(client(
        gate,
        limit,
        Duration::ZERO,
        move || match TcpStream::connect(front) {
            Ok(s) => {
                s3.opened["front"].fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(500));
                drop(s);
                s3.stalls.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => s3.fail("stall", format!("connect: {e}")),
        },
    ));
    // UDP: queries as a DNS client sends them, again after a second unanswered
    // (three tries), a late answer to an earlier query skipped.
    let s4 = seen.clone();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut i = 0u64;
    threads.push(client(gate, limit, Duration::from_millis(3), move || {
        i += 1;
        let q = format!("q{i}");
        let answered = common::query_with_retries(&udp, dns, &q, || {
            s4.udp_sent.fetch_add(1, Ordering::SeqCst);
        });
        if answered {
            s4.udp_answered.fetch_add(1, Ordering::SeqCst);
        } else {
            s4.fail("dns", format!("{q} unanswered in three tries"));
        }
    }));
    threads
}

/// A process's resources at a quiet point.
#[derive(Debug, Clone, Copy)]
struct Sample {
    cycle: usize,
    /// Resident memory of its own (heap, stacks) and of files it maps (the
    /// binary's pages, faulted in as code paths first run).
    anon_kib: u64,
    file_kib: u64,
    /// What the allocator has handed out and not had back.
    heap_kib: u64,
    fds: usize,
    tasks: f64,
    /// Connections counted per listener, and UDP datagrams from clients.
    front: f64,
    disc: f64,
    datagrams_in: f64,
    no_backend: f64,
    /// What the clients had done by then.
    opened_front: usize,
    opened_disc: usize,
    udp_sent: usize,
    udp_answered: usize,
}

/// One `/proc/PID/status` field in KiB (`RssAnon`, `RssFile`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn scrape(admin: SocketAddr) -> String {
    http(admin, "GET", "/metrics", &[], "").1
}

fn m(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connections waiting in the accept queues of the listening sockets bound
/// to `addrs`: a listening socket's receive queue in /proc/net/tcp is its
/// accept backlog.
fn accept_queued(addrs: &[SocketAddr]) -> usize {
    common::tcp_sockets(false)
        .iter()
        .filter(|s| s.state == "0A" && addrs.contains(&s.local))
        .map(|s| s.rx_queue)
        .sum()
}

/// Pauses the load, waits until the daemon has accepted every connection
/// the clients made and holds none of them or any session, samples process
/// `pid`, and lets the load go on.
fn quiet_sample(
    pid: u32,
    (admin, listeners): (SocketAddr, &[SocketAddr]),
    gate: &Gate,
    seen: &Seen,
    cycle: usize,
) -> Sample {
    gate.paused.store(true, Ordering::SeqCst);
    wait_until("the clients to pause", SETTLE, || {
        gate.busy.load(Ordering::SeqCst) == 0
    });
    // A client counts a connection once its handshake is done, which may be
    // before the daemon accepts it.
    wait_until("the accept queues to empty", SETTLE, || {
        accept_queued(listeners) == 0
    });
    let mut text = String::new();
    wait_until("the daemon to settle", SETTLE, || {
        text = scrape(admin);
        ["front", "disc"].iter().all(|l| {
            m(
                &text,
                &format!("switchyard_listener_active_connections{{listener=\"{l}\"}}"),
            ) == 0.0
        }) && m(&text, "switchyard_udp_sessions{listener=\"dns\"}") == 0.0
    });
    // Timers and tasks of what just ended finish within a moment.
    std::thread::sleep(Duration::from_millis(200));
    let text = scrape(admin);
    let s = Sample {
        cycle,
        anon_kib: status_kib(pid, "RssAnon"),
        file_kib: status_kib(pid, "RssFile"),
        heap_kib: (m(&text, "switchyard_heap_in_use_bytes") / 1024.0) as u64,
        fds: fds(pid),
        tasks: m(&text, "switchyard_runtime_alive_tasks{runtime=\"workers\"}")
            + m(&text, "switchyard_runtime_alive_tasks{runtime=\"control\"}"),
        front: m(
            &text,
            "switchyard_listener_connections_total{listener=\"front\"}",
        ),
        disc: m(
            &text,
            "switchyard_listener_connections_total{listener=\"disc\"}",
        ),
        datagrams_in: m(
            &text,
            "switchyard_udp_datagrams_total{direction=\"in\",listener=\"dns\"}",
        ),
        no_backend: m(
            &text,
            "switchyard_listener_no_backend_total{listener=\"front\"}",
        ) + m(
            &text,
            "switchyard_listener_no_backend_total{listener=\"disc\"}",
        ),
        opened_front: seen.opened("front"),
        opened_disc: seen.opened("disc"),
        udp_sent: seen.udp_sent.load(Ordering::SeqCst),
        udp_answered: seen.udp_answered.load(Ordering::SeqCst),
    };
    gate.paused.store(false, Ordering::SeqCst);
    s
}

/// An admin flood: 80 connections that say nothing and 20 that send a slow
/// body, held a second and a half; meanwhile `/healthz` must answer, fast.
fn admin_flood(admin: SocketAddr) -> Duration {
    let mut held = Vec::new();
    for i in 0..100 {
        let Ok(mut s) = TcpStream::connect(admin) else {
            continue;
        };
        if i % 5 == 0 {
            let _ = s.write_all(
                b"PUT /api/v1/pools/p/backends/x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
            );
        }
        held.push(s);
    }
    let mut longest = Duration::ZERO;
    for _ in 0..5 {
        let asked = Instant::now();
        let (status, _) = http(admin, "GET", "/healthz", &[], "");
        assert_eq!(status, 200, "/healthz under an admin flood");
        longest = longest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(held);
    longest
}

/// A kill: from the moment a backend stopped to a moment after it was
/// marked down, the only clients that may fail are those its end cut.
struct Window {
    from: Instant,
    to: Instant,
}

#[test]
fn everything_churns_at_once_and_nothing_leaks() {
    if !installed("etcd", "etcd-server") || !installed("etcdctl", "etcd-client") {
        return;
    }
    let secs: u64 = std::env::var("SWITCHYARD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    // The successors of upgraded processes come to us when their parents
    // exit, so we can reap them.
    // SAFETY: prctl on this process only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let etcd = rt.block_on(Etcd::start(&dir.path().join("etcd")));
    let mut tcp: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|n| rt.block_on(Backend::start(n)))
        .collect();
    let tcp_addrs: Vec<SocketAddr> = tcp.iter().map(|b| b.addr).collect();
    let udp: Vec<Backend> = ["u1", "u2"]
        .iter()
        .map(|n| rt.block_on(Backend::start(n)))
        .collect();
    let udp_addrs: Vec<SocketAddr> = udp.iter().map(|b| b.addr).collect();
    let (d1, d2) = (
        rt.block_on(Backend::start("d1")),
        rt.block_on(Backend::start("d2")),
    );
    rt.block_on(etcd.ctl(&["put", "/soak/d/d1", &d1.addr.to_string()]));
    rt.block_on(etcd.ctl(&["put", "/soak/d/d2", &d2.addr.to_string()]));

    let ep = etcd.endpoint();
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(&config(&ep, &state, &tcp_addrs, &udp_addrs, 1), &[], &[]);
    let ls = daemon.listeners();
    let (front, disc, dns) = (ls["front"], ls["disc"], ls["dns"]);
    let admin = daemon.admin();

    let seen = Arc::new(Seen::new());
    let gate = Arc::new(Gate::default());
    let run = Duration::from_secs(secs);
    let load = spawn_load(
        front,
        disc,
        dns,
        &seen,
        &gate,
        run + Duration::from_secs(120),
    );

    // Each cycle takes about six seconds; an upgrade starts every fifth of
    // the run (every fifth cycle at least).
    let every = ((secs / 6) / 5).max(5) as usize;
    let started = Instant::now();
    let mut pids = vec![daemon.child.id()];
    let mut successors = Successors(Vec::new());
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new()];
    let mut windows: Vec<Window> = Vec::new();
    let mut upgrades = 0;
    let mut reloads = 0;
    let mut flood_longest = Duration::ZERO;
    let mut cycle = 0;
    while started.elapsed() < run || cycle <= every + 1 {
        let pid = *pids.last().unwrap();
        // A binary upgrade.
        if cycle > 0 && cycle % every == 0 {
            upgrades += 1;
            let successor = daemon.upgrade(pid, upgrades);
            pids.push(successor);
            successors.0.push(successor);
            samples.push(Vec::new());
        }
        // A reload that changes a weight.
        std::fs::write(
            daemon.path(),
            config(&ep, &state, &tcp_addrs, &udp_addrs, 1 + (cycle % 3) as u32),
        )
        .unwrap();
        reloads += 1;
        let pid = *pids.last().unwrap();
        let reloaded = |d: &Daemon| d.count_log(|v| v["message"] == "configuration reloaded");
        let before = reloaded(&daemon);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
        wait_until("the reload", Duration::from_secs(10), || {
            reloaded(&daemon) > before
        });
        // A discovery change: d2 leaves or comes back.
        if cycle % 2 == 0 {
            rt.block_on(etcd.ctl(&["del", "/soak/d/d2"]));
        } else {
            rt.block_on(etcd.ctl(&["put", "/soak/d/d2", &d2.addr.to_string()]));
        }
        // A backend killed, marked down by its check, and brought back.
        let k = cycle % tcp.len();
        let addr = tcp_addrs[k];
        let up = format!("switchyard_backend_up{{backend=\"{addr}\",pool=\"p\"}}");
        // The window opens before the kill: the aborted backend's resets can
        // reach a client before this thread runs again.
        let from = Instant::now();
        tcp[k].stop();
        wait_until(
            "the killed backend to be marked down",
            Duration::from_secs(10),
            || metric(&scrape(admin), &up) == Some(0.0),
        );
        windows.push(Window {
            from,
            to: Instant::now() + Duration::from_millis(100),
        });
        std::thread::sleep(Duration::from_millis(500));
        let name = tcp[k].name.clone();
        tcp[k] = rt.block_on(Backend::start_at(&name, addr));
        wait_until("the backend to come back", Duration::from_secs(10), || {
            metric(&scrape(admin), &up) == Some(1.0)
        });
        // The admin port flooded.
        flood_longest = flood_longest.max(admin_flood(admin));
        // Load alone for a while.
        std::thread::sleep(Duration::from_secs(2));
        samples.last_mut().unwrap().push(quiet_sample(
            pid,
            (admin, &[front, disc]),
            &gate,
            &seen,
            cycle,
        ));
        cycle += 1;
    }
    gate.stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();

    // Every client failure is one a kill caused: an established connection
    // cut when its backend's queue went with it, within the kill's window.
    // A copy: the checks below print the failures again on a mismatch,
    // which must not wait for a lock this function holds.
    let failures = seen.failures.lock().unwrap().clone();
    let mut by_kill = 0;
    for (at, what, e) in failures.iter() {
        let in_window = windows.iter().any(|w| *at >= w.from && *at <= w.to);
        let cut = e.starts_with("closed without a reply")
            || e.contains("reset by peer")
            || e.contains("Broken pipe");
        if !(*what == "front" && in_window && cut) {
            let said: Vec<String> = daemon
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|v| v["level"] != "DEBUG")
                .filter(|v| v["listener"] != "front" && v["pool"] != "p")
                .map(|v| v.to_string())
                .collect();
            panic!(
                "an unexplained client failure on {what}: {e}, {:?} into the run; \
                 the daemon's warnings and errors:\n{}",
                at.duration_since(started),
                said.join("\n")
            );
        }
        by_kill += 1;
    }

    // Each process that lived three cycles or more: its resources at its last
    // quiet point are within 5 % of those after its warm-up;
    // its counters grew by exactly what the clients did in between.
    let mut report = Vec::new();
    for (pid, s) in pids.iter().zip(&samples) {
        if s.len() < 3 {
            continue;
        }
        // Warm-up is the first quarter of a process's life (two cycles at
        // least): its allocator's arenas, buffers and tables grow to the
        // load's size, then stay (over about ten cycles in an hour's run
        // of the release build).
        let warm = (s.len() / 4).max(2).min(s.len() - 1);
        let (first, last) = (s[warm], s[s.len() - 1]);
        let anon: Vec<String> = s.iter().map(|x| x.anon_kib.to_string()).collect();
        let file: Vec<String> = s.iter().map(|x| x.file_kib.to_string()).collect();
        let heap: Vec<String> = s.iter().map(|x| x.heap_kib.to_string()).collect();
        report.push(format!(
            "process {pid}, cycles {}-{}: heap in use {} KiB, RSS of its own {} KiB, of files {} KiB, descriptors {} -> {}, tasks {} -> {}",
            first.cycle,
            last.cycle,
            heap.join(" "),
            anon.join(" "),
            file.join(" "),
            first.fds,
            last.fds,
            first.tasks,
            last.tasks
        ));
        let within = |a: f64, b: f64| b <= a * 1.05 && b >= a * 0.95;
        // Memory of its own is what a leak grows; file pages only show which
        // of the binary's code has run so far. The allocator takes memory in
        // steps (a thread's arena grows its top by up to a mebibyte at a
        // time), so a process only a few cycles old may have taken one step
        // more: a mebibyte of slack beside the 5 %.
        //
        // Its level is its floor: the least of a quarter of its samples. A
        // sample swings by up to 700 KiB from one cycle to the next (a
        // burst's pages not yet given back when it is read), which a leak
        // does not undo: a leak lifts the floor.
        let quarter = (s.len() / 4).max(1);
        let floor = |w: &[Sample]| w.iter().map(|x| x.anon_kib).min().unwrap_or(0);
        let (anon_warm, anon_end) = (
            floor(&s[warm..(warm + quarter).min(s.len())]),
            floor(&s[s.len() - quarter..]),
        );
        assert!(
            anon_end as f64 <= anon_warm as f64 * 1.05 + 1024.0,
            "process {pid}: its own resident memory grew, its floor from {anon_warm} to {anon_end} KiB: {s:#?}"
        );
        // What the daemon holds: a leak shows here first. The history's ring
        // fills for an hour (720 samples of every series, at most 256 KiB
        // for this file's listeners and backends).
        assert!(
            last.heap_kib > 0 && last.heap_kib as f64 <= first.heap_kib as f64 * 1.05 + 256.0,
            "process {pid}: the heap in use grew: {s:#?}"
        );
        assert!(
            within(first.fds as f64, last.fds as f64),
            "process {pid}: descriptors: {s:#?}"
        );
        assert!(
            within(first.tasks, last.tasks),
            "process {pid}: tasks: {s:#?}"
        );
        // Its counters grew by exactly what the clients opened between any
        // two of its quiet points: what it counted less what they opened is
        // the same at each. On a mismatch, the offsets say at which quiet
        // point it changed, and the clients' failures which connections one
        // side saw and the other did not.
        let failures = || format!("{:?}", seen.failures.lock().unwrap());
        for (l, counted, opened) in [
            (
                "front",
                (|x: &Sample| x.front) as fn(&Sample) -> f64,
                (|x: &Sample| x.opened_front) as fn(&Sample) -> usize,
            ),
            ("disc", |x: &Sample| x.disc, |x: &Sample| x.opened_disc),
        ] {
            let offsets: Vec<(usize, f64)> = s[warm..]
                .iter()
                .map(|x| (x.cycle, counted(x) - opened(x) as f64))
                .collect();
            assert!(
                offsets.iter().all(|(_, o)| *o == offsets[0].1),
                "process {pid}: {l}'s connections counted less those opened, by cycle: {offsets:?}; \
                 the clients' failures: {}",
                failures()
            );
        }
        let got = last.datagrams_in - first.datagrams_in;
        let (sent, answered) = (
            (last.udp_sent - first.udp_sent) as f64,
            (last.udp_answered - first.udp_answered) as f64,
        );
        assert!(
            got >= answered && got <= sent,
            "process {pid}: {got} datagrams counted in, {answered} answered, {sent} sent"
        );
        assert_eq!(
            last.no_backend, 0.0,
            "process {pid}: a client found no backend"
        );
    }
    assert!(!report.is_empty(), "no process lived three cycles");
    // Each new process holds what its first did, however many upgrades
    // came before it: nothing an old process held reaches its successor
    // but the sockets it hands over.
    let born: Vec<usize> = samples
        .iter()
        .filter_map(|s| s.first())
        .map(|s| s.fds)
        .collect();
    assert!(
        born.iter().all(|&n| n as f64 <= born[0] as f64 * 1.05),
        "descriptors of each process after its first cycle: {born:?}"
    );
    eprintln!(
        "soak: {:.0} s, {cycle} cycles, {upgrades} upgrades, {reloads} reloads, {} kills; \
         {} answered, {} resets, {} stalls, {} UDP queries answered; \
         {} failures, all cut by a kill; longest TCP answer {:.1} ms; longest /healthz under a flood {:.1} ms\n{}",
        elapsed.as_secs_f64(),
        windows.len(),
        seen.answered.load(Ordering::SeqCst),
        seen.resets.load(Ordering::SeqCst),
        seen.stalls.load(Ordering::SeqCst),
        seen.udp_answered.load(Ordering::SeqCst),
        by_kill,
        seen.longest.load(Ordering::SeqCst) as f64 / 1000.0,
        flood_longest.as_secs_f64() * 1000.0,
        report.join("\n")
    );
    assert!(upgrades >= 1 && seen.answered.load(Ordering::SeqCst) > 1000);

    // The newest process stops cleanly.
    let newest = *pids.last().unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(newest as i32, libc::SIGTERM) }, 0);
    if pids.len() == 1 {
        assert_eq!(daemon.wait_exit(Duration::from_secs(30)), Some(0));
    }
    for &pid in &pids[1..] {
        let mut status = 0;
        // SAFETY: waitpid reaps a process that came to us as the subreaper.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    }
    let _ = daemon.wait_exit(Duration::from_secs(30));
    drop((d1, d2, udp));
}
