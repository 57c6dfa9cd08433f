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
    /// With TLS on its client port: the CA, its certificate, and a client
    /// certificate it demands.
    pub tls: Option<Tls>,
}

/// An etcd's TLS files.
#[derive(Clone)]
pub struct Tls {
    pub ca: super::pki::Pair,
    pub server: super::pki::Pair,
    pub client: super::pki::Pair,
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
            tls: None,
        };
        e.restart().await;
        e
    }

    /// Starts one whose client port speaks TLS only and demands a client
    /// certificate signed by its CA (`--client-cert-auth`).
    pub async fn start_tls(dir: &Path) -> Etcd {
        std::fs::create_dir_all(dir).expect("etcd's directory");
        let client = free_addr();
        let ca = super::pki::ca(dir, "etcd-ca");
        let server = super::pki::leaf(dir, &ca, &client.ip().to_string(), "etcd-server", 2);
        let me = super::pki::leaf(dir, &ca, "switchyard", "etcd-client", 2);
        let mut e = Etcd {
            proc: None,
            client,
            peer: free_addr(),
            dir: dir.to_path_buf(),
            tls: Some(Tls {
                ca,
                server,
                client: me,
            }),
        };
        e.restart().await;
        e
    }

    /// Starts it again (after `kill`) on the same ports and data.
    pub async fn restart(&mut self) {
        let (c, p) = (self.endpoint(), format!("http://{}", self.peer));
        let log = self.dir.join("etcd.log");
        let mut cmd = Command::new("etcd");
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server.cert)
                .arg("--key-file")
                .arg(&t.server.key)
                .arg("--trusted-ca-file")
                .arg(&t.ca.cert)
                .arg("--client-cert-auth");
        }
        let mut child = Proc::spawn(
            cmd.args(["--name", "t", "--data-dir"])
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

    /// `http://host:port` (`https://` with TLS), as a config names it.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// Runs `etcdctl` with `args`; its output.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = tokio::process::Command::new("etcdctl");
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca.cert)
                .arg("--cert")
                .arg(&t.client.cert)
                .arg("--key")
                .arg(&t.client.key);
        }
        let out = cmd
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
