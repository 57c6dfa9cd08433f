//! The families of a listener's mirror: what it copied, and what it lost.

use prometheus::IntCounter;

use super::{Family, Metrics, Series};

const LISTENER: &[&str] = &["listener"];

const MIRRORED: Family = Family::by(
    "switchyard_mirror_total",
    "Connections (TCP) and datagrams (UDP) whose client bytes were copied to the mirror pool.",
    "protocol",
);
const DROPPED: Family = Family::by(
    "switchyard_mirror_dropped_total",
    "Mirror copies lost, by reason: full (the mirror could not keep up and its connection was closed), connect, write, no_backend. The real traffic never waits for them.",
    "reason",
);

/// Handles of one listener's mirror.
#[derive(Debug, Clone)]
pub struct MirrorMetrics {
    /// Connections or datagrams copied.
    pub mirrored: IntCounter,
    /// The mirror fell behind: the copy was cut.
    pub full: IntCounter,
    /// No connection to the mirror backend.
    pub connect: IntCounter,
    /// A write to it failed.
    pub write: IntCounter,
    /// The mirror pool had no backend to take it.
    pub no_backend: IntCounter,
}

impl Metrics {
    /// The handles of listener `listener`'s mirror (`protocol`: tcp or udp),
    /// and its series to forget.
    pub fn mirror(&self, listener: &str, protocol: &'static str) -> (MirrorMetrics, Series) {
        let mut o = self.owner(LISTENER, &[listener]);
        let m = MirrorMetrics {
            mirrored: o.counter(&MIRRORED, Some(protocol)),
            full: o.counter(&DROPPED, Some("full")),
            connect: o.counter(&DROPPED, Some("connect")),
            write: o.counter(&DROPPED, Some("write")),
            no_backend: o.counter(&DROPPED, Some("no_backend")),
        };
        (m, o.finish())
    }
}
