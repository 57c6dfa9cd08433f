//! What a backend's agent said, in HAProxy's agent-check protocol: one
//! line of words separated by spaces, tabs or commas, a `#` starting a
//! comment. `75%` sets the backend's weight to that share of its configured
//! weight; `drain` stops new connections and `ready` lifts that (and
//! `maint`); `maint` takes the backend out; `down`, `fail` and `stopped`
//! take it down and `up` lifts that. Words it does not know (`maxconn:N`
//! among them) are left alone. The agent's say is its own: it never lifts
//! an operator's drain or a failed health check.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use crate::clock::now_ms;

/// An agent's drain, maintenance and operational words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    /// `NN%`: this share of the configured weight.
    Percent(u32),
    /// `ready`: lifts the agent's drain and maintenance.
    Ready,
    /// `drain`.
    Drain,
    /// `maint`.
    Maint,
    /// `up`: lifts the agent's down.
    Up,
    /// `down`, `fail`, `stopped`.
    Down,
}

/// The words of one agent reply it understood, in order; `None` when it
/// understood none.
pub fn parse(reply: &str) -> Option<Vec<Word>> {
    let line = reply.lines().next().unwrap_or("");
    let line = line.split('#').next().unwrap_or("");
    let words: Vec<Word> = line
        .split([' ', '\t', ','])
        .filter(|w| !w.is_empty())
        .filter_map(|w| {
            let w = w.to_ascii_lowercase();
            Some(match w.as_str() {
                "ready" => Word::Ready,
                "drain" => Word::Drain,
                "maint" => Word::Maint,
                "up" => Word::Up,
                "down" | "fail" | "failed" | "stopped" => Word::Down,
                _ => {
                    let n = w.strip_suffix('%')?;
                    Word::Percent(n.parse::<u32>().ok()?.min(MAX_PERCENT))
                }
            })
        })
        .collect();
    (!words.is_empty()).then_some(words)
}

/// A share above this is taken as this (a weight is at most 256 anyway).
const MAX_PERCENT: u32 = 25_600;

/// The agent's state of one backend; all atomics, read on every pick.
#[derive(Debug)]
pub struct AgentState {
    percent: AtomicU32,
    drain: AtomicBool,
    maint: AtomicBool,
    down: AtomicBool,
    last: Mutex<Option<(String, u64)>>,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            percent: AtomicU32::new(100),
            drain: AtomicBool::new(false),
            maint: AtomicBool::new(false),
            down: AtomicBool::new(false),
            last: Mutex::new(None),
        }
    }
}

/// An agent's state as the API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentStatus {
    /// The share of the configured weight it set, in percent.
    pub weight_percent: u32,
    /// Whether it drained the backend.
    pub drain: bool,
    /// Whether it put the backend in maintenance.
    pub maint: bool,
    /// Whether it took the backend down.
    pub down: bool,
    /// Its last reply, or why asking failed.
    pub last: String,
    /// Milliseconds since then.
    pub age_ms: u64,
}

impl AgentState {
    /// Whether the agent keeps the backend out (down or maintenance).
    pub fn out(&self) -> bool {
        self.down.load(Ordering::Relaxed) || self.maint.load(Ordering::Relaxed)
    }

    /// Whether the agent drained it (or set its weight to 0 %).
    pub fn drained(&self) -> bool {
        self.drain.load(Ordering::Relaxed) || self.percent.load(Ordering::Relaxed) == 0
    }

    /// The share of the configured weight, in percent.
    pub fn percent(&self) -> u32 {
        self.percent.load(Ordering::Relaxed)
    }

    /// Applies a reply's words; returns what changed, as text for the log,
    /// and whether the weight did.
    pub fn apply(&self, words: &[Word]) -> (Vec<String>, bool) {
        let mut changed = Vec::new();
        let mut set = |flag: &AtomicBool, on: bool, name: &str| {
            if flag.swap(on, Ordering::Relaxed) != on {
                changed.push(format!("{}{name}", if on { "" } else { "no longer " }));
            }
        };
        let mut reweighed = false;
        for w in words {
            match *w {
                Word::Percent(p) => {
                    if self.percent.swap(p, Ordering::Relaxed) != p {
                        reweighed = true;
                    }
                }
                Word::Ready => {
                    set(&self.drain, false, "drained");
                    set(&self.maint, false, "in maintenance");
                }
                Word::Drain => set(&self.drain, true, "drained"),
                Word::Maint => set(&self.maint, true, "in maintenance"),
                Word::Up => set(&self.down, false, "down"),
                Word::Down => set(&self.down, true, "down"),
            }
        }
        if reweighed {
            changed.push(format!("weight {}%", self.percent()));
        }
        (changed, reweighed)
    }

    /// Records the last reply (or why there was none).
    pub fn heard(&self, what: String) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((what, now_ms()));
    }

    /// Forgets everything the agent said (its pool no longer has one);
    /// returns whether the weight changes back.
    pub fn clear(&self) -> bool {
        self.drain.store(false, Ordering::Relaxed);
        self.maint.store(false, Ordering::Relaxed);
        self.down.store(false, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.percent.swap(100, Ordering::Relaxed) != 100
    }

    /// Its state for the API, once an agent was asked.
    pub fn status(&self) -> Option<AgentStatus> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some(AgentStatus {
            weight_percent: self.percent(),
            drain: self.drain.load(Ordering::Relaxed),
            maint: self.maint.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
            last: last.0,
            age_ms: now_ms().saturating_sub(last.1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_as_haproxy_documents() {
        assert_eq!(parse("75%\n"), Some(vec![Word::Percent(75)]));
        assert_eq!(
            parse("up, 50%  drain # busy\r\n"),
            Some(vec![Word::Up, Word::Percent(50), Word::Drain])
        );
        assert_eq!(parse("MAINT\tready"), Some(vec![Word::Maint, Word::Ready]));
        assert_eq!(parse("stopped"), Some(vec![Word::Down]));
        assert_eq!(parse("maxconn:30"), None);
        assert_eq!(parse("# only a comment"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("x%"), None);
        assert_eq!(parse("999999%"), Some(vec![Word::Percent(MAX_PERCENT)]));
    }

    #[test]
    fn ready_lifts_the_agents_drain_and_maintenance_only() {
        let a = AgentState::default();
        let (said, w) = a.apply(&[Word::Drain, Word::Percent(50)]);
        assert!(a.drained() && w, "{said:?}");
        assert_eq!(said, ["drained", "weight 50%"]);
        a.apply(&[Word::Maint, Word::Down]);
        assert!(a.out());
        a.apply(&[Word::Ready]);
        assert!(!a.drained() && a.out(), "still down: ready is not up");
        a.apply(&[Word::Up]);
        assert!(!a.out());
        a.apply(&[Word::Percent(0)]);
        assert!(a.drained(), "0 % takes no new connections");
        assert!(a.clear());
        assert!(!a.drained() && a.percent() == 100);
    }
}
