//! One access-log line per request, written when the response body has been sent (or
//! abandoned), so `bytes` and `duration_ms` are the real figures.
//!
//! Target `access`. Fields: the gateway's request id, the caller's (`client_request_id`), the
//! client address, user, method, path (never the query string: it holds patient names),
//! status, upstream status, shard, cache, error code, duration, bytes. Never a token, key or
//! body. Everything but the head and the byte count is read from the request's
//! [`Context`](RequestContext).

use crate::body::{Body, BodyObserver, observe};
use crate::context::Context as RequestContext;
use crate::metrics::{HttpMetrics, RouteClass, method_label};
use crate::step::{Answer, Inner, Wrap};
use http::{Method, Request};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

/// Writes the access-log line; with metrics, the same moment that writes the line
/// also counts the request and observes its duration.
#[derive(Clone, Default)]
pub struct AccessLogLayer(pub Option<Arc<HttpMetrics>>);

struct Line {
    start: Instant,
    ctx: Option<Arc<RequestContext>>,
    method: Method,
    path: String,
    status: u16,
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
        let ctx = self.ctx.as_deref();
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
            request_id = ctx.map(|c| c.id.as_str()),
            client_request_id = ctx.and_then(|c| c.client_id.as_ref()).map(|i| i.as_str()),
            client = ctx.and_then(|c| c.client_addr).map(tracing::field::display),
            user = ctx.and_then(|c| c.user()),
            method = %self.method,
            path = %self.path,
            status = self.status,
            upstream_status = ctx.and_then(|c| c.upstream_status()),
            shard = ctx.and_then(|c| c.shard.get()).map(|s| &**s),
            cache = ctx.and_then(|c| c.cache.get()).map(|c| c.as_str()),
            code = ctx.and_then(|c| c.error.get()).map(|c| c.as_str()),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes = self.bytes,
        );
    }
}

impl Wrap for AccessLogLayer {
    type Error = Infallible;

    fn wrap<S: Inner<Infallible>>(&self, inner: &mut S, req: Request<Body>) -> Answer<Infallible> {
        let start = Instant::now();
        let ctx = RequestContext::of(&req).cloned();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let fut = inner.call(req);
        if let Some(m) = &self.0 {
            m.started();
        }
        // Built before awaiting: if the caller goes away first, dropping the future still
        // writes the line, with nginx's 499 "client closed request".
        let mut line = Line {
            start,
            ctx,
            method,
            path,
            status: 499,
            bytes: 0,
            metrics: self.0.clone(),
        };
        Box::pin(async move {
            let resp = fut.await?;
            line.status = resp.status().as_u16();
            Ok(resp.map(|b| observe(b, line)))
        })
    }
}
