//! The tower layer: the verified [`User`]'s claims against the [`Policy`], before any key
//! is looked up.

use super::Policy;
use crate::auth::User;
use crate::body::Body;
use crate::error::GatewayError;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Layer that installs [`Authorize`].
#[derive(Clone)]
pub struct PolicyLayer(pub Arc<Policy>);

impl<S> tower::Layer<S> for PolicyLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.0.clone(),
        }
    }
}

/// Refuses calls the caller's grants do not allow (403 `forbidden`).
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> tower::Service<Request<Body>> for Authorize<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(user) = req.extensions().get::<User>() else {
            // Auth sits outside this layer; a request without a user is a wiring bug, and
            // refusing it is the only safe answer.
            tracing::error!("request reached the policy without a verified user");
            return Box::pin(async { Err(GatewayError::Internal) });
        };
        crate::audit::note_app(&req, &user.claims);
        match self
            .policy
            .check(&user.claims, req.method(), req.uri().path())
        {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }
}
