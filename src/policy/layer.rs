//! The policy as a step: the verified [`User`]'s claims against the [`Policy`], before any key
//! is looked up (403 `forbidden`).

use super::Policy;
use crate::auth::User;
use crate::body::Body;
use crate::error::GatewayError;
use crate::step::Check;
use http::Request;

impl Check for Policy {
    fn check(&self, req: &mut Request<Body>) -> Result<(), GatewayError> {
        let Some(user) = req.extensions().get::<User>() else {
            // Auth sits outside this layer; a request without a user is a wiring bug, and
            // refusing it is the only safe answer.
            tracing::error!("request reached the policy without a verified user");
            return Err(GatewayError::Internal);
        };
        Policy::check(self, &user.claims, req.method(), req.uri().path())
    }
}
