//! The configuration exactly as written in the TOML file: serde types that
//! keep every value's position so that validation can point at it.
//!
//! It runs past 400 lines: it holds every key of the file as serde reads
//! it, one struct per table, as the JSON Schema shows them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
/// A value together with where it stands in the file. In the JSON Schema
/// it is just the value: its one schema impl passes through to `T`'s, so no
/// field needs to say its type twice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Located<T>(toml::Spanned<T>);

/// The short name every raw field uses.
pub type S<T> = Located<T>;

impl<T> Located<T> {
    /// The value.
    pub fn get_ref(&self) -> &T {
        self.0.get_ref()
    }

    /// Where it stands: a byte range of the file.
    pub fn span(&self) -> std::ops::Range<usize> {
        self.0.span()
    }

    /// The value, its place forgotten.
    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        toml::Spanned::deserialize(d).map(Located)
    }
}

impl<T: JsonSchema> JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// A switchyard configuration file (`switchyard check` validates it whole;
/// README's Configuration section describes every key).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "switchyard configuration")]
pub struct RawConfig {
    /// The HTTP endpoint for /metrics, the JSON API and the status page.
    pub admin: Option<S<RawAdmin>>,
    #[serde(default)]
    /// Addresses switchyard accepts TCP connections or UDP datagrams on.
    pub listeners: Vec<S<RawListener>>,
    #[serde(default)]
    /// Pools of backends, by name.
    pub pools: BTreeMap<S<String>, S<RawPool>>,
    /// How long connections may run on after SIGTERM or after their listener is removed. Default "30s".
    pub shutdown_grace: Option<S<String>>,
    /// Where discovered backend sets are kept across restarts. Default "/var/lib/switchyard".
    pub state_dir: Option<S<String>>,
    /// This instance's entry in the fleet's registry in etcd.
    pub cluster: Option<S<RawCluster>>,
    /// Where the access log goes.
    pub log: Option<S<RawLog>>,
    /// Data-plane worker threads. Default one per core.
    pub workers: Option<S<i64>>,
    /// Pin each worker to a core of its own (in turn, over the cores the process may use). Default false.
    pub cpu_affinity: Option<bool>,
    /// The I/O engine of established TCP connections: "auto" (the faster one that can run here: epoll, as measured), "io_uring" (or no start) or "epoll". Default "auto".
    pub engine: Option<S<String>>,
    /// Other files whose listeners and pools join this one's ("conf.d/*.toml"; relative to this file; * and ? in the file name).
    pub include: Option<Vec<S<String>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// etcd client URLs of the fleet's registry, http://host:port or https://host:port.
    pub endpoints: Option<Vec<S<String>>>,
    /// This instance's name in the fleet (default the host name), unique among the instances.
    pub name: Option<S<String>>,
    /// The etcd key prefix instances register under. Default "/switchyard/instances/".
    pub prefix: Option<S<String>>,
    /// An instance that stops renewing leaves the list this long after. Default "10s".
    pub ttl: Option<S<String>>,
    /// Registry over TLS: the CA bundle etcd's certificate is verified against ("@system-ca": the system's roots).
    pub ca: Option<S<String>>,
    /// Registry over TLS: our client certificate (with `key`), for etcd's --client-cert-auth.
    pub cert: Option<S<String>>,
    /// Registry over TLS: the key of our client certificate.
    pub key: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Where access lines go: "stderr" (default, with the other lines), "syslog" or "off".
    pub access: Option<S<String>>,
    /// The syslog receiver: "unix:/dev/log" (default), "udp:IP:PORT" or "tcp:IP:PORT".
    pub syslog: Option<S<String>>,
    /// The syslog facility. Default "local0".
    pub facility: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// Where backends are found: "dns" (A/AAAA), "dns_srv", "etcd" or "zookeeper".
    pub kind: S<String>,
    /// DNS: the name to look up.
    pub name: Option<S<String>>,
    /// dns: the port every found address gets (SRV records carry their own).
    pub port: Option<S<i64>>,
    /// DNS: a name server to ask, ip:port. Default the system's.
    pub resolver: Option<S<String>>,
    /// DNS: at most this long between lookups; a shorter TTL shortens it. Default "10s".
    pub refresh: Option<S<String>>,
    /// etcd: client URLs, http://host:port or https://host:port.
    pub endpoints: Option<Vec<S<String>>>,
    /// etcd: the key prefix the pool's members are entries under.
    pub prefix: Option<S<String>>,
    /// Whether a successful answer with no backend empties the pool. Default false: the last set stays.
    pub allow_empty: Option<bool>,
    /// ZooKeeper servers, host:port each.
    pub servers: Option<Vec<S<String>>>,
    /// ZooKeeper: the node whose children are the backends.
    pub path: Option<S<String>>,
    /// ZooKeeper: how members are written: "native", "curator", "serverset" or "dubbo". Default "native".
    pub format: Option<S<String>>,
    /// ZooKeeper server sets: which additional endpoint to use instead of the service endpoint.
    pub endpoint: Option<S<String>>,
    /// ZooKeeper: the session timeout asked for. Default "10s".
    pub session_timeout: Option<S<String>>,
    /// ZooKeeper: a path put in front of every path.
    pub chroot: Option<S<String>>,
    /// ZooKeeper: a file holding user:password for digest authentication.
    pub digest_auth_file: Option<S<String>>,
    /// etcd over TLS: the CA bundle etcd's certificate is verified against ("@system-ca": the system's roots).
    pub ca: Option<S<String>>,
    /// etcd over TLS: our client certificate (with `key`), for etcd's --client-cert-auth.
    pub cert: Option<S<String>>,
    /// etcd over TLS: the key of our client certificate.
    pub key: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// The address to listen on, ip:port.
    pub bind: Option<S<String>>,
    /// A file holding the token that changes through the API need.
    pub token_file: Option<S<String>>,
    /// Reads need the token too. Default false.
    pub protect_reads: Option<bool>,
    /// Host names the admin endpoint may be reached by, besides IP addresses and localhost.
    pub hosts: Option<Vec<String>>,
    /// A request's head must arrive within this. Default "10s".
    pub header_timeout: Option<S<String>>,
    /// How often the history behind the page's charts is sampled (720 kept). Default "5s".
    pub history_interval: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// The listener's name, unique among listeners: the `listener` label of its metrics.
    pub name: S<String>,
    /// "tcp" (default) or "udp".
    pub protocol: Option<S<String>>,
    /// The address to listen on: ip:port, or unix:/path (unix:@name in the abstract namespace).
    pub bind: S<String>,
    /// The pool its clients go to (those no route matched).
    pub pool: S<String>,
    /// A Unix listener's file mode, octal ("0660"). Default as the umask leaves it.
    pub mode: Option<S<String>>,
    /// A Unix listener file's owner: a user name or id. Default the process's user.
    pub owner: Option<S<String>>,
    /// A Unix listener file's group: a group name or id. Default the process's group.
    pub group: Option<S<String>>,
    /// TCP: close after this long without a byte; UDP: end a session after this long without a datagram. Default "1h" (TCP), "30s" (UDP).
    pub idle_timeout: Option<S<String>>,
    /// UDP: sessions at once. Default 65536.
    pub max_sessions: Option<S<i64>>,
    /// UDP: sessions one client address may hold. Default a quarter of max_sessions.
    pub max_sessions_per_ip: Option<S<i64>>,
    /// UDP: "session" (default: a client's datagrams go to one backend) or "per_datagram" (each is picked on its own).
    pub udp_balance: Option<S<String>>,
    /// TCP: connections one client address may have open. Default unlimited.
    pub max_connections_per_ip: Option<S<i64>>,
    /// TCP: new connections per second one client address may open. Default unlimited.
    pub connection_rate_per_ip: Option<S<f64>>,
    /// TCP: the burst above connection_rate_per_ip. Default the rate, at least 1.
    pub connection_burst_per_ip: Option<S<f64>>,
    /// TCP: connections served at once; beyond it new clients wait in the accept backlog. Default 65536.
    pub max_connections: Option<S<i64>>,
    /// One log line per finished connection or session. Default true.
    pub access_log: Option<bool>,
    /// TCP accept queue length. Default 1024.
    pub backlog: Option<S<i64>>,
    /// One SO_REUSEPORT socket per worker thread. Default true.
    pub reuse_port: Option<bool>,
    /// TCP: a direction that turns bulk moves on with splice(2). Default true.
    pub zero_copy: Option<bool>,
    /// TCP: bytes per second each connection may send up, client to backend ("1MiB", "500k", 65536). Default unlimited.
    pub upload_rate: Option<S<RawRate>>,
    /// TCP: bytes per second each connection may receive, backend to client. Default unlimited.
    pub download_rate: Option<S<RawRate>>,
    /// TCP: bytes per second up, all the listener's connections together. Default unlimited.
    pub listener_upload_rate: Option<S<RawRate>>,
    /// TCP: bytes per second down, all the listener's connections together. Default unlimited.
    pub listener_download_rate: Option<S<RawRate>>,
    /// Copy the client-to-backend bytes of a share of connections (UDP: datagrams) to a backend of another pool; its replies are thrown away.
    pub mirror: Option<S<RawMirror>>,
    /// Keepalive on clients' connections: probes start after this long without a byte ("0s": off). Default "60s".
    pub tcp_keepalive: Option<S<String>>,
    /// When non-empty, only clients in these networks ("10.0.0.0/8", "::1") are served.
    pub allow: Option<Vec<S<String>>>,
    /// Clients in these networks are refused (deny wins over allow).
    pub deny: Option<Vec<S<String>>>,
    /// TCP: connections begin with a PROXY protocol header (v1 or v2) from a proxy in `proxy_trusted`; its client is the client from then on. Default false.
    pub accept_proxy: Option<S<bool>>,
    /// Networks of the proxies that may send a PROXY header (required with accept_proxy).
    pub proxy_trusted: Option<Vec<S<String>>>,
    /// The whole PROXY header must arrive within this. Default "3s".
    pub proxy_timeout: Option<S<String>>,
    /// The longest PROXY v2 header taken. Default 4096.
    pub proxy_max_header: Option<S<i64>>,
    /// Clients by the server name and ALPN of their TLS or QUIC ClientHello.
    pub routes: Option<Vec<S<RawRoute>>>,
    /// The ClientHello must be whole within this. Default "3s".
    pub tls_inspect_timeout: Option<S<String>>,
    /// Close clients whose server name cannot be read instead of sending them to `pool`. Default false.
    pub sni_required: Option<bool>,
    /// TCP: end TLS here; the backend gets the plaintext.
    pub tls: Option<S<RawListenerTls>>,
    /// TCP: a TLS handshake this listener ends must finish within this. Default "10s".
    pub tls_handshake_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// PEM: the listener's certificate and its chain, leaf first.
    pub cert: S<String>,
    /// PEM: the private key of the listener's certificate (PKCS#8, SEC1 or PKCS#1).
    pub key: S<String>,
    /// PEM: require a client certificate signed by one of these (mTLS).
    pub client_ca: Option<S<String>>,
    /// Protocols offered by ALPN, in order of preference.
    pub alpn: Option<Vec<S<String>>>,
    /// "1.2" (default) or "1.3": the oldest TLS version clients may speak.
    pub min_version: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRouteTls {
    /// PEM: the route's certificate and its chain, leaf first.
    pub cert: S<String>,
    /// PEM: the private key of the route's certificate (PKCS#8, SEC1 or PKCS#1).
    pub key: S<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTls {
    /// PEM: backends are verified against these roots (required unless verify = false).
    pub ca: Option<S<String>>,
    /// The name sent (SNI) and verified. Default the backend's name when it is a DNS name, else its IP address.
    pub server_name: Option<S<String>>,
    /// PEM: a client certificate to present (mTLS to the backend), with `key`.
    pub cert: Option<S<String>>,
    /// PEM: the client certificate's private key.
    pub key: Option<S<String>>,
    /// Verify backends' certificates. Default true; false encrypts without knowing who answers.
    pub verify: Option<S<bool>>,
    /// Protocols offered by ALPN.
    pub alpn: Option<Vec<S<String>>>,
    /// "1.2" (default) or "1.3": the oldest TLS version spoken to backends.
    pub min_version: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The route's name (default its pool's name), unique on the listener: the `route` label of its metrics.
    pub name: Option<S<String>>,
    /// Server names; "*.example.com" matches one label.
    pub sni: Option<Vec<S<String>>>,
    /// ALPN protocols ("h2", "h3"); the client must offer one.
    pub alpn: Option<Vec<S<String>>>,
    /// The pool the clients this route matches go to.
    pub pool: S<String>,
    /// End TLS for this route's clients with this certificate (the listener's other settings apply).
    pub tls: Option<S<RawRouteTls>>,
    /// Pass this route's clients through untouched even when the listener ends TLS. Default false.
    pub passthrough: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// "round_robin" (default), "weighted", "random", "least_conn", "p2c", "maglev" or "first".
    pub strategy: Option<S<String>>,
    /// The pool's backends (or use `discovery`).
    pub backends: Option<S<Vec<S<RawBackend>>>>,
    /// Backends found at run time from DNS or etcd, instead of `backends`.
    pub discovery: Option<S<RawDiscovery>>,
    /// Other backends tried after a failed connect. Default 2.
    pub retries: Option<S<i64>>,
    /// Per connect attempt. Default "5s".
    pub connect_timeout: Option<S<String>>,
    /// Consecutive failed connects that take a backend out (0: off). Default 3.
    pub max_fails: Option<S<i64>>,
    /// How long a backend stays out after max_fails; doubles on repeat, up to 16x. Default "10s".
    pub fail_timeout: Option<S<String>>,
    /// A backend that comes back ramps up to its full share over this long. Default "0s" (off).
    pub slow_start: Option<S<String>>,
    /// maglev: "client_ip" (default) or "client_addr" (ip and port).
    pub hash_key: Option<S<String>>,
    /// maglev: the table's size, a prime. Default 65537.
    pub table_size: Option<S<i64>>,
    /// "keep" (default) or "close": what happens to connections when their backend goes down or leaves.
    pub on_backend_down: Option<S<String>>,
    /// With on_backend_down = "close": how long before closing. Default "0s".
    pub on_backend_down_grace: Option<S<String>>,
    /// Keepalive on backend connections: probes start after this long without a byte ("0s": off). Default "60s".
    pub tcp_keepalive: Option<S<String>>,
    /// "v1" or "v2": a PROXY protocol header starts each backend connection (UDP: each datagram, v2).
    pub proxy_protocol: Option<S<String>>,
    /// Active health checks.
    pub health: Option<S<RawHealth>>,
    /// TCP: start TLS to the backends.
    pub tls: Option<S<RawPoolTls>>,
    /// Each backend's cap on open connections when it sets none (discovered ones too). Default unlimited.
    pub backend_max_connections: Option<S<i64>>,
    /// Panic: below this share (0 to 1) of eligible backends, traffic is spread over every backend, healthy or not. Default off.
    pub panic_threshold: Option<S<f64>>,
    /// "refuse" (default) or "try_all": what happens to a new connection when no backend is eligible.
    pub on_all_down: Option<S<String>>,
    /// Where connections and UDP sessions to backends leave from: a local IP address, or "client" (the client's own address, bound with IP_TRANSPARENT: needs CAP_NET_ADMIN and policy routing). Default the system's choice.
    pub source: Option<S<String>>,
    /// TCP: bytes per second each connection to this pool may send up ("1MiB", "500k", 65536). Default unlimited.
    pub upload_rate: Option<S<RawRate>>,
    /// TCP: bytes per second each connection to this pool may receive. Default unlimited.
    pub download_rate: Option<S<RawRate>>,
    /// An agent on each backend (HAProxy's agent-check protocol) sets its weight, drain and state.
    pub agent: Option<S<RawAgent>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// The pool whose backends get the copies.
    pub pool: S<String>,
    /// The share of connections (UDP: datagrams) copied, above 0 and at most 1. Default 1.
    pub share: Option<S<f64>>,
}

/// Bytes per second: a number, or text with a unit ("10MiB", "1m", "500KB").
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawRate {
    /// Bytes per second.
    Bytes(i64),
    /// A number and a unit: k, K, KiB (1024), KB (1000), m, M, MiB, MB, g, G, GiB, GB, or B.
    Text(String),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// The agent's TCP port on each backend's address (required).
    pub port: S<i64>,
    /// Time between asks. Default "2s".
    pub interval: Option<S<String>>,
    /// An agent that has not answered by then is asked again next time; nothing changes. Default "1s".
    pub timeout: Option<S<String>>,
    /// Bytes sent once connected (text with escapes, or hex:...). Default none.
    pub send: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// The backend's address, ip:port or host:port.
    pub addr: S<String>,
    /// The backend's name (default its address), unique in the pool: the `backend_name` label and how the API may name it.
    pub name: Option<S<String>>,
    /// 1 to 256. Default 1.
    pub weight: Option<S<i64>>,
    /// Connections this backend takes at once; a full backend is skipped. Default the pool's backend_max_connections, else unlimited.
    pub max_connections: Option<S<i64>>,
    /// 0 (highest, default) to 255: traffic goes to the highest group with an eligible backend.
    pub priority: Option<S<i64>>,
    /// Takes traffic only while no other backend of the pool is eligible (the lowest priority group). Default false.
    pub backup: Option<S<bool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// The check: "tcp", "http", "udp" or "none" (the default without this table).
    pub kind: Option<S<String>>,
    /// Time between checks of one backend. Default "2s".
    pub interval: Option<S<String>>,
    /// A check with no verdict by then fails. Default "1s".
    pub timeout: Option<S<String>>,
    /// Consecutive passed checks to go up. Default 2.
    pub rise: Option<S<i64>>,
    /// Consecutive failed checks to go down. Default 3.
    pub fall: Option<S<i64>>,
    /// tcp check: bytes to send; udp check: the datagram (text with escapes, or hex:...).
    pub send: Option<S<String>>,
    /// tcp/udp check: the reply must start with these bytes (text with escapes, or hex:...).
    pub expect: Option<S<String>>,
    /// http check: the path of the GET. Default "/".
    pub path: Option<S<String>>,
    /// http check: the status that passes. Default 200.
    pub expect_status: Option<S<i64>>,
    /// http check: the Host header. Default the backend's address.
    pub host: Option<S<String>>,
    /// Check this port of each backend instead of its traffic port.
    pub port: Option<S<i64>>,
    /// "up" (default) or "down": new backends wait for `rise` passes.
    pub initial: Option<S<String>>,
    /// Send the pool's PROXY header at the start of each check too (the pool must set proxy_protocol).
    pub proxy_protocol: Option<S<bool>>,
    /// tcp/http check: over TLS when the pool has `tls`. Default true.
    pub tls: Option<bool>,
}
