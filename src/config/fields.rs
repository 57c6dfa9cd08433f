//! Validation of single values: addresses, durations, counts, byte strings
//! and networks, each problem placed at the value's position.
//!
//! It runs past 400 lines: every reader of one kind of value (addresses,
//! durations, sizes, rates, counts, names) is here, so each kind is read
//! and refused one way.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::parse_bytes;
use super::raw::S;
use super::validate::Validator;
use crate::endpoint::Endpoint;

impl Validator<'_> {
    pub(super) fn networks(&mut self, list: Option<&[S<String>]>, key: &str) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, v) in list.unwrap_or_default().iter().enumerate() {
            let text = v.get_ref().trim();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => out.push(net),
                Err(_) => self.p.push(
                    v.span(),
                    format!("{key}[{i}]"),
                    format!("`{text}` is not an address or network (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        out
    }

    pub(super) fn bytes(&mut self, v: Option<&S<String>>, key: &str) -> Option<Vec<u8>> {
        let v = v?;
        match parse_bytes(v.get_ref()) {
            Ok(b) if b.is_empty() => {
                self.p.push(v.span(), key, "must not be empty");
                None
            }
            Ok(b) => Some(b),
            Err(e) => {
                self.p.push(v.span(), key, e);
                None
            }
        }
    }

    pub(super) fn addr(&mut self, v: &S<String>, key: &str) -> Option<SocketAddr> {
        let text = v.get_ref();
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        let message = match text.rsplit_once(':') {
            None => format!("`{text}` is not an address; expected ip:port or host:port"),
            Some((host, port)) if host.is_empty() || port.parse::<u16>().is_err() => {
                format!("`{text}` is not an address; expected ip:port or host:port")
            }
            Some(_) => match text.to_socket_addrs() {
                Ok(mut addrs) => match addrs.next() {
                    Some(a) => return Some(a),
                    None => format!("`{text}` resolves to no address"),
                },
                Err(e) => format!("cannot resolve `{text}`: {e}"),
            },
        };
        self.p.push(v.span(), key, message);
        None
    }

    pub(super) fn duration(&mut self, v: Option<&S<String>>, key: &str) -> Option<Duration> {
        let v = v?;
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.p.push(
                    v.span(),
                    key,
                    format!(
                        "`{}` is not a duration ({e}); write e.g. \"250ms\" or \"30s\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A duration that must be above zero (a zero timeout or interval would
    /// end everything at once, or spin).
    pub(super) fn positive_duration(
        &mut self,
        v: Option<&S<String>>,
        key: &str,
    ) -> Option<Duration> {
        let d = self.duration(v, key)?;
        if d.is_zero() {
            self.p.push(
                v.map(|v| v.span()).unwrap_or_default(),
                key,
                "must be above zero",
            );
            return None;
        }
        Some(d)
    }

    /// A positive duration, `default` when absent, and `below` said at its
    /// place when it is shorter than `min` (the value is kept, so the file's
    /// other problems are still found).
    pub(super) fn duration_at_least(
        &mut self,
        v: Option<&S<String>>,
        key: &str,
        (default, min): (Duration, Duration),
        below: &str,
    ) -> Duration {
        let d = self.positive_duration(v, key).unwrap_or(default);
        if d < min {
            let span = v.map(|v| v.span()).unwrap_or_default();
            self.p.push(span, key, below);
        }
        d
    }

    /// `tcp_keepalive`: the silence before probes start, default 60s;
    /// `"0s"` turns keepalive off (`None`). The kernel counts it in whole
    /// seconds, so anything between 0 and 1s is refused (it would be 0,
    /// which the kernel rejects on every socket).
    pub(super) fn keepalive(&mut self, v: Option<&S<String>>, key: &str) -> Option<Duration> {
        let Some(raw) = v else {
            return Some(Duration::from_secs(60));
        };
        let d = self.duration(v, key)?;
        if !d.is_zero() && d < Duration::from_secs(1) {
            self.p.push(
                raw.span(),
                key,
                format!(
                    "`{}` is under a second; keepalive is counted in whole seconds: write \"1s\" or more, or \"0s\" to turn it off",
                    raw.get_ref()
                ),
            );
            return None;
        }
        Some(d).filter(|d| !d.is_zero())
    }

    /// `connection_rate_per_ip` and `connection_burst_per_ip`: a positive
    /// rate per second, and a burst of at least 1 (default the rate).
    pub(super) fn rate(
        &mut self,
        rate: Option<&S<f64>>,
        burst: Option<&S<f64>>,
        key: &str,
    ) -> Option<(f64, f64)> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if let Some(b) = burst {
            if rate.is_none() {
                self.p.push(
                    b.span(),
                    format!("{key}.connection_burst_per_ip"),
                    "needs connection_rate_per_ip",
                );
            } else if !(b.get_ref().is_finite() && *b.get_ref() >= 1.0) {
                self.p.push(
                    b.span(),
                    format!("{key}.connection_burst_per_ip"),
                    format!("must be at least 1, not {}", b.get_ref()),
                );
            }
        }
        let r = rate?;
        if !positive(*r.get_ref()) {
            self.p.push(
                r.span(),
                format!("{key}.connection_rate_per_ip"),
                format!(
                    "must be a number of connections per second above zero, not {}",
                    r.get_ref()
                ),
            );
            return None;
        }
        let burst = burst
            .map(|b| *b.get_ref())
            .filter(|b| b.is_finite() && *b >= 1.0)
            .unwrap_or_else(|| r.get_ref().max(1.0));
        Some((*r.get_ref(), burst))
    }

    /// A rate in bytes per second (`upload_rate` and its kin): at least
    /// 1 KiB/s, so a limited connection still moves in useful steps.
    pub(super) fn byte_rate(
        &mut self,
        v: Option<&S<super::raw::RawRate>>,
        key: &str,
    ) -> Option<u64> {
        use super::raw::RawRate;
        let v = v?;
        let parsed = match v.get_ref() {
            RawRate::Bytes(n) => u64::try_from(*n).ok(),
            RawRate::Text(t) => parse_size(t),
        };
        match parsed {
            Some(n) if n >= 1024 => Some(n),
            Some(n) => {
                self.p.push(
                    v.span(),
                    key,
                    format!("at least 1024 bytes per second (\"1KiB\"), not {n}"),
                );
                None
            }
            None => {
                self.p.push(
                    v.span(),
                    key,
                    "bytes per second: a number, or one with a unit (\"10MiB\", \"500k\", \"1MB\")",
                );
                None
            }
        }
    }

    /// `hash_key` and `table_size`, for `maglev`.
    pub(super) fn balance_options(
        &mut self,
        (hash_key, table_size): (Option<&S<String>>, Option<&S<i64>>),
        key: &str,
        strategy: crate::balance::StrategyKind,
        backends: usize,
    ) -> crate::balance::Options {
        use crate::balance::{HashKey, Options, StrategyKind};
        let mut o = Options::default();
        if let Some(k) = hash_key {
            o.hash_key = match k.get_ref().as_str() {
                "client_ip" => HashKey::ClientIp,
                "client_addr" => HashKey::ClientAddr,
                other => {
                    self.p.push(
                        k.span(),
                        format!("{key}.hash_key"),
                        format!(
                            "`{other}` is not a key; expected \"client_ip\" or \"client_addr\""
                        ),
                    );
                    HashKey::ClientIp
                }
            };
        }
        if let Some(t) = table_size {
            let n = *t.get_ref();
            let prime =
                (3..=1 << 24).contains(&n) && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
            if prime {
                o.table_size = n as u32;
            } else {
                self.p.push(
                    t.span(),
                    format!("{key}.table_size"),
                    format!(
                        "must be a prime from 3 to {}, not {n} (65537 is one)",
                        1 << 24
                    ),
                );
            }
        }
        for (set, name) in [
            (hash_key.map(|k| k.span()), "hash_key"),
            (table_size.map(|t| t.span()), "table_size"),
        ] {
            if let Some(span) = set {
                if strategy != StrategyKind::Maglev {
                    self.warn(
                        span,
                        &format!("{key}.{name}"),
                        "only strategy \"maglev\" reads it",
                    );
                }
            }
        }
        if strategy == StrategyKind::Maglev && (o.table_size as usize) < 100 * backends {
            let span = table_size.map(|t| t.span()).unwrap_or_default();
            self.warn(
                span,
                &format!("{key}.table_size"),
                &format!(
                    "{} is under 100 entries per backend ({backends}): shares will be uneven",
                    o.table_size
                ),
            );
        }
        o
    }

    /// A backend's address: one a connection can be made to.
    /// An endpoint: `unix:/path`, `unix:@name`, or an address as
    /// [`Self::addr`] reads it.
    pub(super) fn endpoint(&mut self, v: &S<String>, key: &str) -> Option<Endpoint> {
        match v.get_ref().strip_prefix("unix:") {
            Some(name) => match crate::endpoint::UnixName::new(name) {
                Ok(n) => Some(Endpoint::Unix(n)),
                Err(why) => {
                    self.p
                        .push(v.span(), key, format!("`{}`: {why}", v.get_ref()));
                    None
                }
            },
            None => self.addr(v, key).map(Endpoint::Inet),
        }
    }

    pub(super) fn backend_addr(&mut self, v: &S<String>, key: &str) -> Option<Endpoint> {
        let a = match self.endpoint(v, key)? {
            Endpoint::Inet(a) => a,
            Endpoint::Unix(n) => {
                if let Some(dir) = n.path().and_then(|p| p.parent()) {
                    // Only a warning: the socket's server may make its
                    // directory after switchyard starts.
                    if !dir.is_dir() {
                        let message = format!(
                            "the directory {} of `{}` does not exist (yet)",
                            dir.display(),
                            v.get_ref()
                        );
                        self.warn(v.span(), key, &message);
                    }
                }
                return Some(Endpoint::Unix(n));
            }
        };
        let ip = a.ip();
        let why = if ip.is_unspecified() {
            Some("an unspecified address (0.0.0.0 or ::) names no backend")
        } else if ip.is_multicast() || ip == std::net::IpAddr::from([255, 255, 255, 255]) {
            Some("a broadcast or multicast address names no single backend")
        } else if a.port() == 0 {
            Some("port 0 names no backend port")
        } else {
            None
        };
        match why {
            Some(why) => {
                self.p
                    .push(v.span(), key, format!("`{}`: {why}", v.get_ref()));
                None
            }
            None => Some(Endpoint::Inet(a)),
        }
    }

    pub(super) fn count(
        &mut self,
        v: Option<&S<i64>>,
        key: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            n
        } else {
            self.p.push(
                v.span(),
                key,
                format!("must be from {min} to {max}, not {n}"),
            );
            default
        }
    }
}

/// A byte count with an optional unit: `k`, `K`, `KiB` are 1024, `KB`
/// 1000 (and so on for M and G), `B` or none bytes, as nginx reads `1m`.
pub(super) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "KiB" | "kiB" => 1024.0,
        "KB" | "kB" => 1e3,
        "m" | "M" | "MiB" => 1024.0 * 1024.0,
        "MB" => 1e6,
        "g" | "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "GB" => 1e9,
        _ => return None,
    };
    let n = number * factor;
    (0.0..1e18).contains(&n).then_some(n as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_counts_read_as_nginx_and_iec_write_them() {
        use super::parse_size;
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("1.5 KiB"), Some(1536));
        assert_eq!(parse_size("500KB"), Some(500_000));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("10 mbit"), None);
        assert_eq!(parse_size("fast"), None);
    }
}
