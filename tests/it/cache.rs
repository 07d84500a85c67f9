//! The GET cache over real sockets: isolation between keys first, then hits, freshness,
//! single flight, invalidation, validators and bounds.

use crate::support::*;
use bytes::Bytes;
use cliniko_gateway::sandbox::{Fault, seeded_patient_id};
use http::Method;
use std::time::Duration;

fn two_accounts_on_au1(overrides: Vec<(&'static str, String)>) -> Setup {
    Setup {
        shards: vec![(
            "au1",
            vec![account(KEY_ALICE, "Alice"), account(KEY_DAVE, "Dave")],
        )],
        users: vec![("alice", KEY_ALICE), ("bob", KEY_ALICE), ("dave", KEY_DAVE)],
        overrides,
        ..Setup::default()
    }
}

#[tokio::test]
async fn different_keys_never_share_entries_even_under_concurrency() {
    let h = std::sync::Arc::new(Harness::start(two_accounts_on_au1(vec![])).await);
    let mut tasks = vec![];
    for i in 0..40 {
        let h = h.clone();
        let user = if i % 2 == 0 { "alice" } else { "dave" };
        tasks.push(tokio::spawn(async move {
            (user, h.get_as(user, "/v1/practitioners").await)
        }));
    }
    for t in tasks {
        let (user, got) = t.await.unwrap();
        assert_eq!(got.status, 200);
        let (own, other) = if user == "alice" {
            ("Alice", "Dave")
        } else {
            ("Dave", "Alice")
        };
        assert!(
            got.text().contains(own),
            "{user} did not get their own data"
        );
        assert!(!got.text().contains(other), "{user} saw {other}'s data");
    }
    // Each key fetched once; everything else was a hit on its own entry.
    assert_eq!(h.sandbox("au1").request_count(), 2);
}

#[tokio::test]
async fn users_sharing_a_key_share_entries_and_hits_carry_age() {
    let h = Harness::start(two_accounts_on_au1(vec![])).await;
    let a = h.get_as("alice", "/v1/practitioners").await;
    assert_eq!(xcache(&a), "MISS");
    let b = h.get_as("bob", "/v1/practitioners").await;
    assert_eq!(xcache(&b), "HIT");
    assert!(b.headers.contains_key("age"));
    assert_eq!(a.body, b.body);
    assert_eq!(h.sandbox("au1").request_count(), 1);
    // Links were rewritten once, before storing: the hit carries gateway links too.
    assert!(b.text().contains(&format!("{}/v1/practitioners/", h.base)));
}

#[tokio::test]
async fn uncached_paths_and_refused_callers_never_touch_the_cache() {
    let h = Harness::start(two_accounts_on_au1(vec![])).await;
    for _ in 0..2 {
        let got = h.get_as("alice", "/v1/invoices").await;
        assert_eq!(xcache(&got), "BYPASS");
    }
    assert_eq!(h.sandbox("au1").request_count(), 2);
    assert_eq!(h.get_as("alice", "/v1/practitioners").await.status, 200);
    let stranger = h.get_as("mallory", "/v1/practitioners").await;
    assert_eq!(stranger.status, 403);
    assert!(!stranger.headers.contains_key("x-cache"));
    let bad = h.get_with_auth("Bearer nope", "/v1/practitioners").await;
    assert_eq!(bad.status, 401);
    assert!(!bad.text().contains("Alice"));
    assert_eq!(h.sandbox("au1").request_count(), 3);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_send_one_request() {
    let h = std::sync::Arc::new(Harness::start(two_accounts_on_au1(vec![])).await);
    h.sandbox("au1")
        .set_fault("/v1/businesses", Fault::Delay(Duration::from_millis(300)));
    let mut tasks = vec![];
    for i in 0..100 {
        let h = h.clone();
        // alice and bob share one key, so they share one fetch too.
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        tasks.push(tokio::spawn(async move {
            h.get_as(user, "/v1/businesses").await
        }));
    }
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, 200);
        bodies.insert(got.body);
    }
    assert_eq!(bodies.len(), 1);
    assert_eq!(h.sandbox("au1").request_count(), 1);
}

#[tokio::test]
async fn upstream_errors_reach_every_waiter_and_are_not_cached() {
    let h = std::sync::Arc::new(Harness::start(two_accounts_on_au1(vec![])).await);
    h.sandbox("au1")
        .set_fault("/v1/businesses", Fault::Status(500, "boom".into()));
    for _ in 0..2 {
        let got = h.get_as("alice", "/v1/businesses").await;
        assert_eq!(got.status, 500);
    }
    assert_eq!(
        h.sandbox("au1").request_count(),
        2,
        "a 5xx must not be cached"
    );
    let s = two_accounts_on_au1(vec![("CLINIKO_GATEWAY__UPSTREAM__TIMEOUT", "1s".into())]);
    let h2 = std::sync::Arc::new(Harness::start(s).await);
    h2.sandbox("au1").set_fault("/v1/businesses", Fault::Stall);
    let mut tasks = vec![];
    for _ in 0..10 {
        let h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            h2.get_as("alice", "/v1/businesses").await
        }));
    }
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, 504);
        assert_eq!(got.code(), "upstream_timeout");
    }
    assert_eq!(
        h2.sandbox("au1").request_count(),
        1,
        "the waiters shared the one attempt"
    );
}

#[tokio::test]
async fn a_write_drops_the_resource_for_every_key() {
    let h = Harness::start(two_accounts_on_au1(vec![])).await;
    let id = seeded_patient_id(0, 7);
    let path = format!("/v1/patients/{id}");
    let before = h.get_as("alice", &path).await;
    assert_eq!(before.json()["first_name"], "Ada-Alice-7");
    assert_eq!(xcache(&h.get_as("alice", &path).await), "HIT");
    assert_eq!(
        xcache(&h.get_as("dave", "/v1/patients?per_page=1").await),
        "MISS"
    );
    assert_eq!(
        xcache(&h.get_as("dave", "/v1/patients?per_page=1").await),
        "HIT"
    );
    let auth = format!("Bearer {}", h.token("alice"));
    let patched = h
        .send(
            Method::PATCH,
            &path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            r#"{"first_name":"Grace"}"#,
        )
        .await;
    assert_eq!(patched.status, 200);
    let after = h.get_as("alice", &path).await;
    assert_eq!(xcache(&after), "MISS");
    assert_eq!(after.json()["first_name"], "Grace");
    assert_eq!(
        xcache(&h.get_as("dave", "/v1/patients?per_page=1").await),
        "MISS",
        "other keys' copies dropped"
    );
}

#[tokio::test]
async fn caller_cache_control_and_validators() {
    let h = Harness::start(two_accounts_on_au1(vec![])).await;
    let auth = format!("Bearer {}", h.token("alice"));
    let first = h.get_as("alice", "/v1/appointment_types").await;
    let etag = first.headers["etag"].to_str().unwrap().to_string();
    // no-cache: refetch and refresh.
    let got = h
        .get_as_with(
            "alice",
            "/v1/appointment_types",
            &[("cache-control", "no-cache")],
        )
        .await;
    assert_eq!(xcache(&got), "MISS");
    assert_eq!(h.sandbox("au1").request_count(), 2);
    // no-store: straight through.
    let got = h
        .get_as_with(
            "alice",
            "/v1/appointment_types",
            &[("cache-control", "no-store")],
        )
        .await;
    assert_eq!(xcache(&got), "BYPASS");
    assert_eq!(h.sandbox("au1").request_count(), 3);
    // A matching If-None-Match is answered 304 from memory.
    let got = h
        .get_as_with(
            "alice",
            "/v1/appointment_types",
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(got.status, 304);
    assert!(got.body.is_empty());
    assert_eq!(h.sandbox("au1").request_count(), 3);
    // HEAD is answered from the cached GET.
    let head = h
        .send(
            Method::HEAD,
            "/v1/appointment_types",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(xcache(&head), "HIT");
    assert_eq!(
        head.headers["content-length"],
        first.body.len().to_string().as_str()
    );
    assert_eq!(h.sandbox("au1").request_count(), 3);
}

#[tokio::test]
async fn stale_entries_with_an_etag_are_revalidated() {
    let rules = r#"[{prefix = "/v1/practitioners", ttl = "1s"}]"#.to_string();
    let h = Harness::start(two_accounts_on_au1(vec![(
        "CLINIKO_GATEWAY__CACHE__RULES",
        rules,
    )]))
    .await;
    assert_eq!(
        xcache(&h.get_as("alice", "/v1/practitioners").await),
        "MISS"
    );
    assert_eq!(xcache(&h.get_as("alice", "/v1/practitioners").await), "HIT");
    // Let the 1 s TTL run out (this waits on the cache's clock, not on another task).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = h.get_as("alice", "/v1/practitioners").await;
    assert_eq!(xcache(&again), "REVALIDATED");
    assert_eq!(again.status, 200);
    let seen = h.sandbox("au1").requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].headers.contains_key("if-none-match"));
    assert_eq!(xcache(&h.get_as("alice", "/v1/practitioners").await), "HIT");
}

#[tokio::test]
async fn the_byte_bound_holds_and_big_bodies_stream_uncached() {
    let h = Harness::start(two_accounts_on_au1(vec![
        ("CLINIKO_GATEWAY__CACHE__CAPACITY_BYTES", "320000".into()),
        ("CLINIKO_GATEWAY__CACHE__MAX_ENTRY_BYTES", "20000".into()),
        ("CLINIKO_GATEWAY__RATELIMIT__ENABLED", "false".into()),
    ]))
    .await;
    for n in 0..150 {
        let got = h
            .get_as("alice", &format!("/v1/patients?per_page=10&n={n}"))
            .await;
        assert_eq!(got.status, 200);
    }
    let cache = h.cache();
    // The store keeps 15/16 of the bound; the rest is for answers being read in.
    assert!(
        cache.weighted_size().await <= 300_000,
        "{}",
        cache.weighted_size().await
    );
    assert!(cache.entry_count().await > 0);
    assert!(
        cache
            .stats()
            .evictions
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    h.sandbox("au1")
        .set_fault("/v1/patients/export", Fault::Large(150_000));
    for _ in 0..2 {
        let got = h.get_as("alice", "/v1/patients/export").await;
        assert_eq!(got.status, 200);
        assert!(got.body.len() > 100_000);
        assert_eq!(xcache(&got), "MISS");
    }
    assert_eq!(
        h.sandbox("au1")
            .requests()
            .iter()
            .filter(|r| r.path() == "/v1/patients/export")
            .count(),
        2
    );
}

#[tokio::test]
async fn purges_by_everything_credential_and_prefix() {
    let h = Harness::start(two_accounts_on_au1(vec![])).await;
    for user in ["alice", "dave"] {
        h.get_as(user, "/v1/practitioners").await;
        h.get_as(user, "/v1/businesses").await;
    }
    let cache = h.cache();
    cache.purge_prefix("/v1/businesses");
    assert_eq!(xcache(&h.get_as("alice", "/v1/businesses").await), "MISS");
    assert_eq!(xcache(&h.get_as("alice", "/v1/practitioners").await), "HIT");
    cache.purge_credential(cache.credential_id(KEY_DAVE));
    assert_eq!(xcache(&h.get_as("dave", "/v1/practitioners").await), "MISS");
    assert_eq!(xcache(&h.get_as("alice", "/v1/practitioners").await), "HIT");
    cache.purge_all();
    assert_eq!(
        xcache(&h.get_as("alice", "/v1/practitioners").await),
        "MISS"
    );
}

#[tokio::test]
async fn a_get_with_a_body_on_a_cached_path_still_works() {
    let h = Harness::start(two_accounts_on_au1(vec![])).await;
    let auth = format!("Bearer {}", h.token("alice"));
    let got = h
        .send(
            Method::GET,
            "/v1/practitioners",
            &[("authorization", &auth), ("content-type", "text/plain")],
            "hello",
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = h.sandbox("au1").requests();
    assert!(seen[0].body.is_empty(), "the cache's fetch sends no body");
    assert!(
        !seen[0].headers.contains_key("content-length") || seen[0].headers["content-length"] == "0"
    );
}

#[tokio::test]
async fn nested_resources_are_not_cached_under_their_parent() {
    let h = Harness::start(two_accounts_on_au1(vec![])).await;
    let id = seeded_patient_id(0, 1);
    for _ in 0..2 {
        let got = h
            .get_as("alice", &format!("/v1/patients/{id}/appointments"))
            .await;
        assert_eq!(xcache(&got), "BYPASS");
    }
}

#[tokio::test]
async fn a_write_that_timed_out_still_drops_the_copies() {
    let h = Harness::start(two_accounts_on_au1(vec![(
        "CLINIKO_GATEWAY__UPSTREAM__TIMEOUT",
        "1s".into(),
    )]))
    .await;
    let path = format!("/v1/patients/{}", seeded_patient_id(0, 3));
    h.get_as("alice", &path).await;
    assert_eq!(xcache(&h.get_as("alice", &path).await), "HIT");
    // Cliniko may have applied a write it never answered: the cached copy must not outlive it.
    h.sandbox("au1")
        .set_fault(&path, Fault::Delay(Duration::from_secs(3)));
    let auth = format!("Bearer {}", h.token("alice"));
    let patched = h
        .send(
            Method::PATCH,
            &path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            r#"{"first_name":"X"}"#,
        )
        .await;
    assert_eq!(patched.status, 504);
    h.sandbox("au1").clear_fault(&path);
    assert_eq!(xcache(&h.get_as("alice", &path).await), "MISS");
}

#[tokio::test]
async fn entries_without_an_etag_expire_to_a_miss() {
    let rules = r#"[{prefix = "/v1/practitioners", ttl = "1s"}]"#.to_string();
    let h = Harness::start(two_accounts_on_au1(vec![(
        "CLINIKO_GATEWAY__CACHE__RULES",
        rules,
    )]))
    .await;
    h.sandbox("au1").set_fault(
        "/v1/practitioners",
        Fault::WithHeaders(
            200,
            vec![("content-type".into(), "application/json".into())],
            r#"{"practitioners":[]}"#.into(),
        ),
    );
    assert_eq!(
        xcache(&h.get_as("alice", "/v1/practitioners").await),
        "MISS"
    );
    assert_eq!(xcache(&h.get_as("alice", "/v1/practitioners").await), "HIT");
    // Let the 1 s TTL run out (the cache's clock, not another task).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = h.get_as("alice", "/v1/practitioners").await;
    assert_eq!(
        xcache(&again),
        "MISS",
        "no ETag: nothing to revalidate with"
    );
    let seen = h.sandbox("au1").requests();
    assert_eq!(seen.len(), 2);
    assert!(!seen[1].headers.contains_key("if-none-match"));
}

#[tokio::test]
async fn one_gzip_copy_serves_gzip_callers_as_is_and_identity_callers_decoded() {
    let h = Harness::start(Setup::default()).await;
    let path = "/v1/patients?per_page=50";
    let gzip = [("accept-encoding", "gzip")];
    let first = h.get_as_with("alice", path, &gzip).await;
    assert_eq!((first.status.as_u16(), xcache(&first)), (200, "MISS"));
    assert_eq!(first.headers["content-encoding"], "gzip");
    let plain = crate::compression::gunzip(&first.body);
    // An identity caller: a hit, decoded from the same copy, with its real length.
    let identity = h.get_as("alice", path).await;
    assert_eq!(xcache(&identity), "HIT");
    assert!(!identity.headers.contains_key("content-encoding"));
    assert_eq!(identity.headers["content-length"], plain.len().to_string());
    assert_eq!(identity.body, plain);
    // Another gzip caller: the stored bytes as they are.
    let again = h.get_as_with("alice", path, &gzip).await;
    assert_eq!(xcache(&again), "HIT");
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.headers["content-length"],
        first.body.len().to_string()
    );
    // HEAD: identity headers, the decoded length, no body.
    let auth = format!("Bearer {}", h.token("alice"));
    let head = h
        .send(
            Method::HEAD,
            path,
            &[("authorization", &auth), ("accept-encoding", "gzip")],
            Bytes::new(),
        )
        .await;
    assert_eq!(xcache(&head), "HIT");
    assert!(!head.headers.contains_key("content-encoding"));
    assert_eq!(head.headers["content-length"], plain.len().to_string());
    assert_eq!(h.upstream_hits(), 1);
    // What is charged is what is stored: the gzip copy, far under the page's length.
    let stored = h.cache().weighted_size().await;
    assert!(
        stored * 2 < plain.len() as u64,
        "{stored} vs {}",
        plain.len()
    );
}

#[tokio::test]
async fn without_compress_the_cache_keeps_the_identity_body() {
    let h = Harness::start(Setup {
        overrides: vec![("CLINIKO_GATEWAY__CACHE__COMPRESS", "false".into())],
        ..Setup::default()
    })
    .await;
    let path = "/v1/patients?per_page=50";
    let first = h.get_as("alice", path).await;
    let again = h
        .get_as_with("alice", path, &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(xcache(&again), "HIT");
    // Compressed on the way out by the compression layer instead.
    assert_eq!(again.headers["content-encoding"], "gzip");
    assert_eq!(crate::compression::gunzip(&again.body), first.body);
    let stored = h.cache().weighted_size().await;
    assert!(stored > first.body.len() as u64, "{stored}");
}
