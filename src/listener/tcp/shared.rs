//! What a TCP listener's accept loops and connections share: its route and
//! series, its connection limit (which a reload may move), its stops; and
//! the limit itself (each connection's `ConnPermit` is in `listener::limits`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handover::Handover;
use crate::clock::Every;
use crate::listener::limits::Clients;
use crate::listener::route::Route;
use crate::metrics::TcpListenerMetrics;

/// State shared by a listener's accept tasks and its connections.
pub struct TcpShared {
    pub route: ArcSwap<Route>,
    pub metrics: TcpListenerMetrics,
    /// Permits for `max_connections`; taken before accept so excess clients
    /// wait in the kernel's backlog.
    pub limit: Arc<Semaphore>,
    /// Permits a lowered `max_connections` still has to take back from open
    /// connections: each one closing pays one off instead of returning it.
    pub owed: Arc<AtomicUsize>,
    /// Ends established connections (shutdown grace over).
    pub hard_stop: CancellationToken,
    pub tracker: TaskTracker,
    /// Paces the log line for connections the proxy could not serve for
    /// want of its own resources.
    pub local_log: Every,
    /// Per-client-address counts, for `max_connections_per_ip` and
    /// `connection_rate_per_ip`.
    pub clients: Arc<Clients>,
    /// A binary upgrade's hand-over of established connections.
    pub handover: Arc<Handover>,
}

impl TcpShared {
    /// Changes the connection limit from `old` to `new`. Free permits are
    /// taken back at once; the rest are owed and taken as connections close.
    pub fn resize_limit(&self, old: usize, new: usize) {
        if new > old {
            // First cancel what an earlier decrease still owes.
            let mut more = new - old;
            if let Ok(owed) = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                    Some(o - o.min(more))
                })
            {
                more -= owed.min(more);
            }
            self.limit.add_permits(more);
        } else if old > new {
            let taken = self.limit.forget_permits(old - new);
            self.owed.fetch_add(old - new - taken, Ordering::AcqRel);
        }
    }
}

/// One accept loop's own copies of the listener's stops (child tokens):
/// each connection waits on its worker's, so no connection takes a lock that
/// another worker's connections take, and a stop of the listener or the
/// daemon still reaches every one.
pub struct LocalStops {
    /// Ends relays at once (the listener's grace is over).
    pub hard: CancellationToken,
    /// A binary upgrade asks relays to stop at a safe point.
    pub handover: CancellationToken,
}

impl LocalStops {
    /// Children of `shared`'s stops.
    pub fn of(shared: &TcpShared) -> LocalStops {
        LocalStops {
            hard: shared.hard_stop.child_token(),
            handover: shared.handover.token.child_token(),
        }
    }
}
