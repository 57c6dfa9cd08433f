//! UDP listeners: a session per client address. The first datagram picks a
//! backend and opens a socket connected to it; replies go back to the client
//! from the listener's socket. Each receive loop (one per SO_REUSEPORT
//! socket; the kernel keeps a client on one) owns its session table, so no
//! lock is taken per datagram; an atomic count bounds them together by
//! `max_sessions`. Sessions end after `idle_timeout` without a datagram
//! either way.
//!
//! It runs past 400 lines: the receive loop and the session start it calls
//! for each new client are the UDP hot path, read best in one file.

mod reply;
mod route;
mod session;
mod shared;
mod sock;
mod table;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::fds;
use crate::listener::limits::{SessionPermit, SessionRefusal};
use crate::listener::route::Route;
use crate::metrics::UdpListenerMetrics;
use crate::net::local_cause;
use crate::wire::proxy_protocol::{self, Transport};
use reply::{replies, ReplyTask};
use route::{Inspector, Verdict};
use session::{Link, Parts, SessionEnd};
pub use shared::UdpShared;
use shared::{Burst, MAX_DATAGRAM};
pub(crate) use sock::want_destination;
use table::{earliest, Alarm, Table, UdpSession};

/// What a receive loop took, added to the listener's shared counters when
/// the loop is about to wait or its burst is full.
#[derive(Default)]
struct Received(Burst);

impl Received {
    fn count(&mut self, bytes: usize, m: &UdpListenerMetrics) {
        if self.0.count(bytes) {
            self.flush(m);
        }
    }

    fn flush(&mut self, m: &UdpListenerMetrics) {
        if let Some((datagrams, bytes)) = self.0.take() {
            m.datagrams_in.inc_by(datagrams);
            m.bytes_in.inc_by(bytes);
        }
    }
}

/// One client datagram: its length, sender, and (on a wildcard listener)
/// the local address it was sent to. When none is waiting, what `received`
/// holds is counted before the loop sleeps.
async fn receive(
    socket: &UdpSocket,
    buf: &mut [u8],
    wildcard: bool,
    received: &mut Received,
    m: &UdpListenerMetrics,
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    let ready = if wildcard {
        socket.try_io(Interest::READABLE, || sock::recv_from_to(socket, buf))
    } else {
        socket.try_recv_from(buf).map(|(n, peer)| (n, peer, None))
    };
    match ready {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => received.flush(m),
        r => return r,
    }
    if wildcard {
        socket
            .async_io(Interest::READABLE, || sock::recv_from_to(socket, buf))
            .await
    } else {
        let (n, peer) = socket.recv_from(buf).await?;
        Ok((n, peer, None))
    }
}

/// A datagram dropped for want of the proxy's own resources: counted by
/// reason, logged at most once a second, never blamed on a backend.
fn local_drop(shared: &UdpShared, reason: &'static str, e: Option<&io::Error>) {
    shared.metrics.local.count(reason);
    if shared.warn_log.ready() {
        let error = e
            .map(|e| e.to_string())
            .unwrap_or_else(|| "the descriptor budget is spent".into());
        let listener = &shared.route.load().config.name;
        if reason == "source" {
            tracing::error!(%listener, error, "cannot send from the pool's source; dropping datagrams of new clients (logged at most once a second)");
        } else {
            tracing::error!(%listener, reason, error, "the proxy is out of its own resources; dropping datagrams of new clients (logged at most once a second)");
        }
    }
}

/// What a receive loop starts sessions with.
struct Starter<'a> {
    shared: &'a Arc<UdpShared>,
    socket: &'a Arc<UdpSocket>,
    /// The listener's own address (its port, for PROXY headers).
    bound: SocketAddr,
    ended: &'a mpsc::UnboundedSender<(SocketAddr, u64)>,
    next_id: u64,
}

impl<'a> Starter<'a> {
    /// Starts a session for `peer` on route `i` (`None`: the listener's
    /// pool) and sends it `first`, the client's datagrams so far.
    fn start(
        &mut self,
        route: &Arc<Route>,
        (peer, local): (SocketAddr, Option<IpAddr>),
        i: Option<usize>,
        first: &[&[u8]],
    ) -> Option<UdpSession<'a>> {
        let shared = self.shared;
        let m = &shared.metrics;
        // Replies go to `peer` as the socket gave it; limits, the pick and
        // the header see the client in its one form.
        let client = crate::wire::canonical(peer);
        // Claim a place first: receive loops of one listener share the bound.
        let place = match SessionPermit::claim(&shared.places, client.ip(), &route.config) {
            Ok(p) => p,
            Err(SessionRefusal::Table) => {
                m.dropped_full.inc_by(first.len() as u64);
                return None;
            }
            Err(SessionRefusal::Ip) => {
                m.dropped_ip_limit.inc_by(first.len() as u64);
                return None;
            }
        };
        let pool = route.pick_pool(i);
        let snap = pool.snapshot();
        let Some(pick) = snap.pick(client, &[]) else {
            m.dropped_no_backend.inc_by(first.len() as u64);
            return None;
        };
        let backend = snap.members[pick].backend.clone();
        let Some(fds) = fds::try_take_sparingly(1) else {
            local_drop(shared, "descriptors", None);
            return None;
        };
        // `check` refuses a UDP listener's pool of Unix sockets.
        let Some(to) = backend.addr.inet() else {
            m.dropped_no_backend.inc_by(first.len() as u64);
            return None;
        };
        let source = match backend.source_for(client.ip()) {
            Ok(s) => s,
            Err(e) => {
                local_drop(shared, "source", Some(&e));
                return None;
            }
        };
        let spread = route.config.per_datagram;
        let opened = if spread {
            sock::open_spread(to.is_ipv6(), source)
        } else {
            sock::open_upstream(to, source)
        };
        let upstream = match opened {
            Ok(u) => u,
            Err(e) => {
                match local_cause(&e) {
                    // The proxy's own shortage: no backend is to blame.
                    Some(reason) => local_drop(shared, reason, Some(&e)),
                    None => {
                        m.dropped_send.inc();
                        backend.count_failure(&e);
                        if shared.warn_log.ready() {
                            tracing::warn!(listener = %route.config.name, backend = %backend.addr, error = %e, "cannot open a UDP session socket (logged at most once a second)");
                        }
                    }
                }
                return None;
            }
        };
        let header = snap.config.proxy_protocol.map(|_| {
            let to = SocketAddr::new(local.unwrap_or(self.bound.ip()), self.bound.port());
            proxy_protocol::v2(Some((client, to)), Transport::Dgram, &[]).into_boxed_slice()
        });
        self.next_id += 1;
        let link = Arc::new(Link::new(Parts {
            upstream,
            guard: backend.open().established(),
            peer,
            local,
            id: self.next_id,
            now_ms: now_ms(),
            idle: route.config.idle_timeout,
            max_fails: snap.config.max_fails,
            fail_timeout: snap.config.fail_timeout,
            header,
            spread,
        }));
        for datagram in first {
            if spread {
                spread_forward(&link, datagram, &snap, m);
            } else {
                forward(&link, datagram, m);
            }
        }
        m.sessions.inc();
        m.sessions_total.inc();
        shared.tracker.spawn(replies(ReplyTask {
            shared: shared.clone(),
            listener: self.socket.clone(),
            link: link.clone(),
            ended: self.ended.clone(),
        }));
        Some(UdpSession { link, place, fds })
    }
}

/// Receives client datagrams until `stop` fires. Sessions then run on for
/// the replies still on their way (see `DRAIN_IDLE`), until the listener's
/// hard stop; the loop ends with its last session.
pub async fn recv_loop(socket: Arc<UdpSocket>, shared: Arc<UdpShared>, stop: CancellationToken) {
    // A session whose socket fails sends its address here once: at most
    // `max_sessions` messages are ever outstanding.
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut starter = Starter {
        shared: &shared,
        socket: &socket,
        bound: socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        ended: &ended_tx,
        next_id: 0,
    };
    let mut table = Table::new(&shared.places);
    // New clients of a listener with routes whose hello is not yet whole.
    let mut inspector = Inspector::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Made once: a wait made anew per datagram would take the token's lock twice.
    let stopped = stop.cancelled();
    let mut alarm = Alarm::new();
    let mut received = Received::default();
    // The mirror's socket, made on its first copy.
    let mut copies = crate::listener::mirror::Datagrams::new();
    tokio::pin!(stopped);
    loop {
        // The route is read for the hello timeout only while a hello waits.
        let hellos = inspector
            .next_deadline(|| shared.route.load().config.tls_inspect_timeout.as_millis() as u64);
        alarm.set(earliest(hellos, table.next_idle_ms()));
        let (n, peer, local) = tokio::select! {
            r = receive(&socket, &mut buf, shared.wildcard, &mut received, &shared.metrics) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier replies surface here on some
                    // systems; they concern one client, not the listener.
                    tracing::debug!(error = %e, "udp recv_from failed");
                    continue;
                }
            },
            Some((peer, id)) = ended_rx.recv() => {
                table.forget(peer, id);
                continue;
            }
            _ = alarm.rings() => {
                table.end_idle();
                // Hellos that never completed: the listener's pool, or
                // dropped under sni_required.
                let route = shared.route.load_full();
                for (peer, local, verdict) in inspector.expired(now_ms(), &route.config, &shared.metrics.inspected) {
                    match verdict {
                        Verdict::Go { route: i, held } => {
                            let first: Vec<&[u8]> = held.iter().map(|d| &d[..]).collect();
                            if let Some(s) = starter.start(&route, (peer, local), i, &first) {
                                table.insert(s);
                            }
                        }
                        Verdict::Drop(n) => shared.metrics.dropped_sni.inc_by(n),
                        Verdict::Wait => {}
                    }
                }
                continue;
            }
            // The hard stop never comes before this one (a listener stops,
            // then its grace ends), so it is not waited on per datagram.
            _ = &mut stopped => break,
        };
        let m = &shared.metrics;
        let route = shared.route.load();
        if !route.config.admits(crate::wire::canonical(peer).ip()) {
            m.rejected_denied.inc();
            continue;
        }
        received.count(n, m);
        if let Some(mirror) = &route.mirror {
            copies.offer(mirror, crate::wire::canonical(peer), &buf[..n]);
        }
        if let Some(link) = table.get(&peer) {
            if link.spread {
                spread_forward(link, &buf[..n], &route.pool.snapshot(), m);
                continue;
            }
            let backend = link.guard.backend();
            if backend.is_healthy() && !backend.is_retired() {
                forward(link, &buf[..n], m);
                continue;
            }
            // Its backend died or left the pool: end the session and pick
            // again, so the client does not notice.
            link.end(SessionEnd::Stopped);
            table.remove(&peer);
        }
        // The same snapshot, now kept for the session's lifetime.
        let route = arc_swap::Guard::into_inner(route);
        let session = if route.config.routes.is_empty() {
            starter.start(&route, (peer, local), None, &[&buf[..n]])
        } else {
            match inspector.offer(
                peer,
                local,
                &buf[..n],
                &route.config,
                &m.inspected,
                now_ms(),
            ) {
                Verdict::Wait => continue,
                Verdict::Drop(n) => {
                    m.dropped_sni.inc_by(n);
                    continue;
                }
                Verdict::Go { route: i, held } => {
                    let first: Vec<&[u8]> = held.iter().map(|d| &d[..]).collect();
                    starter.start(&route, (peer, local), i, &first)
                }
            }
        };
        if let Some(s) = session {
            table.insert(s);
        }
    }
    received.flush(&shared.metrics);
    // No new datagrams come this way: each session waits a short while for
    // replies still on their way, then ends, or all end at the hard stop.
    table.drain();
    let shutdown = shared.hard_stop.cancelled();
    tokio::pin!(shutdown);
    while !table.is_empty() {
        if shared.hard_stop.is_cancelled() {
            table.end_all();
            break;
        }
        alarm.set(table.next_idle_ms());
        tokio::select! {
            Some((peer, id)) = ended_rx.recv() => table.forget(peer, id),
            _ = alarm.rings() => table.end_idle(),
            _ = &mut shutdown => {}
        }
    }
}

/// Sends one client datagram of a per-datagram session to the backend
/// picked for it alone; with none available it is dropped and counted.
fn spread_forward(s: &Link, data: &[u8], snap: &crate::pool::Snapshot, m: &UdpListenerMetrics) {
    let client = crate::wire::canonical(s.peer);
    let Some(i) = snap.pick(client, &[]) else {
        m.dropped_no_backend.inc();
        return;
    };
    let backend = &snap.members[i].backend;
    s.last.store(now_ms(), Ordering::Relaxed);
    // `check` refuses a UDP listener's pool of Unix sockets.
    let Some(to) = backend.addr.inet() else {
        m.dropped_no_backend.inc();
        return;
    };
    match sock::send_to(&s.upstream, (s.header.as_deref(), data), to) {
        Ok(_) => {
            backend.metrics.bytes_out.inc_by(data.len() as u64);
            backend.metrics.connections.inc();
        }
        Err(e) => {
            m.dropped_send.inc();
            backend.count_failure(&e);
            tracing::debug!(backend = %backend.addr, error = %e, "udp send to backend failed");
        }
    }
}

/// Sends one client datagram on its session; a full socket buffer or an
/// earlier ICMP error drops it (UDP's own semantics) and counts it.
fn forward(s: &Link, data: &[u8], m: &UdpListenerMetrics) {
    s.last.store(now_ms(), Ordering::Relaxed);
    let sent = match &s.header {
        None => sock::send(&s.upstream, data),
        Some(h) => sock::send_after(&s.upstream, h, data),
    };
    match sent {
        Ok(_) => s
            .guard
            .backend()
            .metrics
            .bytes_out
            .inc_by(data.len() as u64),
        Err(e) => {
            m.dropped_send.inc();
            // An earlier ICMP port-unreachable surfaces on whichever call
            // comes first, this send or the reply task's receive; either way
            // it counts against the backend.
            let backend = s.guard.backend();
            if e.kind() == io::ErrorKind::ConnectionRefused {
                backend.count_failure(&e);
                backend.connect_failed(s.max_fails, s.fail_timeout());
            }
            tracing::debug!(backend = %backend.addr, error = %e, "udp send to backend failed");
        }
    }
}
