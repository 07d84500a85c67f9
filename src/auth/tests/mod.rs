//! Real-crypto tests: HMAC secrets and PEM keys here, JWKS over a loopback TLS server in `jwks`.

mod jwks;
mod pem;

use super::*;
use crate::config::UpstreamConfig;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64_STD;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, encode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

fn now() -> u64 {
    cache::now().as_secs()
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("gw-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, contents: &str) -> PathBuf {
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

fn base_cfg() -> AuthConfig {
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

fn client(ca_file: Option<&Path>) -> HttpClient {
    let mut text = "user_agent = \"T (t@e.x)\"\n".to_string();
    if let Some(p) = ca_file {
        text.push_str(&format!("ca_file = \"{}\"\n", p.display()));
    }
    let u: UpstreamConfig = toml::from_str(&text).unwrap();
    crate::upstream::client::build(&u).unwrap()
}

fn authn(cfg: &AuthConfig) -> Arc<Authenticator> {
    Authenticator::new(cfg, client(None)).unwrap()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600})
}

fn hs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// Headers with `Authorization: <value>`.
fn auth_header(value: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(value).unwrap(),
    );
    h
}

async fn check(a: &Authenticator, token: &str) -> Result<User, AuthError> {
    a.authenticate(&auth_header(&format!("Bearer {token}")))
        .await
}

/// A generated key pair: the private half signs, the public PEM is what the gateway gets.
struct Signer {
    enc: EncodingKey,
    public_pem: String,
}

impl Signer {
    fn sign(&self, header: Header, claims: &Value) -> String {
        encode(&header, claims, &self.enc).unwrap()
    }
}

fn generate(alg: Algorithm) -> Signer {
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
fn rsa() -> &'static Signer {
    static K: OnceLock<Signer> = OnceLock::new();
    K.get_or_init(|| generate(Algorithm::RS256))
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    h
}

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
    assert_eq!(a.cliniko_keys_refused(), 2);
    let next = Authenticator::new_after(&base_cfg(), client(None), Some(&a)).unwrap();
    assert_eq!(next.cliniko_keys_refused(), 2, "carried across a reload");
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
    let err = Authenticator::new(&too_lenient, client(None))
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
    let ok = json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": ["x", "gateway"]});
    assert!(check(&a, &hs(&ok)).await.is_ok());
    let t = hs(&json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "gateway"}));
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
