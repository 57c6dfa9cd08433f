//! Backends from DNS: every A and AAAA record of a name (`dns`), or the
//! targets of its SRV records with their ports and weights (`dns_srv`).
//! Lookups are asynchronous (hickory-resolver): a slow or dead name server
//! delays only this pool's next set, never a connection.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::{NameServerPool, TokioConnectionProvider};
use hickory_resolver::proto::op::{Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::proto::xfer::{DnsHandle, DnsRequestOptions, Protocol};
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{ResolveError, TokioResolver};

use super::Context;
use crate::config::{DiscoveryConfig, MAX_WEIGHT};
use crate::pool::Found;

/// What a lookup came to.
pub(super) enum DnsAnswer {
    /// Backends, and how long the answer holds (its shortest TTL).
    Found(Vec<Found>, Duration),
    /// The name exists in no form that gives a backend (NXDOMAIN, no
    /// records of the type): an empty set, applied only with `allow_empty`.
    Empty,
}

/// How switchyard asks DNS: a resolver for addresses, and the same name
/// servers asked directly for SRV records, whose answer's truncation the
/// resolver would hide.
pub(super) struct Dns {
    resolver: TokioResolver,
    servers: NameServerPool<TokioConnectionProvider>,
}

/// How many SRV targets are looked up at once.
const TARGETS_AT_ONCE: usize = 64;

/// A resolver asking `server`, or the system's configured ones.
pub(super) fn resolver(server: Option<SocketAddr>, timeout: Duration) -> Result<Dns, String> {
    let (config, mut opts) = match server {
        Some(addr) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            (config, ResolverOpts::default())
        }
        None => hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
    };
    opts.timeout = timeout;
    opts.attempts = 1;
    // Every refresh asks the server: a change is seen within `refresh`.
    opts.cache_size = 0;
    let provider = TokioConnectionProvider::default();
    let servers = NameServerPool::from_config(
        config.name_servers().to_vec().into(),
        opts.clone(),
        provider.clone(),
    );
    let resolver = TokioResolver::builder_with_config(config, provider)
        .with_options(opts)
        .build();
    Ok(Dns { resolver, servers })
}

/// An empty answer (the name or its records do not exist), or a failure.
fn classify(e: ResolveError) -> Result<DnsAnswer, String> {
    match e.proto() {
        Some(p) => classify_proto(p),
        None => Err(e.to_string()),
    }
}

fn classify_proto(p: &ProtoError) -> Result<DnsAnswer, String> {
    if let ProtoErrorKind::NoRecordsFound { response_code, .. } = p.kind() {
        if matches!(
            *response_code,
            ResponseCode::NXDomain | ResponseCode::NoError
        ) {
            return Ok(DnsAnswer::Empty);
        }
        return Err(format!("the server answered {response_code}"));
    }
    Err(p.to_string())
}

fn ttl(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

/// Every address of `name`, each with `port`.
pub(super) async fn addresses(d: &Dns, name: &str, port: u16) -> Result<DnsAnswer, String> {
    let r = &d.resolver;
    let fqdn = format!("{name}.");
    let ips = match r.lookup_ip(fqdn.as_str()).await {
        Ok(ips) => ips,
        Err(e) => return classify(e),
    };
    let found: Vec<Found> = ips
        .iter()
        .map(|ip: IpAddr| Found {
            addr: SocketAddr::new(ip, port),
            name: None,
            weight: NonZeroU32::MIN,
            draining: None,
        })
        .collect();
    if found.is_empty() {
        return Ok(DnsAnswer::Empty);
    }
    Ok(DnsAnswer::Found(found, ttl(ips.valid_until())))
}

/// The targets of `name`'s SRV records of the best (lowest) priority, with
/// their ports and weights (0 counts as 1; above 256, 256). A target's
/// addresses come from the answer's additional records when the server put
/// them there, else from lookups, 64 at once. An answer cut short even over
/// TCP (more records than one DNS message can hold) is an error, never a
/// part of the set taken for the whole.
pub(super) async fn services(d: &Dns, name: &str) -> Result<DnsAnswer, String> {
    let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| format!("{name}: {e}"))?;
    let response = match d
        .servers
        .lookup(
            Query::query(fqdn, RecordType::SRV),
            DnsRequestOptions::default(),
        )
        .next()
        .await
    {
        None => return Err("no answer".into()),
        Some(Err(e)) => return classify_proto(&e),
        Some(Ok(r)) => r,
    };
    match response.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(DnsAnswer::Empty),
        code => return Err(format!("the server answered {code}")),
    }
    let records: Vec<_> = response
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(srv) => Some((srv.clone(), r.ttl())),
            _ => None,
        })
        .collect();
    if response.truncated() {
        return Err(format!(
            "the SRV answer does not fit in one DNS message (65,535 bytes); {} records arrived, cut short. \
             Serve fewer per name (split it, or shorter target names), or use A records (kind = \"dns\") or a store",
            records.len()
        ));
    }
    let Some(best) = records.iter().map(|(s, _)| s.priority()).min() else {
        return Ok(DnsAnswer::Empty);
    };
    let mut hold = records
        .iter()
        .map(|(_, ttl)| Duration::from_secs(u64::from(*ttl)))
        .min()
        .unwrap_or(Duration::ZERO);
    // Addresses the server sent along.
    let mut known: HashMap<Name, Vec<IpAddr>> = HashMap::new();
    for r in response.additionals() {
        let ip = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        known.entry(r.name().clone()).or_default().push(ip);
    }
    let best: Vec<_> = records
        .into_iter()
        .filter(|(s, _)| s.priority() == best)
        .map(|(s, _)| s)
        .collect();
    // The others, looked up side by side.
    let mut missing: Vec<Name> = best
        .iter()
        .map(|s| s.target().clone())
        .filter(|t| !known.contains_key(t))
        .collect();
    missing.sort();
    missing.dedup();
    // One copy of the resolver (its settings are copied with it), shared.
    let resolver = Arc::new(d.resolver.clone());
    let gate = Arc::new(tokio::sync::Semaphore::new(TARGETS_AT_ONCE));
    let mut asks = tokio::task::JoinSet::new();
    for target in missing {
        let (resolver, gate) = (resolver.clone(), gate.clone());
        asks.spawn(async move {
            let _turn = gate.acquire_owned().await;
            let answer = resolver.lookup_ip(target.clone()).await;
            (target, answer)
        });
    }
    while let Some(done) = asks.join_next().await {
        let (target, answer) = done.map_err(|e| e.to_string())?;
        match answer {
            Ok(ips) => {
                hold = hold.min(ttl(ips.valid_until()));
                known.insert(target, ips.iter().collect());
            }
            Err(e) => match classify(e) {
                // A target without addresses gives no backend; the others do.
                Ok(_) => {}
                Err(why) => return Err(format!("{target}: {why}")),
            },
        }
    }
    let mut found = Vec::new();
    for s in &best {
        let weight =
            NonZeroU32::new(u32::from(s.weight()).clamp(1, MAX_WEIGHT)).unwrap_or(NonZeroU32::MIN);
        for ip in known.get(s.target()).into_iter().flatten() {
            found.push(Found {
                addr: SocketAddr::new(*ip, s.port()),
                name: None,
                weight,
                draining: None,
            });
        }
    }
    if found.is_empty() {
        return Ok(DnsAnswer::Empty);
    }
    Ok(DnsAnswer::Found(found, hold))
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
    let dns = match resolver(server, DNS_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(pool = %cx.pool.name, error = %e, "DNS discovery cannot start; the pool keeps its last set");
            return std::future::pending().await;
        }
    };
    loop {
        let lookup = async {
            match ask {
                Ask::Addresses(name, port) => addresses(&dns, name, port).await,
                Ask::Services(name) => services(&dns, name).await,
            }
        };
        // The resolver's own timeout is per query; a lookup is several
        // (A and AAAA, an SRV's targets): bound the whole.
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {LOOKUP_TIMEOUT:?}")));
        let wait = match answer {
            Ok(DnsAnswer::Found(found, ttl)) => {
                cx.report(d, Ok(found));
                d.refresh.min(ttl).max(MIN_REFRESH)
            }
            Ok(DnsAnswer::Empty) => {
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
