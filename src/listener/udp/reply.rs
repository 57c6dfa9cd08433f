//! A UDP session's reply task: carries the backend's datagrams back to the
//! client from the listener's socket until its receive loop ends the
//! session, and passes on what the backend's errors say of its health.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::session::Link;
use super::shared::{Burst, UdpShared, DGRAM_BUF};
use super::sock;
use crate::backend::Backend;
use crate::clock::now_ms;
use crate::metrics::UdpListenerMetrics;

pub(super) struct ReplyTask {
    pub(super) shared: Arc<UdpShared>,
    pub(super) listener: Arc<UdpSocket>,
    pub(super) link: Arc<Link>,
    /// Told when the session ends on its own (its socket failed); the
    /// receive loop ends every other way itself.
    pub(super) ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
}

enum Got {
    Nothing,
    Relayed(usize),
    ClientUnreachable(io::Error),
    BackendError(io::Error),
}

/// Carries a session's replies back to its client until it is ended.
pub(super) async fn replies(t: ReplyTask) {
    let link = &*t.link;
    let m = &t.shared.metrics;
    let backend = link.guard.backend();
    let (mut datagrams_out, mut bytes_out) = (0u64, 0u64);
    let mut replied = Replied::default();
    let end = loop {
        // An ICMP error from the backend wakes this too (`open_upstream`).
        let woke = poll_fn(|cx| {
            if let Poll::Ready(end) = link.poll_ended(cx) {
                return Poll::Ready(Err(end));
            }
            link.upstream.poll_read_ready(cx).map(|r| Ok(r.map(drop)))
        })
        .await;
        match woke {
            Err(end) => break end.as_str(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "udp session socket failed");
                break "error";
            }
            Ok(Ok(_)) => {}
        }
        let got = DGRAM_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let received = if link.spread {
                spread_reply(&t.shared, &link.upstream, &mut buf)
            } else {
                sock::recv(&link.upstream, &mut buf)
            };
            match received {
                Ok(n) => match sock::reply(&t.listener, &buf[..n], link.peer, link.local) {
                    Ok(_) => Got::Relayed(n),
                    Err(e) => Got::ClientUnreachable(e),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Nothing,
                Err(e) => Got::BackendError(e),
            }
        });
        match got {
            Got::Nothing => replied.flush(m, backend, link.spread),
            Got::Relayed(n) => {
                link.last.store(now_ms(), Ordering::Relaxed);
                datagrams_out += 1;
                bytes_out += n as u64;
                replied.count(n, m, backend, link.spread);
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
                    backend.connect_failed(link.max_fails, link.fail_timeout());
                }
                tracing::debug!(backend = %backend.addr, error = %e, "udp session socket error");
            }
        }
    };
    replied.flush(m, backend, link.spread);
    m.sessions.dec();
    if link.ended().is_none() {
        // The receive loop may be gone already (shutdown); then nobody needs telling.
        let _ = t.ended.send((link.peer, link.id));
    }
    let route = t.shared.route.load();
    if route.config.access_log {
        tracing::info!(
            target: "switchyard::access",
            listener = %route.config.name,
            client = %link.peer,
            backend = %backend.addr,
            backend_name = %backend.name,
            datagrams_out,
            bytes_out,
            duration_ms = now_ms().saturating_sub(link.started_ms),
            end,
            "udp session"
        );
    }
}

/// Replies a session relayed, added to its listener's and backend's shared
/// counters when the task is about to wait or its burst is full.
#[derive(Default)]
struct Replied(Burst);

impl Replied {
    fn count(&mut self, n: usize, m: &UdpListenerMetrics, backend: &Backend, spread: bool) {
        if self.0.count(n) {
            self.flush(m, backend, spread);
        }
    }

    fn flush(&mut self, m: &UdpListenerMetrics, backend: &Backend, spread: bool) {
        if let Some((datagrams, bytes)) = self.0.take() {
            m.datagrams_out.inc_by(datagrams);
            m.bytes_out.inc_by(bytes);
            // A per-datagram session counted its sender's bytes already.
            if !spread {
                backend.metrics.bytes_in.inc_by(bytes);
            }
        }
    }
}

/// A reply on a per-datagram session's socket, taken only from a backend of
/// the listener's pool (the socket is not connected, so anyone could send
/// to it), and counted on that backend. Others are read and dropped.
fn spread_reply(
    shared: &UdpShared,
    upstream: &sock::UdpUpstream,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        let (n, from) = sock::recv_from(upstream, buf)?;
        let route = shared.route.load();
        let snap = route.pool.snapshot();
        let from = crate::wire::canonical(from);
        if let Some(m) = snap.find(from) {
            m.backend.metrics.bytes_in.inc_by(n as u64);
            return Ok(n);
        }
        tracing::debug!(%from, "a datagram from no backend of the pool on a per-datagram session's socket; dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::route::Route;
    use crate::listener::udp::session::Parts;
    use crate::metrics::Metrics;
    use arc_swap::ArcSwap;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// Every UDP session is this future in a task, one `Link` and the
    /// kernel's socket: together under 1 KiB of the proxy's memory. The task
    /// is allocated in steps of 128 bytes, 96 of them tokio's own: a future
    /// over 160 bytes would cost every session another 128.
    #[tokio::test]
    async fn a_sessions_task_and_link_stay_small() {
        let text = "[[listeners]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:9\" }]\n";
        let metrics = Metrics::new();
        let route = Route::of_text(text);
        let pool = route.pool.clone();
        let shared = Arc::new(UdpShared {
            route: ArcSwap::from_pointee(route),
            metrics: metrics.udp_listener("u"),
            tracker: TaskTracker::new(),
            places: Default::default(),
            warn_log: crate::clock::Every::ms(1000),
            hard_stop: CancellationToken::new(),
            wildcard: false,
        });
        let backend = pool.snapshot().members[0].backend.clone();
        let link = Arc::new(Link::new(Parts {
            upstream: sock::open_upstream(backend.addr.inet().unwrap(), None).unwrap(),
            guard: backend.open(),
            peer: "127.0.0.1:1".parse().unwrap(),
            local: None,
            id: 1,
            now_ms: now_ms(),
            idle: Duration::from_secs(1),
            max_fails: 1,
            fail_timeout: Duration::from_secs(1),
            header: None,
            spread: false,
        }));
        let (ended, _rx) = mpsc::unbounded_channel();
        let task = replies(ReplyTask {
            shared,
            listener: Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
            link,
            ended,
        });
        let size = std::mem::size_of_val(&task);
        // A session waits on its socket and its link alone (no timer, no
        // cancellation of its own), which keeps this small.
        assert!(size <= 160, "a session's reply future grew to {size} bytes");
        let link = std::mem::size_of::<Link>();
        assert!(link <= 168, "a session's link grew to {link} bytes");
    }
}
