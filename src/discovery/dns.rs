//! Backends from DNS: every A and AAAA record of a name (`dns`), or the
//! targets of its SRV records with their ports and weights (`dns_srv`).
//! Lookups are asynchronous (hickory-resolver): a slow or dead name server
//! delays only this pool's next set, never a connection.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};

use super::Context;
use crate::config::{DiscoveryConfig, MAX_WEIGHT};
use crate::pool::Found;

/// What a lookup came to.
pub(super) enum Answer {
    /// Backends, and how long the answer holds (its shortest TTL).
    Found(Vec<Found>, Duration),
    /// The name exists in no form that gives a backend (NXDOMAIN, no
    /// records of the type): an empty set, applied only with `allow_empty`.
    Empty,
}

/// A resolver asking `server`, or the system's configured ones.
pub(super) fn resolver(
    server: Option<SocketAddr>,
    timeout: Duration,
) -> Result<TokioResolver, String> {
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = 1;
    // Every refresh asks the server: a change is seen within `refresh`.
    opts.cache_size = 0;
    let builder = match server {
        Some(addr) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
    };
    Ok(builder.with_options(opts).build())
}

/// An empty answer (the name or its records do not exist), or a failure.
fn classify(e: ResolveError) -> Result<Answer, String> {
    if let Some(p) = e.proto() {
        if let ProtoErrorKind::NoRecordsFound { response_code, .. } = p.kind() {
            if matches!(
                *response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) {
                return Ok(Answer::Empty);
            }
            return Err(format!("the server answered {response_code}"));
        }
    }
    Err(e.to_string())
}

fn ttl(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

/// Every address of `name`, each with `port`.
pub(super) async fn addresses(r: &TokioResolver, name: &str, port: u16) -> Result<Answer, String> {
    let fqdn = format!("{name}.");
    let ips = match r.lookup_ip(fqdn.as_str()).await {
        Ok(ips) => ips,
        Err(e) => return classify(e),
    };
    let mut found: Vec<Found> = ips
        .iter()
        .map(|ip: IpAddr| Found {
            addr: SocketAddr::new(ip, port),
            name: None,
            weight: NonZeroU32::MIN,
            draining: None,
        })
        .collect();
    found.sort_by_key(|f| f.addr);
    found.dedup_by_key(|f| f.addr);
    if found.is_empty() {
        return Ok(Answer::Empty);
    }
    Ok(Answer::Found(found, ttl(ips.valid_until())))
}

/// The targets of `name`'s SRV records of the best (lowest) priority, with
/// their ports and weights (0 counts as 1; above 256, 256).
pub(super) async fn services(r: &TokioResolver, name: &str) -> Result<Answer, String> {
    let fqdn = format!("{name}.");
    let srv = match r.srv_lookup(fqdn.as_str()).await {
        Ok(s) => s,
        Err(e) => return classify(e),
    };
    let mut hold = ttl(srv.as_lookup().valid_until());
    let Some(best) = srv.iter().map(|s| s.priority()).min() else {
        return Ok(Answer::Empty);
    };
    let mut found = Vec::new();
    for s in srv.iter().filter(|s| s.priority() == best) {
        let weight =
            NonZeroU32::new(u32::from(s.weight()).clamp(1, MAX_WEIGHT)).unwrap_or(NonZeroU32::MIN);
        let ips = match r.lookup_ip(s.target().clone()).await {
            Ok(ips) => ips,
            Err(e) => match classify(e) {
                // A target without addresses gives no backend; the others do.
                Ok(_) => continue,
                Err(why) => return Err(format!("{}: {why}", s.target())),
            },
        };
        hold = hold.min(ttl(ips.valid_until()));
        for ip in ips.iter() {
            found.push(Found {
                addr: SocketAddr::new(ip, s.port()),
                name: None,
                weight,
                draining: None,
            });
        }
    }
    found.sort_by_key(|f| f.addr);
    found.dedup_by_key(|f| f.addr);
    if found.is_empty() {
        return Ok(Answer::Empty);
    }
    Ok(Answer::Found(found, hold))
}

/// How long a DNS lookup may take before it counts as failed.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one refresh's lookups may take together.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(4);

/// The shortest wait between DNS lookups, whatever the TTL (0 is common).
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// What a DNS pool looks up.
pub(super) enum Ask<'a> {
    /// A and AAAA records of a name, with the port.
    Addresses(&'a str, u16),
    /// SRV records of a name.
    Services(&'a str),
}

pub(super) async fn follow(
    cx: &mut Context,
    d: &DiscoveryConfig,
    server: Option<SocketAddr>,
    ask: Ask<'_>,
) {
    let resolver = match resolver(server, DNS_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(pool = %cx.pool.name, error = %e, "DNS discovery cannot start; the pool keeps its last set");
            return std::future::pending().await;
        }
    };
    loop {
        let lookup = async {
            match ask {
                Ask::Addresses(name, port) => addresses(&resolver, name, port).await,
                Ask::Services(name) => services(&resolver, name).await,
            }
        };
        // The resolver's own timeout is per query; a lookup is several
        // (A and AAAA, an SRV's targets): bound the whole.
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {LOOKUP_TIMEOUT:?}")));
        let wait = match answer {
            Ok(Answer::Found(found, ttl)) => {
                cx.report(d, Ok(found));
                d.refresh.min(ttl).max(MIN_REFRESH)
            }
            Ok(Answer::Empty) => {
                cx.report(d, Ok(Vec::new()));
                d.refresh
            }
            Err(e) => {
                cx.report(d, Err(e));
                d.refresh
            }
        };
        tokio::time::sleep(wait).await;
    }
}
