//! A reload as data: what must change to go from what runs to a new
//! configuration, decided without touching a socket. [`plan`] is pure and
//! unit-tested; the server carries a [`Plan`] out in one step.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use crate::config::{Config, ListenerConfig};

/// What runs now, as far as a plan needs to know.
#[derive(Debug, Default)]
pub(crate) struct Current<'a> {
    /// Running listeners' settings.
    pub listeners: Vec<&'a ListenerConfig>,
    /// Names of the pools that exist.
    pub pools: Vec<&'a str>,
    /// The admin endpoint's configured address, if one runs.
    pub admin: Option<SocketAddr>,
}

/// What happens to one listener of the new configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenerStep {
    /// New: bind it and start serving.
    Bind,
    /// Its socket changed (address, protocol or `reuse_port`): bind the new
    /// one, then retire the old one. `forget_metrics` when the protocol
    /// changed, so the old protocol's series go.
    Rebind {
        /// The old listener's series are of the other protocol.
        forget_metrics: bool,
    },
    /// Same socket: keep it (no accept gap) and re-point it.
    Keep,
    /// Another running listener on the same protocol and address (renamed,
    /// or `reuse_port` turned on or off) hands its sockets over: nothing is
    /// bound anew, so the address is never free and no client is refused.
    TakeOver {
        /// The running listener whose sockets it takes.
        from: String,
    },
}

/// What happens to one pool of the new configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolStep {
    /// New: create it and start its checks.
    Add,
    /// Exists: its settings and backends go through the pool's one door.
    Update,
}

/// What happens to the admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminStep {
    /// None configured and none running.
    Off,
    /// Same address: keep the socket, take the new settings.
    Keep,
    /// Bind anew (new, or its address changed; the old one stops).
    Bind,
    /// No longer configured: stop it.
    Stop,
}

/// Every change a reload makes, in the order it is carried out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The new configuration's listeners, in file order.
    pub listeners: Vec<(String, ListenerStep)>,
    /// Running listeners that the new configuration lacks: they stop
    /// accepting, their connections get `shutdown_grace`, their series go.
    pub retire: Vec<String>,
    /// The new configuration's pools.
    pub pools: Vec<(String, PoolStep)>,
    /// Pools that go away (their series with them).
    pub drop_pools: Vec<String>,
    /// The admin endpoint.
    pub admin: AdminStep,
}

impl Plan {
    /// Names of the listeners whose sockets must be bound before anything changes.
    #[cfg(test)]
    pub fn to_bind(&self) -> impl Iterator<Item = &str> {
        self.listeners
            .iter()
            .filter(|(_, step)| *step != ListenerStep::Keep)
            .map(|(name, _)| name.as_str())
    }
}

/// Decides how to go from `current` to `next`.
pub(crate) fn plan(current: &Current<'_>, next: &Config) -> Plan {
    let running: HashMap<&str, &ListenerConfig> = current
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), *l))
        .collect();
    let wanted: BTreeSet<&str> = next.listeners.iter().map(|l| l.name.as_str()).collect();
    // Running listeners whose sockets a new one may take: on the same
    // protocol and a fixed address, and either gone from the new file
    // (renamed) or changing `reuse_port`. Each is taken once.
    let mut givers: Vec<&ListenerConfig> = current
        .listeners
        .iter()
        .copied()
        .filter(|o| o.bind.inet().is_none_or(|a| a.port() != 0))
        .filter(|o| {
            !wanted.contains(o.name.as_str())
                || next
                    .listeners
                    .iter()
                    .any(|l| l.name == o.name && l.socket_key() != o.socket_key())
        })
        .collect();
    let listeners = next
        .listeners
        .iter()
        .map(|l| {
            let same = |o: &&ListenerConfig| o.protocol == l.protocol && o.bind == l.bind;
            let step = match running.get(l.name.as_str()) {
                Some(old) if old.socket_key() == l.socket_key() => ListenerStep::Keep,
                _ => match givers.iter().position(same) {
                    Some(i) => ListenerStep::TakeOver {
                        from: givers.remove(i).name.clone(),
                    },
                    None => match running.get(l.name.as_str()) {
                        None => ListenerStep::Bind,
                        Some(old) => ListenerStep::Rebind {
                            forget_metrics: old.protocol != l.protocol,
                        },
                    },
                },
            };
            (l.name.clone(), step)
        })
        .collect();
    let retire = current
        .listeners
        .iter()
        .filter(|l| !wanted.contains(l.name.as_str()))
        .map(|l| l.name.clone())
        .collect();
    let pools = next
        .pools
        .keys()
        .map(|name| {
            let step = if current.pools.contains(&name.as_str()) {
                PoolStep::Update
            } else {
                PoolStep::Add
            };
            (name.clone(), step)
        })
        .collect();
    let drop_pools = current
        .pools
        .iter()
        .filter(|p| !next.pools.contains_key(**p))
        .map(|p| p.to_string())
        .collect();
    let admin = match (current.admin, &next.admin) {
        (None, None) => AdminStep::Off,
        (Some(_), None) => AdminStep::Stop,
        (Some(old), Some(a)) if old == a.bind => AdminStep::Keep,
        (_, Some(_)) => AdminStep::Bind,
    };
    Plan {
        listeners,
        retire,
        pools,
        drop_pools,
        admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn current(c: &Config) -> Current<'_> {
        Current {
            listeners: c.listeners.iter().collect(),
            pools: c.pools.keys().map(String::as_str).collect(),
            admin: c.admin.as_ref().map(|a| a.bind),
        }
    }

    const POOLS: &str = "[pools.p]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[pools.q]\nbackends = [{ addr = \"127.0.0.1:2\" }]\n";

    fn listener(name: &str, protocol: &str, bind: &str, pool: &str) -> String {
        format!("[[listeners]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nbind = \"{bind}\"\npool = \"{pool}\"\n")
    }

    #[test]
    fn start_binds_everything() {
        let next = config(&format!(
            "{}{}[admin]\nbind = \"127.0.0.1:0\"\n{POOLS}",
            listener("a", "tcp", "127.0.0.1:7000", "p"),
            listener("b", "udp", "127.0.0.1:7000", "q"),
        ));
        let p = plan(&Current::default(), &next);
        assert_eq!(
            p.listeners,
            [
                ("a".to_string(), ListenerStep::Bind),
                ("b".to_string(), ListenerStep::Bind)
            ]
        );
        assert_eq!(p.to_bind().collect::<Vec<_>>(), ["a", "b"]);
        assert!(p.retire.is_empty() && p.drop_pools.is_empty());
        assert_eq!(
            p.pools,
            [
                ("p".to_string(), PoolStep::Add),
                ("q".to_string(), PoolStep::Add)
            ]
        );
        assert_eq!(p.admin, AdminStep::Bind);
    }

    #[test]
    fn a_reload_keeps_rebinds_and_retires() {
        let old = config(&format!(
            "{}{}{}{}[admin]\nbind = \"127.0.0.1:9901\"\n{POOLS}",
            listener("same", "tcp", "127.0.0.1:7000", "p"),
            listener("moved", "tcp", "127.0.0.1:7001", "p"),
            listener("flipped", "tcp", "127.0.0.1:7002", "p"),
            listener("gone", "tcp", "127.0.0.1:7003", "p"),
        ));
        let next = config(&format!(
            "{}{}{}{}[admin]\nbind = \"127.0.0.1:9901\"\n[pools.p]\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n[pools.r]\nbackends = [{{ addr = \"127.0.0.1:3\" }}]\n",
            listener("same", "tcp", "127.0.0.1:7000", "r"),
            listener("moved", "tcp", "127.0.0.1:7011", "p"),
            listener("flipped", "udp", "127.0.0.1:7002", "p"),
            listener("new", "udp", "127.0.0.1:7004", "p"),
        ));
        let p = plan(&current(&old), &next);
        assert_eq!(
            p.listeners,
            [
                ("same".to_string(), ListenerStep::Keep),
                (
                    "moved".to_string(),
                    ListenerStep::Rebind {
                        forget_metrics: false
                    }
                ),
                (
                    "flipped".to_string(),
                    ListenerStep::Rebind {
                        forget_metrics: true
                    }
                ),
                ("new".to_string(), ListenerStep::Bind),
            ]
        );
        assert_eq!(p.to_bind().collect::<Vec<_>>(), ["moved", "flipped", "new"]);
        assert_eq!(p.retire, ["gone"]);
        assert_eq!(
            p.pools,
            [
                ("p".to_string(), PoolStep::Update),
                ("r".to_string(), PoolStep::Add)
            ]
        );
        assert_eq!(p.drop_pools, ["q"]);
        assert_eq!(p.admin, AdminStep::Keep);
    }

    #[test]
    fn reuse_port_changes_and_renames_hand_the_sockets_over() {
        let old = config(&format!(
            "{}{}{}{POOLS}",
            listener("a", "udp", "127.0.0.1:7000", "p"),
            listener("old-name", "tcp", "127.0.0.1:7001", "p"),
            listener("anywhere", "tcp", "127.0.0.1:0", "p"),
        ));
        let next = config(&format!(
            "{}reuse_port = false\n{}{}{POOLS}",
            listener("a", "udp", "127.0.0.1:7000", "p"),
            listener("new-name", "tcp", "127.0.0.1:7001", "p"),
            listener("elsewhere", "tcp", "127.0.0.1:0", "p"),
        ));
        let p = plan(&current(&old), &next);
        assert_eq!(
            p.listeners,
            [
                ("a".to_string(), ListenerStep::TakeOver { from: "a".into() }),
                (
                    "new-name".to_string(),
                    ListenerStep::TakeOver {
                        from: "old-name".into()
                    }
                ),
                // Port 0 means a fresh port: nothing to hand over.
                ("elsewhere".to_string(), ListenerStep::Bind),
            ]
        );
        assert_eq!(
            p.retire,
            ["old-name", "anywhere"],
            "the old ones still drain their connections"
        );
    }

    #[test]
    fn admin_moves_and_stops() {
        let with = |bind: &str| {
            config(&format!(
                "{}[admin]\nbind = \"{bind}\"\n{POOLS}",
                listener("a", "tcp", "127.0.0.1:7000", "p")
            ))
        };
        let without = config(&format!(
            "{}{POOLS}",
            listener("a", "tcp", "127.0.0.1:7000", "p")
        ));
        let old = with("127.0.0.1:9901");
        assert_eq!(
            plan(&current(&old), &with("127.0.0.1:9902")).admin,
            AdminStep::Bind
        );
        assert_eq!(plan(&current(&old), &without).admin, AdminStep::Stop);
        assert_eq!(plan(&current(&without), &without).admin, AdminStep::Off);
        assert!(plan(&current(&old), &old).to_bind().next().is_none());
    }
}
