//! `least_conn`: the eligible backend with the fewest active connections per
//! unit of weight; ties go round the set so equal backends share the work.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{less_loaded, Candidates, Flow, Strategy};

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
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = start.wrapping_add(k) % n;
            if c.eligible(i) && best.is_none_or(|b| less_loaded(c, i, b)) {
                best = Some(i);
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
    fn weight_aware() {
        let mut c = Fixed::new(&[1, 4]);
        c.active = vec![1, 3];
        // 3/4 < 1/1
        assert_eq!(LeastConn::default().pick(&flow(1), &c), Some(1));
        c.down[1] = true;
        assert_eq!(LeastConn::default().pick(&flow(1), &c), Some(0));
    }
}
