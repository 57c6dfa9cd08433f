//! The admin endpoint: `/metrics`, the JSON API, health probes and the status
//! page, served with hyper off the proxy's hot path. It only reads atomics
//! and snapshots, and changes pools through [`Pool`](crate::pool::Pool)'s door.

mod api;
mod view;

pub use view::{Control, ListenerView, Pending, View};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AdminConfig;

/// Why the admin endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its address could not be bound.
    #[error("admin: cannot bind {addr}: {cause}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the kernel said.
        cause: std::io::Error,
    },
    /// `token_file` could not be read or is empty.
    #[error("admin: cannot read token_file {path}: {cause}")]
    Token {
        /// The configured path.
        path: std::path::PathBuf,
        /// What went wrong.
        cause: std::io::Error,
    },
}

/// The daemon as the endpoint's handlers see it.
pub type Daemon = Arc<dyn Control>;

/// Request bodies are tiny JSON objects; anything larger is refused.
const MAX_BODY: usize = 16 * 1024;
const STATUS_PAGE: &str = include_str!("status.html");

pub(crate) type Body = Full<Bytes>;

/// Who may do what.
pub(crate) struct Settings {
    token: Option<String>,
    protect_reads: bool,
    hosts: Vec<String>,
}

impl Settings {
    pub fn new(cfg: &AdminConfig, token: Option<String>) -> Settings {
        Settings {
            token,
            protect_reads: cfg.protect_reads,
            hosts: cfg.hosts.clone(),
        }
    }
}

/// Reads `token_file` (surrounding whitespace trimmed).
pub(crate) fn load_token(cfg: &AdminConfig) -> Result<Option<String>, Error> {
    let Some(path) = &cfg.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|cause| Error::Token {
        path: path.clone(),
        cause,
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(Error::Token {
            path: path.clone(),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        });
    }
    Ok(Some(token))
}

/// A bound admin endpoint; stops serving when dropped.
pub(crate) struct Endpoint {
    /// The configured address (what a reload compares).
    pub bind: SocketAddr,
    /// The bound address.
    pub addr: SocketAddr,
    pub settings: Arc<ArcSwap<Settings>>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// The listening socket's descriptor, to hand to a new process.
    pub fd: std::os::fd::RawFd,
    header_timeout: std::time::Duration,
    stop: CancellationToken,
}

impl Endpoint {
    pub fn bind(cfg: &AdminConfig, token: Option<String>) -> Result<Endpoint, Error> {
        let err = |cause| Error::Bind {
            addr: cfg.bind,
            cause,
        };
        let listener = crate::net::tcp_listener(cfg.bind, 128, false, None).map_err(err)?;
        Endpoint::serve_on(cfg, token, listener)
    }

    /// An endpoint on a listening socket already bound (handed over by the
    /// process this one replaces).
    pub fn serve_on(
        cfg: &AdminConfig,
        token: Option<String>,
        listener: std::net::TcpListener,
    ) -> Result<Endpoint, Error> {
        let err = |cause| Error::Bind {
            addr: cfg.bind,
            cause,
        };
        let addr = listener.local_addr().map_err(err)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        Ok(Endpoint {
            bind: cfg.bind,
            addr,
            settings: Arc::new(ArcSwap::from_pointee(Settings::new(cfg, token))),
            listener: std::sync::Mutex::new(Some(listener)),
            fd,
            header_timeout: cfg.header_timeout,
            stop: CancellationToken::new(),
        })
    }

    /// Starts serving; `parent` cancels it along with the daemon.
    pub fn spawn(&self, server: Daemon, parent: &CancellationToken, tracker: &TaskTracker) {
        let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("tokio runtime is running");
        let stop = self.stop.clone();
        let parent = parent.clone();
        let settings = self.settings.clone();
        let header_timeout = self.header_timeout;
        let connections = tracker.clone();
        tracing::info!(addr = %self.addr, "admin endpoint listening");
        tracker.spawn(async move {
            // Excess clients wait in the backlog: a slow or hostile client
            // cannot take the descriptors the proxy needs.
            let open = Arc::new(Semaphore::new(crate::fds::admin_connections()));
            let failures = crate::clock::Every::ms(1000);
            loop {
                let permit = tokio::select! {
                    p = open.clone().acquire_owned() => p.expect("never closed"),
                    _ = stop.cancelled() => return,
                    _ = parent.cancelled() => return,
                };
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            if failures.ready() {
                                tracing::warn!(error = %e, "admin accept failed (logged at most once a second)");
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = stop.cancelled() => return,
                    _ = parent.cancelled() => return,
                };
                let server = server.clone();
                let settings = settings.clone();
                let stop = stop.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        let settings = settings.load_full();
                        async move { Ok::<_, Infallible>(route(server, &settings, req).await) }
                    });
                    // A request's head must arrive within header_timeout,
                    // and so must the next one on a kept-alive connection
                    // (the status page asks every 2 s).
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        r = conn => if let Err(e) = r {
                            tracing::debug!(error = %e, "admin connection ended with an error");
                        },
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON error: `{"error": "..."}`.
pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

fn text(content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether `Host` names this endpoint: an IP literal, `localhost`, or a
/// configured name. A DNS-rebinding page reaches us under its own domain
/// name, so refusing unknown names keeps it from reading the API.
fn known_host(settings: &Settings, req: &Request<Incoming>) -> bool {
    let Some(host) = req.headers().get(HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without Host: no browser sends that.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || settings.hosts.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Why a mutating request is refused as possibly cross-site, if it is: a
/// browser sends a JSON content type only after a CORS preflight (which we
/// never grant), and an `Origin` must be our own.
fn cross_site(req: &Request<Incoming>) -> Option<(StatusCode, &'static str)> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a changing request needs `Content-Type: application/json`",
        ));
    }
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok()) {
        let own = host.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(h))
        });
        if !own {
            return Some((
                StatusCode::FORBIDDEN,
                "a request from another origin may not change anything",
            ));
        }
    }
    None
}

fn authorized(settings: &Settings, req: &Request<Incoming>) -> bool {
    let Some(token) = &settings.token else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

/// Reads a small request body, refusing oversized ones.
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("cannot read the body: {e}"),
        )),
    }
}

async fn route(server: Daemon, settings: &Settings, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    // Clients may percent-encode segments (a backend's `:` as `%3A`).
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let mutating = !matches!(method, Method::GET | Method::HEAD);
    let open = matches!(
        segments.as_slice(),
        ["healthz"] | ["readyz"] | [""] | ["status"]
    );
    let probe = matches!(segments.as_slice(), ["healthz"] | ["readyz"]);
    if !probe && !known_host(settings, &req) {
        return error(
            StatusCode::FORBIDDEN,
            "the Host header names no address of this endpoint; list extra names in [admin] hosts",
        );
    }
    if mutating {
        if let Some((status, why)) = cross_site(&req) {
            return error(status, why);
        }
    }
    if (mutating || (settings.protect_reads && !open)) && !authorized(settings, &req) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <token>` header is required",
        );
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return r;
    }
    let reads_need_token = settings.protect_reads;
    let writes_need_token = settings.token.is_some();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""] | ["status"]) => text("text/html; charset=utf-8", STATUS_PAGE),
        (&Method::GET, ["metrics"]) => text(
            "text/plain; version=0.0.4; charset=utf-8",
            server.render_metrics(),
        ),
        (&Method::GET, ["healthz"]) => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => {
            let ready = server.ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &serde_json::json!({ "ready": ready }))
        }
        (&Method::GET, ["api", "v1", "pools"]) => {
            api::pools(&*server, writes_need_token, reads_need_token)
        }
        (&Method::GET, ["api", "v1", "listeners"]) => api::listeners(&*server),
        (&Method::POST, ["api", "v1", "reload"]) => match server.reload().await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({"reloaded": true})),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        },
        (
            &Method::POST,
            ["api", "v1", "pools", pool, "backends", addr, action @ ("drain" | "enable")],
        ) => api::set_draining(&*server, pool, addr, *action == "drain"),
        (&Method::PUT, ["api", "v1", "pools", pool, "backends", addr, "weight"]) => {
            let (pool, addr) = (pool.to_string(), addr.to_string());
            match read_body(req).await {
                Ok(body) => api::set_weight(&*server, &pool, &addr, &body).await,
                Err(r) => r,
            }
        }
        (_, ["" | "status" | "metrics" | "healthz" | "readyz"])
        | (_, ["api", "v1", "pools" | "listeners" | "reload"])
        | (_, ["api", "v1", "pools", _, "backends", _, "drain" | "enable" | "weight"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

#[cfg(test)]
mod tests {
    //! The endpoint over a stand-in daemon: no listeners, pools or server.
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fake;

    impl Control for Fake {
        fn view(&self) -> Arc<View> {
            let config = crate::Config::parse(
                "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n",
                Path::new("fake.toml"),
            )
            .unwrap();
            Arc::new(View {
                config: Arc::new(config),
                pools: BTreeMap::new(),
                listeners: vec![ListenerView {
                    name: "l".into(),
                    protocol: "tcp",
                    addr: "127.0.0.1:7000".parse().unwrap(),
                    pool: "p".into(),
                }],
            })
        }
        fn render_metrics(&self) -> String {
            "fake_metric 1\n".into()
        }
        fn ready(&self) -> bool {
            false
        }
        fn reload(&self) -> Pending<'_, Result<(), String>> {
            Box::pin(async { Err("fake.toml:1:1: no".to_string()) })
        }
    }

    async fn call(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_any_control() {
        let cfg = AdminConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            token_file: None,
            protect_reads: false,
            hosts: Vec::new(),
            header_timeout: Duration::from_secs(10),
        };
        let endpoint = Endpoint::bind(&cfg, None).unwrap();
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        endpoint.spawn(Arc::new(Fake), &stop, &tracker);
        let get = |path: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: localhost:9901\r\nConnection: close\r\n\r\n")
        };
        let metrics = call(endpoint.addr, &get("/metrics")).await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.ends_with("fake_metric 1\n"), "{metrics}");
        let ready = call(endpoint.addr, &get("/readyz")).await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        let listeners = call(endpoint.addr, &get("/api/v1/listeners")).await;
        assert!(
            listeners.contains("\"addr\":\"127.0.0.1:7000\""),
            "{listeners}"
        );
        let reload = call(
            endpoint.addr,
            "POST /api/v1/reload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(reload.starts_with("HTTP/1.1 422"), "{reload}");
        assert!(reload.contains("fake.toml:1:1: no"), "{reload}");
    }

    #[tokio::test]
    async fn cross_site_requests_are_refused() {
        let cfg = AdminConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            token_file: None,
            protect_reads: false,
            hosts: vec!["lb.example".into()],
            header_timeout: Duration::from_secs(10),
        };
        let endpoint = Endpoint::bind(&cfg, None).unwrap();
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        endpoint.spawn(Arc::new(Fake), &stop, &tracker);
        let request = |method: &str, path: &str, host: &str, extra: &str| {
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
        };
        let status = |r: String| r.split_whitespace().nth(1).unwrap_or("").to_string();
        let a = endpoint.addr;
        let reload = "/api/v1/reload";
        let json = "Content-Type: application/json\r\n";
        // A plain form post (what any page can send) changes nothing.
        let plain = request(
            "POST",
            reload,
            "127.0.0.1:9901",
            "Content-Type: text/plain\r\n",
        );
        assert_eq!(status(call(a, &plain).await), "415");
        // A JSON post from another page's origin is refused.
        let foreign = request(
            "POST",
            reload,
            "127.0.0.1:9901",
            &format!("{json}Origin: http://evil.example\r\n"),
        );
        assert_eq!(status(call(a, &foreign).await), "403");
        // The same from our own origin goes through (the fake reload fails: 422).
        let own = request(
            "POST",
            reload,
            "127.0.0.1:9901",
            &format!("{json}Origin: http://127.0.0.1:9901\r\n"),
        );
        assert_eq!(status(call(a, &own).await), "422");
        // DNS rebinding: a page reaching us under its own name reads nothing.
        let rebound = request("GET", "/api/v1/listeners", "evil.example:9901", "");
        assert_eq!(status(call(a, &rebound).await), "403");
        for host in ["localhost:9901", "[::1]:9901", "10.1.2.3", "LB.example:80"] {
            let ok = request("GET", "/api/v1/listeners", host, "");
            assert_eq!(status(call(a, &ok).await), "200", "Host {host}");
        }
        // Probes answer whatever the Host.
        let probe = request("GET", "/healthz", "anything.example", "");
        assert_eq!(status(call(a, &probe).await), "200");
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
