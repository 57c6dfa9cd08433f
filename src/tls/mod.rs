//! TLS at layer 4, on rustls with the `ring` provider: a listener (or one
//! of its routes) that terminates TLS and hands the backend plaintext
//! (`terminate.rs`), and a pool that starts TLS to its backends
//! (`originate.rs`).
//!
//! Certificates and keys are read when the configuration is read, so
//! `switchyard check` and a reload see a bad file before anything runs;
//! what they build is immutable and shared by every connection, and a
//! reload that reads new files builds anew (established connections keep
//! the old one until they end).

mod load;
mod originate;
mod rewound;
mod terminate;

use std::sync::Arc;

pub use load::{CertInfo, Loaded};
pub use originate::{Originator, OriginatorSettings};
pub use rewound::Rewound;
pub use terminate::{Accepted, Session, Terminator, TerminatorSettings};

/// `ca = "@system-ca"` (HAProxy's spelling): verify against the system's
/// trusted roots instead of a bundle of one's own.
pub const SYSTEM_CA: &str = "@system-ca";

/// The crypto provider every TLS configuration is built with.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `min_version`: the oldest protocol a side accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    /// `"1.2"` (default): TLS 1.2 and 1.3.
    Tls12,
    /// `"1.3"`: TLS 1.3 only.
    Tls13,
}

impl MinVersion {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            MinVersion::Tls12 => &BOTH,
            MinVersion::Tls13 => &ONLY_13,
        }
    }
}

/// Every result a handshake is counted under, in the order metrics list them.
pub const RESULTS: [&str; 10] = [
    "ok",
    "no_certificate",
    "bad_certificate",
    "unknown_ca",
    "protocol_version",
    "no_shared_cipher",
    "bad_message",
    "timeout",
    "eof",
    "error",
];

/// The result label of a failed handshake: what went wrong, from rustls's
/// error, the alert the peer sent, or the socket.
pub fn classify(e: &std::io::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E, PeerIncompatible as P};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => "eof",
            std::io::ErrorKind::InvalidData => "bad_message",
            _ => "error",
        };
    };
    match tls {
        E::NoCertificatesPresented => "no_certificate",
        E::InvalidCertificate(C::UnknownIssuer) => "unknown_ca",
        E::InvalidCertificate(_) => "bad_certificate",
        E::AlertReceived(A::UnknownCA) => "unknown_ca",
        E::AlertReceived(A::CertificateRequired) => "no_certificate",
        E::AlertReceived(
            A::BadCertificate
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateRevoked,
        ) => "bad_certificate",
        E::AlertReceived(A::ProtocolVersion) => "protocol_version",
        E::AlertReceived(A::HandshakeFailure | A::InsufficientSecurity) => "no_shared_cipher",
        E::PeerIncompatible(
            P::NoCipherSuitesInCommon
            | P::NoKxGroupsInCommon
            | P::NoSignatureSchemesInCommon
            | P::NoCertificateRequestSignatureSchemesInCommon
            | P::NoEcPointFormatsInCommon,
        ) => "no_shared_cipher",
        // Versions, and the extensions a version requires.
        E::PeerIncompatible(_) => "protocol_version",
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::PeerMisbehaved(_) => "bad_message",
        _ => "error",
    }
}

/// The version a session runs, as the access log and PROXY TLVs write it.
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "",
    }
}
