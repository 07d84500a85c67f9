//! The guard, after the request context: what the gateway answers itself and what it
//! refuses before anyone is authenticated.
//!
//! Answers `/healthz` and `/readyz` locally; everything outside `/v1/` is a 404. Refuses (400,
//! nothing sent upstream) CONNECT/TRACE and unknown methods, absolute-form targets naming
//! another host, HTTP/1.x requests without exactly one `Host`, paths with dot segments, empty
//! segments, backslashes, NUL, encoded `/` `\` `%` NUL or encoded unreserved characters
//! (`%70atients`, `%2e`), targets the server had to make parseable (see [`crate::framing`]),
//! and requests carrying both Content-Length and Transfer-Encoding.
//! Bodies over the configured limit get a 413, up front when declared, mid-stream otherwise.
//! The `Host` rule (400 `bad_host`) applies to the local routes too: it is about the message,
//! not the route.

use crate::auth::Authenticator;
use crate::body::Body;
use crate::error::GatewayError;
use crate::step::{Answer, Inner, Wrap};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Longest request path accepted.
pub const MAX_PATH_BYTES: usize = 2048;

/// Whether `/readyz` answers 200 (and the `ready` gauge reads 1): shutdown has not begun, and
/// the serving token verifier has its keys.
pub fn ready(draining: &AtomicBool, authn: &Authenticator) -> bool {
    !draining.load(Ordering::Acquire) && authn.ready()
}

/// Local routes, request-target checks and the body limit.
#[derive(Clone)]
pub struct GuardLayer {
    /// What requests are checked against (shared: the layer is cloned with the stack for
    /// every request).
    pub limits: Arc<Limits>,
    /// Set once shutdown has begun (`/readyz` fails from then on).
    pub draining: Arc<AtomicBool>,
    /// The token verifier of the set this guard is part of (`/readyz` waits for its keys).
    pub authn: Arc<Authenticator>,
}

/// What the guard checks requests against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request body limit in bytes.
    pub max_body: u64,
    /// The gateway's own authority (from the public base URL): the only one an absolute-form
    /// target may name.
    pub authority: http::uri::Authority,
}

impl Wrap for GuardLayer {
    type Error = GatewayError;

    fn wrap<S: Inner<GatewayError>>(
        &self,
        inner: &mut S,
        req: Request<Body>,
    ) -> Answer<GatewayError> {
        let ctx = crate::context::Context::of(&req).cloned();
        if let Err(e) = check_arrival(&req) {
            return Box::pin(async { Err(e) });
        }
        let local = match req.uri().path() {
            "/healthz" => Some((StatusCode::OK, "live")),
            "/readyz" if ready(&self.draining, &self.authn) => Some((StatusCode::OK, "ready")),
            "/readyz" => Some((StatusCode::SERVICE_UNAVAILABLE, "not_ready")),
            _ => None,
        };
        if let Some((status, s)) = local {
            let resp = crate::error::json_response(status, &serde_json::json!({ "status": s }));
            return Box::pin(async { Ok(resp) });
        }
        if let Err(e) = check(&req, &self.limits) {
            return Box::pin(async { Err(e) });
        }
        let limit = self.limits.max_body;
        // The client error the forwarder sees does not reliably carry the cause: the context
        // tells it this was our limit (413), not a failure of Cliniko.
        let req = req.map(|b| {
            Body::new(Limited::new(b, limit as usize).map_err(move |e| {
                if e.is::<LengthLimitError>()
                    && let Some(c) = &ctx
                {
                    c.trip_body_limit();
                }
                axum_core::Error::new(e)
            }))
        });
        Box::pin(inner.call(req))
    }
}

/// What is wrong with the message whatever its route (the local routes included): first an
/// unusable target (the path it shows is only a stand-in for what was sent), then the `Host`
/// rule.
fn check_arrival<B>(req: &Request<B>) -> Result<(), GatewayError> {
    if crate::context::Context::of(req).is_some_and(|c| c.arrival.unusable_target) {
        return Err(bad(
            "bad_target",
            "the request target holds a byte that must be percent-encoded there: a control \
             byte, or in the path a space, '<', '>', '`' or a byte that is not UTF-8",
        ));
    }
    check_host(req)
}

fn bad(code: &'static str, message: &'static str) -> GatewayError {
    GatewayError::BadRequest { code, message }
}

/// Every check that needs only the request head.
pub fn check<B>(req: &Request<B>, limits: &Limits) -> Result<(), GatewayError> {
    check_method(req.method())?;
    check_authority(req, &limits.authority)?;
    check_path(req.uri().path())?;
    check_length(req, limits.max_body)
}

/// The checks about the message rather than the route, for a route of the gateway's own that
/// branches off before the guard (enrolment): an unusable target, the `Host` rule, the method,
/// an absolute-form target naming another host, an ambiguous or declared-too-large length
/// (`max_body`: that route's own limit).
pub fn check_message<B>(
    req: &Request<B>,
    limits: &Limits,
    max_body: u64,
) -> Result<(), GatewayError> {
    check_arrival(req)?;
    check_method(req.method())?;
    check_authority(req, &limits.authority)?;
    check_length(req, max_body)
}

/// Content-Length with Transfer-Encoding (400), a declared length over `max_body` (413).
fn check_length<B>(req: &Request<B>, max_body: u64) -> Result<(), GatewayError> {
    let h = req.headers();
    let both = h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH);
    if both || crate::context::Context::of(req).is_some_and(|c| c.arrival.ambiguous_length) {
        return Err(bad(
            "ambiguous_length",
            "a request may not carry both Content-Length and Transfer-Encoding",
        ));
    }
    if let Some(len) = h.get(header::CONTENT_LENGTH) {
        let n: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad_content_length", "Content-Length is not a number"))?;
        if n > max_body {
            return Err(GatewayError::BodyTooLarge { limit: max_body });
        }
    }
    Ok(())
}

fn check_method(m: &Method) -> Result<(), GatewayError> {
    match *m {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS => Ok(()),
        _ => Err(bad(
            "bad_method",
            "method not allowed: use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS",
        )),
    }
}

/// RFC 9112 §3.2: 400 for an HTTP/1.1 request without `Host` and for any HTTP/1.x request
/// with more than one. HTTP/2 carries `:authority` instead and is not checked.
fn check_host<B>(req: &Request<B>) -> Result<(), GatewayError> {
    use http::Version;
    let hosts = req.headers().get_all(header::HOST).iter().count();
    match (req.version(), hosts) {
        (Version::HTTP_10 | Version::HTTP_11, 2..) => Err(bad(
            "bad_host",
            "the request carries more than one Host header",
        )),
        (Version::HTTP_11, 0) => Err(bad(
            "bad_host",
            "an HTTP/1.1 request must carry a Host header",
        )),
        _ => Ok(()),
    }
}

/// An absolute-form target (HTTP/1.1) must name this gateway (RFC 9112 §3.2.2 says to ignore
/// `Host` then, so it is not what we compare with). HTTP/2's `:authority` is whatever name the
/// caller used and is never used for routing, so it is not checked.
fn check_authority<B>(req: &Request<B>, ours: &http::uri::Authority) -> Result<(), GatewayError> {
    if req.version() == http::Version::HTTP_2 {
        return Ok(());
    }
    match req.uri().authority() {
        Some(a) if !a.as_str().eq_ignore_ascii_case(ours.as_str()) => Err(bad(
            "bad_target",
            "absolute-form request targets must name this gateway",
        )),
        _ => Ok(()),
    }
}

/// Only `/v1/...` paths made of plain segments are proxied.
pub fn check_path(path: &str) -> Result<(), GatewayError> {
    if crate::metrics::RouteClass::of(path) != crate::metrics::RouteClass::Proxy {
        return Err(GatewayError::NotFound);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(bad("bad_target", "the request path is too long"));
    }
    let bytes = path.as_bytes();
    if bytes.iter().any(|&b| b == b'\\' || b < 0x20 || b == 0x7f) {
        return Err(bad(
            "bad_target",
            "the request path contains a forbidden character",
        ));
    }
    for w in bytes.windows(3).filter(|w| w[0] == b'%') {
        let enc = [w[1].to_ascii_lowercase(), w[2].to_ascii_lowercase()];
        if matches!(&enc, b"2f" | b"5c" | b"00" | b"25") {
            return Err(bad(
                "bad_target",
                "encoded '/', '\\', '%' or NUL in the path is not allowed",
            ));
        }
        // RFC 3986 §2.3: an encoded unreserved character means the same as the character, and
        // Cliniko decodes it (`%70atients` is `patients` to Rails) while the policy, cache and
        // audit would see another path. Refused rather than normalised: no conforming client
        // sends it, and a refusal cannot disagree with Cliniko about what was meant.
        let decoded = hex::decode(enc).ok().map(|b| b[0]);
        if decoded.is_some_and(|c| c.is_ascii_alphanumeric() || b"-._~".contains(&c)) {
            return Err(bad(
                "bad_target",
                "percent-encoded letters, digits, '-', '.', '_' or '~' in the path are not allowed: send them unencoded",
            ));
        }
    }
    if path[1..].split('/').any(|seg| seg == "." || seg == "..") {
        return Err(bad(
            "bad_target",
            "dot segments in the path are not allowed",
        ));
    }
    if path[1..].split('/').rev().skip(1).any(str::is_empty) {
        return Err(bad("bad_target", "empty path segments are not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(p: &str) -> &'static str {
        match check_path(p) {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn paths() {
        assert_eq!(code("/v1/patients"), "ok");
        assert_eq!(code("/v1/patients/123/"), "ok");
        assert_eq!(code("/v1"), "ok");
        assert_eq!(code("/v2/patients"), "route_not_found");
        assert_eq!(code("/"), "route_not_found");
        assert_eq!(code("/v1x"), "route_not_found");
        for bad in [
            "/v1/../admin",
            "/v1/./patients",
            "/v1/%2e%2e/x",
            "/v1/%2E%2e/x",
            "/v1/a%2fb",
            "/v1/a%5Cb",
            "/v1/a\\b",
            "/v1//evil",
            "/v1/a%00",
            "/v1/a%252e",
            "/v1/%70atients/7",
            "/v1/patients/%37",
            "/v1/PATIENTS%5F",
            "/v1/a%2Db",
            "/v1/a%7e",
        ] {
            assert_eq!(code(bad), "bad_target", "{bad}");
        }
        assert_eq!(code(&format!("/v1/{}", "a".repeat(3000))), "bad_target");
        // Encoded reserved or non-ASCII characters mean something else: left to Cliniko.
        for fine in ["/v1/a%20b", "/v1/a%3Ab", "/v1/caf%C3%A9", "/v1/a%2Bb"] {
            assert_eq!(code(fine), "ok", "{fine}");
        }
    }

    #[test]
    fn host_must_be_single_on_http1_only() {
        let req = |v: http::Version, hosts: &[&str]| {
            let mut b = Request::builder().version(v).uri("/v1/x");
            for h in hosts {
                b = b.header("host", *h);
            }
            check_host(&b.body(()).unwrap()).map_err(|e| e.code())
        };
        use http::Version as V;
        assert_eq!(req(V::HTTP_11, &["gw"]), Ok(()));
        assert_eq!(req(V::HTTP_11, &[]), Err("bad_host"));
        assert_eq!(req(V::HTTP_11, &["gw", "gw"]), Err("bad_host"));
        assert_eq!(req(V::HTTP_10, &[]), Ok(()));
        assert_eq!(req(V::HTTP_10, &["a", "b"]), Err("bad_host"));
        assert_eq!(req(V::HTTP_2, &[]), Ok(()), ":authority, no Host");
    }

    fn limits(max_body: u64) -> Limits {
        Limits {
            max_body,
            authority: "gw.local".parse().unwrap(),
        }
    }

    #[test]
    fn methods_and_framing() {
        let r = Request::builder()
            .method("TRACE")
            .uri("/v1/x")
            .body(())
            .unwrap();
        assert_eq!(check(&r, &limits(10)).unwrap_err().code(), "bad_method");
        let r = Request::builder()
            .method("POST")
            .uri("/v1/x")
            .header("content-length", "5")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        assert_eq!(
            check(&r, &limits(10)).unwrap_err().code(),
            "ambiguous_length"
        );
        let r = Request::builder()
            .method("POST")
            .uri("/v1/x")
            .header("content-length", "11")
            .body(())
            .unwrap();
        assert_eq!(check(&r, &limits(10)).unwrap_err().code(), "body_too_large");
        let r = Request::builder()
            .uri("http://evil.example/v1/x")
            .header("host", "gw.local")
            .body(())
            .unwrap();
        assert_eq!(check(&r, &limits(10)).unwrap_err().code(), "bad_target");
        let r = Request::builder()
            .uri("http://evil.example/v1/x")
            .header("host", "evil.example")
            .body(())
            .unwrap();
        assert_eq!(
            check(&r, &limits(10)).unwrap_err().code(),
            "bad_target",
            "Host must not vouch"
        );
        let r = Request::builder()
            .uri("http://gw.local/v1/x")
            .header("host", "gw.local")
            .body(())
            .unwrap();
        assert!(check(&r, &limits(10)).is_ok());
    }
}
