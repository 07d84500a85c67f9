//! OpenTelemetry traces: one server span per request, one client span per Cliniko call, and
//! W3C trace context carried through the gateway.
//!
//! Sits right inside the access log, so the span sees the request id and the status the caller
//! really got. A caller's valid `traceparent` becomes the server span's parent; the request to
//! Cliniko carries the same trace id with the gateway's client span as parent (`tracestate`
//! passes through), and the caller's response gets a `traceparent` naming the server span.
//! An invalid `traceparent` is not an error: the gateway starts a new trace (and drops the
//! caller's `tracestate`, which belonged to the broken one). Spans carry the method, the
//! bounded route class, the status, the request id and the cache outcome; never a path, query
//! string, token, key or body.
//!
//! Off unless `telemetry.otlp_endpoint` is set: then the layer is not in the stack at all and
//! trace headers pass through untouched. Built without the `otel` feature, [`Telemetry`] has no
//! values and every function here is a no-op.

#[cfg(feature = "otel")]
mod export;
#[cfg(feature = "otel")]
mod span;

use crate::body::Body;
use crate::config::{ConfigError, TelemetryConfig};
use crate::step::{Answer, Inner, Wrap};
use http::Request;
use std::convert::Infallible;
use std::sync::Arc;

#[cfg(feature = "otel")]
pub use span::{ClientSpan, RequestTrace};

/// The running exporter and its tracer; shut it down to flush what is still queued.
#[cfg(feature = "otel")]
pub struct Telemetry {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

/// Without the `otel` feature there is never a running exporter (config refuses an endpoint).
#[cfg(not(feature = "otel"))]
pub enum Telemetry {}

/// Without the `otel` feature no client span is ever started.
#[cfg(not(feature = "otel"))]
pub enum ClientSpan {}

#[cfg(not(feature = "otel"))]
impl ClientSpan {
    /// Records Cliniko's status.
    pub fn status(&self, _status: u16) {
        match *self {}
    }
    /// Records why the call failed.
    pub fn fail(&self, _kind: &'static str) {
        match *self {}
    }
}

/// Starts the exporter when `otlp_endpoint` is set; `None` (telemetry off) otherwise.
pub fn start(cfg: &TelemetryConfig) -> Result<Option<Arc<Telemetry>>, ConfigError> {
    #[cfg(feature = "otel")]
    {
        export::start(cfg).map(|t| t.map(Arc::new))
    }
    #[cfg(not(feature = "otel"))]
    {
        match cfg.otlp_endpoint {
            None => Ok(None),
            Some(_) => Err(ConfigError::new(
                "telemetry.otlp_endpoint",
                "this binary was built without OpenTelemetry support",
                "rebuild with `--features otel`, or unset telemetry.otlp_endpoint",
            )),
        }
    }
}

impl Telemetry {
    /// Exports what is still queued and stops the exporter (blocks up to the export timeout,
    /// so call it off the async threads, e.g. through `spawn_blocking`).
    pub fn shutdown(&self) {
        #[cfg(feature = "otel")]
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "telemetry: flushing spans at shutdown failed");
        }
        #[cfg(not(feature = "otel"))]
        match *self {}
    }
}

/// Starts the client span around a call to Cliniko and points the outgoing `traceparent` at it
/// (`None`, headers untouched, when the request is not traced).
pub fn upstream_span(
    extensions: &http::Extensions,
    method: &http::Method,
    uri: &http::Uri,
    headers: &mut http::HeaderMap,
) -> Option<ClientSpan> {
    #[cfg(feature = "otel")]
    {
        extensions
            .get::<RequestTrace>()
            .map(|t| t.upstream(method, uri, headers))
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (extensions, method, uri, headers);
        None
    }
}

/// Wraps each request in a server span; only in the stack when telemetry is on.
#[derive(Clone)]
pub struct TraceLayer(pub Arc<Telemetry>);

impl Wrap for TraceLayer {
    type Error = Infallible;

    fn wrap<S: Inner<Infallible>>(&self, inner: &mut S, req: Request<Body>) -> Answer<Infallible> {
        #[cfg(feature = "otel")]
        {
            span::call(&self.0, inner, req)
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (inner, req);
            match *self.0 {}
        }
    }
}
