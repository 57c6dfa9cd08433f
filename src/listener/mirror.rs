//! A listener's mirror: copies of the client-to-backend bytes of a share of
//! its connections (or datagrams) go to a backend of another pool, whose
//! replies are read and thrown away. The real traffic never waits for it:
//! a TCP connection's copies pass through a short queue ([`Tap`]), and a
//! mirror that falls behind, cannot connect or fails a write loses its copy
//! (counted by reason) while the client is untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::route::{Mirror, Route};
use crate::metrics::MirrorMetrics;
use crate::pool::Pool;
use crate::relay::tap::Tap;

/// For a new TCP connection from `client`: a tap when the mirror chooses it,
/// with the task that carries its copies started.
pub(crate) fn open(route: &Route, client: SocketAddr, tracker: &TaskTracker) -> Option<Tap> {
    let m = route.mirror.as_ref().filter(|m| m.chosen())?;
    m.metrics.mirrored.inc();
    let (tap, queue) = Tap::new(m.metrics.full.clone());
    tracker.spawn(carry(
        (m.pool.clone(), client),
        queue,
        tap.cut.clone(),
        m.metrics.clone(),
    ));
    Some(tap)
}

/// Connects to a backend of the mirror pool and writes what the queue
/// brings, reading its replies away, until the queue ends (the connection
/// did) or the tap is cut.
async fn carry(
    (pool, client): (Arc<Pool>, SocketAddr),
    mut queue: mpsc::Receiver<Bytes>,
    cut: CancellationToken,
    m: MirrorMetrics,
) {
    let snap = pool.snapshot();
    let Some(i) = snap.pick(client, &[]) else {
        m.no_backend.inc();
        cut.cancel();
        return;
    };
    let backend = snap.members[i].backend.clone();
    let timeout = snap.config.connect_timeout;
    drop(snap);
    let connect = tokio::time::timeout(timeout, crate::net::connect(backend.addr));
    let s = tokio::select! {
        r = connect => match r {
            Ok(Ok(s)) => s,
            _ => {
                m.connect.inc();
                cut.cancel();
                return;
            }
        },
        _ = cut.cancelled() => return,
    };
    let _open = backend.open().established();
    let (mut r, mut w) = s.into_split();
    let mut junk = [0u8; 2048];
    let mut reading = true;
    loop {
        tokio::select! {
            chunk = queue.recv() => match chunk {
                Some(b) => {
                    let wrote = tokio::select! {
                        r = w.write_all(&b) => r,
                        _ = cut.cancelled() => return,
                    };
                    if wrote.is_err() {
                        m.write.inc();
                        cut.cancel();
                        return;
                    }
                    backend.metrics.bytes_out.inc_by(b.len() as u64);
                }
                None => break,
            },
            n = r.read(&mut junk), if reading => match n {
                Ok(0) | Err(_) => reading = false,
                Ok(n) => backend.metrics.bytes_in.inc_by(n as u64),
            },
            _ = cut.cancelled() => return,
        }
    }
    // The client's side ended: so does the copy.
    let _ = w.shutdown().await;
}

/// A receive loop's mirror for datagrams: one socket, the copies sent to a
/// backend of the mirror pool picked for each client; replies are left for
/// the kernel to drop.
pub(crate) struct Datagrams {
    socket: Option<std::net::UdpSocket>,
}

impl Datagrams {
    pub(crate) fn new() -> Datagrams {
        Datagrams { socket: None }
    }

    /// Copies `data` from `client` when the mirror chooses it; never waits.
    pub(crate) fn offer(&mut self, mirror: &Mirror, client: SocketAddr, data: &[u8]) {
        if !mirror.chosen() {
            return;
        }
        mirror.metrics.mirrored.inc();
        let snap = mirror.pool.snapshot();
        let Some(i) = snap.pick(client, &[]) else {
            mirror.metrics.no_backend.inc();
            return;
        };
        // `check` refuses a UDP mirror to a pool of Unix sockets.
        let Some(to) = snap.members[i].backend.addr.inet() else {
            mirror.metrics.connect.inc();
            return;
        };
        if self.socket.is_none() {
            let any = SocketAddr::new(crate::net::unspecified(to.is_ipv6()), 0);
            match std::net::UdpSocket::bind(any).and_then(|s| {
                s.set_nonblocking(true)?;
                Ok(s)
            }) {
                Ok(s) => self.socket = Some(s),
                Err(_) => {
                    mirror.metrics.connect.inc();
                    return;
                }
            }
        }
        let Some(s) = &self.socket else { return };
        match s.send_to(data, to) {
            Ok(_) => snap.members[i]
                .backend
                .metrics
                .bytes_out
                .inc_by(data.len() as u64),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => mirror.metrics.full.inc(),
            Err(_) => mirror.metrics.write.inc(),
        }
    }
}
