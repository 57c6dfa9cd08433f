//! A real ZooKeeper (Debian's `zookeeper`, on its JRE) on a free loopback
//! port with a temporary data directory, and its own command-line client
//! (`org.apache.zookeeper.ZooKeeperMain`) to write to it as registries'
//! clients do: one-shot scripts, or a session kept open, whose ephemeral
//! nodes live as long as it does.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{free_addr, wait_listening, Proc};

/// Debian's ZooKeeper jar; its manifest names the rest of its class path.
const JAR: &str = "/usr/share/java/zookeeper.jar";

/// Whether ZooKeeper and a JRE are installed; says `skipped:` when not
/// (under CI, fails instead).
pub fn installed() -> bool {
    if !super::installed("java", "default-jre-headless") {
        return false;
    }
    Path::new(JAR).is_file() || super::tools::missing("zookeeper", "zookeeper")
}

/// A running standalone server; killed when dropped.
pub struct ZooKeeper {
    pub proc: Option<Proc>,
    pub addr: SocketAddr,
    dir: PathBuf,
}

fn client_command(addr: SocketAddr, session_ms: u32) -> Command {
    let mut c = Command::new("java");
    c.args(["-Xms16m", "-XX:TieredStopAtLevel=1", "-cp", JAR])
        .arg("org.apache.zookeeper.ZooKeeperMain")
        .args(["-server", &addr.to_string()])
        .args(["-timeout", &session_ms.to_string()]);
    c
}

impl ZooKeeper {
    /// Starts one with its data under `dir`.
    pub async fn start(dir: &Path) -> ZooKeeper {
        std::fs::create_dir_all(dir.join("data")).expect("ZooKeeper's directory");
        let mut z = ZooKeeper {
            proc: None,
            addr: free_addr(),
            dir: dir.to_path_buf(),
        };
        z.restart().await;
        z
    }

    /// Starts it again (after `kill`) on the same port and data.
    pub async fn restart(&mut self) {
        let cfg = self.dir.join("zoo.cfg");
        // A short tick, so sessions may be as short as 400ms; the admin
        // server (an HTTP port of its own) stays off.
        std::fs::write(
            &cfg,
            format!(
                "tickTime=200\ndataDir={}\nclientPort={}\nclientPortAddress={}\n\
                 admin.enableServer=false\nminSessionTimeout=400\nmaxSessionTimeout=60000\n\
                 maxClientCnxns=0\n4lw.commands.whitelist=srvr\n",
                self.dir.join("data").display(),
                self.addr.port(),
                self.addr.ip()
            ),
        )
        .unwrap();
        let log = self.dir.join("zookeeper.log");
        let mut child = Proc::spawn(
            Command::new("java")
                .args(["-Xms32m", "-XX:TieredStopAtLevel=1", "-cp", JAR])
                .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                .arg(&cfg),
            &log,
        );
        wait_listening(self.addr, &mut child, &log, Duration::from_secs(30)).await;
        // It listens before it serves: ready when it says which mode it
        // is in.
        let addr = self.addr;
        super::wait_for("ZooKeeper to serve", Duration::from_secs(30), || {
            srvr(addr).contains("Mode: standalone")
        })
        .await;
        self.proc = Some(child);
    }

    /// Stops it (as a crash would).
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// `host:port`, as a config names it.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Runs `lines` through the command-line client in one session; what it
    /// printed. Each line must succeed.
    pub async fn run(&self, lines: &[&str]) -> String {
        let mut cmd = tokio::process::Command::from(client_command(self.addr, 4000));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ZooKeeper client runs");
        let mut script = lines.join("\n");
        script.push_str("\nquit\n");
        // Written beside the reading: a long script's answers would fill
        // the pipe while the script still waits to be written.
        let mut stdin = child.stdin.take().unwrap();
        tokio::spawn(async move {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, script.as_bytes()).await;
        });
        // A long script (a bench's 10,000 nodes) gets longer.
        let limit = Duration::from_secs(30) + Duration::from_millis(5) * lines.len() as u32;
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .expect("the ZooKeeper client ends in time")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        for bad in ["KeeperErrorCode", "Exception", "Command not found"] {
            assert!(!text.contains(bad), "{lines:?}:\n{text}");
        }
        text
    }

    /// A session kept open: a service registering itself.
    pub fn session(&self, session_ms: u32) -> Session {
        let log = self.dir.join(format!("session-{}.log", rand_suffix()));
        let out = std::fs::File::create(&log).unwrap();
        let child = client_command(self.addr, session_ms)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("the ZooKeeper client runs");
        Session {
            proc: Proc(child),
            log,
        }
    }
}

/// The answer to the `srvr` four-letter word, or nothing.
fn srvr(addr: SocketAddr) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"srvr");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A client session a test holds open.
pub struct Session {
    proc: Proc,
    log: PathBuf,
}

impl Session {
    /// Sends one command line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.proc.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until the client printed `text` (a command's answer).
    pub async fn wait_for(&self, text: &str) {
        let log = self.log.clone();
        super::wait_for(
            &format!("the ZooKeeper client to print {text:?}"),
            Duration::from_secs(20),
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains(text)
            },
        )
        .await;
    }

    /// What the client printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The client dies without closing its session: its ephemeral nodes
    /// stay until the session times out.
    pub fn kill(self) {
        drop(self.proc);
    }
}
