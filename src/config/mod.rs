//! Configuration in two stages: `raw` is the TOML as written, [`Config`] is
//! the validated form with real types (socket addresses, durations, non-zero
//! weights) that the rest of the daemon consumes without further checks.
//!
//! It runs past 400 lines because it holds every validated type in one
//! place, the daemon's whole configured surface read top to bottom; how
//! each is checked lives in the files beside it.

mod check;
mod discovery;
mod error;
mod escape;
mod fields;
mod include;
mod listener;
mod log;
mod name;
mod raw;
mod routes;
mod tls;
mod validate;
mod vars;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use discovery::{ClusterConfig, DiscoveryConfig, Secret, Source, ZkFormat, ZooKeeper};
pub use error::{ConfigError, Problem};
pub use escape::parse_bytes;
pub use log::{AccessLog, LogConfig, SyslogTarget};
pub use name::unfit_name;
pub use routes::{route_for, AcceptProxy, ProxyVersion, RouteConfig};
pub use tls::{ListenerTls, PoolTls, RouteTls};

use ipnet::IpNet;

use crate::balance::StrategyKind;
pub use crate::endpoint::Endpoint;

/// The largest backend weight: HAProxy's range, and a bound on the smooth
/// weighted schedule built per pool.
pub const MAX_WEIGHT: u32 = 256;

/// The JSON Schema of the configuration file, made from the types the
/// parser reads it into (`switchyard schema`).
pub fn schema() -> String {
    let schema = schemars::schema_for!(raw::RawConfig);
    serde_json::to_string_pretty(&schema).expect("a schema serialises")
}

/// Where `switchyard run` and `switchyard check` look by default.
pub const DEFAULT_PATH: &str = "/etc/switchyard/switchyard.toml";

/// A fully validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (`<generated>` for built-in configs).
    pub source: PathBuf,
    /// The files it included, in the order read.
    pub included: Vec<PathBuf>,
    /// `[log]`: where the access log goes.
    pub log: LogConfig,
    /// `workers`: data-plane threads, default one per core (`None`).
    pub workers: Option<usize>,
    /// `cpu_affinity`, default false: each worker pinned to a core.
    pub cpu_affinity: bool,
    /// `engine`, default `auto`: the I/O engine of established TCP connections.
    pub engine: crate::engine::EngineChoice,
    /// The admin endpoint, if `[admin]` is present.
    pub admin: Option<AdminConfig>,
    /// Listeners in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
    /// How long established connections may run on after shutdown starts
    /// (`shutdown_grace`, default 30s).
    pub shutdown_grace: Duration,
    /// `state_dir`, default `/var/lib/switchyard`: where discovered
    /// backends are kept, so a restart while DNS or etcd is unreachable
    /// serves the last set seen.
    pub state_dir: PathBuf,
    /// `[cluster]`: this instance's entry in the fleet's registry.
    pub cluster: Option<ClusterConfig>,
    /// Things that are allowed but probably not meant (e.g. weights on
    /// `round_robin`), as `file:line:col: key: message` lines.
    pub warnings: Vec<String>,
}

/// `[admin]`: the HTTP endpoint for metrics, the API and the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `history_interval`, default 5s: how often the history behind
    /// `/api/v1/history` and the page's charts is sampled (720 samples kept).
    pub history_interval: Duration,
    /// `bind`, default `127.0.0.1:9901`.
    pub bind: SocketAddr,
    /// `token_file`: when set, mutating calls need `Authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
    /// `protect_reads` (default false): reads need the token too.
    pub protect_reads: bool,
    /// `hosts`: host names (beside IP literals and `localhost`, always
    /// accepted) that requests may carry in `Host`; default none.
    pub hosts: Vec<String>,
    /// `header_timeout`, default 10s: a request's head must arrive within
    /// it, and a kept-alive connection may idle no longer.
    pub header_timeout: Duration,
}

/// `"tcp"` or `"udp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `tcp`
    Tcp,
    /// `udp`
    Udp,
}

impl Protocol {
    /// The name used in the config file and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// `name`: unique; the `listener` label of metrics.
    pub name: String,
    /// `protocol`, default `"tcp"`.
    pub protocol: Protocol,
    /// `bind`: the address to listen on (an IP address and port, or a Unix
    /// socket).
    pub bind: Endpoint,
    /// A Unix listener's file: `mode`, `owner`, `group`.
    pub unix_file: UnixFile,
    /// Name of the pool traffic goes to (checked to exist).
    pub pool: String,
    /// `idle_timeout`: TCP default 1h (no byte either way), UDP default 30s
    /// (session expiry).
    pub idle_timeout: Duration,
    /// `max_sessions` (UDP), default 65536.
    pub max_sessions: NonZeroUsize,
    /// `max_sessions_per_ip` (UDP): sessions one client address may hold,
    /// default a quarter of `max_sessions`, so one host cannot take them all.
    pub max_sessions_per_ip: NonZeroUsize,
    /// `udp_balance` (UDP), default `"session"`: whether each datagram is
    /// picked on its own (`"per_datagram"`).
    pub per_datagram: bool,
    /// `max_connections` (TCP), default 65536; beyond it connections wait in the backlog.
    pub max_connections: NonZeroUsize,
    /// `max_connections_per_ip` (TCP): connections one client address may
    /// have open; beyond it new ones are refused. Default unlimited.
    pub max_connections_per_ip: Option<NonZeroU32>,
    /// `connection_rate_per_ip` (TCP): new connections per second one client
    /// address may open, with `connection_burst_per_ip` (default the rate,
    /// at least 1) above it. Default unlimited.
    pub connection_rate_per_ip: Option<(f64, f64)>,
    /// `access_log`, default true.
    pub access_log: bool,
    /// `backlog` (TCP accept queue), default 1024.
    pub backlog: u32,
    /// `reuse_port`: one SO_REUSEPORT socket per worker thread, each with its
    /// own accept loop (TCP) or receive loop and session table (UDP); default
    /// true.
    pub reuse_port: bool,
    /// `upload_rate`, `download_rate`, `listener_upload_rate`,
    /// `listener_download_rate` (TCP), bytes per second, default unlimited.
    pub rates: Rates,
    /// `mirror`: copies of a share of the clients' bytes to another pool.
    pub mirror: Option<MirrorConfig>,
    /// `zero_copy`, default true: a TCP direction that turns out to be bulk
    /// (a read fills the 64 KiB buffer) moves on with splice(2).
    pub zero_copy: bool,
    /// `tcp_keepalive` (TCP), default 60s: keepalive probes start after this
    /// long without a byte from the client, so a vanished client frees its
    /// connection; `None` (`"0s"`) turns them off.
    pub tcp_keepalive: Option<Duration>,
    /// `allow`: when non-empty, only clients in these networks are served.
    pub allow: Vec<IpNet>,
    /// `deny`: clients in these networks are refused (deny wins over allow).
    pub deny: Vec<IpNet>,
    /// `accept_proxy = true` (TCP): connections begin with a PROXY protocol
    /// header from a trusted proxy, whose client is the client from then on.
    pub accept_proxy: Option<AcceptProxy>,
    /// `[[listeners.routes]]`: TLS (TCP) or QUIC (UDP) clients by server
    /// name and ALPN; the rest go to `pool`.
    pub routes: Vec<RouteConfig>,
    /// `tls_inspect_timeout`, default 3s: the ClientHello must arrive within it.
    pub tls_inspect_timeout: Duration,
    /// `sni_required`, default false: a client whose server name cannot be
    /// read (not TLS, no name, too large, too slow) is closed instead of
    /// going to `pool`.
    pub sni_required: bool,
    /// `[listeners.tls]` (TCP): TLS ends here with this certificate.
    pub tls: Option<ListenerTls>,
    /// `tls_handshake_timeout`, default 10s: a handshake this listener ends
    /// must finish within it.
    pub tls_handshake_timeout: Duration,
}

impl ListenerConfig {
    /// Whether a client at `ip` may use this listener.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }

    /// The certificate a client sent to `route` (`None`: the listener's own
    /// pool) is terminated with; `None` when it is passed through.
    pub fn terminator(&self, route: Option<usize>) -> Option<&ListenerTls> {
        match route.and_then(|i| self.routes.get(i)).map(|r| &r.tls) {
            Some(RouteTls::Own(t)) => Some(t),
            Some(RouteTls::Passthrough) => None,
            Some(RouteTls::Listener) | None => self.tls.as_ref(),
        }
    }

    /// Whether any client of this listener may have TLS ended here.
    pub fn terminates(&self) -> bool {
        self.tls.is_some()
            || self
                .routes
                .iter()
                .any(|r| matches!(r.tls, RouteTls::Own(_)))
    }

    /// The part of a listener that owns its socket: a reload keeps the socket
    /// when this is unchanged.
    pub fn socket_key(&self) -> (&str, Protocol, Endpoint, bool) {
        (&self.name, self.protocol, self.bind, self.reuse_port)
    }
}

/// One `[pools.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The table's name.
    pub name: String,
    /// `strategy`, default `"round_robin"`.
    pub strategy: StrategyKind,
    /// `backends`, in file order; for a discovered pool, the set found last.
    pub backends: Vec<BackendConfig>,
    /// `[pools.NAME.discovery]`: backends found at run time, not listed.
    pub discovery: Option<DiscoveryConfig>,
    /// `retries`, default 2: other backends tried after a failed connect.
    pub retries: u32,
    /// `connect_timeout`, default 5s.
    pub connect_timeout: Duration,
    /// `max_fails`, default 3: consecutive connect failures that take a backend out.
    pub max_fails: u32,
    /// `fail_timeout`, default 10s: how long it stays out (doubling on repeat, capped at 16x).
    pub fail_timeout: Duration,
    /// `tcp_keepalive`, default 60s: the same for connections to backends.
    pub tcp_keepalive: Option<Duration>,
    /// `hash_key` and `table_size` (`maglev`): what of the client is hashed
    /// (`"client_ip"`, default, or `"client_addr"`) and the table's size (a
    /// prime, default 65537).
    pub balance: crate::balance::Options,
    /// `slow_start`, default 0 (off): a backend that comes back (up again,
    /// or back from an ejection) ramps up to its full share over this long.
    pub slow_start: Duration,
    /// `on_backend_down`: `"keep"` (default: `None`) lets established
    /// connections to a backend that goes down or leaves the pool run on;
    /// `"close"` closes them after `on_backend_down_grace` (default 0s).
    pub on_backend_down: Option<Duration>,
    /// `proxy_protocol`: `"v1"` or `"v2"`, default none: each backend
    /// connection (UDP: each datagram, v2) starts with a PROXY header.
    pub proxy_protocol: Option<ProxyVersion>,
    /// `[pools.NAME.health]`.
    pub health: HealthConfig,
    /// `[pools.NAME.tls]`: TLS to the backends.
    pub tls: Option<PoolTls>,
    /// `backend_max_connections`: the cap of each backend that sets none
    /// (and of every discovered one).
    pub backend_max_connections: Option<NonZeroU32>,
    /// `panic_threshold` in thousandths (0.5 is 500), default off: below
    /// that share of eligible backends, picks spread over all of them.
    pub panic_below: Option<u32>,
    /// `on_all_down`, default `"refuse"`.
    pub on_all_down: AllDown,
    /// `source`: where connections to backends leave from, default the
    /// system's choice.
    pub source: Option<ConnectFrom>,
    /// `[pools.NAME.agent]`: agent checks, default none.
    pub agent: Option<AgentConfig>,
    /// `upload_rate` and `download_rate`, per connection (the listener
    /// fields unused), default unlimited.
    pub rates: Rates,
}

/// `[pools.NAME.agent]`: an agent on each backend, asked as HAProxy's
/// `agent-check` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `port`: the agent's port on the backend's address.
    pub port: u16,
    /// `interval`, default 2s.
    pub interval: Duration,
    /// `timeout`, default 1s.
    pub timeout: Duration,
    /// `send`, default nothing.
    pub send: Option<Vec<u8>>,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `addr`, resolved when the file is read: an IP address and port, or
    /// a Unix socket.
    pub addr: Endpoint,
    /// `name`, default the address as written out: unique in the pool; the
    /// `backend_name` label, and how the API and the page may name it.
    pub name: String,
    /// `weight`, 1 to 256, default 1.
    pub weight: NonZeroU32,
    /// `max_connections`: a full backend is skipped; default the pool's
    /// `backend_max_connections`, else unlimited.
    pub max_connections: Option<NonZeroU32>,
    /// `priority` 0 (highest, default) to 255, or [`BACKUP`] for `backup = true`.
    pub priority: u32,
}

/// `mirror = { pool, share }` on a listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MirrorConfig {
    /// The pool that gets the copies.
    pub pool: String,
    /// The share copied, in millionths (1.0 is 1,000,000).
    pub share_ppm: u32,
}

/// Byte-rate limits, in bytes per second (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Rates {
    /// Each connection, client to backend.
    pub upload: Option<u64>,
    /// Each connection, backend to client.
    pub download: Option<u64>,
    /// All of a listener's connections together, client to backend.
    pub listener_upload: Option<u64>,
    /// All of a listener's connections together, backend to client.
    pub listener_download: Option<u64>,
}

/// The priority of a backend written `backup = true`: below every group.
pub const BACKUP: u32 = 256;

/// The lowest priority a backend may name.
pub const MAX_PRIORITY: u32 = 255;

impl PoolConfig {
    /// The first of its backends that is a Unix socket, if any.
    pub fn unix_backend(&self) -> Option<Endpoint> {
        self.backends
            .iter()
            .map(|b| b.addr)
            .find(|a| a.unix().is_some())
    }
}

/// What a Unix listener's socket file is given when it is made (nothing
/// for an abstract name, which has no file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnixFile {
    /// `mode`: permission bits (`0o660`), default as the umask leaves them.
    pub mode: Option<u32>,
    /// `owner`: a user id, default the process's.
    pub owner: Option<u32>,
    /// `group`: a group id, default the process's.
    pub group: Option<u32>,
}

/// Where a pool's connections and UDP sessions to its backends leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFrom {
    /// `source = "IP"`: this local address (for backends of its family),
    /// the port chosen at connect.
    Address(std::net::IpAddr),
    /// `source = "client"`: the client's own address, bound with
    /// `IP_TRANSPARENT` (needs `CAP_NET_ADMIN` and the routing the README
    /// gives), the port chosen at connect.
    Client,
}

impl std::fmt::Display for ConnectFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFrom::Address(ip) => ip.fmt(f),
            ConnectFrom::Client => f.write_str("client"),
        }
    }
}

/// What a pool does with a new connection when no backend is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllDown {
    /// `"refuse"`: the client is closed (the default).
    #[default]
    Refuse,
    /// `"try_all"`: every backend not drained or full is tried, health aside.
    TryAll,
}

impl AllDown {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            AllDown::Refuse => "refuse",
            AllDown::TryAll => "try_all",
        }
    }
}

/// `[pools.NAME.health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `kind` and its settings, default none.
    pub check: CheckKind,
    /// `interval`, default 2s.
    pub interval: Duration,
    /// `timeout`, default 1s.
    pub timeout: Duration,
    /// `rise`, default 2.
    pub rise: u32,
    /// `fall`, default 3.
    pub fall: u32,
    /// `port`: check this port instead of the traffic port.
    pub port: Option<u16>,
    /// `initial`: `"up"` (default) or `"down"`.
    pub initial_up: bool,
    /// `proxy_protocol = true`: checks begin with the pool's PROXY header
    /// (v2: the `LOCAL` command; v1: the check connection's own addresses).
    /// The pool's version when on.
    pub proxy_header: Option<ProxyVersion>,
    /// `tls`, default true: `tcp` and `http` checks run over TLS when the
    /// pool has `tls`.
    pub tls: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: CheckKind::None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            port: None,
            initial_up: true,
            proxy_header: None,
            tls: true,
        }
    }
}

/// What an active health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// No active check; passive health still applies.
    None,
    /// Connect; optionally send bytes and require the reply to start with `expect`.
    Tcp {
        /// `send`: bytes written after connecting.
        send: Option<Vec<u8>>,
        /// `expect`: the reply's first bytes.
        expect: Option<Vec<u8>>,
    },
    /// `GET path` over HTTP/1.1; the status must be `expect_status`.
    Http {
        /// `path`, default `/`.
        path: String,
        /// `expect_status`, default 200.
        expect_status: u16,
        /// `host`: the `Host` header, default the backend's address.
        host: Option<String>,
    },
    /// Send a datagram; with `expect`, the reply must start with it, and
    /// without, any reply (or silence) but an ICMP error passes.
    Udp {
        /// `send`: the datagram (required).
        send: Vec<u8>,
        /// `expect`: the reply's first bytes.
        expect: Option<Vec<u8>>,
    },
}

impl CheckKind {
    /// The `kind` as written in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Udp { .. } => "udp",
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                line: 0,
                col: 0,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
                file: None,
            }],
        })?;
        Config::parse(&source, path)
    }

    /// Validates `source` as if read from `path`.
    pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigError> {
        validate::validate(source, path)
    }

    /// What the file will do, one screen for `switchyard check`: each
    /// listener and where it sends traffic, each pool with its strategy,
    /// check and backends.
    pub fn outline(&self) -> String {
        use std::fmt::Write;
        let mut o = String::from("listeners:\n");
        for l in &self.listeners {
            let _ = writeln!(
                o,
                "  {:<16} {} {:<22} -> pool {}",
                l.name,
                l.protocol.as_str(),
                l.bind,
                l.pool
            );
            if let Some(a) = &l.accept_proxy {
                let nets: Vec<String> = a.trusted.iter().map(|n| n.to_string()).collect();
                let _ = writeln!(o, "    PROXY protocol headers from {}", nets.join(", "));
            }
            for r in &l.routes {
                let mut what: Vec<String> = r.sni.clone();
                what.extend(r.alpn.iter().map(|a| format!("alpn {a}")));
                let _ = writeln!(
                    o,
                    "    {:<40} -> pool {} (route {})",
                    what.join(" "),
                    r.pool,
                    r.name
                );
            }
            if l.sni_required {
                let _ = writeln!(o, "    no readable server name: closed");
            }
        }
        o.push_str("pools:\n");
        for p in self.pools.values() {
            let h = &p.health;
            let check = match h.check {
                CheckKind::None => "no active check".to_string(),
                ref k => format!(
                    "{} check every {} (rise {}, fall {})",
                    k.name(),
                    humantime::format_duration(h.interval),
                    h.rise,
                    h.fall
                ),
            };
            let _ = writeln!(
                o,
                "  {:<16} {}, {}, {} retries",
                p.name,
                p.strategy.name(),
                check,
                p.retries
            );
            if let Some(v) = p.proxy_protocol {
                let _ = writeln!(o, "    sends PROXY protocol {}", v.name());
            }
            if let Some(d) = &p.discovery {
                let what = match &d.source {
                    Source::Dns { name, port, .. } => format!(
                        "the A/AAAA records of {name}, port {port}, every {}",
                        humantime::format_duration(d.refresh)
                    ),
                    Source::DnsSrv { name, .. } => format!(
                        "the SRV records of {name}, every {}",
                        humantime::format_duration(d.refresh)
                    ),
                    Source::Etcd {
                        endpoints,
                        prefix,
                        tls,
                    } => format!(
                        "etcd {}{} under {prefix}, watched",
                        endpoints.join(", "),
                        if tls.is_some() { " (TLS)" } else { "" }
                    ),
                    Source::ZooKeeper(z) => format!(
                        "ZooKeeper {} under {}{} ({} members), watched",
                        z.servers.join(", "),
                        z.chroot,
                        z.path,
                        z.format.as_str()
                    ),
                };
                let _ = writeln!(o, "    backends discovered: {what}");
            }
            if let Some(t) = p.panic_below {
                let _ = writeln!(
                    o,
                    "    panic below {}% of backends eligible: then every backend takes traffic",
                    f64::from(t) / 10.0
                );
            }
            if let Some(a) = &p.agent {
                let _ = writeln!(
                    o,
                    "    agent on port {} of each backend, every {}",
                    a.port,
                    humantime::format_duration(a.interval)
                );
            }
            if p.on_all_down == AllDown::TryAll {
                let _ = writeln!(o, "    with no backend eligible, every backend is tried");
            }
            for b in &p.backends {
                let _ = write!(o, "    {:<24} weight {}", b.addr.to_string(), b.weight);
                if let Some(max) = b.max_connections {
                    let _ = write!(o, ", at most {max} connections");
                }
                match b.priority {
                    0 => {}
                    BACKUP => o.push_str(", backup"),
                    n => {
                        let _ = write!(o, ", priority {n}");
                    }
                }
                o.push('\n');
            }
        }
        o
    }

    /// A one-line summary, as `switchyard check` prints it.
    pub fn summary(&self) -> String {
        let backends: usize = self.pools.values().map(|p| p.backends.len()).sum();
        format!(
            "{}: ok: {} listener(s), {} pool(s), {} backend(s){}",
            self.source.display(),
            self.listeners.len(),
            self.pools.len(),
            backends,
            match &self.admin {
                Some(a) => format!(", admin on {}", a.bind),
                None => String::new(),
            },
        ) + &if self.included.is_empty() {
            String::new()
        } else {
            let files: Vec<String> = self
                .included
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            format!("; included {}", files.join(", "))
        }
    }
}
