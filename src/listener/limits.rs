//! A listener's admission, TCP and UDP in one model: a connection's place
//! under `max_connections` ([`ConnPermit`]), a session's under
//! `max_sessions` ([`SessionPermit`]), and the per-client-address limits
//! both charge (`max_connections_per_ip` and `connection_rate_per_ip`, a
//! token bucket, for TCP; `max_sessions_per_ip` for UDP).
//!
//! The per-address table is sharded (a lock per shard, taken once when a
//! connection or session opens and once when it closes) and bounded: an
//! address with nothing open and a full bucket is forgotten, and a full
//! shard sweeps such entries out first.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;

use crate::clock::now_ms;
use crate::config::ListenerConfig;
use crate::fds::Held;

/// Shards of the table: enough that two cores rarely meet on one lock.
const SHARDS: usize = 16;
/// Addresses one shard remembers at most (65,536 in all): past that, an
/// address that cannot be remembered is let through rather than refused.
const SHARD_CAPACITY: usize = 4096;

/// What a listener allows one client address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AddressLimits {
    /// Connections open at once, if limited.
    pub open: Option<u32>,
    /// New connections per second and the burst allowed above it, if limited.
    pub rate: Option<(f64, f64)>,
}

impl AddressLimits {
    /// Whether anything is limited (if not, the table is never touched).
    pub fn any(&self) -> bool {
        self.open.is_some() || self.rate.is_some()
    }
}

#[derive(Debug)]
struct Entry {
    open: u32,
    tokens: f64,
    at_ms: u64,
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitRefusal {
    /// It has `max_connections_per_ip` open.
    Open,
    /// It opened connections faster than `connection_rate_per_ip` allows.
    Rate,
}

/// The per-address table of one listener.
pub(crate) struct Clients {
    shards: Vec<Mutex<HashMap<IpAddr, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }
}

/// A client's place in the table while its connection is open.
pub(crate) struct Admitted {
    clients: Arc<Clients>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut shard = self.clients.shard(self.ip);
        if let Some(e) = shard.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

impl Admitted {
    /// Moves this charge to `ip` (a PROXY header named the client behind the
    /// address first charged): `ip` is admitted as a new connection, and the
    /// first address gets back its place and the rate token it paid, whether
    /// or not `ip` is admitted.
    pub fn move_to(self, ip: IpAddr, limits: &AddressLimits) -> Result<Admitted, LimitRefusal> {
        if ip == self.ip {
            return Ok(self);
        }
        let moved = self.clients.admit(ip, limits);
        if let Some((_, burst)) = limits.rate {
            let mut shard = self.clients.shard(self.ip);
            if let Some(e) = shard.get_mut(&self.ip) {
                e.tokens = (e.tokens + 1.0).min(burst);
            }
        }
        moved
    }
}

impl Clients {
    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &AddressLimits,
    ) -> Result<Admitted, LimitRefusal> {
        self.charge(ip, limits)?;
        Ok(Admitted {
            clients: self.clone(),
            ip,
        })
    }

    /// Gives back a place of `ip` that [`Clients::charge`] took, and
    /// forgets the address once it holds none: for a table without rates
    /// (a UDP listener's sessions), where nothing else is worth keeping.
    pub fn release(&self, ip: IpAddr) {
        let mut shard = self.shard(ip);
        if let Some(e) = shard.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 {
                shard.remove(&ip);
            }
        }
    }

    /// Takes a place (and a rate token) of `ip`, or says why not; the
    /// caller gives the place back.
    pub fn charge(&self, ip: IpAddr, limits: &AddressLimits) -> Result<(), LimitRefusal> {
        let now = now_ms();
        let mut shard = self.shard(ip);
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&ip) {
            shard.retain(|_, e| e.open > 0 || !full(e, limits, now));
            if shard.len() >= SHARD_CAPACITY {
                // Let through rather than refused: the listener's own
                // limit still bounds what is open.
                return Ok(());
            }
        }
        let burst = limits.rate.map_or(0.0, |(_, b)| b);
        let e = shard.entry(ip).or_insert(Entry {
            open: 0,
            tokens: burst,
            at_ms: now,
        });
        if let Some(max) = limits.open {
            if e.open >= max {
                return Err(LimitRefusal::Open);
            }
        }
        if let Some((rate, burst)) = limits.rate {
            let elapsed = now.saturating_sub(e.at_ms) as f64 / 1000.0;
            e.tokens = (e.tokens + elapsed * rate).min(burst);
            e.at_ms = now;
            if e.tokens < 1.0 {
                return Err(LimitRefusal::Rate);
            }
            e.tokens -= 1.0;
        }
        e.open += 1;
        Ok(())
    }
}

/// Whether an entry's bucket has refilled: forgetting it changes nothing.
fn full(e: &Entry, limits: &AddressLimits, now: u64) -> bool {
    match limits.rate {
        None => true,
        Some((rate, burst)) => {
            e.tokens + now.saturating_sub(e.at_ms) as f64 / 1000.0 * rate >= burst
        }
    }
}

/// A connection's place under `max_connections` and its two descriptors;
/// returned (or, while a lowered limit is owed permits, given up) when the
/// connection ends. UDP's counterpart is [`SessionPermit`].
pub struct ConnPermit {
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    pub(crate) owed: Arc<AtomicUsize>,
    /// The client's and the backend's descriptors.
    pub(crate) _fds: Held,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let pay = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1));
        if let (Ok(_), Some(permit)) = (pay, self.permit.take()) {
            permit.forget();
        }
    }
}

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
pub(crate) struct SessionPermit<'a> {
    shared: &'a SessionPermits,
    ip: IpAddr,
}

/// Why a new client got no session.
pub(crate) enum SessionRefusal {
    /// `max_sessions` are open.
    Table,
    /// Its address holds `max_sessions_per_ip` already.
    Ip,
}

impl<'a> SessionPermit<'a> {
    /// Claims a place for a client at `ip`.
    pub(crate) fn claim(
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
        let limits = AddressLimits {
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
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl SessionPermits {
    /// Gives back a place of a client at `ip` that was kept.
    pub(crate) fn release(&self, ip: IpAddr) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        self.per_ip.release(ip);
    }
}

impl Drop for SessionPermit<'_> {
    fn drop(&mut self) {
        self.shared.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn open_and_rate_limits_per_address() {
        let clients = Arc::new(Clients::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let open = AddressLimits {
            open: Some(2),
            rate: None,
        };
        let one = clients.admit(a, &open).unwrap();
        let _two = clients.admit(a, &open).unwrap();
        assert_eq!(clients.admit(a, &open).err(), Some(LimitRefusal::Open));
        assert!(
            clients.admit(b, &open).is_ok(),
            "another address is not limited"
        );
        drop(one);
        assert!(
            clients.admit(a, &open).is_ok(),
            "a closed connection frees a place"
        );

        // 2 per second with a burst of 3.
        let rate = AddressLimits {
            open: None,
            rate: Some((2.0, 3.0)),
        };
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert!(clients.admit(c, &rate).is_ok());
        }
        assert_eq!(clients.admit(c, &rate).err(), Some(LimitRefusal::Rate));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(
            clients.admit(c, &rate).is_ok(),
            "one token back after 0.5 s"
        );
        assert_eq!(clients.admit(c, &rate).err(), Some(LimitRefusal::Rate));
    }

    #[test]
    fn a_charge_moves_to_the_client_a_header_names() {
        let clients = Arc::new(Clients::default());
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let (a, b): (IpAddr, IpAddr) = ("10.0.1.1".parse().unwrap(), "10.0.1.2".parse().unwrap());
        let limits = AddressLimits {
            open: Some(1),
            rate: Some((0.001, 2.0)),
        };
        // The proxy's address is charged while its header is read...
        let first = clients.admit(proxy, &limits).unwrap();
        assert_eq!(
            clients.admit(proxy, &limits).err(),
            Some(LimitRefusal::Open)
        );
        // ...and gives place and token back once the header names `a`.
        let on_a = first.move_to(a, &limits).unwrap();
        let second = clients.admit(proxy, &limits).unwrap();
        assert_eq!(
            second.move_to(a, &limits).err(),
            Some(LimitRefusal::Open),
            "`a` has its one connection"
        );
        // The refusal gave the proxy's place back too, and its tokens hold:
        // two more headers may be read at once at a rate of almost nothing.
        let third = clients.admit(proxy, &limits).unwrap();
        let _on_b = third.move_to(b, &limits).unwrap();
        let _fourth = clients.admit(proxy, &limits).unwrap();
        drop(on_a);
    }

    #[test]
    fn the_table_stays_bounded() {
        let clients = Arc::new(Clients::default());
        let limits = AddressLimits {
            open: Some(1),
            rate: None,
        };
        // Far more addresses than the table holds, each closed at once.
        for i in 0..200_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            drop(clients.admit(ip, &limits).unwrap());
        }
        let held: usize = clients.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * SHARD_CAPACITY, "{held} entries");
    }
}
