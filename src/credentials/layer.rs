//! The verified user becomes a Cliniko credential (key + shard) in
//! request extensions. A user with no stored key gets 403 `no_credential`.

use super::Credentials;
use crate::auth::User;
use crate::body::Body;
use crate::error::GatewayError;
use crate::step::Check;
use http::Request;

impl Check for Credentials {
    fn check(&self, req: &mut Request<Body>) -> Result<(), GatewayError> {
        let cred = req
            .extensions()
            .get::<User>()
            .and_then(|u| self.lookup(&u.id))
            .ok_or(GatewayError::NoCredential)?;
        req.extensions_mut().insert(cred);
        Ok(())
    }
}
