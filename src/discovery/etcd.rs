//! A small etcd v3 client over etcd's own JSON gateway (`/v3/...` on the
//! client port, stable since etcd 3.4): range, put, watch, leases. Keys and
//! values travel base64-encoded and 64-bit integers as JSON strings. It
//! needs only the hyper client switchyard already has; every gRPC client on
//! crates.io needs `protoc` to build.
//!
//! It runs past 400 lines: it is a whole client of etcd's JSON gateway
//! (ranges, watches, leases, TLS), with its tests.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use std::sync::Arc;

use crate::tls::Originator;

/// How long one request may take (a watch only to its first answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest watch message taken (one revision's events).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The largest answer taken to a range: 10,000 members of a few hundred
/// bytes each fit many times over; a store that sends more is refused
/// before it is parsed, not after it filled the memory.
const MAX_RANGE: usize = 64 * 1024 * 1024;

/// The largest answer taken to any other request.
const MAX_ANSWER: usize = 64 * 1024;

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint could be reached or answered in time.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered, but not with what was asked for.
    #[error("etcd said: {0}")]
    Refused(String),
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value; `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

/// The end of the range of keys that begin with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: the empty prefix (or all 0xff) ranges to the end.
    vec![0]
}

/// An int64 the gateway wrote as a string (or, leniently, a number).
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value, deleted: bool) -> Option<Kv> {
    let key = B64.decode(v.get("key")?.as_str()?).ok()?;
    let value = if deleted {
        None
    } else {
        Some(
            B64.decode(v.get("value").and_then(Value::as_str).unwrap_or(""))
                .ok()?,
        )
    };
    Some(Kv {
        key: String::from_utf8_lossy(&key).into_owned(),
        value,
    })
}

/// An int64 as the gateway writes it: a string (or, leniently, a number).
#[derive(Debug)]
struct Int(i64);

impl<'de> serde::Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Int, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Either<'a> {
            Text(&'a str),
            Number(i64),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(Int(n)),
            Either::Text(t) => t.parse().map(Int).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(serde::Deserialize)]
struct EtcdHeader {
    revision: Option<Int>,
}

#[derive(serde::Deserialize)]
struct RangeKv {
    key: String,
    #[serde(default)]
    value: String,
}

/// `/v3/kv/range`'s answer: only what is used.
#[derive(serde::Deserialize)]
struct RangeAnswer {
    header: Option<EtcdHeader>,
    #[serde(default)]
    kvs: Vec<RangeKv>,
}

/// A range answer's revision and keys; an answer without a revision is
/// an error.
fn from_range(r: RangeAnswer) -> Result<(i64, Vec<Kv>), Error> {
    // Without it a watch would start from revision 1 and replay the
    // store's whole history.
    let revision = r
        .header
        .and_then(|h| h.revision)
        .map(|r| r.0)
        .filter(|r| *r > 0)
        .ok_or_else(|| Error::Refused("a range answer without header.revision".into()))?;
    let kvs = r
        .kvs
        .into_iter()
        .filter_map(|k| {
            Some(Kv {
                key: String::from_utf8_lossy(&B64.decode(k.key).ok()?).into_owned(),
                value: Some(B64.decode(k.value).ok()?),
            })
        })
        .collect();
    Ok((revision, kvs))
}

/// An HTTP/1.1 connection over `io`, driven by a task of its own.
async fn http1<IO>(
    io: IO,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
    hyper::Error,
>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, conn))
}

/// A client of one etcd cluster: each request tries the endpoints in order.
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    /// For `https://` endpoints.
    tls: Option<Arc<Originator>>,
}

/// A watch in progress: its stream of messages.
pub struct EtcdWatch {
    body: Incoming,
    buf: BytesMut,
    _conn: tokio::task::JoinHandle<()>,
}

/// One message of a watch.
#[derive(Debug, Default)]
pub struct Changes {
    /// The store's revision when it was sent.
    pub revision: i64,
    /// Puts and deletions, in order.
    pub events: Vec<Kv>,
    /// The revision asked for was compacted away: read again from this one.
    pub compacted: Option<i64>,
}

impl Etcd {
    /// A client of `endpoints` (`host:port` each), over TLS with `tls`.
    pub fn new(endpoints: Vec<String>, tls: Option<Arc<Originator>>) -> Etcd {
        Etcd { endpoints, tls }
    }

    /// Opens a connection to the first endpoint that takes one and sends
    /// `body` to `path`; the response's head, and its body to read.
    async fn send(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(Incoming, tokio::task::JoinHandle<()>), Error> {
        let mut last = String::from("no endpoint");
        for ep in &self.endpoints {
            match tokio::time::timeout(REQUEST_TIMEOUT, self.send_to(ep, path, body)).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(Error::Refused(e))) => return Err(Error::Refused(e)),
                Ok(Err(Error::Unreachable(e))) => last = format!("{ep}: {e}"),
                Err(_) => last = format!("{ep}: no answer within {REQUEST_TIMEOUT:?}"),
            }
        }
        Err(Error::Unreachable(last))
    }

    async fn send_to(
        &self,
        ep: &str,
        path: &str,
        body: &Value,
    ) -> Result<(Incoming, tokio::task::JoinHandle<()>), Error> {
        let down = |e: &dyn std::fmt::Display| Error::Unreachable(e.to_string());
        let stream = TcpStream::connect(ep).await.map_err(|e| down(&e))?;
        let _ = stream.set_nodelay(true);
        // A store host that vanishes without a reset is noticed on an idle
        // connection too (a watch's): 10 s idle, then 3 probes 3 s apart.
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(3))
            .with_retries(3);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
        let (mut sender, conn) = match &self.tls {
            None => http1(stream).await,
            Some(tls) => {
                let addr = stream.peer_addr().map_err(|e| down(&e))?;
                let stream = tls
                    .connect(stream, ep, addr.into())
                    .await
                    .map_err(|e| Error::Unreachable(format!("TLS to {ep}: {e}")))?;
                http1(stream).await
            }
        }
        .map_err(|e| down(&e))?;
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, ep)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| down(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| down(&e))?;
        let status = resp.status();
        let body = resp.into_body();
        if !status.is_success() {
            let text = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(Error::Refused(format!("{status}: {}", text.trim())));
        }
        Ok((body, conn))
    }

    /// One request and its whole answer, at most `limit` bytes, as `T`.
    async fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Value,
        limit: usize,
    ) -> Result<T, Error> {
        let (incoming, _conn) = self.send(path, &body).await?;
        let bytes = tokio::time::timeout(
            REQUEST_TIMEOUT,
            http_body_util::Limited::new(incoming, limit).collect(),
        )
        .await
        .map_err(|_| Error::Unreachable("the answer did not finish in time".into()))?
        .map_err(
            |e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                Some(_) => Error::Refused(format!("an answer of more than {limit} bytes")),
                None => Error::Unreachable(e.to_string()),
            },
        )?
        .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| Error::Refused(format!("not an answer: {e}")))
    }

    /// One request and its whole (small) JSON answer.
    async fn call(&self, path: &str, body: Value) -> Result<Value, Error> {
        self.call_as(path, body, MAX_ANSWER).await
    }

    /// Every key under `prefix`, and the revision they were read at.
    pub async fn range(&self, prefix: &str) -> Result<(i64, Vec<Kv>), Error> {
        let r: RangeAnswer = self
            .call_as(
                "/v3/kv/range",
                json!({ "key": B64.encode(prefix), "range_end": B64.encode(range_end(prefix)) }),
                MAX_RANGE,
            )
            .await?;
        from_range(r)
    }

    /// What a watch on `prefix` should have seen by now: how many keys it
    /// holds and the revision of its latest change, asked on a connection of
    /// its own (a liveness probe beside a quiet watch).
    pub async fn latest(&self, prefix: &str) -> Result<(usize, i64), Error> {
        #[derive(serde::Deserialize)]
        struct ModKv {
            mod_revision: Option<Int>,
        }
        #[derive(serde::Deserialize)]
        struct EtcdAnswer {
            #[serde(default)]
            kvs: Vec<ModKv>,
            count: Option<Int>,
        }
        let a: EtcdAnswer = self
            .call_as(
                "/v3/kv/range",
                json!({
                    "key": B64.encode(prefix),
                    "range_end": B64.encode(range_end(prefix)),
                    "limit": "1",
                    "sort_order": "DESCEND",
                    "sort_target": "MOD",
                    "keys_only": true,
                }),
                MAX_ANSWER,
            )
            .await?;
        let latest = a
            .kvs
            .first()
            .and_then(|k| k.mod_revision.as_ref())
            .map_or(0, |r| r.0);
        let count = a.count.map_or(0, |c| c.0.max(0) as usize);
        Ok((count, latest))
    }

    /// Writes `value` at `key`, bound to `lease` if given.
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<(), Error> {
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if let Some(id) = lease {
            body["lease"] = json!(id.to_string());
        }
        self.call("/v3/kv/put", body).await.map(|_| ())
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.call("/v3/kv/deleterange", json!({ "key": B64.encode(key) }))
            .await
            .map(|_| ())
    }

    /// A lease that lives `ttl` unless kept alive; its ID.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, Error> {
        let v = self
            .call(
                "/v3/lease/grant",
                json!({ "TTL": ttl.as_secs().to_string() }),
            )
            .await?;
        match int(&v["ID"]) {
            0 => Err(Error::Refused(format!("no lease granted: {v}"))),
            id => Ok(id),
        }
    }

    /// Renews lease `id`; an error when it is gone.
    pub async fn keep_alive(&self, id: i64) -> Result<(), Error> {
        let v = self
            .call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))
            .await?;
        match int(&v["result"]["TTL"]) {
            0 => Err(Error::Refused(format!("lease {id} expired"))),
            _ => Ok(()),
        }
    }

    /// Watches every key under `prefix` from revision `from` on.
    pub async fn watch(&self, prefix: &str, from: i64) -> Result<EtcdWatch, Error> {
        let body = json!({ "create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(range_end(prefix)),
            "start_revision": from.to_string(),
        }});
        let (body, conn) = self.send("/v3/watch", &body).await?;
        Ok(EtcdWatch {
            body,
            buf: BytesMut::new(),
            _conn: conn,
        })
    }
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        // The connection would otherwise stay open, streaming to nobody.
        self._conn.abort();
    }
}

impl EtcdWatch {
    /// The next message: events, or word that the revision is compacted.
    /// An error when the stream ends or breaks.
    pub async fn next(&mut self) -> Result<Changes, Error> {
        loop {
            // The gateway writes one JSON object per message.
            let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match stream.next() {
                Some(Ok(v)) => {
                    let used = stream.byte_offset();
                    let _ = self.buf.split_to(used);
                    if let Some(c) = changes(&v)? {
                        return Ok(c);
                    }
                    continue;
                }
                Some(Err(e)) if !e.is_eof() => {
                    return Err(Error::Refused(format!("a watch message is not JSON: {e}")))
                }
                _ => {}
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(Error::Refused("a watch message is too large".into()));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(Error::Unreachable(e.to_string())),
                None => return Err(Error::Unreachable("the watch ended".into())),
            }
        }
    }
}

/// What one watch message says; `None` for a message with nothing to act
/// on (the watch's creation, progress).
fn changes(v: &Value) -> Result<Option<Changes>, Error> {
    if let Some(e) = v.get("error") {
        return Err(Error::Refused(e.to_string()));
    }
    let r = &v["result"];
    let compact = int(&r["compact_revision"]);
    if compact > 0 || r["canceled"].as_bool() == Some(true) {
        return Ok(Some(Changes {
            compacted: Some(compact),
            ..Changes::default()
        }));
    }
    let Some(events) = r["events"].as_array() else {
        return Ok(None);
    };
    let events = events
        .iter()
        .filter_map(|e| kv(&e["kv"], e["type"].as_str() == Some("DELETE")))
        .collect();
    Ok(Some(Changes {
        revision: int(&r["header"]["revision"]),
        events,
        compacted: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_needs_its_revision() {
        let parse = |text: &str| {
            serde_json::from_str::<RangeAnswer>(text)
                .map_err(|e| Error::Refused(e.to_string()))
                .and_then(from_range)
        };
        let (rev, kvs) = parse(&format!(
            r#"{{"header": {{"revision": "42"}}, "kvs": [{{"key": "{}", "value": "{}"}}]}}"#,
            B64.encode("/p/a"),
            B64.encode("10.0.0.1:80")
        ))
        .unwrap();
        assert_eq!((rev, kvs.len()), (42, 1));
        assert_eq!(parse(r#"{"header": {"revision": 7}}"#).unwrap().0, 7);
        for bad in [
            r#"{"kvs": []}"#,
            r#"{"header": {}}"#,
            r#"{"header": {"revision": "0"}}"#,
            r#"{"header": {"revision": "x"}}"#,
            r#"{"header": {"revision": null}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(range_end("/a/"), b"/a0".to_vec());
        assert_eq!(range_end("a\u{7f}"), vec![b'a', 0x80]);
        assert_eq!(range_end(""), vec![0]);
    }

    #[test]
    fn reads_watch_messages() {
        let put = json!({"result": {"header": {"revision": "7"}, "events": [
            {"kv": {"key": B64.encode("/p/a"), "value": B64.encode("10.0.0.1:80"), "mod_revision": "7"}},
            {"type": "DELETE", "kv": {"key": B64.encode("/p/b"), "mod_revision": "7"}}
        ]}});
        let c = changes(&put).unwrap().unwrap();
        assert_eq!(c.events[0].value.as_deref(), Some(&b"10.0.0.1:80"[..]));
        assert_eq!(
            c.events[1],
            Kv {
                key: "/p/b".into(),
                value: None
            }
        );
        let created = json!({"result": {"header": {"revision": "7"}, "created": true}});
        assert!(changes(&created).unwrap().is_none());
        let compacted =
            json!({"result": {"header": {}, "canceled": true, "compact_revision": "5"}});
        assert_eq!(changes(&compacted).unwrap().unwrap().compacted, Some(5));
    }
}
