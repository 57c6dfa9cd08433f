//! Validation of `[pools.NAME.health]`.

use std::time::Duration;

use super::raw::{RawAgent, RawHealth, S};
use super::validate::Validator;
use super::{AgentConfig, CheckKind, HealthConfig};

impl Validator<'_> {
    pub(super) fn agent(&mut self, key: &str, a: &S<RawAgent>) -> Option<AgentConfig> {
        let a = a.get_ref();
        let port = self.count(Some(&a.port), &format!("{key}.port"), 1, 65535, 0) as u16;
        let interval = self
            .positive_duration(a.interval.as_ref(), &format!("{key}.interval"))
            .unwrap_or(Duration::from_secs(2));
        let timeout = self
            .positive_duration(a.timeout.as_ref(), &format!("{key}.timeout"))
            .unwrap_or(Duration::from_secs(1));
        let send = self.bytes(a.send.as_ref(), &format!("{key}.send"));
        (port != 0).then_some(AgentConfig {
            port,
            interval,
            timeout,
            send,
        })
    }

    pub(super) fn health(&mut self, key: &str, h: S<RawHealth>) -> HealthConfig {
        let h = h.into_inner();
        let d = HealthConfig::default();
        let interval = self
            .positive_duration(h.interval.as_ref(), &format!("{key}.interval"))
            .unwrap_or(d.interval);
        let timeout = self
            .positive_duration(h.timeout.as_ref(), &format!("{key}.timeout"))
            .unwrap_or(d.timeout);
        let rise = self.count(h.rise.as_ref(), &format!("{key}.rise"), 1, 1000, 2) as u32;
        let fall = self.count(h.fall.as_ref(), &format!("{key}.fall"), 1, 1000, 3) as u32;
        let port = h
            .port
            .as_ref()
            .map(|p| self.count(Some(p), &format!("{key}.port"), 1, 65535, 1) as u16);
        let initial_up = match h.initial.as_ref().map(|i| i.get_ref().as_str()) {
            None | Some("up") => true,
            Some("down") => false,
            Some(other) => {
                let span = h.initial.as_ref().map(|i| i.span()).unwrap_or_default();
                self.p.push(
                    span,
                    format!("{key}.initial"),
                    format!("`{other}` is neither \"up\" nor \"down\""),
                );
                true
            }
        };
        if interval.is_zero() {
            let span = h.interval.as_ref().map(|i| i.span()).unwrap_or_default();
            self.p
                .push(span, format!("{key}.interval"), "must be more than zero");
        }
        let send = self.bytes(h.send.as_ref(), &format!("{key}.send"));
        let expect = self.bytes(h.expect.as_ref(), &format!("{key}.expect"));
        let kind_name = h
            .kind
            .as_ref()
            .map(|k| k.get_ref().as_str())
            .unwrap_or("tcp");
        let kind_span = h.kind.as_ref().map(|k| k.span()).unwrap_or_default();
        let only_for = |field: &Option<S<String>>, name: &str, kinds: &str, v: &mut Self| {
            if let Some(f) = field {
                v.p.push(
                    f.span(),
                    format!("{key}.{name}"),
                    format!("only applies to kind = {kinds}"),
                );
            }
        };
        let check = match kind_name {
            "none" => CheckKind::None,
            "tcp" => {
                only_for(&h.path, "path", "\"http\"", self);
                only_for(&h.host, "host", "\"http\"", self);
                CheckKind::Tcp { send, expect }
            }
            "http" => {
                only_for(&h.send, "send", "\"tcp\" or \"udp\"", self);
                only_for(&h.expect, "expect", "\"tcp\" or \"udp\"", self);
                let path = h
                    .path
                    .as_ref()
                    .map(|p| p.get_ref().clone())
                    .unwrap_or_else(|| "/".into());
                if !path.starts_with('/') {
                    let span = h.path.as_ref().map(|p| p.span()).unwrap_or_default();
                    self.p
                        .push(span, format!("{key}.path"), "must start with /");
                }
                let expect_status = self.count(
                    h.expect_status.as_ref(),
                    &format!("{key}.expect_status"),
                    100,
                    599,
                    200,
                ) as u16;
                CheckKind::Http {
                    path,
                    expect_status,
                    host: h.host.as_ref().map(|x| x.get_ref().clone()),
                }
            }
            "udp" => {
                only_for(&h.path, "path", "\"http\"", self);
                only_for(&h.host, "host", "\"http\"", self);
                match send {
                    Some(send) => CheckKind::Udp { send, expect },
                    None => {
                        self.p.push(
                            kind_span.clone(),
                            format!("{key}.send"),
                            "kind = \"udp\" needs `send`",
                        );
                        CheckKind::None
                    }
                }
            }
            other => {
                self.p.push(
                    kind_span,
                    format!("{key}.kind"),
                    format!(
                        "unknown kind `{other}`; expected \"tcp\", \"http\", \"udp\" or \"none\""
                    ),
                );
                CheckKind::None
            }
        };
        HealthConfig {
            check,
            interval,
            timeout,
            rise,
            fall,
            port,
            initial_up,
            // The pool sets the version (see `pool`).
            proxy_header: None,
            tls: h.tls.unwrap_or(true),
        }
    }
}
