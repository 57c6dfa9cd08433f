//! Turns [`RawConfig`] into [`Config`], collecting every problem with its position.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use super::error::{line_col, Problems};
use super::raw::{RawBackend, RawConfig, RawHealth, RawListener, RawPool, S};
use super::*;

/// HAProxy's range; it also bounds the smooth weighted schedule built per pool.
const MAX_WEIGHT: i64 = 256;

pub(super) fn validate(source: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            let mut p = Problems::new(path, source);
            let span = e.span().unwrap_or(0..0);
            p.push(span, "", e.message().trim().to_string());
            return Err(p.into_error());
        }
    };
    let mut v = Validator {
        p: Problems::new(path, source),
        source,
        path,
        warnings: Vec::new(),
    };
    let config = v.config(raw);
    if v.p.is_empty() {
        let mut config = config;
        config.warnings = v.warnings;
        Ok(config)
    } else {
        Err(v.p.into_error())
    }
}

struct Validator<'a> {
    p: Problems<'a>,
    source: &'a str,
    path: &'a Path,
    warnings: Vec<String>,
}

impl Validator<'_> {
    fn warn(&mut self, span: Range<usize>, key: &str, message: &str) {
        let (line, col) = line_col(self.source, span.start);
        self.warnings.push(format!(
            "{}:{line}:{col}: {key}: {message}",
            self.path.display()
        ));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let admin = raw.admin.map(|a| {
            let a = a.into_inner();
            AdminConfig {
                bind: a
                    .bind
                    .and_then(|b| self.addr(&b, "admin.bind"))
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901))),
                token_file: a.token_file.map(|t| t.into_inner().into()),
                protect_reads: a.protect_reads.unwrap_or(false),
            }
        });
        let shutdown_grace = self
            .duration(raw.shutdown_grace.as_ref(), "shutdown_grace")
            .unwrap_or(Duration::from_secs(30));

        let mut pools = BTreeMap::new();
        for (name, pool) in raw.pools {
            let span = name.span();
            let name = name.into_inner();
            if name.is_empty() {
                self.p.push(span, "pools", "a pool name must not be empty");
            }
            let cfg = self.pool(&name, pool);
            pools.insert(name, cfg);
        }

        let mut names: HashMap<String, usize> = HashMap::new();
        let mut binds: HashMap<(Protocol, SocketAddr), String> = HashMap::new();
        let mut listeners = Vec::new();
        for (i, l) in raw.listeners.into_iter().enumerate() {
            let l = l.into_inner();
            let key = format!("listeners[{i}]");
            if let Some(cfg) = self.listener(&key, l, &pools, &mut names, &mut binds) {
                listeners.push(cfg);
            }
        }
        Config {
            source: self.path.to_path_buf(),
            admin,
            listeners,
            pools,
            shutdown_grace,
            warnings: Vec::new(),
        }
    }

    fn listener(
        &mut self,
        key: &str,
        l: RawListener,
        pools: &BTreeMap<String, PoolConfig>,
        names: &mut HashMap<String, usize>,
        binds: &mut HashMap<(Protocol, SocketAddr), String>,
    ) -> Option<ListenerConfig> {
        let name = l.name.get_ref().clone();
        if name.is_empty() {
            self.p
                .push(l.name.span(), format!("{key}.name"), "must not be empty");
        }
        if names.insert(name.clone(), 0).is_some() {
            self.p.push(
                l.name.span(),
                format!("{key}.name"),
                format!("listener name `{name}` is used twice"),
            );
        }
        let protocol = match l.protocol.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(other) => {
                let span = l.protocol.as_ref().map(|p| p.span()).unwrap_or_default();
                self.p.push(
                    span,
                    format!("{key}.protocol"),
                    format!("unknown protocol `{other}`; expected \"tcp\" or \"udp\""),
                );
                Protocol::Tcp
            }
        };
        let bind = self.addr(&l.bind, &format!("{key}.bind"));
        // Port 0 asks the system for a fresh port each time, so it never clashes.
        if let Some(bind) = bind.filter(|b| b.port() != 0) {
            if let Some(other) = binds.insert((protocol, bind), name.clone()) {
                self.p.push(
                    l.bind.span(),
                    format!("{key}.bind"),
                    format!(
                        "{} {bind} is already bound by listener `{other}`",
                        protocol.as_str()
                    ),
                );
            }
        }
        if !pools.contains_key(l.pool.get_ref()) {
            self.p.push(
                l.pool.span(),
                format!("{key}.pool"),
                format!(
                    "no pool named `{}` (define [pools.{}])",
                    l.pool.get_ref(),
                    l.pool.get_ref()
                ),
            );
        }
        let default_idle = match protocol {
            Protocol::Tcp => Duration::from_secs(3600),
            Protocol::Udp => Duration::from_secs(30),
        };
        let idle_timeout = self
            .duration(l.idle_timeout.as_ref(), &format!("{key}.idle_timeout"))
            .unwrap_or(default_idle);
        let max_sessions = self.count(
            l.max_sessions.as_ref(),
            &format!("{key}.max_sessions"),
            1,
            1 << 24,
            65536,
        );
        let max_connections = self.count(
            l.max_connections.as_ref(),
            &format!("{key}.max_connections"),
            1,
            1 << 24,
            65536,
        );
        let backlog = self.count(
            l.backlog.as_ref(),
            &format!("{key}.backlog"),
            1,
            65535,
            1024,
        );
        if protocol == Protocol::Udp && l.max_connections.is_some() {
            let span = l
                .max_connections
                .as_ref()
                .map(|m| m.span())
                .unwrap_or_default();
            self.warn(
                span,
                &format!("{key}.max_connections"),
                "applies to TCP only; ignored on a UDP listener",
            );
        }
        Some(ListenerConfig {
            name,
            protocol,
            bind: bind?,
            pool: l.pool.into_inner(),
            idle_timeout,
            max_sessions: NonZeroUsize::new(max_sessions as usize)?,
            max_connections: NonZeroUsize::new(max_connections as usize)?,
            access_log: l.access_log.unwrap_or(true),
            backlog: backlog as u32,
            reuse_port: l.reuse_port.unwrap_or(false),
            allow: self.networks(l.allow.as_deref(), &format!("{key}.allow")),
            deny: self.networks(l.deny.as_deref(), &format!("{key}.deny")),
        })
    }

    fn pool(&mut self, name: &str, pool: S<RawPool>) -> PoolConfig {
        let key = format!("pools.{name}");
        let pool = pool.into_inner();
        let strategy = match pool.strategy.as_ref() {
            None => StrategyKind::RoundRobin,
            Some(s) => match StrategyKind::from_name(s.get_ref()) {
                Some(k) => k,
                None => {
                    self.p.push(
                        s.span(),
                        format!("{key}.strategy"),
                        format!(
                            "unknown strategy `{}`; expected one of {}",
                            s.get_ref(),
                            StrategyKind::ALL
                                .iter()
                                .map(|k| format!("\"{}\"", k.name()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    StrategyKind::RoundRobin
                }
            },
        };
        let backends_span = pool.backends.span();
        if pool.backends.get_ref().is_empty() {
            self.p.push(
                backends_span.clone(),
                format!("{key}.backends"),
                "a pool needs at least one backend",
            );
        }
        let mut backends = Vec::new();
        let mut seen = HashMap::new();
        for (i, b) in pool.backends.into_inner().into_iter().enumerate() {
            let bkey = format!("{key}.backends[{i}]");
            let span = b.span();
            if let Some(cfg) = self.backend(&bkey, b.into_inner(), strategy) {
                if seen.insert(cfg.addr, i).is_some() {
                    self.p
                        .push(span, bkey, format!("backend {} is listed twice", cfg.addr));
                    continue;
                }
                backends.push(cfg);
            }
        }
        let retries =
            self.count(pool.retries.as_ref(), &format!("{key}.retries"), 0, 100, 2) as u32;
        let connect_timeout = self
            .duration(
                pool.connect_timeout.as_ref(),
                &format!("{key}.connect_timeout"),
            )
            .unwrap_or(Duration::from_secs(5));
        let max_fails = self.count(
            pool.max_fails.as_ref(),
            &format!("{key}.max_fails"),
            0,
            1000,
            3,
        ) as u32;
        let fail_timeout = self
            .duration(pool.fail_timeout.as_ref(), &format!("{key}.fail_timeout"))
            .unwrap_or(Duration::from_secs(10));
        let health = match pool.health {
            Some(h) => self.health(&format!("{key}.health"), h),
            None => HealthConfig::default(),
        };
        PoolConfig {
            name: name.to_string(),
            strategy,
            backends,
            retries,
            connect_timeout,
            max_fails,
            fail_timeout,
            health,
        }
    }

    fn backend(
        &mut self,
        key: &str,
        b: RawBackend,
        strategy: StrategyKind,
    ) -> Option<BackendConfig> {
        let addr = self.addr(&b.addr, &format!("{key}.addr"));
        let weight = match &b.weight {
            None => 1,
            Some(w) => {
                let value = *w.get_ref();
                if !(1..=MAX_WEIGHT).contains(&value) {
                    self.p.push(
                        w.span(),
                        format!("{key}.weight"),
                        format!("weight must be from 1 to {MAX_WEIGHT}, not {value} (to take a backend out, drain it)"),
                    );
                } else if !strategy.uses_weights() {
                    self.warn(
                        w.span(),
                        &format!("{key}.weight"),
                        &format!("strategy \"{}\" ignores weights", strategy.name()),
                    );
                }
                value
            }
        };
        let max_connections = b.max_connections.as_ref().map(|m| {
            self.count(
                Some(m),
                &format!("{key}.max_connections"),
                1,
                u32::MAX as i64,
                1,
            ) as u32
        });
        Some(BackendConfig {
            addr: addr?,
            weight: NonZeroU32::new(weight.clamp(1, MAX_WEIGHT) as u32)?,
            max_connections: max_connections.and_then(NonZeroU32::new),
        })
    }

    fn health(&mut self, key: &str, h: S<RawHealth>) -> HealthConfig {
        let h = h.into_inner();
        let d = HealthConfig::default();
        let interval = self
            .duration(h.interval.as_ref(), &format!("{key}.interval"))
            .unwrap_or(d.interval);
        let timeout = self
            .duration(h.timeout.as_ref(), &format!("{key}.timeout"))
            .unwrap_or(d.timeout);
        let rise = self.count(h.rise.as_ref(), &format!("{key}.rise"), 1, 1000, 2) as u32;
        let fall = self.count(h.fall.as_ref(), &format!("{key}.fall"), 1, 1000, 3) as u32;
        let port = h
            .port
            .as_ref()
            .map(|p| self.count(Some(p), &format!("{key}.port"), 1, 65535, 1) as u16);
        let initial_up = match h.initial.as_ref().map(|i| i.get_ref().as_str()) {
            None | Some("up") => true,
            Some("down") => false,
            Some(other) => {
                let span = h.initial.as_ref().map(|i| i.span()).unwrap_or_default();
                self.p.push(
                    span,
                    format!("{key}.initial"),
                    format!("`{other}` is neither \"up\" nor \"down\""),
                );
                true
            }
        };
        if interval.is_zero() {
            let span = h.interval.as_ref().map(|i| i.span()).unwrap_or_default();
            self.p
                .push(span, format!("{key}.interval"), "must be more than zero");
        }
        let send = self.bytes(h.send.as_ref(), &format!("{key}.send"));
        let expect = self.bytes(h.expect.as_ref(), &format!("{key}.expect"));
        let kind_name = h
            .kind
            .as_ref()
            .map(|k| k.get_ref().as_str())
            .unwrap_or("tcp");
        let kind_span = h.kind.as_ref().map(|k| k.span()).unwrap_or_default();
        let only_for = |field: &Option<S<String>>, name: &str, kinds: &str, v: &mut Self| {
            if let Some(f) = field {
                v.p.push(
                    f.span(),
                    format!("{key}.{name}"),
                    format!("only applies to kind = {kinds}"),
                );
            }
        };
        let check = match kind_name {
            "none" => CheckKind::None,
            "tcp" => {
                only_for(&h.path, "path", "\"http\"", self);
                only_for(&h.host, "host", "\"http\"", self);
                CheckKind::Tcp { send, expect }
            }
            "http" => {
                only_for(&h.send, "send", "\"tcp\" or \"udp\"", self);
                only_for(&h.expect, "expect", "\"tcp\" or \"udp\"", self);
                let path = h
                    .path
                    .as_ref()
                    .map(|p| p.get_ref().clone())
                    .unwrap_or_else(|| "/".into());
                if !path.starts_with('/') {
                    let span = h.path.as_ref().map(|p| p.span()).unwrap_or_default();
                    self.p
                        .push(span, format!("{key}.path"), "must start with /");
                }
                let expect_status = self.count(
                    h.expect_status.as_ref(),
                    &format!("{key}.expect_status"),
                    100,
                    599,
                    200,
                ) as u16;
                CheckKind::Http {
                    path,
                    expect_status,
                    host: h.host.as_ref().map(|x| x.get_ref().clone()),
                }
            }
            "udp" => {
                only_for(&h.path, "path", "\"http\"", self);
                only_for(&h.host, "host", "\"http\"", self);
                match send {
                    Some(send) => CheckKind::Udp { send, expect },
                    None => {
                        self.p.push(
                            kind_span.clone(),
                            format!("{key}.send"),
                            "kind = \"udp\" needs `send`",
                        );
                        CheckKind::None
                    }
                }
            }
            other => {
                self.p.push(
                    kind_span,
                    format!("{key}.kind"),
                    format!(
                        "unknown kind `{other}`; expected \"tcp\", \"http\", \"udp\" or \"none\""
                    ),
                );
                CheckKind::None
            }
        };
        HealthConfig {
            check,
            interval,
            timeout,
            rise,
            fall,
            port,
            initial_up,
        }
    }

    fn networks(&mut self, list: Option<&[S<String>]>, key: &str) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, v) in list.unwrap_or_default().iter().enumerate() {
            let text = v.get_ref().trim();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => out.push(net),
                Err(_) => self.p.push(
                    v.span(),
                    format!("{key}[{i}]"),
                    format!("`{text}` is not an address or network (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        out
    }

    fn bytes(&mut self, v: Option<&S<String>>, key: &str) -> Option<Vec<u8>> {
        let v = v?;
        match parse_bytes(v.get_ref()) {
            Ok(b) if b.is_empty() => {
                self.p.push(v.span(), key, "must not be empty");
                None
            }
            Ok(b) => Some(b),
            Err(e) => {
                self.p.push(v.span(), key, e);
                None
            }
        }
    }

    fn addr(&mut self, v: &S<String>, key: &str) -> Option<SocketAddr> {
        let text = v.get_ref();
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        let message = match text.rsplit_once(':') {
            None => format!("`{text}` is not an address; expected ip:port or host:port"),
            Some((host, port)) if host.is_empty() || port.parse::<u16>().is_err() => {
                format!("`{text}` is not an address; expected ip:port or host:port")
            }
            Some(_) => match text.to_socket_addrs() {
                Ok(mut addrs) => match addrs.next() {
                    Some(a) => return Some(a),
                    None => format!("`{text}` resolves to no address"),
                },
                Err(e) => format!("cannot resolve `{text}`: {e}"),
            },
        };
        self.p.push(v.span(), key, message);
        None
    }

    fn duration(&mut self, v: Option<&S<String>>, key: &str) -> Option<Duration> {
        let v = v?;
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.p.push(
                    v.span(),
                    key,
                    format!(
                        "`{}` is not a duration ({e}); write e.g. \"250ms\" or \"30s\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn count(&mut self, v: Option<&S<i64>>, key: &str, min: i64, max: i64, default: i64) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            n
        } else {
            self.p.push(
                v.span(),
                key,
                format!("must be from {min} to {max}, not {n}"),
            );
            default
        }
    }
}
