//! Tests inside network namespaces of their own (`unshare -n`: only a
//! loopback interface, nothing of the machine's network, gone when the
//! test ends), where `iptables` and `ip` may change anything.
//!
//! Each test re-runs itself inside the namespace: the outer run checks that
//! it may (root, `unshare`, `ip`, `iptables`) and runs the test binary again
//! under `unshare -n` for that one test; the inner run (marked by
//! `SWITCHYARD_NETNS`) brings loopback up and does the work.

use std::process::Command;

const INSIDE: &str = "SWITCHYARD_NETNS";

/// True inside the namespace (run the test's body). Outside, runs this test
/// again inside a new one, asserts it passed, and returns false.
pub fn in_namespace(test: &str) -> bool {
    if std::env::var(INSIDE).as_deref() == Ok(test) {
        run(&["ip", "link", "set", "lo", "up"]);
        return true;
    }
    if !root(test) {
        return false;
    }
    for (tool, package) in [
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("iptables", "iptables"),
    ] {
        if !super::installed(tool, package) {
            return false;
        }
    }
    let out = Command::new("unshare")
        .arg("-n")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INSIDE, test)
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "{test} failed inside its namespace:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// Whether this runs as root; if not, says the test is skipped (under CI,
/// which runs as root, fails).
pub fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{test} needs root; CI runs as root");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {test} needs root");
    false
}

/// The runtime a test inside its namespace runs its clients and backends
/// on (it starts outside any, from a plain `#[test]`).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs a command (iptables, ip) that must succeed.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Adds an `iptables` rule (its arguments as one line).
pub fn iptables(rule: &str) {
    let args: Vec<&str> = std::iter::once("iptables")
        .chain(rule.split_whitespace())
        .collect();
    run(&args);
}

/// A named namespace inside the test's own (`ip netns add`), for a peer
/// that must not share the proxy's addresses; deleted when dropped.
pub struct Peer {
    pub name: String,
}

impl Peer {
    /// A namespace joined to the test's by a veth pair: `inner` (with
    /// address `addr`, e.g. "10.77.1.2/24", and a default route via `via`)
    /// inside it, `outer` (with `outer_addr`) in the test's namespace.
    pub fn new(
        name: &str,
        (inner, addr): (&str, &str),
        (outer, outer_addr): (&str, &str),
        via: &str,
    ) -> Peer {
        let name = format!("{name}-{}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let peer = Peer { name };
        run(&[
            "ip", "link", "add", outer, "type", "veth", "peer", "name", inner,
        ]);
        run(&["ip", "link", "set", inner, "netns", &peer.name]);
        run(&["ip", "addr", "add", outer_addr, "dev", outer]);
        run(&["ip", "link", "set", outer, "up"]);
        peer.exec(&["ip", "link", "set", "lo", "up"]);
        peer.exec(&["ip", "addr", "add", addr, "dev", inner]);
        peer.exec(&["ip", "link", "set", inner, "up"]);
        peer.exec(&["ip", "route", "add", "default", "via", via]);
        peer
    }

    /// Runs a command inside it, which must succeed.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Makes something (sockets) inside it: `make` runs on a thread that
    /// has joined the namespace; what it makes stays in it.
    pub fn inside<T: Send + 'static>(&self, make: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns moves this thread alone (it makes the sockets
            // and ends) into the namespace the open descriptor names.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            make()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
