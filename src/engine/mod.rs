//! Which I/O engine carries established TCP connections: readiness (epoll,
//! through tokio) or completion (io_uring, one ring per worker, `ring.rs`).
//!
//! io_uring is usable when the kernel lets this process make a ring with
//! the flags the engine uses (refused when the kernel is too old, when
//! `kernel.io_uring_disabled` says no, or when a seccomp filter blocks
//! `io_uring_setup`, as container runtimes often do) and knows every
//! operation the engine submits; each worker's ring then takes its buffer
//! pool, or that worker relays by readiness. `engine = "io_uring"` refuses
//! to start where the probe fails, and says why. `engine = "auto"` runs
//! epoll, which measures faster than this io_uring engine on every TCP
//! scenario, and says whether io_uring would be usable. The engine that runs
//! and why are in the log, in `switchyard_build_info`'s `engine` label and
//! in the API.
//!
//! The choice is made once per process; a reload that asks for another
//! engine is told it takes effect at the next start or binary upgrade.

pub mod ring;

use std::sync::OnceLock;

/// The engine asked for (`engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// The faster engine that can run here: epoll, as measured.
    #[default]
    Auto,
    /// io_uring, or no start.
    IoUring,
    /// Readiness through epoll.
    Epoll,
}

impl EngineChoice {
    /// The choice a configuration's `engine` names.
    pub fn parse(s: &str) -> Option<EngineChoice> {
        match s {
            "auto" => Some(EngineChoice::Auto),
            "io_uring" => Some(EngineChoice::IoUring),
            "epoll" => Some(EngineChoice::Epoll),
            _ => None,
        }
    }

    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::IoUring => "io_uring",
            EngineChoice::Epoll => "epoll",
        }
    }
}

/// The engine that runs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// `io_uring` or `epoll`.
    pub name: &'static str,
    /// Why this one: what was asked, and what the probe found.
    pub why: String,
}

static RUNNING: OnceLock<Chosen> = OnceLock::new();

/// The environment variable that overrides `engine` for a process (the
/// test suite runs once per engine with it).
pub const ENV: &str = "SWITCHYARD_ENGINE";

/// Chooses the engine once for this process. With `io_uring` asked for and
/// the probe failing, the error says why. Later calls return the first
/// choice.
pub fn choose(asked: EngineChoice) -> Result<&'static Chosen, String> {
    if let Some(r) = RUNNING.get() {
        return Ok(r);
    }
    let (asked, from) = match std::env::var(ENV)
        .ok()
        .and_then(|v| EngineChoice::parse(&v))
    {
        Some(e) => (e, ENV),
        None => (asked, "engine"),
    };
    let running = match asked {
        EngineChoice::Epoll => Chosen {
            name: "epoll",
            why: format!("{from} = \"epoll\""),
        },
        EngineChoice::IoUring => match probe() {
            Ok(()) => Chosen {
                name: "io_uring",
                why: format!("{from} = \"io_uring\""),
            },
            Err(e) => {
                return Err(format!(
                    "{from} = \"io_uring\", but io_uring cannot be used here: {e}"
                ))
            }
        },
        // epoll measures faster than this io_uring engine on every TCP
        // scenario (the README's Performance), so `auto` runs it; the probe
        // still says whether io_uring could run here.
        EngineChoice::Auto => Chosen {
            name: "epoll",
            why: match probe() {
                Ok(()) => format!(
                    "{from} = \"auto\": epoll, faster than the io_uring engine here; io_uring is usable"
                ),
                Err(e) => format!(
                    "{from} = \"auto\": epoll; io_uring cannot be used here: {e}"
                ),
            },
        },
    };
    Ok(RUNNING.get_or_init(|| running))
}

/// The engine chosen, if one was (the library used without `Server::start`
/// relays by readiness).
pub fn chosen() -> Option<&'static Chosen> {
    RUNNING.get()
}

static RING_RELAYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a connection relayed on a worker's ring.
pub fn relayed_on_ring() {
    RING_RELAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// What the API shows: the engine, why, and how many connections its
/// rings have carried (0 on epoll).
pub fn view() -> Option<serde_json::Value> {
    let e = RUNNING.get()?;
    Some(serde_json::json!({
        "engine": e.name,
        "why": e.why,
        "ring_relays": RING_RELAYS.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

/// Whether established connections go to io_uring.
pub fn uring() -> bool {
    RUNNING.get().is_some_and(|r| r.name == "io_uring")
}

/// Whether this process may use io_uring as the engine does: a ring with
/// its flags, every operation it submits, and a buffer pool.
pub fn probe() -> Result<(), String> {
    let ring = ring::builder().build(8).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring_setup is not implemented (kernel too old, or a seccomp filter refuses it)".to_string(),
        Some(libc::EPERM) => "io_uring_setup is not permitted (kernel.io_uring_disabled, or a seccomp filter refuses it)".to_string(),
        Some(libc::EINVAL) => "the kernel does not take the ring's flags (it needs Linux 6.0 or later)".to_string(),
        _ => format!("io_uring_setup failed: {e}"),
    })?;
    let mut known = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut known)
        .map_err(|e| format!("cannot ask the kernel which io_uring operations it knows: {e}"))?;
    for (code, name) in ring::OPCODES {
        if !known.is_supported(code) {
            return Err(format!("the kernel's io_uring has no {name} operation"));
        }
    }
    Ok(())
}
