//! A TCP connection with TLS on either side: the client's ended here (the
//! listener's or its route's certificate), the backend's started here (the
//! pool's `tls`), or both. The handshake with the client comes before any
//! backend is picked, so a client that fails it costs no backend anything;
//! the bytes then go through `relay_streams`, which copies (TLS cannot be
//! spliced), and the connection ends like any other (`carry::finish`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;

use super::carry::{self, Before};
use super::connect::{connect, refused_connect, ConnectRefusal, Preamble, TcpUpstream};
use super::greet::{self, Greeting};
use super::shared::{LocalStops, TcpShared};
use crate::listener::route::Route;
use crate::pool::{Pool, Snapshot};
use crate::relay::{self, RelayEnd, Side};
use crate::tls::{Accepted, Rewound};
use crate::wire::proxy_protocol::{self, TlsFacts};

/// Where a connection with TLS stands when it leaves `conn::serve`.
pub(super) struct TlsStart<'a> {
    pub shared: &'a TcpShared,
    pub stops: &'a LocalStops,
    pub route: &'a Route,
    pub pool: &'a Arc<Pool>,
    /// The pool as the connection's path was chosen by.
    pub snap: Arc<Snapshot>,
    /// The client (a PROXY header's, or the peer).
    pub who: SocketAddr,
    pub greeting: Option<Box<Greeting>>,
    /// When the client was accepted (`clock::now_us`).
    pub started: u64,
}

/// Serves one connection whose client or backend side (or both) speaks TLS.
pub(super) async fn serve(s: TlsStart<'_>, client: TcpStream) {
    let TlsStart {
        shared,
        stops,
        route,
        pool,
        snap,
        who,
        greeting,
        started,
    } = s;
    let m = &shared.metrics;
    let name = route.config.name.as_str();
    let mut greeting = greeting.map(|g| *g).unwrap_or_default();
    let early = std::mem::take(&mut greeting.early);
    let (mut client, session, early) = match route.config.terminator(greeting.route) {
        Some(t) => {
            let began = Instant::now();
            let accepted = t
                .built
                .accept(
                    Rewound::new(early, client),
                    route.config.tls_handshake_timeout,
                )
                .await;
            let handshakes = route.tls.as_ref().map(|t| &t.handshakes);
            match accepted {
                Ok(Accepted { stream, session }) => {
                    if let Some(h) = handshakes {
                        h.count("ok");
                        h.seconds.observe(began.elapsed().as_secs_f64());
                    }
                    (Either::Left(stream), Some(session), Vec::new())
                }
                Err(result) => {
                    if let Some(h) = handshakes {
                        h.count(result);
                    }
                    tracing::debug!(listener = name, client = %who, result, "TLS handshake with the client failed");
                    return;
                }
            }
        }
        None => (Either::Right(client), None, early),
    };
    let mut tlvs = std::mem::take(&mut greeting.tlvs);
    if let Some(e) = &session {
        tlvs.extend(proxy_protocol::tls_tlvs(&TlsFacts {
            version: e.version,
            server_name: e.server_name.as_deref(),
            client_cert: e.client_cert,
            verified: e.client_verified,
            common_name: e.client_cn.as_deref(),
        }));
    }
    let socket: &TcpStream = match &client {
        Either::Left(tls) => tls.get_ref().0.socket(),
        Either::Right(plain) => plain,
    };
    // Our own end is asked of the socket only when a header needs it.
    let header = greet::header(
        socket,
        who,
        snap.config.proxy_protocol,
        greeting.local,
        &tlvs,
    );
    let sent_early = early.len() as u64;
    let preamble = Preamble {
        header: header.len(),
        bytes: [header, early].concat(),
    };
    let connected = tokio::select! {
        c = connect((pool, &snap), who, name, &preamble) => c,
        _ = stops.hard.cancelled() => Err(ConnectRefusal::NoBackend),
    };
    let (upstream, guard) = match connected {
        Ok(c) => c,
        Err(refusal) => {
            refused_connect(shared, name, who, refusal);
            return;
        }
    };
    drop(preamble);
    if sent_early > 0 {
        m.bytes_in.inc_by(sent_early);
        guard.backend().metrics.bytes_out.inc_by(sent_early);
    }
    let mut backend = match upstream {
        TcpUpstream::Plain(s) => Either::Right(s),
        TcpUpstream::Tls(t) => Either::Left(*t),
    };
    let b = guard.backend();
    // Keepalive from the start: next to a handshake, its cost is nothing.
    if let Some(idle) = carry::backend_keepalive(pool, b) {
        let sock = match &backend {
            Either::Left(tls) => tls.get_ref().0,
            Either::Right(plain) => plain,
        };
        if let Err(e) = crate::net::keepalive(socket2::SockRef::from(sock), Some(idle)) {
            tracing::debug!(error = %e, "cannot turn keepalive on for a backend connection");
        }
    }
    let (_, up, down) = carry::meters(route, pool, m, b);
    let idle = route.config.idle_timeout;
    let (outcome, closed_as_down) = match b.down_watch() {
        None => {
            let o =
                relay::relay_streams(&mut client, &mut backend, idle, &stops.hard, up, down).await;
            (o, false)
        }
        Some((grace, signal)) => {
            let own = stops.hard.child_token();
            let relaying = relay::relay_streams(&mut client, &mut backend, idle, &own, up, down);
            carry::until_down(relaying, &own, grace, signal).await
        }
    };
    if let RelayEnd::Reset(side) | RelayEnd::Error(side) = outcome.end {
        // The other side learns of the abort as an abort.
        let other: &TcpStream = match side {
            Side::Client => match &backend {
                Either::Left(tls) => tls.get_ref().0,
                Either::Right(plain) => plain,
            },
            Side::Backend => match &client {
                Either::Left(tls) => tls.get_ref().0.socket(),
                Either::Right(plain) => plain,
            },
        };
        if let Err(e) = socket2::SockRef::from(other).set_linger(Some(std::time::Duration::ZERO)) {
            tracing::debug!(error = %e, "cannot set SO_LINGER for an abortive close");
        }
    }
    carry::finish(
        (shared, route, pool, &guard, &who),
        outcome,
        closed_as_down,
        Before {
            started,
            up: sent_early,
            down: 0,
        },
        session.as_ref(),
    );
}
