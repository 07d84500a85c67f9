//! Credential attacks: a key whose shard suffix tries to pick the upstream host, users the
//! store does not know, and a token that outlives its user's key.

use super::*;
use bytes::Bytes;
use cliniko_gateway::credentials::{ApiKey, Credential};
use http::Method;
use http_body_util::{BodyExt, Full};

const ADMIN_TOKEN: &str = "admin-token-of-at-least-32-characters!!";

async fn reload(h: &Harness) -> u16 {
    let req = http::Request::post(format!("{}/admin/reload", h.admin_base()))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h.client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[test]
fn a_crafted_shard_suffix_is_refused_when_added_and_when_loaded() {
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    for crafted in [
        "key-evil.example",
        "key-au1.evil.example",
        "key-au1/../x",
        "key-au1@evil",
        "key-AU1",
        "key-",
        "key-au123",
    ] {
        let err = add_key(
            &path,
            &master,
            "mallory",
            &ApiKey::new(crafted.into()),
            None,
        );
        assert!(err.is_err(), "{crafted} accepted");
        assert!(
            Credential::new(ApiKey::new(crafted.into()), "k", None).is_err(),
            "{crafted}"
        );
        if let Err(e) = err {
            assert!(!e.to_string().contains(crafted), "key echoed: {e}");
        }
    }
    // A hand-edited store that claims another shard for a real key is refused as a whole.
    add_key(
        &path,
        &master,
        "alice",
        &ApiKey::new(KEY_ALICE.into()),
        None,
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"au1\""));
    std::fs::write(&path, text.replace("\"au1\"", "\"evil.example\"")).unwrap();
    let e = load_keys(&path, &master)
        .map(|_| ())
        .expect_err("tampered store loaded");
    assert!(e.to_string().contains("shard"), "{e}");
}

#[tokio::test]
async fn unknown_users_and_removed_keys_get_403_and_nothing_upstream() {
    let h = Harness::start(Setup {
        overrides: vec![
            ("CLINIKO_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0".into()),
            ("CLINIKO_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ],
        ..Setup::default()
    })
    .await;
    for user in [
        "mallory",
        "Alice",
        "alice ",
        "../alice",
        "alice@evil",
        &"a".repeat(256),
    ] {
        let got = h.get_as(user, "/v1/patients").await;
        assert_eq!(got.status, 403, "{user}");
        assert_eq!(got.code(), "no_credential", "{user}");
    }
    assert_eq!(h.upstream_hits(), 0);

    // A token issued while carol had a key, used after ops removed it and reloaded.
    let token = format!("Bearer {}", h.token("carol"));
    assert_eq!(h.get_with_auth(&token, "/v1/patients").await.status, 200);
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    assert!(remove_user(&h.dir().join("keys.json"), &master, "carol").unwrap());
    assert_eq!(reload(&h).await, 200);
    let before = h.upstream_hits();
    let got = h.get_with_auth(&token, "/v1/patients").await;
    assert_eq!(got.status, 403);
    assert_eq!(got.code(), "no_credential");
    let got = h
        .send(
            Method::POST,
            "/v1/patients",
            &[("authorization", &token)],
            "{}",
        )
        .await;
    assert_eq!(got.status, 403);
    assert_eq!(h.upstream_hits(), before, "a removed key was still used");

    // A tampered store on reload is refused; the old one keeps serving.
    let path = h.dir().join("keys.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"au1\"", "\"evil.example\"")).unwrap();
    assert_eq!(reload(&h).await, 422);
    assert_eq!(h.get_as("alice", "/v1/patients").await.status, 200);
}
