//! Least privilege end to end: grants from `scope` strings, `roles` arrays and custom claims;
//! 403 `forbidden` naming the missing permission; nothing looked up, cached or sent for a
//! refused call; and one audit record per API request on target `audit`.

use crate::support::*;
use bytes::Bytes;
use http::Method;
use secrecy::SecretSlice;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const POLICY: &str = r#"
[policy]
claims = ["scope", "roles", "https://acme.example/perms"]
default = []
[policy.grants."cliniko:read"]
methods = ["GET", "HEAD"]
paths = ["/v1"]
[policy.grants."cliniko:appointments:write"]
methods = ["POST", "PATCH"]
paths = ["/v1/appointments", "/v1/individual_appointments"]
"#;

fn token_with(sub: &str, extra: Value) -> String {
    mint_hs(
        &SecretSlice::from(HMAC.as_bytes().to_vec()),
        jsonwebtoken::Algorithm::HS256,
        sub,
        Duration::from_secs(600),
        extra.as_object().unwrap().clone(),
    )
    .unwrap()
}

async fn call(h: &Harness, m: Method, path: &str, token: &str) -> Got {
    let auth = format!("Bearer {token}");
    let body = if m == Method::GET || m == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(b"{}")
    };
    h.send(
        m,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

async fn start() -> Harness {
    Harness::start(Setup {
        policy_toml: POLICY.into(),
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn grants_allow_and_everything_else_is_forbidden_before_cliniko() {
    let h = start().await;
    let reader = token_with("alice", json!({"scope": "openid cliniko:read"}));
    let booker = token_with("alice", json!({"roles": ["cliniko:appointments:write"]}));
    let custom = token_with(
        "alice",
        json!({"https://acme.example/perms": "cliniko:read"}),
    );
    let nothing = token_with("alice", json!({}));

    assert_eq!(
        call(&h, Method::GET, "/v1/patients", &reader).await.status,
        200
    );
    assert_eq!(
        call(&h, Method::GET, "/v1/practitioners", &custom)
            .await
            .status,
        200
    );
    let hits = h.upstream_hits();
    let cases = [
        (
            Method::PATCH,
            "/v1/patients/1",
            &reader,
            "PATCH /v1/patients",
        ),
        (
            Method::DELETE,
            "/v1/patients/1",
            &reader,
            "DELETE /v1/patients",
        ),
        (Method::POST, "/v1/patients", &reader, "POST /v1/patients"),
        (Method::GET, "/v1/patients", &booker, "GET /v1/patients"),
        (
            Method::PATCH,
            "/v1/patients/1",
            &booker,
            "PATCH /v1/patients",
        ),
        (
            Method::POST,
            "/v1/appointments_archive",
            &booker,
            "POST /v1/appointments_archive",
        ),
        (Method::GET, "/v1/patients", &nothing, "GET /v1/patients"),
        (
            Method::PATCH,
            "/v1/appointments/1",
            &custom,
            "PATCH /v1/appointments",
        ),
    ];
    for (m, path, tok, needed) in cases {
        let got = call(&h, m.clone(), path, tok).await;
        assert_eq!(got.status, 403, "{m} {path}: {}", got.text());
        assert_eq!(got.code(), "forbidden");
        let msg = got.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains(&format!("needs a grant allowing {needed}")),
            "{msg}"
        );
        assert!(
            !got.headers.contains_key("x-cache"),
            "a refused call touched the cache"
        );
    }
    assert_eq!(h.upstream_hits(), hits, "a forbidden call reached Cliniko");
    // The booker may write appointments (the stand-in answers; the point is it got there).
    let got = call(&h, Method::POST, "/v1/individual_appointments", &booker).await;
    assert_ne!(got.status, 403, "{}", got.text());
    assert_eq!(h.upstream_hits(), hits + 1);
}

#[tokio::test]
async fn the_policy_runs_before_the_key_store_and_the_cache() {
    let h = start().await;
    // bob shares alice's key; alice's read fills the cache.
    let alice = token_with("alice", json!({"scope": "cliniko:read"}));
    assert_eq!(
        call(&h, Method::GET, "/v1/practitioners", &alice)
            .await
            .status,
        200
    );
    let again = call(&h, Method::GET, "/v1/practitioners", &alice).await;
    assert_eq!(again.headers["x-cache"], "HIT");
    let bob = token_with("bob", json!({"scope": "openid"}));
    let got = call(&h, Method::GET, "/v1/practitioners", &bob).await;
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (403, "forbidden")
    );
    // An unknown user without a grant is refused by the policy, before any key lookup.
    let mallory = token_with("mallory", json!({}));
    let got = call(&h, Method::GET, "/v1/patients", &mallory).await;
    assert_eq!(got.code(), "forbidden");
    let mallory = token_with("mallory", json!({"scope": "cliniko:read"}));
    let got = call(&h, Method::GET, "/v1/patients", &mallory).await;
    assert_eq!(got.code(), "no_credential");
}

#[tokio::test]
async fn a_configured_default_applies_to_tokens_without_the_claim() {
    let h = Harness::start(Setup {
        policy_toml: POLICY.replace("default = []", "default = [\"cliniko:read\"]"),
        ..Setup::default()
    })
    .await;
    assert_eq!(h.get_as("alice", "/v1/patients").await.status, 200);
    let got = call(&h, Method::PATCH, "/v1/patients/1", &h.token("alice")).await;
    assert_eq!(got.code(), "forbidden");
}

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

thread_local! {
    /// Where this thread's audit and access records go while a test captures them.
    static SINK: std::cell::RefCell<Option<Lines>> = const { std::cell::RefCell::new(None) };
}

/// Writes a record into the capturing test's sink, if this thread has one.
struct ThreadSink;

impl std::io::Write for ThreadSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        SINK.with(|s| {
            if let Some(l) = s.borrow().as_ref() {
                l.0.lock().unwrap().extend_from_slice(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops the capture when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        SINK.with(|s| s.borrow_mut().take());
    }
}

/// JSON audit and access records emitted on this thread while the guard lives (callers pick
/// the target they want). One global subscriber, installed once: a per-test `set_default`
/// races with other threads over tracing's callsite interest cache, and then loses records.
fn capture() -> (Lines, Capturing) {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter("audit=info,access=info")
            .with_writer(|| ThreadSink)
            .finish();
        tracing::subscriber::set_global_default(sub).expect("no other global subscriber");
    });
    let lines = Lines::default();
    SINK.with(|s| *s.borrow_mut() = Some(lines.clone()));
    (lines, Capturing)
}

/// The current-thread test runtime runs the gateway's tasks on this thread, so a
/// thread-local subscriber sees their records.
#[tokio::test]
async fn every_api_request_leaves_one_audit_record() {
    let (lines, _guard) = capture();
    let h = start().await;
    let id = cliniko_gateway::sandbox::seeded_patient_id(0, 1);
    let reader = token_with(
        "alice",
        json!({"scope": "cliniko:read", "azp": "billing-app"}),
    );
    let path = format!("/v1/patients/{id}/appointments?q[]=last_name:~~Zebediah%25");
    let first = call(&h, Method::GET, &path, &reader).await;
    call(&h, Method::PATCH, &format!("/v1/patients/{id}"), &reader).await;
    h.get_with_auth("Bearer junk", "/v1/businesses").await;
    h.send(Method::GET, "/healthz", &[], Bytes::new()).await;
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["target"] == "audit")
        .collect();
    assert_eq!(recs.len(), 3, "{text}");
    let ok = &recs[0];
    assert_eq!(ok["user"], "alice");
    assert_eq!(ok["app"], "billing-app");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["resource"], "patients");
    assert_eq!(ok["resource_id"], id.to_string());
    assert_eq!(ok["sub_resource"], "appointments");
    // The stand-in has no such nested route: its own 404 passes through and is recorded.
    assert_eq!(ok["status"], first.status.as_u16());
    assert!(
        ok.get("code").is_none(),
        "Cliniko's answer is not a gateway error"
    );
    assert!(ok["cache"].is_string());
    assert!(ok["request_id"].as_str().unwrap().len() > 8);
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));
    let denied = &recs[1];
    assert_eq!(
        (denied["status"].as_u64(), denied["code"].as_str()),
        (Some(403), Some("forbidden"))
    );
    assert_eq!(denied["method"], "PATCH");
    let anon = &recs[2];
    assert_eq!(anon["status"], 401);
    assert!(anon.get("user").is_none());
    assert_eq!(anon["resource"], "businesses");
    assert!(!text.contains("Zebediah") && !text.contains("eyJ") && !text.contains("junk"));
}

/// Issue 13 (6): the audit and access lines are keyed by the gateway's own id, whatever id the
/// caller sends (two users and an anonymous caller reusing one id stay three records), with
/// the caller's id beside it and the client address; behind a trusted proxy, the address it
/// forwarded, and from anyone else, never a forwarded claim.
#[tokio::test]
async fn audit_and_access_lines_carry_the_gateways_id_and_the_client_address() {
    let (lines, _guard) = capture();
    let h = Harness::start(Setup {
        policy_toml: POLICY.into(),
        // Loopback is the trusted proxy here, so its X-Forwarded-For counts.
        overrides: vec![(
            "CLINIKO_GATEWAY__SERVER__TRUSTED_PROXIES",
            "[\"127.0.0.0/8\"]".into(),
        )],
        ..Setup::default()
    })
    .await;
    let reader = |u: &str| format!("Bearer {}", token_with(u, json!({"scope": "cliniko:read"})));
    let same_id = [("x-request-id", "shared-id")];
    for auth in [reader("alice"), reader("carol"), "Bearer junk".into()] {
        let mut hs = vec![("authorization", auth.as_str()), same_id[0]];
        hs.push(("x-forwarded-for", "192.0.2.1, 198.51.100.7"));
        let got = h
            .send(Method::GET, "/v1/businesses", &hs, Bytes::new())
            .await;
        // The caller still sees its own id.
        assert_eq!(got.headers["x-request-id"], "shared-id");
    }
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for target in ["audit", "access"] {
        let of: Vec<&Value> = recs.iter().filter(|v| v["target"] == target).collect();
        assert_eq!(of.len(), 3, "{target}: {text}");
        let ids: std::collections::HashSet<&str> = of
            .iter()
            .map(|v| v["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 3, "one gateway id per request: {text}");
        for v in &of {
            assert_ne!(v["request_id"], "shared-id");
            assert_eq!(v["client_request_id"], "shared-id");
            // The right-most hop the trusted proxy vouches for, not the caller's own claim.
            assert_eq!(v["client"], "198.51.100.7", "{v}");
        }
    }
}

#[tokio::test]
async fn without_a_trusted_proxy_the_client_is_the_peer() {
    let (lines, _guard) = capture();
    let h = start().await;
    let auth = format!(
        "Bearer {}",
        token_with("alice", json!({"scope": "cliniko:read"}))
    );
    let hs = [
        ("authorization", auth.as_str()),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    h.send(Method::GET, "/v1/businesses", &hs, Bytes::new())
        .await;
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let rec: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["target"] == "audit")
        .unwrap();
    assert_eq!(rec["client"], "127.0.0.1", "{text}");
    assert!(rec.get("client_request_id").is_none());
}
