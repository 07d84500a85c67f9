//! The one place where a [`GatewayError`] becomes an HTTP response.
//!
//! Inner layers return `Err(GatewayError)`; this layer renders it (with the request id) so the
//! access log and the request-id layer outside it see an ordinary response.

use crate::body::Body;
use crate::error::GatewayError;
use crate::request_id::RequestId;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

/// Layer that installs [`Rescue`].
#[derive(Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> tower::Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

/// Turns errors into JSON error responses.
#[derive(Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Rescue<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Our inner services are always ready; an error here would be a bug, surfaced per call.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let rid = req.extensions().get::<RequestId>().cloned();
        let fut = AssertUnwindSafe(self.inner.call(req)).catch_unwind();
        Box::pin(async move {
            // A panic below must cost one request a 500, not the connection.
            let result = fut.await.unwrap_or_else(|_| {
                tracing::error!(
                    request_id = rid.as_ref().map(RequestId::as_str),
                    "panic while handling a request"
                );
                Err(GatewayError::Internal)
            });
            Ok(match result {
                Ok(r) => r,
                Err(e) => {
                    if matches!(e, GatewayError::Internal) {
                        tracing::error!(
                            request_id = rid.as_ref().map(RequestId::as_str),
                            "internal error"
                        );
                    }
                    e.into_response(rid.as_ref().map(RequestId::as_str))
                }
            })
        })
    }
}
