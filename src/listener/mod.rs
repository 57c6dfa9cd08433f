//! A listener's life: launch on its bound sockets (`bind`: all that can
//! fail, done first on start and reload), re-point at a new pool, retire.
//! The paths a packet takes are folders beside it: `tcp` (accept, greet,
//! connect, carry, hand over) and `udp` (the receive loop and sessions).
//!
//! It runs past 400 lines: a listener's whole life (launch, reroute,
//! retire, hand on, adopt, its totals) reads in one place; the making of
//! its sockets is in `bind.rs`, each protocol's loop in its folder.

mod bind;
pub(crate) mod limits;
mod mirror;
mod route;
pub(crate) mod tcp;
pub(crate) mod udp;

pub use tcp::handover;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenerConfig;
use crate::endpoint::Endpoint;
use crate::metrics::Metrics;
use crate::net;
use crate::workers;

/// A listener's totals: connections (TCP) or sessions (UDP) made and
/// open, and bytes each way; for UDP, datagrams and drops too.
pub(crate) struct ListenerTotals {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Connections or sessions made.
    pub new: u64,
    /// Connections or sessions open now.
    pub active: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// A UDP listener's datagrams and drops.
    pub udp: Option<UdpTotals>,
}

/// A UDP listener's datagram totals.
pub(crate) struct UdpTotals {
    /// Datagrams from clients.
    pub datagrams_in: u64,
    /// Datagrams dropped, every reason counted.
    pub dropped: u64,
}

impl ListenerTotals {
    /// In the order of the history's series for its protocol.
    pub(crate) fn values(&self) -> Vec<u64> {
        let mut v = vec![self.new, self.active, self.bytes_in, self.bytes_out];
        if let Some(u) = &self.udp {
            v.extend([u.datagrams_in, u.dropped]);
        }
        v
    }
}

/// Handed-over connections taken so far: which worker takes the next.
static ADOPTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

use bind::take_over_fds;
pub use bind::BindError;
pub(crate) use bind::{bind, Bound, SocketFile};
pub(crate) use route::{Pools, Route};

/// What a launched listener hangs its tasks and series on.
pub(crate) struct Tasks<'a> {
    pub metrics: &'a Metrics,
    /// Parent of the listener's `stop`.
    pub accept_stop: &'a CancellationToken,
    /// Parent of the listener's `hard_stop`.
    pub hard_stop: &'a CancellationToken,
    /// Accept loops and connections.
    pub tracker: &'a TaskTracker,
    /// Parent of timers that outlive a reload (a retired listener's grace).
    pub background: &'a CancellationToken,
    /// Tracks those timers.
    pub bg_tracker: &'a TaskTracker,
    /// A binary upgrade's hand-over of established connections.
    pub handover: &'a Arc<handover::Handover>,
}

enum Sockets {
    /// With its listening sockets, weakly: the accept loops own them, so
    /// they close as soon as the listener stops accepting.
    Tcp(
        Arc<tcp::TcpShared>,
        Vec<Weak<AsyncFd<std::net::TcpListener>>>,
    ),
    /// With its sockets, weakly, likewise.
    Udp(Arc<udp::UdpShared>, Vec<Weak<tokio::net::UdpSocket>>),
}

/// A listener that is serving.
pub(crate) struct Listener {
    pub config: ListenerConfig,
    kind: Sockets,
    /// Stops accepting (or receiving) on this listener.
    pub stop: CancellationToken,
    /// Ends this listener's established connections.
    pub hard_stop: CancellationToken,
    /// The bound address.
    pub addr: Endpoint,
    /// A Unix listener's socket file, shared with a listener that took its
    /// socket over.
    file: Option<Arc<SocketFile>>,
}

impl Listener {
    /// Starts serving on freshly bound sockets.
    pub fn launch(config: ListenerConfig, bound: Bound, pools: Pools, cx: &Tasks<'_>) -> Listener {
        let stop = cx.accept_stop.child_token();
        let hard_stop = cx.hard_stop.child_token();
        let route = arc_swap::ArcSwap::from_pointee(Route::new(&config, pools, cx.metrics, None));
        let addr = bound.local_addr(config.bind);
        let mut file = None;
        let kind = match bound {
            Bound::Tcp(sockets, made) => {
                file = made;
                let shared = Arc::new(tcp::TcpShared {
                    route,
                    metrics: cx.metrics.tcp_listener(&config.name),
                    limit: Arc::new(Semaphore::new(config.max_connections.get())),
                    owed: Default::default(),
                    hard_stop: hard_stop.clone(),
                    tracker: cx.tracker.clone(),
                    local_log: crate::clock::Every::ms(1000),
                    clients: Default::default(),
                    handover: cx.handover.clone(),
                });
                let mut watched = Vec::new();
                for w in accepting(sockets) {
                    let handle = workers::handle(w.worker);
                    let listener = {
                        let _on = handle.enter();
                        Arc::new(net::watch_listener(w.socket).expect("tokio runtime is running"))
                    };
                    if !w.copy {
                        watched.push(Arc::downgrade(&listener));
                    }
                    cx.tracker.spawn_on(
                        tcp::accept_loop(listener, shared.clone(), stop.clone()),
                        &handle,
                    );
                }
                Sockets::Tcp(shared, watched)
            }
            Bound::Udp(sockets) => {
                let shared = Arc::new(udp::UdpShared {
                    route,
                    metrics: cx.metrics.udp_listener(&config.name),
                    tracker: cx.tracker.clone(),
                    places: Default::default(),
                    wildcard: config.bind.inet().is_some_and(|a| a.ip().is_unspecified()),
                    warn_log: crate::clock::Every::ms(1000),
                    hard_stop: hard_stop.clone(),
                });
                let mut watched = Vec::new();
                for s in sockets {
                    if let Some(bind) = config.bind.inet().filter(|a| a.ip().is_unspecified()) {
                        if let Err(e) = udp::want_destination(&s, bind.is_ipv6()) {
                            tracing::warn!(listener = %config.name, error = %e, "cannot learn datagrams' destination addresses; replies leave from the kernel's choice");
                        }
                    }
                    let handle = workers::handle(watched.len());
                    let socket = {
                        let _on = handle.enter();
                        Arc::new(
                            tokio::net::UdpSocket::from_std(s).expect("tokio runtime is running"),
                        )
                    };
                    watched.push(Arc::downgrade(&socket));
                    cx.tracker.spawn_on(
                        udp::recv_loop(socket, shared.clone(), stop.clone()),
                        &handle,
                    );
                }
                Sockets::Udp(shared, watched)
            }
        };
        tracing::info!(listener = %config.name, protocol = config.protocol.as_str(), %addr, pool = %config.pool, "listening");
        Listener {
            config,
            kind,
            stop,
            hard_stop,
            addr,
            file,
        }
    }
}

/// One listening socket and the worker that watches it.
struct WatchedSocket {
    worker: usize,
    socket: std::net::TcpListener,
    /// A copy of another watch's descriptor (the same socket).
    copy: bool,
}

/// Which worker watches which socket: socket `i` on worker `i`; where the
/// data plane has more workers than sockets (no `reuse_port`), the others
/// watch copies of the sockets' descriptors, so every worker accepts.
/// Without started workers, each socket once, as given.
fn accepting(sockets: Vec<std::net::TcpListener>) -> Vec<WatchedSocket> {
    let mut copies = Vec::new();
    if workers::started() && !sockets.is_empty() {
        for worker in sockets.len()..workers::count() {
            match sockets[worker % sockets.len()].try_clone() {
                Ok(socket) => copies.push(WatchedSocket {
                    worker,
                    socket,
                    copy: true,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot copy a listening socket; fewer workers accept on it");
                    break;
                }
            }
        }
    }
    sockets
        .into_iter()
        .enumerate()
        .map(|(worker, socket)| WatchedSocket {
            worker,
            socket,
            copy: false,
        })
        .chain(copies)
        .collect()
}

/// The sockets for `l`, taken over from `from`, a running listener on the
/// same protocol and address (renamed, or `reuse_port` changed): copies of
/// all its descriptors (it keeps its own until it retires), grown to one per
/// worker with `reuse_port`. Turning `reuse_port` off keeps every socket of
/// the group: closing one would reset the clients the kernel has queued on
/// it, so the group shrinks only at the next start.
pub(crate) fn take_over(from: &Listener, l: &ListenerConfig) -> Result<Bound, BindError> {
    let fds = from
        .listening_fds()
        .map_err(|cause| BindError::of(l, cause))?;
    take_over_fds((fds, from.file.clone()), from.addr, l)
}

impl Listener {
    /// Points a kept listener (same socket) at its new pool and settings.
    pub fn reroute(mut self, l: &ListenerConfig, pools: Pools, metrics: &Metrics) -> Listener {
        let old = self.route().load_full();
        let route = Arc::new(Route::new(l, pools, metrics, Some(&old)));
        match &self.kind {
            Sockets::Tcp(shared, sockets) => {
                shared.resize_limit(self.config.max_connections.get(), l.max_connections.get());
                if l.tcp_keepalive != self.config.tcp_keepalive && l.bind.unix().is_none() {
                    // Accepted sockets inherit it from the listening ones.
                    for s in sockets.iter().filter_map(Weak::upgrade) {
                        if let Err(e) =
                            net::keepalive(socket2::SockRef::from(s.get_ref()), l.tcp_keepalive)
                        {
                            tracing::warn!(listener = %l.name, error = %e, "cannot change tcp_keepalive");
                        }
                    }
                }
            }
            Sockets::Udp(..) => {}
        }
        self.route().swap(route).forget_routes(Some(l));
        self.config = l.clone();
        self
    }

    /// A successor process serves on its sockets now: its Unix socket's
    /// file is the successor's to remove.
    pub fn hand_on(&self) {
        if let Some(f) = &self.file {
            f.hand_on();
        }
    }

    /// Stops a listener that a reload replaced or removed: no new connections;
    /// established ones get `grace` to finish.
    pub fn retire(self, grace: Duration, tasks: &Tasks<'_>) {
        self.stop.cancel();
        let hard = self.hard_stop;
        let daemon_stops = tasks.background.clone();
        tasks.bg_tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => hard.cancel(),
                _ = hard.cancelled() => {}
                // The daemon's own shutdown ends these connections.
                _ = daemon_stops.cancelled() => {}
            }
        });
    }

    /// Relays on a connection handed over by the process this one replaced.
    pub fn adopt(
        &self,
        moved: handover::Moved,
        client: std::net::TcpStream,
        backend: std::net::TcpStream,
    ) {
        match &self.kind {
            Sockets::Tcp(shared, _) => {
                // Spread over the workers, as accepted connections are.
                let worker = ADOPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared.tracker.spawn_on(
                    tcp::serve_moved(shared.clone(), client, backend, moved),
                    &workers::handle(worker),
                );
            }
            Sockets::Udp(..) => {
                tracing::warn!(listener = %self.config.name, "a TCP connection handed over to a UDP listener is closed");
            }
        }
    }

    /// Copies of the listening sockets' descriptors, to hand to a new
    /// process or to the listener that takes this one's address over. Each
    /// is duplicated while the socket is held, so it is ours whatever
    /// becomes of this listener: a number is never borrowed from an accept
    /// loop that may end (and free it for reuse) in the meantime.
    pub fn listening_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        match &self.kind {
            Sockets::Tcp(_, s) => s
                .iter()
                .filter_map(Weak::upgrade)
                .map(|s| s.get_ref().as_fd().try_clone_to_owned())
                .collect(),
            Sockets::Udp(_, s) => s
                .iter()
                .filter_map(Weak::upgrade)
                .map(|s| s.as_fd().try_clone_to_owned())
                .collect(),
        }
    }

    /// Its totals now, as the history samples them.
    pub fn totals(&self) -> ListenerTotals {
        let u = |v: i64| v.max(0) as u64;
        match &self.kind {
            Sockets::Tcp(s, _) => {
                let m = &s.metrics;
                ListenerTotals {
                    protocol: "tcp",
                    new: m.connections.get(),
                    active: u(m.active.get()),
                    bytes_in: m.bytes_in.get(),
                    bytes_out: m.bytes_out.get(),
                    udp: None,
                }
            }
            Sockets::Udp(s, _) => {
                let m = &s.metrics;
                ListenerTotals {
                    protocol: "udp",
                    new: m.sessions_total.get(),
                    active: u(m.sessions.get()),
                    bytes_in: m.bytes_in.get(),
                    bytes_out: m.bytes_out.get(),
                    udp: Some(UdpTotals {
                        datagrams_in: m.datagrams_in.get(),
                        dropped: m.dropped_full.get()
                            + m.dropped_no_backend.get()
                            + m.dropped_send.get()
                            + m.dropped_ip_limit.get()
                            + m.dropped_sni.get(),
                    }),
                }
            }
        }
    }

    /// Drops the series of routes that `next` (this listener's successor)
    /// no longer has.
    pub fn forget_routes(&self, next: &ListenerConfig) {
        self.route().load().forget_routes(Some(next));
    }

    /// Drops this listener's series (it is removed, or changes protocol).
    pub fn forget_metrics(&self) {
        match &self.kind {
            Sockets::Tcp(shared, _) => shared.metrics.forget(),
            Sockets::Udp(shared, _) => shared.metrics.forget(),
        }
        self.route().load().forget_routes(None);
    }

    /// Where the listener sends traffic, whatever its protocol.
    fn route(&self) -> &arc_swap::ArcSwap<Route> {
        match &self.kind {
            Sockets::Tcp(shared, _) => &shared.route,
            Sockets::Udp(shared, _) => &shared.route,
        }
    }
}
