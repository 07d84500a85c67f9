//! The caller's JWT becomes a verified [`User`] in request extensions.
//! Anything else is a 401 before any key is looked up.

use super::{Authenticator, User};
use crate::body::Body;
use crate::error::GatewayError;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Layer that installs [`Authenticate`].
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Authenticator>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            authn: self.0.clone(),
        }
    }
}

/// Verifies the JWT and records the user.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    authn: Arc<Authenticator>,
}

impl<S> tower::Service<Request<Body>> for Authenticate<S>
where
    S: crate::step::Next,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let authn = self.authn.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let user: User = authn.authenticate(req.headers()).await?;
            if let Some(c) = crate::context::Context::of(&req) {
                c.set_user(user.id.clone(), user.app.clone());
            }
            req.extensions_mut().insert(user);
            inner.call(req).await
        })
    }
}
