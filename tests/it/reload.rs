//! Config reload without a restart: policies, rate limits, cache rules and JWT keys swap in on
//! reload; a bad file changes nothing; restart-only sections are reported, not applied.

use crate::support::*;
use bytes::Bytes;
use cliniko_gateway::auth::mint::mint;
use cliniko_gateway::reload::ReloadError;
use cliniko_gateway::sandbox::{Fault, SigningKeyPair, ec_keypair, seeded_patient_id};
use http::Method;
use http_body_util::Full;
use secrecy::SecretSlice;
use std::time::Duration;

fn with_sections(extra: &str) -> Setup {
    Setup {
        policy_toml: format!("{ALLOW_ALL_POLICY}{extra}"),
        ..Setup::default()
    }
}

async fn metrics_text(h: &Harness) -> String {
    h.gateway().metrics.render().await.unwrap()
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_request_on_the_same_connection() {
    let h = Harness::start(Setup::default()).await;
    assert_eq!(h.get_as("alice", "/v1/patients").await.status, 200);
    h.edit_config(|t| {
        t.replace(
            "paths = [\"/v1\"]",
            "paths = [\"/v1/practitioners\", \"/v1/user\"]",
        )
    });
    let r = h.gateway().reload().await.unwrap();
    assert_eq!(r.changed, vec!["policy"]);
    assert!(r.restart_needed.is_empty());
    // The harness client keeps its connection: the swap reaches open connections too.
    let denied = h.get_as("alice", "/v1/patients").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.code(), "forbidden");
    assert_eq!(h.get_as("alice", "/v1/practitioners").await.status, 200);
    assert!(
        metrics_text(&h)
            .await
            .contains(r#"cliniko_gateway_config_reloads_total{trigger="signal",result="ok"} 1"#)
    );
}

#[tokio::test]
async fn a_bad_config_is_refused_and_the_previous_one_keeps_serving() {
    let h = Harness::start(Setup::default()).await;
    let good = std::fs::read_to_string(h.config_path()).unwrap();
    for (bad, field) in [
        (
            good.replace("paths = [\"/v1\"]", "paths = [\"/v1\"]\nmethods_typo = 1"),
            "policy",
        ),
        (
            format!("{good}\n[cache]\ncapacity_bytes = \"lots\"\n"),
            "cache.capacity_bytes",
        ),
        (format!("{good}\n[[[ not toml"), "(file)"),
    ] {
        std::fs::write(h.config_path(), &bad).unwrap();
        match h.gateway().reload().await {
            Err(ReloadError::Config(e)) => {
                assert!(e.field.starts_with(field), "{field}: got {}", e.field)
            }
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
        assert_eq!(h.get_as("alice", "/v1/patients").await.status, 200);
    }
    assert!(
        metrics_text(&h).await.contains(
            r#"cliniko_gateway_config_reloads_total{trigger="signal",result="failed"} 3"#
        )
    );
    // Fixed again: the next reload applies.
    std::fs::write(h.config_path(), good).unwrap();
    assert!(h.gateway().reload().await.is_ok());
}

#[tokio::test]
async fn a_rotated_hmac_secret_file_swaps_the_jwt_keys() {
    let h = Harness::start(Setup {
        auth_toml: "hmac_secret_file = \"hmac.txt\"".into(),
        files: vec![("hmac.txt", HMAC.into())],
        ..Setup::default()
    })
    .await;
    assert_eq!(h.get_as("alice", "/v1/user").await.status, 200);
    let new_secret = "a-brand-new-hmac-secret-of-40-characters";
    std::fs::write(h.dir().join("hmac.txt"), new_secret).unwrap();
    let r = h.gateway().reload().await.unwrap();
    assert_eq!(r.changed, vec!["auth"]);
    let old = h.get_as("alice", "/v1/user").await;
    assert_eq!(old.status, 401, "a token signed with the old secret");
    let fresh = mint_hs(
        &SecretSlice::from(new_secret.as_bytes().to_vec()),
        jsonwebtoken::Algorithm::HS256,
        "alice",
        Duration::from_secs(600),
        serde_json::Map::new(),
    )
    .unwrap();
    let got = h
        .get_with_auth(&format!("Bearer {fresh}"), "/v1/user")
        .await;
    assert_eq!(got.status, 200);
}

const USER_LIMIT_1: &str = r#"
[ratelimit]
max_wait = "0s"
[ratelimit.key]
rate = 1
period = "1h"
burst = 3
[ratelimit.user]
default = { rate = 1, period = "1h", burst = 1 }
"#;

#[tokio::test]
async fn a_new_user_limit_applies_and_the_key_budget_keeps_its_state() {
    let h = Harness::start(with_sections(USER_LIMIT_1)).await;
    assert_eq!(h.get_as("alice", "/v1/user").await.status, 200);
    let refused = h.get_as("alice", "/v1/user").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["limit"], "user");
    // A larger per-user limit; the key budget (burst 3, one already spent) is unchanged.
    h.edit_config(|t| {
        t.replace(
            "default = { rate = 1, period = \"1h\", burst = 1 }",
            "default = { rate = 100, period = \"1h\", burst = 100 }",
        )
    });
    let r = h.gateway().reload().await.unwrap();
    assert_eq!(r.changed, vec!["ratelimit"]);
    assert_eq!(h.get_as("alice", "/v1/user").await.status, 200);
    assert_eq!(h.get_as("bob", "/v1/user").await.status, 200);
    // Three went to Cliniko on alice's key: the kept budget is spent. A rebuilt one would
    // have let a fresh burst through.
    let over = h.get_as("alice", "/v1/user").await;
    assert_eq!(over.status, 429);
    assert_eq!(over.json()["error"]["limit"], "key");
    let refusals = metrics_text(&h).await;
    assert!(
        refusals.contains(r#"cliniko_gateway_ratelimit_refusals_total{limit="user"} 1"#),
        "counters carry on across the reload:\n{refusals}"
    );
}

#[tokio::test]
async fn cache_counters_carry_over_when_caching_is_turned_off_and_on_again() {
    let h = Harness::start(with_sections(
        "[cache]\nrules = [{ prefix = \"/v1/patients\", ttl = \"60s\" }]\n",
    ))
    .await;
    assert_eq!(h.get_as("alice", "/v1/patients").await.status, 200);
    assert_eq!(xcache(&h.get_as("alice", "/v1/patients").await), "HIT");
    h.edit_config(|t| t.replace("[cache]\n", "[cache]\nenabled = false\n"));
    assert_eq!(h.gateway().reload().await.unwrap().changed, vec!["cache"]);
    h.edit_config(|t| t.replace("enabled = false\n", ""));
    assert_eq!(h.gateway().reload().await.unwrap().changed, vec!["cache"]);
    let text = metrics_text(&h).await;
    assert!(
        text.contains(r#"cliniko_gateway_cache_lookups_total{result="hit"} 1"#),
        "the hit from before caching was off is still counted:\n{text}"
    );
}

#[tokio::test]
async fn a_new_cache_ttl_applies_and_scrapes_follow_the_new_cache() {
    let h = Harness::start(with_sections(
        "[cache]\nrules = [{ prefix = \"/v1/patients\", ttl = \"60s\" }]\n",
    ))
    .await;
    let first = h.get_as("alice", "/v1/patients").await;
    assert_eq!(first.status, 200);
    assert_eq!(xcache(&h.get_as("alice", "/v1/patients").await), "HIT");
    h.edit_config(|t| t.replace("ttl = \"60s\"", "ttl = \"0s\""));
    assert_eq!(h.gateway().reload().await.unwrap().changed, vec!["cache"]);
    let before = h.upstream_hits();
    let after = h.get_as("alice", "/v1/patients").await;
    assert_eq!(after.status, 200);
    assert_ne!(xcache(&after), "HIT");
    assert_eq!(
        h.upstream_hits(),
        before + 1,
        "no longer cached: it went to Cliniko"
    );
    let text = metrics_text(&h).await;
    assert!(
        text.contains(r#"cliniko_gateway_cache_lookups_total{result="hit"} 1"#),
        "the hit before the reload is still counted:\n{text}"
    );
    assert!(text.contains("cliniko_gateway_cache_entries 0"), "{text}");
}

#[tokio::test]
async fn restart_only_sections_are_reported_and_not_applied() {
    let h = Harness::start(with_admin(Setup::default())).await;
    h.edit_config(|t| {
        t.replace("[server]\n", "[server]\nmax_body_bytes = 10\n")
            .replace("format = \"text\"", "format = \"json\"")
    });
    let (status, body) = admin(&h, Method::POST, "/admin/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["restart_needed"], serde_json::json!(["server", "log"]));
    assert_eq!(body["changed"], serde_json::json!([]));
    assert_eq!(body["users"], 3);
    // The running limit is still the old one (a 10-byte limit would refuse this).
    let auth = format!("Bearer {}", h.token("alice"));
    let big = h
        .send(
            Method::POST,
            "/v1/patients",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            "{\"first_name\":\"Ann\"}",
        )
        .await;
    assert_ne!(big.status, 413);
    assert!(
        metrics_text(&h)
            .await
            .contains("cliniko_gateway_config_restart_pending 1")
    );
}

/// One reload that changes every reloadable section but `[redis]` reports each of them, in the
/// order the reloader lists them, and applies them (the policy's and CORS's effect checked).
#[tokio::test]
async fn a_reload_changing_many_sections_reports_each_in_order() {
    let h = Harness::start(Setup::default()).await;
    let app = "https://app.example.test";
    h.edit_config(|t| {
        let t = t
            .replace("paths = [\"/v1\"]", "paths = [\"/v1/patients\"]")
            .replace(
                "hmac_algorithms = [\"HS256\"]",
                "hmac_algorithms = [\"HS256\"]\nleeway = \"10s\"",
            );
        format!(
            "{t}\n[cors]\nallowed_origins = [\"{app}\"]\n\
             [cache]\nrules = [{{ prefix = \"/v1/patients\", ttl = \"60s\" }}]\n\
             [ratelimit.user]\ndefault = {{ rate = 1000, period = \"1s\", burst = 1000 }}\n\
             [upstream.retries]\nthrottled = false\n"
        )
    });
    let r = h.gateway().reload().await.unwrap();
    assert_eq!(
        r.changed,
        vec![
            "auth",
            "policy",
            "cors",
            "cache",
            "ratelimit",
            "upstream.retries"
        ]
    );
    assert!(r.restart_needed.is_empty(), "{:?}", r.restart_needed);
    assert_eq!(h.get_as("alice", "/v1/practitioners").await.status, 403);
    let got = h
        .get_as_with("alice", "/v1/patients", &[("origin", app)])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["access-control-allow-origin"], app);
}

/// `[upstream.retries]` sits in a restart-only section but is itself reloadable.
#[tokio::test]
async fn a_new_retry_policy_applies_without_a_restart() {
    let h = Harness::start(Setup::default()).await;
    let throttled = Fault::WithHeaders(429, vec![("retry-after".into(), "1".into())], "".into());
    h.sandbox("au1").set_fault("/v1/patients", throttled);
    h.edit_config(|t| format!("{t}\n[upstream.retries]\nthrottled = false\n"));
    let r = h.gateway().reload().await.unwrap();
    assert_eq!(r.changed, vec!["upstream.retries"]);
    assert!(r.restart_needed.is_empty(), "{:?}", r.restart_needed);
    // The default policy would resend this GET after Cliniko's second.
    assert_eq!(h.get_as("alice", "/v1/patients").await.status, 429);
    assert_eq!(h.sandbox("au1").requests().len(), 1, "not resent");
}

#[tokio::test]
async fn a_changed_config_file_is_picked_up_without_a_signal() {
    let h = Harness::start(Setup {
        overrides: vec![("CLINIKO_GATEWAY__KEYSTORE__WATCH_INTERVAL", "50ms".into())],
        ..Setup::default()
    })
    .await;
    assert_eq!(h.get_as("alice", "/v1/patients").await.status, 200);
    h.edit_config(|t| t.replace("paths = [\"/v1\"]", "paths = [\"/v1/user\"]"));
    // Poll what a caller sees, with a deadline; the watcher checks every 50 ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if h.get_as("alice", "/v1/patients").await.status == 403 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed file was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics_text(&h)
            .await
            .contains(r#"cliniko_gateway_config_reloads_total{trigger="file",result="ok"} 1"#)
    );
}

fn es256(kp: &SigningKeyPair, sub: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(kp.private_pem.as_bytes()).unwrap();
    mint(
        &key,
        jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        sub,
        Duration::from_secs(600),
        serde_json::Map::new(),
    )
    .unwrap()
}

async fn status_with(h: &Harness, token: &str) -> u16 {
    h.get_with_auth(&format!("Bearer {token}"), "/v1/user")
        .await
        .status
        .as_u16()
}

/// Polls what a caller sees until `want`, with a deadline (the watcher checks every 50 ms).
async fn until_status(h: &Harness, token: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status_with(h, token).await != want {
        assert!(tokio::time::Instant::now() < deadline, "never got {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const TWO_PEM_KEYS: &str = "[[auth.public_keys]]\nfile = \"a.pem\"\nalgorithms = [\"ES256\"]\n[[auth.public_keys]]\nfile = \"b.pem\"\nalgorithms = [\"ES256\"]\n";

/// Two ES256 public keys in `a.pem` and `b.pem`.
fn two_pem_keys(
    a: &SigningKeyPair,
    b: &SigningKeyPair,
    overrides: Vec<(&'static str, String)>,
) -> Setup {
    Setup {
        auth_toml: TWO_PEM_KEYS.into(),
        files: vec![
            ("a.pem", a.public_pem.clone()),
            ("b.pem", b.public_pem.clone()),
        ],
        overrides,
        ..Setup::default()
    }
}

#[tokio::test]
async fn a_pem_key_rotated_in_place_is_picked_up() {
    let (a, b) = (ec_keypair().unwrap(), ec_keypair().unwrap());
    let h = Harness::start(two_pem_keys(&a, &b, vec![])).await;
    assert_eq!(status_with(&h, &es256(&a, "alice")).await, 200);
    // Same path, new key: the config text does not change at all.
    let a2 = ec_keypair().unwrap();
    std::fs::write(h.dir().join("a.pem"), &a2.public_pem).unwrap();
    let r = h.gateway().reload().await.unwrap();
    assert_eq!(r.changed, vec!["auth"]);
    assert_eq!(
        status_with(&h, &es256(&a, "alice")).await,
        401,
        "the retired key"
    );
    assert_eq!(status_with(&h, &es256(&a2, "alice")).await, 200);
    assert_eq!(status_with(&h, &es256(&b, "alice")).await, 200);
}

#[tokio::test]
async fn a_key_file_removed_with_its_config_entry_is_noticed_by_the_watcher() {
    let (a, b) = (ec_keypair().unwrap(), ec_keypair().unwrap());
    let watch = ("CLINIKO_GATEWAY__KEYSTORE__WATCH_INTERVAL", "50ms".into());
    let h = Harness::start(two_pem_keys(&a, &b, vec![watch])).await;
    let retired = es256(&b, "alice");
    assert_eq!(status_with(&h, &retired).await, 200);
    h.edit_config(|t| {
        t.replace(
            "[[auth.public_keys]]\nfile = \"b.pem\"\nalgorithms = [\"ES256\"]\n",
            "",
        )
    });
    std::fs::remove_file(h.dir().join("b.pem")).unwrap();
    until_status(&h, &retired, 401).await;
    assert_eq!(status_with(&h, &es256(&a, "alice")).await, 200);
}

const KEY_BURST_2: &str = r#"
[ratelimit]
max_wait = "0s"
[ratelimit.key]
rate = 1
period = "1h"
burst = 2
[ratelimit.user]
enabled = false
"#;

#[tokio::test]
async fn a_new_key_quota_applies_from_where_each_key_stands() {
    let h = Harness::start(with_sections(KEY_BURST_2)).await;
    assert_eq!(h.get_as("alice", "/v1/user").await.status, 200);
    assert_eq!(h.get_as("bob", "/v1/user").await.status, 200);
    assert_eq!(h.get_as("alice", "/v1/user").await.status, 429);
    // The budget itself changes (a higher rate, a longer wait): its state must carry over.
    h.edit_config(|t| {
        t.replace("rate = 1\nperiod = \"1h\"", "rate = 2\nperiod = \"1h\"")
            .replace("max_wait = \"0s\"", "max_wait = \"10ms\"")
    });
    assert_eq!(
        h.gateway().reload().await.unwrap().changed,
        vec!["ratelimit"]
    );
    let after = h.get_as("alice", "/v1/user").await;
    assert_eq!(
        after.status, 429,
        "a fresh burst would have let this through"
    );
    assert_eq!(after.json()["error"]["limit"], "key");
}

#[tokio::test]
async fn a_write_in_flight_across_a_cache_swap_still_invalidates_the_new_cache() {
    let h = Harness::start(with_sections(
        "[cache]\nrules = [{ prefix = \"/v1/patients\", ttl = \"60s\" }]\n",
    ))
    .await;
    let path = format!("/v1/patients/{}", seeded_patient_id(0, 1));
    h.sandbox("au1")
        .set_fault(&path, Fault::Delay(Duration::from_millis(400)));
    let auth = format!("Bearer {}", h.token("alice"));
    let (url, client) = (format!("{}{path}", h.base), h.client.clone());
    let write = tokio::spawn(async move {
        let req = http::Request::builder()
            .method(Method::PATCH)
            .uri(url)
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"first_name\":\"Zed\"}")))
            .unwrap();
        client.request(req).await.unwrap().status()
    });
    // The write has reached Cliniko (and is held there) before the cache is swapped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h
        .sandbox("au1")
        .requests()
        .iter()
        .any(|r| r.method == "PATCH")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.edit_config(|t| t.replace("ttl = \"60s\"", "ttl = \"30s\""));
    assert_eq!(h.gateway().reload().await.unwrap().changed, vec!["cache"]);
    // A read on the new stack fills the new cache while the write is still in flight.
    assert_eq!(h.get_as("alice", &path).await.status, 200);
    assert_eq!(write.await.unwrap(), 200);
    let next = h.get_as("alice", &path).await;
    assert_ne!(
        xcache(&next),
        "HIT",
        "the write on the old stack invalidated the new cache"
    );
}

#[tokio::test]
async fn admin_purges_reach_the_cache_a_reload_swapped_in() {
    let h = Harness::start(with_admin(Setup {
        policy_toml: format!(
            "{ALLOW_ALL_POLICY}[cache]\nrules = [{{ prefix = \"/v1/patients\", ttl = \"60s\" }}]\n"
        ),
        ..Setup::default()
    }))
    .await;
    h.edit_config(|t| t.replace("ttl = \"60s\"", "ttl = \"120s\""));
    assert_eq!(h.gateway().reload().await.unwrap().changed, vec!["cache"]);
    h.get_as("alice", "/v1/patients").await;
    assert_eq!(xcache(&h.get_as("alice", "/v1/patients").await), "HIT");
    let (status, _) = admin(
        &h,
        Method::POST,
        "/admin/cache/purge?all=true",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(
        xcache(&h.get_as("alice", "/v1/patients").await),
        "HIT",
        "the purge emptied the cache now serving, not the one the admin started with"
    );
}

#[tokio::test]
async fn a_new_jwks_must_answer_before_it_is_swapped_in() {
    let h = Harness::start(Setup::default()).await;
    let idp = ec_keypair().unwrap();
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(idp.private_pem.as_bytes()).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, jsonwebtoken::Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    h.sandbox("au1")
        .set_jwks(serde_json::json!({"keys": [serde_json::to_value(jwk).unwrap()]}));
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = mint(
        &enc,
        header,
        "alice",
        Duration::from_secs(600),
        serde_json::Map::new(),
    )
    .unwrap();
    let with_jwks = |url: &str| {
        let url = url.to_string();
        move |t: String| {
            t.replace(
                "hmac_algorithms = [\"HS256\"]\n",
                &format!("hmac_algorithms = [\"HS256\"]\n[auth.jwks]\nurl = \"{url}\"\nalgorithms = [\"ES256\"]\ntimeout = \"2s\"\n"),
            )
        }
    };
    let good = std::fs::read_to_string(h.config_path()).unwrap();
    // Nothing listens there: refused, the old verifier keeps serving, still ready.
    h.edit_config(with_jwks("https://localhost:1/.well-known/jwks.json"));
    match h.gateway().reload().await {
        Err(ReloadError::Config(e)) => assert_eq!(e.field, "auth.jwks.url"),
        other => panic!("expected the JWKS to be refused, got {other:?}"),
    }
    assert_eq!(h.get_as("alice", "/v1/user").await.status, 200);
    assert_eq!(status_with(&h, &token).await, 401);
    let ready = h.send(Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, 200);
    // The identity provider's real key set: swapped in, ready, and its tokens verify.
    std::fs::write(h.config_path(), good).unwrap();
    let url = format!(
        "https://localhost:{}/.well-known/jwks.json",
        h.sandbox("au1").addr().port()
    );
    h.edit_config(with_jwks(&url));
    assert_eq!(h.gateway().reload().await.unwrap().changed, vec!["auth"]);
    assert_eq!(status_with(&h, &token).await, 200);
    assert_eq!(
        h.get_as("alice", "/v1/user").await.status,
        200,
        "HMAC still on"
    );
    let ready = h.send(Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, 200);
    // Fetch counters span the verifiers: the refused attempt's failure is still counted.
    let text = metrics_text(&h).await;
    for line in [
        r#"cliniko_gateway_jwks_refreshes_total{result="ok"} 1"#,
        r#"cliniko_gateway_jwks_refreshes_total{result="failed"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}

/// The Redis keys under `prefix` (through the redis crate's own client).
fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut con)
        .unwrap()
}

#[tokio::test]
async fn a_changed_redis_section_rebuilds_the_key_budgets_and_moves_the_cache_bus() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let h = Harness::start(Setup::default()).await;
    let bus = h.gateway().cache_bus.clone();
    assert_eq!(bus.subscribed(), None, "no Redis, no bus");
    assert_eq!(h.get_as("alice", "/v1/user").await.status, 200);
    h.edit_config(|t| format!("{t}[redis]\nurl = \"{}\"\nprefix = \"gw-one\"\n", redis.url));
    assert_eq!(h.gateway().reload().await.unwrap().changed, vec!["redis"]);
    assert_eq!(h.get_as("alice", "/v1/user").await.status, 200);
    assert_eq!(
        redis_keys(&redis.url, "gw-one").len(),
        1,
        "decided in Redis"
    );
    until_subscribed(&bus).await;
    h.edit_config(|t| t.replace("gw-one", "gw-two"));
    assert_eq!(h.gateway().reload().await.unwrap().changed, vec!["redis"]);
    assert_eq!(h.get_as("alice", "/v1/user").await.status, 200);
    assert_eq!(redis_keys(&redis.url, "gw-two").len(), 1, "the new prefix");
    // The bus moved to the new channel, and cleared once there (it may have missed some).
    until_subscribed(&bus).await;
    let mut con = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query(&mut con)
            .unwrap();
        if channels == ["gw-two:cache"] {
            break;
        }
        // The old link's connection closes as its task ends.
        assert!(std::time::Instant::now() < deadline, "{channels:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let clears = &bus.stats().resubscribe_clears;
    assert_eq!(clears.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Without [redis] again: the bus stops.
    h.edit_config(|t| t.split("[redis]").next().unwrap().to_string());
    assert_eq!(h.gateway().reload().await.unwrap().changed, vec!["redis"]);
    assert_eq!(bus.subscribed(), None);
}

async fn until_subscribed(bus: &cliniko_gateway::cache::CacheBus) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bus.subscribed() != Some(true) {
        assert!(std::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
