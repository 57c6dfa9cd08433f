//! `switchyard demo` as the README tells a newcomer to use it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_demo_balances_tcp_by_weight_and_keeps_udp_sessions() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--port", "0", "--admin-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut front: Option<SocketAddr> = None;
    let mut bare: Option<String> = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim_start().strip_prefix("no nc?") {
            // The line for a machine without nc: bash -c '…'
            let quoted = rest.split('\'').nth(1).expect("a quoted command");
            bare = Some(quoted.to_string());
        }
        if let Some(rest) = line.trim_start().strip_prefix("TCP:") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(words[0], "nc");
            front = Some(format!("{}:{}", words[1], words[2]).parse().unwrap());
        }
        if line.contains("Ctrl-C stops") {
            break;
        }
    }
    let front = front.expect("the demo prints its address");
    // The line printed for a bare machine works as printed.
    let out = Command::new("bash")
        .arg("-c")
        .arg(bare.expect("the demo prints a line that needs no nc"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.ends_with(": hello\n"), "{said:?}");

    let mut counts = std::collections::HashMap::new();
    for i in 0..60 {
        let mut s = TcpStream::connect(front).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("hello {i}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        let (name, echoed) = reply.trim_end().split_once(": ").unwrap();
        assert_eq!(echoed, format!("hello {i}"));
        *counts.entry(name.to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        (counts["alpha"], counts["beta"], counts["gamma"]),
        (10, 20, 30)
    );

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut names = Vec::new();
    for i in 0..3 {
        udp.send_to(format!("ping {i}").as_bytes(), front).unwrap();
        let mut buf = [0u8; 256];
        let n = udp.recv(&mut buf).unwrap();
        let reply = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(reply.ends_with(&format!(": ping {i}\n")), "{reply}");
        names.push(reply.split(':').next().unwrap().to_string());
    }
    assert!(
        names.iter().all(|n| n == &names[0]),
        "one UDP client sticks to one backend: {names:?}"
    );

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
