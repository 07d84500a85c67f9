//! Secrets never leak: the real binary, logging at TRACE (every dependency included), serves
//! the suite's kinds of request; no log line, error body or response header may contain an
//! API key (or its Basic form), a token (or its signature, or its Basic form), the HMAC
//! secret, the master key, or a patient name that was only ever in a query string or a body.

use crate::support::*;
use base64::Engine;
use bytes::Bytes;
use cliniko_gateway::sandbox::{Fault, Sandbox, SandboxOptions};
use http_body_util::{BodyExt, Full};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

const POLICY: &str = "[policy]\nclaims = [\"scope\"]\n[policy.grants.read]\nmethods = [\"GET\", \"HEAD\"]\npaths = [\"/v1\"]\n[policy.grants.write]\nmethods = [\"POST\", \"PATCH\"]\npaths = [\"/v1/patients\"]\n";

fn scoped(sub: &str, scope: &str) -> String {
    mint_hs(
        &secrecy::SecretSlice::from(HMAC.as_bytes().to_vec()),
        jsonwebtoken::Algorithm::HS256,
        sub,
        Duration::from_secs(600),
        serde_json::json!({"scope": scope})
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap()
}

#[tokio::test]
async fn nothing_secret_appears_in_trace_logs_bodies_or_headers() {
    let sb = Sandbox::start(SandboxOptions {
        accounts: vec![account(KEY_ALICE, "Alice")],
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    sb.set_fault(
        "/v1/invoices",
        Fault::Status(401, "HTTP Basic: Access denied.".into()),
    );
    let dir = process_config_dir(
        &sb,
        "max_body_bytes = 4096",
        POLICY,
        &[("alice", KEY_ALICE), ("bob", KEY_ALICE)],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_cliniko-gateway"))
        .args(["serve", "--config"])
        .arg(dir.path().join("gw.toml"))
        .env("CLINIKO_GATEWAY_HMAC_SECRET", HMAC)
        .env("CLINIKO_GATEWAY_MASTER_KEY", MASTER)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut logs = ChildLogs::capture(&mut child);
    let listening = logs.wait_line("gateway listening").await;
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let base = format!("http://{}", v["local_addr"].as_str().unwrap());

    let reader = scoped("alice", "read");
    let writer = scoped("alice", "read write");
    let forbidden = scoped("bob", "openid");
    let unknown = scoped("mallory", "read");
    let expired = mint_hs(
        &secrecy::SecretSlice::from(HMAC.as_bytes().to_vec()),
        jsonwebtoken::Algorithm::HS256,
        "alice",
        Duration::ZERO,
        serde_json::Map::new(),
    )
    .unwrap();
    let wrong_secret = mint_hs(
        &secrecy::SecretSlice::from(b"another-secret-that-is-long-enough-0123456789".to_vec()),
        jsonwebtoken::Algorithm::HS256,
        "alice",
        Duration::from_secs(600),
        serde_json::Map::new(),
    )
    .unwrap();
    let tokens = [
        &reader,
        &writer,
        &forbidden,
        &unknown,
        &expired,
        &wrong_secret,
    ];
    let client = plain_client();
    let mut seen: Vec<String> = Vec::new();
    let requests: Vec<(&str, String, &String, &str)> = vec![
        (
            "GET",
            "/v1/patients?q[]=last_name:~~Zebediah%25".into(),
            &reader,
            "",
        ),
        (
            "GET",
            "/v1/patients?q[]=last_name:~~Lovelace%25&per_page=2".into(),
            &reader,
            "",
        ),
        (
            "GET",
            "/v1/patients?q[]=last_name:~~Lovelace%25&per_page=2".into(),
            &reader,
            "",
        ),
        (
            "HEAD",
            "/v1/patients?q[]=first_name:=Zebediah".into(),
            &reader,
            "",
        ),
        (
            "POST",
            "/v1/patients".into(),
            &writer,
            r#"{"first_name":"Zebediah","last_name":"Quill"}"#,
        ),
        (
            "PATCH",
            "/v1/patients/1?note=Zebediah".into(),
            &reader,
            r#"{"notes":"Zebediah"}"#,
        ),
        (
            "GET",
            "/v1/patients?q[]=last_name:~~Zebediah%25".into(),
            &forbidden,
            "",
        ),
        (
            "GET",
            "/v1/patients?q[]=last_name:~~Zebediah%25".into(),
            &unknown,
            "",
        ),
        (
            "GET",
            "/v1/patients?q[]=last_name:~~Zebediah%25".into(),
            &expired,
            "",
        ),
        (
            "GET",
            "/v1/patients?q[]=last_name:~~Zebediah%25".into(),
            &wrong_secret,
            "",
        ),
        ("GET", "/v1/invoices?q[]=Zebediah".into(), &reader, ""),
        (
            "GET",
            format!("/v1/patients?access_token={reader}&q=Zebediah"),
            &reader,
            "",
        ),
        (
            "POST",
            "/v1/patients".into(),
            &writer,
            &*Box::leak(format!("{{\"x\":\"Zebediah{}\"}}", "z".repeat(5000)).into_boxed_str()),
        ),
        ("GET", "/v1/../admin?q=Zebediah".into(), &reader, ""),
    ];
    for (m, path, tok, body) in &requests {
        let mut b = http::Request::builder()
            .method(*m)
            .uri(format!("{base}{path}"))
            .header("authorization", format!("Bearer {tok}"))
            .header("cookie", format!("session={tok}"));
        if !body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        let resp = match client
            .request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
            .await
        {
            Ok(r) => r,
            Err(_) => continue,
        };
        seen.push(format!("{:?} {:?}", resp.status(), resp.headers()));
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // Data the caller asked for comes back to the caller; only our own answers are checked.
        if text.contains("\"error\"") {
            seen.push(text);
        }
    }
    // The Basic form (the JWT as the username), a Cliniko key sent in its place, and a
    // password: the JWT and the key must never show up, the key only by its fingerprint.
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    for (auth, status) in [
        (format!("Basic {}", b64(format!("{reader}:"))), 200),
        (format!("Basic {}", b64(format!("{wrong_secret}:"))), 401),
        (format!("Basic {}", b64(format!("{KEY_ALICE}:"))), 401),
        (
            format!("Basic {}", b64(format!("{reader}:{KEY_ALICE}"))),
            401,
        ),
        (format!("Basic {}", b64(format!("{reader}:Zebediah"))), 401),
    ] {
        let req = http::Request::get(format!("{base}/v1/patients?q[]=last_name:Zebediah&basic=1"))
            .header("authorization", auth)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), status);
        seen.push(format!("{:?}", resp.headers()));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if status != 200 {
            seen.push(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    // Raw hostile requests carrying a token.
    let addr = base.strip_prefix("http://").unwrap();
    for raw in [
        format!(
            "POST /v1/patients HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "GET http://evil.example/v1/patients?q=Zebediah HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /v1/patients?q=Zebediah HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(20000)
        ),
        format!(
            "GET /v1/patients?q=Zebediah HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nX-Fold: a\r\n b\r\nConnection: close\r\n\r\n"
        ),
        // Cliniko's filter typed raw, and a target only the gateway's rewrite makes parseable.
        format!(
            "GET /v1/user?q[]=last_name:\"Zebediah\" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /v1/pat<ients?q=Zebediah HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nConnection: close\r\n\r\n"
        ),
    ] {
        seen.push(raw_exchange(addr, raw.as_bytes()).await);
    }
    signal(&child, "-TERM");
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    logs.drain(Duration::from_secs(10)).await;
    let logs = logs.seen;
    assert!(
        logs.len() > 50,
        "TRACE logging was not on: {} lines",
        logs.len()
    );
    assert!(
        logs.iter().any(|l| l.contains("\"target\":\"audit\"")),
        "no audit records"
    );
    assert!(
        logs.iter().any(|l| l.contains("credential")),
        "no credential warning"
    );

    // The refused key is named by its fingerprint, and the bad target has its access line.
    let fingerprint = cliniko_gateway::credentials::fingerprint(KEY_ALICE);
    assert!(
        logs.iter().any(|l| l.contains(&fingerprint)
            && l.contains("WARN")
            && l.contains("Cliniko API key")),
        "no warning naming the key's fingerprint"
    );
    assert!(
        logs.iter().any(|l| l.contains("\"target\":\"access\"")
            && l.contains("/v1/pat%3Cients")
            && l.contains("400")),
        "no access line for the bad target"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{KEY_ALICE}:"));
    let mut secrets: Vec<(String, String)> = vec![
        ("API key".into(), KEY_ALICE.into()),
        ("API key as Basic".into(), basic),
        ("HMAC secret".into(), HMAC.into()),
        ("master key".into(), MASTER.into()),
        (
            "patient name from a query or body".into(),
            "Zebediah".into(),
        ),
        ("patient name from a query".into(), "Lovelace".into()),
        ("JWT prefix".into(), "eyJ".into()),
    ];
    for t in tokens {
        secrets.push(("token".into(), t.to_string()));
        secrets.push((
            "token as Basic".into(),
            base64::engine::general_purpose::STANDARD.encode(format!("{t}:")),
        ));
        secrets.push((
            "token signature".into(),
            t.rsplit('.').next().unwrap().to_string(),
        ));
    }
    for (what, s) in &secrets {
        for l in logs.iter().chain(seen.iter()) {
            assert!(
                !l.contains(s.as_str()),
                "{what} leaked: {}",
                &l[..l.len().min(400)]
            );
        }
    }
}
