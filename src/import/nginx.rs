//! nginx's `stream {}`: upstreams as pools, servers' `listen`s as
//! listeners, `ssl_preread` maps as SNI routes.
//!
//! It runs past 400 lines: nginx's grammar and the mapping of each of its
//! stream directives are one reading of one file.

use std::collections::HashMap;

use super::{
    address, bind, duration, fit, ImportedBackend, ImportedListener, ImportedPool, Model, WrittenAt,
};

/// One directive and, for a block, what it holds.
#[derive(Debug)]
struct Directive {
    line: usize,
    name: String,
    args: Vec<String>,
    block: Option<Vec<Directive>>,
}

impl Directive {
    fn text(&self) -> String {
        let mut t = self.name.clone();
        for a in &self.args {
            t.push(' ');
            t.push_str(a);
        }
        if self.block.is_some() {
            t.push_str(" { ... }");
        } else {
            t.push(';');
        }
        t
    }
}

enum Token {
    Word(String, usize),
    Open(usize),
    Close(usize),
    End(usize),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '{' => {
                out.push(Token::Open(line));
                chars.next();
            }
            '}' => {
                out.push(Token::Close(line));
                chars.next();
            }
            ';' => {
                out.push(Token::End(line));
                chars.next();
            }
            '"' | '\'' => {
                let quote = c;
                chars.next();
                let start = line;
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("line {start}: a quoted string never ends")),
                        Some('\\') => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        Some(c) if c == quote => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            word.push(c)
                        }
                    }
                }
                out.push(Token::Word(word, start));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "{};".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Token::Word(word, line));
            }
        }
    }
    Ok(out)
}

fn parse(
    tokens: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
    nested: bool,
) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    loop {
        let (name, line) = match tokens.next() {
            None if nested => return Err("a block never ends (a `}` is missing)".into()),
            None => return Ok(out),
            Some(Token::Close(_)) if nested => return Ok(out),
            Some(Token::Close(l)) => return Err(format!("line {l}: a `}}` closes nothing")),
            Some(Token::Word(w, l)) => (w, l),
            Some(Token::Open(l)) | Some(Token::End(l)) => {
                return Err(format!("line {l}: a directive name was expected"))
            }
        };
        let mut args = Vec::new();
        loop {
            match tokens.next() {
                Some(Token::Word(w, _)) => args.push(w),
                Some(Token::End(_)) => {
                    out.push(Directive {
                        line,
                        name,
                        args,
                        block: None,
                    });
                    break;
                }
                Some(Token::Open(_)) => {
                    let block = parse(tokens, true)?;
                    out.push(Directive {
                        line,
                        name,
                        args,
                        block: Some(block),
                    });
                    break;
                }
                Some(Token::Close(l)) => return Err(format!("line {l}: `{name}` needs a `;`")),
                None => return Err(format!("line {line}: `{name}` never ends")),
            }
        }
    }
}

/// A map's entries (server name -> value) and its default.
type NameMap = (Vec<(String, String)>, Option<String>);

struct NginxReader<'a> {
    file: &'a str,
    m: Model,
    /// `map $ssl_preread_server_name $var {}`: var -> (name -> value, default).
    maps: HashMap<String, NameMap>,
    resolver: Option<String>,
}

impl NginxReader<'_> {
    fn at(&self, d: &Directive) -> WrittenAt {
        WrittenAt(format!("{}:{}", self.file, d.line))
    }

    fn leave(&mut self, d: &Directive, why: &str) {
        let at = self.at(d);
        self.m.leave(&at, &d.text(), why);
    }
}

pub(super) fn read(file: &str, text: &str) -> Result<Model, String> {
    let mut it = tokens(text)
        .map_err(|e| format!("{file}: {e}"))?
        .into_iter()
        .peekable();
    let top = parse(&mut it, false).map_err(|e| format!("{file}: {e}"))?;
    let mut r = NginxReader {
        file,
        m: Model::default(),
        maps: HashMap::new(),
        resolver: None,
    };
    for d in &top {
        match (d.name.as_str(), &d.block) {
            ("stream", Some(body)) => stream(&mut r, body),
            ("worker_processes", None) => match d.args.first().map(String::as_str) {
                Some("auto") => {}
                Some(n) if n.parse::<u32>().is_ok() => r.m.workers = n.parse().ok(),
                _ => r.leave(d, "not a number of workers"),
            },
            ("http", Some(_)) => r.leave(d, "HTTP is not layer 4: switchyard relays TCP and UDP"),
            ("mail", Some(_)) => r.leave(d, "mail proxying is not imported"),
            (
                "user"
                | "pid"
                | "error_log"
                | "events"
                | "include"
                | "load_module"
                | "worker_rlimit_nofile"
                | "daemon"
                | "master_process",
                _,
            ) => r.leave(d, "process settings: systemd and the unit file cover them"),
            _ => r.leave(d, "no equivalent"),
        }
    }
    Ok(r.m)
}

fn stream(r: &mut NginxReader, body: &[Directive]) {
    // Maps, upstreams and stream-wide settings first: servers refer to them.
    let mut proxy_timeout = None;
    let mut connect_timeout = None;
    for d in body {
        match (d.name.as_str(), &d.block) {
            ("map", Some(entries)) => map(r, d, entries),
            ("upstream", Some(servers)) => upstream(r, d, servers),
            ("resolver", None) => {
                r.resolver = d.args.iter().find(|a| !a.contains('=')).cloned();
            }
            ("proxy_timeout", None) => {
                proxy_timeout = d.args.first().and_then(|t| duration(t, "s"))
            }
            ("proxy_connect_timeout", None) => {
                connect_timeout = d.args.first().and_then(|t| duration(t, "s"))
            }
            _ => {}
        }
    }
    for d in body {
        match (d.name.as_str(), &d.block) {
            ("server", Some(inner)) => server(r, d, inner, &proxy_timeout, &connect_timeout),
            ("map" | "upstream", Some(_))
            | ("resolver" | "proxy_timeout" | "proxy_connect_timeout", None) => {}
            ("log_format" | "access_log" | "error_log" | "resolver_timeout", _) => r.leave(
                d,
                "switchyard's access log is JSON lines on stderr (or off per listener)",
            ),
            _ => r.leave(d, "no equivalent"),
        }
    }
}

fn map(r: &mut NginxReader, d: &Directive, entries: &[Directive]) {
    if d.args.first().map(String::as_str) != Some("$ssl_preread_server_name") || d.args.len() != 2 {
        return r.leave(d, "only maps of $ssl_preread_server_name become SNI routes");
    }
    let var = d.args[1].clone();
    let mut names = Vec::new();
    let mut default = None;
    for e in entries {
        match (e.name.as_str(), e.args.as_slice()) {
            ("default", [v]) => default = Some(v.clone()),
            ("hostnames", []) => {}
            (n, [v]) if !n.starts_with('~') => names.push((n.to_string(), v.clone())),
            _ => r.leave(
                e,
                "regular expressions and other map entries are not SNI names",
            ),
        }
    }
    r.maps.insert(var, (names, default));
}

fn upstream(r: &mut NginxReader, d: &Directive, servers: &[Directive]) {
    let mut pool = ImportedPool {
        at: r.at(d),
        name: fit(d.args.first().map(String::as_str).unwrap_or("upstream")),
        ..ImportedPool::default()
    };
    let mut fails: Option<(u32, String)> = None;
    for s in servers {
        match s.name.as_str() {
            "server" => {
                let Some(target) = s.args.first() else {
                    r.leave(s, "a server without an address");
                    continue;
                };
                let mut b = ImportedBackend::default();
                let mut max_fails = 1;
                let mut fail_timeout = "10s".to_string();
                let mut skip = false;
                for p in &s.args[1..] {
                    let (k, v) = p.split_once('=').unwrap_or((p.as_str(), ""));
                    match k {
                        "weight" => b.weight = v.parse().ok(),
                        "max_fails" => max_fails = v.parse().unwrap_or(1),
                        "fail_timeout" => fail_timeout = duration(v, "s").unwrap_or(fail_timeout),
                        "backup" => b.backup = true,
                        "max_conns" => b.max_connections = v.parse().ok().filter(|n| *n > 0),
                        "down" => skip = true,
                        "resolve" => {
                            // A name followed through DNS: discovery.
                            match target.rsplit_once(':') {
                                Some((host, port)) if port.parse::<u16>().is_ok() => {
                                    pool.dns = Some((
                                        "dns".into(),
                                        host.to_string(),
                                        port.parse().ok(),
                                        r.resolver.as_ref().map(|a| {
                                            if a.contains(':') {
                                                a.clone()
                                            } else {
                                                format!("{a}:53")
                                            }
                                        }),
                                    ))
                                }
                                _ => r.leave(s, "resolve without a port"),
                            }
                            skip = true;
                        }
                        _ => r.leave(s, &format!("server parameter `{p}` has no equivalent")),
                    }
                }
                if skip {
                    if s.args.iter().any(|a| a == "down") {
                        r.leave(s, "a server marked down is left out");
                    }
                    continue;
                }
                match fails.as_ref() {
                    None => fails = Some((max_fails, fail_timeout)),
                    Some(f) if *f != (max_fails, fail_timeout.clone()) => r.leave(
                        s,
                        "max_fails and fail_timeout are one setting for the whole pool; the first server's was taken",
                    ),
                    Some(_) => {}
                }
                match address(target, Some(80)) {
                    Ok((addr, from)) => {
                        b.addr = addr;
                        b.resolved_from = from;
                        pool.backends.push(b);
                    }
                    Err(e) => r.leave(s, &e),
                }
            }
            "hash" => match s.args.first().map(String::as_str) {
                Some("$remote_addr") | Some("$binary_remote_addr") => {
                    pool.strategy = Some("maglev".into())
                }
                _ => r.leave(
                    s,
                    "only a hash of the client's address ($remote_addr) is imported (as maglev)",
                ),
            },
            "least_conn" => pool.strategy = Some("least_conn".into()),
            "random" => {
                pool.strategy = Some(if s.args.first().map(String::as_str) == Some("two") {
                    "p2c".into()
                } else {
                    "random".into()
                })
            }
            "zone" | "keepalive" => r.leave(
                s,
                "not needed: switchyard keeps its pool state in the process",
            ),
            _ => r.leave(s, "no equivalent"),
        }
    }
    if let Some((n, t)) = fails {
        pool.max_fails = Some(n);
        pool.fail_timeout = Some(t);
    }
    r.m.pools.push(pool);
}

fn server(
    r: &mut NginxReader,
    d: &Directive,
    body: &[Directive],
    proxy_timeout: &Option<String>,
    connect_timeout: &Option<String>,
) {
    let mut listens = Vec::new();
    let mut target = None;
    let mut idle = proxy_timeout.clone();
    let mut connect = connect_timeout.clone();
    let mut send_proxy = false;
    let mut rules: Vec<(bool, String)> = Vec::new();
    let (mut cert, mut key) = (None, None);
    let mut preread = false;
    let mut preread_timeout = None;
    let mut leave_from = None;
    for s in body {
        match s.name.as_str() {
            "listen" => listens.push(s),
            "proxy_pass" => target = s.args.first().cloned(),
            "proxy_timeout" => idle = s.args.first().and_then(|t| duration(t, "s")),
            "proxy_connect_timeout" => connect = s.args.first().and_then(|t| duration(t, "s")),
            "proxy_protocol" => send_proxy = s.args.first().map(String::as_str) == Some("on"),
            "allow" | "deny" => match s.args.first() {
                Some(a) => rules.push((s.name == "allow", a.clone())),
                None => r.leave(s, "no address"),
            },
            "ssl_certificate" => cert = s.args.first().cloned(),
            "ssl_certificate_key" => key = s.args.first().cloned(),
            "ssl_preread" => preread = s.args.first().map(String::as_str) == Some("on"),
            "preread_timeout" => preread_timeout = s.args.first().and_then(|t| duration(t, "s")),
            // proxy_bind ADDR | $remote_addr transparent
            "proxy_bind" => match s.args.as_slice() {
                [a, t] if a == "$remote_addr" && t == "transparent" => {
                    leave_from = Some("client".into())
                }
                [a] if a.parse::<std::net::IpAddr>().is_ok() => leave_from = Some(a.clone()),
                _ => r.leave(
                    s,
                    "only an IP address, or $remote_addr transparent, is imported",
                ),
            },
            _ => r.leave(s, "no equivalent"),
        }
    }
    let Some(target) = target else {
        return r.leave(d, "a server without proxy_pass");
    };
    // Where it goes: an upstream, a map of server names, or an address.
    let mut routes = Vec::new();
    let pool = if let Some(var) = target.strip_prefix('$').map(|v| format!("${v}")) {
        let Some((names, default)) = r.maps.get(&var).cloned() else {
            return r.leave(
                d,
                &format!("proxy_pass {target}: only a map of $ssl_preread_server_name is imported"),
            );
        };
        if !preread {
            r.leave(
                d,
                "a map of server names without ssl_preread on: routes imported anyway",
            );
        }
        let mut by_pool: Vec<(String, Vec<String>)> = Vec::new();
        for (name, value) in names {
            let pool = pool_for(r, d, &value);
            match by_pool.iter_mut().find(|(p, _)| *p == pool) {
                Some((_, list)) => list.push(name.trim_start_matches('.').to_string()),
                None => by_pool.push((pool, vec![name.trim_start_matches('.').to_string()])),
            }
        }
        routes = by_pool.into_iter().map(|(p, n)| (n, p)).collect();
        match default {
            Some(v) => pool_for(r, d, &v),
            None => {
                r.leave(
                    d,
                    "a map without a default: the first route's pool takes the rest",
                );
                routes.first().map(|(_, p)| p.clone()).unwrap_or_default()
            }
        }
    } else {
        pool_for(r, d, &target)
    };
    if let Some(p) = r.m.pool_mut(&pool) {
        if send_proxy {
            p.proxy_protocol = Some("v1".into());
        }
        if connect.is_some() {
            p.connect_timeout = connect.clone();
        }
        if leave_from.is_some() {
            p.source = leave_from;
        }
    }
    // allow/deny in order, first match wins: `allow A; deny all;` is an
    // allow-list; `deny A; allow all;` (or no `all`) a deny-list.
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    match rules.last() {
        Some((false, all)) if all == "all" => {
            for (ok, a) in &rules[..rules.len() - 1] {
                if *ok {
                    allow.push(a.clone());
                } else {
                    r.leave(d, &format!("deny {a} before an allow-list: refused by the allow-list anyway unless allowed"));
                }
            }
        }
        _ => {
            for (ok, a) in &rules {
                match (ok, a.as_str()) {
                    (true, "all") => {}
                    (false, a) => deny.push(a.to_string()),
                    (true, a) => r.leave(
                        d,
                        &format!("allow {a} before a deny-list has no equivalent"),
                    ),
                }
            }
        }
    }
    for l in listens {
        let mut li = ImportedListener {
            at: r.at(l),
            pool: pool.clone(),
            idle_timeout: idle.clone(),
            tls_inspect_timeout: preread_timeout.clone(),
            allow: allow.clone(),
            deny: deny.clone(),
            routes: routes.clone(),
            ..ImportedListener::default()
        };
        let Some(addr) = l.args.first().and_then(|a| bind(a)) else {
            r.leave(
                l,
                "not an address and port, nor a Unix socket, switchyard can bind",
            );
            continue;
        };
        li.bind = addr;
        for p in &l.args[1..] {
            match p.as_str() {
                "udp" => li.udp = true,
                "proxy_protocol" => li.accept_proxy = true,
                "ssl" => match (&cert, &key) {
                    (Some(c), Some(k)) => li.tls = Some((c.clone(), k.clone())),
                    _ => r.leave(l, "ssl without ssl_certificate and ssl_certificate_key"),
                },
                "reuseport" => {}
                _ => r.leave(l, &format!("listen parameter `{p}` has no equivalent")),
            }
        }
        let port = match li.bind.strip_prefix("unix:") {
            // A Unix socket: named by its file's stem.
            Some(path) => format!(
                "unix-{}",
                std::path::Path::new(path.trim_start_matches('@'))
                    .file_stem()
                    .map_or("socket".into(), |s| s.to_string_lossy())
            ),
            None => li
                .bind
                .rsplit_once(':')
                .map_or("listener", |(_, p)| p)
                .to_string(),
        };
        li.name = fit(&format!(
            "stream-{port}{}",
            if li.udp { "-udp" } else { "" }
        ));
        let mut n = 2;
        let base = li.name.clone();
        while r.m.listeners.iter().any(|x| x.name == li.name) {
            li.name = format!("{base}-{n}");
            n += 1;
        }
        r.m.listeners.push(li);
    }
}

/// The pool a `proxy_pass` value names: an upstream, else a pool made for
/// the address.
fn pool_for(r: &mut NginxReader, d: &Directive, target: &str) -> String {
    let name = fit(target);
    if r.m.pools.iter().any(|p| p.name == name) {
        return name;
    }
    match address(target, None) {
        Ok((addr, from)) => {
            r.m.pools.push(ImportedPool {
                at: r.at(d),
                name: name.clone(),
                backends: vec![ImportedBackend {
                    addr,
                    resolved_from: from,
                    ..ImportedBackend::default()
                }],
                max_fails: Some(1),
                fail_timeout: Some("10s".into()),
                ..ImportedPool::default()
            });
        }
        Err(e) => r.leave(d, &format!("proxy_pass {target}: {e}")),
    }
    name
}
