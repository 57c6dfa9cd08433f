//! Validation of one `[[listeners]]` entry.
//!
//! It runs past 400 lines: it validates every key of a `[[listeners]]`
//! entry, and the checks that weigh one key against another need them all
//! at hand.

use std::collections::{BTreeMap, HashMap};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use super::raw::RawListener;
use super::validate::Validator;
use super::{Endpoint, ListenerConfig, PoolConfig, Protocol, ProxyVersion, UnixFile};
use crate::endpoint::UnixName;

impl Validator<'_> {
    pub(super) fn listener(
        &mut self,
        key: &str,
        l: RawListener,
        pools: &BTreeMap<String, PoolConfig>,
        names: &mut HashMap<String, String>,
        binds: &mut HashMap<(Protocol, Endpoint), String>,
    ) -> Option<ListenerConfig> {
        let name = l.name.get_ref().clone();
        if let Some(why) = super::unfit_name(&name) {
            self.p.push(l.name.span(), format!("{key}.name"), why);
        }
        let here = self.p.location(l.name.span().start);
        if let Some(first) = names.insert(name.clone(), here) {
            self.p.push(
                l.name.span(),
                format!("{key}.name"),
                format!("listener name `{name}` is used twice: first at {first}"),
            );
        }
        let protocol = match l.protocol.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(other) => {
                let span = l.protocol.as_ref().map(|p| p.span()).unwrap_or_default();
                self.p.push(
                    span,
                    format!("{key}.protocol"),
                    format!("unknown protocol `{other}`; expected \"tcp\" or \"udp\""),
                );
                Protocol::Tcp
            }
        };
        let bind = self.endpoint(&l.bind, &format!("{key}.bind"));
        let unix_file = self.unix_file(key, &l, bind.and_then(|b| b.unix()));
        if let Some(name) = bind.and_then(|b| b.unix()) {
            self.unix_listener(key, &l, protocol, name);
            if let Some(other) = binds.insert((protocol, Endpoint::Unix(name)), name.to_string()) {
                self.p.push(
                    l.bind.span(),
                    format!("{key}.bind"),
                    format!("unix:{name} is already bound by listener `{other}`"),
                );
            }
        }
        // Port 0 asks the system for a fresh port each time, so it never clashes.
        if let Some(bind) = bind.and_then(|b| b.inet()).filter(|b| b.port() != 0) {
            // TCP: a wildcard address and a specific one of the same family
            // cannot both listen on one port (the kernel refuses the second).
            let overlap = binds.iter().find(|((p, other), _)| {
                let Endpoint::Inet(other) = other else {
                    return false;
                };
                *p == Protocol::Tcp
                    && protocol == Protocol::Tcp
                    && other.port() == bind.port()
                    && other.is_ipv4() == bind.is_ipv4()
                    && *other != bind
                    && (other.ip().is_unspecified() || bind.ip().is_unspecified())
            });
            if let Some(((_, addr), other)) = overlap {
                self.p.push(
                    l.bind.span(),
                    format!("{key}.bind"),
                    format!("tcp {bind} overlaps {addr} of listener `{other}`: a wildcard address and another on the same port cannot both listen"),
                );
            }
            if let Some(other) = binds.insert((protocol, bind.into()), name.clone()) {
                self.p.push(
                    l.bind.span(),
                    format!("{key}.bind"),
                    format!(
                        "{} {bind} is already bound by listener `{other}`",
                        protocol.as_str()
                    ),
                );
            }
        }
        if !pools.contains_key(l.pool.get_ref()) {
            self.p.push(
                l.pool.span(),
                format!("{key}.pool"),
                format!(
                    "no pool named `{}` (define [pools.{}])",
                    l.pool.get_ref(),
                    l.pool.get_ref()
                ),
            );
        }
        let default_idle = match protocol {
            Protocol::Tcp => Duration::from_secs(3600),
            Protocol::Udp => Duration::from_secs(30),
        };
        let idle_timeout = self
            .positive_duration(l.idle_timeout.as_ref(), &format!("{key}.idle_timeout"))
            .unwrap_or(default_idle);
        let max_sessions = self.count(
            l.max_sessions.as_ref(),
            &format!("{key}.max_sessions"),
            1,
            1 << 24,
            65536,
        );
        let max_sessions_per_ip = self.count(
            l.max_sessions_per_ip.as_ref(),
            &format!("{key}.max_sessions_per_ip"),
            1,
            1 << 24,
            (max_sessions / 4).max(1),
        );
        let max_connections = self.count(
            l.max_connections.as_ref(),
            &format!("{key}.max_connections"),
            1,
            1 << 24,
            65536,
        );
        let max_connections_per_ip = l.max_connections_per_ip.as_ref().map(|m| {
            self.count(
                Some(m),
                &format!("{key}.max_connections_per_ip"),
                1,
                1 << 24,
                1,
            ) as u32
        });
        let connection_rate_per_ip = self.rate(
            l.connection_rate_per_ip.as_ref(),
            l.connection_burst_per_ip.as_ref(),
            key,
        );
        let backlog = self.count(
            l.backlog.as_ref(),
            &format!("{key}.backlog"),
            1,
            65535,
            1024,
        );
        let tls = match (&l.tls, protocol) {
            (Some(t), Protocol::Udp) => {
                self.p.push(
                    t.span(),
                    format!("{key}.tls"),
                    "TLS ends on TCP listeners only (QUIC carries its own)",
                );
                None
            }
            (Some(t), Protocol::Tcp) => self.listener_tls(key, t),
            (None, _) => None,
        };
        let identity = self.identity(key, &l, protocol, pools, tls.as_ref());
        let tls_handshake_timeout = self
            .positive_duration(
                l.tls_handshake_timeout.as_ref(),
                &format!("{key}.tls_handshake_timeout"),
            )
            .unwrap_or(Duration::from_secs(10));
        if protocol == Protocol::Udp {
            // Datagrams carry v2 headers only.
            let targets = std::iter::once((l.pool.get_ref(), l.pool.span(), format!("{key}.pool")))
                .chain(
                    identity
                        .routes
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (&r.pool, l.pool.span(), format!("{key}.routes[{i}].pool"))),
                );
            for (pool, span, pkey) in targets {
                if let Some(unix) = pools.get(pool).and_then(super::PoolConfig::unix_backend) {
                    self.p.push(
                        span.clone(),
                        pkey.clone(),
                        format!("pool `{pool}` has a Unix-socket backend ({unix}), which carries streams only; a UDP listener's pools need IP backends"),
                    );
                }
                if pools.get(pool).and_then(|p| p.proxy_protocol) == Some(ProxyVersion::V1) {
                    self.p.push(
                        span,
                        pkey,
                        format!("pool `{pool}` sends PROXY protocol v1, which has no form for datagrams; a UDP listener needs \"v2\""),
                    );
                }
            }
        }
        let rates = crate::config::Rates {
            upload: self.byte_rate(l.upload_rate.as_ref(), &format!("{key}.upload_rate")),
            download: self.byte_rate(l.download_rate.as_ref(), &format!("{key}.download_rate")),
            listener_upload: self.byte_rate(
                l.listener_upload_rate.as_ref(),
                &format!("{key}.listener_upload_rate"),
            ),
            listener_download: self.byte_rate(
                l.listener_download_rate.as_ref(),
                &format!("{key}.listener_download_rate"),
            ),
        };
        let per_datagram = match l.udp_balance.as_ref() {
            None => false,
            Some(b) => {
                match (b.get_ref().as_str(), protocol) {
                    ("session", _) => false,
                    ("per_datagram", Protocol::Udp)
                        if l.routes.as_ref().is_none_or(|r| r.is_empty()) =>
                    {
                        true
                    }
                    ("per_datagram", Protocol::Udp) => {
                        self.p.push(
                        b.span(),
                        format!("{key}.udp_balance"),
                        "\"per_datagram\" picks each datagram on its own, so there is no session to route by server name: drop the routes or pick per session",
                    );
                        false
                    }
                    ("per_datagram", Protocol::Tcp) => {
                        self.p.push(
                            b.span(),
                            format!("{key}.udp_balance"),
                            "applies to UDP listeners only",
                        );
                        false
                    }
                    (other, _) => {
                        self.p.push(
                        b.span(),
                        format!("{key}.udp_balance"),
                        format!("`{other}` is not a choice; expected \"session\" or \"per_datagram\""),
                    );
                        false
                    }
                }
            }
        };
        let mirror = l.mirror.as_ref().and_then(|m| {
            let mk = format!("{key}.mirror");
            let share = m.get_ref().share.as_ref();
            let share_ppm = match share.map(|s| *s.get_ref()) {
                None => 1_000_000,
                Some(v) if v > 0.0 && v <= 1.0 => ((v * 1e6).round() as u32).max(1),
                Some(v) => {
                    self.p.push(
                        share.map(|s| s.span()).unwrap_or_default(),
                        format!("{mk}.share"),
                        format!("a share of the connections, above 0 and at most 1 (0.1 is a tenth), not {v}"),
                    );
                    return None;
                }
            };
            let pool = &m.get_ref().pool;
            if !pools.contains_key(pool.get_ref()) {
                self.p.push(
                    pool.span(),
                    format!("{mk}.pool"),
                    format!(
                        "no pool named `{}` (define [pools.{}])",
                        pool.get_ref(),
                        pool.get_ref()
                    ),
                );
                return None;
            }
            let unix = pools.get(pool.get_ref()).and_then(super::PoolConfig::unix_backend);
            if let (Protocol::Udp, Some(unix)) = (protocol, unix) {
                self.p.push(
                    pool.span(),
                    format!("{mk}.pool"),
                    format!("pool `{}` has a Unix-socket backend ({unix}); a UDP listener mirrors datagrams to IP backends only", pool.get_ref()),
                );
                return None;
            }
            if pool.get_ref() == l.pool.get_ref() {
                self.warn(
                    pool.span(),
                    &format!("{mk}.pool"),
                    "the mirror is the listener's own pool: its backends get each mirrored client twice",
                );
            }
            Some(crate::config::MirrorConfig {
                pool: pool.get_ref().clone(),
                share_ppm,
            })
        });
        let limited = [
            (&l.upload_rate, "upload_rate"),
            (&l.download_rate, "download_rate"),
            (&l.listener_upload_rate, "listener_upload_rate"),
            (&l.listener_download_rate, "listener_download_rate"),
        ];
        if tls.is_some() {
            for (v, name) in limited {
                if let Some(v) = v {
                    self.warn(
                        v.span(),
                        &format!("{key}.{name}"),
                        "byte rates do not apply to connections whose TLS ends here (only to those passed through)",
                    );
                }
            }
        }
        if protocol == Protocol::Udp {
            for (v, name) in [
                (&l.upload_rate, "upload_rate"),
                (&l.download_rate, "download_rate"),
                (&l.listener_upload_rate, "listener_upload_rate"),
                (&l.listener_download_rate, "listener_download_rate"),
            ] {
                if let Some(v) = v {
                    self.p.push(
                        v.span(),
                        format!("{key}.{name}"),
                        "byte rates apply to TCP listeners only",
                    );
                }
            }
        }
        if protocol == Protocol::Udp && l.max_connections.is_some() {
            let span = l
                .max_connections
                .as_ref()
                .map(|m| m.span())
                .unwrap_or_default();
            self.warn(
                span,
                &format!("{key}.max_connections"),
                "applies to TCP only; ignored on a UDP listener",
            );
        }
        Some(ListenerConfig {
            name,
            protocol,
            bind: bind?,
            unix_file,
            pool: l.pool.into_inner(),
            idle_timeout,
            max_sessions: NonZeroUsize::new(max_sessions as usize)?,
            max_sessions_per_ip: NonZeroUsize::new(max_sessions_per_ip as usize)?,
            per_datagram,
            max_connections: NonZeroUsize::new(max_connections as usize)?,
            max_connections_per_ip: max_connections_per_ip.and_then(NonZeroU32::new),
            connection_rate_per_ip,
            access_log: l.access_log.unwrap_or(true),
            backlog: backlog as u32,
            // UDP: one receive loop per worker thread unless told otherwise.
            reuse_port: l.reuse_port.unwrap_or(true),
            zero_copy: l.zero_copy.unwrap_or(true),
            rates,
            mirror,
            tcp_keepalive: self
                .keepalive(l.tcp_keepalive.as_ref(), &format!("{key}.tcp_keepalive")),
            allow: self.networks(l.allow.as_deref(), &format!("{key}.allow")),
            deny: self.networks(l.deny.as_deref(), &format!("{key}.deny")),
            accept_proxy: identity.accept_proxy,
            routes: identity.routes,
            tls_inspect_timeout: identity.tls_inspect_timeout,
            sni_required: identity.sni_required,
            tls,
            tls_handshake_timeout,
        })
    }

    /// A Unix listener's `mode`, `owner` and `group` (for `name`, its
    /// socket; refused on any other listener).
    fn unix_file(&mut self, key: &str, l: &RawListener, name: Option<UnixName>) -> UnixFile {
        let fields = [("mode", &l.mode), ("owner", &l.owner), ("group", &l.group)];
        let Some(name) = name.filter(|n| !n.is_abstract()) else {
            for (field, v) in fields {
                if let Some(v) = v {
                    let why = match name {
                        Some(_) => "an abstract Unix socket (unix:@name) has no file to give it",
                        None => "applies to a Unix listener's file (bind = \"unix:/path\") only",
                    };
                    self.p.push(v.span(), format!("{key}.{field}"), why);
                }
            }
            return UnixFile::default();
        };
        if let Some(dir) = name.path().and_then(|p| p.parent()) {
            // The socket is made as DIR/.switchyard-PID/s (a pid has at
            // most 7 digits), then renamed into place.
            let room = dir.as_os_str().len() + "/.switchyard-1234567/s".len();
            if room > crate::endpoint::MAX_UNIX_NAME {
                self.p.push(
                    l.bind.span(),
                    format!("{key}.bind"),
                    format!(
                        "the directory {} is too long a path: the socket is made under a temporary name inside it first, which must fit the {} bytes of sun_path (use a directory of at most {} bytes)",
                        dir.display(),
                        crate::endpoint::MAX_UNIX_NAME,
                        crate::endpoint::MAX_UNIX_NAME - "/.switchyard-1234567/s".len()
                    ),
                );
            }
            if !dir.is_dir() {
                self.p.push(
                    l.bind.span(),
                    format!("{key}.bind"),
                    format!("the directory {} does not exist", dir.display()),
                );
            }
        }
        let mode = l
            .mode
            .as_ref()
            .and_then(|m| match u32::from_str_radix(m.get_ref(), 8) {
                Ok(bits) if bits <= 0o777 => Some(bits),
                _ => {
                    self.p.push(
                        m.span(),
                        format!("{key}.mode"),
                        format!(
                            "`{}` is not a file mode: octal permission bits, as \"0660\"",
                            m.get_ref()
                        ),
                    );
                    None
                }
            });
        let mut id =
            |v: &Option<super::raw::S<String>>, field: &str, lookup: fn(&str) -> Option<u32>| {
                let v = v.as_ref()?;
                let id = lookup(v.get_ref());
                if id.is_none() {
                    let what = if field == "owner" { "user" } else { "group" };
                    self.p.push(
                        v.span(),
                        format!("{key}.{field}"),
                        format!("no {what} `{}` on this host", v.get_ref()),
                    );
                }
                id
            };
        let owner = id(&l.owner, "owner", crate::sys::user_id);
        let group = id(&l.group, "group", crate::sys::group_id);
        UnixFile { mode, owner, group }
    }

    /// What a Unix listener cannot have: datagrams, and (unless a PROXY
    /// header names its clients) rules by client address.
    fn unix_listener(&mut self, key: &str, l: &RawListener, protocol: Protocol, name: UnixName) {
        if protocol == Protocol::Udp {
            self.p.push(
                l.bind.span(),
                format!("{key}.bind"),
                format!(
                    "unix:{name}: Unix listeners take streams; a UDP listener needs an IP address"
                ),
            );
        }
        if l.reuse_port == Some(true) {
            self.warn(
                l.bind.span(),
                &format!("{key}.reuse_port"),
                "a Unix socket has one accept queue: its workers share it",
            );
        }
        if l.accept_proxy.as_ref().is_some_and(|a| *a.get_ref()) {
            if let Some(t) = l.proxy_trusted.as_ref().and_then(|t| t.first()) {
                self.warn(
                    t.span(),
                    &format!("{key}.proxy_trusted"),
                    "a Unix listener's file mode says who may connect (and send a header); the list is not used",
                );
            }
            return;
        }
        let by_address = [
            (
                "allow",
                l.allow.as_ref().and_then(|v| v.first()).map(|v| v.span()),
            ),
            (
                "deny",
                l.deny.as_ref().and_then(|v| v.first()).map(|v| v.span()),
            ),
            (
                "max_connections_per_ip",
                l.max_connections_per_ip.as_ref().map(|v| v.span()),
            ),
            (
                "connection_rate_per_ip",
                l.connection_rate_per_ip.as_ref().map(|v| v.span()),
            ),
        ];
        for (field, span) in by_address {
            if let Some(span) = span {
                self.p.push(
                    span,
                    format!("{key}.{field}"),
                    "a Unix listener's clients have no IP address (unless accept_proxy names them); its file's mode, owner and group say who may connect",
                );
            }
        }
    }
}
