//! One access-log line per request, written when the response body has been sent (or
//! abandoned), so `bytes` and `duration_ms` are the real figures.
//!
//! Target `access`. Fields: request id, user, method, path (never the query string: it holds
//! patient names), status, upstream status, shard, duration, bytes. Never a token, key or body.

use crate::body::{Body, BodyObserver, observe};
use crate::metrics::{HttpMetrics, RouteClass, method_label};
use crate::request_id::RequestId;
use crate::upstream::Shard;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

/// What inner layers learn about a request, for the log line (in request extensions).
#[derive(Default, Debug)]
pub struct RequestFacts {
    user: OnceLock<Arc<str>>,
    shard: OnceLock<Shard>,
    upstream_status: AtomicU16,
    cache: OnceLock<&'static str>,
    app: OnceLock<Arc<str>>,
}

impl RequestFacts {
    /// Records the verified user.
    pub fn set_user(&self, user: Arc<str>) {
        let _ = self.user.set(user);
    }
    /// Records the calling app (from the verified token).
    pub fn set_app(&self, app: Arc<str>) {
        let _ = self.app.set(app);
    }
    /// Records the shard the request went to.
    pub fn set_shard(&self, shard: &Shard) {
        let _ = self.shard.set(shard.clone());
    }
    /// Records how the cache handled the request (HIT, MISS, REVALIDATED, BYPASS).
    pub fn set_cache(&self, how: &'static str) {
        let _ = self.cache.set(how);
    }
    /// Records Cliniko's status.
    pub fn set_upstream_status(&self, s: u16) {
        self.upstream_status.store(s, Ordering::Relaxed);
    }
    /// How the cache handled the request, once known.
    pub fn cache(&self) -> Option<&'static str> {
        self.cache.get().copied()
    }
    /// The calling app, if the token named one.
    pub fn app(&self) -> Option<&str> {
        self.app.get().map(|a| &**a)
    }
    /// The verified user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.get().map(|u| &**u)
    }
}

/// Records facts if the request carries a [`RequestFacts`].
pub fn facts<B>(req: &Request<B>) -> Option<Arc<RequestFacts>> {
    req.extensions().get::<Arc<RequestFacts>>().cloned()
}

/// Layer that installs [`AccessLog`]; with metrics, the same moment that writes the line
/// also counts the request and observes its duration.
#[derive(Clone, Default)]
pub struct AccessLogLayer {
    metrics: Option<Arc<HttpMetrics>>,
}

impl AccessLogLayer {
    /// Logs every request and, when given, records request metrics.
    pub fn new(metrics: Option<Arc<HttpMetrics>>) -> AccessLogLayer {
        AccessLogLayer { metrics }
    }
}

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Writes the access-log line.
#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    metrics: Option<Arc<HttpMetrics>>,
}

struct Line {
    start: Instant,
    request_id: RequestId,
    method: Method,
    path: String,
    status: u16,
    facts: Arc<RequestFacts>,
    bytes: u64,
    metrics: Option<Arc<HttpMetrics>>,
}

impl BodyObserver for Line {
    fn on_data(&mut self, len: usize) {
        self.bytes += len as u64;
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let up = self.facts.upstream_status.load(Ordering::Relaxed);
        let elapsed = self.start.elapsed();
        if let Some(m) = &self.metrics {
            m.finished(
                RouteClass::of(&self.path),
                method_label(&self.method),
                self.status,
                elapsed,
            );
        }
        tracing::info!(
            target: "access",
            request_id = self.request_id.as_str(),
            user = self.facts.user(),
            method = %self.method,
            path = %self.path,
            status = self.status,
            upstream_status = (up != 0).then_some(up),
            shard = self.facts.shard.get().map(Shard::as_str),
            cache = self.facts.cache.get().copied(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes = self.bytes,
        );
    }
}

impl<S> tower::Service<Request<Body>> for AccessLog<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let facts = Arc::new(RequestFacts::default());
        req.extensions_mut().insert(facts.clone());
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or(RequestId(http::HeaderValue::from_static("-")));
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let fut = self.inner.call(req);
        if let Some(m) = &self.metrics {
            m.started();
        }
        // Built before awaiting: if the caller goes away first, dropping the future still
        // writes the line, with nginx's 499 "client closed request".
        let mut line = Line {
            start,
            request_id,
            method,
            path,
            status: 499,
            facts,
            bytes: 0,
            metrics: self.metrics.clone(),
        };
        Box::pin(async move {
            let resp = fut.await?;
            line.status = resp.status().as_u16();
            Ok(resp.map(|b| observe(b, line)))
        })
    }
}
