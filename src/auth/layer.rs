//! The caller's JWT becomes a verified [`User`] in request extensions.
//! Anything else is a 401 before any key is looked up.

use super::{Authenticator, User};
use crate::body::Body;
use crate::error::GatewayError;
use http::{Request, Response};
use std::sync::Arc;
use tower::ServiceExt;

// A step, not a `Wrap`: the rest of the stack is called only once the token is verified,
// after an await, so the future needs its own (cloned) `inner`.
impl crate::step::Step for Authenticator {
    async fn run<S: crate::step::Next>(
        self: Arc<Self>,
        inner: S,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let user: User = self.authenticate(req.headers()).await?;
        if let Some(c) = crate::context::Context::of(&req) {
            c.set_user(user.id.clone(), user.app.clone());
        }
        req.extensions_mut().insert(user);
        inner.oneshot(req).await
    }
}
