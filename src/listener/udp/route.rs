//! A UDP listener with routes: a new client's first datagrams are read as
//! QUIC Initial packets for the server name in their ClientHello, which
//! picks the route of the session; the session then stays where it began.
//! A hello longer than one datagram is waited for (its datagrams held, at
//! most [`MAX_HELD`] of them, for at most `tls_inspect_timeout`); anything
//! that is not a QUIC Initial is decided at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::config::{route_for, ListenerConfig};
use crate::metrics::Inspected;
use crate::wire::hello::{self, NotHello};
use crate::wire::quic::{read_initials, Crypto, NotInitial};

/// Clients a receive loop waits on at once; past it, a new client whose
/// hello is incomplete goes to the listener's pool at once.
const MAX_PENDING: usize = 1024;

/// Clients one source address may have waiting at once (a sixteenth of
/// the table): one host cycling through source ports cannot take every
/// place and push other clients' split hellos to the listener's pool.
const MAX_PENDING_PER_IP: u32 = (MAX_PENDING / 16) as u32;

/// Datagrams held per waiting client.
const MAX_HELD: usize = 8;

/// Bytes held for all waiting clients of a receive loop together: past it, a
/// client whose hello is incomplete goes to the listener's pool at once, so
/// forged Initials cannot make the proxy hoard memory.
const MAX_HELD_BYTES: usize = 4 * 1024 * 1024;

/// A client whose ClientHello is not yet whole.
struct PendingHello {
    crypto: Crypto,
    held: Vec<Box<[u8]>>,
    local: Option<IpAddr>,
    since_ms: u64,
}

/// What to do with a new client's datagram.
pub(super) enum Verdict {
    /// Held: the hello goes on in a later datagram.
    Wait,
    /// Start the session on route `route` (`None`: the listener's pool)
    /// and send it `held`, in order (this datagram last).
    Go {
        route: Option<usize>,
        held: Vec<Box<[u8]>>,
    },
    /// `sni_required`, and no name: drop these many datagrams.
    Drop(u64),
}

/// One receive loop's clients that are still being read.
#[derive(Default)]
pub(super) struct Inspector {
    pending: HashMap<SocketAddr, PendingHello>,
    /// Waiting clients per source address (in its canonical form).
    per_ip: HashMap<IpAddr, u32>,
    /// Bytes of the datagrams held in `pending`.
    held_bytes: usize,
}

/// The metrics label of a datagram that gave no hello.
fn why(e: NotInitial) -> &'static str {
    match e {
        NotInitial::NotQuic | NotInitial::Version(_) => NotHello::NotTls.as_str(),
        NotInitial::TooLarge => NotHello::TooLarge.as_str(),
        NotInitial::Undecryptable | NotInitial::Malformed => NotHello::Malformed.as_str(),
    }
}

/// The verdict for a client whose hello gave `result`.
fn decide(
    config: &ListenerConfig,
    m: &Inspected,
    result: Result<hello::Hello, &'static str>,
    held: Vec<Box<[u8]>>,
) -> Verdict {
    match result {
        Ok(h) => {
            let route = route_for(&config.routes, h.sni.as_deref(), &h.alpn);
            match (&h.sni, route) {
                (_, Some(_)) => m.sni.inc(),
                (Some(_), None) => m.no_match.inc(),
                (None, None) => {
                    m.no_sni.inc();
                    if config.sni_required {
                        return Verdict::Drop(held.len() as u64);
                    }
                }
            }
            Verdict::Go { route, held }
        }
        Err(why) => {
            m.by(why).inc();
            if config.sni_required {
                Verdict::Drop(held.len() as u64)
            } else {
                Verdict::Go { route: None, held }
            }
        }
    }
}

/// The bytes a waiting client's held datagrams take.
fn size(p: &PendingHello) -> usize {
    p.held.iter().map(|d| d.len()).sum()
}

impl Inspector {
    /// Takes a waiting client out, its held bytes with it.
    fn take(&mut self, peer: &SocketAddr) -> Option<PendingHello> {
        let p = self.pending.remove(peer)?;
        self.held_bytes -= size(&p);
        let ip = crate::wire::canonical(*peer).ip();
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some(p)
    }

    /// Holds a waiting client.
    fn hold(&mut self, peer: SocketAddr, p: PendingHello) {
        self.held_bytes += size(&p);
        *self
            .per_ip
            .entry(crate::wire::canonical(peer).ip())
            .or_insert(0) += 1;
        self.pending.insert(peer, p);
    }

    /// Whether a new client from `peer` finds no place to wait: the table
    /// is full, or its address has its share.
    fn no_place(&self, peer: SocketAddr) -> bool {
        self.pending.len() >= MAX_PENDING
            || self
                .per_ip
                .get(&crate::wire::canonical(peer).ip())
                .is_some_and(|&n| n >= MAX_PENDING_PER_IP)
    }

    /// Reads a datagram of a client without a session.
    pub fn offer(
        &mut self,
        peer: SocketAddr,
        local: Option<IpAddr>,
        datagram: &[u8],
        config: &ListenerConfig,
        m: &Inspected,
        now_ms: u64,
    ) -> Verdict {
        let known = self.pending.contains_key(&peer);
        let mut p = self.take(&peer).unwrap_or_else(|| PendingHello {
            crypto: Crypto::default(),
            held: Vec::new(),
            local,
            since_ms: now_ms,
        });
        p.held.push(datagram.into());
        let result = match read_initials(datagram, &mut p.crypto) {
            Ok(()) => hello::from_handshake(p.crypto.contiguous()).map_err(NotHello::as_str),
            // A client's later datagram that is not an Initial (0-RTT): held
            // with the rest while its hello is awaited.
            Err(NotInitial::NotQuic) if known => Ok(None),
            Err(e) => Err(why(e)),
        };
        match result {
            Ok(Some(h)) => decide(config, m, Ok(h), p.held),
            Ok(None) if p.held.len() >= MAX_HELD => {
                decide(config, m, Err(NotHello::TooLarge.as_str()), p.held)
            }
            Ok(None)
                if (!known && self.no_place(peer))
                    || self.held_bytes + size(&p) > MAX_HELD_BYTES =>
            {
                decide(config, m, Err("timeout"), p.held)
            }
            Ok(None) => {
                self.hold(peer, p);
                Verdict::Wait
            }
            Err(why) => decide(config, m, Err(why), p.held),
        }
    }

    /// When the oldest waiting client's time is up, if any waits; the
    /// timeout is asked for only then.
    pub fn next_deadline(&self, timeout_ms: impl FnOnce() -> u64) -> Option<u64> {
        let oldest = self.pending.values().map(|p| p.since_ms).min()?;
        Some(oldest.saturating_add(timeout_ms()))
    }

    /// The clients whose time is up, with their verdicts (the listener's
    /// pool, or a drop under `sni_required`).
    pub fn expired(
        &mut self,
        now_ms: u64,
        config: &ListenerConfig,
        m: &Inspected,
    ) -> Vec<(SocketAddr, Option<IpAddr>, Verdict)> {
        let timeout_ms = config.tls_inspect_timeout.as_millis() as u64;
        let late: Vec<SocketAddr> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since_ms.saturating_add(timeout_ms) <= now_ms)
            .map(|(a, _)| *a)
            .collect();
        late.into_iter()
            .filter_map(|a| self.take(&a).map(|p| (a, p)))
            .map(|(a, p)| (a, p.local, decide(config, m, Err("timeout"), p.held)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::wire::hello::tests::client_hello;
    use crate::wire::quic::tests::{crypto_frame, initial};

    fn listener() -> ListenerConfig {
        let text = "[[listeners]]\nname = \"q\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
                    [[listeners.routes]]\nsni = [\"quic.example\"]\npool = \"p\"\n\
                    [pools.p]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n";
        crate::Config::parse(text, std::path::Path::new("t.toml"))
            .unwrap()
            .listeners
            .remove(0)
    }

    #[test]
    fn a_split_hello_is_waited_for_and_held_bytes_are_bounded() {
        let (config, m) = (listener(), Metrics::new().udp_listener("q"));
        let msg = client_hello(Some("quic.example"), &["h3"], 1500);
        let mut inspector = Inspector::default();
        // The first half of a hello is held; the second completes it.
        let peer: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let a = initial(&[1; 8], 0, &crypto_frame(0, &msg[..1000]), 1160);
        let b = initial(&[1; 8], 1, &crypto_frame(1000, &msg[1000..]), 1160);
        assert!(matches!(
            inspector.offer(peer, None, &a, &config, &m.inspected, 0),
            Verdict::Wait
        ));
        match inspector.offer(peer, None, &b, &config, &m.inspected, 1) {
            Verdict::Go { route, held } => assert_eq!((route, held.len()), (Some(0), 2)),
            _ => panic!("the whole hello routes"),
        }
        assert_eq!(inspector.held_bytes, 0);
        // Clients that only ever send a first half fill the byte budget, and
        // then go on at once instead of being held.
        let mut waited = 0;
        for i in 0..4000u32 {
            let peer = SocketAddr::from(([127, 0, (i >> 8) as u8, i as u8], 6000));
            match inspector.offer(peer, None, &a, &config, &m.inspected, 2) {
                Verdict::Wait => waited += 1,
                Verdict::Go { route: None, .. } => {}
                _ => panic!("an incomplete hello goes to the listener's pool"),
            }
        }
        assert!(inspector.held_bytes <= MAX_HELD_BYTES);
        assert!(
            waited < 4000 && waited * a.len() <= MAX_HELD_BYTES,
            "{waited} held"
        );
        assert!(m.inspected.timeout.get() > 0);
    }

    /// One host cycling through source ports (1,030 of them here) gets its
    /// share of the waiting places, not all of them: another client's hello
    /// split over two datagrams is still waited for and routed.
    #[test]
    fn one_address_gets_only_its_share_of_waiting_places() {
        let (config, m) = (listener(), Metrics::new().udp_listener("q"));
        let msg = client_hello(Some("quic.example"), &["h3"], 1500);
        let a = initial(&[1; 8], 0, &crypto_frame(0, &msg[..1000]), 1160);
        let b = initial(&[1; 8], 1, &crypto_frame(1000, &msg[1000..]), 1160);
        let mut inspector = Inspector::default();
        let mut waited = 0;
        for port in 0..1030u16 {
            let attacker = SocketAddr::from(([127, 0, 0, 9], 10_000 + port));
            if let Verdict::Wait = inspector.offer(attacker, None, &a, &config, &m.inspected, 0) {
                waited += 1;
            }
        }
        assert_eq!(waited, MAX_PENDING_PER_IP, "one address's share");
        // The same host in its mapped form has no second share.
        let mapped: SocketAddr = "[::ffff:127.0.0.9]:9999".parse().unwrap();
        assert!(!matches!(
            inspector.offer(mapped, None, &a, &config, &m.inspected, 0),
            Verdict::Wait
        ));
        let client: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        assert!(matches!(
            inspector.offer(client, None, &a, &config, &m.inspected, 1),
            Verdict::Wait
        ));
        match inspector.offer(client, None, &b, &config, &m.inspected, 2) {
            Verdict::Go { route, held } => assert_eq!((route, held.len()), (Some(0), 2)),
            _ => panic!("the legitimate client's whole hello routes"),
        }
        // Places come back as hellos complete or time out.
        let _ = inspector.expired(u64::MAX, &config, &m.inspected);
        assert!(inspector.per_ip.is_empty() && inspector.pending.is_empty());
    }
}
