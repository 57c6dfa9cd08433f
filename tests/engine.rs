//! The data-plane engine: `engine = "auto"` runs epoll and says whether
//! io_uring is usable (not where a seccomp filter refuses `io_uring_setup`,
//! as container runtimes do), `"io_uring"` refuses to start there and says
//! why, and the engine that runs is named in the log, the metrics and the
//! API. The rest of the suite runs once per engine (`SWITCHYARD_ENGINE`,
//! see the README's test command).

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::{http, Daemon};
use common::metric;

fn config(engine: &str, backend: std::net::SocketAddr) -> String {
    format!(
        "engine = \"{engine}\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccess_log = false\n\
         [pools.p]\nbackends = [{{ addr = \"{backend}\" }}]\n"
    )
}

/// An echo backend on a thread of its own: it answers every connection
/// byte for byte until the client closes.
fn echo() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Installs, in the child about to exec, a seccomp filter that fails
/// `io_uring_setup` with EPERM and lets every other call through.
fn refuse_io_uring(cmd: &mut Command) {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
    let arch = if cfg!(target_arch = "aarch64") {
        AUDIT_ARCH_AARCH64
    } else {
        AUDIT_ARCH_X86_64
    };
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, jeq, ret) = (
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    let filter = [
        stmt(ld, 4), // seccomp_data.arch
        jump(jeq, arch, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ld, 0), // seccomp_data.nr
        jump(jeq, libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: between fork and exec the closure only makes two prctl calls
    // on memory the closure owns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Opens `n` connections through `front`, each echoing a distinct line.
fn exchange(front: std::net::SocketAddr, n: usize) {
    for i in 0..n {
        let mut s = std::net::TcpStream::connect(front).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let line = format!("line {i}\n");
        s.write_all(line.as_bytes()).unwrap();
        let mut got = vec![0u8; line.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, line.as_bytes());
    }
}

fn engine_view(d: &Daemon) -> serde_json::Value {
    let (status, body) = http(d.admin(), "GET", "/api/v1/engine", &[], "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn engine_label(d: &Daemon) -> String {
    let (_, text) = http(d.admin(), "GET", "/metrics", &[], "");
    for asked in ["io_uring", "epoll", "auto"] {
        let engine = if asked == "io_uring" {
            "io_uring"
        } else {
            "epoll"
        };
        let series = format!("switchyard_build_info{{engine=\"{engine}\",version=\"0.1.0\"}}");
        if metric(&text, &series) == Some(1.0) {
            return engine.to_string();
        }
    }
    panic!("switchyard_build_info names no engine:\n{text}")
}

/// io_uring must be usable where the suite runs, or half the suite would
/// quietly run on epoll twice.
#[test]
fn io_uring_is_usable_here() {
    if let Err(why) = switchyard::engine::probe() {
        common::tools::unavailable("io_uring", &why);
    }
}

#[test]
fn auto_says_io_uring_is_refused_where_seccomp_refuses_it() {
    let d = Daemon::start_prepared(
        std::path::Path::new(env!("CARGO_BIN_EXE_switchyard")),
        &config("auto", echo()),
        &[],
        &[],
        |cmd| {
            cmd.env_remove(switchyard::engine::ENV);
            refuse_io_uring(cmd);
        },
    );
    let logged = d.wait_log("engine", Duration::from_secs(5), |v| {
        v["message"] == "data-plane engine"
    });
    assert_eq!(logged["engine"], "epoll", "{logged}");
    let view = engine_view(&d);
    assert_eq!(view["engine"], "epoll");
    let why = view["why"].as_str().unwrap();
    assert!(
        why.contains("io_uring cannot be used here: io_uring_setup is not permitted"),
        "{why}"
    );
    assert_eq!(engine_label(&d), "epoll");
    exchange(d.listeners()["front"], 5);
    assert_eq!(engine_view(&d)["ring_relays"], 0);
}

#[test]
fn io_uring_asked_for_refuses_to_start_where_seccomp_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config("io_uring", echo())).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(["run", "--config"])
        .arg(&path)
        .env_remove(switchyard::engine::ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    refuse_io_uring(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchyard ran without the io_uring it was told to use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(
        err.contains("engine = \"io_uring\", but io_uring cannot be used here: io_uring_setup is not permitted"),
        "{err}"
    );
}

/// Each engine carries connections and says so: on io_uring every
/// connection's relay runs on a ring, on epoll (asked for, or `auto`) none
/// does, and `auto` says io_uring would be usable here.
#[test]
fn each_engine_names_itself_and_carries_connections() {
    if let Err(why) = switchyard::engine::probe() {
        common::tools::unavailable("io_uring", &why);
        return;
    }
    let backend = echo();
    for asked in ["io_uring", "epoll", "auto"] {
        let engine = if asked == "io_uring" {
            "io_uring"
        } else {
            "epoll"
        };
        let d = Daemon::start_prepared(
            std::path::Path::new(env!("CARGO_BIN_EXE_switchyard")),
            &config(asked, backend),
            &[],
            &[],
            |cmd| {
                cmd.env_remove(switchyard::engine::ENV);
            },
        );
        exchange(d.listeners()["front"], 20);
        let view = engine_view(&d);
        assert_eq!(view["engine"], engine);
        let why = match asked {
            "auto" => {
                "engine = \"auto\": epoll, faster than the io_uring engine here; io_uring is usable"
                    .to_string()
            }
            _ => format!("engine = \"{engine}\""),
        };
        assert_eq!(view["why"], why);
        assert_eq!(engine_label(&d), engine);
        let on_ring = if engine == "io_uring" { 20 } else { 0 };
        assert_eq!(view["ring_relays"], on_ring, "{view}");
    }
}
