//! The Debian package: `packaging/build-deb` builds it from the binary just
//! built; it holds the binary, a working conffile, the unit (which passes
//! `systemd-analyze verify`), man pages, completions for bash, zsh and fish,
//! and the config schema; the installed binary checks the installed file.

mod common;

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_holds_a_working_service() {
    if !common::installed("dpkg-deb", "dpkg") || !common::installed("systemd-analyze", "systemd") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let built = run(Command::new(root.join("packaging/build-deb"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_switchyard"),
            "--fast",
            "--out",
        ])
        .arg(out.path()));
    let deb = built.trim();
    assert!(deb.ends_with(".deb") && Path::new(deb).exists(), "{built}");

    let contents = run(Command::new("dpkg-deb").args(["-c", deb]));
    for path in [
        "./usr/bin/switchyard",
        "./etc/switchyard/switchyard.toml",
        "./lib/systemd/system/switchyard.service",
        "./usr/share/man/man1/switchyard.1.gz",
        "./usr/share/man/man1/switchyard-ctl.1.gz",
        "./usr/share/bash-completion/completions/switchyard",
        "./usr/share/zsh/vendor-completions/_switchyard",
        "./usr/share/fish/vendor_completions.d/switchyard.fish",
        "./usr/share/switchyard/switchyard.schema.json",
        "./usr/share/doc/switchyard/README.md",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "no {path} in:\n{contents}"
        );
    }
    let conffiles = run(Command::new("dpkg-deb").args(["-f", deb, "Package"]));
    assert_eq!(conffiles.trim(), "switchyard");
    let info = run(Command::new("dpkg-deb").args(["-I", deb, "conffiles"]));
    assert_eq!(info.trim(), "/etc/switchyard/switchyard.toml");

    // What an install puts on disk works together.
    let tree = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").args(["-x", deb]).arg(tree.path()));
    let bin = tree.path().join("usr/bin/switchyard");
    let conf = tree.path().join("etc/switchyard/switchyard.toml");
    let check = run(Command::new(&bin).arg("check").arg("--config").arg(&conf));
    assert!(
        check.contains("ok: 1 listener(s), 1 pool(s), 2 backend(s)"),
        "{check}"
    );
    let unit =
        std::fs::read_to_string(tree.path().join("lib/systemd/system/switchyard.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/switchyard run --config /etc/switchyard/switchyard.toml")
    );
    assert!(unit.contains("StateDirectory=switchyard"));
    // Verified where the package would put the binary: here, the tree.
    let local = tree.path().join("switchyard.service");
    std::fs::write(
        &local,
        unit.replace("/usr/bin/switchyard", bin.to_str().unwrap()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !said.contains("switchyard.service"),
        "verify: {said}"
    );
    // The man page and completions came from the same definitions as --help.
    let man =
        run(Command::new("zcat").arg(tree.path().join("usr/share/man/man1/switchyard-ctl.1.gz")));
    assert!(
        man.contains(".TH switchyard-ctl") && man.contains("daemon not reachable"),
        "{man}"
    );
    let bash = std::fs::read_to_string(
        tree.path()
            .join("usr/share/bash-completion/completions/switchyard"),
    )
    .unwrap();
    assert!(bash.contains("drain") && bash.contains("--token-file"));
}

/// `apt upgrade` drops no connection: the new package's postinst tells a
/// daemon still running the replaced binary to upgrade itself (systemd's
/// `systemctl kill --signal=USR2`, or here, with no systemd, the process
/// found by its deleted binary), and the new binary takes over its sockets
/// and its established connections. Installed with `dpkg --root` into a
/// staging directory, scripts run as they would on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_upgrade_hands_over_to_the_new_binary() {
    use common::daemon::Daemon;
    use std::time::Duration;
    if !common::installed("dpkg-deb", "dpkg") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let debs = tempfile::tempdir().unwrap();
    let build = |version: &str| {
        let built = run(Command::new(root.join("packaging/build-deb"))
            .args(["--binary", env!("CARGO_BIN_EXE_switchyard"), "--fast"])
            .args(["--version", version, "--out"])
            .arg(debs.path()));
        built.trim().to_string()
    };
    let (old, new) = (build("0.0.1"), build("0.0.2"));
    let staged = tempfile::tempdir().unwrap();
    let admin = staged.path().join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    let install = |deb: &str| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", staged.path().display()))
            .args(["--force-script-chrootless", "--force-depends", "-i", deb]))
    };
    install(&old);

    let b = common::Backend::start("b").await;
    let text = format!(
        "[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        b.addr
    );
    let bin = staged.path().join("usr/bin/switchyard");
    let mut daemon = Daemon::start_binary(&bin, &text, &[], &[]);
    let front = daemon.listeners()["front"];
    let mut live = common::echoed(front, "before", "b").await;

    install(&new);
    let served = daemon.wait_log("the new process serves", Duration::from_secs(20), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("upgrade: the new process serves"))
    });
    let successor = served["successor"].as_u64().expect("its pid");
    // Whatever happens below, the new process is stopped with the test.
    struct Stop(u64);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(self.0.to_string()).status();
        }
    }
    let _stop = Stop(successor);
    let exe = std::fs::read_link(format!("/proc/{successor}/exe")).unwrap();
    assert_eq!(exe, bin, "the new process runs the installed (new) binary");
    // The old process hands its connection over and exits; the connection
    // goes on, now carried by the new binary.
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0));
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    live.write_all(b"after\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::BufReader::new(&mut live).read_line(&mut line),
    )
    .await
    .expect("the live connection answers after the upgrade")
    .unwrap();
    assert_eq!(line, "b: after\n");
    assert_eq!(common::ask(front).await, "b", "new clients are served");
}
