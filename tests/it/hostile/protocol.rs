//! Where the gateway must be stricter than its libraries: an `iss` claim that is an array
//! (jsonwebtoken accepts one holding an allowed issuer; RFC 7519 §4.1.1 says a string), an
//! HTTP/1.1 request without exactly one `Host` (hyper serves it; RFC 9112 §3.2 says 400), and
//! percent-encoded unreserved characters in the path (Cliniko decodes `%70atients` to
//! `patients`; the policy, cache and audit would not).

use super::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const ISS: &str = "https://idp.test/";
const TAIL: &str =
    " HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n";

fn hs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HMAC.as_bytes()),
    )
    .unwrap()
}

fn claims_with_iss(iss: Value) -> Value {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    json!({"sub": "alice", "iss": iss, "exp": exp})
}

/// Every non-string `iss` is a 401 `token_invalid` that never reaches Cliniko.
async fn refuses_issuer_shapes(h: &Harness) {
    for (name, iss) in [
        ("array holding only ours", json!([ISS])),
        (
            "array of ours and another",
            json!([ISS, "https://evil.example/"]),
        ),
        ("empty array", json!([])),
        ("object", json!({"iss": ISS})),
        ("number", json!(1)),
    ] {
        let before = h.upstream_hits();
        let tok = hs(&claims_with_iss(iss));
        let got = h
            .get_with_auth(&format!("Bearer {tok}"), "/v1/patients")
            .await;
        assert_eq!(got.status, 401, "{name}: {}", got.text());
        assert_eq!(got.code(), "token_invalid", "{name}");
        assert!(got.text().contains("iss"), "{name}: {}", got.text());
        assert_eq!(h.upstream_hits(), before, "{name} reached Cliniko");
    }
}

#[tokio::test]
async fn an_issuer_array_is_refused_even_when_it_holds_ours() {
    let h = Harness::start(Setup {
        auth_toml: format!("issuers = [\"{ISS}\"]\n"),
        ..Setup::default()
    })
    .await;
    let ok = hs(&claims_with_iss(json!(ISS)));
    let got = h
        .get_with_auth(&format!("Bearer {ok}"), "/v1/patients")
        .await;
    assert_eq!(got.status, 200, "the string form is fine: {}", got.text());
    refuses_issuer_shapes(&h).await;

    // No issuer list configured: `iss` is not checked against one, but an array is still not
    // an issuer.
    let h = Harness::start(Setup::default()).await;
    refuses_issuer_shapes(&h).await;
}

#[tokio::test]
async fn http1_requests_without_exactly_one_host_get_400() {
    let h = Harness::start(Setup::default()).await;
    let auth = "Authorization: {auth}\r\nConnection: close\r\n\r\n";
    for (name, head) in [
        ("no Host", "GET /v1/patients HTTP/1.1\r\n".to_string()),
        (
            "two Host headers",
            "GET /v1/patients HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n".into(),
        ),
        (
            "the same Host twice",
            "GET /v1/patients HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n".into(),
        ),
        (
            "absolute-form without Host",
            "GET http://{host}/v1/patients HTTP/1.1\r\n".into(),
        ),
        (
            "HTTP/1.0 with two Host headers",
            "GET /v1/patients HTTP/1.0\r\nHost: a\r\nHost: b\r\n".into(),
        ),
        ("/healthz without Host", "GET /healthz HTTP/1.1\r\n".into()),
    ] {
        expect_raw(&h, name, &format!("{head}{auth}"), 400, "bad_host").await;
    }
    let got = raw(
        &addr(&h),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        got.head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{got:?}"
    );

    // Controls: one Host, and HTTP/1.0 (where Host is optional), are served.
    let bearer = format!("Bearer {}", h.token("alice"));
    for (name, req) in [
        (
            "one Host",
            format!("GET /v1/patients HTTP/1.1\r\nHost: {}\r\n", addr(&h)),
        ),
        (
            "HTTP/1.0 without Host",
            "GET /v1/patients HTTP/1.0\r\n".into(),
        ),
    ] {
        let req = format!("{req}Authorization: {bearer}\r\nConnection: close\r\n\r\n");
        let got = raw(&addr(&h), req.as_bytes(), Duration::from_secs(5)).await;
        assert!(got.head.contains(" 200 "), "{name}: {got:?}");
    }
}

#[tokio::test]
async fn http2_carries_authority_not_host_and_is_served() {
    let h = Harness::start(Setup::default()).await;
    // hyper's client adds `Host` on HTTP/1 connections only: this h2c request has none.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::get(format!("{}/v1/patients", h.base))
        .header("authorization", format!("Bearer {}", h.token("alice")))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert!(!req.headers().contains_key("host"));
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn percent_encoded_unreserved_characters_in_the_path_are_refused() {
    // The harness grants `/v1` wide, as in the probe: only the guard stands in the way.
    let h = Harness::start(Setup::default()).await;
    for (name, target) in [
        ("%70atients (p)", "GET /v1/%70atients/7"),
        ("upper-case hex", "GET /v1/%50ATIENTS"),
        ("encoded id digit", "GET /v1/patients/%37"),
        ("encoded '-'", "GET /v1/patients%2Dx"),
        ("encoded '_'", "GET /v1/patient_%5Fx"),
        ("encoded '~'", "GET /v1/patients%7e"),
        (
            "a write, sidestepping invalidation",
            "DELETE /v1/%70atients/7",
        ),
        ("a write with a body", "PATCH /v1/patients/%31"),
    ] {
        expect_raw(&h, name, &format!("{target}{TAIL}"), 400, "bad_target").await;
    }
    // The unencoded path is served.
    assert_eq!(h.get_as("alice", "/v1/patients").await.status, 200);
}
