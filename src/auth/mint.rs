//! Minting HS-signed tokens for development (`token mint`) and the demo. Never used on the
//! request path.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretSlice};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Signs `claims` (plus `sub`, `iat`, `exp` = now + `ttl`) with the HMAC secret.
pub fn mint_hs(
    secret: &SecretSlice<u8>,
    alg: Algorithm,
    sub: &str,
    ttl: Duration,
    mut claims: serde_json::Map<String, serde_json::Value>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    claims.insert("sub".into(), sub.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret()),
    )
}
