//! Who may ask what of the admin endpoint: the `Host` a request names, a
//! changing request's content type and origin (no other web page can send
//! one), and the bearer token.

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Request, StatusCode};
use subtle::ConstantTimeEq;

use super::Settings;

/// Whether `Host` names this endpoint: an IP literal, `localhost`, or a
/// configured name. A DNS-rebinding page reaches us under its own domain
/// name, so refusing unknown names keeps it from reading the API.
pub(super) fn known_host(settings: &Settings, req: &Request<Incoming>) -> bool {
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
pub(super) fn cross_site(req: &Request<Incoming>) -> Option<(StatusCode, &'static str)> {
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

pub(super) fn authorized(settings: &Settings, req: &Request<Incoming>) -> bool {
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
