//! A small ZooKeeper client: the part of the protocol discovery needs
//! (sessions kept alive and resumed, digest authentication, reading
//! children and data with watches, writing data). Requests are pipelined
//! in batches, so reading 10,000 members costs a few round trips. Written
//! here rather than taken from crates.io: the maintained async client there
//! runs its own reactor thread and timer beside tokio's and brings about 40
//! crates, for six operations.
//!
//! It runs past 400 lines: it is a whole ZooKeeper client (connect,
//! session, pings, requests, watches); only its wire encoding is apart, in
//! `jute.rs`.

mod jute;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use jute::{code, op, xid, JuteIn, JuteOut, MAX_FRAME};

/// How many requests are in flight at once.
const BATCH: usize = 512;

/// How long one server may take to accept a connection and answer its
/// handshake before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What went wrong talking to ZooKeeper.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server could be reached, or the one in use stopped answering.
    #[error("ZooKeeper unreachable: {0}")]
    Unreachable(String),
    /// A server answered, but refused (authentication) or spoke nonsense.
    #[error("ZooKeeper refused: {0}")]
    Refused(String),
    /// The session ended; a new one starts at the next connect.
    #[error("the ZooKeeper session expired")]
    Expired,
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::InvalidData => Error::Refused(e.to_string()),
            _ => Error::Unreachable(e.to_string()),
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ZkSettings {
    /// `host:port` of each server, tried in turn.
    pub servers: Vec<String>,
    /// Put in front of every path (`/app`, or empty).
    pub chroot: String,
    /// The session timeout asked for; the server may change it.
    pub timeout: Duration,
    /// `user:password` for the digest scheme.
    pub digest: Option<Vec<u8>>,
}

/// A watch that fired, with the path as the caller named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The node was created.
    Created(String),
    /// The node was deleted.
    Deleted(String),
    /// Its data changed.
    Data(String),
    /// Its children changed.
    Children(String),
}

/// A node's data and its version.
pub type Data = (Vec<u8>, i32);

/// One connection to one server, in a session.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet taken as frames.
    rbuf: BytesMut,
    /// Bytes to write; written from the front, so an interrupted flush
    /// loses nothing.
    wbuf: Vec<u8>,
    /// The negotiated session timeout.
    timeout: Duration,
    last_recv: Instant,
    last_send: Instant,
    /// Watches that fired while replies were awaited.
    events: VecDeque<Event>,
}

/// A session, and the connection it is in, if any.
pub struct Zk {
    s: ZkSettings,
    session: Option<(i64, Vec<u8>)>,
    last_zxid: i64,
    /// The next server to try.
    next: usize,
    xid: i32,
    conn: Option<Conn>,
}

fn lost() -> Error {
    Error::Unreachable("not connected".into())
}

impl Zk {
    pub fn new(s: ZkSettings) -> Zk {
        Zk {
            s,
            session: None,
            last_zxid: 0,
            next: 0,
            xid: 0,
            conn: None,
        }
    }

    /// Connects to a server in turn, resuming the session if it still
    /// lives. `true` when the session is new (the last one expired, or there
    /// was none); either way the caller sets its watches again, since a
    /// server keeps watches per connection.
    pub async fn connect(&mut self) -> Result<bool, Error> {
        self.conn = None;
        let mut last = String::from("no server");
        for _ in 0..self.s.servers.len().max(1) {
            let Some(server) = self.s.servers.get(self.next % self.s.servers.len().max(1)) else {
                break;
            };
            let server = server.clone();
            self.next = self.next.wrapping_add(1);
            for _ in 0..2 {
                match tokio::time::timeout(CONNECT_TIMEOUT, self.handshake(&server)).await {
                    Ok(Ok(fresh)) => return Ok(fresh),
                    // The session is gone: a new one, on the same server.
                    Ok(Err(Error::Expired)) => {
                        self.session = None;
                        last = "the session expired".into();
                    }
                    Ok(Err(e @ Error::Refused(_))) => return Err(e),
                    Ok(Err(e)) => {
                        last = format!("{server}: {e}");
                        break;
                    }
                    Err(_) => {
                        last = format!("{server}: no answer within {CONNECT_TIMEOUT:?}");
                        break;
                    }
                }
            }
        }
        Err(Error::Unreachable(last))
    }

    async fn handshake(&mut self, server: &str) -> Result<bool, Error> {
        let stream = TcpStream::connect(server).await?;
        stream.set_nodelay(true)?;
        // A server that vanishes without a reset is noticed by the pings;
        // keepalive covers a connection that is only ever read.
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(3));
        socket2::SockRef::from(&stream).set_tcp_keepalive(&ka)?;
        let (id, passwd) = self.session.clone().unwrap_or((0, vec![0; 16]));
        let mut o = JuteOut::bare();
        o.i32(0)
            .i64(self.last_zxid)
            .i32(self.s.timeout.as_millis().min(i32::MAX as u128) as i32)
            .i64(id)
            .buf(&passwd)
            .bool(false);
        let now = Instant::now();
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: o.frame(),
            timeout: self.s.timeout,
            last_recv: now,
            last_send: now,
            events: VecDeque::new(),
        };
        conn.flush().await?;
        let frame = conn.frame().await?;
        let mut r = JuteIn::new(&frame);
        let _version = r.i32()?;
        let timeout = r.i32()?;
        let new_id = r.i64()?;
        let new_passwd = r.buf()?.unwrap_or_default().to_vec();
        if timeout <= 0 {
            return Err(Error::Expired);
        }
        conn.timeout = Duration::from_millis(timeout as u64);
        let fresh = id != new_id;
        self.session = Some((new_id, new_passwd));
        self.conn = Some(conn);
        if let Some(digest) = self.s.digest.clone() {
            let mut o = JuteOut::request(xid::AUTH, op::AUTH);
            o.i32(0).str("digest").buf(&digest);
            let conn = self.conn.as_mut().ok_or_else(lost)?;
            conn.wbuf.extend(o.frame());
            conn.flush().await?;
            loop {
                let Some((x, err, _)) = self.reply().await? else {
                    continue;
                };
                if x == xid::AUTH {
                    if err != code::OK {
                        self.conn = None;
                        return Err(Error::Refused(format!(
                            "digest authentication failed (code {err})"
                        )));
                    }
                    break;
                }
            }
        }
        Ok(fresh)
    }

    /// The path on the server.
    fn full(&self, path: &str) -> String {
        format!("{}{}", self.s.chroot, path)
    }

    /// Reads one frame: a reply's (xid, error code, body), or `None` for a
    /// watch (queued) or a ping's answer.
    async fn reply(&mut self) -> Result<Option<(i32, i32, Bytes)>, Error> {
        let chroot_len = self.s.chroot.len();
        let conn = self.conn.as_mut().ok_or_else(lost)?;
        let mut frame = conn.frame().await?;
        let mut r = JuteIn::new(&frame);
        let x = r.i32()?;
        let zxid = r.i64()?;
        let err = r.i32()?;
        frame.advance(16);
        if zxid > self.last_zxid {
            self.last_zxid = zxid;
        }
        match x {
            xid::PING => Ok(None),
            xid::WATCH => {
                let mut r = JuteIn::new(&frame);
                let kind = r.i32()?;
                let state = r.i32()?;
                let path = r.str()?;
                if state == code::SESSION_EXPIRED {
                    self.conn = None;
                    return Err(Error::Expired);
                }
                let path = path.get(chroot_len..).unwrap_or_default().to_string();
                let path = if path.is_empty() { "/".into() } else { path };
                let e = match kind {
                    1 => Event::Created(path),
                    2 => Event::Deleted(path),
                    3 => Event::Data(path),
                    4 => Event::Children(path),
                    _ => return Ok(None),
                };
                conn.events.push_back(e);
                Ok(None)
            }
            _ if err == code::SESSION_EXPIRED => {
                self.conn = None;
                Err(Error::Expired)
            }
            _ => Ok(Some((x, err, frame))),
        }
    }

    /// Sends `n` requests, `build(i, xid)` making the `i`-th, pipelined in
    /// batches; each reply's error code and body, in order.
    async fn calls(
        &mut self,
        n: usize,
        mut build: impl FnMut(usize, i32) -> JuteOut,
    ) -> Result<Vec<(i32, Bytes)>, Error> {
        let mut out = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            let end = (start + BATCH).min(n);
            let first = self.xid.checked_add(1).filter(|x| *x > 0).unwrap_or(1);
            let conn = self.conn.as_mut().ok_or_else(lost)?;
            for (k, i) in (start..end).enumerate() {
                conn.wbuf.extend(build(i, first + k as i32).frame());
            }
            self.xid = first + (end - start) as i32 - 1;
            conn.flush().await?;
            let mut want = first;
            while want <= self.xid {
                let Some((x, err, body)) = self.reply().await? else {
                    continue;
                };
                if x != want {
                    self.conn = None;
                    return Err(Error::Refused(format!(
                        "a reply out of order (xid {x}, awaited {want})"
                    )));
                }
                out.push((err, body));
                want += 1;
            }
            start = end;
        }
        Ok(out)
    }

    /// One request, `build(xid)`: its error code and body.
    async fn call(&mut self, mut build: impl FnMut(i32) -> JuteOut) -> Result<(i32, Bytes), Error> {
        Ok(self.calls(1, |_, x| build(x)).await?.remove(0))
    }

    /// Operation `op` on `path` with a watch or not: the body when the node
    /// is there, `None` when it is not.
    async fn watched(&mut self, op: i32, path: &str, watch: bool) -> Result<Option<Bytes>, Error> {
        let full = self.full(path);
        let (err, body) = self
            .call(|x| {
                let mut o = JuteOut::request(x, op);
                o.str(&full).bool(watch);
                o
            })
            .await?;
        match err {
            code::OK => Ok(Some(body)),
            code::NO_NODE => Ok(None),
            e => Err(refused(e, path)),
        }
    }

    /// The children of `path` (`None`: no such node), and a watch on them.
    pub async fn children(
        &mut self,
        path: &str,
        watch: bool,
    ) -> Result<Option<Vec<String>>, Error> {
        match self.watched(op::GET_CHILDREN, path, watch).await? {
            Some(body) => Ok(Some(JuteIn::new(&body).strs()?)),
            None => Ok(None),
        }
    }

    /// Whether `path` exists, and a watch on it (its creation too).
    pub async fn exists(&mut self, path: &str, watch: bool) -> Result<bool, Error> {
        Ok(self.watched(op::EXISTS, path, watch).await?.is_some())
    }

    /// The data of each of `paths` (`None`: gone), and a watch on each.
    pub async fn data(
        &mut self,
        paths: &[String],
        watch: bool,
    ) -> Result<Vec<Option<Data>>, Error> {
        let full: Vec<String> = paths.iter().map(|p| self.full(p)).collect();
        let replies = self
            .calls(full.len(), |i, x| {
                let mut o = JuteOut::request(x, op::GET_DATA);
                o.str(&full[i]).bool(watch);
                o
            })
            .await?;
        replies
            .into_iter()
            .zip(paths)
            .map(|((err, body), path)| match err {
                code::OK => {
                    let mut r = JuteIn::new(&body);
                    let data = r.buf()?.unwrap_or_default().to_vec();
                    Ok(Some((data, r.stat_version()?)))
                }
                code::NO_NODE => Ok(None),
                e => Err(refused(e, path)),
            })
            .collect()
    }

    /// Writes `data` to `path` if its version is still `version` (-1: any);
    /// the new version.
    pub async fn set_data(&mut self, path: &str, data: &[u8], version: i32) -> Result<i32, Error> {
        let full = self.full(path);
        let (err, body) = self
            .call(|x| {
                let mut o = JuteOut::request(x, op::SET_DATA);
                o.str(&full).buf(data).i32(version);
                o
            })
            .await?;
        match err {
            code::OK => Ok(JuteIn::new(&body).stat_version()?),
            e => Err(refused(e, path)),
        }
    }

    /// The next watch that fires, keeping the session alive meanwhile.
    /// Cancel-safe: an interrupted wait loses nothing.
    pub async fn event(&mut self) -> Result<Event, Error> {
        loop {
            let conn = self.conn.as_mut().ok_or_else(lost)?;
            if let Some(e) = conn.events.pop_front() {
                return Ok(e);
            }
            if conn.has_frame() {
                self.reply().await?;
                continue;
            }
            let ping_at = conn.last_send + conn.timeout / 3;
            tokio::select! {
                r = conn.fill() => { r?; }
                _ = tokio::time::sleep_until(ping_at) => {
                    conn.wbuf.extend(JuteOut::request(xid::PING, op::PING).frame());
                    conn.flush().await?;
                }
            }
        }
    }
}

fn refused(code: i32, path: &str) -> Error {
    let what = match code {
        code::NO_AUTH => "not allowed (the node's ACL; see digest_auth_file)".to_string(),
        code::BAD_VERSION => "changed meanwhile".to_string(),
        code::AUTH_FAILED => "authentication failed".to_string(),
        c => format!("error code {c}"),
    };
    Error::Refused(format!("{path}: {what}"))
}

impl Conn {
    /// Writes what is queued. Cancel-safe: what was written is gone from
    /// the queue, what was not stays.
    async fn flush(&mut self) -> Result<(), Error> {
        while !self.wbuf.is_empty() {
            let n = self.stream.write(&self.wbuf).await?;
            if n == 0 {
                return Err(Error::Unreachable(
                    "the server closed the connection".into(),
                ));
            }
            self.wbuf.drain(..n);
            self.last_send = Instant::now();
        }
        Ok(())
    }

    fn has_frame(&self) -> bool {
        self.rbuf.len() >= 4
            && self.rbuf.len()
                >= 4 + u32::from_be_bytes(self.rbuf[..4].try_into().unwrap()) as usize
    }

    /// Reads once, within the read deadline (two thirds of the session
    /// timeout since the server last said anything). Cancel-safe.
    async fn fill(&mut self) -> Result<(), Error> {
        let dead = self.last_recv + self.timeout * 2 / 3;
        match tokio::time::timeout_at(dead, self.stream.read_buf(&mut self.rbuf)).await {
            Err(_) => Err(Error::Unreachable(format!(
                "no answer within {:?}",
                self.timeout * 2 / 3
            ))),
            Ok(Ok(0)) => Err(Error::Unreachable(
                "the server closed the connection".into(),
            )),
            Ok(Ok(_)) => {
                self.last_recv = Instant::now();
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// The next whole frame, reading as needed.
    async fn frame(&mut self) -> Result<Bytes, Error> {
        loop {
            if self.rbuf.len() >= 4 {
                let len = u32::from_be_bytes(self.rbuf[..4].try_into().unwrap()) as usize;
                if len > MAX_FRAME {
                    return Err(Error::Refused(format!(
                        "a packet of {len} bytes (at most {MAX_FRAME} are taken)"
                    )));
                }
                if self.rbuf.len() >= 4 + len {
                    self.rbuf.advance(4);
                    return Ok(self.rbuf.split_to(len).freeze());
                }
                self.rbuf.reserve(4 + len - self.rbuf.len());
            }
            // Pings go out while a long answer is awaited, too.
            if self.last_send.elapsed() >= self.timeout / 3 {
                self.wbuf
                    .extend(JuteOut::request(xid::PING, op::PING).frame());
                self.flush().await?;
            }
            self.fill().await?;
        }
    }
}
