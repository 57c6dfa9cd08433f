//! TLS families: handshakes by side and result, their duration, and when
//! each certificate in use expires.
//!
//! A client-side series names its listener and leaves `pool` empty; a
//! backend-side one names its pool and leaves `listener` empty (an empty
//! label is no label to PromQL).

use prometheus::{Histogram, IntCounter, IntGauge};

use super::{Family, Metrics, Series, SeriesKind};
use crate::tls::RESULTS;

const SIDE: &[&str] = &["side", "listener", "pool"];
const OWNER: &[&str] = &["listener", "pool", "file"];

/// A TLS handshake takes from a fraction of a millisecond (loopback,
/// resumption) to the timeout.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const HANDSHAKES: Family = Family::by(
    "switchyard_tls_handshakes_total",
    "TLS handshakes, by side (client: ended on a listener; backend: started to a pool) and result: ok, no_certificate, bad_certificate, unknown_ca, protocol_version, no_shared_cipher, bad_message, timeout, eof, error.",
    "result",
);
const HANDSHAKE_SECONDS: Family = Family::new(
    "switchyard_tls_handshake_seconds",
    "How long TLS handshakes that completed took.",
    SeriesKind::Histogram(HANDSHAKE_BUCKETS),
);
const NOT_AFTER: Family = Family::new(
    "switchyard_tls_certificate_not_after_timestamp_seconds",
    "When each certificate in use (a listener's to clients, a pool's to backends) expires, Unix time.",
    SeriesKind::Gauge,
);

/// The handshake series of one listener's client side or one pool's
/// backend side.
#[derive(Debug)]
pub struct TlsHandshakes {
    by_result: Vec<IntCounter>,
    /// Completed handshakes' duration.
    pub seconds: Histogram,
    series: Series,
}

impl TlsHandshakes {
    /// Counts one handshake under `result` (one of [`RESULTS`]; anything
    /// else counts as `error`).
    pub fn count(&self, result: &str) {
        let i = RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(RESULTS.len() - 1);
        self.by_result[i].inc();
    }

    /// Removes the series (their owner left the configuration).
    pub fn forget(&self) {
        self.series.forget();
    }
}

/// The expiry series of the certificates one owner uses.
#[derive(Debug)]
pub struct CertExpiry {
    series: Series,
}

impl CertExpiry {
    /// Removes the series (the files changed, or their owner left).
    pub fn forget(&self) {
        self.series.forget();
    }
}

impl Metrics {
    /// The client side's handshakes of listener `name`.
    pub fn tls_clients(&self, listener: &str) -> TlsHandshakes {
        self.tls_handshakes(&["client", listener, ""])
    }

    /// The backend side's handshakes of pool `name`.
    pub fn tls_backends(&self, pool: &str) -> TlsHandshakes {
        self.tls_handshakes(&["backend", "", pool])
    }

    fn tls_handshakes(&self, labels: &[&str]) -> TlsHandshakes {
        let mut o = self.owner(SIDE, labels);
        let by_result = RESULTS
            .iter()
            .map(|r| o.counter(&HANDSHAKES, Some(r)))
            .collect();
        let seconds = o.histogram(&HANDSHAKE_SECONDS);
        TlsHandshakes {
            by_result,
            seconds,
            series: o.finish(),
        }
    }

    /// Sets when the certificate in `file` that a listener (or, with
    /// `listener` empty, a pool) uses expires.
    pub fn cert_expiry(
        &self,
        (listener, pool): (&str, &str),
        file: &str,
        not_after: i64,
    ) -> CertExpiry {
        let mut o = self.owner(OWNER, &[listener, pool, file]);
        let g: IntGauge = o.gauge(&NOT_AFTER);
        g.set(not_after);
        CertExpiry { series: o.finish() }
    }
}
