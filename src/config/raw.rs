//! The configuration exactly as written in the TOML file: serde types that
//! keep every value's position so that validation can point at it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

/// A value together with where it stands in the file.
pub type S<T> = Spanned<T>;

/// A switchyard configuration file (`switchyard check` validates it whole;
/// README's Configuration section describes every key).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "switchyard configuration")]
pub struct RawConfig {
    #[schemars(with = "Option<RawAdmin>")]
    pub admin: Option<S<RawAdmin>>,
    #[serde(default)]
    #[schemars(with = "Vec<RawListener>")]
    pub listeners: Vec<S<RawListener>>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawPool>")]
    pub pools: BTreeMap<S<String>, S<RawPool>>,
    #[schemars(with = "Option<String>")]
    pub shutdown_grace: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub state_dir: Option<S<String>>,
    #[schemars(with = "Option<RawCluster>")]
    pub cluster: Option<S<RawCluster>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[schemars(with = "Option<Vec<String>>")]
    pub endpoints: Option<Vec<S<String>>>,
    #[schemars(with = "Option<String>")]
    pub name: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub prefix: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub ttl: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    #[schemars(with = "String")]
    pub kind: S<String>,
    #[schemars(with = "Option<String>")]
    pub name: Option<S<String>>,
    #[schemars(with = "Option<i64>")]
    pub port: Option<S<i64>>,
    #[schemars(with = "Option<String>")]
    pub resolver: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub refresh: Option<S<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub endpoints: Option<Vec<S<String>>>,
    #[schemars(with = "Option<String>")]
    pub prefix: Option<S<String>>,
    pub allow_empty: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[schemars(with = "Option<String>")]
    pub bind: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub token_file: Option<S<String>>,
    pub protect_reads: Option<bool>,
    pub hosts: Option<Vec<String>>,
    #[schemars(with = "Option<String>")]
    pub header_timeout: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub history_interval: Option<S<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    #[schemars(with = "String")]
    pub name: S<String>,
    #[schemars(with = "Option<String>")]
    pub protocol: Option<S<String>>,
    #[schemars(with = "String")]
    pub bind: S<String>,
    #[schemars(with = "String")]
    pub pool: S<String>,
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<S<String>>,
    #[schemars(with = "Option<i64>")]
    pub max_sessions: Option<S<i64>>,
    #[schemars(with = "Option<i64>")]
    pub max_sessions_per_ip: Option<S<i64>>,
    #[schemars(with = "Option<i64>")]
    pub max_connections_per_ip: Option<S<i64>>,
    #[schemars(with = "Option<f64>")]
    pub connection_rate_per_ip: Option<S<f64>>,
    #[schemars(with = "Option<f64>")]
    pub connection_burst_per_ip: Option<S<f64>>,
    #[schemars(with = "Option<i64>")]
    pub max_connections: Option<S<i64>>,
    pub access_log: Option<bool>,
    #[schemars(with = "Option<i64>")]
    pub backlog: Option<S<i64>>,
    pub reuse_port: Option<bool>,
    pub zero_copy: Option<bool>,
    #[schemars(with = "Option<String>")]
    pub tcp_keepalive: Option<S<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub allow: Option<Vec<S<String>>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub deny: Option<Vec<S<String>>>,
    #[schemars(with = "Option<bool>")]
    pub accept_proxy: Option<S<bool>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub proxy_trusted: Option<Vec<S<String>>>,
    #[schemars(with = "Option<String>")]
    pub proxy_timeout: Option<S<String>>,
    #[schemars(with = "Option<i64>")]
    pub proxy_max_header: Option<S<i64>>,
    #[schemars(with = "Option<Vec<RawRoute>>")]
    pub routes: Option<Vec<S<RawRoute>>>,
    #[schemars(with = "Option<String>")]
    pub tls_inspect_timeout: Option<S<String>>,
    pub sni_required: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[schemars(with = "Option<String>")]
    pub name: Option<S<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub sni: Option<Vec<S<String>>>,
    #[schemars(with = "Option<Vec<String>>")]
    pub alpn: Option<Vec<S<String>>>,
    #[schemars(with = "String")]
    pub pool: S<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[schemars(with = "Option<String>")]
    pub strategy: Option<S<String>>,
    #[schemars(with = "Option<Vec<RawBackend>>")]
    pub backends: Option<S<Vec<S<RawBackend>>>>,
    #[schemars(with = "Option<RawDiscovery>")]
    pub discovery: Option<S<RawDiscovery>>,
    #[schemars(with = "Option<i64>")]
    pub retries: Option<S<i64>>,
    #[schemars(with = "Option<String>")]
    pub connect_timeout: Option<S<String>>,
    #[schemars(with = "Option<i64>")]
    pub max_fails: Option<S<i64>>,
    #[schemars(with = "Option<String>")]
    pub fail_timeout: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub slow_start: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub hash_key: Option<S<String>>,
    #[schemars(with = "Option<i64>")]
    pub table_size: Option<S<i64>>,
    #[schemars(with = "Option<String>")]
    pub on_backend_down: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub on_backend_down_grace: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub tcp_keepalive: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub proxy_protocol: Option<S<String>>,
    #[schemars(with = "Option<RawHealth>")]
    pub health: Option<S<RawHealth>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    #[schemars(with = "String")]
    pub addr: S<String>,
    #[schemars(with = "Option<String>")]
    pub name: Option<S<String>>,
    #[schemars(with = "Option<i64>")]
    pub weight: Option<S<i64>>,
    #[schemars(with = "Option<i64>")]
    pub max_connections: Option<S<i64>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[schemars(with = "Option<String>")]
    pub kind: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub interval: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S<String>>,
    #[schemars(with = "Option<i64>")]
    pub rise: Option<S<i64>>,
    #[schemars(with = "Option<i64>")]
    pub fall: Option<S<i64>>,
    #[schemars(with = "Option<String>")]
    pub send: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub expect: Option<S<String>>,
    #[schemars(with = "Option<String>")]
    pub path: Option<S<String>>,
    #[schemars(with = "Option<i64>")]
    pub expect_status: Option<S<i64>>,
    #[schemars(with = "Option<String>")]
    pub host: Option<S<String>>,
    #[schemars(with = "Option<i64>")]
    pub port: Option<S<i64>>,
    #[schemars(with = "Option<String>")]
    pub initial: Option<S<String>>,
    #[schemars(with = "Option<bool>")]
    pub proxy_protocol: Option<S<bool>>,
}
