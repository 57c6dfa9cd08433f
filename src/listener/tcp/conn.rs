//! One TCP connection's life up to the relay: admit it (allow/deny,
//! per-address limits, a PROXY header or a ClientHello first), pick and
//! connect with retries, then carry it (`carry`); and a connection
//! handed over by the process this one replaced, carried on from where it
//! stopped.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::carry::{carry, Before, Carried};
use super::connect::{connect, refused_connect, ConnectRefusal, TcpUpstream};
use super::greet::{self, GreetRefusal};
use super::handover::Moved;
use super::shared::{LocalStops, TcpShared};
use super::tls::TlsStart;
use crate::fds;
use crate::listener::limits::ConnPermit;
use crate::listener::limits::{AddressLimits, Admitted, LimitRefusal};
use crate::listener::route::Route;
use crate::metrics::TcpListenerMetrics;

/// Counts a connection as open until dropped.
/// Its place goes back first: a scrape never shows a free place that is
/// not yet free.
struct OpenGuard<'a> {
    gauge: &'a prometheus::IntGauge,
    slot: Option<ConnPermit>,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        drop(self.slot.take());
        self.gauge.dec();
    }
}

/// The listener's per-address limits, if it has any.
fn per_address(route: &Route) -> Option<AddressLimits> {
    let limits = AddressLimits {
        open: route.config.max_connections_per_ip.map(|n| n.get()),
        rate: route.config.connection_rate_per_ip,
    };
    limits.any().then_some(limits)
}

/// Counts and logs a client refused by its per-address limit.
fn refused(m: &TcpListenerMetrics, listener: &str, who: SocketAddr, refusal: LimitRefusal) {
    match refusal {
        LimitRefusal::Open => m.rejected_ip_limit.inc(),
        LimitRefusal::Rate => m.rejected_ip_rate.inc(),
    }
    tracing::debug!(listener, client = %who, ?refusal, "client refused by its per-address limit");
}

/// Counts and logs a client refused by allow/deny.
fn denied(m: &TcpListenerMetrics, listener: &str, who: SocketAddr) {
    m.rejected_denied.inc();
    tracing::debug!(listener, client = %who, "client refused by allow/deny");
}

/// Admits the peer as it is accepted, before anything is read: allow/deny
/// (unless a proxy in front will name the client), and a charge against its
/// address's limits, held while the connection is open or until a PROXY
/// header names the client behind it.
fn admit_peer(shared: &TcpShared, route: &Route, peer: SocketAddr) -> Result<Option<Admitted>, ()> {
    let (m, name) = (&shared.metrics, route.config.name.as_str());
    if route.config.accept_proxy.is_none() && !route.config.admits(peer.ip()) {
        denied(m, name, peer);
        return Err(());
    }
    let Some(limits) = per_address(route) else {
        return Ok(None);
    };
    match shared.clients.admit(peer.ip(), &limits) {
        Ok(admitted) => Ok(Some(admitted)),
        Err(refusal) => {
            refused(m, name, peer, refusal);
            Err(())
        }
    }
}

/// Admits the client a PROXY header named (`who`, the peer itself when it
/// named none): allow/deny, and the peer's charge moved to it.
fn admit_client(
    shared: &TcpShared,
    route: &Route,
    who: SocketAddr,
    charge: Option<Admitted>,
) -> Result<Option<Admitted>, ()> {
    let (m, name) = (&shared.metrics, route.config.name.as_str());
    if !route.config.admits(who.ip()) {
        denied(m, name, who);
        return Err(());
    }
    match (per_address(route), charge) {
        (Some(limits), Some(charge)) => match charge.move_to(who.ip(), &limits) {
            Ok(moved) => Ok(Some(moved)),
            Err(refusal) => {
                refused(m, name, who, refusal);
                Err(())
            }
        },
        (_, charge) => Ok(charge),
    }
}

/// One client connection, from accept to close.
///
/// An `async` block rather than an `async fn`: an `async fn` moves each
/// argument into a local of its own and keeps both in the task, which here
/// cost 112 bytes of every connection (and with them a step of tokio's
/// 128-byte-aligned task cell).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub(super) fn serve(
    shared: Arc<TcpShared>,
    mut client: TcpStream,
    peer: SocketAddr,
    slot: ConnPermit,
    stops: Arc<LocalStops>,
) -> impl std::future::Future<Output = ()> {
    async move {
        let m = &shared.metrics;
        let route = shared.route.load_full();
        let name = route.config.name.as_str();
        // Per-address limits hold from accept: a client whose PROXY header
        // or ClientHello is slow still counts.
        let Ok(charge) = admit_peer(&shared, &route, peer) else {
            return;
        };
        // A PROXY header or a ClientHello to read first; boxed, so that every
        // other connection's task keeps its size.
        let greeting = if route.config.accept_proxy.is_some() || !route.config.routes.is_empty() {
            match Box::pin(greet::greet(&client, peer, &route, m)).await {
                Ok(g) => Some(Box::new(g)),
                Err(refused) => {
                    match refused {
                        GreetRefusal::ProxyHeader(why) => {
                            m.rejected_proxy_header.inc();
                            tracing::debug!(listener = name, client = %peer, why, "connection refused: its PROXY protocol header");
                        }
                        GreetRefusal::NoSni(why) => {
                            m.rejected_sni.inc();
                            tracing::debug!(listener = name, client = %peer, why, "connection refused: no server name (sni_required)");
                        }
                        GreetRefusal::Gone => {}
                    }
                    return;
                }
            }
        } else {
            None
        };
        let who = greeting.as_ref().and_then(|g| g.client).unwrap_or(peer);
        // Held until the connection ends: behind a proxy, moved to the
        // client its header named.
        let _charge = match route.config.accept_proxy {
            Some(_) => match admit_client(&shared, &route, who, charge) {
                Ok(moved) => moved,
                Err(()) => return,
            },
            None => charge,
        };
        m.connections.inc();
        m.active.inc();
        let _open = OpenGuard {
            gauge: &m.active,
            slot: Some(slot),
        };
        let started = crate::clock::now_us();
        let pool = route.pick_pool(greeting.as_ref().and_then(|g| g.route));
        // Matched at once, not bound: a named result would keep its own
        // place in the task for the connection's whole life.
        let (mut backend, guard, early) = match {
            // One snapshot for the path, the header's version and every
            // attempt; dropped at this block's end, so that a connection
            // does not keep its pool's old snapshot alive.
            let snap = pool.snapshot();
            let route_ends_tls = route
                .config
                .terminator(greeting.as_ref().and_then(|g| g.route))
                .is_some();
            // TLS on either side: its own path, boxed, so that every other
            // connection's task keeps its size.
            if route_ends_tls || snap.config.tls.is_some() {
                let start = TlsStart {
                    snap,
                    shared: &shared,
                    stops: &stops,
                    route: &route,
                    pool,
                    who,
                    greeting,
                    started,
                };
                Box::pin(super::tls::serve(start, client)).await;
                return;
            }
            // The client's bytes read while greeting it go after the header
            // (counted from it, not kept beside it: every connection's task
            // would carry the count).
            let preamble = greet::preamble(&client, who, snap.config.proxy_protocol, greeting);
            tokio::select! {
                c = connect((pool, &snap), who, name, &preamble) => {
                    c.map(|(b, g)| (b, g, preamble.early() as u64))
                }
                _ = stops.hard.cancelled() => Err(ConnectRefusal::NoBackend),
            }
        } {
            Ok((TcpUpstream::Plain(b), g, early)) => (b, g, early),
            // Not from this snapshot, which starts no TLS.
            Ok((TcpUpstream::Tls(_), _, _)) => return,
            Err(refusal) => {
                refused_connect(&shared, name, who, refusal);
                return;
            }
        };
        // Forwarded with the connect: counted as the relay counts its bytes.
        if early > 0 {
            m.bytes_in.inc_by(early);
            guard.backend().metrics.bytes_out.inc_by(early);
        }
        carry(
            Carried {
                shared: &shared,
                stops: &stops,
                route: &route,
                pool,
                guard: &guard,
                peer: &who,
            },
            &mut client,
            &mut backend,
            Before {
                started,
                up: early,
                down: 0,
            },
        )
        .await;
    }
}

/// A connection handed over by the process this one replaced (a binary
/// upgrade), relayed on from where it stopped.
pub async fn serve_moved(
    shared: Arc<TcpShared>,
    client: std::net::TcpStream,
    backend: std::net::TcpStream,
    moved: Moved,
) {
    let route = shared.route.load_full();
    let Some((pool, member)) = route.find(moved.backend) else {
        tracing::warn!(listener = %moved.listener, client = %moved.client, backend = %moved.backend, "a connection handed over to a backend this configuration lacks is closed");
        return;
    };
    let guard = member.open();
    let (mut client, mut backend) =
        match (TcpStream::from_std(client), TcpStream::from_std(backend)) {
            (Ok(c), Ok(b)) => (c, b),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot take a handed-over connection");
                return;
            }
        };
    let m = &shared.metrics;
    m.active.inc();
    // Its place: under max_connections if one is free (it was admitted by
    // the old process already, so it is never refused here).
    let _open = OpenGuard {
        gauge: &m.active,
        slot: Some(ConnPermit {
            permit: shared.limit.clone().try_acquire_owned().ok(),
            owed: shared.owed.clone(),
            _fds: fds::try_take(2).unwrap_or_else(fds::untracked),
        }),
    };
    let started = crate::clock::now_us().saturating_sub(moved.age_ms.saturating_mul(1000));
    carry(
        Carried {
            shared: &shared,
            stops: &LocalStops::of(&shared),
            route: &route,
            pool,
            guard: &guard,
            peer: &moved.client,
        },
        &mut client,
        &mut backend,
        Before {
            started,
            up: moved.up,
            down: moved.down,
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Every;
    use crate::metrics::Metrics;
    use arc_swap::ArcSwap;
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// Every open connection's task is this future (measured in a debug
    /// build): keep it from growing past the relay's own budget by much.
    #[tokio::test]
    async fn a_connections_task_stays_small() {
        let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n";
        let metrics = Metrics::new();
        let route = Route::of_text(text);
        let pool = route.pool.clone();
        let shared = Arc::new(TcpShared {
            route: ArcSwap::from_pointee(Route::of_text(text)),
            metrics: metrics.tcp_listener("l"),
            limit: Arc::new(Semaphore::new(1)),
            owed: Default::default(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            local_log: Every::ms(1000),
            clients: Default::default(),
            handover: Default::default(),
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let a = TcpStream::connect(addr).await.unwrap();
        let (b, peer) = l.accept().await.unwrap();
        let guard = pool.snapshot().members[0].backend.open();
        let (mut a, mut b) = (a, b);
        let stops = Arc::new(LocalStops::of(&shared));
        let carrying = carry(
            Carried {
                shared: &shared,
                stops: &stops,
                route: &route,
                pool: &pool,
                guard: &guard,
                peer: &peer,
            },
            &mut a,
            &mut b,
            Before {
                started: crate::clock::now_us(),
                up: 0,
                down: 0,
            },
        );
        let carry_size = std::mem::size_of_val(&carrying);
        drop(carrying);
        let c = TcpStream::connect(addr).await.unwrap();
        let slot = ConnPermit {
            permit: None,
            owed: shared.owed.clone(),
            _fds: fds::untracked(),
        };
        let serving = serve(shared.clone(), c, peer, slot, stops.clone());
        let serve_size = std::mem::size_of_val(&serving);
        // tokio aligns a task's cell to 128 bytes (32-byte header, 48-byte
        // trailer, the future plus 32 bytes between), so growth shows in
        // steps: up to 1,808 bytes the cell is 1,920, one step more is
        // 2,048, which an idle connection pays. Hence the tight budget; the
        // relay is most of it.
        assert!(
            carry_size <= 1472,
            "carrying a connection grew to {carry_size} bytes"
        );
        assert!(
            serve_size <= 1808,
            "a connection's task grew to {serve_size} bytes, past a step of tokio's task cell"
        );
    }
}
