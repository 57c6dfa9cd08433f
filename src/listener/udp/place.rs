//! A UDP session's place: under the listener's `max_sessions` (shared by its
//! receive loops) and under `max_sessions_per_ip` (in the sharded
//! per-address table TCP's limits use), taken together and given back
//! together.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::ListenerConfig;
use crate::listener::clients::{Clients, Limits};

/// The places of one listener's sessions, shared by its receive loops.
#[derive(Default)]
pub(crate) struct SessionPermits {
    /// Sessions of all the listener's receive loops, against `max_sessions`.
    sessions: AtomicUsize,
    /// Sessions per client address, against `max_sessions_per_ip`.
    per_ip: Clients,
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
        let limits = Limits {
            open: Some(u32::try_from(cfg.max_sessions_per_ip.get()).unwrap_or(u32::MAX)),
            rate: None,
        };
        if shared.per_ip.charge(ip, &limits).is_err() {
            shared.sessions.fetch_sub(1, Ordering::Relaxed);
            return Err(SessionRefusal::Ip);
        }
        Ok(SessionPermit { shared, ip })
    }
}

impl SessionPermit<'_> {
    /// Keeps the place without this guard: whoever takes it gives it back
    /// with [`SessionPermits::release`].
    pub(super) fn keep(self) {
        std::mem::forget(self);
    }
}

impl SessionPermits {
    /// Gives back a place of a client at `ip` that was kept.
    pub(super) fn release(&self, ip: IpAddr) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        self.per_ip.release(ip);
    }
}

impl Drop for SessionPermit<'_> {
    fn drop(&mut self) {
        self.shared.release(self.ip);
    }
}
