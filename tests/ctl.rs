//! `switchyard ctl` against the real daemon: the table, drain/enable/weight
//! by name, reload, top, and the exit codes and messages of each failure.

mod common;

use std::process::Command;

use common::daemon::Daemon;
use common::process::free_addr;
use common::Backend;

/// Runs `switchyard ctl ARGS`: exit code, stdout, stderr.
fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("ctl")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_the_daemon_and_says_clearly_what_went_wrong() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let admin = free_addr();
    let text = format!(
        "[admin]\nbind = \"{admin}\"\ntoken_file = \"{}\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\", name = \"web-7\" }}, {{ addr = \"{}\" }}]\n",
        token.display(),
        a.addr,
        b.addr
    );
    let daemon = Daemon::start(&text, &[], &[]);
    let cfg = daemon.path().to_str().unwrap().to_string();
    let admin_s = admin.to_string();

    // Not reachable: exit 3 and where it looked.
    let (code, _, err) = ctl(&["--admin", "127.0.0.1:1", "status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("daemon not reachable at 127.0.0.1:1"), "{err}");

    // A change without the token: exit 4, and what to do.
    let (code, _, err) = ctl(&["--admin", &admin_s, "drain", "p", "web-7"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("401: token needed"), "{err}");

    // With --config, the address and the token come from the file.
    let (code, out, err) = ctl(&["--config", &cfg, "drain", "p", "web-7"]);
    assert_eq!((code, out.trim()), (0, "p/web-7: draining"), "{err}");
    let (code, out, _) = ctl(&["--config", &cfg, "status"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("POOL  BACKEND"), "{out}");
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .copied()
            .unwrap_or("")
    };
    assert!(row("web-7").contains("draining"), "{out}");
    assert!(row(&b.addr.to_string()).contains(" up "), "{out}");

    let (code, out, _) = ctl(&[
        "--config",
        &cfg,
        "--token-file",
        token.to_str().unwrap(),
        "weight",
        "p",
        "web-7",
        "5",
    ]);
    assert_eq!((code, out.trim()), (0, "p/web-7: weight 5"));
    let (code, _, err) = ctl(&["--config", &cfg, "weight", "p", "web-7", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("400: weight must be from 1 to 256"), "{err}");
    let (code, _, err) = ctl(&["--config", &cfg, "drain", "nope", "web-7"]);
    assert_eq!(code, 1);
    assert!(err.contains("404: no pool named `nope`"), "{err}");
    let (code, out, _) = ctl(&["--config", &cfg, "enable", "p", &a.addr.to_string()]);
    assert_eq!((code, out.trim()), (0, "p/web-7: up"));

    // Flags may follow the action, as kubectl's and git's do.
    let (code, out, err) = ctl(&["status", "--config", &cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("POOL  BACKEND"), "{out}");
    let (code, out, err) = ctl(&["drain", "p", "web-7", "--config", &cfg]);
    assert_eq!((code, out.trim()), (0, "p/web-7: draining"), "{err}");

    // top: the table, refreshed.
    let (code, out, _) = ctl(&["--config", &cfg, "top", "--count", "2"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("\x1b[H\x1b[2J").count(), 2, "{out:?}");
    assert_eq!(out.matches("POOL  BACKEND").count(), 2);

    // reload: fine, then a broken file is refused with its problems.
    let (code, out, _) = ctl(&["--config", &cfg, "reload"]);
    assert_eq!((code, out.trim()), (0, "reloaded"));
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("[pools.p]", "[pools.q]")).unwrap();
    let (code, _, err) = ctl(&[
        "--admin",
        &admin_s,
        "--token-file",
        token.to_str().unwrap(),
        "reload",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("422") && err.contains("no pool named `p`"),
        "{err}"
    );
    // A broken file given as --config is a usage error: exit 2.
    let (code, _, err) = ctl(&["--config", &cfg, "status"]);
    assert_eq!(code, 2, "{err}");
}

/// `switchyard ctl top | head` ends when `head` does: a closed pipe stops
/// it, as it stops every Unix tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_ends_when_its_reader_goes() {
    use std::io::Read;
    let a = Backend::start("a").await;
    let admin = free_addr();
    let text = format!(
        "[admin]\nbind = \"{admin}\"\n\
         [[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        a.addr
    );
    let _daemon = Daemon::start(&text, &[], &[]);
    let mut top = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["ctl", "top", "--admin", &admin.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = top.stdout.take().unwrap();
    let mut first = [0u8; 16];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first[..8], b"\x1b[H\x1b[2J1", "{first:?}");
    drop(out);
    // It writes again within a second or so and must then find the pipe
    // closed; five refreshes' time is ample.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        if let Some(status) = top.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = top.kill();
            panic!("ctl top still runs 5 s after its reader closed the pipe");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    top.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "a closed pipe is no error to report: {err}");
}
