//! Tokens built to fool the verifier: every one is a 401 (or 403/503 where stated) with its
//! code, and nothing reaches Cliniko. The harness trusts an HMAC secret (HS256 only), an RSA
//! PEM key (RS256, kid `rsa-1`) and a JWKS (ES256, kid `k1`), and requires `iss` and `aud`.

use crate::support::*;
use base64::Engine;
use cliniko_gateway::sandbox::{SigningKeyPair, ec_keypair, rsa_keypair};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const ISS: &str = "https://idp.test/";
const AUD: &str = "cliniko-gateway";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn good_claims() -> Value {
    json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now() + 600})
}

/// Signs arbitrary header and payload bytes with HMAC-SHA256 under `secret`.
fn hs_raw(header: &[u8], payload: &[u8], secret: &[u8]) -> String {
    let signing = format!("{}.{}", b64(header), b64(payload));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing.as_bytes());
    format!("{signing}.{}", b64(tag.as_ref()))
}

fn hs_claims(claims: &Value) -> String {
    hs_raw(
        br#"{"alg":"HS256","typ":"JWT"}"#,
        claims.to_string().as_bytes(),
        HMAC.as_bytes(),
    )
}

fn rs(header: Header, claims: &Value, kp: &SigningKeyPair) -> String {
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(kp.private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn es(header: Header, claims: &Value, kp: &SigningKeyPair) -> String {
    encode(
        &header,
        claims,
        &EncodingKey::from_ec_pem(kp.private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn with_kid(alg: Algorithm, kid: &str) -> Header {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    h
}

fn jwk_of(kp: &SigningKeyPair, kid: &str) -> Value {
    let enc = EncodingKey::from_ec_pem(kp.private_pem.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

#[tokio::test]
async fn hostile_tokens_are_refused_and_never_reach_cliniko() {
    let idp_rsa = rsa_keypair().unwrap();
    let idp_ec = ec_keypair().unwrap();
    let attacker_rsa = rsa_keypair().unwrap();
    let attacker_ec = ec_keypair().unwrap();
    let s = Setup {
        files: vec![("idp.pem", idp_rsa.public_pem.clone())],
        auth_toml: format!(
            "issuers = [\"{ISS}\"]\naudiences = [\"{AUD}\"]\n\
             [[auth.public_keys]]\nfile = \"idp.pem\"\nalgorithms = [\"RS256\"]\nkid = \"rsa-1\"\n\
             [auth.jwks]\nurl = \"{{jwks_url}}\"\nalgorithms = [\"ES256\"]\nmin_refetch_interval = \"1ms\"\n"
        ),
        jwks: Some(json!({"keys": [jwk_of(&idp_ec, "k1")]})),
        ..Setup::default()
    };
    let h = Harness::start(s).await;
    let sb_port = h.sandbox("au1").addr().port();
    let t = now();
    let claims = good_claims();

    // The harness works: one good token of each kind goes through.
    for (name, tok) in [
        ("hs256", hs_claims(&claims)),
        (
            "rs256",
            rs(with_kid(Algorithm::RS256, "rsa-1"), &claims, &idp_rsa),
        ),
        (
            "es256",
            es(with_kid(Algorithm::ES256, "k1"), &claims, &idp_ec),
        ),
    ] {
        // A query of its own, so the cache does not answer the second and third.
        let path = format!("/v1/patients?baseline={name}");
        let got = h.get_with_auth(&format!("Bearer {tok}"), &path).await;
        assert_eq!(got.status, 200, "{name}: {}", got.text());
    }
    let baseline = h.upstream_hits();
    assert_eq!(baseline, 3);

    let claims_with = |k: &str, v: Value| {
        let mut c = good_claims();
        c[k] = v;
        c
    };
    let claims_without = |k: &str| {
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let payload = claims.to_string();
    let valid_hs = hs_claims(&claims);
    let mut jku = with_kid(Algorithm::RS256, "rsa-1");
    jku.jku = Some(format!("https://localhost:{sb_port}/evil/jwks.json"));
    let mut x5u = with_kid(Algorithm::RS256, "rsa-1");
    x5u.x5u = Some(format!("https://localhost:{sb_port}/evil/cert.pem"));
    let mut jwk_hdr = Header::new(Algorithm::ES256);
    jwk_hdr.jwk = Some(serde_json::from_value(jwk_of(&attacker_ec, "attacker")).unwrap());
    let mut x5c = with_kid(Algorithm::RS256, "rsa-1");
    x5c.x5c = Some(vec![b64(b"not a certificate")]);
    let mut crit = Header::new(Algorithm::HS256);
    crit.crit = Some(vec!["exp".into()]);
    crit.extras.insert("exp", "1");
    let crit_tok = encode(&crit, &claims, &EncodingKey::from_secret(HMAC.as_bytes())).unwrap();
    let (hs_head, _, hs_sig) = {
        let mut p = valid_hs.split('.');
        (
            p.next().unwrap().to_string(),
            p.next(),
            p.next().unwrap().to_string(),
        )
    };
    let other_sub = b64(claims_with("sub", json!("carol")).to_string().as_bytes());

    let cases: Vec<(&str, String, u16, &str)> = vec![
        // alg none and friends.
        (
            "alg none, empty signature",
            format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(payload.as_bytes())),
            401,
            "token_malformed",
        ),
        (
            "alg None",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"None","typ":"JWT"}"#),
                b64(payload.as_bytes())
            ),
            401,
            "token_malformed",
        ),
        (
            "alg NONE with a signature",
            format!(
                "{}.{}.{hs_sig}",
                b64(br#"{"alg":"NONE"}"#),
                b64(payload.as_bytes())
            ),
            401,
            "token_malformed",
        ),
        (
            "alg missing",
            format!(
                "{}.{}.{hs_sig}",
                b64(br#"{"typ":"JWT"}"#),
                b64(payload.as_bytes())
            ),
            401,
            "token_malformed",
        ),
        (
            "alg none signed with the HMAC secret",
            hs_raw(br#"{"alg":"none"}"#, payload.as_bytes(), HMAC.as_bytes()),
            401,
            "token_malformed",
        ),
        // Algorithm confusion.
        (
            "HS256 keyed with the RSA public key PEM",
            hs_raw(
                br#"{"alg":"HS256"}"#,
                payload.as_bytes(),
                idp_rsa.public_pem.as_bytes(),
            ),
            401,
            "token_invalid",
        ),
        (
            "HS256 keyed with the RSA PEM, kid of the RSA key",
            hs_raw(
                br#"{"alg":"HS256","kid":"rsa-1"}"#,
                payload.as_bytes(),
                idp_rsa.public_pem.as_bytes(),
            ),
            401,
            "token_invalid",
        ),
        (
            "HS384 (not allowlisted)",
            encode(
                &Header::new(Algorithm::HS384),
                &claims,
                &EncodingKey::from_secret(HMAC.as_bytes()),
            )
            .unwrap(),
            401,
            "token_invalid",
        ),
        (
            "HS512 (not allowlisted)",
            encode(
                &Header::new(Algorithm::HS512),
                &claims,
                &EncodingKey::from_secret(HMAC.as_bytes()),
            )
            .unwrap(),
            401,
            "token_invalid",
        ),
        (
            "RS384 with the IdP key (not allowlisted)",
            rs(with_kid(Algorithm::RS384, "rsa-1"), &claims, &idp_rsa),
            401,
            "token_invalid",
        ),
        (
            "RS256 signed by an attacker key",
            rs(with_kid(Algorithm::RS256, "rsa-1"), &claims, &attacker_rsa),
            401,
            "token_invalid",
        ),
        (
            "ES256 signed by an attacker, known kid",
            es(with_kid(Algorithm::ES256, "k1"), &claims, &attacker_ec),
            401,
            "token_invalid",
        ),
        // kid games.
        (
            "kid path traversal",
            es(
                with_kid(Algorithm::ES256, "../../../../etc/passwd"),
                &claims,
                &attacker_ec,
            ),
            401,
            "token_invalid",
        ),
        (
            "kid SQL-ish",
            es(
                with_kid(Algorithm::ES256, "k1' OR '1'='1"),
                &claims,
                &attacker_ec,
            ),
            401,
            "token_invalid",
        ),
        (
            "kid SQL drop",
            es(
                with_kid(Algorithm::ES256, "x; DROP TABLE keys;--"),
                &claims,
                &attacker_ec,
            ),
            401,
            "token_invalid",
        ),
        (
            "kid of 1000 characters",
            es(
                with_kid(Algorithm::ES256, &"k".repeat(1000)),
                &claims,
                &attacker_ec,
            ),
            401,
            "token_invalid",
        ),
        (
            "kid with a NUL",
            es(with_kid(Algorithm::ES256, "k1\u{0}"), &claims, &attacker_ec),
            401,
            "token_invalid",
        ),
        (
            "RS256 with a JWKS kid",
            rs(with_kid(Algorithm::RS256, "k1"), &claims, &attacker_rsa),
            401,
            "token_invalid",
        ),
        // Key material offered by the token itself is never used.
        (
            "jku header (attacker's set)",
            rs(jku, &claims, &attacker_rsa),
            401,
            "token_invalid",
        ),
        (
            "x5u header",
            rs(x5u, &claims, &attacker_rsa),
            401,
            "token_invalid",
        ),
        (
            "jwk header embedding the attacker key",
            es(jwk_hdr, &claims, &attacker_ec),
            401,
            "token_invalid",
        ),
        (
            "x5c header",
            rs(x5c, &claims, &attacker_rsa),
            401,
            "token_invalid",
        ),
        ("crit header", crit_tok, 401, "token_invalid"),
        // Size and encoding.
        ("huge token", "a".repeat(9000), 401, "token_malformed"),
        (
            "huge but well-shaped token",
            format!(
                "{}.{}.{}",
                "a".repeat(4000),
                "b".repeat(4000),
                "c".repeat(400)
            ),
            401,
            "token_malformed",
        ),
        (
            "bad base64 header",
            format!("!!!.{}.{hs_sig}", b64(payload.as_bytes())),
            401,
            "token_malformed",
        ),
        (
            "standard (non-url) base64",
            format!("{hs_head}.{}+/.{hs_sig}", b64(payload.as_bytes())),
            401,
            "token_malformed",
        ),
        (
            "header is not JSON",
            hs_raw(b"alg=HS256", payload.as_bytes(), HMAC.as_bytes()),
            401,
            "token_malformed",
        ),
        (
            "payload is not base64, signed",
            {
                let s = format!("{hs_head}.@@@@");
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, HMAC.as_bytes());
                format!(
                    "{s}.{}",
                    b64(aws_lc_rs::hmac::sign(&key, s.as_bytes()).as_ref())
                )
            },
            401,
            "token_malformed",
        ),
        (
            "payload is not JSON, signed",
            hs_raw(br#"{"alg":"HS256"}"#, b"sub=alice", HMAC.as_bytes()),
            401,
            "token_malformed",
        ),
        (
            "payload is a JSON array, signed",
            hs_raw(br#"{"alg":"HS256"}"#, b"[1,2]", HMAC.as_bytes()),
            401,
            "token_malformed",
        ),
        (
            "two parts",
            format!("{hs_head}.{}", b64(payload.as_bytes())),
            401,
            "token_malformed",
        ),
        (
            "four parts",
            format!("{valid_hs}.{hs_sig}"),
            401,
            "token_malformed",
        ),
        (
            "signature stripped",
            format!("{hs_head}.{}.", b64(payload.as_bytes())),
            401,
            "token_invalid",
        ),
        (
            "signature truncated",
            // 43 base64url characters cut to 41 (≡ 1 mod 4) can never decode, whatever the
            // bytes; other cuts decode a quarter of the time and make this case flaky.
            valid_hs[..valid_hs.len() - 2].to_string(),
            401,
            "token_malformed",
        ),
        (
            "payload swapped under a valid signature",
            format!("{hs_head}.{other_sub}.{hs_sig}"),
            401,
            "token_invalid",
        ),
        // Nested JWTs: a token as the payload is not a claim set.
        (
            "nested JWT as raw payload (cty JWT)",
            hs_raw(
                br#"{"alg":"HS256","cty":"JWT"}"#,
                valid_hs.as_bytes(),
                HMAC.as_bytes(),
            ),
            401,
            "token_malformed",
        ),
        (
            "nested JWT as a JSON string payload",
            hs_raw(
                br#"{"alg":"HS256","cty":"JWT"}"#,
                format!("\"{valid_hs}\"").as_bytes(),
                HMAC.as_bytes(),
            ),
            401,
            "token_malformed",
        ),
        // Claims of the wrong type or value.
        (
            "sub is a number",
            hs_claims(&claims_with("sub", json!(42))),
            401,
            "token_invalid",
        ),
        (
            "sub is an array",
            hs_claims(&claims_with("sub", json!(["alice"]))),
            401,
            "token_malformed",
        ),
        (
            "sub is an object",
            hs_claims(&claims_with("sub", json!({"id": "alice"}))),
            401,
            "token_malformed",
        ),
        (
            "sub is null",
            hs_claims(&claims_with("sub", Value::Null)),
            401,
            "token_invalid",
        ),
        (
            "sub empty",
            hs_claims(&claims_with("sub", json!(""))),
            401,
            "token_invalid",
        ),
        (
            "sub over 256 bytes",
            hs_claims(&claims_with("sub", json!("a".repeat(300)))),
            401,
            "token_invalid",
        ),
        (
            "sub with a control character",
            hs_claims(&claims_with("sub", json!("alice\nadmin"))),
            401,
            "token_invalid",
        ),
        (
            "sub missing",
            hs_claims(&claims_without("sub")),
            401,
            "token_invalid",
        ),
        (
            "exp as a string",
            hs_claims(&claims_with("exp", json!("tomorrow"))),
            401,
            "token_invalid",
        ),
        (
            "exp as a numeric string",
            hs_claims(&claims_with("exp", json!((t + 600).to_string()))),
            401,
            "token_invalid",
        ),
        (
            "exp missing",
            hs_claims(&claims_without("exp")),
            401,
            "token_invalid",
        ),
        (
            "exp in the past",
            hs_claims(&claims_with("exp", json!(t - 3600))),
            401,
            "token_expired",
        ),
        (
            "exp negative",
            hs_claims(&claims_with("exp", json!(-1))),
            401,
            "token_invalid",
        ),
        (
            "nbf as a string",
            hs_claims(&claims_with("nbf", json!("now"))),
            401,
            "token_invalid",
        ),
        (
            "nbf in the future",
            hs_claims(&claims_with("nbf", json!(t + 3600))),
            401,
            "token_not_yet_valid",
        ),
        (
            "wrong iss",
            hs_claims(&claims_with("iss", json!("https://evil.example/"))),
            401,
            "token_invalid",
        ),
        (
            "iss missing",
            hs_claims(&claims_without("iss")),
            401,
            "token_invalid",
        ),
        (
            "wrong aud",
            hs_claims(&claims_with("aud", json!("another-api"))),
            401,
            "token_invalid",
        ),
        (
            "aud array without ours",
            hs_claims(&claims_with("aud", json!(["a", "b"]))),
            401,
            "token_invalid",
        ),
        (
            "aud as a number",
            hs_claims(&claims_with("aud", json!(7))),
            401,
            "token_invalid",
        ),
    ];
    let n = cases.len();
    let mut wrong = Vec::new();
    for (name, token, status, code) in cases {
        let before = h.upstream_hits();
        let got = h
            .get_with_auth(&format!("Bearer {token}"), "/v1/patients")
            .await;
        if (got.status.as_u16(), got.code().as_str()) != (status, code) {
            wrong.push(format!(
                "{name}: got {} {}, want {status} {code}",
                got.status,
                got.code()
            ));
        }
        assert!(
            !got.text().contains(&token[..token.len().min(40)]),
            "{name}: token echoed"
        );
        assert_eq!(h.upstream_hits(), before, "{name} reached Cliniko");
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(n >= 50, "{n} cases");

    // Scheme and placement games.
    type SchemeCase<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, &'a str);
    let scheme_cases: Vec<SchemeCase> = vec![
        (
            "token only in the query string",
            vec![],
            "/v1/patients?access_token={valid}",
            "token_missing",
        ),
        (
            "token in the query, junk bearer",
            vec![("authorization", "Bearer junk".into())],
            "/v1/patients?token={valid}",
            "token_malformed",
        ),
        (
            "Basic instead of Bearer",
            vec![("authorization", format!("Basic {}", b64(b"alice:")))],
            "/v1/patients",
            "token_malformed",
        ),
        (
            "Bearer without a token",
            vec![("authorization", "Bearer".into())],
            "/v1/patients",
            "token_malformed",
        ),
        (
            "two spaces after Bearer",
            vec![("authorization", format!("Bearer  {valid_hs}"))],
            "/v1/patients",
            "token_malformed",
        ),
        (
            "token in a cookie",
            vec![("cookie", format!("access_token={valid_hs}"))],
            "/v1/patients",
            "token_missing",
        ),
        (
            "token in X-Access-Token",
            vec![("x-access-token", valid_hs.clone())],
            "/v1/patients",
            "token_missing",
        ),
    ];
    for (name, hdrs, path, code) in scheme_cases {
        let before = h.upstream_hits();
        let path = path.replace("{valid}", &valid_hs);
        let hv: Vec<(&str, &str)> = hdrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = h
            .send(http::Method::GET, &path, &hv, bytes::Bytes::new())
            .await;
        assert_eq!(got.status, 401, "{name}: {}", got.text());
        assert_eq!(got.code(), code, "{name}");
        assert_eq!(h.upstream_hits(), before, "{name} reached Cliniko");
    }
    // Non-ASCII bytes in the header value.
    let before = h.upstream_hits();
    let v = http::HeaderValue::from_bytes(b"Bearer \xff\xfe.abc.def").unwrap();
    let req = http::Request::get(format!("{}/v1/patients", h.base))
        .header("authorization", v)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = h.client.request(req).await.unwrap();
    assert_eq!(resp.status(), 401, "non-ASCII token");
    assert_eq!(h.upstream_hits(), before);

    // Header-supplied key locations were never fetched.
    let fetched: Vec<String> = h
        .sandbox("au1")
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .filter(|p| p.starts_with("/evil"))
        .collect();
    assert!(fetched.is_empty(), "jku/x5u followed: {fetched:?}");
    assert_eq!(h.upstream_hits(), baseline);
}
