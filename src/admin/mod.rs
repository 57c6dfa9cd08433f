//! The admin endpoint: `/metrics`, the JSON API, health probes and the status
//! page, served with hyper off the proxy's hot path. It only reads atomics
//! and snapshots, and changes pools through [`Pool`](crate::pool::Pool)'s door.

mod api;
mod endpoint;
mod guard;
pub mod status;
mod view;

pub(crate) use endpoint::{load_token, AdminEndpoint, Settings};

pub use view::{Control, ControlFuture, Fleet, ListenerView, View};

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use guard::{authorized, cross_site, known_host};

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

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let text = serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot write a JSON answer");
        "{}".into()
    });
    let mut r = Response::new(Full::new(Bytes::from(text)));
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

/// Reads a small request body, refusing oversized ones and those that do
/// not arrive within `within` (a client trickling a body would otherwise
/// hold an admin connection for as long as it likes).
pub(crate) async fn read_body(
    req: Request<Incoming>,
    within: std::time::Duration,
) -> Result<Bytes, Response<Body>> {
    match tokio::time::timeout(within, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("cannot read the body: {e}"),
        )),
        Err(_) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} (header_timeout)",
                    humantime::format_duration(within)
                ),
            );
            r.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
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
        (&Method::GET, ["api", "v1", "engine"]) => match crate::engine::view() {
            Some(e) => json(StatusCode::OK, &e),
            None => error(
                StatusCode::NOT_FOUND,
                "no engine was chosen in this process",
            ),
        },
        (&Method::POST, ["api", "v1", "reload"]) => match server.reload().await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({"reloaded": true})),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        },
        (
            &Method::POST,
            ["api", "v1", "pools", pool, "backends", addr, action @ ("drain" | "enable")],
        ) => api::set_draining(&*server, pool, addr, *action == "drain").await,
        (&Method::GET, ["api", "v1", "cluster"]) => api::cluster(&*server).await,
        (&Method::GET, ["api", "v1", "history"]) => match api::history_query(req.uri().query()) {
            Ok(q) => json(StatusCode::OK, &server.history(&q)),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (&Method::PUT, ["api", "v1", "pools", pool, "backends", addr, "weight"]) => {
            let (pool, addr) = (pool.to_string(), addr.to_string());
            match read_body(req, settings.body_timeout).await {
                Ok(body) => api::set_weight(&*server, &pool, &addr, &body).await,
                Err(r) => r,
            }
        }
        (_, ["" | "status" | "metrics" | "healthz" | "readyz"])
        | (_, ["api", "v1", "pools" | "listeners" | "reload" | "cluster" | "history" | "engine"])
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
    use crate::config::AdminConfig;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

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
                    family: "ipv4",
                    pool: "p".into(),
                    routes: Vec::new(),
                    accept_proxy: false,
                    proxy_trusted: Vec::new(),
                    sni_required: false,
                    tls: None,
                    rates: Default::default(),
                    mirror: None,
                    udp_balance: None,
                }],
                admin: None,
            })
        }
        fn render_metrics(&self) -> String {
            "fake_metric 1\n".into()
        }
        fn ready(&self) -> bool {
            false
        }
        fn reload(&self) -> ControlFuture<'_, Result<(), String>> {
            Box::pin(async { Err("fake.toml:1:1: no".to_string()) })
        }
        fn share(
            &self,
            _: &str,
            _: SocketAddr,
            _: crate::pool::Change,
        ) -> ControlFuture<'_, Option<Result<(), crate::pool::Unshared>>> {
            Box::pin(async { None })
        }
        fn cluster(&self) -> ControlFuture<'_, Option<Result<crate::admin::Fleet, String>>> {
            Box::pin(async { Some(Err("etcd unreachable".to_string())) })
        }
        fn history(&self, q: &crate::history::Query) -> serde_json::Value {
            serde_json::json!({ "points": q.points })
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
            history_interval: Duration::from_secs(5),
        };
        let endpoint = AdminEndpoint::bind(&cfg, None).unwrap();
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
        // A cluster that cannot be listed is a 503 that says why.
        let cluster = call(endpoint.addr, &get("/api/v1/cluster")).await;
        assert!(cluster.starts_with("HTTP/1.1 503"), "{cluster}");
        assert!(cluster.contains("etcd unreachable"), "{cluster}");
    }

    #[tokio::test]
    async fn cross_site_requests_are_refused() {
        let cfg = AdminConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            token_file: None,
            protect_reads: false,
            hosts: vec!["lb.example".into()],
            header_timeout: Duration::from_secs(10),
            history_interval: Duration::from_secs(5),
        };
        let endpoint = AdminEndpoint::bind(&cfg, None).unwrap();
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
