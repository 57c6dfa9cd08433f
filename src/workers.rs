//! The data plane's threads: one single-threaded runtime per worker, each
//! with its own event loop and timers (as nginx's worker processes, in one
//! process).
//!
//! A listening socket is watched by one worker, and every connection or
//! session it accepts lives on that worker from accept to close: no task
//! moves between threads and no wake-up crosses one, which is what a
//! work-stealing runtime spends on a short connection. With `reuse_port`
//! each worker has a socket of its own and the kernel spreads clients over
//! them; without it a TCP listener's one socket is watched by every worker
//! and whoever wakes first accepts, while a UDP listener's one socket has
//! one receive loop, on one worker.
//!
//! The control plane (admin API, health checks, discovery, reloads) stays on
//! the runtime `main` builds. `Server::start` starts the workers if nobody
//! did, so the library used in-process (as the tests use it) runs its data
//! plane exactly as the binary does.

use std::sync::OnceLock;

use tokio::runtime::Handle;

static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();

/// Worker threads are named this, then their number.
const THREAD_NAME: &str = "switchyard-w";

/// Starts `n` worker threads (at least one), each running a single-threaded
/// runtime until the process exits; with `pin`, worker `i` runs only on the
/// `i`-th core the process may use (in turn, when there are more workers
/// than cores). Called once, before any listener binds; a second call
/// changes nothing.
pub fn start(n: usize, pin: bool) -> std::io::Result<()> {
    if WORKERS.get().is_some() {
        return Ok(());
    }
    let cores: Vec<usize> = if pin {
        let allowed = rustix::thread::sched_getaffinity(None)?;
        (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| allowed.is_set(c))
            .collect()
    } else {
        Vec::new()
    };
    let mut handles = Vec::new();
    for i in 0..n.max(1) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
        std::thread::Builder::new()
            .name(format!("{THREAD_NAME}{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    let mut one = rustix::thread::CpuSet::new();
                    one.set(core);
                    if let Err(e) = rustix::thread::sched_setaffinity(None, &one) {
                        let _ = tx.send(Err(std::io::Error::from(e)));
                        return;
                    }
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                // Runs this worker's tasks until the process exits.
                rt.block_on(std::future::pending::<()>());
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("a worker thread ended at start"))??;
        handles.push(handle);
    }
    let _ = WORKERS.set(handles);
    Ok(())
}

/// One worker per core, as the binary starts them.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How many workers serve listeners: the started ones, or else the calling
/// runtime's worker threads.
pub fn count() -> usize {
    match WORKERS.get() {
        Some(w) => w.len(),
        None => Handle::current().metrics().num_workers(),
    }
}

/// The runtime of worker `i` (modulo the count), or the caller's runtime
/// where no workers were started.
pub fn handle(i: usize) -> Handle {
    match WORKERS.get() {
        Some(w) => w[i % w.len()].clone(),
        None => Handle::current(),
    }
}

/// Whether this crate's workers were started (else everything runs on the
/// caller's runtime).
pub fn started() -> bool {
    WORKERS.get().is_some()
}

/// Tasks alive now on the workers, and on the calling runtime when it is
/// not a worker's (the control runtime, where the admin endpoint renders
/// its metrics). A count that grows while the load stays level is a leak.
pub fn alive_tasks() -> (usize, usize) {
    let on_workers = WORKERS
        .get()
        .map_or(0, |w| w.iter().map(|h| h.metrics().num_alive_tasks()).sum());
    let on_a_worker = std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with(THREAD_NAME));
    let control = match Handle::try_current() {
        Ok(h) if !on_a_worker => h.metrics().num_alive_tasks(),
        _ => 0,
    };
    (on_workers, control)
}
