//! The daemon's coarse clock: milliseconds on tokio's clock, cheap to read
//! and compare, so paused-clock tests drive every deadline.

use std::sync::OnceLock;

/// Milliseconds on tokio's clock since the first call, plus one, so that 0
/// can mean "never".
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .duration_since(epoch)
        .as_millis() as u64
        + 1
}
