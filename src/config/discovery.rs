//! Backends found at run time instead of listed: `[pools.NAME.discovery]`
//! (DNS A/AAAA, DNS SRV, an etcd prefix), where discovered sets are kept
//! (`state_dir`), and the fleet's own registry (`[cluster]`).
//!
//! It runs past 400 lines: it validates `[pools.NAME.discovery]` for four
//! sources and `[cluster]`, which share their etcd keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use super::raw::{RawCluster, RawDiscovery, S};
use super::validate::Validator;
use crate::tls::{MinVersion, Originator, OriginatorSettings};

/// Where a pool's backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `kind = "dns"`: every A and AAAA record of `name`, each with `port`.
    Dns {
        /// The name looked up.
        name: String,
        /// The port of every backend.
        port: u16,
        /// `resolver`: a name server to ask; default the system's.
        resolver: Option<SocketAddr>,
    },
    /// `kind = "dns_srv"`: the SRV records of `name`; target, port and
    /// weight from each.
    DnsSrv {
        /// The SRV name (`_service._proto.domain`).
        name: String,
        /// `resolver`, as for `dns`.
        resolver: Option<SocketAddr>,
    },
    /// `kind = "etcd"`: each key under `prefix` is one backend.
    Etcd {
        /// `endpoints`, as `host:port` (from `http://host:port` or
        /// `https://host:port`).
        endpoints: Vec<String>,
        /// `prefix`.
        prefix: String,
        /// For `https://` endpoints: the client side built from `ca`,
        /// `cert` and `key`.
        tls: Option<Arc<Originator>>,
    },
    /// `kind = "zookeeper"`: each child of `path` is one backend.
    ZooKeeper(ZooKeeper),
}

/// `kind = "zookeeper"`'s keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZooKeeper {
    /// `servers`, `host:port` each.
    pub servers: Vec<String>,
    /// `path`: whose children are the members.
    pub path: String,
    /// `format`, default native.
    pub format: ZkFormat,
    /// `endpoint`: a server set's additional endpoint to use instead of its
    /// service endpoint.
    pub endpoint: Option<String>,
    /// `session_timeout`, default 10s.
    pub session_timeout: Duration,
    /// `chroot`, default none: put in front of `path`.
    pub chroot: String,
    /// The `user:password` read from `digest_auth_file`.
    pub digest: Option<Secret>,
}

/// How a registry in ZooKeeper writes its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZkFormat {
    /// switchyard's own JSON entry or `"ip:port"`, as in etcd.
    Native,
    /// Apache Curator's ServiceDiscovery instances.
    Curator,
    /// Finagle and Aurora server sets.
    ServerSet,
    /// Dubbo's provider URLs.
    Dubbo,
}

impl ZkFormat {
    /// As written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ZkFormat::Native => "native",
            ZkFormat::Curator => "curator",
            ZkFormat::ServerSet => "serverset",
            ZkFormat::Dubbo => "dubbo",
        }
    }
}

/// A credential read from a file: compared, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Source {
    /// As written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Dns { .. } => "dns",
            Source::DnsSrv { .. } => "dns_srv",
            Source::Etcd { .. } => "etcd",
            Source::ZooKeeper(_) => "zookeeper",
        }
    }
}

/// `[pools.NAME.discovery]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// `kind` and its keys.
    pub source: Source,
    /// `refresh` (DNS), default 10s: at most this long between lookups; a
    /// shorter TTL shortens it (never below 1s).
    pub refresh: Duration,
    /// `allow_empty`, default false: whether a successful answer with no
    /// backend empties the pool (otherwise the last set stays).
    pub allow_empty: bool,
}

/// `[cluster]`: this instance in the fleet's registry in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `endpoints`, as `host:port`.
    pub endpoints: Vec<String>,
    /// `name`, default the host name: the key under `prefix`.
    pub name: String,
    /// `prefix`, default `/switchyard/instances/`.
    pub prefix: String,
    /// `ttl`, default 10s: how long after this instance stops renewing its
    /// lease it leaves the list.
    pub ttl: Duration,
    /// For `https://` endpoints, as for discovery.
    pub tls: Option<Arc<Originator>>,
}

/// The host name, for `[cluster] name`.
fn host_name() -> String {
    let name = rustix::system::uname();
    match name.nodename().to_bytes() {
        [] => "switchyard".into(),
        bytes => String::from_utf8_lossy(bytes).into_owned(),
    }
}

impl Validator<'_> {
    /// `state_dir`, default `/var/lib/switchyard`.
    pub(super) fn state_dir(&mut self, v: Option<&S<String>>) -> PathBuf {
        match v {
            Some(v) if v.get_ref().is_empty() => {
                self.p.push(v.span(), "state_dir", "must not be empty");
                PathBuf::new()
            }
            Some(v) => PathBuf::from(v.get_ref()),
            None => PathBuf::from("/var/lib/switchyard"),
        }
    }

    /// etcd `endpoints`: `http://host:port` or `https://host:port` each
    /// (all alike), and the client side for `https` from `ca`, `cert`,
    /// `key` (`tls` holds them, from the table at `span`; `key` names it).
    fn endpoints(
        &mut self,
        list: Option<&Vec<S<String>>>,
        span: std::ops::Range<usize>,
        key: &str,
        tls: [Option<&S<String>>; 3],
    ) -> (Vec<String>, Option<Arc<Originator>>) {
        let mut out = Vec::new();
        let mut schemes = std::collections::BTreeSet::new();
        for (i, e) in list.into_iter().flatten().enumerate() {
            let text = e.get_ref();
            let (scheme, rest) = match text.split_once("://") {
                Some((s, r)) => (s, r),
                None => ("http", text.as_str()),
            };
            let hostport = rest.trim_end_matches('/');
            let ok = matches!(scheme, "http" | "https")
                && hostport
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if ok {
                schemes.insert(scheme);
                out.push(hostport.to_string());
            } else {
                self.p.push(
                    e.span(),
                    format!("{key}[{i}]"),
                    format!("`{text}` is not an etcd endpoint; expected http://host:port or https://host:port"),
                );
            }
        }
        let table = key.trim_end_matches(".endpoints");
        let [ca, cert, tls_key] = tls;
        let tls = if schemes.contains("https") {
            if schemes.len() > 1 {
                self.p.push(
                    span.clone(),
                    key.to_string(),
                    "endpoints are all http:// or all https://",
                );
            }
            self.etcd_tls(table, span.clone(), ca, cert, tls_key)
        } else {
            for (what, v) in [("ca", ca), ("cert", cert), ("key", tls_key)] {
                if let Some(v) = v {
                    self.p.push(
                        v.span(),
                        format!("{table}.{what}"),
                        format!("`{what}` is for https:// endpoints"),
                    );
                }
            }
            None
        };
        if out.is_empty() && list.is_none_or(|l| l.is_empty()) {
            self.p.push(
                span,
                key.to_string(),
                "needs at least one etcd endpoint, such as \"http://127.0.0.1:2379\"",
            );
        }
        (out, tls)
    }

    /// The client side for etcd over TLS: its certificate verified against
    /// `ca`, ours (`cert`, `key`) presented when given.
    fn etcd_tls(
        &mut self,
        table: &str,
        span: std::ops::Range<usize>,
        ca: Option<&S<String>>,
        cert: Option<&S<String>>,
        key: Option<&S<String>>,
    ) -> Option<Arc<Originator>> {
        let Some(ca) = ca else {
            self.p.push(
                span,
                format!("{table}.ca"),
                "https:// endpoints are verified against `ca`: name the CA bundle that signed etcd's certificate",
            );
            return None;
        };
        let pair = match (cert, key) {
            (Some(c), Some(k)) => Some((self.file(c), self.file(k))),
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                self.p.push(
                    v.span(),
                    table.to_string(),
                    "a client certificate needs both `cert` and `key`",
                );
                return None;
            }
        };
        let ca_path = self.ca_file(ca);
        let alpn = ["http/1.1".to_string()];
        let built = Originator::build(OriginatorSettings {
            ca: Some(&ca_path),
            server_name: None,
            cert: pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            verify: true,
            alpn: &alpn,
            min_version: MinVersion::Tls12,
        });
        match built {
            Ok(o) => Some(Arc::new(o)),
            Err((which, why)) => {
                let at = match which {
                    "cert" => cert.map(|c| c.span()),
                    "key" => key.map(|k| k.span()),
                    _ => Some(ca.span()),
                }
                .unwrap_or(span);
                self.p.push(at, format!("{table}.{which}"), why);
                None
            }
        }
    }

    /// `[pools.NAME.discovery]`.
    pub(super) fn discovery(&mut self, key: &str, d: &S<RawDiscovery>) -> Option<DiscoveryConfig> {
        let raw = d.get_ref();
        let kind = raw.kind.get_ref().as_str();
        let resolver = raw
            .resolver
            .as_ref()
            .and_then(|r| self.addr(r, &format!("{key}.resolver")));
        let name = || {
            raw.name
                .as_ref()
                .map(|n| n.get_ref().trim_end_matches('.').to_string())
        };
        let needs = |v: &mut Self, what: &str| {
            v.p.push(
                d.span(),
                format!("{key}.{what}"),
                format!("kind = \"{kind}\" needs `{what}`"),
            );
        };
        let source = match kind {
            "dns" => {
                let port = raw
                    .port
                    .as_ref()
                    .map(|p| self.count(Some(p), &format!("{key}.port"), 1, 65535, 1) as u16);
                match (name(), port) {
                    (Some(name), Some(port)) if !name.is_empty() => Source::Dns {
                        name,
                        port,
                        resolver,
                    },
                    (Some(name), None) if !name.is_empty() => {
                        needs(self, "port");
                        return None;
                    }
                    _ => {
                        needs(self, "name");
                        return None;
                    }
                }
            }
            "dns_srv" => match name() {
                Some(name) if !name.is_empty() => Source::DnsSrv { name, resolver },
                _ => {
                    needs(self, "name");
                    return None;
                }
            },
            "etcd" => {
                let (endpoints, tls) = self.endpoints(
                    raw.endpoints.as_ref(),
                    d.span(),
                    &format!("{key}.endpoints"),
                    [raw.ca.as_ref(), raw.cert.as_ref(), raw.key.as_ref()],
                );
                let prefix = raw
                    .prefix
                    .as_ref()
                    .map(|p| p.get_ref().clone())
                    .unwrap_or_default();
                if prefix.is_empty() {
                    needs(self, "prefix");
                    return None;
                }
                Source::Etcd {
                    endpoints,
                    prefix,
                    tls,
                }
            }
            "zookeeper" => Source::ZooKeeper(self.zookeeper(key, d)?),
            "consul" => {
                self.p.push(
                    raw.kind.span(),
                    format!("{key}.kind"),
                    "Consul is followed through its DNS interface: kind = \"dns_srv\", name = \"_web._tcp.service.consul\" (or \"web.service.consul\"), resolver = \"127.0.0.1:8600\"",
                );
                return None;
            }
            other => {
                self.p.push(
                    raw.kind.span(),
                    format!("{key}.kind"),
                    format!("unknown kind `{other}`; expected \"dns\", \"dns_srv\", \"etcd\" or \"zookeeper\""),
                );
                return None;
            }
        };
        if kind != "etcd" {
            for (what, v) in [("ca", &raw.ca), ("cert", &raw.cert), ("key", &raw.key)] {
                if let Some(v) = v {
                    self.p.push(
                        v.span(),
                        format!("{key}.{what}"),
                        format!("only kind = \"etcd\" (with https:// endpoints) takes `{what}`"),
                    );
                }
            }
        }
        if kind != "zookeeper" {
            let zk_only = [
                ("servers", raw.servers.as_ref().map(|_| d.span())),
                ("path", raw.path.as_ref().map(|v| v.span())),
                ("format", raw.format.as_ref().map(|v| v.span())),
                ("endpoint", raw.endpoint.as_ref().map(|v| v.span())),
                (
                    "session_timeout",
                    raw.session_timeout.as_ref().map(|v| v.span()),
                ),
                ("chroot", raw.chroot.as_ref().map(|v| v.span())),
                (
                    "digest_auth_file",
                    raw.digest_auth_file.as_ref().map(|v| v.span()),
                ),
            ];
            for (what, span) in zk_only {
                if let Some(span) = span {
                    self.p.push(
                        span,
                        format!("{key}.{what}"),
                        format!("only kind = \"zookeeper\" takes `{what}`"),
                    );
                }
            }
        }
        if kind != "dns" {
            if let Some(p) = &raw.port {
                self.p.push(
                    p.span(),
                    format!("{key}.port"),
                    format!("kind = \"{kind}\" takes ports from its records"),
                );
            }
        }
        Some(DiscoveryConfig {
            source,
            refresh: self
                .positive_duration(raw.refresh.as_ref(), &format!("{key}.refresh"))
                .unwrap_or(Duration::from_secs(10)),
            allow_empty: raw.allow_empty.unwrap_or(false),
        })
    }

    /// `kind = "zookeeper"`'s keys.
    fn zookeeper(&mut self, key: &str, d: &S<RawDiscovery>) -> Option<ZooKeeper> {
        let raw = d.get_ref();
        let mut servers = Vec::new();
        for (i, e) in raw.servers.iter().flatten().enumerate() {
            let text = e.get_ref();
            let ok = text
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if ok {
                servers.push(text.clone());
            } else {
                self.p.push(
                    e.span(),
                    format!("{key}.servers[{i}]"),
                    format!("`{text}` is not a ZooKeeper server; expected host:port, such as \"127.0.0.1:2181\""),
                );
            }
        }
        if raw.servers.as_ref().is_none_or(|l| l.is_empty()) {
            self.p.push(
                d.span(),
                format!("{key}.servers"),
                "needs at least one ZooKeeper server, such as \"127.0.0.1:2181\"",
            );
        }
        let znode = |v: &mut Self, s: &S<String>, what: &str, root_ok: bool| -> Option<String> {
            let t = s.get_ref().trim_end_matches('/');
            let fine = s.get_ref().starts_with('/')
                && !s.get_ref().contains("//")
                && (root_ok || !t.is_empty())
                && !t.split('/').any(|c| c == "." || c == "..")
                && !t.chars().any(char::is_control);
            if fine {
                Some(t.to_string())
            } else {
                v.p.push(
                    s.span(),
                    format!("{key}.{what}"),
                    format!("`{}` is not a ZooKeeper path; expected an absolute path such as \"/services/web\"", s.get_ref()),
                );
                None
            }
        };
        let path = match &raw.path {
            Some(p) => znode(self, p, "path", false),
            None => {
                self.p.push(
                    d.span(),
                    format!("{key}.path"),
                    "kind = \"zookeeper\" needs `path`",
                );
                None
            }
        };
        let chroot = match &raw.chroot {
            Some(c) => znode(self, c, "chroot", true).unwrap_or_default(),
            None => String::new(),
        };
        let format = match raw.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
            None | Some((_, "native")) => ZkFormat::Native,
            Some((_, "curator")) => ZkFormat::Curator,
            Some((_, "serverset")) => ZkFormat::ServerSet,
            Some((_, "dubbo")) => ZkFormat::Dubbo,
            Some((f, other)) => {
                self.p.push(
                    f.span(),
                    format!("{key}.format"),
                    format!("unknown format `{other}`; expected \"native\", \"curator\", \"serverset\" or \"dubbo\""),
                );
                ZkFormat::Native
            }
        };
        let endpoint = raw.endpoint.as_ref().map(|e| e.get_ref().clone());
        if let (Some(e), false) = (&raw.endpoint, format == ZkFormat::ServerSet) {
            self.p.push(
                e.span(),
                format!("{key}.endpoint"),
                "only format = \"serverset\" takes `endpoint` (which of a member's additional endpoints to use)",
            );
        }
        let session_timeout = self.duration_at_least(
            raw.session_timeout.as_ref(),
            &format!("{key}.session_timeout"),
            (Duration::from_secs(10), Duration::from_millis(500)),
            "must be at least 500ms (pings go out every third of it)",
        );
        let digest = raw.digest_auth_file.as_ref().and_then(|f| {
            let file = self.file(f);
            match std::fs::read(&file) {
                Ok(b) => {
                    let b = b.trim_ascii().to_vec();
                    if b.is_empty() || !b.contains(&b':') {
                        self.p.push(
                            f.span(),
                            format!("{key}.digest_auth_file"),
                            format!("{} must hold user:password on one line", file.display()),
                        );
                        None
                    } else {
                        Some(Secret(b))
                    }
                }
                Err(e) => {
                    self.p.push(
                        f.span(),
                        format!("{key}.digest_auth_file"),
                        format!("cannot read {}: {e}", file.display()),
                    );
                    None
                }
            }
        });
        Some(ZooKeeper {
            servers,
            path: path?,
            format,
            endpoint,
            session_timeout,
            chroot,
            digest,
        })
    }

    /// `[cluster]`.
    pub(super) fn cluster(&mut self, c: &S<RawCluster>) -> ClusterConfig {
        let raw = c.get_ref();
        let ttl = self.duration_at_least(
            raw.ttl.as_ref(),
            "cluster.ttl",
            (Duration::from_secs(10), Duration::from_secs(2)),
            "must be at least 2s (etcd's leases count in seconds)",
        );
        let mut prefix = raw
            .prefix
            .as_ref()
            .map(|p| p.get_ref().clone())
            .unwrap_or_else(|| "/switchyard/instances/".into());
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let (endpoints, tls) = self.endpoints(
            raw.endpoints.as_ref(),
            c.span(),
            "cluster.endpoints",
            [raw.ca.as_ref(), raw.cert.as_ref(), raw.key.as_ref()],
        );
        ClusterConfig {
            endpoints,
            tls,
            name: raw
                .name
                .as_ref()
                .map(|n| n.get_ref().clone())
                .unwrap_or_else(host_name),
            prefix,
            ttl,
        }
    }
}
