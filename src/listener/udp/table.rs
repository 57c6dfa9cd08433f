//! A UDP receive loop's table of sessions: each found by its client's
//! address at the cost of one pointer (the address is read from its
//! `Link`), with the places and descriptors they hold and their idle clock;
//! and the loop's one timer.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::session::{IdleClock, Link, SessionEnd};
use crate::clock::now_ms;
use crate::fds::{self, Held};
use crate::listener::limits::{SessionPermit, SessionPermits};

/// A new session, before its receive loop's table takes it.
pub(super) struct UdpSession<'a> {
    pub(super) link: Arc<Link>,
    pub(super) place: SessionPermit<'a>,
    /// The session socket's descriptor, in the data plane's budget.
    pub(super) fds: Held,
}

/// A receive loop's sessions, by client address, with their places and
/// descriptors, and their idle clock. Each session costs the table one
/// pointer: its address is read from its `Link`.
pub(super) struct Table<'a> {
    sessions: HashSet<ByPeer>,
    clock: IdleClock,
    places: &'a SessionPermits,
    /// The descriptors of the sessions' sockets, one each.
    fds: Held,
}

/// A session in the table, found by its client's address.
struct ByPeer(Arc<Link>);

impl Hash for ByPeer {
    /// As its address hashes, so that the table is searched by address.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.peer.hash(state);
    }
}

impl PartialEq for ByPeer {
    fn eq(&self, other: &Self) -> bool {
        self.0.peer == other.0.peer
    }
}

impl Eq for ByPeer {}

impl Borrow<SocketAddr> for ByPeer {
    fn borrow(&self) -> &SocketAddr {
        &self.0.peer
    }
}

impl<'a> Table<'a> {
    pub(super) fn new(places: &'a SessionPermits) -> Table<'a> {
        Table {
            sessions: HashSet::new(),
            clock: IdleClock::default(),
            places,
            fds: fds::untracked(),
        }
    }

    pub(super) fn get(&self, peer: &SocketAddr) -> Option<&Arc<Link>> {
        self.sessions.get(peer).map(|s| &s.0)
    }

    pub(super) fn insert(&mut self, s: UdpSession<'a>) {
        self.clock.watch(&s.link);
        s.place.keep();
        self.fds.join(s.fds);
        if let Some(old) = self.sessions.replace(ByPeer(s.link)) {
            // A client has one session at a time: the one it replaces ends.
            old.0.end(SessionEnd::Stopped);
            self.give_back(&old.0);
        }
    }

    /// Takes `peer`'s session off the table.
    pub(super) fn remove(&mut self, peer: &SocketAddr) {
        if let Some(old) = self.sessions.take(peer) {
            self.give_back(&old.0);
        }
    }

    fn give_back(&mut self, link: &Link) {
        self.places.release(link.peer.ip());
        self.fds.give_back(1);
    }

    /// Takes session `id` of `peer` off the table, if it is still there.
    pub(super) fn forget(&mut self, peer: SocketAddr, id: u64) {
        if self.get(&peer).is_some_and(|l| l.id == id) {
            self.remove(&peer);
        }
    }

    /// Ends the sessions that have gone idle.
    pub(super) fn end_idle(&mut self) {
        for link in self.clock.expired(now_ms()) {
            link.end(SessionEnd::Idle);
            self.forget(link.peer, link.id);
        }
    }

    /// When the next session may go idle.
    pub(super) fn next_idle_ms(&self) -> Option<u64> {
        self.clock.next_ms()
    }

    /// The listener stopped: each session goes idle after a short wait for
    /// replies still on their way (see `IdleClock::drain`).
    pub(super) fn drain(&mut self) {
        self.clock.drain(self.sessions.iter().map(|s| &s.0));
    }

    /// Ends every session (the listener's grace is over) and empties the table.
    pub(super) fn end_all(&mut self) {
        for s in std::mem::take(&mut self.sessions) {
            s.0.end(SessionEnd::Shutdown);
            self.give_back(&s.0);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

impl Drop for Table<'_> {
    fn drop(&mut self) {
        for s in self.sessions.drain() {
            self.places.release(s.0.peer.ip());
        }
        // `fds` gives back the rest as it drops.
    }
}

/// The earlier of two optional times.
pub(super) fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One timer for a receive loop, moved only when the time it is set for
/// changes (not re-made for every datagram).
pub(super) struct Alarm {
    sleep: Pin<Box<tokio::time::Sleep>>,
    at_ms: Option<u64>,
}

impl Alarm {
    pub(super) fn new() -> Alarm {
        Alarm {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            at_ms: None,
        }
    }

    /// Rings at `at_ms` (`clock::now_ms`), or never.
    pub(super) fn set(&mut self, at_ms: Option<u64>) {
        if at_ms == self.at_ms {
            return;
        }
        self.at_ms = at_ms;
        if let Some(at) = at_ms {
            let wait = Duration::from_millis(at.saturating_sub(now_ms()));
            self.sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + wait);
        }
    }

    /// Resolves when it rings; pending for ever when unset.
    pub(super) async fn rings(&mut self) {
        if self.at_ms.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.at_ms = None;
    }
}
