//! The configuration exactly as written in the TOML file: serde types that
//! keep every value's position so that validation can point at it.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A value together with where it stands in the file.
pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub admin: Option<S<RawAdmin>>,
    #[serde(default)]
    pub listeners: Vec<S<RawListener>>,
    #[serde(default)]
    pub pools: BTreeMap<S<String>, S<RawPool>>,
    pub shutdown_grace: Option<S<String>>,
    pub state_dir: Option<S<String>>,
    pub cluster: Option<S<RawCluster>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub endpoints: Option<Vec<S<String>>>,
    pub name: Option<S<String>>,
    pub prefix: Option<S<String>>,
    pub ttl: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub kind: S<String>,
    pub name: Option<S<String>>,
    pub port: Option<S<i64>>,
    pub resolver: Option<S<String>>,
    pub refresh: Option<S<String>>,
    pub endpoints: Option<Vec<S<String>>>,
    pub prefix: Option<S<String>>,
    pub allow_empty: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub protect_reads: Option<bool>,
    pub hosts: Option<Vec<String>>,
    pub header_timeout: Option<S<String>>,
    pub history_interval: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: S<String>,
    pub protocol: Option<S<String>>,
    pub bind: S<String>,
    pub pool: S<String>,
    pub idle_timeout: Option<S<String>>,
    pub max_sessions: Option<S<i64>>,
    pub max_sessions_per_ip: Option<S<i64>>,
    pub max_connections_per_ip: Option<S<i64>>,
    pub connection_rate_per_ip: Option<S<f64>>,
    pub connection_burst_per_ip: Option<S<f64>>,
    pub max_connections: Option<S<i64>>,
    pub access_log: Option<bool>,
    pub backlog: Option<S<i64>>,
    pub reuse_port: Option<bool>,
    pub zero_copy: Option<bool>,
    pub tcp_keepalive: Option<S<String>>,
    pub allow: Option<Vec<S<String>>>,
    pub deny: Option<Vec<S<String>>>,
    pub accept_proxy: Option<S<bool>>,
    pub proxy_trusted: Option<Vec<S<String>>>,
    pub proxy_timeout: Option<S<String>>,
    pub proxy_max_header: Option<S<i64>>,
    pub routes: Option<Vec<S<RawRoute>>>,
    pub tls_inspect_timeout: Option<S<String>>,
    pub sni_required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<S<String>>,
    pub sni: Option<Vec<S<String>>>,
    pub alpn: Option<Vec<S<String>>>,
    pub pool: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub strategy: Option<S<String>>,
    pub backends: Option<S<Vec<S<RawBackend>>>>,
    pub discovery: Option<S<RawDiscovery>>,
    pub retries: Option<S<i64>>,
    pub connect_timeout: Option<S<String>>,
    pub max_fails: Option<S<i64>>,
    pub fail_timeout: Option<S<String>>,
    pub slow_start: Option<S<String>>,
    pub hash_key: Option<S<String>>,
    pub table_size: Option<S<i64>>,
    pub on_backend_down: Option<S<String>>,
    pub on_backend_down_grace: Option<S<String>>,
    pub tcp_keepalive: Option<S<String>>,
    pub proxy_protocol: Option<S<String>>,
    pub health: Option<S<RawHealth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub addr: S<String>,
    pub name: Option<S<String>>,
    pub weight: Option<S<i64>>,
    pub max_connections: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub rise: Option<S<i64>>,
    pub fall: Option<S<i64>>,
    pub send: Option<S<String>>,
    pub expect: Option<S<String>>,
    pub path: Option<S<String>>,
    pub expect_status: Option<S<i64>>,
    pub host: Option<S<String>>,
    pub port: Option<S<i64>>,
    pub initial: Option<S<String>>,
    pub proxy_protocol: Option<S<bool>>,
}
