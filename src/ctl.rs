//! `switchyard ctl`: the running daemon from a shell, through its admin
//! API, as HAProxy's runtime API is used through `socat`: a table of pools
//! and backends (`status`, or `top` refreshed every second), drain, enable,
//! weight, reload. Plain blocking HTTP/1.1: one request, one connection.
//!
//! It runs past 400 lines: each subcommand's call and its table are short,
//! and there are many; their tests stay beside them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::admin::status::{BackendStatus, HistoryRates, PoolsStatus};

use crate::config::Config;

/// How long the daemon has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Nothing answered at the address (exit 3).
    #[error("daemon not reachable at {addr}: {cause}")]
    Unreachable {
        /// Where it was asked.
        addr: String,
        /// What the system said.
        cause: String,
    },
    /// The daemon wants a token (exit 4).
    #[error("{status}: token needed or wrong (give --token-file, or --config with [admin] token_file): {message}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The daemon's words.
        message: String,
    },
    /// The daemon refused the request (exit 1).
    #[error("{status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The daemon's words.
        message: String,
    },
    /// The command line or the config file is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The table could not be written (exit 1); a closed pipe is not this,
    /// it ends `top` quietly, as it ends any Unix tool.
    #[error("cannot write: {0}")]
    Output(std::io::Error),
    /// The daemon answered with something that is not the status it
    /// describes (exit 1): a daemon of another version, or not switchyard.
    #[error("the daemon's answer is not what ctl reads: {0}")]
    Answer(String),
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused { .. } | CtlError::Output(_) | CtlError::Answer(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Unreachable { .. } => 3,
            CtlError::Unauthorized { .. } => 4,
        }
    }
}

/// Where the daemon is, and the token to show it.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// `host:port` of the admin endpoint.
    pub admin: String,
    /// The bearer token, if any.
    pub token: Option<String>,
}

impl AdminTarget {
    /// From the command line: `--admin` wins, then the config file's
    /// `[admin] bind` (a wildcard address asked on loopback), then
    /// `127.0.0.1:9901`; `--token-file` wins over the file's `token_file`.
    pub fn resolve(
        admin: Option<&str>,
        token_file: Option<&Path>,
        config: Option<&Path>,
    ) -> Result<AdminTarget, CtlError> {
        let config = match config {
            Some(path) => Some(
                Config::load(path)
                    .map_err(|e| CtlError::Usage(format!("cannot use {}:\n{e}", path.display())))?,
            ),
            None => None,
        };
        let from_file = config.as_ref().and_then(|c| c.admin.as_ref());
        let admin = match (admin, from_file) {
            (Some(a), _) => a
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
            (None, Some(a)) => {
                let mut addr = a.bind;
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() {
                        [127, 0, 0, 1].into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                addr.to_string()
            }
            (None, None) => "127.0.0.1:9901".to_string(),
        };
        let token_path: Option<PathBuf> = token_file
            .map(Path::to_path_buf)
            .or_else(|| from_file.and_then(|a| a.token_file.clone()));
        let token = match token_path {
            Some(p) => Some(
                std::fs::read_to_string(&p)
                    .map_err(|e| {
                        CtlError::Usage(format!("cannot read token file {}: {e}", p.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(AdminTarget { admin, token })
    }

    /// One request; the JSON answer of a 2xx.
    fn call(&self, method: &str, path: &str, body: &str) -> Result<Value, CtlError> {
        let down = |cause: String| CtlError::Unreachable {
            addr: self.admin.clone(),
            cause,
        };
        let addr: SocketAddr = self
            .admin
            .to_socket_addrs()
            .map_err(|e| down(e.to_string()))?
            .next()
            .ok_or_else(|| down("the name has no address".into()))?;
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| down(e.to_string()))?;
        s.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| down(e.to_string()))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.admin,
            body.len()
        );
        if method != "GET" {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())
            .map_err(|e| down(e.to_string()))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| down(e.to_string()))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| down("the answer is not HTTP".into()))?;
        let value: Value = serde_json::from_str(body).unwrap_or_else(|_| Value::from(body.trim()));
        let message = value["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        match status {
            200..=299 => Ok(value),
            401 | 403 => Err(CtlError::Unauthorized { status, message }),
            _ => Err(CtlError::Refused { status, message }),
        }
    }

    /// Drains (`true`) or enables a backend, by name or address.
    pub fn drain(&self, pool: &str, backend: &str, draining: bool) -> Result<String, CtlError> {
        let action = if draining { "drain" } else { "enable" };
        let b: BackendStatus =
            typed(self.call("POST", &backend_path(pool, backend, action), "")?)?;
        Ok(format!(
            "{}/{}: {}",
            escaped(pool),
            escaped(&b.name),
            b.state.as_str()
        ))
    }

    /// Sets a backend's weight.
    pub fn weight(&self, pool: &str, backend: &str, weight: u32) -> Result<String, CtlError> {
        let b: BackendStatus = typed(self.call(
            "PUT",
            &backend_path(pool, backend, "weight"),
            &format!("{{\"weight\": {weight}}}"),
        )?)?;
        Ok(format!(
            "{}/{}: weight {}",
            escaped(pool),
            escaped(&b.name),
            b.weight
        ))
    }

    /// Asks the daemon to re-read its file.
    pub fn reload(&self) -> Result<String, CtlError> {
        self.call("POST", "/api/v1/reload", "")?;
        Ok("reloaded".into())
    }

    /// The table of pools and backends, with rates from the daemon's
    /// history (the last 15 s).
    pub fn status(&self) -> Result<String, CtlError> {
        let pools: PoolsStatus = typed(self.call("GET", "/api/v1/pools", "")?)?;
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(15_000);
        let history: HistoryRates = typed(self.call(
            "GET",
            &format!("/api/v1/history?points=1&since={since}"),
            "",
        )?)?;
        Ok(table(&pools, |pool, addr| {
            let Some(s) = history.pools.get(pool).and_then(|p| p.get(addr)) else {
                return (None, None, None);
            };
            let last = |v: &[Option<f64>]| v.last().copied().flatten();
            (
                last(&s.new_per_s),
                last(&s.bytes_in_per_s),
                last(&s.bytes_out_per_s),
            )
        }))
    }

    /// The table refreshed every second, like `top`, `count` times (or for
    /// ever); rates between refreshes.
    pub fn top(&self, count: Option<u32>, out: &mut dyn Write) -> Result<(), CtlError> {
        let mut before: Option<(Instant, PoolsStatus)> = None;
        let mut shown = 0;
        loop {
            let now = Instant::now();
            let pools: PoolsStatus = typed(self.call("GET", "/api/v1/pools", "")?)?;
            let screen = table(&pools, |pool, addr| {
                let Some((then, old)) = &before else {
                    return (None, None, None);
                };
                let dt = now.duration_since(*then).as_secs_f64().max(0.001);
                let (Some(a), Some(b)) = (find(old, pool, addr), find(&pools, pool, addr)) else {
                    return (None, None, None);
                };
                let rate =
                    |f: fn(&BackendStatus) -> u64| Some(f(b).saturating_sub(f(a)) as f64 / dt);
                (
                    rate(|b| b.connections_total),
                    rate(|b| b.bytes_in),
                    rate(|b| b.bytes_out),
                )
            });
            let frame = format!(
                "\x1b[H\x1b[2J{} · {}\n\n{screen}",
                escaped(&self.admin),
                humantime::format_rfc3339_seconds(SystemTime::now())
            );
            // `ctl top | head`: the reader has gone, and so do we.
            if !emit(out, &frame)? {
                return Ok(());
            }
            before = Some((now, pools));
            shown += 1;
            if count.is_some_and(|c| shown >= c) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Writes `text` to `out` and flushes it; `Ok(false)` when the reader has
/// gone (a closed pipe, as after `| head`), which ends the output quietly
/// as it ends any Unix tool's.
pub fn emit(out: &mut dyn Write, text: &str) -> Result<bool, CtlError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CtlError::Output(e)),
    }
}

/// `text` with every control character written as an escape (`\u{1b}`):
/// names and addresses come from the daemon, and so from a config file or a
/// store, and must not move the cursor or recolour the terminal.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn backend_path(pool: &str, backend: &str, action: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    format!(
        "/api/v1/pools/{}/backends/{}/{action}",
        utf8_percent_encode(pool, NON_ALPHANUMERIC),
        utf8_percent_encode(backend, NON_ALPHANUMERIC)
    )
}

fn bytes(v: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = v;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}/s", units[i])
}

/// `value` read as the status type `T`.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, CtlError> {
    serde_json::from_value(value).map_err(|e| CtlError::Answer(e.to_string()))
}

/// Backend `addr` of pool `pool` in `status`.
fn find<'s>(status: &'s PoolsStatus, pool: &str, addr: &str) -> Option<&'s BackendStatus> {
    status
        .pools
        .iter()
        .find(|p| p.name == pool)?
        .backends
        .iter()
        .find(|b| b.addr == addr)
}

/// What an agent said, in a few characters: its weight share and any of
/// drain, maint and down.
fn agent(a: &crate::backend::agent::AgentStatus) -> String {
    let mut words = vec![format!("{}%", a.weight_percent)];
    for (on, word) in [(a.drain, "drain"), (a.maint, "maint"), (a.down, "down")] {
        if on {
            words.push(word.to_string());
        }
    }
    words.join(" ")
}

/// The table of `/api/v1/pools`, with the rates `rates(pool, addr)` gives
/// (new connections, bytes in, bytes out per second).
fn table(
    pools: &PoolsStatus,
    rates: impl Fn(&str, &str) -> (Option<f64>, Option<f64>, Option<f64>),
) -> String {
    let mut rows = vec![[
        "POOL", "BACKEND", "ADDRESS", "TLS", "STATE", "PRIO", "WEIGHT", "AGENT", "ACTIVE", "NEW/S",
        "IN", "OUT",
    ]
    .map(String::from)
    .to_vec()];
    for p in &pools.pools {
        for b in &p.backends {
            let (new, inb, outb) = rates(&p.name, &b.addr);
            let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            rows.push(vec![
                escaped(&p.name),
                escaped(&b.name),
                escaped(&b.addr),
                // The pool's TLS to its backends: verified, or not.
                match &p.tls {
                    None => "-".to_string(),
                    Some(t) if t.verify => "yes".to_string(),
                    Some(_) => "unverified".to_string(),
                },
                b.state.as_str().to_string(),
                if b.backup {
                    "backup".to_string()
                } else {
                    b.priority.to_string()
                },
                b.weight.to_string(),
                b.agent.as_ref().map_or("-".to_string(), agent),
                b.active.to_string(),
                or_dash(new.map(|v| format!("{v:.1}"))),
                or_dash(inb.map(bytes)),
                or_dash(outb.map(bytes)),
            ]);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    // Pools that are not simply on their first group say so underneath.
    for p in &pools.pools {
        let name = escaped(&p.name);
        if p.panic {
            out.push_str(&format!(
                "pool {name}: PANIC: new connections go to every backend, healthy or not\n"
            ));
        }
        let r = &p.rates;
        if r.upload.is_some() || r.download.is_some() {
            let each = |v: Option<u64>| v.map_or("unlimited".to_string(), |b| bytes(b as f64));
            out.push_str(&format!(
                "pool {name}: each connection at most {} up, {} down\n",
                each(r.upload),
                each(r.download)
            ));
        }
        let first = p.backends.iter().map(|b| i64::from(b.priority)).min();
        match p.active_priority {
            a if a < 0 && !p.panic => {
                out.push_str(&format!("pool {name}: no backend is available\n"))
            }
            a if a >= 0 && first.is_some_and(|f| f != a) => out.push_str(&format!(
                "pool {name}: {} new connections\n",
                if a == i64::from(crate::config::BACKUP) {
                    "the backups take".to_string()
                } else {
                    format!("priority group {a} takes")
                }
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_escapes_what_the_daemon_sent() {
        let pools: PoolsStatus = typed(serde_json::json!({"pools": [{
            "name": "p\x1b[31m", "strategy": "round_robin", "health_check": "none",
            "proxy_protocol": null, "listeners": [], "backends": [{
                "name": "a\nERROR fake", "addr": "127.0.0.1:1", "state": "up",
                "healthy": true, "draining": false, "weight": 1, "max_connections": null,
                "active": 0, "connections_total": 0, "bytes_in": 0, "bytes_out": 0,
                "connect_failures": 0, "last_check": null
            }]
        }]}))
        .unwrap();
        let out = table(&pools, |_, _| (None, None, None));
        assert!(!out.contains('\x1b'), "{out:?}");
        assert_eq!(out.lines().count(), 2, "one header and one row: {out:?}");
        assert!(out.contains("p\\u{1b}[31m"), "{out}");
        assert!(out.contains("a\\u{a}ERROR fake"), "{out}");
    }

    #[test]
    fn the_table_says_when_a_pool_runs_on_its_backups_or_in_panic() {
        let pool = |active: i64, panic: bool| {
            let b = |name: &str, priority: u32| {
                serde_json::json!({
                    "name": name, "addr": "127.0.0.1:1", "state": "down",
                    "healthy": false, "draining": false, "weight": 1, "max_connections": null,
                    "priority": priority, "backup": priority == crate::config::BACKUP,
                    "active": 0, "connections_total": 0, "bytes_in": 0, "bytes_out": 0,
                    "connect_failures": 0, "last_check": null
                })
            };
            let pools: PoolsStatus = typed(serde_json::json!({"pools": [{
                "name": "p", "strategy": "round_robin", "health_check": "tcp",
                "proxy_protocol": null, "listeners": [], "active_priority": active,
                "panic": panic, "backends": [b("a", 0), b("spare", crate::config::BACKUP)]
            }]}))
            .unwrap();
            table(&pools, |_, _| (None, None, None))
        };
        let on_backups = pool(256, false);
        assert!(
            on_backups
                .lines()
                .any(|l| l.starts_with("p ") && l.contains("spare") && l.contains(" backup ")),
            "{on_backups}"
        );
        assert!(
            on_backups.ends_with("pool p: the backups take new connections\n"),
            "{on_backups}"
        );
        assert!(pool(0, false).lines().all(|l| !l.starts_with("pool ")));
        let limited: PoolsStatus = typed(serde_json::json!({"pools": [{
            "name": "p", "strategy": "round_robin", "health_check": "none",
            "proxy_protocol": null, "listeners": [], "backends": [],
            "rates": {"upload": 1048576, "download": null}
        }]}))
        .unwrap();
        let out = table(&limited, |_, _| (None, None, None));
        assert!(
            out.ends_with("pool p: each connection at most 1.0 MiB/s up, unlimited down\n"),
            "{out}"
        );
        assert!(pool(-1, false).ends_with("pool p: no backend is available\n"));
        assert!(pool(-1, true)
            .ends_with("pool p: PANIC: new connections go to every backend, healthy or not\n"));
    }
}
