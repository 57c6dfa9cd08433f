//! Starting TLS to a pool's backends: the client side of a handshake,
//! verifying the backend against the pool's CA (or not, with
//! `verify = false`), optionally with a client certificate of our own.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::load::{self, CertInfo};
use super::{provider, MinVersion};
use crate::endpoint::Endpoint;

/// What a pool's `[pools.NAME.tls]` says.
#[derive(Debug, Clone, Copy)]
pub struct OriginatorSettings<'a> {
    /// Backends are verified against these roots.
    pub ca: Option<&'a Path>,
    /// The name sent and verified, instead of each backend's own.
    pub server_name: Option<&'a str>,
    /// Our client certificate and key (mTLS to the backend).
    pub cert: Option<(&'a Path, &'a Path)>,
    /// Verify the backend's certificate (false: accept any, encrypt only).
    pub verify: bool,
    /// Protocols offered by ALPN.
    pub alpn: &'a [String],
    /// The oldest version spoken.
    pub min_version: MinVersion,
}

/// A built client side: shared by every connection of a pool.
pub struct Originator {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// Our client certificate's leaf, when we present one.
    pub leaf: Option<CertInfo>,
    digest: [u8; 32],
}

impl std::fmt::Debug for Originator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Originator")
            .field("server_name", &self.server_name)
            .field("leaf", &self.leaf)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Originator {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for Originator {}

/// `verify = false`: any certificate is taken; signatures are still checked,
/// so the session is with whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Originator {
    /// Reads the files and builds the client side; on failure, which key's
    /// file (`ca`, `cert`, `key`, `server_name`) and what is wrong.
    pub fn build(s: OriginatorSettings<'_>) -> Result<Originator, (&'static str, String)> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(s.min_version.versions())
            .map_err(|e| ("min_version", e.to_string()))?;
        let builder = if s.verify {
            let ca = s.ca.ok_or((
                "ca",
                "is required to verify backends (or set verify = false)".to_string(),
            ))?;
            let roots = load::roots(ca).map_err(|e| ("ca", e))?;
            for r in roots.roots.iter() {
                parts.push(r.subject.to_vec());
                parts.push(r.subject_public_key_info.to_vec());
            }
            builder.with_root_certificates(roots)
        } else {
            parts.push(b"no verification".to_vec());
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        };
        let (mut config, leaf) = match s.cert {
            None => (builder.with_no_client_auth(), None),
            Some((cert, key)) => {
                let pair = load::pair(cert, key)
                    .map_err(|(cert, e)| (if cert { "cert" } else { "key" }, e))?;
                parts.extend(pair.certs.iter().map(|c| c.to_vec()));
                parts.push(pair.key.secret_der().to_vec());
                let leaf = pair.leaf.clone();
                let config = builder
                    .with_client_auth_cert(pair.certs, pair.key)
                    .map_err(|e| ("key", format!("cannot be used with the certificate: {e}")))?;
                (config, Some(leaf))
            }
        };
        config.alpn_protocols = s.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        parts.extend(config.alpn_protocols.iter().cloned());
        let server_name = match s.server_name {
            None => None,
            Some(n) => Some(ServerName::try_from(n.to_string()).map_err(|_| {
                (
                    "server_name",
                    format!("`{n}` is neither a DNS name nor an IP address"),
                )
            })?),
        };
        parts.push(s.server_name.unwrap_or("").as_bytes().to_vec());
        parts.push(vec![s.min_version as u8, s.verify as u8]);
        Ok(Originator {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            leaf,
            digest: load::digest(parts.iter().map(|p| p.as_slice())),
        })
    }

    /// The name sent to and verified of the backend `name` at `addr`: the
    /// pool's `server_name`, else the backend's name when it is a DNS name
    /// (without a port), else its IP address.
    pub fn name_for(&self, name: &str, addr: Endpoint) -> ServerName<'static> {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        let host = match name.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
            _ => name,
        };
        match (ServerName::try_from(host.to_string()), addr) {
            (Ok(n @ ServerName::DnsName(_)), _) => n,
            (_, Endpoint::Inet(a)) => ServerName::IpAddress(a.ip().into()),
            // A Unix socket is this host's.
            (_, Endpoint::Unix(_)) => ServerName::try_from("localhost").expect("a DNS name"),
        }
    }

    /// Runs the client side of a handshake with backend `name` at `addr`
    /// over `stream`.
    pub async fn connect(
        &self,
        stream: TcpStream,
        name: &str,
        addr: Endpoint,
    ) -> io::Result<TlsStream<TcpStream>> {
        self.connector
            .connect(self.name_for(name, addr), stream)
            .await
    }
}
