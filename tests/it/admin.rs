//! The admin listener: its own port, its own token; purges, reload, key listing.

use crate::support::*;
use cliniko_gateway::credentials::ApiKey;
use http::Method;

async fn start() -> Harness {
    Harness::start(with_admin(Setup::default())).await
}

#[tokio::test]
async fn admin_needs_its_own_token_and_is_not_on_the_proxy_port() {
    let h = start().await;
    assert_eq!(admin(&h, Method::GET, "/admin/keys", None).await.0, 401);
    assert_eq!(
        admin(&h, Method::GET, "/admin/keys", Some("wrong")).await.0,
        401
    );
    // A user's JWT is not an admin token.
    let jwt = h.token("alice");
    assert_eq!(
        admin(&h, Method::GET, "/admin/keys", Some(&jwt)).await.0,
        401
    );
    let on_proxy = h.get_as("alice", "/admin/keys").await;
    assert_eq!(on_proxy.status, 404);
    let (status, keys) = admin(&h, Method::GET, "/admin/keys", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let text = keys.to_string();
    assert!(text.contains("alice") && text.contains("sha256:"));
    assert!(!text.contains("alicekey"), "a key was shown");
}

#[tokio::test]
async fn purge_all_one_users_credential_or_a_prefix() {
    let h = start().await;
    for user in ["alice", "carol"] {
        h.get_as(user, "/v1/practitioners").await;
        h.get_as(user, "/v1/businesses").await;
    }
    let (s, _) = admin(
        &h,
        Method::POST,
        "/admin/cache/purge?prefix=/v1/businesses",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(xcache(&h.get_as("alice", "/v1/businesses").await), "MISS");
    assert_eq!(xcache(&h.get_as("alice", "/v1/practitioners").await), "HIT");
    let (s, _) = admin(
        &h,
        Method::POST,
        "/admin/cache/purge?user=carol",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        xcache(&h.get_as("carol", "/v1/practitioners").await),
        "MISS"
    );
    assert_eq!(xcache(&h.get_as("alice", "/v1/practitioners").await), "HIT");
    let (s, _) = admin(
        &h,
        Method::POST,
        "/admin/cache/purge?all=true",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        xcache(&h.get_as("alice", "/v1/practitioners").await),
        "MISS"
    );
    let (s, v) = admin(
        &h,
        Method::POST,
        "/admin/cache/purge?all=true&user=alice",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_purge")));
}

#[tokio::test]
async fn reload_picks_up_new_users_and_refuses_a_broken_file() {
    let h = start().await;
    assert_eq!(h.get_as("erin", "/v1/patients").await.status, 403);
    let master = cliniko_gateway::config::parse_master_key(MASTER).unwrap();
    let store = h.dir().join("keys.json");
    add_key(
        &store,
        &master,
        "erin",
        &ApiKey::new(KEY_ALICE.into()),
        None,
    )
    .unwrap();
    let (s, v) = admin(&h, Method::POST, "/admin/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h.get_as("erin", "/v1/patients").await.status, 200);
    std::fs::write(&store, "garbage").unwrap();
    let (s, v) = admin(&h, Method::POST, "/admin/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("reload_failed"))
    );
    assert_eq!(
        h.get_as("erin", "/v1/patients?per_page=2").await.status,
        200,
        "old store kept"
    );
}
