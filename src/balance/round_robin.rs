//! `round_robin`: strict rotation over the eligible backends.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Strategy};

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn pick(&self, c: &dyn Candidates) -> Option<usize> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start.wrapping_add(k)) % n)
            .find(|&i| c.eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fixed;

    #[test]
    fn every_backend_k_times_in_k_rounds() {
        let c = Fixed::new(&[1, 5, 1]);
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..9).map(|_| rr.pick(&c).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_ineligible() {
        let mut c = Fixed::new(&[1, 1, 1]);
        c.down[1] = true;
        let rr = RoundRobin::default();
        assert!((0..10).all(|_| rr.pick(&c) != Some(1)));
        c.down = vec![true; 3];
        assert_eq!(rr.pick(&c), None);
    }
}
