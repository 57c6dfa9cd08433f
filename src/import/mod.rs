//! `switchyard import nginx|haproxy FILE`: the stream / `mode tcp` parts of
//! an nginx or HAProxy configuration as a switchyard TOML file. What has no
//! equivalent is listed at the end, each with its file and line, as a
//! comment: nothing is dropped without a word.
//!
//! It runs past 400 lines: the model both importers fill, its one TOML
//! writer and their tests belong together.

mod haproxy;
mod nginx;

use std::fmt::Write as _;
use std::path::Path;

/// Where a directive was written: `file:line`.
#[derive(Debug, Clone, Default)]
pub(crate) struct WrittenAt(pub String);

/// A directive with no equivalent, and why.
#[derive(Debug, Clone)]
pub(crate) struct Left {
    pub(crate) at: WrittenAt,
    pub(crate) text: String,
    pub(crate) why: String,
}

/// A listener as imported.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImportedListener {
    pub(crate) at: WrittenAt,
    pub(crate) name: String,
    pub(crate) bind: String,
    pub(crate) udp: bool,
    pub(crate) pool: String,
    pub(crate) accept_proxy: bool,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) tls_inspect_timeout: Option<String>,
    pub(crate) allow: Vec<String>,
    pub(crate) deny: Vec<String>,
    /// SNI routes: names and pool.
    pub(crate) routes: Vec<(Vec<String>, String)>,
    /// TLS termination: certificate and key files.
    pub(crate) tls: Option<(String, String)>,
    /// A Unix listener file's `mode`, `owner`, `group`, as written.
    pub(crate) file: Vec<(&'static str, String)>,
}

/// A backend as imported.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImportedBackend {
    pub(crate) addr: String,
    pub(crate) name: Option<String>,
    pub(crate) weight: Option<u32>,
    pub(crate) backup: bool,
    pub(crate) max_connections: Option<u32>,
    /// Where the address came from when a host name was looked up.
    pub(crate) resolved_from: Option<String>,
}

/// Active checks as imported.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Health {
    pub(crate) interval: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) rise: Option<u32>,
    pub(crate) fall: Option<u32>,
}

/// A pool as imported.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImportedPool {
    pub(crate) at: WrittenAt,
    pub(crate) name: String,
    pub(crate) strategy: Option<String>,
    pub(crate) backends: Vec<ImportedBackend>,
    pub(crate) proxy_protocol: Option<String>,
    pub(crate) connect_timeout: Option<String>,
    /// `source`: a local address, or "client".
    pub(crate) source: Option<String>,
    pub(crate) max_fails: Option<u32>,
    pub(crate) fail_timeout: Option<String>,
    pub(crate) health: Option<Health>,
    /// DNS discovery: kind, name, port, resolver.
    pub(crate) dns: Option<(String, String, Option<u16>, Option<String>)>,
}

/// A whole import.
#[derive(Debug, Default)]
pub(crate) struct Model {
    /// `worker_processes N` / `nbthread N`.
    pub(crate) workers: Option<u32>,
    pub(crate) listeners: Vec<ImportedListener>,
    pub(crate) pools: Vec<ImportedPool>,
    pub(crate) left: Vec<Left>,
}

impl Model {
    fn leave(&mut self, at: &WrittenAt, text: &str, why: &str) {
        self.left.push(Left {
            at: at.clone(),
            text: text.trim().to_string(),
            why: why.to_string(),
        });
    }

    fn pool_mut(&mut self, name: &str) -> Option<&mut ImportedPool> {
        self.pools.iter_mut().find(|p| p.name == name)
    }
}

/// Reads `file` as `kind` ("nginx" or "haproxy") and writes the TOML.
pub fn import(kind: &str, file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let name = file.display().to_string();
    let model = match kind {
        "nginx" => nginx::read(&name, &text)?,
        "haproxy" => haproxy::read(&name, &text)?,
        other => return Err(format!("unknown kind `{other}`; expected nginx or haproxy")),
    };
    Ok(write(&model, kind, &name))
}

/// A host:port as an address: kept when it is one; a host name is looked
/// up now, as the peers do at their start (the first address).
fn address(hostport: &str, default_port: Option<u16>) -> Result<(String, Option<String>), String> {
    if let Some(unix) = unix(hostport) {
        return Ok((unix, None));
    }
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok())
        || hostport.starts_with('[') && hostport.contains("]:")
    {
        hostport.to_string()
    } else {
        match default_port {
            Some(p) => format!("{hostport}:{p}"),
            None => return Err(format!("`{hostport}` names no port")),
        }
    };
    if with_port.parse::<std::net::SocketAddr>().is_ok() {
        return Ok((with_port, None));
    }
    use std::net::ToSocketAddrs;
    match with_port.to_socket_addrs() {
        Ok(mut it) => match it.next() {
            Some(a) => Ok((a.to_string(), Some(with_port))),
            None => Err(format!("`{with_port}` does not resolve")),
        },
        Err(e) => Err(format!("`{with_port}` does not resolve: {e}")),
    }
}

/// A listen address: `PORT`, `*:PORT`, `:PORT`, `ADDR:PORT`, `[V6]:PORT`.
fn bind(text: &str) -> Option<String> {
    if let Some(unix) = unix(text) {
        return Some(unix);
    }
    if let Ok(p) = text.parse::<u16>() {
        return Some(format!("0.0.0.0:{p}"));
    }
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = match host {
        "" | "*" | "0.0.0.0" => "0.0.0.0".to_string(),
        "[::]" | "::" => "[::]".to_string(),
        h => h.to_string(),
    };
    let out = format!("{host}:{port}");
    out.parse::<std::net::SocketAddr>().ok().map(|_| out)
}

/// A Unix socket as the peers write it (nginx's `unix:/path`, HAProxy's
/// `/path`, `unix@/path` and `abns@name`), as switchyard writes it.
fn unix(text: &str) -> Option<String> {
    let name = if let Some(p) = text
        .strip_prefix("unix:")
        .or_else(|| text.strip_prefix("unix@"))
    {
        p.to_string()
    } else if let Some(n) = text.strip_prefix("abns@") {
        format!("@{n}")
    } else if text.starts_with('/') {
        text.to_string()
    } else {
        return None;
    };
    crate::endpoint::UnixName::new(&name)
        .ok()
        .map(|n| format!("unix:{n}"))
}

/// A name fit for switchyard (printable, no quotes).
fn fit(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() || "\"'`\\".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// The TOML file.
fn write(m: &Model, kind: &str, file: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Imported by `switchyard import {kind}` from {file}.");
    let _ = writeln!(
        o,
        "# Check it with `switchyard check --config FILE`; what had no equivalent is listed at the end."
    );
    if let Some(n) = m.workers {
        let _ = writeln!(o, "\nworkers = {n}");
    }
    for l in &m.listeners {
        let _ = writeln!(o, "\n# {}", l.at.0);
        let _ = writeln!(o, "[[listeners]]");
        let _ = writeln!(o, "name = {}", q(&l.name));
        let _ = writeln!(o, "bind = {}", q(&l.bind));
        if l.udp {
            let _ = writeln!(o, "protocol = \"udp\"");
        }
        for (key, value) in &l.file {
            let _ = writeln!(o, "{key} = {}", q(value));
        }
        let _ = writeln!(o, "pool = {}", q(&l.pool));
        if l.accept_proxy {
            let _ = writeln!(o, "accept_proxy = true");
            let _ = writeln!(
                o,
                "proxy_trusted = [\"0.0.0.0/0\", \"::/0\"]   # the peers trust every sender; narrow this to your proxies"
            );
        }
        if let Some(t) = &l.idle_timeout {
            let _ = writeln!(o, "idle_timeout = {}", q(t));
        }
        if let Some(t) = &l.tls_inspect_timeout {
            let _ = writeln!(o, "tls_inspect_timeout = {}", q(t));
        }
        if !l.allow.is_empty() {
            let _ = writeln!(o, "allow = {}", list(&l.allow));
        }
        if !l.deny.is_empty() {
            let _ = writeln!(o, "deny = {}", list(&l.deny));
        }
        if let Some((cert, key)) = &l.tls {
            let _ = writeln!(o, "tls = {{ cert = {}, key = {} }}", q(cert), q(key));
        }
        for (names, pool) in &l.routes {
            let _ = writeln!(o, "\n[[listeners.routes]]");
            let _ = writeln!(o, "sni = {}", list(names));
            let _ = writeln!(o, "pool = {}", q(pool));
        }
    }
    for p in &m.pools {
        let _ = writeln!(o, "\n# {}", p.at.0);
        let _ = writeln!(o, "[pools.{}]", q(&p.name));
        // Both peers' default is a weighted round robin.
        let weighted = p.backends.iter().any(|b| b.weight.is_some_and(|w| w != 1));
        match &p.strategy {
            Some(s) => {
                let _ = writeln!(o, "strategy = {}", q(s));
            }
            None if weighted => {
                let _ = writeln!(o, "strategy = \"weighted\"");
            }
            None => {}
        }
        if let Some(v) = &p.proxy_protocol {
            let _ = writeln!(o, "proxy_protocol = {}", q(v));
        }
        if let Some(t) = &p.connect_timeout {
            let _ = writeln!(o, "connect_timeout = {}", q(t));
        }
        if let Some(v) = &p.source {
            let _ = writeln!(o, "source = {}", q(v));
        }
        if let Some(n) = p.max_fails {
            let _ = writeln!(o, "max_fails = {n}");
        }
        if let Some(t) = &p.fail_timeout {
            let _ = writeln!(o, "fail_timeout = {}", q(t));
        }
        if p.dns.is_none() {
            let _ = writeln!(o, "backends = [");
            for b in &p.backends {
                let mut parts = vec![format!("addr = {}", q(&b.addr))];
                if let Some(n) = &b.name {
                    parts.push(format!("name = {}", q(n)));
                }
                if let Some(w) = b.weight {
                    parts.push(format!("weight = {w}"));
                }
                if b.backup {
                    parts.push("backup = true".into());
                }
                if let Some(c) = b.max_connections {
                    parts.push(format!("max_connections = {c}"));
                }
                let note = b
                    .resolved_from
                    .as_ref()
                    .map(|h| format!("   # {h}, looked up at import"))
                    .unwrap_or_default();
                let _ = writeln!(o, "  {{ {} }},{note}", parts.join(", "));
            }
            let _ = writeln!(o, "]");
        }
        if let Some(h) = &p.health {
            let _ = writeln!(o, "\n[pools.{}.health]", q(&p.name));
            let _ = writeln!(o, "kind = \"tcp\"");
            if let Some(v) = &h.interval {
                let _ = writeln!(o, "interval = {}", q(v));
            }
            if let Some(v) = &h.timeout {
                let _ = writeln!(o, "timeout = {}", q(v));
            }
            if let Some(v) = h.rise {
                let _ = writeln!(o, "rise = {v}");
            }
            if let Some(v) = h.fall {
                let _ = writeln!(o, "fall = {v}");
            }
        }
        if let Some((kind, name, port, resolver)) = &p.dns {
            let _ = writeln!(o, "\n[pools.{}.discovery]", q(&p.name));
            let _ = writeln!(o, "kind = {}", q(kind));
            let _ = writeln!(o, "name = {}", q(name));
            if let Some(port) = port {
                let _ = writeln!(o, "port = {port}");
            }
            if let Some(r) = resolver {
                let _ = writeln!(o, "resolver = {}", q(r));
            }
        }
    }
    if !m.left.is_empty() {
        let _ = writeln!(o, "\n# Not imported ({}):", m.left.len());
        for l in &m.left {
            let _ = writeln!(o, "#   {}: {}  -- {}", l.at.0, l.text, l.why);
        }
    }
    o
}

/// A duration as the peers write it (nginx: `30s`, `1m`, `500ms`, a bare
/// number of seconds; HAProxy: a bare number of milliseconds, or with a
/// unit) in switchyard's form.
fn duration(text: &str, bare_unit: &str) -> Option<String> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        return Some(format!("{t}{bare_unit}"));
    }
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit())?);
    if num.is_empty() {
        return None;
    }
    let unit = match unit {
        "ms" => "ms",
        "s" => "s",
        "m" => "m",
        "h" => "h",
        "d" => "d",
        "us" => "us",
        _ => return None,
    };
    Some(format!("{num}{unit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_binds() {
        assert_eq!(duration("30s", "s").as_deref(), Some("30s"));
        assert_eq!(duration("30000", "ms").as_deref(), Some("30000ms"));
        assert_eq!(duration("5", "s").as_deref(), Some("5s"));
        assert_eq!(duration("1m", "s").as_deref(), Some("1m"));
        assert_eq!(duration("x", "s"), None);
        assert_eq!(bind("12345").as_deref(), Some("0.0.0.0:12345"));
        assert_eq!(bind("*:80").as_deref(), Some("0.0.0.0:80"));
        assert_eq!(bind(":80").as_deref(), Some("0.0.0.0:80"));
        assert_eq!(bind("127.0.0.1:53").as_deref(), Some("127.0.0.1:53"));
        assert_eq!(bind("[::1]:53").as_deref(), Some("[::1]:53"));
        assert_eq!(bind("localhost:53"), None);
        assert_eq!(address("127.0.0.1:80", None).unwrap().0, "127.0.0.1:80");
        assert_eq!(address("127.0.0.1", Some(53)).unwrap().0, "127.0.0.1:53");
        assert!(address("127.0.0.1", None).is_err());
    }
}
