//! One pick per strategy at 3, 100, 1,000 and 10,000 backends, all eligible; and
//! building each strategy at 1,000 and 10,000 backends.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::net::SocketAddr;

use switchyard::balance::{build, Candidates, Flow, Peer, StrategyKind};

struct Set {
    weights: Vec<u32>,
    active: Vec<u64>,
}

impl Candidates for Set {
    fn len(&self) -> usize {
        self.weights.len()
    }
    fn eligible(&self, _i: usize) -> bool {
        true
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn active(&self, i: usize) -> u64 {
        self.active[i]
    }
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 100, 1000, 10_000] {
        let set = Set {
            weights: (0..n).map(|i| (i % 5 + 1) as u32).collect(),
            active: (0..n).map(|i| (i * 7 % 13) as u64).collect(),
        };
        let peers: Vec<Peer> = set
            .weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Peer {
                addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80)).into(),
                weight,
            })
            .collect();
        let flow = Flow {
            client: SocketAddr::from(([192, 0, 2, 1], 40000)),
        };
        for kind in StrategyKind::ALL {
            let strategy = build(kind, &peers);
            group.bench_with_input(BenchmarkId::new(kind.name(), n), &set, |b, set| {
                b.iter(|| std::hint::black_box(strategy.pick(&flow, set)))
            });
        }
    }
    group.finish();
}

/// Building each strategy for a pool (what a reload or a weight change
/// costs), at 1,000 and 10,000 backends with weights 1 to 256.
fn builds(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for n in [1000usize, 10_000] {
        let peers: Vec<Peer> = (0..n)
            .map(|i| Peer {
                addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80)).into(),
                weight: (i * 7919 % 256 + 1) as u32,
            })
            .collect();
        for kind in StrategyKind::ALL {
            group.bench_with_input(BenchmarkId::new(kind.name(), n), &peers, |b, peers| {
                b.iter(|| std::hint::black_box(build(kind, peers)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks, builds);
criterion_main!(benches);
