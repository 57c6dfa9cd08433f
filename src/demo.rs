//! `switchyard demo`: three echo backends in-process and the real daemon in
//! front of them, from a generated config, so load balancing can be seen in
//! one command.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

use crate::config::{Config, ConfigError};

/// A backend that answers each line (TCP) or datagram (UDP) with
/// `<name>: <line>`, on one port for both protocols.
pub async fn echo_backend(name: &str) -> io::Result<SocketAddr> {
    // Retry a few times: the UDP port matching the TCP one may be taken.
    for _ in 0..16 {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let Ok(udp) = UdpSocket::bind(addr).await else {
            continue;
        };
        tokio::spawn(echo_tcp(tcp, name.to_string()));
        tokio::spawn(echo_udp(udp, name.to_string()));
        return Ok(addr);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no port free for both TCP and UDP",
    ))
}

async fn echo_tcp(listener: TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if w.write_all(format!("{name}: {line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

async fn echo_udp(socket: UdpSocket, name: String) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let reply = format!("{name}: {}\n", text.trim_end_matches('\n'));
        if let Err(e) = socket.send_to(reply.as_bytes(), peer).await {
            tracing::debug!(error = %e, "demo backend reply failed");
        }
    }
}

/// A port free for both TCP and UDP on 127.0.0.1, for `--port 0`: the demo
/// promises one port for both protocols.
pub fn free_port() -> io::Result<u16> {
    for _ in 0..16 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no port free for both TCP and UDP",
    ))
}

/// The demo backends' names, in order.
const NAMES: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];

/// The demo's configuration: TCP and UDP listeners on `port` in front of
/// `backends`, weighted 1, 2, 3, … in order and named `alpha`, `beta`,
/// `gamma`, ….
pub fn config(port: u16, admin_port: u16, backends: &[SocketAddr]) -> Result<Config, ConfigError> {
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let name = NAMES
                .get(i)
                .map_or_else(|| format!("echo-{i}"), |n| n.to_string());
            format!(
                "  {{ addr = \"{a}\", name = \"{name}\", weight = {} }},",
                i + 1
            )
        })
        .collect();
    let text = format!(
        r#"
[admin]
bind = "127.0.0.1:{admin_port}"

[[listeners]]
name = "demo-tcp"
protocol = "tcp"
bind = "127.0.0.1:{port}"
pool = "echo"

[[listeners]]
name = "demo-udp"
protocol = "udp"
bind = "127.0.0.1:{port}"
pool = "echo"
idle_timeout = "10s"

[pools.echo]
strategy = "weighted"
backends = [
{}
]

[pools.echo.health]
kind = "tcp"
interval = "1s"
"#,
        list.join("\n")
    );
    Config::parse(&text, Path::new("<demo>"))
}
