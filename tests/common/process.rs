//! Real peers the tests start (nginx, HAProxy, openssl, Chromium): a child
//! killed when dropped, a free port for one to listen on, and waiting for it
//! to listen.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd` with its output going to `log` (a file path).
    pub fn spawn(cmd: &mut Command, log: &std::path::Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An address for a peer that cannot be handed a socket (etcd, nginx,
/// openssl, dnsmasq): a loopback address of this call's own, 127.128.0.2 and
/// up (one per call, offset by the process id), with a port the kernel picks
/// free for TCP and UDP alike. The port is released before the peer binds
/// it, but nothing else binds that address, so no other test or outgoing
/// connection can take it in between, as one could a port on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 250 * 256, "too many peer addresses");
    let ip = Ipv4Addr::new(
        127,
        128 + (std::process::id() % 64) as u8,
        (n / 250) as u8,
        2 + (n % 250) as u8,
    );
    for _ in 0..16 {
        let tcp = TcpListener::bind((ip, 0)).expect("bind port 0 on a loopback address");
        let addr = tcp.local_addr().unwrap();
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no port free for TCP and UDP on {ip}");
}

/// Waits until something accepts connections at `addr`, failing after
/// `limit` (or at once when `child` has exited: its log says why).
pub async fn wait_listening(
    addr: SocketAddr,
    child: &mut Proc,
    log: &std::path::Path,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "{status}: the peer exited before listening on {addr}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
