//! A UDP session's shared half ([`Link`]): what its receive loop and its
//! reply task both hold. And the receive loop's idle clock ([`IdleClock`])
//! over all of its sessions.
//!
//! A session is one allocation of a `Link`, one small task and the kernel's
//! socket. The reply task waits on two things only: its socket, and its
//! `Link` being ended. It holds no timer and no cancellation wait of its own
//! (each would add over 100 bytes to every session). The receive loop holds
//! every session of its socket already, so it times their idleness in one
//! heap and ends them: when they go idle, when their backend goes, when the
//! listener's grace is over.

use std::cmp::Ordering as Order;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use super::shared::DRAIN_IDLE;
use super::sock::UdpUpstream;
use crate::backend::ActiveGuard;

/// Why the receive loop ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionEnd {
    /// No datagram either way for its idle timeout.
    Idle,
    /// Its backend went down or left the pool: the client re-picks.
    Stopped,
    /// The listener's grace is over.
    Shutdown,
}

impl SessionEnd {
    /// As the access log says it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Idle => "idle_timeout",
            SessionEnd::Stopped => "stopped",
            SessionEnd::Shutdown => "shutdown",
        }
    }

    fn code(self) -> u8 {
        match self {
            SessionEnd::Idle => 1,
            SessionEnd::Stopped => 2,
            SessionEnd::Shutdown => 3,
        }
    }

    fn of(code: u8) -> Option<SessionEnd> {
        match code {
            1 => Some(SessionEnd::Idle),
            2 => Some(SessionEnd::Stopped),
            3 => Some(SessionEnd::Shutdown),
            _ => None,
        }
    }
}

/// What a session's receive loop and reply task share.
pub(super) struct Link {
    /// Connected to the backend, from an ephemeral port.
    pub upstream: UdpUpstream,
    /// Counts the session on its backend while it lasts.
    pub guard: ActiveGuard,
    /// The client.
    pub peer: SocketAddr,
    /// The address the client sent its first datagram to (wildcard listeners).
    pub local: Option<IpAddr>,
    /// Tells this session from a later one of the same client.
    pub id: u64,
    /// When a datagram last went either way (`clock::now_ms`).
    pub last: AtomicU64,
    /// When the session began (`clock::now_ms`).
    pub started_ms: u64,
    /// Its idle timeout, in milliseconds (at most about 49 days).
    idle_ms: u32,
    /// The pool's passive-health settings when the session began.
    pub max_fails: u32,
    fail_timeout_ms: u32,
    /// The pool's PROXY protocol v2 header, sent before each datagram.
    pub header: Option<Box<[u8]>>,
    /// `udp_balance = "per_datagram"`: its socket is not connected; each
    /// datagram goes to the backend picked for it, and replies come from
    /// any of the pool's backends (`guard` counts it on the first one).
    pub spread: bool,
    /// 0 while it runs, then its [`SessionEnd`].
    end: AtomicU8,
    /// The reply task, to wake when the session is ended.
    waker: AtomicWaker,
}

/// What a new [`Link`] is made of.
pub(super) struct Parts {
    pub upstream: UdpUpstream,
    pub guard: ActiveGuard,
    pub peer: SocketAddr,
    pub local: Option<IpAddr>,
    pub id: u64,
    pub now_ms: u64,
    pub idle: Duration,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub header: Option<Box<[u8]>>,
    pub spread: bool,
}

impl Link {
    pub(super) fn new(p: Parts) -> Link {
        Link {
            upstream: p.upstream,
            guard: p.guard,
            peer: p.peer,
            local: p.local,
            id: p.id,
            last: AtomicU64::new(p.now_ms),
            started_ms: p.now_ms,
            // Milliseconds in 32 bits: a session is the proxy's smallest
            // unit of memory, and no timeout is near 49 days.
            idle_ms: p.idle.as_millis().try_into().unwrap_or(u32::MAX),
            max_fails: p.max_fails,
            fail_timeout_ms: p.fail_timeout.as_millis().try_into().unwrap_or(u32::MAX),
            header: p.header,
            spread: p.spread,
            end: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        }
    }

    /// How long its backend is taken out after `max_fails` failures.
    pub(super) fn fail_timeout(&self) -> Duration {
        Duration::from_millis(self.fail_timeout_ms.into())
    }

    /// Ends the session (the first reason given stands) and wakes its task.
    pub(super) fn end(&self, why: SessionEnd) {
        let _first = self
            .end
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// Why it was ended, if it was.
    pub(super) fn ended(&self) -> Option<SessionEnd> {
        SessionEnd::of(self.end.load(Ordering::Acquire))
    }

    /// Ready with the reason once the session is ended; otherwise the task
    /// of `cx` is woken when it is.
    pub(super) fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<SessionEnd> {
        if let Some(end) = self.ended() {
            return Poll::Ready(end);
        }
        self.waker.register(cx.waker());
        // Ended between the check and the registration: its wake found no waker.
        match self.ended() {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        }
    }
}

/// A time to look at a session again.
struct IdleDue {
    at_ms: u64,
    link: Weak<Link>,
}

impl PartialEq for IdleDue {
    fn eq(&self, other: &Self) -> bool {
        self.at_ms == other.at_ms
    }
}

impl Eq for IdleDue {}

impl PartialOrd for IdleDue {
    fn partial_cmp(&self, other: &Self) -> Option<Order> {
        Some(self.cmp(other))
    }
}

impl Ord for IdleDue {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> Order {
        other.at_ms.cmp(&self.at_ms)
    }
}

/// One receive loop's idle clock: every session it started, by the time
/// it would go idle if no datagram came. A datagram does not touch the
/// clock (it only stores the time in its `Link`): a session is looked at
/// when its time comes, and put back if a datagram moved it on. So each
/// session is looked at about once per idle timeout, not once per datagram.
#[derive(Default)]
pub(super) struct IdleClock {
    due: BinaryHeap<IdleDue>,
    /// The listener stopped: sessions end after [`DRAIN_IDLE`] at most.
    draining: bool,
}

impl IdleClock {
    /// A session's idle timeout, shortened while draining.
    fn idle_ms(&self, link: &Link) -> u64 {
        let idle_ms = u64::from(link.idle_ms);
        if self.draining {
            idle_ms.min(DRAIN_IDLE.as_millis() as u64)
        } else {
            idle_ms
        }
    }

    /// Times a new session.
    pub(super) fn watch(&mut self, link: &Arc<Link>) {
        let at_ms = link
            .last
            .load(Ordering::Relaxed)
            .saturating_add(self.idle_ms(link));
        self.due.push(IdleDue {
            at_ms,
            link: Arc::downgrade(link),
        });
    }

    /// When the earliest session is next to be looked at.
    pub(super) fn next_ms(&self) -> Option<u64> {
        self.due.peek().map(|d| d.at_ms)
    }

    /// The sessions that are idle at `now_ms`, taken off the clock; the
    /// others looked at are put back at their new time.
    pub(super) fn expired(&mut self, now_ms: u64) -> Vec<Arc<Link>> {
        let mut idle = Vec::new();
        while self.due.peek().is_some_and(|d| d.at_ms <= now_ms) {
            let Some(d) = self.due.pop() else { break };
            // Gone, or ended another way: nothing to time.
            let Some(link) = d.link.upgrade().filter(|l| l.ended().is_none()) else {
                continue;
            };
            let at_ms = link
                .last
                .load(Ordering::Relaxed)
                .saturating_add(self.idle_ms(&link));
            if at_ms <= now_ms {
                idle.push(link);
            } else {
                self.due.push(IdleDue {
                    at_ms,
                    link: d.link,
                });
            }
        }
        idle
    }

    /// The listener stopped: from now on each of `links` ends after
    /// [`DRAIN_IDLE`] without a datagram, or its own idle timeout if shorter.
    pub(super) fn drain<'a>(&mut self, links: impl Iterator<Item = &'a Arc<Link>>) {
        self.draining = true;
        self.due.clear();
        for link in links {
            self.watch(link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn link(id: u64, now_ms: u64, idle_ms: u64) -> Arc<Link> {
        let upstream =
            super::super::sock::open_upstream("127.0.0.1:9".parse().unwrap(), None).unwrap();
        let m = Metrics::new();
        let b = Arc::new(crate::backend::Backend::new(
            "p",
            ("127.0.0.1:9".parse().unwrap(), "127.0.0.1:9"),
            true,
            m.backend("p", "127.0.0.1:9", "127.0.0.1:9"),
        ));
        Arc::new(Link::new(Parts {
            upstream,
            guard: b.open(),
            peer: "127.0.0.1:1".parse().unwrap(),
            local: None,
            id,
            now_ms,
            idle: Duration::from_millis(idle_ms),
            max_fails: 1,
            fail_timeout: Duration::from_secs(1),
            header: None,
            spread: false,
        }))
    }

    #[tokio::test]
    async fn a_session_is_idle_only_once_its_last_datagram_is_old_enough() {
        let mut clock = IdleClock::default();
        let (a, b) = (link(1, 1_000, 100), link(2, 1_000, 300));
        clock.watch(&a);
        clock.watch(&b);
        assert_eq!(clock.next_ms(), Some(1_100));
        // A datagram moved `a` on: it is put back, not ended.
        a.last.store(1_050, Ordering::Relaxed);
        assert!(clock.expired(1_100).is_empty());
        assert_eq!(clock.next_ms(), Some(1_150));
        let idle = clock.expired(1_150);
        assert_eq!(idle.iter().map(|l| l.id).collect::<Vec<_>>(), [1]);
        assert_eq!(clock.next_ms(), Some(1_300));
        // Ended another way, or dropped: no longer timed.
        b.end(SessionEnd::Stopped);
        assert!(clock.expired(2_000).is_empty());
        assert_eq!(clock.next_ms(), None);
    }

    #[tokio::test]
    async fn draining_shortens_every_sessions_wait() {
        let mut clock = IdleClock::default();
        let long = link(1, 1_000, 60_000);
        let short = link(2, 1_000, 200);
        clock.watch(&long);
        clock.watch(&short);
        clock.drain([&long, &short].into_iter());
        let drain = DRAIN_IDLE.as_millis() as u64;
        assert_eq!(clock.next_ms(), Some(1_200));
        assert_eq!(clock.expired(1_200).len(), 1);
        assert_eq!(clock.next_ms(), Some(1_000 + drain));
        assert_eq!(clock.expired(1_000 + drain)[0].id, 1);
    }

    #[tokio::test]
    async fn the_first_end_stands() {
        let l = link(1, 1, 100);
        assert_eq!(l.ended(), None);
        l.end(SessionEnd::Stopped);
        l.end(SessionEnd::Shutdown);
        assert_eq!(l.ended(), Some(SessionEnd::Stopped));
        assert_eq!(SessionEnd::Stopped.as_str(), "stopped");
    }
}
