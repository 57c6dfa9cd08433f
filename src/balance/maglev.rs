//! `maglev`: consistent hashing (Eisenbud et al., NSDI 2016), weighted. Every
//! instance that sees the same backends builds the same table, so it picks
//! the same backend for the same client without talking to the others; when
//! a backend leaves, only the keys that were on it move.
//!
//! Everything that decides placement is fixed here and must never change
//! (instances of different versions must agree):
//! - a backend's identity is its address as bytes: the 4 or 16 octets of the
//!   IP, then the port, big-endian;
//! - the hash is 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime
//!   0x100000001b3); a backend's permutation starts at
//!   `fnv(identity) mod M` and steps by `fnv(identity ++ [0x01]) mod (M - 1) + 1`
//!   for a prime table size M;
//! - backends fill the table in the order of their identities' bytes (not
//!   the order they were listed or discovered), each taking as many turns per
//!   round as its weight, so its share of the table follows its weight;
//! - a key is the client's IP (or IP and port) as bytes, hashed the same way;
//!   its backend is `table[fnv(key) mod M]`, and when that one is not
//!   available, the next entry's, and so on: a key's own preference order, the
//!   same on every instance.
//!
//! `golden_table_prefix` pins these rules.

use super::{Candidates, Flow, Peer, Strategy};
use crate::endpoint::Endpoint;
use std::net::IpAddr;

/// What of the client a key is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// The client's IP: all its connections go to one backend.
    ClientIp,
    /// The client's IP and port: each connection placed on its own.
    ClientAddr,
}

/// The default table size: a prime, enough for 655 backends at 100 entries
/// each (the paper's rule for an even spread).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

#[derive(Debug)]
pub struct Maglev {
    /// Indices into the pool's backends (as the caller listed them).
    table: Vec<u32>,
    key: HashKey,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A backend's identity as bytes: IP octets, then the port big-endian; a
/// Unix socket's, `unix:` and its name (no IP address is that long).
fn identity(addr: Endpoint) -> Vec<u8> {
    match addr {
        Endpoint::Inet(addr) => {
            let mut b = ip_bytes(addr.ip());
            b.extend_from_slice(&addr.port().to_be_bytes());
            b
        }
        Endpoint::Unix(name) => format!("unix:{name}").into_bytes(),
    }
}

impl Maglev {
    /// Builds the table of size `m` (a prime) for `peers`.
    pub fn new(peers: &[Peer], m: u32, key: HashKey) -> Maglev {
        let m = u64::from(m.max(2));
        let mut order: Vec<(Vec<u8>, usize)> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (identity(p.addr), i))
            .collect();
        order.sort();
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|(id, _)| {
                let offset = fnv(&[id]) % m;
                let skip = fnv(&[id, &[0x01]]) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut table = vec![u32::MAX; m as usize];
        if peers.is_empty() {
            return Maglev {
                table: Vec::new(),
                key,
            };
        }
        let mut next = vec![0u64; order.len()];
        let mut filled = 0u64;
        'fill: loop {
            for (k, (_, original)) in order.iter().enumerate() {
                for _ in 0..peers[*original].weight.max(1) {
                    let (offset, skip) = perms[k];
                    // The next slot of this backend's permutation still free.
                    let slot = loop {
                        let c = (offset + next[k] * skip) % m;
                        next[k] += 1;
                        if table[c as usize] == u32::MAX {
                            break c;
                        }
                    };
                    table[slot as usize] = *original as u32;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table, key }
    }

    fn slot(&self, flow: &Flow) -> usize {
        let ip = ip_bytes(flow.client.ip());
        let h = match self.key {
            HashKey::ClientIp => fnv(&[&ip]),
            HashKey::ClientAddr => fnv(&[&ip, &flow.client.port().to_be_bytes()]),
        };
        (h % self.table.len() as u64) as usize
    }
}

impl Strategy for Maglev {
    fn pick(&self, flow: &Flow, c: &dyn Candidates) -> Option<usize> {
        let len = self.table.len();
        if len == 0 {
            return None;
        }
        let start = self.slot(flow);
        // The key's own preference order: its entry, then the next ones.
        // Consecutive entries repeat backends, so remember the last refused.
        let mut refused = u32::MAX;
        for k in 0..len {
            let i = self.table[(start + k) % len];
            if i == refused {
                continue;
            }
            if (i as usize) < c.len() && c.eligible(i as usize) {
                return Some(i as usize);
            }
            refused = i;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::Fixed;
    use std::net::SocketAddr;

    fn peers(n: usize, weight: impl Fn(usize) -> u32) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer {
                addr: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8080)).into(),
                weight: weight(i),
            })
            .collect()
    }

    fn flow(i: u32) -> Flow {
        Flow {
            client: SocketAddr::from((std::net::Ipv4Addr::from(0x0a80_0000 + i), 40000)),
        }
    }

    /// The rules in the module documentation, pinned: a change here moves
    /// clients between instances of different versions.
    #[test]
    fn golden_table_prefix() {
        let p = vec![
            Peer {
                addr: "10.0.0.1:80".parse().unwrap(),
                weight: 1,
            },
            Peer {
                addr: "10.0.0.2:80".parse().unwrap(),
                weight: 2,
            },
            Peer {
                addr: "[2001:db8::3]:443".parse().unwrap(),
                weight: 1,
            },
        ];
        let t = Maglev::new(&p, 13, HashKey::ClientIp);
        assert_eq!(t.table, GOLDEN_13);
        assert_eq!(fnv(&[b"a"]), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 of \"a\"");
    }

    // Computed by hand from the rules above (and by an independent script).
    const GOLDEN_13: [u32; 13] = [1, 0, 0, 0, 1, 1, 2, 1, 2, 1, 1, 2, 0];

    #[test]
    fn the_same_set_builds_the_same_table_in_any_order() {
        let p = peers(50, |i| (i % 4 + 1) as u32);
        let a = Maglev::new(&p, DEFAULT_TABLE_SIZE, HashKey::ClientIp);
        let mut shuffled = p.clone();
        shuffled.reverse();
        let b = Maglev::new(&shuffled, DEFAULT_TABLE_SIZE, HashKey::ClientIp);
        // Same backend (by address) in every slot.
        assert!(a
            .table
            .iter()
            .zip(&b.table)
            .all(|(&x, &y)| p[x as usize].addr == shuffled[y as usize].addr));
    }

    #[test]
    fn shares_follow_weights() {
        let p = peers(4, |i| [1, 1, 2, 4][i]);
        let t = Maglev::new(&p, DEFAULT_TABLE_SIZE, HashKey::ClientIp);
        let mut count = [0usize; 4];
        for &i in &t.table {
            count[i as usize] += 1;
        }
        let total = t.table.len() as f64;
        for (i, want) in [1.0, 1.0, 2.0, 4.0].iter().enumerate() {
            let share = count[i] as f64 / total;
            assert!((share - want / 8.0).abs() < 0.01, "backend {i}: {share}");
        }
    }

    #[test]
    fn removing_or_adding_one_backend_moves_few_keys() {
        let n = 10;
        let all = peers(n + 1, |_| 1);
        let before = Maglev::new(&all[..n], DEFAULT_TABLE_SIZE, HashKey::ClientIp);
        let c = Fixed::new(&vec![1; n + 1]);
        let keys = 100_000u32;
        let pick = |t: &Maglev, set: &[Peer], k| set[t.pick(&flow(k), &c).unwrap()].addr;
        // Removing the last backend: only its keys move (1/N), plus at most 1 %.
        let removed = Maglev::new(&all[..n - 1], DEFAULT_TABLE_SIZE, HashKey::ClientIp);
        let moved = (0..keys)
            .filter(|&k| pick(&before, &all[..n], k) != pick(&removed, &all[..n - 1], k))
            .count() as f64
            / f64::from(keys);
        assert!(
            moved <= 1.0 / n as f64 + 0.01,
            "removing one of {n}: {moved}"
        );
        // Adding one: at most 1/(N+1) + 1 %.
        let added = Maglev::new(&all, DEFAULT_TABLE_SIZE, HashKey::ClientIp);
        let moved = (0..keys)
            .filter(|&k| pick(&before, &all[..n], k) != pick(&added, &all, k))
            .count() as f64
            / f64::from(keys);
        assert!(
            moved <= 1.0 / (n + 1) as f64 + 0.01,
            "adding one to {n}: {moved}"
        );
    }

    #[test]
    fn an_unavailable_backend_is_skipped_in_the_keys_own_order() {
        let p = peers(5, |_| 1);
        let t = Maglev::new(&p, 1009, HashKey::ClientIp);
        let mut c = Fixed::new(&[1; 5]);
        let k = flow(7);
        let first = t.pick(&k, &c).unwrap();
        c.down[first] = true;
        let second = t.pick(&k, &c).unwrap();
        assert_ne!(first, second);
        // The same fallback every time (and so on every instance).
        assert!((0..10).all(|_| t.pick(&k, &c) == Some(second)));
        c.down = vec![true; 5];
        assert_eq!(t.pick(&k, &c), None);
    }
}
