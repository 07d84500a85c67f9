//! CORS for browser apps, off unless `[cors] allowed_origins` lists some: tower-http's
//! [`CorsLayer`], applied only to requests whose `Origin` is on the list.
//!
//! Why the gate: tower-http answers every `OPTIONS` itself and adds its allowed and exposed
//! lists to every answer, whatever the origin. Here an origin that is not listed gets no CORS
//! header at all (its `OPTIONS` goes on like any request: 401 without a token), and one that
//! is listed has its preflight answered by the gateway: no token, no Cliniko call, no budget.

use crate::body::Body;
use crate::config::CorsConfig;
use crate::step::{Answer, Inner, Wrap};
use http::{HeaderName, HeaderValue, Method, Request, header};
use std::convert::Infallible;
use std::sync::Arc;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// What a browser app may read from an answer besides the always-safe headers: the rate-limit
/// figures, how to retry, cache outcome, request id (to quote), a created record's `Location`
/// and `ETag` (for `If-None-Match`), and which answers are the gateway's own.
const EXPOSED: [&str; 11] = [
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "x-cache",
    "x-request-id",
    "location",
    "etag",
    crate::error::GATEWAY_ERROR_HEADER,
];

/// The CORS step: a [`Wrap`] layer for the stack.
#[derive(Clone)]
pub struct Cors {
    layer: CorsLayer,
    origins: Arc<[HeaderValue]>,
}

impl Cors {
    /// `None` while no origin is listed (CORS off). Assumes a validated config.
    pub fn new(cfg: &CorsConfig) -> Option<Cors> {
        let origins: Arc<[HeaderValue]> = cfg
            .allowed_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        if origins.is_empty() {
            return None;
        }
        let methods: Vec<Method> = cfg
            .allowed_methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let headers: Vec<HeaderName> = cfg
            .allowed_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let layer = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods(methods)
            .allow_headers(headers)
            .max_age(cfg.max_age)
            .expose_headers(EXPOSED.map(HeaderName::from_static));
        Some(Cors { layer, origins })
    }
}

/// Sends a request from a listed origin through tower-http's CORS service, others past it.
impl Wrap for Cors {
    type Error = Infallible;

    fn wrap<S: Inner<Infallible>>(&self, inner: &mut S, req: Request<Body>) -> Answer<Infallible> {
        let listed = req
            .headers()
            .get(header::ORIGIN)
            .is_some_and(|o| self.origins.contains(o));
        if listed {
            return Box::pin(self.layer.layer(inner).call(req));
        }
        let fut = inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            // The answer depends on the Origin (CORS headers or none): no cache may reuse one
            // given to another origin.
            resp.headers_mut()
                .append(header::VARY, HeaderValue::from_static("origin"));
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use tower::ServiceExt;

    fn cors() -> Cors {
        Cors::new(&CorsConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..CorsConfig::default()
        })
        .unwrap()
    }

    /// Counts the requests that got past the CORS step.
    fn inner(
        count: Arc<std::sync::atomic::AtomicUsize>,
    ) -> tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, std::convert::Infallible>
    {
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                let mut r = Response::new(Body::empty());
                r.headers_mut()
                    .insert("x-cache", HeaderValue::from_static("MISS"));
                Ok(r)
            }
        }))
    }

    fn req(method: Method, origin: Option<&str>) -> Request<Body> {
        let mut b = Request::builder().method(method).uri("/v1/patients");
        if let Some(o) = origin {
            b = b
                .header("origin", o)
                .header("access-control-request-method", "GET");
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn off_without_origins() {
        assert!(Cors::new(&CorsConfig::default()).is_none());
    }

    #[tokio::test]
    async fn listed_origin_preflight_is_answered_here_and_reads_exposed_headers() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let svc = tower::Layer::layer(&crate::step::WrapLayer(cors()), inner(count.clone()));
        let pre = svc
            .clone()
            .oneshot(req(Method::OPTIONS, Some("https://app.example")))
            .await
            .unwrap();
        assert_eq!(pre.status(), 200);
        assert_eq!(
            pre.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert!(
            pre.headers()["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains("PATCH")
        );
        assert_eq!(pre.headers()["access-control-max-age"], "600");
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "answered by the gateway"
        );
        let get = svc
            .oneshot(req(Method::GET, Some("https://app.example")))
            .await
            .unwrap();
        let exposed = get.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap();
        for h in [
            "ratelimit",
            "retry-after",
            "x-cache",
            "x-request-id",
            "location",
            "etag",
        ] {
            assert!(exposed.contains(h), "{h} in {exposed}");
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn other_origins_get_no_cors_header_and_go_on() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let svc = tower::Layer::layer(&crate::step::WrapLayer(cors()), inner(count.clone()));
        for (m, o) in [
            (Method::OPTIONS, Some("https://evil.example")),
            (Method::GET, Some("https://app.example.evil")),
            (Method::GET, Some("http://app.example")),
            (Method::GET, None),
        ] {
            let r = svc.clone().oneshot(req(m.clone(), o)).await.unwrap();
            let cors: Vec<_> = r
                .headers()
                .keys()
                .filter(|k| k.as_str().starts_with("access-control-"))
                .collect();
            assert!(cors.is_empty(), "{m} {o:?}: {cors:?}");
            assert_eq!(r.headers()["vary"], "origin");
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 4);
    }
}
