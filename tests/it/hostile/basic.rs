//! The Basic credential form: the JWT as the username is served like Bearer; nothing else in
//! a Basic header is ever passed on. A Cliniko API key sent to the gateway is refused on its
//! own (and counted), a password is refused, two Authorization headers are refused whichever
//! comes first, and an unknown scheme says which forms work.

use super::*;
use base64::Engine;
use bytes::Bytes;
use http::Method;

fn basic(user_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

async fn get(h: &Harness, auth: &[&str]) -> Got {
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
    h.send(
        Method::GET,
        "/v1/patients?per_page=1",
        &headers,
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn the_jwt_as_basic_username_is_served_like_bearer() {
    let h = Harness::start(Setup::default()).await;
    let got = get(&h, &[&basic(&format!("{}:", h.token("carol")))]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.headers["x-cache"], "MISS");
    // Carol's key went to Carol's shard; her JWT never did.
    let recs = h.sandbox("uk2").requests();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        recs[0].header("authorization"),
        Some(&*basic(&format!("{KEY_CAROL}:")))
    );
    // The same token as Bearer is the same caller: the answer Basic fetched is cached for it.
    let again = h.get_as("carol", "/v1/patients?per_page=1").await;
    assert_eq!(again.headers["x-cache"], "HIT");
    // A forged JWT is refused in this form as in the other.
    let forged = mint_hs(
        &secrecy::SecretSlice::from(b"another-secret-that-is-long-enough-0123456789".to_vec()),
        jsonwebtoken::Algorithm::HS256,
        "carol",
        Duration::from_secs(600),
        serde_json::Map::new(),
    )
    .unwrap();
    let got = get(&h, &[&basic(&format!("{forged}:"))]).await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (401, "token_invalid")
    );
    assert_eq!(
        got.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(h.sandbox("uk2").requests().len(), 1);
}

#[tokio::test]
async fn a_cliniko_key_sent_to_the_gateway_is_refused_counted_and_never_forwarded() {
    let h = Harness::start(Setup::default()).await;
    // The stored key itself, and one the gateway does not hold, wherever a client puts it.
    let unknown = "MS0xMjM0NTY3ODkwMTIzNDU2Nzg5LWFiY2RlZmdo-au2";
    let cases = [
        basic(&format!("{KEY_ALICE}:")),
        basic(&format!("{unknown}:")),
        basic(&format!("{KEY_ALICE}:x")),
        basic(&format!(":{KEY_ALICE}")),
        format!("Bearer {KEY_ALICE}"),
        KEY_ALICE.to_string(),
    ];
    for auth in &cases {
        let got = get(&h, &[auth]).await;
        assert_eq!(got.status, 401, "{auth}: {}", got.text());
        assert_eq!(got.code(), "cliniko_key_sent", "{auth}");
        assert_eq!(
            got.json()["error"]["message"],
            "this gateway holds the Cliniko keys: send your JWT, not a Cliniko API key"
        );
        assert_eq!(
            got.headers["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        assert!(!got.text().contains(KEY_ALICE) && !got.text().contains(unknown));
    }
    assert_eq!(h.upstream_hits(), 0, "a key was passed through");
    let metrics = h.gateway().metrics.render().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "cliniko_gateway_auth_cliniko_keys_refused_total {}",
            cases.len()
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn passwords_two_headers_and_other_schemes_are_refused_before_anything_is_sent() {
    let h = Harness::start(Setup::default()).await;
    let jwt = h.token("alice");
    let bearer = format!("Bearer {jwt}");
    let as_basic = basic(&format!("{jwt}:"));
    let cases: Vec<(&str, Vec<String>, u16, &str)> = vec![
        (
            "a password",
            vec![basic(&format!("{jwt}:secret"))],
            401,
            "password_not_empty",
        ),
        (
            "two Bearer",
            vec![bearer.clone(), bearer.clone()],
            400,
            "ambiguous_credentials",
        ),
        (
            "Bearer, Basic",
            vec![bearer.clone(), as_basic.clone()],
            400,
            "ambiguous_credentials",
        ),
        (
            "Basic, Bearer",
            vec![as_basic.clone(), bearer.clone()],
            400,
            "ambiguous_credentials",
        ),
        (
            "two Basic",
            vec![as_basic.clone(), as_basic.clone()],
            400,
            "ambiguous_credentials",
        ),
        (
            "Bearer, then another account's key",
            vec![bearer.clone(), basic(&format!("{KEY_CAROL}:"))],
            400,
            "ambiguous_credentials",
        ),
        (
            "Basic junk, Bearer",
            vec!["Basic YWxpY2U6".into(), bearer.clone()],
            400,
            "ambiguous_credentials",
        ),
        ("no scheme", vec![jwt.clone()], 401, "unsupported_scheme"),
        (
            "Digest",
            vec![format!("Digest {jwt}")],
            401,
            "unsupported_scheme",
        ),
        (
            "Token",
            vec![format!("Token token={jwt}")],
            401,
            "unsupported_scheme",
        ),
        (
            "Basic not base64",
            vec!["Basic !!!!".into()],
            401,
            "token_malformed",
        ),
        (
            "Basic without a colon",
            vec![basic(&jwt)],
            401,
            "token_malformed",
        ),
        (
            "Basic user not a JWT",
            vec![basic("alice:")],
            401,
            "token_malformed",
        ),
        (
            "Basic user over 8 KiB",
            vec![basic(&format!("{}.b.c:", "a".repeat(9000)))],
            401,
            "token_malformed",
        ),
    ];
    for (name, auth, status, code) in cases {
        let refs: Vec<&str> = auth.iter().map(String::as_str).collect();
        let got = get(&h, &refs).await;
        assert_eq!(got.status, status, "{name}: {}", got.text());
        assert_eq!(got.code(), code, "{name}");
        match status {
            // Never a Basic challenge: no browser login box.
            401 => assert!(
                got.headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer")
            ),
            _ => assert!(!got.headers.contains_key("www-authenticate"), "{name}"),
        }
        if code == "unsupported_scheme" {
            let msg = got.json()["error"]["message"].to_string();
            assert!(msg.contains("Bearer") && msg.contains("Basic"), "{msg}");
        }
        assert!(!got.text().contains(&jwt), "{name}: token echoed");
    }
    assert_eq!(h.upstream_hits(), 0);
}

#[tokio::test]
async fn with_basic_turned_off_only_bearer_works() {
    let h = Harness::start(Setup {
        auth_toml: "accept_basic = false".into(),
        ..Setup::default()
    })
    .await;
    let got = get(&h, &[&basic(&format!("{}:", h.token("alice")))]).await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (401, "unsupported_scheme")
    );
    assert!(got.text().contains("turned off"), "{}", got.text());
    assert_eq!(h.upstream_hits(), 0);
    assert_eq!(
        h.get_as("alice", "/v1/patients?per_page=1").await.status,
        200
    );
}
