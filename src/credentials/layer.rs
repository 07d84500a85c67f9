//! Step 3 of the journey: the verified user becomes a Cliniko credential (key + shard) in
//! request extensions. A user with no stored key gets 403 `no_credential`.

use super::Credentials;
use crate::auth::User;
use crate::body::Body;
use crate::error::GatewayError;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Layer that installs [`AttachCredential`].
#[derive(Clone)]
pub struct CredentialsLayer(pub Arc<Credentials>);

impl<S> tower::Layer<S> for CredentialsLayer {
    type Service = AttachCredential<S>;
    fn layer(&self, inner: S) -> AttachCredential<S> {
        AttachCredential {
            inner,
            store: self.0.clone(),
        }
    }
}

/// Looks up the user's key.
#[derive(Clone)]
pub struct AttachCredential<S> {
    inner: S,
    store: Arc<Credentials>,
}

impl<S> tower::Service<Request<Body>> for AttachCredential<S>
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let cred = req
            .extensions()
            .get::<User>()
            .and_then(|u| self.store.lookup(&u.id));
        match cred {
            Some(c) => {
                req.extensions_mut().insert(c);
                Box::pin(self.inner.call(req))
            }
            None => Box::pin(async { Err(GatewayError::NoCredential) }),
        }
    }
}
