//! HAProxy's `mode tcp` sections: `frontend` and `listen` binds as
//! listeners, `backend` and `listen` servers as pools, `req.ssl_sni` rules
//! as SNI routes, `server-template` as DNS discovery.
//!
//! It runs past 400 lines: HAProxy's grammar and the mapping of each of its
//! `mode tcp` keywords are one reading of one file.

use std::collections::HashMap;

use super::{
    address, bind, duration, fit, Health, ImportedBackend, ImportedListener, ImportedPool, Model,
    WrittenAt,
};

/// One line: where, and its words.
#[derive(Debug, Clone)]
struct Line {
    at: WrittenAt,
    words: Vec<String>,
}

impl Line {
    fn text(&self) -> String {
        self.words.join(" ")
    }
    fn word(&self, i: usize) -> &str {
        self.words.get(i).map(String::as_str).unwrap_or("")
    }
}

/// A section: its kind, name and lines.
struct Section {
    at: WrittenAt,
    kind: String,
    name: String,
    lines: Vec<Line>,
}

fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') => break,
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "resolvers",
    "peers",
    "userlist",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
];

fn sections(file: &str, text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let w = words(raw);
        if w.is_empty() {
            continue;
        }
        let at = WrittenAt(format!("{file}:{}", i + 1));
        if SECTIONS.contains(&w[0].as_str()) {
            out.push(Section {
                at,
                kind: w[0].clone(),
                name: w.get(1).cloned().unwrap_or_default(),
                lines: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.lines.push(Line { at, words: w });
        } else {
            out.push(Section {
                at: at.clone(),
                kind: "(none)".into(),
                name: String::new(),
                lines: vec![Line { at, words: w }],
            });
        }
    }
    out
}

/// What `defaults` sets for the sections after it.
#[derive(Clone, Default)]
struct Defaults {
    mode: Option<String>,
    connect: Option<String>,
    client: Option<String>,
    balance: Option<String>,
    server: Vec<String>,
}

fn strategy(b: &str) -> Option<&'static str> {
    Some(match b {
        "roundrobin" | "static-rr" => "weighted",
        "leastconn" => "least_conn",
        "source" => "maglev",
        "first" => "first",
        "random" => "random",
        _ => return None,
    })
}

/// Server names in `req.ssl_sni -i a b` (or `req_ssl_sni`), up to a `}`.
fn sni_fetch(words: &[String]) -> Option<Vec<String>> {
    let (fetch, rest) = words.split_first()?;
    if fetch != "req.ssl_sni" && fetch != "req_ssl_sni" {
        return None;
    }
    let names: Vec<String> = rest
        .iter()
        .take_while(|w| *w != "}")
        .filter(|w| *w != "-i")
        .cloned()
        .collect();
    (!names.is_empty() && !names.iter().any(|n| n.starts_with('-'))).then_some(names)
}

/// Server names in a condition: `{ req.ssl_sni -i a b }`, or an ACL's.
fn sni(cond: &[String], acls: &HashMap<String, Vec<String>>) -> Option<Vec<String>> {
    match cond {
        [brace, inner @ ..] if brace == "{" => sni_fetch(inner),
        [acl] => acls.get(acl).cloned(),
        _ => None,
    }
}

pub(super) fn read(file: &str, text: &str) -> Result<Model, String> {
    let mut m = Model::default();
    let mut defaults = Defaults::default();
    let mut resolvers: HashMap<String, String> = HashMap::new();
    let secs = sections(file, text);
    // Resolvers first: servers name them.
    for s in &secs {
        if s.kind == "resolvers" {
            if let Some(l) = s.lines.iter().find(|l| l.word(0) == "nameserver") {
                resolvers.insert(s.name.clone(), l.word(2).to_string());
            }
        }
    }
    for s in &secs {
        match s.kind.as_str() {
            "global" => {
                for l in &s.lines {
                    match l.word(0) {
                        "nbthread" => m.workers = l.word(1).parse().ok(),
                        _ => m.leave(
                            &l.at,
                            &l.text(),
                            "process settings: systemd and the unit file cover them",
                        ),
                    }
                }
            }
            "defaults" => {
                defaults = Defaults::default();
                for l in &s.lines {
                    match (l.word(0), l.word(1)) {
                        ("mode", m2) => defaults.mode = Some(m2.to_string()),
                        ("timeout", "connect") => defaults.connect = duration(l.word(2), "ms"),
                        ("timeout", "client") => defaults.client = duration(l.word(2), "ms"),
                        ("timeout", "server" | "tunnel") => {
                            if duration(l.word(2), "ms") != defaults.client {
                                m.leave(&l.at, &l.text(), "one idle_timeout covers both sides of a connection: the client's was taken")
                            }
                        }
                        ("balance", b) => defaults.balance = Some(b.to_string()),
                        ("default-server", _) => defaults.server = l.words[1..].to_vec(),
                        _ => m.leave(&l.at, &l.text(), "no equivalent"),
                    }
                }
            }
            "frontend" | "backend" | "listen" => proxy(&mut m, s, &defaults, &resolvers),
            "resolvers" => {}
            other => m.leave(&s.at, &format!("{other} {}", s.name), "no equivalent"),
        }
    }
    Ok(m)
}

fn proxy(m: &mut Model, s: &Section, d: &Defaults, resolvers: &HashMap<String, String>) {
    let mode = s
        .lines
        .iter()
        .find(|l| l.word(0) == "mode")
        .map(|l| l.word(1).to_string())
        .or(d.mode.clone())
        .unwrap_or_else(|| "tcp".into());
    if mode != "tcp" {
        return m.leave(
            &s.at,
            &format!("{} {}", s.kind, s.name),
            "mode http: HTTP is not layer 4",
        );
    }
    let front = s.kind != "backend";
    let back = s.kind != "frontend";
    let mut listeners = Vec::new();
    let mut pool = ImportedPool {
        at: s.at.clone(),
        name: fit(&s.name),
        strategy: d.balance.as_deref().and_then(strategy).map(str::to_string),
        connect_timeout: d.connect.clone(),
        ..ImportedPool::default()
    };
    let mut default_server = d.server.clone();
    let mut default_backend = back.then(|| fit(&s.name));
    let mut idle = d.client.clone();
    let mut inspect = None;
    let mut routes: Vec<(Vec<String>, String)> = Vec::new();
    let mut acls: HashMap<String, Vec<String>> = HashMap::new();
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    let mut servers = Vec::new();
    for l in &s.lines {
        match (l.word(0), l.word(1)) {
            ("mode", _) => {}
            ("bind", addr) if front => listeners.push((l.clone(), addr.to_string())),
            ("default_backend", b) if front => default_backend = Some(fit(b)),
            ("acl", name) if front => match sni_fetch(&l.words[2..]) {
                Some(names) => {
                    acls.insert(name.to_string(), names);
                }
                None => m.leave(&l.at, &l.text(), "only ACLs on req.ssl_sni are imported"),
            },
            ("use_backend", b) if front => {
                let cond = &l.words[2..];
                match cond.split_first() {
                    Some((kw, rest)) if kw == "if" => match sni(rest, &acls) {
                        Some(names) => routes.push((names, fit(b))),
                        None => m.leave(
                            &l.at,
                            &l.text(),
                            "only conditions on req.ssl_sni become routes",
                        ),
                    },
                    _ => m.leave(
                        &l.at,
                        &l.text(),
                        "only `if` conditions on req.ssl_sni become routes",
                    ),
                }
            }
            ("tcp-request", "inspect-delay") => inspect = duration(l.word(2), "ms"),
            ("tcp-request", "content")
                if l.text().contains("req_ssl_hello_type")
                    || l.text().contains("req.ssl_hello_type") =>
            {
                m.leave(
                    &l.at,
                    &l.text(),
                    "implied: a listener with routes waits for the ClientHello itself",
                )
            }
            ("tcp-request", "connection") if l.word(2) == "reject" && l.word(3) == "if" => {
                let cond: Vec<&str> = l.words[4..].iter().map(String::as_str).collect();
                match cond.as_slice() {
                    ["!{", "src", rest @ ..] => allow.extend(
                        rest.iter()
                            .take_while(|w| **w != "}")
                            .map(|w| w.to_string()),
                    ),
                    ["{", "src", rest @ ..] => deny.extend(
                        rest.iter()
                            .take_while(|w| **w != "}")
                            .map(|w| w.to_string()),
                    ),
                    _ => m.leave(
                        &l.at,
                        &l.text(),
                        "only rejections by source address (src) are imported",
                    ),
                }
            }
            ("timeout", "client") => idle = duration(l.word(2), "ms"),
            ("timeout", "connect") if back => pool.connect_timeout = duration(l.word(2), "ms"),
            ("timeout", "server" | "tunnel") => {
                if duration(l.word(2), "ms") != idle {
                    m.leave(&l.at, &l.text(), "one idle_timeout covers both sides of a connection: the client's was taken")
                }
            }
            ("balance", b) if back => match strategy(b) {
                Some(st) => pool.strategy = Some(st.into()),
                None => m.leave(&l.at, &l.text(), "no equivalent strategy"),
            },
            ("default-server", _) => default_server = l.words[1..].to_vec(),
            // source ADDR[:PORT] [usesrc clientip | client]
            ("source", a) if back => match (a.rsplit_once(':').map_or(a, |(ip, _)| ip), l.word(2), l.word(3)) {
                (_, "usesrc", "clientip" | "client") => pool.source = Some("client".into()),
                (ip, "", _) if ip.parse::<std::net::IpAddr>().is_ok_and(|ip| !ip.is_unspecified()) => {
                    pool.source = Some(ip.to_string())
                }
                (ip, "", _) if ip.parse::<std::net::IpAddr>().is_ok() => {}
                _ => m.leave(&l.at, &l.text(), "only an address, or usesrc clientip, is imported (ports are chosen at connect)"),
            },
            ("server", _) if back => servers.push(l.clone()),
            ("server-template", _) if back => {
                // server-template PREFIX COUNT NAME[:PORT] resolvers R ...
                let target = l.word(3);
                let resolver = l
                    .words
                    .iter()
                    .position(|w| w == "resolvers")
                    .and_then(|i| l.words.get(i + 1))
                    .and_then(|r| resolvers.get(r))
                    .cloned();
                pool.dns = if target.starts_with('_') {
                    Some(("dns_srv".into(), target.to_string(), None, resolver))
                } else {
                    match target.rsplit_once(':') {
                        Some((h, p)) => {
                            Some(("dns".into(), h.to_string(), p.parse().ok(), resolver))
                        }
                        None => {
                            m.leave(
                                &l.at,
                                &l.text(),
                                "a server-template of A records needs a port",
                            );
                            None
                        }
                    }
                };
            }
            ("option", "tcp-check") if back => {
                pool.health.get_or_insert_with(Health::default);
            }
            ("option", "tcplog" | "dontlognull" | "tcpka") => m.leave(
                &l.at,
                &l.text(),
                "switchyard logs every connection as a JSON line, keepalive is on by default",
            ),
            _ => m.leave(&l.at, &l.text(), "no equivalent"),
        }
    }
    // Servers, with default-server's parameters first.
    let mut checked: Option<Health> = None;
    for l in &servers {
        let mut b = ImportedBackend {
            name: Some(fit(l.word(1))),
            ..ImportedBackend::default()
        };
        let (mut check, mut h, mut skip) = (false, Health::default(), false);
        let params: Vec<String> = default_server
            .iter()
            .chain(l.words[3..].iter())
            .cloned()
            .collect();
        let mut i = 0;
        while i < params.len() {
            let value = params.get(i + 1).map(String::as_str).unwrap_or("");
            let mut took = 1;
            match params[i].as_str() {
                "check" => check = true,
                "inter" => {
                    h.interval = duration(value, "ms");
                    took = 2
                }
                "timeout" => took = 2,
                "rise" => {
                    h.rise = value.parse().ok();
                    took = 2
                }
                "fall" => {
                    h.fall = value.parse().ok();
                    took = 2
                }
                "weight" => {
                    b.weight = value.parse().ok().filter(|w| *w > 0);
                    took = 2
                }
                "maxconn" => {
                    b.max_connections = value.parse().ok().filter(|n| *n > 0);
                    took = 2
                }
                "backup" => b.backup = true,
                "send-proxy" => pool.proxy_protocol = Some("v1".into()),
                "send-proxy-v2" => pool.proxy_protocol = Some("v2".into()),
                "disabled" => skip = true,
                p => {
                    let takes = matches!(
                        p,
                        "port"
                            | "addr"
                            | "resolvers"
                            | "init-addr"
                            | "ca-file"
                            | "crt"
                            | "verify"
                            | "sni"
                            | "alpn"
                            | "slowstart"
                            | "on-marked-down"
                            | "agent-port"
                            | "agent-inter"
                    );
                    if takes {
                        took = 2
                    }
                    m.leave(
                        &l.at,
                        &l.text(),
                        &format!("server parameter `{p}` has no equivalent here"),
                    );
                }
            }
            i += took;
        }
        if skip {
            m.leave(&l.at, &l.text(), "a disabled server is left out");
            continue;
        }
        if check {
            match &checked {
                None => checked = Some(h),
                Some(c) if *c != h => m.leave(&l.at, &l.text(), "checks are one setting for the whole pool; the first checked server's was taken"),
                Some(_) => {}
            }
        }
        match address(l.word(2), None) {
            Ok((addr, from)) => {
                b.addr = addr;
                b.resolved_from = from;
                pool.backends.push(b);
            }
            Err(e) => m.leave(&l.at, &l.text(), &e),
        }
    }
    if let Some(h) = checked {
        let base = pool.health.take().unwrap_or_default();
        pool.health = Some(Health {
            interval: h.interval.or(base.interval).or(Some("2s".into())),
            timeout: h.timeout.or(base.timeout),
            rise: h.rise.or(Some(2)),
            fall: h.fall.or(Some(3)),
        });
    }
    if back {
        m.pools.push(pool);
    }
    let Some(target) = default_backend else {
        if !listeners.is_empty() {
            m.leave(
                &s.at,
                &format!("frontend {}", s.name),
                "no default_backend: nothing to send clients to",
            );
        }
        return;
    };
    for (k, (l, addr)) in listeners.iter().enumerate() {
        let Some(bound) = bind(addr) else {
            m.leave(
                &l.at,
                &l.text(),
                "not an address and port switchyard can bind",
            );
            continue;
        };
        let mut li = ImportedListener {
            at: l.at.clone(),
            name: if k == 0 {
                fit(&s.name)
            } else {
                fit(&format!("{}-{}", s.name, k + 1))
            },
            bind: bound,
            pool: target.clone(),
            idle_timeout: idle.clone(),
            tls_inspect_timeout: inspect.clone(),
            allow: allow.clone(),
            deny: deny.clone(),
            routes: routes.clone(),
            ..ImportedListener::default()
        };
        let mut i = 2;
        while i < l.words.len() {
            match l.word(i) {
                "accept-proxy" => li.accept_proxy = true,
                // A Unix socket's file.
                "mode" | "user" | "uid" | "group" | "gid" if li.bind.starts_with("unix:/") => {
                    let key = match l.word(i) {
                        "mode" => "mode",
                        "user" | "uid" => "owner",
                        _ => "group",
                    };
                    li.file.push((key, l.word(i + 1).to_string()));
                    i += 1;
                }
                "ssl" => {}
                "crt" => {
                    let cert = l.word(i + 1).to_string();
                    // HAProxy's crt holds the key too (one PEM file).
                    li.tls = Some((cert.clone(), cert));
                    i += 1;
                }
                p => m.leave(
                    &l.at,
                    &l.text(),
                    &format!("bind parameter `{p}` has no equivalent"),
                ),
            }
            i += 1;
        }
        m.listeners.push(li);
    }
}
