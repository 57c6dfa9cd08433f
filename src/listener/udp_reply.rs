//! A UDP session's reply task: carries the backend's datagrams back to the
//! client from the listener's socket until the session is idle or stopped,
//! and passes on what the backend's errors say of its health.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::udp_io;
use super::udp_shared::{UdpShared, DGRAM_BUF, DRAIN_IDLE};
use crate::backend::ActiveGuard;
use crate::clock::now_ms;

pub(super) struct ReplyTask {
    pub(super) shared: Arc<UdpShared>,
    pub(super) listener: Arc<UdpSocket>,
    pub(super) upstream: Arc<UdpSocket>,
    pub(super) peer: SocketAddr,
    /// The address the client sent its first datagram to (wildcard listeners).
    pub(super) local: Option<IpAddr>,
    pub(super) id: u64,
    pub(super) last: Arc<AtomicU64>,
    pub(super) idle: Duration,
    pub(super) access_log: bool,
    /// Ends the session at once (its backend went away: the client re-picks).
    pub(super) stop: CancellationToken,
    /// The receive loop's stop: the session then drains.
    pub(super) listener_stop: CancellationToken,
    pub(super) ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    pub(super) guard: ActiveGuard,
    pub(super) max_fails: u32,
    pub(super) fail_timeout: Duration,
}

enum Got {
    Nothing,
    Relayed(usize),
    ClientUnreachable(io::Error),
    BackendError(io::Error),
}

/// Carries a session's replies back to its client until it is idle or stopped.
pub(super) async fn replies(t: ReplyTask) {
    let m = &t.shared.metrics;
    let backend = t.guard.backend();
    let started = tokio::time::Instant::now();
    let (mut datagrams_out, mut bytes_out) = (0u64, 0u64);
    let mut idle_ms = t.idle.as_millis() as u64;
    let mut draining = false;
    // The waits live as long as the session, made once: a wait made anew for
    // each datagram would add and remove a timer and three cancellation
    // waiters (each under a lock) per reply. The idle timer fires at the
    // deadline it was set for and is then moved on to the latest activity's.
    let idle = tokio::time::sleep(Duration::from_millis(idle_ms));
    let stopped = t.stop.cancelled();
    let shutdown = t.shared.hard_stop.cancelled();
    let retired = t.listener_stop.cancelled();
    tokio::pin!(idle, stopped, shutdown, retired);
    let end = loop {
        // ERROR readiness too: an ICMP port-unreachable raises only EPOLLERR.
        tokio::select! {
            r = t.upstream.ready(Interest::READABLE | Interest::ERROR) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "udp session socket failed");
                    break "error";
                }
            }
            _ = &mut idle => {
                let deadline = t.last.load(Ordering::Relaxed).saturating_add(idle_ms);
                let now = now_ms();
                if now >= deadline {
                    break "idle_timeout";
                }
                idle.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(deadline - now));
                continue;
            }
            _ = &mut stopped => break "stopped",
            _ = &mut shutdown => break "shutdown",
            _ = &mut retired, if !draining => {
                // The listener stopped (shutdown, reload, upgrade): no new
                // datagrams come this way; wait for replies a short while.
                draining = true;
                idle_ms = idle_ms.min(DRAIN_IDLE.as_millis() as u64);
                // The idle arm measures against the shorter wait at once.
                idle.as_mut().reset(tokio::time::Instant::now());
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
            backend_name = %backend.name,
            datagrams_out,
            bytes_out,
            duration_ms = started.elapsed().as_millis() as u64,
            end,
            "udp session"
        );
    }
}
