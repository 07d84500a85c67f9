//! Minting HS-signed tokens for development (`token mint`) and the demo. Never used on the
//! request path.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::time::Duration;

/// Reads a PEM private key for `alg` (RS*/PS*, ES*, EdDSA).
pub fn signing_key(pem: &[u8], alg: Algorithm) -> Result<EncodingKey, jsonwebtoken::errors::Error> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => EncodingKey::from_rsa_pem(pem),
        ES256 | ES384 => EncodingKey::from_ec_pem(pem),
        EdDSA => EncodingKey::from_ed_pem(pem),
        _ => Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into()),
    }
}

/// Signs `claims` (plus `sub`, `iat`, `exp` = now + `ttl`) with `key` under `header`.
pub fn mint(
    key: &EncodingKey,
    header: Header,
    sub: &str,
    ttl: Duration,
    mut claims: serde_json::Map<String, serde_json::Value>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = super::cache::now().as_secs();
    claims.insert("sub".into(), sub.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    jsonwebtoken::encode(&header, &claims, key)
}
