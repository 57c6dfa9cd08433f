//! Backends from an etcd prefix: read it, then watch it from the revision
//! read; each key is one backend (`entry`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde_json::Value;

use super::etcd::Etcd;
use super::{Context, Entries};
use crate::config::{DiscoveryConfig, MAX_WEIGHT};
use crate::pool::Found;

/// Reconnecting to etcd: from this, doubling to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// An etcd entry as a backend: `{"addr": "ip:port", "weight": N,
/// "draining": bool}` (weight and draining optional), or `"ip:port"`.
pub(super) fn entry(value: &[u8]) -> Result<(Found, Value), String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| "not UTF-8".to_string())?
        .trim();
    let v: Value = serde_json::from_str(text).unwrap_or_else(|_| Value::from(text));
    let (addr, weight, draining, name) = match &v {
        Value::String(s) => (s.as_str(), 1, false, None),
        Value::Object(o) => (
            o.get("addr").and_then(Value::as_str).ok_or("no \"addr\"")?,
            o.get("weight")
                .map_or(Some(1), Value::as_u64)
                .ok_or("\"weight\" is not a number")?,
            o.get("draining")
                .map_or(Some(false), Value::as_bool)
                .ok_or("\"draining\" is not true or false")?,
            match o.get("name").and_then(Value::as_str) {
                Some(n) if n.trim().is_empty() => None,
                Some(n) => match crate::config::unfit_name(n) {
                    Some(why) => return Err(format!("its \"name\" {n:?}: {why}")),
                    None => Some(n.to_string()),
                },
                None => None,
            },
        ),
        _ => return Err("neither an address nor an object".into()),
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not ip:port"))?;
    let weight = u32::try_from(weight)
        .ok()
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .and_then(NonZeroU32::new)
        .ok_or(format!("weight must be from 1 to {MAX_WEIGHT}"))?;
    Ok((
        Found {
            addr,
            name,
            weight,
            draining: Some(draining),
        },
        v,
    ))
}

pub(super) async fn follow(cx: &mut Context, d: &DiscoveryConfig, etcd: Etcd, prefix: &str) {
    cx.shared.lock().unwrap_or_else(|e| e.into_inner()).store = super::Store::Etcd(etcd.clone());
    let mut retry = RETRY_MIN;
    // Keys whose value was refused, so each is logged once.
    let mut refused: HashMap<String, String> = HashMap::new();
    loop {
        let failure = match etcd.range(prefix).await {
            Err(e) => e.to_string(),
            Ok((revision, kvs)) => {
                let mut keys: BTreeMap<String, Vec<u8>> = kvs
                    .into_iter()
                    .filter_map(|kv| Some((kv.key, kv.value?)))
                    .collect();
                cx.report_entries(d, &keys, &mut refused);
                retry = RETRY_MIN;
                // From the revision read: no change between read and watch is lost.
                let mut seen = revision;
                // A watch quiet for `refresh` is checked: the store is asked,
                // on a connection of its own, what the watch should have
                // seen by now. A difference may be a change still on its
                // way: asked again a second later, it is a stale watch.
                let mut suspect = false;
                match etcd.watch(prefix, revision + 1).await {
                    Err(e) => e.to_string(),
                    Ok(mut watch) => loop {
                        let quiet = if suspect {
                            Duration::from_secs(1)
                        } else {
                            d.refresh
                        };
                        let next = match tokio::time::timeout(quiet, watch.next()).await {
                            Ok(next) => next,
                            Err(_) => match probe(&etcd, prefix, &keys, seen).await {
                                Ok(None) => {
                                    suspect = false;
                                    cx.contact();
                                    continue;
                                }
                                Ok(Some(_)) if !suspect => {
                                    suspect = true;
                                    cx.contact();
                                    continue;
                                }
                                Ok(Some(why)) => {
                                    cx.metrics.stale.inc();
                                    tracing::warn!(pool = %cx.pool.name, reason = %why, "the etcd watch missed changes; reading again");
                                    break String::new();
                                }
                                Err(e) => {
                                    break format!(
                                        "the watch went quiet and etcd did not answer: {e}"
                                    )
                                }
                            },
                        };
                        match next {
                            Err(e) => break e.to_string(),
                            Ok(c) if c.compacted.is_some() => {
                                break "the watched revision was compacted; reading again".into()
                            }
                            Ok(c) => {
                                seen = seen.max(c.revision);
                                cx.contact();
                                for kv in c.events {
                                    match kv.value {
                                        Some(v) => keys.insert(kv.key, v),
                                        None => keys.remove(&kv.key),
                                    };
                                }
                                cx.report_entries(d, &keys, &mut refused);
                            }
                        }
                    },
                }
            }
        };
        if failure.is_empty() {
            // A stale watch: read again at once.
            continue;
        }
        cx.report(d, Err(failure));
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Why a quiet watch looks as if it missed something, if it does: the
/// store holds another number of keys, or a later change, than the watch
/// delivered.
async fn probe(
    etcd: &Etcd,
    prefix: &str,
    keys: &BTreeMap<String, Vec<u8>>,
    seen: i64,
) -> Result<Option<String>, super::etcd::Error> {
    let (count, latest) = etcd.latest(prefix).await?;
    if count == keys.len() && latest <= seen {
        return Ok(None);
    }
    Ok(Some(format!(
        "the store holds {count} keys changed last at revision {latest}; the watch delivered {} keys up to revision {seen}",
        keys.len()
    )))
}

impl Context {
    /// Turns etcd's keys into backends and reports them.
    fn report_entries(
        &mut self,
        d: &DiscoveryConfig,
        keys: &BTreeMap<String, Vec<u8>>,
        refused: &mut HashMap<String, String>,
    ) {
        let mut found = Vec::new();
        let mut entries = Entries::new();
        for (key, value) in keys {
            match entry(value) {
                Ok((f, v)) => {
                    refused.remove(key);
                    entries.insert(f.addr, (key.clone(), v));
                    found.push(f);
                }
                Err(why) => {
                    if refused.get(key) != Some(&why) {
                        tracing::warn!(pool = %self.pool.name, key = ?key, error = ?why, "an etcd entry names no backend; it is left out");
                        refused.insert(key.clone(), why);
                    }
                }
            }
        }
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries = entries;
        self.report(d, Ok(found));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_entries() {
        let (f, _) = entry(br#"{"addr": "10.0.0.7:8080", "weight": 2, "draining": true}"#).unwrap();
        assert_eq!(
            (f.addr.port(), f.weight.get(), f.draining),
            (8080, 2, Some(true))
        );
        let (f, _) = entry(b"10.0.0.7:8080").unwrap();
        assert_eq!((f.weight.get(), f.draining), (1, Some(false)));
        let (f, _) = entry(br#""[::1]:53""#).unwrap();
        assert!(f.addr.is_ipv6());
        for bad in [
            &br#"{"addr": "x"}"#[..],
            br#"{"weight": 2}"#,
            br#"{"addr": "1.2.3.4:5", "weight": 0}"#,
            b"[1,2]",
            // A name that would forge a log line or rewrite a terminal.
            br#"{"addr": "1.2.3.4:5", "name": "a\nERROR fake"}"#,
            br#"{"addr": "1.2.3.4:5", "name": "\u001b[2J"}"#,
        ] {
            assert!(entry(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
