//! Authentication: `Authorization: Bearer <JWT>` (or `Basic base64(<JWT>:)`,
//! see `scheme`) → a verified [`User`].
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

use crate::config::{AuthConfig, ConfigError};
use crate::error::AuthError;
use crate::upstream::HttpClient;
use jsonwebtoken::{Algorithm, Header, decode_header};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;

/// The calling app from verified claims (`azp`, else `client_id`), as logs and the audit record it.
pub fn app_of(claims: &Map<String, Value>) -> Option<String> {
    ["azp", "client_id"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(|a| crate::context::plain(a).to_string())
}

/// A token whose algorithm no key that could check it allows.
const NOT_ALLOWED: AuthError = AuthError::Invalid("algorithm not allowed for this key");

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
    cache: moka::future::Cache<cache::TokenHash, User>,
    /// The JWKS refresher, stopped when the `Authenticator` is dropped.
    refresher: Mutex<Option<AbortOnDropHandle<()>>>,
    /// JWKS fetches and Cliniko keys refused (read by the metrics).
    pub(crate) counts: Arc<jwks::AuthCounts>,
    accept_basic: bool,
}

impl Authenticator {
    /// Builds key sources (reading PEM files); a JWKS is not fetched until [`Self::start`].
    /// For a reloaded `cfg`, counters carry on from `prev`'s.
    pub fn new(
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
            cache: (moka::future::Cache::builder())
                .max_capacity(cfg.token_cache_size)
                .expire_after(cache::UntilExp)
                .build(),
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
        let first_ok = jwks.refresh(None).await;
        let handle = tokio::spawn(refresh_loop(Arc::downgrade(jwks), first_ok));
        // A refresher started before is stopped as it is replaced.
        *self
            .refresher
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(AbortOnDropHandle::new(handle));
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
            let now = cache::now().as_secs();
            if verify::exp_of(&hit.claims)
                .is_some_and(|e| now <= e.saturating_add(self.rules.leeway))
            {
                return Ok(hit);
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
            self.cache.insert(key, user.clone()).await;
        }
        Ok(user)
    }

    /// True when every configured key source is usable (the JWKS fetched at least once).
    pub fn ready(&self) -> bool {
        self.jwks.as_ref().is_none_or(|j| j.ready())
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
        let alg = header.alg;
        let kid = header.kid.as_deref();
        let mut last: Option<AuthError> = None;

        // Each key's allowlist is of the key's own family (config refuses anything else), so
        // an HS* token never meets the bytes of a public key, and an RS*/ES* token never meets
        // the HMAC secret.
        let statics =
            (self.keys.hmac.iter().chain(&self.keys.pem)).filter(|k| k.algs.contains(&alg));
        let mut allowed_somewhere = statics.clone().next().is_some();
        // A key bound to a `kid` is only for tokens naming it.
        let statics = statics.filter(|k| k.kid.as_deref().is_none_or(|mine| kid == Some(mine)));
        if let Some(done) = self.first_verifying(token, alg, statics, &mut last) {
            return done;
        }

        if let Some(jwks) = (self.jwks.as_ref()).filter(|j| j.cfg.algorithms.contains(&alg)) {
            // A token naming a `kid` meets only that key; one naming none, every key for `alg`.
            let set = match kid {
                Some(kid) => jwks.lookup(kid).await?,
                None => jwks.current()?,
            };
            let found = set.iter().filter(|k| match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => k.algs.contains(&alg),
            });
            if let Some(done) = self.first_verifying(token, alg, found, &mut last) {
                return done;
            }
            allowed_somewhere = true;
        }

        Err(last.unwrap_or(if allowed_somewhere {
            AuthError::Invalid("no configured key matches the token")
        } else {
            NOT_ALLOWED
        }))
    }

    /// The outcome of the first of `keys` that verifies the token or refuses it for a reason
    /// another key would not change; `None` (with `last` the latest refusal) when every key's
    /// signature check failed or a key does not allow `alg`.
    fn first_verifying<'k>(
        &self,
        token: &str,
        alg: Algorithm,
        keys: impl Iterator<Item = &'k keys::KeyEntry>,
        last: &mut Option<AuthError>,
    ) -> Option<Result<verify::Claims, AuthError>> {
        for k in keys {
            if !k.algs.contains(&alg) {
                last.get_or_insert(NOT_ALLOWED);
                continue;
            }
            match (self.rules.check(token, alg, &k.key)).map_err(|e| verify::map_error(&e)) {
                Err(e) if e == verify::BAD_SIGNATURE => *last = Some(e),
                done => return Some(done),
            }
        }
        None
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

/// Refreshes every `refresh_interval`, or sooner after a failure, until the source is dropped.
async fn refresh_loop(jwks: Weak<jwks::Jwks>, mut last_ok: bool) {
    loop {
        let wait = match jwks.upgrade() {
            Some(j) if last_ok => j.cfg.refresh_interval,
            // After a failure: soon (as often as a lookup may refetch, at least 1 s), but
            // never later than the regular refresh.
            Some(j) => (j.cfg.min_refetch_interval)
                .max(Duration::from_secs(1))
                .min(j.cfg.refresh_interval),
            None => return,
        };
        tokio::time::sleep(wait).await;
        let Some(j) = jwks.upgrade() else { return };
        last_ok = j.refresh(None).await;
    }
}

/// What the unit tests of `auth` and its submodules share: keys, tokens, an authenticator.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::config::UpstreamConfig;
    use jsonwebtoken::{Algorithm, EncodingKey, encode};
    use serde_json::{Value, json};
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;
    use std::time::Duration;

    pub(crate) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

    pub(crate) fn now() -> u64 {
        cache::now().as_secs()
    }

    /// A scratch directory removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            let p = std::env::temp_dir().join(format!("gw-auth-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, contents).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn base_cfg() -> AuthConfig {
        AuthConfig {
            user_claim: "sub".into(),
            leeway: Duration::from_secs(5),
            issuers: vec![],
            audiences: vec![],
            hmac_algorithms: vec![Algorithm::HS256],
            hmac_secret_file: None,
            public_keys: vec![],
            jwks: None,
            token_cache_size: 100,
            accept_basic: true,
            hmac_secret: Some(SECRET.to_vec().into()),
        }
    }

    pub(crate) fn client(ca_file: Option<&Path>) -> HttpClient {
        let mut text = "user_agent = \"T (t@e.x)\"\n".to_string();
        if let Some(p) = ca_file {
            text.push_str(&format!("ca_file = \"{}\"\n", p.display()));
        }
        let u: UpstreamConfig = toml::from_str(&text).unwrap();
        crate::upstream::client::build(&u, Default::default()).unwrap()
    }

    pub(crate) fn authn(cfg: &AuthConfig) -> Arc<Authenticator> {
        Authenticator::new(cfg, client(None), None).unwrap()
    }

    /// JWKS fetches so far: (ok, failed).
    pub(crate) fn fetches(a: &Authenticator) -> (u64, u64) {
        let c = &a.counts;
        (c.ok.load(Ordering::SeqCst), c.failed.load(Ordering::SeqCst))
    }

    pub(crate) fn claims(sub: &str) -> Value {
        json!({"sub": sub, "exp": now() + 600})
    }

    pub(crate) fn hs(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    /// Headers with `Authorization: <value>`.
    pub(crate) fn auth_header(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    pub(crate) async fn check(a: &Authenticator, token: &str) -> Result<User, AuthError> {
        a.authenticate(&auth_header(&format!("Bearer {token}")))
            .await
    }

    /// A generated key pair: the private half signs, the public PEM is what the gateway gets.
    pub(crate) struct Signer {
        pub(crate) enc: EncodingKey,
        pub(crate) public_pem: String,
    }

    impl Signer {
        pub(crate) fn sign(&self, header: Header, claims: &Value) -> String {
            encode(&header, claims, &self.enc).unwrap()
        }
    }

    pub(crate) fn generate(alg: Algorithm) -> Signer {
        let (rc, from): (&'static rcgen::SignatureAlgorithm, fn(&[u8]) -> _) = match alg {
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
            Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_pem),
            _ => unreachable!("no test key for {alg:?}"),
        };
        let kp = rcgen::KeyPair::generate_for(rc).unwrap();
        Signer {
            enc: from(kp.serialize_pem().as_bytes()).unwrap(),
            public_pem: kp.public_key_pem(),
        }
    }

    /// RSA key generation is slow in debug builds: one key per test binary.
    pub(crate) fn rsa() -> &'static Signer {
        static K: OnceLock<Signer> = OnceLock::new();
        K.get_or_init(|| generate(Algorithm::RS256))
    }

    pub(crate) fn header(alg: Algorithm, kid: Option<&str>) -> Header {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        h
    }
}

#[cfg(test)]
mod tests {
    // Real-crypto tests: HMAC secrets here, PEM keys in `keys`' tests, JWKS over a loopback TLS
    // server in `jwks`' tests.

    use super::test_support::*;
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64_STD;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{Algorithm, EncodingKey, encode};
    use serde_json::json;
    use std::time::Duration;

    #[tokio::test]
    async fn valid_hs256_yields_the_user() {
        let a = authn(&base_cfg());
        let u = check(&a, &hs(&claims("alice"))).await.unwrap();
        assert_eq!(&*u.id, "alice");
        assert!(u.claims.contains_key("exp"));
        assert!(!format!("{u:?}").contains("exp"), "Debug stays short");
        let dbg = format!("{a:?}");
        assert!(
            dbg.contains("hmac: true") && !dbg.contains("0123456789"),
            "{dbg}"
        );
    }

    #[tokio::test]
    async fn header_parsing() {
        let a = authn(&base_cfg());
        let t = hs(&claims("alice"));
        let empty = http::HeaderMap::new();
        assert_eq!(
            a.authenticate(&empty).await.unwrap_err(),
            AuthError::Missing
        );
        assert!(
            a.authenticate(&auth_header(&format!("bEaReR {t}")))
                .await
                .is_ok()
        );
        for bad in [
            format!("Bearer  {t}"),
            format!("Bearer {t} x"),
            "Bearer".to_string(),
            "Bearer ".to_string(),
        ] {
            let got = a.authenticate(&auth_header(&bad)).await;
            assert_eq!(got.unwrap_err(), AuthError::Malformed, "{bad:?}");
        }
        for bad in [String::new(), format!("Bearer{t}"), format!("Token {t}")] {
            let got = a.authenticate(&auth_header(&bad)).await.unwrap_err();
            assert_eq!(got.code(), "unsupported_scheme", "{bad:?}");
        }
    }

    #[tokio::test]
    async fn basic_form_is_verified_and_cached_like_bearer() {
        let a = authn(&base_cfg());
        let t = hs(&claims("alice"));
        let basic = format!("Basic {}", B64_STD.encode(format!("{t}:")));
        let u = a.authenticate(&auth_header(&basic)).await.unwrap();
        assert_eq!(&*u.id, "alice");
        // One cache for both forms: the entry Basic made serves Bearer.
        a.cache.run_pending_tasks().await;
        assert_eq!(a.cache.entry_count(), 1);
        check(&a, &t).await.unwrap();
        a.cache.run_pending_tasks().await;
        assert_eq!(a.cache.entry_count(), 1);
        // The same verification: a bad signature is refused in either form.
        let forged = format!("{}x", &t[..t.len() - 1]);
        let forged_basic = format!("Basic {}", B64_STD.encode(format!("{forged}:")));
        assert!(a.authenticate(&auth_header(&forged_basic)).await.is_err());
        // Off: only Bearer.
        let off = authn(&AuthConfig {
            accept_basic: false,
            ..base_cfg()
        });
        let got = off.authenticate(&auth_header(&basic)).await.unwrap_err();
        assert_eq!(got.code(), "unsupported_scheme");
        assert!(got.to_string().contains("turned off"), "{got}");
        check(&off, &t).await.unwrap();
    }

    #[tokio::test]
    async fn a_cliniko_key_is_counted_and_refused() {
        let a = authn(&base_cfg());
        let key = format!(
            "Basic {}",
            B64_STD.encode("MS0xMjM0NTY3ODkwMTIzNDU2Nzg5-au1:")
        );
        for _ in 0..2 {
            let got = a.authenticate(&auth_header(&key)).await.unwrap_err();
            assert_eq!(got, AuthError::ClinikoKeySent);
        }
        assert_eq!(a.counts.cliniko_keys_refused.load(Ordering::Relaxed), 2);
        let next = Authenticator::new(&base_cfg(), client(None), Some(&a)).unwrap();
        assert_eq!(
            next.counts.cliniko_keys_refused.load(Ordering::Relaxed),
            2,
            "carried across a reload"
        );
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid() {
        let a = authn(&base_cfg());
        let t = hs(&json!({"sub": "a", "exp": now() - 100}));
        assert_eq!(check(&a, &t).await.unwrap_err(), AuthError::Expired);
        let t = hs(&json!({"sub": "a", "exp": now() + 600, "nbf": now() + 100}));
        assert_eq!(check(&a, &t).await.unwrap_err(), AuthError::NotYetValid);
    }

    #[tokio::test]
    async fn leeway_is_honoured() {
        let just_expired = hs(&json!({"sub": "a", "exp": now() - 2, "nbf": now() + 2}));
        let lenient = authn(&base_cfg());
        assert!(check(&lenient, &just_expired).await.is_ok());
        let strict = authn(&AuthConfig {
            leeway: Duration::ZERO,
            ..base_cfg()
        });
        assert_eq!(
            check(&strict, &just_expired).await.unwrap_err(),
            AuthError::Expired
        );
        let too_lenient = AuthConfig {
            leeway: Duration::from_secs(7200),
            ..base_cfg()
        };
        let err = Authenticator::new(&too_lenient, client(None), None)
            .err()
            .unwrap();
        assert_eq!(err.field, "auth.leeway");
    }

    #[tokio::test]
    async fn issuer_and_audience() {
        let a = authn(&AuthConfig {
            issuers: vec!["https://idp.example".into()],
            audiences: vec!["gateway".into()],
            ..base_cfg()
        });
        let exp = now() + 600;
        let ok =
            json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": ["x", "gateway"]});
        assert!(check(&a, &hs(&ok)).await.is_ok());
        let t =
            hs(&json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "gateway"}));
        assert_eq!(
            check(&a, &t).await.unwrap_err(),
            AuthError::Invalid("issuer")
        );
        let t = hs(&json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": "other"}));
        assert_eq!(
            check(&a, &t).await.unwrap_err(),
            AuthError::Invalid("audience")
        );
        for missing in [
            json!({"sub": "a", "exp": exp, "aud": "gateway"}),
            json!({"sub": "a", "exp": exp, "iss": "https://idp.example"}),
            json!({"sub": "a", "exp": exp, "iss": 7, "aud": "gateway"}),
        ] {
            let got = check(&a, &hs(&missing)).await.unwrap_err();
            assert!(matches!(got, AuthError::Invalid(_)), "{missing}: {got:?}");
        }

        // No audiences configured: an `aud` claim is neither required nor refused.
        let open = authn(&base_cfg());
        let t = hs(&json!({"sub": "a", "exp": exp, "aud": "anything"}));
        assert!(check(&open, &t).await.is_ok());
    }

    #[tokio::test]
    async fn exp_is_required_and_must_be_a_number() {
        let a = authn(&base_cfg());
        for bad in [
            json!({"sub": "a"}),
            json!({"sub": "a", "exp": "9999999999"}),
            json!({"sub": "a", "exp": -5}),
            json!({"sub": "a", "exp": 1e300}),
            json!({"sub": "a", "exp": now() + 600, "nbf": "soon"}),
        ] {
            let got = check(&a, &hs(&bad)).await.unwrap_err();
            assert!(
                matches!(got, AuthError::Invalid(_) | AuthError::Malformed),
                "{bad}: {got:?}"
            );
        }
        // Claims that are not a JSON object at all.
        let t = hs(&json!(["sub", "a"]));
        assert_eq!(check(&a, &t).await.unwrap_err(), AuthError::Malformed);
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let a = authn(&base_cfg());
        let body = B64.encode(claims("alice").to_string());
        for h in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"None","typ":"JWT"}"#,
            r#"{"typ":"JWT"}"#,
        ] {
            let head = B64.encode(h);
            for t in [format!("{head}.{body}."), format!("{head}.{body}.AAAA")] {
                assert_eq!(
                    check(&a, &t).await.unwrap_err(),
                    AuthError::Malformed,
                    "{h}"
                );
            }
        }
    }

    #[tokio::test]
    async fn huge_and_garbled_tokens_are_malformed() {
        let a = authn(&base_cfg());
        let huge = format!("{}.e30.sig", "a".repeat(MAX_TOKEN_BYTES));
        assert_eq!(check(&a, &huge).await.unwrap_err(), AuthError::Malformed);
        let good = hs(&claims("a"));
        let (head, rest) = good.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        for bad in [
            "!!!.abc.def".to_string(),
            "abc.def.ghi".to_string(),
            "only.two".to_string(),
            "a.b.c.d".to_string(),
            format!("{head}.%%%.{sig}"),
            format!("{head}.AAA.{sig}"),
            format!("{head}.{}.{sig}", B64.encode("not json")),
        ] {
            let got = check(&a, &bad).await.unwrap_err();
            assert!(
                matches!(got, AuthError::Malformed | AuthError::Invalid("signature")),
                "{bad}: {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn user_claim_rules() {
        let a = authn(&base_cfg());
        let exp = now() + 600;
        let why = AuthError::Invalid("user claim missing or not a string");
        for bad in [
            json!({"exp": exp}),
            json!({"exp": exp, "sub": 42}),
            json!({"exp": exp, "sub": ""}),
            json!({"exp": exp, "sub": null}),
            json!({"exp": exp, "sub": "x".repeat(257)}),
            json!({"exp": exp, "sub": "a\nb"}),
        ] {
            assert_eq!(check(&a, &hs(&bad)).await.unwrap_err(), why, "{bad}");
        }
        let custom = authn(&AuthConfig {
            user_claim: "email".into(),
            ..base_cfg()
        });
        let t = hs(&json!({"exp": exp, "sub": "123", "email": "bob@clinic.example"}));
        assert_eq!(&*check(&custom, &t).await.unwrap().id, "bob@clinic.example");
        assert_eq!(check(&custom, &hs(&claims("123"))).await.unwrap_err(), why);
    }

    #[tokio::test]
    async fn hmac_algorithm_allowlist() {
        let a = authn(&base_cfg());
        let t = encode(
            &Header::new(Algorithm::HS512),
            &claims("a"),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            check(&a, &t).await.unwrap_err(),
            AuthError::Invalid("algorithm not allowed for this key")
        );
        let wrong_secret = encode(
            &Header::new(Algorithm::HS256),
            &claims("a"),
            &EncodingKey::from_secret(b"another secret of at least 32 bytes!!"),
        )
        .unwrap();
        assert_eq!(
            check(&a, &wrong_secret).await.unwrap_err(),
            AuthError::Invalid("signature")
        );
    }

    #[tokio::test]
    async fn token_cache_returns_the_same_user() {
        let a = authn(&base_cfg());
        let t = hs(&claims("alice"));
        let first = check(&a, &t).await.unwrap();
        let second = check(&a, &t).await.unwrap();
        assert!(
            Arc::ptr_eq(&first.claims, &second.claims),
            "served from cache"
        );
        assert!(a.cache.contains_key(&cache::hash(&t)));
        // A different token for the same user is verified on its own.
        let other = check(&a, &hs(&claims("alice"))).await.unwrap();
        assert_eq!(other.id, first.id);
    }

    #[tokio::test]
    async fn cached_token_stops_working_at_exp() {
        let a = authn(&AuthConfig {
            leeway: Duration::ZERO,
            ..base_cfg()
        });
        let exp = now() + 1;
        let t = hs(&json!({"sub": "a", "exp": exp}));
        assert!(check(&a, &t).await.is_ok());
        assert!(a.cache.contains_key(&cache::hash(&t)));
        // Wait for the wall clock (which both jsonwebtoken and the cache TTL use) to pass `exp`.
        while now() <= exp {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !a.cache.contains_key(&cache::hash(&t)),
            "entry outlived exp"
        );
        assert_eq!(check(&a, &t).await.unwrap_err(), AuthError::Expired);
    }
}
