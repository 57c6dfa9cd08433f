//! The descriptor budget. The data plane (client and backend sockets, splice
//! pipes, UDP session sockets) may hold all of the process's descriptors but
//! a reserve, so that `/metrics`, `/healthz`, health checks and the log keep
//! working while the proxy is starved, and so that running out is a wait (a
//! client left in the kernel's backlog), not a failure blamed on a backend.
//!
//! The budget counts what the data plane holds, taken before a descriptor is
//! made and given back when its holder (`Held`) drops: two atomics per
//! connection, and a wake-up only when someone is waiting.

use rustix::process as rlimit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::sync::Notify;

/// Descriptors kept out of the data plane's reach: a sixteenth of the limit,
/// at least 16 (admin connections, checks, the log, /proc reads for the
/// process metrics) and at most 1024 (plenty for all of them).
pub(crate) fn reserve_for(limit: usize) -> usize {
    (limit / 16).clamp(16, 1024)
}

/// How many admin connections may be open at once: half the reserve, at
/// most 64 (a scraper, a few browsers and scripts).
pub(crate) fn admin_connections() -> usize {
    (reserve_for(soft_limit()) / 2).min(64)
}

struct Budget {
    /// What the data plane may hold.
    share: usize,
    used: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

fn budget() -> &'static Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    BUDGET.get_or_init(|| {
        let limit = soft_limit();
        Budget {
            // What is open when the share is fixed (`settle` at start, or
            // the data plane's first ask: the runtimes' event loops,
            // listening sockets, the admin socket, the log) is not the data
            // plane's to spend either.
            share: limit.saturating_sub(reserve_for(limit) + open_now()),
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    })
}

/// Fixes the data plane's share now, once the daemon's own descriptors are
/// open (listening sockets, the admin socket, the runtimes), and before a
/// binary upgrade hands connections over: their descriptors are the data
/// plane's, and counted as the daemon's own they would shrink the share for
/// the rest of its life.
pub(crate) fn settle() {
    budget();
}

/// How many descriptors the process has open (0 where `/proc` is missing).
fn open_now() -> usize {
    // Less the one the listing itself holds.
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

/// The soft `RLIMIT_NOFILE` (`None`: unlimited, counted as `usize::MAX`).
pub(crate) fn soft_limit() -> usize {
    rlimit::getrlimit(rlimit::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Raises the soft descriptor limit to the hard one (systemd's
/// `LimitNOFILE=` sets both; a shell's `ulimit -n` often only the hard).
/// Returns the limit in force. Call it before anything reads the budget.
pub fn raise_soft_limit() -> std::io::Result<u64> {
    let mut l = rlimit::getrlimit(rlimit::Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        rlimit::setrlimit(rlimit::Resource::Nofile, l)?;
    }
    Ok(l.current.unwrap_or(u64::MAX))
}

/// Descriptors the data plane holds; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held(usize);

impl Drop for Held {
    fn drop(&mut self) {
        let b = budget();
        b.used.fetch_sub(self.0, Ordering::AcqRel);
        if b.waiting.load(Ordering::Acquire) > 0 {
            b.freed.notify_waiters();
        }
    }
}

impl Held {
    /// Adds `other`'s descriptors to this holding: one holding for many
    /// sockets, given back one by one.
    pub(crate) fn join(&mut self, other: Held) {
        self.0 += other.0;
        // Its descriptors are this holding's now; it has nothing else to drop.
        std::mem::forget(other);
    }

    /// Gives `n` of this holding's descriptors back.
    pub(crate) fn give_back(&mut self, n: usize) {
        let n = n.min(self.0);
        self.0 -= n;
        drop(Held(n));
    }
}

/// A holding of nothing: for a connection taken over when the budget is
/// spent (it must be served; it is not counted).
pub(crate) fn untracked() -> Held {
    Held(0)
}

/// Takes `n` descriptors from the budget, or `None` when it has no room.
pub(crate) fn try_take(n: usize) -> Option<Held> {
    take_within(n, budget().share)
}

/// Takes `n` descriptors if the data plane then holds at most `cap`.
fn take_within(n: usize, cap: usize) -> Option<Held> {
    budget()
        .used
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used + n <= cap).then_some(used + n)
        })
        .ok()
        .map(|_| Held(n))
}

/// Takes `n` descriptors only while a quarter of the budget stays free:
/// for UDP sessions, which a flood of source ports could otherwise spend to
/// the last descriptor, leaving TCP clients none.
pub(crate) fn try_take_sparingly(n: usize) -> Option<Held> {
    let share = budget().share;
    take_within(n, share - share / 4)
}

/// Takes `n` descriptors, waiting for others to be given back.
pub(crate) async fn take(n: usize) -> Held {
    let b = budget();
    loop {
        let freed = b.freed.notified();
        tokio::pin!(freed);
        // Registered before the check, so a release in between is not missed.
        freed.as_mut().enable();
        b.waiting.fetch_add(1, Ordering::AcqRel);
        let got = try_take(n);
        if got.is_none() {
            freed.await;
        }
        b.waiting.fetch_sub(1, Ordering::AcqRel);
        if let Some(h) = got {
            return h;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_scales_within_bounds() {
        assert_eq!(reserve_for(64), 16);
        assert_eq!(reserve_for(4_000), 250);
        assert_eq!(reserve_for(1_048_576), 1024);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_descriptors_come_back() {
        let b = budget();
        // Take everything that is left, then wait for two.
        let all = try_take(b.share - b.used.load(Ordering::Acquire));
        assert!(all.is_some());
        assert!(try_take(2).is_none());
        let waiter = tokio::spawn(take(2));
        tokio::task::yield_now().await;
        drop(all);
        let held = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(held.0, 2);
    }
}
