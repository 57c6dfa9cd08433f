//! TCP listeners: the accept loop ([`accept_loop`]) and one connection's life
//! (`serve`): pick, connect with retries, relay, log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::AsRawFd;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

use tokio_util::sync::CancellationToken;

use crate::backend::ActiveGuard;

use super::clients::{Limits, Refusal};
use super::connect::{connect, Unserved};
use super::greet::{self, Refused};
use super::handover::Moved;
pub use super::tcp_shared::{LocalStops, Slot, TcpShared};
use super::Route;
use crate::clock::Every;
use crate::fds::{self};
use crate::metrics::TcpListenerMetrics;
use crate::net::{self, local_cause};
use crate::pool::Pool;
use crate::relay::{self, End, Meter, Side, Stops};

/// Accepts until `stop` fires.
///
/// A place under `max_connections` (and two descriptors of the budget) is
/// taken only once a client is waiting on this socket: with `reuse_port`,
/// each socket of the group has its own queue, and a loop holding a place
/// while its own queue is empty could leave a client waiting on another
/// socket while the listener is under its limit. Past the limit, clients
/// wait in the backlog and each time one is found waiting it is counted.
/// Resource-exhaustion errors back off (up to a second) instead of spinning;
/// they are logged at most once a second.
pub async fn accept_loop(
    listener: Arc<AsyncFd<std::net::TcpListener>>,
    shared: Arc<TcpShared>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::ZERO;
    let failures = Every::ms(1000);
    let stops = Arc::new(LocalStops::of(&shared));
    loop {
        let mut waiting = tokio::select! {
            r = listener.readable() => match r {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::error!(listener = %shared.route.load().config.name, error = %e, "cannot wait for clients; the listener stops");
                    return;
                }
            },
            _ = stop.cancelled() => return,
        };
        let permit = match shared.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Readiness may be stale (left over from the client just
                // accepted): ask the socket before counting anyone as waiting.
                if !net::client_waiting(waiting.get_ref().get_ref()) {
                    waiting.clear_ready();
                    continue;
                }
                // At max_connections: the client waits in the backlog.
                shared.metrics.rejected_limit.inc();
                tokio::select! {
                    p = shared.limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = stop.cancelled() => return,
                }
            }
        };
        // A client and its backend connection: two descriptors. With none
        // left, clients wait in the backlog, as at max_connections.
        let fds = match fds::try_take(2) {
            Some(h) => h,
            None => {
                if !net::client_waiting(waiting.get_ref().get_ref()) {
                    waiting.clear_ready();
                    continue;
                }
                shared.metrics.rejected_descriptors.inc();
                tokio::select! {
                    h = fds::take(2) => h,
                    _ = stop.cancelled() => return,
                }
            }
        };
        let accepted = match waiting.try_io(|l| net::accept(l.get_ref())) {
            Ok(r) => r.and_then(|(s, peer)| Ok((TcpStream::from_std(s)?, peer))),
            // Nobody after all (readiness was stale): wait again.
            Err(_would_block) => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                let shared2 = shared.clone();
                let slot = Slot {
                    permit: Some(permit),
                    owed: shared.owed.clone(),
                    _fds: fds,
                };
                shared
                    .tracker
                    .spawn(serve(shared2, stream, peer, slot, stops.clone()));
            }
            Err(e) => {
                drop((permit, fds));
                shared.metrics.accept_errors.inc();
                if failures.ready() {
                    tracing::error!(listener = %shared.route.load().config.name, error = %e, "accept failed");
                }
                // The proxy's own shortage (descriptors, buffers): only time
                // (connections closing) cures it.
                if local_cause(&e).is_some() {
                    // 10ms doubling to 1s: quick recovery when a few descriptors
                    // free up, no busy loop when none do.
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// A backend that ends a connection within this long of taking it, without
/// sending a byte, failed it: long enough for a crashing or refusing
/// service, far shorter than a real exchange that ends in silence.
const EARLY_CLOSE: Duration = Duration::from_secs(1);

/// Whether the backend, not the client, ended the relay.
fn backend_ended_it(o: &relay::Outcome) -> bool {
    match o.end {
        End::Reset(Side::Backend) | End::Error(Side::Backend) => true,
        End::Closed => o.first_eof == Some(Side::Backend),
        _ => false,
    }
}

/// Relays until done, or until `signal` (its backend went down) and `grace`
/// have passed, then stops it with `own`; says whether that happened.
async fn until_down(
    relaying: impl std::future::Future<Output = relay::Outcome>,
    own: &CancellationToken,
    grace: Duration,
    signal: CancellationToken,
) -> (relay::Outcome, bool) {
    tokio::pin!(relaying);
    tokio::select! {
        o = &mut relaying => (o, false),
        _ = async {
            signal.cancelled().await;
            tokio::time::sleep(grace).await;
            own.cancel();
        } => (relaying.await, true),
    }
}

/// Relays a connection on when it could not be handed over.
async fn finish_here(
    shared: &TcpShared,
    route: &Route,
    client: &mut TcpStream,
    backend: &mut TcpStream,
    b: &crate::backend::Backend,
) -> relay::Outcome {
    let never = CancellationToken::new();
    let stop = Stops {
        hard: &shared.hard_stop,
        handover: &never,
    };
    let (splice, up, down) = meters(route, &shared.metrics, b);
    relay::relay(
        client,
        backend,
        route.config.idle_timeout,
        stop,
        splice,
        up,
        down,
    )
    .await
}

/// The splice switch and byte meters of one connection.
fn meters<'a>(
    route: &Route,
    m: &'a TcpListenerMetrics,
    b: &'a crate::backend::Backend,
) -> (relay::Splice<'a>, Meter<'a>, Meter<'a>) {
    (
        relay::Splice {
            on: route.config.zero_copy,
            switched: &m.zero_copy,
        },
        Meter {
            read: &m.bytes_in,
            written: &b.metrics.bytes_out,
        },
        Meter {
            read: &b.metrics.bytes_in,
            written: &m.bytes_out,
        },
    )
}

/// Counts a connection as open until dropped.
/// Its place goes back first: a scrape never shows a free place that is
/// not yet free.
struct Open<'a> {
    gauge: &'a prometheus::IntGauge,
    slot: Option<Slot>,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        drop(self.slot.take());
        self.gauge.dec();
    }
}

/// The listener's per-address limits, if it has any.
fn per_address(route: &Route) -> Option<Limits> {
    let limits = Limits {
        open: route.config.max_connections_per_ip.map(|n| n.get()),
        rate: route.config.connection_rate_per_ip,
    };
    limits.any().then_some(limits)
}

/// One client connection, from accept to close.
async fn serve(
    shared: Arc<TcpShared>,
    mut client: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    stops: Arc<LocalStops>,
) {
    let m = &shared.metrics;
    let route = shared.route.load_full();
    let name = route.config.name.as_str();
    // A PROXY header or a ClientHello to read first; boxed, so that every
    // other connection's task keeps its size.
    let greeting = if route.config.accept_proxy.is_some() || !route.config.routes.is_empty() {
        match Box::pin(greet::greet(&client, peer, &route, m)).await {
            Ok(g) => Some(Box::new(g)),
            Err(refused) => {
                match refused {
                    Refused::ProxyHeader(why) => {
                        m.rejected_proxy_header.inc();
                        tracing::debug!(listener = name, client = %peer, why, "connection refused: its PROXY protocol header");
                    }
                    Refused::NoSni(why) => {
                        m.rejected_sni.inc();
                        tracing::debug!(listener = name, client = %peer, why, "connection refused: no server name (sni_required)");
                    }
                    Refused::Gone => {}
                }
                return;
            }
        }
    } else {
        None
    };
    let who = greeting.as_ref().and_then(|g| g.client).unwrap_or(peer);
    if !route.config.admits(who.ip()) {
        m.rejected_denied.inc();
        tracing::debug!(listener = name, client = %who, "client refused by allow/deny");
        return;
    }
    // Scoped, so the limits are not part of the task's state while it relays.
    let _client = if let Some(limits) = per_address(&route) {
        match shared.clients.admit(who.ip(), &limits) {
            Ok(admitted) => Some(admitted),
            Err(refusal) => {
                match refusal {
                    Refusal::Open => m.rejected_ip_limit.inc(),
                    Refusal::Rate => m.rejected_ip_rate.inc(),
                }
                tracing::debug!(listener = name, client = %who, ?refusal, "client refused by its per-address limit");
                return;
            }
        }
    } else {
        None
    };
    m.connections.inc();
    m.active.inc();
    let _open = Open {
        gauge: &m.active,
        slot: Some(slot),
    };
    let started = tokio::time::Instant::now();
    let pool = route.pick_pool(greeting.as_ref().and_then(|g| g.route));
    let connected = {
        // One snapshot for the header's version and every attempt.
        let snap = pool.snapshot();
        let preamble = greet::preamble(&client, who, snap.config.proxy_protocol, greeting);
        tokio::select! {
            c = connect(&snap, who, name, &preamble) => c,
            _ = stops.hard.cancelled() => Err(Unserved::NoBackend),
        }
    };
    let (mut backend, guard) = match connected {
        Ok(c) => c,
        Err(Unserved::NoBackend) => {
            m.no_backend.inc();
            tracing::warn!(listener = name, client = %who, "no backend could take the connection; closing it");
            return;
        }
        Err(Unserved::Local(reason, e)) => {
            m.local.count(reason);
            if shared.local_log.ready() {
                tracing::error!(listener = name, reason, error = %e, "the proxy is out of its own resources; closing connections it cannot serve (logged at most once a second)");
            }
            return;
        }
    };
    carry(
        (&shared, &stops),
        (&route, pool),
        (&mut client, &mut backend),
        &guard,
        who,
        (started, 0, 0),
    )
    .await;
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
    let _open = Open {
        gauge: &m.active,
        slot: Some(Slot {
            permit: shared.limit.clone().try_acquire_owned().ok(),
            owed: shared.owed.clone(),
            _fds: fds::try_take(2).unwrap_or_else(fds::untracked),
        }),
    };
    let now = tokio::time::Instant::now();
    let started = now
        .checked_sub(Duration::from_millis(moved.age_ms))
        .unwrap_or(now);
    carry(
        (&shared, &LocalStops::of(&shared)),
        (&route, pool),
        (&mut client, &mut backend),
        &guard,
        moved.client,
        (started, moved.up, moved.down),
    )
    .await;
}

/// Relays a connected client and backend until done, then counts, logs and,
/// on a binary upgrade, hands the connection to the new process. `before`
/// is when it began and the bytes relayed before this process had it.
async fn carry(
    (shared, stops): (&TcpShared, &LocalStops),
    (route, pool): (&Route, &Pool),
    (client, backend): (&mut TcpStream, &mut TcpStream),
    guard: &ActiveGuard,
    peer: SocketAddr,
    before: (tokio::time::Instant, u64, u64),
) {
    let (started, up_before, down_before) = before;
    let m = &shared.metrics;
    let name = route.config.name.as_str();
    let b = guard.backend();
    let (splice, up, down) = meters(route, m, b);
    let idle = route.config.idle_timeout;
    let (outcome, closed_as_down) = match b.down_watch() {
        None => {
            let stop = Stops {
                hard: &stops.hard,
                handover: &stops.handover,
            };
            let o = relay::relay(client, backend, idle, stop, splice, up, down).await;
            (o, false)
        }
        // on_backend_down = "close": a stop of the connection's own, fired
        // when the backend goes down (plus the grace). Boxed, so that every
        // other connection's task keeps its size.
        Some((grace, signal)) => {
            let own = stops.hard.child_token();
            let stop = Stops {
                hard: &own,
                handover: &stops.handover,
            };
            let relaying = relay::relay(client, backend, idle, stop, splice, up, down);
            Box::pin(until_down(relaying, &own, grace, signal)).await
        }
    };
    let mut outcome = outcome;
    if outcome.end == End::HandedOver {
        let moved = Moved {
            listener: name.to_string(),
            client: peer,
            backend: b.addr,
            up: up_before + outcome.up,
            down: down_before + outcome.down,
            age_ms: started.elapsed().as_millis() as u64,
        };
        match shared
            .handover
            .send(&moved, client.as_raw_fd(), backend.as_raw_fd())
        {
            // The new process has its own copies; this one's close with it.
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(listener = name, client = %peer, error = %e, "cannot hand a connection over; it finishes here");
                // Boxed: this rare path's state is no part of every task.
                let rest = Box::pin(finish_here(shared, route, client, backend, b));
                let more = rest.await;
                outcome = relay::Outcome {
                    up: outcome.up + more.up,
                    down: outcome.down + more.down,
                    ..more
                };
            }
        }
    }
    if closed_as_down {
        b.metrics.closed_on_down.inc();
    }
    let elapsed = started.elapsed();
    m.duration.observe(elapsed.as_secs_f64());
    if outcome.down == 0 && elapsed < EARLY_CLOSE && backend_ended_it(&outcome) {
        // It took the connection and ended it without a byte: a black hole
        // that a plain TCP check passes. Passive health counts it as a
        // failed connect, or least_conn would feed it every client.
        b.metrics.fail_closed.inc();
        let cfg = &pool.snapshot().config;
        b.connect_failed(cfg.max_fails, cfg.fail_timeout);
    } else {
        b.connect_succeeded();
    }
    if route.config.access_log {
        tracing::info!(
            target: "switchyard::access",
            listener = name,
            client = %peer,
            backend = %b.addr,
            backend_name = %b.name,
            bytes_in = up_before + outcome.up,
            bytes_out = down_before + outcome.down,
            duration_ms = elapsed.as_millis() as u64,
            end = if closed_as_down { "backend_down" } else { outcome.end.as_str() },
            "tcp connection"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::pool::Pool;
    use arc_swap::ArcSwap;
    use tokio::sync::Semaphore;
    use tokio_util::task::TaskTracker;

    /// Every open connection's task is this future (measured in a debug
    /// build): keep it from growing past the relay's own budget by much.
    #[tokio::test]
    async fn a_connections_task_stays_small() {
        let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n";
        let config = crate::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let metrics = Metrics::new();
        let pool = Pool::new(&config.pools["p"], Arc::new(Metrics::new()));
        let route = Route {
            config: config.listeners[0].clone(),
            pool: pool.clone(),
            targets: Vec::new(),
        };
        let shared = Arc::new(TcpShared {
            route: ArcSwap::from_pointee(Route {
                config: config.listeners[0].clone(),
                pool: pool.clone(),
                targets: Vec::new(),
            }),
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
            (&shared, &stops),
            (&route, &pool),
            (&mut a, &mut b),
            &guard,
            peer,
            (tokio::time::Instant::now(), 0, 0),
        );
        let carry_size = std::mem::size_of_val(&carrying);
        drop(carrying);
        let c = TcpStream::connect(addr).await.unwrap();
        let slot = Slot {
            permit: None,
            owed: shared.owed.clone(),
            _fds: fds::untracked(),
        };
        let serving = serve(shared.clone(), c, peer, slot, stops.clone());
        let serve_size = std::mem::size_of_val(&serving);
        // 1,360 bytes before this task learned per-address limits, reset
        // propagation and the upgrade's hand-over; 1,848 now, of which the
        // relay is 1,168.
        assert!(
            carry_size <= 1536,
            "carrying a connection grew to {carry_size} bytes"
        );
        assert!(
            serve_size <= 2048,
            "a connection's task grew to {serve_size} bytes"
        );
    }
}
