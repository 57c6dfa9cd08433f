//! Turns [`RawConfig`] into [`Config`], collecting every problem with its position.
//!
//! It runs past 400 lines: it is the validator's frame (files, includes,
//! variables, problems) and the walk over the top-level and pool keys that
//! every other file's checks hang from.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use super::error::{Problems, SourceFile};
use super::raw::{RawAgent, RawBackend, RawConfig, RawHealth, RawPool, S};

/// A pool's fields that a Unix-socket backend constrains: `health`,
/// `agent`, `source`.
type UnixPoolFields<'a> = (
    Option<&'a S<RawHealth>>,
    Option<&'a S<RawAgent>>,
    Option<&'a S<String>>,
);
use super::*;

const MAX_WEIGHT: i64 = super::MAX_WEIGHT as i64;

pub(super) fn validate(source: &str, path: &Path) -> Result<Config, ConfigError> {
    let env = |name: &str| std::env::var(name).ok();
    let (expanded, main) = read(Problems::new(path, source), source, env)?;
    // The included files, read and parsed before anything is validated:
    // a problem in any of them names its own file and line.
    let (paths, mut found) = match &main.include {
        Some(patterns) => super::include::files(path, patterns),
        None => (Vec::new(), Vec::new()),
    };
    let mut texts = Vec::new();
    for f in &paths {
        match std::fs::read_to_string(f) {
            Ok(t) => texts.push(t),
            Err(e) => {
                let span = main.include.iter().flatten().next().map(|p| p.span());
                found.push((
                    span.unwrap_or_default(),
                    format!("cannot read {}: {e}", f.display()),
                ));
                texts.push(String::new());
            }
        }
    }
    if !found.is_empty() {
        let mut p = Problems::of(vec![SourceFile {
            path,
            text: source,
            expanded: Some(&expanded),
        }]);
        for (span, message) in found {
            p.push(span, "include", message);
        }
        return Err(p.into_error());
    }
    let mut parts = Vec::new();
    let mut failed = Vec::new();
    for (f, text) in paths.iter().zip(&texts) {
        match read(Problems::new(f, text), text, env) {
            Ok(part) => parts.push(part),
            // Each names its own file: the error's is the main one.
            Err(e) => failed.extend(e.problems.into_iter().map(|p| Problem {
                file: Some(f.to_path_buf()),
                ..p
            })),
        }
    }
    if !failed.is_empty() {
        return Err(ConfigError {
            file: path.to_path_buf(),
            problems: failed,
        });
    }
    let mut sources = vec![SourceFile {
        path,
        text: source,
        expanded: Some(&expanded),
    }];
    let (exps, raws): (Vec<super::vars::Expanded>, Vec<RawConfig>) = parts.into_iter().unzip();
    for ((f, text), exp) in paths.iter().zip(&texts).zip(&exps) {
        sources.push(SourceFile {
            path: f,
            text,
            expanded: Some(exp),
        });
    }
    let mut v = Validator {
        p: Problems::of(sources),
        path,
        warnings: Vec::new(),
    };
    let config = v.config(main, raws);
    if v.p.is_empty() {
        let mut config = config;
        config.warnings = v.warnings;
        config.included = paths;
        Ok(config)
    } else {
        Err(v.p.into_error())
    }
}

/// One file's text expanded and parsed; its problems are its own.
fn read(
    mut p: Problems<'_>,
    source: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(super::vars::Expanded, RawConfig), ConfigError> {
    let expanded = match super::vars::expand(source, env) {
        Ok(e) => e,
        Err(problems) => {
            for (span, message) in problems {
                p.push(span, "", message);
            }
            return Err(p.into_error());
        }
    };
    match toml::from_str(&expanded.text) {
        Ok(raw) => Ok((expanded, raw)),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let span = expanded.original(span.start)..expanded.original(span.end);
            p.push(span, "", e.message().trim().to_string());
            Err(p.into_error())
        }
    }
}

pub(super) struct Validator<'a> {
    pub(super) p: Problems<'a>,
    pub(super) path: &'a Path,
    warnings: Vec<String>,
}

impl Validator<'_> {
    pub(super) fn warn(&mut self, span: Range<usize>, key: &str, message: &str) {
        let at = self.p.location(span.start);
        self.warnings.push(format!("{at}: {key}: {message}"));
    }

    /// Makes `file` (0: the main one, then each included one in order)
    /// the one spans point into and relative paths start from.
    fn in_file(&mut self, file: usize) {
        self.p.current = file;
        self.path = self.p.path();
    }

    /// An included file's keys other than listeners and pools are problems.
    fn engine(&mut self, raw: Option<&S<String>>) -> crate::engine::EngineChoice {
        let Some(raw) = raw else {
            return Default::default();
        };
        crate::engine::EngineChoice::parse(raw.get_ref()).unwrap_or_else(|| {
            self.p.push(
                raw.span(),
                "engine".to_string(),
                format!(
                    "unknown engine `{}`; expected one of \"auto\", \"io_uring\", \"epoll\"",
                    raw.get_ref()
                ),
            );
            Default::default()
        })
    }

    fn only_listeners_and_pools(&mut self, part: &RawConfig) {
        let others = [
            ("admin", part.admin.as_ref().map(|a| a.span())),
            (
                "shutdown_grace",
                part.shutdown_grace.as_ref().map(|a| a.span()),
            ),
            ("state_dir", part.state_dir.as_ref().map(|a| a.span())),
            ("cluster", part.cluster.as_ref().map(|a| a.span())),
            ("workers", part.workers.as_ref().map(|a| a.span())),
            ("engine", part.engine.as_ref().map(|a| a.span())),
            ("log", part.log.as_ref().map(|a| a.span())),
            (
                "include",
                part.include
                    .as_ref()
                    .and_then(|i| i.first())
                    .map(|a| a.span()),
            ),
        ];
        for (key, span) in others {
            if let Some(span) = span {
                self.p.push(
                    span,
                    key,
                    "an included file holds [[listeners]] and [pools.NAME] only; this belongs in the main file",
                );
            }
        }
    }

    fn config(&mut self, raw: RawConfig, parts: Vec<RawConfig>) -> Config {
        let admin = raw.admin.map(|a| {
            let a = a.into_inner();
            AdminConfig {
                bind: a
                    .bind
                    .and_then(|b| self.addr(&b, "admin.bind"))
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901))),
                token_file: a.token_file.map(|t| {
                    // Checked here so that `switchyard check` catches it too.
                    match std::fs::read_to_string(t.get_ref()) {
                        Ok(text) if text.trim().is_empty() => self.p.push(
                            t.span(),
                            "admin.token_file",
                            format!("{} is empty", t.get_ref()),
                        ),
                        Ok(_) => {}
                        Err(e) => self.p.push(
                            t.span(),
                            "admin.token_file",
                            format!("cannot read {}: {e}", t.get_ref()),
                        ),
                    }
                    t.into_inner().into()
                }),
                protect_reads: a.protect_reads.unwrap_or(false),
                hosts: a
                    .hosts
                    .unwrap_or_default()
                    .into_iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                header_timeout: self
                    .positive_duration(a.header_timeout.as_ref(), "admin.header_timeout")
                    .unwrap_or(Duration::from_secs(10)),
                history_interval: self.duration_at_least(
                    a.history_interval.as_ref(),
                    "admin.history_interval",
                    (Duration::from_secs(5), Duration::from_millis(100)),
                    "must be at least 100ms",
                ),
            }
        });
        let shutdown_grace = self
            .duration(raw.shutdown_grace.as_ref(), "shutdown_grace")
            .unwrap_or(Duration::from_secs(30));

        let state_dir = self.state_dir(raw.state_dir.as_ref());
        let cluster = raw.cluster.as_ref().map(|c| self.cluster(c));
        let source = self.path.to_path_buf();
        // Every file's listeners and pools: the main file's first.
        let mut files = vec![(raw.pools, raw.listeners)];
        for (k, part) in parts.into_iter().enumerate() {
            self.in_file(k + 1);
            self.only_listeners_and_pools(&part);
            files.push((part.pools, part.listeners));
        }
        let mut pools = BTreeMap::new();
        // Where each pool was defined, to name both places of a second one.
        let mut defined: HashMap<String, String> = HashMap::new();
        let mut all_listeners = Vec::new();
        for (file, (raw_pools, raw_listeners)) in files.into_iter().enumerate() {
            self.in_file(file);
            for (name, pool) in raw_pools {
                let span = name.span();
                let name = name.into_inner();
                if let Some(why) = super::unfit_name(&name) {
                    self.p
                        .push(span.clone(), "pools", format!("a pool name {why}"));
                }
                let here = self.p.location(span.start);
                if let Some(first) = defined.insert(name.clone(), here) {
                    self.p.push(
                        span,
                        format!("pools.{name}"),
                        format!("pool `{name}` is defined twice: first at {first}"),
                    );
                    continue;
                }
                let cfg = self.pool(&name, pool);
                pools.insert(name, cfg);
            }
            all_listeners.push((file, raw_listeners));
        }

        let mut names: HashMap<String, String> = HashMap::new();
        let mut binds: HashMap<(Protocol, super::Endpoint), String> = HashMap::new();
        let mut listeners = Vec::new();
        for (file, raw_listeners) in all_listeners {
            self.in_file(file);
            for (i, l) in raw_listeners.into_iter().enumerate() {
                let l = l.into_inner();
                let key = format!("listeners[{i}]");
                if let Some(cfg) = self.listener(&key, l, &pools, &mut names, &mut binds) {
                    listeners.push(cfg);
                }
            }
        }
        self.in_file(0);
        Config {
            source,
            included: Vec::new(),
            workers: raw
                .workers
                .as_ref()
                .map(|w| self.count(Some(w), "workers", 1, 1024, 1) as usize),
            cpu_affinity: raw.cpu_affinity.unwrap_or(false),
            engine: self.engine(raw.engine.as_ref()),
            log: self.log(raw.log.as_ref()),
            admin,
            listeners,
            pools,
            shutdown_grace,
            state_dir,
            cluster,
            warnings: Vec::new(),
        }
    }

    /// A pool's `source`: a local IP address, or `"client"`.
    fn source(&mut self, v: Option<&S<String>>, key: &str) -> Option<super::ConnectFrom> {
        let v = v?;
        let text = v.get_ref();
        match text.parse::<std::net::IpAddr>() {
            Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => {
                Some(super::ConnectFrom::Address(ip))
            }
            _ if text == "client" => Some(super::ConnectFrom::Client),
            _ => {
                self.p.push(
                    v.span(),
                    format!("{key}.source"),
                    format!(
                        "`{text}` is neither a local IP address to connect from nor \"client\""
                    ),
                );
                None
            }
        }
    }

    fn pool(&mut self, name: &str, pool: S<RawPool>) -> PoolConfig {
        let key = format!("pools.{name}");
        let span = pool.span();
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
        let discovery = pool
            .discovery
            .as_ref()
            .and_then(|d| self.discovery(&format!("{key}.discovery"), d));
        match (&pool.backends, &pool.discovery) {
            (Some(b), None) if b.get_ref().is_empty() => self.p.push(
                b.span(),
                format!("{key}.backends"),
                "a pool needs at least one backend",
            ),
            (Some(b), Some(_)) => self.p.push(
                b.span(),
                format!("{key}.backends"),
                "a pool has either `backends` or `discovery`, not both",
            ),
            (None, None) => self.p.push(
                span.clone(),
                key.clone(),
                "a pool needs `backends` or `[pools.NAME.discovery]`",
            ),
            _ => {}
        }
        let mut backends = Vec::new();
        let mut seen = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        // Where each accepted backend stands: its index in the file, its span.
        let mut listed_spans: Vec<(usize, Range<usize>)> = Vec::new();
        let listed = pool.backends.map(|b| b.into_inner()).unwrap_or_default();
        for (i, b) in listed.into_iter().enumerate() {
            let bkey = format!("{key}.backends[{i}]");
            let span = b.span();
            if let Some(cfg) = self.backend(&bkey, b.into_inner(), strategy) {
                if seen.insert(cfg.addr, i).is_some() {
                    self.p
                        .push(span, bkey, format!("backend {} is listed twice", cfg.addr));
                    continue;
                }
                if let Some(first) = names.insert(cfg.name.clone(), i) {
                    self.p.push(
                        span,
                        format!("{bkey}.name"),
                        format!(
                            "name `{}` is taken by backends[{first}]; names are unique in a pool",
                            cfg.name
                        ),
                    );
                    continue;
                }
                backends.push(cfg);
                listed_spans.push((i, span));
            }
        }
        let backend_max_connections = pool.backend_max_connections.as_ref().and_then(|m| {
            NonZeroU32::new(self.count(
                Some(m),
                &format!("{key}.backend_max_connections"),
                1,
                u32::MAX as i64,
                1,
            ) as u32)
        });
        for b in &mut backends {
            b.max_connections = b.max_connections.or(backend_max_connections);
        }
        if strategy == StrategyKind::First && backend_max_connections.is_none() {
            let why =
                "strategy \"first\" fills each backend up to its max_connections before the next: \
                       set it here or the pool's backend_max_connections";
            if let (Some(_), Some(s)) = (&pool.discovery, &pool.strategy) {
                self.p.push(
                    s.span(),
                    format!("{key}.backend_max_connections"),
                    "strategy \"first\" fills each backend up to its max_connections before the next: \
                     a discovered pool needs backend_max_connections",
                );
            }
            for (b, (i, span)) in backends.iter().zip(&listed_spans) {
                if b.max_connections.is_none() {
                    self.p.push(
                        span.clone(),
                        format!("{key}.backends[{i}].max_connections"),
                        why,
                    );
                }
            }
        }
        let panic_below = pool.panic_threshold.as_ref().and_then(|t| {
            let v = *t.get_ref();
            if v > 0.0 && v <= 1.0 {
                Some((v * 1000.0).round().max(1.0) as u32)
            } else {
                self.p.push(
                    t.span(),
                    format!("{key}.panic_threshold"),
                    format!("a share of the pool's backends, above 0 and at most 1 (0.5 is half), not {v}"),
                );
                None
            }
        });
        let on_all_down = match pool.on_all_down.as_ref() {
            None => AllDown::Refuse,
            Some(v) => match v.get_ref().as_str() {
                "refuse" => AllDown::Refuse,
                "try_all" => AllDown::TryAll,
                other => {
                    self.p.push(
                        v.span(),
                        format!("{key}.on_all_down"),
                        format!("`{other}` is not a choice; expected \"refuse\" or \"try_all\""),
                    );
                    AllDown::Refuse
                }
            },
        };
        let retries =
            self.count(pool.retries.as_ref(), &format!("{key}.retries"), 0, 100, 2) as u32;
        let connect_timeout = self
            .positive_duration(
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
            .positive_duration(pool.fail_timeout.as_ref(), &format!("{key}.fail_timeout"))
            .unwrap_or(Duration::from_secs(10));
        let proxy_protocol = self.proxy_version(
            pool.proxy_protocol.as_ref(),
            &format!("{key}.proxy_protocol"),
        );
        let checks_send_header = pool
            .health
            .as_ref()
            .and_then(|h| h.get_ref().proxy_protocol.as_ref())
            .filter(|p| *p.get_ref())
            .map(|p| p.span());
        if let (Some(span), None) = (checks_send_header.clone(), proxy_protocol) {
            self.p.push(
                span,
                format!("{key}.health.proxy_protocol"),
                "checks send the pool's PROXY header: set the pool's proxy_protocol (\"v1\" or \"v2\")",
            );
        }
        if let Some(unix) = backends.iter().map(|b| b.addr).find(|a| a.unix().is_some()) {
            self.unix_pool(
                &key,
                (
                    pool.health.as_ref(),
                    pool.agent.as_ref(),
                    pool.source.as_ref(),
                ),
                unix,
            );
        }
        let mut health = match pool.health {
            Some(h) => self.health(&format!("{key}.health"), h),
            None => HealthConfig::default(),
        };
        if checks_send_header.is_some() {
            health.proxy_header = proxy_protocol;
        }
        let grace = self
            .duration(
                pool.on_backend_down_grace.as_ref(),
                &format!("{key}.on_backend_down_grace"),
            )
            .unwrap_or(Duration::ZERO);
        let on_backend_down = match pool.on_backend_down.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("keep") => None,
            Some("close") => Some(grace),
            Some(other) => {
                let span = pool
                    .on_backend_down
                    .as_ref()
                    .map(|v| v.span())
                    .unwrap_or_default();
                self.p.push(
                    span,
                    format!("{key}.on_backend_down"),
                    format!("`{other}` is not a choice; expected \"keep\" or \"close\""),
                );
                None
            }
        };
        let tls = pool.tls.as_ref().and_then(|t| self.pool_tls(&key, t));
        if tls.is_some() {
            for (v, name) in [
                (&pool.upload_rate, "upload_rate"),
                (&pool.download_rate, "download_rate"),
            ] {
                if let Some(v) = v {
                    self.warn(
                        v.span(),
                        &format!("{key}.{name}"),
                        "byte rates do not apply to connections that start TLS to the backends",
                    );
                }
            }
        }
        let balance = self.balance_options(
            (pool.hash_key.as_ref(), pool.table_size.as_ref()),
            &key,
            strategy,
            backends.len(),
        );
        PoolConfig {
            name: name.to_string(),
            strategy,
            backends,
            retries,
            connect_timeout,
            max_fails,
            fail_timeout,
            tcp_keepalive: self
                .keepalive(pool.tcp_keepalive.as_ref(), &format!("{key}.tcp_keepalive")),
            slow_start: self
                .duration(pool.slow_start.as_ref(), &format!("{key}.slow_start"))
                .unwrap_or(Duration::ZERO),
            on_backend_down,
            discovery,
            proxy_protocol,
            balance,
            health,
            tls,
            backend_max_connections,
            panic_below,
            on_all_down,
            source: self.source(pool.source.as_ref(), &key),
            rates: Rates {
                upload: self.byte_rate(pool.upload_rate.as_ref(), &format!("{key}.upload_rate")),
                download: self
                    .byte_rate(pool.download_rate.as_ref(), &format!("{key}.download_rate")),
                ..Rates::default()
            },
            agent: pool
                .agent
                .as_ref()
                .and_then(|a| self.agent(&format!("{key}.agent"), a)),
        }
    }

    /// What a pool with a Unix-socket backend (`unix`) cannot have: checks
    /// and agents at another port of its address, or UDP checks.
    fn unix_pool(
        &mut self,
        key: &str,
        (health, agent, source): UnixPoolFields<'_>,
        unix: super::Endpoint,
    ) {
        if let Some(h) = health {
            let h = h.get_ref();
            if let Some(k) = h.kind.as_ref().filter(|k| k.get_ref() == "udp") {
                self.p.push(
                    k.span(),
                    format!("{key}.health.kind"),
                    format!("a UDP check cannot reach the Unix socket {unix}"),
                );
            }
            if let Some(p) = &h.port {
                self.p.push(
                    p.span(),
                    format!("{key}.health.port"),
                    format!("the Unix socket {unix} has no other port to check"),
                );
            }
        }
        if let Some(a) = agent {
            self.p.push(
                a.span(),
                format!("{key}.agent"),
                format!("an agent answers at a port of its backend's IP address; the Unix socket {unix} has none"),
            );
        }
        if let Some(s) = source {
            self.warn(
                s.span(),
                &format!("{key}.source"),
                &format!(
                    "applies to IP backends only; the Unix socket {unix} is connected to locally"
                ),
            );
        }
    }

    fn backend(
        &mut self,
        key: &str,
        b: RawBackend,
        strategy: StrategyKind,
    ) -> Option<BackendConfig> {
        let addr = self.backend_addr(&b.addr, &format!("{key}.addr"));
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
        let priority = match (&b.priority, &b.backup) {
            (Some(p), Some(backup)) => {
                self.p.push(
                    backup.span(),
                    format!("{key}.backup"),
                    format!(
                        "a backend has `priority` ({}) or `backup`, not both: `backup = true` is the lowest group",
                        p.get_ref()
                    ),
                );
                0
            }
            (None, Some(backup)) if *backup.get_ref() => super::BACKUP,
            (p, _) => self.count(
                p.as_ref(),
                &format!("{key}.priority"),
                0,
                i64::from(super::MAX_PRIORITY),
                0,
            ) as u32,
        };
        let name = match &b.name {
            Some(n) => match super::unfit_name(n.get_ref()) {
                Some(why) => {
                    self.p.push(n.span(), format!("{key}.name"), why);
                    None
                }
                None => Some(n.get_ref().clone()),
            },
            None => None,
        };
        let addr = addr?;
        Some(BackendConfig {
            addr,
            name: name.unwrap_or_else(|| addr.to_string()),
            weight: NonZeroU32::new(weight.clamp(1, MAX_WEIGHT) as u32)?,
            max_connections: max_connections.and_then(NonZeroU32::new),
            priority,
        })
    }
}
