//! Signature and claim checks for one token against one candidate key.
//!
//! Rejects: bad signatures, algorithms outside the key's allowlist, missing or wrongly typed
//! `exp`, `nbf` in the future, `iss`/`aud` outside the configured lists, an `iss` that is not a
//! string (an array, even of allowed issuers), and a user claim that is not a short non-empty
//! string. jsonwebtoken's errors are mapped onto [`AuthError`] here.

use crate::config::{AuthConfig, ConfigError};
use crate::error::AuthError;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde_json::{Map, Value};
use std::time::Duration;

/// Longest accepted user id, in bytes.
const MAX_USER_ID: usize = 256;
/// Larger leeways make `exp` meaningless (and overflow jsonwebtoken's arithmetic near zero).
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// The claim set of a verified token.
pub(crate) type Claims = Map<String, Value>;

/// Claim rules shared by every key.
pub(crate) struct ClaimRules {
    base: Validation,
    user_claim: String,
    /// Seconds of clock skew tolerated on `exp`/`nbf`.
    pub leeway: u64,
}

impl ClaimRules {
    /// Builds the rules from validated config.
    pub fn new(cfg: &AuthConfig) -> Result<Self, ConfigError> {
        if cfg.leeway > MAX_LEEWAY {
            return Err(ConfigError::new(
                "auth.leeway",
                "is longer than 1h",
                "use a few seconds to minutes of clock skew, e.g. \"30s\"",
            ));
        }
        let leeway = cfg.leeway.as_secs();
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if !cfg.issuers.is_empty() {
            v.set_issuer(&cfg.issuers);
            required.push("iss");
        }
        if cfg.audiences.is_empty() {
            // jsonwebtoken rejects any `aud` when none is configured; with no list there is
            // nothing to check it against.
            v.validate_aud = false;
        } else {
            v.set_audience(&cfg.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        Ok(ClaimRules {
            base: v,
            user_claim: cfg.user_claim.clone(),
            leeway,
        })
    }

    /// Verifies `token` with `key` as `alg` (already checked against the key's allowlist).
    pub fn check(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
    ) -> Result<Claims, JwtError> {
        let mut v = self.base.clone();
        // Exactly one algorithm: jsonwebtoken refuses a list spanning families.
        v.algorithms = vec![alg];
        let claims = decode::<Claims>(token, key, &v)?.claims;
        // RFC 7519 §4.1.1: `iss` is one StringOrURI. jsonwebtoken also accepts an array and
        // passes it when any element is allowed; an issuer list is not a thing we trust.
        if claims.get("iss").is_some_and(|iss| !iss.is_string()) {
            return Err(ErrorKind::InvalidIssuer.into());
        }
        Ok(claims)
    }

    /// The user id named by the configured claim.
    pub fn user_id(&self, claims: &Claims) -> Result<String, AuthError> {
        const WHY: AuthError = AuthError::Invalid("user claim missing or not a string");
        match claims.get(&self.user_claim) {
            Some(Value::String(s))
                if !s.is_empty() && s.len() <= MAX_USER_ID && !s.chars().any(char::is_control) =>
            {
                Ok(s.clone())
            }
            _ => Err(WHY),
        }
    }
}

/// `exp` of an already-validated claim set, in whole seconds.
pub(crate) fn exp_of(claims: &Claims) -> Option<u64> {
    let exp = claims.get("exp")?;
    exp.as_u64().or_else(|| {
        exp.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.round() as u64)
    })
}

/// What [`map_error`] makes of "this key did not verify it": another candidate may still.
pub(crate) const BAD_SIGNATURE: AuthError = AuthError::Invalid("signature");

/// Maps jsonwebtoken's error onto the caller-facing reason.
pub(crate) fn map_error(e: &JwtError) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => BAD_SIGNATURE,
        ErrorKind::InvalidIssuer => AuthError::Invalid("issuer"),
        ErrorKind::InvalidAudience => AuthError::Invalid("audience"),
        ErrorKind::InvalidSubject => AuthError::Invalid("subject"),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => {
            AuthError::Invalid("algorithm not allowed for this key")
        }
        ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid(
            "a required claim (exp, iss or aud) is missing or not of the right type",
        ),
        ErrorKind::InvalidClaimFormat(_) => AuthError::Invalid("exp or nbf is not a number"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidAlgorithmName => AuthError::Malformed,
        _ => AuthError::Invalid("the token could not be verified"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_reads_integers_and_floats_only() {
        let m = |v: Value| -> Claims {
            let mut c = Claims::new();
            c.insert("exp".into(), v);
            c
        };
        assert_eq!(exp_of(&m(Value::from(10u64))), Some(10));
        assert_eq!(exp_of(&m(Value::from(10.6))), Some(11));
        assert_eq!(exp_of(&m(Value::from(-1))), None);
        assert_eq!(exp_of(&m(Value::from("10"))), None);
    }

    #[test]
    fn signature_errors_try_the_next_key_but_claim_errors_do_not() {
        for kind in [ErrorKind::InvalidSignature, ErrorKind::InvalidKeyFormat] {
            assert_eq!(map_error(&JwtError::from(kind)), BAD_SIGNATURE);
        }
        assert_ne!(
            map_error(&JwtError::from(ErrorKind::ExpiredSignature)),
            BAD_SIGNATURE
        );
        assert_eq!(
            map_error(&JwtError::from(ErrorKind::ImmatureSignature)),
            AuthError::NotYetValid
        );
    }
}
