//! systemd's readiness protocol (`sd_notify`), spoken directly over the
//! datagram socket named by `NOTIFY_SOCKET`; a no-op outside systemd.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to systemd if it is listening.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path.to_string_lossy(), state) {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

fn send(path: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// `RELOADING=1` with the monotonic timestamp systemd asks reloads to carry.
pub fn reloading() {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}
