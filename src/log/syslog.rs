//! An RFC 5424 syslog writer: messages formatted on the caller's thread,
//! queued (bounded), written by a thread of their own to a Unix socket, a
//! UDP receiver, or a TCP one (octet-counted frames, RFC 6587), which it
//! reconnects to.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use crate::config::{LogConfig, SyslogTarget};

/// Lines waiting for the writer: a burst, while a healthy receiver reads
/// (rsyslog takes tens of thousands a second); beyond it, lines of a slow
/// receiver are dropped rather than held.
const QUEUE: usize = 1024;

/// How long one write may block before the line is dropped and the
/// connection made again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Our private enterprise number for structured data: RFC 5612's example
/// number, as the fields are ours alone.
const SD_ID: &str = "access@32473";

/// A running writer; it ends when dropped (its queue closes).
pub(super) struct Sink {
    queue: SyncSender<Vec<u8>>,
    /// `<PRI>1 ` and ` HOST APP PROCID`, fixed for its life.
    head: String,
    host: String,
}

impl Sink {
    pub(super) fn start(c: &LogConfig) -> Sink {
        let (queue, rx) = sync_channel(QUEUE);
        let target = c.syslog.clone();
        let _ = std::thread::Builder::new()
            .name("switchyard-syslog".into())
            .spawn(move || write_all(target, rx));
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        // Severity 6: informational.
        let pri = u32::from(c.facility) * 8 + 6;
        Sink {
            queue,
            head: format!("<{pri}>1 "),
            host: if host.is_empty() { "-".into() } else { host },
        }
    }

    /// Formats and queues one line; drops it (counted) when the queue is
    /// full.
    pub(super) fn send(&self, message: &str, fields: &[(&'static str, String)]) {
        let ts = humantime::format_rfc3339_millis(SystemTime::now());
        let mut sd = format!("[{SD_ID}");
        for (k, v) in fields {
            sd.push(' ');
            sd.push_str(k);
            sd.push_str("=\"");
            for c in v.chars() {
                // RFC 5424 6.3.3: these three are escaped in a value.
                if matches!(c, '"' | '\\' | ']') {
                    sd.push('\\');
                }
                sd.push(c);
            }
            sd.push('"');
        }
        sd.push(']');
        let line = format!(
            "{}{ts} {} switchyard {} access {sd} {message}",
            self.head,
            self.host,
            std::process::id()
        );
        match self.queue.try_send(line.into_bytes()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => super::DROPPED.with_label_values(&["full"]).inc(),
            Err(TrySendError::Disconnected(_)) => {
                super::DROPPED.with_label_values(&["unsent"]).inc()
            }
        }
    }
}

/// Where lines are written.
enum SyslogOut {
    Unix(std::os::unix::net::UnixDatagram),
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpStream),
}

fn open(target: &SyslogTarget) -> std::io::Result<SyslogOut> {
    Ok(match target {
        SyslogTarget::Unix(path) => {
            let s = std::os::unix::net::UnixDatagram::unbound()?;
            s.connect(path)?;
            s.set_write_timeout(Some(WRITE_TIMEOUT))?;
            SyslogOut::Unix(s)
        }
        SyslogTarget::Udp(addr) => {
            let bind: std::net::SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().expect("an address")
            } else {
                "[::]:0".parse().expect("an address")
            };
            let s = std::net::UdpSocket::bind(bind)?;
            s.connect(addr)?;
            SyslogOut::Udp(s)
        }
        SyslogTarget::Tcp(addr) => {
            let s = std::net::TcpStream::connect_timeout(addr, WRITE_TIMEOUT)?;
            s.set_write_timeout(Some(WRITE_TIMEOUT))?;
            s.set_nodelay(true)?;
            SyslogOut::Tcp(s)
        }
    })
}

/// The writer thread: until the queue closes.
fn write_all(target: SyslogTarget, rx: Receiver<Vec<u8>>) {
    let mut out: Option<SyslogOut> = None;
    let mut said = false;
    for line in rx.iter() {
        if out.is_none() {
            match open(&target) {
                Ok(o) => {
                    out = Some(o);
                    said = false;
                }
                Err(e) => {
                    if !said {
                        tracing::warn!(target = %target, error = %e, "cannot reach the syslog receiver; access lines are dropped until it answers");
                        said = true;
                    }
                    super::DROPPED.with_label_values(&["unsent"]).inc();
                    continue;
                }
            }
        }
        let written = match out.as_mut().expect("opened above") {
            SyslogOut::Unix(s) => s.send(&line).map(|_| ()),
            SyslogOut::Udp(s) => s.send(&line).map(|_| ()),
            SyslogOut::Tcp(s) => {
                let mut frame = format!("{} ", line.len()).into_bytes();
                frame.extend_from_slice(&line);
                s.write_all(&frame)
            }
        };
        if written.is_err() {
            super::DROPPED.with_label_values(&["unsent"]).inc();
            // A stream cut mid-frame is unusable; a datagram socket is
            // opened again as well, in case its receiver came back anew.
            out = None;
        }
    }
}
