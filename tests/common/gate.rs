//! A TCP forwarder between switchyard and a store that can go silent the
//! way a network path dies: bytes are held, nothing is reset. It can
//! silence every connection, or only those open now (a watch whose path
//! died while new connections get through).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running forwarder to one address.
pub struct Gate {
    pub addr: SocketAddr,
    all: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Gate {
    pub async fn start(to: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let all = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let (all2, conns2) = (all.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mine = Arc::new(AtomicBool::new(false));
                conns2.lock().unwrap().push(mine.clone());
                let all = all2.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(
                        pass(cr, sw, all.clone(), mine.clone()),
                        pass(sr, cw, all, mine)
                    );
                });
            }
        });
        Gate { addr, all, conns }
    }

    /// Holds (true) or passes (false) the bytes of every connection, new
    /// ones too.
    pub fn silence(&self, on: bool) {
        self.all.store(on, Ordering::SeqCst);
    }

    /// Holds the bytes of the connections open now, for good; new ones pass.
    pub fn freeze_existing(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.store(true, Ordering::SeqCst);
        }
    }
}

async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    all: Arc<AtomicBool>,
    mine: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Held, not dropped: nothing tells either side.
        while all.load(Ordering::SeqCst) || mine.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
