//! Byte-rate limits against the real data plane: per connection both ways,
//! per listener shared by its connections, each within 5 % over 10 s, while
//! an unlimited listener of the same daemon still moves its bulk flows by
//! splice(2) (and limited flows do too).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: f64 = (1 << 20) as f64;
/// The window measured, from the first byte.
const WINDOW: Duration = Duration::from_secs(10);

/// A backend that streams zeros to each connection as fast as it can, and
/// counts what each sends it, reporting the bytes of its first `WINDOW`.
async fn source_and_sink() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<u64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                // Down: as fast as the proxy takes it, until it goes.
                tokio::spawn(async move {
                    let zeros = vec![0u8; 64 * 1024];
                    while w.write_all(&zeros).await.is_ok() {}
                });
                // Up: count the window's bytes.
                if let Some(n) = window_of(&mut r).await {
                    let _ = tx.send(n);
                }
            });
        }
    });
    (addr, rx)
}

/// Reads `r` and returns the bytes of the first `WINDOW` after the first
/// byte (`None` if it ended before), then keeps draining it.
async fn window_of(r: &mut (impl AsyncReadExt + Unpin)) -> Option<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let first = r.read(&mut buf).await.ok().filter(|&n| n > 0)?;
    let end = tokio::time::Instant::now() + WINDOW;
    let mut n = first as u64;
    loop {
        match tokio::time::timeout_at(end, r.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(m)) => n += m as u64,
        }
    }
    Some(n)
}

/// Reads the download of a connection through `front` for the window,
/// counted from when every connection of `together` has its first bytes,
/// so each share is measured over the same seconds.
async fn download_together(front: SocketAddr, together: Arc<tokio::sync::Barrier>) -> u64 {
    let mut s = TcpStream::connect(front).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    assert!(s.read(&mut buf).await.unwrap() > 0, "a stream");
    together.wait().await;
    let end = tokio::time::Instant::now() + WINDOW;
    let mut n = 0u64;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return n,
            Ok(Ok(0)) | Ok(Err(_)) => panic!("a stream for the whole window"),
            Ok(Ok(m)) => n += m as u64,
        }
    }
}

/// Reads the download of a connection through `front` for the window.
async fn download(front: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(front).await.unwrap();
    window_of(&mut s)
        .await
        .expect("a stream for the whole window")
}

fn within(what: &str, got: u64, rate: f64) {
    let want = rate * WINDOW.as_secs_f64();
    let ratio = got as f64 / want;
    eprintln!(
        "{what}: {:.3} MiB/s, {:.1} % of the limit",
        got as f64 / MIB / WINDOW.as_secs_f64(),
        ratio * 100.0
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "{what}: {got} bytes in {WINDOW:?}, {:.1} % of the limit",
        ratio * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_hold_within_five_percent_and_unlimited_flows_still_splice() {
    let (backend, mut uploads) = source_and_sink().await;
    let server = start(&format!(
        "[[listeners]]\nname = \"each\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         download_rate = \"1MiB\"\nupload_rate = \"512k\"\n\
         [[listeners]]\nname = \"all\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         listener_download_rate = \"2MiB\"\n\
         [[listeners]]\nname = \"open\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nbackends = [{{ addr = \"{backend}\" }}]\n"
    ))
    .await;
    let each = server.local_addr("each").unwrap();
    let all = server.local_addr("all").unwrap();
    let open = server.local_addr("open").unwrap();
    let spliced = |l: &str| {
        value(
            &server,
            &format!("switchyard_listener_zero_copy_total{{listener=\"{l}\"}}"),
        )
    };

    // An unlimited bulk flow: 64 MiB as fast as it goes, by splice.
    let started = Instant::now();
    let mut s = TcpStream::connect(open).await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    while got < 64 << 20 {
        got += s.read(&mut buf).await.unwrap();
    }
    let open_rate = got as f64 / MIB / started.elapsed().as_secs_f64();
    drop(s);
    assert!(
        spliced("open") >= 1.0,
        "the unlimited bulk flow was spliced"
    );
    assert!(open_rate > 20.0, "unlimited: {open_rate:.0} MiB/s");
    eprintln!("unlimited: {open_rate:.0} MiB/s");

    // At once: one connection limited each way on `each`, and four sharing
    // `all`'s 2 MiB/s.
    let up = tokio::spawn(async move {
        let mut s = TcpStream::connect(each).await.unwrap();
        let zeros = vec![0u8; 64 * 1024];
        let end = Instant::now() + WINDOW + Duration::from_secs(3);
        while Instant::now() < end && s.write_all(&zeros).await.is_ok() {}
    });
    let one = tokio::spawn(download(each));
    let together = Arc::new(tokio::sync::Barrier::new(4));
    let shared: Vec<_> = (0..4)
        .map(|_| tokio::spawn(download_together(all, together.clone())))
        .collect();
    within("download_rate 1 MiB/s", one.await.unwrap(), MIB);
    let mut parts = Vec::new();
    for s in shared {
        parts.push(s.await.unwrap());
    }
    let total: u64 = parts.iter().sum();
    within(
        "listener_download_rate 2 MiB/s over 4 connections",
        total,
        2.0 * MIB,
    );
    for p in &parts {
        let share = *p as f64 / total as f64;
        assert!(
            (0.2..=0.3).contains(&share),
            "shares of the listener's rate: {parts:?}"
        );
    }
    eprintln!("the four connections' bytes: {parts:?}");
    // Uploads are counted by the backend; the first that reports a whole
    // window is the limited client's (the downloads send nothing).
    let uploaded = tokio::time::timeout(Duration::from_secs(10), uploads.recv())
        .await
        .expect("the upload's window in time")
        .unwrap();
    within("upload_rate 512 KiB/s", uploaded, 512.0 * 1024.0);
    up.abort();
    assert!(
        spliced("each") >= 1.0,
        "the limited download was spliced too"
    );
    server.shutdown().await;
}
