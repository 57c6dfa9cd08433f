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

use super::udp_io;
use super::udp_session::Link;
use super::udp_shared::{UdpShared, DGRAM_BUF};
use crate::clock::now_ms;

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
            match udp_io::recv(&link.upstream, &mut buf) {
                Ok(n) => match udp_io::reply(&t.listener, &buf[..n], link.peer, link.local) {
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
                link.last.store(now_ms(), Ordering::Relaxed);
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
                    backend.connect_failed(link.max_fails, link.fail_timeout());
                }
                tracing::debug!(backend = %backend.addr, error = %e, "udp session socket error");
            }
        }
    };
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
