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

/// Datagrams and bytes counted where they pass and not yet added to the
/// shared counters every worker adds to: one add per counter for a burst
/// instead of one per datagram, exact whenever its owner is about to wait.
/// Two words, as a session's reply task is held to 160 bytes.
#[derive(Default)]
pub(super) struct Burst {
    datagrams: u32,
    bytes: u32,
}

impl Burst {
    /// The most datagrams a burst holds.
    pub(super) const MOST: u32 = 64;

    /// Counts a datagram of `n` bytes; true when the burst is full.
    pub(super) fn count(&mut self, n: usize) -> bool {
        self.datagrams += 1;
        self.bytes += n as u32;
        self.datagrams >= Self::MOST
    }

    /// What it holds, as (datagrams, bytes), leaving it empty; `None` when
    /// it is empty.
    pub(super) fn take(&mut self) -> Option<(u64, u64)> {
        let b = std::mem::take(self);
        (b.datagrams > 0).then_some((u64::from(b.datagrams), u64::from(b.bytes)))
    }
}

// A full burst of the largest datagrams fits its byte count.
const _: () = assert!(Burst::MOST as usize * MAX_DATAGRAM <= u32::MAX as usize);

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
