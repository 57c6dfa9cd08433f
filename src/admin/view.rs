//! What the admin side reads and asks of the running daemon: an immutable
//! [`View`] of what runs, and the small [`Control`] trait the server
//! implements, so the endpoint can be served (and tested) without knowing
//! the server's insides.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Config;
use crate::pool::{Change, Pool};

/// A listener as the admin side sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerView {
    /// Its configured name.
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The bound address (the real port when configured with port 0), or
    /// `unix:` and its socket's name.
    pub addr: crate::endpoint::Endpoint,
    /// Its address's kind: `ipv4`, `ipv6` or `unix`.
    pub family: &'static str,
    /// The pool it sends traffic to (clients no route matched).
    pub pool: String,
    /// Its routes by server name and ALPN, in file order.
    pub routes: Vec<RouteView>,
    /// Whether it takes PROXY protocol headers, and from whom.
    pub accept_proxy: bool,
    /// The networks whose headers it trusts.
    pub proxy_trusted: Vec<String>,
    /// Whether clients without a readable server name are closed.
    pub sni_required: bool,
    /// Its own TLS ending, if it ends TLS.
    pub tls: Option<TlsView>,
    /// Its byte-rate limits, bytes per second (`null`: unlimited).
    pub rates: crate::config::Rates,
    /// Its mirror: the pool and the share (in millionths) copied there.
    pub mirror: Option<crate::config::MirrorConfig>,
    /// UDP: `session` or `per_datagram`.
    pub udp_balance: Option<&'static str>,
}

/// A certificate a listener or route ends TLS with.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsView {
    /// The certificate file.
    pub cert: String,
    /// When it expires, Unix time.
    pub not_after: i64,
    /// Its subject's common name.
    pub common_name: Option<String>,
    /// Whether clients must present a certificate.
    pub client_certificate_required: bool,
}

impl TlsView {
    fn of(t: &crate::config::ListenerTls) -> TlsView {
        TlsView {
            cert: t.cert.display().to_string(),
            not_after: t.built.leaf.not_after,
            common_name: t.built.leaf.common_name.clone(),
            client_certificate_required: t.client_ca.is_some(),
        }
    }
}

impl ListenerView {
    /// Listener `l` as configured, bound at `addr`.
    pub(crate) fn of(
        l: &crate::config::ListenerConfig,
        addr: crate::endpoint::Endpoint,
    ) -> ListenerView {
        ListenerView {
            name: l.name.clone(),
            protocol: l.protocol.as_str(),
            addr,
            family: match addr {
                crate::endpoint::Endpoint::Unix(_) => "unix",
                crate::endpoint::Endpoint::Inet(a) if a.is_ipv6() => "ipv6",
                crate::endpoint::Endpoint::Inet(_) => "ipv4",
            },
            pool: l.pool.clone(),
            routes: l
                .routes
                .iter()
                .map(|r| RouteView {
                    name: r.name.clone(),
                    sni: r.sni.clone(),
                    alpn: r.alpn.clone(),
                    pool: r.pool.clone(),
                    tls: match &r.tls {
                        crate::config::RouteTls::Own(t) => RouteTlsView::Own(TlsView::of(t)),
                        crate::config::RouteTls::Passthrough => RouteTlsView::Passthrough,
                        crate::config::RouteTls::Listener if l.tls.is_some() => {
                            RouteTlsView::Listener
                        }
                        crate::config::RouteTls::Listener => RouteTlsView::Passthrough,
                    },
                })
                .collect(),
            accept_proxy: l.accept_proxy.is_some(),
            proxy_trusted: l
                .accept_proxy
                .iter()
                .flat_map(|a| a.trusted.iter().map(|n| n.to_string()))
                .collect(),
            sni_required: l.sni_required,
            tls: l.tls.as_ref().map(TlsView::of),
            rates: l.rates,
            mirror: l.mirror.clone(),
            udp_balance: (l.protocol == crate::config::Protocol::Udp).then_some(
                if l.per_datagram {
                    "per_datagram"
                } else {
                    "session"
                },
            ),
        }
    }
}

/// One route of a listener, as the admin side sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteView {
    /// Its name (the `route` label of metrics).
    pub name: String,
    /// Server names it matches.
    pub sni: Vec<String>,
    /// ALPN protocols it matches.
    pub alpn: Vec<String>,
    /// Its pool.
    pub pool: String,
    /// What happens to its clients' TLS.
    pub tls: RouteTlsView,
}

/// Whether a route's clients have their TLS ended here, and with what.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteTlsView {
    /// Passed through untouched.
    Passthrough,
    /// Ended with the listener's certificate.
    Listener,
    /// Ended with the route's own.
    Own(TlsView),
}

/// What is running now; replaced whole after every start and reload.
pub struct View {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Every pool by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// Listeners in file order.
    pub listeners: Vec<ListenerView>,
    /// The admin endpoint's bound address, if it runs.
    pub admin: Option<SocketAddr>,
}

/// A boxed future, for the one asynchronous call of [`Control`].
pub type ControlFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the admin endpoint needs from the daemon.
pub trait Control: Send + Sync + 'static {
    /// What is running now.
    fn view(&self) -> Arc<View>;
    /// The Prometheus text exposition of every metric.
    fn render_metrics(&self) -> String;
    /// Whether the daemon is serving and every pool has a healthy backend.
    fn ready(&self) -> bool;
    /// Re-reads the configuration file and applies it; the error says why not.
    fn reload(&self) -> ControlFuture<'_, Result<(), String>>;
    /// For a pool whose members live in a shared store (etcd, ZooKeeper):
    /// writes `change` of backend `addr` there, so every instance follows;
    /// `None` when the pool's changes stay local.
    fn share(
        &self,
        pool: &str,
        addr: SocketAddr,
        change: Change,
    ) -> ControlFuture<'_, Option<Result<(), crate::pool::Unshared>>>;
    /// The history of the last hour, as `/api/v1/history` serves it.
    fn history(&self, q: &crate::history::Query) -> serde_json::Value;
    /// The fleet's instances as each describes itself; `None` without
    /// `[cluster]`.
    fn cluster(&self) -> ControlFuture<'_, Option<Result<Fleet, String>>>;
}

/// The fleet as listed: each instance as it describes itself, and how many
/// entries under the prefix were not instances (left out).
#[derive(Debug, Default)]
pub struct Fleet {
    /// The instances.
    pub instances: Vec<serde_json::Value>,
    /// Entries that are not an instance's description.
    pub skipped: usize,
}
