//! `random`: uniform over the eligible backends.

use super::{random_eligible, Candidates, Flow, Strategy};

#[derive(Debug)]
pub struct Random;

impl Strategy for Random {
    fn pick(&self, _flow: &Flow, c: &dyn Candidates) -> Option<usize> {
        random_eligible(c, &mut rand::rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{flow, Fixed};

    #[test]
    fn uniform_and_skips_ineligible() {
        let mut c = Fixed::new(&[1; 4]);
        c.down[2] = true;
        let mut counts = [0u32; 4];
        for _ in 0..30_000 {
            counts[Random.pick(&flow(1), &c).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        // Expected 10,000 each; 5 standard deviations is about 410.
        for i in [0, 1, 3] {
            assert!((9_500..10_500).contains(&counts[i]), "{counts:?}");
        }
        c.down = vec![true; 4];
        assert_eq!(Random.pick(&flow(1), &c), None);
    }
}
