//! The one place where a [`GatewayError`] becomes an HTTP response.
//!
//! Inner layers return `Err(GatewayError)`; this layer renders it (with the request id) so the
//! access log and the request-id layer outside it see an ordinary response.

use crate::body::Body;
use crate::context::Context as RequestContext;
use crate::error::GatewayError;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// Turns the errors of the service it wraps into JSON error responses.
#[derive(Clone)]
pub struct Rescue<S>(pub S);

impl<S> tower::Service<Request<Body>> for Rescue<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Our inner services are always ready; should one ever fail here, the next `call`
        // reports it as a per-request error, so the connection stays usable.
        if let Err(e) = ready!(self.0.poll_ready(cx)) {
            tracing::error!(error = %e, "inner service not ready");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let ctx = RequestContext::of(&req).cloned();
        // A panic below must cost one request a 500, not the connection: both while building
        // the future (layers do synchronous work in `call`) and while it runs. A panic while a
        // response body streams is past this point; hyper then closes that connection.
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.call(req))) {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind(),
            Err(_) => {
                let resp = render(GatewayError::Internal, ctx.as_ref(), true);
                return Box::pin(async move { Ok(resp) });
            }
        };
        Box::pin(async move {
            Ok(match fut.await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => render(e, ctx.as_ref(), false),
                Err(_) => render(GatewayError::Internal, ctx.as_ref(), true),
            })
        })
    }
}

/// The error as the caller sees it; the code is recorded in the context for the audit, the
/// access log and the span.
fn render(e: GatewayError, ctx: Option<&Arc<RequestContext>>, panicked: bool) -> Response<Body> {
    if panicked {
        tracing::error!(
            request_id = ctx.map(|c| c.id.as_str()),
            "panic while handling a request"
        );
    }
    if let Some(c) = ctx {
        let _ = c.error.set(e.error_code());
    }
    e.into_response(ctx.map(|c| c.visible_id().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[derive(Clone)]
    struct PanicsInCall;

    impl Service<Request<Body>> for PanicsInCall {
        type Response = Response<Body>;
        type Error = GatewayError;
        type Future = BoxFuture<'static, Result<Response<Body>, GatewayError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            panic!("bug in call")
        }
    }

    #[tokio::test]
    async fn panics_become_500s() {
        let resp = Rescue(PanicsInCall)
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        let in_future = Rescue(tower::service_fn(|_: Request<Body>| async {
            if true {
                panic!("bug in future");
            }
            Ok::<Response<Body>, GatewayError>(Response::new(Body::empty()))
        }));
        let resp = in_future
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
    }

    #[tokio::test]
    async fn errors_render_with_the_request_id() {
        let svc = Rescue(tower::service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, _>(GatewayError::NoCredential)
        }));
        let mut req = Request::new(Body::empty());
        let mut ctx = RequestContext::new(Default::default());
        ctx.client_id = Some(crate::context::RequestId(http::HeaderValue::from_static(
            "rid-1",
        )));
        let ctx = Arc::new(ctx);
        req.extensions_mut().insert(ctx.clone());
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(ctx.error.get().map(|c| c.as_str()), Some("no_credential"));
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(std::str::from_utf8(&body).unwrap().contains("rid-1"));
    }
}
