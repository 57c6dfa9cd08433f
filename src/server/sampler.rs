//! Samples every listener and backend into the history, every
//! `[admin] history_interval`, and then gives freed memory back.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Server, State};
use crate::history::{state, BackendReading, ListenerReading, Reading};

/// Everything's totals now.
fn read(st: &State) -> Reading {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let listeners = st
        .listeners
        .iter()
        .map(|(name, l)| {
            let totals = l.totals();
            ListenerReading {
                name: name.clone(),
                protocol: totals.protocol,
                values: totals.values(),
            }
        })
        .collect();
    let mut backends = Vec::new();
    for (pool, entry) in &st.pools {
        let snap = entry.pool.snapshot();
        // An idle pool's active group and panic follow its health too.
        snap.observe();
        for m in &snap.members {
            let b = &m.backend;
            let mt = &b.metrics;
            backends.push(BackendReading {
                pool: pool.clone(),
                addr: b.label.clone(),
                name: b.name.clone(),
                values: [
                    mt.connections.get(),
                    b.active(),
                    mt.bytes_in.get(),
                    mt.bytes_out.get(),
                    mt.connect_failures(),
                    state::point(b.state()),
                ],
            });
        }
    }
    Reading {
        at_ms,
        listeners,
        backends,
    }
}

impl Server {
    /// Samples until the daemon stops.
    pub(super) async fn sample(self) {
        let inner = &self.inner;
        loop {
            let every =
                Duration::from_millis(inner.history_every_ms.load(Ordering::Relaxed).max(100));
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = inner.background.cancelled() => return,
            }
            let reading = read(&*inner.state.lock().await);
            inner
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(reading);
            // What was freed since goes back to the system: without it the
            // arenas of the control threads keep the pages of every passing
            // peak (an admin flood, a burst of sessions), and resident memory
            // creeps up for an hour while what is in use stays level.
            crate::sys::trim_heap();
        }
    }
}
