//! Cliniko misbehaving: every case ends with the right answer within the configured bounds,
//! and the gateway keeps serving.

use crate::support::*;
use bytes::Bytes;
use cliniko_gateway::sandbox::Fault;
use http_body_util::{BodyExt, Full};
use std::time::{Duration, Instant};

fn get_req(h: &Harness, user: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("{}{path}", h.base))
        .header("authorization", format!("Bearer {}", h.token(user)))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_body_that_stalls_after_the_headers_is_cut_off() {
    let s = Setup {
        overrides: vec![("CLINIKO_GATEWAY__UPSTREAM__BODY_TIMEOUT", "1s".into())],
        ..Setup::default()
    };
    let h = Harness::start(s).await;
    // Not a cached path, so the body streams straight through and the cut shows mid-body.
    h.sandbox("au1")
        .set_fault("/v1/invoices", Fault::StallAfterHeaders);
    let started = Instant::now();
    let resp = h
        .client
        .request(get_req(&h, "alice", "/v1/invoices"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "headers were already on their way");
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await;
    assert!(
        matches!(body, Ok(Err(_))),
        "the caller must see the body fail, not hang"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A cached path reads the body before answering, so the caller gets a clean 502 instead.
    h.sandbox("au1")
        .set_fault("/v1/patients", Fault::StallAfterHeaders);
    let got = h.get_as("alice", "/v1/patients").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.code(), "upstream_unavailable");
    assert_eq!(
        h.get_as("carol", "/v1/patients?per_page=1").await.status,
        200
    );
}

#[tokio::test]
async fn a_tls_handshake_that_never_finishes_is_502_within_the_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accept and hold connections without ever speaking TLS.
    let holder = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut s = Setup::default();
    s.users.push(("erin", "erinkey00000000000000000-ca1"));
    s.overrides.push((
        "CLINIKO_GATEWAY__UPSTREAM__SHARDS__CA1",
        format!("https://localhost:{port}/v1"),
    ));
    s.overrides
        .push(("CLINIKO_GATEWAY__UPSTREAM__CONNECT_TIMEOUT", "500ms".into()));
    s.overrides
        .push(("CLINIKO_GATEWAY__UPSTREAM__TIMEOUT", "20s".into()));
    let h = Harness::start(s).await;
    let started = Instant::now();
    let got = h.get_as("erin", "/v1/patients").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.code(), "upstream_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Counted as what it was: a connect that timed out.
    let m = h.gateway().metrics.render().await.unwrap();
    let series = r#"cliniko_gateway_upstream_errors_total{kind="connect_timeout"}"#;
    assert!(sample(&m, series) >= 1.0, "{m}");
    holder.abort();
}

#[tokio::test]
async fn the_drain_deadline_closes_connections_that_are_still_busy() {
    let s = Setup {
        overrides: vec![
            ("CLINIKO_GATEWAY__SERVER__SHUTDOWN_GRACE", "500ms".into()),
            ("CLINIKO_GATEWAY__UPSTREAM__TIMEOUT", "60s".into()),
        ],
        ..Setup::default()
    };
    let mut h = Harness::start(s).await;
    h.sandbox("au1").set_fault("/v1/patients", Fault::Stall);
    let client = h.client.clone();
    let req = get_req(&h, "alice", "/v1/patients");
    let stuck = tokio::spawn(async move { client.request(req).await });
    h.sandbox("au1").wait_for_requests(1).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), h.shutdown())
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .unwrap()
        .unwrap();
    assert!(
        outcome.is_err(),
        "the stalled request's connection must be closed"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_gzipped_json_body_is_decoded_and_its_links_rewritten() {
    use async_compression::tokio::bufread::GzipEncoder;
    use tokio::io::AsyncReadExt;
    let h = Harness::start(Setup::default()).await;
    let up = h.sandbox("au1").base_url();
    let json = format!(r#"{{"links":{{"self":"{up}/patients/1"}},"name":"Ada"}}"#);
    let mut gz = Vec::new();
    GzipEncoder::new(json.as_bytes())
        .read_to_end(&mut gz)
        .await
        .unwrap();
    h.sandbox("au1").set_fault(
        "/v1/patients/1",
        Fault::Raw(
            200,
            vec![
                (
                    "content-type".into(),
                    "application/json; charset=utf-8".into(),
                ),
                ("content-encoding".into(), "gzip".into()),
                ("content-length".into(), gz.len().to_string()),
            ],
            gz.into(),
        ),
    );
    let got = h.get_as("alice", "/v1/patients/1").await;
    assert_eq!(got.status, 200);
    assert!(!got.headers.contains_key("content-encoding"));
    let v = got.json();
    assert_eq!(v["links"]["self"], format!("{}/v1/patients/1", h.base));
    assert_eq!(v["name"], "Ada");
}

#[tokio::test]
async fn the_gateway_asks_cliniko_for_gzip_and_rewrites_the_decoded_page() {
    let h = Harness::start(Setup::default()).await;
    let got = h.get_as("alice", "/v1/patients?per_page=100").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = h.sandbox("au1").requests();
    assert_eq!(seen[0].headers["accept-encoding"], "gzip");
    let (answers, bytes) = h.sandbox("au1").gzipped();
    assert_eq!(answers, 1, "the stand-in answered compressed");
    // The caller asked for nothing: plain JSON, sent whole with its length.
    assert!(!got.headers.contains_key("content-encoding"));
    assert_eq!(got.headers["content-length"], got.body.len().to_string());
    assert!(got.body.len() > 4 * bytes, "{} vs {bytes}", got.body.len());
    let v = got.json();
    let patients = v["patients"].as_array().unwrap();
    assert_eq!(patients.len(), 100);
    for p in patients {
        let link = p["links"]["self"].as_str().unwrap();
        assert!(
            link.starts_with(&format!("{}/v1/patients/", h.base)),
            "{link}"
        );
    }
    assert!(!got.text().contains(&h.sandbox("au1").base_url()));
}

/// Compressed on the fly, a page comes without a length: it is still read whole, decoded and
/// sent with its length in one piece (not through the streaming decoder and rewriter).
#[tokio::test]
async fn a_chunked_gzip_page_is_read_whole_and_sent_with_its_length() {
    let h = Harness::start(Setup::default()).await;
    let up = h.sandbox("au1").base_url();
    let json = format!(r#"{{"links":{{"self":"{up}/patients/1"}},"name":"Ada"}}"#);
    gzip_answer(&h, "application/json", gzip(&json), Framing::Chunked);
    let got = h.get_as("alice", "/v1/invoices").await;
    assert_eq!(got.status, 200);
    assert!(!got.headers.contains_key("content-encoding"));
    assert_eq!(got.headers["content-length"], got.body.len().to_string());
    assert_eq!(
        got.headers["x-cache"], "BYPASS",
        "not collected by a cache fill"
    );
    let v = got.json();
    assert_eq!(v["links"]["self"], format!("{}/v1/patients/1", h.base));
    assert_eq!(v["name"], "Ada");
}

#[tokio::test]
async fn a_small_gzip_that_decodes_to_a_large_page_streams() {
    let h = Harness::start(Setup::default()).await;
    let up = h.sandbox("au1").base_url();
    // 400 KiB of JSON decoded (over the whole-body limit), a few KiB compressed.
    let item = format!(r#"{{"links":{{"self":"{up}/patients/1"}}}},"#);
    let json = format!(
        r#"{{"patients":[{}{{}}]}}"#,
        item.repeat(400 * 1024 / item.len())
    );
    gzip_answer(&h, "application/json", gzip(&json), Framing::Length);
    let got = h.get_as("alice", "/v1/invoices").await;
    assert_eq!(got.status, 200);
    assert!(!got.headers.contains_key("content-length"), "streamed");
    let v = got.json();
    let ours = format!("{}/v1/patients/1", h.base);
    let items = v["patients"].as_array().unwrap();
    assert!(items.len() > 1000);
    assert!(
        items[..items.len() - 1]
            .iter()
            .all(|i| i["links"]["self"] == ours.as_str())
    );
}

#[tokio::test]
async fn a_gzipped_body_that_is_not_json_reaches_a_plain_caller_decoded() {
    let h = Harness::start(Setup::default()).await;
    let csv = "id,name\n1,Ada\n".repeat(200);
    gzip_answer(&h, "text/csv", gzip(&csv), Framing::Length);
    let got = h.get_as("alice", "/v1/invoices").await;
    assert_eq!(got.status, 200);
    assert!(!got.headers.contains_key("content-encoding"));
    assert_eq!(got.text(), csv);
}

#[tokio::test]
async fn a_gzip_that_does_not_decode_is_a_clean_502() {
    let h = Harness::start(Setup::default()).await;
    let junk = b"\x1f\x8bnot really gzip".to_vec();
    gzip_answer(&h, "application/json", junk, Framing::Length);
    let got = h.get_as("alice", "/v1/invoices").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.code(), "upstream_unavailable");
}

#[tokio::test]
async fn garbage_resets_and_5xx_from_cliniko() {
    let h = Harness::start(Setup::default()).await;
    let sb = h.sandbox("au1");
    sb.set_fault("/v1/patients/1", Fault::Garbage);
    let got = h.get_as("alice", "/v1/patients/1").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.code(), "upstream_unavailable");
    sb.set_fault(
        "/v1/patients/2",
        Fault::Status(503, "Service Unavailable".into()),
    );
    let got = h.get_as("alice", "/v1/patients/2").await;
    assert_eq!(got.status, 503, "Cliniko's own 5xx passes through");
    assert!(!got.headers.contains_key("x-gateway-error"));
    // Streamed (uncached) path: the caller sees the body fail, never a complete-looking one.
    sb.set_fault("/v1/invoices/3", Fault::ResetMidBody);
    let resp = h
        .client
        .request(get_req(&h, "alice", "/v1/invoices/3"))
        .await;
    if let Ok(resp) = resp {
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .unwrap();
        assert!(body.is_err(), "a truncated body must not look complete");
    }
    // Cached path: the body is read before answering, so the reset becomes a clean 502.
    sb.set_fault("/v1/patients/3", Fault::ResetMidBody);
    let got = h.get_as("alice", "/v1/patients/3").await;
    assert_eq!(got.status, 502);
    assert_eq!(
        h.get_as("alice", "/v1/patients?per_page=1").await.status,
        200
    );
}

/// How the stand-in frames a raw answer.
enum Framing {
    Length,
    Chunked,
}

/// `text` gzipped.
fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

/// The stand-in answers `/v1/invoices` with `body` labelled `Content-Encoding: gzip`.
fn gzip_answer(h: &Harness, content_type: &str, body: Vec<u8>, framing: Framing) {
    let framing = match framing {
        Framing::Length => ("content-length".into(), body.len().to_string()),
        Framing::Chunked => ("transfer-encoding".into(), "chunked".into()),
    };
    h.sandbox("au1").set_fault(
        "/v1/invoices",
        Fault::Raw(
            200,
            vec![
                ("content-type".into(), content_type.into()),
                ("content-encoding".into(), "gzip".into()),
                framing,
            ],
            body.into(),
        ),
    );
}
