//! Agent checks: every `interval`, a connection to each backend's agent
//! port, `send` written if set, and one line read back (HAProxy's
//! `agent-check`, so existing agents keep working). What the line says is
//! applied to the backend ([`crate::backend::agent`]); a new weight
//! rebuilds the pool's snapshot. An agent that cannot be reached changes
//! nothing: the health check judges reachability, and a flapping agent must
//! not take a serving backend out.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::backend::agent::parse;
use crate::backend::Backend;
use crate::config::AgentConfig;
use crate::pool::Pool;

/// The longest reply read; HAProxy's agents answer in a few words.
const MAX_REPLY: usize = 1024;

/// Asks one backend's agent every `interval` until stopped.
pub(super) async fn ask(
    backend: Arc<Backend>,
    pool: Weak<Pool>,
    cfg: AgentConfig,
    stop: CancellationToken,
) {
    let jitter = rand::rng().random_range(Duration::ZERO..cfg.interval);
    if !super::pause(jitter, &stop).await {
        return;
    }
    // At the backend's IP address (`check` refuses an agent for a pool
    // of Unix sockets).
    let Some(mut target) = backend.addr.inet() else {
        return;
    };
    target.set_port(cfg.port);
    loop {
        let reply = tokio::select! {
            r = tokio::time::timeout(cfg.timeout, once(target, cfg.send.as_deref())) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}", humantime::format_duration(cfg.timeout))),
            },
            _ = stop.cancelled() => return,
        };
        match reply {
            Ok(line) => match parse(&line) {
                Some(words) => {
                    let (changed, reweighed) = backend.agent.apply(&words);
                    if !changed.is_empty() {
                        tracing::info!(
                            pool = %backend.pool, backend = %backend.addr, agent = %line.trim_end(),
                            "agent: {}", changed.join(", ")
                        );
                    }
                    if reweighed {
                        if let Some(pool) = pool.upgrade() {
                            pool.reweigh();
                        }
                    }
                    backend.agent.heard(line.trim_end().to_string());
                }
                None => backend
                    .agent
                    .heard(format!("not understood: {:?}", line.trim_end())),
            },
            Err(why) => backend.agent.heard(format!("not reached: {why}")),
        }
        if !super::pause(cfg.interval, &stop).await {
            return;
        }
    }
}

/// One ask: connect, send, read until a newline, the limit or the close.
async fn once(target: std::net::SocketAddr, send: Option<&[u8]>) -> Result<String, String> {
    let mut s = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if let Some(send) = send {
        s.write_all(send).await.map_err(|e| format!("send: {e}"))?;
    }
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        if n == 0 || buf.contains(&b'\n') || buf.len() >= MAX_REPLY {
            break;
        }
    }
    buf.truncate(MAX_REPLY);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
