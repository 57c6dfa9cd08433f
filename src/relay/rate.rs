//! Byte-rate limits: token buckets that fill at the rate, up to one second
//! of it. A connection's own bucket is its direction's alone; a listener's
//! is shared by its connections, which take turns at it in the order they
//! came (a fair queue), each taking one chunk (a twentieth of a second's
//! bytes) a turn. A direction spends its chunk before it queues again: what
//! a read did not use stays its credit for the next reads (deficit round
//! robin), so the rate is split evenly by bytes, not by turns, even when
//! one direction's reads come back short (a splice from a socket often
//! does) and another's come back full. A bucket starts with one chunk, so a
//! connection's first bytes pass at once and a burst after idleness is at
//! most a second's worth, plus at most one chunk of credit per direction.
//!
//! A direction asks for an allowance before each read or splice and gives
//! back what the read did not use; it waits, holding no bytes, while there
//! is none, so a binary upgrade can still take it over. A direction that
//! ends returns its credit to the listener's bucket.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The largest allowance a direction takes at once.
const MAX_CHUNK: usize = 64 * 1024;
/// The smallest: rates start at 1 KiB/s.
const MIN_CHUNK: usize = 1024;
/// A limited direction whose read fills an allowance this large or larger
/// switches to splice(2), as a bulk flow does.
pub const MIN_SPLICE: usize = 16 * 1024;

/// What one limited direction may take: its own rate and the listener's bucket.
#[derive(Debug, Clone, Default)]
pub struct Limit {
    /// Bytes per second for each connection in this direction.
    pub per_connection: Option<u64>,
    /// The listener's bucket for this direction.
    pub shared: Option<std::sync::Arc<Bucket>>,
}

impl Limit {
    /// Whether anything limits this direction.
    pub fn limits(&self) -> bool {
        self.per_connection.is_some() || self.shared.is_some()
    }
}

/// Both directions' limits of a connection, and the tap of a mirrored one.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Client to backend.
    pub up: Limit,
    /// Backend to client.
    pub down: Limit,
    /// A mirror's copy of the client's bytes (one connection's own).
    pub tap: Option<super::tap::Tap>,
}

impl RateLimits {
    /// These limits, with a connection's own tap.
    pub fn tapped(&self, tap: super::tap::Tap) -> RateLimits {
        RateLimits {
            up: self.up.clone(),
            down: self.down.clone(),
            tap: Some(tap),
        }
    }
}

/// Tokens at a rate, up to a second's worth.
#[derive(Debug)]
struct Tokens {
    rate: f64,
    have: f64,
    at: Instant,
}

impl Tokens {
    fn new(rate: u64) -> Tokens {
        Tokens {
            rate: rate as f64,
            have: chunk(rate) as f64,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.have = (self.have + self.rate * dt).min(self.rate);
        self.at = now;
    }

    /// How long until `need` tokens are there.
    fn wait_for(&self, need: f64) -> Duration {
        Duration::from_secs_f64(((need - self.have) / self.rate).max(0.0))
    }

    fn give(&mut self, n: usize) {
        self.have = (self.have + n as f64).min(self.rate);
    }
}

/// A twentieth of a second's bytes, within [`MIN_CHUNK`]..=[`MAX_CHUNK`].
fn chunk(rate: u64) -> usize {
    ((rate / 20) as usize).clamp(MIN_CHUNK, MAX_CHUNK)
}

/// Sleeps `d`, at least a millisecond (the timer's grain).
async fn pause(d: Duration) {
    tokio::time::sleep(d.max(Duration::from_millis(1))).await;
}

/// A bucket shared by a listener's connections.
#[derive(Debug)]
pub struct Bucket {
    rate: u64,
    tokens: Mutex<Tokens>,
    /// Turns at the bucket, first come first served.
    turn: tokio::sync::Mutex<()>,
}

impl Bucket {
    /// A bucket of `rate` bytes per second.
    pub fn new(rate: u64) -> Bucket {
        Bucket {
            rate,
            tokens: Mutex::new(Tokens::new(rate)),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Its rate.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Waits for this caller's turn, then for `n` tokens, and takes them.
    async fn turn_for(&self, n: usize) {
        let _turn = self.turn.lock().await;
        let need = n as f64;
        loop {
            let wait = {
                let mut t = self.lock();
                t.refill(Instant::now());
                if t.have >= need {
                    t.have -= need;
                    return;
                }
                t.wait_for(need)
            };
            pause(wait).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One direction's gate: its own tokens and the shared bucket's.
pub struct Gate<'a> {
    own: Option<Tokens>,
    shared: Option<&'a Bucket>,
    /// What is left of the chunk this direction took in its last turn at
    /// the shared bucket, spent before it queues again.
    credit: usize,
    /// The most one allowance is.
    chunk: usize,
}

impl<'a> Gate<'a> {
    /// The gate of `limit`.
    pub fn new(limit: &'a Limit) -> Gate<'a> {
        let rates = limit
            .per_connection
            .into_iter()
            .chain(limit.shared.as_ref().map(|b| b.rate));
        Gate {
            own: limit.per_connection.map(Tokens::new),
            shared: limit.shared.as_deref(),
            credit: 0,
            chunk: rates.map(chunk).min().unwrap_or(MAX_CHUNK),
        }
    }

    /// Waits for an allowance of at most `want` bytes and takes it: first
    /// from the connection's own bucket, then from its credit at the
    /// listener's, which, spent, it renews with a chunk in its turn.
    pub async fn take(&mut self, want: usize) -> usize {
        let mut want = want.min(self.chunk).max(1);
        if let Some(shared) = self.shared {
            if self.credit == 0 {
                shared.turn_for(self.chunk).await;
                self.credit = self.chunk;
            }
            want = want.min(self.credit);
        }
        let need = want as f64;
        if let Some(own) = &mut self.own {
            loop {
                own.refill(Instant::now());
                if own.have >= need {
                    break;
                }
                pause(own.wait_for(need)).await;
            }
        }
        if let Some(own) = &mut self.own {
            own.have -= need;
        }
        if self.shared.is_some() {
            self.credit -= want;
        }
        want
    }

    /// Gives back the part of an allowance a read did not use: to the
    /// connection's own bucket, and to its credit at the listener's.
    pub fn give_back(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(own) = &mut self.own {
            own.give(n);
        }
        if self.shared.is_some() {
            self.credit = (self.credit + n).min(self.chunk);
        }
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        match self.shared {
            Some(shared) if self.credit > 0 => shared.lock().give(self.credit),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes a gate lets through in `secs` of paused time, taking as fast
    /// as it may. With `short`, every other read uses only that many bytes
    /// of its allowance (as a splice from a socket may) and gives the rest
    /// back.
    async fn through(gate: &mut Gate<'_>, secs: u64, short: Option<usize>) -> usize {
        let end = Instant::now() + Duration::from_secs(secs);
        let (mut n, mut odd) = (0, false);
        loop {
            let got = gate.take(MAX_CHUNK).await;
            if Instant::now() > end {
                return n;
            }
            odd = !odd;
            let used = match short {
                Some(s) if odd => got.min(s),
                _ => got,
            };
            gate.give_back(got - used);
            n += used;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_gets_its_rate_within_one_percent() {
        let limit = Limit {
            per_connection: Some(1 << 20),
            shared: None,
        };
        let mut g = Gate::new(&limit);
        let n = through(&mut g, 10, None).await as f64;
        let want = 10.0 * (1 << 20) as f64;
        assert!((n / want - 1.0).abs() < 0.01, "{n} of {want}");
    }

    /// Four connections at once on a listener bucket of `rate` for 10 s,
    /// each reading as `short` says: the whole rate passes, within 1 %, a
    /// quarter each, within a point.
    async fn four_share_evenly(rate: u64, short: [Option<usize>; 4]) {
        let limit = Limit {
            per_connection: None,
            shared: Some(std::sync::Arc::new(Bucket::new(rate))),
        };
        let mut gates: Vec<Gate<'_>> = (0..4).map(|_| Gate::new(&limit)).collect();
        let [a, b, c, d] = &mut gates[..] else {
            unreachable!()
        };
        let (a, b, c, d) = tokio::join!(
            through(a, 10, short[0]),
            through(b, 10, short[1]),
            through(c, 10, short[2]),
            through(d, 10, short[3])
        );
        let counts = [a, b, c, d];
        let total: usize = counts.iter().sum();
        let want = 10.0 * rate as f64;
        assert!(
            (total as f64 / want - 1.0).abs() < 0.01,
            "{total} of {want}"
        );
        for c in &counts {
            let share = *c as f64 / total as f64;
            assert!((0.24..0.26).contains(&share), "{counts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connections_share_a_listener_bucket_fairly() {
        four_share_evenly(1 << 20, [None; 4]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn shares_are_even_by_bytes_when_some_reads_come_back_short() {
        let short = Some(29 * 1024);
        four_share_evenly(2 << 20, [None, short, short, short]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_read_does_not_use_comes_back() {
        let limit = Limit {
            per_connection: Some(20 * 1024),
            shared: None,
        };
        let mut g = Gate::new(&limit);
        let first = g.take(MAX_CHUNK).await;
        assert_eq!(first, 1024, "a chunk to start with");
        g.give_back(1000);
        assert_eq!(g.take(1000).await, 1000, "given back, taken again at once");
    }
}
