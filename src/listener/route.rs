//! Where a listener sends its clients: its own pool and, with
//! `[[listeners.routes]]`, one pool per route, chosen by the server name a
//! TLS or QUIC client asks for. Swapped whole on reload.

use std::sync::Arc;

use crate::backend::Backend;
use crate::config::ListenerConfig;
use crate::metrics::{CertExpiry, Metrics, MirrorMetrics, RouteMetrics, Series, TlsHandshakes};
use crate::pool::Pool;
use crate::relay::rate::{Bucket, Limit, RateLimits};

/// A listener's pools, as the server hands them over: its own, and one per
/// `config.routes`, in order.
pub(crate) struct Pools {
    pub default: Arc<Pool>,
    pub routes: Vec<Arc<Pool>>,
    /// The pool of `config.mirror`, if any.
    pub mirror: Option<Arc<Pool>>,
}

/// Where a listener's mirror sends its copies, and how many.
pub(crate) struct Mirror {
    pub pool: Arc<Pool>,
    /// The share of clients copied, in millionths.
    pub share_ppm: u32,
    pub metrics: MirrorMetrics,
    series: Series,
}

impl Mirror {
    /// Whether this client (connection or datagram) is copied.
    pub fn chosen(&self) -> bool {
        self.share_ppm >= 1_000_000 || rand::random_range(0..1_000_000) < self.share_ppm
    }
}

/// One route's pool and its series.
pub(crate) struct RouteTarget {
    pub pool: Arc<Pool>,
    pub metrics: RouteMetrics,
}

/// The series of a listener that ends TLS: its handshakes, and when each
/// certificate it serves expires.
pub(crate) struct ClientTls {
    pub handshakes: TlsHandshakes,
    expiry: Vec<(String, CertExpiry)>,
}

/// The certificate files `config` serves, with when each expires.
fn served_certs(config: &ListenerConfig) -> Vec<(String, i64)> {
    let own = config.tls.iter();
    let routes = config.routes.iter().filter_map(|r| match &r.tls {
        crate::config::RouteTls::Own(t) => Some(t),
        _ => None,
    });
    own.chain(routes)
        .map(|t| (t.cert.display().to_string(), t.built.leaf.not_after))
        .collect()
}

/// Where a listener sends traffic; swapped whole on reload.
pub(crate) struct Route {
    pub config: ListenerConfig,
    /// The listener's own pool.
    pub pool: Arc<Pool>,
    /// With routes: the listener's own pool's series (route `default`)
    /// first, then one target per `config.routes`. Empty without routes.
    pub targets: Vec<RouteTarget>,
    /// When it ends TLS for some clients.
    pub tls: Option<ClientTls>,
    /// The byte-rate limits of connections to each of its pools, when any
    /// applies; the listener's shared buckets are in each.
    limits: Vec<(Arc<Pool>, RateLimits)>,
    /// The listener's shared buckets (up, down), kept across reloads that
    /// leave their rates alone.
    buckets: (Option<Arc<Bucket>>, Option<Arc<Bucket>>),
    /// Its mirror, if it has one.
    pub mirror: Option<Mirror>,
}

impl Route {
    /// The route of `config` over `pools`, with its series in `metrics`.
    /// `old`, the route it replaces, lends its listener buckets when their
    /// rates stay, so a reload neither resets nor doubles them.
    pub fn new(
        config: &ListenerConfig,
        pools: Pools,
        metrics: &Metrics,
        old: Option<&Route>,
    ) -> Route {
        let mut targets = Vec::new();
        if !config.routes.is_empty() {
            targets.push(RouteTarget {
                pool: pools.default.clone(),
                metrics: metrics.route(&config.name, "default"),
            });
            for (r, pool) in config.routes.iter().zip(pools.routes) {
                targets.push(RouteTarget {
                    pool,
                    metrics: metrics.route(&config.name, &r.name),
                });
            }
        }
        let tls = config.terminates().then(|| ClientTls {
            handshakes: metrics.tls_clients(&config.name),
            expiry: served_certs(config)
                .into_iter()
                .map(|(file, not_after)| {
                    let e = metrics.cert_expiry((&config.name, ""), &file, not_after);
                    (file, e)
                })
                .collect(),
        });
        let bucket = |rate: Option<u64>, old: Option<&Arc<Bucket>>| {
            rate.map(|r| match old {
                Some(b) if b.rate() == r => b.clone(),
                _ => Arc::new(Bucket::new(r)),
            })
        };
        let buckets = (
            bucket(
                config.rates.listener_upload,
                old.and_then(|o| o.buckets.0.as_ref()),
            ),
            bucket(
                config.rates.listener_download,
                old.and_then(|o| o.buckets.1.as_ref()),
            ),
        );
        let mut limits = Vec::new();
        for pool in std::iter::once(&pools.default).chain(targets.iter().map(|t| &t.pool)) {
            let own = pool.snapshot().config.rates;
            let least = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let l = RateLimits {
                up: Limit {
                    per_connection: least(config.rates.upload, own.upload),
                    shared: buckets.0.clone(),
                },
                down: Limit {
                    per_connection: least(config.rates.download, own.download),
                    shared: buckets.1.clone(),
                },
                tap: None,
            };
            if l.up.limits() || l.down.limits() {
                limits.push((pool.clone(), l));
            }
        }
        let mirror = config.mirror.as_ref().zip(pools.mirror).map(|(m, pool)| {
            let (metrics, series) = metrics.mirror(&config.name, config.protocol.as_str());
            Mirror {
                pool,
                share_ppm: m.share_ppm,
                metrics,
                series,
            }
        });
        Route {
            config: config.clone(),
            pool: pools.default,
            targets,
            tls,
            limits,
            buckets,
            mirror,
        }
    }

    /// The byte-rate limits of a connection to `pool`, if any applies.
    pub fn limits(&self, pool: &Pool) -> Option<&RateLimits> {
        self.limits
            .iter()
            .find(|(p, _)| std::ptr::eq(Arc::as_ptr(p), pool))
            .map(|(_, l)| l)
    }

    /// The pool of route `i` of `config.routes`, or the listener's own;
    /// counted as routed there when the listener has routes.
    pub fn pick_pool(&self, i: Option<usize>) -> &Arc<Pool> {
        match self.targets.get(i.map_or(0, |i| i + 1)) {
            Some(t) => {
                t.metrics.routed.inc();
                &t.pool
            }
            None => &self.pool,
        }
    }

    /// The pool holding backend `addr`, with the backend: the listener's own
    /// pool first, then the routes' (a handed-over connection names only its
    /// backend).
    pub fn find(&self, addr: crate::endpoint::Endpoint) -> Option<(&Arc<Pool>, Arc<Backend>)> {
        std::iter::once(&self.pool)
            .chain(self.targets.iter().map(|t| &t.pool))
            .find_map(|p| {
                let snap = p.snapshot();
                let b = snap.find(addr)?.backend.clone();
                Some((p, b))
            })
    }

    /// Forgets the series of routes that `next` no longer has (all of them
    /// when `next` is `None`: the listener leaves).
    pub fn forget_routes(&self, next: Option<&ListenerConfig>) {
        for (i, t) in self.targets.iter().enumerate() {
            let name = if i == 0 {
                "default"
            } else {
                self.config.routes[i - 1].name.as_str()
            };
            let kept = next.is_some_and(|n| {
                !n.routes.is_empty() && (i == 0 || n.routes.iter().any(|r| r.name == name))
            });
            if !kept {
                t.metrics.forget();
            }
        }
        if let Some(m) = &self.mirror {
            if next.is_none_or(|n| n.mirror.is_none()) {
                m.series.forget();
            }
        }
        if let Some(tls) = &self.tls {
            if !next.is_some_and(|n| n.terminates()) {
                tls.handshakes.forget();
            }
            let still = next.map(served_certs).unwrap_or_default();
            for (file, e) in &tls.expiry {
                if !still.iter().any(|(f, _)| f == file) {
                    e.forget();
                }
            }
        }
    }
}

#[cfg(test)]
impl Route {
    /// The route of the first listener of `text` (a whole config), to its
    /// own pool, for tests that need one without a server.
    pub(crate) fn of_text(text: &str) -> Route {
        let config = crate::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let l = &config.listeners[0];
        Route {
            config: l.clone(),
            pool: Pool::new(&config.pools[&l.pool], Arc::new(Metrics::new())),
            targets: Vec::new(),
            tls: None,
            limits: Vec::new(),
            buckets: (None, None),
            mirror: None,
        }
    }
}
