//! Requests the gateway must refuse before anything reaches Cliniko (raw bytes on a socket,
//! since a well-behaved client would not send most of these).

use crate::support::*;

async fn refused(h: &Harness, request_line_and_headers: &str) -> String {
    let addr = h.base.strip_prefix("http://").unwrap().to_string();
    let auth = format!("Bearer {}", h.token("alice"));
    let req = request_line_and_headers
        .replace("{host}", &addr)
        .replace("{auth}", &auth);
    raw_exchange(&addr, req.as_bytes()).await
}

#[tokio::test]
async fn hostile_targets_get_400_and_never_reach_cliniko() {
    let h = Harness::start(Setup::default()).await;
    let cases = [
        (
            "GET http://evil.example/v1/patients HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "GET /v1/../admin HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "GET /v1/patients%2f..%2fusers HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "GET /v1//evil.example/x HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_target",
        ),
        (
            "TRACE /v1/patients HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "bad_method",
        ),
        (
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
            "",
        ),
    ];
    for (req, code) in cases {
        let out = refused(&h, req).await;
        assert!(out.starts_with("HTTP/1.1 4"), "{req:?} -> {out}");
        if !code.is_empty() {
            assert!(out.contains(code), "{req:?} -> {out}");
        }
    }
    assert_eq!(h.upstream_hits(), 0, "a hostile request reached Cliniko");
}

/// hyper resolves Content-Length + Transfer-Encoding as RFC 9112 §6.1 says (chunked wins, the
/// length is dropped, the connection closes after the response), so bytes hidden behind the
/// chunked terminator can never become a second request.
#[tokio::test]
async fn content_length_plus_chunked_cannot_smuggle_a_request() {
    let h = Harness::start(Setup::default()).await;
    let smuggled =
        "GET /v1/patients?smuggled=1 HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n";
    let req = format!(
        "POST /v1/echo HTTP/1.1\r\nHost: {{host}}\r\nAuthorization: {{auth}}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let out = refused(&h, &req).await;
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    assert!(
        h.sandbox("au1")
            .requests()
            .iter()
            .all(|r| !r.path_and_query.contains("smuggled"))
    );
}
