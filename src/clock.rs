//! The daemon's coarse clock: milliseconds on tokio's clock, cheap to read
//! and compare, so paused-clock tests drive every deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Seconds since the Unix epoch, by the wall clock.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds on tokio's clock since the first call, plus one, so that 0
/// can mean "never".
pub fn now_ms() -> u64 {
    since_epoch().as_millis() as u64 + 1
}

/// Microseconds on the same clock, plus one: a moment in eight bytes (an
/// `Instant` takes sixteen), for what every connection's task holds.
pub fn now_us() -> u64 {
    since_epoch().as_micros() as u64 + 1
}

/// Microseconds from `then` (a [`now_us`]) to now.
pub fn since_us(then: u64) -> std::time::Duration {
    std::time::Duration::from_micros(now_us().saturating_sub(then))
}

fn since_epoch() -> std::time::Duration {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now().duration_since(epoch)
}

/// Lets an event through at most once per period: for log lines that would
/// otherwise flood (one per failed accept, per dropped datagram).
#[derive(Debug)]
pub(crate) struct Every {
    period_ms: u64,
    last: AtomicU64,
}

impl Every {
    /// At most once per `period_ms` milliseconds.
    pub const fn ms(period_ms: u64) -> Every {
        Every {
            period_ms,
            last: AtomicU64::new(0),
        }
    }

    /// Whether the event may happen now (and, if so, it counts as happened).
    pub fn ready(&self) -> bool {
        let now = now_ms();
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(self.period_ms) {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}
