//! UDP listeners: a session per client address. The first datagram picks a
//! backend and opens a socket connected to it; replies go back to the client
//! from the listener's socket. Each receive loop (one per SO_REUSEPORT
//! socket; the kernel keeps a client on one) owns its session table, so no
//! lock is taken per datagram; an atomic count bounds them together by
//! `max_sessions`. Sessions end after `idle_timeout` without a datagram
//! either way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::udp_io;
use super::udp_place::{Full, Place, Places};
use super::Route;
use crate::backend::{ActiveGuard, Backend};
use crate::clock::{now_ms, Every};
use crate::fds::{self, Held};
use crate::metrics::UdpListenerMetrics;
use crate::net::local_cause;

/// Once its listener stops, a session waits this long after its last
/// datagram for replies still on their way, then ends.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// The largest UDP payload; one buffer per worker thread, never per session.
const MAX_DATAGRAM: usize = 65_535;

thread_local! {
    static DGRAM_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_DATAGRAM].into_boxed_slice());
}

/// State shared by a UDP listener's tasks.
pub struct UdpShared {
    pub route: ArcSwap<Route>,
    pub metrics: UdpListenerMetrics,
    pub tracker: TaskTracker,
    /// Places of its sessions, under `max_sessions` and `max_sessions_per_ip`.
    pub places: Places,
    /// Paces warnings that a flood of datagrams could repeat.
    pub warn_log: Every,
    /// Ends every session (the listener's grace is over).
    pub hard_stop: CancellationToken,
    /// Bound to a wildcard address: replies must name their source.
    pub wildcard: bool,
}

/// One client datagram: its length, sender, and (on a wildcard listener)
/// the local address it was sent to.
async fn receive(
    socket: &UdpSocket,
    buf: &mut [u8],
    wildcard: bool,
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    if wildcard {
        socket
            .async_io(Interest::READABLE, || udp_io::recv_from_to(socket, buf))
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
        tracing::error!(listener = %shared.route.load().config.name, reason, error, "the proxy is out of its own resources; dropping datagrams of new clients (logged at most once a second)");
    }
}

struct Session<'a> {
    _place: Place<'a>,
    /// The session socket's descriptor, in the data plane's budget.
    _fds: Held,
    id: u64,
    upstream: Arc<UdpSocket>,
    backend: Arc<Backend>,
    last: Arc<AtomicU64>,
    stop: CancellationToken,
    /// The pool's passive-health settings when the session began.
    max_fails: u32,
    fail_timeout: Duration,
}

/// Receives client datagrams until `stop` fires. Sessions then run on for
/// the replies still on their way (see `DRAIN_IDLE`), until the listener's
/// hard stop.
pub async fn recv_loop(socket: Arc<UdpSocket>, shared: Arc<UdpShared>, stop: CancellationToken) {
    let mut sessions: HashMap<SocketAddr, Session<'_>> = HashMap::new();
    // Each session sends its address here once, when it ends: at most
    // `max_sessions` messages are ever outstanding.
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut next_id = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer, local) = tokio::select! {
            r = receive(&socket, &mut buf, shared.wildcard) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier replies surface here on some
                    // systems; they concern one client, not the listener.
                    tracing::debug!(error = %e, "udp recv_from failed");
                    continue;
                }
            },
            Some((peer, id)) = ended_rx.recv() => {
                if sessions.get(&peer).is_some_and(|s| s.id == id) {
                    sessions.remove(&peer);
                }
                continue;
            }
            _ = stop.cancelled() => break,
        };
        let m = &shared.metrics;
        let route = shared.route.load();
        if !route.config.admits(peer.ip()) {
            m.rejected_denied.inc();
            continue;
        }
        m.datagrams_in.inc();
        m.bytes_in.inc_by(n as u64);
        if let Some(s) = sessions.get(&peer) {
            if s.backend.is_healthy() && !s.backend.is_retired() {
                forward(s, &buf[..n], m);
                continue;
            }
            // Its backend died or left the pool: end the session and pick
            // again, so the client does not notice.
            s.stop.cancel();
            sessions.remove(&peer);
        }
        // The same snapshot, now kept for the session's lifetime.
        let route = arc_swap::Guard::into_inner(route);
        // Claim a place first: receive loops of one listener share the bound.
        let place = match Place::claim(&shared.places, peer.ip(), &route.config) {
            Ok(p) => p,
            Err(Full::Table) => {
                m.dropped_full.inc();
                continue;
            }
            Err(Full::Ip) => {
                m.dropped_ip_limit.inc();
                continue;
            }
        };
        let snap = route.pool.snapshot();
        let Some(i) = snap.pick(peer, &[]) else {
            m.dropped_no_backend.inc();
            continue;
        };
        let backend = snap.members[i].backend.clone();
        let Some(fds) = fds::try_take_sparingly(1) else {
            local_drop(&shared, "descriptors", None);
            continue;
        };
        let upstream = match udp_io::open_upstream(backend.addr) {
            Ok(u) => Arc::new(u),
            Err(e) => {
                match local_cause(&e) {
                    // The proxy's own shortage: no backend is to blame.
                    Some(reason) => local_drop(&shared, reason, Some(&e)),
                    None => {
                        m.dropped_send.inc();
                        backend.count_failure(&e);
                        if shared.warn_log.ready() {
                            tracing::warn!(listener = %route.config.name, backend = %backend.addr, error = %e, "cannot open a UDP session socket (logged at most once a second)");
                        }
                    }
                }
                continue;
            }
        };
        next_id += 1;
        let session = Session {
            _place: place,
            _fds: fds,
            id: next_id,
            upstream: upstream.clone(),
            backend: backend.clone(),
            last: Arc::new(AtomicU64::new(now_ms())),
            stop: CancellationToken::new(),
            max_fails: snap.config.max_fails,
            fail_timeout: snap.config.fail_timeout,
        };
        forward(&session, &buf[..n], m);
        m.sessions.inc();
        m.sessions_total.inc();
        shared.tracker.spawn(replies(ReplyTask {
            shared: shared.clone(),
            listener: socket.clone(),
            upstream,
            peer,
            local,
            id: next_id,
            last: session.last.clone(),
            idle: route.config.idle_timeout,
            access_log: route.config.access_log,
            stop: session.stop.clone(),
            listener_stop: stop.clone(),
            ended: ended_tx.clone(),
            guard: backend.open().established(),
            max_fails: session.max_fails,
            fail_timeout: session.fail_timeout,
        }));
        sessions.insert(peer, session);
    }
    // Sessions are not ended here: each drains on its own (replies to
    // datagrams already forwarded still reach their clients).
}

/// Sends one client datagram on its session; a full socket buffer or an
/// earlier ICMP error drops it (UDP's own semantics) and counts it.
fn forward(s: &Session, data: &[u8], m: &UdpListenerMetrics) {
    s.last.store(now_ms(), Ordering::Relaxed);
    match udp_io::send(&s.upstream, data) {
        Ok(_) => s.backend.metrics.bytes_out.inc_by(data.len() as u64),
        Err(e) => {
            m.dropped_send.inc();
            // An earlier ICMP port-unreachable surfaces on whichever call
            // comes first, this send or the reply task's receive; either way
            // it counts against the backend.
            if e.kind() == io::ErrorKind::ConnectionRefused {
                s.backend.count_failure(&e);
                s.backend.connect_failed(s.max_fails, s.fail_timeout);
            }
            tracing::debug!(backend = %s.backend.addr, error = %e, "udp send to backend failed");
        }
    }
}

struct ReplyTask {
    shared: Arc<UdpShared>,
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    peer: SocketAddr,
    /// The address the client sent its first datagram to (wildcard listeners).
    local: Option<IpAddr>,
    id: u64,
    last: Arc<AtomicU64>,
    idle: Duration,
    access_log: bool,
    /// Ends the session at once (its backend went away: the client re-picks).
    stop: CancellationToken,
    /// The receive loop's stop: the session then drains.
    listener_stop: CancellationToken,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    guard: ActiveGuard,
    max_fails: u32,
    fail_timeout: Duration,
}

enum Got {
    Nothing,
    Relayed(usize),
    ClientUnreachable(io::Error),
    BackendError(io::Error),
}

/// Carries a session's replies back to its client until it is idle or stopped.
async fn replies(t: ReplyTask) {
    let m = &t.shared.metrics;
    let backend = t.guard.backend();
    let started = tokio::time::Instant::now();
    let (mut datagrams_out, mut bytes_out) = (0u64, 0u64);
    let mut idle_ms = t.idle.as_millis() as u64;
    let mut draining = false;
    let end = loop {
        let deadline = t.last.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = now_ms();
        if now >= deadline {
            break "idle_timeout";
        }
        // ERROR readiness too: an ICMP port-unreachable raises only EPOLLERR.
        tokio::select! {
            r = t.upstream.ready(Interest::READABLE | Interest::ERROR) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "udp session socket failed");
                    break "error";
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(deadline - now)) => continue,
            _ = t.stop.cancelled() => break "stopped",
            _ = t.shared.hard_stop.cancelled() => break "shutdown",
            _ = t.listener_stop.cancelled(), if !draining => {
                // The listener stopped (shutdown, reload, upgrade): no new
                // datagrams come this way; wait for replies a short while.
                draining = true;
                idle_ms = idle_ms.min(DRAIN_IDLE.as_millis() as u64);
                continue;
            }
        }
        let got = DGRAM_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            match udp_io::recv(&t.upstream, &mut buf) {
                Ok(n) => match udp_io::reply(&t.listener, &buf[..n], t.peer, t.local) {
                    Ok(_) => Got::Relayed(n),
                    Err(e) => Got::ClientUnreachable(e),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Nothing,
                Err(e) => Got::BackendError(e),
            }
        });
        match got {
            Got::Nothing => {}
            Got::Relayed(n) => {
                t.last.store(now_ms(), Ordering::Relaxed);
                datagrams_out += 1;
                bytes_out += n as u64;
                m.datagrams_out.inc();
                m.bytes_out.inc_by(n as u64);
                backend.metrics.bytes_in.inc_by(n as u64);
            }
            Got::ClientUnreachable(e) => {
                m.dropped_send.inc();
                tracing::debug!(backend = %backend.addr, error = %e, "udp reply not delivered");
            }
            // ICMP port unreachable from the backend: passive health counts it
            // like a refused TCP connect, so a dead backend is taken out and
            // the client's next datagram is re-picked elsewhere.
            Got::BackendError(e) => {
                backend.count_failure(&e);
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    backend.connect_failed(t.max_fails, t.fail_timeout);
                }
                tracing::debug!(backend = %backend.addr, error = %e, "udp session socket error");
            }
        }
    };
    m.sessions.dec();
    // The receive loop may be gone already (shutdown); then nobody needs telling.
    let _ = t.ended.send((t.peer, t.id));
    if t.access_log {
        let route = t.shared.route.load();
        tracing::info!(
            target: "switchyard::access",
            listener = %route.config.name,
            client = %t.peer,
            backend = %backend.addr,
            datagrams_out,
            bytes_out,
            duration_ms = started.elapsed().as_millis() as u64,
            end,
            "udp session"
        );
    }
}
