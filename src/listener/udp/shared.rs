//! What a UDP listener's tasks share: its route and series, the places of
//! its sessions, its stops; and the constants of its datagrams.

use std::cell::RefCell;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Every;
use crate::listener::limits::SessionPermits;
use crate::listener::route::Route;
use crate::metrics::UdpListenerMetrics;

/// Once its listener stops, a session waits this long after its last
/// datagram for replies still on their way, then ends.
pub(super) const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// The largest UDP payload; one buffer per worker thread, never per session.
pub(super) const MAX_DATAGRAM: usize = 65_535;

thread_local! {
    pub(super) static DGRAM_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_DATAGRAM].into_boxed_slice());
}

/// State shared by a UDP listener's tasks.
pub struct UdpShared {
    pub route: ArcSwap<Route>,
    pub metrics: UdpListenerMetrics,
    pub tracker: TaskTracker,
    /// Places of its sessions, under `max_sessions` and `max_sessions_per_ip`.
    pub places: SessionPermits,
    /// Paces warnings that a flood of datagrams could repeat.
    pub warn_log: Every,
    /// Ends every session (the listener's grace is over).
    pub hard_stop: CancellationToken,
    /// Bound to a wildcard address: replies must name their source.
    pub wildcard: bool,
}
