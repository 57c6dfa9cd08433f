//! TCP listeners' accept loop ([`accept_loop`]): a place and descriptors
//! taken only for a client that waits, then the connection's task
//! (`conn`).

mod carry;
mod conn;
mod connect;
mod greet;
pub mod handover;
mod shared;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::clock::Every;
use crate::fds;
pub use crate::listener::limits::ConnPermit;
use crate::net::{self, local_cause};
pub(crate) use conn::serve_moved;
pub use shared::{LocalStops, TcpShared};

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
                // One form for the client from here on (a dual-stack
                // socket shows an IPv4 client as `::ffff:a.b.c.d`).
                let peer = crate::wire::canonical(peer);
                backoff = Duration::ZERO;
                let shared2 = shared.clone();
                let slot = ConnPermit {
                    permit: Some(permit),
                    owed: shared.owed.clone(),
                    _fds: fds,
                };
                shared
                    .tracker
                    .spawn(conn::serve(shared2, stream, peer, slot, stops.clone()));
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
