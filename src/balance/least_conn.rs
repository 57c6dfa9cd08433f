//! `least_conn`: the eligible backend with the fewest active connections per
//! unit of weight; ties go round the set so equal backends share the work.
//!
//! Up to [`WINDOW`] backends the choice is exact. In a larger pool each pick
//! compares a window of [`WINDOW`] backends that moves one place a pick, so
//! a pick costs the same at 100 backends as at 10,000 (as Envoy's
//! `least_request` compares a few choices rather than all). An exact choice
//! in O(log n) would need a shared ordered structure that every connection's
//! open and close updates, a lock or a compare-and-swap loop on the hottest
//! path of every pool for the sake of the largest ones. Over successive
//! picks every backend is in 64 windows, so an idle one is found within a
//! sweep of the pool; only a run of 64 ineligible backends in a row makes a
//! pick look further.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{less_loaded, Candidates, Flow, Strategy};

/// How many backends one pick compares (all of them, in a smaller pool).
pub const WINDOW: usize = 64;

#[derive(Debug, Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl Strategy for LeastConn {
    fn pick(&self, _flow: &Flow, c: &dyn Candidates) -> Option<usize> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<usize> = None;
        let mut i = start;
        for k in 0..n {
            if k >= WINDOW && best.is_some() {
                break;
            }
            if c.eligible(i) && best.is_none_or(|b| less_loaded(c, i, b)) {
                best = Some(i);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{flow, Fixed};

    #[test]
    fn prefers_idle_then_rotates_ties() {
        let mut c = Fixed::new(&[1, 1, 1]);
        c.active = vec![5, 0, 5];
        let lc = LeastConn::default();
        assert!((0..10).all(|_| lc.pick(&flow(1), &c) == Some(1)));
        c.active = vec![0, 0, 0];
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[lc.pick(&flow(1), &c).unwrap()] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
    }

    #[test]
    fn a_large_pool_finds_its_idle_backend_within_one_sweep() {
        let n = 1000;
        let mut c = Fixed::new(&vec![1; n]);
        c.active = vec![3; n];
        c.active[700] = 0;
        let lc = LeastConn::default();
        let hits = (0..n)
            .filter(|_| lc.pick(&flow(1), &c) == Some(700))
            .count();
        // In the 64 windows that hold it, and in none other.
        assert_eq!(hits, WINDOW);
        // A window of ineligible backends looks on past it.
        c.down = (0..n).map(|i| i < 200).collect();
        let lc = LeastConn::default();
        assert!(lc.pick(&flow(1), &c).is_some_and(|i| i >= 200));
    }

    #[test]
    fn weight_aware() {
        let mut c = Fixed::new(&[1, 4]);
        c.active = vec![1, 3];
        // 3/4 < 1/1
        assert_eq!(LeastConn::default().pick(&flow(1), &c), Some(1));
        c.down[1] = true;
        assert_eq!(LeastConn::default().pick(&flow(1), &c), Some(0));
    }
}
