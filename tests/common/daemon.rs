//! The real binary as a child process, with its JSON log read for events.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the old process logs once its successor serves.
pub const UPGRADED: &str =
    "upgrade: the new process serves; this one stops accepting and drains its connections";

/// Processes a test started indirectly (an upgrade's successors): killed
/// when the test ends, passed or not, so none outlives it.
pub struct Successors(pub Vec<u32>);

impl Drop for Successors {
    fn drop(&mut self) {
        let me = format!("PPid:\t{}", std::process::id());
        for &pid in &self.0 {
            // Only a process still ours (not a reused pid).
            let ours = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| s.lines().any(|l| l == me));
            if ours {
                // SAFETY: kill sends a signal to a process this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

pub struct Daemon {
    pub child: Child,
    pub config: PathBuf,
    pub log: Arc<Mutex<Vec<serde_json::Value>>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Writes `toml` to a file and runs `switchyard run` on it, through
    /// `wrapper` (e.g. `prlimit --nofile=…`) when given; waits until ready.
    pub fn start(toml: &str, wrapper: &[&str], envs: &[(&str, &str)]) -> Daemon {
        Daemon::start_binary(
            Path::new(env!("CARGO_BIN_EXE_switchyard")),
            toml,
            wrapper,
            envs,
        )
    }

    /// As [`Daemon::start`], running the binary at `bin` (an installed one).
    pub fn start_binary(bin: &Path, toml: &str, wrapper: &[&str], envs: &[(&str, &str)]) -> Daemon {
        Daemon::start_prepared(bin, toml, wrapper, envs, |_| {})
    }

    /// As [`Daemon::start_binary`], with `prepare` called on the command
    /// before it is spawned (e.g. to add a `pre_exec` step).
    pub fn start_prepared(
        bin: &Path,
        toml: &str,
        wrapper: &[&str],
        envs: &[(&str, &str)],
        prepare: impl FnOnce(&mut Command),
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("switchyard.toml");
        std::fs::write(&config, toml).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        prepare(&mut cmd);
        let mut child = cmd.spawn().expect("start switchyard");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line).unwrap_or(serde_json::json!({ "raw": line }));
                sink.lock().unwrap().push(v);
            }
        });
        let d = Daemon {
            child,
            config,
            log,
            _dir: dir,
        };
        d.wait_log("ready", Duration::from_secs(20), |v| {
            v["message"] == "switchyard is ready"
        });
        d
    }

    pub fn path(&self) -> &Path {
        &self.config
    }

    /// Waits for a log line matching `pred`, returning it.
    pub fn wait_log(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.log.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for log: {what}; log so far: {:#?}",
                    self.log.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn count_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|v| pred(v)).count()
    }

    /// The addresses of the listeners, from their latest "listening" log lines.
    pub fn listeners(&self) -> HashMap<String, SocketAddr> {
        let mut out = HashMap::new();
        for v in self.log.lock().unwrap().iter() {
            if v["message"] == "listening" {
                let name = v["listener"].as_str().unwrap().to_string();
                // A Unix listener's address is no SocketAddr.
                if let Ok(addr) = v["addr"].as_str().unwrap().parse() {
                    out.insert(name, addr);
                }
            }
        }
        out
    }

    pub fn admin(&self) -> SocketAddr {
        let v = self.wait_log("admin", Duration::from_secs(5), |v| {
            v["message"] == "admin endpoint listening"
        });
        v["addr"].as_str().unwrap().parse().unwrap()
    }

    /// Signals process `pid` (this daemon or a successor) to upgrade and
    /// waits until the `nth` new process since the start serves; its pid.
    pub fn upgrade(&self, pid: u32, nth: usize) -> u32 {
        // SAFETY: kill sends a signal to a process of this test.
        assert_eq!(
            unsafe { libc::kill(pid as i32, libc::SIGUSR2) },
            0,
            "kill -USR2 {pid}"
        );
        let serves = |v: &serde_json::Value| v["message"] == UPGRADED;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count_log(serves) < nth {
            assert!(
                Instant::now() < deadline,
                "upgrade {nth}: no new process served in 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = self.log.lock().unwrap();
        let line = log.iter().filter(|v| serves(v)).nth(nth - 1).unwrap();
        line["successor"].as_u64().unwrap() as u32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, returning its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("switchyard did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET (or other method) against the admin endpoint:
/// returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    // The API takes changes only as JSON, as a script or the status page sends them.
    if method != "GET"
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
