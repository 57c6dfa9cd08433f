//! Certificates made with the real `openssl` for TLS tests: a CA, leaves it
//! signs (with a subjectAltName, as verifiers need), and a rustls client
//! that trusts a CA and may present a certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// `cert` and `key` as a TOML inline table's body.
    pub fn toml(&self) -> String {
        format!(
            "cert = \"{}\", key = \"{}\"",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// A P-256 key at `path`.
fn key(path: &Path) {
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path.to_str().unwrap(),
    ]);
}

/// A self-signed CA named `name` in `dir`.
pub fn ca(dir: &Path, name: &str) -> Pair {
    let p = Pair {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    key(&p.key);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        p.key.to_str().unwrap(),
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-out",
        p.cert.to_str().unwrap(),
    ]);
    p
}

/// A leaf for `cn` (also its DNS subjectAltName) signed by `ca`, valid for
/// `days`, written as `file`.crt/.key in `dir`.
pub fn leaf(dir: &Path, ca: &Pair, cn: &str, file: &str, days: u32) -> Pair {
    let p = Pair {
        cert: dir.join(format!("{file}.crt")),
        key: dir.join(format!("{file}.key")),
    };
    key(&p.key);
    let csr = dir.join(format!("{file}.csr"));
    let ext = dir.join(format!("{file}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={}:{cn}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
            if cn.parse::<std::net::IpAddr>().is_ok() { "IP" } else { "DNS" }
        ),
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-key",
        p.key.to_str().unwrap(),
        "-subj",
        &format!("/CN={cn}"),
        "-out",
        csr.to_str().unwrap(),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.cert.to_str().unwrap(),
        "-CAkey",
        ca.key.to_str().unwrap(),
        "-set_serial",
        &format!("{}", rand::random::<u32>() | 1),
        "-days",
        &days.to_string(),
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        p.cert.to_str().unwrap(),
    ]);
    p
}

/// A rustls client configuration that trusts `ca`, offers `alpn`, and
/// presents `me` when given.
pub fn client(ca: &Pair, me: Option<&Pair>, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca.cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut c = match me {
        None => b.with_no_client_auth(),
        Some(me) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&me.cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(&me.key).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    };
    c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(c)
}

/// A TLS connection to `to` for server name `name`.
pub async fn connect(
    config: &Arc<rustls::ClientConfig>,
    to: SocketAddr,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(to).await?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
}

/// The DER of the certificate `s`'s server presented.
pub fn peer_leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The DER of the first certificate in the PEM file `path`.
pub fn der(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}
