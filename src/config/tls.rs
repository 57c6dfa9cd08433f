//! TLS keys: a listener's `[listeners.tls]` and `tls_handshake_timeout`, a
//! route's `tls` and `passthrough`, a pool's `[pools.NAME.tls]`. Files are
//! read here, so `check` and a reload name the file and key that is wrong
//! before anything runs. A relative path is taken from the configuration
//! file's folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::raw::{RawListenerTls, RawPoolTls, RawRouteTls, S};
use super::validate::Validator;
use crate::tls::TerminatorSettings;
use crate::tls::{CertInfo, MinVersion, Originator, OriginatorSettings, Terminator};

/// A certificate expiring within this long is warned of by `check`.
const EXPIRY_WARNING_SECS: i64 = 14 * 24 * 3600;

/// A listener's (or route's) certificate and how it ends TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// `cert`: the chain, PEM.
    pub cert: PathBuf,
    /// `key`: its key, PEM.
    pub key: PathBuf,
    /// `client_ca`: with it, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
    /// `alpn`: protocols offered.
    pub alpn: Vec<String>,
    /// `min_version`, default `"1.2"`.
    pub min_version: MinVersion,
    /// What the files built; equal when their bytes are.
    pub built: Arc<Terminator>,
}

/// What a route does with TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RouteTls {
    /// No `tls`: the listener's own, if it ends TLS; else passed through.
    #[default]
    Listener,
    /// `passthrough = true`: passed through even when the listener ends TLS.
    Passthrough,
    /// `tls = { cert, key }`: ended with this certificate.
    Own(ListenerTls),
}

/// A pool's `[pools.NAME.tls]`: TLS to its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTls {
    /// `ca`: the roots backends are verified against.
    pub ca: Option<PathBuf>,
    /// `server_name`: sent and verified instead of each backend's own.
    pub server_name: Option<String>,
    /// `cert` and `key`: our client certificate.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// `verify`, default true.
    pub verify: bool,
    /// What the files built.
    pub built: Arc<Originator>,
}

impl Validator<'_> {
    /// A `ca` as written: the system's roots (`"@system-ca"`), or a file
    /// as [`Self::file`] takes it.
    pub(super) fn ca_file(&self, v: &S<String>) -> PathBuf {
        if v.get_ref() == crate::tls::SYSTEM_CA {
            PathBuf::from(crate::tls::SYSTEM_CA)
        } else {
            self.file(v)
        }
    }

    /// `path` as written, taken from the configuration file's folder when
    /// relative.
    pub(super) fn file(&self, v: &S<String>) -> PathBuf {
        let p = Path::new(v.get_ref());
        match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn min_version(&mut self, v: Option<&S<String>>, key: &str) -> MinVersion {
        match v.map(|v| v.get_ref().as_str()) {
            None | Some("1.2") => MinVersion::Tls12,
            Some("1.3") => MinVersion::Tls13,
            Some(other) => {
                self.p.push(
                    v.map(|v| v.span()).unwrap_or_default(),
                    key,
                    format!("`{other}` is no TLS version switchyard speaks; expected \"1.2\" or \"1.3\""),
                );
                MinVersion::Tls12
            }
        }
    }

    fn alpn_list(&mut self, v: Option<&Vec<S<String>>>, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, a) in v.into_iter().flatten().enumerate() {
            if a.get_ref().is_empty() || a.get_ref().len() > 255 {
                self.p.push(
                    a.span(),
                    format!("{key}[{i}]"),
                    "an ALPN protocol is 1 to 255 bytes",
                );
            }
            out.push(a.get_ref().clone());
        }
        out
    }

    /// Warns of a certificate that has expired or soon will.
    fn expiry(&mut self, info: &CertInfo, span: std::ops::Range<usize>, key: &str) {
        let now = crate::clock::unix_secs() as i64;
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(info.not_after.max(0) as u64),
        );
        if info.not_after < now {
            self.warn(
                span,
                key,
                &format!("the certificate expired at {when}; clients will refuse it"),
            );
        } else if info.not_after - now < EXPIRY_WARNING_SECS {
            let days = (info.not_after - now) / 86400;
            self.warn(
                span,
                key,
                &format!("the certificate expires at {when}, in {days} day(s)"),
            );
        }
    }

    /// A listener's `[listeners.tls]`.
    pub(super) fn listener_tls(&mut self, key: &str, t: &S<RawListenerTls>) -> Option<ListenerTls> {
        let raw = t.get_ref();
        let key = format!("{key}.tls");
        let min_version = self.min_version(raw.min_version.as_ref(), &format!("{key}.min_version"));
        let alpn = self.alpn_list(raw.alpn.as_ref(), &format!("{key}.alpn"));
        let client_ca = raw.client_ca.as_ref().map(|c| self.file(c));
        self.terminator(
            &key,
            (&raw.cert, &raw.key),
            (raw.client_ca.as_ref(), client_ca),
            alpn,
            min_version,
        )
    }

    /// A route's `tls = { cert, key }`, with its listener's other settings.
    pub(super) fn route_tls(
        &mut self,
        key: &str,
        t: &S<RawRouteTls>,
        listener: Option<(&ListenerTls, Option<&S<String>>)>,
    ) -> Option<ListenerTls> {
        let raw = t.get_ref();
        let key = format!("{key}.tls");
        let (client_ca, alpn, min_version, ca_span) = match listener {
            Some((l, span)) => (l.client_ca.clone(), l.alpn.clone(), l.min_version, span),
            None => (None, Vec::new(), MinVersion::Tls12, None),
        };
        self.terminator(
            &key,
            (&raw.cert, &raw.key),
            (ca_span, client_ca),
            alpn,
            min_version,
        )
    }

    fn terminator(
        &mut self,
        key: &str,
        (cert, key_file): (&S<String>, &S<String>),
        (ca_span, client_ca): (Option<&S<String>>, Option<PathBuf>),
        alpn: Vec<String>,
        min_version: MinVersion,
    ) -> Option<ListenerTls> {
        let (cert_path, key_path) = (self.file(cert), self.file(key_file));
        let built = Terminator::build(TerminatorSettings {
            cert: &cert_path,
            key: &key_path,
            client_ca: client_ca.as_deref(),
            alpn: &alpn,
            min_version,
        });
        match built {
            Ok(t) => {
                self.expiry(&t.leaf, cert.span(), &format!("{key}.cert"));
                Some(ListenerTls {
                    cert: cert_path,
                    key: key_path,
                    client_ca,
                    alpn,
                    min_version,
                    built: Arc::new(t),
                })
            }
            Err((which, why)) => {
                let (span, shown) = match which {
                    "cert" => (cert.span(), cert_path.display().to_string()),
                    "client_ca" => (
                        ca_span.map(|s| s.span()).unwrap_or_else(|| cert.span()),
                        client_ca
                            .map(|c| c.display().to_string())
                            .unwrap_or_default(),
                    ),
                    _ => (key_file.span(), key_path.display().to_string()),
                };
                self.p
                    .push(span, format!("{key}.{which}"), format!("{shown}: {why}"));
                None
            }
        }
    }

    /// A pool's `[pools.NAME.tls]`.
    pub(super) fn pool_tls(&mut self, key: &str, t: &S<RawPoolTls>) -> Option<PoolTls> {
        let raw = t.get_ref();
        let key = format!("{key}.tls");
        let verify = raw.verify.as_ref().is_none_or(|v| *v.get_ref());
        let min_version = self.min_version(raw.min_version.as_ref(), &format!("{key}.min_version"));
        let alpn = self.alpn_list(raw.alpn.as_ref(), &format!("{key}.alpn"));
        if !verify {
            let span = raw.verify.as_ref().map(|v| v.span()).unwrap_or_default();
            self.warn(
                span,
                &format!("{key}.verify"),
                "backends' certificates are not verified: the connection is encrypted, but anyone on the path can pose as a backend",
            );
        }
        if verify && raw.ca.is_none() {
            self.p.push(
                t.span(),
                format!("{key}.ca"),
                "backends are verified against `ca`: name the CA bundle (or set verify = false)",
            );
            return None;
        }
        let cert = match (&raw.cert, &raw.key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(c), None) | (None, Some(c)) => {
                self.p.push(
                    c.span(),
                    key.clone(),
                    "a client certificate needs both `cert` and `key`",
                );
                return None;
            }
        };
        let ca = raw.ca.as_ref().map(|c| self.ca_file(c));
        let paths = cert.map(|(c, k)| (self.file(c), self.file(k)));
        let server_name = raw.server_name.as_ref().map(|s| s.get_ref().clone());
        let built = Originator::build(OriginatorSettings {
            ca: ca.as_deref(),
            server_name: server_name.as_deref(),
            cert: paths.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            verify,
            alpn: &alpn,
            min_version,
        });
        match built {
            Ok(o) => {
                if let (Some(leaf), Some((c, _))) = (&o.leaf, cert) {
                    self.expiry(leaf, c.span(), &format!("{key}.cert"));
                }
                Some(PoolTls {
                    ca,
                    server_name,
                    cert: paths,
                    verify,
                    built: Arc::new(o),
                })
            }
            Err((which, why)) => {
                let (span, shown) = match which {
                    "ca" => (
                        raw.ca
                            .as_ref()
                            .map(|c| c.span())
                            .unwrap_or_else(|| t.span()),
                        ca.map(|c| c.display().to_string()).unwrap_or_default(),
                    ),
                    "cert" => (
                        cert.map(|(c, _)| c.span()).unwrap_or_else(|| t.span()),
                        paths
                            .as_ref()
                            .map(|(c, _)| c.display().to_string())
                            .unwrap_or_default(),
                    ),
                    "key" => (
                        cert.map(|(_, k)| k.span()).unwrap_or_else(|| t.span()),
                        paths
                            .as_ref()
                            .map(|(_, k)| k.display().to_string())
                            .unwrap_or_default(),
                    ),
                    _ => (
                        raw.server_name
                            .as_ref()
                            .map(|s| s.span())
                            .unwrap_or_else(|| t.span()),
                        String::new(),
                    ),
                };
                let message = if shown.is_empty() {
                    why
                } else {
                    format!("{shown}: {why}")
                };
                self.p.push(span, format!("{key}.{which}"), message);
                None
            }
        }
    }
}
