//! The server span around a request and the client span around its call to Cliniko.

use super::Telemetry;
use crate::body::{Body, BodyObserver, observe};
use crate::context::Context as RequestContext;
use crate::metrics::{RouteClass, method_label};
use crate::step::{Answer, Inner};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use std::convert::Infallible;
use std::sync::Arc;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The request's server span, in request extensions, for the forwarder's client span.
#[derive(Clone)]
pub struct RequestTrace {
    cx: Context,
    tracer: SdkTracer,
}

/// Writes `traceparent` and `tracestate` naming the active span of `cx` (nothing when it has
/// no valid span; no `tracestate` when the state is empty).
fn inject(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
    if headers.get(TRACESTATE).is_some_and(HeaderValue::is_empty) {
        headers.remove(TRACESTATE);
    }
}

impl RequestTrace {
    /// Starts the client span and rewrites the trace headers bound for Cliniko to name it.
    pub fn upstream(&self, method: &Method, uri: &Uri, headers: &mut HeaderMap) -> ClientSpan {
        let m = method_label(method);
        let mut attrs = vec![KeyValue::new("http.request.method", m)];
        if let Some(host) = uri.host() {
            attrs.push(KeyValue::new("server.address", host.to_owned()));
        }
        let span = self
            .tracer
            .span_builder(format!("HTTP {m}"))
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &self.cx);
        let cx = self.cx.with_span(span);
        // The caller's headers were copied verbatim; ours replace them. The trace state is the
        // caller's (inherited through the parent), empty when their traceparent was invalid.
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        inject(&cx, headers);
        ClientSpan { cx }
    }
}

/// The span around one call to Cliniko; ends when dropped.
pub struct ClientSpan {
    cx: Context,
}

impl ClientSpan {
    /// Records Cliniko's status (4xx and 5xx mark the call failed, as the conventions say).
    pub fn status(&self, status: u16) {
        record_status(&self.cx, status, 400);
    }

    /// Records why the call failed (`timeout`, `connect`, ...).
    pub fn fail(&self, kind: &'static str) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", kind));
        span.set_status(Status::error(kind));
    }
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// Records `status` on the span of `cx`, marking it failed from `failed_from` up.
fn record_status(cx: &Context, status: u16, failed_from: u16) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= failed_from {
        span.set_attribute(KeyValue::new("error.type", status.to_string()));
        span.set_status(Status::error(""));
    }
}

/// Ends the server span when the response body is done (or abandoned).
struct ServerSpan {
    cx: Context,
    ctx: Option<Arc<RequestContext>>,
    answered: bool,
}

impl BodyObserver for ServerSpan {}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        let span = self.cx.span();
        if let Some(how) = self.ctx.as_ref().and_then(|c| c.cache.get()) {
            span.set_attribute(KeyValue::new("cliniko_gateway.cache", how.as_str()));
        }
        if !self.answered {
            span.set_attribute(KeyValue::new("error.type", "client_closed"));
        }
        span.end();
    }
}

/// Handles one request under a server span (health probes pass through untraced).
pub(super) fn call<S: Inner<Infallible>>(
    t: &Telemetry,
    inner: &mut S,
    mut req: Request<Body>,
) -> Answer<Infallible> {
    let route = RouteClass::of(req.uri().path());
    if route == RouteClass::Health {
        return Box::pin(inner.call(req));
    }
    let method = method_label(req.method());
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
    let mut attrs = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("http.route", route.label()),
    ];
    let ctx = RequestContext::of(&req).cloned();
    if let Some(c) = &ctx {
        attrs.push(KeyValue::new(
            "cliniko_gateway.request_id",
            c.id.as_str().to_owned(),
        ));
        if let Some(id) = &c.client_id {
            attrs.push(KeyValue::new(
                "cliniko_gateway.client_request_id",
                id.as_str().to_owned(),
            ));
        }
    }
    let span = t
        .tracer
        .span_builder(format!("HTTP {method}"))
        .with_kind(SpanKind::Server)
        .with_attributes(attrs)
        .start_with_context(&t.tracer, &parent);
    let cx = parent.with_span(span);
    let mut header = HeaderMap::new();
    inject(&cx, &mut header);
    let header = header.remove(TRACEPARENT);
    let mut done = ServerSpan {
        cx: cx.clone(),
        ctx,
        answered: false,
    };
    req.extensions_mut().insert(RequestTrace {
        cx,
        tracer: t.tracer.clone(),
    });
    let fut = inner.call(req);
    Box::pin(async move {
        let mut resp = fut.await?;
        // A server span fails on 5xx only: a 4xx is the caller's mistake, not the gateway's.
        record_status(&done.cx, resp.status().as_u16(), 500);
        done.answered = true;
        // "And back": a caller without tracing of its own can still find the trace.
        if let Some(v) = header {
            resp.headers_mut().insert(TRACEPARENT, v);
        }
        Ok(resp.map(|b| observe(b, done)))
    })
}
