//! Ending TLS on a listener: the server side of a handshake with the
//! certificate a listener (or the route a client's server name chose) has,
//! optionally requiring a client certificate (`client_ca`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::load::{self, CertInfo};
use super::{provider, MinVersion, Rewound};

/// What a terminating listener or route is configured with.
#[derive(Debug, Clone, Copy)]
pub struct TerminatorSettings<'a> {
    /// The certificate chain, PEM.
    pub cert: &'a Path,
    /// Its key, PEM.
    pub key: &'a Path,
    /// Client certificates must be signed by one of these (mTLS).
    pub client_ca: Option<&'a Path>,
    /// Protocols offered by ALPN.
    pub alpn: &'a [String],
    /// The oldest version accepted.
    pub min_version: MinVersion,
}

/// A built server side: shared by every connection it terminates.
pub struct Terminator {
    config: Arc<ServerConfig>,
    /// The certificate's leaf.
    pub leaf: CertInfo,
    /// Whether clients must present a certificate.
    pub client_auth: bool,
    digest: [u8; 32],
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("leaf", &self.leaf)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// Equal when built from the same bytes with the same settings: a reload
/// that reads unchanged files changes nothing.
impl PartialEq for Terminator {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for Terminator {}

/// A client whose handshake is done.
pub struct Accepted {
    /// The TLS stream, plaintext on our side.
    pub stream: TlsStream<Rewound>,
    /// What the handshake settled.
    pub session: Session,
}

/// What a client's handshake settled: for the access log and the PROXY
/// header's TLVs.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The server name the client asked for.
    pub server_name: Option<String>,
    /// With mTLS: the client certificate's subject common name.
    pub client_cn: Option<String>,
    /// The client presented a certificate.
    pub client_cert: bool,
    /// With mTLS: a verified client certificate was presented.
    pub client_verified: bool,
}

impl Terminator {
    /// Reads the files and builds the server side; on failure, which key's
    /// file (`cert`, `key`, `client_ca`) and what is wrong.
    pub fn build(s: TerminatorSettings<'_>) -> Result<Terminator, (&'static str, String)> {
        let pair = load::pair(s.cert, s.key)
            .map_err(|(cert, e)| (if cert { "cert" } else { "key" }, e))?;
        let mut parts: Vec<Vec<u8>> = pair.certs.iter().map(|c| c.to_vec()).collect();
        parts.push(pair.key.secret_der().to_vec());
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(s.min_version.versions())
            .map_err(|e| ("min_version", e.to_string()))?;
        let builder = match s.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = load::roots(ca).map_err(|e| ("client_ca", e))?;
                for r in roots.roots.iter() {
                    parts.push(r.subject.to_vec());
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| ("client_ca", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let leaf = pair.leaf.clone();
        let mut config = builder
            .with_single_cert(pair.certs, pair.key)
            .map_err(|e| ("key", format!("cannot be used with the certificate: {e}")))?;
        config.alpn_protocols = s.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        parts.extend(config.alpn_protocols.iter().cloned());
        parts.push(vec![s.min_version as u8]);
        let digest = load::digest(parts.iter().map(|p| p.as_slice()));
        Ok(Terminator {
            config: Arc::new(config),
            leaf,
            client_auth: s.client_ca.is_some(),
            digest,
        })
    }

    /// Runs the server side of a handshake on `stream` within `timeout`;
    /// on failure, the result label it is counted under.
    pub async fn accept(
        &self,
        stream: Rewound,
        timeout: Duration,
    ) -> Result<Accepted, &'static str> {
        let acceptor = TlsAcceptor::from(self.config.clone());
        let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Err(_) => return Err("timeout"),
            Ok(Err(e)) => return Err(super::classify(&e)),
            Ok(Ok(s)) => s,
        };
        let (_, conn) = stream.get_ref();
        let version = super::version_name(conn.protocol_version());
        let server_name = conn.server_name().map(str::to_string);
        let client_cn = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| CertInfo::of(c))
            .and_then(|i| i.common_name);
        let client_cert = conn.peer_certificates().is_some();
        Ok(Accepted {
            session: Session {
                version,
                server_name,
                client_cn,
                client_cert,
                client_verified: self.client_auth && client_cert,
            },
            stream,
        })
    }
}
