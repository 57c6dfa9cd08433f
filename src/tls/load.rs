//! Reading certificates, keys and CA bundles from PEM files, with an error
//! that says which file and what is wrong with it, and what a certificate
//! says of itself (its expiry, subject and serial) for `check`, metrics and
//! logs.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// What a certificate says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The serial number, hex with colons.
    pub serial: String,
}

impl CertInfo {
    /// Reads `der`; `None` when it is no X.509 certificate.
    pub fn of(der: &[u8]) -> Option<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let validity = cert.validity();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Some(CertInfo {
            not_after: validity.not_after.timestamp(),
            not_before: validity.not_before.timestamp(),
            common_name,
            serial: cert.raw_serial_as_string(),
        })
    }
}

/// A certificate chain and its key as read, with a digest of both that
/// tells a reload whether anything changed.
pub struct Loaded {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's own facts.
    pub leaf: CertInfo,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("certs", &self.certs.len())
            .field("leaf", &self.leaf)
            .finish_non_exhaustive()
    }
}

fn pem_error(e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read it: {e}"),
        pem::Error::NoItemsFound => "holds no PEM section of the kind needed".to_string(),
        other => format!("is no valid PEM: {other}"),
    }
}

/// The certificates of the PEM file at `path`, at least one.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    // Read first, so that an unreadable file says so rather than "empty".
    let text = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err("holds no certificate (no `BEGIN CERTIFICATE` section)".to_string());
    }
    for (i, c) in certs.iter().enumerate() {
        if CertInfo::of(c).is_none() {
            return Err(format!(
                "certificate {} is no valid X.509 certificate",
                i + 1
            ));
        }
    }
    Ok(certs)
}

/// The private key (PKCS#8, SEC1 or PKCS#1) of the PEM file at `path`.
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            "holds no private key (PKCS#8, SEC1 or PKCS#1 PEM section)".to_string()
        }
        other => pem_error(other),
    })
}

/// The trust anchors of the PEM file at `path`.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    if path == Path::new(super::SYSTEM_CA) {
        return system_roots();
    }
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certs(path)?.into_iter().enumerate() {
        store
            .add(c)
            .map_err(|e| format!("certificate {} is no usable CA: {e}", i + 1))?;
    }
    Ok(store)
}

/// The system's trusted roots, where OpenSSL finds them: `SSL_CERT_FILE`
/// and `SSL_CERT_DIR` when set, else the distribution's bundle
/// (`/etc/ssl/certs/ca-certificates.crt` on Debian). Certificates that do
/// not parse are left out; none at all is an error.
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = rustls::RootCertStore::empty();
    let (added, _skipped) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "no system roots found (SSL_CERT_FILE, SSL_CERT_DIR, or the distribution's bundle, as /etc/ssl/certs/ca-certificates.crt){}",
            if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
        ));
    }
    Ok(store)
}

/// Reads a chain and its key and checks that they belong together.
pub fn pair(cert: &Path, key_path: &Path) -> Result<Loaded, (bool, String)> {
    let certs = certs(cert).map_err(|e| (true, e))?;
    let key = key(key_path).map_err(|e| (false, e))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| (false, format!("is no key rustls can sign with: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err((
                false,
                format!("does not match the certificate in {}", cert.display()),
            ))
        }
        // The key's public half cannot be derived (a key type that does not
        // say): rustls will find out at the handshake.
        Err(_) => {}
    }
    let leaf = CertInfo::of(&certs[0]).expect("checked when read");
    Ok(Loaded { certs, leaf, key })
}

/// A digest of files' bytes: equal digests, nothing changed.
pub fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}
