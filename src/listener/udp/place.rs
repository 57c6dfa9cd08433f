//! A UDP session's place: under the listener's `max_sessions` (shared by its
//! receive loops) and under `max_sessions_per_ip`, taken together and given
//! back together.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use crate::config::ListenerConfig;

/// The places of one listener's sessions, shared by its receive loops.
#[derive(Default)]
pub(crate) struct SessionPermits {
    /// Sessions of all the listener's receive loops, against `max_sessions`.
    sessions: AtomicUsize,
    /// Sessions per client address, against `max_sessions_per_ip`.
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// A session's place under `max_sessions` and `max_sessions_per_ip`; given
/// back when dropped.
pub(super) struct SessionPermit<'a> {
    shared: &'a SessionPermits,
    ip: IpAddr,
}

/// Why a new client got no session.
pub(super) enum SessionRefusal {
    /// `max_sessions` are open.
    Table,
    /// Its address holds `max_sessions_per_ip` already.
    Ip,
}

impl<'a> SessionPermit<'a> {
    /// Claims a place for a client at `ip`.
    pub(super) fn claim(
        shared: &'a SessionPermits,
        ip: IpAddr,
        cfg: &ListenerConfig,
    ) -> Result<SessionPermit<'a>, SessionRefusal> {
        shared
            .sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < cfg.max_sessions.get()).then_some(n + 1)
            })
            .map_err(|_| SessionRefusal::Table)?;
        // Taken at session start and end only, never per datagram.
        let mut per_ip = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let held = per_ip.entry(ip).or_insert(0);
        if *held as usize >= cfg.max_sessions_per_ip.get() {
            drop(per_ip);
            shared.sessions.fetch_sub(1, Ordering::Relaxed);
            return Err(SessionRefusal::Ip);
        }
        *held += 1;
        Ok(SessionPermit { shared, ip })
    }
}

impl SessionPermit<'_> {
    /// Keeps the place without this guard: whoever takes it gives it back
    /// with [`Places::release`].
    pub(super) fn keep(self) {
        std::mem::forget(self);
    }
}

impl SessionPermits {
    /// Gives back a place of a client at `ip` that was kept.
    pub(super) fn release(&self, ip: IpAddr) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = per_ip.get_mut(&ip) {
            *held -= 1;
            if *held == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

impl Drop for SessionPermit<'_> {
    fn drop(&mut self) {
        self.shared.release(self.ip);
    }
}
