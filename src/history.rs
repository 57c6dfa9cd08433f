//! What happened in the last hour: one sample every `[admin]
//! history_interval` (default 5 s) of every listener and backend, the last
//! [`SAMPLES`] kept in memory, served at `/api/v1/history` and drawn by the
//! status page.
//!
//! The cost is fixed: each series is [`SAMPLES`] `f32`s (2.8 KiB); a
//! backend has six (rates of new connections, bytes in and out and connect
//! failures, its open connections and its state), 17 KiB; a listener
//! has up to six, 17 KiB. A thousand backends keep about 17 MiB.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Map, Value};

/// Samples kept: an hour at the default interval of 5 s.
pub const SAMPLES: usize = 720;

/// How a series turns readings into points.
#[derive(Clone, Copy)]
enum PointKind {
    /// The counter's increase per second since the previous reading.
    Rate,
    /// The value as read.
    Level,
}

const LISTENER_TCP: &[(&str, PointKind)] = &[
    ("new_per_s", PointKind::Rate),
    ("active", PointKind::Level),
    ("bytes_in_per_s", PointKind::Rate),
    ("bytes_out_per_s", PointKind::Rate),
];
const LISTENER_UDP: &[(&str, PointKind)] = &[
    ("new_per_s", PointKind::Rate),
    ("active", PointKind::Level),
    ("bytes_in_per_s", PointKind::Rate),
    ("bytes_out_per_s", PointKind::Rate),
    ("datagrams_per_s", PointKind::Rate),
    ("dropped_per_s", PointKind::Rate),
];
const BACKEND: &[(&str, PointKind)] = &[
    ("new_per_s", PointKind::Rate),
    ("active", PointKind::Level),
    ("bytes_in_per_s", PointKind::Rate),
    ("bytes_out_per_s", PointKind::Rate),
    ("failures_per_s", PointKind::Rate),
    ("state", PointKind::Level),
];

/// A backend's state as a point of its `state` series.
pub mod state {
    /// Down (active or passive health).
    pub const DOWN: u64 = 0;
    /// Up.
    pub const UP: u64 = 1;
    /// Drained.
    pub const DRAINING: u64 = 2;

    /// The point of state `s`: the history's one mapping of it.
    pub fn point(s: crate::backend::BackendState) -> u64 {
        use crate::backend::BackendState;
        match s {
            BackendState::Draining => DRAINING,
            BackendState::Up => UP,
            BackendState::Down => DOWN,
        }
    }
}

/// One listener's counters and gauges, as read.
pub struct ListenerReading {
    /// Its name.
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// In the order of the protocol's series: new connections (sessions),
    /// open ones, bytes in, bytes out; for UDP, datagrams in and dropped.
    pub values: Vec<u64>,
}

/// One backend's counters and gauges, as read.
pub struct BackendReading {
    /// Its pool.
    pub pool: String,
    /// Its address.
    pub addr: String,
    /// Its name.
    pub name: String,
    /// New connections, open ones, bytes in, bytes out, connect failures,
    /// state (see [`state`]).
    pub values: [u64; 6],
}

/// One sample of everything.
pub struct Reading {
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// Every listener.
    pub listeners: Vec<ListenerReading>,
    /// Every backend of every pool.
    pub backends: Vec<BackendReading>,
}

/// The points of one owner's series, aligned with [`History`]'s times.
struct Track {
    kinds: &'static [(&'static str, PointKind)],
    last: Vec<u64>,
    points: Vec<VecDeque<f32>>,
}

impl Track {
    /// A track that joins after `before` samples (padded with gaps).
    fn new(kinds: &'static [(&'static str, PointKind)], before: usize) -> Track {
        let gap: VecDeque<f32> = std::iter::repeat_n(f32::NAN, before).collect();
        Track {
            kinds,
            last: Vec::new(),
            points: kinds.iter().map(|_| gap.clone()).collect(),
        }
    }

    fn record(&mut self, values: &[u64], dt_s: f64) {
        for (i, (_, kind)) in self.kinds.iter().enumerate() {
            let now = values.get(i).copied().unwrap_or(0);
            let point = match kind {
                PointKind::Level => now as f32,
                PointKind::Rate => match self.last.get(i) {
                    Some(&before) if dt_s > 0.0 => {
                        (now.saturating_sub(before) as f64 / dt_s) as f32
                    }
                    _ => f32::NAN,
                },
            };
            let series = &mut self.points[i];
            if series.len() == SAMPLES {
                series.pop_front();
            }
            series.push_back(point);
        }
        self.last = values.to_vec();
    }

    /// The series as JSON arrays of at most `points` values (averaged in
    /// bins; state series take a bin's lowest state, so a down moment shows).
    fn json(&self, skip: usize, points: usize) -> Map<String, Value> {
        self.kinds
            .iter()
            .zip(&self.points)
            .map(|((name, _), series)| {
                let values: Vec<f32> = series.iter().skip(skip).copied().collect();
                let worst = *name == "state";
                (name.to_string(), Value::from(bins(&values, points, worst)))
            })
            .collect()
    }
}

/// `values` in at most `points` bins, each the mean (or, with `worst`, the
/// minimum) of its values; gaps (NaN) are null.
fn bins(values: &[f32], points: usize, worst: bool) -> Vec<Value> {
    let size = values.len().div_ceil(points.max(1)).max(1);
    values
        .chunks(size)
        .map(|chunk| {
            let known: Vec<f32> = chunk.iter().copied().filter(|v| !v.is_nan()).collect();
            if known.is_empty() {
                return Value::Null;
            }
            let v = if worst {
                known.iter().copied().fold(f32::INFINITY, f32::min)
            } else {
                known.iter().sum::<f32>() / known.len() as f32
            };
            // Three decimals are all a chart or a reader needs.
            json!((v as f64 * 1000.0).round() / 1000.0)
        })
        .collect()
}

/// The last hour of samples.
#[derive(Default)]
pub struct History {
    /// Sample times, Unix milliseconds.
    times: VecDeque<u64>,
    listeners: BTreeMap<String, Track>,
    backends: BTreeMap<(String, String), (String, Track)>,
}

/// What of the history to serve.
#[derive(Debug, Default)]
pub struct Query {
    /// Only samples after this time (Unix milliseconds).
    pub since_ms: Option<u64>,
    /// At most this many points per series (default all).
    pub points: Option<usize>,
    /// Only this pool's backends.
    pub pool: Option<String>,
    /// Only these backends (by address), as a page shows some at a time.
    pub backends: Option<Vec<String>>,
}

impl History {
    /// Adds a sample; owners no longer read are dropped with their points.
    pub fn record(&mut self, r: Reading) {
        let dt_s = self
            .times
            .back()
            .map_or(0.0, |&t| r.at_ms.saturating_sub(t) as f64 / 1000.0);
        let before = self.times.len().min(SAMPLES - 1);
        if self.times.len() == SAMPLES {
            self.times.pop_front();
        }
        self.times.push_back(r.at_ms);
        let mut listeners = BTreeMap::new();
        for l in r.listeners {
            let kinds = if l.protocol == "udp" {
                LISTENER_UDP
            } else {
                LISTENER_TCP
            };
            let mut t = self
                .listeners
                .remove(&l.name)
                .unwrap_or_else(|| Track::new(kinds, before));
            t.record(&l.values, dt_s);
            listeners.insert(l.name, t);
        }
        self.listeners = listeners;
        let mut backends = BTreeMap::new();
        for b in r.backends {
            let key = (b.pool, b.addr);
            let (_, mut t) = self
                .backends
                .remove(&key)
                .unwrap_or_else(|| (String::new(), Track::new(BACKEND, before)));
            t.record(&b.values, dt_s);
            backends.insert(key, (b.name, t));
        }
        self.backends = backends;
    }

    /// The history as JSON: `times` (Unix milliseconds), then every
    /// listener's and every pool's backends' series, aligned with `times`.
    pub fn json(&self, q: &Query) -> Value {
        let skip = q.since_ms.map_or(0, |since| {
            self.times.iter().take_while(|&&t| t <= since).count()
        });
        let points = q.points.unwrap_or(SAMPLES).max(1);
        let times: Vec<u64> = self.times.iter().skip(skip).copied().collect();
        let size = times.len().div_ceil(points).max(1);
        // A bin is stamped with its last sample's time.
        let stamps: Vec<u64> = times
            .chunks(size)
            .filter_map(|c| c.last().copied())
            .collect();
        let listeners: Map<String, Value> = self
            .listeners
            .iter()
            .map(|(name, t)| (name.clone(), Value::Object(t.json(skip, points))))
            .collect();
        let mut pools: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        for ((pool, addr), (name, t)) in &self.backends {
            if q.pool.as_deref().is_some_and(|p| p != pool)
                || q.backends.as_ref().is_some_and(|b| !b.contains(addr))
            {
                continue;
            }
            let mut series = t.json(skip, points);
            series.insert("name".into(), Value::from(name.clone()));
            pools
                .entry(pool)
                .or_default()
                .insert(addr.clone(), Value::Object(series));
        }
        json!({
            "samples": SAMPLES,
            "times": stamps,
            "listeners": listeners,
            "pools": pools,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ms: u64, conns: u64, backends: &[(&str, u64)]) -> Reading {
        Reading {
            at_ms,
            listeners: vec![ListenerReading {
                name: "front".into(),
                protocol: "tcp",
                values: vec![conns, 2, conns * 10, conns * 20],
            }],
            backends: backends
                .iter()
                .map(|(addr, c)| BackendReading {
                    pool: "p".into(),
                    addr: addr.to_string(),
                    name: addr.to_string(),
                    values: [*c, 1, 0, 0, 0, state::UP],
                })
                .collect(),
        }
    }

    #[test]
    fn rates_levels_gaps_and_bounds() {
        let mut h = History::default();
        h.record(reading(1_000, 0, &[("a", 0)]));
        h.record(reading(6_000, 50, &[("a", 25), ("b", 5)]));
        let v = h.json(&Query::default());
        assert_eq!(v["times"], json!([1000, 6000]));
        let front = &v["listeners"]["front"];
        assert_eq!(front["new_per_s"], json!([null, 10.0]));
        assert_eq!(front["active"], json!([2.0, 2.0]));
        assert_eq!(v["pools"]["p"]["a"]["new_per_s"], json!([null, 5.0]));
        // A backend that joins later has a gap where it was not yet.
        assert_eq!(v["pools"]["p"]["b"]["active"], json!([null, 1.0]));
        for i in 0..2 * SAMPLES as u64 {
            h.record(reading(11_000 + i * 5_000, 100 + i, &[("a", 0)]));
        }
        let v = h.json(&Query::default());
        assert_eq!(v["times"].as_array().unwrap().len(), SAMPLES);
        assert!(
            v["pools"]["p"].get("b").is_none(),
            "a backend gone is dropped"
        );
        let since = v["times"][SAMPLES - 3].as_u64().unwrap();
        let recent = h.json(&Query {
            since_ms: Some(since),
            ..Query::default()
        });
        assert_eq!(recent["times"].as_array().unwrap().len(), 2);
        let small = h.json(&Query {
            points: Some(100),
            ..Query::default()
        });
        let n = small["listeners"]["front"]["active"]
            .as_array()
            .unwrap()
            .len();
        assert!((50..=100).contains(&n), "{n} points");
        assert_eq!(small["times"].as_array().unwrap().len(), n);
    }

    #[test]
    fn a_down_moment_survives_binning() {
        assert_eq!(
            bins(&[1.0, 0.0, 1.0, 1.0], 2, true),
            vec![json!(0.0), json!(1.0)]
        );
        assert_eq!(bins(&[f32::NAN, 2.0, 4.0], 1, false), vec![json!(3.0)]);
    }
}
