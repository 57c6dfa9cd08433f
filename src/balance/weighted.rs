//! `weighted`: nginx's smooth weighted round robin. The schedule for one
//! cycle of sum(weights) picks is computed once at build time; picks walk it
//! with an atomic counter, so every backend gets exactly its weight per
//! cycle, interleaved, without a lock. An unavailable backend's entries are
//! skipped tick by tick, so the others keep their shares in proportion to
//! their weights (as nginx does when a peer is down).

use std::sync::atomic::AtomicUsize;

use super::{next_in_cycle, Candidates, Flow, Strategy};

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
    fn pick(&self, _flow: &Flow, c: &dyn Candidates) -> Option<usize> {
        next_in_cycle(
            &self.next,
            self.schedule.len(),
            |k| self.schedule[k] as usize,
            c,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{flow, Fixed};

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let c = Fixed::new(&[5, 1, 1]);
        let w = Weighted::new(&c.weights);
        let picks: Vec<usize> = (0..7).map(|_| w.pick(&flow(1), &c).unwrap()).collect();
        // The sequence nginx documents for weights 5, 1, 1.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn exact_counts_per_cycle_and_no_bursts() {
        let c = Fixed::new(&[1, 2, 3]);
        let w = Weighted::new(&c.weights);
        for _cycle in 0..50 {
            let picks: Vec<usize> = (0..6).map(|_| w.pick(&flow(1), &c).unwrap()).collect();
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
        assert!((0..60).all(|_| w.pick(&flow(1), &c) != Some(2)));
        c.down = vec![true; 3];
        assert_eq!(w.pick(&flow(1), &c), None);
    }

    #[test]
    fn the_survivors_keep_their_proportions() {
        // 1/2/3 with the weight-2 backend down: 1 and 3 of every 4 picks.
        let mut c = Fixed::new(&[1, 2, 3]);
        c.down[1] = true;
        let w = Weighted::new(&c.weights);
        let mut seen = [0; 3];
        for _ in 0..400 {
            seen[w.pick(&flow(1), &c).unwrap()] += 1;
        }
        assert_eq!(seen, [100, 0, 300]);
        // 5/1/1 with the heavy one down: the two light ones alternate.
        let mut c = Fixed::new(&[5, 1, 1]);
        c.down[0] = true;
        let w = Weighted::new(&c.weights);
        let picks: Vec<usize> = (0..6).map(|_| w.pick(&flow(1), &c).unwrap()).collect();
        assert_eq!(picks, [1, 2, 1, 2, 1, 2]);
    }
}
