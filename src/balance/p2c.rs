//! `p2c`: power of two random choices: draw two eligible backends at random
//! and take the less loaded (active/weight).

use rand::Rng;

use super::{less_loaded, random_eligible, Candidates, Flow, Strategy};

#[derive(Debug)]
pub struct P2c;

impl Strategy for P2c {
    fn pick(&self, _flow: &Flow, c: &dyn Candidates) -> Option<usize> {
        let mut rng = rand::rng();
        let a = random_eligible(c, &mut rng)?;
        // A second draw that lands on `a` is simply a one-choice pick, which
        // keeps this correct with a single eligible backend.
        let b = random_eligible(c, &mut rng).unwrap_or(a);
        Some(match (less_loaded(c, b, a), less_loaded(c, a, b)) {
            (true, _) => b,
            (false, true) => a,
            _ if rng.random_bool(0.5) => a,
            _ => b,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{flow, Fixed};

    #[test]
    fn avoids_the_loaded_backend() {
        let mut c = Fixed::new(&[1, 1]);
        c.active = vec![100, 0];
        let mut loaded = 0;
        for _ in 0..1000 {
            if P2c.pick(&flow(1), &c) == Some(0) {
                loaded += 1;
            }
        }
        // Only a draw of (0, 0) picks the loaded one: a quarter of the time.
        assert!((150..350).contains(&loaded), "{loaded}");
        c.down[1] = true;
        assert_eq!(P2c.pick(&flow(1), &c), Some(0));
        c.down[0] = true;
        assert_eq!(P2c.pick(&flow(1), &c), None);
    }
}
