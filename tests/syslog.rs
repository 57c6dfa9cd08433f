//! The access log to a real syslog receiver (rsyslog): RFC 5424 lines over
//! UDP and over TCP (octet-counted), with the access log's fields as
//! structured data; and a receiver that stops reading costs dropped,
//! counted lines, never a slower connection.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{http, Daemon};
use common::process::{free_addr, Proc};
use common::{installed, metric, Backend};

/// rsyslog listening on UDP and TCP, writing each message as received.
fn rsyslog(dir: &Path, udp: SocketAddr, tcp: SocketAddr) -> Proc {
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\n\
             module(load=\"imudp\")\nmodule(load=\"imtcp\")\n\
             input(type=\"imudp\" address=\"{}\" port=\"{}\")\n\
             input(type=\"imtcp\" address=\"{}\" port=\"{}\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{d}/received.log\" template=\"raw\")\n",
            udp.ip(),
            udp.port(),
            tcp.ip(),
            tcp.port(),
            d = dir.display()
        ),
    )
    .unwrap();
    Proc::spawn(
        Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslog.pid")),
        &dir.join("rsyslog.out"),
    )
}

fn received(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("received.log")).unwrap_or_default()
}

async fn wait(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(admin: SocketAddr, backend: SocketAddr, log: &str) -> String {
    format!(
        "[admin]\nbind = \"{admin}\"\n[log]\n{log}\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{backend}\", name = \"b1\" }}]\n"
    )
}

fn dropped(admin: SocketAddr, reason: &str) -> f64 {
    let (_, body) = http(admin, "GET", "/metrics", &[], "");
    metric(
        &body,
        &format!("switchyard_log_dropped_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_reach_rsyslog_and_a_stalled_receiver_costs_only_lines() {
    if !installed("rsyslogd", "rsyslog") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (udp, tcp) = (free_addr(), free_addr());
    let _rsyslog = rsyslog(dir.path(), udp, tcp);
    wait("rsyslog to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(tcp).is_ok()
    })
    .await;
    let b = Backend::start("b1").await;
    let admin = free_addr();
    let daemon = Daemon::start(
        &config(
            admin,
            b.addr,
            &format!("access = \"syslog\"\nsyslog = \"udp:{udp}\"\nfacility = \"local3\""),
        ),
        &[],
        &[],
    );
    let front = daemon.listeners()["front"];

    // Over UDP: one RFC 5424 line per connection, local3.info = <158>,
    // the fields as structured data; none on stderr.
    common::ask(front).await;
    wait("a line over UDP", Duration::from_secs(5), || {
        received(dir.path()).contains("listener=\"front\"")
    })
    .await;
    let text = received(dir.path());
    let line = text
        .lines()
        .find(|l| l.contains("listener=\"front\""))
        .unwrap();
    assert!(line.starts_with("<158>1 20"), "{line}");
    assert!(
        line.contains(" switchyard ") && line.contains(" access [access@32473 "),
        "{line}"
    );
    assert!(
        line.contains(&format!("backend=\"{}\"", b.addr)) && line.contains("backend_name=\"b1\""),
        "{line}"
    );
    assert!(line.ends_with("] tcp connection"), "{line}");
    assert_eq!(
        daemon.count_log(|v| v["message"] == "tcp connection"),
        0,
        "access lines left stderr"
    );

    // A reload to TCP: octet-counted frames, each line whole.
    std::fs::write(
        daemon.path(),
        config(
            admin,
            b.addr,
            &format!("access = \"syslog\"\nsyslog = \"tcp:{tcp}\""),
        ),
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_log("reload", Duration::from_secs(5), |v| {
        v["message"] == "configuration reloaded"
    });
    for _ in 0..3 {
        common::ask(front).await;
    }
    // local0.info = <134>.
    wait("lines over TCP", Duration::from_secs(5), || {
        received(dir.path()).matches("<134>1 ").count() >= 3
    })
    .await;

    // A receiver that accepts and never reads: lines are dropped and
    // counted once its buffers and our queue are full; connections go on
    // as fast as before.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    // A small window, so the stall shows after a few hundred lines.
    socket2::SockRef::from(&stalled)
        .set_recv_buffer_size(4096)
        .unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    std::fs::write(
        daemon.path(),
        config(
            admin,
            b.addr,
            &format!("access = \"syslog\"\nsyslog = \"tcp:{stalled_addr}\""),
        ),
    )
    .unwrap();
    daemon.signal("HUP");
    wait("the second reload", Duration::from_secs(5), || {
        daemon.count_log(|v| v["message"] == "configuration reloaded") >= 2
    })
    .await;
    // Never accepted: the kernel completes the handshake into the backlog,
    // and nobody ever reads.
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut n = 0;
    while dropped(admin, "full") < 1.0 {
        assert!(
            n < 20_000 && start.elapsed() < Duration::from_secs(60),
            "nothing dropped after {n} connections"
        );
        for _ in 0..100 {
            let t = Instant::now();
            common::ask(front).await;
            slowest = slowest.max(t.elapsed());
            n += 1;
        }
    }
    eprintln!("dropping after {n} connections; the slowest took {slowest:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "a connection waited on the log: {slowest:?}"
    );
}
