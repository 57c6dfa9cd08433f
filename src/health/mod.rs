//! Active health checks: one task per backend of a pool, jittered, with
//! rise/fall hysteresis, cancelled as a group when the pool changes or the
//! daemon stops. Passive health (failed connects) lives on
//! [`Backend`] itself.

mod probe;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::config::{CheckKind, HealthConfig};
use crate::pool::Pool;

/// The running checks of one pool.
pub struct Checks {
    stop: CancellationToken,
}

impl Checks {
    /// Starts checking every backend of `pool`'s current snapshot (nothing
    /// for `kind = "none"`).
    pub fn start(pool: &Pool, parent: &CancellationToken, tracker: &TaskTracker) -> Checks {
        let stop = parent.child_token();
        let snap = pool.snapshot();
        let cfg = &snap.config.health;
        if cfg.check != CheckKind::None {
            for m in &snap.members {
                tracker.spawn(watch(m.backend.clone(), cfg.clone(), stop.clone()));
            }
        }
        Checks { stop }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Sleeps for `d` unless `stop` fires first; returns false when stopped.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

/// Checks one backend every `interval` until stopped.
async fn watch(backend: Arc<Backend>, cfg: HealthConfig, stop: CancellationToken) {
    // A random start spreads a pool's checks over the interval.
    let jitter = rand::rng().random_range(Duration::ZERO..cfg.interval);
    if !pause(jitter, &stop).await {
        return;
    }
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        let result = tokio::select! {
            r = tokio::time::timeout(cfg.timeout, probe::run(&cfg, backend.addr)) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}", humantime::format_duration(cfg.timeout))),
            },
            _ = stop.cancelled() => return,
        };
        match result {
            Ok(detail) => {
                backend.record_check(true, detail);
                passes += 1;
                fails = 0;
                // Up already: this still ends a passive ejection early.
                if backend.is_up() || passes >= cfg.rise {
                    backend.set_up(true, &format!("{passes} checks passed"));
                }
            }
            Err(reason) => {
                backend.record_check(false, reason.clone());
                fails += 1;
                passes = 0;
                if backend.is_up() && fails >= cfg.fall {
                    backend.set_up(false, &reason);
                }
            }
        }
        if !pause(cfg.interval, &stop).await {
            return;
        }
    }
}
