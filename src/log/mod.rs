//! Where the access log goes: stderr with the other lines (the default),
//! a syslog receiver (RFC 5424, over a Unix socket, UDP, or TCP with octet
//! counting), or nowhere. Lines reach syslog through a bounded queue and a
//! writer thread of their own: a receiver that is down or slow costs
//! dropped lines, counted in `switchyard_log_dropped_total`, never a
//! stalled connection.

mod syslog;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use arc_swap::ArcSwapOption;

use prometheus::IntCounterVec;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::config::{AccessLog, LogConfig};

/// The target access-log events are written to.
pub const ACCESS: &str = "switchyard::access";

const STDERR: u8 = 0;
const SYSLOG: u8 = 1;
const OFF: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(STDERR);

/// The running syslog writer: read without a lock by every access line.
static SINK: ArcSwapOption<syslog::Sink> = ArcSwapOption::const_empty();

/// The settings the writer was made for (changed only by `configure`).
static MADE_FOR: Mutex<Option<LogConfig>> = Mutex::new(None);

/// Lines not delivered, by reason: `full` (the queue was full: the
/// receiver is slow or gone) and `unsent` (a write failed).
pub(crate) static DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        prometheus::Opts::new(
            "switchyard_log_dropped_total",
            "Access-log lines for syslog not delivered, by reason: full (the queue was full, the receiver slow or gone), unsent (a write failed).",
        ),
        &["reason"],
    )
    .inspect(|c| {
        // Both series from the start, at zero.
        c.with_label_values(&["full"]);
        c.with_label_values(&["unsent"]);
    })
    .expect("valid metric")
});

/// Applies `[log]`: where access lines go from now on. A syslog writer is
/// started, or replaced when its target or facility changed.
pub fn configure(c: &LogConfig) {
    let mut made_for = MADE_FOR.lock().unwrap_or_else(|e| e.into_inner());
    let mode = match c.access {
        AccessLog::Syslog => {
            if made_for.as_ref() != Some(c) {
                SINK.store(Some(Arc::new(syslog::Sink::start(c))));
                *made_for = Some(c.clone());
            }
            SYSLOG
        }
        AccessLog::Stderr => STDERR,
        AccessLog::Off => OFF,
    };
    MODE.store(mode, Ordering::Release);
    if mode != SYSLOG {
        SINK.store(None);
        *made_for = None;
    }
}

/// Whether a line with this metadata goes with the others to stderr:
/// everything but access lines sent elsewhere.
pub fn to_stderr(meta: &Metadata<'_>) -> bool {
    meta.target() != ACCESS || MODE.load(Ordering::Acquire) == STDERR
}

/// The layer that hands access lines to syslog when `[log] access =
/// "syslog"`; install it beside the stderr layer.
pub struct SyslogLayer;

/// An event's fields, in order, and its message.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name(), text));
        }
    }
}

impl<S: Subscriber> Layer<S> for SyslogLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != ACCESS || MODE.load(Ordering::Acquire) != SYSLOG {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        if let Some(s) = SINK.load().as_ref() {
            s.send(&f.message, &f.fields);
        }
    }
}
