//! Who the client is and where it is going: a listener's `accept_proxy`
//! (PROXY protocol from trusted proxies in front), its `[[listeners.routes]]`
//! (TLS and QUIC by server name and ALPN), and a pool's `proxy_protocol`.
//!
//! It runs past 400 lines: its tests of route matching stay beside the
//! matching, which the data plane calls per connection.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawListener, RawRoute, S};
use super::validate::Validator;
use super::{PoolConfig, Protocol};

/// A pool's `proxy_protocol`: the header each backend connection (or UDP
/// datagram, v2 only) starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// `"v1"`: text.
    V1,
    /// `"v2"`: binary, with the TLVs a proxy in front sent.
    V2,
}

impl ProxyVersion {
    /// As written in the file.
    pub fn name(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

/// A listener's `accept_proxy = true` and its companions.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptProxy {
    /// `proxy_trusted` (required): who may send a header.
    pub trusted: Vec<IpNet>,
    /// `proxy_timeout`, default 3s: the whole header must arrive within it.
    pub timeout: Duration,
    /// `proxy_max_header`, default 4096: the longest v2 header taken.
    pub max_header: usize,
}

impl AcceptProxy {
    /// Whether a connection from `ip` may carry a header.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

/// One `[[listeners.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `name`, default the pool's name: the `route` label of metrics.
    pub name: String,
    /// `sni`: server names, lower case; `*.example.com` matches one label.
    pub sni: Vec<String>,
    /// `alpn`: protocols, any one of which the client must offer.
    pub alpn: Vec<String>,
    /// `pool`: where matching clients go.
    pub pool: String,
    /// `tls` and `passthrough`: whether its clients' TLS ends here.
    pub tls: super::RouteTls,
}

impl RouteConfig {
    /// How well a client's server name matches: 0 exactly, 1 by wildcard,
    /// 2 for a route without names; `None` when it does not.
    fn rank(&self, sni: Option<&str>) -> Option<u8> {
        if self.sni.is_empty() {
            return Some(2);
        }
        let sni = sni?;
        if self.sni.iter().any(|s| s == sni) {
            return Some(0);
        }
        let wild = self
            .sni
            .iter()
            .filter_map(|s| s.strip_prefix('*'))
            .any(|suffix| {
                sni.strip_suffix(suffix)
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            });
        wild.then_some(1)
    }
}

/// The route for a client that named `sni` and offered `alpn`: exact names
/// before wildcards before routes by ALPN alone, then file order.
pub fn route_for(routes: &[RouteConfig], sni: Option<&str>, alpn: &[Vec<u8>]) -> Option<usize> {
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.alpn.is_empty()
                || alpn
                    .iter()
                    .any(|a| r.alpn.iter().any(|x| x.as_bytes() == a))
        })
        .filter_map(|(i, r)| r.rank(sni).map(|rank| (rank, i)))
        .min()
        .map(|(_, i)| i)
}

/// A server name pattern as written: a host name, or `*.` and one.
fn valid_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// What a listener's identity and routing keys came to.
pub(super) struct Identity {
    pub accept_proxy: Option<AcceptProxy>,
    pub routes: Vec<RouteConfig>,
    pub tls_inspect_timeout: Duration,
    pub sni_required: bool,
}

impl Validator<'_> {
    /// A pool's `proxy_protocol`.
    pub(super) fn proxy_version(
        &mut self,
        v: Option<&S<String>>,
        key: &str,
    ) -> Option<ProxyVersion> {
        let v = v?;
        match v.get_ref().as_str() {
            "v1" => Some(ProxyVersion::V1),
            "v2" => Some(ProxyVersion::V2),
            other => {
                self.p.push(
                    v.span(),
                    key,
                    format!("`{other}` is not a PROXY protocol version; expected \"v1\" or \"v2\""),
                );
                None
            }
        }
    }

    /// A listener's `accept_proxy`, `proxy_*`, `routes`, `tls_inspect_timeout`
    /// and `sni_required`.
    pub(super) fn identity(
        &mut self,
        key: &str,
        l: &RawListener,
        protocol: Protocol,
        pools: &BTreeMap<String, PoolConfig>,
        tls: Option<&super::ListenerTls>,
    ) -> Identity {
        let accept = l.accept_proxy.as_ref().is_some_and(|a| *a.get_ref());
        let trusted = self.networks(l.proxy_trusted.as_deref(), &format!("{key}.proxy_trusted"));
        let timeout = self
            .positive_duration(l.proxy_timeout.as_ref(), &format!("{key}.proxy_timeout"))
            .unwrap_or(Duration::from_secs(3));
        let max_header = self.count(
            l.proxy_max_header.as_ref(),
            &format!("{key}.proxy_max_header"),
            // Room for an IPv6 address block; a 16-bit length at most.
            52,
            16 + 65535,
            4096,
        ) as usize;
        let accept_proxy = match (&l.accept_proxy, accept) {
            (Some(a), true) if protocol == Protocol::Udp => {
                self.p.push(
                    a.span(),
                    format!("{key}.accept_proxy"),
                    "applies to TCP listeners only",
                );
                None
            }
            (Some(a), true) if l.proxy_trusted.as_ref().is_none_or(|t| t.is_empty()) => {
                self.p.push(
                    a.span(),
                    format!("{key}.proxy_trusted"),
                    "accept_proxy needs proxy_trusted: the addresses of the proxies that may send a header (a header from anyone else would let them pose as any client)",
                );
                None
            }
            (_, true) => Some(AcceptProxy {
                trusted,
                timeout,
                max_header,
            }),
            _ => None,
        };
        let mut names = HashSet::new();
        let mut routes = Vec::new();
        for (i, r) in l.routes.iter().flatten().enumerate() {
            let rkey = format!("{key}.routes[{i}]");
            if let Some(mut route) = self.route(&rkey, r, pools) {
                route.tls = self.route_tls_of(&rkey, r.get_ref(), protocol, tls, l);
                if !names.insert(route.name.clone()) || route.name == "default" {
                    self.p.push(
                        r.span(),
                        format!("{rkey}.name"),
                        format!("route name `{}` is used twice, or is `default` (the listener's own pool)", route.name),
                    );
                }
                routes.push(route);
            }
        }
        Identity {
            accept_proxy,
            routes,
            tls_inspect_timeout: self
                .positive_duration(
                    l.tls_inspect_timeout.as_ref(),
                    &format!("{key}.tls_inspect_timeout"),
                )
                .unwrap_or(Duration::from_secs(3)),
            sni_required: l.sni_required.unwrap_or(false),
        }
    }

    fn route(
        &mut self,
        key: &str,
        r: &S<RawRoute>,
        pools: &BTreeMap<String, PoolConfig>,
    ) -> Option<RouteConfig> {
        let raw = r.get_ref();
        let pool = raw.pool.get_ref().clone();
        if !pools.contains_key(&pool) {
            self.p.push(
                raw.pool.span(),
                format!("{key}.pool"),
                format!("no pool named `{pool}` (define [pools.{pool}])"),
            );
        }
        let mut sni = Vec::new();
        for (i, s) in raw.sni.iter().flatten().enumerate() {
            let name = s.get_ref().trim_end_matches('.').to_ascii_lowercase();
            if valid_name(&name) {
                sni.push(name);
            } else {
                self.p.push(
                    s.span(),
                    format!("{key}.sni[{i}]"),
                    format!(
                        "`{}` is not a server name or `*.` and one (e.g. \"*.example.com\")",
                        s.get_ref()
                    ),
                );
            }
        }
        let alpn: Vec<String> = raw
            .alpn
            .iter()
            .flatten()
            .map(|a| a.get_ref().clone())
            .collect();
        if let Some((i, a)) = raw
            .alpn
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, a)| a.get_ref().is_empty() || a.get_ref().len() > 255)
        {
            self.p.push(
                a.span(),
                format!("{key}.alpn[{i}]"),
                "an ALPN protocol is 1 to 255 bytes",
            );
        }
        if raw.sni.as_ref().is_none_or(|s| s.is_empty()) && alpn.is_empty() {
            self.p
                .push(r.span(), key, "a route needs `sni` or `alpn` to match on");
            return None;
        }
        if let Some(n) = &raw.name {
            if let Some(why) = super::unfit_name(n.get_ref()) {
                self.p.push(n.span(), format!("{key}.name"), why);
            }
        }
        Some(RouteConfig {
            name: raw
                .name
                .as_ref()
                .map(|n| n.get_ref().clone())
                .unwrap_or_else(|| pool.clone()),
            sni,
            alpn,
            pool,
            tls: super::RouteTls::Listener,
        })
    }

    /// A route's `tls` and `passthrough`.
    fn route_tls_of(
        &mut self,
        key: &str,
        r: &RawRoute,
        protocol: Protocol,
        listener: Option<&super::ListenerTls>,
        l: &RawListener,
    ) -> super::RouteTls {
        if protocol == Protocol::Udp {
            if let Some(t) = &r.tls {
                self.p.push(
                    t.span(),
                    format!("{key}.tls"),
                    "TLS ends on TCP listeners only (QUIC carries its own)",
                );
            }
            return super::RouteTls::Listener;
        }
        match (&r.tls, r.passthrough.unwrap_or(false)) {
            (Some(t), true) => {
                self.p.push(
                    t.span(),
                    format!("{key}.passthrough"),
                    "a route either ends TLS (`tls`) or passes it through, not both",
                );
                super::RouteTls::Listener
            }
            (Some(t), false) => {
                let ca = l.tls.as_ref().and_then(|t| t.get_ref().client_ca.as_ref());
                match self.route_tls(key, t, listener.map(|lt| (lt, ca))) {
                    Some(own) => super::RouteTls::Own(own),
                    None => super::RouteTls::Listener,
                }
            }
            (None, true) => super::RouteTls::Passthrough,
            (None, false) => super::RouteTls::Listener,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, sni: &[&str], alpn: &[&str]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            sni: sni.iter().map(|s| s.to_string()).collect(),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
            pool: name.into(),
            tls: Default::default(),
        }
    }

    #[test]
    fn exact_beats_wildcard_beats_alpn_alone() {
        let routes = [
            route("h2", &[], &["h2"]),
            route("wild", &["*.api.example.com"], &[]),
            route("exact", &["x.api.example.com", "api.example.com"], &[]),
        ];
        let h2 = [b"h2".to_vec()];
        assert_eq!(route_for(&routes, Some("x.api.example.com"), &h2), Some(2));
        assert_eq!(route_for(&routes, Some("y.api.example.com"), &h2), Some(1));
        assert_eq!(route_for(&routes, Some("api.example.com"), &[]), Some(2));
        // One label only.
        assert_eq!(route_for(&routes, Some("a.b.api.example.com"), &[]), None);
        assert_eq!(
            route_for(&routes, Some("a.b.api.example.com"), &h2),
            Some(0)
        );
        assert_eq!(route_for(&routes, None, &[]), None);
        assert_eq!(route_for(&routes, None, &h2), Some(0));
    }

    #[test]
    fn names_and_alpn_must_both_match() {
        let routes = [route("both", &["a.example"], &["h3"])];
        assert_eq!(
            route_for(&routes, Some("a.example"), &[b"h2".to_vec()]),
            None
        );
        assert_eq!(
            route_for(
                &routes,
                Some("a.example"),
                &[b"h2".to_vec(), b"h3".to_vec()]
            ),
            Some(0)
        );
    }

    #[test]
    fn patterns() {
        for good in ["a.example", "*.example.com", "x", "a-b.c_d"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "*", "*.", "a..b", "a.*.b", "**.a", "a b", "é.example"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
