//! `[log]`: where the access log goes.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::raw::{RawLog, S};
use super::validate::Validator;

/// `access`: where access lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// With the other lines, on stderr (the default).
    #[default]
    Stderr,
    /// To the `syslog` receiver.
    Syslog,
    /// Nowhere.
    Off,
}

/// `syslog`: the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// `unix:/dev/log`: a datagram socket.
    Unix(PathBuf),
    /// `udp:HOST:PORT`.
    Udp(SocketAddr),
    /// `tcp:HOST:PORT`: octet-counted frames.
    Tcp(SocketAddr),
}

impl std::fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogTarget::Unix(p) => write!(f, "unix:{}", p.display()),
            SyslogTarget::Udp(a) => write!(f, "udp:{a}"),
            SyslogTarget::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `access`, default stderr.
    pub access: AccessLog,
    /// `syslog`, default `unix:/dev/log`.
    pub syslog: SyslogTarget,
    /// `facility`'s number, default local0 (16).
    pub facility: u8,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            access: AccessLog::Stderr,
            syslog: SyslogTarget::Unix(PathBuf::from("/dev/log")),
            facility: 16,
        }
    }
}

const FACILITIES: &[&str] = &[
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

impl Validator<'_> {
    /// `[log]`.
    pub(super) fn log(&mut self, raw: Option<&S<RawLog>>) -> LogConfig {
        let mut c = LogConfig::default();
        let Some(raw) = raw else {
            return c;
        };
        let r = raw.get_ref();
        if let Some(a) = &r.access {
            c.access = match a.get_ref().as_str() {
                "stderr" => AccessLog::Stderr,
                "syslog" => AccessLog::Syslog,
                "off" => AccessLog::Off,
                other => {
                    self.p.push(
                        a.span(),
                        "log.access",
                        format!("unknown `{other}`; expected \"stderr\", \"syslog\" or \"off\""),
                    );
                    AccessLog::Stderr
                }
            };
        }
        if let Some(t) = &r.syslog {
            let text = t.get_ref();
            let parsed = match text.split_once(':') {
                Some(("unix", p)) if p.starts_with('/') => {
                    Some(SyslogTarget::Unix(PathBuf::from(p)))
                }
                Some(("udp", a)) => a.parse().ok().map(SyslogTarget::Udp),
                Some(("tcp", a)) => a.parse().ok().map(SyslogTarget::Tcp),
                _ => None,
            };
            match parsed {
                Some(p) => c.syslog = p,
                None => self.p.push(
                    t.span(),
                    "log.syslog",
                    format!("`{text}` is not a syslog receiver; expected \"unix:/dev/log\", \"udp:IP:PORT\" or \"tcp:IP:PORT\""),
                ),
            }
        }
        if let Some(f) = &r.facility {
            match FACILITIES.iter().position(|n| n == f.get_ref()) {
                Some(i) => c.facility = i as u8,
                None => self.p.push(
                    f.span(),
                    "log.facility",
                    format!(
                        "unknown facility `{}`; expected one of {}",
                        f.get_ref(),
                        FACILITIES.join(", ")
                    ),
                ),
            }
        }
        if c.access != AccessLog::Syslog && (r.syslog.is_some() || r.facility.is_some()) {
            self.warn(
                raw.span(),
                "log",
                "`syslog` and `facility` apply only with access = \"syslog\"",
            );
        }
        c
    }
}
