//! `weighted`: nginx's smooth weighted round robin. The schedule for one
//! cycle of sum(weights) picks is computed once at build time; picks walk it
//! with an atomic counter, so every backend gets exactly its weight per
//! cycle, interleaved, without a lock.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Strategy};

#[derive(Debug)]
pub struct Weighted {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl Weighted {
    pub fn new(weights: &[u32]) -> Weighted {
        // Dividing by the common factor keeps the schedule short: 2/4/6
        // interleaves exactly like 1/2/3.
        let g = weights.iter().copied().fold(0, gcd).max(1);
        let w: Vec<i64> = weights.iter().map(|&x| i64::from(x.max(1) / g)).collect();
        let total: i64 = w.iter().sum();
        let mut current = vec![0i64; w.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best as u32);
        }
        Weighted {
            schedule,
            next: AtomicUsize::new(0),
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Strategy for Weighted {
    fn pick(&self, c: &dyn Candidates) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.schedule[start.wrapping_add(k) % len] as usize)
            .find(|&i| i < c.len() && c.eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fixed;

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let c = Fixed::new(&[5, 1, 1]);
        let w = Weighted::new(&c.weights);
        let picks: Vec<usize> = (0..7).map(|_| w.pick(&c).unwrap()).collect();
        // The sequence nginx documents for weights 5, 1, 1.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn exact_counts_per_cycle_and_no_bursts() {
        let c = Fixed::new(&[1, 2, 3]);
        let w = Weighted::new(&c.weights);
        for _cycle in 0..50 {
            let picks: Vec<usize> = (0..6).map(|_| w.pick(&c).unwrap()).collect();
            let count = |b| picks.iter().filter(|&&p| p == b).count();
            assert_eq!((count(0), count(1), count(2)), (1, 2, 3), "{picks:?}");
            // Weight 3 of 6 never runs three in a row.
            assert!(picks
                .windows(3)
                .all(|win| !(win[0] == 2 && win[1] == 2 && win[2] == 2)));
        }
    }

    #[test]
    fn skips_ineligible() {
        let mut c = Fixed::new(&[1, 2, 3]);
        c.down[2] = true;
        let w = Weighted::new(&c.weights);
        assert!((0..60).all(|_| w.pick(&c) != Some(2)));
        c.down = vec![true; 3];
        assert_eq!(w.pick(&c), None);
    }
}
