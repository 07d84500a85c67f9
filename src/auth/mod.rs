//! Authentication: `Authorization: Bearer <JWT>` (or `Basic base64(<JWT>:)`,
//! see [`scheme`]) → a verified [`User`].
//!
//! Rejects (401): a missing header or another scheme, tokens over 8 KiB, a Cliniko API key sent
//! instead of a JWT (logged by fingerprint, counted), malformed JWTs, `alg: none`
//! and any algorithm not allowlisted for the key that would check it, bad signatures, expired or
//! not-yet-valid tokens, wrong `iss`/`aud`, unknown `kid`s, and tokens without a usable user
//! claim. Answers 503 (`KeysUnavailable`) while a needed JWKS has never been fetched.
//! Header fields `jku`, `x5u`, `jwk` and `x5c` are never used: keys come only from config.

mod cache;
mod jwks;
mod keys;
mod layer;
pub mod mint;
mod scheme;
mod verify;

#[cfg(test)]
mod tests;

use crate::config::{AuthConfig, ConfigError};
use crate::error::AuthError;
use crate::upstream::HttpClient;
use jsonwebtoken::{AlgorithmFamily, Header, decode_header};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use tokio::task::JoinHandle;

/// The calling app from verified claims (`azp`, else `client_id`), as logs and the audit record it.
pub fn app_of(claims: &Map<String, Value>) -> Option<String> {
    ["azp", "client_id"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(|a| crate::context::plain(a).to_string())
}

/// Longest token accepted; larger ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The caller a verified token names.
#[derive(Clone)]
pub struct User {
    /// The configured user claim (`sub` by default).
    pub id: Arc<str>,
    /// All claims of the token.
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
    /// The calling app named by the claims ([`app_of`]), worked out once per
    /// token rather than per request.
    pub app: Option<Arc<str>>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("claims", &format_args!("<{} claims>", self.claims.len()))
            .finish()
    }
}

/// Verifies bearer tokens against the configured HMAC secret, PEM keys and JWKS.
pub struct Authenticator {
    keys: keys::StaticKeys,
    jwks: Option<Arc<jwks::Jwks>>,
    rules: verify::ClaimRules,
    cache: moka::future::Cache<cache::TokenHash, cache::Cached>,
    refresher: Mutex<Option<JoinHandle<()>>>,
    counts: Arc<jwks::AuthCounts>,
    accept_basic: bool,
}

impl Authenticator {
    /// Builds key sources (reading PEM files); a JWKS is not fetched until [`Self::start`].
    pub fn new(cfg: &AuthConfig, http: HttpClient) -> Result<Arc<Authenticator>, ConfigError> {
        Authenticator::new_after(cfg, http, None)
    }

    /// Like [`Self::new`] for a reloaded `cfg`: counters carry on from `prev`'s.
    pub fn new_after(
        cfg: &AuthConfig,
        http: HttpClient,
        prev: Option<&Authenticator>,
    ) -> Result<Arc<Authenticator>, ConfigError> {
        let counts = prev.map_or_else(Arc::default, |p| p.counts.clone());
        let jwks = cfg
            .jwks
            .as_ref()
            .map(|j| Arc::new(jwks::Jwks::new(j, http, counts.clone())));
        Ok(Arc::new(Authenticator {
            keys: keys::load(cfg)?,
            jwks,
            rules: verify::ClaimRules::new(cfg)?,
            cache: cache::build(cfg.token_cache_size),
            refresher: Mutex::new(None),
            counts,
            accept_basic: cfg.accept_basic,
        }))
    }

    /// Fetches the JWKS once (bounded by `jwks.timeout`) and spawns the background refresher.
    ///
    /// Never fails: if the first fetch fails, [`Self::ready`] stays false and the refresher
    /// keeps retrying. The refresher stops when the `Authenticator` is dropped.
    pub async fn start(self: &Arc<Self>) {
        let Some(jwks) = &self.jwks else { return };
        let first_ok = jwks.refresh().await;
        let handle = tokio::spawn(refresh_loop(Arc::downgrade(jwks), first_ok));
        let old = match self.refresher.lock() {
            Ok(mut slot) => slot.replace(handle),
            Err(poisoned) => poisoned.into_inner().replace(handle),
        };
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Verifies the token of the request's `Authorization` header (Bearer, or Basic when
    /// `auth.accept_basic`).
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<User, AuthError> {
        let token = match scheme::token(headers, self.accept_basic) {
            Ok(t) => t,
            Err(scheme::Refused::Auth(e)) => return Err(e),
            Err(scheme::Refused::ClinikoKey(fingerprint)) => {
                self.counts
                    .cliniko_keys_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    key_fingerprint = %fingerprint,
                    "a caller sent a Cliniko API key instead of a JWT; refused, nothing \
                     forwarded. The key has left its owner's hands: rotate it in Cliniko"
                );
                return Err(AuthError::ClinikoKeySent);
            }
        };
        let token = &*token;
        let key = cache::hash(token);
        if let Some(hit) = self.cache.get(&key).await {
            // The entry's TTL already ends at `exp`; re-check in case clocks or config disagree.
            if cache::now().as_secs() <= hit.exp.saturating_add(self.rules.leeway) {
                return Ok(hit.user);
            }
            self.cache.invalidate(&key).await;
            return Err(AuthError::Expired);
        }
        let result = self.verify(token).await;
        match &result {
            Ok(user) => tracing::debug!(user = %user.id, "token verified"),
            Err(e) => tracing::debug!(reason = e.code(), "token refused"),
        }
        let user = result?;
        if let Some(exp) = verify::exp_of(&user.claims)
            && !cache::ttl_for(exp, cache::now()).is_zero()
        {
            self.cache
                .insert(
                    key,
                    cache::Cached {
                        user: user.clone(),
                        exp,
                    },
                )
                .await;
        }
        Ok(user)
    }

    /// True when every configured key source is usable (the JWKS fetched at least once).
    pub fn ready(&self) -> bool {
        self.jwks.as_ref().is_none_or(|j| j.ready())
    }

    /// Successful JWKS fetches so far.
    pub fn jwks_fetches_ok(&self) -> u64 {
        self.counts.ok.load(Ordering::SeqCst)
    }

    /// Failed JWKS fetches so far.
    pub fn jwks_fetches_failed(&self) -> u64 {
        self.counts.failed.load(Ordering::SeqCst)
    }

    /// Requests refused because they carried a Cliniko API key instead of a JWT.
    pub fn cliniko_keys_refused(&self) -> u64 {
        self.counts.cliniko_keys_refused.load(Ordering::Relaxed)
    }

    async fn verify(&self, token: &str) -> Result<User, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        // RFC 7515 §4.1.11: extensions we do not implement must not be silently ignored.
        if header.crit.is_some() {
            return Err(AuthError::Invalid("unsupported critical header"));
        }
        let claims = self.verify_signature(token, &header).await?;
        let id = self.rules.user_id(&claims)?;
        Ok(User {
            id: id.into(),
            app: app_of(&claims).map(Arc::from),
            claims: Arc::new(claims),
        })
    }

    /// Tries every key allowed for the token's algorithm (and `kid`) until one verifies it.
    async fn verify_signature(
        &self,
        token: &str,
        header: &Header,
    ) -> Result<verify::Claims, AuthError> {
        const NOT_ALLOWED: AuthError = AuthError::Invalid("algorithm not allowed for this key");
        let alg = header.alg;
        let kid = header.kid.as_deref();
        let attempt = |key: &jsonwebtoken::DecodingKey| self.rules.check(token, alg, key);

        // The family decides which keys are even considered: an HS* token never meets the
        // bytes of a public key, and an RS*/ES* token never meets the HMAC secret.
        if alg.family() == AlgorithmFamily::Hmac {
            return match &self.keys.hmac {
                Some(k) if k.allows(alg) => attempt(&k.key).map_err(|e| verify::map_error(&e)),
                _ => Err(NOT_ALLOWED),
            };
        }

        let mut last: Option<AuthError> = None;
        let mut allowed_somewhere = false;
        for k in self.keys.pem.iter().filter(|k| k.allows(alg)) {
            allowed_somewhere = true;
            if !k.matches_kid(kid) {
                continue;
            }
            match attempt(&k.key) {
                Ok(c) => return Ok(c),
                Err(e) if verify::try_next_key(&e) => last = Some(verify::map_error(&e)),
                Err(e) => return Err(verify::map_error(&e)),
            }
        }

        if let Some(jwks) = self.jwks.as_ref().filter(|j| j.allows(alg)) {
            let found = match kid {
                Some(kid) => vec![jwks.lookup(kid).await?],
                None => jwks.current()?.for_alg(alg).cloned().collect(),
            };
            for k in &found {
                if !k.algs.contains(&alg) {
                    last.get_or_insert(NOT_ALLOWED);
                    continue;
                }
                match attempt(&k.key) {
                    Ok(c) => return Ok(c),
                    Err(e) if verify::try_next_key(&e) => last = Some(verify::map_error(&e)),
                    Err(e) => return Err(verify::map_error(&e)),
                }
            }
            allowed_somewhere = true;
        }

        Err(last.unwrap_or(if allowed_somewhere {
            AuthError::Invalid("no configured key matches the token")
        } else {
            NOT_ALLOWED
        }))
    }
}

/// Shows which key sources exist, never key material.
impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("hmac", &self.keys.hmac.is_some())
            .field("pem_keys", &self.keys.pem.len())
            .field("jwks", &self.jwks.is_some())
            .field("ready", &self.ready())
            .finish()
    }
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        let handle = match self.refresher.get_mut() {
            Ok(slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(h) = handle {
            h.abort();
        }
    }
}

/// Refreshes every `refresh_interval`, or sooner after a failure, until the source is dropped.
async fn refresh_loop(jwks: Weak<jwks::Jwks>, mut last_ok: bool) {
    loop {
        let wait = match jwks.upgrade() {
            Some(j) if last_ok => j.refresh_interval,
            Some(j) => j.retry_delay(),
            None => return,
        };
        tokio::time::sleep(wait).await;
        let Some(j) = jwks.upgrade() else { return };
        last_ok = j.refresh().await;
    }
}
