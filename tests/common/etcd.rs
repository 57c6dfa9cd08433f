//! A real etcd (Debian's `etcd-server`) on free loopback ports with a
//! temporary data directory, and `etcdctl` (`etcd-client`) to write to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{free_addr, wait_listening, Proc};

/// A running etcd; killed when dropped.
pub struct Etcd {
    pub proc: Option<Proc>,
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
}

impl Etcd {
    /// Starts a one-member cluster with its data under `dir`.
    pub async fn start(dir: &Path) -> Etcd {
        std::fs::create_dir_all(dir).expect("etcd's directory");
        let mut e = Etcd {
            proc: None,
            client: free_addr(),
            peer: free_addr(),
            dir: dir.to_path_buf(),
        };
        e.restart().await;
        e
    }

    /// Starts it again (after `kill`) on the same ports and data.
    pub async fn restart(&mut self) {
        let (c, p) = (
            format!("http://{}", self.client),
            format!("http://{}", self.peer),
        );
        let log = self.dir.join("etcd.log");
        let mut child = Proc::spawn(
            Command::new("etcd")
                .args(["--name", "t", "--data-dir"])
                .arg(self.dir.join("data"))
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args([
                    "--listen-peer-urls",
                    &p,
                    "--initial-advertise-peer-urls",
                    &p,
                ])
                .args(["--initial-cluster", &format!("t={p}")]),
            &log,
        );
        wait_listening(self.client, &mut child, &log, Duration::from_secs(20)).await;
        self.proc = Some(child);
    }

    /// Stops it (as a crash would).
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// `http://host:port`, as a config names it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Runs `etcdctl` with `args`; its output.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint()])
            .args(args)
            .output()
            .await
            .expect("etcdctl runs");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
