//! The relaying part of a TCP connection's life: relay until done (or the
//! backend goes down, with `on_backend_down = "close"`), hand it to a new
//! process at a binary upgrade, then count, judge the backend and log.

use std::net::SocketAddr;
use std::time::Duration;

use std::os::fd::AsFd;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::backend::ActiveGuard;

use super::handover::Moved;
use super::shared::{LocalStops, TcpShared};
use crate::listener::route::Route;
use crate::metrics::TcpListenerMetrics;
use crate::pool::Pool;
use crate::relay::{self, Meter, RelayEnd, Side, Stops, Timers};

/// A backend that ends a connection within this long of taking it, without
/// sending a byte, failed it: long enough for a crashing or refusing
/// service, far shorter than a real exchange that ends in silence.
const EARLY_CLOSE: Duration = Duration::from_secs(1);

/// Whether the backend, not the client, ended the relay.
fn backend_ended_it(o: &relay::Outcome) -> bool {
    match o.end {
        RelayEnd::Reset(Side::Backend) | RelayEnd::Error(Side::Backend) => true,
        RelayEnd::Closed => o.first_eof == Some(Side::Backend),
        _ => false,
    }
}

/// Relays until done, or until `signal` (its backend went down) and `grace`
/// have passed, then stops it with `own`; says whether that happened.
pub(super) async fn until_down(
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
    (shared, route, pool): (&TcpShared, &Route, &Pool),
    (client, backend): (&mut TcpStream, &mut TcpStream),
    b: &crate::backend::Backend,
) -> relay::Outcome {
    let never = CancellationToken::new();
    let stop = Stops {
        hard: &shared.hard_stop,
        handover: &never,
    };
    let (splice, up, down) = meters(route, pool, &shared.metrics, b);
    relay::relay(
        client,
        backend,
        timers(route, pool, b),
        stop,
        splice,
        up,
        down,
    )
    .await
}

/// Hands a stopped connection to the new process of an upgrade; `None`
/// once it has it, else what relaying it on here to the end gave.
async fn hand_over(
    (shared, route, pool): (&TcpShared, &Route, &Pool),
    (client, backend): (&mut TcpStream, &mut TcpStream),
    b: &crate::backend::Backend,
    moved: Moved,
) -> Option<relay::Outcome> {
    let sent = shared
        .handover
        .send(&moved, client.as_fd(), backend.as_fd())
        .await;
    match sent {
        Ok(()) => None,
        Err(e) => {
            tracing::warn!(listener = %moved.listener, client = %moved.client, error = %e, "cannot hand a connection over; it finishes here");
            Some(finish_here((shared, route, pool), (client, backend), b).await)
        }
    }
}

/// A connection's idle timeout (its listener's) and the keepalive its
/// backend socket `b` gets (its pool's; none for a Unix socket, which has
/// no such thing).
pub(super) fn timers(route: &Route, pool: &Pool, b: &crate::backend::Backend) -> Timers {
    Timers {
        idle: route.config.idle_timeout,
        keepalive: backend_keepalive(pool, b),
    }
}

/// The keepalive backend `b`'s socket gets: its pool's, unless it is a
/// Unix socket.
pub(super) fn backend_keepalive(pool: &Pool, b: &crate::backend::Backend) -> Option<Duration> {
    pool.tcp_keepalive().filter(|_| b.addr.inet().is_some())
}

/// The splice switch and byte meters of one connection.
pub(super) fn meters<'a>(
    route: &'a Route,
    pool: &Pool,
    m: &'a TcpListenerMetrics,
    b: &'a crate::backend::Backend,
) -> (relay::Splice<'a>, Meter<'a>, Meter<'a>) {
    (
        relay::Splice {
            switched: route.config.zero_copy.then_some(&m.zero_copy),
            limits: route.limits(pool),
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

/// Where a carried connection belongs: its listener and that worker's
/// stops, the route and pool it was sent through, its backend's open-count
/// guard, and its client.
pub(super) struct Carried<'a> {
    pub shared: &'a TcpShared,
    pub stops: &'a LocalStops,
    pub route: &'a Route,
    pub pool: &'a Pool,
    pub guard: &'a ActiveGuard,
    pub peer: &'a SocketAddr,
}

/// What a connection had done before the relay: when it began, and the
/// bytes each way before this process had it (a hand-over) or while it was
/// greeted.
pub(super) struct Before {
    /// When the client was accepted (`clock::now_us`).
    pub started: u64,
    pub up: u64,
    pub down: u64,
}

/// Relays a connected client and backend until done, then counts, logs and,
/// on a binary upgrade, hands the connection to the new process.
pub(super) async fn carry(
    at: Carried<'_>,
    client: &mut TcpStream,
    backend: &mut TcpStream,
    before: Before,
) {
    let Carried {
        shared,
        stops,
        route,
        pool,
        guard,
        peer,
    } = at;
    let Before {
        started,
        up: up_before,
        down: down_before,
    } = before;
    let m = &shared.metrics;
    let name = route.config.name.as_str();
    let b = guard.backend();
    let (mut splice, up, down) = meters(route, pool, m, b);
    // A mirrored connection's own limits, with its tap; boxed, so that an
    // unmirrored connection's task does not grow.
    let tapped = crate::listener::mirror::open(route, *peer, &shared.tracker).map(|tap| {
        Box::new(match route.limits(pool) {
            Some(l) => l.tapped(tap),
            None => relay::rate::RateLimits {
                tap: Some(tap),
                ..Default::default()
            },
        })
    });
    if let Some(own) = tapped.as_deref() {
        splice.limits = Some(own);
    }
    let timers = timers(route, pool, b);
    let (outcome, closed_as_down) = match b.down_watch() {
        None => {
            let stop = Stops {
                hard: &stops.hard,
                handover: &stops.handover,
            };
            let o = relay::relay(client, backend, timers, stop, splice, up, down).await;
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
            let relaying = relay::relay(client, backend, timers, stop, splice, up, down);
            Box::pin(until_down(relaying, &own, grace, signal)).await
        }
    };
    let mut outcome = outcome;
    if outcome.end == RelayEnd::HandedOver {
        let moved = Moved {
            listener: name.to_string(),
            client: *peer,
            backend: b.addr,
            up: up_before + outcome.up,
            down: down_before + outcome.down,
            age_ms: crate::clock::since_us(started).as_millis() as u64,
        };
        // Boxed: this rare path's state is no part of every task.
        match Box::pin(hand_over(
            (shared, route, pool),
            (client, backend),
            b,
            moved,
        ))
        .await
        {
            // The new process has its own copies; this one's close with it.
            None => return,
            Some(more) => {
                outcome = relay::Outcome {
                    up: outcome.up + more.up,
                    down: outcome.down + more.down,
                    ..more
                };
            }
        }
    }
    finish(
        (shared, route, pool, guard, peer),
        outcome,
        closed_as_down,
        Before {
            started,
            up: up_before,
            down: down_before,
        },
        None,
    );
}

/// The end of a relayed connection (where `Carried` says, but for the stops,
/// which a task keeping to the end would pay for): its duration counted,
/// its backend judged by how it ended, one access log line.
pub(super) fn finish(
    (shared, route, pool, guard, peer): (&TcpShared, &Route, &Pool, &ActiveGuard, &SocketAddr),
    outcome: relay::Outcome,
    closed_as_down: bool,
    before: Before,
    tls: Option<&crate::tls::Session>,
) {
    let Before {
        started,
        up: up_before,
        down: down_before,
    } = before;
    let m = &shared.metrics;
    let name = route.config.name.as_str();
    let b = guard.backend();
    if closed_as_down {
        b.metrics.closed_on_down.inc();
    }
    let elapsed = crate::clock::since_us(started);
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
    if !route.config.access_log {
        return;
    }
    // A connection without TLS logs its TLS fields empty: one shape of line.
    let (tls_version, tls_server_name, tls_client_subject) = tls.map_or(("", "", ""), |t| {
        (
            t.version,
            t.server_name.as_deref().unwrap_or(""),
            t.client_cn.as_deref().unwrap_or(""),
        )
    });
    tracing::info!(
        target: "switchyard::access",
        listener = name,
        client = %crate::endpoint::Client(peer),
        backend = %b.addr,
        backend_name = %b.name,
        bytes_in = up_before + outcome.up,
        bytes_out = down_before + outcome.down,
        duration_ms = elapsed.as_millis() as u64,
        end = if closed_as_down { "backend_down" } else { outcome.end.as_str() },
        tls_version,
        tls_server_name,
        tls_client_subject,
        "tcp connection"
    );
}
