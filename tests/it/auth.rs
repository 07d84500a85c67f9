//! Every reason a bearer token is refused, end to end: 401 with a stable code and a
//! `WWW-Authenticate` challenge, and nothing sent to Cliniko.

use crate::support::*;
use base64::Engine;
use cliniko_gateway::sandbox::{ec_keypair, rsa_keypair};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs(claims: serde_json::Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn expect_401(h: &Harness, authorization: Option<&str>, code: &str) {
    let got = match authorization {
        Some(a) => h.get_with_auth(a, "/v1/patients").await,
        None => {
            h.send(http::Method::GET, "/v1/patients", &[], bytes::Bytes::new())
                .await
        }
    };
    assert_eq!(got.status, 401, "{authorization:?}: {}", got.text());
    assert_eq!(got.code(), code, "{authorization:?}");
    let challenge = got.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    if code != "token_missing" {
        assert_eq!(challenge, "Bearer error=\"invalid_token\"");
    }
}

#[tokio::test]
async fn every_hmac_token_failure_is_a_401_with_its_code() {
    let h = Harness::start(Setup::default()).await;
    let secret = HMAC.as_bytes();
    let t = now();
    expect_401(&h, None, "token_missing").await;
    expect_401(&h, Some("Basic YWxpY2U6"), "token_malformed").await;
    expect_401(&h, Some("Bearer not.a.jwt"), "token_malformed").await;
    expect_401(&h, Some("Bearer !!!.###.$$$"), "token_malformed").await;
    let huge = format!("Bearer {}", "a".repeat(9000));
    expect_401(&h, Some(&huge), "token_malformed").await;
    let expired = hs(json!({"sub": "alice", "exp": t - 3600}), secret);
    expect_401(&h, Some(&format!("Bearer {expired}")), "token_expired").await;
    let future = hs(
        json!({"sub": "alice", "exp": t + 3600, "nbf": t + 600}),
        secret,
    );
    expect_401(&h, Some(&format!("Bearer {future}")), "token_not_yet_valid").await;
    let wrong = hs(
        json!({"sub": "alice", "exp": t + 3600}),
        b"another-secret-that-is-also-long-enough!!",
    );
    expect_401(&h, Some(&format!("Bearer {wrong}")), "token_invalid").await;
    let no_exp = hs(json!({"sub": "alice"}), secret);
    expect_401(&h, Some(&format!("Bearer {no_exp}")), "token_invalid").await;
    let exp_string = hs(json!({"sub": "alice", "exp": "tomorrow"}), secret);
    let got = h
        .get_with_auth(&format!("Bearer {exp_string}"), "/v1/patients")
        .await;
    assert_eq!(got.status, 401);
    let no_sub = hs(json!({"exp": t + 3600}), secret);
    expect_401(&h, Some(&format!("Bearer {no_sub}")), "token_invalid").await;
    let num_sub = hs(json!({"sub": 42, "exp": t + 3600}), secret);
    expect_401(&h, Some(&format!("Bearer {num_sub}")), "token_invalid").await;
    // alg none: a valid-looking token with no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "alice", "exp": t + 3600}))
    );
    let got = h
        .get_with_auth(&format!("Bearer {none}"), "/v1/patients")
        .await;
    assert_eq!(got.status, 401);
    // Within the leeway (30 s) an just-expired token still passes.
    let just = hs(json!({"sub": "alice", "exp": t - 5}), secret);
    assert_eq!(
        h.get_with_auth(&format!("Bearer {just}"), "/v1/patients")
            .await
            .status,
        200
    );
    assert_eq!(h.upstream_hits(), 1, "only the valid token reached Cliniko");
}

#[tokio::test]
async fn rsa_key_accepts_rs256_and_refuses_hs_confusion() {
    let kp = rsa_keypair().unwrap();
    let mut s = Setup::default();
    s.files.push(("idp.pem", kp.public_pem.clone()));
    s.auth_toml = "[[auth.public_keys]]\nfile = \"idp.pem\"\nalgorithms = [\"RS256\"]\n".into();
    let h = Harness::start(s).await;
    let t = now();
    let claims = json!({"sub": "alice", "exp": t + 600});
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(kp.private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        h.get_with_auth(&format!("Bearer {rs}"), "/v1/patients")
            .await
            .status,
        200
    );
    // HS256 signed with the RSA public key's PEM bytes as the HMAC secret.
    let confused = hs(claims.clone(), kp.public_pem.as_bytes());
    expect_401(&h, Some(&format!("Bearer {confused}")), "token_invalid").await;
    // RS384 is not on this key's allowlist.
    let rs384 = encode(
        &Header::new(Algorithm::RS384),
        &claims,
        &EncodingKey::from_rsa_pem(kp.private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    expect_401(&h, Some(&format!("Bearer {rs384}")), "token_invalid").await;
    // A jwk header carrying the attacker's own key is ignored.
    let attacker = rsa_keypair().unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.jku = Some("https://evil.example/jwks.json".into());
    let forged = encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(attacker.private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    expect_401(&h, Some(&format!("Bearer {forged}")), "token_invalid").await;
}

fn jwk_for(kp: &cliniko_gateway::sandbox::SigningKeyPair, kid: &str) -> serde_json::Value {
    let enc = EncodingKey::from_ec_pem(kp.private_pem.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn es256(kp: &cliniko_gateway::sandbox::SigningKeyPair, kid: &str, sub: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    encode(
        &header,
        &json!({"sub": sub, "exp": now() + 600}),
        &EncodingKey::from_ec_pem(kp.private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn jwks_rotation_and_unknown_kids() {
    let old = ec_keypair().unwrap();
    let new = ec_keypair().unwrap();
    let s = Setup {
        auth_toml: "[auth.jwks]\nurl = \"{jwks_url}\"\nalgorithms = [\"ES256\"]\nmin_refetch_interval = \"1ms\"\n".into(),
        jwks: Some(json!({"keys": [jwk_for(&old, "k1")]})),
        ..Setup::default()
    };
    let h = Harness::start(s).await;
    let sb = h.sandbox("au1");
    assert_eq!(
        sb.jwks_fetch_count(),
        1,
        "fetched once before reporting ready"
    );
    let got = h
        .get_with_auth(
            &format!("Bearer {}", es256(&old, "k1", "alice")),
            "/v1/patients",
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    // Rotation: the IdP publishes k2; a token signed with it works after one refetch.
    sb.set_jwks(json!({"keys": [jwk_for(&new, "k2")]}));
    let got = h
        .get_with_auth(
            &format!("Bearer {}", es256(&new, "k2", "alice")),
            "/v1/patients",
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    // A token with a kid nobody published is refused, and asking again with the same bogus kid
    // does not hit the IdP again (remembered as unknown).
    let before = sb.jwks_fetch_count();
    let bogus = es256(&new, "nope", "alice");
    for _ in 0..20 {
        let got = h
            .get_with_auth(&format!("Bearer {bogus}"), "/v1/patients")
            .await;
        assert_eq!(got.status, 401);
        assert_eq!(got.code(), "token_invalid");
    }
    assert!(
        sb.jwks_fetch_count() - before <= 1,
        "bogus kid hammered the IdP"
    );
}
