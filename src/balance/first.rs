//! `first`: the first eligible backend in order, as HAProxy's `balance
//! first`. Eligibility already excludes a backend at its `max_connections`,
//! so connections fill one backend before the next takes any, and the
//! backends at the end of the list stay idle until the ones before are full:
//! they can be scaled down.

use super::{Candidates, Flow, Strategy};

#[derive(Debug, Default)]
pub struct First;

impl Strategy for First {
    fn pick(&self, _flow: &Flow, c: &dyn Candidates) -> Option<usize> {
        (0..c.len()).find(|&i| c.eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{flow, Fixed};
    use super::*;

    #[test]
    fn fills_in_order_and_skips_the_ineligible() {
        let mut c = Fixed::new(&[1, 1, 1]);
        assert_eq!(First.pick(&flow(1), &c), Some(0));
        c.down[0] = true;
        assert_eq!(First.pick(&flow(2), &c), Some(1));
        c.down[1] = true;
        c.down[2] = true;
        assert_eq!(First.pick(&flow(3), &c), None);
    }
}
