//! The inbound side: TLS with HTTP/2, request-head limits, idle connections, the demo.

use crate::support::*;
use bytes::Bytes;
use cliniko_gateway::body::Body;
use cliniko_gateway::sandbox::TestPki;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};

#[tokio::test]
async fn inbound_tls_negotiates_http2_and_proxies() {
    let pki = TestPki::new().unwrap();
    let leaf = pki.issue(&["localhost", "127.0.0.1"]).unwrap();
    let s = Setup {
        files: vec![
            ("gw-cert.pem", leaf.cert_pem.clone()),
            ("gw-key.pem", leaf.key_pem.clone()),
            ("client-ca.pem", pki.ca_pem()),
        ],
        overrides: vec![
            (
                "CLINIKO_GATEWAY__SERVER__TLS_CERT_FILE",
                "gw-cert.pem".into(),
            ),
            ("CLINIKO_GATEWAY__SERVER__TLS_KEY_FILE", "gw-key.pem".into()),
        ],
        ..Setup::default()
    };
    let h = Harness::start(s).await;
    let port = h.base.rsplit(':').next().unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    std::fs::write(ca_dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let ucfg: cliniko_gateway::config::UpstreamConfig = toml::from_str(&format!(
        "user_agent = \"T (t@e.x)\"\nca_file = \"{}\"",
        ca_dir.path().join("ca.pem").display()
    ))
    .unwrap();
    let client = cliniko_gateway::upstream::client::build(&ucfg, Default::default()).unwrap();
    let req = http::Request::get(format!("https://localhost:{port}/v1/patients?per_page=2"))
        .header("authorization", format!("Bearer {}", h.token("alice")))
        .body(Body::empty())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let next = v["links"]["next"].as_str().unwrap();
    assert!(
        next.starts_with(&format!("https://127.0.0.1:{port}/v1/")),
        "{next}"
    );
    // Plain HTTP on the TLS port gets nothing useful.
    let out = raw_exchange(
        &format!("127.0.0.1:{port}"),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!out.contains("200 OK"));
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let h = Harness::start(Setup::default()).await;
    let addr = h.base.strip_prefix("http://").unwrap();
    let big = "x".repeat(40_000);
    let out = raw_exchange(
        addr,
        format!(
            "GET /v1/patients HTTP/1.1\r\nHost: {addr}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out = raw_exchange(
        addr,
        format!("GET /v1/patients HTTP/1.1\r\nHost: {addr}\r\n{many}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(h.upstream_hits(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let s = Setup {
        overrides: vec![
            ("CLINIKO_GATEWAY__SERVER__IDLE_TIMEOUT", "500ms".into()),
            ("CLINIKO_GATEWAY__SERVER__HEADER_READ_TIMEOUT", "30s".into()),
        ],
        ..Setup::default()
    };
    let h = Harness::start(s).await;
    let addr = h.base.strip_prefix("http://").unwrap().to_string();
    let started = Instant::now();
    let out = raw_exchange(
        &addr,
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "idle connection was kept open"
    );
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let s = Setup {
        overrides: vec![("CLINIKO_GATEWAY__SERVER__HEADER_READ_TIMEOUT", "1s".into())],
        ..Setup::default()
    };
    let h = Harness::start(s).await;
    let addr = h.base.strip_prefix("http://").unwrap().to_string();
    let started = Instant::now();
    let out = raw_exchange(&addr, b"GET /v1/patients HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    assert!(!out.contains("200"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow head was not cut off"
    );
    assert_eq!(h.upstream_hits(), 0);
}

#[tokio::test]
async fn the_demo_serves_the_curl_lines_it_prints() {
    let demo = cliniko_gateway::demo::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = plain_client();
    let get = |path: String| {
        let req = http::Request::get(format!("{}{path}", demo.base))
            .header("authorization", format!("Bearer {}", demo.token))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        client.request(req)
    };
    let resp = get("/v1/patients?per_page=5".into()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["patients"].as_array().unwrap().len(), 5);
    let next = v["links"]["next"]
        .as_str()
        .unwrap()
        .strip_prefix(&demo.base)
        .unwrap()
        .to_string();
    assert_eq!(get(next).await.unwrap().status(), 200);
    let appt = cliniko_gateway::sandbox::seeded_appointment_id(0, 1);
    assert_eq!(
        get(format!("/v1/individual_appointments/{appt}"))
            .await
            .unwrap()
            .status(),
        200
    );
}
