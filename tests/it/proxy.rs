//! The core request path, end to end over real sockets.

use crate::support::*;
use base64::Engine;
use bytes::Bytes;
use cliniko_gateway::sandbox::Fault;
use http::Method;

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

#[tokio::test]
async fn happy_path_injects_key_and_strips_caller_credentials() {
    let h = Harness::start(Setup::default()).await;
    let auth = format!("Bearer {}", h.token("alice"));
    let got = h
        .send(
            Method::GET,
            "/v1/patients?per_page=5",
            &[
                ("authorization", &auth),
                ("cookie", "session=caller-cookie"),
                ("x-forwarded-host", "evil.example"),
                ("user-agent", "caller-agent/1.0"),
                ("x-request-id", "caller-req-42"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.headers["x-request-id"], "caller-req-42");
    assert!(got.text().contains("Alice"));
    let seen = h.sandbox("au1").requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.path_and_query, "/v1/patients?per_page=5");
    assert_eq!(r.headers["authorization"], basic(KEY_ALICE).as_str());
    assert_eq!(
        r.headers["user-agent"],
        "Gateway Tests (tests@example.invalid)"
    );
    assert_eq!(r.headers["accept"], "application/json");
    assert_eq!(r.headers["x-request-id"], "caller-req-42");
    assert!(!r.headers.contains_key("cookie"));
    assert!(!r.headers.contains_key("x-forwarded-host"));
    let all: String = format!("{:?}", r.headers);
    assert!(
        !all.contains("Bearer"),
        "the caller's token reached Cliniko"
    );
}

#[tokio::test]
async fn request_id_is_created_when_absent_or_unsafe() {
    let h = Harness::start(Setup::default()).await;
    let got = h.get_as("alice", "/v1/patients").await;
    let id = got.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(
        h.sandbox("au1").requests()[0].headers["x-request-id"],
        id.as_str()
    );
    let auth = format!("Bearer {}", h.token("alice"));
    let got = h
        .send(
            Method::GET,
            "/v1/patients",
            &[("authorization", &auth), ("x-request-id", "a b\"c")],
            Bytes::new(),
        )
        .await;
    assert_ne!(got.headers["x-request-id"], "a b\"c");
}

#[tokio::test]
async fn unknown_user_is_403_and_nothing_goes_upstream() {
    let h = Harness::start(Setup::default()).await;
    let got = h.get_as("mallory", "/v1/patients").await;
    assert_eq!(got.status, 403);
    assert_eq!(got.code(), "no_credential");
    assert_eq!(got.headers["x-gateway-error"], "no_credential");
    assert_eq!(h.upstream_hits(), 0);
}

#[tokio::test]
async fn users_on_different_shards_reach_different_upstreams() {
    let h = Harness::start(Setup::default()).await;
    let a = h.get_as("alice", "/v1/patients?per_page=1").await;
    let c = h.get_as("carol", "/v1/patients?per_page=1").await;
    assert_eq!((a.status.as_u16(), c.status.as_u16()), (200, 200));
    assert!(a.text().contains("Alice") && !a.text().contains("Carol"));
    assert!(c.text().contains("Carol") && !c.text().contains("Alice"));
    assert_eq!(h.sandbox("au1").request_count(), 1);
    assert_eq!(h.sandbox("uk2").request_count(), 1);
    assert_eq!(
        h.sandbox("uk2").requests()[0].headers["authorization"],
        basic(KEY_CAROL).as_str()
    );
}

#[tokio::test]
async fn users_sharing_a_key_see_the_same_account() {
    let h = Harness::start(Setup::default()).await;
    let a = h.get_as("alice", "/v1/patients?per_page=3").await;
    let b = h.get_as("bob", "/v1/patients?per_page=3").await;
    assert_eq!(a.json()["patients"], b.json()["patients"]);
}

#[tokio::test]
async fn next_links_are_rewritten_and_followable() {
    let h = Harness::start(Setup::default()).await;
    let first = h.get_as("alice", "/v1/patients?per_page=10").await.json();
    let next = first["links"]["next"].as_str().unwrap();
    assert!(
        next.starts_with(&format!("{}/v1/patients?", h.base)),
        "{next}"
    );
    assert!(next.contains("page=2"));
    let self_link = first["patients"][0]["links"]["self"].as_str().unwrap();
    assert!(self_link.starts_with(&h.base), "{self_link}");
    let tele = first["patients"][0]["telehealth_url"]
        .as_str()
        .unwrap_or("");
    assert!(
        !tele.starts_with(&h.base),
        "telehealth_url must not be rewritten: {tele}"
    );
    let up = h.sandbox("au1").base_url();
    assert!(!String::from_utf8_lossy(&serde_json::to_vec(&first).unwrap()).contains(&up));
    let second = h.get_as("alice", next.strip_prefix(&h.base).unwrap()).await;
    assert_eq!(second.status, 200);
    let second = second.json();
    assert_ne!(second["patients"][0]["id"], first["patients"][0]["id"]);
    assert!(
        second["links"]["previous"]
            .as_str()
            .unwrap()
            .starts_with(&h.base)
    );
}

#[tokio::test]
async fn embedded_links_in_a_record_are_rewritten() {
    let h = Harness::start(Setup::default()).await;
    let list = h
        .get_as("alice", "/v1/individual_appointments?per_page=1")
        .await
        .json();
    let appt = &list["individual_appointments"][0];
    let patient = appt["patient"]["links"]["self"].as_str().unwrap();
    assert!(
        patient.starts_with(&format!("{}/v1/patients/", h.base)),
        "{patient}"
    );
    let one_path = appt["links"]["self"]
        .as_str()
        .unwrap()
        .strip_prefix(&h.base)
        .unwrap()
        .to_string();
    let one = h.get_as("alice", &one_path).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], appt["id"]);
}

#[tokio::test]
async fn query_strings_pass_byte_for_byte() {
    let h = Harness::start(Setup::default()).await;
    let q = "/v1/patients?q[]=last_name:~~ja%on%&q%5B%5D=updated_at:%3E2024-01-01T00:00:00Z&sort=a,b:desc&per_page=5";
    let got = h.get_as("alice", q).await;
    assert_eq!(got.status, 200);
    assert_eq!(h.sandbox("au1").requests()[0].path_and_query, q);
}

#[tokio::test]
async fn post_body_is_forwarded_byte_for_byte() {
    let h = Harness::start(Setup::default()).await;
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let auth = format!("Bearer {}", h.token("alice"));
    let got = h
        .send(
            Method::POST,
            "/v1/echo",
            &[
                ("authorization", &auth),
                ("content-type", "application/octet-stream"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.as_ref(), body.as_slice());
    assert_eq!(
        h.sandbox("au1").requests()[0].body.as_ref(),
        body.as_slice()
    );
}

#[tokio::test]
async fn created_location_is_rewritten_onto_the_gateway() {
    let h = Harness::start(Setup::default()).await;
    let auth = format!("Bearer {}", h.token("alice"));
    let got = h
        .send(
            Method::POST,
            "/v1/patients",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            r#"{"first_name":"Newt","last_name":"Scamander"}"#,
        )
        .await;
    assert_eq!(got.status, 201, "{}", got.text());
    let loc = got.headers["location"].to_str().unwrap();
    assert!(
        loc.starts_with(&format!("{}/v1/patients/", h.base)),
        "{loc}"
    );
    let fetched = h.get_as("alice", loc.strip_prefix(&h.base).unwrap()).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json()["first_name"], "Newt");
}

#[tokio::test]
async fn cliniko_errors_pass_through_unchanged() {
    let h = Harness::start(Setup::default()).await;
    h.sandbox("au1").set_fault(
        "/v1/patients/42",
        Fault::Json(404, serde_json::json!({"errors": "Not found"})),
    );
    let got = h.get_as("alice", "/v1/patients/42").await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json(), serde_json::json!({"errors": "Not found"}));
    assert!(!got.headers.contains_key("x-gateway-error"));
    let auth = format!("Bearer {}", h.token("alice"));
    let bad = h
        .send(
            Method::POST,
            "/v1/patients",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.text().contains("can't be blank"));
}

#[tokio::test]
async fn a_revoked_stored_key_is_502_not_401() {
    let mut s = Setup::default();
    s.users.push(("dave", "revokedkey000000000000-au1"));
    let h = Harness::start(s).await;
    let got = h.get_as("dave", "/v1/patients").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.code(), "credential_rejected");
    assert!(!got.headers.contains_key("www-authenticate"));
    assert!(!got.text().contains("revokedkey"));
}

#[tokio::test]
async fn a_large_response_streams_through() {
    let h = Harness::start(Setup::default()).await;
    h.sandbox("au1")
        .set_fault("/v1/patients/export", Fault::Large(22 * 1024 * 1024));
    let got = h.get_as("alice", "/v1/patients/export").await;
    assert_eq!(got.status, 200);
    assert!(got.body.len() >= 20 * 1024 * 1024, "{}", got.body.len());
    let up = h.sandbox("au1").base_url();
    let text = std::str::from_utf8(&got.body).unwrap();
    assert!(
        !text.contains(&up),
        "links in a streamed body are rewritten too"
    );
    assert!(text.contains(&format!("{}/v1/patients/", h.base)));
    let _: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
}

#[tokio::test]
async fn upstream_down_is_502() {
    let (_held, port) = refusing_port();
    let mut s = Setup::default();
    s.users.push(("erin", "erinkey00000000000000000-ca1"));
    s.overrides.push((
        "CLINIKO_GATEWAY__UPSTREAM__SHARDS__CA1",
        format!("https://127.0.0.1:{port}/v1"),
    ));
    let h = Harness::start(s).await;
    let got = h.get_as("erin", "/v1/patients").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.code(), "upstream_unavailable");
}

#[tokio::test]
async fn upstream_stall_is_504() {
    let mut s = Setup::default();
    s.overrides
        .push(("CLINIKO_GATEWAY__UPSTREAM__TIMEOUT", "1s".into()));
    let h = Harness::start(s).await;
    h.sandbox("au1").set_fault("/v1/patients/1", Fault::Stall);
    let started = std::time::Instant::now();
    let got = h.get_as("alice", "/v1/patients/1").await;
    assert_eq!(got.status, 504);
    assert_eq!(got.code(), "upstream_timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    // The gateway keeps serving others.
    assert_eq!(
        h.get_as("carol", "/v1/patients?per_page=1").await.status,
        200
    );
}

#[tokio::test]
async fn local_routes_and_unknown_paths() {
    let h = Harness::start(Setup::default()).await;
    let live = h.send(Method::GET, "/healthz", &[], Bytes::new()).await;
    assert_eq!(live.status, 200);
    let ready = h.send(Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, 200);
    let nf = h.get_as("alice", "/admin").await;
    assert_eq!(nf.status, 404);
    assert_eq!(nf.code(), "route_not_found");
    assert_eq!(h.upstream_hits(), 0);
}

#[tokio::test]
async fn body_over_the_limit_is_413_declared_or_streamed() {
    let mut s = Setup::default();
    s.overrides
        .push(("CLINIKO_GATEWAY__SERVER__MAX_BODY_BYTES", "1000".into()));
    let h = Harness::start(s).await;
    let auth = format!("Bearer {}", h.token("alice"));
    let got = h
        .send(
            Method::POST,
            "/v1/echo",
            &[("authorization", &auth)],
            vec![b'x'; 2000],
        )
        .await;
    assert_eq!(got.status, 413);
    assert_eq!(got.code(), "body_too_large");
    assert_eq!(h.upstream_hits(), 0);
    // Without Content-Length (chunked), the limit trips mid-stream.
    let addr = h.base.strip_prefix("http://").unwrap();
    let mut req = format!(
        "POST /v1/echo HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for _ in 0..4 {
        req.push_str(&format!("1f4\r\n{}\r\n", "y".repeat(500)));
    }
    req.push_str("0\r\n\r\n");
    let out = raw_exchange(addr, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("body_too_large"));
}

#[tokio::test]
async fn an_upstream_with_an_untrusted_certificate_is_refused() {
    // A stand-in whose certificate comes from a CA the gateway does not trust.
    let foreign =
        cliniko_gateway::sandbox::Sandbox::start(cliniko_gateway::sandbox::SandboxOptions {
            accounts: vec![account("erinkey00000000000000000-ca1", "Erin")],
            shard: "ca1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut s = Setup::default();
    s.users.push(("erin", "erinkey00000000000000000-ca1"));
    s.overrides
        .push(("CLINIKO_GATEWAY__UPSTREAM__SHARDS__CA1", foreign.base_url()));
    let h = Harness::start(s).await;
    let got = h.get_as("erin", "/v1/patients").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.code(), "upstream_unavailable");
    assert_eq!(
        foreign.request_count(),
        0,
        "no request may cross an unverified TLS session"
    );
}

#[tokio::test]
async fn an_upstream_certificate_for_another_name_is_refused() {
    let pki = std::sync::Arc::new(cliniko_gateway::sandbox::TestPki::new().unwrap());
    let wrong =
        cliniko_gateway::sandbox::Sandbox::start(cliniko_gateway::sandbox::SandboxOptions {
            accounts: vec![account("erinkey00000000000000000-ca1", "Erin")],
            names: vec!["wrong.example".into()],
            pki: Some(pki.clone()),
            shard: "ca1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut s = Setup {
        pki: Some(pki),
        ..Setup::default()
    };
    s.users.push(("erin", "erinkey00000000000000000-ca1"));
    // Reached as localhost with a CA the gateway trusts, but the certificate names wrong.example.
    s.overrides.push((
        "CLINIKO_GATEWAY__UPSTREAM__SHARDS__CA1",
        format!("https://localhost:{}/v1", wrong.addr().port()),
    ));
    let h = Harness::start(s).await;
    let got = h.get_as("erin", "/v1/patients").await;
    assert_eq!(got.status, 502);
    assert_eq!(wrong.request_count(), 0);
}
