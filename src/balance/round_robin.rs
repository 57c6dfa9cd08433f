//! `round_robin`: strict rotation over the pool's backends; over any k·N
//! picks each backend gets exactly k. An unavailable backend's turn goes to
//! the next pick in rotation, so the others share it evenly.

use std::sync::atomic::AtomicUsize;

use super::{next_in_cycle, Candidates, Flow, Strategy};

#[derive(Debug)]
pub struct RoundRobin {
    len: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(len: usize) -> RoundRobin {
        RoundRobin {
            len,
            next: AtomicUsize::new(0),
        }
    }
}

impl Strategy for RoundRobin {
    fn pick(&self, _flow: &Flow, c: &dyn Candidates) -> Option<usize> {
        next_in_cycle(&self.next, self.len, |i| i, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{flow, Fixed};

    #[test]
    fn every_backend_k_times_in_k_rounds() {
        let c = Fixed::new(&[1, 5, 1]);
        let rr = RoundRobin::new(3);
        let picks: Vec<usize> = (0..9).map(|_| rr.pick(&flow(1), &c).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_ineligible() {
        let mut c = Fixed::new(&[1, 1, 1]);
        c.down[1] = true;
        let rr = RoundRobin::new(3);
        assert!((0..10).all(|_| rr.pick(&flow(1), &c) != Some(1)));
        c.down = vec![true; 3];
        assert_eq!(rr.pick(&flow(1), &c), None);
    }

    #[test]
    fn the_survivors_share_a_dead_backends_turns() {
        for dead in 0..4 {
            let mut c = Fixed::new(&[1, 1, 1, 1]);
            c.down[dead] = true;
            let rr = RoundRobin::new(4);
            let mut seen = [0; 4];
            for _ in 0..300 {
                seen[rr.pick(&flow(1), &c).unwrap()] += 1;
            }
            let expected: Vec<usize> = (0..4).map(|i| if i == dead { 0 } else { 100 }).collect();
            assert_eq!(seen.to_vec(), expected, "backend {dead} down");
        }
    }
}
