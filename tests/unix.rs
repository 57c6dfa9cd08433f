//! Unix-domain sockets on both sides: listeners on a path (made safely,
//! with its mode, removed at stop) or an abstract name, backends on either,
//! checks over them, PROXY v2's `AF_UNIX` block, and a binary upgrade that
//! hands a Unix listener and its connections over.

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// A backend on a Unix socket (a path, or `@name`) that answers each line
/// with `<name>: <line>`, and echoes whatever follows a line `echo`.
fn unix_backend(name: &'static str, at: &str) -> tokio::task::JoinHandle<()> {
    let listener = match at.strip_prefix('@') {
        Some(abs) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs).unwrap();
            let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
            l.set_nonblocking(true).unwrap();
            UnixListener::from_std(l).unwrap()
        }
        None => UnixListener::bind(at).unwrap(),
    };
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                while r.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    if line == "echo\n" {
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                        return;
                    }
                    let answer = format!("{name}: {line}");
                    if w.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    })
}

/// Connects to a listener's Unix socket (a path, or `@name`).
async fn dial(at: &str) -> UnixStream {
    match at.strip_prefix('@') {
        Some(abs) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs).unwrap();
            let s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
            s.set_nonblocking(true).unwrap();
            UnixStream::from_std(s).unwrap()
        }
        None => UnixStream::connect(at).await.unwrap(),
    }
}

/// Sends a line, reads the answer line.
async fn ask_unix(s: &mut UnixStream, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before an answer; got {got:?}");
        got.push(byte[0]);
    }
    String::from_utf8(got).unwrap().trim_end().to_string()
}

fn abstract_name(what: &str) -> String {
    format!("@switchyard-test-{what}-{}", std::process::id())
}

/// A listener on a path (mode 0600) and one on an abstract name, a pool of
/// a path backend and an abstract one, checked over their sockets: clients
/// of both listeners reach both backends, a mebibyte passes both ways
/// intact, the API names the addresses, and the file goes at stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_listeners_reach_unix_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (front, app) = (dir.path().join("front.sock"), dir.path().join("app.sock"));
    let (front_abs, app_abs) = (abstract_name("front"), abstract_name("app"));
    let _a = unix_backend("file", app.to_str().unwrap());
    let _b = unix_backend("abstract", &app_abs);
    let server = start(&format!(
        "[[listeners]]\nname = \"file\"\nbind = \"unix:{}\"\nmode = \"0600\"\npool = \"app\"\naccess_log = false\n\
         [[listeners]]\nname = \"abstract\"\nbind = \"unix:{front_abs}\"\npool = \"app\"\naccess_log = false\n\
         [pools.app]\nstrategy = \"round_robin\"\n\
         backends = [{{ addr = \"unix:{}\" }}, {{ addr = \"unix:{app_abs}\" }}]\n\
         [pools.app.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\ninitial = \"down\"\n",
        front.display(),
        app.display()
    ))
    .await;
    // Up only once a check over each socket has passed.
    for b in [format!("unix:{}", app.display()), format!("unix:{app_abs}")] {
        let up = format!("switchyard_backend_up{{backend=\"{b}\",pool=\"app\"}}");
        wait_metric(&server, &up, 1.0, Duration::from_secs(10)).await;
    }

    let meta = std::fs::symlink_metadata(&front).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    for at in [front.to_str().unwrap(), front_abs.as_str()] {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let mut s = dial(at).await;
            let answer = ask_unix(&mut s, "hello").await;
            seen.insert(answer.split(':').next().unwrap().to_string());
        }
        assert_eq!(
            seen,
            ["abstract".to_string(), "file".to_string()].into(),
            "round robin over both backends from {at}"
        );
    }

    // A mebibyte each way, as the relay carries it (splice).
    let mut s = dial(front.to_str().unwrap()).await;
    s.write_all(b"echo\n").await.unwrap();
    let sent: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        })
    };
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .expect("the echo in time")
        .unwrap();
    writer.await.unwrap();
    assert!(back == sent, "{} bytes back of {}", back.len(), sent.len());
    let spliced = "switchyard_listener_zero_copy_total{listener=\"file\"}";
    assert!(
        metric(&server.metrics().render(), spliced).unwrap_or(0.0) >= 1.0,
        "a bulk direction moved on with splice(2)"
    );

    let view = server.view();
    let shown: Vec<String> = view.listeners.iter().map(|l| l.addr.to_string()).collect();
    assert!(
        shown.contains(&format!("unix:{}", front.display())),
        "{shown:?}"
    );
    assert!(shown.contains(&format!("unix:{front_abs}")), "{shown:?}");
    assert!(view.listeners.iter().all(|l| l.family == "unix"));

    server.shutdown_within(Duration::from_secs(5)).await;
    assert!(!front.exists(), "the socket file goes at stop");
}

/// The file is made safely: a socket left by a dead process is replaced, a
/// live one or a plain file is refused (and left as it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_at_the_path_is_replaced_only_if_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("front.sock");
    let config = |path: &Path| {
        switchyard::Config::parse(
            &format!(
                "[[listeners]]\nname = \"a\"\nbind = \"unix:{}\"\npool = \"p\"\n\
                 [pools.p]\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n",
                path.display()
            ),
            Path::new("t.toml"),
        )
        .unwrap()
    };
    // A live socket.
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = switchyard::Server::start(config(&path))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("another process listens on"),
        "{err}"
    );
    // Stale: its listener closed, the file left behind.
    drop(live);
    assert!(path.exists());
    let server = switchyard::Server::start(config(&path)).await.unwrap();
    // Listening: a connect is taken (the stale file would refuse it).
    UnixStream::connect(&path).await.unwrap();
    server.shutdown_within(Duration::from_secs(5)).await;
    // A plain file is no socket to replace.
    std::fs::write(&path, "not a socket").unwrap();
    let err = switchyard::Server::start(config(&path))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
}

/// The PROXY header a Unix listener's client gets sent as: v2 names the
/// listener's socket in an `AF_UNIX` block, v1 says `UNKNOWN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_carry_af_unix() {
    let dir = tempfile::tempdir().unwrap();
    let capture = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = capture.local_addr().unwrap();
    let abs = abstract_name("pp");
    let path = dir.path().join("pp.sock");
    let server = start(&format!(
        "[[listeners]]\nname = \"v2\"\nbind = \"unix:{abs}\"\npool = \"v2\"\naccess_log = false\n\
         [[listeners]]\nname = \"v1\"\nbind = \"unix:{}\"\npool = \"v1\"\naccess_log = false\n\
         [pools.v2]\nproxy_protocol = \"v2\"\nbackends = [{{ addr = \"{to}\" }}]\n\
         [pools.v1]\nproxy_protocol = \"v1\"\nbackends = [{{ addr = \"{to}\" }}]\n",
        path.display()
    ))
    .await;
    let read_header = |len: usize| {
        let capture = &capture;
        async move {
            let (mut s, _) = capture.accept().await.unwrap();
            let mut h = vec![0u8; len];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
                .await
                .expect("a header in time")
                .unwrap();
            h
        }
    };
    let mut c = dial(&abs).await;
    c.write_all(b"hi").await.unwrap();
    let h = read_header(16 + 216 + 2).await;
    assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(h[12..14], [0x21, 0x31], "PROXY over AF_UNIX stream");
    assert_eq!(u16::from_be_bytes([h[14], h[15]]), 216);
    let dst = &h[16 + 108..16 + 216];
    let name = format!("\0{}", &abs[1..]);
    assert_eq!(
        &dst[..name.len()],
        name.as_bytes(),
        "the listener's abstract name"
    );
    assert!(dst[name.len()..].iter().all(|&b| b == 0));
    assert_eq!(&h[232..], b"hi", "the client's bytes follow");

    let mut c = dial(path.to_str().unwrap()).await;
    c.write_all(b"hi").await.unwrap();
    assert_eq!(read_header(17).await, b"PROXY UNKNOWN\r\nhi");
    drop(server);
}

/// A binary upgrade hands a Unix listener over: the file stays (the old
/// process does not remove it), a connection open across the upgrade goes
/// on, new clients are served by the new process, and the file goes when
/// the new process stops.
#[test]
fn a_binary_upgrade_hands_a_unix_listener_over() {
    // The successor is the old process's child: once the old one exits, it
    // comes to us, so it can be reaped.
    // SAFETY: prctl on this process only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (front, app): (PathBuf, PathBuf) =
        (dir.path().join("front.sock"), dir.path().join("app.sock"));
    let _backend = {
        let _on = rt.enter();
        unix_backend("app", app.to_str().unwrap())
    };
    let mut daemon = common::daemon::Daemon::start(
        &format!(
            "shutdown_grace = \"10s\"\n[[listeners]]\nname = \"front\"\nbind = \"unix:{}\"\npool = \"p\"\naccess_log = false\n\
             [pools.p]\nbackends = [{{ addr = \"unix:{}\" }}]\n",
            front.display(),
            app.display()
        ),
        &[],
        &[],
    );
    let _reap = common::daemon::Successors(Vec::new());
    let inode = std::fs::metadata(&front).unwrap().ino();
    rt.block_on(async {
        let mut held = dial(front.to_str().unwrap()).await;
        assert_eq!(ask_unix(&mut held, "before").await, "app: before");
        let pid = daemon.child.id();
        let successor = daemon.upgrade(pid, 1);
        let _reap = common::daemon::Successors(vec![successor]);
        assert_eq!(
            daemon.wait_exit(Duration::from_secs(20)),
            Some(0),
            "the old process drains and exits"
        );
        assert_eq!(
            std::fs::metadata(&front).unwrap().ino(),
            inode,
            "the old process left the file to its successor"
        );
        assert_eq!(
            ask_unix(&mut held, "after").await,
            "app: after",
            "moved, not dropped"
        );
        let mut fresh = dial(front.to_str().unwrap()).await;
        assert_eq!(ask_unix(&mut fresh, "new").await, "app: new");
        drop((held, fresh));
        // SAFETY: a signal to the process this test's daemon started.
        assert_eq!(unsafe { libc::kill(successor as i32, libc::SIGTERM) }, 0);
        wait_for(
            "the successor to remove the file",
            Duration::from_secs(20),
            || !front.exists(),
        )
        .await;
    });
}

/// A reload keeps a Unix listener's socket (the same file, a connection
/// open across it served on), a renamed listener takes it over, and one
/// the new file lacks has its file removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_take_over_and_remove_unix_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let (front, app) = (dir.path().join("front.sock"), dir.path().join("app.sock"));
    let _backend = unix_backend("app", app.to_str().unwrap());
    let config = |listener: &str, extra: &str| {
        switchyard::Config::parse(
            &format!(
                "[[listeners]]\nname = \"{listener}\"\nbind = \"unix:{}\"\npool = \"p\"\naccess_log = false\n\
                 {extra}[pools.p]\nbackends = [{{ addr = \"unix:{}\" }}]\n",
                front.display(),
                app.display()
            ),
            Path::new("t.toml"),
        )
        .unwrap()
    };
    let server = switchyard::Server::start(config("a", "")).await.unwrap();
    let inode = std::fs::metadata(&front).unwrap().ino();
    let mut held = dial(front.to_str().unwrap()).await;
    assert_eq!(ask_unix(&mut held, "one").await, "app: one");

    server
        .reload(config("a", "max_connections = 100\n"))
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&front).unwrap().ino(), inode, "kept");
    server.reload(config("renamed", "")).await.unwrap();
    assert_eq!(
        std::fs::metadata(&front).unwrap().ino(),
        inode,
        "taken over"
    );
    assert_eq!(ask_unix(&mut held, "two").await, "app: two");
    let mut fresh = dial(front.to_str().unwrap()).await;
    assert_eq!(ask_unix(&mut fresh, "three").await, "app: three");

    let tcp_only = switchyard::Config::parse(
        &format!(
            "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pools.p]\nbackends = [{{ addr = \"unix:{}\" }}]\n",
            app.display()
        ),
        Path::new("t.toml"),
    )
    .unwrap();
    server.reload(tcp_only).await.unwrap();
    assert!(
        !front.exists(),
        "a listener the file lacks takes its socket file along"
    );
    assert_eq!(
        ask_unix(&mut held, "four").await,
        "app: four",
        "its connections run on"
    );
    drop((held, fresh));
    server.shutdown_within(Duration::from_secs(5)).await;
}

/// `owner` and `group` by name: the file is made theirs (it takes root to
/// give a file away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_given_its_owner_and_group() {
    if !common::netns::root("the_file_is_given_its_owner_and_group") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let front = dir.path().join("front.sock");
    let server = start(&format!(
        "[[listeners]]\nname = \"a\"\nbind = \"unix:{}\"\nmode = \"0660\"\nowner = \"nobody\"\ngroup = \"nogroup\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n",
        front.display()
    ))
    .await;
    let meta = std::fs::metadata(&front).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    server.shutdown_within(Duration::from_secs(5)).await;
    assert!(!front.exists());
}

/// Through the API (and so `ctl`), a Unix-socket backend is named by its
/// address percent-encoded, or by its name; a Unix path no configuration
/// named is no backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_drains_a_unix_backend_by_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.sock");
    let _backend = unix_backend("app", app.to_str().unwrap());
    let server = start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nbackends = [{{ addr = \"unix:{}\" }}]\n",
        app.display()
    ))
    .await;
    let admin = server.admin_addr().await.unwrap();
    // A drain by address, percent-encoded as `ctl` sends it.
    let drain = |addr: String| async move {
        let encoded =
            percent_encoding::utf8_percent_encode(&addr, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let path = format!("/api/v1/pools/p/backends/{encoded}/drain");
        tokio::task::spawn_blocking(move || common::daemon::http(admin, "POST", &path, &[], ""))
            .await
            .unwrap()
    };
    let (status, body) = drain(format!("unix:{}", app.display())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"draining\""), "{body}");
    let (status, body) = drain(format!("unix:{}/other.sock", dir.path().display())).await;
    assert_eq!(status, 404, "{body}");
}
