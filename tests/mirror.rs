//! Mirroring against the real data plane: a copy of every client byte (or
//! datagram) of the chosen share reaches the mirror pool; a mirror that
//! stops reading is cut, counted, and never slows the real client.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A TCP backend that keeps what each connection sent it, in order of
/// arrival, and answers nothing.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                g.lock().unwrap().push(all);
            });
        }
    });
    (addr, got)
}

/// A TCP backend that reads everything and counts it.
async fn sink() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(m) = s.read(&mut buf).await {
                    if m == 0 {
                        break;
                    }
                    c.fetch_add(m as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, n)
}

/// A TCP backend that accepts and never reads: a mirror that cannot keep up.
async fn stalled() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            h.lock().unwrap().push(s);
        }
    });
    (addr, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_of_a_mirrored_connection_reaches_the_mirror() {
    let real = echo_raw().await;
    let (shadow, copies) = recorder().await;
    let server = start(&format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         mirror = {{ pool = \"shadow\" }}\n\
         [pools.p]\nbackends = [{{ addr = \"{real}\" }}]\n\
         [pools.shadow]\nbackends = [{{ addr = \"{shadow}\" }}]\n"
    ))
    .await;
    let front = server.local_addr("front").unwrap();
    let mut sent = Vec::new();
    for c in 0..5u8 {
        let mut s = TcpStream::connect(front).await.unwrap();
        let mut mine = Vec::new();
        for i in 0..50u32 {
            let line = format!("connection {c} line {i} {}\n", "x".repeat(i as usize * 37));
            s.write_all(line.as_bytes()).await.unwrap();
            let mut back = vec![0u8; line.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, line.as_bytes(), "the real backend's answer");
            mine.extend_from_slice(line.as_bytes());
        }
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        sent.push(mine);
    }
    wait_for("the five copies", Duration::from_secs(10), || {
        copies.lock().unwrap().len() == 5
    })
    .await;
    let mut got = copies.lock().unwrap().clone();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "the mirror saw exactly what the clients sent");
    assert_eq!(
        value(
            &server,
            "switchyard_mirror_total{listener=\"front\",protocol=\"tcp\"}"
        ),
        5.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_connections_is_mirrored() {
    let real = echo_raw().await;
    let (shadow, copies) = recorder().await;
    let server = start(&format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         mirror = {{ pool = \"shadow\", share = 0.25 }}\n\
         [pools.p]\nbackends = [{{ addr = \"{real}\" }}]\n\
         [pools.shadow]\nbackends = [{{ addr = \"{shadow}\" }}]\n"
    ))
    .await;
    let front = server.local_addr("front").unwrap();
    for _ in 0..400 {
        let mut s = TcpStream::connect(front).await.unwrap();
        s.write_all(b"ping\n").await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
    }
    let mirrored = value(
        &server,
        "switchyard_mirror_total{listener=\"front\",protocol=\"tcp\"}",
    );
    // 400 draws at 1/4: 100 expected, sd 8.7; six of them either side.
    assert!(
        (48.0..=152.0).contains(&mirrored),
        "{mirrored} of 400 mirrored"
    );
    wait_for("every copy", Duration::from_secs(10), || {
        copies.lock().unwrap().len() as f64 == mirrored
    })
    .await;
    server.shutdown().await;
}

/// Sends `total` bytes through `front` to a sink and returns the MiB/s.
async fn upload(front: SocketAddr, total: usize) -> f64 {
    let mut s = TcpStream::connect(front).await.unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    sent as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_stops_reading_is_cut_and_never_slows_the_client() {
    let (real, received) = sink().await;
    let (shadow, _held) = stalled().await;
    let server = start(&format!(
        "[[listeners]]\nname = \"mirrored\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         mirror = {{ pool = \"shadow\" }}\n\
         [[listeners]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nbackends = [{{ addr = \"{real}\" }}]\n\
         [pools.shadow]\nbackends = [{{ addr = \"{shadow}\" }}]\n"
    ))
    .await;
    let total = 128 << 20;
    // Side by side, alternating, three times each: the medians compared.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(upload(server.local_addr("plain").unwrap(), total).await);
        with.push(upload(server.local_addr("mirrored").unwrap(), total).await);
    }
    with.sort_by(f64::total_cmp);
    without.sort_by(f64::total_cmp);
    let (with, without) = (with[1], without[1]);
    eprintln!("upload with a stalled mirror {with:.0} MiB/s, without {without:.0} MiB/s");
    wait_for(
        "every byte at the real backend",
        Duration::from_secs(10),
        || received.load(Ordering::Relaxed) == 6 * total as u64,
    )
    .await;
    assert_eq!(
        value(
            &server,
            "switchyard_mirror_dropped_total{listener=\"mirrored\",reason=\"full\"}"
        ),
        3.0,
        "each mirrored connection's copy was cut once its mirror fell behind"
    );
    // A mirror the client waited on would stop it at the mirror's buffers
    // (a few MiB); a cut mirror costs only the copies made before the cut.
    assert!(
        with >= without * 0.5,
        "the stalled mirror slowed the client: {with:.0} against {without:.0} MiB/s"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_are_mirrored_one_for_one() {
    let real = Backend::start("real").await;
    let shadow = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let shadow_addr = shadow.local_addr().unwrap();
    let server = start(&format!(
        "[[listeners]]\nname = \"dns\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         mirror = {{ pool = \"shadow\" }}\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n\
         [pools.shadow]\nbackends = [{{ addr = \"{shadow_addr}\" }}]\n",
        real.addr
    ))
    .await;
    let front = server.local_addr("dns").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 256];
    for i in 0..50 {
        let q = format!("query {i}");
        client.send_to(q.as_bytes(), front).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("the real answer")
            .unwrap();
        assert_eq!(&buf[..n], format!("real: {q}").as_bytes());
        let n = tokio::time::timeout(Duration::from_secs(5), shadow.recv(&mut buf))
            .await
            .expect("the mirror's copy")
            .unwrap();
        assert_eq!(&buf[..n], q.as_bytes());
    }
    assert_eq!(
        value(
            &server,
            "switchyard_mirror_total{listener=\"dns\",protocol=\"udp\"}"
        ),
        50.0
    );
    server.shutdown().await;
}
