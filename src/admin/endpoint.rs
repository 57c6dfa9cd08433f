//! The admin endpoint's socket and connections: bind (or take a handed-over
//! socket), then serve each connection with hyper, capped in number and in
//! how long a request head may take.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{route, Daemon, Error};
use crate::config::AdminConfig;

/// Who may do what, and how long a request body may take.
pub(crate) struct Settings {
    pub(super) token: Option<String>,
    pub(super) protect_reads: bool,
    pub(super) hosts: Vec<String>,
    /// `header_timeout`: a request's body, once its head is in, must
    /// arrive within it too.
    pub(super) body_timeout: std::time::Duration,
}

impl Settings {
    pub fn new(cfg: &AdminConfig, token: Option<String>) -> Settings {
        Settings {
            token,
            protect_reads: cfg.protect_reads,
            hosts: cfg.hosts.clone(),
            body_timeout: cfg.header_timeout,
        }
    }
}

/// A connection between requests since this many milliseconds (of
/// [`crate::clock::now_ms`]), or in one.
const IN_REQUEST: u64 = u64::MAX;

/// One open admin connection, as the accept loop sees it.
struct AdminConn {
    /// When it last finished a request (or was accepted), or `IN_REQUEST`.
    idle_since_ms: Arc<AtomicU64>,
    /// Closes it.
    close: CancellationToken,
}

/// The open admin connections. When all places are taken and another
/// client waits, the one idle longest (between requests, or accepted and
/// silent) is closed to make room, as nginx reclaims idle keep-alive
/// connections: a probe always gets in. A connection in a request is never
/// closed for this; its body is bounded by `header_timeout` instead.
#[derive(Default)]
struct Conns {
    open: std::sync::Mutex<HashMap<u64, AdminConn>>,
    next: AtomicU64,
}

impl Conns {
    fn add(&self, close: CancellationToken) -> (u64, Arc<AtomicU64>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let idle_since_ms = Arc::new(AtomicU64::new(crate::clock::now_ms()));
        let open = AdminConn {
            idle_since_ms: idle_since_ms.clone(),
            close,
        };
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, open);
        (id, idle_since_ms)
    }

    fn remove(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Closes the connection idle longest; whether there was one.
    fn close_longest_idle(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Ties (the same millisecond) go to the one accepted first.
        let oldest = open
            .iter()
            .map(|(id, o)| ((o.idle_since_ms.load(Ordering::Relaxed), *id), &o.close))
            .filter(|((since, _), _)| *since != IN_REQUEST)
            .min_by_key(|(key, _)| *key);
        match oldest {
            Some((_, close)) => {
                close.cancel();
                true
            }
            None => false,
        }
    }
}

/// Reads `token_file` (surrounding whitespace trimmed).
pub(crate) fn load_token(cfg: &AdminConfig) -> Result<Option<String>, Error> {
    let Some(path) = &cfg.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|cause| Error::Token {
        path: path.clone(),
        cause,
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(Error::Token {
            path: path.clone(),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        });
    }
    Ok(Some(token))
}

/// A bound admin endpoint; stops serving when dropped.
pub(crate) struct AdminEndpoint {
    /// The configured address (what a reload compares).
    pub bind: SocketAddr,
    /// The bound address.
    pub addr: SocketAddr,
    pub settings: Arc<ArcSwap<Settings>>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// A copy of the listening socket, from which a new process's is made.
    socket: std::os::fd::OwnedFd,
    header_timeout: std::time::Duration,
    stop: CancellationToken,
}

impl AdminEndpoint {
    pub fn bind(cfg: &AdminConfig, token: Option<String>) -> Result<AdminEndpoint, Error> {
        let err = |cause| Error::Bind {
            addr: cfg.bind,
            cause,
        };
        let listener = crate::net::tcp_listener(cfg.bind, 128, false, None).map_err(err)?;
        AdminEndpoint::serve_on(cfg, token, listener)
    }

    /// An endpoint on a listening socket already bound (handed over by the
    /// process this one replaces).
    pub fn serve_on(
        cfg: &AdminConfig,
        token: Option<String>,
        listener: std::net::TcpListener,
    ) -> Result<AdminEndpoint, Error> {
        let err = |cause| Error::Bind {
            addr: cfg.bind,
            cause,
        };
        let addr = listener.local_addr().map_err(err)?;
        let socket = std::os::fd::AsFd::as_fd(&listener)
            .try_clone_to_owned()
            .map_err(err)?;
        Ok(AdminEndpoint {
            bind: cfg.bind,
            addr,
            settings: Arc::new(ArcSwap::from_pointee(Settings::new(cfg, token))),
            listener: std::sync::Mutex::new(Some(listener)),
            socket,
            header_timeout: cfg.header_timeout,
            stop: CancellationToken::new(),
        })
    }

    /// A copy of the listening socket of our own, to hand to a new process.
    pub fn socket_copy(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.socket.try_clone()
    }

    /// Starts serving; `parent` cancels it along with the daemon.
    pub fn spawn(&self, server: Daemon, parent: &CancellationToken, tracker: &TaskTracker) {
        let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("tokio runtime is running");
        let stop = self.stop.clone();
        let parent = parent.clone();
        let settings = self.settings.clone();
        let header_timeout = self.header_timeout;
        let connections = tracker.clone();
        tracing::info!(addr = %self.addr, "admin endpoint listening");
        tracker.spawn(async move {
            // A slow or hostile client cannot take the descriptors the proxy
            // needs: past the cap, a new client waits until the connection
            // idle longest is closed for it, or a request ends.
            let open = Arc::new(Semaphore::new(crate::fds::admin_connections()));
            let conns = Arc::new(Conns::default());
            let failures = crate::clock::Every::ms(1000);
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            if failures.ready() {
                                tracing::warn!(error = %e, "admin accept failed (logged at most once a second)");
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = stop.cancelled() => return,
                    _ = parent.cancelled() => return,
                };
                let permit = match open.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        if conns.close_longest_idle() {
                            tracing::debug!("admin connections at their cap: closed the one idle longest");
                        }
                        tokio::select! {
                            p = open.clone().acquire_owned() => p.expect("never closed"),
                            _ = stop.cancelled() => return,
                            _ = parent.cancelled() => return,
                        }
                    }
                };
                let server = server.clone();
                let settings = settings.clone();
                let stop = stop.clone();
                let parent = parent.clone();
                let close = CancellationToken::new();
                let (id, idle_since_ms) = conns.add(close.clone());
                let conns = conns.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        let settings = settings.load_full();
                        let idle_since_ms = idle_since_ms.clone();
                        async move {
                            idle_since_ms.store(IN_REQUEST, Ordering::Relaxed);
                            let response = route(server, &settings, req).await;
                            idle_since_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    // A request's head must arrive within header_timeout,
                    // and so must the next one on a kept-alive connection
                    // (the status page asks every 2 s).
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        // A client that half-closes after its request (a
                        // script's `curl`, a load balancer's probe) still
                        // gets it served and answered.
                        .half_close(true)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        r = conn => if let Err(e) = r {
                            tracing::debug!(error = %e, "admin connection ended with an error");
                        },
                        // Closed to make room for a new client.
                        _ = close.cancelled() => {}
                        _ = stop.cancelled() => {}
                        // The daemon stops: a page polling on a kept-alive
                        // connection must not hold its shutdown.
                        _ = parent.cancelled() => {}
                    }
                    conns.remove(id);
                });
            }
        });
    }
}

impl Drop for AdminEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
