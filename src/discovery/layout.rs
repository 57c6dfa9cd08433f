//! How each ZooKeeper registry layout names a backend: switchyard's own
//! entries (`native`, as in etcd), Apache Curator's ServiceDiscovery
//! instances, Finagle and Aurora server sets, and Dubbo provider URLs.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{ZkFormat, MAX_WEIGHT};

/// Where a member is: an address, or a host name to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Host {
    Addr(SocketAddr),
    Name(String, u16),
}

impl Host {
    fn new(host: &str, port: u16) -> Host {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse() {
            Ok(ip) => Host::Addr(SocketAddr::new(ip, port)),
            Err(_) => Host::Name(host.to_string(), port),
        }
    }
}

/// One member of a registry, before its host is looked up.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LayoutMember {
    pub host: Host,
    pub name: Option<String>,
    pub weight: NonZeroU32,
    pub draining: Option<bool>,
    /// A native entry as written, to write a change back.
    pub entry: Option<Value>,
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

fn port(v: Option<i64>, what: &str) -> Result<u16, String> {
    v.and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or(format!("no {what} from 1 to 65535"))
}

fn name(n: &str) -> Result<String, String> {
    match crate::config::unfit_name(n) {
        Some(why) => Err(format!("its name {n:?}: {why}")),
        None => Ok(n.to_string()),
    }
}

/// Curator's `ServiceInstance` as its `JsonInstanceSerializer` writes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Curator {
    id: Option<String>,
    address: String,
    port: Option<i64>,
    ssl_port: Option<i64>,
    enabled: Option<bool>,
}

#[derive(Deserialize)]
struct ServerSetEndpoint {
    host: String,
    port: i64,
}

/// A Finagle/Aurora server-set member.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerSet {
    service_endpoint: ServerSetEndpoint,
    #[serde(default)]
    additional_endpoints: std::collections::HashMap<String, ServerSetEndpoint>,
    status: String,
}

/// The member that node `node` (its name under the watched path) with
/// `data` describes; `Ok(None)` for one that is registered but not serving
/// (a server set's member not `ALIVE`).
pub(super) fn member(
    format: ZkFormat,
    endpoint: Option<&str>,
    node: &str,
    data: &[u8],
) -> Result<Option<LayoutMember>, String> {
    match format {
        ZkFormat::Native => {
            let (f, v) = super::from_etcd::entry(data)?;
            Ok(Some(LayoutMember {
                host: Host::Addr(f.addr),
                name: f.name,
                weight: f.weight,
                draining: f.draining,
                entry: Some(v),
            }))
        }
        ZkFormat::Curator => {
            let c: Curator =
                serde_json::from_slice(data).map_err(|e| format!("not a Curator instance: {e}"))?;
            let p = port(c.port.or(c.ssl_port), "port or sslPort")?;
            Ok(Some(LayoutMember {
                host: Host::new(&c.address, p),
                name: c
                    .id
                    .filter(|i| !i.is_empty())
                    .map(|i| name(&i))
                    .transpose()?,
                weight: one(),
                draining: Some(c.enabled == Some(false)),
                entry: None,
            }))
        }
        ZkFormat::ServerSet => {
            let s: ServerSet = serde_json::from_slice(data)
                .map_err(|e| format!("not a server-set member: {e}"))?;
            if s.status != "ALIVE" {
                return Ok(None);
            }
            let e = match endpoint {
                None => &s.service_endpoint,
                Some(want) => s
                    .additional_endpoints
                    .get(want)
                    .ok_or(format!("no additional endpoint `{want}`"))?,
            };
            Ok(Some(LayoutMember {
                host: Host::new(&e.host, port(Some(e.port), "port")?),
                name: Some(name(node)?),
                weight: one(),
                draining: Some(false),
                entry: None,
            }))
        }
        ZkFormat::Dubbo => dubbo(node).map(Some),
    }
}

/// A Dubbo provider: its node's name is its URL, percent-encoded
/// (`dubbo://10.0.0.1:20880/com.example.Api?weight=100&disabled=false`).
fn dubbo(node: &str) -> Result<LayoutMember, String> {
    let url = percent_encoding::percent_decode_str(node)
        .decode_utf8()
        .map_err(|_| "not a UTF-8 URL".to_string())?;
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or(format!("`{url}` is not a provider URL"))?;
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, q),
        None => (rest, ""),
    };
    let authority = authority.split('/').next().unwrap_or_default();
    let (host, p) = authority
        .rsplit_once(':')
        .ok_or(format!("`{url}` names no port"))?;
    let p = port(p.parse().ok(), "port")?;
    let mut weight: i64 = 100;
    let mut off = false;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("weight", w)) => weight = w.parse().map_err(|_| format!("weight `{w}`"))?,
            Some(("disabled", "true")) | Some(("enabled", "false")) => off = true,
            _ => {}
        }
    }
    let clamped = weight.clamp(1, MAX_WEIGHT as i64) as u32;
    Ok(LayoutMember {
        host: Host::new(host, p),
        name: None,
        weight: NonZeroU32::new(clamped).unwrap_or(one()),
        // Weight 0 means no new traffic in Dubbo: a drain here.
        draining: Some(off || weight <= 0),
        entry: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(m: &LayoutMember) -> String {
        match &m.host {
            Host::Addr(a) => a.to_string(),
            Host::Name(n, p) => format!("{n}:{p}"),
        }
    }

    #[test]
    fn curator_instances() {
        let m = member(
            ZkFormat::Curator,
            None,
            "x",
            br#"{"name":"web","id":"3f1c","address":"10.0.0.7","port":8080,"sslPort":null,"payload":null,"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (addr(&m), m.name.as_deref()),
            ("10.0.0.7:8080".into(), Some("3f1c"))
        );
        let m = member(
            ZkFormat::Curator,
            None,
            "x",
            br#"{"address":"db.internal","sslPort":8443,"enabled":false}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (addr(&m), m.draining),
            ("db.internal:8443".into(), Some(true))
        );
        assert!(member(ZkFormat::Curator, None, "x", br#"{"address":"10.0.0.7"}"#).is_err());
    }

    #[test]
    fn server_sets() {
        let data = br#"{"serviceEndpoint":{"host":"10.0.0.8","port":31000},"additionalEndpoints":{"http":{"host":"10.0.0.8","port":31001}},"status":"ALIVE","shard":0}"#;
        let m = member(ZkFormat::ServerSet, None, "member_0000000003", data)
            .unwrap()
            .unwrap();
        assert_eq!(addr(&m), "10.0.0.8:31000");
        let m = member(ZkFormat::ServerSet, Some("http"), "member_0000000003", data)
            .unwrap()
            .unwrap();
        assert_eq!(addr(&m), "10.0.0.8:31001");
        assert!(member(ZkFormat::ServerSet, Some("admin"), "m", data).is_err());
        let dead = br#"{"serviceEndpoint":{"host":"10.0.0.8","port":31000},"status":"STOPPING"}"#;
        assert_eq!(member(ZkFormat::ServerSet, None, "m", dead).unwrap(), None);
    }

    #[test]
    fn dubbo_providers() {
        let node = "dubbo%3A%2F%2F10.0.0.9%3A20880%2Fcom.example.Api%3Fanyhost%3Dtrue%26weight%3D300%26side%3Dprovider";
        let m = member(ZkFormat::Dubbo, None, node, b"").unwrap().unwrap();
        assert_eq!(
            (addr(&m), m.weight.get(), m.draining),
            ("10.0.0.9:20880".into(), MAX_WEIGHT, Some(false))
        );
        let m = dubbo("tri%3A%2F%2F%5B%3A%3A1%5D%3A50051%2Fx%3Fdisabled%3Dtrue").unwrap();
        assert_eq!(
            (addr(&m), m.weight.get(), m.draining),
            ("[::1]:50051".into(), 100, Some(true))
        );
        let m = dubbo("dubbo%3A%2F%2F10.0.0.9%3A20880%2Fx%3Fweight%3D0").unwrap();
        assert_eq!(m.draining, Some(true));
        assert!(dubbo("10.0.0.9").is_err());
        assert!(dubbo("dubbo%3A%2F%2F10.0.0.9%2Fx").is_err());
    }
}
