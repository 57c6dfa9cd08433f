//! Load-balancing strategies behind one small trait.
//!
//! A strategy is built once from a pool's backends, each named by its
//! identity ([`Peer`]: address and weight), so weighting costs nothing per
//! pick and a strategy that places keys (consistent hashing) can stay stable
//! when the set changes. It then hands out indices into that list. It never
//! decides which backends may take traffic: the caller passes
//! [`Candidates`], whose `eligible` already folds in health, drain,
//! connection limits and backends already tried. Each pick also sees the
//! [`Flow`] it is for. Adding a strategy means one file here and one arm in
//! [`build`].

mod first;
mod least_conn;
mod maglev;
mod p2c;
mod random;
mod round_robin;
mod weighted;

use std::fmt;
use std::net::SocketAddr;

pub use maglev::{HashKey, DEFAULT_TABLE_SIZE};

/// A backend as a strategy is built from it: who it is and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The backend's address, its identity.
    pub addr: crate::endpoint::Endpoint,
    /// Its weight, at least 1.
    pub weight: u32,
}

/// What a pick is for: the key a strategy may place by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The client's address (after any unwrapping of a proxy header).
    pub client: SocketAddr,
}

/// The backends a pick chooses among, as the strategy sees them.
pub trait Candidates {
    /// Number of backends, eligible or not; indices run `0..len()`.
    fn len(&self) -> usize;
    /// Whether there are no backends at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether backend `i` may take this connection now.
    fn eligible(&self, i: usize) -> bool;
    /// Backend `i`'s configured weight (at least 1).
    fn weight(&self, i: usize) -> u32;
    /// Backend `i`'s active connections or sessions.
    fn active(&self, i: usize) -> u64;
}

/// Picks one backend per call. Implementations are shared by every worker
/// thread and must be lock-free.
pub trait Strategy: Send + Sync + fmt::Debug {
    /// Index of an eligible backend for `flow`, or `None` when none is eligible.
    fn pick(&self, flow: &Flow, c: &dyn Candidates) -> Option<usize>;
}

/// The strategies a pool can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    /// `random`: uniform.
    Random,
    /// `round_robin`: strict rotation.
    RoundRobin,
    /// `weighted`: smooth weighted round robin.
    Weighted,
    /// `least_conn`: fewest active per unit of weight.
    LeastConn,
    /// `p2c`: the less loaded of two random choices.
    P2c,
    /// `maglev`: consistent hashing of the client, the same on every instance.
    Maglev,
    /// `first`: the first backend in order below its `max_connections`.
    First,
}

impl StrategyKind {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [StrategyKind; 7] = [
        StrategyKind::Random,
        StrategyKind::RoundRobin,
        StrategyKind::Weighted,
        StrategyKind::LeastConn,
        StrategyKind::P2c,
        StrategyKind::Maglev,
        StrategyKind::First,
    ];

    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::Random => "random",
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::Weighted => "weighted",
            StrategyKind::LeastConn => "least_conn",
            StrategyKind::P2c => "p2c",
            StrategyKind::Maglev => "maglev",
            StrategyKind::First => "first",
        }
    }

    /// The strategy a config file names, if any.
    pub fn from_name(name: &str) -> Option<StrategyKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether backend weights change what this strategy picks.
    pub fn uses_weights(self) -> bool {
        matches!(
            self,
            StrategyKind::Weighted
                | StrategyKind::LeastConn
                | StrategyKind::P2c
                | StrategyKind::Maglev
        )
    }
}

/// Settings only some strategies read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `maglev`: the table's size, a prime.
    pub table_size: u32,
    /// `maglev`: what of the client is hashed.
    pub hash_key: HashKey,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            table_size: DEFAULT_TABLE_SIZE,
            hash_key: HashKey::ClientIp,
        }
    }
}

/// Builds the strategy `kind` for these backends, in this order (the
/// indices it hands out), with default options.
pub fn build(kind: StrategyKind, peers: &[Peer]) -> Box<dyn Strategy> {
    build_with(kind, peers, &Options::default())
}

/// Builds the strategy `kind` for these backends with `options`.
pub fn build_with(kind: StrategyKind, peers: &[Peer], options: &Options) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::Maglev => Box::new(maglev::Maglev::new(
            peers,
            options.table_size,
            options.hash_key,
        )),
        StrategyKind::Random => Box::new(random::Random),
        StrategyKind::RoundRobin => Box::new(round_robin::RoundRobin::new(peers.len())),
        StrategyKind::Weighted => Box::new(weighted::Weighted::new(
            &peers.iter().map(|p| p.weight).collect::<Vec<_>>(),
        )),
        StrategyKind::LeastConn => Box::new(least_conn::LeastConn::default()),
        StrategyKind::P2c => Box::new(p2c::P2c),
        StrategyKind::First => Box::new(first::First),
    }
}

/// Walks a fixed cycle (`len` entries) with a shared counter: each
/// ineligible entry costs a tick of its own, so the picks are exactly the
/// eligible entries in cycle order and a skipped backend's turns are shared
/// by all the others, not handed to its neighbour.
///
/// Concurrent picks interleave their ticks, so `len` ticks of one pick need
/// not visit every entry: one that only met ineligible entries walks the
/// whole cycle once more from its last tick, without ticking, before it
/// says none is eligible.
fn next_in_cycle(
    counter: &std::sync::atomic::AtomicUsize,
    len: usize,
    entry: impl Fn(usize) -> usize,
    c: &dyn Candidates,
) -> Option<usize> {
    let eligible = |t: usize| {
        let i = entry(t % len);
        (i < c.len() && c.eligible(i)).then_some(i)
    };
    let mut last = 0;
    for _ in 0..len {
        last = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(i) = eligible(last) {
            return Some(i);
        }
    }
    (1..=len).find_map(|k| eligible(last.wrapping_add(k)))
}

/// Whether `a` is less loaded than `b`, comparing active/weight without division.
fn less_loaded(c: &dyn Candidates, a: usize, b: usize) -> bool {
    (c.active(a) as u128) * (c.weight(b) as u128) < (c.active(b) as u128) * (c.weight(a) as u128)
}

/// A uniformly random eligible index: rejection sampling first (cheap when
/// most are eligible), then an exact reservoir pass.
fn random_eligible(c: &dyn Candidates, rng: &mut impl rand::Rng) -> Option<usize> {
    let n = c.len();
    if n == 0 {
        return None;
    }
    // Eight probes find an eligible backend with probability > 99.6% when at
    // least half are eligible; past that the exact pass is cheaper than luck.
    for _ in 0..8 {
        let i = rng.random_range(0..n);
        if c.eligible(i) {
            return Some(i);
        }
    }
    let mut chosen = None;
    for (seen, i) in (0..n).filter(|&i| c.eligible(i)).enumerate() {
        if rng.random_range(0..=seen) == 0 {
            chosen = Some(i);
        }
    }
    chosen
}

#[cfg(test)]
pub(crate) mod testing {
    //! A plain in-memory candidate set for strategy tests and benchmarks.
    use super::Candidates;

    use std::net::SocketAddr;

    use super::Flow;

    /// A flow from a client on loopback with this port.
    pub fn flow(port: u16) -> Flow {
        Flow {
            client: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    pub struct Fixed {
        pub weights: Vec<u32>,
        pub active: Vec<u64>,
        pub down: Vec<bool>,
    }

    impl Fixed {
        pub fn new(weights: &[u32]) -> Fixed {
            Fixed {
                weights: weights.to_vec(),
                active: vec![0; weights.len()],
                down: vec![false; weights.len()],
            }
        }
    }

    impl Candidates for Fixed {
        fn len(&self) -> usize {
            self.weights.len()
        }
        fn eligible(&self, i: usize) -> bool {
            !self.down[i]
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
        fn active(&self, i: usize) -> u64 {
            self.active[i]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{flow, Fixed};
    use super::*;

    /// A candidate set whose every look yields the thread, so that
    /// concurrent picks interleave as they do on a busy machine.
    struct Yielding(Fixed);

    impl Candidates for Yielding {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn eligible(&self, i: usize) -> bool {
            std::thread::yield_now();
            self.0.eligible(i)
        }
        fn weight(&self, i: usize) -> u32 {
            self.0.weight(i)
        }
        fn active(&self, i: usize) -> u64 {
            self.0.active(i)
        }
    }

    /// Every strategy finds the one eligible backend whenever it exists,
    /// however many threads pick at once.
    #[test]
    fn concurrent_picks_always_find_the_eligible_backend() {
        for kind in StrategyKind::ALL {
            let peers: Vec<Peer> = (0..2)
                .map(|i| Peer {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i)).into(),
                    weight: 1 + u32::from(i),
                })
                .collect();
            let strategy = build(kind, &peers);
            let mut c = Fixed::new(&[1, 2]);
            c.down[0] = true;
            let c = Yielding(c);
            let missed = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for t in 0..8 {
                    let (strategy, c, missed) = (&strategy, &c, &missed);
                    s.spawn(move || {
                        for _ in 0..5_000 {
                            match strategy.pick(&flow(t), c) {
                                Some(1) => {}
                                Some(i) => panic!("{} picked ineligible {i}", kind.name()),
                                None => {
                                    missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
            });
            assert_eq!(
                missed.into_inner(),
                0,
                "{}: picks that found no backend while one was eligible",
                kind.name()
            );
        }
    }
}
