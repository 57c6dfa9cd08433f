//! Real peers the tests start (nginx, HAProxy, openssl, Chromium): a child
//! killed when dropped, a free port for one to listen on, and waiting for it
//! to listen.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
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

/// A port on `ip` that nothing listens on now (the kernel's pick, released
/// for a peer that cannot be given a socket).
pub fn free_port(ip: IpAddr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).expect("bind port 0");
    l.local_addr().unwrap()
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
